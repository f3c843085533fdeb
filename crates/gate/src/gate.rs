//! [`Gate`]: admit handlers, refuse them after a kill, wait for the ones inside.

use crate::barrier;
use crate::primitive::{AtomicU32, Condvar, Mutex, Ordering, lock};
use crate::registry::{self, Slot};
use crate::wait::CancelSource;
use std::fmt;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

/// `state` bit: the gate was killed.
const DEAD: u32 = 1;
/// `state` bit, constant for the gate's life: enter and exit issue a full
/// fence before trusting their load of `state`, and `kill` only a fence of
/// its own, no heavy barrier. Set where the process has no asymmetric
/// barrier, and on gates made with [`Gate::new_shared`] (whose enters and
/// exits always fence). Kept in `state` so
/// that the fast path tests one word: any set bit sends it to the slow path.
const FENCE: u32 = 2;

/// A killable in-flight-operation counter.
///
/// Threads enter with [`try_enter`](Gate::try_enter), which succeeds until
/// [`kill`](Gate::kill) returns and fails on every thread afterwards; each
/// success yields a [`Guard`] that counts as "inside" until dropped.
/// [`drain`](Gate::drain) then waits until every guard taken before the kill
/// is dropped. Killing also cancels every wait made through the gate
/// ([`Guard::wait_event`]), so a handler asleep on data that will never come
/// is woken instead of holding up the removal forever.
///
/// This is the shared mechanism the `cdev: Generic shutdown handling` series
/// asked for: `percpu_ref_tryget_live()`/`percpu_ref_kill()` for the
/// counting, debugfs's `debugfs_file_get()`/`__debugfs_file_removed()` with
/// `debugfs_enter_cancellation()` for the drain and its cancellation.
/// Unlike `percpu_ref_kill`, the kill needs no confirmation step: when
/// `kill()` returns, no `try_enter` anywhere can succeed.
///
/// # Invariants
///
/// - `state & DEAD` goes from 0 to 1 once and never back; `state & FENCE`
///   never changes.
/// - The number of guards inside is the sum over every thread record's slot
///   at `index` plus the `shared` slot, each `enters - exits`.
/// - A guard counted in a thread slot was created on, and is dropped on, that
///   thread (`Guard` is `!Send`); a guard counted in `shared` may move.
///
/// # Examples
///
/// ```
/// use devlife_gate::Gate;
///
/// let gate = Gate::new();
/// {
///     let g = gate.try_enter().expect("live gate admits");
///     // ... run a handler, borrowing data the gate protects ...
///     drop(g);
/// }
/// gate.kill_and_drain().unwrap();
/// assert!(gate.try_enter().is_none());
/// ```
#[doc(alias = "percpu_ref")]
#[doc(alias = "debugfs_file_get")]
pub struct Gate {
    /// Read on every enter and exit, written once: kept apart from the slots
    /// the slow paths write.
    state: AtomicU32,
    /// Index of this gate's slot in every thread record, or `usize::MAX` when
    /// the per-thread slots are exhausted and every guard uses `shared`.
    index: usize,
    /// Counts `SendGuard`s, and every guard when `index == usize::MAX` or the
    /// entering thread has no record.
    shared: Padded<Slot>,
    /// Drainers sleep here; exits after the kill notify it.
    drain_lock: Mutex<()>,
    drained: Condvar,
    /// Cancelled by `kill()`: wakes every handler waiting through this gate.
    cancel: CancelSource,
}

