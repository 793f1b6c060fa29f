//! A "nasty" directory tree that covers every kind of filesystem metadata a
//! bit-for-bit snapshot/checkout has to carry.
//!
//! [`build_nasty_tree`] creates, under a fresh root:
//!
//! * `files/`: empty, 1-byte, 12345-byte, 100 KiB and 3 MiB files of
//!   deterministic pseudo-random data (SplitMix64, no `rand`);
//! * `dedup/`: files whose content is identical to others at different paths
//!   (with different modes, so deduplication must not merge metadata);
//! * `sparse/`: a 64 MiB file that starts with a hole, has a few data regions
//!   of 4 KiB..1 MiB at scattered (partly unaligned) offsets and a hole at the
//!   end, and a 32 MiB file that is all hole (see [`SPARSE_FILES`]);
//! * `tree/`: nested directories (one owned by 1234:5678), `empty-dir/`, the
//!   0700 directory `private/`, the 01777 directory `sticky/`, a setgid
//!   directory `perms/setgid-dir/`;
//! * `links/`: relative, absolute (`/etc/passwd`), dangling, `..`-escaping,
//!   to-a-directory and non-UTF-8 targets, symlinks with foreign owners, one
//!   with a fixed nanosecond mtime;
//! * `hardlinks/`: a 3-name link group spanning three directories, a
//!   hard-linked empty file and a hard-linked symlink;
//! * `special/`: a fifo, a unix socket node, char device 1:3, block device
//!   7:200;
//! * `perms/`: setuid 04755, setgid 02755 (on a foreign-owned file, so chown
//!   must come before chmod), files owned by 1234:5678 and 4000000:4000001;
//! * `times/`: mtimes at the epoch, before 1970 (-123456789 s + 987654321 ns,
//!   and -1 ns on a directory) and in 2100; every other entry (directories
//!   included) gets a deterministic nanosecond mtime in a final, deepest-first
//!   pass;
//! * `xattrs/`: `user.*` values with NUL/0xff bytes, an empty value, a 2000-byte
//!   value, `trusted.*` (also on a symlink), a v2 `security.capability`
//!   (cap_net_raw, permitted + effective) on a foreign-owned file, POSIX
//!   access/default ACLs in the kernel's binary format, a directory with a
//!   default ACL holding one child created before the ACL (no ACL) and one
//!   created after (inherited ACL), and an xattr on a directory;
//! * `names/`: non-UTF-8 bytes, a newline, a tab, spaces with `%` and `=`, a
//!   leading dash, UTF-8, a 255-byte name and a path of more than 255 bytes;
//! * `root-only/` (root only): a mode-0000 file and a read-only 0555
//!   directory with a child;
//! * the root itself: mode 0755 and a `user.*` xattr.
//!
//! The result is deterministic: two trees built by the same user digest the
//! same (the root's mtime aside, which treedigest ignores by default).
//!
//! Items that need privileges (chown to foreign ids, device nodes, `trusted.*`,
//! `security.capability`, the root-only extras) and xattrs/ACLs on filesystems
//! without support are skipped with a note on stderr, but only when not
//! running as root; as root every failure is an error.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{lchown, symlink, FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{makedev, AtFlags, FileType, Mode, Timespec, Timestamps, XattrFlags, CWD};

/// Files of the nasty tree (relative to its root) that are sparse; check them
/// with `treedigest::assert_sparse_preserved`, since treedigest ignores holes.
pub const SPARSE_FILES: [&str; 2] = ["sparse/sparse-64m", "sparse/all-hole"];

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Build the nasty tree at `root`, which must not exist or be an empty
/// directory. See the module docs for what it contains.
pub fn build_nasty_tree(root: &Path) -> io::Result<()> {
    match fs::read_dir(root) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{}: not empty", root.display()),
                ));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(root).map_err(|e| ctx(e, "mkdir", root))?;
        }
        Err(e) => return Err(ctx(e, "read_dir", root)),
    }
    let mut b = Builder {
        root: root.to_path_buf(),
        is_root: rustix::process::geteuid().is_root(),
        times: HashMap::new(),
    };
    b.chmod(Path::new(""), 0o755)?;
    b.files()?;
    b.sparse()?;
    b.dirs()?;
    b.symlinks()?;
    b.hardlinks()?;
    b.specials()?;
    b.perms()?;
    b.times()?;
    b.xattrs()?;
    b.names()?;
    b.root_only()?;
    b.set_xattr(Path::new(""), "user.slate.root", b"root of the nasty tree")?;
    b.stamp_all()
}

