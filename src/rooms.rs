//! Every camera is a room: who watches it (a display name, the track, since
//! when) and a text chat with joins and leaves, for the page and API clients.
//! Bounded everywhere: history per room (`[limits] chat_history`), message
//! length (`chat_message_chars`), posts per client IP per 10 s
//! (`chat_messages_per_10s`), the IPs a room remembers for that ([`MAX_POSTERS`]).
//! Text only: stored and sent as JSON strings, never as markup.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::config::LimitsConfig;
use crate::hub::TrackKind;

/// Longest display name, in characters.
pub const MAX_NAME_CHARS: usize = 40;
/// Client IPs a room tracks for its post rate limit (the oldest is forgotten first).
pub const MAX_POSTERS: usize = 4096;
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// What happens in a room, as the SSE stream and the history show it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RoomEvent {
    /// A chat message.
    Chat { name: String, text: String, at: DateTime<Utc> },
    /// A viewer session started (`track`: `raw` or `annotated`).
    Join { name: String, track: &'static str, at: DateTime<Utc> },
    /// A viewer session ended.
    Leave { name: String, track: &'static str, at: DateTime<Utc> },
}

/// A current viewer, as `GET /api/cameras/{name}/viewers` lists it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ViewerInfo {
    pub name: String,
    /// `raw` or `annotated`.
    pub track: &'static str,
    pub since: DateTime<Utc>,
    /// The viewer's address: shown to admins only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub ip: Option<IpAddr>,
    /// Labels sent on the session's `labels` data channel so far (0 without one).
    pub labels_sent: u64,
}

/// Why a chat message was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("{0}")]
    Invalid(String),
    #[error("the message has {chars} characters; at most {max} are allowed")]
    TooLong { chars: usize, max: usize },
    #[error("at most {max} messages per 10 s from one address; try again in {retry_after_s} s")]
    RateLimited { max: usize, retry_after_s: u64 },
}

struct Room {
    /// Each viewer with its session's labels-sent count.
    viewers: BTreeMap<u64, (ViewerInfo, Arc<AtomicU64>)>,
    history: VecDeque<Arc<RoomEvent>>,
    tx: broadcast::Sender<Arc<RoomEvent>>,
    /// Post times per client IP, within the last [`RATE_WINDOW`].
    posts: HashMap<IpAddr, VecDeque<Instant>>,
}

impl Room {
    fn new() -> Room {
        Room {
            viewers: BTreeMap::new(),
            history: VecDeque::new(),
            tx: broadcast::channel(256).0,
            posts: HashMap::new(),
        }
    }
}

/// The rooms of every camera.
pub struct Rooms {
    limits: LimitsConfig,
    rooms: Mutex<HashMap<String, Room>>,
    next_id: AtomicU64,
}

/// A display name as given (`None`: `viewer-<n>`): trimmed, control
/// characters removed, at most [`MAX_NAME_CHARS`].
pub fn display_name(given: Option<&str>, fallback_id: u64) -> String {
    let clean: String = given.unwrap_or("").chars().filter(|c| !c.is_control()).collect();
    let clean: String = clean.trim().chars().take(MAX_NAME_CHARS).collect();
    if clean.is_empty() { format!("viewer-{}", fallback_id % 10_000) } else { clean }
}

impl Rooms {
    pub fn new(limits: LimitsConfig) -> Arc<Rooms> {
        Arc::new(Rooms { limits, rooms: Mutex::default(), next_id: AtomicU64::new(1) })
    }

    fn with_room<T>(&self, camera: &str, f: impl FnOnce(&mut Room) -> T) -> T {
        let mut rooms = self.rooms.lock().expect("rooms lock is never poisoned");
        f(rooms.entry(camera.to_owned()).or_insert_with(Room::new))
    }

