//! Per-camera pipeline: a supervisor task that keeps the source connected
//! (`run` = loop { `run_once`; backoff }) and feeds a media thread (decode,
//! classify, overlay, encode). One camera's trouble never touches another.

pub mod analysis;
mod annotate;
pub mod backoff;
mod classify;
pub mod health;
pub mod media;
pub mod queue;
pub mod status;
pub mod tuning;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use self::backoff::Backoff;
use self::media::{MediaContext, SnapshotRequest};
use self::queue::{FrameQueue, MediaMsg};
pub use self::status::{CameraState, CameraStatus, CameraView};
use self::tuning::CameraTuning;
use crate::codec::DecoderKind;
use crate::config::{CameraConfig, RtspConfig};
use crate::hub::{CameraTracks, Hub, TrackKind};
use crate::infer::InferenceWorker;
use crate::infer::runtime::find_in_roots;
use crate::ingest::rtsp::{RtspOptions, RtspSession};
use crate::ingest::{CameraUrl, IngestError, Source, replay::ReplaySession};
use crate::labels::LabelStore;
use crate::media::{VideoCodec, VideoFrame};
use crate::telemetry::{CameraMetrics, Metrics};

/// Access units buffered between the network and the media thread (≈ 0.3 s at 25 fps).
const QUEUE_LEN: usize = 8;
/// Longest wait for the next decoded picture of a snapshot.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);
/// Frame rate of replayed files (the demo clip is 25 fps).
const REPLAY_FPS: f32 = 25.0;
/// How long a `whip:` camera waits for a publisher (after start, or after
/// its publisher left) before it turns `failed`; it waits on after that.
pub const WHIP_PUBLISHER_TIMEOUT: Duration = Duration::from_secs(10);

/// Shared services every camera uses.
#[derive(Clone)]
pub struct Services {
    pub hub: Arc<Hub>,
    pub labels: Arc<LabelStore>,
    pub classifier: InferenceWorker,
    pub metrics: Arc<Metrics>,
    pub rtsp: RtspConfig,
    /// `[nats]`: where camera state changes are published (labels go through `labels`).
    pub bus: Option<crate::bus::Bus>,
    /// `[cluster]`: a camera may be handed to another node, so its sessions
    /// close their connection at once when they end.
    pub clustered: bool,
    /// The publishers of `whip:` cameras.
    pub whip: Arc<crate::ingest::whip::WhipFeeds>,
}

/// Why a snapshot could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("camera is not streaming (state: {0:?})")]
    NotStreaming(CameraState),
    #[error("no frame arrived within {} s", SNAPSHOT_TIMEOUT.as_secs())]
    Timeout,
}

/// Handle to a running camera.
pub struct Camera {
    pub name: String,
    pub status: Arc<RwLock<CameraStatus>>,
    pub tracks: Arc<CameraTracks>,
    snapshots: std::sync::mpsc::Sender<SnapshotRequest>,
    /// Whether this node pulls the camera (always, outside cluster mode).
    active: watch::Sender<bool>,
    /// What the media thread applies without a restart.
    tuning: watch::Sender<CameraTuning>,
}

impl Camera {
    /// Starts the camera's supervisor task and media thread, pulling the
    /// camera at once. Runs until `cancel`.
    pub fn spawn(config: CameraConfig, services: &Services, cancel: CancellationToken) -> std::io::Result<Arc<Camera>> {
        Camera::spawn_with(config, services, true, cancel)
    }