/// SplitMix64: a tiny deterministic PRNG.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.fill(&mut v);
        v
    }
}

/// FNV-1a, used to derive a default timestamp from a path.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn ctx(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

fn ts(tv_sec: i64, tv_nsec: i64) -> Timespec {
    Timespec { tv_sec, tv_nsec }
}

/// Kernel binary format of a POSIX ACL xattr (`posix_acl_xattr_header` then
/// `posix_acl_xattr_entry`s); entries must be sorted by tag, then id.
fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    const ACL_VERSION: u32 = 2;
    let mut v = ACL_VERSION.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

const ACL_USER_OBJ: u16 = 0x01;
const ACL_USER: u16 = 0x02;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_GROUP: u16 = 0x08;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;
const ACL_UNDEFINED_ID: u32 = u32::MAX;

/// A `vfs_cap_data` v2 blob: magic/flags, then permitted/inheritable for
/// capabilities 0..31 and 32..63. Grants cap_net_raw, permitted + effective.
fn capability_v2() -> Vec<u8> {
    const VFS_CAP_REVISION_2: u32 = 0x0200_0000;
    const VFS_CAP_FLAGS_EFFECTIVE: u32 = 0x0000_0001;
    const CAP_NET_RAW: u32 = 13;
    let mut v = (VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE).to_le_bytes().to_vec();
    for word in [1u32 << CAP_NET_RAW, 0, 0, 0] {
        v.extend_from_slice(&word.to_le_bytes());
    }
    debug_assert_eq!(v.len(), 20);
    v
}

struct Builder {
    root: PathBuf,
    is_root: bool,
    /// mtime overrides by relative path; everything else gets a default.
    times: HashMap<PathBuf, Timespec>,
}

