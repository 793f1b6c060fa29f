//! The fleet store in PostgreSQL (`slate serve --db postgres://...`): for
//! a fleet whose reports one server's SQLite file should not carry alone,
//! or for several servers sharing one database. docs/scale.md says how to
//! set it up.
//!
//! The same two tables as the SQLite store ([`super::sqlite`]), built by
//! the same steps, so a schema version means the same thing in both:
//!
//! ```text
//! machines(id TEXT COLLATE "C" PRIMARY KEY, first_seen, last_seen BIGINT, -- Unix seconds
//!          hostname, channel, current, target, active_slot TEXT,
//!          slots, last_update, boot JSONB,                                -- checked documents
//!          report TEXT,                                                   -- the report as received
//!          mode TEXT, cache JSONB,                                        -- since version 3
//!          rule, assigned TEXT, labels JSONB)                             -- since version 5
//! machine_reports(seq BIGSERIAL PRIMARY KEY, machine TEXT,                -- since version 5:
//!                 received BIGINT, report TEXT)                           -- the last reports
//! machine_tokens(machine TEXT COLLATE "C" PRIMARY KEY,                    -- since version 2
//!                token_hash TEXT UNIQUE, enrolled BIGINT)
//! slate_schema(only_row BOOLEAN PRIMARY KEY, version INTEGER)             -- one row
//! ```
//!
//! Ids are collated "C" (byte order) so that "ordered by id" is the order
//! SQLite gives, whatever locale the database was created with. The
//! documents the server checked and wrote itself are JSONB, so an
//! administrator can query them (`last_update->>'result'`); the raw report
//! stays TEXT because it is kept as received, fields this version does not
//! read included, and JSONB would normalise it.
//!
//! The traits are synchronous and handlers call them through
//! `spawn_blocking`, so this uses the synchronous `postgres` client and an
//! r2d2 pool of its connections. Connections are plain TCP or a Unix
//! socket: this build has no TLS for PostgreSQL, and refuses
//! `sslmode=require` rather than pretend.

use std::str::FromStr;
use std::time::Duration;

use ::postgres::config::SslMode;
use ::postgres::{Client, Config, NoTls};
use r2d2_postgres::PostgresConnectionManager;

use super::store::{Enrollment, FleetStore, MachineRow, ReportRecord, StoreError, TokenRow, TokenStore};
use super::view::{AssignedRecord, CountBy, MachinePage, MachineQuery, MachineView, StoredReport};

/// The schema this code writes: the number of [`MIGRATIONS`].
const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// `MIGRATIONS[v]` turns a database of schema version `v` into one of
/// version `v + 1` (version 0 has no slate tables). The steps mirror the
/// SQLite store's; like them, a released step never changes.
pub(crate) const MIGRATIONS: &[&str] = &[
    SCHEMA_V1,
    SCHEMA_V2,
    SCHEMA_V3,
    super::rollout::postgres::SCHEMA_V4,
    SCHEMA_V5,
];

/// Version 1: the machines table.
const SCHEMA_V1: &str = r#"
CREATE TABLE machines (
    id          TEXT COLLATE "C" PRIMARY KEY,
    first_seen  BIGINT NOT NULL,
    last_seen   BIGINT NOT NULL,
    hostname    TEXT,
    channel     TEXT,
    current     TEXT,
    target      TEXT,
    active_slot TEXT,
    slots       JSONB,
    last_update JSONB,
    boot        JSONB,
    report      TEXT
);
"#;

/// Version 2: machine tokens, by hash.
const SCHEMA_V2: &str = r#"
CREATE TABLE machine_tokens (
    machine    TEXT COLLATE "C" PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    enrolled   BIGINT NOT NULL
);
"#;

/// Version 3: the machine's mode and cache, as its latest report gave them.
const SCHEMA_V3: &str = "
ALTER TABLE machines ADD COLUMN mode TEXT, ADD COLUMN cache JSONB;
";

