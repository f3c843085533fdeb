//! [`Session`]: the INIT handshake, then the transports that carry
//! requests to the [`Filesystem`].
//!
//! Two transports run side by side:
//!
//! * `/dev/fuse` ([`dev`](crate::dev)): a pool of workers reading the
//!   connection. Always running: INIT, `FUSE_INTERRUPT` and `FORGET` only
//!   ever come this way, and so does everything when the kernel does not
//!   offer FUSE over io_uring.
//! * FUSE over io_uring ([`ring`](crate::ring)): one queue per CPU, led by
//!   one thread at a time pinned to it, which hands the queue to another
//!   when a handler sleeps. Negotiated in INIT when the kernel offers it
//!   (`/sys/module/fuse/parameters/enable_uring`) and [`Config::io_uring`]
//!   allows; the kernel moves every other request to the rings once each
//!   CPU's queue has an entry.

use crate::abi::{self, init, init2};
use crate::decode::{Operation, decode};
use crate::defer::DeferredTable;
use crate::dispatch::Context;
use crate::fs::Filesystem;
use crate::inflight::Inflight;
use crate::notify::Notifier;
use crate::reply::{err, ok};
use crate::{dev, ring};
use crossbeam_utils::CachePadded;
use devlife_gate::sync::{lock, wait};
use rustix::fd::OwnedFd;
use rustix::io::Errno;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use zerocopy::IntoBytes;

/// Session settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Most worker threads of the `/dev/fuse` pool, and of each CPU's ring
    /// queue. Unlimited by default: a worker is started whenever a request
    /// is taken and none is idle, so requests blocked in handlers, however
    /// many, never hold up unrelated ones (a cap is a number of blocked
    /// callers after which everything else on that queue waits, removal
    /// included, which is what would free them).
    pub max_workers: usize,
    /// Idle `/dev/fuse` workers kept; more exit.
    pub max_idle: usize,
    /// Largest write the kernel may send (and read reply size).
    pub max_write: u32,
    /// Serve through FUSE over io_uring when the kernel offers it.
    pub io_uring: bool,
    /// The mount's directory. The ring transport sends itself a `STATFS`
    /// through it when a queue grows (see the ring transport's "Kicks");
    /// without it a request that arrives while its queue is growing waits
    /// for the queue's next reply.
    pub mount_dir: Option<PathBuf>,
    /// Whether each `/dev/fuse` worker reads a clone of the connection
    /// (`FUSE_DEV_IOC_CLONE`, its own processing queue in the kernel), or
    /// every worker the session's descriptor itself.
    ///
    /// A session that must survive its server ([`Session::resume`]) turns
    /// it off: when a descriptor is closed, the kernel ends every request
    /// read through it and not yet answered with `ECONNABORTED`
    /// (`fuse_dev_release`), and a killed server closes its clones. The
    /// session's descriptor, held by a keeper as well, is not closed, so
    /// what the dead server read stays in its processing queue, and the
    /// next server has the kernel send it again (`FUSE_NOTIFY_RESEND`).
    pub clone_devices: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_workers: usize::MAX,
            max_idle: 8,
            max_write: 128 * 1024,
            io_uring: true,
            mount_dir: None,
            clone_devices: true,
        }
    }
}

/// What INIT settled: kept by whoever restarts a server on the same
/// connection ([`Session::resume`]), as the kernel sends INIT only once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Largest write, and largest read reply.
    pub max_write: u32,
    /// `max_pages`: the largest request in pages.
    pub max_pages: u16,
    /// Whether FUSE over io_uring was agreed.
    pub ring: bool,
}

/// How requests reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Through `/dev/fuse` only.
    DevFuse,
    /// Through FUSE over io_uring, one queue per CPU (`/dev/fuse` still
    /// carries interrupts and forgets).
    IoUring {
        /// Queues (one per possible CPU).
        queues: usize,
    },
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::DevFuse => f.write_str("/dev/fuse"),
            Transport::IoUring { queues: 1 } => f.write_str("io_uring (1 queue)"),
            Transport::IoUring { queues } => write!(f, "io_uring ({queues} queues)"),
        }
    }
}

