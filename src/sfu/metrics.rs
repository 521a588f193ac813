//! The SFU's Prometheus metrics: viewers, sessions, packets, bytes, PLIs and
//! NACKs per camera × track, labels sent on the `labels` data channel, the send latency and time to first frame per
//! track, the one-port SFU's latency per send worker; one set of
//! pre-resolved handles per session so nothing is looked up per packet.

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts};

use crate::hub::TrackKind;

#[derive(Clone)]
pub(super) struct SfuMetrics {
    pub viewers: IntGaugeVec,
    pub created: IntCounterVec,
    pub ended: IntCounterVec,
    packets_sent: IntCounterVec,
    bytes_sent: IntCounterVec,
    keyframe_requests: IntCounterVec,
    nacks: IntCounterVec,
    gop_resends: IntCounterVec,
    labels_sent: IntCounterVec,
    send_latency: HistogramVec,
    time_to_first_frame: HistogramVec,
    shard_latency: HistogramVec,
}

/// Access unit received → RTP handed to the connection, seconds: 50 µs … 0.5 s.
const SEND_LATENCY_BUCKETS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.5];

/// WHEP POST → first RTP packet of a keyframe sent, seconds: 10 ms … 10 s.
const TIME_TO_FIRST_FRAME_BUCKETS: &[f64] =
    &[0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0];

impl SfuMetrics {
    pub fn register(registry: &prometheus::Registry) -> Option<SfuMetrics> {
        let labels = &["camera", "track"];
        let counter = |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), labels).ok();
        let m = SfuMetrics {
            viewers: IntGaugeVec::new(
                Opts::new("webrtc_viewers", "WebRTC viewer sessions per camera and track"),
                labels,
            )
            .ok()?,
            created: counter("webrtc_sessions_created_total", "WHEP sessions created")?,
            ended: counter("webrtc_sessions_ended_total", "WHEP sessions ended")?,
            packets_sent: counter("webrtc_packets_sent_total", "RTP packets sent to viewers")?,
            bytes_sent: counter("webrtc_bytes_sent_total", "RTP payload bytes sent to viewers")?,
            keyframe_requests: counter("webrtc_plis_total", "Keyframe requests (RTCP PLI or FIR) from viewers")?,
            nacks: counter("webrtc_nacks_total", "RTCP NACK packets (retransmission requests) from viewers")?,
            labels_sent: counter(
                "webrtc_labels_sent_total",
                "Labels sent to viewers on their `labels` data channel (one-port SFU), each keyed to its frame's \
                 RTP timestamp",
            )?,
            gop_resends: IntCounterVec::new(
                Opts::new(
                    "webrtc_gop_resends_total",
                    "Cached-GOP resends for raw viewers' keyframe requests: sent, or refused by [limits] gop_resend_bps",
                ),
                &["camera", "result"],
            )
            .ok()?,
            send_latency: HistogramVec::new(
                HistogramOpts::new(
                    "webrtc_send_latency_seconds",
                    "Live access unit received from the camera (raw) or encoder (annotated: from the camera \
                     access unit it was made from) to its last RTP packet handed to the viewer's connection",
                )
                .buckets(SEND_LATENCY_BUCKETS.to_vec()),
                &["track"],
            )
            .ok()?,
            time_to_first_frame: HistogramVec::new(
                HistogramOpts::new(
                    "webrtc_time_to_first_frame_seconds",
                    "WHEP POST received to the first RTP packet of a keyframe sent to that viewer (answer, \
                     ICE, DTLS and the wait for a keyframe)",
                )
                .buckets(TIME_TO_FIRST_FRAME_BUCKETS.to_vec()),
                &["track"],
            )
            .ok()?,
            shard_latency: HistogramVec::new(
                HistogramOpts::new(
                    "webrtc_shard_latency_seconds",
                    "One-port SFU: live access unit received to the end of this send worker's pass over its \
                     viewers (each viewer's first paced burst of it flushed)",
                )
                .buckets(SEND_LATENCY_BUCKETS.to_vec()),
                &["shard"],
            )
            .ok()?,
        };
        let collectors: [Box<dyn prometheus::core::Collector>; 12] = [
            Box::new(m.labels_sent.clone()),
            Box::new(m.shard_latency.clone()),
            Box::new(m.time_to_first_frame.clone()),
            Box::new(m.gop_resends.clone()),
            Box::new(m.viewers.clone()),
            Box::new(m.created.clone()),
            Box::new(m.ended.clone()),
            Box::new(m.packets_sent.clone()),
            Box::new(m.bytes_sent.clone()),
            Box::new(m.keyframe_requests.clone()),
            Box::new(m.nacks.clone()),
            Box::new(m.send_latency.clone()),
        ];
        for c in collectors {
            if let Err(e) = registry.register(c) {
                tracing::warn!("SFU metrics not registered: {e}");
                return None;
            }
        }
        Some(m)
    }

    /// Send worker `shard`'s latency histogram (one-port SFU), seconds.
    pub fn shard_latency(&self, shard: usize) -> Histogram {
        self.shard_latency.with_label_values(&[shard.to_string().as_str()])
    }

    pub fn session(&self, camera: &str, kind: TrackKind) -> SessionMetrics {
        let labels = [camera, kind.as_str()];
        SessionMetrics {
            packets_sent: self.packets_sent.with_label_values(&labels),
            bytes_sent: self.bytes_sent.with_label_values(&labels),
            keyframe_requests: self.keyframe_requests.with_label_values(&labels),
            nacks: self.nacks.with_label_values(&labels),
            labels_sent: self.labels_sent.with_label_values(&labels),
            gop_resent: self.gop_resends.with_label_values(&[camera, "sent"]),
            gop_resend_refused: self.gop_resends.with_label_values(&[camera, "over_budget"]),
            send_latency: self.send_latency.with_label_values(&[kind.as_str()]),
            time_to_first_frame: self.time_to_first_frame.with_label_values(&[kind.as_str()]),
        }
    }
}

/// One session's metric handles (resolved once, not per packet).
#[derive(Clone)]
pub(super) struct SessionMetrics {
    pub packets_sent: IntCounter,
    pub bytes_sent: IntCounter,
    pub keyframe_requests: IntCounter,
    pub nacks: IntCounter,
    pub labels_sent: IntCounter,
    pub gop_resent: IntCounter,
    pub gop_resend_refused: IntCounter,
    pub send_latency: Histogram,
    pub time_to_first_frame: Histogram,
}

impl SessionMetrics {
    /// Handles registered nowhere: for an SFU made without a registry.
    pub fn unregistered() -> SessionMetrics {
        let counter = || IntCounter::new("unregistered", "unregistered").expect("constant name is valid");
        let histogram = || {
            Histogram::with_opts(HistogramOpts::new("unregistered", "unregistered")).expect("constant name is valid")
        };
        SessionMetrics {
            packets_sent: counter(),
            bytes_sent: counter(),
            keyframe_requests: counter(),
            nacks: counter(),
            labels_sent: counter(),
            gop_resent: counter(),
            gop_resend_refused: counter(),
            send_latency: histogram(),
            time_to_first_frame: histogram(),
        }
    }
}
