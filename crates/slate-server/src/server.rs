//! Running the router on a socket: plain HTTP or TLS (rustls with the
//! `ring` provider, so no C toolchain beyond what ring needs), and a
//! graceful shutdown on SIGINT/SIGTERM that lets requests in flight finish.

use std::future::Future;
use std::io;
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum_server::tls_rustls::RustlsConfig;
use axum_server::Handle;

/// How long requests in flight may take to finish after a shutdown signal
/// (a slow client fetching a pack must not hold the server forever).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

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
/// to [`SHUTDOWN_GRACE`].
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<RustlsConfig>,
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
    let service = app.into_make_service();
    match tls {
        Some(cfg) => {
            axum_server::from_tcp_rustls(listener, cfg)?
                .handle(handle)
                .serve(service)
                .await
        }
        None => axum_server::from_tcp(listener)?.handle(handle).serve(service).await,
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
        serve(listener, crate::app(state), tls, shutdown_signal())
            .await
            .context("the server failed")
    });
    // Blocking tasks (a report being written) get a moment to finish; the
    // process must not hang on one stuck on a dead disk.
    rt.shutdown_timeout(Duration::from_secs(5));
    result
}
