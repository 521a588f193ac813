//! H.264 over RTP (RFC 6184, packetization-mode 1) back into access units,
//! for WHIP publishers: single NAL unit packets, STAP-A and FU-A; a unit ends
//! at the marker bit (or at a new RTP timestamp when the marker was lost);
//! SPS/PPS go before each IDR that lacks them; after a lost packet every
//! unit up to the next IDR is dropped (a decoder could not use it).

use std::collections::VecDeque;

const START_CODE: [u8; 4] = [0, 0, 0, 1];
const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
const STAP_A: u8 = 24;
const FU_A: u8 = 28;

/// One access unit rebuilt from RTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// Annex B NAL units, SPS/PPS first when `keyframe`.
    pub data: Vec<u8>,
    /// The RTP timestamp (90 kHz) extended across the 2³² wrap, from 0 at
    /// the first unit handed out.
    pub pts_90k: i64,
    /// The unit holds an IDR slice.
    pub keyframe: bool,
}

/// Rebuilds access units from one RTP stream's packets in arrival order
/// (a packet older than the last one is dropped as late; a gap counts as a loss).
pub struct Depacketizer {
    max_unit_bytes: usize,
    unit: Vec<u8>,
    timestamp: Option<u32>,
    next_seq: Option<u16>,
    /// A packet of the unit being built was lost, or it was malformed.
    broken: bool,
    /// At start and after a loss: units are dropped until an IDR.
    waiting_for_idr: bool,
    in_fu: bool,
    has_idr: bool,
    has_sps: bool,
    has_pps: bool,
    sps: Option<Vec<u8>>,
    pps: Option<Vec<u8>>,
    /// `pts_90k` and RTP timestamp of the last unit handed out.
    extended: i64,
    last_timestamp: Option<u32>,
    ready: VecDeque<Unit>,
    /// Packets lost or units unusable since the last [`Depacketizer::take_loss`].
    loss: bool,
}

impl Depacketizer {
    /// A depacketizer dropping any unit over `max_unit_bytes`.
    pub fn new(max_unit_bytes: usize) -> Depacketizer {
        Depacketizer {
            max_unit_bytes,
            unit: Vec::new(),
            timestamp: None,
            next_seq: None,
            broken: false,
            waiting_for_idr: true,
            in_fu: false,
            has_idr: false,
            has_sps: false,
            has_pps: false,
            sps: None,
            pps: None,
            extended: 0,
            last_timestamp: None,
            ready: VecDeque::new(),
            loss: false,
        }
    }

    /// Feeds one RTP packet (its sequence number, timestamp, marker bit and
    /// payload); finished units come out of [`Depacketizer::pop`].
    pub fn push(&mut self, sequence_number: u16, timestamp: u32, marker: bool, payload: &[u8]) {
        if let Some(expected) = self.next_seq {
            let ahead = sequence_number.wrapping_sub(expected) as i16;
            if ahead < 0 {
                return; // late or duplicate
            }
            if ahead > 0 {
                self.broken = true;
                self.waiting_for_idr = true;
                self.loss = true;
            }
        }
        self.next_seq = Some(sequence_number.wrapping_add(1));
        if self.timestamp.is_some_and(|t| t != timestamp) {
            self.finish();
        }
        self.timestamp = Some(timestamp);
        self.parse(payload);
        if self.unit.len() > self.max_unit_bytes {
            self.broken = true;
            self.unit.clear();
        }
        if marker {
            self.finish();
        }
    }

    /// The next finished access unit.
    pub fn pop(&mut self) -> Option<Unit> {
        self.ready.pop_front()
    }

    /// Whether a packet was lost (or a unit dropped) since the last call: the
    /// publisher should be asked for a keyframe.
    pub fn take_loss(&mut self) -> bool {
        std::mem::take(&mut self.loss)
    }

