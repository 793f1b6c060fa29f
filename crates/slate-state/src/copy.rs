//! Copying a tree or a file with everything slate keeps (owners, modes,
//! times, xattrs and ACLs, hard links, devices, sparse files): the image's
//! content seeded into RAM, the image's content moved to the state store
//! the first time, server state captured for upload and laid out again.
//!
//! A copy is captured into [`Contents`] (a manifest with its chunks held
//! in memory) by the same scanner a commit uses, and written out by the
//! same materializer a checkout uses, so it is as faithful as a snapshot.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use slate_core::chunker::ChunkerParams;
use slate_core::id::ChunkId;
use slate_core::manifest::{ChunkRef, Entry, Extent, FileData, Kind, Manifest, Meta, Timestamp};
use slate_repo::checkout::ChunkSource;
use slate_repo::progress::NoProgress;

use crate::error::{Error, Result};

/// The name a single file takes inside [`Contents`] captured from a file.
pub const FILE_ENTRY: &[u8] = b"content";

/// A captured tree: its manifest, and every chunk it uses.
#[derive(Debug, Clone, Default)]
pub struct Contents {
    /// Entries in tree order; the root first.
    pub manifest: Manifest,
    /// Chunk bytes by id.
    pub chunks: HashMap<ChunkId, Vec<u8>>,
}

impl Contents {
    /// Whether it holds only an empty root.
    pub fn is_empty(&self) -> bool {
        self.manifest.entries.len() <= 1
    }

    /// Whether it was captured from a single file.
    pub fn is_file(&self) -> bool {
        self.manifest.entries.len() == 2 && self.manifest.entries[1].path == FILE_ENTRY
    }
}

/// A chunk source over captured contents.
pub struct ContentsSource<'a>(pub &'a Contents);

impl ChunkSource for ContentsSource<'_> {
    fn with_chunk(&mut self, id: &ChunkId, f: &mut dyn FnMut(&[u8]) -> std::io::Result<()>) -> slate_repo::Result<()> {
        let data = self.0.chunks.get(id).ok_or_else(|| {
            slate_repo::Error::Invalid(format!("chunk {} is missing from the captured state", id.to_hex()))
        })?;
        f(data).map_err(slate_repo::Error::Io)
    }
}

fn read_data(path: &Path, size: u64, extents: &Option<Vec<Extent>>) -> Result<Vec<u8>> {
    let f = std::fs::File::open(path).map_err(|e| Error(format!("cannot read {}: {e}", path.display())))?;
    let mut data = Vec::new();
    match extents {
        None => {
            (&f).take(size)
                .read_to_end(&mut data)
                .map_err(|e| Error(format!("cannot read {}: {e}", path.display())))?;
            if data.len() as u64 != size {
                return Err(Error(format!("{} changed while it was being copied", path.display())));
            }
        }
        Some(ext) => {
            for x in ext {
                let start = data.len();
                data.resize(start + x.len as usize, 0);
                f.read_exact_at(&mut data[start..], x.offset)
                    .map_err(|e| Error(format!("cannot read {}: {e}", path.display())))?;
            }
        }
    }
    Ok(data)
}

fn cut_into(data: &[u8], chunks: &mut HashMap<ChunkId, Vec<u8>>) -> Vec<ChunkRef> {
    ChunkerParams::default()
        .cut(data)
        .into_iter()
        .map(|(off, len)| {
            let bytes = &data[off..off + len];
            let id = ChunkId::of(bytes);
            chunks.entry(id).or_insert_with(|| bytes.to_vec());
            ChunkRef { id, len: len as u32 }
        })
        .collect()
}

