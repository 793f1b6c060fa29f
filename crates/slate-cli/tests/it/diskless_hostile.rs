//! The network boot's first question, played by an attacker: `slate
//! netboot root` (the initramfs step) run on this machine against a
//! server in the middle that forwards to the real `slate serve` and
//! changes its answer. Every forged, swapped or stripped boot assignment
//! is refused with one line that says so, and no root is mounted.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;

use crate::support::{is_root, s, scratch, slate_bin, slate_ok, FleetKey, Server};

/// One HTTP/1.1 request from `conn`: (request line, body).
fn read_request(conn: &mut TcpStream) -> (String, Vec<u8>) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let mut length = 0;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        if h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).unwrap();
    (line, body)
}

/// POST `body` to `path` on `upstream` (host:port); the answer's body.
fn forward(upstream: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut c = TcpStream::connect(upstream).unwrap();
    write!(
        c,
        "POST {path} HTTP/1.1\r\nHost: {upstream}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    c.write_all(body).unwrap();
    let mut all = Vec::new();
    c.read_to_end(&mut all).unwrap();
    let at = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    all[at..].to_vec()
}

/// A server in the middle on 127.0.0.1: each request's JSON goes through
/// `on_request`, upstream's answer through `on_answer`. Runs until the
/// test ends (its thread dies with the test binary's scope).
fn middle(upstream: String, on_request: fn(&mut serde_json::Value), on_answer: fn(&mut serde_json::Value)) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            let (line, body) = read_request(&mut conn);
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let mut req: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            on_request(&mut req);
            let answer = forward(&upstream, &path, &serde_json::to_vec(&req).unwrap());
            let mut doc: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
            on_answer(&mut doc);
            let out = serde_json::to_vec(&doc).unwrap();
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                out.len()
            );
            let _ = conn.write_all(&out);
        }
    });
    url
}

/// Unmounts what `slate netboot root` mounted under its run directory.
struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        for m in ["ram", "disk"] {
            let _ = Command::new("umount")
                .arg(self.0.join(m))
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

fn keys_dir(dir: &Path, name: &str, release: &Path, fleet: &Path) -> std::path::PathBuf {
    let k = dir.join(name);
    std::fs::create_dir_all(&k).unwrap();
    std::fs::copy(release, k.join("release-1.pub")).unwrap();
    std::fs::copy(fleet, k.join("fleet-1.pub")).unwrap();
    k
}

#[test]
fn forged_swapped_and_stripped_boot_assignments_are_refused() {
    if !is_root() {
        crate::support::skip("needs root (the network boot step mounts its cache)");
        return;
    }
    let t = scratch();
    let dir = t.path();
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/hostname"), "lab\n").unwrap();
    slate_ok(&["init", "--repo", s(&dir.join("repo"))]);
    slate_ok(&["keygen", "--out", s(&dir.join("release.key"))]);
    let id = slate_ok(&[
        "commit",
        "--repo",
        s(&dir.join("repo")),
        "--channel",
        "lab",
        "--sign",
        s(&dir.join("release.key")),
        s(&tree),
    ])
    .trim()
    .to_string();
    std::fs::write(dir.join("FLEET.toml"), "[default]\nchannel = \"lab\"\n").unwrap();
    let server = Server::start_signed(
        dir,
        &["--repo", s(&dir.join("repo")), "--fleet", s(&dir.join("FLEET.toml"))],
    );
    let upstream = server
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let fleet = FleetKey::in_dir(dir);
    slate_ok(&["keygen", "--out", s(&dir.join("stranger.key"))]);
    let release_pub = dir.join("release.key.pub");
    let trusted = keys_dir(dir, "keys", &release_pub, &fleet.public);
    let stranger = keys_dir(dir, "stranger-keys", &release_pub, &dir.join("stranger.key.pub"));

    let keep = |_: &mut serde_json::Value| {};
    let cases: Vec<(&str, String, &Path, &str)> = vec![
        // The real server's answer, but this machine's initramfs trusts
        // another fleet key (an attacker's server signs with its own).
        (
            "a stranger's key",
            middle(upstream.clone(), keep, keep),
            &stranger,
            "refusing the assignment",
        ),
        // A valid answer for another machine, replayed to this one.
        (
            "another machine's",
            middle(upstream.clone(), |r| r["machine"]["id"] = "someone-else".into(), keep),
            &trusted,
            "refusing the assignment",
        ),
        // This machine's answer with another snapshot written in.
        (
            "a swapped snapshot",
            middle(upstream.clone(), keep, |a| a["snapshot"] = "cd".repeat(32).into()),
            &trusted,
            "refusing the assignment",
        ),
        // The signature taken away.
        (
            "no signature",
            middle(upstream.clone(), keep, |a| {
                a.as_object_mut().unwrap().remove("signature");
            }),
            &trusted,
            "not signed",
        ),
    ];
    for (what, url, keys, says) in cases {
        let name: String = what.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
        let run = dir.join(format!("run-{name}"));
        let root = dir.join(format!("root-{name}"));
        std::fs::create_dir_all(&root).unwrap();
        let cmdline = dir.join("cmdline");
        std::fs::write(
            &cmdline,
            format!(
                "boot=slate-net slate.mode=diskless slate.snapshot={id} slate.server={url} slate.cache=ram ip=dhcp\n"
            ),
        )
        .unwrap();
        let _unmount = Unmount(&run);
        let out = Command::new(slate_bin())
            .args(["netboot", "root", "--root", s(&root)])
            .args(["--cmdline", s(&cmdline), "--keys", s(keys), "--run-dir", s(&run)])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: booted anyway: {err}");
        assert!(err.contains(says), "{what}: the error says why: {err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{what}: one clear line: {err}");
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        assert!(!mounts.contains(s(&root)), "{what}: a root was mounted");
        assert!(!run.join("info.json").exists(), "{what}: the boot's files were written");
    }
    drop(server);
}
