//! A WHIP publisher in Rust (webrtc 0.21): offers sendonly H.264, POSTs the
//! offer, applies the answer, then sends an H.264 clip's access units in real
//! time as RTP (RFC 6184, packetized by infercast's own packetizer) and
//! counts the keyframe requests (RTCP PLI/FIR) the server sends back.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rtc::interceptor::Slot;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_H264;
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

const PAYLOAD_TYPE: u8 = 102;

struct Events {
    gathered: watch::Sender<bool>,
    state: watch::Sender<RTCPeerConnectionState>,
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
}

pub struct Publisher {
    pub pc: Arc<dyn PeerConnection>,
    pub offer_sdp: String,
    state: watch::Receiver<RTCPeerConnectionState>,
    track: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    keyframe_requests: Arc<AtomicUsize>,
}

impl Publisher {
    /// A peer connection on 127.0.0.1 sending one H.264 video track
    /// (constrained baseline, packetization-mode 1) and its complete offer.
    pub async fn new() -> Publisher {
        let codec = RTCRtpCodec {
            mime_type: MIME_TYPE_H264.to_owned(),
            clock_rate: 90000,
            channels: 0,
            sdp_fmtp_line: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f".to_owned(),
            rtcp_feedback: vec![],
        };
        let mut media_engine = MediaEngine::default();
        media_engine
            .register_codec(
                RTCRtpCodecParameters { rtp_codec: codec.clone(), payload_type: PAYLOAD_TYPE },
                RtpCodecKind::Video,
            )
            .expect("codec registers");
        let registry = register_default_interceptors(Registry::new(), &mut media_engine).expect("interceptors");
        let registry = registry.with(
            Slot::from(14_000),
            infercast::sfu::KeyframeRequestForwarder::new(prometheus::IntCounter::new("nacks", "n").unwrap()),
        );
        let settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
            .with_network_types(vec![rtc::ice::network_type::NetworkType::Udp4])
            .with_include_loopback_candidate(true)
            .build();
        let (gathered_tx, mut gathered_rx) = watch::channel(false);
        let (state_tx, state_rx) = watch::channel(RTCPeerConnectionState::New);
        let pc = PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(media_engine)
            .with_setting_engine(settings)
            .with_interceptor_registry(registry)
            .with_handler(Arc::new(Events { gathered: gathered_tx, state: state_tx }))
            .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
            .build()
            .await
            .expect("peer connection builds");
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let ssrc = rand::random::<u32>();
        let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
            "whip-test".to_owned(),
            "whip-test-video".to_owned(),
            "whip test video".to_owned(),
            RtpCodecKind::Video,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
                codec,
                ..Default::default()
            }],
        )));
        pc.add_track(track.clone() as Arc<dyn TrackLocal>).await.expect("video track added");
        let offer = pc.create_offer(None).await.expect("offer");
        pc.set_local_description(offer).await.expect("set local offer");
        tokio::time::timeout(Duration::from_secs(5), gathered_rx.wait_for(|g| *g))
            .await
            .expect("ICE gathering completes")
            .expect("handler alive");
        let offer_sdp = pc.local_description().await.expect("local description").sdp;
        let keyframe_requests = Arc::new(AtomicUsize::new(0));
        let (events, counted) = (track.clone(), keyframe_requests.clone());
        tokio::spawn(async move {
            while let Some(event) = events.poll().await {
                if let TrackLocalEvent::OnRtcpPacket(packets) = event
                    && packets.iter().any(|p| infercast::sfu::is_keyframe_request(p.as_ref()))
                {
                    counted.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        Publisher { pc, offer_sdp, state: state_rx, track, ssrc, keyframe_requests }
    }

    pub async fn apply_answer(&self, answer_sdp: &str) {
        super::whep_client::apply_answer(self.pc.as_ref(), answer_sdp).await;
    }

    /// Waits for the connection to come up (or fail).
    pub async fn connected(&self, within: Duration) -> bool {
        super::whep_client::connected(&self.state, within).await
    }

    /// Keyframe requests (PLI/FIR) received so far.
    pub fn keyframe_requests(&self) -> usize {
        self.keyframe_requests.load(Ordering::SeqCst)
    }

    /// Sends `clip` (Annex B H.264) in real time at 25 fps, looping, until
    /// `stop`; returns the access units sent.
    pub fn stream(&self, clip: &Path, stop: CancellationToken) -> tokio::task::JoinHandle<usize> {
        let (track, ssrc) = (self.track.clone(), self.ssrc);
        let clip = clip.to_owned();
        tokio::spawn(async move {
            let mut replay = infercast::ingest::replay::ReplaySession::open(&clip, 25.0).expect("clip opens");
            let (mut sequence_number, mut sent, mut payloads) = (rand::random::<u16>(), 0, Vec::new());
            let offset = rand::random::<u32>();
            loop {
                let au = tokio::select! {
                    au = replay.next() => au.expect("clip replays"),
                    () = stop.cancelled() => return sent,
                };
                payloads.clear();
                infercast::sfu::packetize_h264(&au.data, infercast::sfu::DEFAULT_MAX_PAYLOAD, &mut payloads);
                let n = payloads.len();
                for (i, payload) in payloads.drain(..).enumerate() {
                    let header = rtc::rtp::header::Header {
                        version: 2,
                        marker: i + 1 == n,
                        payload_type: PAYLOAD_TYPE,
                        sequence_number,
                        timestamp: (au.pts_90k as u32).wrapping_add(offset),
                        ssrc,
                        ..Default::default()
                    };
                    sequence_number = sequence_number.wrapping_add(1);
                    let _ = track.write_rtp(rtc::rtp::Packet { header, payload }).await;
                }
                sent += 1;
            }
        })
    }

    pub async fn close(&self) {
        let _ = self.pc.close().await;
    }
}
