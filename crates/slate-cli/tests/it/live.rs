//! Live images (`slate image iso`, docs/live.md): a small tree's image is
//! checked block by block and every kind of tampering is refused; the v3
//! Debian tree's image boots under qemu as a CD and as a USB stick, from
//! SeaBIOS and from OVMF, keeps a file in a `local` path across boots of a
//! stick, installs a blank disk with no network (which then boots), and a
//! copy with one flipped byte of its root stops at boot with a clear
//! message.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::boot::{assert_good_boot, assert_ordinary_work, ready, write_mode, BootLog, Lab, Vm};
use crate::support::{is_root, s, scratch, slate_err, slate_ok, FleetKey};

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// What making an image needs on the host, or why the test is skipped.
fn can_make_images() -> bool {
    if !is_root() {
        crate::support::skip("needs root (loop devices, dm-verity, mounts)");
        return false;
    }
    for c in ["mksquashfs", "grub-mkrescue", "xorriso", "sgdisk", "losetup"] {
        if !have(c) {
            crate::support::skip(&format!("{c} is not installed (scripts/setup.sh installs it)"));
            return false;
        }
    }
    true
}

/// Byte offset and size of a file inside an ISO image.
fn iso_extent(iso: &Path, path: &str) -> (u64, u64) {
    let out = Command::new("xorriso")
        .args(["-indev", s(iso), "-find", path, "-exec", "report_lba", "--"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("File data lba:") && l.contains(path))
        .unwrap_or_else(|| panic!("xorriso reports {path}: {text}"));
    let f: Vec<&str> = line["File data lba:".len()..].split(',').map(str::trim).collect();
    let lba: u64 = f[1].parse().unwrap();
    let size: u64 = f[3].parse().unwrap();
    (lba * 2048, size)
}

/// A copy of `iso` with the byte at `offset` changed (a hex digit stays
/// a hex digit, so that a text record still parses).
fn flipped(iso: &Path, offset: u64, to: &Path) {
    std::fs::copy(iso, to).unwrap();
    let mut data = std::fs::read(to).unwrap();
    let b = &mut data[offset as usize];
    *b = match *b {
        b'0' => b'1',
        b'1'..=b'9' | b'a'..=b'f' => b'0',
        other => other ^ 0x40,
    };
    std::fs::write(to, data).unwrap();
}

/// `slate image iso lab` of `repo` into `iso`, signed with `key`, then `more`.
fn iso_args<'a>(repo: &'a Path, iso: &'a Path, key: &'a Path, more: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["image", "iso", "lab", "--repo", s(repo), "-o", s(iso), "--sign", s(key)];
    args.extend_from_slice(more);
    args
}

