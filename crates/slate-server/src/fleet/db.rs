//! Which database holds the fleet store, from `--db`: an SQLite file (the
//! default, `REPO/fleet.db`, needing no setup) or a PostgreSQL URL; and
//! the opened store, whichever it is. `slate serve` and `slate fleet
//! enroll/revoke/tokens` read `--db` through here, so they cannot disagree
//! about where the tokens are.

use std::path::{Path, PathBuf};

use super::postgres::PostgresStore;
use super::sqlite::SqliteStore;
use super::store::{Enrollment, FleetStore, MachineRow, ReportRecord, StoreError, TokenRow, TokenStore};
use super::view::{AssignedRecord, CountBy, MachinePage, MachineQuery, MachineView, StoredReport};

/// Where the fleet store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// An SQLite file (created if missing).
    Sqlite(PathBuf),
    /// A PostgreSQL URL, `postgres://` or `postgresql://`.
    Postgres(String),
}

impl Database {
    /// The database `--db ARG` names, or `REPO/fleet.db` without one. A
    /// `postgres://` or `postgresql://` URL is PostgreSQL; `sqlite:PATH`
    /// or any other value is the path of an SQLite file.
    pub fn from_arg(repo_root: &Path, arg: Option<&Path>) -> Database {
        let Some(arg) = arg else {
            return Database::Sqlite(repo_root.join("fleet.db"));
        };
        match arg.to_str() {
            Some(s) if s.starts_with("postgres://") || s.starts_with("postgresql://") => {
                Database::Postgres(s.to_string())
            }
            Some(s) if s.starts_with("sqlite:") => Database::Sqlite(PathBuf::from(&s["sqlite:".len()..])),
            _ => Database::Sqlite(arg.to_path_buf()),
        }
    }

    /// Open it (and bring its schema up to date); a PostgreSQL store keeps
    /// at most `connections` connections, SQLite always one.
    pub fn open(&self, connections: u32) -> Result<FleetDb, StoreError> {
        Ok(match self {
            Database::Sqlite(p) => FleetDb::Sqlite(SqliteStore::open(p)?),
            Database::Postgres(url) => FleetDb::Postgres(PostgresStore::open(url, connections)?),
        })
    }
}

/// An opened fleet store: what `slate serve` and the token commands use.
pub enum FleetDb {
    /// In an SQLite file.
    Sqlite(SqliteStore),
    /// In a PostgreSQL database.
    Postgres(PostgresStore),
}

impl FleetDb {
    /// The database's path or URL (without password), for messages.
    pub fn name(&self) -> &str {
        match self {
            FleetDb::Sqlite(s) => s.name(),
            FleetDb::Postgres(s) => s.name(),
        }
    }

    /// The last report stored for `machine`, as received.
    pub fn last_report(&self, machine: &str) -> Result<Option<String>, StoreError> {
        match self {
            FleetDb::Sqlite(s) => s.last_report(machine),
            FleetDb::Postgres(s) => s.last_report(machine),
        }
    }
}

impl From<SqliteStore> for FleetDb {
    fn from(s: SqliteStore) -> Self {
        FleetDb::Sqlite(s)
    }
}

impl From<PostgresStore> for FleetDb {
    fn from(s: PostgresStore) -> Self {
        FleetDb::Postgres(s)
    }
}

/// Calls `$call` on whichever store `$db` is.
macro_rules! either {
    ($db:expr, $s:ident => $call:expr) => {
        match $db {
            FleetDb::Sqlite($s) => $call,
            FleetDb::Postgres($s) => $call,
        }
    };
}

impl FleetStore for FleetDb {
    fn record_assignment(
        &self,
        machine: &str,
        hostname: Option<&str>,
        channel: Option<&str>,
        now: u64,
    ) -> Result<(), StoreError> {
        either!(self, s => s.record_assignment(machine, hostname, channel, now))
    }

    fn record_report(&self, report: &ReportRecord, now: u64) -> Result<(), StoreError> {
        either!(self, s => s.record_report(report, now))
    }

    fn machines(&self) -> Result<Vec<MachineRow>, StoreError> {
        either!(self, s => s.machines())
    }

    fn record_assigned(&self, machine: &str, a: &AssignedRecord, now: u64) -> Result<(), StoreError> {
        either!(self, s => s.record_assigned(machine, a, now))
    }

    fn machine_page(&self, q: &MachineQuery, now: u64) -> Result<MachinePage, StoreError> {
        either!(self, s => s.machine_page(q, now))
    }

    fn machine_view(&self, machine: &str, now: u64) -> Result<Option<MachineView>, StoreError> {
        either!(self, s => s.machine_view(machine, now))
    }

    fn machine_reports(&self, machine: &str, limit: usize) -> Result<Vec<StoredReport>, StoreError> {
        either!(self, s => s.machine_reports(machine, limit))
    }

    fn machine_counts(&self, by: CountBy) -> Result<Vec<(String, u64)>, StoreError> {
        either!(self, s => s.machine_counts(by))
    }
}

impl TokenStore for FleetDb {
    fn enroll(&self, machine: &str, token_hash: &str, now: u64, replace: bool) -> Result<Enrollment, StoreError> {
        either!(self, s => s.enroll(machine, token_hash, now, replace))
    }

    fn revoke(&self, machine: &str) -> Result<bool, StoreError> {
        either!(self, s => s.revoke(machine))
    }

    fn machine_for(&self, token_hash: &str) -> Result<Option<String>, StoreError> {
        either!(self, s => s.machine_for(token_hash))
    }

    fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        either!(self, s => s.tokens())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_argument_forms() {
        let repo = Path::new("/srv/slate");
        assert_eq!(
            Database::from_arg(repo, None),
            Database::Sqlite("/srv/slate/fleet.db".into())
        );
        for (arg, want) in [
            (
                "/var/lib/slate/fleet.db",
                Database::Sqlite("/var/lib/slate/fleet.db".into()),
            ),
            ("fleet.db", Database::Sqlite("fleet.db".into())),
            ("sqlite:/var/lib/x.db", Database::Sqlite("/var/lib/x.db".into())),
            (
                "postgres://slate@db/slate",
                Database::Postgres("postgres://slate@db/slate".into()),
            ),
            (
                "postgresql://slate@db:5433/slate",
                Database::Postgres("postgresql://slate@db:5433/slate".into()),
            ),
        ] {
            assert_eq!(Database::from_arg(repo, Some(Path::new(arg))), want, "{arg}");
        }
    }
}
