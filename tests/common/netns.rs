//! Runs a network test inside a network namespace of its own (loopback only),
//! so nothing it does can reach any address but 127.0.0.1 — DNS lookups of
//! made-up hosts included.
//!
//! Usage, first line of a test: `if !netns::isolated("module::test_name") { return; }`.
//! Outside a namespace this re-runs the same test binary, for that one test, under
//! `unshare -n` with `lo` up, asserts it passed, and returns false.

use std::process::Command;

/// Set in the re-run child, so it never re-runs itself again.
const MARKER: &str = "INFERCAST_TEST_NETNS";

/// True when this process's network namespace has no interface but `lo`
/// (`/proc/self/net/dev` is per namespace; `/sys/class/net` is not).
pub fn only_loopback() -> bool {
    std::fs::read_to_string("/proc/self/net/dev")
        .map(|t| t.lines().skip(2).all(|l| l.trim_start().starts_with("lo:")))
        .unwrap_or(false)
}

pub fn isolated(test_name: &str) -> bool {
    if std::env::var_os(MARKER).is_some() {
        assert!(only_loopback(), "re-run in a namespace, yet interfaces other than lo are visible");
        return true;
    }
    if only_loopback() {
        return true;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let status = Command::new("unshare")
        .env(MARKER, "1")
        .args(["--net", "--", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
        .arg(&exe)
        .args(["--exact", test_name, "--nocapture", "--test-threads", "1"])
        .status()
        .expect("unshare (util-linux) runs; tests need root or user namespaces");
    assert!(status.success(), "{test_name} failed inside its network namespace");
    false
}
