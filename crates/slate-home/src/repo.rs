//! An open repository: its backend, keys, config and the merged index of
//! every pack, with a local cache of the (still sealed) index objects so a
//! backup fetches only the indexes it has not seen.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use slate_core::ChunkId;

use crate::backend::Backend;
use crate::crypto::{random, Keys};
use crate::error::{local, Error, Result};
use crate::format::{self, open_json, seal_json, BlobEntry, PackIndex, RepoConfig, Snapshot};

/// Object kinds.
pub mod kind {
    /// The repository's config.
    pub const CONFIG: &str = "config";
    /// Packs of sealed chunks.
    pub const PACK: &str = "pack";
    /// One pack's index.
    pub const INDEX: &str = "index";
    /// Snapshot records.
    pub const SNAPSHOT: &str = "snapshot";
    /// Locks held by running backups and prunes.
    pub const LOCK: &str = "lock";
}

/// Where a chunk is stored.
#[derive(Clone, Copy, Debug)]
pub struct Location {
    /// Index into [`HomeRepo::packs`].
    pub pack: u32,
    /// The blob.
    pub blob: BlobEntry,
}

/// A pack the indexes know.
#[derive(Clone, Debug)]
pub struct PackRecord {
    /// Its name.
    pub name: String,
    /// Index objects naming it.
    pub indexes: Vec<String>,
    /// Its blobs.
    pub blobs: Vec<BlobEntry>,
    /// Its length (end of its last blob).
    pub len: u64,
}

/// An open repository.
pub struct HomeRepo {
    /// Where the objects are.
    pub backend: std::sync::Arc<dyn Backend>,
    /// Its keys.
    pub keys: Keys,
    /// Its config.
    pub config: RepoConfig,
    /// Every known pack.
    pub packs: Vec<PackRecord>,
    /// Every stored chunk.
    pub index: HashMap<ChunkId, Location>,
    /// The local cache directory.
    pub cache_dir: PathBuf,
}

/// Nanoseconds since the epoch now.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// A random object name: 32 hex digits.
pub fn random_name() -> String {
    hex::encode(random::<16>())
}

/// Seconds since the epoch now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// This machine's host name.
pub fn host_name() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

/// Create a repository for `keys` on `backend`.
pub fn init(backend: &dyn Backend, keys: &Keys) -> Result<()> {
    let cfg = RepoConfig::new(now());
    let sealed = seal_json(keys, kind::CONFIG, kind::CONFIG, &cfg);
    if !backend.put(kind::CONFIG, kind::CONFIG, &sealed)? {
        return Err(Error::AlreadyExists(backend.location()));
    }
    Ok(())
}

impl HomeRepo {
    /// Open the repository for `keys`; `cache_dir` keeps indexes and the file cache.
    pub fn open(backend: Box<dyn Backend>, keys: Keys, cache_dir: &Path) -> Result<HomeRepo> {
        let sealed = match backend.get(kind::CONFIG, kind::CONFIG) {
            Ok(s) => s,
            Err(Error::Missing(_)) => return Err(Error::NoRepository(backend.location())),
            Err(e) => return Err(e),
        };
        let config: RepoConfig = open_json(&keys, kind::CONFIG, kind::CONFIG, &sealed)?;
        if config.version != format::FORMAT_VERSION {
            return Err(Error::Invalid(format!(
                "the backup repository on {} has format version {}; this slate reads version {}",
                backend.location(),
                config.version,
                format::FORMAT_VERSION
            )));
        }
        config.check().map_err(|e| {
            Error::Invalid(format!(
                "the backup repository on {} cannot be used: {e}",
                backend.location()
            ))
        })?;
        std::fs::create_dir_all(cache_dir.join("index"))
            .map_err(|e| local(format!("cannot create the cache {}", cache_dir.display()), e))?;
        let mut repo = HomeRepo {
            backend: backend.into(),
            keys,
            config,
            packs: Vec::new(),
            index: HashMap::new(),
            cache_dir: cache_dir.to_path_buf(),
        };
        repo.load_index()?;
        Ok(repo)
    }

    /// Where messages say the repository is.
    pub fn location(&self) -> String {
        self.backend.location()
    }

    /// Forget the in-memory index and read it again: after taking a lock,
    /// so that it reflects what a backup or prune before it left.
    pub fn reload_index(&mut self) -> Result<()> {
        self.packs.clear();
        self.index.clear();
        self.load_index()
    }

