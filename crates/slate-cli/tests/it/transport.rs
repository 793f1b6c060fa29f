//! The transport and the server under attack, on 127.0.0.1: a server with
//! a certificate the agent must not accept in front of a plain-http mirror
//! (a TLS failure is an error, never a failover), pins and names that do
//! not match, listeners that record what the agent sends (the token never
//! crosses plain http it was not allowed, nor follows a redirect), the
//! same checks for `slate home`, a client that opens connections, sends
//! half requests and holds them, and clients that send request bodies a
//! byte at a time.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use slate_agent::config::{Config, ServerSettings};
use slate_agent::http::Http;

use crate::support::{enroll, s, scratch, slate, slate_ok, Server};

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
    assert!(
        e.contains(&format!(
            "{}: TLS failed: its certificate is sha256:{}, which is not AGENT.toml's pin sha256:{}",
            tls.url,
            hex::encode(sha256_pin(&der)),
            hex::encode(other_pin)
        )),
        "{e}"
    );
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

/// A machine enrolled on `repo` with a home key, whose AGENT.toml names the
/// servers of [`HomeMachine::point_at`]: what `slate home` needs.
struct HomeMachine {
    dir: PathBuf,
    config: PathBuf,
    key: PathBuf,
}

impl HomeMachine {
    fn new(dir: &Path, repo: &Path, name: &str) -> HomeMachine {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        enroll(repo, name, &dir);
        std::fs::rename(dir.join(format!("{name}.token")), dir.join("token")).unwrap();
        let key = dir.join("home.key");
        slate_ok(&["home", "keygen", s(&key)]);
        HomeMachine {
            config: dir.join("agent.toml"),
            dir,
            key,
        }
    }

    /// Write AGENT.toml with `servers`, the inside of its `server = [...]`.
    fn point_at(&self, servers: &str) {
        std::fs::write(
            &self.config,
            format!(
                "server = [{servers}]\ntrust = [\"/nonexistent/key.pub\"]\nstate_dir = {:?}\ntoken_file = {:?}\n\
                 timeout_secs = 5\n[slots]\na = \"/nonexistent/a\"\nb = \"/nonexistent/b\"\n",
                s(&self.dir.join("state")),
                s(&self.dir.join("token")),
            ),
        )
        .unwrap();
    }

    /// `slate home CMD --config ... --key-file ... --user alice REST`.
    fn home(&self, cmd: &str, rest: &[&str]) -> std::process::Output {
        let mut args = vec![
            "home",
            cmd,
            "--config",
            s(&self.config),
            "--key-file",
            s(&self.key),
            "--user",
            "alice",
        ];
        args.extend_from_slice(rest);
        slate(&args)
    }

