//! `slate install`: lay out a new machine's disk and put its assigned
//! snapshot in slot A.
//!
//! The disk (a block device or a raw image file) gets a GPT with a boot
//! partition (BIOS: a BIOS boot partition for GRUB's core image and an
//! ext4 `slate-boot`; UEFI: a FAT32 ESP `slate-esp` for systemd-boot), the
//! slots `slate-a` and `slate-b`, and `slate-state` with the rest. Every
//! partition is reached through a loop device over its byte range, so a
//! raw image and a disk are handled alike and no partition device nodes
//! are needed. Slot A is written by an ordinary agent pass
//! ([`crate::update::run`]) with the install's own configuration, so it is
//! fetched, verified and recorded exactly as updates are; the machine's
//! AGENT.toml, its token, its trusted keys and the agent's state go to the
//! state partition, where `slate state apply` binds them into place at
//! every boot (`/etc/slate/agent.toml`, `/var/lib/slate`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::{Bootloader, Config};
use crate::error::{Error, Result};
use crate::update::{self, Outcome};

/// Sector size of the partition table.
const SECTOR: u64 = 512;
/// One MiB in sectors: partitions start on MiB boundaries.
const MIB: u64 = (1 << 20) / SECTOR;
/// Size of the boot partition (ext4 /boot or the ESP).
pub const BOOT_SIZE: u64 = 512 << 20;
/// Smallest state partition.
pub const MIN_STATE_SIZE: u64 = 256 << 20;
/// Where the state store lives on the state partition.
pub const STORE_DIR: &str = "store";
/// The agent's state directory on an installed machine (a `local` path).
pub const MACHINE_STATE_DIR: &str = "/var/lib/slate";
/// The machine's AGENT.toml on an installed machine (a `local` path).
pub const MACHINE_CONFIG: &str = crate::config::DEFAULT_PATH;

/// How the machine starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// Legacy BIOS: GRUB from the MBR and a BIOS boot partition.
    Bios,
    /// UEFI: systemd-boot on an ESP.
    Uefi,
}

/// One partition of the layout.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Part {
    /// PARTLABEL.
    pub name: &'static str,
    /// sgdisk type code.
    #[serde(skip)]
    pub code: &'static str,
    /// First sector.
    pub start: u64,
    /// Sectors.
    pub sectors: u64,
}

impl Part {
    fn offset(&self) -> u64 {
        self.start * SECTOR
    }
    fn bytes(&self) -> u64 {
        self.sectors * SECTOR
    }
}

/// The partitions for a disk of `disk_bytes`, or why it is too small.
pub fn layout(disk_bytes: u64, firmware: Firmware, slot_bytes: u64) -> Result<Vec<Part>> {
    let slot = slot_bytes.div_ceil(1 << 20) * MIB;
    let boot = BOOT_SIZE / SECTOR;
    let mut parts = Vec::new();
    let mut at = MIB;
    let mut add = |name: &'static str, code: &'static str, sectors: u64| {
        parts.push(Part {
            name,
            code,
            start: at,
            sectors,
        });
        at += sectors;
    };
    match firmware {
        Firmware::Bios => {
            add("bios-boot", "EF02", MIB);
            add("slate-boot", "8300", boot);
        }
        Firmware::Uefi => add("slate-esp", "EF00", boot),
    }
    add("slate-a", "8300", slot);
    add("slate-b", "8300", slot);
    // The backup GPT takes the last 33 sectors; leave the last MiB.
    let total = disk_bytes / SECTOR;
    let need = at + MIN_STATE_SIZE / SECTOR + MIB;
    if total < need {
        return Err(Error::Local(format!(
            "the disk holds {} MiB; this layout needs at least {} MiB (boot {} MiB, two slots of {} MiB, state {} MiB): \
             use a larger disk or a smaller --slot-size",
            disk_bytes >> 20,
            (need * SECTOR) >> 20,
            BOOT_SIZE >> 20,
            (slot * SECTOR) >> 20,
            MIN_STATE_SIZE >> 20
        )));
    }
    let state = (total - MIB - at) / MIB * MIB;
    parts.push(Part {
        name: "slate-state",
        code: "8300",
        start: at,
        sectors: state,
    });
    Ok(parts)
}

