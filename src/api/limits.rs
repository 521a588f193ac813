//! Limits on what a stranger can make the server hold: WHEP sessions (in all,
//! per camera and per client IP, counted from the POST until the session
//! ends), open label streams (SSE), snapshots in flight per camera, and WHEP
//! request bodies. A refusal is 503 (429 for one client's own share) with
//! `Retry-After` and the error object, counted in
//! `infercast_limit_refusals_total{limit}`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::ApiError;
pub use crate::config::LimitsConfig;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus::{IntCounterVec, Opts, Registry};

/// Largest WHEP request body (an SDP offer is a few KiB).
pub const WHEP_BODY_BYTES: usize = 64 * 1024;
/// What a refused client is told to wait, seconds.
const RETRY_AFTER_S: u32 = 5;

/// The counters behind the limits. Cheap to clone.
#[derive(Clone)]
pub struct Limits {
    pub config: LimitsConfig,
    sse_open: Arc<AtomicUsize>,
    /// Snapshots in flight by camera (an entry per camera name asked for; the
    /// handler asks only for existing cameras).
    snapshots: Arc<Mutex<HashMap<String, Arc<AtomicUsize>>>>,
    whep: Arc<Mutex<WhepCounts>>,
    refusals: IntCounterVec,
}

/// WHEP sessions held now: being created or open.
#[derive(Default)]
struct WhepCounts {
    total: usize,
    per_camera: HashMap<String, usize>,
    per_ip: HashMap<IpAddr, usize>,
}

/// One WHEP session's place in the counts, from its POST to its end (or to
/// the POST's failure or abort); given back when dropped.
pub struct WhepSlot {
    counts: Arc<Mutex<WhepCounts>>,
    camera: String,
    ip: IpAddr,
}

impl Drop for WhepSlot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        release(&mut c.per_camera, &self.camera);
        release(&mut c.per_ip, &self.ip);
    }
}

/// One less under `key`; the entry goes at zero (the maps never grow with past clients).
fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

/// A held slot; frees itself when dropped.
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn take(counter: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
    counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok()?;
    Some(Slot(counter.clone()))
}

impl Limits {
    /// The limits of `config`; registers the refusal counter in `registry`.
    pub fn new(config: LimitsConfig, registry: &Registry) -> Limits {
        let refusals = IntCounterVec::new(
            Opts::new("limit_refusals_total", "Requests refused by a limit (503 with Retry-After)"),
            &["limit"],
        )
        .expect("metric options are valid");
        if let Err(e) = registry.register(Box::new(refusals.clone())) {
            tracing::warn!(error = %e, "cannot register the limit metrics");
        }
        Limits { config, sse_open: Arc::default(), snapshots: Arc::default(), whep: Arc::default(), refusals }
    }

    /// The refusal counter (`infercast_limit_refusals_total{limit}`), for limits
    /// enforced elsewhere (the HTTP listener's connection cap).
    pub fn refusals(&self) -> IntCounterVec {
        self.refusals.clone()
    }

    /// A label stream slot, or the refusal.
    pub fn sse(&self) -> Result<Slot, Refused> {
        take(&self.sse_open, self.config.sse_streams)
            .ok_or_else(|| self.refuse("sse_streams", format!("{} label streams are open", self.config.sse_streams)))
    }

    /// A snapshot slot of `camera`, or the refusal.
    pub fn snapshot(&self, camera: &str) -> Result<Slot, Refused> {
        let max = self.config.snapshots_in_flight_per_camera;
        let counter = {
            let mut map = self.snapshots.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(camera.to_owned()).or_default().clone()
        };
        take(&counter, max).ok_or_else(|| {
            self.refuse("snapshots_in_flight", format!("{max} snapshots of camera {camera:?} are being taken"))
        })
    }

