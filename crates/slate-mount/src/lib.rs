//! `slate mount`: a snapshot as a read-only FUSE filesystem that fetches
//! what programs read, frame by frame, from a local repository or from
//! `slate serve`, into a bounded, verified cache that can be filled
//! completely so that the mount keeps working without a network.
//!
//! - [`tree`]: inodes, listings and attributes from the manifest;
//! - [`source`]: verified chunks from the repository, the cache or a server;
//! - [`cache`]: the cache, itself a slate repository (docs/format/cache.md);
//! - [`fs`]: the FUSE operations;
//! - [`fill`]: fetching the rest in the background;
//! - [`record`]: boot profiles, recorded and prefetched;
//! - [`status`]: the status file for people and the fleet report;
//! - [`bootfiles`]: a snapshot's kernel and initramfs, and the offline
//!   boot area of a cache partition;
//! - [`netboot`]: the root of a machine booted from the network.
//!
//! Usage and behaviour: docs/mount.md.

pub mod bootfiles;
pub mod cache;
pub mod fill;
pub mod fs;
pub mod netboot;
pub mod record;
pub mod source;
pub mod status;
pub mod tree;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slate_agent::http::Http;
use slate_agent::{Error, Result};
use slate_core::keys::PublicKey;
use slate_core::manifest::Kind;
use slate_core::snapshot::{check_threshold, decode_signatures, Snapshot};
use slate_core::{ChunkId, Id32, SnapshotId};
use slate_repo::Repo;

use crate::cache::Cache;
use crate::record::{Profile, Recorder};
use crate::source::{Chunks, Origin, RemoteRepo};
use crate::status::{LastError, Status};
use crate::tree::Tree;

/// Where the snapshot comes from.
#[derive(Debug, Clone)]
pub enum SourceSpec {
    /// A local repository directory.
    Repo(PathBuf),
    /// `slate serve` URLs (failover order).
    Servers(Vec<String>),
    /// An agent's AGENT.toml: its servers, token and trust.
    Config(PathBuf),
}

/// What to mount and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// A channel (its head) or a snapshot id.
    pub spec: String,
    /// Where the snapshot comes from.
    pub source: SourceSpec,
    /// Trusted release keys (with a repository or servers).
    pub trust: Vec<PathBuf>,
    /// Trusted fleet keys: channel heads must be signed by one.
    pub fleet_trust: Vec<PathBuf>,
    /// The cache directory.
    pub cache: Option<PathBuf>,
    /// Bound of the cache on disk, in bytes.
    pub cache_size: u64,
    /// Fill the cache with the whole snapshot in the background.
    pub fill: bool,
    /// Bandwidth cap of the fill, bytes per second.
    pub fill_rate: Option<u64>,
    /// Use only the cache; never ask a server.
    pub offline: bool,
    /// Write a boot profile here when unmounted (and every 10 s).
    pub record: Option<PathBuf>,
    /// The status file (default CACHE/mount/status.json).
    pub status: Option<PathBuf>,
    /// Per-request timeout, seconds: bounds how long a read of missing
    /// data waits for a server that does not answer.
    pub timeout_secs: u64,
    /// Threads serving the kernel.
    pub threads: usize,
    /// Prefetch the snapshot's signed profile, if the source has one.
    pub prefetch: bool,
    /// With `fill` and a channel from a server: how often to ask for a new
    /// head, seconds. A new head is filled in its turn (only its new
    /// frames are fetched) and the old snapshot's data is no longer pinned.
    pub poll_secs: u64,
    /// A cache partition's offline boot area: once the mounted snapshot is
    /// completely cached, its kernel and initramfs are written there with
    /// a GRUB menu (docs/diskless.md).
    pub offline_boot: Option<PathBuf>,
    /// The kernel command line the offline boot entry starts from (this
    /// boot's).
    pub boot_cmdline: String,
    /// The mount is the machine's root: stop signals are ignored (only
    /// the kernel ends it, at power-off).
    pub as_root: bool,
}

