//! WHEP against the real binary: a real RTSP camera in, a Rust WebRTC viewer
//! (webrtc 0.21) out, everything in a private network namespace.

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

fn start_camera() -> (RtspServer, Infercast) {
    let server = RtspServer::start(&[("/cam1", CLIP)], None);
    let app = Infercast::start(&[&format!("door={}", server.url("/cam1"))]);
    app.wait_for("/api/cameras/door", Duration::from_secs(20), |c| c["state"] == "streaming");
    (server, app)
}

fn raw_viewers(app: &Infercast) -> u64 {
    app.camera("door")["viewers"]["raw"].as_u64().unwrap()
}

/// Posts `viewer`'s offer; returns the session's resource path and the answer.
fn post_offer(app: &Infercast, viewer: &Viewer, path: &str) -> (String, String) {
    let r = whep_client::post(&app.base, path, "application/sdp", &viewer.offer_sdp);
    assert_eq!(r.status, 201, "POST {path}: {}\nlog:\n{}", r.body, app.log());
    assert_eq!(r.content_type, "application/sdp");
    assert!(r.etag.is_some(), "ETag");
    let location = r.location.expect("Location");
    assert!(location.starts_with(&format!("{path}/")), "{location}");
    assert!(
        r.body.contains("a=candidate:") && r.body.contains("127.0.0.1"),
        "answer has a loopback candidate:\n{}",
        r.body
    );
    (location, r.body)
}

/// The packets' NAL types show a keyframe first: the first packet carrying any
/// slice carries an IDR, and parameter sets come before it.
fn assert_starts_at_keyframe(packets: &[whep_client::RtpSeen]) {
    let first_slice = packets.iter().position(|p| p.nal_types.iter().any(|t| (1..=5).contains(t))).expect("a slice");
    assert!(packets[first_slice].nal_types.contains(&5), "first slice is not IDR: {:?}", &packets[..=first_slice]);
    assert!(
        packets[..=first_slice].iter().any(|p| p.nal_types.contains(&7)),
        "no SPS before the first IDR: {:?}",
        &packets[..=first_slice]
    );
}

#[test]
fn raw_track_over_whep_with_a_rust_viewer() {
    if !netns::isolated("raw_track_over_whep_with_a_rust_viewer") {
        return;
    }
    let (_server, app) = start_camera();
    let rt = runtime();

    // CORS preflight.
    let r = whep_client::options(&app.base, "/whep/door/raw");
    assert_eq!(r.status, 204);
    let h = |k: &str| r.headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
    assert_eq!(h("access-control-allow-origin"), "*");
    assert!(h("access-control-allow-methods").contains("POST") && h("access-control-allow-methods").contains("DELETE"));
    assert!(h("access-control-allow-headers").to_lowercase().contains("content-type"));
    assert_eq!(h("accept-post"), "application/sdp");

    // Errors.
    let viewer = rt.block_on(Viewer::new(Offer::H264));
    let r = whep_client::post(&app.base, "/whep/nope/raw", "application/sdp", &viewer.offer_sdp);
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(r.body.contains("\"error\""), "{}", r.body);
    let r = whep_client::post(&app.base, "/whep/door/raw", "application/sdp", "hello, this is not SDP");
    assert_eq!(r.status, 400, "{}", r.body);
    let r = whep_client::post(&app.base, "/whep/door/raw", "application/json", &viewer.offer_sdp);
    assert_eq!(r.status, 400, "{}", r.body);
    let vp8 = rt.block_on(Viewer::new(Offer::Vp8Only));
    let r = whep_client::post(&app.base, "/whep/door/raw", "application/sdp", &vp8.offer_sdp);
    assert_eq!(r.status, 406, "{}", r.body);
    assert!(r.body.contains("H.264"), "{}", r.body);
    rt.block_on(vp8.close());
    let r = whep_client::delete(&app.base, "/whep/door/raw/0123456789abcdef");
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(raw_viewers(&app), 0);

    // A real session.
    let (location, answer) = post_offer(&app, &viewer, "/whep/door/raw");
    let pt = whep_client::answered_video_payload_type(&answer).expect("video m-line");
    rt.block_on(viewer.apply_answer(&answer));
    assert!(rt.block_on(viewer.connected(Duration::from_secs(10))), "viewer connects; log:\n{}", app.log());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(raw_viewers(&app), 1);
    let packets = viewer.packets();
    assert!(packets.len() > 100, "{} RTP packets in 3 s", packets.len());
    assert!(packets.iter().all(|p| p.payload_type == pt), "payload type {pt} throughout");
    assert_starts_at_keyframe(&packets);
    // 25 fps for ~3 s (plus the cached GOP sent at once): frames end with a marker.
    let frames = packets.iter().filter(|p| p.marker).count();
    assert!(frames >= 60, "{frames} frames in 3 s");
    let metrics = String::from_utf8(app.get("/metrics").body).unwrap();
    assert!(metrics.contains("infercast_webrtc_viewers{camera=\"door\",track=\"raw\"} 1"), "{metrics}");

    let r = whep_client::delete(&app.base, &location);
    assert!(r.status == 200 || r.status == 204, "DELETE {location}: {} {}", r.status, r.body);
    assert_eq!(raw_viewers(&app), 0, "hub subscriber gone after DELETE");
    let r = whep_client::delete(&app.base, &location);
    assert_eq!(r.status, 404, "deleted twice");
    rt.block_on(viewer.close());
}