/// Capture the tree at `src` (a directory). With `dirs_only`, only its
/// directories (rwtab's `dirs`). `keep` decides, by relative path, which
/// non-directory entries to keep; directories that lead to a kept entry
/// are kept too.
pub fn capture_dir(src: &Path, dirs_only: bool, keep: &dyn Fn(&[u8]) -> bool) -> Result<Contents> {
    let scan = slate_repo::scan::scan(src)?;
    let mut jobs: HashMap<usize, slate_repo::scan::FileJob> = scan.files.into_iter().map(|j| (j.entry, j)).collect();
    let m = scan.manifest;
    // Which entries stay, and the new index of each.
    let mut wanted = vec![false; m.entries.len()];
    wanted[0] = true;
    for (i, e) in m.entries.iter().enumerate().skip(1) {
        let leader_kept = match e.kind {
            Kind::HardLink(l) => wanted[l as usize],
            _ => true,
        };
        let is_dir = matches!(e.kind, Kind::Dir);
        wanted[i] = if dirs_only {
            is_dir
        } else {
            !is_dir && leader_kept && keep(&e.path)
        };
    }
    if !dirs_only {
        // Keep the directories above every kept entry, and directories
        // matched themselves.
        for i in (1..m.entries.len()).rev() {
            let e = &m.entries[i];
            if matches!(e.kind, Kind::Dir) && !wanted[i] {
                let prefix_len = e.path.len();
                let under = m.entries[i + 1..]
                    .iter()
                    .zip(&wanted[i + 1..])
                    .take_while(|(x, _)| {
                        x.path.len() > prefix_len && x.path.starts_with(&e.path) && x.path[prefix_len] == b'/'
                    })
                    .any(|(_, w)| *w);
                wanted[i] = under || keep(&e.path);
            }
        }
    }
    let mut new_index = vec![u32::MAX; m.entries.len()];
    let mut out = Contents::default();
    for (i, mut e) in m.entries.into_iter().enumerate() {
        if !wanted[i] {
            continue;
        }
        new_index[i] = out.manifest.entries.len() as u32;
        match &mut e.kind {
            Kind::HardLink(l) => *l = new_index[*l as usize],
            Kind::File(fd) => {
                let job = jobs.remove(&i).expect("every scanned file has a job");
                let data = read_data(&job.source, job.size, &job.extents)?;
                fd.size = job.size;
                fd.extents = job.extents;
                fd.chunks = cut_into(&data, &mut out.chunks);
            }
            _ => {}
        }
        out.manifest.entries.push(e);
    }
    Ok(out)
}

/// Keep of `c` only the non-directory entries `keep` accepts (by relative
/// path), the directories that lead to one of them and the directories
/// `keep` accepts themselves, as [`capture_dir`] does when capturing; a
/// hard link whose leader goes goes too. Returns what stays and the
/// paths of the entries dropped.
pub fn retain(c: Contents, keep: &dyn Fn(&[u8]) -> bool) -> (Contents, Vec<String>) {
    let m = c.manifest;
    let n = m.entries.len();
    let mut wanted = vec![false; n];
    if n > 0 {
        wanted[0] = true;
    }
    for (i, e) in m.entries.iter().enumerate().skip(1) {
        let leader_kept = match e.kind {
            Kind::HardLink(l) => (l as usize) < i && wanted[l as usize],
            _ => true,
        };
        wanted[i] = !matches!(e.kind, Kind::Dir) && leader_kept && keep(&e.path);
    }
    for i in (1..n).rev() {
        let e = &m.entries[i];
        if matches!(e.kind, Kind::Dir) && !wanted[i] {
            let len = e.path.len();
            let under = m.entries[i + 1..]
                .iter()
                .zip(&wanted[i + 1..])
                .take_while(|(x, _)| x.path.len() > len && x.path.starts_with(&e.path) && x.path[len] == b'/')
                .any(|(_, w)| *w);
            wanted[i] = under || keep(&e.path);
        }
    }
    let mut new_index = vec![u32::MAX; n];
    let mut out = Contents::default();
    let mut dropped = Vec::new();
    for (i, mut e) in m.entries.into_iter().enumerate() {
        if !wanted[i] {
            dropped.push(slate_core::manifest::path::display(&e.path));
            continue;
        }
        new_index[i] = out.manifest.entries.len() as u32;
        match &mut e.kind {
            Kind::HardLink(l) => *l = new_index[*l as usize],
            Kind::File(fd) => {
                for ch in &fd.chunks {
                    if let Some(b) = c.chunks.get(&ch.id) {
                        out.chunks.insert(ch.id, b.clone());
                    }
                }
            }
            _ => {}
        }
        out.manifest.entries.push(e);
    }
    (out, dropped)
}

