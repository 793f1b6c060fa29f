//! Using a prepared delta: download it in ranges (kept on disk, so a killed
//! pass resumes where it stopped), then rebuild each item's chunks from
//! the machine's own copy of the reference and the patch, check every
//! chunk against its id, and keep them in a local chunk store that the
//! slot writer reads like any repository.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use slate_core::delta::{needs_more, DeltaHeader, MAX_HEADER_LEN, MAX_ITEM_BYTES, WINDOW_LOG};
use slate_core::{ChunkId, SnapshotId};
use slate_repo::checkout::ChunkSource;
use slate_repo::commit::Assembler;
use slate_repo::index::ChunkIndex;
use slate_repo::storage::{LocalStorage, Storage};

use crate::error::{Error, Result};
use crate::http::Http;

/// Delta bytes fetched per request (and redone at most, after a kill).
const PIECE: u64 = 8 << 20;
/// Largest delta file accepted.
const MAX_DELTA: u64 = 8 << 30;

/// Download the delta from `from` to `to` into `dir`, resuming a partial
/// download; None when the server prepared no such delta.
pub fn download(
    http: &Http,
    from: &SnapshotId,
    to: &SnapshotId,
    dir: &Path,
    progress: &dyn slate_repo::progress::Progress,
) -> Result<Option<PathBuf>> {
    download_from(http, "/v1/repo/", true, from, to, dir, progress)
}

/// [`download`] from `http`, whose repository keys are below `prefix`
/// (`/v1/repo/` on a fleet server, `/` on an objects URL). A partial
/// download is dropped on a 404 only when `authoritative` (a fleet server
/// saying the delta is gone, not an objects URL that lacks it).
fn download_from(
    http: &Http,
    prefix: &str,
    authoritative: bool,
    from: &SnapshotId,
    to: &SnapshotId,
    dir: &Path,
    progress: &dyn slate_repo::progress::Progress,
) -> Result<Option<PathBuf>> {
    let name = format!("{}-{}", from.to_hex(), to.to_hex());
    let done = dir.join(format!("{name}.delta"));
    if done.exists() {
        return Ok(Some(done));
    }
    let part = dir.join(format!("{name}.part"));
    std::fs::create_dir_all(dir).map_err(|e| Error::Local(format!("cannot create {}: {e}", dir.display())))?;
    let path = format!("{prefix}{}", slate_repo::delta::delta_key(from, to));
    // Pieces already on disk were synced when written: keep them.
    let mut have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    have -= have % PIECE;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&part)
        .map_err(|e| Error::Local(format!("cannot open {}: {e}", part.display())))?;
    file.set_len(have)
        .map_err(|e| Error::Local(format!("{}: {e}", part.display())))?;
    let mut total = None;
    let mut started = false;
    loop {
        if total.is_some_and(|t| have >= t) {
            break;
        }
        let Some((bytes, t)) = http.get_chunked(&path, have, PIECE)? else {
            if authoritative {
                let _ = std::fs::remove_file(&part);
            }
            return Ok(None);
        };
        if t > MAX_DELTA {
            return Err(Error::Server(format!(
                "the delta on {} claims {t} bytes",
                http.server()
            )));
        }
        if !started {
            progress.start("delta", t);
            progress.advance(have);
            started = true;
        }
        total = Some(t);
        use std::io::Write;
        file.write_all(&bytes)
            .and_then(|_| file.sync_data())
            .map_err(|e| Error::Local(format!("cannot write {}: {e}", part.display())))?;
        have += bytes.len() as u64;
        progress.advance(bytes.len() as u64);
    }
    progress.finish();
    drop(file);
    std::fs::rename(&part, &done).map_err(|e| Error::Local(format!("cannot rename {}: {e}", part.display())))?;
    Ok(Some(done))
}

