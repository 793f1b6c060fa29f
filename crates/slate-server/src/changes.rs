//! Telling machines at once that their assignment changed (issue 12):
//! what `POST /v1/fleet/assignment?wait=SECS&known=ID` waits on.
//!
//! Channels are moved by other processes (`slate commit`, `slate pull`,
//! `slate channel` write `REPO/channels/...`), and the fleet file is edited
//! by hand, so the server cannot be told of a change: one watcher task
//! looks every [`POLL_INTERVAL`] at the channel files (size, mtime and
//! inode; channel writes replace the file, so every write is seen) and at
//! the fleet file and the state policies it names. When anything differs
//! it reloads the fleet file if that changed (a file that no longer checks
//! is logged and the rules in use are kept, so a typo stays harmless) and
//! bumps a generation on a `tokio::sync::watch` channel. Waiting handlers
//! sleep on that channel, holding neither a database connection nor a
//! blocking thread, and recompute their machine's assignment on each bump.
//!
//! Polling rather than inotify: it sees writes through any path (bind
//! mounts, NFS, a repository replaced by rename), needs no watch per
//! directory of a deep channel tree, and costs a few `stat` calls a second.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use slate_repo::Repo;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::fleet::FleetConfig;

/// The longest a request may wait for a change: under the 30 s a handler
/// has ([`crate::REQUEST_TIMEOUT`]), with room to recompute and sign.
pub const MAX_WAIT: Duration = Duration::from_secs(25);

/// How often the watcher looks at the files. A machine hears of a change
/// within about this long.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Default of how many requests may wait at once: half the default
/// `--max-connections`, so that waiting machines never take all the
/// connections that downloads need.
pub const DEFAULT_MAX_WAITERS: usize = crate::server::DEFAULT_MAX_CONNECTIONS / 2;

/// The fleet rules in use and the news of changes, shared by the handlers
/// and the watcher.
pub struct Changes {
    fleet: RwLock<Arc<FleetConfig>>,
    generation: watch::Sender<u64>,
    closing: AtomicBool,
    waiters: Arc<Semaphore>,
    watching: AtomicBool,
}

impl Changes {
    /// News of changes to `fleet` and the repository; at most
    /// `max_waiters` requests wait at once (the others answer at once).
    pub fn new(fleet: FleetConfig, max_waiters: usize) -> Self {
        Changes {
            fleet: RwLock::new(Arc::new(fleet)),
            generation: watch::Sender::new(0),
            closing: AtomicBool::new(false),
            waiters: Arc::new(Semaphore::new(max_waiters)),
            watching: AtomicBool::new(false),
        }
    }

    /// The fleet rules in use (the latest fleet file that checked).
    pub fn fleet(&self) -> Arc<FleetConfig> {
        // A poisoned lock still holds a whole Arc: a writer only swaps it.
        self.fleet.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Use `fleet` from now on and wake the waiters.
    pub fn set_fleet(&self, fleet: FleetConfig) {
        *self.fleet.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fleet);
        self.bump();
    }

    /// Replace the rules in use by `f` of them, under the lock, and wake
    /// the waiters: the fleet file's reload and the directory's refresh
    /// (`crate::fleet::ldap`) each change their part without losing the
    /// other's.
    pub fn update_fleet(&self, f: impl FnOnce(&FleetConfig) -> FleetConfig) {
        {
            let mut cur = self.fleet.write().unwrap_or_else(|p| p.into_inner());
            let new = f(&cur);
            *cur = Arc::new(new);
        }
        self.bump();
    }

    /// A receiver that sees every bump from now on.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Wake every waiter: something they depend on may have changed.
    pub fn bump(&self) {
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// The server is shutting down: waiters answer now, so that a restart
    /// is not held up for their whole wait, and the watcher stops.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.bump();
    }

    /// Whether [`Changes::close`] was called.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// A place among the waiting requests, or `None` when all are taken.
    pub fn try_wait_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.waiters.clone().try_acquire_owned().ok()
    }

    /// Start the watcher over `repo` and the fleet file, once; later calls
    /// do nothing. Must be called within a tokio runtime. The watcher ends
    /// when `self` is dropped or closed.
    pub fn watch(self: &Arc<Self>, repo: Arc<Repo>) {
        if self.watching.swap(true, Ordering::SeqCst) {
            return;
        }
        tokio::spawn(watcher(Arc::downgrade(self), repo));
    }
}

