//! `slate state audit`: what a running root holds that nobody declared.
//!
//! The root is walked and compared with the manifest of the snapshot it
//! came from: every entry added, removed or changed (type, content, mode,
//! owner, file times, xattrs) is drift, unless the policy declares the path
//! (any state) or the audit ignores it (kernel filesystems). Another
//! filesystem mounted where nothing is declared is drift too, and is not
//! descended into. File contents are compared by hashing each file at the
//! manifest's own chunk boundaries, in parallel; `quick` compares sizes
//! and times only.
//!
//! [`shadows`] is the same question asked before an update: which paths
//! whose state persists (server, local, backup) hide a file that the new
//! snapshot changes, so that the new image's version would never be seen.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use slate_core::id::ChunkId;
use slate_core::manifest::diff::{diff, ChangeKind};
use slate_core::manifest::{path as mpath, Kind, Manifest};

use crate::error::{Error, Result};
use crate::policy::{Mode, Policy};

/// How a path drifted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Present in the root, not in the snapshot.
    Added,
    /// In the snapshot, not in the root.
    Removed,
    /// In both, different.
    Changed,
    /// Another filesystem is mounted here.
    Mounted,
}

impl Change {
    /// The word printed for people.
    pub fn word(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Removed => "removed",
            Change::Changed => "changed",
            Change::Mounted => "mounted",
        }
    }
}

/// One undeclared difference.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Drift {
    /// Absolute path in the root.
    pub path: String,
    /// What happened to it.
    pub change: Change,
    /// Details: which properties differ, how many entries lie beneath.
    pub detail: String,
}

/// An audit's result.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AuditReport {
    /// Every drift, in tree order.
    pub drift: Vec<Drift>,
    /// Entries of the root that were compared.
    pub checked: u64,
    /// Bytes of file content hashed.
    pub hashed_bytes: u64,
}

impl AuditReport {
    /// The drift grouped by the directory that holds it, for people.
    pub fn by_directory(&self) -> BTreeMap<String, Vec<&Drift>> {
        let mut g: BTreeMap<String, Vec<&Drift>> = BTreeMap::new();
        for d in &self.drift {
            let dir = match d.path.rfind('/') {
                Some(0) | None => "/".to_string(),
                Some(i) => d.path[..i].to_string(),
            };
            g.entry(dir).or_default().push(d);
        }
        g
    }
}

/// Options of an audit.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuditOptions {
    /// Compare file sizes and times only, without reading contents.
    pub quick: bool,
}

fn abs(rel: &[u8]) -> String {
    format!("/{}", mpath::display(rel))
}

struct ContentCheck {
    entry: usize,
    path: PathBuf,
    rel: Vec<u8>,
    /// Metadata differences found already, reported with the content's.
    meta: Option<String>,
}

