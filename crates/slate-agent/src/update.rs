//! One pass of the agent, planned and then applied; and the commands that
//! act on its state (status, boot-ok, rollback).

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;
use slate_core::manifest::{self, Manifest};
use slate_core::snapshot::{check_threshold, Snapshot};
use slate_core::{ChunkId, Id32, SnapshotId};
use slate_repo::progress::Progress;
use slate_repo::reader::ChunkReader;

use crate::config::{Bootloader, Config, Mode};
use crate::error::{Error, Result};
use crate::http::Http;
use crate::identity::{self, Identity};
use crate::remote::{cache_dir, RangeCache, Remote};
use crate::sources::{LocalChunks, Sources};
use crate::state::{now, other, write_atomic, LastPass, State};
use crate::{apply, boot, slot};

/// What a pass did, for people and scripts.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Outcome {
    /// ok, up-to-date, offline, dry-run; `next-boot` on a network-booted
    /// machine whose next boot runs the assigned snapshot.
    pub result: String,
    /// One sentence.
    pub message: String,
    /// The assigned snapshot.
    pub target: Option<String>,
    /// The slot written.
    pub slot: Option<String>,
    /// Bytes downloaded.
    pub bytes_fetched: u64,
    /// HTTP range requests for content.
    pub requests: u64,
    /// Bytes copied from local slots instead of downloaded.
    pub bytes_local: u64,
    /// In-place update figures.
    pub apply: Option<apply::ApplyStats>,
    /// Paths where state kept on this machine or the server (the state
    /// policy's server, local and backup paths) hides a file the new
    /// snapshot changes: the new version will not be seen.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shadowed: Vec<slate_state::audit::Shadow>,
}

/// Serialise agent passes on one machine.
struct AgentLock {
    _f: std::fs::File,
}

fn lock(state_dir: &Path) -> Result<AgentLock> {
    lock_or_wait(state_dir, false)
}

/// Take the agent's lock; with `wait`, wait for another agent to release
/// it instead of failing (`slate update --wait-for-lock`, the watch loop).
fn lock_or_wait(state_dir: &Path, wait: bool) -> Result<AgentLock> {
    std::fs::create_dir_all(state_dir)
        .map_err(|e| Error::Local(format!("cannot create {}: {e}", state_dir.display())))?;
    let p = state_dir.join("lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(|e| Error::Local(format!("cannot open {}: {e}", p.display())))?;
    if rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok() {
        return Ok(AgentLock { _f: f });
    }
    if !wait {
        return Err(Error::Local(format!(
            "another slate agent holds {}; try again when it is done (or pass --wait-for-lock)",
            p.display()
        )));
    }
    tracing::info!("waiting for another slate agent to release {}", p.display());
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| Error::Local(format!("cannot lock {}: {e}", p.display())))?;
    Ok(AgentLock { _f: f })
}

fn manifest_path(state_dir: &Path, id: &str) -> std::path::PathBuf {
    state_dir.join("manifests").join(id)
}

fn record_path(state_dir: &Path, id: &str) -> std::path::PathBuf {
    state_dir.join("snapshots").join(format!("{id}.snap"))
}

/// A snapshot this machine holds: its record and manifest bytes, checked.
fn local_snapshot(state_dir: &Path, id: &str) -> Option<(Snapshot, Vec<u8>)> {
    let sid = SnapshotId::from_hex(id)?;
    let rec = std::fs::read(record_path(state_dir, id)).ok()?;
    let snap = Snapshot::decode(&rec, &sid).ok()?;
    let bytes = std::fs::read(manifest_path(state_dir, id)).ok()?;
    (Id32::hash(&bytes) == snap.manifest.hash).then_some((snap, bytes))
}

/// The manifest of a snapshot this machine holds (a slot's, checked
/// against its record), by full id or unique prefix.
pub fn held_manifest(cfg: &Config, spec: &str) -> Result<(String, Manifest)> {
    let dir = cfg.state_dir.join("manifests");
    let mut ids: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n.starts_with(spec) && n.len() == 64)
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    let id = match ids.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(Error::Local(format!(
                "this machine holds no snapshot {spec} (its slots' manifests are in {})",
                dir.display()
            )))
        }
        _ => {
            return Err(Error::Local(format!(
                "{spec} names more than one snapshot this machine holds; give more digits"
            )))
        }
    };
    let (_, bytes) = local_snapshot(&cfg.state_dir, &id)
        .ok_or_else(|| Error::Local(format!("the agent's copy of snapshot {id} is damaged or incomplete")))?;
    Ok((id.clone(), decode_manifest(&bytes, &id)?))
}

fn decode_manifest(bytes: &[u8], id: &str) -> Result<Manifest> {
    manifest::decode(bytes).map_err(|e| Error::Untrusted(format!("manifest of snapshot {id}: {e}")))
}

/// Most shadowed paths a report lists (the server refuses longer lists).
const MAX_SHADOWED_REPORTED: usize = 256;

/// The body of `POST /v1/fleet/report` (docs/format/http.md), the same
/// for every kind of machine; what differs is where its values come from
/// ([`Report::ab`], [`Report::netboot`]).
#[derive(Debug, Serialize)]
struct Report<'a> {
    machine: &'a Identity,
    /// The snapshot the machine runs.
    current: Option<String>,
    /// The snapshot of the last pass.
    target: Option<String>,
    active_slot: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    slots: Option<serde_json::Value>,
    pending: Option<String>,
    last_update: Option<ReportUpdate<'a>>,
    boot: Option<ReportBoot<'a>>,
    /// `ab`, `live`, `diskless` or `cached`.
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<&'static str>,
    /// How full a network-booted machine's cache is.
    #[serde(skip_serializing_if = "Option::is_none")]
    cache: Option<crate::netboot::CacheReport>,
}

/// The report's `last_update`.
#[derive(Debug, Serialize)]
struct ReportUpdate<'a> {
    result: &'a str,
    message: &'a str,
    bytes_fetched: u64,
    at: i64,
    shadowed: Vec<&'a String>,
}

/// The report's `boot`.
#[derive(Debug, Serialize)]
struct ReportBoot<'a> {
    result: &'a str,
    slot: Option<String>,
    snapshot: Option<String>,
    warnings: &'a [String],
}

impl<'a> Report<'a> {
    /// The parts every machine reports from its state file.
    fn common(who: &'a Identity, state: &'a State) -> Report<'a> {
        Report {
            machine: who,
            current: None,
            target: state.last_pass.as_ref().and_then(|p| p.target.clone()),
            active_slot: None,
            slots: None,
            pending: None,
            last_update: state.last_pass.as_ref().map(|p| ReportUpdate {
                result: &p.result,
                message: &p.message,
                bytes_fetched: p.bytes_fetched,
                at: p.at,
                shadowed: p.shadowed.iter().take(MAX_SHADOWED_REPORTED).collect(),
            }),
            boot: None,
            mode: None,
            cache: None,
        }
    }

    /// An A/B machine (or a live system, whose agent writes a disk's slots
    /// while it runs from the medium): its slots.
    fn ab(who: &'a Identity, state: &'a State) -> Report<'a> {
        let current = state.active.as_deref().and_then(|a| state.slot(a).snapshot.clone());
        Report {
            current: current.clone(),
            active_slot: state.active.clone(),
            slots: Some(serde_json::json!({"a": state.a.snapshot, "b": state.b.snapshot})),
            pending: state.pending.clone(),
            boot: state.boot_result.as_ref().map(|r| ReportBoot {
                result: r,
                slot: state.active.clone(),
                snapshot: current,
                warnings: &state.boot_warnings,
            }),
            mode: Some(if booted_live() { "live" } else { "ab" }),
            ..Report::common(who, state)
        }
    }

    /// A network-booted machine: what it booted and how full its cache
    /// is, from the files the network boot left; no slots.
    fn netboot(who: &'a Identity, state: &'a State, found: &crate::netboot::Found) -> Report<'a> {
        let info = found.info.as_ref().ok();
        let current = info.map(|i| i.snapshot.clone());
        Report {
            current: current.clone(),
            boot: state.boot_result.as_ref().map(|r| ReportBoot {
                result: r,
                slot: None,
                snapshot: current,
                warnings: &state.boot_warnings,
            }),
            mode: info.map(|i| i.mode.as_str()),
            cache: found.cache.as_ref().ok().map(|(_, c)| c.report()),
            ..Report::common(who, state)
        }
    }
}

