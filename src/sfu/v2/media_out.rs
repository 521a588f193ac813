//! A viewer's outgoing RTP, written past rtc's pipeline: each packet's header
//! marshalled and the packet SRTP-encrypted with the session's own sending
//! context (`RTCPeerConnection::local_srtp_context`, vendor/rtc/INFERCAST.md)
//! into a queue the shard drains paced; the history NACKs are answered from
//! (the same sequence number encrypted again: the same bytes); and the RTCP
//! sender reports (RFC 3550 §6.4.1), the only RTCP a send-only viewer gets.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtp::header::Header;
use rtc::shared::marshal::{Marshal, MarshalSize};
use rtc::srtp::context::Context;

/// RTP packets kept for NACKs: 1024 (~4 s of a 720p25 stream at ~9 packets per
/// access unit; a keyframe is ~60). Each keeps the header and a reference to
/// the payload every viewer shares, not the encrypted packet.
pub const HISTORY: usize = 1024;
/// Most packets resent to one session per second (a viewer NACKing
/// everything cannot make us encrypt without bound).
pub const MAX_RESENDS_PER_S: u32 = 512;
/// Time between sender reports.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Seconds from 1900 (NTP) to 1970 (Unix).
const NTP_UNIX_OFFSET_S: u64 = 2_208_988_800;

struct Sent {
    header: Header,
    payload: Bytes,
}

/// One session's outgoing media: SRTP packets queued for the shard, the
/// retransmission history and the sender-report counters.
pub(super) struct MediaOut {
    queue: VecDeque<BytesMut>,
    /// By sequence number mod [`HISTORY`].
    history: Vec<Option<Sent>>,
    /// The plaintext packet being encrypted (reused).
    scratch: Vec<u8>,
    ssrc: u32,
    packets_sent: u32,
    octets_sent: u32,
    /// The last RTP timestamp sent, and when.
    last_sent: Option<(u32, Instant)>,
    next_report: Instant,
    /// Resends in the current second: (its start, how many).
    resends: (Instant, u32),
    /// Packets resent after a NACK so far.
    pub resent: u64,
}

impl MediaOut {
    pub fn new(ssrc: u32, now: Instant) -> MediaOut {
        MediaOut {
            queue: VecDeque::new(),
            history: std::iter::repeat_with(|| None).take(HISTORY).collect(),
            scratch: Vec::with_capacity(1500),
            ssrc,
            packets_sent: 0,
            octets_sent: 0,
            last_sent: None,
            next_report: now + REPORT_INTERVAL,
            resends: (now, 0),
            resent: 0,
        }
    }

    /// Encrypts the RTP packet `header` + `payload` into the queue and keeps
    /// it for NACKs. Errors if the SRTP context refuses it (2⁴⁸ packets sent).
    pub fn write(&mut self, ctx: &mut Context, header: Header, payload: &Bytes, now: Instant) -> Result<(), String> {
        self.encrypt(ctx, &header, payload)?;
        self.packets_sent = self.packets_sent.wrapping_add(1);
        self.octets_sent = self.octets_sent.wrapping_add(payload.len() as u32);
        self.last_sent = Some((header.timestamp, now));
        let slot = usize::from(header.sequence_number) % HISTORY;
        self.history[slot] = Some(Sent { header, payload: payload.clone() });
        Ok(())
    }

    fn encrypt(&mut self, ctx: &mut Context, header: &Header, payload: &[u8]) -> Result<(), String> {
        let header_len = header.marshal_size();
        self.scratch.clear();
        self.scratch.resize(header_len, 0);
        header.marshal_to(&mut self.scratch).map_err(|e| e.to_string())?;
        self.scratch.extend_from_slice(payload);
        let packet = ctx.encrypt_rtp_with_header(&self.scratch, header).map_err(|e| e.to_string())?;
        self.queue.push_back(packet);
        Ok(())
    }

    /// Queues again the packets a NACK names that the history still has;
    /// how many (at most [`MAX_RESENDS_PER_S`] a second).
    pub fn resend(
        &mut self,
        ctx: &mut Context,
        sequence_numbers: impl IntoIterator<Item = u16>,
        now: Instant,
    ) -> usize {
        if now.duration_since(self.resends.0) >= Duration::from_secs(1) {
            self.resends = (now, 0);
        }
        let mut n = 0;
        for seq in sequence_numbers {
            if self.resends.1 >= MAX_RESENDS_PER_S {
                break;
            }
            let slot = usize::from(seq) % HISTORY;
            let Some(sent) = self.history[slot].take() else { continue };
            if sent.header.sequence_number != seq {
                self.history[slot] = Some(sent);
                continue;
            }
            let result = self.encrypt(ctx, &sent.header, &sent.payload);
            self.history[slot] = Some(sent);
            if let Err(e) = result {
                tracing::debug!("RTP resend refused: {e}");
                break;
            }
            self.resends.1 += 1;
            n += 1;
        }
        self.resent += n as u64;
        n
    }

    /// When the next sender report is due (none before the first packet).
    pub fn report_due(&self) -> Option<Instant> {
        self.last_sent.map(|_| self.next_report)
    }

