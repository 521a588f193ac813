//! The HTTP server loop: accepts from the capped listener, does the TLS
//! handshake (`[tls]`), and serves each connection with hyper's HTTP/1.1 under
//! two clocks — a request head must arrive within `header_read_timeout_ms`
//! (this also ends a keep-alive connection idle between requests), and a
//! connection that moves no byte either way for `idle_timeout_s` is closed (a
//! stalled body upload or a client that stopped reading a stream). Graceful
//! shutdown: open connections finish their request, then close.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::listener::{CappedListener, CappedStream};

/// How the server treats each connection.
#[derive(Clone)]
pub struct ServeOptions {
    /// A request head (request line and headers) must arrive within this.
    pub header_read_timeout: Duration,
    /// A connection with no byte read or written for this long is closed.
    pub idle_timeout: Duration,
    /// HTTPS when set.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Serves `router` on `listener` until `shutdown`, then lets in-flight
/// requests finish for at most `grace`.
pub async fn serve(
    mut listener: CappedListener,
    router: Router,
    options: ServeOptions,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, addr) = tokio::select! {
            () = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
        };
        let (router, options, shutdown) = (router.clone(), options.clone(), shutdown.clone());
        connections.spawn(async move { connection(stream, addr, router, options, shutdown).await });
    }
    let drained = tokio::time::timeout(grace, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(open = connections.len(), "HTTP connections still open at the shutdown deadline; closing them");
        connections.shutdown().await;
    }
}

async fn connection(
    stream: CappedStream,
    addr: SocketAddr,
    router: Router,
    options: ServeOptions,
    shutdown: CancellationToken,
) {
    let activity = Arc::new(Activity::new());
    let io = Watched { io: stream, activity: activity.clone() };
    match options.tls.clone() {
        None => http(io, addr, router, &options, &activity, shutdown).await,
        Some(acceptor) => {
            let handshake = tokio::time::timeout(options.header_read_timeout, acceptor.accept(io)).await;
            match handshake {
                Ok(Ok(tls)) => http(tls, addr, router, &options, &activity, shutdown).await,
                Ok(Err(e)) => tracing::debug!(client = %addr.ip(), error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(client = %addr.ip(), "TLS handshake timed out"),
            }
        }
    }
}

async fn http<I>(
    io: I,
    addr: SocketAddr,
    router: Router,
    options: &ServeOptions,
    activity: &Activity,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(addr));
        router.clone().oneshot(req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let mut idle = tokio::time::interval(options.idle_timeout / 4);
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(client = %addr.ip(), error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            () = shutdown.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = idle.tick() => {
                if activity.idle_for() >= options.idle_timeout {
                    tracing::debug!(client = %addr.ip(), "HTTP connection idle too long; closed");
                    return;
                }
            }
        }
    }
}

/// When a connection last moved a byte, in ms since it opened.
struct Activity {
    opened: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity { opened: Instant::now(), last_ms: AtomicU64::new(0) }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        self.opened.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// A connection's bytes, each read or write noted in its [`Activity`].
struct Watched {
    io: CappedStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
