//! HTTPS (`[tls]`) against the real binary with certificates made by openssl
//! and a real client (curl): the API answers over TLS with the configured
//! certificate, plain HTTP gets nothing, a replaced certificate is picked up on
//! file change and on SIGHUP without ending an open stream, a broken
//! replacement keeps the old one, and a missing file stops start-up with the key.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::service::Infercast;

/// `curl` exit code, HTTP status and body for `url`, trusting only `ca`.
fn curl(url: &str, ca: Option<&Path>, token: &str) -> (i32, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {token}"));
    if let Some(ca) = ca {
        cmd.arg("--cacert").arg(ca);
    }
    let out = cmd.arg(url).output().expect("curl runs (Debian package curl)");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether the server presents a certificate issued by `ca` (each test CA issues one).
fn served_by(base: &str, ca: &Path, token: &str) -> bool {
    let (code, out) = curl(&format!("{base}/api/cameras"), Some(ca), token);
    code == 0 && out.ends_with("200")
}

#[test]
fn https_with_reload() {
    let dir = common::scratch_dir("tls");
    let first = common::certs::issue(&dir, "first");
    let (cert_path, key_path) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::copy(&first.cert, &cert_path).unwrap();
    std::fs::copy(&first.key, &key_path).unwrap();
    let token = infercast::auth::new_token();
    let config = dir.join("infercast.toml");
    let toml = format!(
        "[tls]\ncert_path = \"{}\"\nkey_path = \"{}\"\n\n[auth]\n[[auth.tokens]]\nname = \"t\"\nrole = \"admin\"\nsha256 = \"{}\"\n",
        cert_path.display(),
        key_path.display(),
        infercast::auth::token_sha256_hex(&token)
    );
    std::fs::write(&config, toml).unwrap();
    let app = Infercast::start(&["--config", config.to_str().unwrap()]);
    assert!(app.base.starts_with("https://127.0.0.1:"), "{}", app.base);

    // Verified TLS with the configured certificate.
    let (code, out) = curl(&format!("{}/api/cameras", app.base), Some(&first.ca), &token);
    assert_eq!(code, 0, "curl over TLS: {out}");
    assert!(out.ends_with("200") && out.contains("\"demo\""), "{out}");
    // An untrusted client refuses it (curl exit 60: certificate problem); plain HTTP gets no answer.
    assert_eq!(curl(&format!("{}/healthz", app.base), None, &token).0, 60);
    let plain = app.base.replace("https://", "http://");
    let (code, out) = curl(&format!("{plain}/healthz"), None, &token);
    assert!(code != 0 && !out.ends_with("200"), "plain HTTP on the TLS port: {code} {out}");

    // An event stream opened now must outlive both reloads.
    let mut stream = Command::new("curl")
        .args(["-sS", "-N", "--max-time", "60", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg("--cacert")
        .arg(&first.ca)
        .arg(format!("{}/api/labels/stream", app.base))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stream_out = stream.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<usize>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream_out.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].windows(12).filter(|w| w == b"event: label").count()).is_err() {
                break;
            }
        }
    });
    let labels_until = |deadline: Duration| -> usize {
        let end = Instant::now() + deadline;
        let mut n = 0;
        while let Ok(k) = rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            n += k;
        }
        n
    };
    assert!(labels_until(Duration::from_secs(3)) > 0, "labels over the TLS stream");

    // File change: a new certificate and key are served within a few seconds.
    let second = common::certs::issue(&dir, "second");
    std::fs::copy(&second.key, &key_path).unwrap();
    std::fs::copy(&second.cert, &cert_path).unwrap();
    assert!(
        common::wait_until(Duration::from_secs(10), || served_by(&app.base, &second.ca, &token)).is_some(),
        "the replaced certificate is served after a file change; log:\n{}",
        app.log()
    );
    assert_eq!(curl(&format!("{}/healthz", app.base), Some(&first.ca), &token).0, 60, "the old one is gone");

    // A key that does not fit the certificate: refused, the working pair stays.
    std::fs::copy(common::certs::issue(&dir, "mismatch").key, &key_path).unwrap();
    assert!(
        common::wait_until(Duration::from_secs(10), || app.log().contains("TLS certificate not reloaded")).is_some()
    );
    assert!(served_by(&app.base, &second.ca, &token), "the working certificate stays");

    // SIGHUP reloads on demand.
    let fourth = common::certs::issue(&dir, "fourth");
    std::fs::copy(&fourth.key, &key_path).unwrap();
    std::fs::copy(&fourth.cert, &cert_path).unwrap();
    let status = Command::new("kill").args(["-HUP", &app.pid().to_string()]).status().unwrap();
    assert!(status.success());
    assert!(
        common::wait_until(Duration::from_secs(5), || app.log().contains("trigger=\"SIGHUP\"")).is_some(),
        "a reload on SIGHUP is logged; log:\n{}",
        app.log()
    );
    assert!(served_by(&app.base, &fourth.ca, &token), "served after SIGHUP; log:\n{}", app.log());

    // The stream opened before the reloads still delivers labels.
    assert!(labels_until(Duration::from_secs(3)) > 0, "the stream survived the reloads");
    let _ = stream.kill();
    let _ = stream.wait();
}

#[test]
fn missing_certificate_stops_start_up() {
    let dir = common::scratch_dir("tls_missing");
    let config = dir.join("infercast.toml");
    std::fs::write(&config, "[tls]\ncert_path = \"/nonexistent/server.crt\"\nkey_path = \"/nonexistent/server.key\"\n")
        .unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_infercast")).args(["--config", config.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tls.cert_path /nonexistent/server.crt"), "{err}");
}
