//! slate-server: `slate serve`. The repository's objects and channels over
//! HTTP, for agents and for any cache or CDN in front, and the fleet API
//! (assignments, reports, the machines table) over a small store trait.
//! The protocol is `docs/format/http.md`; the fleet file `docs/fleet.md`.
//!
//! [`app`] builds the router from an [`AppState`]; it is what the tests
//! drive with `tower::ServiceExt::oneshot`. [`server`] puts it on a socket.
//! The repository and the fleet store are synchronous (their traits are
//! shared with the CLI and with future backends), so handlers call them
//! through `tokio::task::spawn_blocking`, never on the async workers.

pub mod error;
pub mod fleet;
pub mod objects;
pub mod range;
pub mod server;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use slate_repo::Repo;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;

pub use error::{ApiError, ApiResult};
pub use fleet::{FleetConfig, FleetStore, SqliteStore};

/// Largest request body accepted (fleet requests are a few hundred bytes).
pub const BODY_LIMIT: usize = 64 << 10;
/// How long a handler may take to produce its response headers. Streaming
/// a body afterwards is not limited: a pack to a slow link takes its time.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What every handler shares; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The repository served.
    pub repo: Arc<Repo>,
    /// The fleet rules.
    pub fleet: Arc<FleetConfig>,
    /// The machines table.
    pub store: Arc<dyn FleetStore>,
}

impl AppState {
    /// State over a repository, fleet rules and a store.
    pub fn new(repo: Repo, fleet: FleetConfig, store: impl FleetStore + 'static) -> Self {
        AppState {
            repo: Arc::new(repo),
            fleet: Arc::new(fleet),
            store: Arc::new(store),
        }
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
        .route("/v1/fleet/report", post(fleet::api::report))
        .route("/v1/fleet/machines", get(fleet::api::machines))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(timeout))
        .layer(CatchPanicLayer::custom(panicked))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such resource (see docs/format/http.md for the paths served)".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed("method not allowed on this path".into())
}

async fn timeout(req: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::Timeout.into_response(),
    }
}

fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::internal(anyhow::anyhow!("a request handler panicked")).into_response()
}

#[cfg(test)]
mod tests;