#[repr(align(128))]
struct Padded<T>(T);

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    /// Creates a live gate.
    pub fn new() -> Self {
        let fence = if barrier::init() { 0 } else { FENCE };
        Self::with(fence, registry::alloc_index().unwrap_or(usize::MAX))
    }

    /// A live gate with `state` bits `state` and thread-slot `index`
    /// (`usize::MAX`: counted in `shared` only).
    fn with(state: u32, index: usize) -> Self {
        Self {
            state: AtomicU32::new(state),
            index,
            shared: Padded(Slot::new()),
            drain_lock: Mutex::new(()),
            drained: Condvar::new(),
            cancel: CancelSource::new(),
        }
    }

    /// A gate counted in one shared counter, with symmetric fences: cheap
    /// to make and to kill, dearer to enter. For gates killed about as
    /// often as they are entered, by few threads at once, such as the gate
    /// of one open file, killed at its close.
    ///
    /// A [`new`](Self::new) gate takes a slot in every thread's record
    /// (allocated and freed with the gate, scanned by every drain) and is
    /// killed with a `membarrier` (an IPI to every CPU running a thread of
    /// the process); this one is entered and left with an atomic add and a
    /// `fence(SeqCst)` on a cache line its users share, and killed with one
    /// fence. The guarantees are the same, except that a drain cannot tell
    /// that its caller is inside (no [`DrainError::CallerInside`]: it would
    /// wait for itself), so it must not be drained from inside.
    pub fn new_shared() -> Self {
        barrier::init();
        Self::with(FENCE, usize::MAX)
    }

    /// Enters the gate: `Some(guard)` while the gate is live, `None` once it
    /// has been killed.
    ///
    /// The fast path writes only the calling thread's own counter and issues
    /// no hardware fence (see [`barrier`](crate::barrier)).
    #[inline]
    #[must_use = "the guard is the proof of being inside; dropping it leaves"]
    pub fn try_enter(&self) -> Option<Guard<'_>> {
        let slot = if self.index != usize::MAX { registry::current_slot(self.index) } else { None };
        match slot {
            Some(slot) => {
                // Only this thread writes `slot`, so load + store is an
                // increment no other writer can interleave with.
                let e = slot.enters.load(Ordering::Relaxed);
                slot.enters.store(e.wrapping_add(1), Ordering::Relaxed);
                // Order the increment before the state load. Pairs with the
                // heavy barrier in `kill()` (store DEAD; heavy; read slots):
                // either we see DEAD, or the killer's drain sees our enter.
                // In FENCE mode the slow path adds the full fence.
                barrier::light();
                let state = self.state.load(Ordering::Relaxed);
                if state != 0 && !self.enter_slow(slot) {
                    return None;
                }
                Some(Guard { gate: self, slot, _not_send: PhantomData })
            }
            None => self.enter_shared().map(|()| Guard {
                gate: self,
                slot: &self.shared.0,
                _not_send: PhantomData,
            }),
        }
    }

    /// Enters the gate with a guard that may be sent to another thread (for
    /// async code, where a task moves between threads while inside).
    ///
    /// It counts in one shared counter with full fences, so it costs an
    /// atomic read-modify-write on a cache line all its users write: use
    /// [`try_enter`](Self::try_enter) where the guard stays on its thread.
    pub fn try_enter_send(&self) -> Option<SendGuard<'_>> {
        self.enter_shared().map(|()| SendGuard { gate: self })
    }

    /// Whether an enter counted in `slot` may stand, after the fast path saw
    /// a state bit. Undoes the enter if not.
    #[cold]
    fn enter_slow(&self, slot: &Slot) -> bool {
        if self.state_after_fence() & DEAD != 0 {
            self.leave_local(slot);
            return false;
        }
        true
    }

    /// Loads `state`, first issuing the full fence FENCE mode requires
    /// (the fast paths' compiler fence already ordered the load otherwise).
    fn state_after_fence(&self) -> u32 {
        if self.state.load(Ordering::Relaxed) & FENCE != 0 {
            crate::primitive::fence(Ordering::SeqCst);
        }
        self.state.load(Ordering::Relaxed)
    }

    fn enter_shared(&self) -> Option<()> {
        self.shared.0.enters.fetch_add(1, Ordering::SeqCst);
        // Pairs with the heavy barrier in `kill()`, as in `try_enter`.
        crate::primitive::fence(Ordering::SeqCst);
        if self.state.load(Ordering::Relaxed) & DEAD != 0 {
            self.leave_shared();
            return None;
        }
        Some(())
    }

    #[inline]
    fn leave_local(&self, slot: &Slot) {
        let x = slot.exits.load(Ordering::Relaxed);
        // Release: the handler's accesses to protected data happen before a
        // drainer that reads this count (with Acquire) and then frees them.
        slot.exits.store(x.wrapping_add(1), Ordering::Release);
        // Order the exit before the state load. Pairs with `kill()`'s heavy
        // barrier: either the drainer reads our exit, or we read DEAD and
        // wake it.
        barrier::light();
        if self.state.load(Ordering::Relaxed) != 0 && self.state_after_fence() & DEAD != 0 {
            self.wake_drainers();
        }
    }

    fn leave_shared(&self) {
        self.shared.0.exits.fetch_add(1, Ordering::SeqCst);
        crate::primitive::fence(Ordering::SeqCst);
        if self.state.load(Ordering::Relaxed) & DEAD != 0 {
            self.wake_drainers();
        }
    }

    #[cold]
    fn wake_drainers(&self) {
        // Taking the lock orders our exit before a drainer's check under the
        // same lock: a drainer either sees it or is already waiting and gets
        // this notification.
        let _g = lock(&self.drain_lock);
        self.drained.notify_all();
    }

    /// Kills the gate: from the moment this returns, every `try_enter` on
    /// every thread fails. Returns `true` if this call did the killing.
    ///
    /// Also cancels every wait made through the gate, so sleeping handlers
    /// wake and leave. Never blocks on handlers, so it may be called from
    /// inside one of this gate's own handlers.
    #[doc(alias = "percpu_ref_kill")]
    pub fn kill(&self) -> bool {
        Self::kill_many([self]) == 1
    }

    /// Kills every gate of `gates` with one heavy barrier for all of them:
    /// when this returns, every `try_enter` on any of them fails, on every
    /// thread, exactly as if [`kill`](Self::kill) had been called on each.
    /// Returns how many of them this call killed first.
    ///
    /// `kill` costs one heavy barrier (an IPI to every CPU running a thread
    /// of the process); a removal that runs down thousands of open files
    /// pays it once here instead of once per file.
    pub fn kill_many<'a, I>(gates: I) -> usize
    where
        I: IntoIterator<Item = &'a Gate>,
        I::IntoIter: Clone,
    {
        let gates = gates.into_iter();
        let (mut first, mut fences_only) = (0, true);
        for g in gates.clone() {
            let old = g.state.fetch_or(DEAD, Ordering::SeqCst);
            first += usize::from(old & DEAD == 0);
            fences_only &= old & FENCE != 0;
        }
        // One barrier for every store above. Pairs with the light barriers
        // in `try_enter`/`leave_local` (with the full fences of their slow
        // path in FENCE mode): after this, every thread either sees DEAD or
        // has its slot writes visible to our reads in `drain`. Gates that
        // all fence on both sides need only a fence here.
        if fences_only {
            crate::primitive::fence(Ordering::SeqCst);
        } else {
            barrier::heavy();
        }
        for g in gates {
            g.cancel.cancel();
        }
        first
    }

    /// Whether the gate has been killed.
    pub fn is_killed(&self) -> bool {
        self.state.load(Ordering::Acquire) & DEAD != 0
    }

    /// The number of guards inside right now (exact once the gate is killed
    /// and the kill has returned; a snapshot before).
    ///
    /// Before the kill it also counts entries under way: a thread is
    /// counted from the first step of [`try_enter`](Self::try_enter), before
    /// it looks whether the gate is killed, so a kill that follows this
    /// count can still turn that thread away. A test that must know a
    /// thread got in waits for the thread's own word, not for this count.
    pub fn inside(&self) -> usize {
        // Records registered after `for_each_slot`/`inside` took the registry
        // lock belong to threads that took the lock after the kill's heavy
        // barrier, so their enters see DEAD and undo themselves.
        let thread = if self.index != usize::MAX { registry::inside(self.index) } else { 0 };
        thread.wrapping_add(self.shared.0.inside())
    }

    /// Whether the calling thread holds a [`Guard`] of this gate.
    ///
    /// [`SendGuard`]s are not attributed to threads and are not seen here.
    pub fn held_by_current_thread(&self) -> bool {
        self.index != usize::MAX && registry::current_slot_if_any(self.index).is_some_and(|s| s.inside() != 0)
    }

    /// Waits until every guard taken before the kill has been dropped.
    ///
    /// # Errors
    ///
    /// - [`DrainError::NotKilled`] if the gate is live (draining a live gate
    ///   would race new entries forever).
    /// - [`DrainError::CallerInside`] if the calling thread itself holds a
    ///   guard of this gate: waiting would wait for itself. The gate stays
    ///   killed; drain again from a thread that holds none (or after the
    ///   guard is dropped).
    #[doc(alias = "wait_for_completion")]
    pub fn drain(&self) -> Result<(), DrainError> {
        self.drain_until(None)
    }

    /// [`kill`](Self::kill), then [`drain`](Self::drain).
    pub fn kill_and_drain(&self) -> Result<(), DrainError> {
        self.kill();
        self.drain()
    }

    /// Like [`drain`](Self::drain), but gives up after `timeout` and reports
    /// who is still inside ([`DrainError::TimedOut`]), so a stuck removal can
    /// be diagnosed and logged. The gate stays killed either way.
    pub fn drain_timeout(&self, timeout: Duration) -> Result<(), DrainError> {
        self.drain_until(Some(Instant::now() + timeout))
    }

    fn drain_until(&self, deadline: Option<Instant>) -> Result<(), DrainError> {
        if !self.is_killed() {
            return Err(DrainError::NotKilled);
        }
        if self.held_by_current_thread() {
            return Err(DrainError::CallerInside);
        }
        let mut g = lock(&self.drain_lock);
        loop {
            // Checked under `drain_lock`; exits after the kill notify under it.
            if self.inside() == 0 {
                return Ok(());
            }
            match deadline {
                None => g = crate::primitive::wait(&self.drained, g),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        drop(g);
                        return Err(DrainError::TimedOut(self.stuck()));
                    }
                    g = crate::primitive::wait_timeout(&self.drained, g, d - now);
                }
            }
        }
    }

    /// Who is inside the gate right now.
    pub fn stuck(&self) -> Stuck {
        let mut holders = Vec::new();
        if self.index != usize::MAX {
            registry::for_each_slot(self.index, |rec, slot| {
                let n = slot.inside();
                if n != 0 {
                    holders.push(Holder { thread: rec.owner(), exited: rec.is_zombie(), guards: n });
                }
            });
        }
        Stuck { inside: self.inside(), shared: self.shared.0.inside(), holders }
    }

    /// The gate's cancellation source: cancelled by [`kill`](Self::kill).
    pub fn cancel_source(&self) -> &CancelSource {
        &self.cancel
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        // No `Guard` can exist (they borrow the gate) unless one was leaked;
        // `free_index` retires the index in that case.
        if self.index != usize::MAX {
            registry::free_index(self.index);
        }
    }
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gate").field("killed", &self.is_killed()).field("inside", &self.inside()).finish()
    }
}

