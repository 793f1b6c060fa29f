//! The fleet store in an embedded SQLite database (the default:
//! `REPO/fleet.db`).
//!
//! Two tables, one row per machine in each:
//!
//! ```text
//! machines(id TEXT PRIMARY KEY, first_seen, last_seen INTEGER,  -- Unix seconds
//!          hostname, channel, current, target, active_slot TEXT,
//!          slots, last_update, boot, report TEXT)              -- JSON documents
//! machine_tokens(machine TEXT PRIMARY KEY,                     -- since version 2
//!                token_hash TEXT UNIQUE,                       -- BLAKE3 hex of the token
//!                enrolled INTEGER)                             -- Unix seconds
//! ```
//!
//! Version 3 adds `machines.mode` (TEXT) and `machines.cache` (JSON) from
//! the report: how the machine runs and how full a network-booted
//! machine's cache is.
//!
//! WAL mode lets `slate fleet status` (a reader) run while reports are
//! written, and makes each write one append to the log instead of a
//! rewrite of pages. `synchronous = NORMAL` may lose the last reports on a
//! power cut but never corrupts the database: reports are repeated by every
//! agent pass, so that is the right trade. The schema version is kept in
//! `PRAGMA user_version`; [`MIGRATIONS`] brings an older database up to
//! date, one version per step, each step in one transaction.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use super::store::{Enrollment, FleetStore, MachineRow, ReportRecord, StoreError, TokenRow, TokenStore};

/// The schema this code writes: the number of [`MIGRATIONS`].
const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// `MIGRATIONS[v]` turns a database of schema version `v` into one of
/// version `v + 1` (version 0 is an empty file). Steps are only ever
/// appended: a released step never changes.
const MIGRATIONS: &[&str] = &[SCHEMA_V1, SCHEMA_V2, SCHEMA_V3];

/// Version 1: the machines table.
const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS machines (
    id          TEXT PRIMARY KEY NOT NULL,
    first_seen  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL,
    hostname    TEXT,
    channel     TEXT,
    current     TEXT,
    target      TEXT,
    active_slot TEXT,
    slots       TEXT,
    last_update TEXT,
    boot        TEXT,
    report      TEXT
) STRICT;
";

/// Version 2: machine tokens, by hash.
const SCHEMA_V2: &str = "
CREATE TABLE IF NOT EXISTS machine_tokens (
    machine    TEXT PRIMARY KEY NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    enrolled   INTEGER NOT NULL
) STRICT;
";

/// Version 3: the machine's mode and cache, as its latest report gave
/// them. Columns of their own, not read out of `report`: that raw text may
/// come from a server that did not check these fields yet.
const SCHEMA_V3: &str = "
ALTER TABLE machines ADD COLUMN mode TEXT;
ALTER TABLE machines ADD COLUMN cache TEXT;
";

/// The machines table in a SQLite file.
pub struct SqliteStore {
    name: String,
    // One connection: writes are tiny and SQLite serialises writers anyway;
    // a pool would only add contention on the database lock.
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Open (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let name = path.display().to_string();
        let conn = Connection::open(path).map_err(err(&name, "opening"))?;
        Self::setup(name, conn, true)
    }

    /// A database in memory, for tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        let name = ":memory:".to_string();
        let conn = Connection::open_in_memory().map_err(err(&name, "opening"))?;
        Self::setup(name, conn, false)
    }

    fn setup(name: String, conn: Connection, wal: bool) -> Result<Self, StoreError> {
        // Another process (a backup, sqlite3 by hand) may hold the lock
        // briefly; wait rather than fail a report.
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(err(&name, "setting the busy timeout"))?;
        if wal {
            let mode: String = conn
                .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
                .map_err(err(&name, "switching to WAL mode"))?;
            if !mode.eq_ignore_ascii_case("wal") {
                tracing::warn!("{name}: SQLite kept journal mode {mode} instead of WAL");
            }
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err(&name, "setting synchronous"))?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(err(&name, "reading the schema version"))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError {
                database: name,
                what: "checking the schema version",
                source: format!(
                    "schema version {version} is newer than this slate understands ({SCHEMA_VERSION}); \
                     run a newer slate serve or use another --db"
                )
                .into(),
            });
        }
        for (from, step) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
            // The step and the new version number commit together: a crash
            // leaves the database at `from` or at `from + 1`, never between.
            let batch = format!("BEGIN IMMEDIATE; {step} PRAGMA user_version = {}; COMMIT;", from + 1);
            if let Err(e) = conn.execute_batch(&batch) {
                let _ = conn.execute_batch("ROLLBACK;");
                return Err(err(&name, "upgrading the schema")(e));
            }
        }
        Ok(SqliteStore {
            name,
            conn: Mutex::new(conn),
        })
    }

    /// The database's path, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable
        // (SQLite rolls back the statement), so ignore the poison.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Open the store at `path`, or `REPO/fleet.db` when `path` is `None`.
