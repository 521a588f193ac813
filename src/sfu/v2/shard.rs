//! A send worker of the one-port SFU: owns a set of sessions, one relay
//! subscription per camera track they watch (one wake-up per access unit for
//! the whole shard, not one per viewer), drives their peer connections with
//! datagrams and timers, and flushes what they write in `sendmmsg` batches.
//! Each camera's labels come the same way (one watcher per camera track),
//! to the sessions with a `labels` data channel open.
//! The session that goes first rotates with every access unit; a session
//! hands over at most a burst of datagrams per service, the rest paced one
//! burst per millisecond, so a keyframe never floods one viewer's buffer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use prometheus::Histogram;
use rtc::peer_connection::state::RTCPeerConnectionState;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::batch::{Batch, MAX_BATCH};
use super::demux::Routes;
use super::session::{PACE_INTERVAL, Session};
use crate::hub::TrackKind;
use crate::media::AccessUnit;

/// What a shard is told.
pub(super) enum ShardMsg {
    Add(Box<Session>),
    /// A packet from a viewer: a UDP datagram, or an ICE-TCP frame (`tcp`).
    Datagram {
        session: String,
        from: SocketAddr,
        data: BytesMut,
        tcp: bool,
    },
    Media {
        key: (String, TrackKind),
        au: AccessUnit,
    },
    /// The camera's newest label, for the group's `labels` channels.
    Label {
        key: (String, TrackKind),
        label: Arc<crate::labels::Label>,
    },
    /// End a session; the reply comes once it is closed.
    Remove {
        session: String,
        done: oneshot::Sender<()>,
    },
    /// A WHEP `PATCH` for a session.
    Patch {
        session: String,
        if_match: Option<String>,
        body: String,
        reply: oneshot::Sender<Result<crate::sfu::Patched, crate::sfu::SfuError>>,
    },
    /// A timer fired (internal).
    Tick,
}

enum Wake {
    Msg(ShardMsg),
    Timer,
}

/// How long sessions may take to connect, and stay disconnected.
#[derive(Clone, Copy)]
pub(super) struct Timeouts {
    pub connect: Duration,
    pub disconnected: Duration,
}

/// What the shard tells the SFU when a session has ended.
pub(super) type Ended = Arc<dyn Fn(&Session) + Send + Sync>;

struct Group {
    sessions: Vec<String>,
    /// Index of the session that goes first with the next access unit.
    first: usize,
    relay: CancellationToken,
}

pub(super) struct Shard {
    pub index: usize,
    pub inbox: mpsc::Receiver<ShardMsg>,
    pub to_self: mpsc::Sender<ShardMsg>,
    pub batch: Batch,
    pub routes: Arc<Routes>,
    pub timeouts: Timeouts,
    pub ended: Ended,
    pub cancel: CancellationToken,
    /// Datagrams dropped by the kernel (unreachable, too large).
    pub send_failures: Arc<Mutex<u64>>,
    /// `webrtc_shard_latency_seconds{shard}` (none without a registry).
    pub latency: Option<Histogram>,
    /// Send-latency histograms (and the access unit's `received_at`) of the
    /// sessions whose last packets of an access unit are queued, observed
    /// once they are flushed.
    pub waiting: Vec<(Histogram, Instant)>,
    /// Sessions with paced output left, serviced again at `next_pace`.
    pub backlog: Vec<String>,
}

