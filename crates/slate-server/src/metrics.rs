//! `GET /metrics`: what `slate serve` is doing, in the Prometheus text
//! exposition format (version 0.0.4), for a Prometheus server to scrape
//! (docs/operations.md, "Metrics").
//!
//! Three kinds of figures:
//! - counters moved by requests as they pass ([`track`], a middleware):
//!   requests by route *template* (`/v1/repo/{*path}`, never the raw path,
//!   so the number of series stays bounded whatever clients ask) and
//!   status, and bytes of answers by the kind of object served;
//! - counters moved by machines' reports ([`Metrics::report`]): update
//!   failures and boot fallbacks, each counted once per event rather than
//!   once per report (a machine repeats its last boot in every report);
//! - gauges computed from the fleet store when scraped ([`FleetGauges`]):
//!   machines by state. One query, cached for [`FLEET_CACHE`], so that
//!   several Prometheus servers scraping a fleet of 10,000 machines cost
//!   one pass over the table every few seconds at most.
//!
//! The page says how large the fleet is and which machines fail, so it
//! needs the administrator token, like `GET /v1/fleet/machines`; `slate
//! serve --metrics-allow ADDR` lets a Prometheus server at ADDR scrape
//! without one (many scrape setups cannot hold a secret easily).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::error::{ApiError, ApiResult};
use crate::fleet::store::{is_fallback, is_update_failure, MachineState};
use crate::fleet::{FleetStore, ReportRecord};
use crate::objects::Object;
use crate::AppState;

/// How long the gauges computed from the fleet store are reused.
pub const FLEET_CACHE: Duration = Duration::from_secs(5);

/// The `Content-Type` of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// Every metric of one server, and who may read them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    bytes: Family<KindLabels, Counter>,
    reports: Counter,
    update_failures: Family<ResultLabels, Counter>,
    boot_fallbacks: Family<ResultLabels, Counter>,
    /// The fleet directory read from LDAP (`crate::fleet::ldap`).
    pub directory: DirectoryMetrics,
    fleet: FleetGauges,
    /// The last update pass and boot counted per machine (hashes of the
    /// reported JSON), so that a report repeating them counts nothing.
    seen: Mutex<HashMap<String, (u64, u64)>>,
    /// Addresses that may scrape without the administrator token.
    allow: Vec<IpAddr>,
}

/// What the LDAP directory reader reports (`crate::fleet::ldap`).
#[derive(Debug, Default, Clone)]
pub struct DirectoryMetrics {
    /// Machine rules read from the directory in the last good read.
    pub machines: Gauge,
    /// Entries skipped as invalid in the last good read.
    pub skipped: Gauge,
    /// Reads that failed (directory unreachable, search refused).
    pub failures: Counter,
    /// Unix time of the last good read; 0 before the first.
    pub last_success: Gauge,
}

/// Gauges computed from the fleet store when `/metrics` is scraped, at
/// most once per [`FLEET_CACHE`].
///
/// This is where other figures about the fleet go: a rollout-progress
/// gauge (machines of a rollout by stage) is a `Family` field here,
/// registered in [`FleetGauges::register`] and filled in
/// [`FleetGauges::refresh`] from the same blocking call.
#[derive(Debug, Default)]
pub struct FleetGauges {
    machines: Family<StateLabels, Gauge>,
    /// When the gauges were last computed; the lock also keeps two
    /// scrapes arriving together from querying the store twice.
    computed: tokio::sync::Mutex<Option<Instant>>,
}

impl FleetGauges {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "slate_machines",
            "Machines by state (by their last request and report; docs/operations.md)",
            self.machines.clone(),
        );
    }

    /// Recompute from `store` (blocking: call on a blocking thread).
    fn refresh(&self, store: &dyn FleetStore, now: u64) -> Result<(), crate::fleet::StoreError> {
        let counts = store.machine_states(now)?;
        for s in MachineState::ALL {
            self.machines
                .get_or_create(&StateLabels { state: s.as_str() })
                .set(counts.get(s) as i64);
        }
        Ok(())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(Vec::new())
    }
}

