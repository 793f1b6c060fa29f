//! Walking a source tree into a manifest skeleton: every entry's type and
//! metadata in tree order, hard-link groups found by inode, sparse files'
//! data extents found with SEEK_DATA/SEEK_HOLE. File contents are read
//! later, by the commit pipeline.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use slate_core::manifest::{path as mpath, Entry, Extent, FileData, Kind, Manifest, Meta, Timestamp, Xattr};

use crate::error::{Error, Result};

/// A regular file whose content the commit must read.
#[derive(Debug, Clone)]
pub struct FileJob {
    /// Its entry in the manifest.
    pub entry: usize,
    /// Where to read it.
    pub source: PathBuf,
    /// Its size when scanned.
    pub size: u64,
    /// Data extents when sparse.
    pub extents: Option<Vec<Extent>>,
}

/// A scanned tree.
pub struct Scan {
    /// Entries with file chunks still empty.
    pub manifest: Manifest,
    /// Regular files to read, in tree order.
    pub files: Vec<FileJob>,
}

fn io_err(p: &Path, e: io::Error) -> Error {
    Error::Io(io::Error::new(e.kind(), format!("{}: {e}", p.display())))
}

/// The metadata of `path` (not following a symlink) as a manifest [`Meta`].
pub fn read_meta(path: &Path, md: &Metadata) -> Result<Meta> {
    let mut xattrs = Vec::new();
    let names = match xattr::list(path) {
        Ok(n) => n.collect::<Vec<_>>(),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::OPNOTSUPP.raw_os_error()) => Vec::new(),
        Err(e) => return Err(io_err(path, e)),
    };
    for name in names {
        // An attribute removed between list and get is simply gone.
        if let Some(value) = xattr::get(path, &name).map_err(|e| io_err(path, e))? {
            xattrs.push(Xattr {
                name: name.as_bytes().to_vec(),
                value,
            });
        }
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

/// Data extents of a file that may be sparse; `None` when it is dense.
fn sparse_extents(path: &Path, md: &Metadata) -> Result<Option<Vec<Extent>>> {
    let size = md.size();
    // A dense file has at least as many blocks as bytes; only look for
    // holes in files that have fewer.
    if size == 0 || md.blocks() * 512 >= size {
        return Ok(None);
    }
    let f = File::open(path).map_err(|e| io_err(path, e))?;
    let mut extents = Vec::new();
    let mut pos: u64 = 0;
    use rustix::fs::{seek, SeekFrom};
    while pos < size {
        let data = match seek(&f, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(io_err(path, e.into())),
        };
        if data >= size {
            break;
        }
        let hole = seek(&f, SeekFrom::Hole(data))
            .map_err(|e| io_err(path, e.into()))?
            .min(size);
        extents.push(Extent {
            offset: data,
            len: hole - data,
        });
        pos = hole;
    }
    if extents.len() == 1 && extents[0].offset == 0 && extents[0].len == size {
        return Ok(None);
    }
    Ok(Some(extents))
}

/// Scan the tree at `root`.
pub fn scan(root: &Path) -> Result<Scan> {
    let md = fs::symlink_metadata(root).map_err(|e| io_err(root, e))?;
    if !md.is_dir() {
        return Err(Error::Invalid(format!("{} is not a directory", root.display())));
    }
    let mut s = Scan {
        manifest: Manifest::default(),
        files: Vec::new(),
    };
    let mut inodes: HashMap<(u64, u64), usize> = HashMap::new();
    s.manifest.entries.push(Entry {
        path: Vec::new(),
        meta: read_meta(root, &md)?,
        kind: Kind::Dir,
    });
    walk(root, &[], md.dev(), &mut s, &mut inodes)?;
    Ok(s)
}

fn walk(dir: &Path, rel: &[u8], _dev: u64, s: &mut Scan, inodes: &mut HashMap<(u64, u64), usize>) -> Result<()> {
    let mut names: Vec<Vec<u8>> = Vec::new();
    for ent in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let ent = ent.map_err(|e| io_err(dir, e))?;
        names.push(ent.file_name().as_bytes().to_vec());
    }
    names.sort();
    for name in names {
        let path = dir.join(OsStr::from_bytes(&name));
        let mut rel_path = rel.to_vec();
        if !rel_path.is_empty() {
            rel_path.push(b'/');
        }
        rel_path.extend_from_slice(&name);
        mpath::check(&rel_path).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        let md = fs::symlink_metadata(&path).map_err(|e| io_err(&path, e))?;
        let ft = md.file_type();
        let index = s.manifest.entries.len();
        if !ft.is_dir() && md.nlink() > 1 {
            if let Some(&leader) = inodes.get(&(md.dev(), md.ino())) {
                let meta = s.manifest.entries[leader].meta.clone();
                s.manifest.entries.push(Entry {
                    path: rel_path,
                    meta,
                    kind: Kind::HardLink(leader as u32),
                });
                continue;
            }
            inodes.insert((md.dev(), md.ino()), index);
        }
        let meta = read_meta(&path, &md)?;
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            let extents = sparse_extents(&path, &md)?;
            s.files.push(FileJob {
                entry: index,
                source: path.clone(),
                size: md.size(),
                extents: extents.clone(),
            });
            Kind::File(FileData {
                size: md.size(),
                extents,
                chunks: Vec::new(),
            })
        } else if ft.is_symlink() {
            let t = fs::read_link(&path).map_err(|e| io_err(&path, e))?;
            Kind::Symlink(t.as_os_str().as_bytes().to_vec())
        } else if ft.is_char_device() {
            Kind::CharDev(md.rdev())
        } else if ft.is_block_device() {
            Kind::BlockDev(md.rdev())
        } else if ft.is_fifo() {
            Kind::Fifo
        } else if ft.is_socket() {
            Kind::Socket
        } else {
            return Err(Error::Invalid(format!("{}: unknown file type", path.display())));
        };
        let is_dir = matches!(kind, Kind::Dir);
        s.manifest.entries.push(Entry {
            path: rel_path.clone(),
            meta,
            kind,
        });
        if is_dir {
            walk(&path, &rel_path, md.dev(), s, inodes)?;
        }
    }
    Ok(())
}
