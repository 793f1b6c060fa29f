//! The agent's HTTP client: server failover, bounded downloads, ranged
//! reads checked against what was asked, uploads and deletes of private
//! data, and errors that say what to do when the machine token is refused.
//!
//! Transport rules (`docs/agent.md`, "Servers"): only a server that cannot
//! be reached at all passes a request to the next one. A TLS failure (an
//! unknown authority, a wrong name, a pin that does not match, a server
//! that does not speak TLS) is an error, never "offline": an attacker who
//! can break the handshake must not be able to push the agent to another
//! server, nor make a pass end quietly. Each server has a client of its
//! own, with its CA file or certificate pins, and the machine token goes
//! only to the servers AGENT.toml lets have it. Redirects are not
//! followed, so no answer can send the token (or the agent) elsewhere.
//! Those rules are `slate-net`'s, shared with `slate home`.
//!
//! One more case passes a GET on: a connection that breaks before the
//! whole answer arrived (reset, closed, stalled past the timeout), as when
//! a replica of `slate serve` dies in the middle of an update
//! (docs/scale.md, "Replicas"). A GET changes nothing on the server and
//! every byte the agent keeps is checked against a signed hash, so asking
//! the next server in AGENT.toml gives no one a power they lack: whoever
//! can break connections to a server can already make it unreachable.
//! Uploads and POSTs are not repeated, since the first may have landed.

use std::io::Read;
use std::time::Duration;

use slate_net::{is_tls_error, root_cause, Endpoint, ServerSettings};

use crate::error::{Error, Result};

/// Largest single response the agent accepts, whatever the server says.
const MAX_BODY: u64 = 256 << 20;

/// A client bound to the first server that answers.
pub struct Http {
    endpoints: Vec<Endpoint>,
    servers: Vec<String>,
    current: std::sync::atomic::AtomicUsize,
    /// Bytes received in response bodies (the objects URLs' included).
    pub received: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The machine's token, sent as `Authorization: Bearer` when set.
    token: Option<String>,
    /// The per-request timeout, for the objects URLs' clients.
    pub(crate) timeout_secs: u64,
    /// The objects URLs of the assignment, asked first for immutable
    /// objects (`crate::objects`); empty for every other client.
    pub(crate) objects: Vec<crate::objects::Source>,
    /// An objects URL's client: never a token, and its 401/403 are not
    /// about the machine token.
    pub(crate) anonymous: bool,
}

/// How one attempt at a request failed.
enum Failure {
    /// The connection to server number `index` broke before the whole
    /// answer came: another server may give the same answer.
    Broken { index: usize, why: String },
    /// Anything else: the request's result.
    Final(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Final(e)
    }
}

impl Failure {
    fn into_error(self) -> Error {
        match self {
            Failure::Broken { why, .. } => Error::Server(why),
            Failure::Final(e) => e,
        }
    }
}

/// What a PUT did (`docs/format/http.md`: 201, 204, 412).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// Stored; there was nothing of that name (201).
    Created,
    /// Stored over the previous version (204).
    Replaced,
    /// A create-only PUT found it there already; nothing changed (412).
    AlreadyExists,
}

/// The error for a refused machine token, if `status` is one: 401 (no
/// token, or one the server does not accept) or 403 (another machine's).
pub fn auth_error(server: &str, status: reqwest::StatusCode, what: &str) -> Option<Error> {
    match status {
        reqwest::StatusCode::UNAUTHORIZED => Some(Error::Config(format!(
            "server {server} refused {what}: the machine token is missing or not accepted; \
             run `slate fleet enroll MACHINE` on the server and write the token to the file \
             AGENT.toml's token_file names"
        ))),
        reqwest::StatusCode::FORBIDDEN => Some(Error::Config(format!(
            "server {server} refused {what}: the machine token belongs to another machine; \
             write this machine's own token (from `slate fleet enroll MACHINE`) to its token_file"
        ))),
        _ => None,
    }
}

fn net_error(e: slate_net::Error) -> Error {
    match e {
        slate_net::Error::Config(m) => Error::Config(m),
        slate_net::Error::Local(m) => Error::Local(m),
    }
}

impl Http {
    /// A client for `servers` (tried in order) with a per-request timeout,
    /// with the settings of bare URLs ([`ServerSettings::plain`]).
    pub fn new(servers: &[String], timeout_secs: u64) -> Result<Http> {
        let settings: Vec<ServerSettings> = servers.iter().map(|s| ServerSettings::plain(s)).collect();
        Self::with_settings(&settings, timeout_secs)
    }

