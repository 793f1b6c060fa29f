//! The dashboard's pages: machines (filtered, sorted, paginated in the
//! database), channels with their history, and one machine with its
//! recent reports. Each handler checks the caller first
//! ([`super::require_admin`]), then reads the store and the repository on
//! a blocking thread, then renders; every reported string goes through
//! [`esc`].

use std::collections::BTreeMap;
use std::fmt::Write;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use slate_core::SnapshotId;

use super::html::{esc, short_id, time, url, utc};
use super::{error_page, page, require_admin};
use crate::fleet::view::{CountBy, MachineQuery, MachineState, MachineView, Seen, SortKey, REPORT_HISTORY};
use crate::AppState;

/// Rows per page by default, and at most.
pub const PER_PAGE: u64 = 50;
/// Most rows a page may ask for (`per=`).
pub const MAX_PER_PAGE: u64 = 500;
/// Snapshots of a channel's history shown.
pub const HISTORY_SHOWN: usize = 20;

/// The "last seen" filter's choices: query word, meaning, label.
const SEEN: &[(&str, Seen, &str)] = &[
    ("1h", Seen::Within(3600), "in the last hour"),
    ("1d", Seen::Within(86_400), "in the last day"),
    ("not1d", Seen::NotFor(86_400), "not for a day"),
    ("not7d", Seen::NotFor(7 * 86_400), "not for a week"),
];

/// The machines page's query string; anything unknown is ignored rather
/// than refused (a bookmark from another version still opens).
#[derive(Debug, Default, Deserialize)]
pub struct MachinesParams {
    group: Option<String>,
    channel: Option<String>,
    state: Option<String>,
    seen: Option<String>,
    sort: Option<String>,
    order: Option<String>,
    page: Option<u64>,
    per: Option<u64>,
}

impl MachinesParams {
    fn query(&self) -> MachineQuery {
        let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.is_empty());
        let per = self.per.unwrap_or(PER_PAGE).clamp(1, MAX_PER_PAGE);
        MachineQuery {
            group: nonempty(&self.group),
            channel: nonempty(&self.channel),
            state: self.state.as_deref().and_then(MachineState::from_word),
            seen: self
                .seen
                .as_deref()
                .and_then(|w| SEEN.iter().find(|s| s.0 == w))
                .map(|s| s.1),
            sort: self.sort.as_deref().and_then(SortKey::from_word).unwrap_or_default(),
            descending: self.order.as_deref() == Some("desc"),
            offset: self.page.unwrap_or(1).max(1).saturating_sub(1).saturating_mul(per),
            limit: per,
        }
    }
}

/// The query string of the machines page for `q` (its filters, sort and
/// window), starting with `?`.
fn query_string(q: &MachineQuery, page: u64) -> String {
    let mut parts = Vec::new();
    if let Some(g) = &q.group {
        parts.push(format!("group={}", url(g)));
    }
    if let Some(c) = &q.channel {
        parts.push(format!("channel={}", url(c)));
    }
    if let Some(s) = q.state {
        parts.push(format!("state={}", s.word()));
    }
    if let Some(seen) = q.seen {
        if let Some(s) = SEEN.iter().find(|s| s.1 == seen) {
            parts.push(format!("seen={}", s.0));
        }
    }
    if q.sort != SortKey::Id {
        parts.push(format!("sort={}", q.sort.word()));
    }
    if q.descending {
        parts.push("order=desc".into());
    }
    if q.limit != PER_PAGE {
        parts.push(format!("per={}", q.limit));
    }
    if page > 1 {
        parts.push(format!("page={page}"));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&amp;"))
    }
}

/// A machine's state cell: the state, and a network-booted machine's
/// cache fill when it reported one.
fn state_cell(m: &MachineView) -> String {
    let mut s = format!("<span class=\"state s-{}\">{}</span>", m.state.word(), m.state.label());
    if let Some(c) = cache_fill(&m.row.cache) {
        let _ = write!(s, " <span class=\"cache\">{}</span>", esc(&c));
    }
    s
}

/// `cache 42%` or `offline-ready`, from a report's `cache`.
fn cache_fill(cache: &serde_json::Value) -> Option<String> {
    let total = cache.get("total_bytes")?.as_u64()?;
    let cached = cache.get("cached_bytes")?.as_u64()?;
    if cache.get("complete").and_then(|v| v.as_bool()) == Some(true) {
        return Some("cache complete (offline-ready)".into());
    }
    // An empty snapshot is wholly cached.
    let pct = cached.saturating_mul(100).checked_div(total).unwrap_or(100);
    Some(format!("cache {pct}%"))
}

