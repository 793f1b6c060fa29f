//! A throwaway PostgreSQL server for the tests of the PostgreSQL fleet
//! store (this crate's unit tests, and `slate-cli`'s integration tests
//! through the `test-postgres` feature).
//!
//! Debian's `postgresql` package (scripts/setup.sh installs it) provides
//! the binaries under `/usr/lib/postgresql/VERSION/bin`. PostgreSQL refuses
//! to run as root, so as root the server is made and run as the
//! `postgres` user (`runuser`) in a scratch directory given to that user.
//! It listens on 127.0.0.1 at a free port only, with its socket in that
//! directory, and is stopped (`pg_ctl stop -m immediate`, else SIGKILL to
//! the pid in its `postmaster.pid`) when the last test using it drops it,
//! a failing one included. Durability is off: nothing here must survive a
//! crash.
//!
//! Where PostgreSQL is not installed, [`PgDatabase::new`] says `skipped:`
//! on stderr and returns `None`, as the repository's other tests do for a
//! missing tool; any failure once the binaries are there panics with the
//! server's log.

use std::net::TcpListener;
use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// The server the tests running at the moment share; each has its own
/// database in it. Weak: the last test to finish stops the server.
static SHARED: Mutex<Weak<TempPostgres>> = Mutex::new(Weak::new());

/// Numbers the databases of one test process.
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// A running PostgreSQL server in a scratch directory, stopped on drop.
pub struct TempPostgres {
    bindir: PathBuf,
    /// The user the server runs as when we are root (`None`: ourselves).
    owner: Option<(u32, u32)>,
    dir: tempfile::TempDir,
    port: u16,
}

/// A database of its own, owned by an unprivileged role, in a shared
/// [`TempPostgres`] (kept running as long as this lives).
pub struct PgDatabase {
    server: Arc<TempPostgres>,
    /// Its name, which is also its owner role's.
    pub name: String,
    /// `postgres://NAME@127.0.0.1:PORT/NAME`, for `--db`.
    pub url: String,
}

impl PgDatabase {
    /// A new empty database, or `None` (with a `skipped:` line) where
    /// PostgreSQL is not installed.
    pub fn new() -> Option<PgDatabase> {
        let server = TempPostgres::shared()?;
        let n = NEXT_DB.fetch_add(1, Ordering::Relaxed);
        let name = format!("slate_{}_{n}", std::process::id());
        // As the documentation tells administrators: a role of its own that
        // owns the database, no superuser; the store creates its tables.
        off_runtime(|| {
            let mut admin = server.superuser("postgres");
            // Two statements: CREATE DATABASE refuses to share a transaction.
            for sql in [
                format!("CREATE ROLE {name} LOGIN"),
                format!("CREATE DATABASE {name} OWNER {name}"),
            ] {
                admin
                    .batch_execute(&sql)
                    .unwrap_or_else(|e| panic!("{sql}: {e:?}\n{}", server.log()));
            }
        });
        let url = format!("postgres://{name}@127.0.0.1:{}/{name}", server.port);
        Some(PgDatabase { server, name, url })
    }

    /// A superuser connection to this database, to look behind the store.
    pub fn superuser(&self) -> ::postgres::Client {
        self.server.superuser(&self.name)
    }

    /// A connection as the database's owner, the role the store uses.
    pub fn owner(&self) -> ::postgres::Client {
        ::postgres::Client::connect(&self.url, ::postgres::NoTls)
            .unwrap_or_else(|e| panic!("connecting to {}: {e:?}\n{}", self.url, self.log()))
    }

    /// Everything in this database as SQL text (`pg_dump`), to check what
    /// is and is not stored.
    pub fn dump(&self) -> String {
        let out = self.server.run(
            "pg_dump",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.server.port.to_string(),
                "-U",
                "postgres",
                &self.name,
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.server.log()
    }
}

/// The newest `/usr/lib/postgresql/VERSION/bin` that has a server.
fn find_bindir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            ["initdb", "pg_ctl", "postgres"]
                .iter()
                .all(|b| bin.join(b).exists())
                .then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// The `postgres` user's uid and gid, from /etc/passwd.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == "postgres").then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// A port nobody listens on at the moment (another process may take it
/// before the server does: [`TempPostgres::start`] tries again).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    l.local_addr().expect("local address").port()
}

