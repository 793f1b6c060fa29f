//! Objects URLs (issue 14, docs/scale.md "Agents and the bucket"): `slate
//! serve --objects-url URL` names, in the signed assignment, a plain web
//! server holding the repository's files, and agents fetch immutable
//! objects from it by the repository's own paths before asking `slate
//! serve`. The web server is Debian's nginx serving a directory (what a
//! bucket's web endpoint or a CDN does), started by the site cache test's
//! harness with its access log showing any `Authorization` header.
//!
//! Checked from the logs of both servers: with a faithful copy, no pack
//! and no snapshot record reaches `slate serve` and the machine token never
//! reaches the web server; with a web server that answers 404 and one
//! that serves a forged record and a corrupted pack, the agent refuses
//! those bytes, gets exactly those objects from `slate serve`, and the
//! slot is still bit for bit the snapshot.

use std::path::Path;
use std::process::Output;

use serde_json::Value;

use super::sitecache::{origin_requests, SiteCache};
use super::{small_tree, Agent, Lab, Reference, Slots};
use crate::support::s;

/// `slate update --json` for `m`, which must succeed: its result line and
/// its stderr (the agent's log at its default level, warnings).
fn update_logged(m: &Agent) -> (Value, String) {
    let mut c = m.command("update");
    c.arg("--json");
    let out: Output = m.output(c);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "slate update ({}) failed:\n{stderr}", m.name);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.contains("\"event\":\"result\""))
        .unwrap_or_else(|| panic!("no result line in:\n{stdout}"));
    (serde_json::from_str(line).unwrap(), stderr)
}

/// The token in `m`'s token file.
fn token(m: &Agent) -> String {
    std::fs::read_to_string(&m.token_file).unwrap().trim().to_string()
}

/// The GET requests `slate serve` answered for repository objects ending in `ext`.
fn served(lab: &Lab, ext: &str) -> Vec<super::sitecache::OriginRequest> {
    let log = lab.server().log.lock().unwrap().clone();
    origin_requests(&log)
        .into_iter()
        .filter(|r| r.uri.starts_with("/v1/repo/") && r.uri.ends_with(ext))
        .collect()
}

/// nginx's access log lines for `ext` files.
fn web_lines<'a>(access: &'a str, ext: &str) -> Vec<&'a str> {
    access.lines().filter(|l| l.contains(&format!("{ext} "))).collect()
}

/// No request reached the web server with an `Authorization` header, and
/// the machine's token appears nowhere in its log.
fn assert_no_token(access: &str, m: &Agent) {
    assert!(!access.is_empty(), "the web server saw no request");
    for l in access.lines() {
        assert!(
            l.contains(" auth=- "),
            "a request to the objects URL carried Authorization: {l}"
        );
    }
    assert!(
        !access.contains(&token(m)),
        "the machine token reached the objects URL:\n{access}"
    );
}

