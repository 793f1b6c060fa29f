//! The fleet endpoints (`docs/format/http.md`, "Fleet"): a machine asks
//! what to run, reports what it did, and the admin lists the machines.
//!
//! Bodies are read with a size limit and parsed here (not with axum's
//! `Json`), so that every rejection, oversized or malformed, is answered
//! with the protocol's `{"error": ...}` and one clear sentence.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use slate_core::SnapshotId;
use slate_repo::Repo;

use super::config::{Choice, FleetConfig, Selection};
use super::machine::{check_text, Machine};
use super::store::{MachineRow, ReportRecord};
use crate::changes::MAX_WAIT;
use crate::error::{ApiError, ApiResult};
use crate::{AppState, BODY_LIMIT};

/// A JSON request body, limited to [`BODY_LIMIT`] bytes.
pub struct JsonBody<T> {
    /// The parsed value.
    pub value: T,
    /// The body as received (valid UTF-8, since it parsed as JSON).
    pub raw: String,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // `Bytes` honours the router's DefaultBodyLimit and rejects with 413.
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(format!("the request body is larger than {BODY_LIMIT} bytes"))
            } else {
                ApiError::BadRequest(format!("cannot read the request body: {}", r.body_text()))
            }
        })?;
        let value =
            serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest(format!("invalid JSON request: {e}")))?;
        let raw = String::from_utf8(bytes.to_vec())
            .map_err(|_| ApiError::BadRequest("the request body is not UTF-8".into()))?;
        Ok(JsonBody { value, raw })
    }
}

/// `POST /v1/fleet/assignment` body.
#[derive(Debug, Deserialize)]
pub struct AssignmentRequest {
    /// Who asks.
    pub machine: Machine,
}

/// `POST /v1/fleet/assignment` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The machine id, echoed.
    pub machine: String,
    /// The channel it runs.
    pub channel: String,
    /// The snapshot to run: the channel's head, or the pinned snapshot.
    pub snapshot: String,
    /// Whether `snapshot` is an explicit pin rather than the head.
    pub pinned: bool,
    /// Which fleet rule decided.
    pub rule: String,
    /// The state policy the fleet assigns these machines (TOML text), when
    /// it overrides the image's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_policy: Option<String>,
    /// Release-key signatures of `state_policy` (the text of the policy's
    /// `.sig` file), required by agents when the policy runs commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_policy_signatures: Option<String>,
    /// When the fleet key signed it, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<u64>,
    /// When it goes stale, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// The fleet key (64 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Its Ed25519 signature of the canonical assignment (128 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// The machine's place in its channel's rollout, when one is in
    /// progress or ended (`docs/operations.md`); not signed: it explains
    /// `snapshot`, which is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<super::rollout::Place>,
    /// Base URLs where the machine may fetch immutable objects by their
    /// repository paths (`slate serve --objects-url`); absent when none.
    /// Agents that do not know the field ignore it: `signature` does not
    /// cover it, `objects_signature` does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects_urls: Vec<String>,
    /// The fleet key's signature of `objects_urls` bound to this very
    /// assignment (`docs/format/trust.md`, "Objects URLs").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects_signature: Option<String>,
}

/// The last update pass in a report. Absent fields stay absent when
/// stored, so `fleet status --json` shows what the agent sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastUpdate {
    /// `ok`, `error`, `offline` or `up-to-date`.
    pub result: String,
    /// A sentence for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Bytes downloaded by the pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_fetched: Option<u64>,
    /// When it ended, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<u64>,
    /// Paths where state the machine keeps hides a file the snapshot it
    /// wrote changes (the state policy's server, local and backup paths).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shadowed: Vec<String>,
}

/// The last boot in a report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Boot {
    /// `good`, `pending` or `fell-back`.
    pub result: String,
    /// Slot booted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// Snapshot booted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// What the initramfs step warned about.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// How full a network-booted machine's cache is, in a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cache {
    /// Bytes of the snapshot the cache holds.
    pub cached_bytes: u64,
    /// Bytes of the snapshot in all (never fewer than `cached_bytes`).
    pub total_bytes: u64,
    /// Whether it holds all of them: the machine boots without a server.
    pub complete: bool,
}

