//! Garbage collection: keep what some channel's history references, drop
//! the rest. Planned first (an inspectable [`GcPlan`]), then applied under
//! the writer lock. Packs that are mostly garbage are rewritten: the new
//! pack and index are synced before the old ones are removed, so a crash
//! at any instant loses no live chunk.

use std::collections::{HashMap, HashSet};

use slate_core::manifest::Kind;
use slate_core::{ChunkId, PackId, SnapshotId};

use crate::commit::Assembler;
use crate::error::Result;
use crate::index::{index_key, pack_key, ChunkIndex};
use crate::reader::ChunkReader;
use crate::repo::Repo;

/// Below this fraction of live bytes a pack is rewritten.
const REWRITE_BELOW: f64 = 0.5;

/// What a gc run will do.
#[derive(Debug, Default, serde::Serialize)]
pub struct GcPlan {
    /// Channels whose history is cut, and how many old entries go.
    pub trim_channels: Vec<(String, usize)>,
    /// Snapshots no channel references.
    pub drop_snapshots: Vec<String>,
    /// Packs holding no live chunk.
    pub drop_packs: Vec<String>,
    /// Packs to rewrite with their live chunks only.
    pub rewrite_packs: Vec<String>,
    /// Snapshots kept.
    pub kept_snapshots: u64,
    /// Pack bytes freed (before rewritten packs' new copies).
    pub freed_bytes: u64,
    /// Deltas with an end that is no longer live (storage keys).
    pub drop_deltas: Vec<String>,
    /// Objects left by interrupted writes (storage keys).
    pub orphans: Vec<String>,
    /// Leftover temp files removed.
    pub temp_files: u64,
}

/// Compute the plan. Fails, deleting nothing, if any live snapshot cannot
/// be read completely.
/// With `keep_last`, each channel's history is first cut to its newest
/// `keep_last` snapshots.
pub fn plan(repo: &Repo, keep_last: Option<usize>) -> Result<(GcPlan, HashSet<ChunkId>)> {
    let index = repo.load_index()?;
    let mut live: HashSet<SnapshotId> = HashSet::new();
    let mut plan = GcPlan::default();
    for ch in repo.channels()? {
        let h = repo.channel_history(&ch)?;
        let keep = keep_last.map_or(h.len(), |k| k.min(h.len()));
        if keep < h.len() {
            plan.trim_channels.push((ch.clone(), h.len() - keep));
        }
        live.extend(&h[h.len() - keep..]);
    }
    let mut live_chunks: HashSet<ChunkId> = HashSet::new();
    for id in &live {
        let snap = repo.read_snapshot(id)?;
        live_chunks.extend(snap.manifest.chunks.iter().map(|c| c.id));
        let m = repo.read_manifest(&snap, &index)?;
        for e in &m.entries {
            if let Kind::File(f) = &e.kind {
                live_chunks.extend(f.chunks.iter().map(|c| c.id));
            }
        }
    }
    plan.kept_snapshots = live.len() as u64;
    for id in repo.list_snapshots()? {
        if !live.contains(&id) {
            plan.drop_snapshots.push(id.to_hex());
        }
    }
    // Per pack: live bytes vs all bytes, by raw chunk length.
    let mut per_pack: HashMap<PackId, (u64, u64)> = HashMap::new();
    for key in repo.storage.list("packs")?.iter().filter(|k| k.ends_with(".idx")) {
        let Some(id) = key
            .rsplit('/')
            .next()
            .and_then(|n| PackId::from_hex(n.trim_end_matches(".idx")))
        else {
            continue;
        };
        let idx = slate_core::pack::PackIndex::decode(&repo.storage.read(key)?)
            .map_err(|e| crate::Error::corrupt(format!("pack index {id}"), e))?;
        let t = per_pack.entry(id).or_default();
        for e in &idx.entries {
            t.1 += e.len as u64;
            if live_chunks.contains(&e.id) {
                t.0 += e.len as u64;
            }
        }
    }
    for (id, (live_b, all_b)) in per_pack {
        let size = repo.storage.len(&pack_key(&id)).unwrap_or(0);
        if live_b == 0 {
            plan.drop_packs.push(id.to_hex());
            plan.freed_bytes += size;
        } else if (live_b as f64) < REWRITE_BELOW * all_b as f64 {
            plan.rewrite_packs.push(id.to_hex());
            plan.freed_bytes += size;
        }
    }
    // Leftovers of interrupted writes: a pack whose index never landed (or
    // whose index a gc already removed), signatures without a record.
    let all = repo.storage.list("packs")?;
    for k in all.iter().filter(|k| k.ends_with(".pack")) {
        if !all.contains(&format!("{}.idx", k.trim_end_matches(".pack"))) {
            plan.orphans.push(k.clone());
        }
    }
    let snaps = repo.storage.list("snapshots")?;
    for k in snaps.iter().filter(|k| k.ends_with(".sig")) {
        if !snaps.contains(&format!("{}.snap", k.trim_end_matches(".sig"))) {
            plan.orphans.push(k.clone());
        }
    }
    // A delta is only useful while both its ends are live.
    for k in repo.storage.list("deltas")? {
        let mut parts = k.trim_start_matches("deltas/").trim_end_matches(".delta").split('/');
        let ends = (
            parts.next().and_then(SnapshotId::from_hex),
            parts.next().and_then(SnapshotId::from_hex),
        );
        let keep = matches!(ends, (Some(a), Some(b)) if live.contains(&a) && live.contains(&b));
        if !keep {
            plan.drop_deltas.push(k);
        }
    }
    plan.temp_files = repo.storage.list("tmp")?.len() as u64;
    plan.drop_packs.sort();
    plan.rewrite_packs.sort();
    Ok((plan, live_chunks))
}

