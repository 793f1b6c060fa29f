//! The agent end to end, as a machine runs it: a real `slate serve` on
//! 127.0.0.1 (port 0) and `slate update`, `status`, `boot-ok`, `rollback`
//! and `pull` as separate processes, each machine with its own AGENT.toml,
//! state directory, slots and boot directory in a scratch directory.
//!
//! What is checked is what issue 3 promises, from the outside: a slot holds
//! exactly the committed tree (treedigest) after an update, in directory
//! and loop-image slots, with and without a prepared delta; the running
//! slot and the bootloader are untouched until the final switch, whatever
//! instant a pass is killed at, and nothing fetched is fetched again; a
//! tampered, untrusted, replayed, truncated, stalled or vanishing server
//! gives one clear error and switches nothing; boot counting in GRUB and
//! BLS falls back by itself and `boot-ok` reports it; `rollback` and
//! `pull` do what they say.
//!
//! Which snapshot a machine gets is steered through the fleet file: every
//! snapshot NAME a test commits is the head of channel `t/NAME`, assigned
//! to machines whose AGENT.toml says `[labels] want = "NAME"` (unpinned)
//! or `want = "pin-NAME"` (pinned), so one server serves a whole test and
//! a machine moves on by rewriting its own AGENT.toml.
//!
//! Faults are injected by [`Proxy`], a small HTTP proxy on 127.0.0.1 that
//! forwards to the real server and can truncate, stall, throttle or vanish.
//! Every server, proxy, mount and child process is owned by a guard that
//! stops or removes it on drop, so a failing assertion leaves nothing
//! behind.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use slate_agent::boot::{read_grubenv, simulate_boot};
use slate_agent::config::Bootloader;

use crate::support::{corpus, is_root, s, scratch, slate, slate_bin, slate_ok, slate_ok_env, FleetKey, Server};
use crate::treedigest::{assert_same_tree, digest};

#[path = "agent_hostile.rs"]
mod hostile;
#[path = "agent_netboot.rs"]
mod netboot;
#[path = "agent_objects.rs"]
mod objects;
#[path = "agent_replicas.rs"]
mod replicas;
#[path = "sitecache.rs"]
mod sitecache;

const MIB: u64 = 1 << 20;
/// The largest Range request the agent makes (`remote::MAX_RANGE`): the
/// most a killed pass can lose per connection.
const MAX_RANGE: u64 = 8 * MIB;

// ---------------------------------------------------------------------------
// The server, the repository and the fleet.

/// A scratch directory with a signing key, a repository whose snapshots
/// are committed one channel each, and (after [`Lab::serve`]) a server.
struct Lab {
    dir: tempfile::TempDir,
    repo: PathBuf,
    key: PathBuf,
    /// Snapshot ids by name, in commit order.
    ids: Vec<(String, String)>,
    server: Option<Server>,
    /// Rules put before the generated ones in FLEET.toml.
    extra_fleet: String,
    /// For a repository on an object store: the `AWS_*` variables every
    /// `slate` process gets, and the server's local database and private
    /// directories (an object-store repository has no directory for them).
    env: Vec<(&'static str, String)>,
    local: Option<PathBuf>,
    /// The fleet database's `--db` when it is not the local `fleet.db`
    /// (a PostgreSQL URL that several servers share).
    db: Option<String>,
    /// More `slate serve` arguments (`--objects-url ...`).
    extra_serve: Vec<String>,
    /// The S3 server, stopped after everything above.
    s3: Option<slate_s3::test_server::TestS3>,
}

impl Lab {
    fn new() -> Lab {
        let dir = scratch();
        let repo = dir.path().join("repo");
        slate_ok(&["init", "--repo", s(&repo)]);
        let key = dir.path().join("key");
        slate_ok(&["keygen", "--out", s(&key)]);
        Lab {
            dir,
            repo,
            key,
            ids: Vec::new(),
            server: None,
            extra_fleet: String::new(),
            env: Vec::new(),
            local: None,
            db: None,
            extra_serve: Vec::new(),
            s3: None,
        }
    }

    /// A lab whose repository is `s3://lab/repo` on `s3`, a test server.
    fn on_s3(s3: slate_s3::test_server::TestS3) -> Lab {
        s3.create_bucket("lab");
        let dir = scratch();
        let repo = PathBuf::from("s3://lab/repo");
        let env = s3.env();
        slate_ok_env(&["init", "--repo", s(&repo)], &env);
        let key = dir.path().join("key");
        slate_ok(&["keygen", "--out", s(&key)]);
        let local = dir.path().join("server");
        std::fs::create_dir_all(&local).unwrap();
        Lab {
            dir,
            repo,
            key,
            ids: Vec::new(),
            server: None,
            extra_fleet: String::new(),
            env,
            local: Some(local),
            db: None,
            extra_serve: Vec::new(),
            s3: Some(s3),
        }
    }

    /// `--db`, `--state-dir` and `--home-dir` of a lab on an object store.
    fn local_args(&self) -> Vec<String> {
        let Some(l) = &self.local else { return Vec::new() };
        let db = self.db.clone().unwrap_or_else(|| s(&l.join("fleet.db")).to_string());
        let mut args = vec!["--db".to_string(), db];
        for kv in [["--state-dir", "state"], ["--home-dir", "home"]] {
            args.extend([kv[0].to_string(), s(&l.join(kv[1])).to_string()]);
        }
        args
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The public key machines trust.
    fn trust(&self) -> PathBuf {
        self.path().join("key.pub")
    }

    /// Commit `tree` as the head of channel `t/NAME`, signed with `sign`
    /// (unsigned with None); returns the snapshot id.
    fn commit_signed(&mut self, name: &str, tree: &Path, sign: Option<&Path>) -> String {
        let channel = format!("t/{name}");
        let mut args = vec!["commit", "--repo", s(&self.repo), "--channel", &channel, "-m", name];
        if let Some(k) = sign {
            args.extend(["--sign", s(k)]);
        }
        args.push(s(tree));
        let out = slate_ok_env(&args, &self.env);
        let id = out.lines().next().unwrap_or_default().trim().to_string();
        assert_eq!(id.len(), 64, "commit prints the snapshot id: {out}");
        self.ids.push((name.to_string(), id.clone()));
        id
    }

    /// Commit `tree` as `t/NAME`, signed with the trusted key.
    fn commit(&mut self, name: &str, tree: &Path) -> String {
        let key = self.key.clone();
        self.commit_signed(name, tree, Some(&key))
    }

    fn id(&self, name: &str) -> &str {
        &self.ids.iter().find(|(n, _)| n == name).expect("committed").1
    }

    /// Write the fleet file (`want = NAME` follows the head of `t/NAME`,
    /// `want = pin-NAME` is pinned to it) and start the server.
    fn serve(&mut self) -> String {
        let args = self.serve_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = Server::start_signed_env(self.path(), &args, &self.env);
        let url = server.url.clone();
        self.server = Some(server);
        url
    }

    /// Write the fleet file and the administrator token; returns the
    /// arguments of `slate serve` for them and the repository.
    fn serve_args(&self) -> Vec<String> {
        let mut fleet = self.extra_fleet.clone();
        for (name, id) in &self.ids {
            fleet.push_str(&format!(
                "[[machine]]\nlabels = {{ want = \"{name}\" }}\nchannel = \"t/{name}\"\n\n\
                 [[machine]]\nlabels = {{ want = \"pin-{name}\" }}\nchannel = \"t/{name}\"\nsnapshot = \"{id}\"\n\n"
            ));
        }
        let path = self.path().join("FLEET.toml");
        std::fs::write(&path, fleet).unwrap();
        let admin = crate::support::admin_token(self.path());
        let mut args: Vec<String> = [
            "--repo",
            s(&self.repo),
            "--fleet",
            s(&path),
            "--admin-token-file",
            s(&admin),
        ]
        .map(String::from)
        .to_vec();
        args.extend(self.local_args());
        args.extend(self.extra_serve.iter().cloned());
        args
    }

    /// Serve again, with a fleet file naming what was committed since.
    fn restart(&mut self) -> String {
        self.server = None;
        self.serve()
    }

    fn url(&self) -> String {
        self.server.as_ref().expect("serving").url.clone()
    }

    fn server(&self) -> &Server {
        self.server.as_ref().expect("serving")
    }

    /// `slate fleet status --json` as the administrator.
    fn fleet_status(&self) -> String {
        let admin = self.path().join("admin.token");
        crate::support::fleet_status(&self.url(), &admin)
    }

    /// A machine named `name` (its machine_id) talking to this lab's server.
    fn agent(&self, name: &str, slots: Slots) -> Agent {
        let dir = self.path().join("machines").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let token_file = match &self.local {
            None => crate::support::enroll(&self.repo, name, &dir),
            Some(l) => {
                let db = self.db.clone().unwrap_or_else(|| s(&l.join("fleet.db")).to_string());
                let token = slate_ok(&["fleet", "enroll", "--force", "--db", &db, name]);
                let file = dir.join(format!("{name}.token"));
                std::fs::write(&file, token).unwrap();
                file
            }
        };
        let agent = Agent {
            token_file,
            name: name.to_string(),
            config: dir.join("agent.toml"),
            state_dir: dir.join("state"),
            boot_dir: dir.join("boot"),
            dir,
            slots,
            trust: self.trust(),
            fleet: FleetKey::in_dir(self.path()),
            // A lab without a server of its own (replicas) names them later.
            servers: self.server.iter().map(|sv| sv.url.clone()).collect(),
            want: String::new(),
            bootloader: "none",
            boot_tries: 3,
            connections: 4,
            timeout_secs: 30,
        };
        agent.write_config();
        agent
    }

    /// The repository's pack ids.
    fn packs(&self) -> Vec<String> {
        let mut out = Vec::new();
        for d in std::fs::read_dir(self.repo.join("packs")).unwrap().flatten() {
            for f in std::fs::read_dir(d.path()).unwrap().flatten() {
                let n = f.file_name().to_string_lossy().into_owned();
                if let Some(id) = n.strip_suffix(".pack") {
                    out.push(id.to_string());
                }
            }
        }
        out
    }

    fn pack_path(&self, id: &str) -> PathBuf {
        self.repo.join("packs").join(&id[..2]).join(format!("{id}.pack"))
    }
}

// ---------------------------------------------------------------------------
// Machines.

/// What a machine's slots are.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Slots {
    /// Two directories.
    Dirs,
    /// Two loop image files (`*.img`), formatted and mounted by the agent.
    Images,
}

/// One machine: its AGENT.toml (rewritten whenever a setting changes) and
/// the `slate` agent commands run against it.
struct Agent {
    /// Its machine token (enrolled by [`Lab::agent`]).
    token_file: PathBuf,
    name: String,
    dir: PathBuf,
    config: PathBuf,
    state_dir: PathBuf,
    boot_dir: PathBuf,
    slots: Slots,
    trust: PathBuf,
    fleet: FleetKey,
    servers: Vec<String>,
    want: String,
    bootloader: &'static str,
    boot_tries: u32,
    connections: usize,
    timeout_secs: u64,
}

impl Agent {
    fn slot_path(&self, slot: &str) -> PathBuf {
        match self.slots {
            Slots::Dirs => self.dir.join(format!("slot-{slot}")),
            Slots::Images => self.dir.join(format!("{slot}.img")),
        }
    }

