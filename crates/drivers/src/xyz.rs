//! `xyz`: the seed's driver, on bus `sim`, device type `xyz`.
//!
//! ```text
//! int xyz_probe(struct device *dev)
//! {
//!         xyz_driver_context = devm_kzalloc(...);
//!         xyz_ioctl_dev->context = xyz_driver_context;
//!         cdev_device_add(&xyz_ioctl_dev->cdev, xyz_ioctl_dev->dev);
//! }
//! ```
//!
//! Here the context is an [`XyzContext`] owned by the binding (the
//! driver's data), the character device's operations ([`XyzIoctlDev`], the
//! seed's `xyz_ioctl_dev`) hold it, and the device is registered with
//! [`devm_cdev_device_add`], so unbinding removes it, with every handler
//! returned, before the context is dropped.
//!
//! The device node is `xyzN` (class `xyz`); the device has a read-only
//! attribute `count`, and debugfs has `xyz/xyzN/ops` (both the operation
//! count). The context holds the count and a 64 KiB FIFO:
//!
//! * `XYZ_IOC_COUNT = _IOR('X', 1, u64)`: increments the count, returns it;
//! * `XYZ_IOC_HOLD = _IOW('X', 2, u32)`: stays inside the handler for that
//!   many milliseconds without a cancellable wait (hardware busy);
//! * `XYZ_IOC_WAIT = _IO('X', 3)`: sleeps in a cancellable wait until the
//!   device is removed (`ENODEV`) or the caller interrupted (`EINTR`);
//! * `XYZ_IOC_LOCK = _IO('X', 4)`: takes the context's hardware lock
//!   cancellably and returns 0 (the lock a remover may hold);
//! * `XYZ_IOC_UNBIND_SELF = _IO('X', 5)`: unbinds the device from inside
//!   this handler; returns 1 (the unbind is deferred to a worker thread
//!   that completes it once this handler has returned);
//! * `XYZ_IOC_FIFO_LEN = 0x5858`: a tty-style number (no `_IOC` size or
//!   direction, as `FIONREAD`) whose argument is an `int *`: the bytes in
//!   the FIFO. Its layout is declared ([`FileOperations::IOCTL_LAYOUTS`]),
//!   so it works over CUSE; over FUSE it fails `EOPNOTSUPP`;
//! * `XYZ_IOC_REVERSE = _IOWR('X', 6, struct xyz_buf)`, with
//!   `struct xyz_buf { __u64 addr; __u32 len; __u32 done; }`: reverses
//!   the `len` bytes (at most [`REVERSE_MAX`]) at `addr` in the caller's
//!   memory in place and sets `done`: a pointer followed (over CUSE; over
//!   FUSE `EOPNOTSUPP`);
//! * `write` appends to the FIFO, waiting while it is full; `read` takes
//!   from it, waiting while it is empty (`EAGAIN` with `O_NONBLOCK`): both,
//!   and `XYZ_IOC_WAIT`, are async handlers ([`AsyncFileOperations`]),
//!   whose waits hold no server thread;
//!   `poll` reports `POLLIN` when not empty, `POLLOUT` when not full.

