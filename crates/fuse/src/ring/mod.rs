//! FUSE over io_uring: one request queue per CPU, served by workers pinned
//! to that CPU.
//!
//! # Why
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
//! to the entry that became available last. A worker pinned to that CPU
//! takes it without a cross-CPU wake-up, and the caller sleeps and wakes on
//! its own CPU.
//!
//! # Workers and entries
//!
//! A worker is a thread pinned to its queue's CPU, with a ring of its own
//! and one entry (a header buffer and a payload buffer, registered with
//! `FUSE_IO_URING_CMD_REGISTER`). It waits for a request, handles it to the
//! end (blocking if the handler blocks), and answers with
//! `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`, which also makes its entry
//! available again.
//!
//! # Scheduling
//!
//! Workers are `SCHED_BATCH`: a caller's request wakes its queue's worker on
//! the caller's own CPU, and a normal thread woken there preempts the
//! caller before it has gone to sleep waiting for the answer. The caller
//! then waits runnable on a busy CPU while the request is handled, and the
//! other CPU, idle, pulls it over; the answer then wakes it across CPUs,
//! on a CPU that must first leave its idle state. A `SCHED_BATCH` thread
//! never preempts at wake-up (`check_preempt_wakeup_fair`), so the caller
//! runs on to its sleep and the worker takes the CPU from there; the
//! worker is otherwise scheduled as any other thread. Measured on the
//! 2-vCPU machine of `docs/BENCHMARKS.md`, one client thread of ioctls:
//! client migrations from 32,551 to 8,190 in 1.5 s, and the rate from
//! 109,734 to 127,671 ops/s (both under `perf stat`). The caller can still
//! be moved when the answer wakes it (`docs/BENCHMARKS.md`, "What
//! open-close still loses"); `SCHED_IDLE` would stop that too, but lets
//! any busy thread on the CPU starve the worker.
//!
//! # Growing
//!
//! A queue starts with one worker. Requests that arrive while it handles
//! one wait in the kernel's queue, and its commit takes the next of them
//! in the same `io_uring_enter` (`fuse_uring_next_fuse_req`): no wake-up,
//! no context switch, as a server that handles its entries inline gets.
//! That holds the waiting requests up only while the handler runs on the
//! CPU they would run on anyway, so the queue grows (a worker registered,
//! then kicked: see "Kicks") only when a handler would hold them up
//! longer, and only if the queue has no spare entry:
//!
//! * when a handler is about to sleep in a cancellable wait (the gate's
//!   `wait_event`, a `CancellableMutex`): the request's interrupt source
//!   runs a probe before its first sleep, and the ring's probe grows the
//!   queue first ([`OnSleep`](crate::dispatch::OnSleep));
//! * when a handler has run for [`LONG_HANDLER`] without returning or
//!   sleeping so (a driver busy, or asleep some other way): the monitor
//!   thread, which looks every [`MONITOR_BUSY`] while requests flow,
//!   grows the queue once for that request, as Go's runtime hands a
//!   processor on when a goroutine has been in a system call too long.
//!
//! There is no cap (`max_workers` is unlimited by default): blocked
//! handlers never stop a queue, however many there are, and the requests
//! that would free them (a removal, a write) always find a worker.
//! Measured by `devlife bench fs`: at 4 client threads on 2 CPUs, server
//! context switches per request went from 1.00 (a worker woken for each
//! request) to the figures in `docs/BENCHMARKS.md`.
//!
//! # Retiring workers: the keeper
//!
//! The kernel has no command that withdraws an entry, and a worker cannot
//! leave while its entry is available: closing its ring could race a
//! request being handed to the entry, which nobody would then answer (on
//! Linux 6.18 the request stays with the entry, its caller waiting until
//! the connection ends). But a worker that has just handled a request holds
//! an entry the kernel has handed out: it may pass the reply to another
//! ring to commit, and the kernel (which finds the entry by the request's
//! unique id) binds the entry to that ring. So each queue has a *keeper*
//! ([`keeper`]), a thread with a ring of its own that never runs a
//! handler: a worker that finishes a request while enough other workers of
//! its queue are idle hands its entry and reply to the keeper and exits,
//! with no command outstanding on its ring. The keeper commits the reply;
//! the entry stays registered, available on the keeper's ring. A request
//! the kernel later hands to one of the keeper's entries goes to a new
//! thread (the keeper must not block), which handles it and commits it on a
//! ring of its own, becoming a worker. Entries are memory; only threads
//! are given back. After a flood of blocked readers, the queue's threads
//! fall back to the busy ones plus [`IDLE_KEEP`] idle.
//!
//! The kernel hands a request to the entry made available last, so an
//! idle worker deep in that stack may wait a long time for a request; it
//! counts as idle, but not as *recently* idle, which is what the decision
//! to retire counts (otherwise a worker would hand its entry to the keeper
//! after every request and the queue's hot path would pay a thread start).
//!
//! # Kicks
//!
//! A new entry serves only requests that arrive after it: requests already
//! waiting for an entry are handed out only by a commit on their queue
//! (`fuse_uring_next_fuse_req`). A request that arrived in the instant
//! between the last idle worker of its queue taking a request and the new
//! worker registering would wait for the queue's next reply; forever, if
//! every worker of the queue blocks waiting for it (readers waiting for the
//! write that is queued behind them). So a worker started to grow a queue,
//! once registered, has the kicker thread send one `STATFS` from that CPU:
//! the worker answering it commits, and with that fetches the waiting
//! request. Each kick is sent by a short-lived thread of its own: a kick
//! may itself arrive when every entry of its queue is taken and wait for
//! the next one, and a single sending thread blocked in it would hold back
//! the kick of that next entry (a deadlock the served-tree test with more
//! blocked readers than workers ran into).
//!
//! # What stays on `/dev/fuse`
//!
//! Interrupts and forgets (`fuse_dev_queue_interrupt`, `..._forget`), and
//! notifications, so the `/dev/fuse` workers keep running.
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
//! a probe ([`signal_pending`]) that the handler's first sleep runs. Only
//! requests that sleep pay for it, once.

