//! Bringing a slot from the tree it holds to a new one, touching only the
//! entries that differ.
//!
//! Order, so that the old tree stays readable as a source until the new
//! content is complete: (1) write every new or changed file, with all its
//! metadata, under `.slate-staging/` in the slot; (2) remove the entries
//! the new tree does not have, deepest first; (3) in tree order, create new
//! directories, rename staged files into place, (re)create symlinks,
//! special files and hard links, and fix metadata that changed; (4) reset
//! the metadata of every directory whose entries changed, deepest first
//! (an added or removed name changes a directory's mtime); (5) sync.
//! A pass interrupted in the middle leaves the slot marked dirty in the
//! agent state, and the next pass rebuilds it whole.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags};
use slate_core::manifest::{path as mpath, Entry, Kind, Manifest, Meta};
use slate_repo::checkout::{apply_meta_at, apply_meta_fd, cpath, create_at, err_at, ChunkSource, Dirs};

use crate::error::{Error, Result};

const STAGING: &[u8] = b".slate-staging";

/// What an in-place update did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ApplyStats {
    /// Files written (new or changed content).
    pub files_written: u64,
    /// Their bytes.
    pub bytes_written: u64,
    /// Entries removed.
    pub removed: u64,
    /// Entries whose metadata alone changed.
    pub meta_updated: u64,
    /// Entries left as they were.
    pub unchanged: u64,
}

fn same_kind(a: &Kind, b: &Kind) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

fn io_at(root: &Path, path: &[u8], what: &str, e: rustix::io::Errno) -> slate_repo::Error {
    err_at(root, path, what, io::Error::from(e))
}

fn open_root(root: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::Local(format!("cannot open slot {}: {}", root.display(), io::Error::from(e))))
}

/// Remove xattrs that `old` had and `new` has not, on an open fd.
fn drop_stale_xattrs_fd(fd: &impl AsFd, old: &Meta, new: &Meta) -> io::Result<()> {
    for x in &old.xattrs {
        if !new.xattrs.iter().any(|y| y.name == x.name) {
            rustix::fs::fremovexattr(fd, cpath(&x.name)).map_err(io::Error::from)?;
        }
    }
    Ok(())
}

