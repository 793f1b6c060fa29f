//! Request bodies under a deadline and a minimum rate (`slate serve
//! --body-timeout`, `--min-upload-rate`): a client that sends a body at a
//! byte a second (slowloris on the body) must not hold a connection and a
//! handler for as long as it likes.
//!
//! Every request body is wrapped before any handler sees it, so every route
//! that reads one (state and home uploads, fleet reports and assignment
//! requests) is covered, and routes added later are too. The wrapper
//! counts only the time the server spends *waiting for the client*: a
//! handler that is busy (a quota check, a slow disk behind a full channel)
//! is not the client's fault, and a client blocked by TCP flow control
//! while the server is busy must not be cut for it. The client is cut when
//!
//! - the time spent waiting for its body exceeds the grace period plus
//!   one second per `min_rate` bytes received so far (so after the grace
//!   period it must keep up `min_rate` on average), or
//! - the server is waiting for more of the body longer than `timeout`
//!   after it first asked for it (the whole-body deadline).
//!
//! A cut body ends in an error for the handler; whatever the handler then
//! answers is replaced by `408 Request Timeout` with `Connection: close`,
//! so the connection ends with the answer and the half-read body is never
//! drained.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, BodyDataStream, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::Stream;
use tokio::time::{Instant, Sleep};

use crate::error::ApiError;

/// Default of `--body-timeout`: the home client's own limit on one
/// request, enough for a 24 MiB pack over a 512 kbit/s uplink.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(600);
/// Default of `--min-upload-rate`, bytes per second (32 kbit/s: any link a
/// machine can update over, and far above a trickle).
pub const DEFAULT_MIN_UPLOAD_RATE: u64 = 4096;

/// The limits on a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    /// The whole-body deadline, counted from the server's first read.
    pub timeout: Duration,
    /// Bytes per second a body must keep up after the grace period; 0
    /// checks no rate.
    pub min_rate: u64,
    /// Waiting the client gets before the rate counts (`slate serve` uses
    /// its `--header-timeout`: the time a client gets to start a request).
    pub grace: Duration,
}

/// `router` with every request body under `limits`.
pub fn limit_bodies(router: Router, limits: BodyLimits) -> Router {
    router.layer(axum::middleware::from_fn_with_state(limits, pace))
}

async fn pace(State(limits): State<BodyLimits>, req: Request, next: Next) -> Response {
    let cut = Arc::new(OnceLock::new());
    let req = req.map(|body| {
        Body::from_stream(Paced {
            inner: Some(body.into_data_stream()),
            limits,
            first_read: None,
            waiting_since: None,
            waited: Duration::ZERO,
            received: 0,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            cut: cut.clone(),
        })
    });
    let resp = next.run(req).await;
    match cut.get() {
        None => resp,
        Some(why) => {
            tracing::info!("request body cut off: {why}");
            let mut resp = ApiError::RequestTimeout(why.clone()).into_response();
            // End the connection with the answer: the rest of the body is
            // not worth waiting for, and it must not be read as a request.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            resp
        }
    }
}

/// A request body that fails once the client is too slow.
struct Paced {
    inner: Option<BodyDataStream>,
    limits: BodyLimits,
    /// When the server first asked for the body.
    first_read: Option<Instant>,
    /// Since when the server has been waiting for the next piece.
    waiting_since: Option<Instant>,
    /// Time spent waiting for pieces that have arrived.
    waited: Duration,
    received: u64,
    timer: Pin<Box<Sleep>>,
    /// Why the body was cut off, for the answer.
    cut: Arc<OnceLock<String>>,
}

impl Paced {
    /// When the wait that started at `since` becomes too long, and why.
    fn deadline(&self, since: Instant) -> (Instant, String) {
        let first = self.first_read.unwrap_or(since);
        let whole = (
            first + self.limits.timeout,
            format!(
                "the request body took longer than {}s (--body-timeout)",
                self.limits.timeout.as_secs()
            ),
        );
        if self.limits.min_rate == 0 {
            return whole;
        }
        let allowed = self.limits.grace + Duration::from_secs_f64(self.received as f64 / self.limits.min_rate as f64);
        let paced = (
            since + allowed.saturating_sub(self.waited),
            format!(
                "the request body arrived slower than {} bytes per second ({} bytes so far; --min-upload-rate)",
                self.limits.min_rate, self.received
            ),
        );
        if paced.0 < whole.0 {
            paced
        } else {
            whole
        }
    }
}

