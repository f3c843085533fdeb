//! The gated object behind every character device, debugfs file and
//! attribute: open-file tracking, exactly-once release, and the removal
//! rundown.
//!
//! A node owns the driver's [`FileOperations`] object inside a
//! [`Revocable`]: every handler runs inside its gate. Removal is, in order:
//!
//! 1. kill the gate: no new open or operation starts, and every cancellable
//!    wait made through it wakes and fails (`ENODEV`/`EIO`);
//! 2. wake every poller (they see `POLLHUP`);
//! 3. drain: wait until every running handler has returned;
//! 4. release every file still open, calling the driver's `release` once per
//!    open (as procfs's `proc_entry_rundown` does), detaching the list under
//!    the lock and releasing outside it;
//! 5. drop the operations object, and with it what it borrowed from the host.
//!
//! After that, no driver code of the node runs again: a later close finds the
//! node removed and calls nothing.
//!
//! # Ungated nodes
//!
//! A node of an ungated [`System`](crate::System) (made for measuring what
//! the guarantee costs) runs handlers without entering its gate: an
//! operation only checks, unsynchronised, that the node was not removed
//! (as drivers check a `dev->alive` flag). Its removal refuses new opens
//! and operations and wakes sleeping handlers, then returns at once, as
//! Linux's `cdev_del` does: it does not wait for handlers still running,
//! open files are released at their close, and the operations object
//! lives until the node is dropped (every open file holds the node), so
//! what it borrowed from the host outlives the binding. Each open file
//! keeps its own gate, which orders its release after the operations
//! running on it, as the kernel's file reference count does.

use crate::device::Epoch;
use crate::errno::{Errno, NodeKind};
use crate::fops::{Caller, FileOperations, Ioctl, KResult, Llseek, OpCtx, PollMask, PollTable};
use crate::ioctl::IoctlCmd;
use crate::stats::Stats;
use crate::uaccess::{IoctlLayout, IoctlOutcome};
use devlife_gate::{Event, Revocable, RevocableGuard, Wake};
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

static NEXT_FILE_ID: AtomicU64 = AtomicU64::new(1);

/// A removal still waiting for handlers after this long logs a warning.
const SLOW_REMOVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// A gated object with file operations `F`.
pub(crate) struct Node<F: FileOperations> {
    /// The node's identity ([`NodeRef::id`]).
    id: u64,
    ops: Revocable<F>,
    kind: NodeKind,
    name: String,
    /// The driver binding the node belongs to, if any: for detecting a
    /// removal requested from inside one of its own handlers, and a handler
    /// starting after its binding's removal returned.
    binding: Option<Arc<Epoch>>,
    /// Whether handlers enter the gate and removal drains (see "Ungated
    /// nodes").
    ///
    /// # Invariants
    ///
    /// When false, `ops` is never revoked: only dropped with the node.
    gated: bool,
    files: Mutex<BTreeMap<u64, Arc<OpenState<F>>>>,
    /// Whether any file of the node was ever polled with a waker: a
    /// removal's early wake-up of pollers skips walking the open files
    /// when none was (10,000 open files take half a millisecond to walk).
    /// The rundown wakes every poller again, so a wake-up missed for a
    /// poller that registered as the flag was read is not lost.
    polled: AtomicBool,
    stats: Arc<Stats>,
    removal: Mutex<Removal>,
    removed: Condvar,
}

/// Progress of a node's removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Removal {
    Live,
    Started,
    Done,
}

/// One successful open.
struct OpenState<F: FileOperations> {
    id: u64,
    /// The per-open state; taken (revoked) by exactly one release.
    private: Revocable<F::File>,
    /// The last poller of this file, woken when the node is removed.
    poller: Mutex<Option<Arc<dyn Wake>>>,
}

/// How a removal ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Removed {
    /// Every handler has returned and every open file was released.
    Complete,
    /// Requested from inside one of the node's own handlers: new entries are
    /// refused already; a worker thread completes the removal once that
    /// handler returns (FreeBSD's `destroy_dev_sched`).
    Deferred,
}

impl<F: FileOperations> Node<F> {
    pub(crate) fn new(
        ops: F,
        kind: NodeKind,
        name: String,
        binding: Option<Arc<Epoch>>,
        stats: Arc<Stats>,
        gated: bool,
    ) -> Arc<Self> {
        Arc::new(Node {
            id: crate::id::next(),
            ops: Revocable::new(ops),
            kind,
            name,
            // An ungated node's handlers may run after its binding ended:
            // that is the point of it, not a violation to count.
            binding: if gated { binding } else { None },
            gated,
            files: Mutex::new(BTreeMap::new()),
            polled: AtomicBool::new(false),
            stats,
            removal: Mutex::new(Removal::Live),
            removed: Condvar::new(),
        })
    }