/// A snapshot opened for mounting: verified record, chunks, tree.
pub struct Opened {
    /// Its id.
    pub id: SnapshotId,
    /// The channel it was resolved from.
    pub channel: Option<String>,
    /// Its verified chunks.
    pub chunks: Arc<Chunks>,
    /// Its tree.
    pub tree: Arc<Tree>,
    /// Its signed profile, when the source has one.
    pub profile: Option<Profile>,
    /// Whether no server answered and the cache stood in.
    pub offline: bool,
    /// The distinct chunks of the snapshot (data, then manifest).
    pub all_chunks: Vec<(ChunkId, u32)>,
    /// The manifest's own chunks.
    pub manifest_chunks: Vec<ChunkId>,
    /// The keys it was checked with (for the snapshots that follow it).
    pub keys: Keys,
}

fn read_keys(paths: &[PathBuf]) -> Result<Vec<PublicKey>> {
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p)
                .map_err(|e| Error::Config(format!("cannot read key {}: {e}", p.display())))?;
            PublicKey::from_text(&text).map_err(|e| Error::Config(format!("{}: {e}", p.display())))
        })
        .collect()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What trust the source needs: release keys, the number that must sign,
/// fleet keys for channel heads.
#[derive(Clone)]
pub struct Keys {
    /// Keys that sign snapshots (and profiles).
    pub release: Vec<PublicKey>,
    /// How many distinct release keys must have signed a snapshot.
    pub threshold: usize,
    /// Keys that sign channel heads.
    pub fleet: Vec<PublicKey>,
}

fn is_id(spec: &str) -> Option<SnapshotId> {
    (spec.len() == 64).then(|| SnapshotId::from_hex(spec)).flatten()
}

/// Resolve a channel or id on a server: a channel's head must be signed
/// by a fleet key when any is trusted; without one the channel file names
/// it (the snapshot's own signature is checked either way).
fn resolve_remote(http: &Http, spec: &str, fleet: &[PublicKey]) -> Result<(SnapshotId, Option<String>)> {
    if let Some(id) = is_id(spec) {
        return Ok((id, None));
    }
    slate_repo::channel::check_name(spec).map_err(|e| Error::Config(format!("{spec:?}: {e}")))?;
    if !fleet.is_empty() {
        let text = http.get(&format!("/v1/heads/{spec}"))?;
        let head =
            slate_agent::trust::check_head(&text, http.server(), spec, fleet, now(), 0).map_err(|p| match p {
                slate_agent::trust::HeadProblem::Refused(m) | slate_agent::trust::HeadProblem::Stale(m) => {
                    Error::Untrusted(m)
                }
            })?;
        return Ok((head.snapshot, Some(spec.to_string())));
    }
    let text = http.get(&format!("/v1/channels/{spec}"))?;
    let history = slate_repo::channel::decode(spec, &text).map_err(|e| Error::Server(e.to_string()))?;
    let head = history
        .last()
        .copied()
        .ok_or_else(|| Error::Config(format!("channel {spec} is empty on {}", http.server())))?;
    Ok((head, Some(spec.to_string())))
}

/// A snapshot's record and signature file from a server (the second empty
/// when it has none).
fn fetch_record(http: &Http, id: &SnapshotId) -> Result<(Vec<u8>, Vec<u8>)> {
    let h = id.to_hex();
    let record = http.get(&format!("/v1/repo/snapshots/{}/{h}.snap", &h[..2]))?;
    let sigs = http
        .get_optional(&format!("/v1/repo/snapshots/{}/{h}.sig", &h[..2]))?
        .unwrap_or_default();
    Ok((record, sigs))
}

