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

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::rtsp::{self, RtspServer};
use common::service::Infercast;
use common::whep_client;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_H264;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::sync::watch;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceGatheringState, RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
    register_default_interceptors,
};

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

// ---------------------------------------------------------------- viewer

/// Recent extended sequence numbers, to count each packet once (NACK resends).
const RING: usize = 4096;

/// What one viewer received so far (unique packets only, except `duplicates`).
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    unique: u64,
    duplicates: u64,
    /// Unique packets with the marker bit: one per access unit.
    frames: u64,
    /// Highest extended sequence number (0 before the first packet).
    highest: i64,
}

struct Receiver {
    counts: Counts,
    ring: Vec<i64>,
}

impl Receiver {
    fn new() -> Receiver {
        Receiver { counts: Counts::default(), ring: vec![-1; RING] }
    }

    fn on_packet(&mut self, seq: u16, marker: bool) {
        let c = &mut self.counts;
        let ext = if c.unique == 0 {
            (1i64 << 32) + i64::from(seq)
        } else {
            c.highest + i64::from(seq.wrapping_sub(c.highest as u16) as i16)
        };
        let slot = ext.rem_euclid(RING as i64) as usize;
        if self.ring[slot] == ext {
            c.duplicates += 1;
            return;
        }
        self.ring[slot] = ext;
        c.unique += 1;
        c.frames += u64::from(marker);
        c.highest = c.highest.max(ext);
    }
}

struct Events {
    gathered: watch::Sender<bool>,
    state: watch::Sender<RTCPeerConnectionState>,
    receiver: Arc<Mutex<Receiver>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Events {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.send(true);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.state.send(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let receiver = self.receiver.clone();
        tokio::spawn(async move {
            while let Some(evt) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(p) = evt {
                    receiver.lock().unwrap().on_packet(p.header.sequence_number, p.header.marker);
                }
            }
        });
    }
}

/// A light WHEP viewer: counts packets instead of keeping them (unlike
/// `tests/common/whep_client.rs`), so hundreds can run for minutes.
struct Viewer {
    pc: Arc<dyn PeerConnection>,
    state: watch::Receiver<RTCPeerConnectionState>,
    receiver: Arc<Mutex<Receiver>>,
    /// The WHEP session resource (for DELETE).
    location: String,
}

fn h264(pt: u8, profile_level_id: &str) -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: MIME_TYPE_H264.to_owned(),
            clock_rate: 90000,
            channels: 0,
            sdp_fmtp_line: format!(
                "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id={profile_level_id}"
            ),
            rtcp_feedback: vec![],
        },
        payload_type: pt,
    }
}

impl Viewer {
    /// Offers recvonly H.264 (like a browser), POSTs to `base` + `path`, applies the answer.
    async fn connect(base: String, path: String) -> Result<Viewer, String> {
        let mut media_engine = MediaEngine::default();
        for (pt, plid) in [(102, "42001f"), (106, "42e01f"), (116, "4d001f"), (112, "64001f")] {
            media_engine.register_codec(h264(pt, plid), RtpCodecKind::Video).map_err(|e| e.to_string())?;
        }
        let registry = register_default_interceptors(Registry::new(), &mut media_engine).map_err(|e| e.to_string())?;
        let settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
            .with_network_types(vec![rtc::ice::network_type::NetworkType::Udp4])
            .with_include_loopback_candidate(true)
            .build();
        let (gathered, mut gathered_rx) = watch::channel(false);
        let (state, state_rx) = watch::channel(RTCPeerConnectionState::New);
        let receiver = Arc::new(Mutex::new(Receiver::new()));
        let events = Arc::new(Events { gathered, state, receiver: receiver.clone() });
        let pc = PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(media_engine)
            .with_setting_engine(settings)
            .with_interceptor_registry(registry)
            .with_handler(events)
            .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
            .build()
            .await
            .map_err(|e| e.to_string())?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let init = RTCRtpTransceiverInit { direction: RTCRtpTransceiverDirection::Recvonly, ..Default::default() };
        pc.add_transceiver_from_kind(RtpCodecKind::Video, Some(init)).await.map_err(|e| e.to_string())?;
        let offer = pc.create_offer(None).await.map_err(|e| e.to_string())?;
        pc.set_local_description(offer).await.map_err(|e| e.to_string())?;
        let _ = tokio::time::timeout(Duration::from_secs(5), gathered_rx.wait_for(|g| *g)).await;
        let offer_sdp = pc.local_description().await.ok_or("no local description")?.sdp;
        let reply = tokio::task::spawn_blocking(move || whep_client::post(&base, &path, "application/sdp", &offer_sdp))
            .await
            .map_err(|e| e.to_string())?;
        if reply.status != 201 {
            let _ = pc.close().await;
            return Err(format!("POST: {} {}", reply.status, reply.body));
        }
        let answer = RTCSessionDescription::answer(reply.body).map_err(|e| e.to_string())?;
        pc.set_remote_description(answer).await.map_err(|e| e.to_string())?;
        Ok(Viewer { pc, state: state_rx, receiver, location: reply.location.unwrap_or_default() })
    }

