//! `slate image`: live images of a snapshot (docs/live.md): `iso` makes
//! one, `verify` checks one on a trusted machine, `mount-live` is the
//! initramfs step that boots one.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use slate_agent::config::parse_size;
use slate_agent::live::{self, Compression, IsoOptions};
use slate_repo::progress::Progress;

use crate::cli::{CompressionArg, ImageCommand};
use crate::output::{human, json, Bar};

/// Run a `slate image` subcommand.
pub fn run(command: ImageCommand) -> Result<ExitCode> {
    match command {
        ImageCommand::Iso {
            spec,
            repo,
            output,
            sign,
            sign_check,
            policy,
            persistence,
            kernel_cmdline,
            compression,
            out,
        } => {
            let repo = super::open(&repo.repo)?;
            let keys = sign
                .iter()
                .map(|p| super::read_secret_key(p))
                .collect::<Result<Vec<_>>>()?;
            let boot_keys = sign_check
                .iter()
                .map(|p| super::read_public_key(p))
                .collect::<Result<Vec<_>>>()?;
            let policy = policy
                .map(|p| std::fs::read(&p).with_context(|| format!("cannot read {}", p.display())))
                .transpose()?;
            let persistence = persistence
                .map(|s| parse_size(&s).ok_or_else(|| anyhow!("--persistence {s:?} is not a size (like 1G)")))
                .transpose()?;
            let opts = IsoOptions {
                repo: &repo,
                spec: &spec,
                output: output.clone(),
                sign: &keys,
                boot_keys,
                policy,
                persistence,
                kernel_cmdline,
                compression: match compression {
                    CompressionArg::Zstd => Compression::Zstd,
                    CompressionArg::Xz => Compression::Xz,
                    CompressionArg::Lz4 => Compression::Lz4,
                },
            };
            let progress = Phases::new(out.json);
            let report = live::build_iso(&opts, &progress)
                .with_context(|| format!("cannot make the live image {}", output.display()))?;
            if out.json {
                json(&report)?;
            } else {
                println!(
                    "{}: {} ({}), snapshot {}, root {} of {} compressed with {:?}{}, {:.1} s",
                    report.image.display(),
                    human(report.bytes),
                    report.bytes,
                    report.snapshot,
                    human(report.root_image_bytes),
                    human(report.tree_bytes),
                    report.compression,
                    if report.persistence_bytes > 0 {
                        format!(", persistence {}", human(report.persistence_bytes))
                    } else {
                        String::new()
                    },
                    report.seconds
                );
                println!("boots with keys: {}", report.keys.join(", "));
            }
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::Verify { image, sign_check, out } => {
            let keys = sign_check
                .iter()
                .map(|p| super::read_public_key(p))
                .collect::<Result<Vec<_>>>()?;
            let report = live::verify_image(&image, &keys)?;
            if out.json {
                json(&report)?;
            } else {
                println!(
                    "{}: good: snapshot {}, record signed by {}, {} of root checked block by block, kernel and \
                     initramfs are the snapshot's own",
                    image.display(),
                    report.snapshot,
                    report.signer,
                    human(report.root_bytes)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ImageCommand::MountLive {
            root,
            keys,
            cmdline,
            wait,
        } => mount_live(&root, &keys, &cmdline, wait),
    }
}

fn mount_live(root: &Path, keys: &Path, cmdline: &Path, wait: u64) -> Result<ExitCode> {
    let text = std::fs::read_to_string(cmdline).with_context(|| format!("cannot read {}", cmdline.display()))?;
    let want = live::cmdline_snapshot(&text)?;
    let keys = live::load_keys(keys)?;
    let boot = live::mount_live(root, &want, &keys, Path::new(live::RUN_DIR), Duration::from_secs(wait))?;
    eprintln!(
        "slate: live root: snapshot {} from {}, record signed by {}, every block checked against it as it is read; {}",
        &boot.snapshot[..12],
        boot.medium.display(),
        boot.signer,
        match &boot.persistence {
            Some(p) => format!("persistence on {}", p.display()),
            None => "no persistence partition: all state in RAM".into(),
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// Progress of the long phases: a bar on a terminal, otherwise one line per
/// phase on stderr (none with --json).
struct Phases {
    bar: Bar,
    lines: bool,
    started: std::time::Instant,
}

impl Phases {
    fn new(quiet: bool) -> Phases {
        Phases {
            bar: Bar::new(quiet),
            lines: !quiet && !std::io::stderr().is_terminal(),
            started: std::time::Instant::now(),
        }
    }
}

impl Progress for Phases {
    fn start(&self, phase: &str, total: u64) {
        if self.lines {
            let what = match phase {
                "checkout" => "checking out the snapshot",
                "squashfs" => "compressing the root image",
                "verity" => "hashing the root image (dm-verity)",
                "iso" => "writing the hybrid ISO",
                other => other,
            };
            eprintln!("slate image: {what} ({:.1} s)", self.started.elapsed().as_secs_f64());
        }
        self.bar.start(phase, total);
    }
    fn advance(&self, n: u64) {
        self.bar.advance(n);
    }
    fn finish(&self) {
        self.bar.finish();
    }
}
