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
pub(crate) const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

const MARKER: &str = r#"#!/bin/sh
# slate's boot test: report this boot on the markers port (ttyS1; the
# console and its getty are on ttyS0, so nothing else writes there), check
# that ordinary work succeeds on the read-only machine, then let the agent
# do its work and power off.
exec 3>/dev/ttyS1
# A fresh line: under UEFI, GRUB's menu may have left one unfinished here.
echo >&3
say() { echo "$*" >&3; }
slot=$(sed -n 's/.*slate\.slot=\([a-z]*\).*/\1/p' /proc/cmdline)
if touch /usr/.slate-test 2>/dev/null; then ro=no; else ro=yes; fi
if touch /etc/.slate-test 2>/dev/null; then etc=writable; else etc=read-only; fi
if echo x > /var/log/slate-test 2>/dev/null; then ram=yes; else ram=no; fi
server=$(cat /etc/slate-test/secret 2>/dev/null || echo none)
[ -f /etc/slate-test/secret ] || echo "made-on-$(cat /etc/machine-id)" > /etc/slate-test/secret
dmi=$(cat /sys/class/dmi/id/product_uuid 2>/dev/null | tr -d '0-' ; true)
nics=$(ls /sys/class/net | grep -vx lo | wc -l)
say "SLATE-MARKER slot=$slot ro=$ro etc=$etc ram=$ram server=$server version=$(cat /etc/slate-test-version) machine-id=$(cat /etc/machine-id) dmi=${dmi:-none} nics=$nics"
# Ordinary work on the read-only machine.
if echo x > /tmp/slate-test && echo x > /var/tmp/slate-test; then tmp=yes; else tmp=no; fi
failed=$(systemctl --failed --no-legend --plain 2>&1 | awk '{print $1}' | paste -sd, -)
if journalctl -n1 --no-pager >/dev/null 2>&1; then journal=yes; else journal=no; fi
if runuser -l root -c true </dev/null && su -l root -c true </dev/null; then login=yes; else login=no; fi
# The package lists of the test's server (which has none: apt fails to
# fetch, fast, but only after writing its lock, lists and cache).
t0=$(date +%s)
apt_out=$(timeout 300 apt-get -o Dir::Etc::SourceList=/etc/slate-test-apt.list -o Dir::Etc::SourceParts=- \
    -o Acquire::Retries=0 -o Acquire::http::Timeout=10 update 2>&1)
apt_s=$(( $(date +%s) - t0 ))
if echo "$apt_out" | grep -qi 'read-only file system'; then apt=read-only
elif echo "$apt_out" | grep -q -e 'Reading package lists' -e '^Err:1 '; then apt=yes
else apt=no; fi
say "SLATE-WORK tmp=$tmp journal=$journal login=$login apt=$apt apt_s=$apt_s failed=${failed:-none}"
[ "$apt" = yes ] || echo "$apt_out" | sed 's/^/SLATE-APT /' >&3
for u in $(echo "$failed" | tr , ' '); do
    systemctl status --no-pager -l "$u" 2>&1 | tail -n 8 | sed 's/^/SLATE-FAILED-UNIT /' >&3
done
if [ "$slot" = live ]; then
    # A live boot (tests/it/live.rs): a file in a `local` path counts the
    # boots this medium kept; a blank disk gets installed from the medium.
    n=$(cat /var/lib/slate-test-local/boots 2>/dev/null || echo 0)
    n=$((n + 1))
    echo "$n" > /var/lib/slate-test-local/boots && sync
    say "SLATE-LIVE boots=$n root=$(findmnt -no SOURCE /) local=$(findmnt -no SOURCE /var/lib/slate-test-local | tr -d '[]' | sed 's/\/store.*//')"
    if [ -b /dev/vda ]; then
        if slate install --disk /dev/vda --config /etc/slate-test-install/agent.toml --firmware bios --slot-size 2G \
            --from-live 2>&1 | cat >&3; then say "SLATE-INSTALL ok"; else say "SLATE-INSTALL failed"; fi
    fi
    say "SLATE-DONE"
    systemctl poweroff
    exit 0
