//! Preparing deltas between snapshots (`slate delta`), stored as
//! `deltas/<from>/<to>.delta` and served like any immutable object.
//!
//! Every regular file of TO that holds a chunk FROM lacks becomes an item:
//! with a reference when FROM has a file at the same path (or, failing
//! that, a file in the same directory whose name differs only in digits:
//! `libfoo.so.1.2.3` for `libfoo.so.1.2.4`), compressed with that old
//! version as zstd's reference prefix (a binary patch); without one,
//! grouped with its neighbours into solid frames. The new manifest travels
//! as a patch against the old one. Files too large for one item are left
//! to the client's ordinary chunk fetch.

use std::collections::{HashMap, HashSet};
use std::io::Write;

use rayon::prelude::*;
use slate_core::delta::{DeltaHeader, DeltaItem, MAX_ITEM_BYTES, WINDOW_LOG};
use slate_core::manifest::{diff::chunk_set, path as mpath, ChunkRef, Kind, Manifest};
use slate_core::{ChunkId, SnapshotId};

use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::reader::ChunkReader;
use crate::repo::Repo;
use crate::Loaded;

/// Unreferenced small files are grouped into solid items of about this size.
const SOLID_TARGET: u64 = 4 << 20;

/// The storage key of the delta from `from` to `to`.
pub fn delta_key(from: &SnapshotId, to: &SnapshotId) -> String {
    format!("deltas/{}/{}.delta", from.to_hex(), to.to_hex())
}

/// What a delta holds.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct DeltaStats {
    /// The snapshot a client holds.
    pub from: String,
    /// The snapshot it rebuilds.
    pub to: String,
    /// Items in the delta.
    pub items: u64,
    /// Of which patches against an old file.
    pub patches: u64,
    /// Bytes the items rebuild.
    pub output_bytes: u64,
    /// Size of the delta file.
    pub delta_bytes: u64,
    /// Chunks of TO a client must still fetch the ordinary way.
    pub left_out_chunks: u64,
}

/// A name with its digits removed: files that differ only in version
/// numbers share it.
fn versionless(name: &[u8]) -> Vec<u8> {
    name.iter().copied().filter(|b| !b.is_ascii_digit()).collect()
}

fn file_chunks(m: &Manifest, i: usize) -> Option<&[ChunkRef]> {
    match &m.entries[i].kind {
        Kind::File(f) if f.data_len() <= MAX_ITEM_BYTES => Some(&f.chunks),
        _ => None,
    }
}

/// Plan the items (without payloads) of the delta from `a` to `b`.
pub fn plan(a: &Loaded, b: &Loaded) -> (Vec<DeltaItem>, u64) {
    let mut have: HashSet<ChunkId> = chunk_set(&a.manifest);
    have.extend(a.snapshot.manifest.chunks.iter().map(|c| c.id));
    let mut items = Vec::new();
    let mut emitted: HashSet<ChunkId> = HashSet::new();
    if b.snapshot.manifest.chunks.iter().any(|c| !have.contains(&c.id)) {
        items.push(DeltaItem {
            reference: a.snapshot.manifest.chunks.clone(),
            output: b.snapshot.manifest.chunks.clone(),
            payload_len: 0,
        });
    }
    // Candidate references by (directory, versionless name).
    let mut similar: HashMap<(Vec<u8>, Vec<u8>), usize> = HashMap::new();
    for (i, e) in a.manifest.entries.iter().enumerate() {
        if file_chunks(&a.manifest, i).is_some() {
            similar
                .entry((mpath::parent(&e.path).to_vec(), versionless(mpath::name(&e.path))))
                .or_insert(i);
        }
    }
    let mut left_out = 0u64;
    let mut solid: Vec<ChunkRef> = Vec::new();
    let mut solid_len = 0u64;
    for (j, e) in b.manifest.entries.iter().enumerate() {
        let Kind::File(f) = &e.kind else { continue };
        if f.chunks.iter().all(|c| have.contains(&c.id) || emitted.contains(&c.id)) {
            continue;
        }
        if f.data_len() > MAX_ITEM_BYTES {
            left_out += f.chunks.iter().filter(|c| !have.contains(&c.id)).count() as u64;
            continue;
        }
        let _ = j;
        let reference = a
            .manifest
            .find(&e.path)
            .filter(|&i| file_chunks(&a.manifest, i).is_some())
            .or_else(|| {
                similar
                    .get(&(mpath::parent(&e.path).to_vec(), versionless(mpath::name(&e.path))))
                    .copied()
            })
            .and_then(|i| file_chunks(&a.manifest, i))
            .filter(|r| !r.is_empty());
        emitted.extend(f.chunks.iter().map(|c| c.id));
        match reference {
            Some(r) => items.push(DeltaItem {
                reference: r.to_vec(),
                output: f.chunks.clone(),
                payload_len: 0,
            }),
            None => {
                solid_len += f.data_len();
                solid.extend(f.chunks.iter().copied());
                if solid_len >= SOLID_TARGET {
                    items.push(DeltaItem {
                        reference: Vec::new(),
                        output: std::mem::take(&mut solid),
                        payload_len: 0,
                    });
                    solid_len = 0;
                }
            }
        }
    }
    if !solid.is_empty() {
        items.push(DeltaItem {
            reference: Vec::new(),
            output: solid,
            payload_len: 0,
        });
    }
    (items, left_out)
}

