//! Which requests are running, for `FUSE_INTERRUPT`: a slot per worker,
//! and interrupts that came before their request.
//!
//! A request's interrupt source is what its handler's cancellable waits
//! watch (`Req::interrupt`); an interrupt fires it. Each worker re-arms one
//! source for all its requests ([`Interrupts`]) and registers it in a slot
//! of its own ([`Running`]): handling a request allocates nothing here and
//! writes no cache line another CPU's worker writes.

use crate::defer::DeferredTable;
use crossbeam_utils::CachePadded;
use devlife_gate::CancelSource;
use devlife_gate::sync::lock;
use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a transport runs when a handler of one of its requests is about
/// to sleep (in a cancellable wait: the gate's `wait_event`, a
/// `CancellableMutex`), once per request: the ring transport makes sure
/// the handler's queue can take other requests meanwhile.
pub(crate) type OnSleep = Arc<dyn Fn() + Send + Sync>;

/// How long an early interrupt is remembered: one whose request had in fact
/// already finished is forgotten after this.
const EARLY_INTERRUPT_TTL: Duration = Duration::from_secs(60);

/// Requests being handled, and interrupts that came before their request
/// was registered.
///
/// Each worker has a [`Running`] slot of its own, on a cache line of its
/// own, where it puts the request it handles and that request's interrupt
/// source: registering a request touches no line another CPU writes. A
/// `FUSE_INTERRUPT` (rare) looks through every worker's slot.
///
/// The kernel sends one `FUSE_INTERRUPT` per interrupted request, and
/// another thread may read it before the thread that took the request has
/// registered it. Such an interrupt is remembered in `early`, and the
/// request is cancelled as it registers, as libfuse does.
///
/// # Invariants
///
/// An interrupt for a request being handled fires that request's source:
/// the interrupt is put in `early` (and counted) before the slots are
/// searched, and a request is put in its slot before `early` is asked. Each
/// slot's mutex orders the two: if the search locks the slot first, the
/// registration that locks it after sees the count (the count's store
/// happens before the search's unlock, which happens before the
/// registration's lock); if the registration locks it first, the search
/// finds the request.
#[derive(Default)]
pub(crate) struct Inflight {
    /// Every worker's slot.
    slots: Mutex<Vec<Arc<Running>>>,
    /// Interrupted uniques not (yet) found running, with when the
    /// interrupt came. Keyed by the kernel's request ids (not chosen by
    /// any caller), so a fast hash will do.
    early: Mutex<FxHashMap<u64, Instant>>,
    /// How many entries `early` has: registrations look at it without the
    /// lock, and take the lock only when it is not 0.
    early_count: AtomicUsize,
    /// Deferred requests ([`crate::defer`]), searched after the slots.
    pub(crate) deferred: Arc<DeferredTable>,
}

/// What one worker is handling: a request's unique and its interrupt
/// source, or nothing.
#[derive(Default)]
pub(crate) struct Running(CachePadded<Mutex<Option<Handling>>>);

/// A request's unique and its interrupt source.
type Handling = (u64, Arc<CancelSource>);

impl Inflight {
    /// A table whose deferred requests are listed in `deferred`.
    pub(crate) fn new(deferred: Arc<DeferredTable>) -> Self {
        Inflight { deferred, ..Inflight::default() }
    }

    /// A slot for a new worker (given back by [`leave`](Self::leave)).
    pub(crate) fn join(&self) -> Arc<Running> {
        let slot = Arc::new(Running::default());
        lock(&self.slots).push(slot.clone());
        slot
    }

    /// The worker of `slot` is gone.
    pub(crate) fn leave(&self, slot: &Arc<Running>) {
        lock(&self.slots).retain(|s| !Arc::ptr_eq(s, slot));
    }

    /// Registers request `unique` in its worker's `slot` with the interrupt
    /// source `src` (not fired); the source is fired at once if its
    /// interrupt came first.
    pub(crate) fn begin(&self, slot: &Running, unique: u64, src: &Arc<CancelSource>) {
        *lock(&slot.0) = Some((unique, src.clone()));
        // Read after the slot's lock was taken: an interrupt whose search
        // locked the slot before us has counted itself by now (type
        // invariants).
        if self.early_count.load(Ordering::Acquire) != 0 {
            let mut early = lock(&self.early);
            if early.remove(&unique).is_some() {
                self.early_count.store(early.len(), Ordering::Release);
                drop(early);
                src.cancel();
            }
        }
    }

    /// The request in `slot` is over.
    pub(crate) fn end(&self, slot: &Running) {
        let done = lock(&slot.0).take();
        // The source's reference is dropped outside the lock.
        drop(done);
    }

    /// `FUSE_INTERRUPT` for request `unique`.
    pub(crate) fn interrupt(&self, unique: u64) {
        {
            let mut early = lock(&self.early);
            let now = Instant::now();
            early.retain(|_, t| now.duration_since(*t) < EARLY_INTERRUPT_TTL);
            early.insert(unique, now);
            self.early_count.store(early.len(), Ordering::Release);
        }
        // Before the slots are searched (type invariants).
        let target = lock(&self.slots)
            .iter()
            .find_map(|slot| match &*lock(&slot.0) {
                Some((u, src)) if *u == unique => Some(src.clone()),
                _ => None,
            })
            // After the slots: a request being deferred is listed there
            // before it leaves its slot.
            .or_else(|| self.deferred.get(unique));
        if let Some(src) = target {
            let mut early = lock(&self.early);
            early.remove(&unique);
            self.early_count.store(early.len(), Ordering::Release);
            drop(early);
            // Fired outside every lock: cancelling wakes the handler's waits.
            src.cancel();
        }
    }
}

