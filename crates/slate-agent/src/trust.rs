//! What this machine trusts, and the checks of everything the fleet sends
//! before any of it is kept or acted on (`docs/format/trust.md`).
//!
//! The keys come from AGENT.toml (`trust`: release keys, `fleet_trust`:
//! fleet keys) until the server hands out a trust document that the
//! currently trusted release keys signed; from then on the newest accepted
//! document, kept in `STATE_DIR/trust`, replaces both lists. That is how a
//! key is rotated in and revoked without touching a machine.
//!
//! An assignment is accepted only when the fleet key signed its canonical
//! bytes, it names this machine, and a state policy that runs commands at
//! boot carries a release-key signature as well. A valid but expired or
//! replayed assignment is not an error: it is *stale*, changes nothing and
//! is reported as such.

use std::path::{Path, PathBuf};

use slate_core::keys::PublicKey;
use slate_core::trust::{parse_signatures, verify_policy, Assignment, ChannelHead, Signature, TrustDoc};
use slate_core::SnapshotId;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::http::Http;
use crate::state::write_atomic;

/// The keys this machine trusts now, per role.
#[derive(Debug, Clone)]
pub struct Trusted {
    /// The document they come from (version 0: AGENT.toml's keys).
    pub doc: TrustDoc,
}

impl Trusted {
    /// Keys that may sign snapshots and command-running policies.
    pub fn release(&self) -> &[PublicKey] {
        &self.doc.release
    }
    /// Keys that may sign assignments.
    pub fn fleet(&self) -> &[PublicKey] {
        &self.doc.fleet
    }
}

/// Where the accepted trust document is kept.
pub fn trust_path(state_dir: &Path) -> PathBuf {
    state_dir.join("trust")
}

/// The keys to use: the kept trust document if there is one, else the
/// AGENT.toml keys (as a version 0 document with threshold 1).
pub fn load(cfg: &Config) -> Result<Trusted> {
    let path = trust_path(&cfg.state_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            // Checked when it was accepted; a damaged copy is an error, not
            // a silent fall back to keys the document may have revoked.
            let (doc, _) = TrustDoc::parse(&text).map_err(|e| {
                Error::Local(format!(
                    "{}: {e}; remove it to trust AGENT.toml's keys again",
                    path.display()
                ))
            })?;
            Ok(Trusted { doc })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let release = cfg.trusted_keys()?;
            let fleet = cfg.fleet_keys()?;
            Ok(Trusted {
                doc: TrustDoc {
                    version: 0,
                    expires: u64::MAX,
                    threshold: 1,
                    snapshots: 1,
                    release,
                    fleet,
                },
            })
        }
        Err(e) => Err(Error::Local(format!("cannot read {}: {e}", path.display()))),
    }
}

/// Fetch the server's trust document and adopt it when it is newer and
/// signed by enough of the keys trusted now. An older or equal version is
/// ignored (a server may lag behind); a newer one that does not verify is
/// refused: the pass stops. Returns a sentence when the keys changed. With
/// `keep` false (a dry run) the document is used for this pass only.
pub fn refresh(cfg: &Config, http: &Http, trusted: &mut Trusted, now: u64, keep: bool) -> Result<Option<String>> {
    let Some(bytes) = http.get_optional("/v1/trust")? else {
        return Ok(None);
    };
    let text = String::from_utf8(bytes)
        .map_err(|_| Error::Untrusted(format!("the trust document of {} is not text", http.server())))?;
    let (doc, sigs) = TrustDoc::parse(&text)
        .map_err(|e| Error::Untrusted(format!("refusing the trust document of {}: {e}", http.server())))?;
    if doc.version <= trusted.doc.version {
        return Ok(None);
    }
    doc.verify(&sigs, &trusted.doc, now)
        .map_err(|e| Error::Untrusted(format!("refusing the trust document of {}: {e}", http.server())))?;
    if keep {
        write_atomic(&trust_path(&cfg.state_dir), text.as_bytes())?;
    }
    let msg = format!(
        "trust document version {} accepted: {} release and {} fleet keys",
        doc.version,
        doc.release.len(),
        doc.fleet.len()
    );
    tracing::info!("{msg}");
    trusted.doc = doc;
    Ok(Some(msg))
}

/// A verified assignment.
#[derive(Debug, Clone)]
pub struct Verified {
    /// What the fleet key signed.
    pub assignment: Assignment,
    /// Where immutable objects may be fetched first, as the same fleet key
    /// signed them for this assignment; empty when the answer names none,
    /// or names some without a valid signature (then they are ignored
    /// with a warning: everything comes from the fleet servers, as before).
    pub objects_urls: Vec<String>,
}

