//! slate-net: the transport rules every slate HTTP client follows
//! (`docs/agent.md`, "Servers"), in one place so that the agent and
//! `slate home` cannot drift apart.
//!
//! - Each server has settings of its own ([`ServerSettings`], from
//!   AGENT.toml): a CA file, certificate pins, and whether the machine
//!   token may be sent to it.
//! - Each server gets a client of its own ([`Endpoint`]) that checks its
//!   certificate against those settings ([`tls_config`]) and never follows
//!   a redirect: a 3xx is an answer, so no server can send the token, or
//!   the client, to a host it was not configured with.
//! - A TLS failure (an unknown authority, a wrong name, a pin that does not
//!   match, a peer that does not speak TLS) is told apart from a server
//!   that cannot be reached ([`is_tls_error`], [`is_offline`]): it is an
//!   error, never "offline", so an attacker who can break the handshake
//!   cannot push a client to another server nor make a run end quietly.
//!   [`tls_failure`] words it, naming the server and what its certificate
//!   was checked against.
//! - The machine token goes only to the servers whose settings allow it
//!   ([`Endpoint::authorize`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Why a client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The settings name a CA file that cannot be used.
    #[error("{0}")]
    Config(String),
    /// TLS or the HTTP client could not be set up on this machine.
    #[error("{0}")]
    Local(String),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One server and how a client talks to it (`docs/agent.md`, "Servers").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// Base URL, without a trailing `/`.
    pub url: String,
    /// PEM file of the certificate authorities that may vouch for this
    /// server; when set, the built-in web roots are not used for it.
    pub ca_file: Option<PathBuf>,
    /// SHA-256 digests of certificates this server may present (its leaf
    /// certificate, DER); when set, only these are accepted.
    pub pins: Vec<[u8; 32]>,
    /// Whether the machine token is sent to this server.
    pub token: bool,
    /// A mirror (`slate pull` served by `slate serve`): asked only for
    /// signed channel heads and repository objects, when no fleet server
    /// answers; never sent the token, never asked for an assignment (nor
    /// for home repositories).
    pub mirror: bool,
}

impl ServerSettings {
    /// Settings for a bare URL: no CA file, no pin, the token only over
    /// https (what a `server = "URL"` entry means).
    pub fn plain(url: &str) -> ServerSettings {
        let url = url.trim_end_matches('/').to_string();
        ServerSettings {
            token: url.starts_with("https://"),
            url,
            ca_file: None,
            pins: Vec::new(),
            mirror: false,
        }
    }

    /// What this server's certificate is checked against, for messages.
    pub fn trust_anchor(&self) -> String {
        let pins = || {
            self.pins
                .iter()
                .map(|p| format!("sha256:{}", hex::encode(p)))
                .collect::<Vec<_>>()
                .join(" or ")
        };
        match (&self.ca_file, self.pins.is_empty()) {
            (None, true) => "the built-in web roots (AGENT.toml gives it no ca_file and no pin)".into(),
            (Some(ca), true) => format!("AGENT.toml's ca_file {}", ca.display()),
            (None, false) => format!("AGENT.toml's pin {}", pins()),
            (Some(ca), false) => format!("AGENT.toml's pin {} and ca_file {}", pins(), ca.display()),
        }
    }
}

/// Parse a pin: `sha256:` and 64 hex digits (upper or lower case, `:`
/// separators allowed, as `openssl x509 -fingerprint -sha256` prints them).
pub fn parse_pin(text: &str) -> Option<[u8; 32]> {
    let hex: String = text
        .trim()
        .strip_prefix("sha256:")?
        .chars()
        .filter(|c| *c != ':')
        .collect();
    let bytes = hex::decode(hex).ok()?;
    bytes.try_into().ok()
}

