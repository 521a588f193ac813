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

/// The one port (the default, 8189: each test has a network namespace of its
/// own), or None on the per-session SFU (`scripts/test` runs the suite a
/// second time with `INFERCAST_UDP_LISTEN=off`).
fn one_port() -> Option<u16> {
    match std::env::var("INFERCAST_UDP_LISTEN") {
        Err(_) => Some(8189),
        Ok(v) => {
            infercast::config::parse_udp_listen(&v).expect("INFERCAST_UDP_LISTEN is IP:port or off").map(|a| a.port())
        }
    }
}

/// Asserts that every candidate line of `sdp` is on the one port, if the
/// suite runs on it.
fn assert_on_one_port(sdp: &str) {
    let Some(port) = one_port() else { return };
    let ports: Vec<&str> =
        sdp.lines().filter(|l| l.contains("candidate:")).filter_map(|l| l.split_whitespace().nth(5)).collect();
    assert!(!ports.is_empty() && ports.iter().all(|p| *p == port.to_string()), "candidates not all on {port}:\n{sdp}");
}

fn start_camera() -> (RtspServer, Infercast) {
    let server = RtspServer::start(&[("/cam1", CLIP)], None);
    let app = Infercast::start(&[&format!("door={}", server.url("/cam1"))]);
    app.wait_for("/api/cameras/door", Duration::from_secs(20), |c| c["state"] == "streaming");
    if one_port().is_some() {
        assert!(app.log().contains("one-port SFU listening"), "{}", app.log());
    }
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
    assert_on_one_port(&r.body);
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

    // OPTIONS says what the endpoint takes; with no `[http] allowed_origins`
    // no page of another origin may call it (tests/auth.rs checks an allowed one).
    let r = whep_client::request(&app.base, "OPTIONS", "/whep/door/raw", &[("origin", "https://evil.example")], "");
    assert_eq!(r.status, 204);
    let h = |k: &str| r.headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
    assert_eq!(h("access-control-allow-origin"), "", "a foreign origin gets no CORS headers");
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

/// The value of header `name` in `r` ("" if absent).
fn header(r: &whep_client::HttpReply, name: &str) -> String {
    r.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap_or_default()
}

/// `PATCH` (RFC 9725 §4.3): trickle ICE and an ICE restart on a live
/// session, the viewer still receiving afterwards; the method, media type,
/// entity-tag and fragment errors (405, 415, 412, 400, 422).
#[test]
fn trickle_ice_and_ice_restart_over_patch() {
    if !netns::isolated("trickle_ice_and_ice_restart_over_patch") {
        return;
    }
    let (_server, app) = start_camera();
    let rt = runtime();
    let viewer = rt.block_on(Viewer::new(Offer::H264));
    let r = whep_client::post(&app.base, "/whep/door/raw", "application/sdp", &viewer.offer_sdp);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(header(&r, "accept-patch"), "application/trickle-ice-sdpfrag");
    let (location, etag, answer) = (r.location.unwrap(), r.etag.unwrap(), r.body);
    rt.block_on(viewer.apply_answer(&answer));
    assert!(rt.block_on(viewer.connected(Duration::from_secs(10))), "viewer connects; log:\n{}", app.log());

    let frag = "application/trickle-ice-sdpfrag";
    let patch =
        |headers: &[(&str, &str)], body: &str| whep_client::request(&app.base, "PATCH", &location, headers, body);
    let r = whep_client::options(&app.base, &location);
    assert_eq!((r.status, header(&r, "accept-patch").as_str()), (204, frag));
    // Methods a resource does not take: 405 with Allow.
    let r = whep_client::request(&app.base, "PUT", "/whep/door/raw", &[("content-type", "application/sdp")], "v=0");
    assert_eq!(r.status, 405, "{}", r.body);
    assert!(header(&r, "allow").contains("POST"), "Allow: {}", header(&r, "allow"));
    let r = whep_client::request(&app.base, "GET", &location, &[], "");
    assert_eq!(r.status, 405, "{}", r.body);
    assert!(header(&r, "allow").contains("PATCH"), "Allow: {}", header(&r, "allow"));

    // Trickle: the viewer's own first candidate again, with and without the ETag.
    let ufrag = infercast::sfu::sdpfrag::ice_ufrag(&viewer.offer_sdp).unwrap().to_owned();
    let candidate = viewer.offer_sdp.lines().find(|l| l.starts_with("a=candidate:")).unwrap().trim().to_owned();
    let trickle = format!("a=ice-ufrag:{ufrag}\r\nm=video 9 UDP/TLS/RTP/SAVPF 102\r\na=mid:0\r\n{candidate}\r\n");
    let r = patch(&[("content-type", "application/sdp")], &trickle);
    assert_eq!((r.status, header(&r, "accept-patch").as_str()), (415, frag), "{}", r.body);
    let r = patch(&[("content-type", frag), ("if-match", "\"not-the-etag\"")], &trickle);
    assert_eq!(r.status, 412, "{}", r.body);
    let r = patch(&[("content-type", frag)], "this is no fragment");
    assert_eq!(r.status, 400, "{}", r.body);
    let r = patch(&[("content-type", frag), ("if-match", &etag)], &trickle);
    assert_eq!(r.status, 204, "{}", r.body);
    let r = patch(&[("content-type", frag)], &trickle);
    assert_eq!(r.status, 204, "{}", r.body);
    // New credentials need If-Match: "*"; a restart needs new credentials.
    let r = patch(&[("content-type", frag)], "a=ice-ufrag:someoneelse\r\na=ice-pwd:0123456789abcdefghijkl\r\n");
    assert_eq!(r.status, 422, "{}", r.body);
    let r = patch(&[("content-type", frag), ("if-match", "*")], &trickle);
    assert_eq!(r.status, 422, "{}", r.body);
    let r = whep_client::request(&app.base, "PATCH", "/whep/door/raw/0123456789abcdef", &[("content-type", frag)], "");
    assert_eq!(r.status, 404, "{}", r.body);

    // ICE restart: the viewer's new credentials and candidates in, ours out.
    let restarted = rt.block_on(viewer.restart_offer());
    let fragment = infercast::sfu::sdpfrag::answer_fragment(&restarted).expect("restart offer has ICE lines");
    let r = patch(&[("content-type", frag), ("if-match", "*")], &fragment);
    assert_eq!(r.status, 200, "{}\nlog:\n{}", r.body, app.log());
    assert_eq!(r.content_type, frag);
    let new_etag = r.etag.clone().expect("a new ETag");
    assert_ne!(new_etag, etag, "a restart changes the entity-tag");
    let ours = infercast::sfu::sdpfrag::SdpFragment::parse(&r.body).expect("our fragment parses");
    let (new_ufrag, new_pwd) = (ours.ice_ufrag.clone().unwrap(), ours.ice_pwd.clone().unwrap());
    assert_ne!(Some(new_ufrag.as_str()), infercast::sfu::sdpfrag::ice_ufrag(&answer), "new server credentials");
    assert!(!ours.candidates.is_empty() && r.body.contains("127.0.0.1"), "{}", r.body);
    assert_on_one_port(&r.body);
    let mut renewed = infercast::sfu::sdpfrag::renewed_offer(&answer, &new_ufrag, &new_pwd);
    for c in &ours.candidates {
        renewed += &format!("a={c}\r\n");
    }
    rt.block_on(viewer.apply_answer(&renewed));
    // The old entity-tag is stale now; the new one is accepted.
    let r = patch(&[("content-type", frag), ("if-match", &etag)], "");
    assert_eq!(r.status, 412, "{}", r.body);
    let r = patch(&[("content-type", frag), ("if-match", &new_etag)], "");
    assert_eq!(r.status, 204, "{}", r.body);

    // Still streaming over the restarted connection.
    let before = viewer.packets().len();
    std::thread::sleep(Duration::from_secs(4));
    let after = viewer.packets().len();
    assert!(after > before + 100, "{} RTP packets in the 4 s after the restart", after - before);
    assert!(rt.block_on(viewer.connected(Duration::from_secs(1))), "still connected");
    assert!(app.log().contains("ICE restarted (PATCH)"), "{}", app.log());
    // Time to first frame: one observation for this viewer, under the 10 s bound.
    let metrics = String::from_utf8(app.get("/metrics").body).unwrap();
    let value = |name: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} in {metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("infercast_webrtc_time_to_first_frame_seconds_count{track=\"raw\"}"), 1.0);
    let ttff = value("infercast_webrtc_time_to_first_frame_seconds_sum{track=\"raw\"}");
    assert!(ttff > 0.0 && ttff < 10.0, "time to first frame {ttff} s");
    assert_eq!(raw_viewers(&app), 1);
    let r = whep_client::delete(&app.base, &location);
    assert!(r.status == 200 || r.status == 204, "{}", r.body);
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
    let server = RtspServer::start(&[("/cam1", CLIP)], None);
    let config = common::scratch_dir("annotated_linger").join("infercast.toml");
    let toml = format!("[[camera]]\nname = \"door\"\nurl = \"{}\"\nannotated_linger_ms = 1000\n", server.url("/cam1"));
    std::fs::write(&config, toml).unwrap();
    let app = Infercast::start(&["--config", config.to_str().unwrap()]);
    app.wait_for("/api/cameras/door", Duration::from_secs(20), |c| c["state"] == "streaming");
    let encoded = || app.metric("infercast_frames_encoded_total{camera=\"door\"}");
    assert_eq!(encoded(), 0.0, "on demand: nothing encoded before the first viewer");
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
    // The encoder stops annotated_linger_ms (1 s) after the last viewer left.
    std::thread::sleep(Duration::from_millis(1800));
    let stopped_at = encoded();
    assert!(stopped_at > 40.0, "{stopped_at} frames encoded while watched");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(encoded(), stopped_at, "encoder still running 1.8 s after the last viewer left");
    assert!(app.metric("infercast_capture_to_encoded_seconds_count{camera=\"door\"}") > 0.0);
}

