//! Cancellable waits: the sleeping half of the gate.
//!
//! A handler that must sleep (for data, for a lock the remover may hold)
//! sleeps in [`wait_event`], registered on a [`WaitQueue`] (woken when its
//! condition may have changed) and on one or more [`CancelSource`]s (woken
//! and failed when the source is cancelled). A gate's kill cancels its source;
//! a per-request interrupt is a second source. This is debugfs's
//! `debugfs_enter_cancellation()` built into the wait itself, so a removal
//! never deadlocks on a sleeping handler, including one that started waiting
//! after the removal began (the bug fixed by debugfs commit 952c3fce297f).

use crate::gate::Guard;
use crate::primitive::{AtomicBool, Condvar, Mutex, Ordering, lock};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

/// Something that can be woken: a sleeping waiter, or a poll subscription.
pub trait Wake: Send + Sync {
    /// Wakes it. Must not block for long and must not call back into the
    /// queue or source that wakes it.
    fn wake(&self);
}

/// Why a cancellable wait ended without its condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cancelled {
    /// The gate was killed: the object is being removed.
    Removed,
    /// The second cancel source fired (a per-request interrupt, a signal).
    Interrupted,
    /// The deadline passed.
    TimedOut,
}

impl fmt::Display for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Removed => "removed",
            Self::Interrupted => "interrupted",
            Self::TimedOut => "timed out",
        })
    }
}

impl std::error::Error for Cancelled {}

/// A one-bit event a thread sleeps on until another [wakes](Wake::wake) it.
///
/// The protocol that loses no wake-up: register the event wherever it may be
/// woken from, then loop `reset(); check conditions; sleep()`.
#[derive(Default)]
pub struct Event {
    woken: Mutex<bool>,
    cv: Condvar,
}

impl Event {
    /// An event that has not been woken.
    pub fn new() -> Self {
        Self { woken: Mutex::new(false), cv: Condvar::new() }
    }

    /// Clears the wake flag; call before re-checking conditions so a wake
    /// after the check is not lost.
    pub fn reset(&self) {
        *lock(&self.woken) = false;
    }

    /// Sleeps until woken (or until `deadline`). Returns `false` on timeout.
    pub fn sleep(&self, deadline: Option<Instant>) -> bool {
        let mut w = lock(&self.woken);
        while !*w {
            match deadline {
                None => w = crate::primitive::wait(&self.cv, w),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    w = crate::primitive::wait_timeout(&self.cv, w, d - now);
                }
            }
        }
        true
    }
}

impl Wake for Event {
    fn wake(&self) {
        *lock(&self.woken) = true;
        self.cv.notify_one();
    }
}

/// A list of things to wake when a condition may have changed (Linux
/// `wait_queue_head_t`).
///
/// Sleepers stay queued until they leave; one-shot entries (poll
/// subscriptions, [`WaitQueue::subscribe_once`]) are removed when woken, and
/// are called after the queue's lock is released, so they may do I/O.
#[doc(alias = "wait_queue_head")]
#[derive(Default)]
pub struct WaitQueue {
    inner: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    sleepers: Vec<Arc<dyn Wake>>,
    /// One-shot entries by key: a replacement or a removal (a dropped
    /// future's, [`WaitUntil`]) costs a lookup, not a scan, with thousands
    /// of pending futures on one queue.
    once: BTreeMap<u64, Arc<dyn Wake>>,
}

