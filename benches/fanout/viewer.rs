//! The headless WHEP viewers: a light webrtc 0.21 receiver that only counts
//! packets (unique sequence numbers, marker bits), and ramping them up and down.

use super::*;

/// Recent extended sequence numbers, to count each packet once (NACK resends).
pub const RING: usize = 4096;

/// What one viewer received so far (unique packets only, except `duplicates`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub unique: u64,
    pub duplicates: u64,
    /// Unique packets with the marker bit: one per access unit.
    pub frames: u64,
    /// Highest extended sequence number (0 before the first packet).
    pub highest: i64,
}

pub struct Receiver {
    pub counts: Counts,
    pub ring: Vec<i64>,
}

impl Receiver {
    pub fn new() -> Receiver {
        Receiver { counts: Counts::default(), ring: vec![-1; RING] }
    }

    pub fn on_packet(&mut self, seq: u16, marker: bool) {
        let c = &mut self.counts;
        let ext = if c.unique == 0 {
            (1i64 << 32) + i64::from(seq)
        } else {
            c.highest + i64::from(seq.wrapping_sub(c.highest as u16) as i16)
        };
        let slot = ext.rem_euclid(RING as i64) as usize;
        if self.ring[slot] == ext {
            c.duplicates += 1;
            return;
        }
        self.ring[slot] = ext;
        c.unique += 1;
        c.frames += u64::from(marker);
        c.highest = c.highest.max(ext);
    }
}

/// A light WHEP viewer: counts packets instead of keeping them (the test
/// client's `Viewer::with_sink`), so hundreds can run for minutes.
pub struct Viewer {
    pub inner: whep_client::Viewer,
    pub receiver: Arc<Mutex<Receiver>>,
    /// The WHEP session resource (for DELETE).
    pub location: String,
}

impl Viewer {
    /// Offers recvonly H.264 (like a browser), POSTs to `base` + `path`, applies the answer.
    pub async fn connect(base: String, path: String) -> Result<Viewer, String> {
        Viewer::connect_with(base, path, false).await
    }

    /// Like [`Viewer::connect`]; with `labels`, the viewer also opens the
    /// `labels` data channel (as the viewer page's labelled view does).
    pub async fn connect_with(base: String, path: String, labels: bool) -> Result<Viewer, String> {
        let receiver = Arc::new(Mutex::new(Receiver::new()));
        let counter = receiver.clone();
        let sink: whep_client::RtpSink =
            Arc::new(move |p| counter.lock().unwrap().on_packet(p.header.sequence_number, p.header.marker));
        let inner = whep_client::Viewer::build(whep_client::Offer::H264, Some(sink), labels).await;
        let offer_sdp = inner.offer_sdp.clone();
        let reply = tokio::task::spawn_blocking(move || whep_client::post(&base, &path, "application/sdp", &offer_sdp))
            .await
            .map_err(|e| e.to_string())?;
        if reply.status != 201 {
            inner.close().await;
            return Err(format!("POST: {} {}", reply.status, reply.body));
        }
        inner.apply_answer(&reply.body).await;
        Ok(Viewer { inner, receiver, location: reply.location.unwrap_or_default() })
    }

    pub async fn connected(&self, within: Duration) -> bool {
        self.inner.connected(within).await
    }

    pub fn counts(&self) -> Counts {
        self.receiver.lock().unwrap().counts
    }
}

/// Adds viewers of `track` until there are `n` (`CONNECT_BATCH` at a time); returns failures.
pub async fn ramp(viewers: &mut Vec<Viewer>, n: usize, base: &str, track: &str) -> Vec<String> {
    ramp_with(viewers, n, base, track, false).await
}

/// Like [`ramp`]; with `labels`, every viewer opens the `labels` data channel.
pub async fn ramp_with(viewers: &mut Vec<Viewer>, n: usize, base: &str, track: &str, labels: bool) -> Vec<String> {
    let mut failures = Vec::new();
    let mut attempts = 0;
    while viewers.len() < n && attempts < n + CONNECT_BATCH {
        let batch = CONNECT_BATCH.min(n - viewers.len());
        attempts += batch;
        let path = format!("/whep/{CAMERA}/{track}");
        let joined =
            futures::future::join_all((0..batch).map(|_| Viewer::connect_with(base.to_owned(), path.clone(), labels)))
                .await;
        for v in joined {
            match v {
                Ok(v) if v.connected(Duration::from_secs(20)).await => viewers.push(v),
                Ok(v) => {
                    failures.push("did not connect within 20 s".to_owned());
                    close(vec![v], base).await;
                }
                Err(e) => failures.push(e),
            }
        }
    }
    failures
}

/// Ends the sessions (WHEP DELETE, `CONNECT_BATCH` at a time) and closes the peer connections.
pub async fn close(viewers: Vec<Viewer>, base: &str) {
    for chunk in viewers.chunks(CONNECT_BATCH) {
        let deletes = chunk.iter().map(|v| {
            let (base, location) = (base.to_owned(), v.location.clone());
            tokio::task::spawn_blocking(move || whep_client::delete(&base, &location))
        });
        futures::future::join_all(deletes).await;
        futures::future::join_all(chunk.iter().map(|v| v.inner.close())).await;
    }
}

/// Waits (bounded) until every viewer has received at least one frame.
pub async fn all_receiving(viewers: &[Viewer], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if viewers.iter().all(|v| v.counts().frames > 0) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
