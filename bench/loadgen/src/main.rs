//! `slate-loadgen`: load for `slate serve` from N simulated machines.
//!
//! `enroll` gives N machines their tokens through the same fleet store
//! calls as `slate fleet enroll` (one process, several connections, instead
//! of N processes). `run` then makes each machine do what an agent's pass
//! does over HTTP when it is up to date: ask for its assignment
//! (`POST /v1/fleet/assignment`), optionally fetch the assigned snapshot's
//! record and signatures (what a pass reads first when the assignment
//! names a new snapshot), and report (`POST /v1/fleet/report`), each with
//! the machine's own token. Two phases: steady polling (Poisson arrivals at
//! N per poll interval) and a burst (every machine once within a window: a
//! lab powering on). See docs/scale.md, "Load".

mod procstat;
mod schedule;
mod stats;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use slate_server::fleet::{Database, TokenStore};

use schedule::{Arrival, Rng};
use stats::Kind;

#[derive(Parser)]
#[command(about = "Load generator for slate serve (docs/scale.md, \"Load\")")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll machines PREFIX00000..PREFIX(N-1) (replacing tokens they had) and write "MACHINE TOKEN" lines to --out.
    Enroll {
        /// The fleet database, as `slate serve --db` takes it (SQLite path or postgres:// URL).
        #[arg(long, env = "SLATE_DB")]
        db: PathBuf,
        /// How many machines.
        #[arg(long)]
        count: usize,
        /// Machine ids are this followed by a five-digit number.
        #[arg(long, default_value = "lab-")]
        prefix: String,
        /// Where the tokens go (mode 0600).
        #[arg(long)]
        out: PathBuf,
        /// Database connections (and threads) to enroll with; SQLite uses one.
        #[arg(long, default_value_t = 8)]
        connections: u32,
    },
    /// Run the steady phase, then the burst, against a server.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// The server's base URL.
    #[arg(long)]
    server: String,
    /// The tokens file `enroll` wrote.
    #[arg(long)]
    tokens: PathBuf,
    /// Use only the first N machines of the file.
    #[arg(long)]
    machines: Option<usize>,
    /// How often each machine polls in the steady phase (e.g. 3600s, 60m, 1h).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    poll_interval: Duration,
    /// Length of the steady phase (0: none).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    duration: Duration,
    /// Window in which every machine makes one pass in the burst phase (0: none).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    burst: Duration,
    /// Also fetch the assigned snapshot's record and signatures in each pass.
    #[arg(long)]
    fetch: bool,
    /// Passes in flight at once (the server's --max-connections-per-client, default 64, caps one address).
    #[arg(long, default_value_t = 64)]
    max_in_flight: usize,
    /// Give up on a request after this long (counted as an error, "timeout").
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
    /// Pid of slate serve: its CPU time and memory are reported.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Pid of the database server (the PostgreSQL postmaster): its CPU time with its backends is reported.
    #[arg(long)]
    db_pid: Option<u32>,
    /// Seed of the arrival schedule (the same seed plans the same passes).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the JSON summary here too (it is always printed last on stdout).
    #[arg(long)]
    json: Option<PathBuf>,
}

/// `90`, `90s`, `250ms`, `5m`, `1h`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| format!("not a duration: {s}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit in {s} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s}: {e}"))
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Enroll {
            db,
            count,
            prefix,
            out,
            connections,
        } => enroll(&db, count, &prefix, &out, connections),
        Command::Run(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(run(args))
        }
    }
}

/// Machine `i`'s id.
fn machine_id(prefix: &str, i: usize) -> String {
    format!("{prefix}{i:05}")
}

