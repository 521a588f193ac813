//! One outgoing RTP stream's sequence numbers and timestamps (90 kHz): pts
//! plus a random per-session offset, monotonic across source restarts and
//! resent GOPs, B-frames keeping their presentation time; and the RTP
//! timestamp a label's frame (by its pts) was sent with.

/// Sequence numbers and timestamps of one outgoing RTP stream.
pub(super) struct RtpState {
    pub ssrc: u32,
    pub payload_type: u8,
    sequence_number: u16,
    /// RTP timestamp = pts + offset (mod 2³²), kept monotonic across source jumps.
    offset: Option<i64>,
    last_pts: i64,
    last_timestamp: i64,
    /// Next timestamp restarts right after the last one (resent GOP).
    pub reanchor: bool,
}

/// How far (90 kHz) a B-frame's pts may lie before the previous access unit's
/// in decode order: 1 s, far more than any reorder depth cameras use.
const MAX_REORDER_90K: i64 = 90_000;

/// How far (90 kHz) a label's frame may lie from the last access unit sent
/// and still be mapped to this stream's timeline: 5 s, the largest jump
/// [`RtpState::timestamp`] takes for the same timeline.
pub const LABEL_WINDOW_90K: i64 = 5 * 90_000;

impl RtpState {
    pub fn new(ssrc: u32, payload_type: u8) -> RtpState {
        RtpState {
            ssrc,
            payload_type,
            sequence_number: rand::random(),
            offset: None,
            last_pts: 0,
            last_timestamp: 0,
            reanchor: false,
        }
    }

    /// The RTP timestamp of an access unit with `pts` (decode order).
    pub fn timestamp(&mut self, pts: i64, keyframe: bool) -> u32 {
        let offset = match self.offset {
            None => i64::from(rand::random::<u32>()) - pts,
            // Source restarted, jumped or a GOP is resent: continue one frame on.
            // A small step back on a delta frame is a B-frame (decode order ≠
            // presentation order): its timestamp must stay its presentation time.
            // A keyframe is never shown before the frames sent ahead of it.
            Some(_)
                if self.reanchor
                    || (keyframe && pts < self.last_pts)
                    || pts < self.last_pts - MAX_REORDER_90K
                    || pts - self.last_pts > LABEL_WINDOW_90K =>
            {
                self.last_timestamp + 3000 - pts
            }
            Some(o) => o,
        };
        self.offset = Some(offset);
        self.reanchor = false;
        self.last_pts = pts;
        let timestamp = pts + offset;
        self.last_timestamp = self.last_timestamp.max(timestamp);
        timestamp as u32
    }

    /// The RTP timestamp this stream gave (or gives) the frame with `pts`:
    /// pts + the current offset, mod 2³² (so across the wrap). `None` before
    /// the first access unit, or for a pts more than [`LABEL_WINDOW_90K`]
    /// from the last one sent: a label of a frame from before a source
    /// restart (another pts timeline) has no frame on this stream.
    pub fn timestamp_of(&self, pts: i64) -> Option<u32> {
        let offset = self.offset?;
        ((pts - self.last_pts).abs() <= LABEL_WINDOW_90K).then(|| (pts + offset) as u32)
    }

    pub fn packet(&mut self, timestamp: u32, marker: bool, payload: bytes::Bytes) -> rtc::rtp::Packet {
        rtc::rtp::Packet { header: self.header(timestamp, marker), payload }
    }

    /// The next packet's RTP header (no extensions, no CSRC): takes a sequence number.
    pub fn header(&mut self, timestamp: u32, marker: bool) -> rtc::rtp::header::Header {
        let header = rtc::rtp::header::Header {
            version: 2,
            marker,
            payload_type: self.payload_type,
            sequence_number: self.sequence_number,
            timestamp,
            ssrc: self.ssrc,
            ..Default::default()
        };
        self.sequence_number = self.sequence_number.wrapping_add(1);
        header
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_follow_pts_and_stay_monotonic_across_jumps() {
        let mut r = RtpState::new(1, 96);
        let t0 = r.timestamp(1000, true);
        assert_eq!(r.timestamp(4600, false).wrapping_sub(t0), 3600);
        // Source restarted at pts 0 (with a keyframe): continues one frame on.
        assert_eq!(r.timestamp(0, true).wrapping_sub(t0), 3600 + 3000);
        r.reanchor = true;
        assert_eq!(r.timestamp(0, true).wrapping_sub(t0), 3600 + 6000);
        assert_eq!(r.timestamp(3600, false).wrapping_sub(t0), 3600 + 9600);
        // A jump forward by more than 5 s continues one frame on too.
        assert_eq!(r.timestamp(3600 + 10 * 90_000, false).wrapping_sub(t0), 3600 + 12600);
    }

    #[test]
    fn b_frames_keep_their_presentation_time() {
        let mut r = RtpState::new(1, 96);
        // Decode order I0 P3 B1 B2 P6 (pts in frames of 3600 ticks).
        let ts: Vec<u32> = [0, 3, 1, 2, 6].iter().map(|&f| r.timestamp(f * 3600, f == 0)).collect();
        let rel: Vec<u32> = ts.iter().map(|t| t.wrapping_sub(ts[0])).collect();
        assert_eq!(rel, [0, 3 * 3600, 3600, 2 * 3600, 6 * 3600]);
        // A real restart still continues one frame after the latest timestamp.
        assert_eq!(r.timestamp(0, true).wrapping_sub(ts[0]), 6 * 3600 + 3000);
    }

    #[test]
    fn label_pts_maps_to_the_frame_timestamp_across_the_wrap_and_a_restart() {
        let mut r = RtpState::new(1, 96);
        assert_eq!(r.timestamp_of(0), None, "nothing sent yet");
        // Force an offset that wraps: the first frame goes out at u32::MAX - 1799.
        r.offset = Some(i64::from(u32::MAX) - 1799 - 90_000);
        let t0 = r.timestamp(90_000, true);
        assert_eq!(t0, u32::MAX - 1799);
        let t1 = r.timestamp(93_600, false);
        assert_eq!(t1, 1800, "wrapped");
        // Labels of both frames, computed later, get the frames' timestamps.
        assert_eq!(r.timestamp_of(90_000), Some(t0));
        assert_eq!(r.timestamp_of(93_600), Some(t1));
        // The camera reconnects: pts start again at 0, the stream continues
        // one frame on, and a new label maps onto the new timeline.
        let t2 = r.timestamp(0, true);
        assert_eq!(t2, t1.wrapping_add(3000));
        assert_eq!(r.timestamp_of(0), Some(t2));
        assert_eq!(r.timestamp_of(3600), Some(t2.wrapping_add(3600)));
        // A label of a frame from before the restart has no frame here.
        assert_eq!(r.timestamp_of(93_600 + LABEL_WINDOW_90K), None);
    }
}