impl WaitQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wakes every entry.
    #[doc(alias = "wake_up_all")]
    pub fn wake_all(&self) {
        let once = {
            let mut e = lock(&self.inner);
            for s in &e.sleepers {
                s.wake();
            }
            std::mem::take(&mut e.once)
        };
        // Detached under the lock, called outside it.
        for w in once.into_values() {
            w.wake();
        }
    }

    /// Adds `w` to be woken once, at the next [`wake_all`](Self::wake_all).
    /// An entry with the same `key` already queued is replaced, so repeated
    /// polls of one file do not grow the queue.
    pub fn subscribe_once(&self, key: u64, w: Arc<dyn Wake>) {
        let old = lock(&self.inner).once.insert(key, w);
        // A replaced entry is dropped outside the lock.
        drop(old);
    }

    /// How many threads are asleep on this queue (a snapshot, for
    /// diagnostics and tests).
    pub fn sleepers(&self) -> usize {
        lock(&self.inner).sleepers.len()
    }

    /// Removes the one-shot entry with `key`, if queued.
    pub fn unsubscribe(&self, key: u64) {
        let old = lock(&self.inner).once.remove(&key);
        drop(old);
    }

    pub(crate) fn add(&self, w: Arc<dyn Wake>) {
        lock(&self.inner).sleepers.push(w);
    }

    pub(crate) fn remove(&self, w: &Arc<dyn Wake>) {
        lock(&self.inner).sleepers.retain(|x| !Arc::ptr_eq(x, w));
    }
}

impl fmt::Debug for WaitQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = lock(&self.inner);
        f.debug_struct("WaitQueue").field("sleepers", &e.sleepers.len()).field("once", &e.once.len()).finish()
    }
}

/// A one-way switch that fails the waits registered on it.
///
/// Every [`Gate`](crate::Gate) has one, cancelled by its kill. A second,
/// free-standing source models a per-request interrupt (FUSE `INTERRUPT`, a
/// signal): cancelling it fails only the waits of that request.
///
/// A source may also carry a *probe* ([`with_probe`](Self::with_probe)),
/// for an interruption that must be asked about rather than announced: a
/// wait runs it once, before its first sleep, and fires the source if it
/// says so (the kernel's `signal_pending()` check before `schedule()`).
#[derive(Default)]
pub struct CancelSource {
    cancelled: AtomicBool,
    waiters: Mutex<Vec<Arc<dyn Wake>>>,
    probe: Option<Box<dyn Fn() -> bool + Send + Sync>>,
    probed: AtomicBool,
}

impl CancelSource {
    /// A source that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// A source that also fires when `probe` returns `true`, asked once,
    /// before the first sleep of a wait registered on it.
    pub fn with_probe(probe: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        Self { probe: Some(Box::new(probe)), ..Self::default() }
    }

    /// Makes the source new again, keeping its probe: not fired, not yet
    /// probed, no waiter. The exclusive borrow is what makes this sound:
    /// no wait can be registered on the source, nor can anyone fire it,
    /// while it is re-armed. A transport re-arms one source per worker for
    /// each request instead of allocating one (an `Arc` the table of
    /// running requests no longer holds: `Arc::get_mut`).
    pub fn rearm(&mut self) {
        // Plain stores through `&mut` (loom's atomics have no `get_mut`):
        // the borrow already orders them before any later use.
        self.cancelled.store(false, Ordering::Relaxed);
        self.probed.store(false, Ordering::Relaxed);
        lock(&self.waiters).clear();
    }

    /// Runs the probe, the first time only; fires the source if it says so.
    fn run_probe(&self) {
        if let Some(p) = &self.probe {
            if !self.probed.swap(true, Ordering::Relaxed) && p() {
                self.cancel();
            }
        }
    }

    /// Fires the source: current and future waits registered on it fail.
    /// Returns `true` if this call fired it.
    pub fn cancel(&self) -> bool {
        let first = !self.cancelled.swap(true, Ordering::SeqCst);
        // Detach under the lock, wake outside it. A waiter that registers
        // after we took the list takes the lock after us, so it reads the
        // flag we set before taking it.
        let list = std::mem::take(&mut *lock(&self.waiters));
        for w in list {
            w.wake();
        }
        first
    }

    /// Whether the source has fired.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Registers `w` to be woken when the source fires; returns `false`
    /// (and registers nothing) if it has fired already. For a pending
    /// future, which cannot sleep in [`wait_event`]: an interrupt then
    /// reaches it through `w` ([`unsubscribe`](Self::unsubscribe) when it
    /// no longer cares).
    pub fn subscribe(&self, w: &Arc<dyn Wake>) -> bool {
        self.add(w)
    }

