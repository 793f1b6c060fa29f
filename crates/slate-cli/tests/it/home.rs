//! `slate home`: encrypted, deduplicated backups of home directories,
//! restored bit for bit, with the failures a laptop meets (wrong
//! passphrase, tampered server, kill -9) giving one clear error and losing
//! nothing. These use the local-directory backend.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::nasty::{build_nasty_tree, SPARSE_FILES};
use crate::support::{is_root, s, scratch, slate_bin, Server, Tmpfs};
use crate::treedigest::{assert_same_tree, assert_sparse_preserved};

#[path = "home_privileged.rs"]
mod privileged;

/// Run `slate home ARGS` with `env` set (and the passphrase variable unset unless given).
fn home(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(slate_bin());
    c.arg("home")
        .args(args)
        .env_remove("SLATE_PASSPHRASE")
        .env_remove("SLATE_AGENT_CONFIG");
    c.env_remove("SLATE_HOME_KEY_FILE").stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run slate")
}

fn ok(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = home(args, env);
    assert!(
        out.status.success(),
        "slate home {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn err(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = home(args, env);
    assert!(!out.status.success(), "slate home {args:?} should have failed");
    let e = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!e.contains("panicked"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "one line of error: {e}");
    e
}

/// A machine: its backup store, state dir and key file, as common arguments.
struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    store: String,
    state: String,
    key: String,
}

impl Setup {
    fn new() -> Setup {
        let dir = scratch();
        let root = dir.path().to_path_buf();
        let key = root.join("home.key");
        ok(&["keygen", s(&key)], &[]);
        Setup {
            store: s(&root.join("store")).into(),
            state: s(&root.join("state")).into(),
            key: s(&key).into(),
            root,
            _dir: dir,
        }
    }
    fn args<'a>(&'a self, cmd: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec![
            cmd,
            "--repo-dir",
            &self.store,
            "--state-dir",
            &self.state,
            "--key-file",
            &self.key,
            "--user",
            "alice",
        ];
        v.extend_from_slice(rest);
        v
    }
    fn json(&self, cmd: &str, rest: &[&str]) -> serde_json::Value {
        let mut r = vec!["--json"];
        r.extend_from_slice(rest);
        serde_json::from_str(ok(&self.args(cmd, &r), &[]).trim()).unwrap()
    }
}

fn all_files(p: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            all_files(&e.path(), out);
        } else {
            out.push(e.path());
        }
    }
}

#[test]
fn home_nasty_tree_round_trips_and_the_store_holds_no_plaintext() {
    let m = Setup::new();
    let src = m.root.join("alice");
    build_nasty_tree(&src).unwrap();
    std::fs::write(
        src.join("files/diary-of-a-marker-name.txt"),
        "the plaintext marker sentence\n".repeat(50),
    )
    .unwrap();
    ok(&m.args("init", &[]), &[]);
    let first = m.json("backup", &[s(&src)]);
    assert!(first["files_read"].as_u64().unwrap() > 10);
    // Unchanged: nothing is read again, nothing new stored.
    let second = m.json("backup", &[s(&src)]);
    assert_eq!(second["files_read"], 0, "{second}");
    assert_eq!(second["new_chunks"], 0, "{second}");
    let status: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(&m.state).join("home.json")).unwrap()).unwrap();
    assert_eq!(status["snapshot"], second["snapshot"]);

    let listing = ok(&m.args("snapshots", &[]), &[]);
    assert_eq!(listing.lines().count(), 2, "{listing}");
    let target = m.root.join("restored");
    ok(
        &m.args(
            "restore",
            &[
                "--allow-privileged",
                "--target",
                s(&target),
                first["snapshot"].as_str().unwrap(),
            ],
        ),
        &[],
    );
    let restored = target.join(src.strip_prefix("/").unwrap());
    assert_same_tree(&src, &restored);
    for rel in SPARSE_FILES {
        assert_sparse_preserved(&src, &restored, rel);
    }
    ok(&m.args("check", &[]), &[]);
    let e = err(&m.args("restore", &["--target", s(&target), "latest"]), &[]);
    assert!(e.contains("is not empty") && e.contains("--target"), "{e}");

    // The server's files hold no name, no content and no xattr in the clear.
    let mut files = Vec::new();
    all_files(Path::new(&m.store), &mut files);
    assert!(files.len() >= 4);
    for f in files {
        let data = std::fs::read(&f).unwrap();
        for needle in [
            &b"diary-of-a-marker-name"[..],
            b"plaintext marker sentence",
            b"sparse-64m",
            b"hardlinks",
            b"alice",
            b"posix_acl",
        ] {
            assert!(
                !data.windows(needle.len()).any(|w| w == needle),
                "{} holds {:?} in the clear",
                f.display(),
                String::from_utf8_lossy(needle)
            );
        }
    }
}