use devlife_core::debugfs::{Dentry, devm_create_dir};
use devlife_core::fops::{FileOperations, Ioctl, KResult, OpCtx, PollMask, PollTable};
use devlife_core::gate::sync::lock;
use devlife_core::gate::{CancellableMutex, WaitQueue};
use devlife_core::ioctl::Dir;
use devlife_core::{
    AsyncCtx, AsyncFileOperations, Bound, Cdev, ChrdevRegion, DeviceAttribute, DeviceNode, Driver, Errno,
    IoctlCmd, IoctlDef, IoctlLayout, ReadBuf, System, Unbound, WeakDevice, devm_cdev_device_add,
    devm_device_create_file,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// `_IOR('X', 1, u64)`: increment and return the operation count.
pub const XYZ_IOC_COUNT: IoctlCmd = IoctlCmd::ior(b'X', 1, 8);
/// `_IOW('X', 2, u32)`: busy for that many milliseconds, not cancellable.
pub const XYZ_IOC_HOLD: IoctlCmd = IoctlCmd::iow(b'X', 2, 4);
/// `_IO('X', 3)`: wait until removed or interrupted.
pub const XYZ_IOC_WAIT: IoctlCmd = IoctlCmd::io(b'X', 3);
/// `_IO('X', 4)`: take the hardware lock cancellably.
pub const XYZ_IOC_LOCK: IoctlCmd = IoctlCmd::io(b'X', 4);
/// `_IO('X', 5)`: unbind this device from inside its own handler.
pub const XYZ_IOC_UNBIND_SELF: IoctlCmd = IoctlCmd::io(b'X', 5);
/// A tty-style number with an `int *` argument: the bytes in the FIFO.
pub const XYZ_IOC_FIFO_LEN: IoctlCmd = IoctlCmd::from_raw(0x5858);
/// `_IOWR('X', 6, struct xyz_buf)`: reverse a buffer the argument points to.
pub const XYZ_IOC_REVERSE: IoctlCmd = IoctlCmd::iowr(b'X', 6, 16);
/// The longest buffer `XYZ_IOC_REVERSE` takes.
pub const REVERSE_MAX: usize = 4096;
/// The driver's ioctls, for clients (`devlife ioctls xyz`).
pub const IOCTLS: &[IoctlDef] = &[
    IoctlDef {
        name: "XYZ_IOC_COUNT",
        cmd: XYZ_IOC_COUNT,
        arg: "__u64",
        doc: "increment the count, return it",
    },
    IoctlDef {
        name: "XYZ_IOC_HOLD",
        cmd: XYZ_IOC_HOLD,
        arg: "__u32",
        doc: "stay busy that many ms (not cancellable)",
    },
    IoctlDef { name: "XYZ_IOC_WAIT", cmd: XYZ_IOC_WAIT, arg: "", doc: "sleep until removed or interrupted" },
    IoctlDef { name: "XYZ_IOC_LOCK", cmd: XYZ_IOC_LOCK, arg: "", doc: "take the hardware lock cancellably" },
    IoctlDef {
        name: "XYZ_IOC_UNBIND_SELF",
        cmd: XYZ_IOC_UNBIND_SELF,
        arg: "",
        doc: "unbind the device from inside this handler",
    },
    IoctlDef {
        name: "XYZ_IOC_FIFO_LEN",
        cmd: XYZ_IOC_FIFO_LEN,
        arg: "int *",
        doc: "bytes in the FIFO (tty-style number: CUSE only)",
    },
    IoctlDef {
        name: "XYZ_IOC_REVERSE",
        cmd: XYZ_IOC_REVERSE,
        arg: "struct xyz_buf",
        doc: "reverse the buffer it points to (CUSE only)",
    },
];

/// FIFO capacity.
pub const FIFO_SIZE: usize = 64 * 1024;
/// The longest `XYZ_IOC_HOLD` accepted, in milliseconds.
pub const HOLD_MAX_MS: u32 = 60_000;
/// Minors the driver reserves (devices it can bind at once).
pub const XYZ_MINORS: u32 = 1024;

/// What happened to xyz bindings, in order, for tests and the torture run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XyzEvent {
    /// A probe completed (binding id, device name).
    Probed(u64, String),
    /// A probe failed after step `n` and was unwound.
    ProbeFailed(u64, usize),
    /// The driver's `remove` callback ran.
    Remove(u64),
    /// A file of the binding was released.
    Released(u64),
    /// A hold began.
    HoldStart(u64),
    /// A hold ended.
    HoldEnd(u64),
    /// The binding's minor was freed (a managed resource).
    MinorFreed(u64),
    /// The binding's context was dropped.
    ContextDropped(u64),
}

/// The driver's event log.
pub type EventLog = Arc<Mutex<Vec<XyzEvent>>>;