    /// Removes `w`, registered by [`subscribe`](Self::subscribe).
    pub fn unsubscribe(&self, w: &Arc<dyn Wake>) {
        self.remove(w)
    }

    /// Registers `w`; returns `false` (and does not register) if the source
    /// has already fired.
    fn add(&self, w: &Arc<dyn Wake>) -> bool {
        let mut l = lock(&self.waiters);
        if self.is_cancelled() {
            return false;
        }
        l.push(w.clone());
        true
    }

    fn remove(&self, w: &Arc<dyn Wake>) {
        lock(&self.waiters).retain(|x| !Arc::ptr_eq(x, w));
    }
}

impl fmt::Debug for CancelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelSource").field("cancelled", &self.is_cancelled()).finish()
    }
}

/// Sleeps until `cond()` holds, checking it each time `wq` is woken.
///
/// Fails with the reason of the first fired source in `sources` (checked in
/// order, and before the condition only when the condition is false), or
/// [`Cancelled::TimedOut`] once `deadline` passes. The condition is checked
/// first, as `wait_event()` does: a wait whose condition already holds
/// succeeds even on a killed gate (its handler is still inside the gate,
/// which the drain waits for).
///
/// Prefer [`Guard::wait_event`], which supplies the gate's source.
#[doc(alias = "wait_event_interruptible")]
pub fn wait_event(
    wq: &WaitQueue,
    sources: &[(&CancelSource, Cancelled)],
    deadline: Option<Instant>,
    mut cond: impl FnMut() -> bool,
) -> Result<(), Cancelled> {
    if cond() {
        return Ok(());
    }
    let waiter = Arc::new(Event::new());
    let as_wake: Arc<dyn Wake> = waiter.clone();
    // Register everywhere before checking anything, so no wake in between is
    // lost. A source that already fired refuses the registration.
    wq.add(as_wake.clone());
    let mut registered = 0;
    let mut result = None;
    for (src, why) in sources {
        if !src.add(&as_wake) {
            result = Some(Err(*why));
            break;
        }
        registered += 1;
    }
    let mut probed = false;
    let result = result.unwrap_or_else(|| {
        loop {
            waiter.reset();
            if cond() {
                break Ok(());
            }
            if let Some((_, why)) = sources.iter().find(|(s, _)| s.is_cancelled()) {
                break Err(*why);
            }
            if !probed {
                // Before the first sleep: a probe that fires cancels its
                // source, which wakes `waiter`; the next turn sees it.
                probed = true;
                sources.iter().for_each(|(s, _)| s.run_probe());
                continue;
            }
            if !waiter.sleep(deadline) {
                break if cond() { Ok(()) } else { Err(Cancelled::TimedOut) };
            }
        }
    });
    wq.remove(&as_wake);
    for (src, _) in &sources[..registered] {
        src.remove(&as_wake);
    }
    result
}

impl Guard<'_> {
    /// Sleeps until `cond()` holds, failing with [`Cancelled::Removed`] when
    /// this guard's gate is killed and [`Cancelled::Interrupted`] when
    /// `interrupt` fires. See [`wait_event`].
    ///
    /// The guard stays held while sleeping: the drain that follows a kill
    /// waits for this wait to return and the handler to leave.
    pub fn wait_event(
        &self,
        wq: &WaitQueue,
        interrupt: Option<&CancelSource>,
        cond: impl FnMut() -> bool,
    ) -> Result<(), Cancelled> {
        self.wait_event_deadline(wq, interrupt, None, cond)
    }

    /// [`wait_event`](Self::wait_event) with a deadline.
    pub fn wait_event_deadline(
        &self,
        wq: &WaitQueue,
        interrupt: Option<&CancelSource>,
        deadline: Option<Instant>,
        cond: impl FnMut() -> bool,
    ) -> Result<(), Cancelled> {
        let gate = (self.gate.cancel_source(), Cancelled::Removed);
        match interrupt {
            Some(i) => wait_event(wq, &[gate, (i, Cancelled::Interrupted)], deadline, cond),
            None => wait_event(wq, &[gate], deadline, cond),
        }
    }
}