/// Whether the running system is a live medium's (`boot=slate-live` on
/// the kernel command line).
fn booted_live() -> bool {
    std::fs::read_to_string(cmdline_path()).is_ok_and(|c| {
        c.split_whitespace()
            .take_while(|w| *w != "--")
            .any(|w| w == "boot=slate-live")
    })
}

/// Send the machine's report; failures are logged, not fatal.
fn report(cfg: &Config, http: &Http, who: &Identity, state: &State) {
    let found;
    let body = match &cfg.mode {
        Mode::Ab(_) => Report::ab(who, state),
        Mode::Netboot => {
            found = crate::netboot::Found::read();
            Report::netboot(who, state, &found)
        }
    };
    // Plain data (strings, numbers, lists) always serialises.
    let body = serde_json::to_value(&body).unwrap_or_default();
    if let Err(e) = http.post_json("/v1/fleet/report", &body) {
        tracing::warn!("could not report to the server: {e}");
    }
}

/// Empty the download cache, and remove the deltas and the chunks rebuilt
/// from them: they served one update only and, kept, would grow the state
/// directory by every update. Also run when a pass finds its update done
/// (a pass killed after its switch left them behind).
fn drop_download_leftovers(state_dir: &Path) -> Result<()> {
    let dir = cache_dir(state_dir);
    if dir.join("ranges").exists() {
        RangeCache::open(&dir.join("ranges"))?.clear()?;
    }
    for d in [dir.join("deltas"), dir.join("store")] {
        if let Err(e) = std::fs::remove_dir_all(&d) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove {}: {e}", d.display());
            }
        }
    }
    Ok(())
}

/// Forget which snapshots failed to boot here, so that the next pass may
/// write one of them again (`slate update --retry`).
pub fn forget_failures(cfg: &Config) -> Result<usize> {
    let _lock = lock(&cfg.state_dir)?;
    let mut state = State::load(&cfg.state_dir)?;
    let n = state.failed.len();
    state.failed.clear();
    state.save(&cfg.state_dir)?;
    Ok(n)
}

/// Record a pass that ended in `e` as `result` (error, refused), report it
/// to the fleet, and hand the error back.
fn failed_pass(
    cfg: &Config,
    state: &mut State,
    http: &Http,
    who: &Identity,
    result: &str,
    e: Error,
    target: Option<String>,
) -> Error {
    state.last_pass = Some(LastPass {
        result: result.into(),
        message: e.to_string(),
        bytes_fetched: http.received.load(std::sync::atomic::Ordering::Relaxed),
        at: now(),
        target,
        shadowed: Vec::new(),
    });
    // Best effort: the error itself is what the caller must see.
    let _ = state.save(&cfg.state_dir);
    report(cfg, http, who, state);
    e
}

/// Run one pass; fails at once when another agent holds the lock.
pub fn run(cfg: &Config, dry_run: bool, progress: &dyn Progress) -> Result<Outcome> {
    run_after_others(cfg, dry_run, false, progress)
}

/// Run one pass; with `wait_lock`, after the pass another agent is running
/// (the hourly timer's and the watch loop's passes queue up rather than
/// fail, and never run at once). An A/B machine writes its reserve slot
/// ([`run_ab`]); a network-booted one only learns what its next boot runs
/// ([`run_netboot`]).
pub fn run_after_others(cfg: &Config, dry_run: bool, wait_lock: bool, progress: &dyn Progress) -> Result<Outcome> {
    match &cfg.mode {
        Mode::Ab(_) => run_ab(cfg, dry_run, wait_lock, progress),
        Mode::Netboot => run_netboot(cfg, dry_run, wait_lock),
    }
}

/// What asking the fleet for this machine's assignment gave.
enum Asked {
    /// No fleet server answered (why).
    Offline(String),
    /// The answer was stale: the pass ended there, recorded and reported.
    Ended(Outcome),
    /// A verified assignment, fresh and signed by a trusted fleet key.
    Fresh(crate::trust::Verified),
}

/// Ask the fleet servers for the assignment and check it as every pass
/// does: a rotated trust document first, then the fleet key's signature,
/// this machine, an expired trust document, expiry and replay. A refusal
/// is recorded and reported (not in a dry run) and returned as the error.
fn ask_fleet(
    cfg: &Config,
    state: &mut State,
    trusted: &mut crate::trust::Trusted,
    http: &Http,
    who: &Identity,
    dry_run: bool,
) -> Result<Asked> {
    let now_s = now().max(0) as u64;
    let answer = if cfg.has_fleet_server() {
        http.post_json("/v1/fleet/assignment", &serde_json::json!({ "machine": who }))
    } else {
        Err(Error::Offline("AGENT.toml names mirrors only".into()))
    };
    let answer = match answer {
        Ok(a) => a,
        Err(Error::Offline(why)) => return Ok(Asked::Offline(why)),
        Err(e) => return Err(e),
    };
    // New keys first: a rotated fleet key must verify this very assignment.
    // Nothing from the answer is kept or acted on before it verifies.
    let checked = crate::trust::refresh(cfg, http, trusted, now_s, !dry_run)
        .and_then(|_| crate::trust::verify_assignment(&answer, &who.id, trusted));
    let verified = match checked {
        Ok(v) => v,
        Err(e @ Error::Untrusted(_)) if !dry_run => {
            return Err(failed_pass(cfg, state, http, who, "refused", e, None));
        }
        Err(e) => return Err(e),
    };
    if let Some(why) = trust_expired(trusted, now_s) {
        return stale(cfg, state, http, who, dry_run, "assignment", why).map(Asked::Ended);
    }
    if let Err(why) = crate::trust::freshness(&verified.assignment, state.assignment_issued_at, now_s) {
        return stale(cfg, state, http, who, dry_run, "assignment", why).map(Asked::Ended);
    }
    Ok(Asked::Fresh(verified))
}

/// Note a fresh assignment in the state (saved by the caller): its issue
/// time, never beyond this machine's clock, so that a server's
/// future-dated assignment cannot make later ones replays; and what to
/// follow from mirrors.
fn accept_assignment(state: &mut State, verified: &slate_core::trust::Assignment) {
    let now_s = now().max(0) as u64;
    state.assignment_issued_at = state.assignment_issued_at.max(verified.issued_at.min(now_s));
    state.last_fresh_at = Some(now_s);
    state.followed = Some(crate::state::Followed {
        channel: verified.channel.clone(),
        pinned: verified.pinned,
    });
}

/// The offline outcome: nothing was written, not even the state.
fn offline_outcome(why: &str) -> Outcome {
    Outcome {
        result: "offline".into(),
        message: format!("offline: no server answered ({why}); nothing changed, will try again later"),
        ..Default::default()
    }
}

/// One pass of an A/B machine: write the assigned snapshot into the
/// reserve slot and switch to it on trial.
fn run_ab(cfg: &Config, dry_run: bool, wait_lock: bool, progress: &dyn Progress) -> Result<Outcome> {
    let _lock = lock_or_wait(&cfg.state_dir, wait_lock)?;
    let mut state = State::load(&cfg.state_dir)?;
    let mut trusted = crate::trust::load(cfg)?;
    let who = identity::detect(cfg.machine_id.as_deref(), &cfg.labels);
    let mut http = cfg.http()?;

    // An offline install from a live medium: the medium's snapshot, its
    // content read from the verified live root; no server is asked.
    if let Some(dir) = &cfg.offline_source {
        let medium = crate::live::Medium::open(dir)?;
        let target = medium.id;
        let result = pass(
            cfg,
            &mut state,
            &http,
            &trusted,
            target,
            false,
            dry_run,
            progress,
            Some(&medium),
        );
        return finish_pass(cfg, &mut state, &http, &http, &who, target, dry_run, result);
    }
    let verified = match ask_fleet(cfg, &mut state, &mut trusted, &http, &who, dry_run)? {
        Asked::Fresh(v) => {
            http.set_objects_urls(&v.objects_urls);
            v.assignment
        }
        Asked::Ended(outcome) => return Ok(outcome),
        Asked::Offline(why) => {
            return match cfg.mirror_http()? {
                Some(mirrors) => follow_mirrors(
                    cfg, &mut state, &trusted, &mirrors, &http, &who, &why, dry_run, progress,
                ),
                None => Ok(offline_outcome(&why)),
            };
        }
    };
    let target = verified.snapshot;
    let pinned = verified.pinned;
    // A fleet policy that cannot work on this machine's tree is refused
    // before it is kept: the pass fails and the old policy stays.
    let vetted = vet_fleet_policy(cfg, &state, verified.state_policy.as_deref());
    if !dry_run {
        accept_assignment(&mut state, &verified);
        if vetted.is_ok() {
            keep_fleet_policy(cfg, verified.state_policy.as_deref());
        }
    }
    let result = vetted.and_then(|()| {
        pass(
            cfg, &mut state, &http, &trusted, target, pinned, dry_run, progress, None,
        )
    });
    finish_pass(cfg, &mut state, &http, &http, &who, target, dry_run, result)
}

