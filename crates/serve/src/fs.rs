//! [`ServeFs`]: the FUSE operations of the served tree, on top of the
//! driver core; the operations on an open device file are in
//! [`crate::file`], shared with CUSE.

use crate::control;
use crate::cuse::CuseNodes;
use crate::file::{caller, file_ioctl, file_poll, file_read, file_write, kerr};
use crate::handles::Handles;
use crate::inodes::Inodes;
use crate::restart::PollHandles;
use crate::tree::{self, Obj};
use devlife_core::gate::sync::lock;
use devlife_core::{Caller, Change, File, Llseek, NodeRef, PollMask, System};
use devlife_fuse::abi::fopen;
use devlife_fuse::{
    DirBuf, Entry, Errno, FileAttr, Filesystem, IoctlArgs, IoctlReply, Notifier, Opened, ReadArgs, Req,
    TransportStats,
};
use smallvec::SmallVec;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// How long the kernel may cache names and attributes of the fixed
/// structure (`dev`, `sys`, ...) and of device nodes; everything else is
/// served with no caching.
///
/// A device node's name is cached because opening it is the hot path
/// (`open` then costs one request, not a `LOOKUP` too). Its removal stays
/// visible at once: removals invalidate the kernel's names
/// ([`Notifier::inval_entry`]), and a control write returns only after
/// those reached the kernel ([`Notifier::flush`]). A name still cached in
/// the instant between a removal and its invalidation reaching the kernel
/// (a removal not made by a control write, such as a device unbinding
/// itself) answers `ENOENT`, as a name removed between lookup and open
/// does: never the old object, and never `ESTALE`, which the VFS retries
/// only once and would then hand to the caller.
const TTL: Duration = Duration::from_secs(1);

/// The open flags that give a device node the position its driver chose:
/// the kernel keeps the position and answers `lseek` itself (SEEK_END from
/// the size `getattr` reports), and passes the position as the offset of
/// every read and write.
fn position_flags(l: Llseek) -> u32 {
    match l {
        // No position, so threads sharing a descriptor do not serialise on
        // it, and writes run in parallel (the kernel takes no inode lock
        // for them).
        Llseek::Stream => fopen::NONSEEKABLE | fopen::STREAM | fopen::PARALLEL_DIRECT_WRITES,
        Llseek::NoSeek => fopen::NONSEEKABLE,
        Llseek::Default | Llseek::Fixed(_) => 0,
    }
}

/// An open file or directory of the tree.
enum Handle {
    File(File),
    Text(Vec<u8>),
    Control(tree::Control),
    /// A directory: its listing, taken when it is read from offset 0, so
    /// that a listing in progress shows every entry that was neither added
    /// nor removed exactly once, at the offset it had (POSIX readdir; the
    /// kernel resumes at the last offset it was given).
    Dir(Mutex<Arc<Vec<Listed>>>),
}

/// One entry of a directory listing: name, path, object.
type Listed = (String, String, Obj);

/// The first number of `generation`'s handles and inodes: the generation
/// is their top 16 bits (see `restart`).
pub(crate) fn generation_base(generation: u16) -> u64 {
    (generation as u64) << 48
}

/// The generation a handle or inode number was given in.
pub(crate) fn generation_of(n: u64) -> u16 {
    (n >> 48) as u16
}

/// The served tree.
pub struct ServeFs {
    sys: System,
    /// This server's generation: handles of another are an earlier
    /// server's (the connection outlived it), and name a removed device.
    generation: u16,
    inodes: Arc<Inodes>,
    handles: Handles<Handle>,
    uid: u32,
    gid: u32,
    start: u64,
    notifier: Arc<OnceLock<Notifier>>,
    transport: Arc<TransportStats>,
    /// The CUSE devices serving the nodes, when served that way.
    cuse: OnceLock<Arc<CuseNodes>>,
    /// Where poll handles are recorded for the next server, if the
    /// connection is kept for one.
    poll_handles: OnceLock<PollHandles>,
}

/// A path's components, on the stack for up to [`INLINE_PARTS`] of them
/// (every path but deep debugfs ones): an open resolves its inode's path,
/// and a heap allocation per open shows in its profile.
type Parts<'a> = SmallVec<[&'a str; INLINE_PARTS]>;
const INLINE_PARTS: usize = 12;

fn split(path: &str) -> Parts<'_> {
    path.split('/').filter(|c| !c.is_empty()).collect()
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() { name.to_owned() } else { format!("{parent}/{name}") }
}

