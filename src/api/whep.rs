//! WHEP (RFC 9725's rules, applied to egress): `POST /whep/{camera}/{raw|annotated}`
//! with an SDP offer creates a viewer session (201, `Location`, `ETag`, SDP
//! answer); `PATCH` on the `Location` trickles ICE candidates or restarts ICE
//! (`application/trickle-ice-sdpfrag`, `If-Match`); `DELETE` ends it;
//! `OPTIONS` says what each accepts (CORS for allowed origins is the auth
//! guard's). The configured STUN/TURN servers go out as
//! `Link: rel="ice-server"` headers with each answer.

use axum::body::Bytes;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState, ErrorBody};
use crate::hub::TrackKind;
use crate::sfu::SfuError;

pub(super) const SDP: &str = "application/sdp";
/// The media type of trickle ICE / ICE restart fragments (RFC 8840).
const SDP_FRAGMENT: &str = "application/trickle-ice-sdpfrag";

/// The WHEP routes (merged into the API router).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, preflight))
        .routes(routes!(delete, patch, preflight_session))
        .layer(axum::extract::DefaultBodyLimit::max(super::limits::WHEP_BODY_BYTES))
}

/// What a WHEP session holds until it ends: its limit slot and its place in
/// the camera's room (which counts its labels sent).
struct ViewerHold {
    _slot: super::limits::WhepSlot,
    member: crate::rooms::Member,
}

impl crate::sfu::SessionHold for ViewerHold {
    fn label_sent(&self) {
        self.member.label_sent();
    }
}

fn track_kind(track: &str) -> Result<TrackKind, ApiError> {
    TrackKind::parse(track).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "track_not_found", format!("no track {track:?} (raw or annotated)"))
    })
}

pub(super) fn sfu_error(e: SfuError) -> ApiError {
    match e {
        SfuError::MalformedOffer(m) => ApiError::new(StatusCode::BAD_REQUEST, "malformed_sdp", m),
        SfuError::NotAcceptable(m) => ApiError::new(StatusCode::NOT_ACCEPTABLE, "no_h264", m),
        SfuError::SessionNotFound(id) => {
            ApiError::new(StatusCode::NOT_FOUND, "session_not_found", format!("no viewer session {id:?}"))
        }
        SfuError::WebRtc(m) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "webrtc_error", m),
        e @ SfuError::MalformedFragment(_) => ApiError::bad_request(e.to_string()),
        e @ SfuError::PreconditionFailed { .. } => {
            ApiError::new(StatusCode::PRECONDITION_FAILED, "etag_mismatch", e.to_string())
        }
        SfuError::Unprocessable(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "fragment_not_applicable", m),
    }
}

/// `OPTIONS`: what the endpoint accepts (CORS headers, for allowed origins
/// only, come from the auth guard).
#[utoipa::path(options, path = "/whep/{camera}/{track}", tag = "whep",
    params(("camera" = String, Path, description = "Camera name"), ("track" = String, Path, description = "`raw` or `annotated`")),
    responses((status = 204, description = "`Accept-Post: application/sdp`; CORS headers for allowed origins")))]
async fn preflight() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert("accept-post", HeaderValue::from_static(SDP));
    r
}

/// `OPTIONS` on a session: what it accepts, and CORS preflight for its
/// `PATCH` and `DELETE`.
#[utoipa::path(options, path = "/whep/{camera}/{track}/{session}", tag = "whep",
    params(("camera" = String, Path, description = "Camera name"), ("track" = String, Path, description = "`raw` or `annotated`"),
        ("session" = String, Path, description = "Session id from the `Location` of the 201")),
    responses((status = 204, description = "`Accept-Patch: application/trickle-ice-sdpfrag`; CORS headers for allowed origins")))]
async fn preflight_session() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert("accept-patch", HeaderValue::from_static(SDP_FRAGMENT));
    r
}

/// The WHEP POST's query.
#[derive(serde::Deserialize, Default)]
pub(super) struct WhepQuery {
    /// The viewer's display name in the camera's room (`viewers`, chat joins).
    name: Option<String>,
}

/// `POST` an SDP offer: a viewer session sending the track.
#[utoipa::path(post, path = "/whep/{camera}/{track}", tag = "whep", security(("bearer" = [])),
    params(("camera" = String, Path, description = "Camera name"), ("track" = String, Path, description = "`raw` or `annotated`"),
        ("name" = Option<String>, Query, description = "Display name in the camera's room (≤ 40 characters; default `viewer-N`)")),
    request_body(content = String, content_type = "application/sdp", description = "SDP offer with H.264 video (≤ 64 KiB, ≤ 16 media sections, ≤ 256 formats)"),
    responses(
        (status = 201, description = "SDP answer with every candidate; `Location` (the session, for DELETE), `ETag`, \
            `Link: <…>; rel=\"ice-server\"` for each configured STUN/TURN server", content_type = "application/sdp", body = String),
        (status = 307, description = "Cluster mode: another node pulls the camera; `Location` is the same endpoint there \
            (POST the same offer to it)"),
        (status = 400, description = "Not SDP, or malformed", body = ErrorBody),
        (status = 404, description = "No such camera or track", body = ErrorBody),
        (status = 406, description = "No H.264 in packetization-mode 1 offered, or the camera's raw codec cannot be forwarded (H.265)", body = ErrorBody),
        (status = 409, description = "The annotated track is unavailable (`annotated_unavailable`)", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB"),
        (status = 429, description = "`[limits] whep_sessions_per_ip` reached (`Retry-After`)", body = ErrorBody),
        (status = 503, description = "`whep_sessions` or `whep_sessions_per_camera` reached, or (cluster mode) the camera is \
            moving between nodes (`camera_moving`); `Retry-After`", body = ErrorBody)))]
