//! Deferred replies: a request whose handler returns before its answer
//! exists (an async handler's pending future), answered later from any
//! thread.
//!
//! A handler defers with [`Req::defer`](crate::Req::defer), returns, and
//! the transport's thread goes back to serving; the [`Deferred`] handle
//! answers once, when the server has the reply. Until then the request
//! costs no thread: on `/dev/fuse` it is the kernel's entry in the
//! descriptor's processing queue plus this handle (which keeps that
//! descriptor open: a reply must reach the descriptor that read its
//! request); on a ring it also holds its entry, which the reply is
//! written into and committed from (the kernel commits on the entry that
//! took the request), so the queue registers more entries when every one
//! is held.
//!
//! # Interrupts
//!
//! A deferred request stays interruptible: it is moved from its worker's
//! slot in the [`Inflight`](crate::inflight) table to the table of
//! deferred requests before the slot is cleared, so a `FUSE_INTERRUPT`
//! searching the slots and then this table finds it in one of the two.
//! Its interrupt source is the one the handler saw; firing it is the
//! server's business (an async handler's task drops its future and answers
//! `EINTR`).
//!
//! # Invariants
//!
//! A deferred request is answered exactly once: by the handle's first
//! reply, or with `EIO` when it is dropped unanswered. Its transport
//! target is set once, by the transport, after the handler returned; a
//! reply that comes first waits in `early` and is sent as the target is
//! set.

use crate::abi;
use crate::fs::IoctlReply;
use devlife_gate::CancelSource;
use devlife_gate::sync::lock;
use rustc_hash::FxHashMap;
use rustix::fd::OwnedFd;
use rustix::io::Errno;
use std::cell::{Cell, RefCell};
use std::sync::{Arc, Condvar, Mutex};
use zerocopy::IntoBytes;

/// Where a deferred request's reply goes.
pub(crate) enum Target {
    /// `/dev/fuse` (or a CUSE channel): the descriptor that read it.
    Dev(Arc<OwnedFd>),
    /// A ring entry, written and committed by its queue.
    Ring(Box<dyn RingTarget>),
}

/// A ring entry holding a deferred request (implemented by the ring
/// transport, which the rest of the crate does not reach into).
pub(crate) trait RingTarget: Send {
    /// Writes the reply (`error` 0 with `body`, or a negative errno) into
    /// the entry and hands it to its queue to commit.
    fn reply(self: Box<Self>, error: i32, body: &[u8]);
}

/// The requests deferred now, with their interrupt sources (for
/// `FUSE_INTERRUPT`, which [`Inflight`](crate::inflight::Inflight) routes
/// here).
#[derive(Default)]
pub(crate) struct DeferredTable {
    map: Mutex<FxHashMap<u64, Arc<CancelSource>>>,
    /// Notified when `map` becomes empty.
    empty: Condvar,
}

impl std::fmt::Debug for DeferredTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeferredTable").field("len", &self.len()).finish()
    }
}

impl DeferredTable {
    pub(crate) fn insert(&self, unique: u64, src: Arc<CancelSource>) {
        lock(&self.map).insert(unique, src);
    }

    pub(crate) fn get(&self, unique: u64) -> Option<Arc<CancelSource>> {
        lock(&self.map).get(&unique).cloned()
    }

    fn remove(&self, unique: u64) {
        let src = {
            let mut map = lock(&self.map);
            let src = map.remove(&unique);
            if map.is_empty() {
                self.empty.notify_all();
            }
            src
        };
        drop(src);
    }

    /// Waits until no request is deferred, for at most `timeout`; returns
    /// how many still are.
    pub(crate) fn wait_empty(&self, timeout: std::time::Duration) -> usize {
        let end = std::time::Instant::now() + timeout;
        let mut map = lock(&self.map);
        while !map.is_empty() {
            let now = std::time::Instant::now();
            if now >= end {
                break;
            }
            map = devlife_gate::sync::wait_timeout(&self.empty, map, end - now);
        }
        map.len()
    }

    /// How many requests are deferred now.
    pub(crate) fn len(&self) -> usize {
        lock(&self.map).len()
    }
}

