//! `slate prepare TREE`: make an OS tree slate-ready before it is
//! committed. It gets the running slate binary, its systemd units (update
//! timer, the watch service that updates as soon as the fleet assigns
//! (installed, not enabled), boot-ok after a good boot, state uploads, a boot timeout that restarts
//! a hung slot), a state policy when it has none, the
//! initramfs-tools hook or the dracut module that runs `slate state apply`
//! before switch_root, and a regenerated initramfs, built in a chroot of
//! the tree (in a private mount namespace, so nothing of it outlives the
//! run).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// Files put into the tree: (path in the tree, content, mode).
const FILES: &[(&str, &str, u32)] = &[
    (
        "etc/systemd/system/slate-update.service",
        include_str!("../../../dist/systemd/slate-update.service"),
        0o644,
    ),
    (
        "etc/systemd/system/slate-update.timer",
        include_str!("../../../dist/systemd/slate-update.timer"),
        0o644,
    ),
    (
        "etc/systemd/system/slate-watch.service",
        include_str!("../../../dist/systemd/slate-watch.service"),
        0o644,
    ),
    (
        "etc/systemd/system/slate-boot-ok.service",
        include_str!("../../../dist/systemd/slate-boot-ok.service"),
        0o644,
    ),
    (
        "etc/systemd/system/slate-state.service",
        include_str!("../../../dist/systemd/slate-state.service"),
        0o644,
    ),
    (
        "etc/systemd/system/slate-state-upload.service",
        include_str!("../../../dist/systemd/slate-state-upload.service"),
        0o644,
    ),
    (
        "etc/systemd/system/slate-state-upload.timer",
        include_str!("../../../dist/systemd/slate-state-upload.timer"),
        0o644,
    ),
    (
        "etc/systemd/system/multi-user.target.d/slate-boot-timeout.conf",
        include_str!("../../../dist/systemd/multi-user.target.d/slate-boot-timeout.conf"),
        0o644,
    ),
];

/// Units enabled: (wants directory, unit). `slate-watch.service` is put
/// in the tree but not enabled: it runs a pass as soon as it starts, at
/// boot, and a `slate update` started by hand or by a script then fails on
/// the agent's lock (only the timer's waits for it); enabling it is the
/// image maker's choice (docs/agent.md, "Told at once").
const ENABLED: &[(&str, &str)] = &[
    ("multi-user.target.wants", "slate-boot-ok.service"),
    ("timers.target.wants", "slate-update.timer"),
    ("timers.target.wants", "slate-state-upload.timer"),
];

const INITRAMFS_TOOLS: &[(&str, &str, u32)] = &[
    (
        "etc/initramfs-tools/hooks/slate",
        include_str!("../../../dist/initramfs-tools/hooks/slate"),
        0o755,
    ),
    (
        "etc/initramfs-tools/scripts/init-bottom/slate",
        include_str!("../../../dist/initramfs-tools/scripts/init-bottom/slate"),
        0o755,
    ),
    (
        "etc/initramfs-tools/scripts/slate-live",
        include_str!("../../../dist/initramfs-tools/scripts/slate-live"),
        0o644,
    ),
    (
        "etc/initramfs-tools/scripts/slate-net",
        include_str!("../../../dist/initramfs-tools/scripts/slate-net"),
        0o644,
    ),
];

/// Where the tree keeps the keys a network boot's initramfs checks with.
const NETBOOT_KEYS: &str = "etc/slate/netboot/keys";

