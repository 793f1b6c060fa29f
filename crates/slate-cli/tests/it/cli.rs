//! The commands as the README documents them.

use std::path::Path;

use crate::support::{s, scratch, slate_err, slate_ok};

/// A small tree: a few files, a symlink, a subdirectory.
fn small_tree(root: &Path, version: u32) {
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::write(
        root.join("etc/os-release"),
        format!("PRETTY_NAME=\"Test OS {version}\"\nID=test\nVERSION_ID={version}\n"),
    )
    .unwrap();
    std::fs::write(root.join("usr/bin/tool"), vec![7u8; 300_000]).unwrap();
    std::fs::write(root.join("etc/version"), format!("{version}\n")).unwrap();
    let _ = std::os::unix::fs::symlink("../usr/bin/tool", root.join("etc/tool-link"));
}

fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn commit_log_ls_diff_cat_and_verify() {
    let t = scratch();
    let repo = t.path().join("repo");
    let key = t.path().join("signing.key");
    let tree = t.path().join("tree");
    slate_ok(&["init", "--repo", s(&repo)]);
    slate_ok(&["keygen", "--out", s(&key)]);
    assert!(t.path().join("signing.key.pub").exists());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);

    small_tree(&tree, 1);
    let id1 = slate_ok(&[
        "commit",
        "--repo",
        s(&repo),
        "--channel",
        "os/lab",
        "--sign",
        s(&key),
        "-m",
        "one",
        s(&tree),
    ]);
    std::fs::write(tree.join("etc/new-file"), b"new").unwrap();
    small_tree(&tree, 2);
    std::fs::remove_file(tree.join("etc/tool-link")).unwrap();
    let id2 = slate_ok(&[
        "commit",
        "--repo",
        s(&repo),
        "--channel",
        "os/lab",
        "--sign",
        s(&key),
        "-m",
        "two",
        s(&tree),
    ]);
    let (id1, id2) = (id1.trim(), id2.trim());
    assert_ne!(id1, id2);

    // log: newest first, with the parent chain, metadata and signer.
    let log = json_lines(&slate_ok(&["log", "--repo", s(&repo), "--json", "os/lab"]));
    assert_eq!(log.len(), 2);
    assert_eq!(log[0]["snapshot"], id2);
    assert_eq!(log[0]["parent"], id1);
    assert_eq!(log[0]["message"], "two");
    assert_eq!(log[0]["metadata"]["PRETTY_NAME"], "Test OS 2");
    assert_eq!(log[1]["metadata"]["VERSION_ID"], "1");
    assert_eq!(log[0]["signed_by"].as_array().unwrap().len(), 1);
    let human = slate_ok(&["log", "--repo", s(&repo), "os/lab"]);
    assert!(human.contains("OS:      Test OS 2") && human.contains(id1), "{human}");

    // ls: direct entries, recursive, and one file.
    let ls = slate_ok(&["ls", "--repo", s(&repo), "os/lab~1", "/etc"]);
    assert!(ls.contains(" /etc/tool-link -> ../usr/bin/tool"), "{ls}");
    assert!(!ls.contains(" /usr/bin"), "non-recursive ls stays in /etc: {ls}");
    let all = json_lines(&slate_ok(&["ls", "--repo", s(&repo), "--json", "-R", "os/lab", "/"]));
    let tool = all.iter().find(|e| e["path"] == "/usr/bin/tool").expect("tool listed");
    assert_eq!(tool["size"], 300_000);
    assert_eq!(tool["type"], "f");

    // diff: A, D, M lines, and a stat with bytes needed.
    let diff = slate_ok(&["diff", "--repo", s(&repo), id1, id2]);
    for want in [
        "A /etc/new-file",
        "D /etc/tool-link",
        "M /etc/version",
        "M /etc/os-release",
    ] {
        assert!(diff.contains(want), "missing {want:?} in:\n{diff}");
    }
    assert!(
        !diff.contains("M /usr/bin/tool"),
        "a file rewritten with the same bytes is a metadata change only:\n{diff}"
    );
    let stat = json_lines(&slate_ok(&[
        "diff",
        "--repo",
        s(&repo),
        "--json",
        "--stat",
        "os/lab~1",
        "os/lab",
    ]));
    assert_eq!(stat[0]["added"], 1);
    assert_eq!(stat[0]["removed"], 1);
    assert!(
        stat[0]["new_bytes"].as_u64().unwrap() < 1000,
        "only small files changed: {}",
        stat[0]
    );

    // cat
    assert_eq!(
        slate_ok(&["cat", "--repo", s(&repo), "os/lab~1", "/etc/version"]),
        "1\n"
    );
    let err = slate_err(&["cat", "--repo", s(&repo), "os/lab", "/etc"]);
    assert!(err.contains("not a regular file"), "{err}");

    // verify, with and without trust
    slate_ok(&["verify", "--repo", s(&repo), "--trust", &format!("{}.pub", s(&key))]);
    let other = t.path().join("other.key");
    slate_ok(&["keygen", "--out", s(&other)]);
    let err = slate_err(&["verify", "--repo", s(&repo), "--trust", &format!("{}.pub", s(&other))]);
    assert!(err.contains("untrusted"), "{err}");
    // A second signature by another key makes it trusted by that key too.
    slate_ok(&["sign", "--repo", s(&repo), "--key", s(&other), "os/lab"]);
    slate_ok(&["sign", "--repo", s(&repo), "--key", s(&other), "os/lab~1"]);
    slate_ok(&["verify", "--repo", s(&repo), "--trust", &format!("{}.pub", s(&other))]);
}

