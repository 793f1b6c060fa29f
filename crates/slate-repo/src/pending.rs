//! Two-phase deletion for repositories without a writer lock (an object
//! store): gc records what it finds dead in `gc/pending` instead of
//! deleting it, and a later gc deletes an entry only once its grace period
//! has passed and it is still dead. Writers (commit, pull) read the record
//! when they start, never reuse a pending pack, and refuse to move their
//! channel once they have run longer than half the shortest grace period
//! of an entry recorded meanwhile: so no writer that started before an
//! entry was recorded can publish a reference to it after its deletion.
//! See docs/scale.md, "Crash safety", point 2.
//!
//! The record (text, one entry a line):
//!
//! ```text
//! slate-gc-pending-v1
//! pack 1765000000 86400 <pack id>
//! snapshot 1765000000 86400 <snapshot id>
//! key 1765000000 86400 deltas/ab/<from>/<to>.delta
//! ```
//!
//! Each entry: its kind, when it was found dead (Unix seconds), the grace
//! period of the gc that found it (seconds), and its name.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use slate_core::PackId;

use crate::error::{Error, Result};
use crate::repo::Repo;
use crate::storage::{Expected, Storage};

/// The record's storage key.
pub const PENDING_KEY: &str = "gc/pending";
const HEADER: &str = "slate-gc-pending-v1";

/// What a pending entry names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A pack and its index (`name` is the pack id).
    Pack,
    /// A snapshot record and its signatures (`name` is the snapshot id).
    Snapshot,
    /// Any other object (`name` is its storage key).
    Key,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::Pack => "pack",
            Kind::Snapshot => "snapshot",
            Kind::Key => "key",
        }
    }
}

/// When an entry was found dead and how long it must stay so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    /// Unix seconds.
    pub marked: u64,
    /// Grace period in seconds.
    pub grace: u64,
}

impl Mark {
    /// Whether the grace period has passed at `now` (Unix seconds).
    pub fn due(&self, now: u64) -> bool {
        now >= self.marked.saturating_add(self.grace)
    }
}

/// The decoded `gc/pending` record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// Entries by kind and name.
    pub entries: BTreeMap<(Kind, String), Mark>,
}

/// Now, in Unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Pending {
    /// Encode as stored.
    pub fn encode(&self) -> Vec<u8> {
        let mut s = format!("{HEADER}\n");
        for ((kind, name), m) in &self.entries {
            s.push_str(&format!("{} {} {} {name}\n", kind.word(), m.marked, m.grace));
        }
        s.into_bytes()
    }

    /// Decode a stored record.
    pub fn decode(bytes: &[u8]) -> Result<Pending> {
        let bad = |d: &str| {
            Error::Invalid(format!(
                "{PENDING_KEY}: {d} (remove it to start the grace periods anew)"
            ))
        };
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(bad("not a slate-gc-pending-v1 record"));
        }
        let mut p = Pending::default();
        for l in lines.filter(|l| !l.is_empty()) {
            let mut f = l.splitn(4, ' ');
            let kind = match f.next() {
                Some("pack") => Kind::Pack,
                Some("snapshot") => Kind::Snapshot,
                Some("key") => Kind::Key,
                _ => return Err(bad(&format!("unknown entry {l:?}"))),
            };
            let marked = f.next().and_then(|v| v.parse().ok());
            let grace = f.next().and_then(|v| v.parse().ok());
            let (Some(marked), Some(grace), Some(name)) = (marked, grace, f.next()) else {
                return Err(bad(&format!("malformed entry {l:?}")));
            };
            p.entries.insert((kind, name.to_string()), Mark { marked, grace });
        }
        Ok(p)
    }

    /// Read the record and what a conditional replacement must find.
    pub fn read(storage: &dyn Storage) -> Result<(Pending, Expected)> {
        let (bytes, expected) = storage.read_expecting(PENDING_KEY)?;
        let p = match bytes {
            Some(b) => Pending::decode(&b)?,
            None => Pending::default(),
        };
        Ok((p, expected))
    }

    /// Pack ids of the pending packs.
    pub fn packs(&self) -> HashSet<PackId> {
        self.entries
            .keys()
            .filter(|(k, _)| *k == Kind::Pack)
            .filter_map(|(_, n)| PackId::from_hex(n))
            .collect()
    }
}

