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
//!
//! The disk of a machine that boots from the network and caches its
//! snapshot locally is laid out by [`cached`] (`--mode cached`) with the
//! same pieces: pre-flight, partition table, loop devices, filesystems,
//! GRUB and mtools.

pub mod cached;

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
/// Where an installed machine's slots are, by partition label.
pub const MACHINE_SLOT_A: &str = "/dev/disk/by-partlabel/slate-a";
/// See [`MACHINE_SLOT_A`].
pub const MACHINE_SLOT_B: &str = "/dev/disk/by-partlabel/slate-b";
/// The machine's AGENT.toml on an installed machine (a `local` path).
pub const MACHINE_CONFIG: &str = crate::config::DEFAULT_PATH;

/// How the machine starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// Legacy BIOS: GRUB from the MBR and a BIOS boot partition.
    Bios,
    /// UEFI: a bootloader on an ESP (systemd-boot for the A/B layout,
    /// GRUB for a cache disk).
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
    /// Size in bytes (`sectors` times 512; for reports).
    pub bytes: u64,
}

impl Part {
    /// Partition `name` of `sectors` sectors from sector `start`.
    pub fn new(name: &'static str, code: &'static str, start: u64, sectors: u64) -> Part {
        Part {
            name,
            code,
            start,
            sectors,
            bytes: sectors * SECTOR,
        }
    }

    fn offset(&self) -> u64 {
        self.start * SECTOR
    }
}

/// Lay `fixed` partitions (name, type code, bytes rounded up to MiB) out
/// from the first MiB on, then `last` over the rest of the disk, on MiB
/// boundaries; the last MiB stays free for the backup GPT (33 sectors).
/// When the rest is smaller than `min_last` bytes, the error is the disk
/// size the layout needs, in bytes, for the caller to explain.
fn lay_out(
    disk_bytes: u64,
    fixed: &[(&'static str, &'static str, u64)],
    last: (&'static str, &'static str),
    min_last: u64,
) -> std::result::Result<Vec<Part>, u64> {
    let mut parts = Vec::new();
    let mut at = MIB;
    for &(name, code, bytes) in fixed {
        let sectors = bytes.div_ceil(1 << 20) * MIB;
        parts.push(Part::new(name, code, at, sectors));
        at += sectors;
    }
    let total = disk_bytes / SECTOR;
    // At least one MiB for the last partition, whatever `min_last` says:
    // a partition of no size is no partition.
    let need = at + min_last.div_ceil(1 << 20).max(1) * MIB + MIB;
    if total < need {
        return Err(need * SECTOR);
    }
    parts.push(Part::new(last.0, last.1, at, (total - MIB - at) / MIB * MIB));
    Ok(parts)
}

/// The partitions for a disk of `disk_bytes`, or why it is too small.
pub fn layout(disk_bytes: u64, firmware: Firmware, slot_bytes: u64) -> Result<Vec<Part>> {
    let slot = slot_bytes.div_ceil(1 << 20) << 20;
    let mut fixed = match firmware {
        Firmware::Bios => vec![("bios-boot", "EF02", 1 << 20), ("slate-boot", "8300", BOOT_SIZE)],
        Firmware::Uefi => vec![("slate-esp", "EF00", BOOT_SIZE)],
    };
    fixed.extend([("slate-a", "8300", slot), ("slate-b", "8300", slot)]);
    lay_out(disk_bytes, &fixed, ("slate-state", "8300"), MIN_STATE_SIZE).map_err(|need| {
        Error::Local(format!(
            "the disk holds {} MiB; this layout needs at least {} MiB (boot {} MiB, two slots of {} MiB, state {} MiB): \
             use a larger disk or a smaller --slot-size",
            disk_bytes >> 20,
            need >> 20,
            BOOT_SIZE >> 20,
            slot >> 20,
            MIN_STATE_SIZE >> 20
        ))
    })
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
                .args(["--sizelimit", &part.bytes.to_string()])
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

/// Whether the device `src` is the disk `disk` or one of its partitions,
/// by the kernel's naming: `sda` has `sda1`, a name that ends in a digit
/// has `p1` (`loop0p1`, `nvme0n1p1`); so `loop1` does not hold `loop10`.
fn is_part_of(src: &str, disk: &str) -> bool {
    let Some(rest) = src.strip_prefix(disk) else {
        return false;
    };
    let digits = |r: &str| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit());
    if rest.is_empty() {
        return true;
    }
    if disk.ends_with(|c: char| c.is_ascii_digit()) {
        rest.strip_prefix('p').is_some_and(digits)
    } else {
        digits(rest)
    }
}

/// The loop devices whose backing file is `file` (from sysfs): an image
/// that is mounted shows in the mount table by its loop device only.
fn loop_devices_of(file: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let backing = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            (Path::new(backing.trim_end()) == file).then(|| format!("/dev/{}", e.file_name().to_string_lossy()))
        })
        .collect()
}

