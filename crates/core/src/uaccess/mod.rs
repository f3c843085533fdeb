//! The caller's memory behind an ioctl's argument, for transports that
//! can reach it (Linux `copy_from_user`/`copy_to_user` on the `arg`
//! pointer and on pointers inside the structure it points to).
//!
//! A userspace server cannot read its caller's memory: CUSE makes the
//! kernel copy it, region by region, when the server asks
//! (`FUSE_IOCTL_RETRY`), and sends the request again with the regions
//! fetched. [`File::ioctl_unrestricted`](crate::File::ioctl_unrestricted)
//! runs that conversation for a driver:
//! it asks for the argument itself from the command's `_IOC` size and
//! direction (or the driver's [`IoctlLayout`]), calls the handler once it
//! is there, and turns the handler's [`Ioctl::read_user`] and
//! [`Ioctl::user_out`] (or [`Ioctl::user_inout`], both at once) of further
//! regions into another round. A handler
//! thus runs once per round, from the start, with everything it asked for
//! in earlier rounds present: it must name every region before it acts
//! (the usual shape: read the struct, read what it points to, reserve the
//! output, then act and write).
//!
//! Over FUSE (restricted ioctls) the kernel copies only what the command
//! encodes; there, [`Ioctl::read_user`] and [`Ioctl::user_out`] fail
//! `EOPNOTSUPP`, and so does a command with a declared layout.

mod ioctl;

pub use ioctl::Ioctl;

use crate::errno::{Errno, KResult};
use crate::ioctl::{Dir, IoctlCmd};

/// The most argument memory one round may fetch, and the most it may
/// write back: what one CUSE request carries (32 pages; the kernel fails
/// a larger retry `ENOMEM`, and so does the framework, before asking).
pub const IOCTL_MEM_MAX: usize = 128 * 1024;

/// The most regions one round may name (`FUSE_IOCTL_MAX_IOV`, input and
/// output together).
pub const IOCTL_MAX_REGIONS: usize = 256;

/// The argument memory of a command whose number does not encode it
/// (tty-style numbers such as `TCGETS`, `FIONREAD`): which way it goes and
/// how large it is. A driver lists these in
/// [`FileOperations::IOCTL_LAYOUTS`](crate::fops::FileOperations::IOCTL_LAYOUTS).
///
/// # Examples
///
/// ```
/// use devlife_core::ioctl::{Dir, IoctlCmd};
/// use devlife_core::uaccess::IoctlLayout;
/// // FIONREAD: `int *` out, with no _IOC bits.
/// const FIONREAD: IoctlLayout = IoctlLayout::new(IoctlCmd::from_raw(0x541b), Dir::READ, 4);
/// assert_eq!(FIONREAD.out_size(), 4);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoctlLayout {
    /// The command.
    pub cmd: IoctlCmd,
    /// Which way the argument's memory goes.
    pub dir: Dir,
    /// Its size.
    pub size: usize,
}

impl IoctlLayout {
    /// The layout of `cmd`.
    pub const fn new(cmd: IoctlCmd, dir: Dir, size: usize) -> Self {
        IoctlLayout { cmd, dir, size }
    }

    /// The layout a command encodes in its `_IOC` bits.
    pub const fn encoded(cmd: IoctlCmd) -> Self {
        IoctlLayout { cmd, dir: cmd.dir(), size: cmd.size() }
    }

    /// `cmd`'s layout: the declared one if `declared` lists it, else the
    /// encoded one. The flag says which.
    pub fn of(cmd: IoctlCmd, declared: &[IoctlLayout]) -> (IoctlLayout, bool) {
        match declared.iter().find(|l| l.cmd == cmd) {
            Some(l) => (*l, true),
            None => (Self::encoded(cmd), false),
        }
    }

    /// Bytes the caller passes in.
    pub const fn in_size(&self) -> usize {
        if self.dir.is_write() { self.size } else { 0 }
    }

    /// Bytes the driver passes out.
    pub const fn out_size(&self) -> usize {
        if self.dir.is_read() { self.size } else { 0 }
    }
}

/// A region of the caller's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserRegion {
    /// Its address in the caller.
    pub addr: u64,
    /// Its length.
    pub len: usize,
}

/// An output region reserved with [`Ioctl::user_out`], to write with
/// [`Ioctl::write_user`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserOut(pub(crate) usize);

