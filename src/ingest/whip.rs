//! WHIP cameras (`url = "whip:"`): a camera whose access units come from a
//! WebRTC publisher (`POST /whip/{camera}`) instead of an RTSP server.
//! [`WhipFeeds`] hands each publisher's RTP packets ([`crate::sfu::PublisherLink`])
//! to the camera's supervisor, which reads them as a [`WhipSession`] like
//! any other source: the pipeline cannot tell.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::rtp_h264::Depacketizer;
use super::{IngestError, StreamInfo};
use crate::hub::CameraTracks;
use crate::media::AccessUnit;
use crate::sfu::PublisherLink;

/// RTP packets buffered between a publisher's connection and its camera
/// (≈ 1 s of a 2 Mbit/s stream).
const PACKET_QUEUE: usize = 1024;
/// Longest time without a keyframe before the publisher is asked for one
/// (browsers send an IDR only when asked): new raw viewers start within it.
pub const KEYFRAME_INTERVAL: Duration = Duration::from_secs(2);

/// A second publisher for a camera that has one.
#[derive(Debug, thiserror::Error)]
#[error("camera {0:?} has a WHIP publisher already (DELETE its session first)")]
pub struct Busy(pub String);

struct Feed {
    packets: mpsc::Receiver<rtc::rtp::Packet>,
    keyframe_wanted: Arc<Notify>,
    ended: CancellationToken,
}

#[derive(Default)]
struct Slot {
    /// The publisher's session id and end token, while it publishes.
    publisher: Option<(String, CancellationToken)>,
    /// A publisher's feed not yet taken by the camera's supervisor.
    waiting: Option<Feed>,
}

/// Every WHIP camera's publisher, by camera name.
#[derive(Default)]
pub struct WhipFeeds {
    slots: Mutex<HashMap<String, Slot>>,
    /// Woken for every new feed (each waiting supervisor checks its own slot).
    arrived: Notify,
}

impl WhipFeeds {
    /// A new publisher for `camera`: its session id (the last segment of its
    /// WHIP resource URL) and the link its peer connection feeds. Errors
    /// while another publisher's session is live.
    pub fn publish(&self, camera: &str) -> Result<(String, PublisherLink), Busy> {
        let mut slots = self.slots.lock().expect("whip lock is never poisoned");
        let slot = slots.entry(camera.to_owned()).or_default();
        if slot.publisher.as_ref().is_some_and(|(_, ended)| !ended.is_cancelled()) {
            return Err(Busy(camera.to_owned()));
        }
        let id = format!("{:032x}", rand::random::<u128>());
        let (tx, rx) = mpsc::channel(PACKET_QUEUE);
        let (keyframe_wanted, ended) = (Arc::new(Notify::new()), CancellationToken::new());
        slot.publisher = Some((id.clone(), ended.clone()));
        slot.waiting = Some(Feed { packets: rx, keyframe_wanted: keyframe_wanted.clone(), ended: ended.clone() });
        drop(slots);
        self.arrived.notify_waiters();
        Ok((id, PublisherLink { packets: tx, keyframe_wanted, ended }))
    }

    /// Ends `camera`'s publisher session `id` (`DELETE`); false if it is not
    /// the live one.
    pub fn end(&self, camera: &str, id: &str) -> bool {
        let mut slots = self.slots.lock().expect("whip lock is never poisoned");
        let Some(slot) = slots.get_mut(camera) else { return false };
        match &slot.publisher {
            Some((live, ended)) if live == id && !ended.is_cancelled() => {
                ended.cancel();
                slot.publisher = None;
                slot.waiting = None;
                true
            }
            _ => false,
        }
    }

    /// Whether `camera` has a live publisher.
    pub fn is_publishing(&self, camera: &str) -> bool {
        let slots = self.slots.lock().expect("whip lock is never poisoned");
        slots.get(camera).and_then(|s| s.publisher.as_ref()).is_some_and(|(_, ended)| !ended.is_cancelled())
    }

