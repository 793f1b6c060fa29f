//! Machine tokens and state blobs end to end: the real `slate serve` on
//! 127.0.0.1 (port 0, the address read from its "serving" line), machines
//! enrolled with `slate fleet enroll` while it runs, and the agent's
//! `StateClient` (token read from AGENT.toml's token_file) and plain
//! reqwest as clients. A full disk is a real 256 KiB tmpfs (root only),
//! unmounted by a guard even when an assertion fails.

use std::path::{Path, PathBuf};
use std::time::Duration;

use slate_agent::config::Config;
use slate_agent::http::Http;
use slate_agent::serverstate::{PutOutcome, StateClient};

use crate::support::{is_root, on_both_stores, s, scratch, slate, slate_err, slate_ok, FleetDb, Server, Tmpfs};

fn init_repo(dir: &Path) -> PathBuf {
    let repo = dir.join("repo");
    slate_ok(&["init", "--repo", s(&repo)]);
    repo
}

/// `slate fleet enroll MACHINE --repo REPO ARGS`: the token printed on stdout.
fn enroll(repo: &Path, machine: &str, extra: &[&str]) -> String {
    let mut args = vec!["fleet", "enroll", machine, "--repo", s(repo)];
    args.extend_from_slice(extra);
    let out = slate(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stdout.lines().count(), 1, "the token alone: {stdout:?}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("token_file"), "{stderr}");
    let token = stdout.trim().to_string();
    assert!(token.starts_with("slate1-") && token.len() == 71, "{token}");
    token
}

/// An agent configuration for `machine` whose token_file holds `token`.
fn agent_config(dir: &Path, url: &str, machine: &str, token: &str) -> Config {
    let token_file = dir.join(format!("{}.token", machine.replace(':', "_")));
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let text = format!(
        "server = [{}]\ntrust = [\"/nonexistent/key.pub\"]\nstate_dir = {:?}\nmachine_id = {machine:?}\n\
         token_file = {:?}\n\n[slots]\na = \"/nonexistent/a\"\nb = \"/nonexistent/b\"\n",
        crate::support::token_server(url),
        s(&dir.join("agent-state")),
        s(&token_file),
    );
    Config::parse(&text, Path::new("AGENT.toml")).unwrap()
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn status_of(req: reqwest::blocking::RequestBuilder) -> u16 {
    req.send().unwrap().status().as_u16()
}

// Tokens in REPO/fleet.db (no --db) and in PostgreSQL (--db postgres://...
// for the server and for the token commands).
on_both_stores!(enrolled_machines_keep_private_state);

fn enrolled_machines_keep_private_state(db: FleetDb) {
    let dir = scratch();
    let repo = init_repo(dir.path());
    let mut serve = vec!["--repo", s(&repo)];
    serve.extend(db.args());
    let server = Server::start(&serve);
    let (a, b) = ("lab-07", "mac:aa:bb:cc:dd:ee:ff");
    // Enrolled while the server runs: it reads the database per request.
    let token_a = enroll(&repo, a, &db.args());
    let token_b = enroll(&repo, b, &db.args());
    assert_ne!(token_a, token_b);

    let config_a = agent_config(dir.path(), &server.url, a, &token_a);
    let http_a = config_a.http().unwrap();
    let state_a = StateClient::new(&http_a, a).unwrap();
    let keys = b"-----BEGIN OPENSSH PRIVATE KEY-----\nnot really\n".to_vec();
    assert_eq!(state_a.put("ssh-host-keys", &keys, true).unwrap(), PutOutcome::Created);
    assert_eq!(
        state_a.put("ssh-host-keys", b"other", true).unwrap(),
        PutOutcome::AlreadyExists
    );
    assert_eq!(state_a.get("ssh-host-keys").unwrap().unwrap(), keys);
    assert_eq!(
        state_a.put("machine-id", b"1234\n", false).unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        state_a.put("machine-id", b"5678\n", false).unwrap(),
        PutOutcome::Replaced
    );
    assert_eq!(state_a.get("absent").unwrap(), None);
    let list = state_a.list().unwrap();
    let names: Vec<&str> = list.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["machine-id", "ssh-host-keys"]);
    assert_eq!(list[1].size, keys.len() as u64);
    assert_eq!(list[1].blake3, blake3::hash(&keys).to_hex().as_str());

    let config_b = agent_config(dir.path(), &server.url, b, &token_b);
    let http_b = config_b.http().unwrap();
    let state_b = StateClient::new(&http_b, b).unwrap();
    assert_eq!(state_b.put("x", b"bee", false).unwrap(), PutOutcome::Created);

    // A's token on B's state: 403, and the agent says why.
    let c = client();
    let b_url = format!("{}/v1/state/{b}/x", server.url);
    assert_eq!(status_of(c.get(&b_url).bearer_auth(&token_a)), 403);
    assert_eq!(status_of(c.put(&b_url).bearer_auth(&token_a).body("evil")), 403);
    assert_eq!(status_of(c.delete(&b_url).bearer_auth(&token_a)), 403);
    let e = StateClient::new(&http_a, b).unwrap().get("x").unwrap_err().to_string();
    assert!(e.contains("another machine"), "{e}");
    assert_eq!(state_b.get("x").unwrap().unwrap(), b"bee", "B's blob unchanged");

    // No token: 401 with the Bearer challenge; the agent says what to do.
    let resp = c.get(&b_url).send().unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let anonymous = Http::new(std::slice::from_ref(&server.url), 10).unwrap();
    let e = StateClient::new(&anonymous, a).unwrap().list().unwrap_err().to_string();
    assert!(e.contains("slate fleet enroll") && e.contains("token_file"), "{e}");

    // Enrolling again needs --force; the replaced token stops at once.
    let cmd = |verb: &'static str, machine: &'static str| {
        let mut args = vec!["fleet", verb, machine, "--repo", s(&repo)];
        args.extend(db.args());
        args
    };
    let err = slate_err(&cmd("enroll", a));
    assert!(err.contains("already enrolled") && err.contains("--force"), "{err}");
    assert_eq!(
        state_a.get("machine-id").unwrap().unwrap(),
        b"5678\n",
        "old token still valid"
    );
    let mut force = vec!["--force"];
    force.extend(db.args());
    let new_a = enroll(&repo, a, &force);
    assert_eq!(
        status_of(c.get(format!("{}/v1/state/{a}/", server.url)).bearer_auth(&token_a)),
        401
    );
    assert!(state_a.list().is_err());
    let config_a = agent_config(dir.path(), &server.url, a, &new_a);
    let http_a = config_a.http().unwrap();
    let state_a = StateClient::new(&http_a, a).unwrap();
    assert_eq!(
        state_a.get("ssh-host-keys").unwrap().unwrap(),
        keys,
        "state survives a new token"
    );

    // Revoked: 401.
    slate_ok(&cmd("revoke", b));
    assert_eq!(status_of(c.get(&b_url).bearer_auth(&token_b)), 401);
    let err = slate_err(&cmd("revoke", b));
    assert!(err.contains("no token"), "{err}");

    // The token list has machines and times, never tokens.
    let mut tokens = vec!["fleet", "tokens", "--repo", s(&repo)];
    tokens.extend(db.args());
    let listed = slate_ok(&[tokens.as_slice(), &["--json"]].concat());
    let v: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(v["machines"].as_array().unwrap().len(), 1);
    assert_eq!(v["machines"][0]["machine"], a);
    assert!(v["machines"][0]["enrolled"].as_u64().unwrap() > 1_600_000_000);
    let table = slate_ok(&tokens);
    for text in [&listed, &table] {
        assert!(!text.contains("slate1-"), "{text}");
    }
    assert!(table.contains(a), "{table}");
    // The database holds no token either, only its hash.
    assert!(db.holds(&repo, &slate_server::auth::hash(&new_a)));
    assert!(!db.holds(&repo, &new_a));

    // Home objects: any enrolled machine, list empty at first.
    let home = format!("{}/v1/home/{}/data/", server.url, "ab".repeat(32));
    let resp = c.get(&home).bearer_auth(&new_a).send().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.text().unwrap(), r#"{"objects":[]}"#);
    assert_eq!(
        status_of(c.put(format!("{home}obj")).bearer_auth(&new_a).body(vec![9u8; 200_000])),
        201
    );
    let resp = c
        .get(format!("{home}obj"))
        .bearer_auth(&new_a)
        .header("range", "bytes=199990-")
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 206);
    assert_eq!(resp.bytes().unwrap().len(), 10);
    assert_eq!(status_of(c.get(format!("{home}obj")).bearer_auth(&token_b)), 401);

    // Bad invocations are one clear line.
    let err = slate_err(&["fleet", "enroll", "a/b", "--repo", s(&repo)]);
    assert!(err.contains("not a machine name"), "{err}");
    let err = slate_err(&["fleet", "tokens"]);
    assert!(err.contains("--repo"), "{err}");
    drop(server);
}

