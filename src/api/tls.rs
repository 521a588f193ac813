//! HTTPS (`[tls]`): the certificate and key (PEM) the HTTP server presents,
//! loaded at start and reloaded on SIGHUP or when either file changes, without
//! dropping a connection: handshakes after a reload get the new certificate,
//! open connections (and every WebRTC viewer, whose media never touches HTTP)
//! go on.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// How often the certificate files are checked for a change.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// `[tls]` in the config: serve HTTPS instead of HTTP.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, server certificate first.
    pub cert_path: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key_path: PathBuf,
}

/// The server's certificate, swapped in place on reload.
#[derive(Debug)]
pub struct Certificates {
    config: TlsConfig,
    current: RwLock<Arc<CertifiedKey>>,
    provider: Arc<CryptoProvider>,
}

impl Certificates {
    /// Loads both files; errors name the file and what is wrong with it
    /// (missing, no PEM certificate or key, key does not match the certificate).
    pub fn load(config: &TlsConfig) -> Result<Arc<Certificates>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = load_pair(config, &provider)?;
        Ok(Arc::new(Certificates { config: config.clone(), current: RwLock::new(Arc::new(key)), provider }))
    }

    /// Reads the files again; on an error the certificate in use stays.
    pub fn reload(&self) -> Result<(), String> {
        let key = load_pair(&self.config, &self.provider)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
        Ok(())
    }

    /// A rustls server config (HTTP/1.1 over TLS 1.2/1.3) that always presents
    /// the current certificate.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, String> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Reloads on SIGHUP and when a file's modification time or size changes,
    /// until `cancel`. A failed reload is logged and the old certificate kept.
    pub async fn watch(self: Arc<Self>, cancel: CancellationToken) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; TLS certificates reload on file change only");
                None
            }
        };
        let mut seen = self.stamps();
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let why = tokio::select! {
                () = cancel.cancelled() => return,
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => None } } => "SIGHUP",
                _ = tick.tick() => {
                    let now = self.stamps();
                    if now == seen { continue; }
                    seen = now;
                    "file change"
                }
            };
            match self.reload() {
                Ok(()) => {
                    tracing::info!(cert = %self.config.cert_path.display(), trigger = why, "TLS certificate reloaded")
                }
                Err(e) => tracing::warn!(error = %e, trigger = why, "TLS certificate not reloaded; the old one stays"),
            }
        }
    }

    fn stamps(&self) -> [Option<(SystemTime, u64)>; 2] {
        let stamp = |p: &Path| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
        [stamp(&self.config.cert_path), stamp(&self.config.key_path)]
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

fn load_pair(config: &TlsConfig, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let (cert_path, key_path) = (config.cert_path.display(), config.key_path.display());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.cert_path)
        .map_err(|e| format!("tls.cert_path {cert_path}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.cert_path {cert_path}: {e}"))?;
    if chain.is_empty() {
        return Err(format!("tls.cert_path {cert_path}: no PEM CERTIFICATE in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&config.key_path).map_err(|e| format!("tls.key_path {key_path}: {e}"))?;
    CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| format!("tls.key_path {key_path} does not fit tls.cert_path {cert_path}: {e}"))
}
