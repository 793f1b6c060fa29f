//! AGENT.toml: what the agent needs to know (schema in docs/agent.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// A server's transport settings and the pin syntax live in `slate-net`,
/// shared with `slate home`.
pub use slate_net::{parse_pin, ServerSettings};

/// Which bootloader the agent drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bootloader {
    /// A grub.cfg fragment plus grubenv variables.
    Grub,
    /// Boot Loader Specification entries with systemd-boot boot counting.
    Bls,
    /// Nothing to flip (tests, or machines that boot otherwise).
    None,
}

/// Where AGENT.toml is when `--config` and `SLATE_AGENT_CONFIG` say
/// nothing, on a machine installed on its disk (see [`default_path`]).
pub const DEFAULT_PATH: &str = "/etc/slate/agent.toml";

/// The AGENT.toml to use by default: [`DEFAULT_PATH`], unless it does not
/// exist (or is empty) and the network boot wrote one (`NETBOOT_DIR/agent.toml`,
/// [`crate::netboot::dir`]): a diskless machine has no /etc/slate/agent.toml
/// of its own, but its initramfs generated one for the booted system.
pub fn default_path() -> PathBuf {
    pick_default(Path::new(DEFAULT_PATH), &crate::netboot::dir().join("agent.toml"))
}

/// [`default_path`]'s choice between the installed and the generated file.
fn pick_default(installed: &Path, netboot: &Path) -> PathBuf {
    // Empty counts as absent: the default state policy binds a `local`
    // /etc/slate/agent.toml, which a diskless machine's RAM store holds
    // as an empty file.
    let missing = std::fs::metadata(installed).map_or(true, |m| m.len() == 0);
    if missing && netboot.exists() {
        netboot.to_path_buf()
    } else {
        // Also when neither exists: the error then names the usual place.
        installed.to_path_buf()
    }
}

/// How the machine runs its snapshots: AGENT.toml's `mode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Two slots on the machine's disk, written by the agent and booted
    /// in turn (`mode = "ab"`, the default).
    Ab(Slots),
    /// Booted from the network, the root mounted from `slate mount`
    /// (`mode = "netboot"`): there is nothing on disk for the agent to
    /// write; the next network boot runs what the fleet assigns.
    Netboot,
}

/// An A/B machine's slots and what boots them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slots {
    /// Slot A's location (directory, block device or image file).
    pub a: PathBuf,
    /// Slot B's location.
    pub b: PathBuf,
    /// The bootloader to drive.
    pub bootloader: Bootloader,
    /// Size of an image-file slot created by the agent, in bytes.
    pub size: u64,
}

impl Slots {
    /// The location of slot `name` ("a" or "b").
    pub fn path(&self, name: &str) -> &Path {
        if name == "a" {
            &self.a
        } else {
            &self.b
        }
    }
}

/// Size of an image-file slot when AGENT.toml gives no `slot_size`.
pub const DEFAULT_SLOT_SIZE: &str = "8G";

/// AGENT.toml's `mode`, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawMode {
    Ab,
    Netboot,
}

/// One server URL or several, tried in order.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Servers {
    One(String),
    Many(Vec<ServerEntry>),
}

/// A server as a bare URL or as a table with its own transport settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum ServerEntry {
    Url(String),
    Table(RawServer),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    url: String,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    pin: Vec<String>,
    token: Option<bool>,
    #[serde(default)]
    token_over_http: bool,
    #[serde(default)]
    mirror: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default = "default_mode")]
    mode: RawMode,
    server: Servers,
    trust: Vec<PathBuf>,
    #[serde(default)]
    fleet_trust: Vec<PathBuf>,
    // Optional here so that a template for `slate install` (which writes
    // the machine's own) may leave it out; a machine's file requires it.
    state_dir: Option<PathBuf>,
    // Optional here so that a netboot machine needs none; `ab` requires
    // them after parsing, with an error naming the missing field.
    slots: Option<RawSlots>,
    #[serde(default = "default_bootloader")]
    bootloader: Bootloader,
    #[serde(default = "default_boot_dir")]
    boot_dir: PathBuf,
    #[serde(default = "default_tries")]
    boot_tries: u32,
    machine_id: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    kernel_cmdline: String,
    #[serde(default = "default_slot_size")]
    slot_size: String,
    #[serde(default = "default_connections")]
    connections: usize,
    #[serde(default = "default_timeout")]
    timeout_secs: u64,
    token_file: Option<PathBuf>,
    boot_device: Option<PathBuf>,
    channel: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlots {
    a: PathBuf,
    b: PathBuf,
}

