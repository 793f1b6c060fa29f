//! Pack files and their indexes (`docs/format/pack.md`).
//!
//! A pack is a header followed by zstd frames; each frame holds several
//! chunks back to back, so small files compress together while any chunk
//! stays reachable with one ranged read of its frame. The index, a separate
//! file named after the pack, maps each chunk id to its frame and place.

use crate::codec::{Reader, Writer};
use crate::error::{Error, Result};
use crate::id::{ChunkId, Id32, PackId};
use crate::manifest::MAX_CHUNK_LEN;

/// First bytes of a pack.
pub const PACK_MAGIC: &[u8; 8] = b"SLATEPK\0";
const INDEX_MAGIC: &[u8; 8] = b"SLATEIX\0";
const VERSION: u32 = 1;
/// Length of the pack header (magic + one-byte version varint).
pub const PACK_HEADER_LEN: u64 = 9;
/// Largest uncompressed frame a reader accepts.
pub const MAX_FRAME_RAW: u32 = 16 << 20;
/// Largest compressed frame a reader accepts (zstd's worst case for
/// [`MAX_FRAME_RAW`], with room to spare).
pub const MAX_FRAME_COMPRESSED: u32 = MAX_FRAME_RAW + (1 << 20);
const ENTRY_LEN: usize = 32 + 8 + 4 + 4 + 4 + 4;

/// The pack header bytes.
pub fn pack_header() -> Vec<u8> {
    let mut w = Writer::new();
    w.raw(PACK_MAGIC);
    w.varint(VERSION as u64);
    debug_assert_eq!(w.buf.len() as u64, PACK_HEADER_LEN);
    w.buf
}

/// Check a pack's header bytes.
pub fn check_pack_header(data: &[u8]) -> Result<()> {
    Reader::new(data, "pack").header(PACK_MAGIC, VERSION).map(|_| ())
}

/// Where one chunk is inside a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IndexEntry {
    /// The chunk.
    pub id: ChunkId,
    /// Offset of its frame in the pack file.
    pub frame_offset: u64,
    /// Compressed length of the frame.
    pub frame_len: u32,
    /// Uncompressed length of the frame.
    pub frame_raw_len: u32,
    /// Offset of the chunk inside the uncompressed frame.
    pub offset: u32,
    /// Length of the chunk.
    pub len: u32,
}

/// A decoded pack index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackIndex {
    /// Length of the pack file it describes.
    pub pack_len: u64,
    /// Entries sorted by chunk id.
    pub entries: Vec<IndexEntry>,
}

impl PackIndex {
    /// Encode (entries are sorted here).
    pub fn encode(&self) -> Vec<u8> {
        let mut entries = self.entries.clone();
        entries.sort_by_key(|e| e.id);
        let mut w = Writer::new();
        w.raw(INDEX_MAGIC);
        w.varint(VERSION as u64);
        w.u64_le(self.pack_len);
        w.u64_le(entries.len() as u64);
        for e in &entries {
            w.id(&e.id.0);
            w.u64_le(e.frame_offset);
            w.u32_le(e.frame_len);
            w.u32_le(e.frame_raw_len);
            w.u32_le(e.offset);
            w.u32_le(e.len);
        }
        let sum = Id32::hash(&w.buf);
        w.id(&sum);
        w.buf
    }

    /// Decode and check an untrusted index: its checksum, sorted unique
    /// ids, frames inside the pack, chunks inside their frames.
    pub fn decode(data: &[u8]) -> Result<Self> {
        const WHAT: &str = "pack index";
        if data.len() < 32 {
            return Err(Error::Truncated { what: WHAT });
        }
        let (body, sum) = data.split_at(data.len() - 32);
        let mut r = Reader::new(body, WHAT);
        r.header(INDEX_MAGIC, VERSION)?;
        if Id32::hash(body).0 != sum {
            return Err(Error::corrupt(WHAT, "checksum mismatch"));
        }
        let pack_len = r.u64_le()?;
        let n = r.u64_le()?;
        if n > (r.remaining() / ENTRY_LEN) as u64 || n * ENTRY_LEN as u64 != r.remaining() as u64 {
            return Err(r.corrupt(format!("entry count {n} does not match its length")));
        }
        let mut entries = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let e = IndexEntry {
                id: ChunkId(r.id()?),
                frame_offset: r.u64_le()?,
                frame_len: r.u32_le()?,
                frame_raw_len: r.u32_le()?,
                offset: r.u32_le()?,
                len: r.u32_le()?,
            };
            let ok = e.frame_offset >= PACK_HEADER_LEN
                && e.frame_len > 0
                && e.frame_len <= MAX_FRAME_COMPRESSED
                && e.frame_raw_len <= MAX_FRAME_RAW
                && e.frame_offset
                    .checked_add(e.frame_len as u64)
                    .is_some_and(|end| end <= pack_len)
                && e.len > 0
                && e.len <= MAX_CHUNK_LEN
                && e.offset as u64 + e.len as u64 <= e.frame_raw_len as u64;
            if !ok {
                return Err(r.corrupt(format!("entry for chunk {} points outside its pack or frame", e.id)));
            }
            if let Some(prev) = entries.last() {
                let prev: &IndexEntry = prev;
                if prev.id >= e.id {
                    return Err(r.corrupt("entries are not sorted by chunk id"));
                }
            }
            entries.push(e);
        }
        Ok(PackIndex { pack_len, entries })
    }
}

