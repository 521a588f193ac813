//! The bounded publish buffer between the media path and the NATS publisher.
//! Pushing never waits on the network: a full buffer drops its oldest message
//! (counted). Messages leave only when JetStream acknowledged them, so an
//! unacknowledged one is sent again, in order, with the same `Nats-Msg-Id`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

use super::metrics::BusMetrics;

/// One message waiting for its JetStream acknowledgement.
#[derive(Debug)]
pub struct Outgoing {
    /// Position in the buffer's order (increasing, never reused).
    pub seq: u64,
    pub subject: String,
    /// `Nats-Msg-Id`: the same on every retry, so JetStream stores it once.
    pub msg_id: String,
    pub payload: Bytes,
}

#[derive(Default)]
struct Queue {
    messages: VecDeque<Arc<Outgoing>>,
    next_seq: u64,
}

/// A cheap handle (clones share one buffer).
#[derive(Clone)]
pub struct Outbox {
    queue: Arc<Mutex<Queue>>,
    notify: Arc<Notify>,
    capacity: usize,
    metrics: BusMetrics,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("capacity", &self.capacity).field("len", &self.len()).finish()
    }
}

impl Outbox {
    /// Holds at most `capacity` (≥ 1) messages.
    pub fn new(capacity: usize, metrics: BusMetrics) -> Outbox {
        Outbox { queue: Arc::default(), notify: Arc::default(), capacity: capacity.max(1), metrics }
    }

    /// Adds a message; never blocks beyond a short lock. When the buffer is
    /// full the oldest message is dropped and counted in `dropped_total`.
    pub fn push(&self, subject: String, msg_id: String, payload: Bytes) {
        let len = {
            let mut q = self.queue.lock().expect("outbox lock is never poisoned");
            if q.messages.len() >= self.capacity {
                q.messages.pop_front();
                self.metrics.dropped.inc();
            }
            let seq = q.next_seq;
            q.next_seq += 1;
            q.messages.push_back(Arc::new(Outgoing { seq, subject, msg_id, payload }));
            q.messages.len()
        };
        self.metrics.buffered.set(len as i64);
        self.notify.notify_one();
    }

    /// The oldest `n` messages, left in the buffer.
    pub fn peek(&self, n: usize) -> Vec<Arc<Outgoing>> {
        let q = self.queue.lock().expect("outbox lock is never poisoned");
        q.messages.iter().take(n).cloned().collect()
    }

    /// Removes every message up to and including `seq` (acknowledged, or
    /// given up on); those already dropped are simply gone.
    pub fn remove_through(&self, seq: u64) {
        let len = {
            let mut q = self.queue.lock().expect("outbox lock is never poisoned");
            while q.messages.front().is_some_and(|m| m.seq <= seq) {
                q.messages.pop_front();
            }
            q.messages.len()
        };
        self.metrics.buffered.set(len as i64);
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.queue.lock().expect("outbox lock is never poisoned").messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves once a message was pushed since the last call (or at once if
    /// one was pushed while nobody waited).
    pub async fn pushed(&self) {
        self.notify.notified().await;
    }

    pub(crate) fn metrics(&self) -> &BusMetrics {
        &self.metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(cap: usize) -> Outbox {
        Outbox::new(cap, BusMetrics::new(&prometheus::Registry::new()))
    }

    fn push(o: &Outbox, n: u64) {
        o.push(format!("labels.cam{n}"), format!("id{n}"), Bytes::from(n.to_string()));
    }

    #[test]
    fn full_buffer_drops_the_oldest_and_counts() {
        let o = outbox(3);
        for n in 0..5 {
            push(&o, n);
        }
        let ids: Vec<String> = o.peek(10).iter().map(|m| m.msg_id.clone()).collect();
        assert_eq!(ids, ["id2", "id3", "id4"]);
        assert_eq!(o.metrics().dropped.get(), 2);
        assert_eq!(o.metrics().buffered.get(), 3);
    }

    #[test]
    fn only_acknowledged_messages_leave_and_retries_keep_their_id() {
        let o = outbox(10);
        for n in 0..4 {
            push(&o, n);
        }
        let batch = o.peek(2);
        o.remove_through(batch[0].seq);
        let again = o.peek(2);
        assert_eq!(again[0].msg_id, "id1", "the unacknowledged one is first again, same id");
        assert_eq!(again[0].seq, batch[1].seq);
        // Dropped while in flight: removing through an old seq is harmless.
        let tiny = outbox(1);
        push(&tiny, 0);
        let old = tiny.peek(1)[0].seq;
        push(&tiny, 1);
        tiny.remove_through(old);
        assert_eq!(tiny.peek(1)[0].msg_id, "id1");
        o.remove_through(u64::MAX);
        assert!(o.is_empty());
        assert_eq!(o.metrics().buffered.get(), 0);
    }
}
