//! The configuration schema (`infercast.toml`), its defaults and validation.
//!
//! Every option is documented in `docs/config.md`; defaults are written once, here.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::auth::{AuthConfig, HttpConfig};
use crate::codec::{DecoderKind, EncoderKind};
use crate::infer::runtime::find_in_roots;

/// Everything infercast can be configured with. Unknown keys are refused.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP listen address for the API and viewer page (default `127.0.0.1:8080`).
    pub listen: String,
    /// Labels kept per camera for `/api/labels/{camera}` (default 1000).
    pub label_history: usize,
    pub inference: InferenceConfig,
    pub rtsp: RtspConfig,
    pub webrtc: WebRtcConfig,
    /// `[auth]`: bearer tokens and roles. Required to listen beyond loopback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// `[http]`: allowed web origins (CORS).
    pub http: HttpConfig,
    /// `[limits]`: sessions, streams and snapshots a client can make us hold.
    pub limits: LimitsConfig,
    /// `[tls]`: serve HTTPS with this certificate and key (reloaded on SIGHUP
    /// or file change). Absent: plain HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::api::tls::TlsConfig>,
    /// `[nats]`: publish labels and camera events to NATS JetStream. Absent:
    /// no NATS at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats: Option<crate::bus::NatsConfig>,
    /// `[cluster]`: share the cameras with other nodes of the same `[nats]`.
    /// Absent: this node pulls every camera.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// `[[camera]]` tables; empty means the built-in demo camera.
    #[serde(rename = "camera")]
    pub cameras: Vec<CameraConfig>,
    /// The file this config was read from ([`Config::load`]): SIGHUP reads it
    /// again, and run-time camera changes persist next to it.
    #[serde(skip)]
    pub file: Option<PathBuf>,
    /// Cameras given on the command line (also in `cameras`): kept when the
    /// file is read again.
    #[serde(skip)]
    pub arg_cameras: Vec<CameraConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            label_history: 1000,
            inference: InferenceConfig::default(),
            rtsp: RtspConfig::default(),
            webrtc: WebRtcConfig::default(),
            auth: None,
            http: HttpConfig::default(),
            limits: LimitsConfig::default(),
            tls: None,
            nats: None,
            cluster: None,
            cameras: Vec::new(),
            file: None,
            arg_cameras: Vec::new(),
        }
    }
}

/// `[rtsp]`: timeouts shared by all RTSP cameras.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtspConfig {
    /// Limit for each of DESCRIBE, SETUP, PLAY, in ms (default 5000).
    pub request_timeout_ms: u64,
    /// A camera silent this long counts as hung and is reconnected, in ms (default 5000).
    pub frame_timeout_ms: u64,
    /// First reconnect delay, in ms (default 500); doubles per failure, with jitter.
    pub backoff_initial_ms: u64,
    /// Longest reconnect delay, in ms (default 30000).
    pub backoff_max_ms: u64,
    /// Largest access unit (one picture) a camera may send, in bytes (default
    /// 16 MiB, 65536..=1 GiB); a larger one is dropped, counted and the session
    /// reconnected.
    pub max_access_unit_bytes: u64,
}

/// Default `[rtsp] max_access_unit_bytes`: 16 MiB, ~50× a 4K IDR at 8 Mbit/s.
pub const DEFAULT_MAX_ACCESS_UNIT_BYTES: u64 = 16 << 20;

impl Default for RtspConfig {
    fn default() -> Self {
        RtspConfig {
            request_timeout_ms: 5000,
            frame_timeout_ms: 5000,
            backoff_initial_ms: 500,
            backoff_max_ms: 30_000,
            max_access_unit_bytes: DEFAULT_MAX_ACCESS_UNIT_BYTES,
        }
    }
}

/// The one-port SFU's default address (as MediaMTX's WebRTC UDP port).
pub const DEFAULT_UDP_LISTEN: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 8189);

