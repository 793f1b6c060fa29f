//! In-place slot updates: a tree updated entry by entry must end up bit for
//! bit the target tree, whatever changed between the two.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use slate_repo::progress::NoProgress;
use slate_repo::reader::ChunkReader;

use crate::nasty::build_nasty_tree;
use crate::support::{s, scratch, slate_ok};
use crate::treedigest::assert_same_tree;

/// Change `t` in every way an OS update can.
fn mutate(t: &Path) {
    let w = |p: &str, d: &[u8]| std::fs::write(t.join(p), d).unwrap();
    // New, changed, removed files.
    w("files/new-file", b"brand new");
    w("files/one-byte", b"y");
    std::fs::remove_file(t.join("files/odd-size")).unwrap();
    // A directory becomes a file, a file becomes a directory.
    std::fs::remove_dir_all(t.join("tree/a/b/c")).unwrap();
    w("tree/a/b/c", b"was a directory");
    std::fs::remove_file(t.join("dedup/empty-too")).unwrap();
    std::fs::create_dir(t.join("dedup/empty-too")).unwrap();
    w("dedup/empty-too/inside", b"x");
    // Symlinks retargeted and replaced by files.
    std::fs::remove_file(t.join("links/relative")).unwrap();
    symlink("../files/new-file", t.join("links/relative")).unwrap();
    std::fs::remove_file(t.join("links/dangling")).unwrap();
    w("links/dangling", b"now a file");
    // Hard links: the 3-name group's content changes (so every name must
    // follow), and a new group appears.
    let g = t.join("hardlinks/group-1");
    let mut data = std::fs::read(&g).unwrap();
    data.extend_from_slice(b"appended");
    std::fs::write(&g, &data).unwrap(); // in place: all names see it
    std::fs::hard_link(t.join("files/new-file"), t.join("hardlinks/new-link")).unwrap();
    // Metadata only: mode, owner, xattr removed and added, times.
    std::fs::set_permissions(t.join("files/random-100k"), std::fs::Permissions::from_mode(0o600)).unwrap();
    if crate::support::is_root() {
        std::os::unix::fs::lchown(t.join("files/random-3m"), Some(4242), Some(4343)).unwrap();
    }
    let _ = xattr_remove(&t.join("xattrs"));
    // A new nested directory tree and a removed one.
    std::fs::create_dir_all(t.join("brand/new/dir")).unwrap();
    w("brand/new/dir/file", b"deep");
    std::fs::remove_dir_all(t.join("empty-dir")).unwrap();
    // Grow the big file (new chunks) and leave the sparse file alone.
    let mut big = std::fs::read(t.join("files/random-3m")).unwrap();
    big[1_500_000] ^= 0xff;
    std::fs::write(t.join("files/random-3m"), &big).unwrap();
}

fn xattr_remove(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        let out = std::process::Command::new("getfattr")
            .arg("-d")
            .arg("--absolute-names")
            .arg(&p)
            .output();
        if let Ok(o) = out {
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                if let Some((name, _)) = line.split_once('=') {
                    if name.starts_with("user.") {
                        let _ = std::process::Command::new("setfattr")
                            .arg("-x")
                            .arg(name)
                            .arg(&p)
                            .status();
                        return Ok(());
                    }
                }
            }
        }
    }
    Ok(())
}

#[test]
fn in_place_update_reaches_the_target_bit_for_bit() {
    let t = scratch();
    let a = t.path().join("a");
    build_nasty_tree(&a).unwrap();
    let repo = t.path().join("repo");
    slate_ok(&["init", "--repo", s(&repo)]);
    slate_ok(&["commit", "--repo", s(&repo), "--channel", "c", s(&a)]);
    let b = t.path().join("b");
    std::process::Command::new("cp")
        .arg("-a")
        .arg(&a)
        .arg(&b)
        .status()
        .unwrap();
    mutate(&b);
    slate_ok(&["commit", "--repo", s(&repo), "--channel", "c", s(&b)]);

    let r = slate_repo::Repo::open(&repo).unwrap();
    let old = r.load("c~1").unwrap();
    let new = r.load("c").unwrap();
    let slot = t.path().join("slot");
    r.checkout("c~1", &slot, false, &NoProgress).unwrap();
    assert_same_tree(&a, &slot);

    let mut src = ChunkReader::new(r.storage.as_ref(), &new.index);
    let stats = slate_agent::apply::update_in_place(&slot, &old.manifest, &new.manifest, &mut src).unwrap();
    assert_same_tree(&b, &slot);
    assert!(stats.unchanged > 50, "most entries are left alone: {stats:?}");
    assert!(stats.files_written < 20, "only changed files are rewritten: {stats:?}");
    assert!(!slot.join(".slate-staging").exists());

    // And back again: downgrades are updates too.
    let mut src = ChunkReader::new(r.storage.as_ref(), &new.index);
    slate_agent::apply::update_in_place(&slot, &new.manifest, &old.manifest, &mut src).unwrap();
    assert_same_tree(&a, &slot);
    let _ = NoProgress;
}
