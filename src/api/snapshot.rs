//! `GET /api/cameras/{name}/snapshot.jpg[?track=raw]`: the next decoded frame as JPEG.

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::hub::TrackKind;
use crate::media::{VideoFrame, yuv_to_rgb};
use crate::pipeline::SnapshotError;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SnapshotQuery {
    /// `raw` for the plain picture; default the annotated one (with the label).
    track: Option<String>,
}

/// `GET /api/cameras/{name}/snapshot.jpg`: the next decoded picture as JPEG.
#[utoipa::path(get, path = "/api/cameras/{name}/snapshot.jpg", tag = "cameras", security(("bearer" = [])),
    params(("name" = String, Path, description = "Camera name"), SnapshotQuery),
    responses((status = 200, description = "JPEG, quality 85", content_type = "image/jpeg", body = Vec<u8>),
        (status = 404, description = "No such camera", body = super::ErrorBody),
        (status = 503, description = "Camera not streaming, or `snapshots_in_flight_per_camera` reached", body = super::ErrorBody),
        (status = 504, description = "No picture in time", body = super::ErrorBody)))]
pub async fn snapshot(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<SnapshotQuery>,
) -> Result<Response, ApiError> {
    let camera = state.camera(&name)?;
    let _slot = match state.limits.snapshot(&name) {
        Ok(slot) => slot,
        Err(refused) => return Ok(refused.into_response()),
    };
    let track = match q.track.as_deref() {
        None => TrackKind::Annotated,
        Some(t) => TrackKind::parse(t)
            .ok_or_else(|| ApiError::bad_request(format!("track={t:?}: use `raw` or `annotated`")))?,
    };
    let frame = camera.snapshot(track).await.map_err(|e| match e {
        SnapshotError::NotStreaming(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "camera_not_streaming", e.to_string())
        }
        SnapshotError::Timeout => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "snapshot_timeout", e.to_string()),
    })?;
    let jpeg = tokio::task::spawn_blocking(move || encode_jpeg(&frame))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "jpeg_encode", e))?;
    Ok(([(header::CONTENT_TYPE, "image/jpeg"), (header::CACHE_CONTROL, "no-store")], jpeg).into_response())
}

/// I420 → RGB → JPEG (quality 85).
pub fn encode_jpeg(frame: &VideoFrame) -> Result<Vec<u8>, String> {
    let (w, h) = (frame.width as usize, frame.height as usize);
    let mut rgb = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let luma = f32::from(frame.y[y * frame.y_stride + x]);
            let ci = (y / 2) * frame.uv_stride + x / 2;
            let [r, g, b] = yuv_to_rgb(luma, f32::from(frame.u[ci]), f32::from(frame.v[ci]));
            rgb.extend([r as u8, g as u8, b as u8]);
        }
    }
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .encode(&rgb, frame.width, frame.height, image::ExtendedColorType::Rgb8)
        .map_err(|e| e.to_string())?;
    Ok(out)
}
