//! Router tests of machine tokens, machine state and home repositories:
//! [`crate::app`] over an empty repository, a real SQLite database and
//! local blob directories, driven with `tower::ServiceExt::oneshot`.

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use serde_json::Value;
use slate_repo::{Config, Repo};
use tower::ServiceExt;

use crate::blobs::PrivateStorage;
use crate::fleet::{FleetConfig, SqliteStore, TokenStore};
use crate::{app, auth, AppState};

const HOME: &str = "/v1/home/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

struct Setup {
    dir: tempfile::TempDir,
    app: Router,
    tokens: std::sync::Arc<dyn TokenStore>,
    a: String,
    b: String,
}

impl Setup {
    fn new() -> Setup {
        Self::with(|_| {})
    }

    /// A server with machines `lab-07` (token `a`) and `mac:aa:bb` (token
    /// `b`) enrolled; `tune` adjusts the limits.
    fn with(tune: impl FnOnce(&mut PrivateStorage)) -> Setup {
        let dir = tempfile::Builder::new()
            .prefix("slate-private-test-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let repo = Repo::init(&dir.path().join("repo"), Config::default()).unwrap();
        let mut private = PrivateStorage::local(&dir.path().join("state"), &dir.path().join("home"));
        tune(&mut private);
        let db = SqliteStore::open(&dir.path().join("fleet.db")).unwrap();
        let st = AppState::new(repo, FleetConfig::only_channel(), db).with_private(private);
        let (a, b) = (auth::generate().unwrap(), auth::generate().unwrap());
        st.tokens.enroll("lab-07", &auth::hash(&a), 1, false).unwrap();
        st.tokens.enroll("mac:aa:bb", &auth::hash(&b), 2, false).unwrap();
        Setup {
            tokens: st.tokens.clone(),
            app: app(st),
            dir,
            a,
            b,
        }
    }

    async fn req(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Answer {
        let mut r = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            r = r.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let resp = self
            .app
            .clone()
            .oneshot(r.body(Body::from(body.to_vec())).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        Answer { status, headers, body }
    }

    /// PUT with a Content-Length, as HTTP clients send it.
    async fn put(&self, uri: &str, token: &str, body: &[u8]) -> Answer {
        let len = body.len().to_string();
        self.req(Method::PUT, uri, Some(token), &[("content-length", &len)], body)
            .await
    }

    async fn get(&self, uri: &str, token: &str) -> Answer {
        self.req(Method::GET, uri, Some(token), &[], b"").await
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

fn quoted_blake3(b: &[u8]) -> String {
    format!("\"{}\"", blake3::hash(b).to_hex())
}

#[tokio::test]
async fn state_round_trip() {
    let s = Setup::new();
    let uri = "/v1/state/lab-07/ssh-host-keys.tar";
    let r = s.put(uri, &s.a, b"first").await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.header(header::CACHE_CONTROL), "no-store");
    assert_eq!(s.put(uri, &s.a, b"second").await.status, StatusCode::NO_CONTENT);

    let r = s.get(uri, &s.a).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], b"second");
    assert_eq!(r.header(header::ETAG), quoted_blake3(b"second"));
    assert_eq!(r.header(header::CACHE_CONTROL), "no-store");
    let etag = r.header(header::ETAG).to_string();
    let r = s.req(Method::HEAD, uri, Some(&s.a), &[], b"").await;
    assert_eq!((r.status, r.body.len()), (StatusCode::OK, 0));
    assert_eq!(r.header(header::ETAG), etag);
    let r = s
        .req(Method::GET, uri, Some(&s.a), &[("if-none-match", &etag)], b"")
        .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);

    // A machine name with ':' works, and stays apart from the other one.
    assert_eq!(
        s.put("/v1/state/mac:aa:bb/x", &s.b, b"bee").await.status,
        StatusCode::CREATED
    );
    s.put("/v1/state/lab-07/empty", &s.a, b"").await;

    let r = s.get("/v1/state/lab-07/", &s.a).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header(header::CACHE_CONTROL), "no-store");
    let list = r.json();
    assert_eq!(list["machine"], "lab-07");
    let blobs = list["blobs"].as_array().unwrap();
    assert_eq!(blobs.len(), 2);
    assert_eq!(blobs[0]["name"], "empty");
    assert_eq!(blobs[0]["size"], 0);
    assert_eq!(blobs[1]["name"], "ssh-host-keys.tar");
    assert_eq!(blobs[1]["size"], 6);
    assert_eq!(blobs[1]["blake3"], blake3::hash(b"second").to_hex().as_str());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(blobs[1]["modified"].as_u64().unwrap().abs_diff(now) < 60);
    let r = s.get("/v1/state/mac:aa:bb/", &s.b).await;
    assert_eq!(r.json()["blobs"].as_array().unwrap().len(), 1);

