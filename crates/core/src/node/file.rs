//! [`File`]: one successful open, as a transport holds it, with the
//! driver's release run exactly once (Linux's `struct file` and its
//! `f_op`).

use super::aops::{IoctlCall, IoctlDone};
use super::task::{Pending, Started};
use super::{Node, OpenState};
use crate::errno::{Errno, NodeKind};
use crate::fops::{Caller, FileOperations, Ioctl, KResult, Llseek, PollMask};
use crate::ioctl::IoctlCmd;
use crate::uaccess::{IoctlLayout, IoctlOutcome};
use devlife_gate::sync::lock;
use devlife_gate::{Event, Wake};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// An open file: the handle a transport keeps per open descriptor.
///
/// Share it between threads with `Arc<File>`. Dropping the last handle (or
/// [`close`](Self::close)) releases it: the driver's `release` runs once,
/// unless the object was removed, whose removal released it already.
pub struct File {
    inner: Box<dyn FileDyn>,
}

trait FileDyn: Send + Sync {
    fn read(&self, buf: &mut [u8], offset: u64, caller: &Caller<'_>) -> KResult<usize>;
    fn start_read(&self, buf: Vec<u8>, len: usize, offset: u64, caller: &Caller<'_>) -> Started<Vec<u8>>;
    fn start_write(&self, data: &[u8], offset: u64, caller: &Caller<'_>) -> Started<usize>;
    fn start_ioctl(&self, call: IoctlCall<'_>, output: Vec<u8>, caller: &Caller<'_>) -> Started<IoctlDone>;
    fn write(&self, data: &[u8], offset: u64, caller: &Caller<'_>) -> KResult<usize>;
    fn ioctl(&self, io: &mut Ioctl<'_>, caller: &Caller<'_>) -> KResult<i64>;
    fn poll(&self, caller: &Caller<'_>, waker: Option<&Arc<dyn Wake>>) -> PollMask;
    fn flush(&self, caller: &Caller<'_>) -> KResult<()>;
    fn has_flush(&self) -> bool;
    fn llseek(&self) -> Llseek;
    fn release(&self);
    fn kind(&self) -> NodeKind;
}

struct OpenFile<F: FileOperations> {
    node: Arc<Node<F>>,
    state: Arc<OpenState<F>>,
}

impl<F: FileOperations> FileDyn for OpenFile<F> {
    fn read(&self, buf: &mut [u8], offset: u64, caller: &Caller<'_>) -> KResult<usize> {
        if self.node.asyncs.is_some() {
            let data = wait(self.start_read(Vec::new(), buf.len(), offset, caller))?;
            buf[..data.len()].copy_from_slice(&data);
            return Ok(data.len());
        }
        let n = self.node.call(&self.state, caller, "read", |ops, f, cx| ops.read(f, cx, buf, offset))?;
        // A driver claiming more than the buffer holds is a driver bug.
        if n > buf.len() { Err(Errno::EIO) } else { Ok(n) }
    }
    fn start_read(&self, mut buf: Vec<u8>, len: usize, offset: u64, caller: &Caller<'_>) -> Started<Vec<u8>> {
        if let Some(a) = &self.node.asyncs {
            return (a.read)(&self.node, &self.state, caller, buf, len, offset);
        }
        buf.resize(len, 0);
        Started::Done(self.read(&mut buf, offset, caller).map(|n| {
            buf.truncate(n);
            buf
        }))
    }
    fn write(&self, data: &[u8], offset: u64, caller: &Caller<'_>) -> KResult<usize> {
        if self.node.asyncs.is_some() {
            return wait(self.start_write(data, offset, caller));
        }
        let n = self.node.call(&self.state, caller, "write", |ops, f, cx| ops.write(f, cx, data, offset))?;
        if n > data.len() { Err(Errno::EIO) } else { Ok(n) }
    }
    fn start_write(&self, data: &[u8], offset: u64, caller: &Caller<'_>) -> Started<usize> {
        match &self.node.asyncs {
            Some(a) => (a.write)(&self.node, &self.state, caller, data, offset),
            None => Started::Done(self.write(data, offset, caller)),
        }
    }
    fn start_ioctl(
        &self,
        call: IoctlCall<'_>,
        mut output: Vec<u8>,
        caller: &Caller<'_>,
    ) -> Started<IoctlDone> {
        let (layout, declared) = IoctlLayout::of(call.cmd, F::IOCTL_LAYOUTS);
        if call.unrestricted.is_none() {
            // A declared layout is one the restricted transport's kernel did
            // not copy: the argument cannot reach the driver.
            if declared {
                return Started::Done(Err(Errno::EOPNOTSUPP));
            }
            if call.input.len() != call.cmd.in_size() {
                return Started::Done(Err(Errno::EFAULT));
            }
        }
        if let Some(a) = &self.node.asyncs {
            return (a.ioctl)(&self.node, &self.state, caller, call, layout, output);
        }
        let outcome = match call.unrestricted {
            None => {
                let mut io = Ioctl::new(call.cmd, call.arg, call.input, &mut output);
                io.set_compat(call.compat);
                self.ioctl(&mut io, caller).map(IoctlOutcome::Done)
            }
            Some(out_room) => crate::uaccess::ioctl_unrestricted(
                call.cmd,
                call.arg,
                layout,
                call.input,
                out_room,
                &mut output,
                |io| {
                    io.set_compat(call.compat);
                    self.ioctl(io, caller)
                },
            ),
        };
        Started::Done(outcome.map(|outcome| IoctlDone { outcome, output }))
    }
    fn ioctl(&self, io: &mut Ioctl<'_>, caller: &Caller<'_>) -> KResult<i64> {
        if io.is_compat() {
            self.node.call(&self.state, caller, "compat_ioctl", |ops, f, cx| ops.compat_ioctl(f, cx, io))
        } else {
            self.node.call(&self.state, caller, "ioctl", |ops, f, cx| ops.ioctl(f, cx, io))
        }
    }
    fn poll(&self, caller: &Caller<'_>, waker: Option<&Arc<dyn Wake>>) -> PollMask {
        self.node.poll(&self.state, caller, waker)
    }
    fn flush(&self, caller: &Caller<'_>) -> KResult<()> {
        self.node.flush(&self.state, caller)
    }
    fn has_flush(&self) -> bool {
        F::FLUSH.is_some()
    }
    fn llseek(&self) -> Llseek {
        F::LLSEEK
    }
    fn release(&self) {
        self.node.release(&self.state)
    }
    fn kind(&self) -> NodeKind {
        self.node.kind
    }
}

impl File {
    pub(super) fn new<F: FileOperations>(node: Arc<Node<F>>, state: Arc<OpenState<F>>) -> Self {
        File { inner: Box::new(OpenFile { node, state }) }
    }

    /// Reads into `buf` at `offset`.
    pub fn read(&self, buf: &mut [u8], offset: u64, caller: &Caller<'_>) -> KResult<usize> {
        self.inner.read(buf, offset, caller)
    }

    /// Writes `data` at `offset`.
    pub fn write(&self, data: &[u8], offset: u64, caller: &Caller<'_>) -> KResult<usize> {
        self.inner.write(data, offset, caller)
    }

    /// Issues ioctl `cmd` with argument `arg`; `input` must hold
    /// `cmd.in_size()` bytes; the driver's output lands in `output`.
    pub fn ioctl(
        &self,
        cmd: IoctlCmd,
        arg: u64,
        input: &[u8],
        output: &mut Vec<u8>,
        caller: &Caller<'_>,
    ) -> KResult<i64> {
        self.ioctl_as(false, cmd, arg, input, output, caller)
    }

    /// [`ioctl`](Self::ioctl) from a 32-bit process: reaches the driver's
    /// [`compat_ioctl`](FileOperations::compat_ioctl) (`ENOTTY` unless it
    /// has one, as in Linux).
    pub fn compat_ioctl(
        &self,
        cmd: IoctlCmd,
        arg: u64,
        input: &[u8],
        output: &mut Vec<u8>,
        caller: &Caller<'_>,
    ) -> KResult<i64> {
        self.ioctl_as(true, cmd, arg, input, output, caller)
    }

    fn ioctl_as(
        &self,
        compat: bool,
        cmd: IoctlCmd,
        arg: u64,
        input: &[u8],
        output: &mut Vec<u8>,
        caller: &Caller<'_>,
    ) -> KResult<i64> {
        let call = IoctlCall { compat, cmd, arg, input, unrestricted: None };
        let done = wait(self.inner.start_ioctl(call, std::mem::take(output), caller))?;
        *output = done.output;
        match done.outcome {
            IoctlOutcome::Done(r) => Ok(r),
            // A restricted call names no memory to fetch.
            IoctlOutcome::Fetch { .. } => Err(Errno::EIO),
        }
    }

    /// One round of an ioctl over a transport that fetches the caller's
    /// memory on request (CUSE's unrestricted ioctls; see
    /// [`uaccess`](crate::uaccess)): `fetched` is what it copied in for
    /// this round, `out_room` what it will copy back. Returns the result,
    /// or the regions to fetch before calling again; the output (the
    /// argument's, then each region's) lands in `output`.
    pub fn ioctl_unrestricted(
        &self,
        cmd: IoctlCmd,
        arg: u64,
        fetched: &[u8],
        out_room: usize,
        output: &mut Vec<u8>,
        caller: &Caller<'_>,
    ) -> KResult<IoctlOutcome> {
        self.ioctl_unrestricted_as(false, cmd, arg, fetched, out_room, output, caller)
    }

    /// [`ioctl_unrestricted`](Self::ioctl_unrestricted) from a 32-bit
    /// process (see [`compat_ioctl`](Self::compat_ioctl)).
    pub fn compat_ioctl_unrestricted(
        &self,
        cmd: IoctlCmd,
        arg: u64,
        fetched: &[u8],
        out_room: usize,
        output: &mut Vec<u8>,
        caller: &Caller<'_>,
    ) -> KResult<IoctlOutcome> {
        self.ioctl_unrestricted_as(true, cmd, arg, fetched, out_room, output, caller)
    }

    #[allow(clippy::too_many_arguments)] // the public pair's arguments, and which of the two
    fn ioctl_unrestricted_as(
        &self,
        compat: bool,
        cmd: IoctlCmd,
        arg: u64,
        fetched: &[u8],
        out_room: usize,
        output: &mut Vec<u8>,
        caller: &Caller<'_>,
    ) -> KResult<IoctlOutcome> {
        let call = IoctlCall { compat, cmd, arg, input: fetched, unrestricted: Some(out_room) };
        let done = wait(self.inner.start_ioctl(call, std::mem::take(output), caller))?;
        *output = done.output;
        Ok(done.outcome)
    }

    /// Starts a read of up to `len` bytes at `offset`, in `buf`'s
    /// allocation where it can: the data, now or (from a driver's async
    /// read that waits) later, through the [`Pending`] handle. For a
    /// transport that must not hold a thread per waiting request.
    pub fn read_start(&self, buf: Vec<u8>, len: usize, offset: u64, caller: &Caller<'_>) -> Started<Vec<u8>> {
        self.inner.start_read(buf, len, offset, caller)
    }

    /// Starts a write of `data` at `offset` (see [`read_start`](Self::read_start)).
    pub fn write_start(&self, data: &[u8], offset: u64, caller: &Caller<'_>) -> Started<usize> {
        self.inner.start_write(data, offset, caller)
    }

    /// Starts an ioctl (see [`read_start`](Self::read_start)), its output
    /// in `output`'s allocation where it can: the restricted form of
    /// [`ioctl`](Self::ioctl) and [`compat_ioctl`](Self::compat_ioctl), or
    /// one unrestricted round, as `call` says.
    pub fn ioctl_start(
        &self,
        call: IoctlCall<'_>,
        output: Vec<u8>,
        caller: &Caller<'_>,
    ) -> Started<IoctlDone> {
        self.inner.start_ioctl(call, output, caller)
    }

    /// One round of poll: the current readiness, registering `waker` to be
    /// woken (once) when it may change, and when the object is removed.
    pub fn poll_once(&self, caller: &Caller<'_>, waker: Option<&Arc<dyn Wake>>) -> PollMask {
        self.inner.poll(caller, waker)
    }

    /// Blocks until one of `events` (or an error or hang-up) is ready, or
    /// until `deadline`; returns the readiness (empty on timeout).
    pub fn poll(&self, events: PollMask, deadline: Option<Instant>, caller: &Caller<'_>) -> PollMask {
        let ev = Arc::new(Event::new());
        let waker: Arc<dyn Wake> = ev.clone();
        let wanted = events | PollMask::ERR | PollMask::HUP;
        loop {
            ev.reset();
            let m = self.inner.poll(caller, Some(&waker));
            if m.intersects(wanted) {
                return m & wanted;
            }
            if !ev.sleep(deadline) {
                return PollMask::NONE;
            }
        }
    }

    /// Called on every close of a descriptor of this file.
    pub fn flush(&self, caller: &Caller<'_>) -> KResult<()> {
        self.inner.flush(caller)
    }

    /// Whether the driver has a `flush` ([`FileOperations::FLUSH`]); if
    /// not, [`flush`](Self::flush) does nothing and a transport need not
    /// call it.
    pub fn has_flush(&self) -> bool {
        self.inner.has_flush()
    }

    /// How the file's position works ([`FileOperations::LLSEEK`]).
    pub fn llseek(&self) -> Llseek {
        self.inner.llseek()
    }

    /// Releases the file now (idempotent; dropping the handle does it too).
    pub fn close(&self) {
        self.inner.release()
    }

    /// What kind of object the file belongs to.
    pub fn kind(&self) -> NodeKind {
        self.inner.kind()
    }
}

/// Blocks the calling thread until `s` has its result (a blocking caller
/// of an async operation: the core's own tests, tools).
fn wait<T: Send + 'static>(s: Started<T>) -> KResult<T> {
    let p = match s {
        Started::Done(r) => return r,
        Started::Pending(p) => p,
    };
    let slot = Arc::new((Mutex::new(None), Condvar::new()));
    let done = slot.clone();
    Pending::on_complete(p, move |r| {
        *lock(&done.0) = Some(r);
        done.1.notify_all();
    });
    let mut g = lock(&slot.0);
    loop {
        if let Some(r) = g.take() {
            return r;
        }
        g = devlife_gate::sync::wait(&slot.1, g);
    }
}

impl Drop for File {
    fn drop(&mut self) {
        self.inner.release();
    }
}

impl std::fmt::Debug for File {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("File").field("kind", &self.kind()).finish_non_exhaustive()
    }
}
