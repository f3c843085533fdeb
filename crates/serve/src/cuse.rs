//! Device nodes as real character devices: one CUSE channel per node of
//! the core, made when the node is published and closed once its removal
//! has completed.
//!
//! Each channel's requests reach the node through [`CuseNode`], with the
//! same handlers and the same removal guarantee as `dev/<node>` in the
//! FUSE tree. The order at removal is what keeps the guarantee's answers:
//! the core's removal runs first, over a live channel (callers blocked in
//! the driver are answered `ENODEV`, open files released), and only then
//! is the channel closed (the kernel unregisters the device; later calls
//! on old descriptors fail `ENOTCONN`, its choice). `docs/ARCHITECTURE.md`
//! has the table.

use crate::file::{caller, file_ioctl, file_poll, file_read, file_write, kerr};
use crate::handles::Handles;
use devlife_core::gate::sync::lock;
use devlife_core::{Change, File, Llseek, NodeRef, System, WeakSystem};
use devlife_fuse::{
    Config, CuseDevice, Errno, Filesystem, IoctlArgs, IoctlReply, Notifier, Opened, ReadArgs, Req,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Instant;

/// An open file of a CUSE device, with the position the kernel does not
/// keep (every CUSE read and write comes at offset 0).
struct CuseFile {
    file: File,
    /// `None` for streams; the next read or write's offset otherwise.
    pos: Option<Mutex<u64>>,
}

/// One node's requests, as a CUSE channel brings them.
pub(crate) struct CuseNode {
    node: NodeRef,
    files: Handles<CuseFile>,
    notifier: OnceLock<Notifier>,
}

impl CuseNode {
    fn new(node: NodeRef) -> Self {
        CuseNode { node, files: Handles::default(), notifier: OnceLock::new() }
    }

    fn file(&self, fh: u64) -> Result<Arc<CuseFile>, Errno> {
        self.files.get(fh).ok_or(Errno::BADF)
    }

    /// Runs `f` at the file's position and advances it by what `f` moved.
    fn at_pos(f: &CuseFile, op: impl FnOnce(u64) -> Result<usize, Errno>) -> Result<usize, Errno> {
        match &f.pos {
            None => op(0),
            Some(pos) => {
                let mut p = lock(pos);
                let n = op(*p)?;
                *p += n as u64;
                Ok(n)
            }
        }
    }
}

impl Filesystem for CuseNode {
    fn init(&self, notifier: &Notifier) {
        let _ = self.notifier.set(notifier.clone());
    }

    fn open(&self, req: &Req<'_>, _ino: u64, flags: u32) -> Result<Opened, Errno> {
        // The kernel checked the caller against the /dev node's mode.
        let file = self.node.open(&caller(req, flags)).map_err(kerr)?;
        let pos = (!matches!(file.llseek(), Llseek::Stream | Llseek::NoSeek)).then(|| Mutex::new(0));
        Ok(Opened { fh: self.files.add(CuseFile { file, pos }), flags: 0 })
    }

    fn read(&self, req: &Req<'_>, _ino: u64, arg: &ReadArgs, out: &mut Vec<u8>) -> Result<(), Errno> {
        let f = self.file(arg.fh)?;
        let caller = caller(req, arg.flags);
        if f.pos.is_none() {
            // No position to advance at completion: may be deferred.
            return file_read(&f.file, 0, arg.size, &caller, req, out);
        }
        // A position: read it, advance it and let the next read go, in
        // order (a wait here holds this thread, as a blocking read does).
        Self::at_pos(&f, |off| {
            let mut buf = vec![0; arg.size as usize];
            let n = f.file.read(&mut buf, off, &caller).map_err(kerr)?;
            buf.truncate(n);
            *out = buf;
            Ok(n)
        })
        .map(drop)
    }

    fn write(
        &self,
        req: &Req<'_>,
        _ino: u64,
        fh: u64,
        _off: u64,
        data: &[u8],
        flags: u32,
    ) -> Result<u32, Errno> {
        let f = self.file(fh)?;
        let caller = caller(req, flags);
        if f.pos.is_none() {
            // A deferred write's count is sent by its `Deferred`.
            return file_write(&f.file, data, 0, &caller, req).map(|n| n.unwrap_or(0));
        }
        let n = Self::at_pos(&f, |off| f.file.write(data, off, &caller).map_err(kerr))?;
        Ok(n as u32)
    }

    fn release(&self, _req: &Req<'_>, _ino: u64, fh: u64) -> Result<(), Errno> {
        if let Some(f) = self.files.remove(fh) {
            f.file.close();
        }
        Ok(())
    }

    fn ioctl(
        &self,
        req: &Req<'_>,
        _ino: u64,
        a: &IoctlArgs<'_>,
        out: &mut Vec<u8>,
    ) -> Result<IoctlReply, Errno> {
        let f = self.file(a.fh)?;
        file_ioctl(&f.file, &caller(req, 0), req, a, out)
    }

    fn poll(&self, req: &Req<'_>, _ino: u64, fh: u64, kh: Option<u64>, _events: u32) -> Result<u32, Errno> {
        Ok(file_poll(&self.file(fh)?.file, req, kh))
    }
}

/// The CUSE devices of a served system, by node name.
pub(crate) struct CuseNodes {
    sys: WeakSystem,
    dev_dir: PathBuf,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    open: HashMap<String, CuseDevice<CuseNode>>,
    /// Channels being closed once their node's removal completes.
    closing: HashMap<String, JoinHandle<()>>,
    /// Set at shutdown: no new channels.
    stopped: bool,
}

impl CuseNodes {
    /// Serves every device node of `sys` over CUSE, now and as nodes come
    /// and go; their entries appear in `dev_dir` (devtmpfs: `/dev`).
    pub(crate) fn start(sys: &System, dev_dir: &Path) -> std::io::Result<Arc<Self>> {
        if !Path::new(devlife_fuse::cuse::CUSE_DEV).exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "{} is missing: the kernel has no CUSE (modprobe cuse)",
                    devlife_fuse::cuse::CUSE_DEV
                ),
            ));
        }
        let me = Arc::new(CuseNodes {
            sys: sys.downgrade(),
            dev_dir: dev_dir.to_owned(),
            state: Mutex::default(),
        });
        let weak = Arc::downgrade(&me);
        sys.on_change(move |c| {
            let Some(me) = weak.upgrade() else { return };
            match c {
                Change::DevNodeAdded { name, .. } => me.add(name),
                Change::DevNodeRemoved { name, .. } => me.remove(name),
                _ => {}
            }
        });
        for n in sys.dev_nodes() {
            me.add(&n.name);
        }
        Ok(me)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The real number of node `name`'s device, if it has one.
    pub(crate) fn devt(&self, name: &str) -> Option<(u32, u32)> {
        self.lock().open.get(name).map(CuseDevice::devt)
    }

    fn add(&self, name: &str) {
        let Some(sys) = self.sys.upgrade() else { return };
        // The kernel allows one device per name: the old one goes first.
        let old = self.lock().closing.remove(name);
        if let Some(t) = old {
            let _ = t.join();
        }
        let Some(n) = sys.dev_lookup(name) else { return };
        {
            let st = self.lock();
            if st.stopped || st.open.contains_key(name) {
                return;
            }
        }
        let started = Instant::now();
        let config = Config { io_uring: false, ..Config::default() };
        let dev = match CuseDevice::open(name, None, CuseNode::new(n.node.clone()), config) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(node = name, "cannot serve it over CUSE: {e}");
                return;
            }
        };
        let path = self.dev_dir.join(name);
        if let Err(e) = set_owner(&path, n.mode, n.uid, n.gid) {
            tracing::warn!(node = name, path = %path.display(), "mode and owner: {e}");
        }
        let (major, minor) = dev.devt();
        tracing::debug!(node = name, major, minor, duration = ?started.elapsed(), "CUSE device up");
        let mut st = self.lock();
        // Removed while its channel was being made: `remove` found nothing
        // to close (it takes this lock after unpublishing the node, so the
        // lookup tells), and this channel must not outlive its node.
        if sys.dev_lookup(name).map(|d| d.node.id()) != Some(n.node.id()) {
            self.close_after_removal(&mut st, name, dev);
            return;
        }
        st.open.insert(name.to_owned(), dev);
    }

    fn remove(&self, name: &str) {
        let mut st = self.lock();
        let Some(dev) = st.open.remove(name) else { return };
        self.close_after_removal(&mut st, name, dev);
    }

    /// Closes `dev` once its node's removal has completed, on a thread of
    /// its own: the removal runs after the hook that asked for this, on
    /// the hook's thread.
    fn close_after_removal(&self, st: &mut State, name: &str, dev: CuseDevice<CuseNode>) {
        let node = dev.fs().node.clone();
        let spawned =
            std::thread::Builder::new().name(format!("devlife-cuse-close:{name}")).spawn(move || {
                node.wait_removed();
                dev.close();
            });
        match spawned {
            Ok(t) => {
                if let Some(old) = st.closing.insert(name.to_owned(), t) {
                    // Two closes of one name cannot both be pending: the
                    // add that follows a close joins it first.
                    let _ = old.join();
                }
            }
            Err(e) => tracing::error!(node = name, "cannot close its CUSE device: {e}"),
        }
    }

    /// Waits until every channel whose node was removed is closed.
    pub(crate) fn settle(&self) {
        let closing: Vec<_> = self.lock().closing.drain().collect();
        for (_, t) in closing {
            let _ = t.join();
        }
    }

    /// Closes every channel (after the nodes' removal, at shutdown).
    pub(crate) fn stop(&self) {
        let open: Vec<_> = {
            let mut st = self.lock();
            st.stopped = true;
            st.open.drain().collect()
        };
        for (_, dev) in open {
            dev.close();
        }
        self.settle();
    }
}

/// Gives `/dev/<name>` its driver's mode and owner. devtmpfs made the
/// entry before the device's registration returned (`device_add` waits for
/// `devtmpfs_create_node`), that is, before `CuseDevice::open` did.
fn set_owner(path: &Path, mode: u32, uid: u32, gid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777))
}
