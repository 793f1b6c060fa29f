//! Router tests: a real repository (init + commit of a small tree) served by
//! [`crate::app`] and driven with `tower::ServiceExt::oneshot`, plus the
//! server on a real socket for TLS and graceful shutdown.

use std::path::{Path, PathBuf};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use slate_repo::commit::{commit, CommitOptions};
use slate_repo::progress::NoProgress;
use slate_repo::{Config, Repo};
use tower::ServiceExt;

use crate::fleet::testdb::{on_both_stores_async, TestDb};
use crate::fleet::{FleetConfig, FleetDb, SqliteStore, TokenStore};
use crate::{app, AppState};

const LAB: &str = "debian/bookworm/lab";

/// The machines the fleet tests use, enrolled with [`token_of`] each.
const TEST_MACHINES: &[&str] = &[
    "dmi:4c4c4544",
    "dmi:1234",
    "lone",
    "m",
    "m-default",
    "m-ghost",
    "m-gone",
    "m-host",
    "m-labels",
    "m-mac",
    "m-uuid",
    "m-ab",
    "m-cached",
    "m-diskless",
    "m-newer",
    "m-bad",
];

/// The administrator token of the test servers.
const ADMIN_TOKEN: &str = "slate1-00000000000000000000000000000000000000000000000000000000000000ad";

/// A test machine's token (made up from its name).
fn token_of(machine: &str) -> String {
    format!("slate1-{}", blake3::hash(machine.as_bytes()).to_hex())
}
const OTHER: &str = "other";

/// A repository with two channels, each with one commit of a small tree.
struct Fixture {
    dir: tempfile::TempDir,
    lab: String,
    other: String,
    /// Where its servers keep machines and tokens (all of them the same
    /// database); `None`: each server its own SQLite database in memory.
    db: Option<TestDb>,
}

impl Fixture {
    fn new() -> Fixture {
        Self::with_channels(&[LAB, OTHER])
    }

    /// [`Fixture::new`] whose servers keep machines and tokens in `db`.
    fn on(db: TestDb) -> Fixture {
        Fixture {
            db: Some(db),
            ..Self::new()
        }
    }

