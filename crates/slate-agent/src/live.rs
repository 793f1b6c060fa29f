//! Live images: the fleet's signed snapshot as a hybrid ISO that boots a
//! PC from a CD or a USB stick (`slate image iso`), the initramfs step that
//! finds and checks the medium at boot (`slate image mount-live`), the
//! offline check of a medium (`slate image verify`) and the medium as a
//! source for an offline install (`slate install --from-live`).
//!
//! The root is a squashfs image of the snapshot's tree with a dm-verity
//! hash tree appended. A record signed by a release key ([`LiveRecord`])
//! binds the snapshot id to the verity root hash; at boot the initramfs
//! checks the record with the keys built into the image and gives the
//! kernel nothing but the signed parameters, so every block read from the
//! root is checked against the signed root hash on its way: a block that
//! differs fails its read and is never handed to a program. The kernel and
//! initramfs on the medium are the snapshot's own files; what starts them
//! (the firmware, GRUB) is not covered at boot, and `slate image verify`
//! checks them on a trusted machine (docs/live.md, "What is checked").
//!
//! On the medium, under `slate/`: `live.rec` (the signed record),
//! `snapshot`, `snapshot.sigs` and `manifest` (the signed snapshot record,
//! its signatures and its manifest, for offline installs and pulls),
//! `root.img`, `vmlinuz`, `initrd.img`, `keys.img` (a cpio archive with the
//! public keys the initramfs checks the record with) and, with `--policy`,
//! `state.toml` (its hash is in the record).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use slate_core::keys::{PublicKey, SecretKey};
use slate_core::snapshot::{decode_signatures, encode_signatures, Snapshot, SnapshotSignature};
use slate_core::trust::{LiveRecord, LIVE_BLOCK};
use slate_core::{Id32, SnapshotId};
use slate_repo::progress::Progress;
use slate_repo::Repo;

use crate::error::{Error, Result};
use crate::install::{run, write_file, Loop, Mount};

/// The directory on the medium that holds slate's files.
pub const MEDIUM_DIR: &str = "slate";
/// The signed record.
pub const RECORD: &str = "live.rec";
/// The root image: squashfs, then its hash tree.
pub const ROOT_IMAGE: &str = "root.img";
/// The encoded snapshot record.
pub const SNAPSHOT: &str = "snapshot";
/// Its signatures.
pub const SIGNATURES: &str = "snapshot.sigs";
/// Its manifest.
pub const MANIFEST: &str = "manifest";
/// The snapshot's kernel, which GRUB starts.
pub const KERNEL: &str = "vmlinuz";
/// The snapshot's initramfs.
pub const INITRD: &str = "initrd.img";
/// The image's own state policy (`--policy`).
pub const POLICY: &str = "state.toml";
/// The cpio archive with the keys the initramfs checks the record with.
pub const KEYS_INITRD: &str = "keys.img";
/// Where that archive puts the keys in the initramfs.
pub const LIVE_KEYS_DIR: &str = "etc/slate/live-keys";
/// Filesystem label of a stick's persistence partition (ext4).
pub const PERSIST_LABEL: &str = "slate-persist";
/// Where the initramfs step leaves what it found; it moves into the
/// booted system with /run.
pub const RUN_DIR: &str = "/run/slate/live";
/// The device-mapper name of the verified root at boot.
const DM_NAME: &str = "slate-live";
/// Largest record accepted (it is a few hundred bytes).
const MAX_RECORD: u64 = 64 << 10;

/// How the root image is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// zstd in 1 MiB blocks: about twice as fast to make as xz, 4% larger,
    /// and faster to read (the default).
    Zstd,
    /// xz in 1 MiB blocks with the x86 filter: the smallest image, the slowest to make.
    Xz,
    /// lz4: the fastest to make and read, about 40% larger.
    Lz4,
}

impl Compression {
    fn mksquashfs_args(self) -> &'static [&'static str] {
        match self {
            Compression::Zstd => &["-comp", "zstd", "-b", "1M"],
            Compression::Xz => &["-comp", "xz", "-b", "1M", "-Xbcj", "x86"],
            Compression::Lz4 => &["-comp", "lz4", "-Xhc", "-b", "1M"],
        }
    }
}

/// What `slate image iso` makes.
pub struct IsoOptions<'a> {
    /// The repository holding the snapshot.
    pub repo: &'a Repo,
    /// A channel, `CHANNEL~N` or a snapshot id.
    pub spec: &'a str,
    /// The ISO file to write (replaced atomically).
    pub output: PathBuf,
    /// Release keys that sign the record; each must have signed the snapshot.
    pub sign: &'a [SecretKey],
    /// More public keys the initramfs accepts the record from.
    pub boot_keys: Vec<PublicKey>,
    /// The state policy to boot with instead of the tree's.
    pub policy: Option<Vec<u8>>,
    /// Size of a persistence partition for `local` and `backup` paths.
    pub persistence: Option<u64>,
    /// The kernel command line (besides what slate adds).
    pub kernel_cmdline: String,
    /// How the root image is compressed.
    pub compression: Compression,
}

/// What was made.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IsoReport {
    /// The ISO file.
    pub image: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// The snapshot it holds.
    pub snapshot: String,
    /// Bytes of the root image with its hash tree.
    pub root_image_bytes: u64,
    /// Bytes of file data in the tree.
    pub tree_bytes: u64,
    /// How the root is compressed.
    pub compression: Compression,
    /// Size of the persistence partition (0: none).
    pub persistence_bytes: u64,
    /// Fingerprints of the keys the initramfs accepts the record from.
    pub keys: Vec<String>,
    /// The dm-verity root hash.
    pub root_hash: String,
    /// Wall time.
    pub seconds: f64,
}

/// A directory removed when dropped (the image's scratch space, beside
/// the output so the big files never cross filesystems).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn local<E: std::fmt::Display>(what: impl std::fmt::Display) -> impl FnOnce(E) -> Error {
    move |e| Error::Local(format!("{what}: {e}"))
}

