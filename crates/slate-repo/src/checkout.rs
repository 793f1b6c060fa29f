//! Materialising a manifest into an empty directory, bit for bit.
//!
//! Every name is created relative to a directory descriptor opened with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so even a manifest that
//! slipped past validation could not make a write land outside the
//! destination. Order matters for fidelity: directories first; then files,
//! symlinks and special files in parallel, each with owner, then mode, then
//! xattrs (a chown clears setuid bits and file capabilities), then times;
//! then hard links; last, directory metadata deepest first, because adding
//! an entry to a directory changes its mtime.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, Timespec, Timestamps};
use slate_core::manifest::{path as mpath, Entry, FileData, Kind, Manifest, Meta};
use slate_core::ChunkId;

use crate::error::{Error, Result};
use crate::progress::Progress;

/// Somewhere verified chunk bytes come from.
pub trait ChunkSource {
    /// Call `f` with the verified bytes of chunk `id`.
    fn with_chunk(&mut self, id: &ChunkId, f: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> Result<()>;
}

impl ChunkSource for crate::reader::ChunkReader<'_> {
    fn with_chunk(&mut self, id: &ChunkId, f: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> Result<()> {
        crate::reader::ChunkReader::with_chunk(self, id, |d| f(d))?.map_err(Error::Io)
    }
}

/// What a checkout wrote.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CheckoutStats {
    /// Entries created.
    pub entries: u64,
    /// Regular files written (hard links counted once).
    pub files: u64,
    /// Bytes of file data written.
    pub bytes: u64,
}

/// Data per parallel batch: large enough to amortise a batch's setup,
/// small enough that both cores stay busy to the end.
const BATCH_BYTES: u64 = 4 << 20;
const BATCH_ENTRIES: usize = 512;

/// An I/O error naming the entry `path` beneath `dest`.
pub fn err_at(dest: &Path, path: &[u8], what: &str, e: impl std::fmt::Display) -> Error {
    Error::Io(io::Error::other(format!(
        "{}/{}: {what}: {e}",
        dest.display(),
        mpath::display(path)
    )))
}

/// Raw path bytes as an `OsStr` for system calls.
pub fn cpath(p: &[u8]) -> &std::ffi::OsStr {
    std::ffi::OsStr::from_bytes(p)
}

/// Opens parent directories beneath the destination, remembering the last.
pub struct Dirs<'a> {
    dest: &'a OwnedFd,
    dest_path: &'a Path,
    last: Option<(Vec<u8>, OwnedFd)>,
}

impl<'a> Dirs<'a> {
    /// Parents beneath `dest` (whose path is `dest_path`, for errors).
    pub fn new(dest: &'a OwnedFd, dest_path: &'a Path) -> Self {
        Dirs {
            dest,
            dest_path,
            last: None,
        }
    }

    /// Open the directory `rel` beneath the destination.
    pub fn open(&self, rel: &[u8], flags: OFlags) -> Result<OwnedFd> {
        rustix::fs::openat2(
            self.dest,
            cpath(rel),
            flags | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|e| err_at(self.dest_path, rel, "open directory", io::Error::from(e)))
    }

    /// A descriptor of `path`'s parent directory.
    pub fn parent(&mut self, path: &[u8]) -> Result<std::os::fd::BorrowedFd<'_>> {
        let parent = mpath::parent(path);
        if parent.is_empty() {
            return Ok(self.dest.as_fd());
        }
        if self.last.as_ref().map(|(p, _)| p.as_slice()) != Some(parent) {
            let fd = self.open(parent, OFlags::PATH)?;
            self.last = Some((parent.to_vec(), fd));
        }
        Ok(self.last.as_ref().unwrap().1.as_fd())
    }
}

