//! The stored formats (specified in `docs/format/home.md`): the repository
//! config, a pack's index, a snapshot record, and a sealed chunk (blob).

use serde::{Deserialize, Serialize};
use slate_core::codec::{Reader, Writer};
use slate_core::{ChunkId, Id32};

use crate::crypto::Keys;
use crate::error::{Error, Result};

/// The format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The magic of an index object's plaintext.
pub const INDEX_MAGIC: &[u8; 8] = b"SLHIDX\0\x01";

/// Associated data binding an object's sealed bytes to its kind and name.
pub fn object_ad(kind: &str, name: &str) -> Vec<u8> {
    format!("slate-home v1 object {kind}/{name}").into_bytes()
}

/// Associated data binding a blob to the id of the chunk it holds.
pub fn blob_ad(id: &ChunkId) -> Vec<u8> {
    let mut ad = b"slate-home v1 blob ".to_vec();
    ad.extend_from_slice(id.as_bytes());
    ad
}

/// The repository's `config` object.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RepoConfig {
    /// Format version ([`FORMAT_VERSION`]).
    pub version: u32,
    /// Chunker minimum size.
    pub chunk_min: u32,
    /// Chunker average size.
    pub chunk_avg: u32,
    /// Chunker maximum size.
    pub chunk_max: u32,
    /// When `slate home init` ran (Unix seconds).
    pub created: i64,
}

impl RepoConfig {
    /// A new config with the project's chunker parameters.
    pub fn new(created: i64) -> RepoConfig {
        let p = slate_core::chunker::ChunkerParams::default();
        RepoConfig {
            version: FORMAT_VERSION,
            chunk_min: p.min,
            chunk_avg: p.avg,
            chunk_max: p.max,
            created,
        }
    }

    /// Check the chunker parameters before anything uses them (a config
    /// is authenticated, but a bad one must be an error, not a panic).
    pub fn check(&self) -> std::result::Result<(), String> {
        self.chunker().check()
    }

    /// The chunker these parameters describe.
    pub fn chunker(&self) -> slate_core::chunker::ChunkerParams {
        slate_core::chunker::ChunkerParams {
            min: self.chunk_min,
            avg: self.chunk_avg,
            max: self.chunk_max,
        }
    }
}

/// Where a blob is: which pack, where in it, how long, and its chunk's length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobEntry {
    /// The chunk.
    pub id: ChunkId,
    /// Offset of the sealed blob in the pack.
    pub offset: u64,
    /// Length of the sealed blob.
    pub len: u32,
    /// Length of the chunk's plain bytes.
    pub raw_len: u32,
}

/// The index of one pack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackIndex {
    /// The pack's name (BLAKE3 of its stored bytes, hex).
    pub pack: String,
    /// Its blobs in order.
    pub blobs: Vec<BlobEntry>,
}

impl PackIndex {
    /// Encode (before sealing).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.raw(INDEX_MAGIC);
        let mut pack = [0u8; 32];
        hex::decode_to_slice(&self.pack, &mut pack).expect("pack names are 64 hex digits");
        w.raw(&pack);
        w.varint(self.blobs.len() as u64);
        for b in &self.blobs {
            w.id(&b.id.0);
            w.varint(b.offset);
            w.varint(b.len as u64);
            w.varint(b.raw_len as u64);
        }
        w.buf
    }

    /// Decode what [`PackIndex::encode`] wrote.
    pub fn decode(data: &[u8]) -> std::result::Result<PackIndex, slate_core::Error> {
        let mut r = Reader::new(data, "home index");
        if r.remaining() < 8 || r.raw(8)? != INDEX_MAGIC {
            return Err(r.corrupt("not an index object"));
        }
        let pack = hex::encode(r.raw(32)?);
        let n = r.count(35, "blob")?;
        let mut blobs = Vec::with_capacity(n);
        for _ in 0..n {
            let id = ChunkId(r.id()?);
            let offset = r.varint()?;
            let len = r.varint_max(u32::MAX as u64, "blob length")? as u32;
            let raw_len = r.varint_max(slate_core::manifest::MAX_CHUNK_LEN as u64, "chunk length")? as u32;
            blobs.push(BlobEntry {
                id,
                offset,
                len,
                raw_len,
            });
        }
        r.finish()?;
        Ok(PackIndex { pack, blobs })
    }
}

/// One backed-up directory in a snapshot.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotRoot {
    /// Its absolute path on the machine that backed it up.
    pub path: String,
    /// The encoded manifest's chunks: (id hex, length).
    pub manifest: Vec<(String, u32)>,
}

/// A snapshot record.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Snapshot {
    /// Format version.
    pub version: u32,
    /// When the backup started (Unix nanoseconds).
    pub time_ns: i64,
    /// The machine's host name.
    pub host: String,
    /// The user the repository belongs to.
    pub user: String,
    /// The directories backed up.
    pub roots: Vec<SnapshotRoot>,
    /// Regular files (hard links counted once).
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Entries of every type.
    pub entries: u64,
    /// Bytes of new sealed blobs this backup stored.
    pub added_bytes: u64,
}