/// The lean network-boot initramfs of kernel `k`: initramfs-tools' own
/// configuration with `MODULES=list` (only the network and disk drivers
/// and the filesystems slate's hook adds: `netboot` would bring every
/// network driver and filesystem, 36 MB against 44), and slate's hook told
/// to leave out what only a live medium needs. Built from a copy of the configuration
/// in the chroot's private /tmp.
fn netboot_initramfs_script(k: &str) -> String {
    format!(
        "chroot \"$T\" sh -ec 'rm -rf /tmp/slate-netboot-conf; cp -a /etc/initramfs-tools /tmp/slate-netboot-conf; \
         sed -i -e \"s/^MODULES=.*/MODULES=list/\" -e \"s/^COMPRESS=.*/COMPRESS=zstd/\" /tmp/slate-netboot-conf/initramfs.conf; \
         SLATE_INITRAMFS=netboot mkinitramfs -d /tmp/slate-netboot-conf -o /boot/slate-netboot.img-{k}.new {k}; \
         mv /boot/slate-netboot.img-{k}.new /boot/slate-netboot.img-{k}' >/dev/null"
    )
}

const DRACUT: &[(&str, &str, u32)] = &[
    (
        "usr/lib/dracut/modules.d/90slate/module-setup.sh",
        include_str!("../../../dist/dracut/90slate/module-setup.sh"),
        0o755,
    ),
    (
        "usr/lib/dracut/modules.d/90slate/slate-state.sh",
        include_str!("../../../dist/dracut/90slate/slate-state.sh"),
        0o755,
    ),
    (
        "usr/lib/dracut/modules.d/90slate-net/module-setup.sh",
        include_str!("../../../dist/dracut/90slate-net/module-setup.sh"),
        0o755,
    ),
    (
        "usr/lib/dracut/modules.d/90slate-net/parse-slate-net.sh",
        include_str!("../../../dist/dracut/90slate-net/parse-slate-net.sh"),
        0o755,
    ),
    (
        "usr/lib/dracut/modules.d/90slate-net/slateroot.sh",
        include_str!("../../../dist/dracut/90slate-net/slateroot.sh"),
        0o755,
    ),
];

/// The lean network-boot initramfs of kernel `k` on a dracut tree: only
/// the modules a network boot runs (dracut's shell init, its legacy
/// network with DHCP, slate's two modules), without systemd in the
/// initramfs, so that nothing stops the root daemon at switch_root (the
/// same init as initramfs-tools'). dracut's network module brings every
/// wired network driver.
fn netboot_dracut_script(k: &str) -> String {
    format!(
        "chroot \"$T\" sh -ec 'dracut --force --no-hostonly --no-hostonly-cmdline \
         -m \"base slate-net network-legacy\" --omit \"systemd systemd-initrd dracut-systemd plymouth\" \
         /boot/slate-netboot.img-{k}.new {k}; chmod 644 /boot/slate-netboot.img-{k}.new; \
         mv /boot/slate-netboot.img-{k}.new /boot/slate-netboot.img-{k}' >/dev/null"
    )
}

const DEFAULT_POLICY: &str = include_str!("../../../dist/state/default.toml");

/// Which initramfs generator a tree uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Initramfs {
    /// Debian's and Ubuntu's.
    InitramfsTools,
    /// Fedora's, openSUSE's, Arch's option.
    Dracut,
    /// Neither: the tree boots without slate's initramfs step.
    None,
}

/// Keys a network boot's initramfs checks the fleet's answer and the
/// snapshot with (`slate prepare --trust`, `--fleet-trust`).
#[derive(Debug, Clone, Default)]
pub struct NetbootKeys {
    /// Release keys' public files.
    pub release: Vec<PathBuf>,
    /// Fleet keys' public files.
    pub fleet: Vec<PathBuf>,
}

/// What `prepare` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PrepareReport {
    /// The tree.
    pub tree: PathBuf,
    /// Its initramfs generator.
    pub initramfs: Initramfs,
    /// Kernel versions whose initramfs was regenerated.
    pub kernels: Vec<String>,
    /// Whether a default state policy was written.
    pub wrote_policy: bool,
    /// Keys built into the initramfs for network boots.
    pub netboot_keys: usize,
    /// Sizes of the lean network-boot initramfs images, by kernel.
    pub netboot_initramfs: Vec<(String, u64)>,
}