/// Decode a record, checking it against its id, and require the keys'
/// threshold of valid release signatures; `Err` holds why not.
fn check_record(id: &SnapshotId, record: &[u8], sigs: &[u8], keys: &Keys) -> std::result::Result<Snapshot, String> {
    let snap = Snapshot::decode(record, id).map_err(|e| format!("snapshot {id}: {e}"))?;
    let parsed = decode_signatures(sigs).map_err(|e| format!("signatures of snapshot {id}: {e}"))?;
    check_threshold(id, &parsed, &keys.release, keys.threshold).map_err(|e| e.to_string())?;
    Ok(snap)
}

/// Read a snapshot's manifest through `chunks`, checked against its hash.
fn read_manifest(chunks: &Chunks, snap: &Snapshot) -> Result<slate_core::manifest::Manifest> {
    let mut bytes = Vec::with_capacity(snap.manifest.size.min(64 << 20) as usize);
    for c in &snap.manifest.chunks {
        chunks.with_chunk(&c.id, |d| bytes.extend_from_slice(d))?;
    }
    if Id32::hash(&bytes) != snap.manifest.hash {
        return Err(Error::Untrusted(format!(
            "the manifest {} does not match its hash",
            snap.manifest.hash.to_hex()
        )));
    }
    slate_core::manifest::decode(&bytes).map_err(|e| Error::Untrusted(format!("manifest: {e}")))
}

fn all_chunks(tree: &Tree, snap: &Snapshot) -> Vec<(ChunkId, u32)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for e in &tree.manifest.entries {
        if let Kind::File(f) = &e.kind {
            for c in &f.chunks {
                if seen.insert(c.id) {
                    out.push((c.id, c.len));
                }
            }
        }
    }
    for c in &snap.manifest.chunks {
        if seen.insert(c.id) {
            out.push((c.id, c.len));
        }
    }
    out
}

/// The default cache of an agent configuration.
pub fn default_cache(state_dir: &Path) -> PathBuf {
    state_dir.join("mount-cache")
}

