//! `slate diff`: what changed between two snapshots and what a client
//! holding the first needs to fetch for the second.

use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;
use slate_core::manifest::diff::{diff, ChangeKind};
use slate_core::manifest::path as mpath;
use slate_repo::Repo;

use crate::output::{human, json};

#[derive(Serialize)]
struct Summary {
    from: String,
    to: String,
    added: usize,
    removed: usize,
    changed: usize,
    metadata_only: usize,
    new_chunks: usize,
    new_bytes: u64,
    new_bytes_compressed: u64,
}

pub fn run(repo: &Repo, a: &str, b: &str, stat: bool, as_json: bool) -> Result<ExitCode> {
    let la = repo.load(a)?;
    let lb = repo.load(b)?;
    let d = diff(&la.manifest, &lb.manifest);
    let count = |k: &[ChangeKind]| d.changes.iter().filter(|c| k.contains(&c.kind)).count();
    // Compressed cost: each new chunk's share of its frame's compressed size.
    let compressed: u64 = d
        .new_chunks
        .iter()
        .filter_map(|c| lb.index.get(&c.id))
        .map(|l| (l.entry.frame_len as u64 * l.entry.len as u64).div_ceil(l.entry.frame_raw_len.max(1) as u64))
        .sum();
    let s = Summary {
        from: la.id.to_hex(),
        to: lb.id.to_hex(),
        added: count(&[ChangeKind::Added]),
        removed: count(&[ChangeKind::Removed]),
        changed: count(&[ChangeKind::ContentChanged, ChangeKind::TypeChanged]),
        metadata_only: count(&[ChangeKind::MetaChanged]),
        new_chunks: d.new_chunks.len(),
        new_bytes: d.new_bytes(),
        new_bytes_compressed: compressed,
    };
    if as_json {
        if !stat {
            for c in &d.changes {
                json(&serde_json::json!({
                    "change": letter(c.kind).to_string(),
                    "path": format!("/{}", String::from_utf8_lossy(&c.path)),
                }))?;
            }
        }
        json(&s)?;
        return Ok(ExitCode::SUCCESS);
    }
    if !stat {
        for c in &d.changes {
            println!("{} /{}", letter(c.kind), mpath::display(&c.path));
        }
    }
    let summary = format!(
        "{} added, {} removed, {} changed, {} metadata only; a client holding {} needs {} new chunks: {} ({} compressed)",
        s.added,
        s.removed,
        s.changed,
        s.metadata_only,
        &s.from[..12],
        s.new_chunks,
        human(s.new_bytes),
        human(s.new_bytes_compressed)
    );
    if stat {
        println!("{summary}");
    } else {
        eprintln!("{summary}");
    }
    Ok(ExitCode::SUCCESS)
}

fn letter(k: ChangeKind) -> char {
    match k {
        ChangeKind::Added => 'A',
        ChangeKind::Removed => 'D',
        ChangeKind::ContentChanged => 'M',
        ChangeKind::TypeChanged => 'T',
        ChangeKind::MetaChanged => 'm',
    }
}