impl TempPostgres {
    /// The server the running tests share, started if there is none.
    fn shared() -> Option<Arc<TempPostgres>> {
        let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = shared.upgrade() {
            return Some(s);
        }
        let s = Arc::new(TempPostgres::start()?);
        *shared = Arc::downgrade(&s);
        Some(s)
    }

    /// Make a new cluster and start it; `None` where PostgreSQL is missing.
    pub fn start() -> Option<TempPostgres> {
        let Some(bindir) = find_bindir() else {
            // Under `make test` (SLATE_TESTS_MUST_RUN) a missing tool fails
            // the test instead of letting it pass unchecked.
            assert!(
                std::env::var_os("SLATE_TESTS_MUST_RUN").is_none(),
                "PostgreSQL is not installed (postgresql; scripts/setup.sh installs it) and SLATE_TESTS_MUST_RUN is set"
            );
            eprintln!("skipped: PostgreSQL is not installed (postgresql; scripts/setup.sh installs it)");
            return None;
        };
        let owner = if rustix::process::geteuid().is_root() {
            let Some(user) = postgres_user() else {
                assert!(
                    std::env::var_os("SLATE_TESTS_MUST_RUN").is_none(),
                    "there is no postgres user to run PostgreSQL as and SLATE_TESTS_MUST_RUN is set"
                );
                eprintln!(
                    "skipped: there is no postgres user to run PostgreSQL as (the postgresql package creates it)"
                );
                return None;
            };
            Some(user)
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("slate-pg-")
            .tempdir_in("/var/tmp")
            .expect("scratch directory for PostgreSQL");
        if let Some((uid, gid)) = owner {
            chown(dir.path(), Some(uid), Some(gid)).expect("giving the scratch directory to postgres");
        }
        let mut pg = TempPostgres {
            bindir,
            owner,
            dir,
            port: 0,
        };
        let data = pg.data();
        let out = pg.run(
            "initdb",
            &[
                "-D",
                path(&data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
                "--no-instructions",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for attempt in 1..=3 {
            pg.port = free_port();
            let options = format!(
                "-h 127.0.0.1 -p {} -k {} -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
                pg.port,
                path(pg.dir.path())
            );
            let log = pg.dir.path().join("server.log");
            let out = pg.run(
                "pg_ctl",
                &[
                    "-D",
                    path(&data),
                    "-l",
                    path(&log),
                    "-o",
                    &options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
            );
            if out.status.success() {
                return Some(pg);
            }
            if attempt == 3 {
                panic!(
                    "PostgreSQL did not start:\n{}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    pg.log()
                );
            }
            // Most likely the port was taken meanwhile and the server
            // exited; if it is only slow, it must not outlive this.
            let _ = pg.run("pg_ctl", &["-D", path(&data), "-m", "immediate", "-w", "stop"]);
            std::thread::sleep(Duration::from_millis(200));
        }
        unreachable!()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Run one of the server's programs as the server's user.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let exe = self.bindir.join(program);
        let mut cmd = match self.owner {
            Some(_) => {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        cmd.args(args)
            // The server's messages in English, whatever the test's locale.
            .env("LC_ALL", "C.UTF-8")
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"))
    }

    /// A superuser connection to `db`.
    fn superuser(&self, db: &str) -> ::postgres::Client {
        ::postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .dbname(db)
            .connect(::postgres::NoTls)
            .unwrap_or_else(|e| panic!("connecting to the test server: {e:?}\n{}", self.log()))
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The server's pid, from its `postmaster.pid`.
    fn pid(&self) -> Option<rustix::process::Pid> {
        let text = std::fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        rustix::process::Pid::from_raw(text.lines().next()?.trim().parse().ok()?)
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let pid = self.pid();
        let stopped = self
            .run(
                "pg_ctl",
                &["-D", path(&self.data()), "-m", "immediate", "-w", "-t", "30", "stop"],
            )
            .status
            .success();
        if !stopped {
            if let Some(pid) = pid {
                // Only ever the server of this data directory.
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// Run `f` on a thread of its own: the synchronous PostgreSQL client runs
/// a small runtime of its own, which a thread driving an async test may
/// not start.
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| s.spawn(f).join()).unwrap_or_else(|p| std::panic::resume_unwind(p))
}

fn path(p: &Path) -> &str {
    p.to_str().expect("scratch paths are UTF-8")
}
