//! Where rollouts are kept: in the fleet database beside the machines, so
//! that every server of a pool (and every restart) sees the same rollout,
//! the same wave and the same halt. Two tables, schema version 4:
//!
//! ```text
//! rollouts(channel, seq,            -- key: the channel's seq-th rollout
//!          previous, head,          -- snapshot ids (64 hex)
//!          started, state, wave, wave_started, reason, changed,
//!          version,                 -- bumped by every change (compare-and-set)
//!          pin_previous)            -- the previous head is sent pinned
//! rollout_machines(channel, seq, machine,  -- key
//!          wave, outcome, excused, first_report, last_report)
//! ```
//!
//! Changes are compare-and-set on `version`: two servers deciding at once
//! (one halts, the other releases a wave) cannot both win; the loser reads
//! the record again and decides again.

use serde::{Deserialize, Serialize};

use crate::fleet::db::FleetDb;
use crate::fleet::store::StoreError;

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutState {
    /// Waves are released as their soak times pass.
    Running,
    /// Stopped by an administrator: no further wave until resumed.
    Paused,
    /// Stopped by itself (too many failures): no further wave until resumed.
    Halted,
    /// Called off: every machine is sent the previous head.
    Aborted,
    /// Every wave is released.
    Complete,
}

impl RolloutState {
    /// The word stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Halted => "halted",
            RolloutState::Aborted => "aborted",
            RolloutState::Complete => "complete",
        }
    }

    /// The state a stored word names.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => RolloutState::Running,
            "paused" => RolloutState::Paused,
            "halted" => RolloutState::Halted,
            "aborted" => RolloutState::Aborted,
            "complete" => RolloutState::Complete,
            _ => return None,
        })
    }
}

/// One rollout of a channel: from `previous` to `head`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutRecord {
    /// The channel.
    pub channel: String,
    /// Its number among the channel's rollouts (from 1).
    pub seq: i64,
    /// The snapshot machines not yet reached keep (64 hex).
    pub previous: String,
    /// The new head (64 hex).
    pub head: String,
    /// When it started, Unix seconds.
    pub started: u64,
    /// Where it stands.
    pub state: RolloutState,
    /// The last wave released: 0 the canaries, then 1, 2, ...
    pub wave: u32,
    /// When that wave was released (or the rollout resumed), Unix seconds.
    pub wave_started: u64,
    /// Why it is halted, paused, aborted or complete, for people.
    pub reason: Option<String>,
    /// When it last changed, Unix seconds.
    pub changed: u64,
    /// Bumped by every change.
    pub version: i64,
    /// Whether machines sent the previous head get it pinned: some of them
    /// may have run a newer snapshot already (an aborted rollout, or one
    /// that replaced a rollout in progress), and agents accept an older
    /// snapshot than one they ran only when the fleet pins it.
    pub pin_previous: bool,
}

impl RolloutRecord {
    /// The record a channel starts with: its head as the server first saw
    /// it, released to everyone (there is nothing to roll out yet).
    pub fn is_baseline(&self) -> bool {
        self.previous == self.head
    }
}

/// What a machine in a released wave reported about the new head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// It runs the new head.
    Updated,
    /// Not there yet (downloading, waiting for its reboot).
    Pending,
    /// It booted the new head's slot, which failed, and runs its old slot.
    FellBack,
    /// It runs the new head but its boot did not come up as declared
    /// (`rescue`, `policy-fell-back`).
    BootFailed,
    /// Its update pass to the new head failed (`error`).
    UpdateFailed,
}

impl Outcome {
    /// The word stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Updated => "updated",
            Outcome::Pending => "pending",
            Outcome::FellBack => "fell-back",
            Outcome::BootFailed => "boot-failed",
            Outcome::UpdateFailed => "update-failed",
        }
    }

    /// The outcome a stored word names.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "updated" => Outcome::Updated,
            "pending" => Outcome::Pending,
            "fell-back" => Outcome::FellBack,
            "boot-failed" => Outcome::BootFailed,
            "update-failed" => Outcome::UpdateFailed,
            _ => return None,
        })
    }

    /// Whether it counts against the rollout.
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::FellBack | Outcome::BootFailed | Outcome::UpdateFailed)
    }
}

/// The failure words, as SQL: a failure, once stored, stays (see
/// [`RolloutStore::record_outcome`]).
pub(crate) const FAILURES_SQL: &str = "('fell-back', 'boot-failed', 'update-failed')";

