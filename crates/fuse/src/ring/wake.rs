//! Waking a queue's leader where it waits: in `io_uring_enter` on the
//! queue's ring.
//!
//! A thread that does not lead the queue posts a completion straight into
//! the ring's completion queue with `IORING_REGISTER_SEND_MSG_RING` (Linux
//! 6.13; FUSE over io_uring needs 6.14): a synchronous `IORING_OP_MSG_RING`
//! that needs no ring of the sender's own. For a ring without
//! `IORING_SETUP_DEFER_TASKRUN` the kernel posts the completion at once and
//! wakes the ring's waiters (`io_msg_ring_data`): no task work, so it
//! reaches the leader whatever the thread that last armed anything on the
//! ring is doing. An `eventfd` read armed on the ring, the usual way, would
//! complete through the task work of the thread that armed it, which may be
//! asleep in a handler.

use io_uring::{opcode, squeue, types};
use std::os::fd::RawFd;

/// The `user_data` of a wake-up's completion (entries use their index).
pub(super) const WAKE: u64 = u64::MAX;

/// `IORING_REGISTER_SEND_MSG_RING` (`include/uapi/linux/io_uring.h`).
const REGISTER_SEND_MSG_RING: libc::c_uint = 31;

/// Posts a [`WAKE`] completion on the ring `ring_fd`.
///
/// The caller keeps the ring open meanwhile (a closed descriptor could
/// name another file by then: the kernel refuses anything but a ring,
/// `EBADFD`, but it could be another ring of this process).
pub(super) fn post(ring_fd: RawFd) -> std::io::Result<()> {
    let sqe: squeue::Entry = opcode::MsgRingData::new(types::Fd(ring_fd), 0, WAKE, None).build();
    // SAFETY: `io_uring_register(-1, IORING_REGISTER_SEND_MSG_RING, sqe,
    // 1)` reads one 64-byte SQE at `sqe` (a live local, the kernel's
    // `struct io_uring_sqe` layout: `squeue::Entry` is `#[repr(C)]` over
    // it) and writes nothing of ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            -1 as libc::c_int,
            REGISTER_SEND_MSG_RING,
            (&raw const sqe).cast::<libc::c_void>(),
            1 as libc::c_uint,
        )
    };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}