impl Shard {
    pub async fn run(mut self) {
        let mut sessions: HashMap<String, Session> = HashMap::new();
        let mut groups: HashMap<(String, TrackKind), Group> = HashMap::new();
        let mut touched: Vec<String> = Vec::new();
        let mut next_pace = Instant::now();
        loop {
            let mut deadline = sessions.values().filter_map(|s| s.timeout).min();
            if !self.backlog.is_empty() {
                deadline = Some(deadline.map_or(next_pace, |d| d.min(next_pace)));
            }
            let sleep_until = deadline.map_or_else(
                || tokio::time::Instant::now() + Duration::from_secs(1),
                |d| tokio::time::Instant::from_std(d.max(Instant::now())),
            );
            let wake = tokio::select! {
                m = self.inbox.recv() => match m {
                    Some(m) => Wake::Msg(m),
                    None => break,
                },
                () = tokio::time::sleep_until(sleep_until) => Wake::Timer,
                () = self.cancel.cancelled() => break,
            };
            let msg = match wake {
                Wake::Msg(msg) => msg,
                Wake::Timer => {
                    let now = Instant::now();
                    for s in sessions.values_mut() {
                        if s.timeout.is_some_and(|t| t <= now) {
                            s.handle_timeout(now);
                            touched.push(s.id.clone());
                        }
                    }
                    if now >= next_pace {
                        // The paced sessions' next bursts.
                        touched.append(&mut self.backlog);
                        next_pace = now + PACE_INTERVAL;
                    }
                    ShardMsg::Tick
                }
            };
            match msg {
                ShardMsg::Add(session) => {
                    let key = (session.camera.clone(), session.kind);
                    let group = groups.entry(key.clone()).or_insert_with(|| {
                        let relay = self.cancel.child_token();
                        spawn_relay(key, session.tracks.clone(), self.to_self.clone(), relay.clone());
                        Group { sessions: Vec::new(), first: 0, relay }
                    });
                    group.sessions.push(session.id.clone());
                    touched.push(session.id.clone());
                    sessions.insert(session.id.clone(), *session);
                }
                ShardMsg::Datagram { session, from, data, tcp } => {
                    if let Some(s) = sessions.get_mut(&session) {
                        s.handle_datagram(from, data, tcp);
                        touched.push(session);
                    }
                }
                ShardMsg::Tick => {}
                ShardMsg::Patch { session, if_match, body, reply } => {
                    let result = match sessions.get_mut(&session) {
                        Some(s) => {
                            let old = s.ufrag.clone();
                            let r = s.patch(if_match.as_deref(), &body);
                            if s.ufrag != old {
                                self.routes.rename(&old, &s.ufrag);
                            }
                            touched.push(session.clone());
                            r
                        }
                        None => Err(crate::sfu::SfuError::SessionNotFound(session)),
                    };
                    let _ = reply.send(result);
                }
                ShardMsg::Media { key, au } => {
                    if let Some(group) = groups.get_mut(&key) {
                        // Flushed as the batch fills, so the first viewers'
                        // packets leave while the later ones are encrypted.
                        let n = group.sessions.len();
                        for i in 0..n {
                            let id = &group.sessions[(group.first + i) % n];
                            if let Some(s) = sessions.get_mut(id) {
                                if s.send(&au, true) {
                                    s.latency_pending = Some(au.received_at);
                                }
                                self.service(s);
                                if self.batch.len() >= MAX_BATCH {
                                    self.flush_sent().await;
                                }
                            }
                        }
                        self.flush_sent().await;
                        if let Some(h) = &self.latency {
                            h.observe(au.received_at.elapsed().as_secs_f64());
                        }
                        group.first = (group.first + 1) % n.max(1);
                    }
                }
                ShardMsg::Label { key, label } => {
                    if let Some(group) = groups.get(&key) {
                        for id in &group.sessions {
                            if let Some(s) = sessions.get_mut(id)
                                && s.send_label(&label)
                            {
                                touched.push(id.clone());
                            }
                        }
                    }
                }
                ShardMsg::Remove { session, done } => {
                    if let Some(s) = sessions.get_mut(&session) {
                        s.close(&mut self.batch);
                        self.flush().await;
                        if let Some(s) = sessions.remove(&session) {
                            self.forget(&s, &mut groups);
                        }
                    }
                    let _ = done.send(());
                }
            }
            for id in touched.drain(..) {
                if let Some(s) = sessions.get_mut(&id) {
                    self.service(s);
                }
            }
            self.flush_sent().await;
            let now = Instant::now();
            let over: Vec<String> = sessions.values().filter(|s| self.expired(s, now)).map(|s| s.id.clone()).collect();
            for id in over {
                if let Some(mut s) = sessions.remove(&id) {
                    s.close(&mut self.batch);
                    self.forget(&s, &mut groups);
                }
            }
            self.flush().await;
        }
        for (_, mut s) in sessions.drain() {
            s.close(&mut self.batch);
            self.routes.remove(&s.ufrag, &s.id);
            (self.ended)(&s);
        }
        self.flush().await;
    }

