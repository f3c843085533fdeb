//! A ring entry: the two buffers one request and its reply pass through,
//! the commands that register and commit it, and the handling of the
//! request it holds.

use crate::abi::OutHeader;
use crate::abi::uring::{self, CmdReq, ReqHeader};
use crate::buf::PageBuf;
use crate::decode::decode_ring;
use crate::defer::Shared as DeferShared;
use crate::dispatch::{Context, Processed, Via, decode_errno, process};
use crate::fs::Filesystem;
use io_uring::{opcode, squeue, types};
use rustix::io::Errno;
use std::sync::Arc;
use zerocopy::{FromBytes, IntoBytes};

/// The index of `/dev/fuse` in each ring's registered files: commands
/// name it as a fixed file, which spares the kernel a descriptor lookup
/// per command.
pub(super) const DEV_FUSE: types::Fixed = types::Fixed(0);

/// `struct iovec`, as `FUSE_IO_URING_CMD_REGISTER` reads two of them at
/// the SQE's `addr`.
#[repr(C)]
struct Iovec {
    base: *mut u8,
    len: usize,
}
const _: () = assert!(std::mem::size_of::<Iovec>() == 16);

/// One entry's memory: the header buffer in the first page, the payload
/// from the second, and its index in its queue (the `user_data` of its
/// commands).
///
/// # Invariants
///
/// The kernel writes a request into `mem` only while running the task
/// work of the thread that submitted the entry's last command (`REGISTER`
/// or `COMMIT_AND_FETCH`), from that submission until the completion that
/// reports the request; it reads a reply only while issuing the
/// entry's `COMMIT_AND_FETCH`. Between that completion and the next
/// submission the entry's holder has the memory to itself and may give it
/// to another thread. An entry whose command is outstanding (registered,
/// or committed and not yet completed) is dropped only after its ring is
/// closed, which cancels that command.
pub(super) struct Entry {
    mem: PageBuf,
    payload: usize,
    /// The two iovecs the registration points at; kept for the entry's
    /// life, as the kernel reads them when it issues the command.
    iov: Box<[Iovec; 2]>,
    pub(super) idx: usize,
}

// SAFETY: an entry is its own memory (`mem`) and the iovecs pointing into
// it; nothing else refers to them but the kernel, which reaches the memory
// only as the type's invariants say. An entry moves between threads only
// between a completion and the next submission (a request received and
// not yet answered, or a reply written and not yet committed), when the
// kernel does not touch it.
unsafe impl Send for Entry {}

/// The payload's offset in an entry's memory.
const PAYLOAD_AT: usize = 4096;
const _: () = assert!(std::mem::size_of::<ReqHeader>() <= PAYLOAD_AT);

impl Entry {
    pub(super) fn new(payload: usize, idx: usize) -> std::io::Result<Self> {
        let mut mem = PageBuf::new(PAYLOAD_AT + payload)?;
        let base = mem.as_mut_ptr();
        let iov = Box::new([
            Iovec { base, len: std::mem::size_of::<ReqHeader>() },
            // SAFETY: `PAYLOAD_AT + payload` bytes are mapped from `base`.
            Iovec { base: unsafe { base.add(PAYLOAD_AT) }, len: payload },
        ]);
        Ok(Entry { mem, payload, iov, idx })
    }

    /// The header and the payload, between a completion and the next
    /// submission (see the type's invariants).
    fn parts(&mut self) -> (&mut ReqHeader, &mut [u8]) {
        let (head, payload) = self.mem.as_mut_slice().split_at_mut(PAYLOAD_AT);
        let header = ReqHeader::mut_from_prefix(head)
            .map(|(h, _)| h)
            .unwrap_or_else(|_| unreachable!("a page holds a 288-byte, 8-aligned ReqHeader"));
        (header, &mut payload[..self.payload])
    }

    /// `FUSE_IO_URING_CMD_REGISTER` of this entry on queue `qid`.
    ///
    /// # Safety
    ///
    /// The command points at the entry's iovecs and, through them, at its
    /// memory: the entry must outlive the command (be dropped only as the
    /// type's invariants say).
    pub(super) unsafe fn register_sqe(&mut self, qid: u16) -> squeue::Entry128 {
        let mut sqe = opcode::UringCmd80::new(DEV_FUSE, uring::CMD_REGISTER)
            .cmd(cmd(0, qid))
            .addr(Some(self.iov.as_mut_ptr() as u64))
            .build()
            .user_data(self.idx as u64);
        set_len(&mut sqe, uring::IOV_SEGS);
        sqe
    }