pub(crate) fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.output().map_err(|e| {
        Error::Local(format!(
            "cannot run {what}: {e} (is it installed? see scripts/setup.sh)"
        ))
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.trim().lines().last().unwrap_or("no message").to_string();
        return Err(Error::Local(format!("{what} failed: {last}")));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A loop device over a byte range of the disk, detached when dropped.
pub(crate) struct Loop {
    pub(crate) dev: PathBuf,
}

impl Loop {
    /// A read-only loop device over a whole file.
    pub(crate) fn read_only(file: &Path) -> Result<Loop> {
        let out = run(
            Command::new("losetup")
                .args(["--find", "--show", "--read-only"])
                .arg(file),
            &format!("losetup {}", file.display()),
        )?;
        Ok(Loop {
            dev: PathBuf::from(out.trim()),
        })
    }

    pub(crate) fn new(disk: &Path, part: &Part) -> Result<Loop> {
        let out = run(
            Command::new("losetup")
                .args(["--find", "--show", "--offset", &part.offset().to_string()])
                .args(["--sizelimit", &part.bytes().to_string()])
                .arg(disk),
            &format!("losetup for partition {}", part.name),
        )?;
        Ok(Loop {
            dev: PathBuf::from(out.trim()),
        })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// A filesystem mounted on a fresh directory, unmounted when dropped.
pub(crate) struct Mount {
    pub(crate) at: PathBuf,
}

impl Mount {
    /// Mount `dev` read-only as `fstype` at `at`.
    pub(crate) fn read_only(dev: &Path, fstype: &str, at: PathBuf) -> Result<Mount> {
        std::fs::create_dir_all(&at).map_err(|e| Error::Local(format!("cannot create {}: {e}", at.display())))?;
        run(
            Command::new("mount").args(["-t", fstype, "-o", "ro"]).arg(dev).arg(&at),
            &format!("mount {}", dev.display()),
        )?;
        Ok(Mount { at })
    }

    fn new(dev: &Path, at: PathBuf) -> Result<Mount> {
        std::fs::create_dir_all(&at).map_err(|e| Error::Local(format!("cannot create {}: {e}", at.display())))?;
        run(
            Command::new("mount").arg(dev).arg(&at),
            &format!("mount {}", dev.display()),
        )?;
        Ok(Mount { at })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.at).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.at).status();
        }
    }
}

/// Refuse a disk that is mounted, or holds a mounted partition.
fn check_not_in_use(disk: &Path) -> Result<()> {
    let canon = std::fs::canonicalize(disk).unwrap_or_else(|_| disk.to_path_buf());
    let name = canon.to_string_lossy().into_owned();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for l in mounts.lines() {
        let mut f = l.split_whitespace();
        let (Some(src), Some(at)) = (f.next(), f.next()) else {
            continue;
        };
        let rest = src.strip_prefix(name.as_str());
        if rest.is_some_and(|r| r.is_empty() || r.trim_start_matches('p').bytes().all(|b| b.is_ascii_digit())) {
            return Err(Error::Local(format!(
                "{} is in use: {src} is mounted at {at}; installing would destroy it",
                disk.display()
            )));
        }
    }
    Ok(())
}

/// Size of a block device or image file.
fn disk_size(disk: &Path) -> Result<u64> {
    let md = std::fs::metadata(disk).map_err(|e| Error::Local(format!("cannot use {}: {e}", disk.display())))?;
    use std::os::unix::fs::FileTypeExt;
    if md.file_type().is_block_device() {
        let out = run(Command::new("blockdev").arg("--getsize64").arg(disk), "blockdev")?;
        out.trim()
            .parse()
            .map_err(|_| Error::Local(format!("cannot read the size of {}", disk.display())))
    } else if md.is_file() {
        Ok(md.len())
    } else {
        Err(Error::Local(format!(
            "{} is neither a block device nor a disk image file",
            disk.display()
        )))
    }
}

/// What `slate install` is asked to do.
pub struct InstallOptions<'a> {
    /// Block device or raw image file.
    pub disk: PathBuf,
    /// Create the image file with this size when it does not exist.
    pub create_size: Option<u64>,
    /// AGENT.toml to start from: servers, trusted keys, token, identity,
    /// labels, kernel command line, tries.
    pub template: &'a Config,
    /// How the machine starts.
    pub firmware: Firmware,
    /// Size of each slot.
    pub slot_size: u64,
    /// Scratch directory (mount points while installing).
    pub work_dir: PathBuf,
    /// Install the snapshot of the live medium kept here, with no server
    /// (`slate install --from-live`).
    pub from_live: Option<PathBuf>,
}

