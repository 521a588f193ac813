//! The HTTP API (axum): cameras, snapshots, labels (REST and Server-Sent
//! Events), WHEP, the viewer page, health and Prometheus metrics. `router(state)` builds it all in
//! one place.

mod error;
pub mod limits;
pub mod listener;
pub mod server;
mod snapshot;
pub mod tls;
mod viewer;
mod whep;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

pub use self::error::ApiError;
use crate::auth::layer::{Guard, SESSION_COOKIE};
use crate::auth::{self, Auth, Principal};
use crate::hub::TrackKind;
use crate::labels::{Label, LabelStore};
use crate::pipeline::{Camera, CameraState, CameraStatus};
use crate::telemetry::Metrics;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub cameras: Arc<BTreeMap<String, Arc<Camera>>>,
    pub labels: Arc<LabelStore>,
    pub metrics: Arc<Metrics>,
    /// WebRTC viewer sessions (WHEP).
    pub sfu: Arc<crate::sfu::Sfu>,
    /// STUN/TURN servers for the viewer page (`[webrtc] ice_servers`).
    pub ice_servers: Arc<Vec<crate::config::IceServer>>,
    /// Ends long-lived responses (SSE) at shutdown.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Tokens, roles, sessions (`[auth]`).
    pub auth: Auth,
    /// `[http] allowed_origins` (CORS).
    pub allowed_origins: Arc<Vec<String>>,
    /// `[http] server_names` (DNS-rebinding defence for credential-less requests).
    pub server_names: Arc<Vec<String>>,
    /// `[limits]` and their counters.
    pub limits: limits::Limits,
    /// Served over HTTPS (`[tls]`): the session cookie is marked `Secure`.
    pub https: bool,
}

impl AppState {
    fn camera(&self, name: &str) -> Result<&Arc<Camera>, ApiError> {
        self.cameras.get(name).ok_or_else(|| ApiError::camera_not_found(name))
    }
}

/// The whole HTTP surface, every route behind the auth and CORS guard.
pub fn router(state: AppState) -> Router {
    let guard = Guard {
        auth: state.auth.clone(),
        allowed_origins: state.allowed_origins.clone(),
        server_names: state.server_names.clone(),
    };
    Router::new()
        .route("/api/login", post(login))
        .route("/api/logout", post(logout))
        .route("/api/cameras", get(list_cameras))
        .route("/api/cameras/{name}", get(get_camera))
        .route("/api/cameras/{name}/snapshot.jpg", get(snapshot::snapshot))
        .route("/api/labels", get(latest_labels))
        .route("/api/labels/stream", get(label_stream))
        .route("/api/labels/{camera}", get(label_history))
        .route("/api", get(index))
        .route("/healthz", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .merge(whep::routes())
        .merge(viewer::routes())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(guard, auth::layer::guard))
}

