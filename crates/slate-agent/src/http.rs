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

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use crate::config::ServerSettings;
use crate::error::{Error, Result};

/// Largest single response the agent accepts, whatever the server says.
const MAX_BODY: u64 = 256 << 20;

/// One server and the client that talks to it.
struct Endpoint {
    client: reqwest::blocking::Client,
    /// Whether the machine token may be sent to it.
    token: bool,
}

/// A client bound to the first server that answers.
pub struct Http {
    endpoints: Vec<Endpoint>,
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

/// Whether `e` comes from TLS: a handshake that failed, a certificate
/// refused, or a peer that broke the protocol. reqwest reports these as
/// connect errors, so they are told apart by the rustls error inside.
pub fn is_tls_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        // io::Error::source skips the error it wraps: look at it directly.
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.get_ref().is_some_and(|inner| is_tls_error(inner)) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// Whether a request failed because the server cannot be reached at all
/// (the only failure that moves on to the next server).
fn offline(e: &reqwest::Error) -> bool {
    !is_tls_error(e) && (e.is_connect() || e.is_timeout() && !e.is_body())
}

/// The certificate check of a server with pins: its leaf certificate must
/// hash to one of them (and chain to its CA file, when one is given too).
/// The handshake signatures are checked as always, so a pinned certificate
/// is only accepted from whoever holds its private key.
#[derive(Debug)]
struct PinVerifier {
    pins: Vec<[u8; 32]>,
    /// The CA check, when the server also has a CA file.
    ca: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let digest = ring::digest::digest(&ring::digest::SHA256, end_entity.as_ref());
        if !self.pins.iter().any(|p| p.as_slice() == digest.as_ref()) {
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
                rustls::OtherError(Arc::new(PinMismatch(hex::encode(digest.as_ref())))),
            )));
        }
        match &self.ca {
            Some(ca) => ca.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now),
            None => Ok(rustls::client::danger::ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A certificate that is not the pinned one.
#[derive(Debug)]
struct PinMismatch(String);

impl std::fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the server's certificate (sha256:{}) matches no pin in AGENT.toml",
            self.0
        )
    }
}

impl std::error::Error for PinMismatch {}

/// The TLS setup of a server with a CA file or pins; None for the
/// defaults (the built-in web roots).
fn tls_config(s: &ServerSettings) -> Result<Option<rustls::ClientConfig>> {
    if s.ca_file.is_none() && s.pins.is_empty() {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca = match &s.ca_file {
        None => None,
        Some(path) => {
            use rustls::pki_types::pem::PemObject;
            let pem = std::fs::read(path).map_err(|e| {
                Error::Config(format!(
                    "cannot read ca_file {} of server {}: {e}",
                    path.display(),
                    s.url
                ))
            })?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    Error::Config(format!(
                        "ca_file {} of server {}: not PEM certificates: {e}",
                        path.display(),
                        s.url
                    ))
                })?;
                roots
                    .add(cert)
                    .map_err(|e| Error::Config(format!("ca_file {} of server {}: {e}", path.display(), s.url)))?;
            }
            if roots.is_empty() {
                return Err(Error::Config(format!(
                    "ca_file {} of server {} holds no certificate",
                    path.display(),
                    s.url
                )));
            }
            let verifier =
                rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| Error::Config(format!("ca_file {} of server {}: {e}", path.display(), s.url)))?;
            Some(verifier)
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Local(format!("cannot set up TLS: {e}")))?;
    let config = if s.pins.is_empty() {
        let ca = ca.expect("a CA file, since there are no pins");
        builder.with_webpki_verifier(ca).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinVerifier {
                pins: s.pins.clone(),
                ca,
                provider,
            }))
            .with_no_client_auth()
    };
    Ok(Some(config))
}

fn client(s: &ServerSettings, timeout_secs: u64) -> Result<reqwest::blocking::Client> {
    let mut b = reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(timeout_secs.min(10)))
        .timeout(Duration::from_secs(timeout_secs))
        .user_agent(concat!("slate-agent/", env!("CARGO_PKG_VERSION")))
        // A redirect could carry the token to another host, or the agent
        // to a server it was not configured with: a 3xx is an answer.
        .redirect(reqwest::redirect::Policy::none());
    if let Some(tls) = tls_config(s)? {
        b = b.use_preconfigured_tls(tls);
    }
    b.build()
        .map_err(|e| Error::Local(format!("cannot create an HTTP client: {}", root_cause(&e))))
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
                Ok(Endpoint {
                    client: client(s, timeout_secs)?,
                    token: s.token,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Http {
            endpoints,
            servers: servers.iter().map(|s| s.url.clone()).collect(),
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
        let start = self.current.load(std::sync::atomic::Ordering::Relaxed);
        let mut last = String::new();
        for k in 0..self.servers.len() {
            let i = (start + k) % self.servers.len();
            let endpoint = &self.endpoints[i];
            let mut req = build(&endpoint.client, &self.servers[i]);
            if let Some(t) = self.token.as_ref().filter(|_| endpoint.token) {
                req = req.bearer_auth(t);
            }
            match req.send() {
                Ok(r) => {
                    self.current.store(i, std::sync::atomic::Ordering::Relaxed);
                    return Ok(r);
                }
                Err(e) if offline(&e) => last = format!("{}: {}", self.servers[i], root_cause(&e)),
                Err(e) if is_tls_error(&e) => {
                    return Err(Error::Server(format!(
                        "{}: TLS failed: {}; the server was not used and no other was tried \
                         (check its certificate, or AGENT.toml's ca_file and pin for it)",
                        self.servers[i],
                        root_cause(&e)
                    )))
                }
                Err(e) => return Err(Error::Server(format!("{}: {}", self.servers[i], root_cause(&e)))),
            }
        }
        Err(Error::Offline(last))
    }

    /// Whether the server in use gets the machine token.
    fn current_has_token(&self) -> bool {
        self.token.is_some() && self.endpoints[self.current.load(std::sync::atomic::Ordering::Relaxed)].token
    }

    fn body(&self, what: &str, resp: reqwest::blocking::Response, expect_len: Option<u64>) -> Result<Vec<u8>> {
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED && !self.current_has_token() {
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
        let resp = self.send(|c, base| c.get(format!("{base}{path}")))?;
        self.body(path, resp, None)
    }

    /// GET `path`, or None on 404.
    pub fn get_optional(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let resp = self.send(|c, base| c.get(format!("{base}{path}")))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        self.body(path, resp, None).map(Some)
    }

    /// Bytes `start..end` of `path`, exactly.
    pub fn get_range(&self, path: &str, start: u64, end: u64) -> Result<Vec<u8>> {
        let resp = self.send(|c, base| {
            c.get(format!("{base}{path}"))
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
        let resp = self.send(|c, base| {
            c.get(format!("{base}{path}"))
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
        let resp = self.send(|c, base| c.post(format!("{base}{path}")).json(body))?;
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