/// Audit the root at `root` against the snapshot manifest `m`.
pub fn audit(root: &Path, m: &Manifest, policy: &Policy, opts: AuditOptions) -> Result<AuditReport> {
    let root_md =
        std::fs::symlink_metadata(root).map_err(|e| Error(format!("cannot audit {}: {e}", root.display())))?;
    if !root_md.is_dir() {
        return Err(Error(format!("{} is not a directory", root.display())));
    }
    let skip = |rel: &[u8]| -> bool {
        let Ok(r) = std::str::from_utf8(rel) else { return false };
        policy.covering(r).is_some()
            || policy.audit_ignore.iter().any(|i| {
                let i = i.trim_start_matches('/');
                r == i || (r.len() > i.len() && r.starts_with(i) && r.as_bytes()[i.len()] == b'/')
            })
    };
    let mut report = AuditReport::default();
    let mut seen = vec![false; m.entries.len()];
    let mut walked_dirs: std::collections::HashSet<Vec<u8>> = std::collections::HashSet::new();
    let mut checks: Vec<ContentCheck> = Vec::new();
    if let Some(0) = m.find(b"") {
        seen[0] = true;
        if let Some(d) = compare_meta(&m.entries[0], &root_md, root, true)? {
            report.drift.push(Drift {
                path: "/".into(),
                change: Change::Changed,
                detail: d,
            });
        }
    }
    // Depth-first, in byte order, like the manifest.
    let mut stack: Vec<(PathBuf, Vec<u8>)> = vec![(root.to_path_buf(), Vec::new())];
    while let Some((dir, rel)) = stack.pop() {
        walked_dirs.insert(rel.clone());
        let mut names: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .map_err(|e| Error(format!("cannot read {}: {e}", dir.display())))?
            .map(|d| d.map(|d| d.file_name().as_bytes().to_vec()))
            .collect::<std::io::Result<_>>()
            .map_err(|e| Error(format!("cannot read {}: {e}", dir.display())))?;
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let mut r = rel.clone();
            if !r.is_empty() {
                r.push(b'/');
            }
            r.extend_from_slice(&name);
            if skip(&r) {
                if let Some(i) = m.find(&r) {
                    seen[i] = true;
                }
                continue;
            }
            let path = dir.join(std::ffi::OsStr::from_bytes(&name));
            let md =
                std::fs::symlink_metadata(&path).map_err(|e| Error(format!("cannot read {}: {e}", path.display())))?;
            report.checked += 1;
            let found = m.find(&r);
            if let Some(i) = found {
                seen[i] = true;
            }
            if md.dev() != root_md.dev() {
                report.drift.push(Drift {
                    path: abs(&r),
                    change: Change::Mounted,
                    detail: "another filesystem is mounted here, and the policy does not declare it".into(),
                });
                continue;
            }
            let Some(i) = found else {
                let detail = if md.is_dir() {
                    format!("directory, {} entries beneath", count_beneath(&path))
                } else {
                    type_name(&md).to_string()
                };
                report.drift.push(Drift {
                    path: abs(&r),
                    change: Change::Added,
                    detail,
                });
                continue;
            };
            let e = &m.entries[i];
            let kind = match e.kind {
                Kind::HardLink(l) => &m.entries[l as usize].kind,
                ref k => k,
            };
            let same_type = match kind {
                Kind::Dir => md.is_dir(),
                Kind::File(_) => md.is_file(),
                Kind::Symlink(_) => md.file_type().is_symlink(),
                Kind::CharDev(_) => md.file_type().is_char_device(),
                Kind::BlockDev(_) => md.file_type().is_block_device(),
                Kind::Fifo => md.file_type().is_fifo(),
                Kind::Socket => md.file_type().is_socket(),
                Kind::HardLink(_) => false,
            };
            if !same_type {
                report.drift.push(Drift {
                    path: abs(&r),
                    change: Change::Changed,
                    detail: format!("was a {}, is a {}", kind_name(kind), type_name(&md)),
                });
                continue;
            }
            let mut content_differs = None;
            match kind {
                Kind::File(f) => {
                    if md.size() != f.size {
                        content_differs = Some(format!("size {} -> {}", f.size, md.size()));
                    } else if !opts.quick && f.size > 0 {
                        checks.push(ContentCheck {
                            entry: i,
                            path: path.clone(),
                            rel: r.clone(),
                            meta: compare_meta(e, &md, &path, false)?,
                        });
                        continue;
                    }
                }
                Kind::Symlink(t) => {
                    let now = std::fs::read_link(&path).map_err(|e| Error(format!("{}: {e}", path.display())))?;
                    if now.as_os_str().as_bytes() != t.as_slice() {
                        content_differs = Some("link target".into());
                    }
                }
                Kind::CharDev(d) | Kind::BlockDev(d) if md.rdev() != *d => {
                    content_differs = Some("device number".into());
                }
                _ => {}
            }
            if let Some(what) = content_differs {
                report.drift.push(Drift {
                    path: abs(&r),
                    change: Change::Changed,
                    detail: what,
                });
            } else if let Some(d) = compare_meta(e, &md, &path, md.is_dir())? {
                report.drift.push(Drift {
                    path: abs(&r),
                    change: Change::Changed,
                    detail: d,
                });
            }
            if md.is_dir() {
                subdirs.push((path, r));
            }
        }
        // Reverse, so the stack pops them in byte order.
        stack.extend(subdirs.into_iter().rev());
    }

    // Contents, in parallel.
    let results: Vec<Option<(Drift, u64)>> = checks.par_iter().map(|c| content_drift(m, c)).collect::<Result<_>>()?;
    for (d, n) in results.into_iter().flatten() {
        report.hashed_bytes += n;
        if !d.detail.is_empty() {
            report.drift.push(d);
        }
    }

    // What the snapshot has and the root does not: reported where the
    // walk looked and did not find it (not beneath something already
    // reported, declared or ignored).
    for (i, e) in m.entries.iter().enumerate() {
        if seen[i] || !walked_dirs.contains(mpath::parent(&e.path)) || skip(&e.path) {
            continue;
        }
        let beneath = m.entries[i + 1..]
            .iter()
            .take_while(|x| x.path.starts_with(&e.path) && x.path.get(e.path.len()) == Some(&b'/'))
            .count();
        report.drift.push(Drift {
            path: abs(&e.path),
            change: Change::Removed,
            detail: if beneath > 0 {
                format!("{}, {beneath} entries beneath", kind_name(&e.kind))
            } else {
                kind_name(&e.kind).to_string()
            },
        });
    }
    report
        .drift
        .sort_by(|a, b| mpath::cmp_tree_order(&a.path.as_bytes()[1..], &b.path.as_bytes()[1..]));
    Ok(report)
}

