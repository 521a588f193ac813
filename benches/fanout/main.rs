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
//! Both SFUs run one after the other in one run, each with a fresh server: `v1`
//! (a webrtc 0.21 peer connection per viewer, a UDP port each) and `v2` (the
//! one-port SFU, `[webrtc] udp_listen`). With two or more cores the server is
//! pinned to core 0 (`sched_setaffinity` through `taskset -a -p`, every thread)
//! and this process, the viewers and the RTSP server to the others, so the
//! server's CPU is one core's worth of work.
//!
//! `cargo bench --bench fanout` (~8 min); env `FANOUT_SFU` (`v1,v2`),
//! `FANOUT_VIEWERS` (levels, default `1,20,100,200,300,400`; viewers are added,
//! never restarted, between levels), `FANOUT_WINDOW_S` (10), `FANOUT_SETTLE_S`
//! (3), `FANOUT_ANNOTATED=0` (skip that phase), `FANOUT_PIN=0` (no pinning),
//! `FANOUT_LABELLED` (10; 0 skips it): on the one-port SFU, the server's CPU
//! with that many "labelled" viewers (raw + the `labels` data channel: no
//! encoder) against as many "burned-in" ones (the annotated track).
//! The ramp stops after a level where viewers failed to connect or loss
//! exceeded 2 %: the machine no longer keeps up, and higher levels only take longer.

#![allow(dead_code, clippy::unwrap_used)] // a benchmark: a failed unwrap is a failed run

#[path = "../../tests/common/mod.rs"]
mod common;
mod measure;
mod report;
mod viewer;

use std::collections::HashMap;
use std::process::Command;
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
const TARGET_VIEWERS_PER_CORE: f64 = 1000.0;
/// Send latency p95 targets: (up to this many viewers, ms).
const TARGET_SEND_P95_MS: [(usize, f64); 2] = [(20, 2.0), (200, 10.0)];
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
        .unwrap_or_else(|_| "1,20,100,200,300,400".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .filter(|n| *n > 0)
        .collect();
    levels.sort_unstable();
    levels.dedup();
    let sfus: Vec<Sfu> = std::env::var("FANOUT_SFU")
        .unwrap_or_else(|_| "v1,v2".into())
        .split(',')
        .filter_map(|s| match s.trim() {
            "v1" => Some(Sfu::V1),
            "v2" => Some(Sfu::V2),
            other => {
                println!("FANOUT_SFU: unknown SFU {other:?} (v1, v2)");
                None
            }
        })
        .collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = cores >= 2 && env_or("FANOUT_PIN", 1u8) != 0;
    if pin {
        // Before any thread or child: they inherit this process's affinity.
        set_affinity(std::process::id(), &format!("1-{}", cores - 1));
    }
    let opts = Options {
        levels,
        window: Duration::from_secs_f64(env_or("FANOUT_WINDOW_S", 10.0f64).clamp(1.0, 600.0)),
        settle: Duration::from_secs_f64(env_or("FANOUT_SETTLE_S", 3.0f64).clamp(0.0, 60.0)),
        with_annotated: env_or("FANOUT_ANNOTATED", 1u8) != 0,
        labelled: env_or("FANOUT_LABELLED", 10usize),
        pin,
    };
    println!("load average at start: {}; speed reference {:.0} ms", load_average(), speed_reference_ms());
    let camera = RtspServer::start(&[("/cam", rtsp::CLIP_1280X720)], None);
    println!(
        "fanout: clip {} (25 fps), SFUs {sfus:?}, levels {:?}, window {:.0} s, settle {:.0} s, {cores} cores, {}",
        rtsp::CLIP_1280X720,
        opts.levels,
        opts.window.as_secs_f64(),
        opts.settle.as_secs_f64(),
        if pin { "server pinned to core 0, viewers and camera on the others" } else { "no pinning" }
    );
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut runs = Vec::new();
    for sfu in sfus {
        runs.push(run(sfu, &opts, &camera, &rt));
    }
    if runs.len() > 1 {
        print_comparison(&runs);
    }
    println!("load average at end: {}; speed reference {:.0} ms", load_average(), speed_reference_ms());
    rt.shutdown_timeout(Duration::from_secs(1));
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sfu {
    V1,
    V2,
}

impl Sfu {
    pub fn name(self) -> &'static str {
        match self {
            Sfu::V1 => "v1 (peer connection per viewer)",
            Sfu::V2 => "v2 (one port, sharded, sendmmsg)",
        }
    }
}