mod clock;
mod keeper;

use crate::abi::uring::{self, CmdReq, ReqHeader};
use crate::buf::PageBuf;
use crate::decode::decode_ring;
use crate::dispatch::{Context, Via, decode_errno, process};
use crate::fs::Filesystem;
use crate::session::Shared;
use io_uring::{IoUring, cqueue, opcode, squeue, types};
use rustix::fd::AsRawFd;
use rustix::io::Errno;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use zerocopy::{FromBytes, IntoBytes};

/// Workers each queue starts with: one, so that requests arriving while it
/// handles one wait in the kernel's queue and are handed to it by its own
/// commit, in the same `io_uring_enter`, without a wake-up or a context
/// switch (the workers of a queue share one CPU: a second one running
/// beside the first gains nothing). The queue grows only when a handler
/// would hold the others up (see "Growing").
const INITIAL_WORKERS: usize = 1;

/// Idle workers a queue keeps: a worker that finishes a request while this
/// many others have been idle recently retires (see "Retiring workers").
/// Twice the concurrency a busy CPU commonly sees (a client's request, the
/// `RELEASE` behind its `close(2)`, another process's request): with
/// fewer, a queue at that concurrency retired a worker and re-adopted its
/// entry over and over, a thread start each time (open-close at 4 client
/// threads: 42 threads started in 5 s, 0.36x the rate of the same load
/// at 8).
const IDLE_KEEP: usize = 8;

/// How long a handler may run before its queue grows, if it neither
/// sleeps (which grows the queue at once) nor returns: a driver busy
/// without a cancellable wait.
const LONG_HANDLER: Duration = Duration::from_millis(2);

/// How often the monitor looks for long handlers while the transport is
/// busy, and while it is idle.
const MONITOR_BUSY: Duration = Duration::from_millis(1);
const MONITOR_IDLE: Duration = Duration::from_millis(20);

/// How recently a worker must have begun waiting to count as recently idle.
const RECENTLY_IDLE: Duration = Duration::from_millis(50);

/// How long `start` waits for the first registrations.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);

/// `struct iovec`, as `FUSE_IO_URING_CMD_REGISTER` reads two of them at
/// the SQE's `addr`.
#[repr(C)]
struct Iovec {
    base: *mut u8,
    len: usize,
}
const _: () = assert!(std::mem::size_of::<Iovec>() == 16);