    fn home_ok(&self, cmd: &str, rest: &[&str]) -> String {
        let out = self.home(cmd, rest);
        assert!(
            out.status.success(),
            "slate home {cmd} {rest:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Run a command that must fail with one line; returns it.
    fn home_err(&self, cmd: &str, rest: &[&str]) -> String {
        let out = self.home(cmd, rest);
        let e = String::from_utf8_lossy(&out.stderr).trim().to_string();
        assert!(!out.status.success(), "slate home {cmd} {rest:?} should fail");
        assert!(!e.contains("panicked") && e.lines().count() == 1, "one line: {e}");
        e
    }
}

/// Every file below `dir` with its content (a missing `dir` is empty).
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

/// An AGENT.toml server entry for `url` with a pin and/or a CA file, that
/// gets the machine token.
fn tls_entry(url: &str, pin: Option<[u8; 32]>, ca_file: Option<&Path>) -> String {
    let mut e = format!("{{ url = {url:?}, token = true");
    if let Some(p) = pin {
        e.push_str(&format!(", pin = [\"sha256:{}\"]", hex::encode(p)));
    }
    if let Some(c) = ca_file {
        e.push_str(&format!(", ca_file = {:?}", s(c)));
    }
    e + " }"
}

#[test]
fn home_over_tls_with_the_right_pin_or_ca_file_backs_up_and_restores() {
    let t = scratch();
    let dir = t.path();
    let repo = repo(dir);
    let (tls, cert_file, der) = tls_server(dir, &repo, "127.0.0.1");
    let m = HomeMachine::new(dir, &repo, "lt-1");
    let home = m.dir.join("home/alice");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("notes.txt"), "pinned and private\n").unwrap();

    // The pin of the server's certificate: init, backup, restore.
    m.point_at(&tls_entry(&tls.url, Some(sha256_pin(&der)), None));
    m.home_ok("init", &[]);
    let snap = m.home_ok("backup", &[s(&home)]);
    let target = m.dir.join("restored");
    m.home_ok("restore", &["--target", s(&target), "latest"]);
    let restored = target.join(home.strip_prefix("/").unwrap()).join("notes.txt");
    assert_eq!(std::fs::read_to_string(restored).unwrap(), "pinned and private\n");
    // The certificate as the CA file: the same repository.
    m.point_at(&tls_entry(&tls.url, None, Some(&cert_file)));
    assert!(m.home_ok("snapshots", &[]).contains(&snap.trim()[..12]));
    // Both: the pin and the CA.
    m.point_at(&tls_entry(&tls.url, Some(sha256_pin(&der)), Some(&cert_file)));
    assert!(m.home_ok("snapshots", &[]).contains(&snap.trim()[..12]));
    assert!(!tls.requests("/v1/home/").is_empty());
}

#[test]
fn home_refuses_a_server_whose_certificate_matches_neither_pin_nor_ca_file() {
    let t = scratch();
    let dir = t.path();
    let repo = repo(dir);
    let (tls, _, der) = tls_server(dir, &repo, "127.0.0.1");
    let m = HomeMachine::new(dir, &repo, "lt-1");
    let home = m.dir.join("home/alice");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("notes.txt"), "never sent\n").unwrap();
    m.point_at(&tls_entry(&tls.url, Some(sha256_pin(&der)), None));
    m.home_ok("init", &[]);
    m.home_ok("backup", &[s(&home)]);
    let sent = tls.requests("/v1/home/").len();
    let before = files(&m.dir.join("state"));
    assert!(!before.is_empty(), "the backup left its record and cache");
    std::fs::write(home.join("new.txt"), "would be new\n").unwrap();

    // Another certificate's pin, and a CA that did not sign the server's
    // certificate (a self-signed one for the same name), then a mirror
    // behind it: each refused with one line naming the server and the pin
    // or CA file; no request reaches the server (so no token either), the
    // mirror is never asked, nothing changes here.
    let other = self_signed("127.0.0.1");
    let other_ca = dir.join("other-ca.pem");
    std::fs::write(&other_ca, &other.0).unwrap();
    let mirror = Server::start(&["--repo", s(&repo)]);
    let cases = [
        (
            "pin",
            tls_entry(&tls.url, Some(sha256_pin(&other.2)), None),
            format!(
                "its certificate is sha256:{}, which is not AGENT.toml's pin sha256:{}",
                hex::encode(sha256_pin(&der)),
                hex::encode(sha256_pin(&other.2))
            ),
        ),
        (
            "ca_file",
            format!(
                "{}, {}",
                tls_entry(&tls.url, None, Some(&other_ca)),
                crate::support::token_server(&mirror.url)
            ),
            format!("checked against AGENT.toml's ca_file {}", s(&other_ca)),
        ),
    ];
    for (what, servers, expected) in cases {
        m.point_at(&servers);
        let target = m.dir.join(format!("restored-{what}"));
        for (cmd, rest) in [
            ("backup", vec![s(&home)]),
            ("restore", vec!["--target", s(&target), "latest"]),
            ("snapshots", vec![]),
        ] {
            let e = m.home_err(cmd, &rest);
            assert!(
                e.contains(&format!("{}: TLS failed", tls.url)) && e.contains(&expected),
                "{what}, {cmd}: {e}"
            );
            assert!(e.contains("no other server was tried") && !e.contains("offline"), "{e}");
        }
        assert!(!target.exists(), "{what}: restore wrote nothing");
    }
    assert_eq!(tls.requests("/v1/home/").len(), sent, "no request reached the server");
    assert!(mirror.requests("/v1/home/").is_empty(), "no failover");
    assert_eq!(files(&m.dir.join("state")), before, "nothing changed locally");
}