#[test]
fn twenty_viewers_on_one_camera() {
    if !netns::isolated("twenty_viewers_on_one_camera") {
        return;
    }
    let (_server, app) = start_camera();
    let rt = runtime();
    let mut sessions = Vec::new();
    for _ in 0..20 {
        let viewer = rt.block_on(Viewer::new(Offer::H264));
        let (location, answer) = post_offer(&app, &viewer, "/whep/door/raw");
        rt.block_on(viewer.apply_answer(&answer));
        sessions.push((viewer, location));
    }
    for (viewer, _) in &sessions {
        assert!(rt.block_on(viewer.connected(Duration::from_secs(10))), "viewer connects; log:\n{}", app.log());
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(raw_viewers(&app), 20);
    for (viewer, _) in &sessions {
        let packets = viewer.packets();
        assert!(packets.len() > 50, "{} RTP packets", packets.len());
        assert_starts_at_keyframe(&packets);
    }
    for (viewer, location) in &sessions {
        let r = whep_client::delete(&app.base, location);
        assert!(r.status == 200 || r.status == 204, "DELETE {location}: {}", r.status);
        rt.block_on(viewer.close());
    }
    assert_eq!(raw_viewers(&app), 0);
}

#[test]
fn annotated_track_over_whep_starts_at_a_keyframe() {
    if !netns::isolated("annotated_track_over_whep_starts_at_a_keyframe") {
        return;
    }
    let (_server, app) = start_camera();
    let rt = runtime();
    let viewer = rt.block_on(Viewer::new(Offer::H264));
    let (location, answer) = post_offer(&app, &viewer, "/whep/door/annotated");
    let pt = whep_client::answered_video_payload_type(&answer).expect("video m-line");
    rt.block_on(viewer.apply_answer(&answer));
    assert!(rt.block_on(viewer.connected(Duration::from_secs(10))), "viewer connects; log:\n{}", app.log());
    std::thread::sleep(Duration::from_secs(3));
    let packets = viewer.packets();
    assert!(packets.iter().filter(|p| p.marker).count() >= 40, "{} RTP packets in 3 s", packets.len());
    assert!(packets.iter().all(|p| p.payload_type == pt));
    assert_starts_at_keyframe(&packets);
    assert_eq!(app.camera("door")["viewers"]["annotated"], 1);
    let r = whep_client::delete(&app.base, &location);
    assert!(r.status == 200 || r.status == 204, "DELETE {location}: {}", r.status);
    assert_eq!(app.camera("door")["viewers"]["annotated"], 0);
    rt.block_on(viewer.close());
}
