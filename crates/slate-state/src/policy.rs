//! The state policy: per path, where a machine's state lives.
//!
//! A TOML file (docs/state.md) of `[[path]]` tables, each naming an absolute
//! path and its `state`: `ram`, `dynamic`, `server`, `local` or `backup`,
//! with the options that state takes. Fedora readonly-root's rwtab and
//! statetab files can be imported ([`crate::tabs`]). Every problem is
//! reported with the file and line it comes from.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use slate_core::manifest::path as mpath;
use toml::Spanned;

use crate::error::{Error, Result};

/// Where a path's state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A tmpfs (or a RAM copy of a file), empty or seeded from the image.
    Ram,
    /// Computed at boot into RAM by a generator.
    Dynamic,
    /// Fetched at boot from the server for this machine only.
    Server,
    /// Bind-mounted from the local state store; losing it is harmless.
    Local,
    /// Local and persistent, and backed up (`slate home backup`).
    Backup,
}

impl Mode {
    /// The name used in policies and reports.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Ram => "ram",
            Mode::Dynamic => "dynamic",
            Mode::Server => "server",
            Mode::Local => "local",
            Mode::Backup => "backup",
        }
    }

    /// Whether the state outlives a reboot on this machine or the server,
    /// so that it can hide a file an update of the image changes.
    pub fn persists(self) -> bool {
        matches!(self, Mode::Server | Mode::Local | Mode::Backup)
    }
}

/// What a `ram` path starts with at boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Seed {
    /// Empty (rwtab's `empty`).
    None,
    /// The image's directories, without files (rwtab's `dirs`).
    Dirs,
    /// The image's whole content (rwtab's `files`).
    All,
}

/// Whether a path is a directory or a file, for paths the image lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryType {
    /// A directory.
    Dir,
    /// A regular file.
    File,
}

/// How a `dynamic` path's content is computed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Generator {
    /// 32 hex digits derived from the DMI product UUID (else the first MAC
    /// address), stable across reinstalls of the same hardware.
    MachineId,
    /// The host name: the kernel command line's `slate.hostname=`, else the
    /// name DHCP gave the initramfs, else the fleet's machine id, else one
    /// derived from the DMI UUID.
    Hostname,
    /// A text with `{hostname}`, `{machine-id}`, `{dmi-uuid}`, `{mac}` and
    /// `{machine}` replaced.
    Template(String),
    /// A program's standard output (argv; run with SLATE_ROOT and
    /// SLATE_PATH set).
    Command(Vec<String>),
}

/// An owner or group: a number, or a name looked up in the root's
/// /etc/passwd or /etc/group.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Principal {
    /// A numeric id.
    Id(u32),
    /// A name.
    Name(String),
}

/// One declared path.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    /// Absolute, normalised path inside the root (`/var/log`).
    pub path: String,
    /// Where its state lives.
    pub state: Mode,
    /// `ram`: what it starts with.
    pub seed: Seed,
    /// `ram` directories: the tmpfs size (`64M`, `10%`).
    pub size: Option<String>,
    /// Directory or file, when the image does not have the path.
    pub kind: Option<EntryType>,
    /// Permission bits of what slate creates or generates.
    pub file_mode: Option<u32>,
    /// Owner of what slate creates or generates.
    pub owner: Option<Principal>,
    /// Group of what slate creates or generates.
    pub group: Option<Principal>,
    /// `dynamic`: the generator.
    pub generator: Option<Generator>,
    /// `server` directories: globs (relative to the directory) of the files
    /// the server keeps; empty means the whole directory.
    pub include: Vec<String>,
    /// `server`: the blob's name on the server (derived from the path when
    /// not given).
    pub name: Option<String>,
    /// Where it was declared: `file:line`.
    pub origin: String,
}

impl Entry {
    /// The path relative to the root, as manifests spell it.
    pub fn rel(&self) -> &str {
        self.path.trim_start_matches('/')
    }

    /// The server blob name: the declared one, else the path with every
    /// character outside `[A-Za-z0-9._-]` made `-`, plus a short hash of
    /// the path so that different paths never share a name.
    pub fn blob_name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        let mut s: String = self
            .rel()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .take(100)
            .collect();
        let h = blake3::hash(self.path.as_bytes());
        s.push('-');
        s.push_str(&h.to_hex()[..12]);
        s
    }

    /// Whether `rel` (relative, no leading slash) is this path or lies under it.
    pub fn covers(&self, rel: &str) -> bool {
        let me = self.rel();
        rel == me || (rel.len() > me.len() && rel.starts_with(me) && rel.as_bytes()[me.len()] == b'/')
    }
}