/// Whether `e` comes from TLS: a handshake that failed, a certificate
/// refused, or a peer that broke the protocol. reqwest reports these as
/// connect errors, so they are told apart by the rustls error inside.
pub fn is_tls_error(e: &(dyn std::error::Error + 'static)) -> bool {
    tls_cause(e).is_some()
}

/// The rustls error inside `e`, if any.
fn tls_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // io::Error::source skips the error it wraps: look at it directly.
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(tls) = io.get_ref().and_then(|inner| tls_cause(inner)) {
                return Some(tls);
            }
        }
        cur = err.source();
    }
    None
}

/// Whether a request failed because the server cannot be reached at all
/// (the only failure that may move a client on to another server).
pub fn is_offline(e: &reqwest::Error) -> bool {
    !is_tls_error(e) && (e.is_connect() || e.is_timeout() && !e.is_body())
}

/// One line for a TLS failure `e` with server `s`: the server, what went
/// wrong, and what its certificate was checked against (the pin or the CA
/// file of AGENT.toml, or the built-in roots). Callers add what follows.
pub fn tls_failure(s: &ServerSettings, e: &(dyn std::error::Error + 'static)) -> String {
    let Some(tls) = tls_cause(e) else {
        return format!("{}: TLS failed: {}", s.url, root_cause(e));
    };
    if let rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) = tls {
        if let Some(PinMismatch(got)) = other.0.downcast_ref::<PinMismatch>() {
            return format!(
                "{}: TLS failed: its certificate is sha256:{got}, which is not {}",
                s.url,
                s.trust_anchor()
            );
        }
    }
    format!(
        "{}: TLS failed: {tls}; its certificate was checked against {}",
        s.url,
        s.trust_anchor()
    )
}

/// The innermost error of `e`'s chain, as text.
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(s) = cur.source() {
        cur = s;
    }
    cur.to_string()
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

/// A certificate that is not the pinned one (its SHA-256, hex).
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
pub fn tls_config(s: &ServerSettings) -> Result<Option<rustls::ClientConfig>> {
    if s.ca_file.is_none() && s.pins.is_empty() {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca = match &s.ca_file {
        None => None,
        Some(path) => {
            use rustls::pki_types::pem::PemObject;
            let bad = |m: String| Error::Config(format!("ca_file {} of server {}: {m}", path.display(), s.url));
            let pem = std::fs::read(path).map_err(|e| {
                Error::Config(format!(
                    "cannot read ca_file {} of server {}: {e}",
                    path.display(),
                    s.url
                ))
            })?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| bad(format!("not PEM certificates: {e}")))?;
                roots.add(cert).map_err(|e| bad(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(bad("holds no certificate".into()));
            }
            let verifier =
                rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| bad(e.to_string()))?;
            Some(verifier)
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Local(format!("cannot set up TLS: {e}")))?;
    let config = match ca {
        Some(ca) if s.pins.is_empty() => builder.with_webpki_verifier(ca).with_no_client_auth(),
        ca => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinVerifier {
                pins: s.pins.clone(),
                ca,
                provider,
            }))
            .with_no_client_auth(),
    };
    Ok(Some(config))
}

/// How long a client waits.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// To connect (and finish the TLS handshake).
    pub connect: Duration,
    /// For a whole request, answer included.
    pub request: Duration,
}

/// One server and the client that talks to it: its own TLS settings, no
/// redirects.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The server's settings.
    pub settings: ServerSettings,
    /// Its client.
    pub client: reqwest::blocking::Client,
}

impl Endpoint {
    /// A client for `settings`, sending `user_agent` (none when empty).
    pub fn new(settings: &ServerSettings, timeouts: Timeouts, user_agent: &str) -> Result<Endpoint> {
        let mut b = reqwest::blocking::Client::builder()
            .connect_timeout(timeouts.connect)
            .timeout(timeouts.request)
            // A redirect could carry the token to another host, or the
            // client to a server it was not configured with: a 3xx is an
            // answer.
            .redirect(reqwest::redirect::Policy::none());
        if !user_agent.is_empty() {
            b = b.user_agent(user_agent);
        }
        if let Some(tls) = tls_config(settings)? {
            b = b.use_preconfigured_tls(tls);
        }
        let client = b
            .build()
            .map_err(|e| Error::Local(format!("cannot create an HTTP client: {}", root_cause(&e))))?;
        Ok(Endpoint {
            settings: settings.clone(),
            client,
        })
    }

