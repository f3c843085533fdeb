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

/// How often the monitor looks: after a look that found a leader in a
/// handler (a handler it finds at two looks in a row while requests wait
/// for its thread is taken over: it has run at least `RUNNING`); while
/// requests flow; and while they do not. A leader that begins a long
/// handler is taken over within about `BUSY + RUNNING` if requests wait
/// for it, `LONG_HANDLER` otherwise.
const RUNNING: Duration = Duration::from_micros(250);
const BUSY: Duration = Duration::from_millis(1);
const IDLE: Duration = Duration::from_millis(20);

/// How long a leader's handler may run when no request is seen waiting
/// (requests may wait unseen in the kernel's queue when every entry is
/// taken) before another thread takes the queue over, if it neither sleeps
/// in a cancellable wait (which hands it over at once) nor returns.
const LONG_HANDLER: Duration = Duration::from_millis(2);

/// Runs until the session ends.
pub(super) fn run<F: Filesystem>(s: &Arc<Shared<F>>, queues: &[Arc<Queue>]) {
    let mut last = u64::MAX;
    let (mut busy, mut running) = (false, false);
    // For each queue, the leader's request seen running, and since when.
    let mut seen: Vec<Option<(u64, Instant)>> = vec![None; queues.len()];
    while !s.is_ended() {
        std::thread::sleep(if running {
            RUNNING
        } else if busy {
            BUSY
        } else {
            IDLE
        });
        let requests: u64 = queues.iter().map(|q| q.counters.requests.load(Ordering::Relaxed)).sum();
        (busy, running) = (requests != last, false);
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
    }
}