/// Version 5: for the web dashboard, as in the SQLite store: the latest
/// assignment's rule and snapshot, the labels, the last reports of each
/// machine, and indexes for the dashboard's filters and sorts.
const SCHEMA_V5: &str = r#"
ALTER TABLE machines ADD COLUMN rule TEXT, ADD COLUMN assigned TEXT, ADD COLUMN labels JSONB;
CREATE TABLE machine_reports (
    seq      BIGSERIAL PRIMARY KEY,
    machine  TEXT COLLATE "C" NOT NULL,
    received BIGINT NOT NULL,
    report   TEXT NOT NULL
);
CREATE INDEX machine_reports_by_machine ON machine_reports (machine, seq);
CREATE INDEX machines_by_channel ON machines (channel, id);
CREATE INDEX machines_by_rule ON machines (rule, id);
CREATE INDEX machines_by_last_seen ON machines (last_seen, id);
CREATE INDEX machines_by_hostname ON machines (hostname, id);
"#;

/// Where the schema version is kept: one row, created before the first
/// step (PostgreSQL has no `user_version` to hold it).
pub(crate) const VERSION_TABLE: &str = "
CREATE TABLE IF NOT EXISTS slate_schema (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    version  INTEGER NOT NULL
);
";

/// The advisory lock the schema steps take ("slate" in ASCII): servers of
/// a pool that start together upgrade one after the other, and all but the
/// first find nothing left to do.
const MIGRATION_LOCK: i64 = 0x73_6c_61_74_65;

/// Connections `slate serve` keeps by default (`--db-connections`).
pub const DEFAULT_CONNECTIONS: u32 = 16;

/// How long a request waits for a connection, or a new connection for the
/// server: under the handlers' 30 s limit, so the answer is a logged
/// database error rather than a bare timeout.
const WAIT: Duration = Duration::from_secs(10);

type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

/// The machines and tokens tables in a PostgreSQL database.
pub struct PostgresStore {
    /// The URL, its password hidden, for messages.
    name: String,
    pool: OffRuntime,
}

/// The pool, dropped where a runtime may be started: a `postgres` client
/// says goodbye to the server from inside its own small tokio runtime,
/// which tokio refuses on a thread that is driving async tasks (the last
/// [`crate::AppState`] may well be dropped by one).
struct OffRuntime(Option<Pool>);

impl Drop for OffRuntime {
    fn drop(&mut self) {
        let Some(pool) = self.0.take() else { return };
        if tokio::runtime::Handle::try_current().is_ok() {
            let _ = std::thread::spawn(move || drop(pool)).join();
        }
    }
}

/// r2d2 reports failed background connections through this (it would
/// otherwise use the `log` crate, which nothing here listens to).
#[derive(Debug)]
struct LogErrors {
    name: String,
}

impl r2d2::HandleError<::postgres::Error> for LogErrors {
    fn handle_error(&self, e: ::postgres::Error) {
        tracing::warn!("fleet database {}: connecting: {}", self.name, chain(&e));
    }
}

/// An error and its causes on one line (the driver's own message is terse:
/// "db error", with the server's message as its source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// `url` with any password replaced by `***`: the name goes into messages
/// and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
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

fn refused(name: &str, what: &'static str, why: String) -> StoreError {
    StoreError {
        database: name.to_string(),
        what,
        source: why.into(),
    }
}