/// The metadata of an open file, xattrs included.
fn meta_of(f: &std::fs::File, md: &std::fs::Metadata, src: &Path) -> Result<Meta> {
    let err = |e: rustix::io::Errno| {
        Error(format!(
            "cannot read the xattrs of {}: {}",
            src.display(),
            std::io::Error::from(e)
        ))
    };
    let mut xattrs = Vec::new();
    let mut names = vec![0u8; 64 << 10];
    let n = match rustix::fs::flistxattr(f, &mut names) {
        Ok(n) => n,
        Err(rustix::io::Errno::OPNOTSUPP) => 0,
        Err(e) => return Err(err(e)),
    };
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = std::ffi::CString::new(name).expect("split at NUL");
        let mut value = vec![0u8; 64 << 10];
        let len = rustix::fs::fgetxattr(f, cname.as_c_str(), &mut value).map_err(err)?;
        value.truncate(len);
        xattrs.push(slate_core::manifest::Xattr {
            name: name.to_vec(),
            value,
        });
    }
    xattrs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Meta {
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime: Timestamp {
            sec: md.mtime(),
            nsec: md.mtime_nsec() as u32,
        },
        xattrs,
    })
}

/// Capture one regular file (following a `/proc/self/fd` link to it) as
/// the entry [`FILE_ENTRY`] of a root directory.
pub fn capture_file(src: &Path) -> Result<Contents> {
    let f = std::fs::File::open(src).map_err(|e| Error(format!("cannot read {}: {e}", src.display())))?;
    let md = f
        .metadata()
        .map_err(|e| Error(format!("cannot read {}: {e}", src.display())))?;
    if !md.is_file() {
        return Err(Error(format!("{} is not a regular file", src.display())));
    }
    let meta = meta_of(&f, &md, src)?;
    let mut data = Vec::new();
    (&f).take(md.size())
        .read_to_end(&mut data)
        .map_err(|e| Error(format!("cannot read {}: {e}", src.display())))?;
    let mut out = Contents::default();
    let chunks = cut_into(&data, &mut out.chunks);
    out.manifest.entries.push(Entry {
        path: Vec::new(),
        meta: Meta {
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: Timestamp {
                sec: md.mtime(),
                nsec: 0,
            },
            xattrs: Vec::new(),
        },
        kind: Kind::Dir,
    });
    out.manifest.entries.push(Entry {
        path: FILE_ENTRY.to_vec(),
        meta,
        kind: Kind::File(FileData {
            size: md.size(),
            extents: None,
            chunks,
        }),
    });
    Ok(out)
}

/// Capture `src`, a directory or a regular file.
pub fn capture(src: &Path) -> Result<Contents> {
    let md = std::fs::metadata(src).map_err(|e| Error(format!("cannot read {}: {e}", src.display())))?;
    if md.is_dir() {
        capture_dir(src, false, &|_| true)
    } else {
        capture_file(src)
    }
}

/// Write captured contents into `dest`, an empty or absent directory; the
/// root's metadata is applied to `dest` itself.
pub fn restore(c: &Contents, dest: &Path) -> Result<()> {
    slate_repo::checkout::materialize(&c.manifest, dest, || ContentsSource(c), false, &NoProgress)?;
    Ok(())
}

