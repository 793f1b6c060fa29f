//! The status file: what a desktop applet, a shell prompt or the agent's
//! report reads to show the mount (snapshot, fill progress, last
//! connection error). It is JSON, replaced atomically (a reader never sees
//! half of it) and rewritten only when something changed, at most once a
//! second, so watching it with inotify costs nothing.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The last error a mount saw.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LastError {
    /// When (seconds since the epoch).
    pub at: u64,
    /// One sentence.
    pub message: String,
}

/// The status file's content (docs/mount.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Status {
    /// The daemon's process id.
    pub pid: u32,
    /// Where the snapshot is mounted.
    pub mountpoint: String,
    /// The snapshot mounted.
    pub snapshot: String,
    /// The channel it was resolved from, if any.
    pub channel: Option<String>,
    /// `mounted`, `offline` (no server answers), or `unmounted`.
    pub state: String,
    /// The snapshot the cache is filled for (a newer one after a new
    /// assignment or head; the mount itself never changes).
    pub fill_target: String,
    /// Whether a fill is running.
    pub filling: bool,
    /// Bytes of the fill target's content (its distinct chunks) cached.
    pub cached_bytes: u64,
    /// Bytes of the fill target's content in all.
    pub total_bytes: u64,
    /// Whether `cached_bytes == total_bytes`: it runs without a server.
    pub complete: bool,
    /// Bytes received from servers by this daemon.
    pub fetched_bytes: u64,
    /// Range requests made by this daemon.
    pub requests: u64,
    /// Bytes the cache takes on disk.
    pub cache_bytes: u64,
    /// Its bound (`--cache-size`).
    pub cache_limit: u64,
    /// Set when the pinned data alone exceeds the bound.
    pub pinned_over_limit: bool,
    /// The last connection or verification error.
    pub last_error: Option<LastError>,
    /// When this status was written (seconds since the epoch).
    pub updated_at: u64,
}

impl Status {
    /// Write atomically.
    pub fn save(&self, path: &Path) -> slate_agent::Result<()> {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        slate_agent::state::write_atomic(path, text.as_bytes())
    }

    /// Read one.
    pub fn load(path: &Path) -> slate_agent::Result<Status> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| slate_agent::Error::Local(format!("cannot read {}: {e}", path.display())))?;
        serde_json::from_str(&text)
            .map_err(|e| slate_agent::Error::Local(format!("{} is not a mount status: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent of a network-booted machine reads this file with a type
    /// of its own (`slate_agent::netboot::CacheFill`: slate-agent cannot
    /// depend on this crate); what the daemon writes must stay readable.
    #[test]
    fn the_agent_reads_what_the_daemon_writes() {
        let s = Status {
            pid: 0,
            snapshot: "a".repeat(64),
            state: "mounted".into(),
            filling: true,
            cached_bytes: 301_989_888,
            total_bytes: 750_399_057,
            last_error: Some(LastError {
                at: 1,
                message: "x".into(),
            }),
            ..Default::default()
        };
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("status.json");
        s.save(&path).unwrap();
        let fill = slate_agent::netboot::CacheFill::load(&path).unwrap();
        assert_eq!(
            (fill.cached_bytes, fill.total_bytes, fill.complete, fill.filling),
            (s.cached_bytes, s.total_bytes, false, true)
        );
        assert_eq!(
            (fill.state.as_str(), fill.snapshot.as_str()),
            ("mounted", s.snapshot.as_str())
        );
    }
}
