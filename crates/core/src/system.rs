//! [`System`]: one instance of the driver core (buses, device numbers,
//! device nodes, classes, debugfs), as one kernel would hold them.

use crate::bus::Bus;
use crate::chrdev::{Chrdevs, DevT, MISC_MAJOR};
use crate::debugfs::Dentry;
use crate::fops::{Caller, KResult};
use crate::node::{File, NodeDyn, NodeRef};
use crate::percpu::PerCpu;
use crate::stats::{Stats, StatsSnapshot};
use crate::{Errno, Error, Result};
use devlife_gate::sync::lock;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// One driver core. Cheap to clone (a shared handle); independent
/// instances share nothing, so tests can run side by side.
#[derive(Clone)]
pub struct System {
    pub(crate) inner: Arc<SystemInner>,
}

pub(crate) struct SystemInner {
    pub(crate) buses: Mutex<BTreeMap<String, Bus>>,
    pub(crate) chrdevs: Chrdevs,
    pub(crate) devnodes: Mutex<DevRegistry>,
    /// Each CPU's copy of the objects behind the device node names it
    /// looked up (see [`System::dev_node`]); emptied after every change to
    /// `devnodes.by_name` (see `forget_dev_nodes`).
    dev_cache: PerCpu<Mutex<HashMap<String, NodeRef>>>,
    pub(crate) misc_minors: Mutex<BTreeSet<u32>>,
    pub(crate) debugfs: Dentry,
    pub(crate) stats: Arc<Stats>,
    pub(crate) next_binding: AtomicU64,
    /// Every gated object, for counting handlers in flight.
    nodes: Mutex<Vec<Weak<dyn NodeDyn>>>,
    /// Whether objects' handlers enter their gates and removals drain them
    /// (see [`System::ungated`]).
    pub(crate) gated: bool,
    /// Owner of device nodes whose driver sets none.
    pub(crate) default_owner: Mutex<(u32, u32)>,
    /// Observers of removals (the FUSE tree invalidates kernel caches).
    hooks: Mutex<Vec<ChangeHook>>,
    /// Keeps the misc major reserved for the system's life.
    _misc_region: Mutex<Option<crate::chrdev::ChrdevRegion>>,
}

/// A device node as `devtmpfs` shows it (`/dev/<name>`), with its class
/// entry (`/sys/class/<class>/<name>/dev`). Cloning it allocates nothing
/// (the served tree looks one up for every open).
#[derive(Clone, Debug)]
pub struct DevNode {
    /// The node's name.
    pub name: Arc<str>,
    /// Its device number.
    pub devt: DevT,
    /// Its class, if any.
    pub class: Option<Arc<str>>,
    /// Permission bits (`0o600` by default).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// The object behind it.
    pub node: NodeRef,
}

impl DevNode {
    /// The class device's `uevent` text (`MAJOR=`, `MINOR=`, `DEVNAME=`
    /// lines, as `/sys/class/<class>/<name>/uevent`), what udev reads to
    /// make `/dev/<name>`.
    pub fn uevent(&self) -> String {
        format!("MAJOR={}\nMINOR={}\nDEVNAME={}\n", self.devt.major, self.devt.minor, self.name)
    }
}

/// A [`System`] handle that does not keep it alive.
#[derive(Clone)]
pub struct WeakSystem(Weak<SystemInner>);

impl WeakSystem {
    /// The system, if it still exists.
    pub fn upgrade(&self) -> Option<System> {
        self.0.upgrade().map(System::from_inner)
    }
}

/// An observer of [`Change`]s.
type ChangeHook = Arc<dyn Fn(&Change) + Send + Sync>;

/// A change to the tree of objects: for caches to forget what it lost, and
/// transports to publish what it gained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A device node was published (its lookup by name now finds it).
    DevNodeAdded {
        /// Its name.
        name: String,
        /// Its class.
        class: Option<String>,
    },
    /// A device node was unpublished; its removal (the wait for its
    /// handlers) follows, on the same thread
    /// ([`NodeRef::wait_removed`](crate::NodeRef::wait_removed) waits for it).
    DevNodeRemoved {
        /// Its name.
        name: String,
        /// Its class.
        class: Option<String>,
    },
    /// A device was deleted from its bus.
    DeviceRemoved {
        /// The bus.
        bus: String,
        /// The device.
        name: String,
    },
    /// A device lost its driver (and the binding's attributes).
    Unbound {
        /// The bus.
        bus: String,
        /// The device.
        name: String,
        /// The driver it had.
        driver: String,
        /// The attributes it had.
        attrs: Vec<String>,
    },
}