    /// A viewer about to join `camera`'s room: the [`Member`] goes with its
    /// WHEP session (its drop, when the session ends, is the leave); the
    /// [`MemberHandle`] says [`MemberHandle::joined`] once the session exists.
    pub fn member(
        self: &Arc<Self>,
        camera: &str,
        name: Option<&str>,
        track: TrackKind,
        ip: IpAddr,
    ) -> (Member, MemberHandle) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let inner = Arc::new(MemberInner {
            rooms: self.clone(),
            camera: camera.to_owned(),
            id,
            name: display_name(name, id),
            track: track.as_str(),
            ip,
            labels_sent: Arc::default(),
            state: Mutex::new(MemberState::default()),
        });
        (Member(inner.clone()), MemberHandle(inner))
    }

    /// Current viewers of `camera`, oldest first; `with_ips` for admins.
    pub fn viewers(&self, camera: &str, with_ips: bool) -> Vec<ViewerInfo> {
        self.with_room(camera, |r| {
            r.viewers
                .values()
                .map(|(v, sent)| ViewerInfo {
                    ip: v.ip.filter(|_| with_ips),
                    labels_sent: sent.load(Ordering::Relaxed),
                    ..v.clone()
                })
                .collect()
        })
    }

    /// Chat history of `camera`, oldest first.
    pub fn history(&self, camera: &str) -> Vec<Arc<RoomEvent>> {
        self.with_room(camera, |r| r.history.iter().cloned().collect())
    }

    /// The history, then every new event of `camera`'s room.
    pub fn subscribe(&self, camera: &str) -> (Vec<Arc<RoomEvent>>, broadcast::Receiver<Arc<RoomEvent>>) {
        self.with_room(camera, |r| (r.history.iter().cloned().collect(), r.tx.subscribe()))
    }

    /// Posts a chat message from `ip` to `camera`'s room.
    pub fn post(&self, camera: &str, name: &str, text: &str, ip: IpAddr) -> Result<Arc<RoomEvent>, ChatError> {
        let text: String = text.chars().filter(|c| !c.is_control() || *c == '\n').collect();
        let text = text.trim();
        if text.is_empty() {
            return Err(ChatError::Invalid("the message is empty".into()));
        }
        let chars = text.chars().count();
        if chars > self.limits.chat_message_chars {
            return Err(ChatError::TooLong { chars, max: self.limits.chat_message_chars });
        }
        let name = display_name(Some(name), 0);
        let (max, now) = (self.limits.chat_messages_per_10s, Instant::now());
        self.with_room(camera, |r| {
            if !r.posts.contains_key(&ip) && r.posts.len() >= MAX_POSTERS {
                r.posts.retain(|_, times| times.back().is_some_and(|t| now.duration_since(*t) < RATE_WINDOW));
                if r.posts.len() >= MAX_POSTERS
                    && let Some(oldest) = r.posts.iter().min_by_key(|(_, t)| t.back().copied()).map(|(ip, _)| *ip)
                {
                    r.posts.remove(&oldest);
                }
            }
            let times = r.posts.entry(ip).or_default();
            while times.front().is_some_and(|t| now.duration_since(*t) >= RATE_WINDOW) {
                times.pop_front();
            }
            if times.len() >= max {
                let wait = times.front().map_or(RATE_WINDOW, |t| RATE_WINDOW.saturating_sub(now.duration_since(*t)));
                return Err(ChatError::RateLimited { max, retry_after_s: wait.as_secs().max(1) });
            }
            times.push_back(now);
            let event = Arc::new(RoomEvent::Chat { name, text: text.to_owned(), at: Utc::now() });
            if r.history.len() >= self.limits.chat_history {
                r.history.pop_front();
            }
            r.history.push_back(event.clone());
            let _ = r.tx.send(event.clone());
            Ok(event)
        })
    }
}

struct MemberInner {
    rooms: Arc<Rooms>,
    camera: String,
    id: u64,
    name: String,
    track: &'static str,
    ip: IpAddr,
    labels_sent: Arc<AtomicU64>,
    state: Mutex<MemberState>,
}

#[derive(Default)]
struct MemberState {
    joined: bool,
    ended: bool,
}

/// A viewer in a room, held by its WHEP session; dropping it (the session
/// ended) removes the viewer and tells the room it left.
pub struct Member(Arc<MemberInner>);

/// The WHEP handler's side of a [`Member`].
pub struct MemberHandle(Arc<MemberInner>);

