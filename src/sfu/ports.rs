//! UDP ports for viewer sessions: ephemeral, or one port per session from a
//! configured range (so a firewall or a container needs only that range open).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};

/// Hands out ports from `[first, last]`, each to one session at a time.
pub struct PortPool {
    range: Option<[u16; 2]>,
    state: Arc<Mutex<PoolState>>,
}

#[derive(Default)]
struct PoolState {
    in_use: HashSet<u16>,
    /// Where the next search starts (round robin, so a just-freed port, which the
    /// old connection may still hold for a moment, is taken last).
    next: u16,
}

/// A session's port; back in the pool when dropped.
pub struct PortLease {
    port: u16,
    state: Option<Arc<Mutex<PoolState>>>,
}

impl Drop for PortLease {
    fn drop(&mut self) {
        if let Some(state) = &self.state {
            state.lock().expect("port pool lock is never poisoned").in_use.remove(&self.port);
        }
    }
}

impl PortLease {
    /// The bind addresses: every IP on the leased port (`0` = ephemeral).
    pub fn addrs(&self, ips: &[IpAddr]) -> Vec<String> {
        ips.iter().map(|ip| SocketAddr::new(*ip, self.port).to_string()).collect()
    }
}

impl PortPool {
    pub fn new(range: Option<[u16; 2]>) -> PortPool {
        let next = range.map_or(0, |[first, _]| first);
        PortPool { range, state: Arc::new(Mutex::new(PoolState { in_use: HashSet::new(), next })) }
    }

    /// A port free on every one of `ips`; errors when the whole range is taken.
    pub fn lease(&self, ips: &[IpAddr]) -> Result<PortLease, String> {
        let Some([first, last]) = self.range else {
            return Ok(PortLease { port: 0, state: None });
        };
        let mut state = self.state.lock().expect("port pool lock is never poisoned");
        let len = u32::from(last - first) + 1;
        for i in 0..len {
            let offset = (u32::from(state.next.saturating_sub(first)) + i) % len;
            let port = first + u16::try_from(offset).expect("offset < range length, which fits u16");
            if state.in_use.contains(&port) || !free_on_all(ips, port) {
                continue;
            }
            state.in_use.insert(port);
            state.next = if port == last { first } else { port + 1 };
            return Ok(PortLease { port, state: Some(self.state.clone()) });
        }
        Err(format!("every UDP port in webrtc.udp_port_range [{first}, {last}] is in use ({len} viewers at most)"))
    }
}

/// True when `port` can be bound on each IP right now.
fn free_on_all(ips: &[IpAddr], port: u16) -> bool {
    ips.iter().all(|ip| UdpSocket::bind(SocketAddr::new(*ip, port)).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LO: [IpAddr; 1] = [IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)];

    #[test]
    fn ephemeral_without_a_range() {
        let pool = PortPool::new(None);
        assert_eq!(pool.lease(&LO).expect("always").addrs(&LO), ["127.0.0.1:0"]);
    }

    #[test]
    fn leases_distinct_ports_skips_busy_ones_and_reuses_released() {
        // A range of three, one port of which another socket holds.
        let probe = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let base = probe.local_addr().expect("addr").port();
        drop(probe);
        let Some(last) = base.checked_add(2) else { return };
        let busy = UdpSocket::bind(("127.0.0.1", base + 1));
        let pool = PortPool::new(Some([base, last]));
        let a = pool.lease(&LO).expect("first");
        let b = pool.lease(&LO).expect("second");
        assert_ne!(a.port, b.port);
        if busy.is_ok() {
            assert!(a.port != base + 1 && b.port != base + 1, "busy port skipped");
            let err = pool.lease(&LO).err().expect("range exhausted");
            assert!(err.contains("udp_port_range"), "{err}");
        }
        let freed = a.port;
        drop(a);
        assert_eq!(pool.lease(&LO).expect("freed port").port, freed);
    }
}