/// What a file is read as: a machine's own AGENT.toml, or the template
/// `slate install` turns into one (which may leave out what the installer
/// writes itself).
#[derive(Clone, Copy)]
enum Purpose {
    Machine,
    InstallTemplate,
}

fn default_mode() -> RawMode {
    RawMode::Ab
}
fn default_bootloader() -> Bootloader {
    Bootloader::None
}
fn default_boot_dir() -> PathBuf {
    PathBuf::from("/boot")
}
fn default_tries() -> u32 {
    3
}
fn default_slot_size() -> String {
    DEFAULT_SLOT_SIZE.into()
}
fn default_connections() -> usize {
    4
}
fn default_timeout() -> u64 {
    30
}

/// The agent's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// Server base URLs, tried in order.
    pub servers: Vec<String>,
    /// The same servers with their transport settings.
    pub server_settings: Vec<ServerSettings>,
    /// Release public key files; a snapshot must be signed by one of them.
    pub trust: Vec<PathBuf>,
    /// Fleet public key files: an assignment must be signed by one of them
    /// (a trust document the agent accepted overrides both lists).
    pub fleet_trust: Vec<PathBuf>,
    /// Where the agent keeps its state, manifests and download cache.
    pub state_dir: PathBuf,
    /// A/B slots, or a network-booted machine.
    pub mode: Mode,
    /// Where the bootloader's files go (A/B only).
    pub boot_dir: PathBuf,
    /// Boots a new slot gets before falling back.
    pub boot_tries: u32,
    /// Identity override (tests, or machines without DMI).
    pub machine_id: Option<String>,
    /// Labels sent to the server for fleet matching.
    pub labels: BTreeMap<String, String>,
    /// Extra kernel command line for boot entries.
    pub kernel_cmdline: String,
    /// Parallel HTTP connections.
    pub connections: usize,
    /// Per-request timeout in seconds.
    pub timeout_secs: u64,
    /// The file holding this machine's token (`slate fleet enroll`), sent
    /// as `Authorization: Bearer` on every request.
    pub token_file: Option<PathBuf>,
    /// The boot partition (the /boot of GRUB, or the ESP), mounted by the
    /// agent while it writes boot entries; `boot_dir` is then relative to it.
    pub boot_device: Option<PathBuf>,
    /// The channel to follow from mirrors before any assignment arrived.
    pub channel: Option<String>,
    /// Install from a live medium instead of a server (`slate install
    /// --from-live`): the directory the live system keeps it in. Never
    /// read from AGENT.toml.
    pub offline_source: Option<PathBuf>,
}

/// Parse a size like `8G`, `512M`, `1073741824`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 1u64 << 10),
        'M' | 'm' => (&s[..s.len() - 1], 1 << 20),
        'G' | 'g' => (&s[..s.len() - 1], 1 << 30),
        'T' | 't' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

