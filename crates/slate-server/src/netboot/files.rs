//! A snapshot's kernel and initramfs, assembled from the repository's
//! chunks for `GET /v1/boot/{id}/kernel` and `/v1/boot/{id}/initrd`.
//!
//! Resolving a snapshot (its record, the chunk index, the manifest, the
//! lookups of [`super::tree`]) costs a read of every pack index, so the
//! result is kept in a small LRU ([`BootCache`]): a room of machines
//! booting the same snapshot resolves it once. What is kept is a plan per
//! file: its pieces, each a range of one chunk (with its pack and frame)
//! or a run of zeros of a sparse file.
//!
//! Bytes are never trusted: every chunk is checked against its id when it
//! is read. When a snapshot is resolved, both files are read through once,
//! so a corrupt or missing chunk is a 500 (logged once) before any byte is
//! sent; while streaming, a chunk that no longer checks (the disk rotted,
//! or `slate gc` rewrote its pack) ends the connection before its bytes,
//! so a client gets a short body, never wrong bytes, and the plan is
//! dropped so the next request resolves the snapshot afresh.

use std::io;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context};
use axum::body::{Body, Bytes};
use slate_core::manifest::Manifest;
use slate_core::pack::{chunk_from_frame, decompress_frame, IndexEntry};
use slate_core::{PackId, SnapshotId};
use slate_repo::index::{pack_key, ChunkIndex};
use slate_repo::Repo;
use tokio::sync::OnceCell;

use super::tree::{self, Found};
use crate::error::{ApiError, ApiResult};

/// How many snapshots' plans are kept: a fleet boots a handful at a time
/// (a channel's head, a pinned one, the previous head during a rollout).
const CACHED_SNAPSHOTS: usize = 8;
/// Most bytes read per step of a stream (one blocking task each).
const STEP: u64 = 1 << 20;

/// Which file of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootFile {
    /// The kernel (`/v1/boot/{id}/kernel`).
    Kernel,
    /// The initramfs (`/v1/boot/{id}/initrd`).
    Initrd,
}

impl BootFile {
    /// The file a URL's last component names.
    pub fn parse(s: &str) -> Option<BootFile> {
        match s {
            "kernel" => Some(BootFile::Kernel),
            "initrd" => Some(BootFile::Initrd),
            _ => None,
        }
    }

    /// The name in URLs and entity tags.
    pub fn name(self) -> &'static str {
        match self {
            BootFile::Kernel => "kernel",
            BootFile::Initrd => "initrd",
        }
    }
}

/// Where a piece of a file's bytes comes from.
#[derive(Debug, Clone)]
enum Source {
    /// A hole of a sparse file.
    Zeros,
    /// Bytes of a chunk, from `skip` on.
    Chunk {
        /// The pack that holds it.
        pack: PackId,
        /// Its frame and place in the frame.
        entry: IndexEntry,
        /// Bytes of the chunk before this piece.
        skip: u32,
    },
}

/// A run of a file's bytes.
#[derive(Debug, Clone)]
struct Piece {
    /// Offset in the file.
    start: u64,
    /// Length.
    len: u64,
    source: Source,
}

/// A file of a snapshot, ready to stream.
#[derive(Debug)]
pub struct FilePlan {
    /// Its path in the tree (for logs).
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// Contiguous pieces from offset 0 to `size`.
    pieces: Vec<Piece>,
}

/// What a snapshot offers for network boot.
#[derive(Debug, Default)]
pub struct BootFiles {
    /// The kernel, if the tree has one.
    pub kernel: Option<Arc<FilePlan>>,
    /// Its initramfs, if the tree has one.
    pub initrd: Option<Arc<FilePlan>>,
}

impl BootFiles {
    /// The plan of `which`, if the tree has that file.
    pub fn get(&self, which: BootFile) -> Option<&Arc<FilePlan>> {
        match which {
            BootFile::Kernel => self.kernel.as_ref(),
            BootFile::Initrd => self.initrd.as_ref(),
        }
    }
}

