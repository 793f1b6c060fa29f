//! FLEET.toml: which machine runs which channel (see `docs/fleet.md`).
//!
//! The file is parsed and checked once, at startup, into rules that match
//! in memory; a mistake is reported with the file, line and column, so the
//! server refuses to start rather than assign machines by a half-read file.
//! Matching ([`FleetConfig::choose`]) is pure: it picks a channel (and maybe
//! a pinned snapshot); the channel's head is read from the repository at
//! request time, because channels move while the server runs.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use globset::{GlobBuilder, GlobMatcher};
use serde::Deserialize;
use slate_core::SnapshotId;
use slate_repo::Repo;
use toml::Spanned;

use super::machine::{normalize_mac, Machine};
use super::rollout::plan::{RawRollout, RolloutPlan};

/// The fleet file could not be read or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum FleetFileError {
    /// The file could not be read.
    #[error("cannot read fleet file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid; `line` and `column` count from 1.
    #[error("{path}: line {line}, column {column}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// Where.
        line: usize,
        /// Where on the line.
        column: usize,
        /// What is wrong, one sentence.
        message: String,
    },
}

/// Where a machine goes: a channel, optionally pinned to one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The channel (its head is assigned unless pinned).
    pub channel: String,
    /// An explicit snapshot to run instead of the head.
    pub pin: Option<SnapshotId>,
    /// A state policy for these machines, overriding the image's
    /// /etc/slate/state.toml (docs/state.md).
    pub state_policy: Option<StatePolicy>,
}

/// A state policy named by the fleet file: its path as written (relative
/// to FLEET.toml) and, once [`FleetConfig::load`] read and checked it, its
/// text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatePolicy {
    /// The path as written in FLEET.toml.
    pub file: String,
    /// The policy's TOML, sent to the machines.
    pub text: String,
    /// The release-key signatures beside it (`FILE.sig`, written by
    /// `slate policy sign`), sent along; `None` when there is no such file.
    pub signatures: Option<String>,
}

/// One `[[machine]]` rule. Every matcher it gives must match.
#[derive(Debug, Clone)]
pub struct Rule {
    /// What the assignment reports as `rule`: the `name`, else the matchers.
    pub label: String,
    /// Line of the rule in the file.
    pub line: usize,
    mac: Option<String>,
    dmi_uuid: Option<String>,
    hostname: Option<GlobMatcher>,
    labels: BTreeMap<String, String>,
    /// Where the machines it matches go.
    pub target: Target,
}

impl Rule {
    /// Whether `m` (already validated, so normalised) matches this rule.
    pub fn matches(&self, m: &Machine) -> bool {
        self.mac.as_ref().is_none_or(|mac| m.macs.contains(mac))
            && self.dmi_uuid.as_ref().is_none_or(|u| m.dmi_uuid.as_ref() == Some(u))
            && self
                .hostname
                .as_ref()
                .is_none_or(|g| m.hostname.as_deref().is_some_and(|h| g.is_match(h)))
            && self.labels.iter().all(|(k, v)| m.labels.get(k) == Some(v))
    }
}

/// The assignment a machine gets from the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// Channel and optional pin.
    pub target: Target,
    /// Which rule chose it (for the answer's `rule` and for logs).
    pub rule: String,
}

/// What [`FleetConfig::choose`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// A rule or `[default]` chose a target.
    Selected(Selection),
    /// No fleet file: the repository's only channel, if it has exactly one
    /// (known only at request time).
    OnlyChannel,
    /// Nothing matches and there is no `[default]`.
    NoMatch,
    /// No rule of the file matches, the fleet takes machines from an LDAP
    /// directory and it has not been read yet: `[default]` could be wrong
    /// for this machine, so it gets no answer until the directory is read.
    DirectoryNotRead,
}

