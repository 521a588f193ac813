//! Secure by default, against the real binary on a network address: bearer
//! tokens made by `infercast token new`, roles and camera lists, the session
//! cookie for the label stream, CORS only for allowed origins, and the refusal
//! to listen beyond loopback without `[auth]`. Each test runs in a network
//! namespace of its own; the non-loopback address (198.18.0.1, the
//! benchmarking range) lives on that namespace's `lo`, so nothing leaves it.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use common::netns;
use common::rtsp::RtspServer;
use common::service::Infercast;
use common::whep_client::{self, HttpReply, Offer, Viewer};

const CLIP: &str = "assets/demo/bikes-640x272.h264";
const HOST: &str = "198.18.0.1";

/// A non-loopback address inside the test's own namespace (on its `lo`:
/// clients connecting to it come from it, not from 127.0.0.0/8).
fn add_network_address() {
    let ok = Command::new("ip").args(["addr", "add", &format!("{HOST}/32"), "dev", "lo"]).status().unwrap().success();
    assert!(ok, "cannot add {HOST} in the test namespace");
}

/// Starts infercast with `config` (which listens on 0.0.0.0:0) and points the
/// client at the non-loopback address.
fn start_on_network(config: &std::path::Path) -> Infercast {
    let mut app = Infercast::start_with(&["--config", config.to_str().unwrap()]);
    let port = app.base.rsplit(':').next().unwrap().to_owned();
    app.base = format!("http://{HOST}:{port}");
    app
}

/// `infercast token new ARGS`: (token, TOML lines).
fn token_new(args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_infercast")).args(["token", "new"]).args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text.lines().next().unwrap().to_owned();
    assert!(token.starts_with("ic_") && !text[token.len()..].contains(&token), "the token is printed once: {text}");
    let toml = text.lines().skip_while(|l| !l.starts_with("[[auth.tokens]]")).collect::<Vec<_>>().join("\n");
    assert!(toml.contains("sha256 = \""), "{text}");
    (token, toml)
}

fn get(base: &str, path: &str, headers: &[(&str, &str)]) -> HttpReply {
    whep_client::request(base, "GET", path, headers, "")
}

fn header<'a>(r: &'a HttpReply, name: &str) -> Option<&'a str> {
    r.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The status line of a GET (for streams that never end), with `headers`.
fn status_of_stream(base: &str, path: &str, headers: &[(&str, &str)]) -> u16 {
    status_with_host(base, base.trim_start_matches("http://"), path, headers)
}

/// The status line of a GET to `base` that names `host` in its `Host` header.
fn status_with_host(base: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> u16 {
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n").unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status line: {line}"))
}

