//! [`CancellableMutex`]: a lock a handler can wait for without deadlocking
//! the removal that holds it.

use crate::primitive::{Mutex, MutexGuard, lock};
use crate::wait::{CancelSource, Cancelled, WaitQueue, wait_event};
use std::ops::{Deref, DerefMut};
use std::sync::TryLockError;

/// A mutex whose handler-side acquisition is a cancellable wait.
///
/// The remover takes it with [`lock`](Self::lock) (blocking, as usual). A
/// handler takes it with [`lock_cancellable`](Self::lock_cancellable), which
/// sleeps through the gate's wait primitive: if the remover holds the lock
/// and then kills the handler's gate, the handler's wait fails with
/// [`Cancelled::Removed`] and the handler leaves, instead of both waiting for
/// each other (the cfg80211 `wiphy->mtx` vs debugfs deadlock).
///
/// Poisoning is ignored: a panicking handler is reported by the caller that
/// catches it; the data behind the lock is the driver's to keep consistent.
///
/// # Examples
///
/// ```
/// use devlife_gate::{CancellableMutex, Gate, Cancelled};
///
/// let gate = Gate::new();
/// let m = CancellableMutex::new(0u32);
/// let held = m.lock(); // the remover holds the lock ...
/// gate.kill();         // ... and kills the gate
/// let g = gate.try_enter_send(); // (no new entries after the kill)
/// assert!(g.is_none());
/// drop(held);
/// ```
pub struct CancellableMutex<T> {
    inner: Mutex<T>,
    unlocked: WaitQueue,
}

/// Holds a [`CancellableMutex`]; unlocks (and wakes waiters) on drop.
pub struct CancellableMutexGuard<'a, T> {
    guard: Option<MutexGuard<'a, T>>,
    unlocked: &'a WaitQueue,
}

impl<T> CancellableMutex<T> {
    /// A new unlocked mutex.
    pub fn new(value: T) -> Self {
        Self { inner: Mutex::new(value), unlocked: WaitQueue::new() }
    }

    /// Blocks until the lock is held (not cancellable).
    pub fn lock(&self) -> CancellableMutexGuard<'_, T> {
        CancellableMutexGuard { guard: Some(lock(&self.inner)), unlocked: &self.unlocked }
    }

    /// Takes the lock if it is free.
    pub fn try_lock(&self) -> Option<CancellableMutexGuard<'_, T>> {
        let g = match self.inner.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        Some(CancellableMutexGuard { guard: Some(g), unlocked: &self.unlocked })
    }

    /// Sleeps until the lock is held or one of `sources` fires.
    pub fn lock_cancellable(
        &self,
        sources: &[(&CancelSource, Cancelled)],
    ) -> Result<CancellableMutexGuard<'_, T>, Cancelled> {
        let mut got = None;
        wait_event(&self.unlocked, sources, None, || {
            got = self.try_lock();
            got.is_some()
        })?;
        // `wait_event` returned Ok only after the closure stored a guard.
        got.ok_or(Cancelled::Interrupted)
    }
}

impl<T> Deref for CancellableMutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // INVARIANT: `guard` is `Some` until `drop`.
        self.guard.as_deref().unwrap_or_else(|| unreachable!())
    }
}

impl<T> DerefMut for CancellableMutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.guard.as_deref_mut().unwrap_or_else(|| unreachable!())
    }
}

impl<T> Drop for CancellableMutexGuard<'_, T> {
    fn drop(&mut self) {
        drop(self.guard.take());
        self.unlocked.wake_all();
    }
}
