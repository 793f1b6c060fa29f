//! slate-repo: the snapshot repository.
//!
//! A local repository is a directory (see `docs/format/repository.md`):
//!
//! ```text
//! REPO/
//!   config                     slate-repo-v1 + settings (zstd level, chunk sizes)
//!   lock                       writers (commit, gc, sign) hold flock(LOCK_EX) on it
//!   packs/ab/<id>.pack         immutable: header + zstd frames of chunks, in tree order
//!   packs/ab/<id>.idx          immutable: chunk id -> frame, offset, length
//!   snapshots/ab/<id>.snap     immutable snapshot record (names its manifest's chunks)
//!   snapshots/ab/<id>.sig      ed25519 signatures over the snapshot id
//!   channels/<name...>         history of a channel, head last
//!   tmp/                       temp files, renamed into place when complete
//!   gc/pending                 object stores only: what gc found dead, deleted after a grace period
//! ```
//!
//! Objects are immutable and named by content, so a crash can only leave
//! unreferenced objects behind (removed by `gc`), never a half-written one
//! under its final name. Storage sits behind [`storage::Storage`].

pub mod channel;
pub mod checkout;
pub mod commit;
pub mod delta;
pub mod error;
pub mod gc;
pub mod index;
pub mod pending;
pub mod progress;
pub mod reader;
pub mod repo;
pub mod scan;
pub mod storage;
pub mod verify;

pub use error::{Error, Result};
pub use repo::{Config, Repo};

use std::io::Write;
use std::path::Path;

use slate_core::manifest::{Kind, Manifest};
use slate_core::snapshot::Snapshot;
use slate_core::SnapshotId;

use crate::index::ChunkIndex;
use crate::reader::ChunkReader;

/// A snapshot loaded with everything needed to read it.
pub struct Loaded {
    /// Its id.
    pub id: SnapshotId,
    /// Its record.
    pub snapshot: Snapshot,
    /// Its manifest.
    pub manifest: Manifest,
    /// The repository's chunk index.
    pub index: ChunkIndex,
}

impl Repo {
    /// Resolve `spec` and load its snapshot, manifest and the chunk index.
    pub fn load(&self, spec: &str) -> Result<Loaded> {
        let id = self.resolve(spec)?;
        let snapshot = self.read_snapshot(&id)?;
        let index = self.load_index()?;
        let manifest = self.read_manifest(&snapshot, &index)?;
        Ok(Loaded {
            id,
            snapshot,
            manifest,
            index,
        })
    }

    /// Materialise snapshot `spec` into `dest` (absent or empty).
    pub fn checkout(
        &self,
        spec: &str,
        dest: &Path,
        sync: bool,
        progress: &dyn progress::Progress,
    ) -> Result<checkout::CheckoutStats> {
        let l = self.load(spec)?;
        let storage = self.storage.as_ref();
        let index = &l.index;
        checkout::materialize(&l.manifest, dest, || ChunkReader::new(storage, index), sync, progress)
    }

    /// Write the content of the file at `path` in a loaded snapshot to `out`
    /// (holes of a sparse file as zeros).
    pub fn cat(&self, l: &Loaded, path: &[u8], out: &mut dyn Write) -> Result<()> {
        let path = path.strip_prefix(b"/").unwrap_or(path);
        let i = l
            .manifest
            .find(path)
            .ok_or_else(|| Error::Invalid(format!("{} is not in snapshot {}", String::from_utf8_lossy(path), l.id)))?;
        let f = l.manifest.file_data(i).ok_or_else(|| {
            Error::Invalid(format!(
                "{} is not a regular file (type {})",
                String::from_utf8_lossy(path),
                l.manifest.entries[i].kind.letter()
            ))
        })?;
        let mut reader = ChunkReader::new(self.storage.as_ref(), &l.index);
        let mut pos = 0u64;
        let mut chunks = f.chunks.iter();
        let mut pending: Vec<u8> = Vec::new();
        let zeros = vec![0u8; 64 << 10];
        let write_zeros = |out: &mut dyn Write, mut n: u64| -> Result<()> {
            while n > 0 {
                let k = n.min(zeros.len() as u64) as usize;
                out.write_all(&zeros[..k])?;
                n -= k as u64;
            }
            Ok(())
        };
        for x in f.data_extents() {
            write_zeros(out, x.offset - pos)?;
            let mut left = x.len;
            while left > 0 {
                if pending.is_empty() {
                    let c = chunks
                        .next()
                        .ok_or_else(|| Error::Invalid("manifest chunks end early".into()))?;
                    pending = reader.read(&c.id)?;
                }
                let n = (left as usize).min(pending.len());
                out.write_all(&pending[..n])?;
                pending.drain(..n);
                left -= n as u64;
            }
            pos = x.offset + x.len;
        }
        write_zeros(out, f.size - pos)?;
        Ok(())
    }
}

/// Whether an entry is a regular file (directly or through a hard link).
pub fn is_file(m: &Manifest, i: usize) -> bool {
    matches!(m.entries[i].kind, Kind::File(_)) || m.file_data(i).is_some()
}
