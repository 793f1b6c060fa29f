//! Machine tokens (`docs/format/http.md`, "Authentication").
//!
//! `slate fleet enroll MACHINE` issues a token: `slate1-` and 64 lower-case
//! hex digits from 32 random bytes. The fleet database keeps only its
//! BLAKE3 hash, so a copy of the database lets nobody act as a machine.
//! A request presents the token as `Authorization: Bearer TOKEN`; the
//! server hashes it and looks the hash up ([`crate::fleet::TokenStore`]).
//! Looking up a hash, rather than comparing the presented secret with
//! stored ones, leaves no timing signal about the secret: what an attacker
//! can time is the lookup of a hash they cannot steer.
//!
//! The store is read on every request, so a token issued, replaced or
//! revoked by the CLI takes effect at once, without restarting the server.

use axum::http::{header, HeaderMap};

use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// What every token starts with (the version of the format).
pub const TOKEN_PREFIX: &str = "slate1-";
/// Longest machine name.
pub const MAX_MACHINE_LEN: usize = 128;

/// A new random token.
pub fn generate() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| anyhow::anyhow!("cannot get random bytes from the operating system for a token: {e}"))?;
    let mut t = String::with_capacity(TOKEN_PREFIX.len() + 64);
    t.push_str(TOKEN_PREFIX);
    for b in bytes {
        t.push_str(&format!("{b:02x}"));
    }
    Ok(t)
}

/// Whether `token` has the shape of a token.
pub fn is_token(token: &str) -> bool {
    token
        .strip_prefix(TOKEN_PREFIX)
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// What the store keeps of `token`: its BLAKE3 hash in hex.
pub fn hash(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

/// Check a machine name: 1 to 128 of `A-Z a-z 0-9 . _ : @ -` (what the
/// agent's identities look like: `lab-07`, `dmi:UUID`, `mac:aa:bb:..`,
/// `host:NAME`). The error is a sentence for people.
pub fn check_machine(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > MAX_MACHINE_LEN
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:@-".contains(&b))
    {
        return Err(format!(
            "{name:?} is not a machine name (1 to {MAX_MACHINE_LEN} of A-Z, a-z, 0-9, '.', '_', ':', '@', '-')"
        ));
    }
    Ok(())
}

fn unauthorized(why: &str) -> ApiError {
    ApiError::Unauthorized(format!(
        "{why}; send this machine's token as `Authorization: Bearer TOKEN` \
         (issued by `slate fleet enroll MACHINE`, read from AGENT.toml's token_file)"
    ))
}

/// The bearer token of a request, if its shape is right.
fn bearer(headers: &HeaderMap) -> ApiResult<&str> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("the request has no machine token"))?;
    let value = value
        .to_str()
        .map_err(|_| unauthorized("the Authorization header is not a bearer token"))?;
    let (scheme, token) = value
        .trim()
        .split_once(' ')
        .ok_or_else(|| unauthorized("the Authorization header is not a bearer token"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(unauthorized("the Authorization header is not a bearer token"));
    }
    let token = token.trim();
    if !is_token(token) {
        return Err(unauthorized("the bearer token is not a slate machine token"));
    }
    Ok(token)
}

/// The enrolled machine whose token the request carries; 401 otherwise.
pub async fn authenticate(st: &AppState, headers: &HeaderMap) -> ApiResult<String> {
    let hashed = hash(bearer(headers)?);
    let tokens = st.tokens.clone();
    // SQLite reads block.
    let machine = tokio::task::spawn_blocking(move || tokens.machine_for(&hashed))
        .await?
        .map_err(ApiError::internal)?;
    machine.ok_or_else(|| unauthorized("the machine token is not known to this server (revoked or replaced?)"))
}

/// Authenticate the request and require it to come from `machine`: 401
/// without a valid token, 403 with another machine's.
pub async fn require_machine(st: &AppState, headers: &HeaderMap, machine: &str) -> ApiResult<()> {
    let caller = authenticate(st, headers).await?;
    if caller != machine {
        return Err(ApiError::Forbidden(format!(
            "the token presented belongs to machine {caller}, not to {machine}; \
             a machine may only read and write its own data"
        )));
    }
    Ok(())
}

/// Where the administrators' tokens are: a file of `slate1-` tokens, one
/// a line (`slate fleet admin-token FILE` writes one), read again on every
/// administrator request so that a token added or removed takes effect at
/// once. `#` lines and blank lines are ignored.
#[derive(Debug, Clone)]
pub struct AdminTokens {
    /// The file.
    pub file: std::path::PathBuf,
}

impl AdminTokens {
    /// The hashes of the tokens in the file; an error names the file.
    pub fn hashes(&self) -> anyhow::Result<Vec<String>> {
        let text = std::fs::read_to_string(&self.file)
            .map_err(|e| anyhow::anyhow!("cannot read the administrator token file {}: {e}", self.file.display()))?;
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if !is_token(line) {
                anyhow::bail!(
                    "{} line {}: not a slate token (write one with `slate fleet admin-token FILE`)",
                    self.file.display(),
                    n + 1
                );
            }
            out.push(hash(line));
        }
        Ok(out)
    }
}

