//! Locking that ignores poisoning: the one helper every devlife crate uses
//! for its standard-library locks.
//!
//! A `std::sync::Mutex` is poisoned when a thread panics while holding it.
//! devlife catches every driver handler's panic and goes on serving, so a
//! poisoned lock is an expected state, not a reason to stop: the data
//! behind devlife's locks (tables, queues, counters, waiter lists) is kept
//! consistent at every point where a panic can unwind, so poisoning carries
//! no information. Linux's locks have no poisoning at all; these helpers
//! give that behaviour.
//!
//! Under `--cfg loom` they take loom's types (the crate's one loom seam).
//!
//! # Examples
//!
//! ```
//! use devlife_gate::sync::lock;
//! use std::sync::Mutex;
//!
//! let m = Mutex::new(1);
//! let _ = std::panic::catch_unwind(|| {
//!     let _g = m.lock().unwrap();
//!     panic!("a handler panicked holding the lock");
//! });
//! assert!(m.is_poisoned());
//! *lock(&m) += 1; // still usable
//! assert_eq!(*lock(&m), 2);
//! ```

pub use crate::primitive::{lock, wait, wait_timeout};