/// A whole policy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Policy {
    /// Declared paths in tree order (parents before what lies under them).
    pub entries: Vec<Entry>,
    /// Paths `audit` never reports (kernel filesystems and the like).
    pub audit_ignore: Vec<String>,
    /// rwtab files or directories to import, inside the root.
    pub rwtab: Vec<String>,
    /// statetab files or directories to import, inside the root.
    pub statetab: Vec<String>,
    /// The file it was read from.
    pub source: PathBuf,
}

/// Paths the audit skips unless a policy says otherwise: what the kernel
/// and the init system mount over the image on every running machine.
pub const DEFAULT_AUDIT_IGNORE: &[&str] = &["/proc", "/sys", "/dev", "/run", "/tmp"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    version: Option<Spanned<u32>>,
    #[serde(default)]
    rwtab: Vec<String>,
    #[serde(default)]
    statetab: Vec<String>,
    audit: Option<RawAudit>,
    #[serde(default)]
    path: Vec<RawEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    ignore: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    path: Spanned<String>,
    state: Mode,
    seed: Option<Seed>,
    size: Option<String>,
    #[serde(rename = "type")]
    kind: Option<EntryType>,
    mode: Option<String>,
    owner: Option<toml::Value>,
    group: Option<toml::Value>,
    generator: Option<String>,
    command: Option<Vec<String>>,
    template: Option<String>,
    #[serde(default)]
    include: Vec<String>,
    name: Option<String>,
}

/// The line (1-based) of byte offset `at` in `text`.
pub fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// Check that `p` is an absolute, normalised path other than `/`.
pub fn check_path(p: &str) -> std::result::Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} is not an absolute path"));
    }
    if p == "/" {
        return Err("the root itself cannot be declared: it is the read-only image".into());
    }
    if p.len() > 4096 || p.contains('\0') {
        return Err(format!("{p:?} is not a usable path"));
    }
    mpath::check(&p.as_bytes()[1..])
        .map_err(|e| format!("{p:?}: {e} (write it without `.`, `..`, `//` or a trailing `/`)"))
}

fn parse_principal(v: &toml::Value) -> std::result::Result<Principal, String> {
    match v {
        toml::Value::Integer(i) => u32::try_from(*i)
            .map(Principal::Id)
            .map_err(|_| format!("{i} is not a user or group id")),
        toml::Value::String(s) if !s.is_empty() => Ok(match s.parse::<u32>() {
            Ok(n) => Principal::Id(n),
            Err(_) => Principal::Name(s.clone()),
        }),
        _ => Err("owner and group are a name or a number".into()),
    }
}