/// The fleet: rules in file order and the default.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// The file, or `None` when the server runs without one.
    pub path: Option<PathBuf>,
    /// `[default]`.
    pub default: Option<Target>,
    /// `[[machine]]` rules, first match wins.
    pub rules: Vec<Rule>,
    /// No fleet file was given (see [`Choice::OnlyChannel`]).
    implicit: bool,
    /// `[netboot]`: what the iPXE scripts of `GET /v1/boot/ipxe` say.
    pub netboot: Netboot,
    /// `[rollout."CHANNEL"]`: channels whose new heads are rolled out in
    /// waves (`super::rollout`), by channel.
    pub rollouts: BTreeMap<String, Arc<RolloutPlan>>,
    /// `[ldap]`: where more machine rules come from (docs/operations.md).
    pub ldap: Option<super::ldap::LdapSettings>,
    /// The rules last read from the `[ldap]` directory, tried after the
    /// file's; `None` until a first read succeeds.
    pub directory: Option<Arc<super::ldap::Directory>>,
}

/// The default of `[netboot] kernel_cmdline`: the kernel speaks on the
/// screen and on the first serial port, where a lab's console server or
/// `qemu -serial` shows it.
pub const DEFAULT_KERNEL_CMDLINE: &str = "console=tty0 console=ttyS0,115200";
/// Longest `[netboot] kernel_cmdline`: x86 kernels keep at most 2 KiB of
/// command line, and the server adds its own parameters before it.
pub const MAX_KERNEL_CMDLINE: usize = 2048;
/// Longest URL in `[netboot] server`.
pub const MAX_SERVER_URL: usize = 512;
/// Most URLs in `[netboot] server`.
pub const MAX_SERVERS: usize = 16;

/// `[netboot]`: the network boot of diskless machines (docs/fleet.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netboot {
    /// Appended to the kernel command line the server writes.
    pub kernel_cmdline: String,
    /// `slate.server=` URLs, failover order (no trailing `/`); empty: the
    /// URL the machine reached this server by (`http://` + its `Host`).
    pub servers: Vec<String>,
}

impl Default for Netboot {
    fn default() -> Self {
        Netboot {
            kernel_cmdline: DEFAULT_KERNEL_CMDLINE.into(),
            servers: Vec::new(),
        }
    }
}

// ---- the file as written -------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    default: Option<RawTarget>,
    #[serde(default)]
    machine: Vec<Spanned<RawRule>>,
    netboot: Option<RawNetboot>,
    #[serde(default)]
    rollout: BTreeMap<String, Spanned<RawRollout>>,
    ldap: Option<Spanned<super::ldap::RawLdap>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetboot {
    kernel_cmdline: Option<Cmdline>,
    server: Option<Spanned<Vec<ServerUrl>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    channel: Channel,
    snapshot: Option<Pin>,
    state_policy: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<String>,
    mac: Option<Mac>,
    dmi_uuid: Option<DmiUuid>,
    hostname: Option<HostGlob>,
    labels: Option<BTreeMap<String, String>>,
    channel: Channel,
    snapshot: Option<Pin>,
    state_policy: Option<String>,
}

// Each checked value is a newtype deserialized through `TryFrom<String>`,
// so toml attaches the value's position to the error it returns.

#[derive(Deserialize)]
#[serde(try_from = "String")]
struct Channel(String);

impl TryFrom<String> for Channel {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        slate_repo::channel::check_name(&s).map_err(|e| e.to_string())?;
        Ok(Channel(s))
    }
}

#[derive(Deserialize)]
#[serde(try_from = "String")]
struct Pin(SnapshotId);

impl TryFrom<String> for Pin {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let id = (s.len() == 64)
            .then(|| SnapshotId::from_hex(&s.to_ascii_lowercase()))
            .flatten()
            .ok_or_else(|| format!("snapshot {s:?} is not a snapshot id (64 hex digits, see `slate log`)"))?;
        Ok(Pin(id))
    }
}

#[derive(Deserialize)]
#[serde(try_from = "String")]
struct Mac(String);

impl TryFrom<String> for Mac {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let n = normalize_mac(&s);
        let ok = n.split(':').count() == 6
            && n.split(':')
                .all(|o| o.len() == 2 && o.bytes().all(|b| b.is_ascii_hexdigit()));
        if !ok {
            return Err(format!(
                "mac {s:?} is not a MAC address (write it as 52:54:00:12:34:56)"
            ));
        }
        Ok(Mac(n))
    }
}