#[test]
fn home_wrong_passphrase_and_missing_repository_give_one_clear_error() {
    let m = Setup::new();
    let src = m.root.join("alice");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), "x").unwrap();
    let base = [
        "--repo-dir",
        m.store.as_str(),
        "--state-dir",
        m.state.as_str(),
        "--user",
        "alice",
    ];
    let with = |cmd: &'static str, rest: &[&'static str]| -> Vec<String> {
        let mut v = vec![cmd.to_string()];
        v.extend(base.iter().map(|x| x.to_string()));
        v.extend(rest.iter().map(|x| x.to_string()));
        v
    };
    let run = |v: &[String], pass: &str| {
        home(
            &v.iter().map(String::as_str).collect::<Vec<_>>(),
            &[("SLATE_PASSPHRASE", pass)],
        )
    };
    let out = run(&with("init", &[]), "correct horse");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut b = with("backup", &[]);
    b.push(s(&src).to_string());
    assert!(run(&b, "correct horse").status.success());
    let out = run(&b, "correct hors");
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("no backup repository for this key") && e.contains("wrong passphrase"),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1);
    // No new repository was started by the typo.
    assert_eq!(std::fs::read_dir(&m.store).unwrap().count(), 1);
    // The same passphrase for another user opens nothing either.
    let mut other = b.clone();
    let pos = other.iter().position(|x| x == "alice").unwrap();
    other[pos] = "bob".into();
    assert!(!run(&other, "correct horse").status.success());
    // No passphrase at all, no terminal: one clear sentence.
    let e = err(
        &with("snapshots", &[]).iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    );
    assert!(e.contains("SLATE_PASSPHRASE"), "{e}");
    // No paths: the state policy's list is not there yet.
    let e = err(&m.args("backup", &[]), &[]);
    assert!(e.contains("no paths given"), "{e}");
}

#[test]
fn home_tampered_pack_is_named() {
    let m = Setup::new();
    let src = m.root.join("alice");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), vec![7u8; 300_000]).unwrap();
    ok(&m.args("init", &[]), &[]);
    ok(&m.args("backup", &[s(&src)]), &[]);
    let mut packs = Vec::new();
    all_files(Path::new(&m.store), &mut packs);
    let pack = packs
        .into_iter()
        .find(|p| p.parent().unwrap().ends_with("pack"))
        .unwrap();
    let mut data = std::fs::read(&pack).unwrap();
    let n = data.len();
    data[n / 2] ^= 1;
    std::fs::write(&pack, data).unwrap();
    let name = pack.file_name().unwrap().to_str().unwrap();
    let e = err(&m.args("restore", &["--target", s(&m.root.join("out")), "latest"]), &[]);
    assert!(e.contains(name) && e.contains("changed on the server"), "{e}");
    let out = home(&m.args("check", &[]), &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(name));
    assert!(String::from_utf8_lossy(&out.stderr).contains("problems"));
}

