//! The SFU: one WebRTC peer connection (webrtc 0.21) per viewer, fed from a hub
//! track. Each session answers the viewer's offer (non-trickle: all local
//! candidates in the answer), then a task sends the track's cached GOP and the
//! live access units as H.264 RTP (and the camera's labels on the viewer's
//! `labels` data channel) until the viewer leaves, the connection fails or
//! the session is deleted.
//!
//! Viewers never slow the hub down: a session that falls behind loses its own
//! access units (the hub's broadcast drops them) and resumes at a keyframe.

mod candidates;
pub mod label_channel;
mod metrics;
mod offer;
mod packetize;
mod patch;
mod ports;
mod publish;
mod resend;
mod rtcp;
mod rtp_state;
pub mod sdpfrag;
mod session_labels;
pub mod v2;

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rtc::ice::mdns::MulticastDnsMode;
use rtc::ice::network_type::NetworkType;
use rtc::interceptor::Slot;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_H264;
use rtc::peer_connection::transport::RTCDtlsRole;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceGatheringState, RTCPeerConnectionState, Registry, SettingEngineBuilder, register_default_interceptors,
};

use self::metrics::{SessionMetrics, SfuMetrics};
pub use self::offer::{ChosenCodec, check_offer};
pub use self::packetize::{DEFAULT_MAX_PAYLOAD, packetize_h264, payload_nal_types};
pub use self::patch::Patched;
pub use self::publish::PublisherLink;
pub use self::rtcp::{KeyframeRequestForwarder, is_keyframe_request};
use self::rtp_state::RtpState;
use crate::codec::annexb::{nal_type, nal_units, profile_level_id};
use crate::hub::{CameraTracks, TrackKind};
use crate::media::AccessUnit;

/// A viewer session's id (the last segment of its WHEP resource URL).
pub type SessionId = String;

/// Why a session could not be created or found.
#[derive(Debug, thiserror::Error)]
pub enum SfuError {
    /// The offer is not (valid) SDP: HTTP 400.
    #[error("malformed SDP offer: {0}")]
    MalformedOffer(String),
    /// The offer is valid but has nothing we can send (no H.264): HTTP 406.
    #[error("{0}")]
    NotAcceptable(String),
    /// No such session: HTTP 404.
    #[error("no session {0:?}")]
    SessionNotFound(String),
    /// The WebRTC stack failed: HTTP 500.
    #[error("WebRTC failure: {0}")]
    WebRtc(String),
    /// A `PATCH` body that is not a valid SDP fragment: HTTP 400.
    #[error("malformed SDP fragment: {0}")]
    MalformedFragment(String),
    /// `If-Match` names another entity-tag than the session's: HTTP 412.
    #[error("If-Match {given} does not match the session's entity-tag {current}")]
    PreconditionFailed { given: String, current: String },
    /// A valid fragment that cannot be applied (new credentials without
    /// `If-Match: "*"`, candidates of another ICE generation): HTTP 422.
    #[error("{0}")]
    Unprocessable(String),
}

fn webrtc_err(e: impl std::fmt::Display) -> SfuError {
    SfuError::WebRtc(e.to_string())
}

/// The answer's H.264 codec, a media engine with only it, and the default
/// interceptors (NACK, reports) registered for it: what every peer
/// connection of ours, a viewer's or a publisher's, is built with.
fn h264_engine(chosen: &ChosenCodec) -> Result<(RTCRtpCodec, MediaEngine, Registry), SfuError> {
    let codec = RTCRtpCodec {
        mime_type: MIME_TYPE_H264.to_owned(),
        clock_rate: 90000,
        channels: 0,
        sdp_fmtp_line: chosen.fmtp.clone(),
        rtcp_feedback: vec![],
    };
    let mut media_engine = MediaEngine::default();
    media_engine
        .register_codec(
            RTCRtpCodecParameters { rtp_codec: codec.clone(), payload_type: chosen.payload_type },
            RtpCodecKind::Video,
        )
        .map_err(webrtc_err)?;
    let registry = register_default_interceptors(Registry::new(), &mut media_engine).map_err(webrtc_err)?;
    Ok((codec, media_engine, registry))
}

