//! Camera URLs with their credentials kept apart, so logs, the API and metrics
//! only ever see the redacted form.

use std::fmt;

use url::Url;

use super::IngestError;

/// A parsed camera URL: `rtsp://[user:pass@]host[:port]/path`, `file:PATH`
/// (an H.264 Annex B file replayed in a loop, like the demo camera) or
/// `whip:` (a WebRTC publisher POSTs to `/whip/{camera}`).
#[derive(Clone, PartialEq, Eq)]
pub struct CameraUrl {
    /// The URL without user info.
    url: Url,
    credentials: Option<(String, String)>,
    /// For `file:` URLs, the path as written (relative paths stay relative).
    file_path: Option<std::path::PathBuf>,
}

impl CameraUrl {
    /// Parses and checks the scheme. Errors name the problem without echoing the
    /// password.
    pub fn parse(text: &str) -> Result<CameraUrl, IngestError> {
        let mut url = Url::parse(text).map_err(|e| IngestError::BadUrl(format!("not a valid URL ({e})")))?;
        match url.scheme() {
            "rtsp" => {
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(IngestError::BadUrl("rtsp URL has no host".into()));
                }
            }
            "file" => {}
            "whip" if url.path().is_empty() && url.query().is_none() => {}
            "whip" => return Err(IngestError::BadUrl("a WHIP camera's url is just `whip:`".into())),
            other => {
                return Err(IngestError::BadUrl(format!(
                    "unsupported scheme `{other}:`; use rtsp://host/path (RTSP over TCP), file:/path/clip.h264 \
                     or whip: (published to /whip/<camera>)"
                )));
            }
        }
        let credentials = if url.username().is_empty() && url.password().is_none() {
            None
        } else {
            Some((percent_decode(url.username()), percent_decode(url.password().unwrap_or(""))))
        };
        // Cannot fail for rtsp/file URLs with a host (checked above).
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let file_path = (url.scheme() == "file")
            .then(|| {
                text.strip_prefix("file://").or_else(|| text.strip_prefix("file:")).map(|p| percent_decode(p).into())
            })
            .flatten();
        Ok(CameraUrl { url, credentials, file_path })
    }

    /// The URL without credentials (what the RTSP client sends as request URI).
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// `(user, password)` from the URL, percent-decoded.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The file of a `file:` URL, as written (`file:clips/a.h264` stays relative).
    pub fn file_path(&self) -> Option<&std::path::Path> {
        self.file_path.as_deref()
    }

    pub fn is_rtsp(&self) -> bool {
        self.url.scheme() == "rtsp"
    }

    /// A camera published with WHIP (`whip:`).
    pub fn is_whip(&self) -> bool {
        self.url.scheme() == "whip"
    }

    /// The redacted form: `rtsp://***@host/path` when credentials were given,
    /// and the values of secret-looking query parameters (`password=`,
    /// `token=`, ...; some cameras take credentials there) as `***`; no
    /// `#fragment` (found by `fuzz_camera_urls`: a password after a `#`).
    pub fn redacted(&self) -> String {
        if let Some(path) = &self.file_path {
            return format!("file:{}", path.display());
        }
        let mut url = self.url.clone();
        url.set_fragment(None); // never sent to a camera; may hold anything
        if url.query().is_some() {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let secret = SECRET_QUERY_KEYS.iter().any(|s| k.eq_ignore_ascii_case(s));
                    (k.into_owned(), if secret { "***".to_owned() } else { v.into_owned() })
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        let text = url.to_string().replace("%2A%2A%2A", "***");
        match &self.credentials {
            Some(_) => text.replacen("://", "://***@", 1),
            None => text,
        }
    }

    /// `text` (an error from the RTSP client, say) with this URL's secrets
    /// replaced: the full URL by its redacted form, secret query values by `***`.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.replace(self.url.as_str(), &self.redacted());
        for (k, v) in self.url.query_pairs() {
            if !v.is_empty() && SECRET_QUERY_KEYS.iter().any(|s| k.eq_ignore_ascii_case(s)) {
                out = out.replace(v.as_ref(), "***");
            }
        }
        if let Some((user, pass)) = self.credentials() {
            for secret in [pass, user].into_iter().filter(|s| s.len() >= 3) {
                out = out.replace(secret, "***");
            }
        }
        out
    }
}

/// Only the redacted form is ever printed, even with `{:?}`.
impl fmt::Debug for CameraUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for CameraUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Query parameters cameras use for credentials; their values are never shown.
const SECRET_QUERY_KEYS: &[&str] = &[
    "user",
    "username",
    "usr",
    "login",
    "password",
    "passwd",
    "pass",
    "pwd",
    "token",
    "access_token",
    "auth",
    "key",
    "apikey",
    "api_key",
    "secret",
    "signature",
    "sig",
    "session",
];

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_string_credentials_are_redacted_and_scrubbed_from_errors() {
        let u =
            CameraUrl::parse("rtsp://10.0.0.5/live?channel=1&user=admin&Password=hunter2%26x&token=abc123").unwrap();
        let shown = u.redacted();
        assert_eq!(shown, "rtsp://10.0.0.5/live?channel=1&user=***&Password=***&token=***");
        let err = format!("DESCRIBE {} failed: 401 (token abc123)", u.url());
        let scrubbed = u.scrub(&err);
        for secret in ["admin", "hunter2", "abc123"] {
            assert!(!scrubbed.contains(secret), "{secret} in {scrubbed}");
        }
        assert!(scrubbed.contains("channel=1"), "{scrubbed}");
        let p = CameraUrl::parse("rtsp://op:p%40ss%2Fw%3Fd%23@cam.local/s").unwrap();
        assert_eq!(p.credentials(), Some(("op", "p@ss/w?d#")));
        assert_eq!(p.redacted(), "rtsp://***@cam.local/s");
        assert_eq!(p.scrub("bad password p@ss/w?d# for op"), "bad password *** for op");
    }

    #[test]
    fn credentials_are_split_off_and_never_printed() {
        let u = CameraUrl::parse("rtsp://admin:s%40cret@10.0.0.5:554/stream1").unwrap();
        assert_eq!(u.credentials(), Some(("admin", "s@cret")));
        assert_eq!(u.url().as_str(), "rtsp://10.0.0.5:554/stream1");
        for shown in [u.redacted(), format!("{u}"), format!("{u:?}")] {
            assert!(!shown.contains("admin") && !shown.contains("cret"), "{shown}");
            assert!(shown.contains("10.0.0.5:554/stream1"), "{shown}");
        }
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_secrets() {
        let e = CameraUrl::parse("http://user:topsecret@cam/x").unwrap_err().to_string();
        assert!(e.contains("unsupported scheme `http:`") && !e.contains("topsecret"), "{e}");
        assert!(CameraUrl::parse("not a url").is_err());
        assert!(CameraUrl::parse("rtsp:///path").is_err());
        let f = CameraUrl::parse("file:assets/demo/clip.h264").unwrap();
        assert_eq!(f.file_path(), Some(std::path::Path::new("assets/demo/clip.h264")));
        let w = CameraUrl::parse("whip:").unwrap();
        assert!(w.is_whip() && !w.is_rtsp());
        assert_eq!(w.redacted(), "whip:");
        assert!(CameraUrl::parse("whip:elsewhere").is_err());
        let f = CameraUrl::parse("file:///tmp/a%20b.h264").unwrap();
        assert_eq!(f.file_path(), Some(std::path::Path::new("/tmp/a b.h264")));
    }
}