/// What was done.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstallReport {
    /// The disk.
    pub disk: PathBuf,
    /// Firmware it boots with.
    pub firmware: Firmware,
    /// Its partitions.
    pub partitions: Vec<Part>,
    /// The agent pass that wrote slot A.
    pub update: Outcome,
}

/// The kernel command line an installed machine boots with: the template's,
/// plus `panic=10` unless it sets `panic=`, so that a slot whose boot fails
/// in the kernel or the initramfs restarts and boot counting can fall back
/// instead of waiting at a shell.
pub fn machine_cmdline(template: &str) -> String {
    let mut c = template.trim().to_string();
    if !c.split_whitespace().any(|w| w.starts_with("panic=")) {
        if !c.is_empty() {
            c.push(' ');
        }
        c.push_str("panic=10");
    }
    c
}

/// A server of the template as AGENT.toml writes it: a bare URL when its
/// settings are a bare URL's, else a table that keeps them (a CA file path
/// must exist on the installed machine too).
fn server_entry(s: &crate::config::ServerSettings, all_plain: bool) -> toml::Value {
    use toml::Value;
    if all_plain {
        return Value::String(s.url.clone());
    }
    let mut t = toml::Table::new();
    t.insert("url".into(), Value::String(s.url.clone()));
    if let Some(ca) = &s.ca_file {
        t.insert("ca_file".into(), Value::String(ca.display().to_string()));
    }
    if !s.pins.is_empty() {
        t.insert(
            "pin".into(),
            Value::Array(
                s.pins
                    .iter()
                    .map(|p| Value::String(format!("sha256:{}", hex::encode(p))))
                    .collect(),
            ),
        );
    }
    t.insert("token".into(), Value::Boolean(s.token));
    if s.token && s.url.starts_with("http://") {
        t.insert("token_over_http".into(), Value::Boolean(true));
    }
    Value::Table(t)
}