/// Plan and apply a gc under the writer lock; returns what was done.
pub fn gc(repo: &Repo, keep_last: Option<usize>, dry_run: bool) -> Result<GcPlan> {
    let _lock = repo.lock()?;
    let (plan, live_chunks) = plan(repo, keep_last)?;
    if dry_run {
        return Ok(plan);
    }
    let storage = repo.storage.as_ref();
    // Channels first: once they no longer name a snapshot, removing it is safe.
    for (ch, drop) in &plan.trim_channels {
        let h = repo.channel_history(ch)?;
        repo.set_channel_history(ch, &h[*drop..])?;
    }
    let full = repo.load_index()?;
    if !plan.rewrite_packs.is_empty() {
        // Index of the packs that stay as they are: a live chunk they hold
        // is not copied again.
        let mut kept = ChunkIndex::default();
        let rewritten: HashSet<&str> = plan.rewrite_packs.iter().map(String::as_str).collect();
        let dropped: HashSet<&str> = plan.drop_packs.iter().map(String::as_str).collect();
        for id in &full.packs {
            let h = id.to_hex();
            if !rewritten.contains(h.as_str()) && !dropped.contains(h.as_str()) {
                let idx = slate_core::pack::PackIndex::decode(&storage.read(&index_key(id))?)
                    .map_err(|e| crate::Error::corrupt(format!("pack index {id}"), e))?;
                kept.add_pack(*id, &idx);
            }
        }
        let mut asm = Assembler::new(storage, &kept, repo.config.compression_level);
        let mut reader = ChunkReader::new(storage, &full);
        for h in &plan.rewrite_packs {
            let id = PackId::from_hex(h).expect("planned ids are hex");
            let idx = slate_core::pack::PackIndex::decode(&storage.read(&index_key(&id))?)
                .map_err(|e| crate::Error::corrupt(format!("pack index {id}"), e))?;
            let mut entries = idx.entries;
            entries.sort_by_key(|e| (e.frame_offset, e.offset));
            for e in entries.iter().filter(|e| live_chunks.contains(&e.id)) {
                let data = reader.read(&e.id)?;
                asm.push(e.id, &data)?;
            }
        }
        asm.finish()?;
        storage.sync()?;
    }
    for h in plan.drop_snapshots.iter() {
        let id = SnapshotId::from_hex(h).expect("planned ids are hex");
        for k in Repo::snapshot_keys(&id) {
            storage.delete(&k)?;
        }
    }
    for h in plan.drop_packs.iter().chain(&plan.rewrite_packs) {
        let id = PackId::from_hex(h).expect("planned ids are hex");
        // Index first: an index on disk always has its pack.
        storage.delete(&index_key(&id))?;
        storage.delete(&pack_key(&id))?;
    }
    for k in &plan.drop_deltas {
        storage.delete(k)?;
    }
    for k in &plan.orphans {
        // The rewrite above may have just published this very pack (the
        // same live chunks give the same bytes, hence the same name) with
        // its index, e.g. when an earlier gc was killed between the two:
        // it is live now, not a leftover.
        if let Some(stem) = k.strip_suffix(".pack") {
            if storage.exists(&format!("{stem}.idx")) {
                continue;
            }
        }
        storage.delete(k)?;
    }
    for k in storage.list("tmp")? {
        storage.delete(&k)?;
    }
    storage.sync()?;
    Ok(plan)
}
