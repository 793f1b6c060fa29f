//! Where chunks come from: a local repository, or a server through the
//! cache. Every chunk is checked against its id before it is used; frames
//! stay decompressed in a small in-memory cache, since neighbouring files
//! share frames and the kernel asks for a file in many small pieces.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use slate_agent::http::Http;
use slate_agent::remote::Remote;
use slate_agent::{Error, Result};
use slate_core::pack::{chunk_from_frame, decompress_frame, IndexEntry};
use slate_core::{ChunkId, PackId};
use slate_repo::index::{pack_key, ChunkIndex};
use slate_repo::Repo;

use crate::cache::Cache;

/// Decompressed frames kept in memory (about 1 MiB each): bounds the
/// daemon's memory whatever the cache's size.
const MEMORY_FRAMES: usize = 24;

/// After a server failed to answer, reads that need it fail at once for
/// this long instead of each waiting for the timeout again.
const OFFLINE_HOLD: Duration = Duration::from_secs(3);

/// Largest request of a read-ahead.
const READ_AHEAD_RANGE: u64 = 4 << 20;

/// Frames closer than this are fetched in one request.
const COALESCE_GAP: u64 = 16 << 10;

/// A decompressed, verified frame.
pub type Frame = Arc<Vec<u8>>;

/// Which frame: in the cache or the local repository, or remote.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum FrameKey {
    Pack(PackId, u64),
}

/// Counters and the last error, for the status file.
#[derive(Default)]
pub struct Stats {
    /// Response bytes received from servers.
    pub fetched_bytes: AtomicU64,
    /// Range requests made.
    pub requests: AtomicU64,
    /// The last connection or verification error, with its time.
    pub last_error: Mutex<Option<(u64, String)>>,
    /// Whether the last attempt to reach a server failed.
    pub offline: AtomicBool,
}

/// What the server holds: every chunk, and the chunks of each frame (to
/// verify a frame completely).
pub struct RemoteIndex {
    /// Every chunk the server has.
    pub index: ChunkIndex,
    frames: HashMap<(PackId, u64), Vec<IndexEntry>>,
}

/// The remote side: a server's packs.
pub struct RemoteRepo {
    /// Its HTTP client (servers in failover order).
    pub http: Http,
    idx_dir: std::path::PathBuf,
    current: RwLock<Arc<RemoteIndex>>,
}

impl RemoteRepo {
    /// The server behind `http`, its pack indexes kept in `idx_dir`.
    pub fn open(http: Http, idx_dir: &std::path::Path) -> Result<RemoteRepo> {
        let current = RwLock::new(Arc::new(Self::load(&http, idx_dir)?));
        Ok(RemoteRepo {
            http,
            idx_dir: idx_dir.to_path_buf(),
            current,
        })
    }

    fn load(http: &Http, idx_dir: &std::path::Path) -> Result<RemoteIndex> {
        let index = Remote::new(http, idx_dir).index()?;
        let mut frames: HashMap<(PackId, u64), Vec<IndexEntry>> = HashMap::new();
        for loc in index.locations() {
            frames
                .entry((index.packs[loc.pack as usize], loc.entry.frame_offset))
                .or_default()
                .push(loc.entry);
        }
        Ok(RemoteIndex { index, frames })
    }

    /// The index as last loaded.
    pub fn index(&self) -> Arc<RemoteIndex> {
        self.current.read().unwrap().clone()
    }

    /// Load the indexes of packs the server gained (after a commit), so
    /// that a newer snapshot's chunks can be found.
    pub fn refresh(&self) -> Result<()> {
        let fresh = Self::load(&self.http, &self.idx_dir)?;
        *self.current.write().unwrap() = Arc::new(fresh);
        Ok(())
    }
}

/// Where frames that are not cached come from.
pub enum Origin {
    /// A local repository, read in place.
    Local {
        /// The repository.
        repo: Repo,
        /// Its chunks.
        index: ChunkIndex,
    },
    /// A server, through the cache.
    Remote(RemoteRepo),
    /// Nothing: only what the cache holds (offline).
    None,
}