fn enroll(db: &Path, count: usize, prefix: &str, out: &Path, connections: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let started = Instant::now();
    let database = Database::from_arg(Path::new("."), Some(db));
    let threads = match database {
        Database::Sqlite(_) => 1,
        Database::Postgres(_) => connections.max(1) as usize,
    };
    let store = database.open(threads as u32).context("opening the fleet database")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    // Each thread enrolls every threads-th machine over its own connection.
    let lines: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let store = &store;
                s.spawn(move || -> Result<Vec<(usize, String)>> {
                    let mut mine = Vec::new();
                    for i in (t..count).step_by(threads) {
                        let id = machine_id(prefix, i);
                        let token = slate_server::auth::generate()?;
                        store
                            .enroll(&id, &slate_server::auth::hash(&token), now, true)
                            .with_context(|| format!("enrolling {id}"))?;
                        mine.push((i, format!("{id} {token}\n")));
                    }
                    Ok(mine)
                })
            })
            .collect();
        let mut all = Vec::with_capacity(count);
        for h in handles {
            all.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("an enrolling thread panicked"))??,
            );
        }
        all.sort();
        Ok::<_, anyhow::Error>(all.into_iter().map(|(_, l)| l).collect())
    })?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("creating {}", out.display()))?;
    f.write_all(lines.concat().as_bytes())?;
    eprintln!(
        "enrolled {count} machines in {:.1}s ({}), tokens in {}",
        started.elapsed().as_secs_f64(),
        store.name(),
        out.display()
    );
    Ok(())
}

/// One simulated machine.
struct Machine {
    id: String,
    token: String,
    mac: String,
}

fn read_tokens(path: &Path, limit: Option<usize>) -> Result<Vec<Machine>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let Some((id, token)) = line.split_once(' ') else {
            bail!("{}:{}: expected \"MACHINE TOKEN\"", path.display(), i + 1);
        };
        let n = out.len() as u32;
        out.push(Machine {
            id: id.into(),
            token: token.into(),
            mac: format!(
                "52:54:{:02x}:{:02x}:{:02x}:{:02x}",
                n >> 24,
                (n >> 16) & 255,
                (n >> 8) & 255,
                n & 255
            ),
        });
        if Some(out.len()) == limit {
            break;
        }
    }
    if out.is_empty() {
        bail!("{}: no machines", path.display());
    }
    Ok(out)
}

/// What the passes share.
struct Ctx {
    client: reqwest::Client,
    server: String,
    machines: Vec<Machine>,
    fetch: bool,
    slots: Arc<tokio::sync::Semaphore>,
}

