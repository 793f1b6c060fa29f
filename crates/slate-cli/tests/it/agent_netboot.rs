//! The agent on a machine booted from the network (AGENT.toml `mode =
//! "netboot"`), faked in a scratch directory: `SLATE_NETBOOT_DIR` stands
//! for /run/slate/netboot, holding the info.json the initramfs writes and
//! the mount daemon's status file. Against a real `slate serve`: `slate
//! update` reports what the next network boot runs and writes nothing,
//! `slate status` shows the boot and the cache, `boot-ok` reports the boot,
//! and `slate fleet status` shows the machine's mode and cache fill.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use super::{one_error_line, small_tree, Lab};
use crate::support::{s, slate_bin, token_server, FleetKey};

/// A network-booted machine: its AGENT.toml, state directory and fake
/// /run/slate/netboot.
struct NetMachine {
    name: String,
    dir: PathBuf,
    config: PathBuf,
    /// What stands for /run/slate/netboot.
    netboot: PathBuf,
}

impl NetMachine {
    /// Enroll `name` on `lab`'s server, following channel `t/WANT`.
    fn new(lab: &Lab, name: &str, want: &str) -> NetMachine {
        let dir = lab.path().join("machines").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let token = crate::support::enroll(&lab.repo, name, &dir);
        let config = dir.join("agent.toml");
        // What the network boot generates: no slots, no bootloader.
        std::fs::write(
            &config,
            format!(
                "mode = \"netboot\"\nserver = [{}]\ntoken_file = {:?}\ntrust = [{:?}]\n{}state_dir = {:?}\n\
                 machine_id = {name:?}\n\n[labels]\nwant = {want:?}\n",
                token_server(&lab.url()),
                s(&token),
                s(&lab.trust()),
                FleetKey::in_dir(lab.path()).agent_toml(),
                s(&dir.join("state")),
            ),
        )
        .unwrap();
        let netboot = dir.join("run-slate-netboot");
        std::fs::create_dir_all(netboot.join("disk/cache/mount")).unwrap();
        NetMachine {
            name: name.into(),
            dir,
            config,
            netboot,
        }
    }

    fn status_file(&self) -> PathBuf {
        self.netboot.join("disk/cache/mount/status.json")
    }

    /// Write info.json: booted `snapshot` with a cache partition.
    fn booted(&self, snapshot: &str, url: &str) {
        let info = serde_json::json!({
            "mode": "cached", "snapshot": snapshot, "assigned": snapshot, "servers": [url],
            "machine_id": self.name, "device": "/dev/vda2",
            "cache_dir": self.netboot.join("disk/cache"), "status_file": self.status_file(),
            "offline": false, "booted_from": "network",
        });
        std::fs::write(self.netboot.join("info.json"), info.to_string()).unwrap();
    }

    /// Write the mount daemon's status file (slate-mount's fields).
    fn cache(&self, snapshot: &str, cached: u64, total: u64) {
        let status = serde_json::json!({
            "pid": std::process::id(), "mountpoint": "/root", "snapshot": snapshot, "channel": "t/x",
            "state": "mounted", "fill_target": snapshot, "filling": cached < total,
            "cached_bytes": cached, "total_bytes": total, "complete": cached == total,
            "fetched_bytes": cached, "requests": 3, "cache_bytes": cached, "cache_limit": 8u64 << 30,
            "pinned_over_limit": false, "last_error": null, "updated_at": 1_796_558_230u64,
        });
        std::fs::write(self.status_file(), status.to_string()).unwrap();
    }

