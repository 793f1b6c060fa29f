//! Immutable objects from the objects URLs a signed assignment names
//! (`slate serve --objects-url`; docs/scale.md, "Agents and the bucket"):
//! a bucket's web endpoint, a CDN, or any web server over a copy of the
//! repository, asked by the repository's own keys (`packs/ab/ID.pack`,
//! `snapshots/ab/ID.snap`, `deltas/FROM/TO.delta`), before the fleet
//! servers' `/v1/repo/KEY`.
//!
//! Why this is safe, and what it takes: an objects URL gets nothing but
//! anonymous GETs of content-named objects. Its client is built without
//! the machine token (its settings refuse one, and none is set), follows
//! no redirect, and is asked only for the kinds whose every byte the
//! agent checks on receipt against a hash that a signed statement leads
//! to (a snapshot record against its id, pack frames against the chunk
//! ids, a delta's rebuilt chunks against theirs). Everything else (the
//! pack list, pack indexes, signature files, channels, assignments,
//! reports, trust documents, machine state, homes) is only ever asked of
//! the fleet servers. Whatever an objects URL does wrong (no answer, an
//! error status, bytes that fail their check) costs one line in the log
//! and a second request, to the fleet servers, for the same object: it can
//! withhold, never forge. After [`MAX_FAILURES`] failures in a pass it is
//! not asked again in that pass, so a dead CDN does not double every
//! request.

use std::sync::atomic::{AtomicU32, Ordering};

use slate_net::ServerSettings;

use crate::error::{Error, Result};
use crate::http::Http;

/// Failures after which an objects URL is skipped for the rest of a pass.
pub const MAX_FAILURES: u32 = 3;

/// One objects URL and its client.
pub struct Source {
    /// A client for this URL alone: no token, no failover of its own.
    pub http: Http,
    failures: AtomicU32,
}

impl Http {
    /// Ask `urls` (checked and signed, from a verified assignment) first
    /// for immutable objects from now on. A URL whose client cannot be
    /// built is left out with a warning: the fleet servers serve all.
    pub fn set_objects_urls(&mut self, urls: &[String]) {
        self.objects = urls
            .iter()
            .filter_map(|u| {
                let settings = ServerSettings {
                    // Never, whatever the scheme: the token is for the fleet.
                    token: false,
                    ..ServerSettings::plain(u)
                };
                match Http::with_settings(&[settings], self.timeout_secs) {
                    Ok(mut http) => {
                        http.anonymous = true;
                        // One count for the pass's bytes_fetched.
                        http.received = self.received.clone();
                        Some(Source {
                            http,
                            failures: AtomicU32::new(0),
                        })
                    }
                    Err(e) => {
                        tracing::warn!("not using objects URL {u}: {e}");
                        None
                    }
                }
            })
            .collect();
    }

    /// The objects URLs still in use in this pass, in the assignment's order.
    pub fn objects_sources(&self) -> impl Iterator<Item = &Source> {
        self.objects
            .iter()
            .filter(|s| s.failures.load(Ordering::Relaxed) < MAX_FAILURES)
    }

    /// Log that `what` could not be taken from `src` (`why`), and that the
    /// next source is asked; count it against `src` when `counts` (a
    /// failure, logged as a warning; otherwise an object that may well
    /// exist nowhere, such as a delta, logged as information).
    pub fn object_failed(&self, src: &Source, what: &str, why: &str, counts: bool) {
        let next = self
            .objects
            .iter()
            .skip_while(|s| !std::ptr::eq(*s, src))
            .skip(1)
            .find(|s| s.failures.load(Ordering::Relaxed) < MAX_FAILURES)
            .map_or_else(
                || format!("the fleet server {}", self.server()),
                |s| s.http.server().to_string(),
            );
        let line = format!(
            "objects URL {}: {what}: {why}; asking {next} instead",
            src.http.server()
        );
        if counts {
            tracing::warn!("{line}");
        } else {
            tracing::info!("{line}");
        }
        if counts && src.failures.fetch_add(1, Ordering::Relaxed) + 1 == MAX_FAILURES {
            tracing::warn!(
                "objects URL {} failed {MAX_FAILURES} times: the rest of this pass does not ask it",
                src.http.server()
            );
        }
    }

    /// Repository object `key`, whole, as `check` accepts it: from the
    /// objects URLs first, then from the fleet servers. `check` turns the
    /// bytes into what the caller uses or says why they are wrong; wrong
    /// bytes from the fleet servers are an [`Error::Untrusted`] naming
    /// `what` and the server.
    pub fn get_object<T>(
        &self,
        key: &str,
        what: &str,
        check: impl Fn(&[u8]) -> std::result::Result<T, String>,
    ) -> Result<T> {
        for src in self.objects_sources() {
            match src.http.get(&format!("/{key}")) {
                Ok(b) => match check(&b) {
                    Ok(v) => return Ok(v),
                    Err(why) => self.object_failed(src, what, &format!("refused: {why}"), true),
                },
                Err(e) => self.object_failed(src, what, &e.to_string(), true),
            }
        }
        let b = self.get(&format!("/v1/repo/{key}"))?;
        check(&b).map_err(|why| Error::Untrusted(format!("{what} from {}: {why}", self.server())))
    }

    /// Bytes `start..end` of repository object `key`, as `check` accepts
    /// them, from the objects URLs first (see [`Http::get_object`]). From
    /// the fleet servers they come back unchecked, with `false`: the caller
    /// checks them and decides what a failure there means.
    pub fn get_object_range(
        &self,
        key: &str,
        start: u64,
        end: u64,
        check: impl Fn(&[u8]) -> std::result::Result<(), String>,
    ) -> Result<(Vec<u8>, bool)> {
        let what = || format!("{key} bytes {start}-{}", end - 1);
        for src in self.objects_sources() {
            match src.http.get_range(&format!("/{key}"), start, end) {
                Ok(b) => match check(&b) {
                    Ok(()) => return Ok((b, true)),
                    Err(why) => self.object_failed(src, &what(), &format!("refused: {why}"), true),
                },
                Err(e) => self.object_failed(src, &what(), &e.to_string(), true),
            }
        }
        Ok((self.get_range(&format!("/v1/repo/{key}"), start, end)?, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_clients_never_take_the_token() {
        let mut http = Http::new(&["https://fleet.example.org".to_string()], 5).unwrap();
        http.set_token(Some("secret".into()));
        http.set_objects_urls(&[
            "https://cdn.example.org/os".to_string(),
            "http://10.0.0.1/os".to_string(),
        ]);
        assert_eq!(http.objects_sources().count(), 2);
        for src in http.objects_sources() {
            assert!(src.http.anonymous);
            assert!(src.http.token_for_tests().is_none());
            assert!(!src.http.takes_token_for_tests());
        }
    }

    #[test]
    fn a_failing_objects_url_is_dropped_for_the_pass() {
        let mut http = Http::new(&["http://fleet.example.org".to_string()], 5).unwrap();
        http.set_objects_urls(&["http://a.example.org".to_string(), "http://b.example.org".to_string()]);
        let a = &http.objects[0];
        for _ in 0..MAX_FAILURES {
            http.object_failed(a, "x", "y", true);
        }
        let left: Vec<&str> = http.objects_sources().map(|s| s.http.server()).collect();
        assert_eq!(left, ["http://b.example.org"]);
        // A missing delta is no fault of the URL's.
        let b = &http.objects[1];
        for _ in 0..MAX_FAILURES {
            http.object_failed(b, "x", "y", false);
        }
        assert_eq!(http.objects_sources().count(), 1);
    }
}
