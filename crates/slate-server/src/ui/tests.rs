//! The dashboard through the router (`tower::ServiceExt::oneshot`): who
//! gets in, what the pages show (hostile strings escaped), and how long
//! the pages take with 10,000 machines in an SQLite file.

use std::time::Instant;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use slate_repo::commit::{commit, CommitOptions};
use slate_repo::progress::NoProgress;
use slate_repo::{Config, Repo};
use tower::ServiceExt;

use crate::fleet::view::AssignedRecord;
use crate::fleet::{FleetConfig, FleetStore, ReportRecord, SqliteStore};
use crate::{app, AppState};

const ADMIN: &str = "slate1-00000000000000000000000000000000000000000000000000000000000000ad";

struct Fixture {
    dir: tempfile::TempDir,
    head: String,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("slate-ui-test-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let repo = Repo::init(&dir.path().join("repo"), Config::default()).unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/hostname"), "lab\n").unwrap();
        let opts = CommitOptions {
            channel: "lab",
            message: "first <b>commit</b>".into(),
            sign: None,
            metadata: Vec::new(),
        };
        let head = commit(&repo, &tree, &opts, &NoProgress).unwrap().snapshot;
        std::fs::write(dir.path().join("admin.token"), format!("{ADMIN}\n")).unwrap();
        Fixture { dir, head }
    }

    fn state(&self, store: SqliteStore) -> AppState {
        let repo = Repo::open(&self.dir.path().join("repo")).unwrap();
        let fleet = FleetConfig::parse("[default]\nchannel = \"lab\"\n", "FLEET.toml").unwrap();
        AppState::new(repo, fleet, store).with_admin_tokens(&self.dir.path().join("admin.token"))
    }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, h: header::HeaderName) -> String {
        self.headers
            .get(h)
            .map_or(String::new(), |v| v.to_str().unwrap().to_string())
    }
}

