//! The one-port SFU (SFU v2): every viewer session on one UDP socket
//! (`[webrtc] udp_listen`), on a sans-IO WebRTC core (`rtc` 0.21) so that
//! infercast owns the socket. A receive task demultiplexes datagrams by ICE
//! username fragment, then by source address ([`demux`]), to a few send
//! workers ([`shard`]: one per core by default), each owning its sessions and
//! flushing what they write with batched `sendmmsg` ([`batch`]).
//!
//! ICE-lite: the server only answers the viewer's checks on its host
//! candidates (and the configured public IPs); no gathering, no STUN/TURN of
//! its own. Fine for a server with reachable addresses, which is where an
//! edge box sits; a viewer behind NAT still connects (it sends the checks).

pub mod batch;
pub mod demux;
mod media_out;
mod session;
mod shard;
mod tcp;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use self::demux::{Route, Routes};
use self::session::{NewSession, Session};
use self::shard::{Shard, ShardMsg, Timeouts};
use super::metrics::{SessionMetrics, SfuMetrics};
use super::{CreatedSession, SessionId, SfuError, candidates, check_offer, stream_profile_level_id};
use crate::hub::{CameraTracks, TrackKind};

/// Datagrams and access units waiting per shard before the receive task
/// drops datagrams (the relays wait instead).
const SHARD_INBOX: usize = 4096;
/// Largest datagram read (above any path MTU).
const MAX_DATAGRAM: usize = 2048;

/// How the one-port SFU is set up.
#[derive(Clone, Debug)]
pub struct OnePortConfig {
    /// The UDP address to bind, e.g. `0.0.0.0:8189`.
    pub listen: SocketAddr,
    /// IPs to offer host candidates on (`0.0.0.0`: every non-loopback IPv4
    /// interface; `127.0.0.1`: loopback), all on the listen port.
    pub candidate_ips: Vec<IpAddr>,
    pub public_ips: Vec<IpAddr>,
    /// Send workers (default: one per core).
    pub shards: usize,
    pub connect_timeout: Duration,
    pub disconnected_timeout: Duration,
    /// `[limits] gop_resend_bps`, shared by every session.
    pub resend: Arc<super::resend::ResendBudget>,
}

struct Entry {
    camera: String,
    kind: TrackKind,
    shard: usize,
    finished: CancellationToken,
}

type Entries = Arc<Mutex<HashMap<SessionId, Entry>>>;

/// The one-port SFU's sessions, socket and workers.
pub struct OnePort {
    local: SocketAddr,
    candidates: Vec<SocketAddr>,
    /// ICE-TCP passive candidates are offered (the TCP port listens).
    ice_tcp: bool,
    public_ips: Vec<IpAddr>,
    shards: Vec<mpsc::Sender<ShardMsg>>,
    routes: Arc<Routes>,
    sessions: Entries,
    next_shard: AtomicUsize,
    metrics: Option<SfuMetrics>,
    resend: Arc<super::resend::ResendBudget>,
    cancel: CancellationToken,
}

/// Host candidate addresses for `ips` on `port`.
fn candidate_addrs(ips: &[IpAddr], port: u16) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for ip in ips {
        if ip.is_unspecified() {
            for iface in rtc::shared::ifaces::ifaces().unwrap_or_default() {
                let Some(addr) = iface.addr else { continue };
                let a = addr.ip();
                let link_local = matches!(a, IpAddr::V4(v4) if v4.is_link_local())
                    || matches!(a, IpAddr::V6(v6) if v6.is_unicast_link_local());
                if a.is_ipv4() == ip.is_ipv4() && !a.is_loopback() && !a.is_unspecified() && !link_local {
                    out.push(SocketAddr::new(a, port));
                }
            }
        } else {
            out.push(SocketAddr::new(*ip, port));
        }
    }
    out.sort();
    out.dedup();
    out
}