impl ServeFs {
    /// The tree of `sys`, owned by `uid`/`gid` (the serving user).
    pub fn new(sys: System, uid: u32, gid: u32) -> Self {
        Self::in_generation(sys, uid, gid, 0)
    }

    /// [`new`](Self::new), numbering handles and inodes in `generation`:
    /// the server of a connection an earlier one kept (see `restart`).
    pub(crate) fn in_generation(sys: System, uid: u32, gid: u32, generation: u16) -> Self {
        let notifier: Arc<OnceLock<Notifier>> = Arc::default();
        let inodes = Arc::new(Inodes::in_generation(generation));
        // Removals invalidate the kernel's cached names at once; the
        // notifier queues them to its own thread, so this is safe from any
        // context, including a handler.
        {
            let (n, ino) = (notifier.clone(), inodes.clone());
            sys.on_change(move |c| {
                let Some(n) = n.get() else { return };
                let inval = |dir: &str, name: &str| {
                    if let Some(parent) = ino.peek(dir, 0) {
                        n.inval_entry(parent, name.as_bytes());
                    }
                };
                match c {
                    Change::DevNodeRemoved { name, class } => {
                        inval("dev", name);
                        if let Some(c) = class {
                            inval(&format!("sys/class/{c}"), name);
                        }
                    }
                    Change::DevNodeAdded { .. } => {}
                    Change::DeviceRemoved { bus, name } => inval(&format!("sys/bus/{bus}/devices"), name),
                    Change::Unbound { bus, name, driver, .. } => {
                        inval(&format!("sys/bus/{bus}/drivers/{driver}"), name)
                    }
                }
            });
        }
        // debug/devlife/fuse: the serving layer's table sizes and the
        // transport's counts.
        let transport = Arc::new(TransportStats::default());
        {
            let ino = Arc::downgrade(&inodes);
            let t = Arc::downgrade(&transport);
            let file = devlife_core::text::TextFile::read_only(move || {
                let (n, p) = ino.upgrade().map_or((0, 0), |i| i.counts());
                let c = t.upgrade().map(|t| t.snapshot()).unwrap_or_default();
                Ok(format!("inodes {n}\npaths {p}\n{}", c.text()))
            });
            if let Some(d) = sys.debugfs().child("devlife") {
                let _ = d.create_file("fuse", 0o444, file);
            }
        }
        let start =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        ServeFs {
            sys,
            generation,
            inodes,
            handles: Handles::in_generation(generation),
            uid,
            gid,
            start,
            notifier,
            transport,
            cuse: OnceLock::new(),
            poll_handles: OnceLock::new(),
        }
    }

    /// Shows the numbers of the CUSE devices serving the nodes in
    /// `sys/class`, and waits for their removal after control writes.
    pub(crate) fn set_cuse(&self, cuse: Arc<CuseNodes>) {
        let _ = self.cuse.set(cuse);
    }

    /// Records every poll handle the kernel gives into `p` (see
    /// `restart`).
    pub(crate) fn set_poll_handles(&self, p: PollHandles) {
        let _ = self.poll_handles.set(p);
    }

    /// The number `sys/class` shows for `n`.
    fn devt(&self, n: &devlife_core::DevNode) -> devlife_core::DevT {
        match self.cuse.get().and_then(|c| c.devt(&n.name)) {
            Some((major, minor)) => devlife_core::DevT::new(major, minor),
            None => n.devt,
        }
    }

    /// A directory's listing: `.`, `..`, then its entries by name.
    fn list(&self, path: &str, obj: Obj) -> Vec<Listed> {
        let parent = split(path);
        let parent_path =
            if parent.is_empty() { String::new() } else { parent[..parent.len() - 1].join("/") };
        let up =
            tree::resolve(&self.sys, &|n| self.devt(n), &split(&parent_path)).unwrap_or_else(|| obj.clone());
        let mut entries: Vec<Listed> =
            vec![(".".into(), path.to_owned(), obj), ("..".into(), parent_path, up)];
        entries.extend(
            tree::children(&self.sys, &|n| self.devt(n), &parent)
                .into_iter()
                .map(|(n, o)| (n.clone(), join(path, &n), o)),
        );
        entries
    }

    /// The transport's counts, for the session to count into (see
    /// `debug/devlife/fuse`).
    pub fn transport_stats(&self) -> Arc<TransportStats> {
        self.transport.clone()
    }

