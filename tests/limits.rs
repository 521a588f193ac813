//! Limits against the real binary and a real camera: WHEP sessions per camera,
//! open label streams, snapshots in flight and WHEP body size, each refusal a
//! 503 with `Retry-After` (413 for the body) and counted; the camera keeps
//! decoding at full rate under a snapshot flood.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::netns;
use common::rtsp::RtspServer;
use common::service::Infercast;
use common::whep_client::{self, Offer, Viewer};

const CLIP: &str = "assets/demo/bikes-640x272.h264";

/// Opens a label stream and returns the connection (kept open) and its status.
fn open_stream(base: &str) -> (std::net::TcpStream, u16) {
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET /api/labels/stream HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    let line = String::from_utf8_lossy(&buf[..n]).into_owned();
    (s, line.split(' ').nth(1).unwrap().parse().unwrap())
}

#[test]
fn sessions_streams_snapshots_and_bodies_are_bounded() {
    if !netns::isolated("sessions_streams_snapshots_and_bodies_are_bounded") {
        return;
    }
    let server = RtspServer::start(&[("/cam", CLIP)], None);
    let config = common::scratch_dir("limits").join("infercast.toml");
    let toml = format!(
        "[limits]\nwhep_sessions_per_camera = 2\nsse_streams = 1\nsnapshots_in_flight_per_camera = 1\n\n\
         [[camera]]\nname = \"door\"\nurl = \"{}\"\n",
        server.url("/cam")
    );
    std::fs::write(&config, toml).unwrap();
    let app = Infercast::start(&["--config", config.to_str().unwrap()]);
    app.wait_for("/api/cameras/door", Duration::from_secs(20), |c| c["state"] == "streaming");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    // Two viewers fit; the third is told to come back later.
    let mut viewers = Vec::new();
    for _ in 0..2 {
        let v = rt.block_on(Viewer::new(Offer::H264));
        let r = whep_client::post(&app.base, "/whep/door/raw", "application/sdp", &v.offer_sdp);
        assert_eq!(r.status, 201, "{}", r.body);
        rt.block_on(v.apply_answer(&r.body));
        assert!(rt.block_on(v.connected(Duration::from_secs(10))));
        viewers.push(v);
    }
    app.wait_for("/api/cameras/door", Duration::from_secs(5), |c| c["viewers"]["raw"] == 2);
    let third = rt.block_on(Viewer::new(Offer::H264));
    let r = whep_client::post(&app.base, "/whep/door/annotated", "application/sdp", &third.offer_sdp);
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.headers.iter().any(|(k, v)| k == "retry-after" && v == "5"));
    assert!(r.body.contains("\"limit_reached\"") && r.body.contains("whep_sessions_per_camera"), "{}", r.body);

    // A body over 64 KiB never reaches the SDP parser.
    let huge = format!("{}{}", third.offer_sdp, "a=x-padding:0123456789abcdef\r\n".repeat(3000));
    let r = whep_client::post(&app.base, "/whep/door/raw", "application/sdp", &huge);
    assert_eq!(r.status, 413);

    // One label stream at a time; the slot comes back when the client leaves.
    let (first, status) = open_stream(&app.base);
    assert_eq!(status, 200);
    let (_second, status) = open_stream(&app.base);
    assert_eq!(status, 503);
    drop(first);
    let mut reopened = 0;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        if open_stream(&app.base).1 == 200 {
            reopened += 1;
            break;
        }
    }
    assert_eq!(reopened, 1, "the stream slot is freed when its client goes");

    // A snapshot flood: one in flight at a time, the rest refused, decoding unharmed.
    let decoded = || app.metric("infercast_frames_decoded_total{camera=\"door\"}");
    let before = decoded();
    let started = std::time::Instant::now();
    let rss_before = common::process::rss_kib(app.pid());
    // 32 clients, 3 snapshots each, all at once.
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..32)
            .map(|_| s.spawn(|| (0..3).map(|_| app.get("/api/cameras/door/snapshot.jpg").status).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let rss_growth_kib = common::process::rss_kib(app.pid()).saturating_sub(rss_before);
    assert!(rss_growth_kib < 64 * 1024, "RSS grew by {rss_growth_kib} KiB during the snapshot flood");
    assert!(statuses.contains(&200) && statuses.contains(&503), "{statuses:?}");
    assert!(statuses.iter().all(|s| [200, 503].contains(s)), "{statuses:?}");
    std::thread::sleep(Duration::from_secs(2).saturating_sub(started.elapsed()));
    let fps = (decoded() - before) / started.elapsed().as_secs_f64();
    assert!(fps > 22.0, "decoding fell to {fps:.1} fps during the flood");
    let refusals: f64 = ["whep_sessions_per_camera", "sse_streams", "snapshots_in_flight"]
        .iter()
        .map(|l| app.metric(&format!("infercast_limit_refusals_total{{limit=\"{l}\"}}")))
        .sum();
    assert!(refusals >= 3.0, "refusals counted: {refusals}");
    for v in viewers {
        rt.block_on(v.close());
    }
}

#[test]
fn http_connections_beyond_the_cap_are_closed_at_once() {
    if !netns::isolated("http_connections_beyond_the_cap_are_closed_at_once") {
        return;
    }
    let config = common::scratch_dir("limits_connections").join("infercast.toml");
    std::fs::write(&config, "[limits]\nhttp_connections = 4\n").unwrap();
    let app = Infercast::start(&["--config", config.to_str().unwrap()]);
    let addr = app.base.trim_start_matches("http://").to_owned();
    // Four idle connections hold every slot (a client that opens sockets and sends nothing).
    let idle: Vec<std::net::TcpStream> = (0..4).map(|_| std::net::TcpStream::connect(&addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut fifth = std::net::TcpStream::connect(&addr).unwrap();
    fifth.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = write!(fifth, "GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let mut buf = [0u8; 64];
    let got = fifth.read(&mut buf).unwrap_or(0);
    assert_eq!(got, 0, "the fifth connection is closed unanswered: {}", String::from_utf8_lossy(&buf[..got]));
    drop(idle);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(app.get("/healthz").status, 200, "slots come back when connections close");
    assert!(app.metric("infercast_limit_refusals_total{limit=\"http_connections\"}") >= 1.0);
}

/// Seconds until the server closes `s` (a read returns 0 or fails), at most `within`.
fn closed_after(s: &mut std::net::TcpStream, within: Duration) -> Option<Duration> {
    let started = std::time::Instant::now();
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(0) => Some(started.elapsed()),
        Ok(n) => panic!("the server answered a stalled request: {}", String::from_utf8_lossy(&buf[..n])),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => None,
        Err(_) => Some(started.elapsed()), // reset
    }
}

#[test]
fn slow_clients_are_cut_off() {
    if !netns::isolated("slow_clients_are_cut_off") {
        return;
    }
    let config = common::scratch_dir("limits_slow").join("infercast.toml");
    std::fs::write(&config, "[http]\nheader_read_timeout_ms = 500\nidle_timeout_s = 5\n").unwrap();
    let app = Infercast::start(&["--config", config.to_str().unwrap()]);
    let addr = app.base.trim_start_matches("http://").to_owned();

    // Slowloris: half a request head, then nothing.
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    write!(slow, "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ").unwrap();
    let t = closed_after(&mut slow, Duration::from_secs(5)).expect("a half-sent head is cut off");
    assert!(t >= Duration::from_millis(400) && t < Duration::from_millis(2500), "cut off after {t:?}");

    // A keep-alive connection idle after its request is closed by the same clock.
    let mut kept = std::net::TcpStream::connect(&addr).unwrap();
    write!(kept, "GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 512];
    let n = kept.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    let t = closed_after(&mut kept, Duration::from_secs(5)).expect("an idle keep-alive connection is closed");
    assert!(t < Duration::from_millis(2500), "closed after {t:?}");

    // A body that stops half-way: the connection is closed once idle for idle_timeout_s.
    let mut stalled = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        stalled,
        "POST /whep/demo/raw HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/sdp\r\nContent-Length: 1000\r\n\r\nv=0\r\n"
    )
    .unwrap();
    let t = closed_after(&mut stalled, Duration::from_secs(10)).expect("a stalled upload is cut off");
    assert!(t >= Duration::from_millis(4500) && t < Duration::from_millis(8000), "cut off after {t:?}");
    assert_eq!(app.get("/healthz").status, 200, "the server serves on");
}