    fn write_config(&self) {
        // Test servers are plain http on 127.0.0.1: each is allowed the token.
        let servers: Vec<String> = self.servers.iter().map(|u| crate::support::token_server(u)).collect();
        let text = format!(
            "server = [{}]\ntoken_file = {:?}\ntrust = [{:?}]\n{}state_dir = {:?}\nmachine_id = {:?}\nbootloader = {:?}\n\
             boot_dir = {:?}\nboot_tries = {}\nslot_size = \"1G\"\nconnections = {}\ntimeout_secs = {}\n\n\
             [slots]\na = {:?}\nb = {:?}\n\n[labels]\nwant = {:?}\n",
            servers.join(", "),
            s(&self.token_file),
            s(&self.trust),
            self.fleet.agent_toml(),
            s(&self.state_dir),
            self.name,
            self.bootloader,
            s(&self.boot_dir),
            self.boot_tries,
            self.connections,
            self.timeout_secs,
            s(&self.slot_path("a")),
            s(&self.slot_path("b")),
            self.want,
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// Ask the fleet for `want` from now on.
    fn target(&mut self, want: &str) {
        self.want = want.to_string();
        self.write_config();
    }

    /// Talk to these servers from now on.
    fn via(&mut self, servers: &[&str]) {
        self.servers = servers.iter().map(|u| u.to_string()).collect();
        self.write_config();
    }

    /// `slate SUB --config AGENT.toml`, with no booted slot in the environment.
    fn command(&self, sub: &str) -> Command {
        let mut c = Command::new(slate_bin());
        c.arg(sub)
            .arg("--config")
            .arg(&self.config)
            .env_remove("SLATE_BOOTED_SLOT")
            .env_remove("SLATE_CMDLINE")
            .env_remove("SLATE_AGENT_CONFIG")
            .stdin(Stdio::null());
        c
    }

    fn output(&self, mut c: Command) -> Output {
        c.output().expect("run slate")
    }

    /// `slate update --json`, which must succeed; returns its result line.
    fn update(&self) -> Value {
        let mut c = self.command("update");
        c.arg("--json");
        let out = self.output(c);
        assert!(
            out.status.success(),
            "slate update ({}) failed:\n{}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.contains("\"event\":\"result\""))
            .unwrap_or_else(|| panic!("no result line in:\n{stdout}"));
        serde_json::from_str(line).unwrap()
    }

    /// `slate update`, which must fail with one clear line; returns it.
    fn update_fails(&self) -> String {
        let out = self.output(self.command("update"));
        assert!(
            !out.status.success(),
            "slate update ({}) succeeded but should fail",
            self.name
        );
        let err = one_error_line(&out);
        eprintln!("{} (want {}): {err}", self.name, self.want);
        err
    }

    fn status(&self) -> Value {
        let mut c = self.command("status");
        c.arg("--json");
        let out = self.output(c);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `slate boot-ok` on a machine that booted `slot`; returns its message.
    fn boot_ok(&self, slot: &str) -> String {
        let mut c = self.command("boot-ok");
        c.env("SLATE_BOOTED_SLOT", slot);
        let out = self.output(c);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stderr).trim().to_string()
    }

    fn rollback(&self) -> String {
        let out = self.output(self.command("rollback"));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stderr).trim().to_string()
    }

    fn state_file(&self) -> Vec<u8> {
        std::fs::read(self.state_dir.join("state.json")).unwrap()
    }

    fn grubenv_path(&self) -> PathBuf {
        self.boot_dir.join("grub/grubenv")
    }

    /// The grubenv variables (missing ones read as empty).
    fn grubenv(&self) -> BTreeMap<String, String> {
        read_grubenv(&self.grubenv_path()).unwrap().into_iter().collect()
    }

    /// The BLS entry file names, sorted.
    fn bls_entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.boot_dir.join("loader/entries"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// The tree slot `slot` holds, readable at a path (an image is mounted
    /// read-only for as long as the view lives).
    fn view(&self, slot: &str) -> SlotView {
        let p = self.slot_path(slot);
        match self.slots {
            Slots::Dirs => SlotView { path: p, _mount: None },
            Slots::Images => {
                let at = self.dir.join(format!("check-{slot}"));
                let mount = RoMount::new(&p, &at);
                SlotView {
                    path: at,
                    _mount: Some(mount),
                }
            }
        }
    }

    /// Bytes left in the download cache apart from the pack indexes (which
    /// are kept on purpose: they are immutable and small).
    fn cache_leftovers(&self) -> u64 {
        fn size(p: &Path) -> u64 {
            match std::fs::symlink_metadata(p) {
                Ok(m) if m.is_dir() => std::fs::read_dir(p).unwrap().flatten().map(|e| size(&e.path())).sum(),
                Ok(m) => m.len(),
                Err(_) => 0,
            }
        }
        let cache = self.state_dir.join("cache");
        let Ok(rd) = std::fs::read_dir(&cache) else { return 0 };
        rd.flatten()
            .filter(|e| e.file_name() != "idx")
            .map(|e| size(&e.path()))
            .sum()
    }

    /// Mount points under this machine's directory.
    fn mounts(&self) -> Vec<String> {
        let root = std::fs::canonicalize(&self.dir).unwrap();
        std::fs::read_to_string("/proc/mounts")
            .unwrap()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| Path::new(m).starts_with(&root))
            .map(str::to_string)
            .collect()
    }
}

/// The error line of a failed command: exactly one `slate: error:` line,
/// no panic, and nothing else but the agent's warning that it could not
/// report the failure to a server that is itself the failure.
fn one_error_line(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
    assert!(!err.contains("panicked"), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("slate: error: ")).collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{err}");
    for l in err.lines().filter(|l| !l.starts_with("slate: error: ")) {
        assert!(
            l.contains("could not report to the server"),
            "unexpected line {l:?} in:\n{err}"
        );
    }
    errors[0].to_string()
}

/// A slot's tree at a path; unmounts an image on drop.
struct SlotView {
    path: PathBuf,
    _mount: Option<RoMount>,
}

/// A loop image mounted read-only by the test itself; unmounted (which
/// frees the loop device) on drop.
struct RoMount {
    at: PathBuf,
}

impl RoMount {
    fn new(image: &Path, at: &Path) -> RoMount {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "ext4", "-o", "loop,ro"])
            .arg(image)
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount {}: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        RoMount { at: at.to_path_buf() }
    }
}

impl Drop for RoMount {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.at).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.at).status();
        }
    }
}

/// Whatever a failed loop-image test may have left: mounts under `root`
/// (deepest first) and loop devices backed by `images`. Declared after the
/// scratch directory, so it runs before the directory is removed.
struct LoopJanitor {
    root: PathBuf,
    images: Vec<PathBuf>,
}

impl Drop for LoopJanitor {
    fn drop(&mut self) {
        let root = std::fs::canonicalize(&self.root).unwrap_or_else(|_| self.root.clone());
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
            .filter(|m| Path::new(m).starts_with(&root))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        for img in &self.images {
            for dev in loop_devices(img) {
                let _ = Command::new("losetup").arg("-d").arg(&dev).status();
            }
        }
    }
}

/// Loop devices backed by `image`.
fn loop_devices(image: &Path) -> Vec<String> {
    let Ok(out) = Command::new("losetup").arg("-j").arg(image).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').next())
        .filter(|d| d.starts_with("/dev/"))
        .map(str::to_string)
        .collect()
}

/// A committed tree and its treedigest, computed once.
struct Reference {
    path: PathBuf,
    digest: String,
}

impl Reference {
    fn of(path: &Path) -> Reference {
        Reference {
            path: path.to_path_buf(),
            digest: digest(path),
        }
    }

    /// `tree` must be bit for bit this reference.
    fn check(&self, tree: &Path) {
        if digest(tree) != self.digest {
            // Digest again, with the differences in the message.
            assert_same_tree(&self.path, tree);
            panic!("{} changed while it was being checked", tree.display());
        }
    }
}