/// What a writer (commit, pull) on a repository without a lock learned
/// about `gc/pending` when it started.
pub struct WriteGuard {
    started: Instant,
    seen: HashSet<(Kind, String)>,
    /// Packs pending when the writer started: it must not reuse them.
    pub pending_packs: HashSet<PackId>,
    checked: bool,
}

impl WriteGuard {
    /// Read `gc/pending` at the start of a write. A repository with a lock
    /// (a directory) has no record: its gc deletes under the lock.
    pub fn start(repo: &Repo) -> Result<WriteGuard> {
        let started = Instant::now();
        let checked = repo.root.is_none();
        let record = if checked {
            Pending::read(repo.storage.as_ref())?.0
        } else {
            Pending::default()
        };
        Ok(WriteGuard {
            started,
            pending_packs: record.packs(),
            seen: record.entries.into_keys().collect(),
            checked,
        })
    }

    /// Just before the channel moves: fail if a gc recorded entries
    /// meanwhile and this write has run longer than half the shortest of
    /// their grace periods (their deletion may then be near, and this
    /// write may rely on them).
    pub fn check_before_publish(&self, repo: &Repo) -> Result<()> {
        if !self.checked {
            return Ok(());
        }
        let (now, _) = Pending::read(repo.storage.as_ref())?;
        let grace = now
            .entries
            .iter()
            .filter(|(k, _)| !self.seen.contains(*k))
            .map(|(_, m)| m.grace)
            .min();
        let ran = self.started.elapsed();
        if let Some(grace) = grace {
            if ran.saturating_mul(2) > Duration::from_secs(grace) {
                return Err(Error::GcRace {
                    ran_secs: ran.as_secs_f64(),
                    grace_secs: grace,
                });
            }
        }
        Ok(())
    }
}

/// Parse a grace period: a number with an optional unit (`s`, `m`, `h`, `d`;
/// seconds without one), e.g. `24h`, `90m`, `0s`.
pub fn parse_grace(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('s') => (&s[..s.len() - 1], 1),
        Some('m') => (&s[..s.len() - 1], 60),
        Some('h') => (&s[..s.len() - 1], 3600),
        Some('d') => (&s[..s.len() - 1], 86400),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 24h, 90m, 30s or 2d"))?;
    n.checked_mul(mult)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_rejects_garbage() {
        let mut p = Pending::default();
        p.entries.insert(
            (Kind::Pack, "ab".repeat(32)),
            Mark {
                marked: 5,
                grace: 86400,
            },
        );
        p.entries
            .insert((Kind::Key, "deltas/ab/x y.delta".into()), Mark { marked: 7, grace: 0 });
        assert_eq!(Pending::decode(&p.encode()).unwrap(), p);
        assert!(Pending::decode(b"nope\n").is_err());
        assert!(Pending::decode(b"slate-gc-pending-v1\npack x 1\n").is_err());
        assert!(Pending::decode(b"slate-gc-pending-v1\nthing 1 2 x\n").is_err());
        assert!(Mark { marked: 10, grace: 5 }.due(15));
        assert!(!Mark { marked: 10, grace: 5 }.due(14));
    }

    #[test]
    fn grace_parses_units() {
        assert_eq!(parse_grace("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_grace("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_grace("2d").unwrap(), Duration::from_secs(172800));
        assert_eq!(parse_grace("7").unwrap(), Duration::from_secs(7));
        assert_eq!(parse_grace("0s").unwrap(), Duration::ZERO);
        assert!(parse_grace("soon").is_err());
        assert!(parse_grace("-1h").is_err());
    }
}
