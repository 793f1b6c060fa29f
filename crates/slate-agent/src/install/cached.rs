//! `slate install --mode cached`: the disk of a machine that boots from
//! the network and keeps its snapshot in a local cache (docs/boot.md,
//! "Disks of network-booted machines").
//!
//! The disk gets a GPT with a place for GRUB (BIOS: a BIOS boot partition
//! for its core image; UEFI: a FAT32 ESP `slate-esp` with GRUB as
//! `EFI/BOOT/BOOTX64.EFI`) and `slate-cache` with the rest: ext4, labelled
//! `slate-cache`, with the directories the network boot uses (`cache/`,
//! `store/`, `boot/`, `config/`). No snapshot is written: the machine
//! fills its cache itself when it boots from the network, and once the
//! cache is complete the mount daemon puts a kernel, an initramfs and the
//! menu `boot/slate.cfg` beside GRUB; from then on the disk boots without
//! a server. Until then GRUB's menu says so and hands the machine back to
//! the firmware.
//!
//! [`plan`] reads and checks everything (the disk, the template, its keys
//! and token) and changes nothing; [`apply`] does it. The partition gets
//! its name `slate-cache` last, once everything is synced: the network
//! boot finds its cache by that name, so an install that is interrupted
//! leaves a disk that is not taken for a cache (the machine runs from RAM)
//! and that `slate install` simply lays out again.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{
    check_not_in_use, copy_grub_modules, create_image, disk_size, grub_mkimage, install_grub_bios, lay_out, mcopy_tree,
    mkfs_esp, mkfs_ext4, planned_disk_size, run, sync_disk, write_file, write_gpt, Firmware, Loop, Mount, Part,
};
use crate::error::{Error, Result};

/// The cache partition's GPT name and ext4 label.
pub const CACHE_LABEL: &str = "slate-cache";
/// The cache partition's GPT name while the install runs: not one the
/// network boot looks for.
pub const PENDING_LABEL: &str = "slate-cache-incomplete";
/// Size of the ESP (UEFI).
pub const ESP_SIZE: u64 = 256 << 20;
/// Size of the BIOS boot partition (GRUB's core image).
pub const BIOS_BOOT_SIZE: u64 = 1 << 20;
/// The smallest disk: a cache smaller than a snapshot or two is no use.
pub const MIN_DISK: u64 = 1 << 30;
/// Where the initramfs mounts the cache partition at boot
/// (`slate-mount`'s `netboot::RUN_DIR` + `/disk`; spelled here because
/// slate-mount depends on this crate, not the other way round).
pub const BOOT_MOUNT: &str = "/run/slate/netboot/disk";
/// Directories of the cache partition: the mount cache, the state store,
/// the offline boot files (GRUB's in `boot/grub/`), the configuration.
pub const DIRS: &[&str] = &["cache", "store", "boot", "boot/grub", "config"];

/// Template keys that name places of the installing machine or of the
/// A/B layout (slots, its boot partition, a state directory): a
/// network-booted machine has none of them, and the boot step writes its
/// own `mode` and `state_dir`.
const DROPPED_KEYS: &[&str] = &[
    "slots",
    "state_dir",
    "bootloader",
    "boot_dir",
    "boot_device",
    "slot_size",
    "mode",
];

/// GRUB's menu on the cache partition. The mount daemon writes
/// `/boot/slate.cfg` (the newest snapshot whose cache is complete) only
/// once its kernel and initramfs are synced; without it there is nothing
/// to boot, and `exit` hands the machine back to the firmware, which tries
/// its next boot device (UEFI returns to its boot manager; on a BIOS,
/// GRUB raises INT 18h, "boot failed"), so that a machine whose network
/// was down at power-on tries again rather than waiting here.
pub const GRUB_CFG: &str = "# Written by `slate install --mode cached` (docs/boot.md). slate's mount daemon\n\
# writes /boot/slate.cfg once this disk's cache holds a complete snapshot.\n\
serial --unit=0 --speed=115200\n\
terminal_input serial console\n\
terminal_output serial console\n\
if [ -f /boot/slate.cfg ]; then\n\
\tsource /boot/slate.cfg\n\
else\n\
\techo \"slate: the cache on this disk holds no complete snapshot yet;\"\n\
\techo \"slate: the machine must boot from the network first.\"\n\
\techo \"slate: back to the firmware (next boot device) in 10 seconds.\"\n\
\tsleep 10\n\
\texit\n\
fi\n";