#[test]
fn home_kill_9_mid_backup_then_rerun_completes_and_reuses_what_was_sent() {
    let m = Setup::new();
    let src = m.root.join("alice");
    std::fs::create_dir_all(&src).unwrap();
    // 96 MiB of incompressible data in a few files.
    let mut x: u64 = 0x1234_5678_9abc_def1;
    for i in 0..3 {
        let data: Vec<u8> = (0..(32 << 20) / 8)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect();
        std::fs::write(src.join(format!("big-{i}")), data).unwrap();
    }
    ok(&m.args("init", &[]), &[]);
    let args = m.args("backup", &["--pack-size", "1048576", s(&src)]);
    let mut child = Command::new(slate_bin())
        .arg("home")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let store = PathBuf::from(&m.store);
    let count = |kind: &str| {
        let mut n = 0;
        if let Ok(rd) = std::fs::read_dir(&store) {
            for r in rd.flatten() {
                n += std::fs::read_dir(r.path().join(kind)).map(|d| d.count()).unwrap_or(0);
            }
        }
        n
    };
    let t0 = std::time::Instant::now();
    while count("index") < 20 && t0.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "the backup finished before it could be killed");
    assert_eq!(count("snapshot"), 0);
    let sent = count("index");
    assert!(sent >= 20);
    // The repository is valid as it is, and the rerun completes, storing
    // only what the killed run had not.
    ok(&m.args("check", &[]), &[]);
    let rerun = m.json("backup", &["--pack-size", "1048576", s(&src)]);
    let added = rerun["added_bytes"].as_u64().unwrap();
    assert!(
        added + (sent as u64 - 1) * (1 << 20) <= (96 << 20) + (4 << 20),
        "added {added} after {sent} packs were sent"
    );
    ok(&m.args("check", &[]), &[]);
    let target = m.root.join("out");
    ok(&m.args("restore", &["--target", s(&target), "latest"]), &[]);
    assert_same_tree(&src, &target.join(src.strip_prefix("/").unwrap()));
    // The killed run's lock (its process is gone) does not block a prune,
    // which removes the pack it left without an index, if any.
    ok(&m.args("forget", &["--prune"]), &[]);
    ok(&m.args("check", &[]), &[]);
    assert_eq!(count("lock"), 0);
}

#[test]
fn home_forget_and_prune() {
    let m = Setup::new();
    let src = m.root.join("alice");
    std::fs::create_dir_all(&src).unwrap();
    ok(&m.args("init", &[]), &[]);
    let mut ids = Vec::new();
    for i in 0..3u8 {
        std::fs::write(src.join("f"), vec![i; 2_000_000]).unwrap();
        std::fs::write(src.join(format!("g{i}")), vec![i + 100; 500_000]).unwrap();
        ids.push(m.json("backup", &[s(&src)])["snapshot"].as_str().unwrap().to_string());
    }
    let size = |p: &str| -> u64 {
        let mut files = Vec::new();
        all_files(Path::new(p), &mut files);
        files.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum()
    };
    let before = size(&m.store);
    let e = err(&m.args("forget", &[]), &[]);
    assert!(e.contains("no keep rule"), "{e}");
    let st = m.json("forget", &["--keep-last", "1", "--prune"]);
    assert_eq!(st["forgotten"].as_array().unwrap().len(), 2);
    assert_eq!(st["kept"][0], ids[2].as_str());
    assert!(size(&m.store) < before, "prune freed nothing");
    ok(&m.args("check", &[]), &[]);
    let snaps = ok(&m.args("snapshots", &[]), &[]);
    assert_eq!(snaps.lines().count(), 1);
    let target = m.root.join("out");
    ok(&m.args("restore", &["--target", s(&target), "latest"]), &[]);
    assert_same_tree(&src, &target.join(src.strip_prefix("/").unwrap()));
    let _ = is_root();
}

// ---- Over HTTP, through a real `slate serve` on 127.0.0.1 ----

/// A machine enrolled on `repo`'s server: its AGENT.toml (pointing at `url`) and state dir.
struct Machine {
    dir: PathBuf,
    config: String,
}

impl Machine {
    fn enroll(root: &Path, repo: &Path, name: &str, url: &str) -> Machine {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let out = crate::support::slate(&["fleet", "enroll", name, "--repo", s(repo)]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::write(dir.join("token"), &out.stdout).unwrap();
        let m = Machine {
            config: s(&dir.join("agent.toml")).into(),
            dir,
        };
        m.point_at(url);
        m
    }
    fn point_at(&self, url: &str) {
        let text = format!(
            "server = [{}]\ntrust = [\"/nonexistent/key.pub\"]\nstate_dir = {:?}\ntoken_file = {:?}\ntimeout_secs = 5\n\n[slots]\na = \"/nonexistent/a\"\nb = \"/nonexistent/b\"\n",
            crate::support::token_server(url),
            s(&self.dir.join("state")),
            s(&self.dir.join("token")),
        );
        std::fs::write(&self.config, text).unwrap();
    }
    fn args<'a>(&'a self, cmd: &'a str, key: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec![cmd, "--config", &self.config, "--key-file", key, "--user", "alice"];
        v.extend_from_slice(rest);
        v
    }
}

