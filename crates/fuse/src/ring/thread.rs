//! A queue's thread: it leads (waits on the ring, handles what it brings
//! inline, commits the replies together), follows (waits to be handed the
//! queue), or finishes a request it began as leader after handing the
//! queue on.

use super::entry::{Entry, Handled};
use super::parked::Parked;
use super::queue::{Finish, Need, Queue, Step};
use super::token::{Ring, Token, next_thread_id};
use crate::defer::Target;
use crate::dispatch::Context;
use crate::fs::Filesystem;
use crate::session::Shared;
use io_uring::IoUring;
use rustix::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;

/// Entries each queue starts with. A request that finds none available
/// waits in the kernel's queue for the next commit, which takes it in the
/// same `io_uring_enter`; entries beyond the requests a CPU has in flight
/// at once only cost memory. libfuse's default queue depth.
pub(super) const INITIAL_ENTRIES: usize = 8;

/// Submission queue size: commits pushed between two submissions (a
/// batch's replies and the replies left to the leader); more are submitted
/// early.
const SQ_ENTRIES: u32 = 64;

/// Completion queue size: requests taken in one wait; completions beyond
/// it wait in the kernel's overflow list (`IORING_FEAT_NODROP`), not lost.
const CQ_ENTRIES: u32 = 4096;

/// How a leader stopped leading.
enum Led {
    /// Its handler slept or ran long and another thread took the queue; it
    /// holds the reply it wrote (entry, commit id).
    Handed(Entry, u64),
    /// It lost the lead while a handler ran and has no reply to finish
    /// (the handler deferred it).
    Lost,
    Stopped,
}

/// Starts the first thread of `q`: it makes the queue's ring, registers
/// its first entries and leads. `registered` learns whether the kernel
/// took them.
pub(super) fn start_first<F: Filesystem>(
    s: &Arc<Shared<F>>,
    q: &Arc<Queue>,
    registered: Sender<std::io::Result<()>>,
) -> bool {
    let q2 = q.clone();
    s.spawn(&format!("fuse-ring-{}", q.qid), move |s| {
        super::serve_on(&q2);
        let me = next_thread_id();
        match setup(s, &q2, me) {
            Ok(token) => {
                q2.install(token, INITIAL_ENTRIES, me);
                let _ = registered.send(Ok(()));
                run(s, &q2, me, true);
            }
            Err(e) => {
                let _ = registered.send(Err(e));
            }
        }
    })
}

/// Starts a thread of `q` that follows (see [`Need::Thread`]).
pub(super) fn spawn<F: Filesystem>(s: &Arc<Shared<F>>, q: &Arc<Queue>) {
    let q2 = q.clone();
    s.stats.ring_threads_started.fetch_add(1, Ordering::Relaxed);
    let started = s.spawn(&format!("fuse-ring-{}", q.qid), move |s| {
        super::serve_on(&q2);
        q2.arrive();
        run(s, &q2, next_thread_id(), false);
    });
    if !started {
        q.spawn_failed();
    }
}

/// The queue's ring, with `/dev/fuse` registered and the first entries
/// registered and submitted (by `me`).
fn setup<F: Filesystem>(s: &Arc<Shared<F>>, q: &Queue, me: u64) -> std::io::Result<Box<Token>> {
    // A plain ring: any thread may submit on it (the leader changes), and
    // the kernel writes a request through the task work of the thread that
    // submitted the entry's command, woken for it even from a sleep in a
    // handler (`IORING_SETUP_DEFER_TASKRUN` would run it only inside that
    // thread's `io_uring_enter`, and `SINGLE_ISSUER` would tie the ring to
    // one thread).
    let ring: Ring = IoUring::builder().setup_cqsize(CQ_ENTRIES).build(SQ_ENTRIES)?;
    // Commands name `/dev/fuse` as fixed file `DEV_FUSE`.
    ring.submitter().register_files(&[s.master.as_raw_fd()])?;
    let mut t = Box::new(Token::new(ring, q.qid));
    for _ in 0..INITIAL_ENTRIES {
        t.add_entry(q.payload, me)?;
    }
    t.submit(me)?;
    // A registration the kernel refuses completes at once, with the
    // error; an accepted one completes only with a request (which may
    // come at once: it stays in the batch).
    t.reap();
    if let Some(e) = t.failure() {
        return Err(std::io::Error::other(format!("registering a ring entry: {e}")));
    }
    Ok(t)
}