    /// `slate SUB ARGS --config AGENT.toml` on this machine.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(slate_bin());
        c.args(args)
            .arg("--config")
            .arg(&self.config)
            .env("SLATE_NETBOOT_DIR", &self.netboot)
            // Nothing of the host's boot counts.
            .env("SLATE_RUN_DIR", self.dir.join("run-slate"))
            .env("SLATE_CMDLINE", self.dir.join("no-cmdline"))
            .env_remove("SLATE_BOOTED_SLOT")
            .env_remove("SLATE_AGENT_CONFIG")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run slate")
    }

    fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "slate {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `slate update --json`: its result line.
    fn update(&self) -> Value {
        let out = self.ok(&["update", "--json"]);
        let stdout = String::from_utf8(out.stdout).unwrap();
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.contains("\"event\":\"result\""))
            .unwrap_or_else(|| panic!("no result line in:\n{stdout}"));
        serde_json::from_str(line).unwrap()
    }

    fn status(&self) -> Value {
        serde_json::from_slice(&self.ok(&["status", "--json"]).stdout).unwrap()
    }

    /// The human `slate status`.
    fn status_text(&self) -> String {
        String::from_utf8(self.ok(&["status"]).stdout).unwrap()
    }
}

/// The machine's row in `slate fleet status --json`.
fn fleet_row(lab: &Lab, name: &str) -> Value {
    let out = lab.fleet_status();
    let v: Value = serde_json::from_str(&out).unwrap();
    v["machines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["machine"] == name)
        .unwrap_or_else(|| panic!("no report from {name}: {out}"))
        .clone()
}

/// The machine's line in the human `slate fleet status` table.
fn fleet_line(lab: &Lab, name: &str) -> String {
    let admin = lab.path().join("admin.token");
    let out = crate::support::slate_ok(&["fleet", "status", "--server", &lab.url(), "--token-file", s(&admin)]);
    let header = out.lines().next().unwrap().to_string();
    assert!(header.contains("CHANNEL  MODE"), "{out}");
    out.lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no line for {name}:\n{out}"))
        .to_string()
}

/// Everything under `dir`, relative.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                todo.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_network_booted_machine_reports_its_next_boot_and_its_cache() {
    let mut lab = Lab::new();
    let ta = small_tree(&lab.path().join("tree-a"), 1, 64 << 10);
    let tb = small_tree(&lab.path().join("tree-b"), 2, 64 << 10);
    lab.commit("a", &ta);
    lab.commit("b", &tb);
    let url = lab.serve();
    let (a, b) = (lab.id("a").to_string(), lab.id("b").to_string());
    let m = NetMachine::new(&lab, "net-1", "b");

    // Booted a from the network; the fleet assigns b. The cache partition
    // is 42% full.
    m.booted(&a, &url);
    m.cache(&a, 42, 100);
    let r = m.update();
    assert_eq!(r["result"], "next-boot", "{r}");
    assert_eq!(r["target"], b.as_str());
    assert!(r["slot"].is_null(), "{r}");
    let msg = r["message"].as_str().unwrap();
    assert!(
        msg.contains(&b[..12]) && msg.contains(&a[..12]) && msg.contains("next network boot"),
        "{msg}"
    );
    // The human form says it in a sentence.
    let out = m.ok(&["update"]);
    let line = String::from_utf8_lossy(&out.stderr);
    assert!(line.contains("the next network boot runs it"), "{line}");
    // Nothing but the agent's own state was written: no slot, no mount,
    // no boot file, no download cache.
    let written = files(&m.dir.join("state"));
    assert!(
        written.iter().all(|f| ["lock", "state.json"].contains(&f.as_str())),
        "{written:?}"
    );

    let st = m.status();
    assert_eq!(st["mode"], "cached", "{st}");
    assert_eq!(st["booted"], a.as_str());
    assert_eq!(st["assigned"], b.as_str());
    assert_eq!(st["device"], "/dev/vda2");
    assert_eq!(st["cache"]["cached_bytes"], 42);
    assert_eq!(st["cache"]["total_bytes"], 100);
    assert_eq!(st["cache"]["percent"], 42.0);
    assert_eq!(st["cache"]["complete"], false);
    assert_eq!(st["cache"]["state"], "mounted");
    assert_eq!(st["last_pass"]["result"], "next-boot");
    assert!(st.get("slots").is_none(), "{st}");
    let text = m.status_text();
    assert!(
        text.contains("mode: cached (booted from the network), cache on /dev/vda2"),
        "{text}"
    );
    assert!(
        text.contains(&format!("assigned: {} (the next network boot runs it)", &b[..12])),
        "{text}"
    );
    assert!(text.contains("(42.0%), mounted, filling"), "{text}");

    let row = fleet_row(&lab, "net-1");
    assert_eq!(row["mode"], "cached", "{row}");
    assert_eq!(
        row["cache"],
        serde_json::json!({"cached_bytes": 42, "total_bytes": 100, "complete": false})
    );
    assert_eq!(row["current"], a.as_str());
    assert_eq!(row["target"], b.as_str());
    assert_eq!(row["last_update"]["result"], "next-boot");
    assert!(row["active_slot"].is_null(), "{row}");
    let line = fleet_line(&lab, "net-1");
    assert!(line.contains(" cached 42% "), "{line}");

    // The next network boot ran b and its cache is complete: boot-ok
    // reports a good boot, the pass is up to date, the fleet sees a
    // machine that boots without a server.
    m.booted(&b, &url);
    m.cache(&b, 100, 100);
    let out = m.ok(&["boot-ok"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&format!(
            "snapshot {} (cached, booted from the network) is good",
            &b[..12]
        )),
        "{said}"
    );
    assert_eq!(m.update()["result"], "up-to-date");
    let row = fleet_row(&lab, "net-1");
    assert_eq!(row["boot"]["result"], "good", "{row}");
    assert_eq!(row["boot"]["snapshot"], b.as_str());
    assert!(row["boot"]["slot"].is_null(), "{row}");
    assert_eq!(row["current"], b.as_str());
    assert_eq!(row["cache"]["complete"], true);
    let line = fleet_line(&lab, "net-1");
    assert!(line.contains(" offline-ready "), "{line}");
    assert!(m.status_text().contains("complete: boots without a server"));

    // No slots to roll back.
    let out = m.run(&["rollback"]);
    assert!(!out.status.success());
    assert!(one_error_line(&out).contains("needs A/B slots"), "{out:?}");

    // The default AGENT.toml of a network-booted system: the one the boot
    // generated, when the machine has no /etc/slate/agent.toml (as here,
    // unless this host is itself a slate machine).
    if !Path::new("/etc/slate/agent.toml").exists() {
        std::fs::copy(&m.config, m.netboot.join("agent.toml")).unwrap();
        let out = Command::new(slate_bin())
            .args(["status", "--json"])
            .env("SLATE_NETBOOT_DIR", &m.netboot)
            .env_remove("SLATE_AGENT_CONFIG")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let st: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(st["booted"], b.as_str(), "{st}");
    }

    // Files the boot should have left, missing: a clear line, no crash.
    std::fs::remove_file(m.status_file()).unwrap();
    let text = m.status_text();
    assert!(
        text.lines()
            .any(|l| l.starts_with("cache: cannot read") && l.contains("status.json")),
        "{text}"
    );
    std::fs::remove_file(m.netboot.join("info.json")).unwrap();
    let st = m.status();
    assert_eq!(st["mode"], "netboot", "{st}");
    assert!(st["netboot_error"].as_str().unwrap().contains("info.json"), "{st}");
    let text = m.status_text();
    assert!(text.starts_with("mode: netboot, but cannot read"), "{text}");
    // A pass cannot tell what runs: an error, recorded and reported.
    let out = m.run(&["update"]);
    assert!(!out.status.success());
    assert!(one_error_line(&out).contains("info.json"), "{out:?}");
    let row = fleet_row(&lab, "net-1");
    assert_eq!(row["last_update"]["result"], "error", "{row}");
    assert!(row["mode"].is_null(), "{row}");
}