impl Builder {
    fn p(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    /// Accept a failure of `what` only when not root and it looks like a
    /// missing privilege or missing filesystem support.
    fn optional(&self, what: &str, rel: &Path, r: io::Result<()>) -> io::Result<()> {
        use rustix::io::Errno;
        match r {
            Ok(()) => Ok(()),
            Err(e)
                if !self.is_root
                    && [Errno::PERM, Errno::ACCESS, Errno::OPNOTSUPP]
                        .iter()
                        .any(|n| e.raw_os_error() == Some(n.raw_os_error())) =>
            {
                eprintln!("nasty tree: skipping {what} on {} (not root): {e}", rel.display());
                Ok(())
            }
            Err(e) => Err(ctx(e, what, &self.p(rel))),
        }
    }

    fn mkdir(&self, rel: impl AsRef<Path>, mode: u32) -> io::Result<()> {
        let rel = rel.as_ref();
        let path = self.p(rel);
        fs::create_dir(&path).map_err(|e| ctx(e, "mkdir", &path))?;
        self.chmod(rel, mode)
    }

    fn chmod(&self, rel: impl AsRef<Path>, mode: u32) -> io::Result<()> {
        let path = self.p(rel.as_ref());
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(|e| ctx(e, "chmod", &path))
    }

    fn chown(&self, rel: impl AsRef<Path>, uid: u32, gid: u32) -> io::Result<()> {
        let rel = rel.as_ref();
        let r = lchown(self.p(rel), Some(uid), Some(gid));
        self.optional(&format!("lchown {uid}:{gid}"), rel, r)
    }

    fn write(&self, rel: impl AsRef<Path>, data: &[u8], mode: u32) -> io::Result<()> {
        let rel = rel.as_ref();
        let path = self.p(rel);
        fs::write(&path, data).map_err(|e| ctx(e, "write", &path))?;
        self.chmod(rel, mode)
    }

    fn symlink(&self, rel: impl AsRef<Path>, target: impl AsRef<Path>) -> io::Result<()> {
        let path = self.p(rel.as_ref());
        symlink(target, &path).map_err(|e| ctx(e, "symlink", &path))
    }

    fn link(&self, existing: impl AsRef<Path>, new: impl AsRef<Path>) -> io::Result<()> {
        let (old, new) = (self.p(existing.as_ref()), self.p(new.as_ref()));
        rustix::fs::linkat(CWD, &old, CWD, &new, AtFlags::empty()).map_err(|e| ctx(e.into(), "link", &new))
    }

    fn mknod(&self, rel: impl AsRef<Path>, kind: FileType, dev: (u32, u32)) -> io::Result<()> {
        let rel = rel.as_ref();
        let r = rustix::fs::mknodat(
            CWD,
            self.p(rel),
            kind,
            Mode::from_raw_mode(0o600),
            makedev(dev.0, dev.1),
        )
        .map_err(io::Error::from);
        self.optional(&format!("mknod {kind:?}"), rel, r)
    }

    fn set_xattr(&self, rel: impl AsRef<Path>, name: &str, value: &[u8]) -> io::Result<()> {
        let rel = rel.as_ref();
        let r = rustix::fs::lsetxattr(self.p(rel), name, value, XattrFlags::CREATE).map_err(io::Error::from);
        self.optional(&format!("setxattr {name}"), rel, r)
    }

    fn mtime(&mut self, rel: impl AsRef<Path>, t: Timespec) {
        self.times.insert(rel.as_ref().to_path_buf(), t);
    }

    fn files(&self) -> io::Result<()> {
        self.mkdir("files", 0o755)?;
        self.write("files/empty", b"", 0o644)?;
        self.write("files/one-byte", b"x", 0o644)?;
        self.write("files/odd-size", &SplitMix64(3).bytes(12345), 0o600)?;
        self.write("files/random-100k", &SplitMix64(1).bytes(100 * 1024), 0o640)?;

        // 3 MiB written in 12 chunks of one continuous pseudo-random stream.
        let path = self.p(Path::new("files/random-3m"));
        let mut f = File::create(&path).map_err(|e| ctx(e, "create", &path))?;
        let mut rng = SplitMix64(2);
        let mut buf = vec![0; 256 * 1024];
        for _ in 0..12 {
            rng.fill(&mut buf);
            f.write_all(&buf).map_err(|e| ctx(e, "write", &path))?;
        }
        drop(f);
        self.chmod("files/random-3m", 0o644)?;

        // Identical content at several paths, with different metadata.
        self.mkdir("dedup", 0o755)?;
        self.mkdir("dedup/deeper", 0o750)?;
        let dup = SplitMix64(4).bytes(64 * 1024 + 7);
        self.write("files/dup-a", &dup, 0o644)?;
        self.write("dedup/dup-b", &dup, 0o600)?;
        self.write("dedup/deeper/dup-c", &dup, 0o755)?;
        self.write("dedup/random-100k-copy", &SplitMix64(1).bytes(100 * 1024), 0o644)?;
        self.write("dedup/empty-too", b"", 0o600)
    }

    fn sparse(&self) -> io::Result<()> {
        self.mkdir("sparse", 0o755)?;
        let path = self.p(Path::new(SPARSE_FILES[0]));
        let f = File::create(&path).map_err(|e| ctx(e, "create", &path))?;
        // (offset, length): starts with a hole, some offsets unaligned.
        let regions = [
            (MIB, 4 * KIB),
            (5 * MIB + 123, 64 * KIB),
            (17 * MIB, MIB),
            (33 * MIB + 4 * KIB, 300 * KIB + 5),
            (47 * MIB - 1, 8 * KIB),
        ];
        let mut rng = SplitMix64(5);
        for (off, len) in regions {
            let data = rng.bytes(len as usize);
            f.write_all_at(&data, off).map_err(|e| ctx(e, "write", &path))?;
        }
        // Hole at the end: ftruncate well beyond the last data.
        f.set_len(64 * MIB).map_err(|e| ctx(e, "ftruncate", &path))?;
        drop(f);
        self.chmod(SPARSE_FILES[0], 0o644)?;

        let path = self.p(Path::new(SPARSE_FILES[1]));
        let f = File::create(&path).map_err(|e| ctx(e, "create", &path))?;
        f.set_len(32 * MIB).map_err(|e| ctx(e, "ftruncate", &path))?;
        drop(f);
        self.chmod(SPARSE_FILES[1], 0o600)
    }

    fn dirs(&self) -> io::Result<()> {
        self.mkdir("tree", 0o755)?;
        self.mkdir("tree/a", 0o755)?;
        self.mkdir("tree/a/b", 0o750)?;
        self.mkdir("tree/a/b/c", 0o711)?;
        self.mkdir("tree/a/b/c/d", 0o755)?;
        self.mkdir("tree/a/b/c/d/e", 0o755)?;
        self.write("tree/a/b/c/d/e/leaf", b"leaf\n", 0o644)?;
        self.write("tree/a/top", b"top\n", 0o644)?;
        self.chown("tree/a/b", 1234, 5678)?;
        self.mkdir("empty-dir", 0o755)?;
        self.mkdir("private", 0o700)?;
        self.write("private/secret", b"secret\n", 0o600)?;
        self.mkdir("sticky", 0o1777)?;
        self.write("sticky/someone-elses", b"tmp\n", 0o666)?;
        self.chown("sticky/someone-elses", 1234, 5678)
    }

    fn symlinks(&mut self) -> io::Result<()> {
        self.mkdir("links", 0o755)?;
        self.symlink("links/relative", "../files/one-byte")?;
        self.symlink("links/absolute", "/etc/passwd")?;
        self.symlink("links/dangling", "does/not/exist")?;
        self.symlink("links/dotdot", "../..")?;
        self.symlink("links/escaping", "../../../../../../outside/the/tree")?;
        self.symlink("links/to-dir", "../tree/a")?;
        self.symlink("links/self", "self")?;
        self.symlink("links/weird-target", OsStr::from_bytes(b"new\nline \xff\xfe %= target"))?;
        self.symlink("links/timed", "../files/empty")?;
        self.mtime("links/timed", ts(1_234_567_890, 123_456_789));
        self.symlink("links/owned-1234", "../files/empty")?;
        self.chown("links/owned-1234", 1234, 5678)?;
        self.symlink("links/owned-big", "dangling-and-owned")?;
        self.chown("links/owned-big", 4_000_000, 4_000_001)
    }

    fn hardlinks(&self) -> io::Result<()> {
        self.mkdir("hardlinks", 0o755)?;
        self.mkdir("hardlinks/sub", 0o755)?;
        // A 3-name group spanning three directories.
        self.write("hardlinks/group-1", b"one inode, three names\n", 0o640)?;
        self.chown("hardlinks/group-1", 1234, 5678)?;
        self.set_xattr("hardlinks/group-1", "user.slate.hl", b"shared")?;
        self.link("hardlinks/group-1", "hardlinks/sub/group-2")?;
        self.link("hardlinks/group-1", "files/group-3")?;
        // A hard-linked empty file.
        self.write("hardlinks/empty-1", b"", 0o644)?;
        self.link("hardlinks/empty-1", "dedup/empty-2")?;
        // A hard-linked symlink (linkat does not follow it).
        self.symlink("hardlinks/sym-1", "group-1")?;
        self.link("hardlinks/sym-1", "hardlinks/sub/sym-2")
    }

    fn specials(&self) -> io::Result<()> {
        self.mkdir("special", 0o755)?;
        self.mknod("special/fifo", FileType::Fifo, (0, 0))?;
        self.chmod("special/fifo", 0o640)?;
        self.mknod("special/socket", FileType::Socket, (0, 0))?;
        self.chmod("special/socket", 0o755)?;
        for (rel, kind, dev, mode) in [
            ("special/null", FileType::CharacterDevice, (1, 3), 0o666),
            ("special/loop200", FileType::BlockDevice, (7, 200), 0o660),
        ] {
            self.mknod(rel, kind, dev)?;
            if self.p(Path::new(rel)).symlink_metadata().is_ok() {
                self.chmod(rel, mode)?;
                self.chown(rel, 0, 6)?;
            }
        }
        Ok(())
    }

    fn perms(&self) -> io::Result<()> {
        self.mkdir("perms", 0o755)?;
        self.write("perms/setuid", b"#!/bin/sh\n", 0o4755)?;
        // chown clears set-id bits: chown first, then chmod.
        self.write("perms/setgid", b"#!/bin/sh\n", 0o644)?;
        self.chown("perms/setgid", 1234, 5678)?;
        self.chmod("perms/setgid", 0o2755)?;
        self.write("perms/setuid-setgid-sticky", b"", 0o7644)?;
        self.write("perms/owned-1234", b"1234:5678\n", 0o644)?;
        self.chown("perms/owned-1234", 1234, 5678)?;
        self.write("perms/owned-big", b"4000000:4000001\n", 0o644)?;
        self.chown("perms/owned-big", 4_000_000, 4_000_001)?;
        self.mkdir("perms/setgid-dir", 0o755)?;
        self.chown("perms/setgid-dir", 1234, 5678)?;
        self.chmod("perms/setgid-dir", 0o2775)?;
        // Inherits gid 5678 (and the setgid bit for the subdirectory).
        self.write("perms/setgid-dir/inherits-gid", b"", 0o644)?;
        self.mkdir("perms/setgid-dir/subdir", 0o755)?;
        self.chmod("perms/setgid-dir/subdir", 0o2755)
    }

    fn times(&mut self) -> io::Result<()> {
        self.mkdir("times", 0o755)?;
        self.write("times/epoch", b"1970\n", 0o644)?;
        self.mtime("times/epoch", ts(0, 0));
        self.write("times/pre-1970", b"1966\n", 0o644)?;
        self.mtime("times/pre-1970", ts(-123_456_789, 987_654_321));
        self.write("times/year-2100", b"2100\n", 0o644)?;
        self.mtime("times/year-2100", ts(4_102_444_800 + 3_661, 1));
        self.mkdir("times/dir-minus-1ns", 0o755)?;
        self.write("times/dir-minus-1ns/child", b"", 0o644)?;
        self.mtime("times/dir-minus-1ns", ts(-1, 999_999_999));
        self.mkdir("times/dir-2100", 0o755)?;
        self.mkdir("times/dir-2100/sub", 0o755)?;
        self.mtime("times/dir-2100", ts(4_102_444_800, 999_999_999));
        self.mtime("times/dir-2100/sub", ts(1_700_000_000, 500));
        Ok(())
    }

    fn xattrs(&self) -> io::Result<()> {
        self.mkdir("xattrs", 0o755)?;
        let f = "xattrs/user-values";
        self.write(f, b"xattrs\n", 0o644)?;
        self.set_xattr(f, "user.binary", b"\x00\xff\x00bin\xfe\n=%\x00")?;
        self.set_xattr(f, "user.empty", b"")?;
        self.set_xattr(f, "user.text", b"hello, world")?;
        self.set_xattr(f, "user.big", &SplitMix64(6).bytes(2000))?;

        self.write("xattrs/trusted", b"", 0o644)?;
        self.set_xattr("xattrs/trusted", "trusted.slate", b"\x01\x02\x00\xff")?;
        self.symlink("xattrs/trusted-symlink", "trusted")?;
        self.set_xattr("xattrs/trusted-symlink", "trusted.slate.on-symlink", b"l")?;

        // A foreign owner and a capability: chown would clear the
        // capability, so it comes first.
        let cap = "xattrs/capability";
        self.write(cap, b"#!/bin/true\n", 0o644)?;
        self.chown(cap, 4_000_000, 4_000_001)?;
        self.chmod(cap, 0o755)?;
        self.set_xattr(cap, "security.capability", &capability_v2())?;

        // Access ACL on a file; it sets the mode's group bits to the mask.
        let file_acl = acl(&[
            (ACL_USER_OBJ, 6, ACL_UNDEFINED_ID),
            (ACL_USER, 5, 1234),
            (ACL_GROUP_OBJ, 4, ACL_UNDEFINED_ID),
            (ACL_GROUP, 6, 5678),
            (ACL_MASK, 7, ACL_UNDEFINED_ID),
            (ACL_OTHER, 4, ACL_UNDEFINED_ID),
        ]);
        self.write("xattrs/acl-file", b"acl\n", 0o644)?;
        self.set_xattr("xattrs/acl-file", "system.posix_acl_access", &file_acl)?;

        // Directory with access + default ACL; one child predates the
        // default ACL (no ACL), the other inherits it.
        let d = "xattrs/acl-dir";
        self.mkdir(d, 0o755)?;
        self.write("xattrs/acl-dir/before-default-acl", b"", 0o644)?;
        let dir_access = acl(&[
            (ACL_USER_OBJ, 7, ACL_UNDEFINED_ID),
            (ACL_USER, 7, 1234),
            (ACL_GROUP_OBJ, 5, ACL_UNDEFINED_ID),
            (ACL_MASK, 7, ACL_UNDEFINED_ID),
            (ACL_OTHER, 5, ACL_UNDEFINED_ID),
        ]);
        let dir_default = acl(&[
            (ACL_USER_OBJ, 7, ACL_UNDEFINED_ID),
            (ACL_USER, 5, 1234),
            (ACL_GROUP_OBJ, 5, ACL_UNDEFINED_ID),
            (ACL_GROUP, 7, 4_000_001),
            (ACL_MASK, 7, ACL_UNDEFINED_ID),
            (ACL_OTHER, 0, ACL_UNDEFINED_ID),
        ]);
        self.set_xattr(d, "system.posix_acl_access", &dir_access)?;
        self.set_xattr(d, "system.posix_acl_default", &dir_default)?;
        self.write("xattrs/acl-dir/inherited-acl", b"", 0o640)?;
        self.mkdir("xattrs/acl-dir/inherited-dir", 0o750)?;

        self.mkdir("xattrs/xattr-dir", 0o755)?;
        self.write("xattrs/xattr-dir/child", b"", 0o644)?;
        self.set_xattr("xattrs/xattr-dir", "user.slate.dir", b"on a directory\xff")
    }

    fn names(&self) -> io::Result<()> {
        self.mkdir("names", 0o755)?;
        let mut weird: Vec<OsString> = [
            &b"non-utf8-\xff\xfe"[..],
            b"new\nline",
            b"tab\there",
            b"spaces % and = signs.txt",
            b"-leading-dash",
            b" leading space",
            "unicode-\u{fc}n\u{ef}c\u{f8}d\u{e9}-\u{65e5}\u{672c}".as_bytes(),
        ]
        .iter()
        .map(|b| OsString::from_vec(b.to_vec()))
        .collect();
        let mut long = b"long-".to_vec();
        long.resize(255, b'n');
        weird.push(OsString::from_vec(long.clone()));
        for (i, name) in weird.iter().enumerate() {
            let rel = Path::new("names").join(name);
            self.write(&rel, format!("{i}\n").as_bytes(), 0o644)?;
        }
        self.mkdir(Path::new("names").join(OsStr::from_bytes(b"dir-\xff")), 0o755)?;

        // More than 255 bytes of path: 5 components of 60 bytes, then a
        // 255-byte name (about 570 bytes relative to the root).
        let mut rel = PathBuf::from("names/deep");
        self.mkdir(&rel, 0o755)?;
        for i in 0..5 {
            rel.push(format!("{i}-{}", "d".repeat(58)));
            self.mkdir(&rel, 0o755)?;
        }
        rel.push(OsStr::from_bytes(&long));
        self.write(&rel, b"deep\n", 0o644)
    }

    /// Entries that break non-root tools (unreadable file, read-only
    /// directory that cannot be cleaned up), so only built as root.
    fn root_only(&self) -> io::Result<()> {
        if !self.is_root {
            eprintln!("nasty tree: skipping root-only/ (not root)");
            return Ok(());
        }
        self.mkdir("root-only", 0o755)?;
        self.write("root-only/mode-0000", b"unreadable\n", 0o000)?;
        self.mkdir("root-only/read-only-dir", 0o755)?;
        self.write("root-only/read-only-dir/child", b"child\n", 0o444)?;
        self.chmod("root-only/read-only-dir", 0o555)
    }

    /// Final pass: set every entry's atime and mtime, children before their
    /// directory, the root last.
    fn stamp_all(&self) -> io::Result<()> {
        self.stamp_dir(Path::new(""))?;
        self.stamp(Path::new(""))
    }

    fn stamp_dir(&self, rel: &Path) -> io::Result<()> {
        let dir = self.p(rel);
        let mut entries = fs::read_dir(&dir)
            .and_then(|it| it.collect::<io::Result<Vec<_>>>())
            .map_err(|e| ctx(e, "read_dir", &dir))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let child = rel.join(entry.file_name());
            let is_dir = entry.file_type().map_err(|e| ctx(e, "stat", &entry.path()))?.is_dir();
            if is_dir {
                self.stamp_dir(&child)?;
            }
            self.stamp(&child)?;
        }
        Ok(())
    }

    fn stamp(&self, rel: &Path) -> io::Result<()> {
        let mtime = self.times.get(rel).copied().unwrap_or_else(|| {
            let h = fnv1a(rel.as_os_str().as_bytes());
            // 2001..2033, any nanosecond.
            ts(
                1_000_000_000 + (h % 1_000_000_000) as i64,
                ((h >> 32) % 1_000_000_000) as i64,
            )
        });
        let times = Timestamps {
            last_access: ts(1_500_000_000, 1),
            last_modification: mtime,
        };
        let path = self.p(rel);
        rustix::fs::utimensat(CWD, &path, &times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| ctx(e.into(), "utimensat", &path))
    }
}
