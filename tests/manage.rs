//! Cameras managed at run time, against the real RTSP server and the real
//! model, with `[auth]`: `POST /api/cameras` (admin only) starts a camera
//! that streams and gets its photos' labels; a duplicate, a bad body and a
//! non-admin are refused; `DELETE` ends the camera's WHEP viewer and the
//! camera; the changes survive a restart (state file beside the config, mode
//! 0600, never a password in the API or the log); SIGHUP with an edited
//! config applies only the difference, and a broken config changes nothing.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
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
    let viewer = rt.block_on(Viewer::new(Offer::H264));
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
    eprintln!("viewer's session ended {:?} after the DELETE", t.elapsed());
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
    std::fs::write(&config_path, config(&format!("{door}{}{yard}", porch(2)))).unwrap();
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
