//! slate-server: `slate serve`. The repository's objects and channels over
//! HTTP, for agents and for any cache or CDN in front, and the fleet API
//! (assignments, reports, the machines table) over a small store trait.
//! Machines enrolled with a token ([`auth`]) keep private state blobs and
//! encrypted home repositories on it ([`private`], over [`blobs`]).
//! Diskless machines boot from it with iPXE ([`netboot`]). The
//! administrator's web dashboard is under `/ui/` ([`ui`]).
//! The protocol is `docs/format/http.md`; the fleet file `docs/fleet.md`.
//!
//! [`app`] builds the router from an [`AppState`]; it is what the tests
//! drive with `tower::ServiceExt::oneshot`. [`server`] puts it on a socket.
//! The repository and the fleet store are synchronous (their traits are
//! shared with the CLI and with future backends), so handlers call them
//! through `tokio::task::spawn_blocking`, never on the async workers.

pub mod auth;
pub mod blobs;
pub mod changes;
pub mod error;
pub mod fleet;
pub mod metrics;
pub mod netboot;
pub mod objects;
pub mod private;
pub mod range;
pub mod server;
#[cfg(any(test, feature = "test-postgres"))]
pub mod testpg;
pub mod ui;
pub mod upload;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use slate_repo::Repo;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

pub use blobs::PrivateStorage;
pub use error::{ApiError, ApiResult};
pub use fleet::{FleetConfig, FleetDb, FleetStore, PostgresStore, SqliteStore, TokenStore};

/// Largest request body accepted (fleet requests are a few hundred bytes);
/// state and home uploads have limits of their own.
pub const BODY_LIMIT: usize = 64 << 10;
/// How long a handler may take to produce its response headers. Streaming
/// a body afterwards is not limited: a pack to a slow link takes its time.
/// Uploads (PUT) are not limited either: their bodies are read with an idle
/// timeout ([`private::BODY_IDLE_TIMEOUT`]) instead.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What every handler shares; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The repository served.
    pub repo: Arc<Repo>,
    /// The fleet rules in use (reloaded when the fleet file changes) and
    /// the news of changes that waiting assignment requests listen to.
    pub changes: Arc<changes::Changes>,
    /// The machines table.
    pub store: Arc<dyn FleetStore>,
    /// The machines' tokens (the same database as `store`).
    pub tokens: Arc<dyn TokenStore>,
    /// Machine state and home repositories; `None` serves neither (404).
    pub private: Option<Arc<PrivateStorage>>,
    /// The fleet key that signs assignments, and how long they stay fresh;
    /// `None` answers unsigned assignments, which agents refuse.
    pub signer: Option<Arc<fleet::sign::Signer>>,
    /// The administrators' tokens; `None`: no request is an administrator's.
    pub admin: Option<auth::AdminTokens>,
    /// The kernels and initramfses of the snapshots booted lately.
    pub boot: Arc<netboot::files::BootCache>,
    /// The channels' rollouts (the same database as `store`), cached.
    pub rollouts: Arc<fleet::rollout::Rollouts>,
    /// The counters and gauges of `GET /metrics`.
    pub metrics: Arc<metrics::Metrics>,
}

impl AppState {
    /// State over a repository, fleet rules and a store (machines and
    /// tokens), keeping no private data until [`AppState::with_private`].
    pub fn new<S: FleetStore + TokenStore + fleet::rollout::RolloutStore + 'static>(
        repo: Repo,
        fleet: FleetConfig,
        store: S,
    ) -> Self {
        let store = Arc::new(store);
        AppState {
            rollouts: Arc::new(fleet::rollout::Rollouts::new(
                store.clone(),
                fleet::rollout::system_clock(),
            )),
            repo: Arc::new(repo),
            changes: Arc::new(changes::Changes::new(fleet, changes::DEFAULT_MAX_WAITERS)),
            store: store.clone(),
            tokens: store,
            private: None,
            signer: None,
            admin: None,
            boot: Arc::default(),
            metrics: Arc::default(),
        }
    }

    /// Let these addresses read `GET /metrics` without the administrator
    /// token (`slate serve --metrics-allow`).
    pub fn with_metrics_allow(mut self, allow: Vec<std::net::IpAddr>) -> Self {
        self.metrics = Arc::new(metrics::Metrics::new(allow));
        self
    }

    /// The fleet rules in use.
    pub fn fleet(&self) -> Arc<FleetConfig> {
        self.changes.fleet()
    }

    /// Let at most `n` assignment requests wait for a change at once
    /// (`slate serve` allows half of `--max-connections`).
    pub fn with_max_waiters(mut self, n: usize) -> Self {
        self.changes = Arc::new(changes::Changes::new((*self.changes.fleet()).clone(), n));
        self
    }

    /// Time rollouts by `clock` instead of the system's: tests move it by
    /// hand so that soak times of hours pass at once. Only code that builds
    /// the state in-process can call it; `slate serve` never does.
    pub fn with_rollout_clock(mut self, clock: fleet::rollout::Clock) -> Self {
        self.rollouts = Arc::new(self.rollouts.with_clock(clock));
        self
    }

    /// Sign every assignment with `signer`'s fleet key.
    pub fn with_signer(mut self, signer: fleet::sign::Signer) -> Self {
        self.signer = Some(Arc::new(signer));
        self
    }

    /// Accept the administrator tokens listed in `file`.
    pub fn with_admin_tokens(mut self, file: &std::path::Path) -> Self {
        self.admin = Some(auth::AdminTokens {
            file: file.to_path_buf(),
        });
        self
    }

    /// Keep machine state and home repositories in `private`.
    pub fn with_private(mut self, private: PrivateStorage) -> Self {
        self.private = Some(Arc::new(private));
        self
    }
}

