//! [`PollHandles`]: which poll handles a restarted server must wake.

use super::state::State;
use devlife_core::gate::sync::lock;
use rustix::fd::OwnedFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The highest poll handle the kernel has given a server of the
/// connection, kept in the [`State`] record as it grows, so that the next
/// server can wake every poller left waiting: a `poll(2)` on a FUSE file
/// sleeps until its server sends `FUSE_NOTIFY_POLL` for the file's handle,
/// and a dead server never will.
///
/// The kernel numbers poll handles from 1, one per file the first time it
/// is polled (`fc->khctr`), so waking 1 to the highest wakes them all; a
/// handle whose file is closed is ignored by the kernel. The record is
/// written only when a new highest handle comes, once per polled file.
pub(crate) struct PollHandles {
    max: AtomicU64,
    /// The record's file, once there is one; held while it is written, so
    /// the last write is the highest.
    state: Mutex<Option<OwnedFd>>,
}

impl PollHandles {
    /// Recording into `state` (the record's file), from `max`.
    pub(crate) fn new(state: OwnedFd, max: u64) -> Self {
        PollHandles { max: AtomicU64::new(max), state: Mutex::new(Some(state)) }
    }

    /// Counting, with no record yet ([`record_into`](Self::record_into)).
    pub(crate) fn unrecorded() -> Self {
        PollHandles { max: AtomicU64::new(0), state: Mutex::new(None) }
    }

    /// Records into `state` from now on, starting with the highest handle
    /// seen so far.
    pub(crate) fn record_into(&self, state: OwnedFd) {
        let mut fd = lock(&self.state);
        // Under the lock: a `saw` that found no file had raised `max`
        // before it took the lock, so this load sees it.
        let highest = self.max.load(Ordering::Relaxed);
        if let Err(e) = State::write_max_kh(&state, highest) {
            tracing::warn!("cannot record a poll handle for a restart: {e}");
        }
        *fd = Some(state);
    }

    /// The kernel gave handle `kh`.
    pub(crate) fn saw(&self, kh: u64) {
        // Relaxed: the highest is read again under the lock, which
        // orders the writes.
        if self.max.fetch_max(kh, Ordering::Relaxed) < kh {
            let fd = lock(&self.state);
            let highest = self.max.load(Ordering::Relaxed);
            if let Some(fd) = &*fd {
                if let Err(e) = State::write_max_kh(fd, highest) {
                    tracing::warn!(kh, "cannot record a poll handle for a restart: {e}");
                }
            }
        }
    }
}