/// One pass of a network-booted machine: ask the fleet (checked exactly
/// as on an A/B machine), check that the assigned snapshot is one its next
/// network boot accepts (signed by trusted release keys), record and
/// report. It writes no slot and no boot entry: the result is `up-to-date`
/// when the machine runs the assigned snapshot, else `next-boot`.
fn run_netboot(cfg: &Config, dry_run: bool, wait_lock: bool) -> Result<Outcome> {
    if cfg.token_file.is_none() {
        // A machine with no disk holds no secret: the fleet API is closed
        // to it, and there is nothing to write anyway (docs/diskless.md).
        return Ok(Outcome {
            result: "no-token".into(),
            message: "this network-booted machine has no token (a `slate-cache` partition holds one): it \
                      cannot ask the fleet or report; its next network boot runs what the fleet assigns"
                .into(),
            ..Default::default()
        });
    }
    let _lock = lock_or_wait(&cfg.state_dir, wait_lock)?;
    let mut state = State::load(&cfg.state_dir)?;
    let mut trusted = crate::trust::load(cfg)?;
    let who = identity::detect(cfg.machine_id.as_deref(), &cfg.labels);
    let mut http = cfg.http()?;
    let verified = match ask_fleet(cfg, &mut state, &mut trusted, &http, &who, dry_run)? {
        Asked::Fresh(v) => {
            http.set_objects_urls(&v.objects_urls);
            v.assignment
        }
        Asked::Ended(outcome) => return Ok(outcome),
        // Mirrors are not followed: a pass here writes nothing, and the
        // initramfs finds its snapshot by itself at the next boot.
        Asked::Offline(why) => return Ok(offline_outcome(&why)),
    };
    if !dry_run {
        accept_assignment(&mut state, &verified);
        // Kept for `slate state apply`, as on an A/B machine; there is no
        // slot to check it against, but a policy that does not parse is
        // still not kept.
        keep_fleet_policy(cfg, verified.state_policy.as_deref());
    }
    let target = verified.snapshot;
    let result = netboot_outcome(cfg, &http, &trusted, target);
    let target_hex = target.to_hex();
    if dry_run {
        return result;
    }
    let outcome = match result {
        Ok(o) => o,
        Err(e @ Error::Untrusted(_)) => {
            return Err(failed_pass(
                cfg,
                &mut state,
                &http,
                &who,
                "refused",
                e,
                Some(target_hex),
            ))
        }
        Err(e) => return Err(failed_pass(cfg, &mut state, &http, &who, "error", e, Some(target_hex))),
    };
    let fetched = http.received.load(std::sync::atomic::Ordering::Relaxed);
    state.last_pass = Some(LastPass {
        result: outcome.result.clone(),
        message: outcome.message.clone(),
        bytes_fetched: fetched,
        at: now(),
        target: Some(target_hex),
        shadowed: Vec::new(),
    });
    state.save(&cfg.state_dir)?;
    report(cfg, &http, &who, &state);
    Ok(Outcome {
        bytes_fetched: fetched,
        ..outcome
    })
}

/// What the assignment means to a network-booted machine: nothing to do
/// when it runs `target`, else the next network boot runs `target`. The
/// snapshot's record and signatures are fetched (a few hundred bytes) so
/// that `next-boot` is never said of a snapshot the boot would refuse.
fn netboot_outcome(cfg: &Config, http: &Http, trusted: &crate::trust::Trusted, target: SnapshotId) -> Result<Outcome> {
    let target_hex = target.to_hex();
    let info = crate::netboot::Info::load(&crate::netboot::Info::path())?;
    if info.snapshot == target_hex {
        return Ok(Outcome {
            result: "up-to-date".into(),
            message: format!("already running {} (booted from the network)", &target_hex[..12]),
            target: Some(target_hex),
            ..Default::default()
        });
    }
    // Only the record and its signatures: nothing is cached or written.
    let (_, sigs) = Remote::new(http, &cache_dir(&cfg.state_dir)).snapshot(&target)?;
    check_threshold(&target, &sigs, trusted.release(), trusted.doc.snapshots as usize)
        .map_err(|e| Error::Untrusted(format!("refusing snapshot {target_hex}: {e}")))?;
    Ok(Outcome {
        result: "next-boot".into(),
        message: format!(
            "the fleet assigns {} (this machine runs {}): the next network boot runs it; nothing was written",
            &target_hex[..12],
            &info.snapshot[..12],
        ),
        target: Some(target_hex),
        ..Default::default()
    })
}

/// Why the trust document in use no longer vouches for anything: it
/// expired and no newer one arrived (a server or mirror that withholds
/// rotations is a freeze too).
fn trust_expired(trusted: &crate::trust::Trusted, now: u64) -> Option<String> {
    (trusted.doc.expires <= now).then(|| {
        format!(
            "the trust document in use (version {}) expired at {} and no newer one arrived",
            trusted.doc.version,
            crate::trust::date(trusted.doc.expires)
        )
    })
}

/// End a pass that found nothing fresh to act on: record and report it as
/// `stale`, change nothing else.
fn stale(
    cfg: &Config,
    state: &mut State,
    http: &Http,
    who: &Identity,
    dry_run: bool,
    what: &str,
    why: String,
) -> Result<Outcome> {
    let message = match state.last_fresh_at {
        Some(t) => format!(
            "no fresh {what} since {}: {why}; nothing changed",
            crate::trust::date(t)
        ),
        None => format!("no fresh {what} yet: {why}; nothing changed"),
    };
    let outcome = Outcome {
        result: "stale".into(),
        message,
        ..Default::default()
    };
    if !dry_run {
        state.last_pass = Some(LastPass {
            result: outcome.result.clone(),
            message: outcome.message.clone(),
            bytes_fetched: http.received.load(std::sync::atomic::Ordering::Relaxed),
            at: now(),
            target: None,
            shadowed: Vec::new(),
        });
        state.save(&cfg.state_dir)?;
        report(cfg, http, who, state);
    }
    Ok(outcome)
}

/// No fleet server answered: follow the channel of the last fresh
/// assignment (or AGENT.toml's `channel`) from the mirrors, by the head
/// the fleet key signed. A pinned machine stays where the fleet put it;
/// an expired or older head is stale, a forged one refused.
#[allow(clippy::too_many_arguments)]
fn follow_mirrors(
    cfg: &Config,
    state: &mut State,
    trusted: &crate::trust::Trusted,
    mirrors: &Http,
    fleet: &Http,
    who: &Identity,
    offline_why: &str,
    dry_run: bool,
    progress: &dyn Progress,
) -> Result<Outcome> {
    let now_s = now().max(0) as u64;
    let offline = |why: String| {
        Ok(Outcome {
            result: "offline".into(),
            message: why,
            ..Default::default()
        })
    };
    let channel = match &state.followed {
        Some(f) if f.pinned => {
            return offline(format!(
                "offline: no fleet server answered ({offline_why}); the fleet pinned this machine, so mirrors' \
                 channel heads are not followed; nothing changed"
            ))
        }
        Some(f) => f.channel.clone(),
        None => match &cfg.channel {
            Some(c) => c.clone(),
            None => {
                return offline(format!(
                    "offline: no fleet server answered ({offline_why}) and no channel is known to follow from the \
                     mirrors (no assignment yet; set channel in AGENT.toml); nothing changed"
                ))
            }
        },
    };
    let text = match mirrors.get_optional(&format!("/v1/heads/{channel}")) {
        Ok(Some(t)) => t,
        Ok(None) => {
            let e = Error::Untrusted(format!(
                "refusing mirror {}: it serves no signed head of channel {channel} (pull it with --fleet-trust)",
                mirrors.server()
            ));
            return Err(if dry_run {
                e
            } else {
                failed_pass(cfg, state, fleet, who, "refused", e, None)
            });
        }
        Err(Error::Offline(why)) => {
            return offline(format!(
                "offline: no fleet server answered ({offline_why}) and no mirror either ({why}); nothing changed"
            ))
        }
        Err(e) => return Err(e),
    };
    if let Some(why) = trust_expired(trusted, now_s) {
        return stale(cfg, state, fleet, who, dry_run, "channel head", why);
    }
    let head = match crate::trust::check_head(
        &text,
        mirrors.server(),
        &channel,
        trusted.fleet(),
        now_s,
        state.head_issued_at,
    ) {
        Ok(h) => h,
        Err(crate::trust::HeadProblem::Stale(why)) => {
            return stale(cfg, state, fleet, who, dry_run, "channel head", why);
        }
        Err(crate::trust::HeadProblem::Refused(why)) => {
            let e = Error::Untrusted(why);
            return Err(if dry_run {
                e
            } else {
                failed_pass(cfg, state, fleet, who, "refused", e, None)
            });
        }
    };
    if !dry_run {
        state.head_issued_at = state.head_issued_at.max(head.issued_at.min(now_s));
        state.last_fresh_at = Some(now_s);
    }
    tracing::info!(
        "following channel {channel} from mirror {}: head {}",
        mirrors.server(),
        head.snapshot
    );
    let result = pass(
        cfg,
        state,
        mirrors,
        trusted,
        head.snapshot,
        false,
        dry_run,
        progress,
        None,
    );
    finish_pass(cfg, state, mirrors, fleet, who, head.snapshot, dry_run, result)
}

