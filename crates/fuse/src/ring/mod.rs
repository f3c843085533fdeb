//! FUSE over io_uring: one request queue per CPU, each served by one
//! thread at a time that handles requests inline and commits their replies
//! together, handing the queue to another thread when a handler sleeps.
//!
//! # Why io_uring
//!
//! Through `/dev/fuse` every request of a connection goes through one
//! queue, and the kernel wakes whichever worker has waited longest, on
//! whichever CPU the scheduler picks for it; the caller is then woken on
//! yet another. On a VM, waking a CPU that is idle costs tens of
//! microseconds, so where the threads land decides the round trip (10 µs
//! with client and server on one CPU, 56 µs across two, on the 2-vCPU
//! machine of `docs/BENCHMARKS.md`) more than any code on the path. With
//! FUSE over io_uring (Linux 6.14) the kernel queues a request on the queue
//! of the CPU its caller runs on (`fuse_uring_task_to_queue`) and hands it
//! to the entry that became available last. The queue's threads are pinned
//! to that CPU: no round trip wakes another CPU.
//!
//! # Entries, and the thread a request is written by
//!
//! An entry is a header buffer and a payload buffer registered with
//! `FUSE_IO_URING_CMD_REGISTER` ([`entry`]). The kernel hands a request to
//! an available entry, writes it into the entry's buffers and completes
//! the entry's command; the server writes the reply there and sends
//! `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`, which ends the request and makes
//! the entry available again, or at once gives it the next request waiting
//! in the kernel's queue (`fuse_uring_next_fuse_req`), within the same
//! `io_uring_enter`.
//!
//! The request is written by task work (`fuse_uring_send_in_task`) of the
//! thread that *submitted the entry's command*, whatever thread waits on
//! the ring. Each queue has one ring, without `IORING_SETUP_DEFER_TASKRUN`
//! or `SINGLE_ISSUER` (any thread may submit on it; the kernel runs the task
//! work when that thread next leaves the kernel or wakes from an
//! interruptible sleep, which the task work interrupts), so an entry is
//! *bound* to the thread that last submitted its command until the command
//! completes. A thread exits only with no entry bound to it ([`queue`]'s
//! invariants): the kernel would cancel the command, and a request just
//! handed to that entry would never be answered. The kernel's ordinary
//! task work costs more per request than `DEFER_TASKRUN`'s (about 10% of
//! the floor's rate with one client thread, `docs/BENCHMARKS.md`): the
//! price of a ring that more than one thread may lead.
//!
//! # Leading, handing off, following
//!
//! One thread at a time *leads* a queue ([`thread`]): it waits in
//! `io_uring_enter` for requests, handles every request the wait brought,
//! one after another, on its own stack, and pushes each reply's
//! `COMMIT_AND_FETCH`; its next `io_uring_enter` submits them all and waits
//! again. Requests that arrive while it handles one wait in the kernel's
//! queue (when no entry is available) or in the ring's completion queue
//! (when one is), and are taken without a wake-up: several replies per
//! system call, and no context switch while a CPU's clients keep it busy.
//! libfuse's io_uring mode runs the same way, but its handlers never sleep
//! long. A device handler may sleep for as long as the device takes, and
//! must not stop the requests behind it (the one that would wake it, a
//! removal), so the leader hands the queue on:
//!
//! * when its handler is about to sleep in a cancellable wait (the gate's
//!   `wait_event`, a `CancellableMutex`): the request's interrupt source
//!   runs a probe before its first sleep ([`OnSleep`](crate::inflight::OnSleep));
//! * when its handler has run for a while without returning or sleeping so
//!   (a driver busy, or asleep some other way): the [`monitor`] thread takes
//!   the queue over, as Go's runtime hands a processor on from a goroutine
//!   stuck in a system call.
//!
//! Handing on wakes an idle thread of the queue (a *follower*), or starts
//! one; it leads from there, with the requests of the batch not yet
//! handled and the replies not yet submitted. The old leader finishes its
//! handler, then leaves its reply to the leader ([`wake`] reaches a leader
//! waiting on the ring) and follows, or leads again if nobody does. There
//! is no cap on threads (`max_workers` is unlimited by default): blocked
//! handlers never stop a queue, however many there are. A queue keeps a
//! few idle followers; more exit, once no entry is bound to them.
//!
//! A handler that sleeps *uninterruptibly* (a page fault on slow storage,
//! a request to a FUSE file system) while entries are bound to its thread
//! delays the requests the kernel hands to those entries until it wakes:
//! the task work that writes them is that thread's. A handler must
//! therefore not wait for a request to the mount it serves, as a kernel
//! driver's file operation must not wait on its own device.
//!
//! # Growing
//!
//! A queue starts with [`INITIAL_ENTRIES`](thread::INITIAL_ENTRIES). When a
//! handler sleeps or runs long while every entry holds a request and no
//! request waits for the next leader to answer, the queue would take no
//! new request until one of those handlers returns (the readers waiting
//! for the write queued behind them): the next leader registers another
//! entry. A deferred request ([`crate::defer`]: an async handler's
//! pending future) holds its entry too, without a thread: its reply is
//! written into the entry and committed by the leader ([`parked`]); when
//! every entry is held the leader registers a quarter more (at most 256
//! at a time), so thousands of waiting requests cost entries and a few
//! dozen kicks. Entries are memory, kept until the connection ends (the
//! kernel has no command that withdraws one, and cannot take an entry
//! back while a request is on it); an entry the kernel has not written a
//! request into is not resident, and one that has is its header page and
//! the payload pages the request and reply touched.
//!
//! # Kicks
//!
//! A new entry serves only requests that arrive after it: requests already
//! waiting for an entry are handed out only by a commit on their queue
//! (`fuse_uring_next_fuse_req`), and while every handler of the queue
//! sleeps (or defers) there is none. So a queue that grew has a thread
//! ([`kick`]) send one `STATFS` from that CPU per entry added, one after
//! another: each takes a new entry, and the commit of its reply fetches a
//! waiting request. Each growth's kicks are sent by a short-lived thread
//! of its own: a kick may itself arrive when every entry of its queue is
//! taken and wait for the next one, and a single sending thread blocked in
//! it would hold back the kicks of the growth that frees it.
//!
//! # Scheduling
//!
//! The queue's threads are `SCHED_BATCH`: a caller's request wakes the
//! leader on the caller's own CPU, and a normal thread woken there
//! preempts the caller before it has gone to sleep waiting for the answer.
//! The caller then waits runnable on a busy CPU while the request is
//! handled, and the other CPU, idle, pulls it over; the answer then wakes
//! it across CPUs. A `SCHED_BATCH` thread never preempts at wake-up
//! (`check_preempt_wakeup_fair`), so the caller runs on to its sleep and
//! the leader takes the CPU from there.
//!
//! # What stays on `/dev/fuse`
//!
//! Interrupts and forgets (`fuse_dev_queue_interrupt`, `..._forget`), and
//! notifications, so the `/dev/fuse` workers keep running. That transport
//! cannot batch: one `read(2)` takes one request, one `write(2)` sends one
//! reply.
//!
//! # Interrupts the kernel drops
//!
//! A caller's signal becomes a `FUSE_INTERRUPT` only if its request was
//! already sent (`FR_SENT`, in `request_wait_answer`). Reading `/dev/fuse`,
//! the kernel sets `FR_SENT` and then checks `FR_INTERRUPTED` and sends the
//! interrupt itself (`fuse_dev_do_read`); handing a request to a ring entry
//! (`fuse_uring_prepare_send`) sets `FR_SENT` without that check, so a
//! signal that lands while a request is on its way to a ring is lost, and
//! the caller sleeps uninterruptibly until the request ends (a blocked
//! read until data comes; `devlife`'s interrupt test loses one in a few
//! hundred). Such a signal stays pending on the caller's thread as long as
//! it waits, so the server asks: a ring request's interrupt source carries
//! a probe ([`signal_pending`](crate::signal::signal_pending)) that the handler's first sleep runs. Only
//! requests that sleep pay for it, once.

