//! Limits on what a stranger can make the server hold: WHEP sessions (in all
//! and per camera), open label streams (SSE), snapshots in flight per camera,
//! and WHEP request bodies. A refusal is 503 with `Retry-After` and the error
//! object, counted in `infercast_limit_refusals_total{limit}`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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
    snapshots: Arc<HashMap<String, Arc<AtomicUsize>>>,
    refusals: IntCounterVec,
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
    /// Limits for `cameras`; registers the refusal counter in `registry`.
    pub fn new(config: LimitsConfig, cameras: impl Iterator<Item = String>, registry: &Registry) -> Limits {
        let refusals = IntCounterVec::new(
            Opts::new("limit_refusals_total", "Requests refused by a limit (503 with Retry-After)"),
            &["limit"],
        )
        .expect("metric options are valid");
        if let Err(e) = registry.register(Box::new(refusals.clone())) {
            tracing::warn!(error = %e, "cannot register the limit metrics");
        }
        let snapshots = cameras.map(|c| (c, Arc::default())).collect();
        Limits { config, sse_open: Arc::default(), snapshots: Arc::new(snapshots), refusals }
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
        self.snapshots.get(camera).and_then(|c| take(c, max)).ok_or_else(|| {
            self.refuse("snapshots_in_flight", format!("{max} snapshots of camera {camera:?} are being taken"))
        })
    }

    /// Checks room for one more WHEP session: `total` open now, `on_camera` of them on this camera.
    pub fn whep(&self, total: usize, on_camera: usize) -> Result<(), Refused> {
        if total >= self.config.whep_sessions {
            return Err(self.refuse("whep_sessions", format!("{total} viewer sessions are open")));
        }
        if on_camera >= self.config.whep_sessions_per_camera {
            return Err(self.refuse("whep_sessions_per_camera", format!("{on_camera} viewers watch this camera")));
        }
        Ok(())
    }

    fn refuse(&self, limit: &str, why: String) -> Refused {
        self.refusals.with_label_values(&[limit]).inc();
        Refused(format!("{why}: the limit `{limit}` is reached; retry in {RETRY_AFTER_S} s"))
    }
}

/// A request a limit refused (already counted): answers 503 with `Retry-After`.
#[derive(Debug)]
pub struct Refused(String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let mut r = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "limit_reached", self.0).into_response();
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
        let l = Limits::new(config, ["door".to_owned()].into_iter(), &Registry::new());
        let (a, b) = (l.sse().ok().unwrap(), l.sse().ok().unwrap());
        let refused = l.sse().err().unwrap().into_response();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()[header::RETRY_AFTER], "5");
        drop(a);
        assert!(l.sse().is_ok());
        drop(b);
        let s = l.snapshot("door").ok().unwrap();
        assert!(l.snapshot("door").is_err() && l.snapshot("nope").is_err());
        drop(s);
        assert!(l.snapshot("door").is_ok());
        assert!(l.whep(499, 199).is_ok() && l.whep(500, 0).is_err() && l.whep(0, 200).is_err());
    }
}
