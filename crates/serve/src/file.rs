//! One open device file, served: the read, ioctl and poll of a core
//! [`File`] as a FUSE request asks for them, over the mounted tree
//! ([`crate::fs`]) and over CUSE ([`crate::cuse`]) alike. Errno values
//! cross from the core to the transport here, in [`kerr`].

use devlife_core::gate::Wake;
use devlife_core::{Caller, Credentials, Errno as KErrno, File, IoctlCmd, IoctlOutcome, UserRegion};
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

/// A read of up to `size` bytes at `offset` from an open file into `out`,
/// left as long as what was read; returns that length. Over either kind of
/// transport.
pub(crate) fn file_read(
    f: &File,
    offset: u64,
    size: u32,
    caller: &Caller<'_>,
    out: &mut Vec<u8>,
) -> Result<usize, Errno> {
    out.resize(size as usize, 0);
    let n = f.read(out, offset, caller).map_err(kerr)?;
    out.truncate(n);
    Ok(n)
}

/// An ioctl on an open file, over either kind of transport: restricted
/// (FUSE: the kernel copied the encoded argument) or unrestricted (CUSE:
/// the core asks for the caller's memory, round by round).
pub(crate) fn file_ioctl(
    f: &File,
    caller: &Caller<'_>,
    a: &IoctlArgs<'_>,
    out: &mut Vec<u8>,
) -> Result<IoctlReply, Errno> {
    let cmd = IoctlCmd::from_raw(a.cmd);
    // A 32-bit caller's ioctl reaches the driver's `compat_ioctl`.
    let r = if a.unrestricted {
        let round = if a.compat { File::compat_ioctl_unrestricted } else { File::ioctl_unrestricted };
        match round(f, cmd, a.arg, a.input, a.out_size as usize, out, caller).map_err(kerr)? {
            IoctlOutcome::Done(r) => r,
            IoctlOutcome::Fetch { input, output } => {
                let v = |r: &UserRegion| IoVec { base: r.addr, len: r.len as u64 };
                return Ok(IoctlReply::Retry {
                    input: input.iter().map(v).collect(),
                    output: output.iter().map(v).collect(),
                });
            }
        }
    } else if a.compat {
        f.compat_ioctl(cmd, a.arg, a.input, out, caller).map_err(kerr)?
    } else {
        f.ioctl(cmd, a.arg, a.input, out, caller).map_err(kerr)?
    };
    i32::try_from(r).map(IoctlReply::Done).map_err(|_| Errno::OVERFLOW)
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
