//! What a machine booted from the network knows about its boot
//! (AGENT.toml `mode = "netboot"`, docs/agent.md "Network-booted machines").
//!
//! Its initramfs (`slate netboot root`) leaves `NETBOOT_DIR/info.json`: how
//! it booted (`diskless`, the cache in RAM, or `cached`, on a `slate-cache`
//! partition), which snapshot, from which servers, and where the mount
//! daemon writes its status file (slate-mount's status JSON,
//! docs/mount.md). The agent only reads them: they say what runs and how
//! full the cache is, for `slate status` and the fleet report.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where the network boot leaves its files (moved into the booted system
/// with /run).
pub const NETBOOT_DIR: &str = "/run/slate/netboot";

/// Largest info or status file read: both are a few hundred bytes, and a
/// damaged one must not make the agent read without end.
const MAX_FILE: u64 = 1 << 20;

/// [`NETBOOT_DIR`], or the directory `SLATE_NETBOOT_DIR` names. The
/// variable is for tests, which fake a network-booted machine in a
/// scratch directory (as `SLATE_RUN_DIR` and `SLATE_CMDLINE` do for /run
/// and /proc/cmdline).
pub fn dir() -> PathBuf {
    std::env::var_os("SLATE_NETBOOT_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| NETBOOT_DIR.into())
}

/// How the machine booted from the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    /// The cache is in RAM: every boot fetches what it reads.
    Diskless,
    /// The cache is on a `slate-cache` partition, filled in the background,
    /// and boots offline once complete.
    Cached,
}

impl BootMode {
    /// The word in info.json, `slate status` and the fleet report.
    pub fn as_str(self) -> &'static str {
        match self {
            BootMode::Diskless => "diskless",
            BootMode::Cached => "cached",
        }
    }
}

/// `NETBOOT_DIR/info.json`, as `slate netboot root` writes it. Fields
/// this agent does not use are ignored, so that the initramfs may add some.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    /// `diskless` or `cached`.
    pub mode: BootMode,
    /// The snapshot booted (64 hex digits).
    pub snapshot: String,
    /// What the fleet assigned when the machine booted, if a server answered.
    #[serde(default)]
    pub assigned: Option<String>,
    /// The servers it booted from.
    #[serde(default)]
    pub servers: Vec<String>,
    /// The machine id it booted as.
    #[serde(default)]
    pub machine_id: Option<String>,
    /// The cache partition (`/dev/vda2`), or none with the cache in RAM.
    #[serde(default)]
    pub device: Option<String>,
    /// The mount cache.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// The mount daemon's status file.
    #[serde(default)]
    pub status_file: Option<PathBuf>,
    /// Whether it booted with no server, from the cache alone.
    #[serde(default)]
    pub offline: bool,
    /// `network` (iPXE) or `disk` (the cache partition's GRUB, offline).
    #[serde(default)]
    pub booted_from: Option<String>,
}

/// Read a small file, at most [`MAX_FILE`] bytes.
fn read_small(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE).read_to_string(&mut text))
        .map_err(|e| Error::Local(format!("cannot read {}: {e}", path.display())))?;
    Ok(text)
}

impl Info {
    /// `info.json` in [`dir`].
    pub fn path() -> PathBuf {
        dir().join("info.json")
    }

    /// Read and check the file at `path`: an error names it and says what
    /// is wrong (a machine not booted from the network has none).
    pub fn load(path: &Path) -> Result<Info> {
        let text = read_small(path).map_err(|e| {
            Error::Local(format!(
                "{e} (written by the network boot's initramfs: was this machine booted from the network?)"
            ))
        })?;
        let info: Info = serde_json::from_str(&text)
            .map_err(|e| Error::Local(format!("{} is not a network boot's info.json: {e}", path.display())))?;
        let is_id = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !is_id(&info.snapshot) || info.assigned.as_deref().is_some_and(|a| !is_id(a)) {
            return Err(Error::Local(format!(
                "{}: snapshot and assigned must be snapshot ids (64 lower-case hex digits)",
                path.display()
            )));
        }
        Ok(info)
    }

    /// The mount daemon's status file: `status_file`, else its default
    /// place in `cache_dir`; none when info.json names neither.
    pub fn status_path(&self) -> Option<PathBuf> {
        self.status_file
            .clone()
            .or_else(|| self.cache_dir.as_ref().map(|d| d.join("mount/status.json")))
    }
}

/// How full the mount cache is: the fields of slate-mount's status file
/// (`slate_mount::status::Status`, docs/mount.md) the agent shows and
/// reports. Read leniently: a newer daemon may add fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CacheFill {
    /// The daemon's process id (0: unknown).
    pub pid: u32,
    /// The snapshot mounted.
    pub snapshot: String,
    /// `mounted`, `offline`, `unmounted`; `stopped` when the daemon that
    /// wrote the file is gone.
    pub state: String,
    /// The snapshot the cache is filled for.
    pub fill_target: String,
    /// Whether a fill runs.
    pub filling: bool,
    /// Bytes of the fill target cached.
    pub cached_bytes: u64,
    /// Bytes of the fill target in all.
    pub total_bytes: u64,
    /// Whether everything is cached: the machine can boot without a server.
    pub complete: bool,
    /// When the daemon last wrote the file (Unix seconds).
    pub updated_at: u64,
}