/// The plan of the regular file `f` of `m`: where each of its bytes is.
fn plan(m: &Manifest, index: &ChunkIndex, f: &Found) -> anyhow::Result<FilePlan> {
    let path = slate_core::manifest::path::display(&f.path);
    let data = m
        .file_data(f.index)
        .ok_or_else(|| anyhow!("{path} is not a regular file"))?;
    let corrupt = |what: &str| anyhow!("the manifest's entry of {path} is inconsistent: {what}");
    let mut pieces = Vec::with_capacity(data.chunks.len());
    let mut chunks = data.chunks.iter();
    // The chunk being consumed and how much of it is used up.
    let mut current: Option<(PackId, IndexEntry, u32)> = None;
    let mut pos = 0u64;
    for x in data.data_extents() {
        let end = x
            .offset
            .checked_add(x.len)
            .filter(|&e| x.offset >= pos && e <= data.size);
        let Some(end) = end else {
            return Err(corrupt("extents overlap or pass its size"));
        };
        if x.offset > pos {
            pieces.push(Piece {
                start: pos,
                len: x.offset - pos,
                source: Source::Zeros,
            });
        }
        pos = x.offset;
        while pos < end {
            let (pack, entry, used) = match current {
                Some(c) if c.2 < c.1.len => c,
                _ => {
                    let c = chunks.next().ok_or_else(|| corrupt("its chunks end early"))?;
                    let loc = index
                        .get(&c.id)
                        .ok_or_else(|| anyhow!("chunk {} of {path} is in no pack of the repository", c.id))?;
                    if loc.entry.len != c.len || c.len == 0 {
                        return Err(corrupt("a chunk's length differs from its pack index's"));
                    }
                    (index.packs[loc.pack as usize], loc.entry, 0)
                }
            };
            let n = (end - pos).min(u64::from(entry.len - used));
            pieces.push(Piece {
                start: pos,
                len: n,
                source: Source::Chunk {
                    pack,
                    entry,
                    skip: used,
                },
            });
            current = Some((pack, entry, used + n as u32));
            pos += n;
        }
    }
    if data.size > pos {
        pieces.push(Piece {
            start: pos,
            len: data.size - pos,
            source: Source::Zeros,
        });
    }
    Ok(FilePlan {
        path,
        size: data.size,
        pieces,
    })
}

/// The last decompressed frame: consecutive chunks of a file share frames,
/// so each frame is read and decompressed once per pass.
#[derive(Default)]
struct Frames {
    last: Option<(FrameKey, Arc<Vec<u8>>)>,
}

/// A frame: its pack and offset there.
type FrameKey = (PackId, u64);

impl Frames {
    /// Call `f` with the checked bytes of the chunk `entry` of `pack`.
    fn with_chunk<T>(
        &mut self,
        repo: &Repo,
        pack: &PackId,
        entry: &IndexEntry,
        f: impl FnOnce(&[u8]) -> T,
    ) -> anyhow::Result<T> {
        let key = (*pack, entry.frame_offset);
        let frame = match &self.last {
            Some((k, frame)) if *k == key => frame.clone(),
            _ => {
                let mut buf = vec![0u8; entry.frame_len as usize];
                repo.storage
                    .read_at(&pack_key(pack), entry.frame_offset, &mut buf)
                    .with_context(|| format!("pack {pack}"))?;
                let frame = Arc::new(decompress_frame(&buf, entry.frame_raw_len, pack, entry.frame_offset)?);
                self.last = Some((key, frame.clone()));
                frame
            }
        };
        let data = chunk_from_frame(&frame, entry).with_context(|| format!("pack {pack}"))?;
        Ok(f(data))
    }
}

