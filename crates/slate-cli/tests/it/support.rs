//! Shared helpers: run the `slate` binary, make scratch directories on a
//! filesystem with xattr support, find the Debian corpus, give a test
//! server an SQLite or a PostgreSQL fleet database.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// The `slate` binary under test.
pub fn slate_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_slate"))
}

/// A scratch directory under /var/tmp (ext4 here and in CI, unlike a
/// tmpfs /tmp, so xattrs, ACLs and sparse files behave as on a real root).
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("slate-test-")
        .tempdir_in("/var/tmp")
        .expect("scratch dir")
}

/// Run `slate ARGS...`; returns the output whatever the exit status.
pub fn slate(args: &[&str]) -> Output {
    slate_env(args, &[])
}

/// Run `slate ARGS...` with more environment variables (an object store's
/// `AWS_*`); returns the output whatever the exit status.
pub fn slate_env(args: &[&str], env: &[(&str, String)]) -> Output {
    Command::new(slate_bin())
        .args(args)
        .env_remove("SLATE_REPO")
        .env_remove("SLATE_DB")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run slate")
}

/// [`slate_ok`] with more environment variables.
pub fn slate_ok_env(args: &[&str], env: &[(&str, String)]) -> String {
    let out = slate_env(args, env);
    assert!(
        out.status.success(),
        "slate {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Run `slate ARGS...` and require success; returns stdout.
pub fn slate_ok(args: &[&str]) -> String {
    let out = slate(args);
    assert!(
        out.status.success(),
        "slate {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Run `slate ARGS...` and require failure; returns stderr.
pub fn slate_err(args: &[&str]) -> String {
    let out = slate(args);
    assert!(!out.status.success(), "slate {args:?} succeeded but should have failed");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "slate {args:?} panicked:\n{err}");
    err
}

/// `p` as a &str (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Where the Debian corpus is, if it was built: `$SLATE_CORPUS`, else the
/// default cache of ../shared/bench/corpus.sh.
pub fn corpus() -> Option<PathBuf> {
    let dir = std::env::var_os("SLATE_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/stateless-bench/corpus"));
    ["v1.done", "v2.done", "v3.done"]
        .iter()
        .all(|f| dir.join(f).exists())
        .then_some(dir)
}

/// Whether we run as root (needed for owners, devices, trusted xattrs).
/// A test that cannot run here says why on stderr and returns. Under `make
/// test` (`SLATE_TESTS_MUST_RUN` set, as in CI, where scripts/setup.sh has
/// installed everything) that is a failure instead: a suite whose checks
/// quietly step aside is no check.
pub fn skip(reason: &str) {
    if std::env::var_os("SLATE_TESTS_MUST_RUN").is_some() {
        panic!("this test cannot run here and SLATE_TESTS_MUST_RUN is set: {reason}");
    }
    eprintln!("skipped: {reason}");
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A running `slate serve`, killed and reaped on drop.
pub struct Server {
    /// The child process.
    pub child: Child,
    /// Its base URL.
    pub url: String,
    /// Its stderr so far.
    pub log: Arc<Mutex<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Start `slate serve ARGS --listen 127.0.0.1:0` and wait for its URL.
    pub fn start(args: &[&str]) -> Server {
        Server::start_env(args, &[])
    }

    /// [`Server::start`] with more environment variables.
    pub fn start_env(args: &[&str], env: &[(&str, String)]) -> Server {
        let child = Command::new(slate_bin())
            .arg("serve")
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .env_remove("SLATE_REPO")
            .env_remove("SLATE_DB")
            .envs(env.iter().map(|(k, v)| (k, v)))
            // Request logs: which objects were served, and that logging works.
            .env("SLATE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run slate serve");
        // The guard exists before anything can fail.
        let mut server = Server {
            child,
            url: String::new(),
            log: Arc::new(Mutex::new(String::new())),
        };
        let pipe = server.child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let log = server.log.clone();
        // Drain stderr for the server's whole life: request logs must never
        // fill the pipe and block it.
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let line = strip_ansi(&line);
                log.lock().unwrap().push_str(&format!("{line}\n"));
                if let Some(url) = line.split(" on ").nth(1).filter(|_| line.starts_with("serving ")) {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => server.url = url,
            Err(_) => panic!("slate serve {args:?} did not start:\n{}", server.log.lock().unwrap()),
        }
        server
    }

    /// The request log lines that mention `needle`.
    pub fn requests(&self, needle: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// Stop it with SIGTERM and return its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        wait_timeout(&mut self.child, Duration::from_secs(30)).expect("slate serve exits on SIGTERM")
    }
}

/// Wait for `child` to exit, at most `limit`.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Remove terminal colour sequences (the server's log is coloured).
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A tmpfs of `size` mounted on a fresh directory (a small, really full
/// disk), detached on drop even when a test fails.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mount it (root only).
    pub fn mount(size: &str) -> Tmpfs {
        let dir = scratch();
        let options = std::ffi::CString::new(format!("size={size},mode=0700")).unwrap();
        rustix::mount::mount(
            "tmpfs",
            dir.path(),
            "tmpfs",
            rustix::mount::MountFlags::empty(),
            Some(options.as_c_str()),
        )
        .expect("mount a tmpfs");
        Tmpfs { dir }
    }

    /// Its mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Detach: a server still holding a file open must not keep it.
        let _ = rustix::mount::unmount(self.dir.path(), rustix::mount::UnmountFlags::DETACH);
    }
}

/// A fleet key (`slate keygen`) that a test's `slate serve` signs
/// assignments with and its machines trust as `fleet_trust`.
#[derive(Clone, Debug)]
pub struct FleetKey {
    /// The secret key, for `slate serve --fleet-key`.
    pub secret: PathBuf,
    /// Its public half, for AGENT.toml's `fleet_trust`.
    pub public: PathBuf,
}

impl FleetKey {
    /// The fleet key in `dir` (`dir/fleet.key`), made on first use.
    pub fn in_dir(dir: &Path) -> FleetKey {
        let secret = dir.join("fleet.key");
        let public = dir.join("fleet.key.pub");
        if !secret.exists() {
            slate_ok(&["keygen", "--out", s(&secret)]);
        }
        FleetKey { secret, public }
    }

    /// The AGENT.toml line that trusts it.
    pub fn agent_toml(&self) -> String {
        format!("fleet_trust = [{:?}]\n", s(&self.public))
    }
}

impl Server {
    /// Start `slate serve ARGS --fleet-key KEY`: assignments signed with the
    /// fleet key in `dir` (made on first use), as machines require.
    pub fn start_signed(dir: &Path, args: &[&str]) -> Server {
        Server::start_signed_env(dir, args, &[])
    }

    /// [`Server::start_signed`] with more environment variables.
    pub fn start_signed_env(dir: &Path, args: &[&str], env: &[(&str, String)]) -> Server {
        let key = FleetKey::in_dir(dir);
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--fleet-key", s(&key.secret)]);
        Server::start_env(&all, env)
    }
}

/// Enroll `machine` in the fleet database of `repo` and write its token to
/// `dir/<machine>.token`; returns that file. Replaces an earlier token.
pub fn enroll(repo: &Path, machine: &str, dir: &Path) -> PathBuf {
    let token = slate_ok(&["fleet", "enroll", "--force", "--repo", s(repo), machine]);
    let file = dir.join(format!("{}.token", machine.replace(':', "_")));
    std::fs::write(&file, token).unwrap();
    file
}

/// A new administrator token file `dir/admin.token` (for `slate serve
/// --admin-token-file` and `slate fleet status --token-file`).
pub fn admin_token(dir: &Path) -> PathBuf {
    let file = dir.join("admin.token");
    slate_ok(&["fleet", "admin-token", "--force", s(&file)]);
    file
}

/// `slate fleet status --json` of the server at `url`, read with the
/// administrator token in `admin` (made by [`admin_token`]).
pub fn fleet_status(url: &str, admin: &Path) -> String {
    slate_ok(&["fleet", "status", "--json", "--server", url, "--token-file", s(admin)])
}

/// An AGENT.toml `server = [...]` entry for a test server on 127.0.0.1
/// that holds the machine token over plain http.
pub fn token_server(url: &str) -> String {
    format!("{{ url = {url:?}, token = true, token_over_http = true }}")
}

/// The fleet database a test's `slate serve` and `slate fleet enroll` use;
/// [`on_both_stores`] runs a test once with each.
pub enum FleetDb {
    /// SQLite: `REPO/fleet.db` (no `--db`), or the file given.
    Sqlite(Option<PathBuf>),
    /// A database of its own in a throwaway PostgreSQL server.
    Postgres(slate_server::testpg::PgDatabase),
}

impl FleetDb {
    /// SQLite in `file` rather than the default `REPO/fleet.db`.
    pub fn or_file(self, file: PathBuf) -> FleetDb {
        match self {
            FleetDb::Sqlite(None) => FleetDb::Sqlite(Some(file)),
            other => other,
        }
    }

    /// The `--db` arguments of `slate serve` and `slate fleet ...`.
    pub fn args(&self) -> Vec<&str> {
        match self {
            FleetDb::Sqlite(None) => vec![],
            FleetDb::Sqlite(Some(f)) => vec!["--db", s(f)],
            FleetDb::Postgres(pg) => vec!["--db", &pg.url],
        }
    }

    /// Whether the database, as stored, holds `needle` anywhere (the
    /// SQLite file's bytes; PostgreSQL's `pg_dump`).
    pub fn holds(&self, repo: &Path, needle: &str) -> bool {
        match self {
            FleetDb::Sqlite(file) => {
                let file = file.clone().unwrap_or_else(|| repo.join("fleet.db"));
                let mut bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                // While the server runs, the latest writes are in the log.
                let mut wal = file.into_os_string();
                wal.push("-wal");
                bytes.extend(std::fs::read(wal).unwrap_or_default());
                bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
            }
            FleetDb::Postgres(pg) => pg.dump().contains(needle),
        }
    }
}

/// `on_both_stores!(a, b)`: tests `sqlite::a`, `postgres::a`, ... that run
/// `a(FleetDb)`, ... of the calling module with each fleet database. The
/// PostgreSQL ones pass, saying `skipped:`, without PostgreSQL
/// (scripts/setup.sh installs it).
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::support::FleetDb::Sqlite(None));
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $name() {
                    if let Some(db) = slate_server::testpg::PgDatabase::new() {
                        super::$name($crate::support::FleetDb::Postgres(db));
                    }
                }
            )*
        }
    };
}
pub(crate) use on_both_stores;