#[test]
fn gc_drops_what_no_history_references() {
    let t = scratch();
    let repo = t.path().join("repo");
    let tree = t.path().join("tree");
    slate_ok(&["init", "--repo", s(&repo)]);
    let mut ids = Vec::new();
    for v in 0..4u8 {
        std::fs::create_dir_all(&tree).unwrap();
        // Mostly new content each time, so old packs become garbage.
        let data: Vec<u8> = (0..2_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761).rotate_left(v as u32 * 3) >> 11) as u8 ^ v)
            .collect();
        std::fs::write(tree.join("big"), &data).unwrap();
        std::fs::write(tree.join("small"), [v]).unwrap();
        ids.push(
            slate_ok(&["commit", "--repo", s(&repo), "--channel", "c", s(&tree)])
                .trim()
                .to_string(),
        );
    }
    slate_ok(&["delta", "--repo", s(&repo), "--level", "3", "c~1", "c"]);
    assert!(repo.join("deltas").read_dir().unwrap().next().is_some());
    let before = dir_size(&repo);
    let plan = slate_ok(&["gc", "--repo", s(&repo), "--keep-last", "1", "--dry-run", "--json"]);
    let plan: serde_json::Value = serde_json::from_str(plan.trim()).unwrap();
    assert_eq!(plan["drop_snapshots"].as_array().unwrap().len(), 3, "{plan}");
    assert_eq!(dir_size(&repo), before, "a dry run changes nothing");

    slate_ok(&["gc", "--repo", s(&repo), "--keep-last", "1"]);
    let deltas: Vec<_> = walk_files(&repo.join("deltas"));
    assert!(
        deltas.is_empty(),
        "a delta from a dropped snapshot is dropped too: {deltas:?}"
    );
    let after = dir_size(&repo);
    assert!(after < before / 2, "gc freed space: {before} -> {after}");
    let log = json_lines(&slate_ok(&["log", "--repo", s(&repo), "--json", "c"]));
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["snapshot"], ids[3].as_str());
    slate_ok(&["verify", "--repo", s(&repo)]);
    let dst = t.path().join("dst");
    slate_ok(&["checkout", "--repo", s(&repo), "c", s(&dst)]);
    crate::treedigest::assert_same_tree(&tree, &dst);
    let err = slate_err(&["checkout", "--repo", s(&repo), &ids[0], s(&t.path().join("old"))]);
    assert!(err.contains("no snapshot"), "{err}");
}

fn walk_files(p: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk_files(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let md = e.metadata().unwrap();
        total += if md.is_dir() { dir_size(&e.path()) } else { md.len() };
    }
    total
}

#[test]
fn repo_from_environment_and_helpful_errors() {
    let t = scratch();
    let repo = t.path().join("repo");
    let out = std::process::Command::new(crate::support::slate_bin())
        .args(["init"])
        .env("SLATE_REPO", &repo)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(repo.join("config").exists(), "SLATE_REPO names the repository");
    let err = slate_err(&["log", "--repo", s(&t.path().join("nope"))]);
    assert!(
        err.contains("is not a slate repository") && err.lines().count() == 1,
        "{err}"
    );
    let err = slate_err(&[
        "checkout",
        "--repo",
        s(&repo),
        "missing/channel",
        s(&t.path().join("d")),
    ]);
    assert!(err.contains("no snapshot or channel named"), "{err}");
    for args in [&["--help"][..], &["commit", "--help"], &["checkout", "--help"]] {
        assert!(slate_ok(args).contains("Usage"));
    }
}