/// How an unrestricted ioctl ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoctlOutcome {
    /// The handler returned this; the output (the argument's, then each
    /// reserved region's, in order) is in the caller's buffer.
    Done(i64),
    /// Fetch these regions and call again: `input` copied in, one after
    /// another, and `output` room to copy back.
    Fetch {
        /// Regions to copy from the caller.
        input: Vec<UserRegion>,
        /// Regions to copy back to the caller.
        output: Vec<UserRegion>,
    },
}

/// What the handler of one round may reach beyond the argument itself.
#[derive(Debug, Default)]
pub(crate) struct Reach<'a> {
    /// Whether the transport can fetch memory at all (CUSE).
    pub(crate) unrestricted: bool,
    /// Memory fetched after the argument, in the order regions were named.
    pub(crate) fetched: &'a [u8],
    /// Room for output after the argument's.
    pub(crate) out_room: usize,
    /// The argument's own input and output sizes (the limits count them).
    pub(crate) base: (usize, usize),
    pub(crate) named: Named,
}

/// The regions a handler named in one round.
#[derive(Debug, Default)]
pub(crate) struct Named {
    pub(crate) ins: Vec<UserRegion>,
    pub(crate) outs: Vec<UserRegion>,
    /// The bytes written to each output region.
    pub(crate) out_data: Vec<Vec<u8>>,
    /// A region named in this round was not fetched.
    pub(crate) missing: bool,
}

impl<'a> Reach<'a> {
    fn in_used(&self) -> usize {
        self.named.ins.iter().map(|r| r.len).sum()
    }

    fn out_used(&self) -> usize {
        self.named.outs.iter().map(|r| r.len).sum()
    }

    fn regions(&self) -> usize {
        self.named.ins.len() + self.named.outs.len()
    }

    /// Whether one more region of `len` bytes after `used` would pass a
    /// limit (the argument's two regions count; `len` may be anything a
    /// caller put in its struct).
    fn too_much(&self, used: usize, len: usize) -> bool {
        self.regions() + 2 >= IOCTL_MAX_REGIONS || used.saturating_add(len) > IOCTL_MEM_MAX
    }

    pub(crate) fn read(&mut self, addr: u64, len: usize) -> KResult<&'a [u8]> {
        if !self.unrestricted {
            return Err(Errno::EOPNOTSUPP);
        }
        let start = self.in_used();
        if self.too_much(self.base.0 + start, len) {
            return Err(Errno::ENOMEM);
        }
        self.named.ins.push(UserRegion { addr, len });
        let fetched = self.fetched;
        match fetched.get(start..start + len) {
            Some(b) => Ok(b),
            None => {
                self.named.missing = true;
                Err(Errno::EFAULT)
            }
        }
    }

    pub(crate) fn reserve(&mut self, addr: u64, len: usize) -> KResult<UserOut> {
        if !self.unrestricted {
            return Err(Errno::EOPNOTSUPP);
        }
        let start = self.out_used();
        if self.too_much(self.base.1 + start, len) {
            return Err(Errno::ENOMEM);
        }
        self.named.outs.push(UserRegion { addr, len });
        self.named.out_data.push(Vec::new());
        if start + len > self.out_room {
            self.named.missing = true;
            return Err(Errno::EFAULT);
        }
        Ok(UserOut(self.named.outs.len() - 1))
    }

    /// Names `len` bytes at `addr` both ways before failing for either.
    pub(crate) fn inout(&mut self, addr: u64, len: usize) -> KResult<(&'a [u8], UserOut)> {
        let read = self.read(addr, len);
        if matches!(read, Err(e) if e != Errno::EFAULT) {
            return Err(read.err().unwrap_or(Errno::EFAULT));
        }
        let out = self.reserve(addr, len)?;
        Ok((read?, out))
    }

    pub(crate) fn write(&mut self, out: UserOut, data: &[u8]) -> KResult<()> {
        let room = self.named.outs.get(out.0).ok_or(Errno::EINVAL)?.len;
        if data.len() > room {
            return Err(Errno::EINVAL);
        }
        self.named.out_data[out.0] = data.to_vec();
        Ok(())
    }
}

