//! The loom seam: every synchronisation primitive the crate uses comes from here.
//!
//! Under `--cfg loom` these are loom's model-checked versions, otherwise the
//! standard library's. Nothing else in the crate imports `std::sync` atomics,
//! locks or thread-locals directly, so one `cfg` switches the whole crate
//! (the crossbeam `mod primitive` pattern).

#[cfg(loom)]
pub(crate) use loom::{
    lazy_static,
    sync::{
        Condvar, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering, fence},
    },
    thread_local,
};

#[cfg(not(loom))]
pub(crate) use std::{
    sync::{
        Condvar, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering, fence},
    },
    thread_local,
};

/// Locks `m`, ignoring poisoning (see [`crate::sync`]).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits on `cv`, ignoring poisoning (see [`lock`]).
pub fn wait<'a, T>(cv: &Condvar, g: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(g).unwrap_or_else(|e| e.into_inner())
}

/// Waits on `cv` for at most `dur`, ignoring poisoning (see [`lock`]).
///
/// Under loom a timed wait is an untimed one (loom has no clock); the callers
/// re-check their deadline, so this only narrows the explored schedules.
pub fn wait_timeout<'a, T>(
    cv: &Condvar,
    g: MutexGuard<'a, T>,
    dur: std::time::Duration,
) -> MutexGuard<'a, T> {
    match cv.wait_timeout(g, dur) {
        Ok((g, _)) => g,
        Err(e) => e.into_inner().0,
    }
}

/// A process-wide lazily initialised static, reset per loom execution.
#[cfg(not(loom))]
macro_rules! global {
    ($(#[$attr:meta])* static $name:ident: $t:ty = $init:expr;) => {
        $(#[$attr])*
        static $name: std::sync::LazyLock<$t> = std::sync::LazyLock::new(|| $init);
    };
}
#[cfg(loom)]
macro_rules! global {
    ($(#[$attr:meta])* static $name:ident: $t:ty = $init:expr;) => {
        $crate::primitive::lazy_static! {
            $(#[$attr])*
            static ref $name: $t = $init;
        }
    };
}
pub(crate) use global;
