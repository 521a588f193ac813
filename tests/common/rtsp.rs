//! A real RTSP camera for tests: runs `tests/rtsp_server.py` (GStreamer's
//! gst-rtsp-server under Debian's `/usr/bin/python3`), which replays the clips
//! made by `scripts/make-clips` in a loop at 25 fps, H.264 keyframe every second,
//! RTP over TCP interleaved, RTCP sender reports, on 127.0.0.1 only.
//!
//! ```ignore
//! let cam = RtspServer::start(&[("/cam1", rtsp::CLIP_640X272)], None);
//! let url = cam.url("/cam1"); // rtsp://127.0.0.1:PORT/cam1
//! ```
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// The demo camera clip: 640×272, 25 fps, H.264 constrained baseline, 1 s GOP, 10 s loop.
pub const CLIP_640X272: &str = "assets/demo/bikes-640x272.h264";
/// The same scene at 1280×720, ~2 Mbit/s.
pub const CLIP_1280X720: &str = "assets/demo/bikes-1280x720.h264";
/// H.265 at 1280×720 (analysed like H.264; its raw track is not offered to WebRTC).
pub const CLIP_H265: &str = "assets/demo/bikes-1280x720.h265";
/// 4K: 3840×2160, 2 s loop, ~8 Mbit/s (hostile cameras).
pub const CLIP_4K: &str = "assets/demo/bikes-3840x2160.h264";
/// 2 s at 640×272 then 2 s at 1280×720: the picture size changes at an IDR, and back at the seam.
pub const CLIP_SWITCH: &str = "assets/demo/bikes-switch-640x272-1280x720.h264";
/// Not a file: a live MJPEG test pattern (320×240), for "unsupported codec".
pub const MJPEG: &str = "mjpeg";

const PYTHON: &str = "/usr/bin/python3";
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const REBIND_FOR: Duration = Duration::from_secs(5);
const PACKAGES: &str = "Debian packages python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-{base,good,bad}";

pub struct RtspServer {
    pub port: u16,
    child: Child,
    /// The server's arguments after `--port N`.
    args: Vec<String>,
    /// Everything the server wrote to stderr so far.
    stderr: Arc<Mutex<String>>,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// RFC 3986 userinfo encoding (everything but unreserved characters).
fn userinfo(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Spawns the server and waits for `READY port=N`; Err(stderr) if it exits or hangs.
fn spawn(port: u16, args: &[String]) -> Result<(Child, u16, Arc<Mutex<String>>), String> {
    let script = repo().join("tests/rtsp_server.py");
    let mut child = Command::new(PYTHON)
        .arg(&script)
        .args(["--port", &port.to_string()])
        .args(args)
        .current_dir(repo())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {PYTHON} {}: {e}; install {PACKAGES}", script.display()));
    let (stdout, stderr) = (child.stdout.take().expect("stdout piped"), child.stderr.take().expect("stderr piped"));
    let log = Arc::new(Mutex::new(String::new()));
    let sink = log.clone();
    // Drained for the server's whole life, so a chatty GStreamer never blocks on a full pipe.
    let stderr_done = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut l = sink.lock().unwrap_or_else(|p| p.into_inner());
            l.push_str(&line);
            l.push('\n');
        }
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(p) = line.strip_prefix("READY port=") {
                let _ = tx.send(p.trim().parse::<u16>().ok());
            }
        }
    });
    match rx.recv_timeout(READY_TIMEOUT) {
        Ok(Some(port)) => Ok((child, port, log)),
        outcome => {
            let _ = child.kill();
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            let _ = stderr_done.join(); // the pipe closes with the process
            let why = match outcome {
                Err(mpsc::RecvTimeoutError::Timeout) => format!("no READY within {READY_TIMEOUT:?}"),
                _ => format!("exited ({status}) without READY"),
            };
            Err(format!("{why}; stderr:\n{}", log.lock().unwrap_or_else(|p| p.into_inner())))
        }
    }
}

/// [`spawn`], retrying for up to 5 s while a fixed port is still taken; panics on failure.
fn launch(port: u16, args: &[String]) -> (Child, u16, Arc<Mutex<String>>) {
    let deadline = Instant::now() + REBIND_FOR;
    loop {
        match spawn(port, args) {
            Ok(up) => return up,
            Err(e) if e.contains("cannot listen") && port != 0 && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                let gi = ["No module named 'gi'", "Namespace", "gi.repository"].iter().any(|m| e.contains(m));
                let hint = if gi { format!("\n(install {PACKAGES}; scripts/setup does)") } else { String::new() };
                panic!("RTSP test server (port {port}, {args:?}) failed: {e}{hint}");
            }
        }
    }
}

