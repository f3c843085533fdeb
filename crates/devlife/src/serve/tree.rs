//! The served tree: which object a path names, and what a directory holds.
//!
//! ```text
//! dev/<node>                              device nodes
//! sys/bus/<bus>/devices/<dev>/            uevent, driver (symlink when bound), attributes
//! sys/bus/<bus>/drivers/<drv>/            bind, unbind (write a device name), <dev> links
//! sys/bus/sim/new_device, delete_device   hot-plug control
//! sys/class/<class>/<node>/dev            "MAJOR:MINOR\n"
//! debug/...                               debugfs
//! ```
//!
//! Paths are resolved afresh on every request against the driver core, so
//! the tree is never out of date; the inode table only remembers which
//! object a kernel inode stood for.

use devlife_core::debugfs::Dentry;
use devlife_core::{DevNode, DevT, Device, NodeRef, System};

/// The bus that accepts `new_device` and `delete_device`.
pub const SIM_BUS: &str = "sim";
/// Device types `new_device` accepts on the sim bus.
pub const SIM_TYPES: &[&str] = &["xyz", "bench"];

/// A control file (fields: the bus and driver it acts on).
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Control {
    /// `sys/bus/<bus>/drivers/<drv>/bind`
    Bind { bus: String, driver: String },
    /// `sys/bus/<bus>/drivers/<drv>/unbind`
    Unbind { bus: String, driver: String },
    /// `sys/bus/sim/new_device`
    NewDevice { bus: String },
    /// `sys/bus/sim/delete_device`
    DeleteDevice { bus: String },
}

/// What a path names.
#[derive(Clone)]
#[allow(missing_docs)]
pub enum Obj {
    /// A directory; `id` identifies what it lists (0: fixed structure).
    Dir { id: usize, mode: u32 },
    /// `dev/<node>`.
    DevNode(DevNode),
    /// A device attribute.
    Attr { node: NodeRef, mode: u32 },
    /// A debugfs file.
    Debug(Dentry),
    /// Generated text (uevent, class `dev`).
    Text(String),
    /// A control file.
    Control(Control),
    /// A symbolic link.
    Symlink(String),
}

impl Obj {
    /// Identifies the object behind the path, so that an inode of a removed
    /// object never reaches a new one at the same path.
    pub fn id(&self) -> usize {
        match self {
            Obj::Dir { id, .. } => *id,
            Obj::DevNode(n) => n.node.id(),
            Obj::Attr { node, .. } => node.id(),
            Obj::Debug(d) => d.id(),
            Obj::Text(_) | Obj::Control(_) | Obj::Symlink(_) => 0,
        }
    }
}

fn dir() -> Obj {
    Obj::Dir { id: 0, mode: 0o755 }
}

fn device_dir(d: &Device) -> Obj {
    Obj::Dir { id: d.id(), mode: 0o755 }
}

fn debug_obj(d: Dentry) -> Obj {
    if d.is_dir() { Obj::Dir { id: d.id(), mode: d.mode() } } else { Obj::Debug(d) }
}

/// Resolves `path` (components below the mount root).
pub fn resolve(sys: &System, path: &[&str]) -> Option<Obj> {
    match path {
        [] | ["dev"] | ["sys"] | ["debug"] | ["sys", "bus"] | ["sys", "class"] => Some(dir()),
        ["dev", name] => sys.dev_lookup(name).map(Obj::DevNode),
        ["sys", "bus", bus] => sys.bus(bus).map(|_| dir()),
        ["sys", "bus", bus, "devices"] | ["sys", "bus", bus, "drivers"] => sys.bus(bus).map(|_| dir()),
        ["sys", "bus", bus, ctl @ ("new_device" | "delete_device")] if *bus == SIM_BUS => {
            sys.bus(bus)?;
            let bus = (*bus).to_owned();
            Some(Obj::Control(if *ctl == "new_device" {
                Control::NewDevice { bus }
            } else {
                Control::DeleteDevice { bus }
            }))
        }
        ["sys", "bus", bus, "devices", dev] => sys.bus(bus)?.device(dev).map(|d| device_dir(&d)),
        ["sys", "bus", bus, "devices", dev, file] => {
            let d = sys.bus(bus)?.device(dev)?;
            match *file {
                "uevent" => Some(Obj::Text(d.uevent())),
                "driver" => d.driver_name().map(|drv| Obj::Symlink(format!("../../drivers/{drv}"))),
                attr => {
                    let mode = d.attrs().into_iter().find(|(n, _)| n == attr)?.1;
                    Some(Obj::Attr { node: d.attr(attr)?, mode })
                }
            }
        }
        ["sys", "bus", bus, "drivers", drv] => {
            let b = sys.bus(bus)?;
            b.drivers().iter().any(|d| d == drv).then(dir)
        }
        ["sys", "bus", bus, "drivers", drv, file] => {
            let b = sys.bus(bus)?;
            if !b.drivers().iter().any(|d| d == drv) {
                return None;
            }
            let (bus, driver) = ((*bus).to_owned(), (*drv).to_owned());
            match *file {
                "bind" => Some(Obj::Control(Control::Bind { bus, driver })),
                "unbind" => Some(Obj::Control(Control::Unbind { bus, driver })),
                dev => b
                    .driver_devices(drv)
                    .iter()
                    .any(|d| d == dev)
                    .then(|| Obj::Symlink(format!("../../devices/{dev}"))),
            }
        }
        ["sys", "class", class] => (!sys.class_nodes(class).is_empty()).then(dir),
        ["sys", "class", class, node] => {
            let n = sys.class_nodes(class).into_iter().find(|n| n.name == *node)?;
            Some(Obj::Dir { id: n.node.id(), mode: 0o755 })
        }
        ["sys", "class", class, node, "dev"] => {
            let n = sys.class_nodes(class).into_iter().find(|n| n.name == *node)?;
            Some(Obj::Text(format!("{}\n", n.devt)))
        }
        ["debug", rest @ ..] => sys.debugfs().lookup(&rest.join("/")).map(debug_obj),
        _ => None,
    }
}

