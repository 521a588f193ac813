//! `PATCH /api/cameras/{name}`'s body: the settings a running camera changes
//! without a restart ([`crate::pipeline::tuning`]), each optional.

use serde::{Deserialize, Deserializer, Serialize};

use crate::config::{CameraConfig, EncodePolicy};

/// Changes to a running camera; absent fields stay as they are.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CameraPatch {
    /// Classifications per second (`0` = every frame; else 0.01..=120). At once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classify_fps: Option<f32>,
    /// `on_demand` or `always`. At once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encode_annotated: Option<EncodePolicy>,
    /// Annotated bitrate, bits per second (50 000..=50 000 000): from the next
    /// encoded frame, without an IDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotated_bitrate_bps: Option<u32>,
    /// Annotated frame rate, frames per second (1..=120; `null`: the
    /// camera's): at the annotated track's next IDR.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<f32>)]
    pub annotated_fps: Option<Option<f32>>,
    /// Annotated size relative to the camera's picture, `(0, 1]`: at the
    /// annotated track's next IDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotated_scale: Option<f32>,
}

/// A field that is present (even as `null`) is `Some`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

impl CameraPatch {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == CameraPatch::default()
    }

    /// Writes the present fields into `config` (which the caller validates).
    pub fn apply(&self, config: &mut CameraConfig) {
        if let Some(v) = self.classify_fps {
            config.classify_fps = v;
        }
        if let Some(v) = self.encode_annotated {
            config.encode_annotated = v;
        }
        if let Some(v) = self.annotated_bitrate_bps {
            config.annotated_bitrate_bps = v;
        }
        if let Some(v) = self.annotated_fps {
            config.annotated_fps = v;
        }
        if let Some(v) = self.annotated_scale {
            config.annotated_scale = v;
        }
    }

    /// `later`'s present fields over these.
    pub fn merge(&mut self, later: &CameraPatch) {
        self.classify_fps = later.classify_fps.or(self.classify_fps);
        self.encode_annotated = later.encode_annotated.or(self.encode_annotated);
        self.annotated_bitrate_bps = later.annotated_bitrate_bps.or(self.annotated_bitrate_bps);
        self.annotated_fps = later.annotated_fps.or(self.annotated_fps);
        self.annotated_scale = later.annotated_scale.or(self.annotated_scale);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_null_and_values_are_told_apart() {
        let p: CameraPatch =
            serde_json::from_str(r#"{"annotated_bitrate_bps": 300000, "annotated_fps": null}"#).expect("valid patch");
        assert_eq!(p.annotated_bitrate_bps, Some(300_000));
        assert_eq!(p.annotated_fps, Some(None), "null: back to the camera's rate");
        assert_eq!(p.classify_fps, None);
        let mut config = CameraConfig::new("c", "rtsp://h/a");
        config.annotated_fps = Some(10.0);
        p.apply(&mut config);
        assert_eq!((config.annotated_bitrate_bps, config.annotated_fps), (300_000, None));
        assert_eq!(config.classify_fps, 5.0, "absent: unchanged");
        let mut merged: CameraPatch =
            serde_json::from_str(r#"{"annotated_fps": 12, "classify_fps": 2}"#).expect("valid");
        merged.merge(&p);
        assert_eq!((merged.annotated_fps, merged.classify_fps), (Some(None), Some(2.0)));
        let back: CameraPatch =
            serde_json::from_str(&serde_json::to_string(&merged).expect("encodes")).expect("decodes");
        assert_eq!(back, merged, "a null annotated_fps survives the state file");
        assert!(serde_json::from_str::<CameraPatch>(r#"{"url": "rtsp://x/y"}"#).is_err(), "only tunable fields");
        assert!(CameraPatch::default().is_empty());
    }
}