/// Make a live ISO of a snapshot.
pub fn build_iso(o: &IsoOptions<'_>, progress: &dyn Progress) -> Result<IsoReport> {
    let started = Instant::now();
    if o.sign.is_empty() {
        return Err(Error::Config(
            "a live image needs a release key to sign its record (--sign KEY)".into(),
        ));
    }
    let id = o.repo.resolve(o.spec)?;
    let hex = id.to_hex();
    let snap = o.repo.read_snapshot(&id)?;
    let sigs = o.repo.read_signatures(&id)?;
    // The record says "this root is that snapshot": only a key that
    // vouched for the snapshot may say so.
    for k in o.sign {
        let public = k.public();
        if !sigs.iter().any(|s| s.key == public && s.verify(&id).is_ok()) {
            return Err(Error::Untrusted(format!(
                "snapshot {} carries no valid signature by key {}: sign the image with a key that released it",
                &hex[..12],
                public.fingerprint()
            )));
        }
    }
    let index = o.repo.load_index()?;
    let manifest_bytes = o.repo.read_manifest_bytes(&snap, &index)?;
    let manifest = slate_core::manifest::decode(&manifest_bytes)
        .map_err(|e| Error::Local(format!("manifest of {}: {e}", &hex[..12])))?;
    if let Some(p) = &o.policy {
        let text = std::str::from_utf8(p).map_err(|_| Error::Config("the state policy is not UTF-8".into()))?;
        slate_state::Policy::parse(text, Path::new("--policy"))
            .map_err(|e| Error::Config(format!("the state policy does not parse: {e}")))?;
    }

    let out_dir = match o.output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let work = Scratch(out_dir.join(format!(
        ".{}.slate-work-{}",
        o.output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    )));
    let _ = std::fs::remove_dir_all(&work.0);
    let tree = work.0.join("tree");
    let stage = work.0.join("stage");
    let medium = stage.join(MEDIUM_DIR);
    std::fs::create_dir_all(&medium).map_err(local(format!("cannot create {}", medium.display())))?;

    progress.start("checkout", manifest.total_file_bytes());
    let stats = o.repo.checkout(&hex, &tree, false, progress)?;
    progress.finish();

    // The snapshot's own kernel and initramfs; the initramfs must carry
    // slate's live step (`slate prepare` puts it in).
    let (kernel, initrd) = kernel_files(&tree)?;
    if !tree.join("etc/initramfs-tools/scripts/slate-live").is_file() {
        return Err(Error::Local(format!(
            "snapshot {} has no live boot step in its initramfs: run `slate prepare` on the tree with this \
             slate and commit it again",
            &hex[..12]
        )));
    }
    // They are on the medium once, where GRUB loads them, not also in the
    // root image (an offline install takes them from there, each chunk
    // checked against the manifest).
    std::fs::rename(&kernel, medium.join(KERNEL)).map_err(local("cannot move the kernel"))?;
    std::fs::rename(&initrd, medium.join(INITRD)).map_err(local("cannot move the initramfs"))?;

    let root = medium.join(ROOT_IMAGE);
    progress.start("squashfs", 0);
    run(
        Command::new("mksquashfs")
            .arg(&tree)
            .arg(&root)
            .args(o.compression.mksquashfs_args())
            // A bounded cache keeps the whole command under a few hundred MB.
            .args(["-mem", "160M", "-noappend", "-no-progress", "-quiet"]),
        "mksquashfs",
    )?;
    progress.finish();
    let _ = std::fs::remove_dir_all(&tree);

    // dm-verity over whole 4096-byte blocks, the hash tree right after.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&root)
        .map_err(local(format!("cannot open {}", root.display())))?;
    let len = f.metadata().map_err(local("cannot stat the root image"))?.len();
    let data_bytes = len.div_ceil(LIVE_BLOCK) * LIVE_BLOCK;
    f.set_len(data_bytes).map_err(local("cannot pad the root image"))?;
    drop(f);
    let made_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut salt = [0u8; 32];
    getrandom::getrandom(&mut salt).map_err(local("cannot make a salt"))?;
    progress.start("verity", data_bytes);
    let tree_hashes = {
        let mut f = std::fs::File::open(&root).map_err(local(format!("cannot read {}", root.display())))?;
        crate::verity::tree(&mut f, data_bytes / LIVE_BLOCK, &salt).map_err(local("cannot hash the root image"))?
    };
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&root)
            .map_err(local(format!("cannot open {}", root.display())))?;
        f.write_all(&tree_hashes.bytes)
            .map_err(local("cannot write the hash tree"))?;
    }
    let root_hash = tree_hashes.root;
    progress.finish();
    let root_image_bytes = std::fs::metadata(&root)
        .map_err(local("cannot stat the root image"))?
        .len();

    let record = LiveRecord {
        snapshot: id,
        filesystem: "squashfs".into(),
        data_bytes,
        hash_offset: data_bytes,
        salt,
        root_hash,
        policy: o.policy.as_ref().map(|p| Id32::hash(p).0),
        made_at,
    };
    let signers: Vec<&SecretKey> = o.sign.iter().collect();
    write_file(&medium.join(RECORD), record.to_text(&signers).as_bytes(), 0o644)?;
    write_file(&medium.join(SNAPSHOT), &snap.encode(), 0o644)?;
    write_file(&medium.join(SIGNATURES), &encode_signatures(&sigs), 0o644)?;
    write_file(&medium.join(MANIFEST), &manifest_bytes, 0o644)?;
    if let Some(p) = &o.policy {
        write_file(&medium.join(POLICY), p, 0o644)?;
    }
    let mut keys: Vec<PublicKey> = o.sign.iter().map(SecretKey::public).collect();
    for k in &o.boot_keys {
        if !keys.contains(k) {
            keys.push(*k);
        }
    }
    write_file(&medium.join(KEYS_INITRD), &keys_cpio(&keys), 0o644)?;
    write_file(
        &stage.join("boot/grub/grub.cfg"),
        grub_cfg(&hex, &o.kernel_cmdline).as_bytes(),
        0o644,
    )?;

    progress.start("iso", 0);
    let iso = work.0.join("image.iso");
    run(
        Command::new("grub-mkrescue")
            .arg("-o")
            .arg(&iso)
            .arg(&stage)
            .arg("--")
            .args(["-volid", &format!("SLATE_{}", hex[..8].to_uppercase())]),
        "grub-mkrescue (grub-pc-bin, grub-efi-amd64-bin, xorriso, mtools)",
    )?;
    progress.finish();
    let persistence_bytes = match o.persistence {
        Some(n) => add_persistence(&iso, n)?,
        None => 0,
    };
    let f = std::fs::File::open(&iso).map_err(local("cannot open the image"))?;
    f.sync_all().map_err(local("cannot sync the image"))?;
    let bytes = f.metadata().map_err(local("cannot stat the image"))?.len();
    drop(f);
    std::fs::rename(&iso, &o.output).map_err(local(format!("cannot write {}", o.output.display())))?;
    Ok(IsoReport {
        image: o.output.clone(),
        bytes,
        snapshot: hex,
        root_image_bytes,
        tree_bytes: stats.bytes,
        compression: o.compression,
        persistence_bytes,
        keys: keys.iter().map(PublicKey::fingerprint).collect(),
        root_hash: hex::encode(root_hash),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The newest kernel in the tree's /boot and its initramfs.
fn kernel_files(tree: &Path) -> Result<(PathBuf, PathBuf)> {
    let boot = tree.join("boot");
    let names = std::fs::read_dir(&boot)
        .map_err(local(format!("cannot list {}", boot.display())))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned());
    let (k, i) = crate::boot::newest_kernel(names).ok_or_else(|| {
        Error::Local("the snapshot has no kernel in /boot: a live image boots the snapshot's own".into())
    })?;
    let initrd = boot.join(&i);
    if !initrd.is_file() {
        return Err(Error::Local(format!("the snapshot has {k} but no /boot/{i}")));
    }
    Ok((boot.join(k), initrd))
}

/// GRUB's menu on the medium: the live system, and the same without its
/// declared state (rescue), on serial and screen consoles.
fn grub_cfg(snapshot: &str, cmdline: &str) -> String {
    let short = &snapshot[..12];
    let args = format!("boot=slate-live slate.live={snapshot} slate.slot=live ro {cmdline}");
    format!(
        "# Written by `slate image iso` for snapshot {snapshot}.\n\
         serial --unit=0 --speed=115200\n\
         terminal_input serial console\n\
         terminal_output serial console\n\
         set timeout=2\n\
         menuentry \"slate live {short}\" {{\n\
         \x20   linux /slate/vmlinuz {args}\n\
         \x20   initrd /slate/initrd.img /slate/keys.img\n\
         }}\n\
         menuentry \"slate live {short} (rescue: without its declared state)\" {{\n\
         \x20   linux /slate/vmlinuz {args} slate.nostate\n\
         \x20   initrd /slate/initrd.img /slate/keys.img\n\
         }}\n"
    )
}

/// A cpio archive (newc) holding the keys under [`LIVE_KEYS_DIR`]; the
/// kernel unpacks it over the snapshot's initramfs.
fn keys_cpio(keys: &[PublicKey]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ino = 1u32;
    let mut entry = |out: &mut Vec<u8>, name: &str, mode: u32, data: &[u8]| {
        let header = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        ino += 1;
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out.extend_from_slice(data);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    };
    let mut dir = String::new();
    for part in LIVE_KEYS_DIR.split('/') {
        if !dir.is_empty() {
            dir.push('/');
        }
        dir.push_str(part);
        entry(&mut out, &dir, 0o040755, b"");
    }
    for k in keys {
        entry(
            &mut out,
            &format!("{LIVE_KEYS_DIR}/{}.pub", k.fingerprint()),
            0o100644,
            k.to_text().as_bytes(),
        );
    }
    entry(&mut out, "TRAILER!!!", 0, b"");
    out
}

/// Grow the image by `bytes` and give the space to an ext4 partition
/// labelled [`PERSIST_LABEL`] in the image's GPT (seen when the image is
/// written to a stick; a CD has no partitions). Returns its size.
fn add_persistence(iso: &Path, bytes: u64) -> Result<u64> {
    if bytes < 64 << 20 {
        return Err(Error::Config("a persistence partition needs at least 64M".into()));
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(iso)
        .map_err(local("cannot open the image"))?;
    let len = f.metadata().map_err(local("cannot stat the image"))?.len();
    // Start on a MiB boundary; leave room for the backup GPT at the end.
    let start = len.div_ceil(1 << 20) * (1 << 20);
    f.set_len(start + bytes + (1 << 20))
        .map_err(local("cannot grow the image"))?;
    drop(f);
    run(Command::new("sgdisk").arg("-e").arg(iso), "sgdisk -e")?;
    let first = start / 512;
    let last = first + bytes / 512 - 1;
    let out = run(Command::new("sgdisk").arg("-p").arg(iso), "sgdisk -p")?;
    let number = out
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse::<u32>().ok())
        .max()
        .unwrap_or(0)
        + 1;
    run(
        Command::new("sgdisk")
            .arg(format!("--new={number}:{first}:{last}"))
            .arg(format!("--typecode={number}:8300"))
            .arg(format!("--change-name={number}:{PERSIST_LABEL}"))
            .arg(iso),
        "sgdisk (persistence partition)",
    )?;
    let part = crate::install::Part::new(PERSIST_LABEL, "8300", first, last - first + 1);
    let dev = Loop::new(iso, &part)?;
    run(
        Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-L",
                PERSIST_LABEL,
                "-E",
                "lazy_itable_init=1,lazy_journal_init=1",
            ])
            .arg(&dev.dev),
        "mkfs.ext4 (persistence partition)",
    )?;
    Ok(part.sectors * 512)
}

