//! [`File`]: one successful open, as a transport holds it, with the
//! driver's release run exactly once (Linux's `struct file` and its
//! `f_op`).

use super::{Node, OpenState};
use crate::errno::{Errno, NodeKind};
use crate::fops::{Caller, FileOperations, Ioctl, KResult, Llseek, PollMask};
use crate::ioctl::IoctlCmd;
use crate::uaccess::{IoctlLayout, IoctlOutcome};
use devlife_gate::{Event, Wake};
use std::sync::Arc;
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
    fn write(&self, data: &[u8], offset: u64, caller: &Caller<'_>) -> KResult<usize>;
    fn ioctl(&self, io: &mut Ioctl<'_>, caller: &Caller<'_>) -> KResult<i64>;
    fn ioctl_layout(&self, cmd: IoctlCmd) -> (IoctlLayout, bool);
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
        let n = self.node.call(&self.state, caller, "read", |ops, f, cx| ops.read(f, cx, buf, offset))?;
        // A driver claiming more than the buffer holds is a driver bug.
        if n > buf.len() { Err(Errno::EIO) } else { Ok(n) }
    }
    fn write(&self, data: &[u8], offset: u64, caller: &Caller<'_>) -> KResult<usize> {
        let n = self.node.call(&self.state, caller, "write", |ops, f, cx| ops.write(f, cx, data, offset))?;
        if n > data.len() { Err(Errno::EIO) } else { Ok(n) }
    }
    fn ioctl(&self, io: &mut Ioctl<'_>, caller: &Caller<'_>) -> KResult<i64> {
        if io.is_compat() {
            self.node.call(&self.state, caller, "compat_ioctl", |ops, f, cx| ops.compat_ioctl(f, cx, io))
        } else {
            self.node.call(&self.state, caller, "ioctl", |ops, f, cx| ops.ioctl(f, cx, io))
        }
    }
    fn ioctl_layout(&self, cmd: IoctlCmd) -> (IoctlLayout, bool) {
        IoctlLayout::of(cmd, F::IOCTL_LAYOUTS)
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
        // A declared layout is one the restricted transport's kernel did
        // not copy: the argument cannot reach the driver.
        if self.inner.ioctl_layout(cmd).1 {
            return Err(Errno::EOPNOTSUPP);
        }
        if input.len() != cmd.in_size() {
            return Err(Errno::EFAULT);
        }
        let mut io = Ioctl::new(cmd, arg, input, output);
        io.set_compat(compat);
        self.inner.ioctl(&mut io, caller)
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
        let (layout, _) = self.inner.ioctl_layout(cmd);
        crate::uaccess::ioctl_unrestricted(cmd, arg, layout, fetched, out_room, output, |io| {
            io.set_compat(compat);
            self.inner.ioctl(io, caller)
        })
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
