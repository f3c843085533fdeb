//! Decoding one request into a typed [`Request`]: read from `/dev/fuse`
//! ([`decode`]) or taken from an io_uring entry ([`decode_ring`]).
//!
//! Pure: bytes in, a request or a [`DecodeError`] out. Every length comes
//! from the kernel and is checked before use; nothing here can panic on
//! input. Both forms go through one table of operations: a request is a
//! header, the operation's fixed-size argument, then its variable part (a
//! name, write data, ioctl input), in one buffer from `/dev/fuse` and in
//! two (the entry's argument area and its payload) from a ring.

use crate::abi::{self, op};
use zerocopy::FromBytes;

/// Why a request could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than a request header.
    #[error("request of {0} bytes is shorter than its header")]
    ShortHeader(usize),
    /// The header's length disagrees with the bytes read.
    #[error("header says {header} bytes, {read} were read")]
    LengthMismatch {
        /// `fuse_in_header.len`.
        header: u32,
        /// Bytes read.
        read: usize,
    },
    /// The payload is shorter than the operation's argument structure.
    #[error("{op} payload truncated")]
    Truncated {
        /// The operation's name.
        op: &'static str,
    },
    /// A name is not NUL-terminated.
    #[error("{op} name not NUL-terminated")]
    MissingNul {
        /// The operation's name.
        op: &'static str,
    },
    /// A ring entry's header claims a length its argument area and payload
    /// cannot hold.
    #[error(
        "ring request of {header} bytes does not fit a 40-byte header, the argument area and a {payload}-byte payload"
    )]
    RingLength {
        /// `fuse_in_header.len`.
        header: u32,
        /// The payload bytes the entry says it carries.
        payload: usize,
    },
}

/// A decoded request: its header and operation.
#[derive(Debug)]
pub struct Request<'a> {
    /// The header (unique id, node id, caller's credentials).
    pub header: abi::InHeader,
    /// The operation.
    pub op: Operation<'a>,
}

/// One FUSE operation with its arguments, borrowing the read buffer.
#[derive(Debug)]
#[allow(missing_docs)] // variants and fields are the protocol's
pub enum Operation<'a> {
    Init {
        arg: abi::InitIn,
        /// The flags' upper 32 bits (`FUSE_INIT_EXT`), 0 if absent.
        flags2: u32,
    },
    /// The first request on a `/dev/cuse` channel.
    CuseInit(abi::CuseInitIn),
    Destroy,
    Lookup {
        name: &'a [u8],
    },
    Forget(abi::ForgetIn),
    BatchForget(Vec<abi::ForgetOne>),
    Getattr(abi::GetattrIn),
    Setattr(abi::SetattrIn),
    Readlink,
    Open(abi::OpenIn),
    Read(abi::ReadIn),
    Write {
        arg: abi::WriteIn,
        data: &'a [u8],
    },
    Flush(abi::FlushIn),
    Release(abi::ReleaseIn),
    Opendir(abi::OpenIn),
    Readdir {
        arg: abi::ReadIn,
        plus: bool,
    },
    Releasedir(abi::ReleaseIn),
    Ioctl {
        arg: abi::IoctlIn,
        data: &'a [u8],
    },
    Poll(abi::PollIn),
    Interrupt(abi::InterruptIn),
    Statfs,
    Access(abi::AccessIn),
    /// `name` in the parent, of a type and mode (MKNOD).
    Mknod {
        arg: abi::MknodIn,
        name: &'a [u8],
    },
    Mkdir {
        arg: abi::MkdirIn,
        name: &'a [u8],
    },
    /// `name` in the parent, pointing at `target`.
    Symlink {
        name: &'a [u8],
        target: &'a [u8],
    },
    Unlink {
        name: &'a [u8],
    },
    Rmdir {
        name: &'a [u8],
    },
    /// `name` in the parent to `newname` in `newdir` (RENAME and RENAME2;
    /// `flags` 0 for RENAME).
    Rename {
        newdir: u64,
        flags: u32,
        name: &'a [u8],
        newname: &'a [u8],
    },
    /// A new name `name` in the parent for `arg.oldnodeid`.
    Link {
        arg: abi::LinkIn,
        name: &'a [u8],
    },
    /// open(2) with `O_CREAT` of `name` in the parent.
    Create {
        arg: abi::CreateIn,
        name: &'a [u8],
    },
    /// Any opcode this server does not implement (answered `ENOSYS`).
    Unsupported(u32),
}

