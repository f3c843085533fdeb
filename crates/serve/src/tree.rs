//! The served tree: which object a path names, and what a directory holds.
//!
//! ```text
//! dev/<node>                              device nodes
//! sys/bus/<bus>/devices/<dev>/            uevent, driver (symlink when bound), attributes
//! sys/bus/<bus>/drivers/<drv>/            bind, unbind (write a device name), <dev> links
//! sys/bus/<bus>/new_device, delete_device hot-plug control
//! sys/class/<class>/<node>/dev            "MAJOR:MINOR\n"
//! sys/class/<class>/<node>/uevent         MAJOR=, MINOR=, DEVNAME= lines
//! debug/...                               debugfs
//! ```
//!
//! Paths are resolved afresh on every request against the driver core, so
//! the tree is never out of date; the inode table only remembers which
//! object a kernel inode stood for.

use devlife_core::debugfs::Dentry;
use devlife_core::{DevNode, DevT, Device, NodeRef, System};

/// A control file (fields: the bus and driver it acts on).
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Control {
    /// `sys/bus/<bus>/drivers/<drv>/bind`
    Bind { bus: String, driver: String },
    /// `sys/bus/<bus>/drivers/<drv>/unbind`
    Unbind { bus: String, driver: String },
    /// `sys/bus/<bus>/new_device`
    NewDevice { bus: String },
    /// `sys/bus/<bus>/delete_device`
    DeleteDevice { bus: String },
}

/// What a path names.
///
/// Every object carries the identity of what it stands for (a device, a
/// driver registration, a node, a debugfs entry; 0 for the fixed
/// structure, which is never removed), from the driver core's identities,
/// which are never reused: an inode looked up for one object never
/// matches another made later at the same path, including the files of a
/// device directory (`uevent`, the `driver` link) and a driver's `bind`.
#[derive(Clone)]
#[allow(missing_docs)]
pub enum Obj {
    /// A directory.
    Dir { id: u64, mode: u32 },
    /// `dev/<node>`.
    DevNode(DevNode),
    /// A device attribute.
    Attr { node: NodeRef, mode: u32 },
    /// A debugfs file.
    Debug(Dentry),
    /// Generated text (uevent, class `dev`) of object `owner`.
    Text { text: String, owner: u64 },
    /// A control file of object `owner`.
    Control { c: Control, owner: u64 },
    /// A symbolic link of object `owner`.
    Symlink { target: String, owner: u64 },
}

impl Obj {
    /// The identity of the object behind the path.
    pub fn id(&self) -> u64 {
        match self {
            Obj::Dir { id, .. } => *id,
            Obj::DevNode(n) => n.node.id(),
            Obj::Attr { node, .. } => node.id(),
            Obj::Debug(d) => d.id(),
            Obj::Text { owner, .. } | Obj::Control { owner, .. } | Obj::Symlink { owner, .. } => *owner,
        }
    }
}

fn dir() -> Obj {
    Obj::Dir { id: 0, mode: 0o755 }
}

fn device_dir(d: &Device) -> Obj {
    Obj::Dir { id: d.id(), mode: 0o755 }
}

fn driver_dir(bus: &devlife_core::Bus, drv: &str) -> Option<Obj> {
    bus.driver_id(drv).map(|id| Obj::Dir { id, mode: 0o755 })
}

fn debug_obj(d: Dentry) -> Obj {
    if d.is_dir() { Obj::Dir { id: d.id(), mode: d.mode() } } else { Obj::Debug(d) }
}

/// The device number `sys/class` shows for a node: the core's, or that of
/// the real device serving it (CUSE).
pub type Numbers<'a> = &'a dyn Fn(&DevNode) -> DevT;

