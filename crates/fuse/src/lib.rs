//! A FUSE server transport, written for device servers.
//!
//! Why not fuser: fuser 0.18 answers `FUSE_INTERRUPT` with `ENOSYS`, after
//! which the kernel waits out every request the server holds, so a process
//! blocked in `read(2)` on a device node can be stopped by neither Ctrl-C
//! nor SIGKILL; its worker pool is fixed, so blocking handlers starve it;
//! and notifications sent from a handler can deadlock. This crate handles
//! interrupts, grows its pool when every worker is busy, and sends entry
//! notifications from a thread of their own. It knows nothing of devices.
//!
//! * [`abi`]: the kernel ABI (`fuse.h`), read with `zerocopy`.
//! * [`decode`]: bytes to a typed [`Operation`](decode::Operation), with a
//!   typed [`DecodeError`](decode::DecodeError).
//! * [`mount`]: `mount(2)` as root, `fusermount3` otherwise, stale mounts.
//! * [`Session`]: INIT, workers, interrupts, dispatch to a [`Filesystem`].
//! * [`Deferred`]: a reply sent later, from any thread
//!   ([`Req::defer`]): a request that waits holds no worker.
//! * [`cuse`]: a character device through `/dev/cuse` ([`CuseDevice`]).
//! * [`Notifier`]: poll wake-ups, entry invalidation and deletion.

pub mod abi;
mod buf;
pub mod cuse;
pub mod decode;
mod defer;
mod dev;
mod dispatch;
mod fs;
mod inflight;
pub mod mount;
mod notify;
mod reply;
mod ring;
mod session;
mod signal;

pub use cuse::CuseDevice;
pub use defer::Deferred;
pub use fs::{DirBuf, Entry, FileAttr, Filesystem, IoVec, IoctlArgs, IoctlReply, Opened, ReadArgs, Req};
pub use notify::Notifier;
pub use rustix::io::Errno;
pub use session::{Config, Counters, Negotiated, Session, Transport, TransportStats};
