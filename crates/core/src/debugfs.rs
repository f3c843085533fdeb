//! debugfs: a tree of directories and files whose removal waits for their
//! handlers, sharing the character devices' gate (Linux `fs/debugfs`).
//!
//! After a file is removed, operations on descriptors opened before get
//! `EIO`, poll gets `POLLHUP` and opening a stale reference gets `ENOENT`,
//! debugfs's own codes. Removal is recursive, children first.

use crate::device::Bound;
use crate::errno::{Errno, NodeKind};
use crate::fops::{FileOperations, KResult, OpCtx};
use crate::node::{Node, NodeDyn, NodeRef};
use crate::system::SystemInner;
use crate::text::TextFile;
use crate::{Error, Result};
use devlife_gate::sync::lock;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// A debugfs directory or file (Linux `struct dentry`). A cheap handle.
#[derive(Clone)]
pub struct Dentry(Arc<DentryInner>);

struct DentryInner {
    id: u64,
    name: String,
    parent: Weak<DentryInner>,
    sys: Weak<SystemInner>,
    removed: AtomicBool,
    kind: Kind,
}

enum Kind {
    Dir(Mutex<BTreeMap<String, Dentry>>),
    File { node: Arc<dyn NodeDyn>, mode: u32 },
}

impl Dentry {
    pub(crate) fn root(sys: Weak<SystemInner>) -> Self {
        Dentry(Arc::new(DentryInner {
            id: crate::id::next(),
            name: String::new(),
            parent: Weak::new(),
            sys,
            removed: AtomicBool::new(false),
            kind: Kind::Dir(Mutex::new(BTreeMap::new())),
        }))
    }

    /// The entry's name (empty for the root).
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        matches!(self.0.kind, Kind::Dir(_))
    }

    /// Permission bits (`0o755` for directories).
    pub fn mode(&self) -> u32 {
        match &self.0.kind {
            Kind::Dir(_) => 0o755,
            Kind::File { mode, .. } => *mode,
        }
    }

    /// The file behind the entry (`None` for a directory).
    pub fn node(&self) -> Option<NodeRef> {
        match &self.0.kind {
            Kind::Dir(_) => None,
            Kind::File { node, .. } => Some(NodeRef(node.clone())),
        }
    }

    /// A number naming this entry and no other for the life of the
    /// process (an entry removed and created again has a new one).
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// Whether the entry has been removed.
    pub fn is_removed(&self) -> bool {
        self.0.removed.load(Ordering::Acquire)
    }

    /// The entries of a directory, by name.
    pub fn children(&self) -> Vec<Dentry> {
        match &self.0.kind {
            Kind::Dir(c) => lock(c).values().cloned().collect(),
            Kind::File { .. } => Vec::new(),
        }
    }

    /// The entry `name` of a directory.
    pub fn child(&self, name: &str) -> Option<Dentry> {
        match &self.0.kind {
            Kind::Dir(c) => lock(c).get(name).cloned(),
            Kind::File { .. } => None,
        }
    }

    /// The entry at `path` (`a/b/c`) below this one.
    pub fn lookup(&self, path: &str) -> Option<Dentry> {
        path.split('/').filter(|c| !c.is_empty()).try_fold(self.clone(), |d, c| d.child(c))
    }

    fn insert(&self, name: &str, kind: Kind) -> Result<Dentry> {
        crate::name::validate(name)?;
        let Kind::Dir(children) = &self.0.kind else {
            return Err(Error::InvalidInput(format!("{:?} is not a directory", self.0.name)));
        };
        let mut c = lock(children);
        // Checked under the children lock, which `remove` takes after
        // setting the flag: no entry is added to a directory being removed.
        if self.is_removed() {
            return Err(Error::Removed(self.0.name.clone()));
        }
        if c.contains_key(name) {
            return Err(Error::Exists(name.to_owned()));
        }
        let d = Dentry(Arc::new(DentryInner {
            id: crate::id::next(),
            name: name.to_owned(),
            parent: Arc::downgrade(&self.0),
            sys: self.0.sys.clone(),
            removed: AtomicBool::new(false),
            kind,
        }));
        c.insert(name.to_owned(), d.clone());
        Ok(d)
    }

    /// Creates a directory (Linux `debugfs_create_dir`).
    #[doc(alias = "debugfs_create_dir")]
    pub fn create_dir(&self, name: &str) -> Result<Dentry> {
        self.insert(name, Kind::Dir(Mutex::new(BTreeMap::new())))
    }

    /// Creates a file with operations `ops` (Linux `debugfs_create_file`).
    #[doc(alias = "debugfs_create_file")]
    pub fn create_file<F: FileOperations>(&self, name: &str, mode: u32, ops: F) -> Result<Dentry> {
        let sys = self.0.sys.upgrade().ok_or(Error::Detached)?;
        let node: Arc<dyn NodeDyn> =
            Node::new(ops, NodeKind::Debugfs, name.to_owned(), None, sys.stats.clone(), sys.gated, None);
        let d = self.insert(name, Kind::File { node: node.clone(), mode: mode & 0o7777 })?;
        crate::System::from_inner(sys).track(&node);
        Ok(d)
    }

    /// A file showing `value` in decimal; writable (decimal or `0x` hex)
    /// if `mode` has a write bit (Linux `debugfs_create_u64`).
    #[doc(alias = "debugfs_create_u64")]
    pub fn create_u64(&self, name: &str, mode: u32, value: Arc<AtomicU64>) -> Result<Dentry> {
        let v2 = value.clone();
        let file = TextFile::read_write(
            move || Ok(format!("{}\n", value.load(Ordering::Relaxed))),
            move |s| {
                let s = s.trim();
                let n = match s.strip_prefix("0x") {
                    Some(h) => u64::from_str_radix(h, 16),
                    None => s.parse(),
                };
                v2.store(n.map_err(|_| Errno::EINVAL)?, Ordering::Relaxed);
                Ok(())
            },
        );
        self.create_file(name, mode, WriteIfAllowed { file, writable: mode & 0o222 != 0 })
    }

    /// A file showing `Y` or `N`; writable (`y`/`n`/`1`/`0`) if `mode` has a
    /// write bit (Linux `debugfs_create_bool`).
    #[doc(alias = "debugfs_create_bool")]
    pub fn create_bool(&self, name: &str, mode: u32, value: Arc<AtomicBool>) -> Result<Dentry> {
        let v2 = value.clone();
        let file = TextFile::read_write(
            move || Ok(if value.load(Ordering::Relaxed) { "Y\n" } else { "N\n" }.to_owned()),
            move |s| {
                let b = match s.trim() {
                    "y" | "Y" | "1" | "on" => true,
                    "n" | "N" | "0" | "off" => false,
                    _ => return Err(Errno::EINVAL),
                };
                v2.store(b, Ordering::Relaxed);
                Ok(())
            },
        );
        self.create_file(name, mode, WriteIfAllowed { file, writable: mode & 0o222 != 0 })
    }

    /// A read-only binary file (Linux `debugfs_create_blob`).
    #[doc(alias = "debugfs_create_blob")]
    pub fn create_blob(&self, name: &str, mode: u32, data: Arc<[u8]>) -> Result<Dentry> {
        self.create_file(name, mode & 0o444, Blob(data))
    }

    /// Removes the entry and, for a directory, everything below it,
    /// children first (Linux `debugfs_remove`). Returns when every removed
    /// file's handlers have returned and its open files were released.
    #[doc(alias = "debugfs_remove")]
    #[doc(alias = "debugfs_remove_recursive")]
    pub fn remove(&self) {
        self.0.removed.store(true, Ordering::Release);
        if let Some(parent) = self.0.parent.upgrade() {
            if let Kind::Dir(c) = &parent.kind {
                let mut c = lock(c);
                if c.get(&self.0.name).is_some_and(|d| Arc::ptr_eq(&d.0, &self.0)) {
                    c.remove(&self.0.name);
                }
            }
        }
        match &self.0.kind {
            Kind::Dir(children) => {
                // A snapshot, not a detach: a concurrent remover of this
                // directory removes the same children, and each file's
                // removal returns only once it is complete.
                let snapshot: Vec<_> = lock(children).values().cloned().collect();
                for c in snapshot {
                    c.remove();
                }
            }
            Kind::File { node, .. } => {
                let _ = node.clone().remove_dyn();
            }
        }
    }
}

