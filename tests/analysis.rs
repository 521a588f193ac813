//! Keyframe-only monitoring against the real RTSP server: with nobody on the
//! annotated track and `classify_fps` at or below the keyframe rate, only
//! keyframes are decoded (and each classified); an annotated viewer switches
//! the camera to every frame within one GOP, and its leaving switches it back.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use common::depay::Received;
use common::netns;
use common::rtsp::RtspServer;
use common::service::Infercast;
use common::whep_client::{self, Offer, Viewer};
use infercast::codec::ffmpeg::FfmpegDecoder;
use infercast::media::VideoCodec;

const CLIP: &str = "assets/demo/bikes-1280x720-main.h264"; // 25 fps, an IDR every 25 frames

fn counters(app: &Infercast) -> (f64, f64, f64) {
    let m = |name: &str| app.metric(&format!("infercast_{name}{{camera=\"door\"}}"));
    (m("frames_decoded_total"), m("keyframes_received_total"), m("frames_classified_total"))
}

#[test]
fn auto_analysis_decodes_keyframes_only_until_an_annotated_viewer_comes() {
    if !netns::isolated("auto_analysis_decodes_keyframes_only_until_an_annotated_viewer_comes") {
        return;
    }
    let server = RtspServer::start(&[("/cam", CLIP)], None);
    let config = common::scratch_dir("analysis_auto").join("infercast.toml");
    let toml = format!(
        "[[camera]]\nname = \"door\"\nurl = \"{}\"\nclassify_fps = 1\nanalysis = \"auto\"\nannotated_linger_ms = 500\n",
        server.url("/cam")
    );
    std::fs::write(&config, toml).unwrap();
    let app = Infercast::start(&["--config", config.to_str().unwrap()]);
    let cam = app.wait_for("/api/cameras/door", Duration::from_secs(20), |c| c["analysis"] == "keyframes");
    assert!((cam["keyframe_rate_hz"].as_f64().unwrap() - 1.0).abs() < 0.05, "{cam:#}");

    // Monitoring: decoded ≈ keyframes received, each classified, labels keep coming.
    let (d0, k0, c0) = counters(&app);
    std::thread::sleep(Duration::from_secs(5));
    let (d1, k1, c1) = counters(&app);
    let (decoded, keyframes, classified) = (d1 - d0, k1 - k0, c1 - c0);
    assert!((4.0..=6.0).contains(&keyframes), "{keyframes} keyframes in 5 s");
    assert!((decoded - keyframes).abs() <= 1.0, "decoded {decoded} vs {keyframes} keyframes");
    assert!(classified >= keyframes - 1.0, "classified {classified} of {keyframes} keyframes");
    let cam = app.camera("door");
    assert_eq!(cam["state"], "streaming", "keyframe-only is not degraded: {cam:#}");
    assert!((cam["classify_fps_effective"].as_f64().unwrap() - 1.0).abs() < 0.05, "{cam:#}");
    let labels = app.get_json("/api/labels/door?limit=100");
    assert!(labels.as_array().unwrap().len() >= 4);

    // An annotated viewer: every frame within one GOP (1 s) and a clean picture from its first IDR.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let received = Received::default();
    let viewer = rt.block_on(Viewer::with_sink(Offer::H264, received.sink()));
    let r = whep_client::post(&app.base, "/whep/door/annotated", "application/sdp", &viewer.offer_sdp);
    assert_eq!(r.status, 201, "{}", r.body);
    rt.block_on(viewer.apply_answer(&r.body));
    assert!(rt.block_on(viewer.connected(Duration::from_secs(10))));
    let connected = Instant::now();
    app.wait_for("/api/cameras/door", Duration::from_secs(3), |c| c["analysis"] == "every_frame");
    // Within one GOP (1 s) of the viewer connecting, with slack for a loaded machine.
    assert!(connected.elapsed() < Duration::from_millis(2500), "switched after {:?}", connected.elapsed());
    let (d0, ..) = counters(&app);
    std::thread::sleep(Duration::from_secs(3));
    let (d1, ..) = counters(&app);
    assert!((68.0..=82.0).contains(&(d1 - d0)), "{} frames decoded in 3 s while watched", d1 - d0);
    // 60 usable access units (2.4 s of video), bounded in time.
    let (aus, lost) = received.wait_for_units(60, Duration::from_secs(15));
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
    assert!(
        aus.len() >= 60,
        "{} access units ({lost} lost to missing packets); NACKs {}; {udp:?}",
        aus.len(),
        app.metric("infercast_webrtc_nacks_total{camera=\"door\",track=\"annotated\"}")
    );
    assert!(aus[0].keyframe, "the annotated track starts at an IDR");
    let mut decoder = FfmpegDecoder::new(VideoCodec::H264).unwrap();
    let mut pictures = Vec::new();
    for au in &aus {
        decoder.decode(au, false, &mut pictures).unwrap();
    }
    assert_eq!(decoder.stats().errors, 0, "a clean picture");
    assert!(pictures.len() + 2 >= aus.len());

    // The viewer leaves: back to keyframes after the linger (0.5 s) and the next IDR.
    let r = whep_client::delete(&app.base, r.location.as_deref().unwrap());
    assert!(r.status == 200 || r.status == 204);
    rt.block_on(viewer.close());
    app.wait_for("/api/cameras/door", Duration::from_secs(4), |c| c["analysis"] == "keyframes");
}

#[test]
fn keyframes_policy_monitors_at_the_keyframe_rate_whatever_classify_fps_says() {
    if !netns::isolated("keyframes_policy_monitors_at_the_keyframe_rate_whatever_classify_fps_says") {
        return;
    }
    let server = RtspServer::start(&[("/cam", CLIP)], None);
    let config = common::scratch_dir("analysis_keyframes").join("infercast.toml");
    let toml = format!("[[camera]]\nname = \"door\"\nurl = \"{}\"\nanalysis = \"keyframes\"\n", server.url("/cam"));
    std::fs::write(&config, toml).unwrap();
    let app = Infercast::start(&["--config", config.to_str().unwrap()]);
    app.wait_for("/api/cameras/door", Duration::from_secs(20), |c| c["analysis"] == "keyframes");
    let (d0, k0, _) = counters(&app);
    std::thread::sleep(Duration::from_secs(4));
    let (d1, k1, _) = counters(&app);
    assert!((d1 - d0 - (k1 - k0)).abs() <= 1.0, "decoded {} vs keyframes {}", d1 - d0, k1 - k0);
    // A snapshot still works: it waits for the next keyframe.
    let snap = app.get("/api/cameras/door/snapshot.jpg?track=raw");
    assert_eq!(snap.status, 200);
}
