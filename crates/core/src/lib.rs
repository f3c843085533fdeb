//! A userspace Linux-style driver core whose removal guarantee covers file
//! operations.
//!
//! In Linux, `cdev_del()` stops new opens, but operations on descriptors
//! already open keep running, often on driver data that the unbind just
//! freed. This crate implements the fix proposed on LKML in 2021
//! (`devm_cdev_device_add(host, cdev, dev)`): the host's driver binding
//! bounds the lifetime of everything the file operations use, and removing
//! a character device, a debugfs file or an attribute guarantees no new
//! opens, no new handler calls, and that every thread inside a handler has
//! left it, through one in-flight-operation mechanism
//! ([`devlife_gate::Gate`]) shared by all of them.
//!
//! # Examples
//!
//! A driver whose character device reads the host's context, bound,
//! used, and unbound with a file still open:
//!
//! ```
//! use devlife_core::*;
//! use std::sync::Arc;
//!
//! /// The host's context: what the binding owns and the handlers borrow.
//! struct Hello { greeting: String }
//!
//! /// The character device's operations.
//! struct HelloDev(Arc<Hello>);
//!
//! impl FileOperations for HelloDev {
//!     type File = ();
//!     const LLSEEK: Llseek = Llseek::Default; // `cat` reads to the end
//!     fn open(&self, _cx: &OpCtx<'_>) -> KResult<()> { Ok(()) }
//!     fn read(&self, _: &(), _cx: &OpCtx<'_>, buf: &mut [u8], offset: u64) -> KResult<usize> {
//!         // No `try_access`: the removal waits for this handler.
//!         Ok(fops::simple_read_from_buffer(buf, offset, self.0.greeting.as_bytes()))
//!     }
//! }
//!
//! struct HelloDriver;
//!
//! impl Driver for HelloDriver {
//!     type Data = Arc<Hello>;
//!     fn name(&self) -> &str { "hello" }
//!     fn id_table(&self) -> &[&str] { &["hello"] }
//!     fn probe(&self, dev: &Bound<'_>) -> KResult<Arc<Hello>> {
//!         let ctx = Arc::new(Hello { greeting: format!("hello from {}\n", dev.name()) });
//!         let region = dev.system().alloc_chrdev_region(0, 1, "hello")?;
//!         let node = DeviceNode::new(dev.name(), region.first());
//!         dev.devres().add_or_reset("region", move || drop(region))?;
//!         // Removed at unbind, before `ctx` is dropped.
//!         devm_cdev_device_add(dev, Cdev::new(HelloDev(ctx.clone())), node)?;
//!         Ok(ctx)
//!     }
//! }
//!
//! let sys = System::new();
//! let bus = sys.bus_register("platform")?;
//! bus.register_driver(HelloDriver)?;
//! bus.add_device("hello0", "hello")?; // probes
//!
//! let file = sys.dev_lookup("hello0").unwrap().node.open(&Caller::default())?;
//! let mut buf = [0u8; 64];
//! let n = file.read(&mut buf, 0, &Caller::default())?;
//! assert_eq!(&buf[..n], b"hello from hello0\n");
//!
//! bus.unbind("hello0", None)?; // returns once no handler is inside
//! assert_eq!(file.read(&mut buf, 0, &Caller::default()), Err(Errno::ENODEV));
//! assert!(sys.dev_lookup("hello0").is_none());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! To serve a system to real processes (`cat`, `ioctl`, `poll` on a FUSE
//! mount), see the `devlife-serve` crate.
//!
//! * [`System`]: one driver core: buses, device numbers, device nodes,
//!   classes, debugfs, counters.
//! * [`Bus`], [`Device`], [`Driver`], [`Bound`]: match, probe, bind,
//!   unbind, hot-plug, driver registration (`drivers/base`).
//! * [`Devres`]: managed resources released newest first at unbind and on
//!   probe failure (`drivers/base/devres.c`); [`devm_kthread_run`] and
//!   [`devm_delayed_work_autocancel`]: a thread and delayed work the
//!   binding stops and joins; [`Bound::driver_debugfs`]: a driver's
//!   debugfs directory, removed with the driver.
//! * [`FileOperations`], [`Cdev`],
//!   [`cdev_device_add`], [`devm_cdev_device_add`], chrdev regions,
//!   [`misc_register`] (`fs/char_dev.c`, `drivers/char/misc.c`).
//! * [`debugfs`] (`fs/debugfs`), device attributes ([`attr`]).
//! * [`File`], [`NodeRef`]: what a transport (the FUSE server, tests) holds.
//!
//! # What users see after a removal
//!
//! | operation | character device | debugfs |
//! | --- | --- | --- |
//! | open through a stale reference | `ENXIO` | `ENOENT` |
//! | read, write, ioctl | `ENODEV` | `EIO` |
//! | poll | `POLLHUP \| POLLERR`, pollers woken | `POLLHUP` |
//! | a handler asleep in a cancellable wait | woken, `ENODEV` | woken, `EIO` |
//! | a handler still running | the removal waits for it | same |
//! | flush, close | succeed | succeed |
//! | release | ran once per open, during the removal | same |
//!
//! After the removal returns, no driver code of that object runs again.
//!
//! # Errors: [`Errno`] and [`Error`]
//!
//! Two types, one story, as in the kernel:
//!
//! * a **handler** (a [`FileOperations`] method, `probe`, an attribute's
//!   `show`/`store`) answers what a system call returns to a process, so it
//!   returns an [`Errno`] ([`KResult`]), as a kernel handler returns
//!   `-EFOO`;
//! * a **framework operation** (bind, add a device, register a region or a
//!   file) fails with an [`Error`], which says what went wrong
//!   ([`Error::Exists`], [`Error::NoSuchDevice`], ...) and changed nothing.
//!
//! An [`Error`] becomes an [`Errno`] in one place, `errno.rs`
//! (`impl From<Error> for Errno`), so `?` in a `probe` that calls the
//! framework just works: `devm_cdev_device_add(dev, ...)?`. The codes a
//! removed object answers with are chosen there too ([`NodeKind`]).