    assert_eq!(
        s.req(Method::DELETE, uri, Some(&s.a), &[], b"").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(s.get(uri, &s.a).await.status, StatusCode::NOT_FOUND);
    let r = s.req(Method::DELETE, uri, Some(&s.a), &[], b"").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.error().contains("ssh-host-keys.tar"), "{}", r.error());

    // The directory of a machine is the hex of its name.
    assert!(s.dir.path().join("state").join(hex("mac:aa:bb")).join("x").is_file());
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn state_needs_the_machines_own_token() {
    let s = Setup::new();
    let uri = "/v1/state/lab-07/secret";
    s.put(uri, &s.a, b"mine").await;
    let unknown = auth::generate().unwrap();
    for method in [Method::GET, Method::HEAD, Method::PUT, Method::DELETE] {
        for (token, raw) in [
            (None, None),
            (None, Some("Basic bGFiOnB3")),
            (None, Some("Bearer not-a-token")),
            (Some(unknown.as_str()), None),
        ] {
            let headers: Vec<(&str, &str)> = raw.map(|v| ("authorization", v)).into_iter().collect();
            let r = s.req(method.clone(), uri, token, &headers, b"evil").await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{method} {token:?} {raw:?}");
            assert_eq!(r.header(header::WWW_AUTHENTICATE), "Bearer");
            if method != Method::HEAD {
                assert!(r.error().contains("token"), "{}", r.error());
            }
        }
        // B's token on A's state: forbidden, whatever the method.
        let r = s.req(method.clone(), uri, Some(&s.b), &[], b"evil").await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{method}");
        // Even for a blob that does not exist: nothing is learnt.
        let r = s
            .req(method.clone(), "/v1/state/lab-07/nothing", Some(&s.b), &[], b"")
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{method}");
    }
    let r = s.get("/v1/state/lab-07/", &s.b).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.error().contains("mac:aa:bb"), "{}", r.error());
    assert_eq!(s.get("/v1/state/lab-07/", "").await.status, StatusCode::UNAUTHORIZED);
    // Nothing was changed by the refused requests.
    assert_eq!(&s.get(uri, &s.a).await.body[..], b"mine");
}

#[tokio::test]
async fn replaced_and_revoked_tokens_stop_working_at_once() {
    let s = Setup::new();
    let uri = "/v1/state/lab-07/x";
    assert_eq!(s.put(uri, &s.a, b"1").await.status, StatusCode::CREATED);
    let new = auth::generate().unwrap();
    s.tokens.enroll("lab-07", &auth::hash(&new), 3, true).unwrap();
    assert_eq!(s.get(uri, &s.a).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(&s.get(uri, &new).await.body[..], b"1");
    s.tokens.revoke("lab-07").unwrap();
    let r = s.get(uri, &new).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.error().contains("not known"), "{}", r.error());
}

