//! WHIP ingest against the real binary and the real model, with `[auth]`: a
//! Rust WHIP publisher (webrtc 0.21) sends a real H.264 clip of photos the
//! model knows; the camera streams and gets their labels; WHEP viewers
//! watch it raw and annotated; the publisher is asked for keyframes (PLI);
//! a second publisher gets 409, an offer without H.264 406, a non-admin
//! 403; a camera made by the POST goes with its DELETE; a publisher that
//! stops sending turns its camera `reconnecting`. All in a network
//! namespace of the test's own.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use common::netns;
use common::service::Infercast;
use common::whep_client::{self, Offer, Viewer};
use common::whip_client::Publisher;
use serde_json::Value;
use sha2::Digest;
use tokio_util::sync::CancellationToken;

const VIEW: &str = "view-token-for-the-whip-test-00001";
const ADMIN: &str = "admin-token-for-the-whip-test-0001";

fn sha256(s: &str) -> String {
    sha2::Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn sdp_post(app: &Infercast, path: &str, token: &str, sdp: &str) -> whep_client::HttpReply {
    let auth = format!("Bearer {token}");
    whep_client::request(&app.base, "POST", path, &[("authorization", &auth), ("content-type", "application/sdp")], sdp)
}

fn state(app: &Infercast, camera: &str) -> String {
    app.camera(camera)["state"].as_str().unwrap_or_default().to_owned()
}

fn names(app: &Infercast) -> Vec<String> {
    let list = app.get_json("/api/cameras");
    list.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_owned()).collect()
}

/// Publishes the scenes clip to `path`: the publisher, its resource path and
/// the token that stops its stream.
fn publish(rt: &tokio::runtime::Runtime, app: &Infercast, path: &str) -> (Publisher, String, CancellationToken) {
    let publisher = rt.block_on(Publisher::new());
    let r = sdp_post(app, path, ADMIN, &publisher.offer_sdp);
    assert_eq!(r.status, 201, "POST {path}: {}\nlog:\n{}", r.body, app.log());
    assert_eq!(r.content_type, "application/sdp");
    let location = r.location.clone().expect("Location");
    rt.block_on(publisher.apply_answer(&r.body));
    assert!(rt.block_on(publisher.connected(Duration::from_secs(10))), "publisher connects; log:\n{}", app.log());
    let stop = CancellationToken::new();
    let _runtime = rt.enter();
    drop(publisher.stream(&common::fixture("scenes-640x480.h264"), stop.clone())); // runs until `stop`
    (publisher, location, stop)
}

