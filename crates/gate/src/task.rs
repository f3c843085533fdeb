//! [`TaskCell`]: a future the gate can take away, the asynchronous
//! counterpart of a handler inside a gate.
//!
//! A blocking handler is inside its gate for as long as it runs, so a
//! removal's drain waits for it. A pending future is not running: between
//! polls it is only memory that may borrow what the gate protects. A
//! `TaskCell` holds such a future so that each poll happens inside the gate
//! and under the cell's lock, and so that exactly one party ends it: the
//! poll that sees it complete, or a [`cancel`](TaskCell::cancel) (a
//! removal's sweep, an interrupt), which drops it under the same lock.
//!
//! The removal protocol for futures is then the blocking one with one step
//! added: kill the gate (no poll starts), drain (the poll in progress, if
//! any, has returned), cancel every cell (every future is dropped, each in
//! the cancelling thread, before `cancel` returns), and only then free what
//! the futures borrowed. `tests/loom.rs` checks it.
//!
//! # Invariants
//!
//! `slot` is `Some` exactly while the future has neither completed nor been
//! cancelled; it is polled and dropped only with `slot`'s lock held, so a
//! `cancel` that returns has dropped it, and no poll of it begins after.

use crate::primitive::{Mutex, lock};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

/// A boxed, sendable future (the type a [`TaskCell`] holds).
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A future that is polled only when its caller enters, and ended exactly
/// once: by the poll that completes it or by [`cancel`](Self::cancel).
///
/// # Examples
///
/// ```
/// use devlife_gate::{Gate, TaskCell};
/// use std::task::{Context, Poll, Waker};
///
/// let gate = Gate::new();
/// let cell = TaskCell::new(Box::pin(std::future::pending::<u32>()));
/// let mut cx = Context::from_waker(Waker::noop());
/// // Polled inside the gate: pending.
/// assert_eq!(cell.poll_with(|| gate.try_enter(), |f| f.poll(&mut cx)), Some(Poll::Pending));
/// // The removal: kill, drain, then cancel drops the future.
/// gate.kill_and_drain().unwrap();
/// assert_eq!(cell.poll_with(|| gate.try_enter(), |f| f.poll(&mut cx)), None);
/// assert!(cell.cancel());
/// assert!(!cell.cancel(), "ended once");
/// ```
pub struct TaskCell<T> {
    slot: Mutex<Option<BoxFuture<T>>>,
}

impl<T> TaskCell<T> {
    /// A cell holding `fut`, not yet polled.
    pub fn new(fut: BoxFuture<T>) -> Self {
        TaskCell { slot: Mutex::new(Some(fut)) }
    }

    /// Polls the future with `poll`, inside what `enter` returns (a gate
    /// guard, several in a tuple), held until the poll has returned.
    ///
    /// Returns `None`, polling nothing, when the future has ended or
    /// `enter` returns `None` (the gate was killed: a cancel is coming).
    /// On `Ready` the future is dropped here, before the value is returned.
    pub fn poll_with<G>(
        &self,
        enter: impl FnOnce() -> Option<G>,
        poll: impl FnOnce(Pin<&mut (dyn Future<Output = T> + Send)>) -> Poll<T>,
    ) -> Option<Poll<T>> {
        let mut slot = lock(&self.slot);
        let fut = slot.as_mut()?;
        let guard = enter()?;
        let r = poll(fut.as_mut());
        if r.is_ready() {
            // Dropped under the lock and inside the gate: a canceller that
            // finds the slot empty knows the drop has happened.
            *slot = None;
        }
        drop(guard);
        Some(r)
    }

    /// Ends the future if it has not ended: drops it now, waiting for a
    /// poll in progress to return first. Returns `true` if this call ended
    /// it (the caller then owes its completion: an error for its waiter).
    pub fn cancel(&self) -> bool {
        let mut slot = lock(&self.slot);
        let fut = slot.take();
        let ended = fut.is_some();
        // Dropped with the lock held (see the type's invariants): the
        // future's destructor may borrow what the caller frees next.
        drop(fut);
        drop(slot);
        ended
    }

    /// Whether the future has completed or been cancelled.
    pub fn is_ended(&self) -> bool {
        lock(&self.slot).is_none()
    }
}

impl<T> fmt::Debug for TaskCell<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskCell").field("ended", &self.is_ended()).finish()
    }
}

/// A poll-context waker as a [`Wake`](crate::Wake): what lets a future
/// wait on a [`WaitQueue`](crate::WaitQueue) or a
/// [`CancelSource`](crate::CancelSource).
pub struct WakerWake(pub std::task::Waker);

impl crate::Wake for WakerWake {
    fn wake(&self) {
        self.0.wake_by_ref();
    }
}
