//! A site cache (issue 14): Debian's nginx, configured by the documented
//! `dist/nginx/slate-site-cache.conf` (only its address, origin and cache
//! directory substituted), in front of a real `slate serve`. Five machines
//! update through it, and the origin's request log must show every
//! immutable object, and every slice of a pack, fetched from the origin
//! once, while assignments and reports (one machine's, with its token)
//! all reached the origin.
//!
//! nginx runs as a child in the foreground (`daemon off`) with everything
//! (pid file, logs, temporary files, cache) in the test's scratch
//! directory, on a free port of 127.0.0.1; its guard stops it by its pid.

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{small_tree, Lab, Reference, Slots};
use crate::support::{s, wait_timeout};

/// The documented configuration.
fn dist_conf() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist/nginx/slate-site-cache.conf")
}

/// The nginx binary, if installed (scripts/setup.sh installs it).
fn nginx_bin() -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin"])
        .map(|d| Path::new(d).join("nginx"))
        .find(|p| p.is_file());
    found
}

/// A free port on 127.0.0.1 (bound and released: nginx binds it next).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Replace `from` by `to` in `text`, where it must occur exactly once: a
/// change to the documented file that moves a value fails here, loudly.
fn substitute(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "{from:?} must occur once in dist/nginx/slate-site-cache.conf"
    );
    text.replace(from, to)
}

/// A running nginx with the site cache in front of `origin`.
pub(crate) struct SiteCache {
    child: Child,
    /// Its scratch directory (config, logs, cache).
    pub prefix: PathBuf,
    /// Its base URL.
    pub url: String,
}

