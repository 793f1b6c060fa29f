//! Bad input, crashes and concurrency: repositories stay valid and every
//! failure is one clear error.
//!
//! * crashes: `slate commit` and `slate gc` killed with SIGKILL at random
//!   instants (the seed is printed; set `SLATE_TEST_SEED` to replay it),
//!   plus one crash point of gc reproduced exactly;
//! * concurrency: two commits to one channel at once;
//! * hostile input: manifests the decoder must refuse, damaged packs,
//!   indexes, records and signatures, wrong keys, forged sizes under an
//!   address-space limit, garbage channel files, wrong arguments;
//! * a full file system (root only: a loop-mounted ext4 image).
//!
//! Every failing command must exit non-zero with one `slate: error:` line
//! and no panic; every surviving repository must pass `slate verify` and
//! check out bit for bit (compared with `treedigest.py`).

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use slate_core::manifest::{self, ChunkRef, Entry, FileData, Kind, Manifest, Meta, Timestamp};
use slate_core::snapshot::{ManifestRef, Snapshot};
use slate_core::{ChunkId, Id32};
use slate_repo::commit::{commit_manifest, CommitOptions};
use slate_repo::Repo;

use crate::support::{is_root, s, scratch, slate, slate_bin, slate_err, slate_ok};
use crate::treedigest::assert_same_tree;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// SplitMix64: fast, seedable, good enough to make incompressible data and
/// random kill delays without a `rand` dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-enough in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// A seed for the randomised crash tests: `$SLATE_TEST_SEED` or the clock,
/// printed so that a failure can be replayed.
fn test_seed(test: &str) -> u64 {
    let seed = std::env::var("SLATE_TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{test}: seed {seed} (replay with SLATE_TEST_SEED={seed})");
    seed
}

/// The one error line of a failed command's stderr: exactly one non-empty
/// line, in the CLI's `slate: error:` form.
fn error_line(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected exactly one error line, got:\n{stderr}");
    let line = lines[0];
    assert!(
        line.starts_with("slate: error: "),
        "the error line lacks the `slate: error:` prefix: {line}"
    );
    // Said once: no "X: X" tail from a cause repeated by the error chain.
    let parts: Vec<&str> = line.split(": ").collect();
    let n = parts.len();
    for k in 1..=n / 2 {
        assert_ne!(
            parts[n - k..],
            parts[n - 2 * k..n - k],
            "the error repeats itself: {line}"
        );
    }
    line.to_string()
}

/// Run `slate ARGS...`, require a clean failure, return its error line.
fn slate_fail(args: &[&str]) -> String {
    error_line(&slate_err(args))
}

/// Run `slate verify` and require success (leftovers of interrupted writes
/// may be reported as notices, never as faults).
fn verify_ok(repo: &Path) {
    verify_ok_with(repo, &[]);
}

/// [`verify_ok`] with more arguments (`--trust KEY.pub`).
fn verify_ok_with(repo: &Path, extra: &[&str]) {
    let mut args = vec!["verify", "--repo", s(repo)];
    args.extend_from_slice(extra);
    let out = slate(&args);
    assert!(
        out.status.success(),
        "verify {} {extra:?} failed:\n{}{}",
        repo.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run `slate verify ARGS...`, require a clean failure, return stdout and
/// stderr together (faults are listed on stdout, the summary on stderr).
fn verify_fails(repo: &Path, extra: &[&str]) -> String {
    let mut args = vec!["verify", "--repo", s(repo)];
    args.extend_from_slice(extra);
    verify_failed(&args, slate(&args))
}

/// Check that a verify run failed cleanly; return stdout and stderr.
fn verify_failed(args: &[&str], out: Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "verify {args:?} should fail cleanly:\n{text}"
    );
    assert!(!text.contains("panicked"), "verify panicked:\n{text}");
    text
}

/// Commit `tree` to `channel` with message `msg`; returns the snapshot id.
fn commit(repo: &Path, channel: &str, tree: &Path, msg: &str) -> String {
    slate_ok(&["commit", "--repo", s(repo), "--channel", channel, "-m", msg, s(tree)])
        .trim()
        .to_string()
}

/// A channel's history as (snapshot id, message), oldest first.
fn history(repo: &Path, channel: &str) -> Vec<(String, String)> {
    let out = slate(&["log", "--repo", s(repo), "--json", channel]);
    if !out.status.success() {
        // `log` refuses a channel that does not exist yet: an empty history.
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("does not exist"), "log {channel} failed: {err}");
        return Vec::new();
    }
    let mut h: Vec<(String, String)> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["snapshot"].as_str().unwrap().to_string(),
                v["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    h.reverse();
    h
}

/// Check out `spec` into a fresh directory and compare it with `tree`.
fn assert_checkout_matches(repo: &Path, spec: &str, tree: &Path, work: &Path) {
    let dest = work.join(format!("checkout-{}", &spec[..spec.len().min(16)].replace('/', "_")));
    let _ = fs::remove_dir_all(&dest);
    slate_ok(&["checkout", "--repo", s(repo), "--no-sync", spec, s(&dest)]);
    assert_same_tree(tree, &dest);
    fs::remove_dir_all(&dest).unwrap();
}

/// `cp -a SRC DST`: a repository copy with every file as it is.
fn copy_tree(src: &Path, dst: &Path) {
    let st = Command::new("cp").arg("-a").arg(src).arg(dst).status().expect("run cp");
    assert!(st.success(), "cp -a {} {}", src.display(), dst.display());
}

/// Every file under `dir` whose name ends in `.EXT`, sorted.
fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    walk(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect()
}

/// Every path under `dir` (not following symlinks), `dir` excluded.
fn walk(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let Ok(rd) = fs::read_dir(dir) else { return out };
    for e in rd {
        let p = e.unwrap().path();
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walk(&p));
        }
        out.insert(p);
    }
    out
}

/// The file name of `p` without its extension: an object's id.
fn stem(p: &Path) -> String {
    p.file_stem().unwrap().to_str().unwrap().to_string()
}

/// Leftovers of interrupted writes: packs without an index, temp files.
fn leftovers(repo: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = files_with_ext(&repo.join("packs"), "pack")
        .into_iter()
        .filter(|p| !p.with_extension("idx").exists())
        .collect();
    v.extend(walk(&repo.join("tmp")));
    v
}

/// Start `slate ARGS...`, SIGKILL it after `delay` unless it finished on
/// its own first. Returns whether it finished by itself (having checked
/// that it then succeeded).
fn run_and_kill(args: &[&str], delay: Duration) -> bool {
    let mut child: Child = Command::new(slate_bin())
        .args(args)
        .env_remove("SLATE_REPO")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn slate");
    let deadline = Instant::now() + delay;
    // Poll rather than sleep once, so that a process that finished early is
    // reaped (and its failure noticed) instead of being "killed".
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            assert!(st.success(), "slate {args:?} failed on its own ({st}):\n{err}");
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(2)));
    }
    child.kill().expect("SIGKILL slate");
    child.wait().unwrap();
    false
}

