//! `slate gc`: drop unreferenced snapshots and data (on an object store,
//! in two phases: record now, delete after the grace period).

use std::process::ExitCode;

use anyhow::Result;
use slate_repo::gc::GcOptions;
use slate_repo::Repo;

use crate::output::{human, json};

pub fn run(repo: &Repo, opts: &GcOptions, as_json: bool) -> Result<ExitCode> {
    if opts.keep_last == Some(0) {
        anyhow::bail!("--keep-last must be at least 1 (a channel always keeps its head)");
    }
    let p = slate_repo::gc::gc(repo, opts)?;
    if as_json {
        json(&p)?;
        return Ok(ExitCode::SUCCESS);
    }
    let would = if opts.dry_run { "would be: " } else { "" };
    match &p.pending {
        None => eprintln!(
            "{would}{} snapshots dropped, {} kept; {} packs dropped, {} rewritten; {} freed; {} temp files",
            p.drop_snapshots.len(),
            p.kept_snapshots,
            p.drop_packs.len(),
            p.rewrite_packs.len(),
            human(p.freed_bytes),
            p.temp_files
        ),
        Some(r) => eprintln!(
            "{would}{} snapshots and {} packs unreferenced, {} kept snapshots, {} packs rewritten; gc/pending: \
             {} entries recorded, {} deleted after their grace period ({} freed), {} waiting, {} referenced again",
            p.drop_snapshots.len(),
            p.drop_packs.len(),
            p.kept_snapshots,
            p.rewrite_packs.len(),
            r.recorded,
            r.deleted,
            human(r.deleted_bytes),
            r.waiting,
            r.struck
        ),
    }
    Ok(ExitCode::SUCCESS)
}