impl Config {
    /// Read and check AGENT.toml.
    pub fn load(path: &Path) -> Result<Config> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text, path)
    }

    /// Parse AGENT.toml text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        Self::parse_as(text, path, Purpose::Machine)
    }

    /// Read a template AGENT.toml for `slate install`: as [`Config::load`],
    /// except that `state_dir` and `[slots]` may be left out, since the
    /// installer writes the installed machine's own (its state partition
    /// and its two slot partitions). Given, they are still checked.
    pub fn load_template(path: &Path) -> Result<Config> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        Self::parse_as(&text, path, Purpose::InstallTemplate)
    }

    fn parse_as(text: &str, path: &Path, purpose: Purpose) -> Result<Config> {
        let raw: Raw = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                // Newlines before the error, plus one: an error at the very
                // start of a line (an unknown key) is on that line.
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(0);
            Error::Config(format!("{} line {line}: {}", path.display(), e.message()))
        })?;
        let bad = |m: String| Error::Config(format!("{}: {m}", path.display()));
        let entries = match raw.server {
            Servers::One(s) => vec![ServerEntry::Url(s)],
            Servers::Many(v) => v,
        };
        if entries.is_empty() {
            return Err(bad("`server` names no URL".into()));
        }
        let explicit_token = entries
            .iter()
            .any(|e| matches!(e, ServerEntry::Table(RawServer { token: Some(true), .. })));
        let mut settings = Vec::new();
        for e in entries {
            let raw = match e {
                ServerEntry::Url(url) => RawServer {
                    url,
                    ca_file: None,
                    pin: Vec::new(),
                    token: None,
                    token_over_http: false,
                    mirror: false,
                },
                ServerEntry::Table(t) => t,
            };
            let s = &raw.url;
            let https = s.starts_with("https://");
            if !(s.starts_with("http://") || https) {
                return Err(bad(format!("server {s:?} is not an http:// or https:// URL")));
            }
            if !https && (raw.ca_file.is_some() || !raw.pin.is_empty()) {
                return Err(bad(format!(
                    "server {s:?} is plain http: ca_file and pin apply only to https:// servers"
                )));
            }
            let mut pins = Vec::new();
            for p in &raw.pin {
                pins.push(parse_pin(p).ok_or_else(|| {
                    bad(format!(
                        "server {s:?}: pin {p:?} is not `sha256:` and 64 hex digits \
                         (the SHA-256 of the server's certificate, DER)"
                    ))
                })?);
            }
            // The token goes where the file says it may: to the servers
            // marked `token = true` when any is, else to every https one.
            let token = match raw.token {
                Some(true) if raw.mirror => {
                    return Err(bad(format!(
                        "server {s:?} is a mirror: mirrors never receive the machine token (remove token = true)"
                    )))
                }
                Some(t) => t,
                None => https && !explicit_token && !raw.mirror,
            };
            if token && !https && !raw.token_over_http {
                return Err(bad(format!(
                    "server {s:?} is plain http: the machine token is not sent over plain http \
                     (anyone on the path could copy it); use https, or set token_over_http = true \
                     for this server if the network is trusted"
                )));
            }
            settings.push(ServerSettings {
                url: s.trim_end_matches('/').to_string(),
                ca_file: raw.ca_file,
                pins,
                token,
                mirror: raw.mirror,
            });
        }
        if let Some(c) = &raw.channel {
            slate_repo::channel::check_name(c).map_err(|e| bad(format!("channel {c:?}: {e}")))?;
        }
        if raw.trust.is_empty() {
            return Err(bad("`trust` must name at least one public key file".into()));
        }
        let state_dir = match (raw.state_dir, purpose) {
            (Some(d), _) => d,
            (None, Purpose::InstallTemplate) => PathBuf::from(crate::install::MACHINE_STATE_DIR),
            (None, Purpose::Machine) => {
                return Err(bad(
                    "missing field `state_dir`: the directory where the agent keeps what it knows \
                     (for example state_dir = \"/var/lib/slate\")"
                        .into(),
                ))
            }
        };
        let slots = match (raw.slots, purpose) {
            (None, Purpose::InstallTemplate) => Some(RawSlots {
                a: PathBuf::from(crate::install::MACHINE_SLOT_A),
                b: PathBuf::from(crate::install::MACHINE_SLOT_B),
            }),
            (slots, _) => slots,
        };
        let mode = match raw.mode {
            RawMode::Ab => {
                let slots = slots.ok_or_else(|| {
                    bad("missing field `slots`: an A/B machine needs [slots] a and b (a machine booted from the network \
                         says mode = \"netboot\")"
                        .into())
                })?;
                if slots.a == slots.b {
                    return Err(bad("slots a and b are the same place".into()));
                }
                let size = parse_size(&raw.slot_size)
                    .ok_or_else(|| bad(format!("slot_size {:?} is not a size", raw.slot_size)))?;
                if !(1..=10).contains(&raw.boot_tries) {
                    return Err(bad("boot_tries must be between 1 and 10".into()));
                }
                Mode::Ab(Slots {
                    a: slots.a,
                    b: slots.b,
                    bootloader: raw.bootloader,
                    size,
                })
            }
            // The slot and boot keys were parsed (a typo in them is still an
            // error) but mean nothing here: nothing on disk is written. An
            // AGENT.toml shared with A/B machines may keep them.
            RawMode::Netboot => Mode::Netboot,
        };
        Ok(Config {
            path: path.to_path_buf(),
            servers: settings.iter().map(|s| s.url.clone()).collect(),
            server_settings: settings,
            trust: raw.trust,
            fleet_trust: raw.fleet_trust,
            state_dir,
            mode,
            boot_dir: raw.boot_dir,
            boot_tries: raw.boot_tries,
            machine_id: raw.machine_id,
            labels: raw.labels,
            kernel_cmdline: raw.kernel_cmdline,
            connections: raw.connections.clamp(1, 16),
            timeout_secs: raw.timeout_secs.clamp(1, 3600),
            token_file: raw.token_file,
            boot_device: raw.boot_device,
            channel: raw.channel,
            offline_source: None,
        })
    }

    /// The slots of an A/B machine; on a network-booted one, an error
    /// saying that `what` needs slots. Every path that writes or reads a
    /// slot goes through here, so a netboot machine never touches one.
    pub fn slots(&self, what: &str) -> Result<&Slots> {
        match &self.mode {
            Mode::Ab(s) => Ok(s),
            Mode::Netboot => Err(Error::Local(format!(
                "{what} needs A/B slots, but {} says mode = \"netboot\": this machine boots from the network \
                 and has no slots (the fleet decides what its next network boot runs)",
                self.path.display()
            ))),
        }
    }

    /// The bootloader the agent drives: `none` on a netboot machine, whose
    /// firmware boots from the network.
    pub fn bootloader(&self) -> Bootloader {
        match &self.mode {
            Mode::Ab(s) => s.bootloader,
            Mode::Netboot => Bootloader::None,
        }
    }

    /// This machine's token, when `token_file` names one: the file's first
    /// line, trimmed. A named file that cannot be read, or holds no token,
    /// is an error rather than a silent anonymous request.
    pub fn token(&self) -> Result<Option<String>> {
        self.token_file.as_deref().map(read_token).transpose()
    }

    /// Where the agent keeps the state policy the fleet assigned to this
    /// machine; it overrides the image's /etc/slate/state.toml.
    pub fn fleet_policy_path(&self) -> PathBuf {
        self.state_dir.join("state-policy.toml")
    }

    /// An HTTP client for this machine's servers, sending its token to
    /// those that may have it.
    pub fn http(&self) -> Result<crate::http::Http> {
        self.http_with_timeout(self.timeout_secs)
    }

    /// Whether any server is a fleet server (not a mirror).
    pub fn has_fleet_server(&self) -> bool {
        self.server_settings.iter().any(|s| !s.mirror)
    }

    /// An HTTP client for the mirrors only, with no token.
    pub fn mirror_http(&self) -> Result<Option<crate::http::Http>> {
        let mirrors: Vec<ServerSettings> = self.server_settings.iter().filter(|s| s.mirror).cloned().collect();
        if mirrors.is_empty() {
            return Ok(None);
        }
        crate::http::Http::with_settings(&mirrors, self.timeout_secs).map(Some)
    }

    /// [`Config::http`] with another per-request timeout. Only the fleet
    /// servers: mirrors hold no machine data and sign nothing.
    pub fn http_with_timeout(&self, timeout_secs: u64) -> Result<crate::http::Http> {
        let token = self.token()?;
        if token.is_some() && !self.server_settings.iter().any(|s| s.token) {
            return Err(Error::Config(format!(
                "{}: token_file is set but no server may receive the token: plain http servers \
                 never get it unless their entry says token = true and token_over_http = true \
                 (see docs/agent.md, \"Servers\")",
                self.path.display()
            )));
        }
        let fleet: Vec<ServerSettings> = self.server_settings.iter().filter(|s| !s.mirror).cloned().collect();
        let mut http = crate::http::Http::with_settings(&fleet, timeout_secs)?;
        http.set_token(token);
        Ok(http)
    }

    /// Read the trusted release public keys.
    pub fn trusted_keys(&self) -> Result<Vec<slate_core::keys::PublicKey>> {
        read_keys(&self.trust)
    }

    /// Read the trusted fleet public keys.
    pub fn fleet_keys(&self) -> Result<Vec<slate_core::keys::PublicKey>> {
        read_keys(&self.fleet_trust)
    }
}