#[derive(Deserialize)]
#[serde(try_from = "String")]
struct DmiUuid(String);

impl TryFrom<String> for DmiUuid {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let lens: Vec<usize> = s.split('-').map(str::len).collect();
        let ok = lens == [8, 4, 4, 4, 12] && s.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit());
        if !ok {
            return Err(format!(
                "dmi_uuid {s:?} is not a UUID (8-4-4-4-12 hex digits, as in /sys/class/dmi/id/product_uuid)"
            ));
        }
        Ok(DmiUuid(s.to_ascii_lowercase()))
    }
}

#[derive(Deserialize)]
#[serde(try_from = "String")]
struct HostGlob(String, GlobMatcher);

impl TryFrom<String> for HostGlob {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() {
            return Err("hostname pattern is empty".into());
        }
        // Host names are case-insensitive (RFC 4343).
        let g = GlobBuilder::new(&s)
            .case_insensitive(true)
            .build()
            .map_err(|e| format!("hostname pattern {s:?} is not a valid glob: {}", e.kind()))?;
        Ok(HostGlob(s, g.compile_matcher()))
    }
}

/// Text that goes into an iPXE script line and onto a kernel command line:
/// printable ASCII only, because a newline would start another iPXE
/// command, and without `$`, because iPXE expands `${...}` in every line.
fn script_safe(s: &str) -> bool {
    s.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b'$')
}

#[derive(Deserialize)]
#[serde(try_from = "String")]
struct Cmdline(String);

impl TryFrom<String> for Cmdline {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.len() > MAX_KERNEL_CMDLINE || !script_safe(&s) {
            return Err(format!(
                "kernel_cmdline must be at most {MAX_KERNEL_CMDLINE} bytes of printable ASCII on one line, \
                 without '$' (iPXE would expand it)"
            ));
        }
        Ok(Cmdline(s.trim().to_string()))
    }
}

#[derive(Deserialize)]
#[serde(try_from = "String")]
struct ServerUrl(String);

impl TryFrom<String> for ServerUrl {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let rest = s.strip_prefix("http://").or_else(|| s.strip_prefix("https://"));
        // The kernel parameter is `slate.server=URL,URL`: no spaces, no commas.
        let ok = rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
            && s.len() <= MAX_SERVER_URL
            && script_safe(&s)
            && !s.contains([' ', ',']);
        if !ok {
            return Err(format!(
                "server {:?} is not an http:// or https:// URL of at most {MAX_SERVER_URL} printable ASCII \
                 characters without spaces, ',' or '$'",
                s.chars().take(60).collect::<String>()
            ));
        }
        Ok(ServerUrl(s.trim_end_matches('/').to_string()))
    }
}

// ---- loading ---------------------------------------------------------------

/// Line and column (from 1) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

impl FleetConfig {
    /// No fleet file: every machine runs the repository's only channel.
    pub fn only_channel() -> Self {
        FleetConfig {
            path: None,
            default: None,
            rules: Vec::new(),
            implicit: true,
            netboot: Netboot::default(),
            rollouts: BTreeMap::new(),
            ldap: None,
            directory: None,
        }
    }

