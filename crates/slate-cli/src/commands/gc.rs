//! `slate gc`: drop unreferenced snapshots and data.

use std::process::ExitCode;

use anyhow::Result;
use slate_repo::Repo;

use crate::output::{human, json};

pub fn run(repo: &Repo, keep_last: Option<usize>, dry_run: bool, as_json: bool) -> Result<ExitCode> {
    if keep_last == Some(0) {
        anyhow::bail!("--keep-last must be at least 1 (a channel always keeps its head)");
    }
    let p = slate_repo::gc::gc(repo, keep_last, dry_run)?;
    if as_json {
        json(&p)?;
    } else {
        eprintln!(
            "{}{} snapshots dropped, {} kept; {} packs dropped, {} rewritten; {} freed; {} temp files",
            if dry_run { "would be: " } else { "" },
            p.drop_snapshots.len(),
            p.kept_snapshots,
            p.drop_packs.len(),
            p.rewrite_packs.len(),
            human(p.freed_bytes),
            p.temp_files
        );
    }
    Ok(ExitCode::SUCCESS)
}