    /// Like [`Camera::spawn`]; with `active` false the camera stays in
    /// `standby` (no connection) until [`Camera::set_active`] (cluster mode).
    pub fn spawn_with(
        config: CameraConfig,
        services: &Services,
        active: bool,
        cancel: CancellationToken,
    ) -> std::io::Result<Arc<Camera>> {
        let name = config.name.clone();
        let url = CameraUrl::parse(&config.url);
        let shown_url = url.as_ref().map(|u| u.redacted()).unwrap_or_else(|_| "(invalid URL)".into());
        let mut status = CameraStatus::new(&name, &shown_url, &CameraTuning::of(&config), config.decoder);
        if !active {
            status.set_state(CameraState::Standby, None);
        }
        if let Some(bus) = &services.bus {
            status.attach_bus(bus.clone());
        }
        let status = Arc::new(RwLock::new(status));
        let tracks = services.hub.camera(&name);
        let queue = Arc::new(FrameQueue::new(QUEUE_LEN));
        let (snap_tx, snap_rx) = std::sync::mpsc::channel();
        let metrics = services.metrics.camera(&name);
        let (tuning, tuning_rx) = watch::channel(CameraTuning::of(&config));
        let ctx = MediaContext {
            name: name.clone(),
            config: config.clone(),
            queue: queue.clone(),
            tracks: tracks.clone(),
            classifier: services.classifier.clone(),
            labels: services.labels.clone(),
            metrics: metrics.clone(),
            status: status.clone(),
            snapshots: snap_rx,
            tuning: tuning_rx.clone(),
        };
        std::thread::Builder::new().name(format!("media-{name}")).spawn(move || run_media(ctx))?;
        let supervisor = Supervisor {
            name: name.clone(),
            url,
            status: status.clone(),
            tracks: tracks.clone(),
            queue,
            metrics,
            rtsp: services.rtsp.clone(),
            decoder: config.decoder,
            tuning: tuning_rx,
            annotated_max_pixels: config.annotated_max_pixels,
            close_at_once: services.clustered,
            whip: services.whip.clone(),
        };
        let (active, active_rx) = watch::channel(active);
        let span = tracing::info_span!("camera", name = %name);
        tokio::spawn(supervise(Arc::new(supervisor), active_rx, cancel).instrument(span));
        Ok(Arc::new(Camera { name, status, tracks, snapshots: snap_tx, active, tuning }))
    }

    pub fn status(&self) -> CameraStatus {
        self.status.read().expect("status lock is never poisoned").clone()
    }

    /// Status and viewers per track, as `/api/cameras` shows them (no node).
    pub fn view(&self) -> CameraView {
        let viewers = [TrackKind::Raw, TrackKind::Annotated]
            .into_iter()
            .map(|k| (k.as_str(), self.tracks.track(k).subscriber_count()))
            .collect();
        CameraView { status: self.status(), viewers, node: None, node_url: None }
    }

