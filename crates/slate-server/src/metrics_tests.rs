//! `GET /metrics` on a real socket, read back with a Prometheus text-format
//! parser (`prometheus-parse`): counters move with requests and reports,
//! the machine gauges follow the store, and only an administrator or a
//! listed address may read the page.

use std::time::Duration;

use serde_json::{json, Value};
use slate_repo::commit::{commit, CommitOptions};
use slate_repo::progress::NoProgress;
use slate_repo::{Config, Repo};

use crate::fleet::{FleetConfig, SqliteStore, TokenStore};
use crate::AppState;

const ADMIN: &str = "slate1-00000000000000000000000000000000000000000000000000000000000000ad";
const LAB: &str = "lab";

fn token_of(machine: &str) -> String {
    format!("slate1-{}", blake3::hash(machine.as_bytes()).to_hex())
}

/// A repository with one commit on `lab`, and the state serving it.
struct Fixture {
    dir: tempfile::TempDir,
    snapshot: String,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("slate-metrics-test-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let repo = Repo::init(&dir.path().join("repo"), Config::default()).unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/hostname"), "lab\n").unwrap();
        let opts = CommitOptions {
            channel: LAB,
            message: "one".into(),
            sign: None,
            metadata: Vec::new(),
        };
        let snapshot = commit(&repo, &tree, &opts, &NoProgress).unwrap().snapshot;
        std::fs::write(dir.path().join("admin.token"), format!("{ADMIN}\n")).unwrap();
        Fixture { dir, snapshot }
    }

    fn state(&self) -> AppState {
        let repo = Repo::open(&self.dir.path().join("repo")).unwrap();
        let store = SqliteStore::in_memory().unwrap();
        for m in ["m1", "m2"] {
            store.enroll(m, &crate::auth::hash(&token_of(m)), 1, false).unwrap();
        }
        let fleet = FleetConfig::parse("[default]\nchannel = \"lab\"\n", "FLEET.toml").unwrap();
        AppState::new(repo, fleet, store).with_admin_tokens(&self.dir.path().join("admin.token"))
    }

    /// The first pack of the repository: its URL path and length.
    fn a_pack(&self) -> (String, u64) {
        let packs = self.dir.path().join("repo/packs");
        for fan in std::fs::read_dir(&packs).unwrap() {
            for f in std::fs::read_dir(fan.unwrap().path()).unwrap() {
                let p = f.unwrap().path();
                if p.extension().is_some_and(|e| e == "pack") {
                    let rel = p.strip_prefix(self.dir.path().join("repo")).unwrap();
                    return (format!("/v1/repo/{}", rel.display()), p.metadata().unwrap().len());
                }
            }
        }
        panic!("no pack in the repository");
    }
}

