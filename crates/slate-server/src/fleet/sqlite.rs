//! The fleet store in an embedded SQLite database (the default:
//! `REPO/fleet.db`).
//!
//! One table, one row per machine:
//!
//! ```text
//! machines(id TEXT PRIMARY KEY, first_seen, last_seen INTEGER,  -- Unix seconds
//!          hostname, channel, current, target, active_slot TEXT,
//!          slots, last_update, boot, report TEXT)              -- JSON documents
//! ```
//!
//! WAL mode lets `slate fleet status` (a reader) run while reports are
//! written, and makes each write one append to the log instead of a
//! rewrite of pages. `synchronous = NORMAL` may lose the last reports on a
//! power cut but never corrupts the database: reports are repeated by every
//! agent pass, so that is the right trade. The schema version is kept in
//! `PRAGMA user_version`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use super::store::{FleetStore, MachineRow, ReportRecord, StoreError};

/// The schema this code writes.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
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
        conn.execute_batch(SCHEMA).map_err(err(&name, "creating tables"))?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(err(&name, "writing the schema version"))?;
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
                                       active_slot, slots, last_update, boot, report)
                 VALUES (?1, ?2, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT(id) DO UPDATE SET
                    last_seen = excluded.last_seen,
                    hostname = COALESCE(excluded.hostname, machines.hostname),
                    current = excluded.current,
                    target = excluded.target,
                    active_slot = excluded.active_slot,
                    slots = excluded.slots,
                    last_update = excluded.last_update,
                    boot = excluded.boot,
                    report = excluded.report",
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
                        first_seen, last_seen
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
                ))
            })
            .and_then(|it| it.collect())
            .map_err(err(&self.name, "listing machines"))?;
        rows.into_iter()
            .map(
                |(machine, hostname, channel, current, target, active_slot, s, u, b, first, last)| {
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
                        first_seen: first.max(0) as u64,
                        last_seen: last.max(0) as u64,
                    })
                },
            )
            .collect()
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
