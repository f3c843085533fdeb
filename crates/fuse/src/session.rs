//! [`Session`]: the INIT handshake, the worker pool, interrupts.
//!
//! # Workers
//!
//! Each worker reads requests from its own clone of the connection
//! (`FUSE_DEV_IOC_CLONE`) and handles them to the end, blocking if the
//! handler blocks. A worker that takes a request while no other worker is
//! idle starts another one first (up to `max_workers`), so a handler
//! blocked on a device never stops unrelated requests; surplus idle workers
//! exit. This is libfuse's multi-threaded loop, not fuser's fixed pool.
//!
//! # Interrupts
//!
//! Every request in flight has a [`CancelSource`]; `FUSE_INTERRUPT` fires
//! it, so the handler's cancellable wait returns and the request answers
//! `EINTR`. The kernel sends one interrupt per request, and another worker
//! may read it before the worker that read the request has registered it.
//! Such an interrupt is remembered, and the request is cancelled as it
//! registers (both under one lock), as libfuse does.
//!
//! It is not answered `EAGAIN` (which fuse.rst allows, to have it sent
//! again): with cloned descriptors the kernel looks the interrupted request
//! up only in the processing queue of the descriptor the `EAGAIN` is written
//! to, which is not the one that read the request, so the interrupt would
//! be dropped and the caller left waiting (found by `devlife torture`).

use crate::abi::{self, init};
use crate::decode::{DecodeError, Operation, decode};
use crate::fs::{DirBuf, Filesystem, Req};
use crate::notify::Notifier;
use crate::reply::{err, ok};
use devlife_gate::CancelSource;
use rustix::fd::{AsFd, OwnedFd};
use rustix::io::Errno;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use zerocopy::IntoBytes;

/// Session settings.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Most worker threads at once.
    pub max_workers: usize,
    /// Idle workers kept; more exit.
    pub max_idle: usize,
    /// Largest write the kernel may send (and read reply size).
    pub max_write: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config { max_workers: 1024, max_idle: 8, max_write: 128 * 1024 }
    }
}

/// Requests being handled, and interrupts that came before their request
/// was registered.
#[derive(Default)]
struct Inflight {
    running: HashMap<u64, Arc<CancelSource>>,
    /// Interrupted uniques not (yet) running, with when the interrupt came.
    early: HashMap<u64, std::time::Instant>,
}

/// How long an early interrupt is remembered: one whose request had in fact
/// already finished is forgotten after this.
const EARLY_INTERRUPT_TTL: std::time::Duration = std::time::Duration::from_secs(60);

struct Shared<F> {
    fs: F,
    master: Arc<OwnedFd>,
    config: Config,
    notifier: Notifier,
    inflight: Mutex<Inflight>,
    idle: AtomicUsize,
    workers: AtomicUsize,
    ended: AtomicBool,
    exited: Mutex<usize>,
    all_exited: std::sync::Condvar,
}

/// A running FUSE session.
pub struct Session<F: Filesystem> {
    shared: Arc<Shared<F>>,
}

impl<F: Filesystem> Session<F> {
    /// Performs INIT on `fd` (a mounted connection) and starts the workers.
    pub fn start(fd: OwnedFd, fs: F, config: Config) -> std::io::Result<Self> {
        let master = Arc::new(fd);
        handshake(&master, config)?;
        let notifier = Notifier::start(master.clone());
        fs.init(&notifier);
        let shared = Arc::new(Shared {
            fs,
            master,
            config,
            notifier,
            inflight: Mutex::new(Inflight::default()),
            idle: AtomicUsize::new(0),
            workers: AtomicUsize::new(0),
            ended: AtomicBool::new(false),
            exited: Mutex::new(0),
            all_exited: std::sync::Condvar::new(),
        });
        for _ in 0..2 {
            spawn_worker(&shared);
        }
        Ok(Session { shared })
    }

    /// The notifier.
    pub fn notifier(&self) -> &Notifier {
        &self.shared.notifier
    }

    /// The file system.
    pub fn fs(&self) -> &F {
        &self.shared.fs
    }

    /// Worker threads right now.
    pub fn workers(&self) -> usize {
        self.shared.workers.load(Ordering::Relaxed)
    }

