//! Forgetting snapshots by a keep policy (restic's semantics), pruning the
//! packs no remaining snapshot needs, and checking a whole repository.
//!
//! Policy: snapshots are grouped by host, user and paths; within a group,
//! newest first, `--keep-last N` keeps the N newest, and each of
//! `--keep-hourly/daily/weekly/monthly/yearly N` keeps the newest snapshot
//! of each of the N most recent hours/days/ISO weeks/months/years that have
//! one (UTC). A snapshot any rule keeps is kept. With no rule at all
//! nothing is forgotten.

use std::collections::{BTreeMap, HashMap, HashSet};

use rayon::prelude::*;
use slate_core::manifest::Kind;
use slate_core::ChunkId;

use crate::error::{Error, Result};
use crate::format::{self, BlobEntry, Snapshot};
use crate::repo::{kind, HomeRepo};

/// How many snapshots of each period to keep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    /// The newest N.
    pub last: u32,
    /// The newest of each of the last N hours.
    pub hourly: u32,
    /// Days.
    pub daily: u32,
    /// ISO weeks (Monday to Sunday).
    pub weekly: u32,
    /// Months.
    pub monthly: u32,
    /// Years.
    pub yearly: u32,
}

impl KeepPolicy {
    /// True when no rule is set.
    pub fn is_empty(&self) -> bool {
        *self == KeepPolicy::default()
    }
}

/// The civil (year, month, day) of a day count since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `YYYY-MM-DD HH:MM:SS` UTC.
pub fn format_time(t: i64) -> String {
    let (y, m, d) = civil_from_days(t.div_euclid(86_400));
    let s = t.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// Which of `times` (newest first) the policy keeps.
pub fn apply_policy(times: &[i64], policy: &KeepPolicy) -> Vec<bool> {
    let mut keep = vec![false; times.len()];
    for k in keep.iter_mut().take(policy.last as usize) {
        *k = true;
    }
    let buckets: [(u32, &dyn Fn(i64) -> i64); 5] = [
        (policy.hourly, &|t| t.div_euclid(3600)),
        (policy.daily, &|t| t.div_euclid(86_400)),
        // 1970-01-01 was a Thursday: shifting by three days makes weeks start on Monday.
        (policy.weekly, &|t| (t.div_euclid(86_400) + 3).div_euclid(7)),
        (policy.monthly, &|t| {
            let (y, m, _) = civil_from_days(t.div_euclid(86_400));
            y * 12 + m as i64
        }),
        (policy.yearly, &|t| civil_from_days(t.div_euclid(86_400)).0),
    ];
    for (n, bucket) in buckets {
        let mut last = None;
        let mut kept = 0;
        for (i, &t) in times.iter().enumerate() {
            if kept == n {
                break;
            }
            let b = bucket(t);
            if last != Some(b) {
                last = Some(b);
                keep[i] = true;
                kept += 1;
            }
        }
    }
    keep
}

/// What forget (and prune) did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ForgetStats {
    /// Snapshots kept.
    pub kept: Vec<String>,
    /// Snapshots forgotten.
    pub forgotten: Vec<String>,
    /// Packs deleted.
    pub packs_deleted: u64,
    /// Packs rewritten without their unused chunks.
    pub packs_rewritten: u64,
    /// Bytes freed.
    pub bytes_freed: u64,
}

/// Snapshots are grouped by host, user and paths.
type GroupKey = (String, String, Vec<String>);

/// Forget the snapshots the policy does not keep; prune when asked.
pub fn forget(repo: &mut HomeRepo, policy: &KeepPolicy, prune_after: bool) -> Result<ForgetStats> {
    let mut stats = ForgetStats::default();
    if policy.is_empty() && !prune_after {
        return Err(Error::Invalid(
            "no keep rule given: name at least one of --keep-last/--keep-hourly/--keep-daily/--keep-weekly/--keep-monthly/--keep-yearly, or --prune alone".into(),
        ));
    }
    if !policy.is_empty() {
        let snaps = repo.snapshots()?;
        let mut groups: BTreeMap<GroupKey, Vec<(String, i64)>> = BTreeMap::new();
        for (name, s) in &snaps {
            let key = (
                s.host.clone(),
                s.user.clone(),
                s.roots.iter().map(|r| r.path.clone()).collect(),
            );
            groups
                .entry(key)
                .or_default()
                .push((name.clone(), s.time_ns.div_euclid(1_000_000_000)));
        }
        for (_, mut members) in groups {
            // `snapshots()` lists oldest first; newest first here.
            members.reverse();
            let times: Vec<i64> = members.iter().map(|m| m.1).collect();
            for (keep, (name, _)) in apply_policy(&times, policy).into_iter().zip(members) {
                if keep {
                    stats.kept.push(name);
                } else {
                    repo.backend.delete(kind::SNAPSHOT, &name)?;
                    stats.forgotten.push(name);
                }
            }
        }
    }
    if prune_after {
        prune(repo, &mut stats)?;
    }
    Ok(stats)
}