/// The AGENT.toml the machine runs with.
fn machine_config(
    t: &Config,
    firmware: Firmware,
    keys: &[String],
    fleet_keys: &[String],
    has_token: bool,
) -> Result<String> {
    use toml::Value;
    let mut root = toml::Table::new();
    // A loopback address is how the installing machine reaches the server,
    // hardly how the machine will: tried last, it costs nothing when
    // unreachable (an initramfs has no loopback interface up, so a connect
    // there waits for its timeout).
    // Once one server needs a table, all get one with an explicit `token`:
    // an explicit `token = true` changes what bare URLs mean.
    let all_plain = t
        .server_settings
        .iter()
        .all(|s| *s == crate::config::ServerSettings::plain(&s.url));
    let (mut servers, lo): (Vec<&crate::config::ServerSettings>, Vec<&crate::config::ServerSettings>) =
        t.server_settings.iter().partition(|s| !is_loopback_url(&s.url));
    servers.extend(lo);
    root.insert(
        "server".into(),
        Value::Array(servers.into_iter().map(|s| server_entry(s, all_plain)).collect()),
    );
    root.insert(
        "trust".into(),
        Value::Array(keys.iter().map(|k| Value::String(k.clone())).collect()),
    );
    if !fleet_keys.is_empty() {
        root.insert(
            "fleet_trust".into(),
            Value::Array(fleet_keys.iter().map(|k| Value::String(k.clone())).collect()),
        );
    }
    root.insert("state_dir".into(), Value::String(MACHINE_STATE_DIR.into()));
    let (bootloader, boot_dev) = match firmware {
        Firmware::Bios => ("grub", "/dev/disk/by-partlabel/slate-boot"),
        Firmware::Uefi => ("bls", "/dev/disk/by-partlabel/slate-esp"),
    };
    root.insert("bootloader".into(), Value::String(bootloader.into()));
    root.insert("boot_device".into(), Value::String(boot_dev.into()));
    root.insert("boot_dir".into(), Value::String("/".into()));
    root.insert("boot_tries".into(), Value::Integer(t.boot_tries.into()));
    if let Some(m) = &t.machine_id {
        root.insert("machine_id".into(), Value::String(m.clone()));
    }
    root.insert(
        "kernel_cmdline".into(),
        Value::String(machine_cmdline(&t.kernel_cmdline)),
    );
    root.insert("connections".into(), Value::Integer(t.connections as i64));
    root.insert("timeout_secs".into(), Value::Integer(t.timeout_secs as i64));
    if has_token {
        root.insert("token_file".into(), Value::String(format!("{MACHINE_STATE_DIR}/token")));
    }
    let mut slots = toml::Table::new();
    slots.insert("a".into(), Value::String("/dev/disk/by-partlabel/slate-a".into()));
    slots.insert("b".into(), Value::String("/dev/disk/by-partlabel/slate-b".into()));
    root.insert("slots".into(), Value::Table(slots));
    if !t.labels.is_empty() {
        root.insert(
            "labels".into(),
            Value::Table(
                t.labels
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            ),
        );
    }
    let body = toml::to_string(&root).map_err(|e| Error::Local(format!("cannot write AGENT.toml: {e}")))?;
    Ok(format!(
        "# Written by `slate install`; the machine's own agent configuration\n\
         # (docs/agent.md), kept on the state partition and bound to {MACHINE_CONFIG}.\n{body}"
    ))
}

/// Whether a server URL names this machine's loopback interface.
fn is_loopback_url(url: &str) -> bool {
    let host = url.split("://").nth(1).unwrap_or(url);
    let host = host.split('/').next().unwrap_or("");
    let host = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    host == "localhost" || host.starts_with("127.") || host == "::1"
}

pub(crate) fn write_file(p: &Path, data: &[u8], mode: u32) -> Result<()> {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).map_err(|e| Error::Local(format!("cannot create {}: {e}", d.display())))?;
    }
    std::fs::write(p, data).map_err(|e| Error::Local(format!("cannot write {}: {e}", p.display())))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::Local(format!("cannot chmod {}: {e}", p.display())))
}

/// GRUB's configuration on the boot partition: a serial and a screen
/// console, then the agent's slate.cfg with its boot counting.
const GRUB_CFG: &str = "# Written by `slate install`. The entries and boot counting are in\n\
# slate.cfg, rewritten by the agent on every switch.\n\
serial --unit=0 --speed=115200\n\
terminal_input serial console\n\
terminal_output serial console\n\
source ${prefix}/slate.cfg\n";

/// GRUB's embedded configuration: find the boot partition by label.
const GRUB_EARLY_CFG: &str = "search --no-floppy --label slate-boot --set=root\nset prefix=($root)/grub\n";

/// Modules built into GRUB's core image (it must read the boot partition
/// and run slate.cfg without loading anything else).
const GRUB_MODULES: &[&str] = &[
    "biosdisk",
    "part_gpt",
    "ext2",
    "search",
    "search_label",
    "normal",
    "configfile",
    "linux",
    "echo",
    "test",
    "loadenv",
    "serial",
    "terminal",
    "ls",
    "cat",
    "gzio",
];

