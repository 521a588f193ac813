//! Cluster benchmark (docs/benchmarks.md, "Cluster"): on loopback, 3 clustered
//! `nats-server`s (JetStream, R3), then
//!
//! 1. label publishing through infercast's own publisher (`bus`) to an R3
//!    stream: publish → acknowledgement latency p50/p95 at 30 labels/s (6
//!    cameras × 5 labels/s), and the CPU it costs, from this process's CPU time
//!    at 1000 labels/s against the same loop without a bus, scaled to
//!    5 labels/s × N cameras;
//! 2. 6 RTSP cameras and 3 infercast nodes: `--kills` times, `kill -9` of the
//!    node holding the most cameras → time until each of its cameras streams
//!    on another node (p50/max), then its restart → time until it holds its
//!    rendezvous share again (p50/max).
//!
//! `cargo bench --bench cluster [-- --kills 10]` (every loop is bounded).

#![allow(dead_code)]
#![allow(clippy::unwrap_used)] // a benchmark run: a failed unwrap is a failed run

#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use common::cluster::{Cluster, NODES};
use infercast::bus::{Bus, NatsAuth, NatsConfig};
use infercast::infer::ClassScore;
use infercast::labels::{Label, LabelStore};

#[derive(Parser, Debug)]
#[command(name = "cluster", about = "infercast cluster benchmark: publish latency and CPU, failover, join")]
struct Args {
    /// Node kills (each followed by the node's return).
    #[arg(long, default_value_t = 10)]
    kills: usize,
    /// Seconds of each publishing run.
    #[arg(long, default_value_t = 10)]
    publish_seconds: u64,
    /// `cargo bench` passes `--bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// This process's CPU time (user + system) in seconds, from /proc/self/stat.
fn cpu_seconds(pid: Option<u32>) -> f64 {
    let path = pid.map_or("/proc/self/stat".to_owned(), |p| format!("/proc/{p}/stat"));
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let after = text.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields after the command: state is [0]; utime and stime are [11] and [12] (clock ticks, 100/s).
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn label(camera: &str, n: i64) -> Label {
    let top = |label: &str, class_id, score| ClassScore { label: Arc::from(label), class_id, score };
    Label {
        camera: camera.into(),
        label: Arc::from("mountain bike, all-terrain bike, off-roader"),
        class_id: 671,
        score: 0.62,
        top5: vec![
            top("mountain bike, all-terrain bike, off-roader", 671, 0.62),
            top("bicycle-built-for-two, tandem bicycle, tandem", 444, 0.2),
            top("moped", 665, 0.05),
            top("tricycle, trike, velocipede", 870, 0.03),
            top("unicycle, monocycle", 880, 0.02),
        ],
        frame_pts: n * 3600,
        captured_at: chrono::Utc::now(),
        latency_ms: 21.0,
    }
}

/// Pushes `rate` labels/s over `cameras` for `seconds` into a store (with a
/// bus if given); returns the labels pushed and the CPU seconds used.
fn push_labels(store: &LabelStore, rate: u64, cameras: usize, seconds: u64) -> (u64, f64) {
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let names: Vec<String> = (1..=cameras).map(|i| format!("bench{i}")).collect();
    let cpu0 = cpu_seconds(None);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(seconds) && n < rate * seconds {
        let due = start + interval * n as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        store.push(label(&names[(n as usize) % cameras], n as i64));
        n += 1;
    }
    (n, cpu_seconds(None) - cpu0)
}

/// A quantile of a Prometheus histogram, linearly interpolated in its bucket.
fn quantile(registry: &prometheus::Registry, name: &str, q: f64) -> Option<f64> {
    let family = registry.gather().into_iter().find(|f| f.name() == name)?;
    let h = family.get_metric().first()?.get_histogram().clone();
    let total = h.get_sample_count() as f64;
    let want = q * total;
    let mut lower = (0.0, 0.0);
    for b in h.get_bucket() {
        let (le, count) = (b.upper_bound(), b.cumulative_count() as f64);
        if count >= want {
            let span = (count - lower.1).max(1.0);
            return Some(lower.0 + (le - lower.0) * (want - lower.1) / span);
        }
        lower = (le, count);
    }
    None
}

fn wait_acked(registry: &prometheus::Registry, want: u64, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        let acked = registry
            .gather()
            .into_iter()
            .find(|f| f.name() == "nats_acked_total")
            .and_then(|f| f.get_metric().first().map(|m| m.get_counter().get_value()))
            .unwrap_or(0.0);
        if acked as u64 >= want {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn publishing(cluster: &Cluster, seconds: u64) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let _guard = rt.enter();
    let config = NatsConfig {
        urls: cluster.nats.iter().map(|s| format!("nats://127.0.0.1:{}", s.port)).collect(),
        replicas: 3,
        stream: "BENCH".into(),
        ..NatsConfig::default()
    };
    // Latency at a camera-like rate: 6 cameras × 5 labels/s.
    let registry = prometheus::Registry::new();
    let cancel = tokio_util::sync::CancellationToken::new();
    let (bus, task) = Bus::start(config.clone(), NatsAuth::None, &registry, cancel.clone());
    let store = LabelStore::with_bus(100, Some(bus));
    // Warm-up: connect, create the stream.
    store.push(label("warmup", 0));
    assert!(wait_acked(&registry, 1, Duration::from_secs(30)), "the R3 stream took no label within 30 s");
    let (n, _) = push_labels(&store, 30, 6, seconds);
    assert!(wait_acked(&registry, n + 1, Duration::from_secs(10)), "not every label acknowledged");
    let p = |q| quantile(&registry, "nats_publish_latency_seconds", q).map_or(f64::NAN, |s| s * 1000.0);
    println!(
        "publish latency to the R3 stream at 30 labels/s ({n} labels): p50 {:.2} ms, p95 {:.2} ms",
        p(0.5),
        p(0.95)
    );

    // CPU: 1000 labels/s with the bus against the same loop without one.
    let rate = 1000;
    let nats_cpu0: f64 = cluster.nats.iter().map(|s| cpu_seconds(s.pid())).sum();
    let (with, cpu_with) = push_labels(&store, rate, 50, seconds);
    assert!(wait_acked(&registry, n + 1 + with, Duration::from_secs(20)), "not every label acknowledged");
    let nats_cpu: f64 = cluster.nats.iter().map(|s| cpu_seconds(s.pid())).sum::<f64>() - nats_cpu0;
    let plain = LabelStore::new(100);
    let (without, cpu_without) = push_labels(&plain, rate, 50, seconds);
    let per_label_us = ((cpu_with / with as f64) - (cpu_without / without as f64)) * 1e6;
    println!(
        "publishing CPU: {:.1} µs per label ({with} labels at {rate}/s: {cpu_with:.2} s CPU with the bus, \
         {cpu_without:.2} s without); the 3 nats-servers used {nats_cpu:.2} s",
        per_label_us
    );
    for cameras in [1, 10, 50, 100] {
        println!(
            "  at 5 labels/s × {cameras} cameras: {:.3} % of one core",
            per_label_us * 5.0 * cameras as f64 / 1e6 * 100.0
        );
    }
    cancel.cancel();
    let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(2), task).await });
}

