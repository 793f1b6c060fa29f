//! Committing a tree: scan it, cut files into chunks, store the chunks the
//! repository lacks in new packs in tree order, store the manifest the same
//! way, write and sign the snapshot record, sync once, then move the
//! channel. See `docs/format/repository.md` for why a crash at any instant
//! leaves a valid repository.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use rayon::prelude::*;
use slate_core::keys::SecretKey;
use slate_core::manifest::{self, ChunkRef, Kind};
use slate_core::pack::{compress_frame, pack_header, IndexEntry, PackIndex, PACK_HEADER_LEN};
use slate_core::snapshot::{ManifestRef, Snapshot, SnapshotSignature};
use slate_core::{ChunkId, Id32, PackId, SnapshotId};

use crate::error::{Error, Result};
use crate::index::{index_key, pack_key, ChunkIndex};
use crate::pending::WriteGuard;
use crate::progress::Progress;
use crate::repo::Repo;
use crate::scan::{scan, FileJob};
use crate::storage::{Expected, ObjectWriter, Storage};

/// A frame is closed once it holds this many raw bytes.
const FRAME_TARGET: usize = 1 << 20;
/// A pack is closed once it is this large.
const PACK_TARGET: u64 = 64 << 20;
/// Files up to this size are read whole, several in parallel; larger ones
/// are streamed through the chunker one at a time.
const WHOLE_FILE_MAX: u64 = 16 << 20;
/// Raw bytes of small files read per parallel batch (bounds memory).
const WINDOW_BYTES: u64 = 32 << 20;
/// Frames compressed together in parallel.
const FRAMES_PER_FLUSH: usize = 16;

/// What to commit.
pub struct CommitOptions<'a> {
    /// Channel to move to the new snapshot.
    pub channel: &'a str,
    /// Commit message.
    pub message: String,
    /// Key to sign with.
    pub sign: Option<&'a SecretKey>,
    /// Extra metadata (added to what os-release gives).
    pub metadata: Vec<(String, String)>,
}

/// What a commit did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CommitStats {
    /// The new snapshot.
    pub snapshot: String,
    /// The previous head of the channel.
    pub parent: Option<String>,
    /// Entries in the tree.
    pub entries: u64,
    /// Regular files (hard links counted once).
    pub files: u64,
    /// Their bytes.
    pub file_bytes: u64,
    /// Chunks the repository did not hold.
    pub new_chunks: u64,
    /// Their raw bytes.
    pub new_bytes: u64,
    /// Bytes added to the repository's packs.
    pub stored_bytes: u64,
    /// Packs written.
    pub packs: u64,
}

struct PackWriter<'a> {
    storage: &'a dyn Storage,
    out: Option<Box<dyn ObjectWriter>>,
    hasher: blake3::Hasher,
    len: u64,
    entries: Vec<IndexEntry>,
}

impl<'a> PackWriter<'a> {
    fn new(storage: &'a dyn Storage) -> Self {
        PackWriter {
            storage,
            out: None,
            hasher: blake3::Hasher::new(),
            len: 0,
            entries: Vec::new(),
        }
    }

    fn write(&mut self, b: &[u8]) -> Result<()> {
        use std::io::Write;
        let out = self.out.as_mut().expect("pack open");
        out.write_all(b)?;
        self.hasher.update(b);
        self.len += b.len() as u64;
        Ok(())
    }

    fn add_frame(&mut self, compressed: &[u8], raw_len: u32, chunks: &[FramedChunk]) -> Result<()> {
        if self.out.is_none() {
            self.out = Some(self.storage.create()?);
            self.hasher = blake3::Hasher::new();
            self.len = 0;
            self.write(&pack_header())?;
            debug_assert_eq!(self.len, PACK_HEADER_LEN);
        }
        let frame_offset = self.len;
        self.write(compressed)?;
        for &(id, offset, len) in chunks {
            self.entries.push(IndexEntry {
                id,
                frame_offset,
                frame_len: compressed.len() as u32,
                frame_raw_len: raw_len,
                offset,
                len,
            });
        }
        Ok(())
    }

