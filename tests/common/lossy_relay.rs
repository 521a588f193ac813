//! A UDP relay between a viewer and the server that drops chosen RTP packets
//! on their way to the viewer (no netem here): the viewer's NACKs then ask for
//! packets it really lost, which SRTP replay protection would refuse if it had
//! them already. Headers of SRTP packets are in the clear, so the relay reads
//! the sequence number of what it drops. A stalling relay stands for a slow
//! viewer: after a while it stops reading, so its socket's receive buffer fills
//! and the kernel drops what the server sends it.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct LossyRelay {
    /// Where the viewer sends (put this in the answer's candidate).
    pub addr: SocketAddr,
    /// Sequence numbers of the RTP packets dropped so far.
    pub dropped: Arc<Mutex<Vec<u16>>>,
    stop: Arc<AtomicBool>,
}

/// RTP (not RTCP, STUN or DTLS): version 2 and a payload type outside 64..=95.
fn rtp_sequence(datagram: &[u8]) -> Option<u16> {
    let rtp = datagram.len() >= 12 && datagram[0] >> 6 == 2 && !(64..=95).contains(&(datagram[1] & 0x7f));
    rtp.then(|| u16::from_be_bytes([datagram[2], datagram[3]]))
}

impl LossyRelay {
    /// Relays between viewers and `server`, dropping every `every`-th RTP
    /// packet toward the viewer, `limit` in all.
    pub fn start(server: SocketAddr, every: usize, limit: usize) -> LossyRelay {
        Self::start_with(server, every, limit, None)
    }

    /// Relays everything, until `after` RTP packets have reached the viewer;
    /// then stops reading what the server sends (the viewer's STUN checks
    /// still reach the server).
    pub fn stalling(server: SocketAddr, after: usize) -> LossyRelay {
        Self::start_with(server, usize::MAX, 0, Some(after))
    }

    fn start_with(server: SocketAddr, every: usize, limit: usize, stall_after: Option<usize>) -> LossyRelay {
        let front = UdpSocket::bind("127.0.0.1:0").unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").unwrap();
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        }
        let addr = front.local_addr().unwrap();
        let viewer: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let dropped: Arc<Mutex<Vec<u16>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (front, back) = (Arc::new(front), Arc::new(back));
        {
            let (front, back, viewer, stop) = (front.clone(), back.clone(), viewer.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = front.recv_from(&mut buf) {
                        *viewer.lock().unwrap() = Some(from);
                        let _ = back.send_to(&buf[..n], server);
                    }
                }
            });
        }
        {
            let (dropped, stop) = (dropped.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                let mut rtp = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    if stall_after.is_some_and(|after| rtp >= after) {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                    let Ok((n, _)) = back.recv_from(&mut buf) else { continue };
                    if let Some(seq) = rtp_sequence(&buf[..n]) {
                        rtp += 1;
                        let mut d = dropped.lock().unwrap();
                        if rtp.is_multiple_of(every) && d.len() < limit {
                            d.push(seq);
                            continue;
                        }
                    }
                    if let Some(to) = *viewer.lock().unwrap() {
                        let _ = front.send_to(&buf[..n], to);
                    }
                }
            });
        }
        LossyRelay { addr, dropped, stop }
    }
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
