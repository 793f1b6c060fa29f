//! `slate log`: channel histories, newest first.

use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;
use slate_repo::Repo;

use crate::output::{human, json, time};

#[derive(Serialize)]
struct LogEntry {
    channel: String,
    snapshot: String,
    parent: Option<String>,
    time_ns: i64,
    message: String,
    metadata: std::collections::BTreeMap<String, String>,
    entries: u64,
    file_bytes: u64,
    signed_by: Vec<String>,
}

pub fn run(repo: &Repo, channel: Option<&str>, as_json: bool) -> Result<ExitCode> {
    let channels = match channel {
        Some(c) => {
            if repo.channel_history(c)?.is_empty() {
                anyhow::bail!("channel {c} does not exist (channels: {})", repo.channels()?.join(", "));
            }
            vec![c.to_string()]
        }
        None => repo.channels()?,
    };
    for ch in channels {
        let history = repo.channel_history(&ch)?;
        for id in history.iter().rev() {
            let s = repo.read_snapshot(id)?;
            let sigs = repo.read_signatures(id)?;
            let e = LogEntry {
                channel: ch.clone(),
                snapshot: id.to_hex(),
                parent: s.parent.map(|p| p.to_hex()),
                time_ns: s.time_ns,
                message: s.message.clone(),
                metadata: s.metadata.iter().cloned().collect(),
                entries: s.entries,
                file_bytes: s.file_bytes,
                signed_by: sigs.iter().map(|g| g.key.fingerprint()).collect(),
            };
            if as_json {
                json(&e)?;
            } else {
                println!("snapshot {}  ({})", e.snapshot, e.channel);
                println!("Date:    {} UTC", time(e.time_ns));
                if let Some(os) = s.meta("PRETTY_NAME") {
                    println!("OS:      {os}");
                }
                println!("Tree:    {} entries, {}", e.entries, human(e.file_bytes));
                if !e.signed_by.is_empty() {
                    println!("Signed:  {}", e.signed_by.join(", "));
                }
                if !e.message.is_empty() {
                    println!("\n    {}", e.message.replace('\n', "\n    "));
                }
                println!();
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
