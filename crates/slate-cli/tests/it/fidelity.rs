//! Bit-for-bit round trips: the nasty generated tree and the Debian corpus.

use std::io::Read;

use crate::nasty::{build_nasty_tree, SPARSE_FILES};
use crate::support::{corpus, s, scratch, slate_ok};
use crate::treedigest::{assert_same_tree, assert_sparse_preserved};

#[test]
fn nasty_tree_round_trips_bit_for_bit() {
    let t = scratch();
    let src = t.path().join("src");
    build_nasty_tree(&src).unwrap();
    let repo = t.path().join("repo");
    slate_ok(&["init", "--repo", s(&repo)]);
    let id = slate_ok(&["commit", "--repo", s(&repo), "--channel", "nasty", s(&src)]);
    let id = id.trim();
    assert_eq!(id.len(), 64, "commit prints the snapshot id: {id:?}");

    // Into a new directory, by channel.
    let dst = t.path().join("dst");
    slate_ok(&["checkout", "--repo", s(&repo), "nasty", s(&dst)]);
    assert_same_tree(&src, &dst);
    for rel in SPARSE_FILES {
        assert_sparse_preserved(&src, &dst, rel);
    }

    // Into an existing empty directory (its own metadata is restored too),
    // by id prefix.
    let dst2 = t.path().join("dst2");
    std::fs::create_dir(&dst2).unwrap();
    slate_ok(&["checkout", "--repo", s(&repo), &id[..12], s(&dst2)]);
    assert_same_tree(&src, &dst2);
}

#[test]
fn recommitting_a_checkout_gives_the_same_manifest() {
    // The manifest is a pure function of the tree: a checkout committed
    // again adds no chunk at all, not even a new manifest chunk.
    let t = scratch();
    let src = t.path().join("src");
    build_nasty_tree(&src).unwrap();
    let repo = t.path().join("repo");
    slate_ok(&["init", "--repo", s(&repo)]);
    slate_ok(&["commit", "--repo", s(&repo), "--channel", "a", s(&src)]);
    let dst = t.path().join("dst");
    slate_ok(&["checkout", "--repo", s(&repo), "a", s(&dst)]);
    let out = slate_ok(&["commit", "--repo", s(&repo), "--channel", "b", "--json", s(&dst)]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["new_chunks"], 0, "{out}");
}

#[test]
fn cat_returns_exact_content_including_holes() {
    let t = scratch();
    let src = t.path().join("src");
    build_nasty_tree(&src).unwrap();
    let repo = t.path().join("repo");
    slate_ok(&["init", "--repo", s(&repo)]);
    slate_ok(&["commit", "--repo", s(&repo), "--channel", "c", s(&src)]);
    for rel in [
        "files/random-3m",
        "sparse/sparse-64m",
        "files/empty",
        "hardlinks/sub/group-2",
    ] {
        let path = src.join(rel);
        let mut want = Vec::new();
        std::fs::File::open(&path).unwrap().read_to_end(&mut want).unwrap();
        let out = std::process::Command::new(crate::support::slate_bin())
            .args(["cat", "--repo", s(&repo), "c", &format!("/{rel}")])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout == want, "slate cat {rel}: content differs");
    }
}

#[test]
fn debian_corpus_round_trips_bit_for_bit() {
    let Some(corpus) = corpus() else {
        crate::support::skip("debian_corpus_round_trips_bit_for_bit: corpus not built (run `make corpus`)");
        return;
    };
    let t = scratch();
    let repo = t.path().join("repo");
    slate_ok(&["init", "--repo", s(&repo)]);
    for v in ["v1", "v2", "v3", "edge"] {
        slate_ok(&[
            "commit",
            "--repo",
            s(&repo),
            "--channel",
            "debian",
            "-m",
            v,
            s(&corpus.join(v)),
        ]);
    }
    // Every version from the one repository, oldest by history offset.
    for (v, spec) in [
        ("v1", "debian~3"),
        ("v2", "debian~2"),
        ("v3", "debian~1"),
        ("edge", "debian"),
    ] {
        let dst = t.path().join(format!("co-{v}"));
        slate_ok(&["checkout", "--repo", s(&repo), spec, s(&dst)]);
        assert_same_tree(&corpus.join(v), &dst);
        std::fs::remove_dir_all(&dst).unwrap();
    }
    let log = slate_ok(&["log", "--repo", s(&repo), "--json", "debian"]);
    assert!(
        log.contains("\"VERSION_ID\":\"12\""),
        "os-release metadata recorded: {log}"
    );
    slate_ok(&["verify", "--repo", s(&repo)]);
}