#[derive(Default)]
pub(crate) struct DevRegistry {
    pub(crate) by_name: BTreeMap<String, DevNode>,
    pub(crate) by_devt: BTreeMap<DevT, NodeRef>,
}

impl Default for System {
    fn default() -> Self {
        Self::new()
    }
}

impl System {
    /// A new, empty driver core.
    pub fn new() -> Self {
        Self::with_gates(true)
    }

    /// A driver core *without* the removal guarantee, for measuring what it
    /// costs (`devlife bench fs`): handlers of its character devices,
    /// debugfs files and attributes run without entering their gates, and
    /// a removal returns without waiting for handlers still running; open
    /// files are released at their close and driver data lives on until
    /// then, as with Linux's `cdev_del`. Memory-safe, but none of the
    /// guarantees of [`devm_cdev_device_add`](crate::devm_cdev_device_add).
    pub fn ungated() -> Self {
        Self::with_gates(false)
    }

    fn with_gates(gated: bool) -> Self {
        let stats = Arc::new(Stats::default());
        let inner = Arc::new_cyclic(|weak: &Weak<SystemInner>| SystemInner {
            buses: Mutex::new(BTreeMap::new()),
            chrdevs: Chrdevs::default(),
            devnodes: Mutex::new(DevRegistry::default()),
            dev_cache: PerCpu::default(),
            misc_minors: Mutex::new(BTreeSet::new()),
            debugfs: Dentry::root(weak.clone()),
            stats,
            next_binding: AtomicU64::new(1),
            nodes: Mutex::new(Vec::new()),
            gated,
            default_owner: Mutex::new(process_owner()),
            hooks: Mutex::new(Vec::new()),
            _misc_region: Mutex::new(None),
        });
        let sys = System { inner };
        // Reserve the misc major as the kernel's misc_init does.
        let misc = sys.register_chrdev_region(DevT::new(MISC_MAJOR, 0), crate::chrdev::MINORS, "misc");
        *lock(&sys.inner._misc_region) = misc.ok();
        sys.create_stats_file();
        sys
    }

    /// `debugfs/devlife/stats`: the framework's counters, one `name value`
    /// a line.
    fn create_stats_file(&self) {
        let weak = Arc::downgrade(&self.inner);
        let file = crate::text::TextFile::read_only(move || {
            let sys = weak.upgrade().map(System::from_inner).ok_or(Errno::ENODEV)?;
            let mut s = sys.stats();
            // Do not count this very read among the operations in flight.
            s.inflight_ops = s.inflight_ops.saturating_sub(1);
            Ok(s.render())
        });
        let made = self.inner.debugfs.create_dir("devlife").and_then(|d| d.create_file("stats", 0o444, file));
        if let Err(e) = made {
            tracing::error!("cannot create debugfs/devlife/stats: {e}");
        }
    }

    pub(crate) fn from_inner(inner: Arc<SystemInner>) -> Self {
        System { inner }
    }

    /// A handle that does not keep the system alive (for closures the
    /// system itself owns, such as a debugfs file's).
    pub fn downgrade(&self) -> WeakSystem {
        WeakSystem(Arc::downgrade(&self.inner))
    }

    /// Registers a bus (Linux `bus_register`).
    pub fn bus_register(&self, name: &str) -> Result<Bus> {
        crate::name::validate(name)?;
        let mut buses = lock(&self.inner.buses);
        if buses.contains_key(name) {
            return Err(Error::Exists(name.to_owned()));
        }
        let bus = Bus::new(name, Arc::downgrade(&self.inner));
        buses.insert(name.to_owned(), bus.clone());
        Ok(bus)
    }

    /// The bus called `name`.
    pub fn bus(&self, name: &str) -> Option<Bus> {
        lock(&self.inner.buses).get(name).cloned()
    }

    /// Every bus, by name.
    pub fn buses(&self) -> Vec<Bus> {
        lock(&self.inner.buses).values().cloned().collect()
    }

    /// Looks up a device node by name, as a path walk in `/dev` would.
    pub fn dev_lookup(&self, name: &str) -> Option<DevNode> {
        lock(&self.inner.devnodes).by_name.get(name).cloned()
    }

