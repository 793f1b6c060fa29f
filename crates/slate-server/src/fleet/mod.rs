//! The fleet: which machine runs which channel ([`config`], FLEET.toml),
//! what machines report ([`store`], with [`sqlite`] as the default
//! backend), and the HTTP endpoints over both ([`api`]).

pub mod api;
pub mod config;
pub mod machine;
pub mod sign;
pub mod sqlite;
pub mod store;

pub use config::{FleetConfig, FleetFileError};
pub use machine::Machine;
pub use sqlite::SqliteStore;
pub use store::{Enrollment, FleetStore, MachineRow, ReportRecord, StoreError, TokenRow, TokenStore};
