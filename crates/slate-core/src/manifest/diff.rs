//! Comparing two manifests: which paths were added, removed or changed, and
//! which chunks the newer one needs that the older one does not hold.

use std::cmp::Ordering;
use std::collections::HashSet;

use super::path::cmp_tree_order;
use super::{ChunkRef, Kind, Manifest};
use crate::id::ChunkId;

/// How one path differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// Only in the newer manifest.
    Added,
    /// Only in the older manifest.
    Removed,
    /// In both, with another type.
    TypeChanged,
    /// In both, same type, other content (file bytes, link target, device).
    ContentChanged,
    /// In both, same content, other metadata (mode, owner, time, xattrs).
    MetaChanged,
}

/// One differing path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Raw path.
    pub path: Vec<u8>,
    /// How it differs.
    pub kind: ChangeKind,
}

/// The difference between two manifests.
#[derive(Clone, Debug, Default)]
pub struct Diff {
    /// Differing paths in tree order.
    pub changes: Vec<Change>,
    /// Chunks of the newer manifest absent from the older, each once.
    pub new_chunks: Vec<ChunkRef>,
}

impl Diff {
    /// Uncompressed bytes of the new chunks: what a client that holds the
    /// older tree lacks.
    pub fn new_bytes(&self) -> u64 {
        self.new_chunks.iter().map(|c| c.len as u64).sum()
    }
}

/// The set of chunk ids a manifest uses.
pub fn chunk_set(m: &Manifest) -> HashSet<ChunkId> {
    m.entries
        .iter()
        .filter_map(|e| match &e.kind {
            Kind::File(f) => Some(f.chunks.iter().map(|c| c.id)),
            _ => None,
        })
        .flatten()
        .collect()
}

fn content_eq(a: &Manifest, ia: usize, b: &Manifest, ib: usize) -> Option<bool> {
    let (ka, kb) = (&a.entries[ia].kind, &b.entries[ib].kind);
    if let (Some(fa), Some(fb)) = (a.file_data(ia), b.file_data(ib)) {
        // Hard links compare as the files they name.
        return Some(fa == fb);
    }
    if std::mem::discriminant(ka) != std::mem::discriminant(kb) {
        return None;
    }
    Some(ka == kb)
}

/// Compare `old` with `new`.
pub fn diff(old: &Manifest, new: &Manifest) -> Diff {
    let mut changes = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < old.entries.len() || j < new.entries.len() {
        let ord = match (old.entries.get(i), new.entries.get(j)) {
            (Some(a), Some(b)) => cmp_tree_order(&a.path, &b.path),
            (Some(_), None) => Ordering::Less,
            _ => Ordering::Greater,
        };
        match ord {
            Ordering::Less => {
                changes.push(Change {
                    path: old.entries[i].path.clone(),
                    kind: ChangeKind::Removed,
                });
                i += 1;
            }
            Ordering::Greater => {
                changes.push(Change {
                    path: new.entries[j].path.clone(),
                    kind: ChangeKind::Added,
                });
                j += 1;
            }
            Ordering::Equal => {
                let kind = match content_eq(old, i, new, j) {
                    None => Some(ChangeKind::TypeChanged),
                    Some(false) => Some(ChangeKind::ContentChanged),
                    Some(true) if old.entries[i].meta != new.entries[j].meta => Some(ChangeKind::MetaChanged),
                    Some(true) => None,
                };
                if let Some(kind) = kind {
                    changes.push(Change {
                        path: new.entries[j].path.clone(),
                        kind,
                    });
                }
                i += 1;
                j += 1;
            }
        }
    }
    let have = chunk_set(old);
    let mut seen = HashSet::new();
    let new_chunks = new
        .entries
        .iter()
        .filter_map(|e| match &e.kind {
            Kind::File(f) => Some(f.chunks.iter()),
            _ => None,
        })
        .flatten()
        .filter(|c| !have.contains(&c.id) && seen.insert(c.id))
        .copied()
        .collect();
    Diff { changes, new_chunks }
}

#[cfg(test)]
mod tests {
    use super::super::{Entry, FileData, Meta};
    use super::*;

    fn file(p: &str, content: &[u8]) -> Entry {
        Entry {
            path: p.as_bytes().to_vec(),
            meta: Meta::default(),
            kind: Kind::File(FileData {
                size: content.len() as u64,
                extents: None,
                chunks: vec![ChunkRef {
                    id: ChunkId::of(content),
                    len: content.len() as u32,
                }],
            }),
        }
    }

    fn root() -> Entry {
        Entry {
            path: vec![],
            meta: Meta::default(),
            kind: Kind::Dir,
        }
    }

    #[test]
    fn finds_each_kind_of_change() {
        let a = Manifest {
            entries: vec![root(), file("a", b"1"), file("b", b"2"), file("c", b"3")],
        };
        let mut b = Manifest {
            entries: vec![root(), file("a", b"1"), file("c", b"33"), file("d", b"4")],
        };
        b.entries[1].meta.mode = 0o600;
        let d = diff(&a, &b);
        let got: Vec<_> = d
            .changes
            .iter()
            .map(|c| (String::from_utf8_lossy(&c.path).to_string(), c.kind))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a".into(), ChangeKind::MetaChanged),
                ("b".into(), ChangeKind::Removed),
                ("c".into(), ChangeKind::ContentChanged),
                ("d".into(), ChangeKind::Added),
            ]
        );
        assert_eq!(d.new_bytes(), 3);
    }
}
