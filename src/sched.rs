//! The scheduling class of the CPU-heavy threads (each camera's media thread:
//! decode, overlay, encode; the inference thread): `SCHED_BATCH` (Linux,
//! `sched(7)`) at nice [`NICE`]. Waking up, a batch thread never preempts the
//! thread running, so the SFU's send workers and the RTSP reads (short and
//! latency-bound) no longer wait behind an access unit's decode; and at a
//! lower weight it does not cut into a send worker's pass over its viewers
//! while the core is contended (it still gets all an idle core has). Threads
//! a batch thread starts afterwards (libavcodec's, x264's) inherit both.

/// The nice value of the batch threads: 5, a third of a normal thread's
/// weight when both want the CPU.
pub const NICE: i32 = 5;

/// Puts the calling thread in `SCHED_BATCH` at nice [`NICE`]; a refusal (not
/// Linux, a seccomp profile) is logged at debug level and changes nothing else.
pub fn batch_current_thread() {
    if let Err(e) = set_batch() {
        tracing::debug!("SCHED_BATCH refused, thread stays SCHED_OTHER: {e}");
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn set_batch() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is an initialised sched_param that outlives the call,
    // which only reads it; pid 0 names the calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: plain integer arguments; who = 0 names the calling thread
    // (Linux keeps the nice value per thread).
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(not(target_os = "linux"))]
fn set_batch() -> std::io::Result<()> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "SCHED_BATCH is Linux's"))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn the_calling_thread_becomes_batch_and_no_other() {
        // (policy, nice) of the calling thread: fields 41 and 19 of its
        // stat, counted from 3 after the parenthesised comm.
        let sched = || {
            let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
            let fields: Vec<i32> =
                stat.rsplit_once(") ").unwrap().1.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
            (fields[38], fields[16])
        };
        let main = sched();
        let batch = std::thread::spawn(move || {
            super::batch_current_thread();
            sched()
        })
        .join()
        .unwrap();
        assert_eq!(batch, (libc::SCHED_BATCH, super::NICE));
        assert_eq!(sched(), main, "only the calling thread changes");
    }
}
