//! Who may do what: bearer tokens (stored as SHA-256) with a role and an
//! optional camera list, anonymous access when the operator allows it, short
//! sessions for the browser's EventSource (an HttpOnly cookie), and the
//! failure counter. One place decides; the HTTP layer ([`layer`]) asks it.
//!
//! Never logs, returns or stores a plain token: only its SHA-256 is kept, and
//! presented tokens are hashed and compared in constant time.

pub mod config;
pub mod jwt;
pub mod layer;
mod sessions;

use std::collections::HashSet;
use std::sync::Arc;

use base64::Engine;
use prometheus::{IntCounterVec, Opts, Registry};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use self::config::{AuthConfig, HttpConfig, Role, TokenConfig};
pub use self::sessions::SESSION_TTL_S;
use self::sessions::Sessions;

/// Who a request comes from, as the handlers see it.
#[derive(Clone, Debug)]
pub struct Principal {
    /// The token's `name`, `anonymous`, or `local` (no `[auth]`, loopback only).
    pub name: Arc<str>,
    pub role: Role,
    /// Cameras this principal may see; `None` = all.
    pub cameras: Option<Arc<HashSet<String>>>,
    /// It presented a credential (token, JWT, session) rather than being
    /// anonymous or local: what the DNS-rebinding check and login look at,
    /// whatever a token is named.
    pub authenticated: bool,
}

impl Principal {
    /// Everything allowed: the server runs without `[auth]` (loopback only).
    pub fn local() -> Principal {
        Principal { name: "local".into(), role: Role::Admin, cameras: None, authenticated: false }
    }

    /// Whether this principal may see `camera`.
    pub fn may_see(&self, camera: &str) -> bool {
        self.cameras.as_ref().is_none_or(|c| c.contains(camera))
    }
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    /// No credential, and anonymous access is off: 401.
    Missing,
    /// A credential that matches no token or session: 401.
    Invalid,
    /// A valid credential without the role or camera: 403.
    Forbidden,
}

impl Denied {
    pub fn as_str(self) -> &'static str {
        match self {
            Denied::Missing => "missing",
            Denied::Invalid => "invalid",
            Denied::Forbidden => "forbidden",
        }
    }
}

struct Token {
    sha256: [u8; 32],
    principal: Principal,
}

/// The checks built from `[auth]`. Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None`: no `[auth]` section; every request is [`Principal::local`].
    tokens: Option<Vec<Token>>,
    anonymous: Option<Principal>,
    jwt: Option<jwt::JwtVerifier>,
    sessions: Sessions,
    failures: IntCounterVec,
}

