//! What the web dashboard (`crate::ui`) reads from the fleet store: one
//! page of machines at a time, filtered and sorted in the database, one
//! machine with its recent reports, and counts per channel and group.
//!
//! The dashboard must stay fast with tens of thousands of machines, so
//! nothing here loads the whole table: filters, the sort and the page are
//! SQL (`LIMIT`/`OFFSET` over indexed columns), and a machine's state is a
//! `CASE` over its columns, written once per backend ([`state_sql`]).
//! The SQL of each backend is here rather than in `sqlite.rs` and
//! `postgres.rs`, which only forward to it.

use serde::Serialize;

use super::postgres::PostgresStore;
use super::sqlite::SqliteStore;
use super::store::{MachineRow, StoreError};

/// How many reports the store keeps per machine (older ones are deleted
/// as new ones arrive), for the dashboard's machine page.
pub const REPORT_HISTORY: usize = 20;

/// How long a machine may stay silent before it counts as not seen
/// ([`MachineState::Silent`]): a day.
pub const SILENT_AFTER: u64 = 24 * 3600;

/// What an assignment told a machine, as the store keeps it for the
/// dashboard (`FleetStore::record_assigned`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AssignedRecord {
    /// Hostname the machine gave, if any.
    pub hostname: Option<String>,
    /// Channel assigned.
    pub channel: String,
    /// The fleet rule that decided (the assignment's `rule`).
    pub rule: String,
    /// Snapshot assigned (64 hex).
    pub snapshot: String,
    /// The machine's labels (a JSON object of strings).
    pub labels: serde_json::Value,
}

/// A machine's state on the dashboard, derived from its columns (see
/// [`state_sql`] for the order in which they are tried).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum MachineState {
    /// No request for a day ([`SILENT_AFTER`]).
    Silent,
    /// Its last update pass failed (`error`, `refused`, `stale`).
    Failed,
    /// Its last boot fell back to the other slot (`fell-back`,
    /// `policy-fell-back`, `rescue`).
    FellBack,
    /// It runs the snapshot it was assigned.
    UpToDate,
    /// It has been assigned another snapshot, or its new one is on trial.
    Pending,
    /// It asked for an assignment but has not reported yet.
    New,
}

impl MachineState {
    /// Every state, in the order the dashboard lists them.
    pub const ALL: [MachineState; 6] = [
        MachineState::UpToDate,
        MachineState::Pending,
        MachineState::FellBack,
        MachineState::Failed,
        MachineState::Silent,
        MachineState::New,
    ];

    /// The word used in SQL, in query strings and in CSS classes.
    pub fn word(self) -> &'static str {
        match self {
            MachineState::Silent => "silent",
            MachineState::Failed => "failed",
            MachineState::FellBack => "fell-back",
            MachineState::UpToDate => "up-to-date",
            MachineState::Pending => "pending",
            MachineState::New => "new",
        }
    }

    /// What people read.
    pub fn label(self) -> &'static str {
        match self {
            MachineState::Silent => "not seen for a day",
            MachineState::Failed => "failed",
            MachineState::FellBack => "fell back",
            MachineState::UpToDate => "up to date",
            MachineState::Pending => "pending",
            MachineState::New => "not reported yet",
        }
    }

    /// The state a word names.
    pub fn from_word(w: &str) -> Option<MachineState> {
        MachineState::ALL.into_iter().find(|s| s.word() == w)
    }
}

/// Which column the machines page is sorted by (a fixed list: the SQL of
/// each is written here, never taken from the request).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortKey {
    /// Machine id.
    #[default]
    Id,
    /// Hostname.
    Hostname,
    /// Group (the fleet rule).
    Group,
    /// Channel.
    Channel,
    /// State.
    State,
    /// Last contact.
    LastSeen,
}

impl SortKey {
    /// Every key.
    pub const ALL: [SortKey; 6] = [
        SortKey::Id,
        SortKey::Hostname,
        SortKey::Group,
        SortKey::Channel,
        SortKey::State,
        SortKey::LastSeen,
    ];

