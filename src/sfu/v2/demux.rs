//! Which session a datagram on the one UDP port belongs to: a STUN binding
//! request names it by our ICE username fragment (`USERNAME` =
//! `<our ufrag>:<viewer's ufrag>`, RFC 8445 §7.2.2), and its source address
//! then names it for everything else (DTLS, SRTP, SRTCP, consent checks).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::RwLock;

/// STUN magic cookie (RFC 5389 §6).
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
/// STUN attribute USERNAME.
const ATTR_USERNAME: u16 = 0x0006;
/// Most addresses one session may be known by (a viewer's candidates).
const MAX_ADDRS_PER_SESSION: usize = 8;

/// A session's place: its shard and id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub shard: usize,
    pub session: String,
}

/// Whether `datagram` is a STUN message (RFC 7983 §7: first byte 0–3, and the cookie).
pub fn is_stun(datagram: &[u8]) -> bool {
    datagram.len() >= 20 && datagram[0] < 4 && datagram[4..8] == MAGIC_COOKIE
}

/// Our ufrag from a STUN message's `USERNAME` (the part before `:`), if any.
pub fn stun_local_ufrag(datagram: &[u8]) -> Option<&str> {
    if !is_stun(datagram) {
        return None;
    }
    let length = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let body = datagram.get(20..20 + length)?;
    let mut at = 0;
    while at + 4 <= body.len() {
        let kind = u16::from_be_bytes([body[at], body[at + 1]]);
        let len = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
        let value = body.get(at + 4..at + 4 + len)?;
        if kind == ATTR_USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next();
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    None
}

/// The routing table: ufrag → session, source address → session.
#[derive(Default)]
pub struct Routes {
    inner: RwLock<Tables>,
}

#[derive(Default)]
struct Tables {
    by_ufrag: HashMap<String, Route>,
    by_addr: HashMap<SocketAddr, Route>,
    addrs_of: HashMap<String, Vec<SocketAddr>>,
}

impl Routes {
    pub fn add(&self, ufrag: &str, route: Route) {
        self.inner.write().expect("routes lock is never poisoned").by_ufrag.insert(ufrag.to_owned(), route);
    }

    /// Forgets the session's ufrag and addresses.
    pub fn remove(&self, ufrag: &str, session: &str) {
        let mut t = self.inner.write().expect("routes lock is never poisoned");
        t.by_ufrag.remove(ufrag);
        for addr in t.addrs_of.remove(session).unwrap_or_default() {
            // Only if the address still names this session (a later session
            // may have taken it over).
            if t.by_addr.get(&addr).is_some_and(|r| r.session == session) {
                t.by_addr.remove(&addr);
            }
        }
    }

    /// Entries in the tables: (ufrags, addresses, sessions with addresses).
    pub fn sizes(&self) -> (usize, usize, usize) {
        let t = self.inner.read().expect("routes lock is never poisoned");
        (t.by_ufrag.len(), t.by_addr.len(), t.addrs_of.len())
    }

    /// Replaces a session's ufrag (ICE restart).
    pub fn rename(&self, old: &str, new: &str) {
        let mut t = self.inner.write().expect("routes lock is never poisoned");
        if let Some(route) = t.by_ufrag.remove(old) {
            t.by_ufrag.insert(new.to_owned(), route);
        }
    }

    /// The session a STUN message names by its ufrag (an ICE-TCP
    /// connection's first frame); no address is learnt.
    pub fn by_stun(&self, datagram: &[u8]) -> Option<Route> {
        let ufrag = stun_local_ufrag(datagram)?;
        self.inner.read().expect("routes lock is never poisoned").by_ufrag.get(ufrag).cloned()
    }

    /// The session a datagram from `from` belongs to; a STUN request with a
    /// known ufrag also teaches the table its address.
    pub fn route(&self, from: SocketAddr, datagram: &[u8]) -> Option<Route> {
        if let Some(ufrag) = stun_local_ufrag(datagram) {
            let route = self.inner.read().expect("routes lock is never poisoned").by_ufrag.get(ufrag).cloned()?;
            let known = self.inner.read().expect("routes lock is never poisoned").by_addr.get(&from) == Some(&route);
            if !known {
                let mut guard = self.inner.write().expect("routes lock is never poisoned");
                let t = &mut *guard;
                let addrs = t.addrs_of.entry(route.session.clone()).or_default();
                if addrs.len() < MAX_ADDRS_PER_SESSION {
                    addrs.push(from);
                    if let Some(previous) = t.by_addr.insert(from, route.clone())
                        && let Some(theirs) = t.addrs_of.get_mut(&previous.session)
                    {
                        // The address moved to another session (a reused socket).
                        theirs.retain(|a| *a != from);
                    }
                }
            }
            return Some(route);
        }
        self.inner.read().expect("routes lock is never poisoned").by_addr.get(&from).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binding request with USERNAME `user` (and one more attribute after it).
    fn binding_request(user: &str) -> Vec<u8> {
        let mut attrs = Vec::new();
        attrs.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        attrs.extend_from_slice(&(user.len() as u16).to_be_bytes());
        attrs.extend_from_slice(user.as_bytes());
        attrs.resize(attrs.len().div_ceil(4) * 4, 0);
        attrs.extend_from_slice(&[0x80, 0x29, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]); // ICE-CONTROLLING
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attrs);
        m
    }

    #[test]
    fn stun_names_the_session_then_the_address_does() {
        let routes = Routes::default();
        routes.add("srv1", Route { shard: 1, session: "a".into() });
        let viewer: SocketAddr = "127.0.0.1:50000".parse().expect("address");
        let dtls = [22u8, 0xfe, 0xfd, 0, 0];
        assert_eq!(routes.route(viewer, &dtls), None, "unknown address");
        assert_eq!(stun_local_ufrag(&binding_request("srv1:abc")), Some("srv1"));
        assert_eq!(routes.route(viewer, &binding_request("srv1:abc")).map(|r| r.shard), Some(1));
        assert_eq!(routes.route(viewer, &dtls).map(|r| r.session), Some("a".into()));
        assert_eq!(routes.route(viewer, &binding_request("other:abc")), None);
        routes.rename("srv1", "srv2");
        assert!(routes.route(viewer, &binding_request("srv2:abc")).is_some());
        routes.remove("srv2", "a");
        assert_eq!(routes.route(viewer, &dtls), None);
        assert_eq!(routes.sizes(), (0, 0, 0), "nothing left of a removed session");
    }

    #[test]
    fn an_address_taken_over_by_a_new_session_stays_with_it() {
        let routes = Routes::default();
        let viewer: SocketAddr = "127.0.0.1:50000".parse().expect("address");
        let dtls = [22u8, 0xfe, 0xfd, 0, 0];
        routes.add("old", Route { shard: 0, session: "a".into() });
        routes.add("new", Route { shard: 1, session: "b".into() });
        assert!(routes.route(viewer, &binding_request("old:x")).is_some());
        assert!(routes.route(viewer, &binding_request("new:x")).is_some());
        routes.remove("old", "a");
        assert_eq!(routes.route(viewer, &dtls).map(|r| r.session), Some("b".into()), "the new session keeps it");
        routes.remove("new", "b");
        assert_eq!(routes.sizes(), (0, 0, 0));
    }

    #[test]
    fn truncated_or_foreign_datagrams_name_nothing() {
        let m = binding_request("srv1:abc");
        assert_eq!(stun_local_ufrag(&m[..24]), None);
        assert!(!is_stun(&[0x80, 0x60, 0, 1]));
        let mut long = m.clone();
        long[3] = 0xff; // length past the end
        assert_eq!(stun_local_ufrag(&long), None);
    }
}