#[test]
fn a_full_disk_answers_507_and_keeps_the_previous_blob() {
    if !is_root() {
        crate::support::skip("mounting a tmpfs needs root");
        return;
    }
    let dir = scratch();
    let repo = init_repo(dir.path());
    let disk = Tmpfs::mount("256k");
    let server = Server::start(&["--repo", s(&repo), "--state-dir", s(disk.path())]);
    let token = enroll(&repo, "kiosk", &[]);
    let c = client();
    let url = format!("{}/v1/state/kiosk/data", server.url);
    let first: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    assert_eq!(status_of(c.put(&url).bearer_auth(&token).body(first.clone())), 201);

    // 200 KB more does not fit next to the 100 KB on a 256 KiB disk.
    let resp = c.put(&url).bearer_auth(&token).body(vec![1u8; 200_000]).send().unwrap();
    assert_eq!(resp.status().as_u16(), 507);
    let msg = resp.text().unwrap();
    assert!(
        msg.contains("disk is full") && msg.contains("previous version is unchanged"),
        "{msg}"
    );
    let resp = c.get(&url).bearer_auth(&token).send().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        resp.bytes().unwrap()[..] == first[..],
        "the earlier blob reads back intact"
    );

    // No temporary file is left behind, and the space is usable again.
    let machine_dir = disk.path().join("6b696f736b"); // hex of "kiosk"
    let names: Vec<String> = std::fs::read_dir(&machine_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["data"]);
    assert_eq!(status_of(c.put(&url).bearer_auth(&token).body(vec![2u8; 50_000])), 204);
    drop(server);
}
