//! Honest state: whether a streaming camera's pictures really come out. A
//! camera whose decoded frame rate stays far below what it was asked to decode,
//! or whose access units are mostly corrupt or dropped, is `degraded`, with
//! the figures as the reason.

use std::time::{Duration, Instant};

/// Length of one judgement window.
pub const WINDOW: Duration = Duration::from_secs(2);
/// Fewer pictures than this share of the access units meant to be decoded is degraded.
const MIN_DECODED_SHARE: f32 = 0.8;
/// Windows with fewer access units than this are not judged (a stalled or starting camera).
const MIN_ACCESS_UNITS: u32 = 10;

/// Counts of one window, then a verdict.
#[derive(Debug)]
pub struct Health {
    since: Instant,
    /// Access units handed to the decoder.
    pub wanted: u32,
    /// Pictures out of the decoder.
    pub decoded: u32,
    /// Access units skipped while waiting for a keyframe.
    pub waiting_for_keyframe: u32,
    /// Access units or pictures that failed to decode.
    pub corrupt: u32,
    /// Access units dropped before decoding (queue full).
    pub dropped: u32,
}

impl Health {
    pub fn new(now: Instant) -> Health {
        Health { since: now, wanted: 0, decoded: 0, waiting_for_keyframe: 0, corrupt: 0, dropped: 0 }
    }

    /// At the end of a window: `Some(None)` healthy, `Some(Some(reason))`
    /// degraded, `None` while the window runs or had too little to judge.
    /// Starts the next window.
    pub fn verdict(&mut self, now: Instant) -> Option<Option<String>> {
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed < WINDOW {
            return None;
        }
        let window = std::mem::replace(self, Health::new(now));
        let offered = window.wanted + window.dropped;
        if offered < MIN_ACCESS_UNITS {
            return None;
        }
        let decoded_share = window.decoded as f32 / offered as f32;
        if decoded_share >= MIN_DECODED_SHARE {
            return Some(None);
        }
        let s = elapsed.as_secs_f32();
        Some(Some(format!(
            "decoding {:.1} of {:.1} frames/s ({} waiting for a keyframe, {} corrupt, {} dropped with the queue full in {s:.1} s)",
            window.decoded as f32 / s,
            offered as f32 / s,
            window.waiting_for_keyframe,
            window.corrupt,
            window.dropped,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judges_each_window_by_the_share_of_pictures_out() {
        let t0 = Instant::now();
        let mut h = Health::new(t0);
        (h.wanted, h.decoded) = (50, 50);
        assert_eq!(h.verdict(t0 + Duration::from_secs(1)), None, "window still running");
        assert_eq!(h.verdict(t0 + WINDOW), Some(None));
        (h.wanted, h.decoded, h.waiting_for_keyframe, h.corrupt) = (50, 8, 40, 2);
        let reason = h.verdict(t0 + 2 * WINDOW).expect("judged").expect("degraded");
        assert!(reason.starts_with("decoding 4.0 of 25.0 frames/s (40 waiting for a keyframe, 2 corrupt"), "{reason}");
        h.wanted = 3;
        assert_eq!(h.verdict(t0 + 3 * WINDOW), None, "too little to judge");
        (h.wanted, h.dropped, h.decoded) = (25, 25, 25);
        assert!(h.verdict(t0 + 4 * WINDOW).expect("judged").is_some(), "half dropped before decoding");
    }
}
