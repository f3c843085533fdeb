//! Loom model tests of the gate protocol.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test --release -p devlife-gate --test loom`
//!
//! The data a gate protects is a `loom::cell::UnsafeCell`: a handler reads it
//! inside a guard, the remover writes it ("frees" it) after the drain. Loom
//! reports any schedule in which the write is not ordered after every read as
//! a data race, so these tests check the drain's happens-before edge, not
//! just counts. Under loom the asymmetric barriers are `fence(SeqCst)` (see
//! `barrier.rs`).
#![cfg(loom)]

use devlife_gate::{CancelSource, Cancelled, Gate, Revocable, WaitQueue};
use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::thread;

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(f);
}

/// Data freed after the drain: the handler's read must happen before it.
struct Protected {
    gate: Gate,
    data: UnsafeCell<usize>,
}

// SAFETY (test): access to `data` follows the gate protocol under test; loom
// checks it.
unsafe impl Sync for Protected {}

#[test]
fn kill_racing_enter_orders_handler_before_free() {
    model(|| {
        let p = Arc::new(Protected { gate: Gate::new(), data: UnsafeCell::new(1) });
        let p2 = p.clone();
        let t = thread::spawn(move || {
            if let Some(_g) = p2.gate.try_enter() {
                // SAFETY (test): read inside the guard.
                let v = p2.data.with(|d| unsafe { *d });
                assert_eq!(v, 1, "handler saw freed data");
            }
        });
        p.gate.kill_and_drain().unwrap();
        // "Free": write after the drain.
        p.data.with_mut(|d| unsafe { *d = 0 });
        t.join().unwrap();
    });
}

#[test]
fn kill_many_orders_handlers_of_each_gate_before_free() {
    model(|| {
        let a = Arc::new(Protected { gate: Gate::new(), data: UnsafeCell::new(1) });
        let b = Arc::new(Protected { gate: Gate::new(), data: UnsafeCell::new(1) });
        let (a2, b2) = (a.clone(), b.clone());
        let t = thread::spawn(move || {
            for p in [&b2, &a2] {
                if let Some(_g) = p.gate.try_enter() {
                    // SAFETY (test): read inside the guard.
                    let v = p.data.with(|d| unsafe { *d });
                    assert_eq!(v, 1, "handler saw freed data");
                }
            }
        });
        assert_eq!(Gate::kill_many([&a.gate, &b.gate]), 2);
        for p in [&a, &b] {
            p.gate.drain().unwrap();
            // SAFETY (test): "free" after the drain.
            p.data.with_mut(|d| unsafe { *d = 0 });
        }
        t.join().unwrap();
    });
}

#[test]
fn no_entry_after_kill_returns() {
    model(|| {
        let gate = Arc::new(Gate::new());
        let killed = Arc::new(AtomicBool::new(false));
        let (g2, k2) = (gate.clone(), killed.clone());
        let t = thread::spawn(move || {
            // If this thread observes that kill() returned, its entry must fail.
            let saw_kill = k2.load(Ordering::Acquire);
            let entered = g2.try_enter().is_some();
            assert!(!(saw_kill && entered), "entered after kill returned");
        });
        gate.kill();
        killed.store(true, Ordering::Release);
        t.join().unwrap();
    });
}

#[test]
fn nested_and_out_of_order_guards() {
    model(|| {
        let p = Arc::new(Protected { gate: Gate::new(), data: UnsafeCell::new(1) });
        let p2 = p.clone();
        let t = thread::spawn(move || {
            let a = p2.gate.try_enter();
            let b = p2.gate.try_enter();
            // A second entry can fail only if the first did or a kill came in between.
            drop(a); // out of order: the outer guard first
            if b.is_some() {
                // SAFETY (test): still inside through `b`.
                assert_eq!(p2.data.with(|d| unsafe { *d }), 1);
            }
            drop(b);
        });
        p.gate.kill_and_drain().unwrap();
        p.data.with_mut(|d| unsafe { *d = 0 });
        t.join().unwrap();
    });
}

