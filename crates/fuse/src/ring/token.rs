//! What the leader of a queue holds: the ring, the entries not held by a
//! handler, and the requests taken from the ring and not yet handled; and
//! which thread each entry is bound to (see "Entries, and the thread a
//! request is written by" in the parent module).

use super::entry::Entry;
use super::wake;
use io_uring::{IoUring, cqueue, squeue};
use rustix::io::Errno;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

pub(super) type Ring = IoUring<squeue::Entry128, cqueue::Entry>;

/// A new thread identity (never 0: 0 marks an entry bound to none).
pub(super) fn next_thread_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// What only the leader touches: the ring, the entries not held by a
/// handler, and the requests taken from the ring and not yet handled.
pub(super) struct Token {
    /// Declared first, so dropped first: closing the ring cancels the
    /// commands of the entries below before their memory is unmapped.
    ring: Ring,
    qid: u16,
    /// Entries by index (their commands' `user_data`); `None` while a
    /// handler holds the entry.
    pub(super) table: Vec<Option<Entry>>,
    /// For each entry, the thread that submitted its outstanding command
    /// (0: none).
    bound: Vec<u64>,
    /// Bindings made (`true`) and ended (`false`) since the queue last
    /// took them into its counts, by thread.
    pub(super) log: Vec<(u64, bool)>,
    /// Requests taken and `io_uring_enter` calls made since the queue last
    /// took them into its counters.
    pub(super) requests: u64,
    pub(super) enters: u64,
    /// Requests taken from the ring and not yet handled (entry indexes).
    pub(super) batch: VecDeque<usize>,
    /// Entries whose command is pushed and not yet submitted, in order.
    unsubmitted: Vec<usize>,
    /// Entries to register before the next wait.
    pub(super) grow: usize,
    /// What the completions taken since the queue last looked brought.
    reaped: Reaped,
}

/// What the completions taken from the ring brought.
#[derive(Default)]
pub(super) struct Reaped {
    pub(super) requests: usize,
    /// Entries whose command failed: they take no more requests.
    pub(super) lost: usize,
    /// The first such failure.
    error: Option<Errno>,
    /// The connection is over.
    pub(super) ended: bool,
}

impl Token {
    pub(super) fn new(ring: Ring, qid: u16) -> Self {
        Token {
            ring,
            qid,
            table: Vec::new(),
            bound: Vec::new(),
            log: Vec::new(),
            requests: 0,
            enters: 0,
            batch: VecDeque::new(),
            unsubmitted: Vec::new(),
            grow: 0,
            reaped: Reaped::default(),
        }
    }

    /// A token with `n` entries that were never registered, on a ring
    /// that was never used (for the queue's state-machine tests).
    #[cfg(test)]
    pub(super) fn for_test(n: usize) -> Box<Self> {
        let ring = IoUring::builder().build(8).expect("an io_uring");
        let mut t = Box::new(Token::new(ring, 0));
        for idx in 0..n {
            t.table.push(Some(Entry::new(4096, idx).expect("an entry")));
            t.bound.push(0);
        }
        t
    }

    /// As if requests had come in entries `idx` (for the tests).
    #[cfg(test)]
    pub(super) fn took_for_test(&mut self, idx: &[usize]) {
        self.batch.extend(idx);
        self.reaped.requests += idx.len();
    }

