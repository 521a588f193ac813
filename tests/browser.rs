//! The viewer page in a real browser: Debian's chromium driven by npm
//! playwright-core (`tests/browser/e2e.mjs`) against the real binary (HTTPS
//! with a test certificate, a view token to log in with) and two
//! cameras served by GStreamer's RTSP server, all in a private network
//! namespace. The script reports its checks as JSON lines; this test prints
//! them, restarts the camera server when the script asks, and asserts.
//! Needs `scripts/setup --tests` (chromium, node modules).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::netns;
use common::rtsp::RtspServer;
use common::service::Infercast;

const CLIP: &str = "assets/demo/bikes-640x272.h264";
const CHROMIUM: &str = "/usr/bin/chromium";
/// Whole script, browser start to last check (it stops itself at 170 s).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);
/// Every check the script must report, in order.
const CHECKS: &[&str] = &[
    "browser_flags",
    "logs_in",
    "page_loads_one_tile_per_camera",
    "every_tile_plays",
    "labels_match_api",
    "chat_in_focus",
    "switch_to_annotated",
    "ice_restart",
    "screenshot",
    "switch_back_to_raw",
    "recovers_after_camera_restart",
    "sessions_deleted_on_pagehide",
];

fn browser_dir() -> PathBuf {
    common::repo().join("tests/browser")
}

/// Chromium, node and the node modules are there, or the test fails saying how to get them.
fn require_browser_tools() {
    let missing =
        |what: &str| panic!("{what} is missing: run scripts/setup --tests (it installs chromium and the node modules)");
    if !Path::new(CHROMIUM).is_file() {
        missing(&format!("{CHROMIUM} (Debian package chromium)"));
    }
    if Command::new("node").arg("--version").output().map(|o| !o.status.success()).unwrap_or(true) {
        missing("node (Node.js 20 or newer, which scripts/setup expects to find)");
    }
    if !browser_dir().join("node_modules/playwright-core/package.json").is_file() {
        missing("tests/browser/node_modules (npm playwright-core)");
    }
}

/// What a script run to its end (`node tests/browser/SCRIPT ARGS`, env `ENV`)
/// printed: whether it exited 0, its stdout and the JSON events in it.
struct Ran {
    ok: bool,
    stdout: String,
    events: Vec<serde_json::Value>,
}

impl Ran {
    fn event(&self, name: &str) -> Option<&serde_json::Value> {
        self.events.iter().find(|e| e["event"] == name)
    }
}

fn run_script(script: &str, args: &[&std::ffi::OsStr], env: &[(&str, String)]) -> Ran {
    let out = Command::new("node")
        .arg(browser_dir().join(script))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir(browser_dir())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("node starts");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let events = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    Ran { ok: out.status.success(), stdout, events }
}

