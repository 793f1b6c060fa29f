//! Slots: the two places a machine keeps a whole snapshot. A slot is a
//! directory (the tree sits at its top), a block device or partition, or a
//! loop image file; the last two hold an ext4 filesystem that the agent
//! formats when the slot is (re)built and mounts only while it reads or
//! writes, at `STATE_DIR/mnt/<slot>`.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// What a slot is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotKind {
    /// A directory.
    Dir(PathBuf),
    /// A block device (a partition, or a loop device set up by someone else).
    Block(PathBuf),
    /// A regular file holding an ext4 image, mounted through a loop device.
    Image(PathBuf),
}

impl SlotKind {
    /// Classify `path`: an existing block device or regular file, or else a
    /// directory (created when missing). A missing path ending in `.img` is
    /// an image file to create.
    pub fn of(path: &Path) -> SlotKind {
        match std::fs::metadata(path) {
            Ok(m) if m.file_type().is_block_device() => SlotKind::Block(path.to_path_buf()),
            Ok(m) if m.is_file() => SlotKind::Image(path.to_path_buf()),
            Err(_) if path.extension().is_some_and(|e| e == "img") => SlotKind::Image(path.to_path_buf()),
            _ => SlotKind::Dir(path.to_path_buf()),
        }
    }
}

/// A slot's tree made available at a path; unmounted when dropped.
pub struct Mounted {
    /// Where the tree is.
    pub path: PathBuf,
    mounted: bool,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.mounted {
            let ok = Command::new("umount")
                .arg(&self.path)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                // Something still holds it open: detach now, free later.
                let _ = Command::new("umount").arg("-l").arg(&self.path).status();
            }
        }
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .output()
        .map_err(|e| Error::Local(format!("cannot run {what}: {e} (is it installed?)")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(Error::Local(format!(
            "{what} failed: {}",
            err.trim().lines().last().unwrap_or("no message")
        )));
    }
    Ok(())
}

fn mount(dev: &Path, at: &Path, image: bool, read_only: bool) -> Result<Mounted> {
    std::fs::create_dir_all(at).map_err(|e| Error::Local(format!("cannot create {}: {e}", at.display())))?;
    let mut opts = vec![if read_only { "ro" } else { "rw" }];
    if image {
        opts.push("loop");
    }
    run(
        Command::new("mount")
            .args(["-t", "ext4", "-o", &opts.join(",")])
            .arg(dev)
            .arg(at),
        &format!("mount {}", dev.display()),
    )?;
    Ok(Mounted {
        path: at.to_path_buf(),
        mounted: true,
    })
}

/// Mount the boot partition `dev` (ext4 for GRUB, FAT for an ESP: mount(8)
/// tells) at `STATE_DIR/mnt/boot` while the returned value lives.
pub fn mount_boot(dev: &Path, state_dir: &Path) -> Result<Mounted> {
    let at = state_dir.join("mnt").join("boot");
    std::fs::create_dir_all(&at).map_err(|e| Error::Local(format!("cannot create {}: {e}", at.display())))?;
    run(
        Command::new("mount").arg(dev).arg(&at),
        &format!("mount the boot partition {}", dev.display()),
    )?;
    Ok(Mounted {
        path: at,
        mounted: true,
    })
}

fn format(dev: &Path, label: &str) -> Result<()> {
    run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", label, "-E", "lazy_itable_init=1,lazy_journal_init=1"])
            .arg(dev),
        &format!("mkfs.ext4 {}", dev.display()),
    )
}

/// Open slot `name` at `path` for reading; `None` if it holds nothing yet.
pub fn open_read(name: &str, path: &Path, state_dir: &Path) -> Result<Option<Mounted>> {
    match SlotKind::of(path) {
        SlotKind::Dir(d) => Ok(d.is_dir().then_some(Mounted {
            path: d,
            mounted: false,
        })),
        SlotKind::Block(dev) => mount(&dev, &state_dir.join("mnt").join(format!("{name}-ro")), false, true).map(Some),
        SlotKind::Image(img) => {
            if !img.exists() {
                return Ok(None);
            }
            mount(&img, &state_dir.join("mnt").join(format!("{name}-ro")), true, true).map(Some)
        }
    }
}

/// Open slot `name` for writing. With `fresh`, its old content is
/// discarded first (directory emptied, filesystem re-created).
pub fn open_write(name: &str, path: &Path, state_dir: &Path, fresh: bool, image_size: u64) -> Result<Mounted> {
    let at = state_dir.join("mnt").join(name);
    let label = format!("slate-{name}");
    let m = match SlotKind::of(path) {
        SlotKind::Dir(d) => {
            std::fs::create_dir_all(&d)
                .map_err(|e| Error::Local(format!("cannot create slot {}: {e}", d.display())))?;
            if fresh {
                empty_dir(&d)?;
            }
            return Ok(Mounted {
                path: d,
                mounted: false,
            });
        }
        SlotKind::Block(dev) => {
            if fresh {
                format(&dev, &label)?;
            }
            mount(&dev, &at, false, false)?
        }
        SlotKind::Image(img) => {
            if fresh || !img.exists() {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .write(true)
                    .open(&img)
                    .map_err(|e| Error::Local(format!("cannot create slot image {}: {e}", img.display())))?;
                f.set_len(image_size)
                    .map_err(|e| Error::Local(format!("cannot size {}: {e}", img.display())))?;
                drop(f);
                format(&img, &label)?;
            }
            mount(&img, &at, true, false)?
        }
    };
    if fresh {
        // mkfs.ext4 makes lost+found; a slot holds exactly its snapshot.
        let lf = m.path.join("lost+found");
        if lf.is_dir() {
            std::fs::remove_dir(&lf).map_err(|e| Error::Local(format!("cannot remove {}: {e}", lf.display())))?;
        }
    }
    Ok(m)
}

/// Remove everything inside `d` (not `d` itself), never following symlinks.
pub fn empty_dir(d: &Path) -> Result<()> {
    for e in std::fs::read_dir(d).map_err(|e| Error::Local(format!("{}: {e}", d.display())))? {
        let e = e.map_err(|e| Error::Local(format!("{}: {e}", d.display())))?;
        let p = e.path();
        let ft = e
            .file_type()
            .map_err(|err| Error::Local(format!("{}: {err}", p.display())))?;
        let r = if ft.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.map_err(|err| Error::Local(format!("cannot remove {}: {err}", p.display())))?;
    }
    Ok(())
}