    /// Services a session: its output (one paced burst) into the batch; a
    /// session with output left joins the backlog, one whose access unit has
    /// all been queued has its send latency observed at the next flush.
    fn service(&mut self, s: &mut Session) {
        s.service(&mut self.batch);
        if s.backlogged {
            if !self.backlog.contains(&s.id) {
                self.backlog.push(s.id.clone());
            }
        } else if let Some(at) = s.latency_pending.take() {
            self.waiting.push((s.metrics.send_latency.clone(), at));
        }
    }

    /// Flushes, then observes the send latency of the sessions whose last
    /// packets of an access unit just left.
    async fn flush_sent(&mut self) {
        self.flush().await;
        for (h, at) in self.waiting.drain(..) {
            h.observe(at.elapsed().as_secs_f64());
        }
    }

    async fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let failed = self.batch.flush().await;
        if failed > 0 {
            *self.send_failures.lock().expect("counter lock is never poisoned") += failed as u64;
        }
    }

    /// Whether a session is over: failed or closed, never connected within
    /// the connect timeout, silent or disconnected for longer than allowed.
    fn expired(&self, s: &Session, now: Instant) -> bool {
        match s.state {
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => true,
            // Silence this long means the viewer is gone (no consent checks).
            RTCPeerConnectionState::Connected | RTCPeerConnectionState::Disconnected => {
                now.duration_since(s.last_received) > self.timeouts.disconnected
            }
            _ => now.duration_since(s.created_at) > self.timeouts.connect,
        }
    }

    fn forget(&self, s: &Session, groups: &mut HashMap<(String, TrackKind), Group>) {
        let key = (s.camera.clone(), s.kind);
        if let Some(group) = groups.get_mut(&key) {
            group.sessions.retain(|id| *id != s.id);
            if group.sessions.is_empty() {
                group.relay.cancel();
                groups.remove(&key);
            }
        }
        self.routes.remove(&s.ufrag, &s.id);
        tracing::debug!(shard = self.index, session = %s.id, "session left the shard");
        (self.ended)(s);
    }
}

/// Forwards one camera track's live access units, and its camera's newest
/// labels, to the shard (one relay subscription and one label watcher,
/// however many of the shard's sessions watch it; a label replaced before the
/// shard took it is skipped, as a viewer wants the newest).
fn spawn_relay(
    key: (String, TrackKind),
    tracks: Arc<crate::hub::CameraTracks>,
    to: mpsc::Sender<ShardMsg>,
    cancel: CancellationToken,
) {
    tokio::spawn(async move {
        let mut sub = tracks.track(key.1).subscribe_relay();
        sub.gop.clear(); // each session takes the GOP itself when it connects
        let mut labels = tracks.label.subscribe();
        labels.mark_unchanged(); // each session takes the latest itself when its channel opens
        loop {
            let msg = tokio::select! {
                au = sub.next() => match au {
                    Some(au) => ShardMsg::Media { key: key.clone(), au },
                    None => return,
                },
                changed = labels.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let Some(label) = labels.borrow_and_update().clone() else { continue };
                    ShardMsg::Label { key: key.clone(), label }
                }
                () = cancel.cancelled() => return,
            };
            if to.send(msg).await.is_err() {
                return;
            }
        }
    });
}
