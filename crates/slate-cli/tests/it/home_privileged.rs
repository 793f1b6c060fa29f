//! A restore does not hand out privileges a backup holds (a setuid-root
//! binary, file capabilities, a block device) unless asked with
//! `--allow-privileged`, and says what it left out; and `slate home`
//! knows whose home it is from the process's uid when USER is unset.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::{home, ok, Setup};
use crate::support::{is_root, s};
use crate::treedigest::assert_same_tree;

/// A v2 `security.capability` value granting cap_net_raw.
fn capability() -> Vec<u8> {
    let mut v = 0x0200_0001u32.to_le_bytes().to_vec();
    for word in [1u32 << 13, 0, 0, 0] {
        v.extend_from_slice(&word.to_le_bytes());
    }
    v
}

/// A home holding what a hostile backup would: a setuid-root shell, a
/// setgid file, a file with capabilities, a block and a char device (the
/// block device hard-linked too), beside ordinary files.
fn hostile_home(root: &Path) {
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::write(root.join("notes.txt"), b"ordinary\n").unwrap();
    let sh = root.join("bin/rootshell");
    std::fs::write(&sh, b"#!/bin/sh\nexec /bin/sh -p\n").unwrap();
    rustix::fs::chown(&sh, Some(rustix::fs::Uid::ROOT), Some(rustix::fs::Gid::ROOT)).unwrap();
    std::fs::set_permissions(&sh, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let sg = root.join("bin/groupy");
    std::fs::write(&sg, b"g").unwrap();
    std::fs::set_permissions(&sg, std::fs::Permissions::from_mode(0o2755)).unwrap();
    let cap = root.join("bin/pinger");
    std::fs::write(&cap, b"p").unwrap();
    rustix::fs::setxattr(
        &cap,
        "security.capability",
        &capability(),
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::setxattr(&cap, "user.kept", b"yes", rustix::fs::XattrFlags::empty()).unwrap();
    let mk = |name: &str, kind, dev| {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join(name),
            kind,
            rustix::fs::Mode::from_raw_mode(0o666),
            dev,
        )
        .unwrap()
    };
    mk("disk", rustix::fs::FileType::BlockDevice, rustix::fs::makedev(8, 0));
    mk("mem", rustix::fs::FileType::CharacterDevice, rustix::fs::makedev(1, 1));
    std::fs::hard_link(root.join("disk"), root.join("disk-again")).unwrap();
}

#[test]
fn a_restore_leaves_out_setuid_capabilities_and_devices_unless_asked() {
    if !is_root() {
        crate::support::skip("setuid-root files, capabilities and device nodes need root");
        return;
    }
    let m = Setup::new();
    let src = m.root.join("alice");
    hostile_home(&src);
    ok(&m.args("init", &[]), &[]);
    ok(&m.args("backup", &[s(&src)]), &[]);

    // Without the flag: nothing privileged comes back, and stderr says so.
    let target = m.root.join("plain");
    let out = home(&m.args("restore", &["--target", s(&target), "latest"]), &[]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("left out "))
        .unwrap_or_else(|| panic!("no left-out line in:\n{err}"));
    assert!(line.starts_with("left out 6 entries"), "{line}");
    for what in [
        "bin/rootshell (setuid)",
        "bin/groupy (setgid)",
        "bin/pinger (file capabilities)",
        "disk (device node)",
        "disk-again (device node)",
        "mem (device node)",
        "--allow-privileged",
    ] {
        assert!(line.contains(what), "{what} not in {line}");
    }
    let r = target.join(src.strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(r.join("notes.txt")).unwrap(), b"ordinary\n");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(mode(&r.join("bin/rootshell")), 0o755, "the setuid bit is gone");
    assert_eq!(std::fs::metadata(r.join("bin/rootshell")).unwrap().uid(), 0);
    assert_eq!(mode(&r.join("bin/groupy")), 0o755, "the setgid bit is gone");
    let pinger = r.join("bin/pinger");
    assert!(
        rustix::fs::getxattr(&pinger, "security.capability", &mut [0u8; 64]).is_err(),
        "the capability is gone"
    );
    let mut buf = [0u8; 8];
    let n = rustix::fs::getxattr(&pinger, "user.kept", &mut buf).unwrap();
    assert_eq!(&buf[..n], b"yes", "other xattrs are restored");
    for dev in ["disk", "disk-again", "mem"] {
        assert!(std::fs::symlink_metadata(r.join(dev)).is_err(), "{dev} was created");
    }

    // With the flag: bit for bit, and nothing is said to be left out.
    let target = m.root.join("full");
    let out = home(
        &m.args("restore", &["--allow-privileged", "--target", s(&target), "latest"]),
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("left out"), "{err}");
    assert_same_tree(&src, &target.join(src.strip_prefix("/").unwrap()));
}

#[test]
fn slate_home_knows_the_user_from_the_uid_when_user_is_unset() {
    let m = Setup::new();
    let src = m.root.join("files");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), b"a").unwrap();
    // The Setup's arguments without `--user alice`.
    let without_user = |cmd: &'static str, rest: &[&str]| {
        let mut v: Vec<String> = m.args(cmd, rest).iter().map(|a| a.to_string()).collect();
        let i = v.iter().position(|a| a == "--user").unwrap();
        v.drain(i..i + 2);
        v
    };
    let run = |args: Vec<String>| {
        let mut c = std::process::Command::new(crate::support::slate_bin());
        c.arg("home")
            .args(&args)
            .env_remove("USER")
            .env_remove("SUDO_USER")
            .env_remove("LOGNAME")
            .env_remove("SLATE_PASSPHRASE")
            .env_remove("SLATE_AGENT_CONFIG")
            .env_remove("SLATE_HOME_KEY_FILE")
            .stdin(std::process::Stdio::null());
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "slate home {args:?} with USER unset failed:\n{err}"
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let me = slate_home::user::name_of_uid(slate_home::user::current_uid(), Path::new("/etc/passwd"))
        .expect("the test's own uid is in /etc/passwd");
    run(without_user("init", &[]));
    run(without_user("backup", &[s(&src)]));
    // The snapshot records whose home it is: the uid's name.
    let listing = run(without_user("snapshots", &[]));
    assert!(listing.contains(&format!("{me}@")), "{listing}");
}