// ---------------------------------------------------------------------------
// 1. kill -9 during commit
// ---------------------------------------------------------------------------

/// Small files in the crash-test tree (many entries, many parallel reads).
const SMALL_FILES: u64 = 3000;
/// Large random files in it (several frames of new data per commit).
const BIG_FILES: u64 = 4;

/// Version `v` of the crash-test tree: a third of the small files and all
/// large files change from one version to the next, so every commit
/// writes new frames, packs and a new manifest.
fn build_versioned_tree(root: &Path, v: u64) {
    for i in 0..SMALL_FILES {
        let dir = root.join(format!("d{:02}", i / 100));
        if i % 100 == 0 {
            fs::create_dir_all(&dir).unwrap();
        }
        let generation = if i % 3 == v % 3 { v } else { 0 };
        let mut rng = Rng::new((i << 32) | generation);
        let len = 100 + rng.below(3000) as usize;
        fs::write(dir.join(format!("f{i:04}")), rng.bytes(len)).unwrap();
    }
    for k in 0..BIG_FILES {
        let mut rng = Rng::new((0xb16 << 48) | (k << 32) | v);
        let len = (1 << 20) + rng.below(1 << 20) as usize;
        fs::write(root.join(format!("big{k}")), rng.bytes(len)).unwrap();
    }
    fs::write(root.join("version"), format!("{v}\n")).unwrap();
}

#[test]
fn commit_killed_at_random_instants_leaves_a_valid_repository() {
    let t = scratch();
    let repo = t.path().join("repo");
    slate_ok(&["init", "--repo", s(&repo)]);
    let tree = |v: u64| t.path().join(format!("tree{v}"));
    // Signed commits: the record, then its signature, are written before
    // the channel moves, so `verify --trust` must hold after any kill.
    let key = t.path().join("k.key");
    slate_ok(&["keygen", "--out", s(&key)]);
    let trust = format!("{}.pub", s(&key));
    let trusted = ["--trust", trust.as_str()];

    // A first full commit, timed: the kills below land within its duration.
    build_versioned_tree(&tree(0), 0);
    let started = Instant::now();
    slate_ok(&[
        "commit",
        "--repo",
        s(&repo),
        "--channel",
        "crash",
        "-m",
        "v0",
        "--sign",
        s(&key),
        s(&tree(0)),
    ]);
    let full = started.elapsed();
    let mut rng = Rng::new(test_seed("commit_killed"));

    let budget = Instant::now();
    let (mut killed, mut finished, mut left_over) = (0, 0, 0);
    for v in 1..=15u64 {
        if budget.elapsed() > Duration::from_secs(45) {
            break;
        }
        let src = tree(v);
        build_versioned_tree(&src, v);
        let before = history(&repo, "crash");
        let leftovers_before = leftovers(&repo).len();
        // Half the kills anywhere, half in the last part of the run, where
        // packs, indexes, the record, its signature and the channel are
        // written (scanning and chunking take most of the time before).
        let us = full.as_micros() as u64;
        let delay = Duration::from_micros(if rng.below(2) == 0 {
            rng.below(us + 1)
        } else {
            us * 3 / 5 + rng.below(us / 2 + 1)
        });
        let msg = format!("v{v}");
        let args = [
            "commit",
            "--repo",
            s(&repo),
            "--channel",
            "crash",
            "-m",
            &msg,
            "--sign",
            s(&key),
            s(&src),
        ];
        if run_and_kill(&args, delay) {
            finished += 1;
        } else {
            killed += 1;
        }
        if leftovers(&repo).len() > leftovers_before {
            left_over += 1;
        }

        // The repository is valid (verify reads every chunk and every
        // manifest; the full checkouts come once, at the end), and the
        // channel moved by at most the one snapshot being committed.
        verify_ok_with(&repo, &trusted);
        let after = history(&repo, "crash");
        if after != before {
            assert_eq!(after.len(), before.len() + 1, "history grew by more than one");
            assert_eq!(after[..before.len()], before[..], "old history changed");
            assert_eq!(
                after.last().unwrap().1,
                msg,
                "the new head is not the snapshot being committed"
            );
        }
    }
    eprintln!(
        "commit_killed: full commit {:.0} ms; {killed} killed ({left_over} leaving leftovers), {finished} finished",
        full.as_secs_f64() * 1000.0
    );

    // Everything the channel names checks out as the tree it was committed
    // from; then gc removes whatever the kills left behind, and the same
    // still holds.
    let check_all = || {
        for (id, msg) in history(&repo, "crash") {
            let v: u64 = msg.trim_start_matches('v').parse().unwrap();
            assert_checkout_matches(&repo, &id, &tree(v), t.path());
        }
    };
    check_all();
    slate_ok(&["gc", "--repo", s(&repo)]);
    verify_ok_with(&repo, &trusted);
    assert_eq!(leftovers(&repo), Vec::<PathBuf>::new(), "gc left leftovers");
    check_all();
}

/// The narrowest crash window of a commit, reproduced exactly: killed after
/// publishing a pack, before writing its index. The pack is then a
/// leftover (a notice for verify, not a fault); committing the same tree
/// again writes the same pack under the same name, now with its index.
#[test]
fn commit_after_a_commit_killed_between_pack_and_index() {
    let t = scratch();
    let repo = t.path().join("repo");
    slate_ok(&["init", "--repo", s(&repo)]);
    let (tree1, tree2) = (t.path().join("tree1"), t.path().join("tree2"));
    build_gc_tree(&tree1, 1, 1 << 20, 2 << 20);
    build_gc_tree(&tree2, 2, 1 << 20, 2 << 20);
    commit(&repo, "c", &tree1, "v1");

    // What the commit of tree2 publishes, learnt on a copy.
    let done = t.path().join("done");
    copy_tree(&repo, &done);
    let before: BTreeSet<PathBuf> = files_with_ext(&done.join("packs"), "pack").into_iter().collect();
    commit(&done, "c", &tree2, "v2");
    let new: Vec<PathBuf> = files_with_ext(&done.join("packs"), "pack")
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert_eq!(new.len(), 1, "{new:?}");
    let rel = new[0].strip_prefix(&done).unwrap();

    // The crash state: that pack without its index, and nothing else.
    fs::create_dir_all(repo.join(rel).parent().unwrap()).unwrap();
    fs::copy(&new[0], repo.join(rel)).unwrap();
    let out = slate_ok(&["verify", "--repo", s(&repo)]);
    assert!(out.contains("NOTICE") && out.contains(&stem(&new[0])), "{out}");
    assert_eq!(history(&repo, "c").len(), 1);

    commit(&repo, "c", &tree2, "v2");
    assert!(
        repo.join(rel).with_extension("idx").exists(),
        "the pack did not get its index"
    );
    verify_ok(&repo);
    assert_checkout_matches(&repo, "c", &tree2, t.path());
    assert_checkout_matches(&repo, "c~1", &tree1, t.path());
    slate_ok(&["gc", "--repo", s(&repo)]);
    assert_eq!(leftovers(&repo), Vec::<PathBuf>::new());
    assert_checkout_matches(&repo, "c", &tree2, t.path());
}