impl Stream for Paced {
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let now = Instant::now();
        this.first_read.get_or_insert(now);
        let since = *this.waiting_since.get_or_insert(now);
        match Pin::new(inner).poll_next(cx) {
            Poll::Ready(piece) => {
                this.waited += now.saturating_duration_since(since);
                this.waiting_since = None;
                match &piece {
                    Some(Ok(bytes)) => this.received += bytes.len() as u64,
                    // The end, or the client's own failure: nothing more to pace.
                    _ => this.inner = None,
                }
                Poll::Ready(piece)
            }
            Poll::Pending => {
                let (at, why) = this.deadline(since);
                this.timer.as_mut().reset(at);
                match this.timer.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => {
                        this.inner = None;
                        let _ = this.cut.set(why.clone());
                        Poll::Ready(Some(Err(axum::Error::new(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            why,
                        )))))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use axum::routing::put;
    use tower::ServiceExt;

    /// A handler that reads the whole body after `delay` (a busy server)
    /// and answers with its length.
    fn app(limits: BodyLimits, delay: Duration) -> Router {
        let read = move |body: Body| async move {
            tokio::time::sleep(delay).await;
            match axum::body::to_bytes(body, usize::MAX).await {
                Ok(b) => (StatusCode::OK, b.len().to_string()),
                Err(e) => (StatusCode::BAD_REQUEST, e.to_string()),
            }
        };
        limit_bodies(Router::new().route("/up", put(read)), limits)
    }

    /// A body that sends `pieces` pieces of `size` bytes, `every` apart
    /// (the first at once).
    fn trickle(pieces: usize, size: usize, every: Duration) -> Body {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        tokio::spawn(async move {
            for i in 0..pieces {
                if i > 0 {
                    tokio::time::sleep(every).await;
                }
                if tx.send(Ok(Bytes::from(vec![b'x'; size]))).await.is_err() {
                    return;
                }
            }
        });
        Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|p| (p, rx))
        }))
    }

    async fn send(app: Router, body: Body) -> (StatusCode, Option<HeaderValue>, String, Duration) {
        let start = Instant::now();
        let resp = app.oneshot(Request::put("/up").body(body).unwrap()).await.unwrap();
        let (status, close) = (resp.status(), resp.headers().get(header::CONNECTION).cloned());
        let text = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (
            status,
            close,
            String::from_utf8_lossy(&text).into_owned(),
            start.elapsed(),
        )
    }

    const LIMITS: BodyLimits = BodyLimits {
        timeout: Duration::from_secs(600),
        min_rate: 100,
        grace: Duration::from_secs(5),
    };

    #[tokio::test(start_paused = true)]
    async fn a_body_trickling_under_the_minimum_rate_is_cut_with_408() {
        // A byte a second against 100 bytes per second after 5 s of grace.
        let (status, close, text, took) =
            send(app(LIMITS, Duration::ZERO), trickle(1000, 1, Duration::from_secs(1))).await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{text}");
        assert_eq!(close.as_ref().map(|v| v.as_bytes()), Some(&b"close"[..]));
        assert!(text.contains("--min-upload-rate"), "{text}");
        assert!(
            took >= Duration::from_secs(5) && took < Duration::from_secs(7),
            "{took:?}"
        );
        // Nothing at all after the head: cut at the end of the grace period.
        let silent = Body::from_stream(futures_util::stream::pending::<Result<Bytes, std::io::Error>>());
        let (status, _, _, took) = send(app(LIMITS, Duration::ZERO), silent).await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        assert!(
            took >= Duration::from_secs(5) && took < Duration::from_millis(5100),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_keeps_the_rate_is_read_whole() {
        // 200 bytes a second for 30 s, twice the minimum.
        let (status, close, text, _) = send(
            app(LIMITS, Duration::ZERO),
            trickle(300, 20, Duration::from_millis(100)),
        )
        .await;
        assert_eq!((status, text.as_str()), (StatusCode::OK, "6000"));
        assert!(close.is_none());
        // A fast start earns time: 10 000 bytes at once, then a 90 s pause
        // (inside the 5 + 100 s they are worth), then the rest.
        let (status, _, text, _) = send(app(LIMITS, Duration::ZERO), trickle(2, 10_000, Duration::from_secs(90))).await;
        assert_eq!((status, text.as_str()), (StatusCode::OK, "20000"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_whole_body_deadline_cuts_a_body_that_keeps_the_rate() {
        let limits = BodyLimits {
            timeout: Duration::from_secs(3),
            ..LIMITS
        };
        let (status, close, text, took) = send(
            app(limits, Duration::ZERO),
            trickle(100, 1000, Duration::from_millis(100)),
        )
        .await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{text}");
        assert!(close.is_some());
        assert!(text.contains("--body-timeout"), "{text}");
        assert!(took < Duration::from_millis(3100), "{took:?}");
        // No rate check at all: only the deadline.
        let limits = BodyLimits { min_rate: 0, ..limits };
        let (status, _, text, _) = send(app(limits, Duration::ZERO), trickle(20, 1, Duration::from_millis(100))).await;
        assert_eq!((status, text.as_str()), (StatusCode::OK, "20"));
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_server_spends_busy_is_not_charged_to_the_client() {
        // The handler reads nothing for 60 s: the client, blocked, has
        // sent a byte; the rest comes at once when asked for.
        let (status, _, text, took) = send(app(LIMITS, Duration::from_secs(60)), trickle(50, 1, Duration::ZERO)).await;
        assert_eq!((status, text.as_str()), (StatusCode::OK, "50"));
        assert!(took >= Duration::from_secs(60));
        // A body with no request body at all (a GET) passes untouched.
        let (status, _, text, _) = send(app(LIMITS, Duration::ZERO), Body::empty()).await;
        assert_eq!((status, text.as_str()), (StatusCode::OK, "0"));
    }
}
