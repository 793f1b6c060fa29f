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
    /// On an object store, where the lists above are recorded in
    /// `gc/pending` rather than deleted: what happened to the record.
    pub pending: Option<PendingReport>,
}

/// What a gc on an object store did with `gc/pending` (two-phase deletion).
#[derive(Debug, Default, serde::Serialize)]
pub struct PendingReport {
    /// Entries found dead now and recorded (packs, snapshots, other objects).
    pub recorded: u64,
    /// Entries deleted: recorded by an earlier gc, past their grace period, still dead.
    pub deleted: u64,
    /// Entries still waiting for their grace period.
    pub waiting: u64,
    /// Entries struck from the record: something names them again.
    pub struck: u64,
    /// Pack bytes deleted.
    pub deleted_bytes: u64,
}

/// How to run a gc.
#[derive(Clone, Copy, Debug)]
pub struct GcOptions {
    /// Cut each channel's history to its newest this many snapshots.
    pub keep_last: Option<usize>,
    /// Plan only.
    pub dry_run: bool,
    /// On an object store: how long what this gc finds dead stays in
    /// `gc/pending` before a later gc may delete it.
    pub grace: std::time::Duration,
}

/// The default grace period: a day, far longer than any commit.
pub const DEFAULT_GRACE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            keep_last: None,
            dry_run: false,
            grace: DEFAULT_GRACE,
        }
    }
}