    /// Publish the open pack and then its index (an index on disk implies
    /// its pack is there).
    fn close(&mut self) -> Result<Option<(PackId, PackIndex)>> {
        let Some(out) = self.out.take() else { return Ok(None) };
        let id = PackId(Id32(*self.hasher.finalize().as_bytes()));
        out.finish(&pack_key(&id))?;
        let idx = PackIndex {
            pack_len: self.len,
            entries: std::mem::take(&mut self.entries),
        };
        self.storage.write(&index_key(&id), &idx.encode())?;
        Ok(Some((id, idx)))
    }
}

/// A chunk's place in a frame being built: id, offset, length.
type FramedChunk = (ChunkId, u32, u32);
/// A raw frame and the chunks in it, waiting to be compressed.
type RawFrame = (Vec<u8>, Vec<FramedChunk>);
/// A small file's bytes and its chunks (offset into the bytes, reference).
type ChunkedFile = (Vec<u8>, Vec<(usize, ChunkRef)>);

/// Collects new chunks into frames and frames into packs, in the order
/// they are pushed, compressing frames in parallel batches.
pub struct Assembler<'a> {
    index: &'a ChunkIndex,
    seen: HashSet<ChunkId>,
    level: i32,
    frame: Vec<u8>,
    frame_chunks: Vec<FramedChunk>,
    pending: Vec<RawFrame>,
    pack: PackWriter<'a>,
    /// Packs written so far.
    pub packs: Vec<(PackId, PackIndex)>,
    /// Chunks added.
    pub new_chunks: u64,
    /// Their raw bytes.
    pub new_bytes: u64,
    /// Their compressed bytes.
    pub stored_bytes: u64,
}

impl<'a> Assembler<'a> {
    /// Pack new chunks into `storage`, skipping those `index` holds.
    pub fn new(storage: &'a dyn Storage, index: &'a ChunkIndex, level: i32) -> Self {
        Assembler {
            index,
            seen: HashSet::new(),
            level,
            frame: Vec::with_capacity(FRAME_TARGET + (256 << 10)),
            frame_chunks: Vec::new(),
            pending: Vec::new(),
            pack: PackWriter::new(storage),
            packs: Vec::new(),
            new_chunks: 0,
            new_bytes: 0,
            stored_bytes: 0,
        }
    }

