//! Where the server keeps what machines tell it: one record per machine.
//!
//! A small synchronous trait, like the repository's `Storage`: SQLite
//! ([`super::sqlite::SqliteStore`]) is the default, embedded in the server;
//! PostgreSQL ([`super::postgres::PostgresStore`]), for large fleets and
//! server pools, implements the same calls.
//! The values crossing the trait are plain strings, integers and JSON
//! documents, which map onto TEXT/JSONB columns of either database. Callers
//! on the async runtime go through `spawn_blocking`.

use serde::{Deserialize, Serialize};

use super::view::{AssignedRecord, CountBy, MachinePage, MachineQuery, MachineView, StoredReport};

/// The fleet database failed.
#[derive(Debug, thiserror::Error)]
#[error("fleet database {database}: {what}: {source}")]
pub struct StoreError {
    /// Which database (a path or a connection name).
    pub database: String,
    /// What was being done.
    pub what: &'static str,
    /// The driver's error.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// A checked report, ready to store (see `POST /v1/fleet/report`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportRecord {
    /// Machine id.
    pub machine: String,
    /// Hostname it gave, if any.
    pub hostname: Option<String>,
    /// Snapshot it runs.
    pub current: Option<String>,
    /// Snapshot it is moving to.
    pub target: Option<String>,
    /// Slot it booted from.
    pub active_slot: Option<String>,
    /// Slot name to snapshot id (JSON object).
    pub slots: serde_json::Value,
    /// The last update pass (JSON object or null).
    pub last_update: serde_json::Value,
    /// The last boot (JSON object or null).
    pub boot: serde_json::Value,
    /// How the machine runs (`ab`, `diskless`, `cached`, `live`), if it said.
    pub mode: Option<String>,
    /// A network-booted machine's cache (JSON object or null).
    pub cache: serde_json::Value,
    /// The whole report as received, for fields this version does not read.
    pub raw: String,
}

/// One row of `GET /v1/fleet/machines`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MachineRow {
    /// Machine id.
    pub machine: String,
    /// Last hostname it gave.
    pub hostname: Option<String>,
    /// Channel it was last assigned.
    pub channel: Option<String>,
    /// Snapshot it runs, by its last report.
    pub current: Option<String>,
    /// Snapshot it is moving to.
    pub target: Option<String>,
    /// Slot it booted from.
    pub active_slot: Option<String>,
    /// Slot name to snapshot id.
    pub slots: serde_json::Value,
    /// Its last update pass (`result`, `message`, `bytes_fetched`, `at`).
    pub last_update: serde_json::Value,
    /// Its last boot (`result`, `slot`, `snapshot`).
    pub boot: serde_json::Value,
    /// How it runs, by its last report: `ab`, `diskless`, `cached`,
    /// `live`; null when it did not say (an older agent).
    pub mode: Option<String>,
    /// A network-booted machine's cache, by its last report
    /// (`cached_bytes`, `total_bytes`, `complete`); null when none.
    pub cache: serde_json::Value,
    /// First contact, Unix seconds.
    pub first_seen: u64,
    /// Last contact (assignment or report), Unix seconds.
    pub last_seen: u64,
    /// Its part in its channel's rollout, once it reported on it
    /// (`wave`, `outcome`, `excused`, `rollout`); null otherwise. Filled in
    /// by `GET /v1/fleet/machines`, not stored in this table.
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub rollout: serde_json::Value,
}

/// The machines table.
pub trait FleetStore: Send + Sync {
    /// A machine asked for its assignment at `now` and was given `channel`
    /// (`None` when none could be given): create or touch its record.
    fn record_assignment(
        &self,
        machine: &str,
        hostname: Option<&str>,
        channel: Option<&str>,
        now: u64,
    ) -> Result<(), StoreError>;

    /// Store a machine's report received at `now`, replacing the previous one.
    fn record_report(&self, report: &ReportRecord, now: u64) -> Result<(), StoreError>;

    /// Every machine, ordered by id.
    fn machines(&self) -> Result<Vec<MachineRow>, StoreError>;

    /// How many machines are in each [`MachineState`] at `now` (for
    /// `/metrics`). The default reads [`FleetStore::machines`]; the server
    /// caches the answer for a few seconds, so a scrape every 15 s costs
    /// one pass over the table every 15 s.
    fn machine_states(&self, now: u64) -> Result<StateCounts, StoreError> {
        let mut counts = StateCounts::default();
        for m in self.machines()? {
            counts.add(MachineState::of(&m, now));
        }
        Ok(counts)
    }

    /// A machine was given an assignment at `now`: create or touch its
    /// record with the channel, rule, snapshot and labels (for the
    /// dashboard, `super::view`), in one write.
    fn record_assigned(&self, machine: &str, a: &AssignedRecord, now: u64) -> Result<(), StoreError>;

    /// One page of machines, filtered and sorted in the database.
    fn machine_page(&self, q: &MachineQuery, now: u64) -> Result<MachinePage, StoreError>;

