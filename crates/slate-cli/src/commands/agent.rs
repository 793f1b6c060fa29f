//! The agent's commands: update, status, boot-ok, rollback, pull.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use anyhow::{Context, Result};
use slate_agent::config::Config;
use slate_agent::update;
use slate_repo::progress::Progress;

use crate::output::{human, json, Bar};

/// Progress as JSON lines on stdout, at most a few per second.
struct JsonProgress {
    phase: Mutex<(String, u64)>,
    done: AtomicU64,
    last: Mutex<std::time::Instant>,
}

impl JsonProgress {
    fn new() -> Self {
        JsonProgress {
            phase: Mutex::new((String::new(), 0)),
            done: AtomicU64::new(0),
            last: Mutex::new(std::time::Instant::now()),
        }
    }
    fn emit(&self) {
        let (phase, total) = self.phase.lock().unwrap().clone();
        println!(
            "{}",
            serde_json::json!({"event": "progress", "phase": phase, "done": self.done.load(Ordering::Relaxed), "total": total})
        );
    }
}

impl Progress for JsonProgress {
    fn start(&self, phase: &str, total: u64) {
        *self.phase.lock().unwrap() = (phase.to_string(), total);
        self.done.store(0, Ordering::Relaxed);
        self.emit();
    }
    fn advance(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
        let mut last = self.last.lock().unwrap();
        if last.elapsed().as_millis() >= 250 {
            *last = std::time::Instant::now();
            drop(last);
            self.emit();
        }
    }
    fn finish(&self) {
        self.emit();
    }
}

fn load(config: &Path) -> Result<Config> {
    Ok(Config::load(config)?)
}

