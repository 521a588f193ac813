//! What of a running camera changes without a restart (`PATCH
//! /api/cameras/{name}`, a reload that changes only these): the classification
//! rate and the annotated track's policy, bitrate, frame rate and size. The
//! camera's media thread reads them from a `watch` between access units.

use crate::config::{CameraConfig, EncodePolicy};

/// The run-time tunable part of a [`CameraConfig`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CameraTuning {
    /// Classifications per second (`0` = every frame).
    pub classify_fps: f32,
    pub encode_annotated: EncodePolicy,
    /// Applied from the next encoded frame on, without an IDR.
    pub annotated_bitrate_bps: u32,
    /// Applied at the annotated track's next IDR (`None`: the camera's rate).
    pub annotated_fps: Option<f32>,
    /// Applied at the annotated track's next IDR.
    pub annotated_scale: f32,
}

impl CameraTuning {
    /// The tunable values of `config`.
    pub fn of(config: &CameraConfig) -> CameraTuning {
        CameraTuning {
            classify_fps: config.classify_fps,
            encode_annotated: config.encode_annotated,
            annotated_bitrate_bps: config.annotated_bitrate_bps,
            annotated_fps: config.annotated_fps,
            annotated_scale: config.annotated_scale,
        }
    }

    /// Whether `a` and `b` differ only in what a running camera can change.
    pub fn only_tuning_differs(a: &CameraConfig, b: &CameraConfig) -> bool {
        let mut a = a.clone();
        CameraTuning::of(b).apply_to(&mut a);
        a == *b
    }

    /// Writes these values into `config`.
    pub fn apply_to(&self, config: &mut CameraConfig) {
        config.classify_fps = self.classify_fps;
        config.encode_annotated = self.encode_annotated;
        config.annotated_bitrate_bps = self.annotated_bitrate_bps;
        config.annotated_fps = self.annotated_fps;
        config.annotated_scale = self.annotated_scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_tunable_fields_count_as_tuning() {
        let a = CameraConfig::new("c", "rtsp://h/a");
        let mut b = a.clone();
        b.annotated_bitrate_bps = 300_000;
        b.annotated_fps = Some(10.0);
        b.encode_annotated = EncodePolicy::Always;
        assert!(CameraTuning::only_tuning_differs(&a, &b));
        let mut applied = a.clone();
        CameraTuning::of(&b).apply_to(&mut applied);
        assert_eq!(applied, b);
        b.url = "rtsp://h/b".into();
        assert!(!CameraTuning::only_tuning_differs(&a, &b), "a new URL needs a restart");
    }
}