/// What a reply must respect, taken from its request.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Limits {
    /// An ioctl's `out_size` and whether it is unrestricted.
    pub(crate) ioctl: Option<(u32, bool)>,
    /// The most bytes a reply may carry.
    pub(crate) max: usize,
}

/// A request's deferral, as its handler sees it through the `Req`: set
/// by [`Req::defer`](crate::Req::defer), read by the dispatch after the
/// handler returned.
#[derive(Default)]
pub(crate) struct DeferSlot {
    pub(crate) limits: Cell<Limits>,
    pub(crate) taken: RefCell<Option<Arc<Shared>>>,
}

impl DeferSlot {
    /// Defers request `unique` with interrupt source `src`: listed in
    /// `table` now, while its worker's slot still lists it (see
    /// "Interrupts").
    pub(crate) fn defer(&self, unique: u64, src: &Arc<CancelSource>, table: &Arc<DeferredTable>) -> Deferred {
        if self.taken.borrow().is_some() {
            // One reply per request: a second handle answers nothing.
            tracing::warn!(unique, "a request was deferred twice; the second handle answers nothing");
            return Deferred { shared: None };
        }
        table.insert(unique, src.clone());
        let shared = Shared::new(unique, self.limits.get(), table.clone());
        *self.taken.borrow_mut() = Some(shared.clone());
        Deferred::new(shared)
    }
}

/// The state one deferred request's handle and its transport share.
pub(crate) struct Shared {
    unique: u64,
    limits: Limits,
    table: Arc<DeferredTable>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    target: Option<Target>,
    /// A reply made before the target was set: (error, body).
    early: Option<(i32, Vec<u8>)>,
}

impl Shared {
    pub(crate) fn new(unique: u64, limits: Limits, table: Arc<DeferredTable>) -> Arc<Self> {
        Arc::new(Shared { unique, limits, table, state: Mutex::new(State::default()) })
    }

    /// The transport sets where the reply goes, once the handler returned:
    /// a reply made already is sent now.
    pub(crate) fn set_target(&self, target: Target) {
        let early = {
            let mut st = lock(&self.state);
            match st.early.take() {
                Some(e) => Some(e),
                None => {
                    st.target = Some(target);
                    return;
                }
            }
        };
        if let Some((error, body)) = early {
            self.send(target, error, &body);
        }
    }

    /// The reply: to the target if it is set, else kept for it.
    fn reply(&self, error: i32, body: &[u8]) {
        let target = {
            let mut st = lock(&self.state);
            match st.target.take() {
                Some(t) => t,
                None => {
                    st.early = Some((error, body.to_vec()));
                    return;
                }
            }
        };
        self.send(target, error, body);
    }

    /// Sends the reply, then takes the request off the table: a close
    /// that waits for the table to empty ([`DeferredTable::wait_empty`])
    /// comes after the reply is written.
    fn send(&self, target: Target, error: i32, body: &[u8]) {
        match target {
            Target::Dev(fd) => match crate::reply::send(&*fd, self.unique, error, &[body]) {
                // ENOENT: interrupted, and no longer waited for.
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => tracing::debug!("deferred reply: {e}"),
            },
            Target::Ring(entry) => entry.reply(error, body),
        }
        self.table.remove(self.unique);
    }
}

/// A request answered later: the handle a handler keeps after
/// [`Req::defer`](crate::Req::defer). Send it to whatever thread will have
/// the answer. Each `reply_*` answers once; dropped unanswered, the
/// request fails `EIO`.
#[must_use = "a deferred request dropped unanswered fails EIO"]
pub struct Deferred {
    shared: Option<Arc<Shared>>,
}

