//! What one window measures: process and thread CPU from `/proc`, the
//! server's Prometheus counters and histogram quantiles, viewer counts.

use super::*;
pub use common::metrics::{Samples, buckets, metric, parse_metrics, quantile, udp_rcvbuf_errors};

/// `comm`, `utime` and `stime` (clock ticks) of a process or thread, from its `stat` file.
pub fn stat_fields(path: &str) -> Option<(String, u64, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let (open, close) = (text.find('(')?, text.rfind(')')?);
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let (utime, stime) = (fields.get(11)?.parse::<u64>().ok()?, fields.get(12)?.parse::<u64>().ok()?);
    Some((text[open + 1..close].to_owned(), utime, stime))
}

/// `utime + stime` of a process or thread, in clock ticks.
pub fn stat_ticks(path: &str) -> Option<(String, u64)> {
    stat_fields(path).map(|(comm, u, s)| (comm, u + s))
}

/// Milliseconds for a fixed single-threaded integer loop: a yardstick for how fast this
/// (virtual) machine runs right now, to compare runs (94 ms on the 2-vCPU EPYC VM of docs/benchmarks.md).
pub fn speed_reference_ms() -> f64 {
    let t = Instant::now();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..50_000_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    std::hint::black_box(x);
    t.elapsed().as_secs_f64() * 1e3
}

/// The load averages (whole machine).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Per thread name (`comm`), ticks summed over the process's threads.
pub fn thread_ticks(pid: u32) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        if let Some((comm, t)) = stat_ticks(&format!("{}/stat", entry.path().display())) {
            *out.entry(comm).or_insert(0) += t;
        }
    }
    out
}

/// Whole-machine ticks (all namespaces), from `/proc/stat` and the `ksoftirqd` threads.
#[derive(Clone, Copy, Default)]
pub struct Machine {
    pub busy: u64,
    pub total: u64,
    /// Interrupts and softirqs (loopback delivery), counted apart or in `ksoftirqd`.
    pub softirq: u64,
    /// Taken by the hypervisor.
    pub steal: u64,
}

pub fn machine_ticks() -> Machine {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> =
        text.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let field = |i: usize| v.get(i).copied().unwrap_or(0);
    let total: u64 = v.iter().take(8).sum();
    let ksoftirqd: u64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|e| stat_ticks(&format!("{}/stat", e.path().display())))
        .filter(|(comm, _)| comm.starts_with("ksoftirqd"))
        .map(|(_, t)| t)
        .sum();
    Machine { busy: total - field(3) - field(4), total, softirq: field(5) + field(6) + ksoftirqd, steal: field(7) }
}

pub fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

pub struct Snapshot {
    pub at: Instant,
    pub server: u64,
    /// Of which in the kernel (`stime`).
    pub server_sys: u64,
    pub server_threads: HashMap<String, u64>,
    pub client: u64,
    pub camera_server: u64,
    pub machine: Machine,
    pub udp_drops: u64,
    pub metrics: Samples,
    pub viewers: Vec<Counts>,
}

pub struct Procs<'a> {
    pub app: &'a Infercast,
    pub camera_pid: u32,
}

impl Procs<'_> {
    pub fn snapshot(&self, viewers: &[Viewer]) -> Snapshot {
        let ticks = |pid: String| stat_ticks(&format!("/proc/{pid}/stat")).map_or(0, |(_, t)| t);
        Snapshot {
            at: Instant::now(),
            server: ticks(self.app.pid().to_string()),
            server_sys: stat_fields(&format!("/proc/{}/stat", self.app.pid())).map_or(0, |(_, _, s)| s),
            server_threads: thread_ticks(self.app.pid()),
            client: ticks("self".into()),
            camera_server: ticks(self.camera_pid.to_string()),
            machine: machine_ticks(),
            udp_drops: udp_rcvbuf_errors(),
            metrics: parse_metrics(&String::from_utf8_lossy(&self.app.get("/metrics").body)),
            viewers: viewers.iter().map(Viewer::counts).collect(),
        }
    }
}

/// One measured level.
pub struct Row {
    pub label: String,
    pub viewers: usize,
    pub failed: usize,
    pub server_pct: f64,
    /// Of `server_pct`, in the kernel (system time).
    pub server_sys_pct: f64,
    pub client_pct: f64,
    pub camera_server_pct: f64,
    pub machine_pct: f64,
    /// Interrupt and softirq time (all cores), % of a core.
    pub softirq_pct: f64,
    /// Hypervisor steal time (all cores), % of a core.
    pub steal_pct: f64,
    /// Loss over all viewers, % of expected unique packets.
    pub loss_pct: f64,
    pub fps_min: f64,
    pub fps_mean: f64,
    pub source_fps: f64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub encoded_p50_ms: Option<f64>,
    pub encoded_p95_ms: Option<f64>,
    pub packets_per_s: f64,
    pub nacks: f64,
    pub plis: f64,
    pub duplicates: u64,
    pub udp_drops: u64,
    /// Top server threads by CPU: (name, % of a core).
    pub threads: Vec<(String, f64)>,
}