/// Open the snapshot `opts` names: resolve it, check its signatures with
/// the trusted keys, read and check its manifest.
pub fn open(opts: &Options) -> Result<Opened> {
    let mut keys = Keys {
        release: read_keys(&opts.trust)?,
        threshold: 1,
        fleet: read_keys(&opts.fleet_trust)?,
    };
    let mut http = None;
    let mut cache_dir = opts.cache.clone();
    match &opts.source {
        SourceSpec::Repo(_) => {}
        SourceSpec::Servers(urls) => {
            http = Some(Http::new(urls, opts.timeout_secs)?);
        }
        SourceSpec::Config(path) => {
            let cfg = slate_agent::config::Config::load(path)?;
            let trusted = slate_agent::trust::load(&cfg)?;
            keys.release.extend(trusted.release().iter().copied());
            keys.fleet.extend(trusted.fleet().iter().copied());
            keys.threshold = trusted.doc.snapshots.max(1) as usize;
            http = Some(cfg.http_with_timeout(opts.timeout_secs)?);
            cache_dir.get_or_insert_with(|| default_cache(&cfg.state_dir));
        }
    }
    if keys.release.is_empty() {
        return Err(Error::Config(
            "no release key is trusted: give --trust KEY.pub (a snapshot is never mounted unverified)".into(),
        ));
    }
    let cache = match &cache_dir {
        Some(d) => Some(Cache::open(d, opts.cache_size)?),
        None if http.is_some() => {
            return Err(Error::Config("a mount from a server needs --cache DIR".into()));
        }
        None => None,
    };

    // Resolve, fetch and check the record.
    let (id, channel, record, sigs, origin, offline) = match (&opts.source, http) {
        (SourceSpec::Repo(dir), _) => {
            let repo = Repo::open(dir)?;
            let id = repo.resolve(&opts.spec)?;
            let [snap_key, sig_key] = Repo::snapshot_keys(&id);
            let record = repo.storage.read(&snap_key)?;
            let sigs = repo.storage.read(&sig_key).unwrap_or_default();
            let index = repo.load_index()?;
            let channel = (is_id(&opts.spec).is_none() && !opts.spec.contains('~')).then(|| opts.spec.clone());
            (id, channel, record, sigs, Origin::Local { repo, index }, false)
        }
        (_, Some(http)) => {
            let cache = cache.as_ref().expect("a remote mount has a cache");
            let online = if opts.offline {
                None
            } else {
                // A snapshot id resolves without a server: the record's
                // fetch is then the first request that can find none.
                let asked = resolve_remote(&http, &opts.spec, &keys.fleet)
                    .and_then(|(id, channel)| Ok((id, channel, fetch_record(&http, &id)?)));
                match asked {
                    Ok(r) => Some(r),
                    Err(Error::Offline(why)) => {
                        tracing::warn!("no server answered ({why}); mounting from the cache");
                        None
                    }
                    Err(e) => return Err(e),
                }
            };
            match online {
                Some((id, channel, (record, sigs))) => {
                    let idx_dir = cache.root().join("mount/remote");
                    let remote = RemoteRepo::open(http, &idx_dir)?;
                    (id, channel, record, sigs, Origin::Remote(remote), false)
                }
                None => {
                    let id = match is_id(&opts.spec) {
                        Some(id) => id,
                        None => cache.channel_head(&opts.spec).ok_or_else(|| {
                            Error::Offline(format!(
                                "offline, and the cache {} has no snapshot of channel {}",
                                cache.root().display(),
                                opts.spec
                            ))
                        })?,
                    };
                    let (record, sigs) = cache.kept_snapshot(&id).ok_or_else(|| {
                        Error::Offline(format!(
                            "offline, and the cache {} does not hold snapshot {id}",
                            cache.root().display()
                        ))
                    })?;
                    let channel = is_id(&opts.spec).is_none().then(|| opts.spec.clone());
                    (id, channel, record, sigs, Origin::None, true)
                }
            }
        }
        (_, None) => unreachable!("servers and configs make a client"),
    };
    let snap =
        check_record(&id, &record, &sigs, &keys).map_err(|e| Error::Untrusted(format!("refusing to mount: {e}")))?;
    if let Some(c) = &cache {
        c.keep_snapshot(&id, &record, &sigs)?;
        if let Some(ch) = &channel {
            c.keep_channel_head(ch, &id)?;
        }
    }

    // A signed profile, when the source has one; a bad one is ignored
    // with a warning (it is only a hint).
    let profile = if opts.prefetch {
        fetch_profile(&origin, &id, &keys.release)
    } else {
        None
    };

    let chunks = Arc::new(Chunks::new(origin, cache));
    let manifest = read_manifest(&chunks, &snap)?;
    let tree = Arc::new(Tree::new(manifest));
    let all = all_chunks(&tree, &snap);
    Ok(Opened {
        id,
        channel,
        chunks,
        tree,
        profile,
        offline,
        all_chunks: all,
        manifest_chunks: snap.manifest.chunks.iter().map(|c| c.id).collect(),
        keys,
    })
}

fn fetch_profile(origin: &Origin, id: &SnapshotId, release: &[PublicKey]) -> Option<Profile> {
    let [pkey, skey] = record::profile_keys(id);
    let (text, sigs) = match origin {
        Origin::Local { repo, .. } => (repo.storage.read(&pkey).ok()?, repo.storage.read(&skey).ok()?),
        Origin::Remote(r) => (
            r.http.get_optional(&format!("/v1/repo/{pkey}")).ok()??,
            r.http.get_optional(&format!("/v1/repo/{skey}")).ok()??,
        ),
        Origin::None => return None,
    };
    match record::verify(&text, &sigs, id, release) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!("ignoring the profile of snapshot {id}: {e}");
            None
        }
    }
}

