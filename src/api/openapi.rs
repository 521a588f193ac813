//! The OpenAPI 3.1 document of the HTTP API (`GET /api/openapi.json`),
//! generated from the handlers' `#[utoipa::path]` attributes as
//! `api::routes()` registers them, so a route cannot exist undocumented.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ComponentsBuilder, InfoBuilder, OpenApi, OpenApiBuilder};

/// Title, version and the two credentials: bearer tokens and the session cookie.
pub(crate) fn base() -> OpenApi {
    let bearer = HttpBuilder::new()
        .scheme(HttpAuthScheme::Bearer)
        .description(Some(
            "A token from `infercast token new` (role view or admin), or a JWT from the [auth] jwks_file issuer",
        ))
        .build();
    let cookie = ApiKey::Cookie(ApiKeyValue::with_description(
        crate::auth::layer::SESSION_COOKIE,
        "Set by POST /api/login; accepted for GET requests only (the page's EventSource)",
    ));
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("infercast")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Cameras, labels (REST and Server-Sent Events), snapshots, WHEP (RFC 9725) viewer sessions, \
                     health and metrics. Errors are `{\"error\":{\"code\",\"message\"}}`. With [auth], every \
                     operation that lists a security requirement needs one of them (401 without, 403 for a wrong \
                     role or camera).",
                ))
                .build(),
        )
        .components(Some(
            ComponentsBuilder::new()
                .security_scheme("bearer", SecurityScheme::Http(bearer))
                .security_scheme("session_cookie", SecurityScheme::ApiKey(cookie))
                .build(),
        ))
        .build()
}

/// The whole document, built once.
pub(crate) fn spec() -> &'static OpenApi {
    static SPEC: OnceLock<OpenApi> = OnceLock::new();
    SPEC.get_or_init(|| super::routes().into_openapi())
}

/// `"METHOD /path"` of every documented operation, sorted.
pub(crate) fn endpoints() -> Vec<String> {
    let mut all: Vec<String> = spec()
        .paths
        .paths
        .iter()
        .flat_map(|(path, item)| operations(item).into_iter().map(move |m| format!("{m} {path}")))
        .collect();
    all.sort();
    all
}

fn operations(item: &utoipa::openapi::PathItem) -> Vec<&'static str> {
    [
        ("GET", item.get.is_some()),
        ("POST", item.post.is_some()),
        ("PATCH", item.patch.is_some()),
        ("DELETE", item.delete.is_some()),
        ("OPTIONS", item.options.is_some()),
    ]
    .into_iter()
    .filter_map(|(m, present)| present.then_some(m))
    .collect()
}

/// The document as pretty JSON, built once.
pub fn json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| spec().to_pretty_json().expect("an OpenAPI document of plain strings and maps serialises"))
}

/// `GET /api/openapi.json`: this document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "service",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = serde_json::Value)))]
pub(crate) async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], json())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_with_its_responses() {
        let eps = endpoints();
        for expected in [
            "GET /api/cameras",
            "GET /api/labels/stream",
            "POST /whep/{camera}/{track}",
            "DELETE /whep/{camera}/{track}/{session}",
            "POST /whip/{camera}",
            "DELETE /whip/{camera}/{session}",
            "GET /api/openapi.json",
            "GET /",
        ] {
            assert!(eps.iter().any(|e| e == expected), "{expected} missing from {eps:#?}");
        }
        for (path, item) in &spec().paths.paths {
            for op in [&item.get, &item.post, &item.delete, &item.options].into_iter().flatten() {
                assert!(!op.responses.responses.is_empty(), "{path}: an operation without responses");
            }
        }
        let json = spec().to_json().expect("serialises");
        assert!(json.starts_with("{\"openapi\":\"3.1"), "{}", &json[..40]);
    }
}
