//! A backup run: scan each directory, reuse the chunks of files whose
//! stamp is unchanged, read the others, cut them with the repository's
//! chunker, and seal the chunks the repository lacks into packs, on every
//! core. Each full pack is stored, then its index, so a run killed at any
//! instant leaves only whole objects and the next run reuses every pack it
//! had indexed. The snapshot record is written last.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use slate_core::manifest::{ChunkRef, Extent, Kind};
use slate_core::ChunkId;
use slate_repo::progress::Progress;

use crate::cache::{self, CachedFile, FileCache, Stamp};
use crate::error::{local, Error, Result};
use crate::format::{seal_blob, BlobEntry, Snapshot, SnapshotRoot, FORMAT_VERSION};
use crate::repo::{now_ns, HomeRepo, PackUpload};

/// Raw bytes read per parallel batch.
const BATCH_BYTES: usize = 32 << 20;
/// A file is read in windows this large.
const WINDOW: usize = 8 << 20;
/// Dense files up to this size are read whole, many at once.
const SMALL_FILE: u64 = 1 << 20;
/// Default size a pack is closed at.
pub const PACK_TARGET: usize = 24 << 20;

/// What to back up and how.
#[derive(Clone, Debug)]
pub struct BackupOptions {
    /// Absolute directories to back up.
    pub paths: Vec<PathBuf>,
    /// The host name recorded in the snapshot.
    pub host: String,
    /// The user recorded in the snapshot.
    pub user: String,
    /// zstd level for chunks.
    pub compression_level: i32,
    /// Bytes at which a pack is closed.
    pub pack_target: usize,
}

/// What a backup did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BackupStats {
    /// The new snapshot's id.
    pub snapshot: String,
    /// When it started (Unix nanoseconds).
    pub time_ns: i64,
    /// Regular files in the snapshot (hard links counted once).
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Entries of every type.
    pub entries: u64,
    /// Files that were read (the others were unchanged).
    pub files_read: u64,
    /// Bytes read from them.
    pub bytes_read: u64,
    /// Chunks the repository did not hold.
    pub new_chunks: u64,
    /// Sealed bytes added to the repository.
    pub added_bytes: u64,
    /// Packs stored.
    pub packs: u64,
}

/// A file to read and where its result goes.
struct ReadJob {
    entry: usize,
    source: PathBuf,
    abs: Vec<u8>,
    stamp: Stamp,
    extents: Option<Vec<Extent>>,
}

/// A run of a file's data with its chunk cut points.
struct Piece {
    job: usize,
    data: Vec<u8>,
    cuts: Vec<(usize, usize)>,
    last: bool,
}

/// Reads a sparse file's data extents back to back; a file that shrank
/// reads as zeros past its end (it changed while being backed up).
struct ExtentReader {
    file: File,
    extents: Vec<Extent>,
    current: usize,
    done: u64,
}

impl Read for ExtentReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(x) = self.extents.get(self.current) {
            if self.done == x.len {
                self.current += 1;
                self.done = 0;
                continue;
            }
            let want = (x.len - self.done).min(buf.len() as u64) as usize;
            let mut n = self.file.read_at(&mut buf[..want], x.offset + self.done)?;
            if n == 0 {
                buf[..want].fill(0);
                n = want;
            }
            self.done += n as u64;
            return Ok(n);
        }
        Ok(0)
    }
}

/// Produces pieces of the files to read, in order, a batch at a time.
struct PieceReader<'a> {
    jobs: &'a [ReadJob],
    chunker: slate_core::chunker::ChunkerParams,
    next_job: usize,
    current: Option<(usize, Box<dyn Read + Send>)>,
    carry: Vec<u8>,
    /// Data bytes each file should hold (its size, or its extents' total).
    expected: Vec<u64>,
    /// Bytes read so far from the current file.
    consumed: u64,
}

