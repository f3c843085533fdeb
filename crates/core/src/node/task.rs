//! One async operation of an open file: its future, the memory the future
//! borrows, and its one completion (see [`crate::afops`]).
//!
//! A task is made inside the node's and the file's gates, polled once
//! there, on the transport's thread; if it is pending it is put on the
//! file's list of pending tasks (still inside the gates, so a removal's
//! sweep, which runs after the drain, finds it), and from then on each
//! wake-up queues it for an executor thread ([`crate::exec`]), which polls
//! it inside both gates again. It ends exactly once, through its
//! [`TaskCell`]: completed by a poll, or cancelled by the sweep of a
//! removal or a release, or by the request's interrupt.

use super::{Node, OpenState};
use crate::afops::AsyncCtx;
use crate::epoch::HandlerScope;
use crate::errno::{Errno, KResult};
use crate::exec::{self, Runnable};
use crate::fops::{Caller, FileOperations};
use devlife_gate::sync::lock;
use devlife_gate::{BoxFuture, CancelSource, TaskCell, Wake};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};

static NEXT_TASK: AtomicU64 = AtomicU64::new(1);

/// How an operation began: done already, or pending.
#[derive(Debug)]
#[must_use]
pub enum Started<T: Send + 'static> {
    /// It completed in its first poll (or never needed one).
    Done(KResult<T>),
    /// It waits; its result comes through the handle.
    Pending(Pending<T>),
}

/// A pending operation's result, to come: the transport hands it the
/// reply to send ([`on_complete`](Self::on_complete)). Dropping the handle
/// without that cancels the operation.
#[must_use = "dropping a pending operation cancels it"]
pub struct Pending<T: Send + 'static> {
    task: Option<Arc<dyn End<T>>>,
}

impl<T: Send + 'static> Pending<T> {
    /// Calls `done` with the result, once: when the operation completes,
    /// from the thread that completes it (an executor thread, a remover,
    /// an interrupter), or now if it has already. `done` should only send
    /// the reply: it must not block.
    pub fn on_complete(mut self, done: impl FnOnce(KResult<T>) + Send + 'static) {
        if let Some(t) = self.task.take() {
            t.on_complete(Box::new(done));
        }
    }
}

impl<T: Send + 'static> Drop for Pending<T> {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.cancel(Errno::EINTR);
        }
    }
}

impl<T: Send + 'static> std::fmt::Debug for Pending<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

type Sink<T> = Box<dyn FnOnce(KResult<T>) + Send>;

/// A task's end, as its [`Pending`] handle and the file's list see it.
pub(super) trait End<T>: Cancel {
    fn on_complete(&self, sink: Sink<T>);
}

/// A pending task, as the file's list holds it: the sweep cancels it.
pub(super) trait Cancel: Send + Sync {
    /// Ends the task with `e` if it has not ended (its future dropped
    /// before this returns).
    fn cancel(&self, e: Errno) {
        if self.drop_future() {
            self.fail(e);
        }
    }

    /// Drops the future if the task has not ended (waiting for a poll in
    /// progress); returns `true` if this call ended it, when the caller
    /// owes it [`fail`](Self::fail).
    fn drop_future(&self) -> bool;

    /// Completes a task whose future [`drop_future`](Self::drop_future)
    /// dropped: its caller gets `e`.
    fn fail(&self, e: Errno);
}

/// The completions a sweep owes, sent by an executor thread: a removal
/// returns once every future is dropped, without waiting for thousands of
/// replies (and the wake-ups of their callers) to go out.
pub(super) struct Answers {
    pub(super) tasks: Mutex<Vec<Arc<dyn Cancel>>>,
    pub(super) errno: Errno,
}

impl Runnable for Answers {
    fn run(self: Arc<Self>) {
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for t in tasks {
            t.fail(self.errno);
        }
    }
}

/// Where a task's result meets its reply.
struct Completion<T> {
    result: Option<KResult<T>>,
    sink: Option<Sink<T>>,
}

/// Memory a task's future borrows, freed only after the future.
///
/// # Invariants
///
/// Allocated by `Box::into_raw` in [`start`] and freed only in `Drop`;
/// between the two it is reached only through the `&mut` given to the
/// future, which its [`TaskCell`] drops before the task (and so this) is
/// dropped (`Task`'s field order).
struct FrameBox<Fr>(NonNull<Fr>);

