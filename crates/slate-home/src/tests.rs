//! Whole-repository tests on the local backend.

use std::path::Path;

use slate_repo::progress::NoProgress;

use crate::backend::LocalDir;
use crate::backup::{backup, BackupOptions};
use crate::crypto::Keys;
use crate::error::Error;
use crate::forget::{check, forget, KeepPolicy};
use crate::repo::{init, kind, HomeRepo};
use crate::restore::restore;

fn open(store: &Path, cache: &Path, keys: &Keys) -> crate::Result<HomeRepo> {
    HomeRepo::open(Box::new(LocalDir::new(store, keys.repo_id())), keys.clone(), cache)
}

fn opts(path: &Path) -> BackupOptions {
    BackupOptions {
        paths: vec![path.to_path_buf()],
        host: "h".into(),
        user: "u".into(),
        compression_level: 3,
        pack_target: 1 << 20,
    }
}

fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::write(root.join("a.txt"), b"secret-content-alpha\n".repeat(1000)).unwrap();
    let mut x: u32 = 1;
    let noise: Vec<u8> = (0..3_000_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    std::fs::write(root.join("sub/noise.bin"), &noise).unwrap();
    std::fs::write(root.join("sub/deeper/empty"), b"").unwrap();
    std::fs::hard_link(root.join("a.txt"), root.join("sub/link")).unwrap();
    std::os::unix::fs::symlink("../a.txt", root.join("sub/sym")).unwrap();
}

fn manifest_of(p: &Path) -> slate_core::manifest::Manifest {
    slate_repo::scan::scan(p).unwrap().manifest
}

#[test]
fn backup_restore_round_trip_and_incremental() {
    let d = tempfile::tempdir().unwrap();
    let (src, store, cache) = (d.path().join("src"), d.path().join("store"), d.path().join("cache"));
    make_tree(&src);
    let keys = Keys::from_master(&[9; 32]);
    assert!(matches!(open(&store, &cache, &keys), Err(Error::NoRepository(_))));
    init(&LocalDir::new(&store, keys.repo_id()), &keys).unwrap();
    assert!(init(&LocalDir::new(&store, keys.repo_id()), &keys).is_err());
    let mut repo = open(&store, &cache, &keys).unwrap();
    let want = manifest_of(&src);
    let s1 = backup(&mut repo, &opts(&src), &NoProgress).unwrap();
    assert_eq!(s1.files_read, 3);
    assert!(s1.packs >= 3, "1 MiB packs: {s1:?}");
    // Nothing changed: nothing read, nothing added but the snapshot.
    let mut repo = open(&store, &cache, &keys).unwrap();
    let s2 = backup(&mut repo, &opts(&src), &NoProgress).unwrap();
    assert_eq!((s2.files_read, s2.new_chunks), (0, 0), "{s2:?}");
    // One file changed: only it is read.
    std::fs::write(src.join("sub/deeper/empty"), b"now with content").unwrap();
    let s3 = backup(&mut repo, &opts(&src), &NoProgress).unwrap();
    assert_eq!(s3.files_read, 1);
    let out = d.path().join("out");
    let st = restore(&repo, &s1.snapshot, Some(&out), &[], true, &NoProgress).unwrap();
    assert_eq!(st.restored.len(), 1);
    let restored = out.join(src.strip_prefix("/").unwrap());
    let got = manifest_of(&restored);
    assert_eq!(want.entries.len(), got.entries.len());
    for (w, g) in want.entries.iter().zip(&got.entries) {
        assert_eq!(w.path, g.path);
        assert_eq!(w.meta, g.meta, "{}", String::from_utf8_lossy(&w.path));
    }
    assert_eq!(std::fs::read(restored.join("sub/deeper/empty")).unwrap(), b"");
    assert_eq!(
        std::fs::read(restored.join("sub/noise.bin")).unwrap(),
        std::fs::read(src.join("sub/noise.bin")).unwrap()
    );
    // A partial restore of one file.
    let out2 = d.path().join("out2");
    restore(&repo, "latest", Some(&out2), &[src.join("sub/link")], true, &NoProgress).unwrap();
    let r2 = out2.join(src.strip_prefix("/").unwrap());
    assert_eq!(
        std::fs::read(r2.join("sub/link")).unwrap(),
        std::fs::read(src.join("a.txt")).unwrap()
    );
    assert!(!r2.join("a.txt").exists());
    assert!(check(&repo).unwrap().problems.is_empty());

    // Forget all but the newest, prune: the repository still restores it and checks clean.
    let st = forget(
        &mut repo,
        &KeepPolicy {
            last: 1,
            ..Default::default()
        },
        true,
    )
    .unwrap();
    assert_eq!((st.kept.len(), st.forgotten.len()), (1, 2));
    let repo = open(&store, &cache, &keys).unwrap();
    let c = check(&repo).unwrap();
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    let out3 = d.path().join("out3");
    restore(&repo, "latest", Some(&out3), &[], true, &NoProgress).unwrap();
}

