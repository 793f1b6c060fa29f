//! One file per command; `run` dispatches.

mod agent;
mod cat;
mod checkout;
mod commit;
mod delta;
mod diff;
mod fleet;
mod gc;
mod home;
mod image;
mod init;
mod keygen;
mod log;
mod ls;
mod machine;
mod mount;
mod netboot;
mod rollout;
mod serve;
mod state;
mod tokens;
mod trust;
mod verify;

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use slate_repo::Repo;

use crate::cli::{
    Cli, Command, FleetCommand, InstallModeArg, NetbootCommand, PolicyCommand, RolloutActionArg, StateCommand,
    TrustCommand,
};

/// Run the parsed command.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Init {
            repo,
            compression_level,
        } => init::run(&repo.repo, compression_level),
        Command::Keygen { out } => keygen::run(&out),
        Command::Commit {
            repo,
            channel,
            sign,
            message,
            meta,
            out,
            tree,
        } => commit::run(
            &open(&repo.repo)?,
            &channel,
            sign.as_deref(),
            message,
            &meta,
            out.json,
            &tree,
        ),
        Command::Sign { repo, key, snapshot } => commit::sign(&open(&repo.repo)?, &key, &snapshot),
        Command::Checkout {
            repo,
            no_sync,
            out,
            snapshot,
            dest,
        } => checkout::run(&open(&repo.repo)?, &snapshot, &dest, !no_sync, out.json),
        Command::Log { repo, out, channel } => log::run(&open(&repo.repo)?, channel.as_deref(), out.json),
        Command::Ls {
            repo,
            recursive,
            out,
            snapshot,
            path,
        } => ls::run(&open(&repo.repo)?, &snapshot, &path, recursive, out.json),
        Command::Diff { repo, out, stat, a, b } => diff::run(&open(&repo.repo)?, &a, &b, stat, out.json),
        Command::Cat { repo, snapshot, path } => cat::run(&open(&repo.repo)?, &snapshot, &path),
        Command::Verify { repo, trust, out } => verify::run(&open(&repo.repo)?, &trust, out.json),
        Command::Gc {
            repo,
            keep_last,
            dry_run,
            grace,
            out,
        } => gc::run(
            &open(&repo.repo)?,
            &slate_repo::gc::GcOptions {
                keep_last,
                dry_run,
                grace,
            },
            out.json,
        ),
        Command::Delta {
            repo,
            level,
            out,
            from,
            to,
        } => delta::run(&open(&repo.repo)?, &from, &to, level, out.json),
        Command::Serve {
            repo,
            listen,
            fleet,
            db,
            db_connections,
            state_dir,
            home_dir,
            state_limit,
            state_quota,
            home_quota,
            home_append_only,
            admin_token_file,
            metrics_allow,
            header_timeout,
            max_connections,
            max_connections_per_client,
            body_timeout,
            min_upload_rate,
            tls_cert,
            tls_key,
            fleet_key,
            assignment_ttl,
            head_ttl,
            objects_url,
        } => serve::run(
            &repo.repo,
            &listen,
            fleet.as_deref(),
            &serve::Store { db, db_connections },
            &serve::Private {
                state_dir,
                home_dir,
                state_limit,
                state_quota,
                home_quota,
                home_append_only,
            },
            &serve::Access {
                admin_tokens: admin_token_file,
                metrics_allow,
                limits: slate_server::server::Limits {
                    header_timeout: std::time::Duration::from_secs(header_timeout),
                    max_connections: max_connections as usize,
                    max_per_client: max_connections_per_client as usize,
                    body_timeout: std::time::Duration::from_secs(body_timeout),
                    min_upload_rate,
                },
                fleet_key: fleet_key.map(|k| (k, assignment_ttl, head_ttl)),
                objects_urls: objects_url,
            },
            tls_cert.zip(tls_key),
        ),
        Command::Policy {
            command: PolicyCommand::Sign { key, policy },
        } => trust::policy_sign(&key, &policy),
        Command::Trust {
            command:
                TrustCommand::Sign {
                    repo,
                    version,
                    expires_days,
                    threshold,
                    snapshot_threshold,
                    release,
                    fleet,
                    keys,
                },
        } => trust::trust_sign(&trust::TrustSign {
            repo: &repo.repo,
            version,
            expires_days,
            threshold,
            snapshot_threshold,
            release: &release,
            fleet: &fleet,
            keys: &keys,
        }),
        Command::Fleet { command } => match command {
            FleetCommand::Status {
                server,
                token_file,
                ca_file,
                pins,
                out,
            } => fleet::status(&server, token_file.as_deref(), (ca_file.as_deref(), &pins), out.json),
            FleetCommand::Rollout {
                action,
                channel,
                server,
                token_file,
                ca_file,
                pins,
                out,
            } => rollout::run(
                match action {
                    RolloutActionArg::Status => rollout::Action::Status,
                    RolloutActionArg::Pause => rollout::Action::Pause,
                    RolloutActionArg::Resume => rollout::Action::Resume,
                    RolloutActionArg::Abort => rollout::Action::Abort,
                },
                channel.as_deref(),
                &server,
                token_file.as_deref(),
                (ca_file.as_deref(), &pins),
                out.json,
            ),
            FleetCommand::AdminToken { file, force } => tokens::admin_token(&file, force),
            FleetCommand::Enroll {
                machine,
                db,
                force,
                out,
            } => tokens::enroll(&machine, &db, force, out.json),
            FleetCommand::Revoke { machine, db } => tokens::revoke(&machine, &db),
            FleetCommand::Tokens { db, out } => tokens::list(&db, out.json),
        },
        Command::Update {
            config,
            json,
            dry_run,
            retry,
            wait_for_lock,
            watch,
        } => {
            if watch {
                agent::watch(&config, json, retry)
            } else {
                agent::update(&config, json, dry_run, retry, wait_for_lock)
            }
        }
        Command::Status { config, out } => agent::status(&config, out.json),
        Command::BootOk { config } => agent::boot_ok(&config),
        Command::Rollback { config } => agent::rollback(&config),
        Command::Install {
            mode,
            disk,
            config,
            firmware,
            slot_size,
            size,
            from_live,
            out,
        } => match mode {
            InstallModeArg::Ab => machine::install(
                &disk,
                config.as_deref(),
                firmware,
                slot_size.as_deref(),
                size.as_deref(),
                from_live.as_deref(),
                out.json,
            ),
            InstallModeArg::Cached => {
                if slot_size.is_some() || from_live.is_some() {
                    anyhow::bail!("--slot-size and --from-live are for --mode ab: a cache disk has no slots");
                }
                machine::install_cached(&disk, config.as_deref(), firmware, size.as_deref(), out.json)
            }
        },
        Command::Image { command } => image::run(command),
        Command::Mount {
            source,
            mountpoint,
            fill,
            fill_rate,
            record,
            status,
            background,
            no_prefetch,
            threads,
            poll,
            offline_boot,
            boot_cmdline,
            as_root,
        } => mount::mount(mount::MountArgs {
            source,
            mountpoint,
            fill,
            fill_rate,
            record,
            status,
            background,
            no_prefetch,
            threads,
            poll,
            offline_boot,
            boot_cmdline,
            as_root,
        }),
        Command::Netboot { command } => match command {
            NetbootCommand::Root {
                root,
                cmdline,
                keys,
                run_dir,
            } => netboot::root(netboot::RootArgs {
                root,
                cmdline,
                keys,
                run_dir,
            }),
        },
        Command::Cache { command } => mount::cache(command),
        Command::Profile { command } => mount::profile(command),
        Command::Prepare {
            tree,
            trust,
            fleet_trust,
            out,
        } => machine::prepare(
            &tree,
            &slate_agent::prepare::NetbootKeys {
                release: trust,
                fleet: fleet_trust,
            },
            out.json,
        ),
        Command::State { command } => match command {
            StateCommand::Apply {
                root,
                policy,
                state_dir,
                state_dev,
                config,
                token_file,
                warnings_file,
                out,
            } => state::apply(
                &root,
                policy.policy.as_deref(),
                (state_dir, state_dev),
                (config.as_deref(), token_file),
                warnings_file.as_deref(),
                out.json,
            ),
            StateCommand::Audit {
                root,
                policy,
                repo,
                config,
                quick,
                out,
                snapshot,
            } => state::audit(
                &root,
                policy.policy.as_deref(),
                repo.as_deref(),
                config.as_deref(),
                &snapshot,
                quick,
                out.json,
            ),
            StateCommand::Upload {
                root,
                policy,
                config,
                out,
            } => state::upload(&root, policy.policy.as_deref(), &config, out.json),
            StateCommand::Show {
                root,
                policy,
                config,
                backup,
                server,
                out,
            } => state::show(
                &root,
                policy.policy.as_deref(),
                config.as_deref(),
                (backup, server),
                out.json,
            ),
        },
        Command::Pull {
            from,
            from_image,
            channel,
            repo,
            trust,
            fleet_trust,
        } => match (from, from_image) {
            (_, Some(image)) => agent::pull_image(&image, channel.as_deref(), &repo.repo, &trust),
            (Some(from), None) => agent::pull(
                &from,
                channel.as_deref().unwrap_or_default(),
                &repo.repo,
                &trust,
                &fleet_trust,
            ),
            (None, None) => unreachable!("clap requires --from or --from-image"),
        },
        Command::Home { command } => home::run(command),
    }
}

