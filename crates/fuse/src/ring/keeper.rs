//! A queue's keeper: the ring that holds the entries of retired workers
//! (see "Retiring workers" in the parent module).
//!
//! The keeper thread waits on a ring of its own for two things: a wake-up
//! (an `eventfd` read) saying retiring workers left it entries to commit,
//! and requests the kernel hands to the entries it holds. It commits what
//! it is given, and hands every request it receives, with its entry, to a
//! new thread ([`adopt`](super::adopt)). It never runs a handler, so the
//! entries it holds are always answered.
//!
//! # Invariants
//!
//! An entry in `slots` is registered with the kernel and bound to the
//! keeper's ring (its last `COMMIT_AND_FETCH` was submitted there); the
//! kernel writes a request into its memory only while running the
//! keeper's deferred task work, inside the keeper's `io_uring_enter`. The
//! keeper reads an entry only after the completion saying a request is in
//! it, and then gives it away whole.

use super::{Entry, Queue, Ring, Rings, commit_sqe, serve_on, took};
use crate::fs::Filesystem;
use crate::session::Shared;
use io_uring::{IoUring, cqueue, opcode, squeue, types};
use rustix::event::{EventfdFlags, eventfd};
use rustix::fd::{AsRawFd, OwnedFd};
use rustix::io::Errno;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The `user_data` of the keeper's `eventfd` read.
const WAKE: u64 = u64::MAX;

/// Completion ring size: the keeper may hold many entries (every worker a
/// flood of blocked callers made); completions beyond it wait in the
/// kernel's overflow list (`IORING_FEAT_NODROP`), not lost.
const CQ_ENTRIES: u32 = 4096;

/// The shared half of a queue's keeper: where retiring workers leave their
/// entries.
pub(super) struct Keeper {
    /// Entries with a reply to commit (the request's unique id).
    jobs: Mutex<Vec<(Entry, u64)>>,
    wake: OwnedFd,
    running: AtomicBool,
}

impl Keeper {
    pub(super) fn new() -> std::io::Result<Self> {
        let wake = eventfd(0, EventfdFlags::CLOEXEC)?;
        Ok(Keeper { jobs: Mutex::default(), wake, running: AtomicBool::new(false) })
    }

    /// Whether the keeper takes entries (it has started, and the
    /// connection has not ended).
    pub(super) fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// Leaves `entry`, holding the reply to request `commit_id`, to the
    /// keeper, which commits it and keeps the entry. Gives the entry back
    /// if the keeper is not running.
    /// Wakes the keeper (to take jobs, or to see the connection ended).
    pub(super) fn wake(&self) {
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }

    pub(super) fn retire(&self, entry: Entry, commit_id: u64) -> Result<(), Entry> {
        {
            let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
            // Checked under the lock the keeper empties the list under when
            // it stops: a job left here is always taken.
            if !self.is_running() {
                return Err(entry);
            }
            jobs.push((entry, commit_id));
        }
        self.wake();
        Ok(())
    }
}

/// Starts `q`'s keeper thread. Workers retire only once it runs.
pub(super) fn start<F: Filesystem>(s: &Arc<Shared<F>>, rings: &Arc<Rings>, q: &Arc<Queue>) {
    {
        let q = q.clone();
        s.on_end(move || q.keeper.wake());
    }
    let (rings, q2) = (rings.clone(), q.clone());
    s.spawn(&format!("fuse-keep-{}", q.qid), move |s| {
        // Made on this thread: a single-issuer ring belongs to the thread
        // that creates it.
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_coop_taskrun()
            .setup_cqsize(CQ_ENTRIES)
            .build(256);
        match ring {
            Ok(ring) => {
                q2.keeper.running.store(true, Ordering::Release);
                run(s, &rings, &q2, ring);
            }
            Err(e) => tracing::warn!("ring queue {}: no keeper ({e}): its workers do not retire", q2.qid),
        }
    });
}

/// Pushes `sqe`, submitting what is queued first if the ring is full.
fn push(ring: &mut Ring, sqe: &squeue::Entry128) -> std::io::Result<()> {
    loop {
        // SAFETY: the commands the keeper pushes carry no pointer but the
        // eventfd read's buffer, which is never freed (see `run`).
        if unsafe { ring.submission().push(sqe) }.is_ok() {
            return Ok(());
        }
        ring.submit()?;
    }
}

