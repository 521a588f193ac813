//! H.264 RTP packetisation (RFC 6184, packetization-mode=1): one access unit in
//! Annex B form → RTP payloads. Small NAL units in a row are aggregated into
//! STAP-A, one that fits goes as a single NAL unit packet, a larger one is split
//! into FU-A fragments. Access unit delimiters and filler data are dropped.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::annexb::nal_units;

/// RTP payload budget per packet (fits a 1500-byte MTU with SRTP, headers and extensions).
pub const DEFAULT_MAX_PAYLOAD: usize = 1200;

const NAL_AUD: u8 = 9;
const NAL_FILLER: u8 = 12;
const STAP_A: u8 = 24;
const FU_A: u8 = 28;

/// `au`'s RTP payloads at [`DEFAULT_MAX_PAYLOAD`], made by the first session
/// that sends it and shared by every other (`AccessUnit::rtp_payloads`).
pub(crate) fn shared_payloads(au: &crate::media::AccessUnit) -> &[Bytes] {
    au.rtp_payloads.get_or_init(|| {
        let mut payloads = Vec::new();
        packetize_h264(&au.data, DEFAULT_MAX_PAYLOAD, &mut payloads);
        payloads
    })
}

/// Splits `access_unit` (Annex B) into RTP payloads of at most `max_payload` bytes,
/// appended to `out` in send order. The last one carries the end of the access
/// unit (the RTP marker bit goes on it).
pub fn packetize_h264(access_unit: &[u8], max_payload: usize, out: &mut Vec<Bytes>) {
    let max_payload = max_payload.max(16);
    // Pending STAP-A: NAL units waiting to be aggregated.
    let mut pending: Vec<&[u8]> = Vec::new();
    let mut pending_size = 1; // STAP-A header byte
    for nal in nal_units(access_unit) {
        let Some(&header) = nal.first() else { continue };
        let nal_type = header & 0x1f;
        if nal_type == NAL_AUD || nal_type == NAL_FILLER {
            continue;
        }
        if nal.len() + 2 + pending_size <= max_payload {
            pending.push(nal);
            pending_size += nal.len() + 2;
            continue;
        }
        flush(&mut pending, &mut pending_size, out);
        if nal.len() <= max_payload {
            if nal.len() + 3 <= max_payload {
                // May aggregate with what follows.
                pending.push(nal);
                pending_size += nal.len() + 2;
            } else {
                out.push(Bytes::copy_from_slice(nal));
            }
            continue;
        }
        fragment(nal, max_payload, out);
    }
    flush(&mut pending, &mut pending_size, out);
}

fn flush(pending: &mut Vec<&[u8]>, pending_size: &mut usize, out: &mut Vec<Bytes>) {
    match pending.len() {
        0 => {}
        1 => out.push(Bytes::copy_from_slice(pending[0])),
        _ => {
            let mut buf = BytesMut::with_capacity(*pending_size);
            // F bit: OR of the aggregated units'; NRI: their maximum.
            let f = pending.iter().fold(0, |a, n| a | (n[0] & 0x80));
            let nri = pending.iter().map(|n| n[0] & 0x60).max().unwrap_or(0);
            buf.put_u8(f | nri | STAP_A);
            for nal in pending.iter() {
                buf.put_u16(nal.len() as u16);
                buf.put_slice(nal);
            }
            out.push(buf.freeze());
        }
    }
    pending.clear();
    *pending_size = 1;
}

fn fragment(nal: &[u8], max_payload: usize, out: &mut Vec<Bytes>) {
    let header = nal[0];
    let indicator = (header & 0xe0) | FU_A;
    let nal_type = header & 0x1f;
    let body = &nal[1..];
    let chunk = max_payload - 2;
    let n = body.len().div_ceil(chunk);
    for (i, part) in body.chunks(chunk).enumerate() {
        let mut fu_header = nal_type;
        if i == 0 {
            fu_header |= 0x80;
        }
        if i + 1 == n {
            fu_header |= 0x40;
        }
        let mut buf = BytesMut::with_capacity(part.len() + 2);
        buf.put_u8(indicator);
        buf.put_u8(fu_header);
        buf.put_slice(part);
        out.push(buf.freeze());
    }
}

