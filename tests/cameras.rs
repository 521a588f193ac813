//! The main job on real RTSP input: infercast against GStreamer's RTSP server
//! serving real clips, each test in a network namespace of its own.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use common::netns;
use common::rtsp::RtspServer;
use common::service::Infercast;

const CLIP: &str = "assets/demo/bikes-640x272.h264";

fn state(v: &serde_json::Value) -> &str {
    v["state"].as_str().unwrap_or_default()
}

#[test]
fn labels_snapshots_and_metrics_from_a_real_camera() {
    if !netns::isolated("labels_snapshots_and_metrics_from_a_real_camera") {
        return;
    }
    let server = RtspServer::start(&[("/cam1", CLIP)], None);
    let started = Instant::now();
    let app = Infercast::start(&[&format!("door={}", server.url("/cam1"))]);

    let labels = app.wait_for("/api/labels", Duration::from_secs(10), |v| v.as_array().is_some_and(|a| !a.is_empty()));
    assert!(started.elapsed() < Duration::from_secs(12), "first label took {:?}", started.elapsed());
    let label = &labels[0];
    assert_eq!(label["camera"], "door");
    assert!(label["label"].as_str().is_some_and(|l| !l.is_empty()));
    assert_eq!(label["top5"].as_array().unwrap().len(), 5);
    assert!(label["score"].as_f64().unwrap() > 0.0);
    assert!(label["captured_at"].as_str().unwrap().contains('T'), "RFC 3339: {label}");
    assert!(label["latency_ms"].as_f64().unwrap() >= 0.0);

    // The clip is 25 fps: decoded fps must match within 10 %.
    let cam = app.wait_for("/api/cameras/door", Duration::from_secs(10), |c| c["fps"].as_f64().is_some());
    std::thread::sleep(Duration::from_secs(2));
    let cam = {
        let _ = cam;
        app.camera("door")
    };
    let fps = cam["fps"].as_f64().unwrap();
    assert!((fps - 25.0).abs() <= 2.5, "decoded fps {fps}");
    assert_eq!(state(&cam), "streaming");
    assert_eq!(
        (cam["width"].as_u64(), cam["height"].as_u64(), cam["codec"].as_str()),
        (Some(640), Some(272), Some("H.264"))
    );

    // Snapshots decode as JPEG; the annotated one differs where the label is drawn.
    // Both are requested at once so they usually come from the same frame (the clip
    // moves): retry until the picture away from the label matches.
    let mut compared = Vec::new();
    for _ in 0..10 {
        let (annotated, raw) = std::thread::scope(|s| {
            let annotated = s.spawn(|| app.get("/api/cameras/door/snapshot.jpg"));
            let raw = app.get("/api/cameras/door/snapshot.jpg?track=raw");
            (annotated.join().unwrap(), raw)
        });
        assert_eq!((annotated.status, raw.status), (200, 200));
        assert_eq!(annotated.content_type, "image/jpeg");
        let a = image::load_from_memory(&annotated.body).unwrap().to_luma8();
        let r = image::load_from_memory(&raw.body).unwrap().to_luma8();
        assert_eq!(a.dimensions(), (640, 272));
        let mean_diff = |x0: u32, y0: u32, w: u32, h: u32| {
            let mut sum = 0u64;
            for y in y0..y0 + h {
                for x in x0..x0 + w {
                    sum += u64::from(a.get_pixel(x, y)[0].abs_diff(r.get_pixel(x, y)[0]));
                }
            }
            sum as f64 / f64::from(w * h)
        };
        let (label_region, elsewhere) = (mean_diff(0, 0, 160, 24), mean_diff(320, 100, 300, 150));
        compared.push((label_region, elsewhere));
        if elsewhere < 3.0 {
            break; // same frame: only the overlay and JPEG noise differ
        }
    }
    let (label_region, elsewhere) = *compared.last().unwrap();
    assert!(elsewhere < 3.0, "never got both tracks of one frame: {compared:?}");
    assert!(label_region > 10.0, "the label region does not differ: {compared:?}");

    let metrics = String::from_utf8(app.get("/metrics").body).unwrap();
    for name in ["frames_received_total", "frames_decoded_total", "frames_classified_total"] {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&format!("infercast_{name}{{camera=\"door\"}}")))
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"));
        let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(n > 0.0, "{line}");
    }
    assert!(metrics.contains("infercast_stage_duration_seconds_bucket{camera=\"door\",stage=\"decode\""));
    assert!(metrics.contains("infercast_capture_to_label_seconds_count{camera=\"door\"}"));

    let event = app.first_sse_event("/api/labels/stream", Duration::from_secs(5));
    assert!(event.contains("event: label") && event.contains("\"camera\":\"door\""), "{event}");
    assert_eq!(app.get_json("/healthz")["status"], "ok");
    let index = app.get_json("/api");
    assert_eq!(index["cameras"], serde_json::json!(["door"]));
    assert!(index["endpoints"].as_array().unwrap().iter().any(|e| e == "GET /api/labels"));
    assert_eq!(app.get_json("/readyz")["cameras_streaming"], 1);
    // The viewer page and what it loads are built into the binary.
    let page = app.get("/");
    assert_eq!((page.status, page.content_type.as_str()), (200, "text/html; charset=utf-8"));
    assert!(String::from_utf8_lossy(&page.body).contains("/viewer/app.js"));
    let script = app.get("/viewer/app.js");
    assert_eq!((script.status, script.content_type.as_str()), (200, "text/javascript; charset=utf-8"));
    assert_eq!(app.get("/viewer/nope.js").status, 404);
    assert_eq!(app.get_json("/api/webrtc"), serde_json::json!({ "ice_servers": [] }));

    let history = app.get_json("/api/labels/door?limit=3");
    assert!(!history.as_array().unwrap().is_empty() && history.as_array().unwrap().len() <= 3);
    let missing = app.get("/api/cameras/nope");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["code"], "camera_not_found");
    assert_eq!(app.get("/api/labels/nope").status, 404);
    assert_eq!(app.get("/api/labels/door?since=yesterday").status, 400);
}

