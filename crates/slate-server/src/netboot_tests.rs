//! Router tests of network boot: the iPXE scripts of `/v1/boot/ipxe` and
//! the kernels and initramfses of `/v1/boot/{id}/...`, over a real
//! repository with small trees committed, driven with
//! `tower::ServiceExt::oneshot`.

use std::path::{Path, PathBuf};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use slate_repo::commit::{commit, CommitOptions};
use slate_repo::progress::NoProgress;
use slate_repo::{Config, Repo};
use tower::ServiceExt;

use crate::fleet::{FleetConfig, SqliteStore};
use crate::{app, AppState};

/// `n` bytes that do not compress, different for each `seed`.
fn noise(seed: &str, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    blake3::Hasher::new()
        .update(seed.as_bytes())
        .finalize_xof()
        .fill(&mut b);
    b
}

/// Sizes: the plain tree's kernel spans several chunks and, in the big
/// variant, several 1 MiB steps of a stream.
const KERNEL: usize = 300_000;
const BIG_KERNEL: usize = 3 << 20;

/// Trees committed to channels of one repository.
struct Fixture {
    dir: tempfile::TempDir,
    /// Snapshot ids by channel.
    ids: Vec<(String, String)>,
}

/// Which tree to commit.
#[derive(Clone, Copy)]
enum Tree {
    /// boot/vmlinuz-1.2.3 and boot/initrd.img-1.2.3, and an older kernel.
    Plain,
    /// The plain tree's files, a lean boot/slate-netboot.img-1.2.3, a newer
    /// kernel with its initramfs, and /vmlinuz -> boot/vmlinuz-1.2.3.
    Netboot,
    /// No kernel at all.
    NoKernel,
    /// boot/vmlinuz-1.2.3 of BIG_KERNEL bytes, and its initramfs.
    Big,
}