impl Metrics {
    /// Fresh counters; `allow` may scrape without a token.
    pub fn new(allow: Vec<IpAddr>) -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            requests: Family::default(),
            bytes: Family::default(),
            reports: Counter::default(),
            update_failures: Family::default(),
            boot_fallbacks: Family::default(),
            directory: DirectoryMetrics::default(),
            fleet: FleetGauges::default(),
            seen: Mutex::default(),
            allow,
            registry: Registry::default(),
        };
        registry.register(
            "slate_http_requests",
            "HTTP requests answered, by method, route template and status",
            m.requests.clone(),
        );
        registry.register(
            "slate_http_response_bytes",
            "Bytes of response bodies sent, by kind of object",
            m.bytes.clone(),
        );
        registry.register("slate_reports", "Machine reports received", m.reports.clone());
        registry.register(
            "slate_update_failures",
            "Failed update passes reported by machines (each pass once), by result",
            m.update_failures.clone(),
        );
        registry.register(
            "slate_boot_fallbacks",
            "Boots that fell back reported by machines (each boot once), by result",
            m.boot_fallbacks.clone(),
        );
        registry.register(
            "slate_directory_machines",
            "Machine rules read from the LDAP directory in its last good read",
            m.directory.machines.clone(),
        );
        registry.register(
            "slate_directory_skipped_entries",
            "Directory entries skipped as invalid in the last good read",
            m.directory.skipped.clone(),
        );
        registry.register(
            "slate_directory_read_failures",
            "Reads of the LDAP directory that failed (the last good set stays in use)",
            m.directory.failures.clone(),
        );
        registry.register(
            "slate_directory_last_success_seconds",
            "Unix time of the last good read of the LDAP directory (0: none yet)",
            m.directory.last_success.clone(),
        );
        m.fleet.register(&mut registry);
        Metrics { registry, ..m }
    }

    /// Count what a stored report says: one more report, and a failed
    /// update pass or a fallen-back boot when they are new for the machine.
    pub fn report(&self, r: &ReportRecord) {
        self.reports.inc();
        let key = |v: &serde_json::Value| {
            let mut h = DefaultHasher::new();
            v.to_string().hash(&mut h);
            h.finish()
        };
        let (update, boot) = (key(&r.last_update), key(&r.boot));
        let previous = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.insert(r.machine.clone(), (update, boot))
        };
        let result = |v: &serde_json::Value| v.get("result").and_then(|x| x.as_str()).map(str::to_owned);
        if previous.is_none_or(|p| p.0 != update) {
            if let Some(res) = result(&r.last_update).filter(|x| is_update_failure(x)) {
                self.update_failures
                    .get_or_create(&ResultLabels { result: known(&res) })
                    .inc();
            }
        }
        if previous.is_none_or(|p| p.1 != boot) {
            if let Some(res) = result(&r.boot).filter(|x| is_fallback(x)) {
                self.boot_fallbacks
                    .get_or_create(&ResultLabels { result: known(&res) })
                    .inc();
            }
        }
    }
}

/// The page, with the fleet gauges refreshed if older than [`FLEET_CACHE`].
async fn render(m: Arc<Metrics>, store: Arc<dyn FleetStore>) -> ApiResult<String> {
    {
        let mut computed = m.fleet.computed.lock().await;
        if computed.is_none_or(|t| t.elapsed() >= FLEET_CACHE) {
            let now = crate::fleet::api::now();
            let me = m.clone();
            // A store query blocks.
            tokio::task::spawn_blocking(move || me.fleet.refresh(store.as_ref(), now))
                .await?
                .map_err(ApiError::internal)?;
            *computed = Some(Instant::now());
        }
    }
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &m.registry)
        .map_err(|e| ApiError::internal(anyhow::anyhow!("cannot encode the metrics: {e}")))?;
    Ok(out)
}

