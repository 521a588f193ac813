//! The OpenAPI document against the real binary: it is OpenAPI 3.1, every
//! documented operation is served (a real request reaches a handler, not the
//! 404 fallback or a 405), and no route is registered outside the documented
//! router (`routes!` in src/api; a bare axum `.route(` would escape the document).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::service::Infercast;

/// Method, path → status and the first bytes of the body, over a raw socket
/// (an event stream never ends, so only its start is read).
fn probe(addr: &str, method: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = if method == "POST" { "v=0\r\n" } else { "" };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = 0;
    while got < 512 {
        match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    let text = String::from_utf8_lossy(&buf[..got]).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

#[test]
fn every_documented_operation_is_served_and_every_route_documented() {
    let app = Infercast::start(&[]);
    let doc = app.get_json("/api/openapi.json");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
    assert_eq!(doc["info"]["title"], "infercast");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 18, "{} paths", paths.len());

    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut checked = 0;
    for (path, item) in paths {
        let concrete = path
            .replace("{name}", "demo")
            .replace("{camera}", "demo")
            .replace("{track}", "raw")
            .replace("{session}", "00000000000000000000000000000000")
            .replace("{file}", "app.js");
        for method in ["get", "post", "patch", "delete", "options"] {
            let Some(op) = item.get(method) else { continue };
            assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path}: no responses");
            let (status, text) = probe(&addr, &method.to_uppercase(), &concrete);
            assert!(status != 0 && status != 405, "{method} {concrete}: {status}\n{text}");
            assert!(!text.contains("no such endpoint"), "{method} {concrete} is documented but not served:\n{text}");
            checked += 1;
        }
    }
    assert!(checked >= 20, "{checked} operations checked");

    // `infercast openapi` prints the same document without a server.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_infercast")).arg("openapi").output().unwrap();
    assert!(out.status.success());
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, doc, "`infercast openapi` and GET /api/openapi.json differ");

    // The index lists exactly the documented operations.
    let index = app.get_json("/api");
    let listed = index["endpoints"].as_array().unwrap().len();
    assert_eq!(listed, checked, "GET /api lists {listed} endpoints, the document {checked}");

    // Nothing is routed around the document.
    for entry in std::fs::read_dir(common::repo().join("src/api")).unwrap() {
        let path = entry.unwrap().path();
        let source = std::fs::read_to_string(&path).unwrap();
        assert!(
            !source.contains(".route(\"") && !source.replace("OpenApiRouter::new()", "").contains("Router::new()"),
            "{}: a route outside `routes!` would be missing from the OpenAPI document",
            path.display()
        );
    }
}
