//! The server's repository as the agent sees it: snapshot records and
//! signatures, the pack indexes (cached forever: they are immutable), and
//! frames fetched by coalesced Range requests into an on-disk cache, so a
//! pass that is killed redoes no finished download.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rayon::prelude::*;
use slate_core::pack::{chunk_from_frame, decompress_frame, PackIndex};
use slate_core::snapshot::{decode_signatures, Snapshot, SnapshotSignature};
use slate_core::{ChunkId, PackId, SnapshotId};
use slate_repo::index::{index_key, pack_key, ChunkIndex};
use slate_repo::storage::{ObjectWriter, Storage};

use crate::error::{Error, Result};
use crate::http::Http;

/// Frames closer than this are fetched in one request (the gap's bytes
/// cost less than another round trip).
const COALESCE_GAP: u64 = 16 << 10;
/// Largest single range request: the unit a killed pass may redo.
const MAX_RANGE: u64 = 8 << 20;

/// The repository key of a snapshot's record (`snap`) or signatures (`sig`).
fn snap_key(id: &SnapshotId, ext: &str) -> String {
    let h = id.to_hex();
    format!("snapshots/{}/{h}.{ext}", &h[..2])
}

/// The remote repository.
pub struct Remote<'a> {
    /// The HTTP client.
    pub http: &'a Http,
    cache: PathBuf,
}

/// Fetched byte ranges of remote packs, kept as files
/// `CACHE/ranges/<pack>/<start>-<end>`; serves them through the
/// [`Storage`] trait so the repository's chunk reader works unchanged.
///
/// A range is served only once verified in this process: ranges stored by
/// [`RangeCache::put`] were checked on arrival, ranges found on disk (left
/// by an earlier, killed pass) are checked again by [`RangeCache::verify`]
/// against the pack index before they count, and dropped if anything in
/// them fails, so a damaged or tampered file is fetched again, never used.
pub struct RangeCache {
    dir: PathBuf,
    ranges: Mutex<HashMap<String, BTreeMap<u64, u64>>>,
    /// Ranges on disk not yet checked in this process, by pack.
    unchecked: Mutex<HashMap<String, BTreeMap<u64, u64>>>,
}

fn unsupported() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "the download cache only serves cached pack ranges",
    )
}

