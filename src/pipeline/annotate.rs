//! The annotated track's shape and encoder: its size (`annotated_scale`) and
//! rate (`annotated_fps`), the stream's frame interval, whether the picture is
//! too large to encode at all (`annotated_max_pixels`: refused once, with a
//! clear state), and the encode step that publishes access units to the hub
//! (both encoders restart by themselves, with an IDR, when the picture size changes).

use std::sync::RwLock;
use std::time::{Instant, SystemTime};

use prometheus::IntCounter;

use super::media::{MediaContext, ms_since};
use super::status::CameraStatus;
use crate::codec::AnnotatedEncoder;
use crate::codec::encode::EncoderConfig;
use crate::media::VideoFrame;
use crate::media::scale::scaled_size;
use crate::telemetry::Stage;

/// Why the annotated track of a `width`×`height` camera cannot be encoded
/// (its picture after `scale` is over `max_pixels`), with what to change; `None`
/// when it can.
pub(super) fn refusal(scale: f32, max_pixels: u32, width: u32, height: u32) -> Option<String> {
    let (w, h) = if scale >= 1.0 { (width, height) } else { scaled_size(width, height, scale) };
    let (pixels, max) = (u64::from(w) * u64::from(h), u64::from(max_pixels));
    if pixels <= max {
        return None;
    }
    // The largest scale (two decimals, rounded down) that fits.
    let fit = (max as f64 / (u64::from(width) * u64::from(height)).max(1) as f64).sqrt();
    let suggested = ((fit * 100.0).floor() / 100.0).max(0.01);
    Some(format!(
        "{w}x{h} is {pixels} pixels, over annotated_max_pixels = {max}: set annotated_scale = {suggested} \
         (or lower) or raise annotated_max_pixels"
    ))
}

/// Shows `reason` (from [`refusal`]) as the camera's `annotated_unavailable`;
/// logs and counts only a change, so a refused camera costs one log line, not
/// one per frame.
pub(super) fn show_refusal(camera: &str, status: &RwLock<CameraStatus>, refused: &IntCounter, reason: Option<String>) {
    let mut s = status.write().expect("status lock is never poisoned");
    if s.annotated_unavailable == reason {
        return;
    }
    match &reason {
        Some(why) => {
            tracing::warn!(camera = %camera, reason = %why, "annotated track unavailable");
            refused.inc();
        }
        None => tracing::info!(camera = %camera, "annotated track available again"),
    }
    s.annotated_unavailable = reason;
}

/// The stream's frame interval, from the pts of consecutive pictures (90 kHz).
#[derive(Default)]
pub(super) struct FrameInterval {
    last_pts: Option<i64>,
    interval_90k: Option<i64>,
}

impl FrameInterval {
    pub(super) fn observe(&mut self, pts: i64) {
        if let Some(last) = self.last_pts
            && (1..=90_000).contains(&(pts - last))
        {
            self.interval_90k = Some(pts - last);
        }
        self.last_pts = Some(pts);
    }

    /// Frames per second (25 until known).
    pub(super) fn fps(&self) -> f32 {
        self.interval_90k.map_or(25.0, |i| 90_000.0 / i as f32)
    }
}

/// Size and rate of the annotated track (`annotated_scale`, `annotated_fps`),
/// and a change of them waiting for the track's next IDR.
pub(super) struct AnnotatedShape {
    scale: f32,
    fps: Option<f32>,
    max_pixels: u32,
    /// `(annotated_fps, annotated_scale)` to take at the next IDR.
    pending: Option<(Option<f32>, f32)>,
    /// Frames encoded since the last IDR (the GOP position).
    since_idr: u32,
    /// The camera picture size last checked against `max_pixels`, and the verdict.
    checked: Option<((u32, u32), bool)>,
    pub(super) frame_interval: FrameInterval,
    /// pts at which the next annotated frame is due (with `annotated_fps`).
    next_due_90k: Option<i64>,
}

