//! Misc devices: character devices under major 10 with a dynamic minor
//! (Linux `misc_register`).

use crate::cdev::{self, Cdev, CdevRegistration, DeviceNode};
use crate::chrdev::{DevT, MISC_MAJOR};
use crate::device::Bound;
use crate::fops::FileOperations;
use crate::node::{NodeRef, Removed};
use crate::system::System;
use crate::{Error, Result};
use devlife_gate::sync::lock;

/// Dynamic misc minors, handed out from the top down as Linux does.
const DYNAMIC_MINORS: std::ops::RangeInclusive<u32> = 64..=255;

/// Options of a misc device (Linux `struct miscdevice` without the fops).
#[derive(Debug, Clone)]
pub struct MiscDeviceOptions {
    /// Node name (`/dev/<name>`).
    pub name: String,
    /// A fixed minor, or `None` for a dynamic one.
    pub minor: Option<u32>,
    /// Permission bits.
    pub mode: u32,
}

impl MiscDeviceOptions {
    /// A dynamic-minor device called `name`, mode `0600`.
    pub fn new(name: impl Into<String>) -> Self {
        MiscDeviceOptions { name: name.into(), minor: None, mode: 0o600 }
    }
}

/// A registered misc device; deregistered (with the full removal
/// guarantee) when dropped.
#[must_use = "dropping the registration removes the device at once"]
pub struct MiscRegistration {
    reg: Option<CdevRegistration>,
    sys: System,
    minor: u32,
}

impl MiscRegistration {
    /// The device number.
    pub fn devt(&self) -> DevT {
        DevT::new(MISC_MAJOR, self.minor)
    }
    /// A reference to the device.
    pub fn node(&self) -> Option<NodeRef> {
        self.reg.as_ref().and_then(CdevRegistration::node)
    }
    /// Deregisters now (Linux `misc_deregister`).
    #[doc(alias = "misc_deregister")]
    pub fn remove(mut self) -> Removed {
        self.del()
    }
    fn del(&mut self) -> Removed {
        let r = self.reg.take().map_or(Removed::Complete, CdevRegistration::remove);
        lock(&self.sys.inner.misc_minors).remove(&self.minor);
        r
    }
}

impl Drop for MiscRegistration {
    fn drop(&mut self) {
        let _ = self.del();
    }
}

fn register<F: FileOperations>(
    sys: &System,
    opts: MiscDeviceOptions,
    ops: F,
    binding: Option<std::sync::Arc<crate::epoch::Epoch>>,
) -> Result<MiscRegistration> {
    crate::name::validate(&opts.name)?;
    let minor = {
        let mut used = lock(&sys.inner.misc_minors);
        let minor = match opts.minor {
            Some(m) if used.contains(&m) => {
                return Err(Error::RegionBusy(DevT::new(MISC_MAJOR, m).to_string()));
            }
            Some(m) => m,
            None => DYNAMIC_MINORS.rev().find(|m| !used.contains(m)).ok_or(Error::NoSpace("misc minor"))?,
        };
        used.insert(minor);
        minor
    };
    let node = DeviceNode::new(opts.name, DevT::new(MISC_MAJOR, minor)).class("misc").mode(opts.mode);
    match cdev::add(sys, Cdev::new(ops), node, binding) {
        Ok(reg) => Ok(MiscRegistration { reg: Some(reg), sys: sys.clone(), minor }),
        Err(e) => {
            lock(&sys.inner.misc_minors).remove(&minor);
            Err(e)
        }
    }
}

/// Registers a misc device (Linux `misc_register`).
pub fn misc_register<F: FileOperations>(
    sys: &System,
    opts: MiscDeviceOptions,
    ops: F,
) -> Result<MiscRegistration> {
    register(sys, opts, ops, None)
}

/// Registers a misc device for as long as `host` stays bound.
pub fn devm_misc_register<F: FileOperations>(
    host: &Bound<'_>,
    opts: MiscDeviceOptions,
    ops: F,
) -> Result<()> {
    let reg = register(host.system(), opts, ops, Some(host.epoch()))?;
    host.devres().add_or_reset("misc_deregister", move || drop(reg))
}