fi
say "SLATE-BOOT-RESULT $(slate status --json | sed -n 's/.*"boot_result":"\([a-z-]*\)".*/\1/p')"
# What the initramfs step warned about, as the agent kept it to report.
slate status | sed -n 's/^boot warning: /SLATE-BOOT-WARNING /p' >&3
# Not on a terminal: no progress bars on the marker port.
slate state upload 2>&1 | cat >&3
{ slate update 2>&1 || echo "SLATE-UPDATE-FAILED"; } | cat >&3
say "SLATE-DONE"
systemctl poweroff
"#;

const MARKER_UNIT: &str = "[Unit]\nDescription=slate boot test marker\nAfter=slate-boot-ok.service multi-user.target\n\
[Service]\nType=oneshot\nExecStart=/usr/local/sbin/slate-test-marker\n[Install]\nWantedBy=multi-user.target\n";

/// The test's addition to the default policy: a directory kept on the server.
const SERVER_POLICY: &str = "\n[[path]]\npath = \"/etc/slate-test\"\nstate = \"server\"\n";

pub(crate) fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Everything a boot test needs, or why it is skipped.
pub(crate) fn ready(firmware: &str) -> Option<PathBuf> {
    if !is_root() {
        crate::support::skip("needs root (loop devices, mounts, chroot)");
        return None;
    }
    let Some(corpus) = corpus() else {
        crate::support::skip("no Debian corpus (make corpus)");
        return None;
    };
    let mut need = vec!["qemu-system-x86_64", "sgdisk", "losetup", "unshare"];
    need.extend(match firmware {
        "bios" => ["grub-mkimage", "mkfs.ext4"],
        _ => ["mcopy", "mkfs.fat"],
    });
    for c in need {
        if !have(c) {
            crate::support::skip(&format!("{c} is not installed (scripts/setup.sh installs it)"));
            return None;
        }
    }
    if firmware == "bios" && !Path::new("/usr/lib/grub/i386-pc/grub-bios-setup").exists() && !have("grub-bios-setup") {
        crate::support::skip("grub-bios-setup is not installed (grub-pc-bin)");
        return None;
    }
    if firmware == "uefi" && !Path::new("/usr/share/OVMF/OVMF_CODE.fd").exists() {
        crate::support::skip("OVMF is not installed");
        return None;
    }
    Some(corpus.join("v3"))
}

/// A fleet of one: a repository, a key, a server, an enrolled machine and
/// the prepared tree its snapshots are made of.
pub(crate) struct Lab {
    _dir: tempfile::TempDir,
    pub(crate) dir: PathBuf,
    pub(crate) repo: PathBuf,
    pub(crate) tree: PathBuf,
    pub(crate) server: Server,
    pub(crate) port: u16,
}

impl Lab {
    pub(crate) fn new(v3: &Path) -> Lab {
        Lab::build(v3, false)
    }

    /// A lab whose tree is prepared for network boots too: the release
    /// and fleet keys built into a lean network-boot initramfs.
    pub(crate) fn netboot(v3: &Path) -> Lab {
        Lab::build(v3, true)
    }

