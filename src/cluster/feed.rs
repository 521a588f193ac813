//! Labels of cameras other nodes pull, read back from the JetStream stream
//! (subjects `labels.>`) into this node's label store, so `/api/labels`, the
//! history and the SSE stream of any node cover every camera. An ordered
//! consumer replays the last [`REPLAY`] first (history for a node that just
//! joined), then follows live; it is recreated after any failure, and after
//! [`STALL`] without a message.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::labels::{Label, LabelStore};
use crate::pipeline::Camera;

/// How far back a new feed starts.
const REPLAY: Duration = Duration::from_secs(600);
/// A feed that delivers nothing for this long is made again.
const STALL: Duration = Duration::from_secs(10);

/// Runs until `cancel`.
pub(super) async fn run(
    js: jetstream::Context,
    stream: String,
    labels: Arc<LabelStore>,
    cameras: Arc<BTreeMap<String, Arc<Camera>>>,
    cancel: CancellationToken,
) {
    let mut start = chrono::Utc::now() - chrono::Duration::from_std(REPLAY).expect("600 s fits");
    loop {
        tokio::select! {
            last = follow(&js, &stream, start, &labels, &cameras) => {
                if let Some(last) = last {
                    start = last;
                }
            }
            () = cancel.cancelled() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = cancel.cancelled() => return,
        }
    }
}

/// Follows the stream from `start` until an error; returns the capture time
/// of the last label stored, to resume from.
async fn follow(
    js: &jetstream::Context,
    stream: &str,
    start: chrono::DateTime<chrono::Utc>,
    labels: &LabelStore,
    cameras: &BTreeMap<String, Arc<Camera>>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    let stream = match js.get_stream(stream).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "cluster: label stream not there yet");
            return None;
        }
    };
    let config = consumer::push::OrderedConfig {
        deliver_subject: js_inbox(js),
        filter_subject: "labels.>".into(),
        deliver_policy: consumer::DeliverPolicy::ByStartTime { start_time: start },
        ..Default::default()
    };
    let mut messages = match stream.create_consumer(config).await {
        Ok(c) => match c.messages().await {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "cluster: cannot follow the label stream");
                return None;
            }
        },
        Err(e) => {
            tracing::debug!(error = %e, "cluster: cannot create the label consumer");
            return None;
        }
    };
    let mut last = None;
    loop {
        // An ordered consumer can go quiet for good after a server it used
        // died (seen in tests/cluster.rs); after STALL without a message it is
        // made again from the last label stored (duplicates are skipped).
        let message = match tokio::time::timeout(STALL, messages.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => {
                tracing::debug!(error = %e, "cluster: label feed interrupted");
                break;
            }
            Ok(None) => break,
            Err(_) => {
                tracing::debug!(stall_s = STALL.as_secs(), "cluster: no label read back for a while; following again");
                break;
            }
        };
        let Ok(label) = serde_json::from_slice::<Label>(&message.payload) else { continue };
        // This node's own cameras are recorded as they are classified.
        if cameras.get(&label.camera).is_none_or(|c| c.is_active()) {
            continue;
        }
        let at = label.captured_at;
        if labels.push_remote(label) {
            last = Some(at);
        }
    }
    last
}

fn js_inbox(js: &jetstream::Context) -> String {
    js.client().new_inbox()
}