/// Mount an opened snapshot at `mountpoint` and serve it until it is
/// unmounted or a stop signal arrives. `ready` is called once mounted.
pub fn serve(opts: &Options, opened: Opened, mountpoint: &Path, ready: impl FnOnce()) -> Result<()> {
    let Opened {
        id,
        channel,
        chunks,
        tree,
        profile,
        offline,
        all_chunks,
        manifest_chunks,
        keys,
    } = opened;
    let status_path = opts
        .status
        .clone()
        .or_else(|| chunks.cache().map(|c| c.root().join("mount/status.json")));
    let stop = Arc::new(AtomicBool::new(false));

    // Pins: the manifest always, the whole snapshot when filling, and the
    // profile's chunks.
    let mut pins: HashSet<ChunkId> = manifest_chunks.iter().copied().collect();
    if opts.fill {
        pins.extend(all_chunks.iter().map(|c| c.0));
    }
    let profile_chunks: Vec<(ChunkId, u32)> = profile.as_ref().map(|p| p.chunks(&tree)).unwrap_or_default();
    pins.extend(profile_chunks.iter().map(|c| c.0));
    if let Some(c) = chunks.cache() {
        c.set_pins(pins);
    }

    let recorder = opts.record.as_ref().map(|_| Arc::new(Recorder::default()));
    let fs = fs::SnapshotFs::new(tree.clone(), chunks.clone(), recorder.clone());
    let mut session = fuser::Session::new(fs, mountpoint, &fs::mount_config(opts.threads))
        .map_err(|e| Error::Local(format!("cannot mount {} (FUSE): {e}", mountpoint.display())))?;
    let mut unmounter = session.unmount_callable();
    tracing::info!("mounted snapshot {id} at {}", mountpoint.display());

    let filling = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    // Profile first: a few large parallel requests before programs ask.
    if !profile_chunks.is_empty() {
        let chunks = chunks.clone();
        let ids: Vec<ChunkId> = profile_chunks.iter().map(|c| c.0).collect();
        workers.push(std::thread::spawn(move || prefetch(&chunks, &ids, 4)));
    }
    let target = Arc::new(Mutex::new((id, all_chunks.clone())));
    let follow = match (chunks.origin(), &channel) {
        (Origin::Remote(_), Some(ch)) if opts.fill && opts.poll_secs > 0 => Some(ch.clone()),
        _ => None,
    };
    if opts.fill && !offline {
        let (chunks, stop, filling, rate, target) = (
            chunks.clone(),
            stop.clone(),
            filling.clone(),
            opts.fill_rate,
            target.clone(),
        );
        let (keys, poll) = (keys.clone(), Duration::from_secs(opts.poll_secs.max(1)));
        let mounted_pins: Vec<ChunkId> = manifest_chunks.clone();
        let (offline_boot, boot_cmdline, boot_tree) =
            (opts.offline_boot.clone(), opts.boot_cmdline.clone(), tree.clone());
        let profile_ids: Vec<ChunkId> = profile_chunks.iter().map(|c| c.0).collect();
        let fill_loop = move || loop {
            let ids: Vec<ChunkId> = target.lock().unwrap().1.iter().map(|c| c.0).collect();
            filling.store(true, Ordering::SeqCst);
            if let Err(e) = fill::fill(&chunks, &ids, rate, &stop, false) {
                chunks.note_error(&format!("the fill stopped: {e}"));
            }
            filling.store(false, Ordering::SeqCst);
            if let Some(area) = &offline_boot {
                let (tid, _) = *target.lock().unwrap();
                if tid == id && !stop.load(Ordering::Relaxed) && chunks.plan(&ids, fill::FILL_RANGE).is_empty() {
                    match bootfiles::write_offline_boot(&boot_tree, &chunks, &id, area, &boot_cmdline) {
                        Ok(dir) => tracing::info!("the cache is complete; offline boot files in {}", dir.display()),
                        Err(e) => chunks.note_error(&format!("cannot write the offline boot files: {e}")),
                    }
                }
            }
            let Some(ch) = &follow else { break };
            // Wait for a new head of the channel.
            let next = loop {
                fill::sleep_unless(&stop, poll);
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let held = target.lock().unwrap().0;
                match next_snapshot(&chunks, ch, &held, &keys) {
                    Ok(Some(n)) => break n,
                    Ok(None) => {}
                    Err(e) => chunks.note_error(&format!("following channel {ch}: {e}")),
                }
            };
            tracing::info!("channel {ch} moved to {}; filling it", next.0);
            if let Some(c) = chunks.cache() {
                // The mounted snapshot keeps only its manifest pinned: the
                // new one's data takes the old one's place.
                let mut pins: HashSet<ChunkId> = mounted_pins.iter().copied().collect();
                pins.extend(profile_ids.iter().copied());
                pins.extend(next.1.iter().map(|c| c.0));
                c.set_pins(pins);
            }
            *target.lock().unwrap() = next;
        };
        workers.push(std::thread::spawn(move || {
            // The fill is background work: below programs for the CPU
            // (decompressing and checking frames), on top of yielding to
            // their reads. Linux sets the nice value per thread.
            let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 10);
            fill_loop()
        }));
    }
    let base = Status {
        pid: std::process::id(),
        mountpoint: std::path::absolute(mountpoint)
            .unwrap_or_else(|_| mountpoint.to_path_buf())
            .display()
            .to_string(),
        snapshot: id.to_hex(),
        channel: channel.clone(),
        fill_target: id.to_hex(),
        ..Status::default()
    };
    let shared_status = Arc::new(Mutex::new(base));
    let status_worker = {
        let (chunks, stop, filling, status_path, shared) = (
            chunks.clone(),
            stop.clone(),
            filling.clone(),
            status_path.clone(),
            shared_status.clone(),
        );
        let target = target.clone();
        let rec = recorder.clone().zip(opts.record.clone());
        let tree = tree.clone();
        std::thread::spawn(move || {
            let mut last = Status::default();
            let mut ticks = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (tid, all) = target.lock().unwrap().clone();
                let mut base = shared.lock().unwrap().clone();
                base.fill_target = tid.to_hex();
                let s = snapshot_status(&base, &chunks, &all, filling.load(Ordering::SeqCst), "mounted");
                let mut cmp = s.clone();
                cmp.updated_at = last.updated_at;
                if cmp != last {
                    if let Some(p) = &status_path {
                        let _ = s.save(p);
                    }
                    last = s;
                }
                ticks += 1;
                if ticks.is_multiple_of(10) {
                    if let Some(c) = chunks.cache() {
                        c.save_access();
                    }
                    if let Some((r, path)) = &rec {
                        let _ = r.profile(&id, &tree).save(path);
                    }
                }
                fill::sleep_unless(&stop, Duration::from_secs(1));
            }
        })
    };

    // SIGTERM/SIGINT/SIGHUP unmount; the session then ends like after umount.
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| Error::Local(format!("cannot handle signals: {e}")))?;
    let signal_handle = signals.handle();
    let as_root = opts.as_root;
    let signal_worker = std::thread::spawn(move || {
        let mut signals = signals;
        if as_root {
            // The machine's root: unmounting it would take the system
            // down with it. The signals are received and dropped.
            for sig in signals.forever() {
                tracing::warn!("signal {sig} ignored: this mount is the machine's root");
            }
            return;
        }
        if signals.forever().next().is_some() {
            if let Err(e) = unmounter.unmount() {
                tracing::warn!("cannot unmount: {e}");
            }
        }
    });

    // The status names this mount before anyone is told it is there.
    if let Some(p) = &status_path {
        let s = snapshot_status(
            &shared_status.lock().unwrap(),
            &chunks,
            &all_chunks,
            opts.fill,
            "mounted",
        );
        let _ = s.save(p);
    }
    ready();
    let result = session.run();
    signal_handle.close();
    let _ = signal_worker.join();
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        let _ = w.join();
    }
    let _ = status_worker.join();
    if let Some(c) = chunks.cache() {
        c.save_access();
    }
    if let (Some(r), Some(path)) = (&recorder, &opts.record) {
        r.profile(&id, &tree).save(path)?;
    }
    if let Some(p) = &status_path {
        let (tid, all) = target.lock().unwrap().clone();
        let mut base = shared_status.lock().unwrap().clone();
        base.fill_target = tid.to_hex();
        let s = snapshot_status(&base, &chunks, &all, false, "unmounted");
        let _ = s.save(p);
    }
    result.map_err(|e| Error::Local(format!("the FUSE session of {} ended: {e}", mountpoint.display())))
}