/// The objects URLs of an assignment answer whose assignment `a` the key
/// `signer` signed: kept only when `objects_signature` is that key's valid
/// signature of them for this assignment (`docs/format/trust.md`).
fn objects_urls(answer: &serde_json::Value, a: &Assignment, signer: &PublicKey) -> Vec<String> {
    if answer.get("objects_urls").is_none() {
        return Vec::new();
    }
    match checked_objects_urls(answer, a, signer) {
        Ok(urls) => urls,
        Err(why) => {
            tracing::warn!(
                "ignoring the objects URLs of the assignment ({why}); fetching everything from the fleet servers"
            );
            Vec::new()
        }
    }
}

/// [`objects_urls`], with why they are not taken.
fn checked_objects_urls(
    answer: &serde_json::Value,
    a: &Assignment,
    signer: &PublicKey,
) -> std::result::Result<Vec<String>, String> {
    let urls: Vec<String> = answer["objects_urls"]
        .as_array()
        .ok_or("objects_urls is not a list")?
        .iter()
        .map(|u| {
            u.as_str()
                .map(str::to_string)
                .ok_or("objects_urls holds something other than text")
        })
        .collect::<std::result::Result<_, _>>()?;
    let sig = answer
        .get("objects_signature")
        .and_then(|v| v.as_str())
        .ok_or("objects_signature is missing")?;
    let sig = Signature::from_hex(&hex::encode(signer.0), sig).map_err(|_| "objects_signature is not hex")?;
    a.verify_objects(&urls, &sig, signer).map_err(|e| e.to_string())?;
    Ok(urls)
}

/// Check an assignment answer: signed by a trusted fleet key over exactly
/// these fields, for `machine`, and a policy that runs commands signed by a
/// release key. Every failure is a refusal naming what failed.
pub fn verify_assignment(answer: &serde_json::Value, machine: &str, trusted: &Trusted) -> Result<Verified> {
    let refuse = |why: String| Error::Untrusted(format!("refusing the assignment: {why}"));
    let text = |k: &str| answer.get(k).and_then(|v| v.as_str());
    let (Some(key), Some(sig)) = (text("key"), text("signature")) else {
        return Err(refuse(
            "it is not signed (the server needs --fleet-key; this machine accepts only signed assignments)".into(),
        ));
    };
    let sig = Signature::from_hex(key, sig).map_err(|e| refuse(e.to_string()))?;
    let field = |k: &str| refuse(format!("its field {k} is missing or has the wrong type"));
    let snapshot_hex = text("snapshot").ok_or_else(|| field("snapshot"))?;
    let snapshot = SnapshotId::from_hex(snapshot_hex).ok_or_else(|| field("snapshot"))?;
    let state_policy = match answer.get("state_policy") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(v.as_str().ok_or_else(|| field("state_policy"))?.to_string()),
    };
    let a = Assignment {
        machine: text("machine").ok_or_else(|| field("machine"))?.to_string(),
        channel: text("channel").ok_or_else(|| field("channel"))?.to_string(),
        snapshot,
        pinned: answer
            .get("pinned")
            .and_then(|v| v.as_bool())
            .ok_or_else(|| field("pinned"))?,
        rule: text("rule").ok_or_else(|| field("rule"))?.to_string(),
        state_policy,
        issued_at: answer
            .get("issued_at")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| field("issued_at"))?,
        expires_at: answer
            .get("expires_at")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| field("expires_at"))?,
    };
    if trusted.fleet().is_empty() {
        return Err(refuse(
            "this machine trusts no fleet key (add fleet_trust to AGENT.toml, or a trust document with fleet keys)"
                .into(),
        ));
    }
    let signer = a.verify(&sig, trusted.fleet()).map_err(|e| refuse(e.to_string()))?;
    if a.machine != machine {
        return Err(refuse(format!(
            "it is for machine {:?}, not this machine ({machine:?})",
            a.machine
        )));
    }
    if let Some(p) = &a.state_policy {
        let policy = slate_state::Policy::parse(p, Path::new("the fleet's state policy"))
            .map_err(|e| refuse(format!("its state policy is invalid: {e}")))?;
        let runs = policy
            .entries
            .iter()
            .any(|e| matches!(e.generator, Some(slate_state::policy::Generator::Command(_))));
        if runs {
            let sigs = match text("state_policy_signatures") {
                Some(t) => parse_signatures(t).map_err(|e| refuse(format!("its state policy signatures: {e}")))?,
                None => Vec::new(),
            };
            verify_policy(p.as_bytes(), &sigs, trusted.release()).map_err(|e| {
                refuse(format!(
                    "its state policy runs commands at boot and needs a release-key signature \
                     (slate policy sign), the fleet key is not enough: {e}"
                ))
            })?;
        }
    }
    let objects_urls = objects_urls(answer, &a, &signer);
    Ok(Verified {
        assignment: a,
        objects_urls,
    })
}

