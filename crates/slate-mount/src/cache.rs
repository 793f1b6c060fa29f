//! The mount's cache: fetched frames kept as a slate repository.
//!
//! Every fetch of remote frames is stored as a small pack of its own (the
//! frames' compressed bytes unchanged, behind a pack header) with its
//! index, under the usual repository layout, so a complete cache is a
//! repository that `slate verify` and `slate checkout` accept. Nothing in
//! it is trusted: a chunk read from the cache is checked against its id
//! like any other, and a pack that fails is deleted and fetched again.
//! The pack is also the unit of eviction: least recently used first,
//! never one holding a pinned chunk. Use order is kept in `mount/access`
//! so that it survives restarts. The format is in docs/format/cache.md.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use slate_core::pack::{chunk_from_frame, decompress_frame, pack_header, IndexEntry, PackIndex};
use slate_core::{ChunkId, PackId, SnapshotId};
use slate_repo::index::{index_key, pack_key};
use slate_repo::storage::{LocalStorage, Storage};
use slate_repo::Repo;

use slate_agent::{Error, Result};

/// One cached pack.
struct CachedPack {
    len: u64,
    /// Use order: larger is more recent.
    used: u64,
    chunks: Vec<ChunkId>,
}

struct Inner {
    chunks: HashMap<ChunkId, (PackId, IndexEntry)>,
    packs: HashMap<PackId, CachedPack>,
    pinned: HashSet<ChunkId>,
    disk_bytes: u64,
    /// Set when everything left is pinned but the cache is still too big.
    over_limit_pinned: bool,
}

/// A frame read from the cache, decompressed and verified.
pub struct CachedFrame {
    /// Where it is: (pack, offset), a key for in-memory frame caches.
    pub key: (PackId, u64),
    /// The raw frame.
    pub raw: Vec<u8>,
}

/// The cache directory.
pub struct Cache {
    root: PathBuf,
    storage: LocalStorage,
    limit: u64,
    inner: Mutex<Inner>,
    clock: AtomicU64,
}

fn io_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Local(format!("{what}: {e}"))
}

impl Cache {
    /// Open (or create) the cache in `root`, bounded to `limit` bytes of
    /// packs on disk. A directory that holds something else is refused.
    pub fn open(root: &Path, limit: u64) -> Result<Cache> {
        if !root.join("config").exists() {
            if root.exists() && std::fs::read_dir(root).map(|mut d| d.next().is_some()).unwrap_or(true) {
                return Err(Error::Config(format!(
                    "{} is neither empty nor a slate cache (it has no config file); give --cache an empty or new directory",
                    root.display()
                )));
            }
            Repo::init(root, slate_repo::Config::default())?;
        } else {
            Repo::open(root)?;
        }
        std::fs::create_dir_all(root.join("mount")).map_err(|e| io_err("cannot create the cache's mount/", e))?;
        let storage = LocalStorage::new(root);
        let used = read_access(&root.join("mount/access"));
        let mut inner = Inner {
            chunks: HashMap::new(),
            packs: HashMap::new(),
            pinned: HashSet::new(),
            disk_bytes: 0,
            over_limit_pinned: false,
        };
        let mut clock = used.values().copied().max().unwrap_or(0);
        for key in storage.list("packs")?.into_iter().filter(|k| k.ends_with(".idx")) {
            let name = key.rsplit('/').next().unwrap_or_default().trim_end_matches(".idx");
            let Some(id) = PackId::from_hex(name) else {
                continue;
            };
            let pack_len = storage.len(&pack_key(&id)).ok();
            let idx = storage.read(&key).ok().and_then(|b| PackIndex::decode(&b).ok());
            match (idx, pack_len) {
                (Some(idx), Some(len)) if idx.pack_len == len => {
                    let chunks: Vec<ChunkId> = idx.entries.iter().map(|e| e.id).collect();
                    for e in &idx.entries {
                        inner.chunks.entry(e.id).or_insert((id, *e));
                    }
                    clock += 1;
                    inner.packs.insert(
                        id,
                        CachedPack {
                            len,
                            used: used.get(&id).copied().unwrap_or(0),
                            chunks,
                        },
                    );
                    inner.disk_bytes += len;
                }
                _ => {
                    // A pack whose index is damaged, or whose bytes are
                    // missing or cut short (a crash mid-write), is dropped.
                    tracing::warn!("dropping damaged cache pack {id}");
                    let _ = storage.delete(&key);
                    let _ = storage.delete(&pack_key(&id));
                }
            }
        }
        Ok(Cache {
            root: root.to_path_buf(),
            storage,
            limit,
            inner: Mutex::new(inner),
            clock: AtomicU64::new(clock + 1),
        })
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the cache holds `id`.
    pub fn has(&self, id: &ChunkId) -> bool {
        self.inner.lock().unwrap().chunks.contains_key(id)
    }

    /// Bytes of packs on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.inner.lock().unwrap().disk_bytes
    }