    /// Add a chunk unless the repository (or this commit) already has it.
    pub fn push(&mut self, id: ChunkId, data: &[u8]) -> Result<()> {
        if self.index.contains(&id) || !self.seen.insert(id) {
            return Ok(());
        }
        self.new_chunks += 1;
        self.new_bytes += data.len() as u64;
        self.frame_chunks.push((id, self.frame.len() as u32, data.len() as u32));
        self.frame.extend_from_slice(data);
        if self.frame.len() >= FRAME_TARGET {
            self.close_frame();
            if self.pending.len() >= FRAMES_PER_FLUSH {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn close_frame(&mut self) {
        if self.frame_chunks.is_empty() {
            return;
        }
        let raw = std::mem::replace(&mut self.frame, Vec::with_capacity(FRAME_TARGET + (256 << 10)));
        self.pending.push((raw, std::mem::take(&mut self.frame_chunks)));
    }

    fn flush(&mut self) -> Result<()> {
        let level = self.level;
        let compressed: Vec<Vec<u8>> = self
            .pending
            .par_iter()
            .map(|(raw, _)| compress_frame(raw, level))
            .collect::<io::Result<_>>()?;
        for ((raw, chunks), c) in self.pending.drain(..).zip(compressed) {
            self.pack.add_frame(&c, raw.len() as u32, &chunks)?;
            self.stored_bytes += c.len() as u64;
            if self.pack.len >= PACK_TARGET {
                if let Some(p) = self.pack.close()? {
                    self.packs.push(p);
                }
            }
        }
        Ok(())
    }

    /// Write out everything pushed so far and close the open pack.
    pub fn finish(&mut self) -> Result<()> {
        self.close_frame();
        self.flush()?;
        if let Some(p) = self.pack.close()? {
            self.packs.push(p);
        }
        Ok(())
    }
}

fn io_err(p: &Path, e: io::Error) -> Error {
    Error::Io(io::Error::new(e.kind(), format!("{}: {e}", p.display())))
}

fn changed(p: &Path) -> Error {
    Error::Invalid(format!(
        "{} changed while it was being committed; commit a tree nothing else is writing to",
        p.display()
    ))
}

/// Read a small file's data (its extents, when sparse) in one buffer.
fn read_whole(job: &FileJob) -> Result<Vec<u8>> {
    let f = File::open(&job.source).map_err(|e| io_err(&job.source, e))?;
    let mut data = Vec::with_capacity(job.size as usize);
    match &job.extents {
        None => {
            (&f).take(job.size + 1)
                .read_to_end(&mut data)
                .map_err(|e| io_err(&job.source, e))?;
            if data.len() as u64 != job.size {
                return Err(changed(&job.source));
            }
        }
        Some(ext) => {
            for x in ext {
                let start = data.len();
                data.resize(start + x.len as usize, 0);
                f.read_exact_at(&mut data[start..], x.offset)
                    .map_err(|_| changed(&job.source))?;
            }
        }
    }
    Ok(data)
}

/// A reader over a large file's data extents, for streaming.
struct ExtentReader {
    file: File,
    extents: Vec<(u64, u64)>,
    current: usize,
    done_in_current: u64,
}

impl Read for ExtentReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(&(off, len)) = self.extents.get(self.current) {
            if self.done_in_current == len {
                self.current += 1;
                self.done_in_current = 0;
                continue;
            }
            let want = (len - self.done_in_current).min(buf.len() as u64) as usize;
            let n = self.file.read_at(&mut buf[..want], off + self.done_in_current)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank"));
            }
            self.done_in_current += n as u64;
            return Ok(n);
        }
        Ok(0)
    }
}

fn os_release(tree: &Path) -> Vec<(String, String)> {
    for rel in ["etc/os-release", "usr/lib/os-release"] {
        let p = tree.join(rel);
        // Only a regular file inside the tree: never follow a link out of it.
        if !std::fs::symlink_metadata(&p).map(|m| m.is_file()).unwrap_or(false) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue;
        };
        return text
            .lines()
            .filter_map(|l| l.split_once('='))
            .filter(|(k, _)| ["PRETTY_NAME", "ID", "VERSION_ID", "VERSION_CODENAME"].contains(k))
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
            .collect();
    }
    Vec::new()
}

/// Commit the tree at `tree` to `opts.channel`.
pub fn commit(repo: &Repo, tree: &Path, opts: &CommitOptions<'_>, progress: &dyn Progress) -> Result<CommitStats> {
    commit_with_hook(repo, tree, opts, progress, &mut || Ok(()))
}