/// Update the tree at `root` (described by `old`) to `new`.
pub fn update_in_place(root: &Path, old: &Manifest, new: &Manifest, src: &mut dyn ChunkSource) -> Result<ApplyStats> {
    let root_fd = open_root(root)?;
    let mut stats = ApplyStats::default();
    let old_by_path: HashMap<&[u8], usize> = old
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.path.as_slice(), i))
        .collect();
    let new_by_path: HashMap<&[u8], usize> = new
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.path.as_slice(), i))
        .collect();

    // What each new entry needs.
    #[derive(Clone, Copy, PartialEq)]
    enum Need {
        Keep,
        Meta(usize),
        Create,
        Stage,
    }
    let mut needs = Vec::with_capacity(new.entries.len());
    for (j, e) in new.entries.iter().enumerate() {
        let need = match old_by_path.get(e.path.as_slice()).map(|&i| (i, &old.entries[i])) {
            None => match e.kind {
                Kind::File(_) => Need::Stage,
                _ => Need::Create,
            },
            Some((i, o)) => {
                if matches!(e.kind, Kind::HardLink(_))
                    || matches!(o.kind, Kind::HardLink(_))
                    || !same_kind(&o.kind, &e.kind)
                {
                    // Links are always remade: their leader may have been replaced.
                    match e.kind {
                        Kind::File(_) => Need::Stage,
                        _ => Need::Create,
                    }
                } else if o.kind != e.kind && !matches!(e.kind, Kind::Dir) {
                    match e.kind {
                        Kind::File(_) => Need::Stage,
                        _ => Need::Create,
                    }
                } else if o.meta != e.meta || j == 0 {
                    Need::Meta(i)
                } else {
                    Need::Keep
                }
            }
        };
        needs.push(need);
    }

    // (1) Stage new content.
    let staging_path = STAGING.to_vec();
    let _ = rustix::fs::unlinkat(&root_fd, cpath(STAGING), AtFlags::REMOVEDIR);
    if needs.contains(&Need::Stage) {
        rustix::fs::mkdirat(&root_fd, cpath(STAGING), Mode::from_raw_mode(0o700))
            .map_err(|e| io_at(root, &staging_path, "mkdir", e))?;
    }
    let staging_fd = needs
        .contains(&Need::Stage)
        .then(|| {
            rustix::fs::openat(
                &root_fd,
                cpath(STAGING),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io_at(root, &staging_path, "open", e))
        })
        .transpose()?;
    for (j, e) in new.entries.iter().enumerate() {
        if needs[j] == Need::Stage {
            let fd = staging_fd.as_ref().expect("staging exists");
            let n = create_at(fd.as_fd(), std::ffi::OsStr::new(&j.to_string()), e, src, root)?;
            stats.files_written += 1;
            stats.bytes_written += n;
        }
    }

    // (2) Remove what goes, deepest first.
    let mut touched: HashSet<Vec<u8>> = HashSet::new();
    let mut dirs = Dirs::new(&root_fd, root);
    for o in old.entries.iter().skip(1).rev() {
        let remove = match new_by_path.get(o.path.as_slice()) {
            None => true,
            Some(&j) => {
                let e = &new.entries[j];
                !same_kind(&o.kind, &e.kind)
                    || matches!(o.kind, Kind::HardLink(_))
                    || (needs[j] == Need::Create && !matches!(e.kind, Kind::Dir))
            }
        };
        if !remove {
            continue;
        }
        let parent = dirs.parent(&o.path)?;
        let flags = if matches!(o.kind, Kind::Dir) {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        rustix::fs::unlinkat(parent, cpath(mpath::name(&o.path)), flags)
            .map_err(|e| io_at(root, &o.path, "remove", e))?;
        touched.insert(mpath::parent(&o.path).to_vec());
        stats.removed += 1;
    }

    // (3) Build the new entries in tree order.
    let mut dirs = Dirs::new(&root_fd, root);
    for (j, e) in new.entries.iter().enumerate().skip(1) {
        let name = cpath(mpath::name(&e.path));
        match needs[j] {
            Need::Keep => stats.unchanged += 1,
            Need::Stage => {
                let parent = dirs.parent(&e.path)?;
                let fd = staging_fd.as_ref().expect("staging exists");
                rustix::fs::renameat(fd, std::ffi::OsStr::new(&j.to_string()), parent, name)
                    .map_err(|err| io_at(root, &e.path, "rename into place", err))?;
                touched.insert(mpath::parent(&e.path).to_vec());
            }
            Need::Create => {
                let parent = dirs.parent(&e.path)?;
                match &e.kind {
                    Kind::Dir => {
                        rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700))
                            .map_err(|err| io_at(root, &e.path, "mkdir", err))?;
                    }
                    Kind::HardLink(l) => {
                        let lp = &new.entries[*l as usize].path;
                        let lparent = dirs.open_or_dest(mpath::parent(lp))?;
                        let parent = dirs.parent(&e.path)?;
                        rustix::fs::linkat(&lparent, cpath(mpath::name(lp)), parent, name, AtFlags::empty())
                            .map_err(|err| io_at(root, &e.path, "link", err))?;
                    }
                    _ => {
                        create_at(parent, name, e, src, root)?;
                    }
                }
                touched.insert(mpath::parent(&e.path).to_vec());
            }
            Need::Meta(i) => {
                if matches!(e.kind, Kind::Dir) {
                    continue; // below, with the other directories
                }
                let old_meta = &old.entries[i].meta;
                update_meta(&mut dirs, root, e, old_meta)?;
                stats.meta_updated += 1;
            }
        }
    }

    if let Some(fd) = staging_fd {
        drop(fd);
        rustix::fs::unlinkat(&root_fd, cpath(STAGING), AtFlags::REMOVEDIR)
            .map_err(|e| io_at(root, &staging_path, "remove", e))?;
    }

    // (4) Directory metadata, deepest first, the root last.
    for (j, e) in new.entries.iter().enumerate().rev() {
        if !matches!(e.kind, Kind::Dir) {
            continue;
        }
        let changed = matches!(needs[j], Need::Meta(_) | Need::Create) || touched.contains(&e.path) || j == 0;
        if !changed {
            continue;
        }
        let fd = if j == 0 {
            root_fd.try_clone()?
        } else {
            dirs.open(&e.path, OFlags::RDONLY)?
        };
        if let Need::Meta(i) = needs[j] {
            drop_stale_xattrs_fd(&fd, &old.entries[i].meta, &e.meta)
                .map_err(|err| err_at(root, &e.path, "remove xattr", err))?;
        }
        apply_meta_fd(&fd, &e.meta, root, &e.path)?;
    }

    // (5) Durable before the bootloader may point at it.
    rustix::fs::syncfs(&root_fd)
        .map_err(|e| Error::Local(format!("sync of {} failed: {}", root.display(), io::Error::from(e))))?;
    Ok(stats)
}

fn update_meta(dirs: &mut Dirs<'_>, root: &Path, e: &Entry, old: &Meta) -> Result<()> {
    match e.kind {
        Kind::File(_) => {
            let parent = dirs.parent(&e.path)?;
            let fd = rustix::fs::openat(
                parent,
                cpath(mpath::name(&e.path)),
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|err| io_at(root, &e.path, "open", err))?;
            drop_stale_xattrs_fd(&fd, old, &e.meta).map_err(|err| err_at(root, &e.path, "remove xattr", err))?;
            apply_meta_fd(&fd, &e.meta, root, &e.path)?;
        }
        _ => {
            let parent = dirs.parent(&e.path)?;
            let stale: Vec<_> = old
                .xattrs
                .iter()
                .filter(|x| !e.meta.xattrs.iter().any(|y| y.name == x.name))
                .collect();
            if !stale.is_empty() {
                use std::os::fd::AsRawFd;
                let mut via: std::path::PathBuf = format!("/proc/self/fd/{}", parent.as_raw_fd()).into();
                via.push(cpath(mpath::name(&e.path)));
                for x in stale {
                    rustix::fs::lremovexattr(&via, cpath(&x.name))
                        .map_err(|err| io_at(root, &e.path, "remove xattr", err))?;
                }
            }
            apply_meta_at(parent, &e.meta, matches!(e.kind, Kind::Symlink(_)), root, &e.path)?;
        }
    }
    Ok(())
}
