//! Runs the real `infercast` binary as a service for a test, and talks to its
//! HTTP API.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Infercast {
    child: Child,
    pub base: String,
    /// Sent as `Authorization: Bearer` by `get` and friends when set.
    pub token: Option<String>,
    /// Everything infercast wrote to stderr so far.
    pub log: Arc<Mutex<String>>,
}

pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// The certificate (PEM) this test process's HTTPS clients trust, set by [`trust_ca`].
static TEST_CA: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

/// Makes every client of this test process (`agent_with_timeout`) trust the
/// PEM certificate at `path` and nothing else (for a server with `[tls]`).
pub fn trust_ca(path: &std::path::Path) {
    let pem = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let _ = TEST_CA.set(pem);
}

/// An HTTP client that returns error statuses as replies (tests assert on them)
/// and gives up after `timeout`; over HTTPS it trusts only the [`trust_ca`] certificate.
pub fn agent_with_timeout(timeout: Duration) -> ureq::Agent {
    let mut config = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(timeout));
    if let Some(pem) = TEST_CA.get() {
        let certs: Vec<_> = ureq::tls::parse_pem(pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        let roots = ureq::tls::RootCerts::Specific(std::sync::Arc::new(certs));
        config = config.tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build());
    }
    config.build().new_agent()
}

fn agent() -> ureq::Agent {
    agent_with_timeout(Duration::from_secs(10))
}

impl Infercast {
    /// Starts `infercast --listen 127.0.0.1:0 ARGS...` and waits (≤ 60 s) for it to
    /// say where it listens.
    pub fn start(args: &[&str]) -> Infercast {
        let mut all = vec!["--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        Infercast::start_with(&all)
    }

    /// Starts `infercast ARGS...` (no `--listen` of its own: the config's or
    /// the arguments' applies) and waits (≤ 60 s) for it to say where it listens.
    pub fn start_with(args: &[&str]) -> Infercast {
        Infercast::start_with_env(args, &[])
    }

    /// [`Infercast::start_with`] with extra environment variables. Runs
    /// `$INFERCAST_BIN` if set (e.g. the container's slim-FFmpeg release
    /// build), else the binary cargo built for the tests.
    ///
    /// Outside a network namespace of its own (tests that share the host's
    /// network) the one-port SFU gets an ephemeral port (env
    /// `INFERCAST_UDP_LISTEN=0.0.0.0:0`) unless the test or its environment
    /// says otherwise, so parallel tests do not fight over 8189.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Infercast {
        let binary = std::env::var_os("INFERCAST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_infercast").into());
        let shared_network = std::env::var_os("INFERCAST_TEST_NETNS").is_none() && !super::netns::only_loopback();
        let udp_default = (shared_network
            && std::env::var_os("INFERCAST_UDP_LISTEN").is_none()
            && !env.iter().any(|(k, _)| *k == "INFERCAST_UDP_LISTEN"))
        .then_some(("INFERCAST_UDP_LISTEN", "0.0.0.0:0"));
        let mut child = Command::new(binary)
            .args(args)
            .envs(udp_default)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .env_remove("ORT_DYLIB_PATH")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("infercast starts");
        let stderr = child.stderr.take().expect("stderr piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                for scheme in ["http", "https"] {
                    if let Some(rest) = line.split(&format!(" on {scheme}://")).nth(1) {
                        let _ = tx.send(format!("{scheme}://{}", rest.split('/').next().unwrap_or_default()));
                    }
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let base = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("infercast did not start listening; log:\n{}", log.lock().unwrap())
        });
        Infercast { child, base, token: None, log }
    }

    pub fn get(&self, path: &str) -> Reply {
        let mut req = agent().get(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("authorization", &format!("Bearer {t}"));
        }
        let mut resp = req.call().expect("HTTP request");
        let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let body = resp.body_mut().with_config().limit(64 << 20).read_to_vec().expect("body");
        Reply { status: resp.status().as_u16(), content_type, body }
    }

    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "GET {path}: {}", String::from_utf8_lossy(&r.body));
        r.json()
    }

    /// Reads a Server-Sent Events stream until its first complete event (blank
    /// line), at most `within`.
    pub fn first_sse_event(&self, path: &str, within: Duration) -> String {
        use std::io::Read;
        let agent = agent_with_timeout(within);
        let resp = agent.get(format!("{}{path}", self.base)).call().expect("SSE request");
        assert_eq!(resp.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("text/event-stream"));
        let mut reader = resp.into_body().into_reader();
        let mut text = String::new();
        let mut buf = [0u8; 1024];
        while !text.contains("\n\n") {
            let n = reader.read(&mut buf).expect("SSE bytes arrive in time");
            assert!(n > 0, "SSE stream ended: {text}");
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        text
    }

    /// Polls `path` until `pred` holds on its JSON (every 100 ms, at most `within`);
    /// returns the JSON that satisfied it.
    pub fn wait_for(
        &self,
        path: &str,
        within: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + within;
        loop {
            let v = self.get_json(path);
            if pred(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {within:?} waiting on {path}; last: {v:#}\nlog:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The camera named `name` from `/api/cameras/{name}`.
    pub fn camera(&self, name: &str) -> serde_json::Value {
        self.get_json(&format!("/api/cameras/{name}"))
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The process id (for `/proc/<pid>/...`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One sample's value from `/metrics`, e.g. `infercast_webrtc_plis_total{camera="door",track="raw"}`
    /// (0 when absent).
    pub fn metric(&self, sample: &str) -> f64 {
        let text = String::from_utf8(self.get("/metrics").body).expect("metrics are UTF-8");
        text.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.strip_prefix(' ')))
            .map_or(0.0, |v| v.trim().parse().expect("a number"))
    }

    /// Sends SIGTERM and returns how long the process took to exit (panics after 10 s).
    pub fn terminate(&mut self) -> Duration {
        let t = Instant::now();
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "infercast exited with {status}; log:\n{}", self.log());
                return t.elapsed();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("infercast did not exit within 10 s of SIGTERM");
    }
}

impl Drop for Infercast {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
