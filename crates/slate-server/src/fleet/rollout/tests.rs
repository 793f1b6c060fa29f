//! Rollouts on both stores: the tables ([`super::store`]) and the whole
//! path over a real HTTP socket, 20 machines asking and reporting as
//! agents do, with the server's clock moved by hand.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use slate_repo::commit::{commit, CommitOptions};
use slate_repo::progress::NoProgress;
use slate_repo::{Config, Repo};

use super::store::{Outcome, RolloutRecord, RolloutState, RolloutStore};
use crate::fleet::testdb::{on_both_stores, on_both_stores_async, TestDb};
use crate::fleet::{FleetConfig, TokenStore};
use crate::AppState;

on_both_stores!(records_compare_and_set_and_outcomes_stick);

mod http {
    use super::*;
    on_both_stores_async!(twenty_machines_canaries_halt_resume_abort);
}

fn record(seq: i64, state: RolloutState) -> RolloutRecord {
    RolloutRecord {
        channel: "lab".into(),
        seq,
        previous: "aa".repeat(32),
        head: "bb".repeat(32),
        started: 100,
        state,
        wave: 0,
        wave_started: 100,
        reason: None,
        changed: 100,
        version: 1,
        pin_previous: false,
    }
}

fn records_compare_and_set_and_outcomes_stick(db: &TestDb) {
    let s = db.open();
    assert_eq!(db.version(), 5);
    assert_eq!(s.latest_rollout("lab").unwrap(), None);
    let r1 = record(1, RolloutState::Complete);
    assert!(s.create_rollout(&r1).unwrap());
    assert!(!s.create_rollout(&r1).unwrap(), "another server created it first");
    s.record_outcome("lab", 1, "old", 0, Outcome::Updated, 100).unwrap();
    let mut r2 = record(2, RolloutState::Running);
    r2.pin_previous = true;
    assert!(s.create_rollout(&r2).unwrap());
    assert_eq!(s.latest_rollout("lab").unwrap().as_ref(), Some(&r2));
    let other = RolloutRecord {
        channel: "other".into(),
        ..record(1, RolloutState::Running)
    };
    assert!(s.create_rollout(&other).unwrap());
    assert_eq!(s.latest_rollouts().unwrap(), [r2.clone(), other]);

    // Compare-and-set: of two servers changing version 1, one wins.
    let mut a = r2.clone();
    a.state = RolloutState::Halted;
    a.reason = Some("halted: why".into());
    a.version = 2;
    let mut b = r2.clone();
    b.wave = 1;
    b.version = 2;
    assert!(s.update_rollout(&a).unwrap());
    assert!(!s.update_rollout(&b).unwrap());
    assert_eq!(s.latest_rollout("lab").unwrap(), Some(a.clone()));

    // A failure stays; an excused one no longer counts as one.
    s.record_outcome("lab", 2, "m1", 0, Outcome::Pending, 110).unwrap();
    s.record_outcome("lab", 2, "m1", 0, Outcome::FellBack, 120).unwrap();
    s.record_outcome("lab", 2, "m1", 0, Outcome::Pending, 130).unwrap();
    s.record_outcome("lab", 2, "m2", 0, Outcome::Updated, 130).unwrap();
    s.record_outcome("lab", 2, "m3", 1, Outcome::UpdateFailed, 130).unwrap();
    let counts = s.outcome_counts("lab", 2).unwrap();
    let find = |wave: u32, o: Outcome, excused: bool| {
        counts
            .iter()
            .find(|c| c.wave == wave && c.outcome == o && c.excused == excused)
            .map_or(0, |c| c.machines)
    };
    assert_eq!(find(0, Outcome::FellBack, false), 1, "{counts:?}");
    assert_eq!(find(0, Outcome::Updated, false), 1);
    assert_eq!(find(1, Outcome::UpdateFailed, false), 1);
    assert_eq!(s.excuse_failures("lab", 2).unwrap(), 2);
    assert_eq!(s.excuse_failures("lab", 2).unwrap(), 0);
    let counts = s.outcome_counts("lab", 2).unwrap();
    assert!(
        counts.iter().all(|c| !c.outcome.is_failure() || c.excused),
        "{counts:?}"
    );
    // The earlier rollout's machines were forgotten when this one began.
    let members = s.members().unwrap();
    let ids: Vec<&str> = members.iter().map(|m| m.machine.as_str()).collect();
    assert_eq!(ids, ["m1", "m2", "m3"]);
    assert_eq!(members[0].outcome, Outcome::FellBack);
    assert!(members[0].excused);
    drop(s);
    // Another connection (another server of a pool) sees the same.
    assert_eq!(db.open().latest_rollout("lab").unwrap(), Some(a));
}