impl std::fmt::Debug for Dentry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dentry").field("name", &self.0.name).field("dir", &self.is_dir()).finish()
    }
}

/// Creates directory `name` under `parent`, removed recursively when the
/// binding of `host` ends.
pub fn devm_create_dir(host: &Bound<'_>, parent: &Dentry, name: &str) -> Result<Dentry> {
    let d = parent.create_dir(name)?;
    let d2 = d.clone();
    host.devres().add_or_reset(format!("debugfs_remove:{name}"), move || d2.remove())?;
    Ok(d)
}

/// A text file whose writes are refused when its mode has no write bit.
struct WriteIfAllowed {
    file: TextFile,
    writable: bool,
}

impl FileOperations for WriteIfAllowed {
    type File = <TextFile as FileOperations>::File;
    fn open(&self, cx: &OpCtx<'_>) -> KResult<Self::File> {
        self.file.open(cx)
    }
    fn read(&self, f: &Self::File, cx: &OpCtx<'_>, buf: &mut [u8], off: u64) -> KResult<usize> {
        self.file.read(f, cx, buf, off)
    }
    fn write(&self, f: &Self::File, cx: &OpCtx<'_>, data: &[u8], off: u64) -> KResult<usize> {
        if !self.writable {
            return Err(Errno::EACCES);
        }
        self.file.write(f, cx, data, off)
    }
}

struct Blob(Arc<[u8]>);

impl FileOperations for Blob {
    type File = ();
    fn open(&self, _cx: &OpCtx<'_>) -> KResult<()> {
        Ok(())
    }
    fn read(&self, _f: &(), _cx: &OpCtx<'_>, buf: &mut [u8], off: u64) -> KResult<usize> {
        Ok(crate::fops::simple_read_from_buffer(buf, off, &self.0))
    }
}