/// Record a pass that ran (or failed) against `target`, fetching from
/// `data`, and report it to the fleet over `fleet`.
#[allow(clippy::too_many_arguments)]
fn finish_pass(
    cfg: &Config,
    state: &mut State,
    data: &Http,
    fleet: &Http,
    who: &Identity,
    target: SnapshotId,
    dry_run: bool,
    result: Result<Outcome>,
) -> Result<Outcome> {
    let target_hex = target.to_hex();
    let fetched = data.received.load(std::sync::atomic::Ordering::Relaxed);
    if dry_run {
        return result;
    }
    let outcome = match result {
        Ok(o) => o,
        Err(e) => {
            return Err(failed_pass(cfg, state, fleet, who, "error", e, Some(target_hex)));
        }
    };
    state.last_pass = Some(LastPass {
        result: outcome.result.clone(),
        message: outcome.message.clone(),
        bytes_fetched: fetched,
        at: now(),
        target: Some(target_hex),
        shadowed: outcome.shadowed.iter().map(|s| s.path.clone()).collect(),
    });
    state.save(&cfg.state_dir)?;
    report(cfg, fleet, who, state);
    Ok(Outcome {
        bytes_fetched: fetched,
        ..outcome
    })
}

#[allow(clippy::too_many_arguments)]
fn pass(
    cfg: &Config,
    state: &mut State,
    http: &Http,
    trusted: &crate::trust::Trusted,
    target: SnapshotId,
    pinned: bool,
    dry_run: bool,
    progress: &dyn Progress,
    offline: Option<&crate::live::Medium>,
) -> Result<Outcome> {
    let slots = cfg.slots("an update pass")?;
    let target_hex = target.to_hex();
    let active = state.active.clone();
    let running = active.as_deref().and_then(|a| state.slot(a).snapshot.clone());
    if running.as_deref() == Some(target_hex.as_str()) && state.pending.is_none() {
        if !dry_run {
            drop_download_leftovers(&cfg.state_dir)?;
        }
        return Ok(Outcome {
            result: "up-to-date".into(),
            message: format!("already running {}", &target_hex[..12]),
            target: Some(target_hex),
            ..Default::default()
        });
    }
    if state.failed.contains(&target_hex) {
        return Ok(Outcome {
            result: "failed-before".into(),
            message: format!(
                "snapshot {} failed to boot on this machine; not writing it again until the fleet assigns \
                 another (or `slate update --retry`)",
                &target_hex[..12]
            ),
            target: Some(target_hex),
            ..Default::default()
        });
    }
    if let Some(p) = &state.pending {
        if state.slot(p).snapshot.as_deref() == Some(target_hex.as_str()) {
            if !dry_run {
                drop_download_leftovers(&cfg.state_dir)?;
            }
            return Ok(Outcome {
                result: "up-to-date".into(),
                message: format!("{} is written to slot {p} and boots next", &target_hex[..12]),
                target: Some(target_hex),
                ..Default::default()
            });
        }
    }

    let remote = Remote::new(http, &cache_dir(&cfg.state_dir));
    let (snap, sigs) = match offline {
        Some(m) => (m.snapshot.clone(), m.signatures.clone()),
        None => remote.snapshot(&target)?,
    };
    let signers = check_threshold(&target, &sigs, trusted.release(), trusted.doc.snapshots as usize)
        .map_err(|e| Error::Untrusted(format!("refusing snapshot {target_hex}: {e}")))?;
    tracing::info!(
        "snapshot {target_hex} signed by {}",
        signers.iter().map(|k| k.fingerprint()).collect::<Vec<_>>().join(", ")
    );
    // The rollback floor never lies beyond this machine's clock: a snapshot
    // dated in the future raises it only to now, so later ones still pass.
    let now_ns = now_ns();
    let floor = state.newest_time_ns.min(now_ns);
    if snap.time_ns < floor && !pinned {
        return Err(Error::Untrusted(format!(
            "refusing snapshot {target_hex}: it is older than a snapshot this machine already accepted, and the fleet did not pin it (a replayed or rolled-back assignment)"
        )));
    }

    let reserve = state.reserve_name().to_string();
    refuse_booted(&reserve, state)?;
    let reserve_state = state.slot(&reserve).clone();
    let cache = RangeCache::open(&cache_dir(&cfg.state_dir).join("ranges"))?;

    // Local manifests: the active slot's and the reserve slot's (when its
    // recorded content can be trusted).
    let active_local = running
        .as_deref()
        .and_then(|id| local_snapshot(&cfg.state_dir, id).map(|s| (id.to_string(), s)));
    let reserve_local = if reserve_state.dirty {
        None
    } else {
        reserve_state
            .snapshot
            .as_deref()
            .and_then(|id| local_snapshot(&cfg.state_dir, id).map(|s| (id.to_string(), s)))
    };
    let reserve_m = match &reserve_local {
        Some((id, (_, bytes))) => Some(decode_manifest(bytes, id)?),
        None => None,
    };
    let active_m = match &active_local {
        Some((id, (_, bytes))) => Some(decode_manifest(bytes, id)?),
        None => None,
    };
    let active_mount = match (&active, &active_m) {
        (Some(a), Some(_)) => slot::open_read(a, slots.path(a), &cfg.state_dir)?,
        _ => None,
    };
    let reserve_path = slots.path(&reserve).to_path_buf();
    let reserve_mount = match &reserve_m {
        Some(_) => slot::open_read(&reserve, &reserve_path, &cfg.state_dir)?,
        None => None,
    };
    let mut local = LocalChunks::default();
    if let (Some(m), Some(mount)) = (&active_m, &active_mount) {
        local.add_tree(&mount.path, m);
    }
    // The reserve slot's own files are sources too, until they are replaced.
    let reserve_tree = match (&reserve_m, &reserve_mount) {
        (Some(m), Some(mount)) => Some(local.add_tree(&mount.path, m)),
        _ => None,
    };

    // Chunks of the manifests this machine holds (consecutive snapshots
    // share most manifest chunks).
    let mut known: HashMap<ChunkId, Vec<u8>> = HashMap::new();
    for (_, (s, bytes)) in active_local.iter().chain(reserve_local.iter()) {
        let mut off = 0usize;
        for c in &s.manifest.chunks {
            known
                .entry(c.id)
                .or_insert_with(|| bytes[off..off + c.len as usize].to_vec());
            off += c.len as usize;
        }
    }

    // A live medium carries the manifest as stored.
    if let Some(m) = offline {
        let mut off = 0usize;
        for c in &snap.manifest.chunks {
            let end = off + c.len as usize;
            if let Some(d) = m.manifest.get(off..end) {
                known.entry(c.id).or_insert_with(|| d.to_vec());
            }
            off = end;
        }
    }

    // A prepared delta from what the machine runs, if the server has one.
    let store_dir = cache_dir(&cfg.state_dir).join("store");
    let mut store_index: Option<slate_repo::index::ChunkIndex> = None;
    let mut requests = 0u64;
    if !dry_run {
        let mut tried = std::collections::HashSet::new();
        // Both slots may hold the same snapshot: ask for its delta once.
        for (from_hex, _) in active_local
            .iter()
            .chain(reserve_local.iter())
            .filter(|(id, _)| tried.insert(id.clone()))
        {
            let from = SnapshotId::from_hex(from_hex).expect("recorded ids are hex");
            let mut src = Sources::new(&local, Vec::new());
            if let Some(i) = crate::delta::fetch_and_apply(
                http,
                &from,
                &target,
                &cache_dir(&cfg.state_dir).join("deltas"),
                &store_dir,
                &mut src,
                &known,
                progress,
            )? {
                store_index = Some(i);
                requests += 1;
                break;
            }
        }
    }
    let store_storage = slate_repo::storage::LocalStorage::new(&store_dir);
    let in_store = |id: &ChunkId| store_index.as_ref().is_some_and(|i| i.contains(id));

    // The pack indexes are only fetched for what neither the slots nor a
    // delta provide.
    let missing_manifest: Vec<ChunkId> = snap
        .manifest
        .chunks
        .iter()
        .map(|c| c.id)
        .filter(|id| !known.contains_key(id) && !in_store(id))
        .collect();
    let mut remote_index = None;
    if !missing_manifest.is_empty() {
        let idx = remote.index()?;
        let ranges = Remote::plan_fetch(&idx, &cache, &missing_manifest)?;
        requests += ranges.len() as u64;
        if dry_run {
            return Ok(Outcome {
                result: "dry-run".into(),
                message: format!(
                    "would fetch the manifest of {} ({} requests) before planning",
                    &target_hex[..12],
                    requests
                ),
                target: Some(target_hex),
                requests,
                ..Default::default()
            });
        }
        remote.fetch(
            &idx,
            &ranges,
            &cache,
            cfg.connections,
            &slate_repo::progress::NoProgress,
        )?;
        remote_index = Some(idx);
    }
    let mut manifest_bytes = Vec::with_capacity(snap.manifest.size as usize);
    {
        let mut store_reader = store_index.as_ref().map(|i| ChunkReader::new(&store_storage, i));
        let mut cache_reader = remote_index.as_ref().map(|i| ChunkReader::new(&cache, i));
        for c in &snap.manifest.chunks {
            if let Some(d) = known.get(&c.id) {
                manifest_bytes.extend_from_slice(d);
            } else if let (Some(r), true) = (store_reader.as_mut(), in_store(&c.id)) {
                r.with_chunk(&c.id, |d| manifest_bytes.extend_from_slice(d))?;
            } else if let Some(r) = cache_reader.as_mut() {
                r.with_chunk(&c.id, |d| manifest_bytes.extend_from_slice(d))?;
            } else {
                return Err(Error::Local(format!("manifest chunk {} is not available", c.id)));
            }
        }
    }
    drop(known);
    if Id32::hash(&manifest_bytes) != snap.manifest.hash {
        return Err(Error::Untrusted(format!(
            "manifest of snapshot {target_hex} does not match its hash (tampered or corrupt)"
        )));
    }
    let new_m = decode_manifest(&manifest_bytes, &target_hex)?;
    let fresh = reserve_m.is_none();
    // The live root holds this very snapshot's files.
    if let Some(m) = offline {
        m.add_sources(&mut local, &new_m);
    }

    // Content the machine has nowhere.
    let want: Vec<ChunkId> = {
        let mut seen = std::collections::HashSet::new();
        new_m
            .entries
            .iter()
            .filter_map(|e| match &e.kind {
                slate_core::manifest::Kind::File(f) => Some(f.chunks.iter()),
                _ => None,
            })
            .flatten()
            .map(|c| c.id)
            .filter(|id| !local.contains(id) && !in_store(id) && seen.insert(*id))
            .collect()
    };
    let ranges = if want.is_empty() {
        Vec::new()
    } else {
        if remote_index.is_none() {
            remote_index = Some(remote.index()?);
        }
        Remote::plan_fetch(remote_index.as_ref().unwrap(), &cache, &want)?
    };
    let index = remote_index.unwrap_or_default();
    requests += ranges.len() as u64;
    let fetch_bytes: u64 = ranges.iter().map(|r| r.end - r.start).sum();
    if dry_run {
        return Ok(Outcome {
            result: "dry-run".into(),
            message: format!(
                "would write snapshot {} into slot {reserve} ({}), fetching {fetch_bytes} bytes in {} requests",
                &target_hex[..12],
                if fresh { "whole" } else { "changed entries only" },
                ranges.len()
            ),
            target: Some(target_hex),
            slot: Some(reserve),
            requests,
            ..Default::default()
        });
    }
    drop(reserve_mount);

    // The boot partition must take the new kernel and initrd beside the
    // running slot's, which are never touched: refuse before anything is
    // fetched or written.
    let boot_files = BootFiles::open(cfg)?;
    if slots.bootloader != Bootloader::None {
        boot::check_room(&boot_files.path, &reserve, boot::kernel_bytes(&new_m))?;
    }

    progress.start("fetch", fetch_bytes);
    remote.fetch(&index, &ranges, &cache, cfg.connections, progress)?;
    progress.finish();

    // From here the reserve slot's content is in flux (a pass killed while
    // fetching keeps the reserve's old content as a source for the next).
    state.slot_mut(&reserve).dirty = true;
    state.save(&cfg.state_dir)?;
    let mounted = slot::open_write(&reserve, &reserve_path, &cfg.state_dir, fresh, slots.size)?;
    let readers = || {
        let mut v = vec![ChunkReader::new(&cache, &index)];
        if let Some(i) = &store_index {
            v.push(ChunkReader::new(&store_storage, i));
        }
        v
    };
    let (apply_stats, local_bytes) = if let Some(old_m) = &reserve_m {
        // Re-register the reserve's files at their writable mount.
        if let Some(t) = reserve_tree {
            local.replace_root(t, &mounted.path);
        }
        let mut src = Sources::new(&local, readers());
        progress.start("write", new_m.total_file_bytes());
        let st = apply::update_in_place(&mounted.path, old_m, &new_m, &mut src)?;
        progress.finish();
        (st, src.local_bytes)
    } else {
        // A fresh slot: materialise the whole tree; materialize wants an
        // empty directory, which the slot root now is.
        let counter = std::sync::atomic::AtomicU64::new(0);
        let st = slate_repo::checkout::materialize(
            &new_m,
            &mounted.path,
            || CountingSources::new(Sources::new(&local, readers()), &counter),
            true,
            progress,
        )?;
        (
            apply::ApplyStats {
                files_written: st.files,
                bytes_written: st.bytes,
                ..Default::default()
            },
            counter.load(std::sync::atomic::Ordering::Relaxed),
        )
    };

    // Record what the slot holds before anything points at it.
    write_atomic(&manifest_path(&cfg.state_dir, &target_hex), &manifest_bytes)?;
    write_atomic(&record_path(&cfg.state_dir, &target_hex), &snap.encode())?;
    let has_kernel = if slots.bootloader != Bootloader::None {
        boot::install_kernel(&boot_files.path, &reserve, &mounted.path)?
    } else {
        false
    };
    let shadowed = match &active_m {
        Some(old) => shadowed_state(cfg, &mounted.path, old, &new_m),
        None => Vec::new(),
    };
    // Checked on the written tree, refused below before the switch: the
    // slot is recorded (a later pass finds it written and checks again at
    // no cost) but never booted.
    let policy_fits = vet_slot_policy(cfg, &mounted.path);
    drop(mounted);
    drop(active_mount);

    let entry = entry_spec(cfg, &reserve, &target_hex, &snap, has_kernel);
    let other_entry = active.as_deref().and_then(|a| {
        let id = state.slot(a).snapshot.clone()?;
        let s = local_snapshot(&cfg.state_dir, &id).map(|x| x.0)?;
        Some(entry_spec(
            cfg,
            a,
            &id,
            &s,
            boot_files.path.join("slate").join(a).join("vmlinuz").exists(),
        ))
    });
    let first_install = state.active.is_none();
    // New content: the failed boots of the old content there no longer
    // count. (The policy that last worked with the slot stays its fallback.)
    clear_boot_failures(&cfg.state_dir, &reserve);
    let slot_state = state.slot_mut(&reserve);
    slot_state.snapshot = Some(target_hex.clone());
    slot_state.dirty = false;
    slot_state.written_at = now();
    state.newest_time_ns = floor.max(snap.time_ns.min(now_ns));
    // Record the complete slot first, then switch, then mark it active or
    // pending: a pass stopped at the switch (killed, /boot full) leaves the
    // slot recorded but not pending, so the next pass finishes the switch
    // instead of taking the update for done.
    state.save(&cfg.state_dir)?;
    policy_fits?;
    if first_install {
        // The first snapshot on a machine is the one it boots: nothing to fall back to.
        boot::switch(slots.bootloader, &boot_files.path, &entry, None, cfg.boot_tries)?;
        boot::mark_good(slots.bootloader, &boot_files.path, &reserve)?;
        state.active = Some(reserve.clone());
        state.known_good = vec![reserve.clone()];
    } else {
        // The switch: the last step, after the slot and its record are durable.
        boot::switch(
            slots.bootloader,
            &boot_files.path,
            &entry,
            other_entry.as_ref(),
            cfg.boot_tries,
        )?;
        state.pending = Some(reserve.clone());
    }
    state.save(&cfg.state_dir)?;
    drop(cache);
    drop_download_leftovers(&cfg.state_dir)?;
    Ok(Outcome {
        result: "ok".into(),
        message: format!(
            "wrote snapshot {} into slot {reserve}{}",
            &target_hex[..12],
            if first_install { "" } else { "; it boots next, on trial" }
        ),
        target: Some(target_hex),
        slot: Some(reserve),
        bytes_fetched: 0,
        requests,
        bytes_local: local_bytes,
        apply: Some(apply_stats),
        shadowed,
    })
}

