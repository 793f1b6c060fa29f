//! Phased rollouts that stop themselves (issue 15; docs/operations.md,
//! "Rollouts").
//!
//! A channel with a `[rollout."CHANNEL"]` section in FLEET.toml
//! ([`plan`]) does not give a new head to every machine at once. When its
//! head changes, a rollout record is created in the fleet database
//! ([`store`]): previous head, new head, state, last wave released. A
//! machine's assignment is the new head if its wave ([`plan::bucket`]) is
//! released, else the previous head. Waves are released as their soak
//! times pass, unless the failures reported by machines of a released
//! wave reach the plan's threshold: then the rollout halts by itself and
//! says why. Administrators pause, resume and abort it ([`api`]).
//!
//! Per request the work is O(1): the record is cached for [`CACHE_TTL`]
//! (so that the servers of a pool see each other's changes within that
//! time) and a machine's wave is one hash. Only reports of machines in
//! released waves write (one row per machine), and only a failure, a due
//! wave or an administrator's command counts the rollout's rows.

pub mod api;
pub mod plan;
pub mod postgres;
pub mod sqlite;
pub mod store;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use slate_core::SnapshotId;

pub use plan::RolloutPlan;
pub use store::{Member, Outcome, OutcomeCount, RolloutRecord, RolloutState, RolloutStore};

use super::api::Assignment;
use super::machine::Machine;
use super::store::{ReportRecord, StoreError};

/// Unix seconds now. The server's clock is [`system_clock`]; tests give
/// [`Rollouts::new`] one they move by hand, so that hours of soak time pass
/// in no time. Nothing outside the process can set it.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock, in Unix seconds.
pub fn system_clock() -> Clock {
    Arc::new(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

/// How long a rollout record is used before it is read again: what
/// another server of a pool decided (a pause, a wave) is seen within this.
pub const CACHE_TTL: Duration = Duration::from_secs(1);

/// How often the evaluator looks at the rollouts in progress.
pub const EVALUATE_INTERVAL: Duration = Duration::from_secs(1);

/// A machine's place in its channel's rollout: the `rollout` field of an
/// assignment (`docs/format/http.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Place {
    /// The rollout's number in its channel.
    pub seq: i64,
    /// Where the rollout stands.
    pub state: RolloutState,
    /// The machine's wave: 0 for a canary, then 1, 2, ...
    pub wave: u32,
    /// Whether its wave is released: it is assigned the new head.
    pub released: bool,
}

/// What an administrator asks of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Release no further wave.
    Pause,
    /// Release waves again; the failures so far are excused.
    Resume,
    /// Send every machine the previous head.
    Abort,
}