impl Operation<'_> {
    /// The opcode's name, as `fuse.h` spells it (`"READ"`).
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Init { .. } => "INIT",
            Operation::CuseInit(_) => "CUSE_INIT",
            Operation::Destroy => "DESTROY",
            Operation::Lookup { .. } => "LOOKUP",
            Operation::Forget(_) => "FORGET",
            Operation::BatchForget(_) => "BATCH_FORGET",
            Operation::Getattr(_) => "GETATTR",
            Operation::Setattr(_) => "SETATTR",
            Operation::Readlink => "READLINK",
            Operation::Open(_) => "OPEN",
            Operation::Read(_) => "READ",
            Operation::Write { .. } => "WRITE",
            Operation::Flush(_) => "FLUSH",
            Operation::Release(_) => "RELEASE",
            Operation::Opendir(_) => "OPENDIR",
            Operation::Readdir { plus: false, .. } => "READDIR",
            Operation::Readdir { plus: true, .. } => "READDIRPLUS",
            Operation::Releasedir(_) => "RELEASEDIR",
            Operation::Ioctl { .. } => "IOCTL",
            Operation::Poll(_) => "POLL",
            Operation::Interrupt(_) => "INTERRUPT",
            Operation::Statfs => "STATFS",
            Operation::Access(_) => "ACCESS",
            Operation::Mknod { .. } => "MKNOD",
            Operation::Mkdir { .. } => "MKDIR",
            Operation::Symlink { .. } => "SYMLINK",
            Operation::Unlink { .. } => "UNLINK",
            Operation::Rmdir { .. } => "RMDIR",
            Operation::Rename { .. } => "RENAME",
            Operation::Link { .. } => "LINK",
            Operation::Create { .. } => "CREATE",
            // Named as `fuse.h` names it (`GETXATTR`), for the logs.
            Operation::Unsupported(op) => abi::op::name(*op).unwrap_or("UNKNOWN"),
        }
    }

    /// Whether the kernel expects no reply (FORGET and BATCH_FORGET).
    pub fn no_reply(&self) -> bool {
        matches!(self, Operation::Forget(_) | Operation::BatchForget(_))
    }
}

/// An operation's arguments: its fixed-size argument structure, then the
/// variable part.
#[derive(Clone, Copy)]
struct Args<'a> {
    /// From `/dev/fuse`: everything after the header. From a ring: the
    /// fixed-size argument only.
    fixed: &'a [u8],
    /// From a ring: the payload, holding the variable part.
    rest: Option<&'a [u8]>,
}

impl<'a> Args<'a> {
    /// The fixed-size argument, and the variable part after it.
    fn fixed<T: FromBytes + Copy>(self, op: &'static str) -> Result<(T, &'a [u8]), DecodeError> {
        let (t, after) = T::read_from_prefix(self.fixed).map_err(|_| DecodeError::Truncated { op })?;
        Ok((t, self.rest.unwrap_or(after)))
    }

    /// The variable part of an operation without a fixed-size argument.
    fn all(self) -> &'a [u8] {
        self.rest.unwrap_or(self.fixed)
    }
}

fn name<'a>(data: &'a [u8], op: &'static str) -> Result<&'a [u8], DecodeError> {
    Ok(name_and_rest(data, op)?.0)
}

