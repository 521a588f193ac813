//! A receiving viewer's side of H.264 over RTP (RFC 6184): collects payloads
//! from a [`whep_client::Viewer`] sink and rebuilds Annex B access units, so a
//! test can decode what a WHEP player really got.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use infercast::media::AccessUnit;

use super::whep_client::RtpSink;

/// One RTP packet as received: `(sequence number, timestamp, marker, payload)`.
type Packet = (u16, u32, bool, Vec<u8>);

/// RTP packets as received.
#[derive(Clone, Default)]
pub struct Received(Arc<Mutex<Vec<Packet>>>);

impl Received {
    /// A sink for [`super::whep_client::Viewer::with_sink`] that keeps every payload.
    pub fn sink(&self) -> RtpSink {
        let store = self.0.clone();
        Arc::new(move |p: &rtc::rtp::Packet| {
            let h = &p.header;
            store.lock().unwrap().push((h.sequence_number, h.timestamp, h.marker, p.payload.to_vec()));
        })
    }

    /// Access units rebuilt so far, as a player would: packets in sequence
    /// order (retransmissions put back in place, duplicates dropped), each unit
    /// ending at a packet with the marker bit, Annex B, the RTP timestamp as
    /// pts, IDR ones flagged as keyframes. After a sequence gap (a packet lost
    /// for good) units are dropped up to the next keyframe, as a player waits
    /// for one; the second value counts them.
    pub fn access_units_and_lost(&self) -> (Vec<AccessUnit>, usize) {
        let mut packets = self.0.lock().unwrap().clone();
        // Extend the 16-bit sequence numbers across wraps, then sort and dedupe.
        let mut extended = Vec::with_capacity(packets.len());
        let mut last: Option<i64> = None;
        for p in packets.drain(..) {
            let seq = match last {
                None => i64::from(p.0),
                Some(l) => l + i64::from(p.0.wrapping_sub(l as u16) as i16),
            };
            last = Some(last.map_or(seq, |l| l.max(seq)));
            extended.push((seq, p));
        }
        extended.sort_by_key(|(seq, _)| *seq);
        extended.dedup_by_key(|(seq, _)| *seq);
        let (mut out, mut lost) = (Vec::new(), 0);
        let mut au = Vec::new();
        // A packet of this unit never came / units up to the next keyframe are unusable.
        let (mut gap_in_unit, mut waiting_for_keyframe) = (false, false);
        let mut expected = None;
        for (seq, (_, ts, marker, payload)) in extended {
            if expected.is_some_and(|e| e != seq) {
                (gap_in_unit, waiting_for_keyframe) = (true, true);
            }
            expected = Some(seq + 1);
            depacketize(&payload, &mut au);
            if marker {
                let keyframe = nal_types(&au).contains(&5);
                let data = Bytes::from(std::mem::take(&mut au));
                if gap_in_unit || (waiting_for_keyframe && !keyframe) {
                    gap_in_unit = false;
                    lost += 1;
                    continue;
                }
                waiting_for_keyframe = false;
                out.push(AccessUnit::new(data, i64::from(ts), keyframe, Instant::now(), SystemTime::now()));
            }
        }
        (out, lost)
    }

    /// Waits (polling, at most `within`) until `n` usable access units are in;
    /// returns them and how many were lost. A loopback path loses nothing on a
    /// quiet machine; on a starved one a lost packet costs the rest of its GOP.
    pub fn wait_for_units(&self, n: usize, within: std::time::Duration) -> (Vec<AccessUnit>, usize) {
        let deadline = Instant::now() + within;
        loop {
            let (units, lost) = self.access_units_and_lost();
            if units.len() >= n || Instant::now() > deadline {
                return (units, lost);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// [`Received::access_units_and_lost`] without the count.
    pub fn access_units(&self) -> Vec<AccessUnit> {
        self.access_units_and_lost().0
    }
}

/// Appends the NAL units of one RTP payload (single NAL, STAP-A, FU-A) to `au`.
fn depacketize(payload: &[u8], au: &mut Vec<u8>) {
    let Some(&header) = payload.first() else { return };
    match header & 0x1f {
        1..=23 => {
            au.extend([0, 0, 0, 1]);
            au.extend(payload);
        }
        24 => {
            let mut rest = &payload[1..];
            while rest.len() >= 2 {
                let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                let Some(nal) = rest.get(2..2 + n) else { break };
                au.extend([0, 0, 0, 1]);
                au.extend(nal);
                rest = &rest[2 + n..];
            }
        }
        28 if payload.len() > 2 => {
            let fu = payload[1];
            if fu & 0x80 != 0 {
                au.extend([0, 0, 0, 1, (header & 0xe0) | (fu & 0x1f)]);
            }
            au.extend(&payload[2..]);
        }
        _ => {}
    }
}

fn nal_types(annexb: &[u8]) -> Vec<u8> {
    annexb.windows(4).filter(|w| w[..3] == [0, 0, 1]).map(|w| w[3] & 0x1f).collect()
}
