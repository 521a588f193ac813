//! The HTTP side of [`super::Auth`]: one axum middleware in front of every
//! route that works out what a path needs (nothing, `view` of a camera,
//! `admin`), who the request is (bearer token, session cookie for GET,
//! anonymous), answers 401 (`WWW-Authenticate: Bearer`) or 403 itself, and
//! adds CORS headers only for the configured origins. Handlers get the
//! [`Principal`] as a request extension.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{Auth, Denied, Principal, Role};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "infercast_session";

/// What the middleware needs.
#[derive(Clone)]
pub struct Guard {
    pub auth: Auth,
    /// `[http] allowed_origins`.
    pub allowed_origins: Arc<Vec<String>>,
    /// `[http] server_names`.
    pub server_names: Arc<Vec<String>>,
    /// Cluster mode: origins of the other nodes are allowed too.
    pub member_origin: Option<OriginCheck>,
}

/// Whether an `Origin` is one of a dynamic set (the cluster's nodes).
pub type OriginCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Whether a request without a credential may use this `Host`: an IP address,
/// `localhost`, or a configured server name. Anything else is a name some web
/// page may have pointed at us (DNS rebinding).
fn host_allowed(host: Option<&str>, server_names: &[String]) -> bool {
    let Some(host) = host else { return true }; // HTTP/1.0 without Host: no browser
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || server_names.iter().any(|s| s.eq_ignore_ascii_case(name))
}

/// What a request needs, from its method and path.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// The page and its scripts, health probes, CORS preflights, logout.
    Public,
    /// `view` (of `camera`, when the path names one).
    View { camera: Option<String> },
    /// `/metrics`: `admin`, or any client on the loopback interface.
    AdminOrLoopback,
    /// Changing the cameras (`POST /api/cameras`, `DELETE`/`PATCH
    /// /api/cameras/{name}`) and publishing (`/whip/...`): `admin`.
    Admin,
}

pub(crate) fn access(method: &Method, path: &str) -> Access {
    if method == Method::OPTIONS {
        return Access::Public;
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let camera = |s: Option<&&str>| s.map(|c| percent_encoding::percent_decode_str(c).decode_utf8_lossy().into_owned());
    match segments.as_slice() {
        [""] | ["viewer", ..] | ["healthz"] | ["readyz"] | ["api", "logout"] => Access::Public,
        ["metrics"] => Access::AdminOrLoopback,
        ["api", "cameras"] if method == Method::POST => Access::Admin,
        ["api", "cameras", _] if method == Method::DELETE || method == Method::PATCH => Access::Admin,
        ["api", "cameras", name, ..] => Access::View { camera: camera(Some(name)) },
        ["api", "labels", "stream"] => Access::View { camera: None },
        ["api", "labels", name] => Access::View { camera: camera(Some(name)) },
        ["whip", ..] => Access::Admin,
        ["whep", name, ..] => Access::View { camera: camera(Some(name)) },
        _ => Access::View { camera: None },
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))
}

fn refusal(denied: Denied, message: &str) -> Response {
    let (status, code) = match denied {
        Denied::Missing | Denied::Invalid => (StatusCode::UNAUTHORIZED, "unauthorized"),
        Denied::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
    };
    let mut r = (status, axum::Json(json!({ "error": { "code": code, "message": message } }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"infercast\""));
    }
    r
}

/// Adds CORS headers when the request's `Origin` is an allowed one; a foreign
/// origin gets none (the browser then keeps the answer from its page).
fn cors(response: &mut Response, origin: Option<HeaderValue>) {
    let h = response.headers_mut();
    h.append(header::VARY, HeaderValue::from_static("origin"));
    let Some(origin) = origin else { return };
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, PATCH, DELETE, OPTIONS"));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("authorization, content-type, if-match"));
    h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("location, etag, link, accept-patch"));
}