// ---- over HTTP ----------------------------------------------------------

const LAB: &str = "debian/bookworm/lab";
const ADMIN_TOKEN: &str = "slate1-00000000000000000000000000000000000000000000000000000000000000ad";

fn token_of(machine: &str) -> String {
    format!("slate1-{}", blake3::hash(machine.as_bytes()).to_hex())
}

/// Canaries by hostname, then 30% and everyone; soak times of an hour and
/// two, which the test's clock passes at once.
const FLEET: &str = r#"
[default]
channel = "debian/bookworm/lab"

[rollout."debian/bookworm/lab"]
canary = { hostname = "canary-*" }
waves = [{ percent = 30, after = "1h" }, { percent = 100, after = "2h" }]
halt_at = 0.2
min_failures = 3
"#;

fn commit_tree(repo: &Repo, dir: &std::path::Path, n: u32) -> String {
    let tree = dir.join(format!("tree{n}"));
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/hostname"), format!("tree {n}\n")).unwrap();
    let opts = CommitOptions {
        channel: LAB,
        message: format!("commit {n}"),
        sign: None,
        metadata: Vec::new(),
    };
    commit(repo, &tree, &opts, &NoProgress).unwrap().snapshot
}

/// A simulated machine: what the agent sends.
struct Sim {
    id: String,
    hostname: String,
}