/// A result word from the closed lists of [`is_update_failure`] and
/// [`is_fallback`], as a static label value.
fn known(word: &str) -> &'static str {
    ["error", "refused", "stale", "fell-back", "policy-fell-back", "rescue"]
        .into_iter()
        .find(|w| *w == word)
        .unwrap_or("other")
}

/// A method as a label value: a closed list, so that a client inventing
/// methods cannot add series.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        _ => "other",
    }
}

/// A route template as a label value: `{name}` written `:name` and
/// `{*rest}` written `*rest` (`/v1/state/:machine/:name`), the style most
/// tools know, without braces, which simple exposition parsers take for
/// the end of the label set.
pub fn route_label(template: &str) -> String {
    template.replace("{*", "*").replace('{', ":").replace('}', "")
}

/// What a response body is, for `slate_http_response_bytes`.
fn kind(route: &str, path: &str) -> &'static str {
    match route {
        "/v1/repo/{*path}" => match path.strip_prefix("/v1/repo/").and_then(Object::parse) {
            Some(Object::Pack(_)) => "pack",
            Some(Object::PackIndex(_)) => "pack-index",
            Some(Object::Snapshot(_)) => "snapshot",
            Some(Object::Signatures(_)) => "signatures",
            Some(Object::Delta(..)) => "delta",
            Some(Object::Profile(_)) => "profile",
            Some(Object::ProfileSignatures(_)) => "profile-signatures",
            None => "error",
        },
        "/v1/packs" => "pack-list",
        "/v1/channels/{*name}" | "/v1/heads/{*name}" => "channel",
        "/v1/boot/{id}/{file}" => "boot-file",
        r if r.starts_with("/v1/state/") => "state",
        r if r.starts_with("/v1/home/") => "home",
        _ => "api",
    }
}

/// Middleware: count every answer by route template and status, and the
/// bytes of its body as they are sent (a streamed pack is counted as it
/// goes, so a client that hangs up is not counted for what it never got).
pub async fn track(State(m): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    // Unknown paths share one label: the raw path would let any client
    // add series.
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str());
    let kind = kind(template, req.uri().path());
    let route = route_label(template);
    let method = method_label(req.method());
    let res = next.run(req).await;
    m.requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: res.status().as_u16(),
        })
        .inc();
    let counter = m.bytes.get_or_create_owned(&KindLabels { kind });
    let (parts, body) = res.into_parts();
    if method == "HEAD" {
        return Response::from_parts(parts, body);
    }
    if let Some(n) = http_body_exact(&body) {
        // A body of known length (JSON, small files) goes out whole.
        counter.inc_by(n);
        return Response::from_parts(parts, body);
    }
    // The Content-Length header, if the handler set one, stays and is
    // what hyper sends; only the body's length hint is lost.
    let counted = body.into_data_stream().inspect(move |chunk| {
        if let Ok(c) = chunk {
            counter.inc_by(c.len() as u64);
        }
    });
    Response::from_parts(parts, Body::from_stream(counted))
}

fn http_body_exact(body: &Body) -> Option<u64> {
    use axum::body::HttpBody;
    body.size_hint().exact()
}

/// `GET /metrics`: the page, for an administrator's token or a listed address.
pub async fn metrics(State(st): State<AppState>, req: Request) -> ApiResult<Response> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_canonical());
    let allowed = peer.is_some_and(|ip| st.metrics.allow.contains(&ip));
    if !allowed {
        crate::auth::require_admin(&st, req.headers()).await?;
    }
    let page = render(st.metrics.clone(), st.store.clone()).await?;
    let mut resp = page.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// Parse `--metrics-allow`: an IP address (v4 or v6).
pub fn parse_allow(s: &str) -> Result<IpAddr, String> {
    s.parse::<IpAddr>()
        .map(|ip| ip.to_canonical())
        .map_err(|_| format!("{s:?} is not an IP address (e.g. 127.0.0.1 or ::1)"))
}