    /// The size bound.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Whether the pinned data alone exceeds the bound.
    pub fn pinned_over_limit(&self) -> bool {
        self.inner.lock().unwrap().over_limit_pinned
    }

    /// Of `chunks`, the bytes the cache holds (each chunk counted once).
    pub fn held_bytes<'a>(&self, chunks: impl Iterator<Item = (&'a ChunkId, u32)>) -> u64 {
        let inner = self.inner.lock().unwrap();
        chunks
            .filter(|(id, _)| inner.chunks.contains_key(id))
            .map(|(_, len)| len as u64)
            .sum()
    }

    /// Replace the pinned set: these chunks' packs are never evicted.
    pub fn set_pins(&self, pins: HashSet<ChunkId>) {
        self.inner.lock().unwrap().pinned = pins;
        self.evict();
    }

    /// Read and verify the frame holding `id`. `Ok(None)`: not cached, or
    /// its pack failed a check and was deleted (fetch it again).
    pub fn frame(&self, id: &ChunkId) -> Result<Option<CachedFrame>> {
        let (pack, entry) = {
            let mut inner = self.inner.lock().unwrap();
            let Some(&(pack, entry)) = inner.chunks.get(id) else {
                return Ok(None);
            };
            let tick = self.clock.fetch_add(1, Ordering::Relaxed);
            if let Some(p) = inner.packs.get_mut(&pack) {
                p.used = tick;
            }
            (pack, entry)
        };
        let mut buf = vec![0u8; entry.frame_len as usize];
        let checked = self
            .storage
            .read_at(&pack_key(&pack), entry.frame_offset, &mut buf)
            .map_err(|e| e.to_string())
            .and_then(|_| {
                decompress_frame(&buf, entry.frame_raw_len, &pack, entry.frame_offset).map_err(|e| e.to_string())
            })
            .and_then(|raw| {
                // Every chunk of the frame is checked, so the frame can be
                // served from memory afterwards without another check.
                let entries = self.frame_entries(&pack, entry.frame_offset);
                for e in &entries {
                    chunk_from_frame(&raw, e).map_err(|e| e.to_string())?;
                }
                Ok(raw)
            });
        match checked {
            Ok(raw) => Ok(Some(CachedFrame {
                key: (pack, entry.frame_offset),
                raw,
            })),
            Err(why) => {
                tracing::warn!("cache pack {pack} failed a check ({why}); deleting it to fetch again");
                self.drop_pack(&pack);
                Ok(None)
            }
        }
    }

    /// The index entries of the cached frame at `offset` of `pack`.
    fn frame_entries(&self, pack: &PackId, offset: u64) -> Vec<IndexEntry> {
        let inner = self.inner.lock().unwrap();
        let Some(p) = inner.packs.get(pack) else {
            return Vec::new();
        };
        p.chunks
            .iter()
            .filter_map(|c| inner.chunks.get(c))
            .filter(|(pk, e)| pk == pack && e.frame_offset == offset)
            .map(|(_, e)| *e)
            .collect()
    }

    /// Where cached chunk `id` is: its pack and index entry.
    pub fn locate(&self, id: &ChunkId) -> Option<(PackId, IndexEntry)> {
        self.inner.lock().unwrap().chunks.get(id).copied()
    }

    /// Store verified frames (compressed bytes and their chunks' entries,
    /// offsets relative to each frame) as one new pack. Returns the pack
    /// and where each frame landed in it (none when there was nothing).
    pub fn store(&self, frames: &[(&[u8], Vec<IndexEntry>)]) -> Result<Option<(PackId, Vec<u64>)>> {
        let mut data = pack_header();
        let mut entries = Vec::new();
        let mut offsets = Vec::with_capacity(frames.len());
        for (bytes, chunk_entries) in frames {
            let at = data.len() as u64;
            offsets.push(at);
            data.extend_from_slice(bytes);
            for e in chunk_entries {
                entries.push(IndexEntry {
                    frame_offset: at,
                    frame_len: bytes.len() as u32,
                    ..*e
                });
            }
        }
        if entries.is_empty() {
            return Ok(None);
        }
        let id = PackId::of(&data);
        let idx = PackIndex {
            pack_len: data.len() as u64,
            entries,
        };
        // The pack before its index: an index always has its pack.
        self.write_file(&pack_key(&id), &data)?;
        self.write_file(&index_key(&id), &idx.encode())?;
        {
            let mut inner = self.inner.lock().unwrap();
            if !inner.packs.contains_key(&id) {
                for e in &idx.entries {
                    inner.chunks.entry(e.id).or_insert((id, *e));
                }
                inner.disk_bytes += data.len() as u64;
                inner.packs.insert(
                    id,
                    CachedPack {
                        len: data.len() as u64,
                        used: self.clock.fetch_add(1, Ordering::Relaxed),
                        chunks: idx.entries.iter().map(|e| e.id).collect(),
                    },
                );
            }
        }
        self.evict();
        Ok(Some((id, offsets)))
    }

    /// Write a file of the cache: complete under its name or not at all
    /// (temporary file, rename), but not synced. The cache needs no
    /// durability: after a power cut a file may be empty or cut short, which
    /// `open` (lengths) or the first read (hashes) finds, and the frames are
    /// fetched again. Syncing every pack would cost two disk flushes per
    /// read that misses.
    fn write_file(&self, key: &str, data: &[u8]) -> Result<()> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let tmp = self.root.join("tmp").join(format!(
            "mount-{}-{}.tmp",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let dst = self.root.join(key);
        let done = (|| {
            std::fs::write(&tmp, data)?;
            if let Some(dir) = dst.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::rename(&tmp, &dst)
        })();
        if let Err(e) = done {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_err(&format!("cannot write {} to the cache", dst.display()), e));
        }
        Ok(())
    }

    /// Delete `pack` and forget its chunks.
    fn drop_pack(&self, pack: &PackId) {
        let mut inner = self.inner.lock().unwrap();
        Self::remove(&mut inner, &self.storage, pack);
    }

    fn remove(inner: &mut Inner, storage: &LocalStorage, pack: &PackId) {
        if let Some(p) = inner.packs.remove(pack) {
            inner.disk_bytes -= p.len;
            for c in p.chunks {
                if inner.chunks.get(&c).is_some_and(|(pk, _)| pk == pack) {
                    inner.chunks.remove(&c);
                }
            }
        }
        let _ = storage.delete(&index_key(pack));
        let _ = storage.delete(&pack_key(pack));
    }

    /// Evict least recently used, unpinned packs until under the bound.
    fn evict(&self) {
        let mut inner = self.inner.lock().unwrap();
        if inner.disk_bytes <= self.limit {
            inner.over_limit_pinned = false;
            return;
        }
        let mut order: Vec<(u64, PackId)> = inner
            .packs
            .iter()
            .filter(|(_, p)| !p.chunks.iter().any(|c| inner.pinned.contains(c)))
            .map(|(id, p)| (p.used, *id))
            .collect();
        order.sort_unstable();
        for (_, id) in order {
            if inner.disk_bytes <= self.limit {
                break;
            }
            Self::remove(&mut inner, &self.storage, &id);
        }
        inner.over_limit_pinned = inner.disk_bytes > self.limit;
    }

    /// Keep the use order on disk (atomically replaced), so that a restart
    /// evicts in the same order.
    pub fn save_access(&self) {
        let text: String = {
            let inner = self.inner.lock().unwrap();
            let mut v: Vec<(u64, PackId)> = inner.packs.iter().map(|(id, p)| (p.used, *id)).collect();
            v.sort_unstable();
            v.iter().map(|(u, id)| format!("{id} {u}\n")).collect()
        };
        let _ = slate_agent::state::write_atomic(&self.root.join("mount/access"), text.as_bytes());
    }

    /// Keep a snapshot's record and signatures, so that an offline mount
    /// and `slate checkout` find them.
    pub fn keep_snapshot(&self, id: &SnapshotId, record: &[u8], sigs: &[u8]) -> Result<()> {
        let [snap, sig] = Repo::snapshot_keys(id);
        self.storage
            .write(&snap, record)
            .map_err(|e| io_err("cannot write to the cache", e))?;
        self.storage
            .write(&sig, sigs)
            .map_err(|e| io_err("cannot write to the cache", e))?;
        Ok(())
    }

    /// A kept snapshot record and its signatures, if the cache has them.
    pub fn kept_snapshot(&self, id: &SnapshotId) -> Option<(Vec<u8>, Vec<u8>)> {
        let [snap, sig] = Repo::snapshot_keys(id);
        Some((
            self.storage.read(&snap).ok()?,
            self.storage.read(&sig).unwrap_or_default(),
        ))
    }

    /// Record `id` as the newest snapshot of `channel` in the cache.
    pub fn keep_channel_head(&self, channel: &str, id: &SnapshotId) -> Result<()> {
        let repo = Repo::open(&self.root)?;
        let mut history = repo.channel_history(channel).unwrap_or_default();
        if history.last() != Some(id) {
            history.retain(|h| h != id);
            history.push(*id);
            repo.set_channel_history(channel, &history)?;
        }
        Ok(())
    }

    /// The newest snapshot the cache recorded for `channel`.
    pub fn channel_head(&self, channel: &str) -> Option<SnapshotId> {
        Repo::open(&self.root)
            .ok()?
            .channel_history(channel)
            .ok()?
            .last()
            .copied()
    }
}

