//! Key roles end to end (`docs/format/trust.md`), each test playing the
//! attacker on 127.0.0.1: a proxy between a machine and `slate serve` that
//! rewrites or replays signed assignments, a server that signs with the
//! wrong role's key or not at all, a fleet policy that runs commands with
//! only the fleet key's word for it, a snapshot dated in the future, and a
//! trust document that rotates and revokes release keys.
//!
//! Every refusal must be one clear error, a report that `slate fleet
//! status` shows, and nothing kept or changed on the machine.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::support::{s, scratch, slate, slate_ok, FleetKey, Server};

/// A repository with a release key, a fleet key, one channel `c`
/// assigned to every machine, and a server.
struct Fleet {
    dir: tempfile::TempDir,
    repo: PathBuf,
    release: PathBuf,
    fleet: FleetKey,
    server: Option<Server>,
}

impl Fleet {
    fn new() -> Fleet {
        let dir = scratch();
        let repo = dir.path().join("repo");
        slate_ok(&["init", "--repo", s(&repo)]);
        let release = dir.path().join("release.key");
        slate_ok(&["keygen", "--out", s(&release)]);
        let fleet = FleetKey::in_dir(dir.path());
        std::fs::write(dir.path().join("FLEET.toml"), "[default]\nchannel = \"c\"\n").unwrap();
        Fleet {
            dir,
            repo,
            release,
            fleet,
            server: None,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A small tree whose content is `version`.
    fn tree(&self, version: &str) -> PathBuf {
        let t = self.path().join(format!("tree-{version}"));
        std::fs::create_dir_all(t.join("etc")).unwrap();
        // The directory the tests' state policies name (they are checked
        // against the tree before they are kept).
        std::fs::create_dir_all(t.join("var/log")).unwrap();
        std::fs::write(t.join("etc/version"), format!("{version}\n")).unwrap();
        t
    }

    /// Commit a tree of `version` to channel `c`, signed with `key`.
    fn commit(&self, version: &str, key: &Path) -> String {
        let tree = self.tree(version);
        let out = slate_ok(&[
            "commit",
            "--repo",
            s(&self.repo),
            "--channel",
            "c",
            "--sign",
            s(key),
            "-m",
            version,
            s(&tree),
        ]);
        out.lines().next().unwrap().trim().to_string()
    }

    /// (Re)start the server with `extra` arguments; returns its URL.
    fn serve(&mut self, extra: &[&str]) -> String {
        self.server = None;
        let fleet_file = self.path().join("FLEET.toml");
        let admin = crate::support::admin_token(self.path());
        let mut args = vec![
            "--repo",
            s(&self.repo),
            "--fleet",
            s(&fleet_file),
            "--admin-token-file",
            s(&admin),
        ];
        args.extend(extra);
        let server = Server::start(&args);
        let url = server.url.clone();
        self.server = Some(server);
        url
    }

    /// Serve with the fleet key, as a real deployment does.
    fn serve_signed(&mut self) -> String {
        let key = self.fleet.secret.clone();
        self.serve(&["--fleet-key", s(&key)])
    }

    fn url(&self) -> String {
        self.server.as_ref().unwrap().url.clone()
    }

    /// A machine trusting the release key and the fleet key, talking to `url`.
    fn machine(&self, name: &str, url: &str) -> Machine {
        let dir = self.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let m = Machine {
            name: name.into(),
            dir: dir.clone(),
            config: dir.join("agent.toml"),
            release_pub: PathBuf::from(format!("{}.pub", s(&self.release))),
            fleet: self.fleet.clone(),
            token: crate::support::enroll(&self.repo, name, &dir),
        };
        m.point_at(url);
        m
    }

    /// The machine's row in `slate fleet status --json`.
    fn status_of(&self, name: &str) -> Value {
        let admin = self.path().join("admin.token");
        let out = crate::support::fleet_status(&self.url(), &admin);
        let v: Value = serde_json::from_str(&out).unwrap();
        v["machines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["machine"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not in {out}"))
    }
}

struct Machine {
    name: String,
    dir: PathBuf,
    config: PathBuf,
    release_pub: PathBuf,
    fleet: FleetKey,
    /// The machine's token, from `slate fleet enroll`.
    token: PathBuf,
}

impl Machine {
    fn point_at(&self, url: &str) {
        let text = format!(
            "server = [{}]\ntoken_file = {:?}\ntrust = [{:?}]\n{}state_dir = {:?}\nmachine_id = {:?}\ntimeout_secs = 60\n\
             [slots]\na = {:?}\nb = {:?}\n",
            crate::support::token_server(url),
            s(&self.token),
            s(&self.release_pub),
            self.fleet.agent_toml(),
            s(&self.dir.join("state")),
            self.name,
            s(&self.dir.join("slot-a")),
            s(&self.dir.join("slot-b")),
        );
        std::fs::write(&self.config, text).unwrap();
    }

