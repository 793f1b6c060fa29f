//! The one error type of every handler.
//!
//! Clients get a status and `{"error": "one sentence"}`; the sentence is
//! written for them (what was wrong with their request, or that the server
//! failed). Causes of server-side failures (I/O errors with paths, SQLite
//! errors, a corrupt object) are logged here and never sent: they describe
//! the server's file system, which is none of a client's business.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// A handler failed; converts into a JSON error response.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or a field is invalid (400).
    #[error("{0}")]
    BadRequest(String),
    /// Nothing is at this path, or nothing matches (404).
    #[error("{0}")]
    NotFound(String),
    /// The method is not served at this path (405).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// No usable credentials: no `Authorization: Bearer` token, a
    /// malformed one, or one the server does not know (401, with
    /// `WWW-Authenticate: Bearer`).
    #[error("{0}")]
    Unauthorized(String),
    /// The credentials are valid but do not allow this (403).
    #[error("{0}")]
    Forbidden(String),
    /// The request body is over the limit (413).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The request does not apply to the resource as it stands: resuming
    /// an aborted rollout (409).
    #[error("{0}")]
    Conflict(String),
    /// A precondition (`If-None-Match: *`) does not hold (412).
    #[error("{0}")]
    PreconditionFailed(String),
    /// There is no room to store the body: full disk or quota (507).
    #[error("{0}")]
    InsufficientStorage(String),
    /// The client sent its request body too slowly (408).
    #[error("{0}")]
    RequestTimeout(String),
    /// Not answerable yet, e.g. before the fleet's LDAP directory was read
    /// once (503); the client asks again later.
    #[error("{0}")]
    Unavailable(String),
    /// The handler did not answer in time (503).
    #[error("the request timed out")]
    Timeout,
    /// The server failed; the cause is logged, not sent (500).
    #[error("internal server error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// A server-side failure with its cause (logged when answered).
    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        ApiError::Internal(cause.into())
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Timeout | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        // A blocking task panicked or was cancelled: a server bug.
        ApiError::internal(anyhow::Error::new(e).context("blocking task failed"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            ApiError::Internal(cause) => tracing::error!("{cause:#}"),
            ApiError::Timeout => tracing::warn!("request timed out"),
            ApiError::InsufficientStorage(m) => tracing::warn!("{m}"),
            // Client errors are the client's; note them for debugging only.
            other => tracing::debug!("{status}: {other}"),
        }
        let mut resp = (status, Json(serde_json::json!({ "error": self.to_string() }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            // RFC 9110 §11.6.1: a 401 names the scheme the client must use.
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