/// `POST /v1/fleet/report` body. Unknown fields are accepted (and kept in
/// the stored raw report) so that newer agents can talk to this server.
#[derive(Debug, Deserialize)]
pub struct ReportRequest {
    /// Who reports.
    pub machine: Machine,
    /// Snapshot it runs.
    #[serde(default)]
    pub current: Option<String>,
    /// Snapshot it is moving to.
    #[serde(default)]
    pub target: Option<String>,
    /// Slot it booted from.
    #[serde(default)]
    pub active_slot: Option<String>,
    /// What each slot holds.
    #[serde(default)]
    pub slots: BTreeMap<String, Option<String>>,
    /// Slot to be tried on the next boot.
    #[serde(default)]
    pub pending: Option<String>,
    /// The last update pass.
    #[serde(default)]
    pub last_update: Option<LastUpdate>,
    /// The last boot.
    #[serde(default)]
    pub boot: Option<Boot>,
    /// How the machine runs: `ab`, `diskless`, `cached` or `live`.
    #[serde(default)]
    pub mode: Option<String>,
    /// A network-booted machine's cache.
    #[serde(default)]
    pub cache: Option<Cache>,
}

/// Most slots a report may list.
const MAX_SLOTS: usize = 8;

fn check_id(field: &str, v: &Option<String>) -> Result<(), String> {
    match v {
        Some(s) if SnapshotId::from_hex(s).is_none() || s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) => {
            Err(format!(
                "{field} must be a snapshot id (64 lower-case hex digits) or null"
            ))
        }
        _ => Ok(()),
    }
}

fn check_slot(field: &str, v: &str) -> Result<(), String> {
    if v.is_empty() || v.len() > 16 || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b)) {
        return Err(format!(
            "{field} must be a slot name (1 to 16 letters, digits, '_' or '-')"
        ));
    }
    Ok(())
}

/// A machine's mode: `docs/format/http.md` lists those of this version
/// (`ab`, `diskless`, `cached`, `live`); as for result words, any short
/// lower-case word is kept, for agents that know one more.
fn check_mode(v: &str) -> Result<(), String> {
    if v.is_empty() || v.len() > 16 || !v.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
        return Err("mode must be a word such as ab, diskless, cached or live (1 to 16 of a-z, '-')".into());
    }
    Ok(())
}

/// A result word: `docs/format/http.md` lists the values of this version
/// (`ok`, `error`, ...), but agents and servers are upgraded separately
/// across a fleet, so any short lower-case word is stored rather than
/// losing the report of an agent that knows one more outcome.
fn check_word(field: &str, v: &str) -> Result<(), String> {
    if v.is_empty()
        || v.len() > 32
        || !v
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!(
            "{field} must be a result word such as {} (1 to 32 of a-z, 0-9, '-')",
            if field.starts_with("boot") {
                "good, pending or fell-back"
            } else {
                "ok, error, offline or up-to-date"
            }
        ));
    }
    Ok(())
}

impl ReportRequest {
    /// Check every field; the error names the field.
    pub fn validate(mut self, raw: String) -> Result<ReportRecord, String> {
        self.machine = self.machine.validate()?;
        check_id("current", &self.current)?;
        check_id("target", &self.target)?;
        if let Some(s) = &self.active_slot {
            check_slot("active_slot", s)?;
        }
        if let Some(s) = &self.pending {
            check_slot("pending", s)?;
        }
        if self.slots.len() > MAX_SLOTS {
            return Err(format!("slots has more than {MAX_SLOTS} entries"));
        }
        for (name, id) in &self.slots {
            check_slot("a slot name in slots", name)?;
            check_id(&format!("slots.{name}"), id)?;
        }
        if let Some(u) = &self.last_update {
            check_word("last_update.result", &u.result)?;
            if let Some(m) = &u.message {
                check_text("last_update.message", m, 4096)?;
            }
            if u.shadowed.len() > 256 {
                return Err("last_update.shadowed lists more than 256 paths".into());
            }
            for p in &u.shadowed {
                check_text("last_update.shadowed", p, 4096)?;
            }
        }
        if let Some(b) = &self.boot {
            check_word("boot.result", &b.result)?;
            if let Some(s) = &b.slot {
                check_slot("boot.slot", s)?;
            }
            check_id("boot.snapshot", &b.snapshot)?;
            if b.warnings.len() > 16 {
                return Err("boot.warnings lists more than 16 warnings".into());
            }
            for w in &b.warnings {
                check_text("boot.warnings", w, 1024)?;
            }
        }
        if let Some(m) = &self.mode {
            check_mode(m)?;
        }
        if let Some(c) = &self.cache {
            // The bytes are u64 already (serde refuses negatives, fractions
            // and strings); what is left is that they add up.
            if c.cached_bytes > c.total_bytes {
                return Err(format!(
                    "cache.cached_bytes ({}) is more than cache.total_bytes ({})",
                    c.cached_bytes, c.total_bytes
                ));
            }
        }
        Ok(ReportRecord {
            machine: self.machine.id,
            hostname: self.machine.hostname,
            current: self.current,
            target: self.target,
            active_slot: self.active_slot,
            slots: to_json(&self.slots),
            last_update: to_json(&self.last_update),
            boot: to_json(&self.boot),
            mode: self.mode,
            cache: to_json(&self.cache),
            raw,
        })
    }
}