/// One remote range to fetch: whole frames of one pack.
#[derive(Debug, Clone)]
pub struct Span {
    pack: PackId,
    start: u64,
    end: u64,
    frames: Vec<(u64, u32, u32)>,
}

impl Span {
    /// Compressed bytes it fetches.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    /// Whether it is empty (never, as built).
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

struct InFlight {
    done: Mutex<Option<std::result::Result<(), String>>>,
    cv: Condvar,
}

/// Verified chunks for the filesystem.
pub struct Chunks {
    origin: Origin,
    cache: Option<Cache>,
    memory: Mutex<VecDeque<(FrameKey, Frame)>>,
    inflight: Mutex<HashMap<(PackId, u64), Arc<InFlight>>>,
    offline_until: Mutex<Option<Instant>>,
    /// Whether on-demand reads are waiting for the network (a fill yields).
    pub demand: AtomicU64,
    /// Counters for the status.
    pub stats: Stats,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Chunks {
    /// Chunks from `origin`, kept in `cache` when there is one.
    pub fn new(origin: Origin, cache: Option<Cache>) -> Chunks {
        Chunks {
            origin,
            cache,
            memory: Mutex::new(VecDeque::with_capacity(MEMORY_FRAMES)),
            inflight: Mutex::new(HashMap::new()),
            offline_until: Mutex::new(None),
            demand: AtomicU64::new(0),
            stats: Stats::default(),
        }
    }

    /// Whether it reads from a server.
    pub fn is_remote(&self) -> bool {
        matches!(self.origin, Origin::Remote(_))
    }

    /// The cache, if any.
    pub fn cache(&self) -> Option<&Cache> {
        self.cache.as_ref()
    }

    /// The origin.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    fn remember(&self, key: FrameKey, frame: Frame) {
        let mut m = self.memory.lock().unwrap();
        if m.len() >= MEMORY_FRAMES {
            m.pop_front();
        }
        m.push_back((key, frame));
    }

    fn recall(&self, key: FrameKey) -> Option<Frame> {
        let m = self.memory.lock().unwrap();
        m.iter().rev().find(|(k, _)| *k == key).map(|(_, f)| f.clone())
    }

    /// Call `f` with the verified bytes of chunk `id`.
    pub fn with_chunk<T>(&self, id: &ChunkId, f: impl FnOnce(&[u8]) -> T) -> Result<T> {
        // A remote frame is fetched into the cache, then read from there;
        // a cached pack that fails its check is deleted and fetched again:
        // at most three rounds.
        for _ in 0..3 {
            if let Some(cache) = &self.cache {
                if let Some((pack, e)) = cache.locate(id) {
                    if let Some(frame) = self.recall(FrameKey::Pack(pack, e.frame_offset)) {
                        if let Ok(d) = chunk_from_frame(&frame, &e) {
                            return Ok(f(d));
                        }
                    }
                    if let Some(cf) = cache.frame(id)? {
                        let frame = Arc::new(cf.raw);
                        self.remember(FrameKey::Pack(cf.key.0, cf.key.1), frame.clone());
                        let d = chunk_from_frame(&frame, &e)
                            .map_err(|e| Error::Untrusted(format!("cached chunk {id}: {e}")))?;
                        return Ok(f(d));
                    }
                }
            }
            match &self.origin {
                Origin::Local { repo, index } => {
                    let loc = *index
                        .get(id)
                        .ok_or_else(|| Error::Local(format!("the repository lacks chunk {id}")))?;
                    let pack = index.packs[loc.pack as usize];
                    let key = FrameKey::Pack(pack, loc.entry.frame_offset);
                    let frame = match self.recall(key) {
                        Some(fr) => fr,
                        None => {
                            let mut buf = vec![0u8; loc.entry.frame_len as usize];
                            repo.storage
                                .read_at(&pack_key(&pack), loc.entry.frame_offset, &mut buf)?;
                            let raw = decompress_frame(&buf, loc.entry.frame_raw_len, &pack, loc.entry.frame_offset)
                                .map_err(|e| Error::Untrusted(format!("pack {pack}: {e}")))?;
                            let fr = Arc::new(raw);
                            self.remember(key, fr.clone());
                            fr
                        }
                    };
                    let d = chunk_from_frame(&frame, &loc.entry)
                        .map_err(|e| Error::Untrusted(format!("pack {pack}: {e}")))?;
                    return Ok(f(d));
                }
                Origin::Remote(remote) => {
                    let current = remote.index();
                    let loc = *current
                        .index
                        .get(id)
                        .ok_or_else(|| Error::Server(format!("the server's repository lacks chunk {id}")))?;
                    let pack = current.index.packs[loc.pack as usize];
                    self.demand.fetch_add(1, Ordering::SeqCst);
                    let r = self.fetch_frame(remote, pack, loc.entry.frame_offset);
                    self.demand.fetch_sub(1, Ordering::SeqCst);
                    r?;
                    if self.cache.is_none() {
                        return Err(Error::Local("a remote mount needs a cache".into()));
                    }
                    // Stored now: the next round reads it from the cache.
                }
                Origin::None => {
                    return Err(Error::Offline(format!(
                        "chunk {id} is not in the cache and the mount is offline"
                    )))
                }
            }
        }
        Err(Error::Untrusted(format!(
            "chunk {id} failed its check twice, from the cache and from the server"
        )))
    }