struct Options {
    levels: Vec<usize>,
    window: Duration,
    settle: Duration,
    with_annotated: bool,
    labelled: usize,
    pin: bool,
}

/// One SFU's measured levels.
pub struct Run {
    pub sfu: Sfu,
    pub rows: Vec<Row>,
    pub annotated: Option<Row>,
    /// Time to first frame over every raw viewer of the ramp: p50, p95, ms.
    pub ttff_ms: (Option<f64>, Option<f64>),
}

/// Pins every thread of `pid` to `cpus` (a `taskset` list such as `0` or `1-3`).
fn set_affinity(pid: u32, cpus: &str) {
    let ok = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "taskset -a -p -c {cpus} {pid} failed (util-linux)");
}

fn run(sfu: Sfu, opts: &Options, camera: &RtspServer, rt: &tokio::runtime::Runtime) -> Run {
    let config = common::scratch_dir("fanout").join(format!("fanout-{sfu:?}.toml"));
    let listen = match sfu {
        Sfu::V1 => "udp_listen = \"off\"\n",
        Sfu::V2 => "udp_listen = \"127.0.0.1:18189\"\n",
    };
    // Every viewer comes from 127.0.0.1: limits above the largest level.
    let limits = "[limits]\nwhep_sessions = 5000\nwhep_sessions_per_camera = 5000\nwhep_sessions_per_ip = 5000\n";
    std::fs::write(&config, format!("[webrtc]\nudp_ips = [\"127.0.0.1\"]\n{listen}{limits}")).unwrap();
    let app = Infercast::start(&["--config", config.to_str().unwrap(), &format!("{CAMERA}={}", camera.url("/cam"))]);
    if opts.pin {
        set_affinity(app.pid(), "0");
    }
    app.wait_for(&format!("/api/cameras/{CAMERA}"), Duration::from_secs(30), |c| c["state"] == "streaming");
    println!("\n# SFU {}", sfu.name());
    let tck = clock_ticks_per_second();
    let procs = Procs { app: &app, camera_pid: camera.pid() };
    // One window; again (at most twice) while other processes (a compiler) take over a quarter core.
    let timed = |label: &str, track: &str, viewers: &[Viewer], failed: usize| {
        let mut attempt = 0;
        loop {
            let a = procs.snapshot(viewers);
            std::thread::sleep(opts.window);
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
    let before_ramp = procs.snapshot(&[]).metrics;
    let mut rows = vec![baseline];
    let baseline_pct = rows[0].server_pct;

    let mut viewers = Vec::new();
    let mut failed = 0;
    for &n in &opts.levels {
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
        std::thread::sleep(opts.settle);
        let row = timed("raw", "raw", &viewers, failed);
        println!(
            "  server {:.1} %, loss {:.3} %, fps min {:.1}, send p50 / p95 / p99 {} / {} / {} ms",
            row.server_pct,
            row.loss_pct,
            row.fps_min,
            ms(row.p50_ms),
            ms(row.p95_ms),
            ms(row.p99_ms)
        );
        let give_up = row.failed > 0 || row.loss_pct > GIVE_UP_LOSS_PCT;
        rows.push(row);
        if give_up {
            println!("  stopping the ramp here: the machine no longer keeps up");
            break;
        }
    }
    let after_ramp = procs.snapshot(&[]).metrics;
    let ttff = |q| {
        let (name, l) = ("infercast_webrtc_time_to_first_frame_seconds", [("track", "raw")]);
        quantile(&buckets(&before_ramp, name, &l), &buckets(&after_ramp, name, &l), q).map(|s| s * 1e3)
    };
    let ttff_ms = (ttff(0.5), ttff(0.95));
    rt.block_on(close(std::mem::take(&mut viewers), &app.base));

    let mut annotated = None;
    if opts.with_annotated {
        std::thread::sleep(Duration::from_secs(2));
        let mut one = Vec::new();
        let failures = rt.block_on(ramp(&mut one, 1, &app.base, "annotated"));
        let receiving = rt.block_on(all_receiving(&one, Duration::from_secs(15)));
        if failures.is_empty() && receiving {
            std::thread::sleep(opts.settle.max(Duration::from_secs(3)));
            annotated = Some(timed("annotated", "annotated", &one, 0));
        } else {
            println!("annotated viewer failed: {failures:?}, receiving {receiving}");
        }
        rt.block_on(close(one, &app.base));
    }

    if opts.labelled > 0 && sfu == Sfu::V2 {
        labelled_against_burned_in(opts.labelled, &app, rt, &timed, baseline_pct);
    }

    println!("\n## Fan-out results, SFU {} (raw track, 720p25; row 0 = baseline with no viewer)", sfu.name());
    let mut all: Vec<&Row> = rows.iter().collect();
    all.extend(annotated.as_ref());
    print_table(&all, baseline_pct);
    print_details(&all, &rows[0]);
    print_summary(&rows, baseline_pct, annotated.as_ref());
    println!(
        "Time to first frame (WHEP POST -> first keyframe packet sent), raw viewers of the ramp: p50 / p95 {} / {} ms",
        ms(ttff_ms.0),
        ms(ttff_ms.1)
    );
    drop(app);
    Run { sfu, rows, annotated, ttff_ms }
}

/// Measures one window: (label, track, viewers, failed connects) → row.
type Timed<'a> = dyn Fn(&str, &str, &[Viewer], usize) -> Row + 'a;

/// `n` labelled viewers (raw + `labels` channel), then `n` burned-in ones
/// (annotated track): the server's CPU for each, with the labels received
/// and the annotated frames encoded meanwhile.
fn labelled_against_burned_in(
    n: usize,
    app: &Infercast,
    rt: &tokio::runtime::Runtime,
    timed: &Timed<'_>,
    baseline_pct: f64,
) {
    let encoded = || app.metric(&format!("infercast_frames_encoded_total{{camera=\"{CAMERA}\"}}"));
    let mut results = Vec::new();
    for (label, track, labels) in [("labelled", "raw", true), ("burned-in", "annotated", false)] {
        // The annotated encoder of an earlier phase stops after its linger (default 2 s).
        std::thread::sleep(Duration::from_secs(3));
        let mut viewers = Vec::new();
        let failures = rt.block_on(ramp_with(&mut viewers, n, &app.base, track, labels));
        let receiving = rt.block_on(all_receiving(&viewers, Duration::from_secs(15)));
        if !failures.is_empty() || !receiving {
            println!("{label} viewers failed: {failures:?}, receiving {receiving}");
            rt.block_on(close(viewers, &app.base));
            return;
        }
        std::thread::sleep(Duration::from_secs(3));
        let labels_now = || viewers.iter().map(|v| v.inner.labels().len()).sum::<usize>();
        let (t, encoded_before, labels_before) = (Instant::now(), encoded(), labels_now());
        let row = timed(label, track, &viewers, 0);
        let secs = t.elapsed().as_secs_f64();
        let labels_per_s = (labels_now() - labels_before) as f64 / secs / n as f64;
        results.push((label, row.server_pct, row.fps_min, labels_per_s, (encoded() - encoded_before) / secs));
        rt.block_on(close(viewers, &app.base));
    }
    println!("\n## Labelled (raw + labels data channel) against burned-in (annotated track), {n} viewers each, 720p25");
    println!(
        "| view | server, % of a core | above the 0-viewer baseline | fps min | labels/s per viewer | annotated frames encoded/s |"
    );
    println!("|---|---|---|---|---|---|");
    for (label, pct, fps, labels, enc) in results {
        println!("| {label} | {pct:.1} | {:.1} | {fps:.1} | {labels:.1} | {enc:.1} |", pct - baseline_pct);
    }
}