fn write(tree: &Path, rel: &str, data: &[u8], mode: u32) -> Result<()> {
    let p = tree.join(rel);
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).map_err(|e| Error::Local(format!("cannot create {}: {e}", d.display())))?;
    }
    let tmp = p.with_extension("slate-new");
    std::fs::write(&tmp, data).map_err(|e| Error::Local(format!("cannot write {}: {e}", tmp.display())))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::Local(format!("cannot chmod {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, &p).map_err(|e| Error::Local(format!("cannot write {}: {e}", p.display())))
}

/// Kernel versions installed in the tree (`/lib/modules/*` with a
/// matching `/boot/vmlinuz-*`).
fn kernels(tree: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(tree.join("boot"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.strip_prefix("vmlinuz-").map(str::to_string))
                .filter(|k| tree.join("lib/modules").join(k).is_dir() || tree.join("usr/lib/modules").join(k).is_dir())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Run `script` with `sh -e` in a private mount namespace where the tree
/// has /proc, /sys and /dev, for a chroot into it.
fn in_chroot(tree: &Path, script: &str, what: &str) -> Result<()> {
    let full = format!(
        "mount -t proc proc \"$T/proc\"; mount -t sysfs sys \"$T/sys\"; mount --rbind /dev \"$T/dev\"; \
         mount -t tmpfs tmpfs \"$T/run\"; mount -t tmpfs tmpfs \"$T/tmp\"; {script}"
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-ec", &full])
        .env("T", tree)
        .output()
        .map_err(|e| Error::Local(format!("cannot run unshare for {what}: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.trim().lines().rev().take(3).collect();
        return Err(Error::Local(format!(
            "{what} failed in the tree: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        )));
    }
    Ok(())
}

/// The size of kernel `k`'s lean network-boot initramfs.
fn netboot_image_size(tree: &Path, k: &str) -> u64 {
    let img = tree.join("boot").join(format!("slate-netboot.img-{k}"));
    std::fs::metadata(&img).map(|m| m.len()).unwrap_or(0)
}

/// Put the network-boot keys into the tree (replacing those of an
/// earlier run), each checked to be a public key.
fn write_netboot_keys(tree: &Path, keys: &NetbootKeys) -> Result<usize> {
    let dir = tree.join(NETBOOT_KEYS);
    if keys.release.is_empty() {
        if !keys.fleet.is_empty() {
            return Err(Error::Config(
                "--fleet-trust needs --trust too: a network boot checks the snapshot with a release key".into(),
            ));
        }
        // Keys of an earlier run stay: prepare is run again after changes.
        return Ok(std::fs::read_dir(&dir).map_or(0, |rd| rd.count()));
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::Local(format!("cannot clear {}: {e}", dir.display())))?;
    }
    let mut n = 0;
    for (role, files) in [("release", &keys.release), ("fleet", &keys.fleet)] {
        for (i, f) in files.iter().enumerate() {
            let text =
                std::fs::read_to_string(f).map_err(|e| Error::Config(format!("cannot read {}: {e}", f.display())))?;
            slate_core::keys::PublicKey::from_text(&text)
                .map_err(|e| Error::Config(format!("{}: not a public key: {e}", f.display())))?;
            write(
                tree,
                &format!("{NETBOOT_KEYS}/{role}-{}.pub", i + 1),
                text.as_bytes(),
                0o644,
            )?;
            n += 1;
        }
    }
    Ok(n)
}

/// Prepare `tree`, installing `binary` as its /usr/bin/slate.
pub fn prepare(tree: &Path, binary: &Path) -> Result<PrepareReport> {
    prepare_with(tree, binary, &NetbootKeys::default())
}

/// Prepare `tree`, with keys for network boots (and then a lean
/// network-boot initramfs beside each kernel's own).
pub fn prepare_with(tree: &Path, binary: &Path, netboot: &NetbootKeys) -> Result<PrepareReport> {
    for d in ["etc", "usr/bin", "proc", "sys", "dev", "run", "tmp"] {
        if !tree.join(d).is_dir() {
            return Err(Error::Local(format!(
                "{} is not an OS tree (it has no /{d})",
                tree.display()
            )));
        }
    }
    let exe = std::fs::read(binary).map_err(|e| Error::Local(format!("cannot read {}: {e}", binary.display())))?;
    write(tree, "usr/bin/slate", &exe, 0o755)?;
    // Debug symbols would only swell every initramfs; best effort (strip
    // is binutils', present wherever slate is built).
    let _ = Command::new("strip")
        .arg("--strip-debug")
        .arg(tree.join("usr/bin/slate"))
        .status();
    for (rel, text, mode) in FILES {
        write(tree, rel, text.as_bytes(), *mode)?;
    }
    for (dir, unit) in ENABLED {
        let link = tree.join("etc/systemd/system").join(dir).join(unit);
        std::fs::create_dir_all(link.parent().expect("has a parent"))
            .map_err(|e| Error::Local(format!("cannot create {}: {e}", link.display())))?;
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("/etc/systemd/system/{unit}"), &link)
            .map_err(|e| Error::Local(format!("cannot enable {unit}: {e}")))?;
    }
    // systemd-tmpfiles makes /etc/mtab at the first boot of a writable
    // root; on a read-only one it cannot, and systemd-tmpfiles-setup
    // fails: the image gets it (debootstrap trees lack it).
    let mtab = tree.join("etc/mtab");
    if std::fs::symlink_metadata(&mtab).is_err() {
        std::os::unix::fs::symlink("../proc/self/mounts", &mtab)
            .map_err(|e| Error::Local(format!("cannot create {}: {e}", mtab.display())))?;
    }
    let netboot_keys = write_netboot_keys(tree, netboot)?;
    let policy = tree.join("etc/slate/state.toml");
    let wrote_policy = !policy.exists();
    if wrote_policy {
        write(tree, "etc/slate/state.toml", DEFAULT_POLICY.as_bytes(), 0o644)?;
    }
    let initramfs = if tree.join("usr/sbin/update-initramfs").exists() || tree.join("sbin/update-initramfs").exists() {
        Initramfs::InitramfsTools
    } else if tree.join("usr/bin/dracut").exists() || tree.join("usr/sbin/dracut").exists() {
        Initramfs::Dracut
    } else {
        Initramfs::None
    };
    let kernels = kernels(tree);
    let mut netboot_initramfs = Vec::new();
    match initramfs {
        Initramfs::InitramfsTools => {
            for (rel, text, mode) in INITRAMFS_TOOLS {
                write(tree, rel, text.as_bytes(), *mode)?;
            }
            for k in &kernels {
                let mode = if tree.join("boot").join(format!("initrd.img-{k}")).exists() {
                    "-u"
                } else {
                    "-c"
                };
                in_chroot(
                    tree,
                    &format!("chroot \"$T\" update-initramfs {mode} -k {k} >/dev/null"),
                    &format!("update-initramfs for {k}"),
                )?;
                if netboot_keys > 0 {
                    in_chroot(
                        tree,
                        &netboot_initramfs_script(k),
                        &format!("the network-boot initramfs for {k}"),
                    )?;
                    netboot_initramfs.push((k.clone(), netboot_image_size(tree, k)));
                }
            }
        }
        Initramfs::Dracut => {
            for (rel, text, mode) in DRACUT {
                write(tree, rel, text.as_bytes(), *mode)?;
            }
            for k in &kernels {
                in_chroot(
                    tree,
                    &format!("chroot \"$T\" dracut --force --no-hostonly --kver {k} >/dev/null"),
                    &format!("dracut for {k}"),
                )?;
                if netboot_keys > 0 {
                    in_chroot(
                        tree,
                        &netboot_dracut_script(k),
                        &format!("the network-boot initramfs for {k} (dracut-network installed?)"),
                    )?;
                    netboot_initramfs.push((k.clone(), netboot_image_size(tree, k)));
                }
            }
        }
        Initramfs::None => {}
    }
    Ok(PrepareReport {
        tree: tree.to_path_buf(),
        initramfs,
        kernels,
        wrote_policy,
        netboot_keys,
        netboot_initramfs,
    })
}