/// Compare one file's bytes with its manifest chunks; returns the bytes
/// hashed, with a drift whose detail is empty when they match.
fn content_drift(m: &Manifest, c: &ContentCheck) -> Result<Option<(Drift, u64)>> {
    let Some(f) = m.file_data(c.entry) else { return Ok(None) };
    let file = std::fs::File::open(&c.path).map_err(|e| Error(format!("cannot read {}: {e}", c.path.display())))?;
    // The chunks hold the data extents back to back.
    let mut extents = f.data_extents().into_iter();
    let (mut ext_off, mut ext_left) = match extents.next() {
        Some(x) => (x.offset, x.len),
        None => (0, 0),
    };
    let mut buf = Vec::new();
    let mut hashed = 0u64;
    let mut differs = false;
    for ch in &f.chunks {
        buf.clear();
        buf.resize(ch.len as usize, 0);
        let mut filled = 0usize;
        while filled < buf.len() {
            if ext_left == 0 {
                match extents.next() {
                    Some(x) => (ext_off, ext_left) = (x.offset, x.len),
                    None => break,
                }
            }
            let n = (buf.len() - filled).min(ext_left as usize);
            file.read_exact_at(&mut buf[filled..filled + n], ext_off)
                .map_err(|e| Error(format!("cannot read {}: {e}", c.path.display())))?;
            filled += n;
            ext_off += n as u64;
            ext_left -= n as u64;
        }
        hashed += filled as u64;
        if filled != buf.len() || ChunkId::of(&buf) != ch.id {
            differs = true;
            break;
        }
    }
    // Outside its extents the snapshot has holes: zeros. Data written
    // there since is a change too.
    if !differs && f.extents.is_some() {
        let mut pos = 0u64;
        let mut gaps = Vec::new();
        for x in f.data_extents() {
            gaps.push((pos, x.offset - pos));
            pos = x.offset + x.len;
        }
        gaps.push((pos, f.size - pos));
        for (off, len) in gaps.into_iter().filter(|g| g.1 > 0) {
            let mut left = len;
            let mut at = off;
            while left > 0 && !differs {
                let n = left.min(1 << 20) as usize;
                buf.clear();
                buf.resize(n, 0);
                file.read_exact_at(&mut buf, at)
                    .map_err(|e| Error(format!("cannot read {}: {e}", c.path.display())))?;
                differs = buf.iter().any(|&b| b != 0);
                at += n as u64;
                left -= n as u64;
            }
        }
    }
    let detail = match (differs, &c.meta) {
        (true, Some(m)) => format!("content, {m}"),
        (true, None) => "content".into(),
        (false, Some(m)) => m.clone(),
        (false, None) => String::new(),
    };
    Ok(Some((
        Drift {
            path: abs(&c.rel),
            change: Change::Changed,
            detail,
        },
        hashed,
    )))
}

