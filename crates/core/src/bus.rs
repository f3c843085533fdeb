//! [`Bus`]: devices and drivers, matched and bound (Linux `struct bus_type`
//! with `drivers/base/{bus,dd}.c`).
//!
//! # Locking
//!
//! The bus lock guards only its two maps and is never held across a probe
//! or a removal. A device's `lifecycle` lock serialises that device's bind,
//! unbind and deletion; no caller inside one of the device's handlers waits
//! for it. Removal from inside one of the binding's own handlers cannot
//! wait for that handler, so it is handed to a worker thread, or left to
//! the teardown already under way (see `Bus::release`).

use crate::device::{Bound, Device, DeviceInner};
use crate::devres::Devres;
use crate::driver::{Driver, DriverEntry};
use crate::system::{System, SystemInner};
use crate::{Errno, Error, Result};
use devlife_gate::sync::lock;
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, Weak};

/// A bus: a set of devices and a set of drivers. A cheap handle.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<BusInner>,
}

struct BusInner {
    name: String,
    sys: Weak<SystemInner>,
    state: Mutex<BusState>,
}

#[derive(Default)]
struct BusState {
    devices: BTreeMap<String, Device>,
    drivers: BTreeMap<String, Arc<DriverEntry>>,
    /// Device types hot-plug accepts with or without a driver for them.
    declared: std::collections::BTreeSet<String>,
}

/// How an unbind ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unbound {
    /// The binding is gone: its removal guarantee holds.
    Complete,
    /// Requested from inside one of the binding's own handlers: a worker
    /// thread completes it once that handler returns. New opens and
    /// operations are refused from the moment the worker starts.
    Deferred,
}

impl Bus {
    pub(crate) fn new(name: &str, sys: Weak<SystemInner>) -> Self {
        Bus {
            inner: Arc::new(BusInner { name: name.to_owned(), sys, state: Mutex::new(BusState::default()) }),
        }
    }

