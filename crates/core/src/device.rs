//! [`Device`] and [`Bound`]: a device on a bus, and the proof, given to
//! `probe` and `remove`, that it is being bound.

use crate::attr::AttrEntry;
use crate::devres::Devres;
use crate::driver::{AnyData, DriverEntry};
use crate::epoch::Epoch;
use crate::node::NodeRef;
use crate::system::{System, SystemInner};
use devlife_gate::sync::lock;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

/// A device on a bus (Linux `struct device`). A cheap handle.
#[derive(Clone)]
pub struct Device {
    pub(crate) inner: Arc<DeviceInner>,
}

pub(crate) struct DeviceInner {
    /// The device's identity ([`Device::id`]).
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) dev_type: String,
    pub(crate) bus: String,
    pub(crate) sys: Weak<SystemInner>,
    /// Serialises bind, unbind and delete (Linux `device_lock`). Never
    /// waited for from inside one of the device's handlers.
    pub(crate) lifecycle: Mutex<()>,
    /// Short-held: what the device is bound to.
    pub(crate) state: Mutex<DeviceState>,
    pub(crate) attrs: Mutex<BTreeMap<String, AttrEntry>>,
}

#[derive(Default)]
pub(crate) struct DeviceState {
    pub(crate) binding: Option<Binding>,
    /// The binding whose teardown is under way (taken from `binding`, not
    /// yet complete).
    pub(crate) unbinding: Option<u64>,
    /// The binding a worker thread has been started to unbind (asked from
    /// inside one of its handlers).
    pub(crate) deferred: Option<u64>,
    pub(crate) deleted: bool,
}

/// One driver binding: from a successful probe to the end of its unbind.
pub(crate) struct Binding {
    pub(crate) epoch: Arc<Epoch>,
    pub(crate) driver: Arc<DriverEntry>,
    pub(crate) data: AnyData,
    pub(crate) devres: Arc<Devres>,
}