// ---------------------------------------------------------------------------
// 2. kill -9 during gc
// ---------------------------------------------------------------------------

/// Version `v` of the gc test tree: `stable` never changes, `churn` is new
/// random data each time, so after `gc --keep-last 1` the first pack is
/// mostly garbage (rewritten) and the middle ones all garbage (dropped).
fn build_gc_tree(root: &Path, v: u64, stable_len: usize, churn_len: usize) {
    fs::create_dir_all(root).unwrap();
    fs::write(root.join("stable"), Rng::new(0x5ab1e).bytes(stable_len)).unwrap();
    fs::write(root.join("churn"), Rng::new((0xc4e2 << 32) | v).bytes(churn_len)).unwrap();
    fs::write(root.join("version"), format!("{v}\n")).unwrap();
}

/// A repository whose channel `c` has `versions` snapshots of the gc test
/// tree; returns the head's tree.
fn gc_fixture(work: &Path, versions: u64, stable_len: usize, churn_len: usize) -> (PathBuf, PathBuf) {
    let repo = work.join("pristine");
    slate_ok(&["init", "--repo", s(&repo)]);
    let mut head = PathBuf::new();
    for v in 1..=versions {
        head = work.join(format!("tree{v}"));
        build_gc_tree(&head, v, stable_len, churn_len);
        commit(&repo, "c", &head, &format!("v{v}"));
    }
    (repo, head)
}

/// After a complete gc: one snapshot left, valid, nothing left over.
fn assert_gc_completed(repo: &Path, head_tree: &Path, work: &Path) {
    verify_ok(repo);
    let h = history(repo, "c");
    assert_eq!(h.len(), 1, "gc --keep-last 1 keeps one snapshot: {h:?}");
    assert_checkout_matches(repo, "c", head_tree, work);
    assert_eq!(leftovers(repo), Vec::<PathBuf>::new(), "gc left leftovers");
}

#[test]
fn gc_killed_at_random_instants_loses_nothing_live() {
    let t = scratch();
    let (pristine, head_tree) = gc_fixture(t.path(), 5, 6 << 20, 10 << 20);
    let head = history(&pristine, "c").last().unwrap().0.clone();

    // Time a complete gc on a copy; it must have real work to do.
    let timing = t.path().join("timing");
    copy_tree(&pristine, &timing);
    let started = Instant::now();
    let plan = slate_ok(&["gc", "--repo", s(&timing), "--keep-last", "1", "--json"]);
    let full = started.elapsed();
    let plan: serde_json::Value = serde_json::from_str(plan.trim()).unwrap();
    assert!(
        !plan["rewrite_packs"].as_array().unwrap().is_empty() && !plan["drop_packs"].as_array().unwrap().is_empty(),
        "the fixture must make gc rewrite and drop packs: {plan}"
    );
    assert_gc_completed(&timing, &head_tree, t.path());
    fs::remove_dir_all(&timing).unwrap();

    let mut rng = Rng::new(test_seed("gc_killed"));
    let budget = Instant::now();
    let (mut runs, mut left_over) = (0, 0);
    for i in 0..8 {
        if budget.elapsed() > Duration::from_secs(30) {
            break;
        }
        runs += 1;
        let work = t.path().join(format!("work{i}"));
        copy_tree(&pristine, &work);
        let delay = Duration::from_micros(rng.below(full.as_micros() as u64 * 6 / 5 + 1));
        if !run_and_kill(&["gc", "--repo", s(&work), "--keep-last", "1"], delay) && !leftovers(&work).is_empty() {
            left_over += 1;
        }

        // Killed anywhere: valid, same head, head intact.
        verify_ok(&work);
        let h = history(&work, "c");
        assert_eq!(h.last().map(|x| x.0.as_str()), Some(head.as_str()), "gc moved the head");
        assert_checkout_matches(&work, "c", &head_tree, t.path());

        // And the next gc finishes the job.
        slate_ok(&["gc", "--repo", s(&work), "--keep-last", "1"]);
        assert_gc_completed(&work, &head_tree, t.path());
        fs::remove_dir_all(&work).unwrap();
    }
    eprintln!(
        "gc_killed: full gc {:.0} ms; {runs} runs, {left_over} leaving leftovers",
        full.as_secs_f64() * 1000.0
    );
}

/// One crash point of gc, reproduced exactly rather than hoped for: gc was
/// killed after publishing a rewritten pack but before writing its index.
/// The next gc rewrites the same live chunks into the very same pack (same
/// bytes, same name) and must not then delete it as a leftover.
#[test]
fn gc_after_a_gc_killed_between_pack_and_index_keeps_the_rewritten_pack() {
    let t = scratch();
    let (pristine, head_tree) = gc_fixture(t.path(), 3, 2 << 20, 3 << 20);

    // What a complete gc writes: the channel cut to its head, and new packs.
    let done = t.path().join("done");
    copy_tree(&pristine, &done);
    slate_ok(&["gc", "--repo", s(&done), "--keep-last", "1"]);
    let rel = |repo: &Path, p: &Path| p.strip_prefix(repo).unwrap().to_path_buf();
    let old: BTreeSet<PathBuf> = files_with_ext(&pristine.join("packs"), "pack")
        .iter()
        .map(|p| rel(&pristine, p))
        .collect();
    let new: Vec<PathBuf> = files_with_ext(&done.join("packs"), "pack")
        .iter()
        .map(|p| rel(&done, p))
        .filter(|p| !old.contains(p))
        .collect();
    assert_eq!(new.len(), 1, "the fixture makes gc rewrite exactly one pack: {new:?}");

    // The crash state: channel already cut, new pack published, no index.
    fs::copy(done.join("channels/c"), pristine.join("channels/c")).unwrap();
    fs::create_dir_all(pristine.join(&new[0]).parent().unwrap()).unwrap();
    fs::copy(done.join(&new[0]), pristine.join(&new[0])).unwrap();
    verify_ok(&pristine);

    slate_ok(&["gc", "--repo", s(&pristine), "--keep-last", "1"]);
    assert_gc_completed(&pristine, &head_tree, t.path());
}

// ---------------------------------------------------------------------------
// 3. Concurrent commits
// ---------------------------------------------------------------------------