fn snapshot_status(base: &Status, chunks: &Chunks, all: &[(ChunkId, u32)], filling: bool, state: &str) -> Status {
    let total: u64 = all.iter().map(|c| c.1 as u64).sum();
    let (cached, cache_bytes, limit, over) = match chunks.cache() {
        Some(c) => (
            c.held_bytes(all.iter().map(|(i, l)| (i, *l))),
            c.disk_bytes(),
            c.limit(),
            c.pinned_over_limit(),
        ),
        None => (total, 0, 0, false),
    };
    let offline = chunks.stats.offline.load(Ordering::Relaxed) || matches!(chunks.origin(), Origin::None);
    Status {
        state: if state == "mounted" && offline {
            "offline".into()
        } else {
            state.into()
        },
        filling,
        cached_bytes: cached,
        total_bytes: total,
        complete: cached == total,
        fetched_bytes: chunks.stats.fetched_bytes.load(Ordering::Relaxed),
        requests: chunks.stats.requests.load(Ordering::Relaxed),
        cache_bytes,
        cache_limit: limit,
        pinned_over_limit: over,
        last_error: chunks
            .stats
            .last_error
            .lock()
            .unwrap()
            .as_ref()
            .map(|(at, m)| LastError {
                at: *at,
                message: m.clone(),
            }),
        updated_at: now(),
        ..base.clone()
    }
}