/// A worker's interrupt source and what its probe reads.
pub(crate) struct Interrupts {
    pub(crate) src: Arc<CancelSource>,
    /// The caller whose pending signal the probe asks about; 0 for none.
    tid: Arc<AtomicU32>,
}

impl Interrupts {
    /// The source for a worker's next request, whose probe (for a ring
    /// request) asks about thread `probe`: `prev`, the source of the
    /// worker's last request, re-armed, unless someone still holds it (an
    /// interrupt being delivered), else a new one.
    pub(crate) fn next(
        prev: Option<Interrupts>,
        on_sleep: Option<&OnSleep>,
        probe: Option<u32>,
    ) -> Interrupts {
        let i = match prev {
            Some(mut i) => match Arc::get_mut(&mut i.src) {
                Some(src) => {
                    src.rearm();
                    i
                }
                None => Interrupts::new(on_sleep.cloned()),
            },
            None => Interrupts::new(on_sleep.cloned()),
        };
        i.tid.store(probe.unwrap_or(0), Ordering::Relaxed);
        i
    }

    fn new(on_sleep: Option<OnSleep>) -> Self {
        let tid = Arc::new(AtomicU32::new(0));
        let t = tid.clone();
        // Before a handler's first sleep: the transport's hook, then whether
        // the caller has a signal whose interrupt the kernel dropped.
        let src = Arc::new(CancelSource::with_probe(move || {
            if let Some(h) = &on_sleep {
                h();
            }
            let t = t.load(Ordering::Relaxed);
            t != 0 && crate::signal::signal_pending(t)
        }));
        Interrupts { src, tid }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(prev: Option<Interrupts>) -> Interrupts {
        Interrupts::next(prev, None, None)
    }

    #[test]
    fn an_interrupt_fires_the_running_request_only() {
        let inflight = Inflight::default();
        let (a, b) = (inflight.join(), inflight.join());
        let (ia, ib) = (source(None), source(None));
        inflight.begin(&a, 10, &ia.src);
        inflight.begin(&b, 12, &ib.src);
        inflight.interrupt(12);
        assert!(!ia.src.is_cancelled());
        assert!(ib.src.is_cancelled());
        // Found running: not kept as an early interrupt.
        assert_eq!(inflight.early_count.load(Ordering::Relaxed), 0);
        inflight.end(&a);
        inflight.end(&b);
        inflight.leave(&a);
        inflight.leave(&b);
        assert!(inflight.slots.lock().unwrap().is_empty());
    }

    #[test]
    fn an_interrupt_before_its_request_fires_it_as_it_begins() {
        let inflight = Inflight::default();
        let slot = inflight.join();
        inflight.interrupt(20);
        assert_eq!(inflight.early_count.load(Ordering::Relaxed), 1);
        let other = source(None);
        inflight.begin(&slot, 18, &other.src);
        assert!(!other.src.is_cancelled(), "another request is not fired");
        inflight.end(&slot);
        let i = source(Some(other));
        inflight.begin(&slot, 20, &i.src);
        assert!(i.src.is_cancelled());
        assert_eq!(inflight.early_count.load(Ordering::Relaxed), 0);
        inflight.end(&slot);
    }

    #[test]
    fn a_reused_source_is_new_for_the_next_request() {
        let inflight = Inflight::default();
        let slot = inflight.join();
        let i = source(None);
        let first = Arc::as_ptr(&i.src);
        inflight.begin(&slot, 30, &i.src);
        inflight.interrupt(30);
        assert!(i.src.is_cancelled());
        inflight.end(&slot);
        // A late interrupt of the finished request: remembered, harmless.
        inflight.interrupt(30);
        let i = source(Some(i));
        assert_eq!(Arc::as_ptr(&i.src), first, "re-armed, not allocated");
        assert!(!i.src.is_cancelled());
        inflight.begin(&slot, 32, &i.src);
        assert!(!i.src.is_cancelled(), "the next request is not fired");
        inflight.end(&slot);
    }

    #[test]
    fn a_source_still_held_elsewhere_is_not_reused() {
        let i = source(None);
        let held = i.src.clone();
        let j = source(Some(i));
        assert!(!Arc::ptr_eq(&held, &j.src));
        held.cancel();
        assert!(!j.src.is_cancelled());
    }

    /// An interrupt racing its request's registration, from another
    /// thread, always fires it: either the search finds the slot, or the
    /// registration finds the early interrupt.
    #[test]
    fn an_interrupt_racing_the_registration_is_never_lost() {
        let inflight = Arc::new(Inflight::default());
        let slot = inflight.join();
        let mut prev = None;
        for n in 0..5_000u64 {
            let unique = 2 * n + 100;
            let barrier = Arc::new(std::sync::Barrier::new(2));
            let t = {
                let (inflight, barrier) = (inflight.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    inflight.interrupt(unique);
                })
            };
            let i = source(prev.take());
            barrier.wait();
            inflight.begin(&slot, unique, &i.src);
            t.join().unwrap();
            assert!(i.src.is_cancelled(), "interrupt of request {unique} lost");
            inflight.end(&slot);
            prev = Some(i);
        }
        assert_eq!(inflight.early_count.load(Ordering::Relaxed), 0);
    }
}
