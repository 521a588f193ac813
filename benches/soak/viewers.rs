//! The soak's WHEP viewers: N slots, each a loop of sessions (the test client's
//! webrtc 0.21 peer on a random camera's raw or annotated track, staying a random
//! bounded time, then DELETE and close) until the soak's end. A session that fails
//! (a refused POST, no connection, a panic in the client) is counted and the slot
//! tries again after a pause.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::task::JoinHandle;

use super::Args;
use super::common::whep_client;

const CONNECT_WITHIN: Duration = Duration::from_secs(20);
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// Share of sessions on the annotated track (the rest on raw).
const ANNOTATED_SHARE: f64 = 0.4;

/// Counters shared by every slot.
#[derive(Default)]
struct Counters {
    connected: AtomicU64,
    started: AtomicU64,
    completed: AtomicU64,
    refused: AtomicU64,
    not_connected: AtomicU64,
    panicked: AtomicU64,
    packets: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// A reading of the counters.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Peer connections up right now.
    pub connected: u64,
    /// Sessions begun (POST sent), ended normally, refused (status ≠ 201), never connected, panicked.
    pub started: u64,
    pub completed: u64,
    pub refused: u64,
    pub not_connected: u64,
    pub panicked: u64,
    /// RTP packets received by all viewers so far.
    pub packets: u64,
    pub last_error: Option<String>,
}

impl Counters {
    fn fail(&self, counter: &AtomicU64, why: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().expect("counters lock never poisoned: no panic while held") = Some(why);
    }
}

/// Decrements `connected` when a session ends, however it ends.
struct Up<'a>(&'a AtomicU64);

impl Drop for Up<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One session: join `path`, stay `stay` (or until `end`), leave. False if it failed.
async fn session(base: String, path: String, stay: Duration, end: tokio::time::Instant, c: Arc<Counters>) -> bool {
    let packets = c.clone();
    let sink: whep_client::RtpSink = Arc::new(move |_| {
        packets.packets.fetch_add(1, Ordering::Relaxed);
    });
    let viewer = whep_client::Viewer::with_sink(whep_client::Offer::H264, sink).await;
    c.started.fetch_add(1, Ordering::Relaxed);
    let (b, p, offer) = (base.clone(), path.clone(), viewer.offer_sdp.clone());
    let reply = match tokio::task::spawn_blocking(move || whep_client::post(&b, &p, "application/sdp", &offer)).await {
        Ok(r) => r,
        Err(e) => {
            viewer.close().await;
            c.fail(&c.panicked, format!("POST {path}: {e}"));
            return false;
        }
    };
    if reply.status != 201 {
        viewer.close().await;
        c.fail(&c.refused, format!("POST {path}: {} {}", reply.status, reply.body.trim()));
        return false;
    }
    viewer.apply_answer(&reply.body).await;
    let location = reply.location.unwrap_or_default();
    let up = viewer.connected(CONNECT_WITHIN).await;
    if up {
        c.connected.fetch_add(1, Ordering::Relaxed);
        let _up = Up(&c.connected);
        tokio::time::sleep_until(end.min(tokio::time::Instant::now() + stay)).await;
        c.completed.fetch_add(1, Ordering::Relaxed);
    } else {
        c.fail(&c.not_connected, format!("{path}: not connected within {CONNECT_WITHIN:?}"));
    }
    let deleted = tokio::task::spawn_blocking(move || whep_client::delete(&base, &location).status).await;
    if !matches!(deleted, Ok(200 | 204)) {
        c.fail(&c.refused, format!("DELETE {path}: {deleted:?}"));
    }
    viewer.close().await;
    up
}

pub struct Pool {
    rt: tokio::runtime::Runtime,
    slots: Vec<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl Pool {
    /// Starts `args.viewers` slots on `cameras` until `end`, joining a few seconds apart.
    pub fn start(args: &Args, base: String, cameras: Vec<String>, end: Instant) -> Pool {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime builds");
        let counters = Arc::new(Counters::default());
        let end = tokio::time::Instant::from_std(end);
        let (min, max) = (args.stay_min_s, args.stay_max_s);
        let slots = (0..args.viewers)
            .map(|i| {
                let (base, cameras, c) = (base.clone(), cameras.clone(), counters.clone());
                rt.spawn(async move {
                    tokio::time::sleep(Duration::from_millis(500 * i)).await; // stagger the first joins
                    while tokio::time::Instant::now() < end {
                        let (camera, track, stay) = {
                            let mut rng = rand::rng();
                            let camera = cameras[rng.random_range(0..cameras.len())].clone();
                            let track = if rng.random_bool(ANNOTATED_SHARE) { "annotated" } else { "raw" };
                            (camera, track, Duration::from_secs(rng.random_range(min..=max)))
                        };
                        let path = format!("/whep/{camera}/{track}");
                        let one = tokio::spawn(session(base.clone(), path.clone(), stay, end, c.clone()));
                        let ok = match one.await {
                            Ok(ok) => ok,
                            Err(e) => {
                                c.fail(&c.panicked, format!("{path}: {e}"));
                                false
                            }
                        };
                        if !ok {
                            tokio::time::sleep(RETRY_AFTER).await;
                        }
                    }
                })
            })
            .collect();
        Pool { rt, slots, counters }
    }

    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            connected: n(&c.connected),
            started: n(&c.started),
            completed: n(&c.completed),
            refused: n(&c.refused),
            not_connected: n(&c.not_connected),
            panicked: n(&c.panicked),
            packets: n(&c.packets),
            last_error: c.last_error.lock().expect("counters lock never poisoned").clone(),
        }
    }

    /// Waits (at most `within`) for every slot to leave after the end, then stops the runtime.
    pub fn finish(mut self, within: Duration) -> Stats {
        let slots = std::mem::take(&mut self.slots);
        let all = self.rt.block_on(async { tokio::time::timeout(within, futures::future::join_all(slots)).await });
        if all.is_err() {
            eprintln!("soak: viewers still leaving {within:?} after the end; stopping them");
        }
        let stats = self.stats();
        self.rt.shutdown_timeout(Duration::from_secs(2));
        stats
    }
}