    /// Read and check a fleet file.
    pub fn load(path: &Path) -> Result<Self, FleetFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| FleetFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut c = Self::parse(&text, &path.display().to_string())?;
        c.path = Some(path.to_path_buf());
        let dir = path.parent().unwrap_or(Path::new("."));
        if let Some(l) = &mut c.ldap {
            // Read at each refresh, so a changed password needs no restart.
            l.password_file = l.password_file.as_ref().map(|f| dir.join(f));
        }
        c.read_state_policies(dir)?;
        Ok(c)
    }

    /// Read and check every state policy the rules name, relative to `dir`:
    /// a bad policy stops the server at startup, never a machine at boot.
    fn read_state_policies(&mut self, dir: &Path) -> Result<(), FleetFileError> {
        let name = self.path.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        let targets = self
            .default
            .iter_mut()
            .map(|t| (0, t))
            .chain(self.rules.iter_mut().map(|r| (r.line, &mut r.target)));
        for (line, t) in targets {
            let Some(sp) = &mut t.state_policy else { continue };
            let file = dir.join(&sp.file);
            let text = std::fs::read_to_string(&file).map_err(|source| FleetFileError::Read {
                path: file.display().to_string(),
                source,
            })?;
            slate_state::Policy::parse(&text, &file).map_err(|e| FleetFileError::Invalid {
                path: name.clone(),
                line,
                column: 1,
                message: format!("state_policy: {e}"),
            })?;
            sp.text = text;
            let sig_file = dir.join(format!("{}.sig", sp.file));
            sp.signatures = match std::fs::read_to_string(&sig_file) {
                Ok(sigs) => {
                    slate_core::trust::parse_signatures(&sigs).map_err(|e| FleetFileError::Invalid {
                        path: sig_file.display().to_string(),
                        line: 1,
                        column: 1,
                        message: e.to_string(),
                    })?;
                    Some(sigs)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(source) => {
                    return Err(FleetFileError::Read {
                        path: sig_file.display().to_string(),
                        source,
                    })
                }
            };
        }
        Ok(())
    }

    /// Check the text of a fleet file; `name` is used in errors.
    pub fn parse(text: &str, name: &str) -> Result<Self, FleetFileError> {
        let invalid = |offset: usize, message: String| {
            let (line, column) = line_col(text, offset);
            FleetFileError::Invalid {
                path: name.to_string(),
                line,
                column,
                message,
            }
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            // toml's Display spans several lines with a snippet; keep its
            // message and say where ourselves, on one line.
            let offset = e.span().map_or(0, |s| s.start);
            let message: Vec<&str> = e.message().lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            invalid(offset, message.join("; "))
        })?;
        let target = |t: RawTarget| Target {
            channel: t.channel.0,
            pin: t.snapshot.map(|p| p.0),
            state_policy: t.state_policy.map(|file| StatePolicy {
                file,
                text: String::new(),
                signatures: None,
            }),
        };
        let mut rules = Vec::new();
        for spanned in raw.machine {
            let start = spanned.span().start;
            let r = spanned.into_inner();
            let mut matchers = Vec::new();
            if let Some(m) = &r.mac {
                matchers.push(format!("mac {}", m.0));
            }
            if let Some(u) = &r.dmi_uuid {
                matchers.push(format!("dmi_uuid {}", u.0));
            }
            if let Some(h) = &r.hostname {
                matchers.push(format!("hostname {}", h.0));
            }
            let labels = r.labels.unwrap_or_default();
            if !labels.is_empty() {
                let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                matchers.push(format!("labels {}", l.join(",")));
            }
            if matchers.is_empty() {
                return Err(invalid(
                    start,
                    "this [[machine]] rule has no mac, dmi_uuid, hostname or labels to match on \
                     (use [default] for machines no rule names)"
                        .into(),
                ));
            }
            if let Some(n) = &r.name {
                if n.is_empty() || n.len() > 200 || n.chars().any(char::is_control) {
                    return Err(invalid(
                        start,
                        "name must be 1 to 200 characters without control characters".into(),
                    ));
                }
            }
            rules.push(Rule {
                label: r.name.clone().unwrap_or_else(|| matchers.join(" and ")),
                line: line_col(text, start).0,
                mac: r.mac.map(|m| m.0),
                dmi_uuid: r.dmi_uuid.map(|u| u.0),
                hostname: r.hostname.map(|h| h.1),
                labels,
                target: target(RawTarget {
                    channel: r.channel,
                    snapshot: r.snapshot,
                    state_policy: r.state_policy,
                }),
            });
        }
        let mut netboot = Netboot::default();
        if let Some(n) = raw.netboot {
            if let Some(c) = n.kernel_cmdline {
                netboot.kernel_cmdline = c.0;
            }
            if let Some(servers) = n.server {
                let start = servers.span().start;
                let servers = servers.into_inner();
                if servers.is_empty() || servers.len() > MAX_SERVERS {
                    return Err(invalid(
                        start,
                        format!("server must list 1 to {MAX_SERVERS} URLs (leave it out to use the URL machines reach this server by)"),
                    ));
                }
                netboot.servers = servers.into_iter().map(|u| u.0).collect();
            }
        }
        let mut rollouts = BTreeMap::new();
        for (channel, section) in raw.rollout {
            let start = section.span().start;
            let plan = section
                .into_inner()
                .check(&channel)
                .map_err(|e| invalid(start, format!("rollout.{channel:?}: {e}")))?;
            rollouts.insert(channel, Arc::new(plan));
        }
        let ldap = match raw.ldap {
            None => None,
            Some(l) => {
                let start = l.span().start;
                Some(l.into_inner().check().map_err(|m| invalid(start, m))?)
            }
        };
        Ok(FleetConfig {
            path: None,
            default: raw.default.map(target),
            rules,
            implicit: false,
            netboot,
            rollouts,
            ldap,
            directory: None,
        })
    }

    /// The rollout plan of the channel `m` runs by the rules, unless its
    /// rule pins a snapshot (a pin is never rolled out).
    pub fn rollout_for(&self, m: &Machine) -> Option<Arc<RolloutPlan>> {
        if self.rollouts.is_empty() {
            return None;
        }
        match self.choose(m) {
            Choice::Selected(s) if s.target.pin.is_none() => self.rollouts.get(&s.target.channel).cloned(),
            _ => None,
        }
    }

    /// The assignment for `m` (validated): the first rule in file order
    /// that matches, else `[default]`.
    pub fn choose(&self, m: &Machine) -> Choice {
        if self.implicit {
            return Choice::OnlyChannel;
        }
        if let Some(r) = self.rules.iter().find(|r| r.matches(m)) {
            return Choice::Selected(Selection {
                target: r.target.clone(),
                rule: r.label.clone(),
            });
        }
        if self.ldap.is_some() {
            // The file's rules are the admin's overrides; the directory is
            // the inventory; [default] is for machines neither names.
            let Some(dir) = &self.directory else {
                return Choice::DirectoryNotRead;
            };
            if let Some(r) = dir.rules.iter().find(|r| r.matches(m)) {
                return Choice::Selected(Selection {
                    target: r.target.clone(),
                    rule: r.label.clone(),
                });
            }
        }
        match &self.default {
            Some(t) => Choice::Selected(Selection {
                target: t.clone(),
                rule: "default".into(),
            }),
            None => Choice::NoMatch,
        }
    }

    /// Problems worth a warning at startup: channels that do not exist (or
    /// have no snapshot) and pinned snapshots the repository lacks. Not
    /// errors, since the admin may be about to commit them; a machine sent
    /// there gets a clear error at assignment. Reads the repository.
    pub fn warnings(&self, repo: &Repo) -> Vec<String> {
        let mut out = Vec::new();
        if self.implicit {
            match repo.channels() {
                Ok(c) if c.len() == 1 => {}
                Ok(c) => out.push(format!(
                    "no fleet file given and the repository has {} channels: machines get no assignment \
                     until it has exactly one; pass --fleet FLEET.toml to say which machine runs which",
                    c.len()
                )),
                Err(e) => out.push(format!("cannot list channels: {e}")),
            }
        }
        let targets = self.default.iter().map(|t| ("[default]".to_string(), t)).chain(
            self.rules
                .iter()
                .map(|r| (format!("rule {:?} (line {})", r.label, r.line), &r.target)),
        );
        for (what, t) in targets {
            match repo.channel_history(&t.channel) {
                Ok(h) if h.is_empty() => out.push(format!(
                    "{what} names channel {} which has no snapshots in the repository",
                    t.channel
                )),
                Ok(_) => {}
                Err(e) => out.push(format!("{what}: channel {}: {e}", t.channel)),
            }
            if let Some(sp) = t.state_policy.as_ref().filter(|sp| sp.signatures.is_none()) {
                // Agents refuse such a policy; say so before the first machine does.
                let runs = slate_state::Policy::parse(&sp.text, Path::new(&sp.file)).is_ok_and(|p| {
                    p.entries
                        .iter()
                        .any(|e| matches!(e.generator, Some(slate_state::policy::Generator::Command(_))))
                });
                if runs {
                    out.push(format!(
                        "{what}: state policy {} runs commands at boot but has no {}.sig; machines refuse it \
                         until a release key signs it (slate policy sign)",
                        sp.file, sp.file
                    ));
                }
            }
            if let Some(p) = &t.pin {
                if !repo.storage.exists(&Repo::snapshot_keys(p)[0]) {
                    out.push(format!("{what} pins snapshot {p} which is not in the repository"));
                }
            }
        }
        for channel in self.rollouts.keys() {
            let named = self
                .default
                .iter()
                .chain(self.rules.iter().map(|r| &r.target))
                .any(|t| t.channel == *channel);
            if !named {
                out.push(format!(
                    "[rollout.{channel:?}] names a channel no rule or [default] assigns: it rolls out to no machine"
                ));
            }
        }
        if !self.implicit && self.default.is_none() && self.rules.is_empty() {
            out.push("the fleet file has no [default] and no [[machine]] rules: no machine will be assigned".into());
        }
        out
    }
}