    /// The word in query strings.
    pub fn word(self) -> &'static str {
        match self {
            SortKey::Id => "id",
            SortKey::Hostname => "hostname",
            SortKey::Group => "group",
            SortKey::Channel => "channel",
            SortKey::State => "state",
            SortKey::LastSeen => "last_seen",
        }
    }

    /// The key a word names.
    pub fn from_word(w: &str) -> Option<SortKey> {
        SortKey::ALL.into_iter().find(|s| s.word() == w)
    }

    fn column(self, state: &str) -> String {
        match self {
            SortKey::Id => "id".into(),
            SortKey::Hostname => "hostname".into(),
            SortKey::Group => "rule".into(),
            SortKey::Channel => "channel".into(),
            SortKey::State => format!("({state})"),
            SortKey::LastSeen => "last_seen".into(),
        }
    }
}

/// Last contact filter of the machines page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Seen within the last this many seconds.
    Within(u64),
    /// Not seen for at least this many seconds.
    NotFor(u64),
}

/// One page of the machines table: filters, sort and window.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MachineQuery {
    /// Only machines whose fleet rule is this.
    pub group: Option<String>,
    /// Only machines on this channel.
    pub channel: Option<String>,
    /// Only machines in this state.
    pub state: Option<MachineState>,
    /// Only machines last seen so.
    pub seen: Option<Seen>,
    /// Sort column (then id, so pages are stable).
    pub sort: SortKey,
    /// Descending order.
    pub descending: bool,
    /// Rows skipped.
    pub offset: u64,
    /// Rows returned at most.
    pub limit: u64,
}

/// A machine as the dashboard shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MachineView {
    /// What `GET /v1/fleet/machines` lists of it.
    pub row: MachineRow,
    /// The fleet rule of its latest assignment.
    pub rule: Option<String>,
    /// Its labels (JSON object), by its latest assignment.
    pub labels: serde_json::Value,
    /// The snapshot it was last assigned.
    pub assigned: Option<String>,
    /// Its state at the time of the query.
    pub state: MachineState,
}

/// One page of machines and how many match in all.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MachinePage {
    /// The rows of the page.
    pub machines: Vec<MachineView>,
    /// Machines matching the filters, on every page.
    pub total: u64,
}

/// A report kept in the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReport {
    /// When it arrived, Unix seconds.
    pub received: u64,
    /// The report as received (JSON).
    pub raw: String,
}

/// SQLite or PostgreSQL: the two differ in how they read a JSON field and
/// in their parameter marks.
#[derive(Clone, Copy)]
enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    fn json_field(self, col: &str, field: &str) -> String {
        match self {
            Dialect::Sqlite => format!("json_extract({col}, '$.{field}')"),
            Dialect::Postgres => format!("({col}->>'{field}')"),
        }
    }

    /// The `n`th parameter mark (1-based).
    fn param(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}"),
        }
    }
}

/// A machine's state as SQL, given the parameter that holds the time
/// before which a machine counts as silent. The order matters: silence
/// first (nothing else is current), then failure and fallback (which also
/// leave `current` behind `assigned`), then the comparison.
fn state_sql(d: Dialect, silent_before: &str) -> String {
    let update = d.json_field("last_update", "result");
    let boot = d.json_field("boot", "result");
    format!(
        "CASE
            WHEN last_seen < {silent_before} THEN 'silent'
            WHEN {update} IN ('error', 'refused', 'stale') THEN 'failed'
            WHEN {boot} IN ('fell-back', 'policy-fell-back', 'rescue') THEN 'fell-back'
            WHEN current IS NULL THEN 'new'
            WHEN {boot} = 'pending' THEN 'pending'
            WHEN current = COALESCE(assigned, target) THEN 'up-to-date'
            ELSE 'pending'
         END"
    )
}

/// The columns a [`MachineView`] is read from, in [`RawView`]'s order.
fn view_columns(d: Dialect, state: &str) -> String {
    let json = |c: &str| match d {
        Dialect::Sqlite => c.to_string(),
        Dialect::Postgres => format!("{c}::text"),
    };
    format!(
        "id, hostname, channel, current, target, active_slot, {}, {}, {}, first_seen, last_seen, mode, {},
         rule, {}, assigned, ({state})",
        json("slots"),
        json("last_update"),
        json("boot"),
        json("cache"),
        json("labels"),
    )
}