impl PostgresStore {
    /// Connect to the database at `url` (`postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?...]`),
    /// bring its schema up to date, and keep a pool of at most
    /// `connections` connections.
    pub fn open(url: &str, connections: u32) -> Result<Self, StoreError> {
        let name = redact(url);
        let mut config = Config::from_str(url).map_err(err(&name, "reading the database URL"))?;
        if config.get_ssl_mode() == SslMode::Require {
            return Err(refused(
                &name,
                "reading the database URL",
                "sslmode=require, but this slate connects to PostgreSQL without TLS; \
                 use a local socket or a trusted network and sslmode=disable"
                    .into(),
            ));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(WAIT);
        }
        if config.get_application_name().is_none() {
            // What pg_stat_activity shows an administrator.
            config.application_name("slate");
        }
        // One connection first, outside the pool: a wrong URL, password or
        // database is one error now, not a pool timing out later.
        let mut client = config.connect(NoTls).map_err(err(&name, "connecting"))?;
        migrate(&mut client, &name)?;
        drop(client);
        let pool = Pool::builder()
            .max_size(connections.max(1))
            // Connections are opened as requests need them.
            .min_idle(Some(1))
            .connection_timeout(WAIT)
            // A connection the server closed (a restart, a failover) is
            // noticed here, before a request uses it, for one round trip.
            .test_on_check_out(true)
            .error_handler(Box::new(LogErrors { name: name.clone() }))
            .build_unchecked(PostgresConnectionManager::new(config, NoTls));
        Ok(PostgresStore {
            name,
            pool: OffRuntime(Some(pool)),
        })
    }

    /// The database's URL without its password, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn client(
        &self,
        what: &'static str,
    ) -> Result<r2d2::PooledConnection<PostgresConnectionManager<NoTls>>, StoreError> {
        let pool = self.pool.0.as_ref().expect("the pool is only taken on drop");
        pool.get().map_err(err(&self.name, what))
    }

    /// The last report stored for `machine`, as received.
    pub fn last_report(&self, machine: &str) -> Result<Option<String>, StoreError> {
        const WHAT: &str = "reading a report";
        let row = self
            .client(WHAT)?
            .query_opt("SELECT report FROM machines WHERE id = $1", &[&machine])
            .map_err(err(&self.name, WHAT))?;
        Ok(row.and_then(|r| r.get(0)))
    }
}

