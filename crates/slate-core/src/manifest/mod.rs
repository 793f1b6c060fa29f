//! Manifests: the complete metadata of a tree, entry by entry.
//!
//! A manifest lists every entry of a tree in depth-first order, each
//! directory's entries sorted by raw byte name (the order in which
//! `checkout` creates them and `treedigest.py` walks them). Paths are raw
//! bytes relative to the tree root; the root itself is the first entry, with
//! the empty path. A hard link is an entry that names the index of the first
//! entry of its link group (its leader) and carries no metadata of its own.
//!
//! The binary encoding is specified in `docs/format/manifest.md`.

mod codec;
pub mod diff;
pub mod path;

pub use codec::{decode, encode, MAGIC, VERSION};

use crate::id::ChunkId;

/// Largest chunk the format allows (the chunker's maximum is smaller).
pub const MAX_CHUNK_LEN: u32 = 1 << 20;

/// A point in time with nanoseconds, as `stat` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Seconds since the epoch (negative before 1970).
    pub sec: i64,
    /// Nanoseconds, 0..1e9.
    pub nsec: u32,
}

/// One extended attribute, name and value as raw bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Xattr {
    /// Full name with namespace, e.g. `security.capability`.
    pub name: Vec<u8>,
    /// Raw value.
    pub value: Vec<u8>,
}

/// Metadata every entry but a hard link carries.
#[derive(Clone, Debug, PartialEq, Eq, Default, Hash)]
pub struct Meta {
    /// Permission bits, setuid/setgid/sticky included (`st_mode & 0o7777`).
    pub mode: u32,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Modification time.
    pub mtime: Timestamp,
    /// Extended attributes sorted by name (POSIX ACLs are `system.posix_acl_*`).
    pub xattrs: Vec<Xattr>,
}

/// A piece of file content by id and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    /// BLAKE3 of the chunk's bytes.
    pub id: ChunkId,
    /// Its length in bytes.
    pub len: u32,
}

/// A run of data in a sparse file; everything outside the extents is a hole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Extent {
    /// Byte offset in the file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// A regular file's content.
#[derive(Clone, Debug, PartialEq, Eq, Default, Hash)]
pub struct FileData {
    /// Logical size.
    pub size: u64,
    /// `None` for a dense file; for a sparse one, its data extents in order.
    /// The chunks hold the extents' bytes concatenated.
    pub extents: Option<Vec<Extent>>,
    /// The content, cut by the chunker.
    pub chunks: Vec<ChunkRef>,
}

impl FileData {
    /// Bytes the chunks must add up to.
    pub fn data_len(&self) -> u64 {
        match &self.extents {
            None => self.size,
            Some(e) => e.iter().map(|x| x.len).sum(),
        }
    }
    /// The extents that hold data (one covering the file when dense).
    pub fn data_extents(&self) -> Vec<Extent> {
        match &self.extents {
            None if self.size == 0 => Vec::new(),
            None => vec![Extent {
                offset: 0,
                len: self.size,
            }],
            Some(e) => e.clone(),
        }
    }
}

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File(FileData),
    /// A symbolic link and its target (any bytes, may dangle).
    Symlink(Vec<u8>),
    /// A character device and its `st_rdev`.
    CharDev(u64),
    /// A block device and its `st_rdev`.
    BlockDev(u64),
    /// A named pipe.
    Fifo,
    /// A unix socket inode.
    Socket,
    /// Another name for the entry at this index (its link group's leader).
    HardLink(u32),
}

impl Kind {
    /// One letter, as `treedigest.py` prints types (`h` for a hard link).
    pub fn letter(&self) -> char {
        match self {
            Kind::Dir => 'd',
            Kind::File(_) => 'f',
            Kind::Symlink(_) => 'l',
            Kind::CharDev(_) => 'c',
            Kind::BlockDev(_) => 'b',
            Kind::Fifo => 'p',
            Kind::Socket => 's',
            Kind::HardLink(_) => 'h',
        }
    }
}

/// One entry of a tree.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    /// Path relative to the root, raw bytes, `/`-separated; empty for the root.
    pub path: Vec<u8>,
    /// Metadata; for a hard link, a copy of its leader's (not encoded).
    pub meta: Meta,
    /// Type and type-specific content.
    pub kind: Kind,
}

/// A whole tree.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Manifest {
    /// Entries in depth-first, byte-sorted order; the root first.
    pub entries: Vec<Entry>,
}

impl Manifest {
    /// The file data behind entry `i`, following a hard link to its leader.
    pub fn file_data(&self, i: usize) -> Option<&FileData> {
        match &self.entries[i].kind {
            Kind::File(f) => Some(f),
            Kind::HardLink(l) => match &self.entries[*l as usize].kind {
                Kind::File(f) => Some(f),
                _ => None,
            },
            _ => None,
        }
    }
    /// Index of the entry with this path (binary search in tree order).
    pub fn find(&self, path: &[u8]) -> Option<usize> {
        self.entries
            .binary_search_by(|e| path::cmp_tree_order(&e.path, path))
            .ok()
    }
    /// Sum of regular file sizes (hard links counted once).
    pub fn total_file_bytes(&self) -> u64 {
        self.entries
            .iter()
            .filter_map(|e| match &e.kind {
                Kind::File(f) => Some(f.size),
                _ => None,
            })
            .sum()
    }
}
