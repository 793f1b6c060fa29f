//! `slate mount`, `slate cache`, `slate profile`: the on-demand filesystem
//! (crates/slate-mount; docs/mount.md).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::AtomicBool;

use anyhow::{anyhow, bail, Context, Result};
use slate_agent::config::parse_size;
use slate_mount::status::Status;
use slate_mount::{Options, SourceSpec};

use crate::cli::{CacheCommand, MountSourceArgs, ProfileCommand};

/// Set in the environment of a `--background` daemon: print `ready` on
/// stdout once mounted.
pub(crate) const NOTIFY_ENV: &str = "SLATE_MOUNT_NOTIFY";

/// `slate mount`'s arguments.
pub struct MountArgs {
    pub source: MountSourceArgs,
    pub mountpoint: PathBuf,
    pub fill: bool,
    pub fill_rate: Option<String>,
    pub record: Option<PathBuf>,
    pub status: Option<PathBuf>,
    pub background: bool,
    pub no_prefetch: bool,
    pub threads: usize,
    pub poll: u64,
    pub offline_boot: Option<PathBuf>,
    pub boot_cmdline: Option<String>,
    pub as_root: bool,
}

fn size(s: &str, what: &str) -> Result<u64> {
    parse_size(s).ok_or_else(|| anyhow!("{what} {s:?} is not a size (like 512M or 8G)"))
}

fn options(src: &MountSourceArgs) -> Result<Options> {
    let source = if let Some(r) = &src.repo {
        SourceSpec::Repo(r.clone())
    } else if let Some(c) = &src.config {
        SourceSpec::Config(c.clone())
    } else if !src.server.is_empty() {
        SourceSpec::Servers(src.server.clone())
    } else {
        bail!("give --repo DIR, --server URL or --config AGENT.toml");
    };
    Ok(Options {
        spec: src.spec.clone(),
        source,
        trust: src.trust.clone(),
        fleet_trust: src.fleet_trust.clone(),
        cache: src.cache.clone(),
        cache_size: size(&src.cache_size, "--cache-size")?,
        fill: false,
        fill_rate: None,
        offline: src.offline,
        record: None,
        status: None,
        timeout_secs: src.timeout.max(1),
        threads: 4,
        prefetch: true,
        poll_secs: 10,
        offline_boot: None,
        boot_cmdline: String::new(),
        as_root: false,
    })
}

/// glibc's malloc settings for the daemon. Frames are allocated and freed
/// by different threads at about 1 MiB each; with glibc's defaults
/// (an arena per thread, an mmap threshold that grows after frees) they
/// stay in fragmented arenas and the daemon's memory doubles (117 MB
/// against 58 MB reading all of v3). Served from mmap and trimmed, they are
/// returned to the system when freed.
pub(crate) const MALLOC_ENV: [(&str, &str); 3] = [
    ("MALLOC_MMAP_THRESHOLD_", "131072"),
    ("MALLOC_TRIM_THRESHOLD_", "131072"),
    ("MALLOC_ARENA_MAX", "2"),
];

/// Start again under [`MALLOC_ENV`] unless already under it. Nothing has
/// happened yet, so the new image simply takes over (same pid).
fn exec_with_malloc_settings() -> Result<()> {
    if std::env::var_os(MALLOC_ENV[0].0).is_some() {
        return Ok(());
    }
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("cannot find the slate binary")?;
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .envs(MALLOC_ENV)
        .exec();
    // exec returns only on failure: go on with the defaults.
    tracing::warn!("cannot restart with tuned malloc settings: {err}");
    Ok(())
}