/// Compute the plan. Fails, deleting nothing, if any live snapshot cannot
/// be read completely.
/// With `keep_last`, each channel's history is first cut to its newest
/// `keep_last` snapshots.
/// A chunk held by a pack in `pending` (gc/pending) counts as live for that
/// pack only if no other pack holds it: a pack whose live chunks were all
/// copied elsewhere (a rewrite) is dead.
pub fn plan(repo: &Repo, keep_last: Option<usize>, pending: &HashSet<PackId>) -> Result<(GcPlan, HashSet<ChunkId>)> {
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
    let mut indexes = Vec::new();
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
        indexes.push((id, idx));
    }
    let held_elsewhere: HashSet<ChunkId> = match pending.is_empty() {
        true => HashSet::new(),
        false => indexes
            .iter()
            .filter(|(id, _)| !pending.contains(id))
            .flat_map(|(_, idx)| idx.entries.iter().map(|e| e.id))
            .collect(),
    };
    // Per pack: live bytes vs all bytes, by raw chunk length.
    let mut per_pack: HashMap<PackId, (u64, u64)> = HashMap::new();
    for (id, idx) in &indexes {
        let is_pending = pending.contains(id);
        let t = per_pack.entry(*id).or_default();
        for e in &idx.entries {
            t.1 += e.len as u64;
            if live_chunks.contains(&e.id) && !(is_pending && held_elsewhere.contains(&e.id)) {
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

/// Plan and apply a gc; returns what was done. A directory repository is
/// pruned under its writer lock at once; a repository without a lock (an
/// object store) goes through `gc/pending` (see [`crate::pending`]).
pub fn gc(repo: &Repo, opts: &GcOptions) -> Result<GcPlan> {
    gc_with_hook(repo, opts, &mut || Ok(()))
}

/// [`gc`], calling `after_plan` on an object store once the plan is made
/// and before anything changes: tests move a channel at that instant.
pub fn gc_with_hook(repo: &Repo, opts: &GcOptions, after_plan: &mut dyn FnMut() -> Result<()>) -> Result<GcPlan> {
    if repo.root.is_none() {
        return gc_two_phase(repo, opts, after_plan);
    }
    let _lock = repo.lock()?;
    let (plan, live_chunks) = plan(repo, opts.keep_last, &HashSet::new())?;
    if opts.dry_run {
        return Ok(plan);
    }
    let storage = repo.storage.as_ref();
    // Channels first: once they no longer name a snapshot, removing it is safe.
    trim_channels(repo, &plan, opts.keep_last)?;
    if !plan.rewrite_packs.is_empty() {
        rewrite(repo, &plan, &live_chunks, &HashSet::new())?;
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

/// Cut the channels the plan trims, each with a conditional replacement of
/// the history the plan saw: a writer that moved a channel since then
/// makes gc fail ([`crate::Error::ChannelMoved`]) rather than lose its
/// snapshot (on an object store; a directory's lock excludes it anyway).
fn trim_channels(repo: &Repo, plan: &GcPlan, keep_last: Option<usize>) -> Result<()> {
    let Some(keep) = keep_last else { return Ok(()) };
    for (ch, drop) in &plan.trim_channels {
        let (h, expected) = repo.channel_history_expecting(ch)?;
        if h.len() != drop + keep {
            return Err(crate::Error::ChannelMoved(ch.clone()));
        }
        repo.set_channel_history_if(ch, &h[*drop..], &expected)?;
    }
    Ok(())
}

/// Copy the live chunks of the plan's rewritten packs into new packs and
/// sync them, reusing no chunk of a dropped, rewritten or `exclude`d pack.
fn rewrite(repo: &Repo, plan: &GcPlan, live_chunks: &HashSet<ChunkId>, exclude: &HashSet<PackId>) -> Result<()> {
    let storage = repo.storage.as_ref();
    let full = repo.load_index()?;
    // Index of the packs that stay as they are: a live chunk they hold
    // is not copied again.
    let mut kept = ChunkIndex::default();
    let rewritten: HashSet<&str> = plan.rewrite_packs.iter().map(String::as_str).collect();
    let dropped: HashSet<&str> = plan.drop_packs.iter().map(String::as_str).collect();
    for id in &full.packs {
        let h = id.to_hex();
        if !rewritten.contains(h.as_str()) && !dropped.contains(h.as_str()) && !exclude.contains(id) {
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
    Ok(())
}

/// gc on a repository without a writer lock (an object store): nothing
/// found dead is deleted at once. It is recorded in `gc/pending`, and a
/// later gc deletes an entry once its grace period has passed and it is
/// still dead (docs/scale.md, "Crash safety", point 2). Rewritten packs
/// take the same path once their live chunks are copied.
fn gc_two_phase(repo: &Repo, opts: &GcOptions, after_plan: &mut dyn FnMut() -> Result<()>) -> Result<GcPlan> {
    use crate::pending::{unix_now, Kind as P, Mark, Pending, PENDING_KEY};
    // The clock is read before the channels: an entry this run deletes has
    // been dead since before any writer that could still publish it began.
    let now = unix_now();
    let storage = repo.storage.as_ref();
    let (record, expected) = Pending::read(storage)?;
    let pending_packs = record.packs();
    let (mut plan, live_chunks) = plan(repo, opts.keep_last, &pending_packs)?;
    // A pending pack that is still partly live waits to be struck, not rewritten.
    plan.rewrite_packs
        .retain(|h| PackId::from_hex(h).is_none_or(|id| !pending_packs.contains(&id)));
    let mut dead: HashSet<(P, String)> = HashSet::new();
    dead.extend(plan.drop_packs.iter().map(|h| (P::Pack, h.clone())));
    dead.extend(plan.drop_snapshots.iter().map(|h| (P::Snapshot, h.clone())));
    dead.extend(
        plan.drop_deltas
            .iter()
            .chain(&plan.orphans)
            .filter(|k| !k.contains('\n'))
            .map(|k| (P::Key, k.clone())),
    );
    let mut report = PendingReport::default();
    let mut next = Pending::default();
    let mut due = Vec::new();
    for (entry, mark) in &record.entries {
        if !dead.contains(entry) {
            report.struck += 1;
        } else if mark.due(now) {
            due.push(entry.clone());
        } else {
            next.entries.insert(entry.clone(), *mark);
        }
    }
    let fresh = Mark {
        marked: now,
        grace: opts.grace.as_secs(),
    };
    for entry in &dead {
        if !record.entries.contains_key(entry) {
            next.entries.insert(entry.clone(), fresh);
            report.recorded += 1;
        }
    }
    report.deleted = due.len() as u64;
    if opts.dry_run {
        report.waiting = next.entries.len() as u64 - report.recorded;
        plan.pending = Some(report);
        return Ok(plan);
    }
    after_plan()?;
    trim_channels(repo, &plan, opts.keep_last)?;
    if !plan.rewrite_packs.is_empty() {
        rewrite(repo, &plan, &live_chunks, &pending_packs)?;
        for h in &plan.rewrite_packs {
            next.entries.insert((P::Pack, h.clone()), fresh);
            report.recorded += 1;
        }
    }
    report.waiting = next.entries.len() as u64 - report.recorded;
    // Snapshots before packs, each index before its pack: what is left by
    // a crash halfway is still consistent, and the record (written last)
    // then names objects that are gone, which the next gc drops.
    due.sort_by_key(|(k, _)| match k {
        P::Snapshot => 0,
        P::Key => 1,
        P::Pack => 2,
    });
    for (kind, name) in &due {
        match kind {
            P::Snapshot => {
                let id = SnapshotId::from_hex(name).expect("planned ids are hex");
                for k in Repo::snapshot_keys(&id) {
                    storage.delete(&k)?;
                }
            }
            P::Pack => {
                let id = PackId::from_hex(name).expect("planned ids are hex");
                report.deleted_bytes += storage.len(&pack_key(&id)).unwrap_or(0);
                storage.delete(&index_key(&id))?;
                storage.delete(&pack_key(&id))?;
            }
            P::Key => {
                // A pack whose index has appeared since is a writer's, live.
                if let Some(stem) = name.strip_suffix(".pack") {
                    if storage.exists(&format!("{stem}.idx")) {
                        continue;
                    }
                }
                storage.delete(name)?;
            }
        }
    }
    storage
        .write_expecting(PENDING_KEY, &next.encode(), &expected)
        .map_err(|e| match crate::storage::is_conflict(&e) {
            true => crate::Error::Invalid(format!(
                "{PENDING_KEY} was replaced by another gc running at the same time; \
                 run gc again once it is done (only one gc should run at a time)"
            )),
            false => e.into(),
        })?;
    plan.pending = Some(report);
    Ok(plan)
}
