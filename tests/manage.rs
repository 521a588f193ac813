//! Cameras managed at run time, against the real RTSP server and the real
//! model, with `[auth]`: `POST /api/cameras` (admin only) starts a camera
//! that streams and gets its photos' labels; a duplicate, a bad body and a
//! non-admin are refused; `DELETE` ends the camera's WHEP viewer cleanly
//! (its data channel closes at once) and the camera; the changes survive a
//! restart (state file beside the config, mode 0600, never a password in
//! the API or the log); SIGHUP with an edited
//! config applies only the difference, and a broken config changes nothing.
//! `PATCH` changes the annotated bitrate, frame rate and size while a WHEP
//! viewer watches: what it receives follows, and its session never ends.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::netns;
use common::rtsp::{CLIP_640X272, RtspServer};
use common::service::Infercast;
use common::whep_client::{self, Offer, Viewer};
use serde_json::Value;
use sha2::Digest;

const VIEW: &str = "view-token-for-the-manage-test-0001";
const ADMIN: &str = "admin-token-for-the-manage-test-001";
const CAMERA_PASSWORD: &str = "gate-pw-81b3f";

fn sha256(s: &str) -> String {
    sha2::Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn config(cameras: &str) -> String {
    format!(
        "[auth]\n[[auth.tokens]]\nname = \"viewer\"\nrole = \"view\"\nsha256 = \"{}\"\n\
         [[auth.tokens]]\nname = \"ops\"\nrole = \"admin\"\nsha256 = \"{}\"\n{cameras}",
        sha256(VIEW),
        sha256(ADMIN)
    )
}

fn call(app: &Infercast, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> whep_client::HttpReply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = Vec::new();
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    whep_client::request(&app.base, method, path, &headers, body.unwrap_or(""))
}

fn names(app: &Infercast) -> Vec<String> {
    let list = app.get_json("/api/cameras");
    list.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_owned()).collect()
}

fn streaming(app: &Infercast, name: &str) {
    app.wait_for(&format!("/api/cameras/{name}"), Duration::from_secs(30), |c| c["state"] == "streaming");
}

fn hangup(app: &Infercast) {
    assert!(Command::new("kill").args(["-HUP", &app.pid().to_string()]).status().unwrap().success());
}

