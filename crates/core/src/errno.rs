//! Linux error numbers, and the one place where failures become them.
//!
//! Handlers return [`Errno`] directly (as kernel handlers return `-EFOO`).
//! Framework operations fail with typed errors ([`crate::Error`], the
//! gate's [`Cancelled`]); this module is the only place they turn into
//! numbers, including the per-subsystem codes for "the object was removed"
//! (`ENODEV` for character devices, `EIO` for debugfs, as in the kernel).

use devlife_gate::Cancelled;
use std::fmt;

/// Result of a handler: a value or a Linux error number.
pub type KResult<T> = Result<T, Errno>;

/// A Linux error number (positive, as in `errno`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Errno(i32);

macro_rules! errnos {
    ($($name:ident = $v:expr, $desc:expr;)*) => {
        impl Errno {
            $(#[doc = $desc] pub const $name: Errno = Errno($v);)*

            /// The symbolic name (`"ENODEV"`), if this is a known number.
            pub fn name(self) -> Option<&'static str> {
                match self.0 { $($v => Some(stringify!($name)),)* _ => None }
            }
        }
    };
}

errnos! {
    EPERM = 1, "Operation not permitted.";
    ENOENT = 2, "No such file or directory.";
    EINTR = 4, "Interrupted system call.";
    EIO = 5, "I/O error.";
    ENXIO = 6, "No such device or address.";
    E2BIG = 7, "Argument list too long.";
    EBADF = 9, "Bad file descriptor.";
    EAGAIN = 11, "Try again.";
    ENOMEM = 12, "Out of memory.";
    EACCES = 13, "Permission denied.";
    EFAULT = 14, "Bad address.";
    EBUSY = 16, "Device or resource busy.";
    EEXIST = 17, "File exists.";
    EXDEV = 18, "Cross-device link.";
    ENODEV = 19, "No such device.";
    ENOTDIR = 20, "Not a directory.";
    EISDIR = 21, "Is a directory.";
    EINVAL = 22, "Invalid argument.";
    ENOSPC = 28, "No space left on device.";
    EROFS = 30, "Read-only file system.";
    ESPIPE = 29, "Illegal seek.";
    ENOTTY = 25, "Inappropriate ioctl for device.";
    ERANGE = 34, "Result out of range.";
    EDEADLK = 35, "Resource deadlock would occur.";
    ENAMETOOLONG = 36, "File name too long.";
    ENOSYS = 38, "Function not implemented.";
    ENOTEMPTY = 39, "Directory not empty.";
    ELOOP = 40, "Too many symbolic links encountered.";
    ENODATA = 61, "No data available.";
    EPROTO = 71, "Protocol error.";
    EOPNOTSUPP = 95, "Operation not supported.";
    EOVERFLOW = 75, "Value too large for defined data type.";
    ENOTCONN = 107, "Transport endpoint is not connected.";
    ETIMEDOUT = 110, "Connection timed out.";
}

impl Errno {
    /// The error number for a raw positive value.
    pub const fn from_raw(v: i32) -> Self {
        Errno(v)
    }

    /// The raw positive value.
    pub const fn raw(self) -> i32 {
        self.0
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "Errno({})", self.0),
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for Errno {}

/// The kind of gated object a file belongs to: decides the codes seen after
/// its removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeKind {
    /// A character device (cdev, misc device).
    Cdev,
    /// A debugfs file.
    Debugfs,
    /// A device attribute (sysfs-style show/store file).
    Attribute,
}

/// What operations see once their object is removed (the table in the
/// project's `docs/ARCHITECTURE.md`).
impl NodeKind {
    /// `open` through a reference taken before the removal.
    pub fn open_after_removal(self) -> Errno {
        match self {
            // chrdev_open: the cdev is gone from the map.
            NodeKind::Cdev => Errno::ENXIO,
            // debugfs full_proxy_open: -EIO is turned into -ENOENT.
            NodeKind::Debugfs => Errno::ENOENT,
            NodeKind::Attribute => Errno::ENODEV,
        }
    }

    /// read, write, ioctl, and a cancelled wait, on a file opened before.
    pub fn op_after_removal(self) -> Errno {
        match self {
            NodeKind::Cdev | NodeKind::Attribute => Errno::ENODEV,
            NodeKind::Debugfs => Errno::EIO,
        }
    }

    /// `poll` on a file opened before the removal: hang-up (with an error
    /// for devices, as evdev, gpiolib and v4l2 do; debugfs reports only
    /// `EPOLLHUP`).
    pub fn poll_after_removal(self) -> crate::PollMask {
        use crate::PollMask;
        match self {
            NodeKind::Cdev | NodeKind::Attribute => PollMask::HUP | PollMask::ERR,
            NodeKind::Debugfs => PollMask::HUP,
        }
    }

    /// Maps a cancelled wait to the code the handler returns.
    pub fn cancelled(self, c: Cancelled) -> Errno {
        match c {
            Cancelled::Removed => self.op_after_removal(),
            Cancelled::Interrupted => Errno::EINTR,
            Cancelled::TimedOut => Errno::ETIMEDOUT,
        }
    }
}

impl From<crate::Error> for Errno {
    fn from(e: crate::Error) -> Errno {
        use crate::Error as E;
        match e {
            E::InvalidName(_) | E::InvalidInput(_) => Errno::EINVAL,
            E::NoSuchDevice(_) | E::NoSuchDriver(_) | E::NoSuchBus(_) | E::NoMatch { .. } => Errno::ENODEV,
            E::NotBound(_) | E::BoundElsewhere { .. } => Errno::ENODEV,
            E::AlreadyBound(_) | E::RegionBusy(_) => Errno::EBUSY,
            E::Exists(_) => Errno::EEXIST,
            E::ProbeFailed(_, errno) => errno,
            E::NoSpace(_) => Errno::ENOSPC,
            E::Detached => Errno::ENODEV,
            E::Removed(_) => Errno::ENOENT,
            E::WouldDeadlock => Errno::EDEADLK,
            E::UnknownType(_) => Errno::EINVAL,
        }
    }
}

impl crate::Error {
    /// What a hot-plug store (`new_device`) answers: as every other
    /// failure, except a name already taken, which is `EBUSY` (i2c's
    /// `new_device` answers so for an address in use).
    pub fn hotplug_errno(self) -> Errno {
        match self {
            crate::Error::Exists(_) => Errno::EBUSY,
            e => Errno::from(e),
        }
    }
}

/// Malformed control-file input (too long, not UTF-8, wrong fields, a bad
/// name): `EINVAL`, as sysfs stores answer.
impl From<crate::name::ControlError> for Errno {
    fn from(_: crate::name::ControlError) -> Errno {
        Errno::EINVAL
    }
}