/// The node process; on drop (a failed assertion included) it gets SIGTERM, so
/// Playwright closes the browser, then SIGKILL if it lingers.
struct Script {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Script {
    /// `tls`: the server's test certificate: its CA trusted by node, its key pinned for Chromium.
    fn start(base: &str, artifacts: &Path, token: &str, tls: &common::certs::TestCert) -> Script {
        let mut child = Command::new("node")
            .arg(browser_dir().join("e2e.mjs"))
            .arg(base)
            .arg(artifacts)
            .env("INFERCAST_TOKEN", token) // not on the command line: other processes can read that
            .env("NODE_EXTRA_CA_CERTS", &tls.ca)
            .env("INFERCAST_SPKI", common::certs::spki_sha256_base64(&tls.cert))
            // The one-port SFU (the default; 8189 in the test's namespace): every
            // tile's selected candidate pair must be UDP to it.
            .envs(std::env::var("INFERCAST_UDP_LISTEN").map_or(Some(("ONE_PORT", "8189")), |_| None))
            .current_dir(browser_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node starts");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Script { child, stdin, lines }
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").and_then(|()| self.stdin.flush()).expect("write to e2e.mjs");
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(5) && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn all_streaming(cameras: &serde_json::Value, n: usize) -> bool {
    cameras.as_array().is_some_and(|a| a.len() == n && a.iter().all(|c| c["state"] == "streaming"))
}

/// Kills the camera server, waits until infercast and (one poll later) the page
/// see the cameras down, and starts the server again on the same port.
fn restart_cameras(server: &mut RtspServer, app: &Infercast) {
    server.kill();
    app.wait_for("/api/cameras", Duration::from_secs(15), |v| {
        v.as_array().is_some_and(|a| a.iter().all(|c| c["state"] != "streaming"))
    });
    std::thread::sleep(Duration::from_secs(3)); // the page polls /api/cameras every 2 s
    server.restart();
}

#[test]
fn viewer_page_in_chromium() {
    require_browser_tools();
    if !netns::isolated("viewer_page_in_chromium") {
        return;
    }
    let started = Instant::now();
    let mut server = RtspServer::start(&[("/cam1", CLIP), ("/cam2", CLIP)], None);
    // With authentication on, over HTTPS: the page must log in with a view token.
    let token = infercast::auth::new_token();
    let dir = common::scratch_dir("browser_auth");
    let tls = common::certs::issue(&dir, "localhost");
    common::service::trust_ca(&tls.ca);
    let config = dir.join("infercast.toml");
    let toml = format!(
        "[tls]\ncert_path = \"{}\"\nkey_path = \"{}\"\n\n\
         [auth]\n[[auth.tokens]]\nname = \"browser\"\nrole = \"view\"\nsha256 = \"{}\"\n",
        tls.cert.display(),
        tls.key.display(),
        infercast::auth::token_sha256_hex(&token)
    );
    std::fs::write(&config, toml).unwrap();
    let mut app = Infercast::start(&[
        "--config",
        config.to_str().unwrap(),
        &format!("door={}", server.url("/cam1")),
        &format!("yard={}", server.url("/cam2")),
    ]);
    app.token = Some(token.clone());
    app.wait_for("/api/cameras", Duration::from_secs(20), |v| all_streaming(v, 2));
    // The one-port SFU (the default); `scripts/test` runs this test a second
    // time on the per-session SFU (INFERCAST_UDP_LISTEN=off).
    let one_port = std::env::var("INFERCAST_UDP_LISTEN").map_or(true, |v| v.trim() != "off");
    assert!(!one_port || app.log().contains("one-port SFU listening"), "{}", app.log());
    app.wait_for("/api/labels", Duration::from_secs(20), |v| v.as_array().is_some_and(|a| a.len() == 2));

    let artifacts = common::repo().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    assert!(app.base.starts_with("https://"), "served over HTTPS: {}", app.base);
    let mut script = Script::start(&app.base, &artifacts, &token, &tls);
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let mut checks: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut first_frames = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match script.lines.recv_timeout(left) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!(
                    "e2e.mjs still running after {SCRIPT_TIMEOUT:?}; checks so far: {checks:#?}\nlog:\n{}",
                    app.log()
                )
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break, // the script exited
        };
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
            eprintln!("browser: {line}");
            continue;
        };
        match event["event"].as_str().unwrap_or_default() {
            "check" => {
                let ok = if event["ok"] == true { "ok" } else { "FAILED" };
                eprintln!("browser check {}: {ok} {event}", event["name"]);
                checks.insert(event["name"].as_str().unwrap_or_default().to_owned(), event);
            }
            "first_frame" => {
                eprintln!(
                    "WHEP POST → first decoded frame: {} {}: {} ms",
                    event["camera"], event["track"], event["ms"]
                );
                first_frames.push(event);
            }
            "screenshot" => eprintln!("browser screenshot: {}", event["path"].as_str().unwrap_or_default()),
            "ready_for_restart" => {
                if one_port {
                    // The page is playing: every session on the server's one socket.
                    let udp = common::process::udp_sockets(app.pid());
                    assert_eq!(udp, 1, "UDP sockets of the one-port SFU while Chromium plays");
                }
                restart_cameras(&mut server, &app);
                script.send("restarted");
            }
            "done" => break,
            _ => eprintln!("browser: {line}"),
        }
    }
    let status = script.child.wait().unwrap();
    eprintln!("browser test took {:.1} s", started.elapsed().as_secs_f64());

