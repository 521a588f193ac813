//! ICE-TCP (RFC 6544, passive) for the one-port SFU, on a TCP port of the
//! same number as the UDP one: for viewers whose network blocks UDP. Each
//! accepted connection carries RFC 4571 frames (a 2-byte length, then one
//! STUN, DTLS, SRTP or SRTCP packet). Its first frame, a STUN binding
//! request, names the session by our ICE username fragment, as a UDP
//! datagram would; every later frame of the connection goes to that session,
//! marked TCP. What a session sends to a TCP peer's address goes out on that
//! connection ([`TcpPeers`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::demux::Routes;
use super::shard::ShardMsg;

/// Most ICE-TCP connections at once (each holds a task and two small buffers).
const MAX_CONNECTIONS: usize = 1024;
/// Most ICE-TCP connections at once from one IP address (a browser opens
/// one per session and candidate pair it tries; `[limits]
/// whep_sessions_per_ip` defaults to 50), so one host cannot take them all.
const MAX_CONNECTIONS_PER_IP: usize = 64;
/// Largest frame taken (RFC 4571 allows 65535; a WebRTC packet is < 1500).
const MAX_FRAME: usize = 4096;
/// A connection whose first frame does not name a session in this time, or
/// that then stays silent this long (consent checks come every ~5 s), is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Frames queued for one connection's writer before new ones are dropped
/// (a viewer that does not read loses its own packets, as over UDP).
const WRITE_QUEUE: usize = 512;

/// The writers of the live ICE-TCP connections, by the viewer's address.
#[derive(Default)]
pub struct TcpPeers {
    writers: Mutex<HashMap<SocketAddr, mpsc::Sender<BytesMut>>>,
    /// Connections open, by the viewer's IP address.
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// Why a connection was refused.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    Full,
    ThisAddress,
}

impl TcpPeers {
    /// Queues `packet` for the connection from `to`; false if there is none
    /// or its queue is full (the packet is dropped).
    pub fn send(&self, to: SocketAddr, packet: BytesMut) -> bool {
        let writers = self.writers.lock().expect("tcp peers lock is never poisoned");
        writers.get(&to).is_some_and(|w| w.try_send(packet).is_ok())
    }

    /// Counts a new connection from `ip` in, unless it would pass
    /// [`MAX_CONNECTIONS`] or [`MAX_CONNECTIONS_PER_IP`].
    fn admit(&self, ip: IpAddr) -> Result<(), Refused> {
        let mut open = self.open.lock().expect("tcp peers lock is never poisoned");
        if open.values().sum::<usize>() >= MAX_CONNECTIONS {
            return Err(Refused::Full);
        }
        let n = open.entry(ip).or_default();
        if *n >= MAX_CONNECTIONS_PER_IP {
            return Err(Refused::ThisAddress);
        }
        *n += 1;
        Ok(())
    }

    /// Counts a connection from `ip` out.
    fn release(&self, ip: IpAddr) {
        let mut open = self.open.lock().expect("tcp peers lock is never poisoned");
        if let Some(n) = open.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&ip);
            }
        }
    }
}

/// Accepts ICE-TCP connections until `cancel`.
pub(super) async fn accept(
    listener: TcpListener,
    routes: Arc<Routes>,
    shards: Vec<mpsc::Sender<ShardMsg>>,
    peers: Arc<TcpPeers>,
    cancel: CancellationToken,
) {
    loop {
        let (stream, from) = tokio::select! {
            r = listener.accept() => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!("ICE-TCP accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = cancel.cancelled() => return,
        };
        match peers.admit(from.ip()) {
            Ok(()) => {}
            Err(Refused::Full) => {
                tracing::debug!(%from, "ICE-TCP connection refused: {MAX_CONNECTIONS} open");
                continue;
            }
            Err(Refused::ThisAddress) => {
                tracing::debug!(%from, "ICE-TCP connection refused: {MAX_CONNECTIONS_PER_IP} open from this address");
                continue;
            }
        }
        let _ = stream.set_nodelay(true);
        let (routes, shards, peers, cancel) = (routes.clone(), shards.clone(), peers.clone(), cancel.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = serve(stream, from, &routes, &shards, &peers) => {}
                () = cancel.cancelled() => {}
            }
            peers.writers.lock().expect("tcp peers lock is never poisoned").remove(&from);
            peers.release(from.ip());
        });
    }
}