impl OnePort {
    /// Binds the port and starts the receive task and the shards. Errors if
    /// the address cannot be bound (in use, not local).
    pub(in crate::sfu) fn bind(config: OnePortConfig, metrics: Option<SfuMetrics>) -> std::io::Result<Arc<OnePort>> {
        let std_socket = std::net::UdpSocket::bind(config.listen)?;
        std_socket.set_nonblocking(true)?;
        let socket = Arc::new(UdpSocket::from_std(std_socket)?);
        let local = socket.local_addr()?;
        let candidates = candidate_addrs(&config.candidate_ips, local.port());
        // ICE-TCP on the TCP port of the same number; without it (the port is
        // taken) viewers still play over UDP.
        let tcp_listener = match std::net::TcpListener::bind(local).and_then(|l| {
            l.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(l)
        }) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(%local, "ICE-TCP off: cannot listen on TCP {local}: {e}");
                None
            }
        };
        let tcp_peers = Arc::new(tcp::TcpPeers::default());
        let routes = Arc::new(Routes::default());
        let sessions: Entries = Arc::default();
        let cancel = CancellationToken::new();
        let timeouts = Timeouts { connect: config.connect_timeout, disconnected: config.disconnected_timeout };
        let ended: shard::Ended = {
            let (sessions, metrics) = (sessions.clone(), metrics.clone());
            Arc::new(move |s: &Session| {
                if let Some(e) = sessions.lock().expect("sfu lock is never poisoned").remove(&s.id) {
                    e.finished.cancel();
                }
                if let Some(m) = &metrics {
                    let labels = [s.camera.as_str(), s.kind.as_str()];
                    m.ended.with_label_values(&labels).inc();
                    m.viewers.with_label_values(&labels).dec();
                }
                tracing::info!(camera = %s.camera, track = s.kind.as_str(), session = %s.id, "WebRTC viewer session ended");
            })
        };
        let mut shards = Vec::new();
        for index in 0..config.shards.max(1) {
            let (tx, rx) = mpsc::channel(SHARD_INBOX);
            let shard = Shard {
                index,
                inbox: rx,
                to_self: tx.clone(),
                batch: batch::Batch::new(socket.clone(), tcp_peers.clone()),
                routes: routes.clone(),
                timeouts,
                ended: ended.clone(),
                cancel: cancel.clone(),
                send_failures: Arc::default(),
                latency: metrics.as_ref().map(|m| m.shard_latency(index)),
                waiting: Vec::new(),
                backlog: Vec::new(),
            };
            tokio::spawn(shard.run());
            shards.push(tx);
        }
        tokio::spawn(receive(socket, routes.clone(), shards.clone(), cancel.clone()));
        let ice_tcp = tcp_listener.is_some();
        if let Some(listener) = tcp_listener {
            tokio::spawn(tcp::accept(listener, routes.clone(), shards.clone(), tcp_peers, cancel.clone()));
        }
        tracing::info!(%local, candidates = ?candidates, shards = shards.len(), ice_tcp, "one-port SFU listening (ICE-lite)");
        Ok(Arc::new(OnePort {
            local,
            candidates,
            ice_tcp,
            public_ips: config.public_ips,
            shards,
            routes,
            sessions,
            next_shard: AtomicUsize::new(0),
            metrics,
            resend: config.resend,
            cancel,
        }))
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn session_count(&self) -> usize {
        self.sessions.lock().expect("sfu lock is never poisoned").len()
    }

    /// Answers `offer_sdp` with a session sending `kind` of `camera`'s
    /// tracks, placed on the next shard. Errors as [`super::Sfu::create_session`].
    pub(in crate::sfu) async fn create_session(
        &self,
        camera: &str,
        tracks: Arc<CameraTracks>,
        kind: TrackKind,
        offer_sdp: &str,
        held: Box<dyn crate::sfu::SessionHold>,
        posted_at: Instant,
    ) -> Result<CreatedSession, SfuError> {
        let (offer, chosen) = check_offer(offer_sdp, stream_profile_level_id(&tracks, kind))?;
        let id = super::new_session_id();
        let metrics = self.metrics.as_ref().map_or_else(SessionMetrics::unregistered, |m| m.session(camera, kind));
        let (session, answer) = Session::new(NewSession {
            id: id.clone(),
            camera,
            kind,
            tracks,
            offer,
            offer_sdp,
            resend: self.resend.clone(),
            chosen,
            candidates: &self.candidates,
            tcp: self.ice_tcp,
            local_addr: self.candidates.iter().find(|a| !a.ip().is_loopback()).copied().unwrap_or(self.local),
            metrics,
            held,
            posted_at,
        })?;
        let shard = self.next_shard.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        let finished = CancellationToken::new();
        self.routes.add(&session.ufrag, Route { shard, session: id.clone() });
        self.sessions
            .lock()
            .expect("sfu lock is never poisoned")
            .insert(id.clone(), Entry { camera: camera.to_owned(), kind, shard, finished });
        if self.shards[shard].send(ShardMsg::Add(Box::new(session))).await.is_err() {
            self.sessions.lock().expect("sfu lock is never poisoned").remove(&id);
            return Err(SfuError::WebRtc("the SFU is shutting down".into()));
        }
        if let Some(m) = &self.metrics {
            let labels = [camera, kind.as_str()];
            m.created.with_label_values(&labels).inc();
            m.viewers.with_label_values(&labels).inc();
        }
        tracing::info!(camera, track = kind.as_str(), session = %id, shard, "WebRTC viewer session created (one port)");
        let answer_sdp = candidates::rewrite_candidates(&answer, &self.public_ips);
        Ok(CreatedSession { etag: format!("\"{id}\""), id, answer_sdp })
    }

    /// Ends session `id` of `camera`'s `kind` track and waits (≤ 3 s) until
    /// its shard has closed it.
    pub async fn delete_session(&self, camera: &str, kind: TrackKind, id: &str) -> Result<(), SfuError> {
        let shard = {
            let sessions = self.sessions.lock().expect("sfu lock is never poisoned");
            match sessions.get(id) {
                Some(e) if e.camera == camera && e.kind == kind => e.shard,
                _ => return Err(SfuError::SessionNotFound(id.to_owned())),
            }
        };
        self.remove(shard, id).await;
        Ok(())
    }

    /// A WHEP `PATCH` of session `id` (trickle ICE, ICE restart), applied by
    /// its shard. Errors as [`super::Sfu::patch_session`].
    pub(in crate::sfu) async fn patch_session(
        &self,
        camera: &str,
        kind: TrackKind,
        id: &str,
        if_match: Option<&str>,
        body: &str,
    ) -> Result<super::Patched, SfuError> {
        let shard = {
            let sessions = self.sessions.lock().expect("sfu lock is never poisoned");
            match sessions.get(id) {
                Some(e) if e.camera == camera && e.kind == kind => e.shard,
                _ => return Err(SfuError::SessionNotFound(id.to_owned())),
            }
        };
        let (reply, answer) = oneshot::channel();
        let msg = ShardMsg::Patch {
            session: id.to_owned(),
            if_match: if_match.map(str::to_owned),
            body: body.to_owned(),
            reply,
        };
        if self.shards[shard].send(msg).await.is_err() {
            return Err(SfuError::WebRtc("the SFU is shutting down".into()));
        }
        let patched = answer.await.map_err(|_| SfuError::SessionNotFound(id.to_owned()))??;
        Ok(match patched {
            super::Patched::Restarted { fragment, etag } => super::Patched::Restarted {
                fragment: candidates::rewrite_candidates(&fragment, &self.public_ips),
                etag,
            },
            trickled => trickled,
        })
    }

    async fn remove(&self, shard: usize, id: &str) {
        let (done, wait) = oneshot::channel();
        if self.shards[shard].send(ShardMsg::Remove { session: id.to_owned(), done }).await.is_ok()
            && tokio::time::timeout(Duration::from_secs(3), wait).await.is_err()
        {
            tracing::warn!(session = id, "viewer session still closing after 3 s");
        }
    }

    /// Ends every session of `camera`.
    pub async fn close_camera(&self, camera: &str) {
        let ids: Vec<(usize, SessionId)> = {
            let sessions = self.sessions.lock().expect("sfu lock is never poisoned");
            sessions.iter().filter(|(_, e)| e.camera == camera).map(|(id, e)| (e.shard, id.clone())).collect()
        };
        for (shard, id) in ids {
            self.remove(shard, &id).await;
        }
    }

    /// Ends every session and stops the workers.
    pub async fn close_all(&self) {
        let ids: Vec<(usize, SessionId)> = {
            let sessions = self.sessions.lock().expect("sfu lock is never poisoned");
            sessions.iter().map(|(id, e)| (e.shard, id.clone())).collect()
        };
        for (shard, id) in ids {
            self.remove(shard, &id).await;
        }
        self.cancel.cancel();
    }
}

/// Reads the port and hands each datagram to its session's shard; one that
/// names no session (or finds its shard's inbox full) is dropped.
async fn receive(
    socket: Arc<UdpSocket>,
    routes: Arc<Routes>,
    shards: Vec<mpsc::Sender<ShardMsg>>,
    cancel: CancellationToken,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, from) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors of earlier sends surface here (ECONNREFUSED): keep reading.
                    tracing::trace!("UDP receive: {e}");
                    continue;
                }
            },
            () = cancel.cancelled() => return,
        };
        let data = &buf[..n];
        let Some(route) = routes.route(from, data) else { continue };
        let msg = ShardMsg::Datagram { session: route.session, from, data: bytes::BytesMut::from(data), tcp: false };
        if shards[route.shard].try_send(msg).is_err() {
            tracing::debug!(%from, "shard inbox full: datagram dropped");
        }
    }
}
