//! Reading chunks back: fetch a chunk's frame, decompress it once, check
//! the chunk's hash. Each reader keeps a few recent frames because files
//! written in tree order share frames with their neighbours.

use std::sync::Arc;

use slate_core::pack::{chunk_from_frame, decompress_frame};
use slate_core::ChunkId;

use crate::error::{Error, Result};
use crate::index::{pack_key, ChunkIndex};
use crate::storage::Storage;

/// How many decompressed frames a reader keeps (about 1 MiB each).
const CACHED_FRAMES: usize = 8;

/// A decompressed frame, keyed by (pack position, frame offset).
type CachedFrame = ((u32, u64), Arc<Vec<u8>>);

/// Reads verified chunks from a repository.
pub struct ChunkReader<'a> {
    storage: &'a dyn Storage,
    index: &'a ChunkIndex,
    // Most recently used last; tiny, so a linear scan beats a map.
    frames: Vec<CachedFrame>,
}

impl<'a> ChunkReader<'a> {
    /// A reader over `index`'s packs in `storage`.
    pub fn new(storage: &'a dyn Storage, index: &'a ChunkIndex) -> Self {
        ChunkReader {
            storage,
            index,
            frames: Vec::with_capacity(CACHED_FRAMES),
        }
    }

    /// Call `f` with the verified bytes of chunk `id`.
    pub fn with_chunk<T>(&mut self, id: &ChunkId, f: impl FnOnce(&[u8]) -> T) -> Result<T> {
        let loc = *self.index.get(id).ok_or_else(|| Error::MissingChunk(id.to_hex()))?;
        let key = (loc.pack, loc.entry.frame_offset);
        let frame = match self.frames.iter().position(|(k, _)| *k == key) {
            Some(i) => {
                let hit = self.frames.remove(i);
                let frame = hit.1.clone();
                self.frames.push(hit);
                frame
            }
            None => {
                let pack = &self.index.packs[loc.pack as usize];
                let mut buf = vec![0u8; loc.entry.frame_len as usize];
                self.storage
                    .read_at(&pack_key(pack), loc.entry.frame_offset, &mut buf)?;
                let raw = decompress_frame(&buf, loc.entry.frame_raw_len, pack, loc.entry.frame_offset)
                    .map_err(|e| Error::corrupt(format!("pack {pack}"), e))?;
                let frame = Arc::new(raw);
                if self.frames.len() == CACHED_FRAMES {
                    self.frames.remove(0);
                }
                self.frames.push((key, frame.clone()));
                frame
            }
        };
        let data = chunk_from_frame(&frame, &loc.entry)
            .map_err(|e| Error::corrupt(format!("pack {}", self.index.packs[loc.pack as usize]), e))?;
        Ok(f(data))
    }

    /// Whether this reader's index knows `id`.
    pub fn has(&self, id: &ChunkId) -> bool {
        self.index.contains(id)
    }

    /// The verified bytes of chunk `id`.
    pub fn read(&mut self, id: &ChunkId) -> Result<Vec<u8>> {
        self.with_chunk(id, |d| d.to_vec())
    }
}