fn run<F: Filesystem>(s: &Arc<Shared<F>>, rings: &Arc<Rings>, q: &Arc<Queue>, mut ring: Ring) {
    serve_on(q);
    let fd = types::Fd(s.master.as_raw_fd());
    // The eventfd read's buffer, which the kernel may write until the ring's
    // teardown (asynchronous to closing it) has cancelled the read: leaked,
    // 8 bytes per queue and connection, so it outlives any such write.
    let counter: &'static mut [u8; 8] = Box::leak(Box::new([0u8; 8]));
    let wake_read = |buf: &mut [u8; 8]| {
        squeue::Entry128::from(
            opcode::Read::new(types::Fd(q.keeper.wake.as_raw_fd()), buf.as_mut_ptr(), 8)
                .build()
                .user_data(WAKE),
        )
    };
    // Entries the keeper holds, by slot (the commit's `user_data`).
    let mut slots: Vec<Option<Entry>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut ok = push(&mut ring, &wake_read(counter)).is_ok();
    while ok {
        s.stats.ring_enters.fetch_add(1, Ordering::Relaxed);
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("ring queue {} keeper: io_uring_enter: {e}", q.qid);
                break;
            }
        }
        let done: Vec<(u64, i32)> = ring.completion().map(|c| (c.user_data(), c.result())).collect();
        for (data, res) in done {
            if data == WAKE {
                if s.is_ended() {
                    ok = false;
                    continue;
                }
                let jobs = std::mem::take(&mut *q.keeper.jobs.lock().unwrap_or_else(PoisonError::into_inner));
                for (entry, commit_id) in jobs {
                    let slot = free.pop().unwrap_or_else(|| {
                        slots.push(None);
                        slots.len() - 1
                    });
                    slots[slot] = Some(entry);
                    q.spare.fetch_add(1, Ordering::AcqRel);
                    if push(&mut ring, &commit_sqe(fd, commit_id, q).user_data(slot as u64)).is_err() {
                        ok = false;
                    }
                }
                if push(&mut ring, &wake_read(counter)).is_err() {
                    ok = false;
                }
                continue;
            }
            let Some(entry) = slots.get_mut(data as usize).and_then(Option::take) else { continue };
            free.push(data as usize);
            if res != 0 {
                let e = Errno::from_raw_os_error(-res);
                if !matches!(e, Errno::NOTCONN | Errno::CANCELED | Errno::CONNABORTED | Errno::NODEV) {
                    tracing::error!("ring queue {} keeper: request failed: {e}", q.qid);
                }
                // The connection is over.
                slots[data as usize] = Some(entry);
                ok = false;
                continue;
            }
            // A request is in the entry: handled by a thread that may block.
            took(s, q);
            let (rings2, q2) = (rings.clone(), q.clone());
            let cell = Arc::new(Mutex::new(Some(entry)));
            let c2 = cell.clone();
            let started = s.spawn(&format!("fuse-ring-{}", q.qid), move |s| {
                if let Some(entry) = c2.lock().unwrap_or_else(PoisonError::into_inner).take() {
                    super::adopt(s, &rings2, &q2, entry);
                }
            });
            if !started {
                // No thread for it: answer it here rather than never.
                if let Some(mut entry) = cell.lock().unwrap_or_else(PoisonError::into_inner).take() {
                    let commit_id = super::refuse(&mut entry, Errno::AGAIN);
                    let slot = data as usize;
                    slots[slot] = Some(entry);
                    free.retain(|&f| f != slot);
                    q.spare.fetch_add(1, Ordering::AcqRel);
                    if push(&mut ring, &commit_sqe(fd, commit_id, q).user_data(slot as u64)).is_err() {
                        ok = false;
                    }
                }
            }
        }
    }
    // Stopped: no more entries are taken; those left by workers since are
    // dropped with the ones held, after the ring (whose closing cancels
    // their commands).
    let left = {
        let mut jobs = q.keeper.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        q.keeper.running.store(false, Ordering::Release);
        std::mem::take(&mut *jobs)
    };
    drop(ring);
    drop(left);
    drop(slots);
}