impl Drop for SiteCache {
    fn drop(&mut self) {
        // SIGTERM to the master: it stops its workers (a SIGKILL would
        // leave them running); SIGKILL if it does not exit.
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        if wait_timeout(&mut self.child, Duration::from_secs(20)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl SiteCache {
    /// Start nginx in `prefix` (created) in front of `origin` (`http://HOST:PORT`).
    /// None when nginx is not installed.
    pub(crate) fn start(prefix: &Path, origin: &str) -> Option<SiteCache> {
        std::fs::create_dir_all(prefix.join("cache")).unwrap();
        let origin = origin.strip_prefix("http://").expect("a plain http origin");
        let port = free_port();
        let site = std::fs::read_to_string(dist_conf()).unwrap();
        let site = substitute(&site, "server 127.0.0.1:8470;", &format!("server {origin};"));
        let site = substitute(&site, "listen 8480;", &format!("listen 127.0.0.1:{port};"));
        let site = substitute(&site, "/var/cache/nginx/slate ", &format!("{}/cache ", s(prefix)));
        Self::run(prefix, port, &site)
    }

    /// Start nginx in `prefix` (created) as a plain web server of the
    /// repository objects under `root` (packs, snapshot records, deltas,
    /// at any depth: the configuration docs/scale.md shows for an objects
    /// URL), as a bucket's web endpoint or a CDN origin would serve them:
    /// static files, ranges answered 206, anything else 404. None when
    /// nginx is not installed.
    pub(crate) fn static_files(prefix: &Path, root: &Path) -> Option<SiteCache> {
        std::fs::create_dir_all(prefix).unwrap();
        let port = free_port();
        let site = format!(
            "server {{\n  listen 127.0.0.1:{port};\n  root {};\n  location / {{ return 404; }}\n  \
             location ~ \"/(packs|snapshots|deltas)/[0-9a-f]{{2,64}}/[0-9a-f]{{64}}\\.(pack|snap|delta)$\" {{ }}\n}}\n",
            s(root)
        );
        Self::run(prefix, port, &site)
    }

    /// Run nginx with `site` (listening on `port`) in its `http { }` block.
    fn run(prefix: &Path, port: u16, site: &str) -> Option<SiteCache> {
        let Some(bin) = nginx_bin() else {
            crate::support::skip("nginx is not installed (scripts/setup.sh installs it)");
            return None;
        };
        std::fs::write(prefix.join("site.conf"), site).unwrap();
        let p = s(prefix);
        // The main file a distribution's nginx.conf would be, confined to
        // the prefix; workers run as the test's user (root in CI, whose
        // scratch directory `nobody` could not write). The log shows the
        // Authorization header a client sent ("-": none).
        let user = if crate::support::is_root() { "user root;\n" } else { "" };
        let main = format!(
            "{user}daemon off;\nworker_processes 2;\npid {p}/nginx.pid;\nerror_log {p}/error.log info;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n\
               log_format cache '$request_method $uri range=$http_range status=$status bytes=$body_bytes_sent auth=$http_authorization cache=$upstream_cache_status';\n\
               access_log {p}/access.log cache;\n\
               client_body_temp_path {p}/body;\n proxy_temp_path {p}/proxy;\n fastcgi_temp_path {p}/fastcgi;\n\
               uwsgi_temp_path {p}/uwsgi;\n scgi_temp_path {p}/scgi;\n\
               include {p}/site.conf;\n\
             }}\n"
        );
        std::fs::write(prefix.join("nginx.conf"), main).unwrap();
        let child = Command::new(bin)
            .args([
                "-p",
                p,
                "-c",
                &format!("{p}/nginx.conf"),
                "-e",
                &format!("{p}/error.log"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run nginx");
        let mut cache = SiteCache {
            child,
            prefix: prefix.to_path_buf(),
            url: format!("http://127.0.0.1:{port}"),
        };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(st) = cache.child.try_wait().unwrap() {
                panic!("nginx exited ({st}):\n{}", cache.error_log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "nginx did not listen:\n{}",
                cache.error_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(cache)
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.prefix.join("error.log")).unwrap_or_default()
    }

    /// nginx's access log: one line per client request.
    pub(crate) fn access_log(&self) -> String {
        std::fs::read_to_string(self.prefix.join("access.log")).unwrap_or_default()
    }
}

/// One request the origin answered, from its log line.
#[derive(Debug, Clone)]
pub(crate) struct OriginRequest {
    pub method: String,
    pub uri: String,
    pub range: String,
    pub status: u16,
    pub bytes: Option<u64>,
}

/// The value of field `key` in a log line (`{key=` or ` key=`), up to the
/// next space or `}` (a value may hold `=`: `range=bytes=0-9`).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = [format!("{{{key}="), format!(" {key}=")]
        .iter()
        .filter_map(|p| line.find(p.as_str()))
        .min()?
        + key.len()
        + 2;
    let rest = &line[at..];
    let end = rest.find([' ', '}']).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// The requests in the origin's log (`slate serve`'s access log at info).
pub(crate) fn origin_requests(log: &str) -> Vec<OriginRequest> {
    log.lines()
        .filter(|l| l.contains("finished processing request"))
        .map(|l| OriginRequest {
            method: field(l, "method").unwrap_or_default().to_string(),
            uri: field(l, "uri").unwrap_or_default().to_string(),
            range: field(l, "range").unwrap_or_default().to_string(),
            status: field(l, "status").and_then(|v| v.parse().ok()).unwrap_or(0),
            bytes: field(l, "bytes").and_then(|v| v.parse().ok()),
        })
        .collect()
}

/// Whether `uri` names an immutable repository object (docs/format/http.md).
fn immutable(uri: &str) -> bool {
    uri.starts_with("/v1/repo/") && [".pack", ".idx", ".snap", ".delta"].iter().any(|e| uri.ends_with(e))
}

#[test]
fn machines_update_through_a_site_cache_and_the_origin_serves_each_object_once() {
    let mut lab = Lab::new();
    let ta = small_tree(&lab.path().join("tree-a"), 1, 256 << 10);
    // Several 1 MiB slices of new data, in more than one pack range.
    let tb = small_tree(&lab.path().join("tree-b"), 2, 6 << 20);
    lab.commit("a", &ta);
    lab.commit("b", &tb);
    let origin = lab.serve();
    let Some(cache) = SiteCache::start(&lab.path().join("nginx"), &origin) else {
        return;
    };
    let (ra, rb) = (Reference::of(&ta), Reference::of(&tb));

    let mut machines: Vec<_> = (0..5)
        .map(|i| {
            let mut m = lab.agent(&format!("site-{i}"), Slots::Dirs);
            m.via(&[&cache.url]);
            m
        })
        .collect();
    // The first install one after the other, the update all at once: the
    // cache collapses concurrent misses of a slice into one origin request.
    for m in &mut machines {
        m.target("a");
        assert_eq!(m.update()["result"], "ok");
        ra.check(&m.slot_path("a"));
    }
    for m in &mut machines {
        m.target("b");
    }
    let results: Vec<_> = std::thread::scope(|sc| {
        let handles: Vec<_> = machines.iter().map(|m| sc.spawn(|| m.update())).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (m, r) in machines.iter().zip(&results) {
        assert_eq!(r["result"], "ok", "{r}");
        assert_eq!(r["slot"], "b", "{r}");
        rb.check(&m.slot_path("b"));
        ra.check(&m.slot_path("a"));
    }
    let fetched: Vec<u64> = results.iter().map(|r| r["bytes_fetched"].as_u64().unwrap()).collect();

    let log = lab.server().log.lock().unwrap().clone();
    let reqs = origin_requests(&log);
    // Every immutable object, and every slice of one, left the origin once.
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for r in reqs.iter().filter(|r| immutable(&r.uri)) {
        assert_eq!(r.method, "GET", "{r:?}");
        *seen.entry((r.uri.clone(), r.range.clone())).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "fetched from the origin more than once: {twice:?}");
    // Packs were fetched in aligned 1 MiB slices, answered 206.
    let packs: Vec<_> = reqs.iter().filter(|r| r.uri.ends_with(".pack")).collect();
    assert!(!packs.is_empty(), "no pack reached the origin:\n{log}");
    for r in &packs {
        let (a, b) = r
            .range
            .strip_prefix("bytes=")
            .and_then(|v| v.split_once('-'))
            .unwrap_or_else(|| panic!("a pack without a slice range: {r:?}"));
        let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
        assert_eq!(a % (1 << 20), 0, "{r:?}");
        assert_eq!(b - a + 1, 1 << 20, "{r:?}");
        assert_eq!(r.status, 206, "{r:?}");
    }
    let origin_pack_bytes: u64 = packs.iter().filter_map(|r| r.bytes).sum();
    // The cache answered most object requests: five machines asked, the
    // origin saw each once.
    let access = cache.access_log();
    let pack_hits = access
        .lines()
        .filter(|l| l.contains(".pack ") && l.contains("cache=HIT"))
        .count();
    assert!(pack_hits > 0, "no pack request was a cache hit:\n{access}");
    // Machine-specific requests all went through to the origin, uncached:
    // an assignment and a report per pass (ten passes), none answered by
    // the cache.
    let count = |path: &str| {
        reqs.iter()
            .filter(|r| r.uri.starts_with(path) && r.method == "POST")
            .count()
    };
    assert!(count("/v1/fleet/assignment") >= 10, "{log}");
    assert!(count("/v1/fleet/report") >= 10, "{log}");
    for l in access.lines().filter(|l| l.contains("/v1/fleet/")) {
        assert!(l.ends_with("cache=-"), "a fleet request was cached: {l}");
    }
    eprintln!(
        "site cache: 5 machines fetched {fetched:?} bytes from it; the origin sent {origin_pack_bytes} bytes of packs \
         in {} slices, {pack_hits} pack requests were hits",
        packs.len()
    );
    // Each slice once: the origin sent at most the repository's packs, and
    // less than the five machines took from the cache.
    let pack_bytes: u64 = lab
        .packs()
        .iter()
        .map(|p| std::fs::metadata(lab.pack_path(p)).unwrap().len())
        .sum();
    assert!(
        origin_pack_bytes <= pack_bytes,
        "origin pack bytes {origin_pack_bytes} > the packs' {pack_bytes}"
    );
    assert!(
        origin_pack_bytes < fetched.iter().sum::<u64>(),
        "origin pack bytes {origin_pack_bytes} vs fetched {fetched:?}"
    );
}
