//! `slate install` and `slate prepare`: a machine's disk (A/B, or the
//! cache disk of a network-booted machine), and a tree made ready to boot
//! from slate (docs/boot.md).

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use slate_agent::config::{parse_size, Config};
use slate_agent::install::{self, cached, Firmware, InstallOptions};

use crate::cli::FirmwareArg;
use crate::output::{json, Bar};

fn size(s: &str, what: &str) -> Result<u64> {
    parse_size(s).ok_or_else(|| anyhow!("{what} {s:?} is not a size (like 8G or 512M)"))
}

/// Run `slate install`.
pub fn install(
    disk: &Path,
    config: Option<&Path>,
    firmware: FirmwareArg,
    slot_size: Option<&str>,
    create: Option<&str>,
    from_live: Option<&Path>,
    as_json: bool,
) -> Result<ExitCode> {
    let config = config.ok_or_else(|| {
        anyhow!("--config AGENT.toml is required: the machine needs its servers and trusted keys to write slot A")
    })?;
    let template = Config::load_template(config).map_err(|e| anyhow!("{e}"))?;
    let work = tempfile::Builder::new()
        .prefix("slate-install-")
        .tempdir()
        .context("cannot create a scratch directory")?;
    let opts = InstallOptions {
        disk: disk.to_path_buf(),
        create_size: create.map(|s| size(s, "--size")).transpose()?,
        template: &template,
        firmware: firmware_of(firmware),
        slot_size: size(slot_size.unwrap_or("8G"), "--slot-size")?,
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

fn firmware_of(f: FirmwareArg) -> Firmware {
    match f {
        FirmwareArg::Bios => Firmware::Bios,
        FirmwareArg::Uefi => Firmware::Uefi,
    }
}

/// Run `slate install --mode cached`: say what will be done, then do it.
pub fn install_cached(
    disk: &Path,
    config: Option<&Path>,
    firmware: FirmwareArg,
    create: Option<&str>,
    as_json: bool,
) -> Result<ExitCode> {
    let opts = cached::Options {
        disk: disk.to_path_buf(),
        create_size: create.map(|s| size(s, "--size")).transpose()?,
        firmware: firmware_of(firmware),
        template: config.map(Path::to_path_buf),
    };
    let plan = cached::plan(&opts).map_err(|e| anyhow!("cannot install onto {}: {e}", disk.display()))?;
    if !as_json {
        for l in plan.describe() {
            println!("{l}");
        }
    }
    let work = tempfile::Builder::new()
        .prefix("slate-install-")
        .tempdir()
        .context("cannot create a scratch directory")?;
    let started = std::time::Instant::now();
    let report = cached::apply(&plan, work.path()).map_err(|e| {
        anyhow!(
            "cannot install onto {}: {e} (the disk is not ready: run slate install again)",
            disk.display()
        )
    })?;
    if as_json {
        let mut v = serde_json::to_value(&report)?;
        v["seconds"] = started.elapsed().as_secs_f64().into();
        json(&v)?;
    } else {
        eprintln!(
            "installed a cache disk on {} ({:.1} s): the machine boots from the network, and from this disk once its cache is complete",
            disk.display(),
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