/// Resolves `path` (components below the mount root).
pub fn resolve(sys: &System, numbers: Numbers<'_>, path: &[&str]) -> Option<Obj> {
    match path {
        [] | ["dev"] | ["sys"] | ["debug"] | ["sys", "bus"] | ["sys", "class"] => Some(dir()),
        ["dev", name] => sys.dev_lookup(name).map(Obj::DevNode),
        ["sys", "bus", bus] => sys.bus(bus).map(|_| dir()),
        ["sys", "bus", bus, "devices"] | ["sys", "bus", bus, "drivers"] => sys.bus(bus).map(|_| dir()),
        ["sys", "bus", bus, ctl @ ("new_device" | "delete_device")] => {
            sys.bus(bus)?;
            let bus = (*bus).to_owned();
            let c =
                if *ctl == "new_device" { Control::NewDevice { bus } } else { Control::DeleteDevice { bus } };
            // Buses are never unregistered: their files are fixed structure.
            Some(Obj::Control { c, owner: 0 })
        }
        ["sys", "bus", bus, "devices", dev] => sys.bus(bus)?.device(dev).map(|d| device_dir(&d)),
        ["sys", "bus", bus, "devices", dev, file] => {
            let d = sys.bus(bus)?.device(dev)?;
            let owner = d.id();
            match *file {
                "uevent" => Some(Obj::Text { text: d.uevent(), owner }),
                "driver" => {
                    d.driver_name().map(|drv| Obj::Symlink { target: format!("../../drivers/{drv}"), owner })
                }
                attr => {
                    let mode = d.attrs().into_iter().find(|(n, _)| n == attr)?.1;
                    Some(Obj::Attr { node: d.attr(attr)?, mode })
                }
            }
        }
        ["sys", "bus", bus, "drivers", drv] => driver_dir(&sys.bus(bus)?, drv),
        ["sys", "bus", bus, "drivers", drv, file] => {
            let b = sys.bus(bus)?;
            let owner = b.driver_id(drv)?;
            let (bus, driver) = ((*bus).to_owned(), (*drv).to_owned());
            match *file {
                "bind" => Some(Obj::Control { c: Control::Bind { bus, driver }, owner }),
                "unbind" => Some(Obj::Control { c: Control::Unbind { bus, driver }, owner }),
                dev => {
                    let d = b.device(dev).filter(|d| d.driver_name().as_deref() == Some(drv))?;
                    Some(Obj::Symlink { target: format!("../../devices/{dev}"), owner: d.id() })
                }
            }
        }
        ["sys", "class", class] => (!sys.class_nodes(class).is_empty()).then(dir),
        ["sys", "class", class, node] => {
            let n = sys.class_nodes(class).into_iter().find(|n| &*n.name == *node)?;
            Some(Obj::Dir { id: n.node.id(), mode: 0o755 })
        }
        ["sys", "class", class, node, file @ ("dev" | "uevent")] => {
            let n = sys.class_nodes(class).into_iter().find(|n| &*n.name == *node)?;
            let devt = numbers(&n);
            let text =
                if *file == "dev" { format!("{devt}\n") } else { DevNode { devt, ..n.clone() }.uevent() };
            Some(Obj::Text { text, owner: n.node.id() })
        }
        ["debug", rest @ ..] => sys.debugfs().lookup(&rest.join("/")).map(debug_obj),
        _ => None,
    }
}

/// The names in the root, by name.
pub const ROOT_NAMES: [&str; 3] = ["debug", "dev", "sys"];

/// The entries of the directory at `path`, by name.
pub fn children(sys: &System, numbers: Numbers<'_>, path: &[&str]) -> Vec<(String, Obj)> {
    let named = |names: &[&str]| names.iter().map(|n| ((*n).to_owned(), dir())).collect::<Vec<_>>();
    match path {
        [] => named(&ROOT_NAMES),
        ["dev"] => sys.dev_nodes().into_iter().map(|n| (n.name.to_string(), Obj::DevNode(n))).collect(),
        ["sys"] => named(&["bus", "class"]),
        ["sys", "bus"] => sys.buses().iter().map(|b| (b.name().to_owned(), dir())).collect(),
        ["sys", "bus", bus] => {
            let mut v = named(&["devices", "drivers"]);
            for c in ["delete_device", "new_device"] {
                v.extend(resolve(sys, numbers, &["sys", "bus", bus, c]).map(|o| (c.to_owned(), o)));
            }
            v
        }
        ["sys", "bus", bus, "devices"] => sys
            .bus(bus)
            .map(|b| b.devices().iter().map(|d| (d.name().to_owned(), device_dir(d))).collect())
            .unwrap_or_default(),
        ["sys", "bus", bus, "drivers"] => sys
            .bus(bus)
            .map(|b| b.drivers().into_iter().filter_map(|d| driver_dir(&b, &d).map(|o| (d, o))).collect())
            .unwrap_or_default(),
        ["sys", "bus", bus, "devices", dev] => {
            let Some(d) = sys.bus(bus).and_then(|b| b.device(dev)) else { return Vec::new() };
            let mut names = vec!["uevent".to_owned()];
            if d.driver_name().is_some() {
                names.push("driver".into());
            }
            names.extend(d.attrs().into_iter().map(|(n, _)| n));
            names
                .into_iter()
                .filter_map(|n| {
                    resolve(sys, numbers, &["sys", "bus", bus, "devices", dev, &n]).map(|o| (n, o))
                })
                .collect()
        }
        ["sys", "bus", bus, "drivers", drv] => {
            let Some(b) = sys.bus(bus) else { return Vec::new() };
            let mut names = vec!["bind".to_owned(), "unbind".to_owned()];
            names.extend(b.driver_devices(drv));
            names
                .into_iter()
                .filter_map(|n| {
                    resolve(sys, numbers, &["sys", "bus", bus, "drivers", drv, &n]).map(|o| (n, o))
                })
                .collect()
        }
        ["sys", "class"] => sys.classes().into_iter().map(|c| (c, dir())).collect(),
        ["sys", "class", class] => sys
            .class_nodes(class)
            .into_iter()
            .map(|n| (n.name.to_string(), Obj::Dir { id: n.node.id(), mode: 0o755 }))
            .collect(),
        ["sys", "class", class, node] => ["dev", "uevent"]
            .into_iter()
            .filter_map(|f| {
                resolve(sys, numbers, &["sys", "class", class, node, f]).map(|o| (f.to_owned(), o))
            })
            .collect(),
        ["debug", rest @ ..] => sys
            .debugfs()
            .lookup(&rest.join("/"))
            .map(|d| d.children().into_iter().map(|c| (c.name().to_owned(), debug_obj(c))).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}