    /// The object behind device node `name`, as an open of `/dev/<name>`
    /// reaches it (the inode's cached `i_cdev`, which `chrdev_open`
    /// takes): [`dev_lookup`](Self::dev_lookup)'s node, found in the
    /// calling CPU's cache of the names it looked up, so that opens on
    /// different CPUs share no lock and no count but the node's own.
    ///
    /// A removed node is never found: its name leaves every CPU's cache
    /// before its removal waits for its handlers (`DevNodeRemoved`).
    pub fn dev_node(&self, name: &str) -> Option<NodeRef> {
        let mut cache = lock(self.inner.dev_cache.this());
        if let Some(n) = cache.get(name) {
            return Some(n.clone());
        }
        // A miss looks in the registry with this CPU's cache locked: a
        // change to the registry empties this cache after it
        // (`forget_dev_nodes`), so what is added here is either current
        // or emptied again.
        let n = lock(&self.inner.devnodes).by_name.get(name).map(|d| d.node.clone())?;
        cache.insert(name.to_owned(), n.clone());
        Some(n)
    }

    /// Empties every CPU's cache of device node names (`dev_node`'s):
    /// called after each change to the registry's names, with the
    /// registry unlocked (a cache's lock is taken before the registry's).
    /// Detached under each lock, dropped outside it.
    pub(crate) fn forget_dev_nodes(&self) {
        for c in self.inner.dev_cache.iter() {
            drop(std::mem::take(&mut *lock(c)));
        }
    }

    /// Every device node, by name.
    pub fn dev_nodes(&self) -> Vec<DevNode> {
        lock(&self.inner.devnodes).by_name.values().cloned().collect()
    }

    /// Opens the character device `devt` (Linux `chrdev_open`): `ENXIO` if
    /// no device has that number (any more).
    pub fn open_devt(&self, devt: DevT, caller: &Caller<'_>) -> KResult<File> {
        let node = lock(&self.inner.devnodes).by_devt.get(&devt).cloned().ok_or(Errno::ENXIO)?;
        node.open(caller)
    }

    /// The class names in use.
    pub fn classes(&self) -> Vec<String> {
        let reg = lock(&self.inner.devnodes);
        let set: BTreeSet<String> =
            reg.by_name.values().filter_map(|n| n.class.as_deref().map(str::to_owned)).collect();
        set.into_iter().collect()
    }

    /// The device nodes of `class`.
    pub fn class_nodes(&self, class: &str) -> Vec<DevNode> {
        lock(&self.inner.devnodes)
            .by_name
            .values()
            .filter(|n| n.class.as_deref() == Some(class))
            .cloned()
            .collect()
    }

    /// The root of this system's debugfs.
    pub fn debugfs(&self) -> Dentry {
        self.inner.debugfs.clone()
    }

    /// `(major, name)` of every registered chrdev region (`/proc/devices`).
    pub fn chrdev_regions(&self) -> Vec<(u32, String)> {
        self.inner.chrdevs.describe()
    }

    /// The framework's counters.
    pub fn stats(&self) -> StatsSnapshot {
        let nodes: Vec<_> = {
            let mut nodes = lock(&self.inner.nodes);
            nodes.retain(|n| n.strong_count() > 0);
            nodes.iter().filter_map(Weak::upgrade).collect()
        };
        let inflight = nodes.iter().map(|n| n.inside() as u64).sum();
        let pending = nodes.iter().map(|n| n.pending() as u64).sum();
        self.inner.stats.snapshot(inflight, pending)
    }

    pub(crate) fn track(&self, node: &Arc<dyn NodeDyn>) {
        let mut nodes = lock(&self.inner.nodes);
        if nodes.len() >= 64 && nodes.len().is_power_of_two() {
            nodes.retain(|n| n.strong_count() > 0);
        }
        nodes.push(Arc::downgrade(node));
    }

    /// Sets the owner of device nodes whose driver names none (by default
    /// the user and group the process runs as, so that a server's nodes
    /// are its own).
    pub fn set_default_owner(&self, uid: u32, gid: u32) {
        *lock(&self.inner.default_owner) = (uid, gid);
    }

    /// Calls `hook` after every [`Change`] (from the thread making it).
    pub fn on_change(&self, hook: impl Fn(&Change) + Send + Sync + 'static) {
        lock(&self.inner.hooks).push(Arc::new(hook));
    }

    pub(crate) fn changed(&self, c: Change) {
        let hooks: Vec<_> = lock(&self.inner.hooks).clone();
        for h in hooks {
            h(&c);
        }
    }

    pub(crate) fn next_binding_id(&self) -> u64 {
        self.inner.next_binding.fetch_add(1, Ordering::Relaxed)
    }
}

impl std::fmt::Debug for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("System").field("buses", &lock(&self.inner.buses).keys().collect::<Vec<_>>()).finish()
    }
}

/// The effective user and group of this process (the owner of its
/// `/proc/self`), or root's if that cannot be read.
fn process_owner() -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map_or((0, 0), |m| (m.uid(), m.gid()))
}
