//! Checking a repository: every pack's bytes against its name, every chunk
//! against its id, every snapshot record, signature and manifest, and that
//! every chunk a snapshot needs is present. Faults are collected, not
//! fatal, so one run names them all.

use std::collections::HashSet;

use rayon::prelude::*;
use slate_core::keys::PublicKey;
use slate_core::manifest::Kind;
use slate_core::pack::{check_pack_header, chunk_from_frame, decompress_frame, PackIndex};
use slate_core::snapshot::check_trusted;
use slate_core::{ChunkId, Id32, PackId};

use crate::error::Result;
use crate::index::{index_key, pack_key};
use crate::progress::Progress;
use crate::repo::Repo;

/// The outcome of a verify run.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    /// Packs checked.
    pub packs: u64,
    /// Chunks checked.
    pub chunks: u64,
    /// Snapshots checked.
    pub snapshots: u64,
    /// One line per fault, naming the object.
    pub faults: Vec<String>,
    /// Leftovers of interrupted writes (a pack whose index never landed):
    /// garbage that `slate gc` removes, not damage, so not faults.
    pub notices: Vec<String>,
}

fn check_pack(repo: &Repo, id: &PackId) -> std::result::Result<u64, String> {
    let data = repo
        .storage
        .read(&pack_key(id))
        .map_err(|e| format!("pack {id}: {e}"))?;
    if Id32::hash(&data) != id.0 {
        return Err(format!("pack {id}: content does not match its name (corrupt)"));
    }
    let idx_bytes = repo
        .storage
        .read(&index_key(id))
        .map_err(|e| format!("pack index {id}: {e}"))?;
    let idx = PackIndex::decode(&idx_bytes).map_err(|e| format!("pack index {id}: {e}"))?;
    check_index_against_pack(id, &data, &idx)
}

/// Check that `idx` describes the pack `id` whose bytes are `data` (their
/// hash already checked against `id`): the pack's header and length, and
/// every chunk the index names found at the frame and offset it gives,
/// with the right hash. Returns the number of chunks; the error is one
/// line naming the pack.
pub fn check_index_against_pack(id: &PackId, data: &[u8], idx: &PackIndex) -> std::result::Result<u64, String> {
    check_pack_header(data).map_err(|e| format!("pack {id}: {e}"))?;
    if idx.pack_len != data.len() as u64 {
        return Err(format!(
            "pack index {id}: says the pack is {} bytes, it is {}",
            idx.pack_len,
            data.len()
        ));
    }
    let mut entries = idx.entries.clone();
    entries.sort_by_key(|e| e.frame_offset);
    let mut frame: Option<(u64, Vec<u8>)> = None;
    for e in &entries {
        if frame.as_ref().map(|f| f.0) != Some(e.frame_offset) {
            let start = e.frame_offset as usize;
            let raw = decompress_frame(
                &data[start..start + e.frame_len as usize],
                e.frame_raw_len,
                id,
                e.frame_offset,
            )
            .map_err(|e| e.to_string())?;
            frame = Some((e.frame_offset, raw));
        }
        chunk_from_frame(&frame.as_ref().unwrap().1, e).map_err(|err| format!("pack {id}: {err}"))?;
    }
    Ok(entries.len() as u64)
}

/// Verify the whole repository. With `trusted` keys, every snapshot that a
/// channel references must carry a valid signature by one of them.
pub fn verify(repo: &Repo, trusted: &[PublicKey], progress: &dyn Progress) -> Result<Report> {
    let mut report = Report::default();
    let pack_ids: Vec<PackId> = repo
        .storage
        .list("packs")?
        .iter()
        .filter_map(|k| {
            k.strip_suffix(".idx")
                .and_then(|k| PackId::from_hex(k.rsplit('/').next()?))
        })
        .collect();
    for k in repo.storage.list("packs")? {
        if let Some(stem) = k.strip_suffix(".pack") {
            let name = stem.rsplit('/').next().unwrap_or("");
            if !PackId::from_hex(name).is_some_and(|id| pack_ids.contains(&id)) {
                // A crash between publishing a pack and its index, or
                // between gc's two deletions, leaves this; nothing can
                // reference chunks that no index lists.
                report.notices.push(format!(
                    "pack {name}: has no index (leftover of an interrupted write; `slate gc` removes it)"
                ));
            }
        }
    }
    let total: u64 = pack_ids
        .iter()
        .filter_map(|id| repo.storage.len(&pack_key(id)).ok())
        .sum();
    progress.start("verify packs", total);
    let results: Vec<std::result::Result<u64, String>> = pack_ids
        .par_iter()
        .map(|id| {
            let r = check_pack(repo, id);
            progress.advance(repo.storage.len(&pack_key(id)).unwrap_or(0));
            r
        })
        .collect();
    progress.finish();
    for r in results {
        match r {
            Ok(n) => {
                report.packs += 1;
                report.chunks += n;
            }
            Err(f) => report.faults.push(f),
        }
    }

    // Build the index leniently: a corrupt index was reported above.
    let index = match repo.load_index() {
        Ok(i) => i,
        Err(e) => {
            report.faults.push(e.to_string());
            return Ok(report);
        }
    };
    let mut referenced = HashSet::new();
    for ch in repo.channels()? {
        match repo.channel_history(&ch) {
            Ok(h) => referenced.extend(h),
            Err(e) => report.faults.push(e.to_string()),
        }
    }
    let snapshots = repo.list_snapshots()?;
    for id in &referenced {
        if !snapshots.contains(id) {
            report
                .faults
                .push(format!("snapshot {id}: referenced by a channel but missing"));
        }
    }
    for id in snapshots {
        report.snapshots += 1;
        let snap = match repo.read_snapshot(&id) {
            Ok(s) => s,
            Err(e) => {
                report.faults.push(e.to_string());
                continue;
            }
        };
        let sigs = match repo.read_signatures(&id) {
            Ok(s) => s,
            Err(e) => {
                report.faults.push(e.to_string());
                continue;
            }
        };
        for s in &sigs {
            if s.verify(&id).is_err() {
                report.faults.push(format!(
                    "snapshot {id}: signature by key {} does not verify",
                    s.key.fingerprint()
                ));
            }
        }
        if !trusted.is_empty() && referenced.contains(&id) {
            if let Err(e) = check_trusted(&id, &sigs, trusted) {
                report.faults.push(format!("snapshot {id}: {e}"));
            }
        }
        let m = match repo.read_manifest(&snap, &index) {
            Ok(m) => m,
            Err(e) => {
                report.faults.push(format!("snapshot {id}: {e}"));
                continue;
            }
        };
        let mut missing: Vec<ChunkId> = Vec::new();
        for e in &m.entries {
            if let Kind::File(f) = &e.kind {
                missing.extend(f.chunks.iter().filter(|c| !index.contains(&c.id)).map(|c| c.id));
            }
        }
        if let Some(first) = missing.first() {
            report.faults.push(format!(
                "snapshot {id}: {} chunks missing, first {first}",
                missing.len()
            ));
        }
    }
    Ok(report)
}
