//! The viewer page (`GET /` and `/viewer/*`), built into the binary from
//! `assets/viewer/` so the program runs from any directory, and the WebRTC
//! settings the page needs (`GET /api/webrtc`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState};

/// `(file name, content type, bytes)` of every page asset.
const ASSETS: &[(&str, &str, &str)] = &[
    ("index.html", "text/html; charset=utf-8", include_str!("../../assets/viewer/index.html")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("../../assets/viewer/app.js")),
    ("api.js", "text/javascript; charset=utf-8", include_str!("../../assets/viewer/api.js")),
    ("tile.js", "text/javascript; charset=utf-8", include_str!("../../assets/viewer/tile.js")),
    ("overlay.js", "text/javascript; charset=utf-8", include_str!("../../assets/viewer/overlay.js")),
    ("player.js", "text/javascript; charset=utf-8", include_str!("../../assets/viewer/player.js")),
    ("stats.js", "text/javascript; charset=utf-8", include_str!("../../assets/viewer/stats.js")),
    ("whep.js", "text/javascript; charset=utf-8", include_str!("../../assets/viewer/whep.js")),
    ("chat.js", "text/javascript; charset=utf-8", include_str!("../../assets/viewer/chat.js")),
    ("publish.js", "text/javascript; charset=utf-8", include_str!("../../assets/viewer/publish.js")),
    ("style.css", "text/css; charset=utf-8", include_str!("../../assets/viewer/style.css")),
];

/// The page routes (merged into the API router).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(page)).routes(routes!(page_file)).routes(routes!(webrtc_settings))
}

/// `GET /`: the viewer page (no camera data; it logs in when [auth] asks).
#[utoipa::path(get, path = "/", tag = "page",
    responses((status = 200, description = "The viewer page", content_type = "text/html", body = String)))]
async fn page() -> Response {
    asset("index.html")
}

/// `GET /viewer/{file}`: the page's scripts and style sheet.
#[utoipa::path(get, path = "/viewer/{file}", tag = "page",
    params(("file" = String, Path, description = "e.g. `app.js`, `style.css`")),
    responses((status = 200, description = "The file"), (status = 404, description = "No such file", body = super::ErrorBody)))]
async fn page_file(Path(file): Path<String>) -> Response {
    asset(&file)
}

fn asset(name: &str) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, body)) => {
            let mut r = (*body).into_response();
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            // Small files, changed only by an upgrade: revalidate each load.
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            r
        }
        None => ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no viewer file {name:?}")).into_response(),
    }
}

/// `GET /api/webrtc`: `{"ice_servers": [{"urls": [...], "username"?, "credential"?}]}`,
/// ready for `new RTCPeerConnection({iceServers})`.
#[utoipa::path(get, path = "/api/webrtc", tag = "whep", security(("bearer" = [])),
    responses((status = 200, description = "`{\"ice_servers\": [{\"urls\", \"username\"?, \"credential\"?}]}`", body = serde_json::Value)))]
async fn webrtc_settings(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({ "ice_servers": *state.ice_servers }))
}