impl FilePlan {
    /// Read every chunk once, checking it.
    fn verify(&self, repo: &Repo) -> anyhow::Result<()> {
        let mut frames = Frames::default();
        let mut last = None;
        for p in &self.pieces {
            if let Source::Chunk { pack, entry, .. } = &p.source {
                // A chunk split over extents is checked once.
                if last != Some(entry.id) {
                    frames.with_chunk(repo, pack, entry, |_| ())?;
                    last = Some(entry.id);
                }
            }
        }
        Ok(())
    }
}

/// Resolve snapshot `id`: find its kernel and initramfs and check every
/// chunk of both. Blocking.
pub fn resolve(repo: &Repo, id: &SnapshotId) -> ApiResult<BootFiles> {
    let snapshot = repo.read_snapshot(id).map_err(|e| match e {
        slate_repo::Error::UnknownSnapshot(_) => unknown_snapshot(id),
        e => ApiError::internal(anyhow::Error::new(e).context(format!("network boot of snapshot {id}"))),
    })?;
    let failed = |e: anyhow::Error| ApiError::internal(e.context(format!("network boot of snapshot {id}")));
    let index = repo.load_index().map_err(|e| failed(e.into()))?;
    let manifest = repo.read_manifest(&snapshot, &index).map_err(|e| failed(e.into()))?;
    let entries = tree::boot_entries(&manifest);
    let plan_of = |f: Option<Found>| -> ApiResult<Option<Arc<FilePlan>>> {
        let Some(f) = f else { return Ok(None) };
        let p = plan(&manifest, &index, &f).map_err(failed)?;
        p.verify(repo).with_context(|| p.path.clone()).map_err(failed)?;
        Ok(Some(Arc::new(p)))
    };
    Ok(BootFiles {
        kernel: plan_of(entries.kernel)?,
        initrd: plan_of(entries.initrd)?,
    })
}

/// The 404 of a snapshot the repository does not have.
pub fn unknown_snapshot(id: &SnapshotId) -> ApiError {
    ApiError::NotFound(format!("there is no snapshot {id} in this repository"))
}

/// Cached entry: the resolution of one snapshot, made by the first request
/// that needs it while the others wait for it.
type Slot = Arc<OnceCell<Arc<BootFiles>>>;

/// The plans of the snapshots booted lately, most recently used last.
#[derive(Default)]
pub struct BootCache {
    slots: Mutex<Vec<(SnapshotId, Slot)>>,
}

impl BootCache {
    fn slot(&self, id: SnapshotId) -> Slot {
        // A poisoned lock holds a whole Vec: a holder only moves entries.
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slot = match slots.iter().position(|(k, _)| *k == id) {
            Some(i) => slots.remove(i).1,
            None => Slot::default(),
        };
        slots.push((id, slot.clone()));
        if slots.len() > CACHED_SNAPSHOTS {
            slots.remove(0);
        }
        slot
    }

    /// Drop what is known of `id` (it failed to read, or is gone).
    pub fn forget(&self, id: &SnapshotId) {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(k, _)| k != id);
    }

    /// The boot files of snapshot `id`, resolved once while it stays in
    /// the cache. Whether the snapshot still exists is asked every time (a
    /// `stat`), so a snapshot `slate gc` removed is 404 at once, and ids
    /// that name nothing never take a place in the cache.
    pub async fn files(&self, repo: &Arc<Repo>, id: SnapshotId) -> ApiResult<Arc<BootFiles>> {
        let (r, key) = (repo.clone(), Repo::snapshot_keys(&id)[0].clone());
        // A stat blocks (and may be remote).
        if !tokio::task::spawn_blocking(move || r.storage.exists(&key)).await? {
            self.forget(&id);
            return Err(unknown_snapshot(&id));
        }
        let repo = repo.clone();
        self.slot(id)
            .get_or_try_init(|| async move {
                // Reading indexes, the manifest and every chunk blocks.
                let files = tokio::task::spawn_blocking(move || resolve(&repo, &id)).await??;
                Ok::<_, ApiError>(Arc::new(files))
            })
            .await
            .cloned()
    }
}