    /// Read every index object (from the local cache when it has it).
    fn load_index(&mut self) -> Result<()> {
        let listed = self.backend.list(kind::INDEX)?;
        let cache = self.cache_dir.join("index");
        // Drop cached indexes the repository no longer has (pruned).
        if let Ok(rd) = std::fs::read_dir(&cache) {
            let names: std::collections::HashSet<&str> = listed.iter().map(|o| o.name.as_str()).collect();
            for ent in rd.flatten() {
                if !names.contains(ent.file_name().to_string_lossy().as_ref()) {
                    let _ = std::fs::remove_file(ent.path());
                }
            }
        }
        let decoded: Vec<(String, PackIndex)> = listed
            .par_iter()
            .map(|o| {
                let cached = cache.join(&o.name);
                let sealed = match std::fs::read(&cached) {
                    Ok(b) => b,
                    Err(_) => {
                        let b = self.backend.get(kind::INDEX, &o.name)?;
                        write_atomic(&cached, &b)?;
                        b
                    }
                };
                Ok((o.name.clone(), self.open_index(&o.name, &sealed)?))
            })
            .collect::<Result<_>>()?;
        for (name, idx) in decoded {
            self.add_index(name, idx);
        }
        Ok(())
    }

    /// Decrypt and decode one index object.
    pub fn open_index(&self, name: &str, sealed: &[u8]) -> Result<PackIndex> {
        let plain = self
            .keys
            .open(&format::object_ad(kind::INDEX, name), sealed)
            .ok_or_else(|| {
                Error::Tampered(format!(
                    "index {name} fails authentication: it was changed on {} (run `slate home check`)",
                    self.location()
                ))
            })?;
        PackIndex::decode(&plain).map_err(|e| Error::Tampered(format!("index {name} is malformed: {e}")))
    }

    /// Merge an index into the in-memory one.
    pub fn add_index(&mut self, index_name: String, idx: PackIndex) {
        let pack_no = match self.packs.iter().position(|p| p.name == idx.pack) {
            Some(i) => {
                self.packs[i].indexes.push(index_name);
                return;
            }
            None => self.packs.len() as u32,
        };
        for b in &idx.blobs {
            self.index.entry(b.id).or_insert(Location {
                pack: pack_no,
                blob: *b,
            });
        }
        let len = idx.blobs.iter().map(|b| b.offset + b.len as u64).max().unwrap_or(0);
        self.packs.push(PackRecord {
            name: idx.pack,
            indexes: vec![index_name],
            blobs: idx.blobs,
            len,
        });
    }

    /// Store a pack and then its index.
    pub fn store_pack(&mut self, data: &[u8], blobs: Vec<BlobEntry>) -> Result<()> {
        let upload = self.seal_pack(data.to_vec(), blobs);
        upload.store(self.backend.as_ref())
    }

    /// Name a pack, seal its index and add it to the in-memory index; the
    /// caller stores the returned upload (pack first, then index).
    pub fn seal_pack(&mut self, data: Vec<u8>, blobs: Vec<BlobEntry>) -> PackUpload {
        let pack = blake3::hash(&data).to_hex().to_string();
        let idx = PackIndex {
            pack: pack.clone(),
            blobs,
        };
        let index_name = random_name();
        let sealed_index = self
            .keys
            .seal(&format::object_ad(kind::INDEX, &index_name), &idx.encode());
        self.add_index(index_name.clone(), idx);
        PackUpload {
            pack,
            data,
            index_name,
            sealed_index,
            cache_dir: self.cache_dir.join("index"),
        }
    }

    /// Every snapshot, oldest first, with its name.
    pub fn snapshots(&self) -> Result<Vec<(String, Snapshot)>> {
        let listed = self.backend.list(kind::SNAPSHOT)?;
        let mut out: Vec<(String, Snapshot)> = listed
            .par_iter()
            .map(|o| {
                let sealed = self.backend.get(kind::SNAPSHOT, &o.name)?;
                Ok((o.name.clone(), open_json(&self.keys, kind::SNAPSHOT, &o.name, &sealed)?))
            })
            .collect::<Result<_>>()?;
        out.sort_by(|a, b| a.1.time_ns.cmp(&b.1.time_ns).then(a.0.cmp(&b.0)));
        Ok(out)
    }