/// A checked part of a report as a JSON value for the store.
fn to_json<T: Serialize>(v: &T) -> serde_json::Value {
    // Plain data (maps, strings, numbers) always serialises.
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// Unix seconds now.
pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Decide a machine's assignment: the fleet rules, then the repository for
/// the channel's current head (or a check that the pin exists). Blocking.
pub fn resolve(repo: &Repo, fleet: &FleetConfig, m: &Machine) -> ApiResult<Assignment> {
    let Selection { target, rule } = match fleet.choose(m) {
        Choice::Selected(s) => s,
        Choice::NoMatch => {
            return Err(ApiError::NotFound(format!(
                "no fleet rule matches machine {} ({}) and the fleet file has no [default]; \
                 add a [[machine]] rule or a [default] for it",
                m.id,
                m.describe()
            )))
        }
        Choice::DirectoryNotRead => {
            return Err(ApiError::Unavailable(format!(
                "machine {} is not named by the fleet file and the fleet's LDAP directory has not been read yet; \
                 ask again later",
                m.id
            )))
        }
        Choice::OnlyChannel => {
            let channels = repo.channels().map_err(ApiError::internal)?;
            match channels.as_slice() {
                [only] => Selection {
                    target: super::config::Target {
                        channel: only.clone(),
                        pin: None,
                        state_policy: None,
                    },
                    rule: "only channel".into(),
                },
                _ => {
                    return Err(ApiError::NotFound(format!(
                        "the server runs without a fleet file and the repository has {} channels; \
                         restart slate serve with --fleet FLEET.toml to say which machine runs which",
                        channels.len()
                    )))
                }
            }
        }
    };
    let history = repo.channel_history(&target.channel).map_err(ApiError::internal)?;
    let Some(head) = history.last() else {
        return Err(ApiError::NotFound(format!(
            "channel {} (fleet rule {rule}) has no snapshots in this repository; commit to it or fix the fleet file",
            target.channel
        )));
    };
    let snapshot = match target.pin {
        Some(pin) => {
            if !repo.storage.exists(&Repo::snapshot_keys(&pin)[0]) {
                return Err(ApiError::NotFound(format!(
                    "snapshot {pin} pinned by fleet rule {rule} is not in this repository; fix the fleet file"
                )));
            }
            pin
        }
        None => *head,
    };
    Ok(Assignment {
        machine: m.id.clone(),
        channel: target.channel,
        snapshot: snapshot.to_hex(),
        pinned: target.pin.is_some(),
        rule,
        state_policy_signatures: target
            .state_policy
            .as_ref()
            .filter(|p| !p.text.is_empty())
            .and_then(|p| p.signatures.clone()),
        state_policy: target.state_policy.filter(|p| !p.text.is_empty()).map(|p| p.text),
        issued_at: None,
        expires_at: None,
        key: None,
        signature: None,
        rollout: None,
        objects_urls: Vec::new(),
        objects_signature: None,
    })
}

/// [`resolve`], then the channel's rollout, if it has one: the previous
/// head for a machine whose wave is not released yet. Blocking.
pub fn resolve_with_rollout(st: &AppState, fleet: &FleetConfig, m: &Machine) -> ApiResult<Assignment> {
    let mut a = resolve(&st.repo, fleet, m)?;
    if a.pinned {
        return Ok(a);
    }
    if let Some(plan) = fleet.rollouts.get(&a.channel) {
        st.rollouts.apply(plan, m, &mut a).map_err(ApiError::internal)?;
    }
    Ok(a)
}

/// The machine a fleet request comes from, by its token; 401 without a
/// valid one. Checked before the body is read, so a client without a
/// token learns nothing, not even whether its request is well formed.
async fn caller(st: &AppState, headers: &HeaderMap) -> ApiResult<String> {
    crate::auth::authenticate(st, headers).await.map_err(|e| match e {
        ApiError::Unauthorized(why) => ApiError::Unauthorized(format!(
            "{why}. Every machine needs a token for the fleet API: on the server run \
             `slate fleet enroll MACHINE` and write the token to the file AGENT.toml's token_file names"
        )),
        e => e,
    })
}

/// 403 unless the machine in the body is the token's.
fn same_machine(caller: &str, machine: &str) -> ApiResult<()> {
    if caller != machine {
        return Err(ApiError::Forbidden(format!(
            "the token presented belongs to machine {caller}, not to {machine}; \
             a machine may only ask for and report its own assignment"
        )));
    }
    Ok(())
}

/// The query of `POST /v1/fleet/assignment` (`docs/format/http.md`,
/// "Waiting for a change"); both parameters are optional.
#[derive(Debug, Default, Deserialize)]
struct WaitQuery {
    /// Seconds to wait for a change, capped at [`MAX_WAIT`].
    wait: Option<String>,
    /// The snapshot the machine already has (64 lower-case hex digits).
    known: Option<String>,
}

/// How long to wait and for what: `None` answers at once.
fn wait_params(uri: &axum::http::Uri) -> ApiResult<Option<(Duration, SnapshotId)>> {
    let q = match uri.query() {
        None => WaitQuery::default(),
        Some(_) => {
            axum::extract::Query::<WaitQuery>::try_from_uri(uri)
                .map_err(|e| ApiError::BadRequest(format!("invalid query: {}", e.body_text())))?
                .0
        }
    };
    let wait = match q.wait.as_deref() {
        None => None,
        Some(w) => Some(
            w.parse::<u64>()
                .map_err(|_| ApiError::BadRequest(format!("wait={w:?} is not a number of seconds")))?,
        ),
    };
    let known = match q.known.as_deref() {
        None => None,
        Some(k) => {
            check_id("known", &Some(k.to_string())).map_err(ApiError::BadRequest)?;
            SnapshotId::from_hex(k)
        }
    };
    Ok(match (wait, known) {
        (Some(w), Some(k)) if w > 0 => Some((Duration::from_secs(w).min(MAX_WAIT), k)),
        _ => None,
    })
}

/// [`resolve`] on a blocking thread (channel files are read from disk);
/// with `record`, also note in the store that the machine asked.
async fn resolve_blocking(st: &AppState, machine: &Machine, record: bool) -> ApiResult<ApiResult<Assignment>> {
    let (st2, fleet, store, machine) = (st.clone(), st.fleet(), st.store.clone(), machine.clone());
    if !fleet.rollouts.is_empty() {
        st.rollouts.watch(&st.changes, st.repo.clone());
    }
    // Reading channel files and writing SQLite both block.
    Ok(tokio::task::spawn_blocking(move || {
        let answer = resolve_with_rollout(&st2, &fleet, &machine);
        if record {
            // Bookkeeping must not cost a machine its assignment: log and go on.
            let recorded = match &answer {
                Ok(a) => store.record_assigned(
                    &machine.id,
                    &super::view::AssignedRecord {
                        hostname: machine.hostname.clone(),
                        channel: a.channel.clone(),
                        rule: a.rule.clone(),
                        snapshot: a.snapshot.clone(),
                        labels: to_json(&machine.labels),
                    },
                    now(),
                ),
                Err(_) => store.record_assignment(&machine.id, machine.hostname.as_deref(), None, now()),
            };
            if let Err(e) = recorded {
                tracing::error!("{e}");
            }
        }
        answer
    })
    .await?)
}

/// Wait until `machine`'s assignment differs from `first` (or `wait` is
/// over, or the server shuts down), and return the assignment then.
async fn wait_for_change(
    st: &AppState,
    machine: &Machine,
    mut news: tokio::sync::watch::Receiver<u64>,
    first: Assignment,
    wait: Duration,
) -> ApiResult<Assignment> {
    // Over the cap, answer at once: the agent asks again after its wait,
    // and downloads keep their connections.
    let Some(_slot) = st.changes.try_wait_slot() else {
        tracing::warn!(
            "too many machines wait for a change; {} is answered at once",
            machine.id
        );
        return Ok(first);
    };
    st.changes.watch(st.repo.clone());
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if st.changes.is_closing() {
            return Ok(first);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return Ok(first),
            r = news.changed() => if r.is_err() { return Ok(first) },
        }
        // Each bump may concern another machine's channel: look again.
        match resolve_blocking(st, machine, false).await? {
            Ok(a) if a == first => continue,
            other => return other,
        }
    }
}

