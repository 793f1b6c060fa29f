//! FLEET.toml's `[ldap]` against a real OpenLDAP `slapd` (Debian's
//! package), run by the test as a process of its own on a free 127.0.0.1
//! port from a temporary directory, loaded with `slapadd` from
//! dist/ldap/example.ldif and changed with `ldapmodify` while the server
//! runs. Skipped where slapd is not installed, unless SLATE_TESTS_MUST_RUN
//! is set (`make test`), which fails instead.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use slate_repo::commit::{commit, CommitOptions};
use slate_repo::progress::NoProgress;
use slate_repo::{Config, Repo};
use tower::ServiceExt;

use crate::fleet::{FleetConfig, SqliteStore, TokenStore};
use crate::AppState;

const SUFFIX: &str = "dc=example,dc=org";
const ROOT_DN: &str = "cn=admin,dc=example,dc=org";
const ROOT_PW: &str = "not-a-secret";
const SLAPD: &str = "/usr/sbin/slapd";

/// A throwaway slapd; killed (by its pid) and its directory removed on drop.
struct Slapd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    url: String,
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn dist(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist/ldap").join(name)
}

impl Slapd {
    /// slapd with dist/ldap/example.ldif loaded; `None` (skip) without slapd.
    fn start() -> Option<Slapd> {
        let tools = [SLAPD, "/usr/sbin/slapadd", "/usr/bin/ldapmodify"];
        if let Some(missing) = tools.iter().find(|t| !Path::new(t).exists()) {
            assert!(
                std::env::var_os("SLATE_TESTS_MUST_RUN").is_none(),
                "{missing} is not installed (slapd, ldap-utils; scripts/setup.sh installs them) and SLATE_TESTS_MUST_RUN is set"
            );
            eprintln!("skipped: {missing} is not installed (slapd, ldap-utils; scripts/setup.sh installs them)");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("slate-slapd-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("db")).unwrap();
        let conf = format!(
            "include /etc/ldap/schema/core.schema\n\
             include /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/nis.schema\n\
             include {schema}\n\
             pidfile {d}/slapd.pid\n\
             modulepath /usr/lib/ldap\n\
             moduleload back_mdb\n\
             database mdb\n\
             suffix \"{SUFFIX}\"\n\
             rootdn \"{ROOT_DN}\"\n\
             rootpw {ROOT_PW}\n\
             directory {d}/db\n\
             maxsize 10485760\n",
            schema = dist("slate.schema").display(),
            d = d.display()
        );
        std::fs::write(d.join("slapd.conf"), conf).unwrap();
        let out = Command::new("/usr/sbin/slapadd")
            .arg("-f")
            .arg(d.join("slapd.conf"))
            .arg("-l")
            .arg(dist("example.ldif"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "slapadd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A free port: bind one, let it go, give it to slapd.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("ldap://127.0.0.1:{port}");
        // -d 0: in the foreground, so that the child is slapd itself.
        let child = Command::new(SLAPD)
            .arg("-f")
            .arg(d.join("slapd.conf"))
            .arg("-h")
            .arg(format!("{url}/"))
            .args(["-d", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let s = Slapd {
            child: Some(child),
            dir,
            url,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "slapd did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(s)
    }

    fn modify(&self, ldif: &str) {
        let file = self.dir.path().join("change.ldif");
        std::fs::write(&file, ldif).unwrap();
        let out = Command::new("/usr/bin/ldapmodify")
            .args(["-x", "-H", &self.url, "-D", ROOT_DN, "-w", ROOT_PW, "-f"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ldapmodify: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn token_of(machine: &str) -> String {
    format!("slate1-{}", blake3::hash(machine.as_bytes()).to_hex())
}

const LAB: &str = "debian/bookworm/lab";
const TESTING: &str = "debian/bookworm/testing";
const STABLE: &str = "debian/bookworm/stable";
const CANARY: &str = "debian/bookworm/canary";

/// (id, identity) of the machines asking.
fn machines() -> Vec<(&'static str, Value)> {
    vec![
        ("lab-01", json!({"id": "lab-01", "macs": ["52:54:00:00:00:01"]})),
        ("lab-01h", json!({"id": "lab-01h", "hostname": "LAB-01"})),
        (
            "lab-02",
            json!({"id": "lab-02", "dmi_uuid": "4C4C4544-0042-3510-8052-B7C04F4E3132"}),
        ),
        ("kiosk-01", json!({"id": "kiosk-01", "macs": ["52:54:00:00:00:03"]})),
        ("broken-01", json!({"id": "broken-01", "hostname": "broken-01"})),
        ("canary-01", json!({"id": "canary-01", "macs": ["52:54:00:00:00:05"]})),
        ("new-01", json!({"id": "new-01", "macs": ["52:54:00:00:00:06"]})),
    ]
}

/// The channel and rule of `machine`'s assignment, or the status.
async fn assign(app: &Router, id: &str, machine: &Value) -> Result<(String, String), StatusCode> {
    let req = Request::post("/v1/fleet/assignment")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, format!("Bearer {}", token_of(id)))
        .body(Body::from(json!({ "machine": machine }).to_string()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    if status != StatusCode::OK {
        return Err(status);
    }
    let v: Value = serde_json::from_slice(&body).unwrap();
    Ok((
        v["channel"].as_str().unwrap().into(),
        v["rule"].as_str().unwrap().into(),
    ))
}

/// Ask until `id` runs `channel` (the directory is read every second).
async fn until_channel(app: &Router, id: &str, channel: &str) {
    let machine = machines().into_iter().find(|m| m.0 == id).unwrap().1;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let got = assign(app, id, &machine).await;
        if got.as_ref().is_ok_and(|g| g.0 == channel) {
            return;
        }
        assert!(Instant::now() < deadline, "{id} never got {channel}: {got:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_come_from_the_directory_and_follow_its_changes() {
    let Some(mut slapd) = Slapd::start() else { return };
    let dir = tempfile::Builder::new()
        .prefix("slate-ldap-test-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let repo = Repo::init(&dir.path().join("repo"), Config::default()).unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("hostname"), "x\n").unwrap();
    for ch in [LAB, TESTING, STABLE, CANARY] {
        let opts = CommitOptions {
            channel: ch,
            message: "one".into(),
            sign: None,
            metadata: Vec::new(),
        };
        commit(&repo, &tree, &opts, &NoProgress).unwrap();
    }
    std::fs::write(dir.path().join("ldap.password"), format!("{ROOT_PW}\n")).unwrap();
    let fleet_file = dir.path().join("fleet.toml");
    std::fs::write(
        &fleet_file,
        format!(
            "[default]\nchannel = \"{STABLE}\"\n\n\
             [[machine]]\nmac = \"52:54:00:00:00:05\"\nchannel = \"{CANARY}\"\n\n\
             [ldap]\nurl = \"{}\"\nbase = \"ou=machines,{SUFFIX}\"\ngroups_base = \"ou=groups,{SUFFIX}\"\n\
             bind_dn = \"{ROOT_DN}\"\npassword_file = \"ldap.password\"\nrefresh = \"1s\"\n",
            slapd.url
        ),
    )
    .unwrap();
    let fleet = FleetConfig::load(&fleet_file).unwrap();
    let store = SqliteStore::in_memory().unwrap();
    for (id, _) in machines() {
        store.enroll(id, &crate::auth::hash(&token_of(id)), 1, false).unwrap();
    }
    let state = AppState::new(Repo::open(&dir.path().join("repo")).unwrap(), fleet, store);
    let app = crate::app(state.clone());
    let ms = machines();
    let m = |id: &str| ms.iter().find(|x| x.0 == id).unwrap().1.clone();

    // Before the directory is read: the file's rules answer, the others wait (503).
    assert_eq!(assign(&app, "canary-01", &m("canary-01")).await.unwrap().0, CANARY);
    assert_eq!(
        assign(&app, "kiosk-01", &m("kiosk-01")).await,
        Err(StatusCode::SERVICE_UNAVAILABLE)
    );

    crate::fleet::ldap::watch(&state.changes, state.metrics.clone());
    until_channel(&app, "lab-01", LAB).await;
    let (ch, rule) = assign(&app, "lab-01", &m("lab-01")).await.unwrap();
    assert_eq!(
        (ch.as_str(), rule.as_str()),
        (LAB, "ldap cn=lab-01,ou=machines,dc=example,dc=org")
    );
    // The same entry by its host name (cn), case-insensitive.
    assert_eq!(assign(&app, "lab-01h", &m("lab-01h")).await.unwrap().0, LAB);
    // Its own slateChannel wins over its group's.
    assert_eq!(assign(&app, "lab-02", &m("lab-02")).await.unwrap().0, TESTING);
    // In no group and without a channel: [default].
    assert_eq!(
        assign(&app, "kiosk-01", &m("kiosk-01")).await.unwrap(),
        (STABLE.into(), "default".into())
    );
    // A bad entry is skipped (its host name does not match either).
    assert_eq!(assign(&app, "broken-01", &m("broken-01")).await.unwrap().0, STABLE);
    // FLEET.toml's rules come first.
    assert_eq!(assign(&app, "canary-01", &m("canary-01")).await.unwrap().0, CANARY);
    assert_eq!(state.metrics.directory.machines.get(), 3);
    assert_eq!(state.metrics.directory.skipped.get(), 1);
    assert!(state.metrics.directory.last_success.get() > 1_700_000_000);

    // The directory changes while the server runs: lab-01 gets a channel of
    // its own, a new machine joins the lab group.
    slapd.modify(&format!(
        "dn: cn=lab-01,ou=machines,{SUFFIX}\nchangetype: modify\nadd: objectClass\nobjectClass: slateMachine\n-\n\
         add: slateChannel\nslateChannel: {TESTING}\n\n\
         dn: cn=new-01,ou=machines,{SUFFIX}\nchangetype: add\nobjectClass: device\nobjectClass: ieee802Device\n\
         cn: new-01\nmacAddress: 52:54:00:00:00:06\n\n\
         dn: cn=lab,ou=groups,{SUFFIX}\nchangetype: modify\nadd: member\nmember: cn=new-01,ou=machines,{SUFFIX}\n"
    ));
    until_channel(&app, "lab-01", TESTING).await;
    until_channel(&app, "new-01", LAB).await;
    assert_eq!(assign(&app, "lab-01h", &m("lab-01h")).await.unwrap().0, TESTING);

    // The directory goes away: the last good set stays in use.
    slapd.stop();
    let failures = state.metrics.directory.failures.get();
    let deadline = Instant::now() + Duration::from_secs(60);
    while state.metrics.directory.failures.get() == failures {
        assert!(Instant::now() < deadline, "the failed read was not counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(assign(&app, "new-01", &m("new-01")).await.unwrap().0, LAB);
    assert_eq!(assign(&app, "lab-01", &m("lab-01")).await.unwrap().0, TESTING);
    state.changes.close();
}