/// One access unit as the viewer received it: whether it is an IDR and its
/// packets' payload hashes (identical hashes = the same access unit resent).
#[derive(Debug)]
struct FrameSeen {
    /// Index of its first packet in the viewer's packet list.
    first_packet: usize,
    idr: bool,
    hashes: Vec<u64>,
}

fn frames(packets: &[whep_client::RtpSeen]) -> Vec<FrameSeen> {
    let mut out = Vec::new();
    let mut cur = FrameSeen { first_packet: 0, idr: false, hashes: Vec::new() };
    for (i, p) in packets.iter().enumerate() {
        if cur.hashes.is_empty() {
            cur.first_packet = i;
        }
        cur.idr |= p.nal_types.contains(&5);
        cur.hashes.push(p.payload_hash);
        if p.marker {
            out.push(std::mem::replace(&mut cur, FrameSeen { first_packet: 0, idr: false, hashes: Vec::new() }));
        }
    }
    out
}

/// Waits (≤ 5 s) until the viewer has received an IDR after the packets it had
/// when called, then returns the packet count.
fn after_next_idr(viewer: &Viewer) -> usize {
    let start = viewer.packets().len();
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(50));
        let packets = viewer.packets();
        if frames(&packets[start..]).iter().any(|f| f.idr) {
            return packets.len();
        }
    }
    panic!("no IDR in 5 s");
}