/// `[webrtc] udp_listen` and env `INFERCAST_UDP_LISTEN`: `"IP:port"`, or
/// `"off"` for the per-session SFU.
pub fn parse_udp_listen(value: &str) -> Result<Option<std::net::SocketAddr>, String> {
    match value.trim() {
        "off" => Ok(None),
        v => v.parse().map(Some).map_err(|e| format!("{v:?} is neither an IP:port address nor \"off\" ({e})")),
    }
}

/// Serde of `udp_listen`: a string, `"IP:port"` or `"off"`.
mod udp_listen {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<std::net::SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_str("off"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<std::net::SocketAddr>, D::Error> {
        super::parse_udp_listen(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// `[webrtc]`: how viewers reach infercast (ICE).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebRtcConfig {
    /// Local IPs to gather host candidates on (default `["0.0.0.0", "127.0.0.1"]`):
    /// `0.0.0.0` means every non-loopback IPv4 interface, `127.0.0.1` adds loopback
    /// (viewers on this machine).
    pub udp_ips: Vec<std::net::IpAddr>,
    /// Inclusive UDP port range for viewer sessions, e.g. `[50000, 50999]`; each
    /// session takes one port (on every IP). Default: ephemeral ports.
    pub udp_port_range: Option<[u16; 2]>,
    /// Public IPs advertised in place of the host ones (1:1 NAT, containers with
    /// published ports): they go into the SDP answer as server-reflexive candidates.
    pub public_ips: Vec<std::net::IpAddr>,
    /// STUN/TURN servers handed to the viewer page (`RTCPeerConnection`'s
    /// `iceServers`). Default none: enough on one machine or a LAN.
    pub ice_servers: Vec<IceServer>,
    /// A viewer session that has not connected (ICE + DTLS) this long after its
    /// answer is ended, with its port and peer connection, in ms (default 10000,
    /// range 1000..=15000).
    pub connect_timeout_ms: u64,
    /// Every viewer session on this one UDP port (default `"0.0.0.0:8189"`:
    /// the one-port SFU, ICE-lite, sans-IO, batched sends); host candidates
    /// on `udp_ips` at that port. `"off"`: the per-session SFU, a UDP port per
    /// session (`udp_port_range`). Not yet: ICE-TCP.
    #[serde(with = "udp_listen")]
    pub udp_listen: Option<std::net::SocketAddr>,
    /// Send workers of the one-port SFU (default: one per core).
    pub send_workers: Option<usize>,
}

impl Default for WebRtcConfig {
    fn default() -> Self {
        WebRtcConfig {
            udp_ips: vec![std::net::Ipv4Addr::UNSPECIFIED.into(), std::net::Ipv4Addr::LOCALHOST.into()],
            udp_port_range: None,
            public_ips: Vec::new(),
            ice_servers: Vec::new(),
            connect_timeout_ms: 10_000,
            udp_listen: Some(DEFAULT_UDP_LISTEN),
            send_workers: None,
        }
    }
}

/// One `[[webrtc.ice_servers]]`, as in the W3C `RTCIceServer` dictionary.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IceServer {
    /// `stun:host:port`, `turn:host:port?transport=udp`, `turns:...`.
    pub urls: Vec<String>,
    /// TURN user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN password (handed to viewers: use short-lived TURN credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// When the annotated track is encoded.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EncodePolicy {
    /// Only while someone subscribes to the annotated track (default).
    #[default]
    OnDemand,
    /// All the time (snapshots and viewers start without waiting for an IDR).
    Always,
}

/// `analysis` in a camera's config.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AnalysisPolicy {
    /// Keyframes only while nobody watches the annotated track and
    /// `classify_fps` is at or below the camera's keyframe rate; every frame
    /// otherwise (the default).
    #[default]
    Auto,
    /// Always decode every frame.
    EveryFrame,
    /// Decode (and classify) only keyframes while nobody watches the annotated
    /// track, whatever `classify_fps` says: the cheapest monitoring.
    Keyframes,
}

/// `[limits]` in the config.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// WHEP viewer sessions in all (default 500).
    pub whep_sessions: usize,
    /// WHEP viewer sessions per camera, both tracks (default 200).
    pub whep_sessions_per_camera: usize,
    /// WHEP viewer sessions from one client IP address (default 50; 429 beyond).
    pub whep_sessions_per_ip: usize,
    /// Label streams (`/api/labels/stream`) open at once (default 100).
    pub sse_streams: usize,
    /// Snapshots being taken at once per camera (default 2); more get 503.
    pub snapshots_in_flight_per_camera: usize,
    /// HTTP connections open at once (default 1024); more are closed on accept.
    pub http_connections: usize,
    /// Bandwidth for resending the cached GOP to raw viewers that ask for a
    /// keyframe (PLI), all sessions together, bits/s (default 50000000);
    /// each session resends at most once a second.
    pub gop_resend_bps: u64,
    /// Chat messages kept per camera room and replayed to a new listener (default 100).
    pub chat_history: usize,
    /// Longest chat message, in characters (default 500; 422 beyond).
    pub chat_message_chars: usize,
    /// Chat messages one client IP may post to one room per 10 s (default 5; 429 beyond).
    pub chat_messages_per_10s: usize,
    /// Cameras at most, configured and added at run time (`POST /api/cameras`;
    /// default 256; 409 `too_many_cameras` beyond).
    pub cameras: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            whep_sessions: 500,
            whep_sessions_per_camera: 200,
            whep_sessions_per_ip: 50,
            sse_streams: 100,
            snapshots_in_flight_per_camera: 2,
            http_connections: 1024,
            gop_resend_bps: 50_000_000,
            chat_history: 100,
            chat_message_chars: 500,
            chat_messages_per_10s: 5,
            cameras: 256,
        }
    }
}