/// Now, in nanoseconds since the epoch.
fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos().min(i64::MAX as u128) as i64)
}

/// Keep the fleet's state policy for this machine where `slate state
/// apply` finds it, or remove it when the fleet no longer assigns one. A
/// policy that does not parse is not kept (the previous one stays), and
/// failures are logged: they must not stop an update.
fn keep_fleet_policy(cfg: &Config, text: Option<&str>) {
    let path = cfg.fleet_policy_path();
    match text {
        Some(t) => {
            if std::fs::read_to_string(&path).is_ok_and(|old| old == t) {
                return;
            }
            if let Err(e) = slate_state::Policy::parse(t, Path::new("the fleet's state policy")) {
                tracing::warn!("not keeping the fleet's state policy: {e}");
                return;
            }
            if let Err(e) = write_atomic(&path, t.as_bytes()) {
                tracing::warn!("cannot keep the fleet's state policy: {e}");
            }
        }
        None => {
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("cannot remove {}: {e}", path.display());
                }
            }
        }
    }
}

/// Refuse a fleet state policy that does not parse or does not fit the
/// tree the machine runs (its active slot): kept, it would apply at the
/// next boot of that slot, and of every slot the machine falls back to.
/// A policy that needs a newer snapshot is assigned after that snapshot.
fn vet_fleet_policy(cfg: &Config, state: &State, text: Option<&str>) -> Result<()> {
    let Some(text) = text else { return Ok(()) };
    let refuse = |why: String| {
        Error::Server(format!(
            "refusing the fleet's state policy for this machine: {why}; keeping the previous one"
        ))
    };
    let policy =
        slate_state::Policy::parse(text, Path::new("the fleet's state policy")).map_err(|e| refuse(e.to_string()))?;
    let Some(active) = state.active.as_deref() else {
        return Ok(());
    };
    if state.slot(active).snapshot.is_none() {
        return Ok(());
    }
    if let Some(tree) = slot::open_read(
        active,
        cfg.slots("checking the fleet's state policy")?.path(active),
        &cfg.state_dir,
    )? {
        slate_state::check::check(&policy, &tree.path).map_err(|e| refuse(e.to_string()))?;
    }
    Ok(())
}