/// One CPU's queue.
struct Queue {
    qid: u16,
    /// The CPU its workers are pinned to, if this process may run there.
    cpu: Option<usize>,
    /// Entries that take a request without a new registration: idle
    /// workers' and the keeper's. The take that leaves none grows the queue.
    spare: AtomicUsize,
    /// Worker threads (with a ring and an entry).
    workers: AtomicUsize,
    /// Each worker's [`Slot`]: when it began its current wait (for the
    /// decision to retire) and its current request (for the monitor).
    waiting: Mutex<Vec<Arc<Slot>>>,
    /// Workers marked waiting in `waiting` (from the decision to stay to
    /// the end of their wait).
    marked: AtomicUsize,
    /// The transport's coarse clock (one for every queue).
    clock: Arc<clock::Clock>,
    keeper: keeper::Keeper,
}

impl Queue {
    /// The coarse time: one load, no `clock_gettime` (see [`clock`]).
    fn now_ms(&self) -> u64 {
        self.clock.now()
    }

    /// Whether a worker that has just handled a request stays, rather than
    /// hand its entry to the keeper and exit: it stays unless at least
    /// [`IDLE_KEEP`] other workers began waiting within [`RECENTLY_IDLE`].
    /// A worker that stays is marked waiting under the same lock, so that
    /// workers finishing together do not all stay.
    fn stays(&self, me: &WaitSlot) -> bool {
        if self.marked.load(Ordering::Relaxed) < IDLE_KEEP || !self.keeper.is_running() {
            me.mark(self.now_ms());
            return true;
        }
        let now = self.now_ms();
        let recent = RECENTLY_IDLE.as_millis() as u64;
        let waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let others = waiting
            .iter()
            .filter(|w| !Arc::ptr_eq(w, &me.slot))
            .map(|w| w.waiting.load(Ordering::Relaxed))
            .filter(|&t| t != 0 && now.saturating_sub(t) < recent)
            .count();
        if others >= IDLE_KEEP {
            return false;
        }
        me.mark(now);
        true
    }

    /// A record of this worker's waits, until it is dropped.
    fn wait_slot(self: &Arc<Self>) -> WaitSlot {
        let slot = Arc::new(Slot::default());
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner).push(slot.clone());
        WaitSlot { q: self.clone(), slot }
    }
}

/// What one worker is doing, in the ms of the transport's [`clock`].
#[derive(Default)]
struct Slot {
    /// When it began its current wait; 0 while it is not waiting.
    waiting: AtomicU64,
    /// When it began handling its current request; 0 while it handles
    /// none, or once the monitor has grown the queue for it.
    running: AtomicU64,
}

/// A worker's entry in [`Queue::waiting`].
struct WaitSlot {
    q: Arc<Queue>,
    slot: Arc<Slot>,
}

