//! Character devices: [`cdev_device_add`] and the managed
//! [`devm_cdev_device_add`] the `cdev: Generic shutdown handling` thread
//! proposed.

use crate::afops::AsyncFileOperations;
use crate::chrdev::DevT;
use crate::device::Bound;
use crate::errno::NodeKind;
use crate::fops::FileOperations;
use crate::node::{AsyncOps, Node, NodeDyn, NodeRef, Removed};
use crate::system::{DevNode, System};
use crate::{Error, Result};
use devlife_gate::sync::lock;
use std::sync::Arc;

/// A character device: file operations to register for a device number
/// (Linux `struct cdev`).
pub struct Cdev<F: FileOperations> {
    ops: F,
    asyncs: Option<AsyncOps<F>>,
}

impl<F: FileOperations> Cdev<F> {
    /// A character device with operations `ops`. The object is dropped when
    /// the device is removed, after every handler has returned and every
    /// open file was released.
    #[doc(alias = "cdev_init")]
    pub fn new(ops: F) -> Self {
        Cdev { ops, asyncs: None }
    }
}

impl<F: AsyncFileOperations> Cdev<F> {
    /// A character device whose `read`, `write` and `ioctl` are the
    /// futures of [`AsyncFileOperations`]: a request that waits holds no
    /// server thread. The object is dropped when the device is removed,
    /// after every handler has returned, every pending future was dropped
    /// and every open file was released.
    pub fn new_async(ops: F) -> Self {
        Cdev { ops, asyncs: Some(AsyncOps::of()) }
    }
}

/// The device a character device is published as: its node name, number,
/// class and permissions (the `dev` argument of `cdev_device_add`).
#[derive(Debug, Clone)]
pub struct DeviceNode {
    name: String,
    devt: DevT,
    class: Option<String>,
    mode: u32,
    owner: Option<(u32, u32)>,
}

impl DeviceNode {
    /// Node `name` for device number `devt`, mode `0600`, owned by the
    /// system's default owner ([`System::set_default_owner`]).
    pub fn new(name: impl Into<String>, devt: DevT) -> Self {
        DeviceNode { name: name.into(), devt, class: None, mode: 0o600, owner: None }
    }
    /// Lists the node under `/sys/class/<class>/`.
    pub fn class(mut self, class: impl Into<String>) -> Self {
        self.class = Some(class.into());
        self
    }
    /// Permission bits (`0o7777` mask).
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode & 0o7777;
        self
    }
    /// Owner and group.
    pub fn owner(mut self, uid: u32, gid: u32) -> Self {
        self.owner = Some((uid, gid));
        self
    }
    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A registered character device. Dropping it (or [`remove`](Self::remove))
/// is `cdev_device_del`: no new opens, no new operations, every handler
/// has returned and every open file is released when it returns.
#[must_use = "dropping the registration removes the device at once"]
pub struct CdevRegistration {
    sys: System,
    name: String,
    devt: DevT,
    node: Option<Arc<dyn NodeDyn>>,
}

impl CdevRegistration {
    /// The device number.
    pub fn devt(&self) -> DevT {
        self.devt
    }

    /// The node name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A reference to the device, as a lookup of its node returns it.
    pub fn node(&self) -> Option<NodeRef> {
        self.node.clone().map(NodeRef)
    }

    /// Removes the device now (Linux `cdev_device_del`).
    #[doc(alias = "cdev_device_del")]
    pub fn remove(mut self) -> Removed {
        self.del()
    }

    fn del(&mut self) -> Removed {
        let Some(node) = self.node.take() else { return Removed::Complete };
        let class = {
            // Unpublish first: no new lookups or opens by number.
            let mut reg = lock(&self.sys.inner.devnodes);
            let mut class = None;
            if reg.by_name.get(&self.name).is_some_and(|n| Arc::ptr_eq(&n.node.0, &node)) {
                class = reg.by_name.remove(&self.name).and_then(|n| n.class).map(|c| c.to_string());
            }
            if reg.by_devt.get(&self.devt).is_some_and(|n| Arc::ptr_eq(&n.0, &node)) {
                reg.by_devt.remove(&self.devt);
            }
            class
        };
        self.sys.forget_dev_nodes();
        self.sys.changed(crate::system::Change::DevNodeRemoved { name: self.name.clone(), class });
        node.remove_dyn()
    }
}

impl Drop for CdevRegistration {
    fn drop(&mut self) {
        let _ = self.del();
    }
}

impl std::fmt::Debug for CdevRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CdevRegistration").field("name", &self.name).field("devt", &self.devt).finish()
    }
}

fn class_of(sys: &System, name: &str) -> Option<String> {
    lock(&sys.inner.devnodes).by_name.get(name).and_then(|n| n.class.as_deref().map(str::to_owned))
}