impl Row {
    /// Whole-machine CPU used by neither the server, the viewers nor the camera, % of a core.
    pub fn other_pct(&self) -> f64 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let ours = self.server_pct + self.client_pct + self.camera_server_pct + self.softirq_pct + self.steal_pct;
        (self.machine_pct * cores - ours).max(0.0)
    }

    pub fn full_rate(&self) -> bool {
        self.failed == 0 && self.loss_pct < MAX_LOSS_PCT && (self.viewers == 0 || self.fps_min >= MIN_FPS)
    }
}

pub fn measure(label: &str, track: &str, a: &Snapshot, b: &Snapshot, failed: usize, tck: f64) -> Row {
    let secs = (b.at - a.at).as_secs_f64();
    let pct = |t0: u64, t1: u64| (t1.saturating_sub(t0)) as f64 / tck / secs * 100.0;
    let (mut expected, mut received, mut fps, mut duplicates) = (0i64, 0i64, Vec::new(), 0);
    for (x, y) in a.viewers.iter().zip(&b.viewers) {
        expected += y.highest - x.highest;
        received += (y.unique - x.unique) as i64;
        duplicates += y.duplicates - x.duplicates;
        fps.push((y.frames - x.frames) as f64 / secs);
    }
    let cam = [("camera", CAMERA), ("track", track)];
    let delta =
        |name: &str, labels: &[(&str, &str)]| metric(&b.metrics, name, labels) - metric(&a.metrics, name, labels);
    let send = |q| {
        let name = "infercast_webrtc_send_latency_seconds";
        quantile(&buckets(&a.metrics, name, &[("track", track)]), &buckets(&b.metrics, name, &[("track", track)]), q)
            .map(|s| s * 1e3)
    };
    let encoded = |q| {
        let (name, l) = ("infercast_capture_to_encoded_seconds", [("camera", CAMERA)]);
        quantile(&buckets(&a.metrics, name, &l), &buckets(&b.metrics, name, &l), q).map(|s| s * 1e3)
    };
    let mut threads: Vec<(String, f64)> = b
        .server_threads
        .iter()
        .map(|(name, t1)| (name.clone(), pct(a.server_threads.get(name).copied().unwrap_or(*t1), *t1)))
        .filter(|(_, p)| *p >= 0.5)
        .collect();
    threads.sort_by(|x, y| y.1.total_cmp(&x.1));
    let (busy, total) = (b.machine.busy - a.machine.busy, (b.machine.total - a.machine.total).max(1));
    Row {
        label: label.to_owned(),
        viewers: b.viewers.len(),
        failed,
        server_pct: pct(a.server, b.server),
        server_sys_pct: pct(a.server_sys, b.server_sys),
        client_pct: pct(a.client, b.client),
        camera_server_pct: pct(a.camera_server, b.camera_server),
        machine_pct: busy as f64 / total as f64 * 100.0,
        softirq_pct: pct(a.machine.softirq, b.machine.softirq),
        steal_pct: pct(a.machine.steal, b.machine.steal),
        loss_pct: if expected > 0 { (expected - received).max(0) as f64 / expected as f64 * 100.0 } else { 0.0 },
        fps_min: if fps.is_empty() { 0.0 } else { fps.iter().copied().fold(f64::INFINITY, f64::min) },
        fps_mean: if fps.is_empty() { 0.0 } else { fps.iter().sum::<f64>() / fps.len() as f64 },
        source_fps: delta("infercast_frames_received_total", &[("camera", CAMERA)]) / secs,
        p50_ms: send(0.5),
        p95_ms: send(0.95),
        p99_ms: send(0.99),
        encoded_p50_ms: encoded(0.5),
        encoded_p95_ms: encoded(0.95),
        packets_per_s: delta("infercast_webrtc_packets_sent_total", &cam) / secs,
        nacks: delta("infercast_webrtc_nacks_total", &cam),
        plis: delta("infercast_webrtc_plis_total", &cam),
        duplicates,
        udp_drops: b.udp_drops - a.udp_drops,
        threads,
    }
}