impl PieceReader<'_> {
    fn open(&self, i: usize) -> Result<Box<dyn Read + Send>> {
        let job = &self.jobs[i];
        let f = File::open(&job.source).map_err(|e| local(format!("cannot read {}", job.source.display()), e))?;
        Ok(match &job.extents {
            None => Box::new(f),
            Some(x) => Box::new(ExtentReader {
                file: f,
                extents: x.clone(),
                current: 0,
                done: 0,
            }),
        })
    }

    /// Whether job `i` is a small dense file, read whole in parallel with others.
    fn is_small(&self, i: usize) -> bool {
        self.jobs[i].extents.is_none() && self.expected[i] <= SMALL_FILE
    }

    /// The next batch of pieces (empty when every file is read).
    fn next_batch(&mut self) -> Result<Vec<Piece>> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while bytes < BATCH_BYTES {
            if self.current.is_none() {
                if self.next_job == self.jobs.len() {
                    break;
                }
                if self.is_small(self.next_job) {
                    // A run of small files: opening and reading them costs
                    // system calls more than bytes, so read them on every core.
                    let start = self.next_job;
                    let mut end = start;
                    let mut run_bytes = 0usize;
                    while end < self.jobs.len() && self.is_small(end) && bytes + run_bytes < BATCH_BYTES {
                        run_bytes += self.expected[end] as usize;
                        end += 1;
                    }
                    let (jobs, expected, chunker) = (self.jobs, &self.expected, self.chunker);
                    let pieces: Vec<Piece> = (start..end)
                        .into_par_iter()
                        .map(|i| read_small(&jobs[i], i, expected[i], chunker))
                        .collect::<Result<_>>()?;
                    bytes += pieces.iter().map(|p| p.data.len()).sum::<usize>();
                    out.extend(pieces);
                    self.next_job = end;
                    continue;
                }
                let r = self.open(self.next_job)?;
                self.current = Some((self.next_job, r));
                self.next_job += 1;
            }
            let (job, reader) = self.current.as_mut().unwrap();
            let job = *job;
            let mut data = std::mem::take(&mut self.carry);
            let start = data.len();
            // What the file should still hold (at most a window), plus one
            // byte: a short read then means the end of the file.
            let remaining = self.expected[job].saturating_sub(self.consumed);
            let want = remaining.min(WINDOW as u64) + 1;
            data.reserve_exact(want as usize);
            let n = reader
                .by_ref()
                .take(want)
                .read_to_end(&mut data)
                .map_err(|e| local(format!("cannot read {}", self.jobs[job].source.display()), e))?;
            let eof = (n as u64) < want;
            let filled = data.len();
            self.consumed += (filled - start) as u64;
            let mut cuts = self.chunker.cut(&data);
            if !eof {
                // The last cut may only end because the window did: carry
                // it into the next window, where the chunker sees it whole.
                if let Some((off, _)) = cuts.pop() {
                    self.carry = data[off..].to_vec();
                    data.truncate(off);
                }
            } else {
                self.current = None;
                self.consumed = 0;
            }
            data.shrink_to_fit();
            bytes += data.len();
            out.push(Piece {
                job,
                data,
                cuts,
                last: eof,
            });
        }
        Ok(out)
    }
}

/// Read a small file whole (to its end, should it have grown) and cut it.
fn read_small(
    job: &ReadJob,
    index: usize,
    expected: u64,
    chunker: slate_core::chunker::ChunkerParams,
) -> Result<Piece> {
    let mut f = File::open(&job.source).map_err(|e| local(format!("cannot read {}", job.source.display()), e))?;
    let mut data = Vec::with_capacity(expected as usize + 1);
    f.read_to_end(&mut data)
        .map_err(|e| local(format!("cannot read {}", job.source.display()), e))?;
    Ok(Piece {
        job: index,
        cuts: chunker.cut(&data),
        data,
        last: true,
    })
}

