//! Delta files (`docs/format/delta.md`): what a client holding snapshot
//! FROM needs to rebuild the new chunks of snapshot TO, compressed far
//! better than chunk by chunk because each changed file travels as a zstd
//! frame whose reference prefix is the client's old version of it.
//!
//! A delta is a header, a table of items, then the items' payloads in
//! table order. An item names the chunks of FROM that form its reference
//! (possibly none) and the chunks of TO its payload decompresses to, in
//! order; the client checks every output chunk against its id.

use crate::codec::{Reader, Writer};
use crate::error::{Error, Result};
use crate::id::{ChunkId, SnapshotId};
use crate::manifest::{ChunkRef, MAX_CHUNK_LEN};

const MAGIC: &[u8; 8] = b"SLATEDL\0";
const VERSION: u32 = 1;
/// Largest reference or output of one item (bounds client memory).
pub const MAX_ITEM_BYTES: u64 = 48 << 20;
/// zstd window log used for items; the decoder must allow it.
pub const WINDOW_LOG: u32 = 27;
/// Most items a delta may hold (a whole Debian release upgrade holds a
/// few tens of thousands): a larger count is refused before anything is
/// read or allocated for it.
pub const MAX_ITEMS: u64 = 1 << 22;
/// Longest header and item table a reader accepts: a reader that reads
/// more of a file until the table decodes stops here.
pub const MAX_HEADER_LEN: u64 = 256 << 20;

/// One item of a delta.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaItem {
    /// Chunks of FROM whose concatenation is the reference prefix.
    pub reference: Vec<ChunkRef>,
    /// Chunks of TO the payload decompresses to, concatenated.
    pub output: Vec<ChunkRef>,
    /// Length of the payload (a zstd frame).
    pub payload_len: u64,
}

impl DeltaItem {
    /// Bytes of the reference.
    pub fn reference_len(&self) -> u64 {
        self.reference.iter().map(|c| c.len as u64).sum()
    }
    /// Bytes of the output.
    pub fn output_len(&self) -> u64 {
        self.output.iter().map(|c| c.len as u64).sum()
    }
}

/// A delta's header and item table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaHeader {
    /// The snapshot the client holds.
    pub from: SnapshotId,
    /// The snapshot it rebuilds.
    pub to: SnapshotId,
    /// The items, in payload order.
    pub items: Vec<DeltaItem>,
}

fn put_chunks(w: &mut Writer, v: &[ChunkRef]) {
    w.varint(v.len() as u64);
    for c in v {
        w.id(&c.id.0);
        w.varint(c.len as u64);
    }
}

fn get_chunks(r: &mut Reader<'_>) -> Result<Vec<ChunkRef>> {
    let n = r.count(33, "chunk")?;
    let mut v = Vec::with_capacity(n);
    let mut total = 0u64;
    for _ in 0..n {
        let id = ChunkId(r.id()?);
        let len = r.varint_max(MAX_CHUNK_LEN as u64, "chunk length")? as u32;
        if len == 0 {
            return Err(r.corrupt("an empty chunk"));
        }
        total += len as u64;
        if total > MAX_ITEM_BYTES {
            return Err(r.corrupt(format!("an item spans more than {MAX_ITEM_BYTES} bytes")));
        }
        v.push(ChunkRef { id, len });
    }
    Ok(v)
}