impl Rule {
    /// What the rule matches on, as text (to compare two sets of rules).
    pub fn matchers(&self) -> String {
        format!(
            "{:?} {:?} {:?} {:?}",
            self.mac,
            self.dmi_uuid,
            self.hostname.as_ref().map(|g| g.glob().glob()),
            self.labels
        )
    }

    /// A rule read from the directory (`super::ldap`): the machine
    /// presenting `mac`, `dmi_uuid` or `hostname` (exactly one given; a
    /// host name of letters, digits, `.` and `-`) runs `channel`. Checked as
    /// the file's values are; the error says which value is wrong.
    pub fn from_directory(
        label: &str,
        mac: Option<&str>,
        dmi_uuid: Option<&str>,
        hostname: Option<&str>,
        channel: &str,
    ) -> Result<Rule, String> {
        let channel = Channel::try_from(channel.to_string())?;
        let mut rule = Rule {
            label: label.to_string(),
            line: 0,
            mac: None,
            dmi_uuid: None,
            hostname: None,
            labels: BTreeMap::new(),
            target: Target {
                channel: channel.0,
                pin: None,
                state_policy: None,
            },
        };
        match (mac, dmi_uuid, hostname) {
            (Some(m), None, None) => rule.mac = Some(Mac::try_from(m.to_string())?.0),
            (None, Some(u), None) => rule.dmi_uuid = Some(DmiUuid::try_from(u.to_string())?.0),
            (None, None, Some(h)) => {
                let ok = !h.is_empty()
                    && h.len() <= super::machine::MAX_HOSTNAME
                    && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
                if !ok {
                    return Err(format!(
                        "host name {:?} is not a host name (letters, digits, '.', '-')",
                        h.chars().take(60).collect::<String>()
                    ));
                }
                // No glob characters can be in it: the glob matches it exactly.
                rule.hostname = Some(HostGlob::try_from(h.to_string())?.1);
            }
            _ => return Err("a directory rule matches on exactly one of mac, dmi_uuid, hostname".into()),
        }
        Ok(rule)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.pin {
            Some(p) => write!(f, "{} pinned to {p}", self.channel),
            None => write!(f, "{}", self.channel),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(f: impl FnOnce(&mut Machine)) -> Machine {
        let mut m = Machine {
            id: "m1".into(),
            ..Default::default()
        };
        f(&mut m);
        m.validate().unwrap()
    }

    fn chosen(c: &FleetConfig, m: &Machine) -> Option<(String, Option<SnapshotId>, String)> {
        match c.choose(m) {
            Choice::Selected(s) => Some((s.target.channel, s.target.pin, s.rule)),
            _ => None,
        }
    }

    #[test]
    fn smallest_file_assigns_everyone() {
        let c = FleetConfig::parse("[default]\nchannel = \"lab\"\n", "f").unwrap();
        let got = chosen(&c, &machine(|_| {})).unwrap();
        assert_eq!(got, ("lab".into(), None, "default".into()));
    }

    #[test]
    fn matchers_in_file_order() {
        let pin = "ab".repeat(32);
        let text = format!(
            r#"
[default]
channel = "stable"

[[machine]]
mac = "52:54:00:AA:BB:CC"
channel = "by-mac"

[[machine]]
dmi_uuid = "4C4C4544-0042-3510-8052-B7C04F4E3132"
channel = "by-uuid"
snapshot = "{pin}"

[[machine]]
name = "lab machines"
hostname = "lab-*"
channel = "by-host"

[[machine]]
labels = {{ room = "b12", role = "kiosk" }}
channel = "by-labels"

[[machine]]
hostname = "lab-*"
channel = "never: shadowed by the earlier hostname rule"
"#
        );
        // The last rule's channel name is invalid: check it is reported.
        let e = FleetConfig::parse(&text, "fleet.toml").unwrap_err().to_string();
        assert!(e.starts_with("fleet.toml: line 25, column 11: "), "{e}");
        assert!(e.contains("not a valid channel name"), "{e}");
        let text = text.replace("never: shadowed by the earlier hostname rule", "never");
        let c = FleetConfig::parse(&text, "fleet.toml").unwrap();

        let by_mac = machine(|m| m.macs = vec!["00:11:22:33:44:55".into(), "52-54-00-aa-bb-cc".into()]);
        assert_eq!(chosen(&c, &by_mac).unwrap().0, "by-mac");
        assert_eq!(chosen(&c, &by_mac).unwrap().2, "mac 52:54:00:aa:bb:cc");

        let by_uuid = machine(|m| m.dmi_uuid = Some("4c4c4544-0042-3510-8052-b7c04f4e3132".into()));
        let got = chosen(&c, &by_uuid).unwrap();
        assert_eq!(got.0, "by-uuid");
        assert_eq!(got.1, SnapshotId::from_hex(&pin));

        let by_host = machine(|m| m.hostname = Some("LAB-07".into()));
        assert_eq!(
            chosen(&c, &by_host).unwrap(),
            ("by-host".into(), None, "lab machines".into())
        );

        let labels = |pairs: &[(&str, &str)]| {
            machine(|m| {
                m.labels = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            })
        };
        let by_labels = labels(&[("room", "b12"), ("role", "kiosk"), ("extra", "x")]);
        assert_eq!(chosen(&c, &by_labels).unwrap().0, "by-labels");
        // All labels must match.
        assert_eq!(chosen(&c, &labels(&[("room", "b12")])).unwrap().0, "stable");

        // Several matchers in one rule must all match.
        let c2 = FleetConfig::parse(
            "[[machine]]\nhostname = \"lab-*\"\nlabels = { room = \"b12\" }\nchannel = \"x\"\n",
            "f",
        )
        .unwrap();
        assert_eq!(chosen(&c2, &by_host), None);
        assert_eq!(c2.choose(&by_host), Choice::NoMatch);
        let both = machine(|m| {
            m.hostname = Some("lab-1".into());
            m.labels.insert("room".into(), "b12".into());
        });
        assert_eq!(chosen(&c2, &both).unwrap().2, "hostname lab-* and labels room=b12");
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            ("[default]\nchanel = \"x\"\n", 2, "unknown field `chanel`"),
            ("[default]\nchannel = \"../x\"\n", 2, "not a valid channel name"),
            (
                "[[machine]]\nchannel = \"x\"\n",
                1,
                "no mac, dmi_uuid, hostname or labels",
            ),
            (
                "\n[[machine]]\nmac = \"52:54\"\nchannel = \"x\"\n",
                3,
                "not a MAC address",
            ),
            ("[[machine]]\ndmi_uuid = \"nope\"\nchannel = \"x\"\n", 2, "not a UUID"),
            (
                "[[machine]]\nhostname = \"lab-[\"\nchannel = \"x\"\n",
                2,
                "not a valid glob",
            ),
            (
                "[default]\nchannel = \"x\"\nsnapshot = \"abc\"\n",
                3,
                "not a snapshot id",
            ),
            ("[default]\nchannel = 5\n", 2, "invalid type"),
            (
                "[[machine]]\nmac = \"52:54:00:12:34:56\"\n",
                1,
                "missing field `channel`",
            ),
            ("[default\n", 1, ""),
            ("[other]\nx = 1\n", 1, "unknown field `other`"),
        ];
        for (text, line, needle) in cases {
            let e = FleetConfig::parse(text, "F.toml").unwrap_err();
            let s = e.to_string();
            assert!(!s.contains('\n'), "one line: {s}");
            assert!(s.starts_with(&format!("F.toml: line {line}, ")), "{text:?}: {s}");
            assert!(s.contains(needle), "{text:?}: {s}");
        }
    }

    #[test]
    fn shipped_example_parses() {
        let text = include_str!("../../../../dist/fleet.example.toml");
        let c = FleetConfig::parse(text, "fleet.example.toml").unwrap();
        assert_eq!(c.rules.len(), 5);
        assert_eq!(c.default.as_ref().unwrap().channel, "debian/bookworm/stable");
        assert!(c.rules[1].target.pin.is_some());
        assert_eq!(c.netboot.servers, ["http://boot.example.org:8470"]);
        assert_eq!(c.netboot.kernel_cmdline, "console=tty0 console=ttyS0,115200 quiet");
        // The message docs/fleet.md quotes.
        let e = FleetConfig::parse("[default]\nchannel = \"x\"\nchanel = \"y\"\n", "/etc/slate/fleet.toml")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "/etc/slate/fleet.toml: line 3, column 1: unknown field `chanel`, expected one of `channel`, `snapshot`, `state_policy`"
        );
    }

