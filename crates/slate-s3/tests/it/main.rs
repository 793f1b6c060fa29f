//! slate-s3's integration tests: the storage and a whole repository
//! (commit, checkout, verify, gc) against a real S3 server (moto, started
//! per test; see `slate_s3::test_server`).

use std::io::Write;
use std::path::Path;

use std::time::Duration;

use slate_repo::commit::{commit, commit_with_hook, CommitOptions};
use slate_repo::gc::{GcOptions, GcPlan};
use slate_repo::pending::{Kind, Pending};
use slate_repo::progress::NoProgress;
use slate_repo::storage::Storage;
use slate_repo::{Config, Repo};
use slate_s3::requests::Op;
use slate_s3::test_server::TestS3;

/// Bytes that do not compress (xorshift), so a pack gets as large as its input.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A small tree with each kind of entry a root file system has.
fn make_tree(dir: &Path, big: usize) {
    std::fs::create_dir_all(dir.join("etc/empty")).unwrap();
    std::fs::write(dir.join("etc/hostname"), "s3\n").unwrap();
    std::fs::write(dir.join("etc/os-release"), "ID=debian\nVERSION_ID=12\n").unwrap();
    std::fs::write(dir.join("big"), noise(big, 7)).unwrap();
    std::fs::hard_link(dir.join("etc/hostname"), dir.join("etc/hostname.link")).unwrap();
    std::os::unix::fs::symlink("hostname", dir.join("etc/name")).unwrap();
    let sparse = std::fs::File::create(dir.join("sparse")).unwrap();
    sparse.set_len(8 << 20).unwrap();
    (&sparse).write_all(b"head").unwrap();
}

/// A gc on `repo` with a grace period of `grace` seconds.
fn gc(repo: &Repo, keep_last: Option<usize>, grace: u64) -> GcPlan {
    slate_repo::gc::gc(
        repo,
        &GcOptions {
            keep_last,
            dry_run: false,
            grace: Duration::from_secs(grace),
        },
    )
    .unwrap()
}

fn verify_clean(repo: &Repo) {
    let report = slate_repo::verify::verify(repo, &[], &NoProgress).unwrap();
    assert!(report.faults.is_empty(), "{:?}", report.faults);
}

fn opts(channel: &str) -> CommitOptions<'_> {
    CommitOptions {
        channel,
        message: "test".into(),
        sign: None,
        metadata: Vec::new(),
    }
}