/// A server on 127.0.0.1 for the test's duration (stopped on drop).
struct Running {
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn start(state: AppState) -> Running {
    let listener = crate::server::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(crate::server::serve(listener, crate::app(state), None, async {
        let _ = stopped.await;
    }));
    Running {
        base: format!("http://{addr}"),
        stop: Some(stop),
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Scrape and parse: every sample as `(name, labels, value)`.
async fn scrape(base: &str, token: Option<&str>) -> Result<prometheus_parse::Scrape, reqwest::StatusCode> {
    let mut req = client().get(format!("{base}/metrics"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    if r.status() != 200 {
        return Err(r.status());
    }
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = r.text().await.unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    Ok(prometheus_parse::Scrape::parse(lines).unwrap())
}

/// The value of the sample `name` whose labels include `labels`; 0 when
/// there is none (a counter never moved has no series yet).
fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = s
        .samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
            ref other => panic!("{name}: not a counter or gauge: {other:?}"),
        })
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?}: several series");
    found.first().copied().unwrap_or(0.0)
}

async fn report(base: &str, machine: &str, body: Value) {
    let r = client()
        .post(format!("{base}/v1/fleet/report"))
        .bearer_auth(token_of(machine))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_with_requests_and_reports() {
    let f = Fixture::new();
    let server = start(f.state());
    let base = &server.base;
    let admin = Some(ADMIN);

    // The page needs the administrator token.
    assert_eq!(scrape(base, None).await.unwrap_err(), 401);
    assert_eq!(scrape(base, Some(&token_of("m1"))).await.unwrap_err(), 401);
    let before = scrape(base, admin).await.unwrap();
    let route = [("method", "GET"), ("route", "/v1/channels/*name"), ("status", "200")];
    assert_eq!(value(&before, "slate_http_requests_total", &route), 0.0);
    for s in ["unseen", "failed", "fell-back", "pending", "up-to-date", "unknown"] {
        assert_eq!(value(&before, "slate_machines", &[("state", s)]), 0.0, "{s}");
    }
    let help = before.docs.get("slate_machines").expect("HELP of slate_machines");
    assert!(help.contains("state"), "{help}");

    // Requests: two channel reads, a pack, a path outside the protocol.
    let c = client();
    for _ in 0..2 {
        let r = c.get(format!("{base}/v1/channels/{LAB}")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    let (pack, pack_len) = f.a_pack();
    let got = c
        .get(format!("{base}{pack}"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.len() as u64, pack_len);
    let r = c
        .get(format!("{base}/no/such/{}", "x".repeat(20)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // A machine is assigned and reports a failed pass and a fallen-back boot.
    let r = c
        .post(format!("{base}/v1/fleet/assignment"))
        .bearer_auth(token_of("m1"))
        .body(json!({"machine": {"id": "m1"}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let failing = |at: u64| {
        json!({
            "machine": {"id": "m1"}, "current": f.snapshot, "target": f.snapshot,
            "last_update": {"result": "error", "message": "disk full", "at": at},
            "boot": {"result": "fell-back", "slot": "a", "snapshot": f.snapshot},
        })
    };
    report(base, "m1", failing(1000)).await;
    // The same report again (the agent repeats its last pass and boot): no new event.
    report(base, "m1", failing(1000)).await;
    // m2 is up to date.
    report(
        base,
        "m2",
        json!({"machine": {"id": "m2"}, "current": f.snapshot, "target": f.snapshot,
               "last_update": {"result": "up-to-date", "at": 5}, "boot": {"result": "good"}}),
    )
    .await;

    // The machine gauges are cached: wait them out.
    tokio::time::sleep(crate::metrics::FLEET_CACHE + Duration::from_millis(200)).await;
    let after = scrape(base, admin).await.unwrap();
    assert_eq!(value(&after, "slate_http_requests_total", &route), 2.0);
    assert_eq!(
        value(
            &after,
            "slate_http_requests_total",
            &[("route", "/v1/repo/*path"), ("status", "200")]
        ),
        1.0
    );
    // The raw path never becomes a label.
    assert_eq!(
        value(
            &after,
            "slate_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ),
        1.0
    );
    assert!(after
        .samples
        .iter()
        .all(|s| s.labels.get("route").is_none_or(|r| !r.contains("/no/such"))));
    assert_eq!(
        value(&after, "slate_http_response_bytes_total", &[("kind", "pack")]),
        pack_len as f64
    );
    assert!(value(&after, "slate_http_response_bytes_total", &[("kind", "channel")]) > 0.0);
    assert_eq!(value(&after, "slate_reports_total", &[]), 3.0);
    assert_eq!(
        value(&after, "slate_update_failures_total", &[("result", "error")]),
        1.0
    );
    assert_eq!(
        value(&after, "slate_boot_fallbacks_total", &[("result", "fell-back")]),
        1.0
    );
    assert_eq!(value(&after, "slate_machines", &[("state", "failed")]), 1.0);
    assert_eq!(value(&after, "slate_machines", &[("state", "up-to-date")]), 1.0);
    assert_eq!(value(&after, "slate_machines", &[("state", "pending")]), 0.0);

    // The next failed pass (a new `at`) counts; the boot is the same one.
    report(base, "m1", failing(2000)).await;
    let later = scrape(base, admin).await.unwrap();
    assert_eq!(
        value(&later, "slate_update_failures_total", &[("result", "error")]),
        2.0
    );
    assert_eq!(
        value(&later, "slate_boot_fallbacks_total", &[("result", "fell-back")]),
        1.0
    );
    // Scrapes count themselves too.
    assert!(
        value(
            &later,
            "slate_http_requests_total",
            &[("route", "/metrics"), ("status", "200")]
        ) >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_address_scrapes_without_a_token() {
    let f = Fixture::new();
    let listed = start(f.state().with_metrics_allow(vec!["127.0.0.1".parse().unwrap()]));
    let s = scrape(&listed.base, None).await.unwrap();
    assert!(s.docs.contains_key("slate_machines"), "{:?}", s.docs.keys());
    let other = start(f.state().with_metrics_allow(vec!["192.0.2.7".parse().unwrap()]));
    assert_eq!(scrape(&other.base, None).await.unwrap_err(), 401);
    assert!(scrape(&other.base, Some(ADMIN)).await.is_ok());
    assert!(crate::metrics::parse_allow("::ffff:127.0.0.1").unwrap().is_loopback());
    assert!(crate::metrics::parse_allow("localhost").is_err());
    assert_eq!(
        crate::metrics::route_label("/v1/home/{repo}/{kind}/{name}"),
        "/v1/home/:repo/:kind/:name"
    );
}