/// Read the keys in `dir` (`*.pub`).
pub fn load_keys(dir: &Path) -> Result<Vec<PublicKey>> {
    let mut keys = Vec::new();
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Error::Config(format!("no keys built into this image ({}: {e})", dir.display())))?;
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "pub") {
            let text = std::fs::read_to_string(&p).map_err(local(format!("cannot read {}", p.display())))?;
            keys.push(
                PublicKey::from_text(&text)
                    .map_err(|e| Error::Config(format!("{} is not a slate public key: {e}", p.display())))?,
            );
        }
    }
    if keys.is_empty() {
        return Err(Error::Config(format!(
            "no keys built into this image (none in {})",
            dir.display()
        )));
    }
    Ok(keys)
}

/// Read a file of at most `max` bytes.
fn read_limited(p: &Path, max: u64) -> Result<Vec<u8>> {
    let f = std::fs::File::open(p).map_err(local(format!("cannot read {}", p.display())))?;
    let mut data = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut data)
        .map_err(local(format!("cannot read {}", p.display())))?;
    if data.len() as u64 > max {
        return Err(Error::Untrusted(format!("{} is larger than {max} bytes", p.display())));
    }
    Ok(data)
}

/// Read and check a medium's record with `keys`; returns it and its signer.
fn checked_record(medium: &Path, keys: &[PublicKey], what: &str) -> Result<(LiveRecord, String, PublicKey)> {
    let data = read_limited(&medium.join(MEDIUM_DIR).join(RECORD), MAX_RECORD)?;
    let text =
        String::from_utf8(data).map_err(|_| Error::Untrusted(format!("refusing {what}: its record is not text")))?;
    let (rec, sigs) = LiveRecord::parse(&text).map_err(|e| Error::Untrusted(format!("refusing {what}: {e}")))?;
    let signer = rec
        .verify(&sigs, keys)
        .map_err(|e| Error::Untrusted(format!("refusing {what}: {e}")))?;
    Ok((rec, text, signer))
}