#[test]
fn home_crashed_laptop_walkthrough_over_http() {
    let d = scratch();
    let repo = d.path().join("server-repo");
    crate::support::slate_ok(&["init", "--repo", s(&repo)]);
    let server = Server::start(&["--repo", s(&repo)]);
    let key = d.path().join("alice.key");
    ok(&["keygen", s(&key)], &[]);
    let key = s(&key).to_string();

    // Machine 1: alice's laptop backs up her home.
    let m1 = Machine::enroll(d.path(), &repo, "lt-17", &server.url);
    let home1 = m1.dir.join("home/alice");
    build_nasty_tree(&home1).unwrap();
    std::fs::write(
        home1.join("files/thesis-final-marker.tex"),
        "chapter one marker text\n".repeat(100),
    )
    .unwrap();
    ok(&m1.args("init", &key, &[]), &[]);
    let snap = ok(&m1.args("backup", &key, &[s(&home1)]), &[]);
    let home_json = std::fs::read_to_string(m1.dir.join("state/home.json")).unwrap();
    assert!(home_json.contains(snap.trim()), "{home_json}");
    let status = crate::support::slate_ok(&["status", "--config", &m1.config]);
    assert!(
        status.contains("last home backup: ") && status.contains("(alice)"),
        "{status}"
    );

    // Without a token the server refuses; with a revoked one as well.
    let no_token = Machine {
        dir: m1.dir.clone(),
        config: s(&m1.dir.join("anon.toml")).into(),
    };
    std::fs::write(
        &no_token.config,
        format!(
            "server = {:?}\ntrust = [\"/k.pub\"]\nstate_dir = \"/nonexistent\"\n[slots]\na = \"/a\"\nb = \"/b\"\n",
            server.url
        ),
    )
    .unwrap();
    let e = err(&no_token.args("snapshots", &key, &[]), &[]);
    assert!(e.contains("token"), "{e}");

    // The laptop is stolen. Machine 2, enrolled with its own token, restores.
    let m2 = Machine::enroll(d.path(), &repo, "lt-23", &server.url);
    let listing = ok(&m2.args("snapshots", &key, &[]), &[]);
    assert!(listing.contains(&snap.trim()[..12]), "{listing}");
    let target = m2.dir.join("root");
    ok(
        &m2.args(
            "restore",
            &key,
            &["--allow-privileged", "--target", s(&target), "latest"],
        ),
        &[],
    );
    let home2 = target.join(home1.strip_prefix("/").unwrap());
    assert_same_tree(&home1, &home2);
    for rel in SPARSE_FILES {
        assert_sparse_preserved(&home1, &home2, rel);
    }
    // Backups continue from machine 2 once the stolen laptop is revoked
    // (the repository is lt-17's until then: another machine only reads).
    let e = err(&m2.args("backup", &key, &["--json", s(&home2)]), &[]);
    assert!(e.contains("403"), "{e}");
    crate::support::slate_ok(&["fleet", "revoke", "lt-17", "--repo", s(&repo)]);
    let v: serde_json::Value =
        serde_json::from_str(ok(&m2.args("backup", &key, &["--json", s(&home2)]), &[]).trim()).unwrap();
    assert!(
        v["new_chunks"].as_u64().unwrap() <= 1,
        "at most a manifest chunk is new: {v}"
    );

    // The server's files hold nothing in the clear.
    let mut files = Vec::new();
    all_files(&repo.join("home"), &mut files);
    assert!(files.len() > 4);
    for f in &files {
        let data = std::fs::read(f).unwrap();
        for needle in [
            &b"thesis-final-marker"[..],
            b"chapter one marker text",
            b"alice",
            b"sparse-64m",
        ] {
            assert!(
                !data.windows(needle.len()).any(|w| w == needle),
                "{} leaks {needle:?}",
                f.display()
            );
        }
    }
}

