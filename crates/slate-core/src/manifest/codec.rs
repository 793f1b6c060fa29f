//! Binary encoding of manifests (`docs/format/manifest.md`) and the checks
//! every decoded manifest passes: safe paths in strict tree order, every
//! parent a directory listed before its children, hard links pointing back
//! at an earlier non-directory, chunk lengths adding up to the file's data.

use std::collections::HashSet;

use super::path::{self, cmp_tree_order, MAX_PATH};
use super::{ChunkRef, Entry, Extent, FileData, Kind, Manifest, Meta, Timestamp, Xattr, MAX_CHUNK_LEN};
use crate::codec::{Reader, Writer};
use crate::error::{Error, Result};
use crate::id::{ChunkId, Id32};

/// First bytes of an encoded manifest.
pub const MAGIC: &[u8; 8] = b"SLATEMF\0";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;

const WHAT: &str = "manifest";
const MAX_XATTR_NAME: usize = 255;
const MAX_XATTR_VALUE: usize = 65536;
const MAX_XATTRS: u64 = 4096;
/// Files up to 2^62 bytes: far past any filesystem, small enough that sums
/// of sizes cannot overflow.
const MAX_FILE_SIZE: u64 = 1 << 62;

const TAG_DIR: u8 = 1;
const TAG_FILE: u8 = 2;
const TAG_SPARSE_FILE: u8 = 3;
const TAG_SYMLINK: u8 = 4;
const TAG_CHAR: u8 = 5;
const TAG_BLOCK: u8 = 6;
const TAG_FIFO: u8 = 7;
const TAG_SOCKET: u8 = 8;
const TAG_HARDLINK: u8 = 9;

/// Encode a manifest. The caller guarantees it is valid (as built by a scan
/// or decoded); `decode(encode(m)) == m`.
pub fn encode(m: &Manifest) -> Vec<u8> {
    let mut w = Writer::new();
    w.raw(MAGIC);
    w.varint(VERSION as u64);
    w.varint(m.entries.len() as u64);
    let mut prev: &[u8] = b"";
    for e in &m.entries {
        let common = prev.iter().zip(&e.path).take_while(|(a, b)| a == b).count();
        w.varint(common as u64);
        w.bytes(&e.path[common..]);
        prev = &e.path;
        let tag = match &e.kind {
            Kind::Dir => TAG_DIR,
            Kind::File(f) if f.extents.is_some() => TAG_SPARSE_FILE,
            Kind::File(_) => TAG_FILE,
            Kind::Symlink(_) => TAG_SYMLINK,
            Kind::CharDev(_) => TAG_CHAR,
            Kind::BlockDev(_) => TAG_BLOCK,
            Kind::Fifo => TAG_FIFO,
            Kind::Socket => TAG_SOCKET,
            Kind::HardLink(_) => TAG_HARDLINK,
        };
        w.u8(tag);
        if let Kind::HardLink(leader) = e.kind {
            w.varint(leader as u64);
            continue;
        }
        let m = &e.meta;
        w.varint(m.mode as u64);
        w.varint(m.uid as u64);
        w.varint(m.gid as u64);
        w.svarint(m.mtime.sec);
        w.varint(m.mtime.nsec as u64);
        w.varint(m.xattrs.len() as u64);
        for x in &m.xattrs {
            w.bytes(&x.name);
            w.bytes(&x.value);
        }
        match &e.kind {
            Kind::File(f) => {
                w.varint(f.size);
                if let Some(ext) = &f.extents {
                    w.varint(ext.len() as u64);
                    let mut end = 0;
                    for x in ext {
                        w.varint(x.offset - end);
                        w.varint(x.len);
                        end = x.offset + x.len;
                    }
                }
                w.varint(f.chunks.len() as u64);
                for c in &f.chunks {
                    w.id(&c.id.0);
                    w.varint(c.len as u64);
                }
            }
            Kind::Symlink(t) => w.bytes(t),
            Kind::CharDev(r) | Kind::BlockDev(r) => w.varint(*r),
            _ => {}
        }
    }
    w.buf
}

