//! [`Driver`]: what binds to devices on a bus.

use crate::device::Bound;
use crate::fops::KResult;
use std::any::Any;

/// A device driver (Linux `struct device_driver`).
///
/// `probe` sets up a device and returns the driver's data for the binding;
/// resources it registers on `dev.devres()` (character devices made with
/// [`devm_cdev_device_add`](crate::devm_cdev_device_add), attributes,
/// actions) are released when the binding ends. Unbinding runs, in the
/// kernel's order (`device_remove()` then `devres_release_all()`):
/// [`remove`](Self::remove), the managed resources newest first, and last
/// the drop of the driver's data.
pub trait Driver: Send + Sync + 'static {
    /// The data a binding owns, dropped last when it ends.
    type Data: Send + Sync + 'static;

    /// The driver's name (`sys/bus/<bus>/drivers/<name>`).
    fn name(&self) -> &str;

    /// The device types the driver handles (Linux `id_table`).
    fn id_table(&self) -> &[&str];

    /// Binds to `dev`. On error, everything registered on `dev.devres()` so
    /// far is released (newest first) and the device stays unbound.
    fn probe(&self, dev: &Bound<'_>) -> KResult<Self::Data>;

    /// Called first when the binding ends, before its managed resources are
    /// released.
    fn remove(&self, _dev: &Bound<'_>, _data: &Self::Data) {}
}

pub(crate) type AnyData = Box<dyn Any + Send + Sync>;

/// [`Driver`] with its data type erased.
pub(crate) trait DriverDyn: Send + Sync {
    fn name(&self) -> &str;
    fn matches(&self, dev_type: &str) -> bool;
    fn probe(&self, dev: &Bound<'_>) -> KResult<AnyData>;
    fn remove(&self, dev: &Bound<'_>, data: &AnyData);
}

impl<D: Driver> DriverDyn for D {
    fn name(&self) -> &str {
        Driver::name(self)
    }
    fn matches(&self, dev_type: &str) -> bool {
        self.id_table().contains(&dev_type)
    }
    fn probe(&self, dev: &Bound<'_>) -> KResult<AnyData> {
        Driver::probe(self, dev).map(|d| Box::new(d) as AnyData)
    }
    fn remove(&self, dev: &Bound<'_>, data: &AnyData) {
        if let Some(d) = data.downcast_ref::<D::Data>() {
            Driver::remove(self, dev, d);
        }
    }
}

/// A registered driver: its registration number tells re-registrations of
/// the same name apart.
pub(crate) struct DriverEntry {
    pub(crate) id: u64,
    pub(crate) drv: Box<dyn DriverDyn>,
    /// `debug/<driver>`, made by the first binding that asks for it and
    /// removed when the driver is unregistered.
    pub(crate) debugfs: std::sync::Mutex<Option<crate::debugfs::Dentry>>,
}

impl DriverEntry {
    pub(crate) fn new(drv: Box<dyn DriverDyn>) -> Self {
        DriverEntry { id: crate::id::next(), drv, debugfs: Default::default() }
    }
}
