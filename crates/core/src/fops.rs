//! [`FileOperations`]: what a driver implements for a character device, a
//! debugfs file or an attribute, and the per-operation context it gets.

use crate::errno::{Errno, NodeKind};
use crate::uaccess::IoctlLayout;
use devlife_gate::{
    CancelSource, CancellableMutex, CancellableMutexGuard, Cancelled, WaitQueue, Wake, wait_event,
};
use std::sync::Arc;
use std::time::Instant;

pub use crate::errno::KResult;
pub use crate::uaccess::Ioctl;

/// The file operations of a gated object (Linux `struct file_operations`).
///
/// `&self` is the object the driver registered (a [`Cdev`](crate::Cdev)'s
/// operations, typically holding the host's context). The framework calls a
/// handler only while the object is registered, and its removal waits until
/// every handler has returned, so `&self` and everything it owns may be
/// used for the whole call, with no `try_access` in the handler.
///
/// Every handler but `open` gets the per-open state `file` created by
/// [`open`](Self::open); [`release`](Self::release) gets it back, exactly
/// once per successful open: at the last close, or during the removal if
/// the file is still open then. After the removal returns, no method of this
/// object runs again.
///
/// Defaults follow the kernel's for a missing method: read/write `EINVAL`,
/// ioctl `ENOTTY`, poll "always ready", no flush; the file position is
/// chosen by [`LLSEEK`](Self::LLSEEK).
pub trait FileOperations: Send + Sync + Sized + 'static {
    /// Per-open state (Linux `file->private_data`).
    type File: Send + Sync + 'static;

    /// Opens the object, creating the per-open state.
    fn open(&self, cx: &OpCtx<'_>) -> KResult<Self::File>;

    /// Reads up to `buf.len()` bytes at `offset`: the file position (always
    /// 0 on a [`Llseek::Stream`]); the position advances by the count
    /// returned.
    fn read(&self, _file: &Self::File, _cx: &OpCtx<'_>, _buf: &mut [u8], _offset: u64) -> KResult<usize> {
        Err(Errno::EINVAL)
    }

    /// Writes `data` at `offset` (as for [`read`](Self::read)); returns how
    /// many bytes were taken.
    fn write(&self, _file: &Self::File, _cx: &OpCtx<'_>, _data: &[u8], _offset: u64) -> KResult<usize> {
        Err(Errno::EINVAL)
    }

    /// Handles an ioctl; the return value is the system call's result.
    fn ioctl(&self, _file: &Self::File, _cx: &OpCtx<'_>, _io: &mut Ioctl<'_>) -> KResult<i64> {
        Err(Errno::ENOTTY)
    }

    /// Handles an ioctl from a 32-bit process on this 64-bit system (Linux
    /// `compat_ioctl`; FUSE's `FUSE_IOCTL_COMPAT`). Its argument is laid out
    /// as a 32-bit program lays it out: pointers and `long` are 4 bytes, and
    /// a `u64` inside a struct is 4-byte aligned on i386.
    ///
    /// By default it fails `ENOTTY`, as a Linux driver without
    /// `compat_ioctl` does: a handler written for 64-bit layouts never
    /// misreads a 32-bit caller's memory. A driver whose every argument has
    /// one layout in both (fixed-size fields, pointers carried in `u64`)
    /// forwards to [`ioctl`](Self::ioctl), as Linux drivers do with
    /// `compat_ptr_ioctl`:
    ///
    /// ```
    /// # use devlife_core::*;
    /// # struct Dev;
    /// impl FileOperations for Dev {
    ///     type File = ();
    ///     fn open(&self, _cx: &OpCtx<'_>) -> KResult<()> { Ok(()) }
    ///     fn ioctl(&self, _: &(), _cx: &OpCtx<'_>, io: &mut Ioctl<'_>) -> KResult<i64> {
    ///         io.set_output(&7u64.to_ne_bytes())?;
    ///         Ok(0)
    ///     }
    ///     fn compat_ioctl(&self, f: &(), cx: &OpCtx<'_>, io: &mut Ioctl<'_>) -> KResult<i64> {
    ///         self.ioctl(f, cx, io) // a `u64` out: the same in both
    ///     }
    /// }
    /// ```
    #[doc(alias = "compat_ptr_ioctl")]
    fn compat_ioctl(&self, _file: &Self::File, _cx: &OpCtx<'_>, _io: &mut Ioctl<'_>) -> KResult<i64> {
        Err(Errno::ENOTTY)
    }

    /// Reports readiness, registering the wait queues whose wake-up may
    /// change it with [`PollTable::wait`] (Linux `poll_wait`).
    fn poll(&self, _file: &Self::File, _cx: &OpCtx<'_>, _pt: &PollTable<'_>) -> PollMask {
        PollMask::DEFAULT
    }

    /// The argument layouts of commands whose numbers do not encode them
    /// (tty-style numbers), for transports that fetch the caller's memory
    /// (CUSE). Over FUSE such a command fails `EOPNOTSUPP` before the
    /// handler runs. Default: none (every command's `_IOC` bits say).
    const IOCTL_LAYOUTS: &'static [IoctlLayout] = &[];

    /// How the file position works (Linux: the `llseek` method, or
    /// `stream_open`/`nonseekable_open` in `open`). Default:
    /// [`Llseek::Stream`].
    const LLSEEK: Llseek = Llseek::Stream;

    /// The `flush` handler, called on every close of a descriptor (Linux
    /// `->flush`), or `None` (the default) for none.
    ///
    /// As in a C `struct file_operations`, the handler's presence is the
    /// information: a transport skips the round trip on close when it is
    /// `None` (FUSE's `FOPEN_NOFLUSH`), and there is no separate flag to
    /// forget. Point it at a method of the type:
    ///
    /// ```
    /// use devlife_core::fops::{FileOperations, FlushFn, KResult, OpCtx};
    /// struct Port;
    /// impl Port {
    ///     fn drain(&self, _file: &(), _cx: &OpCtx<'_>) -> KResult<()> { Ok(()) }
    /// }
    /// impl FileOperations for Port {
    ///     type File = ();
    ///     fn open(&self, _: &OpCtx<'_>) -> KResult<()> { Ok(()) }
    ///     const FLUSH: Option<FlushFn<Self>> = Some(Self::drain);
    /// }
    /// ```
    const FLUSH: Option<FlushFn<Self>> = None;

    /// The last close of an open file, or its forced release during removal.
    fn release(&self, file: Self::File) {
        drop(file);
    }
}

