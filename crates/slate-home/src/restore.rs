//! Restore: read a snapshot's manifests and materialise them with the
//! repository's bit-for-bit checkout, chunks fetched from packs (a window
//! at a time, since a backup stores files in tree order), opened and
//! checked against their keyed ids.
//!
//! What grants privileges is not recreated unless the caller asks for it:
//! setuid bits, setgid bits on files, `security.capability` xattrs and
//! device nodes. A backup is the user's data, read back from a server by a
//! restore that often runs as root; a setuid-root shell or a raw disk
//! device appearing in a home directory is the way such data turns into
//! root on the machine. [`RestoreStats::left_out`] says what was skipped.

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
    /// Entries that were left out or restored without their privileges
    /// (without `allow_privileged`).
    pub left_out: u64,
    /// The first of them, as `PATH (what)`.
    pub left_out_examples: Vec<String>,
}

/// How many left-out entries a restore names.
const LEFT_OUT_EXAMPLES: usize = 10;

/// The xattr holding file capabilities.
const CAPABILITY_XATTR: &[u8] = b"security.capability";

/// `m` without what grants privileges: setuid bits, setgid bits on
/// non-directories (on a directory setgid only passes its group on),
/// file capabilities, and device nodes (with hard links to them). Returns
/// the new manifest and, for each entry changed or dropped, its path and
/// what was taken away.
pub fn strip_privileged(m: &Manifest) -> (Manifest, Vec<(Vec<u8>, &'static str)>) {
    let mut out = Manifest::default();
    let mut changed = Vec::new();
    let mut new_index = vec![u32::MAX; m.entries.len()];
    for (i, e) in m.entries.iter().enumerate() {
        let mut e = e.clone();
        let device = |k: &Kind| matches!(k, Kind::CharDev(_) | Kind::BlockDev(_));
        match e.kind {
            Kind::HardLink(l) => {
                if new_index[l as usize] == u32::MAX {
                    // A link to a device that was left out.
                    changed.push((e.path.clone(), "device node"));
                    continue;
                }
                e.kind = Kind::HardLink(new_index[l as usize]);
            }
            ref k if device(k) => {
                changed.push((e.path.clone(), "device node"));
                continue;
            }
            _ => {}
        }
        let mut what = Vec::new();
        if e.meta.mode & 0o4000 != 0 {
            what.push("setuid");
        }
        if e.meta.mode & 0o2000 != 0 && !matches!(e.kind, Kind::Dir) {
            what.push("setgid");
        }
        if e.meta.xattrs.iter().any(|x| x.name == CAPABILITY_XATTR) {
            what.push("file capabilities");
        }
        if !what.is_empty() {
            if !matches!(e.kind, Kind::Dir) {
                e.meta.mode &= !0o6000;
            } else {
                e.meta.mode &= !0o4000;
            }
            e.meta.xattrs.retain(|x| x.name != CAPABILITY_XATTR);
            // Hard links share their leader's inode: named once, by the leader.
            if !matches!(e.kind, Kind::HardLink(_)) {
                changed.push((
                    e.path.clone(),
                    match what.as_slice() {
                        ["setuid"] => "setuid",
                        ["setgid"] => "setgid",
                        ["file capabilities"] => "file capabilities",
                        _ => "setuid/setgid, file capabilities",
                    },
                ));
            }
        }
        new_index[i] = out.entries.len() as u32;
        out.entries.push(e);
    }
    (out, changed)
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
/// (absolute, as backed up) when given. Without `allow_privileged`, what
/// [`strip_privileged`] takes away is not recreated, and counted.
pub fn restore(
    repo: &HomeRepo,
    name: &str,
    target: Option<&Path>,
    paths: &[PathBuf],
    allow_privileged: bool,
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
        if !allow_privileged {
            let (safe, changed) = strip_privileged(&m);
            m = safe;
            stats.left_out += changed.len() as u64;
            for (p, what) in changed {
                if stats.left_out_examples.len() < LEFT_OUT_EXAMPLES {
                    let shown = Path::new(&root.path).join(std::ffi::OsStr::from_bytes(&p));
                    stats.left_out_examples.push(format!("{} ({what})", shown.display()));
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use slate_core::manifest::{Entry, Meta, Xattr};

    fn entry(path: &[u8], mode: u32, kind: Kind) -> Entry {
        Entry {
            path: path.to_vec(),
            meta: Meta {
                mode,
                ..Default::default()
            },
            kind,
        }
    }

    #[test]
    fn privileges_are_stripped_and_named() {
        let mut capped = entry(b"ping", 0o755, Kind::Fifo);
        capped.meta.xattrs = vec![
            Xattr {
                name: b"security.capability".to_vec(),
                value: vec![1, 2, 3],
            },
            Xattr {
                name: b"user.note".to_vec(),
                value: b"kept".to_vec(),
            },
        ];
        let m = Manifest {
            entries: vec![
                entry(b"", 0o755, Kind::Dir),
                entry(b"shared", 0o2775, Kind::Dir),
                entry(b"disk", 0o600, Kind::BlockDev(0x0800)),
                entry(b"disk-link", 0o600, Kind::HardLink(2)),
                capped,
                entry(b"su", 0o4755, Kind::Fifo),
                entry(b"su-link", 0o4755, Kind::HardLink(5)),
                entry(b"tty", 0o620, Kind::CharDev(0x0401)),
                entry(b"wall", 0o2755, Kind::Socket),
            ],
        };
        let (safe, changed) = strip_privileged(&m);
        let names: Vec<String> = changed
            .iter()
            .map(|(p, w)| format!("{}:{w}", String::from_utf8_lossy(p)))
            .collect();
        assert_eq!(
            names,
            [
                "disk:device node",
                "disk-link:device node",
                "ping:file capabilities",
                "su:setuid",
                "tty:device node",
                "wall:setgid"
            ]
        );
        let paths: Vec<&[u8]> = safe.entries.iter().map(|e| e.path.as_slice()).collect();
        assert_eq!(paths, [&b""[..], b"shared", b"ping", b"su", b"su-link", b"wall"]);
        assert_eq!(safe.entries[1].meta.mode, 0o2775, "a setgid directory keeps its bit");
        assert_eq!(safe.entries[2].meta.xattrs.len(), 1);
        assert_eq!(safe.entries[3].meta.mode, 0o755);
        assert_eq!(
            safe.entries[4].kind,
            Kind::HardLink(3),
            "links follow their leader's new place"
        );
        assert_eq!(safe.entries[5].meta.mode, 0o755);
    }
}