    fn with_channels(channels: &[&str]) -> Fixture {
        // /var/tmp, not a tmpfs /tmp: the repository behaves as on a disk.
        let dir = tempfile::Builder::new()
            .prefix("slate-server-test-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let root = dir.path().join("repo");
        let repo = Repo::init(&root, Config::default()).unwrap();
        let mut ids = Vec::new();
        for (n, ch) in channels.iter().enumerate() {
            let tree = dir.path().join(format!("tree{n}"));
            std::fs::create_dir_all(tree.join("etc")).unwrap();
            std::fs::write(tree.join("etc/hostname"), format!("tree {n}\n")).unwrap();
            // Enough incompressible bytes for several chunks in a real pack.
            std::fs::write(tree.join("big"), noise(300_000)).unwrap();
            let opts = CommitOptions {
                channel: ch,
                message: format!("commit {n}"),
                sign: None,
                metadata: Vec::new(),
            };
            ids.push(commit(&repo, &tree, &opts, &NoProgress).unwrap().snapshot);
        }
        let other = ids.get(1).cloned().unwrap_or_default();
        Fixture {
            lab: ids[0].clone(),
            other,
            dir,
            db: None,
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    fn app(&self, fleet: &str) -> Router {
        let fleet = FleetConfig::parse(fleet, "FLEET.toml").unwrap();
        self.app_with(fleet)
    }

    fn app_with(&self, fleet: FleetConfig) -> Router {
        app(self.state_with(fleet))
    }

    /// The state [`Fixture::app_with`] serves, with the test machines enrolled.
    fn state_with(&self, fleet: FleetConfig) -> AppState {
        let repo = Repo::open(&self.root()).unwrap();
        let admin = self.dir.path().join("admin.token");
        std::fs::write(&admin, format!("# the fleet's administrators\n{ADMIN_TOKEN}\n")).unwrap();
        // Off the test's runtime: the PostgreSQL client blocks on one of
        // its own, as it does on the server's blocking threads.
        let store = crate::testpg::off_runtime(|| {
            let store = match &self.db {
                Some(db) => db.open(),
                None => FleetDb::from(SqliteStore::in_memory().unwrap()),
            };
            for m in TEST_MACHINES {
                store.enroll(m, &crate::auth::hash(&token_of(m)), 1, false).unwrap();
            }
            store
        });
        AppState::new(repo, fleet, store).with_admin_tokens(&admin)
    }

    /// The storage key and bytes of the repository's files below `dir`
    /// with extension `ext`.
    fn files(&self, dir: &str, ext: &str) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        walk(&self.root(), &self.root().join(dir), ext, &mut out);
        out.sort();
        out
    }
}

/// `n` bytes that do not compress.
fn noise(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    blake3::Hasher::new().update(b"noise").finalize_xof().fill(&mut b);
    b
}

fn walk(root: &Path, dir: &Path, ext: &str, out: &mut Vec<(String, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(root, &p, ext, out);
        } else if p.extension().is_some_and(|x| x == ext) {
            let key = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
            out.push((key, std::fs::read(&p).unwrap()));
        }
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    fn error(&self) -> String {
        self.json()["error"].as_str().expect("an error message").to_string()
    }
    fn header(&self, name: header::HeaderName) -> &str {
        self.headers.get(&name).map_or("", |v| v.to_str().unwrap())
    }
}

async fn send(app: &Router, req: Request<Body>) -> Answer {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    Answer { status, headers, body }
}

async fn get(app: &Router, uri: &str) -> Answer {
    if uri.starts_with("/v1/fleet/machines") {
        let bearer = format!("Bearer {ADMIN_TOKEN}");
        return get_with(app, uri, &[("authorization", &bearer)]).await;
    }
    get_with(app, uri, &[]).await
}

async fn get_with(app: &Router, uri: &str, headers: &[(&str, &str)]) -> Answer {
    let mut b = Request::get(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(app, b.body(Body::empty()).unwrap()).await
}

/// POST as the machine the body names (as machine `m` when it names none
/// that parses): with its token.
async fn post(app: &Router, uri: &str, body: impl Into<Body>) -> Answer {
    let body: Body = body.into();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let machine = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v["machine"]["id"].as_str().map(str::to_string))
        .filter(|m| TEST_MACHINES.contains(&m.as_str()))
        .unwrap_or_else(|| "m".into());
    post_as(app, uri, Some(&token_of(&machine)), Body::from(bytes)).await
}

async fn post_as(app: &Router, uri: &str, token: Option<&str>, body: impl Into<Body>) -> Answer {
    let mut req = Request::post(uri).header(header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    send(app, req.body(body.into()).unwrap()).await
}

async fn assign(app: &Router, machine: Value) -> Answer {
    post(app, "/v1/fleet/assignment", json!({ "machine": machine }).to_string()).await
}

const DEFAULT_LAB: &str = "[default]\nchannel = \"debian/bookworm/lab\"\n";

#[tokio::test]
async fn objects_are_served_with_cache_headers() {
    let f = Fixture::new();
    let app = f.app(DEFAULT_LAB);
    let packs = f.files("packs", "pack");
    assert!(!packs.is_empty());
    for (key, bytes) in packs
        .iter()
        .chain(&f.files("packs", "idx"))
        .chain(&f.files("snapshots", "snap"))
    {
        let a = get(&app, &format!("/v1/repo/{key}")).await;
        assert_eq!(a.status, StatusCode::OK, "{key}");
        assert_eq!(&a.body[..], &bytes[..], "{key}");
        let id = key.rsplit('/').next().unwrap().split('.').next().unwrap();
        assert_eq!(a.header(header::ETAG), format!("\"{id}\""));
        assert_eq!(a.header(header::CACHE_CONTROL), "public, max-age=31536000, immutable");
        assert_eq!(a.header(header::ACCEPT_RANGES), "bytes");
        assert_eq!(a.header(header::CONTENT_LENGTH), bytes.len().to_string());
        assert_eq!(a.header(header::CONTENT_TYPE), "application/octet-stream");
    }
    // A snapshot record is named by its hash.
    let snap = get(&app, &format!("/v1/repo/snapshots/{}/{}.snap", &f.lab[..2], f.lab)).await;
    assert_eq!(blake3::hash(&snap.body).to_hex().as_str(), f.lab);

    // The pack list names exactly the packs.
    let list = get(&app, "/v1/packs").await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.header(header::CACHE_CONTROL), "no-cache");
    let mut listed: Vec<&str> = std::str::from_utf8(&list.body).unwrap().lines().collect();
    listed.sort();
    let mut expected: Vec<String> = packs
        .iter()
        .map(|(k, _)| k.rsplit('/').next().unwrap().trim_end_matches(".pack").to_string())
        .collect();
    expected.sort();
    assert_eq!(listed, expected);
}

#[tokio::test]
async fn signatures_have_a_short_cache() {
    let f = Fixture::with_channels(&[LAB]);
    let app = f.app(DEFAULT_LAB);
    let uri = format!("/v1/repo/snapshots/{}/{}.sig", &f.lab[..2], f.lab);
    assert_eq!(get(&app, &uri).await.status, StatusCode::NOT_FOUND, "unsigned");

    let repo = Repo::open(&f.root()).unwrap();
    let key = slate_core::keys::SecretKey::generate().unwrap();
    let id = slate_core::SnapshotId::from_hex(&f.lab).unwrap();
    slate_repo::commit::sign(&repo, &id, &key).unwrap();
    let a = get(&app, &uri).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        &a.body[..],
        &std::fs::read(f.root().join(&uri["/v1/repo/".len()..])).unwrap()[..]
    );
    assert_eq!(a.header(header::CACHE_CONTROL), "public, max-age=60");
    let etag = a.header(header::ETAG).to_string();
    let again = get_with(&app, &uri, &[("if-none-match", &etag)]).await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn paths_outside_the_protocol_are_404() {
    let f = Fixture::new();
    // Files that exist but no URL may name.
    std::fs::write(f.root().join("secret"), b"no").unwrap();
    let app = f.app(DEFAULT_LAB);
    let (key, _) = &f.files("packs", "pack")[0];
    let id = key.rsplit('/').next().unwrap().trim_end_matches(".pack");
    let ab = &id[..2];
    let zero = "0".repeat(64);
    let paths = [
        "/v1/repo/config".to_string(),
        "/v1/repo/lock".to_string(),
        "/v1/repo/secret".to_string(),
        "/v1/repo/fleet.db".to_string(),
        "/v1/repo/../config".to_string(),
        "/v1/repo/packs/../config".to_string(),
        format!("/v1/repo/packs/{ab}/../../config"),
        format!("/v1/repo/packs/{ab}/..%2f..%2fconfig"),
        "/v1/repo/%2e%2e/config".to_string(),
        format!("/v1/repo/packs/{ab}/{}.pack", id.to_uppercase()),
        // Upper case in the fan-out directory (the digit after it is forced
        // to a letter so the test does not depend on the id).
        format!("/v1/repo/packs/{}A/{id}.pack", &ab[..1]),
        format!("/v1/repo/packs/{ab}/{}.pack", &id[..63]),
        format!("/v1/repo/packs/{ab}/{id}0.pack"),
        format!("/v1/repo/packs/{}/{id}.pack", if ab == "00" { "01" } else { "00" }),
        format!("/v1/repo/packs/{ab}/{id}.snap"),
        format!("/v1/repo/packs/{ab}/{id}.pack/"),
        format!("/v1/repo/packs/{ab}/%2e%2e"),
        format!("/v1/repo/packs/{ab}/{id}%2epack"),
        format!("/v1/repo/packs/00/{zero}.pack"),
        format!("/v1/repo/deltas/{zero}/{zero}.delta"),
        format!("/v1/repo/tmp/{ab}/{id}.pack"),
        "/v1/repo/".to_string(),
        "/v1/channels/../config".to_string(),
        "/v1/channels/..".to_string(),
        "/v1/channels/.hidden".to_string(),
        "/v1/channels/debian".to_string(),
        "/v1/channels/debian/bookworm/lab/x".to_string(),
        "/v1/channels/nope".to_string(),
        "/v1/channels/debian%2fbookworm%2flab".to_string(),
        "/v1/nothing".to_string(),
        "/config".to_string(),
    ];
    for p in paths {
        let a = get(&app, &p).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{p}");
        assert!(!a.error().is_empty(), "{p}");
        assert_eq!(a.header(header::CONTENT_TYPE), "application/json", "{p}");
    }
}

#[tokio::test]
async fn deltas_are_served_when_prepared() {
    let f = Fixture::new();
    let app = f.app(DEFAULT_LAB);
    let key = format!("deltas/{}/{}.delta", f.other, f.lab);
    let uri = format!("/v1/repo/{key}");
    assert_eq!(get(&app, &uri).await.status, StatusCode::NOT_FOUND);
    std::fs::create_dir_all(f.root().join("deltas").join(&f.other)).unwrap();
    std::fs::write(f.root().join(&key), b"delta bytes").unwrap();
    let a = get(&app, &uri).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(&a.body[..], b"delta bytes");
    assert_eq!(a.header(header::ETAG), format!("\"{}-{}\"", f.other, f.lab));
    assert_eq!(a.header(header::CACHE_CONTROL), "public, max-age=31536000, immutable");
}

#[tokio::test]
async fn ranges_conditionals_and_head() {
    let f = Fixture::new();
    let app = f.app(DEFAULT_LAB);
    let (key, bytes) = f.files("packs", "pack").remove(0);
    let uri = format!("/v1/repo/{key}");
    let len = bytes.len();
    let etag = format!("\"{}\"", key.rsplit('/').next().unwrap().trim_end_matches(".pack"));

    for (range, start, end) in [
        ("bytes=0-99", 0, 99),
        ("bytes=10-", 10, len - 1),
        ("bytes=-25", len - 25, len - 1),
        ("bytes=5-99999999999", 5, len - 1),
    ] {
        let a = get_with(&app, &uri, &[("range", range)]).await;
        assert_eq!(a.status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(a.header(header::CONTENT_RANGE), format!("bytes {start}-{end}/{len}"));
        assert_eq!(a.header(header::CONTENT_LENGTH), (end - start + 1).to_string());
        assert_eq!(&a.body[..], &bytes[start..=end], "{range}");
        assert_eq!(a.header(header::ETAG), etag);
    }
    for range in [
        format!("bytes={len}-"),
        format!("bytes={}-{}", len + 5, len + 10),
        "bytes=-0".into(),
    ] {
        let a = get_with(&app, &uri, &[("range", &range)]).await;
        assert_eq!(a.status, StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        assert_eq!(a.header(header::CONTENT_RANGE), format!("bytes */{len}"));
        assert!(a.error().contains("not satisfiable"));
    }
    // Several ranges, or a stale If-Range: the whole object.
    let a = get_with(&app, &uri, &[("range", "bytes=0-1,5-6")]).await;
    assert_eq!((a.status, a.body.len()), (StatusCode::OK, len));
    let a = get_with(&app, &uri, &[("range", "bytes=0-1"), ("if-range", "\"other\"")]).await;
    assert_eq!((a.status, a.body.len()), (StatusCode::OK, len));
    let a = get_with(&app, &uri, &[("range", "bytes=0-1"), ("if-range", &etag)]).await;
    assert_eq!(a.status, StatusCode::PARTIAL_CONTENT);

    // If-None-Match: 304 without a body, before any range.
    for inm in [etag.clone(), format!("\"x\", W/{etag}"), "*".into()] {
        let a = get_with(&app, &uri, &[("if-none-match", &inm), ("range", "bytes=0-1")]).await;
        assert_eq!(a.status, StatusCode::NOT_MODIFIED, "{inm}");
        assert!(a.body.is_empty());
        assert_eq!(a.header(header::ETAG), etag);
    }
    let a = get_with(&app, &uri, &[("if-none-match", "\"something-else\"")]).await;
    assert_eq!(a.status, StatusCode::OK);

    // HEAD: the headers of GET, no body.
    let head = |h: Option<&str>| {
        let mut b = Request::builder().method(Method::HEAD).uri(&uri);
        if let Some(r) = h {
            b = b.header("range", r);
        }
        b.body(Body::empty()).unwrap()
    };
    let a = send(&app, head(None)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header(header::CONTENT_LENGTH), len.to_string());
    assert_eq!(a.header(header::ETAG), etag);
    assert!(a.body.is_empty());
    let a = send(&app, head(Some("bytes=0-9"))).await;
    assert_eq!(a.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(a.header(header::CONTENT_LENGTH), "10");
    assert!(a.body.is_empty());
    let missing = Request::head(format!("/v1/repo/packs/00/{}.pack", "0".repeat(64)))
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, missing).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn objects_stream_from_a_storage_without_local_files() {
    // The in-memory storage has no local paths: the generic streaming path.
    let dir = tempfile::Builder::new()
        .prefix("slate-server-test-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("big"), noise(3_000_000)).unwrap();
    let repo = Repo::in_memory(Config::default());
    let opts = CommitOptions {
        channel: LAB,
        message: String::new(),
        sign: None,
        metadata: Vec::new(),
    };
    commit(&repo, &tree, &opts, &NoProgress).unwrap();
    let key = repo
        .storage
        .list("packs")
        .unwrap()
        .into_iter()
        .find(|k| k.ends_with(".pack"))
        .unwrap();
    let bytes = repo.storage.read(&key).unwrap();
    assert!(bytes.len() > 1 << 20, "more than one streamed piece");
    let fleet = FleetConfig::parse(DEFAULT_LAB, "f").unwrap();
    let app = app(AppState::new(repo, fleet, SqliteStore::in_memory().unwrap()));
    let uri = format!("/v1/repo/{key}");
    let a = get(&app, &uri).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body == bytes[..]);
    let a = get_with(&app, &uri, &[("range", "bytes=1048000-1049000")]).await;
    assert_eq!(a.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&a.body[..], &bytes[1048000..=1049000]);
    let a = get(&app, &format!("/v1/channels/{LAB}")).await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn channels_are_served_uncached() {
    let f = Fixture::new();
    let app = f.app(DEFAULT_LAB);
    let a = get(&app, &format!("/v1/channels/{LAB}")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        &a.body[..],
        &std::fs::read(f.root().join("channels").join(LAB)).unwrap()[..]
    );
    assert_eq!(
        std::str::from_utf8(&a.body).unwrap(),
        format!("slate-channel-v1\n{}\n", f.lab)
    );
    assert_eq!(a.header(header::CACHE_CONTROL), "no-cache");
    assert_eq!(a.header(header::CONTENT_TYPE), "text/plain; charset=utf-8");
    let etag = a.header(header::ETAG).to_string();
    assert_eq!(
        get_with(&app, &format!("/v1/channels/{LAB}"), &[("if-none-match", &etag)])
            .await
            .status,
        StatusCode::NOT_MODIFIED
    );
    let head = Request::head(format!("/v1/channels/{OTHER}"))
        .body(Body::empty())
        .unwrap();
    let a = send(&app, head).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.is_empty());

    let a = get(&app, "/v1/channels/no/such/channel").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.error().contains("no channel named no/such/channel"), "{}", a.error());

    // A corrupt channel file is the server's problem, and its cause stays
    // in the server's log.
    std::fs::write(f.root().join("channels/broken"), "garbage\n").unwrap();
    let a = get(&app, "/v1/channels/broken").await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(a.error(), "internal server error");
}

async fn assignment_by_each_matcher_pin_and_default(db: TestDb) {
    let f = Fixture::on(db);
    let fleet = format!(
        r#"
[default]
channel = "{LAB}"

[[machine]]
mac = "52:54:00:AA:BB:CC"
channel = "{OTHER}"

[[machine]]
dmi_uuid = "4C4C4544-0042-3510-8052-B7C04F4E3132"
channel = "{LAB}"
snapshot = "{other_id}"

[[machine]]
hostname = "kiosk-*"
channel = "{OTHER}"

[[machine]]
name = "room b12"
labels = {{ room = "b12" }}
channel = "{OTHER}"

[[machine]]
hostname = "ghost-*"
channel = "does/not/exist"

[[machine]]
hostname = "gone-*"
channel = "{LAB}"
snapshot = "{missing}"
"#,
        other_id = f.other,
        missing = "0".repeat(64),
    );
    let app = f.app(&fleet);
    let cases = [
        (
            json!({"id": "m-mac", "macs": ["00:00:00:00:00:01", "52-54-00-aa-bb-cc"]}),
            OTHER,
            &f.other,
            false,
            "mac 52:54:00:aa:bb:cc",
        ),
        (
            json!({"id": "m-uuid", "dmi_uuid": "4c4c4544-0042-3510-8052-b7c04f4e3132"}),
            LAB,
            &f.other,
            true,
            "dmi_uuid 4c4c4544-0042-3510-8052-b7c04f4e3132",
        ),
        (
            json!({"id": "m-host", "hostname": "KIOSK-3"}),
            OTHER,
            &f.other,
            false,
            "hostname kiosk-*",
        ),
        (
            json!({"id": "m-labels", "labels": {"room": "b12", "x": "y"}}),
            OTHER,
            &f.other,
            false,
            "room b12",
        ),
        (
            json!({"id": "m-default", "hostname": "lab-07", "labels": {"room": "a1"}}),
            LAB,
            &f.lab,
            false,
            "default",
        ),
    ];
    for (machine, channel, snapshot, pinned, rule) in cases {
        let id = machine["id"].as_str().unwrap().to_string();
        let a = assign(&app, machine).await;
        assert_eq!(a.status, StatusCode::OK, "{id}: {:?}", a.body);
        assert_eq!(
            a.json(),
            json!({"machine": id, "channel": channel, "snapshot": snapshot, "pinned": pinned, "rule": rule}),
            "{id}"
        );
    }
    let a = assign(&app, json!({"id": "m-ghost", "hostname": "ghost-1"})).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.error().contains("channel does/not/exist"), "{}", a.error());
    let a = assign(&app, json!({"id": "m-gone", "hostname": "gone-1"})).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.error().contains("pinned"), "{}", a.error());

    // Without [default], an unmatched machine gets a clear 404.
    let app = f.app(&format!("[[machine]]\nhostname = \"lab-*\"\nchannel = \"{LAB}\"\n"));
    let a = assign(&app, json!({"id": "dmi:1234", "hostname": "office-1"})).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(
        a.error()
            .starts_with("no fleet rule matches machine dmi:1234 (hostname office-1)"),
        "{}",
        a.error()
    );
}

// The fleet tests that go through the store run on each backend.
on_both_stores_async!(
    assignment_by_each_matcher_pin_and_default,
    report_then_machines_round_trip,
    reports_carry_the_mode_and_a_network_booted_machines_cache,
    fleet_requests_need_the_machines_own_token,
);

#[tokio::test]
async fn assignment_follows_the_channel_head() {
    let f = Fixture::new();
    let app = f.app(DEFAULT_LAB);
    let a = assign(&app, json!({"id": "m"})).await;
    assert_eq!(a.json()["snapshot"], f.lab.as_str());
    // Move the channel: the next assignment names the new head.
    let repo = Repo::open(&f.root()).unwrap();
    let tree = f.dir.path().join("tree1");
    let opts = CommitOptions {
        channel: LAB,
        message: String::new(),
        sign: None,
        metadata: Vec::new(),
    };
    let next = commit(&repo, &tree, &opts, &NoProgress).unwrap().snapshot;
    assert_ne!(next, f.lab);
    let a = assign(&app, json!({"id": "m"})).await;
    assert_eq!(a.json()["snapshot"], next.as_str());
}

#[tokio::test]
async fn without_a_fleet_file_the_only_channel_is_assigned() {
    let one = Fixture::with_channels(&[LAB]);
    let app = one.app_with(FleetConfig::only_channel());
    let a = assign(&app, json!({"id": "m"})).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["channel"], LAB);
    assert_eq!(a.json()["snapshot"], one.lab.as_str());

    let two = Fixture::new();
    let app = two.app_with(FleetConfig::only_channel());
    let a = assign(&app, json!({"id": "m"})).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.error().contains("--fleet"), "{}", a.error());
}

