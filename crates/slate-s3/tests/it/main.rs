//! slate-s3's integration tests: the storage and a whole repository
//! (commit, checkout, verify, gc) against a real S3 server (moto, started
//! per test; see `slate_s3::test_server`).

use std::io::Write;
use std::path::Path;

use slate_repo::commit::{commit, CommitOptions};
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
    let plan = slate_repo::gc::gc(&repo, Some(1), false).unwrap();
    assert_eq!(plan.drop_snapshots, std::slice::from_ref(&on_s3.snapshot));
    assert!(
        !plan.drop_packs.is_empty() || !plan.rewrite_packs.is_empty(),
        "{plan:?}"
    );
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
