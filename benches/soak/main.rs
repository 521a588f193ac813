//! Soak test: the real `infercast` binary with 4 cameras from the real RTSP test
//! server (one of them flapping every 60 s: killed and restarted on the same port,
//! or frozen with SIGSTOP and thawed) and 20 WHEP viewers (webrtc 0.21 peers on raw
//! and annotated tracks, each staying a random time, then leaving for a new one),
//! for N minutes. Prints one line a minute (RSS, open fds, tokio tasks, threads, UDP
//! sockets, camera states, viewers), then the drift from the warm-up minute to the
//! end and a verdict: RSS and fds within ±5 %, no camera lost. Exit 1 on FAIL.
//!
//! Run through `scripts/soak [--minutes N] [--warmup-minutes W]`, not `cargo bench`
//! (which this skips: 30 minutes is not a benchmark).

#![allow(dead_code)]

mod cameras;
#[allow(clippy::unwrap_used)] // shared test helpers: a failed unwrap there is a failed run
#[path = "../../tests/common/mod.rs"]
mod common;
mod probe;
mod report;
mod viewers;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use common::rtsp::RtspServer;
use common::service::Infercast;

/// How long viewers stay after the last minute's reading.
const VIEWERS_LINGER: Duration = Duration::from_secs(10);

/// The soak's options (`scripts/soak --help`).
#[derive(Parser, Debug, Clone)]
#[command(
    name = "soak",
    bin_name = "scripts/soak",
    about = "infercast soak: 4 cameras (one flapping), 20 viewers joining and leaving"
)]
pub struct Args {
    /// How long to run, minutes (1..=1440).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=1440))]
    pub minutes: u64,
    /// Drift is measured from the end of this minute to the end of the run.
    #[arg(long, default_value_t = 5)]
    pub warmup_minutes: u64,
    /// Cameras, the last one flapping (2..=8).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(2..=8))]
    pub cameras: u64,
    /// Concurrent WHEP viewers (0..=100).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=100))]
    pub viewers: u64,
    /// Seconds between two flaps of the flapping camera (10..=3600).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(10..=3600))]
    pub flap_every_s: u64,
    /// A viewer stays between these many seconds (at least 5, at most 3600)...
    #[arg(long, default_value_t = 20)]
    pub stay_min_s: u64,
    /// ... and these many.
    #[arg(long, default_value_t = 90)]
    pub stay_max_s: u64,
    /// The clip every camera replays (relative to the repository root).
    #[arg(long, default_value = common::rtsp::CLIP_640X272)]
    pub clip: String,
    /// Where infercast's log is written.
    #[arg(long, default_value = "target/soak/infercast.log")]
    pub log: String,
    /// Allowed drift of RSS and open fds, % (the target).
    #[arg(long, default_value_t = 5.0)]
    pub max_drift_pct: f64,
}

impl Args {
    fn check(&mut self) -> Result<(), String> {
        if self.warmup_minutes >= self.minutes {
            return Err(format!(
                "--warmup-minutes ({}) must be below --minutes ({})",
                self.warmup_minutes, self.minutes
            ));
        }
        self.stay_min_s = self.stay_min_s.clamp(5, 3600);
        self.stay_max_s = self.stay_max_s.clamp(self.stay_min_s, 3600);
        Ok(())
    }
}

fn main() -> ExitCode {
    // `cargo bench` runs every bench target with `--bench`: a soak is not one of them.
    if std::env::args().any(|a| a == "--bench") {
        println!("soak: skipped under `cargo bench`; run scripts/soak");
        return ExitCode::SUCCESS;
    }
    let mut args = Args::parse();
    if let Err(e) = args.check() {
        eprintln!("soak: {e}");
        return ExitCode::from(2);
    }
    if let Some(code) = probe::reexec_in_netns() {
        return code;
    }
    run(&args)
}

