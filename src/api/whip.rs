//! WHIP (RFC 9726): `POST /whip/{camera}` with an SDP offer carrying H.264
//! video makes the publisher the camera's source (a configured `whip:`
//! camera, or a new one with the default settings that goes with the
//! session); `DELETE` on the `Location` ends it. Admin only. The access
//! units go through the camera's pipeline like an RTSP camera's: decode,
//! classify, overlay, annotated encode, raw forwarded to WHEP viewers.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::cameras::manage_error;
use super::whep::{SDP, ice_server_links, sfu_error};
use super::{ApiError, AppState, ErrorBody};

/// The WHIP routes (merged into the API router).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(publish, preflight))
        .routes(routes!(unpublish))
        .layer(axum::extract::DefaultBodyLimit::max(super::limits::WHEP_BODY_BYTES))
}

/// `OPTIONS`: what the endpoint accepts (CORS headers, for allowed origins
/// only, come from the auth guard).
#[utoipa::path(options, path = "/whip/{camera}", tag = "whip",
    params(("camera" = String, Path, description = "Camera name")),
    responses((status = 204, description = "`Accept-Post: application/sdp`; CORS headers for allowed origins")))]
async fn preflight() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert("accept-post", HeaderValue::from_static(SDP));
    r
}

/// `POST` an SDP offer: the publisher becomes the camera's source.
#[utoipa::path(post, path = "/whip/{camera}", tag = "whip", security(("bearer" = [])),
    params(("camera" = String, Path, description = "Camera name: a configured `whip:` camera, or a new name \
        (a camera with the default settings is started, and removed with the session)")),
    request_body(content = String, content_type = "application/sdp",
        description = "SDP offer sending H.264 video, packetization-mode 1 (≤ 64 KiB, ≤ 16 media sections, ≤ 256 formats)"),
    responses(
        (status = 201, description = "SDP answer with every candidate; `Location` (the session, for DELETE), \
            `Link: <…>; rel=\"ice-server\"` for each configured STUN/TURN server", content_type = "application/sdp", body = String),
        (status = 400, description = "Not SDP, or malformed", body = ErrorBody),
        (status = 401, description = "No credential"),
        (status = 403, description = "Not an admin"),
        (status = 406, description = "No H.264 in packetization-mode 1 offered, or no video sent", body = ErrorBody),
        (status = 409, description = "The camera has a publisher already (`already_publishing`), is not a `whip:` camera \
            (`not_a_whip_camera`), too many cameras run, or cluster mode", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB"),
        (status = 415, description = "Content-Type is not application/sdp", body = ErrorBody),
        (status = 422, description = "Not a valid camera name", body = ErrorBody)))]
async fn publish(
    State(state): State<AppState>,
    Path(camera): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match publish_inner(&state, &camera, &headers, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn publish_inner(state: &AppState, camera: &str, headers: &HeaderMap, body: &[u8]) -> Result<Response, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case(SDP) {
        let message = format!("Content-Type must be {SDP}, not {content_type:?}");
        return Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", message));
    }
    let offer = std::str::from_utf8(body).map_err(|_| ApiError::bad_request("the SDP offer is not UTF-8"))?;
    if offer.trim().is_empty() {
        return Err(ApiError::bad_request("empty SDP offer"));
    }
    // A bad offer is refused before the camera notices anything.
    crate::sfu::Sfu::check_publisher_offer(offer).map_err(sfu_error)?;
    let created = match state.cameras.get(camera) {
        Some(cam) => {
            if cam.status().url != "whip:" {
                let message = format!("camera {camera:?} is not a WHIP camera (its url is not `whip:`)");
                return Err(ApiError::new(StatusCode::CONFLICT, "not_a_whip_camera", message));
            }
            false
        }
        None => {
            state.cameras.add_published(camera).await.map_err(manage_error)?;
            true
        }
    };
    let feeds = state.cameras.whip();
    let (id, link) = match feeds.publish(camera) {
        Ok(p) => p,
        Err(busy) => return Err(ApiError::new(StatusCode::CONFLICT, "already_publishing", busy.to_string())),
    };
    let answer = match state.sfu.accept_publisher(camera, offer, link).await {
        Ok(a) => a,
        Err(e) => {
            feeds.end(camera, &id);
            if created {
                state.cameras.remove_published(camera).await;
            }
            return Err(sfu_error(e));
        }
    };
    tracing::info!(camera, session = %id, "WHIP publisher session created");
    let mut r = (StatusCode::CREATED, answer).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP));
    if let Ok(v) = HeaderValue::from_str(&format!("/whip/{camera}/{id}")) {
        h.insert(header::LOCATION, v);
    }
    for link in ice_server_links(&state.ice_servers) {
        h.append(header::LINK, link);
    }
    Ok(r)
}

/// `DELETE` the publisher's session: it ends, the camera turns
/// `reconnecting` (a configured one) or goes (one the POST started).
#[utoipa::path(delete, path = "/whip/{camera}/{session}", tag = "whip", security(("bearer" = [])),
    params(("camera" = String, Path, description = "Camera name"),
        ("session" = String, Path, description = "Session id from the `Location` of the 201")),
    responses((status = 200, description = "Session ended"),
        (status = 404, description = "No such live session", body = ErrorBody)))]
async fn unpublish(State(state): State<AppState>, Path((camera, session)): Path<(String, String)>) -> Response {
    if !state.cameras.whip().end(&camera, &session) {
        let message = format!("no live WHIP session {session:?} for camera {camera:?}");
        return ApiError::new(StatusCode::NOT_FOUND, "session_not_found", message).into_response();
    }
    tracing::info!(camera, session, "WHIP publisher session deleted");
    state.cameras.remove_published(&camera).await;
    StatusCode::OK.into_response()
}
