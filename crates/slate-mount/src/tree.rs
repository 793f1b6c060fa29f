//! The snapshot's tree as the filesystem shows it: inode numbers, directory
//! listings and attributes, all computed once from the manifest.
//!
//! Inode numbers are manifest positions plus one (the root, entry 0, is
//! inode 1 as FUSE requires); every name of a hard-link group shares its
//! leader's inode, so `stat` shows one inode with the group's link count.

use std::time::{Duration, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};
use slate_core::manifest::{ChunkRef, Extent, FileData, Kind, Manifest, Meta};

/// Block size reported to `stat`; content is served in whole pages.
const BLOCK: u64 = 4096;

/// The manifest with what lookups need precomputed.
pub struct Tree {
    /// The snapshot's manifest.
    pub manifest: Manifest,
    /// Children of each directory (entry positions, in name order).
    children: Vec<Vec<u32>>,
    /// Parent of each entry (the root is its own parent).
    parent: Vec<u32>,
    /// Link count of each inode (leaders and directories).
    nlink: Vec<u32>,
}

/// Where each chunk of a file's data starts, for reads at any offset.
pub struct Layout {
    /// The file's chunks, in data order.
    pub chunks: Vec<ChunkRef>,
    /// `starts[i]`: offset of chunk i in the file's data stream.
    pub starts: Vec<u64>,
    /// Data extents in the file (one covering it when dense).
    pub extents: Vec<Extent>,
    /// Logical size.
    pub size: u64,
}

