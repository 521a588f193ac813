//! Browser sessions behind the HttpOnly cookie: random ids that stand for a
//! principal for 12 hours, at most [`MAX_SESSIONS`] at a time (the oldest go
//! first), so a stranger cannot make the table grow without bound.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;

use super::Principal;

/// How long a session lasts (the cookie's `Max-Age` too), seconds.
pub const SESSION_TTL_S: u64 = 12 * 3600;
const SESSION_TTL: Duration = Duration::from_secs(SESSION_TTL_S);
/// Most sessions kept; opening one more ends the oldest.
pub const MAX_SESSIONS: usize = 10_000;

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, (Principal, Instant)>>,
}

impl Sessions {
    pub fn open(&self, principal: Principal) -> String {
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let mut map = self.map.lock().expect("session lock is never poisoned");
        let now = Instant::now();
        map.retain(|_, (_, expires)| *expires > now);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, (_, e))| *e).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(id.clone(), (principal, now + SESSION_TTL));
        id
    }

    pub fn get(&self, id: &str) -> Option<Principal> {
        let map = self.map.lock().expect("session lock is never poisoned");
        map.get(id).filter(|(_, expires)| *expires > Instant::now()).map(|(p, _)| p.clone())
    }

    pub fn close(&self, id: &str) {
        self.map.lock().expect("session lock is never poisoned").remove(id);
    }
}