/// The thread's life: lead while it can, follow otherwise, until the
/// queue stops or the thread may retire.
fn run<F: Filesystem>(s: &Arc<Shared<F>>, q: &Arc<Queue>, me: u64, leading: bool) {
    s.stats.ring_workers.fetch_add(1, Ordering::Relaxed);
    let cx = context(s, q, me);
    let mut out = Vec::new();
    let mut step = (leading || q.follow(me)).then(|| q.resume(me));
    while let Some(first) = step {
        step = match lead(s, q, me, &cx, &mut out, first) {
            Led::Stopped => None,
            Led::Lost => q.follow(me).then(|| q.resume(me)),
            Led::Handed(entry, commit_id) => match q.finish(me, entry, commit_id) {
                Finish::Lead(next) => Some(next),
                Finish::Follow => q.follow(me).then(|| q.resume(me)),
                Finish::Stopped => None,
            },
        };
    }
    q.leave();
    s.stats.ring_workers.fetch_sub(1, Ordering::Relaxed);
}

/// The context this thread handles requests in: one whose handlers, about
/// to sleep, first hand the queue to another thread if this one leads.
fn context<'a, F: Filesystem>(s: &'a Arc<Shared<F>>, q: &Arc<Queue>, me: u64) -> Context<'a, F> {
    let (weak, q) = (Arc::downgrade(s), q.clone());
    s.context().with_on_sleep(Arc::new(move || {
        let Some(need) = q.hand_off(me) else { return };
        let Some(s) = weak.upgrade() else {
            if need == Need::Thread {
                q.spawn_failed();
            }
            return;
        };
        s.stats.ring_handoffs.fetch_add(1, Ordering::Relaxed);
        if need == Need::Thread {
            spawn(&s, &q);
        }
    }))
}

/// Leads the queue from `step`: handles the batch's requests one after
/// another, pushing each reply; waits on the ring (submitting the replies
/// pushed since) for more; until it no longer leads or the queue stops.
fn lead<F: Filesystem>(
    s: &Arc<Shared<F>>,
    q: &Arc<Queue>,
    me: u64,
    cx: &Context<'_, F>,
    out: &mut Vec<u8>,
    mut step: Step,
) -> Led {
    loop {
        step = match step {
            Step::Next(mut entry) => match entry.handle(cx, out) {
                Handled::Commit(commit_id) => q.commit_next(me, entry, commit_id),
                Handled::Deferred(commit_id, d) => {
                    // The entry waits for the reply; this thread goes on.
                    d.set_target(Target::Ring(Box::new(Parked { entry, commit_id, queue: q.clone() })));
                    q.defer_next(me)
                }
            },
            Step::Wait(mut t, added) => {
                if added > 0 {
                    // The new entries must be registered before the kick's
                    // request is sent (see "Kicks").
                    match t.submit(me) {
                        Ok(()) => {
                            let _ = q.kicks.send((q.qid, added));
                        }
                        Err(e) => tracing::error!("ring queue {}: registering entries: {e}", q.qid),
                    }
                }
                match t.enter(t.want(), me) {
                    Ok(()) => t.reap(),
                    Err(e) => {
                        tracing::error!("ring queue {}: io_uring_enter: {e}", q.qid);
                        t.mark_ended();
                    }
                }
                if s.is_ended() {
                    t.mark_ended();
                }
                q.enter_end(t, me)
            }
            Step::Handed(entry, commit_id) => return Led::Handed(entry, commit_id),
            Step::Lost => return Led::Lost,
            Step::Stopped(token) => {
                drop(token);
                return Led::Stopped;
            }
        };
    }
}
