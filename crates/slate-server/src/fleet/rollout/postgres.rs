//! The rollouts tables in the PostgreSQL store (schema version 4), the
//! same as SQLite's ([`super::sqlite`]): a pool of servers shares them.

use ::postgres::Row;

use super::store::{bad_word, Member, Outcome, OutcomeCount, RolloutRecord, RolloutState, RolloutStore, FAILURES_SQL};
use crate::fleet::postgres::PostgresStore;
use crate::fleet::store::StoreError;

/// Version 4: rollouts and the machines that reported on them.
pub(crate) const SCHEMA_V4: &str = r#"
CREATE TABLE rollouts (
    channel      TEXT COLLATE "C" NOT NULL,
    seq          BIGINT NOT NULL,
    previous     TEXT NOT NULL,
    head         TEXT NOT NULL,
    started      BIGINT NOT NULL,
    state        TEXT NOT NULL,
    wave         BIGINT NOT NULL,
    wave_started BIGINT NOT NULL,
    reason       TEXT,
    changed      BIGINT NOT NULL,
    version      BIGINT NOT NULL,
    pin_previous BOOLEAN NOT NULL,
    PRIMARY KEY (channel, seq)
);
CREATE TABLE rollout_machines (
    channel      TEXT COLLATE "C" NOT NULL,
    seq          BIGINT NOT NULL,
    machine      TEXT COLLATE "C" NOT NULL,
    wave         BIGINT NOT NULL,
    outcome      TEXT NOT NULL,
    excused      BOOLEAN NOT NULL DEFAULT FALSE,
    first_report BIGINT NOT NULL,
    last_report  BIGINT NOT NULL,
    PRIMARY KEY (channel, seq, machine)
);
"#;

const COLUMNS: &str =
    "channel, seq, previous, head, started, state, wave, wave_started, reason, changed, version, pin_previous";

fn err<'a>(name: &'a str, what: &'static str) -> impl FnOnce(::postgres::Error) -> StoreError + 'a {
    move |e| StoreError {
        database: name.to_string(),
        what,
        source: Box::new(e),
    }
}