/// Compress one frame's raw bytes.
pub fn compress_frame(raw: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    zstd::bulk::compress(raw, level)
}

/// Decompress an untrusted frame whose raw length the index gives.
pub fn decompress_frame(data: &[u8], raw_len: u32, pack: &PackId, offset: u64) -> Result<Vec<u8>> {
    let bad = |detail: String| Error::corrupt("pack", format!("{pack}: frame at offset {offset}: {detail}"));
    if raw_len > MAX_FRAME_RAW {
        return Err(bad(format!("claims {raw_len} bytes")));
    }
    let out = zstd::bulk::decompress(data, raw_len as usize).map_err(|e| bad(format!("does not decompress ({e})")))?;
    if out.len() != raw_len as usize {
        return Err(bad(format!("holds {} bytes, its index says {raw_len}", out.len())));
    }
    Ok(out)
}

/// Take one chunk out of a decompressed frame and check its hash.
pub fn chunk_from_frame<'a>(frame: &'a [u8], e: &IndexEntry) -> Result<&'a [u8]> {
    let end = e.offset as usize + e.len as usize;
    let data = frame
        .get(e.offset as usize..end)
        .ok_or_else(|| Error::corrupt("pack", format!("chunk {} lies outside its frame", e.id)))?;
    if ChunkId::of(data) != e.id {
        return Err(Error::HashMismatch {
            what: "chunk",
            id: e.id.to_hex(),
        });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An index body with a valid checksum whose entry count is `n`.
    fn index_claiming(n: u64, body_entries: usize) -> Vec<u8> {
        let mut w = Writer::new();
        w.raw(INDEX_MAGIC);
        w.varint(VERSION as u64);
        w.u64_le(1 << 20);
        w.u64_le(n);
        w.raw(&vec![0u8; body_entries * ENTRY_LEN]);
        let sum = Id32::hash(&w.buf);
        w.id(&sum);
        w.buf
    }

    #[test]
    fn forged_entry_counts_are_clean_errors() {
        for n in [1u64 << 60, u64::MAX, u64::MAX / ENTRY_LEN as u64 + 1, 3] {
            let e = PackIndex::decode(&index_claiming(n, 2)).unwrap_err();
            assert!(e.to_string().contains("entry count"), "{n}: {e}");
        }
        assert!(PackIndex::decode(&[0u8; 10]).is_err());
        assert!(PackIndex::decode(&[]).is_err());
    }

    #[test]
    fn index_round_trip_and_corruption() {
        let frame: Vec<u8> = b"aaaabbbb".to_vec();
        let c = compress_frame(&frame, 3).unwrap();
        let mk = |s: &[u8], off| IndexEntry {
            id: ChunkId::of(s),
            frame_offset: PACK_HEADER_LEN,
            frame_len: c.len() as u32,
            frame_raw_len: 8,
            offset: off,
            len: 4,
        };
        let idx = PackIndex {
            pack_len: PACK_HEADER_LEN + c.len() as u64,
            entries: vec![mk(b"bbbb", 4), mk(b"aaaa", 0)],
        };
        let bytes = idx.encode();
        let back = PackIndex::decode(&bytes).unwrap();
        assert_eq!(back.entries.len(), 2);
        assert!(back.entries[0].id < back.entries[1].id);
        for n in 0..bytes.len() {
            assert!(PackIndex::decode(&bytes[..n]).is_err());
        }
        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        assert!(PackIndex::decode(&flipped).is_err());

        let raw = decompress_frame(&c, 8, &PackId::default(), 9).unwrap();
        for e in &back.entries {
            chunk_from_frame(&raw, e).unwrap();
        }
        assert!(decompress_frame(&c, 7, &PackId::default(), 9).is_err());
        let mut bad = back.entries[0];
        bad.offset = 1;
        assert!(chunk_from_frame(&raw, &bad).is_err());
    }
}
