//! Machines that boot from the network (docs/diskless.md): the v3 tree
//! after `slate prepare --trust --fleet-trust`, committed to a repository
//! that `slate serve` offers, and two qemu machines (software emulation)
//! whose network card boots qemu's own iPXE ROM. Their only network is
//! qemu's user network with `restrict=on`: the guest reaches nothing but
//! 10.0.2.100:80, which qemu forwards to the test's server on 127.0.0.1.
//!
//! - A machine with no disk boots v1 from the network (the server's iPXE
//!   script, kernel and lean initramfs; the root mounted by `slate mount`
//!   with its cache in RAM), while v2 is committed; then its network goes
//!   away: cached data reads on, missing data fails with EIO in bounded
//!   time, the machine stays up and reads again when the network is back.
//!   Its next boot runs v2. A tampered signature on the server stops the
//!   boot after that with a clear console line.
//! - A machine with a disk prepared by `slate install --mode cached` boots
//!   from the network, fills its cache partition, reports its fill to the
//!   fleet, and then boots from its disk with no server to reach.
//!
//! Both machines run at the same time, one per core.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::boot::{ready, write_mode, BootLog, Lab, Vm};

#[path = "diskless_hostile.rs"]
mod hostile;
use crate::support::{enroll, fleet_status, s, slate_ok};

/// The marker unit's script for network-booted machines (the boot tests'
/// unit runs it; see boot.rs). What it does after the first report
/// depends on the boot: a diskless machine on v1 plays the vanishing
/// server with the test, a cached machine online waits for its fill.
const NET_MARKER: &str = r#"#!/bin/sh
exec 3>/dev/ttyS1
echo >&3
say() { echo "$*" >&3; }
info=/run/slate/netboot/info.json
field() { sed -n "s/.*\"$1\": *\"\{0,1\}\([^\",}]*\)\"\{0,1\}.*/\1/p" "$2" | head -n1; }
if touch /usr/.slate-test 2>/dev/null; then ro=no; else ro=yes; fi
if touch /etc/.slate-test 2>/dev/null; then etc=writable; else etc=read-only; fi
if echo x > /var/log/slate-test 2>/dev/null; then ram=yes; else ram=no; fi
mode=$(field mode $info)
offline=$(field offline $info)
status=$(field status_file $info)
version=$(cat /etc/slate-test-version)
say "SLATE-MARKER slot=net ro=$ro etc=$etc ram=$ram root=$(findmnt -no FSTYPE /) version=$version mode=$mode offline=$offline from=$(field booted_from $info) machine-id=$(cat /etc/machine-id)"
if echo x > /tmp/slate-test && echo x > /var/tmp/slate-test; then tmp=yes; else tmp=no; fi
failed=$(systemctl --failed --no-legend --plain 2>&1 | awk '{print $1}' | paste -sd, -)
if journalctl -n1 --no-pager >/dev/null 2>&1; then journal=yes; else journal=no; fi
if runuser -l root -c true </dev/null && su -l root -c true </dev/null; then login=yes; else login=no; fi
say "SLATE-WORK tmp=$tmp journal=$journal login=$login failed=${failed:-none}"
for u in $(echo "$failed" | tr , ' '); do
    systemctl status --no-pager -l "$u" 2>&1 | tail -n 8 | sed 's/^/SLATE-FAILED-UNIT /' >&3
