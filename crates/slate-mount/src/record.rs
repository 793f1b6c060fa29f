//! Boot profiles: which files, and which parts of them, were read first.
//!
//! `--record FILE` keeps, in order of first access, each file read and the
//! ranges read from it (rounded out to 64 KiB). Attached to a snapshot and
//! signed by a release key (`slate profile sign`), the profile lets the
//! next mount fetch all of it in a few large parallel requests before
//! programs ask. A profile only chooses what is fetched early: every byte
//! is still checked against the manifest, so a wrong one costs bytes,
//! never correctness. Format: docs/format/cache.md.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use slate_agent::{Error, Result};
use slate_core::keys::{PublicKey, SecretKey};
use slate_core::trust::{count_valid, parse_signatures, Signature};
use slate_core::{ChunkId, SnapshotId};

use crate::tree::Tree;

/// The signature domain of profiles.
pub const PROFILE_DOMAIN: &[u8] = b"slate boot profile v1";

/// First line of a profile.
pub const PROFILE_MAGIC: &str = "slate-profile-v1";

/// Reads are recorded in units of this many bytes.
const GRAIN: u64 = 64 << 10;

/// Most lines a profile may have (a hostile one is bounded).
const MAX_LINES: usize = 1_000_000;

/// Entries in order of first read, and the ranges read from each.
type Reads = (Vec<usize>, HashMap<usize, Vec<(u64, u64)>>);

/// Records first reads while mounted.
pub struct Recorder {
    inner: Mutex<Reads>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            inner: Mutex::new((Vec::new(), HashMap::new())),
        }
    }
}

impl Recorder {
    /// Note a read of entry `i`.
    pub fn note(&self, i: usize, offset: u64, len: u64) {
        let start = offset / GRAIN * GRAIN;
        let end = (offset + len).div_ceil(GRAIN) * GRAIN;
        let mut g = self.inner.lock().unwrap();
        let (order, ranges) = &mut *g;
        let r = ranges.entry(i).or_insert_with(|| {
            order.push(i);
            Vec::new()
        });
        // Reads are mostly sequential: extend the last range when they touch.
        match r.last_mut() {
            Some(last) if start <= last.1 && end >= last.0 => {
                last.0 = last.0.min(start);
                last.1 = last.1.max(end);
            }
            _ => r.push((start, end)),
        }
    }

    /// The profile so far.
    pub fn profile(&self, snapshot: &SnapshotId, tree: &Tree) -> Profile {
        let g = self.inner.lock().unwrap();
        let mut lines = Vec::new();
        for i in &g.0 {
            for &(s, e) in &g.1[i] {
                lines.push((tree.manifest.entries[*i].path.clone(), s, e));
            }
        }
        Profile {
            snapshot: *snapshot,
            lines,
        }
    }
}

/// A profile: ranges of files, in the order they were first read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The snapshot it was recorded on.
    pub snapshot: SnapshotId,
    /// (path, start, end) in first-read order.
    pub lines: Vec<(Vec<u8>, u64, u64)>,
}

impl Profile {
    /// The text form.
    pub fn encode(&self) -> String {
        let mut s = format!("{PROFILE_MAGIC}\nsnapshot {}\n", self.snapshot);
        for (p, a, b) in &self.lines {
            s.push_str(&format!("{a} {b} {}\n", hex::encode(p)));
        }
        s
    }

    /// Parse the text form.
    pub fn decode(text: &str) -> Result<Profile> {
        let bad = |why: &str| Error::Untrusted(format!("not a slate profile: {why}"));
        let mut lines = text.lines();
        if lines.next() != Some(PROFILE_MAGIC) {
            return Err(bad("the first line is not slate-profile-v1"));
        }
        let snapshot = lines
            .next()
            .and_then(|l| l.strip_prefix("snapshot "))
            .and_then(SnapshotId::from_hex)
            .ok_or_else(|| bad("the second line must be `snapshot <id>`"))?;
        let mut out = Vec::new();
        for l in lines {
            if out.len() >= MAX_LINES {
                return Err(bad("too many lines"));
            }
            let mut f = l.split(' ');
            let (Some(a), Some(b), Some(p), None) = (f.next(), f.next(), f.next(), f.next()) else {
                return Err(bad("a line is not `START END PATH-HEX`"));
            };
            let (Ok(a), Ok(b), Ok(p)) = (a.parse::<u64>(), b.parse::<u64>(), hex::decode(p)) else {
                return Err(bad("a line is not `START END PATH-HEX`"));
            };
            if a > b {
                return Err(bad("a range ends before it starts"));
            }
            out.push((p, a, b));
        }
        Ok(Profile { snapshot, lines: out })
    }

    /// Write the text form to `path` (atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        slate_agent::state::write_atomic(path, self.encode().as_bytes())
    }

    /// The chunks the profile names in `tree`, in order, each once. Lines
    /// naming paths the tree lacks, or ranges past a file's end, are
    /// skipped: the hint may come from another snapshot.
    pub fn chunks(&self, tree: &Tree) -> Vec<(ChunkId, u32)> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for (p, a, b) in &self.lines {
            let Some(i) = tree.manifest.find(p) else {
                continue;
            };
            let Some(layout) = tree.layout(i) else {
                continue;
            };
            for (_, data_start, len) in layout.pieces(*a, b.saturating_sub(*a)) {
                for (k, _, _) in layout.chunk_spans(data_start, len) {
                    let c = layout.chunks[k];
                    if seen.insert(c.id) {
                        out.push((c.id, c.len));
                    }
                }
            }
        }
        out
    }
}

/// Sign a profile's text with a release key.
pub fn sign(text: &[u8], key: &SecretKey) -> Signature {
    Signature {
        key: key.public(),
        sig: key.sign(PROFILE_DOMAIN, text),
    }
}

/// Check a profile for `snapshot`: its text must carry a valid signature by
/// one of `trusted`, and name that snapshot.
pub fn verify(text: &[u8], sigs: &[u8], snapshot: &SnapshotId, trusted: &[PublicKey]) -> Result<Profile> {
    let sigs = std::str::from_utf8(sigs)
        .ok()
        .and_then(|s| parse_signatures(s).ok())
        .ok_or_else(|| Error::Untrusted("the profile's signatures do not parse".into()))?;
    if count_valid(PROFILE_DOMAIN, text, &sigs, trusted) == 0 {
        return Err(Error::Untrusted(
            "the profile carries no valid signature by a trusted release key".into(),
        ));
    }
    let text = std::str::from_utf8(text).map_err(|_| Error::Untrusted("the profile is not text".into()))?;
    let p = Profile::decode(text)?;
    if p.snapshot != *snapshot {
        return Err(Error::Untrusted(format!(
            "the profile was made for snapshot {}, not {snapshot}",
            p.snapshot
        )));
    }
    Ok(p)
}

/// Storage keys of a snapshot's profile and its signatures.
pub fn profile_keys(id: &SnapshotId) -> [String; 2] {
    let h = id.to_hex();
    [
        format!("snapshots/{}/{h}.profile", &h[..2]),
        format!("snapshots/{}/{h}.profile-sig", &h[..2]),
    ]
}