/// What a file looked like: size, modification time, inode; `None` when
/// absent or unreadable.
type Stamp = Option<(u64, i64, i64, u64)>;

fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.len(), m.mtime(), m.mtime_nsec(), m.ino()))
}

/// Everything the watcher compares between two looks.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    /// Each channel's stamp (or, for a repository not on a local disk, its
    /// content hash); an error listing them, as text.
    channels: Result<BTreeMap<String, ChannelStamp>, String>,
    /// The fleet file and the state policies (and `.sig` files) it names.
    fleet: BTreeMap<PathBuf, Stamp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ChannelStamp {
    File(Stamp),
    Content(Option<[u8; 32]>),
}

fn channel_stamps(repo: &Repo) -> Result<BTreeMap<String, ChannelStamp>, String> {
    let keys = repo.storage.list("channels").map_err(|e| e.to_string())?;
    Ok(keys
        .into_iter()
        .map(|k| {
            let s = match repo.storage.local_path(&k) {
                Some(p) => ChannelStamp::File(stamp(&p)),
                None => ChannelStamp::Content(repo.storage.read(&k).ok().map(|b| *blake3::hash(&b).as_bytes())),
            };
            (k, s)
        })
        .collect())
}

/// The files a fleet configuration was read from.
fn fleet_files(fleet: &FleetConfig) -> BTreeMap<PathBuf, Stamp> {
    let mut out = BTreeMap::new();
    let Some(path) = &fleet.path else { return out };
    out.insert(path.clone(), stamp(path));
    let dir = path.parent().unwrap_or(Path::new("."));
    let targets = fleet.default.iter().chain(fleet.rules.iter().map(|r| &r.target));
    for sp in targets.filter_map(|t| t.state_policy.as_ref()) {
        for f in [dir.join(&sp.file), dir.join(format!("{}.sig", sp.file))] {
            let s = stamp(&f);
            out.insert(f, s);
        }
    }
    out
}

/// One look, and the fleet file reloaded when its files differ from
/// `previous`: `(fingerprint, Some(new rules or the reason they failed))`.
fn look(
    repo: &Repo,
    fleet: &FleetConfig,
    previous: Option<&Fingerprint>,
) -> (Fingerprint, Option<Result<FleetConfig, String>>) {
    let channels = channel_stamps(repo);
    let mut files = fleet_files(fleet);
    let mut reloaded = None;
    if let (Some(prev), Some(path)) = (previous, &fleet.path) {
        if prev.fleet != files {
            let r = FleetConfig::load(path).map_err(|e| e.to_string());
            if let Ok(new) = &r {
                // The new rules may name other policy files: watch those.
                files = fleet_files(new);
            }
            reloaded = Some(r);
        }
    }
    (Fingerprint { channels, fleet: files }, reloaded)
}

async fn watcher(changes: Weak<Changes>, repo: Arc<Repo>) {
    let mut ticks = tokio::time::interval(POLL_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<Fingerprint> = None;
    loop {
        ticks.tick().await;
        let Some(ch) = changes.upgrade() else { return };
        if ch.is_closing() {
            return;
        }
        let (fleet, r, prev) = (ch.fleet(), repo.clone(), last.clone());
        // stat() and reading the fleet file block.
        let Ok((fp, reloaded)) = tokio::task::spawn_blocking(move || look(&r, &fleet, prev.as_ref())).await else {
            continue;
        };
        match reloaded {
            Some(Ok(new)) => {
                tracing::warn!(
                    "fleet file {} changed: using its new rules",
                    new.path.as_deref().unwrap_or(Path::new("?")).display()
                );
                for w in new.warnings(&repo) {
                    tracing::warn!("{w}");
                }
                // The directory's rules stay until its reader, which sees
                // the new [ldap] settings within a second, reads it again.
                ch.update_fleet(|old| {
                    let mut new = new;
                    new.directory = if new.ldap.is_some() {
                        old.directory.clone()
                    } else {
                        None
                    };
                    new
                });
            }
            Some(Err(e)) => {
                tracing::error!("the fleet file changed but does not check, keeping the rules in use: {e}");
            }
            None => {}
        }
        if last.as_ref().is_some_and(|l| *l != fp) {
            ch.bump();
        }
        last = Some(fp);
    }
}
