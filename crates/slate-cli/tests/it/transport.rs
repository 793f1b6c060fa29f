//! The transport and the server under attack, on 127.0.0.1: a server with
//! a certificate the agent must not accept in front of a plain-http mirror
//! (a TLS failure is an error, never a failover), pins and names that do
//! not match, listeners that record what the agent sends (the token never
//! crosses plain http it was not allowed, nor follows a redirect), and a
//! client that opens connections, sends half requests and holds them.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use slate_agent::config::{Config, ServerSettings};
use slate_agent::http::Http;

use crate::support::{s, scratch, slate, slate_ok, Server};

/// A self-signed certificate for `name` (PEM cert, PEM key, DER cert).
fn self_signed(name: &str) -> (String, String, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

fn sha256_pin(der: &[u8]) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .try_into()
        .unwrap()
}

/// A repository with one commit on channel `lab`.
fn repo(dir: &Path) -> PathBuf {
    let repo = dir.join("repo");
    slate_ok(&["init", "--repo", s(&repo)]);
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/hostname"), "t\n").unwrap();
    slate_ok(&["commit", "--repo", s(&repo), "--channel", "lab", s(&tree)]);
    repo
}

/// `slate serve` over TLS with a self-signed certificate for `name`;
/// returns the server, the certificate file and its DER.
fn tls_server(dir: &Path, repo: &Path, name: &str) -> (Server, PathBuf, Vec<u8>) {
    let (cert, key, der) = self_signed(name);
    let (cf, kf) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    std::fs::write(&cf, cert).unwrap();
    std::fs::write(&kf, key).unwrap();
    let server = Server::start(&["--repo", s(repo), "--tls-cert", s(&cf), "--tls-key", s(&kf)]);
    assert!(server.url.starts_with("https://127.0.0.1:"), "{}", server.url);
    (server, cf, der)
}

fn https_settings(url: &str, ca_file: Option<&Path>, pins: Vec<[u8; 32]>) -> ServerSettings {
    ServerSettings {
        url: url.to_string(),
        ca_file: ca_file.map(Path::to_path_buf),
        pins,
        token: false,
        mirror: false,
    }
}

#[test]
fn a_tls_failure_is_an_error_and_never_fails_over_to_the_mirror() {
    let t = scratch();
    let dir = t.path();
    let repo = repo(dir);
    let (tls, cert_file, der) = tls_server(dir, &repo, "127.0.0.1");
    let (wrong, wrong_cert, _) = {
        let d = dir.join("wrong");
        std::fs::create_dir_all(&d).unwrap();
        tls_server(&d, &repo, "slate.example")
    };
    let mirror = Server::start(&["--repo", s(&repo)]);
    let other_pin = sha256_pin(&self_signed("127.0.0.1").2);
    let wrong_url = wrong.url.clone();
    let cases: Vec<(&str, ServerSettings)> = vec![
        // Unknown authority: the built-in roots do not know it.
        ("unknown CA", https_settings(&tls.url, None, vec![])),
        // The right certificate file, but the certificate names another host.
        ("wrong name", https_settings(&wrong_url, Some(&wrong_cert), vec![])),
        // A pin that is not this certificate's.
        ("pin mismatch", https_settings(&tls.url, None, vec![other_pin])),
    ];
    for (what, first) in cases {
        let servers = [first, ServerSettings::plain(&mirror.url)];
        let http = Http::with_settings(&servers, 10).unwrap();
        let e = http.get("/v1/packs").unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, slate_agent::Error::Server(_)),
            "{what}: an error, not offline: {msg}"
        );
        assert!(msg.contains("TLS failed") && !msg.contains('\n'), "{what}: {msg}");
    }
    let e = Http::with_settings(&[https_settings(&tls.url, None, vec![other_pin])], 10)
        .unwrap()
        .get("/v1/packs")
        .unwrap_err()
        .to_string();
    assert!(e.contains("PinMismatch"), "{e}");
    assert!(mirror.requests("/v1/packs").is_empty(), "the mirror was never asked");
    // The right pin, or the certificate as CA file: accepted.
    let ok = Http::with_settings(&[https_settings(&tls.url, None, vec![sha256_pin(&der)])], 10).unwrap();
    assert!(!ok.get("/v1/packs").unwrap().is_empty());
    let ok = Http::with_settings(&[https_settings(&tls.url, Some(&cert_file), vec![])], 10).unwrap();
    assert!(!ok.get("/v1/packs").unwrap().is_empty());

    // A whole pass: it fails (exit 1, one line) instead of reporting
    // "offline" or using the mirror; nothing is written.
    slate_ok(&["keygen", "--out", s(&dir.join("key"))]);
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "server = [{:?}, {:?}]\ntrust = [{:?}]\nstate_dir = {:?}\nmachine_id = \"m1\"\n\
             [slots]\na = {:?}\nb = {:?}\n",
            tls.url,
            mirror.url,
            s(&dir.join("key.pub")),
            s(&dir.join("state")),
            s(&dir.join("slot-a")),
            s(&dir.join("slot-b")),
        ),
    )
    .unwrap();
    let out = slate(&["update", "--config", s(&config)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the pass must fail: {err}");
    assert!(err.contains("TLS failed"), "{err}");
    assert!(!err.contains("offline"), "{err}");
    assert!(
        mirror.requests("/v1/fleet").is_empty(),
        "no failover: {:?}",
        mirror.requests("/v1/")
    );
    assert!(!dir.join("slot-a").exists() && !dir.join("slot-b").exists());
}

/// A listener that records each request head and answers with `reply`.
struct Recorder {
    url: String,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn start(reply: String) -> Recorder {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let heads = Arc::new(Mutex::new(Vec::new()));
        let h = heads.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { break };
                let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                let mut buf = Vec::new();
                let mut b = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut b) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&b[..n]),
                    }
                }
                h.lock().unwrap().push(String::from_utf8_lossy(&buf).into_owned());
                let _ = c.write_all(reply.as_bytes());
            }
        });
        Recorder { url, heads }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

