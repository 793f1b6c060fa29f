//! The administrator's rollout endpoints (`docs/format/http.md`,
//! "Rollouts"): `GET /v1/fleet/rollouts` and `POST
//! /v1/fleet/rollouts/{pause,resume,abort}`, behind the administrator
//! token like `GET /v1/fleet/machines`.

use std::sync::Arc;

use axum::extract::{FromRequest, Path, Request, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{percent, Command, CommandError, Outcome, OutcomeCount, RolloutPlan, RolloutRecord, RolloutState};
use crate::error::{ApiError, ApiResult};
use crate::fleet::api::JsonBody;
use crate::fleet::store::MachineRow;
use crate::AppState;

/// One wave of a rollout, as `GET /v1/fleet/rollouts` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaveStatus {
    /// 0 for the canaries, then 1, 2, ...
    pub wave: u32,
    /// `canary`, `wave 1 (10%)`.
    pub name: String,
    /// Share of the channel's machines up to this wave; 0 for canaries.
    pub percent: u32,
    /// Soak time of the previous wave before this one, seconds.
    pub after: u64,
    /// Whether it is released.
    pub released: bool,
    /// Machines of this wave that reported since it was released.
    pub machines: u64,
    /// Of those: running the new head.
    pub updated: u64,
    /// Not there yet.
    pub pending: u64,
    /// Fell back to their old slot.
    pub fell_back: u64,
    /// Failed their update pass.
    pub update_failed: u64,
    /// Booted the new head in rescue or policy fall-back.
    pub boot_failed: u64,
    /// Failures excused by a resume (counted in none of the above).
    pub excused: u64,
}

/// A channel's rollout, as `GET /v1/fleet/rollouts` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutStatus {
    /// The channel.
    pub channel: String,
    /// Its latest rollout; null while the channel has no snapshot.
    pub rollout: Option<RolloutRecord>,
    /// The plan's canaries, for people (`hostname canary-*`).
    pub canary: String,
    /// The plan's failure threshold (share of a wave).
    pub halt_at: f64,
    /// The plan's fewest failures that halt.
    pub min_failures: u32,
    /// Canaries and waves.
    pub waves: Vec<WaveStatus>,
    /// When the next wave is released if nothing stops it, Unix seconds.
    pub next_wave_at: Option<u64>,
    /// The server's time, Unix seconds.
    pub now: u64,
}

/// `GET /v1/fleet/rollouts` answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RolloutsResponse {
    /// One entry per channel with a `[rollout]` section, by channel.
    pub rollouts: Vec<RolloutStatus>,
}

/// `POST /v1/fleet/rollouts/ACTION` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    /// The channel; may be left out when the fleet file has one rollout.
    #[serde(default)]
    pub channel: Option<String>,
}

fn canary_text(plan: &RolloutPlan) -> String {
    let c = &plan.canary;
    let mut parts = Vec::new();
    if !c.machines.is_empty() {
        parts.push(format!("machines {}", c.machines.join(",")));
    }
    if let Some((h, _)) = &c.hostname {
        parts.push(format!("hostname {h}"));
    }
    if !c.labels.is_empty() {
        let l: Vec<String> = c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        parts.push(format!("labels {}", l.join(",")));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(" or ")
    }
}

/// The status of `plan`'s rollout `r` with its counts.
pub fn status(plan: &RolloutPlan, r: Option<RolloutRecord>, counts: &[OutcomeCount], now: u64) -> RolloutStatus {
    let mut waves = Vec::new();
    for wave in 0..=plan.last_wave() {
        let of = |o: Outcome| {
            counts
                .iter()
                .filter(|c| c.wave == wave && c.outcome == o && !c.excused)
                .map(|c| c.machines)
                .sum::<u64>()
        };
        let excused = counts
            .iter()
            .filter(|c| c.wave == wave && c.excused)
            .map(|c| c.machines)
            .sum();
        let (updated, pending) = (of(Outcome::Updated), of(Outcome::Pending));
        let (fell_back, update_failed, boot_failed) = (
            of(Outcome::FellBack),
            of(Outcome::UpdateFailed),
            of(Outcome::BootFailed),
        );
        let w = (wave as usize).checked_sub(1).and_then(|i| plan.waves.get(i));
        waves.push(WaveStatus {
            wave,
            name: plan.wave_name(wave),
            percent: w.map_or(0, |w| w.percent),
            after: w.map_or(0, |w| w.after),
            released: r.as_ref().is_some_and(|r| match r.state {
                RolloutState::Aborted => false,
                RolloutState::Complete => true,
                _ => wave <= r.wave,
            }),
            machines: updated + pending + fell_back + update_failed + boot_failed + excused,
            updated,
            pending,
            fell_back,
            update_failed,
            boot_failed,
            excused,
        });
    }
    let next_wave_at = r.as_ref().filter(|r| r.state == RolloutState::Running).and_then(|r| {
        plan.waves
            .get(r.wave as usize)
            .map(|w| r.wave_started.saturating_add(w.after))
    });
    RolloutStatus {
        channel: plan.channel.clone(),
        rollout: r,
        canary: canary_text(plan),
        halt_at: plan.halt_at,
        min_failures: plan.min_failures,
        waves,
        next_wave_at,
        now,
    }
}