/// Update `m` to `want` and check the result from the outside: the pass
/// wrote `slot`, which now holds exactly `reference`; the slot that was
/// running (`running`: its name and what it held, as checked when it was
/// written) is untouched; status shows the new slot pending (or, for the
/// first install, active); nothing but the pack indexes is left in the
/// download cache. Then the machine boots the new slot and `boot-ok`
/// makes it the active, known-good slot. Returns the pass's result.
fn update_and_boot(
    m: &mut Agent,
    want: &str,
    reference: &Reference,
    slot: &str,
    running: Option<(&str, &Reference)>,
) -> Value {
    m.target(want);
    let t = Instant::now();
    let r = m.update();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(r["result"], "ok", "{r}");
    assert_eq!(r["slot"], slot, "{r}");
    eprintln!(
        "{} -> {want} in slot {slot}: {} bytes fetched, {} copied locally, {} requests, {secs:.1} s",
        m.name, r["bytes_fetched"], r["bytes_local"], r["requests"]
    );
    reference.check(&m.view(slot).path);
    if let Some((old, held)) = running {
        held.check(&m.view(old).path);
    }
    assert_eq!(m.mounts(), Vec::<String>::new(), "the agent left mounts behind");
    assert_eq!(
        m.cache_leftovers(),
        0,
        "a finished pass leaves only pack indexes in its cache"
    );

    let st = m.status();
    assert_eq!(st["last_pass"]["result"], "ok", "{st}");
    assert_eq!(st["last_pass"]["bytes_fetched"], r["bytes_fetched"], "{st}");
    assert_eq!(st["slots"][slot]["snapshot"], r["target"], "{st}");
    assert_eq!(st["slots"][slot]["dirty"], false, "{st}");
    match running {
        None => {
            assert_eq!(st["active"], slot, "{st}");
            assert!(st["pending"].is_null(), "{st}");
        }
        Some((old, _)) => {
            assert_eq!(st["pending"], slot, "{st}");
            assert_eq!(st["slots"][slot]["pending"], true, "{st}");
            assert_eq!(st["active"], old, "{st}");
        }
    }

    let msg = m.boot_ok(slot);
    assert!(msg.contains(&format!("slot {slot} is good")), "{msg}");
    let st = m.status();
    assert_eq!(st["active"], slot, "{st}");
    assert!(st["pending"].is_null(), "{st}");
    assert_eq!(st["boot_result"], "good", "{st}");
    assert_eq!(st["slots"][slot]["known_good"], true, "{st}");
    r
}

// ---------------------------------------------------------------------------
// Generated trees.

/// splitmix64: reproducible pseudo-random bytes and choices without a
/// dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `len` incompressible bytes determined by `seed`.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&rng.next().to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A seed for the random instants of a test: `SLATE_TEST_SEED`, else the
/// clock. Printed, so that a failure can be replayed.
fn test_seed(test: &str) -> u64 {
    let seed = std::env::var("SLATE_TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{test}: SLATE_TEST_SEED={seed}");
    seed
}

/// A small OS-like tree, version `version`: a part every version shares
/// (so updates between versions copy it locally), a kernel and initrd,
/// os-release and a file of its own, and `new_bytes` of incompressible
/// content no other version has (what an update must download).
fn small_tree(root: &Path, version: u64, new_bytes: usize) -> PathBuf {
    let w = |rel: &str, data: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    };
    w(
        "etc/os-release",
        format!("PRETTY_NAME=\"Slate Test {version}\"\nID=slatetest\nVERSION_ID={version}\n").as_bytes(),
    );
    w("etc/hostname", b"node\n");
    w("usr/lib/libcommon.so", &random_bytes(1, 1 << 20));
    w(
        "usr/share/doc/notes.txt",
        "the same in every version\n".repeat(500).as_bytes(),
    );
    w("var/lib/slate-test/version", format!("{version}\n").as_bytes());
    w(
        &format!("boot/vmlinuz-6.1.0-{version}"),
        &random_bytes(100 + version, 64 << 10),
    );
    w(
        &format!("boot/initrd.img-6.1.0-{version}"),
        &random_bytes(200 + version, 32 << 10),
    );
    w(
        &format!("usr/lib/payload-{version}.bin"),
        &random_bytes(1000 + version, new_bytes),
    );
    std::os::unix::fs::symlink("libcommon.so", root.join("usr/lib/libcommon.so.1")).unwrap();
    std::fs::create_dir_all(root.join("srv")).unwrap();
    root.to_path_buf()
}

// ---------------------------------------------------------------------------
// A misbehaving proxy.

/// How the proxy misbehaves on pack requests (`/v1/repo/packs/*.pack`,
/// the content a pass downloads); everything else is forwarded faithfully.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Forward faithfully.
    None,
    /// Send the whole header (Content-Length included), half the body,
    /// then hang up.
    TruncatePacks,
    /// Answer only after this long.
    StallPacks(Duration),
    /// At the N-th pack request (1-based) stop listening and drop every
    /// connection unanswered: the server is gone.
    VanishAtPack(usize),
}

struct ProxyShared {
    upstream: String,
    fault: Fault,
    /// Bytes per second for pack bodies, per connection.
    rate: Option<u64>,
    stop: AtomicBool,
    vanished: AtomicBool,
    pack_requests: AtomicUsize,
    /// Pack body bytes written to clients.
    pack_bytes: AtomicU64,
}