pub(crate) fn add<F: FileOperations>(
    sys: &System,
    cdev: Cdev<F>,
    dev: DeviceNode,
    binding: Option<Arc<crate::epoch::Epoch>>,
) -> Result<CdevRegistration> {
    crate::name::validate(&dev.name)?;
    if let Some(c) = &dev.class {
        crate::name::validate(c)?;
    }
    let (uid, gid) = dev.owner.unwrap_or_else(|| *lock(&sys.inner.default_owner));
    let node: Arc<dyn NodeDyn> = Node::new(
        cdev.ops,
        NodeKind::Cdev,
        dev.name.clone(),
        binding,
        sys.inner.stats.clone(),
        sys.inner.gated,
        cdev.asyncs,
    );
    {
        let mut reg = lock(&sys.inner.devnodes);
        if reg.by_name.contains_key(&dev.name) {
            return Err(Error::Exists(dev.name));
        }
        if reg.by_devt.contains_key(&dev.devt) {
            return Err(Error::RegionBusy(dev.devt.to_string()));
        }
        reg.by_devt.insert(dev.devt, NodeRef(node.clone()));
        reg.by_name.insert(
            dev.name.clone(),
            DevNode {
                name: dev.name.as_str().into(),
                devt: dev.devt,
                class: dev.class.map(Into::into),
                mode: dev.mode,
                uid,
                gid,
                node: NodeRef(node.clone()),
            },
        );
    }
    sys.track(&node);
    let reg = CdevRegistration { sys: sys.clone(), name: dev.name, devt: dev.devt, node: Some(node) };
    sys.changed(crate::system::Change::DevNodeAdded {
        name: reg.name.clone(),
        class: class_of(sys, &reg.name),
    });
    Ok(reg)
}

/// Registers `cdev` and publishes it as `dev` (Linux `cdev_device_add`).
/// The device lives until the returned registration is dropped.
///
/// # Errors
///
/// [`Error::InvalidName`], [`Error::Exists`] (node name taken),
/// [`Error::RegionBusy`] (device number taken).
pub fn cdev_device_add<F: FileOperations>(
    sys: &System,
    cdev: Cdev<F>,
    dev: DeviceNode,
) -> Result<CdevRegistration> {
    add(sys, cdev, dev, None)
}

/// Registers `cdev` as `dev` for as long as `host` stays bound: the
/// `devm_cdev_device_add(host, cdev, dev)` proposed for Linux.
///
/// The host's driver binding bounds the lifetime of everything the file
/// operations use: when it ends (unbind, device deletion, driver
/// unregistration), the device is removed as a managed resource, in reverse
/// order of registration and before the driver's data is dropped, and the
/// removal guarantees no new opens, no new handler calls, every handler
/// returned, and every open file released. So the operations object may
/// hold (and its handlers borrow) the host's context with no `try_access`.
///
/// # Examples
///
/// ```
/// use devlife_core::{*, fops::*};
/// use std::sync::{Arc, atomic::{AtomicU64, Ordering}};
///
/// struct Ctx { count: AtomicU64 }
/// struct XyzIoctl { ctx: Arc<Ctx> }
/// const XYZ_IOC_COUNT: IoctlCmd = IoctlCmd::ior(b'X', 1, 8);
///
/// impl FileOperations for XyzIoctl {
///     type File = ();
///     fn open(&self, _: &OpCtx<'_>) -> KResult<()> { Ok(()) }
///     fn ioctl(&self, _: &(), _: &OpCtx<'_>, io: &mut Ioctl<'_>) -> KResult<i64> {
///         if io.cmd() != XYZ_IOC_COUNT { return Err(Errno::ENOTTY) }
///         let n = self.ctx.count.fetch_add(1, Ordering::Relaxed) + 1;
///         io.set_output(&n.to_ne_bytes())?;
///         Ok(0)
///     }
/// }
///
/// struct Xyz;
/// impl Driver for Xyz {
///     type Data = Arc<Ctx>;
///     fn name(&self) -> &str { "xyz" }
///     fn id_table(&self) -> &[&str] { &["xyz"] }
///     fn probe(&self, dev: &Bound<'_>) -> KResult<Arc<Ctx>> {
///         let ctx = Arc::new(Ctx { count: AtomicU64::new(0) });
///         let region = dev.system().alloc_chrdev_region(0, 1, "xyz").map_err(Errno::from)?;
///         let node = DeviceNode::new(dev.name(), region.first()).class("xyz");
///         // Managed resources are released newest first: the region after the cdev.
///         dev.devres().add_or_reset("region", move || drop(region)).map_err(Errno::from)?;
///         devm_cdev_device_add(dev, Cdev::new(XyzIoctl { ctx: ctx.clone() }), node).map_err(Errno::from)?;
///         Ok(ctx)
///     }
/// }
///
/// let sys = System::new();
/// let bus = sys.bus_register("sim").unwrap();
/// bus.register_driver(Xyz).unwrap();
/// bus.add_device("xyz0", "xyz").unwrap();
/// let file = sys.dev_lookup("xyz0").unwrap().node.open(&Caller::default()).unwrap();
/// let mut out = Vec::new();
/// file.ioctl(XYZ_IOC_COUNT, 0, &[], &mut out, &Caller::default()).unwrap();
/// assert_eq!(out, 1u64.to_ne_bytes());
/// bus.unbind("xyz0", None).unwrap();
/// assert_eq!(file.ioctl(XYZ_IOC_COUNT, 0, &[], &mut out, &Caller::default()), Err(Errno::ENODEV));
/// ```
#[doc(alias = "cdev_device_add")]
pub fn devm_cdev_device_add<F: FileOperations>(
    host: &Bound<'_>,
    cdev: Cdev<F>,
    dev: DeviceNode,
) -> Result<()> {
    let reg = add(host.system(), cdev, dev, Some(host.epoch()))?;
    host.devres().add_or_reset(format!("cdev_device_del:{}", reg.name()), move || drop(reg))
}
