//! ICE-TCP (RFC 6544, passive) for the one-port SFU, on a TCP port of the
//! same number as the UDP one: for viewers whose network blocks UDP. Each
//! accepted connection carries RFC 4571 frames (a 2-byte length, then one
//! STUN, DTLS, SRTP or SRTCP packet). Its first frame, a STUN binding
//! request, names the session by our ICE username fragment, as a UDP
//! datagram would; every later frame of the connection goes to that session,
//! marked TCP. What a session sends to a TCP peer's address goes out on that
//! connection ([`TcpPeers`]).

use std::collections::HashMap;
use std::net::SocketAddr;
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
}

impl TcpPeers {
    /// Queues `packet` for the connection from `to`; false if there is none
    /// or its queue is full (the packet is dropped).
    pub fn send(&self, to: SocketAddr, packet: BytesMut) -> bool {
        let writers = self.writers.lock().expect("tcp peers lock is never poisoned");
        writers.get(&to).is_some_and(|w| w.try_send(packet).is_ok())
    }

    fn len(&self) -> usize {
        self.writers.lock().expect("tcp peers lock is never poisoned").len()
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
        if peers.len() >= MAX_CONNECTIONS {
            tracing::debug!(%from, "ICE-TCP connection refused: {MAX_CONNECTIONS} open");
            continue;
        }
        let _ = stream.set_nodelay(true);
        let (routes, shards, peers, cancel) = (routes.clone(), shards.clone(), peers.clone(), cancel.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = serve(stream, from, &routes, &shards, &peers) => {}
                () = cancel.cancelled() => {}
            }
            peers.writers.lock().expect("tcp peers lock is never poisoned").remove(&from);
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
