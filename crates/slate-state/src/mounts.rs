//! Mount primitives for [`crate::apply`]: opening paths inside the root
//! without ever leaving it, and mounting onto what was opened.
//!
//! Every target is opened with `openat2(RESOLVE_IN_ROOT)` relative to the
//! root, so a symlink in the image (`/var/run -> /run`, or a malicious
//! `/etc/x -> /../../host`) resolves inside the root, and the mount goes to
//! `/proc/self/fd/N` of exactly what was checked. A descriptor opened
//! before a mount keeps seeing what lies beneath it, which is how the
//! image's content is copied into the tmpfs that covers it.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode as FsMode, OFlags, ResolveFlags, StatxFlags};
use rustix::mount::{MountFlags, UnmountFlags};

use crate::error::{Error, Result};

/// What a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// Anything else (a symlink, a device...): never a mount target.
    Other,
}

/// An opened target: an `O_PATH` descriptor and what it is.
pub struct Target {
    /// The descriptor.
    pub fd: OwnedFd,
    /// Its type.
    pub found: Found,
}

impl Target {
    /// The path through which the kernel reaches exactly this inode. For
    /// a directory it ends in `/.`, so that walking it (which does not
    /// follow the last symlink) starts inside the directory, not at the
    /// `/proc` link.
    pub fn proc_path(&self) -> PathBuf {
        let p = fd_path(&self.fd);
        if self.found == Found::Dir {
            p.join(".")
        } else {
            p
        }
    }
}

/// `/proc/self/fd/N` of a descriptor.
pub fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Open the root directory.
pub fn open_root(root: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        FsMode::empty(),
    )
    .map_err(|e| {
        Error(format!(
            "cannot open the root {}: {}",
            root.display(),
            io::Error::from(e)
        ))
    })
}

/// Open `rel` (relative, "" for the root) beneath `root`, resolving any
/// symlink on the way inside the root; the last component is not followed.
/// `None` when it does not exist.
pub fn open_in(root: &OwnedFd, rel: &str) -> Result<Option<Target>> {
    let path = if rel.is_empty() { "." } else { rel };
    let fd = match rustix::fs::openat2(
        root,
        path,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        FsMode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(Error(format!("cannot open /{rel} in the root: {}", io::Error::from(e)))),
    };
    let st = rustix::fs::fstat(&fd).map_err(|e| Error(format!("/{rel}: {}", io::Error::from(e))))?;
    let found = match rustix::fs::FileType::from_raw_mode(st.st_mode) {
        rustix::fs::FileType::Directory => Found::Dir,
        rustix::fs::FileType::RegularFile => Found::File,
        _ => Found::Other,
    };
    Ok(Some(Target { fd, found }))
}

/// Whether `fd` is the root of a mount (something is mounted exactly here).
pub fn is_mount_root(fd: &impl AsFd) -> Result<bool> {
    let st = rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS)
        .map_err(|e| Error(format!("statx: {}", io::Error::from(e))))?;
    if !st.stx_attributes_mask.contains(rustix::fs::StatxAttributes::MOUNT_ROOT) {
        return Err(Error::new(
            "this kernel cannot tell mount points (statx STATX_ATTR_MOUNT_ROOT needs Linux 5.8)",
        ));
    }
    Ok(st.stx_attributes.contains(rustix::fs::StatxAttributes::MOUNT_ROOT))
}

/// Whether the mount holding `fd` is read-only.
pub fn is_readonly(fd: &impl AsFd) -> Result<bool> {
    let st = rustix::fs::fstatvfs(fd).map_err(|e| Error(format!("statvfs: {}", io::Error::from(e))))?;
    Ok(st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))
}

fn mount_err(what: &str, target: &str, e: rustix::io::Errno) -> Error {
    let hint = if e == rustix::io::Errno::PERM {
        " (mounting needs root, in the machine's own mount namespace or a private one)"
    } else {
        ""
    };
    Error(format!("cannot {what} on {target}: {}{hint}", io::Error::from(e)))
}

/// Options of a tmpfs.
pub struct TmpfsOptions {
    /// Permission bits of its root.
    pub mode: u32,
    /// Owner of its root.
    pub uid: u32,
    /// Group of its root.
    pub gid: u32,
    /// `size=` (`64M`, `10%`), else the kernel's default (half of RAM).
    pub size: Option<String>,
}