    async fn connected(&self, within: Duration) -> bool {
        let mut state = self.state.clone();
        let done = |s: &RTCPeerConnectionState| {
            matches!(
                s,
                RTCPeerConnectionState::Connected | RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
            )
        };
        matches!(tokio::time::timeout(within, state.wait_for(done)).await,
            Ok(Ok(s)) if *s == RTCPeerConnectionState::Connected)
    }

    fn counts(&self) -> Counts {
        self.receiver.lock().unwrap().counts
    }
}

/// Adds viewers of `track` until there are `n` (`CONNECT_BATCH` at a time); returns failures.
async fn ramp(viewers: &mut Vec<Viewer>, n: usize, base: &str, track: &str) -> Vec<String> {
    let mut failures = Vec::new();
    let mut attempts = 0;
    while viewers.len() < n && attempts < n + CONNECT_BATCH {
        let batch = CONNECT_BATCH.min(n - viewers.len());
        attempts += batch;
        let path = format!("/whep/{CAMERA}/{track}");
        let joined =
            futures::future::join_all((0..batch).map(|_| Viewer::connect(base.to_owned(), path.clone()))).await;
        for v in joined {
            match v {
                Ok(v) if v.connected(Duration::from_secs(20)).await => viewers.push(v),
                Ok(v) => {
                    failures.push("did not connect within 20 s".to_owned());
                    close(vec![v], base).await;
                }
                Err(e) => failures.push(e),
            }
        }
    }
    failures
}

/// Ends the sessions (WHEP DELETE, `CONNECT_BATCH` at a time) and closes the peer connections.
async fn close(viewers: Vec<Viewer>, base: &str) {
    for chunk in viewers.chunks(CONNECT_BATCH) {
        let deletes = chunk.iter().map(|v| {
            let (base, location) = (base.to_owned(), v.location.clone());
            tokio::task::spawn_blocking(move || whep_client::delete(&base, &location))
        });
        futures::future::join_all(deletes).await;
        futures::future::join_all(chunk.iter().map(|v| v.pc.close())).await;
    }
}

