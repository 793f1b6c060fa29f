//! `slate serve` and `slate fleet status` end to end: the real binary on
//! 127.0.0.1 (port 0; the address is read from its "serving" line), talked
//! to with reqwest and with `slate fleet status`. Every server is owned by
//! a guard that kills and reaps it, so a failing assertion never leaves a
//! process behind.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::support::{on_both_stores, s, scratch, slate, slate_bin, slate_ok, wait_timeout, FleetDb, Server};

/// Run `slate serve ARGS`, which must fail by itself (not serve); returns
/// its output.
fn serve_fails(args: &[&str]) -> Output {
    let mut child = Command::new(slate_bin())
        .arg("serve")
        .args(args)
        .env_remove("SLATE_REPO")
        .env_remove("SLATE_DB")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run slate serve");
    let status = wait_timeout(&mut child, Duration::from_secs(60));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("slate serve {args:?} kept running but should have failed");
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "slate serve {args:?} succeeded");
    out
}

/// The one line of a failed command's stderr.
fn one_line(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
    assert_eq!(err.lines().count(), 1, "one error line expected:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A repository with one commit on `channel`; returns the snapshot id.
fn repo_with_commit(dir: &Path, channel: &str) -> String {
    let repo = dir.join("repo");
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/hostname"), "kiosk\n").unwrap();
    std::fs::write(tree.join("data"), vec![7u8; 100_000]).unwrap();
    slate_ok(&["init", "--repo", s(&repo)]);
    let out = slate_ok(&["commit", "--repo", s(&repo), "--channel", channel, s(&tree)]);
    let id = out.lines().next().unwrap().trim().to_string();
    assert_eq!(id.len(), 64, "{out}");
    id
}

/// Send a raw request line, for paths an URL library would normalise.
fn raw_status(url: &str, path: &str) -> String {
    let addr = url.strip_prefix("http://").unwrap();
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(tcp, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    answer.lines().next().unwrap_or_default().to_string()
}

// With its machines in an SQLite file (--db FILE) and in PostgreSQL
// (--db postgres://...).
on_both_stores!(serve_objects_assignments_and_fleet_status);

fn serve_objects_assignments_and_fleet_status(db: FleetDb) {
    let dir = scratch();
    let id = repo_with_commit(dir.path(), "lab/one");
    let repo = dir.path().join("repo");
    let fleet = dir.path().join("FLEET.toml");
    std::fs::write(
        &fleet,
        format!("[default]\nchannel = \"lab/one\"\n\n[[machine]]\nhostname = \"kiosk-*\"\nchannel = \"lab/one\"\nsnapshot = \"{id}\"\n"),
    )
    .unwrap();
    let db = db.or_file(dir.path().join("machines.db"));
    let admin = crate::support::admin_token(dir.path());
    let mut args = vec![
        "--repo",
        s(&repo),
        "--fleet",
        s(&fleet),
        "--admin-token-file",
        s(&admin),
    ];
    args.extend(db.args());
    let mut server = Server::start(&args);
    let url = server.url.clone();
    let mut enroll = vec!["fleet", "enroll", "dmi:test-1"];
    enroll.extend(db.args());
    let token = slate_ok(&enroll).trim().to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let c = client();

    // Channel and pack list.
    let ch = c.get(format!("{url}/v1/channels/lab/one")).send().unwrap();
    assert_eq!(ch.status(), 200);
    assert_eq!(ch.text().unwrap(), format!("slate-channel-v1\n{id}\n"));
    let packs = c.get(format!("{url}/v1/packs")).send().unwrap().text().unwrap();
    let pack = packs.lines().next().expect("a pack").to_string();
    let on_disk = std::fs::read(repo.join(format!("packs/{}/{pack}.pack", &pack[..2]))).unwrap();

    // A pack, whole and by range.
    let whole = c
        .get(format!("{url}/v1/repo/packs/{}/{pack}.pack", &pack[..2]))
        .send()
        .unwrap();
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.headers()["etag"], format!("\"{pack}\"").as_str());
    assert_eq!(whole.bytes().unwrap(), on_disk);
    let part = c
        .get(format!("{url}/v1/repo/packs/{}/{pack}.pack", &pack[..2]))
        .header("range", "bytes=4-19")
        .send()
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 4-19/{}", on_disk.len()).as_str()
    );
    assert_eq!(part.bytes().unwrap(), on_disk[4..20]);
    let snap = c
        .head(format!("{url}/v1/repo/snapshots/{}/{id}.snap", &id[..2]))
        .send()
        .unwrap();
    assert_eq!(snap.status(), 200);

    // No path escapes the repository (sent raw: URL libraries would
    // resolve the dots before sending).
    for p in [
        "/v1/repo/packs/../config",
        "/v1/repo/../../etc/passwd",
        "/v1/repo/%2e%2e/config",
        "/v1/channels/../config",
    ] {
        assert_eq!(raw_status(&url, p), "HTTP/1.1 404 Not Found", "{p}");
    }

    // Assignment (by the hostname rule, pinned) and a report.
    let machine = serde_json::json!({"id": "dmi:test-1", "hostname": "kiosk-1", "macs": ["52:54:00:00:00:01"]});
    let a: serde_json::Value = c
        .post(format!("{url}/v1/fleet/assignment"))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "machine": machine }))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(a["snapshot"], id.as_str());
    assert_eq!(a["pinned"], true);
    assert_eq!(a["rule"], "hostname kiosk-*");
    let r = c
        .post(format!("{url}/v1/fleet/report"))
        .bearer_auth(&token)
        .json(&serde_json::json!({
            "machine": machine, "current": id, "target": null, "active_slot": "a",
            "slots": {"a": id, "b": null}, "pending": null,
            "last_update": {"result": "up-to-date", "bytes_fetched": 0, "at": 1764115200u64},
            "boot": {"result": "good", "slot": "a", "snapshot": id}, "mode": "ab"
        }))
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
    let bad = c
        .post(format!("{url}/v1/fleet/report"))
        .bearer_auth(&token)
        .body("{oops")
        .send()
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().unwrap().contains("invalid JSON"));

    // The machines table, for people and for scripts.
    let table = slate_ok(&["fleet", "status", "--server", &url, "--token-file", s(&admin)]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    for col in [
        "MACHINE",
        "HOSTNAME",
        "CHANNEL",
        "MODE",
        "CURRENT",
        "TARGET",
        "ACTIVE",
        "LAST-UPDATE",
        "BOOT",
        "WARNINGS",
        "ROLLOUT",
        "LAST-SEEN",
    ] {
        assert!(lines[0].contains(col), "{table}");
    }
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        &row[..11],
        [
            "dmi:test-1",
            "kiosk-1",
            "lab/one",
            "a/b",
            &id[..12],
            "-",
            "a",
            "up-to-date",
            "good",
            "-",
            "-"
        ],
        "{table}"
    );
    assert!(row[11].ends_with('s') && row[12] == "ago", "{table}");
    // A trailing slash, or no scheme at all, works too.
    let bare = slate_ok(&[
        "fleet",
        "status",
        "--server",
        url.strip_prefix("http://").unwrap(),
        "--token-file",
        s(&admin),
    ]);
    assert_eq!(bare.lines().count(), 2, "{bare}");
    let json = slate_ok(&[
        "fleet",
        "status",
        "--server",
        &format!("{url}/"),
        "--json",
        "--token-file",
        s(&admin),
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let m = &v["machines"][0];
    assert_eq!(m["machine"], "dmi:test-1");
    assert_eq!(m["channel"], "lab/one");
    assert_eq!(m["current"], id.as_str());
    assert_eq!(m["slots"]["a"], id.as_str());
    assert_eq!(m["last_update"]["result"], "up-to-date");
    assert_eq!(
        (&m["mode"], &m["cache"]),
        (&serde_json::json!("ab"), &serde_json::Value::Null)
    );
    assert!(db.holds(&repo, "kiosk-1"), "the --db database is used");
    assert!(!repo.join("fleet.db").exists(), "and no other");

    // SIGTERM: a clean exit, and the request log went to stderr.
    let st = server.terminate();
    assert!(st.success(), "exit status {st}");
    let log = server.log.lock().unwrap().clone();
    assert!(log.contains("/v1/fleet/report"), "request logs:\n{log}");
}

#[test]
fn serve_over_tls_without_a_fleet_file() {
    let dir = scratch();
    let id = repo_with_commit(dir.path(), "only");
    let repo = dir.path().join("repo");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();

    let server = Server::start(&[
        "--repo",
        s(&repo),
        "--tls-cert",
        s(&cert_file),
        "--tls-key",
        s(&key_file),
    ]);
    assert!(server.url.starts_with("https://127.0.0.1:"), "{}", server.url);
    let c = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    // Without --fleet, the repository's only channel is everyone's.
    let token = slate_ok(&["fleet", "enroll", "m1", "--repo", s(&repo)])
        .trim()
        .to_string();
    let a: serde_json::Value = c
        .post(format!("{}/v1/fleet/assignment", server.url))
        .bearer_auth(&token)
        .json(&serde_json::json!({"machine": {"id": "m1"}}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(a["channel"], "only");
    assert_eq!(a["snapshot"], id.as_str());
    // Plain HTTP to a TLS port gets nowhere.
    let plain = server.url.replacen("https://", "http://", 1);
    assert!(client().get(format!("{plain}/v1/packs")).send().is_err());
    // The default database is REPO/fleet.db.
    assert!(repo.join("fleet.db").exists());
    drop(server);

    // A key that is not PEM: one line, before serving.
    std::fs::write(&key_file, "garbage").unwrap();
    let out = serve_fails(&[
        "--repo",
        s(&repo),
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        s(&cert_file),
        "--tls-key",
        s(&key_file),
    ]);
    let err = one_line(&out);
    assert!(err.contains("cannot load TLS certificate"), "{err}");
}

#[test]
fn serve_refuses_a_bad_fleet_file_naming_the_line() {
    let dir = scratch();
    repo_with_commit(dir.path(), "lab");
    let repo = dir.path().join("repo");
    let fleet = dir.path().join("FLEET.toml");
    std::fs::write(&fleet, "[default]\nchannel = \"lab\"\nchanel = \"typo\"\n").unwrap();
    let out = serve_fails(&["--repo", s(&repo), "--listen", "127.0.0.1:0", "--fleet", s(&fleet)]);
    let err = one_line(&out);
    assert!(err.contains(&format!("{}: line 3", fleet.display())), "{err}");
    assert!(err.contains("unknown field `chanel`"), "{err}");

    std::fs::write(&fleet, "[[machine]]\nmac = \"not-a-mac\"\nchannel = \"lab\"\n").unwrap();
    let err = one_line(&serve_fails(&[
        "--repo",
        s(&repo),
        "--listen",
        "127.0.0.1:0",
        "--fleet",
        s(&fleet),
    ]));
    assert!(err.contains("line 2") && err.contains("not a MAC address"), "{err}");

    let missing = dir.path().join("nope.toml");
    let err = one_line(&serve_fails(&[
        "--repo",
        s(&repo),
        "--listen",
        "127.0.0.1:0",
        "--fleet",
        s(&missing),
    ]));
    assert!(err.contains("cannot read fleet file"), "{err}");
}

#[test]
fn serve_fails_clearly_on_a_busy_address_or_a_non_repository() {
    let dir = scratch();
    repo_with_commit(dir.path(), "lab");
    let repo = dir.path().join("repo");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let err = one_line(&serve_fails(&["--repo", s(&repo), "--listen", &addr]));
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert!(err.to_lowercase().contains("address already in use"), "{err}");
    drop(busy);

    let not_repo = dir.path().join("tree");
    let err = one_line(&serve_fails(&["--repo", s(&not_repo), "--listen", "127.0.0.1:0"]));
    assert!(err.contains("is not a slate repository"), "{err}");
}

#[test]
fn serve_fails_clearly_on_an_unreachable_postgresql_without_showing_its_password() {
    let dir = scratch();
    let repo = dir.path().join("repo");
    slate_ok(&["init", "--repo", s(&repo)]);
    // Port 1 on 127.0.0.1: nothing listens, the connection is refused.
    let out = serve_fails(&[
        "--repo",
        s(&repo),
        "--listen",
        "127.0.0.1:0",
        "--db",
        "postgres://slate:hunter2@127.0.0.1:1/fleet",
    ]);
    // (After the warning that the empty repository has no channel.)
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.matches("slate: error:").count(), 1, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("slate: error: fleet database postgres://slate:***@127.0.0.1:1/fleet: connecting: "),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    let out = serve_fails(&[
        "--repo",
        s(&repo),
        "--listen",
        "127.0.0.1:0",
        "--db",
        "postgres://slate@127.0.0.1:1/fleet?sslmode=require",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("slate: error:") && err.contains("without TLS"), "{err}");
}

#[test]
fn fleet_status_reports_an_unreachable_server() {
    // A port nobody listens on: bind one, note it, let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = slate(&["fleet", "status", "--server", &format!("http://127.0.0.1:{port}")]);
    assert_eq!(out.status.code(), Some(1));
    let err = one_line(&out);
    assert!(err.contains("cannot reach the slate server"), "{err}");
    assert!(out.stdout.is_empty());
}