/// A row as read, before its JSON columns are parsed.
type RawView = (String, [Option<String>; 8], (i64, i64), [Option<String>; 5], String);

fn parse_view(db: &str, r: RawView) -> Result<MachineView, StoreError> {
    let (
        machine,
        [hostname, channel, current, target, active_slot, slots, last_update, boot],
        (first, last),
        [mode, cache, rule, labels, assigned],
        state,
    ) = r;
    let json = |col: &str, t: Option<String>| -> Result<serde_json::Value, StoreError> {
        match t {
            None => Ok(serde_json::Value::Null),
            Some(t) => serde_json::from_str(&t).map_err(|e| StoreError {
                database: db.to_string(),
                what: "reading a JSON column",
                source: format!("column {col}: {e}").into(),
            }),
        }
    };
    Ok(MachineView {
        row: MachineRow {
            machine,
            hostname,
            channel,
            current,
            target,
            active_slot,
            slots: json("slots", slots)?,
            last_update: json("last_update", last_update)?,
            boot: json("boot", boot)?,
            mode,
            cache: json("cache", cache)?,
            first_seen: first.max(0) as u64,
            last_seen: last.max(0) as u64,
            rollout: serde_json::Value::Null,
        },
        rule,
        labels: json("labels", labels)?,
        assigned,
        state: MachineState::from_word(&state).unwrap_or(MachineState::Pending),
    })
}

/// The `WHERE` clause of a query and its text parameters, numbered from 2
/// (parameter 1 is the silence threshold).
fn filters(d: Dialect, q: &MachineQuery, state: &str, now: u64) -> (String, Vec<String>, Vec<i64>) {
    let mut clauses = Vec::new();
    let mut texts = Vec::new();
    if let Some(g) = &q.group {
        texts.push(g.clone());
        clauses.push(format!("rule = {}", d.param(1 + texts.len())));
    }
    if let Some(c) = &q.channel {
        texts.push(c.clone());
        clauses.push(format!("channel = {}", d.param(1 + texts.len())));
    }
    if let Some(s) = q.state {
        texts.push(s.word().to_string());
        clauses.push(format!("({state}) = {}", d.param(1 + texts.len())));
    }
    let mut ints = Vec::new();
    if let Some(seen) = q.seen {
        // Integers follow the texts.
        let (op, secs) = match seen {
            Seen::Within(s) => (">=", s),
            Seen::NotFor(s) => ("<", s),
        };
        ints.push(now.saturating_sub(secs) as i64);
        clauses.push(format!("last_seen {op} {}", d.param(1 + texts.len() + ints.len())));
    }
    let clause = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    (clause, texts, ints)
}

fn order(q: &MachineQuery, state: &str) -> String {
    let dir = if q.descending { "DESC" } else { "ASC" };
    let col = q.sort.column(state);
    // NULLs last whichever way, then the id so that pages do not overlap.
    if q.sort == SortKey::Id {
        format!("ORDER BY id {dir}")
    } else {
        format!("ORDER BY ({col}) IS NULL, {col} {dir}, id {dir}")
    }
}

/// The count of a page's query. Parameter 1 (the silence threshold) is
/// passed whether or not a filter reads it, so it is read here anyway:
/// both databases refuse a parameter that no clause uses.
fn count_sql(d: Dialect, clause: &str) -> String {
    let p1 = match d {
        Dialect::Sqlite => "?1",
        Dialect::Postgres => "$1::bigint",
    };
    let glue = if clause.is_empty() { "WHERE" } else { "AND" };
    format!("SELECT COUNT(*) FROM machines {clause} {glue} {p1} IS NOT NULL")
}

fn silent_before(now: u64) -> i64 {
    now.saturating_sub(SILENT_AFTER) as i64
}

fn sqlite_err<'a>(db: &'a str, what: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError + 'a {
    move |e| StoreError {
        database: db.to_string(),
        what,
        source: Box::new(e),
    }
}

