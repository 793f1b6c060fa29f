//! `slate home`: encrypted, deduplicated backups of users' home
//! directories, kept on `slate serve` (with the machine's token) or in a
//! local directory.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use slate_agent::config::Config;
use slate_home::backend::{Backend, Http, LocalDir};
use slate_home::backup::{backup, check_paths, BackupOptions};
use slate_home::crypto::Keys;
use slate_home::forget::{check, forget, format_time, KeepPolicy};
use slate_home::repo::{init, HomeRepo};
use slate_home::restore::restore;

use crate::cli::{HomeArgs, HomeCommand};
use crate::output::{human, json, Bar};

/// Where the state policy lives once `slate state` exists.
const STATE_POLICY: &str = "/etc/slate/state.toml";
/// The agent's default state directory.
const DEFAULT_STATE_DIR: &str = "/var/lib/slate";

/// Run a `slate home` command.
pub fn run(cmd: HomeCommand) -> Result<ExitCode> {
    match cmd {
        HomeCommand::Keygen { file } => {
            slate_home::crypto::write_key_file(&file)?;
            eprintln!(
                "wrote {}; keep a copy somewhere safe: without it the backups cannot be read",
                file.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        HomeCommand::Init { home } => cmd_init(&home),
        HomeCommand::Backup {
            home,
            quiet_offline,
            compression_level,
            pack_size,
            paths,
        } => cmd_backup(&home, quiet_offline, compression_level, pack_size, &paths),
        HomeCommand::Snapshots { home } => cmd_snapshots(&home),
        HomeCommand::Restore {
            home,
            target,
            snapshot,
            allow_privileged,
            paths,
        } => cmd_restore(&home, target.as_deref(), &snapshot, &paths, allow_privileged),
        HomeCommand::Forget {
            home,
            keep_last,
            keep_hourly,
            keep_daily,
            keep_weekly,
            keep_monthly,
            keep_yearly,
            prune,
        } => {
            let policy = KeepPolicy {
                last: keep_last,
                hourly: keep_hourly,
                daily: keep_daily,
                weekly: keep_weekly,
                monthly: keep_monthly,
                yearly: keep_yearly,
            };
            cmd_forget(&home, &policy, prune)
        }
        HomeCommand::Check { home } => cmd_check(&home),
    }
}

/// The directories a backup without PATH arguments covers: the state
/// policy's `backup` entries. This is the one place that list is read.
pub fn policy_backup_paths() -> Result<Vec<PathBuf>> {
    let policy = Path::new(STATE_POLICY);
    if !policy.exists() {
        bail!("no paths given (the state policy's backup list arrives with `slate state`: {STATE_POLICY} is absent)");
    }
    let paths = slate_state::policy::Policy::load(policy)?.backup_paths();
    if paths.is_empty() {
        bail!("no paths given and the state policy {STATE_POLICY} declares no `backup` paths; give the directories to back up");
    }
    Ok(paths.into_iter().map(PathBuf::from).collect())
}

/// Everything a command needs to reach the repository.
struct RepoAccess {
    keys: Keys,
    backend: Box<dyn Backend>,
    state_dir: PathBuf,
    cache_dir: PathBuf,
    user: String,
}

fn user_name(home: &HomeArgs) -> Result<String> {
    if let Some(u) = &home.user {
        return Ok(u.clone());
    }
    for var in ["SUDO_USER", "USER"] {
        if let Ok(u) = std::env::var(var) {
            if !u.is_empty() {
                return Ok(u);
            }
        }
    }
    // No environment to go by (a systemd unit, cron, `env -i`): the
    // process's own user, from the password database.
    let uid = slate_home::user::current_uid();
    match slate_home::user::name_of_uid(uid, Path::new("/etc/passwd")) {
        Some(u) => Ok(u),
        None => bail!(
            "cannot tell whose backup this is: uid {uid} is not in /etc/passwd and USER is unset; give --user NAME"
        ),
    }
}

fn passphrase(user: &str, confirm: bool) -> Result<String> {
    if let Ok(p) = std::env::var("SLATE_PASSPHRASE") {
        if p.is_empty() {
            bail!("SLATE_PASSPHRASE is empty; set it to the passphrase or use --key-file");
        }
        return Ok(p);
    }
    let prompt = format!("passphrase for {user}'s home backup: ");
    let p = rpassword::prompt_password(&prompt)
        .context("cannot read a passphrase from the terminal; set SLATE_PASSPHRASE or give --key-file")?;
    if p.is_empty() {
        bail!("an empty passphrase is not allowed");
    }
    if confirm {
        let again = rpassword::prompt_password("the same passphrase again: ")
            .context("cannot read a passphrase from the terminal")?;
        if again != p {
            bail!("the two passphrases differ; nothing was created");
        }
    }
    Ok(p)
}

fn context(home: &HomeArgs, confirm: bool) -> Result<RepoAccess> {
    let user = user_name(home)?;
    let config = match (&home.config, &home.repo_dir) {
        (Some(c), _) => Some(Config::load(c)?),
        (None, None) => Some(Config::load(&slate_agent::config::default_path()).context(
            "no --repo-dir given and the agent configuration cannot be read (give --config AGENT.toml or --repo-dir DIR)",
        )?),
        (None, Some(_)) => None,
    };
    let keys = match &home.key_file {
        Some(f) => Keys::from_key_file(f)?,
        None => Keys::from_passphrase(&passphrase(&user, confirm)?, &user)?,
    };
    let backend: Box<dyn Backend> = match (&home.repo_dir, &config) {
        (Some(dir), _) => Box::new(LocalDir::new(dir, keys.repo_id())),
        (None, Some(cfg)) => {
            // Home repositories live on the servers that hold the machine's
            // token: the token goes nowhere else (docs/agent.md, "Servers").
            // Each keeps its AGENT.toml settings: CA file, pins. Mirrors
            // serve snapshots only.
            let token = cfg.token()?;
            let servers: Vec<_> = cfg
                .server_settings
                .iter()
                .filter(|s| !s.mirror && (token.is_none() || s.token))
                .cloned()
                .collect();
            if servers.is_empty() {
                anyhow::bail!(
                    "{}: no server may receive the machine token, so none can hold home repositories \
                     (plain http servers need token = true and token_over_http = true; see docs/agent.md, \"Servers\")",
                    cfg.path.display()
                );
            }
            Box::new(Http::new(&servers, token, cfg.timeout_secs, keys.repo_id())?)
        }
        (None, None) => unreachable!("a configuration is loaded when there is no --repo-dir"),
    };
    let state_dir = home
        .state_dir
        .clone()
        .or_else(|| config.as_ref().map(|c| c.state_dir.clone()))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    let cache_dir = home
        .cache_dir
        .clone()
        .unwrap_or_else(|| state_dir.join("home").join(&keys.repo_id()[..16]));
    Ok(RepoAccess {
        keys,
        backend,
        state_dir,
        cache_dir,
        user,
    })
}

fn open(home: &HomeArgs) -> Result<HomeRepo> {
    let cx = context(home, false)?;
    Ok(HomeRepo::open(cx.backend, cx.keys, &cx.cache_dir)?)
}

fn cmd_init(home: &HomeArgs) -> Result<ExitCode> {
    let cx = context(home, true)?;
    init(cx.backend.as_ref(), &cx.keys)?;
    eprintln!(
        "created the backup repository for {} on {}",
        cx.user,
        cx.backend.location()
    );
    Ok(ExitCode::SUCCESS)
}

fn cmd_backup(
    home: &HomeArgs,
    quiet_offline: bool,
    level: i32,
    pack_size: usize,
    paths: &[PathBuf],
) -> Result<ExitCode> {
    let paths = if paths.is_empty() {
        policy_backup_paths()?
    } else {
        paths.to_vec()
    };
    let paths = check_paths(&paths)?;
    if !(1..=22).contains(&level) {
        bail!("--compression-level must be between 1 and 22");
    }
    let cx = context(home, false)?;
    let (state_dir, user) = (cx.state_dir.clone(), cx.user.clone());
    let started = std::time::Instant::now();
    let result = HomeRepo::open(cx.backend, cx.keys, &cx.cache_dir).and_then(|mut repo| {
        let opts = BackupOptions {
            paths: paths.clone(),
            host: slate_home::repo::host_name(),
            user: user.clone(),
            compression_level: level,
            pack_target: pack_size.clamp(1 << 16, 120 << 20),
        };
        let bar = Bar::new(home.out.json);
        backup(&mut repo, &opts, &bar).map(|s| (s, repo.location()))
    });
    let (stats, location) = match result {
        Ok(x) => x,
        Err(e) if quiet_offline && e.is_offline() => {
            eprintln!("slate home backup: offline, skipped ({e})");
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(anyhow::Error::new(e).context("backup failed")),
    };
    let seconds = started.elapsed().as_secs_f64();
    let record = serde_json::json!({
        "time": stats.time_ns / 1_000_000_000,
        "snapshot": stats.snapshot,
        "user": user,
        "paths": paths,
        "location": location,
        "files": stats.files,
        "bytes": stats.bytes,
        "added_bytes": stats.added_bytes,
        "seconds": seconds,
    });
    slate_home::repo::write_atomic(
        &state_dir.join("home.json"),
        serde_json::to_string_pretty(&record)?.as_bytes(),
    )
    .context("the backup is stored, but its record for `slate status` could not be written")?;
    if home.out.json {
        let mut v = serde_json::to_value(&stats)?;
        v["seconds"] = seconds.into();
        json(&v)?;
    } else {
        println!("{}", stats.snapshot);
        eprintln!(
            "backed up {} files ({}) in {:.1} s: {} read, {} new chunks, {} added to {location}",
            stats.files,
            human(stats.bytes),
            seconds,
            stats.files_read,
            stats.new_chunks,
            human(stats.added_bytes)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_snapshots(home: &HomeArgs) -> Result<ExitCode> {
    let repo = open(home)?;
    let snaps = repo.snapshots()?;
    if home.out.json {
        let v: Vec<_> = snaps
            .iter()
            .map(|(id, s)| {
                let mut v = serde_json::to_value(s).unwrap_or_default();
                v["id"] = id.clone().into();
                v
            })
            .collect();
        json(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    if snaps.is_empty() {
        eprintln!("no snapshots yet in {}", repo.location());
    }
    for (id, s) in &snaps {
        println!(
            "{}  {}  {}@{}  {} files, {}  {}",
            &id[..12],
            format_time(s.time_ns.div_euclid(1_000_000_000)),
            s.user,
            s.host,
            s.files,
            human(s.bytes),
            s.roots.iter().map(|r| r.path.as_str()).collect::<Vec<_>>().join(" ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_restore(
    home: &HomeArgs,
    target: Option<&Path>,
    snapshot: &str,
    paths: &[PathBuf],
    allow_privileged: bool,
) -> Result<ExitCode> {
    if let Some(p) = paths.iter().find(|p| !p.is_absolute()) {
        bail!(
            "{} is not absolute: name paths as they were backed up, e.g. /home/alice/Documents",
            p.display()
        );
    }
    let repo = open(home)?;
    let started = std::time::Instant::now();
    let bar = Bar::new(home.out.json || !std::io::stderr().is_terminal());
    let stats = restore(&repo, snapshot, target, paths, allow_privileged, &bar).context("restore failed")?;
    if stats.left_out > 0 {
        // Said even with --json (on stderr): a restore that silently
        // differs from the backup would be mistaken for a complete one.
        eprintln!(
            "left out {} entr{} that would grant privileges (setuid/setgid bits, file capabilities, device \
             nodes): {}{}; restore with --allow-privileged to recreate them",
            stats.left_out,
            if stats.left_out == 1 { "y" } else { "ies" },
            stats.left_out_examples.join(", "),
            if stats.left_out > stats.left_out_examples.len() as u64 {
                ", ..."
            } else {
                ""
            }
        );
    }
    if home.out.json {
        let mut v = serde_json::to_value(&stats)?;
        v["seconds"] = started.elapsed().as_secs_f64().into();
        json(&v)?;
    } else {
        for (from, to) in &stats.restored {
            eprintln!("restored {from} to {to}");
        }
        eprintln!(
            "{} entries, {} files, {} in {:.1} s",
            stats.entries,
            stats.files,
            human(stats.bytes),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_forget(home: &HomeArgs, policy: &KeepPolicy, prune: bool) -> Result<ExitCode> {
    let mut repo = open(home)?;
    let stats = forget(&mut repo, policy, prune)?;
    if home.out.json {
        json(&stats)?;
    } else {
        eprintln!(
            "kept {} snapshots, forgot {}{}",
            stats.kept.len(),
            stats.forgotten.len(),
            if prune {
                format!(
                    "; pruned {} packs and rewrote {}, freeing {}",
                    stats.packs_deleted,
                    stats.packs_rewritten,
                    human(stats.bytes_freed)
                )
            } else {
                String::new()
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_check(home: &HomeArgs) -> Result<ExitCode> {
    let repo = open(home)?;
    let stats = check(&repo)?;
    if home.out.json {
        json(&stats)?;
    } else {
        for p in &stats.problems {
            println!("{p}");
        }
        println!(
            "{} snapshots, {} packs, {} chunks checked: {}",
            stats.snapshots,
            stats.packs,
            stats.chunks,
            if stats.problems.is_empty() {
                "no problems"
            } else {
                "PROBLEMS FOUND"
            }
        );
    }
    if stats.problems.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        bail!(
            "the backup repository on {} has {} problems (listed above)",
            repo.location(),
            stats.problems.len()
        )
    }
}

/// The last backup's record for `slate status`, when there is one.
pub fn last_backup(state_dir: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(state_dir.join("home.json")).ok()?;
    serde_json::from_str(&text).ok()
}
