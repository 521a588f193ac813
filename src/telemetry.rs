//! Logging setup (a `tracing` subscriber on stderr) and the Prometheus metrics
//! registry with per-camera handles.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG` (e.g. `infercast=debug`) overrides
/// `default_level`; two WebRTC modules stay at `error` unless `RUST_LOG` names
/// them. Safe to call once; later calls are ignored.
pub fn init_logging(default_level: &str) {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // Two warnings of the WebRTC stack come with every viewer session and mean
    // nothing here (DTLS has no server name to check: the SDP fingerprint pins
    // the peer; ICE pings before the viewer's candidates arrive). Added after
    // RUST_LOG, so `RUST_LOG=info` (the systemd unit's) does not bring them back.
    let asked = std::env::var("RUST_LOG").unwrap_or_default();
    for quiet in ["rtc_dtls::config=error", "rtc_ice::agent=error"] {
        let module = quiet.split_once('=').map_or(quiet, |(m, _)| m);
        if !asked.contains(module) {
            filter = filter.add_directive(quiet.parse().expect("a constant, valid directive"));
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        // A line that cannot be written (stderr closed: a log collector died)
        // is dropped. With internal-error logging on, tracing-subscriber would
        // `eprint!` about it, which panics on a broken pipe and takes the task
        // that logged with it (the SIGTERM handler's, before it cancels).
        .log_internal_errors(false)
        .try_init();
}

/// Pipeline stages timed per frame.
#[derive(Clone, Copy, Debug)]
pub enum Stage {
    Decode,
    Preprocess,
    Infer,
    Overlay,
    Encode,
}

impl Stage {
    pub const ALL: [Stage; 5] = [Stage::Decode, Stage::Preprocess, Stage::Infer, Stage::Overlay, Stage::Encode];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Preprocess => "preprocess",
            Stage::Infer => "infer",
            Stage::Overlay => "overlay",
            Stage::Encode => "encode",
        }
    }
}

/// Every metric infercast exports at `/metrics`. Label `camera` is the camera's
/// configured name, never its URL.
pub struct Metrics {
    registry: Registry,
    frames_received: IntCounterVec,
    frames_decoded: IntCounterVec,
    keyframes_received: IntCounterVec,
    degraded: IntCounterVec,
    frames_classified: IntCounterVec,
    frames_encoded: IntCounterVec,
    frames_dropped: IntCounterVec,
    reconnects: IntCounterVec,
    annotated_refused: IntCounterVec,
    stage_seconds: HistogramVec,
    capture_to_label_seconds: HistogramVec,
    capture_to_encoded_seconds: HistogramVec,
    viewer_label_offset_seconds: HistogramVec,
    /// Tokio tasks alive, read from the runtime when `/metrics` renders (a leak shows as growth).
    tasks_alive: IntGauge,
}

