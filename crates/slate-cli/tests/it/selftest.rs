//! Self-tests of the test support: the nasty tree survives `cp -a` exactly
//! (so it is a fair reference for slate), is deterministic and covers every
//! kind of metadata, and the treedigest helpers report differences.

use std::process::Command;

use crate::nasty::{build_nasty_tree, SPARSE_FILES};
use crate::treedigest::{assert_same_tree, assert_sparse_preserved, digest};

/// A scratch directory on /var/tmp, which (unlike a tmpfs /tmp) is on a disk
/// filesystem with user xattrs and ACLs.
fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("slate-nasty-")
        .tempdir_in("/var/tmp")
        .expect("temp dir in /var/tmp")
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[test]
fn nasty_tree_digests_equal_its_cp_a_copy() {
    let tmp = scratch();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    build_nasty_tree(&src).expect("build nasty tree");
    let status = Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(&dst)
        .status()
        .expect("run cp -a");
    assert!(status.success(), "cp -a failed: {status}");
    assert_same_tree(&src, &dst);
    for rel in SPARSE_FILES {
        assert_sparse_preserved(&src, &dst, rel);
    }
}

#[test]
fn nasty_tree_is_deterministic_and_covers_every_kind() {
    let tmp = scratch();
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    build_nasty_tree(&one).expect("build nasty tree");
    build_nasty_tree(&two).expect("build nasty tree again");
    assert_same_tree(&one, &two);

    let d = digest(&one);
    assert!(d.lines().last().unwrap().starts_with("TOTAL sha256="), "{d}");
    let line = |path: &str| {
        d.lines()
            .find(|l| l.split('\t').next() == Some(path))
            .unwrap_or_else(|| panic!("no {path} in digest:\n{d}"))
    };
    let has = |path: &str, field: &str| {
        let l = line(path);
        assert!(l.contains(field), "{path}: expected {field} in {l}");
    };
    has(".", "type=d mode=0755");
    has(".", "xattr=user.slate.root:");
    has("files/random-3m", "size=3145728");
    has("sparse/sparse-64m", "size=67108864");
    has("private", "mode=0700");
    has("sticky", "mode=1777");
    has("perms/setuid", "mode=4755");
    has("links/absolute", "target=/etc/passwd");
    has("links/timed", "mtime=1234567890.123456789");
    has("times/pre-1970", "mtime=-123456789.987654321");
    has("times/dir-minus-1ns", "mtime=-1.999999999");
    has("times/year-2100", "mtime=4102448461.000000001");
    has("hardlinks/sub/group-2", "hl=files/group-3");
    has("hardlinks/sub/sym-2", "hl=hardlinks/sub/sym-2");
    has("special/fifo", "type=p");
    has("special/socket", "type=s");
    has("xattrs/user-values", "user.binary:00ff0062696efe0a3d2500");
    has("xattrs/user-values", "user.empty:,");
    has("names/non-utf8-%FF%FE", "type=f");
    has("names/new%0Aline", "type=f");
    has("names/spaces%20%25%20and%20%3D%20signs.txt", "type=f");
    assert!(d.lines().any(|l| l.len() > 600), "no long path in:\n{d}");

    if is_root() {
        has("special/null", "type=c mode=0666 uid=0 gid=6");
        has("special/null", "rdev=1:3");
        has("special/loop200", "rdev=7:200");
        has("perms/setgid", "mode=2755 uid=1234 gid=5678");
        has("perms/owned-big", "uid=4000000 gid=4000001");
        has("links/owned-big", "type=l mode=0777 uid=4000000 gid=4000001");
        has("xattrs/trusted", "trusted.slate:0102");
        has("xattrs/trusted-symlink", "trusted.slate.on-symlink:");
        has("xattrs/capability", "mode=0755 uid=4000000 gid=4000001 size=12");
        has(
            "xattrs/capability",
            "security.capability:0100000200200000000000000000000000000000",
        );
        has("xattrs/acl-file", "mode=0674");
        has("xattrs/acl-file", "system.posix_acl_access:02000000");
        has("xattrs/acl-dir", "system.posix_acl_default:");
        has("xattrs/acl-dir/inherited-dir", "system.posix_acl_default:");
        let before = line("xattrs/acl-dir/before-default-acl");
        assert!(!before.contains("posix_acl"), "{before}");
        has("root-only/mode-0000", "mode=0000");
        has("root-only/read-only-dir", "mode=0555");
    }

    // The sparse files are really sparse on the source side.
    for rel in SPARSE_FILES {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(one.join(rel)).unwrap();
        assert!(m.blocks() * 512 < m.size() / 16, "{rel} is not sparse");
    }
}

#[test]
fn nasty_tree_refuses_a_non_empty_root() {
    let tmp = scratch();
    std::fs::write(tmp.path().join("x"), b"").unwrap();
    assert!(build_nasty_tree(tmp.path()).is_err());
}

#[test]
fn assert_same_tree_reports_differences() {
    let tmp = scratch();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    // One fixed time for both: two writes a clock tick apart would differ.
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    for t in [&a, &b] {
        std::fs::create_dir(t).unwrap();
        std::fs::write(t.join("f"), b"same").unwrap();
        for p in [t.join("f"), t.to_path_buf()] {
            std::fs::File::open(&p).unwrap().set_modified(when).unwrap();
        }
    }
    assert_same_tree(&a, &b);
    std::fs::write(b.join("f"), b"diff").unwrap();
    std::fs::write(b.join("extra"), b"").unwrap();
    let err = std::panic::catch_unwind(|| assert_same_tree(&a, &b)).unwrap_err();
    let msg = err.downcast_ref::<String>().expect("panic message");
    for needle in ["DIFFERENT", "field=sha256", "only in B: extra", "+ extra\t"] {
        assert!(msg.contains(needle), "{needle:?} not in:\n{msg}");
    }
    // The helper keeps both digests for inspection; drop them here.
    let kept = msg
        .lines()
        .find_map(|l| l.strip_prefix("digests kept in "))
        .expect("kept digests path");
    std::fs::remove_dir_all(kept).unwrap();
}
