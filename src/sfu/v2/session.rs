//! One viewer of the one-port SFU: a sans-IO peer connection (`rtc` 0.21,
//! ICE-lite, DTLS client, SRTP keys of its own) that a shard drives with
//! datagrams and time, and feeds access units as H.264 RTP and labels on
//! the `labels` data channel when the viewer opens one. The RTP (and its
//! NACK answers and sender reports) is encrypted by [`MediaOut`] past rtc's
//! pipeline; ICE, DTLS, SCTP and the viewer's RTCP go through it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use rtc::data_channel::RTCDataChannelId;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::ice::network_type::NetworkType;
use rtc::ice::tcp_type::TcpType;
use rtc::interceptor::{Registry, Slot};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_H264, MediaEngine};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::{RTCDataChannelEvent, RTCPeerConnectionEvent};
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate};
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

use super::super::label_channel::{LABELS_CHANNEL, MAX_LABEL_BACKLOG_BYTES, label_message};
use super::super::metrics::SessionMetrics;
use super::super::patch::{PatchPlan, etag_for, plan};
use super::super::rtp_state::RtpState;
use super::super::sdpfrag::{self, SdpFragment};
use super::super::{ChosenCodec, Patched, SfuError, rtcp};
use super::batch::Batch;
use super::media_out::MediaOut;
use crate::hub::{CameraTracks, CountGuard, TrackKind};
use crate::labels::Label;
use crate::media::AccessUnit;

fn webrtc_err(e: impl std::fmt::Display) -> SfuError {
    SfuError::WebRtc(e.to_string())
}

/// Our host candidates: UDP on each of `addrs`, and with `tcp` an ICE-TCP
/// passive one on the same address and port number (RFC 6544).
fn add_host_candidates(pc: &mut RTCPeerConnection, addrs: &[SocketAddr], tcp: bool) -> Result<(), SfuError> {
    let networks: &[(&str, TcpType)] = if tcp {
        &[("udp", TcpType::Unspecified), ("tcp", TcpType::Passive)]
    } else {
        &[("udp", TcpType::Unspecified)]
    };
    for addr in addrs {
        for (network, tcp_type) in networks {
            let candidate = CandidateHostConfig {
                base_config: CandidateConfig {
                    network: (*network).to_owned(),
                    address: addr.ip().to_string(),
                    port: addr.port(),
                    component: 1,
                    ..Default::default()
                },
                tcp_type: *tcp_type,
            }
            .new_candidate_host()
            .map_err(webrtc_err)?;
            let init = RTCIceCandidate::from(&candidate).to_json().map_err(webrtc_err)?;
            pc.add_local_candidate(init).map_err(webrtc_err)?;
        }
    }
    Ok(())
}

/// What a shard needs to know about a session it was handed.
pub(super) struct Session {
    pub id: String,
    pub camera: String,
    pub kind: TrackKind,
    pub ufrag: String,
    pc: RTCPeerConnection,
    rtp: RtpState,
    /// The RTP encrypted and queued for the shard, its NACK history, sender reports.
    media: MediaOut,
    pub tracks: Arc<CameraTracks>,
    pub state: RTCPeerConnectionState,
    pub created_at: Instant,
    /// When the viewer last sent anything (consent checks come every few
    /// seconds; an ICE-lite agent sends none of its own to notice silence).
    pub last_received: Instant,
    /// Access units (their data's address) last sent from the cached GOP,
    /// which the live feed may bring again. Not `received_at`: annotated
    /// access units of a camera with B-frames come in presentation order, so
    /// their camera `received_at` is not monotonic.
    from_gop: Vec<usize>,
    /// Wait for a keyframe before sending (nothing cached at connect).
    need_keyframe: bool,
    /// When the WHEP POST came; taken at the first keyframe sent.
    posted_at: Option<Instant>,
    last_keyframe_request: Option<Instant>,
    pub metrics: SessionMetrics,
    /// The local address datagrams arrive on (for the ICE agent).
    local_addr: SocketAddr,
    /// Our host candidates (added again if an ICE restart dropped them).
    candidates: Vec<SocketAddr>,
    /// ICE-TCP passive candidates beside them.
    tcp: bool,
    /// The offer as last applied, the viewer's ufrag, restarts so far (`PATCH`).
    offer: String,
    remote_ufrag: Option<String>,
    restarts: u32,
    /// Output left in the connection by the last [`Session::service`]
    /// (paced: the shard services it again within [`PACE_INTERVAL`]).
    pub backlogged: bool,
    /// The live access unit whose packets are queued, for the send latency
    /// once they have all left (`received_at`).
    pub latency_pending: Option<Instant>,
    /// [`Session::next_timeout`] as of the last [`Session::service`] (only
    /// what the shard hands the connection moves it), so the shard's
    /// wake-ups scan a field instead of asking every connection.
    pub timeout: Option<Instant>,
    resend: Arc<super::super::resend::ResendBudget>,
    /// The viewer's open `labels` data channel.
    labels_channel: Option<RTCDataChannelId>,
    _viewer: CountGuard,
    held: Box<dyn crate::sfu::SessionHold>,
}