    /// The operations, entering the gate if the node is gated: the guard
    /// (if any) must be held while they are used.
    #[inline]
    fn enter(&self, after_removal: Errno) -> KResult<(&F, Option<RevocableGuard<'_, F>>)> {
        if !self.gated {
            if self.ops.is_revoked() {
                return Err(after_removal);
            }
            // SAFETY: an ungated node's `ops` is never revoked (type
            // invariants), so it lives as long as `self`.
            return Ok((unsafe { self.ops.access() }, None));
        }
        let g = self.ops.try_access().ok_or(after_removal)?;
        // SAFETY: the guard, returned alongside and held by the caller while
        // it uses the reference, keeps the data from being revoked.
        let ops = unsafe { self.ops.access() };
        Ok((ops, Some(g)))
    }

    fn open(self: &Arc<Self>, caller: &Caller<'_>) -> KResult<File> {
        let (ops, guard) = self.enter(self.kind.open_after_removal())?;
        let _scope = HandlerScope::enter(self.binding.as_deref(), &self.stats, &self.name);
        let cx = OpCtx::new(*caller, self.kind, self.ops.gate().cancel_source(), None);
        let private = self.catch("open", || ops.open(&cx))?;
        let state = Arc::new(OpenState {
            id: NEXT_FILE_ID.fetch_add(1, Ordering::Relaxed),
            // Revoked at every close: a shared counter (no per-thread slot to
            // allocate, scan and free), no IPI on revoke. Never revoked from
            // inside its own guard: the release and the rundown run outside
            // every handler of the file.
            private: Revocable::new_shared(private),
            poller: Mutex::new(None),
        });
        // Inserted while still inside the gate: a removal's rundown (which
        // drains first) is guaranteed to find this file.
        lock(&self.files).insert(state.id, state.clone());
        self.stats.opened();
        drop(guard);
        Ok(File { inner: Box::new(OpenFile { node: self.clone(), state }) })
    }

