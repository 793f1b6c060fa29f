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
//! machine's cache is. Version 4 adds the rollout tables
//! (`super::rollout::sqlite`). Version 5 adds, for the web dashboard,
//! `machines.rule`, `assigned`, `labels` (the latest assignment's fleet
//! rule and snapshot, the machine's labels as JSON), the table
//! `machine_reports(seq, machine, received, report)` of each machine's
//! last [`super::view::REPORT_HISTORY`] reports, and indexes.
//!
//! WAL mode lets `slate fleet status` (a reader) run while reports are
//! written, and makes each write one append to the log instead of a
//! rewrite of pages. `synchronous = NORMAL` may lose the last reports on a
//! power cut but never corrupts the database: reports are repeated by every
//! agent pass, so that is the right trade. The schema version is kept in
//! `PRAGMA user_version`; [`MIGRATIONS`] brings an older database up to
//! date, one version per step, each step in one transaction.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use super::store::{Enrollment, FleetStore, MachineRow, ReportRecord, StoreError, TokenRow, TokenStore};
use super::view::{AssignedRecord, CountBy, MachinePage, MachineQuery, MachineView, StoredReport};

/// The schema this code writes: the number of [`MIGRATIONS`].
const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// `MIGRATIONS[v]` turns a database of schema version `v` into one of
/// version `v + 1` (version 0 is an empty file). Steps are only ever
/// appended: a released step never changes.
pub(crate) const MIGRATIONS: &[&str] = &[
    SCHEMA_V1,
    SCHEMA_V2,
    SCHEMA_V3,
    super::rollout::sqlite::SCHEMA_V4,
    SCHEMA_V5,
];

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

/// Version 5: for the web dashboard (`crate::ui`, `super::view`): the
/// latest assignment's rule, snapshot and the machine's labels, the last
/// reports of each machine, and indexes for the filters and sorts of its
/// machines page.
const SCHEMA_V5: &str = "
ALTER TABLE machines ADD COLUMN rule TEXT;
ALTER TABLE machines ADD COLUMN assigned TEXT;
ALTER TABLE machines ADD COLUMN labels TEXT;
CREATE TABLE IF NOT EXISTS machine_reports (
    seq      INTEGER PRIMARY KEY,
    machine  TEXT NOT NULL,
    received INTEGER NOT NULL,
    report   TEXT NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS machine_reports_by_machine ON machine_reports (machine, seq);
CREATE INDEX IF NOT EXISTS machines_by_channel ON machines (channel, id);
CREATE INDEX IF NOT EXISTS machines_by_rule ON machines (rule, id);
CREATE INDEX IF NOT EXISTS machines_by_last_seen ON machines (last_seen, id);
CREATE INDEX IF NOT EXISTS machines_by_hostname ON machines (hostname, id);
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
        loop {
            // The version is read under the write lock: two processes
            // opening a new database at once (servers of a pool, a server
            // and `slate fleet enroll`) must not both apply a step.
            conn.execute_batch("BEGIN IMMEDIATE;")
                .map_err(err(&name, "reading the schema version"))?;
            let version: i64 = match conn.pragma_query_value(None, "user_version", |r| r.get(0)) {
                Ok(v) => v,
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK;");
                    return Err(err(&name, "reading the schema version")(e));
                }
            };
            if version > SCHEMA_VERSION {
                let _ = conn.execute_batch("ROLLBACK;");
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
            let Some(step) = MIGRATIONS.get(version.max(0) as usize) else {
                conn.execute_batch("COMMIT;")
                    .map_err(err(&name, "reading the schema version"))?;
                break;
            };
            // The step and the new version number commit together: a crash
            // leaves the database at `version` or at `version + 1`, never
            // between.
            let batch = format!("{step} PRAGMA user_version = {}; COMMIT;", version + 1);
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

    pub(crate) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable
        // (SQLite rolls back the statement), so ignore the poison.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
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
        let mut conn = self.conn();
        // The row and the history change together.
        let tx = conn.transaction().map_err(err(&self.name, "recording a report"))?;
        tx.execute(
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
        SqliteStore::view_keep_report(&tx, &r.machine, &r.raw, now).map_err(err(&self.name, "recording a report"))?;
        tx.commit().map_err(err(&self.name, "recording a report"))?;
        Ok(())
    }

    fn record_assigned(&self, machine: &str, a: &AssignedRecord, now: u64) -> Result<(), StoreError> {
        self.view_record_assigned(machine, a, now)
    }

    fn machine_page(&self, q: &MachineQuery, now: u64) -> Result<MachinePage, StoreError> {
        self.view_machine_page(q, now)
    }

    fn machine_view(&self, machine: &str, now: u64) -> Result<Option<MachineView>, StoreError> {
        self.view_machine(machine, now)
    }

    fn machine_reports(&self, machine: &str, limit: usize) -> Result<Vec<StoredReport>, StoreError> {
        self.view_reports(machine, limit)
    }

    fn machine_counts(&self, by: CountBy) -> Result<Vec<(String, u64)>, StoreError> {
        self.view_counts(by)
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
                        rollout: serde_json::Value::Null,
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
    //! What only SQLite does; the behaviour both stores share is tested on
    //! both in `super::super::store_tests`.
    use super::*;

    #[test]
    fn the_file_stays_in_wal_mode() {
        let dir = tempfile::Builder::new()
            .prefix("slate-fleetdb-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let path = dir.path().join("fleet.db");
        let s = SqliteStore::open(&path).unwrap();
        s.record_assignment("m1", Some("lab-1"), Some("lab"), 100).unwrap();
        drop(s);
        let s = SqliteStore::open(&path).unwrap();
        let mode: String = s.conn().query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(s.machines().unwrap().len(), 1);
    }
}