fn install_grub(disk: &Path, boot: &Path, work: &Path) -> Result<()> {
    let src = Path::new("/usr/lib/grub/i386-pc");
    if !src.join("boot.img").is_file() {
        return Err(Error::Local(
            "GRUB's BIOS files are missing (/usr/lib/grub/i386-pc): install grub-pc-bin and grub-pc".into(),
        ));
    }
    let dst = boot.join("grub/i386-pc");
    std::fs::create_dir_all(&dst).map_err(|e| Error::Local(format!("cannot create {}: {e}", dst.display())))?;
    for e in std::fs::read_dir(src).map_err(|e| Error::Local(format!("cannot read {}: {e}", src.display())))? {
        let e = e.map_err(|e| Error::Local(e.to_string()))?;
        let name = e.file_name();
        let n = name.to_string_lossy();
        if n.ends_with(".mod") || n.ends_with(".lst") || n == "boot.img" {
            std::fs::copy(e.path(), dst.join(&name)).map_err(|err| Error::Local(format!("cannot copy {n}: {err}")))?;
        }
    }
    write_file(&boot.join("grub/grub.cfg"), GRUB_CFG.as_bytes(), 0o644)?;
    let early = work.join("grub-early.cfg");
    write_file(&early, GRUB_EARLY_CFG.as_bytes(), 0o644)?;
    run(
        Command::new("grub-mkimage")
            .args(["-O", "i386-pc", "-p", "/grub", "-o"])
            .arg(dst.join("core.img"))
            .arg("-c")
            .arg(&early)
            .args(GRUB_MODULES),
        "grub-mkimage",
    )?;
    let map = work.join("device.map");
    write_file(&map, format!("(hd0) {}\n", disk.display()).as_bytes(), 0o644)?;
    // grub-pc-bin ships it here; grub-pc (which also takes over the
    // installing machine's own bootloader) links it into the PATH.
    let setup = if src.join("grub-bios-setup").is_file() {
        src.join("grub-bios-setup")
    } else {
        PathBuf::from("grub-bios-setup")
    };
    run(
        Command::new(setup)
            .arg("--skip-fs-probe")
            .arg("--directory")
            .arg(&dst)
            .arg("--device-map")
            .arg(&map)
            .arg(disk),
        "grub-bios-setup",
    )?;
    Ok(())
}

/// Copy a staged ESP tree onto the FAT filesystem on `dev` with mtools
/// (no vfat mount needed on the installing machine).
fn fill_esp(dev: &Path, staged: &Path) -> Result<()> {
    let boot_efi = Path::new("/usr/lib/systemd/boot/efi/systemd-bootx64.efi");
    if !boot_efi.is_file() {
        return Err(Error::Local(format!(
            "systemd-boot is missing ({}): install systemd-boot-efi",
            boot_efi.display()
        )));
    }
    let data = std::fs::read(boot_efi).map_err(|e| Error::Local(format!("cannot read {}: {e}", boot_efi.display())))?;
    write_file(&staged.join("EFI/BOOT/BOOTX64.EFI"), &data, 0o644)?;
    write_file(&staged.join("EFI/systemd/systemd-bootx64.efi"), &data, 0o644)?;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(staged)
        .map_err(|e| Error::Local(format!("cannot read {}: {e}", staged.display())))?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    run(
        Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-s")
            .arg("-Q")
            .arg("-i")
            .arg(dev)
            .args(&entries)
            .arg("::/"),
        "mcopy onto the ESP",
    )?;
    Ok(())
}