    /// Runs `f` on the open file `st`, inside the node's and the file's gates.
    fn call<R>(
        &self,
        st: &OpenState<F>,
        caller: &Caller<'_>,
        what: &str,
        f: impl FnOnce(&F, &F::File, &OpCtx<'_>) -> KResult<R>,
    ) -> KResult<R> {
        let (ops, _guard) = self.enter(self.kind.op_after_removal())?;
        // Released already: only a transport that releases a file while one
        // of its requests is still running can get here.
        let file = st.private.try_access().ok_or(Errno::EBADF)?;
        let _scope = HandlerScope::enter(self.binding.as_deref(), &self.stats, &self.name);
        let cx = OpCtx::new(
            *caller,
            self.kind,
            self.ops.gate().cancel_source(),
            Some(file.guard().gate().cancel_source()),
        );
        self.catch(what, || f(ops, &file, &cx))
    }

    /// Runs a handler, turning a panic into `EIO` (the server and the device
    /// live on; the panic is logged here, once).
    fn catch<R>(&self, what: &str, f: impl FnOnce() -> KResult<R>) -> KResult<R> {
        let _depth = InHandler::enter();
        catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
            let msg = p.downcast_ref::<&str>().copied().or_else(|| p.downcast_ref::<String>().map(String::as_str));
            tracing::error!(node = %self.name, op = what, panic = msg.unwrap_or("<non-string payload>"), "handler panicked");
            self.stats.panicked();
            Err(Errno::EIO)
        })
    }

    fn poll(&self, st: &OpenState<F>, caller: &Caller<'_>, waker: Option<&Arc<dyn Wake>>) -> PollMask {
        if let Some(w) = waker {
            // Registered before entering: a removal that starts after this
            // wakes it (it wakes pollers after killing and after draining).
            if !self.polled.load(Ordering::Relaxed) {
                self.polled.store(true, Ordering::Relaxed);
            }
            *lock(&st.poller) = Some(w.clone());
        }
        let r = self.call(st, caller, "poll", |ops, file, cx| {
            Ok(ops.poll(file, cx, &PollTable { key: st.id, waker }))
        });
        r.unwrap_or_else(|_| self.kind.poll_after_removal())
    }

    fn flush(&self, st: &OpenState<F>, caller: &Caller<'_>) -> KResult<()> {
        let Some(flush) = F::FLUSH else { return Ok(()) };
        match self.call(st, caller, "flush", flush) {
            // Flush after removal succeeds: there is nothing left to flush.
            Err(e) if e == self.kind.op_after_removal() && self.ops.is_revoked() => Ok(()),
            r => r,
        }
    }

    /// The last close of `st`.
    fn release(&self, st: &OpenState<F>) {
        let (ops, _guard) = if self.gated {
            let Some(g) = self.ops.try_access() else {
                // Removed (or being removed): the rundown releases the file.
                return;
            };
            // SAFETY: `_guard` keeps the data from being revoked while
            // `ops` is used.
            (unsafe { self.ops.access() }, Some(g))
        } else {
            // SAFETY: an ungated node's `ops` is never revoked (type
            // invariants); it is released at close even after a removal.
            (unsafe { self.ops.access() }, None)
        };
        let _scope = HandlerScope::enter(self.binding.as_deref(), &self.stats, &self.name);
        // Waits for requests still running on this file (a transport may
        // release while an interrupted request finishes); their cancellable
        // waits fail at once.
        if let (_, Some(private)) = st.private.revoke_take() {
            let _ = self.catch("release", || {
                ops.release(private);
                Ok(())
            });
            self.stats.released();
        }
        lock(&self.files).remove(&st.id);
    }

    fn wake_pollers(&self) {
        if !self.polled.load(Ordering::Relaxed) {
            return;
        }
        let pollers: Vec<_> = lock(&self.files).values().filter_map(|st| lock(&st.poller).clone()).collect();
        for p in pollers {
            p.wake();
        }
    }

    /// Removes the node: see the module documentation. Returns once the
    /// removal is complete, also when another thread started it.
    pub(crate) fn remove(self: &Arc<Self>) -> Removed {
        let first = {
            let mut r = lock(&self.removal);
            let first = *r == Removal::Live;
            if first {
                *r = Removal::Started;
            }
            first
        };
        self.ops.gate().kill();
        self.wake_pollers();
        if !self.gated {
            // See "Ungated nodes": no drain, no rundown, and `ops` stays.
            *lock(&self.removal) = Removal::Done;
            self.removed.notify_all();
            return Removed::Complete;
        }
        if self.ops.gate().held_by_current_thread() {
            if first {
                let me = self.clone();
                std::thread::Builder::new()
                    .name(format!("devlife-remove:{}", self.name))
                    .spawn(move || me.finish_removal())
                    .map_err(|e| tracing::error!(node = %self.name, "cannot spawn the deferred removal: {e}"))
                    .ok();
            }
            return Removed::Deferred;
        }
        if first {
            self.finish_removal();
        } else {
            let mut r = lock(&self.removal);
            while *r != Removal::Done {
                r = self.removed.wait(r).unwrap_or_else(|e| e.into_inner());
            }
        }
        Removed::Complete
    }

    /// Blocks until the removal has completed (every handler returned,
    /// every open file released); at once if it has.
    fn wait_removed(&self) {
        let mut r = lock(&self.removal);
        while *r != Removal::Done {
            r = self.removed.wait(r).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn finish_removal(&self) {
        // A removal held up by handlers that neither return nor sleep
        // cancellably says so, once, then goes on waiting.
        if let Err(devlife_gate::DrainError::TimedOut(stuck)) = self.ops.gate().drain_timeout(SLOW_REMOVAL) {
            tracing::warn!(
                node = %self.name,
                waited = ?SLOW_REMOVAL,
                %stuck,
                "removal waits for handlers still running (not in a cancellable wait)"
            );
        }
        // Drains: every handler has returned when this returns.
        let (_, ops) = self.ops.revoke_take();
        let files: Vec<_> = std::mem::take(&mut *lock(&self.files)).into_values().collect();
        if let Some(ops) = ops {
            // No handler runs now, but a transport may still be inside a
            // file's own gate (a release waiting for an interrupted request);
            // one heavy barrier kills all of them (linear in open files).
            let privates = Revocable::revoke_take_many(files.iter().map(|st| &st.private));
            for (st, private) in files.iter().zip(privates) {
                if let Some(private) = private {
                    let _ = self.catch("release", || {
                        ops.release(private);
                        Ok(())
                    });
                    self.stats.released();
                }
                if let Some(p) = lock(&st.poller).take() {
                    p.wake();
                }
            }
            let _ = self.catch("drop", || {
                drop(ops);
                Ok(())
            });
        }
        *lock(&self.removal) = Removal::Done;
        self.removed.notify_all();
    }
}

/// A node with its operations type erased: what registries and transports
/// hold.
pub(crate) trait NodeDyn: Send + Sync {
    fn open(self: Arc<Self>, caller: &Caller<'_>) -> KResult<File>;
    fn remove_dyn(self: Arc<Self>) -> Removed;
    fn wait_removed(&self);
    fn is_removed(&self) -> bool;
    fn kind(&self) -> NodeKind;
    fn inside(&self) -> usize;
    fn open_files(&self) -> usize;
    fn id(&self) -> u64;
    fn llseek(&self) -> Llseek;
}

impl<F: FileOperations> NodeDyn for Node<F> {
    fn llseek(&self) -> Llseek {
        F::LLSEEK
    }
    fn open(self: Arc<Self>, caller: &Caller<'_>) -> KResult<File> {
        Node::open(&self, caller)
    }
    fn remove_dyn(self: Arc<Self>) -> Removed {
        self.remove()
    }
    fn wait_removed(&self) {
        Node::wait_removed(self)
    }
    fn is_removed(&self) -> bool {
        self.ops.is_revoked()
    }
    fn kind(&self) -> NodeKind {
        self.kind
    }
    fn inside(&self) -> usize {
        self.ops.gate().inside()
    }
    fn open_files(&self) -> usize {
        lock(&self.files).len()
    }
    fn id(&self) -> u64 {
        self.id
    }
}

/// A reference to a gated object, as a path lookup returns it (the VFS
/// inode with its cached `i_cdev`): opening it after the object was
/// removed fails, and never reaches an object registered later in its place.
#[derive(Clone)]
pub struct NodeRef(pub(crate) Arc<dyn NodeDyn>);

impl NodeRef {
    /// Opens the object.
    ///
    /// # Errors
    ///
    /// After removal: `ENXIO` for a character device, `ENOENT` for a debugfs
    /// file, `ENODEV` for an attribute. Otherwise what the driver's `open`
    /// returns.
    pub fn open(&self, caller: &Caller<'_>) -> KResult<File> {
        self.0.clone().open(caller)
    }

    /// Whether the object has been removed.
    pub fn is_removed(&self) -> bool {
        self.0.is_removed()
    }

    /// What kind of object this is.
    pub fn kind(&self) -> NodeKind {
        self.0.kind()
    }

    /// Handlers running in the object right now.
    pub fn inside(&self) -> usize {
        self.0.inside()
    }

    /// Files open on the object and not yet released.
    pub fn open_files(&self) -> usize {
        self.0.open_files()
    }

    /// Whether two references name the same object.
    pub fn same(&self, other: &NodeRef) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// A number naming this object and no other for the life of the
    /// process (a device node removed and registered again has a new one).
    pub fn id(&self) -> u64 {
        self.0.id()
    }

    /// Blocks until the object's removal has completed: every handler
    /// returned and every open file released (for a removal another thread
    /// has started, or is about to: it waits until then, however long).
    pub fn wait_removed(&self) {
        self.0.wait_removed()
    }

    /// How the files of this object keep their position
    /// ([`FileOperations::LLSEEK`]; its size is what `stat` reports).
    pub fn llseek(&self) -> Llseek {
        self.0.llseek()
    }
}

impl std::fmt::Debug for NodeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeRef").field("kind", &self.kind()).field("removed", &self.is_removed()).finish()
    }
}