/// `POST /v1/fleet/assignment`: only with the machine's token, since the
/// answer carries its group's state policy and the request records when
/// it was last seen. With `?wait=SECS&known=ID`, when the assignment still
/// names `known`, the answer waits for it to change (at most [`MAX_WAIT`]).
pub async fn assignment(State(st): State<AppState>, headers: HeaderMap, req: Request) -> ApiResult<Json<Assignment>> {
    let caller = caller(&st, &headers).await?;
    let wait = wait_params(req.uri())?;
    let body = JsonBody::<AssignmentRequest>::from_request(req, &()).await?;
    let machine = body.value.machine.validate().map_err(ApiError::BadRequest)?;
    same_machine(&caller, &machine.id)?;
    // Listen before the first look, so that no change falls in between.
    let news = st.changes.subscribe();
    let mut answer = resolve_blocking(&st, &machine, true).await??;
    if let Some((wait, known)) = wait {
        if answer.snapshot == known.to_hex() {
            answer = wait_for_change(&st, &machine, news, answer, wait).await?;
        }
    }
    if let Some(s) = &st.signer {
        // Signed when answered, so that a long wait does not age it.
        s.sign(&mut answer)?;
    }
    Ok(Json(answer))
}

/// `POST /v1/boot/assignment`: the assignment of a machine that is booting
/// from the network, asked without a token (a machine with no disk holds
/// no secret; docs/diskless.md). It tells no more than the network boot's
/// iPXE script tells anyone who asks with the same identity, signed with
/// the fleet key so that the initramfs can check it; nothing is recorded
/// (an unauthenticated request must not write the fleet's table).
pub async fn boot_assignment(State(st): State<AppState>, req: Request) -> ApiResult<Json<Assignment>> {
    let body = JsonBody::<AssignmentRequest>::from_request(req, &()).await?;
    let machine = body.value.machine.validate().map_err(ApiError::BadRequest)?;
    let mut answer = resolve_blocking(&st, &machine, false).await??;
    if let Some(s) = &st.signer {
        s.sign(&mut answer)?;
    }
    Ok(Json(answer))
}