/// Install: partition, format, write slot A, install the bootloader.
pub fn install(o: &InstallOptions<'_>, progress: &dyn slate_repo::progress::Progress) -> Result<InstallReport> {
    if !o.disk.exists() {
        match o.create_size {
            Some(n) => {
                let f = std::fs::File::create(&o.disk)
                    .map_err(|e| Error::Local(format!("cannot create {}: {e}", o.disk.display())))?;
                f.set_len(n)
                    .map_err(|e| Error::Local(format!("cannot size {}: {e}", o.disk.display())))?;
            }
            None => {
                return Err(Error::Local(format!(
                    "{} does not exist (give --size to create a disk image)",
                    o.disk.display()
                )))
            }
        }
    }
    check_not_in_use(&o.disk)?;
    let size = disk_size(&o.disk)?;
    let parts = layout(size, o.firmware, o.slot_size)?;
    // Read the template's secrets before anything is destroyed.
    let token = o.template.token()?;
    let read_all = |paths: &[PathBuf]| -> Result<Vec<(String, Vec<u8>)>> {
        paths
            .iter()
            .map(|k| {
                let data = std::fs::read(k)
                    .map_err(|e| Error::Config(format!("cannot read trusted key {}: {e}", k.display())))?;
                let name = k
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "key.pub".into());
                Ok((name, data))
            })
            .collect()
    };
    let keys = read_all(&o.template.trust)?;
    let fleet_keys = read_all(&o.template.fleet_trust)?;
    o.template.trusted_keys()?;
    o.template.fleet_keys()?;

    // The partition table.
    let mut sg = Command::new("sgdisk");
    sg.arg("--zap-all").arg(&o.disk);
    run(&mut sg, "sgdisk --zap-all")?;
    let mut sg = Command::new("sgdisk");
    sg.arg("--clear");
    for (i, p) in parts.iter().enumerate() {
        let n = i + 1;
        sg.arg(format!("--new={n}:{}:{}", p.start, p.start + p.sectors - 1))
            .arg(format!("--typecode={n}:{}", p.code))
            .arg(format!("--change-name={n}:{}", p.name));
    }
    sg.arg(&o.disk);
    run(&mut sg, "sgdisk")?;

    let part = |name: &str| parts.iter().find(|p| p.name == name).expect("in the layout");
    let slot_a = Loop::new(&o.disk, part("slate-a"))?;
    let slot_b = Loop::new(&o.disk, part("slate-b"))?;
    let state_loop = Loop::new(&o.disk, part("slate-state"))?;
    let boot_loop = Loop::new(
        &o.disk,
        part(match o.firmware {
            Firmware::Bios => "slate-boot",
            Firmware::Uefi => "slate-esp",
        }),
    )?;
    let mkfs_ext4 = |dev: &Path, label: &str| {
        run(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-L", label, "-E", "lazy_itable_init=1,lazy_journal_init=1"])
                .arg(dev),
            &format!("mkfs.ext4 {label}"),
        )
    };
    mkfs_ext4(&state_loop.dev, "slate-state")?;
    match o.firmware {
        Firmware::Bios => mkfs_ext4(&boot_loop.dev, "slate-boot")?,
        Firmware::Uefi => run(
            Command::new("mkfs.fat")
                .args(["-F", "32", "-n", "SLATE-ESP"])
                .arg(&boot_loop.dev),
            "mkfs.fat",
        )?,
    };

    std::fs::create_dir_all(&o.work_dir)
        .map_err(|e| Error::Local(format!("cannot create {}: {e}", o.work_dir.display())))?;
    let state_mnt = Mount::new(&state_loop.dev, o.work_dir.join("state"))?;
    let (boot_mnt, boot_dir) = match o.firmware {
        Firmware::Bios => {
            let m = Mount::new(&boot_loop.dev, o.work_dir.join("boot"))?;
            let d = m.at.clone();
            (Some(m), d)
        }
        Firmware::Uefi => {
            let d = o.work_dir.join("esp");
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).map_err(|e| Error::Local(format!("cannot create {}: {e}", d.display())))?;
            (None, d)
        }
    };

    // The machine's own files on the state partition.
    let store_local = state_mnt.at.join(STORE_DIR).join("local");
    let agent_dir = store_local.join(MACHINE_STATE_DIR.trim_start_matches('/'));
    let mut machine_keys = Vec::new();
    for (name, data) in &keys {
        write_file(&agent_dir.join("keys").join(name), data, 0o644)?;
        machine_keys.push(format!("{MACHINE_STATE_DIR}/keys/{name}"));
    }
    if let Some(t) = &token {
        write_file(&agent_dir.join("token"), format!("{t}\n").as_bytes(), 0o600)?;
    }
    // Fleet keys in a directory of their own: a release and a fleet key
    // file of the same name must not overwrite each other.
    let mut machine_fleet_keys = Vec::new();
    for (name, data) in &fleet_keys {
        write_file(&agent_dir.join("fleet-keys").join(name), data, 0o644)?;
        machine_fleet_keys.push(format!("{MACHINE_STATE_DIR}/fleet-keys/{name}"));
    }
    let machine_toml = machine_config(
        o.template,
        o.firmware,
        &machine_keys,
        &machine_fleet_keys,
        token.is_some(),
    )?;
    write_file(
        &store_local.join(MACHINE_CONFIG.trim_start_matches('/')),
        machine_toml.as_bytes(),
        0o600,
    )?;

    // Slot A, by an agent pass with the install's view of the same machine.
    let mut cfg = o.template.clone();
    cfg.state_dir = agent_dir.clone();
    cfg.mode = crate::config::Mode::Ab(crate::config::Slots {
        a: slot_a.dev.clone(),
        b: slot_b.dev.clone(),
        bootloader: match o.firmware {
            Firmware::Bios => Bootloader::Grub,
            Firmware::Uefi => Bootloader::Bls,
        },
        size: o.slot_size,
    });
    cfg.boot_dir = boot_dir.clone();
    cfg.boot_device = None;
    cfg.kernel_cmdline = machine_cmdline(&o.template.kernel_cmdline);
    cfg.offline_source = o.from_live.clone();
    let outcome = update::run(&cfg, false, progress)?;
    if outcome.result != "ok" {
        return Err(Error::Local(format!(
            "slot A was not written: {} (nothing is bootable on {} yet)",
            outcome.message,
            o.disk.display()
        )));
    }
    // The pass mounted slots under the state directory; those are gone.
    let _ = std::fs::remove_dir_all(agent_dir.join("mnt"));

    match o.firmware {
        Firmware::Bios => install_grub(&o.disk, &boot_dir, &o.work_dir)?,
        Firmware::Uefi => fill_esp(&boot_loop.dev, &boot_dir)?,
    }
    drop(boot_mnt);
    drop(state_mnt);
    drop((slot_a, slot_b, state_loop, boot_loop));
    let f = std::fs::File::open(&o.disk).map_err(|e| Error::Local(format!("{}: {e}", o.disk.display())))?;
    f.sync_all()
        .map_err(|e| Error::Local(format!("cannot sync {}: {e}", o.disk.display())))?;
    Ok(InstallReport {
        disk: o.disk.clone(),
        firmware: o.firmware,
        partitions: parts,
        update: outcome,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_fit_or_say_why_not() {
        let p = layout(8 << 30, Firmware::Bios, 3 << 30).unwrap();
        let names: Vec<_> = p.iter().map(|p| p.name).collect();
        assert_eq!(names, ["bios-boot", "slate-boot", "slate-a", "slate-b", "slate-state"]);
        for w in p.windows(2) {
            assert_eq!(w[0].start + w[0].sectors, w[1].start, "contiguous");
        }
        assert_eq!(p[0].start, MIB);
        assert_eq!(p[2].bytes(), 3 << 30);
        let last = p.last().unwrap();
        assert!(last.start + last.sectors <= (8u64 << 30) / SECTOR - 33);
        let u = layout(8 << 30, Firmware::Uefi, 3 << 30).unwrap();
        assert_eq!(u[0].name, "slate-esp");
        let e = layout(4 << 30, Firmware::Bios, 2 << 30).unwrap_err().to_string();
        assert!(e.contains("needs at least") && e.contains("--slot-size"), "{e}");
    }

    #[test]
    fn loopback_servers_are_recognised() {
        for u in [
            "http://127.0.0.1:8470",
            "https://localhost/",
            "http://[::1]:80",
            "http://127.1.2.3",
        ] {
            assert!(is_loopback_url(u), "{u}");
        }
        for u in [
            "http://10.0.2.2:8470",
            "https://slate.example.org",
            "http://[fe80::1]:80",
        ] {
            assert!(!is_loopback_url(u), "{u}");
        }
    }

    #[test]
    fn cmdline_gets_a_panic_timeout() {
        assert_eq!(machine_cmdline("console=ttyS0"), "console=ttyS0 panic=10");
        assert_eq!(machine_cmdline("quiet panic=30"), "quiet panic=30");
        assert_eq!(machine_cmdline(""), "panic=10");
    }
}
