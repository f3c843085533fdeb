//! [`Revocable`]: data whose access can be revoked, with the revoker waiting
//! for current users and dropping the data itself.

use crate::gate::{DrainError, Gate, Guard};
use crate::primitive::{AtomicBool, Ordering};
use std::cell::UnsafeCell;
use std::fmt;
use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::ptr::NonNull;

/// Data that can be revoked: once access is revoked and every current user
/// is done (every [`RevocableGuard`] dropped), the data is dropped, on the
/// revoking thread.
///
/// Mirrors Rust-for-Linux's `kernel::revocable::Revocable`, with a [`Gate`]
/// in place of RCU: guards may be held across sleeps, and a revoke cancels
/// the sleeps made through [`wait_event`](crate::wait_event) on the gate's
/// [`CancelSource`](crate::CancelSource).
///
/// # Invariants
///
/// - `data` is initialised while `dropped` is false.
/// - `dropped` is set only by a thread that killed and fully drained `gate`,
///   so no `RevocableGuard` exists when `data` is dropped, and none can be
///   created afterwards (`try_access` fails on a killed gate).
///
/// # Examples
///
/// ```
/// use devlife_gate::Revocable;
///
/// let r = Revocable::new(String::from("hw registers"));
/// assert_eq!(r.try_access().as_deref().map(String::as_str), Some("hw registers"));
/// assert!(r.revoke());
/// assert!(r.try_access().is_none());
/// ```
#[doc(alias = "revocable")]
pub struct Revocable<T> {
    gate: Gate,
    dropped: AtomicBool,
    data: UnsafeCell<ManuallyDrop<T>>,
}

// SAFETY: `Revocable<T>` hands out `&T` to many threads at once (needs
// `T: Sync`) and drops or moves `T` on whichever thread revokes (needs
// `T: Send`); the gate and flag are themselves thread-safe.
unsafe impl<T: Send + Sync> Sync for Revocable<T> {}
// SAFETY: moving the whole `Revocable` moves `T` (`T: Send`); no guard can
// exist across the move because guards borrow it.
unsafe impl<T: Send> Send for Revocable<T> {}

impl<T> Revocable<T> {
    /// Wraps `data`, accessible until revoked.
    pub fn new(data: T) -> Self {
        Self::with_gate(Gate::new(), data)
    }

    /// Wraps `data` behind a [`Gate::new_shared`]: each access costs an
    /// atomic add and a fence on a shared line, a revoke no `membarrier`.
    /// For data revoked about as often as it is accessed by few threads
    /// (the state of one open file, revoked at its close). It must not be
    /// revoked from inside one of its own guards (see `Gate::new_shared`).
    pub fn new_shared(data: T) -> Self {
        Self::with_gate(Gate::new_shared(), data)
    }

    fn with_gate(gate: Gate, data: T) -> Self {
        Self { gate, dropped: AtomicBool::new(false), data: UnsafeCell::new(ManuallyDrop::new(data)) }
    }

