//! [`AsyncFileOperations`]: file operations written as futures, so that a
//! request waiting for its device holds no server thread.
//!
//! A blocking handler sleeps on a thread of the transport until its data
//! comes; a thousand blocked readers are a thousand threads. The kernel
//! holds a blocked reader with a wait-queue entry of a few dozen bytes. An
//! async handler gets that: its future is polled once on the transport's
//! thread; if it is pending, the request is deferred, the thread goes back
//! to serving, and the future waits as memory until its waker fires (a
//! [`WaitQueue::wait_until`](devlife_gate::WaitQueue::wait_until), a tokio channel, a USB transfer), when one of
//! a few executor threads ([`crate::exec`]) polls it again.
//!
//! # The removal guarantee, for futures
//!
//! The guarantee of [`FileOperations`] holds: after the removal of the
//! object (or the release of the file) returns, no future of it is polled
//! again and every one of them has been dropped. In order, the removal:
//! kills the gate (no poll starts), drains it (a poll in progress
//! returns first: every poll runs inside the gate), drops every pending
//! future of the object, each under its task's lock (a
//! [`TaskCell`](devlife_gate::TaskCell)), answers each waiting caller
//! `ENODEV` (the object's removal code), and only then drops the
//! operations object and the per-open states. A FUSE `INTERRUPT` (the
//! caller got a signal) drops that request's future and answers `EINTR`.
//!
//! Cancelling is dropping. A future that owns a resource (a buffer, a USB
//! transfer, a slot in a device queue) releases it in its destructor; a
//! transfer the hardware may still complete is cancelled there and waited
//! for, as `nusb` does when a transfer future is dropped. See
//! [`AsyncFileOperations`]'s "Cancel safety".
//!
//! # What borrows what
//!
//! The futures borrow `&self` (the operations object, holding the host's
//! data) and the per-open state, for as long as they live, like a blocking
//! handler's borrow for the length of its call. The type system checks the
//! borrow inside the future (its lifetime `'a` ties the future to `self`,
//! the file, the context and the buffer). That the borrowed data outlives
//! the future is the framework's promise, kept with `unsafe` in
//! `node/task.rs`: the framework alone owns every future (a driver never
//! holds one, so it cannot leak or keep one), and drops each before what it
//! borrows, as above.

use crate::errno::{KResult, NodeKind};
use crate::fops::{Caller, Credentials, FileOperations, Ioctl, OpCtx};
use devlife_gate::CancelSource;
use std::future::Future;
use std::sync::Arc;

/// File operations whose `read`, `write` and `ioctl` are futures (Linux has
/// none: its drivers sleep on the caller's thread; this is the io_uring-era
/// shape of `struct file_operations`).
///
/// Implement it beside [`FileOperations`] (which keeps `open`, `release`,
/// `poll`, `flush` and the constants) and register with
/// [`Cdev::new_async`](crate::Cdev::new_async). Each method defaults to
/// the blocking one, so a driver writes as futures only the operations
/// that wait. The first poll runs on the transport's thread, inside the
/// gate; a future that completes there costs one allocation more than a
/// blocking handler.
///
/// # Cancel safety
///
/// A future may be dropped at any `.await`: at a removal, at an interrupt.
/// Write it so that dropping it there loses nothing a caller was promised:
/// take data out of a device queue only in the step that completes (a
/// read that dequeues and then awaits something else would drop the bytes
/// if cancelled between the two), and keep what must be undone in a value
/// whose `Drop` undoes it.
///
/// # Examples
///
/// A FIFO whose read waits without a thread:
///
/// ```
/// use devlife_core::*;
/// use devlife_core::gate::WaitQueue;
/// use devlife_core::gate::sync::lock;
/// use std::collections::VecDeque;
/// use std::sync::Mutex;
///
/// struct Fifo { data: Mutex<VecDeque<u8>>, readable: WaitQueue }
///
/// impl FileOperations for Fifo {
///     type File = ();
///     fn open(&self, _cx: &OpCtx<'_>) -> KResult<()> { Ok(()) }
/// }
///
/// impl AsyncFileOperations for Fifo {
///     async fn read_async(&self, _f: &(), cx: &AsyncCtx, buf: &mut ReadBuf, _off: u64) -> KResult<usize> {
///         loop {
///             {
///                 let mut q = lock(&self.data);
///                 if !q.is_empty() {
///                     let n = buf.len().min(q.len());
///                     for (d, s) in buf.as_mut_slice()[..n].iter_mut().zip(q.drain(..n)) { *d = s; }
///                     return Ok(n);
///                 }
///             }
///             if cx.nonblock() { return Err(Errno::EAGAIN); }
///             self.readable.wait_until(|| !lock(&self.data).is_empty()).await;
///         }
///     }
/// }
///
/// let cdev = Cdev::new_async(Fifo { data: Mutex::default(), readable: WaitQueue::new() });
/// # let _ = cdev;
/// ```
pub trait AsyncFileOperations: FileOperations {
    /// Reads up to `buf.len()` bytes at `offset` (see
    /// [`FileOperations::read`]); returns how many it put in `buf`.
    fn read_async<'a>(
        &'a self,
        file: &'a Self::File,
        cx: &'a AsyncCtx,
        buf: &'a mut ReadBuf,
        offset: u64,
    ) -> impl Future<Output = KResult<usize>> + Send + 'a {
        async move { self.read(file, &cx.op_ctx(), buf.as_mut_slice(), offset) }
    }

    /// Writes `data` at `offset` (see [`FileOperations::write`]).
    fn write_async<'a>(
        &'a self,
        file: &'a Self::File,
        cx: &'a AsyncCtx,
        data: &'a [u8],
        offset: u64,
    ) -> impl Future<Output = KResult<usize>> + Send + 'a {
        async move { self.write(file, &cx.op_ctx(), data, offset) }
    }

    /// Handles an ioctl (see [`FileOperations::ioctl`]); a 32-bit caller's
    /// comes here too, with [`Ioctl::is_compat`] set, and by default goes
    /// to [`FileOperations::compat_ioctl`].
    fn ioctl_async<'a>(
        &'a self,
        file: &'a Self::File,
        cx: &'a AsyncCtx,
        io: &'a mut Ioctl<'_>,
    ) -> impl Future<Output = KResult<i64>> + Send + 'a {
        async move {
            let op = cx.op_ctx();
            if io.is_compat() { self.compat_ioctl(file, &op, io) } else { self.ioctl(file, &op, io) }
        }
    }
}

