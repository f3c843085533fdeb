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
use crate::fs::generation_of;
use crate::handles::Handles;
use crate::restart::state::{LAST_GENERATION, State as Record};
use crate::restart::{Channels, Kept, PollHandles};
use devlife_core::gate::sync::lock;
use devlife_core::{Change, File, Llseek, NodeRef, PollMask, System, WeakSystem};
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
    /// The channel's generation: handles of an earlier one are files of a
    /// removed device (see `restart`).
    generation: u16,
    files: Handles<CuseFile>,
    notifier: OnceLock<Notifier>,
    /// The channel's poll handles, for the next server of a kept channel.
    polled: PollHandles,
}

impl CuseNode {
    fn new(node: NodeRef, generation: u16, polled: PollHandles) -> Self {
        CuseNode {
            node,
            generation,
            files: Handles::in_generation(generation),
            notifier: OnceLock::new(),
            polled,
        }
    }

    fn file(&self, fh: u64) -> Result<Arc<CuseFile>, Errno> {
        match self.files.get(fh) {
            Some(f) => Ok(f),
            // Opened from an earlier server of the channel: a file of the
            // device removed with it.
            None if self.is_earlier(fh) => Err(Errno::NODEV),
            None => Err(Errno::BADF),
        }
    }

    fn is_earlier(&self, fh: u64) -> bool {
        generation_of(fh) != self.generation
    }

    /// Whether every file opened on the channel has been released.
    fn released(&self) -> bool {
        self.files.is_empty()
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
        if self.is_earlier(fh) {
            return Ok((PollMask::HUP | PollMask::ERR).0);
        }
        if let Some(kh) = kh {
            self.polled.saw(kh);
        }
        Ok(file_poll(&self.file(fh)?.file, req, kh))
    }
}

/// A kept channel whose device the new server does not have (the earlier
/// one had hot-added it): every call is answered as on a removed device
/// until the channel is closed.
struct Removed;

impl Filesystem for Removed {
    fn open(&self, _: &Req<'_>, _: u64, _: u32) -> Result<Opened, Errno> {
        Err(Errno::NODEV)
    }
    fn read(&self, _: &Req<'_>, _: u64, _: &ReadArgs, _: &mut Vec<u8>) -> Result<(), Errno> {
        Err(Errno::NODEV)
    }
    fn write(&self, _: &Req<'_>, _: u64, _: u64, _: u64, _: &[u8], _: u32) -> Result<u32, Errno> {
        Err(Errno::NODEV)
    }
    fn release(&self, _: &Req<'_>, _: u64, _: u64) -> Result<(), Errno> {
        Ok(())
    }
    fn ioctl(&self, _: &Req<'_>, _: u64, _: &IoctlArgs<'_>, _: &mut Vec<u8>) -> Result<IoctlReply, Errno> {
        Err(Errno::NODEV)
    }
    fn poll(&self, _: &Req<'_>, _: u64, _: u64, _: Option<u64>, _: u32) -> Result<u32, Errno> {
        Ok((PollMask::HUP | PollMask::ERR).0)
    }
}

/// How long the close of a removed node's channel waits for the files
/// opened on it to be released (callers that close on the removal's
/// `ENODEV`); a descriptor kept open longer sees `ENOTCONN` afterwards.
const RELEASE_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

/// The CUSE devices of a served system, by node name.
pub(crate) struct CuseNodes {
    sys: WeakSystem,
    dev_dir: PathBuf,
    /// Where the channels are kept, when the server is restartable.
    channels: Option<Channels>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    open: HashMap<String, CuseDevice<CuseNode>>,
    /// Channels being closed once their node's removal completes.
    closing: HashMap<String, JoinHandle<()>>,
    /// Set at shutdown: no new channels.
    stopped: bool,
    /// Set by a hand-over: channels are left to the next server, not
    /// closed, when their nodes are removed.
    handing_over: bool,
}

impl CuseNodes {
    /// Serves every device node of `sys` over CUSE, now and as nodes come
    /// and go; their entries appear in `dev_dir` (devtmpfs: `/dev`). With
    /// `channels` (a restartable server), the channels an earlier server
    /// kept are served again, and this server's are kept.
    pub(crate) fn start(
        sys: &System,
        dev_dir: &Path,
        channels: Option<Channels>,
    ) -> std::io::Result<Arc<Self>> {
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
            channels,
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
        if let Some(c) = &me.channels {
            for (name, kept) in c.take_rest() {
                me.end_kept(&name, kept);
            }
        }
        Ok(me)
    }

    /// Ends a kept channel whose device this server does not have: the
    /// requests the earlier server left are answered as on a removed
    /// device, then the channel is closed.
    fn end_kept(&self, name: &str, kept: Kept) {
        let config = Config { io_uring: false, ..Config::default() };
        let negotiated = kept.state.negotiated;
        match CuseDevice::resume(name, kept.fd, Removed, config, negotiated) {
            Ok(dev) => self.close_removed(name, dev, |_| true),
            Err(e) => tracing::warn!(device = name, "a kept CUSE channel: {e}"),
        }
        if let Some(c) = &self.channels {
            c.forget(name);
        }
        tracing::info!(device = name, "removed a CUSE device the earlier server had and this one has not");
    }