/// A snapshot of [`TransportStats`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    /// The transport in use (`None` until the session has started).
    pub transport: Option<Transport>,
    /// Requests read from `/dev/fuse`.
    pub dev_requests: u64,
    /// Requests taken from ring entries.
    pub ring_requests: u64,
    /// `/dev/fuse` worker threads now.
    pub dev_workers: usize,
    /// Ring queue threads now, over all queues: each queue's leader, its
    /// idle threads, and threads finishing a request begun as leader.
    pub ring_workers: usize,
    /// Kick requests (`STATFS`) ring queues sent themselves after growing,
    /// one per entry added.
    pub ring_kicks: u64,
    /// `io_uring_enter` calls of the ring threads:
    /// `ring_requests / ring_enters` is how many requests one call served.
    pub ring_enters: u64,
    /// Times a ring queue's leader handed it on because its handler was
    /// about to sleep.
    pub ring_handoffs: u64,
    /// Times the monitor took a ring queue over from a leader whose
    /// handler ran on while requests waited, or ran long.
    pub ring_steals: u64,
    /// Ring threads started after the first of each queue.
    pub ring_threads_started: u64,
    /// Ring entries registered now, over all queues (a deferred request
    /// holds one: see [`Req::defer`](crate::Req::defer)).
    pub ring_entries: u64,
    /// Requests deferred now, waiting for their reply without a thread.
    pub deferred: u64,
}

impl Counters {
    /// `name value` lines: `transport` (`io_uring`, `dev_fuse` or
    /// `starting`), `ring_queues` and every count, as servers publish them
    /// (`debug/devlife/fuse`).
    pub fn text(&self) -> String {
        let (name, queues) = match self.transport {
            Some(Transport::IoUring { queues }) => ("io_uring", queues),
            Some(Transport::DevFuse) => ("dev_fuse", 0),
            None => ("starting", 0),
        };
        format!(
            "transport {name}\nring_queues {queues}\nring_requests {}\ndev_requests {}\nring_workers {}\n\
             dev_workers {}\nring_kicks {}\nring_enters {}\nring_handoffs {}\nring_steals {}\n\
             ring_threads_started {}\nring_entries {}\ndeferred {}\n",
            self.ring_requests,
            self.dev_requests,
            self.ring_workers,
            self.dev_workers,
            self.ring_kicks,
            self.ring_enters,
            self.ring_handoffs,
            self.ring_steals,
            self.ring_threads_started,
            self.ring_entries,
            self.deferred
        )
    }
}

/// Live counts of a session's transports, shareable with the file system
/// (to report them) before and after the session starts.
#[derive(Debug, Default)]
pub struct TransportStats {
    pub(crate) transport: std::sync::OnceLock<Transport>,
    pub(crate) dev_requests: AtomicU64,
    /// Each ring queue's counts (written by one CPU's threads each), on a
    /// cache line of their own.
    pub(crate) ring_queues: Mutex<Vec<Arc<CachePadded<RingCounters>>>>,
    pub(crate) dev_workers: AtomicUsize,
    pub(crate) ring_workers: AtomicUsize,
    pub(crate) ring_kicks: AtomicU64,
    pub(crate) ring_handoffs: AtomicU64,
    pub(crate) ring_steals: AtomicU64,
    pub(crate) ring_threads_started: AtomicU64,
    /// The requests deferred now (shared with the session's `Inflight`).
    pub(crate) deferred: Arc<DeferredTable>,
}

/// One ring queue's counts: the queue's threads write them (one at a time,
/// under the queue's lock), and no other CPU's.
#[derive(Debug, Default)]
pub(crate) struct RingCounters {
    /// Requests taken from the queue's entries.
    pub(crate) requests: AtomicU64,
    /// `io_uring_enter` calls on the queue's ring.
    pub(crate) enters: AtomicU64,
    /// Entries registered and not lost.
    pub(crate) entries: AtomicU64,
}