/// Why a command was refused.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The command does not apply to the rollout as it stands.
    #[error("{0}")]
    Conflict(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The rollouts of every channel that has a plan, as this server knows
/// them: shared by the handlers ([`crate::AppState::rollouts`]).
pub struct Rollouts {
    store: Arc<dyn RolloutStore>,
    clock: Clock,
    /// Channel to (when read, its latest record).
    cache: RwLock<HashMap<String, (Instant, Option<RolloutRecord>)>>,
    /// Held while a rollout is evaluated: one evaluation at a time here
    /// (the database's compare-and-set settles races between servers).
    evaluating: Mutex<()>,
    watching: AtomicBool,
}

fn short(id: &str) -> &str {
    &id[..12.min(id.len())]
}

impl Rollouts {
    /// Rollouts kept in `store`, timed by `clock`.
    pub fn new(store: Arc<dyn RolloutStore>, clock: Clock) -> Self {
        Rollouts {
            store,
            clock,
            cache: RwLock::default(),
            evaluating: Mutex::new(()),
            watching: AtomicBool::new(false),
        }
    }

    /// The same rollouts (the same store), timed by `clock`, nothing cached.
    pub fn with_clock(&self, clock: Clock) -> Rollouts {
        Rollouts::new(self.store.clone(), clock)
    }

    /// Now, by this server's clock.
    pub fn now(&self) -> u64 {
        (self.clock)()
    }

    fn remember(&self, channel: &str, r: Option<RolloutRecord>) {
        self.cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(channel.to_string(), (Instant::now(), r));
    }

    /// The channel's latest record, read from the database (and cached).
    fn load(&self, channel: &str) -> Result<Option<RolloutRecord>, StoreError> {
        let r = self.store.latest_rollout(channel)?;
        self.remember(channel, r.clone());
        Ok(r)
    }

    /// The channel's latest record: cached if read less than
    /// [`CACHE_TTL`] ago.
    pub fn latest(&self, channel: &str) -> Result<Option<RolloutRecord>, StoreError> {
        if let Some((at, r)) = self.cache.read().unwrap_or_else(|p| p.into_inner()).get(channel) {
            if at.elapsed() < CACHE_TTL {
                return Ok(r.clone());
            }
        }
        self.load(channel)
    }

    /// The record of the channel's rollout to `head` (its head now):
    /// created if the head is new. The first head a channel is seen with
    /// is its baseline (released to everyone: nothing to roll out); a head
    /// that goes back to the previous one aborts the rollout.
    pub fn settle(&self, plan: &RolloutPlan, head: &str) -> Result<RolloutRecord, StoreError> {
        let channel = &plan.channel;
        let mut latest = self.latest(channel)?;
        loop {
            let now = self.now();
            match latest {
                Some(r) if r.head == head => return Ok(r),
                Some(r) if r.previous == head && !r.is_baseline() => {
                    if r.state == RolloutState::Aborted {
                        return Ok(r);
                    }
                    let mut n = r.clone();
                    n.state = RolloutState::Aborted;
                    n.reason = Some(format!(
                        "aborted: the channel went back to the previous head {}",
                        short(head)
                    ));
                    n.pin_previous = true;
                    n.changed = now;
                    n.version += 1;
                    if self.store.update_rollout(&n)? {
                        tracing::warn!("rollout {channel} #{}: {}", n.seq, n.reason.as_deref().unwrap_or(""));
                        self.remember(channel, Some(n.clone()));
                        return Ok(n);
                    }
                }
                ref other => {
                    let new = match other {
                        None => RolloutRecord {
                            channel: channel.clone(),
                            seq: 1,
                            previous: head.to_string(),
                            head: head.to_string(),
                            started: now,
                            state: RolloutState::Complete,
                            wave: plan.last_wave(),
                            wave_started: now,
                            reason: Some("the head this server first saw: released to every machine".into()),
                            changed: now,
                            version: 1,
                            pin_previous: false,
                        },
                        Some(r) => RolloutRecord {
                            channel: channel.clone(),
                            seq: r.seq + 1,
                            // What every machine was given last: the
                            // head of a finished rollout, else the
                            // snapshot the unfinished one started from.
                            previous: if r.state == RolloutState::Complete {
                                r.head.clone()
                            } else {
                                r.previous.clone()
                            },
                            head: head.to_string(),
                            started: now,
                            state: RolloutState::Running,
                            wave: 0,
                            wave_started: now,
                            reason: None,
                            changed: now,
                            version: 1,
                            pin_previous: r.state != RolloutState::Complete,
                        },
                    };
                    if self.store.create_rollout(&new)? {
                        if !new.is_baseline() {
                            tracing::warn!(
                                "rollout {channel} #{}: started from {} to {}; canaries first",
                                new.seq,
                                short(&new.previous),
                                short(&new.head)
                            );
                        }
                        self.remember(channel, Some(new.clone()));
                        return Ok(new);
                    }
                }
            }
            // Another server changed it first: read it again and decide again.
            latest = self.load(channel)?;
        }
    }

    /// Whether `r`'s next wave is due at `now`.
    fn due(plan: &RolloutPlan, r: &RolloutRecord, now: u64) -> bool {
        r.state == RolloutState::Running
            && plan
                .waves
                .get(r.wave as usize)
                .is_some_and(|w| now >= r.wave_started.saturating_add(w.after))
    }

    /// Turn `a`, the channel's head for machine `m`, into what the rollout
    /// gives it: the head if its wave is released, else the previous head.
    pub fn apply(&self, plan: &RolloutPlan, m: &Machine, a: &mut Assignment) -> Result<(), StoreError> {
        let mut r = self.settle(plan, &a.snapshot)?;
        if Self::due(plan, &r, self.now()) {
            // Released here rather than by the evaluator's next look, so
            // that no machine is held back past its wave's time; one
            // request evaluates, the others go on with the record as is.
            if let Ok(_g) = self.evaluating.try_lock() {
                if let Some(n) = self.evaluate_locked(plan)? {
                    if n.head == r.head {
                        r = n;
                    }
                }
            }
        }
        if r.is_baseline() {
            return Ok(());
        }
        let Some(head) = SnapshotId::from_hex(&r.head) else {
            return Ok(());
        };
        let wave = plan.wave_of(&head, m);
        let released = match r.state {
            RolloutState::Aborted => false,
            RolloutState::Complete => true,
            _ => wave <= r.wave,
        };
        if !released {
            a.snapshot = r.previous.clone();
            a.pinned = r.pin_previous || r.state == RolloutState::Aborted;
        }
        a.rollout = Some(Place {
            seq: r.seq,
            state: r.state,
            wave,
            released,
        });
        Ok(())
    }

    /// Note a report of machine `m` (on the plan's channel): if its wave is
    /// released, record how it fares; a failure evaluates the rollout at
    /// once. Returns the record when the report changed it (a halt).
    pub fn on_report(
        &self,
        plan: &RolloutPlan,
        m: &Machine,
        report: &ReportRecord,
    ) -> Result<Option<RolloutRecord>, StoreError> {
        let Some(r) = self.latest(&plan.channel)? else {
            return Ok(None);
        };
        if r.is_baseline() || r.state == RolloutState::Aborted {
            return Ok(None);
        }
        let Some(head) = SnapshotId::from_hex(&r.head) else {
            return Ok(None);
        };
        let wave = plan.wave_of(&head, m);
        if r.state != RolloutState::Complete && wave > r.wave {
            return Ok(None);
        }
        let outcome = classify(report, &r.head);
        self.store
            .record_outcome(&r.channel, r.seq, &m.id, wave, outcome, self.now())?;
        if outcome.is_failure() && matches!(r.state, RolloutState::Running | RolloutState::Paused) {
            return self.evaluate(plan);
        }
        Ok(None)
    }

    /// Look at the channel's rollout now: halt it if a released wave fails
    /// past the threshold, else release the next wave if it is due.
    /// Returns the new record when it changed.
    pub fn evaluate(&self, plan: &RolloutPlan) -> Result<Option<RolloutRecord>, StoreError> {
        let _g = self.evaluating.lock().unwrap_or_else(|p| p.into_inner());
        self.evaluate_locked(plan)
    }

    fn evaluate_locked(&self, plan: &RolloutPlan) -> Result<Option<RolloutRecord>, StoreError> {
        loop {
            let Some(r) = self.load(&plan.channel)? else {
                return Ok(None);
            };
            if r.is_baseline() || !matches!(r.state, RolloutState::Running | RolloutState::Paused) {
                return Ok(None);
            }
            let now = self.now();
            let counts = self.store.outcome_counts(&r.channel, r.seq)?;
            let mut n = r.clone();
            if let Some(why) = halt_reason(plan, &r, &counts) {
                n.state = RolloutState::Halted;
                n.reason = Some(why);
            } else if Self::due(plan, &r, now) {
                n.wave += 1;
                n.wave_started = now;
                if n.wave >= plan.last_wave() {
                    n.state = RolloutState::Complete;
                    n.reason = Some("every wave released".into());
                }
            } else {
                return Ok(None);
            }
            n.changed = now;
            n.version += 1;
            if self.store.update_rollout(&n)? {
                match n.state {
                    RolloutState::Halted => tracing::error!(
                        "rollout {} #{}: {}",
                        n.channel,
                        n.seq,
                        n.reason.as_deref().unwrap_or("")
                    ),
                    _ => tracing::warn!("rollout {} #{}: {} released", n.channel, n.seq, plan.wave_name(n.wave)),
                }
                self.remember(&plan.channel, Some(n.clone()));
                return Ok(Some(n));
            }
        }
    }

    /// Carry out an administrator's command on the channel's rollout to
    /// `head` (its head now).
    pub fn command(&self, plan: &RolloutPlan, head: &str, cmd: Command) -> Result<RolloutRecord, CommandError> {
        let _g = self.evaluating.lock().unwrap_or_else(|p| p.into_inner());
        self.settle(plan, head)?;
        loop {
            let Some(r) = self.load(&plan.channel)? else {
                return Err(CommandError::Conflict(format!(
                    "channel {} has no rollout",
                    plan.channel
                )));
            };
            if r.is_baseline() {
                return Err(CommandError::Conflict(format!(
                    "channel {} has no rollout: its head {} is released to every machine",
                    plan.channel,
                    short(&r.head)
                )));
            }
            let now = self.now();
            let mut n = r.clone();
            match (cmd, r.state) {
                (Command::Pause, RolloutState::Running) => {
                    n.state = RolloutState::Paused;
                    n.reason = Some("paused by an administrator".into());
                }
                (Command::Pause, RolloutState::Paused) | (Command::Resume, RolloutState::Running) => return Ok(r),
                (Command::Resume, RolloutState::Paused | RolloutState::Halted) => {
                    // The administrator has seen the failures: they no
                    // longer count, and the wave soaks again from now.
                    let excused = self.store.excuse_failures(&r.channel, r.seq)?;
                    tracing::warn!(
                        "rollout {} #{}: resumed; {excused} failed machine(s) excused",
                        r.channel,
                        r.seq
                    );
                    n.state = RolloutState::Running;
                    n.reason = None;
                    n.wave_started = now;
                }
                (Command::Abort, RolloutState::Aborted) => return Ok(r),
                (Command::Abort, _) => {
                    n.state = RolloutState::Aborted;
                    n.reason = Some(format!(
                        "aborted by an administrator: every machine is sent {} again",
                        short(&r.previous)
                    ));
                    n.pin_previous = true;
                }
                (c, s) => {
                    return Err(CommandError::Conflict(format!(
                        "rollout {} #{} is {}: {}",
                        r.channel,
                        r.seq,
                        s.as_str(),
                        match (c, s) {
                            (Command::Pause, RolloutState::Halted) => "it already releases no further wave",
                            (_, RolloutState::Aborted) =>
                                "an aborted rollout stays aborted; commit a new head to start another",
                            _ => "there is nothing left to pause or resume",
                        }
                    )))
                }
            }
            n.changed = now;
            n.version += 1;
            if self.store.update_rollout(&n)? {
                self.remember(&plan.channel, Some(n.clone()));
                return Ok(n);
            }
        }
    }

    /// The outcome counts of a rollout, from the database.
    pub fn counts(&self, r: &RolloutRecord) -> Result<Vec<OutcomeCount>, StoreError> {
        self.store.outcome_counts(&r.channel, r.seq)
    }

    /// Every machine's part in the latest rollout of its channel.
    pub fn members(&self) -> Result<Vec<Member>, StoreError> {
        self.store.members()
    }

    /// Start the evaluator over the plans of `changes`' fleet file, once:
    /// waves are released when due even if no machine asks. It ends when
    /// `self` or `changes` is dropped or closed. Must be called within a
    /// tokio runtime.
    pub fn watch(self: &Arc<Self>, changes: &Arc<crate::changes::Changes>, repo: Arc<slate_repo::Repo>) {
        if self.watching.swap(true, Ordering::SeqCst) {
            return;
        }
        tokio::spawn(evaluator(Arc::downgrade(self), Arc::downgrade(changes), repo));
    }
}

/// Every [`EVALUATE_INTERVAL`]: each channel with a plan is settled on its
/// head and evaluated; a change wakes the machines waiting for one.
async fn evaluator(rollouts: Weak<Rollouts>, changes: Weak<crate::changes::Changes>, repo: Arc<slate_repo::Repo>) {
    let mut ticks = tokio::time::interval(EVALUATE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let (Some(ro), Some(ch)) = (rollouts.upgrade(), changes.upgrade()) else {
            return;
        };
        if ch.is_closing() {
            return;
        }
        let fleet = ch.fleet();
        if fleet.rollouts.is_empty() {
            continue;
        }
        let r = repo.clone();
        // Channel files and the database block.
        let changed = tokio::task::spawn_blocking(move || {
            let mut changed = false;
            for plan in fleet.rollouts.values() {
                let head = match r.channel_history(&plan.channel) {
                    Ok(h) => match h.last() {
                        Some(h) => h.to_hex(),
                        None => continue,
                    },
                    Err(e) => {
                        tracing::error!("rollout {}: {e}", plan.channel);
                        continue;
                    }
                };
                let step = ro.settle(plan, &head).and_then(|_| ro.evaluate(plan));
                match step {
                    Ok(Some(_)) => changed = true,
                    Ok(None) => {}
                    Err(e) => tracing::error!("rollout {}: {e}", plan.channel),
                }
            }
            changed
        })
        .await
        .unwrap_or(false);
        if changed {
            ch.bump();
        }
    }
}

/// What a report says about the rollout to `head`, for a machine whose
/// wave is released (`docs/operations.md`, "How failures are counted").
pub fn classify(report: &ReportRecord, head: &str) -> Outcome {
    let word = |v: &serde_json::Value| v.get("result").and_then(|r| r.as_str()).map(str::to_string);
    let boot = word(&report.boot);
    let update = word(&report.last_update);
    let aimed_at_head = report.target.as_deref() == Some(head);
    let runs_head = report.current.as_deref() == Some(head);
    // The slot that failed still holds the new head after a fall-back.
    let head_in_other_slot = report.slots.as_object().is_some_and(|slots| {
        slots
            .iter()
            .any(|(name, id)| id.as_str() == Some(head) && report.active_slot.as_deref() != Some(name.as_str()))
    });
    if !runs_head
        && ((boot.as_deref() == Some("fell-back") && (aimed_at_head || head_in_other_slot))
            || (update.as_deref() == Some("failed-before") && aimed_at_head))
    {
        return Outcome::FellBack;
    }
    if runs_head && matches!(boot.as_deref(), Some("rescue" | "policy-fell-back")) {
        return Outcome::BootFailed;
    }
    if !runs_head && update.as_deref() == Some("error") && aimed_at_head {
        return Outcome::UpdateFailed;
    }
    if runs_head {
        Outcome::Updated
    } else {
        Outcome::Pending
    }
}

/// A share for people: `20%`, `12.5%`.
pub fn percent(share: f64) -> String {
    let p = (share * 1000.0).round() / 10.0;
    if p.fract() == 0.0 {
        format!("{p:.0}%")
    } else {
        format!("{p:.1}%")
    }
}

/// Why the rollout must halt, if a released wave's failures reach the
/// plan's threshold: at least `min_failures` machines and at least
/// `halt_at` of the machines of that wave that reported (excused ones
/// left out).
pub fn halt_reason(plan: &RolloutPlan, r: &RolloutRecord, counts: &[OutcomeCount]) -> Option<String> {
    for wave in 0..=r.wave.min(plan.last_wave()) {
        let of_wave = || counts.iter().filter(move |c| c.wave == wave && !c.excused);
        let took: u64 = of_wave().map(|c| c.machines).sum();
        let count = |o: Outcome| of_wave().filter(|c| c.outcome == o).map(|c| c.machines).sum::<u64>();
        let kinds = [
            (count(Outcome::FellBack), "fell back to their old slot"),
            (count(Outcome::UpdateFailed), "failed their update"),
            (
                count(Outcome::BootFailed),
                "booted the new snapshot in rescue or policy fall-back",
            ),
        ];
        let failed: u64 = kinds.iter().map(|k| k.0).sum();
        if failed == 0 || failed < u64::from(plan.min_failures) || (failed as f64) < plan.halt_at * took as f64 {
            continue;
        }
        let who = match wave {
            0 => "canary machines".to_string(),
            _ => format!("machines of {}", plan.wave_name(wave)),
        };
        let what: Vec<String> = kinds
            .iter()
            .filter(|k| k.0 > 0)
            .map(|k| format!("{} {}", k.0, k.1))
            .collect();
        let what = match what.as_slice() {
            [one] if kinds.iter().filter(|k| k.0 > 0).count() == 1 => {
                // "3 of 4 canary machines fell back to their old slot"
                one.split_once(' ').map_or(one.clone(), |(_, rest)| rest.to_string())
            }
            _ => format!("failed ({})", what.join(", ")),
        };
        return Some(format!(
            "halted: {failed} of {took} {who} {what} on {} (threshold {}, at least {} machine{})",
            short(&r.head),
            percent(plan.halt_at),
            plan.min_failures,
            if plan.min_failures == 1 { "" } else { "s" }
        ));
    }
    None
}