/// Fault injection, driver-wide, served as `debug/xyz/fault/<name>`.
#[derive(Default, Clone)]
pub struct Faults {
    /// `panic`: `XYZ_IOC_COUNT` panics (the caller gets `EIO`).
    pub panic: Arc<AtomicBool>,
    /// `slow_release_ms`: every release sleeps this long (capped at 10 s).
    pub slow_release_ms: Arc<AtomicU64>,
    /// `fail_probe_at`: probes fail after step 1 (minor), 2 (character
    /// device, attribute) or 3 (debugfs); 0: never.
    pub fail_probe_at: Arc<AtomicU64>,
    /// `lock_hw_in_remove`: `remove` takes the hardware lock and never
    /// releases it (the context is dropped with it held).
    pub lock_hw_in_remove: Arc<AtomicBool>,
    /// `fail_alloc`: growing the FIFO fails as if memory were exhausted.
    pub fail_alloc: Arc<AtomicBool>,
}

impl Faults {
    fn publish(&self, dir: &Dentry) -> devlife_core::Result<()> {
        dir.create_bool("panic", 0o600, self.panic.clone())?;
        dir.create_u64("slow_release_ms", 0o600, self.slow_release_ms.clone())?;
        dir.create_u64("fail_probe_at", 0o600, self.fail_probe_at.clone())?;
        dir.create_bool("lock_hw_in_remove", 0o600, self.lock_hw_in_remove.clone())?;
        dir.create_bool("fail_alloc", 0o600, self.fail_alloc.clone())?;
        Ok(())
    }
}

/// The per-binding context made in `probe` (the seed's
/// `xyz_driver_context`).
pub struct XyzContext {
    binding: u64,
    count: Arc<AtomicU64>,
    fifo: Mutex<VecDeque<u8>>,
    /// Readers and `POLLIN` pollers.
    readable: WaitQueue,
    /// Writers and `POLLOUT` pollers.
    writable: WaitQueue,
    /// `XYZ_IOC_WAIT` sleepers: never woken but by cancellation.
    never: WaitQueue,
    /// The hardware lock.
    pub hw: CancellableMutex<()>,
    events: Option<EventLog>,
    faults: Faults,
}

impl XyzContext {
    fn event(&self, e: XyzEvent) {
        if let Some(log) = &self.events {
            lock(log).push(e);
        }
    }

    /// The binding this context belongs to.
    pub fn binding(&self) -> u64 {
        self.binding
    }

    /// The operation count.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for XyzContext {
    fn drop(&mut self) {
        self.event(XyzEvent::ContextDropped(self.binding));
    }
}

/// The character device's operations (the seed's `xyz_ioctl_dev`): they
/// hold the host's context.
pub struct XyzIoctlDev {
    ctx: Arc<XyzContext>,
    dev: WeakDevice,
}

impl FileOperations for XyzIoctlDev {
    type File = ();

    const IOCTL_LAYOUTS: &'static [IoctlLayout] = &[IoctlLayout::new(XYZ_IOC_FIFO_LEN, Dir::READ, 4)];

    fn open(&self, _cx: &OpCtx<'_>) -> KResult<()> {
        Ok(())
    }