/// Network settings for viewer peer connections.
#[derive(Clone, Debug)]
pub struct SfuConfig {
    /// Local IPs for ICE host candidates (`0.0.0.0` expands to every non-loopback
    /// IPv4 interface; `127.0.0.1` adds a loopback candidate).
    pub udp_ips: Vec<IpAddr>,
    /// Inclusive UDP port range; `None` = ephemeral ports.
    pub udp_port_range: Option<[u16; 2]>,
    /// Public IPs to advertise as server-reflexive candidates (1:1 NAT).
    pub public_ips: Vec<IpAddr>,
    /// Longest wait for ICE gathering before answering.
    pub gather_timeout: Duration,
    /// Longest wait for the viewer to connect after the answer.
    pub connect_timeout: Duration,
    /// How long a `disconnected` viewer may take to come back before its session ends.
    pub disconnected_timeout: Duration,
    /// Cached-GOP resend bandwidth, all sessions together, bits/s.
    pub gop_resend_bps: u64,
    /// `[webrtc] udp_listen` (default `0.0.0.0:8189`): every session on this
    /// one UDP port (the one-port SFU, [`v2`]); None (`"off"`): the
    /// per-session SFU, a port per session.
    pub udp_listen: Option<std::net::SocketAddr>,
    /// Send workers of the one-port SFU (default: one per core).
    pub send_workers: Option<usize>,
}

impl Default for SfuConfig {
    fn default() -> Self {
        SfuConfig::from(&crate::config::WebRtcConfig::default())
    }
}

impl From<&crate::config::WebRtcConfig> for SfuConfig {
    fn from(c: &crate::config::WebRtcConfig) -> SfuConfig {
        SfuConfig {
            udp_ips: c.udp_ips.clone(),
            udp_port_range: c.udp_port_range,
            public_ips: c.public_ips.clone(),
            gather_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_millis(c.connect_timeout_ms),
            disconnected_timeout: Duration::from_secs(10),
            gop_resend_bps: crate::config::LimitsConfig::default().gop_resend_bps,
            udp_listen: c.udp_listen,
            send_workers: c.send_workers,
        }
    }
}

struct SessionEntry {
    camera: String,
    kind: TrackKind,
    /// What `PATCH` (trickle ICE, ICE restart) works on.
    control: Arc<patch::SessionControl>,
    cancel: CancellationToken,
    /// Cancelled when the session task has finished (peer connection closed).
    finished: CancellationToken,
}

type Sessions = Arc<Mutex<HashMap<SessionId, SessionEntry>>>;

/// A created session: its id, the SDP answer (with candidates) and its
/// entity-tag (quoted, for `ETag`; a restart changes it).
#[derive(Debug, Clone)]
pub struct CreatedSession {
    pub id: SessionId,
    pub answer_sdp: String,
    pub etag: String,
}

/// What a session holds for its creator until it ends (a WHEP request's
/// limit slot and room place), and tells of what the session does. Dropped
/// when the session ends.
pub trait SessionHold: Send {
    /// A label went out on the session's `labels` data channel.
    fn label_sent(&self) {}
}

impl SessionHold for () {}

/// All viewer sessions.
pub struct Sfu {
    config: SfuConfig,
    ports: ports::PortPool,
    sessions: Sessions,
    metrics: Option<SfuMetrics>,
    resend: Arc<resend::ResendBudget>,
    /// The one-port SFU, when `udp_listen` is set: it then serves every session.
    one_port: Option<Arc<v2::OnePort>>,
}

impl Sfu {
    /// The per-session SFU (webrtc 0.21, a port per session). Ignores
    /// `udp_listen`; see [`Sfu::start`].
    pub fn new(config: SfuConfig) -> Sfu {
        Sfu {
            ports: ports::PortPool::new(config.udp_port_range),
            resend: Arc::new(resend::ResendBudget::new(config.gop_resend_bps)),
            config,
            sessions: Arc::default(),
            metrics: None,
            one_port: None,
        }
    }

    /// Like [`Sfu::new`], with viewer gauges and session counters in `registry`.
    pub fn with_metrics(config: SfuConfig, registry: &prometheus::Registry) -> Sfu {
        Sfu { metrics: SfuMetrics::register(registry), ..Sfu::new(config) }
    }