async fn create(
    State(state): State<AppState>,
    Path((camera, track)): Path<(String, String)>,
    Query(query): Query<WhepQuery>,
    client: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Every connection has its address (api::server); a router driven without one counts as loopback.
    let ip = client.map_or(std::net::Ipv4Addr::LOCALHOST.into(), |c| c.0.0.ip());
    let name = query.name;
    match create_inner(&state, &camera, &track, name.as_deref(), ip, &headers, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn create_inner(
    state: &AppState,
    camera: &str,
    track: &str,
    name: Option<&str>,
    client_ip: std::net::IpAddr,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let cam = state.camera(camera)?;
    let kind = track_kind(track)?;
    if let Some(cluster) = &state.cluster
        && !cam.is_active()
    {
        return Ok(to_owner(cluster, camera, kind, name));
    }
    if kind == TrackKind::Raw && cam.status().codec.as_deref().is_some_and(|c| c != "H.264") {
        return Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "raw_codec_not_forwardable",
            format!(
                "camera {camera:?} sends {}; its raw track cannot go to WebRTC players: watch the annotated track (H.264)",
                cam.status().codec.unwrap_or_default()
            ),
        ));
    }
    if kind == TrackKind::Annotated
        && let Some(reason) = cam.status().annotated_unavailable
    {
        let message = format!("camera {camera:?}: the annotated track is unavailable: {reason}");
        return Err(ApiError::new(StatusCode::CONFLICT, "annotated_unavailable", message));
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case(SDP) {
        return Err(ApiError::bad_request(format!("Content-Type must be {SDP}, not {content_type:?}")));
    }
    let offer = std::str::from_utf8(body).map_err(|_| ApiError::bad_request("the SDP offer is not UTF-8"))?;
    if offer.trim().is_empty() {
        return Err(ApiError::bad_request("empty SDP offer"));
    }
    let slot = match state.limits.whep(camera, client_ip) {
        Ok(slot) => slot,
        Err(refused) => return Ok(refused.into_response()),
    };
    // The session holds its limit slot and its place in the room: both end with it.
    let (member, room) = state.rooms.member(camera, name, kind, client_ip);
    let session = state
        .sfu
        .create_session(camera, cam.tracks.clone(), kind, offer, Box::new(ViewerHold { _slot: slot, member }))
        .await
        .map_err(sfu_error)?;
    room.joined();
    let location = format!("/whep/{camera}/{}/{}", kind.as_str(), session.id);
    let mut r = (StatusCode::CREATED, session.answer_sdp).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP));
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&session.etag) {
        h.insert(header::ETAG, v);
    }
    h.insert("accept-patch", HeaderValue::from_static(SDP_FRAGMENT));
    for link in ice_server_links(&state.ice_servers) {
        h.append(header::LINK, link);
    }
    Ok(r)
}

/// Cluster mode, for a camera this node does not pull: `307 Temporary
/// Redirect` to the same endpoint on the node that does (307 keeps the
/// method and the offer), or 503 while the camera is between nodes.
fn to_owner(cluster: &crate::cluster::Cluster, camera: &str, kind: TrackKind, name: Option<&str>) -> Response {
    match cluster.owner(camera) {
        Some((node, url)) if node != cluster.node_id() => {
            let query = name.map_or(String::new(), |n| {
                format!("?name={}", percent_encoding::utf8_percent_encode(n, percent_encoding::NON_ALPHANUMERIC))
            });
            let location = format!("{url}/whep/{camera}/{}{query}", kind.as_str());
            tracing::debug!(camera, %node, "WHEP offer redirected to the camera's node");
            let mut r = StatusCode::TEMPORARY_REDIRECT.into_response();
            if let Ok(v) = HeaderValue::from_str(&location) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        _ => {
            let message = format!("camera {camera:?} is moving between nodes; try again in a second");
            let mut r = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "camera_moving", message).into_response();
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
    }
}

/// `[webrtc] ice_servers` as `Link: <url>; rel="ice-server"` headers (WHIP/WHEP
/// §4.4), so any WHEP player, not only our page, learns the STUN/TURN servers.
pub(super) fn ice_server_links(servers: &[crate::config::IceServer]) -> Vec<HeaderValue> {
    let quote = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"");
    let mut links = Vec::new();
    for server in servers {
        for url in &server.urls {
            let mut link = format!("<{url}>; rel=\"ice-server\"");
            if let (Some(user), Some(credential)) = (&server.username, &server.credential) {
                link += &format!(
                    "; username=\"{}\"; credential=\"{}\"; credential-type=\"password\"",
                    quote(user),
                    quote(credential)
                );
            }
            match HeaderValue::from_str(&link) {
                Ok(v) => links.push(v),
                Err(_) => tracing::warn!("ICE server URL {url:?} cannot go into a Link header"),
            }
        }
    }
    links
}