/// A device-mapper device, removed when dropped unless kept.
struct DmDevice {
    name: String,
    keep: bool,
}

impl DmDevice {
    /// Create the verified device `name` over `dev` as `rec` says.
    fn verity(name: &str, dev: &Path, rec: &LiveRecord) -> Result<DmDevice> {
        run(
            Command::new("dmsetup")
                .args(["create", name, "--readonly", "--noudevsync", "--table"])
                .arg(rec.verity_table(&dev.to_string_lossy())),
            "dmsetup create (dm-verity)",
        )?;
        let d = DmDevice {
            name: name.to_string(),
            keep: false,
        };
        // Without udev rules for device-mapper, the node is made here.
        let _ = Command::new("dmsetup").args(["mknodes", name]).status();
        Ok(d)
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/dev/mapper").join(&self.name)
    }

    /// Whether dm-verity has seen a block that does not match (status `C`).
    fn corrupted(&self) -> bool {
        Command::new("dmsetup")
            .args(["status", &self.name])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim_end().ends_with(" C"))
    }
}

impl Drop for DmDevice {
    fn drop(&mut self) {
        if !self.keep {
            let _ = Command::new("dmsetup")
                .args(["remove", "--noudevsync", &self.name])
                .status();
        }
    }
}

/// What the initramfs step found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LiveBoot {
    /// The device the medium is on.
    pub medium: PathBuf,
    /// The snapshot.
    pub snapshot: String,
    /// Fingerprint of the key that signed the record.
    pub signer: String,
    /// The persistence partition on the same stick, if any.
    pub persistence: Option<PathBuf>,
}

/// Block devices that may hold the medium: whole disks and partitions,
/// CD drives first; not loop, RAM or device-mapper devices.
fn candidates() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/sys/class/block")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.retain(|n| !(n.starts_with("loop") || n.starts_with("ram") || n.starts_with("dm-") || n.starts_with("zram")));
    v.sort_by_key(|n| (!n.starts_with("sr"), n.clone()));
    v
}

/// Whether `dev` starts like an ISO 9660 filesystem (its first volume
/// descriptor at 32 KiB).
fn is_iso9660(dev: &Path) -> bool {
    let Ok(mut f) = std::fs::File::open(dev) else {
        return false;
    };
    let mut b = [0u8; 6];
    f.seek(SeekFrom::Start(32768)).is_ok() && f.read_exact(&mut b).is_ok() && &b[1..6] == b"CD001"
}

