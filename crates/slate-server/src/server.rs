//! Running the router on a socket: plain HTTP or TLS (rustls with the
//! `ring` provider, so no C toolchain beyond what ring needs), and a
//! graceful shutdown on SIGINT/SIGTERM that lets requests in flight finish.
//!
//! Connections are limited ([`Limits`]), so that clients which open
//! connections and then send nothing, or half a request, cannot starve
//! the others: the request head (and the TLS handshake) must arrive within
//! a deadline, idle keep-alive connections are closed after the same time,
//! and there is a cap on open connections, overall and per client address.
//! A connection over a cap is closed at once, before anything is read.
//! Request bodies have a deadline and a minimum rate ([`crate::upload`]),
//! so a client cannot hold a connection by sending its body slowly either.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, TcpListener};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum_server::accept::{Accept, DefaultAcceptor};
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use axum_server::Handle;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How long requests in flight may take to finish after a shutdown signal
/// (a slow client fetching a pack must not hold the server forever).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Connection limits of `slate serve` (its flags `--header-timeout`,
/// `--max-connections`, `--max-connections-per-client`, `--body-timeout`,
/// `--min-upload-rate`; docs/format/http.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long a client may take to send a request's head (request line
    /// and headers), counted from the connection's start or the end of the
    /// previous answer; also the limit on a TLS handshake and on an idle
    /// keep-alive connection.
    pub header_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most connections open at once from one client address.
    pub max_per_client: usize,
    /// How long the server waits for a whole request body, from its first
    /// read.
    pub body_timeout: Duration,
    /// Bytes per second a request body must keep up once the client has
    /// had `header_timeout` to get going; 0: no minimum.
    pub min_upload_rate: u64,
}

impl Limits {
    /// The limits on request bodies.
    pub fn bodies(&self) -> crate::upload::BodyLimits {
        crate::upload::BodyLimits {
            timeout: self.body_timeout,
            min_rate: self.min_upload_rate,
            grace: self.header_timeout,
        }
    }
}

/// Default of `--header-timeout`.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(20);
/// Default of `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default of `--max-connections-per-client`: a machine uses a few (its
/// `connections`, 4 by default, plus reports); a NAT in front of a lab
/// shares one address among many machines.
pub const DEFAULT_MAX_PER_CLIENT: usize = 64;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_per_client: DEFAULT_MAX_PER_CLIENT,
            body_timeout: crate::upload::DEFAULT_BODY_TIMEOUT,
            min_upload_rate: crate::upload::DEFAULT_MIN_UPLOAD_RATE,
        }
    }
}

/// The open connections, overall and per client address.
#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// An acceptor that admits a connection only under the caps, and keeps it
/// counted until the connection is dropped.
#[derive(Debug, Clone)]
pub struct LimitAcceptor<A> {
    inner: A,
    limits: Limits,
    counts: Arc<Mutex<Counts>>,
}

impl LimitAcceptor<DefaultAcceptor> {
    /// Limits for a plain acceptor.
    pub fn new(limits: Limits) -> Self {
        LimitAcceptor {
            inner: DefaultAcceptor::new(),
            limits,
            counts: Arc::default(),
        }
    }
}

/// A connection's place under the caps, given back on drop.
#[derive(Debug)]
struct Slot {
    ip: IpAddr,
    counts: Arc<Mutex<Counts>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_client.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_client.remove(&self.ip);
            }
        }
    }
}

/// A stream that holds its [`Slot`] while it lives.
#[derive(Debug)]
pub struct Counted<S> {
    inner: S,
    _slot: Slot,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<A> LimitAcceptor<A> {
    /// Take a slot for a connection from `ip`, or say which cap is full.
    fn admit(&self, ip: IpAddr) -> io::Result<Slot> {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if c.total >= self.limits.max_connections {
            return Err(io::Error::other(format!(
                "refused a connection from {ip}: {} connections are open (--max-connections)",
                c.total
            )));
        }
        let mine = c.per_client.entry(ip).or_insert(0);
        if *mine >= self.limits.max_per_client {
            return Err(io::Error::other(format!(
                "refused a connection from {ip}: it has {mine} open (--max-connections-per-client)"
            )));
        }
        *mine += 1;
        c.total += 1;
        Ok(Slot {
            ip,
            counts: self.counts.clone(),
        })
    }
}

impl<A, S> Accept<TcpStream, S> for LimitAcceptor<A>
where
    A: Accept<Counted<TcpStream>, S> + Clone + Send + 'static,
    A::Future: Send,
    S: Send + 'static,
{
    type Stream = A::Stream;
    type Service = A::Service;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let admitted = stream
            .peer_addr()
            .and_then(|addr| self.admit(addr.ip()))
            .map(|slot| Counted {
                inner: stream,
                _slot: slot,
            });
        let inner = self.inner.clone();
        Box::pin(async move {
            match admitted {
                Ok(stream) => inner.accept(stream, service).await,
                // Dropping the stream closes the connection.
                Err(e) => Err(e),
            }
        })
    }
}

