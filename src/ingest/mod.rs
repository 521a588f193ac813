//! Where access units come from: RTSP cameras ([`rtsp`]), WebRTC publishers
//! (WHIP, [`whip`]) and the built-in demo camera that replays an H.264 file
//! in real time ([`replay`]).
//!
//! A source yields [`AccessUnit`]s in Annex B with SPS/PPS before each IDR; it
//! knows nothing of decoding, inference or viewers.

pub mod camera_url;
pub mod replay;
pub mod rtp_h264;
pub mod rtsp;
pub mod whip;

use std::time::Duration;

pub use camera_url::CameraUrl;

use crate::media::AccessUnit;

/// What a source says about its video once connected.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamInfo {
    /// Codec as the field names it: `H.264`, `H.265`, `MJPEG`, ...
    pub codec: String,
    /// Picture size in pixels, when known before the first frame.
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Nominal frame rate from the SDP or the file, frames per second.
    pub fps: Option<f32>,
}

/// Why a source could not start or stopped delivering.
#[derive(Clone, Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{0}")]
    BadUrl(String),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("{step} timed out after {} s", .after.as_secs_f32())]
    Timeout { step: &'static str, after: Duration },
    #[error("camera refused the request: {0}")]
    Refused(String),
    #[error("authentication failed (401): check the user and password in the camera URL")]
    Unauthorized,
    #[error("not found (404): check the path in the camera URL")]
    NotFound,
    #[error("unsupported codec {0}: infercast decodes H.264 and H.265; set the camera's stream to one of them")]
    UnsupportedCodec(String),
    #[error("the camera offers no video stream")]
    NoVideo,
    #[error("stream ended")]
    Ended,
    #[error("stream error: {0}")]
    Stream(String),
    #[error("access unit of {bytes} bytes is over rtsp.max_access_unit_bytes = {limit}: dropped, reconnecting")]
    AccessUnitTooLarge { bytes: usize, limit: usize },
    #[error("no WHIP publisher within {} s: POST an SDP offer to /whip/<camera>", .after.as_secs())]
    NoPublisher { after: Duration },
    #[error("the WHIP publisher left (its session was deleted or its connection ended)")]
    PublisherLeft,
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
}

impl IngestError {
    /// Errors that a retry will not fix without the user changing something; the
    /// supervisor shows them as `failed` (and still retries, slowly).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            IngestError::BadUrl(_)
                | IngestError::UnsupportedCodec(_)
                | IngestError::Unauthorized
                | IngestError::NotFound
                | IngestError::NoPublisher { .. }
        )
    }
}

/// A connected source of access units.
pub enum Source {
    Rtsp(rtsp::RtspSession),
    Replay(replay::ReplaySession),
    Whip(whip::WhipSession),
}

impl Source {
    /// The next access unit. `Ok(None)` never happens for live cameras: a camera
    /// that stops is an error ([`IngestError::Ended`] or a timeout).
    pub async fn next(&mut self) -> Result<AccessUnit, IngestError> {
        match self {
            Source::Rtsp(s) => s.next().await,
            Source::Replay(s) => s.next().await,
            Source::Whip(s) => s.next().await,
        }
    }

    pub fn info(&self) -> &StreamInfo {
        match self {
            Source::Rtsp(s) => s.info(),
            Source::Replay(s) => s.info(),
            Source::Whip(s) => s.info(),
        }
    }
}