#[test]
fn concurrent_commits_to_one_channel_both_land() {
    let t = scratch();
    let repo = t.path().join("repo");
    slate_ok(&["init", "--repo", s(&repo)]);
    let trees: Vec<PathBuf> = (0..2u64)
        .map(|k| {
            let tree = t.path().join(format!("tree{k}"));
            fs::create_dir_all(tree.join("etc")).unwrap();
            let mut rng = Rng::new(0xc0c0 + k);
            fs::write(tree.join("big"), rng.bytes(8 << 20)).unwrap();
            for i in 0..200 {
                fs::write(tree.join(format!("etc/f{i}")), rng.bytes(500)).unwrap();
            }
            tree
        })
        .collect();

    // Start both before waiting for either.
    let children: Vec<Child> = trees
        .iter()
        .enumerate()
        .map(|(k, tree)| {
            Command::new(slate_bin())
                .args(["commit", "--repo", s(&repo), "--channel", "c", "-m"])
                .arg(format!("t{k}"))
                .arg(tree)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let ids: Vec<String> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "a concurrent commit failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        })
        .collect();

    // Both in the history (either order), the later one on top of the
    // earlier: neither update was lost.
    let h = history(&repo, "c");
    let got: BTreeSet<&str> = h.iter().map(|x| x.0.as_str()).collect();
    let want: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(got, want, "history {h:?}");
    let log = slate_ok(&["log", "--repo", s(&repo), "--json", "c"]);
    let newest: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(newest["parent"].as_str(), Some(h[0].0.as_str()), "{log}");
    verify_ok(&repo);
    for (id, msg) in &h {
        let k: usize = msg.trim_start_matches('t').parse().unwrap();
        assert_checkout_matches(&repo, id, &trees[k], t.path());
    }
}

// ---------------------------------------------------------------------------
// 4. Malicious manifests
// ---------------------------------------------------------------------------

const PAYLOAD: &[u8] = b"payload";

fn meta(mode: u32) -> Meta {
    Meta {
        mode,
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
        mtime: Timestamp {
            sec: 1_600_000_000,
            nsec: 123,
        },
        xattrs: Vec::new(),
    }
}

fn entry(path: &[u8], kind: Kind) -> Entry {
    let mode = match kind {
        Kind::Dir => 0o755,
        Kind::Symlink(_) => 0o777,
        _ => 0o644,
    };
    Entry {
        path: path.to_vec(),
        meta: meta(mode),
        kind,
    }
}

fn payload_file(size: u64) -> Kind {
    Kind::File(FileData {
        size,
        extents: None,
        chunks: vec![ChunkRef {
            id: ChunkId::of(PAYLOAD),
            len: PAYLOAD.len() as u32,
        }],
    })
}

/// Commit `m` as is to `channel` through the library (the CLI can only
/// commit what a scan produces); returns the manifest's hash.
fn commit_raw_manifest(repo: &Repo, channel: &str, m: &Manifest) -> String {
    let content = vec![(ChunkId::of(PAYLOAD), PAYLOAD.to_vec())];
    let opts = CommitOptions {
        channel,
        message: String::new(),
        sign: None,
        metadata: Vec::new(),
    };
    commit_manifest(repo, m, &content, &opts).expect("commit_manifest");
    Id32::hash(&manifest::encode(m)).to_hex()
}

#[test]
fn hostile_manifests_are_refused_and_write_nothing() {
    let t = scratch();
    let repo_dir = t.path().join("repo");
    slate_ok(&["init", "--repo", s(&repo_dir)]);
    let repo = Repo::open(&repo_dir).unwrap();
    // Where an escaping entry would land; each must stay absent or empty.
    let outside = t.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let outside_b = outside.as_os_str().as_bytes();
    let abs = [outside_b, b"/abs"].concat();
    let dests = t.path().join("dests");
    fs::create_dir(&dests).unwrap();

    let root = || entry(b"", Kind::Dir);
    let cases: Vec<(&str, Vec<Entry>)> = vec![
        ("dotdot", vec![root(), entry(b"../escape", payload_file(7))]),
        (
            "nested-dotdot",
            vec![
                root(),
                entry(b"a", Kind::Dir),
                entry(b"a/../../escape", payload_file(7)),
            ],
        ),
        ("absolute", vec![root(), entry(&abs, payload_file(7))]),
        (
            "child-of-symlink",
            vec![
                root(),
                entry(b"a", Kind::Symlink(outside_b.to_vec())),
                entry(b"a/x", payload_file(7)),
            ],
        ),
        (
            "symlink-then-dir",
            vec![
                root(),
                entry(b"a", Kind::Symlink(outside_b.to_vec())),
                entry(b"a", Kind::Dir),
                entry(b"a/x", payload_file(7)),
            ],
        ),
        (
            "out-of-order",
            vec![root(), entry(b"b", payload_file(7)), entry(b"a", payload_file(7))],
        ),
        (
            "hardlink-to-later",
            vec![root(), entry(b"a", Kind::HardLink(2)), entry(b"b", payload_file(7))],
        ),
        (
            "hardlink-to-itself",
            vec![root(), entry(b"a", payload_file(7)), entry(b"b", Kind::HardLink(2))],
        ),
        (
            "hardlink-to-dir",
            vec![root(), entry(b"d", Kind::Dir), entry(b"h", Kind::HardLink(1))],
        ),
        ("chunks-short", vec![root(), entry(b"f", payload_file(1000))]),
        ("root-is-symlink", vec![entry(b"", Kind::Symlink(outside_b.to_vec()))]),
    ];

    let before = walk(t.path());
    let mut hashes = Vec::new();
    for (name, entries) in cases {
        let channel = format!("evil/{name}");
        let hash = commit_raw_manifest(&repo, &channel, &Manifest { entries });
        let dest = dests.join(name);
        let err = slate_fail(&["checkout", "--repo", s(&repo_dir), &channel, s(&dest)]);
        assert!(
            err.contains(&format!("manifest {hash}")) && err.contains("corrupt"),
            "{name}: the error does not name the corrupt manifest: {err}"
        );
        // Every reader refuses it, not just checkout.
        let err = slate_fail(&["ls", "--repo", s(&repo_dir), "-R", &channel]);
        assert!(err.contains(&hash), "{name}: ls: {err}");
        // Nothing written anywhere: not outside DEST, not even DEST.
        let now: BTreeSet<PathBuf> = walk(t.path())
            .into_iter()
            .filter(|p| !p.starts_with(&repo_dir))
            .collect();
        let was: BTreeSet<PathBuf> = before.iter().filter(|p| !p.starts_with(&repo_dir)).cloned().collect();
        assert_eq!(now, was, "{name}: checkout wrote something");
        hashes.push(hash);
    }
    // verify names every bad manifest.
    let report = verify_fails(&repo_dir, &[]);
    for h in &hashes {
        assert!(report.contains(h), "verify does not name manifest {h}:\n{report}");
    }

    // A symlink pointing outside is legitimate content: created as a link,
    // never followed (the target's metadata stays as it was).
    let target = t.path().join("target-file");
    fs::write(&target, b"untouched").unwrap();
    let when = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 1000,
            tv_nsec: 0,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: 1000,
            tv_nsec: 0,
        },
    };
    rustix::fs::utimensat(rustix::fs::CWD, &target, &when, rustix::fs::AtFlags::empty()).unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
    let missing = t.path().join("never-created/x");
    let m = Manifest {
        entries: vec![
            root(),
            entry(b"link", Kind::Symlink(target.as_os_str().as_bytes().to_vec())),
            entry(b"link2", Kind::Symlink(missing.as_os_str().as_bytes().to_vec())),
        ],
    };
    commit_raw_manifest(&repo, "fine", &m);
    let dest = dests.join("fine");
    slate_ok(&["checkout", "--repo", s(&repo_dir), "fine", s(&dest)]);
    assert_eq!(fs::read_link(dest.join("link")).unwrap(), target);
    assert_eq!(fs::read_link(dest.join("link2")).unwrap(), missing);
    let link_md = fs::symlink_metadata(dest.join("link")).unwrap();
    assert_eq!((link_md.mtime(), link_md.mtime_nsec()), (1_600_000_000, 123));
    let target_md = fs::metadata(&target).unwrap();
    assert_eq!(fs::read(&target).unwrap(), b"untouched");
    assert_eq!(target_md.mtime(), 1000, "checkout changed the link target's mtime");
    assert_eq!(
        target_md.mode() & 0o7777,
        0o600,
        "checkout changed the link target's mode"
    );
    assert!(!missing.parent().unwrap().exists(), "checkout followed a dangling link");
}