impl TransportStats {
    /// The counts now.
    pub fn snapshot(&self) -> Counters {
        let (ring_requests, ring_enters, ring_entries) =
            lock(&self.ring_queues).iter().fold((0, 0, 0), |(r, e, n), q| {
                (
                    r + q.requests.load(Ordering::Relaxed),
                    e + q.enters.load(Ordering::Relaxed),
                    n + q.entries.load(Ordering::Relaxed),
                )
            });
        Counters {
            transport: self.transport.get().copied(),
            dev_requests: self.dev_requests.load(Ordering::Relaxed),
            ring_requests,
            dev_workers: self.dev_workers.load(Ordering::Relaxed),
            ring_workers: self.ring_workers.load(Ordering::Relaxed),
            ring_kicks: self.ring_kicks.load(Ordering::Relaxed),
            ring_enters,
            ring_handoffs: self.ring_handoffs.load(Ordering::Relaxed),
            ring_steals: self.ring_steals.load(Ordering::Relaxed),
            ring_threads_started: self.ring_threads_started.load(Ordering::Relaxed),
            ring_entries,
            deferred: self.deferred.len() as u64,
        }
    }
}

/// State shared by every transport thread of a session.
pub(crate) struct Shared<F> {
    pub(crate) fs: F,
    pub(crate) master: Arc<OwnedFd>,
    pub(crate) config: Config,
    pub(crate) negotiated: Negotiated,
    pub(crate) notifier: Notifier,
    pub(crate) inflight: Inflight,
    pub(crate) dev: dev::Pool,
    pub(crate) stats: Arc<TransportStats>,
    /// Whether `master` is a `/dev/cuse` channel (which cannot be cloned).
    pub(crate) cuse: bool,
    /// Every transport thread, for [`Session::wait`].
    threads: AtomicUsize,
    ended: AtomicBool,
    /// Set by [`Session::hand_over`]: requests read from now on are left
    /// for the next server.
    pub(crate) handing_over: AtomicBool,
    /// Called once when the connection ends (to wake threads that wait for
    /// something else than the connection).
    on_end: Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
    exited: Mutex<()>,
    all_exited: Condvar,
}

impl<F: Filesystem> Shared<F> {
    /// The state of a session whose handshake is done: its notifier is
    /// started and the file system's `init` called.
    pub(crate) fn new(
        fs: F,
        master: Arc<OwnedFd>,
        config: Config,
        negotiated: Negotiated,
        stats: Arc<TransportStats>,
        cuse: bool,
    ) -> Arc<Self> {
        let notifier = Notifier::start(master.clone());
        fs.init(&notifier);
        Arc::new(Shared {
            fs,
            master,
            config,
            negotiated,
            notifier,
            inflight: Inflight::new(stats.deferred.clone()),
            dev: dev::Pool::default(),
            stats,
            cuse,
            threads: AtomicUsize::new(0),
            ended: AtomicBool::new(false),
            handing_over: AtomicBool::new(false),
            on_end: Mutex::default(),
            exited: Mutex::new(()),
            all_exited: Condvar::new(),
        })
    }

