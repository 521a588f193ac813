//! Which access units a camera's media thread decodes: every frame, or only
//! keyframes while nobody needs more (the `analysis` policy). The choice is
//! made at each keyframe, so a switch always starts on a clean picture.

use serde::Serialize;

pub use crate::config::AnalysisPolicy;
use crate::media::AccessUnit;

/// What the media thread does in the current GOP (shown in `/api/cameras`).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AnalysisMode {
    /// Every access unit is decoded.
    #[default]
    EveryFrame,
    /// Only keyframes are decoded, each classified.
    Keyframes,
}

/// What to do with one access unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Not decoded (a delta frame in keyframe-only mode).
    Skip,
    /// Decoded as part of the stream.
    Decode,
    /// A keyframe decoded on its own: the decoder returns it (and anything
    /// held for reordering) at once and starts over at the next keyframe.
    DecodeAlone,
}

/// Keyframe intervals longer than this (90 kHz) are not a GOP but a gap.
const MAX_GOP_90K: i64 = 60 * 90_000;

/// Decides, keyframe by keyframe, between every-frame and keyframe-only decoding.
#[derive(Debug)]
pub struct AnalysisGate {
    policy: AnalysisPolicy,
    classify_fps: f32,
    mode: AnalysisMode,
    last_keyframe_pts: Option<i64>,
    /// Latest keyframe interval, 90 kHz ticks.
    gop_90k: Option<i64>,
}

impl AnalysisGate {
    pub fn new(policy: AnalysisPolicy, classify_fps: f32) -> AnalysisGate {
        AnalysisGate { policy, classify_fps, mode: AnalysisMode::EveryFrame, last_keyframe_pts: None, gop_90k: None }
    }

    /// A new session of the source: forget the stream's keyframe rate.
    pub fn reset(&mut self) {
        *self = AnalysisGate::new(self.policy, self.classify_fps);
    }

    /// A new classification rate, taken into account from the next keyframe.
    pub fn set_classify_fps(&mut self, classify_fps: f32) {
        self.classify_fps = classify_fps;
    }

    /// The mode in force for the current GOP.
    pub fn mode(&self) -> AnalysisMode {
        self.mode
    }

    /// Keyframes per second, from the last keyframe interval (pts).
    pub fn keyframe_rate_hz(&self) -> Option<f32> {
        self.gop_90k.map(|g| 90_000.0 / g as f32)
    }

    /// What to do with `au` (in decode order). `needs_every_frame`: someone needs
    /// every picture now (an annotated viewer, the encoder's linger); it takes
    /// effect at the next keyframe.
    pub fn admit(&mut self, au: &AccessUnit, needs_every_frame: bool) -> Admit {
        if !au.keyframe {
            return if self.mode == AnalysisMode::Keyframes { Admit::Skip } else { Admit::Decode };
        }
        if let Some(last) = self.last_keyframe_pts {
            let interval = au.pts_90k - last;
            if (1..=MAX_GOP_90K).contains(&interval) {
                self.gop_90k = Some(interval);
            }
        }
        self.last_keyframe_pts = Some(au.pts_90k);
        self.mode = self.choose(needs_every_frame);
        match self.mode {
            AnalysisMode::EveryFrame => Admit::Decode,
            AnalysisMode::Keyframes => Admit::DecodeAlone,
        }
    }

    fn choose(&self, needs_every_frame: bool) -> AnalysisMode {
        if needs_every_frame {
            return AnalysisMode::EveryFrame;
        }
        match self.policy {
            AnalysisPolicy::EveryFrame => AnalysisMode::EveryFrame,
            AnalysisPolicy::Keyframes => AnalysisMode::Keyframes,
            AnalysisPolicy::Auto => match self.keyframe_rate_hz() {
                // 1 % slack: a 25-frame GOP at 24.9 fps still counts as 1 keyframe/s.
                Some(rate) if self.classify_fps > 0.0 && self.classify_fps <= rate * 1.01 => AnalysisMode::Keyframes,
                _ => AnalysisMode::EveryFrame,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Instant, SystemTime};

    use bytes::Bytes;

    use super::*;

    fn au(i: i64, gop: i64) -> AccessUnit {
        AccessUnit::new(Bytes::new(), i * 3600, i % gop == 0, Instant::now(), SystemTime::now())
    }

    /// Admits 3 GOPs of 25 frames (1 keyframe/s at 25 fps); counts decodes.
    fn run(gate: &mut AnalysisGate, from: i64, needs: impl Fn(i64) -> bool) -> (usize, usize) {
        let (mut decoded, mut alone) = (0, 0);
        for i in from..from + 75 {
            match gate.admit(&au(i, 25), needs(i)) {
                Admit::Skip => {}
                Admit::Decode => decoded += 1,
                Admit::DecodeAlone => alone += 1,
            }
        }
        (decoded, alone)
    }

    #[test]
    fn auto_decodes_keyframes_only_when_the_classification_rate_allows() {
        let mut slow = AnalysisGate::new(AnalysisPolicy::Auto, 1.0);
        // First GOP: rate unknown → every frame; then keyframes only.
        assert_eq!(run(&mut slow, 0, |_| false), (25, 2));
        assert_eq!(slow.mode(), AnalysisMode::Keyframes);
        assert_eq!(slow.keyframe_rate_hz(), Some(1.0));
        let mut fast = AnalysisGate::new(AnalysisPolicy::Auto, 5.0);
        assert_eq!(run(&mut fast, 0, |_| false), (75, 0));
        let mut every = AnalysisGate::new(AnalysisPolicy::Auto, 0.0);
        assert_eq!(run(&mut every, 0, |_| false).0, 75, "classify_fps = 0 means every frame");
    }

    #[test]
    fn a_viewer_switches_to_every_frame_at_the_next_keyframe_and_back() {
        let mut g = AnalysisGate::new(AnalysisPolicy::Keyframes, 5.0);
        assert_eq!(run(&mut g, 0, |_| false), (0, 3));
        // A viewer arrives at frame 80 (mid-GOP): frames 80..100 are skipped, every frame from 100.
        let (decoded, alone) = run(&mut g, 75, |i| (80..130).contains(&i));
        assert_eq!((decoded, alone), (50, 1), "GOPs at 75 (alone), 100 and 125 (every frame)");
        assert_eq!(g.mode(), AnalysisMode::EveryFrame);
        let (_, alone) = run(&mut g, 150, |_| false);
        assert_eq!(alone, 3);
        assert_eq!(g.mode(), AnalysisMode::Keyframes);
    }

    #[test]
    fn every_frame_policy_never_skips() {
        let mut g = AnalysisGate::new(AnalysisPolicy::EveryFrame, 0.5);
        assert_eq!(run(&mut g, 0, |_| false), (75, 0));
    }
}
