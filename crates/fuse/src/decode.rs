//! Decoding one request read from `/dev/fuse` into a typed [`Request`].
//!
//! Pure: bytes in, a request or a [`DecodeError`] out. Every length comes
//! from the kernel and is checked before use; nothing here can panic on
//! input.

use crate::abi::{self, op};
use zerocopy::FromBytes;

/// Why a request could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
    Init(abi::InitIn),
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
    /// Any opcode this server does not implement (answered `ENOSYS`).
    Unsupported(u32),
}

impl Operation<'_> {
    /// Whether the kernel expects no reply (FORGET and BATCH_FORGET).
    pub fn no_reply(&self) -> bool {
        matches!(self, Operation::Forget(_) | Operation::BatchForget(_))
    }
}

fn arg<'a, T: FromBytes + Copy>(data: &'a [u8], op: &'static str) -> Result<(T, &'a [u8]), DecodeError> {
    T::read_from_prefix(data).map_err(|_| DecodeError::Truncated { op })
}

fn name<'a>(data: &'a [u8], op: &'static str) -> Result<&'a [u8], DecodeError> {
    let nul = data.iter().position(|&b| b == 0).ok_or(DecodeError::MissingNul { op })?;
    Ok(&data[..nul])
}

/// Decodes the request in `buf` (exactly the bytes one read returned).
pub fn decode(buf: &[u8]) -> Result<Request<'_>, DecodeError> {
    let (header, data) =
        abi::InHeader::read_from_prefix(buf).map_err(|_| DecodeError::ShortHeader(buf.len()))?;
    if header.len as usize != buf.len() {
        return Err(DecodeError::LengthMismatch { header: header.len, read: buf.len() });
    }
    let op = match header.opcode {
        op::INIT => Operation::Init(arg(data, "INIT")?.0),
        op::DESTROY => Operation::Destroy,
        op::LOOKUP => Operation::Lookup { name: name(data, "LOOKUP")? },
        op::FORGET => Operation::Forget(arg(data, "FORGET")?.0),
        op::BATCH_FORGET => {
            let (h, mut rest): (abi::BatchForgetIn, _) = arg(data, "BATCH_FORGET")?;
            let mut v = Vec::with_capacity((h.count as usize).min(rest.len() / 16));
            for _ in 0..h.count {
                let (one, r) = arg::<abi::ForgetOne>(rest, "BATCH_FORGET")?;
                v.push(one);
                rest = r;
            }
            Operation::BatchForget(v)
        }
        op::GETATTR => Operation::Getattr(arg(data, "GETATTR")?.0),
        op::SETATTR => Operation::Setattr(arg(data, "SETATTR")?.0),
        op::READLINK => Operation::Readlink,
        op::OPEN => Operation::Open(arg(data, "OPEN")?.0),
        op::READ => Operation::Read(arg(data, "READ")?.0),
        op::WRITE => {
            let (a, rest): (abi::WriteIn, _) = arg(data, "WRITE")?;
            let payload = rest.get(..a.size as usize).ok_or(DecodeError::Truncated { op: "WRITE" })?;
            Operation::Write { arg: a, data: payload }
        }
        op::FLUSH => Operation::Flush(arg(data, "FLUSH")?.0),
        op::RELEASE => Operation::Release(arg(data, "RELEASE")?.0),
        op::OPENDIR => Operation::Opendir(arg(data, "OPENDIR")?.0),
        op::READDIR => Operation::Readdir { arg: arg(data, "READDIR")?.0, plus: false },
        op::READDIRPLUS => Operation::Readdir { arg: arg(data, "READDIRPLUS")?.0, plus: true },
        op::RELEASEDIR => Operation::Releasedir(arg(data, "RELEASEDIR")?.0),
        op::IOCTL => {
            let (a, rest): (abi::IoctlIn, _) = arg(data, "IOCTL")?;
            let payload = rest.get(..a.in_size as usize).ok_or(DecodeError::Truncated { op: "IOCTL" })?;
            Operation::Ioctl { arg: a, data: payload }
        }
        op::POLL => Operation::Poll(arg(data, "POLL")?.0),
        op::INTERRUPT => Operation::Interrupt(arg(data, "INTERRUPT")?.0),
        op::STATFS => Operation::Statfs,
        op::ACCESS => Operation::Access(arg(data, "ACCESS")?.0),
        other => Operation::Unsupported(other),
    };
    Ok(Request { header, op })
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

    #[test]
    fn unknown_opcode_is_unsupported_not_an_error() {
        assert!(matches!(decode(&req(9999, &[])).unwrap().op, Operation::Unsupported(9999)));
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
