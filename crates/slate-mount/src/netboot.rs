//! The root of a machine booted from the network (`slate netboot root`,
//! run by the initramfs step `boot=slate-net`; docs/diskless.md).
//!
//! In the initramfs, with the network up: read the kernel command line
//! (which snapshot this kernel belongs to, which servers), the keys built
//! into the initramfs, and the machine's cache (a partition labelled
//! `slate-cache`, or RAM); ask the fleet for the machine's assignment and
//! check its signature; then plan the mount daemon that serves the
//! snapshot as the new root. The daemon is started by the command (it
//! outlives the initramfs: it runs from its cache directory, which moves
//! with /run into the new root, and is named `@slate-mount` so that
//! systemd leaves it running at shutdown, as systemd's documentation on
//! root storage daemons asks).
//!
//! Planning is apart from doing: [`plan`] reads and asks, and returns what
//! to mount where; the caller mounts the cache, starts the daemon and
//! writes the files the booted system reads ([`Info`], the agent's
//! configuration).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use slate_agent::http::Http;
use slate_agent::{Error, Result};
use slate_core::keys::PublicKey;
use slate_core::trust::TrustDoc;
use slate_core::SnapshotId;

/// Where the booted system finds what this step did (under /run, which
/// initramfs-tools moves into the new root).
pub const RUN_DIR: &str = "/run/slate/netboot";

/// Where the initramfs holds its keys (`slate prepare --trust`).
pub const KEYS_DIR: &str = "/etc/slate/netboot/keys";

/// The partition name (GPT) of a machine's cache.
pub const CACHE_PARTLABEL: &str = "slate-cache";

/// Which cache the kernel command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheChoice {
    /// The partition labelled `slate-cache` if the machine has one, else RAM.
    Auto,
    /// RAM only.
    Ram,
    /// This block device (a path, or `PARTLABEL=NAME`).
    Device(String),
}

/// What the kernel command line says about this boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmdline {
    /// `slate.snapshot=ID`: the snapshot this kernel and initramfs belong to.
    pub snapshot: Option<SnapshotId>,
    /// `slate.server=URL[,URL]`: servers, in failover order.
    pub servers: Vec<String>,
    /// `slate.cache=`.
    pub cache: CacheChoice,
    /// `slate.fill=0|1` (default: on a partition, yes; in RAM, no).
    pub fill: Option<bool>,
    /// `slate.fill.rate=RATE` (bytes per second, K/M/G suffixes).
    pub fill_rate: Option<String>,
    /// `slate.record`: record a boot profile into the cache directory.
    pub record: bool,
    /// `slate.from=disk`: started by the cache partition's own menu.
    pub from_disk: bool,
    /// `slate.timeout=SECS`: per request (default 10).
    pub timeout_secs: u64,
    /// The whole line.
    pub raw: String,
}

impl Cmdline {
    /// Parse `/proc/cmdline`'s text. Unknown words are the kernel's and
    /// other programs' business; a malformed `slate.` word is an error.
    pub fn parse(text: &str) -> Result<Cmdline> {
        let bad = |w: &str, why: &str| Error::Config(format!("kernel command line: {w}: {why}"));
        let mut c = Cmdline {
            snapshot: None,
            servers: Vec::new(),
            cache: CacheChoice::Auto,
            fill: None,
            fill_rate: None,
            record: false,
            from_disk: false,
            timeout_secs: 10,
            raw: text.trim().to_string(),
        };
        for w in text.split_whitespace() {
            let (k, v) = w.split_once('=').unwrap_or((w, ""));
            match k {
                "slate.snapshot" => {
                    c.snapshot = Some(SnapshotId::from_hex(v).ok_or_else(|| bad(w, "not a snapshot id (64 hex)"))?);
                }
                "slate.server" => {
                    for url in v.split(',').filter(|u| !u.is_empty()) {
                        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 512 {
                            return Err(bad(w, "a server is an http:// or https:// URL"));
                        }
                        c.servers.push(url.trim_end_matches('/').to_string());
                    }
                }
                "slate.cache" => {
                    c.cache = match v {
                        "" | "auto" => CacheChoice::Auto,
                        "ram" => CacheChoice::Ram,
                        d if d.starts_with("/dev/") || d.starts_with("PARTLABEL=") => {
                            CacheChoice::Device(d.to_string())
                        }
                        _ => return Err(bad(w, "auto, ram, /dev/NAME or PARTLABEL=NAME")),
                    };
                }
                "slate.fill" => {
                    c.fill = Some(match v {
                        "1" | "yes" | "" => true,
                        "0" | "no" => false,
                        _ => return Err(bad(w, "0 or 1")),
                    });
                }
                "slate.fill.rate" => c.fill_rate = Some(v.to_string()),
                "slate.record" => c.record = true,
                "slate.from" => c.from_disk = v == "disk",
                "slate.timeout" => {
                    c.timeout_secs = v
                        .parse::<u64>()
                        .ok()
                        .filter(|t| (1..=300).contains(t))
                        .ok_or_else(|| bad(w, "seconds, 1 to 300"))?;
                }
                _ => {}
            }
        }
        Ok(c)
    }
}

