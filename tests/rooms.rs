//! Every camera is a room: two real WHEP viewers (webrtc crate) with display
//! names join a camera of the real RTSP server; the room's SSE stream shows
//! their joins, each other's chat messages and a leave; `GET .../viewers`
//! lists them (addresses for admins only); the limits on message length,
//! posts per 10 s and history hold. With `[auth]` (a view and an admin token).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::io::{BufRead, BufReader};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::netns;
use common::rtsp::{CLIP_640X272, RtspServer};
use common::service::Infercast;
use common::whep_client::{self, Offer, Viewer};
use serde_json::{Value, json};
use sha2::Digest;

const VIEW: &str = "view-token-for-the-rooms-test-0001";
const ADMIN: &str = "admin-token-for-the-rooms-test-0001";

fn sha256(s: &str) -> String {
    sha2::Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A room's SSE stream read in the background: (event name, JSON) pairs.
struct RoomStream {
    events: Arc<Mutex<Vec<(String, Value)>>>,
}

impl RoomStream {
    fn open(base: &str, camera: &str, token: &str) -> RoomStream {
        let agent = common::service::agent_with_timeout(Duration::from_secs(120));
        let resp = agent
            .get(format!("{base}/api/cameras/{camera}/chat/stream"))
            .header("authorization", &format!("Bearer {token}"))
            .call()
            .unwrap();
        assert_eq!(resp.status(), 200);
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        std::thread::spawn(move || {
            let reader = BufReader::new(resp.into_body().into_reader());
            let mut name = String::new();
            for line in reader.lines().map_while(Result::ok) {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_owned();
                } else if let Some(data) = line.strip_prefix("data: ") {
                    sink.lock().unwrap().push((name.clone(), serde_json::from_str(data).unwrap()));
                }
            }
        });
        RoomStream { events }
    }

    /// Waits (≤ 10 s) for an event `kind` whose `name` is `who` (and `text`, if given).
    fn wait_for(&self, kind: &str, who: &str, text: Option<&str>) -> Value {
        let t = Instant::now();
        loop {
            let found = self.events.lock().unwrap().iter().find_map(|(k, v)| {
                let hit = k == kind && v["type"] == kind && v["name"] == who && text.is_none_or(|t| v["text"] == t);
                hit.then(|| v.clone())
            });
            if let Some(v) = found {
                return v;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "no {kind} of {who}: {:?}", self.events.lock().unwrap());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn chat(base: &str, token: &str, name: &str, text: &str) -> whep_client::HttpReply {
    let body = json!({ "name": name, "text": text }).to_string();
    let auth = format!("Bearer {token}");
    whep_client::request(
        base,
        "POST",
        "/api/cameras/door/chat",
        &[("authorization", &auth), ("content-type", "application/json")],
        &body,
    )
}

#[test]
fn viewers_see_each_other_chat_and_leave_within_limits() {
    if !netns::isolated("viewers_see_each_other_chat_and_leave_within_limits") {
        return;
    }
    let server = RtspServer::start(&[("/cam", CLIP_640X272)], None);
    let config = common::scratch_dir("rooms").join("infercast.toml");
    let toml = format!(
        "[limits]\nchat_history = 3\nchat_messages_per_10s = 4\nchat_message_chars = 50\n\
         [auth]\n[[auth.tokens]]\nname = \"viewer\"\nrole = \"view\"\nsha256 = \"{}\"\n\
         [[auth.tokens]]\nname = \"ops\"\nrole = \"admin\"\nsha256 = \"{}\"\n\
         [[camera]]\nname = \"door\"\nurl = \"{}\"\nclassify_fps = 1\n",
        sha256(VIEW),
        sha256(ADMIN),
        server.url("/cam")
    );
    std::fs::write(&config, toml).unwrap();
    let mut app = Infercast::start(&["--config", config.to_str().unwrap()]);
    app.token = Some(VIEW.into());
    app.wait_for("/api/cameras/door", Duration::from_secs(20), |c| c["state"] == "streaming");
    let room = RoomStream::open(&app.base, "door", VIEW);

    // Two viewers join with their display names.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let auth = format!("Bearer {VIEW}");
    let mut sessions = Vec::new();
    for (name, track) in [("alice", "raw"), ("bob", "annotated")] {
        let viewer = rt.block_on(Viewer::new(Offer::H264));
        let r = whep_client::request(
            &app.base,
            "POST",
            &format!("/whep/door/{track}?name={name}"),
            &[("authorization", &auth), ("content-type", "application/sdp")],
            &viewer.offer_sdp,
        );
        assert_eq!(r.status, 201, "{}", r.body);
        rt.block_on(viewer.apply_answer(&r.body));
        assert!(rt.block_on(viewer.connected(Duration::from_secs(10))));
        let join = room.wait_for("join", name, None);
        assert_eq!(join["track"], track);
        sessions.push((viewer, r.location.unwrap()));
    }
    let listed = app.get_json("/api/cameras/door/viewers");
    let names: Vec<(&str, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v["track"].as_str().unwrap()))
        .collect();
    assert_eq!(names, [("alice", "raw"), ("bob", "annotated")]);
    assert!(listed.as_array().unwrap().iter().all(|v| v.get("ip").is_none()), "no addresses to a view token: {listed}");
    app.token = Some(ADMIN.into());
    let as_admin = app.get_json("/api/cameras/door/viewers");
    assert!(as_admin.as_array().unwrap().iter().all(|v| v["ip"] == "127.0.0.1"), "{as_admin}");
    app.token = Some(VIEW.into());

    // They chat; both see it, text as text; a late listener gets the history first.
    let r = chat(&app.base, VIEW, "alice", "hello <b>bob</b>");
    assert_eq!(r.status, 201, "{}", r.body);
    room.wait_for("chat", "alice", Some("hello <b>bob</b>"));
    let late = RoomStream::open(&app.base, "door", VIEW);
    late.wait_for("chat", "alice", Some("hello <b>bob</b>"));
    assert_eq!(chat(&app.base, VIEW, "bob", "hi alice").status, 201);
    room.wait_for("chat", "bob", Some("hi alice"));
    late.wait_for("chat", "bob", Some("hi alice"));

    // Limits: length (422), posts per 10 s from one address (429 + Retry-After), history (3 newest).
    let long = chat(&app.base, VIEW, "alice", &"x".repeat(51));
    assert_eq!(long.status, 422, "{}", long.body);
    assert!(long.body.contains("message_too_long"));
    assert_eq!(chat(&app.base, VIEW, "alice", "third").status, 201);
    assert_eq!(chat(&app.base, VIEW, "alice", "fourth").status, 201);
    let limited = chat(&app.base, VIEW, "alice", "fifth");
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert!(
        limited
            .headers
            .iter()
            .any(|(k, v)| k == "retry-after" && v.parse::<u64>().is_ok_and(|s| (1..=10).contains(&s)))
    );
    let texts: Vec<String> = app
        .get_json("/api/cameras/door/chat")
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts, ["hi alice", "third", "fourth"]);
    assert_eq!(chat(&app.base, VIEW, "alice", "").status, 400);
    let no_token = whep_client::request(&app.base, "POST", "/api/cameras/door/chat", &[], "{}");
    assert_eq!(no_token.status, 401, "posting needs a token");

    // bob leaves: everyone sees it, and he is no longer listed.
    let (bob, bob_session) = sessions.pop().unwrap();
    let r = whep_client::request(&app.base, "DELETE", &bob_session, &[("authorization", &auth)], "");
    assert_eq!(r.status, 200);
    room.wait_for("leave", "bob", None);
    rt.block_on(bob.close());
    let listed = app.get_json("/api/cameras/door/viewers");
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["name"], "alice");

    // The page's label-to-frame offsets (the labelled view posts them): a view
    // token may post, a stranger may not; bounded in count and range.
    let offsets = |camera: &str, token: Option<&str>, body: &str| {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("authorization", a));
        }
        whep_client::request(&app.base, "POST", &format!("/api/cameras/{camera}/label-offsets"), &headers, body)
    };
    let r = offsets("door", Some(VIEW), r#"{"offsets_ms":[0,40,80.5]}"#);
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(offsets("door", None, r#"{"offsets_ms":[1]}"#).status, 401);
    assert_eq!(offsets("attic", Some(VIEW), r#"{"offsets_ms":[1]}"#).status, 404);
    let many = format!("{{\"offsets_ms\":{:?}}}", vec![1.0; 51]);
    let r = offsets("door", Some(VIEW), &many);
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("bad_offsets"), "{}", r.body);
    assert_eq!(offsets("door", Some(VIEW), r#"{"offsets_ms":[-5]}"#).status, 422);
    assert_eq!(offsets("door", Some(VIEW), r#"{"offsets":[5]}"#).status, 400);
    assert_eq!(app.metric("infercast_viewer_label_offset_seconds_count{camera=\"door\"}"), 3.0);
    let sum_s = app.metric("infercast_viewer_label_offset_seconds_sum{camera=\"door\"}");
    assert!((sum_s - 0.1205).abs() < 1e-9, "{sum_s}");
    assert_eq!(app.metric("infercast_viewer_label_offset_seconds_bucket{camera=\"door\",le=\"0.04\"}"), 2.0);
}
