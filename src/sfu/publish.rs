//! WHIP publishers (RFC 9726): one webrtc 0.21 peer connection per publisher,
//! answering its offer (non-trickle, every candidate in the answer) and
//! receiving its H.264 video track. Each RTP packet goes to the ingest side
//! ([`crate::ingest::whip`]) through [`PublisherLink::packets`]; the ingest
//! side asks for keyframes through [`PublisherLink::keyframe_wanted`] (an
//! RTCP PLI to the publisher). Audio and data channels are refused in the
//! answer (no transceiver takes them).

use std::sync::Arc;
use std::time::Duration;

use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{PeerConnectionEventHandler, RTCIceGatheringState, RTCPeerConnectionState};

use rtc::peer_connection::sdp::RTCSessionDescription;

use super::{ChosenCodec, Sfu, SfuError, check_offer, gone, h264_engine, is_over, webrtc_err};

/// What ties a publisher's peer connection to the camera it feeds.
pub struct PublisherLink {
    /// Every RTP packet of the publisher's video track, in arrival order;
    /// dropped (a loss the depacketizer sees) while the channel is full.
    pub packets: mpsc::Sender<rtc::rtp::Packet>,
    /// Notified when the pipeline needs a keyframe: an RTCP PLI goes out.
    pub keyframe_wanted: Arc<Notify>,
    /// Cancelled when the publishing session ends, from either side (DELETE,
    /// the camera stopping, the publisher's connection failing or closing).
    pub ended: CancellationToken,
}

struct Events {
    gathered: watch::Sender<bool>,
    state: watch::Sender<RTCPeerConnectionState>,
    track: watch::Sender<Option<Arc<dyn TrackRemote>>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Events {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        let _ = self.gathered.send(state == RTCIceGatheringState::Complete);
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!("publisher peer connection: {state}");
        let _ = self.state.send(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        if track.kind().await == RtpCodecKind::Video {
            self.track.send_if_modified(|t| t.is_none() && t.replace(track).is_none());
        }
    }
}

impl Sfu {
    /// Answers a WHIP publisher's `offer_sdp` (H.264 video in
    /// packetization-mode 1, sendonly or sendrecv) with a new peer connection
    /// receiving its video into `link`; returns the SDP answer. Errors as
    /// [`Sfu::create_session`]'s: 400 for malformed SDP, 406 without H.264.
    /// The session runs in a task of its own until `link.ended` (which it
    /// cancels when the connection ends).
    pub async fn accept_publisher(
        self: &Arc<Self>,
        camera: &str,
        offer_sdp: &str,
        link: PublisherLink,
    ) -> Result<String, SfuError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (sfu, camera, offer_sdp) = (self.clone(), camera.to_owned(), offer_sdp.to_owned());
        tokio::spawn(async move {
            let ended = link.ended.clone();
            let answer = sfu.set_up_publisher(&camera, &offer_sdp, link).await;
            if tx.send(answer).is_err() {
                tracing::debug!(camera, "WHIP client gone before its answer; ending the session");
                ended.cancel();
            }
        });
        rx.await.map_err(|_| SfuError::WebRtc("the publisher set-up task ended without an answer".into()))?
    }

    /// Checks a publisher's offer before anything is set up: it must parse
    /// and send H.264 video in packetization-mode 1. Errors as
    /// [`Sfu::accept_publisher`]'s.
    pub fn check_publisher_offer(offer_sdp: &str) -> Result<(RTCSessionDescription, ChosenCodec), SfuError> {
        let (offer, chosen) = check_offer(offer_sdp, None)?;
        let sends_video = offer.unmarshal().is_ok_and(|p| {
            p.media_descriptions.iter().any(|m| {
                m.media_name.media == "video"
                    && !m.attributes.iter().any(|a| a.key == "recvonly" || a.key == "inactive")
            })
        });
        if !sends_video {
            return Err(SfuError::NotAcceptable(
                "the offer's video is recvonly or inactive: nothing to publish".into(),
            ));
        }
        Ok((offer, chosen))
    }