fn report_body(f: &Fixture) -> Value {
    json!({
        "machine": {"id": "dmi:4c4c4544", "dmi_uuid": "4c4c4544-0042-3510-8052-b7c04f4e3132",
                    "macs": ["52:54:00:12:34:56"], "hostname": "lab-07", "labels": {"room": "b12"}},
        "current": f.lab, "target": f.other,
        "active_slot": "a", "slots": {"a": f.lab, "b": null},
        "pending": null,
        "last_update": {"result": "ok", "message": "updated", "bytes_fetched": 123, "at": 1764115200u64},
        "boot": {"result": "good", "slot": "a", "snapshot": f.lab,
                 "warnings": ["no DMI UUID and no network interface: the machine id comes from a seed kept on the state partition"]},
        "agent_version": "a field this server does not know"
    })
}

async fn report_then_machines_round_trip(db: TestDb) {
    let f = Fixture::on(db);
    let app = f.app(DEFAULT_LAB);
    let empty = get(&app, "/v1/fleet/machines").await;
    assert_eq!(empty.status, StatusCode::OK);
    assert_eq!(empty.json(), json!({"machines": []}));

    let body = report_body(&f);
    let a = assign(&app, body["machine"].clone()).await;
    assert_eq!(a.status, StatusCode::OK);
    let a = post(&app, "/v1/fleet/report", body.to_string()).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{:?}", a.body);
    assert!(a.body.is_empty());
    // A machine that only reports appears too.
    let mut lone = body.clone();
    lone["machine"] = json!({"id": "lone"});
    lone["last_update"] = json!({"result": "offline"});
    lone["boot"] = Value::Null;
    lone["pending"] = json!("b");
    assert_eq!(
        post(&app, "/v1/fleet/report", lone.to_string()).await.status,
        StatusCode::NO_CONTENT
    );

    let list = get(&app, "/v1/fleet/machines").await;
    assert_eq!(list.status, StatusCode::OK);
    let v = list.json();
    let machines = v["machines"].as_array().unwrap();
    assert_eq!(machines.len(), 2);
    let m = &machines[0];
    let mut keys: Vec<&str> = m.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "active_slot",
            "boot",
            "cache",
            "channel",
            "current",
            "first_seen",
            "hostname",
            "last_seen",
            "last_update",
            "machine",
            "mode",
            "slots",
            "target"
        ]
    );
    // An agent that does not say its mode (an older one): null, not a guess.
    assert_eq!((&m["mode"], &m["cache"]), (&Value::Null, &Value::Null));
    assert_eq!(m["machine"], "dmi:4c4c4544");
    assert_eq!(m["hostname"], "lab-07");
    assert_eq!(m["channel"], LAB);
    assert_eq!(m["current"], f.lab.as_str());
    assert_eq!(m["target"], f.other.as_str());
    assert_eq!(m["active_slot"], "a");
    assert_eq!(m["slots"], json!({"a": f.lab, "b": null}));
    assert_eq!(m["last_update"], body["last_update"]);
    assert_eq!(m["boot"], body["boot"]);
    assert!(m["first_seen"].as_u64().unwrap() > 1_700_000_000);
    assert!(m["last_seen"].as_u64() >= m["first_seen"].as_u64());
    assert_eq!(machines[1]["machine"], "lone");
    assert_eq!(machines[1]["channel"], Value::Null);
    assert_eq!(machines[1]["boot"], Value::Null);
}

