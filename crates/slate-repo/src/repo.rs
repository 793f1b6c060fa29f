//! Opening, creating and reading a repository: its config, lock, snapshot
//! records, signatures, manifests and channels. See `lib.rs` for the layout.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use slate_core::chunker::ChunkerParams;
use slate_core::manifest::{self, Manifest};
use slate_core::snapshot::{decode_signatures, encode_signatures, Snapshot, SnapshotSignature};
use slate_core::{Id32, SnapshotId};

use crate::channel;
use crate::error::{Error, Result};
use crate::index::ChunkIndex;
use crate::reader::ChunkReader;
use crate::storage::{Expected, LocalStorage, MemStorage, Storage};

const CONFIG_HEADER: &str = "slate-repo-v1";

/// Tunables stored in `config`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// zstd level for new frames.
    pub compression_level: i32,
    /// Chunk size bounds for new content.
    pub chunker: ChunkerParams,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            compression_level: 5,
            chunker: ChunkerParams::default(),
        }
    }
}

impl Config {
    fn encode(&self) -> String {
        format!(
            "{CONFIG_HEADER}\ncompression_level = {}\nchunk_min = {}\nchunk_avg = {}\nchunk_max = {}\n",
            self.compression_level, self.chunker.min, self.chunker.avg, self.chunker.max
        )
    }

    fn decode(text: &str, where_: &str) -> Result<Self> {
        let bad = |d: String| Error::Invalid(format!("{where_}: {d}"));
        let mut lines = text.lines();
        if lines.next() != Some(CONFIG_HEADER) {
            return Err(Error::NotARepository(where_.trim_end_matches("/config").to_string()));
        }
        let mut c = Config::default();
        for l in lines.map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (k, v) = l
                .split_once('=')
                .ok_or_else(|| bad(format!("line {l:?} is not key = value")))?;
            let v: u32 = v
                .trim()
                .parse()
                .map_err(|_| bad(format!("{} is not a number", v.trim())))?;
            match k.trim() {
                "compression_level" if (1..=22).contains(&v) => c.compression_level = v as i32,
                "chunk_min" => c.chunker.min = v,
                "chunk_avg" => c.chunker.avg = v,
                "chunk_max" => c.chunker.max = v,
                k => return Err(bad(format!("unknown or out-of-range setting {k}"))),
            }
        }
        let p = c.chunker;
        // FastCDC's own lower bounds: 64, 256 and 1024 bytes.
        if !(64 <= p.min
            && 256 <= p.avg
            && 1024 <= p.max
            && p.min <= p.avg
            && p.avg <= p.max
            && p.max <= slate_core::manifest::MAX_CHUNK_LEN)
        {
            return Err(bad(
                "chunk sizes must satisfy 64 <= min <= avg <= max <= 1 MiB, avg >= 256, max >= 1024".into(),
            ));
        }
        Ok(c)
    }
}

/// An open repository.
pub struct Repo {
    /// Where its objects live.
    pub storage: Box<dyn Storage>,
    /// Its directory, for a local repository.
    pub root: Option<PathBuf>,
    /// Its settings.
    pub config: Config,
}

/// An exclusive writer lock; released on drop.
pub struct RepoLock {
    _file: Option<File>,
}

fn snap_key(id: &SnapshotId, ext: &str) -> String {
    let h = id.to_hex();
    format!("snapshots/{}/{h}.{ext}", &h[..2])
}

fn channel_key(name: &str) -> String {
    format!("channels/{name}")
}

impl Repo {
    /// Create a repository in `path` (absent or empty).
    pub fn init(path: &Path, config: Config) -> Result<Repo> {
        if path.exists() {
            let mut rd = fs::read_dir(path).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
            if rd.next().is_some() {
                return Err(Error::Invalid(format!(
                    "{} exists and is not empty; choose a new directory for the repository",
                    path.display()
                )));
            }
        }
        for d in ["packs", "snapshots", "channels", "tmp"] {
            let p = path.join(d);
            fs::create_dir_all(&p).map_err(|e| Error::Invalid(format!("{}: {e}", p.display())))?;
        }
        let storage = LocalStorage::new(path);
        storage.write("lock", b"")?;
        storage.write("config", config.encode().as_bytes())?;
        storage.sync()?;
        Self::open(path)
    }

    /// Open the repository in `path`.
    pub fn open(path: &Path) -> Result<Repo> {
        let cfg = path.join("config");
        let text = fs::read_to_string(&cfg).map_err(|_| Error::NotARepository(path.display().to_string()))?;
        let config = Config::decode(&text, &cfg.display().to_string())?;
        Ok(Repo {
            storage: Box::new(LocalStorage::new(path)),
            root: Some(path.to_path_buf()),
            config,
        })
    }

    /// Create a repository in `storage`, which must hold no objects (an
    /// object store: nothing to lock, no directories; `name` is how
    /// messages call it).
    pub fn init_storage(storage: Box<dyn Storage>, name: &str, config: Config) -> Result<Repo> {
        if !storage.list("")?.is_empty() {
            return Err(Error::Invalid(format!(
                "{name} is not empty; choose a new prefix for the repository"
            )));
        }
        storage.write("config", config.encode().as_bytes())?;
        storage.sync()?;
        Self::open_storage(storage, name)
    }