/// Copies what `from` holds at `offset` and after into `buf`, as much as
/// fits; returns how many bytes (0 at or past the end: end of file). The
/// `read` of a file with a position written the kernel way (Linux
/// `simple_read_from_buffer`, whose `*ppos` is `offset` here: the
/// framework advances the position by what `read` returns).
///
/// # Examples
///
/// ```
/// use devlife_core::fops::simple_read_from_buffer;
/// let mut buf = [0u8; 4];
/// assert_eq!(simple_read_from_buffer(&mut buf, 1, b"128\n"), 3);
/// assert_eq!(&buf[..3], b"28\n");
/// assert_eq!(simple_read_from_buffer(&mut buf, 9, b"128\n"), 0);
/// ```
pub fn simple_read_from_buffer(buf: &mut [u8], offset: u64, from: &[u8]) -> usize {
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(from.len());
    let n = buf.len().min(from.len() - start);
    buf[..n].copy_from_slice(&from[start..start + n]);
    n
}

/// A [`FileOperations::FLUSH`] handler.
pub type FlushFn<T> = fn(&T, &<T as FileOperations>::File, &OpCtx<'_>) -> KResult<()>;

/// How a file's position works: what `lseek` does and which `offset`
/// reaches `read` and `write` (Linux: `file_operations.llseek` and the
/// open-time `stream_open`/`nonseekable_open`).
///
/// A driver written the kernel way, returning the bytes of a buffer from
/// `offset` on (`simple_read_from_buffer(buf, count, ppos, ...)`), needs a
/// node with a position ([`Default`](Self::Default), [`NoSeek`](Self::NoSeek)
/// or [`Fixed`](Self::Fixed)): on a stream every read gets offset 0, and
/// `cat` would read the same text forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[doc(alias = "llseek")]
pub enum Llseek {
    /// No position (`stream_open`): every `read` and `write` gets offset
    /// 0; `lseek`, `pread` and `pwrite` fail `ESPIPE`. For FIFOs, event
    /// queues, anything where data is consumed. Threads sharing a
    /// descriptor do not serialise on a position, and writes may run in
    /// parallel.
    #[default]
    Stream,
    /// A position that `read` and `write` advance by what they return, and
    /// `lseek` fails `ESPIPE` (`nonseekable_open`; a kernel character
    /// device without `.llseek`).
    #[doc(alias = "nonseekable_open")]
    #[doc(alias = "no_llseek")]
    NoSeek,
    /// `default_llseek`: `lseek` to any position from the start or the
    /// current one; `SEEK_END` is relative to size 0.
    #[doc(alias = "default_llseek")]
    Default,
    /// `fixed_size_llseek`: like [`Default`](Self::Default), with
    /// `SEEK_END` relative to this size, which `stat` reports too. Over
    /// FUSE, the kernel lets `lseek` go past the size (it checks only
    /// against its own limit); `read` there returns what the driver says
    /// (0, end of file, for a driver written the kernel way).
    #[doc(alias = "fixed_size_llseek")]
    Fixed(u64),
}

impl Llseek {
    /// Whether the file has a position that `read` and `write` advance.
    pub fn has_position(self) -> bool {
        self != Llseek::Stream
    }

    /// Whether `lseek` works.
    pub fn seekable(self) -> bool {
        matches!(self, Llseek::Default | Llseek::Fixed(_))
    }

    /// The size `stat` reports.
    pub fn size(self) -> u64 {
        match self {
            Llseek::Fixed(n) => n,
            _ => 0,
        }
    }
}

/// Who called (Linux `current_cred()` and `current->tgid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Credentials {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Process id (0 when unknown).
    pub pid: u32,
}