/// Why a channel head was not taken.
#[derive(Debug)]
pub enum HeadProblem {
    /// Not a head of this channel signed by a trusted fleet key: refused.
    Refused(String),
    /// Validly signed but expired, or older than one already accepted
    /// (a frozen or rolled-back mirror): stale.
    Stale(String),
}

/// Check a channel head file from `server`: signed by one of `fleet`, for
/// `channel`, not expired at `now`, and not issued before `held_issued`
/// (the newest head this machine or repository accepted).
pub fn check_head(
    text: &[u8],
    server: &str,
    channel: &str,
    fleet: &[PublicKey],
    now: u64,
    held_issued: u64,
) -> std::result::Result<ChannelHead, HeadProblem> {
    let refuse =
        |why: String| HeadProblem::Refused(format!("refusing the head of channel {channel} from {server}: {why}"));
    if fleet.is_empty() {
        return Err(refuse(
            "no fleet key is trusted to sign channel heads (fleet_trust in AGENT.toml, --fleet-trust for pull)".into(),
        ));
    }
    let text = std::str::from_utf8(text).map_err(|_| refuse("it is not text".into()))?;
    let (head, sigs) = ChannelHead::parse(text).map_err(|e| refuse(e.to_string()))?;
    head.verify(&sigs, fleet).map_err(|e| refuse(e.to_string()))?;
    if head.channel != channel {
        return Err(refuse(format!("it is the head of channel {:?}", head.channel)));
    }
    if head.expires_at <= now {
        return Err(HeadProblem::Stale(format!(
            "the head of channel {channel} from {server} expired at {} (a mirror that stopped following its source?)",
            date(head.expires_at)
        )));
    }
    if head.issued_at < held_issued {
        return Err(HeadProblem::Stale(format!(
            "the head of channel {channel} from {server} was issued at {}, before the one already accepted ({}): \
             a rolled-back or replaying mirror",
            date(head.issued_at),
            date(held_issued)
        )));
    }
    Ok(head)
}

/// Whether a verified assignment is fresh: not expired and not older than
/// the newest one this machine accepted. `Err` holds why it is stale.
pub fn freshness(a: &Assignment, last_issued: u64, now: u64) -> std::result::Result<(), String> {
    if a.expires_at <= now {
        return Err(format!("the assignment expired at {}", date(a.expires_at)));
    }
    if a.issued_at < last_issued {
        return Err(format!(
            "the assignment was issued at {}, before one this machine already accepted (a replay)",
            date(a.issued_at)
        ));
    }
    Ok(())
}