/// How many machines of one wave ended how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeCount {
    /// The wave.
    pub wave: u32,
    /// The outcome.
    pub outcome: Outcome,
    /// Whether these failures were excused by a resume.
    pub excused: bool,
    /// How many machines.
    pub machines: u64,
}

/// One machine's part in its channel's latest rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The channel.
    pub channel: String,
    /// The rollout.
    pub seq: i64,
    /// The machine.
    pub machine: String,
    /// Its wave.
    pub wave: u32,
    /// Its outcome so far.
    pub outcome: Outcome,
    /// Whether its failure was excused by a resume.
    pub excused: bool,
}

/// The rollouts tables. Synchronous, like the other stores; callers on
/// the async runtime go through `spawn_blocking`.
pub trait RolloutStore: Send + Sync {
    /// The channel's latest rollout.
    fn latest_rollout(&self, channel: &str) -> Result<Option<RolloutRecord>, StoreError>;

    /// The latest rollout of every channel that has one, by channel.
    fn latest_rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError>;

    /// Add `r` (its `seq` one more than the channel's latest) and forget
    /// the machines of the channel's earlier rollouts; false, changing
    /// nothing, when another server added that `seq` first.
    fn create_rollout(&self, r: &RolloutRecord) -> Result<bool, StoreError>;

    /// Replace the record `(r.channel, r.seq)` by `r` if its version is
    /// still `r.version - 1`; false, changing nothing, otherwise.
    fn update_rollout(&self, r: &RolloutRecord) -> Result<bool, StoreError>;

    /// A machine of `wave` reported `outcome` at `now`. A failure, once
    /// stored, stays: a machine that fell back reports good boots of its
    /// old slot afterwards, which must not erase it.
    fn record_outcome(
        &self,
        channel: &str,
        seq: i64,
        machine: &str,
        wave: u32,
        outcome: Outcome,
        now: u64,
    ) -> Result<(), StoreError>;

    /// Mark every failure of the rollout so far as excused (a resume: the
    /// administrator has seen them); returns how many.
    fn excuse_failures(&self, channel: &str, seq: i64) -> Result<u64, StoreError>;

    /// Machines by wave, outcome and excuse.
    fn outcome_counts(&self, channel: &str, seq: i64) -> Result<Vec<OutcomeCount>, StoreError>;

    /// Every machine that took part in the latest rollout of its channel.
    fn members(&self) -> Result<Vec<Member>, StoreError>;
}

macro_rules! either {
    ($db:expr, $s:ident => $call:expr) => {
        match $db {
            FleetDb::Sqlite($s) => $call,
            FleetDb::Postgres($s) => $call,
        }
    };
}

impl RolloutStore for FleetDb {
    fn latest_rollout(&self, channel: &str) -> Result<Option<RolloutRecord>, StoreError> {
        either!(self, s => s.latest_rollout(channel))
    }
    fn latest_rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        either!(self, s => s.latest_rollouts())
    }
    fn create_rollout(&self, r: &RolloutRecord) -> Result<bool, StoreError> {
        either!(self, s => s.create_rollout(r))
    }
    fn update_rollout(&self, r: &RolloutRecord) -> Result<bool, StoreError> {
        either!(self, s => s.update_rollout(r))
    }
    fn record_outcome(
        &self,
        channel: &str,
        seq: i64,
        machine: &str,
        wave: u32,
        outcome: Outcome,
        now: u64,
    ) -> Result<(), StoreError> {
        either!(self, s => s.record_outcome(channel, seq, machine, wave, outcome, now))
    }
    fn excuse_failures(&self, channel: &str, seq: i64) -> Result<u64, StoreError> {
        either!(self, s => s.excuse_failures(channel, seq))
    }
    fn outcome_counts(&self, channel: &str, seq: i64) -> Result<Vec<OutcomeCount>, StoreError> {
        either!(self, s => s.outcome_counts(channel, seq))
    }
    fn members(&self) -> Result<Vec<Member>, StoreError> {
        either!(self, s => s.members())
    }
}

/// A stored word that is not one this version writes.
pub(crate) fn bad_word(database: &str, col: &str, word: &str) -> StoreError {
    StoreError {
        database: database.to_string(),
        what: "reading a rollout",
        source: format!("column {col} holds {word:?}, which this slate does not know").into(),
    }
}