/// Modules built into GRUB's BIOS core image: read the cache partition
/// (ext4 on GPT), find it by UUID, run the menu and boot a kernel without
/// loading anything else.
const BIOS_MODULES: &[&str] = &[
    "biosdisk",
    "part_gpt",
    "ext2",
    "search",
    "search_fs_uuid",
    "search_label",
    "normal",
    "configfile",
    "linux",
    "echo",
    "test",
    "sleep",
    "minicmd",
    "serial",
    "terminal",
    "ls",
    "cat",
    "gzio",
];

/// Modules built into GRUB's EFI image: the same, with the EFI console
/// (`efi_gop`, which the kernel's framebuffer needs) and FAT.
const EFI_MODULES: &[&str] = &[
    "part_gpt",
    "ext2",
    "fat",
    "search",
    "search_fs_uuid",
    "search_label",
    "normal",
    "configfile",
    "linux",
    "echo",
    "test",
    "sleep",
    "minicmd",
    "serial",
    "terminal",
    "efi_gop",
    "ls",
    "cat",
    "gzio",
];

/// Where GRUB's EFI files are (grub-efi-amd64-bin).
const GRUB_EFI_DIR: &str = "/usr/lib/grub/x86_64-efi";

/// GRUB's embedded configuration: the cache partition by its filesystem
/// UUID (a label could be another disk's: a second cached disk, a stick
/// made for another machine), and the prefix there.
pub fn early_cfg(uuid: &str) -> String {
    format!("search --no-floppy --fs-uuid --set=root {uuid}\nset prefix=($root)/boot/grub\n")
}

/// The partitions of a cache disk of `disk_bytes`, or why it is too small.
pub fn layout(disk_bytes: u64, firmware: Firmware) -> Result<Vec<Part>> {
    let first = match firmware {
        Firmware::Bios => ("bios-boot", "EF02", BIOS_BOOT_SIZE),
        Firmware::Uefi => ("slate-esp", "EF00", ESP_SIZE),
    };
    let too_small = |_| {
        Error::Local(format!(
            "the disk holds {} MiB; a disk for a network-booted machine needs at least {} MiB \
             (its cache must hold a snapshot or two)",
            disk_bytes >> 20,
            MIN_DISK >> 20
        ))
    };
    if disk_bytes < MIN_DISK {
        return Err(too_small(0));
    }
    lay_out(disk_bytes, &[first], (CACHE_LABEL, "8300"), 0).map_err(too_small)
}

/// One file of the partition's `config/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFile {
    /// Path under `config/`.
    pub path: String,
    /// Content.
    pub data: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
}

/// The partition's `config/`, made from a template AGENT.toml.
#[derive(Debug, Clone)]
pub struct ConfigFiles {
    /// The template.
    pub template: PathBuf,
    /// `agent.toml`, the keys in `keys/`, `token`.
    pub files: Vec<ConfigFile>,
}

/// An array of path strings under `key`, or nothing.
fn paths(t: &toml::Table, key: &str, template: &Path) -> Result<Vec<PathBuf>> {
    let bad = || Error::Config(format!("{}: `{key}` must be a list of file paths", template.display()));
    match t.get(key) {
        None => Ok(Vec::new()),
        Some(toml::Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(PathBuf::from).ok_or_else(bad))
            .collect(),
        Some(_) => Err(bad()),
    }
}

fn read(p: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(p).map_err(|e| Error::Config(format!("cannot read {what} {}: {e}", p.display())))
}