/// Bring the database to [`SCHEMA_VERSION`], one step per transaction
/// (PostgreSQL's DDL is transactional: a failed step leaves the previous
/// version whole), each under [`MIGRATION_LOCK`].
fn migrate(client: &mut Client, name: &str) -> Result<(), StoreError> {
    loop {
        let mut tx = client.transaction().map_err(err(name, "reading the schema version"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .map_err(err(name, "reading the schema version"))?;
        tx.batch_execute(VERSION_TABLE)
            .map_err(err(name, "reading the schema version"))?;
        let version: i32 = tx
            .query_opt("SELECT version FROM slate_schema", &[])
            .map_err(err(name, "reading the schema version"))?
            .map_or(0, |r| r.get(0));
        if version > SCHEMA_VERSION {
            return Err(refused(
                name,
                "checking the schema version",
                format!(
                    "schema version {version} is newer than this slate understands ({SCHEMA_VERSION}); \
                     run a newer slate serve or use another --db"
                ),
            ));
        }
        let Some(step) = MIGRATIONS.get(version.max(0) as usize) else {
            return tx.commit().map_err(err(name, "reading the schema version"));
        };
        // The step and the new version number commit together.
        tx.batch_execute(step).map_err(err(name, "upgrading the schema"))?;
        tx.execute(
            "INSERT INTO slate_schema (only_row, version) VALUES (TRUE, $1)
             ON CONFLICT (only_row) DO UPDATE SET version = excluded.version",
            &[&(version + 1)],
        )
        .map_err(err(name, "upgrading the schema"))?;
        tx.commit().map_err(err(name, "upgrading the schema"))?;
        tracing::info!("fleet database {name}: schema upgraded to version {}", version + 1);
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

/// Unix seconds as stored (BIGINT); times past 2^63 do not occur.
fn secs(now: u64) -> i64 {
    i64::try_from(now).unwrap_or(i64::MAX)
}

impl FleetStore for PostgresStore {
    fn record_assignment(
        &self,
        machine: &str,
        hostname: Option<&str>,
        channel: Option<&str>,
        now: u64,
    ) -> Result<(), StoreError> {
        const WHAT: &str = "recording an assignment";
        self.client(WHAT)?
            .execute(
                "INSERT INTO machines (id, first_seen, last_seen, hostname, channel)
                 VALUES ($1, $2, $2, $3, $4)
                 ON CONFLICT (id) DO UPDATE SET
                    last_seen = excluded.last_seen,
                    hostname = COALESCE(excluded.hostname, machines.hostname),
                    channel = COALESCE(excluded.channel, machines.channel)",
                &[&machine, &secs(now), &hostname, &channel],
            )
            .map_err(err(&self.name, WHAT))?;
        Ok(())
    }

    fn record_report(&self, r: &ReportRecord, now: u64) -> Result<(), StoreError> {
        const WHAT: &str = "recording a report";
        // JSON goes as text and is cast by the server: the driver's own
        // JSONB encoding would need another feature for the same bytes.
        let mut c = self.client(WHAT)?;
        // The row and the history change together.
        let mut tx = c.transaction().map_err(err(&self.name, WHAT))?;
        tx.execute(
            "INSERT INTO machines (id, first_seen, last_seen, hostname, current, target,
                                       active_slot, slots, last_update, boot, report, mode, cache)
                 VALUES ($1, $2, $2, $3, $4, $5, $6, $7::text::jsonb, $8::text::jsonb, $9::text::jsonb,
                         $10, $11, $12::text::jsonb)
                 ON CONFLICT (id) DO UPDATE SET
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
            &[
                &r.machine,
                &secs(now),
                &r.hostname,
                &r.current,
                &r.target,
                &r.active_slot,
                &json_text(&r.slots),
                &json_text(&r.last_update),
                &json_text(&r.boot),
                &r.raw,
                &r.mode,
                &json_text(&r.cache),
            ],
        )
        .map_err(err(&self.name, WHAT))?;
        PostgresStore::view_keep_report(&mut tx, &r.machine, &r.raw, secs(now)).map_err(err(&self.name, WHAT))?;
        tx.commit().map_err(err(&self.name, WHAT))?;
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
        const WHAT: &str = "listing machines";
        let rows = self
            .client(WHAT)?
            .query(
                "SELECT id, hostname, channel, current, target, active_slot,
                        slots::text, last_update::text, boot::text,
                        first_seen, last_seen, mode, cache::text
                 FROM machines ORDER BY id",
                &[],
            )
            .map_err(err(&self.name, WHAT))?;
        rows.into_iter()
            .map(|r| {
                Ok(MachineRow {
                    machine: r.try_get(0).map_err(err(&self.name, WHAT))?,
                    hostname: r.try_get(1).map_err(err(&self.name, WHAT))?,
                    channel: r.try_get(2).map_err(err(&self.name, WHAT))?,
                    current: r.try_get(3).map_err(err(&self.name, WHAT))?,
                    target: r.try_get(4).map_err(err(&self.name, WHAT))?,
                    active_slot: r.try_get(5).map_err(err(&self.name, WHAT))?,
                    slots: json_value(&self.name, "slots", r.try_get(6).map_err(err(&self.name, WHAT))?)?,
                    last_update: json_value(&self.name, "last_update", r.try_get(7).map_err(err(&self.name, WHAT))?)?,
                    boot: json_value(&self.name, "boot", r.try_get(8).map_err(err(&self.name, WHAT))?)?,
                    first_seen: r.try_get::<_, i64>(9).map_err(err(&self.name, WHAT))?.max(0) as u64,
                    last_seen: r.try_get::<_, i64>(10).map_err(err(&self.name, WHAT))?.max(0) as u64,
                    rollout: serde_json::Value::Null,
                    mode: r.try_get(11).map_err(err(&self.name, WHAT))?,
                    cache: json_value(&self.name, "cache", r.try_get(12).map_err(err(&self.name, WHAT))?)?,
                })
            })
            .collect()
    }
}

impl TokenStore for PostgresStore {
    fn enroll(&self, machine: &str, token_hash: &str, now: u64, replace: bool) -> Result<Enrollment, StoreError> {
        const WHAT: &str = "enrolling a machine";
        let mut c = self.client(WHAT)?;
        // Each statement is atomic by itself, so two enrollments at once
        // (two administrators, two servers) cannot both think they
        // enrolled a new machine: the insert that loses finds the row.
        loop {
            if replace {
                let n = c
                    .execute(
                        "UPDATE machine_tokens SET token_hash = $2, enrolled = $3 WHERE machine = $1",
                        &[&machine, &token_hash, &secs(now)],
                    )
                    .map_err(err(&self.name, WHAT))?;
                if n > 0 {
                    return Ok(Enrollment::Replaced);
                }
            }
            let n = c
                .execute(
                    "INSERT INTO machine_tokens (machine, token_hash, enrolled) VALUES ($1, $2, $3)
                     ON CONFLICT (machine) DO NOTHING",
                    &[&machine, &token_hash, &secs(now)],
                )
                .map_err(err(&self.name, WHAT))?;
            match (n > 0, replace) {
                (true, _) => return Ok(Enrollment::Enrolled),
                (false, false) => return Ok(Enrollment::AlreadyEnrolled),
                // Enrolled by someone else between the two statements:
                // replace that token.
                (false, true) => continue,
            }
        }
    }

    fn revoke(&self, machine: &str) -> Result<bool, StoreError> {
        const WHAT: &str = "revoking a token";
        let n = self
            .client(WHAT)?
            .execute("DELETE FROM machine_tokens WHERE machine = $1", &[&machine])
            .map_err(err(&self.name, WHAT))?;
        Ok(n > 0)
    }

    fn machine_for(&self, token_hash: &str) -> Result<Option<String>, StoreError> {
        const WHAT: &str = "looking up a token";
        let row = self
            .client(WHAT)?
            .query_opt(
                "SELECT machine FROM machine_tokens WHERE token_hash = $1",
                &[&token_hash],
            )
            .map_err(err(&self.name, WHAT))?;
        row.map(|r| r.try_get(0)).transpose().map_err(err(&self.name, WHAT))
    }

    fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        const WHAT: &str = "listing tokens";
        let rows = self
            .client(WHAT)?
            .query("SELECT machine, enrolled FROM machine_tokens ORDER BY machine", &[])
            .map_err(err(&self.name, WHAT))?;
        rows.into_iter()
            .map(|r| {
                Ok(TokenRow {
                    machine: r.try_get(0).map_err(err(&self.name, WHAT))?,
                    enrolled: r.try_get::<_, i64>(1).map_err(err(&self.name, WHAT))?.max(0) as u64,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_names() {
        assert_eq!(
            redact("postgres://slate:s3cret@db.example.org:5432/fleet?sslmode=disable"),
            "postgres://slate:***@db.example.org:5432/fleet?sslmode=disable"
        );
        assert_eq!(redact("postgres://slate@db/fleet"), "postgres://slate@db/fleet");
        assert_eq!(redact("postgresql://db/fleet"), "postgresql://db/fleet");
        // An '@' in the password: the host is after the last one.
        assert_eq!(redact("postgres://u:a@b@h/d"), "postgres://u:***@h/d");
    }

    #[test]
    fn a_socket_directory_is_a_host() {
        // The form docs/scale.md gives for peer authentication.
        let c = Config::from_str("postgres://slate@%2Fvar%2Frun%2Fpostgresql/slate").unwrap();
        assert_eq!(
            c.get_hosts(),
            [::postgres::config::Host::Unix("/var/run/postgresql".into())]
        );
    }

    #[test]
    fn tls_is_refused_not_pretended() {
        let e = PostgresStore::open("postgres://slate@127.0.0.1:1/fleet?sslmode=require", 1)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("without TLS"), "{e}");
        let e = PostgresStore::open("postgres://slate:pw@127.0.0.1:1/fleet?sslmode=bogus", 1)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("postgres://slate:***@127.0.0.1:1/fleet") && !e.contains("pw"),
            "{e}"
        );
    }
}
