//! The fleet: which machine runs which channel ([`config`], FLEET.toml),
//! what machines report ([`store`], with [`sqlite`] as the default
//! backend and [`postgres`] for large fleets, chosen by [`db`]), and the
//! HTTP endpoints over both ([`api`]); phased rollouts of new heads
//! ([`rollout`]); what the web dashboard reads ([`view`]).

pub mod api;
pub mod config;
pub mod db;
pub mod ldap;
pub mod machine;
pub mod postgres;
pub mod rollout;
pub mod sign;
pub mod sqlite;
pub mod store;
pub mod view;

#[cfg(test)]
mod store_tests;
#[cfg(test)]
pub(crate) mod testdb;
#[cfg(test)]
mod view_tests;

pub use config::{FleetConfig, FleetFileError};
pub use db::{Database, FleetDb};
pub use machine::Machine;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use store::{
    Enrollment, FleetStore, MachineRow, MachineState, ReportRecord, StateCounts, StoreError, TokenRow, TokenStore,
};