#[test]
fn the_annotated_track_is_encoded_once_when_always_on() {
    if !netns::isolated("the_annotated_track_is_encoded_once_when_always_on") {
        return;
    }
    let server = RtspServer::start(&[("/cam", CLIP)], None);
    let dir = common::scratch_dir("encode_always");
    let config = dir.join("infercast.toml");
    let body = format!(
        "[[camera]]\nname = \"enc\"\nurl = \"{}\"\nencode_annotated = \"always\"\nannotated_bitrate_bps = 800000\n\n\
         [[camera]]\nname = \"lazy\"\nurl = \"{}\"\n",
        server.url("/cam"),
        server.url("/cam")
    );
    std::fs::write(&config, body).unwrap();
    let app = Infercast::start(&["--config", config.to_str().unwrap()]);
    app.wait_for("/api/cameras/enc", Duration::from_secs(10), |c| state(c) == "streaming");
    std::thread::sleep(Duration::from_secs(2));
    let decoded = app.metric("infercast_frames_decoded_total{camera=\"enc\"}");
    let encoded = app.metric("infercast_frames_encoded_total{camera=\"enc\"}");
    assert!(encoded > 0.0 && encoded >= decoded - 5.0, "encoded {encoded} of {decoded} decoded frames");
    assert!(app.metric("infercast_stage_duration_seconds_count{camera=\"enc\",stage=\"encode\"}") > 0.0);
    // on_demand with no viewer: decoded but never encoded.
    assert!(app.metric("infercast_frames_decoded_total{camera=\"lazy\"}") > 0.0);
    assert_eq!(app.metric("infercast_frames_encoded_total{camera=\"lazy\"}"), 0.0);
}

