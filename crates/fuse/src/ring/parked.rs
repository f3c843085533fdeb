//! A ring entry whose request was deferred ([`crate::defer`]): it waits,
//! held, for the reply, which is written into it and committed by the
//! queue's leader like any other (see "Growing" in the parent module for
//! the entries a queue adds meanwhile).

use super::entry::Entry;
use super::queue::Queue;
use crate::defer::RingTarget;
use std::sync::Arc;

/// An entry holding deferred request `commit_id` of `queue`.
pub(super) struct Parked {
    pub(super) entry: Entry,
    pub(super) commit_id: u64,
    pub(super) queue: Arc<Queue>,
}

impl RingTarget for Parked {
    fn reply(self: Box<Self>, error: i32, body: &[u8]) {
        let Parked { mut entry, commit_id, queue } = *self;
        // Held since its completion: no command is outstanding on it, and
        // this thread has its memory to itself (`Entry`'s invariants).
        entry.write_reply(commit_id, error, body);
        queue.complete_deferred(entry, commit_id);
    }
}