/// The context of one async operation: who called, and what to cancel a
/// blocking step by. Lives as long as the operation's future.
pub struct AsyncCtx {
    pub(crate) creds: Credentials,
    pub(crate) nonblock: bool,
    pub(crate) kind: NodeKind,
    /// The object's and the file's gate sources, for [`op_ctx`](Self::op_ctx).
    ///
    /// # Invariants
    ///
    /// Both point into the node and the open file that the operation's
    /// task holds (`Arc`s), and an `AsyncCtx` lives inside that task: they
    /// are valid for as long as `self` is.
    pub(crate) obj: *const CancelSource,
    pub(crate) file: *const CancelSource,
    pub(crate) interrupt: Option<Arc<CancelSource>>,
}

// SAFETY: the pointers are shared references in all but lifetime (type
// invariants), to `CancelSource`s, which are `Sync`; the rest is `Send +
// Sync`.
unsafe impl Send for AsyncCtx {}
// SAFETY: as for `Send`.
unsafe impl Sync for AsyncCtx {}

impl AsyncCtx {
    pub(crate) fn new(caller: &Caller<'_>, kind: NodeKind, obj: &CancelSource, file: &CancelSource) -> Self {
        AsyncCtx {
            creds: caller.creds,
            nonblock: caller.nonblock,
            kind,
            obj,
            file,
            interrupt: caller.interrupt.cloned(),
        }
    }

    /// The caller's credentials.
    pub fn creds(&self) -> &Credentials {
        &self.creds
    }

    /// Whether the caller asked not to block (`O_NONBLOCK`).
    pub fn nonblock(&self) -> bool {
        self.nonblock
    }

    /// A blocking handler's context for this operation, to call a blocking
    /// helper from the future's first poll (which runs on the transport's
    /// thread). Blocking in a later poll holds an executor thread: don't.
    pub fn op_ctx(&self) -> OpCtx<'_> {
        // SAFETY: valid for as long as `self` (type invariants).
        let (obj, file) = unsafe { (&*self.obj, &*self.file) };
        let caller =
            Caller { creds: self.creds, nonblock: self.nonblock, interrupt: self.interrupt.as_ref() };
        OpCtx::new(caller, self.kind, obj, Some(file))
    }
}

/// Where an async read puts its bytes: room for [`len`](Self::len) bytes,
/// allocated only when the driver writes, so a pending read costs no
/// buffer.
#[derive(Debug, Default)]
pub struct ReadBuf {
    buf: Vec<u8>,
    want: usize,
}

impl ReadBuf {
    /// Room for `want` bytes, in `buf`'s allocation if it has one (its
    /// contents are discarded).
    pub(crate) fn new(mut buf: Vec<u8>, want: usize) -> Self {
        buf.clear();
        ReadBuf { buf, want }
    }

    /// How many bytes the caller asked for.
    pub fn len(&self) -> usize {
        self.want
    }

    /// Whether the caller asked for nothing.
    pub fn is_empty(&self) -> bool {
        self.want == 0
    }

    /// The whole room, zeroed the first time (that allocates).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        if self.buf.len() != self.want {
            self.buf.resize(self.want, 0);
        }
        &mut self.buf
    }

    /// Copies as much of `data` as fits to the start; returns how much.
    pub fn fill(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.want);
        self.buf.clear();
        self.buf.extend_from_slice(&data[..n]);
        n
    }

    /// The bytes, `n` of them (what the driver said it read).
    pub(crate) fn into_data(mut self, n: usize) -> Vec<u8> {
        self.buf.resize(n, 0);
        self.buf
    }
}