fn valid_blob_name(n: &str) -> bool {
    (1..=128).contains(&n.len())
        && !n.starts_with('.')
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

impl Policy {
    /// Read a policy file. rwtab and statetab files (by their names) are
    /// read as such; anything else is TOML.
    pub fn load(path: &Path) -> Result<Policy> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error(format!("cannot read the state policy {}: {e}", path.display())))?;
        match crate::tabs::kind_of(path) {
            Some(kind) => {
                let mut p = Policy::empty(path);
                p.entries = crate::tabs::parse(kind, &text, path)?;
                p.finish()?;
                Ok(p)
            }
            None => Policy::parse(&text, path),
        }
    }

    /// A policy declaring nothing.
    pub fn empty(source: &Path) -> Policy {
        Policy {
            entries: Vec::new(),
            audit_ignore: DEFAULT_AUDIT_IGNORE.iter().map(|s| s.to_string()).collect(),
            rwtab: Vec::new(),
            statetab: Vec::new(),
            source: source.to_path_buf(),
        }
    }

    /// Parse policy TOML; `source` names it in errors.
    pub fn parse(text: &str, source: &Path) -> Result<Policy> {
        let file = source.display().to_string();
        let raw: Raw = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(0);
            Error(format!(
                "{file} line {line}: {}",
                e.message().trim_end().replace('\n', "; ")
            ))
        })?;
        if let Some(v) = &raw.version {
            if *v.get_ref() != 1 {
                return Err(Error(format!(
                    "{file} line {}: policy version {} is not supported (this slate reads version 1)",
                    line_of(text, v.span().start),
                    v.get_ref()
                )));
            }
        }
        let mut p = Policy::empty(source);
        if let Some(a) = raw.audit {
            for i in &a.ignore {
                check_path(i).map_err(|e| Error(format!("{file}: [audit] ignore: {e}")))?;
            }
            p.audit_ignore = a.ignore;
        }
        for (what, list) in [("rwtab", &raw.rwtab), ("statetab", &raw.statetab)] {
            for f in list {
                check_path(f).map_err(|e| Error(format!("{file}: {what}: {e}")))?;
            }
        }
        p.rwtab = raw.rwtab;
        p.statetab = raw.statetab;
        for r in raw.path {
            let line = line_of(text, r.path.span().start);
            let at = format!("{file} line {line}");
            p.entries.push(entry_from_raw(r, &at)?);
        }
        p.finish()?;
        Ok(p)
    }

    /// Add entries (from rwtab/statetab imports) that the policy does not
    /// declare itself; the policy's own declaration wins.
    pub fn merge_imported(&mut self, imported: Vec<Entry>) -> Result<()> {
        for e in imported {
            if !self.entries.iter().any(|x| x.path == e.path) {
                self.entries.push(e);
            }
        }
        self.finish()
    }

    /// Import the rwtab and statetab files the policy names, read from
    /// inside `root` (a file, or a directory of files like rwtab.d).
    pub fn import_tabs(&mut self, root: &Path) -> Result<()> {
        let mut imported = Vec::new();
        for (kind, list) in [
            (crate::tabs::TabKind::Rwtab, self.rwtab.clone()),
            (crate::tabs::TabKind::Statetab, self.statetab.clone()),
        ] {
            for f in list {
                let p = root.join(f.trim_start_matches('/'));
                let files: Vec<PathBuf> = if p.is_dir() {
                    let mut v: Vec<PathBuf> = std::fs::read_dir(&p)
                        .map_err(|e| Error(format!("cannot read {}: {e}", p.display())))?
                        .filter_map(|d| d.ok().map(|d| d.path()))
                        .filter(|p| p.is_file())
                        .collect();
                    v.sort();
                    v
                } else if p.exists() {
                    vec![p]
                } else {
                    // Named but absent: the image simply has none.
                    Vec::new()
                };
                for f in files {
                    let text =
                        std::fs::read_to_string(&f).map_err(|e| Error(format!("cannot read {}: {e}", f.display())))?;
                    imported.extend(crate::tabs::parse(kind, &text, &f)?);
                }
            }
        }
        self.merge_imported(imported)
    }

    /// Sort into tree order and check the entries against each other.
    fn finish(&mut self) -> Result<()> {
        self.entries.sort_by(|a, b| cmp_paths(&a.path, &b.path));
        for w in self.entries.windows(2) {
            if w[0].path == w[1].path {
                return Err(Error(format!(
                    "{}: {} is declared twice (also at {})",
                    w[1].origin, w[1].path, w[0].origin
                )));
            }
        }
        for (i, e) in self.entries.iter().enumerate() {
            // The nearest declared ancestor decides what may lie under it.
            if let Some(anc) = self.entries[..i].iter().rev().find(|a| a.covers(e.rel())) {
                let why = match anc.state {
                    Mode::Server => Some("a server path is kept as one unit"),
                    Mode::Dynamic => Some("a dynamic path is a generated file"),
                    _ => None,
                };
                if let Some(why) = why {
                    return Err(Error(format!(
                        "{}: {} lies under {} ({}; declared at {}): {why}",
                        e.origin,
                        e.path,
                        anc.path,
                        anc.state.name(),
                        anc.origin
                    )));
                }
            }
        }
        Ok(())
    }

    /// Declare slate's own state on an installed machine, where the policy
    /// does not keep it already: the agent's state directory
    /// (`/var/lib/slate`: slots' manifests, token, keys) and the machine's
    /// AGENT.toml (`/etc/slate/agent.toml`), both `local`, on the state
    /// partition where `slate install` put them. Only where the image
    /// under `root` has the directory that holds them (`slate prepare`
    /// makes /etc/slate).
    pub fn add_slate_own_state(&mut self, root: &Path) -> Result<()> {
        let own = [
            ("/var/lib/slate", EntryType::Dir),
            ("/etc/slate/agent.toml", EntryType::File),
        ];
        for (path, kind) in own {
            let rel = &path[1..];
            let kept = self
                .covering(rel)
                .is_some_and(|e| matches!(e.state, Mode::Local | Mode::Backup | Mode::Server | Mode::Dynamic));
            let parent = Path::new(rel).parent().unwrap_or(Path::new(""));
            if kept || !root.join(parent).is_dir() {
                continue;
            }
            let mut e = crate::tabs::parse(crate::tabs::TabKind::Statetab, path, Path::new("slate"))?.remove(0);
            e.kind = Some(kind);
            e.origin = "slate's own state".into();
            self.entries.push(e);
        }
        self.finish()
    }

    /// The entry that decides `rel` (relative path): the deepest declared
    /// path at or above it.
    pub fn covering(&self, rel: &str) -> Option<&Entry> {
        self.entries.iter().rev().find(|e| e.covers(rel))
    }

    /// The paths in `backup` state: what `slate home backup` saves.
    pub fn backup_paths(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter(|e| e.state == Mode::Backup)
            .map(|e| e.path.clone())
            .collect()
    }
}