/// `DELETE` the session's resource: ends it.
#[utoipa::path(delete, path = "/whep/{camera}/{track}/{session}", tag = "whep", security(("bearer" = [])),
    params(("camera" = String, Path, description = "Camera name"), ("track" = String, Path, description = "`raw` or `annotated`"),
        ("session" = String, Path, description = "Session id from the `Location` of the 201")),
    responses((status = 200, description = "Session ended"), (status = 404, description = "No such session", body = ErrorBody)))]
async fn delete(
    State(state): State<AppState>,
    Path((camera, track, session)): Path<(String, String, String)>,
) -> Response {
    let result = async {
        let kind = track_kind(&track)?;
        state.sfu.delete_session(&camera, kind, &session).await.map_err(sfu_error)
    }
    .await;
    match result {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => e.into_response(),
    }
}

/// `PATCH` the session's resource with an SDP fragment: trickle ICE
/// (candidates; `If-Match` optional, the session's `ETag` if given) or an
/// ICE restart (`If-Match: "*"`, new `ice-ufrag`/`ice-pwd` and candidates).
#[utoipa::path(patch, path = "/whep/{camera}/{track}/{session}", tag = "whep", security(("bearer" = [])),
    params(("camera" = String, Path, description = "Camera name"), ("track" = String, Path, description = "`raw` or `annotated`"),
        ("session" = String, Path, description = "Session id from the `Location` of the 201"),
        ("If-Match" = Option<String>, Header, description = "The session's `ETag` (trickle), or `*` (ICE restart)")),
    request_body(content = String, content_type = "application/trickle-ice-sdpfrag",
        description = "RFC 8840 fragment: `a=ice-ufrag`, `a=ice-pwd`, `m=`/`a=mid`, `a=candidate` lines (≤ 64), `a=end-of-candidates`"),
    responses(
        (status = 200, description = "ICE restarted: our new fragment (credentials, candidates) and a new `ETag`",
            content_type = "application/trickle-ice-sdpfrag", body = String),
        (status = 204, description = "Candidates added"),
        (status = 400, description = "Not an SDP fragment, or a candidate that does not parse", body = ErrorBody),
        (status = 404, description = "No such session", body = ErrorBody),
        (status = 412, description = "`If-Match` is not the session's `ETag`", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/trickle-ice-sdpfrag", body = ErrorBody),
        (status = 422, description = "New ICE credentials without `If-Match: *`, or a restart without new ones", body = ErrorBody)))]
async fn patch(
    State(state): State<AppState>,
    Path((camera, track, session)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case(SDP_FRAGMENT) {
        let message = format!("Content-Type must be {SDP_FRAGMENT}, not {content_type:?}");
        let mut r =
            ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", message).into_response();
        r.headers_mut().insert("accept-patch", HeaderValue::from_static(SDP_FRAGMENT));
        return r;
    }
    let result = async {
        let kind = track_kind(&track)?;
        let fragment =
            std::str::from_utf8(&body).map_err(|_| ApiError::bad_request("the SDP fragment is not UTF-8"))?;
        let if_match = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok());
        state.sfu.patch_session(&camera, kind, &session, if_match, fragment).await.map_err(sfu_error)
    }
    .await;
    match result {
        Ok(crate::sfu::Patched::Trickled { .. }) => StatusCode::NO_CONTENT.into_response(),
        Ok(crate::sfu::Patched::Restarted { fragment, etag }) => {
            let mut r = (StatusCode::OK, fragment).into_response();
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP_FRAGMENT));
            if let Ok(v) = HeaderValue::from_str(&etag) {
                h.insert(header::ETAG, v);
            }
            r
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IceServer;

    #[test]
    fn ice_servers_become_link_headers_with_turn_credentials() {
        let servers = [
            IceServer { urls: vec!["stun:s.example.org".into()], username: None, credential: None },
            IceServer {
                urls: vec!["turn:t.example.org?transport=udp".into()],
                username: Some("u".into()),
                credential: Some("p\"w".into()),
            },
        ];
        let links: Vec<String> =
            ice_server_links(&servers).iter().map(|v| v.to_str().expect("ASCII").to_owned()).collect();
        assert_eq!(
            links,
            [
                "<stun:s.example.org>; rel=\"ice-server\"",
                "<turn:t.example.org?transport=udp>; rel=\"ice-server\"; username=\"u\"; credential=\"p\\\"w\"; \
                 credential-type=\"password\"",
            ]
        );
    }
}
