//! `slate install` and `slate prepare`: a machine's disk, and a tree made
//! ready to boot from slate (docs/boot.md).

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use slate_agent::config::{parse_size, Config};
use slate_agent::install::{self, Firmware, InstallOptions};

use crate::cli::FirmwareArg;
use crate::output::{json, Bar};

fn size(s: &str, what: &str) -> Result<u64> {
    parse_size(s).ok_or_else(|| anyhow!("{what} {s:?} is not a size (like 8G or 512M)"))
}

/// Run `slate install`.
pub fn install(
    disk: &Path,
    config: &Path,
    firmware: FirmwareArg,
    slot_size: &str,
    create: Option<&str>,
    from_live: Option<&Path>,
    as_json: bool,
) -> Result<ExitCode> {
    let template = Config::load(config).map_err(|e| anyhow!("{e}"))?;
    let work = tempfile::Builder::new()
        .prefix("slate-install-")
        .tempdir()
        .context("cannot create a scratch directory")?;
    let opts = InstallOptions {
        disk: disk.to_path_buf(),
        create_size: create.map(|s| size(s, "--size")).transpose()?,
        template: &template,
        firmware: match firmware {
            FirmwareArg::Bios => Firmware::Bios,
            FirmwareArg::Uefi => Firmware::Uefi,
        },
        slot_size: size(slot_size, "--slot-size")?,
        work_dir: work.path().to_path_buf(),
        from_live: from_live.map(Path::to_path_buf),
    };
    let started = std::time::Instant::now();
    let bar = Bar::new(!std::io::stderr().is_terminal());
    let report = install::install(&opts, &bar).with_context(|| format!("cannot install onto {}", disk.display()))?;
    if as_json {
        let mut v = serde_json::to_value(&report)?;
        v["seconds"] = started.elapsed().as_secs_f64().into();
        json(&v)?;
    } else {
        for p in &report.partitions {
            println!(
                "{:<12} {:>8} MiB at {} MiB",
                p.name,
                (p.sectors * 512) >> 20,
                (p.start * 512) >> 20
            );
        }
        eprintln!(
            "installed snapshot {} into slot a of {} ({:?}, {:.1} s); the machine boots it next",
            report.update.target.as_deref().map(|t| &t[..12]).unwrap_or("?"),
            disk.display(),
            report.firmware,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Run `slate prepare`.
pub fn prepare(tree: &Path, netboot: &slate_agent::prepare::NetbootKeys, as_json: bool) -> Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find the running slate binary")?;
    let report = slate_agent::prepare::prepare_with(tree, &exe, netboot)?;
    if as_json {
        json(&report)?;
    } else {
        eprintln!(
            "prepared {}: slate and its units installed, {}{}",
            tree.display(),
            match report.initramfs {
                slate_agent::prepare::Initramfs::None => "no initramfs generator found (no initramfs step)".to_string(),
                g => format!(
                    "{} hook installed and {} initramfs regenerated",
                    serde_json::to_value(g)?.as_str().unwrap_or(""),
                    report.kernels.len()
                ),
            },
            if report.wrote_policy {
                "; it had no /etc/slate/state.toml: wrote the default policy"
            } else {
                ""
            }
        );
        for (k, bytes) in &report.netboot_initramfs {
            eprintln!(
                "network-boot initramfs for {k}: /boot/slate-netboot.img-{k}, {:.1} MB, with {} key(s)",
                *bytes as f64 / 1e6,
                report.netboot_keys
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