impl LimitsConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(10_000..=100_000_000_000).contains(&self.gop_resend_bps) {
            return Err(format!(
                "limits.gop_resend_bps = {} is out of range 10000..=100000000000",
                self.gop_resend_bps
            ));
        }
        for (key, value, hi) in [
            ("limits.whep_sessions", self.whep_sessions, 100_000),
            ("limits.whep_sessions_per_camera", self.whep_sessions_per_camera, 100_000),
            ("limits.whep_sessions_per_ip", self.whep_sessions_per_ip, 100_000),
            ("limits.sse_streams", self.sse_streams, 100_000),
            ("limits.snapshots_in_flight_per_camera", self.snapshots_in_flight_per_camera, 64),
            ("limits.http_connections", self.http_connections, 100_000),
            ("limits.chat_history", self.chat_history, 10_000),
            ("limits.chat_message_chars", self.chat_message_chars, 10_000),
            ("limits.chat_messages_per_10s", self.chat_messages_per_10s, 1000),
            ("limits.cameras", self.cameras, 10_000),
        ] {
            if !(1..=hi).contains(&value) {
                return Err(format!("{key} = {value} is out of range 1..={hi}"));
            }
        }
        Ok(())
    }
}

/// One `[[camera]]` (and the body of `POST /api/cameras`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// Unique name: letters, digits, `-` and `_` (used in URLs and metrics).
    pub name: String,
    /// `rtsp://[user:pass@]host[:port]/path`, `file:/path/clip.h264`, or
    /// `whip:` (a WebRTC publisher sends the video: `POST /whip/{name}`).
    /// `${VAR}` in a config file's URL is replaced by the environment variable
    /// `VAR` at load (credentials from a Kubernetes Secret, say); an unset
    /// variable stops start-up naming it.
    pub url: String,
    /// Classifications per second (default 5; `0` = every frame).
    #[serde(default = "default_classify_fps")]
    pub classify_fps: f32,
    #[serde(default)]
    pub encode_annotated: EncodePolicy,
    /// Annotated track bitrate in bits per second (default 1 500 000).
    #[serde(default = "default_annotated_bitrate_bps")]
    pub annotated_bitrate_bps: u32,
    /// With `on_demand`, how long the encoder keeps running after the last
    /// annotated viewer left, in ms (default 5000).
    #[serde(default = "default_annotated_linger_ms")]
    pub annotated_linger_ms: u64,
    /// `ffmpeg` (default: libavcodec, every H.264 profile and H.265) or `openh264`
    /// (built in, Baseline H.264).
    #[serde(default)]
    pub decoder: DecoderKind,
    /// `x264` (default: libx264 through libavcodec, `ultrafast`) or `openh264`:
    /// the annotated track's encoder.
    #[serde(default)]
    pub annotated_encoder: EncoderKind,
    /// Size of the annotated track relative to the camera's picture, `(0, 1]`
    /// (default 1; 0.5 = half width and height, about a quarter of the encode CPU).
    #[serde(default = "default_annotated_scale")]
    pub annotated_scale: f32,
    /// Frame rate of the annotated track, frames per second (default: the
    /// camera's). Lower costs less encode CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotated_fps: Option<f32>,
    /// Largest annotated picture encoded, in pixels (width × height after
    /// `annotated_scale`; default 2 073 600 = 1920×1080). A larger camera keeps
    /// decoding and classifying, but its annotated track is refused (shown in
    /// `annotated_unavailable`).
    #[serde(default = "default_annotated_max_pixels")]
    pub annotated_max_pixels: u32,
    /// `auto` (default), `every_frame` or `keyframes`: which frames are decoded
    /// while nobody watches the annotated track; see [`AnalysisPolicy`].
    #[serde(default)]
    pub analysis: AnalysisPolicy,
}

