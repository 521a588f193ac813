//! Prototype for issue 13: the CPU one send shard spends per RTP packet on
//! each sans-IO WebRTC core, for the same fan-out: N connected send-only
//! sessions, each sent the same access units (9 shared payloads of an
//! 720p25 P-frame: 8 × 1200 bytes and a 700-byte last one), AES-128-GCM SRTP.
//!
//! * `str0m` 0.23.1 (OpenSSL crypto): N server `Rtc`s (ICE-lite, RTP mode,
//!   DTLS active) each connected in memory to a client `Rtc`; per access unit
//!   and session, 9 `StreamTx::write_rtp` (the payload an `Arc<[u8]>` shared
//!   by every session, nackable) and `poll_output` until the timeout, every
//!   `Transmit` counted (it is what would go to `sendmmsg`). The clients get
//!   every datagram (their work is not timed), so the sessions see receiver
//!   reports and stay alive as on a real shard.
//! * `rtc` 0.21.1, as infercast's one-port SFU does it (src/sfu/v2/media_out.rs):
//!   the session's header marshalled and the packet encrypted with its own
//!   `rtc_srtp::Context` into a queue, header and shared payload kept for
//!   NACKs, the queue drained.
//!
//! Only user-space time of the send path is measured (no socket: the
//! batching, `sendmmsg` and GSO are infercast's own either way).
//!
//! `cargo run --release --manifest-path benches/str0m-shard/Cargo.toml -- [N] [FRAMES]`
//! (defaults 200 and 250: 10 s of video for 200 viewers).

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rtc_shared::marshal::{Marshal, MarshalSize};
use str0m::format::Codec;
use str0m::media::{MediaKind, Mid};
use str0m::net::Receive;
use str0m::rtp::{RtpWrite, SeqNo, Ssrc};
use str0m::{Candidate, Input, Output, Rtc};

const PACKETS_PER_AU: usize = 9;
const FRAME: Duration = Duration::from_millis(40);

fn payloads() -> Vec<Vec<u8>> {
    (0..PACKETS_PER_AU).map(|i| vec![0x5c_u8 ^ i as u8; if i + 1 == PACKETS_PER_AU { 700 } else { 1200 }]).collect()
}

/// Moves everything `from` sends until its next timeout into `to` (when
/// given); returns that timeout and how many datagrams it sent.
fn drain(from: &mut Rtc, mut to: Option<&mut Rtc>, now: Instant) -> (Instant, usize) {
    let mut sent = 0;
    loop {
        match from.poll_output().expect("poll_output") {
            Output::Timeout(t) => return (t, sent),
            Output::Transmit(t) => {
                sent += 1;
                if let Some(to) = to.as_deref_mut() {
                    let contents = t.contents.to_vec();
                    let receive = Receive {
                        proto: t.proto,
                        source: t.source,
                        destination: t.destination,
                        contents: contents.as_slice().try_into().expect("a datagram str0m sent parses"),
                    };
                    to.handle_input(Input::Receive(now, receive)).expect("handle_input");
                }
            }
            Output::Event(_) => {}
        }
    }
}

struct Str0mSession {
    server: Rtc,
    client: Rtc,
    ssrc: Ssrc,
    seq: u64,
}

fn connect(i: usize, now: Instant) -> Str0mSession {
    let mut server = Rtc::builder().set_ice_lite(true).set_rtp_mode(true).build(now);
    let mut client = Rtc::builder().set_rtp_mode(true).build(now);
    let server_addr = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 8189));
    let client_addr = SocketAddr::from((Ipv4Addr::new(10, 1, (i / 250) as u8, (i % 250) as u8 + 1), 50000));
    let (s_host, c_host) = (Candidate::host(server_addr, "udp").unwrap(), Candidate::host(client_addr, "udp").unwrap());
    server.add_local_candidate(s_host.clone());
    server.add_remote_candidate(c_host.clone());
    client.add_local_candidate(c_host);
    client.add_remote_candidate(s_host);
    let (fs, fc) =
        (server.direct_api().local_dtls_fingerprint().clone(), client.direct_api().local_dtls_fingerprint().clone());
    server.direct_api().set_remote_fingerprint(fc);
    client.direct_api().set_remote_fingerprint(fs);
    let (cs, cc) = (server.direct_api().local_ice_credentials(), client.direct_api().local_ice_credentials());
    server.direct_api().set_remote_ice_credentials(cc);
    client.direct_api().set_remote_ice_credentials(cs);
    server.direct_api().set_ice_controlling(false);
    client.direct_api().set_ice_controlling(true);
    server.direct_api().start_dtls(true).unwrap();
    client.direct_api().start_dtls(false).unwrap();
    let mid: Mid = "0".into();
    let ssrc: Ssrc = (1000 + i as u32).into();
    server.direct_api().declare_media(mid, MediaKind::Video);
    server.direct_api().declare_stream_tx(ssrc, None, mid, None);
    client.direct_api().declare_media(mid, MediaKind::Video);
    client.direct_api().expect_stream_rx(ssrc, None, mid, None);
    let mut t = now;
    for _ in 0..2000 {
        let (a, _) = drain(&mut server, Some(&mut client), t);
        let (b, _) = drain(&mut client, Some(&mut server), t);
        if server.is_connected() && client.is_connected() {
            return Str0mSession { server, client, ssrc, seq: 1 };
        }
        t = a.min(b).max(t + Duration::from_millis(1));
        server.handle_input(Input::Timeout(t)).unwrap();
        client.handle_input(Input::Timeout(t)).unwrap();
    }
    panic!("session {i} did not connect");
}