/// A NUL-terminated name, and what follows its NUL.
fn name_and_rest<'a>(data: &'a [u8], op: &'static str) -> Result<(&'a [u8], &'a [u8]), DecodeError> {
    let nul = data.iter().position(|&b| b == 0).ok_or(DecodeError::MissingNul { op })?;
    Ok((&data[..nul], &data[nul + 1..]))
}

/// Two NUL-terminated names, one after the other.
fn two_names<'a>(data: &'a [u8], op: &'static str) -> Result<(&'a [u8], &'a [u8]), DecodeError> {
    let (a, rest) = name_and_rest(data, op)?;
    Ok((a, name(rest, op)?))
}

/// Decodes the request in `buf` (exactly the bytes one read of `/dev/fuse`
/// returned).
pub fn decode(buf: &[u8]) -> Result<Request<'_>, DecodeError> {
    let (header, data) =
        abi::InHeader::read_from_prefix(buf).map_err(|_| DecodeError::ShortHeader(buf.len()))?;
    if header.len as usize != buf.len() {
        return Err(DecodeError::LengthMismatch { header: header.len, read: buf.len() });
    }
    let op = decode_op(&header, Args { fixed: data, rest: None })?;
    Ok(Request { header, op })
}

/// Decodes the request a ring entry holds: its header buffer (`in_out`,
/// `op_in`) and the first `payload_sz` bytes of its payload (`payload`).
///
/// The kernel does not say how long the fixed-size argument in `op_in` is;
/// the header's length does: `len = 40 + argument + payload`.
pub fn decode_ring<'a>(
    entry: &'a abi::uring::ReqHeader,
    payload: &'a [u8],
) -> Result<Request<'a>, DecodeError> {
    let (header, _) = abi::InHeader::read_from_prefix(&entry.in_out[..])
        .map_err(|_| DecodeError::ShortHeader(entry.in_out.len()))?;
    let fixed_len = (header.len as usize)
        .checked_sub(std::mem::size_of::<abi::InHeader>() + payload.len())
        .filter(|&n| n <= entry.op_in.len())
        .ok_or(DecodeError::RingLength { header: header.len, payload: payload.len() })?;
    let op = decode_op(&header, Args { fixed: &entry.op_in[..fixed_len], rest: Some(payload) })?;
    Ok(Request { header, op })
}