async fn reports_carry_the_mode_and_a_network_booted_machines_cache(db: TestDb) {
    let f = Fixture::on(db);
    let app = f.app(DEFAULT_LAB);
    let machine = |id: &str| json!({"id": id});
    // An A/B machine, a cached machine filling its cache, a diskless one,
    // and a mode this server does not know yet (kept, as result words are).
    let reports = [
        json!({"machine": machine("m-ab"), "mode": "ab", "slots": {"a": f.lab, "b": null}}),
        json!({"machine": machine("m-cached"), "current": f.lab, "mode": "cached",
               "cache": {"cached_bytes": 42, "total_bytes": 100, "complete": false},
               "last_update": {"result": "next-boot"}, "boot": {"result": "good", "snapshot": f.lab}}),
        json!({"machine": machine("m-diskless"), "mode": "diskless",
               "cache": {"cached_bytes": 0, "total_bytes": 0, "complete": true, "later": 1}}),
        json!({"machine": machine("m-newer"), "mode": "zfs-boot"}),
    ];
    for r in &reports {
        let a = post(&app, "/v1/fleet/report", r.to_string()).await;
        assert_eq!(a.status, StatusCode::NO_CONTENT, "{r}: {:?}", a.body);
    }
    let v = get(&app, "/v1/fleet/machines").await.json();
    let row = |id: &str| {
        v["machines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["machine"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(
        (&row("m-ab")["mode"], &row("m-ab")["cache"]),
        (&json!("ab"), &Value::Null)
    );
    let c = row("m-cached");
    assert_eq!(c["mode"], "cached");
    assert_eq!(
        c["cache"],
        json!({"cached_bytes": 42, "total_bytes": 100, "complete": false})
    );
    assert_eq!(c["last_update"]["result"], "next-boot");
    assert_eq!(c["active_slot"], Value::Null);
    // Fields inside `cache` this server does not know are not kept in the
    // column (the raw report keeps them).
    assert_eq!(
        row("m-diskless")["cache"],
        json!({"cached_bytes": 0, "total_bytes": 0, "complete": true})
    );
    assert_eq!(row("m-newer")["mode"], "zfs-boot");

    // Refused: a mode that is not a short lower-case word, bytes that are
    // not counts or do not add up, a missing field. Nothing is stored.
    let bad = [
        (json!({"mode": "A/B"}), "mode must be a word"),
        (json!({"mode": ""}), "mode must be a word"),
        (json!({"mode": "x".repeat(17)}), "mode must be a word"),
        (json!({"mode": 5}), "invalid type"),
        (
            json!({"cache": {"cached_bytes": 101, "total_bytes": 100, "complete": false}}),
            "cache.cached_bytes (101) is more than cache.total_bytes (100)",
        ),
        (
            json!({"cache": {"cached_bytes": -1, "total_bytes": 100, "complete": false}}),
            "invalid value",
        ),
        (
            json!({"cache": {"cached_bytes": 1.5, "total_bytes": 100, "complete": false}}),
            "invalid type",
        ),
        (
            json!({"cache": {"cached_bytes": "42", "total_bytes": 100, "complete": false}}),
            "invalid type",
        ),
        (
            json!({"cache": {"cached_bytes": 1, "total_bytes": 2}}),
            "missing field `complete`",
        ),
    ];
    for (extra, needle) in bad {
        let mut body = json!({"machine": machine("m-bad")});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let a = post(&app, "/v1/fleet/report", body.to_string()).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(a.error().contains(needle), "{body}: {}", a.error());
    }
    let v = get(&app, "/v1/fleet/machines").await.json();
    assert!(!v["machines"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["machine"] == "m-bad"));
}

#[tokio::test]
async fn bad_requests_get_one_clear_error() {
    let f = Fixture::new();
    let app = f.app(DEFAULT_LAB);
    let cases: Vec<(&str, String, &str)> = vec![
        ("/v1/fleet/assignment", "{not json".into(), "invalid JSON request"),
        ("/v1/fleet/assignment", "".into(), "invalid JSON request"),
        ("/v1/fleet/assignment", "{}".into(), "missing field `machine`"),
        (
            "/v1/fleet/assignment",
            json!({"machine": {"id": 5}}).to_string(),
            "invalid type",
        ),
        (
            "/v1/fleet/assignment",
            json!({"machine": {"id": ""}}).to_string(),
            "machine.id",
        ),
        (
            "/v1/fleet/assignment",
            json!({"machine": {"id": "m", "hostname": "x".repeat(300)}}).to_string(),
            "machine.hostname",
        ),
        (
            "/v1/fleet/report",
            json!({"machine": {"id": "m"}, "current": "abc"}).to_string(),
            "current must be a snapshot id",
        ),
        (
            "/v1/fleet/report",
            json!({"machine": {"id": "m"}, "target": "A".repeat(64)}).to_string(),
            "target must be a snapshot id",
        ),
        (
            "/v1/fleet/report",
            json!({"machine": {"id": "m"}, "slots": {"a": "zz"}}).to_string(),
            "slots.a must be a snapshot id",
        ),
        (
            "/v1/fleet/report",
            json!({"machine": {"id": "m"}, "active_slot": "../x"}).to_string(),
            "active_slot must be a slot name",
        ),
        (
            "/v1/fleet/report",
            json!({"machine": {"id": "m"}, "last_update": {"result": "Great Success!"}}).to_string(),
            "last_update.result must be a result word such as ok, error, offline or up-to-date",
        ),
        (
            "/v1/fleet/report",
            json!({"machine": {"id": "m"}, "boot": {"result": "good", "snapshot": "x"}}).to_string(),
            "boot.snapshot",
        ),
        (
            "/v1/fleet/report",
            json!({"machine": {"id": "m"}, "boot": {"result": ""}}).to_string(),
            "boot.result must be a result word such as good, pending or fell-back",
        ),
        (
            "/v1/fleet/report",
            json!({"machine": {"id": "m"}, "boot": {"result": "good", "warnings": vec!["w"; 17]}}).to_string(),
            "boot.warnings lists more than 16",
        ),
        (
            "/v1/fleet/report",
            json!({"machine": {"id": "m"}, "boot": {"result": "good", "warnings": ["x".repeat(1025)]}}).to_string(),
            "boot.warnings",
        ),
    ];
    for (uri, body, needle) in cases {
        let a = post(&app, uri, body.clone()).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}");
        let e = a.error();
        assert!(e.contains(needle), "{body}: {e}");
        assert!(!e.contains('\n'), "{e}");
    }
    // Nothing was stored by the rejected reports.
    assert_eq!(get(&app, "/v1/fleet/machines").await.json(), json!({"machines": []}));

    // Bodies over the limit: 413, whether or not the length is announced.
    let big = json!({"machine": {"id": "m"}, "pad": "x".repeat(crate::BODY_LIMIT)}).to_string();
    let a = post(&app, "/v1/fleet/report", big.clone()).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(a.error().contains("larger than 65536 bytes"), "{}", a.error());
    let chunks = futures_util::stream::iter(
        big.into_bytes()
            .chunks(4096)
            .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let a = post_as(
        &app,
        "/v1/fleet/assignment",
        Some(&token_of("m")),
        Body::from_stream(chunks),
    )
    .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);

    // Wrong method and unknown path: JSON too.
    let a = get(&app, "/v1/fleet/report").await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(!a.error().is_empty());
    let a = post(&app, "/v1/packs", "").await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
}

