//! [`NodeRef`]: a node with its operations type erased, as registries,
//! path lookups and transports hold it.

use super::{File, Node, Removed};
use crate::errno::NodeKind;
use crate::fops::{Caller, FileOperations, KResult, Llseek};
use devlife_gate::sync::lock;
use std::sync::Arc;

/// A node with its operations type erased: what registries and transports
/// hold.
pub(crate) trait NodeDyn: Send + Sync {
    fn open(self: Arc<Self>, caller: &Caller<'_>) -> KResult<File>;
    fn remove_dyn(self: Arc<Self>) -> Removed;
    fn wait_removed(&self);
    fn is_removed(&self) -> bool;
    fn kind(&self) -> NodeKind;
    fn inside(&self) -> usize;
    fn pending(&self) -> usize;
    fn open_files(&self) -> usize;
    fn id(&self) -> u64;
    fn llseek(&self) -> Llseek;
}

impl<F: FileOperations> NodeDyn for Node<F> {
    fn llseek(&self) -> Llseek {
        F::LLSEEK
    }
    fn open(self: Arc<Self>, caller: &Caller<'_>) -> KResult<File> {
        Node::open(&self, caller)
    }
    fn remove_dyn(self: Arc<Self>) -> Removed {
        self.remove()
    }
    fn wait_removed(&self) {
        Node::wait_removed(self)
    }
    fn is_removed(&self) -> bool {
        self.ops.gate().is_killed()
    }
    fn kind(&self) -> NodeKind {
        self.kind
    }
    fn inside(&self) -> usize {
        self.ops.gate().inside()
    }
    fn pending(&self) -> usize {
        self.open_files().iter().map(|st| lock(&st.pending).len()).sum()
    }
    fn open_files(&self) -> usize {
        self.files.iter().map(|list| lock(list).len()).sum()
    }
    fn id(&self) -> u64 {
        self.id
    }
}

/// A reference to a gated object, as a path lookup returns it (the VFS
/// inode with its cached `i_cdev`): opening it after the object was
/// removed fails, and never reaches an object registered later in its place.
#[derive(Clone)]
pub struct NodeRef(pub(crate) Arc<dyn NodeDyn>);

impl NodeRef {
    /// Opens the object.
    ///
    /// # Errors
    ///
    /// After removal: `ENXIO` for a character device, `ENOENT` for a debugfs
    /// file, `ENODEV` for an attribute. Otherwise what the driver's `open`
    /// returns.
    pub fn open(&self, caller: &Caller<'_>) -> KResult<File> {
        self.0.clone().open(caller)
    }

    /// Whether the object has been removed.
    pub fn is_removed(&self) -> bool {
        self.0.is_removed()
    }

    /// What kind of object this is.
    pub fn kind(&self) -> NodeKind {
        self.0.kind()
    }

    /// Handlers running in the object right now (a snapshot, which also
    /// counts a call still entering: see
    /// [`Gate::inside`](devlife_gate::Gate::inside)).
    pub fn inside(&self) -> usize {
        self.0.inside()
    }

    /// Async operations of the object waiting now (their futures pending,
    /// no thread inside: see [`AsyncFileOperations`](crate::AsyncFileOperations)).
    pub fn pending(&self) -> usize {
        self.0.pending()
    }

    /// Files open on the object and not yet released.
    pub fn open_files(&self) -> usize {
        self.0.open_files()
    }

    /// Whether two references name the same object.
    pub fn same(&self, other: &NodeRef) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// A number naming this object and no other for the life of the
    /// process (a device node removed and registered again has a new one).
    pub fn id(&self) -> u64 {
        self.0.id()
    }

    /// Blocks until the object's removal has completed: every handler
    /// returned and every open file released (for a removal another thread
    /// has started, or is about to: it waits until then, however long).
    pub fn wait_removed(&self) {
        self.0.wait_removed()
    }

    /// How the files of this object keep their position
    /// ([`FileOperations::LLSEEK`]; its size is what `stat` reports).
    pub fn llseek(&self) -> Llseek {
        self.0.llseek()
    }
}

impl std::fmt::Debug for NodeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeRef").field("kind", &self.kind()).field("removed", &self.is_removed()).finish()
    }
}
