//! The one-port SFU (`[webrtc] udp_listen`, here through env
//! `INFERCAST_UDP_LISTEN`) against the real binary: a real RTSP camera in,
//! Rust WebRTC viewers (webrtc 0.21, full ICE) out, in a private network
//! namespace. Every session on the one UDP port: the answers' candidates, the
//! process's UDP sockets, the media each viewer gets, PLI, the viewer count
//! and the clean-up of sessions deleted or abandoned.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::netns;
use common::rtsp::RtspServer;
use common::service::Infercast;
use common::whep_client::{self, Offer, Viewer};

const CLIP: &str = "assets/demo/bikes-640x272.h264";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// The ports of every `a=candidate` line of an SDP.
fn candidate_ports(sdp: &str) -> Vec<u16> {
    sdp.lines()
        .filter(|l| l.starts_with("a=candidate:"))
        .filter_map(|l| l.split_whitespace().nth(5)?.parse().ok())
        .collect()
}

fn post(app: &Infercast, viewer: &Viewer, path: &str) -> (String, String) {
    let r = whep_client::post(&app.base, path, "application/sdp", &viewer.offer_sdp);
    assert_eq!(r.status, 201, "POST {path}: {}\nlog:\n{}", r.body, app.log());
    (r.location.expect("Location"), r.body)
}

/// The first packet carrying a slice carries an IDR.
fn starts_at_keyframe(packets: &[whep_client::RtpSeen]) -> bool {
    packets.iter().find(|p| p.nal_types.iter().any(|t| (1..=5).contains(t))).is_some_and(|p| p.nal_types.contains(&5))
}

#[test]
fn every_viewer_on_one_udp_port() {
    if !netns::isolated("every_viewer_on_one_udp_port") {
        return;
    }
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server = RtspServer::start(&[("/cam1", CLIP)], None);
    let listen = format!("127.0.0.1:{port}");
    let app = Infercast::start_with_env(
        &["--listen", "127.0.0.1:0", &format!("door={}", server.url("/cam1"))],
        &[("INFERCAST_UDP_LISTEN", &listen)],
    );
    app.wait_for("/api/cameras/door", Duration::from_secs(20), |c| c["state"] == "streaming");
    assert!(app.log().contains("one-port SFU listening"), "{}", app.log());
    let rt = runtime();

    // 12 raw viewers and 2 annotated ones, all answered on the one port.
    let mut viewers = Vec::new();
    for i in 0..14 {
        let track = if i < 12 { "raw" } else { "annotated" };
        let viewer = rt.block_on(Viewer::new(Offer::H264));
        let (location, answer) = post(&app, &viewer, &format!("/whep/door/{track}"));
        let ports = candidate_ports(&answer);
        assert!(
            !ports.is_empty() && ports.iter().all(|p| *p == port),
            "candidates {ports:?} not all on {port}:\n{answer}"
        );
        assert!(answer.contains("a=ice-lite"), "an ICE-lite answer:\n{answer}");
        rt.block_on(viewer.apply_answer(&answer));
        viewers.push((viewer, location, track));
    }
    for (viewer, _, _) in &viewers {
        assert!(rt.block_on(viewer.connected(Duration::from_secs(10))), "viewer connects; log:\n{}", app.log());
    }
    assert_eq!(common::process::udp_sockets(app.pid()), 1, "one UDP socket for 14 sessions");
    std::thread::sleep(Duration::from_secs(3));
    let cam = app.camera("door");
    assert_eq!((cam["viewers"]["raw"].as_u64(), cam["viewers"]["annotated"].as_u64()), (Some(12), Some(2)), "{cam}");
    for (viewer, _, track) in &viewers {
        let packets = viewer.packets();
        let frames = packets.iter().filter(|p| p.marker).count();
        assert!(frames >= 40, "{track} viewer: {frames} frames in ~3 s");
        assert!(starts_at_keyframe(&packets), "{track} viewer does not start at an IDR");
    }
    let ttff = app.metric("infercast_webrtc_time_to_first_frame_seconds_count{track=\"raw\"}");
    assert_eq!(ttff, 12.0, "time to first frame of every raw viewer");

    // PLI on an annotated viewer: the encoder sends an IDR soon.
    let (annotated, _, _) = &viewers[12];
    let before = annotated.packets().len();
    rt.block_on(annotated.send_pli());
    std::thread::sleep(Duration::from_millis(1500));
    let after = annotated.packets();
    assert!(after[before..].iter().any(|p| p.nal_types.contains(&5)), "no IDR within 1.5 s of a PLI");
    assert_eq!(app.metric("infercast_webrtc_plis_total{camera=\"door\",track=\"annotated\"}"), 1.0);

    // One viewer goes away without DELETE (its DTLS close ends the session);
    // the rest are deleted.
    let (gone, _, _) = viewers.remove(0);
    rt.block_on(gone.close());
    drop(gone);
    let left = common::wait_until(Duration::from_secs(12), || app.camera("door")["viewers"]["raw"] == 11);
    assert!(left.is_some(), "an abandoned session is ended: {}\nlog:\n{}", app.camera("door"), app.log());
    for (viewer, location, _) in &viewers {
        let r = whep_client::delete(&app.base, location);
        assert!(r.status == 200 || r.status == 204, "DELETE {location}: {} {}", r.status, r.body);
        rt.block_on(viewer.close());
    }
    let cam = app.camera("door");
    assert_eq!((cam["viewers"]["raw"].as_u64(), cam["viewers"]["annotated"].as_u64()), (Some(0), Some(0)), "{cam}");
    assert_eq!(app.metric("infercast_webrtc_viewers{camera=\"door\",track=\"raw\"}"), 0.0);
    assert_eq!(app.metric("infercast_webrtc_sessions_ended_total{camera=\"door\",track=\"raw\"}"), 12.0);
    let r = whep_client::delete(&app.base, &viewers[0].1);
    assert_eq!(r.status, 404, "deleted twice");
}
