//! `slate state apply / audit / upload / show`: the read-only root and its
//! declared state (docs/state.md). The work is in slate-state; this file
//! finds the policy, the server and the snapshot, and prints results.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Result};
use slate_agent::config::Config;
use slate_agent::serverstate::{PutOutcome, StateClient};
use slate_state::apply::{self, Options, ServerError, StateServer, Store};
use slate_state::audit::{self, AuditOptions};
use slate_state::facts::Facts;
use slate_state::Policy;

use crate::output::json;

/// The policy: `--policy`, else the fleet's copy the agent keeps, else the
/// root's /etc/slate/state.toml; rwtab/statetab imports read in `root`.
fn load_policy(root: &Path, explicit: Option<&Path>, cfg: Option<&Config>) -> Result<Policy> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => {
            let fleet = cfg.map(Config::fleet_policy_path).filter(|p| p.is_file());
            match fleet {
                Some(p) => p,
                None => {
                    let p = root.join("etc/slate/state.toml");
                    if !p.is_file() {
                        bail!(
                            "no state policy: {} does not exist and no --policy was given (see docs/state.md)",
                            p.display()
                        );
                    }
                    p
                }
            }
        }
    };
    let mut policy = Policy::load(&path)?;
    policy.import_tabs(root)?;
    Ok(policy)
}

fn load_config(p: Option<&Path>) -> Result<Option<Config>> {
    p.map(|p| Config::load(p).map_err(|e| anyhow!("{e}"))).transpose()
}

/// This machine's state on the server, through the agent's HTTP client
/// and machine token.
struct ServerState {
    http: slate_agent::http::Http,
    machine: String,
}

impl ServerState {
    fn new(cfg: &Config) -> Result<ServerState> {
        let http = cfg.http().map_err(|e| anyhow!("{e}"))?;
        let machine = slate_agent::identity::detect(cfg.machine_id.as_deref(), &cfg.labels).id;
        // Checks the machine id once, before anything is mounted.
        StateClient::new(&http, &machine).map_err(|e| anyhow!("{e}"))?;
        Ok(ServerState { http, machine })
    }

    fn client(&self) -> std::result::Result<StateClient<'_>, ServerError> {
        StateClient::new(&self.http, &self.machine).map_err(server_error)
    }
}

fn server_error(e: slate_agent::error::Error) -> ServerError {
    match e {
        slate_agent::error::Error::Offline(why) => ServerError::Offline(why),
        other => ServerError::Failed(other.to_string()),
    }
}

impl StateServer for ServerState {
    fn fetch(&self, name: &str) -> std::result::Result<Option<Vec<u8>>, ServerError> {
        self.client()?.get(name).map_err(server_error)
    }

    fn upload_new(&self, name: &str, data: &[u8]) -> std::result::Result<bool, ServerError> {
        match self.client()?.put(name, data, true).map_err(server_error)? {
            PutOutcome::AlreadyExists => Ok(false),
            PutOutcome::Created | PutOutcome::Replaced => Ok(true),
        }
    }
}

fn print_report(r: &apply::Report, as_json: bool) -> Result<()> {
    if as_json {
        return json(r);
    }
    for a in &r.actions {
        println!("{:<8} {:<40} {}", a.state, a.path, a.did);
    }
    for p in &r.uploaded {
        println!("uploaded {p} to the server");
    }
    for w in &r.warnings {
        eprintln!("slate: warning: {w}");
    }
    Ok(())
}