    fn update(&self) -> Output {
        slate(&["update", "--json", "--config", s(&self.config)])
    }

    /// `slate update`, which must succeed; its result line.
    fn update_ok(&self) -> Value {
        let out = self.update();
        assert!(
            out.status.success(),
            "slate update failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.contains("\"event\":\"result\""))
            .unwrap_or_else(|| panic!("no result in {stdout}"));
        serde_json::from_str(line).unwrap()
    }

    /// `slate update`, which must fail; its stderr.
    fn update_err(&self) -> String {
        let out = self.update();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "slate update succeeded:\n{err}");
        assert_eq!(
            err.lines().filter(|l| l.starts_with("slate: error")).count(),
            1,
            "one error line: {err}"
        );
        err
    }

    fn state(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.dir.join("state/state.json")).unwrap()).unwrap()
    }

    /// What the slots hold and what boots next: must not change on a refusal.
    fn slots(&self) -> Value {
        let st = self.state();
        serde_json::json!({"a": st["a"], "b": st["b"], "active": st["active"], "pending": st["pending"]})
    }

    fn version_in(&self, slot: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("slot-{slot}/etc/version")))
            .unwrap_or_default()
            .trim()
            .to_string()
    }
}

// ---------------------------------------------------------------------------
// A rewriting proxy.

type Rewrite = Box<dyn Fn(&mut Value) + Send + Sync>;

struct ProxyShared {
    upstream: String,
    rewrite: Mutex<Option<Rewrite>>,
    /// Every assignment answer that passed, as the server sent it.
    seen: Mutex<Vec<Value>>,
    /// When set, answer assignments with this instead of asking the server.
    replay: Mutex<Option<Value>>,
    stop: AtomicBool,
}

