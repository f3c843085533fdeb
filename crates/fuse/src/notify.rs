//! Notifications to the kernel.
//!
//! Entry invalidation and deletion make the kernel take directory and inode
//! locks, which a request being handled on the same node may hold: sent
//! from inside a handler, they can deadlock (libfuse #341, fuser #320). So
//! they are queued to a dedicated thread that does nothing else. A poll
//! wake-up takes no such lock and is written at once.

use crate::abi;
use crate::reply::send;
use rustix::fd::OwnedFd;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use zerocopy::IntoBytes;

enum Note {
    InvalEntry {
        parent: u64,
        name: Vec<u8>,
    },
    Delete {
        parent: u64,
        child: u64,
        name: Vec<u8>,
    },
    /// Every note queued before it has been written: tell the sender.
    Flush(Sender<()>),
}

/// How long [`Notifier::flush`] waits: a hang guard (a note waits for the
/// kernel's directory lock, which a request the pool is serving may hold).
const FLUSH_BOUND: std::time::Duration = std::time::Duration::from_secs(1);

/// Sends notifications to the kernel. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    fd: Arc<OwnedFd>,
    tx: Sender<Note>,
}

impl Notifier {
    pub(crate) fn start(fd: Arc<OwnedFd>) -> Self {
        let (tx, rx) = channel();
        let fd2 = fd.clone();
        let spawned = std::thread::Builder::new().name("fuse-notify".into()).spawn(move || run(&fd2, rx));
        if let Err(e) = spawned {
            tracing::error!("cannot start the notification thread: {e}");
        }
        Notifier { fd, tx }
    }

    /// Makes the kernel forget `name` in `parent` (queued).
    pub fn inval_entry(&self, parent: u64, name: &[u8]) {
        let _ = self.tx.send(Note::InvalEntry { parent, name: name.to_vec() });
    }

    /// Tells the kernel `name` in `parent` (inode `child`) was deleted (queued).
    pub fn delete(&self, parent: u64, child: u64, name: &[u8]) {
        let _ = self.tx.send(Note::Delete { parent, child, name: name.to_vec() });
    }

    /// Waits until every note queued so far has reached the kernel (at most
    /// a second), so a request that changed the tree can reply after the
    /// kernel forgot the names it removed. Returns whether they all did.
    pub fn flush(&self) -> bool {
        let (tx, rx) = channel();
        self.tx.send(Note::Flush(tx)).is_ok() && rx.recv_timeout(FLUSH_BOUND).is_ok()
    }

    /// Wakes the kernel's pollers of poll handle `kh` (sent at once).
    pub fn poll_wakeup(&self, kh: u64) {
        let out = abi::NotifyPollWakeupOut { kh };
        if let Err(e) = send(&self.fd, 0, abi::notify::POLL, &[out.as_bytes()]) {
            if e != rustix::io::Errno::NOENT {
                tracing::debug!("poll notification: {e}");
            }
        }
    }
}

fn run(fd: &OwnedFd, rx: Receiver<Note>) {
    for note in rx {
        let r = match &note {
            Note::InvalEntry { parent, name } => {
                let h = abi::NotifyInvalEntryOut { parent: *parent, namelen: name.len() as u32, flags: 0 };
                send(fd, 0, abi::notify::INVAL_ENTRY, &[h.as_bytes(), name, &[0]])
            }
            Note::Delete { parent, child, name } => {
                let h = abi::NotifyDeleteOut {
                    parent: *parent,
                    child: *child,
                    namelen: name.len() as u32,
                    padding: 0,
                };
                send(fd, 0, abi::notify::DELETE, &[h.as_bytes(), name, &[0]])
            }
            Note::Flush(done) => {
                let _ = done.send(());
                Ok(())
            }
        };
        match r {
            // Not cached, or the connection is gone: nothing to invalidate.
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(rustix::io::Errno::NODEV | rustix::io::Errno::NOTCONN) => return,
            Err(e) => tracing::debug!("notification: {e}"),
        }
    }
}
