//! Hearing at once that the fleet assigned another snapshot (issue 12):
//! one long-poll of `POST /v1/fleet/assignment?wait=SECS&known=ID`
//! (`docs/format/http.md`, "Waiting for a change"), whose answer is checked
//! exactly like a pass's before anyone acts on it.
//!
//! [`wait_for_assignment`] changes nothing on the machine: it takes no lock
//! and keeps no state, so that `slate update --watch` and other daemons
//! (a cache that starts filling when a new snapshot is assigned) can wait
//! while a pass runs. Acting on the answer is the caller's business: for
//! the slots, a pass ([`crate::update::run_after_others`]), which also
//! fetches a rotated trust document this function does not.

use std::time::Duration;

use slate_core::SnapshotId;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::http::Http;
use crate::trust::{Trusted, Verified};

/// The longest wait a server grants (it caps `wait` there, under its 30 s
/// limit per request); asking for more waits no longer.
pub const MAX_WAIT: Duration = Duration::from_secs(25);

/// How much longer than the wait the agent gives the server to answer:
/// the server recomputes and signs after the wait, and links are slow.
pub const ANSWER_MARGIN: Duration = Duration::from_secs(10);

/// Ask the fleet server for this machine's assignment, waiting up to
/// `wait` (at most [`MAX_WAIT`]) for it to name another snapshot than
/// `known`. `Some` is a verified assignment (signed by a trusted fleet key,
/// for this machine, a command-running policy signed by a release key,
/// not expired, not older than one the machine accepted) that names
/// another snapshot than `known`; `None` means nothing changed within the
/// wait. With `known` `None`, the current assignment is returned at once.
///
/// Servers are tried in AGENT.toml's order as for a pass (an unreachable
/// one passes the request to the next). A server that does not know the
/// parameters answers at once with the same snapshot: `None` then comes
/// back early, and a caller that loops must not ask again before `wait`
/// has passed (as `slate update --watch` does), or it would poll in a loop.
///
/// Errors: [`Error::Offline`] when no fleet server answered (or AGENT.toml
/// names mirrors only), [`Error::Untrusted`] when the answer fails a check
/// (a pass refreshes the trust document and reports it), others as for
/// any request.
pub fn wait_for_assignment(
    cfg: &Config,
    http: &Http,
    trusted: &Trusted,
    known: Option<&SnapshotId>,
    wait: Duration,
) -> Result<Option<Verified>> {
    if !cfg.has_fleet_server() {
        return Err(Error::Offline("AGENT.toml names mirrors only".into()));
    }
    let wait = wait.min(MAX_WAIT);
    let who = crate::identity::detect(cfg.machine_id.as_deref(), &cfg.labels);
    let body = serde_json::json!({ "machine": who });
    let answer = match known {
        Some(k) if !wait.is_zero() => http.post_json_within(
            &format!("/v1/fleet/assignment?wait={}&known={}", wait.as_secs(), k.to_hex()),
            &body,
            Some(wait + ANSWER_MARGIN),
        )?,
        _ => http.post_json("/v1/fleet/assignment", &body)?,
    };
    let verified = crate::trust::verify_assignment(&answer, &who.id, trusted)?;
    if Some(&verified.assignment.snapshot) == known {
        return Ok(None);
    }
    // The pass's freshness checks, read from the state it keeps (no lock:
    // the state file is replaced whole, never written in place).
    let last_issued = crate::state::State::load(&cfg.state_dir).map_or(0, |s| s.assignment_issued_at);
    let now = crate::state::now().max(0) as u64;
    crate::trust::freshness(&verified.assignment, last_issued, now)
        .map_err(|why| Error::Untrusted(format!("not acting on the new assignment: {why}")))?;
    Ok(Some(verified))
}
