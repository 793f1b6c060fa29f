//! Where the bytes of a new snapshot come from: the machine's own slots
//! first (content it already has anywhere is copied locally, never
//! downloaded again), then the download cache. Every chunk is checked
//! against its hash whichever way it comes.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use slate_core::manifest::{Kind, Manifest};
use slate_core::ChunkId;
use slate_repo::checkout::ChunkSource;
use slate_repo::reader::ChunkReader;

/// A chunk's place inside a file of a local tree.
#[derive(Clone, Debug)]
struct LocalChunk {
    tree: u16,
    entry: u32,
    offset: u64,
    len: u32,
}

/// Chunks available in local trees (slots), by id.
#[derive(Default)]
pub struct LocalChunks {
    trees: Vec<(PathBuf, Vec<Vec<u8>>)>,
    map: HashMap<ChunkId, LocalChunk>,
}

impl LocalChunks {
    /// Add the files of tree `root`, described by `m`; returns its number.
    pub fn add_tree(&mut self, root: &Path, m: &Manifest) -> usize {
        let tree = self.trees.len() as u16;
        let mut paths = Vec::new();
        for e in &m.entries {
            let Kind::File(f) = &e.kind else { continue };
            let entry = paths.len() as u32;
            paths.push(e.path.clone());
            // Map each chunk's position in the data stream to its offset in
            // the file; a chunk spanning two extents is not used locally.
            let extents = f.data_extents();
            let (mut ext_i, mut ext_done) = (0usize, 0u64);
            for c in &f.chunks {
                let Some(x) = extents.get(ext_i) else { break };
                let file_off = x.offset + ext_done;
                if ext_done + c.len as u64 <= x.len {
                    self.map.entry(c.id).or_insert(LocalChunk {
                        tree,
                        entry,
                        offset: file_off,
                        len: c.len,
                    });
                }
                let mut left = c.len as u64;
                while left > 0 && ext_i < extents.len() {
                    let room = extents[ext_i].len - ext_done;
                    let n = room.min(left);
                    left -= n;
                    ext_done += n;
                    if ext_done == extents[ext_i].len {
                        ext_i += 1;
                        ext_done = 0;
                    }
                }
            }
        }
        self.trees.push((root.to_path_buf(), paths));
        self.trees.len() - 1
    }

    /// Point tree number `tree` at another root (the same filesystem
    /// mounted elsewhere); a missing tree is ignored.
    pub fn replace_root(&mut self, tree: usize, root: &Path) {
        if let Some(t) = self.trees.get_mut(tree) {
            t.0 = root.to_path_buf();
        }
    }

    /// Whether `id` is available locally.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.map.contains_key(id)
    }
}

/// Reads chunks from local trees, then the download cache and delta store.
pub struct Sources<'a> {
    /// Local trees.
    pub local: &'a LocalChunks,
    /// Downloaded frames and chunks rebuilt from deltas.
    pub readers: Vec<ChunkReader<'a>>,
    open: Option<((u16, u32), std::fs::File)>,
    buf: Vec<u8>,
    /// Bytes copied from local trees.
    pub local_bytes: u64,
}

impl<'a> Sources<'a> {
    /// Sources over `local` and the cache reader.
    pub fn new(local: &'a LocalChunks, readers: Vec<ChunkReader<'a>>) -> Self {
        Sources {
            local,
            readers,
            open: None,
            buf: Vec::new(),
            local_bytes: 0,
        }
    }

    fn read_local(&mut self, id: &ChunkId) -> Option<&[u8]> {
        let c = self.local.map.get(id)?.clone();
        let key = (c.tree, c.entry);
        if self.open.as_ref().map(|o| o.0) != Some(key) {
            let (root, paths) = &self.local.trees[c.tree as usize];
            let p = root.join(OsStr::from_bytes(&paths[c.entry as usize]));
            self.open = Some((key, std::fs::File::open(p).ok()?));
        }
        let f = &self.open.as_ref()?.1;
        self.buf.resize(c.len as usize, 0);
        f.read_exact_at(&mut self.buf, c.offset).ok()?;
        // A slot changed behind our back is not a source: fall through.
        (ChunkId::of(&self.buf) == *id).then_some(&self.buf[..])
    }
}

impl ChunkSource for Sources<'_> {
    fn with_chunk(&mut self, id: &ChunkId, f: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> slate_repo::Result<()> {
        if let Some(d) = self.read_local(id) {
            let n = d.len() as u64;
            f(d)?;
            self.local_bytes += n;
            return Ok(());
        }
        for r in &mut self.readers {
            if r.has(id) {
                return r.with_chunk(id, |d| f(d))?.map_err(slate_repo::Error::Io);
            }
        }
        Err(slate_repo::Error::MissingChunk(id.to_hex()))
    }
}
