//! Batched UDP sends for a shard: datagrams are queued while a frame fans
//! out and flushed with one `sendmmsg(2)` per [`MAX_BATCH`] (nix's safe
//! wrapper; `unsafe_code` stays denied here), waiting through tokio when the
//! socket buffer is full.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use bytes::BytesMut;
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Most datagrams one `sendmmsg` carries.
pub const MAX_BATCH: usize = 64;

/// A shard's outgoing datagrams.
pub struct Batch {
    socket: Arc<UdpSocket>,
    /// ICE-TCP connections: packets to their peers go there, framed.
    tcp: Arc<super::tcp::TcpPeers>,
    queue: Vec<(SocketAddr, BytesMut)>,
    /// `sendmmsg` calls and datagrams sent so far.
    pub syscalls: u64,
    pub sent: u64,
}

impl Batch {
    pub fn new(socket: Arc<UdpSocket>, tcp: Arc<super::tcp::TcpPeers>) -> Batch {
        Batch { socket, tcp, queue: Vec::with_capacity(MAX_BATCH), syscalls: 0, sent: 0 }
    }

    /// Queues a UDP datagram to `to`.
    pub fn push(&mut self, to: SocketAddr, datagram: BytesMut) {
        self.queue.push((to, datagram));
    }

    /// Queues what a session wrote: a UDP datagram, or (ICE-TCP) a frame for
    /// its peer's connection, handed over at once.
    pub fn push_to(&mut self, transport: &rtc::shared::TransportContext, packet: BytesMut) {
        if transport.transport_protocol == rtc::shared::TransportProtocol::TCP {
            if !self.tcp.send(transport.peer_addr, packet) {
                tracing::trace!(to = %transport.peer_addr, "ICE-TCP packet dropped (no connection, or its queue is full)");
            }
        } else {
            self.queue.push((transport.peer_addr, packet));
        }
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Sends everything queued; a datagram the kernel refuses (unreachable
    /// address, too large) is dropped and counted in the return value.
    pub async fn flush(&mut self) -> usize {
        let mut failed = 0;
        let queue = std::mem::take(&mut self.queue);
        let mut at = 0;
        while at < queue.len() {
            let chunk = &queue[at..queue.len().min(at + MAX_BATCH)];
            let slices: Vec<[IoSlice<'_>; 1]> = chunk.iter().map(|(_, d)| [IoSlice::new(d)]).collect();
            let addrs: Vec<Option<SockaddrStorage>> =
                chunk.iter().map(|(a, _)| Some(SockaddrStorage::from(*a))).collect();
            let fd = self.socket.as_raw_fd();
            let result = self
                .socket
                .async_io(Interest::WRITABLE, || {
                    // Not Send (raw pointers): made for each call, never held across an await.
                    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(slices.len(), None);
                    sendmmsg(fd, &mut headers, &slices, &addrs, [], MsgFlags::MSG_DONTWAIT)
                        .map(|r| r.count())
                        .map_err(std::io::Error::from)
                })
                .await;
            self.syscalls += 1;
            match result {
                Ok(0) => {
                    failed += 1;
                    at += 1;
                }
                Ok(n) => {
                    self.sent += n as u64;
                    at += n;
                }
                Err(e) => {
                    // The first datagram of the chunk was refused: drop it, go on.
                    tracing::debug!(to = %chunk[0].0, "UDP send failed: {e}");
                    failed += 1;
                    at += 1;
                }
            }
        }
        let mut queue = queue;
        queue.clear();
        self.queue = queue;
        failed
    }
}