/// Labels as a list of `key=value` chips.
fn labels(v: &serde_json::Value) -> String {
    let Some(map) = v.as_object() else {
        return String::new();
    };
    if map.is_empty() {
        return String::new();
    }
    let mut s = String::from("<ul class=\"labels\" aria-label=\"labels\">");
    for (k, v) in map {
        let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
        let _ = write!(s, "<li>{}={}</li>", esc(k), esc(&v));
    }
    s.push_str("</ul>");
    s
}

pub(super) fn none() -> &'static str {
    "<span class=\"none\">-</span>"
}

fn opt(v: Option<&str>) -> String {
    v.map_or_else(|| none().to_string(), esc)
}

/// A `<select>` of a filter: `name`, its label, the choices (value,
/// text) and the one chosen.
fn select(name: &str, label: &str, choices: &[(String, String)], chosen: Option<&str>) -> String {
    let mut s = format!(
        "<div class=\"field\"><label for=\"f-{name}\">{label}</label><select id=\"f-{name}\" name=\"{name}\"><option value=\"\">any</option>"
    );
    for (v, text) in choices {
        let sel = if Some(v.as_str()) == chosen { " selected" } else { "" };
        let _ = write!(s, "<option value=\"{}\"{sel}>{}</option>", esc(v), esc(text));
    }
    s.push_str("</select></div>");
    s
}

/// `GET /ui/`: the machines.
pub async fn machines(State(st): State<AppState>, headers: HeaderMap, Query(p): Query<MachinesParams>) -> Response {
    if let Err(r) = require_admin(&st, &headers).await {
        return r;
    }
    let q = p.query();
    let store = st.store.clone();
    let now = super::session::now();
    let q2 = q.clone();
    // The store blocks.
    let read = tokio::task::spawn_blocking(move || -> Result<_, crate::fleet::StoreError> {
        Ok((
            store.machine_page(&q2, now)?,
            store.machine_counts(CountBy::Group)?,
            store.machine_counts(CountBy::Channel)?,
        ))
    })
    .await;
    let (page_rows, groups, channels) = match read {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return internal(&e),
        Err(e) => return internal(&e),
    };
    let pages = page_rows.total.div_ceil(q.limit).max(1);
    let current = q.offset / q.limit + 1;

    let mut b = String::with_capacity(64 * 1024);
    // Filters: a plain GET form.
    b.push_str("<form method=\"get\" action=\"/ui/\" class=\"filters\" aria-label=\"Filter machines\">");
    let counted = |v: &[(String, u64)]| -> Vec<(String, String)> {
        v.iter().map(|(n, c)| (n.clone(), format!("{n} ({c})"))).collect()
    };
    b.push_str(&select("group", "Group", &counted(&groups), q.group.as_deref()));
    b.push_str(&select("channel", "Channel", &counted(&channels), q.channel.as_deref()));
    let states: Vec<_> = MachineState::ALL
        .iter()
        .map(|s| (s.word().to_string(), s.label().to_string()))
        .collect();
    b.push_str(&select("state", "State", &states, q.state.map(|s| s.word())));
    let seen: Vec<_> = SEEN.iter().map(|s| (s.0.to_string(), s.2.to_string())).collect();
    let seen_word = q.seen.and_then(|v| SEEN.iter().find(|s| s.1 == v)).map(|s| s.0);
    b.push_str(&select("seen", "Last seen", &seen, seen_word));
    if q.sort != SortKey::Id {
        let _ = write!(b, "<input type=\"hidden\" name=\"sort\" value=\"{}\">", q.sort.word());
    }
    if q.descending {
        b.push_str("<input type=\"hidden\" name=\"order\" value=\"desc\">");
    }
    b.push_str(
        "<div class=\"buttons\"><button type=\"submit\">Filter</button> <a href=\"/ui/\">Clear</a></div></form>",
    );

    let _ = write!(
        b,
        "<p class=\"summary\" id=\"summary\">{} machine{} · page {current} of {pages}</p>",
        page_rows.total,
        if page_rows.total == 1 { "" } else { "s" }
    );
    b.push_str("<div class=\"table-wrap\"><table class=\"machines\" aria-describedby=\"summary\"><thead><tr>");
    let header = |b: &mut String, key: Option<SortKey>, label: &str| match key {
        None => {
            let _ = write!(b, "<th scope=\"col\">{label}</th>");
        }
        Some(k) => {
            let active = q.sort == k;
            let mut nq = q.clone();
            nq.sort = k;
            nq.descending = active && !q.descending;
            let aria = match (active, q.descending) {
                (false, _) => "",
                (true, false) => " aria-sort=\"ascending\"",
                (true, true) => " aria-sort=\"descending\"",
            };
            let arrow = match (active, q.descending) {
                (false, _) => "",
                (true, false) => " ▲",
                (true, true) => " ▼",
            };
            let _ = write!(
                b,
                "<th scope=\"col\"{aria}><a href=\"/ui/{}\">{label}{arrow}</a></th>",
                query_string(&nq, 1)
            );
        }
    };
    header(&mut b, Some(SortKey::Id), "Machine");
    header(&mut b, Some(SortKey::Hostname), "Hostname");
    header(&mut b, Some(SortKey::Group), "Group");
    header(&mut b, Some(SortKey::Channel), "Channel");
    header(&mut b, None, "Running");
    header(&mut b, None, "Assigned");
    header(&mut b, Some(SortKey::State), "State");
    header(&mut b, Some(SortKey::LastSeen), "Last seen");
    b.push_str("</tr></thead><tbody>");
    if page_rows.machines.is_empty() {
        b.push_str("<tr><td colspan=\"8\" class=\"empty\">No machine matches.</td></tr>");
    }
    for m in &page_rows.machines {
        let r = &m.row;
        let _ = write!(
            b,
            "<tr data-machine=\"{}\" data-state=\"{}\"><th scope=\"row\"><a href=\"/ui/machine/{}\">{}</a></th><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.machine),
            m.state.word(),
            url(&r.machine),
            esc(&r.machine),
            opt(r.hostname.as_deref()),
            opt(m.rule.as_deref()),
            labels(&m.labels),
            opt(r.channel.as_deref()),
            short_id(r.current.as_deref()),
            short_id(m.assigned.as_deref().or(r.target.as_deref())),
            state_cell(m),
            time(r.last_seen, now),
        );
    }
    b.push_str("</tbody></table></div>");
    if pages > 1 {
        b.push_str("<nav aria-label=\"Pages\" class=\"pager\"><ul>");
        if current > 1 {
            let _ = write!(
                b,
                "<li><a href=\"/ui/{}\" rel=\"prev\">← Previous</a></li>",
                query_string(&q, current - 1)
            );
        }
        let _ = write!(
            b,
            "<li><span aria-current=\"page\">Page {current} of {pages}</span></li>"
        );
        if current < pages {
            let _ = write!(
                b,
                "<li><a href=\"/ui/{}\" rel=\"next\">Next →</a></li>",
                query_string(&q, current + 1)
            );
        }
        b.push_str("</ul></nav>");
    }
    page(StatusCode::OK, "Machines", Some("/ui/"), &b)
}