/// Stage-latency buckets, seconds: 0.5 ms … 1 s.
const STAGE_BUCKETS: &[f64] = &[0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0];
/// Label-to-frame offset buckets, seconds: 0 (the label of that very frame) … 10 s.
const OFFSET_BUCKETS: &[f64] = &[0.0, 0.02, 0.04, 0.08, 0.12, 0.16, 0.24, 0.32, 0.5, 1.0, 2.0, 5.0, 10.0];
const LATENCY_BUCKETS: &[f64] = &[0.005, 0.01, 0.02, 0.03, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0];

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric names and labels are valid constants");
    registry.register(Box::new(c.clone())).expect("each metric is registered once");
    c
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels)
        .expect("metric names and labels are valid constants");
    registry.register(Box::new(h.clone())).expect("each metric is registered once");
    h
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new_custom(Some("infercast".into()), None).expect("prefix is valid");
        let cam = &["camera"];
        Metrics {
            frames_received: counter(&r, "frames_received_total", "Access units received from the camera", cam),
            frames_decoded: counter(&r, "frames_decoded_total", "Frames decoded to I420", cam),
            keyframes_received: counter(
                &r,
                "keyframes_received_total",
                "Keyframe (IDR/IRAP) access units received",
                cam,
            ),
            degraded: counter(
                &r,
                "camera_degraded_total",
                "Times a streaming camera turned degraded (frames far below the stream's rate, or mostly corrupt)",
                cam,
            ),
            frames_classified: counter(&r, "frames_classified_total", "Frames classified", cam),
            frames_encoded: counter(&r, "frames_encoded_total", "Annotated frames encoded", cam),
            frames_dropped: counter(
                &r,
                "frames_dropped_total",
                "Frames or requests dropped, by reason (decode_queue_full, inference_busy, corrupt, waiting_for_keyframe, access_unit_too_large)",
                &["camera", "reason"],
            ),
            reconnects: counter(&r, "reconnects_total", "Camera reconnect attempts", cam),
            annotated_refused: counter(
                &r,
                "annotated_refused_total",
                "Times a camera's annotated track became unavailable (picture over annotated_max_pixels)",
                cam,
            ),
            stage_seconds: histogram(
                &r,
                "stage_duration_seconds",
                "Per-frame time in each pipeline stage",
                &["camera", "stage"],
                STAGE_BUCKETS,
            ),
            capture_to_label_seconds: histogram(
                &r,
                "capture_to_label_seconds",
                "From frame capture to its label being available",
                cam,
                LATENCY_BUCKETS,
            ),
            capture_to_encoded_seconds: histogram(
                &r,
                "capture_to_encoded_seconds",
                "From frame capture to its annotated access unit being encoded (ready for viewers)",
                cam,
                LATENCY_BUCKETS,
            ),
            viewer_label_offset_seconds: histogram(
                &r,
                "viewer_label_offset_seconds",
                "Label-to-frame offset the viewer pages measure: how far each frame they draw a label on lies after \
                 the frame that label was computed from (RTP time; 0 = its own frame), sampled and posted by the pages",
                cam,
                OFFSET_BUCKETS,
            ),
            tasks_alive: {
                let g = IntGauge::new("runtime_tasks_alive", "Tokio tasks alive (sampled when /metrics renders)")
                    .expect("metric name is a valid constant");
                r.register(Box::new(g.clone())).expect("each metric is registered once");
                g
            },
            registry: r,
        }
    }

    /// Pre-resolved handles for one camera (no label lookups per frame).
    pub fn camera(&self, camera: &str) -> CameraMetrics {
        let c = &[camera];
        CameraMetrics {
            received: self.frames_received.with_label_values(c),
            decoded: self.frames_decoded.with_label_values(c),
            keyframes_received: self.keyframes_received.with_label_values(c),
            degraded: self.degraded.with_label_values(c),
            classified: self.frames_classified.with_label_values(c),
            encoded: self.frames_encoded.with_label_values(c),
            reconnects: self.reconnects.with_label_values(c),
            annotated_refused: self.annotated_refused.with_label_values(c),
            dropped: self.frames_dropped.clone(),
            stages: Stage::ALL.map(|s| self.stage_seconds.with_label_values(&[camera, s.as_str()])),
            capture_to_label: self.capture_to_label_seconds.with_label_values(c),
            capture_to_encoded: self.capture_to_encoded_seconds.with_label_values(c),
            camera: camera.to_owned(),
        }
    }

    /// Records offsets (seconds, each already checked finite and `>= 0`)
    /// a viewer page measured on `camera`.
    pub fn viewer_label_offsets(&self, camera: &str, offsets_s: impl IntoIterator<Item = f64>) {
        let h = self.viewer_label_offset_seconds.with_label_values(&[camera]);
        for s in offsets_s {
            h.observe(s);
        }
    }

    /// The registry, for subsystems that add their own metrics (e.g. the SFU).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            self.tasks_alive.set(i64::try_from(rt.metrics().num_alive_tasks()).unwrap_or(i64::MAX));
        }
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// One camera's metric handles.
#[derive(Clone)]
pub struct CameraMetrics {
    camera: String,
    pub received: IntCounter,
    pub decoded: IntCounter,
    pub keyframes_received: IntCounter,
    pub degraded: IntCounter,
    pub classified: IntCounter,
    pub encoded: IntCounter,
    pub reconnects: IntCounter,
    /// Times the annotated track became unavailable (picture too large).
    pub annotated_refused: IntCounter,
    dropped: IntCounterVec,
    stages: [Histogram; 5],
    pub capture_to_label: Histogram,
    pub capture_to_encoded: Histogram,
}

impl CameraMetrics {
    pub fn dropped(&self, reason: &str, n: u64) {
        self.dropped.with_label_values(&[self.camera.as_str(), reason]).inc_by(n);
    }

    /// Records `ms` milliseconds spent in `stage`.
    pub fn stage(&self, stage: Stage, ms: f64) {
        self.stages[stage as usize].observe(ms / 1e3);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn render_reports_the_runtime_tasks_alive() {
        let _task = tokio::spawn(std::future::pending::<()>());
        let text = Metrics::new().render();
        let alive: i64 = text
            .lines()
            .find_map(|l| l.strip_prefix("infercast_runtime_tasks_alive "))
            .and_then(|v| v.trim().parse().ok())
            .expect("the gauge is rendered");
        assert!(alive >= 1, "{text}");
    }
}