    /// A client for `servers` (tried in order), each with its own TLS
    /// settings and token permission.
    pub fn with_settings(servers: &[ServerSettings], timeout_secs: u64) -> Result<Http> {
        let endpoints = servers
            .iter()
            .map(|s| {
                let timeouts = slate_net::Timeouts {
                    connect: Duration::from_secs(timeout_secs.min(10)),
                    request: Duration::from_secs(timeout_secs),
                };
                Endpoint::new(s, timeouts, concat!("slate-agent/", env!("CARGO_PKG_VERSION"))).map_err(net_error)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Http {
            endpoints,
            servers: servers.iter().map(|s| s.url.clone()).collect(),
            current: 0.into(),
            received: Default::default(),
            token: None,
            timeout_secs,
            objects: Vec::new(),
            anonymous: false,
        })
    }

    /// Send `token` with every request from now on (None: anonymous).
    pub fn set_token(&mut self, token: Option<String>) {
        self.token = token;
    }

    /// The server in use.
    pub fn server(&self) -> &str {
        self.servers
            .get(self.current.load(std::sync::atomic::Ordering::Relaxed))
            .map_or("(no server)", String::as_str)
    }

    /// Send a request to the current server, failing over to the next ones
    /// when a server cannot be reached at all.
    fn send(
        &self,
        build: impl Fn(&reqwest::blocking::Client, &str) -> reqwest::blocking::RequestBuilder,
    ) -> Result<reqwest::blocking::Response> {
        self.send_attempt(build).map(|(r, _)| r).map_err(Failure::into_error)
    }

    /// [`Http::send`], telling a connection that broke from other errors,
    /// and which server answered.
    fn send_attempt(
        &self,
        build: impl Fn(&reqwest::blocking::Client, &str) -> reqwest::blocking::RequestBuilder,
    ) -> Result<(reqwest::blocking::Response, usize), Failure> {
        let start = self.current.load(std::sync::atomic::Ordering::Relaxed);
        let mut last = String::new();
        for k in 0..self.servers.len() {
            let i = (start + k) % self.servers.len();
            let endpoint = &self.endpoints[i];
            let req = endpoint.authorize(build(&endpoint.client, &self.servers[i]), self.token.as_deref());
            match req.send() {
                Ok(r) => {
                    self.current.store(i, std::sync::atomic::Ordering::Relaxed);
                    return Ok((r, i));
                }
                Err(e) if slate_net::is_offline(&e) => last = format!("{}: {}", self.servers[i], root_cause(&e)),
                Err(e) if is_tls_error(&e) => {
                    return Err(Error::Server(format!(
                        "{}; the server was not used and no other was tried",
                        slate_net::tls_failure(&endpoint.settings, &e)
                    ))
                    .into())
                }
                Err(e) if e.is_request() || e.is_body() || e.is_timeout() => {
                    return Err(Failure::Broken {
                        index: i,
                        why: format!("{}: {}", self.servers[i], root_cause(&e)),
                    })
                }
                Err(e) => return Err(Error::Server(format!("{}: {}", self.servers[i], root_cause(&e))).into()),
            }
        }
        Err(Error::Offline(last).into())
    }

    /// Run `attempt`, a GET, again on the next server each time its
    /// connection breaks, at most once per server; the last break is the
    /// error. `current` moves on only if no other thread moved it first.
    fn with_failover<T>(&self, attempt: impl Fn() -> Result<T, Failure>) -> Result<T> {
        let mut breaks = 0;
        loop {
            match attempt() {
                Ok(v) => return Ok(v),
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Broken { index, why }) => {
                    breaks += 1;
                    if breaks >= self.servers.len() {
                        return Err(Error::Server(why));
                    }
                    let next = (index + 1) % self.servers.len();
                    let _ = self.current.compare_exchange(
                        index,
                        next,
                        std::sync::atomic::Ordering::SeqCst,
                        std::sync::atomic::Ordering::SeqCst,
                    );
                    tracing::warn!("{why}; asking {} instead", self.servers[next]);
                }
            }
        }
    }

