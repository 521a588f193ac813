//! The hub: per camera × track (`raw`, `annotated`) a broadcast of access units
//! with the current GOP cached from its keyframe, so a new subscriber starts at
//! once. A slow subscriber loses its own data; publishing never waits.
//! Viewers are counted per track: each subscription of the per-session SFU,
//! plus the sessions of a relay subscription (the one-port SFU's shards
//! share one per track and count their sessions with [`Track::add_viewer`]).
//! Beside the tracks, each camera's latest label (for the `labels` data
//! channel of the viewer sessions, keyed to the frame's pts).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::media::AccessUnit;

/// Access units buffered per subscriber before it starts losing them.
const CHANNEL_CAPACITY: usize = 256;
/// A subscriber this many access units behind (about 1 s of video) skips to the
/// next keyframe: a live viewer wants the present, not a growing delay.
pub const MAX_BACKLOG_ACCESS_UNITS: usize = 25;
/// Keyframe requests are granted at most this often per track, however many
/// viewers send PLIs: each forced IDR costs every viewer bitrate.
pub const MIN_KEYFRAME_INTERVAL: Duration = Duration::from_millis(500);
/// Largest cached GOP; a longer one stops being cached until the next keyframe.
const MAX_GOP_ACCESS_UNITS: usize = 600;
const MAX_GOP_BYTES: usize = 32 << 20;

/// The two tracks every camera publishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackKind {
    /// The camera's own H.264, forwarded untouched.
    Raw,
    /// Decoded, labelled and re-encoded once by infercast.
    Annotated,
}

impl TrackKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TrackKind::Raw => "raw",
            TrackKind::Annotated => "annotated",
        }
    }

    pub fn parse(s: &str) -> Option<TrackKind> {
        match s {
            "raw" => Some(TrackKind::Raw),
            "annotated" => Some(TrackKind::Annotated),
            _ => None,
        }
    }
}

#[derive(Default)]
struct Gop {
    access_units: Vec<AccessUnit>,
    bytes: usize,
    /// False after overflow until the next keyframe.
    complete: bool,
}

/// One camera × track broadcast.
pub struct Track {
    tx: broadcast::Sender<AccessUnit>,
    gop: Mutex<Gop>,
    keyframe_requested: AtomicBool,
    /// When the producer last took a keyframe request.
    keyframe_granted_at: Mutex<Option<Instant>>,
    /// Relay subscriptions now (not viewers themselves).
    relays: Arc<AtomicUsize>,
    /// Viewers fed through relays.
    relayed_viewers: Arc<AtomicUsize>,
}

/// What a new subscriber gets: the cached GOP (starting at a keyframe, possibly
/// empty) and the live feed that continues right after it.
pub struct Subscription {
    pub gop: Vec<AccessUnit>,
    rx: broadcast::Receiver<AccessUnit>,
    /// Set after this subscriber fell behind: skip to the next keyframe.
    resync: bool,
    /// Access units this subscriber lost by being slow.
    pub lost: u64,
    /// Set for a relay: not a viewer itself (see [`Track::subscribe_relay`]).
    _relay: Option<CountGuard>,
}

/// Decrements its counter when dropped.
pub struct CountGuard(Arc<AtomicUsize>);

impl CountGuard {
    fn new(counter: &Arc<AtomicUsize>) -> CountGuard {
        counter.fetch_add(1, Ordering::Relaxed);
        CountGuard(counter.clone())
    }
}

