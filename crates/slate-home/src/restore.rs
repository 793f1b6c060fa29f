//! Restore: read a snapshot's manifests and materialise them with the
//! repository's bit-for-bit checkout, chunks fetched from packs (a window
//! at a time, since a backup stores files in tree order), opened and
//! checked against their keyed ids.

use std::io;
use std::path::{Path, PathBuf};

use slate_core::manifest::{Kind, Manifest};
use slate_core::ChunkId;
use slate_repo::checkout::{materialize, ChunkSource};
use slate_repo::progress::Progress;

use crate::error::{Error, Result};
use crate::format::open_blob;
use crate::repo::{kind, HomeRepo};

/// Bytes fetched from a pack at once when reading ahead: a parallel batch
/// of the checkout (about 4 MiB of files) needs about this much of a pack
/// in tree order, and more would be fetched for nothing over HTTP.
const READ_AHEAD: u64 = 2 << 20;

/// What a restore wrote.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RestoreStats {
    /// Directories restored, with where they went.
    pub restored: Vec<(String, String)>,
    /// Entries created.
    pub entries: u64,
    /// Regular files written.
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// Fetches chunks, keeping one window of the last pack read.
struct PackSource<'a> {
    repo: &'a HomeRepo,
    window: Option<(u32, u64, Vec<u8>)>,
}

impl PackSource<'_> {
    fn chunk(&mut self, id: &ChunkId) -> Result<Vec<u8>> {
        let loc = self.repo.locate(id)?;
        let (start, end) = (loc.blob.offset, loc.blob.offset + loc.blob.len as u64);
        let hit = matches!(&self.window, Some((p, s, d)) if *p == loc.pack && *s <= start && end <= s + d.len() as u64);
        if !hit {
            let pack = &self.repo.packs[loc.pack as usize];
            let window_end = (start + READ_AHEAD).min(pack.len).max(end);
            let data = self
                .repo
                .backend
                .get_range(kind::PACK, &pack.name, start, window_end - start)
                .map_err(|e| self.repo.missing_pack(&pack.name, e))?;
            self.window = Some((loc.pack, start, data));
        }
        let (p, s, d) = self.window.as_ref().unwrap();
        let sealed = &d[(start - s) as usize..(end - s) as usize];
        open_blob(
            &self.repo.keys,
            id,
            loc.blob.raw_len,
            sealed,
            &self.repo.packs[*p as usize].name,
        )
    }
}

impl ChunkSource for PackSource<'_> {
    fn with_chunk(&mut self, id: &ChunkId, f: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> slate_repo::Result<()> {
        let data = self.chunk(id).map_err(|e| slate_repo::Error::Invalid(e.to_string()))?;
        f(&data).map_err(slate_repo::Error::Io)
    }
}

/// Keep only the entries at or beneath one of `selected` (relative paths,
/// raw bytes) and their ancestors; hard links whose leader is dropped get
/// their first kept member as the new leader.
pub fn select(m: &Manifest, selected: &[Vec<u8>]) -> Manifest {
    let keep = |p: &[u8]| {
        selected.iter().any(|s| {
            s.is_empty()
                || p == s.as_slice()
                || (p.len() > s.len() && p.starts_with(s) && p[s.len()] == b'/')
                || p.is_empty()
                || (s.len() > p.len() && s.starts_with(p) && s[p.len()] == b'/')
        })
    };
    let mut out = Manifest::default();
    let mut new_index = vec![u32::MAX; m.entries.len()];
    for (i, e) in m.entries.iter().enumerate() {
        if !keep(&e.path) {
            continue;
        }
        let mut e = e.clone();
        if let Kind::HardLink(leader) = e.kind {
            let l = leader as usize;
            if new_index[l] != u32::MAX {
                e.kind = Kind::HardLink(new_index[l]);
            } else {
                // The leader was dropped: this entry takes its place.
                e.kind = m.entries[l].kind.clone();
                e.meta = m.entries[l].meta.clone();
                new_index[l] = out.entries.len() as u32;
            }
        }
        new_index[i] = out.entries.len() as u32;
        out.entries.push(e);
    }
    out
}

/// Where a backed-up directory goes: back where it was, or beneath `target`.
pub fn destination(root: &str, target: Option<&Path>) -> PathBuf {
    match target {
        None => PathBuf::from(root),
        Some(t) => t.join(root.trim_start_matches('/')),
    }
}

/// Restore snapshot `name` into place or beneath `target`, only `paths`
/// (absolute, as backed up) when given.
pub fn restore(
    repo: &HomeRepo,
    name: &str,
    target: Option<&Path>,
    paths: &[PathBuf],
    progress: &dyn Progress,
) -> Result<RestoreStats> {
    use std::os::unix::ffi::OsStrExt;
    let (_, snap) = repo.find_snapshot(name)?;
    let mut stats = RestoreStats::default();
    let mut matched = vec![false; paths.len()];
    for root in &snap.roots {
        let root_path = Path::new(&root.path);
        let mut selected = Vec::new();
        for (i, p) in paths.iter().enumerate() {
            if let Ok(rel) = p.strip_prefix(root_path) {
                selected.push(rel.as_os_str().as_bytes().to_vec());
                matched[i] = true;
            }
        }
        if !paths.is_empty() && selected.is_empty() {
            continue;
        }
        let mut m = repo.read_manifest(&root.manifest_chunks()?)?;
        if !paths.is_empty() {
            m = select(&m, &selected);
        }
        let dest = destination(&root.path, target);
        if std::fs::read_dir(&dest)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
        {
            return Err(Error::Invalid(format!(
                "{} is not empty: restore into an absent or empty place, or beneath another with --target DIR",
                dest.display()
            )));
        }
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| crate::error::local(format!("cannot create {}", parent.display()), e))?;
        }
        let s = materialize(&m, &dest, || PackSource { repo, window: None }, true, progress)?;
        stats.entries += s.entries;
        stats.files += s.files;
        stats.bytes += s.bytes;
        stats.restored.push((root.path.clone(), dest.display().to_string()));
    }
    if let Some(i) = matched.iter().position(|m| !m) {
        return Err(Error::Invalid(format!(
            "{} is not in a directory this snapshot holds (it holds {})",
            paths[i].display(),
            snap.roots
                .iter()
                .map(|r| r.path.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(stats)
}