    /// A place for one more WHEP session of `camera` from client `ip`, held
    /// until the returned slot drops; or the refusal (429 when `ip` has its
    /// share, 503 when the server or the camera is full).
    pub fn whep(&self, camera: &str, ip: IpAddr) -> Result<WhepSlot, Refused> {
        let mut c = self.whep.lock().unwrap_or_else(|p| p.into_inner());
        let on_camera = c.per_camera.get(camera).copied().unwrap_or(0);
        let from_ip = c.per_ip.get(&ip).copied().unwrap_or(0);
        if c.total >= self.config.whep_sessions {
            return Err(self.refuse("whep_sessions", format!("{} viewer sessions are open", c.total)));
        }
        if on_camera >= self.config.whep_sessions_per_camera {
            return Err(self.refuse("whep_sessions_per_camera", format!("{on_camera} viewers watch this camera")));
        }
        if from_ip >= self.config.whep_sessions_per_ip {
            let mut refused = self.refuse("whep_sessions_per_ip", format!("{from_ip} viewer sessions come from {ip}"));
            refused.status = StatusCode::TOO_MANY_REQUESTS;
            return Err(refused);
        }
        c.total += 1;
        *c.per_camera.entry(camera.to_owned()).or_default() += 1;
        *c.per_ip.entry(ip).or_default() += 1;
        Ok(WhepSlot { counts: self.whep.clone(), camera: camera.to_owned(), ip })
    }

    fn refuse(&self, limit: &str, why: String) -> Refused {
        self.refusals.with_label_values(&[limit]).inc();
        Refused {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!("{why}: the limit `{limit}` is reached; retry in {RETRY_AFTER_S} s"),
        }
    }
}

/// A request a limit refused (already counted): answers 503 (or 429) with `Retry-After`.
#[derive(Debug)]
pub struct Refused {
    status: StatusCode,
    message: String,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let mut r = ApiError::new(self.status, "limit_reached", self.message).into_response();
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_come_back_when_dropped() {
        let config = LimitsConfig { sse_streams: 2, snapshots_in_flight_per_camera: 1, ..Default::default() };
        let l = Limits::new(config, &Registry::new());
        let (a, b) = (l.sse().ok().unwrap(), l.sse().ok().unwrap());
        let refused = l.sse().err().unwrap().into_response();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()[header::RETRY_AFTER], "5");
        drop(a);
        assert!(l.sse().is_ok());
        drop(b);
        let s = l.snapshot("door").ok().unwrap();
        assert!(l.snapshot("door").is_err());
        assert!(l.snapshot("yard").is_ok(), "each camera has its own count");
        drop(s);
        assert!(l.snapshot("door").is_ok());
    }

    #[test]
    fn whep_sessions_are_bounded_in_all_per_camera_and_per_ip() {
        let config = LimitsConfig {
            whep_sessions: 4,
            whep_sessions_per_camera: 3,
            whep_sessions_per_ip: 2,
            ..Default::default()
        };
        let l = Limits::new(config, &Registry::new());
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().expect("IP"), "10.0.0.2".parse().expect("IP"));
        let a1 = l.whep("door", a).ok().unwrap();
        let _a2 = l.whep("yard", a).ok().unwrap();
        let per_ip = l.whep("door", a).err().unwrap().into_response();
        assert_eq!(per_ip.status(), StatusCode::TOO_MANY_REQUESTS);
        let _b1 = l.whep("door", b).ok().unwrap();
        let _c1 = l.whep("door", "10.0.0.3".parse().expect("IP")).ok().unwrap();
        let full = l.whep("door", "10.0.0.4".parse().expect("IP")).err().unwrap().into_response();
        assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE, "door has 3 of 3");
        let total = l.whep("gate", "10.0.0.4".parse().expect("IP")).err().unwrap().into_response();
        assert_eq!(total.status(), StatusCode::SERVICE_UNAVAILABLE, "4 of 4 in all");
        drop(a1);
        assert!(l.whep("door", a).is_ok(), "a freed slot comes back");
    }
}
