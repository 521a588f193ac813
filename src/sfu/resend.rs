//! The bound on cached-GOP resends (a raw-track viewer's PLI answered from the
//! hub's cached GOP): at most one per session per [`GOP_RESEND_INTERVAL`], and
//! all sessions together at most `[limits] gop_resend_bps`, a token bucket
//! holding two seconds' worth. A refused resend leaves the viewer to the
//! camera's next IDR.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Shortest time between two resends (or keyframe requests) of one session.
pub const GOP_RESEND_INTERVAL: Duration = Duration::from_secs(1);

/// What the bucket may hold, in seconds of `rate_bps`.
const BURST_S: f64 = 2.0;

/// Resend bandwidth shared by every session.
#[derive(Debug)]
pub struct ResendBudget {
    rate_bytes_per_s: f64,
    state: Mutex<(f64, Instant)>,
}

impl ResendBudget {
    /// A full bucket for `rate_bps` bits per second.
    pub fn new(rate_bps: u64) -> ResendBudget {
        let rate_bytes_per_s = rate_bps as f64 / 8.0;
        ResendBudget { rate_bytes_per_s, state: Mutex::new((rate_bytes_per_s * BURST_S, Instant::now())) }
    }

    /// Takes `bytes` from the bucket if they are there.
    pub fn try_take(&self, bytes: usize) -> bool {
        self.try_take_at(bytes, Instant::now())
    }

    fn try_take_at(&self, bytes: usize, now: Instant) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = &mut *state;
        let refill = now.saturating_duration_since(*last).as_secs_f64() * self.rate_bytes_per_s;
        *tokens = (*tokens + refill).min(self.rate_bytes_per_s * BURST_S);
        *last = now;
        if *tokens >= bytes as f64 {
            *tokens -= bytes as f64;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resends_stay_under_the_rate_and_refill() {
        let b = ResendBudget::new(8_000_000); // 1 MB/s, 2 MB burst
        let t0 = Instant::now();
        assert!(b.try_take_at(1_500_000, t0));
        assert!(!b.try_take_at(1_000_000, t0), "0.5 MB left");
        assert!(b.try_take_at(1_000_000, t0 + Duration::from_millis(500)), "refilled to 1 MB");
        assert!(!b.try_take_at(5_000_000, t0 + Duration::from_secs(60)), "more than the burst never fits");
        assert!(b.try_take_at(2_000_000, t0 + Duration::from_secs(60)), "capped at the burst");
    }
}