// ---------------------------------------------------------------------------
// 5. Damaged objects and keys
// ---------------------------------------------------------------------------

/// A small signed repository: channel `os` with one snapshot.
struct Signed {
    repo: PathBuf,
    tree: PathBuf,
    key: PathBuf,
    snapshot: String,
}

fn signed_fixture(work: &Path) -> Signed {
    let repo = work.join("pristine");
    let tree = work.join("tree");
    let key = work.join("a.key");
    slate_ok(&["init", "--repo", s(&repo)]);
    slate_ok(&["keygen", "--out", s(&key)]);
    fs::create_dir_all(tree.join("etc")).unwrap();
    let mut rng = Rng::new(0x51e);
    fs::write(tree.join("big"), rng.bytes(3 << 20)).unwrap();
    for i in 0..20 {
        fs::write(tree.join(format!("etc/f{i}")), rng.bytes(2000)).unwrap();
    }
    let snapshot = slate_ok(&[
        "commit",
        "--repo",
        s(&repo),
        "--channel",
        "os",
        "--sign",
        s(&key),
        s(&tree),
    ])
    .trim()
    .to_string();
    verify_ok(&repo);
    Signed {
        repo,
        tree,
        key,
        snapshot,
    }
}

fn flip_byte(p: &Path, at: u64) {
    let mut b = fs::read(p).unwrap();
    b[at as usize] ^= 0x55;
    fs::write(p, b).unwrap();
}

fn middle(p: &Path) -> u64 {
    fs::metadata(p).unwrap().len() / 2
}

fn only(repo: &Path, dir: &str, ext: &str) -> PathBuf {
    let v = files_with_ext(&repo.join(dir), ext);
    assert_eq!(v.len(), 1, "expected one .{ext} in {dir}: {v:?}");
    v.into_iter().next().unwrap()
}

/// What a damaged copy of the fixture must do.
struct Expect {
    /// Strings `slate verify`'s output must contain (the damaged object).
    verify_names: Vec<String>,
    /// What checkout's one error line must contain; `None`: checkout still
    /// succeeds (the damage does not touch the snapshot's data).
    checkout_names: Option<String>,
}

#[test]
fn damaged_objects_are_named_by_verify_and_checkout() {
    let t = scratch();
    let f = signed_fixture(t.path());
    let snap = f.snapshot.clone();
    // Damage a copy of the repository (given the snapshot's id); say what
    // must then be named.
    type Damage = Box<dyn Fn(&Path, &str) -> Expect>;
    let pack_damage = |what: fn(&Path)| -> Damage {
        Box::new(move |repo: &Path, _: &str| {
            let p = only(repo, "packs", "pack");
            what(&p);
            let id = stem(&p);
            Expect {
                verify_names: vec![id.clone()],
                checkout_names: Some(id),
            }
        })
    };
    let cases: Vec<(&str, Damage)> = vec![
        // Past the 9-byte header, in a frame's compressed body.
        ("flip a pack byte", pack_damage(|p| flip_byte(p, middle(p)))),
        (
            "truncate a pack",
            pack_damage(|p| {
                fs::File::options()
                    .write(true)
                    .open(p)
                    .unwrap()
                    .set_len(middle(p))
                    .unwrap()
            }),
        ),
        ("delete a pack", pack_damage(|p| fs::remove_file(p).unwrap())),
        (
            "flip an index byte",
            Box::new(|repo: &Path, _: &str| {
                let p = only(repo, "packs", "idx");
                flip_byte(&p, middle(&p));
                Expect {
                    verify_names: vec![stem(&p)],
                    checkout_names: Some(stem(&p)),
                }
            }),
        ),
        (
            // The pack is then a leftover, but the chunks are missing.
            "delete an index",
            Box::new(|repo: &Path, snap: &str| {
                let p = only(repo, "packs", "idx");
                fs::remove_file(&p).unwrap();
                Expect {
                    verify_names: vec![stem(&p), snap.into()],
                    checkout_names: Some("is missing".into()),
                }
            }),
        ),
        (
            "flip a record byte",
            Box::new(|repo: &Path, snap: &str| {
                let p = only(repo, "snapshots", "snap");
                flip_byte(&p, middle(&p));
                Expect {
                    verify_names: vec![snap.into()],
                    checkout_names: Some(snap.into()),
                }
            }),
        ),
        (
            // Checkout does not check signatures (there is no --trust on
            // checkout), so it is unaffected; verify must catch it.
            "flip a signature byte",
            Box::new(|repo: &Path, snap: &str| {
                let p = only(repo, "snapshots", "sig");
                let len = fs::metadata(&p).unwrap().len();
                flip_byte(&p, len - 1);
                Expect {
                    verify_names: vec![snap.into(), "does not verify".into()],
                    checkout_names: None,
                }
            }),
        ),
    ];
    for (i, (name, damage)) in cases.iter().enumerate() {
        let repo = t.path().join(format!("case{i}"));
        copy_tree(&f.repo, &repo);
        let want = damage(&repo, &snap);
        let report = verify_fails(&repo, &[]);
        for n in &want.verify_names {
            assert!(
                report.contains(n.as_str()),
                "{name}: verify does not name {n}:\n{report}"
            );
        }
        let dest = t.path().join(format!("dest{i}"));
        match &want.checkout_names {
            Some(n) => {
                let err = slate_fail(&["checkout", "--repo", s(&repo), "os", s(&dest)]);
                assert!(err.contains(n.as_str()), "{name}: checkout does not name {n}: {err}");
                assert!(!err.contains("checked out"), "{name}: {err}");
            }
            None => {
                slate_ok(&["checkout", "--repo", s(&repo), "--no-sync", "os", s(&dest)]);
                assert_same_tree(&f.tree, &dest);
            }
        }
    }

    // Trust: unsigned, signed by another key, a key of the wrong kind.
    let repo = t.path().join("keys");
    copy_tree(&f.repo, &repo);
    let a_pub = format!("{}.pub", s(&f.key));
    let b_key = t.path().join("b.key");
    slate_ok(&["keygen", "--out", s(&b_key)]);
    let b_pub = format!("{}.pub", s(&b_key));
    slate_ok(&["verify", "--repo", s(&repo), "--trust", &a_pub]);
    let report = verify_fails(&repo, &["--trust", &b_pub]);
    assert!(report.contains(&snap) && report.contains("untrusted"), "{report}");
    let unsigned = commit(&repo, "unsigned", &f.tree, "no signature");
    let report = verify_fails(&repo, &["--trust", &a_pub]);
    assert!(report.contains(&unsigned) && report.contains("not signed"), "{report}");
    let err = slate_fail(&[
        "commit",
        "--repo",
        s(&repo),
        "--channel",
        "os",
        "--sign",
        &a_pub,
        s(&f.tree),
    ]);
    assert!(err.contains("not a slate secret key"), "{err}");
    let err = slate_fail(&["verify", "--repo", s(&repo), "--trust", s(&f.key)]);
    assert!(err.contains("not a slate public key"), "{err}");
    let err = slate_fail(&["sign", "--repo", s(&repo), "--key", &b_pub, "os"]);
    assert!(err.contains("not a slate secret key"), "{err}");
    assert_eq!(history(&repo, "os").len(), 1, "a refused commit moved the channel");
}

