//! A camera's media thread: decode every access unit (or only keyframes while
//! nobody needs more), classify at the camera's rate through the shared
//! inference worker, draw the latest label, and encode the annotated track once
//! (when someone watches it, or always); say when the camera is `degraded`.
//!
//! Synchronous code on its own OS thread; it never blocks on the network,
//! viewers or inference (requests are submitted without waiting).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use super::analysis::{Admit, AnalysisGate, AnalysisMode};
use super::health::Health;
use super::queue::{FrameQueue, MediaMsg, Popped};
use super::status::{CameraState, CameraStatus};
use crate::codec::encode::EncoderConfig;
use crate::codec::{AnnotatedEncoder, VideoDecoder};
use crate::config::{CameraConfig, EncodePolicy};
use crate::hub::{CameraTracks, TrackKind};
use crate::infer::{INPUT_LEN, InferError, InferenceWorker, Offer, Preprocessor, Reply};
use crate::labels::{Label, LabelStore};
use crate::media::scale::scaled_size;
use crate::media::{AccessUnit, VideoCodec, VideoFrame};
use crate::overlay::Overlay;
use crate::telemetry::{CameraMetrics, Stage};

/// Slowest classification rate the pipeline backs off to when behind, seconds per frame.
const MAX_CLASSIFY_INTERVAL: Duration = Duration::from_secs(2);

/// A request for the next frame of one track, as decoded I420.
pub struct SnapshotRequest {
    pub track: TrackKind,
    pub reply: oneshot::Sender<VideoFrame>,
}

/// Everything the media thread shares with the rest of the camera.
pub struct MediaContext {
    pub name: String,
    pub config: CameraConfig,
    pub queue: Arc<FrameQueue>,
    pub tracks: Arc<CameraTracks>,
    pub classifier: InferenceWorker,
    pub labels: Arc<LabelStore>,
    pub metrics: CameraMetrics,
    pub status: Arc<RwLock<CameraStatus>>,
    pub snapshots: std::sync::mpsc::Receiver<SnapshotRequest>,
}

/// The label drawn on frames and the in-flight flag, shared with inference callbacks.
#[derive(Default)]
struct Latest {
    label: Mutex<Option<(String, f32)>>,
    in_flight: AtomicBool,
}

struct ClassifyPacer {
    target: Duration,
    effective: Duration,
    /// When the next classification is due: advanced by `effective` from the
    /// previous due time, not from the frame that happened to be used, so the
    /// achieved rate is the configured one and not rounded down to frame times.
    next_due: Option<Instant>,
}

impl ClassifyPacer {
    fn new(classify_fps: f32) -> ClassifyPacer {
        let target = if classify_fps > 0.0 { Duration::from_secs_f32(1.0 / classify_fps) } else { Duration::ZERO };
        ClassifyPacer { target, effective: target, next_due: None }
    }

    fn due(&self, now: Instant) -> bool {
        self.next_due.is_none_or(|t| now >= t)
    }

    fn submitted(&mut self, now: Instant) {
        // After a stall (or at start) restart from now instead of bursting to catch up.
        let base = self.next_due.filter(|&t| now.saturating_duration_since(t) < self.effective).unwrap_or(now);
        self.next_due = Some(base + self.effective);
    }

    /// Behind: the previous request has not finished or the worker is full.
    fn slow_down(&mut self) {
        let slower = self.effective.max(Duration::from_millis(40)).mul_f32(1.25);
        self.effective = slower.min(MAX_CLASSIFY_INTERVAL.max(self.target));
    }

    fn speed_up(&mut self) {
        self.effective = self.effective.mul_f32(0.9).max(self.target);
    }

    fn effective_fps(&self) -> f32 {
        if self.effective.is_zero() { 0.0 } else { 1.0 / self.effective.as_secs_f32() }
    }
}

