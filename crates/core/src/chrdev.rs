//! Character device numbers: `dev_t`, and regions of minors under a major.

use crate::{Error, Result};
use devlife_gate::sync::lock;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// A device number (Linux `dev_t`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DevT {
    /// Major number: the driver.
    pub major: u32,
    /// Minor number: the instance.
    pub minor: u32,
}

impl DevT {
    /// `MKDEV(major, minor)`.
    pub const fn new(major: u32, minor: u32) -> Self {
        DevT { major, minor }
    }
}

impl fmt::Display for DevT {
    /// `MAJOR:MINOR`, as `/sys/class/*/*/dev` shows it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl fmt::Debug for DevT {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The major of misc devices.
pub const MISC_MAJOR: u32 = 10;
/// Minors per major (Linux `MINORMASK + 1` is 2^20).
pub const MINORS: u32 = 1 << 20;

/// Dynamic majors, in the order Linux hands them out
/// (`CHRDEV_MAJOR_DYN_END`..=`CHRDEV_MAJOR_DYN_START`, then the extended
/// range 511..=384).
fn dynamic_majors() -> impl Iterator<Item = u32> {
    (234..=254).rev().chain((384..=511).rev())
}

#[derive(Debug, Clone)]
struct Region {
    first_minor: u32,
    count: u32,
    name: String,
}

/// The registry of chrdev regions (Linux `chrdevs[]`).
#[derive(Default)]
pub(crate) struct Chrdevs {
    regions: Mutex<BTreeMap<u32, Vec<Region>>>,
}

impl Chrdevs {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, Vec<Region>>> {
        lock(&self.regions)
    }

    fn register(&self, first: DevT, count: u32, name: &str) -> Result<()> {
        if count == 0 || u64::from(first.minor) + u64::from(count) > u64::from(MINORS) {
            return Err(Error::InvalidInput(format!("minor range {}+{count}", first)));
        }
        let mut map = self.lock();
        let list = map.entry(first.major).or_default();
        let end = first.minor + count;
        if list.iter().any(|r| first.minor < r.first_minor + r.count && r.first_minor < end) {
            return Err(Error::RegionBusy(format!("{}+{count}", first)));
        }
        list.push(Region { first_minor: first.minor, count, name: name.to_owned() });
        Ok(())
    }

    fn alloc(&self, first_minor: u32, count: u32, name: &str) -> Result<DevT> {
        let major = {
            let map = self.lock();
            dynamic_majors().find(|m| !map.contains_key(m)).ok_or(Error::NoSpace("dynamic major"))?
        };
        let first = DevT::new(major, first_minor);
        self.register(first, count, name).map(|()| first)
    }

    fn unregister(&self, first: DevT, count: u32) {
        let mut map = self.lock();
        if let Some(list) = map.get_mut(&first.major) {
            list.retain(|r| !(r.first_minor == first.minor && r.count == count));
            if list.is_empty() {
                map.remove(&first.major);
            }
        }
    }

    /// `major name` lines, like `/proc/devices`.
    pub(crate) fn describe(&self) -> Vec<(u32, String)> {
        self.lock().iter().flat_map(|(m, l)| l.iter().map(move |r| (*m, r.name.clone()))).collect()
    }
}

/// A registered range of device numbers; unregistered when dropped
/// (Linux `unregister_chrdev_region`).
pub struct ChrdevRegion {
    chrdevs: Arc<crate::system::SystemInner>,
    first: DevT,
    count: u32,
}

impl ChrdevRegion {
    /// The first device number.
    pub fn first(&self) -> DevT {
        self.first
    }
    /// How many minors.
    pub fn count(&self) -> u32 {
        self.count
    }
    /// The `i`th device number of the region, if `i < count`.
    pub fn devt(&self, i: u32) -> Option<DevT> {
        (i < self.count).then(|| DevT::new(self.first.major, self.first.minor + i))
    }
}

impl Drop for ChrdevRegion {
    fn drop(&mut self) {
        self.chrdevs.chrdevs.unregister(self.first, self.count);
    }
}

impl fmt::Debug for ChrdevRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChrdevRegion({}+{})", self.first, self.count)
    }
}

impl crate::System {
    /// Reserves `count` minors from `first` (Linux `register_chrdev_region`).
    ///
    /// # Errors
    ///
    /// [`Error::RegionBusy`] if they overlap a registered region;
    /// [`Error::InvalidInput`] for an empty or overflowing range.
    pub fn register_chrdev_region(&self, first: DevT, count: u32, name: &str) -> Result<ChrdevRegion> {
        self.inner.chrdevs.register(first, count, name)?;
        Ok(ChrdevRegion { chrdevs: self.inner.clone(), first, count })
    }

    /// Reserves `count` minors under a free dynamic major (Linux
    /// `alloc_chrdev_region`).
    pub fn alloc_chrdev_region(&self, first_minor: u32, count: u32, name: &str) -> Result<ChrdevRegion> {
        let first = self.inner.chrdevs.alloc(first_minor, count, name)?;
        Ok(ChrdevRegion { chrdevs: self.inner.clone(), first, count })
    }
}