fn pg_err<'a>(db: &'a str, what: &'static str) -> impl FnOnce(::postgres::Error) -> StoreError + 'a {
    move |e| StoreError {
        database: db.to_string(),
        what,
        source: Box::new(e),
    }
}

fn sqlite_raw(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawView> {
    Ok((
        r.get(0)?,
        [
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
            r.get(8)?,
        ],
        (r.get(9)?, r.get(10)?),
        [r.get(11)?, r.get(12)?, r.get(13)?, r.get(14)?, r.get(15)?],
        r.get(16)?,
    ))
}

fn pg_raw(r: &::postgres::Row) -> Result<RawView, ::postgres::Error> {
    Ok((
        r.try_get(0)?,
        [
            r.try_get(1)?,
            r.try_get(2)?,
            r.try_get(3)?,
            r.try_get(4)?,
            r.try_get(5)?,
            r.try_get(6)?,
            r.try_get(7)?,
            r.try_get(8)?,
        ],
        (r.try_get(9)?, r.try_get(10)?),
        [
            r.try_get(11)?,
            r.try_get(12)?,
            r.try_get(13)?,
            r.try_get(14)?,
            r.try_get(15)?,
        ],
        r.try_get(16)?,
    ))
}

const ASSIGNED_SQL: &str = "INSERT INTO machines (id, first_seen, last_seen, hostname, channel, rule, assigned, labels)
     VALUES (#1, #2, #2, #3, #4, #5, #6, #7)
     ON CONFLICT (id) DO UPDATE SET
        last_seen = excluded.last_seen,
        hostname = COALESCE(excluded.hostname, machines.hostname),
        channel = excluded.channel,
        rule = excluded.rule,
        assigned = excluded.assigned,
        labels = excluded.labels";

impl SqliteStore {
    pub(crate) fn view_record_assigned(&self, machine: &str, a: &AssignedRecord, now: u64) -> Result<(), StoreError> {
        let sql = ASSIGNED_SQL.replace('#', "?");
        self.conn()
            .execute(
                &sql,
                rusqlite::params![
                    machine,
                    now as i64,
                    a.hostname,
                    a.channel,
                    a.rule,
                    a.snapshot,
                    a.labels.to_string()
                ],
            )
            .map_err(sqlite_err(self.name(), "recording an assignment"))?;
        Ok(())
    }

    /// Keep `raw` in the report history and drop what falls off its end;
    /// called in the transaction that stores the report.
    pub(crate) fn view_keep_report(
        tx: &rusqlite::Transaction<'_>,
        machine: &str,
        raw: &str,
        now: u64,
    ) -> rusqlite::Result<()> {
        tx.execute(
            "INSERT INTO machine_reports (machine, received, report) VALUES (?1, ?2, ?3)",
            rusqlite::params![machine, now as i64, raw],
        )?;
        tx.execute(
            "DELETE FROM machine_reports WHERE machine = ?1 AND seq <= (
                SELECT seq FROM machine_reports WHERE machine = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
            rusqlite::params![machine, REPORT_HISTORY as i64],
        )?;
        Ok(())
    }

    pub(crate) fn view_machine_page(&self, q: &MachineQuery, now: u64) -> Result<MachinePage, StoreError> {
        const WHAT: &str = "listing machines for the dashboard";
        let d = Dialect::Sqlite;
        let state = state_sql(d, "?1");
        let (clause, texts, ints) = filters(d, q, &state, now);
        let mut params: Vec<Box<dyn rusqlite::ToSql>> = vec![Box::new(silent_before(now))];
        params.extend(texts.into_iter().map(|t| Box::new(t) as Box<dyn rusqlite::ToSql>));
        params.extend(ints.into_iter().map(|i| Box::new(i) as Box<dyn rusqlite::ToSql>));
        let conn = self.conn();
        let total: i64 = conn
            .query_row(&count_sql(d, &clause), rusqlite::params_from_iter(params.iter()), |r| {
                r.get(0)
            })
            .map_err(sqlite_err(self.name(), WHAT))?;
        let sql = format!(
            "SELECT {} FROM machines {clause} {} LIMIT {} OFFSET {}",
            view_columns(d, &state),
            order(q, &state),
            q.limit.min(i64::MAX as u64),
            q.offset.min(i64::MAX as u64),
        );
        let mut stmt = conn.prepare(&sql).map_err(sqlite_err(self.name(), WHAT))?;
        let raws: Vec<RawView> = stmt
            .query_map(rusqlite::params_from_iter(params.iter()), sqlite_raw)
            .and_then(|it| it.collect())
            .map_err(sqlite_err(self.name(), WHAT))?;
        Ok(MachinePage {
            machines: raws
                .into_iter()
                .map(|r| parse_view(self.name(), r))
                .collect::<Result<_, _>>()?,
            total: total.max(0) as u64,
        })
    }

    pub(crate) fn view_machine(&self, id: &str, now: u64) -> Result<Option<MachineView>, StoreError> {
        const WHAT: &str = "reading a machine for the dashboard";
        let d = Dialect::Sqlite;
        let sql = format!(
            "SELECT {} FROM machines WHERE id = ?2",
            view_columns(d, &state_sql(d, "?1"))
        );
        let raw = {
            use rusqlite::OptionalExtension;
            self.conn()
                .query_row(&sql, rusqlite::params![silent_before(now), id], sqlite_raw)
                .optional()
                .map_err(sqlite_err(self.name(), WHAT))?
        };
        raw.map(|r| parse_view(self.name(), r)).transpose()
    }

    pub(crate) fn view_reports(&self, id: &str, limit: usize) -> Result<Vec<StoredReport>, StoreError> {
        const WHAT: &str = "reading a machine's reports";
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT received, report FROM machine_reports WHERE machine = ?1 ORDER BY seq DESC LIMIT ?2")
            .map_err(sqlite_err(self.name(), WHAT))?;
        let rows = stmt
            .query_map(rusqlite::params![id, limit as i64], |r| {
                Ok(StoredReport {
                    received: r.get::<_, i64>(0)?.max(0) as u64,
                    raw: r.get(1)?,
                })
            })
            .and_then(|it| it.collect())
            .map_err(sqlite_err(self.name(), WHAT));
        rows
    }

    pub(crate) fn view_counts(&self, column: CountBy) -> Result<Vec<(String, u64)>, StoreError> {
        const WHAT: &str = "counting machines";
        let col = column.column();
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {col}, COUNT(*) FROM machines WHERE {col} IS NOT NULL GROUP BY {col} ORDER BY {col}"
            ))
            .map_err(sqlite_err(self.name(), WHAT))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64)))
            .and_then(|it| it.collect())
            .map_err(sqlite_err(self.name(), WHAT));
        rows
    }
}

