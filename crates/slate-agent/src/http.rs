//! The agent's HTTP client: server failover, bounded downloads, ranged
//! reads checked against what was asked, uploads and deletes of private
//! data, and errors that say what to do when the machine token is refused.

use std::io::Read;
use std::time::Duration;

use crate::error::{Error, Result};

/// Largest single response the agent accepts, whatever the server says.
const MAX_BODY: u64 = 256 << 20;

/// A client bound to the first server that answers.
pub struct Http {
    client: reqwest::blocking::Client,
    servers: Vec<String>,
    current: std::sync::atomic::AtomicUsize,
    /// Bytes received in response bodies.
    pub received: std::sync::atomic::AtomicU64,
    /// The machine's token, sent as `Authorization: Bearer` when set.
    token: Option<String>,
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

fn offline(e: &reqwest::Error) -> bool {
    e.is_connect() || e.is_timeout() && !e.is_body()
}

impl Http {
    /// A client for `servers` (tried in order) with a per-request timeout.
    pub fn new(servers: &[String], timeout_secs: u64) -> Result<Http> {
        let client = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(timeout_secs.min(10)))
            .timeout(Duration::from_secs(timeout_secs))
            .user_agent(concat!("slate-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Local(format!("cannot create an HTTP client: {e}")))?;
        Ok(Http {
            client,
            servers: servers.to_vec(),
            current: 0.into(),
            received: 0.into(),
            token: None,
        })
    }

    /// Send `token` with every request from now on (None: anonymous).
    pub fn set_token(&mut self, token: Option<String>) {
        self.token = token;
    }

    /// The server in use.
    pub fn server(&self) -> &str {
        &self.servers[self.current.load(std::sync::atomic::Ordering::Relaxed)]
    }

    /// Send a request to the current server, failing over to the next ones
    /// when a server cannot be reached at all.
    fn send(&self, build: impl Fn(&str) -> reqwest::blocking::RequestBuilder) -> Result<reqwest::blocking::Response> {
        let start = self.current.load(std::sync::atomic::Ordering::Relaxed);
        let mut last = String::new();
        for k in 0..self.servers.len() {
            let i = (start + k) % self.servers.len();
            let mut req = build(&self.servers[i]);
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            match req.send() {
                Ok(r) => {
                    self.current.store(i, std::sync::atomic::Ordering::Relaxed);
                    return Ok(r);
                }
                Err(e) if offline(&e) => last = format!("{}: {}", self.servers[i], root_cause(&e)),
                Err(e) => return Err(Error::Server(format!("{}: {}", self.servers[i], root_cause(&e)))),
            }
        }
        Err(Error::Offline(last))
    }

    fn body(&self, what: &str, resp: reqwest::blocking::Response, expect_len: Option<u64>) -> Result<Vec<u8>> {
        let status = resp.status();
        if let Some(e) = auth_error(self.server(), status, what) {
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
        resp.take(limit + 1)
            .read_to_end(&mut out)
            .map_err(|e| Error::Server(format!("download of {what} from {} broke off: {e}", self.server())))?;
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
        let resp = self.send(|base| self.client.get(format!("{base}{path}")))?;
        self.body(path, resp, None)
    }

    /// GET `path`, or None on 404.
    pub fn get_optional(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let resp = self.send(|base| self.client.get(format!("{base}{path}")))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        self.body(path, resp, None).map(Some)
    }

    /// Bytes `start..end` of `path`, exactly.
    pub fn get_range(&self, path: &str, start: u64, end: u64) -> Result<Vec<u8>> {
        let resp = self.send(|base| {
            self.client
                .get(format!("{base}{path}"))
                .header(reqwest::header::RANGE, format!("bytes={start}-{}", end - 1))
        })?;
        if resp.status() == reqwest::StatusCode::OK {
            return Err(Error::Server(format!(
                "server {} ignored a Range request for {path}; it must support ranges",
                self.server()
            )));
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
                )));
            }
        }
        self.body(path, resp, Some(end - start))
    }

    /// Up to `len` bytes of `path` from `start`, and the object's total
    /// length; None when the object does not exist (404).
    pub fn get_chunked(&self, path: &str, start: u64, len: u64) -> Result<Option<(Vec<u8>, u64)>> {
        let resp = self.send(|base| {
            self.client
                .get(format!("{base}{path}"))
                .header(reqwest::header::RANGE, format!("bytes={start}-{}", start + len - 1))
        })?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if resp.status() != reqwest::StatusCode::PARTIAL_CONTENT {
            return self.body(path, resp, None).and_then(|_| {
                Err(Error::Server(format!(
                    "server {} does not answer Range requests for {path}",
                    self.server()
                )))
            });
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
            )));
        };
        let body = self.body(path, resp, Some(b - a + 1))?;
        Ok(Some((body, total)))
    }

    /// PUT `body` at `path`; with `create_only`, only if nothing is there
    /// yet (`If-None-Match: *`), else [`PutOutcome::AlreadyExists`].
    pub fn put(&self, path: &str, body: &[u8], create_only: bool) -> Result<PutOutcome> {
        let resp = self.send(|base| {
            let req = self.client.put(format!("{base}{path}")).body(body.to_vec());
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
        let resp = self.send(|base| self.client.delete(format!("{base}{path}")))?;
        match resp.status() {
            reqwest::StatusCode::NOT_FOUND => Ok(false),
            s if s.is_success() => Ok(true),
            _ => self.body(path, resp, None).map(|_| true),
        }
    }

    /// POST JSON, return the JSON answer (or null for 204).
    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> Result<serde_json::Value> {
        let resp = self.send(|base| self.client.post(format!("{base}{path}")).json(body))?;
        if resp.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(serde_json::Value::Null);
        }
        let b = self.body(path, resp, None)?;
        serde_json::from_slice(&b)
            .map_err(|e| Error::Server(format!("server {} sent bad JSON for {path}: {e}", self.server())))
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(s) = cur.source() {
        cur = s;
    }
    cur.to_string()
}