fn read_all(reader: &mut ChunkReader<'_>, chunks: &[ChunkRef]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(chunks.iter().map(|c| c.len as usize).sum());
    for c in chunks {
        reader.with_chunk(&c.id, |d| out.extend_from_slice(d))?;
    }
    Ok(out)
}

/// Compress one item's output with its reference as prefix.
pub fn compress_item(reference: &[u8], output: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    use zstd::stream::raw::CParameter;
    let mut enc =
        zstd::stream::write::Encoder::with_ref_prefix(Vec::with_capacity(output.len() / 4), level, reference)?;
    enc.set_parameter(CParameter::WindowLog(WINDOW_LOG))?;
    enc.set_parameter(CParameter::EnableLongDistanceMatching(true))?;
    enc.set_pledged_src_size(Some(output.len() as u64))?;
    enc.write_all(output)?;
    enc.finish()
}

/// Prepare and store the delta from `from` to `to` with zstd `level`.
pub fn generate(repo: &Repo, from: &str, to: &str, level: i32, progress: &dyn Progress) -> Result<DeltaStats> {
    let a = repo.load(from)?;
    let b = repo.load(to)?;
    if a.id == b.id {
        return Err(Error::Invalid("a delta needs two different snapshots".into()));
    }
    let (mut items, left_out) = plan(&a, &b);
    let total: u64 = items.iter().map(|i| i.output_len()).sum();
    progress.start("delta", total);
    let storage = repo.storage.as_ref();
    let index = &b.index;
    // Items are independent: compress them on every core, in order.
    let payloads: Vec<Vec<u8>> = items
        .par_iter()
        .map_init(
            || ChunkReader::new(storage, index),
            |reader, it| {
                let reference = read_all(reader, &it.reference)?;
                let output = read_all(reader, &it.output)?;
                let p = compress_item(&reference, &output, level)?;
                progress.advance(output.len() as u64);
                Ok(p)
            },
        )
        .collect::<Result<_>>()?;
    progress.finish();
    for (it, p) in items.iter_mut().zip(&payloads) {
        it.payload_len = p.len() as u64;
    }
    let header = DeltaHeader {
        from: a.id,
        to: b.id,
        items,
    };
    let mut w = storage.create()?;
    let head = header.encode();
    w.write_all(&head)?;
    let mut size = head.len() as u64;
    for p in &payloads {
        w.write_all(p)?;
        size += p.len() as u64;
    }
    w.finish(&delta_key(&a.id, &b.id))?;
    storage.sync()?;
    Ok(DeltaStats {
        from: a.id.to_hex(),
        to: b.id.to_hex(),
        items: header.items.len() as u64,
        patches: header.items.iter().filter(|i| !i.reference.is_empty()).count() as u64,
        output_bytes: total,
        delta_bytes: size,
        left_out_chunks: left_out,
    })
}