impl Fixture {
    fn new(trees: &[(&str, Tree)]) -> Fixture {
        // /var/tmp, not a tmpfs /tmp: the repository behaves as on a disk.
        let dir = tempfile::Builder::new()
            .prefix("slate-netboot-test-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let repo = Repo::init(&dir.path().join("repo"), Config::default()).unwrap();
        let mut ids = Vec::new();
        for (n, (channel, kind)) in trees.iter().enumerate() {
            let tree = dir.path().join(format!("tree{n}"));
            std::fs::create_dir_all(tree.join("etc")).unwrap();
            std::fs::write(tree.join("etc/hostname"), format!("tree {n}\n")).unwrap();
            let boot = tree.join("boot");
            let w = |name: &str, data: Vec<u8>| {
                std::fs::create_dir_all(&boot).unwrap();
                std::fs::write(boot.join(name), data).unwrap();
            };
            match kind {
                Tree::Plain | Tree::Netboot => {
                    w("vmlinuz-1.2.3", noise("kernel 1.2.3", KERNEL));
                    w("initrd.img-1.2.3", noise("initrd 1.2.3", 200_000));
                    w("vmlinuz-1.2.0", noise("kernel 1.2.0", 1000));
                    w("initrd.img-1.2.0", noise("initrd 1.2.0", 1000));
                }
                Tree::NoKernel => {}
                Tree::Big => {
                    w("vmlinuz-1.2.3", noise("big kernel", BIG_KERNEL));
                    w("initrd.img-1.2.3", noise("initrd 1.2.3", 200_000));
                }
            }
            if let Tree::Netboot = kind {
                w("slate-netboot.img-1.2.3", noise("netboot 1.2.3", 150_000));
                w("vmlinuz-9.9", noise("kernel 9.9", 1000));
                w("initrd.img-9.9", noise("initrd 9.9", 1000));
                std::os::unix::fs::symlink("boot/vmlinuz-1.2.3", tree.join("vmlinuz")).unwrap();
            }
            let opts = CommitOptions {
                channel,
                message: format!("commit {n}"),
                sign: None,
                metadata: Vec::new(),
            };
            let id = commit(&repo, &tree, &opts, &NoProgress).unwrap().snapshot;
            ids.push((channel.to_string(), id));
        }
        Fixture { dir, ids }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    fn tree(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("tree{n}"))
    }

    /// The snapshot id committed to `channel`.
    fn id(&self, channel: &str) -> &str {
        &self.ids.iter().find(|(c, _)| c == channel).unwrap().1
    }

    fn app(&self, fleet: &str) -> Router {
        let repo = Repo::open(&self.root()).unwrap();
        let fleet = FleetConfig::parse(fleet, "FLEET.toml").unwrap();
        app(AppState::new(repo, fleet, SqliteStore::in_memory().unwrap()))
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: header::HeaderName) -> &str {
        self.headers.get(&name).map_or("", |v| v.to_str().unwrap())
    }
    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

async fn send(app: &Router, method: Method, uri: &str, headers: &[(&str, &str)]) -> Answer {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = app.clone().oneshot(b.body(Body::empty()).unwrap()).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    Answer { status, headers, body }
}

async fn get(app: &Router, uri: &str, headers: &[(&str, &str)]) -> Answer {
    send(app, Method::GET, uri, headers).await
}

/// GET as iPXE would, from a server reached as `boot.example:8470`.
async fn ipxe(app: &Router, query: &str) -> Answer {
    get(app, &format!("/v1/boot/ipxe?{query}"), &[("host", "boot.example:8470")]).await
}

const FLEET: &str = r#"
[default]
channel = "lab"

[[machine]]
name = "netboot machines"
mac = "52:54:00:12:34:56"
channel = "netboot"

[[machine]]
hostname = "bare-*"
channel = "bare"

[netboot]
kernel_cmdline = "console=ttyS0 quiet"
"#;

fn fixture() -> Fixture {
    Fixture::new(&[
        ("lab", Tree::Plain),
        ("netboot", Tree::Netboot),
        ("bare", Tree::NoKernel),
    ])
}

#[tokio::test]
async fn without_a_query_the_script_chains_to_itself() {
    let f = Fixture::new(&[("lab", Tree::Plain)]);
    let app = f.app("");
    let host = [("host", "boot.example:8470")];
    let a = get(&app, "/v1/boot/ipxe", &host).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header(header::CONTENT_TYPE), "text/plain; charset=utf-8");
    assert_eq!(a.header(header::CACHE_CONTROL), "no-store");
    assert_eq!(
        a.text(),
        "#!ipxe\n\
         # slate: ask again with this machine's identity (docs/format/http.md)\n\
         chain http://boot.example:8470/v1/boot/ipxe?mac=${net0/mac}&uuid=${uuid}&hostname=${hostname:uristring}\n"
    );
    // An empty query is no query.
    assert_eq!(get(&app, "/v1/boot/ipxe?", &host).await.text(), a.text());
    // The URL is absolute (qemu's and many firmware's iPXE resolve no
    // relative ones), so it needs to know how the machine reached it.
    assert_eq!(get(&app, "/v1/boot/ipxe", &[]).await.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_machine_script_names_its_rule_snapshot_and_servers() {
    let f = fixture();
    let app = f.app(FLEET);
    let id = f.id("netboot");
    let a = ipxe(&app, "mac=52%3A54%3A00%3A12%3A34%3A56&uuid=&hostname=").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header(header::CACHE_CONTROL), "no-store");
    assert_eq!(
        a.text(),
        format!(
            "#!ipxe\n\
             # slate: machine mac:52:54:00:12:34:56, rule netboot machines, snapshot {id}\n\
             kernel http://boot.example:8470/v1/boot/{id}/kernel initrd=initrd boot=slate-net slate.mode=diskless \
             slate.snapshot={id} slate.server=http://boot.example:8470 ip=dhcp SYSTEMD_IN_INITRD=0 console=ttyS0 quiet\n\
             initrd --name initrd http://boot.example:8470/v1/boot/{id}/initrd\n\
             boot\n"
        )
    );

    // Another machine: [default], named by its UUID as the agent names it.
    let lab = f.id("lab");
    let a = ipxe(
        &app,
        "mac=52:54:00:00:00:01&uuid=4C4C4544-0042-3510-8052-B7C04F4E3132&hostname=lab-07",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let lines: Vec<&str> = a.text().lines().collect();
    assert_eq!(
        lines[1],
        format!("# slate: machine dmi:4c4c4544-0042-3510-8052-b7c04f4e3132, rule default, snapshot {lab}")
    );
    assert!(lines[2].starts_with(&format!(
        "kernel http://boot.example:8470/v1/boot/{lab}/kernel initrd=initrd "
    )));

    // The servers of [netboot], and the default command line.
    let app = f.app(&format!(
        "{}\n[netboot]\nserver = [\"https://a.example/\", \"http://10.0.0.2:8470\"]\n",
        FLEET.split("[netboot]").next().unwrap()
    ));
    let a = get(&app, "/v1/boot/ipxe?mac=52:54:00:12:34:56", &[]).await;
    assert!(
        a.text().contains(&format!(
            "slate.snapshot={id} slate.server=https://a.example,http://10.0.0.2:8470 ip=dhcp SYSTEMD_IN_INITRD=0 \
             console=tty0 console=ttyS0,115200\n"
        )),
        "{}",
        a.text()
    );
}

#[tokio::test]
async fn a_machine_the_fleet_does_not_boot_is_told_why_on_its_console() {
    let f = fixture();
    let app = f.app("[[machine]]\nname = \"only ${this} one\"\nmac = \"52:54:00:12:34:56\"\nchannel = \"netboot\"\n");
    let a = ipxe(&app, "mac=52:54:00:00:00:02&uuid=&hostname=kiosk-1").await;
    // 200, so that iPXE runs it and the console shows the reason.
    assert_eq!(a.status, StatusCode::OK);
    let text = a.text();
    assert!(
        text.starts_with("#!ipxe\n# slate: machine mac:52:54:00:00:00:02: no network boot\n"),
        "{text}"
    );
    assert!(
        text.contains("\necho slate: no fleet rule matches machine mac:52:54:00:00:00:02 (hostname kiosk-1, macs 52:54:00:00:00:02)"),
        "{text}"
    );
    assert!(text.ends_with("\nsleep 30\nexit 1\n"), "{text}");

    // A rule whose channel has no snapshot says so too.
    let app = f.app("[default]\nchannel = \"nothing/here\"\n");
    let text = ipxe(&app, "mac=52:54:00:00:00:02").await.text().to_string();
    assert!(
        text.contains("echo slate: channel nothing/here (fleet rule default) has no snapshots"),
        "{text}"
    );

    // The rule's name goes into the comment with its `$` defused.
    let app = f.app("[[machine]]\nname = \"only ${this} one\"\nmac = \"52:54:00:12:34:56\"\nchannel = \"netboot\"\n");
    let text = ipxe(&app, "mac=52:54:00:12:34:56").await.text().to_string();
    assert!(text.contains("rule only ?{this} one, snapshot"), "{text}");
    assert!(!text.contains('$'));
}

#[tokio::test]
async fn hostile_query_values_are_refused() {
    let f = fixture();
    let app = f.app(FLEET);
    let long = "a".repeat(300);
    for query in [
        "mac=52:54:00:12:34:56%0Akernel%20http://evil/x",
        "mac=52:54:00:12:34:56&hostname=lab%0Aboot",
        "mac=52:54:00:12:34:56&hostname=a%24%7Bnet0/ip%7D",
        "mac=52:54:00:12:34:56&hostname=a%20b",
        "uuid=%24%7Buuid%7D%0A",
        &format!("mac=52:54:00:12:34:56&hostname={long}"),
        &format!("mac=52:54:00:12:34:56&x={}", "y".repeat(2000)),
        "mac=52:54:00:12:34:56&mac=52:54:00:12:34:57",
        "mac=&uuid=&hostname=",
        "mac=%24%7Bnet0/mac%7D&uuid=%24%7Buuid%7D&hostname=%24%7Bhostname:uristring%7D",
    ] {
        let a = ipxe(&app, query).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{query}");
        assert!(!a.text().contains("#!ipxe"), "{query}");
        let err: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert!(err["error"].as_str().is_some(), "{query}");
    }
    // A Host header that could break out of the kernel parameter, or none.
    for host in [&[("host", "a,b")][..], &[("host", "x y")], &[]] {
        let a = get(&app, "/v1/boot/ipxe?mac=52:54:00:12:34:56", host).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{host:?}");
        assert!(a.text().contains("[netboot] server"), "{}", a.text());
    }
}

/// The expected bytes of `path` in committed tree `n`.
fn tree_file(f: &Fixture, n: usize, path: &str) -> Vec<u8> {
    std::fs::read(f.tree(n).join(path)).unwrap()
}

#[tokio::test]
async fn kernel_and_initrd_are_the_trees_files() {
    let f = fixture();
    let app = f.app(FLEET);
    for (n, channel, kernel, initrd) in [
        (0, "lab", "boot/vmlinuz-1.2.3", "boot/initrd.img-1.2.3"),
        // The /vmlinuz link decides over the newer 9.9, and the lean
        // initramfs is preferred.
        (1, "netboot", "boot/vmlinuz-1.2.3", "boot/slate-netboot.img-1.2.3"),
    ] {
        let id = f.id(channel);
        for (file, path) in [("kernel", kernel), ("initrd", initrd)] {
            let uri = format!("/v1/boot/{id}/{file}");
            let want = tree_file(&f, n, path);
            // Twice: resolved, then from the cache.
            for _ in 0..2 {
                let a = get(&app, &uri, &[]).await;
                assert_eq!(a.status, StatusCode::OK, "{uri}");
                assert!(a.body[..] == want[..], "{uri}: the bytes of {path}");
                assert_eq!(a.header(header::CONTENT_LENGTH), want.len().to_string());
                assert_eq!(a.header(header::CACHE_CONTROL), "public, max-age=31536000, immutable");
                assert_eq!(a.header(header::ETAG), format!("\"{id}-{file}\""));
                assert_eq!(a.header(header::ACCEPT_RANGES), "bytes");
                assert_eq!(a.header(header::CONTENT_TYPE), "application/octet-stream");
            }
            let etag = format!("\"{id}-{file}\"");
            let a = get(&app, &uri, &[("if-none-match", &etag)]).await;
            assert_eq!(a.status, StatusCode::NOT_MODIFIED);
            assert!(a.body.is_empty());
            let a = send(&app, Method::HEAD, &uri, &[]).await;
            assert_eq!(a.status, StatusCode::OK);
            assert_eq!(a.header(header::CONTENT_LENGTH), want.len().to_string());
            assert!(a.body.is_empty());
        }
    }
}

#[tokio::test]
async fn boot_files_answer_ranges() {
    let f = Fixture::new(&[("lab", Tree::Plain), ("big", Tree::Big)]);
    let app = f.app(FLEET);
    for (n, channel, len) in [(0, "lab", KERNEL), (1, "big", BIG_KERNEL)] {
        let uri = format!("/v1/boot/{}/kernel", f.id(channel));
        let want = tree_file(&f, n, "boot/vmlinuz-1.2.3");
        // Within a chunk, across chunks, across 1 MiB steps, the tail.
        for (range, start, end) in [
            ("bytes=0-99".to_string(), 0, 99),
            ("bytes=1000-200000".to_string(), 1000, 200_000),
            (format!("bytes=70000-{}", len - 3), 70_000, len - 3),
            ("bytes=-10".to_string(), len - 10, len - 1),
            (format!("bytes={}-", len - 1), len - 1, len - 1),
        ] {
            let a = get(&app, &uri, &[("range", &range)]).await;
            assert_eq!(a.status, StatusCode::PARTIAL_CONTENT, "{range}");
            assert_eq!(a.header(header::CONTENT_RANGE), format!("bytes {start}-{end}/{len}"));
            assert_eq!(a.header(header::CONTENT_LENGTH), (end - start + 1).to_string());
            assert!(a.body[..] == want[start..=end], "{uri} {range}");
        }
        let a = get(&app, &uri, &[("range", &format!("bytes={len}-"))]).await;
        assert_eq!(a.status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(a.header(header::CONTENT_RANGE), format!("bytes */{len}"));
    }
    // The big kernel whole: several steps of the stream.
    let a = get(&app, &format!("/v1/boot/{}/kernel", f.id("big")), &[]).await;
    assert!(a.body[..] == tree_file(&f, 1, "boot/vmlinuz-1.2.3")[..]);
}

#[tokio::test]
async fn unknown_snapshots_and_files_are_404() {
    let f = fixture();
    let app = f.app(FLEET);
    let id = f.id("lab");
    let unknown = "ab".repeat(32);
    let bare = f.id("bare");
    for (uri, needle) in [
        (format!("/v1/boot/{unknown}/kernel"), "there is no snapshot"),
        (format!("/v1/boot/{unknown}/initrd"), "there is no snapshot"),
        (format!("/v1/boot/{}/kernel", id.to_uppercase()), "64 lower-case hex"),
        (format!("/v1/boot/{}/kernel", &id[..63]), "64 lower-case hex"),
        (format!("/v1/boot/{id}/vmlinuz"), "no such file"),
        (format!("/v1/boot/{id}/kernel/x"), "no such"),
        (format!("/v1/boot/{bare}/kernel"), "has no kernel"),
        (format!("/v1/boot/{bare}/initrd"), "has no initramfs"),
    ] {
        let a = get(&app, &uri, &[]).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{uri}");
        assert!(a.text().contains(needle), "{uri}: {}", a.text());
    }
}

/// Flip a byte of the pack that holds `data`'s bytes at `at` (noise is
/// stored as is in its zstd frame, so it can be found in the pack).
fn corrupt(root: &Path, data: &[u8], at: usize) {
    use std::io::{Seek, SeekFrom, Write};
    let needle = &data[at..at + 64];
    let mut stack = vec![root.join("packs")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "pack") {
                let bytes = std::fs::read(&p).unwrap();
                if let Some(i) = bytes.windows(64).position(|w| w == needle) {
                    let mut file = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
                    file.seek(SeekFrom::Start(i as u64 + 10)).unwrap();
                    file.write_all(&[bytes[i + 10] ^ 0xff]).unwrap();
                    return;
                }
            }
        }
    }
    panic!("the bytes are in no pack");
}

#[tokio::test]
async fn a_corrupt_chunk_is_an_error_never_bad_bytes() {
    let f = Fixture::new(&[("big", Tree::Big)]);
    let app = f.app(FLEET);
    let uri = format!("/v1/boot/{}/kernel", f.id("big"));
    let kernel = tree_file(&f, 0, "boot/vmlinuz-1.2.3");
    // Resolved and checked while the repository is sound.
    assert_eq!(send(&app, Method::HEAD, &uri, &[]).await.status, StatusCode::OK);

    // Rotten past the first step: the answer has begun, so the stream is
    // cut before the bad chunk's bytes.
    corrupt(&f.root(), &kernel, BIG_KERNEL - 200_000);
    let resp = app
        .clone()
        .oneshot(Request::get(&uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(axum::body::to_bytes(resp.into_body(), usize::MAX).await.is_err());

    // The next request resolves again, finds the damage, and says 500.
    let a = get(&app, &uri, &[]).await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(a.text(), r#"{"error":"internal server error"}"#);
    // A range before the damage: still refused (the file is checked whole).
    let a = get(&app, &uri, &[("range", "bytes=0-9")]).await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn a_corrupt_repository_is_a_500_from_the_first_request() {
    let f = Fixture::new(&[("lab", Tree::Plain)]);
    let app = f.app(FLEET);
    corrupt(&f.root(), &tree_file(&f, 0, "boot/initrd.img-1.2.3"), 100_000);
    let id = f.id("lab");
    let a = get(&app, &format!("/v1/boot/{id}/initrd"), &[]).await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    // The machine's boot script is still served: it names the snapshot only.
    assert_eq!(ipxe(&app, "mac=52:54:00:00:00:09").await.status, StatusCode::OK);
}