/// An HTTP/1.1 proxy on 127.0.0.1 in front of `slate serve`, one request
/// per connection, that can rewrite or replay assignment answers.
struct Proxy {
    url: String,
    shared: Arc<ProxyShared>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        let shared = Arc::new(ProxyShared {
            upstream: upstream
                .strip_prefix("http://")
                .unwrap()
                .trim_end_matches('/')
                .to_string(),
            rewrite: Mutex::new(None),
            seen: Mutex::new(Vec::new()),
            replay: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let sh = shared.clone();
        let accept = std::thread::spawn(move || {
            while !sh.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let sh = sh.clone();
                        std::thread::spawn(move || {
                            let _ = proxy_one(conn, &sh);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Proxy {
            url,
            shared,
            accept: Some(accept),
        }
    }

    fn rewrite(&self, f: impl Fn(&mut Value) + Send + Sync + 'static) {
        *self.shared.rewrite.lock().unwrap() = Some(Box::new(f));
    }

    fn pass_through(&self) {
        *self.shared.rewrite.lock().unwrap() = None;
        *self.shared.replay.lock().unwrap() = None;
    }

    fn replay(&self, v: Value) {
        *self.shared.replay.lock().unwrap() = Some(v);
    }

    fn seen(&self) -> Vec<Value> {
        self.shared.seen.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Read one HTTP message head and its Content-Length body.
fn read_message(r: &mut BufReader<TcpStream>) -> std::io::Result<(String, Vec<u8>)> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            break;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok((head, body))
}

fn without_header(head: &str, name: &str) -> String {
    head.split("\r\n")
        .filter(|l| !l.split_once(':').is_some_and(|(k, _)| k.eq_ignore_ascii_case(name)))
        .collect::<Vec<_>>()
        .join("\r\n")
}

fn proxy_one(client: TcpStream, sh: &ProxyShared) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    client.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    let (head, body) = read_message(&mut reader)?;
    let is_assignment = head.starts_with("POST /v1/fleet/assignment ");
    if is_assignment {
        if let Some(v) = sh.replay.lock().unwrap().clone() {
            let b = serde_json::to_vec(&v).unwrap();
            write!(
                client,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                b.len()
            )?;
            client.write_all(&b)?;
            return Ok(());
        }
    }
    let mut up = TcpStream::connect(&sh.upstream)?;
    up.set_read_timeout(Some(Duration::from_secs(60)))?;
    // Ask for one response and a close, so the answer ends at EOF.
    let head = without_header(head.trim_end_matches("\r\n"), "connection");
    write!(up, "{head}\r\nconnection: close\r\n\r\n")?;
    up.write_all(&body)?;
    if !is_assignment {
        let mut buf = Vec::new();
        up.read_to_end(&mut buf)?;
        client.write_all(&buf)?;
        return Ok(());
    }
    let mut r = BufReader::new(up);
    let (rhead, rbody) = read_message(&mut r)?;
    let mut out = rbody;
    if let Ok(mut v) = serde_json::from_slice::<Value>(&out) {
        sh.seen.lock().unwrap().push(v.clone());
        if let Some(f) = sh.rewrite.lock().unwrap().as_ref() {
            f(&mut v);
            out = serde_json::to_vec(&v).unwrap();
        }
    }
    let rhead = without_header(rhead.trim_end_matches("\r\n"), "content-length");
    let rhead = without_header(&rhead, "connection");
    write!(
        client,
        "{rhead}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        out.len()
    )?;
    client.write_all(&out)?;
    Ok(())
}

/// The assignment the server signs for machine `id`, asked directly with
/// the machine's token (in the file `token`).
fn assignment_for(url: &str, id: &str, token: &Path) -> Value {
    let token = std::fs::read_to_string(token).unwrap();
    let addr = url.strip_prefix("http://").unwrap().trim_end_matches('/');
    let mut c = TcpStream::connect(addr).unwrap();
    let body = serde_json::json!({"machine": {"id": id}}).to_string();
    write!(
        c,
        "POST /v1/fleet/assignment HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         authorization: Bearer {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        token.trim(),
        body.len()
    )
    .unwrap();
    let mut r = BufReader::new(c);
    let (head, body) = read_message(&mut r).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    serde_json::from_slice(&body).unwrap()
}

// ---------------------------------------------------------------------------

/// A proxy that rewrites the snapshot, the pin, the state policy or the
/// machine of a signed assignment, or strips its signature: each time the
/// machine refuses with one line, reports `refused`, keeps no policy and
/// its slots stay as they were.
#[test]
fn rewritten_assignments_are_refused() {
    let mut f = Fleet::new();
    let release = f.release.clone();
    let v1 = f.commit("v1", &release);
    let url = f.serve_signed();
    let m = f.machine("m1", &url);
    assert_eq!(m.update_ok()["result"], "ok");
    assert_eq!(m.version_in("a"), "v1");
    let v2 = f.commit("v2", &release);
    let before = m.slots();

    let proxy = Proxy::start(&url);
    m.point_at(&proxy.url);
    let policy = "[[path]]\npath = \"/etc/motd\"\nstate = \"dynamic\"\ncommand = [\"/bin/sh\", \"-c\", \"id\"]\n";
    let m2 = f.path().join("m2");
    std::fs::create_dir_all(&m2).unwrap();
    let other = assignment_for(&url, "m2", &crate::support::enroll(&f.repo, "m2", &m2));
    let v1c = v1.clone();
    let cases: Vec<(&str, Rewrite, &str)> = vec![
        (
            "snapshot",
            Box::new(move |a: &mut Value| a["snapshot"] = v1c.clone().into()),
            "does not verify",
        ),
        (
            "pin",
            Box::new(|a: &mut Value| a["pinned"] = true.into()),
            "does not verify",
        ),
        (
            "state policy",
            Box::new(move |a: &mut Value| a["state_policy"] = policy.into()),
            "does not verify",
        ),
        (
            "expiry",
            Box::new(|a: &mut Value| a["expires_at"] = (a["expires_at"].as_u64().unwrap() + 86400 * 365).into()),
            "does not verify",
        ),
        (
            "signature stripped",
            Box::new(|a: &mut Value| {
                a.as_object_mut().unwrap().remove("signature");
            }),
            "not signed",
        ),
        (
            "another machine's assignment",
            Box::new(move |a: &mut Value| *a = other.clone()),
            "not this machine",
        ),
    ];
    for (what, rewrite, needle) in cases {
        proxy.rewrite(rewrite);
        let err = m.update_err();
        assert!(err.contains("refusing the assignment"), "{what}: {err}");
        assert!(err.contains(needle), "{what}: {err}");
        assert_eq!(m.slots(), before, "{what}: the slots changed");
        assert_eq!(m.version_in("a"), "v1", "{what}");
        assert!(
            !m.dir.join("state/state-policy.toml").exists(),
            "{what}: a policy was kept"
        );
        assert_eq!(m.state()["last_pass"]["result"], "refused", "{what}");
        let row = f.status_of("m1");
        assert_eq!(row["last_update"]["result"], "refused", "{what}: {row}");
    }

    // The same proxy, honest again: the update goes through.
    proxy.pass_through();
    let r = m.update_ok();
    assert_eq!(r["result"], "ok", "{r}");
    assert_eq!(r["target"], v2.as_str());
}

/// A server that signs with a release key (role confusion) or not at all:
/// refused, however valid the key is for snapshots.
#[test]
fn assignments_need_the_fleet_role() {
    let mut f = Fleet::new();
    let release = f.release.clone();
    f.commit("v1", &release);
    let url = f.serve(&["--fleet-key", s(&release)]);
    let m = f.machine("m1", &url);
    let err = m.update_err();
    assert!(err.contains("does not trust as a fleet key"), "{err}");
    assert!(!m.dir.join("slot-a/etc").exists(), "nothing written");
    assert_eq!(f.status_of("m1")["last_update"]["result"], "refused");

    let url = f.serve(&[]);
    m.point_at(&url);
    let err = m.update_err();
    assert!(err.contains("not signed"), "{err}");
    assert!(err.contains("--fleet-key"), "says what to do: {err}");
    assert!(!m.dir.join("slot-a/etc").exists(), "nothing written");

    // A machine whose AGENT.toml names no fleet key refuses too.
    let url = f.serve_signed();
    m.point_at(&url);
    let text = std::fs::read_to_string(&m.config).unwrap();
    std::fs::write(
        &m.config,
        text.lines()
            .filter(|l| !l.starts_with("fleet_trust"))
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
    )
    .unwrap();
    let err = m.update_err();
    assert!(err.contains("trusts no fleet key"), "{err}");
}

/// A proxy that keeps answering an old signed assignment (a replay) or one
/// that expired (a freeze): the machine changes nothing and reports
/// `stale`, "no fresh assignment since ...", instead of up-to-date.
#[test]
fn replayed_and_expired_assignments_are_stale() {
    let mut f = Fleet::new();
    let release = f.release.clone();
    f.commit("v1", &release);
    let key = f.fleet.secret.clone();
    let url = f.serve(&["--fleet-key", s(&key), "--assignment-ttl", "8s"]);
    let proxy = Proxy::start(&url);
    let m = f.machine("m1", &proxy.url);
    assert_eq!(m.update_ok()["result"], "ok");
    let first = proxy.seen()[0].clone();
    // Issue times have a resolution of one second.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(m.update_ok()["result"], "up-to-date");
    let last_fresh = m.state()["last_fresh_at"].as_u64().unwrap();
    let second = proxy.seen().last().unwrap().clone();
    assert!(second["issued_at"].as_u64() > first["issued_at"].as_u64());

    // A newer snapshot the frozen machine must not hear of.
    f.commit("v2", &release);
    proxy.replay(first);
    let before = m.slots();
    let r = m.update_ok();
    assert_eq!(r["result"], "stale", "{r}");
    let msg = r["message"].as_str().unwrap();
    assert!(msg.starts_with("no fresh assignment since "), "{msg}");
    assert!(msg.contains("replay"), "{msg}");
    assert_eq!(m.slots(), before);
    assert_eq!(m.state()["last_fresh_at"].as_u64().unwrap(), last_fresh);
    assert_eq!(f.status_of("m1")["last_update"]["result"], "stale");

    // The latest genuine answer, replayed until it expires: a freeze.
    proxy.replay(second.clone());
    let expires = second["expires_at"].as_u64().unwrap();
    wait_past(expires);
    let r = m.update_ok();
    assert_eq!(r["result"], "stale", "{r}");
    let msg = r["message"].as_str().unwrap();
    assert!(msg.starts_with("no fresh assignment since "), "{msg}");
    assert!(msg.contains("expired"), "{msg}");
    assert_eq!(m.slots(), before);
    let row = f.status_of("m1");
    assert_eq!(row["last_update"]["result"], "stale");
    assert!(row["last_update"]["message"]
        .as_str()
        .unwrap()
        .contains("no fresh assignment since"));

    // Fresh answers again: v2 goes in.
    proxy.pass_through();
    let r = m.update_ok();
    assert_eq!(r["result"], "ok", "{r}");
    assert_eq!(m.version_in("b"), "v2");
}

/// A snapshot dated ten years ahead installs, and a normal snapshot
/// committed after it still installs; an unpinned older one is still
/// refused.
#[test]
fn a_future_dated_snapshot_does_not_block_later_ones() {
    use slate_core::snapshot::SnapshotSignature;
    let mut f = Fleet::new();
    let release = f.release.clone();
    let v1 = f.commit("v1", &release);
    // Rewrite v1 as a record dated in the future, signed by the release key.
    let repo = slate_repo::Repo::open(&f.repo).unwrap();
    let v1id = slate_core::SnapshotId::from_hex(&v1).unwrap();
    let mut snap = repo.read_snapshot(&v1id).unwrap();
    snap.time_ns += 10 * 365 * 86400 * 1_000_000_000;
    snap.message = "from the future".into();
    snap.parent = Some(v1id);
    let future = repo.write_snapshot(&snap).unwrap();
    let key = slate_core::keys::SecretKey::from_text(&std::fs::read_to_string(&release).unwrap()).unwrap();
    repo.add_signature(&future, SnapshotSignature::sign(&future, &key))
        .unwrap();
    repo.set_channel_history("c", &[v1id, future]).unwrap();
    drop(repo);

    let url = f.serve_signed();
    let m = f.machine("m1", &url);
    let r = m.update_ok();
    assert_eq!(r["result"], "ok");
    assert_eq!(r["target"], future.to_hex().as_str());

    let v3 = f.commit("v3", &release);
    let r = m.update_ok();
    assert_eq!(r["result"], "ok", "{r}");
    assert_eq!(r["target"], v3.as_str());
    assert_eq!(m.version_in("b"), "v3");

    // Rollback protection still holds for what really is older.
    let repo = slate_repo::Repo::open(&f.repo).unwrap();
    repo.set_channel_history("c", &[v1id]).unwrap();
    let err = m.update_err();
    assert!(
        err.contains("older than a snapshot this machine already accepted"),
        "{err}"
    );
}

/// A fleet state policy with a `command` (code run as root at boot)
/// signed only by the fleet key is refused; signed by a release key
/// (`slate policy sign`) it is kept.
#[test]
fn command_policies_need_a_release_signature() {
    let mut f = Fleet::new();
    let release = f.release.clone();
    f.commit("v1", &release);
    let policy = f.path().join("group.toml");
    std::fs::write(
        &policy,
        "[[path]]\npath = \"/etc/motd\"\nstate = \"dynamic\"\ncommand = [\"/bin/echo\", \"hello\"]\n",
    )
    .unwrap();
    std::fs::write(
        f.path().join("FLEET.toml"),
        "[default]\nchannel = \"c\"\nstate_policy = \"group.toml\"\n",
    )
    .unwrap();
    let url = f.serve_signed();
    let m = f.machine("m1", &url);
    let kept = m.dir.join("state/state-policy.toml");

    let err = m.update_err();
    assert!(err.contains("runs commands"), "{err}");
    assert!(!kept.exists());
    assert!(!m.dir.join("slot-a/etc").exists(), "nothing written");

    // Signed by the fleet key as if it were a release key: still refused.
    let fleet_secret = f.fleet.secret.clone();
    slate_ok(&["policy", "sign", "--key", s(&fleet_secret), s(&policy)]);
    f.serve_signed();
    m.point_at(&f.url());
    let err = m.update_err();
    assert!(err.contains("runs commands"), "{err}");
    assert!(!kept.exists());
    assert_eq!(f.status_of("m1")["last_update"]["result"], "refused");

    // Signed by the release key: accepted and kept.
    slate_ok(&["policy", "sign", "--key", s(&release), s(&policy)]);
    let sigs = std::fs::read_to_string(format!("{}.sig", s(&policy))).unwrap();
    assert_eq!(sigs.lines().count(), 2, "{sigs}");
    f.serve_signed();
    m.point_at(&f.url());
    assert_eq!(m.update_ok()["result"], "ok");
    assert_eq!(
        std::fs::read_to_string(&kept).unwrap(),
        std::fs::read_to_string(&policy).unwrap()
    );

    // A policy without commands rides on the fleet signature.
    std::fs::write(&policy, "[[path]]\npath = \"/var/log\"\nstate = \"ram\"\n").unwrap();
    f.serve_signed();
    m.point_at(&f.url());
    assert_eq!(m.update_ok()["result"], "up-to-date");
    assert_eq!(
        std::fs::read_to_string(&kept).unwrap(),
        std::fs::read_to_string(&policy).unwrap()
    );
}

/// Key rotation without touching the machine: a trust document signed by
/// the old release key brings in a new one (a snapshot signed only by the
/// new key is accepted), the next one revokes the old key (a snapshot
/// signed only by it is refused). A forged document is refused.
#[test]
fn release_keys_rotate_and_revoke_by_trust_document() {
    let mut f = Fleet::new();
    let old = f.release.clone();
    let new = f.path().join("new.key");
    slate_ok(&["keygen", "--out", s(&new)]);
    let pubof = |k: &Path| format!("{}.pub", s(k));
    f.commit("v1", &old);
    let url = f.serve_signed();
    let m = f.machine("m1", &url);
    assert_eq!(m.update_ok()["result"], "ok");

    // Version 1: both keys; signed by the old (trusted) and the new.
    let fleet_pub = s(&f.fleet.public).to_string();
    slate_ok(&[
        "trust",
        "sign",
        "--repo",
        s(&f.repo),
        "--version",
        "1",
        "--release",
        &pubof(&old),
        "--release",
        &pubof(&new),
        "--fleet",
        &fleet_pub,
        "--key",
        s(&old),
        "--key",
        s(&new),
    ]);
    f.commit("v2", &new);
    let r = m.update_ok();
    assert_eq!(r["result"], "ok", "{r}");
    assert_eq!(m.version_in("b"), "v2");
    assert!(m.dir.join("state/trust").exists());

    // A forged version 9 signed by a key nobody trusts: refused, reported.
    let evil = f.path().join("evil.key");
    slate_ok(&["keygen", "--out", s(&evil)]);
    let good_doc = std::fs::read(f.repo.join("trust")).unwrap();
    slate_ok(&[
        "trust",
        "sign",
        "--repo",
        s(&f.repo),
        "--version",
        "9",
        "--release",
        &pubof(&evil),
        "--fleet",
        &fleet_pub,
        "--key",
        s(&evil),
    ]);
    let err = m.update_err();
    assert!(err.contains("refusing the trust document"), "{err}");
    assert_eq!(f.status_of("m1")["last_update"]["result"], "refused");
    std::fs::write(f.repo.join("trust"), &good_doc).unwrap();

    // Version 2: the old key revoked, signed by the new one alone.
    slate_ok(&[
        "trust",
        "sign",
        "--repo",
        s(&f.repo),
        "--version",
        "2",
        "--release",
        &pubof(&new),
        "--fleet",
        &fleet_pub,
        "--key",
        s(&new),
    ]);
    f.commit("v3", &old);
    let before = m.slots();
    let err = m.update_err();
    assert!(err.contains("signed only by untrusted keys"), "{err}");
    assert_eq!(m.slots(), before);
    // The machine's AGENT.toml still names only the old key: the document rules.
    assert!(std::fs::read_to_string(&m.config).unwrap().contains("release.key.pub"));

    f.commit("v4", &new);
    let r = m.update_ok();
    assert_eq!(r["result"], "ok", "{r}");
}

// ---------------------------------------------------------------------------
// Mirrors and signed channel heads.

/// A mirror of `f`'s channel `c` in `dir`: `slate pull --fleet-trust`.
fn pull_mirror(f: &Fleet, from: &str, mirror: &Path) -> Output {
    slate(&[
        "pull",
        "--from",
        from,
        "c",
        "--repo",
        s(mirror),
        "--trust",
        &format!("{}.pub", s(&f.release)),
        "--fleet-trust",
        s(&f.fleet.public),
    ])
}

fn pull_mirror_ok(f: &Fleet, from: &str, mirror: &Path) {
    let out = pull_mirror(f, from, mirror);
    assert!(
        out.status.success(),
        "pull failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Machine {
    /// Point at a fleet server that is down and then `mirror` (a `mirror =
    /// true` entry): the machine follows its channel from the mirror.
    fn behind_mirror(&self, mirror: &str) {
        // A port nothing listens on: the fleet server is unreachable.
        let dead = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let text = std::fs::read_to_string(&self.config).unwrap();
        let first = text.lines().next().unwrap();
        let servers = format!(
            "server = [{}, {{ url = {mirror:?}, mirror = true }}]",
            crate::support::token_server(&dead)
        );
        std::fs::write(&self.config, text.replacen(first, &servers, 1)).unwrap();
    }
}

/// Now, in Unix seconds.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Sleep until the clock is past `t` (Unix seconds): something signed to
/// expire at `t` has expired.
fn wait_past(t: u64) {
    while unix_now() <= t {
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A machine whose fleet server is gone follows its channel from a mirror
/// by the head the fleet key signed (the mirror gets no token); when the
/// mirror stops pulling, its head expires and the machine says it is
/// stale instead of "up to date", and changes nothing.
#[test]
fn a_frozen_mirror_is_seen_when_its_signed_head_expires() {
    let mut f = Fleet::new();
    let release = f.release.clone();
    f.commit("v1", &release);
    let key = f.fleet.secret.clone();
    let url = f.serve(&["--fleet-key", s(&key), "--head-ttl", "6s"]);
    let m = f.machine("m1", &url);
    assert_eq!(m.update_ok()["result"], "ok");
    assert_eq!(m.state()["followed"]["channel"], "c");

    let mirror_repo = f.path().join("mirror");
    f.commit("v2", &release);
    pull_mirror_ok(&f, &url, &mirror_repo);
    assert!(mirror_repo.join("heads/c").exists());
    let mirror = Server::start(&["--repo", s(&mirror_repo)]);
    m.behind_mirror(&mirror.url);
    let r = m.update_ok();
    assert_eq!(r["result"], "ok", "{r}");
    assert_eq!(m.version_in("b"), "v2");
    assert!(
        mirror.requests("/v1/heads/c").len() == 1,
        "{:?}",
        mirror.log.lock().unwrap()
    );
    assert!(
        mirror.requests("/v1/fleet/").is_empty(),
        "a mirror is never asked for an assignment"
    );

    // The mirror stops pulling; the origin moves on. Once the head it kept
    // expires, the machine reports the freeze.
    f.commit("v3", &release);
    let head = std::fs::read_to_string(mirror_repo.join("heads/c")).unwrap();
    let expires: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("expires "))
        .unwrap()
        .parse()
        .unwrap();
    wait_past(expires);
    let before = m.slots();
    let r = m.update_ok();
    assert_eq!(r["result"], "stale", "{r}");
    let msg = r["message"].as_str().unwrap();
    assert!(msg.starts_with("no fresh channel head since "), "{msg}");
    assert!(msg.contains("expired"), "{msg}");
    assert_eq!(m.slots(), before);

    // A pull brings a fresh head, and v3 with it.
    pull_mirror_ok(&f, &url, &mirror_repo);
    let r = m.update_ok();
    assert_eq!(r["result"], "ok", "{r}");
    assert!(m.version_in("a") == "v3" || m.version_in("b") == "v3");
}

/// Heads an attacker can produce without the fleet key: one signed by
/// another key, one of another channel, an older one replayed by a
/// rolled-back mirror, and a channel history that does not hold its head.
/// `slate pull` and the agent refuse each, keeping nothing.
#[test]
fn replayed_mismatched_and_foreign_channel_heads_are_refused() {
    let mut f = Fleet::new();
    let release = f.release.clone();
    f.commit("v1", &release);

    // A server signing with a key nobody trusts as a fleet key.
    let evil = f.path().join("evil.key");
    slate_ok(&["keygen", "--out", s(&evil)]);
    let url = f.serve(&["--fleet-key", s(&evil)]);
    let mirror_repo = f.path().join("mirror");
    let out = pull_mirror(&f, &url, &mirror_repo);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("refusing the head of channel c"), "{err}");
    assert!(err.contains("no valid signature by a trusted fleet key"), "{err}");
    assert!(!mirror_repo.join("channels/c").exists(), "nothing kept");

    // Unsigned: a server without a fleet key has no head to give.
    let url = f.serve(&[]);
    let out = pull_mirror(&f, &url, &mirror_repo);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("serves no signed head"));

    // The genuine origin.
    let url = f.serve_signed();
    let m = f.machine("m1", &url);
    assert_eq!(m.update_ok()["result"], "ok");
    pull_mirror_ok(&f, &url, &mirror_repo);
    let old_head = std::fs::read(mirror_repo.join("heads/c")).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    f.commit("v2", &release);
    pull_mirror_ok(&f, &url, &mirror_repo);
    let mirror = Server::start(&["--repo", s(&mirror_repo)]);
    m.behind_mirror(&mirror.url);
    assert_eq!(m.update_ok()["result"], "ok");
    assert_eq!(m.version_in("b"), "v2");

    // The mirror goes back to the head it served before: stale, not taken.
    let new_head = std::fs::read(mirror_repo.join("heads/c")).unwrap();
    std::fs::write(mirror_repo.join("heads/c"), &old_head).unwrap();
    let before = m.slots();
    let r = m.update_ok();
    assert_eq!(r["result"], "stale", "{r}");
    assert!(r["message"].as_str().unwrap().contains("rolled-back"), "{r}");
    assert_eq!(m.slots(), before);
    // And a second mirror pulling from it refuses it too, keeping its own.
    std::fs::write(mirror_repo.join("heads/c"), &new_head).unwrap();
    let second = f.path().join("second");
    pull_mirror_ok(&f, &mirror.url, &second);
    let kept = std::fs::read(second.join("heads/c")).unwrap();
    std::fs::write(mirror_repo.join("heads/c"), &old_head).unwrap();
    let out = pull_mirror(&f, &mirror.url, &second);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("rolled-back"));
    assert_eq!(std::fs::read(second.join("heads/c")).unwrap(), kept);

    // Another channel's genuine head under this channel's name.
    slate_ok(&[
        "commit",
        "--repo",
        s(&f.repo),
        "--channel",
        "d",
        "--sign",
        s(&release),
        s(&f.tree("d1")),
    ]);
    let other = Server::start(&["--repo", s(&f.repo), "--fleet-key", s(&f.fleet.secret)]);
    let d_head = reqwest::blocking::get(format!("{}/v1/heads/d", other.url))
        .unwrap()
        .bytes()
        .unwrap();
    std::fs::write(mirror_repo.join("heads/c"), &d_head).unwrap();
    let err = m.update_err();
    assert!(err.contains("it is the head of channel \"d\""), "{err}");
    assert_eq!(m.slots(), before);
    assert_eq!(m.state()["last_pass"]["result"], "refused");

    // A head whose snapshot is not where the history says: pull refuses.
    std::fs::write(mirror_repo.join("heads/c"), &new_head).unwrap();
    let history = std::fs::read_to_string(mirror_repo.join("channels/c")).unwrap();
    let cut: Vec<&str> = history.lines().collect();
    std::fs::write(
        mirror_repo.join("channels/c"),
        format!("{}\n", cut[..cut.len() - 1].join("\n")),
    )
    .unwrap();
    let third = f.path().join("third");
    let out = pull_mirror(&f, &mirror.url, &third);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not hold the signed head"));
    assert!(!third.join("channels/c").exists());
}

/// A trust document that asks for two release signatures per snapshot:
/// one is refused (clearly, nothing changed), two are accepted.
#[test]
fn snapshots_need_the_trust_documents_threshold_of_release_signatures() {
    let mut f = Fleet::new();
    let first = f.release.clone();
    let second = f.path().join("second.key");
    slate_ok(&["keygen", "--out", s(&second)]);
    f.commit("v1", &first);
    let url = f.serve_signed();
    let m = f.machine("m1", &url);
    assert_eq!(m.update_ok()["result"], "ok");
    let pubof = |k: &Path| format!("{}.pub", s(k));
    slate_ok(&[
        "trust",
        "sign",
        "--repo",
        s(&f.repo),
        "--version",
        "1",
        "--snapshot-threshold",
        "2",
        "--release",
        &pubof(&first),
        "--release",
        &pubof(&second),
        "--fleet",
        s(&f.fleet.public),
        "--key",
        s(&first),
    ]);
    let v2 = f.commit("v2", &first);
    let before = m.slots();
    let err = m.update_err();
    assert!(err.contains("the trust document requires 2"), "{err}");
    assert_eq!(m.slots(), before);
    let row = f.status_of("m1");
    assert!(
        row["last_update"]["message"].as_str().unwrap().contains("requires 2"),
        "{row}"
    );
    // The same key twice is still one signature.
    slate_ok(&["sign", "--repo", s(&f.repo), "--key", s(&first), &v2]);
    assert!(m.update_err().contains("requires 2"));
    slate_ok(&["sign", "--repo", s(&f.repo), "--key", s(&second), &v2]);
    let r = m.update_ok();
    assert_eq!(r["result"], "ok", "{r}");
    assert_eq!(m.version_in("b"), "v2");
}

/// The fleet key is rotated by a trust document alone (the old one revoked
/// after), and a trust document that expires with no newer one in sight
/// freezes the machine as stale, never trusted on.
#[test]
fn fleet_keys_rotate_by_trust_document_and_an_expired_one_is_a_freeze() {
    use slate_core::keys::SecretKey;
    use slate_core::trust::TrustDoc;
    let mut f = Fleet::new();
    let release = f.release.clone();
    f.commit("v1", &release);
    let url = f.serve_signed();
    let m = f.machine("m1", &url);
    assert_eq!(m.update_ok()["result"], "ok");
    let read_secret = |p: &Path| SecretKey::from_text(&std::fs::read_to_string(p).unwrap()).unwrap();
    let release_key = read_secret(&release);
    let old_fleet = read_secret(&f.fleet.secret);
    let new_fleet_path = f.path().join("fleet2.key");
    slate_ok(&["keygen", "--out", s(&new_fleet_path)]);
    let new_fleet = read_secret(&new_fleet_path);
    let doc = |version: u64, expires: u64, fleet: Vec<slate_core::keys::PublicKey>| {
        TrustDoc {
            version,
            expires,
            threshold: 1,
            snapshots: 1,
            release: vec![release_key.public()],
            fleet,
        }
        .to_text(&[&release_key])
    };
    let far = unix_now() + 86400;
    // Both fleet keys; the server still signs with the old one.
    std::fs::write(
        f.repo.join("trust"),
        doc(1, far, vec![old_fleet.public(), new_fleet.public()]),
    )
    .unwrap();
    assert_eq!(m.update_ok()["result"], "up-to-date");
    // The server moves to the new key: the machine follows without a touch.
    m.point_at(&f.serve(&["--fleet-key", s(&new_fleet_path)]));
    f.commit("v2", &release);
    let r = m.update_ok();
    assert_eq!(r["result"], "ok", "{r}");
    // The old key revoked: a server (or thief) still signing with it is refused.
    std::fs::write(f.repo.join("trust"), doc(2, far, vec![new_fleet.public()])).unwrap();
    assert_eq!(m.update_ok()["result"], "up-to-date");
    let old_path = f.fleet.secret.clone();
    m.point_at(&f.serve(&["--fleet-key", s(&old_path)]));
    let err = m.update_err();
    assert!(err.contains("does not trust as a fleet key"), "{err}");
    assert!(std::fs::read_to_string(&m.config).unwrap().contains("fleet.key.pub"));

    // A document that expires in a few seconds, and nothing newer after it.
    m.point_at(&f.serve(&["--fleet-key", s(&new_fleet_path)]));
    let soon = unix_now() + 4;
    std::fs::write(f.repo.join("trust"), doc(3, soon, vec![new_fleet.public()])).unwrap();
    assert_eq!(m.update_ok()["result"], "up-to-date");
    wait_past(soon);
    f.commit("v3", &release);
    let before = m.slots();
    let r = m.update_ok();
    assert_eq!(r["result"], "stale", "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("trust document in use (version 3) expired"),
        "{r}"
    );
    assert_eq!(m.slots(), before);
    assert_eq!(f.status_of("m1")["last_update"]["result"], "stale");
    // A newer document signed by the release key thaws it.
    std::fs::write(f.repo.join("trust"), doc(4, far, vec![new_fleet.public()])).unwrap();
    let r = m.update_ok();
    assert_eq!(r["result"], "ok", "{r}");
    assert!(m.version_in("a") == "v3" || m.version_in("b") == "v3");
}
