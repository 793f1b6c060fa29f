//! The server's half of the key roles (`docs/format/trust.md`): the online
//! fleet key signs every assignment with an issue time and an expiry, and
//! the trust document that release keys signed offline
//! (`slate trust sign`, kept as REPO/trust) is served at `GET /v1/trust`.
//! Channel heads are signed the same way at `GET /v1/heads/NAME`, so that a
//! mirror, which holds no key, can only pass on heads that expire.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use slate_core::keys::SecretKey;
use slate_core::trust;
use slate_core::SnapshotId;

use super::api::Assignment;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// Default lifetime of an assignment: a machine that hears nothing newer
/// for a day reports that it is stale.
pub const DEFAULT_TTL_SECS: u64 = 24 * 3600;

/// The file in the repository directory that holds the trust document.
pub const TRUST_FILE: &str = "trust";

/// Signs assignments with the fleet key.
pub struct Signer {
    key: SecretKey,
    ttl: u64,
    /// How long a signed channel head stays fresh.
    head_ttl: u64,
    /// The last issue time handed out: issue times never go back, even
    /// when the server's clock does.
    last: AtomicU64,
    /// Where agents may fetch immutable objects (`--objects-url`), named
    /// in every assignment with a signature of their own.
    objects: Vec<String>,
}

impl Signer {
    /// A signer with `key`; assignments expire `ttl_secs` after issue.
    pub fn new(key: SecretKey, ttl_secs: u64) -> Self {
        Signer {
            key,
            ttl: ttl_secs.max(1),
            head_ttl: ttl_secs.max(1),
            last: AtomicU64::new(0),
            objects: Vec::new(),
        }
    }

    /// Name `urls` (checked by [`trust::check_objects_url`], at most
    /// [`trust::MAX_OBJECTS_URLS`]) as objects URLs in every assignment.
    pub fn with_objects_urls(mut self, urls: Vec<String>) -> Result<Self, String> {
        if urls.len() > trust::MAX_OBJECTS_URLS {
            return Err(format!(
                "at most {} --objects-url may be given, not {}",
                trust::MAX_OBJECTS_URLS,
                urls.len()
            ));
        }
        for u in &urls {
            trust::check_objects_url(u)?;
        }
        self.objects = urls;
        Ok(self)
    }

    /// Channel heads expire `secs` after they are signed.
    pub fn with_head_ttl(mut self, secs: u64) -> Self {
        self.head_ttl = secs.max(1);
        self
    }

    /// The next issue time: now, or the last one handed out if the clock
    /// went back.
    fn issue_time(&self) -> u64 {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.last.fetch_max(now, Ordering::SeqCst).max(now)
    }

    /// The signed head file of `channel`, whose history ends in `head` and
    /// holds `length` snapshots.
    pub fn sign_head(&self, channel: &str, head: SnapshotId, length: u64) -> String {
        let issued = self.issue_time();
        trust::ChannelHead {
            channel: channel.to_string(),
            snapshot: head,
            length,
            issued_at: issued,
            expires_at: issued.saturating_add(self.head_ttl),
        }
        .to_text(&self.key)
    }

    /// Stamp `a` with an issue time and an expiry and sign it.
    pub fn sign(&self, a: &mut Assignment) -> ApiResult<()> {
        let issued = self.issue_time();
        let snapshot = SnapshotId::from_hex(&a.snapshot)
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("assignment names no snapshot id")))?;
        let signed = trust::Assignment {
            machine: a.machine.clone(),
            channel: a.channel.clone(),
            snapshot,
            pinned: a.pinned,
            rule: a.rule.clone(),
            state_policy: a.state_policy.clone(),
            issued_at: issued,
            expires_at: issued.saturating_add(self.ttl),
        };
        let sig = signed.sign(&self.key);
        a.issued_at = Some(signed.issued_at);
        a.expires_at = Some(signed.expires_at);
        a.key = Some(sig.key_hex());
        a.signature = Some(sig.sig_hex());
        if !self.objects.is_empty() {
            a.objects_urls = self.objects.clone();
            a.objects_signature = Some(signed.sign_objects(&self.objects, &self.key).sig_hex());
        }
        Ok(())
    }
}

/// `GET /v1/trust`: the trust document, as `slate trust sign` wrote it.
pub async fn trust_document(State(st): State<AppState>) -> ApiResult<Response> {
    let Some(root) = st.repo.root.clone() else {
        return Err(ApiError::NotFound("this repository has no trust document".into()));
    };
    let path = root.join(TRUST_FILE);
    match tokio::fs::read(&path).await {
        Ok(data) => Ok((
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            data,
        )
            .into_response()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ApiError::NotFound(
            "this repository has no trust document (slate trust sign writes one)".into(),
        )),
        Err(e) => Err(ApiError::internal(anyhow::anyhow!("{}: {e}", path.display()))),
    }
}