/// The page for a server-side failure; the log has the cause.
pub(super) fn internal(e: &dyn std::fmt::Display) -> Response {
    tracing::error!("dashboard: {e}");
    error_page(
        StatusCode::INTERNAL_SERVER_ERROR,
        Some(""),
        "The server could not read the fleet database or the repository; its log says why.",
    )
}

/// One snapshot of a channel's history as shown.
struct HistoryEntry {
    id: String,
    time: Option<u64>,
    message: String,
    entries: u64,
    bytes: u64,
}

/// A channel as the channels page shows it.
struct ChannelInfo {
    name: String,
    length: usize,
    history: Vec<HistoryEntry>,
}

fn read_channels(repo: &slate_repo::Repo) -> anyhow::Result<Vec<ChannelInfo>> {
    let mut out = Vec::new();
    for name in repo.channels()? {
        let ids: Vec<SnapshotId> = repo.channel_history(&name)?;
        let mut history = Vec::new();
        for id in ids.iter().rev().take(HISTORY_SHOWN) {
            // A snapshot whose record is missing or damaged is still listed.
            history.push(match repo.read_snapshot(id) {
                Ok(s) => HistoryEntry {
                    id: id.to_hex(),
                    time: u64::try_from(s.time_ns / 1_000_000_000).ok(),
                    message: s.message,
                    entries: s.entries,
                    bytes: s.file_bytes,
                },
                Err(e) => HistoryEntry {
                    id: id.to_hex(),
                    time: None,
                    message: format!("(cannot read the snapshot: {e})"),
                    entries: 0,
                    bytes: 0,
                },
            });
        }
        out.push(ChannelInfo {
            name,
            length: ids.len(),
            history,
        });
    }
    Ok(out)
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `GET /ui/channels`: every channel, its head, its history and how many
/// machines run it; and the groups.
pub async fn channels(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = require_admin(&st, &headers).await {
        return r;
    }
    let (store, repo) = (st.store.clone(), st.repo.clone());
    let read = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        Ok((
            read_channels(&repo)?,
            store.machine_counts(CountBy::Channel)?,
            store.machine_counts(CountBy::Group)?,
        ))
    })
    .await;
    let (chans, counts, groups) = match read {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return internal(&format!("{e:#}")),
        Err(e) => return internal(&e),
    };
    let counts: BTreeMap<String, u64> = counts.into_iter().collect();
    let now = super::session::now();
    let mut b = String::new();
    if chans.is_empty() {
        b.push_str("<p>The repository has no channels yet (<code>slate commit</code> makes one).</p>");
    }
    b.push_str("<div class=\"table-wrap\"><table class=\"channels\"><thead><tr><th scope=\"col\">Channel</th><th scope=\"col\">Head</th><th scope=\"col\">Snapshots</th><th scope=\"col\">Machines</th></tr></thead><tbody>");
    for c in &chans {
        let n = counts.get(&c.name).copied().unwrap_or(0);
        let _ = write!(
            b,
            "<tr data-channel=\"{}\"><th scope=\"row\"><a href=\"#ch-{}\">{}</a></th><td>{}</td><td>{}</td><td><a href=\"/ui/?channel={}\">{n}</a></td></tr>",
            esc(&c.name),
            url(&c.name),
            esc(&c.name),
            short_id(c.history.first().map(|h| h.id.as_str())),
            c.length,
            url(&c.name),
        );
    }
    b.push_str("</tbody></table></div>");
    for c in &chans {
        let _ = write!(
            b,
            "<section aria-labelledby=\"h-{0}\" id=\"ch-{0}\"><h2 id=\"h-{0}\">{1}</h2>",
            url(&c.name),
            esc(&c.name)
        );
        let _ = write!(
            b,
            "<p>{} snapshot{}, newest first{}.</p>",
            c.length,
            if c.length == 1 { "" } else { "s" },
            if c.length > HISTORY_SHOWN {
                format!(" (the latest {HISTORY_SHOWN} shown; <code>slate log</code> lists all)")
            } else {
                String::new()
            }
        );
        b.push_str("<div class=\"table-wrap\"><table class=\"history\"><thead><tr><th scope=\"col\">Snapshot</th><th scope=\"col\">Committed</th><th scope=\"col\">Message</th><th scope=\"col\">Files</th><th scope=\"col\">Size</th></tr></thead><tbody>");
        for (i, h) in c.history.iter().enumerate() {
            let _ = write!(
                b,
                "<tr><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                short_id(Some(&h.id)),
                if i == 0 {
                    " <span class=\"head\">head</span>"
                } else {
                    ""
                },
                h.time.map_or_else(|| none().to_string(), |t| time(t, now)),
                esc(&h.message),
                h.entries,
                bytes(h.bytes),
            );
        }
        b.push_str("</tbody></table></div></section>");
    }
    b.push_str(
        "<h2 id=\"groups\">Groups</h2><p>The fleet rule that matched each machine at its latest assignment.</p>",
    );
    b.push_str("<div class=\"table-wrap\"><table class=\"groups\"><thead><tr><th scope=\"col\">Group</th><th scope=\"col\">Machines</th></tr></thead><tbody>");
    for (g, n) in &groups {
        let _ = write!(
            b,
            "<tr><th scope=\"row\">{}</th><td><a href=\"/ui/?group={}\">{n}</a></td></tr>",
            esc(g),
            url(g)
        );
    }
    b.push_str("</tbody></table></div>");
    page(StatusCode::OK, "Channels", Some("/ui/channels"), &b)
}