/// Proof that the holder is inside a [`Gate`]: while it lives, a drain of
/// that gate does not return. Dropping it leaves.
///
/// # Invariants
///
/// `slot` is the slot this guard's enter was counted in: the entering
/// thread's own slot for the gate (and this is that thread: the guard is
/// `!Send`), or the gate's shared slot.
#[must_use = "dropping the guard leaves the gate at once"]
pub struct Guard<'a> {
    pub(crate) gate: &'a Gate,
    slot: &'a Slot,
    _not_send: PhantomData<*const ()>,
}

impl Guard<'_> {
    /// The gate this guard is inside.
    pub fn gate(&self) -> &Gate {
        self.gate
    }
}

impl Drop for Guard<'_> {
    #[inline]
    fn drop(&mut self) {
        if std::ptr::eq(self.slot, &self.gate.shared.0) {
            self.gate.leave_shared();
        } else {
            self.gate.leave_local(self.slot);
        }
    }
}

impl fmt::Debug for Guard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard").finish_non_exhaustive()
    }
}

/// A [`Guard`] that may move between threads; see [`Gate::try_enter_send`].
#[must_use = "dropping the guard leaves the gate at once"]
pub struct SendGuard<'a> {
    gate: &'a Gate,
}

impl SendGuard<'_> {
    /// The gate this guard is inside.
    pub fn gate(&self) -> &Gate {
        self.gate
    }
}