impl CameraConfig {
    /// Checks values serde cannot: the name and the ranges.
    pub fn validate(&self) -> Result<(), String> {
        let valid_name = !self.name.is_empty()
            && self.name.len() <= 64
            && self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid_name {
            return Err(format!("camera name {:?}: use 1-64 letters, digits, '-' or '_'", self.name));
        }
        if !(self.classify_fps == 0.0 || (0.01..=120.0).contains(&self.classify_fps)) {
            return Err(format!(
                "camera {:?}: classify_fps = {} is out of range: 0 (every frame) or 0.01..=120",
                self.name, self.classify_fps
            ));
        }
        if !(50_000..=50_000_000).contains(&self.annotated_bitrate_bps) {
            return Err(format!("camera {:?}: annotated_bitrate_bps must be 50000..=50000000", self.name));
        }
        if !(self.annotated_scale > 0.0 && self.annotated_scale <= 1.0) {
            return Err(format!(
                "camera {:?}: annotated_scale = {} is out of range (0, 1]",
                self.name, self.annotated_scale
            ));
        }
        if let Some(fps) = self.annotated_fps
            && !(1.0..=120.0).contains(&fps)
        {
            return Err(format!("camera {:?}: annotated_fps = {fps} is out of range 1..=120", self.name));
        }
        if !(16_384..=35_389_440).contains(&self.annotated_max_pixels) {
            return Err(format!(
                "camera {:?}: annotated_max_pixels = {} is out of range 16384..=35389440 (8192×4320)",
                self.name, self.annotated_max_pixels
            ));
        }
        if self.annotated_linger_ms > 3_600_000 {
            return Err(format!("camera {:?}: annotated_linger_ms must be at most 3600000 (1 h)", self.name));
        }
        Ok(())
    }
}

fn default_annotated_linger_ms() -> u64 {
    5000
}

fn default_annotated_max_pixels() -> u32 {
    1920 * 1080
}

fn default_annotated_scale() -> f32 {
    1.0
}

fn default_classify_fps() -> f32 {
    5.0
}

fn default_annotated_bitrate_bps() -> u32 {
    1_500_000
}

impl CameraConfig {
    /// A camera with every option at its default.
    pub fn new(name: &str, url: &str) -> CameraConfig {
        CameraConfig {
            name: name.into(),
            url: url.into(),
            classify_fps: default_classify_fps(),
            encode_annotated: EncodePolicy::default(),
            annotated_bitrate_bps: default_annotated_bitrate_bps(),
            annotated_linger_ms: default_annotated_linger_ms(),
            decoder: DecoderKind::default(),
            annotated_encoder: EncoderKind::default(),
            annotated_scale: default_annotated_scale(),
            annotated_fps: None,
            annotated_max_pixels: default_annotated_max_pixels(),
            analysis: AnalysisPolicy::default(),
        }
    }
}