/// Runs one round of an unrestricted ioctl (see the module docs):
/// `fetched` is the memory the transport copied in for this round (the
/// argument's, then every region named before, in order), `out_room` the
/// bytes it will copy back; `call` runs the handler. The output goes to
/// `output`.
pub(crate) fn ioctl_unrestricted(
    cmd: IoctlCmd,
    arg: u64,
    layout: IoctlLayout,
    fetched: &[u8],
    out_room: usize,
    output: &mut Vec<u8>,
    call: impl FnOnce(&mut Ioctl<'_>) -> KResult<i64>,
) -> KResult<IoctlOutcome> {
    output.clear();
    let round = match Round::prepare(arg, layout, fetched.len(), out_room) {
        Ok(round) => round,
        Err(early) => return early,
    };
    let mut handler_out = Vec::new();
    let mut io = round.ioctl(cmd, arg, fetched, &mut handler_out);
    let r = call(&mut io);
    let named = io.take_named();
    round.finish(named, r, &fetched[..round.base_in], handler_out, output)
}

/// One round of an unrestricted ioctl, between the checks made before the
/// handler runs and the outcome made of what it did (the blocking and the
/// async paths share both).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Round {
    arg: u64,
    pub(crate) base_in: usize,
    base_out: usize,
    out_room: usize,
}

impl Round {
    /// The checks before the handler: `Err` is the round's outcome already
    /// (a limit, or the argument itself to fetch first).
    pub(crate) fn prepare(
        arg: u64,
        layout: IoctlLayout,
        fetched: usize,
        out_room: usize,
    ) -> Result<Round, KResult<IoctlOutcome>> {
        let round = Round { arg, base_in: layout.in_size(), base_out: layout.out_size(), out_room };
        // A declared layout may name more than one request carries.
        if round.base_in > IOCTL_MEM_MAX || round.base_out > IOCTL_MEM_MAX {
            return Err(Err(Errno::ENOMEM));
        }
        // The first round: the argument itself, before the handler sees anything.
        if fetched < round.base_in || out_room < round.base_out {
            return Err(Ok(round.fetch(&[], &[])));
        }
        Ok(round)
    }

    /// The regions to fetch: the argument's, then `extra_*`.
    fn fetch(&self, extra_in: &[UserRegion], extra_out: &[UserRegion]) -> IoctlOutcome {
        let region = |len| (len > 0).then_some(UserRegion { addr: self.arg, len });
        IoctlOutcome::Fetch {
            input: region(self.base_in).into_iter().chain(extra_in.iter().copied()).collect(),
            output: region(self.base_out).into_iter().chain(extra_out.iter().copied()).collect(),
        }
    }

    /// The handler's arguments: `fetched` as [`prepare`](Self::prepare)
    /// accepted it, the output into `handler_out`.
    pub(crate) fn ioctl<'a>(
        &self,
        cmd: IoctlCmd,
        arg: u64,
        fetched: &'a [u8],
        handler_out: &'a mut Vec<u8>,
    ) -> Ioctl<'a> {
        let (input, rest) = fetched.split_at(self.base_in);
        let reach = Reach {
            unrestricted: true,
            fetched: rest,
            out_room: self.out_room - self.base_out,
            base: (self.base_in, self.base_out),
            ..Reach::default()
        };
        Ioctl::with_reach(cmd, arg, input, handler_out, self.base_out, reach)
    }

    /// The round's outcome from what the handler named and returned; the
    /// output (`handler_out`, then every written region) goes to `output`.
    pub(crate) fn finish(
        &self,
        named: Named,
        r: KResult<i64>,
        input: &[u8],
        handler_out: Vec<u8>,
        output: &mut Vec<u8>,
    ) -> KResult<IoctlOutcome> {
        if named.missing {
            return Ok(self.fetch(&named.ins, &named.outs));
        }
        let r = r?;
        *output = handler_out;
        let base_out = self.base_out;
        if !named.outs.is_empty() {
            // Later regions follow the argument's whole size: pad what the
            // handler left unwritten with what the caller had there (its
            // input, for a read-write argument), else zeros, as a kernel
            // driver's full-struct copy_to_user would.
            let written = output.len();
            if written < base_out {
                let pad =
                    input.get(written..base_out).map_or_else(|| vec![0; base_out - written], <[u8]>::to_vec);
                output.extend_from_slice(&pad);
            }
            for (region, data) in named.outs.iter().zip(&named.out_data) {
                output.extend_from_slice(data);
                output.resize(output.len() + region.len - data.len(), 0);
            }
        }
        Ok(IoctlOutcome::Done(r))
    }
}