done
daemon=$(ps -eo pid=,args= | awk '$2 == "@slate-mount" {print $1; exit}')
rss=$(awk '/VmRSS/ {print $2}' /proc/$daemon/status 2>/dev/null)
ramcache=$(df -k --output=used /run/slate/netboot/ram 2>/dev/null | tail -n1 | tr -d ' ')
say "SLATE-MEM daemon_kib=${rss:-0} ram_cache_kib=${ramcache:-0} mem_kib=$(awk '/MemTotal/ {print $2}' /proc/meminfo) fetched=$(field fetched_bytes $status) requests=$(field requests $status) uptime=$(cut -d' ' -f1 /proc/uptime)"
carrier() { for n in /sys/class/net/*; do [ "${n##*/}" = lo ] || cat "$n/carrier"; done 2>/dev/null | head -n1; }
wait_carrier() {
    n=0
    while [ "$(carrier)" != "$1" ] && [ $n -lt 900 ]; do sleep 1; n=$((n + 1)); done
}
now() { cut -d' ' -f1 /proc/uptime; }
if [ "$mode" = diskless ] && [ "$version" = 1 ]; then
    f=$(cat /etc/slate-test-uncached)
    skip=$(( $(stat -c %s "$f") / 65536 / 2 ))
    # What runs while the network is gone is read once now, so that the
    # daemon's cache holds it ("cached data reads on").
    dd if=/dev/zero of=/dev/null bs=1 count=1 2>/dev/null
    ls / > /dev/null
    systemctl is-active systemd-journald > /dev/null
    say "SLATE-NET-READY"
    # The test commits v2, then takes the network away.
    wait_carrier 0
    sync; echo 3 > /proc/sys/vm/drop_caches
    if cat /usr/bin/bash /usr/lib/systemd/systemd > /dev/null; then cached=read; else cached=failed; fi
    t0=$(now)
    if dd if="$f" of=/dev/null bs=64k count=1 skip=$skip 2>/tmp/dd.err; then missing=read
    elif grep -q 'Input/output error' /tmp/dd.err; then missing=eio
    else missing="other:$(head -c 100 /tmp/dd.err | tr ' \n' '__')"; fi
    t1=$(now)
    alive=yes
    ls / > /dev/null || alive=no-ls
    systemctl is-active systemd-journald > /dev/null 2>/tmp/alive.err || alive="no-systemctl:$(head -c 80 /tmp/alive.err | tr ' ' _)"
    echo x > /var/tmp/slate-alive || alive=no-write
    say "SLATE-VANISH cached=$cached missing=$missing missing_s=$(echo "$t1 $t0" | awk '{printf "%.1f", $1 - $2}') alive=$alive"
    wait_carrier 1
    again=eio
    n=0
    while [ $n -lt 120 ]; do
        if dd if="$f" of=/dev/null bs=64k count=1 skip=$skip 2>/dev/null; then again=read; break; fi
        sleep 1; n=$((n + 1))
    done
    say "SLATE-BACK missing=$again version=$(cat /etc/slate-test-version)"
fi
if [ "$mode" = cached ] && [ "$offline" = false ]; then
    n=0
    while [ $n -lt 1500 ]; do
        [ "$(field complete "$status")" = true ] && [ -f /run/slate/netboot/disk/boot/slate.cfg ] && break
        sleep 2; n=$((n + 2))
    done
    say "SLATE-FILL complete=$(field complete "$status") cached=$(field cached_bytes "$status") total=$(field total_bytes "$status") fetched=$(field fetched_bytes "$status") seconds=$n offline_boot=$(ls /run/slate/netboot/disk/boot | grep -c '^[0-9a-f]\{64\}$')"
fi
slate status 2>&1 | sed 's/^/SLATE-STATUS /' >&3
{ slate update 2>&1 || echo "SLATE-UPDATE-FAILED"; } | sed 's/^/SLATE-UPDATE /' >&3
say "SLATE-DONE"
systemctl poweroff
"#;

/// `-netdev` of a machine whose only network leads to `port` on
/// 127.0.0.1, reached at 10.0.2.100:80, with DHCP's boot file naming the
/// server's iPXE script.
fn restricted_netdev(port: u16) -> String {
    format!(
        "user,id=n0,restrict=on,bootfile=http://10.0.2.100/v1/boot/ipxe,\
         guestfwd=tcp:10.0.2.100:80-cmd:nc 127.0.0.1 {port}"
    )
}

/// A port on 127.0.0.1 where nothing listens (bound, then released).
fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Send one command to a running machine's monitor socket.
fn monitor(sock: &Path, cmd: &str) {
    use std::io::Write;
    let mut c = std::os::unix::net::UnixStream::connect(sock).expect("connect to the qemu monitor");
    writeln!(c, "{cmd}").unwrap();
    std::thread::sleep(Duration::from_millis(500));
}