/// Every chunk the snapshots need, manifests included.
fn used_chunks(repo: &HomeRepo, snaps: &[(String, Snapshot)]) -> Result<HashSet<ChunkId>> {
    let mut used = HashSet::new();
    for (_, s) in snaps {
        for root in &s.roots {
            let chunks = root.manifest_chunks()?;
            used.extend(chunks.iter().map(|c| c.0));
            let m = repo.read_manifest(&chunks)?;
            for e in &m.entries {
                if let Kind::File(f) = &e.kind {
                    used.extend(f.chunks.iter().map(|c| c.id));
                }
            }
        }
    }
    Ok(used)
}

/// A pack with less than this share of its bytes in use is rewritten.
const REWRITE_BELOW: f64 = 0.5;

/// Delete packs no snapshot needs; rewrite mostly unused ones; delete
/// packs no index names (left by a killed backup). Must not run while a
/// backup to the same repository runs.
fn prune(repo: &mut HomeRepo, stats: &mut ForgetStats) -> Result<()> {
    let _lock = crate::lock::lock(repo, true)?;
    repo.reload_index()?;
    let snaps = repo.snapshots()?;
    let used = used_chunks(repo, &snaps)?;
    let packs = repo.packs.clone();
    let mut rewrite: Vec<(u32, BlobEntry)> = Vec::new();
    let mut drop_packs = Vec::new();
    for (pi, p) in packs.iter().enumerate() {
        let live: Vec<&BlobEntry> = p.blobs.iter().filter(|b| used.contains(&b.id)).collect();
        let live_bytes: u64 = live.iter().map(|b| b.len as u64).sum();
        if live.is_empty() {
            drop_packs.push(pi);
        } else if (live_bytes as f64) < REWRITE_BELOW * p.len as f64 {
            rewrite.extend(live.into_iter().map(|b| (pi as u32, *b)));
            drop_packs.push(pi);
        }
    }
    // Copy live blobs of mostly unused packs into new packs first (they
    // are sealed per chunk, so they move as they are), and only then
    // delete the old packs: a crash in between leaves duplicates, never a loss.
    let mut buf = Vec::new();
    let mut blobs = Vec::new();
    for (pi, b) in rewrite {
        let name = &packs[pi as usize].name;
        let sealed = repo.backend.get_range(kind::PACK, name, b.offset, b.len as u64)?;
        format::open_blob(&repo.keys, &b.id, b.raw_len, &sealed, name)?;
        blobs.push(BlobEntry {
            offset: buf.len() as u64,
            ..b
        });
        buf.extend_from_slice(&sealed);
        if buf.len() >= crate::backup::PACK_TARGET {
            store_rewritten(repo, &mut buf, &mut blobs, stats)?;
        }
    }
    store_rewritten(repo, &mut buf, &mut blobs, stats)?;
    for pi in drop_packs {
        let p = &packs[pi];
        for idx in &p.indexes {
            repo.backend.delete(kind::INDEX, idx)?;
        }
        repo.backend.delete(kind::PACK, &p.name)?;
        stats.packs_deleted += 1;
        stats.bytes_freed += p.len;
    }
    let known: HashSet<&str> = packs.iter().map(|p| p.name.as_str()).collect();
    let new_names: HashSet<String> = repo.packs.iter().map(|p| p.name.clone()).collect();
    for o in repo.backend.list(kind::PACK)? {
        if !known.contains(o.name.as_str()) && !new_names.contains(&o.name) {
            repo.backend.delete(kind::PACK, &o.name)?;
            stats.packs_deleted += 1;
            stats.bytes_freed += o.size;
        }
    }
    Ok(())
}