/// Most datagrams one session hands the shard per service: a keyframe (or
/// the cached GOP at start) leaves in bursts of this many, one burst per
/// [`PACE_INTERVAL`], so no viewer's receive buffer gets a whole keyframe at
/// once (a loopback or LAN receiver with a 208 KiB buffer overflows at ~90).
pub const PACE_BURST: usize = 32;
/// Most datagrams a closing session still sends (a keyframe or two, then its close).
const CLOSE_DRAIN: usize = 1024;
/// Time between a backlogged session's bursts.
pub const PACE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(1);

/// The pieces [`Session::new`] needs.
pub(super) struct NewSession<'a> {
    pub id: String,
    pub camera: &'a str,
    pub kind: TrackKind,
    pub tracks: Arc<CameraTracks>,
    pub offer: rtc::peer_connection::sdp::RTCSessionDescription,
    pub offer_sdp: &'a str,
    pub resend: Arc<super::super::resend::ResendBudget>,
    pub chosen: ChosenCodec,
    pub candidates: &'a [SocketAddr],
    /// ICE-TCP passive candidates too (the TCP port of the same number listens).
    pub tcp: bool,
    pub local_addr: SocketAddr,
    pub metrics: SessionMetrics,
    pub held: Box<dyn crate::sfu::SessionHold>,
    pub posted_at: Instant,
}