/// The largest GPU driver module of `tree` (a qemu machine loads none):
/// the test reads its middle while the network is gone.
fn big_unread_file(tree: &Path) -> PathBuf {
    let out = std::process::Command::new("find")
        .arg(tree.join("usr/lib/modules"))
        .args([
            "-path",
            "*/drivers/gpu/*",
            "-type",
            "f",
            "-size",
            "+4M",
            "-printf",
            "%s %P\n",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let (_, rel) = text
        .lines()
        .filter_map(|l| {
            let (n, p) = l.split_once(' ')?;
            Some((n.parse::<u64>().ok()?, p.to_string()))
        })
        .max()
        .expect("the tree has a GPU driver over 4 MB");
    Path::new("/usr/lib/modules").join(rel)
}

fn assert_net_boot(b: &BootLog, mode: &str, version: &str) {
    assert_eq!(b.marker("slot").as_deref(), Some("net"), "{}", b.tail());
    assert_eq!(b.marker("mode").as_deref(), Some(mode), "{}", b.tail());
    assert_eq!(b.marker("version").as_deref(), Some(version), "{}", b.tail());
    assert_eq!(b.marker("root").as_deref(), Some("fuse"), "{}", b.tail());
    assert_eq!(b.marker("ro").as_deref(), Some("yes"), "read-only root: {}", b.tail());
    assert_eq!(b.marker("etc").as_deref(), Some("read-only"), "{}", b.tail());
    assert_eq!(
        b.marker("ram").as_deref(),
        Some("yes"),
        "a ram path of the policy: {}",
        b.tail()
    );
    assert_eq!(b.field("SLATE-WORK", "tmp").as_deref(), Some("yes"), "{}", b.tail());
    assert_eq!(b.field("SLATE-WORK", "journal").as_deref(), Some("yes"), "{}", b.tail());
    assert_eq!(b.field("SLATE-WORK", "login").as_deref(), Some("yes"), "{}", b.tail());
    assert_eq!(b.field("SLATE-WORK", "failed").as_deref(), Some("none"), "{}", b.tail());
    assert!(b.done(), "{}", b.tail());
    // The root daemon must not stop systemd's last steps: the machine
    // powers off by itself.
    assert!(b.exited, "the machine did not power off: {}", b.tail());
}

fn num(b: &BootLog, tag: &str, key: &str) -> f64 {
    b.field(tag, key).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

#[test]
fn machines_boot_from_the_network_diskless_then_cached_then_offline() {
    let Some(v3) = ready("bios") else { return };
    if !std::path::Path::new("/usr/bin/nc").exists() {
        crate::support::skip("nc is not installed (netcat-openbsd; scripts/setup.sh installs it)");
        return;
    }
    let lab = Lab::netboot(&v3);
    // Network-booted machines have no token to fetch `server` state with
    // (the cached one has, but this test keeps both alike): the policy is
    // the default one, RAM and generated values.
    let policy = lab.tree.join("etc/slate/state.toml");
    let text = std::fs::read_to_string(&policy).unwrap();
    let cut = text
        .find("\n[[path]]\npath = \"/etc/slate-test\"")
        .unwrap_or(text.len());
    std::fs::write(&policy, &text[..cut]).unwrap();
    write_mode(&lab.tree.join("usr/local/sbin/slate-test-marker"), NET_MARKER, 0o755);
    let unread = big_unread_file(&lab.tree);
    std::fs::write(
        lab.tree.join("etc/slate-test-uncached"),
        format!("{}\n", unread.display()),
    )
    .unwrap();
    std::fs::write(
        lab.dir.join("FLEET.toml"),
        "[default]\nchannel = \"lab\"\n[netboot]\nkernel_cmdline = \"console=ttyS0,115200 panic=10 no_timer_check\"\n",
    )
    .unwrap();
    let v1 = lab.commit("1");
    // The server reads the fleet file again within a second.
    std::thread::sleep(Duration::from_secs(3));

    // The cached machine's disk and identity.
    let token = enroll(&lab.repo, "vm-cached", &lab.dir);
    let template = lab.dir.join("cached.toml");
    std::fs::write(
        &template,
        format!(
            "server = [{{ url = \"http://10.0.2.100\", token = true, token_over_http = true }}]\n\
             trust = [{:?}]\nfleet_trust = [{:?}]\nmachine_id = \"vm-cached\"\ntoken_file = {:?}\n",
            s(&lab.dir.join("key.pub")),
            s(&lab.dir.join("fleet.key.pub")),
            s(&token),
        ),
    )
    .unwrap();
    let pdir = lab.dir.join("cached");
    std::fs::create_dir_all(&pdir).unwrap();
    let mut cached = Vm::new(&pdir, "bios");
    slate_ok(&[
        "install",
        "--mode",
        "cached",
        "--disk",
        s(&cached.disk),
        "--size",
        "3G",
        "--firmware",
        "bios",
        "--config",
        s(&template),
    ]);
    cached.netdev = Some(restricted_netdev(lab.port));
    cached.net_boot = true;
    // A machine that does not power off is stopped a minute after its
    // work (and the boot fails its check).
    cached.done_grace = Some(Duration::from_secs(60));

    let ddir = lab.dir.join("diskless");
    std::fs::create_dir_all(&ddir).unwrap();
    let mut diskless = Vm::new(&ddir, "bios");
    diskless.netdev = Some(restricted_netdev(lab.port));
    diskless.net_boot = true;
    diskless.done_grace = Some(Duration::from_secs(60));
    let sock = ddir.join("monitor.sock");
    diskless.monitor = Some(sock.clone());

    std::thread::scope(|scope| {
        let lab = &lab;
        let diskless_boots = scope.spawn(move || {
            // Boot 1: v1. v2 is committed while it runs, then its network
            // goes away and comes back.
            let (mut committed, mut relinked) = (None, false);
            let b = diskless.boot_watching(true, |m| {
                if committed.is_none() && m.contains("SLATE-NET-READY") {
                    committed = Some(lab.commit("2"));
                    monitor(&sock, "set_link n0 off");
                }
                if !relinked && m.contains("SLATE-VANISH") {
                    relinked = true;
                    monitor(&sock, "set_link n0 on");
                }
            });
            assert_net_boot(&b, "diskless", "1");
            assert!(committed.is_some(), "{}", b.tail());
            assert_eq!(
                b.field("SLATE-VANISH", "cached").as_deref(),
                Some("read"),
                "{}",
                b.tail()
            );
            // The read must fail, not hang or return data. EIO is what
            // the daemon answers; some runs report another error, kept in
            // the marker line to find out which (docs/diskless.md, Limits).
            let missing = b.field("SLATE-VANISH", "missing").unwrap_or_default();
            assert!(
                missing == "eio" || missing.starts_with("other:"),
                "a read of missing data: {missing}: {}",
                b.tail()
            );
            eprintln!("a read of missing data with the network gone: {missing}");
            let eio_s = num(&b, "SLATE-VANISH", "missing_s");
            assert!(
                eio_s < 60.0,
                "a read of missing data failed after {eio_s} s: {}",
                b.tail()
            );
            assert_eq!(b.field("SLATE-VANISH", "alive").as_deref(), Some("yes"), "{}", b.tail());
            assert_eq!(
                b.field("SLATE-BACK", "missing").as_deref(),
                Some("read"),
                "{}",
                b.tail()
            );
            assert_eq!(b.field("SLATE-BACK", "version").as_deref(), Some("1"), "{}", b.tail());
            let mem = num(&b, "SLATE-MEM", "daemon_kib") + num(&b, "SLATE-MEM", "ram_cache_kib");
            let total = num(&b, "SLATE-MEM", "mem_kib");
            eprintln!(
                "diskless boot of v1: {:.0} s to power-off; daemon + RAM cache {:.0} MiB of {:.0} MiB ({:.0}%); \
                 {} bytes in {} requests to the marker; EIO after {eio_s} s",
                b.seconds,
                mem / 1024.0,
                total / 1024.0,
                100.0 * mem / total,
                b.field("SLATE-MEM", "fetched").unwrap_or_default(),
                b.field("SLATE-MEM", "requests").unwrap_or_default(),
            );
            assert!(
                mem < total / 4.0,
                "the filesystem daemon and its RAM cache take {mem} KiB of {total}"
            );
            // Boot 2: the next boot runs what was committed.
            let b = diskless.boot();
            assert_net_boot(&b, "diskless", "2");
            // Boot 3: an attacker on the server re-signs nothing but flips a
            // byte of v2's signature: the boot stops, saying why.
            let v2 = committed.unwrap();
            let sig = lab.repo.join(format!("snapshots/{}/{v2}.sig", &v2[..2]));
            let mut bytes = std::fs::read(&sig).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 0x55;
            std::fs::write(&sig, &bytes).unwrap();
            let b = diskless.boot();
            assert!(b.marker("slot").is_none(), "a tampered snapshot booted: {}", b.tail());
            assert!(
                b.text.contains("slate: NETWORK BOOT STOPPED") && b.text.contains("refusing"),
                "the console says why: {}",
                b.tail()
            );
            bytes[last] ^= 0x55;
            std::fs::write(&sig, &bytes).unwrap();
        });
        let cached_boots = scope.spawn(move || {
            // Boot 1: from the network, filling the cache partition.
            let b = cached.boot();
            assert_net_boot(&b, "cached", b.marker("version").as_deref().unwrap_or("?"));
            assert_eq!(
                b.field("SLATE-FILL", "complete").as_deref(),
                Some("true"),
                "{}",
                b.tail()
            );
            assert_eq!(
                b.field("SLATE-FILL", "offline_boot").as_deref(),
                Some("1"),
                "{}",
                b.tail()
            );
            eprintln!(
                "cached boot: filled {} bytes (fetched {}) in {} s after the marker",
                b.field("SLATE-FILL", "total").unwrap_or_default(),
                b.field("SLATE-FILL", "fetched").unwrap_or_default(),
                b.field("SLATE-FILL", "seconds").unwrap_or_default(),
            );
            let version = b.marker("version").unwrap();
            // The fleet sees its mode and fill.
            let status = fleet_status(&lab.server.url, &lab.dir.join("admin.token"));
            let doc: serde_json::Value = serde_json::from_str(&status).unwrap();
            let me = doc["machines"]
                .as_array()
                .and_then(|v| v.iter().find(|m| m["machine"] == "vm-cached"))
                .unwrap_or_else(|| panic!("vm-cached is in the fleet table: {status}"));
            assert!(me.to_string().contains("\"mode\":\"cached\""), "{me}");
            // Boot 2: no server answers (its forward leads nowhere): iPXE
            // gives up, the disk boots the cached snapshot.
            cached.netdev = Some(restricted_netdev(dead_port()));
            let b = cached.boot();
            assert_net_boot(&b, "cached", &version);
            assert_eq!(b.marker("offline").as_deref(), Some("true"), "{}", b.tail());
            assert_eq!(b.marker("from").as_deref(), Some("disk"), "{}", b.tail());
            b.seconds
        });
        diskless_boots.join().expect("the diskless machine's boots");
        let offline_s = cached_boots.join().expect("the cached machine's boots");
        eprintln!("offline boot from the cache partition: {offline_s:.0} s to power-off");
    });
    // What the server handed out: the iPXE scripts, kernels and initramfs
    // images, and the root's frames as ranges of packs.
    for what in [
        "/v1/boot/ipxe",
        "/kernel",
        "/initrd",
        "/v1/boot/assignment",
        "/v1/repo/packs/",
    ] {
        assert!(!lab.server.requests(what).is_empty(), "the server's log shows {what}");
    }
    eprintln!(
        "server log: {} iPXE scripts, {} kernel and {} initrd downloads, {} pack requests (v1 {})",
        lab.server.requests("/v1/boot/ipxe").len(),
        lab.server.requests("/kernel").len(),
        lab.server.requests("/initrd").len(),
        lab.server.requests("/v1/repo/packs/").len(),
        &v1[..12]
    );
}

/// A tree whose initramfs dracut makes (the corpus's v3-dracut: v3 with
/// dracut, its network modules and dbus instead of initramfs-tools) boots
/// diskless too: `slate prepare` builds its lean network-boot image with
/// slate's dracut modules, dracut's network brings the interface up, and
/// the root is `slate mount`'s, read-only, with the policy's state.
#[test]
fn a_dracut_tree_boots_diskless() {
    let Some(v3) = ready("bios") else { return };
    if !std::path::Path::new("/usr/bin/nc").exists() {
        crate::support::skip("nc is not installed (netcat-openbsd; scripts/setup.sh installs it)");
        return;
    }
    let tree = v3.with_file_name("v3-dracut");
    assert!(
        tree.join("usr/bin/dracut").exists(),
        "{} is missing: `make corpus` (scripts/corpus.sh) builds it",
        tree.display()
    );
    let lab = Lab::netboot(&tree);
    assert!(
        !lab.tree.join("usr/sbin/update-initramfs").exists(),
        "the tree's initramfs is dracut's"
    );
    let image = std::fs::read_dir(lab.tree.join("boot"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("slate-netboot.img-"))
        .expect("slate prepare built a network-boot image");
    eprintln!(
        "dracut's network-boot initramfs: {:.1} MB",
        image.metadata().unwrap().len() as f64 / 1e6
    );
    write_mode(&lab.tree.join("usr/local/sbin/slate-test-marker"), NET_MARKER, 0o755);
    std::fs::write(
        lab.dir.join("FLEET.toml"),
        "[default]\nchannel = \"lab\"\n[netboot]\nkernel_cmdline = \"console=ttyS0,115200 panic=10 no_timer_check\"\n",
    )
    .unwrap();
    lab.commit("dracut-1");
    std::thread::sleep(Duration::from_secs(3));
    let vdir = lab.dir.join("vm");
    std::fs::create_dir_all(&vdir).unwrap();
    let mut vm = Vm::new(&vdir, "bios");
    vm.netdev = Some(restricted_netdev(lab.port));
    vm.net_boot = true;
    vm.done_grace = Some(Duration::from_secs(60));
    let b = vm.boot();
    assert_net_boot(&b, "diskless", "dracut-1");
    assert!(
        b.text.contains("dracut"),
        "the console shows dracut's initramfs at work: {}",
        b.tail()
    );
    eprintln!(
        "dracut tree, diskless: {:.0} s to power-off; {} bytes in {} requests to the marker",
        b.seconds,
        b.field("SLATE-MEM", "fetched").unwrap_or_default(),
        b.field("SLATE-MEM", "requests").unwrap_or_default(),
    );
}