    fn parse(&mut self, payload: &[u8]) {
        let Some(&header) = payload.first() else {
            self.broken = true;
            return;
        };
        match header & 0x1f {
            1..=23 => self.add_nal(payload),
            STAP_A => {
                let mut rest = &payload[1..];
                while rest.len() >= 2 {
                    let size = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                    if size == 0 || rest.len() < 2 + size {
                        self.broken = true;
                        return;
                    }
                    self.add_nal(&rest[2..2 + size]);
                    rest = &rest[2 + size..];
                }
            }
            FU_A if payload.len() > 2 => {
                let fu = payload[1];
                let nal_type = fu & 0x1f;
                if fu & 0x80 != 0 {
                    self.note_type(nal_type);
                    self.unit.extend_from_slice(&START_CODE);
                    self.unit.push((header & 0xe0) | nal_type);
                    self.in_fu = true;
                } else if !self.in_fu {
                    self.broken = true; // its start was lost
                    return;
                }
                self.unit.extend_from_slice(&payload[2..]);
                if fu & 0x40 != 0 {
                    self.in_fu = false;
                    if nal_type == NAL_SPS || nal_type == NAL_PPS {
                        self.remember_last_nal(nal_type);
                    }
                }
            }
            // STAP-B, MTAP, FU-B: not in packetization-mode 1; 0, 30, 31 reserved.
            _ => self.broken = true,
        }
    }

    fn add_nal(&mut self, nal: &[u8]) {
        let Some(&header) = nal.first() else { return };
        let nal_type = header & 0x1f;
        self.note_type(nal_type);
        match nal_type {
            NAL_SPS => self.sps = Some(nal.to_vec()),
            NAL_PPS => self.pps = Some(nal.to_vec()),
            _ => {}
        }
        self.unit.extend_from_slice(&START_CODE);
        self.unit.extend_from_slice(nal);
    }

    fn note_type(&mut self, nal_type: u8) {
        match nal_type {
            NAL_IDR => self.has_idr = true,
            NAL_SPS => self.has_sps = true,
            NAL_PPS => self.has_pps = true,
            _ => {}
        }
    }

    /// Keeps the SPS or PPS that a FU-A just finished (the last NAL unit of `unit`).
    fn remember_last_nal(&mut self, nal_type: u8) {
        let start = self.unit.windows(4).rposition(|w| w == START_CODE).map_or(0, |p| p + 4);
        let nal = self.unit[start..].to_vec();
        if nal_type == NAL_SPS { self.sps = Some(nal) } else { self.pps = Some(nal) }
    }

