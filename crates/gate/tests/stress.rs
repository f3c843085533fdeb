//! Multi-threaded stress tests of the gate on real threads.
//!
//! Each scenario of the gate's contract, hammered: they check behaviour
//! (never a timing); handshakes use channels and barriers, never sleeps.
//! `DEVLIFE_GATE_NO_MEMBARRIER=1` runs them on the fence fallback.

use devlife_gate::{CancelSource, CancellableMutex, Cancelled, DrainError, Gate, Revocable, WaitQueue};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::thread;
use std::time::Duration;

const ROUNDS: usize = 200;

/// Spins (yielding) until `f` holds; a hang guard of 60 s, not a timing.
fn until(mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(60), "condition never held");
        thread::yield_now();
    }
}

#[test]
fn no_handler_sees_freed_data_under_kill_races() {
    kill_races(Gate::new);
}

#[test]
fn no_handler_sees_freed_data_under_kill_races_on_a_shared_gate() {
    kill_races(Gate::new_shared);
}

fn kill_races(new: fn() -> Gate) {
    for _ in 0..ROUNDS {
        let gate = Arc::new(new());
        let freed = Arc::new(AtomicBool::new(false));
        let start = Arc::new(Barrier::new(5));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (gate, freed, start) = (gate.clone(), freed.clone(), start.clone());
                thread::spawn(move || {
                    start.wait();
                    let mut n = 0u64;
                    while let Some(g) = gate.try_enter() {
                        assert!(!freed.load(Ordering::Relaxed), "handler ran on freed data");
                        n += 1;
                        drop(g);
                    }
                    n
                })
            })
            .collect();
        start.wait();
        gate.kill_and_drain().unwrap();
        freed.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(gate.inside(), 0);
    }
}