impl DeltaHeader {
    /// Encode the header and table (payloads follow it in the file).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.raw(MAGIC);
        w.varint(VERSION as u64);
        w.id(&self.from.0);
        w.id(&self.to.0);
        w.varint(self.items.len() as u64);
        for it in &self.items {
            put_chunks(&mut w, &it.reference);
            put_chunks(&mut w, &it.output);
            w.varint(it.payload_len);
        }
        w.buf
    }

    /// Decode an untrusted header from the start of a delta file; returns
    /// it and the offset where payloads begin. `Truncated` means more bytes
    /// are needed.
    pub fn decode(data: &[u8]) -> Result<(DeltaHeader, usize)> {
        let mut r = Reader::new(data, "delta");
        r.header(MAGIC, VERSION)?;
        let from = SnapshotId(r.id()?);
        let to = SnapshotId(r.id()?);
        // A count over the limit is corrupt whatever follows; one that
        // merely does not fit yet means the table continues further on.
        let n = r.varint_max(MAX_ITEMS, "item count")?;
        if n > (r.remaining() / 3) as u64 {
            return Err(Error::Truncated { what: "delta" });
        }
        let n = n as usize;
        let mut items = Vec::with_capacity(n.min(1 << 16));
        for _ in 0..n {
            let reference = get_chunks(&mut r)?;
            let output = get_chunks(&mut r)?;
            if output.is_empty() {
                return Err(r.corrupt("an item produces nothing"));
            }
            let payload_len = r.varint_max(MAX_ITEM_BYTES + (1 << 20), "payload length")?;
            items.push(DeltaItem {
                reference,
                output,
                payload_len,
            });
        }
        Ok((DeltaHeader { from, to, items }, r.position()))
    }
}

/// Whether a decode error only means the header continues past `data`.
pub fn needs_more(e: &Error) -> bool {
    matches!(e, Error::Truncated { .. }) || matches!(e, Error::Corrupt { detail, .. } if detail.contains("cannot fit"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_with_count(count: &[u8]) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.push(VERSION as u8);
        b.extend_from_slice(&[7u8; 64]);
        b.extend_from_slice(count);
        b
    }

    #[test]
    fn forged_counts_and_varints_are_clean_errors() {
        // 2^60 items: refused as corrupt (not "read more"), whatever follows.
        let mut w = Writer::new();
        w.varint(1 << 60);
        let mut bytes = header_with_count(&w.buf);
        bytes.extend_from_slice(&[0u8; 4096]);
        let e = DeltaHeader::decode(&bytes).unwrap_err();
        assert!(!needs_more(&e), "{e}");
        assert!(e.to_string().contains("item count"), "{e}");
        // A varint of 11 bytes, or one overflowing 64 bits.
        for v in [
            &[0xffu8; 11][..],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f][..],
        ] {
            let e = DeltaHeader::decode(&header_with_count(v)).unwrap_err();
            assert!(!needs_more(&e), "{e}");
        }
        // A count within the limit but past the bytes given: more is needed.
        let mut w = Writer::new();
        w.varint(1000);
        assert!(needs_more(
            &DeltaHeader::decode(&header_with_count(&w.buf)).unwrap_err()
        ));
        // One item whose output claims 2^60 chunks, and one whose chunk is huge.
        let mut w = Writer::new();
        w.varint(1);
        w.varint(0);
        w.varint(1 << 60);
        let mut bytes = header_with_count(&w.buf);
        bytes.extend_from_slice(&[0u8; 4096]);
        assert!(DeltaHeader::decode(&bytes).is_err());
        let mut w = Writer::new();
        w.varint(1);
        w.varint(1);
        w.raw(&[1u8; 32]);
        w.varint(u64::MAX);
        assert!(DeltaHeader::decode(&header_with_count(&w.buf)).is_err());
    }

    #[test]
    fn round_trip_and_truncation() {
        let c = |b: &[u8]| ChunkRef {
            id: ChunkId::of(b),
            len: b.len() as u32,
        };
        let h = DeltaHeader {
            from: SnapshotId::of(b"a"),
            to: SnapshotId::of(b"b"),
            items: vec![
                DeltaItem {
                    reference: vec![c(b"old")],
                    output: vec![c(b"new"), c(b"more")],
                    payload_len: 17,
                },
                DeltaItem {
                    reference: vec![],
                    output: vec![c(b"x")],
                    payload_len: 5,
                },
            ],
        };
        let mut bytes = h.encode();
        let n = bytes.len();
        bytes.extend_from_slice(&[0u8; 22]);
        let (back, off) = DeltaHeader::decode(&bytes).unwrap();
        assert_eq!(back, h);
        assert_eq!(off, n);
        for cut in 0..n {
            let e = DeltaHeader::decode(&bytes[..cut]).unwrap_err();
            assert!(needs_more(&e) || cut < 9, "cut {cut}: {e}");
        }
    }
}
