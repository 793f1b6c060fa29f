//! The agent's state, in `STATE_DIR/state.json`, always replaced atomically
//! (write a temp file, fsync, rename, fsync the directory), so a crash
//! leaves the old state or the new, never half of either.
//!
//! Slot contents are recorded when written: the snapshot id, and its
//! manifest kept in `STATE_DIR/manifests/<id>` (checked against the signed
//! record's hash whenever read), so an update plans from two manifests and
//! never rescans a tree.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What one slot holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SlotState {
    /// The snapshot written into it, if it is complete.
    pub snapshot: Option<String>,
    /// True while the agent is writing it (its content is then unknown).
    #[serde(default)]
    pub dirty: bool,
    /// When it was last written (unix seconds).
    #[serde(default)]
    pub written_at: i64,
}

/// The result of the last update pass.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LastPass {
    /// ok, up-to-date, offline, error, refused, stale; next-boot on a
    /// network-booted machine.
    pub result: String,
    /// One sentence.
    pub message: String,
    /// Bytes downloaded in that pass.
    pub bytes_fetched: u64,
    /// Unix seconds.
    pub at: i64,
    /// The snapshot it aimed at.
    pub target: Option<String>,
    /// Paths where kept state hides a change of the snapshot written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shadowed: Vec<String>,
}

/// How many failed snapshots the agent remembers.
pub const MAX_FAILED: usize = 16;

/// The whole agent state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    /// Format marker.
    pub version: u32,
    /// Slot A.
    pub a: SlotState,
    /// Slot B.
    pub b: SlotState,
    /// The slot the machine runs (or, before the first boot, the one that
    /// was written first).
    pub active: Option<String>,
    /// A slot switched to but not yet confirmed by boot-ok.
    pub pending: Option<String>,
    /// Slots confirmed good by boot-ok (or installed as the first slot).
    pub known_good: Vec<String>,
    /// The last pass.
    pub last_pass: Option<LastPass>,
    /// The newest snapshot time this machine has accepted (anti-rollback).
    #[serde(default)]
    pub newest_time_ns: i64,
    /// What happened at the last boot assessment: good, pending, fell-back.
    #[serde(default)]
    pub boot_result: Option<String>,
    /// Snapshots that failed to boot on this machine (oldest first, at most
    /// [`MAX_FAILED`]): an update does not write one of them again unless
    /// asked to retry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
    /// The issue time (Unix seconds) of the newest signed assignment this
    /// machine accepted, clamped to its own clock: an older one is a replay.
    #[serde(default)]
    pub assignment_issued_at: u64,
    /// When (Unix seconds, this machine's clock) the last fresh signed
    /// assignment arrived; reported while only stale ones do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fresh_at: Option<u64>,
    /// The channel of the last fresh assignment, and whether it pinned a
    /// snapshot: what the machine follows from mirrors while no fleet
    /// server answers (never a pinned machine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub followed: Option<Followed>,
    /// The issue time of the newest signed channel head accepted from a
    /// mirror, clamped to this machine's clock: an older one is a replay.
    #[serde(default)]
    pub head_issued_at: u64,
    /// What the initramfs step warned about on the last boot (a kept
    /// identity seed, dropped bundle entries, no network): reported with
    /// the boot so that the fleet sees it, not only the console.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boot_warnings: Vec<String>,
}

/// What the last fresh assignment said to follow.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Followed {
    /// The channel.
    pub channel: String,
    /// Whether the fleet pinned a snapshot.
    pub pinned: bool,
}

impl Default for State {
    fn default() -> Self {
        State {
            version: 1,
            a: SlotState::default(),
            b: SlotState::default(),
            active: None,
            pending: None,
            known_good: Vec::new(),
            last_pass: None,
            newest_time_ns: 0,
            boot_result: None,
            failed: Vec::new(),
            assignment_issued_at: 0,
            last_fresh_at: None,
            followed: None,
            head_issued_at: 0,
            boot_warnings: Vec::new(),
        }
    }
}

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl State {
    /// Path of the state file.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("state.json")
    }

    /// Load, or a fresh state if there is none yet.
    pub fn load(state_dir: &Path) -> Result<State> {
        let p = Self::path(state_dir);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| Error::Local(format!("{} is corrupt ({e}); move it away to start over", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(Error::Local(format!("cannot read {}: {e}", p.display()))),
        }
    }

    /// Save atomically and durably.
    pub fn save(&self, state_dir: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).expect("state serialises");
        write_atomic(&Self::path(state_dir), &bytes)
    }

    /// The state of slot `name`.
    pub fn slot(&self, name: &str) -> &SlotState {
        if name == "a" {
            &self.a
        } else {
            &self.b
        }
    }

    /// The state of slot `name`, mutably.
    pub fn slot_mut(&mut self, name: &str) -> &mut SlotState {
        if name == "a" {
            &mut self.a
        } else {
            &mut self.b
        }
    }

    /// The active slot's name ("a" when none was written yet).
    pub fn active_name(&self) -> &str {
        self.active.as_deref().unwrap_or("a")
    }

    /// The slot updates are written to.
    pub fn reserve_name(&self) -> &'static str {
        if self.active.is_none() {
            // Nothing installed yet: the first snapshot goes to A.
            return "a";
        }
        other(self.active_name())
    }
}

/// The other slot.
pub fn other(slot: &str) -> &'static str {
    if slot == "a" {
        "b"
    } else {
        "a"
    }
}

/// Write `bytes` to `path` atomically: temp file, fsync, rename, fsync dir.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::Local(format!("cannot create {}: {e}", dir.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    res.map_err(|e| Error::Local(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_reserve() {
        let d = tempfile::tempdir().unwrap();
        let mut s = State::load(d.path()).unwrap();
        assert_eq!(s.reserve_name(), "a");
        s.active = Some("a".into());
        s.a.snapshot = Some("x".into());
        s.save(d.path()).unwrap();
        let t = State::load(d.path()).unwrap();
        assert_eq!(t, s);
        assert_eq!(t.reserve_name(), "b");
        std::fs::write(State::path(d.path()), b"{").unwrap();
        assert!(State::load(d.path()).is_err());
    }
}