/// The keys built into the initramfs.
#[derive(Debug, Clone, Default)]
pub struct BuiltinKeys {
    /// Release keys (files `release-*.pub`).
    pub release: Vec<(PathBuf, PublicKey)>,
    /// Fleet keys (files `fleet-*.pub`).
    pub fleet: Vec<(PathBuf, PublicKey)>,
}

/// Read `dir/release-*.pub` and `dir/fleet-*.pub`.
pub fn read_keys(dir: &Path) -> Result<BuiltinKeys> {
    let mut keys = BuiltinKeys::default();
    let rd = std::fs::read_dir(dir).map_err(|e| {
        Error::Config(format!(
            "this initramfs has no keys in {} ({e}): build it with `slate prepare --trust KEY.pub`",
            dir.display()
        ))
    })?;
    let mut names: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    names.sort();
    for p in names {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if !name.ends_with(".pub") {
            continue;
        }
        let text =
            std::fs::read_to_string(&p).map_err(|e| Error::Config(format!("cannot read {}: {e}", p.display())))?;
        let key = PublicKey::from_text(&text).map_err(|e| Error::Config(format!("{}: {e}", p.display())))?;
        if name.starts_with("release-") {
            keys.release.push((p, key));
        } else if name.starts_with("fleet-") {
            keys.fleet.push((p, key));
        }
    }
    if keys.release.is_empty() {
        return Err(Error::Config(format!(
            "this initramfs has no release key in {}: build it with `slate prepare --trust KEY.pub`",
            dir.display()
        )));
    }
    Ok(keys)
}

/// What the cache partition's `config/` holds (written by `slate install
/// --mode cached`): the machine's id and labels, its token.
#[derive(Debug, Clone, Default)]
pub struct DiskConfig {
    /// The template AGENT.toml as a TOML table.
    pub template: Option<toml::Table>,
    /// The token file, if the machine is enrolled.
    pub token_file: Option<PathBuf>,
}

impl DiskConfig {
    /// Read `disk/config/`; missing files are simply absent.
    pub fn read(disk: &Path) -> Result<DiskConfig> {
        let cfg = disk.join("config/agent.toml");
        let template = match std::fs::read_to_string(&cfg) {
            Ok(t) => Some(
                t.parse::<toml::Table>()
                    .map_err(|e| Error::Config(format!("{}: {e}", cfg.display())))?,
            ),
            Err(_) => None,
        };
        let token = disk.join("config/token");
        Ok(DiskConfig {
            template,
            token_file: token.is_file().then_some(token),
        })
    }

    fn machine_id(&self) -> Option<String> {
        self.template.as_ref()?.get("machine_id")?.as_str().map(str::to_string)
    }

