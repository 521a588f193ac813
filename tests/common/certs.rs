//! Test certificates made with Debian's openssl: a self-signed P-256
//! certificate for 127.0.0.1 and localhost, and its SPKI pin for Chromium.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A server certificate and the CA that issued it.
pub struct TestCert {
    /// `<dir>/<cn>.crt`: the server certificate (P-256, `CN=<cn>`, SAN 127.0.0.1 and localhost).
    pub cert: PathBuf,
    /// `<dir>/<cn>.key`: its private key (PKCS#8 PEM).
    pub key: PathBuf,
    /// `<dir>/<cn>-ca.crt`: the CA certificate a client trusts; one CA per call.
    pub ca: PathBuf,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs (Debian package openssl)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A fresh CA and a server certificate it signs, valid 2 days.
pub fn issue(dir: &Path, cn: &str) -> TestCert {
    let p = |suffix: &str| dir.join(format!("{cn}{suffix}"));
    let s = |path: &PathBuf| path.to_str().expect("UTF-8 path").to_owned();
    let (ca, ca_key, cert, key, csr, ext) = (p("-ca.crt"), p("-ca.key"), p(".crt"), p(".key"), p(".csr"), p(".ext"));
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    let subj = format!("/CN={cn} test CA");
    let mut args = vec!["req", "-x509", "-days", "2", "-subj", &subj];
    let (ca_s, ca_key_s) = (s(&ca), s(&ca_key));
    args.extend(ec);
    args.extend(["-keyout", &ca_key_s, "-out", &ca_s]);
    openssl(&args);
    let subj = format!("/CN={cn}");
    let (key_s, csr_s, cert_s, ext_s) = (s(&key), s(&csr), s(&cert), s(&ext));
    let mut args = vec!["req", "-subj", &subj];
    args.extend(ec);
    args.extend(["-keyout", &key_s, "-out", &csr_s]);
    openssl(&args);
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n").expect("write ext");
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr_s,
        "-CA",
        &ca_s,
        "-CAkey",
        &ca_key_s,
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &ext_s,
        "-out",
        &cert_s,
    ]);
    TestCert { cert, key, ca }
}

/// Base64 SHA-256 of the certificate's SubjectPublicKeyInfo, as Chromium's
/// `--ignore-certificate-errors-spki-list` wants it.
pub fn spki_sha256_base64(cert: &Path) -> String {
    let script = format!(
        "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64",
        cert.display()
    );
    let out = Command::new("sh").args(["-c", &script]).output().expect("sh runs");
    assert!(out.status.success(), "SPKI pin: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("base64 is ASCII").trim().to_owned()
}