impl Drop for SendGuard<'_> {
    fn drop(&mut self) {
        self.gate.leave_shared();
    }
}

impl fmt::Debug for SendGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendGuard").finish_non_exhaustive()
    }
}

/// Why a drain did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainError {
    /// The gate is live; kill it first.
    NotKilled,
    /// The calling thread holds a guard of this gate.
    CallerInside,
    /// Guards were still inside when the timeout expired.
    TimedOut(Stuck),
}

impl fmt::Display for DrainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotKilled => f.write_str("drain of a live gate"),
            Self::CallerInside => f.write_str("drain from a thread inside the gate would wait for itself"),
            Self::TimedOut(s) => write!(f, "drain timed out: {s}"),
        }
    }
}

impl std::error::Error for DrainError {}

/// Who was inside a gate when a drain gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stuck {
    /// Guards inside, in total.
    pub inside: usize,
    /// Of those, guards counted in the shared slot ([`SendGuard`]s), which
    /// are not attributed to a thread.
    pub shared: usize,
    /// Threads holding guards, with how many each.
    pub holders: Vec<Holder>,
}

/// A thread holding guards of a gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The thread's name and id.
    pub thread: String,
    /// The thread has exited with the guards still counted (they were leaked).
    pub exited: bool,
    /// How many guards it holds.
    pub guards: usize,
}

impl fmt::Display for Stuck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} inside", self.inside)?;
        for h in &self.holders {
            write!(f, "; {} x{}{}", h.thread, h.guards, if h.exited { " (exited)" } else { "" })?;
        }
        if self.shared != 0 {
            write!(f, "; {} unattributed (send guards)", self.shared)?;
        }
        Ok(())
    }
}
