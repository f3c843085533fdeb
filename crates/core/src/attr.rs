//! Device attributes: show/store text files in a device's sysfs directory
//! (Linux `device_create_file`), gated like every other file.

use crate::device::{Bound, Device, WeakDevice};
use crate::errno::NodeKind;
use crate::node::{Node, NodeDyn, NodeRef};
use crate::text::TextFile;
use crate::{Error, Result};
use devlife_gate::sync::lock;
use std::sync::Arc;

/// An attribute to create: a name, a mode and its text operations.
pub struct DeviceAttribute {
    name: String,
    mode: u32,
    file: AttrOps,
}

/// An attribute's operations, or how to make them once the device is known.
enum AttrOps {
    Text(TextFile),
    OfDevice(Box<dyn FnOnce(WeakDevice) -> TextFile + Send>),
}

type ShowDev = dyn Fn(&Device) -> crate::fops::KResult<String> + Send + Sync;
type StoreDev = dyn Fn(&Device, &str) -> crate::fops::KResult<()> + Send + Sync;

/// The device of an attribute's handler (alive while its attribute is:
/// the attribute is removed before its device).
fn device_of(w: &WeakDevice) -> crate::fops::KResult<Device> {
    w.upgrade().ok_or(crate::Errno::ENODEV)
}

impl DeviceAttribute {
    /// A read-only attribute (mode `0444`).
    pub fn read_only(
        name: impl Into<String>,
        show: impl Fn() -> crate::fops::KResult<String> + Send + Sync + 'static,
    ) -> Self {
        DeviceAttribute { name: name.into(), mode: 0o444, file: AttrOps::Text(TextFile::read_only(show)) }
    }

    /// A read-only attribute whose `show` gets the device, as Linux's
    /// `show(struct device *dev, ...)` does (mode `0444`).
    #[doc(alias = "DEVICE_ATTR_RO")]
    pub fn ro(
        name: impl Into<String>,
        show: impl Fn(&Device) -> crate::fops::KResult<String> + Send + Sync + 'static,
    ) -> Self {
        let show: Arc<ShowDev> = Arc::new(show);
        let file = AttrOps::OfDevice(Box::new(move |w: WeakDevice| {
            TextFile::read_only(move || show(&device_of(&w)?))
        }));
        DeviceAttribute { name: name.into(), mode: 0o444, file }
    }

    /// A read-write attribute whose `show` and `store` get the device
    /// (mode `0644`).
    #[doc(alias = "DEVICE_ATTR_RW")]
    pub fn rw(
        name: impl Into<String>,
        show: impl Fn(&Device) -> crate::fops::KResult<String> + Send + Sync + 'static,
        store: impl Fn(&Device, &str) -> crate::fops::KResult<()> + Send + Sync + 'static,
    ) -> Self {
        let (show, store): (Arc<ShowDev>, Arc<StoreDev>) = (Arc::new(show), Arc::new(store));
        let file = AttrOps::OfDevice(Box::new(move |w: WeakDevice| {
            let w2 = w.clone();
            TextFile::read_write(move || show(&device_of(&w)?), move |t| store(&device_of(&w2)?, t))
        }));
        DeviceAttribute { name: name.into(), mode: 0o644, file }
    }

    /// A read-write attribute (mode `0644`).
    pub fn read_write(
        name: impl Into<String>,
        show: impl Fn() -> crate::fops::KResult<String> + Send + Sync + 'static,
        store: impl Fn(&str) -> crate::fops::KResult<()> + Send + Sync + 'static,
    ) -> Self {
        DeviceAttribute {
            name: name.into(),
            mode: 0o644,
            file: AttrOps::Text(TextFile::read_write(show, store)),
        }
    }

    /// Overrides the permission bits.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode & 0o7777;
        self
    }
}

pub(crate) struct AttrEntry {
    pub(crate) mode: u32,
    pub(crate) node: NodeRef,
}

/// A created attribute; removed (with the full removal guarantee) when
/// dropped.
#[must_use = "dropping the registration removes the attribute at once"]
pub struct AttrRegistration {
    dev: Device,
    name: String,
    node: Option<Arc<dyn NodeDyn>>,
}

impl Drop for AttrRegistration {
    fn drop(&mut self) {
        let Some(node) = self.node.take() else { return };
        {
            let mut attrs = lock(&self.dev.inner.attrs);
            if attrs.get(&self.name).is_some_and(|a| Arc::ptr_eq(&a.node.0, &node)) {
                attrs.remove(&self.name);
            }
        }
        let _ = node.remove_dyn();
    }
}

fn create(
    dev: &Device,
    attr: DeviceAttribute,
    binding: Option<Arc<crate::epoch::Epoch>>,
) -> Result<AttrRegistration> {
    crate::name::validate_attr(&attr.name)?;
    let sys = dev.system().ok_or(Error::Detached)?;
    let file = match attr.file {
        AttrOps::Text(t) => t,
        AttrOps::OfDevice(make) => make(dev.downgrade()),
    };
    let node: Arc<dyn NodeDyn> = Node::new(
        file,
        NodeKind::Attribute,
        attr.name.clone(),
        binding,
        sys.inner.stats.clone(),
        sys.inner.gated,
        None,
    );
    {
        let mut attrs = lock(&dev.inner.attrs);
        if attrs.contains_key(&attr.name) {
            return Err(Error::Exists(attr.name));
        }
        attrs.insert(attr.name.clone(), AttrEntry { mode: attr.mode, node: NodeRef(node.clone()) });
    }
    sys.track(&node);
    Ok(AttrRegistration { dev: dev.clone(), name: attr.name, node: Some(node) })
}

/// Creates an attribute of `dev` that lives until the registration is dropped.
pub fn device_create_file(dev: &Device, attr: DeviceAttribute) -> Result<AttrRegistration> {
    create(dev, attr, None)
}

/// Creates an attribute of the device being bound, removed when the binding
/// ends.
pub fn devm_device_create_file(host: &Bound<'_>, attr: DeviceAttribute) -> Result<()> {
    let reg = create(host.device(), attr, Some(host.epoch()))?;
    host.devres().add_or_reset(format!("device_remove_file:{}", reg.name), move || drop(reg))
}