#[test]
fn many_threads_nested_gates_any_drop_order() {
    let gates: Arc<Vec<Gate>> = Arc::new((0..8).map(|_| Gate::new()).collect());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let gates = gates.clone();
            thread::spawn(move || {
                for i in 0..20_000usize {
                    // Enter several gates, one of them twice, and drop in a
                    // rotating order.
                    let mut held: Vec<_> =
                        (0..4).filter_map(|k| gates[(i + k * t) % 8].try_enter()).collect();
                    held.extend(gates[i % 8].try_enter());
                    let r = i % held.len().max(1);
                    held.rotate_left(r);
                    while let Some(g) = held.pop() {
                        drop(g);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for g in gates.iter() {
        assert_eq!(g.inside(), 0);
        g.kill_and_drain().unwrap();
    }
}

#[test]
fn drain_waits_for_a_running_handler() {
    let gate = Arc::new(Gate::new());
    let (inside_tx, inside_rx) = mpsc::channel();
    let (leave_tx, leave_rx) = mpsc::channel::<()>();
    let left = Arc::new(AtomicBool::new(false));
    let h = {
        let (gate, left) = (gate.clone(), left.clone());
        thread::spawn(move || {
            let g = gate.try_enter().unwrap();
            inside_tx.send(()).unwrap();
            leave_rx.recv().unwrap();
            left.store(true, Ordering::SeqCst);
            drop(g);
        })
    };
    inside_rx.recv().unwrap();
    gate.kill();
    // The handler is inside: a short drain must time out and name it.
    match gate.drain_timeout(Duration::from_millis(1)) {
        Err(DrainError::TimedOut(s)) => {
            assert_eq!(s.inside, 1);
            assert_eq!(s.holders.len(), 1);
            assert!(!s.holders[0].exited);
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    leave_tx.send(()).unwrap();
    gate.drain().unwrap();
    assert!(left.load(Ordering::SeqCst), "drain returned before the handler left");
    h.join().unwrap();
}

#[test]
fn drain_from_several_threads() {
    let gate = Arc::new(Gate::new());
    let g = gate.try_enter().unwrap();
    gate.kill();
    let done = Arc::new(AtomicUsize::new(0));
    let drainers: Vec<_> = (0..3)
        .map(|_| {
            let (gate, done) = (gate.clone(), done.clone());
            thread::spawn(move || {
                gate.drain().unwrap();
                done.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    assert_eq!(done.load(Ordering::SeqCst), 0);
    drop(g);
    for d in drainers {
        d.join().unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), 3);
}

#[test]
fn thread_exiting_with_a_leaked_guard_is_reported() {
    let gate = Arc::new(Gate::new());
    let g2 = gate.clone();
    thread::Builder::new()
        .name("leaker".into())
        .spawn(move || std::mem::forget(g2.try_enter().unwrap()))
        .unwrap()
        .join()
        .unwrap();
    gate.kill();
    match gate.drain_timeout(Duration::from_millis(1)) {
        Err(DrainError::TimedOut(s)) => {
            assert_eq!(s.inside, 1);
            assert!(s.holders[0].thread.starts_with("leaker"), "{s}");
            assert!(s.holders[0].exited, "{s}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[test]
fn thread_exit_with_balanced_record_then_reuse() {
    let gate = Arc::new(Gate::new());
    for _ in 0..64 {
        let g2 = gate.clone();
        thread::spawn(move || {
            for _ in 0..100 {
                drop(g2.try_enter().unwrap());
            }
        })
        .join()
        .unwrap();
    }
    assert_eq!(gate.inside(), 0);
    gate.kill_and_drain().unwrap();
}

#[test]
fn kill_from_inside_a_handler_does_not_self_deadlock() {
    let gate = Gate::new();
    let g = gate.try_enter().unwrap();
    assert!(gate.kill(), "the first kill reports it killed");
    assert!(!gate.kill(), "a second kill reports it did not");
    assert!(gate.try_enter().is_none(), "no entry after kill, even on the killing thread");
    assert_eq!(gate.drain(), Err(DrainError::CallerInside));
    assert!(gate.held_by_current_thread());
    drop(g);
    assert!(!gate.held_by_current_thread());
    gate.drain().unwrap();
}

#[test]
fn drain_of_a_live_gate_is_refused() {
    let gate = Gate::new();
    assert_eq!(gate.drain(), Err(DrainError::NotKilled));
}

#[test]
fn revoke_from_inside_defers_the_drop() {
    let dropped = Arc::new(AtomicBool::new(false));
    struct D(Arc<AtomicBool>);
    impl Drop for D {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let r = Revocable::new(D(dropped.clone()));
    let g = r.try_access().unwrap();
    assert!(r.revoke(), "revoke from inside still kills");
    assert!(!dropped.load(Ordering::SeqCst), "data dropped under a live guard");
    assert!(r.try_access().is_none());
    drop(g);
    assert!(!r.revoke(), "second revoke did not kill");
    assert!(dropped.load(Ordering::SeqCst), "the revoke from outside drops the data");
}

#[test]
fn revoke_take_hands_over_exactly_once() {
    for _ in 0..ROUNDS {
        let r = Arc::new(Revocable::new(Box::new(5u32)));
        let takers: Vec<_> = (0..3)
            .map(|_| {
                let r = r.clone();
                thread::spawn(move || r.revoke_take().1)
            })
            .collect();
        let got: Vec<_> = takers.into_iter().filter_map(|t| t.join().unwrap()).collect();
        assert_eq!(got.len(), 1);
    }
}

#[test]
fn revoke_take_many_waits_for_users_of_each_and_takes_once() {
    for _ in 0..ROUNDS / 4 {
        let items: Arc<Vec<Revocable<Box<u32>>>> =
            Arc::new((0..64).map(|i| Revocable::new(Box::new(i))).collect());
        let start = Arc::new(Barrier::new(3));
        let users: Vec<_> = (0..2)
            .map(|_| {
                let (items, start) = (items.clone(), start.clone());
                thread::spawn(move || {
                    start.wait();
                    // Until every item is revoked, read whichever still lets us.
                    loop {
                        let mut any = false;
                        for (i, r) in items.iter().enumerate() {
                            if let Some(g) = r.try_access() {
                                assert_eq!(**g as usize, i, "user saw data that was taken");
                                any = true;
                            }
                        }
                        if !any {
                            break;
                        }
                    }
                })
            })
            .collect();
        start.wait();
        let racer = {
            let items = items.clone();
            thread::spawn(move || items[7].revoke_take().1)
        };
        let taken = Revocable::revoke_take_many(items.iter());
        let raced = racer.join().unwrap();
        assert!(items.iter().all(Revocable::is_revoked));
        for (i, t) in taken.iter().enumerate() {
            if i == 7 {
                assert!(t.is_some() != raced.is_some(), "item 7 taken exactly once");
            } else {
                assert_eq!(t.as_deref(), Some(&(i as u32)));
            }
        }
        for u in users {
            u.join().unwrap();
        }
    }
}

#[test]
fn kill_wakes_sleepers_and_interrupt_wakes_one() {
    let gate = Arc::new(Gate::new());
    let wq = Arc::new(WaitQueue::new());
    let intr = Arc::new(CancelSource::new());
    let sleeper = |intr: Option<Arc<CancelSource>>| {
        let (gate, wq) = (gate.clone(), wq.clone());
        thread::spawn(move || {
            let g = gate.try_enter().unwrap();
            g.wait_event(&wq, intr.as_deref(), || false)
        })
    };
    let a = sleeper(None);
    let b = sleeper(Some(intr.clone()));
    until(|| wq.sleepers() == 2);
    intr.cancel();
    assert_eq!(b.join().unwrap(), Err(Cancelled::Interrupted));
    assert!(!gate.is_killed());
    gate.kill_and_drain().unwrap();
    assert_eq!(a.join().unwrap(), Err(Cancelled::Removed));
}

#[test]
fn a_probe_that_fires_interrupts_before_the_first_sleep() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let gate = Gate::new();
    let wq = WaitQueue::new();
    // A firing probe: the wait fails at once, without sleeping.
    let asked = Arc::new(AtomicUsize::new(0));
    let a = asked.clone();
    let intr = CancelSource::with_probe(move || {
        a.fetch_add(1, Ordering::Relaxed);
        true
    });
    let g = gate.try_enter().unwrap();
    assert_eq!(g.wait_event(&wq, Some(&intr), || false), Err(Cancelled::Interrupted));
    assert!(intr.is_cancelled());
    assert_eq!(asked.load(Ordering::Relaxed), 1);
    // A condition that already holds never asks.
    let asked = Arc::new(AtomicUsize::new(0));
    let a = asked.clone();
    let intr = CancelSource::with_probe(move || {
        a.fetch_add(1, Ordering::Relaxed);
        true
    });
    assert_eq!(g.wait_event(&wq, Some(&intr), || true), Ok(()));
    assert_eq!(asked.load(Ordering::Relaxed), 0);
    drop(g);
    // A quiet probe is asked once per source, however many sleeps follow;
    // the wait sleeps until its condition or a cancellation.
    let gate = Arc::new(Gate::new());
    let wq = Arc::new(WaitQueue::new());
    let asked = Arc::new(AtomicUsize::new(0));
    let a = asked.clone();
    let intr = Arc::new(CancelSource::with_probe(move || {
        a.fetch_add(1, Ordering::Relaxed);
        false
    }));
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sleeper = {
        let (gate, wq, intr, flag) = (gate.clone(), wq.clone(), intr.clone(), flag.clone());
        thread::spawn(move || {
            let g = gate.try_enter().unwrap();
            let r1 = g.wait_event(&wq, Some(&intr), || flag.load(Ordering::SeqCst));
            let r2 = g.wait_event(&wq, Some(&intr), || false);
            (r1, r2)
        })
    };
    until(|| wq.sleepers() == 1);
    wq.wake_all(); // a spurious wake-up: the condition is still false
    flag.store(true, Ordering::SeqCst);
    wq.wake_all();
    until(|| wq.sleepers() == 1); // the second wait sleeps
    intr.cancel();
    assert_eq!(sleeper.join().unwrap(), (Ok(()), Err(Cancelled::Interrupted)));
    assert_eq!(asked.load(Ordering::Relaxed), 1);
}

#[test]
fn wait_entered_after_kill_fails_at_once() {
    // The debugfs 952c3fce297f class: a handler entering its cancellable
    // section after the removal started must not sleep.
    let gate = Gate::new();
    let g = gate.try_enter().unwrap();
    gate.kill();
    let wq = WaitQueue::new();
    assert_eq!(g.wait_event(&wq, None, || false), Err(Cancelled::Removed));
}

#[test]
fn handler_waiting_on_a_lock_the_remover_holds() {
    let gate = Arc::new(Gate::new());
    let lock = Arc::new(CancellableMutex::new(0u32));
    let held = lock.lock();
    let (g2, l2) = (gate.clone(), lock.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    let h = thread::spawn(move || {
        let g = g2.try_enter().unwrap();
        tx.send(()).unwrap();
        let r = l2.lock_cancellable(&[(g.gate().cancel_source(), Cancelled::Removed)]).map(|_| ());
        drop(g);
        r
    });
    // Inside once `try_enter` returned (`gate.inside()` also counts an
    // entry still under way: see its docs).
    rx.recv().unwrap();
    // The remover holds the lock and removes: without cancellation this
    // would deadlock.
    gate.kill_and_drain().unwrap();
    assert_eq!(h.join().unwrap(), Err(Cancelled::Removed));
    drop(held);
}

#[test]
fn cancellable_mutex_hands_over_when_unlocked() {
    let gate = Gate::new();
    let lock = Arc::new(CancellableMutex::new(0u32));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let lock = lock.clone();
            thread::spawn(move || {
                let src = CancelSource::new();
                for _ in 0..1000 {
                    *lock.lock_cancellable(&[(&src, Cancelled::Interrupted)]).unwrap() += 1;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(*lock.lock(), 4000);
    drop(gate);
}

#[test]
fn send_guard_moves_between_threads() {
    let gate = Arc::new(Gate::new());
    let g = gate.try_enter_send().unwrap();
    gate.kill();
    let drainer = {
        let gate = gate.clone();
        thread::spawn(move || gate.drain())
    };
    thread::scope(|s| {
        s.spawn(move || drop(g));
    });
    drainer.join().unwrap().unwrap();
    assert!(gate.try_enter_send().is_none());
}

#[test]
fn gates_are_independent() {
    let a = Gate::new();
    let b = Gate::new();
    let _ga = a.try_enter().unwrap();
    b.kill_and_drain().unwrap();
    assert!(a.try_enter().is_some());
}

#[test]
fn wait_deadline_times_out() {
    let gate = Gate::new();
    let g = gate.try_enter().unwrap();
    let wq = WaitQueue::new();
    let d = std::time::Instant::now() + Duration::from_millis(1);
    assert_eq!(g.wait_event_deadline(&wq, None, Some(d), || false), Err(Cancelled::TimedOut));
}

#[test]
fn a_rearmed_source_is_new_again_and_keeps_its_probe() {
    let gate = Gate::new();
    let wq = WaitQueue::new();
    let asked = Arc::new(AtomicUsize::new(0));
    let a = asked.clone();
    let mut intr = CancelSource::with_probe(move || {
        a.fetch_add(1, Ordering::Relaxed);
        true
    });
    let g = gate.try_enter().unwrap();
    assert_eq!(g.wait_event(&wq, Some(&intr), || false), Err(Cancelled::Interrupted));
    assert!(intr.is_cancelled());
    intr.rearm();
    assert!(!intr.is_cancelled());
    // Probed again, once, by the next wait: the probe was kept.
    assert_eq!(g.wait_event(&wq, Some(&intr), || false), Err(Cancelled::Interrupted));
    assert_eq!(asked.load(Ordering::Relaxed), 2);
    // A fired plain source, re-armed, lets a wait whose condition holds
    // through, and fires again.
    let mut plain = CancelSource::new();
    assert!(plain.cancel());
    plain.rearm();
    assert_eq!(g.wait_event(&wq, Some(&plain), || true), Ok(()));
    assert!(plain.cancel(), "re-armed: this cancel fires it");
}