/// [`commit`], calling `before_publish` once every object is written and
/// before the channel moves: tests run a gc at that very instant.
pub fn commit_with_hook(
    repo: &Repo,
    tree: &Path,
    opts: &CommitOptions<'_>,
    progress: &dyn Progress,
    before_publish: &mut dyn FnMut() -> Result<()>,
) -> Result<CommitStats> {
    crate::channel::check_name(opts.channel)?;
    let _lock = repo.lock()?;
    // Before the index: a pack gc records as dead from now on is one this
    // commit may reuse, and the guard's clock covers it.
    let guard = WriteGuard::start(repo)?;
    let index = ChunkIndex::load_excluding(repo.storage.as_ref(), &guard.pending_packs)?;
    // The channel as read now decides the parent; on an object store the
    // final update succeeds only if no other writer moved it meanwhile.
    let (history, expected) = repo.channel_history_expecting(opts.channel)?;
    let parent = history.last().copied();

    let scanned = scan(tree)?;
    let mut m = scanned.manifest;
    let files = scanned.files;
    let total: u64 = files.iter().map(|f| f.size).sum();
    progress.start("commit", total);

    let params = repo.config.chunker;
    let storage = repo.storage.as_ref();
    let mut asm = Assembler::new(storage, &index, repo.config.compression_level);

    let mut i = 0;
    while i < files.len() {
        if files[i].size > WHOLE_FILE_MAX {
            let job = &files[i];
            let f = File::open(&job.source).map_err(|e| io_err(&job.source, e))?;
            let extents = job
                .extents
                .clone()
                .map(|e| e.iter().map(|x| (x.offset, x.len)).collect())
                .unwrap_or_else(|| vec![(0, job.size)]);
            let reader = ExtentReader {
                file: f,
                extents,
                current: 0,
                done_in_current: 0,
            };
            let mut chunks = Vec::new();
            for c in fastcdc::v2020::StreamCDC::new(reader, params.min, params.avg, params.max) {
                let c = c.map_err(|_| changed(&job.source))?;
                let id = ChunkId::of(&c.data);
                asm.push(id, &c.data)?;
                chunks.push(ChunkRef {
                    id,
                    len: c.length as u32,
                });
                progress.advance(c.length as u64);
            }
            set_chunks(&mut m, job, chunks)?;
            i += 1;
            continue;
        }
        let mut j = i;
        let mut window = 0;
        while j < files.len() && files[j].size <= WHOLE_FILE_MAX && window < WINDOW_BYTES {
            window += files[j].size;
            j += 1;
        }
        let results: Vec<ChunkedFile> = files[i..j]
            .par_iter()
            .map(|job| {
                let data = read_whole(job)?;
                let cuts = params
                    .cut(&data)
                    .into_iter()
                    .map(|(off, len)| {
                        (
                            off,
                            ChunkRef {
                                id: ChunkId::of(&data[off..off + len]),
                                len: len as u32,
                            },
                        )
                    })
                    .collect();
                progress.advance(job.size);
                Ok((data, cuts))
            })
            .collect::<Result<_>>()?;
        for (job, (data, cuts)) in files[i..j].iter().zip(results) {
            for (off, c) in &cuts {
                asm.push(c.id, &data[*off..*off + c.len as usize])?;
            }
            set_chunks(&mut m, job, cuts.into_iter().map(|(_, c)| c).collect())?;
        }
        i = j;
    }
    progress.finish();

    let metadata = os_release(tree);
    finish_commit(
        repo,
        &mut asm,
        &m,
        parent,
        (history, expected),
        opts,
        metadata,
        files.len() as u64,
        (&guard, before_publish),
    )
}

