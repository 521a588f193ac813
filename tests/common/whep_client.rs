//! A WHEP viewer in Rust (webrtc 0.21): offers recvonly video, POSTs the offer,
//! applies the answer and records every RTP packet it receives (and, when
//! asked, every message on a `labels` data channel it opens).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_H264, MIME_TYPE_VP8};
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::sync::watch;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
    register_default_interceptors,
};

/// What the viewer saw of one RTP packet.
#[derive(Clone, Debug)]
pub struct RtpSeen {
    pub payload_type: u8,
    pub sequence_number: u16,
    pub timestamp: u32,
    pub marker: bool,
    /// H.264 NAL unit types in the payload (see `infercast::sfu::payload_nal_types`).
    pub nal_types: Vec<u8>,
    /// A hash of the payload bytes (to recognise a resent packet).
    pub payload_hash: u64,
}

fn hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Which video codecs the viewer offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// H.264 like a browser: constrained baseline, baseline, main, high.
    H264,
    /// VP8 only (no H.264).
    Vp8Only,
}

/// Called with every RTP packet a viewer receives.
pub type RtpSink = Arc<dyn Fn(&rtc::rtp::Packet) + Send + Sync>;

struct Events {
    gathered: watch::Sender<bool>,
    state: watch::Sender<RTCPeerConnectionState>,
    sink: RtpSink,
    track: Arc<Mutex<Option<Arc<dyn TrackRemote>>>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Events {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.send(true);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.state.send(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let sink = self.sink.clone();
        *self.track.lock().unwrap() = Some(track.clone());
        tokio::spawn(async move {
            while let Some(evt) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(p) = evt {
                    sink(&p);
                }
            }
        });
    }
}

pub struct Viewer {
    pub pc: Arc<dyn PeerConnection>,
    pub offer_sdp: String,
    state: watch::Receiver<RTCPeerConnectionState>,
    packets: Arc<Mutex<Vec<RtpSeen>>>,
    track: Arc<Mutex<Option<Arc<dyn TrackRemote>>>>,
    /// Text messages on the `labels` channel (see [`Viewer::with_labels`]).
    labels: Arc<Mutex<Vec<String>>>,
    /// When the `labels` channel closed (the server's SCTP ABORT or DTLS close_notify).
    labels_closed: Arc<Mutex<Option<std::time::Instant>>>,
}

fn codec(mime: &str, pt: u8, fmtp: &str) -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: mime.to_owned(),
            clock_rate: 90000,
            channels: 0,
            sdp_fmtp_line: fmtp.to_owned(),
            rtcp_feedback: vec![],
        },
        payload_type: pt,
    }
}

impl Viewer {
    /// A peer connection on 127.0.0.1 with a recvonly video transceiver and its
    /// complete offer (candidates included); keeps what it sees of every packet
    /// (`packets()`).
    pub async fn new(offer: Offer) -> Viewer {
        Viewer::build(offer, None, false).await
    }

    /// Like [`Viewer::new`], also opening a `labels` data channel (unordered,
    /// no retransmissions, as the viewer page does) before the offer, and
    /// keeping every message it receives (`labels()`).
    pub async fn with_labels(offer: Offer) -> Viewer {
        Viewer::build(offer, None, true).await
    }

    /// Like [`Viewer::new`], handing every received packet to `sink` instead of
    /// keeping it (`packets()` stays empty).
    pub async fn with_sink(offer: Offer, sink: RtpSink) -> Viewer {
        Viewer::build(offer, Some(sink), false).await
    }

