//! The rollouts tables in the SQLite store (schema version 4).

use rusqlite::{params, OptionalExtension, Row};

use super::store::{bad_word, Member, Outcome, OutcomeCount, RolloutRecord, RolloutState, RolloutStore, FAILURES_SQL};
use crate::fleet::sqlite::SqliteStore;
use crate::fleet::store::StoreError;

/// Version 4: rollouts and the machines that reported on them.
pub(crate) const SCHEMA_V4: &str = "
CREATE TABLE rollouts (
    channel      TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    previous     TEXT NOT NULL,
    head         TEXT NOT NULL,
    started      INTEGER NOT NULL,
    state        TEXT NOT NULL,
    wave         INTEGER NOT NULL,
    wave_started INTEGER NOT NULL,
    reason       TEXT,
    changed      INTEGER NOT NULL,
    version      INTEGER NOT NULL,
    pin_previous INTEGER NOT NULL,
    PRIMARY KEY (channel, seq)
) STRICT;
CREATE TABLE rollout_machines (
    channel      TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    machine      TEXT NOT NULL,
    wave         INTEGER NOT NULL,
    outcome      TEXT NOT NULL,
    excused      INTEGER NOT NULL DEFAULT 0,
    first_report INTEGER NOT NULL,
    last_report  INTEGER NOT NULL,
    PRIMARY KEY (channel, seq, machine)
) STRICT;
";

const COLUMNS: &str =
    "channel, seq, previous, head, started, state, wave, wave_started, reason, changed, version, pin_previous";

fn err<'a>(name: &'a str, what: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError + 'a {
    move |e| StoreError {
        database: name.to_string(),
        what,
        source: Box::new(e),
    }
}

type RawRecord = (
    String,
    i64,
    String,
    String,
    i64,
    String,
    i64,
    i64,
    Option<String>,
    i64,
    i64,
    bool,
);

fn raw(r: &Row<'_>) -> rusqlite::Result<RawRecord> {
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
    ))
}

fn record(name: &str, r: RawRecord) -> Result<RolloutRecord, StoreError> {
    let (channel, seq, previous, head, started, state, wave, wave_started, reason, changed, version, pin) = r;
    Ok(RolloutRecord {
        channel,
        seq,
        previous,
        head,
        started: started.max(0) as u64,
        state: RolloutState::parse(&state).ok_or_else(|| bad_word(name, "state", &state))?,
        wave: wave.clamp(0, i64::from(u32::MAX)) as u32,
        wave_started: wave_started.max(0) as u64,
        reason,
        changed: changed.max(0) as u64,
        version,
        pin_previous: pin,
    })
}