    fn resolve_ino(&self, ino: u64) -> Result<(Arc<str>, Obj), Errno> {
        // Gone, or the path now names another object: this inode's object
        // is gone (see `TTL`).
        let (path, id) = match self.inodes.get(ino) {
            Some(found) => found,
            // An inode an earlier server of the connection gave the kernel
            // (a name it cached, in a request sent again or made while the
            // servers changed): ESTALE has the VFS walk the path once more
            // with every name revalidated (`LOOKUP_REVAL`), which reaches
            // this server's inodes from the root.
            None if generation_of(ino) != self.generation => return Err(Errno::STALE),
            None => return Err(Errno::NOENT),
        };
        let obj = tree::resolve(&self.sys, &|n| self.devt(n), &split(&path)).ok_or(Errno::NOENT)?;
        if obj.id() != id {
            return Err(Errno::NOENT);
        }
        Ok((path, obj))
    }

    /// The object behind `ino` if it is a device node (`dev/<name>`):
    /// found in the calling CPU's copies of the inode and of the device
    /// node names (see [`Inodes::with`] and `System::dev_node`), what
    /// every open of a device looks up. `Ok(None)`: not a device node, or
    /// not an inode of this table (the full resolution says which error).
    fn dev_node(&self, ino: u64) -> Result<Option<NodeRef>, Errno> {
        let found = self.inodes.with(ino, |path, id| {
            let name = path.strip_prefix("dev/").filter(|n| !n.contains('/'))?;
            // The name now names another object, or none: this inode's
            // object is gone (as `resolve_ino` finds).
            Some(self.sys.dev_node(name).filter(|n| n.id() == id).ok_or(Errno::NOENT))
        });
        found.flatten().transpose()
    }

    /// Opens `ino`, whatever it stands for, resolving it in full.
    fn open_obj(&self, ino: u64, flags: u32, caller: &Caller<'_>) -> Result<(Handle, u32), Errno> {
        let (_, obj) = self.resolve_ino(ino)?;
        sysfs_open_mode(&obj, flags)?;
        Ok(match obj {
            Obj::DevNode(n) => open_dev_node(&n.node, caller)?,
            Obj::Attr { node, .. } => (Handle::File(node.open(caller).map_err(kerr)?), fopen::DIRECT_IO),
            Obj::Debug(d) => {
                let node = d.node().ok_or(Errno::ISDIR)?;
                (Handle::File(node.open(caller).map_err(kerr)?), fopen::DIRECT_IO)
            }
            Obj::Text { text, .. } => (Handle::Text(text.into_bytes()), fopen::DIRECT_IO),
            Obj::Control { c, .. } => (Handle::Control(c), fopen::DIRECT_IO),
            Obj::Dir { .. } => return Err(Errno::ISDIR),
            Obj::Symlink { .. } => return Err(Errno::LOOP),
        })
    }

    fn attr(&self, ino: u64, obj: &Obj) -> (FileAttr, Duration) {
        let (mode, uid, gid, size, ttl) = match obj {
            Obj::Dir { id, mode } => {
                (S_IFDIR | mode, self.uid, self.gid, 0, if *id == 0 { TTL } else { Duration::ZERO })
            }
            Obj::DevNode(n) => (S_IFREG | n.mode, n.uid, n.gid, n.node.llseek().size(), TTL),
            Obj::Attr { mode, .. } => (S_IFREG | mode, self.uid, self.gid, 4096, Duration::ZERO),
            Obj::Debug(d) => (S_IFREG | d.mode(), self.uid, self.gid, 0, Duration::ZERO),
            Obj::Text { text, .. } => {
                (S_IFREG | TEXT_MODE, self.uid, self.gid, text.len() as u64, Duration::ZERO)
            }
            Obj::Control { .. } => (S_IFREG | CONTROL_MODE, self.uid, self.gid, 4096, Duration::ZERO),
            Obj::Symlink { target, .. } => {
                (S_IFLNK | 0o777, self.uid, self.gid, target.len() as u64, Duration::ZERO)
            }
        };
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        (FileAttr { ino, size, mode, nlink, uid, gid, mtime: self.start }, ttl)
    }

    fn entry(&self, path: &str, obj: &Obj, count_lookup: bool) -> Entry {
        let ino = if count_lookup {
            self.inodes.lookup(path, obj.id())
        } else {
            self.inodes.listing(path, obj.id())
        };
        let (attr, ttl) = self.attr(ino, obj);
        Entry { attr, generation: 0, entry_ttl: ttl, attr_ttl: ttl }
    }