    fn ioctl(&self, _f: &(), cx: &OpCtx<'_>, io: &mut Ioctl<'_>) -> KResult<i64> {
        let ctx = &self.ctx;
        match io.cmd() {
            XYZ_IOC_COUNT => {
                if ctx.faults.panic.load(Ordering::Relaxed) {
                    panic!("xyz: injected panic in XYZ_IOC_COUNT");
                }
                let n = ctx.count.fetch_add(1, Ordering::Relaxed) + 1;
                io.set_output(&n.to_ne_bytes())?;
                Ok(0)
            }
            XYZ_IOC_HOLD => {
                let ms = io.input_u32()?;
                if ms > HOLD_MAX_MS {
                    return Err(Errno::EINVAL);
                }
                ctx.event(XyzEvent::HoldStart(ctx.binding));
                // Deliberately not a cancellable wait: hardware is busy.
                std::thread::sleep(Duration::from_millis(u64::from(ms)));
                ctx.event(XyzEvent::HoldEnd(ctx.binding));
                Ok(0)
            }
            XYZ_IOC_FIFO_LEN => {
                let n = lock(&ctx.fifo).len() as u32;
                io.set_output(&n.to_ne_bytes())?;
                Ok(0)
            }
            XYZ_IOC_REVERSE => {
                // struct xyz_buf { __u64 addr; __u32 len; __u32 done; }
                let arg = io.input();
                let field = |r: std::ops::Range<usize>| arg.get(r).ok_or(Errno::EINVAL);
                let addr = u64::from_ne_bytes(field(0..8)?.try_into().map_err(|_| Errno::EINVAL)?);
                let len = u32::from_ne_bytes(field(8..12)?.try_into().map_err(|_| Errno::EINVAL)?) as usize;
                if len > REVERSE_MAX {
                    return Err(Errno::EINVAL);
                }
                // Every region named before anything is done (see
                // devlife_core::uaccess): the handler may run again.
                let (data, out) = io.user_inout(addr, len)?;
                let reversed: Vec<u8> = data.iter().rev().copied().collect();
                io.write_user(out, &reversed)?;
                let mut reply = arg[..12].to_vec();
                reply.extend_from_slice(&(len as u32).to_ne_bytes());
                io.set_output(&reply)?;
                Ok(0)
            }
            // The async ioctl waits without a thread; this is the blocking
            // form, for a caller of the blocking API.
            XYZ_IOC_WAIT => cx.wait_event(&ctx.never, || false).map(|()| 0),
            XYZ_IOC_LOCK => cx.lock(&ctx.hw).map(|_| 0),
            XYZ_IOC_UNBIND_SELF => {
                let dev = self.dev.upgrade().ok_or(Errno::ENODEV)?;
                match dev.unbind()? {
                    Unbound::Deferred => Ok(1),
                    Unbound::Complete => Ok(0),
                }
            }
            _ => Err(Errno::ENOTTY),
        }
    }

    /// Every xyz argument has one layout for 32- and 64-bit callers
    /// (fixed-size fields; `struct xyz_buf` carries its pointer in a
    /// `u64`, 16 bytes either way), so a 32-bit caller's ioctl is the same
    /// call (Linux's `compat_ptr_ioctl`).
    fn compat_ioctl(&self, f: &(), cx: &OpCtx<'_>, io: &mut Ioctl<'_>) -> KResult<i64> {
        self.ioctl(f, cx, io)
    }

    fn poll(&self, _f: &(), _cx: &OpCtx<'_>, pt: &PollTable<'_>) -> PollMask {
        pt.wait(&self.ctx.readable);
        pt.wait(&self.ctx.writable);
        let len = lock(&self.ctx.fifo).len();
        let mut m = PollMask::NONE;
        if len > 0 {
            m |= PollMask::IN | PollMask::RDNORM;
        }
        if len < FIFO_SIZE {
            m |= PollMask::OUT | PollMask::WRNORM;
        }
        m
    }

    fn release(&self, _file: ()) {
        let ms = self.ctx.faults.slow_release_ms.load(Ordering::Relaxed).min(10_000);
        if ms > 0 {
            std::thread::sleep(Duration::from_millis(ms));
        }
        self.ctx.event(XyzEvent::Released(self.ctx.binding));
    }
}

