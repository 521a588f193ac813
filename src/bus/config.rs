//! `[nats]` in the config: where the NATS servers are, how to authenticate,
//! the JetStream stream's name, replicas and retention, and the publish buffer.
//! Validation names the key and its range; secrets are read at start-up and
//! never logged.

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// `[nats]`: publish labels and camera events to NATS JetStream. Absent: no
/// connection is ever attempted.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URLs, e.g. `["nats://10.0.0.2:4222", "nats://10.0.0.3:4222"]`
    /// (`nats://` and port 4222 when left out; `tls://` requires TLS). No
    /// credentials in them: use `credentials_file`, `token_file` or `token_env`.
    pub urls: Vec<String>,
    /// A NATS `.creds` file (JWT and NKey seed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// A file holding the server's auth token (surrounding whitespace ignored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// An environment variable holding the server's auth token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// PEM CA certificate(s) to trust for the servers' TLS certificates; set,
    /// it also requires TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_path: Option<PathBuf>,
    /// JetStream stream, created if missing with subjects `labels.>` and
    /// `events.>` (default `LABELS`).
    pub stream: String,
    /// Replicas of a stream infercast creates (default 1; 3 on a cluster).
    pub replicas: usize,
    /// Messages older than this are removed by the server, in seconds (default
    /// 604800 = 7 days; 0 = kept until `max_bytes`).
    pub max_age_s: u64,
    /// Largest size of the stream before the oldest messages go, in bytes
    /// (default 1 GiB; 0 = unlimited).
    pub max_bytes: u64,
    /// Messages (labels and events) held while NATS is slow or down (default
    /// 10000); when full the oldest is dropped and counted.
    pub buffer_len: usize,
    /// How long to wait for JetStream's acknowledgement of a publish before
    /// sending it again with the same `Nats-Msg-Id`, in ms (default 2000).
    pub ack_timeout_ms: u64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            urls: Vec::new(),
            credentials_file: None,
            token_file: None,
            token_env: None,
            tls_ca_path: None,
            stream: "LABELS".into(),
            replicas: 1,
            max_age_s: 7 * 24 * 3600,
            max_bytes: 1 << 30,
            buffer_len: 10_000,
            ack_timeout_ms: 2000,
        }
    }
}

/// How infercast authenticates to NATS, read once at start-up.
#[derive(Clone, Default)]
pub enum NatsAuth {
    #[default]
    None,
    /// The contents of a `.creds` file.
    Credentials(String),
    Token(String),
}

impl std::fmt::Debug for NatsAuth {
    /// Never shows the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NatsAuth::None => "None",
            NatsAuth::Credentials(_) => "Credentials(…)",
            NatsAuth::Token(_) => "Token(…)",
        })
    }
}

impl NatsConfig {
    /// Checks ranges and exclusive keys; errors name the key (`nats.…`).
    pub fn validate(&self) -> Result<(), String> {
        if self.urls.is_empty() || self.urls.len() > 32 {
            return Err(format!("nats.urls has {} entries: give 1..=32 server URLs", self.urls.len()));
        }
        for url in &self.urls {
            let addr = async_nats::ServerAddr::from_str(url)
                .map_err(|e| format!("nats.urls: {:?} is not a NATS server URL: {e}", redact_url(url)))?;
            if addr.has_user_pass() || url.contains('@') {
                return Err(format!(
                    "nats.urls: {:?} carries credentials; put them in nats.credentials_file, nats.token_file or nats.token_env",
                    redact_url(url)
                ));
            }
        }
        let secrets = [self.credentials_file.is_some(), self.token_file.is_some(), self.token_env.is_some()];
        if secrets.iter().filter(|s| **s).count() > 1 {
            return Err("nats: give at most one of credentials_file, token_file, token_env".into());
        }
        if let Some(var) = &self.token_env
            && (var.is_empty() || var.contains('='))
        {
            return Err(format!("nats.token_env = {var:?} is not an environment variable name"));
        }
        let valid_stream = !self.stream.is_empty()
            && self.stream.len() <= 64
            && self.stream.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid_stream {
            return Err(format!("nats.stream = {:?}: use 1-64 letters, digits, '-' or '_'", self.stream));
        }
        for (key, value, lo, hi) in [
            ("nats.replicas", self.replicas as u64, 1, 5),
            ("nats.max_age_s", self.max_age_s, 0, 100 * 365 * 86_400),
            ("nats.max_bytes", self.max_bytes, 0, 1 << 50),
            ("nats.buffer_len", self.buffer_len as u64, 1, 1_000_000),
            ("nats.ack_timeout_ms", self.ack_timeout_ms, 100, 60_000),
        ] {
            if !(lo..=hi).contains(&value) {
                return Err(format!("{key} = {value} is out of range {lo}..={hi}"));
            }
        }
        Ok(())
    }