    /// `FUSE_IO_URING_CMD_COMMIT_AND_FETCH` of request `commit_id`, whose
    /// reply is in this entry, on queue `qid`. The command carries no
    /// pointer: the kernel finds the entry by the request's id.
    pub(super) fn commit_sqe(&self, commit_id: u64, qid: u16) -> squeue::Entry128 {
        opcode::UringCmd80::new(DEV_FUSE, uring::CMD_COMMIT_AND_FETCH)
            .cmd(cmd(commit_id, qid))
            .build()
            .user_data(self.idx as u64)
    }

    /// Handles the request in this entry and writes its reply here, or
    /// leaves it to a deferred reply ([`crate::defer`]).
    pub(super) fn handle<F: Filesystem>(&mut self, cx: &Context<'_, F>, out: &mut Vec<u8>) -> Handled {
        let (header, payload) = self.parts();
        let commit_id = header.ent.commit_id;
        let used = (header.ent.payload_sz as usize).min(payload.len());
        let status = match decode_ring(header, &payload[..used]) {
            Ok(req) => match process(cx, req, Via::Ring, out) {
                Processed::Reply(r) => r,
                Processed::Deferred(d) => return Handled::Deferred(commit_id, d),
                // Interrupts and forgets never come through a ring.
                Processed::NoReply => Err(Errno::INVAL),
            },
            Err(e) => {
                tracing::warn!("malformed ring request: {e}");
                Err(decode_errno(&e))
            }
        };
        match status {
            Ok(()) => self.write_reply(commit_id, 0, out),
            Err(e) => self.write_reply(commit_id, -e.raw_os_error(), &[]),
        }
        Handled::Commit(commit_id)
    }

    /// Writes a reply for request `commit_id` into this entry: `error` 0
    /// with `body`, or a negative errno (`EIO` for a body the payload
    /// cannot hold).
    pub(super) fn write_reply(&mut self, commit_id: u64, error: i32, body: &[u8]) {
        let (header, payload) = self.parts();
        let (error, body) =
            if body.len() <= payload.len() { (error, body) } else { (-Errno::IO.raw_os_error(), &[][..]) };
        let body = if error == 0 { body } else { &[] };
        payload[..body.len()].copy_from_slice(body);
        header.ent.payload_sz = body.len() as u32;
        let oh = OutHeader { len: (16 + body.len()) as u32, error, unique: commit_id };
        header.in_out[..16].copy_from_slice(oh.as_bytes());
    }
}

/// How a ring request was handled.
pub(super) enum Handled {
    /// The reply is in the entry: commit it with this id.
    Commit(u64),
    /// Deferred: the entry waits for the reply (request `commit_id`).
    Deferred(u64, Arc<DeferShared>),
}

/// Sets `sqe->len`, which `opcode::UringCmd80` does not expose and
/// `FUSE_IO_URING_CMD_REGISTER` requires (the number of iovecs at `addr`).
fn set_len(e: &mut squeue::Entry128, len: u32) {
    // `squeue::Entry128` is `#[repr(C)]`: the kernel's 64-byte `struct
    // io_uring_sqe`, then the 64 more bytes of a 128-byte SQE, as the crate
    // copies it into the submission ring; `len` is the `__u32` at byte 24
    // of `io_uring_sqe` (include/uapi/linux/io_uring.h).
    const _: () = assert!(std::mem::size_of::<squeue::Entry128>() == 128);
    let p = (e as *mut squeue::Entry128).cast::<u8>();
    // SAFETY: `e` is an exclusively borrowed, initialised 128-byte value;
    // bytes 24..28 are the SQE's `len` field (no padding), so writing four
    // initialised bytes there, unaligned, leaves it a valid SQE.
    unsafe { p.add(24).cast::<[u8; 4]>().write_unaligned(len.to_ne_bytes()) };
}

/// The command area of an SQE: `struct fuse_uring_cmd_req`.
fn cmd(commit_id: u64, qid: u16) -> [u8; 80] {
    let mut c = [0u8; 80];
    let req = CmdReq { commit_id, qid, ..Default::default() };
    c[..std::mem::size_of::<CmdReq>()].copy_from_slice(req.as_bytes());
    c
}