// SAFETY: the frame is reached only by the future, which is `Send`, and
// freed by the task's drop (type invariants); `Fr: Send`.
unsafe impl<Fr: Send> Send for FrameBox<Fr> {}
// SAFETY: nothing reaches the frame through a shared `FrameBox` (type
// invariants).
unsafe impl<Fr: Send> Sync for FrameBox<Fr> {}

impl<Fr> Drop for FrameBox<Fr> {
    fn drop(&mut self) {
        // SAFETY: from `Box::into_raw`, freed once, here, after the future
        // that borrowed it (type invariants).
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

/// One async operation of file `state` of `node`.
pub(super) struct Task<F: FileOperations, T: Send + 'static, Fr: Send + 'static> {
    id: u64,
    what: &'static str,
    node: Arc<Node<F>>,
    state: Arc<OpenState<F>>,
    queued: AtomicBool,
    interrupt: Option<Arc<CancelSource>>,
    done: Mutex<Completion<T>>,
    /// Before `frame`: the future is dropped before the memory it borrows.
    cell: TaskCell<KResult<T>>,
    /// Held for its `Drop`, which frees the frame after `cell`.
    _frame: FrameBox<Fr>,
}

/// Starts operation `what` on file `state` of `node` as a task: builds
/// `frame` (the memory the future borrows: its context first), makes the
/// future with `make` and polls it once, here, inside both gates.
pub(super) fn start<F, T, Fr>(
    node: &Arc<Node<F>>,
    state: &Arc<OpenState<F>>,
    caller: &Caller<'_>,
    what: &'static str,
    frame: impl FnOnce(AsyncCtx) -> Fr,
    make: impl FnOnce(&'static F, &'static F::File, &'static mut Fr) -> BoxFuture<KResult<T>>,
) -> Started<T>
where
    F: FileOperations,
    T: Send + 'static,
    Fr: Send + 'static,
{
    let Ok(ops) = node.enter(node.kind.op_after_removal()) else {
        return Started::Done(Err(node.kind.op_after_removal()));
    };
    let Some(file) = state.private.try_access() else { return Started::Done(Err(Errno::EBADF)) };
    let _scope = HandlerScope::enter(node.binding.as_deref(), &node.stats, &node.name);
    let cx = AsyncCtx::new(
        caller,
        node.kind,
        node.ops.gate().cancel_source(),
        file.guard().gate().cancel_source(),
    );
    let interrupt = cx.interrupt.clone();
    let fr = NonNull::from(Box::leak(Box::new(frame(cx))));
    // SAFETY: the future may borrow the operations object, the per-open
    // state and the frame for as long as it lives, because it lives no
    // longer than they: it is owned by the task's cell alone (no driver
    // code holds it), polled only inside both gates, and dropped, by a
    // completion or a cancel, before the file's release takes the
    // per-open state out of its gate and before the node's removal takes
    // the operations out of theirs (both sweep the file's pending tasks
    // after their drain and before their take: `Node::finish_removal`,
    // `Node::release`); the frame is freed after the cell (`FrameBox`).
    // The object and the state stay allocated meanwhile: the task holds
    // their `Arc`s.
    let fut = unsafe {
        let ops: &'static F = &*std::ptr::from_ref::<F>(&ops);
        let file: &'static F::File = &*std::ptr::from_ref::<F::File>(&file);
        make(ops, file, &mut *fr.as_ptr())
    };
    let task = Arc::new(Task {
        id: NEXT_TASK.fetch_add(1, Ordering::Relaxed),
        what,
        node: node.clone(),
        state: state.clone(),
        queued: AtomicBool::new(false),
        interrupt,
        done: Mutex::new(Completion { result: None, sink: None }),
        cell: TaskCell::new(fut),
        _frame: FrameBox(fr),
    });
    // Inside the gates already (`ops`, `file`).
    match task.poll_once(|| Some(())) {
        Some(Poll::Ready(r)) => return Started::Done(r),
        Some(Poll::Pending) => {}
        None => return Started::Done(Err(Errno::EIO)),
    }
    // Listed while inside the gates: a sweep (after the drain) finds it.
    lock(&state.pending).insert(task.id, task.clone());
    // Woken and completed by an executor thread between the poll and the
    // listing: it found nothing to take off the list.
    if task.cell.is_ended() {
        lock(&state.pending).remove(&task.id);
    }
    drop(file);
    drop(ops);
    let interrupt = task.interrupt.clone();
    let cancel: Arc<dyn Cancel> = task.clone();
    cancel_on_interrupt(&cancel, interrupt.as_ref());
    Started::Pending(Pending { task: Some(task) })
}

impl<F: FileOperations, T: Send + 'static, Fr: Send + 'static> Task<F, T, Fr> {
    /// Polls the future once, inside what `enter` returns.
    fn poll_once<G>(self: &Arc<Self>, enter: impl FnOnce() -> Option<G>) -> Option<Poll<KResult<T>>> {
        let waker = Waker::from(self.clone());
        let mut cx = Context::from_waker(&waker);
        let (name, stats, what) = (&self.node.name, &self.node.stats, self.what);
        self.cell.poll_with(enter, |fut| {
            exec::in_context(|| crate::panic::catch_poll(name, stats, what, fut, &mut cx))
        })
    }

    /// The task has ended with `r`: the reply gets it, now or when it is
    /// handed over; the task leaves the file's list.
    fn complete(&self, r: KResult<T>) {
        let now = {
            let mut c = lock(&self.done);
            match c.sink.take() {
                Some(sink) => Some((sink, r)),
                None => {
                    c.result = Some(r);
                    None
                }
            }
        };
        lock(&self.state.pending).remove(&self.id);
        // Outside every lock: the reply is a write to the transport.
        if let Some((sink, r)) = now {
            sink(r);
        }
    }
}

impl<F: FileOperations, T: Send + 'static, Fr: Send + 'static> Runnable for Task<F, T, Fr> {
    fn run(self: Arc<Self>) {
        // Cleared before the poll: a wake-up during it queues it again.
        self.queued.store(false, Ordering::SeqCst);
        let node = &self.node;
        let r = self.poll_once(|| {
            // Refused once the removal or the release began: its sweep
            // ends the task.
            let ops = node.ops.enter()?;
            let file = self.state.private.try_access()?;
            Some((ops, file, HandlerScope::enter(node.binding.as_deref(), &node.stats, &node.name)))
        });
        if let Some(Poll::Ready(r)) = r {
            self.complete(r);
        }
    }
}

impl<F: FileOperations, T: Send + 'static, Fr: Send + 'static> std::task::Wake for Task<F, T, Fr> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::SeqCst) && !self.cell.is_ended() {
            exec::schedule(self.clone());
        }
    }
}