    /// The viewer: RTP packets to `sink` (`None`: kept for `packets()`), and
    /// with `labels_channel` a `labels` data channel whose messages are kept.
    pub async fn build(offer: Offer, sink: Option<RtpSink>, labels_channel: bool) -> Viewer {
        let packets = Arc::new(Mutex::new(Vec::new()));
        let sink = sink.unwrap_or_else(|| {
            let seen = packets.clone();
            Arc::new(move |p: &rtc::rtp::Packet| {
                seen.lock().unwrap().push(RtpSeen {
                    payload_type: p.header.payload_type,
                    sequence_number: p.header.sequence_number,
                    timestamp: p.header.timestamp,
                    marker: p.header.marker,
                    nal_types: infercast::sfu::payload_nal_types(&p.payload),
                    payload_hash: hash(&p.payload),
                });
            })
        });
        let mut media_engine = MediaEngine::default();
        let codecs = match offer {
            Offer::H264 => vec![
                codec(MIME_TYPE_H264, 102, "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f"),
                codec(MIME_TYPE_H264, 106, "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"),
                codec(MIME_TYPE_H264, 116, "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f"),
                codec(MIME_TYPE_H264, 112, "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f"),
            ],
            Offer::Vp8Only => vec![codec(MIME_TYPE_VP8, 96, "")],
        };
        for c in codecs {
            media_engine.register_codec(c, RtpCodecKind::Video).expect("codec registers");
        }
        let registry = register_default_interceptors(Registry::new(), &mut media_engine).expect("interceptors");
        let settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
            .with_network_types(vec![rtc::ice::network_type::NetworkType::Udp4])
            .with_include_loopback_candidate(true)
            .build();
        let (gathered_tx, mut gathered_rx) = watch::channel(false);
        let (state_tx, state_rx) = watch::channel(RTCPeerConnectionState::New);
        let track = Arc::new(Mutex::new(None));
        let events = Arc::new(Events { gathered: gathered_tx, state: state_tx, sink, track: track.clone() });
        let pc = PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(media_engine)
            .with_setting_engine(settings)
            .with_interceptor_registry(registry)
            .with_handler(events)
            .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
            .build()
            .await
            .expect("peer connection builds");
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        pc.add_transceiver_from_kind(
            RtpCodecKind::Video,
            Some(RTCRtpTransceiverInit { direction: RTCRtpTransceiverDirection::Recvonly, ..Default::default() }),
        )
        .await
        .expect("recvonly transceiver");
        let labels = Arc::new(Mutex::new(Vec::new()));
        let labels_closed = Arc::new(Mutex::new(None));
        if labels_channel {
            let init = webrtc::data_channel::RTCDataChannelInit {
                ordered: false,
                max_retransmits: Some(0),
                ..Default::default()
            };
            let dc = pc.create_data_channel("labels", Some(init)).await.expect("labels data channel");
            let (got, closed) = (labels.clone(), labels_closed.clone());
            tokio::spawn(async move {
                while let Some(event) = dc.poll().await {
                    match event {
                        webrtc::data_channel::DataChannelEvent::OnMessage(m) => {
                            got.lock().unwrap().push(String::from_utf8_lossy(&m.data).into_owned());
                        }
                        webrtc::data_channel::DataChannelEvent::OnClose => break,
                        _ => {}
                    }
                }
                *closed.lock().unwrap() = Some(std::time::Instant::now());
            });
        }
        let offer = pc.create_offer(None).await.expect("offer");
        pc.set_local_description(offer).await.expect("set local offer");
        tokio::time::timeout(Duration::from_secs(5), gathered_rx.wait_for(|g| *g))
            .await
            .expect("ICE gathering completes")
            .expect("handler alive");
        let offer_sdp = pc.local_description().await.expect("local description").sdp;
        Viewer { pc, offer_sdp, state: state_rx, packets, track, labels, labels_closed }
    }

    /// The messages received on the `labels` channel so far, parsed.
    pub fn labels(&self) -> Vec<serde_json::Value> {
        self.labels.lock().unwrap().iter().map(|m| serde_json::from_str(m).expect("a label message is JSON")).collect()
    }

    /// When the `labels` channel closed, if it has.
    pub fn labels_closed_at(&self) -> Option<std::time::Instant> {
        *self.labels_closed.lock().unwrap()
    }

    pub async fn apply_answer(&self, answer_sdp: &str) {
        apply_answer(self.pc.as_ref(), answer_sdp).await;
    }

    /// Waits for the connection to come up (or fail).
    pub async fn connected(&self, within: Duration) -> bool {
        connected(&self.state, within).await
    }