/// Download the delta from `from` to `to` and rebuild its chunks into
/// `store_dir` (see [`download`] and [`apply`]); None when the server has
/// no such delta. The objects URLs of the assignment are asked first
/// (every chunk rebuilt from a delta is checked against its id, and only
/// chunks the target's manifest names are used); whatever fails there
/// (no answer, 404, a delta that fails its checks) is logged and the
/// fleet servers are asked. A partial download is kept across sources
/// (a delta's name fixes its content); one that then fails its checks
/// is deleted and fetched again. A delta from the fleet servers that
/// fails its checks is deleted with the chunks rebuilt so far; if any of
/// it came from the cache (an earlier pass's download, damaged or
/// replaced on disk since, or another source's) it is downloaded once
/// more, otherwise the fault is the server's and the error says so.
#[allow(clippy::too_many_arguments)]
pub fn fetch_and_apply(
    http: &Http,
    from: &SnapshotId,
    to: &SnapshotId,
    dir: &Path,
    store_dir: &Path,
    local: &mut dyn ChunkSource,
    known: &HashMap<ChunkId, Vec<u8>>,
    progress: &dyn slate_repo::progress::Progress,
) -> Result<Option<ChunkIndex>> {
    let name = format!("{}-{}", from.to_hex(), to.to_hex());
    let what = format!("delta {}..{}", &from.to_hex()[..12], &to.to_hex()[..12]);
    for src in http.objects_sources() {
        match download_from(&src.http, "/", false, from, to, dir, progress) {
            // Most snapshots have no prepared delta: not the URL's fault.
            Ok(None) => http.object_failed(src, &what, "not there", false),
            Ok(Some(file)) => match apply(&file, from, to, store_dir, local, known) {
                Ok(i) => return Ok(Some(i)),
                Err(Error::Untrusted(e)) => {
                    let _ = std::fs::remove_file(&file);
                    let _ = std::fs::remove_dir_all(store_dir);
                    http.object_failed(src, &what, &format!("refused: {e}"), true);
                }
                Err(e) => return Err(e),
            },
            Err(e) => http.object_failed(src, &what, &e.to_string(), true),
        }
    }
    let mut cached = dir.join(format!("{name}.delta")).exists() || dir.join(format!("{name}.part")).exists();
    loop {
        let Some(file) = download(http, from, to, dir, progress)? else {
            return Ok(None);
        };
        match apply(&file, from, to, store_dir, local, known) {
            Ok(i) => return Ok(Some(i)),
            Err(Error::Untrusted(e)) => {
                let _ = std::fs::remove_file(&file);
                let _ = std::fs::remove_dir_all(store_dir);
                if !cached {
                    return Err(Error::Untrusted(format!("{e} (as served by {})", http.server())));
                }
                tracing::warn!("the cached {e}: discarding it and downloading it again");
                cached = false;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The index of the chunk store a killed pass left in `dir`, if every
/// chunk in it still reads back and matches its id; otherwise the store
/// is emptied (its chunks are rebuilt from the delta), never used.
fn sound_store(dir: &Path) -> Result<ChunkIndex> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Local(format!("cannot create {}: {e}", dir.display())))?;
    let storage = LocalStorage::new(dir);
    let checked = ChunkIndex::load(&storage).map_err(|e| e.to_string()).and_then(|index| {
        let mut reader = slate_repo::reader::ChunkReader::new(&storage, &index);
        let ids: Vec<ChunkId> = index.locations().map(|l| l.entry.id).collect();
        for id in &ids {
            reader.with_chunk(id, |_| ()).map_err(|e| e.to_string())?;
        }
        Ok(index)
    });
    match checked {
        Ok(index) => Ok(index),
        Err(e) => {
            tracing::warn!("discarding the chunks rebuilt from a delta in {}: {e}", dir.display());
            std::fs::remove_dir_all(dir).map_err(|e| Error::Local(format!("cannot remove {}: {e}", dir.display())))?;
            std::fs::create_dir_all(dir).map_err(|e| Error::Local(format!("cannot create {}: {e}", dir.display())))?;
            Ok(ChunkIndex::default())
        }
    }
}

/// Rebuild the chunks of the delta at `file` into a chunk store under
/// `store_dir`; references come from `local` (the machine's slots) and
/// `known` (chunks of manifests it holds). Returns the store's index.
pub fn apply(
    file: &Path,
    from: &SnapshotId,
    to: &SnapshotId,
    store_dir: &Path,
    local: &mut dyn ChunkSource,
    known: &HashMap<ChunkId, Vec<u8>>,
) -> Result<ChunkIndex> {
    let bad = |d: String| {
        Error::Untrusted(format!(
            "delta {}..{} is corrupt: {d}",
            &from.to_hex()[..12],
            &to.to_hex()[..12]
        ))
    };
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(file).map_err(|e| Error::Local(format!("cannot read {}: {e}", file.display())))?;
    let size = f
        .metadata()
        .map_err(|e| Error::Local(format!("{}: {e}", file.display())))?
        .len();
    // The table is at the front; read more of it until it decodes, never
    // the whole file (a delta can be larger than the agent's memory budget).
    // Bounded by MAX_HEADER_LEN, so a forged count cannot make the agent
    // read a whole multi-gigabyte file into memory.
    let limit = size.min(MAX_HEADER_LEN);
    let mut want = (1u64 << 20).min(limit);
    let (header, off) = loop {
        let mut head = vec![0u8; want as usize];
        f.read_exact_at(&mut head, 0)
            .map_err(|e| Error::Local(format!("cannot read {}: {e}", file.display())))?;
        match DeltaHeader::decode(&head) {
            Ok(h) => break h,
            Err(e) if needs_more(&e) && want < limit => want = (want * 4).min(limit),
            Err(e) if needs_more(&e) && limit < size => {
                return Err(bad(format!("its item table is longer than {MAX_HEADER_LEN} bytes")))
            }
            Err(e) if needs_more(&e) => return Err(bad("truncated".into())),
            Err(e) => return Err(bad(e.to_string())),
        }
    };
    let mut off = off as u64;
    if header.from != *from || header.to != *to {
        return Err(bad("it is for other snapshots".into()));
    }
    let existing = sound_store(store_dir)?;
    let storage = LocalStorage::new(store_dir);
    let mut packer = Assembler::new(&storage, &existing, 1);
    for item in &header.items {
        let end = off + item.payload_len;
        if end > size {
            return Err(bad("truncated".into()));
        }
        let mut payload = vec![0u8; item.payload_len as usize];
        f.read_exact_at(&mut payload, off)
            .map_err(|e| Error::Local(format!("cannot read {}: {e}", file.display())))?;
        off = end;
        if item.output.iter().all(|c| existing.contains(&c.id)) {
            continue;
        }
        let mut reference = Vec::with_capacity(item.reference_len() as usize);
        for c in &item.reference {
            match known.get(&c.id) {
                Some(d) => reference.extend_from_slice(d),
                None => local
                    .with_chunk(&c.id, &mut |d| {
                        reference.extend_from_slice(d);
                        Ok(())
                    })
                    .map_err(|e| Error::Local(format!("the delta needs chunk {} of the running snapshot, which this machine no longer has intact ({e})", c.id)))?,
            }
        }
        let mut dec =
            zstd::stream::read::Decoder::with_ref_prefix(&payload[..], &reference).map_err(|e| bad(e.to_string()))?;
        dec.set_parameter(zstd::stream::raw::DParameter::WindowLogMax(WINDOW_LOG))
            .map_err(|e| bad(e.to_string()))?;
        let mut out = Vec::with_capacity(item.output_len().min(MAX_ITEM_BYTES) as usize);
        dec.take(item.output_len() + 1)
            .read_to_end(&mut out)
            .map_err(|e| bad(format!("a patch does not decompress ({e})")))?;
        if out.len() as u64 != item.output_len() {
            return Err(bad("a patch rebuilds the wrong number of bytes".into()));
        }
        let mut pos = 0usize;
        for c in &item.output {
            let chunk = &out[pos..pos + c.len as usize];
            pos += c.len as usize;
            if ChunkId::of(chunk) != c.id {
                return Err(Error::Untrusted(format!(
                    "chunk {} rebuilt from the delta does not match its id (tampered or corrupt)",
                    c.id
                )));
            }
            packer.push(c.id, chunk)?;
        }
    }
    packer.finish()?;
    storage.sync()?;
    Ok(ChunkIndex::load(&storage)?)
}