    /// The server's base URL.
    pub fn url(&self) -> &str {
        &self.settings.url
    }

    /// Whether the machine token may be sent to this server.
    pub fn takes_token(&self) -> bool {
        self.settings.token
    }

    /// `req` with the machine token, when there is one and this server may
    /// have it; otherwise unchanged.
    pub fn authorize(
        &self,
        req: reqwest::blocking::RequestBuilder,
        token: Option<&str>,
    ) -> reqwest::blocking::RequestBuilder {
        match token.filter(|_| self.settings.token) {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_in_both_spellings() {
        let hex = "ab".repeat(32);
        assert_eq!(parse_pin(&format!("sha256:{hex}")), Some([0xab; 32]));
        assert_eq!(
            parse_pin(&format!("sha256:{}", "AB:".repeat(31) + "AB")),
            Some([0xab; 32])
        );
        for bad in ["sha256:abc", hex.as_str(), "sha1:00", "sha256:"] {
            assert_eq!(parse_pin(bad), None, "{bad}");
        }
    }

    #[test]
    fn messages_name_what_the_certificate_is_checked_against() {
        let mut s = ServerSettings::plain("https://a/");
        assert_eq!(s.url, "https://a");
        assert!(s.token);
        assert!(s.trust_anchor().contains("built-in web roots"));
        s.pins = vec![[1; 32]];
        assert_eq!(s.trust_anchor(), format!("AGENT.toml's pin sha256:{}", "01".repeat(32)));
        s.ca_file = Some("/etc/ca.pem".into());
        assert!(s.trust_anchor().ends_with("and ca_file /etc/ca.pem"));
        assert!(!ServerSettings::plain("http://b").token);
    }

    #[test]
    fn a_pin_mismatch_is_a_tls_error_that_names_both_certificates() {
        let e = rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(
            PinMismatch("cd".repeat(32)),
        ))));
        let wrapped = std::io::Error::other(e);
        assert!(is_tls_error(&wrapped));
        let mut s = ServerSettings::plain("https://a");
        s.pins = vec![[0xab; 32]];
        let m = tls_failure(&s, &wrapped);
        assert_eq!(
            m,
            format!(
                "https://a: TLS failed: its certificate is sha256:{}, which is not AGENT.toml's pin sha256:{}",
                "cd".repeat(32),
                "ab".repeat(32)
            )
        );
        assert!(!is_tls_error(&std::io::Error::other("connection refused")));
    }

    #[test]
    fn ca_files_that_hold_no_certificate_are_refused_with_their_server() {
        let d = std::env::temp_dir().join(format!("slate-net-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let ca = d.join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let mut s = ServerSettings::plain("https://a");
        s.ca_file = Some(ca.clone());
        let e = tls_config(&s).unwrap_err().to_string();
        assert!(e.contains("holds no certificate") && e.contains("https://a"), "{e}");
        s.ca_file = Some(d.join("missing.pem"));
        let e = tls_config(&s).unwrap_err().to_string();
        assert!(e.starts_with("cannot read ca_file") && e.contains("https://a"), "{e}");
        // A real certificate: a client is built, with or without a pin.
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(&ca, cert.pem()).unwrap();
        s.ca_file = Some(ca);
        assert!(tls_config(&s).unwrap().is_some());
        s.pins = vec![[0; 32]];
        assert!(tls_config(&s).unwrap().is_some());
        assert!(tls_config(&ServerSettings::plain("https://a")).unwrap().is_none());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