#[test]
fn home_sends_the_token_over_plain_http_only_where_agent_toml_allows_it() {
    let t = scratch();
    let dir = t.path();
    let repo = dir.join("repo");
    slate_ok(&["init", "--repo", s(&repo)]);
    let m = HomeMachine::new(dir, &repo, "lt-1");
    let no_repo = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string();
    let plain = Recorder::start(no_repo.clone());
    // A bare http URL: not allowed the token, so not used by home at all.
    m.point_at(&format!("{:?}", plain.url));
    let e = m.home_err("snapshots", &[]);
    assert!(
        e.contains("no server may receive the machine token") && e.contains("token_over_http"),
        "{e}"
    );
    // Beside an https server: home goes there only, never to the plain one.
    m.point_at(&format!("{:?}, \"https://127.0.0.1:9\"", plain.url));
    let e = m.home_err("snapshots", &[]);
    assert!(e.contains("https://127.0.0.1:9"), "{e}");
    assert!(plain.heads().is_empty(), "{:?}", plain.heads());
    // token = true without token_over_http: AGENT.toml is refused.
    m.point_at(&format!("{{ url = {:?}, token = true }}", plain.url));
    let e = m.home_err("snapshots", &[]);
    assert!(e.contains("token_over_http = true"), "{e}");
    assert!(plain.heads().is_empty());
    // Allowed twice: the token goes, and only in the request it was meant for.
    m.point_at(&crate::support::token_server(&plain.url));
    let e = m.home_err("snapshots", &[]);
    assert!(e.contains("no backup repository"), "{e}");
    let heads = plain.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(
        heads[0].to_lowercase().contains("authorization: bearer slate1-"),
        "{}",
        heads[0]
    );
}

/// Send `head`, then a body of `len` bytes in pieces of `piece` bytes
/// every `every`, until the server closes the connection; returns what it
/// answered and when it closed (None: still open after `give_up`).
fn slow_body(
    addr: &str,
    head: String,
    len: usize,
    piece: usize,
    every: Duration,
    give_up: Duration,
) -> (String, Option<Duration>) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(head.as_bytes()).unwrap();
    c.set_read_timeout(Some(every)).unwrap();
    let start = Instant::now();
    let mut answer = Vec::new();
    let mut sent = 0;
    while start.elapsed() < give_up {
        if sent < len {
            // A failed write: the server is gone; read what it said.
            if c.write_all(&vec![b'{'; piece.min(len - sent)]).is_ok() {
                sent += piece;
            }
        }
        let mut b = [0u8; 4096];
        match c.read(&mut b) {
            Ok(0) => return (String::from_utf8_lossy(&answer).into_owned(), Some(start.elapsed())),
            Ok(n) => answer.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (String::from_utf8_lossy(&answer).into_owned(), Some(start.elapsed()))
            }
            Err(_) => {}
        }
    }
    (String::from_utf8_lossy(&answer).into_owned(), None)
}