/// Waits (bounded) until every viewer has received at least one frame.
async fn all_receiving(viewers: &[Viewer], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if viewers.iter().all(|v| v.counts().frames > 0) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

// ---------------------------------------------------------------- measuring

/// `comm`, `utime` and `stime` (clock ticks) of a process or thread, from its `stat` file.
fn stat_fields(path: &str) -> Option<(String, u64, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let (open, close) = (text.find('(')?, text.rfind(')')?);
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let (utime, stime) = (fields.get(11)?.parse::<u64>().ok()?, fields.get(12)?.parse::<u64>().ok()?);
    Some((text[open + 1..close].to_owned(), utime, stime))
}

/// `utime + stime` of a process or thread, in clock ticks.
fn stat_ticks(path: &str) -> Option<(String, u64)> {
    stat_fields(path).map(|(comm, u, s)| (comm, u + s))
}

/// Milliseconds for a fixed single-threaded integer loop: a yardstick for how fast this
/// (virtual) machine runs right now, to compare runs (94 ms on the 2-vCPU EPYC VM of docs/benchmarks.md).
fn speed_reference_ms() -> f64 {
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
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Per thread name (`comm`), ticks summed over the process's threads.
fn thread_ticks(pid: u32) -> HashMap<String, u64> {
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
struct Machine {
    busy: u64,
    total: u64,
    /// Interrupts and softirqs (loopback delivery), counted apart or in `ksoftirqd`.
    softirq: u64,
    /// Taken by the hypervisor.
    steal: u64,
}

fn machine_ticks() -> Machine {
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

/// `RcvbufErrors` of this namespace's UDP (`/proc/net/snmp`): datagrams the kernel dropped.
fn udp_rcvbuf_errors() -> u64 {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let udp: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp:")).collect();
    let [names, values] = udp[..] else { return 0 };
    let i = names.split_whitespace().position(|n| n == "RcvbufErrors");
    i.and_then(|i| values.split_whitespace().nth(i)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// `/metrics` samples: (name, labels, value).
type Samples = Vec<(String, Vec<(String, String)>, f64)>;

fn parse_metrics(text: &str) -> Samples {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let labels = rest.trim_end_matches('}').split(',').filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_owned(), v.trim_matches('"').to_owned()))
                });
                (name, labels.collect())
            }
            None => (series, Vec::new()),
        };
        out.push((name.to_owned(), labels, value));
    }
    out
}

fn has(labels: &[(String, String)], want: &[(&str, &str)]) -> bool {
    want.iter().all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
}

/// Sum of the samples named `name` carrying all of `labels`.
fn metric(s: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.iter().filter(|(n, l, _)| n == name && has(l, labels)).map(|(_, _, v)| v).sum()
}

/// Cumulative histogram buckets `(le, count)` sorted by `le`.
fn buckets(s: &Samples, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
    let bucket = format!("{name}_bucket");
    let mut b: Vec<(f64, f64)> = s
        .iter()
        .filter(|(n, l, _)| *n == bucket && has(l, labels))
        .filter_map(|(_, l, v)| {
            let le = &l.iter().find(|(k, _)| k == "le")?.1;
            Some((if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? }, *v))
        })
        .collect();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    b
}

/// Quantile `q` of the observations between two bucket snapshots, interpolated
/// within a bucket like Prometheus `histogram_quantile`; None without observations.
fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let delta: Vec<(f64, f64)> =
        after.iter().map(|(le, c)| (*le, c - before.iter().find(|(l, _)| l == le).map_or(0.0, |b| b.1))).collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (le, cum) in delta {
        if cum >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            return Some(lower + (le - lower) * (rank - below) / (cum - below).max(f64::MIN_POSITIVE));
        }
        (lower, below) = (le, cum);
    }
    Some(lower)
}

struct Snapshot {
    at: Instant,
    server: u64,
    /// Of which in the kernel (`stime`).
    server_sys: u64,
    server_threads: HashMap<String, u64>,
    client: u64,
    camera_server: u64,
    machine: Machine,
    udp_drops: u64,
    metrics: Samples,
    viewers: Vec<Counts>,
}

struct Procs<'a> {
    app: &'a Infercast,
    camera_pid: u32,
}

