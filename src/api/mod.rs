//! The HTTP API (axum): cameras, snapshots, labels (REST and Server-Sent
//! Events), WHEP, the viewer page, health and Prometheus metrics. `router(state)` builds it all in
//! one place.

mod cameras;
mod error;
mod label_offsets;
pub mod limits;
pub mod listener;
pub mod openapi;
mod rooms;
pub mod server;
mod snapshot;
pub mod tls;
mod viewer;
mod whep;
mod whip;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use futures::Stream;
use serde::Deserialize;
use serde_json::json;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use self::error::{ApiError, ErrorBody};
use crate::auth::layer::{Guard, SESSION_COOKIE};
use crate::auth::{self, Auth, Principal};
use crate::cluster::ClusterInfo;
use crate::labels::{Label, LabelStore};
use crate::pipeline::{Camera, CameraState, CameraView};
use crate::telemetry::Metrics;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// This node's cameras (changed at run time: `POST`/`DELETE /api/cameras`, SIGHUP).
    pub cameras: Arc<crate::manage::Cameras>,
    /// `[cluster]`: who pulls which camera; `None` on a single node.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
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
    /// Every camera's room: viewers, chat.
    pub rooms: Arc<crate::rooms::Rooms>,
}

impl AppState {
    fn camera(&self, name: &str) -> Result<Arc<Camera>, ApiError> {
        self.cameras.get(name).ok_or_else(|| ApiError::camera_not_found(name))
    }
}

/// The whole HTTP surface, every route behind the auth and CORS guard.
pub fn router(state: AppState) -> Router {
    // The page of one cluster node may call the others (WHEP after a redirect).
    let member_origin = state.cluster.clone().map(|c| {
        let f: auth::layer::OriginCheck = Arc::new(move |origin: &str| c.is_member_origin(origin));
        f
    });
    let guard = Guard {
        auth: state.auth.clone(),
        allowed_origins: state.allowed_origins.clone(),
        server_names: state.server_names.clone(),
        member_origin,
    };
    Router::from(routes())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(guard, auth::layer::guard))
}

/// Every route with its OpenAPI description: routes are registered only
/// here, through `routes!`, so none can exist undocumented.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(list_cameras, cameras::add))
        .routes(routes!(get_camera, cameras::tune, cameras::remove))
        .routes(routes!(cluster_info))
        .routes(routes!(snapshot::snapshot))
        .routes(routes!(latest_labels))
        .routes(routes!(label_stream))
        .routes(routes!(label_history))
        .routes(routes!(index))
        .routes(routes!(healthz))
        .routes(routes!(ready))
        .routes(routes!(metrics))
        .routes(routes!(openapi::document))
        .merge(whep::routes())
        .merge(whip::routes())
        .merge(rooms::routes())
        .merge(label_offsets::routes())
        .merge(viewer::routes())
}

/// `POST /api/login` with `Authorization: Bearer`: a session cookie (HttpOnly,
/// SameSite=Strict, 12 h) for what cannot send the header (the page's
/// EventSource). 204; 400 without a token.
#[utoipa::path(post, path = "/api/login", tag = "auth", security(("bearer" = [])),
    responses((status = 204, description = "Session cookie set (`Set-Cookie`, HttpOnly, SameSite=Strict)"),
        (status = 400, description = "No bearer token sent", body = ErrorBody),
        (status = 401, description = "Token not accepted", body = ErrorBody)))]
async fn login(State(state): State<AppState>, Extension(who): Extension<Principal>) -> Response {
    if !state.auth.enabled() {
        return StatusCode::NO_CONTENT.into_response();
    }
    if !who.authenticated {
        return ApiError::bad_request("send the token as Authorization: Bearer to log in").into_response();
    }
    let id = state.auth.open_session(&who);
    set_session_cookie(&id, crate::auth::SESSION_TTL_S, state.https)
}

/// `POST /api/logout`: ends the session and clears its cookie. 204.
#[utoipa::path(post, path = "/api/logout", tag = "auth",
    responses((status = 204, description = "Session ended, cookie cleared")))]
async fn logout(State(state): State<AppState>, headers: header::HeaderMap) -> Response {
    if let Some(id) = auth::layer::cookie(&headers, SESSION_COOKIE) {
        state.auth.close_session(id);
    }
    set_session_cookie("", 0, state.https)
}