/// Run `slate state apply`.
pub fn apply(
    root: &Path,
    policy: Option<&Path>,
    (state_dir, state_dev): (Option<PathBuf>, Option<PathBuf>),
    (config, token_file): (Option<&Path>, Option<PathBuf>),
    warnings_file: Option<&Path>,
    as_json: bool,
) -> Result<ExitCode> {
    let mut cfg = load_config(config)?;
    if let (Some(c), Some(t)) = (&mut cfg, token_file) {
        c.token_file = Some(t);
    }
    let mut policy = load_policy(root, policy, cfg.as_ref())?;
    if state_dir.is_some() || state_dev.is_some() {
        policy.add_slate_own_state(root)?;
    }
    let server = cfg.as_ref().map(ServerState::new).transpose()?;
    let machine = server.as_ref().map(|s| s.machine.clone());
    let store = match (state_dir, state_dev) {
        (Some(d), _) => Store::Dir(d),
        (None, Some(d)) => Store::Device(d),
        (None, None) => Store::None,
    };
    let opts = Options {
        root: root.to_path_buf(),
        store,
        facts: Facts::detect(machine),
        server: server.as_ref().map(|s| s as &dyn StateServer),
    };
    let started = std::time::Instant::now();
    let report = apply::apply(&policy, &opts)?;
    if let (Some(file), false) = (warnings_file, report.warnings.is_empty()) {
        append_warnings(file, &report.warnings);
    }
    print_report(&report, as_json)?;
    if !as_json {
        eprintln!(
            "{} set up from {} in {:.2} s",
            if report.changed() {
                "state"
            } else {
                "nothing to do: state already"
            },
            policy.source.display(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Append `warnings` to `file`, one line each (newlines inside one become
/// spaces). Best effort: the warnings are on stderr whatever happens, and a
/// boot must not fail because /run is full.
fn append_warnings(file: &Path, warnings: &[String]) {
    use std::io::Write;
    let text: String = warnings
        .iter()
        .map(|w| format!("{}\n", w.replace(['\n', '\r'], " ")))
        .collect();
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .and_then(|mut f| f.write_all(text.as_bytes()));
    if let Err(e) = written {
        eprintln!("slate: warning: cannot write the warnings to {}: {e}", file.display());
    }
}

/// Run `slate state upload`.
pub fn upload(root: &Path, policy: Option<&Path>, config: &Path, as_json: bool) -> Result<ExitCode> {
    let cfg = Config::load(config).map_err(|e| anyhow!("{e}"))?;
    let policy = load_policy(root, policy, Some(&cfg))?;
    let server = ServerState::new(&cfg)?;
    let report = apply::upload(&policy, root, &server)?;
    print_report(&report, as_json)?;
    if !as_json && report.uploaded.is_empty() {
        eprintln!("nothing new to upload");
    }
    Ok(ExitCode::SUCCESS)
}

/// Run `slate state audit`.
pub fn audit(
    root: &Path,
    policy: Option<&Path>,
    repo: Option<&Path>,
    config: Option<&Path>,
    snapshot: &str,
    quick: bool,
    as_json: bool,
) -> Result<ExitCode> {
    let cfg = load_config(config)?;
    let policy = load_policy(root, policy, cfg.as_ref())?;
    let (id, manifest) = match (repo, &cfg) {
        (Some(r), _) => {
            let loaded = super::open(r)?.load(snapshot)?;
            (loaded.id.to_hex(), loaded.manifest)
        }
        (None, Some(c)) => slate_agent::update::held_manifest(c, snapshot).map_err(|e| anyhow!("{e}"))?,
        (None, None) => {
            bail!("say where snapshot {snapshot} is: --repo REPO, or --config AGENT.toml for the agent's copies")
        }
    };
    let report = audit::audit(root, &manifest, &policy, AuditOptions { quick })?;
    if as_json {
        json(&serde_json::json!({
            "snapshot": id,
            "root": root,
            "checked": report.checked,
            "hashed_bytes": report.hashed_bytes,
            "drift": report.drift,
        }))?;
    } else {
        for (dir, items) in report.by_directory() {
            println!("{dir} ({})", items.len());
            for d in items {
                println!("  {:<8} {}  ({})", d.change.word(), d.path, d.detail);
            }
        }
        if report.drift.is_empty() {
            eprintln!(
                "no drift: {} entries of {} match snapshot {} or are declared",
                report.checked,
                root.display(),
                &id[..12]
            );
        } else {
            eprintln!(
                "{} undeclared changes against snapshot {}: declare them in {} or put them in the image",
                report.drift.len(),
                &id[..12],
                policy.source.display()
            );
        }
    }
    Ok(if report.drift.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Run `slate state show`.
pub fn show(
    root: &Path,
    policy: Option<&Path>,
    config: Option<&Path>,
    (backup, server): (bool, bool),
    as_json: bool,
) -> Result<ExitCode> {
    let cfg = load_config(config)?;
    let policy = load_policy(root, policy, cfg.as_ref())?;
    if server {
        let paths: Vec<&str> = policy
            .entries
            .iter()
            .filter(|e| e.state == slate_state::Mode::Server)
            .map(|e| e.path.as_str())
            .collect();
        if as_json {
            json(&paths)?;
        } else {
            for p in &paths {
                println!("{p}");
            }
        }
        return Ok(if paths.is_empty() {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        });
    }
    if backup {
        if as_json {
            json(&policy.backup_paths())?;
        } else {
            for p in policy.backup_paths() {
                println!("{p}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    if as_json {
        return json(&policy).map(|_| ExitCode::SUCCESS);
    }
    for e in &policy.entries {
        println!("{:<8} {:<40} {}", e.state.name(), e.path, e.origin);
    }
    Ok(ExitCode::SUCCESS)
}
