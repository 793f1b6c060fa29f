//! The agent's commands: update (once, or `--watch`), status, boot-ok,
//! rollback, pull.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use slate_agent::config::{Config, Mode};
use slate_agent::update;
use slate_core::SnapshotId;
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

pub fn update(config: &Path, as_json: bool, dry_run: bool, retry: bool, wait_lock: bool) -> Result<ExitCode> {
    let cfg = load(config)?;
    if retry && !dry_run {
        update::forget_failures(&cfg).context("update failed")?;
    }
    one_pass(&cfg, as_json, dry_run, wait_lock).context("update failed")?;
    Ok(ExitCode::SUCCESS)
}

/// Run one pass and print its outcome (a line on stderr, or JSON lines).
fn one_pass(cfg: &Config, as_json: bool, dry_run: bool, wait_lock: bool) -> Result<update::Outcome> {
    let started = std::time::Instant::now();
    let progress: Box<dyn Progress> = if as_json {
        Box::new(JsonProgress::new())
    } else {
        Box::new(Bar::new(!std::io::stderr().is_terminal()))
    };
    let outcome = update::run_after_others(cfg, dry_run, wait_lock, progress.as_ref())?;
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
    Ok(outcome)
}

/// First wait after a failure in `slate update --watch`; doubled on each
/// failure in a row up to [`WATCH_BACKOFF_MAX`].
const WATCH_BACKOFF: Duration = Duration::from_secs(5);
/// Longest wait after failures in a row.
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// `slate update --watch`: a pass, then long-polls of the fleet server; a
/// pass at once whenever the assignment names another snapshot. Runs until
/// killed (a pass cut short resumes on the next). Failures never end it:
/// it waits 5 s, doubling to 5 min, so an unreachable or broken server is
/// not polled in a loop.
pub fn watch(config: &Path, as_json: bool, retry: bool) -> Result<ExitCode> {
    let mut cfg = load(config)?;
    if retry {
        update::forget_failures(&cfg).context("update failed")?;
    }
    let mut backoff = Backoff::default();
    // The snapshot the last pass acted on (or was told of): the server
    // waits while it still assigns this one.
    let mut known: Option<SnapshotId> = None;
    let mut need_pass = true;
    loop {
        if need_pass {
            // Queue behind the hourly timer's pass rather than fail.
            match one_pass(&cfg, as_json, false, true) {
                Ok(o) => {
                    known = o.target.as_deref().and_then(SnapshotId::from_hex).or(known);
                    backoff.reset();
                }
                Err(e) => {
                    // The pass recorded and reported it. It is not retried
                    // in a loop: the next change or the hourly timer retries.
                    eprintln!("slate: update failed: {e:#}");
                    backoff.sleep();
                }
            }
            need_pass = false;
        }
        // Read each time, as a pass does: AGENT.toml or the token may have
        // been replaced, and a pass may have adopted a new trust document.
        let ready = load(config).map_err(|e| format!("{e:#}")).and_then(|c| {
            let http = c.http().map_err(|e| e.to_string())?;
            let trusted = slate_agent::trust::load(&c).map_err(|e| e.to_string())?;
            Ok((c, http, trusted))
        });
        let (http, trusted) = match ready {
            Ok((c, http, trusted)) => {
                cfg = c;
                (http, trusted)
            }
            Err(e) => {
                eprintln!("slate: watch: {e}");
                backoff.sleep();
                continue;
            }
        };
        let asked = Instant::now();
        match slate_agent::watch::wait_for_assignment(&cfg, &http, &trusted, known.as_ref(), WATCH_WAIT) {
            Ok(Some(v)) => {
                let id = v.assignment.snapshot;
                eprintln!(
                    "the fleet assigns {} (channel {}): updating",
                    &id.to_hex()[..12],
                    v.assignment.channel
                );
                known = Some(id);
                need_pass = true;
                backoff.reset();
            }
            Ok(None) => {
                backoff.reset();
                // A server that does not wait (an older one, or one with
                // every waiting place taken) answers at once: ask again
                // only when the wait would have ended.
                if let Some(rest) = WATCH_WAIT.checked_sub(asked.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
            Err(e @ slate_agent::Error::Untrusted(_)) => {
                // A pass fetches a rotated trust document and records and
                // reports a refusal; after a pause, never in a loop.
                eprintln!("slate: watch: {e}");
                backoff.sleep();
                need_pass = true;
            }
            Err(e) => {
                eprintln!("slate: watch: {e}");
                backoff.sleep();
            }
        }
    }
}

/// How long one long-poll asks the server to wait (the server's cap).
const WATCH_WAIT: Duration = slate_agent::watch::MAX_WAIT;

/// The pause after failures in a row.
#[derive(Default)]
struct Backoff {
    next: Option<Duration>,
}

impl Backoff {
    fn sleep(&mut self) {
        let d = self.next.unwrap_or(WATCH_BACKOFF);
        std::thread::sleep(d);
        self.next = Some((d * 2).min(WATCH_BACKOFF_MAX));
    }
    fn reset(&mut self) {
        self.next = None;
    }
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
    match &cfg.mode {
        Mode::Ab(_) => print_slots(&s),
        Mode::Netboot => print_netboot(&s),
    }
    print_last_pass_and_boot(&s);
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

/// The first 12 hex digits of a snapshot id in `v`, or `none`.
fn short(v: &serde_json::Value) -> &str {
    v.as_str().map_or("none", |x| &x[..12.min(x.len())])
}

/// A network-booted machine's status lines: how it booted, what runs and
/// what is assigned, and its cache; a file that could not be read is one
/// line saying so.
fn print_netboot(s: &serde_json::Value) {
    match s["netboot_error"].as_str() {
        Some(e) => println!("mode: netboot, but {e}"),
        None => {
            let n = &s["netboot"];
            let from = match n["booted_from"].as_str() {
                Some("disk") => "its cache partition",
                _ => "the network",
            };
            let offline = if n["offline"].as_bool().unwrap_or(false) {
                ", no server answered"
            } else {
                ""
            };
            println!(
                "mode: {} (booted from {from}{offline}), cache on {}",
                s["mode"].as_str().unwrap_or("?"),
                s["device"].as_str().unwrap_or("RAM")
            );
            println!("booted: {}", short(&s["booted"]));
        }
    }
    if !s["assigned"].is_null() {
        let note = if s["assigned"] == s["booted"] {
            "running it"
        } else {
            "the next network boot runs it"
        };
        println!("assigned: {} ({note})", short(&s["assigned"]));
    }
    match (s["cache"].as_object(), s["cache_error"].as_str()) {
        (Some(c), _) => {
            let mut how = vec![c["state"].as_str().unwrap_or("?").to_string()];
            if c["filling"].as_bool().unwrap_or(false) {
                how.push("filling".into());
            }
            if c["complete"].as_bool().unwrap_or(false) {
                how.push("complete: boots without a server".into());
            }
            println!(
                "cache: {} of {} cached ({:.1}%), {}",
                human(c["cached_bytes"].as_u64().unwrap_or(0)),
                human(c["total_bytes"].as_u64().unwrap_or(0)),
                c["percent"].as_f64().unwrap_or(0.0),
                how.join(", ")
            );
        }
        (None, Some(e)) => println!("cache: {e}"),
        (None, None) => println!("cache: unknown"),
    }
}

/// An A/B machine's slot lines.
fn print_slots(s: &serde_json::Value) {
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
}

/// The last boot and update pass, whatever the mode.
fn print_last_pass_and_boot(s: &serde_json::Value) {
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
    let repo = super::open_or_init(repo_path)?;
    // An object store has no local tmp/: the scratch files (ranges fetched
    // for manifests) go to a local temporary directory instead.
    let scratch = match super::object_url(repo_path) {
        Some(_) => Some(
            tempfile::Builder::new()
                .prefix("slate-pull-")
                .tempdir()
                .context("cannot create a scratch directory")?,
        ),
        None => None,
    };
    let work = match &scratch {
        Some(d) => d.path().to_path_buf(),
        None => slate_agent::pull::work_dir(repo_path),
    };
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
    let repo = super::open_or_init(repo_path)?;
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