    /// Queues a sender report if one is due: NTP time now, the RTP timestamp
    /// of this instant (the last one sent plus the time since, 90 kHz), and
    /// the packet and payload-octet counts.
    pub fn report(&mut self, ctx: &mut Context, now: Instant) {
        let Some((timestamp, at)) = self.last_sent else { return };
        if now < self.next_report {
            return;
        }
        self.next_report = now + REPORT_INTERVAL;
        let since_90k = (now.duration_since(at).as_micros() * 90 / 1000) as u32;
        let report = SenderReport {
            ssrc: self.ssrc,
            ntp_time: ntp_now(),
            rtp_time: timestamp.wrapping_add(since_90k),
            packet_count: self.packets_sent,
            octet_count: self.octets_sent,
            ..Default::default()
        };
        let result = report
            .marshal()
            .map_err(|e| e.to_string())
            .and_then(|plain| ctx.encrypt_rtcp(&plain).map_err(|e| e.to_string()));
        match result {
            Ok(packet) => self.queue.push_back(packet),
            Err(e) => tracing::debug!("sender report not sent: {e}"),
        }
    }

    /// The next packet to send.
    pub fn pop(&mut self) -> Option<BytesMut> {
        self.queue.pop_front()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// Now as a 64-bit NTP timestamp (seconds since 1900 in the high 32 bits, the
/// fraction in the low 32).
fn ntp_now() -> u64 {
    let since_unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_unix.as_secs() + NTP_UNIX_OFFSET_S;
    let fraction = (u64::from(since_unix.subsec_nanos()) << 32) / 1_000_000_000;
    (seconds << 32) | fraction
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::shared::marshal::Unmarshal;

    fn contexts() -> (Context, Context) {
        let key = [7u8; 16];
        let salt = [9u8; 12];
        let provider = rtc::crypto::default_provider().expect("a crypto provider is built in");
        let profile = rtc::srtp::protection_profile::ProtectionProfile::AeadAes128Gcm;
        let make = || Context::new(&key, &salt, profile, None, None, provider.crypto()).expect("valid key and salt");
        (make(), make())
    }

    fn header(seq: u16, ts: u32) -> Header {
        Header { version: 2, payload_type: 96, sequence_number: seq, timestamp: ts, ssrc: 42, ..Default::default() }
    }

    #[test]
    fn packets_decrypt_and_a_nack_gets_the_same_bytes_again() {
        let (mut tx, mut rx) = contexts();
        let now = Instant::now();
        let mut out = MediaOut::new(42, now);
        let payloads: Vec<Bytes> = (0..3u8).map(|i| Bytes::from(vec![i; 1000])).collect();
        for (i, p) in payloads.iter().enumerate() {
            out.write(&mut tx, header(65534u16.wrapping_add(i as u16), 3000), p, now).unwrap();
        }
        let sent: Vec<BytesMut> = std::iter::from_fn(|| out.pop()).collect();
        assert_eq!(sent.len(), 3);
        for (packet, payload) in sent.iter().zip(&payloads) {
            let plain = rx.decrypt_rtp(packet).unwrap();
            let mut buf = &plain[..];
            let h = Header::unmarshal(&mut buf).unwrap();
            assert_eq!(h.ssrc, 42);
            assert_eq!(buf, &payload[..]);
        }
        // Across the sequence-number wrap: 65535 and 0 again, byte for byte;
        // 5 was never sent.
        assert_eq!(out.resend(&mut tx, [65535, 0, 5], now), 2);
        assert_eq!(out.pop().unwrap(), sent[1]);
        assert_eq!(out.pop().unwrap(), sent[2]);
        assert!(out.is_empty());
        // New packets after a resend still decrypt (the rollover count moved on).
        out.write(&mut tx, header(1, 6000), &payloads[0], now).unwrap();
        assert!(rx.decrypt_rtp(&out.pop().unwrap()).is_ok());
    }

    #[test]
    fn resends_are_bounded_per_second() {
        let (mut tx, _) = contexts();
        let now = Instant::now();
        let mut out = MediaOut::new(42, now);
        let payload = Bytes::from_static(&[1; 100]);
        for seq in 0..HISTORY as u16 {
            out.write(&mut tx, header(seq, 0), &payload, now).unwrap();
        }
        while out.pop().is_some() {}
        let all = 0..HISTORY as u16;
        assert_eq!(out.resend(&mut tx, all.clone(), now), MAX_RESENDS_PER_S as usize);
        assert_eq!(out.resend(&mut tx, all.clone(), now + Duration::from_millis(500)), 0);
        assert_eq!(out.resend(&mut tx, all, now + Duration::from_secs(1)), MAX_RESENDS_PER_S as usize);
    }

    #[test]
    fn a_sender_report_carries_the_counts_and_the_rtp_time_of_now() {
        let (mut tx, mut rx) = contexts();
        let now = Instant::now();
        let mut out = MediaOut::new(42, now);
        assert_eq!(out.report_due(), None, "nothing sent, nothing to report");
        out.write(&mut tx, header(10, 90_000), &Bytes::from_static(&[0; 500]), now).unwrap();
        out.pop();
        out.report(&mut tx, now + Duration::from_millis(100));
        assert!(out.is_empty(), "not due yet");
        let at = now + REPORT_INTERVAL;
        out.report(&mut tx, at);
        let plain = rx.decrypt_rtcp(&out.pop().unwrap()).unwrap();
        let mut buf = &plain[..];
        let sr = SenderReport::unmarshal(&mut buf).unwrap();
        assert_eq!((sr.ssrc, sr.packet_count, sr.octet_count), (42, 1, 500));
        assert_eq!(sr.rtp_time, 90_000 + 90_000, "1 s on at 90 kHz");
        assert_eq!(out.report_due(), Some(at + REPORT_INTERVAL));
    }
}