/// The caller of one operation, as the transport describes it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Caller<'a> {
    /// The caller's credentials.
    pub creds: Credentials,
    /// `O_NONBLOCK`: handlers return `EAGAIN` instead of sleeping.
    pub nonblock: bool,
    /// A per-request cancel source: fired by a signal (FUSE `INTERRUPT`),
    /// it makes the operation's cancellable waits return `EINTR`, and drops
    /// a pending async operation's future (answered `EINTR`). Shared: a
    /// pending operation keeps it after its first poll.
    pub interrupt: Option<&'a Arc<CancelSource>>,
}

/// The former name of [`OpCtx`].
#[deprecated(
    since = "0.1.0",
    note = "renamed to `OpCtx` (the name `Ctx` said nothing of what it is the context of)"
)]
pub type Ctx<'a> = OpCtx<'a>;

/// The context of one operation: who called, and how to sleep.
pub struct OpCtx<'a> {
    pub(crate) caller: Caller<'a>,
    pub(crate) kind: NodeKind,
    /// The object's gate (Removed), the open file's gate (Removed: the file
    /// is being released), the request's interrupt (Interrupted); the first
    /// `n` entries are in use.
    sources: [(&'a CancelSource, Cancelled); 3],
    n: usize,
}

impl<'a> OpCtx<'a> {
    pub(crate) fn new(
        caller: Caller<'a>,
        kind: NodeKind,
        obj: &'a CancelSource,
        file: Option<&'a CancelSource>,
    ) -> Self {
        let mut sources = [(obj, Cancelled::Removed); 3];
        let mut n = 1;
        for s in
            [file.map(|f| (f, Cancelled::Removed)), caller.interrupt.map(|i| (&**i, Cancelled::Interrupted))]
                .into_iter()
                .flatten()
        {
            sources[n] = s;
            n += 1;
        }
        OpCtx { caller, kind, sources, n }
    }

    /// The caller's credentials.
    pub fn creds(&self) -> &Credentials {
        &self.caller.creds
    }

    /// Whether the caller asked not to block (`O_NONBLOCK`).
    pub fn nonblock(&self) -> bool {
        self.caller.nonblock
    }

    fn sources(&self) -> &[(&'a CancelSource, Cancelled)] {
        &self.sources[..self.n]
    }

    /// Sleeps until `cond()` holds (Linux `wait_event_interruptible`).
    ///
    /// Returns the removal code of the object (`ENODEV` for a character
    /// device, `EIO` for debugfs) when the object is removed or the file is
    /// released while waiting, and `EINTR` when the caller is interrupted.
    /// Waiting is what lets a removal finish while this handler has nothing
    /// to do: a handler that sleeps any other way holds the removal up.
    pub fn wait_event(&self, wq: &WaitQueue, cond: impl FnMut() -> bool) -> KResult<()> {
        self.wait_event_deadline(wq, None, cond)
    }

    /// [`wait_event`](Self::wait_event) with a deadline (`ETIMEDOUT`).
    pub fn wait_event_deadline(
        &self,
        wq: &WaitQueue,
        deadline: Option<Instant>,
        cond: impl FnMut() -> bool,
    ) -> KResult<()> {
        wait_event(wq, self.sources(), deadline, cond).map_err(|c| self.kind.cancelled(c))
    }

    /// Takes `m`, sleeping cancellably: a remover that holds `m` while it
    /// removes this object makes this return the removal code instead of
    /// deadlocking.
    pub fn lock<'m, T>(&self, m: &'m CancellableMutex<T>) -> KResult<CancellableMutexGuard<'m, T>> {
        m.lock_cancellable(self.sources()).map_err(|c| self.kind.cancelled(c))
    }

    /// Whether the caller was interrupted (for handlers that poll for it
    /// between steps of work they cannot sleep in).
    pub fn interrupted(&self) -> bool {
        self.caller.interrupt.is_some_and(|i| i.is_cancelled())
    }
}

