//! A camera's media thread: decode every access unit (or only keyframes while
//! nobody needs more), classify at the camera's rate through the shared
//! inference worker, draw the latest label, and encode the annotated track once
//! (when someone watches it, or always); say when the camera is `degraded`.
//!
//! Synchronous code on its own OS thread; it never blocks on the network,
//! viewers or inference (requests are submitted without waiting).

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::analysis::{Admit, AnalysisGate, AnalysisMode};
use super::annotate::{AnnotatedShape, encode};
use super::classify::{ClassifyPacer, Latest, Stashed, classify, retry_stashed};
use super::health::Health;
use super::queue::{FrameQueue, MediaMsg, Popped};
use super::status::{CameraState, CameraStatus};
use super::tuning::CameraTuning;
use crate::codec::{AnnotatedEncoder, VideoDecoder};
use crate::config::{CameraConfig, EncodePolicy};
use crate::hub::{CameraTracks, TrackKind};
use crate::infer::{InferenceWorker, Preprocessor};
use crate::labels::LabelStore;
use crate::media::{AccessUnit, VideoCodec, VideoFrame};
use crate::overlay::Overlay;
use crate::telemetry::{CameraMetrics, Stage};

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
    /// What changes without a restart; read between access units (it
    /// overrides `config`'s tunable fields).
    pub tuning: tokio::sync::watch::Receiver<CameraTuning>,
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
    let mut tuning_rx = ctx.tuning.clone();
    let mut tuning = *tuning_rx.borrow_and_update();
    let mut dec = DecodeState {
        decoder: None,
        codec: codec.unwrap_or(VideoCodec::H264),
        gate: AnalysisGate::new(ctx.config.analysis, tuning.classify_fps),
        health: Health::new(Instant::now()),
        frames: Vec::new(),
    };
    let mut encoder = None::<AnnotatedEncoder>;
    let mut annotated =
        AnnotatedShape::new(tuning.annotated_fps, tuning.annotated_scale, ctx.config.annotated_max_pixels);
    let mut encoder_last_wanted = Instant::now();
    let mut overlay = Overlay::new();
    let mut pre = Preprocessor::new();
    let latest = Arc::new(Latest::default());
    let mut pacer = ClassifyPacer::new(tuning.classify_fps);
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
        if tuning_rx.has_changed().unwrap_or(false) {
            let new = *tuning_rx.borrow_and_update();
            retune(ctx, &mut tuning, new, &mut dec.gate, &mut pacer, encoder.as_mut(), &mut annotated);
        }
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
        let refused = ctx.status.read().expect("status lock is never poisoned").annotated_unavailable.is_some();
        let needs_every_frame = encoder.is_some() || (annotated_wanted(ctx, &tuning) && !refused);
        let admit = dec.gate.admit(&au, needs_every_frame);
        if needs_every_frame && dec.gate.mode() == AnalysisMode::Keyframes {
            // Every frame from the next keyframe on: a WHIP publisher is asked for it now.
            ctx.tracks.raw.request_keyframe();
        }
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

            // A new annotated rate or size starts a new encoder at the IDR due next.
            if annotated.take_pending(annotated.idr_due(ctx, encoder.as_ref())) && encoder.take().is_some() {
                tracing::info!(camera = %ctx.name, "annotated encoder restarts at this IDR with the new rate and size");
            }
            // Too large to encode (annotated_max_pixels): never encoded, said once.
            let refused = annotated.refused(ctx, frame.width, frame.height);
            let wanted = !refused && annotated_wanted(ctx, &tuning);
            if wanted {
                encoder_last_wanted = Instant::now();
            }
            let linger = Duration::from_millis(ctx.config.annotated_linger_ms);
            let encoding = wanted || (!refused && encoder.is_some() && encoder_last_wanted.elapsed() < linger);
            if !encoding && encoder.take().is_some() {
                let why = if refused { "the picture is over annotated_max_pixels" } else { "no viewers" };
                tracing::info!(camera = %ctx.name, "annotated encoder stopped: {why}");
            }
            let snapshot_waiting =
                pending_snapshots.iter().any(|r| r.track == TrackKind::Annotated && !r.reply.is_closed());
            if !encoding && !snapshot_waiting {
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
            if encoding
                && annotated.due(picture.pts_90k)
                && let Some(keyframe) =
                    encode(ctx, &mut encoder, &picture, annotated.fps(), tuning.annotated_bitrate_bps)
            {
                annotated.encoded(keyframe);
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
    use std::sync::atomic::{AtomicBool, Ordering};
    static DONE: AtomicBool = AtomicBool::new(false);
    if !frames.is_empty()
        && std::env::var("INFERCAST_TEST_PANIC_MEDIA").is_ok_and(|c| c == ctx.name)
        && !DONE.swap(true, Ordering::AcqRel)
    {
        panic!("test-triggered panic in the media thread of {}", ctx.name);
    }
}

/// Someone needs the annotated picture of every frame: a subscriber, or `always`.
fn annotated_wanted(ctx: &MediaContext, tuning: &CameraTuning) -> bool {
    tuning.encode_annotated == EncodePolicy::Always || ctx.tracks.annotated.subscriber_count() > 0
}

/// Takes a new tuning: the classification rate now (the analysis mode at the
/// next keyframe), the bitrate from the next encoded frame, the annotated
/// rate and size at its next IDR (see [`AnnotatedShape::take_pending`]).
fn retune(
    ctx: &MediaContext,
    tuning: &mut CameraTuning,
    new: CameraTuning,
    gate: &mut AnalysisGate,
    pacer: &mut ClassifyPacer,
    encoder: Option<&mut AnnotatedEncoder>,
    annotated: &mut AnnotatedShape,
) {
    if new.classify_fps != tuning.classify_fps {
        gate.set_classify_fps(new.classify_fps);
        *pacer = ClassifyPacer::new(new.classify_fps);
    }
    if let Some(enc) = encoder
        && new.annotated_bitrate_bps != tuning.annotated_bitrate_bps
        && let Err(e) = enc.set_bitrate(new.annotated_bitrate_bps)
    {
        tracing::warn!(camera = %ctx.name, error = %e, "the annotated encoder kept its bitrate");
    }
    annotated.retune(new.annotated_fps, new.annotated_scale);
    tracing::info!(
        camera = %ctx.name,
        classify_fps = new.classify_fps,
        encode_annotated = ?new.encode_annotated,
        annotated_bitrate_bps = new.annotated_bitrate_bps,
        annotated_fps = ?new.annotated_fps,
        annotated_scale = new.annotated_scale,
        "camera tuned"
    );
    *tuning = new;
}

pub(super) fn ms_since(t: Instant) -> f64 {
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
    if waiting > 0 || result.is_err() {
        // A source that can be asked for an IDR (a WHIP publisher) is.
        ctx.tracks.raw.request_keyframe();
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

/// Hands `frame` to every waiter for `track`. A waiter that has gone (timed
/// out, client hung up) is dropped without a copy of the frame.
fn answer_snapshots(pending: &mut Vec<SnapshotRequest>, track: TrackKind, frame: &VideoFrame) {
    pending.retain(|r| !r.reply.is_closed());
    let (now, later): (Vec<_>, Vec<_>) = pending.drain(..).partition(|r| r.track == track);
    *pending = later;
    for r in now {
        let _ = r.reply.send(frame.clone()); // it may have gone since the check: nothing lost
    }
}
