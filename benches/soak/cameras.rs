//! The cameras' side of the soak: the flapping camera (its RTSP server killed and
//! restarted on the same port, or frozen with SIGSTOP and thawed, in turn) and a
//! watcher that polls `/api/cameras` every second and remembers every state each
//! camera left `streaming` for.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::common::rtsp::RtspServer;
use super::probe;

/// Down time of one flap: long enough to be noticed (`frame_timeout_ms` is 5 s).
const KILLED_FOR: Duration = Duration::from_secs(3);
const FROZEN_FOR: Duration = Duration::from_secs(8);

/// Sleeps `d` in small steps; false if `stop` was raised meanwhile.
fn sleep_unless(stop: &AtomicBool, d: Duration) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100).min(until.saturating_duration_since(Instant::now())));
    }
    !stop.load(Ordering::SeqCst)
}

/// Polls `/api/cameras` until every camera in `names` streams; false after `within`.
pub fn wait_all_streaming(base: &str, names: &[String], within: Duration) -> bool {
    let until = Instant::now() + within;
    loop {
        let cams = probe::cameras(base).unwrap_or_default();
        if names.iter().all(|n| cams.iter().any(|(c, s, _)| c == n && s == "streaming")) {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Flaps one camera's RTSP server every `every` until stopped. The server is shared with
/// the flapping thread, so that dropping the `Flapper` (a panic in the soak) still kills it.
pub struct Flapper {
    server: Arc<Mutex<Option<RtspServer>>>,
    handle: Option<JoinHandle<u64>>,
}

impl Flapper {
    pub fn start(server: RtspServer, every: Duration, stop: Arc<AtomicBool>) -> Flapper {
        let server = Arc::new(Mutex::new(Some(server)));
        let shared = server.clone();
        let handle = std::thread::spawn(move || {
            let start = Instant::now();
            let mut flaps = 0u64;
            // Flap n begins at n × `every` from the start, whatever the previous one took.
            while sleep_unless(&stop, (start + every * (flaps as u32 + 1)).saturating_duration_since(Instant::now())) {
                let mut guard = shared.lock().unwrap_or_else(|p| p.into_inner());
                let Some(server) = guard.as_mut() else { break };
                flaps += 1;
                if flaps % 2 == 1 {
                    server.kill();
                    std::thread::sleep(KILLED_FOR);
                    server.restart(); // same port, same mount
                } else {
                    server.freeze();
                    std::thread::sleep(FROZEN_FOR);
                    server.thaw();
                }
            }
            flaps
        });
        Flapper { server, handle: Some(handle) }
    }

    /// Waits for the flap in progress to end (the server is up and thawed again); the
    /// server (None if a restart failed) and the number of flaps.
    pub fn finish(mut self) -> (Option<RtspServer>, u64) {
        let flaps = self.handle.take().and_then(|h| h.join().ok()).unwrap_or(0);
        (self.server.lock().unwrap_or_else(|p| p.into_inner()).take(), flaps)
    }
}

impl Drop for Flapper {
    fn drop(&mut self) {
        drop(self.server.lock().unwrap_or_else(|p| p.into_inner()).take());
    }
}

/// What the watcher saw of one camera.
#[derive(Clone, Debug, Default)]
pub struct CameraLog {
    /// Polls in each state other than `streaming`.
    pub left_streaming: BTreeMap<String, u64>,
    /// Times it went from another state back to `streaming`.
    pub recoveries: u64,
    /// Seconds from the start of the soak of the first poll in which it was not streaming.
    pub first_left_at_s: Option<u64>,
    /// Polls in which `/api/cameras` did not answer.
    pub unanswered: u64,
}

/// Everything the watcher saw.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub cameras: BTreeMap<String, CameraLog>,
    pub flapping: String,
    pub polls: u64,
}

pub struct Watcher {
    handle: JoinHandle<Seen>,
}

impl Watcher {
    pub fn start(base: String, names: Vec<String>, flapping: String, stop: Arc<AtomicBool>) -> Watcher {
        let handle = std::thread::spawn(move || {
            let start = Instant::now();
            let mut seen = Seen { flapping, ..Seen::default() };
            let mut last: BTreeMap<String, String> = BTreeMap::new();
            while sleep_unless(&stop, Duration::from_secs(1)) {
                seen.polls += 1;
                let cams = probe::cameras(&base);
                for name in &names {
                    let log = seen.cameras.entry(name.clone()).or_default();
                    let Some(state) = cams.as_ref().and_then(|c| c.iter().find(|(n, ..)| n == name)).map(|c| &c.1)
                    else {
                        log.unanswered += 1;
                        continue;
                    };
                    if state != "streaming" {
                        *log.left_streaming.entry(state.clone()).or_default() += 1;
                        log.first_left_at_s.get_or_insert(start.elapsed().as_secs());
                    } else if last.get(name).is_some_and(|s| s != "streaming") {
                        log.recoveries += 1;
                    }
                    last.insert(name.clone(), state.clone());
                }
            }
            seen
        });
        Watcher { handle }
    }

    pub fn finish(self) -> Seen {
        self.handle.join().unwrap_or_default()
    }
}
