//! Kicks: a request a queue sends itself after it grew, so that requests
//! already waiting in the kernel's queue reach the new entry (see "Kicks"
//! in the parent module).

use super::queue::Queue;
use crate::fs::Filesystem;
use crate::session::Shared;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;

/// What the kicker is sent when the session ends (no queue has it).
pub(super) const END: u16 = u16::MAX;

/// For each `(queue, n)` it is told about, starts a thread that sends `n`
/// `STATFS`, one after another, from that queue's CPU (one per entry the
/// queue added: each reply's commit fetches one request waiting in the
/// kernel; see "Kicks": never from this thread); until it is sent [`END`].
pub(super) fn kicker<F: Filesystem>(s: &Arc<Shared<F>>, queues: &[Arc<Queue>], rx: Receiver<(u16, usize)>) {
    let Some(dir) = s.config.mount_dir.clone() else {
        tracing::warn!("no mount directory: ring queues that grow are not kicked");
        return;
    };
    for (qid, n) in rx {
        if qid == END || s.is_ended() {
            break;
        }
        let Some(q) = queues.get(usize::from(qid)) else { continue };
        let (q, stats, dir) = (q.clone(), s.stats.clone(), dir.clone());
        let sent = std::thread::Builder::new().name(format!("fuse-kick-{qid}")).spawn(move || {
            super::pin(&q);
            // The answers do not matter, only that replies are committed.
            if let Err(e) = kick(&dir, n, &stats) {
                tracing::debug!("kick: {e}");
            }
        });
        if let Err(e) = sent {
            tracing::warn!("kicker: cannot start a kick: {e}");
        }
    }
}

/// Sends `n` `STATFS` through the mount at `dir`, from a thread whose
/// descriptor table holds nothing else.
///
/// A request to our own mount may be read by a worker and then never be
/// answered: the server killed (SIGKILL) before the reply. The kernel
/// then waits for it uninterruptibly (a sent request ends only with its
/// reply or the connection's abort), and the connection is aborted only
/// when the last descriptor of `/dev/fuse` is released, which a thread
/// sharing the server's descriptor table would prevent from exiting: the
/// killed server would stay a zombie with this thread in state D forever
/// (seen in `server_killed_while_clients_are_blocked`). So the thread
/// first takes a table of its own (`unshare(CLONE_FILES)`) and closes
/// every copy in it: the server's table, and with it `/dev/fuse`, is then
/// released when its other threads exit, the abort ends this request, and
/// this thread exits too.
fn kick(dir: &std::path::Path, n: usize, stats: &crate::session::TransportStats) -> rustix::io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    // SAFETY: after this, this thread sees none of the process's
    // descriptors (its table is a copy, closed below) and uses none: it
    // opens, uses and (at exit, with its table) closes one of its own. No
    // descriptor from this thread reaches another.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FILES)? };
    // SAFETY: close_range(0, ~0, 0) closes every descriptor of this
    // thread's private table, which only copies of others' descriptors
    // are in; no owner of those is on this thread (see above).
    let r = unsafe { libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) };
    if r != 0 {
        return Err(rustix::io::Errno::from_raw_os_error(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        ));
    }
    let root = rustix::fs::open(dir, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    for _ in 0..n.max(1) {
        rustix::fs::fstatfs(&root)?;
        stats.ring_kicks.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}