#[test]
fn pli_gets_a_keyframe_on_both_tracks() {
    if !netns::isolated("pli_gets_a_keyframe_on_both_tracks") {
        return;
    }
    let (_server, app) = start_camera();
    let rt = runtime();

    // Raw: the camera's GOP is 1 s. A PLI right after a keyframe makes the server
    // resend its cached keyframe at once: the same IDR bytes arrive a second time.
    let viewer = rt.block_on(Viewer::new(Offer::H264));
    let (raw_location, answer) = post_offer(&app, &viewer, "/whep/door/raw");
    rt.block_on(viewer.apply_answer(&answer));
    assert!(rt.block_on(viewer.connected(Duration::from_secs(10))), "viewer connects; log:\n{}", app.log());
    after_next_idr(&viewer);
    std::thread::sleep(Duration::from_millis(1100)); // past the per-session PLI rate limit
    let before_pli = after_next_idr(&viewer);
    rt.block_on(viewer.send_pli());
    std::thread::sleep(Duration::from_millis(1500));
    let seen = frames(&viewer.packets());
    let idrs: Vec<&FrameSeen> = seen.iter().filter(|f| f.idr).collect();
    let resent =
        idrs.windows(3).any(|w| w[2].first_packet >= before_pli && w[..2].iter().any(|e| e.hashes == w[2].hashes))
            || idrs.windows(2).any(|w| w[1].first_packet >= before_pli && w[0].hashes == w[1].hashes);
    assert!(
        resent,
        "no keyframe resent after the PLI; IDRs at packets {:?}",
        idrs.iter().map(|f| f.first_packet).collect::<Vec<_>>()
    );
    assert_eq!(app.metric("infercast_webrtc_plis_total{camera=\"door\",track=\"raw\"}"), 1.0);
    whep_client::delete(&app.base, &raw_location);
    rt.block_on(viewer.close());

    // Annotated: the encoder's GOP is 2 s (50 frames). A PLI a few frames after an
    // IDR makes it emit the next IDR far sooner.
    let viewer = rt.block_on(Viewer::new(Offer::H264));
    let (location, answer) = post_offer(&app, &viewer, "/whep/door/annotated");
    rt.block_on(viewer.apply_answer(&answer));
    assert!(rt.block_on(viewer.connected(Duration::from_secs(10))), "viewer connects; log:\n{}", app.log());
    after_next_idr(&viewer);
    std::thread::sleep(Duration::from_millis(1100));
    let at_idr = after_next_idr(&viewer);
    std::thread::sleep(Duration::from_millis(200));
    let before_pli = viewer.packets().len();
    rt.block_on(viewer.send_pli());
    std::thread::sleep(Duration::from_millis(1500));
    let seen = frames(&viewer.packets());
    let frames_after_pli: Vec<&FrameSeen> = seen.iter().filter(|f| f.first_packet >= before_pli).collect();
    let idr_after = frames_after_pli.iter().position(|f| f.idr).expect("an IDR after the PLI");
    let since_last_idr = seen.iter().filter(|f| f.first_packet >= at_idr).count() - frames_after_pli.len() + idr_after;
    assert!(
        idr_after <= 15 && since_last_idr < 40,
        "IDR {idr_after} frames after the PLI, {since_last_idr} after the previous IDR (GOP 50)"
    );
    assert_eq!(app.metric("infercast_webrtc_plis_total{camera=\"door\",track=\"annotated\"}"), 1.0);
    whep_client::delete(&app.base, &location);
    rt.block_on(viewer.close());
}