/// Which export of EfficientNet-Lite0 to run.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ModelVariant {
    /// Static int8 quantisation (QDQ, per-channel): ~2.3× faster, top-1 matches fp32 on
    /// most photos (see README for the measurement).
    #[default]
    Int8,
    /// The reference float32 export.
    Fp32,
}

impl ModelVariant {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelVariant::Int8 => "int8",
            ModelVariant::Fp32 => "fp32",
        }
    }
}

/// `[inference]`: the classifier shared by all cameras.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceConfig {
    /// `int8` (default) or `fp32`.
    pub model: ModelVariant,
    /// An explicit `.onnx` file; default `models/efficientnet-lite0-<model>.onnx`.
    pub model_path: Option<PathBuf>,
    /// Class names, one per line; default `models/imagenet_classes.txt`.
    pub labels_path: Option<PathBuf>,
    /// `libonnxruntime.so`; env `ORT_DYLIB_PATH` wins, default: the project venv.
    pub ort_dylib_path: Option<PathBuf>,
    /// Intra-op threads for one inference (default 1: leaves the other cores to decoding).
    pub threads: usize,
    /// Let idle inference threads spin (lower latency with `threads > 1`, more CPU).
    pub spin: bool,
    /// Most images classified in one run (default 4).
    pub max_batch: usize,
    /// Most requests waiting for the worker; beyond that they are dropped (default 8).
    pub queue_len: usize,
    /// ONNX Runtime's CPU memory arena and memory patterns (default on, as
    /// ONNX Runtime ships; off measured 92 MB RSS against 88 MB on for one
    /// 720p camera, so it saves nothing here).
    pub memory_arena: bool,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        InferenceConfig {
            model: ModelVariant::default(),
            model_path: None,
            labels_path: None,
            ort_dylib_path: None,
            threads: 1,
            spin: false,
            max_batch: 4,
            queue_len: 8,
            memory_arena: true,
        }
    }
}

impl InferenceConfig {
    /// The model file to load: `model_path`, else the variant's file under `models/`
    /// in the current directory or the source tree.
    pub fn resolved_model_path(&self) -> PathBuf {
        self.model_path.clone().unwrap_or_else(|| {
            find_in_roots(Path::new(&format!("models/efficientnet-lite0-{}.onnx", self.model.as_str())))
        })
    }