    /// The bus's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    fn system(&self) -> Result<System> {
        self.inner.sys.upgrade().map(System::from_inner).ok_or(Error::Detached)
    }

    /// The device called `name`.
    pub fn device(&self, name: &str) -> Option<Device> {
        lock(&self.inner.state).devices.get(name).cloned()
    }

    /// Every device, by name.
    pub fn devices(&self) -> Vec<Device> {
        lock(&self.inner.state).devices.values().cloned().collect()
    }

    /// Every driver's name.
    pub fn drivers(&self) -> Vec<String> {
        lock(&self.inner.state).drivers.keys().cloned().collect()
    }

    /// Declares device type `ty`: `new_device` accepts it even when no
    /// registered driver matches it (the device then stays unbound until
    /// one is registered).
    pub fn declare_device_type(&self, ty: &str) -> Result<()> {
        crate::name::validate(ty)?;
        lock(&self.inner.state).declared.insert(ty.to_owned());
        Ok(())
    }

    /// Whether hot-plug accepts devices of type `ty`: one a registered
    /// driver matches, or one the bus declares.
    pub fn accepts(&self, ty: &str) -> bool {
        let st = lock(&self.inner.state);
        st.declared.contains(ty) || st.drivers.values().any(|e| e.drv.matches(ty))
    }

    /// The identity of the registration of driver `name`: a driver
    /// unregistered and registered again has a new one.
    pub fn driver_id(&self, name: &str) -> Option<u64> {
        lock(&self.inner.state).drivers.get(name).map(|e| e.id)
    }

    /// The devices bound to driver `name`.
    pub fn driver_devices(&self, name: &str) -> Vec<String> {
        self.devices()
            .into_iter()
            .filter(|d| d.driver_name().as_deref() == Some(name))
            .map(|d| d.name().to_owned())
            .collect()
    }

    /// Registers a driver and binds it to every unbound device it matches
    /// (Linux `driver_register`). A failing probe leaves that device unbound
    /// and is logged; it does not fail the registration.
    #[doc(alias = "driver_register")]
    pub fn register_driver<D: Driver>(&self, drv: D) -> Result<()> {
        let name = Driver::name(&drv).to_owned();
        crate::name::validate(&name)?;
        let entry = Arc::new(DriverEntry::new(Box::new(drv)));
        {
            let mut st = lock(&self.inner.state);
            if st.drivers.contains_key(&name) {
                return Err(Error::Exists(name));
            }
            st.drivers.insert(name, entry.clone());
        }
        for dev in self.devices() {
            if entry.drv.matches(dev.dev_type()) {
                match self.probe(&dev, &entry) {
                    Ok(())
                    | Err(Error::AlreadyBound(_) | Error::NoSuchDevice(_) | Error::NoSuchDriver(_)) => {}
                    Err(e) => tracing::warn!(device = %dev.name(), "driver attach: {e}"),
                }
            }
        }
        Ok(())
    }

    /// Unregisters a driver, unbinding every device bound to it first
    /// (Linux `driver_unregister`). Each unbind carries the full removal
    /// guarantee.
    #[doc(alias = "driver_unregister")]
    pub fn unregister_driver(&self, name: &str) -> Result<()> {
        let entry = lock(&self.inner.state)
            .drivers
            .remove(name)
            .ok_or_else(|| Error::NoSuchDriver(name.to_owned()))?;
        // Every device, not a snapshot of the bound ones: a probe racing
        // this holds the device's lifecycle lock, which we wait for below.
        for dev in self.devices() {
            let _ = self.release(&dev, Some(entry.id), None);
        }
        // The driver's debugfs directory goes last, as a module's does in
        // its exit function (its devices' entries in it went with them).
        let dir = lock(&entry.debugfs).take();
        if let Some(d) = dir {
            d.remove();
        }
        Ok(())
    }

    /// Adds a device and binds the first registered driver that matches it
    /// (Linux `device_add`). A failing probe leaves it unbound (logged).
    #[doc(alias = "device_add")]
    pub fn add_device(&self, name: &str, dev_type: &str) -> Result<Device> {
        crate::name::validate_device(name)?;
        crate::name::validate(dev_type)?;
        let dev = Device::new(name, dev_type, &self.inner.name, self.inner.sys.clone());
        let drivers: Vec<_> = {
            let mut st = lock(&self.inner.state);
            if st.devices.contains_key(name) {
                return Err(Error::Exists(name.to_owned()));
            }
            st.devices.insert(name.to_owned(), dev.clone());
            st.drivers.values().cloned().collect()
        };
        tracing::info!(bus = %self.inner.name, device = %name, dev_type = %dev_type, "device added");
        if let Some(entry) = drivers.iter().find(|e| e.drv.matches(dev_type)) {
            if let Err(e) = self.probe(&dev, entry) {
                tracing::warn!(device = %name, "device attach: {e}");
            }
        }
        Ok(dev)
    }

    /// Deletes a device: unbinds it (with the full removal guarantee), then
    /// removes it from the bus (Linux `device_del`; hot-unplug).
    #[doc(alias = "device_del")]
    pub fn delete_device(&self, name: &str) -> Result<Unbound> {
        let dev = lock(&self.inner.state)
            .devices
            .remove(name)
            .ok_or_else(|| Error::NoSuchDevice(name.to_owned()))?;
        lock(&dev.inner.state).deleted = true;
        let r = match self.release(&dev, None, None) {
            Ok(u) => u,
            Err(Error::NotBound(_)) => Unbound::Complete,
            Err(e) => return Err(e),
        };
        tracing::info!(bus = %self.inner.name, device = %name, "device deleted");
        if let Ok(sys) = self.system() {
            sys.changed(crate::system::Change::DeviceRemoved {
                bus: self.inner.name.clone(),
                name: name.to_owned(),
            });
        }
        Ok(r)
    }

    /// Binds device `dev` to driver `drv` (`sys/bus/*/drivers/*/bind`).
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchDevice`], [`Error::NoSuchDriver`], [`Error::NoMatch`],
    /// [`Error::AlreadyBound`], [`Error::ProbeFailed`].
    pub fn bind(&self, dev: &str, drv: &str) -> Result<()> {
        let (dev, entry) = {
            let st = lock(&self.inner.state);
            let d = st.devices.get(dev).cloned().ok_or_else(|| Error::NoSuchDevice(dev.to_owned()))?;
            let e = st.drivers.get(drv).cloned().ok_or_else(|| Error::NoSuchDriver(drv.to_owned()))?;
            (d, e)
        };
        self.probe(&dev, &entry)
    }

    /// Unbinds device `dev`, from driver `drv` if named
    /// (`sys/bus/*/drivers/*/unbind`). Returns when the binding is gone:
    /// the driver's `remove` ran, then its managed resources were released
    /// newest first (so every character device it registered is removed:
    /// no new opens, no new operations, handlers returned, files released),
    /// then its data was dropped.
    ///
    /// From inside one of the binding's own handlers the unbind cannot wait
    /// for that handler: it is handed to a worker thread and
    /// [`Unbound::Deferred`] is returned.
    pub fn unbind(&self, dev: &str, drv: Option<&str>) -> Result<Unbound> {
        let d = self.device(dev).ok_or_else(|| Error::NoSuchDevice(dev.to_owned()))?;
        let driver_id = match drv {
            None => None,
            Some(n) => {
                let id = lock(&self.inner.state).drivers.get(n).map(|e| e.id);
                Some(id.ok_or_else(|| Error::NoSuchDriver(n.to_owned()))?)
            }
        };
        self.release(&d, driver_id, None)
    }

    /// Unbinds `dev` (a device of this bus) from whatever driver it has.
    pub(crate) fn unbind_device(&self, dev: &Device, only: Option<u64>) -> Result<Unbound> {
        self.release(dev, only, None)
    }

    fn probe(&self, dev: &Device, entry: &Arc<DriverEntry>) -> Result<()> {
        let sys = self.system()?;
        {
            // From inside a handler of the device's binding: bound already,
            // or its teardown is under way and waits for this very handler
            // (waiting for the lifecycle lock would wait for itself; see
            // "Removal from inside").
            let st = lock(&dev.inner.state);
            if st.binding.as_ref().is_some_and(|b| crate::epoch::in_handler_of(b.epoch.id)) {
                return Err(Error::AlreadyBound(dev.name().to_owned()));
            }
            if st.unbinding.is_some_and(crate::epoch::in_handler_of) {
                return Err(Error::WouldDeadlock);
            }
        }
        let _life = lock(&dev.inner.lifecycle);
        {
            let st = lock(&dev.inner.state);
            if st.deleted {
                return Err(Error::NoSuchDevice(dev.name().to_owned()));
            }
            if st.binding.is_some() {
                return Err(Error::AlreadyBound(dev.name().to_owned()));
            }
        }
        // The driver may have been unregistered since it was looked up.
        if !lock(&self.inner.state).drivers.get(entry.drv.name()).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            return Err(Error::NoSuchDriver(entry.drv.name().to_owned()));
        }
        if !entry.drv.matches(dev.dev_type()) {
            return Err(Error::NoMatch {
                driver: entry.drv.name().to_owned(),
                device: dev.name().to_owned(),
            });
        }
        let started = std::time::Instant::now();
        let epoch = crate::epoch::Epoch::new(sys.next_binding_id());
        let devres = Arc::new(Devres::new());
        let bound = Bound { dev, sys: &sys, epoch: &epoch, devres: &devres, driver: entry };
        let probed = catch_unwind(AssertUnwindSafe(|| entry.drv.probe(&bound))).unwrap_or_else(|_| {
            tracing::error!(device = %dev.name(), driver = %entry.drv.name(), "probe panicked");
            Err(Errno::EIO)
        });
        match probed {
            Ok(data) => {
                lock(&dev.inner.state).binding =
                    Some(crate::device::Binding { epoch, driver: entry.clone(), data, devres });
                tracing::info!(
                    bus = %self.inner.name,
                    device = %dev.name(),
                    driver = %entry.drv.name(),
                    duration = ?started.elapsed(),
                    "bind"
                );
                Ok(())
            }
            Err(errno) => {
                // Partial unwind: what probe registered, newest first.
                devres.release_all();
                epoch.end();
                tracing::info!(device = %dev.name(), driver = %entry.drv.name(), %errno, "probe failed");
                Err(Error::ProbeFailed(dev.name().to_owned(), errno))
            }
        }
    }

    /// Ends `dev`'s binding: only if it is to driver `only`, and only if
    /// it is binding `which`, when given (a deferred unbind ends the
    /// binding it was asked for, never one made since).
    ///
    /// # Removal from inside
    ///
    /// Whether the caller runs inside a handler of the device's binding is
    /// decided under the device's state lock, which every change of
    /// `binding` and `unbinding` holds, so the answer covers the binding in
    /// both of its last states:
    ///
    /// * still bound: the unbind is handed to a worker thread (one per
    ///   binding: later requests find it scheduled), which waits for the
    ///   lifecycle lock like any remover;
    /// * its teardown under way (by a worker or by another thread): that
    ///   teardown is waiting for this very handler, and completes once it
    ///   returns; nothing more to do.
    ///
    /// Either way [`Unbound::Deferred`] is returned at once. Only a caller
    /// inside none of the device's handlers waits for the lifecycle lock,
    /// and the lock's holder waits only for handlers of this device, so no
    /// interleaving makes the two wait for each other (the served tree's
    /// test of eight threads unbinding their own device at once hung on
    /// this before).
    fn release(&self, dev: &Device, only: Option<u64>, which: Option<u64>) -> Result<Unbound> {
        let scheduled = {
            let mut st = lock(&dev.inner.state);
            match &st.binding {
                Some(b) => {
                    check_binding(dev, b, only, which)?;
                    let id = b.epoch.id;
                    if !crate::epoch::in_handler_of(id) {
                        None
                    } else if st.deferred == Some(id) {
                        return Ok(Unbound::Deferred);
                    } else {
                        st.deferred = Some(id);
                        Some(id)
                    }
                }
                None if st.unbinding.is_some_and(crate::epoch::in_handler_of) => {
                    return Ok(Unbound::Deferred);
                }
                None => None,
            }
        };
        if let Some(id) = scheduled {
            let (bus, dev2) = (self.clone(), dev.clone());
            let spawned =
                std::thread::Builder::new().name(format!("devlife-unbind:{}", dev.name())).spawn(move || {
                    match bus.release(&dev2, only, Some(id)) {
                        Ok(_) | Err(Error::NotBound(_)) => {}
                        Err(e) => tracing::warn!(device = dev2.name(), "deferred unbind: {e}"),
                    }
                });
            if spawned.is_err() {
                let mut st = lock(&dev.inner.state);
                if st.deferred == Some(id) {
                    st.deferred = None;
                }
                return Err(Error::WouldDeadlock);
            }
            return Ok(Unbound::Deferred);
        }
        let sys = self.system()?;
        let _life = lock(&dev.inner.lifecycle);
        let b = {
            let mut st = lock(&dev.inner.state);
            match &st.binding {
                None => return Err(Error::NotBound(dev.name().to_owned())),
                Some(b) => check_binding(dev, b, only, which)?,
            }
            let Some(b) = st.binding.take() else { return Err(Error::NotBound(dev.name().to_owned())) };
            st.unbinding = Some(b.epoch.id);
            if st.deferred == Some(b.epoch.id) {
                st.deferred = None;
            }
            b
        };
        let driver = b.driver.drv.name().to_owned();
        let attrs = dev.attrs().into_iter().map(|(n, _)| n).collect();
        let started = std::time::Instant::now();
        teardown(dev, b, &sys);
        lock(&dev.inner.state).unbinding = None;
        tracing::info!(
            bus = %self.inner.name,
            device = %dev.name(),
            driver = %driver,
            duration = ?started.elapsed(),
            "unbind"
        );
        sys.changed(crate::system::Change::Unbound {
            bus: self.inner.name.clone(),
            name: dev.name().to_owned(),
            driver,
            attrs,
        });
        Ok(Unbound::Complete)
    }
}

/// Whether binding `b` of `dev` is the one an unbind asked for.
fn check_binding(
    dev: &Device,
    b: &crate::device::Binding,
    only: Option<u64>,
    which: Option<u64>,
) -> Result<()> {
    if which.is_some_and(|w| w != b.epoch.id) {
        // The binding asked for has ended; this one was made since.
        return Err(Error::NotBound(dev.name().to_owned()));
    }
    if only.is_some_and(|id| id != b.driver.id) {
        return Err(Error::BoundElsewhere {
            device: dev.name().to_owned(),
            driver: b.driver.drv.name().to_owned(),
        });
    }
    Ok(())
}

/// The kernel's unbind order: `remove`, then managed resources newest
/// first, then the driver's data.
fn teardown(dev: &Device, b: crate::device::Binding, sys: &System) {
    let bound = Bound { dev, sys, epoch: &b.epoch, devres: &b.devres, driver: &b.driver };
    if catch_unwind(AssertUnwindSafe(|| b.driver.drv.remove(&bound, &b.data))).is_err() {
        tracing::error!(device = %dev.name(), "remove panicked");
    }
    b.devres.release_all();
    let epoch = b.epoch.clone();
    if catch_unwind(AssertUnwindSafe(move || drop(b.data))).is_err() {
        tracing::error!(device = %dev.name(), "dropping the driver data panicked");
    }
    // From here on, a handler of this binding starting would be a violation.
    epoch.end();
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").field("name", &self.inner.name).finish()
    }
}

impl std::fmt::Debug for DeviceInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").field("name", &self.name).finish()
    }
}