fn last_component(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

impl Tree {
    /// Index a manifest (already decoded and checked, so paths are in tree
    /// order with every parent present).
    pub fn new(manifest: Manifest) -> Tree {
        let n = manifest.entries.len();
        let mut children: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut parent = vec![0u32; n];
        let mut nlink = vec![1u32; n];
        // Tree order is depth first, so the open directories form a stack.
        let mut stack: Vec<u32> = vec![0];
        for (i, entry) in manifest.entries.iter().enumerate().skip(1) {
            let path = &entry.path;
            let depth = path.iter().filter(|&&b| b == b'/').count() + 1;
            stack.truncate(depth);
            let p = *stack.last().unwrap_or(&0);
            parent[i] = p;
            children[p as usize].push(i as u32);
            if matches!(entry.kind, Kind::Dir) {
                stack.push(i as u32);
            }
        }
        for i in 0..n {
            match manifest.entries[i].kind {
                Kind::Dir => {
                    let subdirs = children[i]
                        .iter()
                        .filter(|&&c| matches!(manifest.entries[c as usize].kind, Kind::Dir))
                        .count();
                    nlink[i] = 2 + subdirs as u32;
                }
                Kind::HardLink(leader) => nlink[leader as usize] += 1,
                _ => {}
            }
        }
        Tree {
            manifest,
            children,
            parent,
            nlink,
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.manifest.entries.len()
    }

    /// Whether the tree is empty (never: the root is always there).
    pub fn is_empty(&self) -> bool {
        self.manifest.entries.is_empty()
    }

    /// The entry behind an inode number, if it is one.
    pub fn entry_of(&self, ino: INodeNo) -> Option<usize> {
        let i = u64::from(ino).checked_sub(1)? as usize;
        (i < self.len()).then_some(i)
    }

    /// The inode number of entry `i` (its leader's for a hard link).
    pub fn ino_of(&self, i: usize) -> INodeNo {
        match self.manifest.entries[i].kind {
            Kind::HardLink(l) => INodeNo(l as u64 + 1),
            _ => INodeNo(i as u64 + 1),
        }
    }

    /// The entry holding the metadata of entry `i` (its leader for a link).
    pub fn resolve(&self, i: usize) -> usize {
        match self.manifest.entries[i].kind {
            Kind::HardLink(l) => l as usize,
            _ => i,
        }
    }

    /// The child of directory `dir` called `name`.
    pub fn lookup(&self, dir: usize, name: &[u8]) -> Option<usize> {
        let kids = self.children.get(dir)?;
        kids.binary_search_by(|&c| last_component(&self.manifest.entries[c as usize].path).cmp(name))
            .ok()
            .map(|k| kids[k] as usize)
    }

    /// Directory `dir`'s children, in name order.
    pub fn children(&self, dir: usize) -> &[u32] {
        &self.children[dir]
    }

    /// The parent of entry `i`.
    pub fn parent(&self, i: usize) -> usize {
        self.parent[i] as usize
    }

    /// The last path component of entry `i`.
    pub fn name(&self, i: usize) -> &[u8] {
        last_component(&self.manifest.entries[i].path)
    }

    /// The metadata of entry `i` (its leader's for a hard link).
    pub fn meta(&self, i: usize) -> &Meta {
        &self.manifest.entries[self.resolve(i)].meta
    }

    /// The file data of entry `i`, if it is (a link to) a regular file.
    pub fn file(&self, i: usize) -> Option<&FileData> {
        self.manifest.file_data(i)
    }

    /// The FUSE type of entry `i`.
    pub fn file_type(&self, i: usize) -> FileType {
        match &self.manifest.entries[self.resolve(i)].kind {
            Kind::Dir => FileType::Directory,
            Kind::File(_) => FileType::RegularFile,
            Kind::Symlink(_) => FileType::Symlink,
            Kind::CharDev(_) => FileType::CharDevice,
            Kind::BlockDev(_) => FileType::BlockDevice,
            Kind::Fifo => FileType::NamedPipe,
            Kind::Socket => FileType::Socket,
            // A leader is never a link (the manifest decoder checks it).
            Kind::HardLink(_) => FileType::RegularFile,
        }
    }

    /// `stat` of entry `i`.
    pub fn attr(&self, i: usize) -> FileAttr {
        let leader = self.resolve(i);
        let e = &self.manifest.entries[leader];
        let m = &e.meta;
        let (size, data, rdev) = match &e.kind {
            Kind::File(f) => (f.size, f.data_len(), 0),
            Kind::Symlink(t) => (t.len() as u64, 0, 0),
            Kind::Dir => (BLOCK, BLOCK, 0),
            Kind::CharDev(r) | Kind::BlockDev(r) => (0, 0, *r),
            _ => (0, 0, 0),
        };
        let t = if m.mtime.sec >= 0 {
            UNIX_EPOCH + Duration::new(m.mtime.sec as u64, m.mtime.nsec)
        } else {
            UNIX_EPOCH - Duration::from_secs(m.mtime.sec.unsigned_abs()) + Duration::from_nanos(m.mtime.nsec as u64)
        };
        FileAttr {
            ino: INodeNo(leader as u64 + 1),
            size,
            blocks: data.div_ceil(BLOCK) * (BLOCK / 512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: self.file_type(leader),
            perm: (m.mode & 0o7777) as u16,
            nlink: self.nlink[leader],
            uid: m.uid,
            gid: m.gid,
            rdev: rdev as u32,
            flags: 0,
            blksize: BLOCK as u32,
        }
    }

    /// The chunk layout of a regular file entry.
    pub fn layout(&self, i: usize) -> Option<Layout> {
        let f = self.file(i)?;
        let mut starts = Vec::with_capacity(f.chunks.len());
        let mut at = 0u64;
        for c in &f.chunks {
            starts.push(at);
            at += c.len as u64;
        }
        Some(Layout {
            chunks: f.chunks.clone(),
            starts,
            extents: f.data_extents(),
            size: f.size,
        })
    }
}

impl Layout {
    /// The pieces of `offset .. offset + len` (clipped to the file): for
    /// each, where it goes in the output and which data-stream bytes fill
    /// it; bytes in no piece are holes (zero).
    pub fn pieces(&self, offset: u64, len: u64) -> Vec<(usize, u64, u64)> {
        let end = (offset + len).min(self.size);
        let mut out = Vec::new();
        let mut data_at = 0u64;
        for x in &self.extents {
            let (xs, xe) = (x.offset, x.offset + x.len);
            if xe > offset && xs < end {
                let s = xs.max(offset);
                let e = xe.min(end);
                out.push(((s - offset) as usize, data_at + (s - xs), e - s));
            }
            data_at += x.len;
            if xs >= end {
                break;
            }
        }
        out
    }

    /// Chunks overlapping data-stream bytes `start .. start + len`, as
    /// (chunk index, offset within the chunk, bytes to take).
    pub fn chunk_spans(&self, start: u64, len: u64) -> Vec<(usize, usize, usize)> {
        let mut out = Vec::new();
        let end = start + len;
        let mut k = self.starts.partition_point(|&s| s <= start).saturating_sub(1);
        while k < self.chunks.len() && self.starts[k] < end {
            let cs = self.starts[k];
            let ce = cs + self.chunks[k].len as u64;
            if ce > start {
                let s = start.max(cs);
                let e = end.min(ce);
                out.push((k, (s - cs) as usize, (e - s) as usize));
            }
            k += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slate_core::manifest::{Entry, Timestamp};
    use slate_core::ChunkId;

    fn e(path: &str, kind: Kind) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            meta: Meta {
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime: Timestamp { sec: 5, nsec: 0 },
                xattrs: vec![],
            },
            kind,
        }
    }

    #[test]
    fn children_parents_links_and_sparse_pieces() {
        let c = |n: u8, len| ChunkRef {
            id: ChunkId::of(&[n]),
            len,
        };
        let sparse = FileData {
            size: 100,
            extents: Some(vec![Extent { offset: 10, len: 5 }, Extent { offset: 50, len: 20 }]),
            chunks: vec![c(1, 10), c(2, 15)],
        };
        let m = Manifest {
            entries: vec![
                e("", Kind::Dir),
                e("a", Kind::Dir),
                e("a/b", Kind::Dir),
                e("a/b/f", Kind::File(sparse)),
                e("a.b", Kind::Symlink(b"a".to_vec())),
                e("z", Kind::HardLink(3)),
            ],
        };
        let t = Tree::new(m);
        assert_eq!(t.children(0), &[1, 4, 5]);
        assert_eq!(t.lookup(0, b"a.b"), Some(4));
        assert_eq!(t.lookup(1, b"b"), Some(2));
        assert_eq!(t.lookup(0, b"b"), None);
        assert_eq!(t.parent(3), 2);
        assert_eq!(t.ino_of(5), INodeNo(4));
        assert_eq!(t.attr(5).nlink, 2);
        assert_eq!(t.attr(0).nlink, 3);
        let l = t.layout(5).unwrap();
        // Bytes 0..100: a hole, extent 1 (data 0..5), a hole, extent 2 (data 5..25).
        assert_eq!(l.pieces(0, 100), vec![(10, 0, 5), (50, 5, 20)]);
        assert_eq!(l.pieces(12, 40), vec![(0, 2, 3), (38, 5, 2)]);
        assert_eq!(l.chunk_spans(5, 20), vec![(0, 5, 5), (1, 0, 15)]);
        assert_eq!(l.chunk_spans(9, 2), vec![(0, 9, 1), (1, 0, 1)]);
    }
}