    /// The labels file to load: `labels_path`, else `models/imagenet_classes.txt`.
    pub fn resolved_labels_path(&self) -> PathBuf {
        self.labels_path.clone().unwrap_or_else(|| find_in_roots(Path::new("models/imagenet_classes.txt")))
    }
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    /// `message` carries toml's line and column.
    #[error("config file {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Unreadable { path: path.to_owned(), reason: e.to_string() })?;
        let mut config =
            Config::parse(&text).map_err(|message| ConfigError::Syntax { path: path.to_owned(), message })?;
        if let Some(cluster) = &mut config.cluster {
            cluster.apply_env();
        }
        config.file = Some(path.to_owned());
        for cam in &mut config.cameras {
            cam.url = expand_env(&cam.url, |v| std::env::var(v).ok()).map_err(|message| ConfigError::Invalid {
                path: path.to_owned(),
                message: format!("camera {:?}: url: {message}", cam.name),
            })?;
        }
        config.validate().map_err(|message| ConfigError::Invalid { path: path.to_owned(), message })?;
        Ok(config)
    }

    /// Parses TOML text; the error is toml's, one line, with line and column.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| one_line(&e))
    }

    /// Checks values serde cannot: ranges and cross-field rules.
    pub fn validate(&self) -> Result<(), String> {
        let inf = &self.inference;
        if !(1..=64).contains(&inf.threads) {
            return Err(format!("inference.threads = {} is out of range 1..=64", inf.threads));
        }
        if !(1..=64).contains(&inf.max_batch) {
            return Err(format!("inference.max_batch = {} is out of range 1..=64", inf.max_batch));
        }
        if !(1..=1024).contains(&inf.queue_len) {
            return Err(format!("inference.queue_len = {} is out of range 1..=1024", inf.queue_len));
        }
        if !(1..=100_000).contains(&self.label_history) {
            return Err(format!("label_history = {} is out of range 1..=100000", self.label_history));
        }
        let r = &self.rtsp;
        for (key, value, lo, hi) in [
            ("rtsp.request_timeout_ms", r.request_timeout_ms, 100, 600_000),
            ("rtsp.frame_timeout_ms", r.frame_timeout_ms, 100, 600_000),
            ("rtsp.backoff_initial_ms", r.backoff_initial_ms, 10, 3_600_000),
            ("rtsp.backoff_max_ms", r.backoff_max_ms, 10, 3_600_000),
            ("rtsp.max_access_unit_bytes", r.max_access_unit_bytes, 65_536, 1 << 30),
        ] {
            if !(lo..=hi).contains(&value) {
                return Err(format!("{key} = {value} is out of range {lo}..={hi}"));
            }
        }
        if r.backoff_initial_ms > r.backoff_max_ms {
            return Err("rtsp.backoff_initial_ms must not exceed rtsp.backoff_max_ms".into());
        }
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!("listen = {:?} is not an address like 127.0.0.1:8080", self.listen));
        }
        self.webrtc.validate()?;
        self.http.validate()?;
        self.limits.validate()?;
        if let Some(auth) = &self.auth {
            auth.validate()?;
        }
        if let Some(nats) = &self.nats {
            nats.validate()?;
        }
        if let Some(cluster) = &self.cluster {
            if self.nats.is_none() {
                return Err("[cluster] needs [nats]: the nodes share cameras through NATS JetStream".into());
            }
            cluster.validate()?;
        }
        let mut seen = std::collections::HashSet::new();
        for cam in &self.cameras {
            cam.validate()?;
            if !seen.insert(cam.name.as_str()) {
                return Err(format!("camera name {:?} is used twice; names must be unique", cam.name));
            }
        }
        if self.cameras.len() > self.limits.cameras {
            return Err(format!(
                "{} cameras configured; limits.cameras = {} allows no more",
                self.cameras.len(),
                self.limits.cameras
            ));
        }
        Ok(())
    }
}