    fn handle(&self, fh: u64) -> Result<Arc<Handle>, Errno> {
        match self.handles.get(fh) {
            Some(h) => Ok(h),
            // Opened from an earlier server of the connection: a file of a
            // device removed with that server.
            None if self.is_earlier(fh) => Err(Errno::NODEV),
            None => Err(Errno::BADF),
        }
    }

    /// Whether `fh` was handed out by an earlier server of the connection.
    fn is_earlier(&self, fh: u64) -> bool {
        generation_of(fh) != self.generation
    }

    fn add_handle(&self, h: Handle) -> u64 {
        self.handles.add(h)
    }
}

/// Permission bits of control files (write-only, owner) and generated
/// text (read-only): what `stat` shows and the open check enforces.
const CONTROL_MODE: u32 = 0o200;
const TEXT_MODE: u32 = 0o444;

/// What every namespace change (mkdir, unlink, rename, ...) answers: the
/// tree is the driver core's, changed only through its control files
/// (sysfs answers `EPERM` alike).
const NAMESPACE_FIXED: Errno = Errno::PERM;

/// Opens device node `node`: direct I/O, at the offsets its `llseek` allows.
fn open_dev_node(node: &NodeRef, caller: &Caller<'_>) -> Result<(Handle, u32), Errno> {
    let f = node.open(caller).map_err(kerr)?;
    let flags = fopen::DIRECT_IO | position_flags(f.llseek());
    Ok((Handle::File(f), flags))
}

/// sysfs's open check (`kernfs_fop_open`): a file of `sys/` opens for
/// reading only if its mode has a read bit and for writing only if it has
/// a write bit, whoever opens it; `EACCES` otherwise, at open rather than
/// at the first read or write. Device nodes and debugfs files are left to
/// the permission check alone, as for character devices and debugfs.
fn sysfs_open_mode(obj: &Obj, flags: u32) -> Result<(), Errno> {
    let mode = match obj {
        Obj::Attr { mode, .. } => *mode,
        Obj::Control { .. } => CONTROL_MODE,
        Obj::Text { .. } => TEXT_MODE,
        _ => return Ok(()),
    };
    let (read, write) = match flags & 0o3 {
        0 => (true, false),
        1 => (false, true),
        _ => (true, true),
    };
    if (read && mode & 0o444 == 0) || (write && mode & 0o222 == 0) {
        return Err(Errno::ACCESS);
    }
    Ok(())
}

impl Filesystem for ServeFs {
    fn init(&self, notifier: &Notifier) {
        let _ = self.notifier.set(notifier.clone());
    }

    fn lookup(&self, _req: &Req<'_>, parent: u64, name: &[u8]) -> Result<Entry, Errno> {
        let (ppath, pobj) = self.resolve_ino(parent)?;
        if !matches!(pobj, Obj::Dir { .. }) {
            return Err(Errno::NOTDIR);
        }
        let name = std::str::from_utf8(name).map_err(|_| Errno::NOENT)?;
        let path = join(&ppath, name);
        let obj = tree::resolve(&self.sys, &|n| self.devt(n), &split(&path)).ok_or(Errno::NOENT)?;
        Ok(self.entry(&path, &obj, true))
    }

    fn forget(&self, ino: u64, nlookup: u64) {
        self.inodes.forget(ino, nlookup);
    }

    fn getattr(&self, _req: &Req<'_>, ino: u64) -> Result<(FileAttr, Duration), Errno> {
        let (_, obj) = self.resolve_ino(ino)?;
        Ok(self.attr(ino, &obj))
    }

    fn setattr(
        &self,
        _req: &Req<'_>,
        ino: u64,
        set: &devlife_fuse::abi::SetattrIn,
    ) -> Result<(FileAttr, Duration), Errno> {
        use devlife_fuse::abi::fattr;
        let (_, obj) = self.resolve_ino(ino)?;
        // Modes, owners and times are the driver core's to set: refused,
        // nothing changes (`touch` and `chmod` fail alike).
        if set.valid & (fattr::MODE | fattr::UID | fattr::GID | fattr::TIMES) != 0 {
            return Err(Errno::PERM);
        }
        // A truncate(2) (O_TRUNC comes in OPEN: ATOMIC_O_TRUNC): a
        // character device answers EINVAL; the other files have no stored
        // contents, and accept it as sysfs does, changing nothing.
        if set.valid & fattr::SIZE != 0 && matches!(obj, Obj::DevNode(_)) {
            return Err(Errno::INVAL);
        }
        Ok(self.attr(ino, &obj))
    }