impl RolloutStore for SqliteStore {
    fn latest_rollout(&self, channel: &str) -> Result<Option<RolloutRecord>, StoreError> {
        const WHAT: &str = "reading a rollout";
        let r = self
            .conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM rollouts WHERE channel = ?1 ORDER BY seq DESC LIMIT 1"),
                [channel],
                raw,
            )
            .optional()
            .map_err(err(self.name(), WHAT))?;
        r.map(|r| record(self.name(), r)).transpose()
    }

    fn latest_rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        const WHAT: &str = "listing rollouts";
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM rollouts r
                 WHERE seq = (SELECT MAX(seq) FROM rollouts WHERE channel = r.channel) ORDER BY channel"
            ))
            .map_err(err(self.name(), WHAT))?;
        let rows: Vec<RawRecord> = stmt
            .query_map([], raw)
            .and_then(|it| it.collect())
            .map_err(err(self.name(), WHAT))?;
        rows.into_iter().map(|r| record(self.name(), r)).collect()
    }

    fn create_rollout(&self, r: &RolloutRecord) -> Result<bool, StoreError> {
        const WHAT: &str = "starting a rollout";
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(err(self.name(), WHAT))?;
        let n = tx
            .execute(
                &format!(
                    "INSERT INTO rollouts ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                     ON CONFLICT (channel, seq) DO NOTHING"
                ),
                params![
                    r.channel,
                    r.seq,
                    r.previous,
                    r.head,
                    r.started as i64,
                    r.state.as_str(),
                    i64::from(r.wave),
                    r.wave_started as i64,
                    r.reason,
                    r.changed as i64,
                    r.version,
                    r.pin_previous,
                ],
            )
            .map_err(err(self.name(), WHAT))?;
        if n == 0 {
            return Ok(false);
        }
        // Only the latest rollout's machines are kept: the table stays the
        // size of the fleet, whatever the number of releases.
        tx.execute(
            "DELETE FROM rollout_machines WHERE channel = ?1 AND seq < ?2",
            params![r.channel, r.seq],
        )
        .map_err(err(self.name(), WHAT))?;
        tx.commit().map_err(err(self.name(), WHAT))?;
        Ok(true)
    }

    fn update_rollout(&self, r: &RolloutRecord) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .execute(
                "UPDATE rollouts SET state = ?3, wave = ?4, wave_started = ?5, reason = ?6, changed = ?7,
                        version = ?8, pin_previous = ?9
                 WHERE channel = ?1 AND seq = ?2 AND version = ?8 - 1",
                params![
                    r.channel,
                    r.seq,
                    r.state.as_str(),
                    i64::from(r.wave),
                    r.wave_started as i64,
                    r.reason,
                    r.changed as i64,
                    r.version,
                    r.pin_previous,
                ],
            )
            .map_err(err(self.name(), "changing a rollout"))?;
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
        self.conn()
            .execute(
                &format!(
                    "INSERT INTO rollout_machines (channel, seq, machine, wave, outcome, first_report, last_report)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
                     ON CONFLICT (channel, seq, machine) DO UPDATE SET
                        outcome = CASE WHEN rollout_machines.outcome IN {FAILURES_SQL}
                                       THEN rollout_machines.outcome ELSE excluded.outcome END,
                        last_report = excluded.last_report"
                ),
                params![channel, seq, machine, i64::from(wave), outcome.as_str(), now as i64],
            )
            .map_err(err(self.name(), "recording a rollout outcome"))?;
        Ok(())
    }

    fn excuse_failures(&self, channel: &str, seq: i64) -> Result<u64, StoreError> {
        let n = self
            .conn()
            .execute(
                &format!(
                    "UPDATE rollout_machines SET excused = 1
                     WHERE channel = ?1 AND seq = ?2 AND excused = 0 AND outcome IN {FAILURES_SQL}"
                ),
                params![channel, seq],
            )
            .map_err(err(self.name(), "excusing failures"))?;
        Ok(n as u64)
    }

    fn outcome_counts(&self, channel: &str, seq: i64) -> Result<Vec<OutcomeCount>, StoreError> {
        const WHAT: &str = "counting rollout outcomes";
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT wave, outcome, excused, COUNT(*) FROM rollout_machines
                 WHERE channel = ?1 AND seq = ?2 GROUP BY wave, outcome, excused ORDER BY wave, outcome, excused",
            )
            .map_err(err(self.name(), WHAT))?;
        let rows: Vec<(i64, String, bool, i64)> = stmt
            .query_map(params![channel, seq], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .and_then(|it| it.collect())
            .map_err(err(self.name(), WHAT))?;
        rows.into_iter()
            .map(|(wave, outcome, excused, n)| {
                Ok(OutcomeCount {
                    wave: wave.clamp(0, i64::from(u32::MAX)) as u32,
                    outcome: Outcome::parse(&outcome).ok_or_else(|| bad_word(self.name(), "outcome", &outcome))?,
                    excused,
                    machines: n.max(0) as u64,
                })
            })
            .collect()
    }

    fn members(&self) -> Result<Vec<Member>, StoreError> {
        const WHAT: &str = "listing rollout machines";
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT m.channel, m.seq, m.machine, m.wave, m.outcome, m.excused FROM rollout_machines m
                 WHERE m.seq = (SELECT MAX(seq) FROM rollouts WHERE channel = m.channel)
                 ORDER BY m.machine",
            )
            .map_err(err(self.name(), WHAT))?;
        let rows: Vec<(String, i64, String, i64, String, bool)> = stmt
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
            })
            .and_then(|it| it.collect())
            .map_err(err(self.name(), WHAT))?;
        rows.into_iter()
            .map(|(channel, seq, machine, wave, outcome, excused)| {
                Ok(Member {
                    channel,
                    seq,
                    machine,
                    wave: wave.clamp(0, i64::from(u32::MAX)) as u32,
                    outcome: Outcome::parse(&outcome).ok_or_else(|| bad_word(self.name(), "outcome", &outcome))?,
                    excused,
                })
            })
            .collect()
    }
}