/// What [`crate::FleetStore::machine_counts`] groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountBy {
    /// The channel assigned.
    Channel,
    /// The fleet rule (group).
    Group,
}

impl CountBy {
    fn column(self) -> &'static str {
        match self {
            CountBy::Channel => "channel",
            CountBy::Group => "rule",
        }
    }
}

impl PostgresStore {
    pub(crate) fn view_record_assigned(&self, machine: &str, a: &AssignedRecord, now: u64) -> Result<(), StoreError> {
        const WHAT: &str = "recording an assignment";
        let mut sql = ASSIGNED_SQL.to_string();
        for n in 1..=7 {
            sql = sql.replace(&format!("#{n}"), &format!("${n}"));
        }
        let sql = sql.replace("$7)", "$7::text::jsonb)");
        let labels = a.labels.to_string();
        self.client(WHAT)?
            .execute(
                &sql,
                &[
                    &machine,
                    &i64::try_from(now).unwrap_or(i64::MAX),
                    &a.hostname,
                    &a.channel,
                    &a.rule,
                    &a.snapshot,
                    &labels,
                ],
            )
            .map_err(pg_err(self.name(), WHAT))?;
        Ok(())
    }

    /// Keep `raw` in the report history and drop what falls off its end;
    /// called in the transaction that stores the report.
    pub(crate) fn view_keep_report(
        tx: &mut ::postgres::Transaction<'_>,
        machine: &str,
        raw: &str,
        now: i64,
    ) -> Result<(), ::postgres::Error> {
        tx.execute(
            "INSERT INTO machine_reports (machine, received, report) VALUES ($1, $2, $3)",
            &[&machine, &now, &raw],
        )?;
        tx.execute(
            "DELETE FROM machine_reports WHERE machine = $1 AND seq <= (
                SELECT seq FROM machine_reports WHERE machine = $1 ORDER BY seq DESC LIMIT 1 OFFSET $2)",
            &[&machine, &(REPORT_HISTORY as i64)],
        )?;
        Ok(())
    }

    pub(crate) fn view_machine_page(&self, q: &MachineQuery, now: u64) -> Result<MachinePage, StoreError> {
        const WHAT: &str = "listing machines for the dashboard";
        let d = Dialect::Postgres;
        let state = state_sql(d, "$1");
        let (clause, texts, ints) = filters(d, q, &state, now);
        let silent = silent_before(now);
        let mut params: Vec<&(dyn ::postgres::types::ToSql + Sync)> = vec![&silent];
        params.extend(texts.iter().map(|t| t as &(dyn ::postgres::types::ToSql + Sync)));
        params.extend(ints.iter().map(|i| i as &(dyn ::postgres::types::ToSql + Sync)));
        let mut c = self.client(WHAT)?;
        let total: i64 = c
            .query_one(&count_sql(d, &clause), &params)
            .map_err(pg_err(self.name(), WHAT))?
            .get(0);
        let sql = format!(
            "SELECT {} FROM machines {clause} {} LIMIT {} OFFSET {}",
            view_columns(d, &state),
            order(q, &state),
            q.limit.min(i64::MAX as u64),
            q.offset.min(i64::MAX as u64),
        );
        let rows = c.query(&sql, &params).map_err(pg_err(self.name(), WHAT))?;
        let mut machines = Vec::with_capacity(rows.len());
        for r in &rows {
            machines.push(parse_view(self.name(), pg_raw(r).map_err(pg_err(self.name(), WHAT))?)?);
        }
        Ok(MachinePage {
            machines,
            total: total.max(0) as u64,
        })
    }

    pub(crate) fn view_machine(&self, id: &str, now: u64) -> Result<Option<MachineView>, StoreError> {
        const WHAT: &str = "reading a machine for the dashboard";
        let d = Dialect::Postgres;
        let sql = format!(
            "SELECT {} FROM machines WHERE id = $2",
            view_columns(d, &state_sql(d, "$1"))
        );
        let row = self
            .client(WHAT)?
            .query_opt(&sql, &[&silent_before(now), &id])
            .map_err(pg_err(self.name(), WHAT))?;
        match row {
            None => Ok(None),
            Some(r) => Ok(Some(parse_view(
                self.name(),
                pg_raw(&r).map_err(pg_err(self.name(), WHAT))?,
            )?)),
        }
    }

    pub(crate) fn view_reports(&self, id: &str, limit: usize) -> Result<Vec<StoredReport>, StoreError> {
        const WHAT: &str = "reading a machine's reports";
        let rows = self
            .client(WHAT)?
            .query(
                "SELECT received, report FROM machine_reports WHERE machine = $1 ORDER BY seq DESC LIMIT $2",
                &[&id, &(limit as i64)],
            )
            .map_err(pg_err(self.name(), WHAT))?;
        Ok(rows
            .iter()
            .map(|r| StoredReport {
                received: r.get::<_, i64>(0).max(0) as u64,
                raw: r.get(1),
            })
            .collect())
    }

    pub(crate) fn view_counts(&self, column: CountBy) -> Result<Vec<(String, u64)>, StoreError> {
        const WHAT: &str = "counting machines";
        let col = column.column();
        let rows = self
            .client(WHAT)?
            .query(
                &format!("SELECT {col}, COUNT(*) FROM machines WHERE {col} IS NOT NULL GROUP BY {col} ORDER BY {col}"),
                &[],
            )
            .map_err(pg_err(self.name(), WHAT))?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1).max(0) as u64))
            .collect())
    }
}
