//! `slate pull`: mirror a channel into a local repository. The packs that
//! hold the channel's chunks are copied whole (they are immutable and named
//! by their hash, so each is verified on arrival, and its index is checked
//! against it chunk by chunk), then the snapshot records and signatures,
//! then, after a sync, the channel.
//!
//! The source is as untrusted as any mirror: every new snapshot must be
//! signed by a trusted key (there is no unverified pull), and a channel
//! whose history no longer holds the head this repository already has (a
//! mirror rolled back to an older state, or a rewritten history) is
//! refused before anything is written.
//!
//! With fleet keys (`--fleet-trust`), the source's signed channel head
//! (`/v1/heads/NAME`) is checked too and kept beside the channel, so that
//! this repository, served as a mirror, hands agents and further mirrors a
//! head that expires: a mirror that stops pulling is seen as stale, and one
//! that serves an older head than it served before is refused.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use slate_core::keys::PublicKey;
use slate_core::manifest::Kind;
use slate_core::pack::PackIndex;
use slate_core::snapshot::{check_trusted, encode_signatures};
use slate_core::{Id32, PackId};
use slate_repo::index::{index_key, pack_key};
use slate_repo::Repo;

use crate::error::{Error, Result};
use crate::http::Http;
use crate::remote::{RangeCache, Remote};

/// What a pull did.
#[derive(Debug, Default, serde::Serialize)]
pub struct PullStats {
    /// Snapshots added.
    pub snapshots: u64,
    /// Packs copied.
    pub packs: u64,
    /// Bytes downloaded.
    pub bytes: u64,
}

/// The keys a pull checks against.
pub struct PullTrust<'a> {
    /// Release keys: every new snapshot needs a valid signature by one.
    pub release: &'a [PublicKey],
    /// Fleet keys: when not empty, the source's signed channel head must
    /// verify with one of them and is kept for this repository to serve.
    pub fleet: &'a [PublicKey],
}

/// The signed head this repository holds for `channel`, if any (as text,
/// with its issue time when it still parses).
fn held_head(repo: &Repo, channel: &str) -> Option<u64> {
    let bytes = repo.storage.read(&slate_repo::channel::head_key(channel)).ok()?;
    let (head, _) = slate_core::trust::ChannelHead::parse(std::str::from_utf8(&bytes).ok()?).ok()?;
    Some(head.issued_at)
}

