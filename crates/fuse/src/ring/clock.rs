//! A coarse clock for the ring workers, advanced by the monitor.
//!
//! A worker stamps every request twice (when its handler starts, for the
//! monitor's long-handler check; when it starts to wait, for the decision
//! to retire). Reading the system clock for each costs two `clock_gettime`
//! calls per request, 3% of a worker's time on the one-client-thread path
//! (`docs/BENCHMARKS.md`); reading this clock costs one load. It is as
//! stale as the monitor's last look (one [`MONITOR_BUSY`](super::MONITOR_BUSY)
//! while requests flow, one [`MONITOR_IDLE`](super::MONITOR_IDLE) after a
//! quiet spell), so a stamp only bounds when something began from below;
//! [`Looks`] gives the bound from above that the long-handler check needs.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Milliseconds since the transport started, plus one (0 means "never"),
/// as of the monitor's last look.
pub(super) struct Clock {
    t0: Instant,
    now: AtomicU64,
}

impl Clock {
    pub(super) fn new() -> Self {
        Clock { t0: Instant::now(), now: AtomicU64::new(1) }
    }

    /// The time of the monitor's last look: never later than the real
    /// time, never 0.
    pub(super) fn now(&self) -> u64 {
        self.now.load(Ordering::Relaxed)
    }

    /// Sets the clock to the real time, and returns it (the monitor's
    /// look).
    fn advance(&self) -> u64 {
        let t = self.t0.elapsed().as_millis() as u64 + 1;
        self.now.fetch_max(t, Ordering::Relaxed);
        t
    }
}

/// The monitor's recent looks, to tell how long ago a stamped thing began
/// at the least.
pub(super) struct Looks {
    /// The times the clock was set to, oldest first, strictly increasing.
    times: VecDeque<u64>,
}

/// Looks remembered: more than a long handler spans at the busy interval.
const KEPT: usize = 16;

impl Looks {
    pub(super) fn new() -> Self {
        Looks { times: VecDeque::with_capacity(KEPT) }
    }

    /// Advances `clock` to the real time and remembers it; returns it.
    pub(super) fn look(&mut self, clock: &Clock) -> u64 {
        let t = clock.advance();
        if self.times.back().is_none_or(|&b| t > b) {
            if self.times.len() == KEPT {
                self.times.pop_front();
            }
            self.times.push_back(t);
        }
        t
    }

    /// The latest time by which something stamped `stamp` (a value of
    /// [`Clock::now`]) had begun: the first look after the one that set
    /// the clock to `stamp`, or the oldest look remembered if `stamp` is
    /// older still. `None` if it may have begun after the latest look.
    pub(super) fn begun_by(&self, stamp: u64) -> Option<u64> {
        match self.times.front() {
            Some(&first) if stamp < first => Some(first),
            _ => self.times.iter().copied().find(|&t| t > stamp),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_is_bounded_by_the_next_look() {
        let clock = Clock::new();
        let mut looks = Looks::new();
        assert_eq!(looks.begun_by(1), None, "no look yet");
        let a = looks.look(&clock);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = looks.look(&clock);
        assert!(b > a);
        assert_eq!(clock.now(), b);
        // Stamped with `a`: begun between the look at `a` and the one at `b`.
        assert_eq!(looks.begun_by(a), Some(b));
        // Stamped with the latest look: it may have begun just now.
        assert_eq!(looks.begun_by(b), None);
        // Older than every look kept: begun by the oldest.
        assert_eq!(looks.begun_by(a - 1), Some(a));
    }

    #[test]
    fn only_so_many_looks_are_kept() {
        let clock = Clock::new();
        let mut looks = Looks::new();
        let first = looks.look(&clock);
        for _ in 0..KEPT + 3 {
            std::thread::sleep(std::time::Duration::from_millis(1));
            looks.look(&clock);
        }
        assert_eq!(looks.times.len(), KEPT);
        let oldest = *looks.times.front().unwrap();
        assert!(oldest > first);
        assert_eq!(looks.begun_by(first), Some(oldest));
    }
}
