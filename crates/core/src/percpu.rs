//! [`PerCpu`]: one value per CPU, each on cache lines of its own (Linux's
//! `DEFINE_PER_CPU` and `percpu_counter`).
//!
//! What every open and close writes (a node's list of open files, the
//! open and release counters) would, kept once, pass its cache lines
//! between the CPUs on every open and close. Kept per CPU, a caller's open and its close mostly write lines that stay in
//! the cache of the CPU it runs on (the transport's queues bring a
//! caller's requests to the CPU it runs on). A thread moved between the
//! two only shares a line for that once; no slot is ever owned by one
//! CPU, so each value still needs its own synchronisation (a lock, an
//! atomic), and correctness never depends on where a thread runs.

use crossbeam_utils::CachePadded;
use std::sync::OnceLock;

/// The most slots a [`PerCpu`] has: beyond this many CPUs, CPUs share slots
/// (a node's slots cost `128 * SLOTS_MAX` bytes at most).
const SLOTS_MAX: usize = 16;

/// How many slots each [`PerCpu`] has: the CPUs this process may run on,
/// rounded up to a power of two, at most [`SLOTS_MAX`].
fn slots() -> usize {
    static SLOTS: OnceLock<usize> = OnceLock::new();
    *SLOTS.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        cpus.next_power_of_two().min(SLOTS_MAX)
    })
}

/// One `T` per CPU (modulo the slot count), each cache-padded.
///
/// # Examples
///
/// ```
/// use devlife_core::percpu::PerCpu;
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// let opens = PerCpu::<AtomicU64>::default();
/// opens.this().fetch_add(1, Ordering::Relaxed);
/// assert_eq!(opens.iter().map(|c| c.load(Ordering::Relaxed)).sum::<u64>(), 1);
/// ```
///
/// # Invariants
///
/// * `slots.len()` is a power of two, at least 1: `index` masks with
///   `len - 1`.
#[doc(alias = "DEFINE_PER_CPU")]
#[doc(alias = "percpu_counter")]
pub struct PerCpu<T> {
    slots: Box<[CachePadded<T>]>,
}

impl<T> PerCpu<T> {
    /// One value per slot, each made by `f`.
    pub fn new(mut f: impl FnMut() -> T) -> Self {
        PerCpu { slots: (0..slots()).map(|_| CachePadded::new(f())).collect() }
    }

    /// How many slots there are (a power of two): indices wrap at it.
    #[inline]
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// The slot of the CPU the caller runs on (where it ran a moment ago:
    /// a thread may move at any time).
    #[inline]
    pub fn index(&self) -> usize {
        rustix::thread::sched_getcpu() & (self.slots.len() - 1)
    }

    /// The value of slot `i` (an index from [`index`](Self::index)).
    #[inline]
    pub fn get(&self, i: usize) -> &T {
        &self.slots[i & (self.slots.len() - 1)]
    }

    /// The value of the caller's CPU.
    #[inline]
    pub fn this(&self) -> &T {
        self.get(self.index())
    }

    /// Every slot's value.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().map(|s| &**s)
    }
}

impl<T: Default> Default for PerCpu<T> {
    fn default() -> Self {
        Self::new(T::default)
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for PerCpu<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn every_thread_finds_a_slot_and_the_sum_is_exact() {
        let c = std::sync::Arc::new(PerCpu::<AtomicU64>::default());
        assert!(c.iter().count().is_power_of_two());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        c.this().fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(c.iter().map(|s| s.load(Ordering::Relaxed)).sum::<u64>(), 40_000);
        assert!(std::ptr::eq(c.get(c.iter().count()), c.get(0)), "an index wraps");
    }
}