/// The file operations that wait, as futures: a reader of an empty FIFO, a
/// writer of a full one and `XYZ_IOC_WAIT` hold no server thread. Each
/// takes or puts FIFO bytes only in the step that completes, so dropping
/// the future (removal, a signal) loses nothing.
impl AsyncFileOperations for XyzIoctlDev {
    async fn read_async(&self, _f: &(), cx: &AsyncCtx, buf: &mut ReadBuf, _off: u64) -> KResult<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let ctx = &self.ctx;
        loop {
            {
                let mut fifo = lock(&ctx.fifo);
                if !fifo.is_empty() {
                    let n = buf.len().min(fifo.len());
                    for (dst, src) in buf.as_mut_slice().iter_mut().zip(fifo.drain(..n)) {
                        *dst = src;
                    }
                    drop(fifo);
                    ctx.writable.wake_all();
                    return Ok(n);
                }
            }
            if cx.nonblock() {
                return Err(Errno::EAGAIN);
            }
            ctx.readable.wait_until(|| !lock(&ctx.fifo).is_empty()).await;
        }
    }

    async fn write_async(&self, _f: &(), cx: &AsyncCtx, data: &[u8], _off: u64) -> KResult<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let ctx = &self.ctx;
        loop {
            {
                let mut fifo = lock(&ctx.fifo);
                let room = FIFO_SIZE - fifo.len();
                if room > 0 {
                    let n = room.min(data.len());
                    if ctx.faults.fail_alloc.load(Ordering::Relaxed) || fifo.try_reserve(n).is_err() {
                        return Err(Errno::ENOMEM);
                    }
                    fifo.extend(&data[..n]);
                    drop(fifo);
                    ctx.readable.wake_all();
                    return Ok(n);
                }
            }
            if cx.nonblock() {
                return Err(Errno::EAGAIN);
            }
            ctx.writable.wait_until(|| lock(&ctx.fifo).len() < FIFO_SIZE).await;
        }
    }

    async fn ioctl_async(&self, f: &(), cx: &AsyncCtx, io: &mut Ioctl<'_>) -> KResult<i64> {
        match io.cmd() {
            // Until removed (ENODEV) or interrupted (EINTR): both drop
            // this future, so it never completes by itself.
            XYZ_IOC_WAIT => {
                self.ctx.never.wait_until(|| false).await;
                Ok(0)
            }
            // The rest complete in their first poll, on the transport's
            // thread, as blocking handlers (HOLD's busy sleep included).
            _ if io.is_compat() => self.compat_ioctl(f, &cx.op_ctx(), io),
            _ => self.ioctl(f, &cx.op_ctx(), io),
        }
    }
}

/// The xyz driver: one chrdev region for all its devices, one minor each.
pub struct XyzDriver {
    region: ChrdevRegion,
    minors: Arc<Mutex<BTreeSet<u32>>>,
    debugfs: Dentry,
    events: Option<EventLog>,
    faults: Faults,
    contexts: Arc<Mutex<BTreeMap<String, Weak<XyzContext>>>>,
}

/// Fault injection and inspection for a registered [`XyzDriver`].
#[derive(Clone)]
pub struct XyzControl {
    /// The driver's fault-injection switches.
    pub faults: Faults,
    contexts: Arc<Mutex<BTreeMap<String, Weak<XyzContext>>>>,
}

impl XyzControl {
    /// Makes probes fail after step `n` (1..=3), or never (0).
    pub fn fail_probe_at(&self, n: usize) {
        self.faults.fail_probe_at.store(n as u64, Ordering::Relaxed);
    }

    /// The context of the device called `name`, while it is bound.
    pub fn context(&self, name: &str) -> Option<Arc<XyzContext>> {
        lock(&self.contexts).get(name).and_then(Weak::upgrade)
    }
}

impl XyzDriver {
    /// The driver, with its chrdev region and its `xyz` debugfs directory
    /// made on `sys` (module init).
    pub fn new(sys: &System, events: Option<EventLog>) -> devlife_core::Result<(Self, XyzControl)> {
        let region = sys.alloc_chrdev_region(0, XYZ_MINORS, "xyz")?;
        let root = sys.debugfs();
        let debugfs = match root.child("xyz") {
            Some(d) => d,
            None => root.create_dir("xyz")?,
        };
        // One set of switches per registration, published (again) under
        // debug/xyz/fault.
        let faults = Faults::default();
        if let Some(old) = debugfs.child("fault") {
            old.remove();
        }
        faults.publish(&debugfs.create_dir("fault")?)?;
        let drv =
            XyzDriver { region, minors: Arc::default(), debugfs, events, faults, contexts: Arc::default() };
        let ctl = XyzControl { faults: drv.faults.clone(), contexts: drv.contexts.clone() };
        Ok((drv, ctl))
    }