/// Replaces every `${NAME}` in `text` by `lookup(NAME)` (`NAME`: letters,
/// digits, `_`). The error names the variable, never a value; `$` without `{`
/// stays as it is.
pub fn expand_env(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let end = after.find('}').ok_or_else(|| "a \"${\" without its \"}\"".to_owned())?;
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("${{{name}}} is not an environment variable name"));
        }
        let value = lookup(name).ok_or_else(|| format!("environment variable {name} (from ${{{name}}}) is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl WebRtcConfig {
    fn validate(&self) -> Result<(), String> {
        if self.udp_ips.is_empty() {
            return Err("webrtc.udp_ips is empty: viewers could not connect".into());
        }
        if !(1000..=15_000).contains(&self.connect_timeout_ms) {
            return Err(format!(
                "webrtc.connect_timeout_ms = {} is out of range 1000..=15000",
                self.connect_timeout_ms
            ));
        }
        if let Some([lo, hi]) = self.udp_port_range
            && (lo == 0 || lo > hi)
        {
            return Err(format!("webrtc.udp_port_range = [{lo}, {hi}]: need 1 <= first <= last"));
        }
        for s in &self.ice_servers {
            if s.urls.is_empty() {
                return Err("webrtc.ice_servers: an entry has no urls".into());
            }
            for u in &s.urls {
                if !["stun:", "stuns:", "turn:", "turns:"].iter().any(|p| u.starts_with(p)) {
                    return Err(format!("webrtc.ice_servers: {u:?} is not a stun:, stuns:, turn: or turns: URL"));
                }
                if u.starts_with("turn") && (s.username.is_none() || s.credential.is_none()) {
                    return Err(format!("webrtc.ice_servers: TURN server {u:?} needs username and credential"));
                }
            }
        }
        Ok(())
    }
}

/// toml's errors span several lines (a snippet with a caret); keep the first
/// line's position and the message.
fn one_line(e: &toml::de::Error) -> String {
    let message = e.message().trim();
    match e.span() {
        Some(_) => {
            let first = e.to_string();
            let position = first.lines().next().unwrap_or_default().trim_start_matches("TOML parse error ");
            format!("{position}: {message}")
        }
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camera_urls_take_credentials_from_the_environment() {
        let env = |name: &str| (name == "DOOR_PASS").then(|| "s3cr:t".to_owned());
        assert_eq!(expand_env("rtsp://v:${DOOR_PASS}@h/s", env).expect("set"), "rtsp://v:s3cr:t@h/s");
        assert_eq!(expand_env("rtsp://h/$x", env).expect("no braces"), "rtsp://h/$x");
        let err = expand_env("rtsp://v:${NOPE}@h", env).expect_err("unset");
        assert!(err.contains("NOPE") && err.contains("not set"), "{err}");
        assert!(expand_env("rtsp://${DOOR_PASS", env).expect_err("open").contains("without"));
        assert!(expand_env("rtsp://${A-B}", env).expect_err("bad name").contains("not an environment variable"));
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("").expect("empty config is valid");
        assert_eq!(c.inference.model, ModelVariant::Int8);
        assert_eq!(c.inference.threads, 1);
        c.validate().expect("defaults are valid");
    }

    #[test]
    fn unknown_key_is_refused_with_line_and_column() {
        let err = Config::parse("[inference]\nthreads = 2\nmodle = \"fp32\"\n").expect_err("typo must fail");
        assert!(err.contains("line 3, column 1"), "{err}");
        assert!(err.contains("unknown field `modle`"), "{err}");
    }

    #[test]
    fn cameras_parse_and_duplicates_are_refused() {
        let text = "[[camera]]\nname = \"door\"\nurl = \"rtsp://u:p@127.0.0.1:8554/x\"\nclassify_fps = 2\n\n\
                    [[camera]]\nname = \"door\"\nurl = \"rtsp://127.0.0.1/y\"\nencode_annotated = \"always\"\n";
        let c = Config::parse(text).expect("parses");
        assert_eq!(c.cameras.len(), 2);
        assert_eq!(c.cameras[1].encode_annotated, EncodePolicy::Always);
        let err = c.validate().expect_err("duplicate");
        assert!(err.contains("\"door\" is used twice"), "{err}");
        let bad = Config::parse("[[camera]]\nname = \"a b\"\nurl = \"rtsp://h/\"\n").expect("parses");
        assert!(bad.validate().expect_err("space in name").contains("\"a b\""));
    }

    #[test]
    fn the_example_config_is_valid() {
        let text = include_str!("../infercast.example.toml");
        let c = Config::parse(text).expect("example parses");
        c.validate().expect("example validates");
        assert_eq!(c.cameras.len(), 2);
    }

    #[test]
    fn webrtc_section_parses_and_is_checked() {
        let text = "[webrtc]\nudp_port_range = [50000, 50099]\npublic_ips = [\"203.0.113.7\"]\n\
                    [[webrtc.ice_servers]]\nurls = [\"stun:stun.example.org:3478\"]\n";
        let c = Config::parse(text).expect("parses");
        c.validate().expect("valid");
        assert_eq!(c.webrtc.udp_port_range, Some([50000, 50099]));
        assert_eq!(c.webrtc.ice_servers[0].urls, ["stun:stun.example.org:3478"]);
        let bad = Config::parse("[webrtc]\nudp_port_range = [5000, 4000]\n").expect("parses");
        assert!(bad.validate().expect_err("reversed").contains("udp_port_range"));
        let turn = Config::parse("[[webrtc.ice_servers]]\nurls = [\"turn:t.example.org\"]\n").expect("parses");
        assert!(turn.validate().expect_err("no credential").contains("username and credential"));
        let err = Config::parse("[webrtc]\npublic_ips = [\"not-an-ip\"]\n").expect_err("bad ip");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn one_port_is_the_default_and_off_is_the_per_session_sfu() {
        assert_eq!(Config::parse("").expect("parses").webrtc.udp_listen, Some(DEFAULT_UDP_LISTEN));
        let c = Config::parse("[webrtc]\nudp_listen = \"127.0.0.1:9000\"\n").expect("parses");
        assert_eq!(c.webrtc.udp_listen, Some("127.0.0.1:9000".parse().expect("address")));
        let off = Config::parse("[webrtc]\nudp_listen = \"off\"\n").expect("parses");
        assert_eq!(off.webrtc.udp_listen, None);
        let err = Config::parse("[webrtc]\nudp_listen = \"8189\"\n").expect_err("no IP");
        assert!(err.contains("line 2") && err.contains("\"off\""), "{err}");
        let shown = toml::to_string(&off.webrtc).expect("serialises");
        assert!(shown.contains("udp_listen = \"off\""), "{shown}");
    }

    #[test]
    fn out_of_range_values_are_refused_with_the_key_and_the_range() {
        for (text, want) in [
            (
                "[[camera]]\nname = \"a\"\nurl = \"rtsp://h/\"\nclassify_fps = 1e-20\n",
                "classify_fps = 0.00000000000000000001 is out of range: 0 (every frame) or 0.01..=120",
            ),
            ("[rtsp]\nframe_timeout_ms = 0\n", "rtsp.frame_timeout_ms = 0 is out of range 100..=600000"),
            ("[inference]\nqueue_len = 100000000\n", "inference.queue_len = 100000000 is out of range 1..=1024"),
            ("label_history = 100000000000\n", "label_history = 100000000000 is out of range 1..=100000"),
            ("[rtsp]\nbackoff_initial_ms = 5000\nbackoff_max_ms = 1000\n", "must not exceed"),
            (
                "[[camera]]\nname = \"a\"\nurl = \"rtsp://h/\"\nannotated_scale = 0\n",
                "annotated_scale = 0 is out of range (0, 1]",
            ),
            (
                "[[camera]]\nname = \"a\"\nurl = \"rtsp://h/\"\nannotated_max_pixels = 100\n",
                "annotated_max_pixels = 100 is out of range 16384..=35389440",
            ),
            (
                "[rtsp]\nmax_access_unit_bytes = 1000\n",
                "rtsp.max_access_unit_bytes = 1000 is out of range 65536..=1073741824",
            ),
        ] {
            let err = Config::parse(text).expect("parses").validate().expect_err(text);
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn nats_section_is_optional_checked_and_strict() {
        assert!(Config::parse("").expect("parses").nats.is_none(), "absent: no NATS");
        let c = Config::parse("[nats]\nurls = [\"nats://127.0.0.1:4222\"]\nbuffer_len = 50\n").expect("parses");
        c.validate().expect("valid");
        let nats = c.nats.expect("present");
        assert_eq!((nats.stream.as_str(), nats.replicas, nats.buffer_len), ("LABELS", 1, 50));
        let err = Config::parse("[nats]\nurls = [\"h\"]\nstrem = \"X\"\n").expect_err("typo");
        assert!(err.contains("unknown field `strem`"), "{err}");
        let bad = Config::parse("[nats]\nurls = [\"h\"]\nreplicas = 9\n").expect("parses");
        assert!(bad.validate().expect_err("9 replicas").contains("nats.replicas = 9 is out of range 1..=5"));
    }

    #[test]
    fn wrong_type_and_range_are_refused() {
        let err = Config::parse("[inference]\nthreads = \"two\"\n").expect_err("string for int");
        assert!(err.contains("line 2"), "{err}");
        let c = Config::parse("[inference]\nthreads = 0\n").expect("parses");
        assert!(c.validate().expect_err("0 threads").contains("inference.threads"));
    }
}