/// The stream's frame interval, from the pts of consecutive pictures (90 kHz).
#[derive(Default)]
struct FrameInterval {
    last_pts: Option<i64>,
    interval_90k: Option<i64>,
}

impl FrameInterval {
    fn observe(&mut self, pts: i64) {
        if let Some(last) = self.last_pts
            && (1..=90_000).contains(&(pts - last))
        {
            self.interval_90k = Some(pts - last);
        }
        self.last_pts = Some(pts);
    }

    /// Frames per second (25 until known).
    fn fps(&self) -> f32 {
        self.interval_90k.map_or(25.0, |i| 90_000.0 / i as f32)
    }
}

/// Size and rate of the annotated track (`annotated_scale`, `annotated_fps`).
struct AnnotatedShape {
    scale: f32,
    fps: Option<f32>,
    frame_interval: FrameInterval,
    /// pts at which the next annotated frame is due (with `annotated_fps`).
    next_due_90k: Option<i64>,
}

impl AnnotatedShape {
    fn new(config: &CameraConfig) -> AnnotatedShape {
        AnnotatedShape {
            scale: config.annotated_scale,
            fps: config.annotated_fps,
            frame_interval: FrameInterval::default(),
            next_due_90k: None,
        }
    }

    /// The annotated track's frame rate: `annotated_fps`, capped by the stream's.
    fn fps(&self) -> f32 {
        let stream = self.frame_interval.fps();
        self.fps.map_or(stream, |f| f.min(stream))
    }

    /// The picture at the annotated size (the frame itself at scale 1).
    fn scale(&self, frame: VideoFrame) -> VideoFrame {
        if self.scale >= 1.0 {
            return frame;
        }
        let (w, h) = scaled_size(frame.width, frame.height, self.scale);
        frame.downscaled(w, h)
    }