fn times(meta: &Meta) -> Timestamps {
    let t = Timespec {
        tv_sec: meta.mtime.sec,
        tv_nsec: meta.mtime.nsec as _,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn uid_gid(meta: &Meta) -> (Option<rustix::fs::Uid>, Option<rustix::fs::Gid>) {
    (
        Some(rustix::fs::Uid::from_raw(meta.uid)),
        Some(rustix::fs::Gid::from_raw(meta.gid)),
    )
}

/// Set owner, mode, xattrs and times on an open regular file or directory.
pub fn apply_meta_fd(fd: &impl AsFd, meta: &Meta, dest: &Path, path: &[u8]) -> Result<()> {
    let (u, g) = uid_gid(meta);
    rustix::fs::fchown(fd, u, g).map_err(|e| err_at(dest, path, "chown", io::Error::from(e)))?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode))
        .map_err(|e| err_at(dest, path, "chmod", io::Error::from(e)))?;
    for x in &meta.xattrs {
        rustix::fs::fsetxattr(fd, cpath(&x.name), &x.value, rustix::fs::XattrFlags::empty()).map_err(|e| {
            err_at(
                dest,
                path,
                &format!("set xattr {}", String::from_utf8_lossy(&x.name)),
                io::Error::from(e),
            )
        })?;
    }
    rustix::fs::futimens(fd, &times(meta)).map_err(|e| err_at(dest, path, "set times", io::Error::from(e)))
}

/// The same for an entry that cannot be opened (symlink, device, fifo,
/// socket), by name relative to its parent.
pub fn apply_meta_at(
    parent: std::os::fd::BorrowedFd<'_>,
    meta: &Meta,
    symlink: bool,
    dest: &Path,
    path: &[u8],
) -> Result<()> {
    let name = cpath(mpath::name(path));
    let (u, g) = uid_gid(meta);
    rustix::fs::chownat(parent, name, u, g, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| err_at(dest, path, "chown", io::Error::from(e)))?;
    if !symlink {
        rustix::fs::chmodat(parent, name, Mode::from_raw_mode(meta.mode), AtFlags::empty())
            .map_err(|e| err_at(dest, path, "chmod", io::Error::from(e)))?;
    }
    if !meta.xattrs.is_empty() {
        // No fd-relative lsetxattr exists; go through the parent's
        // descriptor in /proc so the lookup still starts beneath DEST.
        let mut via: PathBuf = format!("/proc/self/fd/{}", parent.as_raw_fd()).into();
        via.push(name);
        for x in &meta.xattrs {
            rustix::fs::lsetxattr(&via, cpath(&x.name), &x.value, rustix::fs::XattrFlags::empty()).map_err(|e| {
                err_at(
                    dest,
                    path,
                    &format!("set xattr {}", String::from_utf8_lossy(&x.name)),
                    io::Error::from(e),
                )
            })?;
        }
    }
    rustix::fs::utimensat(parent, name, &times(meta), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| err_at(dest, path, "set times", io::Error::from(e)))
}

/// Write a regular file's content, holes left as holes.
fn write_content(file: &File, data: &FileData, src: &mut dyn ChunkSource) -> Result<()> {
    match &data.extents {
        None => {
            let mut w = io::BufWriter::with_capacity(256 << 10, file);
            for c in &data.chunks {
                src.with_chunk(&c.id, &mut |d| w.write_all(d))?;
            }
            w.flush()?;
        }
        Some(extents) => {
            // The chunks hold the extents' bytes back to back.
            let mut ext = extents.iter();
            let mut cur = ext.next().copied();
            let mut done_in_cur = 0u64;
            for c in &data.chunks {
                src.with_chunk(&c.id, &mut |mut d| {
                    while !d.is_empty() {
                        let Some(x) = cur else {
                            return Err(io::Error::other("chunks run past the file's extents"));
                        };
                        let n = (x.len - done_in_cur).min(d.len() as u64) as usize;
                        file.write_all_at(&d[..n], x.offset + done_in_cur)?;
                        d = &d[n..];
                        done_in_cur += n as u64;
                        if done_in_cur == x.len {
                            cur = ext.next().copied();
                            done_in_cur = 0;
                        }
                    }
                    Ok(())
                })?;
            }
            file.set_len(data.size)?;
        }
    }
    Ok(())
}

