//! `slate checkout`: materialise a snapshot into a directory.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use slate_repo::Repo;

use crate::output::{human, json, Bar};

pub fn run(repo: &Repo, spec: &str, dest: &Path, sync: bool, as_json: bool) -> Result<ExitCode> {
    let started = std::time::Instant::now();
    let stats = repo
        .checkout(spec, dest, sync, &Bar::new(false))
        .with_context(|| format!("cannot check out {spec} into {}", dest.display()))?;
    if as_json {
        json(&stats)?;
    } else {
        eprintln!(
            "checked out {} entries, {} in {} files, into {} in {:.2} s",
            stats.entries,
            human(stats.bytes),
            stats.files,
            dest.display(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}
