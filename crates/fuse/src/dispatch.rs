//! What happens to a request once it is decoded, whichever transport it
//! came by: `FUSE_INTERRUPT` bookkeeping ([`Inflight`](crate::inflight)), then the dispatch
//! from [`Operation`] to a [`Filesystem`] method, in one table.
//!
//! Handling a request, in order: an interrupt cancels its target and is
//! not answered; any other request is registered for interruption (and
//! cancelled at once if its interrupt came first), runs, and is
//! unregistered. The transport then sends the reply, or none for
//! `FORGET`.

use crate::abi;
use crate::decode::{DecodeError, Operation, Request};
use crate::defer::{DeferSlot, Limits, Shared as DeferShared};
use crate::fs::{DirBuf, Filesystem, IoctlReply, Req};
use crate::inflight::{Inflight, Interrupts, OnSleep, Running};
use crate::notify::Notifier;
use rustix::io::Errno;
use std::cell::Cell;
use std::sync::Arc;
use zerocopy::IntoBytes;

/// Where a request's handling needs to reach: one per worker thread.
pub(crate) struct Context<'a, F> {
    pub(crate) fs: &'a F,
    pub(crate) notifier: &'a Notifier,
    pub(crate) inflight: &'a Inflight,
    pub(crate) max_write: u32,
    /// See [`OnSleep`].
    on_sleep: Option<OnSleep>,
    /// The interrupt source of this worker's requests, re-armed for each.
    interrupts: Cell<Option<Interrupts>>,
    /// This worker's slot in `inflight`.
    running: Arc<Running>,
    /// Scratch for a handler's ioctl output, kept between requests so an
    /// ioctl allocates nothing (see [`SCRATCH_KEEP`]).
    scratch: Cell<Vec<u8>>,
    /// Where this worker's current request is deferred, if it is.
    defer: DeferSlot,
}

/// The largest scratch buffer a worker keeps between requests; a larger
/// one (a rare big ioctl output) is freed after its request.
const SCRATCH_KEEP: usize = 4096;

impl<F> Drop for Context<'_, F> {
    fn drop(&mut self) {
        self.inflight.leave(&self.running);
    }
}

impl<'a, F> Context<'a, F> {
    pub(crate) fn new(fs: &'a F, notifier: &'a Notifier, inflight: &'a Inflight, max_write: u32) -> Self {
        let running = inflight.join();
        Context {
            fs,
            notifier,
            inflight,
            max_write,
            on_sleep: None,
            interrupts: Cell::new(None),
            running,
            scratch: Cell::new(Vec::new()),
            defer: DeferSlot::default(),
        }
    }

    /// Runs `hook` when a handler of this context's requests is about to
    /// sleep (see [`OnSleep`]).
    pub(crate) fn with_on_sleep(mut self, hook: OnSleep) -> Self {
        self.on_sleep = Some(hook);
        self
    }

    /// The interrupt source for this worker's next request (see
    /// [`Interrupts::next`]).
    fn interrupts(&self, probe: Option<u32>) -> Interrupts {
        Interrupts::next(self.interrupts.take(), self.on_sleep.as_ref(), probe)
    }
}

/// Which transport a request came by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    Dev,
    /// A ring entry: the kernel may have dropped its interrupt (see
    /// [`signal_pending`](crate::signal::signal_pending)).
    Ring,
}

/// What the transport does with a request once it is handled.
pub(crate) enum Processed {
    /// Send this reply (its body is in `out`).
    Reply(Result<(), Errno>),
    /// Send nothing: the kernel expects no reply (`FORGET`, `INTERRUPT`).
    NoReply,
    /// The handler deferred it (see [`crate::defer`]): tell the handle
    /// where the reply goes.
    Deferred(Arc<DeferShared>),
}