/// Tree order of absolute paths (parents first, then their contents).
pub fn cmp_paths(a: &str, b: &str) -> Ordering {
    mpath::cmp_tree_order(
        a.trim_start_matches('/').as_bytes(),
        b.trim_start_matches('/').as_bytes(),
    )
}

fn entry_from_raw(r: RawEntry, at: &str) -> Result<Entry> {
    let bad = |m: String| Error(format!("{at}: {m}"));
    let path = r.path.into_inner();
    check_path(&path).map_err(bad)?;
    let state = r.state;
    let only = |cond: bool, key: &str, states: &str| -> Result<()> {
        if cond {
            Err(bad(format!(
                "`{key}` does not apply to a {} path (only to {states})",
                state.name()
            )))
        } else {
            Ok(())
        }
    };
    only(r.seed.is_some() && state != Mode::Ram, "seed", "ram")?;
    only(r.size.is_some() && state != Mode::Ram, "size", "ram")?;
    only(
        (r.generator.is_some() || r.command.is_some() || r.template.is_some()) && state != Mode::Dynamic,
        "generator",
        "dynamic",
    )?;
    only(!r.include.is_empty() && state != Mode::Server, "include", "server")?;
    only(r.name.is_some() && state != Mode::Server, "name", "server")?;
    if let Some(size) = &r.size {
        let ok = size.strip_suffix('%').map_or_else(
            || slate_size(size).is_some(),
            |n| n.parse::<u32>().is_ok_and(|n| (1..=100).contains(&n)),
        );
        if !ok {
            return Err(bad(format!("size {size:?} is not a size (like 64M or 10%)")));
        }
    }
    let file_mode = match &r.mode {
        None => None,
        Some(m) => match u32::from_str_radix(m.trim_start_matches("0o"), 8) {
            Ok(v) if v <= 0o7777 => Some(v),
            _ => return Err(bad(format!("mode {m:?} is not octal permission bits like \"0644\""))),
        },
    };
    let owner = r.owner.as_ref().map(parse_principal).transpose().map_err(bad)?;
    let group = r.group.as_ref().map(parse_principal).transpose().map_err(bad)?;
    let generator = if state == Mode::Dynamic {
        Some(match (r.generator.as_deref(), r.command, r.template) {
            (Some("machine-id"), None, None) => Generator::MachineId,
            (Some("hostname"), None, None) => Generator::Hostname,
            (Some("command") | None, Some(c), None) => {
                if c.is_empty() || c[0].is_empty() {
                    return Err(bad("`command` names no program".into()));
                }
                Generator::Command(c)
            }
            (Some("template") | None, None, Some(t)) => Generator::Template(t),
            (Some(g), None, None) if !matches!(g, "command" | "template") => {
                return Err(bad(format!(
                    "unknown generator {g:?} (machine-id, hostname, template or command)"
                )))
            }
            (None, None, None) => {
                return Err(bad(
                    "a dynamic path needs `generator` (machine-id or hostname), `template` or `command`".into(),
                ))
            }
            _ => {
                return Err(bad(
                    "give one of `generator`, `template` or `command` (with generator = \"template\" or \"command\" at most)".into(),
                ))
            }
        })
    } else {
        None
    };
    for g in &r.include {
        if g.is_empty() || g.starts_with('/') || g.split('/').any(|c| c == "..") {
            return Err(bad(format!("include {g:?} must be a glob relative to {path}")));
        }
        globset::Glob::new(g).map_err(|e| bad(format!("include {g:?}: {e}")))?;
    }
    if let Some(n) = &r.name {
        if !valid_blob_name(n) {
            return Err(bad(format!(
                "name {n:?} must be 1 to 128 of A-Z a-z 0-9 . _ - (not starting with .)"
            )));
        }
    }
    if state == Mode::Dynamic && r.kind == Some(EntryType::Dir) {
        return Err(bad("a dynamic path is a file".into()));
    }
    Ok(Entry {
        path,
        state,
        seed: r.seed.unwrap_or(Seed::All),
        size: r.size,
        kind: r.kind,
        file_mode,
        owner,
        group,
        generator,
        include: r.include,
        name: r.name,
        origin: at.to_string(),
    })
}