/// Refuse to switch to a tree on which its state policy (the fleet's, else
/// its own /etc/slate/state.toml) cannot be applied: that slot would fail
/// at boot.
fn vet_slot_policy(cfg: &Config, tree: &Path) -> Result<()> {
    let refuse = |why: String| Error::Local(format!("refusing to switch to the new snapshot: {why}"));
    match policy_for(cfg, tree) {
        Ok(Some(p)) => slate_state::check::check(&p, tree).map_err(|e| refuse(e.to_string())),
        Ok(None) => Ok(()),
        Err(e) => Err(refuse(e.to_string())),
    }
}

/// The state policy that will apply to the new slot: the fleet's copy,
/// else the new tree's /etc/slate/state.toml (rwtab/statetab imports read
/// from the new tree); `None` when there is none.
fn policy_for(cfg: &Config, tree: &Path) -> Result<Option<slate_state::Policy>> {
    let fleet = cfg.fleet_policy_path();
    let path = if fleet.is_file() {
        fleet
    } else {
        let p = tree.join("etc/slate/state.toml");
        if !p.is_file() {
            return Ok(None);
        }
        p
    };
    let mut policy = slate_state::Policy::load(&path).map_err(|e| Error::Local(e.to_string()))?;
    policy.import_tabs(tree).map_err(|e| Error::Local(e.to_string()))?;
    Ok(Some(policy))
}

/// Paths whose kept state hides a change from `old` to `new`: the /etc
/// merge problem made visible. A policy that cannot be read is logged and
/// yields nothing: it must not stop an update (the new image may fix it).
fn shadowed_state(cfg: &Config, tree: &Path, old: &Manifest, new: &Manifest) -> Vec<slate_state::audit::Shadow> {
    match policy_for(cfg, tree) {
        Ok(Some(p)) => {
            let found = slate_state::audit::shadows(&p, old, new);
            for s in &found {
                tracing::info!(
                    "{} ({}) is hidden by {} state kept at {}: the new snapshot's version will not be seen",
                    s.path,
                    s.change,
                    s.state.name(),
                    s.declared
                );
            }
            found
        }
        Ok(None) => Vec::new(),
        Err(e) => {
            tracing::warn!("cannot read the state policy of the new snapshot: {e}");
            Vec::new()
        }
    }
}

/// Where the bootloader's files are: `boot_dir`, inside the boot partition
/// when AGENT.toml names one (`boot_device`, mounted while this lives).
pub struct BootFiles {
    /// The directory.
    pub path: std::path::PathBuf,
    _mounted: Option<slot::Mounted>,
}

impl BootFiles {
    /// Mount the boot partition if there is one.
    pub fn open(cfg: &Config) -> Result<BootFiles> {
        if cfg.bootloader() == Bootloader::None {
            return Ok(BootFiles {
                path: cfg.boot_dir.clone(),
                _mounted: None,
            });
        }
        match &cfg.boot_device {
            None => Ok(BootFiles {
                path: cfg.boot_dir.clone(),
                _mounted: None,
            }),
            Some(dev) => {
                let m = slot::mount_boot(dev, &cfg.state_dir)?;
                let rel = cfg.boot_dir.strip_prefix("/").unwrap_or(&cfg.boot_dir);
                Ok(BootFiles {
                    path: m.path.join(rel),
                    _mounted: Some(m),
                })
            }
        }
    }
}

/// Counts the bytes a batch's sources copied locally.
struct CountingSources<'a> {
    inner: Sources<'a>,
    total: &'a std::sync::atomic::AtomicU64,
}

impl<'a> CountingSources<'a> {
    fn new(inner: Sources<'a>, total: &'a std::sync::atomic::AtomicU64) -> Self {
        CountingSources { inner, total }
    }
}

impl Drop for CountingSources<'_> {
    fn drop(&mut self) {
        self.total
            .fetch_add(self.inner.local_bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

impl slate_repo::checkout::ChunkSource for CountingSources<'_> {
    fn with_chunk(&mut self, id: &ChunkId, f: &mut dyn FnMut(&[u8]) -> std::io::Result<()>) -> slate_repo::Result<()> {
        self.inner.with_chunk(id, f)
    }
}

fn entry_spec(cfg: &Config, slot_name: &str, id: &str, snap: &Snapshot, has_kernel: bool) -> boot::EntrySpec {
    let mut cmdline = format!("root=LABEL=slate-{slot_name} ro slate.slot={slot_name}");
    if !cfg.kernel_cmdline.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(&cfg.kernel_cmdline);
    }
    boot::EntrySpec {
        slot: slot_name.to_string(),
        snapshot: id.to_string(),
        title: snap.meta("PRETTY_NAME").unwrap_or("slate").to_string(),
        cmdline,
        has_kernel,
    }
}