/// The filesystem label of an ext2/3/4 filesystem on `dev`.
fn ext4_label(dev: &Path) -> Option<String> {
    let mut f = std::fs::File::open(dev).ok()?;
    let mut sb = [0u8; 136];
    f.seek(SeekFrom::Start(1024)).ok()?;
    f.read_exact(&mut sb).ok()?;
    if sb[56..58] != [0x53, 0xef] {
        return None;
    }
    let name = &sb[120..136];
    let end = name.iter().position(|&b| b == 0).unwrap_or(16);
    Some(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// The persistence partition on the disk that holds `medium` (a stick's
/// own partition; a label on another disk is never used).
fn persistence_on(medium: &str) -> Option<PathBuf> {
    let sys = Path::new("/sys/class/block").join(medium);
    let disk = if sys.join("partition").exists() {
        std::fs::canonicalize(&sys)
            .ok()?
            .parent()?
            .file_name()?
            .to_string_lossy()
            .into_owned()
    } else {
        medium.to_string()
    };
    let mut parts: Vec<String> = std::fs::read_dir(Path::new("/sys/class/block").join(&disk))
        .ok()?
        .flatten()
        .filter(|e| e.path().join("partition").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    parts.sort();
    parts
        .into_iter()
        .map(|p| PathBuf::from("/dev").join(p))
        .find(|p| ext4_label(p).as_deref() == Some(PERSIST_LABEL))
}

/// The snapshot id of `slate.live=` on a kernel command line.
pub fn cmdline_snapshot(cmdline: &str) -> Result<SnapshotId> {
    let v = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("slate.live="))
        .ok_or_else(|| Error::Config("the kernel command line has no slate.live=SNAPSHOT".into()))?;
    SnapshotId::from_hex(v).ok_or_else(|| Error::Config(format!("slate.live={v} is not a snapshot id")))
}

/// The initramfs step: find the medium holding `want`, check its record
/// with `keys`, set up the verified root and mount it read-only at `root`
/// (and again at `RUN_DIR/root`, the source of offline installs). Waits up
/// to `wait` for the medium to appear; a medium whose record does not
/// verify stops the search at once.
pub fn mount_live(
    root: &Path,
    want: &SnapshotId,
    keys: &[PublicKey],
    run_dir: &Path,
    wait: Duration,
) -> Result<LiveBoot> {
    let deadline = Instant::now() + wait;
    let medium_dir = run_dir.join("medium");
    let mut other = Vec::new();
    loop {
        for name in candidates() {
            let dev = PathBuf::from("/dev").join(&name);
            if !is_iso9660(&dev) {
                continue;
            }
            let what = format!("the live medium on {}", dev.display());
            // Through a loop device: a filesystem mounted from the whole
            // disk would hold it exclusively, and the stick's persistence
            // partition could not be mounted beside it.
            let Ok(medium_loop) = Loop::read_only(&dev) else {
                continue;
            };
            let mounted = match Mount::read_only(&medium_loop.dev, "iso9660", medium_dir.clone()) {
                Ok(m) => m,
                Err(_) => continue,
            };
            if !mounted.at.join(MEDIUM_DIR).join(RECORD).is_file() {
                continue;
            }
            let (rec, text, signer) = checked_record(&mounted.at, keys, &what)?;
            if rec.snapshot != *want {
                other.push(format!("{} holds {}", dev.display(), &rec.snapshot.to_hex()[..12]));
                continue;
            }
            let policy = match rec.policy {
                Some(h) => {
                    let p = read_limited(&mounted.at.join(MEDIUM_DIR).join(POLICY), 1 << 20)?;
                    if Id32::hash(&p).0 != h {
                        return Err(Error::Untrusted(format!(
                            "refusing {what}: its state policy does not match the signed record"
                        )));
                    }
                    Some(p)
                }
                None => None,
            };
            let image = mounted.at.join(MEDIUM_DIR).join(ROOT_IMAGE);
            let loop_dev = Loop::read_only(&image)?;
            let dm = DmDevice::verity(DM_NAME, &loop_dev.dev, &rec)?;
            let mount_root = |at: &Path| -> Result<()> {
                std::fs::create_dir_all(at).map_err(local(format!("cannot create {}", at.display())))?;
                run(
                    Command::new("mount")
                        .args(["-t", "squashfs", "-o", "ro"])
                        .arg(dm.path())
                        .arg(at),
                    "mount",
                )
                .map(drop)
            };
            if let Err(e) = mount_root(root) {
                return Err(Error::Untrusted(if dm.corrupted() {
                    format!(
                        "refusing {what}: its root image differs from what key {} signed (dm-verity found a block \
                         that does not match the signed root hash); it is damaged or altered",
                        signer.fingerprint()
                    )
                } else {
                    format!("cannot mount the root image of {what}: {e}")
                }));
            }
            mount_root(&run_dir.join("root"))?;
            // Everything stays set up for the life of the system.
            let mut dm = dm;
            dm.keep = true;
            std::mem::forget(loop_dev);
            std::mem::forget(mounted);
            std::mem::forget(medium_loop);
            let persistence = persistence_on(&name);
            write_file(&run_dir.join("record"), text.as_bytes(), 0o644)?;
            write_file(
                &run_dir.join("medium-dev"),
                format!("{}\n", dev.display()).as_bytes(),
                0o644,
            )?;
            if let Some(p) = &persistence {
                write_file(
                    &run_dir.join("state-dev"),
                    format!("{}\n", p.display()).as_bytes(),
                    0o644,
                )?;
            }
            if let Some(p) = policy {
                write_file(&run_dir.join(POLICY), &p, 0o644)?;
            }
            return Ok(LiveBoot {
                medium: dev,
                snapshot: want.to_hex(),
                signer: signer.fingerprint(),
                persistence,
            });
        }
        if Instant::now() >= deadline {
            return Err(Error::Local(format!(
                "no live medium with snapshot {} appeared in {} s{}",
                &want.to_hex()[..12],
                wait.as_secs(),
                if other.is_empty() {
                    String::new()
                } else {
                    format!(" (found only other snapshots: {})", other.join(", "))
                }
            )));
        }
        other.clear();
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The kernel and initramfs of the tree `m` describes, as entries named
/// after their files on the medium ([`KERNEL`], [`INITRD`]).
pub fn boot_manifest(m: &slate_core::manifest::Manifest) -> Option<slate_core::manifest::Manifest> {
    use slate_core::manifest::{Entry, Kind, Manifest};
    let names = m
        .entries
        .iter()
        .filter(|e| e.path.starts_with(b"boot/") && !e.path[5..].contains(&b'/'))
        .map(|e| String::from_utf8_lossy(&e.path[5..]).into_owned());
    let (k, i) = crate::boot::newest_kernel(names)?;
    let mut entries = Vec::new();
    for (name, on_medium) in [(i, INITRD), (k, KERNEL)] {
        let idx = m.find(format!("boot/{name}").as_bytes())?;
        let data = m.file_data(idx)?.clone();
        entries.push(Entry {
            path: on_medium.as_bytes().to_vec(),
            meta: m.entries[idx].meta.clone(),
            kind: Kind::File(data),
        });
    }
    Some(Manifest { entries })
}

/// Whether `data` is exactly the content of the file entry `e`, chunk by
/// chunk.
fn matches_entry(data: &[u8], e: &slate_core::manifest::Entry) -> bool {
    let slate_core::manifest::Kind::File(f) = &e.kind else {
        return false;
    };
    if f.extents.is_some() || data.len() as u64 != f.size {
        return false;
    }
    let mut at = 0usize;
    for c in &f.chunks {
        let end = at + c.len as usize;
        match data.get(at..end) {
            Some(d) if slate_core::ChunkId::of(d) == c.id => at = end,
            _ => return false,
        }
    }
    at == data.len()
}

/// What `slate image verify` found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    /// The snapshot the image holds.
    pub snapshot: String,
    /// Who signed its record.
    pub signer: String,
    /// Bytes of the root image read and checked.
    pub root_bytes: u64,
}

/// The files of an ISO image, found with xorriso (no mount, no root).
struct IsoFiles {
    image: PathBuf,
    files: std::collections::HashMap<String, (u64, u64)>,
}

impl IsoFiles {
    fn open(image: &Path) -> Result<IsoFiles> {
        let out = run(
            Command::new("xorriso")
                // stdio: reads a stick (/dev/sdX) as a plain file, without
                // the optical drive commands xorriso would send it.
                .arg("-indev")
                .arg(format!("stdio:{}", image.display()))
                .args([
                    "-find",
                    &format!("/{MEDIUM_DIR}"),
                    "-type",
                    "f",
                    "-exec",
                    "report_lba",
                    "--",
                ]),
            "xorriso (reading the image)",
        )?;
        let mut files = std::collections::HashMap::new();
        // "File data lba:  XT , LBA , BLOCKS , SIZE , 'PATH'", one line per
        // extent; a file of several extents (over 4 GiB) is not slate's.
        for line in out.lines().filter_map(|l| l.strip_prefix("File data lba:")) {
            let f: Vec<&str> = line.splitn(5, ',').map(str::trim).collect();
            let (Some(xt), Some(lba), Some(size), Some(path)) = (f.first(), f.get(1), f.get(3), f.get(4)) else {
                continue;
            };
            let path = path.trim_matches('\'').to_string();
            if *xt != "0" {
                files.remove(&path);
                continue;
            }
            if let (Ok(lba), Ok(size)) = (lba.parse::<u64>(), size.parse::<u64>()) {
                files.insert(path, (lba * 2048, size));
            }
        }
        Ok(IsoFiles {
            image: image.to_path_buf(),
            files,
        })
    }

    /// A reader of the file `name` in the medium directory, and its size.
    fn file(&self, name: &str) -> Result<(std::io::Take<std::fs::File>, u64)> {
        let (at, size) = *self
            .files
            .get(&format!("/{MEDIUM_DIR}/{name}"))
            .ok_or_else(|| Error::Untrusted(format!("{} holds no /{MEDIUM_DIR}/{name}", self.image.display())))?;
        let mut f = std::fs::File::open(&self.image).map_err(local(format!("cannot read {}", self.image.display())))?;
        f.seek(SeekFrom::Start(at))
            .map_err(local(format!("cannot read {}", self.image.display())))?;
        Ok((f.take(size), size))
    }

    fn read(&self, name: &str, max: u64) -> Result<Vec<u8>> {
        let (r, size) = self.file(name)?;
        if size > max {
            return Err(Error::Untrusted(format!(
                "/{MEDIUM_DIR}/{name} is larger than {max} bytes"
            )));
        }
        let mut data = Vec::with_capacity(size as usize);
        r.take(max)
            .read_to_end(&mut data)
            .map_err(local(format!("cannot read {}", self.image.display())))?;
        Ok(data)
    }
}

/// Check a whole image on a trusted machine (no root needed): the record
/// by `keys`, every block of the root image and its stored hash tree
/// against the signed root hash, the snapshot record and manifest against
/// the id, the policy against the record, and the kernel and initramfs
/// GRUB starts against the snapshot's manifest.
pub fn verify_image(image: &Path, keys: &[PublicKey]) -> Result<VerifyReport> {
    let what = format!("image {}", image.display());
    let refuse = |why: String| Error::Untrusted(format!("refusing {what}: {why}"));
    let iso = IsoFiles::open(image)?;
    let text = String::from_utf8(iso.read(RECORD, MAX_RECORD)?).map_err(|_| refuse("its record is not text".into()))?;
    let (rec, sigs) = LiveRecord::parse(&text).map_err(|e| refuse(e.to_string()))?;
    let signer = rec.verify(&sigs, keys).map_err(|e| refuse(e.to_string()))?;
    let snap_bytes = iso.read(SNAPSHOT, 64 << 20)?;
    let snap = Snapshot::decode(&snap_bytes, &rec.snapshot).map_err(|e| refuse(format!("its snapshot record: {e}")))?;
    let manifest = iso.read(MANIFEST, 4 << 30)?;
    if Id32::hash(&manifest) != snap.manifest.hash {
        return Err(refuse("its manifest does not match the snapshot".into()));
    }
    if let Some(h) = rec.policy {
        if Id32::hash(&iso.read(POLICY, 1 << 20)?).0 != h {
            return Err(refuse("its state policy does not match the record".into()));
        }
    }
    let (mut r, size) = iso.file(ROOT_IMAGE)?;
    let data_blocks = rec.data_bytes / LIVE_BLOCK;
    let computed = crate::verity::tree(&mut r, data_blocks, &rec.salt)
        .map_err(|e| refuse(format!("its root image cannot be read whole ({e})")))?;
    let mut stored = Vec::new();
    let skip = rec.hash_offset - rec.data_bytes;
    std::io::copy(&mut (&mut r).take(skip), &mut std::io::sink()).map_err(local("cannot read the image"))?;
    r.take(computed.bytes.len() as u64)
        .read_to_end(&mut stored)
        .map_err(local("cannot read the image"))?;
    if computed.root != rec.root_hash {
        return Err(refuse(match crate::verity::first_differing_block(&stored, &computed) {
            Some(b) => format!("block {b} of its root image does not match the signed root hash (damaged or altered)"),
            None => "its root image does not match the signed root hash (damaged or altered)".into(),
        }));
    }
    if stored != computed.bytes || size < rec.hash_offset + computed.bytes.len() as u64 {
        return Err(refuse(
            "the hash tree of its root image is damaged (its data is intact; the boot would refuse it)".into(),
        ));
    }
    let m = slate_core::manifest::decode(&manifest).map_err(|e| refuse(format!("its manifest: {e}")))?;
    let boot = boot_manifest(&m).ok_or_else(|| refuse("its snapshot has no kernel in /boot".into()))?;
    for e in &boot.entries {
        let name = String::from_utf8_lossy(&e.path).into_owned();
        let data = iso.read(&name, 1 << 30)?;
        if !matches_entry(&data, e) {
            return Err(refuse(format!(
                "the {} GRUB starts is not the snapshot's own",
                if name == KERNEL { "kernel" } else { "initramfs" }
            )));
        }
    }
    Ok(VerifyReport {
        snapshot: rec.snapshot.to_hex(),
        signer: signer.fingerprint(),
        root_bytes: rec.data_bytes,
    })
}

/// A live medium as the source of an offline install: the signed snapshot
/// record, its signatures and manifest from the medium, and the verified
/// root as the place every file's content is read from (each chunk is
/// checked against the manifest on the way, as any local source is).
pub struct Medium {
    /// The snapshot.
    pub id: SnapshotId,
    /// Its record.
    pub snapshot: Snapshot,
    /// Its signatures (checked by the pass against the machine's keys).
    pub signatures: Vec<SnapshotSignature>,
    /// Its manifest as stored.
    pub manifest: Vec<u8>,
    /// The tree.
    pub root: PathBuf,
    /// The medium's directory with the kernel and initramfs.
    pub boot_dir: PathBuf,
}

impl Medium {
    /// Open the medium the live system booted from (`RUN_DIR`, or a
    /// directory laid out the same way: `medium/slate/...` and `root/`).
    pub fn open(run_dir: &Path) -> Result<Medium> {
        let dir = run_dir.join("medium").join(MEDIUM_DIR);
        let text = String::from_utf8(read_limited(&dir.join(RECORD), MAX_RECORD)?)
            .map_err(|_| Error::Untrusted("the live record is not text".into()))?;
        let (rec, _) = LiveRecord::parse(&text).map_err(|e| Error::Untrusted(e.to_string()))?;
        let bytes = read_limited(&dir.join(SNAPSHOT), 64 << 20)?;
        let snapshot = Snapshot::decode(&bytes, &rec.snapshot)
            .map_err(|e| Error::Untrusted(format!("the medium's snapshot record: {e}")))?;
        let signatures = decode_signatures(&read_limited(&dir.join(SIGNATURES), 1 << 20)?)
            .map_err(|e| Error::Untrusted(format!("the medium's snapshot signatures: {e}")))?;
        let manifest = read_limited(&dir.join(MANIFEST), 4 << 30)?;
        let root = run_dir.join("root");
        if !root.join("etc").is_dir() {
            return Err(Error::Local(format!(
                "no live root at {} (boot from the live medium)",
                root.display()
            )));
        }
        Ok(Medium {
            id: rec.snapshot,
            snapshot,
            signatures,
            manifest,
            root,
            boot_dir: dir,
        })
    }

    /// Register the medium's files as local sources of the snapshot `m`
    /// (its manifest): the live root and the kernel and initramfs beside it.
    pub fn add_sources(&self, local: &mut crate::sources::LocalChunks, m: &slate_core::manifest::Manifest) {
        // The kernel and initramfs first: the root has no copy of them, and
        // a chunk is looked up where it was registered first.
        if let Some(boot) = boot_manifest(m) {
            local.add_tree(&self.boot_dir, &boot);
        }
        local.add_tree(&self.root, m);
    }
}

/// What `slate pull --from-image` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportReport {
    /// The snapshot.
    pub snapshot: String,
    /// Whether the repository already held it.
    pub already_held: bool,
    /// Chunks stored.
    pub new_chunks: u64,
    /// Their bytes, before compression.
    pub new_bytes: u64,
    /// The channel, if one was given.
    pub channel: Option<String>,
    /// Whether the snapshot became the channel's head.
    pub head_moved: bool,
}

/// Store the snapshot a live image holds in `repo` (an offline update
/// source): the record and the snapshot's signatures are checked with
/// `trusted`, every chunk read from the image's root (mounted read-only)
/// and its kernel and initramfs is checked against the manifest before it
/// is kept, and nothing names the snapshot until all of it is stored. With
/// `channel`, the snapshot becomes its head unless the head is newer.
pub fn import_image(
    image: &Path,
    repo: &Repo,
    trusted: &[PublicKey],
    channel: Option<&str>,
    work: &Path,
) -> Result<ImportReport> {
    let what = format!("image {}", image.display());
    let refuse = |why: String| Error::Untrusted(format!("refusing {what}: {why}; nothing was stored"));
    if trusted.is_empty() {
        return Err(Error::Config(
            "importing needs at least one trusted key (--trust KEY.pub)".into(),
        ));
    }
    if let Some(c) = channel {
        slate_repo::channel::check_name(c)?;
    }
    let iso = IsoFiles::open(image)?;
    let text = String::from_utf8(iso.read(RECORD, MAX_RECORD)?).map_err(|_| refuse("its record is not text".into()))?;
    let (rec, rec_sigs) = LiveRecord::parse(&text).map_err(|e| refuse(e.to_string()))?;
    rec.verify(&rec_sigs, trusted).map_err(|e| refuse(e.to_string()))?;
    let id = rec.snapshot;
    let snap = Snapshot::decode(&iso.read(SNAPSHOT, 64 << 20)?, &id)
        .map_err(|e| refuse(format!("its snapshot record: {e}")))?;
    let sigs = decode_signatures(&iso.read(SIGNATURES, 1 << 20)?)
        .map_err(|e| refuse(format!("its snapshot signatures: {e}")))?;
    slate_core::snapshot::check_threshold(&id, &sigs, trusted, 1)
        .map_err(|e| refuse(format!("snapshot {}: {e}", &id.to_hex()[..12])))?;
    let manifest = iso.read(MANIFEST, 4 << 30)?;
    if Id32::hash(&manifest) != snap.manifest.hash {
        return Err(refuse("its manifest does not match the snapshot".into()));
    }
    let m = slate_core::manifest::decode(&manifest).map_err(|e| refuse(format!("its manifest: {e}")))?;

    let _lock = repo.lock()?;
    let already_held = repo.read_snapshot(&id).is_ok();
    let (mut new_chunks, mut new_bytes) = (0, 0);
    if !already_held {
        // The kernel and initramfs, from the medium; the rest from the root.
        let boot_dir = work.join("boot");
        std::fs::create_dir_all(&boot_dir).map_err(local(format!("cannot create {}", boot_dir.display())))?;
        let boot = boot_manifest(&m);
        if boot.is_some() {
            for name in [KERNEL, INITRD] {
                write_file(&boot_dir.join(name), &iso.read(name, 1 << 30)?, 0o600)?;
            }
        }
        let (root_at, _) = *iso
            .files
            .get(&format!("/{MEDIUM_DIR}/{ROOT_IMAGE}"))
            .ok_or_else(|| refuse("it holds no root image".into()))?;
        let part = crate::install::Part::new("root", "", root_at / 512, rec.data_bytes / 512);
        let root_loop = Loop::new(image, &part)?;
        let root = Mount::read_only(&root_loop.dev, "squashfs", work.join("root"))
            .map_err(|e| refuse(format!("its root image does not mount ({e})")))?;
        let mut local = crate::sources::LocalChunks::default();
        // The kernel and initramfs first (the root has no copy of them).
        if let Some(b) = &boot {
            local.add_tree(&boot_dir, b);
        }
        local.add_tree(&root.at, &m);
        let index = repo.load_index()?;
        let mut asm = slate_repo::commit::Assembler::new(repo.storage.as_ref(), &index, repo.config.compression_level);
        let mut at = 0usize;
        for c in &snap.manifest.chunks {
            let data = &manifest[at..at + c.len as usize];
            at += c.len as usize;
            asm.push(c.id, data)?;
        }
        let mut src = crate::sources::Sources::new(&local, Vec::new());
        let mut seen = std::collections::HashSet::new();
        for e in &m.entries {
            let slate_core::manifest::Kind::File(f) = &e.kind else {
                continue;
            };
            for c in &f.chunks {
                if index.contains(&c.id) || !seen.insert(c.id) {
                    continue;
                }
                let mut pushed = Ok(());
                use slate_repo::checkout::ChunkSource;
                src.with_chunk(&c.id, &mut |d| {
                    pushed = asm.push(c.id, d);
                    Ok(())
                })
                .map_err(|_| {
                    refuse(format!(
                        "the content of /{} on it does not match the manifest",
                        String::from_utf8_lossy(&e.path)
                    ))
                })?;
                pushed?;
            }
        }
        asm.finish()?;
        new_chunks = asm.new_chunks;
        new_bytes = asm.new_bytes;
        drop(root);
        drop(root_loop);
        if repo.write_snapshot(&snap)? != id {
            return Err(refuse("its snapshot record does not encode back to its id".into()));
        }
        for s in &sigs {
            if s.verify(&id).is_ok() {
                repo.add_signature(&id, s.clone())?;
            }
        }
        repo.storage.sync()?;
    }
    let mut head_moved = false;
    if let Some(c) = channel {
        let mut history = repo.channel_history(c)?;
        let newer_head = match history.last() {
            Some(h) => repo.read_snapshot(h)?.time_ns > snap.time_ns,
            None => false,
        };
        if !history.contains(&id) && !newer_head {
            history.push(id);
            repo.set_channel_history(c, &history)?;
            head_moved = true;
        }
    }
    Ok(ImportReport {
        snapshot: id.to_hex(),
        already_held,
        new_chunks,
        new_bytes,
        channel: channel.map(str::to_string),
        head_moved,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keys_archive_is_a_valid_newc_cpio() {
        let k = SecretKey::generate().unwrap().public();
        let data = keys_cpio(&[k]);
        assert_eq!(data.len() % 4, 0);
        let mut at = 0usize;
        let mut names = Vec::new();
        loop {
            let h = std::str::from_utf8(&data[at..at + 110]).unwrap();
            assert!(h.starts_with("070701"));
            let field = |i: usize| usize::from_str_radix(&h[6 + 8 * i..14 + 8 * i], 16).unwrap();
            let (size, namesize) = (field(6), field(11));
            let name = std::str::from_utf8(&data[at + 110..at + 110 + namesize - 1])
                .unwrap()
                .to_string();
            let data_at = (at + 110 + namesize).div_ceil(4) * 4;
            if name.ends_with(".pub") {
                let text = std::str::from_utf8(&data[data_at..data_at + size]).unwrap();
                assert_eq!(PublicKey::from_text(text).unwrap(), k);
            }
            at = (data_at + size).div_ceil(4) * 4;
            if name == "TRAILER!!!" {
                break;
            }
            names.push(name);
        }
        assert_eq!(at, data.len());
        assert_eq!(
            names,
            [
                "etc",
                "etc/slate",
                "etc/slate/live-keys",
                &format!("etc/slate/live-keys/{}.pub", k.fingerprint())
            ]
        );
    }

    #[test]
    fn the_command_line_names_the_snapshot() {
        let id = "ab".repeat(32);
        assert_eq!(
            cmdline_snapshot(&format!("boot=slate-live slate.live={id} ro"))
                .unwrap()
                .to_hex(),
            id
        );
        assert!(cmdline_snapshot("root=/dev/sda1").is_err());
        assert!(cmdline_snapshot("slate.live=xyz").is_err());
        let cfg = grub_cfg(&id, "console=ttyS0");
        assert!(cfg.contains(&format!("slate.live={id}")) && cfg.contains("initrd /slate/initrd.img /slate/keys.img"));
    }
}