fn agent_config(dir: &Path, servers: &str) -> Result<Config, slate_agent::Error> {
    let token = dir.join("token");
    std::fs::write(&token, format!("slate1-{}\n", "ab".repeat(32))).unwrap();
    Config::parse(
        &format!(
            "server = [{servers}]\ntrust = [\"/k.pub\"]\nstate_dir = \"/x\"\ntoken_file = {:?}\n\
             [slots]\na = \"/a\"\nb = \"/b\"\n",
            s(&token)
        ),
        Path::new("AGENT.toml"),
    )
}

#[test]
fn the_token_never_crosses_plain_http_nor_follows_a_redirect() {
    let t = scratch();
    let ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_string();
    let plain = Recorder::start(ok.clone());
    // Only plain http servers, none allowed the token: refused up front.
    let c = agent_config(t.path(), &format!("{:?}", plain.url)).unwrap();
    let e = c.http().err().expect("no server may have the token").to_string();
    assert!(
        e.contains("no server may receive the token") && e.contains("token_over_http"),
        "{e}"
    );
    // A plain http server beside an https one: it is asked without it.
    let c = agent_config(t.path(), &format!("{:?}, \"https://127.0.0.1:9\"", plain.url)).unwrap();
    assert_eq!(c.http().unwrap().get("/v1/packs").unwrap(), b"ok");
    let heads = plain.heads();
    assert_eq!(heads.len(), 1);
    assert!(!heads[0].to_lowercase().contains("authorization"), "{}", heads[0]);

    // A server allowed the token redirects elsewhere: not followed.
    let elsewhere = Recorder::start(ok);
    let redirect = Recorder::start(format!(
        "HTTP/1.1 302 Found\r\nLocation: {}/v1/packs\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        elsewhere.url
    ));
    let c = agent_config(t.path(), &crate::support::token_server(&redirect.url)).unwrap();
    let e = c.http().unwrap().get("/v1/packs").unwrap_err().to_string();
    assert!(e.contains("302"), "{e}");
    assert!(redirect.heads()[0]
        .to_lowercase()
        .contains("authorization: bearer slate1-"));
    assert!(elsewhere.heads().is_empty(), "the redirect was not followed");
}

/// Open a connection and send half a request head.
fn half_request(addr: &str) -> TcpStream {
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(b"GET /v1/packs HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
    c
}

/// Whether the server closed `c` within `limit`.
fn closed_within(c: &mut TcpStream, limit: Duration) -> bool {
    c.set_read_timeout(Some(limit)).unwrap();
    let mut b = [0u8; 256];
    loop {
        match c.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn half_requests_held_open_do_not_starve_other_clients() {
    let t = scratch();
    let repo = repo(t.path());
    let server = Server::start(&[
        "--repo",
        s(&repo),
        "--header-timeout",
        "3",
        "--max-connections-per-client",
        "24",
    ]);
    let addr = server.url.strip_prefix("http://").unwrap().to_string();
    // The attacker holds 20 connections with half a request each.
    let mut held: Vec<TcpStream> = (0..20).map(|_| half_request(&addr)).collect();
    // Another client still gets answers, promptly.
    let c = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let start = Instant::now();
    for _ in 0..3 {
        let r = c.get(format!("{}/v1/packs", server.url)).send().unwrap();
        assert_eq!(r.status(), 200);
    }
    assert!(start.elapsed() < Duration::from_secs(20), "{:?}", start.elapsed());
    // Over the per-client cap, connections are closed at once.
    let mut over: Vec<TcpStream> = (0..10).map(|_| half_request(&addr)).collect();
    assert!(
        over.iter_mut()
            .map(|c| closed_within(c, Duration::from_millis(1500)))
            .filter(|closed| *closed)
            .count()
            >= 6,
        "connections over the cap are closed"
    );
    // The half requests are cut after the header timeout.
    for c in &mut held {
        assert!(
            closed_within(c, Duration::from_secs(30)),
            "a half request held past the timeout"
        );
    }
    let r = c.get(format!("{}/v1/packs", server.url)).send().unwrap();
    assert_eq!(r.status(), 200);
}