#[test]
fn one_camera_dying_leaves_the_other_streaming_and_it_reconnects() {
    if !netns::isolated("one_camera_dying_leaves_the_other_streaming_and_it_reconnects") {
        return;
    }
    let mut a = RtspServer::start(&[("/cam", CLIP)], None);
    let b = RtspServer::start(&[("/cam", CLIP)], None);
    let app = Infercast::start(&[&format!("a={}", a.url("/cam")), &format!("b={}", b.url("/cam"))]);
    for cam in ["a", "b"] {
        app.wait_for(&format!("/api/cameras/{cam}"), Duration::from_secs(10), |c| state(c) == "streaming");
    }
    a.kill();
    let down = app.wait_for("/api/cameras/a", Duration::from_secs(10), |c| state(c) == "reconnecting");
    assert!(down["last_error"].as_str().is_some_and(|e| !e.is_empty()), "{down}");
    let decoded = |app: &Infercast| app.get_json("/api/cameras/b")["fps"].as_f64().unwrap_or(0.0);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(state(&app.camera("b")), "streaming");
    assert!(decoded(&app) > 20.0, "b keeps its frame rate");

    a.restart();
    let back = Instant::now();
    app.wait_for("/api/cameras/a", Duration::from_secs(8), |c| state(c) == "streaming");
    assert!(
        back.elapsed() <= Duration::from_secs(5),
        "streaming again {:?} after the server came back",
        back.elapsed()
    );
    assert!(app.camera("a")["reconnects"].as_u64().unwrap() >= 1);
}

#[test]
fn a_frozen_camera_is_noticed_within_10_s() {
    if !netns::isolated("a_frozen_camera_is_noticed_within_10_s") {
        return;
    }
    let server = RtspServer::start(&[("/cam", CLIP)], None);
    let app = Infercast::start(&[&format!("frozen={}", server.url("/cam"))]);
    app.wait_for("/api/cameras/frozen", Duration::from_secs(10), |c| state(c) == "streaming");
    server.freeze();
    let t = Instant::now();
    let cam = app.wait_for("/api/cameras/frozen", Duration::from_secs(12), |c| state(c) != "streaming");
    assert!(t.elapsed() <= Duration::from_secs(10), "noticed after {:?}", t.elapsed());
    assert!(cam["last_error"].as_str().unwrap().contains("timed out"), "{cam}");
    server.thaw();
}

#[test]
fn bad_cameras_get_clear_states_and_never_leak_credentials() {
    if !netns::isolated("bad_cameras_get_clear_states_and_never_leak_credentials") {
        return;
    }
    // (H.265 is no longer refused: tests/profiles.rs streams it.)
    let open = RtspServer::start(&[("/cam", CLIP), ("/mjpeg", "mjpeg")], None);
    let secure = RtspServer::start(&[("/cam", CLIP)], Some(("camop", "s3cret-pass")));
    let basic = RtspServer::start_basic(&[("/cam", CLIP)], ("camop", "s3cret-pass"));
    let cameras = [
        format!("good={}", open.url("/cam")),
        "scheme=http://admin:hunter2@127.0.0.1/x".to_owned(),
        "nohost=rtsp://no-such-camera.invalid/stream".to_owned(),
        "refused=rtsp://127.0.0.1:1/stream".to_owned(),
        format!("wrongpath={}", open.url("/no-such-path")),
        format!("wrongpass={}", secure.url_with_credentials("camop", "wrong-pass-77", "/cam")),
        format!("rightpass={}", secure.url_with_credentials("camop", "s3cret-pass", "/cam")),
        format!("basicauth={}", basic.url_with_credentials("camop", "s3cret-pass", "/cam")),
        format!("mjpeg={}", open.url("/mjpeg")),
    ];
    let args: Vec<&str> = cameras.iter().map(String::as_str).collect();
    let app = Infercast::start(&args);
    let expect = [
        ("scheme", "failed", "unsupported scheme"),
        ("nohost", "reconnecting", "cannot connect"),
        ("refused", "reconnecting", "cannot connect"),
        ("wrongpath", "failed", "404"),
        ("wrongpass", "failed", "401"),
        ("mjpeg", "failed", "unsupported codec MJPEG"),
    ];
    for (name, want_state, want_error) in expect {
        let cam = app.wait_for(&format!("/api/cameras/{name}"), Duration::from_secs(10), |c| state(c) == want_state);
        let err = cam["last_error"].as_str().unwrap_or_default();
        assert!(err.contains(want_error), "{name}: error {err:?} lacks {want_error:?}");
    }
    for name in ["good", "rightpass", "basicauth"] {
        app.wait_for(&format!("/api/cameras/{name}"), Duration::from_secs(10), |c| state(c) == "streaming");
    }
    app.wait_for("/api/labels", Duration::from_secs(10), |v| v.as_array().is_some_and(|a| a.len() >= 2));
    let everything = [
        String::from_utf8(app.get("/api/cameras").body).unwrap(),
        String::from_utf8(app.get("/metrics").body).unwrap(),
        String::from_utf8(app.get("/api/labels").body).unwrap(),
        app.log(),
    ]
    .join("\n");
    for secret in ["hunter2", "s3cret-pass", "wrong-pass-77", "camop", "admin"] {
        assert!(!everything.contains(secret), "{secret:?} leaked:\n{everything}");
    }
}