#[test]
fn tokens_roles_cameras_sessions_and_origins_on_a_network_address() {
    if !netns::isolated("tokens_roles_cameras_sessions_and_origins_on_a_network_address") {
        return;
    }
    add_network_address();
    let server = RtspServer::start(&[("/a", CLIP), ("/b", CLIP)], None);
    let (viewer_token, viewer_toml) = token_new(&["--role", "view", "--name", "door-viewer", "--camera", "a"]);
    let (admin_token, admin_toml) = token_new(&["--role", "admin"]);
    let config = common::scratch_dir("auth_tokens").join("infercast.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"0.0.0.0:0\"\n[http]\nallowed_origins = [\"https://dash.example\"]\n[auth]\n\n{viewer_toml}\n\n{admin_toml}\n\n\
             [[camera]]\nname = \"a\"\nurl = \"{}\"\n\n[[camera]]\nname = \"b\"\nurl = \"{}\"\n",
            server.url("/a"),
            server.url("/b")
        ),
    )
    .unwrap();
    let app = start_on_network(&config);
    let base = app.base.clone();
    let view = format!("Bearer {viewer_token}");
    let admin = format!("Bearer {admin_token}");
    let as_viewer = [("authorization", view.as_str())];
    let as_admin = [("authorization", admin.as_str())];

    // No token: 401 with WWW-Authenticate everywhere that shows a camera or its data.
    for path in ["/api/cameras", "/api/cameras/a/snapshot.jpg", "/api/labels", "/metrics", "/api"] {
        let r = get(&base, path, &[]);
        assert_eq!(r.status, 401, "GET {path}: {}", r.body);
        assert_eq!(header(&r, "www-authenticate"), Some("Bearer realm=\"infercast\""));
        assert!(r.body.contains("\"unauthorized\""), "{}", r.body);
    }
    assert_eq!(status_of_stream(&base, "/api/labels/stream", &[]), 401);
    let probe = tokio::runtime::Runtime::new().unwrap().block_on(Viewer::new(Offer::H264));
    let r = whep_client::post(&base, "/whep/a/raw", "application/sdp", &probe.offer_sdp);
    assert_eq!(r.status, 401, "WHEP POST without a token");
    let r = get(&base, "/api/cameras", &[("authorization", "Bearer ic_not-a-real-token-at-all")]);
    assert_eq!(r.status, 401);
    // The page itself and the probes stay open.
    assert_eq!(get(&base, "/", &[]).status, 200);
    assert_eq!(get(&base, "/healthz", &[]).status, 200);

    // The view token limited to camera a.
    let cams = get(&base, "/api/cameras", &as_viewer);
    assert_eq!(cams.status, 200);
    let names: Vec<String> = serde_json::from_str::<serde_json::Value>(&cams.body)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["a"], "a token for camera a lists only a");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while get(&base, "/api/cameras/a/snapshot.jpg", &as_viewer).status != 200 {
        assert!(std::time::Instant::now() < deadline, "no snapshot of camera a with the view token");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(get(&base, "/api/cameras/b", &as_viewer).status, 403);
    assert_eq!(get(&base, "/api/cameras/b/snapshot.jpg", &as_viewer).status, 403);
    assert_eq!(get(&base, "/api/labels/b", &as_viewer).status, 403);
    let m = get(&base, "/metrics", &as_viewer);
    assert_eq!(m.status, 403, "view role on /metrics");
    assert!(m.body.contains("\"forbidden\""));
    assert_eq!(status_of_stream(&base, "/api/labels/stream", &as_viewer), 200);
    let r = whep_client::request(
        &base,
        "POST",
        "/whep/b/raw",
        &[("authorization", &view), ("content-type", "application/sdp")],
        &probe.offer_sdp,
    );
    assert_eq!(r.status, 403, "camera b with a camera-a token");
    let r = whep_client::request(
        &base,
        "POST",
        "/whep/a/raw",
        &[("authorization", &view), ("content-type", "application/sdp")],
        &probe.offer_sdp,
    );
    assert_eq!(r.status, 201, "WHEP with the view token: {}", r.body);
    let location = r.location.clone().unwrap();
    assert_eq!(whep_client::request(&base, "DELETE", &location, &as_viewer, "").status, 200);

    // Admin: everything.
    let cams = get(&base, "/api/cameras", &as_admin);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&cams.body).unwrap().as_array().unwrap().len(), 2);
    let m = get(&base, "/metrics", &as_admin);
    assert_eq!(m.status, 200);
    let failures: f64 = m
        .body
        .lines()
        .filter(|l| l.starts_with("infercast_auth_failures_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(failures >= 10.0, "refusals counted: {failures}");

    // A session cookie for the EventSource: HttpOnly, SameSite=Strict; GET only.
    let r = whep_client::request(&base, "POST", "/api/login", &as_viewer, "");
    assert_eq!(r.status, 204, "{}", r.body);
    let set_cookie = header(&r, "set-cookie").unwrap().to_owned();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    assert_eq!(status_of_stream(&base, "/api/labels/stream", &[("cookie", &cookie)]), 200);
    let r = whep_client::request(
        &base,
        "POST",
        "/whep/a/raw",
        &[("cookie", &cookie), ("content-type", "application/sdp")],
        &probe.offer_sdp,
    );
    assert_eq!(r.status, 401, "the cookie alone does not open a WHEP session");
    assert_eq!(whep_client::request(&base, "POST", "/api/logout", &[("cookie", &cookie)], "").status, 204);
    assert_eq!(status_of_stream(&base, "/api/labels/stream", &[("cookie", &cookie)]), 401);

    // CORS: only the allowed origin gets the headers, on answers and preflights.
    let allowed = get(&base, "/api/cameras", &[("authorization", &admin), ("origin", "https://dash.example")]);
    assert_eq!(header(&allowed, "access-control-allow-origin"), Some("https://dash.example"));
    let foreign = get(&base, "/api/cameras", &[("authorization", &admin), ("origin", "https://evil.example")]);
    assert_eq!(header(&foreign, "access-control-allow-origin"), None);
    let pre = whep_client::request(
        &base,
        "OPTIONS",
        "/whep/a/raw",
        &[("origin", "https://dash.example"), ("access-control-request-method", "POST")],
        "",
    );
    assert_eq!(pre.status, 204);
    assert_eq!(header(&pre, "access-control-allow-origin"), Some("https://dash.example"));
    assert!(header(&pre, "access-control-allow-headers").unwrap().contains("authorization"));

    // No token anywhere in the log.
    let log = app.log();
    for secret in [&viewer_token, &admin_token] {
        assert!(!log.contains(secret.as_str()), "a token leaked into the log");
    }
    assert!(log.contains("request refused"), "refusals are logged");
}

#[test]
fn listening_beyond_loopback_needs_auth_or_anonymous_on_purpose() {
    if !netns::isolated("listening_beyond_loopback_needs_auth_or_anonymous_on_purpose") {
        return;
    }
    add_network_address();
    let out = Command::new(env!("CARGO_BIN_EXE_infercast"))
        .args(["--listen", "0.0.0.0:0"])
        .env_remove("ORT_DYLIB_PATH")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().find(|l| l.starts_with("infercast: ")).unwrap_or_default();
    assert!(
        line.contains("without [auth]") && line.contains("token new") && line.contains("anonymous = \"view\""),
        "{err}"
    );

    let config = common::scratch_dir("auth_anonymous").join("infercast.toml");
    std::fs::write(&config, "listen = \"0.0.0.0:0\"\n[auth]\nanonymous = \"view\"\n").unwrap();
    let app = start_on_network(&config);
    assert_eq!(get(&app.base, "/api/cameras", &[]).status, 200, "anonymous viewing, chosen on purpose");
    // DNS rebinding: a web page's own name pointed at us gets nothing without a credential.
    assert_eq!(status_with_host(&app.base, "evil.example", "/api/cameras", &[]), 403);
    assert_eq!(status_with_host(&app.base, "localhost:8080", "/api/cameras", &[]), 200);
    assert_eq!(get(&app.base, "/metrics", &[]).status, 403, "but not the admin endpoints");
}

/// A key pair made by openssl: (private PKCS#8 PEM, public key DER).
fn openssl_key(dir: &std::path::Path, name: &str, genpkey: &[&str]) -> (Vec<u8>, Vec<u8>) {
    let key = dir.join(format!("{name}.pem"));
    let ok = Command::new("openssl").arg("genpkey").args(genpkey).arg("-out").arg(&key).status().unwrap().success();
    assert!(ok, "openssl genpkey {genpkey:?}");
    let der = Command::new("openssl").args(["pkey", "-pubout", "-outform", "DER", "-in"]).arg(&key).output().unwrap();
    assert!(der.status.success());
    (std::fs::read(&key).unwrap(), der.stdout)
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn jwt(alg: jsonwebtoken::Algorithm, key: &jsonwebtoken::EncodingKey, kid: &str, claims: serde_json::Value) -> String {
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

#[test]
fn jwts_from_a_jwks_file_are_verified_with_their_role_and_cameras() {
    if !netns::isolated("jwts_from_a_jwks_file_are_verified_with_their_role_and_cameras") {
        return;
    }
    add_network_address();
    let dir = common::scratch_dir("auth_jwt");
    // An Ed25519 (EdDSA) and a P-256 (ES256) key in the JWKS; a third key that is not.
    let (ed_pem, ed_der) = openssl_key(&dir, "ed", &["-algorithm", "ed25519"]);
    let (ec_pem, ec_der) = openssl_key(&dir, "ec", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    let (stranger_pem, _) = openssl_key(&dir, "stranger", &["-algorithm", "ed25519"]);
    let point = &ec_der[ec_der.len() - 64..]; // uncompressed point 04 || x || y at the end of the SPKI
    let jwks = serde_json::json!({ "keys": [
        { "kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": b64url(&ed_der[ed_der.len() - 32..]) },
        { "kty": "EC", "crv": "P-256", "kid": "ec", "x": b64url(&point[..32]), "y": b64url(&point[32..]) },
    ]});
    std::fs::write(dir.join("jwks.json"), jwks.to_string()).unwrap();
    let server = RtspServer::start(&[("/a", CLIP), ("/b", CLIP)], None);
    let config = dir.join("infercast.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"0.0.0.0:0\"\n[auth]\njwks_file = \"{}\"\njwt_issuer = \"https://id.example\"\n\n\
             [[camera]]\nname = \"a\"\nurl = \"{}\"\n\n[[camera]]\nname = \"b\"\nurl = \"{}\"\n",
            dir.join("jwks.json").display(),
            server.url("/a"),
            server.url("/b")
        ),
    )
    .unwrap();
    let app = start_on_network(&config);
    let base = app.base.clone();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let (ed, ec, stranger) = (
        jsonwebtoken::EncodingKey::from_ed_pem(&ed_pem).unwrap(),
        jsonwebtoken::EncodingKey::from_ec_pem(&ec_pem).unwrap(),
        jsonwebtoken::EncodingKey::from_ed_pem(&stranger_pem).unwrap(),
    );
    let claims = |role: &str, cameras: Option<&[&str]>, exp: u64| {
        let mut c = serde_json::json!({ "sub": "alice", "iss": "https://id.example", "role": role, "exp": exp });
        if let Some(list) = cameras {
            c["cameras"] = serde_json::json!(list);
        }
        c
    };
    let bearer = |t: &str| format!("Bearer {t}");
    let status = |path: &str, token: &str| get(&base, path, &[("authorization", &bearer(token))]).status;

    let viewer_a = jwt(jsonwebtoken::Algorithm::EdDSA, &ed, "ed", claims("view", Some(&["a"]), now + 3600));
    assert_eq!(status("/api/cameras/a", &viewer_a), 200, "EdDSA view token for camera a");
    assert_eq!(status("/api/cameras/b", &viewer_a), 403, "not for camera b");
    assert_eq!(status("/metrics", &viewer_a), 403);
    let admin = jwt(jsonwebtoken::Algorithm::ES256, &ec, "ec", claims("admin", None, now + 3600));
    assert_eq!(status("/metrics", &admin), 200, "ES256 admin token");
    assert_eq!(status("/api/cameras/b", &admin), 200);

    let expired = jwt(jsonwebtoken::Algorithm::EdDSA, &ed, "ed", claims("admin", None, now - 3600));
    assert_eq!(status("/api/cameras", &expired), 401, "expired");
    let foreign = jwt(jsonwebtoken::Algorithm::EdDSA, &stranger, "ed", claims("admin", None, now + 3600));
    assert_eq!(status("/api/cameras", &foreign), 401, "signed by a key not in the JWKS");
    let mut wrong_iss = claims("admin", None, now + 3600);
    wrong_iss["iss"] = "https://evil.example".into();
    assert_eq!(status("/api/cameras", &jwt(jsonwebtoken::Algorithm::EdDSA, &ed, "ed", wrong_iss)), 401, "issuer");
    let mut parts: Vec<String> = viewer_a.split('.').map(str::to_owned).collect();
    parts[1] = b64url(claims("admin", None, now + 3600).to_string().as_bytes());
    assert_eq!(status("/api/cameras", &parts.join(".")), 401, "payload changed after signing");
    assert!(!app.log().contains(&viewer_a), "no token in the log");
}