#[test]
fn storage_round_trips_on_s3() {
    let Some(s3) = TestS3::start() else { return };
    s3.create_bucket("slate");
    let s = s3.storage("s3://slate/some/prefix");
    s.write("channels/a/b", b"history").unwrap();
    assert_eq!(s.read("channels/a/b").unwrap(), b"history");
    assert_eq!(
        s.read("channels/none").unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
    // Above the single-PUT size: a multipart upload of several parts.
    let data = noise(21 << 20, 3);
    let mut w = s.create().unwrap();
    w.write_all(&data).unwrap();
    w.finish("packs/ab/big.pack").unwrap();
    assert_eq!(s.len("packs/ab/big.pack").unwrap(), data.len() as u64);
    // 21 MiB in 8 MiB parts: one upload of three parts.
    assert_eq!(s.requests().get(Op::MultipartUpload), 1);
    assert_eq!(s.requests().get(Op::Part), 3);
    assert_eq!(s.requests().get(Op::Put), 1);
    let mut buf = vec![0u8; 1000];
    s.read_at("packs/ab/big.pack", 20 << 20, &mut buf).unwrap();
    assert_eq!(buf, data[20 << 20..(20 << 20) + 1000]);
    assert_eq!(s.read("packs/ab/big.pack").unwrap(), data);
    assert_eq!(s.list("").unwrap(), ["channels/a/b", "packs/ab/big.pack"]);
    assert_eq!(s.list("channels").unwrap(), ["channels/a/b"]);
    // Another prefix in the same bucket sees none of it.
    assert!(s3.storage("s3://slate/some/other").list("").unwrap().is_empty());
    s.delete("packs/ab/big.pack").unwrap();
    s.delete("packs/ab/big.pack").unwrap();
    assert_eq!(s.list("packs").unwrap(), Vec::<String>::new());
}

#[test]
fn commit_checkout_gc_on_s3_match_a_local_repository() {
    let Some(s3) = TestS3::start() else { return };
    s3.create_bucket("fleet");
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    make_tree(&tree, 20 << 20);

    let url = "s3://fleet/repo";
    let repo = Repo::init_storage(Box::new(s3.storage(url)), url, Config::default()).unwrap();
    assert!(matches!(
        Repo::init_storage(Box::new(s3.storage(url)), url, Config::default()),
        Err(slate_repo::Error::Invalid(_))
    ));
    assert!(matches!(
        Repo::open_storage(Box::new(s3.storage("s3://fleet/nothing")), "s3://fleet/nothing"),
        Err(slate_repo::Error::NotARepository(_))
    ));
    let on_s3 = commit(&repo, &tree, &opts("lab"), &NoProgress).unwrap();
    let local = Repo::init(&dir.path().join("local"), Config::default()).unwrap();
    let on_disk = commit(&local, &tree, &opts("lab"), &NoProgress).unwrap();

    // The same tree gives the same manifest and the same packs, byte for byte.
    let repo = Repo::open_storage(Box::new(s3.storage(url)), url).unwrap();
    let a = repo.load("lab").unwrap();
    let b = local.load("lab").unwrap();
    assert_eq!(a.snapshot.manifest.hash, b.snapshot.manifest.hash);
    assert_eq!(a.id.to_hex(), on_s3.snapshot);
    let packs = |r: &Repo| -> Vec<(String, Vec<u8>)> {
        let keys = r.storage.list("packs").unwrap();
        keys.into_iter()
            .map(|k| (k.clone(), r.storage.read(&k).unwrap()))
            .collect()
    };
    assert_eq!(packs(&repo), packs(&local));
    assert_eq!(on_s3.packs, on_disk.packs);

    // A checkout from S3 is the tree again: committing it elsewhere gives
    // the same manifest (every byte, mode, owner, time, link and hole).
    let out = dir.path().join("out");
    repo.checkout("lab", &out, false, &NoProgress).unwrap();
    let again = Repo::in_memory(Config::default());
    commit(&again, &out, &opts("lab"), &NoProgress).unwrap();
    assert_eq!(
        again.load("lab").unwrap().snapshot.manifest.hash,
        a.snapshot.manifest.hash
    );
    let report = slate_repo::verify::verify(&repo, &[], &NoProgress).unwrap();
    assert!(report.faults.is_empty(), "{:?}", report.faults);

    // A second snapshot, then gc keeping only it: the first's big file goes.
    std::fs::write(tree.join("big"), noise(3 << 20, 9)).unwrap();
    let second = commit(&repo, &tree, &opts("lab"), &NoProgress).unwrap();
    assert_eq!(second.parent.as_deref(), Some(on_s3.snapshot.as_str()));
    let plan = gc(&repo, Some(1), 0);
    assert_eq!(plan.drop_snapshots, std::slice::from_ref(&on_s3.snapshot));
    assert!(
        !plan.drop_packs.is_empty() || !plan.rewrite_packs.is_empty(),
        "{plan:?}"
    );
    // Recorded only: the old snapshot is still there until a later gc.
    assert!(repo.read_snapshot(&repo.resolve(&on_s3.snapshot).unwrap()).is_ok());
    let second_gc = gc(&repo, None, 3600);
    assert!(second_gc.pending.unwrap().deleted >= 2, "the snapshot and a pack");
    let report = slate_repo::verify::verify(&repo, &[], &NoProgress).unwrap();
    assert!(report.faults.is_empty(), "{:?}", report.faults);
    let out2 = dir.path().join("out2");
    repo.checkout("lab", &out2, false, &NoProgress).unwrap();
    assert_eq!(std::fs::read(out2.join("big")).unwrap(), noise(3 << 20, 9));
    assert!(repo
        .resolve(&on_s3.snapshot)
        .is_ok_and(|id| repo.read_snapshot(&id).is_err()));
}

#[test]
fn a_commit_fails_when_another_moved_its_channel_meanwhile() {
    let Some(s3) = TestS3::start() else { return };
    s3.create_bucket("race");
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    make_tree(&tree, 1 << 20);
    let url = "s3://race/repo";
    let repo = Repo::init_storage(Box::new(s3.storage(url)), url, Config::default()).unwrap();
    // A writer reads the channel (absent), another creates it, and the
    // first one's update is refused rather than overwriting it.
    let (h, absent) = repo.channel_history_expecting("lab").unwrap();
    assert!(h.is_empty());
    let first = commit(&repo, &tree, &opts("lab"), &NoProgress).unwrap();
    let err = repo.set_channel_history_if("lab", &[], &absent).unwrap_err();
    assert!(
        matches!(&err, slate_repo::Error::ChannelMoved(c) if c == "lab"),
        "{err}"
    );
    // Likewise for a channel read before the second commit moved it.
    let (h, tag) = repo.channel_history_expecting("lab").unwrap();
    assert_eq!(h.len(), 1);
    let second = commit(&repo, &tree, &opts("lab"), &NoProgress).unwrap();
    assert_eq!(second.parent.as_deref(), Some(first.snapshot.as_str()));
    let err = repo.set_channel_history_if("lab", &h, &tag).unwrap_err();
    assert!(matches!(err, slate_repo::Error::ChannelMoved(_)), "{err}");
    assert_eq!(repo.channel_history("lab").unwrap().len(), 2, "nothing was changed");
}

#[test]
fn gc_beside_a_commit_on_s3_deletes_nothing_the_commit_needs() {
    let Some(s3) = TestS3::start() else { return };
    s3.create_bucket("gcrace");
    let dir = tempfile::tempdir().unwrap();
    let url = "s3://gcrace/repo";
    let repo = Repo::init_storage(Box::new(s3.storage(url)), url, Config::default()).unwrap();
    let open = || Repo::open_storage(Box::new(s3.storage(url)), url).unwrap();
    let (t1, t2, t3) = (dir.path().join("t1"), dir.path().join("t2"), dir.path().join("t3"));
    make_tree(&t1, 2 << 20);
    make_tree(&t2, 1 << 20);
    std::fs::write(t2.join("big"), noise(1 << 20, 11)).unwrap();
    make_tree(&t3, 1 << 20);
    std::fs::write(t3.join("big"), noise(1 << 20, 13)).unwrap();
    let old = commit(&repo, &t1, &opts("old"), &NoProgress).unwrap();
    commit(&repo, &t2, &opts("lab"), &NoProgress).unwrap();

    // Channel "old" goes; a first gc only records its snapshot and pack.
    repo.storage.delete("channels/old").unwrap();
    let first = gc(&repo, None, 0);
    assert_eq!(first.pending.as_ref().unwrap().deleted, 0);
    let (record, _) = Pending::read(repo.storage.as_ref()).unwrap();
    assert!(record.entries.contains_key(&(Kind::Snapshot, old.snapshot.clone())));
    let old_packs = record.packs();
    assert!(!old_packs.is_empty());
    verify_clean(&repo);

    // A commit of t1's content again: its big file's chunks are only in the
    // pending pack, which it must not reuse. Between writing its objects
    // and moving its channel, another gc runs: it deletes the old pack
    // (past its grace, still dead) and records the commit's unpublished
    // objects, but deletes none of them.
    let mut during = None;
    let again = commit_with_hook(&repo, &t1, &opts("lab"), &NoProgress, &mut || {
        let other = open();
        let plan = gc(&other, None, 3600);
        for p in &old_packs {
            assert!(
                !other.storage.exists(&slate_repo::index::pack_key(p)),
                "old pack deleted"
            );
        }
        during = plan.pending;
        Ok(())
    })
    .unwrap();
    let during = during.unwrap();
    assert!(during.deleted >= 2, "{during:?}");
    assert!(during.recorded >= 2, "the commit's pack and snapshot: {during:?}");
    assert!(
        again.new_bytes >= 2 << 20,
        "the pending pack's chunks were written anew: {again:?}"
    );
    verify_clean(&repo);
    let out = dir.path().join("out");
    repo.checkout("lab", &out, false, &NoProgress).unwrap();
    assert_eq!(std::fs::read(out.join("big")).unwrap(), noise(2 << 20, 7));

    // The next gc finds the commit's objects live again and strikes them.
    let after = gc(&repo, None, 3600).pending.unwrap();
    assert!(after.struck >= 2 && after.deleted == 0, "{after:?}");
    verify_clean(&repo);

    // A gc whose grace is shorter than twice the commit's run: the commit
    // refuses to move its channel, and the objects it left are deleted later.
    let before = repo.channel_history("lab").unwrap();
    let err = commit_with_hook(&repo, &t3, &opts("lab"), &NoProgress, &mut || {
        gc(&open(), None, 0);
        std::thread::sleep(Duration::from_millis(50));
        Ok(())
    })
    .unwrap_err();
    assert!(matches!(err, slate_repo::Error::GcRace { .. }), "{err}");
    assert!(err.to_string().contains("--grace"), "{err}");
    assert_eq!(repo.channel_history("lab").unwrap(), before, "nothing was changed");
    let cleaned = gc(&repo, None, 3600).pending.unwrap();
    assert!(cleaned.deleted >= 2, "{cleaned:?}");
    verify_clean(&repo);
    repo.checkout("lab", &dir.path().join("out2"), false, &NoProgress)
        .unwrap();
}

#[test]
fn gc_trimming_a_channel_a_commit_moved_meanwhile_changes_nothing() {
    let Some(s3) = TestS3::start() else { return };
    s3.create_bucket("trim");
    let dir = tempfile::tempdir().unwrap();
    let url = "s3://trim/repo";
    let repo = Repo::init_storage(Box::new(s3.storage(url)), url, Config::default()).unwrap();
    let tree = dir.path().join("tree");
    make_tree(&tree, 1 << 20);
    for seed in [21, 22] {
        std::fs::write(tree.join("big"), noise(1 << 20, seed)).unwrap();
        commit(&repo, &tree, &opts("lab"), &NoProgress).unwrap();
    }
    let keys = repo.storage.list("").unwrap();
    // gc plans to keep one snapshot; a commit lands before it trims: its
    // conditional replacement of the channel fails, and nothing changes.
    std::fs::write(tree.join("big"), noise(1 << 20, 23)).unwrap();
    let grace = GcOptions {
        keep_last: Some(1),
        dry_run: false,
        grace: Duration::ZERO,
    };
    let mut landed = Vec::new();
    let err = slate_repo::gc::gc_with_hook(&repo, &grace, &mut || {
        let other = Repo::open_storage(Box::new(s3.storage(url)), url).unwrap();
        let c = commit(&other, &tree, &opts("lab"), &NoProgress).unwrap();
        landed = other.storage.list("").unwrap();
        assert!(landed.len() > keys.len(), "{c:?}");
        Ok(())
    })
    .unwrap_err();
    assert!(
        matches!(&err, slate_repo::Error::ChannelMoved(c) if c == "lab"),
        "{err}"
    );
    assert_eq!(repo.channel_history("lab").unwrap().len(), 3, "the commit is kept");
    assert_eq!(repo.storage.list("").unwrap(), landed, "gc changed nothing");
    verify_clean(&repo);
}

#[test]
fn a_missing_bucket_is_one_clear_sentence() {
    let Some(s3) = TestS3::start() else { return };
    let url = "s3://no-such-bucket/repo";
    let err = match Repo::open_storage(Box::new(s3.storage(url)), url) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("opened a repository in a missing bucket"),
    };
    assert!(
        err.contains("bucket no-such-bucket does not exist") && !err.contains('\n'),
        "{err}"
    );
}