/// `n` MiB of incompressible bytes in `dir/name`.
fn noise(dir: &Path, name: &str, n: usize, seed: u64) {
    let mut x = seed | 1;
    let data: Vec<u8> = (0..(n << 20) / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), data).unwrap();
}

#[test]
fn home_server_vanishing_mid_backup_loses_nothing() {
    let d = scratch();
    let repo = d.path().join("server-repo");
    crate::support::slate_ok(&["init", "--repo", s(&repo)]);
    let server = Server::start(&["--repo", s(&repo)]);
    let key = d.path().join("k");
    ok(&["keygen", s(&key)], &[]);
    let key = s(&key).to_string();
    let m = Machine::enroll(d.path(), &repo, "lt-1", &server.url);
    let home1 = m.dir.join("home");
    noise(&home1, "a", 64, 7);
    ok(&m.args("init", &key, &[]), &[]);
    let args = m.args("backup", &key, &["--pack-size", "1048576", s(&home1)]);
    let child = Command::new(slate_bin())
        .arg("home")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The repository's directory, not the server's `_owners` beside it
    // (directory order is arbitrary).
    let index_dir = std::fs::read_dir(repo.join("home"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| !p.file_name().unwrap().to_string_lossy().starts_with('_'))
        .unwrap()
        .join("index");
    let t0 = std::time::Instant::now();
    while std::fs::read_dir(&index_dir).map(|d| d.count()).unwrap_or(0) < 10 && t0.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    drop(server); // the server vanishes
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "the backup finished before the server vanished");
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("no backup server answered"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    // The timer's run is quiet about it and exits 0.
    let out = home(&m.args("backup", &key, &["--quiet-offline", s(&home1)]), &[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("offline"));

    // The server comes back (on another port): the backup completes and reuses what was sent.
    let server = Server::start(&["--repo", s(&repo)]);
    m.point_at(&server.url);
    let v: serde_json::Value = serde_json::from_str(
        ok(
            &m.args("backup", &key, &["--json", "--pack-size", "1048576", s(&home1)]),
            &[],
        )
        .trim(),
    )
    .unwrap();
    assert!(v["added_bytes"].as_u64().unwrap() < (64 << 20) - (8 << 20), "{v}");
    ok(&m.args("check", &key, &[]), &[]);
    let target = m.dir.join("out");
    ok(
        &m.args(
            "restore",
            &key,
            &["--allow-privileged", "--target", s(&target), "latest"],
        ),
        &[],
    );
    assert_same_tree(&home1, &target.join(home1.strip_prefix("/").unwrap()));
}

#[test]
fn home_full_server_disk_gives_one_clear_error_and_loses_nothing() {
    if !is_root() {
        crate::support::skip("mounting a tmpfs needs root");
        return;
    }
    let d = scratch();
    let repo = d.path().join("server-repo");
    crate::support::slate_ok(&["init", "--repo", s(&repo)]);
    let disk = Tmpfs::mount("6m");
    let server = Server::start(&["--repo", s(&repo), "--home-dir", s(disk.path())]);
    let key = d.path().join("k");
    ok(&["keygen", s(&key)], &[]);
    let key = s(&key).to_string();
    let m = Machine::enroll(d.path(), &repo, "lt-1", &server.url);
    let small = m.dir.join("small");
    noise(&small, "a", 1, 3);
    ok(&m.args("init", &key, &[]), &[]);
    ok(&m.args("backup", &key, &[s(&small)]), &[]);
    let big = m.dir.join("big");
    noise(&big, "b", 16, 5);
    let e = err(&m.args("backup", &key, &["--pack-size", "1048576", s(&big)]), &[]);
    assert!(e.contains("out of disk space"), "{e}");
    // What was stored before is intact.
    ok(&m.args("check", &key, &[]), &[]);
    let target = m.dir.join("out");
    ok(&m.args("restore", &key, &["--target", s(&target), "latest"]), &[]);
    assert_same_tree(&small, &target.join(small.strip_prefix("/").unwrap()));
}
