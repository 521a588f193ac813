//! Batched UDP sends for a shard: datagrams are queued while a frame fans
//! out and flushed with one `sendmmsg(2)` per [`MAX_BATCH`] messages (nix's
//! safe wrapper; `unsafe_code` stays denied here), waiting through tokio when
//! the socket buffer is full. Consecutive datagrams to one viewer of one
//! size (an access unit's RTP packets; the last may be shorter) go as one
//! message with UDP GSO (`UDP_SEGMENT`, Linux ≥ 4.18): the kernel cuts it
//! into datagrams, so it routes and queues once per message, not per packet.
//! A socket or route that refuses GSO (`EIO`: no checksum offload) turns it
//! off for the shard, with a warning, and sends the rest one datagram each.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use bytes::BytesMut;
use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Most messages one `sendmmsg` carries.
pub const MAX_BATCH: usize = 64;
/// Most datagrams one GSO message holds (the kernel's `UDP_MAX_SEGMENTS` is
/// 64 before Linux 6.2, 128 since).
pub const MAX_SEGMENTS: usize = 64;
/// Most bytes of one GSO message (a UDP payload's limit, less the IPv6 header, with room).
const MAX_MESSAGE_BYTES: usize = 60_000;

/// One message: datagrams `start..end` of the queue to `to`, all but the
/// last exactly `segment` bytes long.
#[derive(Clone, Copy)]
struct Message {
    to: SocketAddr,
    start: usize,
    end: usize,
    segment: usize,
    bytes: usize,
}

impl Message {
    fn datagrams(&self) -> usize {
        self.end - self.start
    }

    /// The GSO segment size it is sent with; `None`: a single datagram.
    fn gso(&self) -> Option<u16> {
        (self.datagrams() > 1).then_some(self.segment as u16)
    }
}

/// A shard's outgoing datagrams.
pub struct Batch {
    socket: Arc<UdpSocket>,
    /// ICE-TCP connections: packets to their peers go there, framed.
    tcp: Arc<super::tcp::TcpPeers>,
    /// Datagrams in send order, and the messages they form.
    datagrams: Vec<BytesMut>,
    messages: Vec<Message>,
    /// UDP GSO still in use (until the kernel first refuses it).
    gso: bool,
    /// `sendmmsg` calls and datagrams sent so far.
    pub syscalls: u64,
    pub sent: u64,
}

impl Batch {
    pub fn new(socket: Arc<UdpSocket>, tcp: Arc<super::tcp::TcpPeers>) -> Batch {
        Batch {
            socket,
            tcp,
            datagrams: Vec::with_capacity(MAX_BATCH),
            messages: Vec::with_capacity(MAX_BATCH),
            gso: true,
            syscalls: 0,
            sent: 0,
        }
    }

    /// Queues a UDP datagram to `to`: it joins the message before it when
    /// that goes to `to` too, all its datagrams so far had this one's size or
    /// more and it still has room; else it starts a message.
    pub fn push(&mut self, to: SocketAddr, datagram: BytesMut) {
        let len = datagram.len();
        let index = self.datagrams.len();
        self.datagrams.push(datagram);
        if self.gso
            && let Some(last) = self.messages.last_mut()
            && last.to == to
            && self.datagrams[last.end - 1].len() == last.segment
            && len <= last.segment
            && len > 0
            && last.datagrams() < MAX_SEGMENTS
            && last.bytes + len <= MAX_MESSAGE_BYTES
        {
            last.end += 1;
            last.bytes += len;
            return;
        }
        self.messages.push(Message { to, start: index, end: index + 1, segment: len, bytes: len });
    }

    /// Queues what a session wrote: a UDP datagram, or (ICE-TCP) a frame for
    /// its peer's connection, handed over at once.
    pub fn push_to(&mut self, transport: &rtc::shared::TransportContext, packet: BytesMut) {
        if transport.transport_protocol == rtc::shared::TransportProtocol::TCP {
            if !self.tcp.send(transport.peer_addr, packet) {
                tracing::trace!(to = %transport.peer_addr, "ICE-TCP packet dropped (no connection, or its queue is full)");
            }
        } else {
            self.push(transport.peer_addr, packet);
        }
    }