    fn labels(&self) -> std::collections::BTreeMap<String, String> {
        self.template
            .as_ref()
            .and_then(|t| t.get("labels")?.as_table().cloned())
            .map(|t| {
                t.into_iter()
                    .filter_map(|(k, v)| Some((k, v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The machine's mode, as the fleet shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// No cache partition: the cache is in RAM.
    Diskless,
    /// A cache partition.
    Cached,
}

/// What the booted system reads about this boot (`RUN_DIR/info.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    /// `diskless` or `cached`.
    pub mode: Mode,
    /// The snapshot mounted as the root.
    pub snapshot: String,
    /// What the fleet assigned at boot (null when no server answered).
    pub assigned: Option<String>,
    /// Whether the assignment was signed by a key built into the initramfs.
    pub assignment_signed: bool,
    /// Servers, in failover order.
    pub servers: Vec<String>,
    /// The machine id the assignment was asked for.
    pub machine_id: String,
    /// The cache partition, if any.
    pub device: Option<String>,
    /// The mount daemon's cache directory.
    pub cache_dir: String,
    /// The mount daemon's status file.
    pub status_file: String,
    /// Bound of the cache, bytes.
    pub cache_limit: u64,
    /// Whether no server answered and the cache stood in.
    pub offline: bool,
    /// `network` or `disk` (the cache partition's own menu).
    pub booted_from: String,
}

impl Info {
    /// Read `dir/info.json`.
    pub fn load(dir: &Path) -> Result<Info> {
        let p = dir.join("info.json");
        let text = std::fs::read(&p).map_err(|e| Error::Local(format!("cannot read {}: {e}", p.display())))?;
        serde_json::from_slice(&text).map_err(|e| Error::Local(format!("{}: {e}", p.display())))
    }
}

/// Find the cache partition: a `/dev/` path as given, or the block device
/// whose GPT partition name is `PARTLABEL=NAME` (from sysfs, so no udev
/// rules are needed in the initramfs).
pub fn find_partition(choice: &CacheChoice, sys_block: &Path) -> Option<PathBuf> {
    let label = match choice {
        CacheChoice::Ram => return None,
        CacheChoice::Device(d) => match d.strip_prefix("PARTLABEL=") {
            Some(l) => l.to_string(),
            None => return Some(PathBuf::from(d)),
        },
        CacheChoice::Auto => CACHE_PARTLABEL.to_string(),
    };
    let mut found: Vec<String> = std::fs::read_dir(sys_block)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path().join("uevent")).ok()?;
            let mut name = None;
            let mut dev = None;
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("PARTNAME=") {
                    name = Some(v.to_string());
                }
                if let Some(v) = line.strip_prefix("DEVNAME=") {
                    dev = Some(v.to_string());
                }
            }
            (name.as_deref() == Some(label.as_str())).then_some(dev).flatten()
        })
        .collect();
    found.sort();
    found.into_iter().next().map(|d| Path::new("/dev").join(d))
}

/// The fleet's answer for this machine.
#[derive(Debug, Clone)]
pub struct Assigned {
    /// The snapshot.
    pub snapshot: SnapshotId,
    /// Whether a built-in fleet key signed it.
    pub signed: bool,
    /// The fleet's state policy (only from a signed answer).
    pub state_policy: Option<String>,
}

/// Ask the fleet which snapshot this machine runs (`POST
/// /v1/boot/assignment`, which needs no token: the initramfs has none).
/// With fleet keys built in, the answer must be signed by one of them (a
/// refusal is an error); without, it is taken as a hint only (the snapshot
/// on the kernel command line, signed by a release key, is what is
/// mounted).
pub fn ask_assignment(http: &Http, machine: &slate_agent::identity::Identity, keys: &BuiltinKeys) -> Result<Assigned> {
    let answer = http.post_json("/v1/boot/assignment", &serde_json::json!({ "machine": machine }))?;
    if keys.fleet.is_empty() {
        let snapshot = answer
            .get("snapshot")
            .and_then(|v| v.as_str())
            .and_then(SnapshotId::from_hex)
            .ok_or_else(|| Error::Server("the assignment has no snapshot".into()))?;
        return Ok(Assigned {
            snapshot,
            signed: false,
            state_policy: None,
        });
    }
    let trusted = slate_agent::trust::Trusted {
        doc: TrustDoc {
            version: 0,
            expires: u64::MAX,
            threshold: 1,
            snapshots: 1,
            release: keys.release.iter().map(|k| k.1).collect(),
            fleet: keys.fleet.iter().map(|k| k.1).collect(),
        },
    };
    let v = slate_agent::trust::verify_assignment(&answer, &machine.id, &trusted)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    slate_agent::trust::freshness(&v.assignment, 0, now)
        .map_err(|why| Error::Untrusted(format!("refusing the assignment: {why}")))?;
    Ok(Assigned {
        snapshot: v.assignment.snapshot,
        signed: true,
        state_policy: v.assignment.state_policy,
    })
}

/// What to do after asking.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Mount this snapshot.
    Mount(SnapshotId),
    /// The fleet assigns another snapshot than this kernel's: restart, so
    /// that the network boot loads the assigned one's kernel.
    Restart(String),
}

/// Which snapshot to mount, given the kernel's and the fleet's.
pub fn decide(cmdline: &Cmdline, assigned: Option<&Assigned>) -> Result<Decision> {
    match (cmdline.snapshot, assigned) {
        (Some(k), Some(a)) if a.signed && a.snapshot != k && !cmdline.from_disk => Ok(Decision::Restart(format!(
            "the fleet assigns snapshot {} now, and this kernel is snapshot {k}'s: restarting to boot it",
            a.snapshot
        ))),
        (Some(k), _) => Ok(Decision::Mount(k)),
        (None, Some(a)) => Ok(Decision::Mount(a.snapshot)),
        (None, None) => Err(Error::Config(
            "the kernel command line names no snapshot (slate.snapshot=ID) and no server answered".into(),
        )),
    }
}

/// How big the cache may grow: in RAM an eighth of the machine's memory
/// (64 MiB to 2 GiB), on a partition four fifths of it.
pub fn cache_bound(mode: Mode, mem_total: u64, fs_bytes: u64) -> u64 {
    match mode {
        Mode::Diskless => (mem_total / 8).clamp(64 << 20, 2 << 30),
        Mode::Cached => fs_bytes / 5 * 4,
    }
}

/// `MemTotal` of /proc/meminfo, bytes.
pub fn mem_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            let line = t.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(1 << 30, |kib| kib * 1024)
}