/// `POST /v1/fleet/report`: 204; only with the reporting machine's token.
pub async fn report(State(st): State<AppState>, headers: HeaderMap, req: Request) -> ApiResult<StatusCode> {
    let caller = caller(&st, &headers).await?;
    let body = JsonBody::<ReportRequest>::from_request(req, &()).await?;
    let machine = body.value.machine.clone().validate().map_err(ApiError::BadRequest)?;
    let record = body.value.validate(body.raw).map_err(ApiError::BadRequest)?;
    same_machine(&caller, &record.machine)?;
    let (store, rollouts, plan) = (st.store.clone(), st.rollouts.clone(), st.fleet().rollout_for(&machine));
    // SQLite writes block (and may wait on the database lock).
    let (halted, record) = tokio::task::spawn_blocking(move || {
        store.record_report(&record, now())?;
        let halted = match plan {
            Some(plan) => rollouts.on_report(&plan, &machine, &record)?,
            None => None,
        };
        Ok::<_, crate::fleet::StoreError>((halted, record))
    })
    .await?
    .map_err(ApiError::internal)?;
    st.metrics.report(&record);
    if halted.is_some() {
        // Machines waiting for a change hear of it at once.
        st.changes.bump();
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/fleet/machines` answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MachinesResponse {
    /// Every machine, ordered by id.
    pub machines: Vec<MachineRow>,
    /// The rollout of every channel with a plan (`GET /v1/fleet/rollouts`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollouts: Vec<super::rollout::api::RolloutStatus>,
}

/// `GET /v1/fleet/machines`: an administrator's request only.
pub async fn machines(State(st): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    crate::auth::require_admin(&st, &headers).await?;
    let store = st.store.clone();
    // SQLite reads block.
    let mut machines = tokio::task::spawn_blocking(move || store.machines())
        .await?
        .map_err(ApiError::internal)?;
    let rollouts = super::rollout::api::statuses(&st, None).await?;
    if !rollouts.is_empty() {
        super::rollout::api::mark_members(&st, &mut machines).await?;
    }
    let mut resp = Json(MachinesResponse { machines, rollouts }).into_response();
    resp.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}