/// One connection: frames in to its session's shard, the session's packets out.
async fn serve(
    stream: TcpStream,
    from: SocketAddr,
    routes: &Routes,
    shards: &[mpsc::Sender<ShardMsg>],
    peers: &TcpPeers,
) {
    let (mut reader, mut writer) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<BytesMut>(WRITE_QUEUE);
    peers.writers.lock().expect("tcp peers lock is never poisoned").insert(from, tx);
    let write = async {
        while let Some(packet) = rx.recv().await {
            let Ok(len) = u16::try_from(packet.len()) else { continue };
            if writer.write_all(&len.to_be_bytes()).await.is_err() || writer.write_all(&packet).await.is_err() {
                return;
            }
        }
    };
    let read = async {
        let mut route = None;
        let mut frame = vec![0u8; MAX_FRAME];
        loop {
            let mut len = [0u8; 2];
            let got = tokio::time::timeout(IDLE_TIMEOUT, reader.read_exact(&mut len)).await;
            if !matches!(got, Ok(Ok(_))) {
                return;
            }
            let len = usize::from(u16::from_be_bytes(len));
            if len == 0 || len > MAX_FRAME {
                tracing::debug!(%from, len, "ICE-TCP frame refused: closing");
                return;
            }
            if !matches!(tokio::time::timeout(IDLE_TIMEOUT, reader.read_exact(&mut frame[..len])).await, Ok(Ok(_))) {
                return;
            }
            let data = &frame[..len];
            if route.is_none() {
                // Only a STUN request with one of our ufrags opens the connection.
                route = routes.by_stun(data);
                if route.is_none() {
                    tracing::debug!(%from, "ICE-TCP connection names no session: closing");
                    return;
                }
            }
            let Some(r) = &route else { return };
            let msg = ShardMsg::Datagram { session: r.session.clone(), from, data: BytesMut::from(data), tcp: true };
            if shards[r.shard].try_send(msg).is_err() {
                tracing::debug!(%from, "shard inbox full: ICE-TCP frame dropped");
            }
        }
    };
    tokio::select! {
        () = write => {}
        () = read => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_capped_per_address_and_in_all() {
        let peers = TcpPeers::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..MAX_CONNECTIONS_PER_IP {
            assert_eq!(peers.admit(a), Ok(()));
        }
        assert_eq!(peers.admit(a), Err(Refused::ThisAddress));
        peers.release(a);
        assert_eq!(peers.admit(a), Ok(()), "a closed connection frees its place");
        // Other addresses fill the rest, up to the total.
        let others = (MAX_CONNECTIONS - MAX_CONNECTIONS_PER_IP) / MAX_CONNECTIONS_PER_IP;
        for i in 0..others {
            let ip = IpAddr::from([10, 0, (i / 250) as u8, (i % 250) as u8]);
            for _ in 0..MAX_CONNECTIONS_PER_IP {
                assert_eq!(peers.admit(ip), Ok(()));
            }
        }
        assert_eq!(peers.admit("198.51.100.7".parse().unwrap()), Err(Refused::Full));
        for _ in 0..MAX_CONNECTIONS_PER_IP {
            peers.release(a);
        }
        assert!(!peers.open.lock().unwrap().contains_key(&a), "an address with none open is forgotten");
        assert_eq!(peers.admit("198.51.100.7".parse().unwrap()), Ok(()));
    }

    #[tokio::test]
    async fn a_connection_past_the_per_address_cap_is_closed_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (peers, cancel) = (Arc::new(TcpPeers::default()), CancellationToken::new());
        tokio::spawn(accept(listener, Arc::new(Routes::default()), Vec::new(), peers.clone(), cancel.clone()));
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS_PER_IP {
            held.push(TcpStream::connect(addr).await.unwrap());
        }
        let counted = async {
            while peers.open.lock().unwrap().values().sum::<usize>() < MAX_CONNECTIONS_PER_IP {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), counted).await.expect("all counted");
        let mut refused = TcpStream::connect(addr).await.unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), refused.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "the connection past the cap is closed: {read:?}");
        assert_eq!(peers.open.lock().unwrap().values().sum::<usize>(), MAX_CONNECTIONS_PER_IP, "the held ones stay");
        drop(held);
        cancel.cancel();
    }
}
