//! The fleet store's tests run against both backends: an SQLite file in a
//! scratch directory and a database of its own in a throwaway PostgreSQL
//! server ([`crate::testpg`]). [`TestDb`] hides which; [`on_both_stores`]
//! turns one test body into a test per backend.

use std::path::PathBuf;

use super::db::FleetDb;
use super::store::StoreError;
use super::{postgres, sqlite};
use crate::testpg::{off_runtime, PgDatabase};

/// An empty fleet database of either kind, removed (or dropped with its
/// server) at the end of the test.
pub enum TestDb {
    /// `fleet.db` in a scratch directory.
    Sqlite(tempfile::TempDir),
    /// A PostgreSQL database of its own.
    Postgres(PgDatabase),
}

impl TestDb {
    /// An SQLite file in a scratch directory.
    pub fn sqlite() -> TestDb {
        TestDb::Sqlite(
            tempfile::Builder::new()
                .prefix("slate-fleetdb-")
                .tempdir_in("/var/tmp")
                .unwrap(),
        )
    }

    /// A PostgreSQL database, or `None` (said on stderr) without PostgreSQL.
    pub fn postgres() -> Option<TestDb> {
        PgDatabase::new().map(TestDb::Postgres)
    }

    fn sqlite_path(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("fleet.db")
    }

    /// A new store on this database: another connection (another process,
    /// as far as the database can tell), which upgrades its schema.
    pub fn open(&self) -> FleetDb {
        self.try_open().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`TestDb::open`], keeping its error.
    pub fn try_open(&self) -> Result<FleetDb, StoreError> {
        off_runtime(|| match self {
            TestDb::Sqlite(dir) => sqlite::SqliteStore::open(&Self::sqlite_path(dir)).map(FleetDb::from),
            TestDb::Postgres(db) => postgres::PostgresStore::open(&db.url, 4).map(FleetDb::from),
        })
    }

    /// Build the database as an older slate left it: its first `version`
    /// schema steps, the version number, then `sql` (plain SQL that both
    /// databases read alike).
    pub fn make_old(&self, version: usize, sql: &str) {
        match self {
            TestDb::Sqlite(dir) => {
                let c = rusqlite::Connection::open(Self::sqlite_path(dir)).unwrap();
                for step in &sqlite::MIGRATIONS[..version] {
                    c.execute_batch(step).unwrap();
                }
                c.pragma_update(None, "user_version", version as i64).unwrap();
                c.execute_batch(sql).unwrap();
            }
            TestDb::Postgres(db) => {
                let mut c = db.owner();
                for step in &postgres::MIGRATIONS[..version] {
                    c.batch_execute(step).unwrap();
                }
                c.batch_execute(postgres::VERSION_TABLE).unwrap();
                c.execute("INSERT INTO slate_schema (version) VALUES ($1)", &[&(version as i32)])
                    .unwrap();
                c.batch_execute(sql).unwrap();
            }
        }
    }

    /// Set the schema version number alone (as a newer slate would).
    pub fn set_version(&self, version: i64) {
        match self {
            TestDb::Sqlite(dir) => rusqlite::Connection::open(Self::sqlite_path(dir))
                .unwrap()
                .pragma_update(None, "user_version", version)
                .unwrap(),
            TestDb::Postgres(db) => {
                let mut c = db.owner();
                c.batch_execute(postgres::VERSION_TABLE).unwrap();
                c.execute(
                    "INSERT INTO slate_schema (version) VALUES ($1)
                     ON CONFLICT (only_row) DO UPDATE SET version = excluded.version",
                    &[&(version as i32)],
                )
                .unwrap();
            }
        }
    }

    /// The schema version the database is at.
    pub fn version(&self) -> i64 {
        match self {
            TestDb::Sqlite(dir) => rusqlite::Connection::open(Self::sqlite_path(dir))
                .unwrap()
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .unwrap(),
            TestDb::Postgres(db) => {
                let v: i32 = db
                    .owner()
                    .query_one("SELECT version FROM slate_schema", &[])
                    .unwrap()
                    .get(0);
                v.into()
            }
        }
    }
}

/// `on_both_stores!(a, b)`: tests `sqlite::a`, `postgres::a`, ... that run
/// the functions `a(&TestDb)`, ... of the calling module on each backend.
/// The PostgreSQL ones pass, saying `skipped:`, without PostgreSQL.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    super::$name(&$crate::fleet::testdb::TestDb::sqlite());
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $name() {
                    if let Some(db) = $crate::fleet::testdb::TestDb::postgres() {
                        super::$name(&db);
                    }
                }
            )*
        }
    };
}
pub(crate) use on_both_stores;

/// [`on_both_stores`] for async tests: `a(TestDb)` is an `async fn`.
macro_rules! on_both_stores_async {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::fleet::testdb::TestDb::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    if let Some(db) = $crate::fleet::testdb::TestDb::postgres() {
                        super::$name(db).await;
                    }
                }
            )*
        }
    };
}
pub(crate) use on_both_stores_async;