fn secs(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

fn record(name: &str, r: &Row) -> Result<RolloutRecord, StoreError> {
    const WHAT: &str = "reading a rollout";
    let state: String = r.try_get(5).map_err(err(name, WHAT))?;
    Ok(RolloutRecord {
        channel: r.try_get(0).map_err(err(name, WHAT))?,
        seq: r.try_get(1).map_err(err(name, WHAT))?,
        previous: r.try_get(2).map_err(err(name, WHAT))?,
        head: r.try_get(3).map_err(err(name, WHAT))?,
        started: r.try_get::<_, i64>(4).map_err(err(name, WHAT))?.max(0) as u64,
        state: RolloutState::parse(&state).ok_or_else(|| bad_word(name, "state", &state))?,
        wave: r
            .try_get::<_, i64>(6)
            .map_err(err(name, WHAT))?
            .clamp(0, i64::from(u32::MAX)) as u32,
        wave_started: r.try_get::<_, i64>(7).map_err(err(name, WHAT))?.max(0) as u64,
        reason: r.try_get(8).map_err(err(name, WHAT))?,
        changed: r.try_get::<_, i64>(9).map_err(err(name, WHAT))?.max(0) as u64,
        version: r.try_get(10).map_err(err(name, WHAT))?,
        pin_previous: r.try_get(11).map_err(err(name, WHAT))?,
    })
}

impl RolloutStore for PostgresStore {
    fn latest_rollout(&self, channel: &str) -> Result<Option<RolloutRecord>, StoreError> {
        const WHAT: &str = "reading a rollout";
        let row = self
            .client(WHAT)?
            .query_opt(
                &format!("SELECT {COLUMNS} FROM rollouts WHERE channel = $1 ORDER BY seq DESC LIMIT 1"),
                &[&channel],
            )
            .map_err(err(self.name(), WHAT))?;
        row.map(|r| record(self.name(), &r)).transpose()
    }

    fn latest_rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        const WHAT: &str = "listing rollouts";
        let rows = self
            .client(WHAT)?
            .query(
                &format!("SELECT DISTINCT ON (channel) {COLUMNS} FROM rollouts ORDER BY channel, seq DESC"),
                &[],
            )
            .map_err(err(self.name(), WHAT))?;
        rows.iter().map(|r| record(self.name(), r)).collect()
    }

    fn create_rollout(&self, r: &RolloutRecord) -> Result<bool, StoreError> {
        const WHAT: &str = "starting a rollout";
        let mut c = self.client(WHAT)?;
        let mut tx = c.transaction().map_err(err(self.name(), WHAT))?;
        let n = tx
            .execute(
                &format!(
                    "INSERT INTO rollouts ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                     ON CONFLICT (channel, seq) DO NOTHING"
                ),
                &[
                    &r.channel,
                    &r.seq,
                    &r.previous,
                    &r.head,
                    &secs(r.started),
                    &r.state.as_str(),
                    &i64::from(r.wave),
                    &secs(r.wave_started),
                    &r.reason,
                    &secs(r.changed),
                    &r.version,
                    &r.pin_previous,
                ],
            )
            .map_err(err(self.name(), WHAT))?;
        if n == 0 {
            return Ok(false);
        }
        tx.execute(
            "DELETE FROM rollout_machines WHERE channel = $1 AND seq < $2",
            &[&r.channel, &r.seq],
        )
        .map_err(err(self.name(), WHAT))?;
        tx.commit().map_err(err(self.name(), WHAT))?;
        Ok(true)
    }

    fn update_rollout(&self, r: &RolloutRecord) -> Result<bool, StoreError> {
        const WHAT: &str = "changing a rollout";
        let n = self
            .client(WHAT)?
            .execute(
                "UPDATE rollouts SET state = $3, wave = $4, wave_started = $5, reason = $6, changed = $7,
                        version = $8, pin_previous = $9
                 WHERE channel = $1 AND seq = $2 AND version = $10",
                &[
                    &r.channel,
                    &r.seq,
                    &r.state.as_str(),
                    &i64::from(r.wave),
                    &secs(r.wave_started),
                    &r.reason,
                    &secs(r.changed),
                    &r.version,
                    &r.pin_previous,
                    &(r.version - 1),
                ],
            )
            .map_err(err(self.name(), WHAT))?;
        Ok(n > 0)
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
        const WHAT: &str = "recording a rollout outcome";
        self.client(WHAT)?
            .execute(
                &format!(
                    "INSERT INTO rollout_machines (channel, seq, machine, wave, outcome, first_report, last_report)
                     VALUES ($1, $2, $3, $4, $5, $6, $6)
                     ON CONFLICT (channel, seq, machine) DO UPDATE SET
                        outcome = CASE WHEN rollout_machines.outcome IN {FAILURES_SQL}
                                       THEN rollout_machines.outcome ELSE excluded.outcome END,
                        last_report = excluded.last_report"
                ),
                &[
                    &channel,
                    &seq,
                    &machine,
                    &i64::from(wave),
                    &outcome.as_str(),
                    &secs(now),
                ],
            )
            .map_err(err(self.name(), WHAT))?;
        Ok(())
    }

    fn excuse_failures(&self, channel: &str, seq: i64) -> Result<u64, StoreError> {
        const WHAT: &str = "excusing failures";
        self.client(WHAT)?
            .execute(
                &format!(
                    "UPDATE rollout_machines SET excused = TRUE
                     WHERE channel = $1 AND seq = $2 AND NOT excused AND outcome IN {FAILURES_SQL}"
                ),
                &[&channel, &seq],
            )
            .map_err(err(self.name(), WHAT))
    }

    fn outcome_counts(&self, channel: &str, seq: i64) -> Result<Vec<OutcomeCount>, StoreError> {
        const WHAT: &str = "counting rollout outcomes";
        let rows = self
            .client(WHAT)?
            .query(
                "SELECT wave, outcome, excused, COUNT(*) FROM rollout_machines
                 WHERE channel = $1 AND seq = $2 GROUP BY wave, outcome, excused ORDER BY wave, outcome, excused",
                &[&channel, &seq],
            )
            .map_err(err(self.name(), WHAT))?;
        rows.iter()
            .map(|r| {
                let outcome: String = r.try_get(1).map_err(err(self.name(), WHAT))?;
                Ok(OutcomeCount {
                    wave: r
                        .try_get::<_, i64>(0)
                        .map_err(err(self.name(), WHAT))?
                        .clamp(0, i64::from(u32::MAX)) as u32,
                    outcome: Outcome::parse(&outcome).ok_or_else(|| bad_word(self.name(), "outcome", &outcome))?,
                    excused: r.try_get(2).map_err(err(self.name(), WHAT))?,
                    machines: r.try_get::<_, i64>(3).map_err(err(self.name(), WHAT))?.max(0) as u64,
                })
            })
            .collect()
    }

    fn members(&self) -> Result<Vec<Member>, StoreError> {
        const WHAT: &str = "listing rollout machines";
        let rows = self
            .client(WHAT)?
            .query(
                "SELECT m.channel, m.seq, m.machine, m.wave, m.outcome, m.excused FROM rollout_machines m
                 WHERE m.seq = (SELECT MAX(seq) FROM rollouts WHERE channel = m.channel)
                 ORDER BY m.machine",
                &[],
            )
            .map_err(err(self.name(), WHAT))?;
        rows.iter()
            .map(|r| {
                let outcome: String = r.try_get(4).map_err(err(self.name(), WHAT))?;
                Ok(Member {
                    channel: r.try_get(0).map_err(err(self.name(), WHAT))?,
                    seq: r.try_get(1).map_err(err(self.name(), WHAT))?,
                    machine: r.try_get(2).map_err(err(self.name(), WHAT))?,
                    wave: r
                        .try_get::<_, i64>(3)
                        .map_err(err(self.name(), WHAT))?
                        .clamp(0, i64::from(u32::MAX)) as u32,
                    outcome: Outcome::parse(&outcome).ok_or_else(|| bad_word(self.name(), "outcome", &outcome))?,
                    excused: r.try_get(5).map_err(err(self.name(), WHAT))?,
                })
            })
            .collect()
    }
}