pub fn update(config: &Path, as_json: bool, dry_run: bool, retry: bool) -> Result<ExitCode> {
    let cfg = load(config)?;
    if retry && !dry_run {
        update::forget_failures(&cfg).context("update failed")?;
    }
    let started = std::time::Instant::now();
    let progress: Box<dyn Progress> = if as_json {
        Box::new(JsonProgress::new())
    } else {
        Box::new(Bar::new(!std::io::stderr().is_terminal()))
    };
    let outcome = update::run(&cfg, dry_run, progress.as_ref()).context("update failed")?;
    if as_json {
        let mut v = serde_json::to_value(&outcome)?;
        v["event"] = "result".into();
        v["seconds"] = started.elapsed().as_secs_f64().into();
        json(&v)?;
    } else {
        let mut line = outcome.message.clone();
        if outcome.result == "ok" {
            line.push_str(&format!(
                " ({} fetched in {} requests, {} copied locally, {:.1} s)",
                human(outcome.bytes_fetched),
                outcome.requests,
                human(outcome.bytes_local),
                started.elapsed().as_secs_f64()
            ));
        }
        eprintln!("{line}");
        for sh in &outcome.shadowed {
            eprintln!(
                "slate: warning: {} ({} in the new snapshot) is hidden by {} state kept at {}",
                sh.path,
                sh.change,
                sh.state.name(),
                sh.declared
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn status(config: &Path, as_json: bool) -> Result<ExitCode> {
    let cfg = load(config)?;
    let mut s = update::status(&cfg)?;
    let home_backup = super::home::last_backup(&cfg.state_dir);
    if let Some(h) = &home_backup {
        s["home_backup"] = h.clone();
    }
    if as_json {
        json(&s)?;
        return Ok(ExitCode::SUCCESS);
    }
    for n in ["a", "b"] {
        let slot = &s["slots"][n];
        let mut flags = Vec::new();
        for f in ["active", "pending", "known_good", "dirty"] {
            if slot[f].as_bool().unwrap_or(false) {
                flags.push(f.replace('_', " "));
            }
        }
        println!(
            "slot {n}: {} {} [{}] at {}",
            slot["snapshot"].as_str().map(|x| &x[..12]).unwrap_or("(empty)"),
            slot["os"].as_str().unwrap_or(""),
            flags.join(", "),
            slot["location"].as_str().unwrap_or("")
        );
    }
    if let Some(b) = s["boot_result"].as_str() {
        println!("last boot: {b}");
    }
    for w in s["boot_warnings"].as_array().into_iter().flatten() {
        println!("boot warning: {}", w.as_str().unwrap_or_default());
    }
    if let Some(f) = s["failed"].as_array().filter(|f| !f.is_empty()) {
        let ids: Vec<&str> = f
            .iter()
            .filter_map(|v| v.as_str())
            .map(|v| &v[..12.min(v.len())])
            .collect();
        println!(
            "failed to boot here (not written again without --retry): {}",
            ids.join(", ")
        );
    }
    if s["last_pass"].is_object() {
        let p = &s["last_pass"];
        println!(
            "last update: {} ({}), {} fetched: {}",
            p["result"].as_str().unwrap_or(""),
            crate::output::time(p["at"].as_i64().unwrap_or(0) * 1_000_000_000),
            human(p["bytes_fetched"].as_u64().unwrap_or(0)),
            p["message"].as_str().unwrap_or("")
        );
    }
    if let Some(h) = home_backup {
        println!(
            "last home backup: {} ({}), {} files, {}",
            crate::output::time(h["time"].as_i64().unwrap_or(0) * 1_000_000_000),
            h["user"].as_str().unwrap_or(""),
            h["files"].as_u64().unwrap_or(0),
            human(h["bytes"].as_u64().unwrap_or(0))
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn boot_ok(config: &Path) -> Result<ExitCode> {
    let cfg = load(config)?;
    eprintln!("{}", update::boot_ok(&cfg)?);
    Ok(ExitCode::SUCCESS)
}

pub fn rollback(config: &Path) -> Result<ExitCode> {
    let cfg = load(config)?;
    eprintln!("{}", update::rollback(&cfg)?);
    Ok(ExitCode::SUCCESS)
}

pub fn pull(
    from: &str,
    channel: &str,
    repo_path: &Path,
    trust: &[PathBuf],
    fleet_trust: &[PathBuf],
) -> Result<ExitCode> {
    let read = |paths: &[PathBuf]| {
        paths
            .iter()
            .map(|p| super::read_public_key(p))
            .collect::<Result<Vec<_>>>()
    };
    let (release, fleet) = (read(trust)?, read(fleet_trust)?);
    let keys = slate_agent::pull::PullTrust {
        release: &release,
        fleet: &fleet,
    };
    let repo = if repo_path.join("config").exists() {
        super::open(repo_path)?
    } else {
        slate_repo::Repo::init(repo_path, slate_repo::Config::default())?
    };
    let work = slate_agent::pull::work_dir(repo_path);
    let stats = slate_agent::pull::pull(from, channel, &repo, &keys, &work)
        .with_context(|| format!("cannot pull {channel} from {from}"))?;
    eprintln!(
        "pulled {channel}: {} snapshots, {} packs, {} downloaded{}",
        stats.snapshots,
        stats.packs,
        human(stats.bytes),
        if fleet.is_empty() {
            "; no --fleet-trust: no signed head kept, so agents cannot follow this channel from this mirror"
        } else {
            "; signed head kept"
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// Run `slate pull --from-image`.
pub fn pull_image(image: &Path, channel: Option<&str>, repo_path: &Path, trust: &[PathBuf]) -> Result<ExitCode> {
    let keys = trust
        .iter()
        .map(|p| super::read_public_key(p))
        .collect::<Result<Vec<_>>>()?;
    let repo = if repo_path.join("config").exists() {
        super::open(repo_path)?
    } else {
        slate_repo::Repo::init(repo_path, slate_repo::Config::default())?
    };
    let work = tempfile::Builder::new()
        .prefix("slate-pull-image-")
        .tempdir()
        .context("cannot create a scratch directory")?;
    let r = slate_agent::live::import_image(image, &repo, &keys, channel, work.path())
        .with_context(|| format!("cannot pull from {}", image.display()))?;
    eprintln!(
        "{} snapshot {} from {}: {} new chunks ({} bytes){}",
        if r.already_held { "already held" } else { "stored" },
        r.snapshot,
        image.display(),
        r.new_chunks,
        r.new_bytes,
        match (&r.channel, r.head_moved) {
            (Some(c), true) => format!("; it is the head of channel {c}"),
            (Some(c), false) => format!("; channel {c} already holds it or a newer head, unchanged"),
            (None, _) => String::new(),
        }
    );
    Ok(ExitCode::SUCCESS)
}