pub fn open_default(repo_root: &Path, path: Option<&Path>) -> Result<SqliteStore, StoreError> {
    let p: PathBuf = path.map_or_else(|| repo_root.join("fleet.db"), Path::to_path_buf);
    SqliteStore::open(&p)
}

fn err<'a, E: std::error::Error + Send + Sync + 'static>(
    name: &'a str,
    what: &'static str,
) -> impl FnOnce(E) -> StoreError + 'a {
    move |e| StoreError {
        database: name.to_string(),
        what,
        source: Box::new(e),
    }
}

fn json_text(v: &serde_json::Value) -> Option<String> {
    (!v.is_null()).then(|| v.to_string())
}

fn json_value(name: &str, col: &str, text: Option<String>) -> Result<serde_json::Value, StoreError> {
    match text {
        None => Ok(serde_json::Value::Null),
        Some(t) => serde_json::from_str(&t).map_err(|e| StoreError {
            database: name.to_string(),
            what: "reading a JSON column",
            source: format!("column {col}: {e}").into(),
        }),
    }
}

impl FleetStore for SqliteStore {
    fn record_assignment(
        &self,
        machine: &str,
        hostname: Option<&str>,
        channel: Option<&str>,
        now: u64,
    ) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "INSERT INTO machines (id, first_seen, last_seen, hostname, channel)
                 VALUES (?1, ?2, ?2, ?3, ?4)
                 ON CONFLICT(id) DO UPDATE SET
                    last_seen = excluded.last_seen,
                    hostname = COALESCE(excluded.hostname, machines.hostname),
                    channel = COALESCE(excluded.channel, machines.channel)",
                params![machine, now as i64, hostname, channel],
            )
            .map_err(err(&self.name, "recording an assignment"))?;
        Ok(())
    }

    fn record_report(&self, r: &ReportRecord, now: u64) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "INSERT INTO machines (id, first_seen, last_seen, hostname, current, target,
                                       active_slot, slots, last_update, boot, report, mode, cache)
                 VALUES (?1, ?2, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT(id) DO UPDATE SET
                    last_seen = excluded.last_seen,
                    hostname = COALESCE(excluded.hostname, machines.hostname),
                    current = excluded.current,
                    target = excluded.target,
                    active_slot = excluded.active_slot,
                    slots = excluded.slots,
                    last_update = excluded.last_update,
                    boot = excluded.boot,
                    report = excluded.report,
                    mode = excluded.mode,
                    cache = excluded.cache",
                params![
                    r.machine,
                    now as i64,
                    r.hostname,
                    r.current,
                    r.target,
                    r.active_slot,
                    json_text(&r.slots),
                    json_text(&r.last_update),
                    json_text(&r.boot),
                    r.raw,
                    r.mode,
                    json_text(&r.cache),
                ],
            )
            .map_err(err(&self.name, "recording a report"))?;
        Ok(())
    }

    fn machines(&self) -> Result<Vec<MachineRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT id, hostname, channel, current, target, active_slot, slots, last_update, boot,
                        first_seen, last_seen, mode, cache
                 FROM machines ORDER BY id",
            )
            .map_err(err(&self.name, "listing machines"))?;
        type Raw = (
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            i64,
            i64,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<Raw> = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                    r.get(10)?,
                    r.get(11)?,
                    r.get(12)?,
                ))
            })
            .and_then(|it| it.collect())
            .map_err(err(&self.name, "listing machines"))?;
        rows.into_iter()
            .map(
                |(machine, hostname, channel, current, target, active_slot, s, u, b, first, last, mode, cache)| {
                    Ok(MachineRow {
                        machine,
                        hostname,
                        channel,
                        current,
                        target,
                        active_slot,
                        slots: json_value(&self.name, "slots", s)?,
                        last_update: json_value(&self.name, "last_update", u)?,
                        boot: json_value(&self.name, "boot", b)?,
                        mode,
                        cache: json_value(&self.name, "cache", cache)?,
                        first_seen: first.max(0) as u64,
                        last_seen: last.max(0) as u64,
                    })
                },
            )
            .collect()
    }
}

