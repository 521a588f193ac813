//! Classification pacing for a camera's media thread: when a frame is due for
//! the classifier (`classify_fps`, slowed when the worker is behind), the
//! latest label drawn on frames, and the one keyframe a keyframe-only camera
//! keeps when the inference queue is full (offered again instead of lost).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};

use super::media::{MediaContext, ms_since};
use crate::infer::{INPUT_LEN, InferError, Offer, Preprocessor, Reply};
use crate::labels::Label;
use crate::media::VideoFrame;
use crate::telemetry::Stage;

/// Slowest classification rate the pipeline backs off to when behind, seconds per frame.
const MAX_CLASSIFY_INTERVAL: Duration = Duration::from_secs(2);

/// The label drawn on frames and the in-flight flag, shared with inference callbacks.
#[derive(Default)]
pub(super) struct Latest {
    pub(super) label: Mutex<Option<(String, f32)>>,
    pub(super) in_flight: AtomicBool,
}

pub(super) struct ClassifyPacer {
    target: Duration,
    effective: Duration,
    /// When the next classification is due: advanced by `effective` from the
    /// previous due time, not from the frame that happened to be used, so the
    /// achieved rate is the configured one and not rounded down to frame times.
    next_due: Option<Instant>,
}

impl ClassifyPacer {
    pub(super) fn new(classify_fps: f32) -> ClassifyPacer {
        let target = if classify_fps > 0.0 { Duration::from_secs_f32(1.0 / classify_fps) } else { Duration::ZERO };
        ClassifyPacer { target, effective: target, next_due: None }
    }

    pub(super) fn due(&self, now: Instant) -> bool {
        self.next_due.is_none_or(|t| now >= t)
    }

    pub(super) fn submitted(&mut self, now: Instant) {
        // After a stall (or at start) restart from now instead of bursting to catch up.
        let base = self.next_due.filter(|&t| now.saturating_duration_since(t) < self.effective).unwrap_or(now);
        self.next_due = Some(base + self.effective);
    }

    /// Behind: the previous request has not finished or the worker is full.
    pub(super) fn slow_down(&mut self) {
        let slower = self.effective.max(Duration::from_millis(40)).mul_f32(1.25);
        self.effective = slower.min(MAX_CLASSIFY_INTERVAL.max(self.target));
    }

    pub(super) fn speed_up(&mut self) {
        self.effective = self.effective.mul_f32(0.9).max(self.target);
    }

    pub(super) fn effective_fps(&self) -> f32 {
        if self.effective.is_zero() { 0.0 } else { 1.0 / self.effective.as_secs_f32() }
    }
}

pub(super) fn classify(
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
        let (latest, labels, metrics, name, tracks) =
            (latest.clone(), ctx.labels.clone(), ctx.metrics.clone(), ctx.name.clone(), ctx.tracks.clone());
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
            let stored = labels.push(Label {
                camera: name,
                label: top.label.clone(),
                class_id: top.class_id,
                score: top.score,
                top5: c.top.clone(),
                frame_pts: pts,
                captured_at: DateTime::<Utc>::from(captured_at),
                latency_ms: latency.as_secs_f64() * 1e3,
            });
            tracks.publish_label(stored);
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
pub(super) struct Stashed {
    tensor: Vec<f32>,
    reply: Reply,
    since: Instant,
}

/// Longest a stashed classification waits before it is dropped (the next GOP's
/// keyframe is due by then on any camera with a GOP of 2 s or less).
const MAX_STASH_WAIT: Duration = Duration::from_secs(2);

/// Offers the stashed classification again (once per access unit).
pub(super) fn retry_stashed(ctx: &MediaContext, latest: &Latest, stash: &mut Option<Stashed>) {
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
