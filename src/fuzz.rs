//! Property-based fuzzing (proptest, stable Rust) of everything that parses
//! outside input: SDP offers, request paths, config TOML, camera URLs, Annex B
//! splitting and SPS parsing, the H.264 RTP packetiser, the libavcodec
//! wrapper, and the label-history query. No input may panic or take longer
//! than [`MAX_CASE`]; some targets also check a property of the output.
//!
//! `cargo test --lib fuzz` runs `FUZZ_CASES` cases per target (default 256, the
//! brief CI run); `scripts/fuzz` runs a million each in release mode.

use std::time::{Duration, Instant};

use proptest::prelude::*;

/// Longest one case may take (a hang or quadratic blow-up shows as a failure).
const MAX_CASE: Duration = Duration::from_millis(500);

fn config() -> ProptestConfig {
    let cases = std::env::var("FUZZ_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    assert!(t.elapsed() < MAX_CASE, "{what} took {:?}", t.elapsed());
    out
}

/// A valid WHEP offer, the seed the SDP target mutates.
const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 102 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\na=rtcp-mux\r\n\
a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef01234567\r\na=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
a=setup:actpass\r\na=rtpmap:102 H264/90000\r\na=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
a=rtpmap:96 VP8/90000\r\na=rtcp-fb:102 nack pli\r\n";

/// `text`'s lines with some dropped, duplicated, swapped or replaced by `noise`.
fn mutate_lines(text: &str, ops: &[(u8, usize)], noise: &str) -> String {
    let mut lines: Vec<String> = text.split("\r\n").map(str::to_owned).collect();
    for &(op, at) in ops {
        if lines.is_empty() {
            break;
        }
        let i = at % lines.len();
        match op % 5 {
            0 => {
                lines.remove(i);
            }
            1 => lines.insert(i, lines[i].clone()),
            2 => {
                let j = (i + 1) % lines.len();
                lines.swap(i, j);
            }
            3 => lines[i] = noise.to_owned(),
            _ => {
                let keep = at % (lines[i].len() + 1);
                let cut = lines[i].char_indices().map(|(b, _)| b).chain([lines[i].len()]).find(|&b| b >= keep);
                lines[i].truncate(cut.unwrap_or(0));
            }
        }
    }
    lines.join("\r\n")
}

fn ops() -> impl Strategy<Value = Vec<(u8, usize)>> {
    proptest::collection::vec((any::<u8>(), any::<usize>()), 0..8)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_sdp_offers(ops in ops(), noise in ".{0,80}", raw in ".{0,400}", repeat in 0usize..200) {
        let offer = mutate_lines(OFFER, &ops, &noise);
        timed("check_offer", || { let _ = crate::sfu::check_offer(&offer, Some([0x42, 0xe0, 0x1f])); });
        timed("check_offer (raw)", || { let _ = crate::sfu::check_offer(&raw, None); });
        // Many media sections and codecs: must stay fast.
        let many = format!("{OFFER}{}", "m=video 9 UDP/TLS/RTP/SAVPF 102\r\na=rtpmap:102 H264/90000\r\n".repeat(repeat));
        timed("check_offer (many sections)", || { let _ = crate::sfu::check_offer(&many, None); });
    }

    #[test]
    fn fuzz_request_paths(path in "(/[a-z%0-9.\\-]{0,12}){0,6}", raw in ".{0,200}", m in 0u8..4) {
        let method = [axum::http::Method::GET, axum::http::Method::POST, axum::http::Method::DELETE, axum::http::Method::OPTIONS][m as usize].clone();
        for p in [path.as_str(), raw.as_str()] {
            let needs = timed("access", || crate::auth::layer::access(&method, p));
            if p.starts_with("/api/cameras/") && method != axum::http::Method::OPTIONS {
                prop_assert!(matches!(needs, crate::auth::layer::Access::View { camera: Some(_) }), "{p}: {needs:?}");
            }
        }
    }

    #[test]
    fn fuzz_config_toml(ops in ops(), noise in ".{0,60}", raw in ".{0,300}") {
        let valid = include_str!("../infercast.example.toml").replace('\n', "\r\n");
        let text = mutate_lines(&valid, &ops, &noise).replace("\r\n", "\n");
        for t in [text.as_str(), raw.as_str()] {
            timed("config", || {
                if let Ok(c) = crate::config::Config::parse(t) {
                    let _ = c.validate();
                }
            });
        }
    }

    #[test]
    fn fuzz_camera_urls(
        user in "[a-zA-Z0-9@/?#:%._-]{0,12}",
        pass in "[a-zA-Z0-9]{10,16}",
        host in "[a-z0-9.:\\[\\]-]{0,20}",
        path in "[a-zA-Z0-9/?&=%#._-]{0,30}",
        raw in ".{0,120}",
    ) {
        let encoded: String = percent_encoding::utf8_percent_encode(&user, percent_encoding::NON_ALPHANUMERIC).to_string();
        for text in [
            format!("rtsp://{encoded}:{pass}@{host}/{path}"),
            format!("rtsp://{host}/{path}?user=admin&password={pass}"),
            raw.clone(),
        ] {
            if let Ok(u) = timed("CameraUrl::parse", || crate::ingest::CameraUrl::parse(&text)) {
                let shown = u.redacted();
                // What the RTSP client can quote: the URL it was given (no user info).
                let scrubbed = u.scrub(&format!("error at {}: 401", u.url()));
                if text.contains(&pass) && !host.contains(&pass) && !path.contains(&pass) {
                    prop_assert!(!shown.contains(&pass), "{text} → {shown}");
                    prop_assert!(!scrubbed.contains(&pass), "{text} → {scrubbed}");
                }
            }
        }
    }

    #[test]
    fn fuzz_annexb_and_sps(bytes in proptest::collection::vec(any::<u8>(), 0..4096), sps_tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        timed("annex b", || {
            let nals: Vec<&[u8]> = crate::codec::annexb::nal_units(&bytes).collect();
            for n in &nals {
                let _ = crate::codec::annexb::nal_type(n);
                let _ = crate::codec::annexb::profile_level_id(n);
                let _ = crate::codec::annexb::sps_resolution(n);
            }
            let _ = crate::ingest::replay::split_access_units(&bytes);
            let mut sps = vec![0x67, 0x64, 0x00, 0x1f];
            sps.extend(&sps_tail);
            let _ = crate::codec::annexb::sps_resolution(&sps);
        });
    }

    #[test]
    fn fuzz_rtp_packetiser(nals in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..3000), 0..6), max in 0usize..1500) {
        let mut au = Vec::new();
        for n in &nals {
            au.extend([0, 0, 0, 1]);
            au.extend(n);
        }
        let mut out = Vec::new();
        timed("packetize", || crate::sfu::packetize_h264(&au, max, &mut out));
        for p in &out {
            prop_assert!(p.len() <= max.max(16), "payload of {} bytes over {}", p.len(), max.max(16));
            prop_assert!(!p.is_empty());
            let _ = crate::sfu::payload_nal_types(p);
        }
    }

    #[test]
    fn fuzz_libavcodec_wrapper(units in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..2000), any::<bool>()), 1..6)) {
        let mut dec = crate::codec::ffmpeg::FfmpegDecoder::new(crate::media::VideoCodec::H264).expect("decoder");
        let mut out = Vec::new();
        for (i, (data, key)) in units.into_iter().enumerate() {
            let mut bytes = vec![0, 0, 0, 1, if key { 0x65 } else { 0x41 }];
            bytes.extend(data);
            let au = crate::media::AccessUnit::new(bytes.into(), i as i64 * 3600, key, Instant::now(), std::time::SystemTime::now());
            timed("decode", || { let _ = dec.decode(&au, i % 3 == 2, &mut out); });
        }
    }

    #[test]
    fn fuzz_label_history(times in proptest::collection::vec(-1_000_000i64..1_000_000, 0..60), since in proptest::option::of(-1_000_000i64..1_000_000), limit in 1usize..100) {
        let store = crate::labels::LabelStore::new(32);
        let t0 = chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("valid");
        for (i, &dt) in times.iter().enumerate() {
            store.push(crate::labels::Label {
                camera: "c".into(),
                label: "x".into(),
                class_id: 0,
                score: 0.5,
                top5: Vec::new(),
                frame_pts: i as i64,
                captured_at: t0 + chrono::Duration::milliseconds(dt),
                latency_ms: 0.0,
            });
        }
        let since = since.map(|s| t0 + chrono::Duration::milliseconds(s));
        let h = timed("history", || store.history("c", since, limit));
        prop_assert!(h.len() <= limit);
        prop_assert!(h.windows(2).all(|w| w[0].captured_at < w[1].captured_at), "captured_at rises");
        prop_assert!(h.iter().all(|l| since.is_none_or(|s| l.captured_at > s)));
    }
}
