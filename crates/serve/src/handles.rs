//! [`Handles`]: open handles by `fh`, for the FUSE tree and each CUSE
//! device alike.

use crossbeam_utils::CachePadded;
use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

const SHARDS: usize = 16;

/// Keyed by the numbers we hand out (`next`), not by anything a caller
/// chooses: a fast hash will do.
type Shard<T> = Mutex<FxHashMap<u64, Arc<T>>>;

/// Open handles by `fh`, in shards: every request on an open file looks its
/// handle up, and with one lock the CPUs serving different files would
/// pass its cache line back and forth on every request. Consecutive `fh`s
/// land in different shards, each on a cache line of its own.
pub(crate) struct Handles<T> {
    shards: [CachePadded<Shard<T>>; SHARDS],
    next: AtomicU64,
}

impl<T> Default for Handles<T> {
    fn default() -> Self {
        Handles { shards: std::array::from_fn(|_| CachePadded::default()), next: AtomicU64::new(1) }
    }
}

impl<T> Handles<T> {
    fn shard(&self, fh: u64) -> MutexGuard<'_, FxHashMap<u64, Arc<T>>> {
        self.shards[(fh % SHARDS as u64) as usize].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `h` under a new `fh`, never used before in this table.
    pub(crate) fn add(&self, h: T) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.shard(fh).insert(fh, Arc::new(h));
        fh
    }

    /// The handle `fh`, if open.
    pub(crate) fn get(&self, fh: u64) -> Option<Arc<T>> {
        self.shard(fh).get(&fh).cloned()
    }

    /// Takes handle `fh` out.
    pub(crate) fn remove(&self, fh: u64) -> Option<Arc<T>> {
        self.shard(fh).remove(&fh)
    }
}