impl TokenStore for SqliteStore {
    fn enroll(&self, machine: &str, token_hash: &str, now: u64, replace: bool) -> Result<Enrollment, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(err(&self.name, "enrolling a machine"))?;
        let had: bool = tx
            .query_row("SELECT 1 FROM machine_tokens WHERE machine = ?1", [machine], |_| Ok(()))
            .optional()
            .map_err(err(&self.name, "enrolling a machine"))?
            .is_some();
        if had && !replace {
            return Ok(Enrollment::AlreadyEnrolled);
        }
        tx.execute(
            "INSERT INTO machine_tokens (machine, token_hash, enrolled) VALUES (?1, ?2, ?3)
             ON CONFLICT(machine) DO UPDATE SET token_hash = excluded.token_hash, enrolled = excluded.enrolled",
            params![machine, token_hash, now as i64],
        )
        .map_err(err(&self.name, "enrolling a machine"))?;
        tx.commit().map_err(err(&self.name, "enrolling a machine"))?;
        Ok(if had {
            Enrollment::Replaced
        } else {
            Enrollment::Enrolled
        })
    }

    fn revoke(&self, machine: &str) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .execute("DELETE FROM machine_tokens WHERE machine = ?1", [machine])
            .map_err(err(&self.name, "revoking a token"))?;
        Ok(n > 0)
    }

    fn machine_for(&self, token_hash: &str) -> Result<Option<String>, StoreError> {
        self.conn()
            .query_row(
                "SELECT machine FROM machine_tokens WHERE token_hash = ?1",
                [token_hash],
                |r| r.get(0),
            )
            .optional()
            .map_err(err(&self.name, "looking up a token"))
    }

    fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT machine, enrolled FROM machine_tokens ORDER BY machine")
            .map_err(err(&self.name, "listing tokens"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(TokenRow {
                    machine: r.get(0)?,
                    enrolled: r.get::<_, i64>(1)?.max(0) as u64,
                })
            })
            .and_then(|it| it.collect())
            .map_err(err(&self.name, "listing tokens"));
        rows
    }
}