    #[test]
    fn netboot_section() {
        let c = FleetConfig::parse("[default]\nchannel = \"x\"\n", "f").unwrap();
        assert_eq!(c.netboot, Netboot::default());
        assert_eq!(c.netboot.kernel_cmdline, "console=tty0 console=ttyS0,115200");
        let c = FleetConfig::parse(
            "[netboot]\nkernel_cmdline = \" quiet slate.cache=ram \"\nserver = [\"http://a:8470/\", \"https://b\"]\n",
            "f",
        )
        .unwrap();
        assert_eq!(c.netboot.kernel_cmdline, "quiet slate.cache=ram");
        assert_eq!(c.netboot.servers, ["http://a:8470", "https://b"]);
        let c = FleetConfig::parse("[netboot]\nkernel_cmdline = \"\"\n", "f").unwrap();
        assert_eq!(c.netboot.kernel_cmdline, "");

        let long = "x".repeat(MAX_KERNEL_CMDLINE + 1);
        for (text, line, needle) in [
            (
                "[netboot]\nkernel_cmdline = \"a\\nb\"\n".to_string(),
                2,
                "printable ASCII",
            ),
            ("[netboot]\nkernel_cmdline = \"ip=${ip}\"\n".into(), 2, "without '$'"),
            (
                format!("[netboot]\nkernel_cmdline = \"{long}\"\n"),
                2,
                "at most 2048 bytes",
            ),
            (
                "[netboot]\nserver = [\"ftp://a\"]\n".into(),
                2,
                "not an http:// or https:// URL",
            ),
            ("[netboot]\nserver = [\"http://a b\"]\n".into(), 2, "without spaces"),
            ("[netboot]\nserver = [\"http://a,http://b\"]\n".into(), 2, "not an http"),
            ("[netboot]\nserver = [\"http://\"]\n".into(), 2, "not an http"),
            ("[netboot]\nserver = []\n".into(), 2, "1 to 16 URLs"),
            ("[netboot]\nserver = \"http://a\"\n".into(), 2, "invalid type"),
            ("[netboot]\nkernel = \"x\"\n".into(), 2, "unknown field `kernel`"),
        ] {
            let e = FleetConfig::parse(&text, "F.toml").unwrap_err().to_string();
            assert!(!e.contains('\n'), "one line: {e}");
            assert!(e.starts_with(&format!("F.toml: line {line}, ")), "{text:?}: {e}");
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn no_file_means_only_channel() {
        let c = FleetConfig::only_channel();
        assert_eq!(c.choose(&machine(|_| {})), Choice::OnlyChannel);
        // An empty file is a fleet file that assigns nobody.
        let empty = FleetConfig::parse("", "f").unwrap();
        assert_eq!(empty.choose(&machine(|_| {})), Choice::NoMatch);
    }
}
