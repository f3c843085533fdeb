//! Object identities: numbers that name one object for the life of the
//! process and are never given to another.
//!
//! A transport caches identities (FUSE node ids, file handles): if an
//! identity could be reused, a handle kept across a removal could reach
//! the object re-created in its place (an `Arc` address, the allocator
//! reuses at once). Every device, driver registration, gated node and
//! debugfs entry takes its identity from one counter instead; at a
//! billion objects a second it would take 584 years to wrap.

use std::sync::atomic::{AtomicU64, Ordering};

static NEXT: AtomicU64 = AtomicU64::new(1);

/// A fresh identity (never 0, never returned twice in this process).
pub(crate) fn next() -> u64 {
    NEXT.fetch_add(1, Ordering::Relaxed)
}
