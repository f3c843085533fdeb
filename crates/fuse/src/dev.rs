//! The `/dev/fuse` transport: a pool of workers reading the connection.
//!
//! Each worker reads requests from its own clone of the connection
//! (`FUSE_DEV_IOC_CLONE`; the session's descriptor itself for a session
//! that outlives its server, see [`Config::clone_devices`](crate::Config))
//! and handles them to the end, blocking if the
//! handler blocks. A worker that takes a request while no other worker is
//! idle starts another one first (up to `max_workers`), so a handler
//! blocked on a device never stops unrelated requests; surplus idle workers
//! exit. This is libfuse's multi-threaded loop, not fuser's fixed pool.
//!
//! # Interrupts on cloned descriptors
//!
//! An interrupt read before its request was registered is remembered (see
//! [`Inflight`](crate::dispatch::Inflight)), not answered `EAGAIN` (which
//! fuse.rst allows, to have it sent again): with cloned descriptors the
//! kernel looks the interrupted request up only in the processing queue of
//! the descriptor the `EAGAIN` is written to, which is not the one that
//! read the request, so the interrupt would be dropped and the caller left
//! waiting (found by `devlife torture`).

use crate::abi;
use crate::buf::PageBuf;
use crate::decode::decode;
use crate::defer::Target;
use crate::dispatch::{Processed, Via, decode_errno, process};
use crate::fs::Filesystem;
use crate::reply::{err, ok};
use crate::session::Shared;
use rustix::fd::{AsFd, OwnedFd};
use rustix::io::Errno;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The pool's counts.
#[derive(Default)]
pub(crate) struct Pool {
    idle: AtomicUsize,
    workers: AtomicUsize,
}

impl Pool {
    /// Whether every worker is waiting in `read(2)`: none is handling a
    /// request, or about to.
    pub(crate) fn all_idle(&self) -> bool {
        self.idle.load(Ordering::Acquire) == self.workers.load(Ordering::Acquire)
    }
}

/// A new connection to the same session (`FUSE_DEV_IOC_CLONE`), or the
/// master itself if cloning is refused. A CUSE channel is never cloned:
/// the kernel clones only onto a descriptor of the same device, and a new
/// `/dev/cuse` descriptor is a new channel already; its workers share it.
fn clone_fd(master: &Arc<OwnedFd>, cuse: bool) -> Arc<OwnedFd> {
    use rustix::fd::AsRawFd;
    use rustix::fs::{Mode, OFlags};
    if cuse {
        return master.clone();
    }
    let Ok(fd) = rustix::fs::open("/dev/fuse", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()) else {
        return master.clone();
    };
    let master_raw = master.as_raw_fd() as u32;
    // SAFETY: FUSE_DEV_IOC_CLONE reads one `u32` (the session's fd) through
    // the pointer `Setter` passes, which points at `master_raw` for the
    // duration of the call; the kernel writes nothing back.
    let r = unsafe {
        rustix::ioctl::ioctl(&fd, rustix::ioctl::Setter::<{ abi::DEV_IOC_CLONE }, u32>::new(master_raw))
    };
    match r {
        Ok(()) => Arc::new(fd),
        Err(_) => master.clone(),
    }
}

/// Starts one more worker, unless the pool is at `max_workers`.
pub(crate) fn spawn_worker<F: Filesystem>(s: &Arc<Shared<F>>) {
    let pool = &s.dev;
    if pool.workers.fetch_add(1, Ordering::AcqRel) >= s.config.max_workers {
        pool.workers.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let started = s.spawn("fuse-worker", |s| {
        s.stats.dev_workers.fetch_add(1, Ordering::Relaxed);
        let fd = if s.config.clone_devices { clone_fd(&s.master, s.cuse) } else { s.master.clone() };
        worker(s, &fd);
        s.dev.workers.fetch_sub(1, Ordering::AcqRel);
        s.stats.dev_workers.fetch_sub(1, Ordering::Relaxed);
    });
    if !started {
        pool.workers.fetch_sub(1, Ordering::AcqRel);
    }
}

fn worker<F: Filesystem>(s: &Arc<Shared<F>>, fd: &Arc<OwnedFd>) {
    let pool = &s.dev;
    let mut buf = match PageBuf::new(s.negotiated.max_write as usize + 4096) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("cannot map a request buffer: {e}");
            return;
        }
    };
    let mut out = Vec::new();
    let cx = s.context();
    loop {
        pool.idle.fetch_add(1, Ordering::AcqRel);
        let r = rustix::io::read(fd.as_fd(), buf.as_mut_slice());
        let idle = pool.idle.fetch_sub(1, Ordering::AcqRel) - 1;
        let n = match r {
            // The channel was replaced by /dev/null (a closed CUSE device).
            Ok(0) => {
                s.end();
                return;
            }
            Ok(n) => n,
            // ENOENT: the request was interrupted before we read it.
            Err(Errno::INTR | Errno::AGAIN | Errno::NOENT) => continue,
            Err(Errno::NODEV | Errno::CONNABORTED | Errno::BADF) => {
                s.end();
                return;
            }
            Err(e) => {
                tracing::error!("reading /dev/fuse: {e}");
                s.end();
                return;
            }
        };
        if s.handing_over.load(Ordering::Acquire) {
            // Left unanswered, in the kept descriptor's processing queue:
            // the next server has the kernel send it again (see
            // `Session::hand_over`).
            continue;
        }
        if idle == 0 {
            spawn_worker(s);
        }
        s.stats.dev_requests.fetch_add(1, Ordering::Relaxed);
        let bytes = &buf.as_mut_slice()[..n];
        match decode(bytes) {
            Ok(req) => {
                let unique = req.header.unique;
                match process(&cx, req, Via::Dev, &mut out) {
                    Processed::Reply(Ok(())) => ok(&**fd, unique, &[&out]),
                    Processed::Reply(Err(e)) => err(&**fd, unique, e),
                    Processed::NoReply => {}
                    // Answered later, on this descriptor.
                    Processed::Deferred(d) => d.set_target(Target::Dev(fd.clone())),
                }
            }
            Err(e) => {
                tracing::warn!("malformed request: {e}");
                if let Ok((h, _)) = <abi::InHeader as zerocopy::FromBytes>::read_from_prefix(bytes) {
                    err(&**fd, h.unique, decode_errno(&e));
                }
            }
        }
        if pool.idle.load(Ordering::Acquire) > s.config.max_idle && pool.workers.load(Ordering::Acquire) > 2 {
            return;
        }
    }
}