#[tokio::test]
async fn state_create_only_and_bad_names() {
    let s = Setup::new();
    let uri = "/v1/state/lab-07/machine-id";
    let once = [("if-none-match", "*")];
    let r = s.req(Method::PUT, uri, Some(&s.a), &once, b"first").await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = s.req(Method::PUT, uri, Some(&s.a), &once, b"second").await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    assert!(r.error().contains("already exists"), "{}", r.error());
    assert_eq!(&s.get(uri, &s.a).await.body[..], b"first");

    for bad in [".hidden", "a%2Fb", "%2E%2E", "x%20y"] {
        let r = s.put(&format!("/v1/state/lab-07/{bad}"), &s.a, b"x").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let long = "n".repeat(129);
    assert_eq!(
        s.put(&format!("/v1/state/lab-07/{long}"), &s.a, b"x").await.status,
        StatusCode::BAD_REQUEST
    );
    // A path the protocol does not have.
    assert_eq!(s.get("/v1/state/lab-07/a/b", &s.a).await.status, StatusCode::NOT_FOUND);
    // Nothing escaped the state directory.
    for e in std::fs::read_dir(s.dir.path()).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(
            ["repo", "state", "home", "fleet.db", "fleet.db-wal", "fleet.db-shm"].contains(&name.as_str()),
            "{name}"
        );
    }
    let machine_dir = s.dir.path().join("state").join(hex("lab-07"));
    let blobs: Vec<_> = std::fs::read_dir(machine_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(blobs, ["machine-id"]);
}

#[tokio::test]
async fn state_size_limit_and_quota() {
    let s = Setup::with(|p| {
        p.state_limit = 1000;
        p.state_quota = 2500;
    });
    let base = "/v1/state/lab-07";
    let r = s.put(&format!("{base}/big"), &s.a, &[7u8; 1001]).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.error().contains("1000 bytes"), "{}", r.error());
    // With Content-Length announced, refused before reading.
    let r = s
        .req(
            Method::PUT,
            &format!("{base}/big"),
            Some(&s.a),
            &[("content-length", "5000")],
            &[0u8; 5000],
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(s.get(&format!("{base}/big"), &s.a).await.status, StatusCode::NOT_FOUND);

    assert_eq!(
        s.put(&format!("{base}/a"), &s.a, &[1u8; 1000]).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        s.put(&format!("{base}/b"), &s.a, &[2u8; 1000]).await.status,
        StatusCode::CREATED
    );
    let r = s.put(&format!("{base}/c"), &s.a, &[3u8; 600]).await;
    assert_eq!(r.status, StatusCode::INSUFFICIENT_STORAGE);
    assert!(r.error().contains("quota"), "{}", r.error());
    // Replacing counts the new size instead of the old one.
    assert_eq!(
        s.put(&format!("{base}/b"), &s.a, &[4u8; 1000]).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        s.put(&format!("{base}/c"), &s.a, &[3u8; 500]).await.status,
        StatusCode::CREATED
    );
    // At the quota, create-only on an existing blob is still 412.
    let r = s
        .req(
            Method::PUT,
            &format!("{base}/c"),
            Some(&s.a),
            &[("if-none-match", "*")],
            &[6u8; 900],
        )
        .await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    // The quota is per machine.
    assert_eq!(
        s.put("/v1/state/mac:aa:bb/c", &s.b, &[3u8; 1000]).await.status,
        StatusCode::CREATED
    );
    // After a delete there is room again.
    s.req(Method::DELETE, &format!("{base}/a"), Some(&s.a), &[], b"").await;
    assert_eq!(
        s.put(&format!("{base}/d"), &s.a, &[5u8; 1000]).await.status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn home_objects_round_trip_with_ranges() {
    let s = Setup::new();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let uri = format!("{HOME}/data/0a1b2c");
    let r = s.get(&format!("{HOME}/data/"), &s.a).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), serde_json::json!({ "objects": [] }));

    assert_eq!(s.put(&uri, &s.a, &data).await.status, StatusCode::CREATED);
    // Any enrolled machine may read home objects; only the owner writes.
    let r = s.get(&uri, &s.b).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), data.len());
    assert!(r.body[..] == data[..]);
    assert_eq!(r.header(header::CACHE_CONTROL), "no-store");
    assert_eq!(r.header(header::ACCEPT_RANGES), "bytes");
    let etag = r.header(header::ETAG).to_string();
    assert!(etag.starts_with('"') && etag.len() > 2, "{etag}");

    let r = s
        .req(Method::GET, &uri, Some(&s.a), &[("range", "bytes=100000-100099")], b"")
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.header(header::CONTENT_RANGE), "bytes 100000-100099/300000");
    assert_eq!(&r.body[..], &data[100_000..100_100]);
    let r = s
        .req(Method::GET, &uri, Some(&s.a), &[("range", "bytes=-10")], b"")
        .await;
    assert_eq!(&r.body[..], &data[299_990..]);
    let r = s
        .req(Method::GET, &uri, Some(&s.a), &[("range", "bytes=300000-")], b"")
        .await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.header(header::CONTENT_RANGE), "bytes */300000");
    // A range against an older version gets the whole (new) object.
    let r = s
        .req(
            Method::GET,
            &uri,
            Some(&s.a),
            &[("range", "bytes=0-9"), ("if-range", "\"old\"")],
            b"",
        )
        .await;
    assert_eq!((r.status, r.body.len()), (StatusCode::OK, 300_000));
    let r = s.req(Method::HEAD, &uri, Some(&s.a), &[], b"").await;
    assert_eq!((r.status, r.body.len()), (StatusCode::OK, 0));
    assert_eq!(r.header(header::CONTENT_LENGTH), "300000");
    let r = s
        .req(Method::GET, &uri, Some(&s.a), &[("if-none-match", &etag)], b"")
        .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);

    // Create-only, replace, list, delete.
    let once = [("if-none-match", "*")];
    let r = s.req(Method::PUT, &uri, Some(&s.a), &once, b"other").await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(
        s.put(&format!("{HOME}/index/i1"), &s.a, b"idx").await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        s.put(&format!("{HOME}/index/i1"), &s.a, b"idx2").await.status,
        StatusCode::NO_CONTENT
    );
    let r = s.get(&format!("{HOME}/index/"), &s.a).await;
    assert_eq!(
        r.json(),
        serde_json::json!({ "objects": [{ "name": "i1", "size": 4 }] })
    );
    let r = s.get(&uri, &s.a).await;
    assert_ne!(r.header(header::ETAG), "", "still there");
    assert_eq!(
        s.req(Method::DELETE, &uri, Some(&s.a), &[], b"").await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(s.get(&uri, &s.a).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        s.req(Method::DELETE, &uri, Some(&s.a), &[], b"").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn home_checks_tokens_names_and_limits() {
    let s = Setup::with(|p| p.home_limit = 100_000);
    let uri = format!("{HOME}/data/obj");
    let r = s.req(Method::PUT, &uri, None, &[], b"x").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.header(header::WWW_AUTHENTICATE), "Bearer");
    let unknown = auth::generate().unwrap();
    assert_eq!(s.get(&uri, &unknown).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        s.req(Method::GET, &format!("{HOME}/data/"), None, &[], b"")
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );

    // Over the limit: 413, nothing stored, no temporary file left.
    let r = s.put(&uri, &s.a, &vec![1u8; 100_001]).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{:?}", r.body);
    assert_eq!(s.get(&uri, &s.a).await.status, StatusCode::NOT_FOUND);
    let kind_dir = s.dir.path().join("home").join(&HOME["/v1/home/".len()..]).join("data");
    if kind_dir.exists() {
        assert_eq!(std::fs::read_dir(&kind_dir).unwrap().count(), 0);
    }
    assert_eq!(s.put(&uri, &s.a, &vec![1u8; 100_000]).await.status, StatusCode::CREATED);

    for bad in [
        "/v1/home/0123/data/x".to_string(),
        format!("{}/data/x", HOME.to_uppercase().replace("/V1/HOME", "/v1/home")),
        format!("{HOME}/Data/x"),
        format!("{HOME}/abcdefghijklmnopq/x"),
        format!("{HOME}/data/.x"),
        format!("{HOME}/d4ta/x"),
    ] {
        let r = s.put(&bad, &s.a, b"x").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn long_machine_names_get_a_hashed_directory() {
    let s = Setup::new();
    let long = format!("host:{}", "k".repeat(123));
    assert_eq!(long.len(), 128);
    let t = auth::generate().unwrap();
    s.tokens.enroll(&long, &auth::hash(&t), 5, false).unwrap();
    let uri = format!("/v1/state/{long}/x");
    assert_eq!(s.put(&uri, &t, b"long").await.status, StatusCode::CREATED);
    assert_eq!(&s.get(&uri, &t).await.body[..], b"long");
    let space = crate::private::state_space(&long);
    assert!(space.starts_with("b3-") && space.len() == 67, "{space}");
    assert!(s.dir.path().join("state").join(&space).join("x").is_file());
    // 64 bytes still fit as hex (128 digits, the segment limit).
    assert_eq!(crate::private::state_space(&"m".repeat(64)), "6d".repeat(64));
    let r = s.put(&format!("/v1/state/{long}k/x"), &t, b"x").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "129 characters");
}

#[tokio::test]
async fn without_private_storage_the_paths_are_404() {
    let dir = tempfile::Builder::new()
        .prefix("slate-private-test-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let repo = Repo::init(&dir.path().join("repo"), Config::default()).unwrap();
    let st = AppState::new(repo, FleetConfig::only_channel(), SqliteStore::in_memory().unwrap());
    let t = auth::generate().unwrap();
    st.tokens.enroll("m", &auth::hash(&t), 1, false).unwrap();
    let app = app(st);
    let req = Request::get("/v1/state/m/x")
        .header(header::AUTHORIZATION, format!("Bearer {t}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.oneshot(req).await.unwrap().status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn home_repositories_belong_to_the_machine_that_created_them() {
    let s = Setup::new();
    let obj = format!("{HOME}/pack/p1");
    assert_eq!(s.put(&obj, &s.a, b"alice's pack").await.status, StatusCode::CREATED);
    // Another enrolled machine reads, but neither adds, replaces nor deletes.
    assert_eq!(s.get(&obj, &s.b).await.status, StatusCode::OK);
    for (method, uri, body) in [
        (Method::PUT, obj.clone(), &b"evil"[..]),
        (Method::PUT, format!("{HOME}/pack/p2"), &b"junk"[..]),
        (Method::DELETE, obj.clone(), &b""[..]),
    ] {
        let r = s.req(method.clone(), &uri, Some(&s.b), &[], body).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{method} {uri}");
        assert!(r.error().contains("belongs to machine lab-07"), "{}", r.error());
    }
    assert_eq!(&s.get(&obj, &s.a).await.body[..], b"alice's pack");
    assert_eq!(
        s.get(&format!("{HOME}/pack/p2"), &s.a).await.status,
        StatusCode::NOT_FOUND
    );
    // Its owner revoked (a stolen laptop), the next machine that writes
    // takes the repository over, and the old token is of no use.
    assert!(s.tokens.revoke("lab-07").unwrap());
    assert_eq!(
        s.put(&format!("{HOME}/pack/p2"), &s.b, b"new").await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        s.req(Method::DELETE, &obj, Some(&s.b), &[], b"").await.status,
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn home_quota_is_per_machine_and_refuses_before_storing() {
    let s = Setup::with(|p| p.home_quota = 1000);
    let other = HOME.replace("0123456789abcdef0123", "fedcba98765432100123");
    assert_eq!(
        s.put(&format!("{HOME}/pack/p1"), &s.a, &[1u8; 600]).await.status,
        StatusCode::CREATED
    );
    // The machine's repositories together: a second one counts too.
    let r = s.put(&format!("{other}/pack/p1"), &s.a, &[2u8; 600]).await;
    assert_eq!(r.status, StatusCode::INSUFFICIENT_STORAGE, "{:?}", r.body);
    assert!(
        r.error().contains("quota of 1000 bytes") && r.error().contains("--home-quota"),
        "{}",
        r.error()
    );
    assert_eq!(
        s.get(&format!("{other}/pack/p1"), &s.a).await.status,
        StatusCode::NOT_FOUND
    );
    // Without a Content-Length the stream is cut at the quota: nothing
    // half written, no temporary file.
    let chunks = futures_util::stream::iter(
        (0..10)
            .map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![3u8; 100])))
            .collect::<Vec<_>>(),
    );
    let req = Request::put(format!("{HOME}/pack/p3"))
        .header(header::AUTHORIZATION, format!("Bearer {}", s.a))
        .body(Body::from_stream(chunks))
        .unwrap();
    let resp = s.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::INSUFFICIENT_STORAGE);
    assert_eq!(
        s.get(&format!("{HOME}/pack/p3"), &s.a).await.status,
        StatusCode::NOT_FOUND
    );
    let dir = s.dir.path().join("home").join(&HOME["/v1/home/".len()..]).join("pack");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["p1"]);
    // Another machine has a quota of its own.
    assert_eq!(
        s.put(&format!("{other}/pack/p1"), &s.b, &[2u8; 600]).await.status,
        StatusCode::CREATED
    );
    // Deleting gives room back.
    assert_eq!(
        s.req(Method::DELETE, &format!("{HOME}/pack/p1"), Some(&s.a), &[], b"")
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        s.put(&format!("{HOME}/pack/p4"), &s.a, &[4u8; 900]).await.status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn append_only_home_refuses_delete_and_overwrite_but_not_locks() {
    let s = Setup::with(|p| p.home_append_only = true);
    let obj = format!("{HOME}/snapshot/s1");
    assert_eq!(s.put(&obj, &s.a, b"first").await.status, StatusCode::CREATED);
    let r = s.put(&obj, &s.a, b"rewritten").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.error().contains("append-only"), "{}", r.error());
    let r = s.req(Method::DELETE, &obj, Some(&s.a), &[], b"").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.error().contains("append-only"), "{}", r.error());
    assert_eq!(&s.get(&obj, &s.a).await.body[..], b"first");
    // Create-only writes of existing objects are 412 as always.
    let r = s
        .req(Method::PUT, &obj, Some(&s.a), &[("if-none-match", "*")], b"x")
        .await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    // Locks come and go: a backup takes one and removes it.
    let lock = format!("{HOME}/lock/l1");
    assert_eq!(s.put(&lock, &s.a, b"held").await.status, StatusCode::CREATED);
    assert_eq!(s.put(&lock, &s.a, b"renewed").await.status, StatusCode::NO_CONTENT);
    assert_eq!(
        s.req(Method::DELETE, &lock, Some(&s.a), &[], b"").await.status,
        StatusCode::NO_CONTENT
    );
}