/// Commit a manifest whose file chunks the repository already holds (or
/// that `asm` has just stored): store the manifest, the snapshot record and
/// its signature, sync, then move the channel.
#[allow(clippy::too_many_arguments)]
fn finish_commit(
    repo: &Repo,
    asm: &mut Assembler<'_>,
    m: &manifest::Manifest,
    parent: Option<SnapshotId>,
    (mut history, expected): (Vec<SnapshotId>, Expected),
    opts: &CommitOptions<'_>,
    os_metadata: Vec<(String, String)>,
    files: u64,
    (guard, before_publish): (&WriteGuard, &mut dyn FnMut() -> Result<()>),
) -> Result<CommitStats> {
    // The manifest travels and deduplicates like file content.
    let encoded = manifest::encode(m);
    let mut manifest_chunks = Vec::new();
    for (off, len) in repo.config.chunker.cut(&encoded) {
        let data = &encoded[off..off + len];
        let id = ChunkId::of(data);
        asm.push(id, data)?;
        manifest_chunks.push(ChunkRef { id, len: len as u32 });
    }
    asm.finish()?;

    // The caller's metadata overrides what os-release says.
    let metadata: Vec<(String, String)> = os_metadata
        .into_iter()
        .chain(opts.metadata.iter().cloned())
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    let snap = Snapshot {
        manifest: ManifestRef {
            hash: Id32::hash(&encoded),
            size: encoded.len() as u64,
            chunks: manifest_chunks,
        },
        parent,
        time_ns: now,
        channel: opts.channel.to_string(),
        message: opts.message.clone(),
        metadata,
        entries: m.entries.len() as u64,
        file_bytes: m.total_file_bytes(),
    };
    let id = repo.write_snapshot(&snap)?;
    if let Some(key) = opts.sign {
        repo.add_signature(&id, SnapshotSignature::sign(&id, key))?;
    }
    // The commit point: everything above is durable before the channel
    // names it.
    repo.storage.sync()?;
    before_publish()?;
    guard.check_before_publish(repo)?;
    history.push(id);
    repo.set_channel_history_if(opts.channel, &history, &expected)?;

    Ok(CommitStats {
        snapshot: id.to_hex(),
        parent: parent.map(|p| p.to_hex()),
        entries: m.entries.len() as u64,
        files,
        file_bytes: snap.file_bytes,
        new_chunks: asm.new_chunks,
        new_bytes: asm.new_bytes,
        stored_bytes: asm.stored_bytes,
        packs: asm.packs.len() as u64,
    })
}

/// Commit a prebuilt manifest, with the content of its files given by
/// chunk id in `content` (chunks the repository holds may be left out).
/// Used to import trees from elsewhere, and by tests to build repositories
/// holding hostile manifests: nothing here validates paths, on purpose;
/// every reader does.
pub fn commit_manifest(
    repo: &Repo,
    m: &manifest::Manifest,
    content: &[(ChunkId, Vec<u8>)],
    opts: &CommitOptions<'_>,
) -> Result<CommitStats> {
    crate::channel::check_name(opts.channel)?;
    let _lock = repo.lock()?;
    let guard = WriteGuard::start(repo)?;
    let index = ChunkIndex::load_excluding(repo.storage.as_ref(), &guard.pending_packs)?;
    let (history, expected) = repo.channel_history_expecting(opts.channel)?;
    let parent = history.last().copied();
    let mut asm = Assembler::new(repo.storage.as_ref(), &index, repo.config.compression_level);
    for (id, data) in content {
        if ChunkId::of(data) != *id {
            return Err(Error::Invalid(format!(
                "content given for chunk {id} does not hash to it"
            )));
        }
        asm.push(*id, data)?;
    }
    let files = m.entries.iter().filter(|e| matches!(e.kind, Kind::File(_))).count() as u64;
    finish_commit(
        repo,
        &mut asm,
        m,
        parent,
        (history, expected),
        opts,
        Vec::new(),
        files,
        (&guard, &mut || Ok(())),
    )
}

fn set_chunks(m: &mut manifest::Manifest, job: &FileJob, chunks: Vec<ChunkRef>) -> Result<()> {
    match &mut m.entries[job.entry].kind {
        Kind::File(f) => {
            let total: u64 = chunks.iter().map(|c| c.len as u64).sum();
            f.chunks = chunks;
            if total != f.data_len() {
                return Err(changed(&job.source));
            }
            Ok(())
        }
        _ => unreachable!("file jobs point at file entries"),
    }
}

/// Sign an existing snapshot with another key.
pub fn sign(repo: &Repo, id: &SnapshotId, key: &SecretKey) -> Result<()> {
    let _lock = repo.lock()?;
    repo.read_snapshot(id)?;
    repo.add_signature(id, SnapshotSignature::sign(id, key))?;
    repo.storage.sync()?;
    Ok(())
}