#[test]
fn live_images_are_checked_block_by_block_and_tampering_is_refused() {
    if !can_make_images() {
        return;
    }
    let t = scratch();
    let d = t.path();
    // A small tree with a kernel and an initramfs (stand-ins: nothing boots
    // here) and the live step that `slate prepare` installs.
    let tree = d.join("tree");
    write_mode(
        &tree.join("boot/vmlinuz-6.1.0-9-amd64"),
        &"kernel ".repeat(30000),
        0o644,
    );
    write_mode(
        &tree.join("boot/initrd.img-6.1.0-9-amd64"),
        &"initrd ".repeat(30000),
        0o644,
    );
    write_mode(
        &tree.join("etc/initramfs-tools/scripts/slate-live"),
        "mountroot() { :; }\n",
        0o644,
    );
    let mut big = Vec::new();
    let mut x: u64 = 1;
    for _ in 0..(3 << 20) / 8 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        big.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::create_dir_all(tree.join("usr/lib")).unwrap();
    std::fs::write(tree.join("usr/lib/random.bin"), &big).unwrap();
    write_mode(&tree.join("etc/hostname"), "live\n", 0o644);
    let repo = d.join("repo");
    slate_ok(&["init", "--repo", s(&repo)]);
    slate_ok(&["keygen", "--out", s(&d.join("key"))]);
    slate_ok(&["keygen", "--out", s(&d.join("other"))]);
    slate_ok(&[
        "commit",
        "--repo",
        s(&repo),
        "--channel",
        "lab",
        "--sign",
        s(&d.join("key")),
        s(&tree),
    ]);
    let iso = d.join("live.iso");
    let policy = d.join("live.toml");
    std::fs::write(&policy, "version = 1\n[[path]]\npath = \"/tmp\"\nstate = \"ram\"\n").unwrap();

    // Only a key that signed the snapshot may vouch for its image.
    let other_key = d.join("other");
    let e = slate_err(&iso_args(&repo, &iso, &other_key, &[]));
    assert!(e.contains("carries no valid signature by key"), "{e}");
    assert!(!iso.exists());

    let other_pub = d.join("other.pub");
    let out = slate_ok(&iso_args(
        &repo,
        &iso,
        &d.join("key"),
        &[
            "--sign-check",
            s(&other_pub),
            "--policy",
            s(&policy),
            "--persistence",
            "64M",
            "--json",
        ],
    ));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        report["bytes"].as_u64().unwrap(),
        std::fs::metadata(&iso).unwrap().len()
    );
    assert_eq!(report["keys"].as_array().unwrap().len(), 2);
    assert!(report["persistence_bytes"].as_u64().unwrap() >= 64 << 20, "{report}");
    let snapshot = report["snapshot"].as_str().unwrap().to_string();
    assert_eq!(
        slate_ok(&["log", "--repo", s(&repo), "lab"])
            .matches(&snapshot[..12])
            .count(),
        1
    );
    let gpt =
        String::from_utf8_lossy(&Command::new("sgdisk").arg("-p").arg(&iso).output().unwrap().stdout).into_owned();
    assert!(gpt.contains("slate-persist"), "{gpt}");

    // The whole image checks out, and says what it holds.
    let key_pub = d.join("key.pub");
    let good: serde_json::Value = serde_json::from_str(&slate_ok(&[
        "image",
        "verify",
        s(&iso),
        "--sign-check",
        s(&key_pub),
        "--json",
    ]))
    .unwrap();
    assert_eq!(good["snapshot"].as_str(), Some(snapshot.as_str()));
    assert!(good["root_bytes"].as_u64().unwrap() >= 3 << 20, "{good}");
    // A key the record is not signed by is no help.
    let e = slate_err(&["image", "verify", s(&iso), "--sign-check", s(&d.join("other.pub"))]);
    assert!(e.contains("no valid signature by a key"), "{e}");

    // One flipped byte anywhere in the root image: found, with its block;
    // one in its hash tree (the last bytes), found too.
    let (root_at, root_len) = iso_extent(&iso, "/slate/root.img");
    for (at, want) in [
        (
            root_at + 10,
            "block 0 of its root image does not match the signed root hash",
        ),
        (root_at + 4096 * 300 + 7, "block 300 of its root image does not match"),
        (root_at + root_len - 100, "the hash tree of its root image is damaged"),
    ] {
        let bad = d.join("flipped.iso");
        flipped(&iso, at, &bad);
        let e = slate_err(&["image", "verify", s(&bad), "--sign-check", s(&key_pub)]);
        assert!(e.contains(want), "flip at {} of the root image: {e}", at - root_at);
        std::fs::remove_file(&bad).unwrap();
    }
    // An altered record (another root hash), kernel, initramfs or policy.
    let data = std::fs::read(&iso).unwrap();
    let rec_at = data.windows(14).position(|w| w == b"slate-live-v1\n").unwrap() as u64;
    let rec = String::from_utf8_lossy(&data[rec_at as usize..rec_at as usize + 400]).into_owned();
    let hash_at = rec_at + (rec.find("root-hash ").unwrap() + "root-hash ".len()) as u64;
    let (kernel_at, _) = iso_extent(&iso, "/slate/vmlinuz");
    let (initrd_at, _) = iso_extent(&iso, "/slate/initrd.img");
    let (policy_at, _) = iso_extent(&iso, "/slate/state.toml");
    for (what, at, want) in [
        ("record", hash_at, "no valid signature"),
        ("kernel", kernel_at + 5, "not the snapshot's own"),
        ("initramfs", initrd_at + 5, "not the snapshot's own"),
        ("policy", policy_at + 2, "state policy does not match"),
    ] {
        let bad = d.join("bad.iso");
        flipped(&iso, at, &bad);
        let e = slate_err(&["image", "verify", s(&bad), "--sign-check", s(&key_pub)]);
        assert!(e.contains(want), "altered {what}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "one clear line: {e}");
    }
    // The image carries its snapshot to a repository with no network:
    // stored whole, checked chunk by chunk, the channel's head if newer.
    let repo2 = d.join("repo2");
    let e = slate_err(&[
        "pull",
        "--from-image",
        s(&iso),
        "--trust",
        s(&d.join("other.pub")),
        "--repo",
        s(&repo2),
        "lab",
    ]);
    assert!(e.contains("no valid signature"), "{e}");
    let bad = d.join("bad.iso");
    flipped(&iso, root_at + 4096 * 300 + 7, &bad);
    let e = slate_err(&[
        "pull",
        "--from-image",
        s(&bad),
        "--trust",
        s(&key_pub),
        "--repo",
        s(&repo2),
        "lab",
    ]);
    assert!(
        e.contains("does not match the manifest") || e.contains("does not mount"),
        "{e}"
    );
    let log = crate::support::slate(&["log", "--repo", s(&repo2), "lab"]);
    assert!(
        !String::from_utf8_lossy(&log.stdout).contains(&snapshot[..12]),
        "nothing stored"
    );
    let out = crate::support::slate(&[
        "pull",
        "--from-image",
        s(&iso),
        "--trust",
        s(&key_pub),
        "--repo",
        s(&repo2),
        "lab",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("it is the head of channel lab"));
    slate_ok(&["verify", "--repo", s(&repo2)]);
    let copy = d.join("copy");
    slate_ok(&["checkout", "--repo", s(&repo2), "lab", s(&copy)]);
    assert_eq!(std::fs::read(copy.join("usr/lib/random.bin")).unwrap(), big);
    assert_eq!(
        std::fs::read(copy.join("boot/vmlinuz-6.1.0-9-amd64")).unwrap(),
        std::fs::read(tree.join("boot/vmlinuz-6.1.0-9-amd64")).unwrap()
    );
    assert!(slate_ok(&["log", "--repo", s(&repo2), "lab"]).contains(&snapshot[..12]));

    // Nothing is left set up on the host.
    let loops = String::from_utf8_lossy(&Command::new("losetup").arg("-a").output().unwrap().stdout).into_owned();
    assert!(!loops.contains(s(d)), "{loops}");
}

/// The AGENT.toml a technician's live system installs a blank disk with:
/// the fleet's servers as the installed machine will reach them, the
/// release and fleet keys and the machine's token, all in the tree under
/// /etc/slate-test-install (the test's stand-in for a template the
/// technician brings).
fn install_template(lab: &Lab) {
    let dir = lab.tree.join("etc/slate-test-install");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(lab.dir.join("key.pub"), dir.join("key.pub")).unwrap();
    std::fs::copy(FleetKey::in_dir(&lab.dir).public, dir.join("fleet.pub")).unwrap();
    std::fs::copy(lab.dir.join("token"), dir.join("token")).unwrap();
    write_mode(
        &dir.join("agent.toml"),
        &format!(
            "server = [{{ url = \"http://10.0.2.2:{}\", token = true, token_over_http = true }}]\n\
             trust = [\"/etc/slate-test-install/key.pub\"]\nfleet_trust = [\"/etc/slate-test-install/fleet.pub\"]\n\
             state_dir = \"/unused\"\nmachine_id = \"vm1\"\ntoken_file = \"/etc/slate-test-install/token\"\n\
             boot_tries = 1\ntimeout_secs = 5\nkernel_cmdline = \"console=ttyS0,115200 ip=dhcp no_timer_check\"\n\
             [slots]\na = \"/unused/a\"\nb = \"/unused/b\"\n",
            lab.port
        ),
        0o600,
    );
    // The installer's tools the v3 tree lacks (a snapshot meant for
    // offline installs carries gdisk and grub-pc-bin): the host's, which
    // is the same Debian release.
    for (from, to) in [
        ("/usr/sbin/sgdisk", "usr/sbin/sgdisk"),
        ("/usr/bin/grub-mkimage", "usr/bin/grub-mkimage"),
    ] {
        std::fs::create_dir_all(lab.tree.join(to).parent().unwrap()).unwrap();
        std::fs::copy(from, lab.tree.join(to)).unwrap();
    }
    let popt = std::fs::canonicalize("/lib/x86_64-linux-gnu/libpopt.so.0").unwrap();
    std::fs::copy(&popt, lab.tree.join("usr/lib/x86_64-linux-gnu/libpopt.so.0")).unwrap();
    let st = Command::new("cp")
        .args(["-a", "/usr/lib/grub"])
        .arg(lab.tree.join("usr/lib/"))
        .status()
        .unwrap();
    assert!(st.success());
}

/// The policy the live image boots with: the tree's, less its `server`
/// path (a live system has no agent to fetch it), plus a `local` path
/// that a stick keeps across boots.
fn live_policy(lab: &Lab) -> PathBuf {
    let text = std::fs::read_to_string(lab.tree.join("etc/slate/state.toml")).unwrap();
    let text = text.replace("\n[[path]]\npath = \"/etc/slate-test\"\nstate = \"server\"\n", "");
    assert!(!text.contains("\"server\""), "{text}");
    let p = lab.dir.join("live-policy.toml");
    std::fs::write(
        &p,
        format!("{text}\n[[path]]\npath = \"/var/lib/slate-test-local\"\nstate = \"local\"\n"),
    )
    .unwrap();
    p
}

/// A live boot that reached the marker: read-only root from the verified
/// medium, RAM paths writable, ordinary work fine.
fn assert_live_boot(b: &BootLog) {
    assert_eq!(b.marker("slot").as_deref(), Some("live"), "{}", b.tail());
    assert_eq!(b.marker("ro").as_deref(), Some("yes"), "{}", b.tail());
    assert_eq!(b.marker("etc").as_deref(), Some("read-only"), "{}", b.tail());
    assert_eq!(b.marker("ram").as_deref(), Some("yes"), "{}", b.tail());
    assert_eq!(
        b.field("SLATE-LIVE", "root").as_deref(),
        Some("/dev/mapper/slate-live"),
        "{}",
        b.tail()
    );
    assert!(
        b.text.contains("every block checked against it as it is read"),
        "the initramfs says what it checked: {}",
        b.tail()
    );
    assert_ordinary_work(b);
    assert!(b.done(), "{}", b.tail());
}

fn cd(iso: &Path) -> Vec<String> {
    vec![
        "-drive".into(),
        format!(
            "file={},format=raw,if=none,id=cd0,media=cdrom,readonly=on",
            iso.display()
        ),
        "-device".into(),
        "ide-cd,drive=cd0,bus=ide.0,bootindex=0".into(),
    ]
}

fn usb(img: &Path) -> Vec<String> {
    vec![
        "-device".into(),
        "qemu-xhci,id=xhci".into(),
        "-drive".into(),
        format!("file={},format=raw,if=none,id=stick", img.display()),
        "-device".into(),
        "usb-storage,bus=xhci.0,drive=stick,bootindex=0".into(),
    ]
}

#[test]
fn live_iso_boots_as_cd_and_stick_on_bios_and_uefi_keeps_local_state_and_installs_offline() {
    let Some(v3) = ready("bios") else { return };
    if ready("uefi").is_none() || !can_make_images() {
        return;
    }
    let lab = Lab::new(&v3);
    install_template(&lab);
    lab.commit("1");
    let iso = lab.dir.join("live.iso");
    let started = std::time::Instant::now();
    let (key, policy) = (lab.dir.join("key"), live_policy(&lab));
    let out = slate_ok(&iso_args(
        &lab.repo,
        &iso,
        &key,
        &[
            "--policy",
            s(&policy),
            "--persistence",
            "256M",
            "--kernel-cmdline",
            "console=ttyS0,115200 no_timer_check panic=5",
        ],
    ));
    eprintln!("slate image iso: {:.1} s: {out}", started.elapsed().as_secs_f64());
    let (root_at, _) = iso_extent(&iso, "/slate/root.img");

    std::thread::scope(|scope| {
        // A stick with persistence: BIOS, then UEFI; then a CD whose root
        // image has one byte flipped.
        let stick_boots = scope.spawn(|| {
            let stick = lab.dir.join("stick.img");
            std::fs::copy(&iso, &stick).unwrap();
            let mut vm = Vm::new(&lab.dir, "uefi");
            vm.disk = lab.dir.join("no-disk");
            vm.name = Some(lab.dir.join("stick-uefi"));
            vm.extra = usb(&stick);
            let mut bios = Vm::new(&lab.dir, "bios");
            bios.disk = lab.dir.join("no-disk");
            bios.name = Some(lab.dir.join("stick-bios"));
            bios.extra = usb(&stick);
            let b1 = bios.boot_with(false);
            assert_live_boot(&b1);
            assert_eq!(b1.field("SLATE-LIVE", "boots").as_deref(), Some("1"), "{}", b1.tail());
            let kept = b1.field("SLATE-LIVE", "local").unwrap_or_default();
            assert!(
                kept.starts_with("/dev/sd"),
                "the local path is on the stick: {}",
                b1.tail()
            );
            let b2 = vm.boot_with(false);
            assert_live_boot(&b2);
            assert_eq!(
                b2.field("SLATE-LIVE", "boots").as_deref(),
                Some("2"),
                "the stick kept its local path: {}",
                b2.tail()
            );

            let bad = lab.dir.join("flipped.iso");
            flipped(&iso, root_at + 100, &bad);
            let mut cd_bios = Vm::new(&lab.dir, "bios");
            cd_bios.disk = lab.dir.join("no-disk");
            cd_bios.name = Some(lab.dir.join("flipped"));
            cd_bios.extra = cd(&bad);
            let b3 = cd_bios.boot_with(false);
            assert!(b3.marker("slot").is_none(), "{}", b3.tail());
            assert!(
                b3.text.contains("LIVE BOOT STOPPED") && b3.text.contains("differs from what key"),
                "a flipped byte stops the boot, saying why: {}",
                b3.tail()
            );
            assert!(b3.text.contains("restarting in 5 seconds"), "{}", b3.tail());
        });
        // A CD and a blank disk, no network: the live system installs the
        // disk, which then boots from SeaBIOS; then the CD from OVMF, with
        // nothing kept (a CD has no persistence partition).
        let cd_boots = scope.spawn(|| {
            let mut vm = Vm::new(&lab.dir, "bios");
            vm.disk = lab.dir.join("installed.img");
            let f = std::fs::File::create(&vm.disk).unwrap();
            f.set_len(6 << 30).unwrap();
            drop(f);
            vm.extra = cd(&iso);
            // Writing a whole tree under software emulation takes a while.
            vm.timeout = crate::boot::BOOT_TIMEOUT * 2;
            let b1 = vm.boot_with(false);
            assert_live_boot(&b1);
            assert_eq!(b1.marker("nics").as_deref(), Some("0"));
            assert!(
                b1.markers.contains("SLATE-INSTALL ok"),
                "offline install: {}",
                b1.tail()
            );
            vm.extra.clear();
            vm.timeout = crate::boot::BOOT_TIMEOUT;
            let b2 = vm.boot();
            assert_good_boot(&b2, "a", "1");

            let mut cd_uefi = Vm::new(&lab.dir, "uefi");
            // A disk that is not the medium's, with a filesystem labelled
            // slate-persist: never used for the live system's state.
            cd_uefi.disk = lab.dir.join("other-disk.img");
            let f = std::fs::File::create(&cd_uefi.disk).unwrap();
            f.set_len(128 << 20).unwrap();
            drop(f);
            let st = Command::new("mkfs.ext4")
                .args(["-q", "-F", "-L", "slate-persist"])
                .arg(&cd_uefi.disk)
                .status()
                .unwrap();
            assert!(st.success());
            cd_uefi.name = Some(lab.dir.join("cd-uefi"));
            cd_uefi.extra = cd(&iso);
            let b3 = cd_uefi.boot_with(false);
            assert_live_boot(&b3);
            assert_eq!(b3.field("SLATE-LIVE", "boots").as_deref(), Some("1"), "{}", b3.tail());
            assert_eq!(
                b3.field("SLATE-LIVE", "local").as_deref(),
                Some("slate-state"),
                "in RAM, not on the other disk's slate-persist: {}",
                b3.tail()
            );
        });
        let a = stick_boots.join();
        let b = cd_boots.join();
        if let Err(e) = a {
            std::panic::resume_unwind(e);
        }
        if let Err(e) = b {
            std::panic::resume_unwind(e);
        }
    });
}