/// The H.264 NAL unit types an RTP payload carries (aggregates unpacked; a FU-A
/// fragment reports its unit's type only on the start fragment).
pub fn payload_nal_types(payload: &[u8]) -> Vec<u8> {
    let Some(&first) = payload.first() else { return Vec::new() };
    match first & 0x1f {
        STAP_A => {
            let mut types = Vec::new();
            let mut rest = &payload[1..];
            while rest.len() >= 3 {
                let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                if len == 0 || rest.len() < 2 + len {
                    break;
                }
                types.push(rest[2] & 0x1f);
                rest = &rest[2 + len..];
            }
            types
        }
        FU_A => match payload.get(1) {
            Some(&h) if h & 0x80 != 0 => vec![h & 0x1f],
            _ => Vec::new(),
        },
        t => vec![t],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annexb(nals: &[Vec<u8>]) -> Vec<u8> {
        let mut v = Vec::new();
        for n in nals {
            v.extend_from_slice(&[0, 0, 0, 1]);
            v.extend_from_slice(n);
        }
        v
    }

    /// Reassembles payloads into NAL units (what a receiver's depacketiser does).
    fn depacketize(payloads: &[Bytes]) -> Vec<Vec<u8>> {
        let mut nals = Vec::new();
        let mut fu: Option<Vec<u8>> = None;
        for p in payloads {
            match p[0] & 0x1f {
                STAP_A => {
                    let mut rest = &p[1..];
                    while rest.len() > 2 {
                        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                        nals.push(rest[2..2 + len].to_vec());
                        rest = &rest[2 + len..];
                    }
                }
                FU_A => {
                    if p[1] & 0x80 != 0 {
                        fu = Some(vec![(p[0] & 0xe0) | (p[1] & 0x1f)]);
                    }
                    let buf = fu.as_mut().expect("FU-A start first");
                    buf.extend_from_slice(&p[2..]);
                    if p[1] & 0x40 != 0 {
                        nals.push(fu.take().expect("in a FU-A"));
                    }
                }
                _ => nals.push(p.to_vec()),
            }
        }
        nals
    }

    #[test]
    fn parameter_sets_aggregate_and_a_big_idr_fragments() {
        let sps = vec![0x67, 0x42, 0xe0, 0x1f, 1, 2, 3];
        let pps = vec![0x68, 0xce, 0x3c, 0x80];
        let idr: Vec<u8> = std::iter::once(0x65).chain((0..5000).map(|i| (i % 251) as u8)).collect();
        let mut out = Vec::new();
        packetize_h264(&annexb(&[vec![0x09, 0xf0], sps.clone(), pps.clone(), idr.clone()]), 1200, &mut out);
        assert_eq!(payload_nal_types(&out[0]), [7, 8], "SPS+PPS in one STAP-A");
        assert_eq!(payload_nal_types(&out[1]), [5], "IDR FU-A start");
        assert!(out.iter().all(|p| p.len() <= 1200));
        assert_eq!(depacketize(&out), [sps, pps, idr]);
    }

    #[test]
    fn a_small_slice_goes_alone_and_mid_size_units_are_single_nal_packets() {
        let slice = vec![0x41, 9, 8, 7];
        let mut out = Vec::new();
        packetize_h264(&annexb(std::slice::from_ref(&slice)), 1200, &mut out);
        assert_eq!(out, [Bytes::from(slice)]);
        let a: Vec<u8> = std::iter::once(0x41).chain(std::iter::repeat_n(1, 1198)).collect();
        let b: Vec<u8> = std::iter::once(0x41).chain(std::iter::repeat_n(2, 700)).collect();
        out.clear();
        packetize_h264(&annexb(&[a.clone(), b.clone()]), 1200, &mut out);
        assert_eq!(depacketize(&out), [a, b]);
        assert!(out.iter().all(|p| p.len() <= 1200));
    }
}