    /// Fetch the remote frame at `offset` of pack number `pack` into the
    /// cache, once even when several readers want it at the same time.
    fn fetch_frame(&self, remote: &RemoteRepo, pack: PackId, offset: u64) -> Result<()> {
        let e = remote
            .index()
            .frames
            .get(&(pack, offset))
            .and_then(|v| v.first())
            .copied()
            .ok_or_else(|| Error::Server("a chunk's frame is not in the server's index".into()))?;
        self.fetch_shared(
            remote,
            &Span {
                pack,
                start: offset,
                end: offset + e.frame_len as u64,
                frames: vec![(offset, e.frame_len, e.frame_raw_len)],
            },
        )
    }

    /// Fetch `span`'s frames into the cache, each once even when several
    /// readers want it at the same time: frames another reader is fetching
    /// are waited for, not fetched again.
    fn fetch_shared(&self, remote: &RemoteRepo, span: &Span) -> Result<()> {
        let flight = Arc::new(InFlight {
            done: Mutex::new(None),
            cv: Condvar::new(),
        });
        let mut mine = Vec::new();
        let mut theirs = Vec::new();
        {
            let mut m = self.inflight.lock().unwrap();
            for f in &span.frames {
                match m.get(&(span.pack, f.0)) {
                    Some(other) => theirs.push(other.clone()),
                    None => {
                        m.insert((span.pack, f.0), flight.clone());
                        mine.push(*f);
                    }
                }
            }
        }
        let result = match (mine.first(), mine.last()) {
            (Some(first), Some(last)) => {
                let sub = Span {
                    pack: span.pack,
                    start: first.0,
                    end: last.0 + last.1 as u64,
                    frames: mine.clone(),
                };
                self.fetch_span(remote, &sub).map_err(|e| e.to_string())
            }
            _ => Ok(()),
        };
        *flight.done.lock().unwrap() = Some(result.clone());
        flight.cv.notify_all();
        {
            let mut m = self.inflight.lock().unwrap();
            for f in &mine {
                m.remove(&(span.pack, f.0));
            }
        }
        for other in theirs {
            let mut done = other.done.lock().unwrap();
            while done.is_none() {
                done = other.cv.wait(done).unwrap();
            }
        }
        result.map_err(Error::Server)
    }

    /// Bring the chunks of `ids` the cache lacks in as few requests as
    /// their places allow (for a file read sequentially: what comes next).
    /// Errors are left to the reads that need the data.
    pub fn read_ahead(&self, ids: &[ChunkId]) {
        let Origin::Remote(remote) = &self.origin else {
            return;
        };
        self.demand.fetch_add(1, Ordering::SeqCst);
        for span in self.plan(ids, READ_AHEAD_RANGE) {
            if self.fetch_shared(remote, &span).is_err() {
                break;
            }
        }
        self.demand.fetch_sub(1, Ordering::SeqCst);
    }