// ---------------------------------------------------------------------------
// 6. Bounded allocation
// ---------------------------------------------------------------------------

/// Address space for commands fed forged sizes: 1 GiB, several times what
/// any command here needs (about 200 MiB), far below what believing a
/// forged size would reserve.
const VM_LIMIT_KIB: u64 = 1 << 20;

/// Run `slate ARGS...` under `ulimit -v`.
fn slate_limited(args: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {VM_LIMIT_KIB} && exec \"$0\" \"$@\""))
        .arg(slate_bin())
        .args(args)
        .env_remove("SLATE_REPO")
        .output()
        .expect("run sh")
}

/// `slate verify` under `ulimit -v`: it must report faults, not abort.
fn verify_limited_fails(repo: &Path) -> String {
    let args = ["verify", "--repo", s(repo)];
    let text = verify_failed(&args, slate_limited(&args));
    assert!(!text.contains("memory allocation"), "{text}");
    text
}

/// Run `slate ARGS...` under `ulimit -v`; require a clean failure (exit
/// status 1, not an abort on a failed allocation); return its error line.
fn slate_limited_fail(args: &[&str]) -> String {
    let out = slate_limited(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "slate {args:?} under ulimit -v {VM_LIMIT_KIB} did not fail cleanly ({}):\n{err}",
        out.status
    );
    assert!(!err.contains("panicked") && !err.contains("memory allocation"), "{err}");
    error_line(&err)
}

/// Store `bytes` as a snapshot's manifest: its chunks go into a pack (via a
/// harmless commit on channel `carrier`), the record and channel `channel`
/// are written by hand.
fn store_forged_manifest(repo: &Repo, channel: &str, bytes: &[u8]) -> String {
    let chunks: Vec<&[u8]> = bytes.chunks(1 << 20).collect();
    let content: Vec<(ChunkId, Vec<u8>)> = chunks.iter().map(|c| (ChunkId::of(c), c.to_vec())).collect();
    let opts = CommitOptions {
        channel: "carrier",
        message: String::new(),
        sign: None,
        metadata: Vec::new(),
    };
    let carrier = Manifest {
        entries: vec![entry(b"", Kind::Dir)],
    };
    commit_manifest(repo, &carrier, &content, &opts).unwrap();
    write_record(
        repo,
        ManifestRef {
            hash: Id32::hash(bytes),
            size: bytes.len() as u64,
            chunks: chunks
                .iter()
                .map(|c| ChunkRef {
                    id: ChunkId::of(c),
                    len: c.len() as u32,
                })
                .collect(),
        },
        channel,
    );
    Id32::hash(bytes).to_hex()
}

/// Write a snapshot record naming `manifest` and point `channel` at it.
fn write_record(repo: &Repo, manifest: ManifestRef, channel: &str) -> String {
    let snap = Snapshot {
        manifest,
        parent: None,
        time_ns: 0,
        channel: channel.into(),
        message: String::new(),
        metadata: Vec::new(),
        entries: 1,
        file_bytes: 0,
    };
    let id = repo.write_snapshot(&snap).unwrap();
    repo.set_channel_history(channel, &[id]).unwrap();
    id.to_hex()
}

