//! The `xyz` device's ioctls as a client process calls them: one system
//! call each, on any descriptor of `dev/xyz*` (the FUSE tree) or
//! `/dev/<name>` (CUSE). The torture clients, the benchmarks and the tests
//! all use these, so each command's number and argument are written once
//! (the numbers come from [`devlife_drivers::xyz`]).

use devlife_drivers::xyz::{
    XYZ_IOC_COUNT, XYZ_IOC_FIFO_LEN, XYZ_IOC_HOLD, XYZ_IOC_LOCK, XYZ_IOC_REVERSE, XYZ_IOC_UNBIND_SELF,
    XYZ_IOC_WAIT,
};
use rustix::fd::AsFd;
use rustix::io::Errno;
use rustix::ioctl::{Getter, NoArg, Setter, Updater, ioctl};

/// `XYZ_IOC_COUNT` (`_IOR('X', 1, u64)`): the device's operation count.
pub fn count(fd: impl AsFd) -> Result<u64, Errno> {
    // SAFETY: the command is _IOR('X', 1, u64): the kernel writes 8 bytes
    // into the `Getter`'s u64 and nothing else.
    unsafe { ioctl(fd, Getter::<{ XYZ_IOC_COUNT.raw() }, u64>::new()) }
}

/// `XYZ_IOC_HOLD` (`_IOW('X', 2, u32)`): stays in the handler for `ms`
/// milliseconds, not in a cancellable wait (a busy handler).
pub fn hold(fd: impl AsFd, ms: u32) -> Result<(), Errno> {
    // SAFETY: the command is _IOW('X', 2, u32): the kernel reads 4 bytes
    // from the `Setter`'s u32.
    unsafe { ioctl(fd, Setter::<{ XYZ_IOC_HOLD.raw() }, u32>::new(ms)) }
}

/// `XYZ_IOC_WAIT` (`_IO('X', 3)`): sleeps until the device is removed
/// (`ENODEV`) or the caller is interrupted (`EINTR`).
pub fn wait(fd: impl AsFd) -> Result<(), Errno> {
    // SAFETY: the command is _IO('X', 3): no argument memory.
    unsafe { ioctl(fd, NoArg::<{ XYZ_IOC_WAIT.raw() }>::new()) }
}

/// `XYZ_IOC_LOCK` (`_IO('X', 4)`): takes the lock the remover also takes.
pub fn lock(fd: impl AsFd) -> Result<(), Errno> {
    // SAFETY: the command is _IO('X', 4): no argument memory.
    unsafe { ioctl(fd, NoArg::<{ XYZ_IOC_LOCK.raw() }>::new()) }
}

/// `XYZ_IOC_UNBIND_SELF` (`_IO('X', 5)`): unbinds the device from inside
/// its own handler.
pub fn unbind_self(fd: impl AsFd) -> Result<(), Errno> {
    // SAFETY: the command is _IO('X', 5): no argument memory.
    unsafe { ioctl(fd, NoArg::<{ XYZ_IOC_UNBIND_SELF.raw() }>::new()) }
}

/// `XYZ_IOC_FIFO_LEN` (a tty-style number with no `_IOC` bits, argument
/// `int *`): bytes in the FIFO. Only CUSE can carry it (`EOPNOTSUPP` over
/// FUSE).
pub fn fifo_len(fd: impl AsFd) -> Result<i32, Errno> {
    // SAFETY: the argument is an `int *`: the kernel copies 4 bytes into the
    // `Getter`'s i32 and nothing else.
    unsafe { ioctl(fd, Getter::<{ XYZ_IOC_FIFO_LEN.raw() }, i32>::new()) }
}

/// The argument of `XYZ_IOC_REVERSE`, as `xyz.h` declares it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct XyzBuf {
    /// The caller's buffer.
    pub addr: u64,
    /// Its length.
    pub len: u32,
    /// Bytes reversed (the driver's output).
    pub done: u32,
}

/// `XYZ_IOC_REVERSE` (`_IOWR('X', 6, struct xyz_buf)`): reverses `data` in
/// place, following the pointer inside the argument (CUSE only:
/// `EOPNOTSUPP` over FUSE, and `data` unchanged). Returns the bytes done.
pub fn reverse(fd: impl AsFd, data: &mut [u8]) -> Result<u32, Errno> {
    let mut b =
        XyzBuf { addr: data.as_mut_ptr() as u64, len: data.len().try_into().unwrap_or(u32::MAX), done: 0 };
    // SAFETY: the command reads and writes the 16-byte `XyzBuf` the
    // `Updater` points at, and up to `len` bytes at `addr`, which is `data`,
    // borrowed mutably for the call.
    unsafe { ioctl(fd, Updater::<{ XYZ_IOC_REVERSE.raw() }, XyzBuf>::new(&mut b)) }?;
    Ok(b.done)
}