    fn readlink(&self, _req: &Req<'_>, ino: u64) -> Result<Vec<u8>, Errno> {
        match self.resolve_ino(ino)?.1 {
            Obj::Symlink { target, .. } => Ok(target.into_bytes()),
            _ => Err(Errno::INVAL),
        }
    }

    fn open(&self, req: &Req<'_>, ino: u64, flags: u32) -> Result<Opened, Errno> {
        let caller = caller(req, flags);
        let (h, oflags) = match self.dev_node(ino)? {
            Some(node) => open_dev_node(&node, &caller)?,
            None => self.open_obj(ino, flags, &caller)?,
        };
        // No FLUSH on close where the driver has no `flush`.
        let oflags = match &h {
            Handle::File(f) if f.has_flush() => oflags,
            _ => oflags | fopen::NOFLUSH,
        };
        Ok(Opened { fh: self.add_handle(h), flags: oflags })
    }

    fn read(&self, req: &Req<'_>, _ino: u64, arg: &ReadArgs, out: &mut Vec<u8>) -> Result<(), Errno> {
        // No file here has mmap: a private mapping's page fault, or a
        // splice, would otherwise read a device (taking a FIFO's data, or
        // blocking with the page locked, which wedges the next open).
        if arg.page_cache {
            return Err(Errno::IO);
        }
        match &*self.handle(arg.fh)? {
            Handle::File(f) => {
                file_read(f, arg.offset, arg.size, &caller(req, arg.flags), req, out)?;
            }
            Handle::Text(t) => {
                let start = usize::try_from(arg.offset).unwrap_or(usize::MAX).min(t.len());
                let end = start.saturating_add(arg.size as usize).min(t.len());
                out.extend_from_slice(&t[start..end]);
            }
            Handle::Control(_) => return Err(Errno::INVAL),
            Handle::Dir(_) => return Err(Errno::ISDIR),
        }
        Ok(())
    }

    fn write(
        &self,
        req: &Req<'_>,
        _ino: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
        flags: u32,
    ) -> Result<u32, Errno> {
        match &*self.handle(fh)? {
            // A deferred write's count is sent by its `Deferred`.
            Handle::File(f) => file_write(f, data, offset, &caller(req, flags), req).map(|n| n.unwrap_or(0)),
            Handle::Text(_) => Err(Errno::ACCESS),
            Handle::Dir(_) => Err(Errno::ISDIR),
            Handle::Control(c) => {
                control::write(&self.sys, c, data).map_err(kerr)?;
                // The names this write removed are forgotten, and their
                // CUSE devices gone, before it returns.
                req.notifier.flush();
                if let Some(c) = self.cuse.get() {
                    c.settle();
                }
                Ok(data.len() as u32)
            }
        }
    }

    fn flush(&self, req: &Req<'_>, _ino: u64, fh: u64) -> Result<(), Errno> {
        if self.is_earlier(fh) {
            // The close of a file of a removed device succeeds.
            return Ok(());
        }
        match &*self.handle(fh)? {
            Handle::File(f) => f.flush(&caller(req, 0)).map_err(kerr),
            _ => Ok(()),
        }
    }

    fn release(&self, _req: &Req<'_>, _ino: u64, fh: u64) -> Result<(), Errno> {
        let h = self.handles.remove(fh);
        if let Some(h) = h {
            if let Handle::File(f) = &*h {
                // Releases now, even if an interrupted request on this file
                // still holds the handle: its waits are cancelled.
                f.close();
            }
        }
        Ok(())
    }

    fn opendir(&self, _req: &Req<'_>, ino: u64, _flags: u32) -> Result<Opened, Errno> {
        match self.resolve_ino(ino)?.1 {
            Obj::Dir { .. } => Ok(Opened { fh: self.add_handle(Handle::Dir(Mutex::default())), flags: 0 }),
            _ => Err(Errno::NOTDIR),
        }
    }

