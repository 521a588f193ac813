//! Labels and camera events on NATS JetStream (`[nats]`): every label goes to
//! `labels.<camera>` (the JSON `/api/labels` shows), every camera state change
//! to `events.<camera>`, both in one stream (default `LABELS`) with a
//! `Nats-Msg-Id` so a retried publish is stored once.
//!
//! The media path only ever calls [`Bus::label`] / [`Bus::camera_event`]:
//! a short lock and a push into a bounded buffer ([`outbox`]). The
//! [`publisher`] task does the network side and rides out outages and leader
//! elections with that buffer (oldest dropped and counted when it is full).

pub mod config;
pub mod message;
pub mod metrics;
pub mod outbox;
pub(crate) mod publisher;

use tokio_util::sync::CancellationToken;

pub use self::config::{NatsAuth, NatsConfig};
pub use self::message::CameraEvent;
use self::metrics::BusMetrics;
use self::outbox::Outbox;
use crate::labels::Label;

/// Where labels and camera events go; cheap to clone.
#[derive(Clone, Debug)]
pub struct Bus {
    outbox: Outbox,
}

impl Bus {
    /// Starts the publisher task (it connects in the background, so this never
    /// waits on the network) and registers its metrics in `registry`. Runs
    /// until `cancel`, then flushes for up to 0.5 s; await the returned
    /// handle (with a timeout) at shutdown.
    pub fn start(
        config: NatsConfig,
        auth: NatsAuth,
        registry: &prometheus::Registry,
        cancel: CancellationToken,
    ) -> (Bus, tokio::task::JoinHandle<()>) {
        let outbox = Outbox::new(config.buffer_len, BusMetrics::new(registry));
        let task = tokio::spawn(publisher::run(config, auth, outbox.clone(), cancel));
        (Bus { outbox }, task)
    }

    /// Queues a label for `labels.<camera>`; never blocks.
    pub fn label(&self, label: &Label) {
        match message::label_message(label) {
            Ok((subject, id, payload)) => self.outbox.push(subject, id, payload),
            Err(e) => tracing::warn!(camera = %label.camera, error = %e, "label not serialisable; not published"),
        }
    }

    /// Queues a camera state change for `events.<camera>`; never blocks.
    pub fn camera_event(&self, event: &CameraEvent<'_>) {
        match message::event_message(event) {
            Ok((subject, id, payload)) => self.outbox.push(subject, id, payload),
            Err(e) => tracing::warn!(camera = %event.camera, error = %e, "event not serialisable; not published"),
        }
    }
}