/// An open file: the handle a transport keeps per open descriptor.
///
/// Share it between threads with `Arc<File>`. Dropping the last handle (or
/// [`close`](Self::close)) releases it: the driver's `release` runs once,
/// unless the object was removed, whose removal released it already.
pub struct File {
    inner: Box<dyn FileDyn>,
}

trait FileDyn: Send + Sync {
    fn read(&self, buf: &mut [u8], offset: u64, caller: &Caller<'_>) -> KResult<usize>;
    fn write(&self, data: &[u8], offset: u64, caller: &Caller<'_>) -> KResult<usize>;
    fn ioctl(&self, io: &mut Ioctl<'_>, caller: &Caller<'_>) -> KResult<i64>;
    fn ioctl_layout(&self, cmd: IoctlCmd) -> (IoctlLayout, bool);
    fn poll(&self, caller: &Caller<'_>, waker: Option<&Arc<dyn Wake>>) -> PollMask;
    fn flush(&self, caller: &Caller<'_>) -> KResult<()>;
    fn has_flush(&self) -> bool;
    fn llseek(&self) -> Llseek;
    fn release(&self);
    fn kind(&self) -> NodeKind;
}

struct OpenFile<F: FileOperations> {
    node: Arc<Node<F>>,
    state: Arc<OpenState<F>>,
}

impl<F: FileOperations> FileDyn for OpenFile<F> {
    fn read(&self, buf: &mut [u8], offset: u64, caller: &Caller<'_>) -> KResult<usize> {
        let n = self.node.call(&self.state, caller, "read", |ops, f, cx| ops.read(f, cx, buf, offset))?;
        // A driver claiming more than the buffer holds is a driver bug.
        if n > buf.len() { Err(Errno::EIO) } else { Ok(n) }
    }
    fn write(&self, data: &[u8], offset: u64, caller: &Caller<'_>) -> KResult<usize> {
        let n = self.node.call(&self.state, caller, "write", |ops, f, cx| ops.write(f, cx, data, offset))?;
        if n > data.len() { Err(Errno::EIO) } else { Ok(n) }
    }
    fn ioctl(&self, io: &mut Ioctl<'_>, caller: &Caller<'_>) -> KResult<i64> {
        self.node.call(&self.state, caller, "ioctl", |ops, f, cx| ops.ioctl(f, cx, io))
    }
    fn ioctl_layout(&self, cmd: IoctlCmd) -> (IoctlLayout, bool) {
        IoctlLayout::of(cmd, F::IOCTL_LAYOUTS)
    }
    fn poll(&self, caller: &Caller<'_>, waker: Option<&Arc<dyn Wake>>) -> PollMask {
        self.node.poll(&self.state, caller, waker)
    }
    fn flush(&self, caller: &Caller<'_>) -> KResult<()> {
        self.node.flush(&self.state, caller)
    }
    fn has_flush(&self) -> bool {
        F::FLUSH.is_some()
    }
    fn llseek(&self) -> Llseek {
        F::LLSEEK
    }
    fn release(&self) {
        self.node.release(&self.state)
    }
    fn kind(&self) -> NodeKind {
        self.node.kind
    }
}

impl File {
    /// Reads into `buf` at `offset`.
    pub fn read(&self, buf: &mut [u8], offset: u64, caller: &Caller<'_>) -> KResult<usize> {
        self.inner.read(buf, offset, caller)
    }

    /// Writes `data` at `offset`.
    pub fn write(&self, data: &[u8], offset: u64, caller: &Caller<'_>) -> KResult<usize> {
        self.inner.write(data, offset, caller)
    }

    /// Issues ioctl `cmd` with argument `arg`; `input` must hold
    /// `cmd.in_size()` bytes; the driver's output lands in `output`.
    pub fn ioctl(
        &self,
        cmd: IoctlCmd,
        arg: u64,
        input: &[u8],
        output: &mut Vec<u8>,
        caller: &Caller<'_>,
    ) -> KResult<i64> {
        // A declared layout is one the restricted transport's kernel did
        // not copy: the argument cannot reach the driver.
        if self.inner.ioctl_layout(cmd).1 {
            return Err(Errno::EOPNOTSUPP);
        }
        if input.len() != cmd.in_size() {
            return Err(Errno::EFAULT);
        }
        self.inner.ioctl(&mut Ioctl::new(cmd, arg, input, output), caller)
    }

    /// One round of an ioctl over a transport that fetches the caller's
    /// memory on request (CUSE's unrestricted ioctls; see
    /// [`uaccess`](crate::uaccess)): `fetched` is what it copied in for
    /// this round, `out_room` what it will copy back. Returns the result,
    /// or the regions to fetch before calling again; the output (the
    /// argument's, then each region's) lands in `output`.
    pub fn ioctl_unrestricted(
        &self,
        cmd: IoctlCmd,
        arg: u64,
        fetched: &[u8],
        out_room: usize,
        output: &mut Vec<u8>,
        caller: &Caller<'_>,
    ) -> KResult<IoctlOutcome> {
        let (layout, _) = self.inner.ioctl_layout(cmd);
        crate::uaccess::ioctl_unrestricted(cmd, arg, layout, fetched, out_room, output, |io| {
            self.inner.ioctl(io, caller)
        })
    }

    /// One round of poll: the current readiness, registering `waker` to be
    /// woken (once) when it may change, and when the object is removed.
    pub fn poll_once(&self, caller: &Caller<'_>, waker: Option<&Arc<dyn Wake>>) -> PollMask {
        self.inner.poll(caller, waker)
    }

    /// Blocks until one of `events` (or an error or hang-up) is ready, or
    /// until `deadline`; returns the readiness (empty on timeout).
    pub fn poll(&self, events: PollMask, deadline: Option<Instant>, caller: &Caller<'_>) -> PollMask {
        let ev = Arc::new(Event::new());
        let waker: Arc<dyn Wake> = ev.clone();
        let wanted = events | PollMask::ERR | PollMask::HUP;
        loop {
            ev.reset();
            let m = self.inner.poll(caller, Some(&waker));
            if m.intersects(wanted) {
                return m & wanted;
            }
            if !ev.sleep(deadline) {
                return PollMask::NONE;
            }
        }
    }

    /// Called on every close of a descriptor of this file.
    pub fn flush(&self, caller: &Caller<'_>) -> KResult<()> {
        self.inner.flush(caller)
    }

    /// Whether the driver has a `flush` ([`FileOperations::FLUSH`]); if
    /// not, [`flush`](Self::flush) does nothing and a transport need not
    /// call it.
    pub fn has_flush(&self) -> bool {
        self.inner.has_flush()
    }

    /// How the file's position works ([`FileOperations::LLSEEK`]).
    pub fn llseek(&self) -> Llseek {
        self.inner.llseek()
    }

    /// Releases the file now (idempotent; dropping the handle does it too).
    pub fn close(&self) {
        self.inner.release()
    }

    /// What kind of object the file belongs to.
    pub fn kind(&self) -> NodeKind {
        self.inner.kind()
    }
}

impl Drop for File {
    fn drop(&mut self) {
        self.inner.release();
    }
}

impl std::fmt::Debug for File {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("File").field("kind", &self.kind()).finish_non_exhaustive()
    }
}

thread_local! {
    /// How many driver handlers this thread is inside (any node).
    static IN_HANDLER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// The bindings whose handlers this thread is running, innermost last.
    static HANDLERS: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Marks the current thread as running a handler of `binding`, and checks
/// the binding has not ended (the check the torture run counts).
struct HandlerScope(bool);

impl HandlerScope {
    fn enter(binding: Option<&Epoch>, stats: &Stats, node: &str) -> Self {
        let Some(b) = binding else { return HandlerScope(false) };
        // Acquire: pairs with the Release in `Epoch::end`, after the removal.
        if b.ended.load(std::sync::atomic::Ordering::Acquire) {
            stats.violated();
            tracing::error!(node, binding = b.id, "a handler started after its binding's removal returned");
        }
        HandlerScope(HANDLERS.try_with(|h| h.borrow_mut().push(b.id)).is_ok())
    }
}

impl Drop for HandlerScope {
    fn drop(&mut self) {
        if self.0 {
            let _ = HANDLERS.try_with(|h| h.borrow_mut().pop());
        }
    }
}

/// Runs `f` as part of `binding` (a bound thread's or work item's body):
/// a removal of the binding asked from inside `f` is then deferred, as it
/// is from a handler, instead of joining the thread that asked.
pub(crate) fn run_in_binding<R>(binding: u64, f: impl FnOnce() -> R) -> R {
    let pushed = HANDLERS.try_with(|h| h.borrow_mut().push(binding)).is_ok();
    let _scope = HandlerScope(pushed);
    f()
}

/// Whether the current thread is running a handler of `binding`.
pub(crate) fn in_handler_of(binding: u64) -> bool {
    HANDLERS.try_with(|h| h.borrow().contains(&binding)).unwrap_or(false)
}

/// Marks the current thread as inside a driver handler, for the panic hook.
struct InHandler;

impl InHandler {
    fn enter() -> Self {
        let _ = IN_HANDLER.try_with(|d| d.set(d.get() + 1));
        InHandler
    }
}

impl Drop for InHandler {
    fn drop(&mut self) {
        let _ = IN_HANDLER.try_with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// Makes a panic in a driver handler one log line: the core catches it,
/// answers `EIO` and logs the node, the operation and the message
/// (`handler panicked`); this hook keeps the default hook (the
/// `thread ... panicked at` text) for every other panic, and for handler
/// panics only when `RUST_BACKTRACE` asks for a backtrace. Call it once at
/// start, as a server does.
pub fn quiet_handler_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_handler = IN_HANDLER.try_with(|d| d.get() > 0).unwrap_or(false);
        let backtrace = std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0");
        if !in_handler || backtrace {
            default(info);
        }
    }));
}