fn read_access(path: &Path) -> HashMap<PackId, u64> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return HashMap::new();
    };
    text.lines()
        .filter_map(|l| {
            let (id, used) = l.split_once(' ')?;
            Some((PackId::from_hex(id)?, used.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use slate_core::pack::compress_frame;

    /// A frame of one chunk of `n` pseudo-random bytes: (compressed bytes,
    /// its entry, the chunk).
    fn frame(seed: u8, n: usize) -> (Vec<u8>, IndexEntry, Vec<u8>) {
        let mut x = seed as u64 * 0x9e37_79b9 + 1;
        let raw: Vec<u8> = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let z = compress_frame(&raw, 3).unwrap();
        let e = IndexEntry {
            id: ChunkId::of(&raw),
            frame_offset: 0,
            frame_len: z.len() as u32,
            frame_raw_len: raw.len() as u32,
            offset: 0,
            len: raw.len() as u32,
        };
        (z, e, raw)
    }

    fn store(c: &Cache, f: &(Vec<u8>, IndexEntry, Vec<u8>)) {
        assert!(c.store(&[(&f.0, vec![f.1])]).unwrap().is_some());
    }

    #[test]
    fn least_recently_used_goes_first_pins_stay_and_order_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("c");
        let frames: Vec<_> = (1..=4).map(|i| frame(i, 100_000)).collect();
        let one = frames[0].0.len() as u64 + 9;
        {
            let c = Cache::open(&root, one * 3 + 100).unwrap();
            for f in &frames[..3] {
                store(&c, f);
            }
            // Use the first: the second is now the least recently used.
            assert!(c.frame(&frames[0].1.id).unwrap().is_some());
            c.set_pins([frames[1].1.id].into_iter().collect());
            store(&c, &frames[3]);
            assert!(c.has(&frames[0].1.id), "recently used");
            assert!(c.has(&frames[1].1.id), "pinned");
            assert!(!c.has(&frames[2].1.id), "least recently used and not pinned");
            assert!(c.has(&frames[3].1.id));
            assert!(c.disk_bytes() <= c.limit());
            c.save_access();
        }
        // Reopened: same content, same order (frames[0] older than [3]).
        let c = Cache::open(&root, one * 2 + 100).unwrap();
        assert!(c.has(&frames[0].1.id) && c.has(&frames[1].1.id) && c.has(&frames[3].1.id));
        store(&c, &frames[2]);
        // Now over the bound by two packs: [0] and [3] are older than [2];
        // [1] is pinned no more (pins are not kept across restarts).
        assert!(c.has(&frames[2].1.id));
        assert!(c.disk_bytes() <= c.limit());
        assert!(!c.has(&frames[0].1.id));
        // A repository after all: the chunk reader of slate-repo reads it.
        let repo = Repo::open(&root).unwrap();
        let index = repo.load_index().unwrap();
        let mut r = slate_repo::reader::ChunkReader::new(repo.storage.as_ref(), &index);
        assert_eq!(r.read(&frames[2].1.id).unwrap(), frames[2].2);
    }

    #[test]
    fn a_damaged_pack_is_dropped_when_read_and_a_cut_one_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("c");
        let (a, b) = (frame(7, 50_000), frame(8, 50_000));
        let c = Cache::open(&root, 1 << 30).unwrap();
        store(&c, &a);
        store(&c, &b);
        let (pack, e) = c.locate(&a.1.id).unwrap();
        let path = root.join(pack_key(&pack));
        let mut bytes = std::fs::read(&path).unwrap();
        let at = e.frame_offset as usize + e.frame_len as usize / 2;
        bytes[at] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(c.frame(&a.1.id).unwrap().is_none(), "damaged: not served");
        assert!(!c.has(&a.1.id) && !path.exists(), "and deleted");
        assert_eq!(c.frame(&b.1.id).unwrap().unwrap().raw, b.2);
        drop(c);
        // A pack cut short (a crash mid-copy) is dropped at open.
        let (pack, _) = Cache::open(&root, 1 << 30).unwrap().locate(&b.1.id).unwrap();
        let path = root.join(pack_key(&pack));
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let c = Cache::open(&root, 1 << 30).unwrap();
        assert!(!c.has(&b.1.id));
        assert_eq!(c.disk_bytes(), 0);
    }

    #[test]
    fn a_directory_that_is_not_a_cache_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("precious"), b"x").unwrap();
        let err = Cache::open(dir.path(), 1 << 20).err().unwrap().to_string();
        assert!(err.contains("neither empty nor a slate cache"), "{err}");
        assert!(dir.path().join("precious").exists());
    }
}
