//! Who may see the dashboard: an administrator (a token of `slate serve
//! --admin-token-file`), by a bearer token on each request (curl, tests)
//! or by a session cookie a browser got from the login form.
//!
//! The cookie is not the token. It is `v1.EXPIRY.MAC`, where MAC is
//! BLAKE3 keyed with a key derived from one administrator token, over the
//! expiry. Checking it means deriving the key of every token in the file
//! *now* and comparing MACs (`blake3::Hash` compares in constant time), so:
//!
//! - no session table: every replica that reads the same token file
//!   accepts the sessions of the others, and a restart ends none;
//! - removing a token from the file ends its sessions at the next request,
//!   as it ends its bearer use;
//! - a stolen cookie is good until its expiry ([`SESSION_SECS`]) or until
//!   its token is removed, but it does not reveal the token. Logout only
//!   makes the browser forget it; revoking means removing the token.
//!
//! The key is `blake3::derive_key` of the token under a context string of
//! its own, so it is no value stored anywhere (the database keeps BLAKE3
//! hashes of machine tokens, never of these keys).

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderMap};

use crate::auth::{is_token, AdminTokens};

/// Name of the session cookie.
pub const COOKIE: &str = "slate_ui";
/// How long a session lasts: a working day.
pub const SESSION_SECS: u64 = 12 * 3600;
/// The key derivation context (never reused for anything else).
const CONTEXT: &str = "slate 2026-12-07 web dashboard session v1";

/// The session keys of the tokens in `admin`'s file, read now.
fn keys(admin: &AdminTokens) -> anyhow::Result<Vec<[u8; 32]>> {
    // `hashes` checks the file as the API does (an error names the line).
    admin.hashes()?;
    let text = std::fs::read_to_string(&admin.file)?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| is_token(l))
        .map(|t| blake3::derive_key(CONTEXT, t.as_bytes()))
        .collect())
}

fn mac(key: &[u8; 32], expiry: u64) -> blake3::Hash {
    blake3::keyed_hash(key, format!("{COOKIE} {expiry}").as_bytes())
}

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A session value for `token` (which the caller has checked is in the
/// file), valid until `expiry`.
pub fn issue(token: &str, expiry: u64) -> String {
    let key = blake3::derive_key(CONTEXT, token.as_bytes());
    format!("v1.{expiry}.{}", mac(&key, expiry).to_hex())
}

/// Whether `value` is a session that is still valid at `now` for a token
/// still in the file. Blocking (reads the file).
pub fn valid(admin: &AdminTokens, value: &str, now: u64) -> anyhow::Result<bool> {
    let mut parts = value.split('.');
    let (Some("v1"), Some(exp), Some(hex), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Ok(false);
    };
    let (Ok(expiry), Ok(presented)) = (exp.parse::<u64>(), blake3::Hash::from_hex(hex)) else {
        return Ok(false);
    };
    if expiry <= now || expiry > now + SESSION_SECS {
        return Ok(false);
    }
    // Every key is tried (no early exit), so timing tells nothing of which.
    let mut ok = false;
    for k in keys(admin)? {
        ok |= mac(&k, expiry) == presented;
    }
    Ok(ok)
}

/// The session cookie's value in a request, if any.
pub fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// The `Set-Cookie` value that opens a session (`secure` when the browser
/// came over https).
pub fn set_cookie(value: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={value}; Path=/ui; Max-Age={SESSION_SECS}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that makes the browser forget the session.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/ui; Max-Age=0; HttpOnly; SameSite=Strict")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_follow_the_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admin.token");
        let (a, b) = (crate::auth::generate().unwrap(), crate::auth::generate().unwrap());
        std::fs::write(&file, format!("# admins\n{a}\n{b}\n")).unwrap();
        let admin = AdminTokens { file: file.clone() };
        let now = 1_000_000;
        let s = issue(&a, now + 60);
        assert!(!s.contains(&a[7..]), "the cookie is not the token");
        assert!(valid(&admin, &s, now).unwrap());
        // Expired, too far ahead, tampered, malformed: refused.
        assert!(!valid(&admin, &s, now + 60).unwrap());
        assert!(!valid(&admin, &issue(&a, now + SESSION_SECS + 1), now).unwrap());
        let tampered = s.replace(&format!(".{}.", now + 60), &format!(".{}.", now + 61));
        assert!(!valid(&admin, &tampered, now).unwrap());
        for bad in ["", "v1", "v1.x.y", "v2.1.2", &format!("{s}.x")] {
            assert!(!valid(&admin, bad, now).unwrap(), "{bad}");
        }
        // A token that is not an administrator's opens nothing.
        let c = crate::auth::generate().unwrap();
        assert!(!valid(&admin, &issue(&c, now + 60), now).unwrap());
        // Removing the token ends its sessions; the other's stay.
        let sb = issue(&b, now + 60);
        std::fs::write(&file, format!("{b}\n")).unwrap();
        assert!(!valid(&admin, &s, now).unwrap());
        assert!(valid(&admin, &sb, now).unwrap());
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        assert_eq!(cookie(&h), None);
        h.insert(header::COOKIE, "a=1; slate_ui=v1.2.3; b=4".parse().unwrap());
        assert_eq!(cookie(&h).as_deref(), Some("v1.2.3"));
        assert!(set_cookie("v", true).ends_with("HttpOnly; SameSite=Strict; Secure"));
        assert!(set_cookie("v", false).contains("Path=/ui;"));
    }
}