    fn event(&self, e: XyzEvent) {
        if let Some(log) = &self.events {
            lock(log).push(e);
        }
    }

    fn fail_after(&self, step: usize, binding: u64) -> KResult<()> {
        if self.faults.fail_probe_at.load(Ordering::Relaxed) == step as u64 {
            self.event(XyzEvent::ProbeFailed(binding, step));
            return Err(Errno::EIO);
        }
        Ok(())
    }
}

impl Driver for XyzDriver {
    type Data = Arc<XyzContext>;

    fn name(&self) -> &str {
        "xyz"
    }

    fn id_table(&self) -> &[&str] {
        &["xyz"]
    }

    fn probe(&self, dev: &Bound<'_>) -> KResult<Arc<XyzContext>> {
        let binding = dev.binding_id();
        let ctx = Arc::new(XyzContext {
            binding,
            count: Arc::new(AtomicU64::new(0)),
            fifo: Mutex::new(VecDeque::new()),
            readable: WaitQueue::new(),
            writable: WaitQueue::new(),
            never: WaitQueue::new(),
            hw: CancellableMutex::new(()),
            events: self.events.clone(),
            faults: self.faults.clone(),
        });

        // Step 1: a minor, freed when the binding ends.
        let minor = {
            let mut used = lock(&self.minors);
            let m = (0..self.region.count()).find(|m| !used.contains(m)).ok_or(Errno::ENOSPC)?;
            used.insert(m);
            m
        };
        let (minors, events) = (self.minors.clone(), self.events.clone());
        dev.devres().add_or_reset("xyz minor", move || {
            lock(&minors).remove(&minor);
            if let Some(log) = events {
                lock(&log).push(XyzEvent::MinorFreed(binding));
            }
        })?;
        self.fail_after(1, binding)?;

        // Step 2: the character device, removed before the context drops.
        let devt = self.region.devt(minor).ok_or(Errno::ENOSPC)?;
        let node = DeviceNode::new(dev.name(), devt).class("xyz");
        devm_cdev_device_add(
            dev,
            Cdev::new_async(XyzIoctlDev { ctx: ctx.clone(), dev: dev.device().downgrade() }),
            node,
        )?;
        self.fail_after(2, binding)?;

        // A read-only attribute in the device's sysfs directory.
        let c = ctx.count.clone();
        devm_device_create_file(
            dev,
            DeviceAttribute::read_only("count", move || Ok(format!("{}\n", c.load(Ordering::Relaxed)))),
        )?;

        // Step 3: debugfs xyz/<name>/ops.
        let dir = devm_create_dir(dev, &self.debugfs, dev.name())?;
        dir.create_u64("ops", 0o444, ctx.count.clone())?;
        self.fail_after(3, binding)?;

        lock(&self.contexts).insert(dev.name().to_owned(), Arc::downgrade(&ctx));
        self.event(XyzEvent::Probed(binding, dev.name().to_owned()));
        Ok(ctx)
    }

    fn remove(&self, dev: &Bound<'_>, ctx: &Arc<XyzContext>) {
        self.event(XyzEvent::Remove(ctx.binding));
        if self.faults.lock_hw_in_remove.load(Ordering::Relaxed) {
            // Hold the hardware lock through the rest of the removal (and
            // beyond: the context is dropped with it held). Handlers waiting
            // for it must be cancelled by the removal, not released by it.
            std::mem::forget(ctx.hw.lock());
        }
        let mut c = lock(&self.contexts);
        if c.get(dev.name()).is_some_and(|w| w.as_ptr() == Arc::as_ptr(ctx)) {
            c.remove(dev.name());
        }
    }
}

/// Registers bus `sim` (if missing) and the xyz driver on `sys`.
pub fn register(sys: &System, events: Option<EventLog>) -> devlife_core::Result<XyzControl> {
    let bus = match sys.bus("sim") {
        Some(b) => b,
        None => sys.bus_register("sim")?,
    };
    let (drv, ctl) = XyzDriver::new(sys, events)?;
    bus.register_driver(drv)?;
    Ok(ctl)
}