    fn build(v3: &Path, netboot: bool) -> Lab {
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
        if netboot {
            slate_ok(&["keygen", "--out", s(&dir.join("key"))]);
            let fleet = FleetKey::in_dir(&dir);
            slate_ok(&[
                "prepare",
                s(&tree),
                "--trust",
                s(&dir.join("key.pub")),
                "--fleet-trust",
                s(&fleet.public),
            ]);
        } else {
            slate_ok(&["prepare", s(&tree)]);
        }
        eprintln!("slate prepare: {:.1} s", started.elapsed().as_secs_f64());
        // The default policy that prepare wrote, plus a server path.
        let policy = tree.join("etc/slate/state.toml");
        let mut text = std::fs::read_to_string(&policy).unwrap();
        text.push_str(SERVER_POLICY);
        std::fs::write(&policy, text).unwrap();

        let repo = dir.join("repo");
        slate_ok(&["init", "--repo", s(&repo)]);
        if !netboot {
            slate_ok(&["keygen", "--out", s(&dir.join("key"))]);
        }
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
        std::fs::write(
            tree.join("etc/slate-test-apt.list"),
            format!("deb [trusted=yes] http://10.0.2.2:{port}/debian bookworm main\n"),
        )
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
    pub(crate) fn commit(&self, version: &str) -> String {
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
    /// reaches it, then as the guest does. `no_timer_check`: under software
    /// emulation on a busy host the kernel's IO-APIC timer check can fail
    /// and panic before anything of slate runs. It leaves out `state_dir`
    /// and `[slots]`, as docs/boot.md allows: the installer writes them.
    pub(crate) fn template(&self, tries: u32) -> PathBuf {
        let p = self.dir.join("template.toml");
        std::fs::write(
            &p,
            format!(
                "server = [{{ url = \"http://127.0.0.1:{port}\", token = true, token_over_http = true }}, \
                 {{ url = \"http://10.0.2.2:{port}\", token = true, token_over_http = true }}]\n\
                 trust = [{key:?}]\n{fleet}machine_id = \"vm1\"\ntoken_file = {token:?}\n\
                 boot_tries = {tries}\ntimeout_secs = 20\nkernel_cmdline = \"console=ttyS0,115200 ip=dhcp no_timer_check\"\n",
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

pub(crate) fn write_mode(p: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A disk image and the firmware that starts it.
pub(crate) struct Vm {
    pub(crate) disk: PathBuf,
    uefi_vars: Option<PathBuf>,
    boots: u32,
    /// More qemu arguments: a CD, a USB stick.
    pub(crate) extra: Vec<String>,
    /// What the logs of the next boot are named after (default: the disk).
    pub(crate) name: Option<PathBuf>,
    /// Longest one boot may take.
    pub(crate) timeout: Duration,
    /// The network card's `-netdev` (default: qemu's user network).
    pub(crate) netdev: Option<String>,
    /// Boot from the network card first (its iPXE ROM), the disk second.
    pub(crate) net_boot: bool,
    /// A monitor socket, for `set_link` while the machine runs.
    pub(crate) monitor: Option<PathBuf>,
    /// Power the machine off this long after its marker says `SLATE-DONE`
    /// if it has not powered off by itself (`BootLog::exited` tells).
    pub(crate) done_grace: Option<Duration>,
}

/// What one boot printed: the console (firmware, kernel, initramfs,
/// systemd, getty) and, apart, what the marker unit wrote on its own port.
pub(crate) struct BootLog {
    pub(crate) text: String,
    pub(crate) markers: String,
    pub(crate) seconds: f64,
    /// qemu ended by itself (the guest powered off or restarted), rather
    /// than being stopped by the test.
    pub(crate) exited: bool,
}

impl BootLog {
    /// The marker port's lines that start with `tag` and a space (the port
    /// carries nothing but the marker script's output, one line per write).
    pub(crate) fn tagged<'a>(&'a self, tag: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.markers
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .filter_map(move |l| l.strip_prefix(tag)?.strip_prefix(' '))
    }
    /// `key=value` of the first line tagged `tag`.
    pub(crate) fn field(&self, tag: &str, key: &str) -> Option<String> {
        let line = self.tagged(tag).next()?;
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
    }
    /// The `key=value` of the marker line, if the boot got that far.
    pub(crate) fn marker(&self, key: &str) -> Option<String> {
        self.field("SLATE-MARKER", key)
    }
    fn boot_result(&self) -> Option<String> {
        self.tagged("SLATE-BOOT-RESULT").next().map(|r| r.trim().to_string())
    }
    pub(crate) fn done(&self) -> bool {
        self.markers.lines().any(|l| l.trim_end_matches('\r') == "SLATE-DONE")
    }
    pub(crate) fn tail(&self) -> String {
        let lines: Vec<&str> = self.text.lines().collect();
        format!(
            "--- console (last 40 lines)\n{}\n--- markers\n{}",
            lines[lines.len().saturating_sub(40)..].join("\n"),
            self.markers
        )
    }
}

impl Vm {
    pub(crate) fn new(dir: &Path, firmware: &str) -> Vm {
        let uefi_vars = (firmware == "uefi").then(|| {
            let v = dir.join("OVMF_VARS.fd");
            std::fs::copy("/usr/share/OVMF/OVMF_VARS.fd", &v).unwrap();
            v
        });
        Vm {
            disk: dir.join(format!("disk-{firmware}.img")),
            uefi_vars,
            boots: 0,
            extra: Vec::new(),
            name: None,
            timeout: BOOT_TIMEOUT,
            netdev: None,
            net_boot: false,
            monitor: None,
            done_grace: None,
        }
    }

    /// Power on; run until the machine powers off or restarts.
    pub(crate) fn boot(&mut self) -> BootLog {
        self.boot_with(true)
    }

    /// Power on with or without a network card.
    pub(crate) fn boot_with(&mut self, nic: bool) -> BootLog {
        self.boot_watching(nic, |_| {})
    }

    /// Power on; `watch` sees the marker port's text every quarter second
    /// while the machine runs (to act on what it says).
    pub(crate) fn boot_watching(&mut self, nic: bool, mut watch: impl FnMut(&str)) -> BootLog {
        self.boots += 1;
        let base = self.name.clone().unwrap_or_else(|| self.disk.clone());
        let log = base.with_extension(format!("boot{}.log", self.boots));
        let markers = base.with_extension(format!("boot{}.markers", self.boots));
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
        .args(["-no-reboot", "-display", "none"])
        .args(if self.monitor.is_some() {
            &[][..]
        } else {
            &["-monitor", "none"][..]
        })
        // ttyS0: the console; ttyS1: the marker unit's port, which
        // nothing else writes to.
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-serial")
        .arg(format!("file:{}", markers.display()))
        .args(&self.extra);
        if self.disk.exists() {
            // The disk keeps its PCI address with or without a network card:
            // UEFI's boot entries name the disk by it.
            c.arg("-drive")
                .arg(format!("file={},format=raw,if=none,id=d0", self.disk.display()))
                .arg("-device")
                .arg(if self.extra.is_empty() && !self.net_boot {
                    "virtio-blk-pci,drive=d0,addr=0x2"
                } else {
                    // Behind the CD or stick in the boot order.
                    "virtio-blk-pci,drive=d0,addr=0x2,bootindex=1"
                });
        }
        if nic {
            let netdev = self.netdev.clone().unwrap_or_else(|| "user,id=n0".into());
            let card = if self.net_boot {
                "virtio-net-pci,netdev=n0,addr=0x3,bootindex=0"
            } else {
                "virtio-net-pci,netdev=n0,addr=0x3"
            };
            c.arg("-netdev").arg(netdev).args(["-device", card]);
        }
        if let Some(m) = &self.monitor {
            let _ = std::fs::remove_file(m);
            c.arg("-monitor").arg(format!("unix:{},server,nowait", m.display()));
        }
        if let Some(vars) = &self.uefi_vars {
            c.arg("-drive")
                .arg("if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd")
                .arg("-drive")
                .arg(format!("if=pflash,format=raw,unit=1,file={}", vars.display()));
        }
        let started = Instant::now();
        let mut done_at: Option<Instant> = None;
        let mut exited = false;
        let mut child = c.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("run qemu");
        loop {
            if child.try_wait().unwrap().is_some() {
                exited = true;
                break;
            }
            if let Ok(text) = std::fs::read(&markers) {
                let text = String::from_utf8_lossy(&text);
                watch(&text);
                if let Some(grace) = self.done_grace {
                    if text.lines().any(|l| l.trim_end() == "SLATE-DONE") {
                        let done = *done_at.get_or_insert_with(Instant::now);
                        if done.elapsed() > grace {
                            eprintln!(
                                "{}: no power-off {grace:?} after SLATE-DONE; stopping qemu",
                                base.display()
                            );
                            let _ = child.kill();
                            let _ = child.wait();
                            break;
                        }
                    }
                }
            }
            if started.elapsed() > self.timeout {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
        let b = BootLog {
            text: read(&log),
            markers: read(&markers),
            seconds: started.elapsed().as_secs_f64(),
            exited,
        };
        eprintln!(
            "boot {} of {}: {:.1} s, marker {:?}, work {:?}",
            self.boots,
            base.display(),
            b.seconds,
            b.tagged("SLATE-MARKER").next(),
            b.tagged("SLATE-WORK").next(),
        );
        b
    }
}

/// First and last sector of the GPT partition named `name` on `disk`.
pub(crate) fn partition_sectors(disk: &Path, name: &str) -> Option<(u64, u64)> {
    (1..=8).find_map(|n: u32| {
        let out = Command::new("sgdisk")
            .arg("-i")
            .arg(n.to_string())
            .arg(disk)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !text.contains(&format!("'{name}'")) {
            return None;
        }
        let sector = |key: &str| -> Option<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(key))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        };
        Some((sector("First sector: ")?, sector("Last sector: ")?))
    })
}

/// The state partition of a disk image, mounted on the host for the life
/// of the guard (the guest is off): what the machine keeps between boots.
/// Any other partition with a filesystem too ([`StatePartition::named`]).
pub(crate) struct StatePartition {
    dir: tempfile::TempDir,
}

impl StatePartition {
    fn mount(disk: &Path) -> StatePartition {
        Self::named(disk, "slate-state")
    }

    /// Mount the partition named `name` by its sectors in the GPT.
    pub(crate) fn named(disk: &Path, name: &str) -> StatePartition {
        let (first, last) = partition_sectors(disk, name).unwrap_or_else(|| panic!("the disk has a {name} partition"));
        let dir = scratch();
        let st = Command::new("mount")
            .arg("-o")
            .arg(format!(
                "loop,offset={},sizelimit={}",
                first * 512,
                (last - first + 1) * 512
            ))
            .arg(disk)
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount the {name} partition of {}", disk.display());
        StatePartition { dir }
    }

    /// Where it is mounted.
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A file the agent keeps (`/var/lib/slate/...` on the machine).
    fn agent_file(&self, name: &str) -> PathBuf {
        self.dir.path().join("store/local/var/lib/slate").join(name)
    }
}

impl Drop for StatePartition {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

pub(crate) fn install(lab: &Lab, vm: &Vm, firmware: &str, tries: u32) -> f64 {
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
pub(crate) fn assert_good_boot(b: &BootLog, slot: &str, version: &str) {
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
    assert_ordinary_work(b);
    assert!(b.done(), "{}", b.tail());
}

/// Ordinary work succeeds on the booted read-only machine: temporary
/// files, no failed unit, the journal, a login, `apt-get update` (which
/// may fail to fetch, offline, but not on a read-only path).
pub(crate) fn assert_ordinary_work(b: &BootLog) {
    for (key, want) in [
        ("tmp", "yes"),
        ("journal", "yes"),
        ("login", "yes"),
        ("apt", "yes"),
        ("failed", "none"),
    ] {
        assert_eq!(
            b.field("SLATE-WORK", key).as_deref(),
            Some(want),
            "ordinary work: {key}: {}",
            b.tail()
        );
    }
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
        b6.markers.contains("failed to boot on this machine"),
        "not written again: {}",
        b6.tail()
    );
    // The fleet knows.
    let fleet = crate::support::fleet_status(&lab.server.url, &lab.dir.join("admin.token"));
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
        b4.markers.contains("failed to boot on this machine"),
        "not written again: {}",
        b4.tail()
    );
    let fleet = crate::support::fleet_status(&lab.server.url, &lab.dir.join("admin.token"));
    assert!(fleet.contains("fell-back"), "{fleet}");

    // The same machine with no network card (and, as every VM here, no
    // DMI UUID): nothing identifies it in the initramfs, yet it boots, twice,
    // with the same machine id, kept on its state partition, and says so.
    // Meanwhile it holds a fleet policy that passes every check the agent
    // can make but fails at boot (its generator command fails): the boot
    // falls back to the last policy that worked with the slot, once per
    // boot, without a restart, and reports it.
    let with_nic = b4.marker("machine-id").unwrap();
    {
        let part = StatePartition::mount(&vm.disk);
        assert!(
            part.agent_file("good-policy-a.toml").is_file(),
            "boot-ok kept the policy of the good boots of slot a"
        );
        let mut bad = std::fs::read_to_string(lab.tree.join("etc/slate/state.toml")).unwrap();
        bad.push_str("\n[[path]]\npath = \"/etc/slate-broken\"\nstate = \"dynamic\"\ncommand = [\"/bin/false\"]\n");
        std::fs::write(part.agent_file("state-policy.toml"), bad).unwrap();
    }
    let b5 = vm.boot_with(false);
    assert_good_boot(&b5, "a", "1");
    assert!(
        b5.text
            .contains("booted with the last policy that worked with this slot"),
        "the failing policy is replaced on the console: {}",
        b5.tail()
    );
    assert!(!b5.text.contains("restarting in"), "no restart: {}", b5.tail());
    assert_eq!(b5.boot_result().as_deref(), Some("policy-fell-back"), "{}", b5.tail());
    assert_eq!(b5.marker("nics").as_deref(), Some("0"), "{}", b5.tail());
    assert_eq!(b5.marker("dmi").as_deref(), Some("none"), "no DMI UUID: {}", b5.tail());
    assert!(
        b5.text.contains("no DMI UUID and no network interface"),
        "the warning is on the console: {}",
        b5.tail()
    );
    assert!(
        b5.tagged("SLATE-BOOT-WARNING")
            .any(|w| w.contains("no DMI UUID and no network interface")),
        "the agent keeps the warning to report it: {}",
        b5.tail()
    );
    let kept = b5.marker("machine-id").unwrap();
    assert_eq!(kept.len(), 32, "{}", b5.tail());
    assert_ne!(kept, with_nic);
    let b6 = vm.boot_with(false);
    assert_good_boot(&b6, "a", "1");
    assert_eq!(
        b6.marker("machine-id").as_deref(),
        Some(kept.as_str()),
        "stable across boots: {}",
        b6.tail()
    );
    assert!(
        b6.text.contains("no DMI UUID and no network interface"),
        "{}",
        b6.tail()
    );

    // The failing policy again, with no policy that worked to fall back
    // to: the boot spends its one try (boot_tries = 1) and restarts; the
    // next one does not restart into the same failure but boots in rescue
    // mode, says why on the console and tells the fleet. In rescue mode the
    // agent still works: it hears from the fleet that the group has no
    // policy (the administrator's fix), so the next boot is good again.
    {
        let part = StatePartition::mount(&vm.disk);
        std::fs::remove_file(part.agent_file("good-policy-a.toml")).unwrap();
        assert!(part.agent_file("state-policy.toml").is_file());
    }
    let b7 = vm.boot();
    assert!(b7.marker("slot").is_none(), "{}", b7.tail());
    assert!(
        b7.text.contains("failure 1 of 1 on slot a") && b7.text.contains("restarting in"),
        "{}",
        b7.tail()
    );
    let b8 = vm.boot();
    assert!(b8.text.contains("RESCUE MODE"), "{}", b8.tail());
    assert_eq!(b8.marker("slot").as_deref(), Some("a"), "{}", b8.tail());
    assert_eq!(b8.marker("ro").as_deref(), Some("yes"), "{}", b8.tail());
    assert_eq!(b8.boot_result().as_deref(), Some("rescue"), "{}", b8.tail());
    assert!(b8.done(), "{}", b8.tail());
    let fleet = crate::support::fleet_status(&lab.server.url, &lab.dir.join("admin.token"));
    assert!(
        fleet.contains("\"rescue\""),
        "the fleet hears of the rescue boot: {fleet}"
    );
    {
        let part = StatePartition::mount(&vm.disk);
        assert!(
            !part.agent_file("state-policy.toml").exists(),
            "the agent dropped the policy the fleet no longer gives"
        );
    }
    let b9 = vm.boot();
    assert_good_boot(&b9, "a", "1");
    assert_eq!(b9.boot_result().as_deref(), Some("good"), "{}", b9.tail());
    assert!(!b9.text.contains("RESCUE MODE"), "{}", b9.tail());
}
