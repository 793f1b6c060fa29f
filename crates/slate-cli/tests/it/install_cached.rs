//! `slate install --mode cached`: the disk of a network-booted machine,
//! laid out on a 2 GiB raw image for a BIOS and for UEFI, and looked at
//! from the host: the partitions (sgdisk), the cache filesystem (label,
//! directories, `config/` with its keys, token and rewritten paths,
//! GRUB's menu), GRUB's core image or EFI binary. When qemu is installed,
//! the image is also started: GRUB must find the cache partition and say
//! that it holds no snapshot yet, and once a `boot/slate.cfg` is there,
//! run it. Then what must be refused: a disk too small, a disk in use.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::boot::{have, partition_sectors, StatePartition};
use crate::support::{is_root, s, scratch, slate, slate_err, slate_ok, FleetKey};

/// Where the cache partition is mounted at boot (docs/netboot contract).
const BOOT_MOUNT: &str = "/run/slate/netboot/disk";

/// Everything the install needs on this machine, or why the test is skipped.
fn ready(firmware: &str) -> bool {
    if !is_root() {
        crate::support::skip("needs root (loop devices, mounts)");
        return false;
    }
    let mut need = vec!["sgdisk", "losetup", "mkfs.ext4", "grub-mkimage", "blkid"];
    let grub = match firmware {
        "bios" => "/usr/lib/grub/i386-pc/moddep.lst",
        _ => {
            need.extend(["mcopy", "mkfs.fat"]);
            "/usr/lib/grub/x86_64-efi/moddep.lst"
        }
    };
    for c in need {
        if !have(c) {
            crate::support::skip(&format!("{c} is not installed (scripts/setup.sh installs it)"));
            return false;
        }
    }
    if !Path::new(grub).exists() {
        crate::support::skip(&format!("{grub} is missing (grub-pc-bin, grub-efi-amd64-bin)"));
        return false;
    }
    if firmware == "bios" && !Path::new("/usr/lib/grub/i386-pc/grub-bios-setup").exists() && !have("grub-bios-setup") {
        crate::support::skip("grub-bios-setup is not installed (grub-pc-bin)");
        return false;
    }
    true
}

/// A template AGENT.toml with two release keys, a fleet key, a token and
/// an A/B layout's keys (which a cache disk drops).
struct Template {
    path: PathBuf,
    keys: Vec<PathBuf>,
    fleet: PathBuf,
}

fn template(dir: &Path) -> Template {
    let keys: Vec<PathBuf> = ["a", "b"]
        .iter()
        .map(|n| {
            let k = dir.join(format!("release-{n}.key"));
            slate_ok(&["keygen", "--out", s(&k)]);
            k.with_extension("key.pub")
        })
        .collect();
    let fleet = FleetKey::in_dir(dir);
    let token = dir.join("machine.token");
    std::fs::write(&token, "tok-0123456789\n").unwrap();
    let path = dir.join("template.toml");
    std::fs::write(
        &path,
        format!(
            "server = [\"http://10.0.2.2:8470\"]\ntrust = [{:?}, {:?}]\n{}token_file = {:?}\n\
             machine_id = \"cached-1\"\nstate_dir = \"/unused\"\nbootloader = \"grub\"\n\
             [slots]\na = \"/unused/a\"\nb = \"/unused/b\"\n[labels]\nroom = \"b12\"\n",
            s(&keys[0]),
            s(&keys[1]),
            fleet.agent_toml(),
            s(&token)
        ),
    )
    .unwrap();
    Template {
        path,
        keys,
        fleet: fleet.public,
    }
}