impl Procs<'_> {
    fn snapshot(&self, viewers: &[Viewer]) -> Snapshot {
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
struct Row {
    label: String,
    viewers: usize,
    failed: usize,
    server_pct: f64,
    /// Of `server_pct`, in the kernel (system time).
    server_sys_pct: f64,
    client_pct: f64,
    camera_server_pct: f64,
    machine_pct: f64,
    /// Interrupt and softirq time (all cores), % of a core.
    softirq_pct: f64,
    /// Hypervisor steal time (all cores), % of a core.
    steal_pct: f64,
    /// Loss over all viewers, % of expected unique packets.
    loss_pct: f64,
    fps_min: f64,
    fps_mean: f64,
    source_fps: f64,
    p50_ms: Option<f64>,
    p95_ms: Option<f64>,
    encoded_p50_ms: Option<f64>,
    encoded_p95_ms: Option<f64>,
    packets_per_s: f64,
    nacks: f64,
    plis: f64,
    duplicates: u64,
    udp_drops: u64,
    /// Top server threads by CPU: (name, % of a core).
    threads: Vec<(String, f64)>,
}

impl Row {
    /// Whole-machine CPU used by neither the server, the viewers nor the camera, % of a core.
    fn other_pct(&self) -> f64 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let ours = self.server_pct + self.client_pct + self.camera_server_pct + self.softirq_pct + self.steal_pct;
        (self.machine_pct * cores - ours).max(0.0)
    }

    fn full_rate(&self) -> bool {
        self.failed == 0 && self.loss_pct < MAX_LOSS_PCT && (self.viewers == 0 || self.fps_min >= MIN_FPS)
    }
}

fn measure(label: &str, track: &str, a: &Snapshot, b: &Snapshot, failed: usize, tck: f64) -> Row {
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

// ---------------------------------------------------------------- report

fn ms(v: Option<f64>) -> String {
    v.map_or("—".to_owned(), |v| format!("{v:.2}"))
}

fn print_table(rows: &[&Row], baseline_pct: f64) {
    println!(
        "\n| viewers | server CPU % | CPU / viewer % | loss % | fps / viewer min / mean | send p50 / p95 ms \
         | packets/s sent | NACKs | PLIs | viewers' CPU % | softirq % | other processes % |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let per_viewer = if r.viewers > 0 && r.label == "raw" {
            format!("{:.3}", (r.server_pct - baseline_pct) / r.viewers as f64)
        } else {
            "—".to_owned()
        };
        let failed = if r.failed > 0 { format!(" ({} failed)", r.failed) } else { String::new() };
        let name = if r.label == "raw" { r.viewers.to_string() } else { format!("{} ({})", r.viewers, r.label) };
        println!(
            "| {name}{failed} | {:.1} | {per_viewer} | {:.3} | {:.1} / {:.1} | {} / {} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.0} |",
            r.server_pct,
            r.loss_pct,
            if r.viewers > 0 { r.fps_min } else { 0.0 },
            r.fps_mean,
            ms(r.p50_ms),
            ms(r.p95_ms),
            r.packets_per_s,
            r.nacks,
            r.plis,
            r.client_pct,
            r.softirq_pct,
            r.other_pct(),
        );
    }
}

fn print_details(rows: &[&Row], baseline: &Row) {
    println!(
        "\nPer level: source fps, RTSP server CPU, machine softirq and steal time, CPU of other processes on the \
         machine, resent (duplicate) packets, kernel UDP receive-buffer drops, \
         server CPU in the kernel, server threads; for raw levels the fan-out cost (server CPU above the \
         baseline) per RTP packet sent and per viewer-frame, and the viewers' CPU per packet received:"
    );
    for r in rows {
        let threads: Vec<String> = r.threads.iter().take(6).map(|(n, p)| format!("{n} {p:.1}")).collect();
        let cost = if r.label == "raw" && r.packets_per_s > 0.0 {
            let us = |pct: f64, per_s: f64| pct / 100.0 * 1e6 / per_s;
            let fanout = r.server_pct - baseline.server_pct;
            format!(
                "; fan-out {:.1} µs/packet ({:.1} in the kernel), {:.0} µs per viewer-frame; viewers {:.1} µs/packet",
                us(fanout, r.packets_per_s),
                us(r.server_sys_pct - baseline.server_sys_pct, r.packets_per_s),
                us(fanout, r.viewers as f64 * r.source_fps),
                us(r.client_pct, r.packets_per_s),
            )
        } else {
            String::new()
        };
        println!(
            "- {} {}: source {:.1} fps, RTSP server {:.1} %, softirq {:.1} %, steal {:.1} %, other processes {:.0} %, \
             resent {}, UDP drops {}, server kernel {:.1} %; threads % of a core: {}{cost}",
            r.viewers,
            r.label,
            r.source_fps,
            r.camera_server_pct,
            r.softirq_pct,
            r.steal_pct,
            r.other_pct(),
            r.duplicates,
            r.udp_drops,
            r.server_sys_pct,
            threads.join(", ")
        );
    }
}