#[test]
fn forged_sizes_fail_without_huge_allocations() {
    let t = scratch();
    let repo_dir = t.path().join("repo");
    slate_ok(&["init", "--repo", s(&repo_dir)]);
    let repo = Repo::open(&repo_dir).unwrap();
    let r = s(&repo_dir);
    let dest = t.path().join("dest");
    let d = s(&dest);

    // A record whose manifest claims 4 GiB in 4096 chunks of 1 MiB that
    // the repository does not hold: reading it must not reserve the
    // claimed size up front.
    let id = write_record(
        &repo,
        ManifestRef {
            hash: Id32::hash(b"never"),
            size: 4 << 30,
            chunks: (0..4096u32)
                .map(|i| ChunkRef {
                    id: ChunkId::of(&i.to_le_bytes()),
                    len: 1 << 20,
                })
                .collect(),
        },
        "huge",
    );
    for args in [
        vec!["checkout", "--repo", r, "huge", d],
        vec!["cat", "--repo", r, "huge", "/x"],
        vec!["gc", "--repo", r],
    ] {
        let err = slate_limited_fail(&args);
        assert!(err.contains("is missing"), "{args:?}: {err}");
    }
    let report = verify_limited_fails(&repo_dir);
    assert!(report.contains(&id), "{report}");
    fs::remove_file(repo_dir.join("channels/huge")).unwrap();

    // A manifest whose entry count claims a third of its (large) length:
    // the decoder must not reserve entries for every claimed one.
    // Header (8 + 1 bytes), then a 4-byte varint count, then zeros: the
    // most entries the count check lets through for this length.
    let len: usize = 32 << 20;
    let claimed = ((len - 13) / 3) as u64;
    assert!(
        claimed * std::mem::size_of::<Entry>() as u64 > VM_LIMIT_KIB << 10,
        "the forged count must claim more than the address-space limit"
    );
    let mut forged = manifest::MAGIC.to_vec();
    forged.push(manifest::VERSION as u8);
    let mut n = claimed;
    while n >= 0x80 {
        forged.push(n as u8 | 0x80);
        n >>= 7;
    }
    forged.push(n as u8);
    assert_eq!(forged.len(), 13);
    forged.resize(len, 0);
    let hash = store_forged_manifest(&repo, "many", &forged);
    for args in [vec!["checkout", "--repo", r, "many", d], vec!["gc", "--repo", r]] {
        let err = slate_limited_fail(&args);
        assert!(err.contains(&hash) && err.contains("corrupt"), "{args:?}: {err}");
    }
    let report = verify_limited_fails(&repo_dir);
    assert!(report.contains(&hash), "{report}");
    fs::remove_file(repo_dir.join("channels/many")).unwrap();
    slate_ok(&["gc", "--repo", r]);
    verify_ok(&repo_dir);

    // An index claiming 2^60 entries, with a valid checksum so that the
    // count itself is what the reader must refuse.
    let mut idx = b"SLATEIX\0\x01".to_vec();
    idx.extend_from_slice(&(1u64 << 30).to_le_bytes());
    idx.extend_from_slice(&(1u64 << 60).to_le_bytes());
    idx.extend_from_slice(&[0u8; 56]);
    let sum = Id32::hash(&idx);
    idx.extend_from_slice(&sum.0);
    let idx_id = "ab".repeat(32);
    let idx_path = repo_dir.join(format!("packs/ab/{idx_id}.idx"));
    fs::create_dir_all(idx_path.parent().unwrap()).unwrap();
    fs::write(&idx_path, &idx).unwrap();
    let tree = t.path().join("tree");
    fs::create_dir(&tree).unwrap();
    for args in [
        vec!["checkout", "--repo", r, "carrier", d],
        vec!["commit", "--repo", r, "--channel", "x", s(&tree)],
        vec!["gc", "--repo", r],
    ] {
        let err = slate_limited_fail(&args);
        assert!(err.contains(&idx_id) && err.contains("entry count"), "{args:?}: {err}");
    }
    let report = verify_limited_fails(&repo_dir);
    assert!(report.contains(&idx_id), "{report}");
    fs::remove_file(&idx_path).unwrap();

    // Channel files with garbage: refused by every reader, and never
    // overwritten by a writer that could not read them.
    let garbage = repo_dir.join("channels/garbage");
    let long_line = [b"slate-channel-v1\n".as_slice(), &vec![b'7'; 32 << 20]].concat();
    for content in [
        Rng::new(7).bytes(100_000),
        b"slate-channel-v1\nnot an id\n".to_vec(),
        long_line,
    ] {
        fs::write(&garbage, &content).unwrap();
        for args in [
            vec!["log", "--repo", r, "garbage"],
            vec!["checkout", "--repo", r, "garbage", d],
            vec!["commit", "--repo", r, "--channel", "garbage", s(&tree)],
            vec!["gc", "--repo", r],
        ] {
            let err = slate_limited_fail(&args);
            assert!(err.contains("channel garbage is corrupt"), "{args:?}: {err}");
        }
        let report = verify_limited_fails(&repo_dir);
        assert!(report.contains("channel garbage is corrupt"), "{report}");
        assert!(
            fs::read(&garbage).unwrap() == content,
            "a writer replaced a channel it could not read"
        );
    }
    assert!(!dest.exists());
}

// ---------------------------------------------------------------------------
// 7. Wrong arguments
// ---------------------------------------------------------------------------

