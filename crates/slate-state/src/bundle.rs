//! The bytes a `server` path is stored as on the server: captured
//! [`Contents`] in one blob. Layout (`docs/state.md`): the magic
//! `SLATEST\0`, a varint version (1), the encoded manifest as a
//! length-prefixed byte string, a varint chunk count, then each chunk as
//! a length-prefixed byte string, in the order the manifest first uses
//! them. Chunk ids are not stored: they are the hashes of the bytes, and
//! every chunk the manifest names must be present.
//!
//! A blob comes back from a server that may be compromised, so decoding is
//! bounded and checks everything before anything is written.

use std::collections::HashMap;

use slate_core::codec::{Reader, Writer};
use slate_core::id::ChunkId;
use slate_core::manifest::{self, Kind};

use crate::copy::Contents;
use crate::error::{Error, Result};

/// The magic at the start of a bundle.
pub const MAGIC: &[u8; 8] = b"SLATEST\0";
/// The bundle version this code reads and writes.
pub const VERSION: u32 = 1;
/// Largest bundle accepted (the server's default per-blob limit).
pub const MAX_BUNDLE: usize = 16 << 20;

/// Encode captured contents.
pub fn encode(c: &Contents) -> Vec<u8> {
    let mut w = Writer::new();
    w.raw(MAGIC);
    w.varint(VERSION as u64);
    w.bytes(&manifest::encode(&c.manifest));
    let mut order: Vec<ChunkId> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for e in &c.manifest.entries {
        if let Kind::File(f) = &e.kind {
            for ch in &f.chunks {
                if seen.insert(ch.id) {
                    order.push(ch.id);
                }
            }
        }
    }
    w.varint(order.len() as u64);
    for id in order {
        w.bytes(&c.chunks[&id]);
    }
    w.buf
}

/// Decode and check a bundle; `what` names it in errors.
pub fn decode(data: &[u8], what: &str) -> Result<Contents> {
    let bad = |e: String| {
        Error(format!(
            "{what} is not valid server state ({e}); delete it on the server to start over"
        ))
    };
    if data.len() > MAX_BUNDLE {
        return Err(bad(format!("{} bytes, more than {MAX_BUNDLE}", data.len())));
    }
    let mut r = Reader::new(data, "state bundle");
    r.header(MAGIC, VERSION).map_err(|e| bad(e.to_string()))?;
    let m_bytes = r.bytes(MAX_BUNDLE, "manifest").map_err(|e| bad(e.to_string()))?;
    let m = manifest::decode(m_bytes).map_err(|e| bad(e.to_string()))?;
    let n = r.count(1, "chunks").map_err(|e| bad(e.to_string()))?;
    let mut chunks = HashMap::with_capacity(n);
    for _ in 0..n {
        let b = r
            .bytes(manifest::MAX_CHUNK_LEN as usize, "chunk")
            .map_err(|e| bad(e.to_string()))?;
        chunks.insert(ChunkId::of(b), b.to_vec());
    }
    r.finish().map_err(|e| bad(e.to_string()))?;
    for e in &m.entries {
        if let Kind::File(f) = &e.kind {
            for ch in &f.chunks {
                match chunks.get(&ch.id) {
                    Some(b) if b.len() == ch.len as usize => {}
                    _ => {
                        return Err(bad(format!(
                            "a chunk of {} is missing",
                            manifest::path::display(&e.path)
                        )))
                    }
                }
            }
        }
    }
    Ok(Contents { manifest: m, chunks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tampering() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        std::fs::write(t.path().join("d/k1"), b"key one").unwrap();
        std::fs::write(t.path().join("d/k2"), vec![3u8; 100_000]).unwrap();
        let c = crate::copy::capture(&t.path().join("d")).unwrap();
        let bytes = encode(&c);
        let back = decode(&bytes, "blob").unwrap();
        assert_eq!(back.manifest, c.manifest);
        crate::copy::restore(&back, &t.path().join("out")).unwrap();
        assert_eq!(std::fs::read(t.path().join("out/k1")).unwrap(), b"key one");

        // A flipped content byte: the chunk no longer matches the manifest.
        let mut bad = bytes.clone();
        let at = bad.windows(7).position(|w| w == b"key one").unwrap();
        bad[at] ^= 1;
        assert!(decode(&bad, "blob").unwrap_err().to_string().contains("missing"));
        for cut in [0, 5, 9, bytes.len() / 2, bytes.len() - 1] {
            let e = decode(&bytes[..cut], "blob").unwrap_err().to_string();
            assert!(e.starts_with("blob is not valid server state"), "{e}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer, "blob").is_err());
    }
}