/// Where the kernel command line is read; `SLATE_CMDLINE` names another
/// file, for tests and containers whose /proc/cmdline is the host's.
fn cmdline_path() -> std::path::PathBuf {
    std::env::var_os("SLATE_CMDLINE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/proc/cmdline".into())
}

/// The slot the running system booted: `SLATE_BOOTED_SLOT` when set (a
/// manual override), else `slate.slot=` on the kernel command line, else
/// none (a build host, or a machine that does not boot from slate).
pub fn booted_slot() -> Option<String> {
    if let Ok(s) = std::env::var("SLATE_BOOTED_SLOT") {
        if s == "a" || s == "b" {
            return Some(s);
        }
    }
    let cmdline = std::fs::read_to_string(cmdline_path()).ok()?;
    slot_from_cmdline(&cmdline)
}

/// The last `slate.slot=` word of a kernel command line (the kernel, too,
/// lets a later parameter override an earlier one), if it names a slot.
fn slot_from_cmdline(cmdline: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .take_while(|w| *w != "--")
        .filter_map(|w| w.strip_prefix("slate.slot="))
        .last()
        .filter(|s| *s == "a" || *s == "b")
        .map(str::to_string)
}

/// Refuse to write `slot` when the machine runs from it. The state file
/// can be stale, restored from a backup or edited; the kernel command
/// line says what actually runs, and the running root is never a target.
fn refuse_booted(slot: &str, state: &State) -> Result<()> {
    match booted_slot() {
        Some(b) if b == slot => Err(Error::Local(format!(
            "refusing to write slot {slot}: the machine booted from it (slate.slot={b} on the kernel \
             command line), but the state file says the active slot is {}; nothing was written. \
             Run `slate boot-ok` on a good boot to record the running slot, then update again",
            state.active.as_deref().unwrap_or("none")
        ))),
        _ => Ok(()),
    }
}

/// `slate boot-ok`: the machine booted well. On an A/B machine the booted
/// slot is marked good ([`boot_ok_ab`]); a network-booted one only records
/// and reports the boot ([`boot_ok_netboot`]).
pub fn boot_ok(cfg: &Config) -> Result<String> {
    match &cfg.mode {
        Mode::Ab(slots) => boot_ok_ab(cfg, slots),
        Mode::Netboot => boot_ok_netboot(cfg),
    }
}

/// A network-booted machine's `boot-ok`: `good` (or `rescue` when the
/// initramfs step gave up on the declared state), with the boot's
/// warnings, reported to the fleet. There are no slots, boot entries or
/// trials: the firmware boots from the network every time.
fn boot_ok_netboot(cfg: &Config) -> Result<String> {
    let _lock = lock(&cfg.state_dir)?;
    let mut state = State::load(&cfg.state_dir)?;
    let run = BootRun::read();
    state.boot_warnings = run.warnings.clone();
    let booted = match crate::netboot::Info::load(&crate::netboot::Info::path()) {
        Ok(i) => format!(
            "snapshot {} ({}, booted from the network)",
            &i.snapshot[..12],
            i.mode.as_str()
        ),
        Err(e) => format!("this network boot (snapshot unknown: {e})"),
    };
    let warned = match run.warnings.len() {
        0 => String::new(),
        n => format!("; {n} warning(s) at boot: {}", run.warnings.join("; ")),
    };
    let msg = match &run.rescue {
        Some(why) => {
            state.boot_result = Some("rescue".into());
            format!("{booted} booted in rescue mode ({why}); not marked good (docs/boot.md){warned}")
        }
        None => {
            state.boot_result = Some("good".into());
            format!("{booted} is good{warned}")
        }
    };
    state.save(&cfg.state_dir)?;
    // Without a token (a machine with no disk) there is no report to make.
    if let (Some(_), Ok(http)) = (&cfg.token_file, cfg.http_with_timeout(cfg.timeout_secs.min(5))) {
        report(
            cfg,
            &http,
            &identity::detect(cfg.machine_id.as_deref(), &cfg.labels),
            &state,
        );
    }
    Ok(msg)
}

/// An A/B machine's `boot-ok`: the booted slot is good. A machine that
/// booted the other slot while one was on trial has fallen back: that is
/// recorded.
fn boot_ok_ab(cfg: &Config, slots: &crate::config::Slots) -> Result<String> {
    let _lock = lock(&cfg.state_dir)?;
    let mut state = State::load(&cfg.state_dir)?;
    let from_cmdline = booted_slot();
    let booted = from_cmdline
        .clone()
        .or_else(|| state.pending.clone())
        .or_else(|| state.active.clone())
        .ok_or_else(|| Error::Local("no slot has been written yet; nothing to mark good".into()))?;
    // The kernel command line wins over a state file that names neither
    // the booted slot as active nor as pending; say so, never silently.
    let contradicted = match (&from_cmdline, &state.active) {
        (Some(b), Some(a)) if a != b && state.pending.as_deref() != Some(b.as_str()) => Some(a.clone()),
        _ => None,
    };
    let run = BootRun::read();
    state.boot_warnings = run.warnings.clone();
    let warned = match run.warnings.len() {
        0 => String::new(),
        n => format!("; {n} warning(s) at boot: {}", run.warnings.join("; ")),
    };
    if let Some(why) = &run.rescue {
        // The initramfs step gave up on the declared state: the slot is not
        // good, whatever else holds; the fleet hears why.
        state.boot_result = Some("rescue".into());
        state.save(&cfg.state_dir)?;
        if let Ok(http) = cfg.http_with_timeout(cfg.timeout_secs.min(5)) {
            report(
                cfg,
                &http,
                &identity::detect(cfg.machine_id.as_deref(), &cfg.labels),
                &state,
            );
        }
        return Ok(format!(
            "slot {booted} booted in rescue mode ({why}); not marked good (docs/boot.md){warned}"
        ));
    }
    let msg = match state.pending.clone() {
        Some(p) if p != booted => {
            state.boot_result = Some("fell-back".into());
            state.pending = None;
            let failed = state.slot(&p).snapshot.clone();
            if let Some(id) = &failed {
                state.failed.retain(|f| f != id);
                state.failed.push(id.clone());
                let excess = state.failed.len().saturating_sub(crate::state::MAX_FAILED);
                state.failed.drain(..excess);
            }
            format!(
                "slot {p} ({}) failed to boot; running slot {booted} again (rolled back); \
                 that snapshot is not written again unless `slate update --retry`",
                failed.as_deref().map(|f| &f[..12.min(f.len())]).unwrap_or("?")
            )
        }
        _ => {
            state.boot_result = Some("good".into());
            state.pending = None;
            format!("slot {booted} is good")
        }
    };
    let msg = match contradicted {
        Some(a) => {
            tracing::warn!("the state file said slot {a} was active, but the machine booted slot {booted}");
            format!(
                "{msg} (the state file said slot {a} was active; it now records slot {booted}, the one that booted)"
            )
        }
        None => msg,
    };
    let msg = match &run.policy_fallback {
        Some(why) => {
            if state.boot_result.as_deref() == Some("good") {
                state.boot_result = Some("policy-fell-back".into());
            }
            format!("{msg}; {why}{warned}")
        }
        None => format!("{msg}{warned}"),
    };
    run.keep_good_policy(&cfg.state_dir, &booted);
    boot::mark_good(slots.bootloader, &BootFiles::open(cfg)?.path, &booted)?;
    state.active = Some(booted.clone());
    if !state.known_good.contains(&booted) {
        state.known_good.push(booted.clone());
    }
    state.save(&cfg.state_dir)?;
    // Without a token (a machine with no disk) there is no report to make.
    if let (Some(_), Ok(http)) = (&cfg.token_file, cfg.http_with_timeout(cfg.timeout_secs.min(5))) {
        report(
            cfg,
            &http,
            &identity::detect(cfg.machine_id.as_deref(), &cfg.labels),
            &state,
        );
    }
    Ok(msg)
}

/// What the initramfs step left in `/run/slate` (`SLATE_RUN_DIR`) about
/// this boot: the state policy it applied, whether it fell back to the
/// last policy that worked with the slot, whether it gave up and booted
/// in rescue mode (dist/initramfs-tools/scripts/init-bottom/slate).
struct BootRun {
    applied: Option<String>,
    policy_fallback: Option<String>,
    rescue: Option<String>,
    /// At most [`MAX_BOOT_WARNINGS`] lines, each cut to [`MAX_WARNING_LEN`].
    warnings: Vec<String>,
}

