//! [`Ioctl`]: the arguments of one ioctl as a handler sees them, and its
//! way to the caller's memory.

use super::{Named, Reach, UserOut};
use crate::errno::{Errno, KResult};
use crate::ioctl::IoctlCmd;

/// Arguments of one ioctl: the command, the raw argument, the argument's
/// memory copied in and the output to copy back (sized from `_IOC_SIZE`,
/// or the driver's [`IoctlLayout`](super::IoctlLayout)), and, where
/// the transport can reach it (CUSE), the caller's memory that pointers in
/// the argument point to ([`read_user`](Self::read_user),
/// [`user_out`](Self::user_out)).
pub struct Ioctl<'a> {
    cmd: IoctlCmd,
    arg: u64,
    input: &'a [u8],
    output: &'a mut Vec<u8>,
    out_max: usize,
    reach: Reach<'a>,
    /// From a 32-bit process ([`is_compat`](Self::is_compat)).
    compat: bool,
}

impl<'a> Ioctl<'a> {
    /// Arguments for `cmd` as a restricted transport (FUSE) delivers them:
    /// `input` holds the encoded input size; `output` is cleared.
    pub fn new(cmd: IoctlCmd, arg: u64, input: &'a [u8], output: &'a mut Vec<u8>) -> Self {
        Self::with_reach(cmd, arg, input, output, cmd.out_size(), Reach::default())
    }

    pub(crate) fn with_reach(
        cmd: IoctlCmd,
        arg: u64,
        input: &'a [u8],
        output: &'a mut Vec<u8>,
        out_max: usize,
        reach: Reach<'a>,
    ) -> Self {
        output.clear();
        Ioctl { cmd, arg, input, output, out_max, reach, compat: false }
    }

    /// Marks the call as a 32-bit process's (what reaches
    /// [`FileOperations::compat_ioctl`](crate::FileOperations::compat_ioctl)).
    pub(crate) fn set_compat(&mut self, compat: bool) {
        self.compat = compat;
    }

    /// Whether the caller is a 32-bit process on this 64-bit system (Linux's
    /// `in_compat_syscall()`): its pointers and `long`s are 4 bytes, so an
    /// argument with either is laid out differently.
    pub fn is_compat(&self) -> bool {
        self.compat
    }

    pub(crate) fn take_named(self) -> Named {
        self.reach.named
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
    pub fn input(&self) -> &'a [u8] {
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

    /// Sets the data passed out through the argument; `EINVAL` if it
    /// exceeds the argument's size.
    pub fn set_output(&mut self, data: &[u8]) -> KResult<()> {
        if data.len() > self.out_max {
            return Err(Errno::EINVAL);
        }
        self.output.clear();
        self.output.extend_from_slice(data);
        Ok(())
    }

    /// `len` bytes of the caller's memory at `addr`, a pointer found in the
    /// argument (Linux `copy_from_user(buf, u64_to_user_ptr(p), len)`).
    ///
    /// Over CUSE, the first round that names a region fails `EFAULT` and
    /// the handler is called again, from the start, with the region
    /// fetched: name every region before acting (see
    /// [`uaccess`](crate::uaccess)). A bad address makes the system call
    /// fail `EFAULT` in the kernel's copy, before the handler runs again.
    ///
    /// # Errors
    ///
    /// `EOPNOTSUPP` over FUSE (the kernel copies only the argument),
    /// `ENOMEM` past [`IOCTL_MEM_MAX`](crate::uaccess::IOCTL_MEM_MAX) or
    /// [`IOCTL_MAX_REGIONS`](crate::uaccess::IOCTL_MAX_REGIONS).
    #[doc(alias = "copy_from_user")]
    pub fn read_user(&mut self, addr: u64, len: usize) -> KResult<&'a [u8]> {
        self.reach.read(addr, len)
    }

    /// Reserves `len` bytes of the caller's memory at `addr` to write back
    /// with [`write_user`](Self::write_user) (rounds as for
    /// [`read_user`](Self::read_user)).
    pub fn user_out(&mut self, addr: u64, len: usize) -> KResult<UserOut> {
        self.reach.reserve(addr, len)
    }

    /// [`read_user`](Self::read_user) and [`user_out`](Self::user_out) of
    /// the same region (a buffer the driver changes in place), named in
    /// one round.
    pub fn user_inout(&mut self, addr: u64, len: usize) -> KResult<(&'a [u8], UserOut)> {
        self.reach.inout(addr, len)
    }

    /// Writes `data` to a reserved region (Linux `copy_to_user`); the rest
    /// of the region is zeroed. `EINVAL` if `data` is longer than it.
    #[doc(alias = "copy_to_user")]
    pub fn write_user(&mut self, out: UserOut, data: &[u8]) -> KResult<()> {
        self.reach.write(out, data)
    }
}