/// `GET /v1/heads/NAME`: the channel's head, signed now by the fleet key
/// when this server has one; otherwise (a mirror) the signed head that
/// `slate pull` kept, served as it is. Never an unsigned head.
pub async fn channel_head(State(st): State<AppState>, uri: axum::http::Uri) -> ApiResult<Response> {
    let name = uri.path().strip_prefix("/v1/heads/").unwrap_or_default().to_string();
    if slate_repo::channel::check_name(&name).is_err() {
        return Err(ApiError::NotFound(format!("{name:?} is not a valid channel name")));
    }
    let repo = st.repo.clone();
    let signer = st.signer.clone();
    // The repository API blocks: read (and sign) off the async workers.
    let text = tokio::task::spawn_blocking(move || -> ApiResult<Option<String>> {
        match signer {
            Some(signer) => {
                let history = match repo.channel_history(&name) {
                    Ok(h) => h,
                    // A channel name that is a prefix of another: no such channel.
                    Err(_)
                        if repo
                            .storage
                            .local_path(&format!("channels/{name}"))
                            .is_some_and(|p| !p.is_file()) =>
                    {
                        return Ok(None)
                    }
                    Err(e) => return Err(ApiError::internal(e)),
                };
                let Some(head) = history.last() else {
                    return Ok(None);
                };
                Ok(Some(signer.sign_head(&name, *head, history.len() as u64)))
            }
            None => match repo.storage.read(&slate_repo::channel::head_key(&name)) {
                Ok(b) => Ok(Some(String::from_utf8_lossy(&b).into_owned())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(_)
                    if repo
                        .storage
                        .local_path(&slate_repo::channel::head_key(&name))
                        .is_some_and(|p| !p.is_file()) =>
                {
                    Ok(None)
                }
                Err(e) => Err(ApiError::internal(e)),
            },
        }
    })
    .await??;
    let text = text.ok_or_else(|| {
        ApiError::NotFound(
            "no signed head for this channel here (the server has no --fleet-key, or the mirror pulled none)".into(),
        )
    })?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        text,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Assignment {
        Assignment {
            machine: "m1".into(),
            channel: "c".into(),
            snapshot: SnapshotId::of(b"s").to_hex(),
            pinned: true,
            rule: "default".into(),
            state_policy: Some("version = 1\n".into()),
            state_policy_signatures: None,
            issued_at: None,
            expires_at: None,
            key: None,
            signature: None,
            rollout: None,
            objects_urls: Vec::new(),
            objects_signature: None,
        }
    }

    #[test]
    fn signed_answers_verify_and_issue_times_never_go_back() {
        let key = SecretKey::generate().unwrap();
        let public = key.public();
        let signer = Signer::new(key, 3600);
        let mut a = sample();
        signer.sign(&mut a).unwrap();
        let (issued, expires) = (a.issued_at.unwrap(), a.expires_at.unwrap());
        assert_eq!(expires, issued + 3600);
        let sig = trust::Signature::from_hex(a.key.as_deref().unwrap(), a.signature.as_deref().unwrap()).unwrap();
        let signed = trust::Assignment {
            machine: a.machine.clone(),
            channel: a.channel.clone(),
            snapshot: SnapshotId::from_hex(&a.snapshot).unwrap(),
            pinned: a.pinned,
            rule: a.rule.clone(),
            state_policy: a.state_policy.clone(),
            issued_at: issued,
            expires_at: expires,
        };
        signed.verify(&sig, &[public]).unwrap();
        // A clock that went back does not make the next issue time older.
        signer.last.store(issued + 1000, Ordering::SeqCst);
        let mut b = sample();
        signer.sign(&mut b).unwrap();
        assert_eq!(b.issued_at, Some(issued + 1000));
        // Without --objects-url the answer is what it always was.
        assert!(a.objects_urls.is_empty() && a.objects_signature.is_none());
        let json = serde_json::to_value(&a).unwrap();
        assert!(json.get("objects_urls").is_none() && json.get("objects_signature").is_none());
    }

    #[test]
    fn objects_urls_are_signed_apart_and_the_assignment_signature_is_unchanged() {
        let key = SecretKey::generate().unwrap();
        let public = key.public();
        let urls = vec![
            "https://cdn.example.org/os".to_string(),
            "http://10.0.0.5/os".to_string(),
        ];
        let signer = Signer::new(key, 3600).with_objects_urls(urls.clone()).unwrap();
        let mut a = sample();
        signer.sign(&mut a).unwrap();
        assert_eq!(a.objects_urls, urls);
        let signed = trust::Assignment {
            machine: a.machine.clone(),
            channel: a.channel.clone(),
            snapshot: SnapshotId::from_hex(&a.snapshot).unwrap(),
            pinned: a.pinned,
            rule: a.rule.clone(),
            state_policy: a.state_policy.clone(),
            issued_at: a.issued_at.unwrap(),
            expires_at: a.expires_at.unwrap(),
        };
        // What an agent that knows nothing of objects URLs checks.
        let sig = trust::Signature::from_hex(a.key.as_deref().unwrap(), a.signature.as_deref().unwrap()).unwrap();
        signed.verify(&sig, &[public]).unwrap();
        let osig =
            trust::Signature::from_hex(a.key.as_deref().unwrap(), a.objects_signature.as_deref().unwrap()).unwrap();
        signed.verify_objects(&urls, &osig, &public).unwrap();
        for bad in [vec!["ftp://x".to_string()], vec!["http://x/".to_string()]] {
            assert!(Signer::new(SecretKey::generate().unwrap(), 1)
                .with_objects_urls(bad)
                .is_err());
        }
    }
}