    /// Waits (at most `within`) until the supervisor has dropped the source
    /// session after [`Camera::set_active`]`(false)` (or shut down); false on
    /// time-out.
    pub async fn stood_by(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while !matches!(self.status().state, CameraState::Standby | CameraState::Stopped) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// The tunable settings in force (or on their way to the media thread).
    pub fn tuning(&self) -> CameraTuning {
        *self.tuning.borrow()
    }

    /// Changes what a running camera can change without a restart: the
    /// classification rate and the annotated policy at the next access unit,
    /// the annotated bitrate from the next encoded frame, its frame rate and
    /// size at its next IDR. Viewers stay connected. `tuning` must be valid
    /// (see [`CameraConfig::validate`]).
    pub fn tune(&self, tuning: CameraTuning) {
        let changed = self.tuning.send_if_modified(|t| std::mem::replace(t, tuning) != tuning);
        if changed {
            self.status.write().expect("status lock is never poisoned").set_tuning(&tuning);
        }
    }

    /// Whether this node pulls the camera now.
    pub fn is_active(&self) -> bool {
        *self.active.borrow()
    }

    /// Starts (true) or stops (false) pulling the camera. Stopping ends the
    /// source session at once and leaves the camera in `standby`.
    pub fn set_active(&self, active: bool) {
        self.active.send_if_modified(|a| std::mem::replace(a, active) != active);
    }

    /// The next decoded frame of `track` (`annotated` = with the label drawn).
    pub async fn snapshot(&self, track: TrackKind) -> Result<VideoFrame, SnapshotError> {
        let state = self.status().state;
        if !state.is_receiving() {
            return Err(SnapshotError::NotStreaming(state));
        }
        let (reply, rx) = oneshot::channel();
        self.snapshots.send(SnapshotRequest { track, reply }).map_err(|_| SnapshotError::Timeout)?;
        // Keyframe-only analysis decodes one picture per GOP: wait up to ~2 GOPs.
        match tokio::time::timeout(SNAPSHOT_TIMEOUT, rx).await {
            Ok(Ok(frame)) => Ok(frame),
            _ => Err(SnapshotError::Timeout),
        }
    }
}

/// Runs the camera's media thread; a panic in it turns the camera `failed`
/// with the panic's message and starts it again (the other cameras never
/// notice). Ends when the queue closes.
fn run_media(ctx: MediaContext) {
    crate::sched::batch_current_thread();
    let mut recovering = false;
    loop {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| media::run(&ctx, recovering))) {
            Ok(()) => return,
            Err(panic) => {
                let reason = format!("media thread panicked: {}; restarted", panic_message(panic.as_ref()));
                tracing::error!(camera = %ctx.name, %reason);
                ctx.status.write().expect("status lock is never poisoned").set_state(CameraState::Failed, Some(reason));
                ctx.metrics.dropped("media_thread_panic", 1);
                recovering = true;
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Runs the supervisor until `cancel`; a panic in it turns the camera
/// `failed` with the reason and runs it again after a second.
async fn supervise(supervisor: Arc<Supervisor>, active: watch::Receiver<bool>, cancel: CancellationToken) {
    loop {
        let (s, a, c) = (supervisor.clone(), active.clone(), cancel.clone());
        match tokio::spawn(async move { s.run(a, c).await }.in_current_span()).await {
            Ok(()) => return,
            Err(e) if e.is_panic() => {
                let reason =
                    format!("camera supervisor panicked: {}; restarted", panic_message(e.into_panic().as_ref()));
                tracing::error!(%reason);
                supervisor
                    .status
                    .write()
                    .expect("status lock is never poisoned")
                    .set_state(CameraState::Failed, Some(reason));
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = cancel.cancelled() => return,
                }
            }
            Err(_) => return,
        }
    }
}

struct Supervisor {
    name: String,
    url: Result<CameraUrl, IngestError>,
    status: Arc<RwLock<CameraStatus>>,
    tracks: Arc<CameraTracks>,
    queue: Arc<FrameQueue>,
    metrics: CameraMetrics,
    rtsp: RtspConfig,
    decoder: DecoderKind,
    /// For `annotated_scale` when the stream's size is known from its SDP.
    tuning: watch::Receiver<CameraTuning>,
    annotated_max_pixels: u32,
    close_at_once: bool,
    whip: Arc<crate::ingest::whip::WhipFeeds>,
}

/// Resolves once `active` reads `want` (never, if its sender is gone).
async fn until_active(active: &mut watch::Receiver<bool>, want: bool) {
    if active.wait_for(|a| *a == want).await.is_err() {
        std::future::pending::<()>().await;
    }
}

impl Supervisor {
    async fn run(&self, mut active: watch::Receiver<bool>, cancel: CancellationToken) {
        let mut backoff = Backoff::new(
            Duration::from_millis(self.rtsp.backoff_initial_ms),
            Duration::from_millis(self.rtsp.backoff_max_ms),
        );
        loop {
            if !*active.borrow() {
                self.stand_by();
                tokio::select! {
                    () = until_active(&mut active, true) => {}
                    () = cancel.cancelled() => break,
                }
                tracing::info!("this node pulls the camera now");
                self.status.write().expect("status lock is never poisoned").set_state(CameraState::Connecting, None);
                backoff.reset();
            }
            let mut streamed = false;
            let result = tokio::select! {
                r = self.run_once(&mut streamed) => r,
                () = until_active(&mut active, false) => continue,
                () = cancel.cancelled() => break,
            };
            let Err(error) = result;
            if matches!(error, IngestError::AccessUnitTooLarge { .. }) {
                self.metrics.dropped("access_unit_too_large", 1);
            }
            if streamed {
                backoff.reset();
            }
            let permanent = error.is_permanent();
            let delay = if self.url.as_ref().is_ok_and(CameraUrl::is_whip) {
                Duration::ZERO // waiting for the next publisher is the back-off
            } else if permanent {
                Duration::from_millis(self.rtsp.backoff_max_ms)
            } else {
                backoff.next_delay()
            };
            // Errors from the RTSP client may quote the URL: never with its secrets.
            let message = match &self.url {
                Ok(url) => url.scrub(&error.to_string()),
                Err(_) => error.to_string(),
            };
            tracing::warn!(error = %message, retry_in_ms = delay.as_millis() as u64, "camera session ended");
            {
                let mut s = self.status.write().expect("status lock is never poisoned");
                let state = if permanent { CameraState::Failed } else { CameraState::Reconnecting };
                s.set_state(state, Some(message));
                s.reconnects += 1;
            }
            self.metrics.reconnects.inc();
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = until_active(&mut active, false) => {}
                () = cancel.cancelled() => break,
            }
        }
        self.queue.close();
        self.status.write().expect("status lock is never poisoned").set_state(CameraState::Stopped, None);
        tracing::info!("camera stopped");
    }

    /// Stops pulling (cluster mode: another node does): the source session
    /// is already dropped; the tracks forget their GOP.
    fn stand_by(&self) {
        self.tracks.raw.reset();
        let mut s = self.status.write().expect("status lock is never poisoned");
        if s.state != CameraState::Standby {
            tracing::info!("another node pulls the camera now: standing by");
            s.set_state(CameraState::Standby, None);
        }
    }

    /// One session: connect, then forward access units until something fails.
    async fn run_once(&self, streamed: &mut bool) -> Result<std::convert::Infallible, IngestError> {
        let url = self.url.as_ref().map_err(Clone::clone)?;
        let mut source = if url.is_rtsp() {
            let options = RtspOptions {
                request_timeout: Duration::from_millis(self.rtsp.request_timeout_ms),
                frame_timeout: Duration::from_millis(self.rtsp.frame_timeout_ms),
                max_access_unit_bytes: usize::try_from(self.rtsp.max_access_unit_bytes).unwrap_or(usize::MAX),
                close_at_once: self.close_at_once,
            };
            Source::Rtsp(RtspSession::connect(url, &options).await?)
        } else if url.is_whip() {
            // A camera that has failed for want of a publisher waits on without a limit.
            let failed = self.status.read().expect("status lock is never poisoned").state == CameraState::Failed;
            let within = (!failed).then_some(WHIP_PUBLISHER_TIMEOUT);
            let frame_timeout = Duration::from_millis(self.rtsp.frame_timeout_ms);
            let max_bytes = usize::try_from(self.rtsp.max_access_unit_bytes).unwrap_or(usize::MAX);
            Source::Whip(self.whip.wait(&self.name, self.tracks.clone(), within, frame_timeout, max_bytes).await?)
        } else {
            let path = url.file_path().ok_or_else(|| IngestError::BadUrl("file URL without a path".into()))?;
            Source::Replay(ReplaySession::open(&find_in_roots(path), REPLAY_FPS)?)
        };
        let info = source.info().clone();
        let codec =
            VideoCodec::from_name(&info.codec).ok_or_else(|| IngestError::UnsupportedCodec(info.codec.clone()))?;
        if codec != VideoCodec::H264 && self.decoder == DecoderKind::Openh264 {
            return Err(IngestError::UnsupportedCodec(format!("{codec} with decoder = \"openh264\" (use \"ffmpeg\")")));
        }
        {
            let mut s = self.status.write().expect("status lock is never poisoned");
            s.codec = Some(info.codec);
            s.width = info.width.or(s.width);
            s.height = info.height.or(s.height);
            s.bframes = false;
        }
        // Known from the SDP before the first picture: refuse WHEP for a too-large
        // annotated track at once (the media thread checks every new size again).
        if let (Some(w), Some(h)) = (info.width, info.height) {
            let scale = self.tuning.borrow().annotated_scale;
            let reason = annotate::refusal(scale, self.annotated_max_pixels, w, h);
            annotate::show_refusal(&self.name, &self.status, &self.metrics.annotated_refused, reason);
        }
        tracing::info!(url = %url, "connected");
        self.tracks.raw.reset();
        self.queue.push(MediaMsg::Reset(codec));
        let (mut last_pts, mut bframes_seen) = (None::<i64>, false);
        loop {
            let au = source.next().await?;
            if !*streamed {
                *streamed = true;
                self.status.write().expect("status lock is never poisoned").set_state(CameraState::Streaming, None);
            }
            // Access units come in decode order; a pts a little below the previous
            // one means a picture shown later was sent first: B-frames.
            if let Some(last) = last_pts
                && (1..90_000).contains(&(last - au.pts_90k))
                && !std::mem::replace(&mut bframes_seen, true)
            {
                tracing::info!("the stream has B-frames: its raw track is forwarded as is");
                self.status.write().expect("status lock is never poisoned").bframes = true;
            }
            last_pts = Some(au.pts_90k);
            self.metrics.received.inc();
            if au.keyframe {
                self.metrics.keyframes_received.inc();
            }
            self.tracks.raw.publish(au.clone());
            let dropped = self.queue.push(MediaMsg::AccessUnit(au));
            if dropped > 0 {
                self.metrics.dropped("decode_queue_full", dropped);
            }
        }
    }
}
