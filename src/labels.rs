//! The labels store: the latest classification per camera, a bounded history
//! ring per camera, and a broadcast for live subscribers (SSE).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::infer::ClassScore;

/// One classification of one camera frame, as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Label {
    pub camera: String,
    /// Top-1 class name.
    #[schema(value_type = String)]
    pub label: Arc<str>,
    pub class_id: u32,
    /// Top-1 softmax probability, `0.0..=1.0`.
    pub score: f32,
    /// The five most probable classes, best first.
    pub top5: Vec<ClassScore>,
    /// The frame's presentation time, RTP 90 kHz ticks.
    pub frame_pts: i64,
    /// When the camera captured the frame (RFC 3339).
    pub captured_at: DateTime<Utc>,
    /// Capture → label available, in ms.
    pub latency_ms: f64,
}

/// Latest labels and bounded history of every camera.
pub struct LabelStore {
    history_len: usize,
    by_camera: RwLock<HashMap<String, VecDeque<Arc<Label>>>>,
    tx: broadcast::Sender<Arc<Label>>,
    /// `[nats]`: every label is also queued for JetStream (never lossy by
    /// lag, unlike the broadcast; bounded, oldest dropped and counted).
    bus: Option<crate::bus::Bus>,
}

impl LabelStore {
    /// Keeps at most `history_len` (≥ 1) labels per camera.
    pub fn new(history_len: usize) -> LabelStore {
        LabelStore::with_bus(history_len, None)
    }

    /// Like [`LabelStore::new`], also queueing every label on `bus`.
    pub fn with_bus(history_len: usize, bus: Option<crate::bus::Bus>) -> LabelStore {
        LabelStore { history_len: history_len.max(1), by_camera: RwLock::default(), tx: broadcast::channel(256).0, bus }
    }

    /// Records a label and tells live subscribers. A camera's `captured_at`
    /// never goes backwards (a camera whose clock jumps back, by hours even,
    /// would otherwise hide its new labels from `since=` polling): a label
    /// older than the previous one gets the previous time plus 1 µs. Returns
    /// the label as stored.
    pub fn push(&self, label: Label) -> Arc<Label> {
        self.record(label, true)
    }

    /// Records a label another node of the cluster made (read back from
    /// JetStream): like [`LabelStore::push`] but never published again, and
    /// ignored unless it is newer than the camera's latest label (so a label
    /// seen twice, or this node's own, is stored once). True if stored.
    pub fn push_remote(&self, label: Label) -> bool {
        if self.latest(&label.camera).is_some_and(|last| label.captured_at <= last.captured_at) {
            return false;
        }
        self.record(label, false);
        true
    }

    fn record(&self, mut label: Label, publish: bool) -> Arc<Label> {
        {
            let mut map = self.by_camera.write().expect("labels lock is never poisoned");
            let ring = map.entry(label.camera.clone()).or_default();
            if let Some(last) = ring.back()
                && label.captured_at <= last.captured_at
            {
                label.captured_at = last.captured_at + chrono::Duration::microseconds(1);
            }
            let label = Arc::new(label);
            if ring.len() == self.history_len {
                ring.pop_front();
            }
            ring.push_back(label.clone());
            if publish && let Some(bus) = &self.bus {
                bus.label(&label);
            }
            let _ = self.tx.send(label.clone()); // no subscribers is fine
            label
        }
    }

    /// The latest label of every camera that has one, by camera name.
    pub fn latest_all(&self) -> Vec<Arc<Label>> {
        let map = self.by_camera.read().expect("labels lock is never poisoned");
        let mut all: Vec<Arc<Label>> = map.values().filter_map(|r| r.back().cloned()).collect();
        all.sort_by(|a, b| a.camera.cmp(&b.camera));
        all
    }

    pub fn latest(&self, camera: &str) -> Option<Arc<Label>> {
        self.by_camera.read().expect("labels lock is never poisoned").get(camera).and_then(|r| r.back().cloned())
    }