impl SnapshotRoot {
    /// The manifest's chunk ids.
    pub fn manifest_chunks(&self) -> Result<Vec<(ChunkId, u32)>> {
        self.manifest
            .iter()
            .map(|(h, len)| {
                Id32::from_hex(h)
                    .map(|i| (ChunkId(i), *len))
                    .ok_or_else(|| Error::Tampered(format!("snapshot names a bad manifest chunk {h:?}")))
            })
            .collect()
    }
}

/// Seal a JSON value as object `kind/name`.
pub fn seal_json<T: Serialize>(keys: &Keys, kind: &str, name: &str, v: &T) -> Vec<u8> {
    let plain = serde_json::to_vec(v).expect("serialising a plain struct cannot fail");
    keys.seal(&object_ad(kind, name), &plain)
}

/// Open a sealed JSON object.
pub fn open_json<T: for<'de> Deserialize<'de>>(keys: &Keys, kind: &str, name: &str, sealed: &[u8]) -> Result<T> {
    let plain = keys.open(&object_ad(kind, name), sealed).ok_or_else(|| {
        Error::Tampered(format!(
            "{kind} {name} fails authentication: it was changed on the server or is not this repository's"
        ))
    })?;
    serde_json::from_slice(&plain).map_err(|e| Error::Tampered(format!("{kind} {name} is malformed: {e}")))
}

/// Seal a chunk as a blob: a flag byte (0 stored, 1 zstd) then the bytes.
pub fn seal_blob(keys: &Keys, id: &ChunkId, data: &[u8], level: i32) -> Vec<u8> {
    // One compression context per thread: making one per chunk costs more
    // than compressing a small chunk.
    thread_local! {
        static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
            const { std::cell::RefCell::new(None) };
    }
    let compressed = COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().map(|(l, _)| *l) != Some(level) {
            *c = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        c.as_mut()?.1.compress(data).ok()
    });
    let compressed = compressed.filter(|c| c.len() + 64 < data.len());
    let mut plain = Vec::with_capacity(1 + compressed.as_ref().map_or(data.len(), Vec::len));
    match compressed {
        Some(c) => {
            plain.push(1);
            plain.extend_from_slice(&c);
        }
        None => {
            plain.push(0);
            plain.extend_from_slice(data);
        }
    }
    keys.seal(&blob_ad(id), &plain)
}

/// Open a blob and check its chunk id; `pack` names it in errors.
pub fn open_blob(keys: &Keys, id: &ChunkId, raw_len: u32, sealed: &[u8], pack: &str) -> Result<Vec<u8>> {
    let tampered = |what: &str| {
        Error::Tampered(format!(
            "pack {pack}: chunk {} {what}: the pack was changed on the server (run `slate home check`)",
            &id.to_hex()[..16]
        ))
    };
    let plain = keys
        .open(&blob_ad(id), sealed)
        .ok_or_else(|| tampered("fails authentication"))?;
    let data = match plain.split_first() {
        Some((0, d)) => d.to_vec(),
        Some((1, c)) => {
            thread_local! {
                static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
                    const { std::cell::RefCell::new(None) };
            }
            DECOMPRESSOR
                .with(|d| {
                    let mut d = d.borrow_mut();
                    if d.is_none() {
                        *d = zstd::bulk::Decompressor::new().ok();
                    }
                    d.as_mut()?.decompress(c, raw_len as usize).ok()
                })
                .ok_or_else(|| tampered("does not decompress"))?
        }
        _ => return Err(tampered("has an unknown encoding")),
    };
    if data.len() != raw_len as usize || keys.chunk_id(&data) != *id {
        return Err(tampered("does not match its id"));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_round_trip_and_blob_checks() {
        let k = Keys::from_master(&[3; 32]);
        let data = vec![5u8; 100_000];
        let id = k.chunk_id(&data);
        let blob = seal_blob(&k, &id, &data, 3);
        assert!(blob.len() < 1000, "compressible data is compressed");
        assert_eq!(open_blob(&k, &id, data.len() as u32, &blob, "p").unwrap(), data);
        let other = k.chunk_id(b"other");
        assert!(open_blob(&k, &other, data.len() as u32, &blob, "p").is_err());
        let idx = PackIndex {
            pack: "ab".repeat(32),
            blobs: vec![BlobEntry {
                id,
                offset: 7,
                len: blob.len() as u32,
                raw_len: 100_000,
            }],
        };
        assert_eq!(PackIndex::decode(&idx.encode()).unwrap(), idx);
        assert!(PackIndex::decode(&idx.encode()[..40]).is_err());
    }
}