impl Sim {
    fn identity(&self) -> Value {
        json!({"id": self.id, "hostname": self.hostname})
    }
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn assign(&self, m: &Sim) -> Value {
        let r = self
            .http
            .post(format!("{}/v1/fleet/assignment", self.base))
            .bearer_auth(token_of(&m.id))
            .json(&json!({"machine": m.identity()}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    async fn report(&self, m: &Sim, body: Value) {
        let mut body = body;
        body["machine"] = m.identity();
        let r = self
            .http
            .post(format!("{}/v1/fleet/report", self.base))
            .bearer_auth(token_of(&m.id))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204, "{:?}", r.text().await);
    }

    async fn admin(&self, action: Option<&str>) -> (u16, Value) {
        let req = match action {
            None => self.http.get(format!("{}/v1/fleet/rollouts", self.base)),
            Some(a) => self
                .http
                .post(format!("{}/v1/fleet/rollouts/{a}", self.base))
                .json(&json!({"channel": LAB})),
        };
        let r = req.bearer_auth(ADMIN_TOKEN).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    /// The rollout's status (`GET /v1/fleet/rollouts`, the one channel).
    async fn status(&self) -> Value {
        let (code, v) = self.admin(None).await;
        assert_eq!(code, 200, "{v}");
        v["rollouts"][0].clone()
    }

    /// Every machine's assigned snapshot.
    async fn snapshots(&self, sims: &[Sim]) -> Vec<String> {
        let mut out = Vec::new();
        for m in sims {
            out.push(self.assign(m).await["snapshot"].as_str().unwrap().to_string());
        }
        out
    }
}

async fn twenty_machines_canaries_halt_resume_abort(db: TestDb) {
    let dir = tempfile::Builder::new()
        .prefix("slate-rollout-test-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let root = dir.path().join("repo");
    let repo = Repo::init(&root, Config::default()).unwrap();
    let v1 = commit_tree(&repo, dir.path(), 1);
    let admin = dir.path().join("admin.token");
    std::fs::write(&admin, format!("{ADMIN_TOKEN}\n")).unwrap();

    // 4 canaries and 16 others.
    let sims: Vec<Sim> = (0..20)
        .map(|i| Sim {
            id: format!("m{i:02}"),
            hostname: if i < 4 {
                format!("canary-{i}")
            } else {
                format!("desk-{i}")
            },
        })
        .collect();
    let store = crate::testpg::off_runtime(|| {
        let s = db.open();
        for m in &sims {
            s.enroll(&m.id, &crate::auth::hash(&token_of(&m.id)), 1, false).unwrap();
        }
        s
    });
    let clock = Arc::new(AtomicU64::new(1_000_000));
    let c2 = clock.clone();
    let st = AppState::new(
        Repo::open(&root).unwrap(),
        FleetConfig::parse(FLEET, "FLEET.toml").unwrap(),
        store,
    )
    .with_admin_tokens(&admin)
    .with_rollout_clock(Arc::new(move || c2.load(Ordering::SeqCst)));
    let listener = crate::server::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::server::serve(listener, crate::app(st), None, async {
        let _ = stopped.await;
    }));
    let c = Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        base: format!("http://{addr}"),
    };

    // The first head is everyone's: nothing to roll out.
    assert!(c.snapshots(&sims).await.iter().all(|s| *s == v1));
    for m in &sims {
        c.report(m, json!({"current": v1, "boot": {"result": "good"}})).await;
    }
    assert!(c.status().await["rollout"]["previous"] == c.status().await["rollout"]["head"]);

    // A new head: the canaries get it, the others keep v1.
    let v2 = tokio::task::spawn_blocking({
        let (root, d) = (root.clone(), dir.path().to_path_buf());
        move || commit_tree(&Repo::open(&root).unwrap(), &d, 2)
    })
    .await
    .unwrap();
    let got = c.snapshots(&sims).await;
    assert_eq!(got[..4], [v2.clone(), v2.clone(), v2.clone(), v2.clone()]);
    assert!(got[4..].iter().all(|s| *s == v1), "{got:?}");
    let a = c.assign(&sims[0]).await;
    assert_eq!(a["rollout"]["wave"], 0);
    assert_eq!(a["rollout"]["released"], true);
    assert_eq!(a["rollout"]["state"], "running");
    let a = c.assign(&sims[10]).await;
    assert_eq!(a["rollout"]["released"], false);
    assert_eq!(a["pinned"], false);

    // One canary comes up on v2, three fall back to v1 (their slot b
    // still holds v2): 3 of 4 is past 20% and at least 3. Two alone
    // would not do (min_failures).
    c.report(&sims[3], json!({"current": v2, "boot": {"result": "good"}}))
        .await;
    for (n, m) in sims[..3].iter().enumerate() {
        let state = c.status().await["rollout"]["state"].clone();
        assert_eq!(state, "running", "after {n} failures");
        c.report(
            m,
            json!({"current": v1, "target": v2, "active_slot": "a", "slots": {"a": v1, "b": v2},
                   "last_update": {"result": "ok"}, "boot": {"result": "fell-back", "slot": "a", "snapshot": v1}}),
        )
        .await;
    }
    let s = c.status().await;
    assert_eq!(s["rollout"]["state"], "halted", "{s}");
    let why = s["rollout"]["reason"].as_str().unwrap();
    assert!(
        why.starts_with("halted: 3 of 4 canary machines fell back to their old slot on ")
            && why.ends_with("(threshold 20%, at least 3 machines)"),
        "{why}"
    );
    assert_eq!(s["waves"][0]["fell_back"], 3);
    assert_eq!(s["waves"][0]["updated"], 1);

    // Halted: hours pass, no wave is released; the others keep v1 and the
    // canaries keep what they were given.
    clock.fetch_add(5 * 3600, Ordering::SeqCst);
    let got = c.snapshots(&sims).await;
    assert!(
        got[..4].iter().all(|s| *s == v2) && got[4..].iter().all(|s| *s == v1),
        "{got:?}"
    );
    assert_eq!(c.status().await["rollout"]["wave"], 0);

    // The machines list shows the rollout and each reporter's part.
    let r = c
        .http
        .get(format!("{}/v1/fleet/machines", c.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let list: Value = r.json().await.unwrap();
    assert_eq!(list["rollouts"][0]["rollout"]["state"], "halted");
    assert_eq!(list["machines"][0]["rollout"]["outcome"], "fell-back");
    assert_eq!(list["machines"][3]["rollout"]["outcome"], "updated");
    assert!(list["machines"][10].get("rollout").is_none());

    // Resume: failures so far excused, wave 1 soaks an hour from now.
    let (code, s) = c.admin(Some("resume")).await;
    assert_eq!(code, 200, "{s}");
    assert_eq!(s["rollout"]["state"], "running");
    assert_eq!(s["waves"][0]["excused"], 3);
    // The fallen-back canaries keep reporting their fall-back: excused.
    for m in &sims[..3] {
        c.report(
            m,
            json!({"current": v1, "target": v2, "last_update": {"result": "failed-before"},
                   "boot": {"result": "fell-back"}}),
        )
        .await;
    }
    assert_eq!(c.status().await["rollout"]["state"], "running");
    let in_wave1: Vec<usize> = {
        clock.fetch_add(3600, Ordering::SeqCst);
        let got = c.snapshots(&sims).await;
        assert!(got[..4].iter().all(|s| *s == v2));
        (4..20).filter(|&i| got[i] == v2).collect()
    };
    let s = c.status().await;
    assert_eq!(s["rollout"]["wave"], 1, "{s}");
    // About 30% of 16: the hash decides, the same on every request.
    assert!(in_wave1.len() <= 12, "{in_wave1:?}");
    for &i in &in_wave1 {
        assert_eq!(c.assign(&sims[i]).await["rollout"]["wave"], 1);
    }
    clock.fetch_add(2 * 3600, Ordering::SeqCst);
    assert!(c.snapshots(&sims).await.iter().all(|s| *s == v2));
    let s = c.status().await;
    assert_eq!(s["rollout"]["state"], "complete", "{s}");

    // Abort: every machine is sent v1 again, pinned (they ran v2).
    let (code, s) = c.admin(Some("abort")).await;
    assert_eq!(code, 200, "{s}");
    assert_eq!(s["rollout"]["state"], "aborted");
    for m in &sims {
        let a = c.assign(m).await;
        assert_eq!(a["snapshot"], v1.as_str());
        assert_eq!(a["pinned"], true);
        assert_eq!(a["rollout"]["state"], "aborted");
    }
    let (code, s) = c.admin(Some("resume")).await;
    assert_eq!(code, 409, "{s}");
    assert!(s["error"].as_str().unwrap().contains("stays aborted"), "{s}");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
    // The record is in the database every server of a pool reads.
    let s = crate::testpg::off_runtime(|| db.open());
    let r = crate::testpg::off_runtime(|| s.latest_rollout(LAB).unwrap().unwrap());
    assert_eq!(
        (r.state, r.previous.as_str(), r.head.as_str()),
        (RolloutState::Aborted, v1.as_str(), v2.as_str())
    );
    crate::testpg::off_runtime(|| drop(s));
}

/// What a rollout adds to an assignment, measured: 10,000 machines of a
/// channel in a rollout, each assigned once (one hash and the cached
/// record per request). docs/BENCHMARKS.md quotes the figure it prints.
#[test]
fn assignments_in_a_rollout_cost_microseconds() {
    let plan = FleetConfig::parse(FLEET, "FLEET.toml").unwrap().rollouts[LAB].clone();
    let store = Arc::new(crate::fleet::SqliteStore::in_memory().unwrap());
    let ro = super::Rollouts::new(store, super::system_clock());
    let (v1, v2) = ("aa".repeat(32), "bb".repeat(32));
    ro.settle(&plan, &v1).unwrap();
    ro.settle(&plan, &v2).unwrap();
    let machines: Vec<crate::fleet::Machine> = (0..10_000)
        .map(|i| crate::fleet::Machine {
            id: format!("host:node-{i}"),
            hostname: Some(format!("node-{i}")),
            ..Default::default()
        })
        .collect();
    let blank = crate::fleet::api::Assignment {
        machine: String::new(),
        channel: LAB.into(),
        snapshot: v2.clone(),
        pinned: false,
        rule: "default".into(),
        state_policy: None,
        state_policy_signatures: None,
        issued_at: None,
        expires_at: None,
        key: None,
        signature: None,
        rollout: None,
        objects_urls: Vec::new(),
        objects_signature: None,
    };
    let started = std::time::Instant::now();
    let mut on_new = 0;
    for m in &machines {
        let mut a = blank.clone();
        ro.apply(&plan, m, &mut a).unwrap();
        on_new += usize::from(a.snapshot == v2);
    }
    let per = started.elapsed() / machines.len() as u32;
    eprintln!("rollout: {per:?} per assignment over 10,000 machines ({on_new} on the new head: canaries only)");
    assert_eq!(on_new, 0, "no canary among node-*, wave 1 not released");
    // The budget is 1 ms; a loaded test machine stays far below it.
    assert!(per < Duration::from_millis(1), "{per:?}");
}