/// Open the repository at `path`: a directory, or `s3://BUCKET/PREFIX`
/// (an object store, configured by the `AWS_*` environment variables).
pub fn open(path: &Path) -> Result<Repo> {
    if let Some(url) = object_url(path) {
        let storage = slate_s3::S3Storage::from_env(url)?;
        return Ok(Repo::open_storage(Box::new(storage), url)?);
    }
    Ok(Repo::open(path)?)
}

/// `path` as an object-store URL, when it is one rather than a directory.
pub fn object_url(path: &Path) -> Option<&str> {
    path.to_str().filter(|s| slate_s3::S3Location::is_url(s))
}

/// Open the repository at `path`, creating an empty one there first when
/// it holds none (what `slate pull` does for a new mirror).
pub fn open_or_init(path: &Path) -> Result<Repo> {
    if let Some(url) = object_url(path) {
        let storage = slate_s3::S3Storage::from_env(url)?;
        return match Repo::open_storage(Box::new(storage), url) {
            Err(slate_repo::Error::NotARepository(_)) => Ok(Repo::init_storage(
                Box::new(slate_s3::S3Storage::from_env(url)?),
                url,
                slate_repo::Config::default(),
            )?),
            r => Ok(r?),
        };
    }
    if path.join("config").exists() {
        open(path)
    } else {
        Ok(Repo::init(path, slate_repo::Config::default())?)
    }
}

/// Read a secret key file.
pub fn read_secret_key(path: &Path) -> Result<slate_core::keys::SecretKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read key {}", path.display()))?;
    slate_core::keys::SecretKey::from_text(&text)
        .with_context(|| format!("{} is not a slate secret key", path.display()))
}

/// Read a public key file.
pub fn read_public_key(path: &Path) -> Result<slate_core::keys::PublicKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read key {}", path.display()))?;
    slate_core::keys::PublicKey::from_text(&text)
        .with_context(|| format!("{} is not a slate public key", path.display()))
}