async fn fleet_requests_need_the_machines_own_token(db: TestDb) {
    let f = Fixture::on(db);
    let app = f.app(DEFAULT_LAB);
    let report = json!({"machine": {"id": "lone"}, "last_update": {"result": "ok"}}).to_string();
    let ask = json!({"machine": {"id": "lone"}}).to_string();
    for uri in ["/v1/fleet/report", "/v1/fleet/assignment"] {
        let body = if uri.ends_with("report") { &report } else { &ask };
        // No token, or one the server never issued: 401, saying to enroll.
        for token in [
            None,
            Some("slate1-0000000000000000000000000000000000000000000000000000000000000000"),
        ] {
            let a = post_as(&app, uri, token, body.clone()).await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{uri}");
            assert!(a.error().contains("slate fleet enroll"), "{}", a.error());
            assert_eq!(a.header(header::WWW_AUTHENTICATE), "Bearer");
        }
        // Another machine's token: 403, and nothing recorded.
        let a = post_as(&app, uri, Some(&token_of("m")), body.clone()).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{uri}");
        assert!(a.error().contains("belongs to machine m, not to lone"), "{}", a.error());
    }
    assert_eq!(get(&app, "/v1/fleet/machines").await.json(), json!({"machines": []}));
    // Its own token: accepted.
    let a = post_as(&app, "/v1/fleet/report", Some(&token_of("lone")), report).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn listing_machines_needs_an_administrator_token() {
    let f = Fixture::new();
    let app = f.app(DEFAULT_LAB);
    let machine = format!("Bearer {}", token_of("m"));
    for headers in [
        vec![],
        vec![("authorization", machine.as_str())],
        vec![("authorization", "Bearer nope")],
    ] {
        let a = get_with(&app, "/v1/fleet/machines", &headers).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{headers:?}");
        assert!(a.error().contains("administrator token"), "{}", a.error());
    }
    assert_eq!(get(&app, "/v1/fleet/machines").await.status, StatusCode::OK);
    // A server started without administrator tokens lists nothing to anyone.
    let repo = Repo::open(&f.root()).unwrap();
    let bare = app_without_admin(repo);
    let admin = format!("Bearer {ADMIN_TOKEN}");
    let a = get_with(&bare, "/v1/fleet/machines", &[("authorization", &admin)]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.error().contains("--admin-token-file"), "{}", a.error());
}

fn app_without_admin(repo: Repo) -> Router {
    let fleet = FleetConfig::parse(DEFAULT_LAB, "f").unwrap();
    app(AppState::new(repo, fleet, SqliteStore::in_memory().unwrap()))
}

/// A client for a server on a socket, trusting `ca` if given.
fn client(ca: Option<&str>) -> reqwest::Client {
    let mut b = reqwest::Client::builder().timeout(std::time::Duration::from_secs(10));
    if let Some(pem) = ca {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

#[tokio::test]
async fn serves_http_and_shuts_down_gracefully() {
    let f = Fixture::new();
    let listener = crate::server::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::server::serve(listener, f.app(DEFAULT_LAB), None, async {
        let _ = stopped.await;
    }));
    let c = client(None);
    let r = c.get(format!("http://{addr}/v1/channels/{LAB}")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains(&f.lab));
    stop.send(()).unwrap();
    let done = tokio::time::timeout(std::time::Duration::from_secs(10), server).await;
    done.expect("server stops").unwrap().unwrap();
    assert!(
        c.get(format!("http://{addr}/v1/packs")).send().await.is_err(),
        "no longer listening"
    );
}

#[tokio::test]
async fn serves_tls() {
    let f = Fixture::new();
    // A CA and a certificate for 127.0.0.1 signed by it.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let (cert_file, key_file) = (f.dir.path().join("cert.pem"), f.dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();

    let tls = crate::server::tls_config(&cert_file, &key_file).await.unwrap();
    let listener = crate::server::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::server::serve(listener, f.app(DEFAULT_LAB), Some(tls), async {
        let _ = stopped.await;
    }));
    let r = client(Some(&ca.pem()))
        .get(format!("https://{addr}/v1/channels/{LAB}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains(&f.lab));
    // A client that does not trust the certificate cannot talk to it.
    assert!(client(None)
        .get(format!("https://{addr}/v1/packs"))
        .send()
        .await
        .is_err());
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();

    // Unreadable key material is one clear error.
    std::fs::write(&key_file, "not a key").unwrap();
    let e = crate::server::tls_config(&cert_file, &key_file).await.err().unwrap();
    assert!(format!("{e:#}").contains("cannot load TLS certificate"), "{e:#}");
}

// ---- waiting for a change (issue 12) ---------------------------------------

/// The assignment URI that waits `wait` seconds while `known` is assigned.
fn wait_uri(wait: u64, known: &str) -> String {
    format!("/v1/fleet/assignment?wait={wait}&known={known}")
}

/// Commit tree 1 to `channel` through a repository opened anew, as another
/// process (`slate commit`) would: the server learns of it only from the
/// channel file.
fn commit_elsewhere(f: &Fixture, channel: &str) -> String {
    let repo = Repo::open(&f.root()).unwrap();
    let opts = CommitOptions {
        channel,
        message: "elsewhere".into(),
        sign: None,
        metadata: Vec::new(),
    };
    commit(&repo, &f.dir.path().join("tree1"), &opts, &NoProgress)
        .unwrap()
        .snapshot
}

#[tokio::test]
async fn a_waiting_machine_hears_of_a_commit_by_another_writer_at_once() {
    let f = Fixture::new();
    let key = slate_core::keys::SecretKey::generate().unwrap();
    let st = f
        .state_with(FleetConfig::parse(DEFAULT_LAB, "FLEET.toml").unwrap())
        .with_signer(crate::fleet::sign::Signer::new(key, 3600));
    let app = app(st);
    let body = json!({"machine": {"id": "m"}}).to_string();
    let waiter = {
        let (app, uri, body) = (app.clone(), wait_uri(20, &f.lab), body.clone());
        tokio::spawn(async move { post(&app, &uri, body).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(!waiter.is_finished(), "the request waits while nothing changes");
    // Blocks this test's thread for the commit: the server runs again after.
    let next = commit_elsewhere(&f, LAB);
    let committed = std::time::Instant::now();
    let a = tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
        .await
        .expect("the waiting request answers soon after the commit")
        .unwrap();
    let took = committed.elapsed();
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.json()["snapshot"], next.as_str());
    // The watcher looks every second; a loaded machine gets some slack.
    assert!(
        took < std::time::Duration::from_secs(4),
        "answered {took:?} after the commit"
    );
    // Signed when answered, like any assignment.
    assert_eq!(a.json()["signature"].as_str().map(str::len), Some(128));
    assert!(a.json()["issued_at"].as_u64().is_some());
}

#[tokio::test]
async fn a_waiting_machine_hears_of_an_edited_fleet_file() {
    let f = Fixture::new();
    let file = f.dir.path().join("FLEET.toml");
    std::fs::write(&file, DEFAULT_LAB).unwrap();
    let app = f.app_with(FleetConfig::load(&file).unwrap());
    let waiter = {
        let (app, uri) = (app.clone(), wait_uri(20, &f.lab));
        tokio::spawn(async move { post(&app, &uri, json!({"machine": {"id": "m"}}).to_string()).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    // A file that does not check changes nothing: the waiter keeps waiting.
    std::fs::write(&file, "[default]\nchanel = \"other\"\n").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert!(!waiter.is_finished(), "a broken fleet file is not taken up");
    // Written whole by rename, as editors and config management do.
    let tmp = f.dir.path().join("FLEET.toml.new");
    std::fs::write(
        &tmp,
        format!("[default]\nchannel = \"other\"\nsnapshot = \"{}\"\n", f.other),
    )
    .unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let a = tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
        .await
        .expect("the waiting request answers soon after the edit")
        .unwrap();
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.json()["channel"], "other");
    assert_eq!(a.json()["snapshot"], f.other.as_str());
    assert_eq!(a.json()["pinned"], true);
    // And the new rules are the server's from now on.
    let again = assign(&app, json!({"id": "m"})).await;
    assert_eq!(again.json()["channel"], "other");
}

#[tokio::test]
async fn a_wait_without_change_ends_with_the_same_assignment() {
    let f = Fixture::new();
    let app = f.app(DEFAULT_LAB);
    let body = json!({"machine": {"id": "m"}}).to_string();
    let t = std::time::Instant::now();
    let a = post(&app, &wait_uri(2, &f.lab), body.clone()).await;
    let took = t.elapsed();
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["snapshot"], f.lab.as_str());
    assert!(took >= std::time::Duration::from_secs(2), "{took:?}");
    assert!(took < std::time::Duration::from_secs(8), "{took:?}");
    // A commit to another channel wakes the waiter, which finds its own
    // assignment unchanged and waits on.
    let waiter = {
        let (app, uri, body) = (app.clone(), wait_uri(4, &f.lab), body.clone());
        tokio::spawn(async move { post(&app, &uri, body).await })
    };
    let t = std::time::Instant::now();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    commit_elsewhere(&f, OTHER);
    let a = waiter.await.unwrap();
    assert_eq!(a.json()["snapshot"], f.lab.as_str());
    assert!(t.elapsed() >= std::time::Duration::from_secs(4), "{:?}", t.elapsed());
}

#[tokio::test]
async fn without_wait_and_known_nothing_waits() {
    let f = Fixture::new();
    let app = f.app(DEFAULT_LAB);
    let body = json!({"machine": {"id": "m"}}).to_string();
    for uri in [
        "/v1/fleet/assignment".to_string(),
        format!("/v1/fleet/assignment?known={}", f.lab),
        "/v1/fleet/assignment?wait=20".to_string(),
        wait_uri(0, &f.lab),
        // The machine does not run what it is assigned: answered at once.
        wait_uri(20, &f.other),
    ] {
        let t = std::time::Instant::now();
        let a = post(&app, &uri, body.clone()).await;
        assert_eq!(a.status, StatusCode::OK, "{uri}");
        assert_eq!(a.json()["snapshot"], f.lab.as_str(), "{uri}");
        assert!(
            t.elapsed() < std::time::Duration::from_secs(2),
            "{uri}: {:?}",
            t.elapsed()
        );
    }
    for uri in [
        "/v1/fleet/assignment?wait=soon".to_string(),
        "/v1/fleet/assignment?wait=-1".to_string(),
        format!("/v1/fleet/assignment?wait=5&known={}", &f.lab[..12]),
        format!("/v1/fleet/assignment?wait=5&known={}", f.lab.to_uppercase()),
    ] {
        let a = post(&app, &uri, body.clone()).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{uri}");
        assert!(!a.error().is_empty());
    }
}

#[tokio::test]
async fn the_token_is_checked_before_waiting() {
    let f = Fixture::new();
    let app = f.app(DEFAULT_LAB);
    let body = json!({"machine": {"id": "m"}}).to_string();
    let t = std::time::Instant::now();
    let a = post_as(&app, &wait_uri(20, &f.lab), None, body.clone()).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = post_as(&app, &wait_uri(20, &f.lab), Some(&token_of("lone")), body).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(t.elapsed() < std::time::Duration::from_secs(2), "{:?}", t.elapsed());
}

#[tokio::test(start_paused = true)]
async fn a_wait_is_capped_under_the_handler_limit() {
    let f = Fixture::new();
    let app = f.app(DEFAULT_LAB);
    let t = tokio::time::Instant::now();
    let a = post(
        &app,
        &wait_uri(3600, &f.lab),
        json!({"machine": {"id": "m"}}).to_string(),
    )
    .await;
    let took = t.elapsed();
    // Not the 503 of the 30 s handler limit: the wait ends first.
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.json()["snapshot"], f.lab.as_str());
    assert!(took >= crate::changes::MAX_WAIT, "{took:?}");
    assert!(took < crate::REQUEST_TIMEOUT, "{took:?}");
}

#[tokio::test]
async fn waiters_over_the_cap_are_answered_at_once() {
    let f = Fixture::new();
    let app = app(f
        .state_with(FleetConfig::parse(DEFAULT_LAB, "FLEET.toml").unwrap())
        .with_max_waiters(1));
    let body = json!({"machine": {"id": "m"}}).to_string();
    let first = {
        let (app, uri, body) = (app.clone(), wait_uri(3, &f.lab), body.clone());
        tokio::spawn(async move { post(&app, &uri, body).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let t = std::time::Instant::now();
    let a = post(&app, &wait_uri(3, &f.lab), body).await;
    assert_eq!(a.json()["snapshot"], f.lab.as_str());
    assert!(t.elapsed() < std::time::Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
}
