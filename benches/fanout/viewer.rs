//! The headless WHEP viewers: a light webrtc 0.21 receiver that only counts
//! packets (unique sequence numbers, marker bits), and ramping them up and down.

use super::*;

/// Recent extended sequence numbers, to count each packet once (NACK resends).
pub const RING: usize = 4096;

/// What one viewer received so far (unique packets only, except `duplicates`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub unique: u64,
    pub duplicates: u64,
    /// Unique packets with the marker bit: one per access unit.
    pub frames: u64,
    /// Highest extended sequence number (0 before the first packet).
    pub highest: i64,
}

pub struct Receiver {
    pub counts: Counts,
    pub ring: Vec<i64>,
}

impl Receiver {
    pub fn new() -> Receiver {
        Receiver { counts: Counts::default(), ring: vec![-1; RING] }
    }

    pub fn on_packet(&mut self, seq: u16, marker: bool) {
        let c = &mut self.counts;
        let ext = if c.unique == 0 {
            (1i64 << 32) + i64::from(seq)
        } else {
            c.highest + i64::from(seq.wrapping_sub(c.highest as u16) as i16)
        };
        let slot = ext.rem_euclid(RING as i64) as usize;
        if self.ring[slot] == ext {
            c.duplicates += 1;
            return;
        }
        self.ring[slot] = ext;
        c.unique += 1;
        c.frames += u64::from(marker);
        c.highest = c.highest.max(ext);
    }
}

pub struct Events {
    pub gathered: watch::Sender<bool>,
    pub state: watch::Sender<RTCPeerConnectionState>,
    pub receiver: Arc<Mutex<Receiver>>,
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
        let receiver = self.receiver.clone();
        tokio::spawn(async move {
            while let Some(evt) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(p) = evt {
                    receiver.lock().unwrap().on_packet(p.header.sequence_number, p.header.marker);
                }
            }
        });
    }
}

/// A light WHEP viewer: counts packets instead of keeping them (unlike
/// `tests/common/whep_client.rs`), so hundreds can run for minutes.
pub struct Viewer {
    pub pc: Arc<dyn PeerConnection>,
    pub state: watch::Receiver<RTCPeerConnectionState>,
    pub receiver: Arc<Mutex<Receiver>>,
    /// The WHEP session resource (for DELETE).
    pub location: String,
}

pub fn h264(pt: u8, profile_level_id: &str) -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_H264.to_owned(),
            clock_rate: 90000,
            channels: 0,
            sdp_fmtp_line: format!(
                "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={profile_level_id}"
            ),
            rtcp_feedback: vec![],
        },
        payload_type: pt,
    }
}

impl Viewer {
    /// Offers recvonly H.264 (like a browser), POSTs to `base` + `path`, applies the answer.
    pub async fn connect(base: String, path: String) -> Result<Viewer, String> {
        let mut media_engine = MediaEngine::default();
        for (pt, plid) in [(102, "42001f"), (106, "42e01f"), (116, "4d001f"), (112, "64001f")] {
            media_engine.register_codec(h264(pt, plid), RtpCodecKind::Video).map_err(|e| e.to_string())?;
        }
        let registry = register_default_interceptors(Registry::new(), &mut media_engine).map_err(|e| e.to_string())?;
        let settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
            .with_network_types(vec![rtc::ice::network_type::NetworkType::Udp4])
            .with_include_loopback_candidate(true)
            .build();
        let (gathered, mut gathered_rx) = watch::channel(false);
        let (state, state_rx) = watch::channel(RTCPeerConnectionState::New);
        let receiver = Arc::new(Mutex::new(Receiver::new()));
        let events = Arc::new(Events { gathered, state, receiver: receiver.clone() });
        let pc = PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(media_engine)
            .with_setting_engine(settings)
            .with_interceptor_registry(registry)
            .with_handler(events)
            .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
            .build()
            .await
            .map_err(|e| e.to_string())?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let init = RTCRtpTransceiverInit { direction: RTCRtpTransceiverDirection::Recvonly, ..Default::default() };
        pc.add_transceiver_from_kind(RtpCodecKind::Video, Some(init)).await.map_err(|e| e.to_string())?;
        let offer = pc.create_offer(None).await.map_err(|e| e.to_string())?;
        pc.set_local_description(offer).await.map_err(|e| e.to_string())?;
        let _ = tokio::time::timeout(Duration::from_secs(5), gathered_rx.wait_for(|g| *g)).await;
        let offer_sdp = pc.local_description().await.ok_or("no local description")?.sdp;
        let reply = tokio::task::spawn_blocking(move || whep_client::post(&base, &path, "application/sdp", &offer_sdp))
            .await
            .map_err(|e| e.to_string())?;
        if reply.status != 201 {
            let _ = pc.close().await;
            return Err(format!("POST: {} {}", reply.status, reply.body));
        }
        let answer = RTCSessionDescription::answer(reply.body).map_err(|e| e.to_string())?;
        pc.set_remote_description(answer).await.map_err(|e| e.to_string())?;
        Ok(Viewer { pc, state: state_rx, receiver, location: reply.location.unwrap_or_default() })
    }

    pub async fn connected(&self, within: Duration) -> bool {
        let mut state = self.state.clone();
        let done = |s: &RTCPeerConnectionState| {
            matches!(
                s,
                RTCPeerConnectionState::Connected | RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
            )
        };
        matches!(tokio::time::timeout(within, state.wait_for(done)).await,
            Ok(Ok(s)) if *s == RTCPeerConnectionState::Connected)
    }

    pub fn counts(&self) -> Counts {
        self.receiver.lock().unwrap().counts
    }
}

/// Adds viewers of `track` until there are `n` (`CONNECT_BATCH` at a time); returns failures.
pub async fn ramp(viewers: &mut Vec<Viewer>, n: usize, base: &str, track: &str) -> Vec<String> {
    let mut failures = Vec::new();
    let mut attempts = 0;
    while viewers.len() < n && attempts < n + CONNECT_BATCH {
        let batch = CONNECT_BATCH.min(n - viewers.len());
        attempts += batch;
        let path = format!("/whep/{CAMERA}/{track}");
        let joined =
            futures::future::join_all((0..batch).map(|_| Viewer::connect(base.to_owned(), path.clone()))).await;
        for v in joined {
            match v {
                Ok(v) if v.connected(Duration::from_secs(20)).await => viewers.push(v),
                Ok(v) => {
                    failures.push("did not connect within 20 s".to_owned());
                    close(vec![v], base).await;
                }
                Err(e) => failures.push(e),
            }
        }
    }
    failures
}

/// Ends the sessions (WHEP DELETE, `CONNECT_BATCH` at a time) and closes the peer connections.
pub async fn close(viewers: Vec<Viewer>, base: &str) {
    for chunk in viewers.chunks(CONNECT_BATCH) {
        let deletes = chunk.iter().map(|v| {
            let (base, location) = (base.to_owned(), v.location.clone());
            tokio::task::spawn_blocking(move || whep_client::delete(&base, &location))
        });
        futures::future::join_all(deletes).await;
        futures::future::join_all(chunk.iter().map(|v| v.pc.close())).await;
    }
}

/// Waits (bounded) until every viewer has received at least one frame.
pub async fn all_receiving(viewers: &[Viewer], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if viewers.iter().all(|v| v.counts().frames > 0) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
