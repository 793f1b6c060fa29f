//! `slate verify`: check every object and signature.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use slate_repo::Repo;

use crate::output::{json, Bar};

pub fn run(repo: &Repo, trust: &[PathBuf], as_json: bool) -> Result<ExitCode> {
    let keys = trust
        .iter()
        .map(|p| super::read_public_key(p))
        .collect::<Result<Vec<_>>>()?;
    let r = slate_repo::verify::verify(repo, &keys, &Bar::new(false))?;
    if as_json {
        json(&r)?;
    } else {
        for n in &r.notices {
            println!("NOTICE {n}");
        }
        for f in &r.faults {
            println!("FAULT {f}");
        }
        eprintln!(
            "checked {} packs, {} chunks, {} snapshots: {}{}",
            r.packs,
            r.chunks,
            r.snapshots,
            if r.faults.is_empty() {
                "no faults".to_string()
            } else {
                format!("{} faults", r.faults.len())
            },
            if r.notices.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} leftovers of interrupted writes (`slate gc` removes them)",
                    r.notices.len()
                )
            }
        );
    }
    if r.faults.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        if !as_json {
            eprintln!("slate: error: the repository has faults: {}", r.faults[0]);
        }
        Ok(ExitCode::from(1))
    }
}
