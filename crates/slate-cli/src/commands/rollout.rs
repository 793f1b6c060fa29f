//! `slate fleet rollout status|pause|resume|abort`: a channel's phased
//! rollout as the server runs it (`GET /v1/fleet/rollouts`, `POST
//! /v1/fleet/rollouts/ACTION`; docs/operations.md, "Rollouts"), with the
//! administrator token of `slate fleet status`.

use std::process::ExitCode;

use anyhow::{anyhow, bail, Result};
use slate_server::fleet::rollout::api::{RolloutStatus, RolloutsResponse};
use slate_server::fleet::rollout::RolloutState;

use super::fleet::Admin;
use crate::output::json;

/// What `slate fleet rollout` was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Show the rollouts.
    Status,
    /// Release no further wave.
    Pause,
    /// Release waves again, excusing the failures so far.
    Resume,
    /// Send every machine the previous head.
    Abort,
}

/// Run `slate fleet rollout ACTION [--channel C] --server URL ...`.
pub fn run(
    action: Action,
    channel: Option<&str>,
    server: &str,
    token_file: Option<&std::path::Path>,
    tls: (Option<&std::path::Path>, &[String]),
    as_json: bool,
) -> Result<ExitCode> {
    let admin = Admin::new(server, token_file, tls)?;
    let word = match action {
        Action::Status => {
            let value = admin.call("/v1/fleet/rollouts", None)?;
            let list: RolloutsResponse = serde_json::from_value(value.clone())
                .map_err(|e| anyhow!("{}: the answer is not the rollouts list ({e})", admin.base()))?;
            let shown: Vec<&RolloutStatus> = list
                .rollouts
                .iter()
                .filter(|r| channel.is_none_or(|c| c == r.channel))
                .collect();
            if let Some(c) = channel {
                if shown.is_empty() {
                    bail!("the fleet file of {} has no [rollout.{c:?}]", admin.base());
                }
            }
            if as_json {
                json(&serde_json::to_value(RolloutsResponse {
                    rollouts: shown.into_iter().cloned().collect(),
                })?)?;
            } else {
                if shown.is_empty() {
                    eprintln!(
                        "the fleet file of {} has no [rollout.\"CHANNEL\"] section: new heads go to every machine at once",
                        admin.base()
                    );
                }
                for r in shown {
                    print!("{}", details(r));
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        Action::Pause => "pause",
        Action::Resume => "resume",
        Action::Abort => "abort",
    };
    let body = serde_json::json!({ "channel": channel });
    let value = admin.call(&format!("/v1/fleet/rollouts/{word}"), Some(&body))?;
    if as_json {
        json(&value)?;
        return Ok(ExitCode::SUCCESS);
    }
    let status: RolloutStatus =
        serde_json::from_value(value).map_err(|e| anyhow!("{}: the answer is not a rollout ({e})", admin.base()))?;
    print!("{}", details(&status));
    Ok(ExitCode::SUCCESS)
}

fn short(id: &str) -> &str {
    &id[..12.min(id.len())]
}

/// Seconds for people: `45s`, `90m` is `1h30m`, `12h`, `2d`.
fn span(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 if secs.is_multiple_of(60) => format!("{}m", secs / 60),
        60..=3599 => format!("{}m{}s", secs / 60, secs % 60),
        3600..=86399 if secs.is_multiple_of(3600) => format!("{}h", secs / 3600),
        3600..=86399 => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{}h", secs / 86400, secs % 86400 / 3600),
    }
}

/// The lines `slate fleet status` adds under its table, per rollout.
pub fn summary(r: &RolloutStatus) -> String {
    let Some(rec) = &r.rollout else {
        return format!("rollout {}: the channel has no snapshot yet\n", r.channel);
    };
    if rec.is_baseline() {
        return format!(
            "rollout {}: none since {} (released to every machine)\n",
            r.channel,
            short(&rec.head)
        );
    }
    let released = r
        .waves
        .iter()
        .filter(|w| w.released)
        .map(|w| w.name.clone())
        .next_back();
    let mut out = format!(
        "rollout {} #{}: {} from {} to {}, released through {}\n",
        r.channel,
        rec.seq,
        rec.state.as_str(),
        short(&rec.previous),
        short(&rec.head),
        released.unwrap_or_else(|| "nothing".into())
    );
    if let Some(why) = &rec.reason {
        out.push_str(&format!("  {why}\n"));
    }
    out
}

/// `slate fleet rollout status` for one channel: the summary, the waves
/// and when the next one is due.
pub fn details(r: &RolloutStatus) -> String {
    let mut out = summary(r);
    let Some(rec) = r.rollout.as_ref().filter(|rec| !rec.is_baseline()) else {
        return out;
    };
    out.push_str(&format!(
        "  canaries: {}; halts at {} of a wave's machines failing (at least {})\n",
        r.canary,
        slate_server::fleet::rollout::percent(r.halt_at),
        r.min_failures
    ));
    let header = [
        "WAVE",
        "SHARE",
        "AFTER",
        "RELEASED",
        "MACHINES",
        "UPDATED",
        "PENDING",
        "FELL-BACK",
        "UPDATE-FAILED",
        "BOOT-FAILED",
        "EXCUSED",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for w in &r.waves {
        rows.push(vec![
            w.name.split(" (").next().unwrap_or(&w.name).to_string(),
            if w.wave == 0 {
                "-".into()
            } else {
                format!("{}%", w.percent)
            },
            if w.wave == 0 { "-".into() } else { span(w.after) },
            if w.released { "yes".into() } else { "no".into() },
            w.machines.to_string(),
            w.updated.to_string(),
            w.pending.to_string(),
            w.fell_back.to_string(),
            w.update_failed.to_string(),
            w.boot_failed.to_string(),
            w.excused.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|row| row[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str("  ");
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    match (rec.state, r.next_wave_at) {
        (RolloutState::Running, Some(at)) => out.push_str(&format!(
            "  next wave {}\n",
            if at <= r.now {
                "now".to_string()
            } else {
                format!("in {}", span(at - r.now))
            }
        )),
        (RolloutState::Paused | RolloutState::Halted, _) => out.push_str(
            "  no further wave until `slate fleet rollout resume`; `slate fleet rollout abort` sends every machine the previous head\n",
        ),
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans() {
        assert_eq!(span(45), "45s");
        assert_eq!(span(3600), "1h");
        assert_eq!(span(5400), "1h30m");
        assert_eq!(span(12 * 3600), "12h");
        assert_eq!(span(90), "1m30s");
        assert_eq!(span(2 * 86400), "2d0h");
    }
}