    /// The SFU the config asks for, metrics in `registry`: with `udp_listen`
    /// the one-port SFU, bound now (inside a tokio runtime). Errors if that
    /// address cannot be bound.
    pub fn start(config: SfuConfig, registry: &prometheus::Registry) -> std::io::Result<Sfu> {
        let mut sfu = Sfu::with_metrics(config, registry);
        if let Some(listen) = sfu.config.udp_listen {
            let c = &sfu.config;
            let one_port = v2::OnePortConfig {
                listen,
                candidate_ips: c.udp_ips.clone(),
                public_ips: c.public_ips.clone(),
                shards: c.send_workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
                connect_timeout: c.connect_timeout,
                disconnected_timeout: c.disconnected_timeout,
                resend: sfu.resend.clone(),
            };
            sfu.one_port = Some(v2::OnePort::bind(one_port, sfu.metrics.clone())?);
        }
        Ok(sfu)
    }

    /// The one-port SFU's UDP address, when it serves.
    pub fn udp_listen_addr(&self) -> Option<std::net::SocketAddr> {
        self.one_port.as_ref().map(|o| o.local_addr())
    }

    /// Number of live sessions.
    pub fn session_count(&self) -> usize {
        if let Some(o) = &self.one_port {
            return o.session_count();
        }
        self.sessions.lock().expect("sfu lock is never poisoned").len()
    }