/// An HTTP/1.1 proxy on 127.0.0.1 in front of a `slate serve`. It answers
/// one request per connection (with `Connection: close`), which keeps it
/// simple and lets it count, throttle and break each response on its own.
struct Proxy {
    url: String,
    shared: Arc<ProxyShared>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    fn start(upstream: &str, fault: Fault, rate: Option<u64>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        // Polled, so that the accept loop sees `stop` and `vanished`.
        listener.set_nonblocking(true).unwrap();
        let shared = Arc::new(ProxyShared {
            upstream: upstream.strip_prefix("http://").expect("plain http").to_string(),
            fault,
            rate,
            stop: AtomicBool::new(false),
            vanished: AtomicBool::new(false),
            pack_requests: AtomicUsize::new(0),
            pack_bytes: AtomicU64::new(0),
        });
        let sh = shared.clone();
        let accept = std::thread::spawn(move || {
            while !sh.stop.load(Ordering::SeqCst) && !sh.vanished.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let sh = sh.clone();
                        std::thread::spawn(move || {
                            let _ = proxy_one(conn, &sh);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            // The listener is dropped here: connections are refused from now on.
        });
        Proxy {
            url,
            shared,
            accept: Some(accept),
        }
    }

    fn pack_bytes(&self) -> u64 {
        self.shared.pack_bytes.load(Ordering::SeqCst)
    }

    fn pack_requests(&self) -> usize {
        self.shared.pack_requests.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Sleep `d`, or less if the proxy is stopped.
fn nap(d: Duration, sh: &ProxyShared) {
    let end = Instant::now() + d;
    while Instant::now() < end && !sh.stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Proxy one request of `client`, then close the connection.
fn proxy_one(client: TcpStream, sh: &ProxyShared) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;

    let mut head = String::new();
    if reader.read_line(&mut head)? == 0 {
        return Ok(());
    }
    let path = head.split_whitespace().nth(1).unwrap_or_default().to_string();
    let mut body_len = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line.trim_end().is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            body_len = v.trim().parse().unwrap_or(0);
        }
        if !lower.starts_with("connection:") {
            head.push_str(&line);
        }
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut body = vec![0u8; body_len];
    reader.read_exact(&mut body)?;

    let is_pack = path.starts_with("/v1/repo/packs/") && path.ends_with(".pack");
    if is_pack {
        let n = sh.pack_requests.fetch_add(1, Ordering::SeqCst) + 1;
        if matches!(sh.fault, Fault::VanishAtPack(k) if n >= k) {
            sh.vanished.store(true, Ordering::SeqCst);
        }
    }
    if sh.vanished.load(Ordering::SeqCst) {
        return Ok(()); // dropped unanswered
    }

    let mut up = TcpStream::connect(&sh.upstream)?;
    up.set_read_timeout(Some(Duration::from_secs(60)))?;
    up.write_all(head.as_bytes())?;
    up.write_all(&body)?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp)?;
    let split = find(&resp, b"\r\n\r\n").map(|i| i + 4).unwrap_or(resp.len());
    let (rhead, rbody) = resp.split_at(split);
    let mut out = String::new();
    for line in String::from_utf8_lossy(rhead).split_inclusive("\r\n") {
        if line != "\r\n" && !line.to_ascii_lowercase().starts_with("connection:") {
            out.push_str(line);
        }
    }
    out.push_str("Connection: close\r\n\r\n");

    if let (true, Fault::StallPacks(d)) = (is_pack, sh.fault) {
        nap(d, sh);
    }
    if sh.vanished.load(Ordering::SeqCst) || sh.stop.load(Ordering::SeqCst) {
        return Ok(());
    }
    client.write_all(out.as_bytes())?;
    let send = match (is_pack, sh.fault) {
        (true, Fault::TruncatePacks) => &rbody[..rbody.len() / 2],
        _ => rbody,
    };
    let started = Instant::now();
    let mut sent = 0u64;
    for piece in send.chunks(64 << 10) {
        if sh.vanished.load(Ordering::SeqCst) {
            return Ok(());
        }
        client.write_all(piece)?;
        sent += piece.len() as u64;
        if is_pack {
            sh.pack_bytes.fetch_add(piece.len() as u64, Ordering::SeqCst);
            if let Some(rate) = sh.rate {
                let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
    }
    client.flush()
}

/// A child process killed and reaped on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------
// 1, 2: the Debian corpus through directory and loop-image slots.

#[test]
fn corpus_updates_through_directory_slots_with_and_without_deltas() {
    let Some(corpus) = corpus() else {
        crate::support::skip(
            "corpus_updates_through_directory_slots_with_and_without_deltas: corpus not built (run `make corpus`)",
        );
        return;
    };
    let mut lab = Lab::new();
    let refs: Vec<Reference> = ["v1", "v2", "v3"]
        .iter()
        .map(|v| {
            lab.commit(v, &corpus.join(v));
            Reference::of(&corpus.join(v))
        })
        .collect();
    let [r1, r2, r3] = &refs[..] else { unreachable!() };
    lab.serve();

    // No delta prepared: the agent downloads the frames it lacks.
    let mut plain = lab.agent("plain", Slots::Dirs);
    update_and_boot(&mut plain, "v1", r1, "a", None);
    let p12 = update_and_boot(&mut plain, "v2", r2, "b", Some(("a", r1)));
    let fetched = p12["bytes_fetched"].as_u64().unwrap();
    assert!(
        fetched < 20_000_000,
        "v1 -> v2 fetched {fetched} bytes: more than the new content of a 204 MB tree should cost"
    );
    update_and_boot(&mut plain, "v3", r3, "a", Some(("b", r2)));
    let mut direct = lab.agent("direct", Slots::Dirs);
    update_and_boot(&mut direct, "v1", r1, "a", None);
    update_and_boot(&mut direct, "v3", r3, "b", Some(("a", r1)));
    for l in lab.server().requests("/v1/repo/deltas/") {
        assert!(l.contains("status=404"), "no delta was prepared yet: {l}");
    }

    // Prepared deltas: used automatically.
    let (id1, id2, id3) = (
        lab.id("v1").to_string(),
        lab.id("v2").to_string(),
        lab.id("v3").to_string(),
    );
    for (from, to) in [(&id1, &id2), (&id2, &id3)] {
        slate_ok(&["delta", "--repo", s(&lab.repo), "--level", "3", from, to]);
    }
    let mut delta = lab.agent("delta", Slots::Dirs);
    update_and_boot(&mut delta, "v1", r1, "a", None);
    let d12 = update_and_boot(&mut delta, "v2", r2, "b", Some(("a", r1)));
    update_and_boot(&mut delta, "v3", r3, "a", Some(("b", r2)));
    for (from, to) in [(&id1, &id2), (&id2, &id3)] {
        let served = lab.server().requests(&format!("/v1/repo/deltas/{from}/{to}.delta"));
        assert!(
            served.iter().any(|l| l.contains("status=206")),
            "the delta {from} -> {to} was not used:\n{}",
            served.join("\n")
        );
    }
    let d = d12["bytes_fetched"].as_u64().unwrap();
    assert!(
        d < fetched,
        "v1 -> v2 with a delta fetched {d} bytes, without {fetched}"
    );
}

#[test]
fn corpus_updates_through_loop_image_slots() {
    let Some(corpus) = corpus() else {
        crate::support::skip("corpus_updates_through_loop_image_slots: corpus not built (run `make corpus`)");
        return;
    };
    if !is_root() {
        crate::support::skip("corpus_updates_through_loop_image_slots: loop mounts need root");
        return;
    }
    let mut lab = Lab::new();
    let refs: Vec<Reference> = ["v1", "v2", "v3"]
        .iter()
        .map(|v| {
            lab.commit(v, &corpus.join(v));
            Reference::of(&corpus.join(v))
        })
        .collect();
    let [r1, r2, r3] = &refs[..] else { unreachable!() };
    // v1 -> v2 through a delta, v2 -> v3 through plain fetches.
    slate_ok(&[
        "delta",
        "--repo",
        s(&lab.repo),
        "--level",
        "3",
        lab.id("v1"),
        lab.id("v2"),
    ]);
    lab.serve();

    let mut m = lab.agent("images", Slots::Images);
    let _janitor = LoopJanitor {
        root: m.dir.clone(),
        images: vec![m.slot_path("a"), m.slot_path("b")],
    };
    update_and_boot(&mut m, "v1", r1, "a", None);
    update_and_boot(&mut m, "v2", r2, "b", Some(("a", r1)));
    update_and_boot(&mut m, "v3", r3, "a", Some(("b", r2)));
    // The agent mounted the images only while reading and writing them.
    assert_eq!(m.mounts(), Vec::<String>::new());
    for img in [m.slot_path("a"), m.slot_path("b")] {
        assert_eq!(
            std::fs::metadata(&img).unwrap().len(),
            1 << 30,
            "slot_size sizes the image"
        );
        assert_eq!(
            loop_devices(&img),
            Vec::<String>::new(),
            "loop device left on {}",
            img.display()
        );
    }
    // Each image carries its slot's label, as the entries' root=LABEL= expects.
    for slot in ["a", "b"] {
        let out = Command::new("blkid")
            .args(["-o", "value", "-s", "LABEL"])
            .arg(m.slot_path(slot))
            .output();
        if let Some(out) = out.ok().filter(|o| o.status.success()) {
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("slate-{slot}"));
        }
    }
}

// ---------------------------------------------------------------------------
// 3: kill -9 at random instants; a switch that fails.

#[test]
fn killed_passes_resume_and_switch_only_at_the_end() {
    let seed = test_seed("killed_passes_resume_and_switch_only_at_the_end");
    let mut lab = Lab::new();
    let ta = small_tree(&lab.path().join("tree-a"), 1, 512 << 10);
    let tb = small_tree(&lab.path().join("tree-b"), 2, 64 << 20);
    lab.commit("a", &ta);
    lab.commit("b", &tb);
    let (ra, rb) = (Reference::of(&ta), Reference::of(&tb));
    let url = lab.serve();
    // Throttled, so that a pass lasts long enough to be killed in any phase.
    let proxy = Proxy::start(&url, Fault::None, Some(48 * MIB));

    let machine = |name: &str| {
        let mut m = lab.agent(name, Slots::Dirs);
        m.bootloader = "grub";
        // One connection: a kill loses at most one range in flight.
        m.connections = 1;
        m.target("a");
        assert_eq!(m.update()["result"], "ok");
        m.target("b");
        m.via(&[&proxy.url]);
        m
    };

    // The uninterrupted pass: its duration and its bytes.
    let steady = machine("steady");
    let before = proxy.pack_bytes();
    let t = Instant::now();
    assert_eq!(steady.update()["result"], "ok");
    let single_time = t.elapsed();
    let single = proxy.pack_bytes() - before;
    rb.check(&steady.slot_path("b"));

    let victim = machine("victim");
    let before = proxy.pack_bytes();
    let mut rng = Rng(seed);
    let mut kills = 0u64;
    // Whether a pass got as far as the switch before it was killed, or
    // finished before the kill came.
    let mut switched = false;
    for _ in 0..5 {
        // Early enough that a pass resumed after a kill is usually killed
        // again: several kills, spread over fetching and writing.
        let delay = single_time.mul_f64(0.1 + 0.35 * rng.unit());
        let mut child = Running(
            victim
                .command("update")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        std::thread::sleep(delay);
        if let Some(st) = child.0.try_wait().unwrap() {
            // It finished first: nothing left to interrupt.
            assert!(st.success(), "{st}");
            switched = true;
            break;
        }
        child.0.kill().unwrap();
        let st = child.0.wait().unwrap();
        assert_eq!(st.signal(), Some(9), "{st}");
        kills += 1;
        let cached = victim.cache_leftovers();
        eprintln!(
            "killed after {:.2} s; {} pack bytes so far, {cached} bytes in the download cache",
            delay.as_secs_f64(),
            proxy.pack_bytes() - before
        );

        // Until the switch the running slot and the default entry are
        // untouched, and the bootloader never points at a slot being written.
        ra.check(&victim.slot_path("a"));
        let env = victim.grubenv();
        assert_eq!(env["slate_default"], "a", "{env:?}");
        let status = victim.status();
        assert_eq!(status["active"], "a", "{status}");
        match env.get("slate_next").map(String::as_str) {
            None | Some("") => assert!(status["pending"].is_null(), "{status}"),
            Some("b") => {
                // Killed after the switch: b must be complete.
                rb.check(&victim.slot_path("b"));
                switched = true;
                break;
            }
            Some(other) => panic!("slate_next={other}"),
        }
    }
    let last = victim.update();
    assert!(
        last["result"] == "ok" || (switched && last["result"] == "up-to-date"),
        "{last}"
    );
    rb.check(&victim.slot_path("b"));
    let env = victim.grubenv();
    assert_eq!(
        (
            env["slate_default"].as_str(),
            env["slate_next"].as_str(),
            env["slate_tries"].as_str()
        ),
        ("a", "b", "3"),
        "{env:?}"
    );
    let status = victim.status();
    assert_eq!(status["pending"], "b", "{status}");
    assert_eq!(victim.cache_leftovers(), 0);

    let total = proxy.pack_bytes() - before;
    eprintln!(
        "uninterrupted pass: {single} pack bytes in {:.2} s; {kills} kills, then {total} pack bytes in all",
        single_time.as_secs_f64()
    );
    // Each kill may lose the one range it was receiving; nothing else is
    // fetched twice.
    assert!(
        total <= single + kills * (MAX_RANGE + MIB),
        "{kills} killed passes and a final one fetched {total} bytes; one pass needs {single}"
    );
}

#[test]
fn a_failed_switch_is_finished_by_the_next_pass() {
    // /boot full or unwritable at the last step: the slot is written but
    // the bootloader could not be pointed at it. The next pass must finish
    // the switch, not report the update as done.
    let mut lab = Lab::new();
    let ta = small_tree(&lab.path().join("tree-a"), 1, 64 << 10);
    let tb = small_tree(&lab.path().join("tree-b"), 2, 64 << 10);
    lab.commit("a", &ta);
    lab.commit("b", &tb);
    lab.serve();
    let mut m = lab.agent("m", Slots::Dirs);
    m.bootloader = "grub";

    // The first install.
    std::fs::create_dir_all(m.grubenv_path()).unwrap();
    m.target("a");
    let err = m.update_fails();
    assert!(err.contains("grubenv"), "{err}");
    std::fs::remove_dir(m.grubenv_path()).unwrap();
    assert_eq!(m.update()["result"], "ok");
    let env = m.grubenv();
    assert_eq!(env.get("slate_default").map(String::as_str), Some("a"), "{env:?}");
    assert!(m.boot_dir.join("grub/slate.cfg").exists());
    assert_eq!(m.status()["active"], "a");

    // An update.
    let saved = std::fs::read(m.grubenv_path()).unwrap();
    std::fs::remove_file(m.grubenv_path()).unwrap();
    std::fs::create_dir(m.grubenv_path()).unwrap();
    m.target("b");
    let err = m.update_fails();
    assert!(err.contains("grubenv"), "{err}");
    let st = m.status();
    assert!(
        st["pending"].is_null(),
        "nothing boots b yet, so it is not pending: {st}"
    );
    std::fs::remove_dir(m.grubenv_path()).unwrap();
    std::fs::write(m.grubenv_path(), saved).unwrap();
    assert_eq!(m.grubenv().get("slate_next").map(String::as_str), Some(""));
    let r = m.update();
    assert_eq!(r["result"], "ok", "{r}");
    let env = m.grubenv();
    assert_eq!(
        (env["slate_next"].as_str(), env["slate_tries"].as_str()),
        ("b", "3"),
        "{env:?}"
    );
    assert_eq!(m.status()["pending"], "b");
    Reference::of(&tb).check(&m.slot_path("b"));
}

// ---------------------------------------------------------------------------
// 4: bad servers.

/// A lab serving `a` (small) and `b` (a plus `new_bytes` of new content),
/// and a machine that runs `a`.
fn lab_with_machine(new_bytes: usize) -> (Lab, Agent, Reference, Reference) {
    let mut lab = Lab::new();
    let ta = small_tree(&lab.path().join("tree-a"), 1, 256 << 10);
    let tb = small_tree(&lab.path().join("tree-b"), 2, new_bytes);
    lab.commit("a", &ta);
    lab.commit("b", &tb);
    lab.serve();
    let mut m = lab.agent("m", Slots::Dirs);
    m.target("a");
    assert_eq!(m.update()["result"], "ok");
    (lab, m, Reference::of(&ta), Reference::of(&tb))
}

/// After a failed pass: `a` still runs as it was and nothing is pending.
fn assert_nothing_switched(m: &Agent, ra: &Reference) {
    let st = m.status();
    assert_eq!(st["active"], "a", "{st}");
    assert!(st["pending"].is_null(), "{st}");
    assert_eq!(st["slots"]["b"]["pending"], false, "{st}");
    assert_eq!(st["last_pass"]["result"], "error", "{st}");
    ra.check(&m.slot_path("a"));
}

#[test]
fn a_tampered_pack_is_refused_naming_it() {
    let (mut lab, mut m, ra, _) = lab_with_machine(64 << 10);
    let before: Vec<String> = lab.packs();
    let tt = small_tree(&lab.path().join("tree-t"), 3, 4 << 20);
    lab.commit("t", &tt);
    m.via(&[&lab.restart()]);
    let new: Vec<String> = lab.packs().into_iter().filter(|p| !before.contains(p)).collect();
    let pack = new
        .iter()
        .max_by_key(|p| std::fs::metadata(lab.pack_path(p)).unwrap().len())
        .expect("the commit added a pack")
        .clone();
    // Flip one byte in the middle: inside the new content's frames.
    let path = lab.pack_path(&pack);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();

    let state = m.state_file();
    m.target("t");
    let err = m.update_fails();
    assert!(err.contains(&pack), "the error names the pack: {err}");
    assert!(
        err.contains("corrupt or tampered")
            || err.contains("tampered or corrupt")
            || err.contains("does not decompress"),
        "{err}"
    );
    let st = m.status();
    assert!(st["pending"].is_null(), "{st}");
    assert_eq!(st["slots"]["b"]["pending"], false, "{st}");
    assert!(st["slots"]["b"]["snapshot"].is_null(), "{st}");
    let old: Value = serde_json::from_slice(&state).unwrap();
    assert_eq!(st["active"], old["active"]);
    assert_nothing_switched(&m, &ra);
    // No unverified byte reached the reserve slot.
    let b = m.slot_path("b");
    assert!(!b.exists() || std::fs::read_dir(&b).unwrap().next().is_none());

    // Repaired on the server: the next pass completes.
    bytes[at] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(m.update()["result"], "ok");
    Reference::of(&tt).check(&m.slot_path("b"));
}

#[test]
fn untrusted_and_unsigned_snapshots_are_refused() {
    let (mut lab, mut m, ra, _) = lab_with_machine(64 << 10);
    let other = lab.path().join("other-key");
    slate_ok(&["keygen", "--out", s(&other)]);
    let te = small_tree(&lab.path().join("tree-e"), 4, 64 << 10);
    lab.commit_signed("evil", &te, Some(&other));
    lab.commit_signed("unsigned", &te, None);
    m.via(&[&lab.restart()]);

    for (want, says) in [("evil", "untrusted"), ("unsigned", "not signed")] {
        m.target(want);
        let err = m.update_fails();
        assert!(err.contains(says), "{want}: {err}");
        assert!(err.contains(lab.id(want)), "the error names the snapshot: {err}");
        assert_nothing_switched(&m, &ra);
        assert!(!m.slot_path("b").exists(), "nothing reached the reserve slot");
    }
}

#[test]
fn an_older_snapshot_is_refused_unless_pinned() {
    let (lab, mut m, ra, rb) = lab_with_machine(64 << 10);
    m.target("b");
    assert_eq!(m.update()["result"], "ok");
    m.boot_ok("b");

    // The fleet hands out a rolled-back head: a replay, refused.
    m.target("a");
    let before = m.status();
    let err = m.update_fails();
    assert!(err.contains("older"), "{err}");
    assert!(err.contains(lab.id("a")), "{err}");
    let st = m.status();
    assert_eq!(st["active"], "b", "{st}");
    assert!(st["pending"].is_null(), "{st}");
    assert_eq!(st["slots"], before["slots"], "no slot changed");
    rb.check(&m.slot_path("b"));
    ra.check(&m.slot_path("a"));

    // An explicit pin is the administrator's decision: accepted.
    m.target("pin-a");
    let r = m.update();
    assert_eq!(
        (r["result"].as_str(), r["slot"].as_str()),
        (Some("ok"), Some("a")),
        "{r}"
    );
    assert_eq!(m.status()["pending"], "a");
    ra.check(&m.slot_path("a"));
    rb.check(&m.slot_path("b"));
}

#[test]
fn truncated_and_stalled_downloads_fail_cleanly() {
    let (lab, mut m, ra, rb) = lab_with_machine(12 << 20);
    m.target("b");

    let proxy = Proxy::start(&lab.url(), Fault::TruncatePacks, None);
    m.via(&[&proxy.url]);
    let err = m.update_fails();
    assert!(err.contains(".pack"), "the error names the download: {err}");
    assert!(err.contains("truncated") || err.contains("broke off"), "{err}");
    assert_nothing_switched(&m, &ra);
    drop(proxy);

    let proxy = Proxy::start(&lab.url(), Fault::StallPacks(Duration::from_secs(8)), None);
    m.timeout_secs = 2;
    m.via(&[&proxy.url]);
    let t = Instant::now();
    let err = m.update_fails();
    let took = t.elapsed();
    assert!(err.contains("timed out"), "{err}");
    assert!(took < Duration::from_secs(8), "a stalled server held the pass {took:?}");
    assert_nothing_switched(&m, &ra);
    drop(proxy);

    m.via(&[&lab.url()]);
    assert_eq!(m.update()["result"], "ok");
    rb.check(&m.slot_path("b"));
}

#[test]
fn a_server_vanishing_mid_pass_fails_cleanly_and_the_next_pass_completes() {
    let (lab, mut m, ra, rb) = lab_with_machine(24 << 20);
    m.target("b");
    m.connections = 1;
    let proxy = Proxy::start(&lab.url(), Fault::VanishAtPack(2), None);
    m.via(&[&proxy.url]);
    let err = m.update_fails();
    assert!(
        proxy.pack_requests() >= 2,
        "the server vanished before the content was fetched"
    );
    assert!(err.contains(&proxy.url), "the error names the server: {err}");
    assert_nothing_switched(&m, &ra);
    drop(proxy);

    m.via(&[&lab.url()]);
    let r = m.update();
    assert_eq!(r["result"], "ok", "{r}");
    rb.check(&m.slot_path("b"));
    assert_eq!(m.status()["pending"], "b");
}

#[test]
fn without_a_server_a_pass_is_offline_and_changes_nothing() {
    let (lab, mut m, _, rb) = lab_with_machine(64 << 10);
    // A port nobody listens on: bind one, note it, let it go.
    let dead = format!(
        "http://{}",
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
    );
    m.target("b");
    m.via(&[&dead]);
    let state = m.state_file();
    let out = m.output(m.command("update"));
    let err = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
    assert!(out.status.success(), "offline is not a failure: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("no server answered") && err.contains("nothing changed"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    let mut c = m.command("update");
    c.arg("--json");
    let out = m.output(c);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["result"], "offline", "{v}");
    assert_eq!(m.state_file(), state, "an offline pass leaves the state as it was");

    // With a list of servers, the first that answers is used.
    m.via(&[&dead, &lab.url()]);
    assert_eq!(m.update()["result"], "ok");
    rb.check(&m.slot_path("b"));
}

// ---------------------------------------------------------------------------
// 5, 6: boot counting and rollback.

fn boot_counting_falls_back(kind: Bootloader, name: &'static str) {
    let mut lab = Lab::new();
    let ta = small_tree(&lab.path().join("tree-a"), 1, 64 << 10);
    let tb = small_tree(&lab.path().join("tree-b"), 2, 64 << 10);
    lab.commit("a", &ta);
    lab.commit("b", &tb);
    lab.serve();
    let mut m = lab.agent(&format!("boot-{name}"), Slots::Dirs);
    m.bootloader = name;
    m.boot_tries = 3;
    m.target("a");
    assert_eq!(m.update()["result"], "ok");
    m.target("b");
    assert_eq!(m.update()["result"], "ok");
    assert_eq!(m.status()["pending"], "b");

    // The kernel and initrd of b are where its entry says.
    let kernel = std::fs::read(tb.join("boot/vmlinuz-6.1.0-2")).unwrap();
    assert!(std::fs::read(m.boot_dir.join("slate/b/vmlinuz")).unwrap() == kernel);
    assert!(m.boot_dir.join("slate/b/initrd.img").exists());
    match kind {
        Bootloader::Grub => {
            let raw = std::fs::read(m.grubenv_path()).unwrap();
            assert_eq!(raw.len(), 1024, "a grubenv block is 1024 bytes");
            assert!(raw.starts_with(b"# GRUB Environment Block\n"));
            let env = m.grubenv();
            assert_eq!(
                (
                    env["slate_default"].as_str(),
                    env["slate_next"].as_str(),
                    env["slate_tries"].as_str()
                ),
                ("a", "b", "3"),
                "{env:?}"
            );
            let text = String::from_utf8_lossy(&raw);
            assert!(
                text.contains("\nslate_next=b\n") && text.contains("\nslate_tries=3\n"),
                "{text}"
            );
            let cfg = std::fs::read_to_string(m.boot_dir.join("grub/slate.cfg")).unwrap();
            assert!(
                cfg.contains("linux /slate/b/vmlinuz root=LABEL=slate-b ro slate.slot=b"),
                "{cfg}"
            );
            assert!(cfg.contains("--id slate-a") && cfg.contains("--id slate-b"), "{cfg}");
            // GRUB's own tool reads our block.
            match Command::new("grub-editenv").arg(m.grubenv_path()).arg("list").output() {
                Ok(out) => {
                    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                    let list = String::from_utf8_lossy(&out.stdout);
                    for l in ["slate_default=a", "slate_next=b", "slate_tries=3"] {
                        assert!(list.lines().any(|x| x == l), "grub-editenv list:\n{list}");
                    }
                }
                Err(_) => {
                    crate::support::skip("grub-editenv not installed (apt package grub-common): not cross-checked")
                }
            }
        }
        Bootloader::Bls => {
            assert_eq!(m.bls_entries(), ["slate-a.conf", "slate-b+3.conf"]);
            let entry = std::fs::read_to_string(m.boot_dir.join("loader/entries/slate-b+3.conf")).unwrap();
            assert!(entry.contains("linux /slate/b/vmlinuz\n"), "{entry}");
            assert!(entry.contains("options root=LABEL=slate-b ro slate.slot=b"), "{entry}");
            assert!(m.boot_dir.join("loader/loader.conf").exists());
        }
        Bootloader::None => unreachable!(),
    }

    // b never confirms itself: three tries, then the bootloader goes back to a.
    let boots: Vec<String> = (0..4)
        .map(|_| simulate_boot(kind, &m.boot_dir).unwrap().unwrap())
        .collect();
    assert_eq!(boots, ["b", "b", "b", "a"]);
    if kind == Bootloader::Bls {
        assert_eq!(m.bls_entries(), ["slate-a.conf", "slate-b+0-3.conf"]);
    }
    let msg = m.boot_ok("a");
    assert!(msg.contains("failed to boot"), "{msg}");
    let st = m.status();
    assert_eq!(st["boot_result"], "fell-back", "{st}");
    assert_eq!(st["active"], "a", "{st}");
    assert!(st["pending"].is_null(), "{st}");
    for _ in 0..2 {
        assert_eq!(simulate_boot(kind, &m.boot_dir).unwrap().as_deref(), Some("a"));
    }
    assert_eq!(st["failed"][0], lab.id("b"), "{st}");

    // The fleet still assigns b: it is not written again...
    let r = m.update();
    assert_eq!(r["result"], "failed-before", "{r}");
    assert!(m.status()["pending"].is_null());
    assert_eq!(simulate_boot(kind, &m.boot_dir).unwrap().as_deref(), Some("a"));
    let human = slate_ok(&["status", "--config", s(&m.config)]);
    assert!(human.contains("failed to boot here"), "{human}");

    // The server heard about it.
    let out = lab.fleet_status();
    let v: Value = serde_json::from_str(&out).unwrap();
    let row = v["machines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["machine"] == m.name.as_str())
        .unwrap_or_else(|| panic!("no report from {}: {out}", m.name))
        .clone();
    assert_eq!(row["boot"]["result"], "fell-back", "{row}");
    assert_eq!(row["boot"]["slot"], "a", "{row}");
    assert_eq!(row["active_slot"], "a", "{row}");
    // An A/B machine says so, to the fleet and in its status.
    assert_eq!(row["mode"], "ab", "{row}");
    assert_eq!(m.status()["mode"], "ab");

    // ...unless the administrator asks for another try.
    let mut c = m.command("update");
    c.args(["--retry", "--json"]);
    let out = m.output(c);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(m.status()["pending"], "b");
    assert!(m.status()["failed"].as_array().is_none_or(|f| f.is_empty()));

    // What the initramfs step left in /run/slate reaches the fleet: its
    // warnings, and a boot in rescue mode (never marked good).
    let run = lab.path().join(format!("run-{}", m.name));
    std::fs::create_dir_all(&run).unwrap();
    let warning = "no network interface: server state is not fetched this boot";
    std::fs::write(run.join("warnings"), format!("{warning}\n\n{}\n", "x".repeat(2000))).unwrap();
    std::fs::write(
        run.join("rescue"),
        "the declared state failed on every try on slot a; booted in rescue mode\n",
    )
    .unwrap();
    let boot_ok_in = |slot: &str, run: &Path| {
        let mut c = m.command("boot-ok");
        c.env("SLATE_BOOTED_SLOT", slot).env("SLATE_RUN_DIR", run);
        let out = m.output(c);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stderr).trim().to_string()
    };
    let msg = boot_ok_in("a", &run);
    assert!(msg.contains("rescue mode") && msg.contains("not marked good"), "{msg}");
    assert!(msg.contains("2 warning(s) at boot"), "{msg}");
    let row_of = |lab: &Lab| -> Value {
        let v: Value = serde_json::from_str(&lab.fleet_status()).unwrap();
        v["machines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["machine"] == m.name.as_str())
            .cloned()
            .unwrap()
    };
    let row = row_of(&lab);
    assert_eq!(row["boot"]["result"], "rescue", "{row}");
    assert_eq!(row["boot"]["warnings"][0], warning, "{row}");
    assert_eq!(row["boot"]["warnings"][1].as_str().unwrap().len(), 512, "cut: {row}");
    // The way out: the next boot (of the slot written meanwhile) without
    // the failure is good, and its warnings (none) replace the old ones.
    std::fs::remove_file(run.join("rescue")).unwrap();
    std::fs::write(run.join("warnings"), "").unwrap();
    let msg = boot_ok_in("b", &run);
    assert!(msg.contains("slot b is good"), "{msg}");
    let row = row_of(&lab);
    assert_eq!(row["boot"]["result"], "good", "{row}");
    assert!(row["boot"].get("warnings").is_none(), "{row}");
}

#[test]
fn grub_boot_counting_falls_back_and_reports_it() {
    boot_counting_falls_back(Bootloader::Grub, "grub");
}

#[test]
fn bls_boot_counting_falls_back_and_reports_it() {
    boot_counting_falls_back(Bootloader::Bls, "bls");
}

#[test]
fn rollback_after_a_good_update_boots_the_other_slot() {
    let mut lab = Lab::new();
    let ta = small_tree(&lab.path().join("tree-a"), 1, 64 << 10);
    let tb = small_tree(&lab.path().join("tree-b"), 2, 64 << 10);
    lab.commit("a", &ta);
    lab.commit("b", &tb);
    lab.serve();
    for (kind, name) in [(Bootloader::Grub, "grub"), (Bootloader::Bls, "bls")] {
        let mut m = lab.agent(&format!("rollback-{name}"), Slots::Dirs);
        m.bootloader = name;
        m.target("a");
        assert_eq!(m.update()["result"], "ok");
        m.target("b");
        assert_eq!(m.update()["result"], "ok");
        assert_eq!(simulate_boot(kind, &m.boot_dir).unwrap().as_deref(), Some("b"));
        m.boot_ok("b");
        assert_eq!(m.status()["active"], "b");

        let msg = m.rollback();
        assert!(msg.contains("slot a"), "{msg}");
        let st = m.status();
        assert_eq!(st["active"], "a", "{st}");
        assert!(st["pending"].is_null(), "{st}");
        if kind == Bootloader::Grub {
            let env = m.grubenv();
            assert_eq!(
                (env["slate_default"].as_str(), env["slate_next"].as_str()),
                ("a", ""),
                "{env:?}"
            );
        }
        for _ in 0..2 {
            assert_eq!(
                simulate_boot(kind, &m.boot_dir).unwrap().as_deref(),
                Some("a"),
                "{name}"
            );
        }
        // Both slots still hold what they held.
        Reference::of(&ta).check(&m.slot_path("a"));
        Reference::of(&tb).check(&m.slot_path("b"));
    }
}

// ---------------------------------------------------------------------------
// 7: pull.

#[test]
fn pull_mirrors_a_channel_verified_and_incrementally() {
    let mut lab = Lab::new();
    let ta = small_tree(&lab.path().join("tree-a"), 1, 1 << 20);
    let tb = small_tree(&lab.path().join("tree-b"), 2, 1 << 20);
    // Two snapshots in one channel's history.
    for t in [&ta, &tb] {
        slate_ok(&[
            "commit",
            "--repo",
            s(&lab.repo),
            "--channel",
            "site/lab",
            "--sign",
            s(&lab.key),
            s(t),
        ]);
    }
    lab.commit("a", &ta);
    let url = lab.serve();
    let mirror = lab.path().join("mirror");
    let trust = lab.trust();

    let pull =
        |repo: &Path, key: &Path| slate(&["pull", "--from", &url, "site/lab", "--repo", s(repo), "--trust", s(key)]);
    let out = pull(&mirror, &trust);
    let msg = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{msg}");
    assert!(msg.contains("2 snapshots"), "{msg}");
    slate_ok(&["verify", "--repo", s(&mirror), "--trust", s(&trust)]);
    for (spec, tree) in [("site/lab", &tb), ("site/lab~1", &ta)] {
        let dst = lab.path().join(format!("co-{}", spec.replace(['/', '~'], "-")));
        slate_ok(&["checkout", "--repo", s(&mirror), spec, s(&dst)]);
        assert_same_tree(tree, &dst);
    }

    let again = pull(&mirror, &trust);
    let msg = String::from_utf8_lossy(&again.stderr).to_string();
    assert!(again.status.success(), "{msg}");
    assert!(
        msg.contains("0 snapshots, 0 packs"),
        "a second pull fetches nothing new: {msg}"
    );

    let other = lab.path().join("other-key");
    slate_ok(&["keygen", "--out", s(&other)]);
    let out = pull(&lab.path().join("mirror2"), &lab.path().join("other-key.pub"));
    assert!(!out.status.success(), "a pull with the wrong key succeeded");
    let err = one_error_line(&out);
    assert!(err.contains("untrusted"), "{err}");
}

// ---------------------------------------------------------------------------
// 8: the repository on an S3-compatible object store (issue 14).

/// The keys under the lab's repository prefix in its bucket.
fn s3_keys(lab: &Lab) -> Vec<String> {
    use slate_repo::storage::Storage;
    let s3 = lab.s3.as_ref().expect("a lab on S3");
    s3.storage(s(&lab.repo)).list("").unwrap()
}

#[test]
fn an_agent_updates_bit_for_bit_from_a_repository_on_s3() {
    let Some(s3) = slate_s3::test_server::TestS3::start() else {
        return;
    };
    let mut lab = Lab::on_s3(s3);
    let ta = small_tree(&lab.path().join("tree-a"), 1, 256 << 10);
    // Large enough for a pack uploaded in parts.
    let tb = small_tree(&lab.path().join("tree-b"), 2, 24 << 20);
    lab.commit("a", &ta);
    lab.commit("b", &tb);
    lab.serve();
    let mut m = lab.agent("m", Slots::Dirs);
    m.target("a");
    assert_eq!(m.update()["result"], "ok");
    m.target("b");
    let r = m.update();
    assert_eq!(r["result"], "ok", "{r}");
    Reference::of(&ta).check(&m.slot_path("a"));
    Reference::of(&tb).check(&m.slot_path("b"));
    // The machine's assignment and reports stayed on the server: the
    // bucket holds the repository and nothing else.
    let keys = s3_keys(&lab);
    assert!(keys.iter().any(|k| k.starts_with("packs/")), "{keys:?}");
    for k in &keys {
        assert!(
            k == "config" || ["packs/", "snapshots/", "channels/"].iter().any(|p| k.starts_with(p)),
            "{k} in the bucket"
        );
    }
    assert!(std::fs::metadata(lab.local.as_ref().unwrap().join("fleet.db")).is_ok());
}

#[test]
fn commit_pull_and_gc_on_s3() {
    let Some(s3) = slate_s3::test_server::TestS3::start() else {
        return;
    };
    let mut lab = Lab::on_s3(s3);
    let env = lab.env.clone();
    let ta = small_tree(&lab.path().join("tree-a"), 1, 1 << 20);
    let tb = small_tree(&lab.path().join("tree-b"), 2, 1 << 20);
    let repo_path = lab.repo.clone();
    let repo = s(&repo_path);
    for t in [&ta, &tb] {
        slate_ok_env(
            &[
                "commit",
                "--repo",
                repo,
                "--channel",
                "site/lab",
                "--sign",
                s(&lab.key),
                s(t),
            ],
            &env,
        );
    }
    // A server for the repository on S3 needs local places for the fleet
    // database and private data: one clear line when they are missing.
    let out = crate::support::slate_env(&["serve", "--repo", repo, "--listen", "127.0.0.1:0"], &env);
    assert!(!out.status.success());
    let err = one_error_line(&out);
    assert!(err.contains("--db") && err.contains("object store"), "{err}");

    let url = lab.serve();
    let trust = lab.trust();
    // A mirror in another prefix of the bucket, and one on disk.
    let mirror_s3 = "s3://lab/mirror";
    let mirror_dir = lab.path().join("mirror");
    for mirror in [mirror_s3, s(&mirror_dir)] {
        let out = crate::support::slate_env(
            &[
                "pull",
                "--from",
                &url,
                "site/lab",
                "--repo",
                mirror,
                "--trust",
                s(&trust),
            ],
            &env,
        );
        let msg = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{msg}");
        assert!(msg.contains("2 snapshots"), "{msg}");
        slate_ok_env(&["verify", "--repo", mirror, "--trust", s(&trust)], &env);
        for (spec, tree) in [("site/lab", &tb), ("site/lab~1", &ta)] {
            let dst = lab
                .path()
                .join(format!("co-{}-{}", mirror.len(), spec.replace(['/', '~'], "-")));
            slate_ok_env(&["checkout", "--repo", mirror, spec, s(&dst)], &env);
            assert_same_tree(tree, &dst);
        }
    }
    // The same packs, byte for byte, in the bucket and on disk.
    {
        use slate_repo::storage::Storage;
        let s3 = lab.s3.as_ref().unwrap().storage(mirror_s3);
        let packs = s3.list("packs").unwrap();
        assert!(!packs.is_empty());
        for k in &packs {
            assert_eq!(s3.read(k).unwrap(), std::fs::read(mirror_dir.join(k)).unwrap(), "{k}");
        }
    }

    // gc on S3 drops the older snapshot in two phases: the first run only
    // trims the channel and records what is dead (gc/pending); a later run
    // past the grace period deletes it. The newer one still checks out.
    let before = s3_keys(&lab).len();
    slate_ok_env(&["gc", "--repo", repo, "--keep-last", "1", "--grace", "0s"], &env);
    let keys = s3_keys(&lab);
    assert!(
        keys.len() > before && keys.contains(&"gc/pending".to_string()),
        "{keys:?}"
    );
    slate_ok_env(&["verify", "--repo", repo, "--trust", s(&trust)], &env);
    slate_ok_env(&["gc", "--repo", repo], &env);
    assert!(s3_keys(&lab).len() < before);
    slate_ok_env(&["verify", "--repo", repo, "--trust", s(&trust)], &env);
    let dst = lab.path().join("after-gc");
    slate_ok_env(&["checkout", "--repo", repo, "site/lab", s(&dst)], &env);
    assert_same_tree(&tb, &dst);
}

#[test]
fn an_update_names_the_kept_state_that_hides_its_changes() {
    let (mut lab, mut m, _, _) = lab_with_machine(64 << 10);
    // The fleet's policy for this group keeps /var/lib/slate-test and
    // /etc/hostname locally; the next snapshot changes a file in the first.
    let policy = "[[path]]\npath = \"/var/lib/slate-test\"\nstate = \"local\"\n\n\
                  [[path]]\npath = \"/etc/hostname\"\nstate = \"backup\"\n\n\
                  [[path]]\npath = \"/etc/os-release\"\nstate = \"ram\"\n";
    std::fs::write(lab.path().join("group.toml"), policy).unwrap();
    lab.extra_fleet =
        "[[machine]]\nlabels = { want = \"b-kept\" }\nchannel = \"t/b\"\nstate_policy = \"group.toml\"\n\n".into();
    m.via(&[&lab.restart()]);
    m.target("b-kept");
    let r = m.update();
    assert_eq!(r["result"], "ok", "{r}");
    assert_eq!(
        std::fs::read_to_string(m.state_dir.join("state-policy.toml")).unwrap(),
        policy,
        "the agent keeps the fleet's policy for `slate state apply`"
    );
    let shadowed = r["shadowed"]
        .as_array()
        .unwrap_or_else(|| panic!("no shadowed list: {r}"));
    assert_eq!(shadowed.len(), 1, "only persistent state hides anything: {r}");
    assert_eq!(shadowed[0]["path"], "/var/lib/slate-test/version");
    assert_eq!(shadowed[0]["declared"], "/var/lib/slate-test");
    assert_eq!(shadowed[0]["state"], "local");
    assert_eq!(shadowed[0]["change"], "content changed");
    let st = m.status();
    assert_eq!(st["last_pass"]["shadowed"][0], "/var/lib/slate-test/version", "{st}");
    // The server shows it too.
    let fleet = lab.fleet_status();
    assert!(fleet.contains("/var/lib/slate-test/version"), "{fleet}");

    // A group without a policy of its own: the image's applies again.
    m.target("b");
    m.update();
    assert!(!m.state_dir.join("state-policy.toml").exists());

    // A fleet file naming a broken policy stops the server at startup.
    std::fs::write(
        lab.path().join("group.toml"),
        "[[path]]\npath = \"/x\"\nstate = \"cloud\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(crate::support::slate_bin())
        .args(["serve", "--repo", s(&lab.repo), "--listen", "127.0.0.1:0", "--fleet"])
        .arg(lab.path().join("FLEET.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("state_policy") && err.contains("group.toml line 3"),
        "{err}"
    );
}

/// A fleet policy naming an owner the machine's tree does not have would
/// fail `slate state apply` at the next boot of every machine of the
/// group: the agent refuses it, keeps the previous policy, reports the
/// refusal to the fleet, and changes nothing. A new snapshot whose own
/// policy does not fit it is written but never switched to.
#[test]
fn a_state_policy_that_does_not_fit_the_tree_is_refused_and_reported() {
    let (mut lab, mut m, ra, _) = lab_with_machine(64 << 10);
    let policy = "[[path]]\npath = \"/var/lib/slate-test\"\nstate = \"local\"\nowner = \"postgres\"\n";
    std::fs::write(lab.path().join("group.toml"), policy).unwrap();
    lab.extra_fleet =
        "[[machine]]\nlabels = { want = \"b-bad\" }\nchannel = \"t/b\"\nstate_policy = \"group.toml\"\n\n".into();
    m.via(&[&lab.restart()]);
    m.target("b-bad");
    let err = m.update_fails();
    assert!(
        err.contains("refusing the fleet's state policy")
            && err.contains("the fleet's state policy line 2")
            && err.contains("owner \"postgres\" of /var/lib/slate-test is not in the tree's /etc/passwd"),
        "{err}"
    );
    assert!(!m.state_dir.join("state-policy.toml").exists(), "nothing kept");
    assert_nothing_switched(&m, &ra);
    assert!(!m.slot_path("b").exists(), "refused before anything was written");
    let fleet = lab.fleet_status();
    assert!(fleet.contains("refusing the fleet's state policy"), "{fleet}");

    // The image's own policy: a snapshot whose /etc/slate/state.toml does
    // not fit it is refused before the switch.
    let tc = small_tree(&lab.path().join("tree-c"), 3, 64 << 10);
    std::fs::create_dir_all(tc.join("etc/slate")).unwrap();
    std::fs::write(tc.join("etc/slate/state.toml"), policy).unwrap();
    lab.commit("c", &tc);
    m.via(&[&lab.restart()]);
    m.target("c");
    let err = m.update_fails();
    assert!(
        err.contains("refusing to switch to the new snapshot") && err.contains("postgres"),
        "{err}"
    );
    assert_nothing_switched(&m, &ra);
    // Asked again, it refuses again, without switching.
    let again = m.update_fails();
    assert!(again.contains("refusing to switch"), "{again}");
    assert_nothing_switched(&m, &ra);
}

#[test]
fn an_update_refuses_a_boot_partition_without_room_and_keeps_the_good_entry() {
    if !crate::support::is_root() {
        crate::support::skip("needs root (a small tmpfs as the boot partition)");
        return;
    }
    let mut lab = Lab::new();
    let ta = small_tree(&lab.path().join("tree-a"), 1, 64 << 10);
    let tb = small_tree(&lab.path().join("tree-b"), 2, 64 << 10);
    // The new snapshot's kernel is larger than the boot partition has room for.
    std::fs::write(tb.join("boot/vmlinuz-6.1.0-2"), random_bytes(9, 3 << 20)).unwrap();
    lab.commit("a", &ta);
    lab.commit("b", &tb);
    lab.serve();
    let boot = crate::support::Tmpfs::mount("2m");
    let mut m = lab.agent("m", Slots::Dirs);
    m.bootloader = "grub";
    m.boot_dir = boot.path().to_path_buf();
    m.target("a");
    assert_eq!(m.update()["result"], "ok");
    let good = std::fs::read(boot.path().join("slate/a/vmlinuz")).unwrap();
    let cfg = std::fs::read(boot.path().join("grub/slate.cfg")).unwrap();

    m.target("b");
    let err = m.update_fails();
    assert!(
        err.contains("boot partition") && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(!m.slot_path("b").exists(), "refused before the slot was written");
    assert_eq!(std::fs::read(boot.path().join("slate/a/vmlinuz")).unwrap(), good);
    assert_eq!(std::fs::read(boot.path().join("grub/slate.cfg")).unwrap(), cfg);
    assert_eq!(m.status()["active"], "a");
}

// ---------------------------------------------------------------------------
// Issue 12: told at once.

/// `slate update --watch` running for a machine, killed and reaped on drop;
/// what it prints is collected as it comes.
struct Watching {
    child: Child,
    /// Its stdout (JSON lines) and stderr lines, in the order read.
    lines: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Watching {
    fn start(m: &Agent) -> Watching {
        let mut c = m.command("update");
        c.args(["--watch", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("run slate update --watch");
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        for pipe in [out, err] {
            let lines = lines.clone();
            // Drained for the child's whole life, so it never blocks on a pipe.
            std::thread::spawn(move || {
                for l in BufReader::new(pipe).lines().map_while(|l| l.ok()) {
                    lines.lock().unwrap().push(l);
                }
            });
        }
        Watching { child, lines }
    }

    /// Wait up to `limit` for a line for which `pred` holds; the time it took.
    fn wait_for(&mut self, limit: Duration, what: &str, pred: impl Fn(&str) -> bool) -> Duration {
        let t = Instant::now();
        while t.elapsed() < limit {
            if self.lines.lock().unwrap().iter().any(|l| pred(l)) {
                return t.elapsed();
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "slate update --watch ended ({st}):\n{}",
                    self.lines.lock().unwrap().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "no {what} within {limit:?}; slate update --watch printed:\n{}",
            self.lines.lock().unwrap().join("\n")
        );
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pass result line of `--json` for `target` with `result`.
fn is_result(line: &str, target: &str, result: &str) -> bool {
    serde_json::from_str::<Value>(line)
        .is_ok_and(|v| v["event"] == "result" && v["target"] == target && v["result"] == result)
}

#[test]
fn a_watching_agent_updates_as_soon_as_a_snapshot_is_committed() {
    let mut lab = Lab::new();
    let ta = small_tree(&lab.path().join("tree-a"), 1, 256 << 10);
    let tb = small_tree(&lab.path().join("tree-b"), 2, 64 << 10);
    let a = lab.commit("v", &ta);
    lab.serve();
    let mut m = lab.agent("m", Slots::Dirs);
    m.target("v");
    let mut w = Watching::start(&m);
    // The first pass runs at once and writes a.
    w.wait_for(Duration::from_secs(60), "first pass", |l| is_result(l, &a, "ok"));
    // Then it waits on the server; give the long-poll time to be asked.
    std::thread::sleep(Duration::from_secs(2));
    // Another process moves the channel, as an administrator would.
    let out = slate_ok(&[
        "commit",
        "--repo",
        s(&lab.repo),
        "--channel",
        "t/v",
        "-m",
        "v2",
        "--sign",
        s(&lab.key),
        s(&tb),
    ]);
    let b = out.lines().next().unwrap().trim().to_string();
    assert_eq!(b.len(), 64, "{out}");
    // The server's watcher looks every second: the agent is told within a
    // few (generous for a loaded machine; the hourly timer is not involved).
    let told = w.wait_for(Duration::from_secs(15), "news of the commit", |l| {
        l.starts_with(&format!("the fleet assigns {}", &b[..12]))
    });
    eprintln!("told of the commit after {told:?}");
    w.wait_for(Duration::from_secs(60), "the second pass", |l| is_result(l, &b, "ok"));
    Reference::of(&tb).check(&m.slot_path("b"));
    assert_eq!(m.status()["pending"], "b");
    // It was told by a waiting request, not by polling in a loop.
    let polls = lab.server().requests("known=");
    assert!(!polls.is_empty(), "the agent long-polls with known=");
    assert!(polls.len() < 10, "a few long polls, not a loop: {polls:#?}");
    drop(w);
    assert_eq!(m.update()["result"], "up-to-date");
}

#[test]
fn a_pass_waits_for_the_lock_with_wait_for_lock() {
    let (_lab, m, _, _) = lab_with_machine(64 << 10);
    // Another agent's pass: the lock held by this process.
    let lock = std::fs::File::options()
        .write(true)
        .open(m.state_dir.join("lock"))
        .unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let err = m.update_fails();
    assert!(err.contains("another slate agent holds"), "{err}");
    let mut c = m.command("update");
    c.args(["--wait-for-lock", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = c.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(child.try_wait().unwrap().is_none(), "it waits while the lock is held");
    drop(lock);
    let st = crate::support::wait_timeout(&mut child, Duration::from_secs(60)).expect("it runs once the lock is free");
    assert!(st.success());
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(out.contains("\"result\":\"up-to-date\""), "{out}");
}