impl AnnotatedShape {
    pub(super) fn new(fps: Option<f32>, scale: f32, max_pixels: u32) -> AnnotatedShape {
        AnnotatedShape {
            scale,
            fps,
            max_pixels,
            pending: None,
            since_idr: 0,
            checked: None,
            frame_interval: FrameInterval::default(),
            next_due_90k: None,
        }
    }

    /// A new frame rate and scale, taken at the next IDR ([`Self::take_pending`]).
    pub(super) fn retune(&mut self, fps: Option<f32>, scale: f32) {
        self.pending = ((fps, scale) != (self.fps, self.scale)).then_some((fps, scale));
    }

    /// Whether the next encoded frame is an IDR anyway: no encoder yet, a
    /// keyframe request (a viewer joined, a PLI), or the end of the GOP.
    pub(super) fn idr_due(&self, ctx: &MediaContext, encoder: Option<&AnnotatedEncoder>) -> bool {
        encoder.is_none_or(|e| self.since_idr + 1 >= e.config().gop_frames) || ctx.tracks.annotated.keyframe_pending()
    }

    /// Takes the pending frame rate and scale when `idr_due`; true when it did
    /// (the caller starts a new encoder, whose first frame is that IDR).
    pub(super) fn take_pending(&mut self, idr_due: bool) -> bool {
        let Some((fps, scale)) = self.pending.filter(|_| idr_due) else { return false };
        (self.fps, self.scale, self.pending) = (fps, scale, None);
        (self.checked, self.next_due_90k) = (None, None);
        true
    }

    /// Counts an encoded frame (`keyframe`: an IDR) for the GOP position.
    pub(super) fn encoded(&mut self, keyframe: bool) {
        self.since_idr = if keyframe { 0 } else { self.since_idr + 1 };
    }

    /// Whether the annotated track of a camera picture of `width`×`height` is
    /// refused (too large); checked again only when the size changes, and shown
    /// in the camera's status.
    pub(super) fn refused(&mut self, ctx: &MediaContext, width: u32, height: u32) -> bool {
        match self.checked {
            Some((size, refused)) if size == (width, height) => refused,
            _ => {
                let reason = refusal(self.scale, self.max_pixels, width, height);
                let refused = reason.is_some();
                show_refusal(&ctx.name, &ctx.status, &ctx.metrics.annotated_refused, reason);
                self.checked = Some(((width, height), refused));
                refused
            }
        }
    }

    /// The annotated track's frame rate: `annotated_fps`, capped by the stream's.
    pub(super) fn fps(&self) -> f32 {
        let stream = self.frame_interval.fps();
        self.fps.map_or(stream, |f| f.min(stream))
    }

    /// The picture at the annotated size (the frame itself at scale 1).
    pub(super) fn scale(&self, frame: VideoFrame) -> VideoFrame {
        if self.scale >= 1.0 {
            return frame;
        }
        let (w, h) = scaled_size(frame.width, frame.height, self.scale);
        frame.downscaled(w, h)
    }

    /// Whether the frame at `pts` is encoded, keeping `annotated_fps` on average.
    pub(super) fn due(&mut self, pts: i64) -> bool {
        let Some(fps) = self.fps else { return true };
        let interval = (90_000.0 / fps) as i64;
        // Half a 25 fps frame of slack, so 12.5 fps takes every other frame of 25.
        match self.next_due_90k {
            // Early: skip (unless the source jumped back: start over below).
            Some(due) if (due - 2 * interval..due - 1800).contains(&pts) => false,
            // On time, or late by less than a frame: keep the grid.
            Some(due) if (due - 1800..due + interval).contains(&pts) => {
                self.next_due_90k = Some(due + interval);
                true
            }
            // First frame, a stall or a jump: a new grid from here.
            _ => {
                self.next_due_90k = Some(pts + interval);
                true
            }
        }
    }
}