/// Decode and check an untrusted manifest.
pub fn decode(data: &[u8]) -> Result<Manifest> {
    let mut r = Reader::new(data, WHAT);
    r.header(MAGIC, VERSION)?;
    // Every entry takes at least 3 bytes: prefix length, suffix length, tag.
    let n = r.count(3, "entry")?;
    if n == 0 {
        return Err(r.corrupt("no root entry"));
    }
    // `count` bounds n by the encoded length (3 bytes an entry), but an
    // Entry takes ~50 times that in memory: reserve for a typical tree
    // only, and let a real one grow the vector as its entries decode.
    let mut entries: Vec<Entry> = Vec::with_capacity(n.min(1 << 16));
    let mut dirs: HashSet<Vec<u8>> = HashSet::new();
    let mut path: Vec<u8> = Vec::new();
    for i in 0..n {
        let common = r.varint_max(path.len() as u64, "shared path prefix")? as usize;
        let suffix = r.bytes(MAX_PATH, "path")?;
        path.truncate(common);
        path.extend_from_slice(suffix);
        let bad = |detail: String| Error::corrupt(WHAT, format!("entry {i} ({}): {detail}", path::display(&path)));
        path::check(&path).map_err(bad)?;
        if i == 0 && !path.is_empty() {
            return Err(bad("the first entry must be the root".into()));
        }
        if i > 0 {
            if cmp_tree_order(&entries[i - 1].path, &path) != std::cmp::Ordering::Less {
                return Err(bad("entries are not in strict tree order".into()));
            }
            if !dirs.contains(path::parent(&path)) {
                return Err(bad("its parent is not a directory of this manifest".into()));
            }
        }
        let tag = r.u8()?;
        if i == 0 && tag != TAG_DIR {
            return Err(bad("the root must be a directory".into()));
        }
        if tag == TAG_HARDLINK {
            let leader = r.varint_max(i.saturating_sub(1) as u64, "hard link leader")? as usize;
            if i == 0 {
                return Err(bad("the root cannot be a hard link".into()));
            }
            let l = &entries[leader];
            if matches!(l.kind, Kind::Dir | Kind::HardLink(_)) {
                return Err(bad("a hard link must name an earlier non-directory leader".into()));
            }
            let meta = l.meta.clone();
            entries.push(Entry {
                path: path.clone(),
                meta,
                kind: Kind::HardLink(leader as u32),
            });
            continue;
        }
        let mode = r.varint_max(0o7777, "mode")? as u32;
        let uid = r.varint_max(u32::MAX as u64, "uid")? as u32;
        let gid = r.varint_max(u32::MAX as u64, "gid")? as u32;
        let sec = r.svarint()?;
        let nsec = r.varint_max(999_999_999, "nanoseconds")? as u32;
        let nx = r.varint_max(MAX_XATTRS, "xattr count")?;
        let mut xattrs = Vec::with_capacity((nx as usize).min(16));
        for _ in 0..nx {
            let name = r.bytes(MAX_XATTR_NAME, "xattr name")?.to_vec();
            let value = r.bytes(MAX_XATTR_VALUE, "xattr value")?.to_vec();
            if name.is_empty() || name.contains(&0) {
                return Err(bad("bad xattr name".into()));
            }
            if let Some(last) = xattrs.last() {
                let last: &Xattr = last;
                if last.name >= name {
                    return Err(bad("xattrs are not sorted by name".into()));
                }
            }
            xattrs.push(Xattr { name, value });
        }
        let meta = Meta {
            mode,
            uid,
            gid,
            mtime: Timestamp { sec, nsec },
            xattrs,
        };
        let kind = match tag {
            TAG_DIR => {
                dirs.insert(path.clone());
                Kind::Dir
            }
            TAG_FILE | TAG_SPARSE_FILE => {
                Kind::File(decode_file(&mut r, tag == TAG_SPARSE_FILE).map_err(|e| bad(e.to_string()))?)
            }
            TAG_SYMLINK => {
                let t = r.bytes(MAX_PATH, "symlink target")?;
                if t.is_empty() || t.contains(&0) {
                    return Err(bad("symlink target is empty or holds a NUL".into()));
                }
                Kind::Symlink(t.to_vec())
            }
            TAG_CHAR => Kind::CharDev(r.varint()?),
            TAG_BLOCK => Kind::BlockDev(r.varint()?),
            TAG_FIFO => Kind::Fifo,
            TAG_SOCKET => Kind::Socket,
            t => return Err(bad(format!("unknown entry type {t}"))),
        };
        entries.push(Entry {
            path: path.clone(),
            meta,
            kind,
        });
    }
    r.finish()?;
    Ok(Manifest { entries })
}