fn print_summary(rows: &[Row], baseline_pct: f64, annotated: Option<&Row>) {
    println!(
        "\nTargets: >= {TARGET_VIEWERS_PER_CORE} viewers per core (raw, full frame rate, loss < {MAX_LOSS_PCT} %); send latency p95 <= {TARGET_SEND_P95_MS} ms (raw); annotated capture->encoded p95 <= {TARGET_ENCODED_P95_MS} ms."
    );
    let best = rows.iter().filter(|r| r.label == "raw" && r.viewers > 0 && r.full_rate()).max_by_key(|r| r.viewers);
    match best {
        Some(r) => {
            let cores = (r.server_pct - baseline_pct) / 100.0;
            let per_core = if cores > 0.0 { r.viewers as f64 / cores } else { f64::INFINITY };
            let verdict = if per_core >= TARGET_VIEWERS_PER_CORE { "met" } else { "NOT met" };
            println!(
                "Viewers per core: {per_core:.0} ({} viewers kept full rate, fan-out used {:.1} % of a core above the {baseline_pct:.1} % baseline) — target {verdict}",
                r.viewers,
                cores * 100.0
            );
            let p95 = r.p95_ms.unwrap_or(f64::NAN);
            let verdict = if p95 <= TARGET_SEND_P95_MS { "met" } else { "NOT met" };
            println!("Send latency p95 at {} viewers: {p95:.2} ms — target {verdict}", r.viewers);
        }
        None => println!("Viewers per core: no level kept full rate with < {MAX_LOSS_PCT} % loss"),
    }
    // Least-squares slope of server CPU over N (baseline included), over the levels at full rate.
    let fit: Vec<(f64, f64)> =
        rows.iter().filter(|r| r.label == "raw" && r.full_rate()).map(|r| (r.viewers as f64, r.server_pct)).collect();
    if fit.len() >= 3 {
        let n = fit.len() as f64;
        let (mx, my) = (fit.iter().map(|p| p.0).sum::<f64>() / n, fit.iter().map(|p| p.1).sum::<f64>() / n);
        let sxy: f64 = fit.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
        let sxx: f64 = fit.iter().map(|(x, _)| (x - mx).powi(2)).sum();
        let slope = sxy / sxx;
        println!(
            "Marginal cost (least-squares slope over the {} full-rate levels): {slope:.3} % of a core per viewer = {:.0} viewers per core",
            fit.len(),
            100.0 / slope
        );
    }
    if let Some(r) = rows.iter().find(|r| r.label == "raw" && !r.full_rate()) {
        println!(
            "First level short of full rate: {} viewers (loss {:.3} %, min fps {:.1}, {} failed to connect)",
            r.viewers, r.loss_pct, r.fps_min, r.failed
        );
    }
    if let Some(a) = annotated {
        let p95 = a.encoded_p95_ms.unwrap_or(f64::NAN);
        let verdict = if p95 <= TARGET_ENCODED_P95_MS { "met" } else { "NOT met" };
        println!(
            "Annotated, 1 viewer: capture->encoded p50 / p95 {} / {} ms — target {verdict}; send p50 / p95 {} / {} ms; {:.1} fps; server CPU {:.1} % (baseline {baseline_pct:.1} %)",
            ms(a.encoded_p50_ms),
            ms(a.encoded_p95_ms),
            ms(a.p50_ms),
            ms(a.p95_ms),
            a.fps_mean,
            a.server_pct
        );
    }
    println!(
        "Note: the viewers run in this process on the same {} cores as the server (viewers' CPU % above); \
         softirq % is the machine's interrupt/softirq time (loopback delivery); other processes % is the rest \
         of the machine's busy time (other users: a level is measured again while it exceeds {BUSY_OTHER_PCT} %). \
         All CPU figures are % of one core.",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
}

// ---------------------------------------------------------------- main

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