/// A size with an optional K/M/G suffix (powers of 1024).
pub fn slate_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 1u64 << 10),
        'M' | 'm' => (&s[..s.len() - 1], 1 << 20),
        'G' | 'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult).filter(|&n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Policy> {
        Policy::parse(t, Path::new("state.toml"))
    }

    #[test]
    fn parses_every_state() {
        let p = parse(
            r#"
version = 1
[[path]]
path = "/var/log"
state = "ram"
size = "64M"
[[path]]
path = "/etc/machine-id"
state = "dynamic"
generator = "machine-id"
mode = "0444"
[[path]]
path = "/etc/ssh"
state = "server"
include = ["ssh_host_*"]
[[path]]
path = "/var/lib/systemd/random-seed"
state = "local"
type = "file"
[[path]]
path = "/home"
state = "backup"
[[path]]
path = "/etc/motd"
state = "dynamic"
template = "Welcome to {hostname}\n"
owner = "root"
group = 0
"#,
        )
        .unwrap();
        let paths: Vec<_> = p.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/etc/machine-id",
                "/etc/motd",
                "/etc/ssh",
                "/home",
                "/var/lib/systemd/random-seed",
                "/var/log"
            ]
        );
        assert_eq!(p.entries[0].file_mode, Some(0o444));
        assert_eq!(
            p.entries[1].generator,
            Some(Generator::Template("Welcome to {hostname}\n".into()))
        );
        assert_eq!(p.entries[1].group, Some(Principal::Id(0)));
        assert_eq!(p.backup_paths(), ["/home"]);
        assert_eq!(p.covering("var/log/apt/x").unwrap().path, "/var/log");
        assert!(p.covering("var/lib").is_none());
        assert!(p.entries[2].blob_name().starts_with("etc-ssh-"));
    }

    #[test]
    fn errors_name_file_line_and_problem() {
        let cases = [
            (
                "[[path]]\npath = \"/a\"\nstate = \"cloud\"\n",
                "line 3",
                "unknown variant",
            ),
            (
                "[[path]]\npath = \"var/log\"\nstate = \"ram\"\n",
                "line 2",
                "not an absolute path",
            ),
            ("\n[[path]]\npath = \"/a/../b\"\nstate = \"ram\"\n", "line 3", ".."),
            (
                "[[path]]\npath = \"/a\"\nstate = \"local\"\nseed = \"all\"\n",
                "line 2",
                "`seed` does not apply",
            ),
            (
                "[[path]]\npath = \"/a\"\nstate = \"dynamic\"\n",
                "line 2",
                "needs `generator`",
            ),
            (
                "[[path]]\npath = \"/a\"\nstate = \"dynamic\"\ngenerator = \"uuid\"\n",
                "line 2",
                "unknown generator",
            ),
            (
                "[[path]]\npath = \"/a\"\nstate = \"ram\"\nmode = \"999\"\n",
                "line 2",
                "not octal",
            ),
            (
                "[[path]]\npath = \"/a\"\nstate = \"ram\"\nsize = \"lots\"\n",
                "line 2",
                "not a size",
            ),
            (
                "[[path]]\npath = \"/a\"\nstate = \"ram\"\ncolour = 1\n",
                "line 4",
                "unknown field",
            ),
            (
                "[[path]]\npath = \"/a\"\nstate = \"ram\"\n[[path]]\npath = \"/a\"\nstate = \"local\"\n",
                "line 5",
                "declared twice",
            ),
            (
                "[[path]]\npath = \"/a\"\nstate = \"server\"\n[[path]]\npath = \"/a/b\"\nstate = \"ram\"\n",
                "line 5",
                "kept as one unit",
            ),
            ("version = 2\n", "line 1", "version 2"),
            ("[[path]]\npath = \"/a\"\nstate = ram\n", "line 3", ""),
        ];
        for (text, line, what) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.starts_with("state.toml "), "{e}");
            assert!(e.contains(line), "{text:?}: {e}");
            assert!(e.contains(what), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn covers_is_by_component() {
        let p = parse("[[path]]\npath = \"/var/log\"\nstate = \"ram\"\n").unwrap();
        let e = &p.entries[0];
        assert!(e.covers("var/log") && e.covers("var/log/x"));
        assert!(!e.covers("var/logs") && !e.covers("var"));
    }
}
