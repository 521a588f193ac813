//! Fan-out benchmark: N headless WHEP viewers (webrtc 0.21, in this process) on
//! one 720p25 raw track of the real `infercast` binary, fed by the real RTSP test
//! server; then one viewer on the annotated track.
//!
//! Per level of N it measures, over a fixed window once all N receive: server
//! CPU (`/proc/<pid>/stat`), CPU per viewer against the 0-viewer baseline,
//! unique-packet loss from sequence numbers, frames per second per viewer
//! (marker bits), and the server's send latency (access unit received → last RTP
//! packet handed to the connection) from `/metrics` histogram bucket deltas.
//! Everything runs in a private network namespace on 127.0.0.1, and the viewers
//! share the machine's cores with the server: the client CPU is printed too.
//!
//! `cargo bench --bench fanout` (~4 min); env `FANOUT_VIEWERS` (levels, default
//! `1,25,50,100,200,300,400`; viewers are added, never restarted, between levels),
//! `FANOUT_WINDOW_S` (10), `FANOUT_SETTLE_S` (3), `FANOUT_ANNOTATED=0` (skip that
//! phase). The ramp stops after a level where viewers failed to connect or loss
//! exceeded 2 %: the machine no longer keeps up, and higher levels only take longer.

#![allow(dead_code, clippy::unwrap_used)] // a benchmark: a failed unwrap is a failed run

#[path = "../../tests/common/mod.rs"]
mod common;
mod measure;
mod report;
mod viewer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::rtsp::{self, RtspServer};
use common::service::Infercast;
use common::whep_client;

const CAMERA: &str = "cam";
const SOURCE_FPS: f64 = 25.0;
/// A viewer keeps full frame rate at ≥ 98 % of the source's.
const MIN_FPS: f64 = 24.5;
const MAX_LOSS_PCT: f64 = 0.1;
const TARGET_VIEWERS_PER_CORE: f64 = 500.0;
const TARGET_SEND_P95_MS: f64 = 2.0;
const TARGET_ENCODED_P95_MS: f64 = 40.0;
/// Viewers set up concurrently while ramping up.
const CONNECT_BATCH: usize = 10;
/// A window in which other processes used more than this (% of a core) is measured again, at most
/// `BUSY_RETRIES` times.
const BUSY_OTHER_PCT: f64 = 25.0;
const BUSY_RETRIES: usize = 2;
/// A level whose loss exceeds this (or where viewers failed to connect) ends the ramp.
const GIVE_UP_LOSS_PCT: f64 = 2.0;

use measure::*;
use report::*;
use viewer::*;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

fn main() {
    if !common::netns::isolated("fanout") {
        return;
    }
    let mut levels: Vec<usize> = std::env::var("FANOUT_VIEWERS")
        .unwrap_or_else(|_| "1,25,50,100,200,300,400".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .filter(|n| *n > 0)
        .collect();
    levels.sort_unstable();
    levels.dedup();
    let window = Duration::from_secs_f64(env_or("FANOUT_WINDOW_S", 10.0f64).clamp(1.0, 600.0));
    let settle = Duration::from_secs_f64(env_or("FANOUT_SETTLE_S", 3.0f64).clamp(0.0, 60.0));
    let with_annotated = env_or("FANOUT_ANNOTATED", 1u8) != 0;
    let tck = clock_ticks_per_second();
    println!("load average at start: {}; speed reference {:.0} ms", load_average(), speed_reference_ms());

    let camera = RtspServer::start(&[("/cam", rtsp::CLIP_1280X720)], None);
    let config = common::scratch_dir("fanout").join("fanout.toml");
    std::fs::write(&config, "[webrtc]\nudp_ips = [\"127.0.0.1\"]\n").unwrap();
    let app = Infercast::start(&["--config", config.to_str().unwrap(), &format!("{CAMERA}={}", camera.url("/cam"))]);
    app.wait_for(&format!("/api/cameras/{CAMERA}"), Duration::from_secs(30), |c| c["state"] == "streaming");
    println!(
        "fanout: clip {} (25 fps), levels {levels:?}, window {:.0} s, settle {:.0} s, {} cores",
        rtsp::CLIP_1280X720,
        window.as_secs_f64(),
        settle.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let procs = Procs { app: &app, camera_pid: camera.pid() };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // One window; again (at most twice) while other processes (a compiler) take over a quarter core.
    let timed = |label: &str, track: &str, viewers: &[Viewer], failed: usize| {
        let mut attempt = 0;
        loop {
            let a = procs.snapshot(viewers);
            std::thread::sleep(window);
            let row = measure(label, track, &a, &procs.snapshot(viewers), failed, tck);
            attempt += 1;
            if row.other_pct() <= BUSY_OTHER_PCT || attempt > BUSY_RETRIES {
                return row;
            }
            println!("  other processes used {:.0} % of a core: measuring again", row.other_pct());
        }
    };

    // Baseline: camera, classification, no viewer.
    std::thread::sleep(Duration::from_secs(5));
    let baseline = timed("raw", "raw", &[], 0);
    println!("baseline (0 viewers): server {:.1} % of a core", baseline.server_pct);
    let mut rows = vec![baseline];
    let baseline_pct = rows[0].server_pct;

    let mut viewers = Vec::new();
    let mut failed = 0;
    for &n in &levels {
        let t = Instant::now();
        let failures = rt.block_on(ramp(&mut viewers, n, &app.base, "raw"));
        failed += failures.len();
        let receiving = rt.block_on(all_receiving(&viewers, Duration::from_secs(10)));
        println!(
            "{n} viewers: {} connected in {:.1} s{}{}",
            viewers.len(),
            t.elapsed().as_secs_f64(),
            if receiving { "" } else { ", not all receiving" },
            failures.first().map(|f| format!(", {} failed (first: {f})", failures.len())).unwrap_or_default()
        );
        std::thread::sleep(settle);
        let row = timed("raw", "raw", &viewers, failed);
        println!(
            "  server {:.1} %, loss {:.3} %, fps min {:.1}, send p95 {} ms",
            row.server_pct,
            row.loss_pct,
            row.fps_min,
            ms(row.p95_ms)
        );
        let give_up = row.failed > 0 || row.loss_pct > GIVE_UP_LOSS_PCT;
        rows.push(row);
        if give_up {
            println!("  stopping the ramp here: the machine no longer keeps up");
            break;
        }
    }
    rt.block_on(close(std::mem::take(&mut viewers), &app.base));

    let mut annotated = None;
    if with_annotated {
        std::thread::sleep(Duration::from_secs(2));
        let mut one = Vec::new();
        let failures = rt.block_on(ramp(&mut one, 1, &app.base, "annotated"));
        let receiving = rt.block_on(all_receiving(&one, Duration::from_secs(15)));
        if failures.is_empty() && receiving {
            std::thread::sleep(settle.max(Duration::from_secs(3)));
            annotated = Some(timed("annotated", "annotated", &one, 0));
        } else {
            println!("annotated viewer failed: {failures:?}, receiving {receiving}");
        }
        rt.block_on(close(one, &app.base));
    }

    println!("\n## Fan-out results (raw track, 720p25; row 0 = baseline with no viewer)");
    let mut all: Vec<&Row> = rows.iter().collect();
    all.extend(annotated.as_ref());
    print_table(&all, baseline_pct);
    print_details(&all, &rows[0]);
    print_summary(&rows, baseline_pct, annotated.as_ref());
    println!("load average at end: {}; speed reference {:.0} ms", load_average(), speed_reference_ms());
    rt.shutdown_timeout(Duration::from_secs(1));
}