fn store_rewritten(
    repo: &mut HomeRepo,
    buf: &mut Vec<u8>,
    blobs: &mut Vec<BlobEntry>,
    stats: &mut ForgetStats,
) -> Result<()> {
    if blobs.is_empty() {
        return Ok(());
    }
    let added = buf.len() as u64;
    repo.store_pack(buf, std::mem::take(blobs))?;
    buf.clear();
    stats.packs_rewritten += 1;
    stats.bytes_freed = stats.bytes_freed.saturating_sub(added);
    Ok(())
}

/// What check found.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CheckStats {
    /// Snapshots read.
    pub snapshots: u64,
    /// Packs read and verified.
    pub packs: u64,
    /// Chunks opened and checked.
    pub chunks: u64,
    /// Problems, one sentence each.
    pub problems: Vec<String>,
}

/// Verify that every object opens, every pack matches its name, every
/// blob opens and matches its chunk id, and every chunk a snapshot needs
/// is in the index.
pub fn check(repo: &HomeRepo) -> Result<CheckStats> {
    let mut stats = CheckStats::default();
    let snaps = match repo.snapshots() {
        Ok(s) => s,
        Err(e) => {
            stats.problems.push(e.to_string());
            Vec::new()
        }
    };
    stats.snapshots = snaps.len() as u64;
    match used_chunks(repo, &snaps) {
        Ok(used) => {
            let missing = used.iter().filter(|c| !repo.index.contains_key(c)).count();
            if missing > 0 {
                stats
                    .problems
                    .push(format!("{missing} chunks the snapshots need are in no pack"));
            }
        }
        Err(e) => stats.problems.push(e.to_string()),
    }
    let listed: HashMap<String, u64> = repo
        .backend
        .list(kind::PACK)?
        .into_iter()
        .map(|o| (o.name, o.size))
        .collect();
    let results: Vec<(u64, Vec<String>)> = repo
        .packs
        .par_iter()
        .map(|p| {
            let mut problems = Vec::new();
            if !listed.contains_key(&p.name) {
                return (0, vec![format!("pack {} is missing", p.name)]);
            }
            let data = match repo.backend.get(kind::PACK, &p.name) {
                Ok(d) => d,
                Err(e) => return (0, vec![e.to_string()]),
            };
            if blake3::hash(&data).to_hex().as_str() != p.name {
                problems.push(format!(
                    "pack {} does not match its name: it was changed on the server",
                    p.name
                ));
            }
            let mut n = 0;
            for b in &p.blobs {
                let Some(sealed) = data.get(b.offset as usize..(b.offset + b.len as u64) as usize) else {
                    problems.push(format!("pack {} is shorter than its index says", p.name));
                    break;
                };
                match format::open_blob(&repo.keys, &b.id, b.raw_len, sealed, &p.name) {
                    Ok(_) => n += 1,
                    Err(e) => {
                        problems.push(e.to_string());
                        break;
                    }
                }
            }
            (n, problems)
        })
        .collect();
    for (n, p) in results {
        stats.packs += 1;
        stats.chunks += n;
        stats.problems.extend(p);
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(format_time(1_795_000_000), "2026-11-18 11:06:40");
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn keep_policy_like_restic() {
        let h = 3600;
        let day = 86_400;
        // Newest first: three snapshots today (hours apart), one yesterday,
        // one a week ago.
        let base = 1_795_000_000 - 1_795_000_000 % day + 20 * h;
        let times = [base, base - h, base - 2 * h, base - day, base - 8 * day];
        let p = |last, hourly, daily, weekly| KeepPolicy {
            last,
            hourly,
            daily,
            weekly,
            ..Default::default()
        };
        assert_eq!(apply_policy(&times, &p(2, 0, 0, 0)), [true, true, false, false, false]);
        assert_eq!(apply_policy(&times, &p(0, 0, 2, 0)), [true, false, false, true, false]);
        assert_eq!(apply_policy(&times, &p(0, 0, 10, 0)), [true, false, false, true, true]);
        assert_eq!(apply_policy(&times, &p(0, 2, 0, 0)), [true, true, false, false, false]);
        assert_eq!(apply_policy(&times, &p(0, 0, 0, 2)).iter().filter(|k| **k).count(), 2);
        assert_eq!(apply_policy(&times, &p(1, 0, 1, 0)), [true, false, false, false, false]);
        assert!(apply_policy(&times, &KeepPolicy::default()).iter().all(|k| !k));
    }
}