/// Collects sealed blobs into a pack and stores it when full.
struct PackWriter {
    buf: Vec<u8>,
    blobs: Vec<BlobEntry>,
    pending: HashSet<ChunkId>,
    target: usize,
    packs: u64,
    added: u64,
    new_chunks: u64,
    /// Full packs go to the upload thread, which stores them while the
    /// next ones fill (two at most wait, bounding memory).
    uploads: std::sync::mpsc::SyncSender<PackUpload>,
    uploader: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Drop for PackWriter {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Start the thread that stores packs in order, stopping at the first error.
fn start_uploader(
    backend: std::sync::Arc<dyn crate::backend::Backend>,
) -> (
    std::sync::mpsc::SyncSender<PackUpload>,
    std::thread::JoinHandle<Result<()>>,
) {
    let (tx, rx) = std::sync::mpsc::sync_channel::<PackUpload>(1);
    let handle = std::thread::spawn(move || {
        for upload in rx {
            upload.store(backend.as_ref())?;
        }
        Ok(())
    });
    (tx, handle)
}

impl PackWriter {
    fn has(&self, repo: &HomeRepo, id: &ChunkId) -> bool {
        repo.index.contains_key(id) || self.pending.contains(id)
    }

    fn add(&mut self, repo: &mut HomeRepo, id: ChunkId, raw_len: u32, sealed: &[u8]) -> Result<()> {
        if self.has(repo, &id) {
            return Ok(());
        }
        self.blobs.push(BlobEntry {
            id,
            offset: self.buf.len() as u64,
            len: sealed.len() as u32,
            raw_len,
        });
        self.buf.extend_from_slice(sealed);
        self.pending.insert(id);
        self.added += sealed.len() as u64;
        self.new_chunks += 1;
        if self.buf.len() >= self.target {
            self.flush(repo)?;
        }
        Ok(())
    }

    fn flush(&mut self, repo: &mut HomeRepo) -> Result<()> {
        if self.blobs.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(self.target + (1 << 20)));
        let upload = repo.seal_pack(data, std::mem::take(&mut self.blobs));
        self.pending.clear();
        self.packs += 1;
        if self.uploads.send(upload).is_err() {
            // The uploader stopped on an error, which finish() returns.
            return self.finish();
        }
        Ok(())
    }

    /// Wait for every upload; the first error if one failed.
    fn finish(&mut self) -> Result<()> {
        let (dead, _) = std::sync::mpsc::sync_channel(1);
        drop(std::mem::replace(&mut self.uploads, dead));
        match self.uploader.take() {
            Some(h) => h
                .join()
                .unwrap_or_else(|_| Err(Error::Storage("the upload thread failed".into()))),
            None => Ok(()),
        }
    }
}

/// Ids of a batch's chunks and the sealed blobs of those the repository lacks.
struct Processed {
    ids: Vec<Vec<ChunkId>>,
    sealed: Vec<(ChunkId, u32, Vec<u8>)>,
}

fn process(repo: &HomeRepo, packer: &PackWriter, pieces: &[Piece], level: i32) -> Processed {
    let ids: Vec<Vec<ChunkId>> = pieces
        .par_iter()
        .map(|p| {
            p.cuts
                .par_iter()
                .map(|&(o, l)| repo.keys.chunk_id(&p.data[o..o + l]))
                .collect()
        })
        .collect();
    let mut seen = HashSet::new();
    let mut todo = Vec::new();
    for (pi, p) in pieces.iter().enumerate() {
        for (ci, id) in ids[pi].iter().enumerate() {
            if !packer.has(repo, id) && seen.insert(*id) {
                todo.push((pi, p.cuts[ci], *id));
            }
        }
    }
    let sealed = todo
        .par_iter()
        .map(|&(pi, (o, l), id)| {
            let data = &pieces[pi].data[o..o + l];
            (id, l as u32, seal_blob(&repo.keys, &id, data, level))
        })
        .collect();
    Processed { ids, sealed }
}

/// Store bytes as chunks (a manifest); returns their ids and lengths.
fn store_bytes(repo: &mut HomeRepo, packer: &mut PackWriter, data: &[u8], level: i32) -> Result<Vec<(ChunkId, u32)>> {
    let piece = Piece {
        job: 0,
        cuts: repo.config.chunker().cut(data),
        data: data.to_vec(),
        last: true,
    };
    let p = process(repo, packer, std::slice::from_ref(&piece), level);
    for (id, len, sealed) in p.sealed {
        packer.add(repo, id, len, &sealed)?;
    }
    Ok(p.ids[0]
        .iter()
        .zip(&piece.cuts)
        .map(|(id, c)| (*id, c.1 as u32))
        .collect())
}

/// Back up `opts.paths` into `repo`.
pub fn backup(repo: &mut HomeRepo, opts: &BackupOptions, progress: &dyn Progress) -> Result<BackupStats> {
    let _lock = crate::lock::lock(repo, false)?;
    repo.reload_index()?;
    let started = now_ns();
    let cache_path = repo.cache_dir.join("files");
    let old_cache = cache::load(&cache_path);
    let mut new_cache = FileCache::with_capacity(old_cache.len());
    let (uploads, uploader) = start_uploader(repo.backend.clone());
    let mut packer = PackWriter {
        uploads,
        uploader: Some(uploader),
        buf: Vec::with_capacity(opts.pack_target + (1 << 20)),
        blobs: Vec::new(),
        pending: HashSet::new(),
        target: opts.pack_target,
        packs: 0,
        added: 0,
        new_chunks: 0,
    };
    let mut stats = BackupStats {
        time_ns: started,
        ..Default::default()
    };
    let mut roots = Vec::new();
    for root in &opts.paths {
        let mut scan = slate_repo::scan::scan(root)?;
        let mut jobs = Vec::new();
        for job in scan.files {
            let mut abs = root.as_os_str().as_bytes().to_vec();
            abs.push(b'/');
            abs.extend_from_slice(&scan.manifest.entries[job.entry].path);
            let md = std::fs::symlink_metadata(&job.source)
                .map_err(|e| local(format!("cannot read {}", job.source.display()), e))?;
            let stamp = Stamp::of(&md);
            let Kind::File(fd) = &mut scan.manifest.entries[job.entry].kind else {
                unreachable!("scan lists regular files only")
            };
            if let Some(c) = old_cache.get(&abs) {
                let total: u64 = c.chunks.iter().map(|c| c.len as u64).sum();
                if c.stamp == stamp
                    && stamp.size == fd.size
                    && total == fd.data_len()
                    && c.chunks.iter().all(|c| repo.index.contains_key(&c.id))
                {
                    fd.chunks = c.chunks.clone();
                    new_cache.insert(abs, c.clone());
                    continue;
                }
            }
            jobs.push(ReadJob {
                entry: job.entry,
                source: job.source,
                abs,
                stamp,
                extents: job.extents,
            });
        }
        let total: u64 = jobs.iter().map(|j| j.stamp.size).sum();
        progress.start(&format!("backup {}", root.display()), total);
        let mut reader = PieceReader {
            jobs: &jobs,
            chunker: repo.config.chunker(),
            next_job: 0,
            current: None,
            carry: Vec::new(),
            expected: jobs
                .iter()
                .map(|j| match &j.extents {
                    None => j.stamp.size,
                    Some(x) => x.iter().map(|e| e.len).sum(),
                })
                .collect(),
            consumed: 0,
        };
        let mut chunks_of: Vec<Vec<ChunkRef>> = vec![Vec::new(); jobs.len()];
        let mut batch = reader.next_batch()?;
        while !batch.is_empty() {
            // Read the next batch while this one is hashed and sealed.
            let (next, done) = rayon::join(
                || reader.next_batch(),
                || process(repo, &packer, &batch, opts.compression_level),
            );
            for (id, len, sealed) in done.sealed {
                packer.add(repo, id, len, &sealed)?;
            }
            for (pi, piece) in batch.iter().enumerate() {
                let refs = &mut chunks_of[piece.job];
                refs.extend(done.ids[pi].iter().zip(&piece.cuts).map(|(id, c)| ChunkRef {
                    id: *id,
                    len: c.1 as u32,
                }));
                progress.advance(piece.data.len() as u64);
                stats.bytes_read += piece.data.len() as u64;
                if piece.last {
                    let job = &jobs[piece.job];
                    let refs = std::mem::take(refs);
                    let Kind::File(fd) = &mut scan.manifest.entries[job.entry].kind else {
                        unreachable!("scan lists regular files only")
                    };
                    let read: u64 = refs.iter().map(|c| c.len as u64).sum();
                    if fd.extents.is_none() {
                        // A file that grew or shrank since the scan is kept as read.
                        fd.size = read;
                    }
                    fd.chunks = refs.clone();
                    stats.files_read += 1;
                    if read == job.stamp.size || fd.extents.is_some() {
                        new_cache.insert(
                            job.abs.clone(),
                            CachedFile {
                                stamp: job.stamp,
                                chunks: refs,
                            },
                        );
                    }
                }
            }
            batch = next?;
        }
        progress.finish();
        let m = &scan.manifest;
        stats.entries += m.entries.len() as u64;
        stats.files += m.entries.iter().filter(|e| matches!(e.kind, Kind::File(_))).count() as u64;
        stats.bytes += m.total_file_bytes();
        let encoded = slate_core::manifest::encode(m);
        let manifest = store_bytes(repo, &mut packer, &encoded, opts.compression_level)?;
        roots.push(SnapshotRoot {
            path: root.to_str().map(str::to_string).ok_or_else(|| {
                Error::Invalid(format!(
                    "{} is not valid UTF-8; back up a directory with a UTF-8 path",
                    root.display()
                ))
            })?,
            manifest: manifest.iter().map(|(id, len)| (id.to_hex(), *len)).collect(),
        });
    }
    packer.flush(repo)?;
    packer.finish()?;
    let snap = Snapshot {
        version: FORMAT_VERSION,
        time_ns: started,
        host: opts.host.clone(),
        user: opts.user.clone(),
        roots,
        files: stats.files,
        bytes: stats.bytes,
        entries: stats.entries,
        added_bytes: packer.added,
    };
    stats.snapshot = repo.write_snapshot(&snap)?;
    stats.new_chunks = packer.new_chunks;
    stats.added_bytes = packer.added;
    stats.packs = packer.packs;
    cache::save(&cache_path, &new_cache)?;
    Ok(stats)
}

/// Check the directories to back up: absolute, existing directories.
pub fn check_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        let abs = if p.is_absolute() {
            p.clone()
        } else {
            std::env::current_dir()
                .map_err(|e| local("cannot read the current directory", e))?
                .join(p)
        };
        let abs = normalize(&abs);
        match std::fs::symlink_metadata(&abs) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => {
                return Err(Error::Invalid(format!(
                    "{} is not a directory; give directories to back up",
                    abs.display()
                )))
            }
            Err(e) => return Err(local(format!("cannot back up {}", abs.display()), e)),
        }
        if out.contains(&abs) {
            continue;
        }
        out.push(abs);
    }
    Ok(out)
}

/// Drop `.` components and trailing slashes without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    p.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}
