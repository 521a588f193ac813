//! What a running process holds, read from `/proc/<pid>`: resident memory,
//! threads, open file descriptors, UDP sockets. The tests' leak checks use
//! the panicking helpers; the soak (benches/soak) the `Option` ones, since it
//! must report a process that has gone rather than stop.

use std::collections::HashSet;

/// A numeric field of `/proc/<pid>/status` (`VmRSS` in kB, `Threads`, ...);
/// None when the process or the field is not there.
pub fn status_value(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// (open fds, of which UDP sockets) of process `pid`: a UDP socket is an fd
/// whose socket inode is in its network namespace's UDP tables (v4 and v6).
/// None when the process is not there.
pub fn fd_counts(pid: u32) -> Option<(usize, usize)> {
    let mut udp = HashSet::new();
    for table in ["udp", "udp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
        udp.extend(text.lines().skip(1).filter_map(|l| l.split_whitespace().nth(9).map(str::to_owned)));
    }
    let (mut all, mut sockets) = (0, 0);
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        all += 1;
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        let inode = target.to_str().and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']'));
        sockets += usize::from(inode.is_some_and(|i| udp.contains(i)));
    }
    Some((all, sockets))
}

/// VmRSS of process `pid`, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_value(pid, "VmRSS").expect("VmRSS of a running process")
}

/// Open file descriptors of process `pid`.
pub fn open_fds(pid: u32) -> usize {
    fd_counts(pid).expect("/proc/<pid>/fd of a running process").0
}

/// UDP sockets process `pid` holds.
pub fn udp_sockets(pid: u32) -> usize {
    fd_counts(pid).expect("/proc/<pid>/fd of a running process").1
}
