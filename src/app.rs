//! Start-up and shutdown of the camera service: classifier, cameras, HTTP API,
//! all tied to one cancellation token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::auth::Auth;
use crate::bus::Bus;
use crate::config::{CameraConfig, Config};
use crate::hub::Hub;
use crate::infer::InferenceWorker;
use crate::labels::LabelStore;
use crate::pipeline::Services;
use crate::telemetry::Metrics;

/// The demo clip `scripts/setup` makes, relative to the project root.
pub const DEMO_CLIP: &str = "assets/demo/bikes-640x272.h264";

/// Start-up failures (each ends the program with one line and exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Infer(#[from] crate::infer::InferError),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error("cannot start camera {name}: {reason}")]
    Camera { name: String, reason: String },
}

/// Camera configs from command-line arguments: `URL` (named `cam1`, `cam2`, ...
/// by position) or `NAME=URL`.
pub fn cameras_from_args(args: &[String]) -> Vec<CameraConfig> {
    args.iter()
        .enumerate()
        .map(|(i, arg)| match arg.split_once('=') {
            Some((name, url)) if !name.contains(':') && !name.contains('/') => CameraConfig::new(name, url),
            _ => CameraConfig::new(&format!("cam{}", i + 1), arg),
        })
        .collect()
}

/// The built-in demo camera: the bundled clip replayed in a loop.
pub fn demo_camera() -> CameraConfig {
    CameraConfig::new("demo", &format!("file:{DEMO_CLIP}"))
}

/// Secure by default: serving beyond loopback needs `[auth]` (tokens, or
/// anonymous viewing chosen on purpose).
fn check_exposure(config: &Config) -> Result<(), AppError> {
    let loopback = config.listen.parse::<SocketAddr>().is_ok_and(|a| a.ip().is_loopback());
    if loopback || config.auth.is_some() {
        return Ok(());
    }
    Err(AppError::Config(format!(
        "refusing to listen on {} without [auth]: anyone on the network could watch every camera; \
         add a token (`infercast token new --role admin` prints the lines for the config) \
         or allow anonymous viewing on purpose with `[auth] anonymous = \"view\"`",
        config.listen
    )))
}

/// On each SIGHUP until `cancel`: reads the config file again and applies
/// its cameras (`Cameras::reload`); a file that does not load changes nothing.
async fn reload_on_sighup(cameras: Arc<crate::manage::Cameras>, cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP: the config is read at start only");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = hangup.recv() => {}
            () = cancel.cancelled() => return,
        }
        match cameras.reload().await {
            Ok(r) => tracing::info!(
                added = ?r.added, removed = ?r.removed, changed = ?r.changed, tuned = ?r.tuned,
                unchanged = r.unchanged,
                "SIGHUP: config read again, cameras applied"
            ),
            Err(e) => tracing::error!(error = %e, "SIGHUP: config not applied; the cameras run on as they were"),
        }
    }
}