    /// Answers `offer_sdp` with a new peer connection sending `kind` of
    /// `camera`'s tracks; streaming starts once the viewer connects. `held`
    /// (a limit's slot) lives as long as the session.
    ///
    /// The set-up runs in a task of its own, so dropping this future half-way
    /// (the WHEP client hung up) cannot strand a half-built peer connection:
    /// webrtc's driver task, once spawned, would keep its sockets forever. A
    /// session finished for a caller that is gone is ended at once.
    pub async fn create_session(
        self: &Arc<Self>,
        camera: &str,
        tracks: Arc<CameraTracks>,
        kind: TrackKind,
        offer_sdp: &str,
        held: Box<dyn SessionHold>,
    ) -> Result<CreatedSession, SfuError> {
        let posted_at = Instant::now();
        if let Some(o) = &self.one_port {
            return o.create_session(camera, tracks, kind, offer_sdp, held, posted_at).await;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (sfu, camera, offer_sdp) = (self.clone(), camera.to_owned(), offer_sdp.to_owned());
        tokio::spawn(async move {
            let created = sfu.set_up_session(&camera, tracks, kind, &offer_sdp, held, posted_at).await;
            if let Err(Ok(orphan)) = tx.send(created) {
                tracing::debug!(session = %orphan.id, "WHEP client gone before its answer; ending the session");
                let _ = sfu.delete_session(&camera, kind, &orphan.id).await;
            }
        });
        rx.await.map_err(|_| SfuError::WebRtc("the session set-up task ended without an answer".into()))?
    }

    async fn set_up_session(
        &self,
        camera: &str,
        tracks: Arc<CameraTracks>,
        kind: TrackKind,
        offer_sdp: &str,
        held: Box<dyn SessionHold>,
        posted_at: Instant,
    ) -> Result<CreatedSession, SfuError> {
        let stream_plid = stream_profile_level_id(&tracks, kind);
        let (offer, chosen) = check_offer(offer_sdp, stream_plid)?;
        let (codec, media_engine, registry) = h264_engine(&chosen)?;
        let session_metrics =
            self.metrics.as_ref().map_or_else(SessionMetrics::unregistered, |m| m.session(camera, kind));
        let registry =
            registry.with(Slot::from(14_000), rtcp::KeyframeRequestForwarder::new(session_metrics.nacks.clone()));
        let port = self.ports.lease(&self.config.udp_ips).map_err(SfuError::WebRtc)?;
        let (gathered_tx, mut gathered_rx) = watch::channel(false);
        let (state_tx, state_rx) = watch::channel(RTCPeerConnectionState::New);
        let (labels_tx, labels_rx) = watch::channel(None);
        let handler = Arc::new(Events { gathered: gathered_tx, state: state_tx, labels_channel: Arc::new(labels_tx) });
        let pc = self.peer_connection(media_engine, registry, handler, &port).await?;

        let ssrc = rand::random::<u32>();
        let local = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            format!("infercast-{camera}"),
            format!("{camera}-{}", kind.as_str()),
            format!("{camera} {}", kind.as_str()),
            RtpCodecKind::Video,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
                codec,
                ..Default::default()
            }],
        )));
        let negotiate = async {
            let sender = pc.add_track(local.clone() as Arc<dyn TrackLocal>).await.map_err(webrtc_err)?;
            let answer = self.answer(&pc, offer, &mut gathered_rx).await?;
            let payload_type = sender
                .get_parameters()
                .await
                .ok()
                .and_then(|p| p.rtp_parameters.codecs.first().map(|c| c.payload_type))
                .unwrap_or(chosen.payload_type);
            Ok::<_, SfuError>((answer, payload_type))
        };
        // Set-up runs in its own task (`create_session`), so this is never cut
        // short: a failure closes the connection before its port is freed.
        let (answer_sdp, payload_type) = match negotiate.await {
            Ok(r) => r,
            Err(e) => {
                let _ = pc.close().await;
                return Err(e);
            }
        };

        let id = new_session_id();
        let cancel = CancellationToken::new();
        let finished = CancellationToken::new();
        let control = Arc::new(patch::SessionControl::new(&id, pc.clone(), gathered_rx, offer_sdp));
        let etag = control.etag_now();
        self.sessions.lock().expect("sfu lock is never poisoned").insert(
            id.clone(),
            SessionEntry {
                camera: camera.to_owned(),
                kind,
                control,
                cancel: cancel.clone(),
                finished: finished.clone(),
            },
        );
        let labels = [camera, kind.as_str()];
        if let Some(m) = &self.metrics {
            m.created.with_label_values(&labels).inc();
            m.viewers.with_label_values(&labels).inc();
        }
        tracing::info!(camera, track = kind.as_str(), session = %id, payload_type, "WebRTC viewer session created");
        let session = Session {
            id: id.clone(),
            camera: camera.to_owned(),
            kind,
            tracks,
            pc,
            local,
            rtp: RtpState::new(ssrc, payload_type),
            state: state_rx,
            labels_channel: labels_rx,
            connect_timeout: self.config.connect_timeout,
            disconnected_timeout: self.config.disconnected_timeout,
            metrics: session_metrics,
            resend: self.resend.clone(),
            posted_at: Some(posted_at),
            _port: port,
            held,
        };
        let sessions = self.sessions.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let _finished = finished.drop_guard();
            let (id, camera) = (session.id.clone(), session.camera.clone());
            session.run(cancel).await;
            sessions.lock().expect("sfu lock is never poisoned").remove(&id);
            if let Some(m) = metrics {
                let labels = [camera.as_str(), kind.as_str()];
                m.ended.with_label_values(&labels).inc();
                m.viewers.with_label_values(&labels).dec();
            }
            tracing::info!(camera, track = kind.as_str(), session = %id, "WebRTC viewer session ended");
        });
        Ok(CreatedSession { id, answer_sdp, etag })
    }

    /// A peer connection for one session (a viewer's or a publisher's) on
    /// `port`, with its codecs, interceptors and event handler.
    async fn peer_connection(
        &self,
        media_engine: MediaEngine,
        registry: Registry,
        handler: Arc<dyn PeerConnectionEventHandler>,
        port: &ports::PortLease,
    ) -> Result<Arc<dyn PeerConnection>, SfuError> {
        // Answer as the DTLS client: the viewer (DTLS server) then finishes its
        // handshake before we do, so it can decrypt the very first packets (the
        // cached GOP's keyframe). As DTLS server we would start sending while the
        // viewer still waits for our Finished, and it lost the keyframe now and then.
        let settings = SettingEngineBuilder::new()
            .with_answering_dtls_role(RTCDtlsRole::Client)
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .with_network_types(vec![NetworkType::Udp4])
            .with_include_loopback_candidate(true);
        let pc = PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(media_engine)
            .with_setting_engine(settings.build())
            .with_interceptor_registry(registry)
            .with_handler(handler)
            .with_udp_addrs(port.addrs(&self.config.udp_ips))
            .build()
            .await
            .map_err(webrtc_err)?;
        Ok(Arc::new(pc))
    }

    /// Applies `offer` to `pc` and answers it, non-trickle: waits (at most
    /// `gather_timeout`) for ICE gathering, then returns the answer's SDP with
    /// every candidate (and the public IPs). A rejected offer is a
    /// [`SfuError::MalformedOffer`].
    async fn answer(
        &self,
        pc: &Arc<dyn PeerConnection>,
        offer: rtc::peer_connection::sdp::RTCSessionDescription,
        gathered: &mut watch::Receiver<bool>,
    ) -> Result<String, SfuError> {
        pc.set_remote_description(offer).await.map_err(|e| SfuError::MalformedOffer(format!("offer rejected: {e}")))?;
        let answer = pc.create_answer(None).await.map_err(webrtc_err)?;
        pc.set_local_description(answer).await.map_err(webrtc_err)?;
        if tokio::time::timeout(self.config.gather_timeout, gathered.wait_for(|g| *g)).await.is_err() {
            tracing::warn!(
                "ICE gathering not complete after {:?}; answering with what there is",
                self.config.gather_timeout
            );
        }
        let answer = pc.local_description().await.ok_or_else(|| webrtc_err("no local description"))?;
        Ok(candidates::rewrite_candidates(&answer.sdp, &self.config.public_ips))
    }

    /// Ends session `id` of `camera`'s `kind` track: closes its peer connection
    /// and waits (briefly) for its task to stop.
    pub async fn delete_session(&self, camera: &str, kind: TrackKind, id: &str) -> Result<(), SfuError> {
        if let Some(o) = &self.one_port {
            return o.delete_session(camera, kind, id).await;
        }
        let entry = {
            let mut sessions = self.sessions.lock().expect("sfu lock is never poisoned");
            match sessions.get(id) {
                Some(e) if e.camera == camera && e.kind == kind => sessions.remove(id),
                _ => None,
            }
        };
        let entry = entry.ok_or_else(|| SfuError::SessionNotFound(id.to_owned()))?;
        entry.cancel.cancel();
        if tokio::time::timeout(Duration::from_secs(3), entry.finished.cancelled()).await.is_err() {
            tracing::warn!(session = id, "viewer session still closing after 3 s");
        }
        Ok(())
    }

    /// Ends every session (shutdown).
    pub async fn close_all(&self) {
        if let Some(o) = &self.one_port {
            o.close_all().await;
        }
        let entries: Vec<SessionEntry> =
            self.sessions.lock().expect("sfu lock is never poisoned").drain().map(|(_, e)| e).collect();
        Sfu::close_entries(entries).await;
    }

    /// Ends every session of `camera` (cluster mode: another node pulls it
    /// now; the players reconnect there).
    pub async fn close_camera(&self, camera: &str) {
        if let Some(o) = &self.one_port {
            o.close_camera(camera).await;
        }
        let entries: Vec<SessionEntry> = {
            let mut sessions = self.sessions.lock().expect("sfu lock is never poisoned");
            let ids: Vec<SessionId> =
                sessions.iter().filter(|(_, e)| e.camera == camera).map(|(id, _)| id.clone()).collect();
            ids.iter().filter_map(|id| sessions.remove(id)).collect()
        };
        if !entries.is_empty() {
            tracing::info!(camera, sessions = entries.len(), "ending the camera's viewer sessions on this node");
        }
        Sfu::close_entries(entries).await;
    }

    async fn close_entries(entries: Vec<SessionEntry>) {
        for e in &entries {
            e.cancel.cancel();
        }
        // All sessions wind down at once, under one deadline (not 2 s each).
        let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
        for e in entries {
            let _ = tokio::time::timeout_at(deadline, e.finished.cancelled()).await;
        }
    }
}

