//! Prometheus metrics of the NATS publisher (`infercast_nats_*`), registered
//! in the process's one registry.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Opts, Registry};

/// Publish-latency buckets, seconds: 0.5 ms … 10 s (an ack after a leader election).
const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Handles to the publisher's metrics (clones share them).
#[derive(Clone)]
pub struct BusMetrics {
    /// Publishes sent, retries included.
    pub published: IntCounter,
    /// Publishes JetStream acknowledged (each message once).
    pub acked: IntCounter,
    /// Acknowledgements that said "duplicate" (a retry of a stored message).
    pub duplicates: IntCounter,
    /// Messages waiting in the buffer.
    pub buffered: IntGauge,
    /// Messages dropped: the buffer was full (oldest first), or the server refused one for good.
    pub dropped: IntCounter,
    /// Publish → acknowledgement, seconds.
    pub latency: Histogram,
    /// 1 while connected to a NATS server, else 0.
    pub connected: IntGauge,
}

fn register<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    // A second registration (a test building two publishers on one registry) keeps the first.
    let _ = registry.register(Box::new(c.clone()));
    c
}

impl BusMetrics {
    pub fn new(registry: &Registry) -> BusMetrics {
        let counter = |name: &str, help: &str| {
            register(registry, IntCounter::with_opts(Opts::new(name, help)).expect("valid constant metric name"))
        };
        let gauge = |name: &str, help: &str| {
            register(registry, IntGauge::with_opts(Opts::new(name, help)).expect("valid constant metric name"))
        };
        BusMetrics {
            published: counter("nats_published_total", "Label and event publishes sent to JetStream, retries included"),
            acked: counter("nats_acked_total", "Publishes JetStream acknowledged"),
            duplicates: counter(
                "nats_duplicates_total",
                "Acknowledgements of a retried publish JetStream had already stored (same Nats-Msg-Id)",
            ),
            buffered: gauge("nats_buffered", "Messages waiting in the publish buffer"),
            dropped: counter(
                "nats_dropped_total",
                "Messages dropped: the publish buffer was full (oldest first) or the server refused one for good",
            ),
            latency: register(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new("nats_publish_latency_seconds", "JetStream publish to acknowledgement")
                        .buckets(LATENCY_BUCKETS.to_vec()),
                )
                .expect("valid constant metric name"),
            ),
            connected: gauge("nats_connected", "1 while connected to a NATS server"),
        }
    }
}
