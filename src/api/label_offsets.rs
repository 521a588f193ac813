//! `POST /api/cameras/{name}/label-offsets`: the viewer page's sample of the
//! label-to-frame offsets it measured (how far each frame it drew a label on
//! lies after the frame that label was computed from), into
//! `infercast_viewer_label_offset_seconds{camera}`. Bounded: a small body,
//! at most [`MAX_OFFSETS`] values, each within `0..=`[`MAX_OFFSET_MS`].

use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState, ErrorBody};

/// Most offsets one POST may carry.
pub const MAX_OFFSETS: usize = 50;
/// Largest offset accepted, ms (a label a minute older than its frame is no
/// measurement of drift but of a stalled page).
pub const MAX_OFFSET_MS: f64 = 60_000.0;
/// Largest body, bytes (50 numbers fit in well under 2 KiB).
const BODY_BYTES: usize = 4 * 1024;

/// The route (merged into the API router).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(post)).layer(axum::extract::DefaultBodyLimit::max(BODY_BYTES))
}

/// A sample of a page's measurements.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct OffsetSample {
    /// Label-to-frame offsets, ms, each `0..=60000` (0: the label of that very
    /// frame), at most 50.
    offsets_ms: Vec<f64>,
}

#[utoipa::path(post, path = "/api/cameras/{name}/label-offsets", tag = "labels", security(("bearer" = [])),
    params(("name" = String, Path, description = "Camera name")),
    request_body(content = OffsetSample, content_type = "application/json"),
    responses((status = 204, description = "Recorded in `infercast_viewer_label_offset_seconds{camera}`"),
        (status = 400, description = "Not JSON `{\"offsets_ms\": [numbers]}`", body = ErrorBody),
        (status = 404, description = "No such camera", body = ErrorBody),
        (status = 413, description = "Body over 4 KiB"),
        (status = 422, description = "More than 50 offsets, or one outside 0..=60000 ms (`bad_offsets`)", body = ErrorBody)))]
async fn post(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    state.camera(&name)?;
    let sample: OffsetSample = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body must be JSON {{\"offsets_ms\": [numbers]}}: {e}")))?;
    let offsets_s = checked(&sample.offsets_ms)
        .map_err(|message| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_offsets", message))?;
    state.metrics.viewer_label_offsets(&name, offsets_s);
    Ok(StatusCode::NO_CONTENT)
}

/// The offsets in seconds, or what is wrong with them.
fn checked(offsets_ms: &[f64]) -> Result<Vec<f64>, String> {
    if offsets_ms.len() > MAX_OFFSETS {
        return Err(format!("{} offsets sent, at most {MAX_OFFSETS} allowed", offsets_ms.len()));
    }
    offsets_ms
        .iter()
        .enumerate()
        .map(|(i, &ms)| {
            if (0.0..=MAX_OFFSET_MS).contains(&ms) {
                Ok(ms / 1e3)
            } else {
                Err(format!("offsets_ms[{i}] = {ms} is outside 0..={MAX_OFFSET_MS} ms"))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_converted_to_seconds() {
        assert_eq!(checked(&[0.0, 40.0, 60_000.0]), Ok(vec![0.0, 0.04, 60.0]));
        assert_eq!(checked(&[]), Ok(vec![]));
    }

    #[test]
    fn out_of_range_or_too_many_offsets_are_refused() {
        let err = checked(&[10.0, -1.0]).expect_err("negative");
        assert!(err.contains("offsets_ms[1]"), "{err}");
        assert!(checked(&[60_000.5]).is_err());
        assert!(checked(&[f64::NAN]).is_err());
        let err = checked(&[1.0; MAX_OFFSETS + 1]).expect_err("too many");
        assert!(err.contains("51 offsets"), "{err}");
    }
}