impl Session {
    /// Answers the offer: the session and its SDP answer (every candidate in it).
    pub fn new(n: NewSession<'_>) -> Result<(Session, String), SfuError> {
        let codec = RTCRtpCodec {
            mime_type: MIME_TYPE_H264.to_owned(),
            clock_rate: 90000,
            channels: 0,
            sdp_fmtp_line: n.chosen.fmtp.clone(),
            rtcp_feedback: vec![],
        };
        let mut media_engine = MediaEngine::default();
        media_engine
            .register_codec(
                RTCRtpCodecParameters { rtp_codec: codec.clone(), payload_type: n.chosen.payload_type },
                RtpCodecKind::Video,
            )
            .map_err(webrtc_err)?;
        // A send-only viewer gets NACK answers and sender reports, both from
        // [`MediaOut`] (no interceptor sees our RTP; nothing is received).
        for parameter in ["", "pli"] {
            media_engine.register_feedback(
                RTCPFeedback { typ: "nack".to_owned(), parameter: parameter.to_owned() },
                RtpCodecKind::Video,
            );
        }
        let registry = Registry::new()
            .with(Slot::from(14_000), rtcp::KeyframeRequestForwarder::delivering_nacks(n.metrics.nacks.clone()));
        let settings = SettingEngineBuilder::new()
            .with_lite(true)
            .with_answering_dtls_role(RTCDtlsRole::Client)
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .with_network_types(if n.tcp {
                vec![NetworkType::Udp4, NetworkType::Udp6, NetworkType::Tcp4, NetworkType::Tcp6]
            } else {
                vec![NetworkType::Udp4, NetworkType::Udp6]
            })
            .build();
        let now = Instant::now();
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_setting_engine(settings)
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .build(now)
            .map_err(webrtc_err)?;
        pc.set_remote_description(now, n.offer)
            .map_err(|e| SfuError::MalformedOffer(format!("offer rejected: {e}")))?;
        let ssrc = rand::random::<u32>();
        let track = MediaStreamTrack::new(
            format!("infercast-{}", n.camera),
            format!("{}-{}", n.camera, n.kind.as_str()),
            format!("{} {}", n.camera, n.kind.as_str()),
            RtpCodecKind::Video,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
                codec,
                ..Default::default()
            }],
        );
        let sender = pc.add_track(track).map_err(webrtc_err)?;
        add_host_candidates(&mut pc, n.candidates, n.tcp)?;
        let answer = pc.create_answer(None).map_err(webrtc_err)?;
        pc.set_local_description(now, answer).map_err(webrtc_err)?;
        let answer_sdp = pc.local_description().ok_or_else(|| webrtc_err("no local description"))?.sdp;
        // Our ufrag names the session on the shared port (the agent makes it,
        // and a new one on each ICE restart).
        let ufrag =
            sdpfrag::ice_ufrag(&answer_sdp).ok_or_else(|| webrtc_err("the answer has no a=ice-ufrag"))?.to_owned();
        let payload_type = pc
            .rtp_sender(sender)
            .and_then(|mut s| s.get_parameters().rtp_parameters.codecs.first().map(|c| c.payload_type))
            .unwrap_or(n.chosen.payload_type);
        let viewer = n.tracks.track(n.kind).add_viewer();
        let session = Session {
            id: n.id,
            camera: n.camera.to_owned(),
            kind: n.kind,
            ufrag,
            pc,
            rtp: RtpState::new(ssrc, payload_type),
            media: MediaOut::new(ssrc, now),
            tracks: n.tracks,
            state: RTCPeerConnectionState::New,
            created_at: now,
            last_received: now,
            from_gop: Vec::new(),
            need_keyframe: true,
            posted_at: Some(n.posted_at),
            last_keyframe_request: None,
            metrics: n.metrics,
            local_addr: n.local_addr,
            candidates: n.candidates.to_vec(),
            tcp: n.tcp,
            offer: n.offer_sdp.to_owned(),
            remote_ufrag: sdpfrag::ice_ufrag(n.offer_sdp).map(str::to_owned),
            restarts: 0,
            backlogged: false,
            latency_pending: None,
            timeout: None,
            resend: n.resend,
            labels_channel: None,
            _viewer: viewer,
            held: n.held,
        };
        Ok((session, answer_sdp))
    }

    /// A datagram from the viewer.
    pub fn handle_datagram(&mut self, from: SocketAddr, data: BytesMut, tcp: bool) {
        self.last_received = Instant::now();
        let local_addr =
            if from.ip().is_loopback() { SocketAddr::new(from.ip(), self.local_addr.port()) } else { self.local_addr };
        let msg = TaggedBytesMut {
            now: Instant::now(),
            transport: TransportContext {
                local_addr,
                peer_addr: from,
                ecn: None,
                transport_protocol: if tcp { TransportProtocol::TCP } else { TransportProtocol::UDP },
            },
            message: data,
        };
        if let Err(e) = self.pc.handle_read(msg) {
            tracing::trace!(session = %self.id, "datagram refused: {e}");
        }
    }

    fn next_timeout(&mut self) -> Option<Instant> {
        let report = self.media.report_due();
        match (self.pc.poll_timeout(), report) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Err(e) = self.pc.handle_timeout(now) {
            tracing::trace!(session = %self.id, "timeout handling: {e}");
        }
        if let Some(ctx) = self.pc.local_srtp_context() {
            self.media.report(ctx, now);
        }
    }

    /// Moves the connection's output into `batch`, at most [`PACE_BURST`]
    /// datagrams (the rest waits in the connection: [`Session::backlogged`]),
    /// applies its events and answers the viewer's RTCP.
    pub fn service(&mut self, batch: &mut Batch) {
        let mut budget = PACE_BURST;
        self.backlogged = false;
        let mut connected_now = false;
        let mut labels_opened = false;
        loop {
            while budget > 0 {
                let Some(msg) = self.pc.poll_write() else { break };
                batch.push_to(&msg.transport, msg.message);
                budget -= 1;
            }
            budget -= self.push_media(batch, budget);
            if budget == 0 {
                self.backlogged = true;
            }
            let mut progressed = false;
            while let Some(event) = self.pc.poll_event() {
                progressed = true;
                match event {
                    RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                        tracing::debug!(session = %self.id, "viewer peer connection: {state}");
                        if state == RTCPeerConnectionState::Connected && self.state != state {
                            connected_now = true;
                        }
                        self.state = state;
                    }
                    RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnOpen(id)) => {
                        let name = self.pc.data_channel(id).map(|dc| dc.label().to_owned());
                        if name.as_deref() == Some(LABELS_CHANNEL) && self.labels_channel.is_none() {
                            tracing::debug!(session = %self.id, "labels data channel open");
                            self.labels_channel = Some(id);
                            labels_opened = true;
                        }
                    }
                    RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnClose(id))
                        if self.labels_channel == Some(id) =>
                    {
                        self.labels_channel = None;
                    }
                    _ => {}
                }
            }
            // The viewer's RTCP; anything it sends on a data channel is read
            // and dropped (the `labels` channel only goes one way).
            while let Some(msg) = self.pc.poll_read() {
                progressed = true;
                if let RTCMessage::RtcpPacket(_, packets) = msg.message {
                    self.on_rtcp(&packets);
                }
            }
            if labels_opened {
                labels_opened = false;
                // A viewer joining gets the latest label at once.
                let latest = self.tracks.label.borrow().clone();
                if let Some(label) = latest {
                    self.send_label(&label);
                }
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
        if connected_now {
            // The cached GOP goes out paced, with the next services.
            self.start();
            self.backlogged = true;
        }
        self.timeout = self.next_timeout();
    }

    /// Moves at most `budget` queued media datagrams into `batch`, to the
    /// selected candidate pair; how many.
    fn push_media(&mut self, batch: &mut Batch, budget: usize) -> usize {
        if budget == 0 || self.media.is_empty() {
            return 0;
        }
        let Some(to) = self.pc.selected_transport() else { return 0 };
        let mut moved = 0;
        while moved < budget
            && let Some(packet) = self.media.pop()
        {
            batch.push_to(&to, packet);
            moved += 1;
        }
        moved
    }

    /// Just connected: the cached GOP at once (or a keyframe asked for).
    fn start(&mut self) {
        let track = self.tracks.track(self.kind);
        let gop = track.gop();
        if gop.is_empty() {
            // The annotated encoder, or a source that can be asked (a WHIP publisher), sends one.
            track.request_keyframe();
            return;
        }
        for au in &gop {
            self.send(au, false);
        }
    }

    fn on_rtcp(&mut self, packets: &[Box<dyn rtc::rtcp::Packet>]) {
        for nack in packets.iter().filter_map(|p| p.as_any().downcast_ref::<TransportLayerNack>()) {
            if nack.media_ssrc != self.rtp.ssrc {
                continue;
            }
            let Some(ctx) = self.pc.local_srtp_context() else { break };
            let lost = nack.nacks.iter().flat_map(|pair| pair.into_iter());
            self.media.resend(ctx, lost, Instant::now());
        }
        if !packets.iter().any(|p| rtcp::is_keyframe_request(p.as_ref()))
            || self.last_keyframe_request.is_some_and(|t| t.elapsed() < super::super::resend::GOP_RESEND_INTERVAL)
        {
            return;
        }
        self.metrics.keyframe_requests.inc();
        self.last_keyframe_request = Some(Instant::now());
        let track = self.tracks.track(self.kind);
        match self.kind {
            TrackKind::Annotated => track.request_keyframe(),
            TrackKind::Raw => {
                let gop = track.gop();
                if gop.is_empty() {
                    track.request_keyframe(); // a WHIP publisher gets a PLI; an RTSP camera cannot be asked
                    return;
                }
                // Within the budget all sessions share ([limits] gop_resend_bps).
                let bytes: usize = gop.iter().map(|au| au.data.len()).sum();
                if !self.resend.try_take(bytes) {
                    self.metrics.gop_resend_refused.inc();
                    tracing::debug!(session = %self.id, bytes, "GOP resend over budget");
                    return;
                }
                self.metrics.gop_resent.inc();
                self.rtp.reanchor = true;
                self.from_gop.clear();
                for au in &gop {
                    self.send(au, false);
                }
            }
        }
    }

    pub fn is_connected(&self) -> bool {
        self.state == RTCPeerConnectionState::Connected
    }

    /// Sends `au` (`live`: from the relay, else from the cached GOP) if the
    /// viewer is connected, it was not just sent from the GOP, and (after a
    /// start without a cached GOP) a keyframe has come; true if it was (the
    /// caller observes the send latency once the packets are flushed).
    pub fn send(&mut self, au: &AccessUnit, live: bool) -> bool {
        if !self.is_connected() {
            return false;
        }
        let id = au.data.as_ptr() as usize;
        if live {
            if self.from_gop.contains(&id) {
                return false;
            }
            // Past the GOP: the live feed is new from here on.
            self.from_gop.clear();
        }
        if self.need_keyframe && !au.keyframe {
            return false;
        }
        self.need_keyframe = false;
        if !live {
            self.from_gop.push(id);
        }
        let Some(ctx) = self.pc.local_srtp_context() else { return false };
        let payloads = super::super::packetize::shared_payloads(au);
        let timestamp = self.rtp.timestamp(au.pts_90k, au.keyframe);
        let n = payloads.len();
        let mut bytes = 0;
        let now = Instant::now();
        for (i, payload) in payloads.iter().enumerate() {
            bytes += payload.len();
            let header = self.rtp.header(timestamp, i + 1 == n);
            if let Err(e) = self.media.write(ctx, header, payload, now) {
                tracing::debug!(session = %self.id, "RTP write failed: {e}");
                return false;
            }
            if i == 0
                && au.keyframe
                && let Some(posted_at) = self.posted_at.take()
            {
                self.metrics.time_to_first_frame.observe(posted_at.elapsed().as_secs_f64());
            }
        }
        self.metrics.packets_sent.inc_by(n as u64);
        self.metrics.bytes_sent.inc_by(bytes as u64);
        true
    }

    /// Sends `label` on the viewer's `labels` data channel, keyed to the RTP
    /// timestamp this session gave its frame; true if it went out. Skipped
    /// without a channel, before the first frame, for a frame from another
    /// pts timeline (see [`RtpState::timestamp_of`]) and while the channel
    /// has more than [`MAX_LABEL_BACKLOG_BYTES`] queued.
    pub fn send_label(&mut self, label: &Label) -> bool {
        let Some(id) = self.labels_channel else { return false };
        let Some(rtp_timestamp) = self.rtp.timestamp_of(label.frame_pts) else { return false };
        let Some(mut dc) = self.pc.data_channel(id) else {
            self.labels_channel = None;
            return false;
        };
        if dc.outstanding_bytes() > MAX_LABEL_BACKLOG_BYTES {
            return false;
        }
        if let Err(e) = dc.send_text(Instant::now(), label_message(label, rtp_timestamp)) {
            tracing::debug!(session = %self.id, "label not sent: {e}");
            return false;
        }
        self.metrics.labels_sent.inc();
        self.held.label_sent();
        true
    }

    /// The session's entity-tag now (quoted).
    pub fn etag(&self) -> String {
        etag_for(&self.id, self.restarts)
    }

    /// Applies a WHEP `PATCH` (see [`super::super::Sfu::patch_session`]):
    /// trickled candidates go to the ICE agent (an ICE-lite agent only
    /// answers checks, so they change nothing on the wire); an ICE restart
    /// renews the offer with the viewer's new credentials, which restarts our
    /// side too, and answers with our new credentials and candidates. The
    /// caller renames the session's route to [`Session::ufrag`].
    pub fn patch(&mut self, if_match: Option<&str>, body: &str) -> Result<Patched, SfuError> {
        let fragment = SdpFragment::parse(body).map_err(|e| SfuError::MalformedFragment(e.to_string()))?;
        match plan(&fragment, if_match, &self.etag(), self.remote_ufrag.as_deref())? {
            PatchPlan::Trickle => {
                self.add_remote_candidates(&fragment, self.remote_ufrag.clone())?;
                Ok(Patched::Trickled { candidates: fragment.candidates.len() })
            }
            PatchPlan::Restart { ufrag, pwd } => {
                let offer = sdpfrag::renewed_offer(&self.offer, &ufrag, &pwd);
                let now = Instant::now();
                let description = rtc::peer_connection::sdp::RTCSessionDescription::offer(offer.clone())
                    .map_err(|e| SfuError::Unprocessable(format!("the renewed offer is refused: {e}")))?;
                self.pc
                    .set_remote_description(now, description)
                    .map_err(|e| SfuError::Unprocessable(format!("the ICE restart is refused: {e}")))?;
                let answer = self.pc.create_answer(None).map_err(webrtc_err)?;
                self.pc.set_local_description(now, answer).map_err(webrtc_err)?;
                let mut sdp = self.pc.local_description().ok_or_else(|| webrtc_err("no local description"))?.sdp;
                if !sdp.contains("a=candidate:") {
                    let candidates = self.candidates.clone();
                    add_host_candidates(&mut self.pc, &candidates, self.tcp)?;
                    sdp = self.pc.local_description().ok_or_else(|| webrtc_err("no local description"))?.sdp;
                }
                self.add_remote_candidates(&fragment, Some(ufrag.clone()))?;
                let ours = sdpfrag::answer_fragment(&sdp)
                    .ok_or_else(|| SfuError::WebRtc("the restarted answer lacks ICE credentials".into()))?;
                self.ufrag = sdpfrag::ice_ufrag(&sdp).unwrap_or(&self.ufrag).to_owned();
                self.offer = offer;
                self.remote_ufrag = Some(ufrag);
                self.restarts += 1;
                tracing::info!(camera = %self.camera, track = self.kind.as_str(), session = %self.id, "ICE restarted (PATCH)");
                Ok(Patched::Restarted { fragment: ours, etag: self.etag() })
            }
        }
    }

    fn add_remote_candidates(&mut self, f: &SdpFragment, ufrag: Option<String>) -> Result<(), SfuError> {
        for candidate in &f.candidates {
            let init = rtc::peer_connection::transport::RTCIceCandidateInit {
                candidate: candidate.clone(),
                sdp_mid: f.mid.clone(),
                sdp_mline_index: Some(0),
                username_fragment: ufrag.clone(),
                ..Default::default()
            };
            self.pc
                .add_remote_candidate(init)
                .map_err(|e| SfuError::MalformedFragment(format!("candidate {candidate:?} refused: {e}")))?;
        }
        Ok(())
    }

    /// Closes the connection and moves everything it still has to send into
    /// `batch`, unpaced: the media queued before, the SCTP ABORT and the DTLS
    /// close_notify last, so the viewer ends its session at once instead of
    /// waiting for its consent checks to fail (at most [`CLOSE_DRAIN`] datagrams).
    pub fn close(&mut self, batch: &mut Batch) {
        if let Err(e) = self.pc.close() {
            tracing::debug!(session = %self.id, "closing peer connection: {e}");
        }
        let budget = CLOSE_DRAIN - self.push_media(batch, CLOSE_DRAIN);
        for _ in 0..budget {
            let Some(msg) = self.pc.poll_write() else { return };
            batch.push_to(&msg.transport, msg.message);
        }
        tracing::debug!(session = %self.id, "closed with more than {CLOSE_DRAIN} datagrams unsent");
    }
}