#[test]
fn two_drainers_both_wait() {
    model(|| {
        let p = Arc::new(Protected { gate: Gate::new(), data: UnsafeCell::new(1) });
        let guard_holder = {
            let p = p.clone();
            thread::spawn(move || {
                if let Some(_g) = p.gate.try_enter() {
                    assert_eq!(p.data.with(|d| unsafe { *d }), 1);
                }
            })
        };
        let drainer = {
            let p = p.clone();
            thread::spawn(move || {
                p.gate.kill_and_drain().unwrap();
                // Both drainers may read after the drain.
                p.data.with(|d| unsafe { *d })
            })
        };
        p.gate.kill_and_drain().unwrap();
        let _ = p.data.with(|d| unsafe { *d });
        assert_eq!(drainer.join().unwrap(), 1);
        guard_holder.join().unwrap();
        p.data.with_mut(|d| unsafe { *d = 0 });
    });
}

#[test]
fn kill_wakes_a_sleeping_handler() {
    model(|| {
        let gate = Arc::new(Gate::new());
        let wq = Arc::new(WaitQueue::new());
        let (g2, wq2) = (gate.clone(), wq.clone());
        let t = thread::spawn(move || {
            let Some(g) = g2.try_enter() else { return None };
            // The condition never holds: only the kill can end the wait.
            Some(g.wait_event(&wq2, None, || false))
        });
        gate.kill_and_drain().unwrap();
        let r = t.join().unwrap();
        assert!(matches!(r, None | Some(Err(Cancelled::Removed))), "{r:?}");
    });
}

#[test]
fn wake_is_not_lost() {
    model(|| {
        let gate = Arc::new(Gate::new());
        let wq = Arc::new(WaitQueue::new());
        let ready = Arc::new(AtomicBool::new(false));
        let (g2, wq2, r2) = (gate.clone(), wq.clone(), ready.clone());
        let t = thread::spawn(move || {
            let g = g2.try_enter().unwrap();
            g.wait_event(&wq2, None, || r2.load(Ordering::Acquire))
        });
        ready.store(true, Ordering::Release);
        wq.wake_all();
        assert_eq!(t.join().unwrap(), Ok(()));
    });
}

#[test]
fn interrupt_is_the_second_source() {
    model(|| {
        let gate = Arc::new(Gate::new());
        let wq = Arc::new(WaitQueue::new());
        let intr = Arc::new(CancelSource::new());
        let (g2, wq2, i2) = (gate.clone(), wq.clone(), intr.clone());
        let t = thread::spawn(move || {
            let g = g2.try_enter().unwrap();
            g.wait_event(&wq2, Some(&i2), || false)
        });
        intr.cancel();
        assert_eq!(t.join().unwrap(), Err(Cancelled::Interrupted));
        assert!(!gate.is_killed());
    });
}

