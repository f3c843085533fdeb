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
//! available again. A worker that takes a request while no other worker of
//! its queue is idle starts another first (up to `max_workers` per queue),
//! so blocked handlers never stop a queue. Workers exit only when the
//! connection ends: the kernel has no command that withdraws an entry, and
//! an entry whose ring were closed could be handed a request nobody would
//! answer.
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

use crate::abi::uring::{self, CmdReq, ReqHeader};
use crate::buf::PageBuf;
use crate::decode::decode_ring;
use crate::dispatch::{Via, decode_errno, process};
use crate::fs::Filesystem;
use crate::session::Shared;
use io_uring::{IoUring, cqueue, opcode, squeue, types};
use rustix::fd::{AsRawFd, OwnedFd};
use rustix::io::Errno;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;
use zerocopy::{FromBytes, IntoBytes};

/// Workers each queue starts with. A client's request, the `RELEASE` the
/// kernel sends behind its `close(2)`, and another process's request are
/// often in flight on one CPU at once; with one worker spare a queue then
/// rarely grows (and never shrinks, see "Workers and entries").
const INITIAL_WORKERS: usize = 4;

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
    idle: AtomicUsize,
    workers: AtomicUsize,
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
    let queues: Vec<Arc<Queue>> = (0..cpus)
        .map(|q| {
            let cpu = allowed.as_ref().is_none_or(|a| a.is_set(q)).then_some(q);
            Arc::new(Queue { qid: q as u16, cpu, idle: AtomicUsize::new(0), workers: AtomicUsize::new(0) })
        })
        .collect();
    {
        let q = queues.clone();
        s.spawn("fuse-kicker", move |s| kicker(s, &q, kick_rx));
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
/// The kernel reads and writes `mem` only inside this worker's
/// `io_uring_enter` calls: it writes a request while running the worker's
/// deferred task work (the ring is `DEFER_TASKRUN`, whose task work runs
/// only when its task waits for completions), and reads a reply while
/// issuing the worker's `COMMIT_AND_FETCH`. Between a completion and the
/// next submission the worker has the memory to itself.
struct Entry {
    mem: PageBuf,
    payload: usize,
    /// The two iovecs the registration points at; kept for the worker's
    /// life, as the kernel may read them when it issues the command.
    iov: Box<[Iovec; 2]>,
}

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
    pin(q);
    // The ring is declared before the entry so that it is dropped first:
    // closing it cancels the registration before the memory is unmapped.
    let setup = || -> std::io::Result<(Ring, Entry)> {
        let mut ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_coop_taskrun()
            .build(2)?;
        let mut entry = Entry::new(rings.payload)?;
        let mut sqe = opcode::UringCmd80::new(types::Fd(s.master.as_raw_fd()), uring::CMD_REGISTER)
            .cmd(cmd(0, q.qid))
            .addr(Some(entry.iov.as_mut_ptr() as u64))
            .build();
        set_len(&mut sqe, uring::IOV_SEGS);
        // SAFETY: the command points at `entry.iov` and, through it, at the
        // entry's memory; both live until this worker returns, after the
        // ring is dropped.
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
    let (mut ring, mut entry) = match setup() {
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
    serve(s, rings, q, &mut ring, &mut entry);
}

/// The worker's loop: wait for a request, handle it, commit the reply.
fn serve<F: Filesystem>(
    s: &Arc<Shared<F>>,
    rings: &Arc<Rings>,
    q: &Arc<Queue>,
    ring: &mut Ring,
    entry: &mut Entry,
) {
    let cx = s.context();
    let fd = types::Fd(s.master.as_raw_fd());
    let mut out = Vec::new();
    loop {
        q.idle.fetch_add(1, Ordering::AcqRel);
        let r = ring.submit_and_wait(1);
        let idle = q.idle.fetch_sub(1, Ordering::AcqRel) - 1;
        match r {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("ring queue {}: io_uring_enter: {e}", q.qid);
                return;
            }
        }
        let Some(cqe) = ring.completion().next() else { continue };
        match cqe.result() {
            0 => {}
            r => {
                let e = Errno::from_raw_os_error(-r);
                // The connection is over (unmounted, aborted, or torn down).
                if !matches!(e, Errno::NOTCONN | Errno::CANCELED | Errno::CONNABORTED | Errno::NODEV) {
                    tracing::error!("ring queue {}: request failed: {e}", q.qid);
                }
                return;
            }
        }
        if idle == 0 {
            spawn_worker(s, rings, q, None, true);
        }
        s.stats.ring_requests.fetch_add(1, Ordering::Relaxed);
        let (header, payload) = entry.parts();
        let commit_id = header.ent.commit_id;
        let used = (header.ent.payload_sz as usize).min(payload.len());
        let status = match decode_ring(header, &payload[..used]) {
            Ok(req) => match process(&cx, req, Via::Ring, &mut out) {
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
        let sqe = opcode::UringCmd80::new(fd, uring::CMD_COMMIT_AND_FETCH).cmd(cmd(commit_id, q.qid)).build();
        // SAFETY: the command carries no pointer; the entry it commits is
        // the registered one, whose memory lives as long as the worker.
        if unsafe { ring.submission().push(&sqe) }.is_err() {
            tracing::error!("ring queue {}: submission queue full", q.qid);
            return;
        }
    }
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
    let mut root: Option<Arc<OwnedFd>> = None;
    for qid in rx {
        let Some(q) = queues.get(usize::from(qid)) else { continue };
        if root.is_none() {
            use rustix::fs::{Mode, OFlags};
            root = rustix::fs::open(&dir, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
                .map_err(|e| tracing::warn!("kicker: cannot open {}: {e}", dir.display()))
                .ok()
                .map(Arc::new);
        }
        let Some(fd) = root.clone() else { continue };
        let (q, stats) = (q.clone(), s.stats.clone());
        let sent = std::thread::Builder::new().name(format!("fuse-kick-{qid}")).spawn(move || {
            pin(&q);
            // The answer does not matter, only that a reply is committed.
            let _ = rustix::fs::fstatfs(&*fd);
            stats.ring_kicks.fetch_add(1, Ordering::Relaxed);
        });
        if let Err(e) = sent {
            tracing::warn!("kicker: cannot start a kick: {e}");
        }
    }
}