    /// One machine as the dashboard shows it.
    fn machine_view(&self, machine: &str, now: u64) -> Result<Option<MachineView>, StoreError>;

    /// A machine's latest reports (at most `limit`, newest first; the store
    /// keeps [`super::view::REPORT_HISTORY`]).
    fn machine_reports(&self, machine: &str, limit: usize) -> Result<Vec<StoredReport>, StoreError>;

    /// How many machines per channel or per group, by name.
    fn machine_counts(&self, by: CountBy) -> Result<Vec<(String, u64)>, StoreError>;
}

/// A machine is "not seen" when its last request is older than this.
pub const UNSEEN_AFTER: u64 = 86_400;

/// Where a machine stands, by its last request and report; each machine is
/// in exactly one state, the first that applies in this order (docs/operations.md, "Metrics").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MachineState {
    /// No request for [`UNSEEN_AFTER`] seconds.
    Unseen,
    /// Its last update pass failed (`error`, `refused`, `stale`).
    Failed,
    /// Its last boot fell back (`fell-back`, `policy-fell-back`, `rescue`).
    FellBack,
    /// It asked for an assignment but never reported.
    Unknown,
    /// It is moving to another snapshot (`target` differs from `current`,
    /// or its next network boot runs the target).
    Pending,
    /// It runs its target.
    UpToDate,
}

impl MachineState {
    /// Every state, in the order they are tried.
    pub const ALL: [MachineState; 6] = [
        MachineState::Unseen,
        MachineState::Failed,
        MachineState::FellBack,
        MachineState::Unknown,
        MachineState::Pending,
        MachineState::UpToDate,
    ];

    /// The label value in `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            MachineState::Unseen => "unseen",
            MachineState::Failed => "failed",
            MachineState::FellBack => "fell-back",
            MachineState::Pending => "pending",
            MachineState::UpToDate => "up-to-date",
            MachineState::Unknown => "unknown",
        }
    }

    /// The state of `m` at `now`.
    pub fn of(m: &MachineRow, now: u64) -> MachineState {
        let word = |v: &serde_json::Value| v.get("result").and_then(|r| r.as_str()).map(str::to_owned);
        let update = word(&m.last_update);
        let boot = word(&m.boot);
        if now.saturating_sub(m.last_seen) > UNSEEN_AFTER {
            MachineState::Unseen
        } else if update.as_deref().is_some_and(is_update_failure) {
            MachineState::Failed
        } else if boot.as_deref().is_some_and(is_fallback) {
            MachineState::FellBack
        } else if m.current.is_none() {
            MachineState::Unknown
        } else if update.as_deref() == Some("next-boot")
            || m.target.as_ref().is_some_and(|t| Some(t) != m.current.as_ref())
        {
            MachineState::Pending
        } else {
            MachineState::UpToDate
        }
    }
}

/// Whether `last_update.result` says the pass failed.
pub fn is_update_failure(result: &str) -> bool {
    matches!(result, "error" | "refused" | "stale")
}

/// Whether `boot.result` says the machine did not boot what it was meant to.
pub fn is_fallback(result: &str) -> bool {
    matches!(result, "fell-back" | "policy-fell-back" | "rescue")
}

/// Machines per [`MachineState`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateCounts(pub std::collections::BTreeMap<MachineState, u64>);

impl StateCounts {
    /// Count one more machine in `state`.
    pub fn add(&mut self, state: MachineState) {
        *self.0.entry(state).or_insert(0) += 1;
    }

    /// Machines in `state`.
    pub fn get(&self, state: MachineState) -> u64 {
        self.0.get(&state).copied().unwrap_or(0)
    }
}

/// One enrolled machine in [`TokenStore::tokens`]: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRow {
    /// Machine id.
    pub machine: String,
    /// When its current token was issued, Unix seconds.
    pub enrolled: u64,
}

/// What [`TokenStore::enroll`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enrollment {
    /// The machine had no token; it has one now.
    Enrolled,
    /// The machine's token was replaced (the old one no longer works).
    Replaced,
    /// The machine already has a token and `replace` was false: nothing changed.
    AlreadyEnrolled,
}

/// The machines' tokens, kept as hashes only (see `crate::auth`): the
/// database never holds anything a client could present. Another small
/// synchronous trait, so the token table moves along with the machines
/// table to another database.
pub trait TokenStore: Send + Sync {
    /// Give `machine` the token whose hash is `token_hash` (issued at `now`).
    /// An enrolled machine keeps its token unless `replace` is set.
    fn enroll(&self, machine: &str, token_hash: &str, now: u64, replace: bool) -> Result<Enrollment, StoreError>;

    /// Remove `machine`'s token; false when it had none.
    fn revoke(&self, machine: &str) -> Result<bool, StoreError>;

    /// The machine a token hash belongs to, if any (an indexed lookup by
    /// hash, so nothing compares secrets byte by byte).
    fn machine_for(&self, token_hash: &str) -> Result<Option<String>, StoreError>;

    /// Every enrolled machine, ordered by id.
    fn tokens(&self) -> Result<Vec<TokenRow>, StoreError>;
}
