//! [`FileOperations`]: what a driver implements for a character device, a
//! debugfs file or an attribute, and the per-operation context it gets.

use crate::errno::{Errno, NodeKind};
use crate::ioctl::IoctlCmd;
use devlife_gate::{
    CancelSource, CancellableMutex, CancellableMutexGuard, Cancelled, WaitQueue, Wake, wait_event,
};
use std::sync::Arc;
use std::time::Instant;

/// Result of a handler: a value or a Linux error number.
pub type KResult<T> = Result<T, Errno>;

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
/// ioctl `ENOTTY`, poll "always ready", flush succeeds.
pub trait FileOperations: Send + Sync + Sized + 'static {
    /// Per-open state (Linux `file->private_data`).
    type File: Send + Sync + 'static;

    /// Opens the object, creating the per-open state.
    fn open(&self, cx: &Ctx<'_>) -> KResult<Self::File>;

    /// Reads up to `buf.len()` bytes at `offset` (ignored by stream devices).
    fn read(&self, _file: &Self::File, _cx: &Ctx<'_>, _buf: &mut [u8], _offset: u64) -> KResult<usize> {
        Err(Errno::EINVAL)
    }

    /// Writes `data` at `offset`; returns how many bytes were taken.
    fn write(&self, _file: &Self::File, _cx: &Ctx<'_>, _data: &[u8], _offset: u64) -> KResult<usize> {
        Err(Errno::EINVAL)
    }

    /// Handles an ioctl; the return value is the system call's result.
    fn ioctl(&self, _file: &Self::File, _cx: &Ctx<'_>, _io: &mut Ioctl<'_>) -> KResult<i64> {
        Err(Errno::ENOTTY)
    }

    /// Reports readiness, registering the wait queues whose wake-up may
    /// change it with [`PollTable::wait`] (Linux `poll_wait`).
    fn poll(&self, _file: &Self::File, _cx: &Ctx<'_>, _pt: &PollTable<'_>) -> PollMask {
        PollMask::DEFAULT
    }

    /// Whether [`flush`](Self::flush) is implemented. A transport may skip
    /// the call on close when it is not (FUSE's `FOPEN_NOFLUSH`, one round
    /// trip less per close). Set it to `true` when overriding `flush`.
    const HAS_FLUSH: bool = false;

    /// Called on every close of a descriptor (Linux `->flush`). Only called
    /// by every transport if [`HAS_FLUSH`](Self::HAS_FLUSH) is `true`.
    fn flush(&self, _file: &Self::File, _cx: &Ctx<'_>) -> KResult<()> {
        Ok(())
    }

    /// The last close of an open file, or its forced release during removal.
    fn release(&self, file: Self::File) {
        drop(file);
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
    /// it makes the operation's cancellable waits return `EINTR`.
    pub interrupt: Option<&'a CancelSource>,
}

/// The context of one operation: who called, and how to sleep.
pub struct Ctx<'a> {
    pub(crate) caller: Caller<'a>,
    pub(crate) kind: NodeKind,
    /// The object's gate (Removed), the open file's gate (Removed: the file
    /// is being released), the request's interrupt (Interrupted); the first
    /// `n` entries are in use.
    sources: [(&'a CancelSource, Cancelled); 3],
    n: usize,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(
        caller: Caller<'a>,
        kind: NodeKind,
        obj: &'a CancelSource,
        file: Option<&'a CancelSource>,
    ) -> Self {
        let mut sources = [(obj, Cancelled::Removed); 3];
        let mut n = 1;
        for s in
            [file.map(|f| (f, Cancelled::Removed)), caller.interrupt.map(|i| (i, Cancelled::Interrupted))]
                .into_iter()
                .flatten()
        {
            sources[n] = s;
            n += 1;
        }
        Ctx { caller, kind, sources, n }
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
        self.caller.interrupt.is_some_and(CancelSource::is_cancelled)
    }
}

/// Arguments of one ioctl: the command, the raw argument, and the in and
/// out buffers the transport sized from `_IOC_SIZE` (restricted ioctls).
pub struct Ioctl<'a> {
    cmd: IoctlCmd,
    arg: u64,
    input: &'a [u8],
    output: &'a mut Vec<u8>,
}

impl<'a> Ioctl<'a> {
    /// Arguments for `cmd`; `output` is cleared.
    pub fn new(cmd: IoctlCmd, arg: u64, input: &'a [u8], output: &'a mut Vec<u8>) -> Self {
        output.clear();
        Ioctl { cmd, arg, input, output }
    }

    /// The command number.
    pub fn cmd(&self) -> IoctlCmd {
        self.cmd
    }

    /// The raw argument (a pointer value in the caller: meaningful only for
    /// `_IO` commands that pass a number).
    pub fn arg(&self) -> u64 {
        self.arg
    }

    /// The data the caller passed in.
    pub fn input(&self) -> &[u8] {
        self.input
    }

    /// The input as a native-endian `u32` (`EINVAL` if it is not 4 bytes).
    pub fn input_u32(&self) -> KResult<u32> {
        self.input.try_into().map(u32::from_ne_bytes).map_err(|_| Errno::EINVAL)
    }

    /// The input as a native-endian `u64` (`EINVAL` if it is not 8 bytes).
    pub fn input_u64(&self) -> KResult<u64> {
        self.input.try_into().map(u64::from_ne_bytes).map_err(|_| Errno::EINVAL)
    }

    /// Sets the data passed out; `EINVAL` if it exceeds the command's size.
    pub fn set_output(&mut self, data: &[u8]) -> KResult<()> {
        if data.len() > self.cmd.out_size() {
            return Err(Errno::EINVAL);
        }
        self.output.clear();
        self.output.extend_from_slice(data);
        Ok(())
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
