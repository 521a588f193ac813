//! The HTTP server's TCP listener: at most `[limits] http_connections` open
//! at once. A connection beyond that is closed as soon as it is accepted and
//! counted (`infercast_limit_refusals_total{limit="http_connections"}`), so a
//! client that opens sockets without end cannot exhaust file descriptors.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use prometheus::IntCounterVec;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A [`TcpListener`] with a cap on open connections.
pub struct CappedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    refusals: Option<IntCounterVec>,
}

/// An accepted connection holding one of the listener's permits until dropped.
pub struct CappedStream {
    io: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl CappedListener {
    /// At most `max` (≥ 1) connections of `inner` open at once; refusals counted in `refusals`.
    pub fn new(inner: TcpListener, max: usize, refusals: Option<IntCounterVec>) -> CappedListener {
        CappedListener { inner, permits: Arc::new(Semaphore::new(max.max(1))), refusals }
    }
}

impl axum::serve::Listener for CappedListener {
    type Io = CappedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (CappedStream, SocketAddr) {
        loop {
            let (io, addr) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait, as axum's own listener does.
                    tracing::warn!(error = %e, "cannot accept an HTTP connection");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    continue;
                }
            };
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => return (CappedStream { io, _permit: permit }, addr),
                Err(_) => {
                    if let Some(r) = &self.refusals {
                        r.with_label_values(&["http_connections"]).inc();
                    }
                    tracing::debug!(client = %addr.ip(), "HTTP connection refused: the connection cap is reached");
                    drop(io);
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl AsyncRead for CappedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for CappedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