    /// Reads the credentials file, token file or token variable. The error
    /// names the file or variable, never its contents.
    pub fn read_auth(&self) -> Result<NatsAuth, String> {
        if let Some(path) = &self.credentials_file {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("nats.credentials_file {}: {e}", path.display()))?;
            return Ok(NatsAuth::Credentials(text));
        }
        if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path).map_err(|e| format!("nats.token_file {}: {e}", path.display()))?;
            let token = text.trim();
            if token.is_empty() {
                return Err(format!("nats.token_file {} is empty", path.display()));
            }
            return Ok(NatsAuth::Token(token.to_owned()));
        }
        if let Some(var) = &self.token_env {
            let token = std::env::var(var).map_err(|_| format!("nats.token_env: {var} is not set"))?;
            if token.trim().is_empty() {
                return Err(format!("nats.token_env: {var} is empty"));
            }
            return Ok(NatsAuth::Token(token.trim().to_owned()));
        }
        Ok(NatsAuth::None)
    }
}

/// `url` with anything between `://` and `@` replaced by `***` (for errors).
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        (None, Some(at)) => format!("***{}", &url[at..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(urls: &[&str]) -> NatsConfig {
        NatsConfig { urls: urls.iter().map(|s| s.to_string()).collect(), ..NatsConfig::default() }
    }

    #[test]
    fn defaults_and_urls() {
        let c = with(&["127.0.0.1:4222", "nats://h.example:4223", "tls://h.example"]);
        c.validate().expect("valid");
        assert_eq!((c.stream.as_str(), c.replicas, c.buffer_len), ("LABELS", 1, 10_000));
        assert!(with(&[]).validate().expect_err("no urls").contains("nats.urls"));
    }

    #[test]
    fn credentials_in_urls_are_refused_and_never_echoed() {
        let err = with(&["nats://user:s3cret@h:4222"]).validate().expect_err("userinfo");
        assert!(err.contains("nats.credentials_file") && !err.contains("s3cret"), "{err}");
        let err = with(&["nats://s3cret@h:4222"]).validate().expect_err("token in url");
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn ranges_and_exclusive_secrets() {
        for (c, want) in [
            (NatsConfig { replicas: 0, ..with(&["h"]) }, "nats.replicas = 0 is out of range 1..=5"),
            (NatsConfig { buffer_len: 0, ..with(&["h"]) }, "nats.buffer_len = 0 is out of range 1..=1000000"),
            (NatsConfig { ack_timeout_ms: 5, ..with(&["h"]) }, "nats.ack_timeout_ms = 5 is out of range 100..=60000"),
            (NatsConfig { stream: "a.b".into(), ..with(&["h"]) }, "nats.stream = \"a.b\""),
            (
                NatsConfig { token_env: Some("T".into()), token_file: Some("/t".into()), ..with(&["h"]) },
                "at most one of",
            ),
        ] {
            let err = c.validate().expect_err(want);
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn auth_is_read_and_never_shown() {
        let dir = std::env::temp_dir().join(format!("infercast-nats-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("token");
        std::fs::write(&file, " s3cret\n").expect("write token");
        let auth = NatsConfig { token_file: Some(file), ..with(&["h"]) }.read_auth().expect("readable");
        assert!(matches!(&auth, NatsAuth::Token(t) if t == "s3cret"));
        assert!(!format!("{auth:?}").contains("s3cret"));
        let err = NatsConfig { token_file: Some(dir.join("absent")), ..with(&["h"]) }.read_auth().expect_err("absent");
        assert!(err.contains("nats.token_file"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