fn run(args: &Args) -> ExitCode {
    let names: Vec<String> = (1..args.cameras).map(|i| format!("cam{i}")).chain(["flap".to_owned()]).collect();
    let stable: Vec<&str> = names[..names.len() - 1].iter().map(String::as_str).collect();
    let mounts: Vec<(String, &str)> = stable.iter().map(|n| (format!("/{n}"), args.clip.as_str())).collect();
    let mount_refs: Vec<(&str, &str)> = mounts.iter().map(|(m, c)| (m.as_str(), *c)).collect();
    let steady = RtspServer::start(&mount_refs, None);
    let flapping = RtspServer::start(&[("/flap", args.clip.as_str())], None);

    let config = common::scratch_dir("soak").join("soak.toml");
    std::fs::write(&config, "[webrtc]\nudp_ips = [\"127.0.0.1\"]\n").expect("scratch dir is writable");
    let mut cli = vec!["--config".to_owned(), config.to_string_lossy().into_owned()];
    cli.extend(stable.iter().map(|n| format!("{n}={}", steady.url(&format!("/{n}")))));
    cli.push(format!("flap={}", flapping.url("/flap")));
    let cli_refs: Vec<&str> = cli.iter().map(String::as_str).collect();
    let mut app = Infercast::start(&cli_refs);
    let pid = app.pid();
    let base = app.base.clone();
    if !cameras::wait_all_streaming(&base, &names, Duration::from_secs(60)) {
        eprintln!("soak: cameras did not all reach streaming within 60 s; log:\n{}", app.log());
        return ExitCode::from(2);
    }
    println!(
        "soak: infercast pid {pid} on {base}; {} cameras ({}; `flap` flaps every {} s), {} viewers staying {}-{} s, \
         {} min (drift from minute {}); clip {}; {} cores, load {}",
        names.len(),
        names.join(", "),
        args.flap_every_s,
        args.viewers,
        args.stay_min_s,
        args.stay_max_s,
        args.minutes,
        args.warmup_minutes,
        args.clip,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        probe::load_average()
    );
    let idle_before = probe::sample(pid, &base);

    let stop = Arc::new(AtomicBool::new(false));
    let watch = cameras::Watcher::start(base.clone(), names.clone(), "flap".to_owned(), stop.clone());
    let flapper = cameras::Flapper::start(flapping, Duration::from_secs(args.flap_every_s), stop.clone());
    let start = Instant::now();
    // Viewers leave a little after the last minute's reading, so that it is taken with them.
    let end = start + Duration::from_secs(args.minutes * 60) + VIEWERS_LINGER;
    let pool = viewers::Pool::start(args, base.clone(), names.clone(), end);

    println!("{}", report::HEADER);
    let mut rows = Vec::new();
    let mut cpu = probe::CpuMeter::new(pid);
    let mut packets = 0;
    for minute in 1..=args.minutes {
        let at = start + Duration::from_secs(minute * 60);
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        let viewers = pool.stats();
        let pkt_per_s = (viewers.packets - packets) / 60;
        packets = viewers.packets;
        let row = report::Row { minute, sample: probe::sample(pid, &base), viewers, pkt_per_s, cpu_pct: cpu.pct() };
        println!("{}", row.line());
        rows.push(row);
    }

    let pool_summary = pool.finish(VIEWERS_LINGER + Duration::from_secs(30));
    stop.store(true, Ordering::SeqCst);
    let (flapping, flaps) = flapper.finish();
    let recovered = cameras::wait_all_streaming(&base, &names, Duration::from_secs(30));
    let cams = watch.finish();
    std::thread::sleep(Duration::from_secs(3)); // sessions and ports released after the last DELETE
    let idle_after = probe::sample(pid, &base);
    let log = report::strip_ansi(&app.log());
    let shutdown = app.terminate();
    drop(flapping);
    drop(steady);
    if let Some(dir) = std::path::Path::new(&args.log).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(&args.log, &log) {
        eprintln!("soak: cannot write {}: {e}", args.log);
    }
    let verdict = report::Verdict {
        args,
        rows: &rows,
        cams: &cams,
        flaps,
        recovered,
        idle_before: &idle_before,
        idle_after: &idle_after,
        pool: &pool_summary,
        log: &log,
        shutdown,
    };
    if verdict.print() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