/// Bind a listening socket on `listen` (`host:port`; port 0 picks one).
/// The socket accepts connections into its backlog from here on, so a
/// caller can announce the address before serving starts.
pub fn bind(listen: &str) -> anyhow::Result<TcpListener> {
    let l = TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    // Required by tokio, which takes the socket over.
    l.set_nonblocking(true)
        .with_context(|| format!("cannot listen on {listen}"))?;
    Ok(l)
}

/// Load a PEM certificate chain and private key for TLS.
pub async fn tls_config(cert: &Path, key: &Path) -> anyhow::Result<RustlsConfig> {
    // rustls needs one process-wide crypto provider; choose ring explicitly
    // so that another dependency enabling aws-lc cannot make it ambiguous.
    // An error only means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    RustlsConfig::from_pem_file(cert, key).await.with_context(|| {
        format!(
            "cannot load TLS certificate {} and key {} (both PEM)",
            cert.display(),
            key.display()
        )
    })
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot watch for SIGTERM: {e}");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Serve `app` on `listener` (TLS when `tls` is given) until `shutdown`
/// resolves, then stop accepting and let requests in flight finish for up
/// to [`SHUTDOWN_GRACE`]; with the default [`Limits`].
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<RustlsConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_with_limits(listener, app, tls, Limits::default(), shutdown).await
}

/// [`serve`] with connection limits.
pub async fn serve_with_limits(
    listener: TcpListener,
    app: Router,
    tls: Option<RustlsConfig>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let handle = Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!(
            "shutting down: finishing requests in flight (at most {}s)",
            SHUTDOWN_GRACE.as_secs()
        );
        h.graceful_shutdown(Some(SHUTDOWN_GRACE));
    });
    // With the peer's address, for `--metrics-allow`.
    let service =
        crate::upload::limit_bodies(app, limits.bodies()).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let limited = LimitAcceptor::new(limits);
    // Refused and failed connections are the clients' business; a debug
    // line is enough (a flood must not flood the log too).
    let on_error = |addr: Option<&std::net::SocketAddr>, e: &io::Error| {
        tracing::debug!("connection from {addr:?} dropped: {e}");
    };
    match tls {
        Some(cfg) => {
            let acceptor = RustlsAcceptor::new(cfg)
                .handshake_timeout(limits.header_timeout)
                .acceptor(DefaultAcceptor::new());
            let acceptor = LimitAcceptor {
                inner: acceptor,
                limits,
                counts: limited.counts,
            };
            let mut server = axum_server::from_tcp(listener)?
                .acceptor(acceptor)
                .first_request_timeout(limits.header_timeout)
                .accept_error_handler(on_error)
                .handle(handle);
            server.http_builder().http1().header_read_timeout(limits.header_timeout);
            server.serve(service).await
        }
        None => {
            let mut server = axum_server::from_tcp(listener)?
                .acceptor(limited)
                .first_request_timeout(limits.header_timeout)
                .accept_error_handler(on_error)
                .handle(handle);
            server.http_builder().http1().header_read_timeout(limits.header_timeout);
            server.serve(service).await
        }
    }
}

/// Run `state`'s app on `listen` until SIGINT/SIGTERM, on a runtime of its
/// own (the CLI is synchronous). `on_listening` gets the URL once the
/// socket listens (and TLS is loaded), before requests are served; errors
/// before that point (address in use, unreadable certificate) are returned.
pub fn run_blocking(
    state: crate::AppState,
    listen: &str,
    tls: Option<(&Path, &Path)>,
    limits: Limits,
    on_listening: impl FnOnce(&str),
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = rt.block_on(async move {
        let tls = match tls {
            Some((cert, key)) => Some(tls_config(cert, key).await?),
            None => None,
        };
        let listener = bind(listen)?;
        let addr = listener
            .local_addr()
            .with_context(|| format!("cannot listen on {listen}"))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        on_listening(&format!("{scheme}://{addr}"));
        // Watch channels and the fleet file from the start: a changed
        // fleet file is taken up even before a machine waits.
        let changes = state.changes.clone();
        changes.watch(state.repo.clone());
        // And the fleet's LDAP directory, if the fleet file has an [ldap].
        crate::fleet::ldap::watch(&changes, state.metrics.clone());
        let shutdown = async move {
            shutdown_signal().await;
            // Waiting requests answer now rather than hold the shutdown.
            changes.close();
        };
        serve_with_limits(listener, crate::app(state), tls, limits, shutdown)
            .await
            .context("the server failed")
    });
    // Blocking tasks (a report being written) get a moment to finish; the
    // process must not hang on one stuck on a dead disk.
    rt.shutdown_timeout(Duration::from_secs(5));
    result
}
