//! Cameras managed at run time (admin): `POST /api/cameras` starts one,
//! `PATCH /api/cameras/{name}` tunes one without a restart, `DELETE
//! /api/cameras/{name}` stops one and ends its viewers' sessions. All persist
//! in the state file beside the config (`crate::manage`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState, ErrorBody};
use crate::config::CameraConfig;
use crate::manage::ManageError;
use crate::manage::patch::CameraPatch;
use crate::pipeline::CameraView;

/// Largest `POST`/`PATCH` body.
const BODY_BYTES: usize = 16 * 1024;

pub(super) fn manage_error(e: ManageError) -> ApiError {
    let (status, code) = match &e {
        ManageError::Clustered => (StatusCode::CONFLICT, "clustered"),
        ManageError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_camera"),
        ManageError::Exists(_) => (StatusCode::CONFLICT, "camera_exists"),
        ManageError::NotFound(_) => (StatusCode::NOT_FOUND, "camera_not_found"),
        ManageError::TooMany { .. } => (StatusCode::CONFLICT, "too_many_cameras"),
        ManageError::Persist(_) => (StatusCode::INTERNAL_SERVER_ERROR, "not_saved"),
        ManageError::Start { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "camera_not_started"),
    };
    ApiError::new(status, code, e.to_string())
}

/// A JSON body of at most [`BODY_BYTES`]. JSON only: a cross-site form
/// cannot send it without a CORS preflight, which a foreign origin fails.
fn json_body(headers: &HeaderMap, body: &[u8]) -> Result<(), ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json") {
        let message = format!("Content-Type must be application/json, not {content_type:?}");
        return Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", message));
    }
    if body.len() > BODY_BYTES {
        let message = format!("the body has {} bytes; at most {BODY_BYTES}", body.len());
        return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", message));
    }
    Ok(())
}

/// The body as a camera; the error never quotes the URL (it may carry a password).
fn camera_config(body: &[u8]) -> Result<CameraConfig, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("the body must be a JSON camera {{\"name\", \"url\", ...}}: {e}"))
    })?;
    let url = value.get("url").and_then(|u| u.as_str()).map(str::to_owned);
    serde_json::from_value(value).map_err(|e| {
        let mut message = e.to_string();
        if let Some(url) = url.filter(|u| !u.is_empty()) {
            message = message.replace(&url, "(url)");
        }
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_camera", format!("camera: {message}"))
    })
}

#[utoipa::path(post, path = "/api/cameras", tag = "cameras", security(("bearer" = [])),
    request_body(content = CameraConfig, content_type = "application/json",
        description = "A camera as in the config's `[[camera]]` (`name` and `url` required; `${VAR}` is not expanded)"),
    responses((status = 201, description = "Started (`Location`: the camera); persisted in the state file beside the config", body = CameraView),
        (status = 400, description = "Not JSON", body = ErrorBody),
        (status = 403, description = "Not admin", body = ErrorBody),
        (status = 409, description = "A camera of that name exists (`camera_exists`), `[limits] cameras` reached \
            (`too_many_cameras`), or cluster mode (`clustered`)", body = ErrorBody),
        (status = 413, description = "Body over 16 KiB"),
        (status = 415, description = "Not `Content-Type: application/json`", body = ErrorBody),
        (status = 422, description = "Not a valid camera: unknown field, bad name, URL or range (`invalid_camera`)", body = ErrorBody),
        (status = 500, description = "Started but not saved (`not_saved`), or could not start", body = ErrorBody)))]
pub(super) async fn add(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    json_body(&headers, &body)?;
    let config = camera_config(&body)?;
    let name = config.name.clone();
    let camera = state.cameras.add(config).await.map_err(manage_error)?;
    let mut r = (StatusCode::CREATED, Json(super::view(&state, &camera))).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/cameras/{name}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Ok(r)
}

#[utoipa::path(patch, path = "/api/cameras/{name}", tag = "cameras", security(("bearer" = [])),
    params(("name" = String, Path, description = "Camera name")),
    request_body(content = CameraPatch, content_type = "application/json",
        description = "Any of the five tunable settings; absent ones stay"),
    responses((status = 200, description = "Applied without a restart (viewers stay): `classify_fps` and \
            `encode_annotated` at once, `annotated_bitrate_bps` from the next encoded frame, `annotated_fps` and \
            `annotated_scale` at the annotated track's next IDR; persisted", body = CameraView),
        (status = 400, description = "Not JSON", body = ErrorBody),
        (status = 403, description = "Not admin", body = ErrorBody),
        (status = 404, description = "No such camera (`camera_not_found`)", body = ErrorBody),
        (status = 409, description = "Cluster mode (`clustered`)", body = ErrorBody),
        (status = 413, description = "Body over 16 KiB"),
        (status = 415, description = "Not `Content-Type: application/json`", body = ErrorBody),
        (status = 422, description = "Unknown field, wrong type or value out of range (`invalid_camera`); nothing changed", body = ErrorBody),
        (status = 500, description = "Applied but not saved (`not_saved`)", body = ErrorBody)))]
pub(super) async fn tune(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    json_body(&headers, &body)?;
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be a JSON object of settings {{\"annotated_bitrate_bps\", ...}}: {e}"
        ))
    })?;
    let patch: CameraPatch = serde_json::from_value(value).map_err(|e| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_camera", format!("camera {name:?}: {e}"))
    })?;
    let camera = state.cameras.patch(&name, &patch).await.map_err(manage_error)?;
    Ok(Json(super::view(&state, &camera)))
}

#[utoipa::path(delete, path = "/api/cameras/{name}", tag = "cameras", security(("bearer" = [])),
    params(("name" = String, Path, description = "Camera name")),
    responses((status = 204, description = "Stopped: its viewer sessions ended, its labels forgotten; persisted"),
        (status = 403, description = "Not admin", body = ErrorBody),
        (status = 404, description = "No such camera (`camera_not_found`)", body = ErrorBody),
        (status = 409, description = "Cluster mode (`clustered`)", body = ErrorBody),
        (status = 500, description = "Stopped but not saved (`not_saved`)", body = ErrorBody)))]
pub(super) async fn remove(State(state): State<AppState>, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    state.cameras.remove(&name).await.map_err(manage_error)?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_camera_body_never_quotes_its_url() {
        let e = camera_config(br#"{"name": "gate", "url": "rtsp://u:secret@h/", "decoder": "rtsp://u:secret@h/"}"#)
            .expect_err("decoder is not a URL");
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(!e.message.contains("secret") && e.message.contains("(url)"), "{}", e.message);
        let e = camera_config(br#"{"name": "gate", "url": "rtsp://h/", "fps": 3}"#).expect_err("unknown field");
        assert!(e.message.contains("fps"), "{}", e.message);
        assert_eq!(camera_config(b"{").expect_err("not JSON").status, StatusCode::BAD_REQUEST);
        assert_eq!(camera_config(br#"{"name": "gate", "url": "rtsp://h/"}"#).map(|c| c.classify_fps).ok(), Some(5.0));
    }
}
