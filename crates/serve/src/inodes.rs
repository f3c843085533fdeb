//! Inode numbers for paths, with the object each stood for.
//!
//! An inode remembers the path it was looked up by and the identity of the
//! object found there. Every request re-resolves the path and compares
//! identities: when a device is removed and another appears under the same
//! name, requests on the old inode fail `ENOENT` instead of reaching the new
//! object (the stale-`i_cdev` problem of containers and devtmpfs).

use crossbeam_utils::CachePadded;
use devlife_core::gate::sync::lock;
use devlife_core::percpu::PerCpu;
use rustc_hash::FxHashMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The root directory's inode number.
pub const ROOT: u64 = 1;

struct Inode {
    /// Shared with every request that resolves it: no copy per request.
    path: Arc<str>,
    id: u64,
    lookups: u64,
}

/// The inode table.
///
/// Every open of a device resolves its inode: besides the table, each CPU
/// keeps a copy of the inodes it resolved ([`with`](Inodes::with)), so
/// that opens on different CPUs take no common lock and write no common
/// count. An inode's path and object never change while it is in the
/// table (a path that comes to name another object gets a new inode), so
/// a copy only goes stale when its inode leaves the table: each removal
/// is counted, and a CPU's copies made before the latest one are dropped
/// at its next use.
pub struct Inodes {
    inner: Mutex<Table>,
    /// Inodes removed from the table, ever: read by every [`with`](Self::with),
    /// written only by a removal, so on a line of its own (not the lock's).
    removals: CachePadded<AtomicU64>,
    /// Each CPU's copies.
    copies: PerCpu<Mutex<Copies>>,
}

/// One CPU's copies of inodes it resolved.
#[derive(Default)]
struct Copies {
    /// `Inodes::removals` when these were made.
    removals: u64,
    /// Path and object identity, by inode.
    by_ino: FxHashMap<u64, (Box<str>, u64)>,
}

struct Table {
    /// Our own numbers: a fast hash will do.
    by_ino: FxHashMap<u64, Inode>,
    /// Names that callers chose: the standard library's keyed hash.
    by_path: HashMap<String, u64>,
    next: u64,
}

impl Default for Inodes {
    fn default() -> Self {
        Self::in_generation(0)
    }
}

impl Inodes {
    /// A table whose new inodes are numbered in `generation` (the top 16
    /// bits; the root is 1 in every one): a number an earlier server of
    /// the connection gave the kernel is never given again (see
    /// `restart`).
    pub fn in_generation(generation: u16) -> Self {
        let mut by_ino = FxHashMap::default();
        by_ino.insert(ROOT, Inode { path: "".into(), id: 0, lookups: 1 });
        let mut by_path = HashMap::new();
        by_path.insert(String::new(), ROOT);
        let next = crate::fs::generation_base(generation) + ROOT + 1;
        Inodes {
            inner: Mutex::new(Table { by_ino, by_path, next }),
            removals: CachePadded::new(AtomicU64::new(0)),
            copies: PerCpu::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        lock(&self.inner)
    }

    /// The path and object identity of `ino`.
    pub fn get(&self, ino: u64) -> Option<(Arc<str>, u64)> {
        self.lock().by_ino.get(&ino).map(|i| (i.path.clone(), i.id))
    }

    /// Runs `f` on the path and object identity of `ino`, from the calling
    /// CPU's copy (made from the table at its first use there); `None` if
    /// `ino` is not in the table.
    pub fn with<R>(&self, ino: u64, f: impl FnOnce(&str, u64) -> R) -> Option<R> {
        // Acquire: pairs with the Release increment in `forget`, made after
        // the inode left the table: copies made before it are dropped.
        let removals = self.removals.load(Ordering::Acquire);
        let mut copies = lock(self.copies.this());
        if copies.removals != removals {
            copies.by_ino.clear();
            copies.removals = removals;
        }
        if let Some((path, id)) = copies.by_ino.get(&ino) {
            return Some(f(path, *id));
        }
        let (path, id) = self.lock().by_ino.get(&ino).map(|i| (Box::<str>::from(&*i.path), i.id))?;
        let r = f(&path, id);
        copies.by_ino.insert(ino, (path, id));
        Some(r)
    }

    /// The inode of `path` if it is known and stands for object `id`.
    pub fn peek(&self, path: &str, id: u64) -> Option<u64> {
        let t = self.lock();
        t.by_path.get(path).copied().filter(|ino| t.by_ino.get(ino).is_some_and(|i| i.id == id))
    }

    /// Counts one kernel lookup of `path` (object `id`); returns its inode,
    /// a new one if the path now names another object.
    pub fn lookup(&self, path: &str, id: u64) -> u64 {
        let mut t = self.lock();
        if let Some(&ino) = t.by_path.get(path) {
            if let Some(i) = t.by_ino.get_mut(&ino) {
                if i.id == id {
                    i.lookups += 1;
                    return ino;
                }
            }
        }
        let ino = t.next;
        t.next += 1;
        t.by_ino.insert(ino, Inode { path: path.into(), id, lookups: 1 });
        t.by_path.insert(path.to_owned(), ino);
        ino
    }

    /// The inode number a directory listing shows for `path` (no lookup is
    /// counted: a known inode's, or a fresh number the kernel will look up).
    pub fn listing(&self, path: &str, id: u64) -> u64 {
        self.peek(path, id).unwrap_or(u64::MAX)
    }

    /// Inodes known to the kernel (and paths they stand for).
    pub fn counts(&self) -> (usize, usize) {
        let t = self.lock();
        (t.by_ino.len(), t.by_path.len())
    }

    /// The kernel dropped `n` lookups of `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let mut t = self.lock();
        let gone = match t.by_ino.get_mut(&ino) {
            Some(i) => {
                i.lookups = i.lookups.saturating_sub(n);
                i.lookups == 0
            }
            None => false,
        };
        if gone {
            if let Some(i) = t.by_ino.remove(&ino) {
                if t.by_path.get(&*i.path) == Some(&ino) {
                    t.by_path.remove(&*i.path);
                }
                // Release: pairs with the Acquire load in `with`.
                self.removals.fetch_add(1, Ordering::Release);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `with` finds from a thread pinned to each CPU in turn (so every
    /// CPU's copies are used).
    fn on_every_cpu(t: &Arc<Inodes>, ino: u64) -> Vec<Option<(String, u64)>> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        (0..cpus)
            .map(|cpu| {
                let t = t.clone();
                std::thread::spawn(move || {
                    let mut set = rustix::thread::CpuSet::new();
                    set.set(cpu);
                    // A CPU not ours (a cgroup's cpuset): runs anywhere.
                    let _ = rustix::thread::sched_setaffinity(None, &set);
                    t.with(ino, |p, id| (p.to_owned(), id))
                })
                .join()
                .unwrap()
            })
            .collect()
    }

    #[test]
    fn every_cpu_finds_an_inode_until_it_is_forgotten_and_then_its_successor() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let t = Arc::new(Inodes::default());
        let a = t.lookup("dev/x", 7);
        assert_eq!(on_every_cpu(&t, a), vec![Some(("dev/x".to_owned(), 7)); cpus]);
        t.forget(a, 1);
        assert_eq!(on_every_cpu(&t, a), vec![None; cpus], "a forgotten inode is gone on every CPU");
        let b = t.lookup("dev/x", 8);
        assert_ne!(a, b, "the path now names another object: a new inode");
        assert_eq!(on_every_cpu(&t, b), vec![Some(("dev/x".to_owned(), 8)); cpus]);
        assert_eq!(on_every_cpu(&t, a), vec![None; cpus]);
    }
}