/// Handles one decoded request; the reply's body goes to `out`.
pub(crate) fn process<F: Filesystem>(
    cx: &Context<'_, F>,
    req: Request<'_>,
    via: Via,
    out: &mut Vec<u8>,
) -> Processed {
    out.clear();
    let unique = req.header.unique;
    if let Operation::Interrupt(i) = req.op {
        // No reply: an interrupt is answered through its request.
        cx.inflight.interrupt(i.unique);
        return Processed::NoReply;
    }
    let no_reply = req.op.no_reply();
    let probe = (via == Via::Ring && req.header.pid != 0).then_some(req.header.pid);
    let interrupts = cx.interrupts(probe);
    let src = &interrupts.src;
    cx.inflight.begin(&cx.running, unique, src);
    let r = Req {
        unique,
        nodeid: req.header.nodeid,
        uid: req.header.uid,
        gid: req.header.gid,
        pid: req.header.pid,
        interrupt: src,
        notifier: cx.notifier,
        defer: &cx.defer,
        deferred: &cx.inflight.deferred,
    };
    let (op, opcode) = (req.op.name(), req.header.opcode);
    let mut scratch = cx.scratch.take();
    let result = dispatch(cx.fs, &r, req.op, out, &mut scratch, cx.max_write);
    let deferred = cx.defer.taken.borrow_mut().take();
    if deferred.is_some() && via == Via::Ring && r.pid != 0 && crate::signal::signal_pending(r.pid) {
        // A signal the kernel may have dropped on the way to the ring (see
        // "Interrupts the kernel drops" in `ring`): a blocking handler's
        // first sleep asks; a deferred one asks here, once.
        src.cancel();
    }
    // Listed in the deferred table already (by `Req::defer`), so clearing
    // the slot loses no interrupt.
    cx.inflight.end(&cx.running);
    if scratch.capacity() <= SCRATCH_KEEP {
        cx.scratch.set(scratch);
    }
    // libfuse's `-d`, one line a request.
    match &result {
        _ if deferred.is_some() => {
            tracing::debug!(unique, op, opcode, nodeid = r.nodeid, pid = r.pid, "request deferred")
        }
        Ok(()) => {
            tracing::debug!(unique, op, opcode, nodeid = r.nodeid, pid = r.pid, reply = out.len(), "request")
        }
        Err(e) => tracing::debug!(unique, op, opcode, nodeid = r.nodeid, pid = r.pid, error = %e, "request"),
    }
    cx.interrupts.set(Some(interrupts));
    match deferred {
        Some(d) => Processed::Deferred(d),
        None if no_reply => Processed::NoReply,
        None => Processed::Reply(result),
    }
}

/// The error a malformed request is answered with: `EIO` when its lengths
/// disagree (the kernel and the server disagree on the protocol), `EINVAL`
/// when its arguments are malformed.
pub(crate) fn decode_errno(e: &DecodeError) -> Errno {
    match e {
        DecodeError::LengthMismatch { .. } | DecodeError::RingLength { .. } => Errno::IO,
        _ => Errno::INVAL,
    }
}

