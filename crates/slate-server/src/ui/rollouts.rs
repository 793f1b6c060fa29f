//! The dashboard's rollouts page (`/ui/rollouts`): each channel that
//! FLEET.toml rolls out in waves, where its latest rollout stands (and why
//! it stopped), and per wave how many machines took the new head, are
//! still on their way, fell back or failed. It reads what `GET
//! /v1/fleet/rollouts` answers (`crate::fleet::rollout::api::statuses`),
//! so the page, the command line and the JSON never disagree.

use std::fmt::Write;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::html::{ago, esc, short_id, time, url, utc};
use super::pages::{internal, none};
use super::{page, require_admin};
use crate::fleet::rollout::api::{statuses, threshold_text, RolloutStatus, WaveStatus};
use crate::AppState;

/// The page's path, as the navigation bar names it.
pub const PATH: &str = "/ui/rollouts";

/// A count that links to the machines page filtered to the channel and a
/// state when there is anything to see there.
fn count_link(n: u64, channel: &str, state: Option<&str>) -> String {
    match (n, state) {
        (0, _) | (_, None) => n.to_string(),
        (_, Some(s)) => format!("<a href=\"/ui/?channel={}&amp;state={s}\">{n}</a>", url(channel)),
    }
}

fn wave_row(b: &mut String, channel: &str, w: &WaveStatus) {
    let failed = w.update_failed + w.boot_failed;
    let _ = write!(
        b,
        "<tr data-wave=\"{}\" data-released=\"{}\"><th scope=\"row\">{}</th><td>{}</td><td>{}</td>\
         <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        w.wave,
        w.released,
        esc(&w.name),
        if w.released {
            "<span class=\"state s-up-to-date\">released</span>"
        } else {
            "<span class=\"none\">not yet</span>"
        },
        w.machines,
        w.updated,
        w.pending,
        count_link(w.fell_back, channel, Some("fell-back")),
        count_link(failed, channel, Some("failed")),
        w.excused,
    );
}

/// The CSS class of a rollout's state: stopped by itself reads as a
/// failure, by a person as a warning.
fn state_class(state: &str) -> &'static str {
    match state {
        "halted" => "s-failed",
        "paused" | "aborted" => "s-fell-back",
        "running" => "s-pending",
        _ => "s-up-to-date",
    }
}

fn rollout_section(b: &mut String, s: &RolloutStatus) {
    let anchor = url(&s.channel);
    let _ = write!(
        b,
        "<section aria-labelledby=\"r-{anchor}\" data-channel=\"{}\"><h2 id=\"r-{anchor}\">{}</h2>",
        esc(&s.channel),
        esc(&s.channel)
    );
    let Some(r) = &s.rollout else {
        b.push_str("<p>The channel has no snapshot yet: nothing to roll out.</p></section>");
        return;
    };
    if r.is_baseline() {
        let _ = write!(
            b,
            "<p data-state=\"baseline\">No rollout yet: every machine runs the head {} the server first saw. \
             The next commit to the channel starts one.</p>",
            short_id(Some(&r.head))
        );
    } else {
        let state = r.state.as_str();
        let _ = write!(
            b,
            "<p class=\"lead\">Rollout #{} <span class=\"state {}\" data-rollout-state=\"{state}\">{state}</span></p>",
            r.seq,
            state_class(state)
        );
        if let Some(why) = &r.reason {
            let role = if state == "halted" { " role=\"alert\"" } else { "" };
            let _ = write!(b, "<p class=\"reason\"{role}>{}</p>", esc(why));
        }
        b.push_str("<dl>");
        let _ = write!(
            b,
            "<dt>From</dt><dd>{}</dd><dt>To</dt><dd>{}</dd><dt>Started</dt><dd>{}</dd>\
             <dt>Last change</dt><dd>{}</dd><dt>Canaries</dt><dd>{}</dd><dt>Halts at</dt><dd>{} of a released wave failing</dd>",
            short_id(Some(&r.previous)),
            short_id(Some(&r.head)),
            time(r.started, s.now),
            time(r.changed, s.now),
            esc(&s.canary),
            esc(&threshold_text(s.halt_at, s.min_failures)),
        );
        let next = match s.next_wave_at {
            Some(t) if t > s.now => format!("{} (in {})", esc(&utc(t)), esc(&ago(s.now, t).replace(" ago", ""))),
            Some(_) => "due now".into(),
            None => none().into(),
        };
        let _ = write!(b, "<dt>Next wave</dt><dd>{next}</dd></dl>");
    }
    let _ = write!(
        b,
        "<div class=\"table-wrap\"><table class=\"waves\"><caption>Waves of {}: machines that reported since \
         their wave was released</caption><thead><tr><th scope=\"col\">Wave</th><th scope=\"col\">Released</th>\
         <th scope=\"col\">Machines</th><th scope=\"col\">On the new head</th><th scope=\"col\">On their way</th>\
         <th scope=\"col\">Fell back</th><th scope=\"col\">Failed</th><th scope=\"col\">Excused</th></tr></thead><tbody>",
        esc(&s.channel)
    );
    for w in &s.waves {
        wave_row(b, &s.channel, w);
    }
    b.push_str("</tbody></table></div></section>");
}

/// `GET /ui/rollouts`.
pub async fn rollouts(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = require_admin(&st, &headers).await {
        return r;
    }
    let all = match statuses(&st, None).await {
        Ok(all) => all,
        Err(e) => return internal(&e),
    };
    let mut b = String::new();
    if all.is_empty() {
        b.push_str(
            "<p>The fleet file rolls out no channel in waves: every machine gets its channel's head at once. \
             A <code>[rollout.\"CHANNEL\"]</code> section changes that (docs/operations.md, \"Rollouts\").</p>",
        );
    } else {
        b.push_str(
            "<p>Stop, resume or call off a rollout with <code>slate fleet rollout pause|resume|abort</code>; \
             this page only shows.</p>",
        );
    }
    for s in &all {
        rollout_section(&mut b, s);
    }
    page(StatusCode::OK, "Rollouts", Some(PATH), &b)
}