#[test]
fn wrong_key_and_tampering_are_detected() {
    let d = tempfile::tempdir().unwrap();
    let (src, store, cache) = (d.path().join("src"), d.path().join("store"), d.path().join("cache"));
    make_tree(&src);
    let keys = Keys::from_master(&[1; 32]);
    init(&LocalDir::new(&store, keys.repo_id()), &keys).unwrap();
    let mut repo = open(&store, &cache, &keys).unwrap();
    let s = backup(&mut repo, &opts(&src), &NoProgress).unwrap();
    assert!(matches!(
        open(&store, &d.path().join("c2"), &Keys::from_master(&[2; 32])),
        Err(Error::NoRepository(_))
    ));
    // No plaintext name or content anywhere in the store.
    for ent in walk(&store) {
        let data = std::fs::read(&ent).unwrap();
        for needle in [&b"secret-content-alpha"[..], b"noise.bin", b"deeper"] {
            assert!(
                !data.windows(needle.len()).any(|w| w == needle),
                "{} leaks",
                ent.display()
            );
        }
    }
    // Flip one byte of a pack: restore names the pack, check reports it.
    let packs = repo.backend.list(kind::PACK).unwrap();
    let victim = store.join(keys.repo_id()).join("pack").join(&packs[0].name);
    let mut data = std::fs::read(&victim).unwrap();
    data[100] ^= 0x40;
    std::fs::write(&victim, &data).unwrap();
    let e = restore(&repo, &s.snapshot, Some(&d.path().join("out")), &[], true, &NoProgress).unwrap_err();
    assert!(e.to_string().contains(&packs[0].name), "{e}");
    assert!(!check(&repo).unwrap().problems.is_empty());
}

fn walk(p: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn a_rewrite_that_keeps_size_and_mtime_is_still_read_again() {
    let d = tempfile::tempdir().unwrap();
    let (src, store, cache) = (d.path().join("src"), d.path().join("store"), d.path().join("cache"));
    std::fs::create_dir_all(&src).unwrap();
    let f = src.join("doc.txt");
    std::fs::write(&f, b"version one of the text").unwrap();
    let keys = Keys::from_master(&[5; 32]);
    init(&LocalDir::new(&store, keys.repo_id()), &keys).unwrap();
    let mut repo = open(&store, &cache, &keys).unwrap();
    backup(&mut repo, &opts(&src), &NoProgress).unwrap();
    // Same size, mtime put back: only the ctime tells the file changed.
    let mtime = std::fs::metadata(&f).unwrap().modified().unwrap();
    std::fs::write(&f, b"version two of the text").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let s = backup(&mut repo, &opts(&src), &NoProgress).unwrap();
    assert_eq!(s.files_read, 1, "{s:?}");
    let out = d.path().join("out");
    restore(&repo, "latest", Some(&out), &[], true, &NoProgress).unwrap();
    let restored = out.join(src.strip_prefix("/").unwrap()).join("doc.txt");
    assert_eq!(std::fs::read(restored).unwrap(), b"version two of the text");
}

/// A config whose chunk sizes FastCDC cannot take (found by the
/// `home_objects` fuzz target: it made `slate home backup` panic) is
/// refused when the repository is opened.
#[test]
fn a_config_with_unusable_chunk_sizes_is_refused_on_open() {
    let d = tempfile::tempdir().unwrap();
    let (store, cache) = (d.path().join("store"), d.path().join("cache"));
    let keys = Keys::from_master(&[4; 32]);
    let backend = LocalDir::new(&store, keys.repo_id());
    let mut cfg = crate::format::RepoConfig::new(1);
    cfg.chunk_min = 0;
    let sealed = crate::format::seal_json(&keys, kind::CONFIG, kind::CONFIG, &cfg);
    use crate::backend::Backend;
    assert!(backend.put(kind::CONFIG, kind::CONFIG, &sealed).unwrap());
    match open(&store, &cache, &keys) {
        Err(Error::Invalid(m)) => assert!(m.contains("chunk sizes"), "{m}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a config with chunk_min 0 was accepted"),
    }
}
