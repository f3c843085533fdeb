//! `bench`: the device `devlife bench` measures, the same file as its
//! peers (a libfuse and a fuser server) serve.
//!
//! Bus `sim`, device type `bench`; node `dev/<name>`, class `bench`. The
//! context made in `probe` and owned by the binding holds a count:
//!
//! * `read`: returns `dev\n`, or as much of it as asked (at most 4 bytes),
//!   never blocking;
//! * `write`: takes every byte;
//! * `XYZ_IOC_COUNT = _IOR('X', 1, u64)`: increments the count, returns it;
//!   any other command is `ENOTTY`.
//!
//! For the unplug benchmark, `debug/bench/debugfs_files` (default 0) is how
//! many `u64` files each probe creates in `debug/bench/<name>/`, removed
//! with the binding.

use crate::xyz::XYZ_IOC_COUNT;
use devlife_core::gate::sync::lock;

/// The driver's ioctls, for clients (`devlife ioctls bench`): xyz's count.
pub const IOCTLS: &[devlife_core::IoctlDef] = &[devlife_core::IoctlDef {
    name: "XYZ_IOC_COUNT",
    cmd: XYZ_IOC_COUNT,
    arg: "__u64",
    doc: "increment the count, return it",
}];
use devlife_core::debugfs::{Dentry, devm_create_dir};
use devlife_core::fops::{FileOperations, Ioctl, KResult, OpCtx, PollMask, PollTable};
use devlife_core::{Bound, Cdev, DeviceNode, Driver, Errno, System, devm_cdev_device_add};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What a read returns.
const DATA: &[u8; 4] = b"dev\n";

/// Minors of the driver's region: devices bound at once.
const MINORS: u32 = 256;

/// A `bench` device's context, owned by its binding.
#[derive(Debug, Default)]
pub struct BenchContext {
    count: AtomicU64,
}

/// The character device's operations; they borrow the host's context.
struct BenchDev {
    ctx: Arc<BenchContext>,
}

impl FileOperations for BenchDev {
    type File = ();

    fn open(&self, _cx: &OpCtx<'_>) -> KResult<()> {
        Ok(())
    }

    fn read(&self, _f: &(), _cx: &OpCtx<'_>, buf: &mut [u8], _off: u64) -> KResult<usize> {
        let n = buf.len().min(DATA.len());
        buf[..n].copy_from_slice(&DATA[..n]);
        Ok(n)
    }

    fn write(&self, _f: &(), _cx: &OpCtx<'_>, data: &[u8], _off: u64) -> KResult<usize> {
        Ok(data.len())
    }

    fn ioctl(&self, _f: &(), _cx: &OpCtx<'_>, io: &mut Ioctl<'_>) -> KResult<i64> {
        if io.cmd() != XYZ_IOC_COUNT {
            return Err(Errno::ENOTTY);
        }
        let n = self.ctx.count.fetch_add(1, Ordering::Relaxed) + 1;
        io.set_output(&n.to_ne_bytes())?;
        Ok(0)
    }

    fn poll(&self, _f: &(), _cx: &OpCtx<'_>, _pt: &PollTable<'_>) -> PollMask {
        PollMask::IN | PollMask::OUT
    }
}

/// The `bench` driver.
pub struct BenchDriver {
    region: devlife_core::chrdev::ChrdevRegion,
    minors: Arc<std::sync::Mutex<std::collections::BTreeSet<u32>>>,
    debugfs: Dentry,
    debugfs_files: Arc<AtomicU64>,
}

impl Driver for BenchDriver {
    type Data = Arc<BenchContext>;

    fn name(&self) -> &str {
        "bench"
    }

    fn id_table(&self) -> &[&str] {
        &["bench"]
    }

    fn probe(&self, dev: &Bound<'_>) -> KResult<Arc<BenchContext>> {
        let ctx = Arc::new(BenchContext::default());
        let minor = {
            let mut used = lock(&self.minors);
            let m = (0..self.region.count()).find(|m| !used.contains(m)).ok_or(Errno::ENOSPC)?;
            used.insert(m);
            m
        };
        let minors = self.minors.clone();
        dev.devres().add_or_reset("bench minor", move || {
            lock(&minors).remove(&minor);
        })?;
        let devt = self.region.devt(minor).ok_or(Errno::ENOSPC)?;
        let node = DeviceNode::new(dev.name(), devt).class("bench");
        devm_cdev_device_add(dev, Cdev::new(BenchDev { ctx: ctx.clone() }), node)?;
        let files = self.debugfs_files.load(Ordering::Relaxed);
        if files > 0 {
            let dir = devm_create_dir(dev, &self.debugfs, dev.name())?;
            for i in 0..files {
                dir.create_u64(&format!("f{i}"), 0o444, Arc::new(AtomicU64::new(i)))?;
            }
        }
        Ok(ctx)
    }
}

/// Registers the `bench` driver on bus `sim` (made if missing), with its
/// chrdev region and `debug/bench/debugfs_files`.
pub fn register(sys: &System) -> devlife_core::Result<()> {
    let bus = match sys.bus("sim") {
        Some(b) => b,
        None => sys.bus_register("sim")?,
    };
    let region = sys.alloc_chrdev_region(0, MINORS, "bench")?;
    let root = sys.debugfs();
    let debugfs = match root.child("bench") {
        Some(d) => d,
        None => root.create_dir("bench")?,
    };
    let debugfs_files = Arc::new(AtomicU64::new(0));
    if let Some(old) = debugfs.child("debugfs_files") {
        old.remove();
    }
    debugfs.create_u64("debugfs_files", 0o600, debugfs_files.clone())?;
    bus.register_driver(BenchDriver { region, minors: Arc::default(), debugfs, debugfs_files })?;
    Ok(())
}