impl SqliteStore {
    /// The last report stored for `machine`, as received.
    pub fn last_report(&self, machine: &str) -> Result<Option<String>, StoreError> {
        self.conn()
            .query_row("SELECT report FROM machines WHERE id = ?1", [machine], |r| r.get(0))
            .optional()
            .map(Option::flatten)
            .map_err(err(&self.name, "reading a report"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_then_report_then_list() {
        let dir = tempfile::Builder::new()
            .prefix("slate-fleetdb-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let path = dir.path().join("fleet.db");
        let s = SqliteStore::open(&path).unwrap();
        s.record_assignment("m1", Some("lab-1"), Some("lab"), 100).unwrap();
        s.record_assignment("m0", None, None, 101).unwrap();
        let r = ReportRecord {
            machine: "m1".into(),
            hostname: None,
            current: Some("aa".into()),
            slots: serde_json::json!({"a": "aa", "b": null}),
            last_update: serde_json::json!({"result": "ok"}),
            raw: "{}".into(),
            ..Default::default()
        };
        s.record_report(&r, 150).unwrap();
        drop(s);

        // Reopen: the data and the WAL mode persist.
        let s = SqliteStore::open(&path).unwrap();
        let mode: String = s.conn().query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        let rows = s.machines().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].machine, "m0");
        assert_eq!(rows[0].channel, None);
        let m1 = &rows[1];
        assert_eq!(m1.hostname.as_deref(), Some("lab-1"), "kept from the assignment");
        assert_eq!(m1.channel.as_deref(), Some("lab"));
        assert_eq!(m1.current.as_deref(), Some("aa"));
        assert_eq!(m1.slots["a"], "aa");
        assert_eq!(m1.boot, serde_json::Value::Null);
        assert_eq!((m1.first_seen, m1.last_seen), (100, 150));
        assert_eq!(s.last_report("m1").unwrap().as_deref(), Some("{}"));
        assert_eq!(s.last_report("nobody").unwrap(), None);
    }

    fn scratch_db() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::Builder::new()
            .prefix("slate-fleetdb-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let path = dir.path().join("fleet.db");
        (dir, path)
    }

    #[test]
    fn tokens_enroll_replace_revoke() {
        let (_dir, path) = scratch_db();
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.machine_for("h1").unwrap(), None);
        assert_eq!(s.enroll("lab-07", "h1", 100, false).unwrap(), Enrollment::Enrolled);
        assert_eq!(s.enroll("dmi:42", "h2", 101, false).unwrap(), Enrollment::Enrolled);
        assert_eq!(s.machine_for("h1").unwrap().as_deref(), Some("lab-07"));
        // Without replace, an enrolled machine keeps its token.
        assert_eq!(
            s.enroll("lab-07", "h3", 102, false).unwrap(),
            Enrollment::AlreadyEnrolled
        );
        assert_eq!(s.machine_for("h1").unwrap().as_deref(), Some("lab-07"));
        assert_eq!(s.machine_for("h3").unwrap(), None);
        // A token hash belongs to one machine only.
        assert!(s.enroll("other", "h2", 103, false).is_err());
        drop(s);

        // Another connection (the CLI) replaces the token; the first (the
        // server's) sees it on its next query.
        let server = SqliteStore::open(&path).unwrap();
        let cli = SqliteStore::open(&path).unwrap();
        assert_eq!(cli.enroll("lab-07", "h3", 104, true).unwrap(), Enrollment::Replaced);
        assert_eq!(server.machine_for("h1").unwrap(), None);
        assert_eq!(server.machine_for("h3").unwrap().as_deref(), Some("lab-07"));
        assert_eq!(
            server.tokens().unwrap(),
            [
                TokenRow {
                    machine: "dmi:42".into(),
                    enrolled: 101
                },
                TokenRow {
                    machine: "lab-07".into(),
                    enrolled: 104
                },
            ]
        );
        assert!(cli.revoke("dmi:42").unwrap());
        assert!(!cli.revoke("dmi:42").unwrap());
        assert_eq!(server.machine_for("h2").unwrap(), None);
        assert_eq!(server.tokens().unwrap().len(), 1);
    }

    #[test]
    fn upgrades_a_version_1_database() {
        let (_dir, path) = scratch_db();
        {
            // A database as the first release wrote it, with one machine.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(SCHEMA_V1).unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            c.execute(
                "INSERT INTO machines (id, first_seen, last_seen, hostname) VALUES ('m1', 5, 6, 'old')",
                [],
            )
            .unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        let v: i64 = s.conn().pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let rows = s.machines().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].hostname.as_deref(), Some("old"));
        assert_eq!((rows[0].first_seen, rows[0].last_seen), (5, 6));
        assert_eq!(s.enroll("m1", "h", 7, false).unwrap(), Enrollment::Enrolled);
        assert_eq!(s.machine_for("h").unwrap().as_deref(), Some("m1"));
        drop(s);
        // Opening again changes nothing.
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.tokens().unwrap().len(), 1);
    }

    #[test]
    fn upgrades_a_version_2_database_with_mode_and_cache() {
        let (_dir, path) = scratch_db();
        {
            // A database as version 2 wrote it: a machine with a report
            // (no mode then) and a token.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(SCHEMA_V1).unwrap();
            c.execute_batch(SCHEMA_V2).unwrap();
            c.pragma_update(None, "user_version", 2).unwrap();
            c.execute(
                "INSERT INTO machines (id, first_seen, last_seen, hostname, current, last_update, report)
                 VALUES ('m1', 5, 6, 'old', 'aa', '{\"result\":\"ok\"}', '{}')",
                [],
            )
            .unwrap();
            c.execute(
                "INSERT INTO machine_tokens (machine, token_hash, enrolled) VALUES ('m1', 'h', 7)",
                [],
            )
            .unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        let v: i64 = s.conn().pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(v, 3);
        let rows = s.machines().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].hostname.as_deref(), rows[0].current.as_deref()),
            (Some("old"), Some("aa"))
        );
        assert_eq!(rows[0].last_update["result"], "ok");
        assert_eq!(
            (rows[0].mode.as_deref(), &rows[0].cache),
            (None, &serde_json::Value::Null)
        );
        assert_eq!(s.machine_for("h").unwrap().as_deref(), Some("m1"));

        // New reports carry them; a later report without them clears them
        // (the latest report is the machine as it is now).
        let cached = ReportRecord {
            machine: "m1".into(),
            mode: Some("cached".into()),
            cache: serde_json::json!({"cached_bytes": 42, "total_bytes": 100, "complete": false}),
            raw: "{}".into(),
            ..Default::default()
        };
        s.record_report(&cached, 8).unwrap();
        drop(s);
        let s = SqliteStore::open(&path).unwrap();
        let rows = s.machines().unwrap();
        assert_eq!(rows[0].mode.as_deref(), Some("cached"));
        assert_eq!(rows[0].cache["cached_bytes"], 42);
        s.record_report(
            &ReportRecord {
                machine: "m1".into(),
                raw: "{}".into(),
                ..Default::default()
            },
            9,
        )
        .unwrap();
        let rows = s.machines().unwrap();
        assert_eq!(
            (rows[0].mode.as_deref(), &rows[0].cache),
            (None, &serde_json::Value::Null)
        );
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::Builder::new()
            .prefix("slate-fleetdb-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let path = dir.path().join("fleet.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let e = SqliteStore::open(&path).err().unwrap().to_string();
        assert!(e.contains("newer"), "{e}");
    }
}