mod entry;
mod kick;
mod monitor;
mod parked;
mod queue;
mod thread;
mod token;
mod wake;

use crate::abi::uring;
use crate::fs::Filesystem;
use crate::session::{RingCounters, Shared};
use crossbeam_utils::CachePadded;
use devlife_gate::sync::lock;
use queue::Queue;
use std::sync::Arc;
use std::sync::mpsc::channel;
use std::time::Duration;

/// How long `start` waits for the first registrations.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts every queue's first thread and waits for its entries. Returns
/// the number of queues.
///
/// # Errors
///
/// When an entry cannot be registered (the kernel refused io_uring, or a
/// ring could not be set up); requests then keep coming through
/// `/dev/fuse`.
pub(crate) fn start<F: Filesystem>(s: &Arc<Shared<F>>) -> std::io::Result<usize> {
    let cpus = possible_cpus()?;
    let allowed = rustix::thread::sched_getaffinity(None).ok();
    let n = s.negotiated;
    let payload = uring::MIN_READ_BUFFER
        .max(n.max_write as usize)
        .max(usize::from(n.max_pages) * rustix::param::page_size());
    let (kick_tx, kick_rx) = channel();
    let queues: Vec<Arc<Queue>> = (0..cpus)
        .map(|q| {
            let cpu = allowed.as_ref().is_none_or(|a| a.is_set(q)).then_some(q);
            let counters = Arc::new(CachePadded::new(RingCounters::default()));
            lock(&s.stats.ring_queues).push(counters.clone());
            Arc::new(Queue::new(q as u16, cpu, payload, s.config.max_workers, kick_tx.clone(), counters))
        })
        .collect();
    {
        let q = queues.clone();
        s.spawn("fuse-kicker", move |s| kick::kicker(s, &q, kick_rx));
        let q = queues.clone();
        s.spawn("fuse-ring-monitor", move |s| monitor::run(s, &q));
        let q = queues.clone();
        s.on_end(move || {
            for q in &q {
                q.stop();
            }
            let _ = kick_tx.send((kick::END, 0));
        });
    }
    let (reg_tx, reg_rx) = channel();
    let mut expected = 0;
    for q in &queues {
        if thread::start_first(s, q, reg_tx.clone()) {
            expected += 1;
        }
    }
    drop(reg_tx);
    for _ in 0..expected {
        match reg_rx.recv_timeout(REGISTER_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(std::io::Error::other("ring queues did not register in time")),
        }
    }
    if expected < cpus {
        return Err(std::io::Error::other("could not start every ring queue"));
    }
    Ok(cpus)
}