fn new_session_id() -> SessionId {
    format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>())
}

/// The stream's `profile-level-id`, from the SPS of the cached keyframe.
fn stream_profile_level_id(tracks: &CameraTracks, kind: TrackKind) -> Option<[u8; 3]> {
    let sub = tracks.track(kind).subscribe();
    let key = sub.gop.first()?;
    nal_units(&key.data).find(|n| nal_type(n) == Some(7)).and_then(profile_level_id)
}

struct Events {
    gathered: watch::Sender<bool>,
    state: watch::Sender<RTCPeerConnectionState>,
    /// The viewer's `labels` data channel while it is open.
    labels_channel: Arc<session_labels::OpenChannel>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Events {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        // false while an ICE restart gathers again (`patch` waits for true).
        let _ = self.gathered.send(state == RTCIceGatheringState::Complete);
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!("viewer peer connection: {state}");
        let _ = self.state.send(state);
    }

    async fn on_data_channel(&self, dc: Arc<dyn webrtc::data_channel::DataChannel>) {
        session_labels::watch_channel(dc, self.labels_channel.clone());
    }
}

fn is_over(state: &RTCPeerConnectionState) -> bool {
    matches!(state, RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed)
}

/// Resolves when the connection has failed or closed, or stayed `disconnected`
/// (no answer to ICE consent checks: the viewer closed its tab or lost its
/// network) for `grace`.
async fn gone(mut state: watch::Receiver<RTCPeerConnectionState>, grace: Duration) {
    loop {
        let s = match state.wait_for(|s| is_over(s) || *s == RTCPeerConnectionState::Disconnected).await {
            Ok(s) => *s,
            Err(_) => return,
        };
        if is_over(&s) {
            return;
        }
        let back = state.wait_for(|s| *s != RTCPeerConnectionState::Disconnected);
        if tokio::time::timeout(grace, back).await.is_err() {
            return;
        }
    }
}