fn decode_file(r: &mut Reader<'_>, sparse: bool) -> Result<FileData> {
    let size = r.varint_max(MAX_FILE_SIZE, "file size")?;
    let extents = if sparse {
        let n = r.count(2, "extent")?;
        let mut v = Vec::with_capacity(n);
        let mut end: u64 = 0;
        for _ in 0..n {
            let gap = r.varint_max(MAX_FILE_SIZE, "extent gap")?;
            let len = r.varint_max(MAX_FILE_SIZE, "extent length")?;
            let offset = end + gap;
            if len == 0 || offset + len > size {
                return Err(r.corrupt("an extent is empty or past the end of the file"));
            }
            end = offset + len;
            v.push(Extent { offset, len });
        }
        Some(v)
    } else {
        None
    };
    let n = r.count(33, "chunk")?;
    let mut chunks = Vec::with_capacity(n);
    let mut total: u64 = 0;
    for _ in 0..n {
        let id = ChunkId(Id32(r.id()?.0));
        let len = r.varint_max(MAX_CHUNK_LEN as u64, "chunk length")? as u32;
        if len == 0 {
            return Err(r.corrupt("a chunk is empty"));
        }
        total += len as u64;
        chunks.push(ChunkRef { id, len });
    }
    let f = FileData { size, extents, chunks };
    if total != f.data_len() {
        return Err(r.corrupt(format!(
            "chunks hold {total} bytes, the file's data is {}",
            f.data_len()
        )));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(mode: u32) -> Meta {
        Meta {
            mode,
            uid: 1234,
            gid: 5678,
            mtime: Timestamp { sec: -5, nsec: 7 },
            xattrs: vec![Xattr {
                name: b"user.a".to_vec(),
                value: b"\0\xff".to_vec(),
            }],
        }
    }

    pub(crate) fn sample() -> Manifest {
        let data = b"hello world";
        let chunk = ChunkRef {
            id: ChunkId::of(data),
            len: data.len() as u32,
        };
        let e = |p: &[u8], kind| Entry {
            path: p.to_vec(),
            meta: meta(0o4755),
            kind,
        };
        Manifest {
            entries: vec![
                e(b"", Kind::Dir),
                e(b"a", Kind::Dir),
                e(
                    b"a/f",
                    Kind::File(FileData {
                        size: data.len() as u64,
                        extents: None,
                        chunks: vec![chunk],
                    }),
                ),
                e(b"a/h", Kind::HardLink(2)),
                e(
                    b"a/sparse",
                    Kind::File(FileData {
                        size: 1 << 30,
                        extents: Some(vec![Extent { offset: 4096, len: 11 }]),
                        chunks: vec![chunk],
                    }),
                ),
                e(b"a.b", Kind::Symlink(b"../../etc/passwd".to_vec())),
                e(b"dev", Kind::CharDev(0x0501)),
                e(b"fifo", Kind::Fifo),
                e(b"n\n\xff", Kind::Socket),
            ],
        }
    }

    #[test]
    fn round_trip() {
        let mut m = sample();
        m.entries[3].meta = m.entries[2].meta.clone();
        let bytes = encode(&m);
        assert_eq!(decode(&bytes).unwrap(), m);
    }

    #[test]
    fn every_truncation_fails_cleanly() {
        let bytes = encode(&sample());
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "prefix of {n} bytes decoded");
        }
    }

    #[test]
    fn rejects_escaping_and_misordered_paths() {
        for bad_path in [&b"../x"[..], b"/abs", b"a/../../x"] {
            let mut m = sample();
            m.entries[1].path = bad_path.to_vec();
            m.entries.truncate(2);
            assert!(decode(&encode(&m)).is_err());
        }
        // A child under a symlink: would let checkout follow the link.
        let mut m = sample();
        m.entries.push(Entry {
            path: b"n\n\xff/x".to_vec(),
            meta: meta(0o644),
            kind: Kind::Fifo,
        });
        assert!(decode(&encode(&m)).is_err());
        // Out of order.
        let mut m = sample();
        m.entries.swap(5, 6);
        assert!(decode(&encode(&m)).is_err());
        // A hard link to a later entry or to a directory.
        let mut m = sample();
        m.entries[3].kind = Kind::HardLink(1);
        assert!(decode(&encode(&m)).is_err());
    }

    #[test]
    fn rejects_chunk_lengths_that_do_not_add_up() {
        let mut m = sample();
        if let Kind::File(f) = &mut m.entries[2].kind {
            f.size += 1;
        }
        assert!(decode(&encode(&m)).is_err());
    }

    #[test]
    fn forged_counts_are_clean_errors() {
        // 2^60 entries, then a root directory whose xattr count and a file
        // whose chunk count are 2^60: errors, nothing reserved for them.
        let mut w = Writer::new();
        w.raw(MAGIC);
        w.varint(VERSION as u64);
        w.varint(1 << 60);
        w.raw(&[0u8; 64]);
        let e = decode(&w.buf).unwrap_err();
        assert!(e.to_string().contains("count"), "{e}");
        let root = |w: &mut Writer, xattrs: u64| {
            w.raw(MAGIC);
            w.varint(VERSION as u64);
            w.varint(2);
            w.varint(0);
            w.bytes(b"");
            w.u8(TAG_DIR);
            w.varint(0o755);
            w.varint(0);
            w.varint(0);
            w.svarint(0);
            w.varint(0);
            w.varint(xattrs);
        };
        let mut w = Writer::new();
        root(&mut w, 1 << 60);
        w.raw(&[0u8; 64]);
        assert!(decode(&w.buf).is_err());
        let mut w = Writer::new();
        root(&mut w, 0);
        w.varint(0);
        w.bytes(b"f");
        w.u8(TAG_FILE);
        w.varint(0o644);
        w.varint(0);
        w.varint(0);
        w.svarint(0);
        w.varint(0);
        w.varint(0);
        w.varint(1 << 40);
        w.varint(1 << 60);
        w.raw(&[0u8; 64]);
        let e = decode(&w.buf).unwrap_err();
        assert!(e.to_string().contains("count"), "{e}");
    }

    #[test]
    fn random_bytes_never_panic() {
        use proptest::prelude::*;
        proptest!(|(mut bytes: Vec<u8>, cut: usize, flip: u8)| {
            let mut good = encode(&sample());
            if !good.is_empty() {
                let i = cut % good.len();
                good[i] ^= flip;
            }
            let _ = decode(&good);
            bytes.splice(0..0, MAGIC.iter().copied().chain([1u8]));
            let _ = decode(&bytes);
        });
    }
}