/// Runs one operation; the reply's payload goes to `out`. `scratch` is
/// room for output that goes after a header (an ioctl's).
fn dispatch<F: Filesystem>(
    fs: &F,
    r: &Req<'_>,
    op: Operation<'_>,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
    max_write: u32,
) -> Result<(), Errno> {
    out.clear();
    r.defer.limits.set(Limits { ioctl: None, max: usize::MAX });
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
    let entry_out = |out: &mut Vec<u8>, e: crate::fs::Entry| {
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
    };
    match op {
        Operation::Lookup { name } => entry_out(out, fs.lookup(r, ino, name)?),
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
        Operation::Read(rd) => {
            let arg = crate::fs::ReadArgs {
                fh: rd.fh,
                offset: rd.offset,
                size: rd.size.min(max_write),
                flags: rd.flags,
                page_cache: rd.read_flags & abi::read_flags::LOCKOWNER == 0,
            };
            r.defer.limits.set(Limits { ioctl: None, max: arg.size as usize });
            fs.read(r, ino, &arg, out)?
        }
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
            let args = crate::fs::IoctlArgs {
                fh: arg.fh,
                cmd: arg.cmd,
                arg: arg.arg,
                unrestricted: arg.flags & abi::ioctl::UNRESTRICTED != 0,
                compat: arg.flags & abi::ioctl::COMPAT != 0,
                input: data,
                out_size: arg.out_size,
            };
            r.defer.limits.set(Limits { ioctl: Some((arg.out_size, args.unrestricted)), max: usize::MAX });
            let data_out = scratch;
            data_out.clear();
            let reply = fs.ioctl(r, ino, &args, data_out)?;
            if r.defer.taken.borrow().is_none() {
                encode_ioctl(reply, data_out, arg.out_size, args.unrestricted, out)?;
            }
        }
        Operation::Poll(p) => {
            let kh = (p.flags & abi::POLL_SCHEDULE_NOTIFY != 0).then_some(p.kh);
            let revents = fs.poll(r, ino, p.fh, kh, p.events)?;
            out.extend_from_slice(abi::PollOut { revents, padding: 0 }.as_bytes());
        }
        Operation::Statfs => out.extend_from_slice(fs.statfs(r, ino)?.as_bytes()),
        Operation::Access(a) => fs.access(r, ino, a.mask)?,
        Operation::Mknod { arg, name } => entry_out(out, fs.mknod(r, ino, name, arg.mode, arg.rdev)?),
        Operation::Mkdir { arg, name } => entry_out(out, fs.mkdir(r, ino, name, arg.mode)?),
        Operation::Symlink { name, target } => entry_out(out, fs.symlink(r, ino, name, target)?),
        Operation::Unlink { name } => fs.unlink(r, ino, name)?,
        Operation::Rmdir { name } => fs.rmdir(r, ino, name)?,
        Operation::Rename { newdir, flags, name, newname } => {
            fs.rename(r, ino, name, newdir, newname, flags)?
        }
        Operation::Link { arg, name } => entry_out(out, fs.link(r, arg.oldnodeid, ino, name)?),
        Operation::Create { arg, name } => {
            let (e, op) = fs.create(r, ino, name, arg.mode, arg.flags)?;
            entry_out(out, e);
            out.extend_from_slice(abi::OpenOut { fh: op.fh, open_flags: op.flags, padding: 0 }.as_bytes());
        }
        Operation::Destroy => fs.destroy(),
        // INIT after the handshake is a protocol error.
        Operation::Init { .. } | Operation::CuseInit(_) => return Err(Errno::PROTO),
        Operation::Interrupt(_) => return Err(Errno::INVAL),
        Operation::Unsupported(_) => return Err(Errno::NOSYS),
    }
    Ok(())
}

/// An IOCTL's reply body in `out`: the `fuse_ioctl_out` and the output of
/// a `Done` (at most `out_size` bytes), or the regions of a `Retry` (only
/// for an `unrestricted` request).
pub(crate) fn encode_ioctl(
    reply: IoctlReply,
    data_out: &[u8],
    out_size: u32,
    unrestricted: bool,
    out: &mut Vec<u8>,
) -> Result<(), Errno> {
    match reply {
        IoctlReply::Done(result) => {
            if data_out.len() > out_size as usize {
                return Err(Errno::IO);
            }
            let o = abi::IoctlOut { result, flags: 0, in_iovs: 0, out_iovs: 0 };
            out.extend_from_slice(o.as_bytes());
            out.extend_from_slice(data_out);
        }
        IoctlReply::Retry { input, output } => {
            // The kernel would fail the call with EIO for either.
            if !unrestricted || input.len() + output.len() > abi::IOCTL_MAX_IOV {
                return Err(Errno::IO);
            }
            let o = abi::IoctlOut {
                result: 0,
                flags: abi::ioctl::RETRY,
                in_iovs: input.len() as u32,
                out_iovs: output.len() as u32,
            };
            out.extend_from_slice(o.as_bytes());
            for v in input.iter().chain(&output) {
                out.extend_from_slice(abi::IoctlIovec { base: v.base, len: v.len }.as_bytes());
            }
        }
    }
    Ok(())
}