/// Lay `over` on top of `base`: entries of `over` replace those of `base`
/// at the same path (directories keep `base`'s metadata), and hard links
/// of `base` whose leader `over` replaced are dropped.
pub fn merge(base: Contents, over: Contents) -> Contents {
    // Hard links by their leader's path, so indexes can be rebuilt.
    fn with_leaders(m: Manifest) -> Vec<(Entry, Option<Vec<u8>>)> {
        let paths: Vec<Vec<u8>> = m.entries.iter().map(|e| e.path.clone()).collect();
        m.entries
            .into_iter()
            .map(|e| {
                let leader = match e.kind {
                    Kind::HardLink(l) => Some(paths[l as usize].clone()),
                    _ => None,
                };
                (e, leader)
            })
            .collect()
    }
    let mut chunks = base.chunks;
    chunks.extend(over.chunks);
    // Per path: the entry, its leader's path when a hard link, and whether
    // it comes from `over`.
    type Placed = (Entry, Option<Vec<u8>>, bool);
    let mut all: HashMap<Vec<u8>, Placed> = HashMap::new();
    for (e, l) in with_leaders(base.manifest) {
        all.insert(e.path.clone(), (e, l, false));
    }
    for (e, l) in with_leaders(over.manifest) {
        match all.get(&e.path) {
            Some((old, _, _)) if matches!(old.kind, Kind::Dir) && matches!(e.kind, Kind::Dir) => {}
            _ => {
                all.insert(e.path.clone(), (e, l, true));
            }
        }
    }
    let replaced: std::collections::HashSet<Vec<u8>> =
        all.iter().filter(|(_, v)| v.2).map(|(k, _)| k.clone()).collect();
    let mut list: Vec<(Entry, Option<Vec<u8>>)> = all
        .into_values()
        .filter(|(_, leader, from_over)| match leader {
            Some(l) => *from_over == replaced.contains(l),
            None => true,
        })
        .map(|(e, l, _)| (e, l))
        .collect();
    list.sort_by(|a, b| slate_core::manifest::path::cmp_tree_order(&a.0.path, &b.0.path));
    let index: HashMap<Vec<u8>, u32> = list
        .iter()
        .enumerate()
        .map(|(i, (e, _))| (e.path.clone(), i as u32))
        .collect();
    let entries = list
        .into_iter()
        .map(|(mut e, leader)| {
            if let Some(l) = leader {
                e.kind = Kind::HardLink(index[&l]);
            }
            e
        })
        .collect();
    Contents {
        manifest: Manifest { entries },
        chunks,
    }
}

/// Copy the directory `src` into the empty directory `dest`.
pub fn copy_dir(src: &Path, dest: &Path, dirs_only: bool) -> Result<()> {
    restore(&capture_dir(src, dirs_only, &|_| true)?, dest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn copies_trees_files_and_filters() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("a/b")).unwrap();
        std::fs::create_dir_all(src.join("empty")).unwrap();
        std::fs::write(src.join("a/b/one"), vec![7u8; 300_000]).unwrap();
        std::fs::write(src.join("key"), b"secret").unwrap();
        std::fs::set_permissions(src.join("key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::hard_link(src.join("key"), src.join("key2")).unwrap();
        std::os::unix::fs::symlink("a/b/one", src.join("link")).unwrap();

        let dest = t.path().join("dest");
        copy_dir(&src, &dest, false).unwrap();
        assert_eq!(std::fs::read(dest.join("a/b/one")).unwrap(), vec![7u8; 300_000]);
        assert_eq!(
            std::fs::metadata(dest.join("key")).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(dest.join("key")).unwrap().ino(),
            std::fs::metadata(dest.join("key2")).unwrap().ino()
        );
        assert_eq!(std::fs::read_link(dest.join("link")).unwrap(), Path::new("a/b/one"));

        let dirs = t.path().join("dirs");
        copy_dir(&src, &dirs, true).unwrap();
        assert!(dirs.join("a/b").is_dir() && dirs.join("empty").is_dir());
        assert!(!dirs.join("key").exists() && !dirs.join("link").exists());

        let only_keys = capture_dir(&src, false, &|p| p.starts_with(b"key")).unwrap();
        let names: Vec<_> = only_keys.manifest.entries.iter().map(|e| e.path.clone()).collect();
        assert_eq!(names, [b"".to_vec(), b"key".to_vec(), b"key2".to_vec()]);

        let base = capture_dir(&src, false, &|p| !p.starts_with(b"key")).unwrap();
        let merged = merge(base, only_keys);
        let m = t.path().join("merged");
        restore(&merged, &m).unwrap();
        assert!(m.join("a/b/one").is_file() && m.join("link").is_symlink());
        assert_eq!(
            std::fs::metadata(m.join("key")).unwrap().ino(),
            std::fs::metadata(m.join("key2")).unwrap().ino()
        );

        let one = capture(&src.join("key")).unwrap();
        assert!(one.is_file());
        let back = t.path().join("one");
        restore(&one, &back).unwrap();
        assert_eq!(std::fs::read(back.join("content")).unwrap(), b"secret");
    }
}