/// Mount a tmpfs on `target`; `name` is the path for messages.
pub fn mount_tmpfs(target: &Path, name: &str, o: &TmpfsOptions) -> Result<()> {
    let mut data = format!("mode={:o},uid={},gid={}", o.mode, o.uid, o.gid);
    if let Some(s) = &o.size {
        data.push_str(",size=");
        data.push_str(s);
    }
    let data = std::ffi::CString::new(data).expect("no NUL in mount options");
    rustix::mount::mount(
        "slate-state",
        target,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        Some(data.as_c_str()),
    )
    .map_err(|e| mount_err("mount a tmpfs", name, e))
}

/// Mount an overlay on `target`: the image's directory `lower` beneath,
/// writes going to `upper` (with `work` beside it, on the same tmpfs).
pub fn mount_overlay(target: &Path, name: &str, lower: &Path, upper: &Path, work: &Path) -> Result<()> {
    for p in [lower, upper, work] {
        let s = p.to_string_lossy();
        if s.contains([',', ':', '\\']) {
            return Err(Error(format!("cannot use {s} in overlay options")));
        }
    }
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let data = std::ffi::CString::new(data).expect("no NUL in paths");
    rustix::mount::mount(
        "slate-state",
        target,
        "overlay",
        MountFlags::empty(),
        Some(data.as_c_str()),
    )
    .map_err(|e| mount_err("mount an overlay", name, e))
}

/// Bind-mount `source` on `target`.
pub fn bind(source: &Path, target: &Path, name: &str) -> Result<()> {
    rustix::mount::mount_bind(source, target).map_err(|e| mount_err("bind-mount", name, e))
}

/// Make the mount at `target` read-only (only this mount, not the
/// filesystem behind it, which other mounts may share).
pub fn remount_readonly(target: &Path, name: &str) -> Result<()> {
    rustix::mount::mount_remount(target, MountFlags::BIND | MountFlags::RDONLY, "")
        .map_err(|e| mount_err("make the mount read-only", name, e))
}

/// Mount a device (any filesystem the kernel detects via mount(8)).
pub fn mount_device(dev: &Path, target: &Path) -> Result<()> {
    let out = std::process::Command::new("mount")
        .arg(dev)
        .arg(target)
        .output()
        .map_err(|e| Error(format!("cannot run mount(8) for {}: {e}", dev.display())))?;
    if !out.status.success() {
        return Err(Error(format!(
            "cannot mount the state device {}: {}",
            dev.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Detach the mount at `target` (lazily: mounts made from it stay).
pub fn detach(target: &Path) -> Result<()> {
    rustix::mount::unmount(target, UnmountFlags::DETACH)
        .map_err(|e| Error(format!("cannot unmount {}: {}", target.display(), io::Error::from(e))))
}

/// A private scratch tmpfs that files are prepared in before they are
/// bind-mounted into the root. It is detached when dropped; the bind
/// mounts made from it keep their files.
pub struct Scratch {
    /// Its mount point.
    pub path: PathBuf,
    mounted: bool,
}

impl Scratch {
    /// Mount a scratch tmpfs in a new directory under /run (else the
    /// temporary directory).
    pub fn new() -> Result<Scratch> {
        let base = if Path::new("/run").is_dir() {
            PathBuf::from("/run")
        } else {
            std::env::temp_dir()
        };
        let path = base.join(format!("slate-state.{}", std::process::id()));
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error(format!("cannot create {}: {e}", path.display()))),
        }
        let mut s = Scratch { path, mounted: false };
        mount_tmpfs(
            &s.path,
            &s.path.display().to_string(),
            &TmpfsOptions {
                mode: 0o700,
                uid: 0,
                gid: 0,
                size: None,
            },
        )?;
        s.mounted = true;
        Ok(s)
    }

    /// A new empty directory in the scratch space.
    pub fn dir(&self, name: &str) -> Result<PathBuf> {
        let p = self.path.join(name);
        std::fs::create_dir(&p).map_err(|e| Error(format!("cannot create {}: {e}", p.display())))?;
        Ok(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.mounted {
            let _ = detach(&self.path);
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Create `name` in the directory `parent` (an opened target) as an empty
/// directory or file with `mode`, owned by `uid:gid`.
pub fn create_in(parent: &Target, name: &str, dir: bool, mode: u32, uid: u32, gid: u32) -> Result<()> {
    let p = parent.proc_path().join(name);
    let res = if dir {
        std::fs::create_dir(&p)
    } else {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
            .map(|_| ())
    };
    res.map_err(|e| Error(format!("cannot create {name}: {e}")))?;
    rustix::fs::chown(
        &p,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
    .map_err(|e| Error(format!("cannot chown {name}: {}", io::Error::from(e))))?;
    rustix::fs::chmod(&p, FsMode::from_raw_mode(mode))
        .map_err(|e| Error(format!("cannot chmod {name}: {}", io::Error::from(e))))
}