impl Device {
    pub(crate) fn new(name: &str, dev_type: &str, bus: &str, sys: Weak<SystemInner>) -> Self {
        Device {
            inner: Arc::new(DeviceInner {
                id: crate::id::next(),
                name: name.to_owned(),
                dev_type: dev_type.to_owned(),
                bus: bus.to_owned(),
                sys,
                lifecycle: Mutex::new(()),
                state: Mutex::new(DeviceState::default()),
                attrs: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The device's type, matched against drivers' id tables.
    pub fn dev_type(&self) -> &str {
        &self.inner.dev_type
    }

    /// The bus it sits on.
    pub fn bus_name(&self) -> &str {
        &self.inner.bus
    }

    /// The name of the driver it is bound to, if any.
    pub fn driver_name(&self) -> Option<String> {
        lock(&self.inner.state).binding.as_ref().map(|b| b.driver.drv.name().to_owned())
    }

    /// A copy of the data of its current binding, if bound and of type `T`
    /// (Linux `dev_get_drvdata`; driver data is usually an `Arc`, and the
    /// copy keeps it alive past the binding only as long as it is held).
    ///
    /// # Examples
    ///
    /// ```
    /// use devlife_core::*;
    /// use std::sync::Arc;
    /// struct D;
    /// impl Driver for D {
    ///     type Data = Arc<u32>;
    ///     fn name(&self) -> &str { "d" }
    ///     fn id_table(&self) -> &[&str] { &["t"] }
    ///     fn probe(&self, _: &Bound<'_>) -> KResult<Arc<u32>> { Ok(Arc::new(7)) }
    /// }
    /// let sys = System::new();
    /// let bus = sys.bus_register("b").unwrap();
    /// bus.register_driver(D).unwrap();
    /// let dev = bus.add_device("d0", "t").unwrap();
    /// assert_eq!(dev.drvdata::<Arc<u32>>().as_deref(), Some(&7));
    /// assert_eq!(dev.drvdata::<String>(), None, "another type");
    /// ```
    #[doc(alias = "dev_get_drvdata")]
    pub fn drvdata<T: Clone + 'static>(&self) -> Option<T> {
        lock(&self.inner.state).binding.as_ref().and_then(|b| b.data.downcast_ref::<T>().cloned())
    }

    /// The id of its current binding, if bound.
    pub fn binding_id(&self) -> Option<u64> {
        lock(&self.inner.state).binding.as_ref().map(|b| b.epoch.id)
    }

    /// The names of the managed resources of its current binding.
    pub fn devres_names(&self) -> Vec<String> {
        lock(&self.inner.state).binding.as_ref().map(|b| b.devres.names()).unwrap_or_default()
    }

    /// Whether the device was deleted from its bus.
    pub fn is_deleted(&self) -> bool {
        lock(&self.inner.state).deleted
    }

    /// The `uevent` text (`DRIVER=`, `DEVTYPE=` lines).
    pub fn uevent(&self) -> String {
        let mut s = format!("DEVTYPE={}\n", self.inner.dev_type);
        if let Some(d) = self.driver_name() {
            s.push_str(&format!("DRIVER={d}\n"));
        }
        s
    }

    /// The device's attributes: name and mode.
    pub fn attrs(&self) -> Vec<(String, u32)> {
        lock(&self.inner.attrs).iter().map(|(n, a)| (n.clone(), a.mode)).collect()
    }

    /// The attribute called `name`.
    pub fn attr(&self, name: &str) -> Option<NodeRef> {
        lock(&self.inner.attrs).get(name).map(|a| a.node.clone())
    }

    /// The system the device belongs to (gone once the system is dropped).
    pub fn system(&self) -> Option<System> {
        self.inner.sys.upgrade().map(System::from_inner)
    }

    /// A number naming this device and no other for the life of the
    /// process: a device deleted and added again under the same name has a
    /// new one.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Whether two handles name the same device.
    pub fn same(&self, other: &Device) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// A handle that does not keep the device alive (for a driver's file
    /// operations, which the device's binding owns: a strong handle there
    /// would be a reference cycle).
    pub fn downgrade(&self) -> WeakDevice {
        WeakDevice(Arc::downgrade(&self.inner))
    }

    /// Unbinds the device from its driver (see [`Bus::unbind`](crate::Bus::unbind)).
    pub fn unbind(&self) -> crate::Result<crate::Unbound> {
        let sys = self.system().ok_or(crate::Error::Detached)?;
        let bus = sys.bus(&self.inner.bus).ok_or_else(|| crate::Error::NoSuchBus(self.inner.bus.clone()))?;
        bus.unbind_device(self, None)
    }
}

/// A [`Device`] handle that does not keep it alive.
#[derive(Clone)]
pub struct WeakDevice(Weak<DeviceInner>);

impl WeakDevice {
    /// The device, if it still exists.
    pub fn upgrade(&self) -> Option<Device> {
        self.0.upgrade().map(|inner| Device { inner })
    }
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("name", &self.inner.name)
            .field("type", &self.inner.dev_type)
            .field("driver", &self.driver_name())
            .finish()
    }
}

/// A device being bound: given to [`Driver::probe`](crate::Driver::probe)
/// and [`Driver::remove`](crate::Driver::remove), it carries the binding's
/// managed resources (Rust-for-Linux's `Device<Bound>` context).
pub struct Bound<'a> {
    pub(crate) dev: &'a Device,
    pub(crate) sys: &'a System,
    pub(crate) epoch: &'a Arc<Epoch>,
    pub(crate) devres: &'a Devres,
    pub(crate) driver: &'a DriverEntry,
}

impl<'a> Bound<'a> {
    /// The device.
    pub fn device(&self) -> &'a Device {
        self.dev
    }
    /// The device's name.
    pub fn name(&self) -> &'a str {
        self.dev.name()
    }
    /// The system.
    pub fn system(&self) -> &'a System {
        self.sys
    }
    /// The binding's managed resources.
    pub fn devres(&self) -> &'a Devres {
        self.devres
    }
    /// This binding's id (unique within the system; a re-probe gets a new one).
    pub fn binding_id(&self) -> u64 {
        self.epoch.id
    }

    /// The driver's debugfs directory, `debug/<driver>`, shared by every
    /// device the driver binds: made by the first call, removed (with
    /// everything in it) when the driver is unregistered. A device's own
    /// entries go in a directory of its own made with
    /// [`devm_create_dir`](crate::debugfs::devm_create_dir), removed at
    /// unbind.
    ///
    /// # Errors
    ///
    /// [`Error::Exists`](crate::Error::Exists) if something else made
    /// `debug/<driver>`.
    pub fn driver_debugfs(&self) -> crate::Result<crate::debugfs::Dentry> {
        let mut d = lock(&self.driver.debugfs);
        if let Some(dir) = d.as_ref().filter(|d| !d.is_removed()) {
            return Ok(dir.clone());
        }
        let dir = self.sys.debugfs().create_dir(self.driver.drv.name())?;
        *d = Some(dir.clone());
        Ok(dir)
    }

    pub(crate) fn epoch(&self) -> Arc<Epoch> {
        self.epoch.clone()
    }
}