#[test]
fn bad_configs_are_refused_at_start() {
    let dir = common::scratch_dir("bad_configs");
    let cases = [
        (
            "dup.toml",
            "[[camera]]\nname = \"x\"\nurl = \"rtsp://127.0.0.1/a\"\n[[camera]]\nname = \"x\"\nurl = \"rtsp://127.0.0.1/b\"\n",
            "\"x\" is used twice",
        ),
        ("syntax.toml", "[[camera]\nname = \"x\"\n", "line 1"),
        ("unknown.toml", "[[camera]]\nname = \"x\"\nurl = \"rtsp://127.0.0.1/a\"\nfps = 3\n", "unknown field `fps`"),
    ];
    for (file, body, want) in cases {
        let path = dir.join(file);
        std::fs::write(&path, body).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_infercast"))
            .args(["--config", path.to_str().unwrap(), "--listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{file}: {stderr}");
        assert!(stderr.contains(want) && stderr.contains(file), "{file}: {stderr}");
        assert!(!stderr.contains("panicked"));
    }
}

#[test]
fn sigterm_stops_everything_within_2_s() {
    if !netns::isolated("sigterm_stops_everything_within_2_s") {
        return;
    }
    let server = RtspServer::start(&[("/cam", CLIP)], None);
    let mut app = Infercast::start(&[&server.url("/cam")]);
    app.wait_for("/api/cameras/cam1", Duration::from_secs(10), |c| state(c) == "streaming");
    let took = app.terminate();
    assert!(took <= Duration::from_secs(2), "shutdown took {took:?}");
}

#[test]
fn a_panic_in_a_media_thread_fails_that_camera_which_then_recovers() {
    if !netns::isolated("a_panic_in_a_media_thread_fails_that_camera_which_then_recovers") {
        return;
    }
    let server = RtspServer::start(&[("/a", CLIP), ("/b", CLIP)], None);
    let (door, yard) = (format!("door={}", server.url("/a")), format!("yard={}", server.url("/b")));
    // Debug builds panic door's media thread once, at its first picture.
    let app = Infercast::start_with_env(
        &["--listen", "127.0.0.1:0", &door, &yard],
        &[("INFERCAST_TEST_PANIC_MEDIA", "door")],
    );
    let failed = app.wait_for("/api/cameras/door", Duration::from_secs(20), |c| state(c) == "failed");
    let reason = failed["last_error"].as_str().unwrap_or_default();
    assert!(reason.contains("media thread panicked") && reason.contains("restarted"), "{reason}");
    assert_eq!(state(&app.camera("yard")), "streaming", "the other camera never notices");
    app.wait_for("/api/cameras/door", Duration::from_secs(10), |c| state(c) == "streaming");
    let before = app.get_json("/api/labels/door?limit=1000").as_array().unwrap().len();
    std::thread::sleep(Duration::from_secs(2));
    let after = app.get_json("/api/labels/door?limit=1000").as_array().unwrap().len();
    assert!(after > before, "door is labelled again after the restart ({before} → {after})");
    assert!(app.log().contains("media thread panicked"));
}