#[test]
fn wrong_arguments_are_one_line_errors() {
    let t = scratch();
    let repo = t.path().join("repo");
    let r = s(&repo);
    slate_ok(&["init", "--repo", r]);
    let tree = t.path().join("tree");
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::write(tree.join("etc/hostname"), b"box\n").unwrap();
    commit(&repo, "c", &tree, "one");

    // Checkout into a non-empty directory, or onto a file: refused, and
    // what is there stays as it was.
    let full = t.path().join("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("keep"), b"mine").unwrap();
    let err = slate_fail(&["checkout", "--repo", r, "c", s(&full)]);
    assert!(err.contains("is not empty"), "{err}");
    assert_eq!(walk(&full).len(), 1);
    let file = t.path().join("a-file");
    fs::write(&file, b"mine").unwrap();
    let err = slate_fail(&["checkout", "--repo", r, "c", s(&file)]);
    assert!(err.contains("not a directory"), "{err}");
    assert_eq!(fs::read(&file).unwrap(), b"mine");
    let err = slate_fail(&["checkout", "--repo", r, "nosuch", s(&t.path().join("new"))]);
    assert!(err.contains("no snapshot or channel named"), "{err}");

    // Commit of something that is not a directory.
    let err = slate_fail(&["commit", "--repo", r, "--channel", "c", s(&file)]);
    assert!(err.contains("is not a directory"), "{err}");
    let err = slate_fail(&["commit", "--repo", r, "--channel", "c", s(&t.path().join("absent"))]);
    assert!(err.contains("No such file"), "{err}");

    // Invalid channel names, including ones that would escape channels/.
    for bad in ["../escape", "/abs", "a//b", ".hidden", "a b", ""] {
        let err = slate_fail(&["commit", "--repo", r, "--channel", bad, s(&tree)]);
        assert!(err.contains("not a valid channel name"), "{bad:?}: {err}");
    }
    assert!(!t.path().join("escape").exists());
    assert_eq!(history(&repo, "c").len(), 1);
    assert_eq!(
        files_with_ext(&repo.join("snapshots"), "snap").len(),
        1,
        "a refused commit wrote a record"
    );

    // Something that is not a repository.
    let empty = t.path().join("empty");
    fs::create_dir(&empty).unwrap();
    for args in [
        vec!["log", "--repo", s(&empty)],
        vec!["commit", "--repo", s(&empty), "--channel", "c", s(&tree)],
        vec!["verify", "--repo", s(&t.path().join("absent"))],
        vec!["gc", "--repo", s(&tree)],
    ] {
        let err = slate_fail(&args);
        assert!(err.contains("is not a slate repository"), "{args:?}: {err}");
    }
    assert_eq!(walk(&empty).len(), 0, "a failed command wrote into a non-repository");
    let bad_config = t.path().join("bad-config");
    copy_tree(&repo, &bad_config);
    fs::write(bad_config.join("config"), "slate-repo-v1\nchunk_max = lots\n").unwrap();
    let err = slate_fail(&["log", "--repo", s(&bad_config)]);
    assert!(err.contains("config") && err.contains("not a number"), "{err}");

    // init into a non-empty directory (a tree, or an existing repository).
    for dir in [&tree, &repo] {
        let before = walk(dir);
        let err = slate_fail(&["init", "--repo", s(dir)]);
        assert!(err.contains("not empty"), "{err}");
        assert_eq!(walk(dir), before, "a refused init changed {}", dir.display());
    }
    verify_ok(&repo);
}

// ---------------------------------------------------------------------------
// 8. Full file system
// ---------------------------------------------------------------------------

/// A small ext4 file system loop-mounted at `dir`, unmounted on drop (also
/// when the test fails).
struct SmallFs {
    dir: PathBuf,
}

impl SmallFs {
    /// Mount a fresh `mib`-MiB ext4 image (kept in `work`) on `dir`; `None`
    /// (with a note) when that is impossible here.
    fn mount(work: &Path, dir: &Path, mib: u64) -> Option<SmallFs> {
        let img = work.join(format!("{}.img", dir.file_name().unwrap().to_string_lossy()));
        fs::File::create(&img).unwrap().set_len(mib << 20).unwrap();
        fs::create_dir_all(dir).unwrap();
        // -m 0: no blocks reserved for root, so "full" means full.
        let mkfs = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&img)
            .output();
        if !mkfs.as_ref().is_ok_and(|o| o.status.success()) {
            crate::support::skip(&format!("full-disk test: mkfs.ext4 failed: {mkfs:?}"));
            return None;
        }
        let out = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(dir)
            .output()
            .unwrap();
        if !out.status.success() {
            crate::support::skip(&format!(
                "full-disk test: cannot loop-mount an image here: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            return None;
        }
        Some(SmallFs { dir: dir.to_path_buf() })
    }

    /// Allocate `filler` so that about `keep` bytes stay free.
    fn fill(&self, filler: &Path, keep: u64) {
        let fd = fs::File::create(filler).unwrap();
        let mut len = self.free().saturating_sub(keep);
        // The filler's own extent tree needs blocks too: back off until
        // the allocation fits.
        while len > 0 && rustix::fs::fallocate(&fd, rustix::fs::FallocateFlags::empty(), 0, len).is_err() {
            len = len.saturating_sub(64 << 10);
        }
    }

    /// Bytes an unprivileged writer could still allocate.
    fn free(&self) -> u64 {
        let st = rustix::fs::statvfs(&self.dir).unwrap();
        st.f_bavail * st.f_frsize
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still holds it open: detach it anyway.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Fill `small` to leave `keep` bytes, commit `src` to channel `c`, free
/// the space again. Returns whether the commit landed; a failure must be
/// a clean "No space left" that leaves the channel and a valid repository.
fn full_disk_commit(small: &SmallFs, filler: &Path, keep: u64, repo: &Path, src: &Path) -> bool {
    small.fill(filler, keep);
    let before = history(repo, "c");
    let out = slate(&["commit", "--repo", s(repo), "--channel", "c", s(src)]);
    fs::remove_file(filler).unwrap();
    let after = history(repo, "c");
    let landed = out.status.success();
    if landed {
        assert_eq!(after.len(), before.len() + 1);
    } else {
        let err = error_line(&String::from_utf8_lossy(&out.stderr));
        eprintln!("full disk, {} KiB left: {err}", keep >> 10);
        assert!(err.contains("No space left on device"), "{keep} bytes free: {err}");
        assert_eq!(after, before, "a failed commit moved the channel");
    }
    verify_ok(repo);
    landed
}

#[test]
fn a_full_file_system_fails_commits_and_checkouts_cleanly() {
    if !is_root() {
        crate::support::skip(
            "a_full_file_system_fails_commits_and_checkouts_cleanly: needs root to loop-mount a small file system",
        );
        return;
    }
    let t = scratch();
    let Some(small) = SmallFs::mount(t.path(), &t.path().join("mnt"), 64) else {
        return;
    };
    let repo = small.dir.join("repo");
    let r = s(&repo);
    slate_ok(&["init", "--repo", r]);

    // A snapshot that fits, then a tree that cannot: 80 MiB incompressible.
    let tree = t.path().join("tree");
    fs::create_dir_all(&tree).unwrap();
    fs::write(tree.join("small"), Rng::new(1).bytes(300_000)).unwrap();
    let prev = commit(&repo, "c", &tree, "fits");
    let big = t.path().join("big");
    fs::create_dir_all(&big).unwrap();
    let mut rng = Rng::new(2);
    for i in 0..4 {
        fs::write(big.join(format!("blob{i}")), rng.bytes(20 << 20)).unwrap();
    }
    let free_before = small.free();
    let err = slate_fail(&["commit", "--repo", r, "--channel", "c", s(&big)]);
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(
        history(&repo, "c").iter().map(|x| x.0.clone()).collect::<Vec<_>>(),
        vec![prev.clone()]
    );
    verify_ok(&repo);
    slate_ok(&["gc", "--repo", r]);
    verify_ok(&repo);
    assert_eq!(leftovers(&repo), Vec::<PathBuf>::new(), "gc left leftovers");
    assert!(
        small.free() + (1 << 20) >= free_before,
        "space not given back: {} free before the failed commit, {} after gc",
        free_before,
        small.free()
    );

    // Running out at every stage of a commit (pack data, pack sync, index,
    // record, channel): leave 0, 64 KiB, 128 KiB... free until a 1 MiB
    // commit fits, then go over the last 64 KiB before that in 4 KiB
    // steps. Each attempt commits new content, so nothing deduplicates.
    let filler = small.dir.join("filler");
    let mut attempts = 0;
    let mut head_tree = tree.clone();
    let mut attempt = |keep: u64| -> bool {
        attempts += 1;
        let src = t.path().join(format!("mid{attempts}"));
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("blob"), Rng::new(100 + attempts).bytes(1 << 20)).unwrap();
        let landed = full_disk_commit(&small, &filler, keep, &repo, &src);
        if landed {
            head_tree = src;
        }
        landed
    };
    let fits = (0..40u64)
        .map(|i| i * (64 << 10))
        .find(|&keep| attempt(keep))
        .expect("a 1 MiB commit never fitted in 2.5 MiB");
    for keep in (fits.saturating_sub(64 << 10)..fits).step_by(4 << 10) {
        attempt(keep);
    }
    // A commit needing only a record and a channel line (the head's tree
    // again: every chunk, the manifest's too, is already stored).
    let again = head_tree.clone();
    assert!(
        !full_disk_commit(&small, &filler, 0, &repo, &again),
        "a commit fitted in a full file system"
    );
    assert_checkout_matches(&repo, "c", &head_tree, t.path());
    // gc works on a full file system, which is when it is needed most: here
    // it only deletes (the packs of failed commits are all garbage).
    small.fill(&filler, 0);
    slate_ok(&["gc", "--repo", r]);
    fs::remove_file(&filler).unwrap();
    verify_ok(&repo);
    assert_eq!(leftovers(&repo), Vec::<PathBuf>::new(), "gc left leftovers");
    assert_checkout_matches(&repo, &prev, &tree, t.path());

    // Checkout into a full file system: a clean error, no claim of success.
    let big_repo = t.path().join("big-repo");
    slate_ok(&["init", "--repo", s(&big_repo)]);
    commit(&big_repo, "big", &big, "too big to check out");
    let dest = small.dir.join("dest");
    let err = slate_fail(&["checkout", "--repo", s(&big_repo), "big", s(&dest)]);
    assert!(err.contains("No space left on device"), "{err}");
}
