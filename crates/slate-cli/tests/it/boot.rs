//! Machines that really boot: the v3 Debian tree after `slate prepare`,
//! installed with `slate install` onto a raw disk image and started under
//! qemu (software emulation), once with GRUB from a BIOS and once with
//! systemd-boot from UEFI (OVMF). Every boot runs a marker unit from the
//! tree that prints, on the serial console, the slot it booted, whether
//! the root is read-only, whether a `ram` path is writable and what
//! `server` state arrived; then it runs `slate state upload` and `slate
//! update` and powers off. qemu runs with `-no-reboot`, so a restart (a
//! kernel or initramfs panic with `panic=10`) ends the run too: each run is
//! one boot, and the disk carries everything to the next.
//!
//! The guest reaches the test's server (on 127.0.0.1) through qemu's user
//! network, which maps 10.0.2.2 to the host's loopback: nothing leaves
//! the machine. The two tests run their VMs at the same time, one per core.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{corpus, is_root, s, scratch, slate_ok, FleetKey, Server};

/// Longest one boot may take before the test gives up on it.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

const MARKER: &str = r#"#!/bin/sh
# slate's boot test: report this boot on the serial console, then let the
# agent do its work and power off.
out=/dev/ttyS0
slot=$(sed -n 's/.*slate\.slot=\([ab]\).*/\1/p' /proc/cmdline)
if touch /usr/.slate-test 2>/dev/null; then ro=no; else ro=yes; fi
if touch /etc/.slate-test 2>/dev/null; then etc=writable; else etc=read-only; fi
if echo x > /var/log/slate-test 2>/dev/null; then ram=yes; else ram=no; fi
server=$(cat /etc/slate-test/secret 2>/dev/null || echo none)
[ -f /etc/slate-test/secret ] || echo "made-on-$(cat /etc/machine-id)" > /etc/slate-test/secret
echo "SLATE-MARKER slot=$slot ro=$ro etc=$etc ram=$ram server=$server version=$(cat /etc/slate-test-version)" > $out
echo "SLATE-BOOT-RESULT $(slate status --json | sed -n 's/.*"boot_result":"\([a-z-]*\)".*/\1/p')" > $out
slate state upload > $out 2>&1
slate update > $out 2>&1 || echo "SLATE-UPDATE-FAILED" > $out
echo "SLATE-DONE" > $out
systemctl poweroff
"#;

const MARKER_UNIT: &str = "[Unit]\nDescription=slate boot test marker\nAfter=slate-boot-ok.service multi-user.target\n\
[Service]\nType=oneshot\nExecStart=/usr/local/sbin/slate-test-marker\n[Install]\nWantedBy=multi-user.target\n";

/// The test's addition to the default policy: a directory kept on the server.
const SERVER_POLICY: &str = "\n[[path]]\npath = \"/etc/slate-test\"\nstate = \"server\"\n";

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Everything a boot test needs, or why it is skipped.
fn ready(firmware: &str) -> Option<PathBuf> {
    if !is_root() {
        eprintln!("skipped: needs root (loop devices, mounts, chroot)");
        return None;
    }
    let Some(corpus) = corpus() else {
        eprintln!("skipped: no Debian corpus (make corpus)");
        return None;
    };
    let mut need = vec!["qemu-system-x86_64", "sgdisk", "losetup", "unshare"];
    need.extend(match firmware {
        "bios" => ["grub-mkimage", "mkfs.ext4"],
        _ => ["mcopy", "mkfs.fat"],
    });
    for c in need {
        if !have(c) {
            eprintln!("skipped: {c} is not installed (scripts/setup.sh installs it)");
            return None;
        }
    }
    if firmware == "bios" && !Path::new("/usr/lib/grub/i386-pc/grub-bios-setup").exists() && !have("grub-bios-setup") {
        eprintln!("skipped: grub-bios-setup is not installed (grub-pc-bin)");
        return None;
    }
    if firmware == "uefi" && !Path::new("/usr/share/OVMF/OVMF_CODE.fd").exists() {
        eprintln!("skipped: OVMF is not installed");
        return None;
    }
    Some(corpus.join("v3"))
}

/// A fleet of one: a repository, a key, a server, an enrolled machine and
/// the prepared tree its snapshots are made of.
struct Lab {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    repo: PathBuf,
    tree: PathBuf,
    server: Server,
    port: u16,
}