    async fn set_up_publisher(&self, camera: &str, offer_sdp: &str, link: PublisherLink) -> Result<String, SfuError> {
        let (offer, chosen) = Sfu::check_publisher_offer(offer_sdp)?;
        let (_, media_engine, registry) = h264_engine(&chosen)?;
        let port = self.ports.lease(&self.config.udp_ips).map_err(SfuError::WebRtc)?;
        let (gathered_tx, mut gathered_rx) = watch::channel(false);
        let (state_tx, state_rx) = watch::channel(RTCPeerConnectionState::New);
        let (track_tx, track_rx) = watch::channel(None);
        let handler = Arc::new(Events { gathered: gathered_tx, state: state_tx, track: track_tx });
        let pc = self.peer_connection(media_engine, registry, handler, &port).await?;
        let negotiate = async {
            pc.add_transceiver_from_kind(
                RtpCodecKind::Video,
                Some(RTCRtpTransceiverInit { direction: RTCRtpTransceiverDirection::Recvonly, ..Default::default() }),
            )
            .await
            .map_err(webrtc_err)?;
            self.answer(&pc, offer, &mut gathered_rx).await
        };
        let answer = match negotiate.await {
            Ok(a) => a,
            Err(e) => {
                let _ = pc.close().await;
                return Err(e);
            }
        };
        let (connect, grace) = (self.config.connect_timeout, self.config.disconnected_timeout);
        let camera = camera.to_owned();
        tokio::spawn(async move {
            let _port = port;
            receive(state_rx, track_rx, &link, connect, grace).await;
            link.ended.cancel();
            let _ = pc.close().await;
            tracing::info!(camera, "WHIP publisher session ended");
        });
        Ok(answer)
    }
}

/// Runs a publisher's session: waits (≤ `connect`) for the connection and its
/// video track, then forwards every RTP packet and sends a PLI for each
/// keyframe request, until the link ends or the connection does.
async fn receive(
    mut state: watch::Receiver<RTCPeerConnectionState>,
    mut track: watch::Receiver<Option<Arc<dyn TrackRemote>>>,
    link: &PublisherLink,
    connect: Duration,
    grace: Duration,
) {
    let started = async {
        let up = state.wait_for(|s| *s == RTCPeerConnectionState::Connected || is_over(s)).await;
        if !up.is_ok_and(|s| *s == RTCPeerConnectionState::Connected) {
            return None;
        }
        track.wait_for(Option::is_some).await.ok().and_then(|t| t.clone())
    };
    let track = tokio::select! {
        t = tokio::time::timeout(connect, started) => match t {
            Ok(Some(t)) => t,
            _ => {
                tracing::warn!("WHIP publisher did not connect and send video within {connect:?}");
                return;
            }
        },
        () = link.ended.cancelled() => return,
    };
    let media_ssrc = track.ssrcs().await.first().copied().unwrap_or(0);
    tracing::info!(media_ssrc, "WHIP publisher connected");
    let forward = async {
        while let Some(event) = track.poll().await {
            match event {
                TrackRemoteEvent::OnRtpPacket(p) => {
                    if let Err(mpsc::error::TrySendError::Closed(_)) = link.packets.try_send(p) {
                        return;
                    }
                }
                TrackRemoteEvent::OnEnded => return,
                _ => {}
            }
        }
    };
    let keyframes = async {
        loop {
            link.keyframe_wanted.notified().await;
            let pli = PictureLossIndication { sender_ssrc: 0, media_ssrc };
            if let Err(e) = track.write_rtcp(vec![Box::new(pli)]).await {
                tracing::debug!("PLI to the publisher: {e}");
            }
        }
    };
    tokio::select! {
        () = forward => tracing::info!("the publisher's video track ended"),
        () = keyframes => {}
        () = gone(state, grace) => tracing::info!("the publisher's connection ended"),
        () = link.ended.cancelled() => {}
        () = link.packets.closed() => {}
    }
}
