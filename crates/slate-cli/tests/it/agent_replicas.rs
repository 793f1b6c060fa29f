//! Replicas (issue 14): two `slate serve` processes on one PostgreSQL
//! database and one bucket of a real S3 server (moto) are one fleet server.
//! Both answer the same assignment and the same channel, the moment a
//! commit moves the channel too; a machine token enrolled once works on
//! both; a report sent through one is what the other shows. Then a machine
//! whose AGENT.toml lists both updates while the first is killed (SIGKILL,
//! by its pid) in the middle of the download: the same pass completes
//! through the second, the slot is bit for bit the snapshot, and the
//! database holds the pass's report.
//!
//! The replicas share the database, the bucket, the fleet file, the fleet
//! key and the administrator token file, and (standing in for a shared
//! filesystem) one `--state-dir` and `--home-dir`; docs/scale.md,
//! "Replicas", says why each is needed.

use super::*;
use crate::support::{fleet_status, wait_timeout};

/// The channel every machine of the test follows (the fleet's `[default]`).
const CHANNEL: &str = "lab/main";

/// Commit `tree` to [`CHANNEL`] in the lab's bucket, signed; returns its id.
fn commit_main(lab: &Lab, tree: &Path, message: &str) -> String {
    let out = slate_ok_env(
        &[
            "commit",
            "--repo",
            s(&lab.repo),
            "--channel",
            CHANNEL,
            "-m",
            message,
            "--sign",
            s(&lab.key),
            s(tree),
        ],
        &lab.env,
    );
    let id = out.lines().next().unwrap_or_default().trim().to_string();
    assert_eq!(id.len(), 64, "commit prints the snapshot id: {out}");
    id
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// `POST /v1/fleet/assignment` for machine `name` with `token`: the status
/// and the answer.
fn assignment(url: &str, token: &str, name: &str) -> (u16, Value) {
    let r = client()
        .post(format!("{url}/v1/fleet/assignment"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "machine": { "id": name } }))
        .send()
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

/// What an assignment says, without what differs between two signings of
/// the same thing (the issue time, the expiry and the signature).
fn decided(a: &Value) -> Value {
    let mut a = a.clone();
    for k in ["issued_at", "expires_at", "signature"] {
        a.as_object_mut().expect("an assignment object").remove(k);
    }
    a
}

/// The same assignment from both replicas; returns it.
fn same_assignment(a: &Server, b: &Server, token: &str, name: &str) -> Value {
    let (sa, va) = assignment(&a.url, token, name);
    let (sb, vb) = assignment(&b.url, token, name);
    assert_eq!((sa, sb), (200, 200), "the token works on both replicas: {va} {vb}");
    assert_eq!(decided(&va), decided(&vb), "both replicas decide alike");
    assert!(va["signature"].is_string() && vb["signature"].is_string(), "{va} {vb}");
    decided(&va)
}

/// `GET /v1/channels/CHANNEL` from `url`.
fn channel(url: &str) -> String {
    let r = client().get(format!("{url}/v1/channels/{CHANNEL}")).send().unwrap();
    assert_eq!(r.status(), 200, "{url}");
    r.text().unwrap()
}

/// The machine's row as the database holds it: current and target
/// snapshots, the last pass's result, and the latest report's text.
type Row = (Option<String>, Option<String>, Option<String>, Option<String>);

fn machine_row(pg: &slate_server::testpg::PgDatabase, name: &str) -> Row {
    slate_server::testpg::off_runtime(|| {
        let mut c = pg.owner();
        let row = c
            .query_one(
                "SELECT current, target, last_update->>'result', report FROM machines WHERE id = $1",
                &[&name],
            )
            .unwrap_or_else(|e| panic!("machine {name} in the database: {e:?}"));
        (row.get(0), row.get(1), row.get(2), row.get(3))
    })
}

/// The machine's entry in `slate fleet status --json` asked of `url`.
fn status_entry(lab: &Lab, url: &str, name: &str) -> Value {
    let v: Value = serde_json::from_str(&fleet_status(url, &lab.path().join("admin.token"))).unwrap();
    v["machines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["machine"] == name)
        .unwrap_or_else(|| panic!("{name} not in the fleet status of {url}: {v}"))
        .clone()
}

/// The result line of a `slate update --json` run's stdout, if any.
fn result_line(stdout: &str) -> Option<Value> {
    stdout
        .lines()
        .rev()
        .find(|l| l.contains("\"event\":\"result\""))
        .map(|l| serde_json::from_str(l).unwrap())
}

#[test]
fn replicas_answer_alike_and_an_agent_fails_over_when_one_is_killed_mid_update() {
    let Some(s3) = slate_s3::test_server::TestS3::start() else {
        eprintln!("SKIP replicas: moto_server is not installed (scripts/setup.sh installs it)");
        return;
    };
    let Some(pg) = slate_server::testpg::PgDatabase::new() else {
        eprintln!("SKIP replicas: PostgreSQL is not installed (scripts/setup.sh installs it)");
        return;
    };
    let mut lab = Lab::on_s3(s3);
    lab.db = Some(pg.url.clone());
    lab.extra_fleet = format!("[default]\nchannel = \"{CHANNEL}\"\n");
    let t1 = small_tree(&lab.path().join("tree-1"), 1, 256 << 10);
    // Large enough that the download takes several ranges (8 MiB each at
    // most), so that a replica killed at the first one dies mid-download.
    let t2 = small_tree(&lab.path().join("tree-2"), 2, 48 << 20);
    let v1 = commit_main(&lab, &t1, "v1");

    // Two replicas started together: the schema is created once (the
    // migration takes an advisory lock) whichever comes first.
    // The fleet key first: both replicas sign with it, and two starts
    // racing to make it would clash.
    FleetKey::in_dir(lab.path());
    let args = lab.serve_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (mut ra, rb) = std::thread::scope(|sc| {
        let start = || Server::start_signed_env(lab.path(), &args, &lab.env);
        let ha = sc.spawn(start);
        let hb = sc.spawn(start);
        (ha.join().unwrap(), hb.join().unwrap())
    });
    assert_ne!(ra.url, rb.url);

    // One enrollment, in the shared database, is a token both accept; a
    // made-up token neither does.
    let mut m = lab.agent("m", Slots::Dirs);
    let token = std::fs::read_to_string(&m.token_file).unwrap().trim().to_string();
    let a1 = same_assignment(&ra, &rb, &token, "m");
    assert_eq!(
        (a1["snapshot"].as_str(), a1["channel"].as_str()),
        (Some(v1.as_str()), Some(CHANNEL)),
        "{a1}"
    );
    for url in [&ra.url, &rb.url] {
        assert_eq!(assignment(url, &"0".repeat(64), "m").0, 401, "{url}");
    }
    assert_eq!(channel(&ra.url), channel(&rb.url));

    // The first install, through A alone; its report is what B shows.
    m.via(&[&ra.url]);
    let r = m.update();
    assert_eq!(
        (r["result"].as_str(), r["target"].as_str()),
        (Some("ok"), Some(v1.as_str())),
        "{r}"
    );
    Reference::of(&t1).check(&m.slot_path("a"));
    assert!(!ra.requests("/v1/fleet/report").is_empty(), "the report went to A");
    assert!(rb.requests("/v1/fleet/report").is_empty(), "and not to B");
    let seen = status_entry(&lab, &rb.url, "m");
    assert_eq!(seen["current"], v1.as_str(), "{seen}");
    assert_eq!(seen["last_update"]["result"], "ok", "{seen}");
    let through_a = status_entry(&lab, &ra.url, "m");
    for k in ["current", "target", "slots", "last_update", "channel"] {
        assert_eq!(seen[k], through_a[k], "{k}: {seen} {through_a}");
    }

    // A commit while both run: neither keeps a channel in memory, so both
    // answer the new head at once.
    let v2 = commit_main(&lab, &t2, "v2");
    let a2 = same_assignment(&ra, &rb, &token, "m");
    assert_eq!(a2["snapshot"], v2.as_str(), "{a2}");
    assert_eq!(channel(&ra.url), channel(&rb.url));

    // The update, with A first in the machine's list: A is killed as soon
    // as it has begun to send v2's content.
    m.connections = 1;
    m.via(&[&ra.url, &rb.url]);
    let packs_before = ra.requests("/v1/repo/packs/").len();
    let out_file = m.dir.join("update.out");
    let err_file = m.dir.join("update.err");
    let mut pass = Running(
        m.command("update")
            .arg("--json")
            .stdout(std::fs::File::create(&out_file).unwrap())
            .stderr(std::fs::File::create(&err_file).unwrap())
            .spawn()
            .unwrap(),
    );
    let t = Instant::now();
    while ra.requests("/v1/repo/packs/").len() == packs_before {
        if let Some(st) = pass.0.try_wait().unwrap() {
            panic!(
                "the pass ended ({st}) before fetching from A:\n{}",
                std::fs::read_to_string(&err_file).unwrap()
            );
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the pass fetched nothing from A"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = ra.child.id();
    ra.child.kill().unwrap();
    ra.child.wait().unwrap();
    eprintln!(
        "killed replica A (pid {pid}) {:.2} s into the pass, after its first pack request",
        t.elapsed().as_secs_f64()
    );
    let st = wait_timeout(&mut pass.0, Duration::from_secs(180)).expect("the pass ends");
    let stdout = std::fs::read_to_string(&out_file).unwrap();
    let stderr = std::fs::read_to_string(&err_file).unwrap();
    // The pass itself completes: a GET whose connection broke when A died
    // is asked again of B, and every later request goes to B.
    assert!(st.success(), "the pass failed when A died:\n{stderr}");
    let done = result_line(&stdout).expect("a result line");
    eprintln!("the pass completed through B; its warnings: {}", stderr.trim());
    assert_eq!(
        (done["result"].as_str(), done["target"].as_str()),
        (Some("ok"), Some(v2.as_str())),
        "{done}"
    );
    assert!(
        !rb.requests("/v1/repo/packs/").is_empty(),
        "B served the rest of the content"
    );
    Reference::of(&t2).check(&m.slot_path("b"));
    Reference::of(&t1).check(&m.slot_path("a"));
    assert_eq!(m.status()["pending"], "b");

    // Nothing lost: the database holds the report of the pass, which B shows.
    let (current, target, result, report) = machine_row(&pg, "m");
    assert_eq!(
        current.as_deref(),
        Some(v1.as_str()),
        "still running v1 until it boots v2"
    );
    assert_eq!(target.as_deref(), Some(v2.as_str()));
    assert_eq!(result.as_deref(), Some("ok"));
    let report = report.expect("a report");
    assert!(report.contains(&v2), "{report}");
    let seen = status_entry(&lab, &rb.url, "m");
    assert_eq!(
        (&seen["target"], &seen["last_update"]["result"]),
        (&Value::from(v2.as_str()), &Value::from("ok")),
        "{seen}"
    );
}