/// The middleware (`axum::middleware::from_fn_with_state`).
pub async fn guard(State(g): State<Guard>, mut req: Request, next: Next) -> Response {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .filter(|o| {
            o.to_str().is_ok_and(|o| {
                g.allowed_origins.iter().any(|a| a.trim_end_matches('/') == o)
                    || g.member_origin.as_ref().is_some_and(|check| check(o))
            })
        })
        .cloned();
    let needs = access(req.method(), req.uri().path());
    let client = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let identity = {
        let h = req.headers();
        let authorization = h.get(header::AUTHORIZATION).map(|v| v.to_str().unwrap_or("(not text)"));
        let cookie_ok = matches!(*req.method(), Method::GET | Method::HEAD);
        g.auth.identify(authorization, cookie(h, SESSION_COOKIE), cookie_ok)
    };
    let credential_less = identity.as_ref().is_ok_and(|p| !p.authenticated);
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok());
    if credential_less && needs != Access::Public && !host_allowed(host, &g.server_names) {
        g.auth.count_failure(Denied::Forbidden);
        tracing::warn!(host = host.unwrap_or_default(), "request for an unknown host name refused (DNS rebinding?)");
        let mut r = refusal(Denied::Forbidden, "this host name is not one of [http] server_names");
        cors(&mut r, origin);
        return r;
    }
    let verdict = match (&needs, identity) {
        (Access::Public, who) => Ok(who.unwrap_or_else(|_| Principal {
            name: "public".into(),
            authenticated: false,
            role: Role::View,
            cameras: Some(Arc::default()),
        })),
        (Access::AdminOrLoopback | Access::Admin, Ok(p)) if p.role == Role::Admin => Ok(p),
        (Access::AdminOrLoopback, _) if client.is_some_and(|c| c.ip().is_loopback()) => Ok(Principal::local()),
        (Access::AdminOrLoopback | Access::Admin, Ok(_)) => {
            Err((Denied::Forbidden, "this endpoint needs the admin role".to_owned()))
        }
        (Access::View { camera }, Ok(p)) => match camera {
            Some(c) if !p.may_see(c) => Err((Denied::Forbidden, format!("this token may not see camera {c:?}"))),
            _ => Ok(p),
        },
        (_, Err(denied)) => Err((
            denied,
            match denied {
                Denied::Missing => "a bearer token is needed (Authorization: Bearer ...)".to_owned(),
                _ => "the token or session is not valid".to_owned(),
            },
        )),
    };
    let mut response = match verdict {
        Ok(principal) => {
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Err((denied, message)) => {
            g.auth.count_failure(denied);
            let ip = client.map(|c| c.ip().to_string()).unwrap_or_default();
            tracing::warn!(client = %ip, method = %req.method(), path = %req.uri().path(), reason = denied.as_str(), "request refused");
            refusal(denied, &message)
        }
    };
    cors(&mut response, origin);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_what_they_need() {
        let get = Method::GET;
        assert_eq!(access(&get, "/"), Access::Public);
        assert_eq!(access(&get, "/viewer/app.js"), Access::Public);
        assert_eq!(access(&get, "/healthz"), Access::Public);
        assert_eq!(access(&get, "/metrics"), Access::AdminOrLoopback);
        assert_eq!(access(&get, "/api/cameras"), Access::View { camera: None });
        assert_eq!(access(&get, "/api/cameras/door/snapshot.jpg"), Access::View { camera: Some("door".into()) });
        assert_eq!(access(&get, "/api/labels/stream"), Access::View { camera: None });
        assert_eq!(access(&get, "/api/labels/yard"), Access::View { camera: Some("yard".into()) });
        assert_eq!(access(&Method::POST, "/whep/door/raw"), Access::View { camera: Some("door".into()) });
        assert_eq!(access(&Method::OPTIONS, "/whep/door/raw"), Access::Public);
        assert_eq!(access(&get, "/api/nothing/here"), Access::View { camera: None });
        assert_eq!(access(&get, "/api/cameras/d%6F%6Fr"), Access::View { camera: Some("door".into()) });
        assert_eq!(access(&Method::POST, "/api/cameras"), Access::Admin);
        assert_eq!(access(&Method::DELETE, "/api/cameras/door"), Access::Admin);
        assert_eq!(access(&Method::PATCH, "/api/cameras/door"), Access::Admin);
        assert_eq!(access(&Method::POST, "/whip/door"), Access::Admin);
        assert_eq!(access(&Method::DELETE, "/whip/door/abc"), Access::Admin);
        assert_eq!(access(&Method::OPTIONS, "/whip/door"), Access::Public);
        assert_eq!(access(&Method::POST, "/api/cameras/door/chat"), Access::View { camera: Some("door".into()) });
    }

    #[test]
    fn hosts_without_credentials_are_ips_localhost_or_configured_names() {
        let names = ["cams.example.org".to_owned()];
        for ok in ["127.0.0.1:8080", "10.0.0.5", "[::1]:8080", "localhost:8080", "CAMS.example.org:443"] {
            assert!(host_allowed(Some(ok), &names), "{ok}");
        }
        for bad in ["evil.example", "evil.example:8080", "127.0.0.1.evil.example"] {
            assert!(!host_allowed(Some(bad), &names), "{bad}");
        }
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; infercast_session=abc; b=2"));
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "infercast"), None);
    }
}