/// A field of a report as text (strings unquoted), if present.
fn field(v: &serde_json::Value, path: &[&str]) -> Option<String> {
    let mut v = v;
    for p in path {
        v = v.get(p)?;
    }
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn strings(v: &serde_json::Value, path: &[&str]) -> Vec<String> {
    let mut v = v;
    for p in path {
        match v.get(p) {
            Some(x) => v = x,
            None => return Vec::new(),
        }
    }
    v.as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        return none().to_string();
    }
    let mut s = String::from("<ul class=\"plain\">");
    for i in items {
        let _ = write!(s, "<li>{}</li>", esc(i));
    }
    s.push_str("</ul>");
    s
}

/// `GET /ui/machine/ID`: one machine and its recent reports.
pub async fn machine(State(st): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = require_admin(&st, &headers).await {
        return r;
    }
    let store = st.store.clone();
    let now = super::session::now();
    let id2 = id.clone();
    let read = tokio::task::spawn_blocking(move || -> Result<_, crate::fleet::StoreError> {
        Ok((
            store.machine_view(&id2, now)?,
            store.machine_reports(&id2, REPORT_HISTORY)?,
        ))
    })
    .await;
    let (m, reports) = match read {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return internal(&e),
        Err(e) => return internal(&e),
    };
    let Some(m) = m else {
        return error_page(
            StatusCode::NOT_FOUND,
            Some(""),
            &format!("No machine {id} has asked this server for an assignment or reported to it."),
        );
    };
    let r = &m.row;
    let mut b = String::new();
    let _ = write!(
        b,
        "<p class=\"lead\"><span class=\"state s-{}\">{}</span></p>",
        m.state.word(),
        m.state.label()
    );
    b.push_str("<div class=\"cards\"><section aria-labelledby=\"h-id\"><h2 id=\"h-id\">Identity</h2><dl>");
    let dl = |b: &mut String, k: &str, v: String| {
        let _ = write!(b, "<dt>{k}</dt><dd>{v}</dd>");
    };
    dl(&mut b, "Machine", format!("<code>{}</code>", esc(&r.machine)));
    dl(&mut b, "Hostname", opt(r.hostname.as_deref()));
    let l = labels(&m.labels);
    dl(&mut b, "Labels", if l.is_empty() { none().into() } else { l });
    dl(&mut b, "Mode", opt(r.mode.as_deref()));
    dl(
        &mut b,
        "Cache",
        cache_fill(&r.cache).map_or_else(|| none().to_string(), |c| esc(&c)),
    );
    dl(
        &mut b,
        "First seen",
        format!("{} ({})", esc(&utc(r.first_seen)), time(r.first_seen, now)),
    );
    dl(
        &mut b,
        "Last seen",
        format!("{} ({})", esc(&utc(r.last_seen)), time(r.last_seen, now)),
    );
    b.push_str("</dl></section><section aria-labelledby=\"h-as\"><h2 id=\"h-as\">Assignment</h2><dl>");
    dl(&mut b, "Group (fleet rule)", opt(m.rule.as_deref()));
    dl(&mut b, "Channel", opt(r.channel.as_deref()));
    dl(&mut b, "Assigned", short_id(m.assigned.as_deref()));
    dl(&mut b, "Running", short_id(r.current.as_deref()));
    dl(&mut b, "Target", short_id(r.target.as_deref()));
    dl(&mut b, "Active slot", opt(r.active_slot.as_deref()));
    if let Some(slots) = r.slots.as_object() {
        for (k, v) in slots {
            dl(&mut b, &format!("Slot {}", esc(k)), short_id(v.as_str()));
        }
    }
    b.push_str("</dl></section></div>");

    let _ = write!(
        b,
        "<h2 id=\"reports\">Recent reports</h2><p>The latest {} reports the machine sent, newest first (the server keeps {REPORT_HISTORY}).</p>",
        reports.len()
    );
    b.push_str("<div class=\"table-wrap\"><table class=\"reports\"><thead><tr><th scope=\"col\">Received</th><th scope=\"col\">Running</th><th scope=\"col\">Target</th><th scope=\"col\">Update</th><th scope=\"col\">Message</th><th scope=\"col\">Boot</th><th scope=\"col\">Boot warnings</th></tr></thead><tbody>");
    if reports.is_empty() {
        b.push_str("<tr><td colspan=\"7\" class=\"empty\">No report yet.</td></tr>");
    }
    for rep in &reports {
        let v: serde_json::Value = serde_json::from_str(&rep.raw).unwrap_or(serde_json::Value::Null);
        let update = field(&v, &["last_update", "result"]);
        let boot = field(&v, &["boot", "result"]);
        let mut message = field(&v, &["last_update", "message"]).map_or_else(|| none().to_string(), |m| esc(&m));
        let shadowed = strings(&v, &["last_update", "shadowed"]);
        if !shadowed.is_empty() {
            let _ = write!(message, "<br>shadowed: {}", list(&shadowed));
        }
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"result r-{}\">{}</td><td>{message}</td><td class=\"result r-{}\">{}</td><td>{}</td></tr>",
            time(rep.received, now),
            short_id(field(&v, &["current"]).as_deref()),
            short_id(field(&v, &["target"]).as_deref()),
            esc(update.as_deref().unwrap_or("none")),
            opt(update.as_deref()),
            esc(boot.as_deref().unwrap_or("none")),
            opt(boot.as_deref()),
            list(&strings(&v, &["boot", "warnings"])),
        );
    }
    b.push_str("</tbody></table></div>");
    page(StatusCode::OK, &format!("Machine {id}"), Some("/ui/machine"), &b)
}