    /// History of `camera`, oldest first: labels captured after `since` (if
    /// given), at most the newest `limit`.
    pub fn history(&self, camera: &str, since: Option<DateTime<Utc>>, limit: usize) -> Vec<Arc<Label>> {
        let map = self.by_camera.read().expect("labels lock is never poisoned");
        let Some(ring) = map.get(camera) else { return Vec::new() };
        let newer: Vec<Arc<Label>> = ring.iter().filter(|l| since.is_none_or(|s| l.captured_at > s)).cloned().collect();
        let skip = newer.len().saturating_sub(limit);
        newer.into_iter().skip(skip).collect()
    }

    /// Forgets `camera`'s labels (the camera was removed).
    pub fn forget(&self, camera: &str) {
        self.by_camera.write().expect("labels lock is never poisoned").remove(camera);
    }

    /// Live feed of every new label.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Label>> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(camera: &str, n: i64) -> Label {
        Label {
            camera: camera.into(),
            label: Arc::from("espresso"),
            class_id: 967,
            score: 0.9,
            top5: Vec::new(),
            frame_pts: n,
            captured_at: DateTime::from_timestamp(1_700_000_000 + n, 0).expect("valid time"),
            latency_ms: 10.0,
        }
    }

    #[test]
    fn captured_at_never_goes_back_so_polling_clients_lose_nothing() {
        let s = LabelStore::new(10);
        s.push(label("a", 5));
        let seen = s.history("a", None, 10)[0].captured_at;
        // The camera's sender reports now put its clock three hours back.
        let mut back = label("a", 6);
        back.captured_at -= chrono::Duration::hours(3);
        s.push(back);
        s.push(label("a", 4));
        let newer = s.history("a", Some(seen), 10);
        assert_eq!(newer.iter().map(|l| l.frame_pts).collect::<Vec<_>>(), [6, 4], "no label lost to since=");
        assert!(newer[0].captured_at > seen && newer[1].captured_at > newer[0].captured_at);
    }

    #[test]
    fn remote_labels_are_stored_once_and_in_order() {
        let s = LabelStore::new(10);
        s.push(label("a", 5));
        assert!(!s.push_remote(label("a", 5)), "this node's own label read back");
        assert!(!s.push_remote(label("a", 4)), "older than the latest");
        assert!(s.push_remote(label("a", 6)));
        assert!(s.push_remote(label("b", 1)), "a camera seen first from another node");
        assert_eq!(s.history("a", None, 10).iter().map(|l| l.frame_pts).collect::<Vec<_>>(), [5, 6]);
        let json = serde_json::to_string(&*s.latest("a").expect("label")).expect("serialises");
        let back: Label = serde_json::from_str(&json).expect("the API's JSON reads back");
        assert_eq!((back.frame_pts, back.captured_at), (6, s.latest("a").expect("label").captured_at));
    }

    #[test]
    fn history_is_bounded_and_filtered() {
        let s = LabelStore::new(3);
        for n in 0..5 {
            s.push(label("a", n));
        }
        s.push(label("b", 0));
        let h = s.history("a", None, 100);
        assert_eq!(h.iter().map(|l| l.frame_pts).collect::<Vec<_>>(), [2, 3, 4], "oldest dropped");
        let since = DateTime::from_timestamp(1_700_000_002, 0);
        assert_eq!(s.history("a", since, 100).len(), 2);
        assert_eq!(s.history("a", None, 1)[0].frame_pts, 4, "limit keeps the newest");
        assert_eq!(s.latest("a").map(|l| l.frame_pts), Some(4));
        assert_eq!(s.latest_all().len(), 2);
        assert!(s.history("nope", None, 10).is_empty());
    }

    #[tokio::test]
    async fn subscribers_see_new_labels() {
        let s = LabelStore::new(10);
        let mut rx = s.subscribe();
        s.push(label("a", 7));
        assert_eq!(rx.recv().await.map(|l| l.frame_pts).ok(), Some(7));
    }
}