fn percentile(values: &mut [Duration], q: f64) -> Duration {
    values.sort();
    values[((values.len() as f64 - 1.0) * q).round() as usize]
}

fn failover_and_join(cluster: &mut Cluster, kills: usize) {
    for i in 0..NODES.len() {
        cluster.start_node(i);
    }
    let (owners, took) = cluster.wait_settled(Duration::from_secs(90), "start-up");
    println!("3 nodes, {} cameras settled in {took:.1?}", owners.len());
    let (mut failovers, mut joins) = (Vec::new(), Vec::new());
    for k in 0..kills {
        let (owners, _) = cluster.wait_settled(Duration::from_secs(60), "before a kill");
        let victim = (0..3).max_by_key(|&i| owners.values().filter(|o| *o == NODES[i]).count()).unwrap();
        let moved: Vec<String> = owners.iter().filter(|(_, o)| *o == NODES[victim]).map(|(c, _)| c.clone()).collect();
        let back = cluster.kill_and_time_failover(victim, &moved, Duration::from_secs(30));
        let worst = back.values().max().copied().unwrap_or(Duration::from_secs(30));
        failovers.push(worst);
        let t1 = Instant::now();
        cluster.start_node(victim);
        let started = t1.elapsed();
        let (after, _) = cluster.wait_settled(Duration::from_secs(60), "after the return");
        let mine = |o: &BTreeMap<String, String>| o.values().filter(|n| *n == NODES[victim]).count();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut after = after;
        while mine(&after) < moved.len() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            if let Some(o) = cluster.settled() {
                after = o;
            }
        }
        let join = t1.elapsed();
        joins.push(join);
        println!(
            "kill {}: {} ({} cameras) failover {worst:.2?}; back: listening after {started:.2?}, its {} cameras after {join:.2?}",
            k + 1,
            NODES[victim],
            moved.len(),
            mine(&after)
        );
    }
    println!(
        "SUMMARY failover (kill -9 → streaming elsewhere): p50 {:.2?}, max {:.2?} over {kills} kills; \
         join (process start → holds its share): p50 {:.2?}, max {:.2?}",
        percentile(&mut failovers, 0.5),
        percentile(&mut failovers, 1.0),
        percentile(&mut joins, 0.5),
        percentile(&mut joins, 1.0)
    );
}

fn main() {
    let args = Args::parse();
    let _ = args.bench;
    let mut cluster = Cluster::new("bench-cluster", 6, "classify_fps = 1");
    publishing(&cluster, args.publish_seconds);
    failover_and_join(&mut cluster, args.kills.max(1));
}
