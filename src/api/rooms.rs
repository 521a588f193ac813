//! A camera's room over HTTP: `GET /api/cameras/{name}/viewers`, the chat
//! history and `POST` at `/api/cameras/{name}/chat`, and the room's events
//! (history first, then live chat, joins and leaves) as Server-Sent Events
//! at `/api/cameras/{name}/chat/stream`. Limits are the rooms' own
//! (`crate::rooms`) and the label streams' SSE cap.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::Stream;
use serde::Deserialize;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState, ErrorBody, limits};
use crate::auth::{Principal, Role};
use crate::rooms::{ChatError, RoomEvent, ViewerInfo};

/// The room routes (merged into the API router).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(viewers))
        .routes(routes!(history, post))
        .routes(routes!(stream))
        .layer(axum::extract::DefaultBodyLimit::max(16 * 1024))
}

/// A chat message as posted.
#[derive(Deserialize, utoipa::ToSchema)]
struct ChatPost {
    /// Display name (trimmed, control characters removed, ≤ 40 characters).
    name: String,
    /// The message, plain text (≤ `[limits] chat_message_chars`).
    text: String,
}

#[utoipa::path(get, path = "/api/cameras/{name}/viewers", tag = "rooms", security(("bearer" = [])),
    params(("name" = String, Path, description = "Camera name")),
    responses((status = 200, description = "The camera's viewer sessions on this node, oldest first (`ip` for admins only)",
        body = [ViewerInfo]), (status = 404, description = "No such camera", body = ErrorBody)))]
async fn viewers(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Extension(who): Extension<Principal>,
) -> Result<Json<Vec<ViewerInfo>>, ApiError> {
    state.camera(&name)?;
    Ok(Json(state.rooms.viewers(&name, who.role == Role::Admin)))
}

#[utoipa::path(get, path = "/api/cameras/{name}/chat", tag = "rooms", security(("bearer" = [])),
    params(("name" = String, Path, description = "Camera name")),
    responses((status = 200, description = "The room's chat messages, oldest first (`[limits] chat_history`)",
        body = [RoomEvent]), (status = 404, description = "No such camera", body = ErrorBody)))]
async fn history(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<Arc<RoomEvent>>>, ApiError> {
    state.camera(&name)?;
    Ok(Json(state.rooms.history(&name)))
}

#[utoipa::path(post, path = "/api/cameras/{name}/chat", tag = "rooms", security(("bearer" = [])),
    params(("name" = String, Path, description = "Camera name")),
    request_body(content = ChatPost, content_type = "application/json"),
    responses((status = 201, description = "Posted: the message as the room shows it", body = RoomEvent),
        (status = 400, description = "Not JSON `{name, text}`, or an empty message", body = ErrorBody),
        (status = 404, description = "No such camera", body = ErrorBody),
        (status = 413, description = "Body over 16 KiB"),
        (status = 422, description = "Longer than `[limits] chat_message_chars` (`message_too_long`)", body = ErrorBody),
        (status = 429, description = "Over `[limits] chat_messages_per_10s` from this address (`Retry-After`)", body = ErrorBody)))]
async fn post(
    State(state): State<AppState>,
    Path(name): Path<String>,
    client: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    state.camera(&name)?;
    let message: ChatPost = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body must be JSON {{\"name\", \"text\"}}: {e}")))?;
    let ip = client.map_or(std::net::Ipv4Addr::LOCALHOST.into(), |c| c.0.0.ip());
    match state.rooms.post(&name, &message.name, &message.text, ip) {
        Ok(event) => Ok((StatusCode::CREATED, Json(event)).into_response()),
        Err(e @ ChatError::Invalid(_)) => Err(ApiError::bad_request(e.to_string())),
        Err(e @ ChatError::TooLong { .. }) => {
            Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "message_too_long", e.to_string()))
        }
        Err(e @ ChatError::RateLimited { retry_after_s, .. }) => {
            let mut r =
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "chat_rate_limited", e.to_string()).into_response();
            if let Ok(v) = HeaderValue::from_str(&retry_after_s.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            Ok(r)
        }
    }
}

#[utoipa::path(get, path = "/api/cameras/{name}/chat/stream", tag = "rooms", security(("bearer" = []), ("session_cookie" = [])),
    params(("name" = String, Path, description = "Camera name")),
    responses((status = 200, description = "Server-Sent Events: the history, then every `chat`, `join` and `leave` \
        (JSON `RoomEvent`, the event name is its `type`), a keep-alive comment every 15 s", content_type = "text/event-stream", body = String),
        (status = 404, description = "No such camera", body = ErrorBody),
        (status = 503, description = "`[limits] sse_streams` reached (`Retry-After`)", body = ErrorBody)))]
async fn stream(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Response> {
    state.camera(&name).map_err(IntoResponse::into_response)?;
    let slot = state.limits.sse().map_err(|r: limits::Refused| r.into_response())?;
    let (past, live) = state.rooms.subscribe(&name);
    let to_event = |e: &RoomEvent| {
        let kind = match e {
            RoomEvent::Chat { .. } => "chat",
            RoomEvent::Join { .. } => "join",
            RoomEvent::Leave { .. } => "leave",
        };
        Event::default().event(kind).json_data(e).ok().map(Ok)
    };
    let past = tokio_stream::iter(past.into_iter().filter_map(move |e| to_event(&e)));
    // A client that lags skips what it missed; the next event still arrives.
    let live = BroadcastStream::new(live).filter_map(move |r| r.ok().and_then(|e| to_event(&e)));
    let shutdown = state.shutdown.clone().cancelled_owned();
    let events = futures::StreamExt::take_until(past.chain(live), shutdown).map(move |e| {
        let _held = &slot;
        e
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