impl RangeCache {
    /// Open (creating) the cache in `dir`, indexing what it holds.
    pub fn open(dir: &Path) -> Result<RangeCache> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Local(format!("cannot create {}: {e}", dir.display())))?;
        let mut ranges: HashMap<String, BTreeMap<u64, u64>> = HashMap::new();
        for pack in std::fs::read_dir(dir)
            .map_err(|e| Error::Local(format!("{}: {e}", dir.display())))?
            .flatten()
        {
            let pname = pack.file_name().to_string_lossy().into_owned();
            let Ok(rd) = std::fs::read_dir(pack.path()) else {
                continue;
            };
            for f in rd.flatten() {
                let n = f.file_name().to_string_lossy().into_owned();
                if let Some((a, b)) = n.split_once('-') {
                    if let (Ok(a), Ok(b)) = (a.parse::<u64>(), b.parse::<u64>()) {
                        ranges.entry(pname.clone()).or_default().insert(a, b);
                    }
                }
            }
        }
        Ok(RangeCache {
            dir: dir.to_path_buf(),
            ranges: Mutex::new(HashMap::new()),
            unchecked: Mutex::new(ranges),
        })
    }

    /// Check every range found on disk whose pack `index` knows: each frame
    /// it holds must decompress and every chunk in it match its id. Good
    /// ranges are served from now on; bad ones (and ranges of packs the
    /// index does not know, which nothing can check) are deleted. Returns
    /// how many were dropped.
    pub fn verify(&self, index: &ChunkIndex) -> usize {
        let pending = std::mem::take(&mut *self.unchecked.lock().unwrap());
        if pending.is_empty() {
            return 0;
        }
        let packs: HashMap<String, u32> = index
            .packs
            .iter()
            .enumerate()
            .map(|(i, p)| (p.to_hex(), i as u32))
            .collect();
        // Frames of the packs with cached ranges: offset -> entries.
        let mut frames: HashMap<u32, BTreeMap<u64, Vec<slate_core::pack::IndexEntry>>> = HashMap::new();
        for loc in index.locations() {
            if pending.contains_key(&index.packs[loc.pack as usize].to_hex()) {
                frames
                    .entry(loc.pack)
                    .or_default()
                    .entry(loc.entry.frame_offset)
                    .or_default()
                    .push(loc.entry);
            }
        }
        let mut dropped = 0;
        for (pack, ranges) in pending {
            for (a, b) in ranges {
                let file = self.dir.join(&pack).join(format!("{a}-{b}"));
                let ok = packs
                    .get(&pack)
                    .is_some_and(|p| Self::range_is_sound(&file, a, b, &index.packs[*p as usize], frames.get(p)));
                if ok {
                    self.ranges
                        .lock()
                        .unwrap()
                        .entry(pack.clone())
                        .or_default()
                        .insert(a, b);
                } else {
                    tracing::warn!("discarding cached range {}: it fails verification", file.display());
                    let _ = std::fs::remove_file(&file);
                    dropped += 1;
                }
            }
        }
        dropped
    }

    /// Whether the cached range `a..b` in `file` has that length and every
    /// frame of `frames` inside it decompresses to chunks matching their ids.
    fn range_is_sound(
        file: &Path,
        a: u64,
        b: u64,
        pack: &PackId,
        frames: Option<&BTreeMap<u64, Vec<slate_core::pack::IndexEntry>>>,
    ) -> bool {
        let Ok(data) = std::fs::read(file) else {
            return false;
        };
        if b < a || data.len() as u64 != b - a {
            return false;
        }
        let Some(frames) = frames else {
            return false;
        };
        let mut any = false;
        for (&off, entries) in frames.range(a..b) {
            let e = entries[0];
            let end = off + e.frame_len as u64;
            if end > b {
                continue;
            }
            any = true;
            let body = &data[(off - a) as usize..(end - a) as usize];
            let Ok(frame) = decompress_frame(body, e.frame_raw_len, pack, off) else {
                return false;
            };
            if entries.iter().any(|e| chunk_from_frame(&frame, e).is_err()) {
                return false;
            }
        }
        // A range holding no whole frame serves nothing: not worth keeping.
        any
    }

    /// Forget and delete every cached range of `pack` (after one of them,
    /// or the index that places them, failed a check).
    pub fn drop_pack(&self, pack: &PackId) {
        let name = pack.to_hex();
        self.ranges.lock().unwrap().remove(&name);
        self.unchecked.lock().unwrap().remove(&name);
        let _ = std::fs::remove_dir_all(self.dir.join(name));
    }

    fn pack_name(key: &str) -> Option<&str> {
        key.strip_suffix(".pack")?.rsplit('/').next()
    }

    /// The cached range holding `start..end` of `pack`, if any.
    fn covering(&self, pack: &str, start: u64, end: u64) -> Option<(u64, u64)> {
        let r = self.ranges.lock().unwrap();
        let (&a, &b) = r.get(pack)?.range(..=start).next_back()?;
        (b >= end).then_some((a, b))
    }

    /// Whether `start..end` of `pack` is cached.
    pub fn has(&self, pack: &PackId, start: u64, end: u64) -> bool {
        self.covering(&pack.to_hex(), start, end).is_some()
    }

    /// Store a verified range.
    pub fn put(&self, pack: &PackId, start: u64, data: &[u8]) -> Result<()> {
        let end = start + data.len() as u64;
        let p = self.dir.join(pack.to_hex());
        let f = p.join(format!("{start}-{end}"));
        crate::state::write_atomic(&f, data)?;
        self.ranges
            .lock()
            .unwrap()
            .entry(pack.to_hex())
            .or_default()
            .insert(start, end);
        Ok(())
    }

    /// Remove everything cached.
    pub fn clear(&self) -> Result<()> {
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir)
                .map_err(|e| Error::Local(format!("cannot clear {}: {e}", self.dir.display())))?;
        }
        self.ranges.lock().unwrap().clear();
        self.unchecked.lock().unwrap().clear();
        Ok(())
    }
}

impl Storage for RangeCache {
    fn read(&self, _key: &str) -> io::Result<Vec<u8>> {
        Err(unsupported())
    }
    fn read_at(&self, key: &str, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let pack = Self::pack_name(key).ok_or_else(unsupported)?;
        let end = offset + buf.len() as u64;
        let (a, b) = self.covering(pack, offset, end).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{key} bytes {offset}..{end} were not downloaded"),
            )
        })?;
        let f = std::fs::File::open(self.dir.join(pack).join(format!("{a}-{b}")))?;
        f.read_exact_at(buf, offset - a)
    }
    fn len(&self, _key: &str) -> io::Result<u64> {
        Err(unsupported())
    }
    fn write(&self, _key: &str, _data: &[u8]) -> io::Result<()> {
        Err(unsupported())
    }
    fn create(&self) -> io::Result<Box<dyn ObjectWriter>> {
        Err(unsupported())
    }
    fn list(&self, _prefix: &str) -> io::Result<Vec<String>> {
        Err(unsupported())
    }
    fn delete(&self, _key: &str) -> io::Result<()> {
        Err(unsupported())
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
    fn sync_key(&self, _key: &str) -> io::Result<()> {
        Ok(())
    }
}

