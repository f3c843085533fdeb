//! The monitor: takes a queue over from a leader whose handler runs on
//! while requests wait for it, or runs long (see "Leading, handing off,
//! following" in the parent module), as Go's `sysmon` retakes a processor
//! from a thread stuck in a system call.

use super::queue::{Need, Queue};
use crate::fs::Filesystem;
use crate::session::Shared;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How often the monitor looks, at the most: while requests flow, a look
/// every `BUSY` (a handler found at two looks in a row while requests wait
/// for its thread is taken over); after a look that found a leader in a
/// handler, the next within `RUNNING`; after a take-over, every `FAST`,
/// doubling back to `BUSY` once `QUIET_LOOKS` looks took nothing over
/// (Go's `sysmon` paces itself so); and every `IDLE` while no request
/// comes. A leader that begins a long handler while requests wait for it
/// is taken over within about `BUSY + RUNNING`, or two `FAST` looks while
/// handlers often run long; `LONG_HANDLER` when none is seen waiting.
const FAST: Duration = Duration::from_micros(100);
const RUNNING: Duration = Duration::from_micros(250);
const BUSY: Duration = Duration::from_millis(1);
const IDLE: Duration = Duration::from_millis(20);
const QUIET_LOOKS: u32 = 50;

/// How long a leader's handler may run when no request is seen waiting
/// (requests may wait unseen in the kernel's queue when every entry is
/// taken) before another thread takes the queue over, if it neither sleeps
/// in a cancellable wait (which hands it over at once) nor returns.
const LONG_HANDLER: Duration = Duration::from_millis(2);

/// The monitor's pace: how long to sleep before the next look.
struct Pace {
    /// The busy interval now: `FAST` after a take-over, doubling to `BUSY`.
    tick: Duration,
    /// Looks since the last take-over.
    quiet: u32,
}

impl Pace {
    fn new() -> Self {
        Pace { tick: BUSY, quiet: 0 }
    }

    /// The sleep after a look that took a queue over (`stole`), found a
    /// leader in a handler (`running`), or found requests flowing (`busy`).
    fn after(&mut self, stole: bool, running: bool, busy: bool) -> Duration {
        if stole {
            (self.tick, self.quiet) = (FAST, 0);
        } else {
            self.quiet = self.quiet.saturating_add(1);
            if self.quiet > QUIET_LOOKS {
                self.tick = (self.tick * 2).min(BUSY);
            }
        }
        match (running, busy) {
            (true, _) => self.tick.min(RUNNING),
            (false, true) => self.tick,
            (false, false) => IDLE,
        }
    }
}

/// Runs until the session ends.
pub(super) fn run<F: Filesystem>(s: &Arc<Shared<F>>, queues: &[Arc<Queue>]) {
    let mut last = u64::MAX;
    let mut pace = Pace::new();
    let mut sleep = IDLE;
    // For each queue, the leader's request seen running, and since when.
    let mut seen: Vec<Option<(u64, Instant)>> = vec![None; queues.len()];
    while !s.is_ended() {
        std::thread::sleep(sleep);
        let requests: u64 = queues.iter().map(|q| q.counters.requests.load(Ordering::Relaxed)).sum();
        let (busy, mut running, mut stole) = (requests != last, false, false);
        last = requests;
        for (q, seen) in queues.iter().zip(seen.iter_mut()) {
            let look = q.look();
            let Some(seq) = look.running else {
                *seen = None;
                continue;
            };
            running = true;
            match *seen {
                Some((s0, since)) if s0 == seq => {
                    if look.waiting || since.elapsed() >= LONG_HANDLER {
                        *seen = None;
                        if let Some(need) = q.steal(seq) {
                            stole = true;
                            s.stats.ring_steals.fetch_add(1, Ordering::Relaxed);
                            if need == Need::Thread {
                                super::thread::spawn(s, q);
                            }
                        }
                    }
                }
                _ => *seen = Some((seq, Instant::now())),
            }
        }
        sleep = pace.after(stole, running, busy);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pace_quickens_after_a_take_over_and_slows_back_when_quiet() {
        let mut p = Pace::new();
        assert_eq!(p.after(false, false, false), IDLE);
        assert_eq!(p.after(false, false, true), BUSY);
        assert_eq!(p.after(false, true, true), RUNNING, "a leader in a handler: look again soon");
        assert_eq!(p.after(true, true, true), FAST, "a take-over: look often");
        for _ in 0..QUIET_LOOKS {
            assert_eq!(p.after(false, false, true), FAST);
        }
        // Then doubling back to BUSY.
        let mut last = FAST;
        loop {
            let d = p.after(false, false, true);
            assert!(d >= last && d <= BUSY);
            if d == BUSY {
                break;
            }
            last = d;
        }
        assert_eq!(p.after(false, false, false), IDLE);
    }
}