/// Flip one byte in the middle of `path`.
fn corrupt(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn an_agent_fetches_packs_and_records_from_the_objects_url_and_never_sends_it_the_token() {
    let mut lab = Lab::new();
    let ta = small_tree(&lab.path().join("tree-a"), 1, 256 << 10);
    let tb = small_tree(&lab.path().join("tree-b"), 2, 6 << 20);
    lab.commit("a", &ta);
    lab.commit("b", &tb);
    // The repository directory as it is, served as static files.
    let repo = lab.path().join("repo");
    let Some(web) = SiteCache::static_files(&lab.path().join("web"), &repo) else {
        return;
    };
    lab.extra_serve = vec!["--objects-url".into(), format!("{}/", web.url)];
    lab.serve();
    let (ra, rb) = (Reference::of(&ta), Reference::of(&tb));
    let mut m = lab.agent("objects-1", Slots::Dirs);

    m.target("a");
    let (r, log_a) = update_logged(&m);
    assert_eq!(r["result"], "ok", "{r}");
    ra.check(&m.slot_path("a"));
    m.target("b");
    let (r, log_b) = update_logged(&m);
    assert_eq!(r["result"], "ok", "{r}");
    assert_eq!(r["slot"], "b", "{r}");
    rb.check(&m.slot_path("b"));
    ra.check(&m.slot_path("a"));
    assert_eq!(m.cache_leftovers(), 0, "the pass left downloads behind");
    // Nothing failed over: no warning about the objects URL.
    for log in [&log_a, &log_b] {
        assert!(!log.contains("objects URL"), "{log}");
    }

    // slate serve: no pack and no snapshot record; the pack indexes,
    // signatures, assignments and reports, as documented.
    let packs = served(&lab, ".pack");
    assert!(packs.is_empty(), "packs fetched from slate serve: {packs:?}");
    let snaps = served(&lab, ".snap");
    assert!(snaps.is_empty(), "snapshot records fetched from slate serve: {snaps:?}");
    assert!(!served(&lab, ".idx").is_empty(), "pack indexes come from slate serve");
    assert!(!served(&lab, ".sig").is_empty(), "signatures come from slate serve");
    assert!(!lab.server().requests("/v1/fleet/report").is_empty());
    // The web server: every pack byte, in ranges answered 206, the
    // records, and nothing with a token.
    let access = web.access_log();
    let pack_lines = web_lines(&access, ".pack");
    assert!(pack_lines.len() >= 2, "{access}");
    for l in &pack_lines {
        assert!(l.contains("range=bytes=") && l.contains("status=206"), "{l}");
    }
    assert_eq!(web_lines(&access, ".snap").len(), 2, "{access}");
    assert!(
        web_lines(&access, ".idx").is_empty(),
        "indexes are not taken from an objects URL:\n{access}"
    );
    assert!(
        web_lines(&access, ".sig").is_empty(),
        "signatures are not taken from an objects URL:\n{access}"
    );
    assert!(
        !access.contains("/v1/"),
        "a fleet request went to the objects URL:\n{access}"
    );
    assert_no_token(&access, &m);
}

#[test]
fn forged_and_missing_objects_are_refused_and_fetched_from_slate_serve() {
    let mut lab = Lab::new();
    let ta = small_tree(&lab.path().join("tree-a"), 1, 256 << 10);
    let before = {
        lab.commit("a", &ta);
        lab.packs()
    };
    let tb = small_tree(&lab.path().join("tree-b"), 2, 6 << 20);
    let idb = lab.commit("b", &tb);
    // Two objects URLs on one web server: `empty/` answers 404 for
    // everything; `forged/` is a copy of the repository whose record of b
    // and whose largest new pack have one byte flipped.
    let www = lab.path().join("www");
    std::fs::create_dir_all(www.join("empty")).unwrap();
    let forged = www.join("forged");
    let st = std::process::Command::new("cp")
        .args(["-a", s(&lab.path().join("repo")), s(&forged)])
        .status()
        .unwrap();
    assert!(st.success());
    let pack = lab
        .packs()
        .into_iter()
        .filter(|p| !before.contains(p))
        .max_by_key(|p| std::fs::metadata(lab.pack_path(p)).unwrap().len())
        .expect("b added a pack");
    corrupt(&forged.join("packs").join(&pack[..2]).join(format!("{pack}.pack")));
    corrupt(&forged.join("snapshots").join(&idb[..2]).join(format!("{idb}.snap")));
    let Some(web) = SiteCache::static_files(&lab.path().join("web"), &www) else {
        return;
    };
    let (empty, forged_url) = (format!("{}/empty", web.url), format!("{}/forged", web.url));
    lab.extra_serve = vec![
        "--objects-url".into(),
        empty.clone(),
        "--objects-url".into(),
        forged_url.clone(),
    ];
    lab.serve();
    let (ra, rb) = (Reference::of(&ta), Reference::of(&tb));
    let mut m = lab.agent("objects-2", Slots::Dirs);
    m.target("a");
    let (r, log_a) = update_logged(&m);
    assert_eq!(r["result"], "ok", "{r}");
    ra.check(&m.slot_path("a"));
    // The empty one answered 404, was passed over with one line each time,
    // and dropped for the pass after three failures.
    assert!(
        log_a.contains(&format!("objects URL {empty}: ")) && log_a.contains("404"),
        "{log_a}"
    );
    assert!(log_a.contains(&format!("asking {forged_url} instead")), "{log_a}");
    assert!(log_a.contains("failed 3 times"), "{log_a}");
    let serve_packs_a = served(&lab, ".pack").len();
    assert_eq!(serve_packs_a, 0, "a's packs are intact on the objects URL");

    m.target("b");
    let (r, log_b) = update_logged(&m);
    assert_eq!(r["result"], "ok", "{r}");
    assert_eq!(r["slot"], "b", "{r}");
    // Bit for bit b, nothing of the forged bytes, nothing left over.
    rb.check(&m.slot_path("b"));
    ra.check(&m.slot_path("a"));
    assert_eq!(m.cache_leftovers(), 0, "the pass left downloads behind");
    // The forged record and the corrupted range were offered, refused
    // (one line each) and fetched from slate serve.
    let refused: Vec<&str> = log_b
        .lines()
        .filter(|l| l.contains(&format!("objects URL {forged_url}: ")) && l.contains("refused"))
        .collect();
    assert!(
        refused.iter().any(|l| l.contains(&format!("snapshot {idb}"))),
        "the forged record was not refused:\n{log_b}"
    );
    let refused_ranges: Vec<&&str> = refused.iter().filter(|l| l.contains(&pack)).collect();
    assert!(
        !refused_ranges.is_empty(),
        "the corrupted pack was not refused:\n{log_b}"
    );
    let snaps = served(&lab, ".snap");
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert!(snaps[0].uri.contains(&idb), "{snaps:?}");
    // From slate serve: only ranges of the corrupted pack, one per refusal.
    let packs = served(&lab, ".pack");
    assert!(!packs.is_empty(), "nothing fell back to slate serve");
    assert!(packs.len() <= refused_ranges.len(), "{packs:?}\n{log_b}");
    for p in &packs {
        assert!(p.uri.contains(&pack), "an intact pack came from slate serve: {p:?}");
        assert_eq!(p.status, 206, "{p:?}");
    }
    // The forged server did serve that pack, and more ranges than fell back.
    let access = web.access_log();
    let forged_packs = access
        .lines()
        .filter(|l| l.contains("/forged/packs/") && l.contains("status=206"))
        .count();
    assert!(forged_packs > packs.len(), "{access}");
    assert_no_token(&access, &m);
}

#[test]
fn serve_refuses_a_bad_objects_url_in_one_line() {
    for (args, want) in [
        (
            vec!["--objects-url", "ftp://x/os"],
            "must start with http:// or https://",
        ),
        (vec!["--objects-url", "https://x/os?a=b"], "query"),
    ] {
        let dir = crate::support::scratch();
        let repo = dir.path().join("repo");
        crate::support::slate_ok(&["init", "--repo", s(&repo)]);
        let mut all = vec!["serve", "--repo", s(&repo), "--listen", "127.0.0.1:0"];
        all.extend(args);
        let err = crate::support::slate_err(&all);
        assert!(err.contains(want), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    // Without a fleet key the URLs could never be used.
    let dir = crate::support::scratch();
    let repo = dir.path().join("repo");
    crate::support::slate_ok(&["init", "--repo", s(&repo)]);
    let err = crate::support::slate_err(&[
        "serve",
        "--repo",
        s(&repo),
        "--listen",
        "127.0.0.1:0",
        "--objects-url",
        "http://127.0.0.1:9/os",
    ]);
    assert!(err.contains("--objects-url needs --fleet-key"), "{err}");
}
