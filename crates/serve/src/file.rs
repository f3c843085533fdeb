//! One open device file, served: the read, ioctl and poll of a core
//! [`File`] as a FUSE request asks for them, over the mounted tree
//! ([`crate::fs`]) and over CUSE ([`crate::cuse`]) alike. Errno values
//! cross from the core to the transport here, in [`kerr`].

use devlife_core::gate::Wake;
use devlife_core::{
    Caller, Credentials, Errno as KErrno, File, IoctlCall, IoctlCmd, IoctlOutcome, Started, UserRegion,
};
use devlife_fuse::{Errno, IoVec, IoctlArgs, IoctlReply, Notifier, Req};
use std::sync::Arc;

const O_NONBLOCK: u32 = 0o4000;

/// The transport's errno for the core's: the one place a driver's code
/// becomes the reply's (both are Linux numbers).
pub(crate) fn kerr(e: KErrno) -> Errno {
    Errno::from_raw_os_error(e.raw())
}

/// Who calls, as the core wants it: the request's credentials, the open
/// flags' `O_NONBLOCK`, and its interrupt.
pub(crate) fn caller<'a>(req: &Req<'a>, flags: u32) -> Caller<'a> {
    Caller {
        creds: Credentials { uid: req.uid, gid: req.gid, pid: req.pid },
        nonblock: flags & O_NONBLOCK != 0,
        interrupt: Some(req.interrupt),
    }
}

/// A read of up to `size` bytes at `offset` from an open file: the data
/// in `out` now, or, from an async driver's read that waits, deferred:
/// [`Req::defer`] answers it when the data comes, and the thread goes
/// back to serving. Over either kind of transport.
pub(crate) fn file_read(
    f: &File,
    offset: u64,
    size: u32,
    caller: &Caller<'_>,
    req: &Req<'_>,
    out: &mut Vec<u8>,
) -> Result<(), Errno> {
    match f.read_start(std::mem::take(out), size as usize, offset, caller) {
        Started::Done(r) => *out = r.map_err(kerr)?,
        Started::Pending(p) => {
            let d = req.defer();
            p.on_complete(move |r| d.reply_read(r.as_deref().map_err(|e| kerr(*e))));
        }
    }
    Ok(())
}

/// A write of `data` at `offset` (see [`file_read`]): the count taken, or
/// `None` once deferred.
pub(crate) fn file_write(
    f: &File,
    data: &[u8],
    offset: u64,
    caller: &Caller<'_>,
    req: &Req<'_>,
) -> Result<Option<u32>, Errno> {
    match f.write_start(data, offset, caller) {
        Started::Done(r) => Ok(Some(r.map_err(kerr)? as u32)),
        Started::Pending(p) => {
            let d = req.defer();
            p.on_complete(move |r| d.reply_write(r.map(|n| n as u32).map_err(kerr)));
            Ok(None)
        }
    }
}

/// An ioctl on an open file, over either kind of transport: restricted
/// (FUSE: the kernel copied the encoded argument) or unrestricted (CUSE:
/// the core asks for the caller's memory, round by round); deferred (see
/// [`file_read`]) when an async driver's handler waits. The output goes
/// to `out`.
pub(crate) fn file_ioctl(
    f: &File,
    caller: &Caller<'_>,
    req: &Req<'_>,
    a: &IoctlArgs<'_>,
    out: &mut Vec<u8>,
) -> Result<IoctlReply, Errno> {
    let call = IoctlCall {
        // A 32-bit caller's ioctl reaches the driver's `compat_ioctl`.
        compat: a.compat,
        cmd: IoctlCmd::from_raw(a.cmd),
        arg: a.arg,
        input: a.input,
        unrestricted: a.unrestricted.then_some(a.out_size as usize),
    };
    match f.ioctl_start(call, std::mem::take(out), caller) {
        Started::Done(r) => {
            let done = r.map_err(kerr)?;
            let reply = ioctl_reply(&done.outcome)?;
            *out = done.output;
            Ok(reply)
        }
        Started::Pending(p) => {
            let d = req.defer();
            p.on_complete(move |r| {
                match r.map_err(kerr).and_then(|done| Ok((ioctl_reply(&done.outcome)?, done.output))) {
                    Ok((reply, output)) => d.reply_ioctl(Ok((reply, &output))),
                    Err(e) => d.reply_ioctl(Err(e)),
                }
            });
            // Ignored: the reply is deferred.
            Ok(IoctlReply::Done(0))
        }
    }
}

/// The FUSE reply of an ioctl's outcome.
fn ioctl_reply(outcome: &IoctlOutcome) -> Result<IoctlReply, Errno> {
    match outcome {
        IoctlOutcome::Done(r) => i32::try_from(*r).map(IoctlReply::Done).map_err(|_| Errno::OVERFLOW),
        IoctlOutcome::Fetch { input, output } => {
            let v = |r: &UserRegion| IoVec { base: r.addr, len: r.len as u64 };
            Ok(IoctlReply::Retry {
                input: input.iter().map(v).collect(),
                output: output.iter().map(v).collect(),
            })
        }
    }
}

/// One round of poll on an open file; with `kh`, the kernel's poll handle
/// is woken (a poll notification) when readiness may change.
pub(crate) fn file_poll(f: &File, req: &Req<'_>, kh: Option<u64>) -> u32 {
    let waker: Option<Arc<dyn Wake>> =
        kh.map(|kh| Arc::new(KernelPoller { notifier: req.notifier.clone(), kh }) as Arc<dyn Wake>);
    f.poll_once(&caller(req, 0), waker.as_ref()).0
}

/// Wakes the kernel's pollers of one poll handle.
struct KernelPoller {
    notifier: Notifier,
    kh: u64,
}

impl Wake for KernelPoller {
    fn wake(&self) {
        self.notifier.poll_wakeup(self.kh);
    }
}