    let failed: Vec<_> = checks.values().filter(|c| c["ok"] != true).collect();
    assert!(failed.is_empty(), "browser checks failed: {failed:#?}\nlog:\n{}", app.log());
    let missing: Vec<_> = CHECKS.iter().filter(|c| !checks.contains_key(**c)).collect();
    assert!(
        missing.is_empty(),
        "browser checks never reported: {missing:?} (script exit {status})\nlog:\n{}",
        app.log()
    );
    assert!(status.success(), "e2e.mjs exited with {status}");
    for camera in ["door", "yard"] {
        let ms = first_frames.iter().find(|e| e["camera"] == camera && e["track"] == "raw").map(|e| e["ms"].clone());
        assert!(ms.as_ref().is_some_and(serde_json::Value::is_u64), "{camera}: no first-frame time: {first_frames:?}");
    }
    assert!(artifacts.join("viewer.png").is_file(), "screenshot");
}

/// Labels drawn at their frame (`tests/browser/overlay.mjs`): a camera of
/// three real photos in turn, the tile's labelled view (raw video + the
/// `labels` data channel); the label the page draws on each frame is that
/// frame's scene's class, except within one classification interval after a
/// scene change; no annotated encoder runs meanwhile. Then the tile plays the
/// burned-in track, and the label read off each frame's picture (against the
/// server's own renderings, `common::burned_in`) is that frame's scene's class.
#[test]
fn labels_drawn_at_their_frame_in_chromium() {
    require_browser_tools();
    if !netns::isolated("labels_drawn_at_their_frame_in_chromium") {
        return;
    }
    let clip = common::fixture("scenes-640x480.h264");
    let server = RtspServer::start(&[("/scenes", clip.to_str().unwrap())], None);
    let app = Infercast::start(&[&format!("scenes={}", server.url("/scenes"))]);
    app.wait_for("/api/cameras", Duration::from_secs(20), |v| all_streaming(v, 1));
    // The classes of the scenes, in the clip's order (tests/fixtures/prepare).
    let names: Vec<String> = std::fs::read_to_string(common::repo().join("models/imagenet_classes.txt"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let classes = |ids: &[usize]| ids.iter().map(|&i| names[i].clone()).collect::<Vec<_>>();
    let scenes = serde_json::json!([classes(&[967]), classes(&[281, 282, 283, 284, 285]), classes(&[872])]);
    // Default classify_fps = 5: one classification every 200 ms = 18 000 ticks.
    let interval_90k = 18_000;
    let artifacts = common::repo().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let ran = run_script(
        "overlay.mjs",
        &[app.base.as_ref(), artifacts.as_os_str()],
        &[
            ("SCENES", scenes.to_string()),
            ("INTERVAL_90K", interval_90k.to_string()),
            ("BURNED_CROP", serde_json::json!(BURNED_CROP).to_string()),
        ],
    );
    let result = ran.event("overlay");
    assert!(ran.ok && result.is_some(), "overlay.mjs: {}\nlog:\n{}", ran.stdout, app.log());
    let result = result.unwrap();
    // (The burned-in event's frame masks are too long to print.)
    eprintln!("labelled view: {result}");
    assert_eq!(result["wrong"], 0, "{result}");
    assert_eq!(result["encoded_frames_during"], 0, "no annotated encoder while only the labelled view watches");
    let sent = app.metric("infercast_webrtc_labels_sent_total{camera=\"scenes\",track=\"raw\"}");
    assert!(sent >= 40.0, "labels sent on the data channel: {sent}");
    // Per session: the room lists the one viewer with its own count (≥ 10 s at 5 labels/s).
    let per_session = result["session_labels_sent"].as_array().expect("the room's viewers");
    assert!(
        per_session.len() == 1 && per_session[0].as_f64().is_some_and(|n| (40.0..=sent).contains(&n)),
        "labels sent per session: {per_session:?} (all sessions: {sent})"
    );
    assert!(artifacts.join("overlay.png").is_file(), "screenshot");
    // The page's own measurements, posted to the server: the production metric agrees with the test's.
    let count = app.metric("infercast_viewer_label_offset_seconds_count{camera=\"scenes\"}");
    let sum_s = app.metric("infercast_viewer_label_offset_seconds_sum{camera=\"scenes\"}");
    assert!(count >= 20.0, "offsets the page reported: {count}");
    let mean_ms = sum_s / count * 1e3;
    eprintln!("page-reported label-to-frame offset: {count} samples, mean {mean_ms:.0} ms");
    assert!(mean_ms <= 250.0, "mean label-to-frame offset the page reported: {mean_ms} ms");

    // The same check on the burned-in track: each frame's label, read off the
    // picture, is its scene's class.
    let burned = ran.event("burned").expect("burned-in frames reported");
    let figures = check_burned_in(burned, &scenes, interval_90k);
    eprintln!("burned-in track: {figures}");
}

/// The label box's text line on the 640×480 scenes (overlay.rs geometry: text
/// 26 px high from (12, 12)), without the score bar below it (from y 41).
const BURNED_CROP: [usize; 4] = [6, 6, 320, 33];

/// Reads the label burned into each frame of `burned` (overlay.mjs) among the
/// classes of `scenes`, and checks
/// it is the frame's scene's class, except within two classification
/// intervals after a scene change: the server draws the newest label it has,
/// which names the new scene only after that scene's next classification
/// (at most one interval) has run. Returns the figures.
fn check_burned_in(burned: &serde_json::Value, scenes: &serde_json::Value, interval_90k: u32) -> serde_json::Value {
    // Every scene's classes are the labels a frame may show.
    let candidates: Vec<String> = scenes
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s.as_array().unwrap())
        .map(|n| n.as_str().unwrap().to_owned())
        .collect();
    let reader = common::burned_in::LabelReader::new(&candidates, 640, 480, BURNED_CROP);
    let frames: Vec<&serde_json::Value> =
        burned["frames"].as_array().unwrap().iter().filter(|f| f["rtpTimestamp"].is_u64()).collect();
    assert!(frames.len() >= 100, "burned-in frames with an rtpTimestamp: {}", frames.len());
    for f in &frames {
        assert_eq!((f["width"].as_u64(), f["height"].as_u64()), (Some(640), Some(480)), "burned-in frame size");
    }
    let rtp = |f: &serde_json::Value| f["rtpTimestamp"].as_u64().unwrap() as u32;
    let rel = |f: &serde_json::Value| rtp(f).wrapping_sub(rtp(frames[0]));
    let scene = |f: &serde_json::Value| f["scene"].as_i64().unwrap();
    let changes: Vec<u32> = frames
        .windows(2)
        .filter(|p| scene(p[0]) >= 0 && scene(p[1]) >= 0 && scene(p[0]) != scene(p[1]))
        .map(|p| rel(p[1]))
        .collect();
    assert!(changes.len() >= 3, "scene changes in the burned-in frames: {changes:?}");
    let (mut checked, mut excluded, mut unknown, mut unlabelled, mut ambiguous) = (0, 0, 0, 0, 0);
    let mut wrong = Vec::new();
    let (mut distances, mut margins) = (Vec::new(), Vec::new());
    // Per scene change: ticks from the change to the first frame burned with the new scene's class.
    let mut lag_90k: Vec<Option<u32>> = vec![None; changes.len()];
    for f in &frames {
        let reading = reader.read(f["mask"].as_str().unwrap());
        let s = scene(f);
        if s < 0 {
            unknown += 1;
            continue;
        }
        let Some(label) = reading.label.as_deref() else {
            unlabelled += 1;
            continue;
        };
        let right = scenes[s as usize].as_array().unwrap().iter().any(|n| n == label);
        let t = rel(f);
        if let Some(i) = changes.iter().rposition(|&c| t >= c)
            && right
            && lag_90k[i].is_none()
        {
            lag_90k[i] = Some(t - changes[i]);
        }
        if changes.iter().any(|&c| t >= c && t < c + 2 * interval_90k) {
            excluded += 1;
            continue;
        }
        checked += 1;
        distances.push(reading.distance);
        margins.push(reading.margin);
        if reading.margin < 100 {
            ambiguous += 1;
        }
        if !right {
            wrong.push(serde_json::json!({"rtp": rtp(f), "scene": s, "read": label, "distance": reading.distance, "margin": reading.margin}));
        }
    }
    distances.sort_unstable();
    let lag_ms: Vec<Option<u32>> = lag_90k.iter().map(|l| l.map(|t| t / 90)).collect();
    let figures = serde_json::json!({
        "frames": frames.len(), "scene_changes": changes.len(), "checked": checked, "excluded": excluded,
        "unknown_scene": unknown, "unlabelled": unlabelled, "ambiguous": ambiguous, "wrong": wrong.len(),
        "distance_px_p50": distances.get(distances.len() / 2), "margin_px_min": margins.iter().min(),
        "label_lag_ms_per_change": lag_ms,
    });
    assert!(checked >= 80, "burned-in frames checked: {figures}");
    assert!(wrong.is_empty(), "burned-in label wrong on {} frames: {figures}\n{wrong:#?}", wrong.len());
    assert!(unlabelled + unknown <= frames.len() / 10, "burned-in frames unreadable: {figures}");
    assert!(ambiguous <= checked / 10, "burned-in labels read with a small margin: {figures}");
    figures
}

/// Publishing from the page (`tests/browser/publish.mjs`): Chromium's fake
/// camera plays a real photo (coffee.png, an espresso to the model) as a
/// Y4M file; the page, logged in with an admin token, publishes it over WHIP
/// as camera `webcam`; the camera streams H.264 from the browser, its labels
/// are the photo's class, and the page's own tile draws them on its frames;
/// stopping removes the camera.
#[test]
fn publishing_from_the_page_in_chromium() {
    require_browser_tools();
    if !netns::isolated("publishing_from_the_page_in_chromium") {
        return;
    }
    const ADMIN: &str = "admin-token-for-the-publish-test-01";
    let dir = common::scratch_dir("publish");
    let y4m = dir.join("coffee-640x480.y4m");
    let made = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-loop", "1", "-i"])
        .arg(common::skimage_photo("coffee.png"))
        .args(["-vf", "scale=640:480,format=yuv420p", "-r", "15", "-t", "1"])
        .arg(&y4m)
        .status()
        .expect("ffmpeg runs");
    assert!(made.success(), "ffmpeg made the fake camera's Y4M file");
    use sha2::Digest as _;
    let digest: String = sha2::Sha256::digest(ADMIN.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    let config = dir.join("publish.toml");
    std::fs::write(
        &config,
        format!("[auth]\n[[auth.tokens]]\nname = \"ops\"\nrole = \"admin\"\nsha256 = \"{digest}\"\n"),
    )
    .unwrap();
    let app = Infercast::start(&["--config", config.to_str().unwrap()]);
    let artifacts = common::repo().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let ran =
        run_script("publish.mjs", &[app.base.as_ref(), ADMIN.as_ref(), y4m.as_os_str(), artifacts.as_os_str()], &[]);
    let (published, stopped) = (ran.event("published"), ran.event("stopped"));
    assert!(ran.ok && published.is_some() && stopped.is_some(), "publish.mjs: {}\nlog:\n{}", ran.stdout, app.log());
    let published = published.unwrap();
    eprintln!("published from the page: {published}");
    assert_eq!(published["codec"], "H.264");
    let espresso = |l: &serde_json::Value| l.as_str().is_some_and(|s| s == "espresso");
    let labels = published["labels"].as_array().unwrap();
    assert!(!labels.is_empty() && labels.iter().all(espresso), "the API's labels of the webcam: {labels:?}");
    let drawn = published["drawn"].as_array().unwrap();
    assert!(drawn.iter().all(espresso), "labels the page drew on its own video: {drawn:?}");
    assert!(published["video"]["width"].as_u64().unwrap() > 0, "{published}");
    assert!(artifacts.join("publish.png").is_file(), "screenshot");
}

/// ICE-TCP (`tests/browser/ice_tcp.mjs`): UDP to the one port is dropped in
/// the test's network namespace (iptables), so Chromium can reach the
/// one-port SFU only over its ICE-TCP passive candidate; the demo tile plays,
/// its selected candidate pair on TCP.
#[test]
fn a_viewer_whose_udp_is_blocked_plays_over_ice_tcp() {
    require_browser_tools();
    if !netns::isolated("a_viewer_whose_udp_is_blocked_plays_over_ice_tcp") {
        return;
    }
    if std::env::var("INFERCAST_UDP_LISTEN").is_ok_and(|v| v == "off") {
        return; // ICE-TCP is the one-port SFU's; the per-session SFU has none
    }
    let blocked = Command::new("iptables")
        .args(["-A", "INPUT", "-p", "udp", "--dport", "8189", "-j", "DROP"])
        .status()
        .expect("iptables runs (scripts/setup --tests installs it)");
    assert!(blocked.success(), "iptables could not drop UDP to 8189 in the test's namespace");
    let app = Infercast::start(&[]);
    app.wait_for("/api/cameras", Duration::from_secs(20), |v| all_streaming(v, 1));
    assert!(app.log().contains("ice_tcp=true"), "{}", app.log());
    let ran = run_script("ice_tcp.mjs", &[app.base.as_ref()], &[]);
    let result = ran.event("ice_tcp");
    assert!(ran.ok && result.is_some(), "ice_tcp.mjs: {}\nlog:\n{}", ran.stdout, app.log());
    let result = result.unwrap();
    eprintln!("over ICE-TCP: {result}");
    assert_eq!(result["protocol"], "tcp", "{result}");
    assert!(result["stats"].as_str().unwrap().contains("over TCP"), "{result}");
}