    fn finish(&mut self) {
        let unit = std::mem::take(&mut self.unit);
        let (broken, idr, sps, pps) = (self.broken, self.has_idr, self.has_sps, self.has_pps);
        (self.broken, self.in_fu, self.has_idr, self.has_sps, self.has_pps) = (false, false, false, false, false);
        let Some(timestamp) = self.timestamp.take() else { return };
        if broken {
            (self.loss, self.waiting_for_idr) = (true, true);
            return;
        }
        if unit.is_empty() || (self.waiting_for_idr && !idr) {
            return;
        }
        let data = if idr && !(sps && pps) {
            let (Some(s), Some(p)) = (&self.sps, &self.pps) else {
                // An IDR nobody can decode: ask for another.
                (self.loss, self.waiting_for_idr) = (true, true);
                return;
            };
            let mut d = Vec::with_capacity(unit.len() + s.len() + p.len() + 8);
            for nal in [s, p] {
                d.extend_from_slice(&START_CODE);
                d.extend_from_slice(nal);
            }
            d.extend_from_slice(&unit);
            d
        } else {
            unit
        };
        if idr {
            self.waiting_for_idr = false;
        }
        if let Some(last) = self.last_timestamp.replace(timestamp) {
            self.extended += i64::from(timestamp.wrapping_sub(last) as i32);
        }
        self.ready.push_back(Unit { data, pts_90k: self.extended, keyframe: idr });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPS: &[u8] = &[0x67, 0x42, 0xe0, 0x1f, 0xaa];
    const PPS: &[u8] = &[0x68, 0xce, 0x3c, 0x80];

    fn stap(nals: &[&[u8]]) -> Vec<u8> {
        let mut p = vec![0x78];
        for n in nals {
            p.extend_from_slice(&(n.len() as u16).to_be_bytes());
            p.extend_from_slice(n);
        }
        p
    }

    fn annexb(nals: &[&[u8]]) -> Vec<u8> {
        nals.iter().flat_map(|n| START_CODE.iter().chain(n.iter()).copied()).collect()
    }

    #[test]
    fn stap_a_fu_a_and_single_nal_units_become_access_units() {
        let mut d = Depacketizer::new(1 << 20);
        let idr: Vec<u8> = [0x65].into_iter().chain((0..3000).map(|i| i as u8)).collect();
        d.push(10, 1000, false, &stap(&[SPS, PPS]));
        // The IDR as three FU-A fragments (start, middle, end).
        let (a, rest) = idr[1..].split_at(1000);
        let (b, c) = rest.split_at(1000);
        d.push(11, 1000, false, &[[0x7c, 0x85].as_slice(), a].concat());
        d.push(12, 1000, false, &[[0x7c, 0x05].as_slice(), b].concat());
        d.push(13, 1000, true, &[[0x7c, 0x45].as_slice(), c].concat());
        d.push(14, 4600, true, &[0x41, 1, 2, 3]);
        let key = d.pop().expect("the IDR unit");
        assert_eq!(key, Unit { data: annexb(&[SPS, PPS, &idr]), pts_90k: 0, keyframe: true });
        let p = d.pop().expect("the P unit");
        assert_eq!(p, Unit { data: annexb(&[&[0x41, 1, 2, 3]]), pts_90k: 3600, keyframe: false });
        assert!(d.pop().is_none());
        assert!(!d.take_loss());
    }

    #[test]
    fn units_before_the_first_idr_and_after_a_loss_are_dropped_until_an_idr() {
        let mut d = Depacketizer::new(1 << 20);
        d.push(1, 0, true, &[0x41, 9]); // P before any IDR
        assert!(d.pop().is_none());
        d.push(2, 3600, true, &stap(&[SPS, PPS, &[0x65, 1]]));
        assert!(d.pop().expect("IDR").keyframe);
        d.push(4, 7200, true, &[0x41, 2]); // 3 lost
        d.push(5, 10800, true, &[0x41, 3]);
        assert!(d.pop().is_none(), "P units after a loss cannot be decoded");
        assert!(d.take_loss());
        // An IDR without SPS/PPS gets the last ones put in front.
        d.push(6, 14400, true, &[0x65, 4]);
        let key = d.pop().expect("IDR after the loss");
        assert_eq!(key.data, annexb(&[SPS, PPS, &[0x65, 4]]));
        assert_eq!(key.pts_90k, 14400 - 3600);
    }

    #[test]
    fn timestamps_extend_across_the_wrap_and_a_lost_marker_still_ends_the_unit() {
        let mut d = Depacketizer::new(1 << 20);
        d.push(65535, u32::MAX - 1799, false, &stap(&[SPS, PPS, &[0x65, 1]]));
        // Marker lost: the next timestamp ends the unit.
        d.push(0, 1800, true, &[0x41, 2]);
        assert_eq!(d.pop().map(|u| (u.pts_90k, u.keyframe)), Some((0, true)));
        assert_eq!(d.pop().map(|u| (u.pts_90k, u.keyframe)), Some((3600, false)));
        // Late and duplicate packets are ignored.
        d.push(0, 1800, true, &[0x41, 2]);
        assert!(d.pop().is_none());
        assert!(!d.take_loss());
    }

    #[test]
    fn malformed_and_oversized_payloads_lose_only_their_unit() {
        let mut d = Depacketizer::new(64);
        d.push(1, 0, true, &stap(&[SPS, PPS, &[0x65, 1]]));
        assert!(d.pop().is_some());
        d.push(2, 3600, true, &[0x78, 0x00, 0x09, 0x41]); // STAP-A size past the end
        d.push(3, 7200, true, &[0x7d, 0x00]); // FU-B
        d.push(4, 10800, true, &[0x65; 100]); // over 64 bytes
        d.push(5, 14400, true, &[0x7c, 0x05, 1, 2]); // FU-A middle without a start
        d.push(6, 18000, true, &[]);
        assert!(d.pop().is_none());
        assert!(d.take_loss());
        d.push(7, 21600, true, &[0x65, 7]);
        assert!(d.pop().expect("the next IDR").keyframe);
    }
}