/// A snapshot to fill and its distinct chunks with their lengths.
type FillTarget = (SnapshotId, Vec<(ChunkId, u32)>);

/// A newer head of `channel` than `held`, checked like the first one,
/// kept in the cache, with its chunks: `None` while the head is `held`.
fn next_snapshot(chunks: &Chunks, channel: &str, held: &SnapshotId, keys: &Keys) -> Result<Option<FillTarget>> {
    let Origin::Remote(remote) = chunks.origin() else {
        return Ok(None);
    };
    let (id, _) = resolve_remote(&remote.http, channel, &keys.fleet)?;
    if id == *held {
        return Ok(None);
    }
    let (record, sigs) = fetch_record(&remote.http, &id)?;
    let snap = check_record(&id, &record, &sigs, keys)
        .map_err(|e| Error::Untrusted(format!("refusing the new head of {channel}: {e}")))?;
    remote.refresh()?;
    let tree = Tree::new(read_manifest(chunks, &snap)?);
    if let Some(c) = chunks.cache() {
        c.keep_snapshot(&id, &record, &sigs)?;
        c.keep_channel_head(channel, &id)?;
    }
    Ok(Some((id, all_chunks(&tree, &snap))))
}

/// Fetch `ids` the cache lacks in large ranges over `connections`
/// parallel requests. Failures are only noted: programs fetch what they
/// need themselves.
pub fn prefetch(chunks: &Chunks, ids: &[ChunkId], connections: usize) {
    let Origin::Remote(remote) = chunks.origin() else {
        return;
    };
    let spans = chunks.plan(ids, fill::FILL_RANGE);
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..connections.max(1) {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(span) = spans.get(k) else { break };
                if let Err(e) = chunks.fetch_span(remote, span) {
                    chunks.note_error(&format!("profile prefetch: {e}"));
                    break;
                }
            });
        }
    });
}
