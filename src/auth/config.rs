//! `[auth]` and `[http]` in the config file: who may use the API and from
//! which web origins. Plain data with serde; [`super::Auth`] turns it into the
//! checks.

use serde::{Deserialize, Serialize};

/// What a principal may do. `view` < `admin`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The viewer page, WHEP, cameras, labels, snapshots, the label stream.
    View,
    /// Everything, `/metrics` and (later) camera management included.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::View => "view",
            Role::Admin => "admin",
        }
    }
}

/// `[auth]`: bearer tokens with roles. Present (even empty) means every API,
/// WHEP and stream request needs a token, except what `anonymous` allows.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Role given to requests without a token (`"view"` allows anonymous
    /// viewing on purpose); default none: a token is needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous: Option<Role>,
    /// `[[auth.tokens]]`.
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// A JWKS file (`{"keys": [...]}`) whose RSA, P-256 or Ed25519 public keys
    /// verify JWTs (RS256, ES256, EdDSA) presented as bearer tokens; the
    /// claims `role` and `cameras` say what they may do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<std::path::PathBuf>,
    /// The `iss` a JWT must carry, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_issuer: Option<String>,
    /// The `aud` a JWT must carry, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_audience: Option<String>,
}

/// One `[[auth.tokens]]`: a bearer token known by its SHA-256, or read at
/// start from a file (Kubernetes secrets) or an environment variable.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it (shown in logs, never the token).
    pub name: String,
    pub role: Role,
    /// Hex SHA-256 of the token (`infercast token new` prints it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// A file whose content (trimmed) is the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<std::path::PathBuf>,
    /// An environment variable holding the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// Cameras this token may see; default every camera.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cameras: Option<Vec<String>>,
}

/// `[http]`: the HTTP server's exposure to web pages, and its clocks.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Web origins (`https://dashboard.example.com`) whose pages may call the
    /// API and WHEP from the browser (CORS). Default none: same origin only.
    pub allowed_origins: Vec<String>,
    /// Host names this server answers to without a credential (anonymous or no
    /// `[auth]`), besides IP addresses and `localhost`: a defence against DNS
    /// rebinding, where a web page's own host name is pointed at this server.
    pub server_names: Vec<String>,
    /// A client must send a whole request head (request line and headers)
    /// within this, in ms (default 10000); also the longest a keep-alive
    /// connection may sit idle between requests. Range 100..=300000.
    pub header_read_timeout_ms: u64,
    /// A connection that moves no byte either way for this long is closed, in
    /// seconds (default 60): a stalled upload, or a client that stopped
    /// reading an event stream (which sends a keep-alive every 15 s). Range 5..=3600.
    pub idle_timeout_s: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            allowed_origins: Vec::new(),
            server_names: Vec::new(),
            header_read_timeout_ms: 10_000,
            idle_timeout_s: 60,
        }
    }
}

impl AuthConfig {
    /// Checks each token entry names exactly one source and a usable hash.
    pub fn validate(&self) -> Result<(), String> {
        let mut names = std::collections::HashSet::new();
        for t in &self.tokens {
            if t.name.is_empty() || !names.insert(t.name.as_str()) {
                return Err(format!("auth.tokens: name {:?} is empty or used twice", t.name));
            }
            let sources = [t.sha256.is_some(), t.token_file.is_some(), t.token_env.is_some()];
            if sources.iter().filter(|&&s| s).count() != 1 {
                return Err(format!("auth.tokens {:?}: give exactly one of sha256, token_file, token_env", t.name));
            }
            if let Some(h) = &t.sha256
                && (h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err(format!("auth.tokens {:?}: sha256 must be 64 hex digits", t.name));
            }
        }
        Ok(())
    }
}

impl HttpConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(100..=300_000).contains(&self.header_read_timeout_ms) {
            return Err(format!(
                "http.header_read_timeout_ms = {} is out of range 100..=300000",
                self.header_read_timeout_ms
            ));
        }
        if !(5..=3600).contains(&self.idle_timeout_s) {
            return Err(format!("http.idle_timeout_s = {} is out of range 5..=3600", self.idle_timeout_s));
        }
        for o in &self.allowed_origins {
            let ok = (o.starts_with("http://") || o.starts_with("https://"))
                && !o.trim_end_matches('/').contains(['?', '#', ' '])
                && o.split("://").nth(1).is_some_and(|rest| !rest.is_empty() && !rest.contains('/'));
            if !ok {
                return Err(format!("http.allowed_origins: {o:?} is not an origin like https://host[:port]"));
            }
        }
        Ok(())
    }
}
