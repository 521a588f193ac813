//! What a running process holds, read from `/proc/<pid>`: resident memory,
//! open file descriptors, UDP sockets (leak checks in the tests).

/// VmRSS of process `pid`, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("a VmRSS line");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS in kB")
}

/// Open file descriptors of process `pid`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).expect("/proc/<pid>/fd").count()
}

/// UDP sockets process `pid` holds: its socket fds whose inode is in its
/// network namespace's UDP table (`/proc/<pid>/net/udp`).
pub fn udp_sockets(pid: u32) -> usize {
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/udp")).expect("/proc/<pid>/net/udp");
    let inodes: std::collections::HashSet<String> =
        table.lines().skip(1).filter_map(|l| l.split_whitespace().nth(9).map(str::to_owned)).collect();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/<pid>/fd")
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_owned))
        .filter(|inode| inodes.contains(inode))
        .count()
}