/// A new random token: `ic_` and 43 URL-safe characters (256 bits).
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("ic_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Lowercase hex SHA-256 of `token`, as `[[auth.tokens]] sha256` holds it.
pub fn token_sha256_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Auth {
    /// Builds the checks; reads `token_file`s and `token_env`s now. Errors name
    /// the token entry and what is wrong (never the token). Registers
    /// `infercast_auth_failures_total{reason}` in `registry`.
    pub fn new(config: Option<&AuthConfig>, registry: &Registry) -> Result<Auth, String> {
        let failures = IntCounterVec::new(
            Opts::new("auth_failures_total", "Requests refused: missing or invalid credential, or forbidden"),
            &["reason"],
        )
        .expect("metric options are valid");
        registry.register(Box::new(failures.clone())).map_err(|e| format!("auth metrics: {e}"))?;
        let tokens = match config {
            None => None,
            Some(c) => {
                c.validate()?;
                Some(c.tokens.iter().map(load_token).collect::<Result<Vec<_>, String>>()?)
            }
        };
        let anonymous = config.and_then(|c| c.anonymous).map(|role| Principal {
            name: "anonymous".into(),
            role,
            cameras: None,
            authenticated: false,
        });
        let jwt = match config {
            Some(AuthConfig { jwks_file: Some(path), jwt_issuer, jwt_audience, .. }) => {
                Some(jwt::JwtVerifier::load(path, jwt_issuer.clone(), jwt_audience.clone())?)
            }
            _ => None,
        };
        Ok(Auth { inner: Arc::new(Inner { tokens, anonymous, jwt, sessions: Sessions::default(), failures }) })
    }

    /// Whether `[auth]` is configured.
    pub fn enabled(&self) -> bool {
        self.inner.tokens.is_some()
    }

    /// The principal behind a bearer token (the value after `Bearer `): a
    /// configured token, or a JWT that the JWKS keys verify.
    pub fn by_token(&self, token: &str) -> Option<Principal> {
        let tokens = self.inner.tokens.as_ref()?;
        if let Some(verifier) = &self.inner.jwt
            && token.split('.').count() == 3
        {
            return verifier.verify(token).inspect_err(|reason| tracing::debug!(%reason, "JWT refused")).ok();
        }
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Compare against every entry so the time does not tell which one matched.
        let mut found = None;
        for t in tokens {
            if bool::from(t.sha256.ct_eq(&presented)) {
                found = Some(t.principal.clone());
            }
        }
        found
    }

    /// Who a request is, from its `Authorization` header value and session
    /// cookie (cookie only counted when `cookie_ok`, i.e. for GET).
    pub fn identify(
        &self,
        authorization: Option<&str>,
        session: Option<&str>,
        cookie_ok: bool,
    ) -> Result<Principal, Denied> {
        if !self.enabled() {
            return Ok(Principal::local());
        }
        if let Some(value) = authorization {
            let token = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")).map(str::trim);
            return token.and_then(|t| self.by_token(t)).ok_or(Denied::Invalid);
        }
        if cookie_ok && let Some(id) = session {
            return self.inner.sessions.get(id).ok_or(Denied::Invalid);
        }
        self.inner.anonymous.clone().ok_or(Denied::Missing)
    }

    /// A session for `principal` (for the HttpOnly cookie); its id.
    pub fn open_session(&self, principal: &Principal) -> String {
        self.inner.sessions.open(principal.clone())
    }

    /// Ends a session (logout).
    pub fn close_session(&self, id: &str) {
        self.inner.sessions.close(id);
    }

    /// Counts a refusal.
    pub fn count_failure(&self, reason: Denied) {
        self.inner.failures.with_label_values(&[reason.as_str()]).inc();
    }
}

fn load_token(t: &TokenConfig) -> Result<Token, String> {
    let entry = |reason: String| format!("auth.tokens {:?}: {reason}", t.name);
    let sha256 = if let Some(hex) = &t.sha256 {
        parse_hex32(hex).ok_or_else(|| entry("sha256 must be 64 hex digits".into()))?
    } else {
        let plain = if let Some(path) = &t.token_file {
            std::fs::read_to_string(path)
                .map_err(|e| entry(format!("cannot read token_file {}: {e}", path.display())))?
        } else {
            let var = t.token_env.as_deref().unwrap_or_default();
            std::env::var(var).map_err(|_| entry(format!("environment variable {var} is not set")))?
        };
        let plain = plain.trim();
        if plain.len() < 16 {
            return Err(entry("the token is shorter than 16 characters".into()));
        }
        Sha256::digest(plain.as_bytes()).into()
    };
    let cameras = t.cameras.as_ref().map(|c| Arc::new(c.iter().cloned().collect::<HashSet<_>>()));
    Ok(Token {
        sha256,
        principal: Principal { name: t.name.as_str().into(), role: t.role, cameras, authenticated: true },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(text: &str) -> Auth {
        let c: AuthConfig = toml::from_str(text).expect("parses");
        Auth::new(Some(&c), &Registry::new()).expect("valid")
    }

    #[test]
    fn tokens_match_by_hash_with_their_role_and_cameras() {
        let (view, admin) = (new_token(), new_token());
        assert!(view.starts_with("ic_") && view.len() == 46, "{view}");
        let a = auth(&format!(
            "[[tokens]]\nname = \"door-viewer\"\nrole = \"view\"\nsha256 = \"{}\"\ncameras = [\"door\"]\n\
             [[tokens]]\nname = \"ops\"\nrole = \"admin\"\nsha256 = \"{}\"\n",
            token_sha256_hex(&view),
            token_sha256_hex(&admin)
        ));
        let p = a.identify(Some(&format!("Bearer {view}")), None, false).unwrap();
        assert_eq!((&*p.name, p.role, p.may_see("door"), p.may_see("yard")), ("door-viewer", Role::View, true, false));
        let p = a.identify(Some(&format!("Bearer {admin}")), None, false).unwrap();
        assert_eq!((p.role, p.may_see("yard")), (Role::Admin, true));
        assert!(p.authenticated, "a token is a credential, whatever it is named");
        assert_eq!(a.identify(Some("Bearer ic_wrong"), None, false).unwrap_err(), Denied::Invalid);
        assert_eq!(a.identify(Some(&format!("Basic {view}")), None, false).unwrap_err(), Denied::Invalid);
        assert_eq!(a.identify(None, None, false).unwrap_err(), Denied::Missing);
    }

    #[test]
    fn sessions_count_only_where_cookies_are_allowed_and_anonymous_is_opt_in() {
        let token = new_token();
        let a = auth(&format!(
            "anonymous = \"view\"\n[[tokens]]\nname = \"ops\"\nrole = \"admin\"\nsha256 = \"{}\"\n",
            token_sha256_hex(&token)
        ));
        let ops = a.by_token(&token).unwrap();
        let id = a.open_session(&ops);
        assert_eq!(a.identify(None, Some(&id), true).unwrap().role, Role::Admin);
        assert_eq!(a.identify(None, Some(&id), false).unwrap().role, Role::View, "POST: the cookie does not count");
        assert_eq!(a.identify(None, Some("forged"), true).unwrap_err(), Denied::Invalid);
        a.close_session(&id);
        assert_eq!(a.identify(None, Some(&id), true).unwrap_err(), Denied::Invalid);
        assert!(!a.identify(None, None, false).unwrap().authenticated, "anonymous");
        let open = Auth::new(None, &Registry::new()).unwrap();
        assert_eq!(open.identify(None, None, false).unwrap().role, Role::Admin, "no [auth]: local");
    }

    #[test]
    fn token_files_and_env_are_hashed_at_start_and_bad_entries_named() {
        let dir = std::env::temp_dir().join(format!("infercast-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = new_token();
        std::fs::write(dir.join("t"), format!("{token}\n")).unwrap();
        let a = auth(&format!(
            "[[tokens]]\nname = \"k8s\"\nrole = \"view\"\ntoken_file = \"{}\"\n",
            dir.join("t").display()
        ));
        assert!(a.by_token(&token).is_some());
        let bad = |text: &str| {
            let c: AuthConfig = toml::from_str(text).unwrap();
            Auth::new(Some(&c), &Registry::new()).err().unwrap()
        };
        assert!(bad("[[tokens]]\nname = \"x\"\nrole = \"view\"\n").contains("exactly one of"));
        assert!(bad("[[tokens]]\nname = \"x\"\nrole = \"view\"\nsha256 = \"abc\"\n").contains("64 hex"));
        assert!(
            bad("[[tokens]]\nname = \"x\"\nrole = \"view\"\ntoken_env = \"INFERCAST_NO_SUCH_VAR\"\n")
                .contains("not set")
        );
        let e = bad("[[tokens]]\nname = \"x\"\nrole = \"view\"\ntoken_file = \"/nonexistent/t\"\n");
        assert!(e.contains("\"x\"") && e.contains("/nonexistent/t"), "{e}");
    }
}
