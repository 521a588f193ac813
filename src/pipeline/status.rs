//! What the API shows of a camera: its state, last error and stream facts.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::analysis::AnalysisMode;
use super::tuning::CameraTuning;
use crate::codec::DecoderKind;
use crate::config::EncodePolicy;

/// Supervisor state of one camera.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CameraState {
    /// Connecting for the first time or after a reset.
    Connecting,
    /// Access units are arriving and decoding keeps up.
    Streaming,
    /// Access units are arriving but far fewer pictures come out than asked for
    /// (the decoder cannot keep up, or most units are corrupt or dropped);
    /// `last_error` says by how much.
    Degraded,
    /// The last session failed; waiting to retry.
    Reconnecting,
    /// The last error will not go away by itself (bad URL, 401, 404, unsupported
    /// codec); retried at the longest backoff.
    Failed,
    /// Shut down.
    Stopped,
    /// Cluster mode: another node pulls this camera (`node` in `/api/cameras`
    /// says which); this node does not connect to it.
    Standby,
}

impl CameraState {
    /// Access units are arriving (`streaming` or `degraded`).
    pub fn is_receiving(self) -> bool {
        matches!(self, CameraState::Streaming | CameraState::Degraded)
    }
}

/// A camera's public status. Holds no credentials: `url` is redacted.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct CameraStatus {
    pub name: String,
    pub url: String,
    pub state: CameraState,
    pub state_since: DateTime<Utc>,
    pub last_error: Option<String>,
    /// `H.264`, or what the camera offered.
    pub codec: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Decoded frames per second over the last second.
    pub fps: Option<f32>,
    /// Classifications per second the camera is configured for (`0` = every frame).
    pub classify_fps: f32,
    /// `on_demand` or `always` (`PATCH /api/cameras/{name}` changes it and the three below).
    pub encode_annotated: EncodePolicy,
    /// Annotated track bitrate, bits per second.
    pub annotated_bitrate_bps: u32,
    /// Annotated track frame rate, frames per second (`null`: the camera's).
    pub annotated_fps: Option<f32>,
    /// Annotated track size relative to the camera's picture, `(0, 1]`.
    pub annotated_scale: f32,
    /// Classifications per second currently achieved (lower when the machine is behind).
    pub classify_fps_effective: f32,
    pub reconnects: u64,
    /// The stream has B-frames (access units arrive out of presentation order).
    /// Its raw track is forwarded as is; browsers may not play it.
    pub bframes: bool,
    /// What the media thread decodes now: `every_frame` or `keyframes`.
    pub analysis: AnalysisMode,
    /// Keyframes per second of the stream (from its keyframe interval).
    pub keyframe_rate_hz: Option<f32>,
    /// Which library decodes the stream: `ffmpeg` or `openh264`.
    pub decoder: DecoderKind,
    /// Why the annotated track cannot be watched (the picture is over
    /// `annotated_max_pixels` after `annotated_scale`, and what to change);
    /// `null` when it can. WHEP requests for it get 409.
    pub annotated_unavailable: Option<String>,
    /// `[nats]`: state changes are also published on `events.<camera>`.
    #[serde(skip)]
    pub(crate) bus: Option<crate::bus::Bus>,
}

impl CameraStatus {
    pub fn new(name: &str, url: &str, tuning: &CameraTuning, decoder: DecoderKind) -> CameraStatus {
        CameraStatus {
            name: name.into(),
            url: url.into(),
            state: CameraState::Connecting,
            state_since: Utc::now(),
            last_error: None,
            codec: None,
            width: None,
            height: None,
            fps: None,
            classify_fps: tuning.classify_fps,
            encode_annotated: tuning.encode_annotated,
            annotated_bitrate_bps: tuning.annotated_bitrate_bps,
            annotated_fps: tuning.annotated_fps,
            annotated_scale: tuning.annotated_scale,
            classify_fps_effective: 0.0,
            reconnects: 0,
            bframes: false,
            analysis: AnalysisMode::EveryFrame,
            keyframe_rate_hz: None,
            decoder,
            annotated_unavailable: None,
            bus: None,
        }
    }

    /// Shows the tunable settings in force.
    pub fn set_tuning(&mut self, tuning: &CameraTuning) {
        self.classify_fps = tuning.classify_fps;
        self.encode_annotated = tuning.encode_annotated;
        self.annotated_bitrate_bps = tuning.annotated_bitrate_bps;
        self.annotated_fps = tuning.annotated_fps;
        self.annotated_scale = tuning.annotated_scale;
    }

    /// Publishes every later state change on `bus`, starting with the current state.
    pub(crate) fn attach_bus(&mut self, bus: crate::bus::Bus) {
        self.bus = Some(bus);
        self.publish_state();
    }

    fn publish_state(&self) {
        // Standby is this node's view only: the owner publishes the camera's state.
        if self.state == CameraState::Standby {
            return;
        }
        if let Some(bus) = &self.bus {
            bus.camera_event(&crate::bus::CameraEvent {
                camera: &self.name,
                state: self.state,
                reason: match self.state {
                    CameraState::Streaming | CameraState::Stopped | CameraState::Standby => None,
                    _ => self.last_error.as_deref(),
                },
                at: Utc::now(),
            });
        }
    }

    /// Moves to `state`, keeping `state_since` when the state is unchanged.
    /// With `[nats]`, a new state (or a new reason for a failing one) is
    /// queued for `events.<camera>` (never blocks).
    pub fn set_state(&mut self, state: CameraState, error: Option<String>) {
        let changed = self.state != state || (error.is_some() && error != self.last_error);
        if self.state != state {
            self.state = state;
            self.state_since = Utc::now();
        }
        if error.is_some() || state.is_receiving() {
            self.last_error = error;
        }
        if !state.is_receiving() {
            self.fps = None;
        }
        if changed {
            self.publish_state();
        }
    }
}

/// A camera as `/api/cameras` shows it: status, viewers per track and, in
/// cluster mode, the node that pulls it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct CameraView {
    #[serde(flatten)]
    pub status: CameraStatus,
    /// Viewer sessions per track (`raw`, `annotated`) on the node that pulls it.
    #[schema(value_type = BTreeMap<String, usize>)]
    pub viewers: BTreeMap<&'static str, usize>,
    /// Cluster mode: the node that pulls the camera (`null` while it moves).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Cluster mode: that node's `advertise_url`, where its WHEP endpoints are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_url: Option<String>,
}