    pub(crate) fn context(&self) -> Context<'_, F> {
        Context::new(&self.fs, &self.notifier, &self.inflight, self.negotiated.max_write)
    }

    /// Starts a transport thread, counted for [`Session::wait`]. Returns
    /// whether it started.
    pub(crate) fn spawn(self: &Arc<Self>, name: &str, f: impl FnOnce(&Arc<Self>) + Send + 'static) -> bool {
        self.threads.fetch_add(1, Ordering::AcqRel);
        let s = self.clone();
        let spawned = std::thread::Builder::new().name(name.into()).spawn(move || {
            f(&s);
            s.threads.fetch_sub(1, Ordering::AcqRel);
            let _g = lock(&s.exited);
            s.all_exited.notify_all();
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start {name}: {e}");
            self.threads.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Calls `f` when the connection ends.
    pub(crate) fn on_end(&self, f: impl Fn() + Send + Sync + 'static) {
        lock(&self.on_end).push(Box::new(f));
    }

    /// Whether the connection has ended.
    pub(crate) fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// The connection is gone (unmounted and released, or aborted).
    pub(crate) fn end(&self) {
        if !self.ended.swap(true, Ordering::AcqRel) {
            let hooks = std::mem::take(&mut *lock(&self.on_end));
            for h in hooks {
                h();
            }
        }
        let _g = lock(&self.exited);
        self.all_exited.notify_all();
    }
}

/// A running FUSE session.
pub struct Session<F: Filesystem> {
    pub(crate) shared: Arc<Shared<F>>,
    pub(crate) transport: Transport,
}

impl<F: Filesystem> Session<F> {
    /// Performs INIT on `fd` (a mounted connection) and starts the
    /// transports. Returns once requests are being served.
    pub fn start(fd: OwnedFd, fs: F, config: Config) -> std::io::Result<Self> {
        Self::start_with_stats(fd, fs, config, Arc::default())
    }

    /// [`start`](Self::start), counting into `stats` (which the file system
    /// may already hold, to report them).
    pub fn start_with_stats(
        fd: OwnedFd,
        fs: F,
        config: Config,
        stats: Arc<TransportStats>,
    ) -> std::io::Result<Self> {
        let master = Arc::new(fd);
        let negotiated = handshake(&master, &config)?;
        Ok(Self::serve(master, fs, config, negotiated, stats))
    }

    /// Serves a connection an earlier server of it initialised (and then
    /// died or handed over): `negotiated` is what that server's INIT
    /// settled. The kernel is asked to send again every request the
    /// earlier server read and did not answer (`FUSE_NOTIFY_RESEND`, Linux
    /// 6.9), which reach `fs` like any other, with
    /// [`abi::UNIQUE_RESEND`] set in their ids; only requests read through
    /// a descriptor that is still open come back (see
    /// [`Config::clone_devices`]).
    ///
    /// Fails with `ENOTCONN` when the connection has ended (unmounted, or
    /// aborted through `/sys/fs/fuse/connections`).
    pub fn resume(
        fd: OwnedFd,
        fs: F,
        config: Config,
        negotiated: Negotiated,
        stats: Arc<TransportStats>,
    ) -> std::io::Result<Self> {
        let master = Arc::new(fd);
        // The resend comes first: requests still queued for the earlier
        // server's rings or descriptors are then ahead of new ones.
        match crate::reply::send(&master, 0, abi::notify::RESEND, &[]) {
            Ok(()) => {}
            Err(Errno::NODEV | Errno::NOTCONN | Errno::CONNABORTED) => return Err(Errno::NOTCONN.into()),
            // EINVAL: a kernel before 6.9. Requests the earlier server held
            // are then answered by nobody until the connection ends.
            Err(e) => tracing::warn!("the kernel cannot resend the earlier server's requests ({e})"),
        }
        Ok(Self::serve(master, fs, config, negotiated, stats))
    }

    fn serve(
        master: Arc<OwnedFd>,
        fs: F,
        config: Config,
        negotiated: Negotiated,
        stats: Arc<TransportStats>,
    ) -> Self {
        let shared = Shared::new(fs, master, config, negotiated, stats, false);
        // As many as requests commonly in flight at once, plus one idle (on
        // io_uring only interrupts and forgets come this way).
        let initial = if negotiated.ring { 2 } else { 4 };
        for _ in 0..initial {
            dev::spawn_worker(&shared);
        }
        let mut transport = Transport::DevFuse;
        if negotiated.ring {
            match ring::start(&shared) {
                Ok(queues) => transport = Transport::IoUring { queues },
                Err(e) => tracing::warn!("FUSE over io_uring unavailable ({e}); serving through /dev/fuse"),
            }
        }
        let _ = shared.stats.transport.set(transport);
        Session { shared, transport }
    }

    /// What the connection's INIT settled (for [`resume`](Self::resume)).
    pub fn negotiated(&self) -> Negotiated {
        self.shared.negotiated
    }

    /// The notifier.
    pub fn notifier(&self) -> &Notifier {
        &self.shared.notifier
    }

    /// The file system.
    pub fn fs(&self) -> &F {
        &self.shared.fs
    }

    /// How requests reach the server.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Request and worker counts.
    pub fn counters(&self) -> Counters {
        self.shared.stats.snapshot()
    }

    /// `/dev/fuse` worker threads right now.
    pub fn workers(&self) -> usize {
        self.shared.stats.dev_workers.load(Ordering::Relaxed)
    }

    /// Stops answering new requests, for a planned hand-over of the
    /// connection to the next server: every request read from now on is
    /// left unanswered in the kernel's processing queue of the descriptor
    /// it was read through, to be sent again to the next server
    /// (`FUSE_NOTIFY_RESEND` in its [`resume`](Self::resume)); replies to
    /// requests already taken (handlers running, deferred replies) are
    /// still sent. Meant for a session whose workers read the kept
    /// descriptor itself ([`Config::clone_devices`] off): a clone's
    /// requests end with `ECONNABORTED` when the process exits. `/dev/fuse`
    /// only: a ring entry cannot be left for another process.
    pub fn hand_over(&self) {
        self.shared.handing_over.store(true, Ordering::Release);
    }

    /// Blocks until the connection ends (unmounted and every file closed,
    /// or aborted) and every transport thread has exited.
    pub fn wait(&self) {
        let s = &self.shared;
        let mut g = lock(&s.exited);
        while !s.ended.load(Ordering::Acquire) || s.threads.load(Ordering::Acquire) != 0 {
            g = wait(&s.all_exited, g);
        }
    }
}

/// Answers INIT: the protocol version, limits and features.
fn handshake(fd: &OwnedFd, config: &Config) -> std::io::Result<Negotiated> {
    let mut buf = vec![0u8; config.max_write as usize + 4096];
    loop {
        let n = match rustix::io::read(fd, &mut buf) {
            Ok(n) => n,
            Err(Errno::INTR | Errno::AGAIN | Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        let req = match decode(&buf[..n]) {
            Ok(r) => r,
            Err(e) => return Err(std::io::Error::other(format!("bad first request: {e}"))),
        };
        let Operation::Init { arg: i, flags2 } = req.op else {
            err(fd, req.header.unique, Errno::IO);
            continue;
        };
        if i.major != abi::KERNEL_VERSION {
            // Answer with our version; a newer kernel retries with it.
            let out = abi::InitOut {
                major: abi::KERNEL_VERSION,
                minor: abi::KERNEL_MINOR_VERSION,
                ..Default::default()
            };
            ok(fd, req.header.unique, &[out.as_bytes()]);
            if i.major < abi::KERNEL_VERSION {
                return Err(std::io::Error::other(format!("kernel FUSE {}.{} is too old", i.major, i.minor)));
            }
            continue;
        }
        let want = init::ASYNC_READ
            | init::ATOMIC_O_TRUNC
            | init::BIG_WRITES
            | init::PARALLEL_DIROPS
            | init::ABORT_ERROR
            | init::MAX_PAGES
            | init::DO_READDIRPLUS
            | init::READDIRPLUS_AUTO
            | init::INIT_EXT;
        let flags = i.flags & want;
        // The kernel offers FUSE over io_uring only where root enabled it.
        let ring = config.io_uring && flags & init::INIT_EXT != 0 && flags2 & init2::OVER_IO_URING != 0;
        let max_pages = (config.max_write / 4096) as u16;
        let out = abi::InitOut {
            major: abi::KERNEL_VERSION,
            minor: i.minor.min(abi::KERNEL_MINOR_VERSION),
            max_readahead: i.max_readahead,
            flags,
            max_background: 64,
            congestion_threshold: 48,
            max_write: config.max_write,
            time_gran: 1,
            max_pages,
            flags2: if ring { init2::OVER_IO_URING } else { 0 },
            ..Default::default()
        };
        ok(fd, req.header.unique, &[out.as_bytes()]);
        return Ok(Negotiated { max_write: config.max_write, max_pages, ring });
    }
}
