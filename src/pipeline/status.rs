//! What the API shows of a camera: its state, last error and stream facts.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Supervisor state of one camera.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CameraState {
    /// Connecting for the first time or after a reset.
    Connecting,
    /// Access units are arriving.
    Streaming,
    /// The last session failed; waiting to retry.
    Reconnecting,
    /// The last error will not go away by itself (bad URL, 401, 404, unsupported
    /// codec); retried at the longest backoff.
    Failed,
    /// Shut down.
    Stopped,
}

/// A camera's public status. Holds no credentials: `url` is redacted.
#[derive(Clone, Debug, Serialize)]
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
    /// Classifications per second currently achieved (lower when the machine is behind).
    pub classify_fps_effective: f32,
    pub reconnects: u64,
}

impl CameraStatus {
    pub fn new(name: &str, url: &str, classify_fps: f32) -> CameraStatus {
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
            classify_fps,
            classify_fps_effective: 0.0,
            reconnects: 0,
        }
    }

    /// Moves to `state`, keeping `state_since` when the state is unchanged.
    pub fn set_state(&mut self, state: CameraState, error: Option<String>) {
        if self.state != state {
            self.state = state;
            self.state_since = Utc::now();
        }
        if error.is_some() || state == CameraState::Streaming {
            self.last_error = error;
        }
        if state != CameraState::Streaming {
            self.fps = None;
        }
    }
}