pub mod afops;
pub mod attr;
pub mod bus;
mod cdev;
pub mod chrdev;
pub mod debugfs;
pub mod device;
pub mod devres;
pub mod driver;
mod epoch;
pub mod errno;
mod error;
pub mod exec;
pub mod fops;
mod id;
pub mod ioctl;
pub mod kthread;
mod misc;
pub mod name;
mod node;
mod panic;
pub mod percpu;
pub mod stats;
pub mod store;
pub mod system;
pub mod text;
pub mod uaccess;
pub mod work;

pub use afops::{AsyncCtx, AsyncFileOperations, ReadBuf};
pub use attr::{DeviceAttribute, devm_device_create_file};
pub use bus::{Bus, Unbound};
pub use cdev::{Cdev, CdevRegistration, DeviceNode, cdev_device_add, devm_cdev_device_add};
pub use chrdev::{ChrdevRegion, DevT};
pub use device::{Bound, Device, WeakDevice};
pub use devres::Devres;
pub use driver::Driver;
pub use errno::{Errno, NodeKind};
pub use error::{Error, Result};
pub use fops::{
    Caller, Credentials, FileOperations, FlushFn, Ioctl, KResult, Llseek, OpCtx, PollMask, PollTable,
};
pub use ioctl::{IoctlCmd, IoctlDef, IoctlFormat, ioctl_table};
pub use kthread::{KthreadStop, devm_kthread_run};
pub use misc::{MiscDeviceOptions, MiscRegistration, devm_misc_register, misc_register};
pub use node::{File, IoctlCall, IoctlDone, NodeRef, Pending, Removed, Started};
pub use panic::quiet_handler_panics;
pub use system::{Change, DevNode, System, WeakSystem};
pub use uaccess::{IoctlLayout, IoctlOutcome, UserOut, UserRegion};
pub use work::{DelayedWork, devm_delayed_work_autocancel};

/// The gate crate, re-exported for drivers' wait queues and locks.
pub use devlife_gate as gate;

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