/// What one pass observed: (request kind, latency or error cause), and how
/// late it started (waiting for the dispatcher or a free slot).
struct PassResult {
    requests: Vec<(&'static str, Result<Duration, String>)>,
    start_delay: Duration,
}

fn cause(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else if let Some(s) = e.status() {
        format!("status {}", s.as_u16())
    } else if e.is_body() || e.is_decode() {
        "body".into()
    } else {
        // Name the innermost cause ("connection closed before message
        // completed", "connection reset by peer"): it tells a server that
        // dropped the connection from one that refused it.
        let mut inner: &dyn std::error::Error = e;
        while let Some(next) = inner.source() {
            inner = next;
        }
        format!("request: {inner}")
    }
}

/// Send a request, read the whole answer, and check its status.
async fn exchange(req: reqwest::RequestBuilder, want: u16) -> Result<Vec<u8>, String> {
    let resp = req.send().await.map_err(|e| cause(&e))?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await.map_err(|e| cause(&e))?.to_vec();
    if status != want {
        return Err(format!("status {status}"));
    }
    Ok(body)
}

/// One agent pass of machine `m`, scheduled at `due`.
async fn pass(ctx: Arc<Ctx>, m: usize, due: Instant) -> PassResult {
    let _slot = ctx.slots.clone().acquire_owned().await;
    let start_delay = Instant::now().saturating_duration_since(due);
    let machine = &ctx.machines[m];
    let who = json!({"id": machine.id, "hostname": machine.id, "macs": [machine.mac], "labels": {}});
    let auth = format!("Bearer {}", machine.token);
    let mut requests = Vec::new();

    // The assignment's latency counts from the moment the pass was due, so
    // time spent waiting for a free slot or a late dispatcher is included
    // (no coordinated omission).
    let r = exchange(
        ctx.client
            .post(format!("{}/v1/fleet/assignment", ctx.server))
            .header("authorization", &auth)
            .json(&json!({"machine": who})),
        200,
    )
    .await
    .and_then(|b| {
        let v: Value = serde_json::from_slice(&b).map_err(|_| "body".to_string())?;
        match v.get("snapshot").and_then(Value::as_str) {
            Some(s) if s.len() == 64 => Ok(s.to_string()),
            _ => Err("no snapshot in the answer".to_string()),
        }
    });
    requests.push(("assignment", r.as_ref().map(|_| due.elapsed()).map_err(Clone::clone)));
    let Ok(snapshot) = r else {
        return PassResult { requests, start_delay };
    };

    if ctx.fetch {
        for ext in ["snap", "sig"] {
            let t = Instant::now();
            let r = exchange(
                ctx.client.get(format!(
                    "{}/v1/repo/snapshots/{}/{snapshot}.{ext}",
                    ctx.server,
                    &snapshot[..2]
                )),
                200,
            )
            .await;
            requests.push(("fetch", r.map(|_| t.elapsed())));
        }
    }

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let report = json!({
        "machine": who,
        "current": snapshot, "target": snapshot,
        "active_slot": "a", "slots": {"a": snapshot, "b": snapshot}, "pending": null,
        "last_update": {"result": "up-to-date", "message": "up to date", "bytes_fetched": 0, "at": now},
        "boot": {"result": "good", "slot": "a", "snapshot": snapshot},
        "mode": "ab",
    });
    let t = Instant::now();
    let r = exchange(
        ctx.client
            .post(format!("{}/v1/fleet/report", ctx.server))
            .header("authorization", &auth)
            .json(&report),
        204,
    )
    .await;
    requests.push(("report", r.map(|_| t.elapsed())));
    PassResult { requests, start_delay }
}

/// CPU seconds and memory of the processes under test at one moment.
#[derive(Clone, Copy)]
struct Usage {
    server_cpu: Option<Duration>,
    db_cpu: Option<Duration>,
    own_cpu: Option<Duration>,
}

fn usage(args: &RunArgs) -> Usage {
    Usage {
        server_cpu: args.server_pid.and_then(|p| procstat::cpu(p, false)),
        db_cpu: args.db_pid.and_then(|p| procstat::cpu(p, true)),
        own_cpu: procstat::cpu(std::process::id(), false),
    }
}

fn pct(a: Option<Duration>, b: Option<Duration>, wall: Duration) -> Value {
    match (a, b) {
        (Some(a), Some(b)) => json!({
            "cpu_s": round3(b.saturating_sub(a).as_secs_f64()),
            "cpu_pct_of_one_core": round3(100.0 * b.saturating_sub(a).as_secs_f64() / wall.as_secs_f64()),
        }),
        _ => Value::Null,
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Run one phase and summarise it.
async fn phase(name: &str, plan: Vec<Arrival>, window: Duration, ctx: &Arc<Ctx>, args: &RunArgs) -> Value {
    eprintln!(
        "{name}: {} passes over {:.0}s ({:.1} passes/s offered)",
        plan.len(),
        window.as_secs_f64(),
        plan.len() as f64 / window.as_secs_f64()
    );
    // Peak resident memory of the server, sampled every 200 ms.
    let rss_peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = args.server_pid.map(|pid| {
        let peak = rss_peak.clone();
        tokio::spawn(async move {
            loop {
                if let Some(r) = procstat::status_kb(pid, "VmRSS") {
                    peak.fetch_max(r, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    });
    let before = usage(args);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let planned = plan.len();
    for a in plan {
        let due = start + a.at;
        tokio::time::sleep_until(due.into()).await;
        tasks.spawn(pass(ctx.clone(), a.machine, due));
    }
    let mut kinds: BTreeMap<&'static str, Kind> = BTreeMap::new();
    let mut delays = Vec::with_capacity(planned);
    while let Some(r) = tasks.join_next().await {
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                eprintln!("a pass failed to run: {e}");
                continue;
            }
        };
        delays.push(r.start_delay);
        for (kind, res) in r.requests {
            let k = kinds.entry(kind).or_default();
            match res {
                Ok(d) => k.ok.push(d),
                Err(c) => *k.errors.entry(c).or_default() += 1,
            }
        }
    }
    let wall = start.elapsed();
    let after = usage(args);
    if let Some(s) = sampler {
        s.abort();
    }
    let requests: u64 = kinds
        .values()
        .map(|k| (k.ok.len() as u64) + k.errors.values().sum::<u64>())
        .sum();
    let errors: u64 = kinds.values().map(|k| k.errors.values().sum::<u64>()).sum();
    let mut delay = Kind {
        ok: delays,
        ..Default::default()
    };
    let delay = delay.summary();
    let summaries: BTreeMap<&str, stats::Summary> = kinds.iter_mut().map(|(n, k)| (*n, k.summary())).collect();
    let server = args.server_pid.map(|pid| {
        json!({
            "pid": pid,
            "cpu": pct(before.server_cpu, after.server_cpu, wall),
            "rss_peak_bytes": rss_peak.load(std::sync::atomic::Ordering::Relaxed),
            "rss_end_bytes": procstat::status_kb(pid, "VmRSS"),
            "hwm_bytes": procstat::status_kb(pid, "VmHWM"),
        })
    });
    json!({
        "phase": name,
        "machines": ctx.machines.len(),
        "passes": planned,
        "window_s": window.as_secs_f64(),
        "wall_s": round3(wall.as_secs_f64()),
        "offered_passes_per_s": round3(planned as f64 / window.as_secs_f64()),
        "requests": requests,
        "errors": errors,
        "achieved_requests_per_s": round3(requests as f64 / wall.as_secs_f64()),
        "requests_by_kind": summaries,
        "start_delay": {"p99_ms": delay.p99_ms, "max_ms": delay.max_ms},
        "server": server,
        "database": args.db_pid.map(|pid| json!({"pid": pid, "cpu": pct(before.db_cpu, after.db_cpu, wall)})),
        "loadgen": {"cpu": pct(before.own_cpu, after.own_cpu, wall)},
    })
}

async fn run(args: RunArgs) -> Result<()> {
    let machines = read_tokens(&args.tokens, args.machines)?;
    let n = machines.len();
    // One keep-alive pool shared by all simulated machines: a machine's
    // requests are its own (its token, its body), but connections are
    // reused across machines, as a real fleet behind one NAT would not do;
    // --max-in-flight bounds the open connections.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.max_in_flight)
        .timeout(args.timeout)
        .build()?;
    let ctx = Arc::new(Ctx {
        client,
        server: args.server.trim_end_matches('/').to_string(),
        machines,
        fetch: args.fetch,
        slots: Arc::new(tokio::sync::Semaphore::new(args.max_in_flight.max(1))),
    });
    let mut rng = Rng::new(args.seed);
    let mut phases = Vec::new();
    if !args.duration.is_zero() {
        let plan = schedule::steady(n, args.poll_interval, args.duration, &mut rng);
        phases.push(phase("steady", plan, args.duration, &ctx, &args).await);
    }
    if !args.burst.is_zero() {
        let plan = schedule::burst(n, args.burst, &mut rng);
        phases.push(phase("burst", plan, args.burst, &ctx, &args).await);
    }
    print_table(&phases);
    let out = json!({
        "server": ctx.server,
        "machines": n,
        "poll_interval_s": args.poll_interval.as_secs_f64(),
        "fetch": args.fetch,
        "max_in_flight": args.max_in_flight,
        "seed": args.seed,
        "phases": phases,
    });
    let text = serde_json::to_string_pretty(&out)?;
    if let Some(p) = &args.json {
        std::fs::write(p, format!("{text}\n")).with_context(|| format!("writing {}", p.display()))?;
    }
    println!("{text}");
    let errors: u64 = phases.iter().filter_map(|p| p["errors"].as_u64()).sum();
    if errors > 0 {
        bail!("{errors} requests failed");
    }
    Ok(())
}

fn print_table(phases: &[Value]) {
    println!(
        "{:<7} {:<10} {:>7} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "phase", "request", "ok", "errors", "p50 ms", "p95 ms", "p99 ms", "max ms", "req/s"
    );
    for p in phases {
        let name = p["phase"].as_str().unwrap_or("");
        if let Some(kinds) = p["requests_by_kind"].as_object() {
            for (k, s) in kinds {
                println!(
                    "{:<7} {:<10} {:>7} {:>6} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8}",
                    name,
                    k,
                    n(&s["ok"]),
                    n(&s["errors"]),
                    f(&s["p50_ms"]),
                    f(&s["p95_ms"]),
                    f(&s["p99_ms"]),
                    f(&s["max_ms"]),
                    ""
                );
            }
        }
        let srv = &p["server"];
        let db = match p["database"]["cpu"]["cpu_pct_of_one_core"].as_f64() {
            Some(pct) => format!("; database CPU {pct:.1}%"),
            None => String::new(),
        };
        println!(
            "{:<7} {:<10} {:>7} {:>6} {:>44.1}   server CPU {:.1}% of a core, peak RSS {:.1} MiB{db}; loadgen CPU {:.1}%",
            name,
            "all",
            n(&p["requests"]),
            n(&p["errors"]),
            f(&p["achieved_requests_per_s"]),
            f(&srv["cpu"]["cpu_pct_of_one_core"]),
            f(&srv["rss_peak_bytes"]) / 1048576.0,
            f(&p["loadgen"]["cpu"]["cpu_pct_of_one_core"]),
        );
    }
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("1d").is_err());
        assert!(parse_duration("x").is_err());
    }

    /// `enroll` writes one line per machine, and each token is the one the
    /// fleet store now knows for that machine (an SQLite store in a
    /// scratch directory; the PostgreSQL path runs in bench/fleet.sh).
    #[test]
    fn enroll_writes_tokens_the_store_knows() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("fleet.db");
        let out = dir.path().join("tokens");
        enroll(&db, 25, "t-", &out, 4).unwrap();
        let machines = read_tokens(&out, None).unwrap();
        assert_eq!(machines.len(), 25);
        assert_eq!(machines[0].id, "t-00000");
        assert_eq!(machines[24].id, "t-00024");
        let store = Database::Sqlite(db.clone()).open(1).unwrap();
        for m in &machines {
            assert!(slate_server::auth::is_token(&m.token), "{}", m.token);
            let hash = slate_server::auth::hash(&m.token);
            assert_eq!(store.machine_for(&hash).unwrap().as_deref(), Some(m.id.as_str()));
        }
        // Again: every machine gets a new token and the old ones stop working.
        enroll(&db, 25, "t-", &out, 4).unwrap();
        let again = read_tokens(&out, None).unwrap();
        assert_ne!(again[3].token, machines[3].token);
        assert_eq!(
            store
                .machine_for(&slate_server::auth::hash(&machines[3].token))
                .unwrap(),
            None
        );
        assert_eq!(store.tokens().unwrap().len(), 25);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
        // The first N lines only, on request; an empty file is refused.
        assert_eq!(read_tokens(&out, Some(3)).unwrap().len(), 3);
        std::fs::write(&out, "").unwrap();
        assert!(read_tokens(&out, None).is_err());
    }
}