    /// The token this client would send (tests of the objects clients).
    #[cfg(test)]
    pub(crate) fn token_for_tests(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Whether any of this client's servers may get a token (tests).
    #[cfg(test)]
    pub(crate) fn takes_token_for_tests(&self) -> bool {
        self.endpoints.iter().any(Endpoint::takes_token)
    }

    /// Whether the server in use gets the machine token.
    fn current_has_token(&self) -> bool {
        self.token.is_some() && self.endpoints[self.current.load(std::sync::atomic::Ordering::Relaxed)].takes_token()
    }

    fn body(&self, what: &str, resp: reqwest::blocking::Response, expect_len: Option<u64>) -> Result<Vec<u8>> {
        self.checked_body(what, resp, expect_len, &mut false)
    }

    /// [`Http::body`] of an answer from server number `index`, with a body
    /// that breaks off as [`Failure::Broken`].
    fn read_body(
        &self,
        what: &str,
        resp: reqwest::blocking::Response,
        expect_len: Option<u64>,
        index: usize,
    ) -> Result<Vec<u8>, Failure> {
        let mut broke = false;
        self.checked_body(what, resp, expect_len, &mut broke).map_err(|e| {
            if broke {
                Failure::Broken {
                    index,
                    why: e.to_string(),
                }
            } else {
                Failure::Final(e)
            }
        })
    }

    /// The answer's body, checked against its status, `expect_len` and the
    /// agent's bound; sets `broke` when the connection broke off.
    fn checked_body(
        &self,
        what: &str,
        resp: reqwest::blocking::Response,
        expect_len: Option<u64>,
        broke: &mut bool,
    ) -> Result<Vec<u8>> {
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED && !self.current_has_token() && !self.anonymous {
            return Err(Error::Config(format!(
                "server {} refused {what}: it needs the machine token, which the agent does not send it \
                 ({}); see docs/agent.md, \"Servers\"",
                self.server(),
                if self.token.is_none() {
                    "AGENT.toml has no token_file; run `slate fleet enroll MACHINE` on the server and name \
                     the file holding the token in token_file"
                } else {
                    "its entry in AGENT.toml does not allow it: plain http needs token = true and \
                     token_over_http = true, another server needs token = true"
                }
            )));
        }
        if let Some(e) = auth_error(self.server(), status, what).filter(|_| !self.anonymous) {
            return Err(e);
        }
        if !status.is_success() {
            let msg = resp
                .json::<serde_json::Value>()
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_default();
            return Err(Error::Server(format!(
                "server {} answered {status} for {what}{}",
                self.server(),
                if msg.is_empty() {
                    String::new()
                } else {
                    format!(": {msg}")
                }
            )));
        }
        let limit = expect_len.unwrap_or(MAX_BODY).min(MAX_BODY);
        if let Some(n) = resp.content_length() {
            if n > limit {
                return Err(Error::Server(format!(
                    "server {} sent {n} bytes for {what}, more than {limit}",
                    self.server()
                )));
            }
        }
        let mut out = Vec::with_capacity(expect_len.unwrap_or(0).min(limit) as usize);
        resp.take(limit + 1).read_to_end(&mut out).map_err(|e| {
            *broke = true;
            Error::Server(format!("download of {what} from {} broke off: {e}", self.server()))
        })?;
        self.received
            .fetch_add(out.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if out.len() as u64 > limit {
            return Err(Error::Server(format!(
                "server {} sent more than {limit} bytes for {what}",
                self.server()
            )));
        }
        if let Some(n) = expect_len {
            if out.len() as u64 != n {
                return Err(Error::Server(format!(
                    "download of {what} from {} is truncated: {} of {n} bytes",
                    self.server(),
                    out.len()
                )));
            }
        }
        Ok(out)
    }

    /// GET `path` (below the server's base URL).
    pub fn get(&self, path: &str) -> Result<Vec<u8>> {
        self.with_failover(|| {
            let (resp, i) = self.send_attempt(|c, base| c.get(format!("{base}{path}")))?;
            self.read_body(path, resp, None, i)
        })
    }

    /// GET `path`, or None on 404.
    pub fn get_optional(&self, path: &str) -> Result<Option<Vec<u8>>> {
        self.with_failover(|| {
            let (resp, i) = self.send_attempt(|c, base| c.get(format!("{base}{path}")))?;
            if resp.status() == reqwest::StatusCode::NOT_FOUND {
                return Ok(None);
            }
            self.read_body(path, resp, None, i).map(Some)
        })
    }

    /// Bytes `start..end` of `path`, exactly.
    pub fn get_range(&self, path: &str, start: u64, end: u64) -> Result<Vec<u8>> {
        self.with_failover(|| self.get_range_attempt(path, start, end))
    }

    fn get_range_attempt(&self, path: &str, start: u64, end: u64) -> Result<Vec<u8>, Failure> {
        let (resp, i) = self.send_attempt(|c, base| {
            c.get(format!("{base}{path}"))
                .header(reqwest::header::RANGE, format!("bytes={start}-{}", end - 1))
        })?;
        if resp.status() == reqwest::StatusCode::OK {
            return Err(Error::Server(format!(
                "server {} ignored a Range request for {path}; it must support ranges",
                self.server()
            ))
            .into());
        }
        let want = format!("bytes {start}-{}/", end - 1);
        if resp.status().is_success() {
            let got = resp
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !got.starts_with(&want) {
                return Err(Error::Server(format!(
                    "server {} answered range {got:?} for {want:?} of {path}",
                    self.server()
                ))
                .into());
            }
        }
        self.read_body(path, resp, Some(end - start), i)
    }

    /// Up to `len` bytes of `path` from `start`, and the object's total
    /// length; None when the object does not exist (404).
    pub fn get_chunked(&self, path: &str, start: u64, len: u64) -> Result<Option<(Vec<u8>, u64)>> {
        self.with_failover(|| self.get_chunked_attempt(path, start, len))
    }

    fn get_chunked_attempt(&self, path: &str, start: u64, len: u64) -> Result<Option<(Vec<u8>, u64)>, Failure> {
        let (resp, i) = self.send_attempt(|c, base| {
            c.get(format!("{base}{path}"))
                .header(reqwest::header::RANGE, format!("bytes={start}-{}", start + len - 1))
        })?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if resp.status() != reqwest::StatusCode::PARTIAL_CONTENT {
            self.read_body(path, resp, None, i)?;
            return Err(Error::Server(format!(
                "server {} does not answer Range requests for {path}",
                self.server()
            ))
            .into());
        }
        let cr = resp
            .headers()
            .get(reqwest::header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let parsed = cr.strip_prefix("bytes ").and_then(|r| {
            let (range, total) = r.split_once('/')?;
            let (a, b) = range.split_once('-')?;
            Some((
                a.parse::<u64>().ok()?,
                b.parse::<u64>().ok()?,
                total.parse::<u64>().ok()?,
            ))
        });
        let Some((a, b, total)) = parsed.filter(|(a, b, t)| *a == start && b >= a && b < t && b - a < len) else {
            return Err(Error::Server(format!(
                "server {} answered range {cr:?} for bytes {start}.. of {path}",
                self.server()
            ))
            .into());
        };
        let body = self.read_body(path, resp, Some(b - a + 1), i)?;
        Ok(Some((body, total)))
    }

    /// PUT `body` at `path`; with `create_only`, only if nothing is there
    /// yet (`If-None-Match: *`), else [`PutOutcome::AlreadyExists`].
    pub fn put(&self, path: &str, body: &[u8], create_only: bool) -> Result<PutOutcome> {
        let resp = self.send(|c, base| {
            let req = c.put(format!("{base}{path}")).body(body.to_vec());
            if create_only {
                req.header(reqwest::header::IF_NONE_MATCH, "*")
            } else {
                req
            }
        })?;
        match resp.status() {
            reqwest::StatusCode::CREATED => Ok(PutOutcome::Created),
            reqwest::StatusCode::NO_CONTENT | reqwest::StatusCode::OK => Ok(PutOutcome::Replaced),
            reqwest::StatusCode::PRECONDITION_FAILED if create_only => Ok(PutOutcome::AlreadyExists),
            _ => self.body(path, resp, None).and_then(|_| {
                Err(Error::Server(format!(
                    "server {} answered an upload of {path} with something other than 201, 204 or 412",
                    self.server()
                )))
            }),
        }
    }

    /// DELETE `path`; false when there was nothing (404).
    pub fn delete(&self, path: &str) -> Result<bool> {
        let resp = self.send(|c, base| c.delete(format!("{base}{path}")))?;
        match resp.status() {
            reqwest::StatusCode::NOT_FOUND => Ok(false),
            s if s.is_success() => Ok(true),
            _ => self.body(path, resp, None).map(|_| true),
        }
    }

    /// POST JSON, return the JSON answer (or null for 204).
    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> Result<serde_json::Value> {
        self.post_json_within(path, body, None)
    }

    /// [`Http::post_json`] with `timeout` for this request instead of the
    /// client's: for a request the server holds open until something
    /// changes (`?wait=`), which must not count as a server that hangs.
    pub fn post_json_within(
        &self,
        path: &str,
        body: &serde_json::Value,
        timeout: Option<Duration>,
    ) -> Result<serde_json::Value> {
        let resp = self.send(|c, base| {
            let req = c.post(format!("{base}{path}")).json(body);
            match timeout {
                Some(t) => req.timeout(t),
                None => req,
            }
        })?;
        if resp.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(serde_json::Value::Null);
        }
        let b = self.body(path, resp, None)?;
        serde_json::from_slice(&b)
            .map_err(|e| Error::Server(format!("server {} sent bad JSON for {path}: {e}", self.server())))
    }
}