/// One coalesced request: a byte range of a pack covering whole frames.
#[derive(Debug, Clone)]
pub struct RangeFetch {
    /// The pack.
    pub pack: PackId,
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// The frames inside, as (offset, compressed len, raw len).
    pub frames: Vec<(u64, u32, u32)>,
}

impl<'a> Remote<'a> {
    /// The remote repository behind `http`, caching under `cache`.
    pub fn new(http: &'a Http, cache: &Path) -> Self {
        Remote {
            http,
            cache: cache.to_path_buf(),
        }
    }

    /// Fetch a snapshot record (checked against its id, which a signed
    /// assignment or head named: an objects URL may serve it) and its
    /// signatures (a file that gains lines, so only from the fleet
    /// servers; each line is checked against the release keys anyway).
    pub fn snapshot(&self, id: &SnapshotId) -> Result<(Snapshot, Vec<SnapshotSignature>)> {
        let snap = self
            .http
            .get_object(&snap_key(id, "snap"), &format!("snapshot {id}"), |rec| {
                Snapshot::decode(rec, id).map_err(|e| e.to_string())
            })?;
        let sigs = match self.http.get_optional(&format!("/v1/repo/{}", snap_key(id, "sig")))? {
            Some(b) => {
                decode_signatures(&b).map_err(|e| Error::Untrusted(format!("signatures of snapshot {id}: {e}")))?
            }
            None => Vec::new(),
        };
        Ok((snap, sigs))
    }