/// Runs until `cancel`: loads the classifier, starts every camera and serves the
/// API on `config.listen`. Calls `on_listening` with the bound address and
/// whether it serves HTTPS (`[tls]`).
pub async fn serve(
    config: Config,
    cancel: CancellationToken,
    on_listening: impl FnOnce(SocketAddr, bool),
) -> Result<(), AppError> {
    config.validate().map_err(AppError::Config)?;
    check_exposure(&config)?;
    let tls = match &config.tls {
        None => None,
        Some(t) => {
            let certs = api::tls::Certificates::load(t).map_err(AppError::Config)?;
            let server_config = certs.server_config().map_err(AppError::Config)?;
            tokio::spawn(certs.watch(cancel.clone()));
            Some(tokio_rustls::TlsAcceptor::from(server_config))
        }
    };
    let classifier = {
        let inference = config.inference.clone();
        tokio::task::spawn_blocking(move || InferenceWorker::start(&inference))
            .await
            .map_err(|e| AppError::Config(format!("classifier start-up panicked: {e}")))??
    };
    let metrics = Arc::new(Metrics::new());
    // `[nats]`: the publisher connects in the background; start-up never waits for it.
    let (bus, bus_task) = match &config.nats {
        None => (None, None),
        Some(nats) => {
            let auth = nats.read_auth().map_err(AppError::Config)?;
            let (bus, task) = Bus::start(nats.clone(), auth, metrics.registry(), cancel.child_token());
            (Some(bus), Some(task))
        }
    };
    let services = Services {
        hub: Arc::new(Hub::default()),
        labels: Arc::new(LabelStore::with_bus(config.label_history, bus.clone())),
        classifier,
        metrics,
        rtsp: config.rtsp.clone(),
        bus,
        clustered: config.cluster.is_some(),
        whip: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| AppError::Listen { addr: config.listen.clone(), reason: e.to_string() })?;
    let addr =
        listener.local_addr().map_err(|e| AppError::Listen { addr: config.listen.clone(), reason: e.to_string() })?;

    let cluster = config.cluster.clone().map(crate::cluster::Cluster::new);
    let auth = Auth::new(config.auth.as_ref(), services.metrics.registry()).map_err(AppError::Config)?;
    let limits = api::limits::Limits::new(config.limits.clone(), services.metrics.registry());
    // env INFERCAST_UDP_LISTEN overrides [webrtc] udp_listen (containers, tests).
    let udp_listen = match std::env::var("INFERCAST_UDP_LISTEN") {
        Ok(v) if !v.trim().is_empty() => {
            crate::config::parse_udp_listen(&v).map_err(|e| AppError::Config(format!("INFERCAST_UDP_LISTEN: {e}")))?
        }
        _ => config.webrtc.udp_listen,
    };
    let sfu_config = crate::sfu::SfuConfig {
        gop_resend_bps: config.limits.gop_resend_bps,
        udp_listen,
        ..crate::sfu::SfuConfig::from(&config.webrtc)
    };
    let sfu = Arc::new(crate::sfu::Sfu::start(sfu_config, services.metrics.registry()).map_err(|e| {
        let addr = udp_listen.map_or("off".to_owned(), |a| a.to_string());
        AppError::Config(format!(
            "[webrtc] udp_listen = \"{addr}\": cannot bind: {e} (another infercast on this port? set \
                     udp_listen, or env INFERCAST_UDP_LISTEN, to a free IP:port)"
        ))
    })?);
    // Cluster mode: every camera starts in standby; the cluster loop starts
    // the ones this node's leases name.
    let cameras = crate::manage::Cameras::start(&config, services.clone(), sfu.clone(), cancel.clone())
        .map_err(AppError::Config)?;
    tokio::spawn(reload_on_sighup(cameras.clone(), cancel.clone()));
    let cluster_task = match (&cluster, &config.nats) {
        (Some(cluster), Some(nats)) => {
            let deps = crate::cluster::Deps {
                cameras: cameras.snapshot(),
                sfu: sfu.clone(),
                labels: services.labels.clone(),
                nats: nats.clone(),
                auth: nats.read_auth().map_err(AppError::Config)?,
            };
            Some(tokio::spawn(crate::cluster::run(cluster.clone(), deps, cancel.child_token())))
        }
        _ => None,
    };
    let state = AppState {
        cameras,
        cluster,
        labels: services.labels.clone(),
        metrics: services.metrics.clone(),
        sfu: sfu.clone(),
        ice_servers: Arc::new(config.webrtc.ice_servers.clone()),
        shutdown: cancel.clone(),
        auth,
        allowed_origins: Arc::new(config.http.allowed_origins.clone()),
        server_names: Arc::new(config.http.server_names.clone()),
        limits: limits.clone(),
        https: tls.is_some(),
        rooms: crate::rooms::Rooms::new(config.limits.clone()),
    };
    on_listening(addr, tls.is_some());
    let options = api::server::ServeOptions {
        header_read_timeout: Duration::from_millis(config.http.header_read_timeout_ms),
        idle_timeout: Duration::from_secs(config.http.idle_timeout_s),
        tls,
    };
    let listener =
        api::listener::CappedListener::new(listener, config.limits.http_connections, Some(limits.refusals()));
    // Open streams (SSE) end with the token; in-flight requests get a moment.
    let server = tokio::spawn(api::server::serve(
        listener,
        api::router(state),
        options,
        cancel.clone(),
        Duration::from_millis(1500),
    ));
    cancel.cancelled().await;
    if let Some(task) = cluster_task {
        // Releases this node's leases so the others take its cameras at once (≤ 1 s).
        let _ = tokio::time::timeout(Duration::from_millis(1500), task).await;
    }
    sfu.close_all().await;
    let _ = server.await;
    if let Some(task) = bus_task {
        // Its last flush is bounded (0.5 s); this is a second guard.
        let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
    }
    Ok(())
}