/// The partition's `config/` from the template AGENT.toml `text` (read
/// from `template`): the template without the keys of the A/B layout, its
/// trusted keys (`release-N.pub`, `fleet-N.pub`) and servers' CA files
/// (`ca-N.pem`) copied into `keys/`, its token into `token` (mode 0600),
/// and every path rewritten to where the partition is mounted at boot.
/// Everything is read and checked here, before the disk is touched.
pub fn config_files(template: &Path, text: &str) -> Result<ConfigFiles> {
    let mut t: toml::Table = text
        .parse()
        .map_err(|e| Error::Config(format!("{}: {e}", template.display())))?;
    for k in DROPPED_KEYS {
        t.remove(*k);
    }
    let mut files = Vec::new();
    let on_disk = |rel: &str| toml::Value::String(format!("{BOOT_MOUNT}/config/{rel}"));
    // Release and fleet keys by role and number: two key files of the same
    // name cannot overwrite each other, and the role shows in the name.
    for (key, role) in [("trust", "release"), ("fleet_trust", "fleet")] {
        let mut rewritten = Vec::new();
        for (i, p) in paths(&t, key, template)?.iter().enumerate() {
            let data = read(p, "trusted key")?;
            let text = String::from_utf8_lossy(&data);
            slate_core::keys::PublicKey::from_text(&text)
                .map_err(|e| Error::Config(format!("{}: {e}", p.display())))?;
            let rel = format!("keys/{role}-{}.pub", i + 1);
            rewritten.push(on_disk(&rel));
            files.push(ConfigFile {
                path: rel,
                data,
                mode: 0o644,
            });
        }
        if t.contains_key(key) {
            t.insert(key.into(), toml::Value::Array(rewritten));
        }
    }
    // A server's CA file must exist on the machine too.
    let mut ca = 0;
    if let Some(toml::Value::Array(servers)) = t.get_mut("server") {
        for s in servers.iter_mut().filter_map(toml::Value::as_table_mut) {
            let Some(v) = s.get("ca_file") else { continue };
            let p = v.as_str().map(PathBuf::from).ok_or_else(|| {
                Error::Config(format!(
                    "{}: a server's `ca_file` must be a file path",
                    template.display()
                ))
            })?;
            ca += 1;
            let rel = format!("keys/ca-{ca}.pem");
            files.push(ConfigFile {
                path: rel.clone(),
                data: read(&p, "CA file")?,
                mode: 0o644,
            });
            s.insert("ca_file".into(), on_disk(&rel));
        }
    }
    if let Some(v) = t.get("token_file") {
        let p = v
            .as_str()
            .map(PathBuf::from)
            .ok_or_else(|| Error::Config(format!("{}: `token_file` must be a file path", template.display())))?;
        let token = crate::config::read_token(&p)?;
        files.push(ConfigFile {
            path: "token".into(),
            data: format!("{token}\n").into_bytes(),
            mode: 0o600,
        });
        t.insert("token_file".into(), on_disk("token"));
    }
    let body = toml::to_string(&t).map_err(|e| Error::Local(format!("cannot write agent.toml: {e}")))?;
    let agent = format!(
        "# Written by `slate install --mode cached` from {}: the machine's settings\n\
         # for its network boot (docs/boot.md), with paths where this partition is\n\
         # mounted at boot ({BOOT_MOUNT}).\n{body}",
        template.display()
    );
    files.insert(
        0,
        ConfigFile {
            path: "agent.toml".into(),
            data: agent.into_bytes(),
            // It may name the token file and the machine's identity.
            mode: 0o600,
        },
    );
    Ok(ConfigFiles {
        template: template.to_path_buf(),
        files,
    })
}

/// What `slate install --mode cached` is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// Block device or raw image file.
    pub disk: PathBuf,
    /// Create the image file with this size when it does not exist.
    pub create_size: Option<u64>,
    /// How the machine starts.
    pub firmware: Firmware,
    /// Template AGENT.toml for `config/` (servers, keys, token, identity).
    pub template: Option<PathBuf>,
}

/// What will be done: everything read and checked, nothing changed yet.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The disk.
    pub disk: PathBuf,
    /// Whether the image file is to be created.
    pub create: bool,
    /// Its size.
    pub disk_bytes: u64,
    /// How the machine starts.
    pub firmware: Firmware,
    /// The partitions.
    pub partitions: Vec<Part>,
    /// UUID of the cache filesystem (GRUB finds it by this).
    pub fs_uuid: String,
    /// The partition's `config/`, if a template was given.
    pub config: Option<ConfigFiles>,
}

/// A random (version 4) UUID.
fn new_uuid() -> Result<String> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).map_err(|e| Error::Local(format!("no randomness for a filesystem UUID: {e}")))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

/// Check the disk and read the template: what [`apply`] will do.
pub fn plan(o: &Options) -> Result<Plan> {
    let disk_bytes = planned_disk_size(&o.disk, o.create_size)?;
    let partitions = layout(disk_bytes, o.firmware)?;
    let config = match &o.template {
        Some(t) => {
            let text =
                std::fs::read_to_string(t).map_err(|e| Error::Config(format!("cannot read {}: {e}", t.display())))?;
            Some(config_files(t, &text)?)
        }
        None => None,
    };
    // The tools, before anything is destroyed.
    let grub = match o.firmware {
        Firmware::Bios => super::GRUB_BIOS_DIR,
        Firmware::Uefi => GRUB_EFI_DIR,
    };
    if !Path::new(grub).join("moddep.lst").is_file() {
        return Err(Error::Local(format!(
            "GRUB's files for this firmware are missing ({grub}): install {}",
            match o.firmware {
                Firmware::Bios => "grub-pc-bin",
                Firmware::Uefi => "grub-efi-amd64-bin",
            }
        )));
    }
    Ok(Plan {
        disk: o.disk.clone(),
        create: !o.disk.exists(),
        disk_bytes,
        firmware: o.firmware,
        partitions,
        fs_uuid: new_uuid()?,
        config,
    })
}