/// `POST /api/login` with `Authorization: Bearer`: a session cookie (HttpOnly,
/// SameSite=Strict, 12 h) for what cannot send the header (the page's
/// EventSource). 204; 400 without a token.
async fn login(State(state): State<AppState>, Extension(who): Extension<Principal>) -> Response {
    if !state.auth.enabled() {
        return StatusCode::NO_CONTENT.into_response();
    }
    if !who.authenticated {
        return ApiError::bad_request("send the token as Authorization: Bearer to log in").into_response();
    }
    let id = state.auth.open_session(&who);
    let secure = if state.https { "; Secure" } else { "" };
    let cookie = format!(
        "{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
        crate::auth::SESSION_TTL_S
    );
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = header::HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// `POST /api/logout`: ends the session and clears its cookie. 204.
async fn logout(State(state): State<AppState>, headers: header::HeaderMap) -> Response {
    let secure = if state.https { "; Secure" } else { "" };
    if let Some(id) = auth::layer::cookie(&headers, SESSION_COOKIE) {
        state.auth.close_session(id);
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    let clear = format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{secure}");
    if let Ok(v) = header::HeaderValue::from_str(&clear) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// A camera as `/api/cameras` shows it: status plus viewers per track.
#[derive(Serialize)]
struct CameraView {
    #[serde(flatten)]
    status: CameraStatus,
    viewers: BTreeMap<&'static str, usize>,
}

fn view(camera: &Camera) -> CameraView {
    let viewers = [TrackKind::Raw, TrackKind::Annotated]
        .into_iter()
        .map(|k| (k.as_str(), camera.tracks.track(k).subscriber_count()))
        .collect();
    CameraView { status: camera.status(), viewers }
}

async fn list_cameras(State(state): State<AppState>, Extension(who): Extension<Principal>) -> Json<Vec<CameraView>> {
    Json(state.cameras.values().filter(|c| who.may_see(&c.name)).map(|c| view(c)).collect())
}

async fn get_camera(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<CameraView>, ApiError> {
    Ok(Json(view(state.camera(&name)?)))
}

async fn latest_labels(State(state): State<AppState>, Extension(who): Extension<Principal>) -> Json<Vec<Arc<Label>>> {
    Json(state.labels.latest_all().into_iter().filter(|l| who.may_see(&l.camera)).collect())
}

#[derive(Deserialize)]
struct HistoryQuery {
    /// RFC 3339 time: only labels captured after it.
    since: Option<String>,
    /// Most labels returned (newest kept), default 100, at most 1000.
    limit: Option<usize>,
}

async fn label_history(
    State(state): State<AppState>,
    Path(camera): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Result<Json<Vec<Arc<Label>>>, ApiError> {
    state.camera(&camera)?;
    let since = match q.since.as_deref() {
        None => None,
        Some(s) => Some(
            DateTime::parse_from_rfc3339(s)
                .map_err(|e| ApiError::bad_request(format!("since={s:?} is not an RFC 3339 time ({e})")))?
                .with_timezone(&Utc),
        ),
    };
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad_request(format!("limit={limit} is out of range 1..=1000")));
    }
    Ok(Json(state.labels.history(&camera, since, limit)))
}

async fn label_stream(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, limits::Refused> {
    let slot = state.limits.sse()?;
    let shutdown = state.shutdown.clone().cancelled_owned();
    let labels = BroadcastStream::new(state.labels.subscribe()).filter_map(move |r| {
        // A lagging client skips labels it missed; the next one still arrives.
        let label = r.ok()?;
        if !who.may_see(&label.camera) {
            return None;
        }
        Event::default().event("label").json_data(&*label).ok().map(Ok)
    });
    // The slot lives as long as the stream: freed when the client goes.
    let stream = futures::StreamExt::take_until(labels, shutdown).map(move |e| {
        let _held = &slot;
        e
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// `GET /api`: what this server offers.
async fn index(State(state): State<AppState>, Extension(who): Extension<Principal>) -> Json<serde_json::Value> {
    Json(json!({
        "name": "infercast",
        "version": env!("CARGO_PKG_VERSION"),
        "cameras": state.cameras.keys().filter(|c| who.may_see(c)).collect::<Vec<_>>(),
        "endpoints": [
            "GET /api/cameras", "GET /api/cameras/{name}", "GET /api/cameras/{name}/snapshot.jpg[?track=raw]",
            "GET /api/labels", "GET /api/labels/{camera}?since=&limit=", "GET /api/labels/stream (SSE)",
            "POST /whep/{camera}/{raw|annotated} (WHEP)", "GET /api/webrtc", "GET / (viewer page)",
            "GET /healthz", "GET /readyz", "GET /metrics", "POST /api/login", "POST /api/logout"
        ]
    }))
}

async fn ready(State(state): State<AppState>) -> Response {
    let states: Vec<CameraState> = state.cameras.values().map(|c| c.status().state).collect();
    let streaming = states.iter().filter(|&&s| s == CameraState::Streaming).count();
    let degraded = states.iter().filter(|&&s| s == CameraState::Degraded).count();
    Json(json!({
        "status": "ready",
        "cameras": state.cameras.len(),
        "cameras_streaming": streaming,
        "cameras_degraded": degraded,
    }))
    .into_response()
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}