/// The head of `channel` now (64 hex), if it has one. Blocking.
fn head(st: &AppState, channel: &str) -> ApiResult<Option<String>> {
    let h = st.repo.channel_history(channel).map_err(ApiError::internal)?;
    Ok(h.last().map(|id| id.to_hex()))
}

/// Settle and evaluate every plan (or `only` that channel's) and say where
/// each stands.
pub async fn statuses(st: &AppState, only: Option<String>) -> ApiResult<Vec<RolloutStatus>> {
    let fleet = st.fleet();
    if fleet.rollouts.is_empty() {
        return Ok(Vec::new());
    }
    let st2 = st.clone();
    // Channel files and the database block.
    tokio::task::spawn_blocking(move || {
        let ro = &st2.rollouts;
        let mut out = Vec::new();
        for plan in fleet.rollouts.values() {
            if only.as_ref().is_some_and(|c| *c != plan.channel) {
                continue;
            }
            let r = match head(&st2, &plan.channel)? {
                None => None,
                Some(h) => {
                    ro.settle(plan, &h).map_err(ApiError::internal)?;
                    ro.evaluate(plan).map_err(ApiError::internal)?;
                    ro.latest(&plan.channel).map_err(ApiError::internal)?
                }
            };
            let counts = match &r {
                Some(r) if !r.is_baseline() => ro.counts(r).map_err(ApiError::internal)?,
                _ => Vec::new(),
            };
            out.push(status(plan, r, &counts, ro.now()));
        }
        Ok(out)
    })
    .await?
}

/// Fill in each machine's `rollout` from the latest rollouts' members.
pub async fn mark_members(st: &AppState, machines: &mut [MachineRow]) -> ApiResult<()> {
    let ro = st.rollouts.clone();
    let members = tokio::task::spawn_blocking(move || ro.members())
        .await?
        .map_err(ApiError::internal)?;
    let by_id: std::collections::HashMap<&str, _> = members.iter().map(|m| (m.machine.as_str(), m)).collect();
    for row in machines {
        if let Some(m) = by_id.get(row.machine.as_str()) {
            if row.channel.as_deref() == Some(m.channel.as_str()) {
                row.rollout = serde_json::json!({
                    "rollout": m.seq,
                    "wave": m.wave,
                    "outcome": m.outcome.as_str(),
                    "excused": m.excused,
                });
            }
        }
    }
    Ok(())
}

fn no_store(resp: impl IntoResponse) -> Response {
    let mut resp = resp.into_response();
    resp.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    resp
}

/// `GET /v1/fleet/rollouts`: an administrator's request only.
pub async fn list(State(st): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    crate::auth::require_admin(&st, &headers).await?;
    let rollouts = statuses(&st, None).await?;
    Ok(no_store(Json(RolloutsResponse { rollouts })))
}

/// `POST /v1/fleet/rollouts/{pause,resume,abort}` with `{"channel": C}`:
/// an administrator's request only; answers the rollout's new status.
pub async fn command(
    State(st): State<AppState>,
    Path(action): Path<String>,
    headers: HeaderMap,
    req: Request,
) -> ApiResult<Response> {
    crate::auth::require_admin(&st, &headers).await?;
    let cmd = match action.as_str() {
        "pause" => Command::Pause,
        "resume" => Command::Resume,
        "abort" => Command::Abort,
        _ => {
            return Err(ApiError::NotFound(
                "no such rollout command: POST /v1/fleet/rollouts/pause, resume or abort".into(),
            ))
        }
    };
    let body = JsonBody::<CommandRequest>::from_request(req, &()).await?;
    let fleet = st.fleet();
    let plan: Arc<RolloutPlan> = match &body.value.channel {
        Some(c) => fleet.rollouts.get(c).cloned().ok_or_else(|| {
            ApiError::NotFound(format!(
                "the fleet file has no [rollout.{c:?}]: channel {c} is not rolled out in waves"
            ))
        })?,
        None => match fleet.rollouts.values().collect::<Vec<_>>().as_slice() {
            [one] => (*one).clone(),
            many => {
                return Err(ApiError::BadRequest(format!(
                    "the fleet file has {} rollouts; say which channel (--channel)",
                    many.len()
                )))
            }
        },
    };
    let (st2, p) = (st.clone(), plan.clone());
    // Channel files and the database block.
    let done = tokio::task::spawn_blocking(move || {
        let h = head(&st2, &p.channel)?.ok_or_else(|| {
            ApiError::NotFound(format!("channel {} has no snapshots: there is no rollout", p.channel))
        })?;
        st2.rollouts.command(&p, &h, cmd).map_err(|e| match e {
            CommandError::Conflict(why) => ApiError::Conflict(why),
            CommandError::Store(e) => ApiError::internal(e),
        })
    })
    .await??;
    tracing::warn!(
        "rollout {} #{}: {} by an administrator: now {}",
        done.channel,
        done.seq,
        action,
        done.state.as_str()
    );
    // Machines waiting for a change hear of an abort or a resume at once.
    st.changes.bump();
    let mut now = statuses(&st, Some(plan.channel.clone())).await?;
    let one = now
        .pop()
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("the rollout vanished")))?;
    Ok(no_store(Json(one)))
}

/// The halt threshold for people: `20% and at least 2 machines`.
pub fn threshold_text(halt_at: f64, min_failures: u32) -> String {
    format!("{} and at least {min_failures}", percent(halt_at))
}