#[test]
fn thread_exit_returns_record_and_gate_overflow_is_counted() {
    // Under loom a record holds 4 slots: the fifth gate uses its shared slot.
    model(|| {
        let gates: Arc<Vec<Gate>> = Arc::new((0..5).map(|_| Gate::new()).collect());
        let entered = Arc::new(AtomicUsize::new(0));
        let (g2, e2) = (gates.clone(), entered.clone());
        thread::spawn(move || {
            for g in g2.iter() {
                if let Some(_x) = g.try_enter() {
                    e2.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .join()
        .unwrap();
        // The thread has exited; its record went back to the pool balanced.
        for g in gates.iter() {
            assert_eq!(g.inside(), 0);
            g.kill_and_drain().unwrap();
        }
        assert_eq!(entered.load(Ordering::Relaxed), 5);
    });
}

#[test]
fn revoke_drops_after_readers() {
    model(|| {
        let r = Arc::new(Revocable::new(UnsafeCellBox(UnsafeCell::new(7))));
        let r2 = r.clone();
        let t = thread::spawn(move || r2.try_access_with(|b| b.0.with(|d| unsafe { *d })));
        assert!(r.revoke());
        assert!(matches!(t.join().unwrap(), None | Some(7)));
    });
}

/// Writes to its cell when dropped, so loom checks the drop against readers.
struct UnsafeCellBox(UnsafeCell<usize>);
// SAFETY (test): as for `Protected`.
unsafe impl Sync for UnsafeCellBox {}
impl Drop for UnsafeCellBox {
    fn drop(&mut self) {
        self.0.with_mut(|d| unsafe { *d = 0 });
    }
}

/// A future that borrows `Protected::data`: every poll and its drop read
/// it, and each counts itself, so the model sees both ordered before the
/// remover's "free".
struct Borrowing {
    p: Arc<Protected>,
    polls: Arc<AtomicUsize>,
    ready_after: usize,
}

impl std::future::Future for Borrowing {
    type Output = usize;
    fn poll(mut self: std::pin::Pin<&mut Self>, _cx: &mut std::task::Context<'_>) -> std::task::Poll<usize> {
        // SAFETY (test): the protocol under test orders this before the free.
        let v = self.p.data.with(|d| unsafe { *d });
        assert_eq!(v, 1, "a future was polled after its data was freed");
        let n = self.polls.fetch_add(1, Ordering::SeqCst) + 1;
        self.ready_after = self.ready_after.saturating_sub(1);
        if self.ready_after == 0 { std::task::Poll::Ready(n) } else { std::task::Poll::Pending }
    }
}

impl Drop for Borrowing {
    fn drop(&mut self) {
        // SAFETY (test): as for `poll`.
        let v = self.p.data.with(|d| unsafe { *d });
        assert_eq!(v, 1, "a future was dropped after its data was freed");
    }
}

/// The removal protocol for futures (`TaskCell`): an executor thread polls
/// a pending future inside the gate while the remover kills, drains,
/// cancels and frees. In every schedule no poll and no drop of the future
/// comes after the free, the future ends exactly once (completed by the
/// poll or cancelled by the sweep), and nothing polls it after the sweep.
#[test]
fn removal_drops_every_future_before_the_free_and_ends_each_once() {
    use devlife_gate::TaskCell;
    model(|| {
        let p = Arc::new(Protected { gate: Gate::new(), data: UnsafeCell::new(1) });
        let polls = Arc::new(AtomicUsize::new(0));
        let cell = Arc::new(TaskCell::new(Box::pin(Borrowing {
            p: p.clone(),
            polls: polls.clone(),
            ready_after: 2,
        })));
        let completed = Arc::new(AtomicUsize::new(0));
        let exec = {
            let (p, cell, completed) = (p.clone(), cell.clone(), completed.clone());
            thread::spawn(move || {
                let waker = std::task::Waker::noop();
                let mut cx = std::task::Context::from_waker(waker);
                // Two wake-ups: the second poll completes it.
                for _ in 0..2 {
                    if let Some(std::task::Poll::Ready(_)) =
                        cell.poll_with(|| p.gate.try_enter(), |f| f.poll(&mut cx))
                    {
                        completed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        };
        p.gate.kill_and_drain().unwrap();
        let cancelled = cell.cancel();
        let polled_at_sweep = polls.load(Ordering::SeqCst);
        // "Free": after the sweep.
        p.data.with_mut(|d| unsafe { *d = 0 });
        exec.join().unwrap();
        assert_eq!(usize::from(cancelled) + completed.load(Ordering::SeqCst), 1, "ended exactly once");
        assert_eq!(polls.load(Ordering::SeqCst), polled_at_sweep, "polled after the sweep");
        assert!(cell.is_ended());
    });
}

/// An interrupt (a second canceller) racing the executor and the removal:
/// still one end, and the drop before the free.
#[test]
fn an_interrupt_racing_removal_and_poll_ends_the_future_once() {
    use devlife_gate::TaskCell;
    model(|| {
        let p = Arc::new(Protected { gate: Gate::new(), data: UnsafeCell::new(1) });
        let polls = Arc::new(AtomicUsize::new(0));
        let cell = Arc::new(TaskCell::new(Box::pin(Borrowing { p: p.clone(), polls, ready_after: 1 })));
        let ends = Arc::new(AtomicUsize::new(0));
        let exec = {
            let (p, cell, ends) = (p.clone(), cell.clone(), ends.clone());
            thread::spawn(move || {
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                if let Some(std::task::Poll::Ready(_)) =
                    cell.poll_with(|| p.gate.try_enter(), |f| f.poll(&mut cx))
                {
                    ends.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        let intr = {
            let (cell, ends) = (cell.clone(), ends.clone());
            thread::spawn(move || {
                if cell.cancel() {
                    ends.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        p.gate.kill_and_drain().unwrap();
        if cell.cancel() {
            ends.fetch_add(1, Ordering::SeqCst);
        }
        // Not joined first: an interrupt that took the future dropped it
        // under the cell's lock, which the sweep's cancel took after it.
        p.data.with_mut(|d| unsafe { *d = 0 });
        intr.join().unwrap();
        exec.join().unwrap();
        assert_eq!(ends.load(Ordering::SeqCst), 1, "ended exactly once");
    });
}