    /// Waits (at most `within`) for the connection to end (closed by the
    /// server with DTLS close_notify, or disconnected or failed); true if it did.
    pub async fn ended(&self, within: Duration) -> bool {
        let mut state = self.state.clone();
        tokio::time::timeout(
            within,
            state.wait_for(|s| {
                matches!(
                    s,
                    RTCPeerConnectionState::Closed
                        | RTCPeerConnectionState::Failed
                        | RTCPeerConnectionState::Disconnected
                )
            }),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    }

    /// Restarts ICE (new credentials) and returns the new local offer once it
    /// has candidates (within 5 s).
    pub async fn restart_offer(&self) -> String {
        let old = self.pc.local_description().await.expect("local description").sdp;
        self.pc.restart_ice().await.expect("restart_ice");
        let offer = self.pc.create_offer(None).await.expect("restart offer");
        self.pc.set_local_description(offer).await.expect("set restart offer");
        let ufrag = |sdp: &str| infercast::sfu::sdpfrag::ice_ufrag(sdp).map(str::to_owned);
        for _ in 0..100 {
            let sdp = self.pc.local_description().await.expect("local description").sdp;
            if ufrag(&sdp) != ufrag(&old) && sdp.contains("a=candidate:") {
                return sdp;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no restarted offer with candidates within 5 s");
    }

    pub fn packets(&self) -> Vec<RtpSeen> {
        self.packets.lock().unwrap().clone()
    }

    /// Sends an RTCP PLI (picture loss indication) for the received track.
    pub async fn send_pli(&self) {
        let track = self.track.lock().unwrap().clone().expect("a track was received");
        let media_ssrc = track.ssrcs().await.first().copied().expect("track has an SSRC");
        let pli =
            rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication { sender_ssrc: 0, media_ssrc };
        track.write_rtcp(vec![Box::new(pli)]).await.expect("PLI sent");
    }

    pub async fn close(&self) {
        let _ = self.pc.close().await;
    }
}

/// Applies the server's SDP answer to `pc` (a viewer's or a publisher's).
pub async fn apply_answer(pc: &dyn PeerConnection, answer_sdp: &str) {
    let answer = RTCSessionDescription::answer(answer_sdp.to_owned()).expect("answer parses");
    pc.set_remote_description(answer).await.expect("answer applies");
}

/// Waits (at most `within`) for the connection `state` follows to come up;
/// false if it failed, closed or took longer.
pub async fn connected(state: &watch::Receiver<RTCPeerConnectionState>, within: Duration) -> bool {
    let mut state = state.clone();
    matches!(
        tokio::time::timeout(
            within,
            state.wait_for(|s| matches!(
                s,
                RTCPeerConnectionState::Connected | RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
            ))
        )
        .await,
        Ok(Ok(s)) if *s == RTCPeerConnectionState::Connected
    )
}

/// An HTTP reply with its headers of interest.
pub struct HttpReply {
    pub status: u16,
    pub content_type: String,
    pub location: Option<String>,
    pub etag: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

fn agent() -> ureq::Agent {
    super::service::agent_with_timeout(Duration::from_secs(15))
}

fn reply(mut resp: ureq::http::Response<ureq::Body>) -> HttpReply {
    let header = |k: &str| resp.headers().get(k).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (content_type, location, etag) =
        (header("content-type").unwrap_or_default(), header("location"), header("etag"));
    let headers =
        resp.headers().iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())).collect();
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    HttpReply { status: resp.status().as_u16(), content_type, location, etag, headers, body }
}

/// Any request: `method {base}{path}` with `headers` and `body` (blocking).
pub fn request(base: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> HttpReply {
    let mut req = ureq::http::Request::builder().method(method).uri(format!("{base}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(body.to_owned()).expect("request");
    reply(agent().run(req).expect("HTTP request"))
}

/// `POST {base}{path}` with `body` as `content_type` (blocking).
pub fn post(base: &str, path: &str, content_type: &str, body: &str) -> HttpReply {
    reply(agent().post(format!("{base}{path}")).header("content-type", content_type).send(body).expect("HTTP POST"))
}

/// `DELETE {base}{path}` (blocking).
pub fn delete(base: &str, path: &str) -> HttpReply {
    reply(agent().delete(format!("{base}{path}")).call().expect("HTTP DELETE"))
}

/// `OPTIONS {base}{path}` (blocking).
pub fn options(base: &str, path: &str) -> HttpReply {
    let req = ureq::http::Request::builder().method("OPTIONS").uri(format!("{base}{path}")).body(()).expect("request");
    reply(agent().run(req).expect("HTTP OPTIONS"))
}

/// The payload type of the first format on the answer's video m-line.
pub fn answered_video_payload_type(answer: &str) -> Option<u8> {
    answer.lines().find(|l| l.starts_with("m=video"))?.split_whitespace().nth(3)?.parse().ok()
}