    /// Access to the data, or `None` once revocation has started.
    #[inline]
    pub fn try_access(&self) -> Option<RevocableGuard<'_, T>> {
        let guard = self.gate.try_enter()?;
        // SAFETY: we are inside the live gate, so by the type invariants the
        // data is initialised and cannot be dropped until `guard` is dropped.
        let data = unsafe { NonNull::from(&**self.data.get()) };
        Some(RevocableGuard { data, guard })
    }

    /// The data, without entering the gate (Rust-for-Linux's `access`).
    ///
    /// # Safety
    ///
    /// The data must not be revoked while the returned reference lives: the
    /// caller knows this `Revocable` is never revoked (only dropped), or
    /// holds a guard of it.
    pub unsafe fn access(&self) -> &T {
        // SAFETY: the caller guarantees no revoke takes the data while the
        // reference lives; until a revoke, the data is initialised (type
        // invariants).
        unsafe { &*self.data.get() }
    }

    /// Runs `f` with the data, or returns `None` once revoked. The closure
    /// form cannot forget to drop the guard.
    pub fn try_access_with<R>(&self, f: impl FnOnce(&T) -> R) -> Option<R> {
        self.try_access().map(|g| f(&g))
    }

    /// Whether revocation has started.
    pub fn is_revoked(&self) -> bool {
        self.gate.is_killed()
    }

    /// The gate guarding the data (to kill it early, or to check who holds it).
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Revokes access, waits for current users, then drops the data.
    ///
    /// Returns `true` if this call did the revoking. A call from a thread
    /// that holds a guard of this `Revocable` kills access but cannot wait
    /// for itself: the data is then dropped by the next revoke from outside,
    /// or when the `Revocable` itself is dropped.
    pub fn revoke(&self) -> bool {
        let (first, data) = self.revoke_take();
        drop(data);
        first
    }

    /// Like [`revoke`](Self::revoke), but hands the data to the caller
    /// instead of dropping it. Returns whether this call did the revoking,
    /// and the data if this call is the one that took it.
    pub fn revoke_take(&self) -> (bool, Option<T>) {
        let first = self.gate.kill();
        (first, self.drain_take())
    }

    /// [`revoke_take`](Self::revoke_take) with `between` run after the
    /// drain and before the take: when it runs no guard exists or can be
    /// made, and the data is still there (what a holder of pending futures
    /// that borrow the data does first: drops them). `between` is not run
    /// when the calling thread holds a guard (the drain cannot happen).
    pub fn revoke_take_with(&self, between: impl FnOnce()) -> (bool, Option<T>) {
        let first = self.gate.kill();
        match self.gate.drain() {
            Ok(()) => {
                between();
                (first, self.take_drained())
            }
            Err(DrainError::CallerInside) => (first, None),
            Err(e) => unreachable!("drain after kill failed: {e}"),
        }
    }

    /// [`revoke_take`](Self::revoke_take) for many at once: kills every
    /// gate with one heavy barrier ([`Gate::kill_many`]), then drains each
    /// and takes its data. Returns, in order, the data of each that this
    /// call took (`None` where another revoke took it, or where the calling
    /// thread holds a guard of it).
    pub fn revoke_take_many<'a, I>(items: I) -> Vec<Option<T>>
    where
        I: IntoIterator<Item = &'a Self>,
        I::IntoIter: Clone,
        T: 'a,
    {
        let items = items.into_iter();
        Gate::kill_many(items.clone().map(|r| &r.gate));
        items.map(Self::drain_take).collect()
    }

    /// After this thread's kill of the gate returned: waits for the users,
    /// then takes the data if no other revoke did (`None` also when the
    /// calling thread holds a guard: it cannot wait for itself).
    fn drain_take(&self) -> Option<T> {
        match self.gate.drain() {
            Ok(()) => self.take_drained(),
            Err(DrainError::CallerInside) => None,
            // `drain` after `kill` cannot report NotKilled or TimedOut.
            Err(e) => unreachable!("drain after kill failed: {e}"),
        }
    }

    fn take_drained(&self) -> Option<T> {
        if self.dropped.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: the gate is killed and drained, so no guard exists or can
        // be created; the swap above makes this the only thread taking the
        // data; it is initialised because `dropped` was false.
        Some(unsafe { ManuallyDrop::take(&mut *self.data.get()) })
    }
}

impl<T> Drop for Revocable<T> {
    fn drop(&mut self) {
        if !self.dropped.load(Ordering::Acquire) {
            // SAFETY: `&mut self` means no guard exists; the data is
            // initialised because it was never taken.
            unsafe { ManuallyDrop::drop(self.data.get_mut()) };
        }
    }
}

impl<T> fmt::Debug for Revocable<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Revocable").field("revoked", &self.is_revoked()).finish_non_exhaustive()
    }
}

/// Shared access to a [`Revocable`]'s data; revocation waits for it.
///
/// # Invariants
///
/// `data` points into the `Revocable` whose gate `guard` is inside, so it is
/// valid while the guard lives. It is a raw pointer, not `&'a T`: the data
/// may be dropped right after the guard (within `'a`), and a reference in a
/// by-value argument must not dangle for the duration of the call (the
/// reasoning of Rust-for-Linux's `RevocableGuard`).
pub struct RevocableGuard<'a, T> {
    data: NonNull<T>,
    guard: Guard<'a>,
}

impl<'a, T> RevocableGuard<'a, T> {
    /// The gate guard, for cancellable waits ([`Guard::wait_event`]).
    pub fn guard(&self) -> &Guard<'a> {
        &self.guard
    }
}

impl<T> Deref for RevocableGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: by the type invariants, `guard` keeps the data alive and
        // initialised for as long as `self` is borrowed.
        unsafe { self.data.as_ref() }
    }
}