fn str0m_shard(n: usize, frames: usize) -> (Duration, usize) {
    let start = Instant::now();
    let mut sessions: Vec<Str0mSession> = (0..n).map(|i| connect(i, start)).collect();
    let pt = sessions[0]
        .server
        .codec_config()
        .find(|p| p.spec().codec == Codec::H264)
        .expect("H.264 is a default codec")
        .pt();
    let payloads: Vec<Arc<[u8]>> = payloads().into_iter().map(Arc::from).collect();
    let (mut timed, mut sent) = (Duration::ZERO, 0);
    let mut now = start + Duration::from_secs(1);
    for frame in 0..frames {
        now += FRAME;
        let rtp_time = (frame as u32) * 3600;
        for s in &mut sessions {
            let t0 = Instant::now();
            s.server.handle_input(Input::Timeout(now)).unwrap();
            let mut api = s.server.direct_api();
            let stream = api.stream_tx(&s.ssrc).expect("declared");
            for (i, p) in payloads.iter().enumerate() {
                let seq: SeqNo = s.seq.into();
                s.seq += 1;
                stream.write_rtp(
                    RtpWrite::new(pt, seq, rtp_time, now, p.clone()).marker(i + 1 == PACKETS_PER_AU).nackable(true),
                );
            }
            let (_, n_sent) = drain(&mut s.server, None, now);
            timed += t0.elapsed();
            sent += n_sent;
            // The client's side (not timed): its receiver reports and ICE.
            s.client.handle_input(Input::Timeout(now)).unwrap();
            drain(&mut s.client, Some(&mut s.server), now);
        }
    }
    (timed, sent)
}

/// infercast's send path (src/sfu/v2/media_out.rs, condensed).
struct RtcSession {
    ctx: rtc_srtp::context::Context,
    queue: VecDeque<BytesMut>,
    history: Vec<Option<(rtc_rtp::header::Header, Bytes)>>,
    scratch: Vec<u8>,
    seq: u16,
}

fn rtc_shard(n: usize, frames: usize) -> (Duration, usize) {
    let provider = rtc_crypto::default_provider().expect("ring is built in");
    let profile = rtc_srtp::protection_profile::ProtectionProfile::AeadAes128Gcm;
    let mut sessions: Vec<RtcSession> = (0..n)
        .map(|i| RtcSession {
            ctx: rtc_srtp::context::Context::new(&[i as u8; 16], &[7; 12], profile, None, None, provider.crypto())
                .unwrap(),
            queue: VecDeque::new(),
            history: std::iter::repeat_with(|| None).take(1024).collect(),
            scratch: Vec::with_capacity(1500),
            seq: 1,
        })
        .collect();
    let payloads: Vec<Bytes> = payloads().into_iter().map(Bytes::from).collect();
    let (mut timed, mut sent) = (Duration::ZERO, 0);
    for frame in 0..frames {
        let timestamp = (frame as u32) * 3600;
        for (ssrc, s) in sessions.iter_mut().enumerate() {
            let t0 = Instant::now();
            for (i, p) in payloads.iter().enumerate() {
                let header = rtc_rtp::header::Header {
                    version: 2,
                    marker: i + 1 == PACKETS_PER_AU,
                    payload_type: 102,
                    sequence_number: s.seq,
                    timestamp,
                    ssrc: 1000 + ssrc as u32,
                    ..Default::default()
                };
                s.seq = s.seq.wrapping_add(1);
                s.scratch.clear();
                s.scratch.resize(header.marshal_size(), 0);
                header.marshal_to(&mut s.scratch).unwrap();
                s.scratch.extend_from_slice(p);
                let packet = s.ctx.encrypt_rtp_with_header(&s.scratch, &header).unwrap();
                s.queue.push_back(packet);
                let slot = usize::from(header.sequence_number) % 1024;
                s.history[slot] = Some((header, p.clone()));
            }
            while let Some(packet) = s.queue.pop_front() {
                std::hint::black_box(&packet);
                sent += 1;
            }
            timed += t0.elapsed();
        }
    }
    (timed, sent)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let frames: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(250);
    let expected = n * frames * PACKETS_PER_AU;
    println!("{n} sessions, {frames} access units of {PACKETS_PER_AU} packets each ({expected} RTP packets per core)");
    for (name, run) in
        [("rtc 0.21 (infercast)", rtc_shard as fn(usize, usize) -> (Duration, usize)), ("str0m 0.23", str0m_shard)]
    {
        let (timed, sent) = run(n, frames);
        let per_packet_us = timed.as_secs_f64() * 1e6 / expected as f64;
        println!(
            "{name}: {:.0} ms for {expected} RTP packets ({sent} datagrams out): {per_packet_us:.2} us per packet, \
             {:.0} viewers of a 720p25 stream (225 packets/s) per core on this alone",
            timed.as_secs_f64() * 1e3,
            1e6 / (per_packet_us * 225.0)
        );
    }
}