impl CacheFill {
    /// Read the status file at `path`.
    pub fn load(path: &Path) -> Result<CacheFill> {
        let text = read_small(path)?;
        let mut fill: CacheFill = serde_json::from_str(&text)
            .map_err(|e| Error::Local(format!("{} is not a mount status file: {e}", path.display())))?;
        // As `slate cache status`: a file left by a daemon that is gone
        // would otherwise say `mounted` forever.
        let alive = fill.pid == 0 || Path::new(&format!("/proc/{}", fill.pid)).exists();
        if !alive && fill.state != "unmounted" {
            fill.state = "stopped".into();
        }
        Ok(fill)
    }

    /// Cached bytes as a percentage of the fill target (100 when there is
    /// nothing to cache).
    pub fn percent(&self) -> f64 {
        if self.total_bytes == 0 {
            return if self.complete { 100.0 } else { 0.0 };
        }
        self.cached_bytes.min(self.total_bytes) as f64 * 100.0 / self.total_bytes as f64
    }

    /// What the fleet report carries: bytes never above the total (the
    /// server refuses such a report, and one odd status file must not cost
    /// the machine its report).
    pub fn report(&self) -> CacheReport {
        CacheReport {
            cached_bytes: self.cached_bytes.min(self.total_bytes),
            total_bytes: self.total_bytes,
            complete: self.complete,
        }
    }
}

/// The report's `cache` (docs/format/http.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheReport {
    /// Bytes of the snapshot cached.
    pub cached_bytes: u64,
    /// Bytes of the snapshot in all.
    pub total_bytes: u64,
    /// Whether the cache holds all of it.
    pub complete: bool,
}

/// What a network-booted machine finds about itself: each part, or why it
/// could not be read (shown as such, never a crash).
#[derive(Debug, Clone)]
pub struct Found {
    /// `info.json`.
    pub info: std::result::Result<Info, String>,
    /// The mount daemon's status file, once info.json names one.
    pub cache: std::result::Result<(PathBuf, CacheFill), String>,
}

impl Found {
    /// Read both files from [`dir`].
    pub fn read() -> Found {
        Self::read_from(&Info::path())
    }

    /// Read `info` and the status file it names.
    pub fn read_from(info: &Path) -> Found {
        let info = Info::load(info).map_err(|e| e.to_string());
        let cache = match &info {
            Err(_) => Err("unknown: info.json could not be read".to_string()),
            Ok(i) => match i.status_path() {
                None => Err("info.json names no status_file".to_string()),
                Some(p) => CacheFill::load(&p).map(|f| (p, f)).map_err(|e| e.to_string()),
            },
        };
        Found { info, cache }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3de611da0a5c3de611da0a5c3de611da0a5c3de611da0a5c3de611da0a5c0000";

    #[test]
    fn reads_info_and_the_status_it_names() {
        let d = tempfile::tempdir().unwrap();
        let status = d.path().join("cache/mount/status.json");
        std::fs::create_dir_all(status.parent().unwrap()).unwrap();
        std::fs::write(
            &status,
            r#"{"pid": 0, "snapshot": "x", "state": "mounted", "fill_target": "x", "filling": true,
                "cached_bytes": 42, "total_bytes": 100, "complete": false, "new_field": 1}"#,
        )
        .unwrap();
        let info = d.path().join("info.json");
        std::fs::write(
            &info,
            format!(
                r#"{{"mode": "cached", "snapshot": "{ID}", "assigned": null, "servers": ["http://s"],
                    "machine_id": "m", "device": "/dev/vda2", "cache_dir": "{}", "offline": false,
                    "booted_from": "network", "later": true}}"#,
                d.path().join("cache").display()
            ),
        )
        .unwrap();
        let f = Found::read_from(&info);
        let i = f.info.unwrap();
        assert_eq!((i.mode, i.device.as_deref()), (BootMode::Cached, Some("/dev/vda2")));
        let (p, c) = f.cache.unwrap();
        assert_eq!(p, status, "the default place in cache_dir");
        assert_eq!((c.cached_bytes, c.total_bytes, c.state.as_str()), (42, 100, "mounted"));
        assert_eq!(c.percent(), 42.0);

        // A daemon that is gone; bytes over the total are not reported.
        std::fs::write(
            &status,
            r#"{"pid": 4000000000, "state": "mounted", "cached_bytes": 7, "total_bytes": 5}"#,
        )
        .unwrap();
        let c = CacheFill::load(&status).unwrap();
        assert_eq!(c.state, "stopped");
        assert_eq!(c.report().cached_bytes, 5);
    }

    #[test]
    fn missing_or_bad_files_are_errors_naming_them() {
        let d = tempfile::tempdir().unwrap();
        let info = d.path().join("info.json");
        let f = Found::read_from(&info);
        assert!(f.info.unwrap_err().contains("info.json"));
        assert!(f.cache.is_err());
        std::fs::write(&info, r#"{"mode": "floppy", "snapshot": "x"}"#).unwrap();
        assert!(Info::load(&info)
            .unwrap_err()
            .to_string()
            .contains("not a network boot"));
        std::fs::write(&info, r#"{"mode": "diskless", "snapshot": "abc"}"#).unwrap();
        assert!(Info::load(&info).unwrap_err().to_string().contains("snapshot ids"));
        std::fs::write(
            &info,
            format!(r#"{{"mode": "diskless", "snapshot": "{ID}", "status_file": "/nonexistent/s.json"}}"#),
        )
        .unwrap();
        let f = Found::read_from(&info);
        assert_eq!(f.info.unwrap().mode, BootMode::Diskless);
        assert!(f.cache.unwrap_err().contains("/nonexistent/s.json"));
    }
}