    /// Forgets `camera` (removed): its publisher's session ends.
    pub fn forget(&self, camera: &str) {
        let removed = self.slots.lock().expect("whip lock is never poisoned").remove(camera);
        if let Some((_, ended)) = removed.and_then(|s| s.publisher) {
            ended.cancel();
        }
    }

    /// Waits for `camera`'s next publisher (at most `within`, or for ever)
    /// and opens it as a source; `frame_timeout` ends a session whose
    /// publisher sends nothing for that long.
    pub async fn wait(
        &self,
        camera: &str,
        tracks: Arc<CameraTracks>,
        within: Option<Duration>,
        frame_timeout: Duration,
        max_access_unit_bytes: usize,
    ) -> Result<WhipSession, IngestError> {
        let deadline = within.map(|w| tokio::time::Instant::now() + w);
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let feed =
                self.slots.lock().expect("whip lock is never poisoned").get_mut(camera).and_then(|s| s.waiting.take());
            if let Some(feed) = feed.filter(|f| !f.ended.is_cancelled()) {
                return Ok(WhipSession::new(feed, tracks, frame_timeout, max_access_unit_bytes));
            }
            match deadline {
                Some(d) => {
                    if tokio::time::timeout_at(d, arrived).await.is_err() {
                        return Err(IngestError::NoPublisher { after: within.unwrap_or_default() });
                    }
                }
                None => arrived.await,
            }
        }
    }
}

/// A connected WHIP publisher as a source of access units. Dropping it ends
/// the publisher's session.
pub struct WhipSession {
    feed: Feed,
    /// Its raw track's keyframe requests (a viewer with no cached GOP, the
    /// decoder after an error, analysis switching to every frame) become PLIs.
    tracks: Arc<CameraTracks>,
    depacketizer: Depacketizer,
    info: StreamInfo,
    frame_timeout: Duration,
    last_keyframe: Option<Instant>,
    asked_at: Option<Instant>,
    /// Wall clock of pts 0, from the first unit's arrival.
    epoch: Option<(i64, SystemTime)>,
}

impl Drop for WhipSession {
    fn drop(&mut self) {
        self.feed.ended.cancel();
    }
}

impl WhipSession {
    fn new(
        feed: Feed,
        tracks: Arc<CameraTracks>,
        frame_timeout: Duration,
        max_access_unit_bytes: usize,
    ) -> WhipSession {
        feed.keyframe_wanted.notify_one(); // start at once, not at the publisher's next IDR
        WhipSession {
            feed,
            tracks,
            depacketizer: Depacketizer::new(max_access_unit_bytes),
            info: StreamInfo { codec: "H.264".into(), ..StreamInfo::default() },
            frame_timeout,
            last_keyframe: None,
            asked_at: Some(Instant::now()),
            epoch: None,
        }
    }

    pub fn info(&self) -> &StreamInfo {
        &self.info
    }

    /// The next access unit. Errors when the publisher leaves (or its
    /// connection ends) and when it sends nothing for the frame timeout.
    pub async fn next(&mut self) -> Result<AccessUnit, IngestError> {
        loop {
            if let Some(unit) = self.depacketizer.pop() {
                let now = Instant::now();
                if unit.keyframe {
                    self.last_keyframe = Some(now);
                }
                self.ask_for_keyframe_if_due(now);
                let (pts0, wall0) = *self.epoch.get_or_insert((unit.pts_90k, SystemTime::now()));
                let since = Duration::from_micros(u64::try_from((unit.pts_90k - pts0).max(0) * 100 / 9).unwrap_or(0));
                return Ok(AccessUnit::new(Bytes::from(unit.data), unit.pts_90k, unit.keyframe, now, wall0 + since));
            }
            let packet = tokio::select! {
                p = tokio::time::timeout(self.frame_timeout, self.feed.packets.recv()) => match p {
                    Ok(Some(p)) => p,
                    Ok(None) => return Err(IngestError::PublisherLeft),
                    Err(_) => return Err(IngestError::Timeout { step: "waiting for the WHIP publisher's video", after: self.frame_timeout }),
                },
                () = self.feed.ended.cancelled() => return Err(IngestError::PublisherLeft),
            };
            let h = &packet.header;
            self.depacketizer.push(h.sequence_number, h.timestamp, h.marker, &packet.payload);
            let now = Instant::now();
            if self.depacketizer.take_loss() | self.tracks.raw.take_keyframe_request() {
                self.ask(now);
            }
            self.ask_for_keyframe_if_due(now);
        }
    }