impl Plan {
    /// What will happen, in lines for a person to read.
    pub fn describe(&self) -> Vec<String> {
        let mut l = vec![format!(
            "{} {} ({} MiB, {}): a disk for a network-booted machine; everything on it is destroyed",
            if self.create { "new image" } else { "disk" },
            self.disk.display(),
            self.disk_bytes >> 20,
            match self.firmware {
                Firmware::Bios => "BIOS",
                Firmware::Uefi => "UEFI",
            }
        )];
        for (i, p) in self.partitions.iter().enumerate() {
            let what = match p.name {
                "bios-boot" => "GRUB's core image".to_string(),
                "slate-esp" => "FAT32, GRUB as EFI/BOOT/BOOTX64.EFI".to_string(),
                _ => format!(
                    "ext4 \"{CACHE_LABEL}\" (UUID {}): cache/, store/, boot/ (GRUB's modules and menu), config/",
                    self.fs_uuid
                ),
            };
            l.push(format!(
                "  {} {:<12} {:>8} MiB at {:>5} MiB  {what}",
                i + 1,
                p.name,
                p.bytes >> 20,
                p.offset() >> 20
            ));
        }
        match &self.config {
            Some(c) => l.push(format!(
                "  config/: {} from {}",
                c.files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>().join(", "),
                c.template.display()
            )),
            None => l.push("  config/: empty (no --config)".into()),
        }
        l.push(
            "  boots from the network first; from this disk, without a server, once its cache holds a \
             complete snapshot"
                .into(),
        );
        l
    }
}

/// What was done.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Always `cached`.
    pub mode: &'static str,
    /// The disk.
    pub disk: PathBuf,
    /// Its size.
    pub disk_bytes: u64,
    /// Firmware it boots with.
    pub firmware: Firmware,
    /// Its partitions.
    pub partitions: Vec<Part>,
    /// The cache filesystem's label.
    pub filesystem_label: &'static str,
    /// The cache filesystem's UUID.
    pub filesystem_uuid: String,
    /// The template AGENT.toml, if one was given.
    pub template: Option<PathBuf>,
    /// Files written under `config/`.
    pub config_files: Vec<String>,
}

/// The cache partition's directories, `config/` and GRUB's menu.
fn fill_cache(root: &Path, plan: &Plan) -> Result<()> {
    for d in DIRS {
        let p = root.join(d);
        std::fs::create_dir_all(&p).map_err(|e| Error::Local(format!("cannot create {}: {e}", p.display())))?;
    }
    for f in plan.config.iter().flat_map(|c| &c.files) {
        write_file(&root.join("config").join(&f.path), &f.data, f.mode)?;
    }
    write_file(&root.join("boot/grub/grub.cfg"), GRUB_CFG.as_bytes(), 0o644)
}