    /// Open the repository in `storage` (`name` is how messages call it).
    /// It has no writer lock: see docs/scale.md, "Object storage".
    pub fn open_storage(storage: Box<dyn Storage>, name: &str) -> Result<Repo> {
        let text = match storage.read("config") {
            Ok(b) => String::from_utf8(b).map_err(|_| Error::NotARepository(name.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Error::NotARepository(name.to_string())),
            Err(e) => return Err(e.into()),
        };
        let config = Config::decode(&text, &format!("{name}/config"))?;
        Ok(Repo {
            storage,
            root: None,
            config,
        })
    }

    /// A repository in memory, for tests.
    pub fn in_memory(config: Config) -> Repo {
        Repo {
            storage: Box::new(MemStorage::default()),
            root: None,
            config,
        }
    }

    /// Take the writer lock, waiting for another writer to finish.
    pub fn lock(&self) -> Result<RepoLock> {
        let Some(root) = &self.root else {
            return Ok(RepoLock { _file: None });
        };
        let p = root.join("lock");
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
            .map_err(|e| Error::Invalid(format!("{}: {e}", p.display())))?;
        use rustix::fs::{flock, FlockOperation};
        if flock(&f, FlockOperation::NonBlockingLockExclusive).is_err() {
            tracing::info!("waiting for another writer to release {}", p.display());
            flock(&f, FlockOperation::LockExclusive).map_err(|e| Error::Invalid(format!("{}: {e}", p.display())))?;
        }
        Ok(RepoLock { _file: Some(f) })
    }

    /// Load the chunk index of every pack.
    pub fn load_index(&self) -> Result<ChunkIndex> {
        ChunkIndex::load(self.storage.as_ref())
    }

    /// Store a snapshot record; returns its id.
    pub fn write_snapshot(&self, snap: &Snapshot) -> Result<SnapshotId> {
        let bytes = snap.encode();
        let id = SnapshotId::of(&bytes);
        self.storage.write(&snap_key(&id, "snap"), &bytes)?;
        Ok(id)
    }

    /// Read and check a snapshot record.
    pub fn read_snapshot(&self, id: &SnapshotId) -> Result<Snapshot> {
        let bytes = self.storage.read(&snap_key(id, "snap")).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::UnknownSnapshot(id.to_hex()),
            _ => e.into(),
        })?;
        Snapshot::decode(&bytes, id).map_err(|e| Error::corrupt(format!("snapshot {id}"), e))
    }

    /// Every snapshot record in the repository.
    pub fn list_snapshots(&self) -> Result<Vec<SnapshotId>> {
        Ok(self
            .storage
            .list("snapshots")?
            .iter()
            .filter_map(|k| k.strip_suffix(".snap"))
            .filter_map(|k| SnapshotId::from_hex(k.rsplit('/').next()?))
            .collect())
    }

    /// The signatures stored for a snapshot (unchecked; none if unsigned).
    pub fn read_signatures(&self, id: &SnapshotId) -> Result<Vec<SnapshotSignature>> {
        match self.storage.read(&snap_key(id, "sig")) {
            Ok(b) => decode_signatures(&b).map_err(|e| Error::corrupt(format!("signatures of snapshot {id}"), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// Add a signature to a snapshot's signature file.
    /// On an object store the file is replaced only if no other writer
    /// replaced it since it was read ([`Error::Raced`] otherwise, nothing
    /// changed): a signature added meanwhile is never lost.
    pub fn add_signature(&self, id: &SnapshotId, sig: SnapshotSignature) -> Result<()> {
        let key = snap_key(id, "sig");
        let (bytes, expected) = self.storage.read_expecting(&key)?;
        let mut sigs = match bytes {
            Some(b) => decode_signatures(&b).map_err(|e| Error::corrupt(format!("signatures of snapshot {id}"), e))?,
            None => Vec::new(),
        };
        sigs.retain(|s| s.key != sig.key);
        sigs.push(sig);
        self.storage
            .write_expecting(&key, &encode_signatures(&sigs), &expected)
            .map_err(|e| match crate::storage::is_conflict(&e) {
                true => Error::Raced(format!("the signatures of snapshot {id}")),
                false => e.into(),
            })?;
        Ok(())
    }

    /// Storage keys of a snapshot's record and signature file.
    pub fn snapshot_keys(id: &SnapshotId) -> [String; 2] {
        [snap_key(id, "snap"), snap_key(id, "sig")]
    }

    /// Read, check and decode a snapshot's manifest.
    pub fn read_manifest(&self, snap: &Snapshot, index: &ChunkIndex) -> Result<Manifest> {
        let bytes = self.read_manifest_bytes(snap, index)?;
        manifest::decode(&bytes).map_err(|e| Error::corrupt(format!("manifest {}", snap.manifest.hash.to_hex()), e))
    }

    /// Read a snapshot's manifest as stored, checked against its hash.
    pub fn read_manifest_bytes(&self, snap: &Snapshot, index: &ChunkIndex) -> Result<Vec<u8>> {
        // The size is a claim of an untrusted record: reserve a little and
        // let the buffer grow with the bytes actually read.
        let mut bytes = Vec::with_capacity(snap.manifest.size.min(16 << 20) as usize);
        let mut reader = ChunkReader::new(self.storage.as_ref(), index);
        for c in &snap.manifest.chunks {
            reader.with_chunk(&c.id, |d| bytes.extend_from_slice(d))?;
        }
        if Id32::hash(&bytes) != snap.manifest.hash {
            return Err(Error::corrupt(
                format!("manifest {}", snap.manifest.hash.to_hex()),
                slate_core::Error::HashMismatch {
                    what: "manifest",
                    id: snap.manifest.hash.to_hex(),
                },
            ));
        }
        Ok(bytes)
    }

    /// Names of every channel.
    pub fn channels(&self) -> Result<Vec<String>> {
        Ok(self
            .storage
            .list("channels")?
            .into_iter()
            .filter_map(|k| k.strip_prefix("channels/").map(str::to_string))
            .filter(|n| channel::check_name(n).is_ok())
            .collect())
    }

    /// A channel's history, oldest first; empty if it does not exist.
    pub fn channel_history(&self, name: &str) -> Result<Vec<SnapshotId>> {
        channel::check_name(name)?;
        match self.storage.read(&channel_key(name)) {
            Ok(b) => channel::decode(name, &b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// A channel's history, and what [`Repo::set_channel_history_if`] must
    /// find to replace it: on an object store, the only guard against a
    /// concurrent writer (there is no lock).
    pub fn channel_history_expecting(&self, name: &str) -> Result<(Vec<SnapshotId>, Expected)> {
        channel::check_name(name)?;
        let (bytes, expected) = self.storage.read_expecting(&channel_key(name))?;
        let history = match bytes {
            Some(b) => channel::decode(name, &b)?,
            None => Vec::new(),
        };
        Ok((history, expected))
    }

    /// Replace a channel's history durably if no other writer replaced it
    /// since it was read with [`Repo::channel_history_expecting`]; else
    /// [`Error::ChannelMoved`], and nothing is changed.
    pub fn set_channel_history_if(&self, name: &str, history: &[SnapshotId], expected: &Expected) -> Result<()> {
        channel::check_name(name)?;
        let key = channel_key(name);
        self.storage
            .write_expecting(&key, channel::encode(history).as_bytes(), expected)
            .map_err(|e| match crate::storage::is_conflict(&e) {
                true => Error::ChannelMoved(name.to_string()),
                false => e.into(),
            })?;
        self.storage.sync_key(&key)?;
        Ok(())
    }

    /// Replace a channel's history durably (call with the lock held).
    pub fn set_channel_history(&self, name: &str, history: &[SnapshotId]) -> Result<()> {
        channel::check_name(name)?;
        let key = channel_key(name);
        self.storage.write(&key, channel::encode(history).as_bytes())?;
        self.storage.sync_key(&key)?;
        Ok(())
    }

    /// Resolve a snapshot spec: a channel name (its head), `CHANNEL~N` (the
    /// N-th snapshot before the head), a full id or a unique id prefix of at
    /// least 6 hex digits.
    pub fn resolve(&self, spec: &str) -> Result<SnapshotId> {
        let (name, back) = match spec.rsplit_once('~') {
            Some((n, k)) if k.parse::<usize>().is_ok() => (n, k.parse::<usize>().unwrap()),
            _ => (spec, 0),
        };
        if channel::check_name(name).is_ok() {
            let h = self.channel_history(name)?;
            if !h.is_empty() {
                return h
                    .len()
                    .checked_sub(1 + back)
                    .map(|i| h[i])
                    .ok_or_else(|| Error::Invalid(format!("channel {name} has only {} snapshots", h.len())));
            }
        }
        if let Some(id) = SnapshotId::from_hex(spec) {
            return Ok(id);
        }
        if spec.len() >= 6 && spec.bytes().all(|b| b.is_ascii_hexdigit()) {
            let lower = spec.to_ascii_lowercase();
            let matches: Vec<_> = self
                .list_snapshots()?
                .into_iter()
                .filter(|id| id.to_hex().starts_with(&lower))
                .collect();
            match matches.len() {
                1 => return Ok(matches[0]),
                0 => {}
                n => {
                    return Err(Error::Invalid(format!(
                        "{spec} is ambiguous: {n} snapshots start with it"
                    )))
                }
            }
        }
        Err(Error::UnknownSnapshot(spec.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trip_and_rejects() {
        let c = Config::default();
        assert_eq!(Config::decode(&c.encode(), "x").unwrap(), c);
        assert!(Config::decode("slate-repo-v1\nchunk_max = 99999999\n", "x").is_err());
        assert!(Config::decode("something else", "x").is_err());
    }
}