    /// The snapshot named by `what`: `latest`, or a unique prefix of its id.
    pub fn find_snapshot(&self, what: &str) -> Result<(String, Snapshot)> {
        let mut all = self.snapshots()?;
        if what == "latest" {
            return all.pop().ok_or_else(|| {
                Error::Invalid(format!(
                    "the backup repository on {} has no snapshots yet",
                    self.location()
                ))
            });
        }
        let mut hits: Vec<_> = all
            .into_iter()
            .filter(|(n, _)| n.starts_with(what) && !what.is_empty())
            .collect();
        match hits.len() {
            1 => Ok(hits.pop().unwrap()),
            0 => Err(Error::Invalid(format!(
                "no snapshot {what:?} in the backup repository (see `slate home snapshots`)"
            ))),
            _ => Err(Error::Invalid(format!(
                "{what:?} names several snapshots; give more of its id"
            ))),
        }
    }

    /// Write a snapshot record; returns its name.
    pub fn write_snapshot(&self, snap: &Snapshot) -> Result<String> {
        let name = random_name();
        let sealed = seal_json(&self.keys, kind::SNAPSHOT, &name, snap);
        self.backend.put(kind::SNAPSHOT, &name, &sealed)?;
        Ok(name)
    }

    /// Read and verify one chunk.
    pub fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let loc = self.locate(id)?;
        let pack = &self.packs[loc.pack as usize].name;
        let sealed = self
            .backend
            .get_range(kind::PACK, pack, loc.blob.offset, loc.blob.len as u64)
            .map_err(|e| self.missing_pack(pack, e))?;
        format::open_blob(&self.keys, id, loc.blob.raw_len, &sealed, pack)
    }

    /// Where a chunk is, or the error that it is missing.
    pub fn locate(&self, id: &ChunkId) -> Result<Location> {
        self.index.get(id).copied().ok_or_else(|| {
            Error::Missing(format!(
                "chunk {} is in no pack of the backup repository on {} (run `slate home check`)",
                &id.to_hex()[..16],
                self.location()
            ))
        })
    }

    /// Say which pack is gone when a read finds it missing.
    pub fn missing_pack(&self, pack: &str, e: Error) -> Error {
        match e {
            Error::Missing(_) => Error::Missing(format!(
                "pack {pack} is missing from the backup repository on {} (run `slate home check`)",
                self.location()
            )),
            e => e,
        }
    }

    /// Read a manifest stored as chunks.
    pub fn read_manifest(&self, chunks: &[(ChunkId, u32)]) -> Result<slate_core::manifest::Manifest> {
        let parts: Vec<Vec<u8>> = chunks
            .par_iter()
            .map(|(id, _)| self.read_chunk(id))
            .collect::<Result<_>>()?;
        let data = parts.concat();
        slate_core::manifest::decode(&data)
            .map_err(|e| Error::Tampered(format!("a snapshot's manifest is malformed: {e}")))
    }
}

/// A sealed pack and its index, ready to store.
pub struct PackUpload {
    /// The pack's name.
    pub pack: String,
    /// Its bytes.
    pub data: Vec<u8>,
    /// The index object's name.
    pub index_name: String,
    /// The sealed index.
    pub sealed_index: Vec<u8>,
    cache_dir: PathBuf,
}

impl PackUpload {
    /// Store the pack, then its index (so an index never names a pack the
    /// storage lacks), then keep a copy of the index in the local cache.
    pub fn store(&self, backend: &dyn Backend) -> Result<()> {
        backend.put(kind::PACK, &self.pack, &self.data)?;
        backend.put(kind::INDEX, &self.index_name, &self.sealed_index)?;
        let _ = write_atomic(&self.cache_dir.join(&self.index_name), &self.sealed_index);
        Ok(())
    }
}

/// Write a file through a temporary name, so it is whole or absent.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| local(format!("cannot create {}", dir.display()), e))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| local(format!("cannot write in {}", dir.display()), e))?;
    tmp.write_all(data)
        .and_then(|_| tmp.as_file().sync_all())
        .map_err(|e| local(format!("cannot write {}", path.display()), e))?;
    tmp.persist(path)
        .map_err(|e| local(format!("cannot write {}", path.display()), e.error))?;
    Ok(())
}