/// The number of possible CPUs: the kernel makes one queue for each
/// (`num_possible_cpus()`), indexed by CPU number.
fn possible_cpus() -> std::io::Result<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let mut n = 0;
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let bad = || std::io::Error::other(format!("cannot parse possible CPUs {text:?}"));
        let (a, b): (usize, usize) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        n += b.checked_sub(a).ok_or_else(bad)? + 1;
    }
    if n == 0 {
        return Err(std::io::Error::other("no possible CPUs"));
    }
    Ok(n)
}

/// Makes the calling thread one of `q`'s servers: pinned to its CPU (if it
/// may run there) and `SCHED_BATCH` (see "Scheduling").
fn serve_on(q: &Queue) {
    pin(q);
    let param = libc::sched_param { sched_priority: 0 };
    // Threads a handler starts (a driver's kthread) are normal again.
    let policy = libc::SCHED_BATCH | libc::SCHED_RESET_ON_FORK;
    // SAFETY: `sched_setscheduler` reads the `sched_param` it is given, a
    // live local; pid 0 is the calling thread. Nothing else is touched.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } != 0 {
        tracing::debug!(
            "ring queue {}: cannot make a worker SCHED_BATCH: {}",
            q.qid,
            std::io::Error::last_os_error()
        );
    }
}

/// Moves the calling thread to `q`'s CPU, if it may run there.
fn pin(q: &Queue) {
    if let Some(cpu) = q.cpu {
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu);
        if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
            tracing::debug!("ring queue {}: cannot pin to CPU {cpu}: {e}", q.qid);
        }
    }
}