/// The AGENT.toml of the booted system: the partition's template (if
/// any) with this boot's servers, the initramfs' keys, slate's state
/// directory and the token; `mode = "netboot"`.
pub fn agent_config(disk: &DiskConfig, servers: &[String], keys: &BuiltinKeys, machine_id: &str) -> String {
    let mut t = disk.template.clone().unwrap_or_default();
    for k in [
        "slots",
        "bootloader",
        "slot_size",
        "trust",
        "fleet_trust",
        "token_file",
        "state_dir",
        "mode",
    ] {
        t.remove(k);
    }
    t.insert("mode".into(), "netboot".into());
    if !t.contains_key("server") {
        t.insert(
            "server".into(),
            toml::Value::Array(servers.iter().map(|s| toml::Value::from(s.as_str())).collect()),
        );
    }
    let paths = |v: &[(PathBuf, PublicKey)]| {
        toml::Value::Array(
            v.iter()
                .map(|(p, _)| toml::Value::from(p.display().to_string()))
                .collect(),
        )
    };
    t.insert("trust".into(), paths(&keys.release));
    if !keys.fleet.is_empty() {
        t.insert("fleet_trust".into(), paths(&keys.fleet));
    }
    t.insert("state_dir".into(), "/var/lib/slate".into());
    t.insert("machine_id".into(), machine_id.into());
    if let Some(tok) = &disk.token_file {
        t.insert("token_file".into(), tok.display().to_string().into());
    }
    format!(
        "# Written at boot by `slate netboot root` (docs/diskless.md); not kept.\n{}",
        toml::to_string(&t).unwrap_or_default()
    )
}

/// The identity the assignment is asked for: the partition's machine_id
/// and labels, else the hardware's.
pub fn identity(disk: &DiskConfig) -> slate_agent::identity::Identity {
    slate_agent::identity::detect(disk.machine_id().as_deref(), &disk.labels())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_words() {
        let id = "ab".repeat(32);
        let c = Cmdline::parse(&format!(
            "BOOT_IMAGE=x boot=slate-net slate.snapshot={id} slate.server=http://10.0.2.100,https://b/ \
             slate.cache=ram slate.fill=1 slate.record quiet"
        ))
        .unwrap();
        assert_eq!(c.snapshot.unwrap().to_hex(), id);
        assert_eq!(c.servers, ["http://10.0.2.100", "https://b"]);
        assert_eq!(c.cache, CacheChoice::Ram);
        assert_eq!(c.fill, Some(true));
        assert!(c.record && !c.from_disk);
        for bad in [
            "slate.snapshot=12",
            "slate.server=ftp://x",
            "slate.cache=/tmp/x",
            "slate.fill=maybe",
            "slate.timeout=0",
        ] {
            assert!(Cmdline::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn partition_by_name_from_sysfs() {
        let t = tempfile::tempdir().unwrap();
        for (d, ev) in [
            ("vda", "DEVNAME=vda\nDEVTYPE=disk\n"),
            ("vda1", "DEVNAME=vda1\nPARTNAME=bios-boot\n"),
            ("vda2", "DEVNAME=vda2\nPARTNAME=slate-cache\n"),
        ] {
            std::fs::create_dir(t.path().join(d)).unwrap();
            std::fs::write(t.path().join(d).join("uevent"), ev).unwrap();
        }
        assert_eq!(
            find_partition(&CacheChoice::Auto, t.path()),
            Some(PathBuf::from("/dev/vda2"))
        );
        assert_eq!(
            find_partition(&CacheChoice::Device("PARTLABEL=bios-boot".into()), t.path()),
            Some(PathBuf::from("/dev/vda1"))
        );
        assert_eq!(find_partition(&CacheChoice::Ram, t.path()), None);
        assert_eq!(
            find_partition(&CacheChoice::Device("PARTLABEL=none".into()), t.path()),
            None
        );
    }

    #[test]
    fn a_signed_assignment_of_another_snapshot_restarts_a_network_boot() {
        let k = SnapshotId::from_hex(&"aa".repeat(32)).unwrap();
        let other = SnapshotId::from_hex(&"bb".repeat(32)).unwrap();
        let mut c = Cmdline::parse(&format!("slate.snapshot={}", k.to_hex())).unwrap();
        let a = Assigned {
            snapshot: other,
            signed: true,
            state_policy: None,
        };
        assert!(matches!(decide(&c, Some(&a)).unwrap(), Decision::Restart(_)));
        let unsigned = Assigned {
            signed: false,
            ..a.clone()
        };
        assert!(matches!(decide(&c, Some(&unsigned)).unwrap(), Decision::Mount(x) if x == k));
        c.from_disk = true;
        assert!(matches!(decide(&c, Some(&a)).unwrap(), Decision::Mount(x) if x == k));
        assert!(decide(&Cmdline::parse("").unwrap(), None).is_err());
    }
}
