//! What the soak reads of the infercast process: RSS, threads, open fds and UDP
//! sockets from `/proc`, tokio tasks from `/metrics`, camera states and viewers
//! from `/api/cameras`; CPU over an interval; and the re-run inside a network
//! namespace of its own (loopback only).

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use super::common::process;

/// Set in the re-run child, so it never re-runs itself again.
const MARKER: &str = "INFERCAST_SOAK_NETNS";

/// One reading of the process.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub rss_kb: u64,
    pub threads: u64,
    pub fds: u64,
    pub udp_sockets: u64,
    /// `infercast_runtime_tasks_alive` (None if `/metrics` did not answer).
    pub tasks: Option<u64>,
    /// `(camera, state)` in `/api/cameras` order.
    pub cameras: Vec<(String, String)>,
    /// Sessions the server counts, raw + annotated, over all cameras.
    pub server_viewers: u64,
}

/// `GET {base}{path}` as text; None on any failure (the soak keeps going and says so).
pub fn get_text(base: &str, path: &str) -> Option<String> {
    let agent = super::common::service::agent_with_timeout(Duration::from_secs(10));
    let mut resp = agent.get(format!("{base}{path}")).call().ok()?;
    if resp.status() != 200 {
        return None;
    }
    resp.body_mut().read_to_string().ok()
}

/// `/api/cameras` as `(name, state, viewers)`.
pub fn cameras(base: &str) -> Option<Vec<(String, String, u64)>> {
    let v: serde_json::Value = serde_json::from_str(&get_text(base, "/api/cameras")?).ok()?;
    let list = v.as_array().or_else(|| v["cameras"].as_array())?;
    Some(
        list.iter()
            .map(|c| {
                let viewers = c["viewers"].as_object().map_or(0, |m| m.values().filter_map(|n| n.as_u64()).sum());
                (c["name"].as_str().unwrap_or("?").to_owned(), c["state"].as_str().unwrap_or("?").to_owned(), viewers)
            })
            .collect(),
    )
}

fn tasks(base: &str) -> Option<u64> {
    let text = get_text(base, "/metrics")?;
    text.lines()
        .find_map(|l| l.strip_prefix("infercast_runtime_tasks_alive ")?.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

pub fn sample(pid: u32, base: &str) -> Sample {
    let (fds, udp_sockets) = process::fd_counts(pid).unwrap_or_default();
    let cams = cameras(base).unwrap_or_default();
    Sample {
        rss_kb: process::status_value(pid, "VmRSS").unwrap_or(0),
        threads: process::status_value(pid, "Threads").unwrap_or(0),
        fds: fds as u64,
        udp_sockets: udp_sockets as u64,
        tasks: tasks(base),
        server_viewers: cams.iter().map(|c| c.2).sum(),
        cameras: cams.into_iter().map(|(n, s, _)| (n, s)).collect(),
    }
}

/// CPU of one process, % of one core, between two calls.
pub struct CpuMeter {
    pid: u32,
    ticks: u64,
    at: Instant,
    tck: f64,
}

fn ticks(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`: state is field 3; utime, stime are fields 14 and 15.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse().ok()).collect();
    f.iter().sum()
}

impl CpuMeter {
    pub fn new(pid: u32) -> CpuMeter {
        let tck = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0);
        CpuMeter { pid, ticks: ticks(pid), at: Instant::now(), tck }
    }

    pub fn pct(&mut self) -> f64 {
        let (t, now) = (ticks(self.pid), Instant::now());
        let pct = (t.saturating_sub(self.ticks)) as f64 / self.tck / (now - self.at).as_secs_f64().max(1e-3) * 100.0;
        (self.ticks, self.at) = (t, now);
        pct
    }
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Outside a loopback-only namespace, runs this program again (same arguments) under
/// `unshare --net` with `lo` up and returns its exit code; None when already inside one,
/// or when namespaces are not available (then the soak runs on the host's 127.0.0.1).
pub fn reexec_in_netns() -> Option<ExitCode> {
    if std::env::var_os(MARKER).is_some() || super::common::netns::only_loopback() {
        return None;
    }
    let exe = std::env::current_exe().ok()?;
    let probe = Command::new("unshare").args(["--net", "true"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("soak: no network namespace (unshare --net failed); running on the host's 127.0.0.1");
        return None;
    }
    let status = Command::new("unshare")
        .env(MARKER, "1")
        .args(["--net", "--", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
        .arg(&exe)
        .args(std::env::args_os().skip(1))
        .status();
    Some(match status {
        Ok(s) => ExitCode::from(s.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(1)),
        Err(e) => {
            eprintln!("soak: unshare: {e}");
            ExitCode::from(2)
        }
    })
}