/// Which metadata of `path` differs from the entry's, for people.
fn compare_meta(
    e: &slate_core::manifest::Entry,
    md: &std::fs::Metadata,
    path: &Path,
    is_dir: bool,
) -> Result<Option<String>> {
    let now = slate_repo::scan::read_meta(path, md)?;
    let mut what = Vec::new();
    if now.mode != e.meta.mode && !md.file_type().is_symlink() {
        what.push(format!("mode {:04o} -> {:04o}", e.meta.mode, now.mode));
    }
    if now.uid != e.meta.uid || now.gid != e.meta.gid {
        what.push(format!(
            "owner {}:{} -> {}:{}",
            e.meta.uid, e.meta.gid, now.uid, now.gid
        ));
    }
    // A directory's time changes with every entry made in it; its entries
    // are reported themselves.
    if !is_dir && now.mtime != e.meta.mtime {
        what.push("modification time".into());
    }
    if now.xattrs != e.meta.xattrs {
        what.push("xattrs or ACLs".into());
    }
    Ok((!what.is_empty()).then(|| what.join(", ")))
}

fn count_beneath(p: &Path) -> u64 {
    let mut n = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                n += 1;
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }
    n
}

fn type_name(md: &std::fs::Metadata) -> &'static str {
    let t = md.file_type();
    if t.is_dir() {
        "directory"
    } else if t.is_file() {
        "file"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_fifo() {
        "fifo"
    } else {
        "socket"
    }
}

fn kind_name(k: &Kind) -> &'static str {
    match k {
        Kind::Dir => "directory",
        Kind::File(_) | Kind::HardLink(_) => "file",
        Kind::Symlink(_) => "symlink",
        Kind::CharDev(_) => "character device",
        Kind::BlockDev(_) => "block device",
        Kind::Fifo => "fifo",
        Kind::Socket => "socket",
    }
}

/// Whether `path`'s entries differ in their times only: every rebuilt
/// image touches those, and nobody misses them behind kept state.
fn only_times_differ(old: &Manifest, new: &Manifest, path: &[u8]) -> bool {
    match (old.find(path), new.find(path)) {
        (Some(a), Some(b)) => {
            let (a, b) = (&old.entries[a].meta, &new.entries[b].meta);
            a.mode == b.mode && a.uid == b.uid && a.gid == b.gid && a.xattrs == b.xattrs
        }
        _ => false,
    }
}

/// A path whose kept state hides a change of the new snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Shadow {
    /// The changed path.
    pub path: String,
    /// How the new snapshot changes it.
    pub change: String,
    /// The declared path that keeps state over it.
    pub declared: String,
    /// That path's state.
    pub state: Mode,
}

/// Paths whose persistent state (server, local, backup) hides something
/// the update from `old` to `new` changes.
pub fn shadows(policy: &Policy, old: &Manifest, new: &Manifest) -> Vec<Shadow> {
    if !policy.entries.iter().any(|e| e.state.persists()) {
        return Vec::new();
    }
    diff(old, new)
        .changes
        .into_iter()
        .filter(|c| c.kind != ChangeKind::MetaChanged || !only_times_differ(old, new, &c.path))
        .filter_map(|c| {
            let rel = String::from_utf8_lossy(&c.path).into_owned();
            let e = policy.covering(&rel)?;
            e.state.persists().then(|| Shadow {
                path: format!("/{rel}"),
                change: match c.kind {
                    ChangeKind::Added => "added",
                    ChangeKind::Removed => "removed",
                    ChangeKind::TypeChanged => "type changed",
                    ChangeKind::ContentChanged => "content changed",
                    ChangeKind::MetaChanged => "metadata changed",
                }
                .to_string(),
                declared: e.path.clone(),
                state: e.state,
            })
        })
        .collect()
}