/// A position in a file being sent, and the frame last read.
pub struct Cursor {
    repo: Arc<Repo>,
    plan: Arc<FilePlan>,
    pos: u64,
    end: u64,
    frames: Frames,
}

impl Cursor {
    /// `count` bytes of `plan` from `start`.
    pub fn new(repo: Arc<Repo>, plan: Arc<FilePlan>, start: u64, count: u64) -> Cursor {
        Cursor {
            repo,
            plan,
            pos: start,
            end: start + count,
            frames: Frames::default(),
        }
    }

    /// The next (at most [`STEP`]) bytes, checked; empty at the end.
    /// Blocking.
    pub fn step(&mut self) -> anyhow::Result<Bytes> {
        let want = (self.end - self.pos).min(STEP);
        let mut out = Vec::with_capacity(want as usize);
        let pieces = &self.plan.pieces;
        let mut i = pieces.partition_point(|p| p.start + p.len <= self.pos);
        while (out.len() as u64) < want {
            let at = self.pos + out.len() as u64;
            let p = pieces.get(i).ok_or_else(|| anyhow!("the pieces end before the file"))?;
            let from = at - p.start;
            let n = (p.len - from).min(want - out.len() as u64) as usize;
            match &p.source {
                Source::Zeros => out.resize(out.len() + n, 0),
                Source::Chunk { pack, entry, skip } => {
                    let s = *skip as usize + from as usize;
                    self.frames
                        .with_chunk(&self.repo, pack, entry, |d| match d.get(s..s + n) {
                            Some(b) => {
                                out.extend_from_slice(b);
                                Ok(())
                            }
                            None => Err(anyhow!("a piece lies outside its chunk")),
                        })??;
                }
            }
            i += 1;
        }
        self.pos += out.len() as u64;
        Ok(Bytes::from(out))
    }

    /// The response body: `first` (what [`Cursor::step`] gave before the
    /// answer was committed to), then the rest, a blocking step at a time.
    /// A failure is logged once, makes `cache` forget snapshot `id`, and
    /// ends the connection.
    pub fn into_body(self, first: Bytes, cache: Arc<BootCache>, id: SnapshotId) -> Body {
        let path = self.plan.path.clone();
        let stream = futures_util::stream::try_unfold((self, Some(first)), move |(mut cur, first)| {
            let (cache, path) = (cache.clone(), path.clone());
            async move {
                if let Some(b) = first.filter(|b| !b.is_empty()) {
                    return Ok(Some((b, (cur, None))));
                }
                if cur.pos >= cur.end {
                    return Ok(None);
                }
                let (r, cur) = tokio::task::spawn_blocking(move || {
                    let r = cur.step();
                    (r, cur)
                })
                .await
                .map_err(io::Error::other)?;
                match r {
                    Ok(b) => Ok(Some((b, (cur, None)))),
                    Err(e) => {
                        tracing::error!("network boot of snapshot {id}: {path}: {e:#}; the download was cut short");
                        cache.forget(&id);
                        Err(io::Error::other(e))
                    }
                }
            }
        });
        Body::from_stream(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_keeps_the_latest_snapshots() {
        let c = BootCache::default();
        let id = |n: u8| SnapshotId(slate_core::Id32([n; 32]));
        let first = c.slot(id(0));
        for n in 1..CACHED_SNAPSHOTS as u8 {
            c.slot(id(n));
        }
        // Used again: the same slot, now the most recent.
        assert!(Arc::ptr_eq(&first, &c.slot(id(0))));
        c.slot(id(100));
        let kept: Vec<SnapshotId> = c.slots.lock().unwrap().iter().map(|(k, _)| *k).collect();
        assert_eq!(kept.len(), CACHED_SNAPSHOTS);
        assert!(kept.contains(&id(0)) && !kept.contains(&id(1)));
        c.forget(&id(0));
        assert!(!Arc::ptr_eq(&first, &c.slot(id(0))));
    }
}
