//! The in-memory chunk index: every chunk id of every pack, loaded from the
//! packs' index files when a repository is opened for reading or writing.

use std::collections::HashMap;

use rayon::prelude::*;
use slate_core::pack::{IndexEntry, PackIndex};
use slate_core::{ChunkId, PackId};

use crate::error::{Error, Result};
use crate::storage::Storage;

/// Where a chunk is: which pack, and the entry from its index.
#[derive(Clone, Copy, Debug)]
pub struct Location {
    /// Position in [`ChunkIndex::packs`].
    pub pack: u32,
    /// Frame and offset inside the pack.
    pub entry: IndexEntry,
}

/// All chunks the repository holds.
#[derive(Default)]
pub struct ChunkIndex {
    /// The packs, by position.
    pub packs: Vec<PackId>,
    map: HashMap<ChunkId, Location>,
}

/// The storage key of a pack.
pub fn pack_key(id: &PackId) -> String {
    let h = id.to_hex();
    format!("packs/{}/{h}.pack", &h[..2])
}

/// The storage key of a pack's index.
pub fn index_key(id: &PackId) -> String {
    let h = id.to_hex();
    format!("packs/{}/{h}.idx", &h[..2])
}

impl ChunkIndex {
    /// Load every pack index in `storage`.
    pub fn load(storage: &dyn Storage) -> Result<Self> {
        Self::load_excluding(storage, &std::collections::HashSet::new())
    }

    /// Load every pack index in `storage` but those of `skip` (packs gc
    /// found dead: a writer must not reuse their chunks).
    pub fn load_excluding(storage: &dyn Storage, skip: &std::collections::HashSet<PackId>) -> Result<Self> {
        let keys: Vec<String> = storage
            .list("packs")?
            .into_iter()
            .filter(|k| k.ends_with(".idx"))
            .collect();
        let loaded: Vec<(PackId, PackIndex)> = keys
            .par_iter()
            .map(|k| {
                let name = k.rsplit('/').next().unwrap_or_default().trim_end_matches(".idx");
                let id =
                    PackId::from_hex(name).ok_or_else(|| Error::Invalid(format!("unexpected file {k} in packs/")))?;
                let idx =
                    PackIndex::decode(&storage.read(k)?).map_err(|e| Error::corrupt(format!("pack index {id}"), e))?;
                Ok((id, idx))
            })
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .filter(|(id, _)| !skip.contains(id))
            .collect();
        let mut index = ChunkIndex::default();
        for (id, idx) in loaded {
            index.add_pack(id, &idx);
        }
        Ok(index)
    }

    /// Add a pack's entries (the first pack to hold a chunk wins).
    pub fn add_pack(&mut self, id: PackId, idx: &PackIndex) {
        let pack = self.packs.len() as u32;
        self.packs.push(id);
        self.map.reserve(idx.entries.len());
        for e in &idx.entries {
            self.map.entry(e.id).or_insert(Location { pack, entry: *e });
        }
    }

    /// Where `id` is, if anywhere.
    pub fn get(&self, id: &ChunkId) -> Option<&Location> {
        self.map.get(id)
    }

    /// Whether the repository holds `id`.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.map.contains_key(id)
    }

    /// Every chunk's location.
    pub fn locations(&self) -> impl Iterator<Item = &Location> {
        self.map.values()
    }

    /// Number of distinct chunks.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are no chunks.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