impl RtspServer {
    /// Serves each `(mount, clip)` (clip relative to the repo root, or [`MJPEG`]) on a free
    /// port; `auth` makes every mount require these credentials (Digest).
    pub fn start(mounts: &[(&str, &str)], auth: Option<(&str, &str)>) -> RtspServer {
        Self::start_on_port(0, mounts, auth)
    }

    /// As [`start`](Self::start) on `port` (0: any), retrying for up to 5 s while the port is
    /// still taken (a server killed just before).
    pub fn start_on_port(port: u16, mounts: &[(&str, &str)], auth: Option<(&str, &str)>) -> RtspServer {
        Self::start_with(port, mounts, auth, false)
    }

    /// As [`start`](Self::start) with credentials required through Basic instead of Digest.
    pub fn start_basic(mounts: &[(&str, &str)], auth: (&str, &str)) -> RtspServer {
        Self::start_with(0, mounts, Some(auth), true)
    }

    /// As [`start`](Self::start) with more server arguments, e.g. hostile cameras:
    /// `["--ts-jump", "/cam=3"]` (RTP timestamps jump by 2³¹ every 3 s) or
    /// `["--huge-au", "/cam=3:40"]` (a 40 MiB access unit every 3 s); see tests/rtsp_server.py.
    pub fn start_hostile(mounts: &[(&str, &str)], extra: &[&str]) -> RtspServer {
        Self::start_full(0, mounts, None, false, extra)
    }

    fn start_with(port: u16, mounts: &[(&str, &str)], auth: Option<(&str, &str)>, basic: bool) -> RtspServer {
        Self::start_full(port, mounts, auth, basic, &[])
    }

    fn start_full(
        port: u16,
        mounts: &[(&str, &str)],
        auth: Option<(&str, &str)>,
        basic: bool,
        extra: &[&str],
    ) -> RtspServer {
        assert!(!mounts.is_empty(), "RtspServer needs at least one mount");
        let mut args = Vec::new();
        for (mount, clip) in mounts {
            let clip = if *clip == MJPEG {
                MJPEG.to_owned()
            } else {
                let p = repo().join(clip);
                assert!(p.is_file(), "{} missing; run scripts/make-clips", p.display());
                p.to_str().expect("UTF-8 clip path").to_owned()
            };
            args.extend(["--mount".to_owned(), format!("/{}={clip}", mount.trim_start_matches('/'))]);
        }
        if let Some((user, pass)) = auth {
            args.extend(["--auth".to_owned(), format!("{user}:{pass}")]);
            if basic {
                args.push("--basic".to_owned());
            }
        }
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let (child, port, stderr) = launch(port, &args);
        RtspServer { port, child, args, stderr }
    }

    /// `rtsp://127.0.0.1:PORT/path`.
    pub fn url(&self, path: &str) -> String {
        format!("rtsp://127.0.0.1:{}/{}", self.port, path.trim_start_matches('/'))
    }

    /// `rtsp://user:pass@127.0.0.1:PORT/path` (user and password percent-encoded).
    pub fn url_with_credentials(&self, user: &str, pass: &str, path: &str) -> String {
        format!("rtsp://{}:{}@127.0.0.1:{}/{}", userinfo(user), userinfo(pass), self.port, path.trim_start_matches('/'))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server wrote to stderr so far (GStreamer warnings, Python errors).
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// SIGKILL and reap: the camera vanishes and the kernel closes its connections. Idempotent.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills the server and starts it again on the same port with the same mounts.
    pub fn restart(&mut self) {
        self.kill();
        (self.child, self.port, self.stderr) = launch(self.port, &self.args);
    }

    /// SIGSTOP: the camera hangs (connections stay open, nothing is sent or answered).
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`freeze`](Self::freeze): streaming resumes at the next keyframe, with
    /// RTP timestamps that jumped by the time frozen (no burst of stale frames).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill").args([sig, &self.child.id().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill {sig} {} failed", self.child.id());
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        self.kill();
    }
}