impl<F: FileOperations, T: Send + 'static, Fr: Send + 'static> Cancel for Task<F, T, Fr> {
    fn drop_future(&self) -> bool {
        self.cell.cancel()
    }

    fn fail(&self, e: Errno) {
        self.complete(Err(e));
    }
}

impl<F: FileOperations, T: Send + 'static, Fr: Send + 'static> End<T> for Task<F, T, Fr> {
    fn on_complete(&self, sink: Sink<T>) {
        let now = {
            let mut c = lock(&self.done);
            match c.result.take() {
                Some(r) => Some((sink, r)),
                None => {
                    c.sink = Some(sink);
                    None
                }
            }
        };
        if let Some((sink, r)) = now {
            sink(r);
        }
    }
}

/// Cancels a task when its request's interrupt fires.
struct InterruptTask(Weak<dyn Cancel>);

impl Wake for InterruptTask {
    fn wake(&self) {
        if let Some(t) = self.0.upgrade() {
            t.cancel(Errno::EINTR);
        }
    }
}

/// Subscribes `task` to its request's interrupt: the interrupt drops its
/// future and answers `EINTR` (at once if it fired already).
pub(super) fn cancel_on_interrupt(task: &Arc<dyn Cancel>, interrupt: Option<&Arc<CancelSource>>) {
    let Some(src) = interrupt else { return };
    let w: Arc<dyn Wake> = Arc::new(InterruptTask(Arc::downgrade(task)));
    if !src.subscribe(&w) {
        task.cancel(Errno::EINTR);
    }
}
