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
    while std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        <= expires
    {
        std::thread::sleep(Duration::from_millis(250));
    }
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