/// Mirror `channel` from `server` into `repo`.
pub fn pull(server: &str, channel: &str, repo: &Repo, keys: &PullTrust, work: &Path) -> Result<PullStats> {
    let trusted = keys.release;
    slate_repo::channel::check_name(channel)?;
    if trusted.is_empty() {
        return Err(Error::Config(
            "pulling needs at least one trusted key (--trust KEY.pub): a mirror is only as good as its signatures"
                .into(),
        ));
    }
    let http = Http::new(&[server.trim_end_matches('/').to_string()], 60)?;
    // The head first: a channel that moves on between the two requests
    // then still holds it, and is cut back to what the head vouches for.
    let head = if keys.fleet.is_empty() {
        None
    } else {
        let text = http.get_optional(&format!("/v1/heads/{channel}"))?.ok_or_else(|| {
            Error::Untrusted(format!(
                "refusing channel {channel} from {server}: it serves no signed head (/v1/heads/{channel}); \
                 pull without --fleet-trust to mirror it unsigned"
            ))
        })?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let held = held_head(repo, channel).unwrap_or(0);
        let head = crate::trust::check_head(&text, server, channel, keys.fleet, now, held).map_err(|p| match p {
            crate::trust::HeadProblem::Refused(m) | crate::trust::HeadProblem::Stale(m) => {
                Error::Untrusted(format!("{m}; nothing was changed"))
            }
        })?;
        Some((head, text))
    };
    let text = http.get(&format!("/v1/channels/{channel}"))?;
    let mut history = slate_repo::channel::decode(channel, &text)?;
    if history.is_empty() {
        return Err(Error::Server(format!("channel {channel} on {server} is empty")));
    }
    if let Some((head, _)) = &head {
        let at = usize::try_from(head.length).unwrap_or(usize::MAX) - 1;
        if history.get(at) != Some(&head.snapshot) {
            return Err(Error::Untrusted(format!(
                "refusing channel {channel} from {server}: its history does not hold the signed head {} at \
                 position {}; nothing was changed",
                &head.snapshot.to_hex()[..12],
                head.length
            )));
        }
        history.truncate(at + 1);
    }
    let _lock = repo.lock()?;
    // Read with what a conditional replacement must find: on an object
    // store (no lock) a writer that moves the channel or its head meanwhile
    // makes this pull fail rather than be overwritten.
    let guard = slate_repo::pending::WriteGuard::start(repo)?;
    let (held, expected) = repo.channel_history_expecting(channel)?;
    let head_key = slate_repo::channel::head_key(channel);
    let (_, head_expected) = repo.storage.read_expecting(&head_key)?;
    if let Some(head) = held.last() {
        if !history.contains(head) {
            return Err(Error::Untrusted(format!(
                "refusing channel {channel} from {server}: its history does not extend the one this repository \
                 holds (head {} is not in it: a rolled-back or rewritten mirror); nothing was changed",
                &head.to_hex()[..12]
            )));
        }
    }
    // Pending packs (gc/pending) are not reused: they are fetched anew.
    let have_index = slate_repo::index::ChunkIndex::load_excluding(repo.storage.as_ref(), &guard.pending_packs)?;
    let remote = Remote::new(&http, work);
    let index = remote.index()?;
    let cache = RangeCache::open(&work.join("pull-ranges"))?;
    let mut stats = PullStats::default();
    let mut packs_needed: HashSet<PackId> = HashSet::new();
    let mut records = Vec::new();
    for id in &history {
        if repo.read_snapshot(id).is_ok() {
            continue;
        }
        let (snap, sigs) = remote.snapshot(id)?;
        check_trusted(id, &sigs, trusted).map_err(|e| Error::Untrusted(format!("refusing snapshot {id}: {e}")))?;
        // The manifest, to learn which chunks (and so packs) it needs.
        let want: Vec<_> = snap.manifest.chunks.iter().map(|c| c.id).collect();
        let ranges = Remote::plan_fetch(&index, &cache, &want)?;
        remote.fetch(&index, &ranges, &cache, 4, &slate_repo::progress::NoProgress)?;
        let mut bytes = Vec::new();
        let mut reader = slate_repo::reader::ChunkReader::new(&cache, &index);
        for c in &snap.manifest.chunks {
            reader.with_chunk(&c.id, |d| bytes.extend_from_slice(d))?;
        }
        if Id32::hash(&bytes) != snap.manifest.hash {
            return Err(Error::Untrusted(format!(
                "manifest of snapshot {id} does not match its hash"
            )));
        }
        let m = slate_core::manifest::decode(&bytes)
            .map_err(|e| Error::Untrusted(format!("manifest of snapshot {id}: {e}")))?;
        for c in snap.manifest.chunks.iter().chain(
            m.entries
                .iter()
                .filter_map(|e| match &e.kind {
                    Kind::File(f) => Some(f.chunks.iter()),
                    _ => None,
                })
                .flatten(),
        ) {
            if !have_index.contains(&c.id) {
                let loc = index
                    .get(&c.id)
                    .ok_or_else(|| Error::Server(format!("the server lacks chunk {}", c.id)))?;
                packs_needed.insert(index.packs[loc.pack as usize]);
            }
        }
        records.push((*id, snap, sigs));
    }
    // Each pack and its index are checked before they are kept: an index
    // that lies about its pack would make the mirror serve chunks from the
    // wrong place to every machine behind it. (A pack kept before a later
    // one fails is verified content that no channel names yet: gc's.)
    for pack in &packs_needed {
        let data = http.get(&format!("/v1/repo/{}", pack_key(pack)))?;
        if PackId::of(&data) != *pack {
            return Err(Error::Untrusted(format!(
                "pack {pack} from {server} does not match its name (tampered or corrupt)"
            )));
        }
        let idx = http.get(&format!("/v1/repo/{}", index_key(pack)))?;
        let decoded = PackIndex::decode(&idx).map_err(|e| Error::Untrusted(format!("index of pack {pack}: {e}")))?;
        slate_repo::verify::check_index_against_pack(pack, &data, &decoded).map_err(|e| {
            Error::Untrusted(format!(
                "the index of pack {pack} from {server} does not describe it ({e}); nothing was kept"
            ))
        })?;
        repo.storage.write(&pack_key(pack), &data)?;
        repo.storage.write(&index_key(pack), &idx)?;
        stats.packs += 1;
    }
    for (id, snap, sigs) in &records {
        let [snap_key, sig_key] = Repo::snapshot_keys(id);
        repo.storage.write(&snap_key, &snap.encode())?;
        if !sigs.is_empty() {
            repo.storage.write(&sig_key, &encode_signatures(sigs))?;
        }
        stats.snapshots += 1;
    }
    repo.storage.sync()?;
    guard.check_before_publish(repo)?;
    repo.set_channel_history_if(channel, &history, &expected)?;
    if let Some((_, text)) = &head {
        repo.storage
            .write_expecting(&head_key, text, &head_expected)
            .map_err(|e| match slate_repo::storage::is_conflict(&e) {
                true => slate_repo::Error::Raced(format!("the signed head of channel {channel}")),
                false => e.into(),
            })?;
        repo.storage.sync_key(&head_key)?;
    }
    cache.clear()?;
    stats.bytes = http.received.load(std::sync::atomic::Ordering::Relaxed);
    Ok(stats)
}

/// Where pull keeps its scratch files for `repo`.
pub fn work_dir(repo_root: &Path) -> PathBuf {
    repo_root.join("tmp").join("pull")
}
