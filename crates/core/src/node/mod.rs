//! The gated object behind every character device, debugfs file and
//! attribute: open-file tracking, exactly-once release, and the removal
//! rundown.
//!
//! A node owns the driver's [`FileOperations`] object inside a
//! [`Revocable`]: every handler runs inside its gate. Removal is, in order:
//!
//! 1. kill the gate: no new open or operation starts, and every cancellable
//!    wait made through it wakes and fails (`ENODEV`/`EIO`);
//! 2. wake every poller (they see `POLLHUP`);
//! 3. drain: wait until every running handler has returned;
//! 4. release every file still open, calling the driver's `release` once per
//!    open (as procfs's `proc_entry_rundown` does), detaching the list under
//!    the lock and releasing outside it;
//! 5. drop the operations object, and with it what it borrowed from the host.
//!
//! After that, no driver code of the node runs again: a later close finds the
//! node removed and calls nothing.
//!
//! # Ungated nodes
//!
//! A node of an ungated [`System`](crate::System) (made for measuring what
//! the guarantee costs) runs handlers without entering its gate: an
//! operation only checks, unsynchronised, that the node was not removed
//! (as drivers check a `dev->alive` flag). Its removal refuses new opens
//! and operations and wakes sleeping handlers, then returns at once, as
//! Linux's `cdev_del` does: it does not wait for handlers still running,
//! open files are released at their close, and the operations object
//! lives until the node is dropped (every open file holds the node), so
//! what it borrowed from the host outlives the binding. Each open file
//! keeps its own gate, which orders its release after the operations
//! running on it, as the kernel's file reference count does.

mod aops;
mod file;
mod noderef;
mod ops;
mod task;

pub(crate) use aops::AsyncOps;
pub use aops::{IoctlCall, IoctlDone};
pub use file::File;
pub(crate) use noderef::NodeDyn;
pub use noderef::NodeRef;
pub use task::{Pending, Started};

use crate::epoch::{Epoch, HandlerScope};
use crate::errno::{Errno, NodeKind};
use crate::fops::{Caller, FileOperations, KResult, OpCtx, PollMask, PollTable};
use crate::percpu::PerCpu;
use crate::stats::Stats;
use devlife_gate::sync::{lock, wait};
use devlife_gate::{Revocable, Wake};
use ops::{Entered, Ops};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// The next block of open-file ids to hand out.
static NEXT_FILE_IDS: AtomicU64 = AtomicU64::new(1);

/// Open-file ids a thread takes from [`NEXT_FILE_IDS`] at a time.
const FILE_ID_BLOCK: u64 = 1024;

thread_local! {
    /// This thread's open-file ids not yet handed out: `next..end`.
    static FILE_IDS: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// A fresh open-file id: unique in the process (it keys a file's entries
/// in wait queues that several nodes share), never 0. Taken from a block
/// of this thread's, so that opens on different CPUs do not write one
/// counter.
fn next_file_id() -> u64 {
    FILE_IDS
        .try_with(|ids| {
            let (mut next, mut end) = ids.get();
            if next == end {
                next = NEXT_FILE_IDS.fetch_add(FILE_ID_BLOCK, Ordering::Relaxed);
                end = next + FILE_ID_BLOCK;
            }
            ids.set((next + 1, end));
            next
        })
        // A thread being torn down: one id from the shared counter.
        .unwrap_or_else(|_| NEXT_FILE_IDS.fetch_add(1, Ordering::Relaxed))
}

/// The files open on a node that were opened on one CPU, by id.
type FileList<F> = Mutex<BTreeMap<u64, Arc<OpenState<F>>>>;

/// A removal still waiting for handlers after this long logs a warning.
const SLOW_REMOVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// A gated object with file operations `F`.
///
/// Aligned to a cache line pair: the reference counts an `Arc` keeps
/// before the node (written by every open and close, from every CPU) then
/// share no line with the fields every handler call reads.
#[repr(align(128))]
pub(crate) struct Node<F: FileOperations> {
    /// The node's identity ([`NodeRef::id`]).
    id: u64,
    ops: Ops<F>,
    kind: NodeKind,
    name: String,
    /// The driver binding the node belongs to, if any: for detecting a
    /// removal requested from inside one of its own handlers, and a handler
    /// starting after its binding's removal returned.
    binding: Option<Arc<Epoch>>,
    /// The open files, each in the list of the CPU that opened it: an
    /// open and its close mostly lock a list and touch a map that stay in
    /// that CPU's cache.
    files: PerCpu<FileList<F>>,
    /// Whether any file of the node was ever polled with a waker: a
    /// removal's early wake-up of pollers skips walking the open files
    /// when none was (10,000 open files take half a millisecond to walk).
    /// The rundown wakes every poller again, so a wake-up missed for a
    /// poller that registered as the flag was read is not lost.
    polled: AtomicBool,
    stats: Arc<Stats>,
    /// The driver's async operations, if it was registered with them.
    asyncs: Option<AsyncOps<F>>,
    removal: Mutex<Removal>,
    removed: Condvar,
}

/// Progress of a node's removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Removal {
    Live,
    Started,
    Done,
}

