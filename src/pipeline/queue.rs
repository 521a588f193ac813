//! The bounded access-unit queue between a camera's network task and its media
//! thread. When full it drops the oldest access unit and then everything up to
//! the next keyframe (a decoder cannot use P-frames after a gap); every drop
//! is counted.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::media::{AccessUnit, VideoCodec};

/// What the media thread receives.
#[derive(Debug)]
pub enum MediaMsg {
    AccessUnit(AccessUnit),
    /// A new session of the source started, sending this codec: reset the decoder.
    Reset(VideoCodec),
}

#[derive(Default)]
struct State {
    items: VecDeque<MediaMsg>,
    skip_to_keyframe: bool,
    closed: bool,
}

/// Outcome of a pop.
pub enum Popped {
    Msg(MediaMsg),
    /// Nothing arrived within the wait.
    Idle,
    Closed,
}

pub struct FrameQueue {
    capacity: usize,
    state: Mutex<State>,
    ready: Condvar,
}

impl FrameQueue {
    pub fn new(capacity: usize) -> FrameQueue {
        FrameQueue { capacity: capacity.max(2), state: Mutex::default(), ready: Condvar::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("queue lock is never poisoned: no panics while held")
    }

    /// Queues a message; returns how many access units were dropped to make room.
    pub fn push(&self, msg: MediaMsg) -> u64 {
        let mut s = self.lock();
        let mut dropped = 0;
        if matches!(msg, MediaMsg::Reset(_)) {
            s.items.clear();
            s.skip_to_keyframe = false;
        } else if s.items.len() >= self.capacity {
            s.items.pop_front();
            dropped += 1;
            s.skip_to_keyframe = true;
        }
        s.items.push_back(msg);
        drop(s);
        self.ready.notify_one();
        dropped
    }

    /// Waits up to `wait` for the next message. Access units between an overflow
    /// and the next keyframe are dropped here; their count is added to `dropped`.
    pub fn pop(&self, wait: Duration, dropped: &mut u64) -> Popped {
        let mut s = self.lock();
        loop {
            if s.closed {
                return Popped::Closed;
            }
            while let Some(msg) = s.items.pop_front() {
                match msg {
                    MediaMsg::AccessUnit(au) if s.skip_to_keyframe && !au.keyframe => *dropped += 1,
                    MediaMsg::AccessUnit(au) => {
                        s.skip_to_keyframe = false;
                        return Popped::Msg(MediaMsg::AccessUnit(au));
                    }
                    reset @ MediaMsg::Reset(_) => return Popped::Msg(reset),
                }
            }
            let (guard, timeout) = self.ready.wait_timeout(s, wait).expect("queue lock is never poisoned");
            s = guard;
            if timeout.timed_out() && s.items.is_empty() {
                return if s.closed { Popped::Closed } else { Popped::Idle };
            }
        }
    }

    /// Wakes the media thread and makes every later pop return `Closed`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Instant, SystemTime};

    use bytes::Bytes;

    use super::*;

    fn au(n: u8, keyframe: bool) -> MediaMsg {
        MediaMsg::AccessUnit(AccessUnit::new(
            Bytes::from(vec![n]),
            i64::from(n),
            keyframe,
            Instant::now(),
            SystemTime::now(),
        ))
    }

    fn pts(p: Popped) -> Option<i64> {
        match p {
            Popped::Msg(MediaMsg::AccessUnit(a)) => Some(a.pts_90k),
            _ => None,
        }
    }

    #[test]
    fn overflow_drops_oldest_then_skips_to_the_next_keyframe() {
        let q = FrameQueue::new(3);
        let mut pushed_drops = 0;
        for (n, k) in [(0, true), (1, false), (2, false), (3, false), (4, true), (5, false)] {
            pushed_drops += q.push(au(n, k));
        }
        assert_eq!(pushed_drops, 3, "three oldest dropped to make room");
        let mut dropped = 0;
        assert_eq!(pts(q.pop(Duration::ZERO, &mut dropped)), Some(4), "P-frame 3 skipped");
        assert_eq!(dropped, 1);
        assert_eq!(pts(q.pop(Duration::ZERO, &mut dropped)), Some(5));
        assert!(matches!(q.pop(Duration::from_millis(1), &mut dropped), Popped::Idle));
        q.close();
        assert!(matches!(q.pop(Duration::from_secs(5), &mut dropped), Popped::Closed));
    }

    #[test]
    fn reset_clears_the_queue() {
        let q = FrameQueue::new(4);
        q.push(au(0, true));
        q.push(MediaMsg::Reset(VideoCodec::H264));
        let mut d = 0;
        assert!(matches!(q.pop(Duration::ZERO, &mut d), Popped::Msg(MediaMsg::Reset(_))));
        assert!(matches!(q.pop(Duration::ZERO, &mut d), Popped::Idle));
    }
}
