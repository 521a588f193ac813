//! A receiving viewer's side of H.264 over RTP (RFC 6184): collects payloads
//! from a [`whep_client::Viewer`] sink and rebuilds Annex B access units, so a
//! test can decode what a WHEP player really got.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use infercast::media::AccessUnit;

use super::whep_client::RtpSink;

/// One RTP packet as received: `(timestamp, marker, payload)`.
type Packet = (u32, bool, Vec<u8>);

/// RTP packets as received.
#[derive(Clone, Default)]
pub struct Received(Arc<Mutex<Vec<Packet>>>);

impl Received {
    /// A sink for [`super::whep_client::Viewer::with_sink`] that keeps every payload.
    pub fn sink(&self) -> RtpSink {
        let store = self.0.clone();
        Arc::new(move |p: &rtc::rtp::Packet| {
            store.lock().unwrap().push((p.header.timestamp, p.header.marker, p.payload.to_vec()));
        })
    }

    /// Access units rebuilt so far (each ends at a packet with the marker bit),
    /// Annex B, with the RTP timestamp as pts and IDR ones flagged as keyframes.
    pub fn access_units(&self) -> Vec<AccessUnit> {
        let packets = self.0.lock().unwrap().clone();
        let mut out = Vec::new();
        let mut au = Vec::new();
        for (ts, marker, payload) in packets {
            depacketize(&payload, &mut au);
            if marker {
                let keyframe = nal_types(&au).contains(&5);
                let data = Bytes::from(std::mem::take(&mut au));
                out.push(AccessUnit::new(data, i64::from(ts), keyframe, Instant::now(), SystemTime::now()));
            }
        }
        out
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