fn create_entry(e: &Entry, dirs: &mut Dirs<'_>, src: &mut dyn ChunkSource) -> Result<u64> {
    let dest = dirs.dest_path;
    let parent = dirs.parent(&e.path)?;
    create_at(parent, cpath(mpath::name(&e.path)), e, src, dest)
}

/// Create the non-directory, non-hard-link entry `e` as `name` in `parent`,
/// with its content and all its metadata; returns the file bytes written.
/// `dest` and `e.path` only name it in errors.
pub fn create_at(
    parent: std::os::fd::BorrowedFd<'_>,
    name: &std::ffi::OsStr,
    e: &Entry,
    src: &mut dyn ChunkSource,
    dest: &Path,
) -> Result<u64> {
    let path = &e.path;
    match &e.kind {
        Kind::File(data) => {
            let fd = rustix::fs::openat(
                parent,
                name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(|e| err_at(dest, path, "create", io::Error::from(e)))?;
            let file = File::from(fd);
            write_content(&file, data, src).map_err(|e| err_at(dest, path, "write", e))?;
            apply_meta_fd(&file, &e.meta, dest, path)?;
            Ok(data.size)
        }
        Kind::Symlink(target) => {
            rustix::fs::symlinkat(cpath(target), parent, name)
                .map_err(|e| err_at(dest, path, "symlink", io::Error::from(e)))?;
            apply_meta_at(parent, &e.meta, true, dest, path)?;
            Ok(0)
        }
        Kind::CharDev(_) | Kind::BlockDev(_) | Kind::Fifo | Kind::Socket => {
            let (ft, rdev) = match e.kind {
                Kind::CharDev(r) => (rustix::fs::FileType::CharacterDevice, r),
                Kind::BlockDev(r) => (rustix::fs::FileType::BlockDevice, r),
                Kind::Fifo => (rustix::fs::FileType::Fifo, 0),
                _ => (rustix::fs::FileType::Socket, 0),
            };
            rustix::fs::mknodat(parent, name, ft, Mode::from_raw_mode(0o600), rdev)
                .map_err(|e| err_at(dest, path, "mknod", io::Error::from(e)))?;
            apply_meta_at(parent, &e.meta, false, dest, path)?;
            Ok(0)
        }
        Kind::Dir | Kind::HardLink(_) => unreachable!("handled in their own passes"),
    }
}

/// Open `dest` as an empty directory, creating it if absent.
fn open_empty_dest(dest: &Path) -> Result<OwnedFd> {
    match std::fs::symlink_metadata(dest) {
        Ok(md) if md.is_dir() => {
            let mut rd = std::fs::read_dir(dest).map_err(|e| Error::Invalid(format!("{}: {e}", dest.display())))?;
            if rd.next().is_some() {
                return Err(Error::Invalid(format!(
                    "{} is not empty; check out into an empty or new directory",
                    dest.display()
                )));
            }
        }
        Ok(_) => {
            return Err(Error::Invalid(format!(
                "{} exists and is not a directory",
                dest.display()
            )))
        }
        Err(_) => {
            std::fs::create_dir(dest).map_err(|e| Error::Invalid(format!("cannot create {}: {e}", dest.display())))?
        }
    }
    rustix::fs::open(
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::Invalid(format!("{}: {}", dest.display(), io::Error::from(e))))
}

/// Write `m` into `dest` (absent or empty), reading content from sources
/// made by `new_source` (one per parallel batch), then sync if asked.
pub fn materialize<S: ChunkSource>(
    m: &Manifest,
    dest: &Path,
    new_source: impl Fn() -> S + Sync,
    sync: bool,
    progress: &dyn Progress,
) -> Result<CheckoutStats> {
    let dest_fd = open_empty_dest(dest)?;
    let mut stats = CheckoutStats::default();

    // Directories, in tree order so each parent exists first.
    let mut dirs = Dirs::new(&dest_fd, dest);
    for e in m.entries.iter().skip(1).filter(|e| matches!(e.kind, Kind::Dir)) {
        let parent = dirs.parent(&e.path)?;
        rustix::fs::mkdirat(parent, cpath(mpath::name(&e.path)), Mode::from_raw_mode(0o700))
            .map_err(|err| err_at(dest, &e.path, "mkdir", io::Error::from(err)))?;
    }

    // Files, symlinks and special files, in parallel batches.
    let total: u64 = m.total_file_bytes();
    progress.start("checkout", total);
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let (mut cur, mut cur_bytes) = (Vec::new(), 0u64);
    for (i, e) in m.entries.iter().enumerate() {
        if matches!(e.kind, Kind::Dir | Kind::HardLink(_)) {
            continue;
        }
        if let Kind::File(f) = &e.kind {
            cur_bytes += f.data_len();
        }
        cur.push(i);
        if cur_bytes >= BATCH_BYTES || cur.len() >= BATCH_ENTRIES {
            batches.push(std::mem::take(&mut cur));
            cur_bytes = 0;
        }
    }
    if !cur.is_empty() {
        batches.push(cur);
    }
    let written: Vec<(u64, u64)> = batches
        .par_iter()
        .map(|batch| {
            let mut src = new_source();
            let mut dirs = Dirs::new(&dest_fd, dest);
            let (mut files, mut bytes) = (0, 0);
            for &i in batch {
                let n = create_entry(&m.entries[i], &mut dirs, &mut src)?;
                if matches!(m.entries[i].kind, Kind::File(_)) {
                    files += 1;
                    bytes += n;
                    progress.advance(n);
                }
            }
            Ok((files, bytes))
        })
        .collect::<Result<_>>()?;
    for (f, b) in written {
        stats.files += f;
        stats.bytes += b;
    }
    progress.finish();

    // Hard links, once their leaders are complete.
    let mut dirs = Dirs::new(&dest_fd, dest);
    for e in &m.entries {
        if let Kind::HardLink(leader) = e.kind {
            let lp = &m.entries[leader as usize].path;
            let leader_parent = dirs.open_or_dest(mpath::parent(lp))?;
            let parent = dirs.parent(&e.path)?;
            rustix::fs::linkat(
                &leader_parent,
                cpath(mpath::name(lp)),
                parent,
                cpath(mpath::name(&e.path)),
                AtFlags::empty(),
            )
            .map_err(|err| err_at(dest, &e.path, "link", io::Error::from(err)))?;
        }
    }

    // Directory metadata, deepest first; the root last, on DEST itself.
    for e in m.entries.iter().skip(1).rev().filter(|e| matches!(e.kind, Kind::Dir)) {
        let fd = dirs.open(&e.path, OFlags::RDONLY)?;
        apply_meta_fd(&fd, &e.meta, dest, &e.path)?;
    }
    apply_meta_fd(&dest_fd, &m.entries[0].meta, dest, b"")?;
    stats.entries = m.entries.len() as u64;

    if sync {
        rustix::fs::syncfs(&dest_fd).map_err(|e| {
            Error::Io(io::Error::other(format!(
                "{}: sync: {}",
                dest.display(),
                io::Error::from(e)
            )))
        })?;
    }
    Ok(stats)
}

impl Dirs<'_> {
    /// Open `rel` as an O_PATH descriptor, or the destination for "".
    pub fn open_or_dest(&self, rel: &[u8]) -> Result<OwnedFd> {
        if rel.is_empty() {
            return self.dest.try_clone().map_err(Error::Io);
        }
        self.open(rel, OFlags::PATH)
    }
}