/// 204 setting the session cookie to `value` for `max_age_s` (0 clears it):
/// HttpOnly, SameSite=Strict, and Secure when served over HTTPS.
fn set_session_cookie(value: &str, max_age_s: u64, https: bool) -> Response {
    let secure = if https { "; Secure" } else { "" };
    let cookie = format!("{SESSION_COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age_s}{secure}");
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = header::HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// A camera as `/api/cameras` shows it. In cluster mode: the status the
/// pulling node publishes, with `node` and `node_url`; a camera between
/// nodes shows this node's `standby` status and `node` = the new holder, if
/// any.
fn view(state: &AppState, camera: &Camera) -> serde_json::Value {
    let Some(cluster) = &state.cluster else { return serde_json::to_value(camera.view()).unwrap_or_default() };
    let owner = cluster.owner(&camera.name);
    let mut json = match cluster.remote_view(&camera.name) {
        Some(remote) if !camera.is_active() => remote,
        _ => serde_json::to_value(camera.view()).unwrap_or_default(),
    };
    if let Some(map) = json.as_object_mut() {
        let (node, url) = owner.map_or((None, None), |(n, u)| (Some(n), Some(u)));
        map.insert("node".into(), node.into());
        map.insert("node_url".into(), url.into());
    }
    json
}

#[utoipa::path(get, path = "/api/cameras", tag = "cameras", security(("bearer" = [])),
    responses((status = 200, description = "Every camera the caller may see (in cluster mode: of the whole cluster, \
        with the node that pulls each)", body = [CameraView])))]
async fn list_cameras(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
) -> Json<Vec<serde_json::Value>> {
    Json(state.cameras.list().iter().filter(|c| who.may_see(&c.name)).map(|c| view(&state, c)).collect())
}

#[utoipa::path(get, path = "/api/cameras/{name}", tag = "cameras", security(("bearer" = [])),
    params(("name" = String, Path, description = "Camera name")),
    responses((status = 200, description = "The camera", body = CameraView),
        (status = 404, description = "No such camera (`camera_not_found`)", body = ErrorBody)))]
async fn get_camera(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let camera = state.camera(&name)?;
    Ok(Json(view(&state, &camera)))
}

/// `GET /api/cluster`: this node, the live nodes, who holds which camera.
#[utoipa::path(get, path = "/api/cluster", tag = "cameras", security(("bearer" = [])),
    responses((status = 200, description = "This node, the live members and the camera leases", body = ClusterInfo),
        (status = 404, description = "Not in cluster mode (`not_clustered`)", body = ErrorBody)))]
async fn cluster_info(State(state): State<AppState>) -> Result<Json<ClusterInfo>, ApiError> {
    let cluster = state.cluster.as_ref().ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "not_clustered", "this node runs alone (no [cluster] in its config)")
    })?;
    Ok(Json(cluster.info()))
}

#[utoipa::path(get, path = "/api/labels", tag = "labels", security(("bearer" = [])),
    responses((status = 200, description = "The latest label of every camera the caller may see", body = [Label])))]
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

#[utoipa::path(get, path = "/api/labels/{camera}", tag = "labels", security(("bearer" = [])),
    params(("camera" = String, Path, description = "Camera name"),
        ("since" = Option<String>, Query, description = "RFC 3339 time: only labels captured after it"),
        ("limit" = Option<usize>, Query, description = "Most labels returned, newest kept (1..=1000, default 100)")),
    responses((status = 200, description = "Labels, oldest first", body = [Label]),
        (status = 400, description = "Bad `since` or `limit`", body = ErrorBody),
        (status = 404, description = "No such camera", body = ErrorBody)))]
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

#[utoipa::path(get, path = "/api/labels/stream", tag = "labels", security(("bearer" = []), ("session_cookie" = [])),
    responses((status = 200, description = "Server-Sent Events: one `label` event (JSON `Label`) per classification, \
        a keep-alive comment every 15 s", content_type = "text/event-stream", body = String),
        (status = 503, description = "`[limits] sse_streams` reached (`Retry-After`)", body = ErrorBody)))]
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

/// `GET /healthz`: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "service",
    responses((status = 200, description = "`{\"status\":\"ok\"}`", body = serde_json::Value)))]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /api`: what this server offers.
#[utoipa::path(get, path = "/api", tag = "service", security(("bearer" = [])),
    responses((status = 200, description = "Name, version, the caller's cameras and every endpoint (from this document)",
        body = serde_json::Value)))]
async fn index(State(state): State<AppState>, Extension(who): Extension<Principal>) -> Json<serde_json::Value> {
    Json(json!({
        "name": "infercast",
        "version": env!("CARGO_PKG_VERSION"),
        "cameras": state.cameras.list().iter().map(|c| c.name.clone()).filter(|c| who.may_see(c)).collect::<Vec<_>>(),
        "openapi": "/api/openapi.json",
        "endpoints": openapi::endpoints(),
    }))
}

#[utoipa::path(get, path = "/readyz", tag = "service",
    responses((status = 200, description = "Ready: camera counts by state", body = serde_json::Value)))]
async fn ready(State(state): State<AppState>) -> Response {
    let states: Vec<CameraState> = state.cameras.list().iter().map(|c| c.status().state).collect();
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

#[utoipa::path(get, path = "/metrics", tag = "service", security(("bearer" = [])),
    responses((status = 200, description = "Prometheus text format; needs the admin role or a loopback client",
        content_type = "text/plain", body = String),
        (status = 403, description = "Not admin", body = ErrorBody)))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}