/// Lay the disk out as planned. Work files (mount points, GRUB's early
/// configuration, the staged ESP) go to `work`.
pub fn apply(plan: &Plan, work: &Path) -> Result<Report> {
    if plan.create {
        create_image(&plan.disk, plan.disk_bytes)?;
    }
    // The disk may have changed since the plan was made.
    check_not_in_use(&plan.disk)?;
    let now = disk_size(&plan.disk)?;
    if now != plan.disk_bytes {
        return Err(Error::Local(format!(
            "{} changed size since the plan ({} bytes, now {now})",
            plan.disk.display(),
            plan.disk_bytes
        )));
    }
    let cache_n = plan.partitions.len();
    let cache = &plan.partitions[cache_n - 1];
    let mut staged = plan.partitions.clone();
    staged[cache_n - 1].name = PENDING_LABEL;
    write_gpt(&plan.disk, &staged)?;

    let cache_loop = Loop::new(&plan.disk, cache)?;
    mkfs_ext4(&cache_loop.dev, CACHE_LABEL, Some(&plan.fs_uuid))?;
    let esp_loop = match plan.firmware {
        Firmware::Bios => None,
        Firmware::Uefi => {
            let l = Loop::new(&plan.disk, &plan.partitions[0])?;
            mkfs_esp(&l.dev)?;
            Some(l)
        }
    };
    std::fs::create_dir_all(work).map_err(|e| Error::Local(format!("cannot create {}: {e}", work.display())))?;
    let early = early_cfg(&plan.fs_uuid);
    {
        let mnt = Mount::new(&cache_loop.dev, work.join("cache"))?;
        fill_cache(&mnt.at, plan)?;
        let grub_dir = mnt.at.join("boot/grub");
        match (plan.firmware, &esp_loop) {
            (Firmware::Bios, _) => install_grub_bios(&plan.disk, &grub_dir, "/boot/grub", &early, BIOS_MODULES, work)?,
            (Firmware::Uefi, Some(esp)) => {
                copy_grub_modules(Path::new(GRUB_EFI_DIR), &grub_dir.join("x86_64-efi"))?;
                let stage = work.join("esp");
                let _ = std::fs::remove_dir_all(&stage);
                grub_mkimage(
                    "x86_64-efi",
                    "/boot/grub",
                    &early,
                    EFI_MODULES,
                    &stage.join("EFI/BOOT/BOOTX64.EFI"),
                    work,
                )?;
                mcopy_tree(&esp.dev, &stage)?;
            }
            (Firmware::Uefi, None) => unreachable!("a UEFI layout has an ESP"),
        }
    }
    drop(esp_loop);
    drop(cache_loop);
    sync_disk(&plan.disk)?;
    // The commit point: from here on the network boot takes the partition
    // for this machine's cache.
    run(
        Command::new("sgdisk")
            .arg(format!("--change-name={cache_n}:{CACHE_LABEL}"))
            .arg(&plan.disk),
        "sgdisk --change-name",
    )?;
    sync_disk(&plan.disk)?;
    Ok(Report {
        mode: "cached",
        disk: plan.disk.clone(),
        disk_bytes: plan.disk_bytes,
        firmware: plan.firmware,
        partitions: plan.partitions.clone(),
        filesystem_label: CACHE_LABEL,
        filesystem_uuid: plan.fs_uuid.clone(),
        template: plan.config.as_ref().map(|c| c.template.clone()),
        config_files: plan
            .config
            .iter()
            .flat_map(|c| &c.files)
            .map(|f| format!("config/{}", f.path))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::{MIB, SECTOR};
    use super::*;

    #[test]
    fn layouts_fill_the_disk_after_grubs_place() {
        for (fw, first, size) in [
            (Firmware::Bios, "bios-boot", BIOS_BOOT_SIZE),
            (Firmware::Uefi, "slate-esp", ESP_SIZE),
        ] {
            let disk = 2u64 << 30;
            let p = layout(disk, fw).unwrap();
            let names: Vec<_> = p.iter().map(|p| p.name).collect();
            assert_eq!(names, [first, CACHE_LABEL]);
            assert_eq!(p[0].start, MIB, "the first partition starts at 1 MiB");
            assert_eq!(p[0].bytes, size);
            assert_eq!(p[0].start + p[0].sectors, p[1].start, "contiguous");
            assert_eq!(p[1].start % MIB, 0);
            assert_eq!(p[1].sectors % MIB, 0);
            // The rest, but the last MiB (the backup GPT is there).
            assert_eq!((p[1].start + p[1].sectors) * SECTOR, disk - (1 << 20));
            for x in &p {
                assert_eq!(x.bytes, x.sectors * SECTOR);
            }
        }
        let p = layout(2 << 30, Firmware::Bios).unwrap();
        assert_eq!(p[1].bytes, (2048 - 3) << 20);
        let p = layout(2 << 30, Firmware::Uefi).unwrap();
        assert_eq!(p[1].bytes, (2048 - 258) << 20);
    }

    #[test]
    fn a_disk_under_one_gib_is_refused() {
        assert!(layout(MIN_DISK, Firmware::Uefi).is_ok());
        assert!(layout(MIN_DISK, Firmware::Bios).is_ok());
        let odd = layout(MIN_DISK + 12345, Firmware::Bios).unwrap();
        assert_eq!(odd[1].sectors % MIB, 0, "MiB boundaries on a disk of any size");
        for n in [MIN_DISK - 1, 512 << 20, 0] {
            let e = layout(n, Firmware::Bios).unwrap_err().to_string();
            assert!(e.contains("needs at least 1024 MiB"), "{e}");
            assert!(e.contains(&format!("holds {} MiB", n >> 20)), "{e}");
        }
    }

    #[test]
    fn uuids_are_version_4() {
        let u = new_uuid().unwrap();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!("89ab".contains(&u[19..20]));
        assert_ne!(u, new_uuid().unwrap());
        assert!(early_cfg(&u).contains(&format!("--fs-uuid --set=root {u}\n")));
    }

    #[test]
    fn grub_cfg_boots_the_cache_or_hands_back() {
        assert!(GRUB_CFG.contains("serial --unit=0 --speed=115200\n"));
        assert!(GRUB_CFG.contains("terminal_output serial console\n"));
        let (then, otherwise) = GRUB_CFG.split_once("else").unwrap();
        assert!(then.contains("if [ -f /boot/slate.cfg ]; then") && then.contains("source /boot/slate.cfg"));
        assert!(otherwise.contains("echo") && otherwise.contains("sleep 10") && otherwise.contains("exit"));
    }

    #[test]
    fn config_files_copy_keys_and_token_and_rewrite_paths() {
        let d = tempfile::tempdir().unwrap();
        let key = |n: &str| {
            let p = d.path().join(n);
            let k = slate_core::keys::SecretKey::generate().unwrap().public();
            std::fs::write(&p, k.to_text()).unwrap();
            p
        };
        let (k1, k2, f1) = (key("release.pub"), key("other.pub"), key("release2.pub"));
        let ca = d.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let tok = d.path().join("token");
        std::fs::write(&tok, "  tok-123 \nignored\n").unwrap();
        let template = d.path().join("t.toml");
        let text = format!(
            "server = [\"http://10.0.0.1:8470\", {{ url = \"https://s\", ca_file = {ca:?} }}]\n\
             trust = [{k1:?}, {k2:?}]\nfleet_trust = [{f1:?}]\ntoken_file = {tok:?}\n\
             state_dir = \"/var/lib/slate\"\nbootloader = \"grub\"\nmachine_id = \"m1\"\n\
             [slots]\na = \"/dev/a\"\nb = \"/dev/b\"\n[labels]\nroom = \"b12\"\n"
        );
        let c = config_files(&template, &text).unwrap();
        let names: Vec<_> = c.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            names,
            [
                "agent.toml",
                "keys/release-1.pub",
                "keys/release-2.pub",
                "keys/fleet-1.pub",
                "keys/ca-1.pem",
                "token"
            ]
        );
        let file = |n: &str| c.files.iter().find(|f| f.path == n).unwrap();
        assert_eq!(file("token").data, b"tok-123\n");
        assert_eq!(file("token").mode, 0o600);
        assert_eq!(file("keys/fleet-1.pub").data, std::fs::read(&f1).unwrap());
        let agent: toml::Table = std::str::from_utf8(&file("agent.toml").data).unwrap().parse().unwrap();
        let at = |rel: &str| toml::Value::String(format!("{BOOT_MOUNT}/config/{rel}"));
        assert_eq!(
            agent["trust"],
            toml::Value::Array(vec![at("keys/release-1.pub"), at("keys/release-2.pub")])
        );
        assert_eq!(agent["fleet_trust"], toml::Value::Array(vec![at("keys/fleet-1.pub")]));
        assert_eq!(agent["token_file"], at("token"));
        assert_eq!(agent["server"][1]["ca_file"], at("keys/ca-1.pem"));
        assert_eq!(agent["server"][0].as_str(), Some("http://10.0.0.1:8470"));
        assert_eq!(agent["machine_id"].as_str(), Some("m1"));
        assert_eq!(agent["labels"]["room"].as_str(), Some("b12"));
        for gone in ["slots", "state_dir", "bootloader"] {
            assert!(!agent.contains_key(gone), "{gone}");
        }

        // No keys, no token: nothing but agent.toml.
        let c = config_files(&template, "server = \"http://s\"\n").unwrap();
        assert_eq!(c.files.len(), 1);

        // What cannot be right is refused before the disk is touched.
        for bad in [
            "trust = \"/k.pub\"\n".to_string(),
            format!("trust = [{:?}]\n", d.path().join("missing.pub")),
            format!("trust = [{tok:?}]\n"),
            format!("token_file = {:?}\n", d.path().join("missing")),
            format!("token_file = {:?}\n", d.path()),
            "server = [".into(),
        ] {
            assert!(config_files(&template, &bad).is_err(), "{bad}");
        }
    }
}