impl WaitSlot {
    /// Marks the worker waiting since `now` (kept if it already is).
    fn mark(&self, now: u64) {
        if self.slot.waiting.swap(now, Ordering::Relaxed) == 0 {
            self.q.marked.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether the worker is marked waiting.
    fn is_marked(&self) -> bool {
        self.slot.waiting.load(Ordering::Relaxed) != 0
    }

    /// The worker's wait is over.
    fn unmark(&self) {
        if self.slot.waiting.swap(0, Ordering::Relaxed) != 0 {
            self.q.marked.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for WaitSlot {
    fn drop(&mut self) {
        self.unmark();
        self.q.waiting.lock().unwrap_or_else(PoisonError::into_inner).retain(|s| !Arc::ptr_eq(s, &self.slot));
    }
}

/// The transport's state shared by its workers.
struct Rings {
    payload: usize,
    kicks: Sender<u16>,
}

/// Starts every queue's workers and waits for their entries. Returns the
/// number of queues.
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
    let rings = Arc::new(Rings { payload, kicks: kick_tx });
    let clock = Arc::new(clock::Clock::new());
    let queues: Vec<Arc<Queue>> = (0..cpus)
        .map(|q| {
            let cpu = allowed.as_ref().is_none_or(|a| a.is_set(q)).then_some(q);
            Ok(Arc::new(Queue {
                qid: q as u16,
                cpu,
                spare: AtomicUsize::new(0),
                workers: AtomicUsize::new(0),
                waiting: Mutex::default(),
                marked: AtomicUsize::new(0),
                clock: clock.clone(),
                keeper: keeper::Keeper::new()?,
            }))
        })
        .collect::<std::io::Result<_>>()?;
    {
        let q = queues.clone();
        s.spawn("fuse-kicker", move |s| kicker(s, &q, kick_rx));
        let (q, r) = (queues.clone(), rings.clone());
        s.spawn("fuse-ring-monitor", move |s| monitor(s, &r, &q, &clock));
    }
    for q in &queues {
        keeper::start(s, &rings, q);
    }
    let (reg_tx, reg_rx) = channel();
    let mut expected = 0;
    for q in &queues {
        for _ in 0..INITIAL_WORKERS {
            if spawn_worker(s, &rings, q, Some(reg_tx.clone()), false) {
                expected += 1;
            }
        }
    }
    drop(reg_tx);
    for _ in 0..expected {
        match reg_rx.recv_timeout(REGISTER_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(std::io::Error::other("ring workers did not register in time")),
        }
    }
    if expected < cpus * INITIAL_WORKERS {
        return Err(std::io::Error::other("could not start every ring worker"));
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

/// Starts a worker for `q`, unless the queue is at `max_workers`.
/// `registered` learns whether its entry registered; `kick` asks for a
/// kick once it has.
fn spawn_worker<F: Filesystem>(
    s: &Arc<Shared<F>>,
    rings: &Arc<Rings>,
    q: &Arc<Queue>,
    registered: Option<Sender<std::io::Result<()>>>,
    kick: bool,
) -> bool {
    if q.workers.fetch_add(1, Ordering::AcqRel) >= s.config.max_workers {
        q.workers.fetch_sub(1, Ordering::AcqRel);
        return false;
    }
    let (rings, q2) = (rings.clone(), q.clone());
    let started = s.spawn(&format!("fuse-ring-{}", q.qid), move |s| {
        s.stats.ring_workers.fetch_add(1, Ordering::Relaxed);
        worker(s, &rings, &q2, registered, kick);
        s.stats.ring_workers.fetch_sub(1, Ordering::Relaxed);
    });
    if !started {
        q.workers.fetch_sub(1, Ordering::AcqRel);
    }
    started
}

/// One entry's memory: the header buffer in the first page, the payload
/// from the second.
///
/// # Invariants
///
/// The kernel reads and writes `mem` only inside `io_uring_enter` calls of
/// the ring the entry is bound to (the one its last `REGISTER` or
/// `COMMIT_AND_FETCH` was submitted on, by the thread that owns it): it
/// writes a request while running that ring's deferred task work (the
/// rings are `DEFER_TASKRUN`, whose task work runs only when its task waits
/// for completions), and reads a reply while issuing its
/// `COMMIT_AND_FETCH`. Between a completion and the next submission the
/// entry's holder has the memory to itself, and may give it to another
/// thread (the keeper, or a thread adopting it). An entry is dropped
/// (unmapped) only after the ring it is bound to.
struct Entry {
    mem: PageBuf,
    payload: usize,
    /// The two iovecs the registration points at; kept for the worker's
    /// life, as the kernel may read them when it issues the command.
    iov: Box<[Iovec; 2]>,
}

// SAFETY: an entry is its own memory (`mem`) and the iovecs pointing into
// it; nothing else refers to them but the kernel, which reaches the memory
// only inside `io_uring_enter` of the ring the entry is bound to (type
// invariants). An entry moves between threads only with a reply written
// and not yet committed (or a request received and not yet handled), when
// the kernel does not touch it; the thread it moves to commits it.
unsafe impl Send for Entry {}

/// The payload's offset in an entry's memory.
const PAYLOAD_AT: usize = 4096;
const _: () = assert!(std::mem::size_of::<ReqHeader>() <= PAYLOAD_AT);

impl Entry {
    fn new(payload: usize) -> std::io::Result<Self> {
        let mut mem = PageBuf::new(PAYLOAD_AT + payload)?;
        let base = mem.as_mut_ptr();
        let iov = Box::new([
            Iovec { base, len: std::mem::size_of::<ReqHeader>() },
            // SAFETY: `PAYLOAD_AT + payload` bytes are mapped from `base`.
            Iovec { base: unsafe { base.add(PAYLOAD_AT) }, len: payload },
        ]);
        Ok(Entry { mem, payload, iov })
    }

    /// The header and the payload, between a completion and the next
    /// submission (see the type's invariants).
    fn parts(&mut self) -> (&mut ReqHeader, &mut [u8]) {
        let (head, payload) = self.mem.as_mut_slice().split_at_mut(PAYLOAD_AT);
        let header = ReqHeader::mut_from_prefix(head)
            .map(|(h, _)| h)
            .unwrap_or_else(|_| unreachable!("a page holds a 288-byte, 8-aligned ReqHeader"));
        (header, &mut payload[..self.payload])
    }
}

/// Sets `sqe->len`, which `opcode::UringCmd80` does not expose and
/// `FUSE_IO_URING_CMD_REGISTER` requires (the number of iovecs at `addr`).
fn set_len(e: &mut squeue::Entry128, len: u32) {
    // `squeue::Entry128` is `#[repr(C)]`: the kernel's 64-byte `struct
    // io_uring_sqe`, then the 64 more bytes of a 128-byte SQE, as the crate
    // copies it into the submission ring; `len` is the `__u32` at byte 24
    // of `io_uring_sqe` (include/uapi/linux/io_uring.h).
    const _: () = assert!(std::mem::size_of::<squeue::Entry128>() == 128);
    let p = (e as *mut squeue::Entry128).cast::<u8>();
    // SAFETY: `e` is an exclusively borrowed, initialised 128-byte value;
    // bytes 24..28 are the SQE's `len` field (no padding), so writing four
    // initialised bytes there, unaligned, leaves it a valid SQE.
    unsafe { p.add(24).cast::<[u8; 4]>().write_unaligned(len.to_ne_bytes()) };
}

fn cmd(commit_id: u64, qid: u16) -> [u8; 80] {
    let mut c = [0u8; 80];
    let req = CmdReq { commit_id, qid, ..Default::default() };
    c[..std::mem::size_of::<CmdReq>()].copy_from_slice(req.as_bytes());
    c
}

type Ring = IoUring<squeue::Entry128, cqueue::Entry>;

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

fn worker<F: Filesystem>(
    s: &Arc<Shared<F>>,
    rings: &Arc<Rings>,
    q: &Arc<Queue>,
    registered: Option<Sender<std::io::Result<()>>>,
    kick: bool,
) {
    serve_on(q);
    // The ring is declared before the entry so that it is dropped first:
    // closing it cancels the registration before the memory is unmapped.
    let setup = || -> std::io::Result<(Ring, Entry)> {
        let mut ring = new_ring()?;
        let mut entry = Entry::new(rings.payload)?;
        let mut sqe = opcode::UringCmd80::new(types::Fd(s.master.as_raw_fd()), uring::CMD_REGISTER)
            .cmd(cmd(0, q.qid))
            .addr(Some(entry.iov.as_mut_ptr() as u64))
            .build();
        set_len(&mut sqe, uring::IOV_SEGS);
        // SAFETY: the command points at `entry.iov` and, through it, at the
        // entry's memory; both are the entry's own, which is dropped only
        // after the ring it is bound to (type invariants), wherever it
        // moves.
        unsafe { ring.submission().push(&sqe) }
            .map_err(|_| std::io::Error::other("submission queue full"))?;
        ring.submit()?;
        // A registration the kernel refuses completes at once, with the
        // error; an accepted one completes only with a request.
        if let Some(cqe) = ring.completion().next() {
            let e = std::io::Error::from_raw_os_error(-cqe.result());
            return Err(std::io::Error::new(e.kind(), format!("registering a ring entry: {e}")));
        }
        Ok((ring, entry))
    };
    let (ring, entry) = match setup() {
        Ok(r) => r,
        Err(e) => {
            q.workers.fetch_sub(1, Ordering::AcqRel);
            match registered {
                Some(tx) => {
                    let _ = tx.send(Err(e));
                }
                None => tracing::error!("ring queue {}: cannot add a worker: {e}", q.qid),
            }
            return;
        }
    };
    if let Some(tx) = registered {
        let _ = tx.send(Ok(()));
    }
    if kick {
        let _ = rings.kicks.send(q.qid);
    }
    let slot = q.wait_slot();
    serve(s, rings, q, ring, entry, slot);
}

/// A new ring for one worker.
fn new_ring() -> std::io::Result<Ring> {
    IoUring::<squeue::Entry128, cqueue::Entry>::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .build(2)
}

/// Handles the request in `entry` and writes its reply there; returns the
/// request's unique id, to commit the reply with.
fn handle<F: Filesystem>(cx: &Context<'_, F>, entry: &mut Entry, out: &mut Vec<u8>) -> u64 {
    let (header, payload) = entry.parts();
    let commit_id = header.ent.commit_id;
    let used = (header.ent.payload_sz as usize).min(payload.len());
    let status = match decode_ring(header, &payload[..used]) {
        Ok(req) => match process(cx, req, Via::Ring, out) {
            Some(Ok(())) if out.len() <= payload.len() => Ok(()),
            Some(Ok(())) => Err(Errno::IO),
            Some(Err(e)) => Err(e),
            // Interrupts and forgets never come through a ring.
            None => Err(Errno::INVAL),
        },
        Err(e) => {
            tracing::warn!("malformed ring request: {e}");
            Err(decode_errno(&e))
        }
    };
    let body = if status.is_ok() { out.len() } else { 0 };
    payload[..body].copy_from_slice(&out[..body]);
    header.ent.payload_sz = body as u32;
    let oh = crate::abi::OutHeader {
        len: (16 + body) as u32,
        error: status.err().map_or(0, |e| -e.raw_os_error()),
        unique: commit_id,
    };
    header.in_out[..16].copy_from_slice(oh.as_bytes());
    commit_id
}

/// Writes an error reply `e` to the request in `entry`, unread; returns its
/// unique id.
fn refuse(entry: &mut Entry, e: Errno) -> u64 {
    let (header, _) = entry.parts();
    let commit_id = header.ent.commit_id;
    header.ent.payload_sz = 0;
    let oh = crate::abi::OutHeader { len: 16, error: -e.raw_os_error(), unique: commit_id };
    header.in_out[..16].copy_from_slice(oh.as_bytes());
    commit_id
}

/// `FUSE_IO_URING_CMD_COMMIT_AND_FETCH` of request `commit_id` on `q`.
fn commit_sqe(fd: types::Fd, commit_id: u64, q: &Queue) -> squeue::Entry128 {
    opcode::UringCmd80::new(fd, uring::CMD_COMMIT_AND_FETCH).cmd(cmd(commit_id, q.qid)).build()
}

/// Counts a request taken from one of `q`'s entries. The queue does not
/// grow here (see "Growing").
fn took<F: Filesystem>(s: &Arc<Shared<F>>, q: &Queue) {
    q.spare.fetch_sub(1, Ordering::AcqRel);
    s.stats.ring_requests.fetch_add(1, Ordering::Relaxed);
}

/// Grows `q` by a worker (registered, then kicked) if it has no spare
/// entry: its handlers are about to hold it up.
fn grow_if_full<F: Filesystem>(s: &Arc<Shared<F>>, rings: &Arc<Rings>, q: &Arc<Queue>) {
    if q.spare.load(Ordering::Acquire) == 0 {
        spawn_worker(s, rings, q, None, true);
    }
}

/// The context a worker of `q` handles requests in: one whose handlers,
/// about to sleep, first grow the queue (see "Growing").
fn worker_context<'a, F: Filesystem>(
    s: &'a Arc<Shared<F>>,
    rings: &Arc<Rings>,
    q: &Arc<Queue>,
) -> Context<'a, F> {
    let (weak, rings, q) = (Arc::downgrade(s), rings.clone(), q.clone());
    s.context().with_on_sleep(Arc::new(move || {
        if let Some(s) = weak.upgrade() {
            grow_if_full(&s, &rings, &q);
        }
    }))
}

/// Grows a queue whose handler has run for [`LONG_HANDLER`] with no spare
/// entry beside it, once per such request; until the session ends. Each
/// look advances the transport's [`clock`].
fn monitor<F: Filesystem>(
    s: &Arc<Shared<F>>,
    rings: &Arc<Rings>,
    queues: &[Arc<Queue>],
    clock: &clock::Clock,
) {
    let mut last = u64::MAX;
    let mut looks = clock::Looks::new();
    while !s.is_ended() {
        let requests = s.stats.ring_requests.load(Ordering::Relaxed);
        let busy = requests != last || queues.iter().any(|q| q.spare.load(Ordering::Relaxed) == 0);
        last = requests;
        std::thread::sleep(if busy { MONITOR_BUSY } else { MONITOR_IDLE });
        let now = looks.look(clock);
        for q in queues {
            if q.spare.load(Ordering::Acquire) != 0 {
                continue;
            }
            let long = LONG_HANDLER.as_millis() as u64;
            // A stamp is the coarse time its handler began at or after:
            // it had begun by the look after that one.
            let stuck = q
                .waiting
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .find(|w| {
                    let t = w.running.load(Ordering::Relaxed);
                    t != 0 && looks.begun_by(t).is_some_and(|b| now.saturating_sub(b) >= long)
                })
                .cloned();
            if let Some(w) = stuck {
                // Once per request: the worker sets it again for its next.
                w.running.store(0, Ordering::Relaxed);
                grow_if_full(s, rings, q);
            }
        }
    }
}

/// A request the kernel handed to one of the keeper's entries: handled on
/// this new thread, then committed on a ring of its own (the thread becomes
/// a worker of the queue), or given back to the keeper if the queue has
/// idle workers enough.
fn adopt<F: Filesystem>(s: &Arc<Shared<F>>, rings: &Arc<Rings>, q: &Arc<Queue>, mut entry: Entry) {
    serve_on(q);
    let cx = worker_context(s, rings, q);
    let mut out = Vec::new();
    let slot = q.wait_slot();
    slot.slot.running.store(q.now_ms(), Ordering::Relaxed);
    let commit_id = handle(&cx, &mut entry, &mut out);
    slot.slot.running.store(0, Ordering::Relaxed);
    if !q.stays(&slot) {
        match q.keeper.retire(entry, commit_id) {
            Ok(()) => return,
            Err(e) => entry = e,
        }
    }
    let mut ring = match new_ring() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(
                "ring queue {}: cannot make a ring for a worker ({e}); the keeper commits",
                q.qid
            );
            if let Err(entry) = q.keeper.retire(entry, commit_id) {
                // Nowhere to commit: the request stays unanswered until the
                // connection ends. Only reachable when no ring can be made.
                tracing::error!("ring queue {}: a reply could not be committed", q.qid);
                drop(entry);
            }
            return;
        }
    };
    let sqe = commit_sqe(types::Fd(s.master.as_raw_fd()), commit_id, q);
    // SAFETY: the command carries no pointer; the entry it commits is
    // registered, and its memory moves into this worker's serve loop.
    if unsafe { ring.submission().push(&sqe) }.is_err() {
        tracing::error!("ring queue {}: submission queue full", q.qid);
        return;
    }
    q.workers.fetch_add(1, Ordering::AcqRel);
    s.stats.ring_workers.fetch_add(1, Ordering::Relaxed);
    serve(s, rings, q, ring, entry, slot);
    s.stats.ring_workers.fetch_sub(1, Ordering::Relaxed);
}

/// The worker's loop: wait for a request, handle it, commit the reply (or
/// hand it to the keeper and return, see "Retiring workers"). A commit
/// already pushed on `ring` is submitted by the first wait.
fn serve<F: Filesystem>(
    s: &Arc<Shared<F>>,
    rings: &Arc<Rings>,
    q: &Arc<Queue>,
    mut ring: Ring,
    mut entry: Entry,
    slot: WaitSlot,
) {
    let cx = worker_context(s, rings, q);
    let fd = types::Fd(s.master.as_raw_fd());
    let mut out = Vec::new();
    loop {
        q.spare.fetch_add(1, Ordering::AcqRel);
        // After a request `stays` has marked it already, with the time.
        if !slot.is_marked() {
            slot.mark(q.now_ms());
        }
        s.stats.ring_enters.fetch_add(1, Ordering::Relaxed);
        let r = ring.submit_and_wait(1);
        slot.unmark();
        let cqe = match r {
            Ok(_) => ring.completion().next(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => None,
            Err(e) => {
                tracing::error!("ring queue {}: io_uring_enter: {e}", q.qid);
                break;
            }
        };
        let Some(cqe) = cqe else {
            // Nothing taken: the entry is still available.
            q.spare.fetch_sub(1, Ordering::AcqRel);
            continue;
        };
        if cqe.result() != 0 {
            let e = Errno::from_raw_os_error(-cqe.result());
            // The connection is over (unmounted, aborted, or torn down).
            if !matches!(e, Errno::NOTCONN | Errno::CANCELED | Errno::CONNABORTED | Errno::NODEV) {
                tracing::error!("ring queue {}: request failed: {e}", q.qid);
            }
            break;
        }
        took(s, q);
        slot.slot.running.store(q.now_ms(), Ordering::Relaxed);
        let commit_id = handle(&cx, &mut entry, &mut out);
        slot.slot.running.store(0, Ordering::Relaxed);
        if !q.stays(&slot) {
            // No command is outstanding on `ring`: closing it cancels
            // nothing; the entry goes on with the keeper.
            match q.keeper.retire(entry, commit_id) {
                Ok(()) => {
                    drop(ring);
                    q.workers.fetch_sub(1, Ordering::AcqRel);
                    return;
                }
                Err(e) => entry = e,
            }
        }
        let sqe = commit_sqe(fd, commit_id, q);
        // SAFETY: the command carries no pointer; the entry it commits is
        // this worker's, dropped only after `ring` (below).
        if unsafe { ring.submission().push(&sqe) }.is_err() {
            tracing::error!("ring queue {}: submission queue full", q.qid);
            break;
        }
    }
    // The ring first: closing it cancels the entry's command before the
    // entry's memory is unmapped.
    drop(ring);
    drop(entry);
    q.workers.fetch_sub(1, Ordering::AcqRel);
}

/// Whether thread `tid` has a signal pending that it does not block: the
/// signal that interrupted its FUSE request, if its interrupt was dropped
/// (see "Interrupts the kernel drops"). Read from `/proc/<tid>/status`
/// (`SigPnd`, `ShdPnd`, `SigBlk`); a fatal signal shows as `SIGKILL`.
pub(crate) fn signal_pending(tid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else { return false };
    let mask = |key: &str| {
        status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    };
    match (mask("SigPnd:"), mask("ShdPnd:"), mask("SigBlk:")) {
        (Some(p), Some(s), Some(b)) => (p | s) & !b != 0,
        _ => false,
    }
}

/// For each queue it is told about, starts a thread that sends one
/// `STATFS` from that queue's CPU (see "Kicks": never from this thread).
fn kicker<F: Filesystem>(s: &Arc<Shared<F>>, queues: &[Arc<Queue>], rx: Receiver<u16>) {
    let Some(dir) = s.config.mount_dir.clone() else {
        tracing::warn!("no mount directory: ring queues that grow are not kicked");
        return;
    };
    for qid in rx {
        let Some(q) = queues.get(usize::from(qid)) else { continue };
        let (q, stats, dir) = (q.clone(), s.stats.clone(), dir.clone());
        let sent = std::thread::Builder::new().name(format!("fuse-kick-{qid}")).spawn(move || {
            pin(&q);
            // The answer does not matter, only that a reply is committed.
            if kick(&dir).is_ok() {
                stats.ring_kicks.fetch_add(1, Ordering::Relaxed);
            }
        });
        if let Err(e) = sent {
            tracing::warn!("kicker: cannot start a kick: {e}");
        }
    }
}

/// Sends one `STATFS` through the mount at `dir`, from a thread whose
/// descriptor table holds nothing else.
///
/// A request to our own mount may be read by a worker and then never be
/// answered: the server killed (SIGKILL) before the reply. The kernel
/// then waits for it uninterruptibly (a sent request ends only with its
/// reply or the connection's abort), and the connection is aborted only
/// when the last descriptor of `/dev/fuse` is released, which a thread
/// sharing the server's descriptor table would prevent from exiting: the
/// killed server would stay a zombie with this thread in state D forever
/// (seen in `server_killed_while_clients_are_blocked`). So the thread
/// first takes a table of its own (`unshare(CLONE_FILES)`) and closes
/// every copy in it: the server's table, and with it `/dev/fuse`, is then
/// released when its other threads exit, the abort ends this request, and
/// this thread exits too.
fn kick(dir: &std::path::Path) -> rustix::io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    // SAFETY: after this, this thread sees none of the process's
    // descriptors (its table is a copy, closed below) and uses none: it
    // opens, uses and (at exit, with its table) closes one of its own. No
    // descriptor from this thread reaches another.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FILES)? };
    // SAFETY: close_range(0, ~0, 0) closes every descriptor of this
    // thread's private table, which only copies of others' descriptors
    // are in; no owner of those is on this thread (see above).
    let r = unsafe { libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) };
    if r != 0 {
        return Err(rustix::io::Errno::from_raw_os_error(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        ));
    }
    let root = rustix::fs::open(dir, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    rustix::fs::fstatfs(&root).map(drop)
}