/// Require an administrator's token (`GET /v1/fleet/machines`): 401
/// without one, with a machine's token, or when the server has none.
pub async fn require_admin(st: &AppState, headers: &HeaderMap) -> ApiResult<()> {
    let Some(admin) = st.admin.clone() else {
        return Err(ApiError::Unauthorized(
            "this server has no administrator credential: start slate serve with --admin-token-file FILE \
             (`slate fleet admin-token FILE` writes one) and pass it to `slate fleet status --token-file FILE`"
                .into(),
        ));
    };
    let not_admin = |why: &str| {
        ApiError::Unauthorized(format!(
            "{why}; listing machines needs an administrator token as `Authorization: Bearer TOKEN` \
             (`slate fleet status --token-file FILE`, FILE one of slate serve's --admin-token-file)"
        ))
    };
    let presented = match bearer(headers) {
        Ok(t) => hash(t),
        Err(_) => return Err(not_admin("the request has no administrator token")),
    };
    // Reading a file blocks.
    let hashes = tokio::task::spawn_blocking(move || admin.hashes())
        .await?
        .map_err(ApiError::internal)?;
    // Hashes are compared, never the secrets: nothing to time.
    if hashes.contains(&presented) {
        Ok(())
    } else {
        Err(not_admin("the token presented is not an administrator token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_the_documented_shape() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert!(is_token(&a), "{a}");
        assert_eq!(a.len(), 7 + 64);
        assert_ne!(a, b);
        assert_eq!(hash(&a), blake3::hash(a.as_bytes()).to_hex().as_str());
        for bad in [
            "",
            "slate1-",
            &a[..a.len() - 1],
            &a.to_uppercase(),
            &format!("{a}0"),
            &a.replace("slate1-", "slate2-"),
        ] {
            assert!(!is_token(bad), "{bad}");
        }
    }

    #[test]
    fn machine_names() {
        for ok in [
            "lab-07",
            "dmi:4c4c4544-0042",
            "mac:aa:bb:cc:dd:ee:ff",
            "host:kiosk.lab",
            "a@b_c",
            &"x".repeat(128),
        ] {
            assert!(check_machine(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "..\u{0}", "a b", "é", &"x".repeat(129), "a%2f"] {
            assert!(check_machine(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bearer_headers() {
        let t = generate().unwrap();
        let mut h = HeaderMap::new();
        assert!(matches!(bearer(&h), Err(ApiError::Unauthorized(_))));
        h.insert(header::AUTHORIZATION, format!("Bearer {t}").parse().unwrap());
        assert_eq!(bearer(&h).unwrap(), t);
        h.insert(header::AUTHORIZATION, format!("bearer  {t} ").parse().unwrap());
        assert_eq!(bearer(&h).unwrap(), t);
        for bad in [format!("Basic {t}"), t.clone(), "Bearer x".into(), "Bearer".into()] {
            h.insert(header::AUTHORIZATION, bad.parse().unwrap());
            assert!(matches!(bearer(&h), Err(ApiError::Unauthorized(_))), "{bad}");
        }
    }
}