#[test]
fn slow_request_bodies_are_cut_off_and_do_not_starve_other_clients() {
    let t = scratch();
    let repo = repo(t.path());
    let token_file = enroll(&repo, "m1", t.path());
    let token = std::fs::read_to_string(&token_file).unwrap().trim().to_string();
    let server = Server::start(&[
        "--repo",
        s(&repo),
        "--header-timeout",
        "4",
        "--min-upload-rate",
        "4096",
        "--body-timeout",
        "8",
    ]);
    let addr = server.url.strip_prefix("http://").unwrap().to_string();
    let head = |method: &str, path: &str, len: usize| {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
        )
    };
    // The attacker, with a machine's token, sends every kind of body a
    // byte a second: a state blob, a home object, a report, an assignment
    // request. Another sends 10 KiB a second, over the rate but for longer
    // than --body-timeout allows.
    let home_path = format!("/v1/home/{}/data/obj", "ab".repeat(32));
    let slow = [
        head("PUT", "/v1/state/m1/blob", 100_000),
        head("PUT", &home_path, 100_000),
        head("POST", "/v1/fleet/report", 1000),
        head("POST", "/v1/fleet/assignment", 1000),
    ];
    let trickles: Vec<_> = slow
        .into_iter()
        .map(|h| {
            let addr = addr.clone();
            std::thread::spawn(move || slow_body(&addr, h, 1000, 1, Duration::from_secs(1), Duration::from_secs(30)))
        })
        .collect();
    let steady = {
        let (addr, h) = (addr.clone(), head("PUT", "/v1/state/m1/steady", 1 << 20));
        std::thread::spawn(move || {
            slow_body(
                &addr,
                h,
                1 << 20,
                1024,
                Duration::from_millis(100),
                Duration::from_secs(30),
            )
        })
    };
    // Meanwhile an ordinary client uploads and reads, while every slow
    // body is still held open.
    let start = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let c = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let r = c
        .put(format!("{}/v1/state/m1/normal", server.url))
        .bearer_auth(&token)
        .body(vec![7u8; 256 << 10])
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(c.get(format!("{}/v1/packs", server.url)).send().unwrap().status(), 200);
    let served = start.elapsed();

    for (i, th) in trickles.into_iter().enumerate() {
        let (answer, closed) = th.join().unwrap();
        let closed = closed.unwrap_or_else(|| panic!("slow body {i} still open after 30 s: {answer}"));
        assert!(
            served < closed,
            "the ordinary client waited {served:?}, past the cut ({closed:?})"
        );
        // 4 s of grace (--header-timeout), then a byte a second is far
        // under 4096 bytes a second.
        assert!(closed < Duration::from_secs(8), "slow body {i} cut after {closed:?}");
        assert!(answer.starts_with("HTTP/1.1 408"), "slow body {i}: {answer}");
        assert!(answer.contains("--min-upload-rate"), "slow body {i}: {answer}");
    }
    let (answer, closed) = steady.join().unwrap();
    let closed = closed.expect("the long upload is cut");
    assert!(
        closed >= Duration::from_secs(7) && closed < Duration::from_secs(12),
        "{closed:?}"
    );
    assert!(
        answer.starts_with("HTTP/1.1 408") && answer.contains("--body-timeout"),
        "{answer}"
    );
    // Nothing of the cut bodies was stored; the server still answers.
    let r = c
        .get(format!("{}/v1/state/m1/", server.url))
        .bearer_auth(&token)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        r.contains("\"normal\"") && !r.contains("\"blob\"") && !r.contains("steady"),
        "{r}"
    );
}

/// `slate fleet status` checks the server's certificate as the agent does
/// (slate-net): with the right pin the administrator token goes through;
/// with another certificate it is one error line and the token is never
/// sent; a pin for a plain-http server is refused before anything is sent.
#[test]
fn fleet_status_checks_the_pin_before_sending_the_administrator_token() {
    let dir = scratch();
    let repo = repo(dir.path());
    let admin = crate::support::admin_token(dir.path());
    let (cert, key, der) = self_signed("127.0.0.1");
    let (cf, kf) = (dir.path().join("fs.pem"), dir.path().join("fs.key"));
    std::fs::write(&cf, cert).unwrap();
    std::fs::write(&kf, key).unwrap();
    let server = Server::start(&[
        "--repo",
        s(&repo),
        "--tls-cert",
        s(&cf),
        "--tls-key",
        s(&kf),
        "--admin-token-file",
        s(&admin),
    ]);
    let pin = format!("sha256:{}", hex::encode(sha256_pin(&der)));
    let out = slate_ok(&[
        "fleet",
        "status",
        "--json",
        "--server",
        &server.url,
        "--token-file",
        s(&admin),
        "--pin",
        &pin,
    ]);
    assert!(out.contains("\"machines\""), "{out}");
    let served = server.requests("/v1/fleet/machines").len();
    let wrong = format!("sha256:{}", "00".repeat(32));
    let out = slate(&[
        "fleet",
        "status",
        "--server",
        &server.url,
        "--token-file",
        s(&admin),
        "--pin",
        &wrong,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("TLS failed") && err.contains("token was not sent"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(
        server.requests("/v1/fleet/machines").len(),
        served,
        "no request got through"
    );
    let out = slate(&["fleet", "status", "--server", "http://127.0.0.1:9", "--pin", &pin]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("apply only to https://"));
}