    fn readdir(
        &self,
        _req: &Req<'_>,
        ino: u64,
        fh: u64,
        offset: u64,
        out: &mut DirBuf<'_>,
    ) -> Result<(), Errno> {
        let (path, obj) = self.resolve_ino(ino)?;
        if !matches!(obj, Obj::Dir { .. }) {
            return Err(Errno::NOTDIR);
        }
        let handle = self.handle(fh)?;
        let Handle::Dir(listing) = &*handle else { return Err(Errno::BADF) };
        let entries = {
            let mut l = lock(listing);
            // Offset 0: opendir, or rewinddir. Anything else resumes the
            // listing taken then.
            if offset == 0 || l.is_empty() {
                *l = Arc::new(self.list(&path, obj));
            }
            l.clone()
        };
        for (i, (name, p, o)) in entries.iter().enumerate().skip(offset as usize) {
            let plus = out.is_plus() && name != "." && name != "..";
            let e = self.entry(p, o, plus);
            if !out.add(&e, i as u64 + 1, name.as_bytes()) {
                if plus {
                    // Not sent: undo the lookup it counted.
                    self.inodes.forget(e.attr.ino, 1);
                }
                break;
            }
        }
        Ok(())
    }

    fn releasedir(&self, _req: &Req<'_>, _ino: u64, fh: u64) -> Result<(), Errno> {
        self.handles.remove(fh);
        Ok(())
    }

    fn mknod(&self, _: &Req<'_>, _: u64, _: &[u8], _: u32, _: u32) -> Result<Entry, Errno> {
        Err(NAMESPACE_FIXED)
    }
    fn mkdir(&self, _: &Req<'_>, _: u64, _: &[u8], _: u32) -> Result<Entry, Errno> {
        Err(NAMESPACE_FIXED)
    }
    fn symlink(&self, _: &Req<'_>, _: u64, _: &[u8], _: &[u8]) -> Result<Entry, Errno> {
        Err(NAMESPACE_FIXED)
    }
    fn unlink(&self, _: &Req<'_>, _: u64, _: &[u8]) -> Result<(), Errno> {
        Err(NAMESPACE_FIXED)
    }
    fn rmdir(&self, _: &Req<'_>, _: u64, _: &[u8]) -> Result<(), Errno> {
        Err(NAMESPACE_FIXED)
    }
    fn rename(&self, _: &Req<'_>, _: u64, _: &[u8], _: u64, _: &[u8], _: u32) -> Result<(), Errno> {
        Err(NAMESPACE_FIXED)
    }
    fn link(&self, _: &Req<'_>, _: u64, _: u64, _: &[u8]) -> Result<Entry, Errno> {
        Err(NAMESPACE_FIXED)
    }
    fn create(&self, _: &Req<'_>, _: u64, _: &[u8], _: u32, _: u32) -> Result<(Entry, Opened), Errno> {
        // open(O_CREAT) of a new name: what the VFS answers for a
        // directory without `create` (sysfs).
        Err(Errno::ACCESS)
    }

    fn ioctl(
        &self,
        req: &Req<'_>,
        _ino: u64,
        a: &IoctlArgs<'_>,
        out: &mut Vec<u8>,
    ) -> Result<IoctlReply, Errno> {
        match &*self.handle(a.fh)? {
            Handle::File(f) => file_ioctl(f, &caller(req, 0), req, a, out),
            _ => Err(Errno::NOTTY),
        }
    }

    fn poll(&self, req: &Req<'_>, _ino: u64, fh: u64, kh: Option<u64>, _events: u32) -> Result<u32, Errno> {
        if self.is_earlier(fh) {
            // What a removed device's file polls.
            return Ok((PollMask::HUP | PollMask::ERR).0);
        }
        if let (Some(kh), Some(p)) = (kh, self.poll_handles.get()) {
            p.saw(kh);
        }
        match &*self.handle(fh)? {
            Handle::File(f) => Ok(file_poll(f, req, kh)),
            _ => Ok(PollMask::DEFAULT.0),
        }
    }

    fn access(&self, _req: &Req<'_>, ino: u64, _mask: u32) -> Result<(), Errno> {
        self.resolve_ino(ino).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_their_components_however_deep() {
        assert!(split("").is_empty());
        assert_eq!(&*split("dev/xyz0"), ["dev", "xyz0"]);
        assert_eq!(&*split("/sys//bus/"), ["sys", "bus"]);
        let deep: Vec<String> = (0..INLINE_PARTS + 3).map(|i| format!("d{i}")).collect();
        assert_eq!(&*split(&deep.join("/")), deep.iter().map(String::as_str).collect::<Vec<_>>());
        let exact = (0..INLINE_PARTS).map(|i| format!("d{i}")).collect::<Vec<_>>().join("/");
        let parts = split(&exact);
        assert!(parts.len() == INLINE_PARTS && !parts.spilled());
    }
}