/// Waits (≤ 15 s) for `n` "SIGHUP:" lines in the log; the last one.
fn sighup_line(app: &Infercast, n: usize) -> String {
    let t = Instant::now();
    loop {
        let log = app.log();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("SIGHUP:")).collect();
        if lines.len() >= n {
            return lines[n - 1].to_owned();
        }
        assert!(t.elapsed() < Duration::from_secs(15), "no SIGHUP line {n}; log:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn cameras_added_removed_and_reloaded_at_run_time() {
    if !netns::isolated("cameras_added_removed_and_reloaded_at_run_time") {
        return;
    }
    let server = RtspServer::start(&[("/door", CLIP_640X272), ("/porch", CLIP_640X272)], None);
    let scenes = common::fixture("scenes-640x480.h264");
    let locked = RtspServer::start(&[("/gate", scenes.to_str().unwrap())], Some(("op", CAMERA_PASSWORD)));
    let dir = common::scratch_dir("manage");
    let config_path = dir.join("site.toml");
    let state_path = dir.join("site.state.json");
    let door = format!("[[camera]]\nname = \"door\"\nurl = \"{}\"\nclassify_fps = 1\n", server.url("/door"));
    let porch =
        |fps: u32| format!("[[camera]]\nname = \"porch\"\nurl = \"{}\"\nclassify_fps = {fps}\n", server.url("/porch"));
    std::fs::write(&config_path, config(&format!("{door}{}", porch(1)))).unwrap();
    let args = ["--config", config_path.to_str().unwrap()];
    let mut app = Infercast::start(&args);
    app.token = Some(VIEW.into());
    streaming(&app, "door");

    // Adding: admin only, JSON only, a valid camera only.
    let gate_url = locked.url_with_credentials("op", CAMERA_PASSWORD, "/gate");
    let gate = serde_json::json!({ "name": "gate", "url": gate_url, "classify_fps": 2 }).to_string();
    assert_eq!(call(&app, "POST", "/api/cameras", Some(VIEW), Some(&gate)).status, 403);
    assert_eq!(call(&app, "POST", "/api/cameras", None, Some(&gate)).status, 401);
    let plain = whep_client::request(
        &app.base,
        "POST",
        "/api/cameras",
        &[("authorization", &format!("Bearer {ADMIN}")), ("content-type", "text/plain")],
        &gate,
    );
    assert_eq!(plain.status, 415, "{}", plain.body);
    let bad_name =
        call(&app, "POST", "/api/cameras", Some(ADMIN), Some(r#"{"name": "no spaces", "url": "rtsp://h/"}"#));
    assert_eq!(bad_name.status, 422, "{}", bad_name.body);
    let bad_url = call(&app, "POST", "/api/cameras", Some(ADMIN), Some(r#"{"name": "x", "url": "ftp://h/"}"#));
    assert_eq!(bad_url.status, 422, "{}", bad_url.body);
    assert_eq!(call(&app, "POST", "/api/cameras", Some(ADMIN), Some("{")).status, 400);

    let added = call(&app, "POST", "/api/cameras", Some(ADMIN), Some(&gate));
    assert_eq!(added.status, 201, "{}", added.body);
    assert_eq!(added.location.as_deref(), Some("/api/cameras/gate"));
    assert!(!added.body.contains(CAMERA_PASSWORD), "{}", added.body);
    let again = call(&app, "POST", "/api/cameras", Some(ADMIN), Some(&gate));
    assert_eq!(again.status, 409, "{}", again.body);
    assert!(again.body.contains("camera_exists"));
    streaming(&app, "gate");
    // Its labels: the clip's photos (tests/fixtures/prepare: the same classes as the browser test's scenes).
    let t = Instant::now();
    let label = loop {
        let history = app.get_json("/api/labels/gate?limit=1");
        if let Some(l) = history.as_array().unwrap().first() {
            break l.clone();
        }
        assert!(t.elapsed() < Duration::from_secs(20), "no label for the added camera; log:\n{}", app.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    let class = label["class_id"].as_u64().unwrap();
    assert!([967, 281, 282, 283, 284, 285, 872].contains(&class), "gate's label: {label}");
    assert_eq!(names(&app), ["door", "gate", "porch"]);

    // Removing: a WHEP viewer of door sees its session end; door is gone.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let viewer = rt.block_on(Viewer::with_labels(Offer::H264));
    let r = whep_client::request(
        &app.base,
        "POST",
        "/whep/door/raw",
        &[("authorization", &format!("Bearer {VIEW}")), ("content-type", "application/sdp")],
        &viewer.offer_sdp,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    rt.block_on(viewer.apply_answer(&r.body));
    assert!(rt.block_on(viewer.connected(Duration::from_secs(10))), "viewer connects");
    assert_eq!(call(&app, "DELETE", "/api/cameras/door", Some(VIEW), None).status, 403);
    let t = Instant::now();
    let deleted = call(&app, "DELETE", "/api/cameras/door", Some(ADMIN), None);
    assert_eq!(deleted.status, 204, "{}", deleted.body);
    assert!(rt.block_on(viewer.ended(Duration::from_secs(15))), "the viewer's session ends with its camera");
    // A clean end: the server's SCTP ABORT and DTLS close_notify close the
    // viewer's data channel at once; its connection state follows when ICE
    // gives up (W3C: a closed DTLS transport alone does not change it).
    let closed_after = viewer.labels_closed_at().map(|c| c - t);
    eprintln!(
        "viewer's session ended {:?} after the DELETE; its labels channel closed after {closed_after:?}",
        t.elapsed()
    );
    assert!(closed_after.is_some_and(|d| d < Duration::from_secs(1)), "labels channel closed after {closed_after:?}");
    assert_eq!(call(&app, "GET", "/api/cameras/door", Some(VIEW), None).status, 404);
    assert_eq!(call(&app, "DELETE", "/api/cameras/door", Some(ADMIN), None).status, 404);
    assert_eq!(names(&app), ["gate", "porch"]);
    assert!(app.get_json("/api/labels").as_array().unwrap().iter().all(|l| l["camera"] != "door"));
    rt.block_on(viewer.close());

    // The state file: the changes, private to the service's user.
    let state: Value = serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    assert_eq!(state["removed"], serde_json::json!(["door"]), "{state}");
    assert_eq!(state["added"][0]["name"], "gate", "{state}");
    assert_eq!(std::fs::metadata(&state_path).unwrap().permissions().mode() & 0o777, 0o600);

    // A restart keeps them.
    app.terminate();
    let mut app = Infercast::start(&args);
    app.token = Some(VIEW.into());
    streaming(&app, "gate");
    streaming(&app, "porch");
    assert_eq!(names(&app), ["gate", "porch"]);

    // SIGHUP: the edited config's difference only (porch changed, yard added; gate untouched).
    let since = |app: &Infercast, name: &str| app.camera(name)["state_since"].clone();
    let (gate_since, porch_since) = (since(&app, "gate"), since(&app, "porch"));
    let yard = format!("[[camera]]\nname = \"yard\"\nurl = \"{}\"\n", server.url("/door"));
    // (porch's analysis cannot change while it runs: a restart.)
    std::fs::write(&config_path, config(&format!("{door}{}analysis = \"every_frame\"\n{yard}", porch(2)))).unwrap();
    hangup(&app);
    let line = sighup_line(&app, 1);
    assert!(line.contains("added=[\"yard\"]") && line.contains("changed=[\"porch\"]"), "{line}");
    streaming(&app, "yard");
    streaming(&app, "porch");
    assert_eq!(names(&app), ["gate", "porch", "yard"], "door stays removed");
    assert_eq!(app.camera("porch")["classify_fps"], 2.0);
    assert_ne!(since(&app, "porch"), porch_since, "porch restarted");
    assert_eq!(since(&app, "gate"), gate_since, "gate untouched");

    // A broken config changes nothing.
    std::fs::write(&config_path, "[[camera]\nname = ").unwrap();
    hangup(&app);
    let line = sighup_line(&app, 2);
    assert!(line.contains("not applied") && line.contains("site.toml"), "{line}");
    assert_eq!(names(&app), ["gate", "porch", "yard"]);
    assert_eq!(since(&app, "gate"), gate_since);

    let log = app.log();
    assert!(!log.contains(CAMERA_PASSWORD), "a camera password in the log:\n{log}");
    assert!(!String::from_utf8_lossy(&app.get("/api/cameras").body).contains(CAMERA_PASSWORD));
}

/// RTP payload bytes and frames (distinct RTP timestamps) a viewer received
/// per second, over `window` ending now.
fn received(log: &Mutex<Vec<(Instant, usize, u32)>>, window: Duration) -> (f64, f64) {
    let now = Instant::now();
    let log = log.lock().unwrap();
    let recent: Vec<_> = log.iter().filter(|(t, _, _)| now.duration_since(*t) <= window).collect();
    let bytes: usize = recent.iter().map(|(_, n, _)| n).sum();
    let mut frames: Vec<u32> = recent.iter().map(|(_, _, ts)| *ts).collect();
    frames.dedup();
    let secs = window.as_secs_f64();
    (bytes as f64 * 8.0 / secs, frames.len() as f64 / secs)
}

fn snapshot_size(app: &Infercast) -> (u32, u32) {
    let snap = app.get("/api/cameras/cam/snapshot.jpg");
    assert_eq!(snap.status, 200);
    let picture = image::load_from_memory(&snap.body).unwrap();
    (picture.width(), picture.height())
}

#[test]
fn a_camera_tuned_while_a_viewer_watches() {
    if !netns::isolated("a_camera_tuned_while_a_viewer_watches") {
        return;
    }
    let server = RtspServer::start(&[("/cam", CLIP_640X272)], None);
    let dir = common::scratch_dir("tune");
    let config_path = dir.join("site.toml");
    let cam = |classify_fps: u32| {
        format!(
            "[[camera]]\nname = \"cam\"\nurl = \"{}\"\nclassify_fps = {classify_fps}\nannotated_bitrate_bps = 1500000\n",
            server.url("/cam")
        )
    };
    std::fs::write(&config_path, config(&cam(2))).unwrap();
    let args = ["--config", config_path.to_str().unwrap()];
    let mut app = Infercast::start(&args);
    app.token = Some(VIEW.into());
    streaming(&app, "cam");

    // A WHEP viewer of the annotated track, logging what it receives.
    let log: Arc<Mutex<Vec<(Instant, usize, u32)>>> = Arc::default();
    let sink_log = log.clone();
    let sink: whep_client::RtpSink =
        Arc::new(move |p| sink_log.lock().unwrap().push((Instant::now(), p.payload.len(), p.header.timestamp)));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let viewer = rt.block_on(Viewer::with_sink(Offer::H264, sink));
    let r = whep_client::request(
        &app.base,
        "POST",
        "/whep/cam/annotated",
        &[("authorization", &format!("Bearer {VIEW}")), ("content-type", "application/sdp")],
        &viewer.offer_sdp,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    rt.block_on(viewer.apply_answer(&r.body));
    assert!(rt.block_on(viewer.connected(Duration::from_secs(10))), "viewer connects");
    std::thread::sleep(Duration::from_secs(4));
    let window = Duration::from_secs(3);
    let (bps_before, fps_before) = received(&log, window);
    eprintln!("before: {:.0} kbit/s, {fps_before:.1} fps", bps_before / 1e3);
    assert!(fps_before > 20.0, "the clip is 25 fps: {fps_before:.1}");
    assert_eq!(snapshot_size(&app), (640, 272));

    // Refused: a viewer, an unknown field, a value out of range, no such camera.
    let patch = |body: &str, token: &str| call(&app, "PATCH", "/api/cameras/cam", Some(token), Some(body));
    assert_eq!(patch(r#"{"annotated_bitrate_bps": 250000}"#, VIEW).status, 403);
    let unknown = patch(r#"{"url": "rtsp://h/x"}"#, ADMIN);
    assert_eq!(unknown.status, 422, "{}", unknown.body);
    let range = patch(r#"{"annotated_scale": 1.5}"#, ADMIN);
    assert_eq!(range.status, 422, "{}", range.body);
    assert!(range.body.contains("annotated_scale"), "{}", range.body);
    let missing = call(&app, "PATCH", "/api/cameras/nope", Some(ADMIN), Some("{}"));
    assert_eq!(missing.status, 404, "{}", missing.body);
    assert_eq!(app.camera("cam")["annotated_bitrate_bps"], 1_500_000, "a refused patch changes nothing");

    // The bitrate: at once, no new IDR needed.
    let r = patch(r#"{"annotated_bitrate_bps": 250000}"#, ADMIN);
    assert_eq!(r.status, 200, "{}", r.body);
    let view: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(view["annotated_bitrate_bps"], 250_000, "{view}");
    std::thread::sleep(Duration::from_secs(1) + window);
    let (bps_low, fps_low) = received(&log, window);
    eprintln!("at 250 kbit/s: {:.0} kbit/s, {fps_low:.1} fps", bps_low / 1e3);
    assert!(bps_low < bps_before * 0.4, "{:.0} → {:.0} kbit/s", bps_before / 1e3, bps_low / 1e3);
    assert!((125e3..400e3).contains(&bps_low), "{:.0} kbit/s for 250", bps_low / 1e3);

    // The frame rate and size: at the next IDR (a 2 s GOP).
    let r = patch(r#"{"annotated_fps": 10, "annotated_scale": 0.5}"#, ADMIN);
    assert_eq!(r.status, 200, "{}", r.body);
    std::thread::sleep(Duration::from_secs(3) + window);
    let (bps_10, fps_10) = received(&log, window);
    eprintln!("at 10 fps, half size: {:.0} kbit/s, {fps_10:.1} fps", bps_10 / 1e3);
    assert!((8.0..12.5).contains(&fps_10), "{fps_10:.1} fps for 10");
    assert_eq!(snapshot_size(&app), (320, 136));
    assert!(!rt.block_on(viewer.ended(Duration::from_millis(100))), "the viewer's session never ended");
    let cam_view = app.camera("cam");
    assert_eq!((cam_view["annotated_fps"].as_f64(), cam_view["annotated_scale"].as_f64()), (Some(10.0), Some(0.5)));

    // SIGHUP with only a tunable change: tuned, not restarted; the viewer stays.
    std::fs::write(&config_path, config(&cam(1))).unwrap();
    hangup(&app);
    let line = sighup_line(&app, 1);
    assert!(line.contains("tuned=[\"cam\"]") && line.contains("changed=[]"), "{line}");
    assert_eq!(app.camera("cam")["classify_fps"], 1.0);
    assert_eq!(app.camera("cam")["annotated_bitrate_bps"], 250_000, "the PATCH stays over the file");
    std::thread::sleep(Duration::from_secs(1));
    let (_, fps_after) = received(&log, Duration::from_secs(1));
    assert!(fps_after > 5.0 && !rt.block_on(viewer.ended(Duration::from_millis(100))), "still watching");
    rt.block_on(viewer.close());

    // A restart keeps the tuning (state file), over the config's values.
    app.terminate();
    let mut app = Infercast::start(&args);
    app.token = Some(VIEW.into());
    streaming(&app, "cam");
    let c = app.camera("cam");
    assert_eq!((c["annotated_bitrate_bps"].as_u64(), c["annotated_fps"].as_f64()), (Some(250_000), Some(10.0)), "{c}");
    assert_eq!(snapshot_size(&app), (320, 136));
    app.terminate();
}