/// One successful open.
struct OpenState<F: FileOperations> {
    id: u64,
    /// The slot of `Node::files` that lists it.
    slot: usize,
    /// The per-open state; taken (revoked) by exactly one release.
    private: Revocable<F::File>,
    /// The last poller of this file, woken when the node is removed.
    poller: Mutex<Option<Arc<dyn Wake>>>,
    /// The file's pending async operations, by task id.
    pending: Mutex<BTreeMap<u64, Arc<dyn task::Cancel>>>,
}

/// How a removal ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Removed {
    /// Every handler has returned and every open file was released.
    Complete,
    /// Requested from inside one of the node's own handlers: new entries are
    /// refused already; a worker thread completes the removal once that
    /// handler returns (FreeBSD's `destroy_dev_sched`).
    Deferred,
}

impl<F: FileOperations> Node<F> {
    pub(crate) fn new(
        ops: F,
        kind: NodeKind,
        name: String,
        binding: Option<Arc<Epoch>>,
        stats: Arc<Stats>,
        gated: bool,
        asyncs: Option<AsyncOps<F>>,
    ) -> Arc<Self> {
        Arc::new(Node {
            id: crate::id::next(),
            ops: Ops::new(ops, gated),
            kind,
            name,
            // An ungated node's handlers may run after its binding ended:
            // that is the point of it, not a violation to count.
            binding: if gated { binding } else { None },
            files: PerCpu::default(),
            polled: AtomicBool::new(false),
            stats,
            asyncs,
            removal: Mutex::new(Removal::Live),
            removed: Condvar::new(),
        })
    }