    /// Closes the channel of a removed node, narrowing the window in which
    /// a racing call gets `ECONNABORTED` (the close aborts the connection:
    /// `fuse_abort_conn` ends every request queued or being handled with
    /// it). Its `/dev` entry is unlinked first, so that opens by name get
    /// `ENOENT` rather than a request; then it waits (at most
    /// [`RELEASE_GRACE`]) until every descriptor opened on it is released
    /// (`released`), so none can send a call; the store drops the channel;
    /// and [`CuseDevice::close`] waits for the channel to be quiet before
    /// it aborts. What remains is in `docs/ARCHITECTURE.md`, "What clients
    /// see at removal, over CUSE".
    fn close_removed<F: Filesystem>(&self, name: &str, dev: CuseDevice<F>, released: impl Fn(&F) -> bool) {
        match std::fs::remove_file(self.dev_dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(node = name, "unlinking its /dev entry: {e}"),
        }
        let start = Instant::now();
        while !released(dev.fs()) && start.elapsed() < RELEASE_GRACE {
            // The kernel sends no event for "every file closed": looked at
            // every 200 us, as the close looks at the queue.
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        if let Some(c) = &self.channels {
            c.forget(name);
        }
        dev.close();
    }

    /// Serves `node`'s channel: the one an earlier server kept, or a new
    /// one (kept, if the server is restartable).
    fn channel(&self, name: &str, node: &NodeRef) -> Result<CuseDevice<CuseNode>, String> {
        let config = Config { io_uring: false, ..Config::default() };
        if let Some(kept) = self.channels.as_ref().and_then(|c| c.take(name)) {
            match self.resume(name, node, kept, config.clone()) {
                Ok(dev) => return Ok(dev),
                Err(e) => {
                    tracing::warn!(
                        node = name,
                        "cannot serve the kept CUSE channel ({e}); registering the device anew"
                    );
                    if let Some(c) = &self.channels {
                        c.forget(name);
                    }
                }
            }
        }
        // Kept before the device is registered: a server killed once the
        // device exists (a client may be inside it) leaves it to the next.
        let record =
            Record { generation: 0, negotiated: devlife_fuse::cuse::negotiated_by(&config), max_kh: 0 };
        let mut state_fd = None;
        let keep = |ch: &rustix::fd::OwnedFd| {
            if let Some(c) = &self.channels {
                state_fd = c.keep(name, ch, &record)?;
            }
            Ok(())
        };
        let polled = PollHandles::unrecorded();
        let dev = CuseDevice::open_kept(name, None, CuseNode::new(node.clone(), 0, polled), config, keep)
            .map_err(|e| e.to_string())?;
        if let Some(fd) = state_fd {
            match rustix::io::dup(&fd) {
                Ok(fd) => dev.fs().polled.record_into(fd),
                Err(e) => tracing::warn!(node = name, "cannot record its poll handles for a restart: {e}"),
            }
        }
        Ok(dev)
    }

    /// Serves a channel an earlier server kept, in the next generation.
    fn resume(
        &self,
        name: &str,
        node: &NodeRef,
        kept: Kept,
        config: Config,
    ) -> std::io::Result<CuseDevice<CuseNode>> {
        let Kept { fd, state_fd, state } = kept;
        if state.generation == LAST_GENERATION {
            return Err(std::io::Error::other("its handle generations are used up"));
        }
        // Written first, as for the FUSE connection (`server::resume`).
        let generation = state.generation + 1;
        Record { generation, ..state }.write(&state_fd)?;
        let polled = PollHandles::new(rustix::io::dup(&state_fd)?, state.max_kh);
        let dev = CuseDevice::resume(
            name,
            fd,
            CuseNode::new(node.clone(), generation, polled),
            config,
            state.negotiated,
        )?;
        // Pollers the earlier server left asleep poll again.
        for kh in 1..=state.max_kh {
            dev.notifier().poll_wakeup(kh);
        }
        dev.notifier().flush();
        tracing::info!(node = name, generation, "serving the CUSE channel an earlier server kept");
        Ok(dev)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The real number of node `name`'s device, if it has one.
    pub(crate) fn devt(&self, name: &str) -> Option<(u32, u32)> {
        self.lock().open.get(name).map(CuseDevice::devt)
    }

    fn add(self: &Arc<Self>, name: &str) {
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
        let dev = match self.channel(name, &n.node) {
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

    fn remove(self: &Arc<Self>, name: &str) {
        let mut st = self.lock();
        let Some(dev) = st.open.remove(name) else { return };
        self.close_after_removal(&mut st, name, dev);
    }

    /// Closes `dev` once its node's removal has completed, on a thread of
    /// its own: the removal runs after the hook that asked for this, on
    /// the hook's thread.
    fn close_after_removal(self: &Arc<Self>, st: &mut State, name: &str, dev: CuseDevice<CuseNode>) {
        let node = dev.fs().node.clone();
        let (me, handing_over, n) = (self.clone(), st.handing_over, name.to_owned());
        let spawned =
            std::thread::Builder::new().name(format!("devlife-cuse-close:{name}")).spawn(move || {
                node.wait_removed();
                if handing_over {
                    // The channel, and the device, stay for the next server.
                    dev.leave();
                } else {
                    me.close_removed(&n, dev, CuseNode::released);
                }
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
        for (name, dev) in open {
            self.close_removed(&name, dev, CuseNode::released);
        }
        self.settle();
    }

    /// A planned hand-over, before the nodes' removal: every channel stops
    /// answering new requests (they are left for the next server; see
    /// [`CuseDevice::hand_over`]) and, once its node is removed, is left
    /// open in the store rather than closed: the devices, their names,
    /// numbers and `/dev` entries stay for the next server.
    pub(crate) fn hand_over(&self) {
        let mut st = self.lock();
        st.handing_over = true;
        st.stopped = true;
        for dev in st.open.values() {
            dev.hand_over();
        }
    }

    /// After [`hand_over`](Self::hand_over) and the nodes' removal: leaves
    /// every channel to the next server.
    pub(crate) fn leave(&self) {
        let open: Vec<_> = self.lock().open.drain().collect();
        for (_, dev) in open {
            dev.leave();
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