    fn ask_for_keyframe_if_due(&mut self, now: Instant) {
        let since_keyframe = self.last_keyframe.map_or(Duration::MAX, |k| now - k);
        if since_keyframe >= KEYFRAME_INTERVAL {
            self.ask(now);
        }
    }

    /// A PLI to the publisher, at most one per 500 ms.
    fn ask(&mut self, now: Instant) {
        if self.asked_at.is_none_or(|a| now - a >= Duration::from_millis(500)) {
            self.asked_at = Some(now);
            self.feed.keyframe_wanted.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(sequence_number: u16, timestamp: u32, payload: &[u8]) -> rtc::rtp::Packet {
        let header =
            rtc::rtp::header::Header { version: 2, marker: true, sequence_number, timestamp, ..Default::default() };
        rtc::rtp::Packet { header, payload: Bytes::copy_from_slice(payload) }
    }

    async fn asked(link: &PublisherLink) -> bool {
        tokio::time::timeout(Duration::from_millis(200), link.keyframe_wanted.notified()).await.is_ok()
    }

    #[tokio::test]
    async fn a_publisher_feeds_its_camera_and_is_asked_for_keyframes() {
        let feeds = WhipFeeds::default();
        let tracks = crate::hub::Hub::default().camera("cam");
        let none = feeds.wait("cam", tracks.clone(), Some(Duration::from_millis(50)), Duration::from_secs(5), 1 << 20);
        assert!(matches!(none.await.err(), Some(IngestError::NoPublisher { .. })));
        let (id, link) = feeds.publish("cam").expect("first publisher");
        assert!(feeds.publish("cam").is_err(), "one publisher per camera");
        let wait = feeds.wait("cam", tracks.clone(), Some(Duration::from_secs(1)), Duration::from_secs(5), 1 << 20);
        let mut session = wait.await.expect("the publisher's feed");
        assert!(asked(&link).await, "a PLI at the start");
        // STAP-A with SPS, PPS and an IDR slice, then a P slice.
        let idr = [0x78, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xce, 0, 2, 0x65, 0x88];
        link.packets.send(packet(7, 1000, &idr)).await.expect("queued");
        let key = session.next().await.expect("the IDR");
        assert!(key.keyframe && key.data.starts_with(&[0, 0, 0, 1, 0x67]), "{:?}", key.data);
        // The pipeline asks for a keyframe on the raw track (past the 500 ms between PLIs).
        tokio::time::sleep(Duration::from_millis(600)).await;
        tracks.raw.request_keyframe();
        link.packets.send(packet(8, 4600, &[0x41, 0x9a])).await.expect("queued");
        let p = session.next().await.expect("the P slice");
        assert_eq!((p.keyframe, p.pts_90k - key.pts_90k), (false, 3600));
        assert!(asked(&link).await, "the raw track's keyframe request became a PLI");
        assert!(feeds.end("cam", &id));
        assert!(matches!(session.next().await.err(), Some(IngestError::PublisherLeft)));
        assert!(!feeds.is_publishing("cam"));
        assert!(link.ended.is_cancelled());
        assert!(feeds.publish("cam").is_ok(), "a new publisher after the old one ended");
    }
}
