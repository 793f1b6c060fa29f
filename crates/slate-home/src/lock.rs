//! Repository locks, so that `forget --prune` never deletes a pack a
//! running backup has just stored or is about to reuse. A backup holds a
//! shared lock, a prune an exclusive one; each is a sealed `lock` object
//! (time, host, pid) removed when the operation ends. A lock whose process
//! is gone (same host, no such pid: a backup killed with kill -9) or that
//! is older than a day is stale and ignored. Object stores have no atomic
//! test-and-set, so a lock is written, then the others are read again: of
//! two operations racing, at least one sees the other and backs off.

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::format::{open_json, seal_json};
use crate::repo::{host_name, kind, now_ns, random_name, HomeRepo};

/// A lock older than this is stale.
const STALE_NS: i64 = 24 * 3600 * 1_000_000_000;

/// What a lock object says.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockInfo {
    /// When it was taken (Unix nanoseconds).
    pub time_ns: i64,
    /// The host that holds it.
    pub host: String,
    /// The holding process.
    pub pid: u32,
    /// True for a prune, false for a backup.
    pub exclusive: bool,
}

impl LockInfo {
    fn is_stale(&self, now: i64, host: &str) -> bool {
        now - self.time_ns > STALE_NS
            || (self.host == host && !std::path::Path::new(&format!("/proc/{}", self.pid)).exists())
    }

    fn describe(&self) -> String {
        format!(
            "a {} running on {} (pid {}, since {} UTC)",
            if self.exclusive { "prune" } else { "backup" },
            self.host,
            self.pid,
            crate::forget::format_time(self.time_ns.div_euclid(1_000_000_000))
        )
    }
}

/// A held lock, released on drop.
pub struct LockGuard {
    backend: std::sync::Arc<dyn Backend>,
    name: String,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = self.backend.delete(kind::LOCK, &self.name);
    }
}

/// The live locks other than `except`; stale ones are deleted when `remove_stale`.
fn live_locks(repo: &HomeRepo, except: Option<&str>, remove_stale: bool) -> Result<Vec<(String, LockInfo)>> {
    let (now, host) = (now_ns(), host_name());
    let mut out = Vec::new();
    for o in repo.backend.list(kind::LOCK)? {
        if Some(o.name.as_str()) == except {
            continue;
        }
        let sealed = match repo.backend.get(kind::LOCK, &o.name) {
            Ok(s) => s,
            Err(Error::Missing(_)) => continue, // released meanwhile
            Err(e) => return Err(e),
        };
        let info: LockInfo = open_json(&repo.keys, kind::LOCK, &o.name, &sealed)?;
        if !info.is_stale(now, &host) {
            out.push((o.name, info));
        } else if remove_stale {
            repo.backend.delete(kind::LOCK, &o.name)?;
        }
    }
    Ok(out)
}

/// Take a shared (backup) or exclusive (prune) lock.
pub fn lock(repo: &HomeRepo, exclusive: bool) -> Result<LockGuard> {
    let conflict = |locks: &[(String, LockInfo)]| {
        locks
            .iter()
            .find(|(_, l)| exclusive || l.exclusive)
            .map(|(_, l)| l.clone())
    };
    let busy = |l: LockInfo| {
        Error::Invalid(format!(
            "the backup repository on {} is in use by {}; try again when it has finished",
            repo.location(),
            l.describe()
        ))
    };
    // A prune clears what killed runs left behind.
    if let Some(l) = conflict(&live_locks(repo, None, exclusive)?) {
        return Err(busy(l));
    }
    let name = random_name();
    let info = LockInfo {
        time_ns: now_ns(),
        host: host_name(),
        pid: std::process::id(),
        exclusive,
    };
    repo.backend
        .put(kind::LOCK, &name, &seal_json(&repo.keys, kind::LOCK, &name, &info))?;
    let guard = LockGuard {
        backend: repo.backend.clone(),
        name,
    };
    if let Some(l) = conflict(&live_locks(repo, Some(&guard.name), false)?) {
        return Err(busy(l));
    }
    Ok(guard)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LocalDir;
    use crate::crypto::Keys;

    #[test]
    fn shared_and_exclusive_locks() {
        let d = tempfile::tempdir().unwrap();
        let keys = Keys::from_master(&[4; 32]);
        crate::repo::init(&LocalDir::new(d.path(), keys.repo_id()), &keys).unwrap();
        let repo = HomeRepo::open(
            Box::new(LocalDir::new(d.path(), keys.repo_id())),
            keys.clone(),
            &d.path().join("c"),
        )
        .unwrap();
        let a = lock(&repo, false).unwrap();
        let b = lock(&repo, false).unwrap();
        let e = lock(&repo, true).err().unwrap().to_string();
        assert!(e.contains("in use by a backup"), "{e}");
        drop((a, b));
        let p = lock(&repo, true).unwrap();
        assert!(lock(&repo, false)
            .err()
            .unwrap()
            .to_string()
            .contains("in use by a prune"));
        drop(p);
        assert!(repo.backend.list(kind::LOCK).unwrap().is_empty());
        // A lock left by a process that is gone (kill -9) is stale.
        let name = random_name();
        let dead = LockInfo {
            time_ns: now_ns(),
            host: host_name(),
            pid: u32::MAX - 1,
            exclusive: true,
        };
        repo.backend
            .put(kind::LOCK, &name, &seal_json(&repo.keys, kind::LOCK, &name, &dead))
            .unwrap();
        drop(lock(&repo, true).unwrap());
        assert!(
            repo.backend.list(kind::LOCK).unwrap().is_empty(),
            "the prune's lock cleared the stale one"
        );
    }
}