/// Most boot warnings reported (the server refuses longer lists).
const MAX_BOOT_WARNINGS: usize = 16;
/// Longest boot warning reported, in bytes.
const MAX_WARNING_LEN: usize = 512;

impl BootRun {
    fn read() -> BootRun {
        let dir = std::env::var_os("SLATE_RUN_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| "/run/slate".into());
        let read = |name: &str| {
            use std::io::Read;
            let mut s = String::new();
            std::fs::File::open(dir.join(name))
                .and_then(|f| f.take(1 << 20).read_to_string(&mut s))
                .ok()
                .map(|_| s)
        };
        let line = |name: &str| read(name).map(|s| s.lines().next().unwrap_or("").trim().to_string());
        BootRun {
            applied: read("state-policy.toml"),
            policy_fallback: line("policy-fallback"),
            rescue: line("rescue"),
            warnings: read("warnings")
                .map(|s| {
                    s.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .take(MAX_BOOT_WARNINGS)
                        .map(|l| {
                            let mut end = l.len().min(MAX_WARNING_LEN);
                            while !l.is_char_boundary(end) {
                                end -= 1;
                            }
                            l[..end].to_string()
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// The policy this good boot ran with is the one the initramfs falls
    /// back to on this slot when a later policy fails at boot. Only a
    /// policy that parses is kept; failures are logged (the boot is good
    /// whatever happens here).
    fn keep_good_policy(&self, state_dir: &Path, slot: &str) {
        let Some(text) = &self.applied else { return };
        if let Err(e) = slate_state::Policy::parse(text, Path::new("the applied state policy")) {
            tracing::warn!("not keeping the applied state policy as the last good one: {e}");
            return;
        }
        let path = good_policy_path(state_dir, slot);
        if std::fs::read_to_string(&path).is_ok_and(|old| &old == text) {
            return;
        }
        if let Err(e) = write_atomic(&path, text.as_bytes()) {
            tracing::warn!("cannot keep the last good state policy: {e}");
        }
    }
}

/// Where the last state policy that booted well on `slot` is kept.
pub fn good_policy_path(state_dir: &Path, slot: &str) -> std::path::PathBuf {
    state_dir.join(format!("good-policy-{slot}.toml"))
}

/// The initramfs step's count of failed boots of `slot` in a row: a slot
/// written anew starts from zero.
fn clear_boot_failures(state_dir: &Path, slot: &str) {
    let p = state_dir.join(format!("boot-failures-{slot}"));
    if let Err(e) = std::fs::remove_file(&p) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("cannot remove {}: {e}", p.display());
        }
    }
}

/// `slate rollback`: the other slot boots next.
pub fn rollback(cfg: &Config) -> Result<String> {
    let slots = cfg.slots("slate rollback")?;
    let _lock = lock(&cfg.state_dir)?;
    let mut state = State::load(&cfg.state_dir)?;
    let active = state
        .active
        .clone()
        .ok_or_else(|| Error::Local("no slot has been written yet".into()))?;
    // Roll back from the slot that runs. A state file that names the
    // booted slot neither active nor pending cannot be trusted to say what
    // the other slot holds: refuse rather than act on it.
    let current = match booted_slot() {
        Some(b) if b == active || state.pending.as_deref() == Some(b.as_str()) => b,
        Some(b) => {
            return Err(Error::Local(format!(
                "the machine booted slot {b} (slate.slot= on the kernel command line) but the state file says \
                 slot {active} is active; nothing was changed. Run `slate boot-ok` to record the running slot first"
            )))
        }
        None => active,
    };
    let target = other(&current).to_string();
    let s = state.slot(&target).clone();
    if s.snapshot.is_none() || s.dirty {
        return Err(Error::Local(format!(
            "slot {target} holds no complete snapshot; nothing to roll back to"
        )));
    }
    boot::rollback_to(slots.bootloader, &BootFiles::open(cfg)?.path, &target)?;
    state.pending = None;
    state.active = Some(target.clone());
    state.boot_result = Some("rolled-back".into());
    state.save(&cfg.state_dir)?;
    Ok(format!(
        "slot {target} ({}) boots next",
        &s.snapshot.unwrap_or_default()[..12]
    ))
}

/// What `slate status` shows: an A/B machine's slots ([`status_ab`]), or
/// what a network-booted machine booted and its cache ([`status_netboot`]).
pub fn status(cfg: &Config) -> Result<serde_json::Value> {
    match &cfg.mode {
        Mode::Ab(slots) => status_ab(cfg, slots),
        Mode::Netboot => status_netboot(cfg),
    }
}

/// A network-booted machine's status (docs/agent.md): a file the network
/// boot should have left that cannot be read is said in `netboot_error`
/// or `cache_error`, beside everything else that could be.
fn status_netboot(cfg: &Config) -> Result<serde_json::Value> {
    let state = State::load(&cfg.state_dir)?;
    let found = crate::netboot::Found::read();
    let info = found.info.as_ref().ok();
    // The latest word of the fleet: this boot's last pass, else what the
    // initramfs was told when it booted.
    let assigned = state
        .last_pass
        .as_ref()
        .and_then(|p| p.target.clone())
        .or_else(|| info.and_then(|i| i.assigned.clone()));
    let mut v = serde_json::json!({
        "mode": info.map_or("netboot", |i| i.mode.as_str()),
        "netboot": info,
        "booted": info.map(|i| &i.snapshot),
        "assigned": assigned,
        "device": info.and_then(|i| i.device.as_ref()),
        "cache": found.cache.as_ref().ok().map(|(path, c)| serde_json::json!({
            "status_file": path,
            "state": c.state,
            "snapshot": c.snapshot,
            "fill_target": c.fill_target,
            "filling": c.filling,
            "cached_bytes": c.cached_bytes,
            "total_bytes": c.total_bytes,
            "percent": c.percent(),
            "complete": c.complete,
            "updated_at": c.updated_at,
        })),
        "boot_result": state.boot_result,
        "boot_warnings": state.boot_warnings,
        "last_pass": state.last_pass,
    });
    if let Err(e) = &found.info {
        v["netboot_error"] = e.as_str().into();
    }
    if let Err(e) = &found.cache {
        v["cache_error"] = e.as_str().into();
    }
    Ok(v)
}

/// An A/B machine's status: both slots, the last pass and boot.
fn status_ab(cfg: &Config, slots: &crate::config::Slots) -> Result<serde_json::Value> {
    let state = State::load(&cfg.state_dir)?;
    let slot = |n: &str| {
        let s = state.slot(n);
        let meta = s
            .snapshot
            .as_deref()
            .and_then(|id| local_snapshot(&cfg.state_dir, id))
            .map(|(snap, _)| snap);
        serde_json::json!({
            "location": slots.path(n),
            "snapshot": s.snapshot,
            "os": meta.as_ref().and_then(|m| m.meta("PRETTY_NAME").map(str::to_string)),
            "written_at": s.written_at,
            "dirty": s.dirty,
            "active": state.active.as_deref() == Some(n),
            "pending": state.pending.as_deref() == Some(n),
            "known_good": state.known_good.iter().any(|k| k == n),
        })
    };
    Ok(serde_json::json!({
        "slots": {"a": slot("a"), "b": slot("b")},
        "active": state.active,
        "pending": state.pending,
        "boot_result": state.boot_result,
        "boot_warnings": state.boot_warnings,
        "failed": state.failed,
        "last_pass": state.last_pass,
        "bootloader": slots.bootloader,
        "mode": if booted_live() { "live" } else { "ab" },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_booted_slot_comes_from_the_command_line() {
        assert_eq!(
            slot_from_cmdline("BOOT_IMAGE=/slate/b/vmlinuz root=LABEL=slate-b ro slate.slot=b quiet\n").as_deref(),
            Some("b")
        );
        // The last one wins, as for the kernel; init's arguments do not count.
        assert_eq!(slot_from_cmdline("slate.slot=a slate.slot=b").as_deref(), Some("b"));
        assert_eq!(slot_from_cmdline("ro -- slate.slot=a"), None);
        assert_eq!(slot_from_cmdline("ro slate.slot=c quiet"), None);
        assert_eq!(slot_from_cmdline("console=ttyS0 quiet"), None);
    }
}