    /// Fetch one span, verify every chunk of every frame in it, and store
    /// the frames in the cache.
    pub fn fetch_span(&self, remote: &RemoteRepo, span: &Span) -> Result<()> {
        let cache = self
            .cache
            .as_ref()
            .ok_or_else(|| Error::Local("a remote mount needs a cache".into()))?;
        if let Some(until) = *self.offline_until.lock().unwrap() {
            if Instant::now() < until {
                return Err(Error::Offline(format!(
                    "{} did not answer a moment ago",
                    remote.http.server()
                )));
            }
        }
        let pack_id = span.pack;
        let current = remote.index();
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let got = remote
            .http
            .get_range(&format!("/v1/repo/{}", pack_key(&pack_id)), span.start, span.end);
        let data = match got {
            Ok(d) => {
                self.stats.fetched_bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
                self.stats.offline.store(false, Ordering::Relaxed);
                d
            }
            Err(e) => {
                if matches!(e, Error::Offline(_)) {
                    *self.offline_until.lock().unwrap() = Some(Instant::now() + OFFLINE_HOLD);
                    self.stats.offline.store(true, Ordering::Relaxed);
                }
                self.note_error(&e.to_string());
                return Err(e);
            }
        };
        let mut frames: Vec<(&[u8], Vec<IndexEntry>)> = Vec::new();
        let mut raws = Vec::with_capacity(span.frames.len());
        for &(off, len, raw_len) in &span.frames {
            let body = &data[(off - span.start) as usize..(off - span.start) as usize + len as usize];
            let raw = decompress_frame(body, raw_len, &pack_id, off).map_err(|e| {
                let msg = format!("refusing pack {pack_id} from {}: {e}", remote.http.server());
                self.note_error(&msg);
                Error::Untrusted(msg)
            })?;
            let entries = current.frames.get(&(span.pack, off)).cloned().unwrap_or_default();
            let mut rel = Vec::with_capacity(entries.len());
            for e in &entries {
                chunk_from_frame(&raw, e).map_err(|err| {
                    let msg = format!("refusing pack {pack_id} from {}: {err}", remote.http.server());
                    self.note_error(&msg);
                    Error::Untrusted(msg)
                })?;
                rel.push(*e);
            }
            raws.push(raw);
            frames.push((body, rel));
        }
        // Kept in memory under their place in the cache, where the read
        // that wanted them looks next (no second decompression).
        if let Some((local, offsets)) = cache.store(&frames)? {
            for (raw, at) in raws.into_iter().zip(offsets) {
                self.remember(FrameKey::Pack(local, at), Arc::new(raw));
            }
        }
        Ok(())
    }

    /// Record a failure for the status.
    pub fn note_error(&self, msg: &str) {
        tracing::warn!("{msg}");
        *self.stats.last_error.lock().unwrap() = Some((now_secs(), msg.to_string()));
    }

    /// The remote spans that bring every chunk of `want` the cache lacks,
    /// coalesced into requests of at most `max_range` bytes, in `want`'s
    /// pack order.
    pub fn plan(&self, want: &[ChunkId], max_range: u64) -> Vec<Span> {
        let Origin::Remote(remote) = &self.origin else {
            return Vec::new();
        };
        let current = remote.index();
        let mut frames: std::collections::BTreeMap<(u32, u64), (u32, u32)> = std::collections::BTreeMap::new();
        for id in want {
            if self.cache.as_ref().is_some_and(|c| c.has(id)) {
                continue;
            }
            if let Some(loc) = current.index.get(id) {
                frames.insert(
                    (loc.pack, loc.entry.frame_offset),
                    (loc.entry.frame_len, loc.entry.frame_raw_len),
                );
            }
        }
        let mut out: Vec<Span> = Vec::new();
        for ((p, off), (len, raw)) in frames {
            let p = current.index.packs[p as usize];
            let end = off + len as u64;
            match out.last_mut() {
                Some(s) if s.pack == p && off >= s.end && off - s.end <= COALESCE_GAP && end - s.start <= max_range => {
                    s.end = end;
                    s.frames.push((off, len, raw));
                }
                _ => out.push(Span {
                    pack: p,
                    start: off,
                    end,
                    frames: vec![(off, len, raw)],
                }),
            }
        }
        out
    }
}