    /// Blocks until the connection ends (unmounted and every file closed,
    /// or aborted).
    pub fn wait(&self) {
        let mut g = self.shared.exited.lock().unwrap_or_else(|e| e.into_inner());
        while !self.shared.ended.load(Ordering::Acquire) || self.shared.workers.load(Ordering::Acquire) != 0 {
            g = self.shared.all_exited.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
}

fn handshake(fd: &OwnedFd, config: Config) -> std::io::Result<()> {
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
        let Operation::Init(i) = req.op else {
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
            | init::BIG_WRITES
            | init::PARALLEL_DIROPS
            | init::ABORT_ERROR
            | init::MAX_PAGES
            | init::DO_READDIRPLUS
            | init::READDIRPLUS_AUTO;
        let out = abi::InitOut {
            major: abi::KERNEL_VERSION,
            minor: i.minor.min(abi::KERNEL_MINOR_VERSION),
            max_readahead: i.max_readahead,
            flags: i.flags & want,
            max_background: 64,
            congestion_threshold: 48,
            max_write: config.max_write,
            time_gran: 1,
            max_pages: (config.max_write / 4096) as u16,
            ..Default::default()
        };
        ok(fd, req.header.unique, &[out.as_bytes()]);
        return Ok(());
    }
}

/// A new connection to the same session (`FUSE_DEV_IOC_CLONE`), or the
/// master itself if cloning is refused.
fn clone_fd(master: &Arc<OwnedFd>) -> Arc<OwnedFd> {
    use rustix::fd::AsRawFd;
    use rustix::fs::{Mode, OFlags};
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

fn spawn_worker<F: Filesystem>(shared: &Arc<Shared<F>>) {
    if shared.workers.fetch_add(1, Ordering::AcqRel) >= shared.config.max_workers {
        shared.workers.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let s = shared.clone();
    let spawned = std::thread::Builder::new().name("fuse-worker".into()).spawn(move || {
        let fd = clone_fd(&s.master);
        worker(&s, &fd);
        s.workers.fetch_sub(1, Ordering::AcqRel);
        let _g = s.exited.lock().unwrap_or_else(|e| e.into_inner());
        s.all_exited.notify_all();
    });
    if spawned.is_err() {
        shared.workers.fetch_sub(1, Ordering::AcqRel);
    }
}

fn worker<F: Filesystem>(s: &Arc<Shared<F>>, fd: &Arc<OwnedFd>) {
    let mut buf = vec![0u8; s.config.max_write as usize + 4096];
    let mut out = Vec::with_capacity(s.config.max_write as usize);
    loop {
        s.idle.fetch_add(1, Ordering::AcqRel);
        let r = rustix::io::read(fd.as_fd(), &mut buf);
        let idle = s.idle.fetch_sub(1, Ordering::AcqRel) - 1;
        let n = match r {
            Ok(n) => n,
            // ENOENT: the request was interrupted before we read it.
            Err(Errno::INTR | Errno::AGAIN | Errno::NOENT) => continue,
            Err(Errno::NODEV | Errno::CONNABORTED | Errno::BADF) => {
                s.ended.store(true, Ordering::Release);
                return;
            }
            Err(e) => {
                tracing::error!("reading /dev/fuse: {e}");
                s.ended.store(true, Ordering::Release);
                return;
            }
        };
        if idle == 0 {
            spawn_worker(s);
        }
        handle(s, fd, &buf[..n], &mut out);
        if s.idle.load(Ordering::Acquire) > s.config.max_idle && s.workers.load(Ordering::Acquire) > 2 {
            return;
        }
    }
}

fn handle<F: Filesystem>(s: &Shared<F>, fd: &OwnedFd, bytes: &[u8], out: &mut Vec<u8>) {
    let req = match decode(bytes) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("malformed request: {e}");
            if let Ok((h, _)) = <abi::InHeader as zerocopy::FromBytes>::read_from_prefix(bytes) {
                let code = match e {
                    DecodeError::LengthMismatch { .. } => Errno::IO,
                    _ => Errno::INVAL,
                };
                err(fd, h.unique, code);
            }
            return;
        }
    };
    let unique = req.header.unique;
    if let Operation::Interrupt(i) = req.op {
        // No reply: an interrupt is answered through its request.
        let target = {
            let mut inf = s.inflight.lock().unwrap_or_else(|e| e.into_inner());
            let target = inf.running.get(&i.unique).cloned();
            if target.is_none() {
                let now = std::time::Instant::now();
                inf.early.retain(|_, t| now.duration_since(*t) < EARLY_INTERRUPT_TTL);
                inf.early.insert(i.unique, now);
            }
            target
        };
        if let Some(src) = target {
            src.cancel();
        }
        return;
    }
    let src = Arc::new(CancelSource::new());
    {
        let mut inf = s.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if inf.early.remove(&unique).is_some() {
            // Its interrupt was read first, by another worker.
            src.cancel();
        }
        inf.running.insert(unique, src.clone());
    }
    let r = Req {
        unique,
        nodeid: req.header.nodeid,
        uid: req.header.uid,
        gid: req.header.gid,
        pid: req.header.pid,
        interrupt: &src,
        notifier: &s.notifier,
    };
    let no_reply = req.op.no_reply();
    let result = dispatch(&s.fs, &r, req.op, out, s.config.max_write);
    s.inflight.lock().unwrap_or_else(|e| e.into_inner()).running.remove(&unique);
    if no_reply {
        return;
    }
    match result {
        Ok(()) => ok(fd, unique, &[out]),
        Err(e) => err(fd, unique, e),
    }
}

/// Runs one operation; the reply's payload goes to `out`.
fn dispatch<F: Filesystem>(
    fs: &F,
    r: &Req<'_>,
    op: Operation<'_>,
    out: &mut Vec<u8>,
    max_write: u32,
) -> Result<(), Errno> {
    out.clear();
    let ino = r.nodeid;
    let attr_out = |out: &mut Vec<u8>, (attr, ttl): (crate::fs::FileAttr, std::time::Duration)| {
        let a = abi::AttrOut {
            attr_valid: ttl.as_secs(),
            attr_valid_nsec: ttl.subsec_nanos(),
            dummy: 0,
            attr: attr.abi(),
        };
        out.extend_from_slice(a.as_bytes());
    };
    match op {
        Operation::Lookup { name } => {
            let e = fs.lookup(r, ino, name)?;
            let eo = abi::EntryOut {
                nodeid: e.attr.ino,
                generation: e.generation,
                entry_valid: e.entry_ttl.as_secs(),
                attr_valid: e.attr_ttl.as_secs(),
                entry_valid_nsec: e.entry_ttl.subsec_nanos(),
                attr_valid_nsec: e.attr_ttl.subsec_nanos(),
                attr: e.attr.abi(),
            };
            out.extend_from_slice(eo.as_bytes());
        }
        Operation::Forget(f) => fs.forget(ino, f.nlookup),
        Operation::BatchForget(list) => {
            for f in list {
                fs.forget(f.nodeid, f.nlookup);
            }
        }
        Operation::Getattr(_) => attr_out(out, fs.getattr(r, ino)?),
        Operation::Setattr(set) => attr_out(out, fs.setattr(r, ino, &set)?),
        Operation::Readlink => *out = fs.readlink(r, ino)?,
        Operation::Open(o) => {
            let op = fs.open(r, ino, o.flags)?;
            out.extend_from_slice(abi::OpenOut { fh: op.fh, open_flags: op.flags, padding: 0 }.as_bytes());
        }
        Operation::Read(rd) => fs.read(r, ino, rd.fh, rd.offset, rd.size.min(max_write), rd.flags, out)?,
        Operation::Write { arg, data } => {
            let n = fs.write(r, ino, arg.fh, arg.offset, data, arg.flags)?;
            out.extend_from_slice(abi::WriteOut { size: n, padding: 0 }.as_bytes());
        }
        Operation::Flush(f) => fs.flush(r, ino, f.fh)?,
        Operation::Release(rel) => fs.release(r, ino, rel.fh)?,
        Operation::Opendir(o) => {
            let op = fs.opendir(r, ino, o.flags)?;
            out.extend_from_slice(abi::OpenOut { fh: op.fh, open_flags: op.flags, padding: 0 }.as_bytes());
        }
        Operation::Readdir { arg, plus } => {
            let mut db = DirBuf { buf: out, max: arg.size.min(max_write) as usize, plus };
            fs.readdir(r, ino, arg.fh, arg.offset, &mut db)?;
        }
        Operation::Releasedir(rel) => fs.releasedir(r, ino, rel.fh)?,
        Operation::Ioctl { arg, data } => {
            if arg.flags & abi::ioctl::UNRESTRICTED != 0 {
                return Err(Errno::NOSYS);
            }
            let mut data_out = Vec::new();
            let res = fs.ioctl(r, ino, arg.fh, arg.cmd, arg.arg, data, arg.out_size, &mut data_out)?;
            if data_out.len() > arg.out_size as usize {
                return Err(Errno::IO);
            }
            out.extend_from_slice(
                abi::IoctlOut { result: res, flags: 0, in_iovs: 0, out_iovs: 0 }.as_bytes(),
            );
            out.extend_from_slice(&data_out);
        }
        Operation::Poll(p) => {
            let kh = (p.flags & abi::POLL_SCHEDULE_NOTIFY != 0).then_some(p.kh);
            let revents = fs.poll(r, ino, p.fh, kh, p.events)?;
            out.extend_from_slice(abi::PollOut { revents, padding: 0 }.as_bytes());
        }
        Operation::Statfs => out.extend_from_slice(fs.statfs(r, ino)?.as_bytes()),
        Operation::Access(a) => fs.access(r, ino, a.mask)?,
        Operation::Destroy => fs.destroy(),
        // INIT after the handshake is a protocol error.
        Operation::Init(_) => return Err(Errno::PROTO),
        Operation::Interrupt(_) => return Err(Errno::INVAL),
        Operation::Unsupported(_) => return Err(Errno::NOSYS),
    }
    Ok(())
}