impl Deferred {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Deferred { shared: Some(shared) }
    }

    fn finish(mut self, r: Result<&[u8], Errno>) {
        let Some(s) = self.shared.take() else { return };
        match r {
            Ok(body) if body.len() <= s.limits.max => s.reply(0, body),
            Ok(_) => s.reply(-Errno::IO.raw_os_error(), &[]),
            Err(e) => s.reply(-e.raw_os_error(), &[]),
        }
    }

    /// The request's unique id.
    pub fn unique(&self) -> u64 {
        self.shared.as_ref().map_or(0, |s| s.unique)
    }

    /// Answers with an error.
    pub fn reply_error(self, e: Errno) {
        self.finish(Err(e))
    }

    /// Answers a READ with `data` (at most the size it asked for).
    pub fn reply_read(self, r: Result<&[u8], Errno>) {
        self.finish(r)
    }

    /// Answers a WRITE with the bytes taken.
    pub fn reply_write(self, r: Result<u32, Errno>) {
        match r {
            Ok(size) => self.finish(Ok(abi::WriteOut { size, padding: 0 }.as_bytes())),
            Err(e) => self.finish(Err(e)),
        }
    }

    /// Answers an IOCTL with its reply and, for a `Done`, its output.
    pub fn reply_ioctl(self, r: Result<(IoctlReply, &[u8]), Errno>) {
        let Some((out_size, unrestricted)) = self.shared.as_ref().and_then(|s| s.limits.ioctl) else {
            return self.finish(Err(Errno::IO));
        };
        let mut out = Vec::new();
        let r = r.and_then(|(reply, data)| {
            crate::dispatch::encode_ioctl(reply, data, out_size, unrestricted, &mut out)
        });
        self.finish(r.map(|()| &out[..]))
    }
}

impl Drop for Deferred {
    fn drop(&mut self) {
        if let Some(s) = self.shared.take() {
            s.reply(-Errno::IO.raw_os_error(), &[]);
        }
    }
}

impl std::fmt::Debug for Deferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deferred").field("unique", &self.unique()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromBytes;

    /// A pipe as the transport: what a reply writes, read back.
    fn pipe() -> (Arc<OwnedFd>, OwnedFd) {
        let (r, w) = std::io::pipe().unwrap();
        (Arc::new(OwnedFd::from(w)), OwnedFd::from(r))
    }

    fn reply_of(r: &OwnedFd) -> (abi::OutHeader, Vec<u8>) {
        let mut buf = [0u8; 256];
        let n = rustix::io::read(r, &mut buf).unwrap();
        let (h, rest) = abi::OutHeader::read_from_prefix(&buf[..n]).unwrap();
        (h, rest.to_vec())
    }

    #[test]
    fn a_reply_before_the_target_is_sent_when_the_target_is_set() {
        let table = Arc::new(DeferredTable::default());
        let slot = DeferSlot::default();
        slot.limits.set(Limits { ioctl: None, max: 16 });
        let d = slot.defer(7, &Arc::new(CancelSource::new()), &table);
        assert_eq!(table.len(), 1, "listed for interrupts");
        let shared = slot.taken.borrow_mut().take().unwrap();
        d.reply_read(Ok(b"abc"));
        assert_eq!(table.len(), 1, "listed until the reply is written");
        let (w, r) = pipe();
        shared.set_target(Target::Dev(w));
        assert_eq!(table.len(), 0);
        let (h, body) = reply_of(&r);
        assert_eq!((h.unique, h.error, h.len), (7, 0, 19));
        assert_eq!(body, b"abc");
    }

    #[test]
    fn a_dropped_handle_answers_eio_and_a_second_defer_answers_nothing() {
        let table = Arc::new(DeferredTable::default());
        let slot = DeferSlot::default();
        slot.limits.set(Limits { ioctl: None, max: 4 });
        let src = Arc::new(CancelSource::new());
        let d = slot.defer(9, &src, &table);
        let twice = slot.defer(9, &src, &table);
        let (w, r) = pipe();
        slot.taken.borrow_mut().take().unwrap().set_target(Target::Dev(w.clone()));
        drop(twice);
        // Too long for the request: EIO, not the bytes.
        d.reply_read(Ok(b"too long"));
        let (h, body) = reply_of(&r);
        assert_eq!((h.unique, h.error), (9, -Errno::IO.raw_os_error()));
        assert!(body.is_empty());
        drop(w);
        let mut rest = [0u8; 16];
        // Only the one reply was written (the pipe's other write end is
        // the target's, dropped with it).
        assert_eq!(rustix::io::read(&r, &mut rest).unwrap_or(0), 0);
    }
}
