//! Inode numbers for paths, with the object each stood for.
//!
//! An inode remembers the path it was looked up by and the identity of the
//! object found there. Every request re-resolves the path and compares
//! identities: when a device is removed and another appears under the same
//! name, requests on the old inode fail `ENOENT` instead of reaching the new
//! object (the stale-`i_cdev` problem of containers and devtmpfs).

use devlife_core::gate::sync::lock;
use rustc_hash::FxHashMap;
use std::collections::HashMap;
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
pub struct Inodes {
    inner: Mutex<Table>,
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
        Inodes { inner: Mutex::new(Table { by_ino, by_path, next }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        lock(&self.inner)
    }

    /// The path and object identity of `ino`.
    pub fn get(&self, ino: u64) -> Option<(Arc<str>, u64)> {
        self.lock().by_ino.get(&ino).map(|i| (i.path.clone(), i.id))
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
            }
        }
    }
}