    /// Whether the frame at `pts` is encoded, keeping `annotated_fps` on average.
    fn due(&mut self, pts: i64) -> bool {
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

/// Per-thread state of the decode step.
struct DecodeState {
    decoder: Option<VideoDecoder>,
    codec: VideoCodec,
    gate: AnalysisGate,
    health: Health,
    /// Pictures out of the decoder for the current access unit, in presentation order.
    frames: Vec<VideoFrame>,
}

/// Runs until the queue is closed. `recovering`: started again after a panic
/// (the camera shows `failed` until pictures come out again).
pub fn run(ctx: &MediaContext, mut recovering: bool) {
    let codec =
        ctx.status.read().expect("status lock is never poisoned").codec.as_deref().and_then(VideoCodec::from_name);
    let mut dec = DecodeState {
        decoder: None,
        codec: codec.unwrap_or(VideoCodec::H264),
        gate: AnalysisGate::new(ctx.config.analysis, ctx.config.classify_fps),
        health: Health::new(Instant::now()),
        frames: Vec::new(),
    };
    let mut encoder = None::<AnnotatedEncoder>;
    let mut annotated = AnnotatedShape::new(&ctx.config);
    let mut encoder_last_wanted = Instant::now();
    let mut overlay = Overlay::new();
    let mut pre = Preprocessor::new();
    let latest = Arc::new(Latest::default());
    let mut pacer = ClassifyPacer::new(ctx.config.classify_fps);
    let mut fps_window = (Instant::now(), 0u32);
    let mut pending_snapshots: Vec<SnapshotRequest> = Vec::new();
    let mut stash = None::<Stashed>;
    loop {
        let mut skipped = 0;
        let popped = ctx.queue.pop(Duration::from_millis(500), &mut skipped);
        if skipped > 0 {
            ctx.metrics.dropped("decode_queue_full", skipped);
            dec.health.dropped += skipped as u32;
        }
        retry_stashed(ctx, &latest, &mut stash);
        let au = match popped {
            Popped::Closed => break,
            Popped::Idle => continue,
            Popped::Msg(MediaMsg::Reset(codec)) => {
                (dec.decoder, dec.codec) = (None, codec);
                dec.gate.reset();
                dec.health = Health::new(Instant::now());
                continue;
            }
            Popped::Msg(MediaMsg::AccessUnit(au)) => au,
        };
        let needs_every_frame = encoder.is_some() || annotated_wanted(ctx);
        let admit = dec.gate.admit(&au, needs_every_frame);
        if au.keyframe {
            show_mode(ctx, &dec.gate, &pacer); // once per GOP
        }
        if admit == Admit::Skip {
            judge_health(ctx, &mut dec.health, &mut recovering);
            continue;
        }
        decode(ctx, &mut dec, &au, admit == Admit::DecodeAlone);
        #[cfg(debug_assertions)]
        test_panic(ctx, &dec.frames);
        let keyframes_only = dec.gate.mode() == AnalysisMode::Keyframes;
        for frame in dec.frames.drain(..) {
            update_fps(ctx, &mut fps_window, &frame);
            annotated.frame_interval.observe(frame.pts_90k);

            pending_snapshots.extend(ctx.snapshots.try_iter());
            answer_snapshots(&mut pending_snapshots, TrackKind::Raw, &frame);

            classify(ctx, &mut pre, &mut pacer, &latest, &frame, keyframes_only, &mut stash);

            let wanted = annotated_wanted(ctx);
            if wanted {
                encoder_last_wanted = Instant::now();
            }
            let linger = Duration::from_millis(ctx.config.annotated_linger_ms);
            let encoding = wanted || (encoder.is_some() && encoder_last_wanted.elapsed() < linger);
            let snapshot_waiting = pending_snapshots.iter().any(|r| r.track == TrackKind::Annotated);
            if !encoding && !snapshot_waiting {
                if encoder.take().is_some() {
                    tracing::info!(camera = %ctx.name, "annotated encoder stopped: no viewers");
                }
                continue;
            }
            // The annotated picture: scaled first (so the label stays sharp), then labelled.
            let mut picture = annotated.scale(frame);
            let label = latest.label.lock().expect("label lock is never poisoned").clone();
            if let Some((text, score)) = label {
                let t = Instant::now();
                overlay.draw(&mut picture, &text, score);
                ctx.metrics.stage(Stage::Overlay, ms_since(t));
            }
            answer_snapshots(&mut pending_snapshots, TrackKind::Annotated, &picture);
            if encoding && annotated.due(picture.pts_90k) {
                encode(ctx, &mut encoder, &picture, annotated.fps());
            }
        }
        judge_health(ctx, &mut dec.health, &mut recovering);
    }
    tracing::debug!(camera = %ctx.name, "media thread stopped");
}

/// Debug builds only: `INFERCAST_TEST_PANIC_MEDIA=<camera>` panics that
/// camera's media thread once, at its first picture (for the recovery test).
#[cfg(debug_assertions)]
fn test_panic(ctx: &MediaContext, frames: &[VideoFrame]) {
    static DONE: AtomicBool = AtomicBool::new(false);
    if !frames.is_empty()
        && std::env::var("INFERCAST_TEST_PANIC_MEDIA").is_ok_and(|c| c == ctx.name)
        && !DONE.swap(true, Ordering::AcqRel)
    {
        panic!("test-triggered panic in the media thread of {}", ctx.name);
    }
}

/// Someone needs the annotated picture of every frame: a subscriber, or `always`.
fn annotated_wanted(ctx: &MediaContext) -> bool {
    ctx.config.encode_annotated == EncodePolicy::Always || ctx.tracks.annotated.subscriber_count() > 0
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Publishes the analysis mode in force and the classification rate it gives.
fn show_mode(ctx: &MediaContext, gate: &AnalysisGate, pacer: &ClassifyPacer) {
    let mode = gate.mode();
    let mut s = ctx.status.write().expect("status lock is never poisoned");
    s.analysis = mode;
    s.keyframe_rate_hz = gate.keyframe_rate_hz();
    s.classify_fps_effective = match mode {
        AnalysisMode::Keyframes => gate.keyframe_rate_hz().unwrap_or(0.0),
        AnalysisMode::EveryFrame => pacer.effective_fps(),
    };
}

/// Ends a health window: `streaming` ⇄ `degraded`, and `failed` → `streaming`
/// after a media-thread panic once pictures come out again; never touches
/// other states.
fn judge_health(ctx: &MediaContext, health: &mut Health, recovering: &mut bool) {
    let Some(verdict) = health.verdict(Instant::now()) else { return };
    let mut s = ctx.status.write().expect("status lock is never poisoned");
    match (s.state, verdict) {
        (CameraState::Failed, None) if *recovering => {
            *recovering = false;
            tracing::info!(camera = %ctx.name, "media thread recovered");
            s.set_state(CameraState::Streaming, None);
        }
        (CameraState::Streaming, Some(reason)) => {
            tracing::warn!(camera = %ctx.name, %reason, "camera degraded");
            ctx.metrics.degraded.inc();
            s.set_state(CameraState::Degraded, Some(reason));
        }
        (CameraState::Degraded, Some(reason)) => s.last_error = Some(reason),
        (CameraState::Degraded, None) => {
            tracing::info!(camera = %ctx.name, "camera recovered from degraded");
            s.set_state(CameraState::Streaming, None);
        }
        _ => {}
    }
}

fn decode(ctx: &MediaContext, dec: &mut DecodeState, au: &AccessUnit, alone: bool) {
    if dec.decoder.is_none() {
        match VideoDecoder::new(ctx.config.decoder, dec.codec) {
            Ok(d) => dec.decoder = Some(d),
            Err(e) => {
                tracing::error!(camera = %ctx.name, error = %e, "cannot create the video decoder");
                return;
            }
        }
    }
    let Some(d) = dec.decoder.as_mut() else { return };
    dec.health.wanted += 1;
    let before = d.stats();
    let t = Instant::now();
    let result = d.decode(au, alone, &mut dec.frames);
    let after = d.stats();
    let waiting = after.skipped_waiting_for_keyframe - before.skipped_waiting_for_keyframe;
    if !dec.frames.is_empty() {
        ctx.metrics.stage(Stage::Decode, ms_since(t));
        ctx.metrics.decoded.inc_by(dec.frames.len() as u64);
        dec.health.decoded += dec.frames.len() as u32;
    }
    if waiting > 0 {
        ctx.metrics.dropped("waiting_for_keyframe", waiting);
        dec.health.waiting_for_keyframe += waiting as u32;
    }
    if let Err(e) = result {
        ctx.metrics.dropped("corrupt", 1);
        dec.health.corrupt += 1;
        tracing::debug!(camera = %ctx.name, error = %e, "undecodable access unit");
    }
}

fn update_fps(ctx: &MediaContext, window: &mut (Instant, u32), frame: &VideoFrame) {
    window.1 += 1;
    let elapsed = window.0.elapsed();
    if elapsed >= Duration::from_secs(1) {
        let mut s = ctx.status.write().expect("status lock is never poisoned");
        s.fps = Some(window.1 as f32 / elapsed.as_secs_f32());
        (s.width, s.height) = (Some(frame.width), Some(frame.height));
        *window = (Instant::now(), 0);
    }
}

fn answer_snapshots(pending: &mut Vec<SnapshotRequest>, track: TrackKind, frame: &VideoFrame) {
    let (now, later): (Vec<_>, Vec<_>) = pending.drain(..).partition(|r| r.track == track);
    *pending = later;
    for r in now {
        let _ = r.reply.send(frame.clone()); // the requester may have timed out
    }
}

fn classify(
    ctx: &MediaContext,
    pre: &mut Preprocessor,
    pacer: &mut ClassifyPacer,
    latest: &Arc<Latest>,
    frame: &VideoFrame,
    every_picture: bool,
    stash: &mut Option<Stashed>,
) {
    let now = Instant::now();
    if !every_picture && !pacer.due(now) {
        return;
    }
    if latest.in_flight.load(Ordering::Acquire) {
        if !every_picture || stash.is_none() {
            pacer.slow_down();
            return;
        }
        // A newer keyframe replaces the one still waiting for room.
        *stash = None;
        ctx.metrics.dropped("inference_busy", 1);
    }
    let t = Instant::now();
    let mut tensor = vec![0.0; INPUT_LEN];
    pre.i420_to_tensor(&frame.view(), &mut tensor);
    ctx.metrics.stage(Stage::Preprocess, ms_since(t));
    pacer.submitted(now);
    latest.in_flight.store(true, Ordering::Release);
    let reply = {
        let (latest, labels, metrics, name) =
            (latest.clone(), ctx.labels.clone(), ctx.metrics.clone(), ctx.name.clone());
        let (pts, captured_at) = (frame.pts_90k, frame.captured_at);
        Box::new(move |result: Result<crate::infer::Classification, InferError>| {
            latest.in_flight.store(false, Ordering::Release);
            let c = match result {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(camera = %name, error = %e, "classification failed");
                    return;
                }
            };
            let Some(top) = c.top.first() else { return };
            let latency = SystemTime::now().duration_since(captured_at).unwrap_or_default();
            metrics.stage(Stage::Infer, c.infer_ms);
            metrics.classified.inc();
            metrics.capture_to_label.observe(latency.as_secs_f64());
            *latest.label.lock().expect("label lock is never poisoned") = Some((top.label.to_string(), top.score));
            labels.push(Label {
                camera: name,
                label: top.label.clone(),
                class_id: top.class_id,
                score: top.score,
                top5: c.top.clone(),
                frame_pts: pts,
                captured_at: DateTime::<Utc>::from(captured_at),
                latency_ms: latency.as_secs_f64() * 1e3,
            });
        })
    };
    match ctx.classifier.offer(tensor, reply) {
        Ok(()) => pacer.speed_up(),
        // Keyframe-only: the one picture of this GOP waits for room (retried
        // every access unit, see `retry_stashed`) rather than being lost.
        Err(Offer::Full(tensor, reply)) if every_picture => *stash = Some(Stashed { tensor, reply, since: now }),
        Err(Offer::Full(..)) => {
            latest.in_flight.store(false, Ordering::Release);
            ctx.metrics.dropped("inference_busy", 1);
            pacer.slow_down();
        }
        Err(Offer::Stopped) => {
            latest.in_flight.store(false, Ordering::Release);
            tracing::warn!(camera = %ctx.name, "cannot classify: the inference worker has stopped");
        }
    }
    if !every_picture {
        ctx.status.write().expect("status lock is never poisoned").classify_fps_effective = pacer.effective_fps();
    }
}

/// A keyframe's classification waiting for room in the inference queue.
struct Stashed {
    tensor: Vec<f32>,
    reply: Reply,
    since: Instant,
}

/// Longest a stashed classification waits before it is dropped (the next GOP's
/// keyframe is due by then on any camera with a GOP of 2 s or less).
const MAX_STASH_WAIT: Duration = Duration::from_secs(2);

/// Offers the stashed classification again (once per access unit).
fn retry_stashed(ctx: &MediaContext, latest: &Latest, stash: &mut Option<Stashed>) {
    let Some(Stashed { tensor, reply, since }) = stash.take() else { return };
    if since.elapsed() > MAX_STASH_WAIT {
        latest.in_flight.store(false, Ordering::Release);
        ctx.metrics.dropped("inference_busy", 1);
        return;
    }
    match ctx.classifier.offer(tensor, reply) {
        Ok(()) => {}
        Err(Offer::Full(tensor, reply)) => *stash = Some(Stashed { tensor, reply, since }),
        Err(Offer::Stopped) => latest.in_flight.store(false, Ordering::Release),
    }
}

fn encode(ctx: &MediaContext, encoder: &mut Option<AnnotatedEncoder>, frame: &VideoFrame, fps: f32) {
    let mut force_idr = ctx.tracks.annotated.take_keyframe_request();
    if encoder.is_none() {
        let fps = fps.clamp(1.0, 60.0);
        let config = EncoderConfig {
            width: frame.width,
            height: frame.height,
            bitrate_bps: ctx.config.annotated_bitrate_bps,
            max_fps: fps,
            gop_frames: (fps * 2.0).round() as u32,
        };
        match AnnotatedEncoder::new(ctx.config.annotated_encoder, config) {
            Ok(e) => *encoder = Some(e),
            Err(e) => {
                tracing::error!(camera = %ctx.name, error = %e, "cannot create the H.264 encoder");
                return;
            }
        }
        tracing::info!(
            camera = %ctx.name,
            encoder = ?ctx.config.annotated_encoder,
            size = %format_args!("{}x{}", frame.width, frame.height),
            fps,
            "annotated encoder started"
        );
        force_idr = true;
    }
    let Some(enc) = encoder.as_mut() else { return };
    let t = Instant::now();
    match enc.encode(frame, force_idr) {
        Ok(au) => {
            ctx.metrics.stage(Stage::Encode, ms_since(t));
            ctx.metrics.encoded.inc();
            if let Ok(age) = SystemTime::now().duration_since(frame.captured_at) {
                ctx.metrics.capture_to_encoded.observe(age.as_secs_f64());
            }
            ctx.tracks.annotated.publish(au);
        }
        Err(e) => tracing::warn!(camera = %ctx.name, error = %e, "encode failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_slows_down_when_behind_and_recovers_to_target() {
        let mut p = ClassifyPacer::new(5.0);
        assert!((p.effective_fps() - 5.0).abs() < 0.01);
        for _ in 0..50 {
            p.slow_down();
        }
        assert!((p.effective_fps() - 0.5).abs() < 0.01, "floor at 0.5 fps: {}", p.effective_fps());
        for _ in 0..100 {
            p.speed_up();
        }
        assert!((p.effective_fps() - 5.0).abs() < 0.01);
        let every = ClassifyPacer::new(0.0);
        assert!(every.due(Instant::now()) && every.effective_fps() == 0.0);
    }

    #[test]
    fn annotated_fps_takes_the_configured_share_of_frames() {
        for (fps, want) in [(12.5f32, 125), (10.0, 100), (5.0, 50), (25.0, 250), (30.0, 250)] {
            let mut config = CameraConfig::new("c", "file:x");
            config.annotated_fps = Some(fps);
            let mut shape = AnnotatedShape::new(&config);
            let taken = (0..250i64).filter(|i| shape.due(i * 3600)).count();
            assert!(taken.abs_diff(want) <= 1, "{fps} fps of 25: {taken} of 250 frames");
        }
        let mut config = CameraConfig::new("c", "file:x");
        config.annotated_fps = Some(5.0);
        let mut shape = AnnotatedShape::new(&config);
        assert!(shape.due(900_000) && !shape.due(903_600));
        assert!(shape.due(0), "the source restarted: a new grid");
    }

    #[test]
    fn pacer_keeps_the_configured_rate_on_a_frame_grid() {
        // 25 fps frames arriving with ±1 ms of jitter, 5 fps classification: every
        // 5th frame on average, not every 6th when a frame comes a little early.
        let mut p = ClassifyPacer::new(5.0);
        let t0 = Instant::now();
        let mut classified = 0;
        for frame in 0..250u32 {
            let now = t0 + Duration::from_millis(u64::from(frame) * 40 + 3 - u64::from(frame % 2) * 2);
            if p.due(now) {
                p.submitted(now);
                classified += 1;
            }
        }
        assert!((49..=50).contains(&classified), "10 s at 5 fps: {classified}");
    }
}
