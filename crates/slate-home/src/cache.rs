//! The local file cache: for every file of the last backup, what `lstat`
//! said (size, mtime, ctime, inode, device) and its chunks. A file whose
//! stamp is unchanged is not opened again. The cache lives on the client,
//! beside the index cache, and never goes to the server.

use std::collections::HashMap;
use std::path::Path;

use slate_core::codec::{Reader, Writer};
use slate_core::manifest::ChunkRef;
use slate_core::ChunkId;

use crate::error::Result;

const MAGIC: &[u8; 8] = b"SLHFC\0\0\x01";

/// What `lstat` says about a file, enough to tell it has not changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Stamp {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds and nanoseconds.
    pub mtime: (i64, i64),
    /// Status change time, seconds and nanoseconds.
    pub ctime: (i64, i64),
    /// Inode number.
    pub ino: u64,
    /// Device number.
    pub dev: u64,
}

impl Stamp {
    /// The stamp of a file's metadata.
    pub fn of(md: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            size: md.size(),
            mtime: (md.mtime(), md.mtime_nsec()),
            ctime: (md.ctime(), md.ctime_nsec()),
            ino: md.ino(),
            dev: md.dev(),
        }
    }
}

/// One file's record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedFile {
    /// Its stamp when it was read.
    pub stamp: Stamp,
    /// Its chunks.
    pub chunks: Vec<ChunkRef>,
}

/// Absolute path bytes → record.
pub type FileCache = HashMap<Vec<u8>, CachedFile>;

/// Load the cache; a missing or damaged one is simply empty (everything is read again).
pub fn load(path: &Path) -> FileCache {
    let Ok(data) = std::fs::read(path) else {
        return FileCache::new();
    };
    decode(&data).unwrap_or_default()
}

fn decode(data: &[u8]) -> std::result::Result<FileCache, slate_core::Error> {
    let mut r = Reader::new(data, "file cache");
    if r.remaining() < 8 || r.raw(8)? != MAGIC {
        return Err(r.corrupt("not a file cache"));
    }
    let n = r.count(8, "file")?;
    let mut out = FileCache::with_capacity(n);
    for _ in 0..n {
        let path = r.bytes(1 << 16, "path")?.to_vec();
        let stamp = Stamp {
            size: r.varint()?,
            mtime: (r.svarint()?, r.svarint()?),
            ctime: (r.svarint()?, r.svarint()?),
            ino: r.varint()?,
            dev: r.varint()?,
        };
        let nc = r.count(33, "chunk")?;
        let mut chunks = Vec::with_capacity(nc);
        for _ in 0..nc {
            let id = ChunkId(r.id()?);
            let len = r.varint_max(slate_core::manifest::MAX_CHUNK_LEN as u64, "chunk length")? as u32;
            chunks.push(ChunkRef { id, len });
        }
        out.insert(path, CachedFile { stamp, chunks });
    }
    r.finish()?;
    Ok(out)
}

/// Save the cache atomically.
pub fn save(path: &Path, cache: &FileCache) -> Result<()> {
    let mut w = Writer::new();
    w.raw(MAGIC);
    w.varint(cache.len() as u64);
    for (p, f) in cache {
        w.bytes(p);
        let s = &f.stamp;
        w.varint(s.size);
        w.svarint(s.mtime.0);
        w.svarint(s.mtime.1);
        w.svarint(s.ctime.0);
        w.svarint(s.ctime.1);
        w.varint(s.ino);
        w.varint(s.dev);
        w.varint(f.chunks.len() as u64);
        for c in &f.chunks {
            w.id(&c.id.0);
            w.varint(c.len as u64);
        }
    }
    crate::repo::write_atomic(path, &w.buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("files");
        assert!(load(&p).is_empty());
        let mut c = FileCache::new();
        c.insert(
            b"/home/a/x".to_vec(),
            CachedFile {
                stamp: Stamp {
                    size: 5,
                    mtime: (-3, 7),
                    ctime: (9, 1),
                    ino: 42,
                    dev: 8,
                },
                chunks: vec![ChunkRef {
                    id: ChunkId::of(b"x"),
                    len: 5,
                }],
            },
        );
        save(&p, &c).unwrap();
        assert_eq!(load(&p), c);
        std::fs::write(&p, b"garbage").unwrap();
        assert!(load(&p).is_empty());
    }
}
