//! The executor that polls pending async handlers ([`crate::afops`]): a
//! run queue and a few threads, and the poll context a runtime such as
//! tokio needs.
//!
//! # Why devlife's own
//!
//! A future here is not a free-standing task: each is tied to an object's
//! gate and must be dropped by whoever removes the object, synchronously,
//! before the object's data goes (see "The removal guarantee, for
//! futures"). The general-purpose executors do it the other way: with
//! `async-task` (smol's) a cancelled task's future is dropped by the
//! executor thread that next runs it, and tokio's `JoinHandle::abort`
//! likewise drops it later, on a worker; waiting for that from a remover
//! would make every removal depend on an executor thread being free. What
//! remains is small: a queue of woken tasks and the threads that poll them
//! (`std::task::Wake` makes the wakers), so devlife keeps it here, with
//! the part that carries the guarantee ([`TaskCell`](devlife_gate::TaskCell))
//! in the gate, model-checked.
//!
//! # Threads
//!
//! One, started at the first wake-up, and more (one per CPU, at most
//! [`MAX_THREADS`]) only when a task is queued while every executor thread
//! is busy polling; they are kept. A poll must not block: it runs on one of these, and blocking it
//! holds up every other pending future behind it. The first poll of every
//! future runs on the transport's thread instead, where a handler that
//! completes at once costs no hand-over.
//!
//! # Runtimes
//!
//! A future that awaits a tokio resource (a timer, a socket) needs tokio's
//! context around each poll: [`set_poll_context`] installs one (with the
//! `tokio` feature, a `tokio::runtime::Handle` is one). Channels, and any
//! runtime-independent future, need nothing.

use devlife_gate::sync::{lock, wait};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, OnceLock};

/// The most executor threads.
pub const MAX_THREADS: usize = 4;

/// A task the executor can run: polls it once.
pub(crate) trait Runnable: Send + Sync {
    fn run(self: Arc<Self>);
}

/// What wraps every poll of an async handler: a runtime's context.
///
/// # Examples
///
/// ```
/// use devlife_core::exec::{PollContext, set_poll_context};
/// struct Traced;
/// impl PollContext for Traced {
///     fn enter(&self, poll: &mut dyn FnMut()) {
///         let _span = tracing::trace_span!("async handler").entered();
///         poll()
///     }
/// }
/// assert!(set_poll_context(Traced).is_ok());
/// ```
pub trait PollContext: Send + Sync + 'static {
    /// Runs `poll` inside the context.
    fn enter(&self, poll: &mut dyn FnMut());
}

/// A tokio runtime's context: a handler's future may await tokio's timers
/// and I/O.
#[cfg(feature = "tokio")]
impl PollContext for tokio::runtime::Handle {
    fn enter(&self, poll: &mut dyn FnMut()) {
        let _g = self.enter();
        poll()
    }
}

static CONTEXT: OnceLock<Box<dyn PollContext>> = OnceLock::new();

/// Installs the context every poll of an async handler runs in, once per
/// process (before the first request, as a runtime is chosen at start).
///
/// # Errors
///
/// Gives `cx` back if a context was installed already.
pub fn set_poll_context<C: PollContext>(cx: C) -> Result<(), C> {
    let mut cx = Some(cx);
    let _ = CONTEXT.get_or_init(|| Box::new(cx.take().expect("taken once")));
    match cx {
        None => Ok(()),
        Some(cx) => Err(cx),
    }
}

/// Runs `poll` in the installed context, if any.
#[inline]
pub(crate) fn in_context<R>(poll: impl FnOnce() -> R) -> R {
    match CONTEXT.get() {
        None => poll(),
        Some(cx) => {
            let mut poll = Some(poll);
            let mut out = None;
            cx.enter(&mut || {
                if let Some(p) = poll.take() {
                    out = Some(p());
                }
            });
            // A context that did not run the poll is a broken context;
            // run it outside rather than lose it.
            match out {
                Some(r) => r,
                None => poll.map(|p| p()).unwrap_or_else(|| unreachable!("ran once")),
            }
        }
    }
}

#[derive(Default)]
struct Queue {
    tasks: VecDeque<Arc<dyn Runnable>>,
    /// Executor threads started, and those waiting for a task.
    threads: usize,
    idle: usize,
}

struct RunQueue {
    queue: Mutex<Queue>,
    more: Condvar,
    max: usize,
}

static RUN_QUEUE: OnceLock<Arc<RunQueue>> = OnceLock::new();

fn run_queue() -> &'static Arc<RunQueue> {
    RUN_QUEUE.get_or_init(|| {
        let max = std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_THREADS);
        Arc::new(RunQueue { queue: Mutex::new(Queue::default()), more: Condvar::new(), max })
    })
}

/// Starts executor thread number `i`.
fn start(rq: &Arc<RunQueue>, i: usize) -> bool {
    let rq = rq.clone();
    let r = std::thread::Builder::new().name(format!("devlife-async-{i}")).spawn(move || worker(&rq));
    if let Err(e) = &r {
        // Another thread runs the queue; with none, the pending handlers
        // wait for their removal (which drops them).
        tracing::error!("cannot start executor thread {i}: {e}");
    }
    r.is_ok()
}

fn worker(rq: &RunQueue) {
    loop {
        let task = {
            let mut q = lock(&rq.queue);
            loop {
                if let Some(t) = q.tasks.pop_front() {
                    break t;
                }
                q.idle += 1;
                q = wait(&rq.more, q);
                q.idle -= 1;
            }
        };
        task.run();
    }
}

/// Queues `task` to be run by an executor thread.
pub(crate) fn schedule(task: Arc<dyn Runnable>) {
    let rq = run_queue();
    let start_one = {
        let mut q = lock(&rq.queue);
        q.tasks.push_back(task);
        // Every thread busy (or none yet): one more, up to the limit.
        let more = q.idle == 0 && q.threads < rq.max;
        if more {
            q.threads += 1;
        }
        more.then_some(q.threads - 1)
    };
    rq.more.notify_one();
    if let Some(i) = start_one {
        if !start(rq, i) {
            lock(&rq.queue).threads -= 1;
        }
    }
}

/// Woken tasks not yet run (a snapshot, for statistics).
pub fn queued() -> usize {
    RUN_QUEUE.get().map_or(0, |rq| lock(&rq.queue).tasks.len())
}