/// Keyframe requests are passed on at most this often.
struct Session {
    id: SessionId,
    camera: String,
    kind: TrackKind,
    tracks: Arc<CameraTracks>,
    pc: Arc<dyn PeerConnection>,
    local: Arc<TrackLocalStaticRTP>,
    rtp: RtpState,
    state: watch::Receiver<RTCPeerConnectionState>,
    /// The viewer's `labels` data channel while it is open.
    labels_channel: watch::Receiver<Option<Arc<dyn webrtc::data_channel::DataChannel>>>,
    connect_timeout: Duration,
    disconnected_timeout: Duration,
    metrics: SessionMetrics,
    resend: Arc<resend::ResendBudget>,
    /// When the WHEP POST came; taken when the first keyframe goes out
    /// (`webrtc_time_to_first_frame_seconds`).
    posted_at: Option<Instant>,
    /// Held until the session ends (and its sockets with it).
    _port: ports::PortLease,
    /// What the WHEP request that made the session holds (its limit slot,
    /// its place in the room), told of each label sent.
    held: Box<dyn SessionHold>,
}

impl Session {
    async fn run(mut self, cancel: CancellationToken) {
        let mut state = self.state.clone();
        let connected = tokio::select! {
            _ = cancel.cancelled() => false,
            r = tokio::time::timeout(
                self.connect_timeout,
                state.wait_for(|s| *s == RTCPeerConnectionState::Connected || is_over(s)),
            ) => matches!(r, Ok(Ok(s)) if *s == RTCPeerConnectionState::Connected),
        };
        if connected {
            tracing::debug!(session = %self.id, "viewer connected");
            let state = self.state.clone();
            let disconnected_timeout = self.disconnected_timeout;
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = gone(state, disconnected_timeout) => {
                    tracing::debug!(session = %self.id, "viewer gone");
                }
                _ = self.stream() => {}
            }
        } else if !cancel.is_cancelled() {
            tracing::info!(camera = %self.camera, session = %self.id, "viewer never connected");
        }
        if let Err(e) = self.pc.close().await {
            tracing::debug!(session = %self.id, "closing peer connection: {e}");
        }
    }

    /// Sends the cached GOP, then live access units, until the track ends.
    async fn stream(&mut self) {
        let tracks = self.tracks.clone();
        let track = tracks.track(self.kind);
        let mut sub = track.subscribe();
        if sub.gop.is_empty() {
            // The annotated encoder, or a source that can be asked (a WHIP publisher), sends one.
            track.request_keyframe();
        }
        let mut queue: VecDeque<AccessUnit> = std::mem::take(&mut sub.gop).into();
        let mut last_keyframe_request: Option<Instant> = None;
        let local = self.local.clone();
        let mut label = tracks.label.subscribe();
        let mut labels_channel = self.labels_channel.clone();
        // false once the peer connection's handler (the sender) is gone.
        let mut channel_watched = true;
        loop {
            let (au, live) = match queue.pop_front() {
                Some(au) => (au, false),
                None => {
                    let next = tokio::select! {
                        au = sub.next() => Next::Media(au),
                        ev = local.poll() => Next::Event(ev),
                        r = labels_channel.changed(), if channel_watched => Next::LabelsChannel(r.is_ok()),
                        // The hub's sender lives as long as `tracks`.
                        Ok(()) = label.changed() => Next::Label,
                    };
                    match next {
                        Next::LabelsChannel(false) => {
                            channel_watched = false;
                            continue;
                        }
                        // A viewer joining gets the latest label at once; then every new one.
                        Next::LabelsChannel(true) | Next::Label => {
                            let dc = labels_channel.borrow_and_update().clone();
                            let latest = label.borrow_and_update().clone();
                            if let (Some(dc), Some(latest)) = (dc, latest)
                                && session_labels::send_label(dc.as_ref(), &self.rtp, &latest).await
                            {
                                self.metrics.labels_sent.inc();
                                self.held.label_sent();
                            }
                            continue;
                        }
                        Next::Media(Some(au)) => (au, true),
                        Next::Media(None) => return,
                        Next::Event(Some(TrackLocalEvent::OnRtcpPacket(packets))) => {
                            if !packets.iter().any(|p| rtcp::is_keyframe_request(p.as_ref()))
                                || last_keyframe_request.is_some_and(|t| t.elapsed() < resend::GOP_RESEND_INTERVAL)
                            {
                                continue;
                            }
                            self.metrics.keyframe_requests.inc();
                            last_keyframe_request = Some(Instant::now());
                            tracing::debug!(session = %self.id, "viewer asked for a keyframe");
                            match self.kind {
                                TrackKind::Annotated => track.request_keyframe(),
                                TrackKind::Raw => {
                                    // Resend from the cached GOP's keyframe, within the shared budget.
                                    let mut fresh = track.subscribe();
                                    let bytes: usize = fresh.gop.iter().map(|au| au.data.len()).sum();
                                    if fresh.gop.is_empty() {
                                        // Nothing cached yet: a WHIP publisher is asked for an IDR
                                        // (an RTSP camera cannot be; its next one is on its way).
                                        track.request_keyframe();
                                    } else if self.resend.try_take(bytes) {
                                        self.metrics.gop_resent.inc();
                                        queue = std::mem::take(&mut fresh.gop).into();
                                        sub = fresh;
                                        self.rtp.reanchor = true;
                                    } else {
                                        self.metrics.gop_resend_refused.inc();
                                        tracing::debug!(session = %self.id, bytes, "GOP resend over budget");
                                    }
                                }
                            }
                            continue;
                        }
                        Next::Event(_) => {
                            // Unbound: the connection is going away.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    }
                }
            };
            let payloads = packetize::shared_payloads(&au);
            let timestamp = self.rtp.timestamp(au.pts_90k, au.keyframe);
            let n = payloads.len();
            let mut bytes = 0;
            for (i, payload) in payloads.iter().enumerate() {
                bytes += payload.len();
                let packet = self.rtp.packet(timestamp, i + 1 == n, payload.clone());
                if let Err(e) = self.local.write_rtp(packet).await {
                    tracing::debug!(session = %self.id, "RTP write failed: {e}");
                } else if au.keyframe
                    && let Some(posted_at) = self.posted_at.take()
                {
                    self.metrics.time_to_first_frame.observe(posted_at.elapsed().as_secs_f64());
                }
            }
            self.metrics.packets_sent.inc_by(n as u64);
            self.metrics.bytes_sent.inc_by(bytes as u64);
            if live {
                self.metrics.send_latency.observe(au.received_at.elapsed().as_secs_f64());
            }
        }
    }
}

enum Next {
    Media(Option<AccessUnit>),
    Event(Option<TrackLocalEvent>),
    /// The `labels` channel opened or closed (false: no more changes).
    LabelsChannel(bool),
    /// The camera has a new label.
    Label,
}