/// The HTTP application: every route of `docs/format/http.md`, with request
/// logs, a body limit, a timeout and JSON errors everywhere (unknown paths
/// and methods, panics and timeouts included).
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v1/repo/{*path}", get(objects::object))
        .route("/v1/packs", get(objects::packs))
        .route("/v1/channels/{*name}", get(objects::channel))
        .route("/v1/fleet/assignment", post(fleet::api::assignment))
        .route("/v1/boot/assignment", post(fleet::api::boot_assignment))
        .route("/v1/fleet/report", post(fleet::api::report))
        .route("/v1/fleet/machines", get(fleet::api::machines))
        .route("/v1/fleet/rollouts", get(fleet::rollout::api::list))
        .route("/v1/fleet/rollouts/{action}", post(fleet::rollout::api::command))
        .route("/v1/trust", get(fleet::sign::trust_document))
        .route("/metrics", get(metrics::metrics))
        .route("/v1/heads/{*name}", get(fleet::sign::channel_head))
        .route("/v1/boot/ipxe", get(netboot::ipxe))
        .route("/v1/boot/{id}/{file}", get(netboot::file))
        .route("/v1/state/{machine}/", get(private::state_list))
        .route(
            "/v1/state/{machine}/{name}",
            get(private::state_get)
                .put(private::state_put)
                .delete(private::state_delete)
                // Bodies are limited by the handlers (--state-limit).
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/home/{repo}/{kind}/", get(private::home_list))
        .route(
            "/v1/home/{repo}/{kind}/{name}",
            get(private::home_get)
                .put(private::home_put)
                .delete(private::home_delete)
                .layer(DefaultBodyLimit::disable()),
        )
        // The web dashboard (docs/operations.md, "Dashboard").
        .merge(ui::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(timeout))
        .layer(CatchPanicLayer::custom(panicked))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(log_response),
        )
        // Outermost, so that it counts what the client gets: timeouts and
        // caught panics included.
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::track,
        ))
        .with_state(state)
}

/// The span of one request: method, URI and the `Range` asked for, so the
/// log at `info` is an access log (a site cache in front is checked by
/// which ranges reached the origin: docs/scale.md, "Site caches").
fn request_span(req: &Request) -> tracing::Span {
    let range = req
        .headers()
        .get(axum::http::header::RANGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!("request", method = %req.method(), uri = %req.uri(), range = %range)
}

/// One line per answer: status, body length (`Content-Length`; `-` for a
/// streamed body without one) and the time to the response head.
fn log_response(res: &Response, latency: Duration, _span: &tracing::Span) {
    let bytes = res
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info!(
        status = res.status().as_u16(),
        bytes = %bytes,
        latency_ms = latency.as_millis() as u64,
        "finished processing request"
    );
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such resource (see docs/format/http.md for the paths served)".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed("method not allowed on this path".into())
}

async fn timeout(req: Request, next: Next) -> Response {
    if req.method() == Method::PUT {
        // An upload's handler answers after the whole body: its time grows
        // with the size and the link. Its reads have an idle timeout.
        return next.run(req).await;
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::Timeout.into_response(),
    }
}

fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::internal(anyhow::anyhow!("a request handler panicked")).into_response()
}

#[cfg(test)]
mod ldap_tests;
#[cfg(test)]
mod metrics_tests;
#[cfg(test)]
mod netboot_tests;
#[cfg(test)]
mod private_tests;
#[cfg(test)]
mod tests;