    /// The operations, entered for one handler call (see [`Entered`]).
    #[inline]
    fn enter(&self, after_removal: Errno) -> KResult<Entered<'_, F>> {
        self.ops.enter().ok_or(after_removal)
    }

    fn open(self: &Arc<Self>, caller: &Caller<'_>) -> KResult<File> {
        let ops = self.enter(self.kind.open_after_removal())?;
        let _scope = HandlerScope::enter(self.binding.as_deref(), &self.stats, &self.name);
        let cx = OpCtx::new(*caller, self.kind, self.ops.gate().cancel_source(), None);
        let private = self.catch("open", || ops.open(&cx))?;
        let slot = self.files.index();
        let state = Arc::new(OpenState {
            id: next_file_id(),
            slot,
            // Revoked at every close: a shared counter (no per-thread slot to
            // allocate, scan and free), no IPI on revoke. Never revoked from
            // inside its own guard: the release and the rundown run outside
            // every handler of the file.
            private: Revocable::new_shared(private),
            poller: Mutex::new(None),
            pending: Mutex::new(BTreeMap::new()),
        });
        // Inserted while still inside the gate: a removal's rundown (which
        // drains first) is guaranteed to find this file.
        lock(self.files.get(slot)).insert(state.id, state.clone());
        self.stats.opened();
        drop(ops);
        Ok(File::new(self.clone(), state))
    }

    /// Runs `f` on the open file `st`, inside the node's and the file's gates.
    fn call<R>(
        &self,
        st: &OpenState<F>,
        caller: &Caller<'_>,
        what: &str,
        f: impl FnOnce(&F, &F::File, &OpCtx<'_>) -> KResult<R>,
    ) -> KResult<R> {
        let ops = self.enter(self.kind.op_after_removal())?;
        // Released already: only a transport that releases a file while one
        // of its requests is still running can get here.
        let file = st.private.try_access().ok_or(Errno::EBADF)?;
        let _scope = HandlerScope::enter(self.binding.as_deref(), &self.stats, &self.name);
        let cx = OpCtx::new(
            *caller,
            self.kind,
            self.ops.gate().cancel_source(),
            Some(file.guard().gate().cancel_source()),
        );
        self.catch(what, || f(&ops, &file, &cx))
    }

    /// Runs a handler, turning a panic into `EIO` (see [`crate::panic`]).
    fn catch<R>(&self, what: &str, f: impl FnOnce() -> KResult<R>) -> KResult<R> {
        crate::panic::catch(&self.name, &self.stats, what, f)
    }

    fn poll(&self, st: &OpenState<F>, caller: &Caller<'_>, waker: Option<&Arc<dyn Wake>>) -> PollMask {
        if let Some(w) = waker {
            // Registered before entering: a removal that starts after this
            // wakes it (it wakes pollers after killing and after draining).
            if !self.polled.load(Ordering::Relaxed) {
                self.polled.store(true, Ordering::Relaxed);
            }
            *lock(&st.poller) = Some(w.clone());
        }
        let r = self.call(st, caller, "poll", |ops, file, cx| {
            Ok(ops.poll(file, cx, &PollTable { key: st.id, waker }))
        });
        r.unwrap_or_else(|_| self.kind.poll_after_removal())
    }

    fn flush(&self, st: &OpenState<F>, caller: &Caller<'_>) -> KResult<()> {
        let Some(flush) = F::FLUSH else { return Ok(()) };
        match self.call(st, caller, "flush", flush) {
            // Flush after removal succeeds: there is nothing left to flush.
            Err(e) if e == self.kind.op_after_removal() && self.ops.gate().is_killed() => Ok(()),
            r => r,
        }
    }

    /// The last close of `st`.
    fn release(&self, st: &OpenState<F>) {
        // Gated: removed (or being removed), the rundown releases the file.
        let Some(ops) = self.ops.enter_for_release() else { return };
        let _scope = HandlerScope::enter(self.binding.as_deref(), &self.stats, &self.name);
        // Waits for requests still running on this file (a transport may
        // release while an interrupted request finishes); their cancellable
        // waits fail at once. Pending futures are dropped after the drain
        // (no poll runs) and before the take (they borrow the state).
        let mut ended = Vec::new();
        if let (_, Some(private)) = st.private.revoke_take_with(|| self.sweep(st, &mut ended)) {
            let _ = self.catch("release", || {
                ops.release(private);
                Ok(())
            });
            self.stats.released();
        }
        lock(self.files.get(st.slot)).remove(&st.id);
        self.answer(ended);
    }

    /// Drops the future of every pending async operation of `st` (see
    /// [`crate::afops`]), each before this returns; adds the tasks whose
    /// callers are owed the removal code to `ended`. Detached under the
    /// lock, dropped outside it.
    fn sweep(&self, st: &OpenState<F>, ended: &mut Vec<Arc<dyn task::Cancel>>) {
        let pending = std::mem::take(&mut *lock(&st.pending));
        ended.extend(pending.into_values().filter(|t| t.drop_future()));
    }

    /// Sends `ended`'s callers the removal code from an executor thread:
    /// the removal (or release) that swept them returns without waiting
    /// for the replies and the wake-ups of their callers. Called once a
    /// sweep is over, so the answers do not compete with it for a CPU.
    fn answer(&self, ended: Vec<Arc<dyn task::Cancel>>) {
        if !ended.is_empty() {
            let answers = task::Answers { tasks: Mutex::new(ended), errno: self.kind.op_after_removal() };
            crate::exec::schedule(Arc::new(answers));
        }
    }

    /// The files open now, every CPU's list in turn.
    fn open_files(&self) -> Vec<Arc<OpenState<F>>> {
        let mut files = Vec::new();
        for list in self.files.iter() {
            files.extend(lock(list).values().cloned());
        }
        files
    }

    fn wake_pollers(&self) {
        if !self.polled.load(Ordering::Relaxed) {
            return;
        }
        let pollers: Vec<_> = self.open_files().iter().filter_map(|st| lock(&st.poller).clone()).collect();
        for p in pollers {
            p.wake();
        }
    }

    /// Removes the node: see the module documentation. Returns once the
    /// removal is complete, also when another thread started it.
    pub(crate) fn remove(self: &Arc<Self>) -> Removed {
        let first = {
            let mut r = lock(&self.removal);
            let first = *r == Removal::Live;
            if first {
                *r = Removal::Started;
            }
            first
        };
        self.ops.gate().kill();
        self.wake_pollers();
        let Ops::Gated(ops) = &self.ops else {
            // See "Ungated nodes": no drain, no rundown, and `ops` stays;
            // pending futures end now (each cancel waits for a poll in
            // progress), as the waits of blocking handlers are woken.
            let files = self.open_files();
            let mut ended = Vec::new();
            for st in &files {
                self.sweep(st, &mut ended);
            }
            *lock(&self.removal) = Removal::Done;
            self.removed.notify_all();
            self.answer(ended);
            return Removed::Complete;
        };
        if ops.gate().held_by_current_thread() {
            if first {
                let me = self.clone();
                std::thread::Builder::new()
                    .name(format!("devlife-remove:{}", self.name))
                    .spawn(move || {
                        if let Ops::Gated(ops) = &me.ops {
                            me.finish_removal(ops)
                        }
                    })
                    .map_err(|e| tracing::error!(node = %self.name, "cannot spawn the deferred removal: {e}"))
                    .ok();
            }
            return Removed::Deferred;
        }
        if first {
            self.finish_removal(ops);
        } else {
            self.wait_removed();
        }
        Removed::Complete
    }

    /// Blocks until the removal has completed (every handler returned,
    /// every open file released); at once if it has.
    fn wait_removed(&self) {
        let mut r = lock(&self.removal);
        while *r != Removal::Done {
            r = wait(&self.removed, r);
        }
    }

    /// The rest of a gated node's removal, after the kill: `ops` is its
    /// operations.
    fn finish_removal(&self, ops: &Revocable<F>) {
        // A removal held up by handlers that neither return nor sleep
        // cancellably says so, once, then goes on waiting.
        if let Err(devlife_gate::DrainError::TimedOut(stuck)) = ops.gate().drain_timeout(SLOW_REMOVAL) {
            tracing::warn!(
                node = %self.name,
                waited = ?SLOW_REMOVAL,
                %stuck,
                "removal waits for handlers still running (not in a cancellable wait)"
            );
        }
        // Drains; then, with every handler and every poll returned, the
        // pending futures are dropped, before the operations they borrow.
        let mut ended = Vec::new();
        let take_files = || -> Vec<_> {
            self.files.iter().flat_map(|list| std::mem::take(&mut *lock(list)).into_values()).collect()
        };
        let mut swept = None;
        let (_, ops) = ops.revoke_take_with(|| {
            let files = take_files();
            for st in &files {
                self.sweep(st, &mut ended);
            }
            swept = Some(files);
        });
        // `None`: not drained by this thread (see `revoke_take_with`), so
        // nothing was taken and no sweep ran.
        let files = swept.unwrap_or_else(take_files);
        if let Some(ops) = ops {
            // No handler runs now, but a transport may still be inside a
            // file's own gate (a release waiting for an interrupted request);
            // one heavy barrier kills all of them (linear in open files).
            let privates = Revocable::revoke_take_many(files.iter().map(|st| &st.private));
            for (st, private) in files.iter().zip(privates) {
                if let Some(private) = private {
                    let _ = self.catch("release", || {
                        ops.release(private);
                        Ok(())
                    });
                    self.stats.released();
                }
                if let Some(p) = lock(&st.poller).take() {
                    p.wake();
                }
            }
            let _ = self.catch("drop", || {
                drop(ops);
                Ok(())
            });
        }
        *lock(&self.removal) = Removal::Done;
        self.removed.notify_all();
        self.answer(ended);
    }
}
