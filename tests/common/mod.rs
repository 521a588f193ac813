//! Shared helpers for integration tests: where the real photos, models and
//! fixtures live. Everything here comes from `scripts/setup` and
//! `tests/fixtures/prepare`; a missing piece fails with the command to run.
#![allow(dead_code)]

pub mod burned_in;
pub mod certs;
pub mod cluster;
pub mod depay;
pub mod lossy_relay;
pub mod metrics;
pub mod netns;
pub mod process;
pub mod rtsp;
pub mod service;
pub mod whep_client;
pub mod whip_client;

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `.venv/lib/python3.*/site-packages`.
pub fn site_packages() -> PathBuf {
    let lib = repo().join(".venv/lib");
    std::fs::read_dir(&lib)
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/setup", lib.display()))
        .flatten()
        .map(|e| e.path().join("site-packages"))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| panic!("no site-packages under {}; run scripts/setup", lib.display()))
}

/// A real photo bundled with scikit-image (e.g. `coffee.png`).
pub fn skimage_photo(name: &str) -> PathBuf {
    let p = site_packages().join("skimage/data").join(name);
    assert!(p.is_file(), "{} missing; run scripts/setup", p.display());
    p
}

/// A file made by `tests/fixtures/prepare` under `target/test-fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    let p = repo().join("target/test-fixtures").join(name);
    assert!(p.exists(), "{} missing; run tests/fixtures/prepare", p.display());
    p
}

/// A fresh empty directory for one test's files.
pub fn scratch_dir(test: &str) -> PathBuf {
    let d = repo().join("target/test-scratch").join(test);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create scratch dir");
    d
}

/// Polls `probe` every 100 ms until it holds, at most `within`; how long it took,
/// or None on timeout.
pub fn wait_until(within: Duration, mut probe: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    loop {
        if probe() {
            return Some(started.elapsed());
        }
        if started.elapsed() >= within {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