/// The machine token in file `p`: its first line, trimmed; a file that
/// cannot be read, or holds no token, is an error.
pub fn read_token(p: &Path) -> Result<String> {
    let text = std::fs::read_to_string(p)
        .map_err(|e| Error::Config(format!("cannot read the machine token {}: {e}", p.display())))?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::Config(format!(
            "{} holds no machine token (write the line `slate fleet enroll` printed)",
            p.display()
        )));
    }
    Ok(token.to_string())
}

fn read_keys(paths: &[PathBuf]) -> Result<Vec<slate_core::keys::PublicKey>> {
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p)
                .map_err(|e| Error::Config(format!("cannot read trusted key {}: {e}", p.display())))?;
            slate_core::keys::PublicKey::from_text(&text).map_err(|e| Error::Config(format!("{}: {e}", p.display())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_install_template_may_leave_out_what_the_installer_writes() {
        let text = "server = \"http://s\"\ntrust = [\"/k.pub\"]\nmachine_id = \"m1\"\n";
        let e = Config::parse(text, Path::new("agent.toml")).unwrap_err().to_string();
        assert!(e.contains("missing field `state_dir`"), "{e}");
        let t = Config::parse_as(text, Path::new("t.toml"), Purpose::InstallTemplate).unwrap();
        assert_eq!(t.state_dir, Path::new(crate::install::MACHINE_STATE_DIR));
        assert_eq!(
            t.slots("install").unwrap().path("a"),
            Path::new(crate::install::MACHINE_SLOT_A)
        );
        // Given, they are still checked.
        let e = Config::parse_as(
            &format!("{text}[slots]\na = \"/x\"\nb = \"/x\"\n"),
            Path::new("t.toml"),
            Purpose::InstallTemplate,
        )
        .unwrap_err();
        assert!(e.to_string().contains("same place"), "{e}");
    }

    #[test]
    fn parses_minimal_and_full() {
        let c = Config::parse(
            "server = \"http://127.0.0.1:8470/\"\ntrust = [\"/k.pub\"]\nstate_dir = \"/var/lib/slate\"\n[slots]\na = \"/s/a\"\nb = \"/s/b\"\n",
            Path::new("agent.toml"),
        )
        .unwrap();
        assert_eq!(c.servers, vec!["http://127.0.0.1:8470"]);
        assert_eq!(c.bootloader(), Bootloader::None);
        let c = Config::parse(
            "server = [\"http://a\", \"https://b\"]\ntrust = [\"/k.pub\"]\nstate_dir = \"/x\"\nbootloader = \"bls\"\nslot_size = \"2G\"\nmachine_id = \"m1\"\n[slots]\na = \"/dev/vda2\"\nb = \"/dev/vda3\"\n[labels]\nroom = \"b12\"\n",
            Path::new("agent.toml"),
        )
        .unwrap();
        assert_eq!(c.servers.len(), 2);
        let Mode::Ab(slots) = &c.mode else {
            panic!("ab is the default mode")
        };
        assert_eq!(slots.size, 2 << 30);
        assert_eq!(slots.bootloader, Bootloader::Bls);
        assert_eq!(c.labels["room"], "b12");
    }

    #[test]
    fn the_two_modes() {
        let common = "server = \"http://s\"\ntrust = [\"/k\"]\nstate_dir = \"/x\"\n";
        let parse = |text: &str| Config::parse(&format!("{common}{text}"), Path::new("agent.toml"));
        // ab, said or not: slots required, checked as ever.
        for mode in ["", "mode = \"ab\"\n"] {
            let c = parse(&format!("{mode}slot_size = \"1G\"\n[slots]\na = \"/a\"\nb = \"/b\"\n")).unwrap();
            let slots = c.slots("a test").unwrap();
            assert_eq!((slots.path("a"), slots.path("b")), (Path::new("/a"), Path::new("/b")));
            assert_eq!(slots.size, 1 << 30);
            let e = parse(mode).unwrap_err().to_string();
            assert!(e.contains("missing field `slots`") && e.contains("netboot"), "{e}");
            let e = parse(&format!("{mode}[slots]\na = \"/a\"\nb = \"/a\"\n")).unwrap_err();
            assert!(e.to_string().contains("slots a and b are the same place"), "{e}");
            let e = parse(&format!("{mode}slot_size = \"big\"\n[slots]\na = \"/a\"\nb = \"/b\"\n")).unwrap_err();
            assert!(e.to_string().contains("slot_size \"big\" is not a size"), "{e}");
            let e = parse(&format!("{mode}boot_tries = 0\n[slots]\na = \"/a\"\nb = \"/b\"\n")).unwrap_err();
            assert!(e.to_string().contains("boot_tries"), "{e}");
        }
        // netboot: no slots needed, and those given do not matter, even
        // ones an A/B machine would refuse.
        let c = parse("mode = \"netboot\"\n").unwrap();
        assert_eq!(c.mode, Mode::Netboot);
        assert_eq!(c.bootloader(), Bootloader::None);
        let e = c.slots("slate rollback").unwrap_err().to_string();
        assert!(
            e.contains("slate rollback needs A/B slots") && e.contains("mode = \"netboot\""),
            "{e}"
        );
        let c = parse(
            "mode = \"netboot\"\nbootloader = \"grub\"\nslot_size = \"big\"\nboot_tries = 0\n\
             [slots]\na = \"/a\"\nb = \"/a\"\n",
        )
        .unwrap();
        assert_eq!((&c.mode, c.bootloader()), (&Mode::Netboot, Bootloader::None));
        // Still TOML checked: a wrong type or an unknown mode is an error.
        let e = parse("mode = \"netboot\"\nbootloader = \"lilo\"\n").unwrap_err();
        assert!(e.to_string().contains("agent.toml line 5"), "{e}");
        let e = parse("mode = \"diskless\"\n").unwrap_err();
        assert!(e.to_string().contains("unknown variant `diskless`"), "{e}");
    }

    #[test]
    fn the_default_path_falls_back_to_the_network_boots_file() {
        let d = tempfile::tempdir().unwrap();
        let (installed, netboot) = (d.path().join("etc-agent.toml"), d.path().join("run-agent.toml"));
        // Neither: the usual place, so that the error names it.
        assert_eq!(pick_default(&installed, &netboot), installed);
        std::fs::write(&netboot, "").unwrap();
        assert_eq!(pick_default(&installed, &netboot), netboot);
        // An empty one is what a RAM state store binds there: not the machine's.
        std::fs::write(&installed, "").unwrap();
        assert_eq!(pick_default(&installed, &netboot), netboot);
        // A machine's own file always wins.
        std::fs::write(&installed, "server = \"http://a\"\n").unwrap();
        assert_eq!(pick_default(&installed, &netboot), installed);
    }

    #[test]
    fn the_shipped_example_parses() {
        // dist/agent.example.toml is what admins copy: it must stay valid
        // as keys are added or renamed, and show every one of them.
        let text = include_str!("../../../dist/agent.example.toml");
        let c = Config::parse(text, Path::new("dist/agent.example.toml")).unwrap();
        assert_eq!(c.servers.len(), 2);
        assert_eq!(c.bootloader(), Bootloader::Grub);
        assert_eq!(c.boot_tries, 3);
        let slots = c.slots("a test").unwrap();
        assert_eq!(slots.size, 8 << 30);
        assert_eq!(slots.path("b"), Path::new("/dev/disk/by-partlabel/slate-b"));
        assert_eq!(c.labels["role"], "kiosk");
        assert_eq!(c.fleet_trust, vec![PathBuf::from("/etc/slate/keys/fleet.pub")]);
        for key in [
            "mode",
            "server",
            "trust",
            "fleet_trust",
            "state_dir",
            "bootloader",
            "boot_dir",
            "boot_tries",
            "machine_id",
            "kernel_cmdline",
            "slot_size",
            "connections",
            "timeout_secs",
            "channel",
            "[slots]",
            "[labels]",
        ] {
            assert!(
                text.contains(&format!("\n{key}")) || text.contains(&format!("# {key}")),
                "{key}"
            );
        }
    }

    fn servers(text: &str) -> Result<Vec<ServerSettings>> {
        Config::parse(
            &format!("{text}\ntrust = [\"/k\"]\nstate_dir = \"/x\"\n[slots]\na = \"/a\"\nb = \"/b\"\n"),
            Path::new("agent.toml"),
        )
        .map(|c| c.server_settings)
    }

    #[test]
    fn mirrors_never_get_the_token_nor_the_fleet_questions() {
        let s = servers("server = [\"https://a\", { url = \"https://m\", mirror = true }]").unwrap();
        assert_eq!((s[0].token, s[0].mirror), (true, false));
        assert_eq!((s[1].token, s[1].mirror), (false, true));
        let e = servers("server = [{ url = \"https://m\", mirror = true, token = true }]").unwrap_err();
        assert!(e.to_string().contains("mirrors never receive the machine token"), "{e}");
        let c = Config::parse(
            "server = [\"https://a\", { url = \"https://m\", mirror = true }]\ntrust = [\"/k\"]\nstate_dir = \"/x\"\n\
             channel = \"lab/x\"\n[slots]\na = \"/a\"\nb = \"/b\"\n",
            Path::new("agent.toml"),
        )
        .unwrap();
        assert!(c.has_fleet_server());
        assert_eq!(c.channel.as_deref(), Some("lab/x"));
        assert!(c.mirror_http().unwrap().is_some());
        let bad = "server = \"https://a\"\ntrust = [\"/k\"]\nstate_dir = \"/x\"\nchannel = \"../x\"\n\
                   [slots]\na = \"/a\"\nb = \"/b\"\n";
        assert!(Config::parse(bad, Path::new("agent.toml")).is_err());
    }

    #[test]
    fn the_token_goes_only_where_the_file_allows() {
        // Bare URLs: https servers get the token, plain http ones never.
        let s = servers("server = [\"https://a/\", \"http://b\"]").unwrap();
        assert_eq!((s[0].url.as_str(), s[0].token), ("https://a", true));
        assert_eq!((s[1].url.as_str(), s[1].token), ("http://b", false));
        // Once one server is marked, only the marked ones get it.
        let s = servers("server = [{ url = \"https://a\", token = true }, \"https://mirror\"]").unwrap();
        assert_eq!((s[0].token, s[1].token), (true, false));
        // Plain http with the token: only when said twice.
        let e = servers("server = [{ url = \"http://a\", token = true }]").unwrap_err();
        assert!(e.to_string().contains("token_over_http = true"), "{e}");
        let s = servers("server = [{ url = \"http://a\", token = true, token_over_http = true }]").unwrap();
        assert!(s[0].token);
        // No server may have it, but there is a token file: the client says so.
        let c = Config::parse(
            "server = \"http://a\"\ntrust = [\"/k\"]\nstate_dir = \"/x\"\ntoken_file = \"/nonexistent\"\n[slots]\na = \"/a\"\nb = \"/b\"\n",
            Path::new("agent.toml"),
        )
        .unwrap();
        assert!(!c.server_settings[0].token);
    }

    #[test]
    fn pins_and_ca_files() {
        let hex = "ab".repeat(32);
        let s = servers(&format!(
            "server = [{{ url = \"https://a\", ca_file = \"/ca.pem\", pin = [\"sha256:{hex}\", \"sha256:{}\"] }}]",
            "AB:".repeat(31) + "AB"
        ))
        .unwrap();
        assert_eq!(s[0].pins, vec![[0xab; 32], [0xab; 32]]);
        assert_eq!(s[0].ca_file.as_deref(), Some(Path::new("/ca.pem")));
        for bad in ["sha256:abc", "ab".repeat(32).as_str(), "sha1:00"] {
            let e = servers(&format!("server = [{{ url = \"https://a\", pin = [\"{bad}\"] }}]")).unwrap_err();
            assert!(e.to_string().contains("is not `sha256:`"), "{e}");
        }
        let e = servers("server = [{ url = \"http://a\", ca_file = \"/ca.pem\" }]").unwrap_err();
        assert!(e.to_string().contains("only to https"), "{e}");
        let e = servers("server = [{ url = \"https://a\", tokens = true }]").unwrap_err();
        assert!(e.to_string().contains("agent.toml line 1"), "{e}");
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = Config::parse(
            "server = \"http://a\"\ntrust = [\"/k\"]\nstate_dir = 5\n",
            Path::new("/etc/agent.toml"),
        )
        .unwrap_err();
        let m = e.to_string();
        assert!(m.contains("/etc/agent.toml line 3"), "{m}");
        let e = Config::parse(
            "server = \"ftp://a\"\ntrust = [\"/k\"]\nstate_dir = \"/x\"\n[slots]\na=\"/a\"\nb=\"/b\"\n",
            Path::new("f"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("not an http"), "{e}");
        // An unknown key starts its line: that line is named, not the one before.
        let e = Config::parse(
            "server = \"http://a\"\ntrust = [\"/k\"]\nstate_dir = \"/x\"\nslot = 1\n[slots]\na=\"/a\"\nb=\"/b\"\n",
            Path::new("f"),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("f line 4: unknown field `slot`"), "{e}");
    }
}