/// Poll readiness bits (Linux `EPOLL*` values).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PollMask(pub u32);

impl PollMask {
    /// Readable.
    pub const IN: PollMask = PollMask(0x001);
    /// Urgent data / exceptional condition.
    pub const PRI: PollMask = PollMask(0x002);
    /// Writable.
    pub const OUT: PollMask = PollMask(0x004);
    /// Error.
    pub const ERR: PollMask = PollMask(0x008);
    /// Hang-up.
    pub const HUP: PollMask = PollMask(0x010);
    /// Normal data readable.
    pub const RDNORM: PollMask = PollMask(0x040);
    /// Normal data writable.
    pub const WRNORM: PollMask = PollMask(0x100);
    /// No readiness.
    pub const NONE: PollMask = PollMask(0);
    /// `DEFAULT_POLLMASK`: what a file without `poll` reports.
    pub const DEFAULT: PollMask = PollMask(0x001 | 0x004 | 0x040 | 0x100);

    /// Whether any bit of `other` is set.
    pub fn intersects(self, other: PollMask) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: PollMask) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOrAssign for PollMask {
    fn bitor_assign(&mut self, o: PollMask) {
        self.0 |= o.0;
    }
}

impl std::ops::BitOr for PollMask {
    type Output = PollMask;
    fn bitor(self, o: PollMask) -> PollMask {
        PollMask(self.0 | o.0)
    }
}

impl std::ops::BitAnd for PollMask {
    type Output = PollMask;
    fn bitand(self, o: PollMask) -> PollMask {
        PollMask(self.0 & o.0)
    }
}

impl std::fmt::Debug for PollMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = [
            (Self::IN, "IN"),
            (Self::PRI, "PRI"),
            (Self::OUT, "OUT"),
            (Self::ERR, "ERR"),
            (Self::HUP, "HUP"),
            (Self::RDNORM, "RDNORM"),
            (Self::WRNORM, "WRNORM"),
        ];
        let set: Vec<_> = names.iter().filter(|(m, _)| self.intersects(*m)).map(|(_, n)| *n).collect();
        write!(f, "PollMask({})", if set.is_empty() { "0".into() } else { set.join("|") })
    }
}

/// Where a `poll` handler registers the wait queues that may change its
/// answer (Linux `poll_table`).
pub struct PollTable<'a> {
    pub(crate) key: u64,
    pub(crate) waker: Option<&'a Arc<dyn Wake>>,
}

impl PollTable<'_> {
    /// Asks to be woken, once, at the next [`WaitQueue::wake_all`] of `wq`
    /// (Linux `poll_wait`). Does nothing if the caller only wants the mask.
    pub fn wait(&self, wq: &WaitQueue) {
        if let Some(w) = self.waker {
            wq.subscribe_once(self.key, w.clone());
        }
    }
}