#[test]
fn a_rust_whip_publisher_feeds_the_pipeline() {
    if !netns::isolated("a_rust_whip_publisher_feeds_the_pipeline") {
        return;
    }
    let dir = common::scratch_dir("whip");
    let config_path = dir.join("whip.toml");
    std::fs::write(
        &config_path,
        format!(
            "[auth]\n[[auth.tokens]]\nname = \"viewer\"\nrole = \"view\"\nsha256 = \"{}\"\n\
             [[auth.tokens]]\nname = \"ops\"\nrole = \"admin\"\nsha256 = \"{}\"\n\
             [[camera]]\nname = \"studio\"\nurl = \"whip:\"\nclassify_fps = 2\n",
            sha256(VIEW),
            sha256(ADMIN)
        ),
    )
    .unwrap();
    let mut app = Infercast::start(&["--config", config_path.to_str().unwrap()]);
    app.token = Some(VIEW.into());
    assert_eq!(state(&app, "studio"), "connecting", "{}", app.camera("studio"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    // Refusals: no credential, a viewer's, an offer without H.264, not SDP.
    let stranger = rt.block_on(Publisher::new());
    let anonymous = whep_client::post(&app.base, "/whip/studio", "application/sdp", &stranger.offer_sdp);
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert_eq!(sdp_post(&app, "/whip/studio", VIEW, &stranger.offer_sdp).status, 403);
    let vp8 = rt.block_on(Viewer::new(Offer::Vp8Only));
    let no_h264 = sdp_post(&app, "/whip/studio", ADMIN, &vp8.offer_sdp);
    assert_eq!(no_h264.status, 406, "{}", no_h264.body);
    let auth = format!("Bearer {ADMIN}");
    let text = whep_client::request(
        &app.base,
        "POST",
        "/whip/studio",
        &[("authorization", &auth), ("content-type", "text/plain")],
        &stranger.offer_sdp,
    );
    assert_eq!(text.status, 415, "{}", text.body);
    let options = whep_client::options(&app.base, "/whip/studio");
    assert!(options.headers.iter().any(|(k, v)| k == "accept-post" && v == "application/sdp"), "{:?}", options.headers);

    // The configured camera streams what the publisher sends and is labelled.
    let t = Instant::now();
    let (publisher, location, stop) = publish(&rt, &app, "/whip/studio");
    assert!(location.starts_with("/whip/studio/"), "{location}");
    app.wait_for("/api/cameras/studio", Duration::from_secs(20), |c| c["state"] == "streaming");
    println!("WHIP POST to streaming: {} ms", t.elapsed().as_millis());
    let label = loop {
        let history = app.get_json("/api/labels/studio?limit=1");
        if let Some(l) = history.as_array().unwrap().first() {
            break l.clone();
        }
        assert!(t.elapsed() < Duration::from_secs(30), "no label for the WHIP camera; log:\n{}", app.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    let class = label["class_id"].as_u64().unwrap();
    // The clip's photos: espresso, tabby/tiger/Persian/Siamese/Egyptian cat, tripod.
    assert!([967, 281, 282, 283, 284, 285, 872].contains(&class), "studio's label: {label}");
    println!("first label {} ({class}) after {} ms", label["label"], t.elapsed().as_millis());
    assert!(publisher.keyframe_requests() >= 1, "the publisher was asked for a keyframe at the start");
    let camera = app.camera("studio");
    assert_eq!((camera["codec"].as_str(), camera["reconnects"].as_u64()), (Some("H.264"), Some(0)), "{camera}");

    // A second publisher for the same camera is refused.
    let second = rt.block_on(Publisher::new());
    let busy = sdp_post(&app, "/whip/studio", ADMIN, &second.offer_sdp);
    assert_eq!(busy.status, 409, "{}", busy.body);
    assert!(busy.body.contains("already_publishing"), "{}", busy.body);

    // WHEP viewers watch it, raw (the publisher's own H.264) and annotated.
    for track in ["raw", "annotated"] {
        let viewer = rt.block_on(Viewer::new(Offer::H264));
        let r = sdp_post(&app, &format!("/whep/studio/{track}"), VIEW, &viewer.offer_sdp);
        assert_eq!(r.status, 201, "WHEP {track}: {}", r.body);
        rt.block_on(viewer.apply_answer(&r.body));
        assert!(rt.block_on(viewer.connected(Duration::from_secs(10))), "{track} viewer connects");
        let got_idr =
            common::wait_until(Duration::from_secs(10), || viewer.packets().iter().any(|p| p.nal_types.contains(&5)));
        let packets = viewer.packets().len();
        assert!(got_idr.is_some(), "{track} viewer got no IDR ({packets} packets); log:\n{}", app.log());
        println!("{track} viewer: first IDR within {:?}, {packets} packets", got_idr.unwrap());
        rt.block_on(viewer.close());
    }

    // A camera that does not exist is made by the POST and goes with the DELETE.
    let (pop, pop_location, pop_stop) = publish(&rt, &app, "/whip/pop");
    assert!(names(&app).contains(&"pop".to_owned()), "{:?}", names(&app));
    app.wait_for("/api/cameras/pop", Duration::from_secs(20), |c| c["state"] == "streaming");
    let r = whep_client::request(&app.base, "DELETE", &pop_location, &[("authorization", &auth)], "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!names(&app).contains(&"pop".to_owned()), "pop removed with its session: {:?}", names(&app));
    let again = whep_client::request(&app.base, "DELETE", &pop_location, &[("authorization", &auth)], "");
    assert_eq!(again.status, 404, "{}", again.body);
    pop_stop.cancel();
    rt.block_on(pop.close());

    // The publisher goes silent: the camera turns reconnecting, then takes a new publisher.
    stop.cancel();
    let t = Instant::now();
    let mut seen = Vec::new();
    while t.elapsed() < Duration::from_secs(20) {
        let s = state(&app, "studio");
        if seen.last() != Some(&s) {
            seen.push(s.clone());
        }
        if s == "reconnecting" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(seen.last().map(String::as_str), Some("reconnecting"), "states seen: {seen:?}");
    println!("publisher silent → reconnecting after {} ms", t.elapsed().as_millis());
    let camera: Value = app.camera("studio");
    assert!(camera["last_error"].as_str().unwrap_or_default().contains("WHIP"), "{camera}");
    rt.block_on(publisher.close());
    let (_next, _next_location, next_stop) = publish(&rt, &app, "/whip/studio");
    app.wait_for("/api/cameras/studio", Duration::from_secs(20), |c| c["state"] == "streaming");
    next_stop.cancel();
    let log = app.log();
    assert!(!log.contains("panicked"), "{log}");
    app.terminate();
}