async fn send(app: &Router, req: Request<Body>) -> Answer {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    Answer {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

async fn get_as(app: &Router, uri: &str, auth: &[(&str, &str)]) -> Answer {
    let mut b = Request::get(uri).header(header::HOST, "fleet.test");
    for (k, v) in auth {
        b = b.header(*k, *v);
    }
    send(app, b.body(Body::empty()).unwrap()).await
}

async fn admin_get(app: &Router, uri: &str) -> Answer {
    get_as(app, uri, &[("authorization", &format!("Bearer {ADMIN}"))]).await
}

async fn login(app: &Router, token: &str, origin: Option<&str>) -> Answer {
    let mut b = Request::post("/ui/login")
        .header(header::HOST, "fleet.test")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(o) = origin {
        b = b.header(header::ORIGIN, o);
    }
    send(app, b.body(Body::from(format!("token={token}"))).unwrap()).await
}

fn assigned(channel: &str, rule: &str, snapshot: &str, hostname: &str) -> AssignedRecord {
    AssignedRecord {
        hostname: Some(hostname.into()),
        channel: channel.into(),
        rule: rule.into(),
        snapshot: snapshot.into(),
        labels: serde_json::json!({"room": "<i>b12</i>"}),
    }
}

fn report(machine: &str, current: &str, update: &str, message: &str, boot: &str) -> ReportRecord {
    let last_update = serde_json::json!({"result": update, "message": message});
    let boot = serde_json::json!({"result": boot, "warnings": ["<img src=x>"]});
    ReportRecord {
        machine: machine.into(),
        current: Some(current.into()),
        target: Some(current.into()),
        last_update: last_update.clone(),
        boot: boot.clone(),
        raw: serde_json::json!({"machine": {"id": machine}, "current": current, "last_update": last_update, "boot": boot})
            .to_string(),
        ..Default::default()
    }
}

#[tokio::test]
async fn only_administrators_get_in() {
    let f = Fixture::new();
    let app = app(f.state(SqliteStore::in_memory().unwrap()));
    // No credential: to the login page.
    for page in ["/ui/", "/ui/channels", "/ui/machine/m1"] {
        let a = get_as(&app, page, &[]).await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{page}");
        assert_eq!(a.header(header::LOCATION), "/ui/login");
    }
    let a = get_as(&app, "/ui/login", &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.contains("<label for=\"token\">"), "{}", a.body);
    // A wrong bearer token: 401; a machine-shaped token that is not listed too.
    let other = crate::auth::generate().unwrap();
    let a = get_as(&app, "/ui/", &[("authorization", &format!("Bearer {other}"))]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(admin_get(&app, "/ui/").await.status, StatusCode::OK);

    // Login: a wrong token is refused, a cross-site form too.
    assert_eq!(
        login(&app, &other, Some("http://fleet.test")).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(login(&app, "garbage", None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        login(&app, ADMIN, Some("http://evil.test")).await.status,
        StatusCode::FORBIDDEN
    );
    let a = login(&app, ADMIN, Some("http://fleet.test")).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert_eq!(a.header(header::LOCATION), "/ui/");
    let set = a.header(header::SET_COOKIE);
    for part in ["slate_ui=v1.", "Path=/ui", "HttpOnly", "SameSite=Strict"] {
        assert!(set.contains(part), "{set}");
    }
    assert!(!set.contains("Secure"), "not over https: {set}");
    assert!(!set.contains(&ADMIN[7..]), "the cookie is not the token: {set}");
    let https = login(&app, ADMIN, Some("https://fleet.test")).await;
    assert!(https.header(header::SET_COOKIE).ends_with("; Secure"));
    let cookie = set.split(';').next().unwrap().to_string();
    let a = get_as(&app, "/ui/channels", &[("cookie", &cookie)]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.header(header::CONTENT_SECURITY_POLICY).contains("default-src 'none'"));
    assert_eq!(a.header(header::CACHE_CONTROL), "no-store");
    // A forged cookie gets the login page.
    let forged = format!("{}0", &cookie[..cookie.len() - 1]);
    let forged = if forged == cookie {
        cookie.replace('0', "1")
    } else {
        forged
    };
    assert_eq!(
        get_as(&app, "/ui/", &[("cookie", &forged)]).await.status,
        StatusCode::SEE_OTHER
    );
    // Removing the token from the file ends the session.
    std::fs::write(f.dir.path().join("admin.token"), "# nobody\n").unwrap();
    let a = get_as(&app, "/ui/", &[("cookie", &cookie)]).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert!(a.header(header::SET_COOKIE).contains("Max-Age=0"));
    // Logout clears the cookie.
    let a = send(
        &app,
        Request::post("/ui/logout")
            .header(header::HOST, "fleet.test")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    assert!(a.header(header::SET_COOKIE).contains("Max-Age=0"));
}

#[tokio::test]
async fn pages_show_the_fleet_and_escape_what_machines_say() {
    let f = Fixture::new();
    let store = SqliteStore::in_memory().unwrap();
    let now = crate::ui::session::now();
    let old = "0".repeat(64);
    store
        .record_assigned(
            "m-ok",
            &assigned("lab", "lab rule", &f.head, "<script>alert(1)</script>"),
            now,
        )
        .unwrap();
    store
        .record_report(&report("m-ok", &f.head, "up-to-date", "all <good>", "good"), now)
        .unwrap();
    store
        .record_assigned("m-fell", &assigned("lab", "lab rule", &f.head, "fell"), now)
        .unwrap();
    store
        .record_report(&report("m-fell", &old, "ok", "tried", "fell-back"), now)
        .unwrap();
    let app = app(f.state(store));

    let a = admin_get(&app, "/ui/").await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(!a.body.contains("<script>"), "{}", a.body);
    assert!(a.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(a.body.contains("room=&lt;i&gt;b12&lt;/i&gt;"));
    assert!(
        a.body.contains("data-machine=\"m-fell\" data-state=\"fell-back\""),
        "{}",
        a.body
    );
    assert!(a.body.contains("data-machine=\"m-ok\" data-state=\"up-to-date\""));
    assert!(a.body.contains("2 machines"));
    let a = admin_get(&app, "/ui/?state=fell-back&sort=last_seen&order=desc").await;
    assert!(a.body.contains("data-machine=\"m-fell\""));
    assert!(!a.body.contains("data-machine=\"m-ok\""));
    assert!(a.body.contains("1 machine "));
    // Unknown filter values are ignored, not errors.
    assert_eq!(
        admin_get(&app, "/ui/?state=bogus&sort=x&page=0").await.status,
        StatusCode::OK
    );

    let a = admin_get(&app, "/ui/machine/m-fell").await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.contains("fell back"));
    assert!(a.body.contains("&lt;img src=x&gt;"), "{}", a.body);
    assert!(a.body.contains("tried"));
    assert!(!a.body.contains("<img"));
    assert_eq!(
        admin_get(&app, "/ui/machine/nobody").await.status,
        StatusCode::NOT_FOUND
    );

    let a = admin_get(&app, "/ui/channels").await;
    assert!(a.body.contains("first &lt;b&gt;commit&lt;/b&gt;"), "{}", a.body);
    assert!(a.body.contains(&f.head[..12]));
    assert!(a.body.contains("<a href=\"/ui/?channel=lab\">2</a>"));
    let css = get_as(&app, "/ui/style.css", &[]).await;
    assert_eq!(css.status, StatusCode::OK);
    assert!(css.header(header::CONTENT_TYPE).starts_with("text/css"));
}

/// 10,000 machines in an SQLite file, assigned and reporting through the
/// store; the pages must stay fast. The bound is generous (a loaded CI
/// machine); the figures printed go to docs/BENCHMARKS.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_machines_render_quickly() {
    const N: usize = 10_000;
    let f = Fixture::new();
    let path = f.dir.path().join("fleet.db");
    let store = SqliteStore::open(&path).unwrap();
    let now = crate::ui::session::now();
    let old = "0".repeat(64);
    let t = Instant::now();
    let head = f.head.clone();
    let store = tokio::task::spawn_blocking(move || {
        for i in 0..N {
            let id = format!("m{i:05}");
            let rule = ["lab", "kiosks", "servers"][i % 3];
            store
                .record_assigned(&id, &assigned("lab", rule, &head, &format!("host-{i}")), now - 60)
                .unwrap();
            let (current, update, boot) = match i % 100 {
                0 => (old.as_str(), "ok", "fell-back"),
                1 => (head.as_str(), "error", "good"),
                2 => (old.as_str(), "next-boot", "good"),
                _ => (head.as_str(), "up-to-date", "good"),
            };
            let at = if i % 250 == 3 {
                now - 3 * 86_400
            } else {
                now - (i as u64 % 3600)
            };
            let mut r = report(&id, current, update, "a pass", boot);
            r.raw = r.raw.replace("a pass", &format!("pass {i}"));
            store.record_report(&r, at).unwrap();
        }
        store
    })
    .await
    .unwrap();
    let loaded = t.elapsed();
    let app = app(f.state(store));
    let mut figures = Vec::new();
    for uri in [
        "/ui/",
        "/ui/?state=fell-back",
        "/ui/?group=kiosks&state=up-to-date&sort=last_seen&order=desc&page=20",
        "/ui/?sort=state&per=500",
        "/ui/machine/m05000",
        "/ui/channels",
    ] {
        // The first request warms the page cache; the second is measured.
        admin_get(&app, uri).await;
        let t = Instant::now();
        let a = admin_get(&app, uri).await;
        let took = t.elapsed();
        assert_eq!(a.status, StatusCode::OK, "{uri}");
        assert!(took.as_secs_f64() < 2.0, "{uri} took {took:?}");
        figures.push(format!(
            "{uri}: {:.1} ms ({} bytes)",
            took.as_secs_f64() * 1000.0,
            a.body.len()
        ));
    }
    let a = admin_get(&app, "/ui/?state=fell-back").await;
    assert!(a.body.contains("100 machines"), "1 in 100 fell back");
    println!("loaded {N} machines (assignment + report each) in {loaded:?}");
    for l in figures {
        println!("{l}");
    }
}
