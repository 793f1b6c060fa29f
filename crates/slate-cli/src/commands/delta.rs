//! `slate delta`: prepare the binary-patch delta between two snapshots.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use slate_repo::Repo;

use crate::output::{human, json, Bar};

pub fn run(repo: &Repo, from: &str, to: &str, level: i32, as_json: bool) -> Result<ExitCode> {
    if !(1..=22).contains(&level) {
        bail!("--level must be between 1 and 22");
    }
    let started = std::time::Instant::now();
    let s = slate_repo::delta::generate(repo, from, to, level, &Bar::new(false))
        .with_context(|| format!("cannot prepare the delta {from} -> {to}"))?;
    if as_json {
        json(&s)?;
    } else {
        eprintln!(
            "delta {} -> {}: {} items ({} patches) rebuild {} in {} ({:.1} s); {} chunks left to ordinary fetch",
            &s.from[..12],
            &s.to[..12],
            s.items,
            s.patches,
            human(s.output_bytes),
            human(s.delta_bytes),
            started.elapsed().as_secs_f64(),
            s.left_out_chunks
        );
    }
    Ok(ExitCode::SUCCESS)
}