impl Drop for CountGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Subscription {
    /// The next access unit to forward, resynchronising at a keyframe after
    /// falling [`MAX_BACKLOG_ACCESS_UNITS`] behind. `None` once the track is gone.
    pub async fn next(&mut self) -> Option<AccessUnit> {
        loop {
            match self.rx.recv().await {
                Ok(au) => {
                    if self.rx.len() >= MAX_BACKLOG_ACCESS_UNITS {
                        self.lost += 1;
                        self.resync = true;
                        continue;
                    }
                    if self.resync && !au.keyframe {
                        self.lost += 1;
                        continue;
                    }
                    self.resync = false;
                    return Some(au);
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    self.lost += n;
                    self.resync = true;
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

impl Default for Track {
    fn default() -> Self {
        Track::new()
    }
}

impl Track {
    pub fn new() -> Track {
        Track {
            tx: broadcast::channel(CHANNEL_CAPACITY).0,
            gop: Mutex::default(),
            keyframe_requested: AtomicBool::new(false),
            keyframe_granted_at: Mutex::new(None),
            relays: Arc::default(),
            relayed_viewers: Arc::default(),
        }
    }

    /// Sends `au` to every subscriber and updates the GOP cache. Never blocks on
    /// subscribers.
    pub fn publish(&self, au: AccessUnit) {
        let mut gop = self.gop.lock().expect("hub lock is never poisoned: no panics while held");
        if au.keyframe {
            gop.access_units.clear();
            gop.bytes = 0;
            gop.complete = true;
        }
        if gop.complete {
            if gop.access_units.len() < MAX_GOP_ACCESS_UNITS && gop.bytes + au.data.len() <= MAX_GOP_BYTES {
                gop.bytes += au.data.len();
                gop.access_units.push(au.clone());
            } else {
                gop.access_units.clear();
                gop.bytes = 0;
                gop.complete = false;
            }
        }
        // Sent under the lock so subscribe() sees GOP and feed without gap or overlap.
        let _ = self.tx.send(au); // no subscribers is fine
    }

    /// Subscribes: the cached GOP plus everything published after it.
    pub fn subscribe(&self) -> Subscription {
        let gop = self.gop.lock().expect("hub lock is never poisoned: no panics while held");
        let rx = self.tx.subscribe();
        let cached = if gop.complete { gop.access_units.clone() } else { Vec::new() };
        // Without a cached keyframe the live feed must start at one.
        Subscription { resync: cached.is_empty(), gop: cached, rx, lost: 0, _relay: None }
    }

    /// Like [`Track::subscribe`], for a relay that feeds several viewers (a
    /// shard of the one-port SFU): it does not count as a viewer; each of its
    /// viewers holds an [`Track::add_viewer`] guard instead.
    pub fn subscribe_relay(&self) -> Subscription {
        let mut sub = self.subscribe();
        sub._relay = Some(CountGuard::new(&self.relays));
        sub
    }

    /// Counts one viewer fed through a relay until the guard is dropped.
    pub fn add_viewer(&self) -> CountGuard {
        CountGuard::new(&self.relayed_viewers)
    }

    /// The cached GOP now (from its keyframe; empty while none is complete).
    pub fn gop(&self) -> Vec<AccessUnit> {
        let gop = self.gop.lock().expect("hub lock is never poisoned: no panics while held");
        if gop.complete { gop.access_units.clone() } else { Vec::new() }
    }

    /// Current number of viewers: subscribers, relays not counted, plus the
    /// viewers relays feed.
    pub fn subscriber_count(&self) -> usize {
        let relays = self.relays.load(Ordering::Relaxed);
        self.tx.receiver_count().saturating_sub(relays) + self.relayed_viewers.load(Ordering::Relaxed)
    }

    /// Drops the cached GOP (the source restarted; old pictures no longer apply).
    pub fn reset(&self) {
        let mut gop = self.gop.lock().expect("hub lock is never poisoned: no panics while held");
        *gop = Gop::default();
    }

    /// Asks the producer for a keyframe (viewer joined or sent a PLI).
    pub fn request_keyframe(&self) {
        self.keyframe_requested.store(true, Ordering::Relaxed);
    }

    /// Whether a keyframe request is pending (not taken, perhaps held back by
    /// [`MIN_KEYFRAME_INTERVAL`]).
    pub fn keyframe_pending(&self) -> bool {
        self.keyframe_requested.load(Ordering::Relaxed)
    }

    /// Takes a pending keyframe request (producer side, once per frame). A
    /// request within [`MIN_KEYFRAME_INTERVAL`] of the last granted one stays
    /// pending until that interval has passed.
    pub fn take_keyframe_request(&self) -> bool {
        if !self.keyframe_requested.load(Ordering::Relaxed) {
            return false;
        }
        let mut granted_at = self.keyframe_granted_at.lock().expect("hub lock is never poisoned");
        if granted_at.is_some_and(|t| t.elapsed() < MIN_KEYFRAME_INTERVAL) {
            return false;
        }
        *granted_at = Some(Instant::now());
        self.keyframe_requested.swap(false, Ordering::Relaxed)
    }
}

/// Both tracks of one camera, and its latest label.
#[derive(Default)]
pub struct CameraTracks {
    pub raw: Track,
    pub annotated: Track,
    /// The latest label (`None` until the first): every classification
    /// replaces it; a watcher that falls behind sees only the newest.
    pub label: tokio::sync::watch::Sender<Option<Arc<crate::labels::Label>>>,
}

impl CameraTracks {
    /// Makes `label` the camera's latest (tells the watchers).
    pub fn publish_label(&self, label: Arc<crate::labels::Label>) {
        self.label.send_replace(Some(label));
    }

    pub fn track(&self, kind: TrackKind) -> &Track {
        match kind {
            TrackKind::Raw => &self.raw,
            TrackKind::Annotated => &self.annotated,
        }
    }
}

/// All cameras' tracks, by camera name.
#[derive(Default)]
pub struct Hub {
    cameras: RwLock<HashMap<String, Arc<CameraTracks>>>,
}

impl Hub {
    /// The tracks of `camera`, created on first use.
    pub fn camera(&self, camera: &str) -> Arc<CameraTracks> {
        if let Some(t) = self.cameras.read().expect("hub lock is never poisoned").get(camera) {
            return t.clone();
        }
        self.cameras.write().expect("hub lock is never poisoned").entry(camera.to_owned()).or_default().clone()
    }

    /// Forgets `camera`'s tracks (the camera was removed): a camera added again
    /// under its name gets new ones.
    pub fn remove(&self, camera: &str) {
        self.cameras.write().expect("hub lock is never poisoned").remove(camera);
    }

    /// The tracks of `camera` if it exists.
    pub fn get(&self, camera: &str) -> Option<Arc<CameraTracks>> {
        self.cameras.read().expect("hub lock is never poisoned").get(camera).cloned()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Instant, SystemTime};

    use bytes::Bytes;

    use super::*;

    fn au(n: i64, keyframe: bool) -> AccessUnit {
        AccessUnit::new(Bytes::from(vec![n as u8; 10]), n * 3600, keyframe, Instant::now(), SystemTime::now())
    }

    #[tokio::test]
    async fn new_subscriber_starts_at_the_cached_keyframe_then_goes_live() {
        let t = Track::new();
        t.publish(au(0, false)); // before any keyframe: not cached
        t.publish(au(1, true));
        t.publish(au(2, false));
        let mut s = t.subscribe();
        assert_eq!(s.gop.iter().map(|a| a.pts_90k / 3600).collect::<Vec<_>>(), [1, 2]);
        t.publish(au(3, false));
        assert_eq!(s.next().await.map(|a| a.pts_90k / 3600), Some(3));
        t.publish(au(4, true));
        assert_eq!(t.subscribe().gop.len(), 1, "a keyframe restarts the GOP");
    }

    #[tokio::test]
    async fn a_slow_subscriber_loses_its_own_data_and_resyncs_at_a_keyframe() {
        let t = Track::new();
        t.publish(au(0, true));
        let mut slow = t.subscribe();
        for n in 1..(CHANNEL_CAPACITY as i64 + 50) {
            t.publish(au(n, n % 100 == 0));
        }
        t.publish(au(1000, true));
        let next = slow.next().await.expect("still subscribed");
        assert!(next.keyframe, "resumes at a keyframe");
        assert!(slow.lost > 0);
        let mut fresh = t.subscribe();
        t.publish(au(1001, false));
        assert_eq!(fresh.gop.len(), 1);
        assert_eq!(fresh.next().await.map(|a| a.pts_90k / 3600), Some(1001));
    }

    #[tokio::test]
    async fn a_subscriber_a_second_behind_skips_to_the_next_keyframe() {
        let t = Track::new();
        t.publish(au(0, true));
        let mut s = t.subscribe();
        // 40 access units queued (1.6 s at 25 fps), keyframes at 0 and 30.
        for n in 1..=40 {
            t.publish(au(n, n == 30));
        }
        let next = s.next().await.expect("subscribed");
        assert_eq!(next.pts_90k / 3600, 30, "skipped to the keyframe once the backlog was under 1 s");
        assert_eq!(s.lost, 29);
        assert_eq!(s.next().await.map(|a| a.pts_90k / 3600), Some(31));
    }

    #[test]
    fn keyframe_requests_are_granted_at_most_every_500_ms() {
        let t = Track::new();
        assert!(!t.take_keyframe_request(), "nothing requested");
        t.request_keyframe();
        assert!(t.take_keyframe_request());
        assert!(!t.take_keyframe_request(), "taken");
        // A storm of PLIs from many viewers right after: held back, not lost.
        for _ in 0..100 {
            t.request_keyframe();
        }
        assert!(!t.take_keyframe_request(), "within 500 ms of the last IDR");
        std::thread::sleep(MIN_KEYFRAME_INTERVAL);
        assert!(t.take_keyframe_request(), "granted once the interval passed");
        assert!(!t.take_keyframe_request(), "one IDR for the whole storm");
    }

    #[test]
    fn without_a_cached_keyframe_the_feed_waits_for_one() {
        let t = Track::new();
        t.publish(au(0, false));
        let s = t.subscribe();
        assert!(s.gop.is_empty() && s.resync);
        assert_eq!(t.subscriber_count(), 1);
        drop(s);
        assert_eq!(t.subscriber_count(), 0);
    }
}