/// The entries of the directory at `path`, by name.
pub fn children(sys: &System, path: &[&str]) -> Vec<(String, Obj)> {
    let named = |names: &[&str]| names.iter().map(|n| ((*n).to_owned(), dir())).collect::<Vec<_>>();
    match path {
        [] => named(&["debug", "dev", "sys"]),
        ["dev"] => sys.dev_nodes().into_iter().map(|n| (n.name.clone(), Obj::DevNode(n))).collect(),
        ["sys"] => named(&["bus", "class"]),
        ["sys", "bus"] => sys.buses().iter().map(|b| (b.name().to_owned(), dir())).collect(),
        ["sys", "bus", bus] => {
            let mut v = named(&["devices", "drivers"]);
            if *bus == SIM_BUS {
                for c in ["delete_device", "new_device"] {
                    v.extend(resolve(sys, &["sys", "bus", bus, c]).map(|o| (c.to_owned(), o)));
                }
            }
            v
        }
        ["sys", "bus", bus, "devices"] => sys
            .bus(bus)
            .map(|b| b.devices().iter().map(|d| (d.name().to_owned(), device_dir(d))).collect())
            .unwrap_or_default(),
        ["sys", "bus", bus, "drivers"] => {
            sys.bus(bus).map(|b| b.drivers().into_iter().map(|d| (d, dir())).collect()).unwrap_or_default()
        }
        ["sys", "bus", bus, "devices", dev] => {
            let Some(d) = sys.bus(bus).and_then(|b| b.device(dev)) else { return Vec::new() };
            let mut names = vec!["uevent".to_owned()];
            if d.driver_name().is_some() {
                names.push("driver".into());
            }
            names.extend(d.attrs().into_iter().map(|(n, _)| n));
            names
                .into_iter()
                .filter_map(|n| resolve(sys, &["sys", "bus", bus, "devices", dev, &n]).map(|o| (n, o)))
                .collect()
        }
        ["sys", "bus", bus, "drivers", drv] => {
            let Some(b) = sys.bus(bus) else { return Vec::new() };
            let mut names = vec!["bind".to_owned(), "unbind".to_owned()];
            names.extend(b.driver_devices(drv));
            names
                .into_iter()
                .filter_map(|n| resolve(sys, &["sys", "bus", bus, "drivers", drv, &n]).map(|o| (n, o)))
                .collect()
        }
        ["sys", "class"] => sys.classes().into_iter().map(|c| (c, dir())).collect(),
        ["sys", "class", class] => sys
            .class_nodes(class)
            .into_iter()
            .map(|n| (n.name.clone(), Obj::Dir { id: n.node.id(), mode: 0o755 }))
            .collect(),
        ["sys", "class", class, node] => resolve(sys, &["sys", "class", class, node, "dev"])
            .map(|o| ("dev".to_owned(), o))
            .into_iter()
            .collect(),
        ["debug", rest @ ..] => sys
            .debugfs()
            .lookup(&rest.join("/"))
            .map(|d| d.children().into_iter().map(|c| (c.name().to_owned(), debug_obj(c))).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// The device number shown for a node (for `stat`'s size field, nothing else).
pub fn devt_of(o: &Obj) -> Option<DevT> {
    match o {
        Obj::DevNode(n) => Some(n.devt),
        _ => None,
    }
}