    /// The chunk index of every pack the server has, fetching only the
    /// indexes not cached yet.
    pub fn index(&self) -> Result<ChunkIndex> {
        let list = self.http.get("/v1/packs")?;
        let list = String::from_utf8(list).map_err(|_| Error::Server("the pack list is not text".into()))?;
        let ids: Vec<PackId> = list
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                PackId::from_hex(l.trim()).ok_or_else(|| Error::Server(format!("bad pack id {l:?} in the pack list")))
            })
            .collect::<Result<_>>()?;
        let dir = self.cache.join("idx");
        std::fs::create_dir_all(&dir).map_err(|e| Error::Local(format!("cannot create {}: {e}", dir.display())))?;
        let loaded: Vec<(PackId, PackIndex)> = ids
            .par_iter()
            .map(|id| {
                let f = dir.join(format!("{}.idx", id.to_hex()));
                // A cached index that no longer decodes (damaged, truncated,
                // replaced) is dropped and fetched again, never trusted.
                if let Ok(b) = std::fs::read(&f) {
                    match PackIndex::decode(&b) {
                        Ok(idx) => return Ok((*id, idx)),
                        Err(e) => {
                            tracing::warn!("discarding cached index {}: {e}", f.display());
                            let _ = std::fs::remove_file(&f);
                        }
                    }
                }
                let b = self.http.get(&format!("/v1/repo/{}", index_key(id)))?;
                let idx = PackIndex::decode(&b).map_err(|e| Error::Untrusted(format!("index of pack {id}: {e}")))?;
                crate::state::write_atomic(&f, &b)?;
                Ok((*id, idx))
            })
            .collect::<Result<_>>()?;
        // Drop cached indexes of packs the server no longer has.
        if let Ok(rd) = std::fs::read_dir(&dir) {
            let keep: std::collections::HashSet<String> = ids.iter().map(|i| format!("{}.idx", i.to_hex())).collect();
            for e in rd.flatten() {
                if !keep.contains(&e.file_name().to_string_lossy().into_owned()) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let mut index = ChunkIndex::default();
        for (id, idx) in loaded {
            index.add_pack(id, &idx);
        }
        Ok(index)
    }

    /// The requests that bring every chunk in `want` that `cache` lacks
    /// (ranges left on disk by an earlier pass are checked first).
    pub fn plan_fetch(index: &ChunkIndex, cache: &RangeCache, want: &[ChunkId]) -> Result<Vec<RangeFetch>> {
        cache.verify(index);
        let mut frames: BTreeMap<(u32, u64), (u32, u32)> = BTreeMap::new();
        for id in want {
            let loc = index
                .get(id)
                .ok_or_else(|| Error::Server(format!("the server's repository lacks chunk {id}")))?;
            let e = &loc.entry;
            let pack = index.packs[loc.pack as usize];
            if !cache.has(&pack, e.frame_offset, e.frame_offset + e.frame_len as u64) {
                frames.insert((loc.pack, e.frame_offset), (e.frame_len, e.frame_raw_len));
            }
        }
        let mut out: Vec<RangeFetch> = Vec::new();
        for ((p, off), (len, raw)) in frames {
            let pack = index.packs[p as usize];
            let end = off + len as u64;
            match out.last_mut() {
                Some(r)
                    if r.pack == pack && off >= r.end && off - r.end <= COALESCE_GAP && end - r.start <= MAX_RANGE =>
                {
                    r.end = end;
                    r.frames.push((off, len, raw));
                }
                _ => out.push(RangeFetch {
                    pack,
                    start: off,
                    end,
                    frames: vec![(off, len, raw)],
                }),
            }
        }
        Ok(out)
    }

    /// Fetch `ranges` over parallel connections, verify every chunk in
    /// every frame against the index, and store them in `cache`.
    pub fn fetch(
        &self,
        index: &ChunkIndex,
        ranges: &[RangeFetch],
        cache: &RangeCache,
        connections: usize,
        progress: &dyn slate_repo::progress::Progress,
    ) -> Result<()> {
        // Which chunks each frame holds, to verify a frame completely.
        let mut by_frame: HashMap<(PackId, u64), Vec<slate_core::pack::IndexEntry>> = HashMap::new();
        let wanted: std::collections::HashSet<(PackId, u64)> = ranges
            .iter()
            .flat_map(|r| r.frames.iter().map(move |f| (r.pack, f.0)))
            .collect();
        for loc in index.locations() {
            let pack = index.packs[loc.pack as usize];
            if wanted.contains(&(pack, loc.entry.frame_offset)) {
                by_frame
                    .entry((pack, loc.entry.frame_offset))
                    .or_default()
                    .push(loc.entry);
            }
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(connections.max(1))
            .build()
            .map_err(|e| Error::Local(format!("cannot start download threads: {e}")))?;
        pool.install(|| {
            ranges.par_iter().try_for_each(|r| {
                let check = |data: &[u8]| check_range(data, r, &by_frame);
                let (data, checked) = self.http.get_object_range(&pack_key(&r.pack), r.start, r.end, check)?;
                if !checked {
                    check(&data).map_err(|why| {
                        self.forget_pack(cache, &r.pack);
                        Error::Untrusted(format!("{why} (as served by {})", self.http.server()))
                    })?;
                }
                cache.put(&r.pack, r.start, &data)?;
                progress.advance(data.len() as u64);
                Ok(())
            })
        })
    }
}

/// Whether `data`, the bytes `r.start..r.end` of pack `r.pack`, holds every
/// frame of `r` whole: each decompresses to its stated length and every
/// chunk the index places in it matches its id. `Err` says what failed.
fn check_range(
    data: &[u8],
    r: &RangeFetch,
    by_frame: &HashMap<(PackId, u64), Vec<slate_core::pack::IndexEntry>>,
) -> std::result::Result<(), String> {
    if data.len() as u64 != r.end - r.start {
        return Err(format!(
            "pack {}: {} bytes for a range of {}",
            r.pack,
            data.len(),
            r.end - r.start
        ));
    }
    for &(off, len, raw) in &r.frames {
        let body = &data[(off - r.start) as usize..(off - r.start) as usize + len as usize];
        let frame = decompress_frame(body, raw, &r.pack, off).map_err(|e| e.to_string())?;
        for e in by_frame.get(&(r.pack, off)).map(Vec::as_slice).unwrap_or(&[]) {
            chunk_from_frame(&frame, e).map_err(|err| format!("pack {}: {err}", r.pack))?;
        }
    }
    Ok(())
}

impl Remote<'_> {
    /// After `pack`'s bytes failed a check against its index, neither the
    /// cached index nor cached ranges of that pack are used again: either
    /// may be what is wrong, and the next pass fetches both afresh.
    fn forget_pack(&self, cache: &RangeCache, pack: &PackId) {
        let _ = std::fs::remove_file(self.cache.join("idx").join(format!("{}.idx", pack.to_hex())));
        cache.drop_pack(pack);
    }
}

/// Where the download cache of `state_dir` lives.
pub fn cache_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("cache")
}