impl Lab {
    fn new(v3: &Path) -> Lab {
        let t = scratch();
        let dir = t.path().to_path_buf();
        let tree = dir.join("tree");
        let st = Command::new("cp").arg("-a").arg(v3).arg(&tree).status().unwrap();
        assert!(st.success());
        std::fs::create_dir_all(tree.join("usr/local/sbin")).unwrap();
        std::fs::create_dir_all(tree.join("etc/slate-test")).unwrap();
        write_mode(&tree.join("usr/local/sbin/slate-test-marker"), MARKER, 0o755);
        write_mode(
            &tree.join("etc/systemd/system/slate-test-marker.service"),
            MARKER_UNIT,
            0o644,
        );
        let wants = tree.join("etc/systemd/system/multi-user.target.wants");
        std::fs::create_dir_all(&wants).unwrap();
        std::os::unix::fs::symlink(
            "/etc/systemd/system/slate-test-marker.service",
            wants.join("slate-test-marker.service"),
        )
        .unwrap();
        std::fs::write(tree.join("etc/slate-test-version"), "1\n").unwrap();
        let started = Instant::now();
        slate_ok(&["prepare", s(&tree)]);
        eprintln!("slate prepare: {:.1} s", started.elapsed().as_secs_f64());
        // The default policy that prepare wrote, plus a server path.
        let policy = tree.join("etc/slate/state.toml");
        let mut text = std::fs::read_to_string(&policy).unwrap();
        text.push_str(SERVER_POLICY);
        std::fs::write(&policy, text).unwrap();

        let repo = dir.join("repo");
        slate_ok(&["init", "--repo", s(&repo)]);
        slate_ok(&["keygen", "--out", s(&dir.join("key"))]);
        std::fs::write(dir.join("FLEET.toml"), "[default]\nchannel = \"lab\"\n").unwrap();
        let admin = crate::support::admin_token(&dir);
        let server = Server::start_signed(
            &dir,
            &[
                "--repo",
                s(&repo),
                "--fleet",
                s(&dir.join("FLEET.toml")),
                "--admin-token-file",
                s(&admin),
            ],
        );
        let port: u16 = server
            .url
            .rsplit(':')
            .next()
            .unwrap()
            .trim_end_matches('/')
            .parse()
            .unwrap();
        let token = slate_ok(&["fleet", "enroll", "--repo", s(&repo), "vm1"]);
        std::fs::write(dir.join("token"), token).unwrap();
        Lab {
            _dir: t,
            dir,
            repo,
            tree,
            server,
            port,
        }
    }

    /// Commit the tree as it is now to channel `lab`.
    fn commit(&self, version: &str) -> String {
        std::fs::write(self.tree.join("etc/slate-test-version"), format!("{version}\n")).unwrap();
        slate_ok(&[
            "commit",
            "--repo",
            s(&self.repo),
            "--channel",
            "lab",
            "--sign",
            s(&self.dir.join("key")),
            s(&self.tree),
        ])
        .trim()
        .to_string()
    }

    /// The AGENT.toml `slate install` starts from: the server as the host
    /// reaches it, then as the guest does.
    fn template(&self, tries: u32) -> PathBuf {
        let p = self.dir.join("template.toml");
        std::fs::write(
            &p,
            format!(
                "server = [{{ url = \"http://127.0.0.1:{port}\", token = true, token_over_http = true }}, \
                 {{ url = \"http://10.0.2.2:{port}\", token = true, token_over_http = true }}]\n\
                 trust = [{key:?}]\n{fleet}state_dir = \"/unused\"\nmachine_id = \"vm1\"\ntoken_file = {token:?}\n\
                 boot_tries = {tries}\ntimeout_secs = 20\nkernel_cmdline = \"console=ttyS0,115200 ip=dhcp\"\n\
                 [slots]\na = \"/unused/a\"\nb = \"/unused/b\"\n",
                port = self.port,
                key = s(&self.dir.join("key.pub")),
                fleet = FleetKey::in_dir(&self.dir).agent_toml(),
                token = s(&self.dir.join("token")),
            ),
        )
        .unwrap();
        p
    }
}