/// `slate mount`.
pub fn mount(a: MountArgs) -> Result<ExitCode> {
    exec_with_malloc_settings()?;
    if a.background {
        return background(&a);
    }
    let mut opts = options(&a.source)?;
    opts.fill = a.fill;
    opts.fill_rate = a.fill_rate.as_deref().map(|r| size(r, "--fill-rate")).transpose()?;
    opts.record = a.record.clone();
    opts.status = a.status.clone();
    opts.threads = a.threads.clamp(1, 64);
    opts.prefetch = !a.no_prefetch;
    opts.poll_secs = a.poll;
    opts.offline_boot = a.offline_boot.clone();
    opts.boot_cmdline = a.boot_cmdline.clone().unwrap_or_default();
    opts.as_root = a.as_root;
    if !a.mountpoint.is_dir() {
        bail!("{} is not a directory", a.mountpoint.display());
    }
    let opened = slate_mount::open(&opts)?;
    let id = opened.id;
    let offline = opened.offline;
    let notify = std::env::var_os(NOTIFY_ENV).is_some();
    let mnt = a.mountpoint.clone();
    slate_mount::serve(&opts, opened, &a.mountpoint, move || {
        if notify {
            let mut out = std::io::stdout();
            let _ = writeln!(out, "ready");
            let _ = out.flush();
        } else {
            eprintln!(
                "slate: snapshot {id} mounted at {}{}; unmount with `umount {}` or Ctrl-C",
                mnt.display(),
                if offline {
                    " from the cache alone (no server answered)"
                } else {
                    ""
                },
                mnt.display()
            );
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Start the daemon as a child of its own and return once it mounted.
fn background(a: &MountArgs) -> Result<ExitCode> {
    let log = match &a.source.cache {
        Some(c) => {
            // The log lives in the cache, which must be one (or be made
            // one) before anything is written there.
            slate_mount::cache::Cache::open(c, size(&a.source.cache_size, "--cache-size")?)?;
            c.join("mount/daemon.log")
        }
        None => std::env::temp_dir().join(format!("slate-mount-{}.log", std::process::id())),
    };
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let args: Vec<String> = std::env::args().skip(1).filter(|x| x != "--background").collect();
    let exe = std::env::current_exe().context("cannot find the slate binary")?;
    let mut child = std::process::Command::new(exe)
        .args(&args)
        .env(NOTIFY_ENV, "1")
        .envs(MALLOC_ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .spawn()
        .context("cannot start the mount daemon")?;
    if mounted(&mut child) {
        println!("{}", child.id());
        eprintln!(
            "slate: mounted at {} by daemon {} (log: {})",
            a.mountpoint.display(),
            child.id(),
            log.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no message)");
    bail!("the mount daemon did not mount: {last} (log: {})", log.display())
}

/// Wait for a daemon started with [`NOTIFY_ENV`] to say it mounted (its
/// first line on stdout); false when it ended without saying so.
pub(crate) fn mounted(child: &mut std::process::Child) -> bool {
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        BufReader::new(out).read_line(&mut line).ok();
    }
    line.trim() == "ready"
}

/// `slate cache ...`.
pub fn cache(cmd: CacheCommand) -> Result<ExitCode> {
    match cmd {
        CacheCommand::Status { cache, out } => {
            let path = cache.join("mount/status.json");
            if !cache.join("config").exists() {
                bail!("{} is not a slate cache", cache.display());
            }
            let mut s = Status::load(&path).unwrap_or_default();
            let alive = s.pid != 0 && std::path::Path::new(&format!("/proc/{}", s.pid)).exists();
            if !alive && s.pid != 0 && s.state != "unmounted" && !s.snapshot.is_empty() {
                s.state = "stopped".into();
            }
            if out.json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else if s.snapshot.is_empty() {
                println!("cache {}: no mount has used it yet", cache.display());
            } else {
                let pct = if s.total_bytes == 0 {
                    100.0
                } else {
                    s.cached_bytes as f64 * 100.0 / s.total_bytes as f64
                };
                println!("snapshot   {}", s.snapshot);
                println!("state      {}{}", s.state, if s.filling { ", filling" } else { "" });
                println!(
                    "cached     {} of {} bytes ({pct:.1}%){}",
                    s.cached_bytes,
                    s.total_bytes,
                    if s.complete {
                        ", complete: runs without a server"
                    } else {
                        ""
                    }
                );
                println!("on disk    {} bytes (bound {})", s.cache_bytes, s.cache_limit);
                println!("fetched    {} bytes in {} requests", s.fetched_bytes, s.requests);
                if let Some(e) = &s.last_error {
                    println!("last error {} ({})", e.message, slate_agent::trust::date(e.at));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        CacheCommand::Fill { source, rate, out } => {
            let mut opts = options(&source)?;
            if opts.offline {
                bail!("--offline cannot fill a cache");
            }
            opts.prefetch = false;
            let rate = rate.as_deref().map(|r| size(r, "--rate")).transpose()?;
            let opened = slate_mount::open(&opts)?;
            let cache = opened
                .chunks
                .cache()
                .ok_or_else(|| anyhow!("a fill needs a cache (--cache DIR)"))?;
            let ids: Vec<_> = opened.all_chunks.iter().map(|c| c.0).collect();
            let mut pins: std::collections::HashSet<_> = ids.iter().copied().collect();
            pins.extend(opened.manifest_chunks.iter().copied());
            cache.set_pins(pins);
            if opened.offline {
                bail!("no server answered; nothing can be fetched");
            }
            let stop = AtomicBool::new(false);
            slate_mount::fill::fill(&opened.chunks, &ids, rate, &stop, true)?;
            cache.save_access();
            let total: u64 = opened.all_chunks.iter().map(|c| c.1 as u64).sum();
            let cached = cache.held_bytes(opened.all_chunks.iter().map(|(i, l)| (i, *l)));
            let fetched = opened
                .chunks
                .stats
                .fetched_bytes
                .load(std::sync::atomic::Ordering::Relaxed);
            let requests = opened.chunks.stats.requests.load(std::sync::atomic::Ordering::Relaxed);
            // What `slate cache status` and an applet show until a mount runs.
            let _ = Status {
                snapshot: opened.id.to_hex(),
                channel: opened.channel.clone(),
                state: "unmounted".into(),
                fill_target: opened.id.to_hex(),
                cached_bytes: cached,
                total_bytes: total,
                complete: cached == total,
                fetched_bytes: fetched,
                requests,
                cache_bytes: cache.disk_bytes(),
                cache_limit: cache.limit(),
                pinned_over_limit: cache.pinned_over_limit(),
                updated_at: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
                ..Status::default()
            }
            .save(&cache.root().join("mount/status.json"));
            if out.json {
                println!(
                    "{}",
                    serde_json::json!({"snapshot": opened.id.to_hex(), "cached_bytes": cached, "total_bytes": total,
                        "complete": cached == total, "fetched_bytes": fetched, "requests": requests,
                        "cache_bytes": cache.disk_bytes(), "pinned_over_limit": cache.pinned_over_limit()})
                );
            } else {
                println!(
                    "snapshot {}: {cached} of {total} bytes cached; fetched {fetched} bytes in {requests} requests",
                    opened.id
                );
            }
            if cached != total {
                bail!(
                    "the cache could not hold the whole snapshot ({} bytes on disk, bound {}): raise --cache-size",
                    cache.disk_bytes(),
                    cache.limit()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `slate profile ...`.
pub fn profile(cmd: ProfileCommand) -> Result<ExitCode> {
    match cmd {
        ProfileCommand::Sign { profile, repo, sign } => {
            let repo = super::open(&repo.repo)?;
            let text = std::fs::read(&profile).with_context(|| format!("cannot read {}", profile.display()))?;
            let parsed = slate_mount::record::Profile::decode(
                std::str::from_utf8(&text).map_err(|_| anyhow!("{} is not text", profile.display()))?,
            )?;
            repo.read_snapshot(&parsed.snapshot)
                .with_context(|| format!("the profile names snapshot {}", parsed.snapshot))?;
            let mut lines = String::new();
            for k in &sign {
                let key = super::read_secret_key(k)?;
                lines.push_str(&slate_mount::record::sign(&text, &key).to_line());
                lines.push('\n');
            }
            let [pkey, skey] = slate_mount::record::profile_keys(&parsed.snapshot);
            // The text before its signatures: a reader never pairs a new
            // profile with old signatures that fail, only the reverse.
            repo.storage.write(&pkey, &text)?;
            repo.storage.write(&skey, lines.as_bytes())?;
            repo.storage.sync()?;
            println!(
                "profile of snapshot {} signed ({} ranges in {} files)",
                parsed.snapshot,
                parsed.lines.len(),
                parsed
                    .lines
                    .iter()
                    .map(|l| &l.0)
                    .collect::<std::collections::HashSet<_>>()
                    .len()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