/// Encodes `frame` (creating the encoder at `fps` and `bitrate_bps` if there is
/// none) and publishes it to the annotated track; returns whether it was an
/// IDR, `None` when nothing was encoded (logged).
pub(super) fn encode(
    ctx: &MediaContext,
    encoder: &mut Option<AnnotatedEncoder>,
    frame: &VideoFrame,
    fps: f32,
    bitrate_bps: u32,
) -> Option<bool> {
    let mut force_idr = ctx.tracks.annotated.take_keyframe_request();
    if encoder.is_none() {
        let fps = fps.clamp(1.0, 60.0);
        let config = EncoderConfig {
            width: frame.width,
            height: frame.height,
            bitrate_bps,
            max_fps: fps,
            gop_frames: (fps * 2.0).round() as u32,
        };
        match AnnotatedEncoder::new(ctx.config.annotated_encoder, config) {
            Ok(e) => *encoder = Some(e),
            Err(e) => {
                tracing::error!(camera = %ctx.name, error = %e, "cannot create the H.264 encoder");
                return None;
            }
        }
        tracing::info!(
            camera = %ctx.name,
            encoder = ?ctx.config.annotated_encoder,
            size = %format_args!("{}x{}", frame.width, frame.height),
            fps,
            bitrate_bps,
            "annotated encoder started"
        );
        force_idr = true;
    }
    let enc = encoder.as_mut()?;
    let t = Instant::now();
    match enc.encode(frame, force_idr) {
        Ok(au) => {
            ctx.metrics.stage(Stage::Encode, ms_since(t));
            ctx.metrics.encoded.inc();
            if let Ok(age) = SystemTime::now().duration_since(frame.captured_at) {
                ctx.metrics.capture_to_encoded.observe(age.as_secs_f64());
            }
            let keyframe = au.keyframe;
            ctx.tracks.annotated.publish(au);
            Some(keyframe)
        }
        Err(e) => {
            tracing::warn!(camera = %ctx.name, error = %e, "encode failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotated_fps_takes_the_configured_share_of_frames() {
        for (fps, want) in [(12.5f32, 125), (10.0, 100), (5.0, 50), (25.0, 250), (30.0, 250)] {
            let mut shape = AnnotatedShape::new(Some(fps), 1.0, 1920 * 1080);
            let taken = (0..250i64).filter(|i| shape.due(i * 3600)).count();
            assert!(taken.abs_diff(want) <= 1, "{fps} fps of 25: {taken} of 250 frames");
        }
        let mut shape = AnnotatedShape::new(Some(5.0), 1.0, 1920 * 1080);
        assert!(shape.due(900_000) && !shape.due(903_600));
        assert!(shape.due(0), "the source restarted: a new grid");
    }

    #[test]
    fn a_new_rate_and_scale_wait_for_an_idr() {
        let mut shape = AnnotatedShape::new(None, 1.0, 1920 * 1080);
        shape.retune(None, 1.0);
        assert!(!shape.take_pending(true), "nothing changed");
        shape.retune(Some(10.0), 0.5);
        assert!(!shape.take_pending(false), "no IDR due: still pending");
        assert_eq!((shape.fps, shape.scale), (None, 1.0));
        assert!(shape.take_pending(true));
        assert_eq!((shape.fps, shape.scale), (Some(10.0), 0.5));
        assert!(!shape.take_pending(true), "taken once");
        let half = shape.scale(crate::media::VideoFrame::from_rgb(64, 32, &[0; 64 * 32 * 3]));
        assert_eq!((half.width, half.height), (32, 16));
    }

    #[test]
    fn pictures_over_annotated_max_pixels_are_refused_with_the_scale_that_fits() {
        let max = 1920 * 1080;
        assert_eq!(refusal(1.0, max, 1920, 1080), None);
        let why = refusal(1.0, max, 3840, 2160).expect("4K is over 1080p");
        assert!(why.starts_with("3840x2160 is 8294400 pixels, over annotated_max_pixels = 2073600"), "{why}");
        assert!(why.contains("annotated_scale = 0.5 "), "{why}");
        assert_eq!(refusal(0.5, max, 3840, 2160), None, "annotated_scale brings it under");
        assert!(refusal(1.0, 16_384, 1280, 720).expect("tiny limit").contains("annotated_scale = 0.13 "));
    }
}