    pub(super) fn ring_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }

    /// Whether requests wait: in the batch, or completed on the ring.
    pub(super) fn has_work(&mut self) -> bool {
        !self.batch.is_empty() || !self.ring.completion().is_empty()
    }

    /// How many completions the next wait needs: none while requests are
    /// left in the batch (a leader that took the queue over answers them
    /// first), one otherwise.
    pub(super) fn want(&self) -> usize {
        usize::from(self.batch.is_empty())
    }

    /// Registers a new entry of `payload` bytes (pushed, submitted by the
    /// next submission).
    pub(super) fn add_entry(&mut self, payload: usize, me: u64) -> std::io::Result<()> {
        let idx = self.table.len();
        let mut entry = Entry::new(payload, idx)?;
        // SAFETY: the entry goes into `table` below and stays with this
        // queue (in the table, with a handler, or in `pending`) until the
        // queue stops; one with a command outstanding is dropped only with
        // the token, after the ring (the field order above).
        let sqe = unsafe { entry.register_sqe(self.qid) };
        self.table.push(Some(entry));
        self.bound.push(0);
        self.push(&sqe, idx, me)
    }

    /// Pushes the commit of request `commit_id`, answered in `entry`.
    pub(super) fn commit(&mut self, entry: Entry, commit_id: u64, me: u64) {
        let idx = entry.idx;
        let sqe = entry.commit_sqe(commit_id, self.qid);
        self.table[idx] = Some(entry);
        if let Err(e) = self.push(&sqe, idx, me) {
            // Only when the kernel refuses a submission outright.
            tracing::error!("ring queue {}: a reply could not be submitted: {e}", self.qid);
        }
    }

    /// Pushes `sqe` (for entry `idx`), submitting what is pushed first if
    /// the submission queue is full.
    fn push(&mut self, sqe: &squeue::Entry128, idx: usize, me: u64) -> std::io::Result<()> {
        loop {
            // SAFETY: a commit carries no pointer; a registration points at
            // its entry's iovecs, which live in `table` until after the
            // ring is closed (see `add_entry`).
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                self.unsubmitted.push(idx);
                return Ok(());
            }
            self.submit(me)?;
        }
    }

    /// Submits what is pushed, without waiting.
    pub(super) fn submit(&mut self, me: u64) -> std::io::Result<()> {
        self.enter(0, me)
    }

    /// Submits what is pushed and waits for `want` completions. The
    /// commands submitted are bound to `me` (their requests will be
    /// written by its task work).
    pub(super) fn enter(&mut self, want: usize, me: u64) -> std::io::Result<()> {
        let n = loop {
            self.enters += 1;
            match self.ring.submit_and_wait(want) {
                Ok(n) => break n,
                // Interrupted before it submitted anything (it returns the
                // count of what it submitted otherwise).
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => break 0,
                // Completions overflowed the completion queue and must be
                // taken before anything more is submitted.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => self.reap(),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => std::thread::yield_now(),
                Err(e) => return Err(e),
            }
        };
        for idx in self.unsubmitted.drain(..n.min(self.unsubmitted.len())) {
            let was = std::mem::replace(&mut self.bound[idx], me);
            if was != 0 {
                // Not expected: an entry has one command at a time.
                self.log.push((was, false));
            }
            self.log.push((me, true));
        }
        Ok(())
    }

    /// The connection is over (or the ring failed): the queue stops when
    /// it next looks.
    pub(super) fn mark_ended(&mut self) {
        self.reaped.ended = true;
    }

    /// The first failure the completions taken so far brought, if any
    /// entry was lost or the connection ended.
    pub(super) fn failure(&self) -> Option<Errno> {
        let r = &self.reaped;
        (r.lost > 0 || r.ended).then(|| r.error.unwrap_or(Errno::NOTCONN))
    }

    /// What the completions taken since the last call brought.
    pub(super) fn take_reaped(&mut self) -> Reaped {
        std::mem::take(&mut self.reaped)
    }

    /// Takes every completion: requests go to the batch, and what they
    /// brought to [`take_reaped`](Self::take_reaped).
    pub(super) fn reap(&mut self) {
        let Token { ring, qid, table, bound, log, batch, reaped: r, .. } = self;
        let before = r.requests;
        for cqe in ring.completion() {
            let data = cqe.user_data();
            if data == wake::WAKE {
                continue;
            }
            let idx = data as usize;
            if let Some(b) = bound.get_mut(idx) {
                match std::mem::take(b) {
                    0 => {}
                    id => log.push((id, false)),
                }
            }
            if table.get(idx).is_none_or(Option::is_none) {
                tracing::error!("ring queue {qid}: a completion for entry {idx}, which is not in the table");
                continue;
            }
            match cqe.result() {
                0 => {
                    batch.push_back(idx);
                    r.requests += 1;
                }
                res => {
                    let e = Errno::from_raw_os_error(-res);
                    r.error.get_or_insert(e);
                    if matches!(e, Errno::NOTCONN | Errno::CONNABORTED | Errno::NODEV) {
                        // The connection is over: the kernel tore the entries down.
                        r.ended = true;
                    } else {
                        tracing::error!("ring queue {qid}: entry {idx} failed: {e}");
                        r.lost += 1;
                    }
                    // No command is outstanding: the memory may go.
                    table[idx] = None;
                }
            }
        }
        self.requests += (self.reaped.requests - before) as u64;
    }
}