fn decode_op<'a>(header: &abi::InHeader, args: Args<'a>) -> Result<Operation<'a>, DecodeError> {
    let op = match header.opcode {
        op::INIT => {
            let (arg, rest): (abi::InitIn, _) = args.fixed("INIT")?;
            let flags2 = if arg.flags & abi::init::INIT_EXT != 0 {
                u32::read_from_prefix(rest).map_or(0, |(f, _)| f)
            } else {
                0
            };
            Operation::Init { arg, flags2 }
        }
        op::CUSE_INIT => Operation::CuseInit(args.fixed("CUSE_INIT")?.0),
        op::DESTROY => Operation::Destroy,
        op::LOOKUP => Operation::Lookup { name: name(args.all(), "LOOKUP")? },
        op::FORGET => Operation::Forget(args.fixed("FORGET")?.0),
        op::BATCH_FORGET => {
            let (h, mut rest): (abi::BatchForgetIn, _) = args.fixed("BATCH_FORGET")?;
            let mut v = Vec::with_capacity((h.count as usize).min(rest.len() / 16));
            for _ in 0..h.count {
                let (one, r) = abi::ForgetOne::read_from_prefix(rest)
                    .map_err(|_| DecodeError::Truncated { op: "BATCH_FORGET" })?;
                v.push(one);
                rest = r;
            }
            Operation::BatchForget(v)
        }
        op::GETATTR => Operation::Getattr(args.fixed("GETATTR")?.0),
        op::SETATTR => Operation::Setattr(args.fixed("SETATTR")?.0),
        op::READLINK => Operation::Readlink,
        op::OPEN => Operation::Open(args.fixed("OPEN")?.0),
        op::READ => Operation::Read(args.fixed("READ")?.0),
        op::WRITE => {
            let (a, rest): (abi::WriteIn, _) = args.fixed("WRITE")?;
            let payload = rest.get(..a.size as usize).ok_or(DecodeError::Truncated { op: "WRITE" })?;
            Operation::Write { arg: a, data: payload }
        }
        op::FLUSH => Operation::Flush(args.fixed("FLUSH")?.0),
        op::RELEASE => Operation::Release(args.fixed("RELEASE")?.0),
        op::OPENDIR => Operation::Opendir(args.fixed("OPENDIR")?.0),
        op::READDIR => Operation::Readdir { arg: args.fixed("READDIR")?.0, plus: false },
        op::READDIRPLUS => Operation::Readdir { arg: args.fixed("READDIRPLUS")?.0, plus: true },
        op::RELEASEDIR => Operation::Releasedir(args.fixed("RELEASEDIR")?.0),
        op::IOCTL => {
            let (a, rest): (abi::IoctlIn, _) = args.fixed("IOCTL")?;
            let payload = rest.get(..a.in_size as usize).ok_or(DecodeError::Truncated { op: "IOCTL" })?;
            Operation::Ioctl { arg: a, data: payload }
        }
        op::POLL => Operation::Poll(args.fixed("POLL")?.0),
        op::INTERRUPT => Operation::Interrupt(args.fixed("INTERRUPT")?.0),
        op::STATFS => Operation::Statfs,
        op::ACCESS => Operation::Access(args.fixed("ACCESS")?.0),
        op::MKNOD => {
            let (arg, rest) = args.fixed("MKNOD")?;
            Operation::Mknod { arg, name: name(rest, "MKNOD")? }
        }
        op::MKDIR => {
            let (arg, rest) = args.fixed("MKDIR")?;
            Operation::Mkdir { arg, name: name(rest, "MKDIR")? }
        }
        op::SYMLINK => {
            let (name, target) = two_names(args.all(), "SYMLINK")?;
            Operation::Symlink { name, target }
        }
        op::UNLINK => Operation::Unlink { name: name(args.all(), "UNLINK")? },
        op::RMDIR => Operation::Rmdir { name: name(args.all(), "RMDIR")? },
        op::RENAME => {
            let (arg, rest): (abi::RenameIn, _) = args.fixed("RENAME")?;
            let (name, newname) = two_names(rest, "RENAME")?;
            Operation::Rename { newdir: arg.newdir, flags: 0, name, newname }
        }
        op::RENAME2 => {
            let (arg, rest): (abi::Rename2In, _) = args.fixed("RENAME2")?;
            let (name, newname) = two_names(rest, "RENAME2")?;
            Operation::Rename { newdir: arg.newdir, flags: arg.flags, name, newname }
        }
        op::LINK => {
            let (arg, rest) = args.fixed("LINK")?;
            Operation::Link { arg, name: name(rest, "LINK")? }
        }
        op::CREATE => {
            let (arg, rest) = args.fixed("CREATE")?;
            Operation::Create { arg, name: name(rest, "CREATE")? }
        }
        other => Operation::Unsupported(other),
    };
    Ok(op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    fn req(opcode: u32, payload: &[u8]) -> Vec<u8> {
        let h = abi::InHeader {
            len: (40 + payload.len()) as u32,
            opcode,
            unique: 7,
            nodeid: 1,
            ..Default::default()
        };
        let mut v = h.as_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn lookup_name() {
        let b = req(op::LOOKUP, b"xyz0\0");
        let r = decode(&b).unwrap();
        assert_eq!(r.header.unique, 7);
        assert!(matches!(r.op, Operation::Lookup { name: b"xyz0" }));
    }

    #[test]
    fn malformed_requests_are_typed_errors() {
        assert_eq!(decode(&[0u8; 10]).unwrap_err(), DecodeError::ShortHeader(10));
        let mut b = req(op::LOOKUP, b"x\0");
        b.push(0);
        assert!(matches!(decode(&b).unwrap_err(), DecodeError::LengthMismatch { .. }));
        assert_eq!(decode(&req(op::LOOKUP, b"x")).unwrap_err(), DecodeError::MissingNul { op: "LOOKUP" });
        assert_eq!(decode(&req(op::READ, &[0; 8])).unwrap_err(), DecodeError::Truncated { op: "READ" });
        // A write claiming more data than it carries.
        let w = abi::WriteIn { size: 100, ..Default::default() };
        assert_eq!(
            decode(&req(op::WRITE, w.as_bytes())).unwrap_err(),
            DecodeError::Truncated { op: "WRITE" }
        );
        // A batch forget claiming more entries than it carries.
        let bf = abi::BatchForgetIn { count: u32::MAX, dummy: 0 };
        assert_eq!(
            decode(&req(op::BATCH_FORGET, bf.as_bytes())).unwrap_err(),
            DecodeError::Truncated { op: "BATCH_FORGET" }
        );
    }

    /// A ring entry as the kernel fills it: the header, the fixed-size
    /// argument in `op_in`, the rest in the payload.
    fn ring(opcode: u32, fixed: &[u8], payload: &[u8]) -> abi::uring::ReqHeader {
        use zerocopy::FromZeros;
        let mut e = abi::uring::ReqHeader::new_zeroed();
        let h = abi::InHeader {
            len: (40 + fixed.len() + payload.len()) as u32,
            opcode,
            unique: 9,
            nodeid: 1,
            ..Default::default()
        };
        e.in_out[..40].copy_from_slice(h.as_bytes());
        e.op_in[..fixed.len()].copy_from_slice(fixed);
        e.ent.payload_sz = payload.len() as u32;
        e
    }

    #[test]
    fn ring_requests_decode_as_from_dev_fuse() {
        // LOOKUP has no fixed-size argument: the name is the payload.
        let e = ring(op::LOOKUP, &[], b"xyz0\0");
        assert!(matches!(decode_ring(&e, b"xyz0\0").unwrap().op, Operation::Lookup { name: b"xyz0" }));
        // WRITE: the argument in op_in, the data in the payload.
        let w = abi::WriteIn { size: 4, ..Default::default() };
        let e = ring(op::WRITE, w.as_bytes(), b"abcd");
        match decode_ring(&e, b"abcd").unwrap().op {
            Operation::Write { arg, data } => assert_eq!((arg.size, data), (4, &b"abcd"[..])),
            op => panic!("{op:?}"),
        }
        // The same bytes through /dev/fuse decode alike.
        let mut flat = w.as_bytes().to_vec();
        flat.extend_from_slice(b"abcd");
        assert!(matches!(decode(&req(op::WRITE, &flat)).unwrap().op, Operation::Write { data: b"abcd", .. }));
    }

    #[test]
    fn ring_lengths_are_checked() {
        // The header claims less than the payload it came with.
        let mut e = ring(op::LOOKUP, &[], b"x\0");
        e.in_out[..4].copy_from_slice(&41u32.to_ne_bytes());
        assert_eq!(decode_ring(&e, b"x\0").unwrap_err(), DecodeError::RingLength { header: 41, payload: 2 });
        // More than the argument area holds.
        e.in_out[..4].copy_from_slice(&(40u32 + 129 + 2).to_ne_bytes());
        assert!(matches!(decode_ring(&e, b"x\0").unwrap_err(), DecodeError::RingLength { .. }));
        // A fixed-size argument shorter than the operation's.
        let e = ring(op::READ, &[0; 8], &[]);
        assert_eq!(decode_ring(&e, &[]).unwrap_err(), DecodeError::Truncated { op: "READ" });
        // Junk of every shape decodes or fails, never panics.
        for opcode in 0..64 {
            for fixed in [0usize, 8, 40, 128] {
                for payload in [0usize, 3, 64] {
                    let mut e = ring(opcode, &vec![0xa5; fixed], &vec![0x5a; payload]);
                    let _ = decode_ring(&e, &vec![0x5a; payload]);
                    e.in_out[..4].copy_from_slice(&u32::MAX.to_ne_bytes());
                    let _ = decode_ring(&e, &vec![0x5a; payload]);
                }
            }
        }
    }

    #[test]
    fn init_reads_flags2_only_with_init_ext() {
        let mut i = abi::InitIn { major: 7, minor: 45, max_readahead: 0, flags: abi::init::INIT_EXT };
        let mut b = i.as_bytes().to_vec();
        b.extend_from_slice(&abi::init2::OVER_IO_URING.to_ne_bytes());
        assert!(matches!(
            decode(&req(op::INIT, &b)).unwrap().op,
            Operation::Init { flags2: abi::init2::OVER_IO_URING, .. }
        ));
        i.flags = 0;
        let mut b = i.as_bytes().to_vec();
        b.extend_from_slice(&abi::init2::OVER_IO_URING.to_ne_bytes());
        assert!(matches!(decode(&req(op::INIT, &b)).unwrap().op, Operation::Init { flags2: 0, .. }));
    }

    #[test]
    fn namespace_operations_carry_their_names() {
        let mk = abi::MkdirIn { mode: 0o755, umask: 0o022 };
        let mut b = mk.as_bytes().to_vec();
        b.extend_from_slice(b"d\0");
        assert!(matches!(decode(&req(op::MKDIR, &b)).unwrap().op, Operation::Mkdir { name: b"d", .. }));
        assert!(matches!(
            decode(&req(op::SYMLINK, b"l\0target\0")).unwrap().op,
            Operation::Symlink { name: b"l", target: b"target" }
        ));
        let rn = abi::Rename2In { newdir: 5, flags: 1, padding: 0 };
        let mut b = rn.as_bytes().to_vec();
        b.extend_from_slice(b"a\0b\0");
        assert!(matches!(
            decode(&req(op::RENAME2, &b)).unwrap().op,
            Operation::Rename { newdir: 5, flags: 1, name: b"a", newname: b"b" }
        ));
        assert_eq!(
            decode(&req(op::SYMLINK, b"l\0t")).unwrap_err(),
            DecodeError::MissingNul { op: "SYMLINK" }
        );
        assert_eq!(decode(&req(op::UNLINK, b"")).unwrap_err(), DecodeError::MissingNul { op: "UNLINK" });
    }

    #[test]
    fn unknown_opcode_is_unsupported_not_an_error() {
        assert!(matches!(decode(&req(9999, &[])).unwrap().op, Operation::Unsupported(9999)));
        assert_eq!(decode(&req(9999, &[])).unwrap().op.name(), "UNKNOWN");
        assert_eq!(decode(&req(22, &[])).unwrap().op.name(), "GETXATTR");
        assert_eq!(decode(&req(52, &[])).unwrap().op.name(), "STATX");
        // Every opcode the decoder knows has the name `fuse.h` gives it.
        for op in 0..64u32 {
            if let Ok(r) = decode(&req(op, &[0; 256])) {
                if !matches!(r.op, Operation::Unsupported(_)) {
                    // RENAME2 is decoded as a RENAME with flags.
                    let want = if op == op::RENAME2 { Some("RENAME") } else { abi::op::name(op) };
                    assert_eq!(Some(r.op.name()), want, "opcode {op}");
                }
            }
        }
    }

    #[test]
    fn no_input_panics() {
        // Every prefix of valid requests, and arbitrary opcodes over junk.
        let samples = [req(op::WRITE, &[0xff; 64]), req(op::IOCTL, &[0xff; 64]), req(op::INIT, &[1; 16])];
        for s in samples {
            for n in 0..=s.len() {
                let _ = decode(&s[..n]);
            }
        }
        for opcode in 0..64 {
            for len in 0..80 {
                let _ = decode(&req(opcode, &vec![0xa5; len]));
            }
        }
    }
}
