//! `slate commit` and `slate sign`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use slate_repo::commit::{self, CommitOptions};
use slate_repo::Repo;

use crate::output::{human, json, Bar};

pub fn run(
    repo: &Repo,
    channel: &str,
    sign: Option<&Path>,
    message: String,
    meta: &[String],
    as_json: bool,
    tree: &Path,
) -> Result<ExitCode> {
    let key = sign.map(super::read_secret_key).transpose()?;
    let metadata = meta
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("--meta {kv:?} is not KEY=VALUE"))
        })
        .collect::<Result<Vec<_>>>()?;
    let opts = CommitOptions {
        channel,
        message,
        sign: key.as_ref(),
        metadata,
    };
    let started = std::time::Instant::now();
    let stats = commit::commit(repo, tree, &opts, &Bar::new(false))
        .with_context(|| format!("cannot commit {}", tree.display()))?;
    if as_json {
        json(&stats)?;
    } else {
        eprintln!(
            "committed {} entries, {} in {} files; {} new chunks ({}) stored as {} in {:.2} s",
            stats.entries,
            human(stats.file_bytes),
            stats.files,
            stats.new_chunks,
            human(stats.new_bytes),
            human(stats.stored_bytes),
            started.elapsed().as_secs_f64()
        );
        println!("{}", stats.snapshot);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn sign(repo: &Repo, key: &Path, spec: &str) -> Result<ExitCode> {
    let key = super::read_secret_key(key)?;
    let id = repo.resolve(spec)?;
    commit::sign(repo, &id, &key)?;
    eprintln!("signed {id} with key {}", key.public().fingerprint());
    Ok(ExitCode::SUCCESS)
}