    /// Messages queued (a GSO message holds up to [`MAX_SEGMENTS`] datagrams).
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Sends everything queued; a datagram the kernel refuses (unreachable
    /// address, too large) is dropped and counted in the return value.
    pub async fn flush(&mut self) -> usize {
        let mut failed = 0;
        let datagrams = std::mem::take(&mut self.datagrams);
        let mut messages = std::mem::take(&mut self.messages);
        let mut at = 0;
        while at < messages.len() {
            // A run of messages sent alike: with the same GSO segment size, or all single.
            let gso = messages[at].gso();
            let n = messages[at..].iter().take(MAX_BATCH).take_while(|m| m.gso() == gso).count();
            let chunk = &messages[at..at + n];
            match self.send(chunk, &datagrams, gso).await {
                Ok(0) => {
                    failed += chunk[0].datagrams();
                    at += 1;
                }
                Ok(sent) => {
                    self.sent += chunk[..sent].iter().map(|m| m.datagrams() as u64).sum::<u64>();
                    at += sent;
                }
                Err(e) if gso.is_some() && (e == Errno::EIO || e == Errno::EINVAL) => {
                    tracing::warn!("UDP GSO refused ({e}): sending one datagram per packet from now on");
                    self.gso = false;
                    messages = unbundle(&messages[at..]);
                    at = 0;
                }
                Err(e) => {
                    // The first message of the chunk was refused: drop it, go on.
                    tracing::debug!(to = %chunk[0].to, "UDP send failed: {e}");
                    failed += chunk[0].datagrams();
                    at += 1;
                }
            }
        }
        let (mut datagrams, mut messages) = (datagrams, messages);
        datagrams.clear();
        messages.clear();
        (self.datagrams, self.messages) = (datagrams, messages);
        failed
    }

    /// One `sendmmsg` of `chunk`: how many messages the kernel took.
    async fn send(&mut self, chunk: &[Message], datagrams: &[BytesMut], gso: Option<u16>) -> Result<usize, Errno> {
        let slices: Vec<Vec<IoSlice<'_>>> =
            chunk.iter().map(|m| datagrams[m.start..m.end].iter().map(|d| IoSlice::new(d)).collect()).collect();
        let addrs: Vec<Option<SockaddrStorage>> = chunk.iter().map(|m| Some(SockaddrStorage::from(m.to))).collect();
        let segment = gso.unwrap_or(0);
        let fd = self.socket.as_raw_fd();
        self.syscalls += 1;
        let result = self
            .socket
            .async_io(Interest::WRITABLE, || {
                // Not Send (raw pointers): made for each call, never held across an await.
                let (mut headers, cmsgs) = match gso {
                    Some(_) => (
                        MultiHeaders::<SockaddrStorage>::preallocate(slices.len(), Some(nix::cmsg_space!(u16))),
                        vec![ControlMessage::UdpGsoSegments(&segment)],
                    ),
                    None => (MultiHeaders::<SockaddrStorage>::preallocate(slices.len(), None), vec![]),
                };
                sendmmsg(fd, &mut headers, &slices, &addrs, &cmsgs, MsgFlags::MSG_DONTWAIT)
                    .map(|r| r.count())
                    .map_err(std::io::Error::from)
            })
            .await;
        result.map_err(|e| e.raw_os_error().map_or(Errno::EIO, Errno::from_raw))
    }
}

/// The same datagrams, one message each.
fn unbundle(messages: &[Message]) -> Vec<Message> {
    messages.iter().flat_map(|m| (m.start..m.end).map(move |i| Message { start: i, end: i + 1, ..*m })).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn batch() -> (Batch, tokio::net::UdpSocket, tokio::net::UdpSocket) {
        let sender = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        (Batch::new(sender, Arc::new(super::super::tcp::TcpPeers::default())), a, b)
    }

    fn datagram(len: usize, tag: u8) -> BytesMut {
        BytesMut::from(&vec![tag; len][..])
    }

    async fn receive(socket: &UdpSocket, n: usize) -> Vec<(usize, u8)> {
        let mut buf = [0u8; 2048];
        let mut got = Vec::new();
        for _ in 0..n {
            let len = tokio::time::timeout(std::time::Duration::from_secs(2), socket.recv(&mut buf))
                .await
                .expect("a datagram within 2 s")
                .unwrap();
            got.push((len, buf[0]));
        }
        got
    }

    #[tokio::test]
    async fn an_access_unit_per_viewer_goes_as_one_gso_message_and_arrives_as_datagrams() {
        let (mut batch, a, b) = batch().await;
        let (to_a, to_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        // Viewer a: 3 full packets and a short last one (one message); viewer
        // b the same; then a short and a full one to a (two messages: a
        // message ends at its first short datagram).
        for (to, tag) in [(to_a, 1u8), (to_b, 2)] {
            for _ in 0..3 {
                batch.push(to, datagram(1200, tag));
            }
            batch.push(to, datagram(700, tag));
        }
        batch.push(to_a, datagram(90, 3));
        batch.push(to_a, datagram(1200, 4));
        assert_eq!(batch.len(), 4, "messages");
        assert_eq!(batch.flush().await, 0);
        assert_eq!((batch.sent, batch.syscalls), (10, 2), "the two GSO messages in one call, the two singles in one");
        assert_eq!(receive(&a, 6).await, [(1200, 1), (1200, 1), (1200, 1), (700, 1), (90, 3), (1200, 4)]);
        assert_eq!(receive(&b, 4).await, [(1200, 2), (1200, 2), (1200, 2), (700, 2)]);
        assert!(batch.is_empty());
    }

    #[tokio::test]
    async fn a_message_holds_at_most_max_segments() {
        let (mut batch, a, _b) = batch().await;
        for _ in 0..MAX_SEGMENTS + 1 {
            batch.push(a.local_addr().unwrap(), datagram(500, 7));
        }
        assert_eq!(batch.len(), 2);
        assert_eq!(batch.flush().await, 0);
        assert_eq!(receive(&a, MAX_SEGMENTS + 1).await.len(), MAX_SEGMENTS + 1);
    }

    #[test]
    fn unbundled_messages_keep_their_order() {
        let to: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let m = [
            Message { to, start: 0, end: 3, segment: 10, bytes: 30 },
            Message { to, start: 3, end: 4, segment: 5, bytes: 5 },
        ];
        let singles: Vec<(usize, usize)> = unbundle(&m).iter().map(|m| (m.start, m.end)).collect();
        assert_eq!(singles, [(0, 1), (1, 2), (2, 3), (3, 4)]);
    }
}