/// A Unix time as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn date(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use slate_core::keys::SecretKey;

    fn trusted(fleet: &SecretKey, release: &SecretKey) -> Trusted {
        Trusted {
            doc: TrustDoc {
                version: 0,
                expires: u64::MAX,
                threshold: 1,
                snapshots: 1,
                release: vec![release.public()],
                fleet: vec![fleet.public()],
            },
        }
    }

    fn answer(a: &Assignment, sig: &Signature) -> serde_json::Value {
        serde_json::json!({
            "machine": a.machine, "channel": a.channel, "snapshot": a.snapshot.to_hex(),
            "pinned": a.pinned, "rule": a.rule, "state_policy": a.state_policy,
            "issued_at": a.issued_at, "expires_at": a.expires_at,
            "key": sig.key_hex(), "signature": sig.sig_hex(),
        })
    }

    fn sample(policy: Option<&str>) -> Assignment {
        Assignment {
            machine: "m1".into(),
            channel: "c".into(),
            snapshot: SnapshotId::of(b"s"),
            pinned: false,
            rule: "r".into(),
            state_policy: policy.map(str::to_string),
            issued_at: 100,
            expires_at: 200,
        }
    }

    const COMMAND_POLICY: &str =
        "[[path]]\npath = \"/etc/motd\"\nstate = \"dynamic\"\ncommand = [\"/bin/echo\", \"hi\"]\n";

    #[test]
    fn assignment_checks() {
        let fleet = SecretKey::generate().unwrap();
        let release = SecretKey::generate().unwrap();
        let t = trusted(&fleet, &release);
        let a = sample(None);
        let good = answer(&a, &a.sign(&fleet));
        verify_assignment(&good, "m1", &t).unwrap();
        assert!(verify_assignment(&good, "m2", &t)
            .unwrap_err()
            .to_string()
            .contains("not this machine"));
        // Tampered field.
        let mut bad = good.clone();
        bad["pinned"] = true.into();
        assert!(verify_assignment(&bad, "m1", &t).is_err());
        // Unsigned.
        let mut bad = good.clone();
        bad.as_object_mut().unwrap().remove("signature");
        assert!(verify_assignment(&bad, "m1", &t)
            .unwrap_err()
            .to_string()
            .contains("not signed"));
        // Signed by the release key: the wrong role.
        let bad = answer(&a, &a.sign(&release));
        assert!(verify_assignment(&bad, "m1", &t).is_err());
    }

    #[test]
    fn objects_urls_count_only_with_their_own_signature() {
        let fleet = SecretKey::generate().unwrap();
        let release = SecretKey::generate().unwrap();
        let t = trusted(&fleet, &release);
        let a = sample(None);
        let urls = vec!["http://127.0.0.1:9/os".to_string()];
        let plain = answer(&a, &a.sign(&fleet));
        assert!(verify_assignment(&plain, "m1", &t).unwrap().objects_urls.is_empty());
        let mut with = plain.clone();
        with["objects_urls"] = serde_json::json!(urls);
        with["objects_signature"] = a.sign_objects(&urls, &fleet).sig_hex().into();
        assert_eq!(verify_assignment(&with, "m1", &t).unwrap().objects_urls, urls);
        // Another URL under the signature, no signature, the release key's,
        // or one made for another assignment: the assignment stands, the
        // URLs are ignored.
        let mut moved = with.clone();
        moved["objects_urls"] = serde_json::json!(["http://evil.example.org"]);
        let mut unsigned = with.clone();
        unsigned.as_object_mut().unwrap().remove("objects_signature");
        let mut by_release = with.clone();
        by_release["objects_signature"] = a.sign_objects(&urls, &release).sig_hex().into();
        let mut other = a.clone();
        other.issued_at += 1;
        let mut replayed = with.clone();
        replayed["objects_signature"] = other.sign_objects(&urls, &fleet).sig_hex().into();
        for bad in [moved, unsigned, by_release, replayed] {
            assert!(
                verify_assignment(&bad, "m1", &t).unwrap().objects_urls.is_empty(),
                "{bad}"
            );
        }
    }

    #[test]
    fn command_policies_need_a_release_signature() {
        let fleet = SecretKey::generate().unwrap();
        let release = SecretKey::generate().unwrap();
        let t = trusted(&fleet, &release);
        let a = sample(Some(COMMAND_POLICY));
        let only_fleet = answer(&a, &a.sign(&fleet));
        let e = verify_assignment(&only_fleet, "m1", &t).unwrap_err().to_string();
        assert!(e.contains("runs commands"), "{e}");
        let mut signed = only_fleet.clone();
        let line = slate_core::trust::sign_policy(COMMAND_POLICY.as_bytes(), &release).to_line();
        signed["state_policy_signatures"] = line.into();
        verify_assignment(&signed, "m1", &t).unwrap();
        // Signed with the fleet key as a policy signature: not a release key.
        let mut wrong = only_fleet.clone();
        let line = slate_core::trust::sign_policy(COMMAND_POLICY.as_bytes(), &fleet).to_line();
        wrong["state_policy_signatures"] = line.into();
        assert!(verify_assignment(&wrong, "m1", &t).is_err());
        // A policy without commands rides on the fleet signature.
        let a = sample(Some("[[path]]\npath = \"/var/log\"\nstate = \"ram\"\n"));
        verify_assignment(&answer(&a, &a.sign(&fleet)), "m1", &t).unwrap();
    }

    #[test]
    fn freshness_and_dates() {
        let a = sample(None);
        assert!(freshness(&a, 0, 150).is_ok());
        assert!(freshness(&a, 100, 150).is_ok());
        assert!(freshness(&a, 0, 200).unwrap_err().contains("expired"));
        assert!(freshness(&a, 101, 150).unwrap_err().contains("replay"));
        assert_eq!(date(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(date(1_709_251_199), "2024-02-29 23:59:59 UTC");
    }
}