impl MemberHandle {
    /// The session exists: list the viewer and send `join` (nothing if the
    /// session has already ended).
    pub fn joined(&self) {
        let m = &self.0;
        let mut state = m.state.lock().expect("member lock is never poisoned");
        if state.joined || state.ended {
            return;
        }
        state.joined = true;
        let info =
            ViewerInfo { name: m.name.clone(), track: m.track, since: Utc::now(), ip: Some(m.ip), labels_sent: 0 };
        let event = Arc::new(RoomEvent::Join { name: m.name.clone(), track: m.track, at: info.since });
        m.rooms.with_room(&m.camera, |r| {
            r.viewers.insert(m.id, (info, m.labels_sent.clone()));
            let _ = r.tx.send(event);
        });
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }
}

impl Member {
    /// A label went out on the viewer's `labels` channel (`labels_sent`).
    pub fn label_sent(&self) {
        self.0.labels_sent.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let m = &self.0;
        let mut state = m.state.lock().expect("member lock is never poisoned");
        state.ended = true;
        if !state.joined {
            return;
        }
        let event = Arc::new(RoomEvent::Leave { name: m.name.clone(), track: m.track, at: Utc::now() });
        m.rooms.with_room(&m.camera, |r| {
            r.viewers.remove(&m.id);
            let _ = r.tx.send(event);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rooms(history: usize, per_10s: usize) -> Arc<Rooms> {
        Rooms::new(LimitsConfig {
            chat_history: history,
            chat_messages_per_10s: per_10s,
            chat_message_chars: 20,
            ..LimitsConfig::default()
        })
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn names_are_cleaned_and_bounded() {
        assert_eq!(display_name(Some("  alice\u{7}  "), 1), "alice");
        assert_eq!(display_name(None, 12345), "viewer-2345");
        assert_eq!(display_name(Some("x".repeat(99).as_str()), 1).chars().count(), MAX_NAME_CHARS);
    }

    #[test]
    fn joins_and_leaves_follow_the_member() {
        let r = rooms(10, 10);
        let (_, mut rx) = r.subscribe("door");
        let (m, handle) = r.member("door", Some("bob"), TrackKind::Raw, IP);
        assert!(r.viewers("door", false).is_empty(), "not listed before its session exists");
        handle.joined();
        let listed = r.viewers("door", false);
        assert_eq!((listed[0].name.as_str(), listed[0].track, listed[0].ip), ("bob", "raw", None));
        assert_eq!(r.viewers("door", true)[0].ip, Some(IP), "admins see the address");
        drop(m);
        assert!(r.viewers("door", false).is_empty());
        assert!(matches!(&*rx.try_recv().expect("join"), RoomEvent::Join { name, .. } if name == "bob"));
        assert!(matches!(&*rx.try_recv().expect("leave"), RoomEvent::Leave { name, .. } if name == "bob"));
        let (m, handle) = r.member("door", None, TrackKind::Raw, IP);
        drop(m);
        handle.joined();
        assert!(rx.try_recv().is_err(), "a session that ended first neither joins nor leaves");
        assert!(r.viewers("door", false).is_empty());
    }

    #[test]
    fn chat_is_bounded_in_length_rate_and_history() {
        let r = rooms(3, 4);
        assert!(matches!(r.post("door", "a", &"x".repeat(21), IP), Err(ChatError::TooLong { chars: 21, max: 20 })));
        assert!(matches!(r.post("door", "a", " \u{1b} ", IP), Err(ChatError::Invalid(_))));
        for i in 0..4 {
            r.post("door", "a", &format!("m{i}"), IP).expect("within the rate");
        }
        assert!(matches!(r.post("door", "a", "m4", IP), Err(ChatError::RateLimited { max: 4, .. })));
        let other: IpAddr = "10.0.0.9".parse().expect("an address");
        r.post("door", "b", "hi", other).expect("another address has its own rate");
        let texts: Vec<String> = r
            .history("door")
            .iter()
            .map(|e| match &**e {
                RoomEvent::Chat { text, .. } => text.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(texts, ["m2", "m3", "hi"], "the newest 3 kept");
        assert!(r.history("yard").is_empty(), "rooms are per camera");
    }

    #[test]
    fn a_room_remembers_a_bounded_number_of_posters() {
        let r = rooms(1, 1);
        for i in 0..(MAX_POSTERS as u32 + 10) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            r.post("door", "a", "x", ip).expect("first post of each address");
        }
        let posters = r.rooms.lock().expect("lock").get("door").map_or(0, |room| room.posts.len());
        assert!(posters <= MAX_POSTERS, "{posters} addresses remembered");
    }
}
