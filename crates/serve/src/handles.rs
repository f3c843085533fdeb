//! [`Handles`]: open handles by `fh`, for the FUSE tree and each CUSE
//! device alike.

use devlife_core::gate::sync::lock;
use devlife_core::percpu::PerCpu;
use rustc_hash::FxHashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// One shard: its handles, keyed by the numbers it hands out (`next`), not
/// by anything a caller chooses, so a fast hash will do.
struct Shard<T> {
    map: FxHashMap<u64, Arc<T>>,
    /// Handles this shard has handed out.
    next: u64,
}

/// Open handles by `fh`, in shards, one for each CPU (a [`PerCpu`]):
/// every request on an open file looks its handle up, and a caller's open,
/// its requests and its release mostly come to the same CPU's queue, so
/// with the handle made in the shard of the CPU that opens it, they take a
/// lock and touch a table that stay in that CPU's cache, where one lock,
/// one counter or round-robin shards would pass their cache lines between
/// the CPUs on every open. A handle's number names its shard: its low bits
/// are the shard's index, the rest the shard's own count.
///
/// # Invariants
///
/// * `fh % n`, with `n` the shards' count (a power of two), is the index
///   of the shard that holds `fh`.
/// * No `fh` is handed out twice by one table (each shard's `next` only
///   grows), and none is 0.
pub(crate) struct Handles<T> {
    shards: PerCpu<Mutex<Shard<T>>>,
}

impl<T> Default for Handles<T> {
    fn default() -> Self {
        Self::in_generation(0)
    }
}

impl<T> Handles<T> {
    /// A table whose handles are numbered in `generation` (the top 16
    /// bits; see `restart`).
    pub(crate) fn in_generation(generation: u16) -> Self {
        let shards = PerCpu::new(|| Mutex::new(Shard { map: FxHashMap::default(), next: 0 }));
        // A power of two no larger than 16: it divides the generation's base.
        let first = crate::fs::generation_base(generation) / shards.slot_count() as u64;
        for s in shards.iter() {
            lock(s).next = first;
        }
        Handles { shards }
    }

    fn lock(&self, idx: usize) -> MutexGuard<'_, Shard<T>> {
        lock(self.shards.get(idx))
    }

    fn shard_of(&self, fh: u64) -> usize {
        (fh % self.shards.slot_count() as u64) as usize
    }

    /// Adds `h` under a new `fh`, never used before in this table, in the
    /// shard of the CPU the caller runs on.
    pub(crate) fn add(&self, h: T) -> u64 {
        let idx = self.shards.index();
        let mut s = self.lock(idx);
        s.next += 1;
        let fh = s.next * self.shards.slot_count() as u64 + idx as u64;
        s.map.insert(fh, Arc::new(h));
        fh
    }

    /// The handle `fh`, if open.
    pub(crate) fn get(&self, fh: u64) -> Option<Arc<T>> {
        self.lock(self.shard_of(fh)).map.get(&fh).cloned()
    }

    /// Whether no handle is open (every shard looked at in turn: a
    /// moment's answer, for a caller that knows no new one comes).
    pub(crate) fn is_empty(&self) -> bool {
        self.shards.iter().all(|s| lock(s).map.is_empty())
    }

    /// Takes handle `fh` out.
    pub(crate) fn remove(&self, fh: u64) -> Option<Arc<T>> {
        self.lock(self.shard_of(fh)).map.remove(&fh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn handles_are_unique_nonzero_and_found_from_any_thread() {
        let t = Arc::new(Handles::<u32>::default());
        let fhs: Vec<Vec<u64>> = (0..4)
            .map(|k| {
                let t = t.clone();
                std::thread::spawn(move || (0..1000).map(|i| t.add(k * 1000 + i)).collect())
            })
            .map(|j| j.join().unwrap())
            .collect();
        let all: HashSet<u64> = fhs.iter().flatten().copied().collect();
        assert_eq!(all.len(), 4000, "no number handed out twice");
        assert!(!all.contains(&0));
        for (k, v) in fhs.iter().enumerate() {
            for (i, fh) in v.iter().enumerate() {
                assert_eq!(t.get(*fh).as_deref(), Some(&((k * 1000 + i) as u32)));
            }
        }
        let fh = fhs[0][0];
        assert_eq!(t.remove(fh).as_deref(), Some(&0));
        assert!(t.get(fh).is_none() && t.remove(fh).is_none(), "a removed handle is gone");
        let again = t.add(7);
        assert!(!all.contains(&again), "a number is never reused");
    }
}