/// `sgdisk -i N` of the disk, as text.
fn sgdisk_info(disk: &Path, n: u32) -> String {
    let out = Command::new("sgdisk")
        .arg("-i")
        .arg(n.to_string())
        .arg(disk)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `blkid` of the filesystem in the partition named `name`: `KEY=value` lines.
fn blkid(disk: &Path, name: &str) -> String {
    let (first, last) = partition_sectors(disk, name).unwrap();
    let out = Command::new("blkid")
        .args(["-p", "-o", "export", "-O", &(first * 512).to_string()])
        .args(["-S", &((last - first + 1) * 512).to_string()])
        .arg(disk)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Install with `args` and return the JSON report.
fn install(disk: &Path, firmware: &str, config: Option<&Path>) -> serde_json::Value {
    let mut args = vec![
        "install",
        "--mode",
        "cached",
        "--disk",
        s(disk),
        "--size",
        "2G",
        "--firmware",
        firmware,
        "--json",
    ];
    if let Some(c) = config {
        args.extend(["--config", s(c)]);
    }
    let out = slate_ok(&args);
    serde_json::from_str(out.lines().last().expect("a report")).expect("a JSON report")
}

/// Look at a freshly installed cache disk: partitions, filesystem,
/// directories, configuration, GRUB's menu and modules.
fn check_disk(disk: &Path, firmware: &str, report: &serde_json::Value, t: Option<&Template>) {
    let first = if firmware == "bios" { "bios-boot" } else { "slate-esp" };
    // The report: the partitions and their sizes.
    assert_eq!(report["mode"], "cached");
    assert_eq!(report["firmware"], firmware);
    let parts = report["partitions"].as_array().unwrap();
    let names: Vec<&str> = parts.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, [first, "slate-cache"]);
    let first_bytes: u64 = if firmware == "bios" { 1 << 20 } else { 256 << 20 };
    assert_eq!(parts[0]["bytes"], first_bytes);
    assert_eq!(parts[1]["bytes"], (2048u64 << 20) - (2 << 20) - first_bytes);

    // The GPT as sgdisk reads it.
    let p1 = sgdisk_info(disk, 1);
    let p2 = sgdisk_info(disk, 2);
    assert!(p1.contains(&format!("Partition name: '{first}'")), "{p1}");
    let guid = if firmware == "bios" {
        "21686148-6449-6E6F-744E-656564454649"
    } else {
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    };
    assert!(p1.contains(guid), "{p1}");
    assert!(p1.contains("First sector: 2048 "), "{p1}");
    assert!(p2.contains("Partition name: 'slate-cache'"), "{p2}");
    assert!(
        p2.contains("0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
        "Linux filesystem: {p2}"
    );
    assert!(!sgdisk_info(disk, 3).contains("Partition name"), "two partitions only");

    // The cache filesystem: ext4, labelled, the UUID of the report.
    let fs = blkid(disk, "slate-cache");
    assert!(fs.contains("TYPE=ext4"), "{fs}");
    assert!(fs.contains("LABEL=slate-cache"), "{fs}");
    let uuid = report["filesystem_uuid"].as_str().unwrap();
    assert!(fs.contains(&format!("UUID={uuid}")), "{fs}");

    let part = StatePartition::named(disk, "slate-cache");
    let root = part.path();
    for d in ["cache", "store", "boot", "boot/grub", "config"] {
        assert!(root.join(d).is_dir(), "{d}/");
    }
    // GRUB's menu.
    let cfg = std::fs::read_to_string(root.join("boot/grub/grub.cfg")).unwrap();
    for line in [
        "serial --unit=0 --speed=115200",
        "terminal_input serial console",
        "terminal_output serial console",
        "if [ -f /boot/slate.cfg ]; then",
        "source /boot/slate.cfg",
        "sleep 10",
        "exit",
    ] {
        assert!(cfg.lines().any(|l| l.trim() == line), "grub.cfg lacks {line:?}:\n{cfg}");
    }
    assert!(cfg.contains(NO_SNAPSHOT), "{cfg}");
    assert!(!root.join("boot/slate.cfg").exists(), "no snapshot yet");
    // GRUB's modules, and its core image (BIOS) in the bios-boot partition.
    let platform = if firmware == "bios" { "i386-pc" } else { "x86_64-efi" };
    for m in ["normal.mod", "linux.mod", "ext2.mod", "sleep.mod", "command.lst"] {
        assert!(
            root.join("boot/grub").join(platform).join(m).is_file(),
            "{platform}/{m}"
        );
    }
    if firmware == "bios" {
        let core = std::fs::read(root.join("boot/grub/i386-pc/core.img")).unwrap();
        assert!(core.len() > 10_000);
        let mut raw = vec![0u8; (1 << 20) + 512];
        std::fs::File::open(disk).unwrap().read_exact(&mut raw).unwrap();
        // The boot sector's code, the partition table's signature, and
        // the core image where grub-bios-setup put it (the BIOS boot
        // partition at 1 MiB): its first sector is the core's loader,
        // whose block list at the end grub-bios-setup fills in.
        assert!(raw[..440].iter().any(|&b| b != 0), "boot code in the MBR");
        assert_eq!(&raw[510..512], &[0x55, 0xaa]);
        assert_eq!(&raw[1 << 20..(1 << 20) + 400], &core[..400], "core image in bios-boot");
    } else {
        let (first, _) = partition_sectors(disk, "slate-esp").unwrap();
        let efi = scratch();
        let out = efi.path().join("BOOTX64.EFI");
        let st = Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(format!("{}@@{}", s(disk), first * 512))
            .arg("::/EFI/BOOT/BOOTX64.EFI")
            .arg(&out)
            .status()
            .unwrap();
        assert!(st.success(), "BOOTX64.EFI on the ESP");
        let bin = std::fs::read(&out).unwrap();
        assert_eq!(&bin[..2], b"MZ", "a PE binary");
        // The embedded configuration finds the cache partition by its UUID.
        let needle = format!("--fs-uuid --set=root {uuid}");
        assert!(
            bin.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "the EFI image embeds {needle:?}"
        );
        assert!(fs_type(&blkid(disk, "slate-esp")) == "vfat");
    }

    // config/: the template with its keys and token, paths rewritten.
    let config = root.join("config");
    let Some(t) = t else {
        assert_eq!(
            std::fs::read_dir(&config).unwrap().count(),
            0,
            "no --config, no config/ files"
        );
        assert!(report["config_files"].as_array().unwrap().is_empty());
        return;
    };
    let agent: toml::Table = std::fs::read_to_string(config.join("agent.toml"))
        .unwrap()
        .parse()
        .expect("config/agent.toml is TOML");
    let at = |rel: &str| format!("{BOOT_MOUNT}/config/{rel}");
    let strings = |k: &str| -> Vec<String> {
        agent[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(strings("trust"), [at("keys/release-1.pub"), at("keys/release-2.pub")]);
    assert_eq!(strings("fleet_trust"), [at("keys/fleet-1.pub")]);
    assert_eq!(agent["token_file"].as_str(), Some(at("token").as_str()));
    assert_eq!(strings("server"), ["http://10.0.2.2:8470"]);
    assert_eq!(agent["machine_id"].as_str(), Some("cached-1"));
    assert_eq!(agent["labels"]["room"].as_str(), Some("b12"));
    for gone in ["slots", "state_dir", "bootloader"] {
        assert!(!agent.contains_key(gone), "{gone} is the A/B layout's");
    }
    for (rel, src) in [
        ("keys/release-1.pub", &t.keys[0]),
        ("keys/release-2.pub", &t.keys[1]),
        ("keys/fleet-1.pub", &t.fleet),
    ] {
        assert_eq!(
            std::fs::read(config.join(rel)).unwrap(),
            std::fs::read(src).unwrap(),
            "{rel}"
        );
    }
    let token = config.join("token");
    assert_eq!(std::fs::read_to_string(&token).unwrap(), "tok-0123456789\n");
    assert_eq!(
        std::fs::metadata(&token).unwrap().permissions().mode() & 0o777,
        0o600,
        "config/token is the machine's secret"
    );
    assert_eq!(
        std::fs::metadata(config.join("agent.toml"))
            .unwrap()
            .permissions()
            .mode()
            & 0o077,
        0
    );
    let files: Vec<&str> = report["config_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        files.contains(&"config/token") && files.contains(&"config/agent.toml"),
        "{files:?}"
    );
}

fn fs_type(blkid: &str) -> &str {
    blkid.lines().find_map(|l| l.strip_prefix("TYPE=")).unwrap_or_default()
}

/// What GRUB's menu says on a disk whose cache holds no snapshot yet.
const NO_SNAPSHOT: &str = "the machine must boot from the network first";

/// Start the disk under qemu until `done(console, firmware_log)`: the
/// console is ttyS0 (GRUB's serial console, and OVMF's), the firmware log
/// SeaBIOS's debug port. Returns whether it came, and the console; `None`
/// without qemu (or OVMF). The qemu process is killed in any case.
fn boot_until(dir: &Path, disk: &Path, firmware: &str, done: impl Fn(&str, &str) -> bool) -> Option<(bool, String)> {
    if !have("qemu-system-x86_64") || (firmware == "uefi" && !Path::new("/usr/share/OVMF/OVMF_CODE.fd").exists()) {
        crate::support::skip("qemu or OVMF is not installed");
        return None;
    }
    let log = dir.join(format!("console-{firmware}.log"));
    let debug = dir.join(format!("firmware-{firmware}.log"));
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&debug);
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-machine", "q35", "-nodefaults", "-accel", "tcg", "-m", "256"])
        .args(["-display", "none", "-monitor", "none", "-serial"])
        .arg(format!("file:{}", log.display()))
        .arg("-chardev")
        .arg(format!("file,id=fwlog,path={}", debug.display()))
        .args(["-device", "isa-debugcon,iobase=0x402,chardev=fwlog"])
        .arg("-drive")
        .arg(format!("file={},format=raw,if=none,id=d0", disk.display()))
        .args(["-device", "virtio-blk-pci,drive=d0"]);
    if firmware == "uefi" {
        let vars = dir.join("OVMF_VARS.fd");
        std::fs::copy("/usr/share/OVMF/OVMF_VARS.fd", &vars).unwrap();
        c.arg("-drive")
            .arg("if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd")
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,unit=1,file={}", vars.display()));
    }
    let started = Instant::now();
    let mut child = c.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("run qemu");
    let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    let found = loop {
        if done(&read(&log), &read(&debug)) {
            break true;
        }
        if started.elapsed() > Duration::from_secs(180) || child.try_wait().unwrap().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let _ = child.kill();
    let _ = child.wait();
    eprintln!(
        "{firmware}: {} after {:.1} s",
        if found { "done" } else { "NOT done" },
        started.elapsed().as_secs_f64()
    );
    Some((found, read(&log)))
}

/// Whether the firmware took the machine back after GRUB's `exit`: on a
/// BIOS, SeaBIOS's INT 18h handler ("boot failed": it tries the next boot
/// device); on UEFI, OVMF's boot manager loading its next option.
fn handed_back(firmware: &str, console: &str, firmware_log: &str) -> bool {
    let Some((_, after)) = console.split_once(NO_SNAPSHOT) else {
        return false;
    };
    match firmware {
        "bios" => firmware_log.contains("enter handle_18"),
        _ => after.contains("BdsDxe: loading Boot"),
    }
}

fn installs_and_boots_grub(firmware: &str) {
    if !ready(firmware) {
        return;
    }
    let t = scratch();
    let dir = t.path();
    let tmpl = template(dir);
    let disk = dir.join(format!("cached-{firmware}.img"));

    // What will be done is said before it is done.
    let out = slate(&[
        "install",
        "--mode",
        "cached",
        "--disk",
        s(&disk),
        "--size",
        "2G",
        "--firmware",
        firmware,
        "--config",
        s(&tmpl.path),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("everything on it is destroyed") && text.contains("slate-cache"),
        "{text}"
    );
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 2 << 30);

    // Again over the same disk, with the JSON report: an install replaces
    // whatever was there, a cache disk included.
    let report = install(&disk, firmware, Some(&tmpl.path));
    check_disk(&disk, firmware, &report, Some(&tmpl));

    // GRUB starts from the disk, finds the cache partition, says that it
    // holds no snapshot yet, and hands the machine back to the firmware.
    if let Some((ok, console)) = boot_until(dir, &disk, firmware, |c, f| handed_back(firmware, c, f)) {
        assert!(ok, "GRUB's menu did not run, or did not hand back:\n{console}");
        // Once the mount daemon wrote a menu, GRUB runs it.
        {
            let part = StatePartition::named(&disk, "slate-cache");
            std::fs::write(
                part.path().join("boot/slate.cfg"),
                "echo \"slate-test: the offline menu ran\"\n",
            )
            .unwrap();
        }
        let menu = "slate-test: the offline menu ran";
        let (ok, console) = boot_until(dir, &disk, firmware, |c, _| c.contains(menu)).unwrap();
        assert!(ok, "GRUB did not source boot/slate.cfg:\n{console}");
        assert!(!console.contains(NO_SNAPSHOT), "{console}");
    }

    // Without a template: no config/ files; a new filesystem.
    let again = install(&disk, firmware, None);
    assert_ne!(again["filesystem_uuid"], report["filesystem_uuid"]);
    check_disk(&disk, firmware, &again, None);
}

#[test]
fn cached_install_bios() {
    installs_and_boots_grub("bios");
}

#[test]
fn cached_install_uefi() {
    installs_and_boots_grub("uefi");
}

/// A mount that is undone when the guard goes, also on a failed assert.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn cached_install_refuses_small_and_busy_disks() {
    if !ready("bios") {
        return;
    }
    let t = scratch();
    let dir = t.path();

    // Too small: nothing is created, nothing is written.
    let new = dir.join("new.img");
    let err = slate_err(&["install", "--mode", "cached", "--disk", s(&new), "--size", "512M"]);
    assert!(err.contains("needs at least 1024 MiB"), "{err}");
    assert!(!new.exists(), "a refused install created the image");
    let small = dir.join("small.img");
    std::fs::File::create(&small)
        .unwrap()
        .set_len((1 << 30) - (1 << 20))
        .unwrap();
    let err = slate_err(&["install", "--mode", "cached", "--disk", s(&small)]);
    assert!(
        err.contains("holds 1023 MiB") && err.contains("needs at least 1024 MiB"),
        "{err}"
    );
    let mut head = vec![0u8; 1 << 20];
    std::fs::File::open(&small).unwrap().read_exact(&mut head).unwrap();
    assert!(head.iter().all(|&b| b == 0), "a refused install wrote to the disk");

    // In use: an image whose filesystem is mounted (through a loop device,
    // which is all the mount table names), and that loop device itself.
    let busy = dir.join("busy.img");
    std::fs::File::create(&busy).unwrap().set_len(2 << 30).unwrap();
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&busy)
        .status()
        .unwrap();
    assert!(st.success());
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let st = Command::new("mount")
        .arg("-o")
        .arg("loop")
        .arg(&busy)
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success(), "mount the busy image");
    let guard = Mounted(mnt.clone());
    std::fs::write(mnt.join("precious"), "data").unwrap();
    let err = slate_err(&["install", "--mode", "cached", "--disk", s(&busy)]);
    assert!(err.contains("is in use") && err.contains(s(&mnt)), "{err}");
    let out = Command::new("findmnt")
        .args(["-n", "-o", "SOURCE"])
        .arg(&mnt)
        .output()
        .unwrap();
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(dev.starts_with("/dev/loop"), "{dev}");
    let err = slate_err(&["install", "--mode", "cached", "--disk", &dev]);
    assert!(err.contains("is in use"), "{err}");
    assert_eq!(std::fs::read_to_string(mnt.join("precious")).unwrap(), "data");
    drop(guard);

    // Options of the A/B layout make no sense here.
    let err = slate_err(&["install", "--mode", "cached", "--disk", s(&busy), "--slot-size", "2G"]);
    assert!(err.contains("--mode ab"), "{err}");
    // And the A/B install still wants its template.
    let err = slate_err(&["install", "--disk", s(&busy)]);
    assert!(err.contains("--config"), "{err}");
}