fn write_mode(p: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A disk image and the firmware that starts it.
struct Vm {
    disk: PathBuf,
    uefi_vars: Option<PathBuf>,
    boots: u32,
}

/// What one boot printed.
struct BootLog {
    text: String,
    seconds: f64,
}

impl BootLog {
    /// The `key=value` of the marker line, if the boot got that far.
    fn marker(&self, key: &str) -> Option<String> {
        let line = self.text.lines().find(|l| l.contains("SLATE-MARKER "))?;
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .map(str::to_string)
    }
    fn boot_result(&self) -> Option<String> {
        let line = self.text.lines().find(|l| l.contains("SLATE-BOOT-RESULT"))?;
        line.split_whitespace().nth(1).map(str::to_string)
    }
    fn tail(&self) -> String {
        let lines: Vec<&str> = self.text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Vm {
    fn new(dir: &Path, firmware: &str) -> Vm {
        let uefi_vars = (firmware == "uefi").then(|| {
            let v = dir.join("OVMF_VARS.fd");
            std::fs::copy("/usr/share/OVMF/OVMF_VARS.fd", &v).unwrap();
            v
        });
        Vm {
            disk: dir.join(format!("disk-{firmware}.img")),
            uefi_vars,
            boots: 0,
        }
    }

    /// Power on; run until the machine powers off or restarts.
    fn boot(&mut self) -> BootLog {
        self.boots += 1;
        let log = self.disk.with_extension(format!("boot{}.log", self.boots));
        let mut c = Command::new("qemu-system-x86_64");
        // q35 without default devices: no floppy or IDE CD-ROM for the
        // guest's udev to probe (on a loaded machine that alone can take
        // minutes).
        c.args([
            "-machine",
            "q35",
            "-nodefaults",
            "-accel",
            "tcg",
            "-smp",
            "1",
            "-m",
            "1024",
        ])
        .args(["-no-reboot", "-display", "none", "-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", self.disk.display()))
        .args(["-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"]);
        if let Some(vars) = &self.uefi_vars {
            c.arg("-drive")
                .arg("if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd")
                .arg("-drive")
                .arg(format!("if=pflash,format=raw,unit=1,file={}", vars.display()));
        }
        let started = Instant::now();
        let mut child = c.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("run qemu");
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if started.elapsed() > BOOT_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let text = String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
        let b = BootLog {
            text,
            seconds: started.elapsed().as_secs_f64(),
        };
        eprintln!(
            "boot {} of {}: {:.1} s, marker {:?}",
            self.boots,
            self.disk.display(),
            b.seconds,
            b.text.lines().find(|l| l.contains("SLATE-MARKER")).map(str::trim)
        );
        b
    }
}

fn install(lab: &Lab, vm: &Vm, firmware: &str, tries: u32) -> f64 {
    let started = Instant::now();
    slate_ok(&[
        "install",
        "--disk",
        s(&vm.disk),
        "--size",
        "6G",
        "--slot-size",
        "2G",
        "--firmware",
        firmware,
        "--config",
        s(&lab.template(tries)),
    ]);
    started.elapsed().as_secs_f64()
}

/// A boot that reached the marker, on `slot`, with everything in place.
fn assert_good_boot(b: &BootLog, slot: &str, version: &str) {
    assert_eq!(b.marker("slot").as_deref(), Some(slot), "{}", b.tail());
    assert_eq!(b.marker("version").as_deref(), Some(version), "{}", b.tail());
    assert_eq!(
        b.marker("ro").as_deref(),
        Some("yes"),
        "the root is read-only: {}",
        b.tail()
    );
    assert_eq!(b.marker("etc").as_deref(), Some("read-only"), "{}", b.tail());
    assert_eq!(
        b.marker("ram").as_deref(),
        Some("yes"),
        "a ram path is writable: {}",
        b.tail()
    );
    assert!(b.text.contains("SLATE-DONE"), "{}", b.tail());
}

/// A slot that breaks: `init` exits at once (the kernel panics), or is
/// missing (initramfs-tools stops at its shell: a hang, were it not for
/// slate's `panic=` on the kernel command line).
fn break_tree(tree: &Path, how: &str) {
    let init = tree.join("usr/sbin/init");
    let _ = std::fs::remove_file(&init);
    if how == "fails" {
        write_mode(&init, "#!/bin/sh\nexit 1\n", 0o755);
    }
}

fn fix_tree(tree: &Path) {
    let init = tree.join("usr/sbin/init");
    let _ = std::fs::remove_file(&init);
    std::os::unix::fs::symlink("/lib/systemd/systemd", &init).unwrap();
}

#[test]
fn bios_grub_install_update_and_fall_back_from_a_hung_slot() {
    let Some(v3) = ready("bios") else { return };
    let lab = Lab::new(&v3);
    lab.commit("1");
    let mut vm = Vm::new(&lab.dir, "bios");
    let install_secs = install(&lab, &vm, "bios", 1);

    // Slot A: the installed snapshot; the machine makes its server state.
    let b1 = vm.boot();
    assert_good_boot(&b1, "a", "1");
    assert_eq!(b1.marker("server").as_deref(), Some("none"));
    eprintln!(
        "install to marker: {:.1} s (install {install_secs:.1} s, boot {:.1} s)",
        install_secs + b1.seconds,
        b1.seconds
    );

    // A new snapshot: the agent in the guest writes slot B; B boots, and
    // the server state the machine uploaded came back from the server.
    lab.commit("2");
    let b2 = vm.boot();
    assert_good_boot(&b2, "a", "1");
    let b3 = vm.boot();
    assert_good_boot(&b3, "b", "2");
    let secret = b3.marker("server").unwrap();
    assert!(secret.starts_with("made-on-"), "server state arrived: {}", b3.tail());
    assert_eq!(b3.boot_result().as_deref(), Some("good"));

    // A slot that hangs (no init: the initramfs would wait at its shell).
    break_tree(&lab.tree, "hangs");
    lab.commit("3");
    fix_tree(&lab.tree);
    let b4 = vm.boot();
    assert_good_boot(&b4, "b", "2");
    let b5 = vm.boot();
    assert!(
        b5.marker("slot").is_none(),
        "slot a (broken) must not reach the marker: {}",
        b5.tail()
    );
    assert!(b5.text.contains("slate.slot=a"), "{}", b5.tail());
    assert!(
        b5.text.contains("this slot cannot start") && b5.text.contains("restarting in 10 seconds"),
        "the hang is caught in the initramfs: {}",
        b5.tail()
    );
    assert!(
        b5.seconds < BOOT_TIMEOUT.as_secs_f64() - 1.0,
        "the machine restarted by itself"
    );
    let b6 = vm.boot();
    assert_good_boot(&b6, "b", "2");
    assert_eq!(b6.boot_result().as_deref(), Some("fell-back"), "{}", b6.tail());
    assert_eq!(b6.marker("server").as_deref(), Some(secret.as_str()));
    assert!(
        b6.text.contains("failed to boot on this machine"),
        "not written again: {}",
        b6.tail()
    );
    // The fleet knows.
    let fleet = slate_ok(&[
        "fleet",
        "status",
        "--json",
        "--server",
        &lab.server.url,
        "--token-file",
        s(&lab.dir.join("admin.token")),
    ]);
    assert!(fleet.contains("fell-back"), "{fleet}");
}

#[test]
fn uefi_systemd_boot_falls_back_from_a_failing_slot() {
    let Some(v3) = ready("uefi") else { return };
    let lab = Lab::new(&v3);
    lab.commit("1");
    let mut vm = Vm::new(&lab.dir, "uefi");
    install(&lab, &vm, "uefi", 1);

    let b1 = vm.boot();
    assert_good_boot(&b1, "a", "1");

    // A slot whose init fails: the kernel panics and restarts.
    break_tree(&lab.tree, "fails");
    lab.commit("2");
    fix_tree(&lab.tree);
    let b2 = vm.boot();
    assert_good_boot(&b2, "a", "1");
    let b3 = vm.boot();
    assert!(
        b3.marker("slot").is_none(),
        "slot b (broken) must not reach the marker: {}",
        b3.tail()
    );
    assert!(
        b3.text.contains("Attempted to kill init"),
        "the kernel panicked: {}",
        b3.tail()
    );
    assert!(
        b3.seconds < BOOT_TIMEOUT.as_secs_f64() - 1.0,
        "the machine restarted by itself"
    );
    let b4 = vm.boot();
    assert_good_boot(&b4, "a", "1");
    assert_eq!(b4.boot_result().as_deref(), Some("fell-back"), "{}", b4.tail());
    assert!(b4.marker("server").unwrap().starts_with("made-on-"), "{}", b4.tail());
    assert!(
        b4.text.contains("failed to boot on this machine"),
        "not written again: {}",
        b4.tail()
    );
    let fleet = slate_ok(&[
        "fleet",
        "status",
        "--json",
        "--server",
        &lab.server.url,
        "--token-file",
        s(&lab.dir.join("admin.token")),
    ]);
    assert!(fleet.contains("fell-back"), "{fleet}");
}