#[test]
fn hundred_rapid_create_delete_cycles_leave_nothing_behind() {
    if !netns::isolated("hundred_rapid_create_delete_cycles_leave_nothing_behind") {
        return;
    }
    let (_server, app) = start_camera();
    let rt = runtime();
    // One viewer watches throughout: the churn must not disturb it.
    let watcher = rt.block_on(Viewer::new(Offer::H264));
    let (watcher_location, answer) = post_offer(&app, &watcher, "/whep/door/raw");
    rt.block_on(watcher.apply_answer(&answer));
    assert!(rt.block_on(watcher.connected(Duration::from_secs(10))), "viewer connects; log:\n{}", app.log());

    let offer = rt.block_on(Viewer::new(Offer::H264));
    let cycle = || {
        let (location, _) = post_offer(&app, &offer, "/whep/door/raw");
        let r = whep_client::delete(&app.base, &location);
        assert!(r.status == 200 || r.status == 204, "DELETE {location}: {} {}", r.status, r.body);
    };
    // Warm up lazily created state (runtime worker threads, DTLS certificate, ...).
    for _ in 0..3 {
        cycle();
    }
    std::thread::sleep(Duration::from_secs(1));
    let fds_before = common::process::open_fds(app.pid());
    let frames_before = watcher.packets().iter().filter(|p| p.marker).count();
    let started = std::time::Instant::now();
    for _ in 0..100 {
        cycle();
    }
    let churn = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let watched_frames = watcher.packets().iter().filter(|p| p.marker).count() - frames_before;
    let expected = (churn.as_secs_f64() * 25.0) as usize;
    assert!(watched_frames * 10 >= expected * 8, "watcher got {watched_frames} frames of ~{expected} during the churn");

    assert_eq!(raw_viewers(&app), 1, "only the watcher's subscription is left");
    assert_eq!(app.metric("infercast_webrtc_viewers{camera=\"door\",track=\"raw\"}"), 1.0);
    let created = app.metric("infercast_webrtc_sessions_created_total{camera=\"door\",track=\"raw\"}");
    let ended = app.metric("infercast_webrtc_sessions_ended_total{camera=\"door\",track=\"raw\"}");
    assert_eq!((created, ended), (104.0, 103.0));
    // Sockets close when the connections' drivers finish: allow them a moment.
    let mut fds_after = common::process::open_fds(app.pid());
    for _ in 0..50 {
        if fds_after <= fds_before {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        fds_after = common::process::open_fds(app.pid());
    }
    assert!(fds_after <= fds_before, "open fds {fds_before} before the churn, {fds_after} after");
    eprintln!("100 create/delete cycles in {churn:?}; fds {fds_before} → {fds_after}");

    whep_client::delete(&app.base, &watcher_location);
    assert_eq!(raw_viewers(&app), 0);
    rt.block_on(watcher.close());
    rt.block_on(offer.close());
}

#[test]
fn a_viewer_that_leaves_without_delete_is_cleaned_up() {
    if !netns::isolated("a_viewer_that_leaves_without_delete_is_cleaned_up") {
        return;
    }
    let (_server, app) = start_camera();
    let rt = runtime();
    let viewer = rt.block_on(Viewer::new(Offer::H264));
    let (_, answer) = post_offer(&app, &viewer, "/whep/door/raw");
    rt.block_on(viewer.apply_answer(&answer));
    assert!(rt.block_on(viewer.connected(Duration::from_secs(10))), "viewer connects; log:\n{}", app.log());
    app.wait_for("/api/cameras/door", Duration::from_secs(5), |c| c["viewers"]["raw"] == 1);
    let started = std::time::Instant::now();
    rt.block_on(viewer.close());
    // Closed (DTLS close_notify) or silent (ICE consent fails, then 10 s of grace).
    app.wait_for("/api/cameras/door", Duration::from_secs(45), |c| c["viewers"]["raw"] == 0);
    for _ in 0..50 {
        if app.metric("infercast_webrtc_viewers{camera=\"door\",track=\"raw\"}") == 0.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(app.metric("infercast_webrtc_viewers{camera=\"door\",track=\"raw\"}"), 0.0);
    eprintln!("session ended {:?} after the viewer left", started.elapsed());
}

/// Ports of the answer's `a=candidate` lines whose address is `ip`.
fn candidate_ports(answer: &str, ip: &str) -> Vec<u16> {
    answer
        .lines()
        .filter(|l| l.starts_with("a=candidate:"))
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .filter(|f| f.len() > 5 && f[4] == ip)
        .map(|f| f[5].parse().unwrap())
        .collect()
}

#[test]
fn webrtc_config_pins_ports_and_advertises_public_ips() {
    if !netns::isolated("webrtc_config_pins_ports_and_advertises_public_ips") {
        return;
    }
    // A "LAN" address of this namespace's own, as a NATed machine has.
    let ip = std::process::Command::new("ip").args(["addr", "add", "10.99.0.1/32", "dev", "lo"]).status().unwrap();
    assert!(ip.success(), "ip addr add");
    let server = RtspServer::start(&[("/cam1", CLIP)], None);
    let config = common::scratch_dir("webrtc_ports").join("infercast.toml");
    let toml = format!(
        "[webrtc]\nudp_ips = [\"10.99.0.1\", \"127.0.0.1\"]\nudp_port_range = [50000, 50001]\npublic_ips = [\"203.0.113.7\"]\n\
         [[webrtc.ice_servers]]\nurls = [\"stun:stun.example.org:3478\"]\n\n\
         [[camera]]\nname = \"door\"\nurl = \"{}\"\n",
        server.url("/cam1")
    );
    std::fs::write(&config, toml).unwrap();
    let app = Infercast::start(&["--config", config.to_str().unwrap()]);
    app.wait_for("/api/cameras/door", Duration::from_secs(20), |c| c["state"] == "streaming");
    assert_eq!(app.get_json("/api/webrtc")["ice_servers"][0]["urls"][0], "stun:stun.example.org:3478");

    let rt = runtime();
    let viewer = rt.block_on(Viewer::new(Offer::H264));
    let (first, answer) = post_offer(&app, &viewer, "/whep/door/raw");
    let ports = candidate_ports(&answer, "127.0.0.1");
    // The session's port: from the range, or the one port (which ignores the range).
    let expected = |p: &u16| one_port().map_or((50000..=50001).contains(p), |one| *p == one);
    assert!(!ports.is_empty() && ports.iter().all(expected), "{answer}");
    let lan = candidate_ports(&answer, "10.99.0.1");
    assert!(!lan.is_empty() && lan.iter().all(|p| *p == ports[0]), "one port per session on every IP:\n{answer}");
    // 1:1 NAT: the LAN candidate's public twin, same port; none for loopback.
    assert!(
        answer.contains(&format!("203.0.113.7 {} typ srflx raddr 10.99.0.1 rport {}", ports[0], ports[0])),
        "public IP advertised:\n{answer}"
    );
    // One per transport: UDP, and on the one port its ICE-TCP twin (passive).
    assert_eq!(candidate_ports(&answer, "203.0.113.7").len(), if one_port().is_some() { 2 } else { 1 }, "{answer}");
    if let Some(port) = one_port() {
        let tcp = format!("tcp 1688207359 203.0.113.7 {port} typ srflx raddr 10.99.0.1 rport {port} tcptype passive");
        assert!(
            answer.contains(&tcp),
            "ICE-TCP twin advertised:
{answer}"
        );
    }
    // The viewer still connects (over the loopback candidate) and receives video.
    rt.block_on(viewer.apply_answer(&answer));
    assert!(rt.block_on(viewer.connected(Duration::from_secs(10))), "viewer connects; log:\n{}", app.log());

    // Any WHEP player learns the STUN/TURN servers from the answer's Link headers.
    let second = whep_client::post(&app.base, "/whep/door/raw", "application/sdp", &viewer.offer_sdp);
    assert_eq!(second.status, 201, "{}", second.body);
    let links: Vec<&str> = second.headers.iter().filter(|(k, _)| k == "link").map(|(_, v)| v.as_str()).collect();
    assert_eq!(links, ["<stun:stun.example.org:3478>; rel=\"ice-server\""], "{:?}", second.headers);
    let ports2 = candidate_ports(&second.body, "127.0.0.1");
    if one_port().is_some() {
        // Every session on the one port: no range to use up.
        assert_eq!(ports2, ports, "{}", second.body);
        let third = post_offer(&app, &viewer, "/whep/door/raw");
        assert_on_one_port(&third.1);
        rt.block_on(viewer.close());
        return;
    }
    assert!(ports2.iter().all(|p| (50000..=50001).contains(p) && !ports.contains(p)), "{ports:?} {ports2:?}");
    // The range is used up: a clear error, and the sessions keep going.
    let r = whep_client::post(&app.base, "/whep/door/raw", "application/sdp", &viewer.offer_sdp);
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(r.body.contains("udp_port_range"), "{}", r.body);
    std::thread::sleep(Duration::from_secs(1));
    assert!(viewer.packets().iter().filter(|p| p.marker).count() > 10, "first viewer still receives");
    // A deleted session's port is available again.
    let r = whep_client::delete(&app.base, &first);
    assert!(r.status == 200 || r.status == 204, "{}", r.body);
    let other = rt.block_on(Viewer::new(Offer::H264));
    post_offer(&app, &other, "/whep/door/raw");
    rt.block_on(viewer.close());
    rt.block_on(other.close());
}