/// Refuse a disk that is mounted, or holds a mounted partition; an image
/// file also when a loop device over it (or a part of it) is mounted.
fn check_not_in_use(disk: &Path) -> Result<()> {
    let canon = std::fs::canonicalize(disk).unwrap_or_else(|_| disk.to_path_buf());
    let mut names = vec![canon.to_string_lossy().into_owned()];
    if canon.is_file() {
        names.extend(loop_devices_of(&canon));
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for l in mounts.lines() {
        let mut f = l.split_whitespace();
        let (Some(src), Some(at)) = (f.next(), f.next()) else {
            continue;
        };
        if names.iter().any(|n| is_part_of(src, n)) {
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

/// The size of the disk to install onto, checked not to be in use; an
/// image that does not exist yet is planned at `create_size` (made by
/// [`create_image`]), and without one that is an error.
fn planned_disk_size(disk: &Path, create_size: Option<u64>) -> Result<u64> {
    if disk.exists() {
        check_not_in_use(disk)?;
        return disk_size(disk);
    }
    create_size.ok_or_else(|| {
        Error::Local(format!(
            "{} does not exist (give --size to create a disk image)",
            disk.display()
        ))
    })
}

/// Create the image file `disk` of `size` bytes (sparse) unless it exists.
fn create_image(disk: &Path, size: u64) -> Result<()> {
    if disk.exists() {
        return Ok(());
    }
    let f = std::fs::File::create(disk).map_err(|e| Error::Local(format!("cannot create {}: {e}", disk.display())))?;
    f.set_len(size)
        .map_err(|e| Error::Local(format!("cannot size {}: {e}", disk.display())))
}

/// A new GPT on `disk` with `parts` (numbered in order), anything there
/// before wiped first.
fn write_gpt(disk: &Path, parts: &[Part]) -> Result<()> {
    run(Command::new("sgdisk").arg("--zap-all").arg(disk), "sgdisk --zap-all")?;
    let mut sg = Command::new("sgdisk");
    sg.arg("--clear");
    for (i, p) in parts.iter().enumerate() {
        let n = i + 1;
        sg.arg(format!("--new={n}:{}:{}", p.start, p.start + p.sectors - 1))
            .arg(format!("--typecode={n}:{}", p.code))
            .arg(format!("--change-name={n}:{}", p.name));
    }
    sg.arg(disk);
    run(&mut sg, "sgdisk")?;
    Ok(())
}

/// An ext4 filesystem labelled `label` on `dev`, with this UUID if given.
/// Inode tables and journal are initialised lazily: on a large disk an
/// eager mkfs writes for minutes.
fn mkfs_ext4(dev: &Path, label: &str, uuid: Option<&str>) -> Result<()> {
    let mut c = Command::new("mkfs.ext4");
    c.args(["-q", "-F", "-L", label, "-E", "lazy_itable_init=1,lazy_journal_init=1"]);
    if let Some(u) = uuid {
        c.args(["-U", u]);
    }
    run(c.arg(dev), &format!("mkfs.ext4 {label}"))?;
    Ok(())
}

/// A FAT32 ESP on `dev`.
fn mkfs_esp(dev: &Path) -> Result<()> {
    run(
        Command::new("mkfs.fat").args(["-F", "32", "-n", "SLATE-ESP"]).arg(dev),
        "mkfs.fat",
    )?;
    Ok(())
}

/// Flush the disk (image file or device) to stable storage.
fn sync_disk(disk: &Path) -> Result<()> {
    let f = std::fs::File::open(disk).map_err(|e| Error::Local(format!("{}: {e}", disk.display())))?;
    f.sync_all()
        .map_err(|e| Error::Local(format!("cannot sync {}: {e}", disk.display())))
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
    slots.insert("a".into(), Value::String(MACHINE_SLOT_A.into()));
    slots.insert("b".into(), Value::String(MACHINE_SLOT_B.into()));
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

/// Where GRUB's BIOS files are (grub-pc-bin).
const GRUB_BIOS_DIR: &str = "/usr/lib/grub/i386-pc";

/// Copy GRUB's modules for one platform (`src`, like
/// `/usr/lib/grub/i386-pc`) into `dst`, where GRUB loads them from its
/// prefix at boot: what the core image lacks (`sleep`, `halt`, a
/// filesystem a menu names) is then loaded on demand.
fn copy_grub_modules(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst).map_err(|e| Error::Local(format!("cannot create {}: {e}", dst.display())))?;
    for e in std::fs::read_dir(src).map_err(|e| Error::Local(format!("cannot read {}: {e}", src.display())))? {
        let e = e.map_err(|e| Error::Local(e.to_string()))?;
        let name = e.file_name();
        let n = name.to_string_lossy();
        if n.ends_with(".mod") || n.ends_with(".lst") || n == "boot.img" {
            std::fs::copy(e.path(), dst.join(&name)).map_err(|err| Error::Local(format!("cannot copy {n}: {err}")))?;
        }
    }
    Ok(())
}

/// Run grub-mkimage for `platform`: an image with `modules` built in that
/// runs `early` (which finds the filesystem and sets the prefix) first.
fn grub_mkimage(platform: &str, prefix: &str, early: &str, modules: &[&str], out: &Path, work: &Path) -> Result<()> {
    let early_file = work.join(format!("grub-early-{platform}.cfg"));
    write_file(&early_file, early.as_bytes(), 0o644)?;
    if let Some(d) = out.parent() {
        std::fs::create_dir_all(d).map_err(|e| Error::Local(format!("cannot create {}: {e}", d.display())))?;
    }
    run(
        Command::new("grub-mkimage")
            .args(["-O", platform, "-p", prefix, "-o"])
            .arg(out)
            .arg("-c")
            .arg(&early_file)
            .args(modules),
        &format!("grub-mkimage -O {platform}"),
    )?;
    Ok(())
}

/// GRUB for a BIOS: its modules in `grub_dir/i386-pc` (on the filesystem
/// that `early` finds, at `prefix`), a core image with `modules` built
/// in, written by grub-bios-setup into the BIOS boot partition of `disk`
/// with the boot sector that loads it.
fn install_grub_bios(
    disk: &Path,
    grub_dir: &Path,
    prefix: &str,
    early: &str,
    modules: &[&str],
    work: &Path,
) -> Result<()> {
    let src = Path::new(GRUB_BIOS_DIR);
    if !src.join("boot.img").is_file() {
        return Err(Error::Local(format!(
            "GRUB's BIOS files are missing ({GRUB_BIOS_DIR}): install grub-pc-bin and grub-pc"
        )));
    }
    let dst = grub_dir.join("i386-pc");
    copy_grub_modules(src, &dst)?;
    grub_mkimage("i386-pc", prefix, early, modules, &dst.join("core.img"), work)?;
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

/// Copy a staged tree onto the FAT filesystem on `dev` with mtools (no
/// vfat mount needed on the installing machine).
fn mcopy_tree(dev: &Path, staged: &Path) -> Result<()> {
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

/// systemd-boot as the ESP's default bootloader, with the staged tree
/// (the agent's entries and the slots' kernels) copied beside it.
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
    mcopy_tree(dev, staged)
}

/// Install: partition, format, write slot A, install the bootloader.
pub fn install(o: &InstallOptions<'_>, progress: &dyn slate_repo::progress::Progress) -> Result<InstallReport> {
    let size = planned_disk_size(&o.disk, o.create_size)?;
    let parts = layout(size, o.firmware, o.slot_size)?;
    create_image(&o.disk, size)?;
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

    write_gpt(&o.disk, &parts)?;

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
    mkfs_ext4(&state_loop.dev, "slate-state", None)?;
    match o.firmware {
        Firmware::Bios => mkfs_ext4(&boot_loop.dev, "slate-boot", None)?,
        Firmware::Uefi => mkfs_esp(&boot_loop.dev)?,
    }

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
        Firmware::Bios => {
            write_file(&boot_dir.join("grub/grub.cfg"), GRUB_CFG.as_bytes(), 0o644)?;
            install_grub_bios(
                &o.disk,
                &boot_dir.join("grub"),
                "/grub",
                GRUB_EARLY_CFG,
                GRUB_MODULES,
                &o.work_dir,
            )?
        }
        Firmware::Uefi => fill_esp(&boot_loop.dev, &boot_dir)?,
    }
    drop(boot_mnt);
    drop(state_mnt);
    drop((slot_a, slot_b, state_loop, boot_loop));
    sync_disk(&o.disk)?;
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
        assert_eq!(p[2].bytes, 3 << 30);
        let last = p.last().unwrap();
        assert!(last.start + last.sectors <= (8u64 << 30) / SECTOR - 33);
        let u = layout(8 << 30, Firmware::Uefi, 3 << 30).unwrap();
        assert_eq!(u[0].name, "slate-esp");
        let e = layout(4 << 30, Firmware::Bios, 2 << 30).unwrap_err().to_string();
        assert!(e.contains("needs at least") && e.contains("--slot-size"), "{e}");
    }

    #[test]
    fn partitions_belong_to_their_disk_only() {
        assert!(is_part_of("/dev/sda", "/dev/sda"));
        assert!(is_part_of("/dev/sda2", "/dev/sda"));
        assert!(is_part_of("/dev/loop1p2", "/dev/loop1"));
        assert!(is_part_of("/dev/nvme0n1p1", "/dev/nvme0n1"));
        assert!(!is_part_of("/dev/loop10", "/dev/loop1"));
        assert!(!is_part_of("/dev/sdab", "/dev/sda"));
        assert!(!is_part_of("/dev/nvme0n10", "/dev/nvme0n1"));
        assert!(!is_part_of("/dev/sdap1", "/dev/sda"));
        assert!(!is_part_of("tmpfs", "/dev/sda"));
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
