//! [`Server`]: a [`System`] mounted and served, until shutdown.

use crate::cuse::CuseNodes;
use crate::error::ServeError;
use crate::fs::ServeFs;
use crate::options::{IoUring, Options, fsname_problem};
use crate::restart::state::{LAST_GENERATION, State};
use crate::restart::{Kept, PollHandles, Restart};
use devlife_core::System;
use devlife_fuse::mount::{self, Mount, MountOptions, MountState};
use devlife_fuse::{Config, Session, Transport};
use rustix::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

/// Where devtmpfs shows CUSE devices.
const DEV_DIR: &str = "/dev";

/// The kernel's switch for FUSE over io_uring.
const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// A driver core served over FUSE: `dev/`, `sys/` and `debug/` under the
/// mount path, each request answered by the [`System`]'s drivers with the
/// removal guarantee.
///
/// [`shutdown`](Self::shutdown) (or dropping the server) removes every
/// device, each removal waiting for the handlers inside it and releasing
/// its open files, and then unmounts. Descriptors still open on the mount
/// then fail (`ENODEV` on device nodes) and the connection ends when the
/// last is closed.
///
/// # Examples
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let sys = devlife_core::System::new();
/// // ... register drivers, add devices ...
/// let server = devlife_serve::Server::start(sys, &devlife_serve::Options::new())?;
/// println!("serving at {}", server.mount_path().display());
/// server.run_until_signal()?;
/// # Ok(()) }
/// ```
pub struct Server {
    sys: System,
    session: Arc<Session<ServeFs>>,
    /// The mount; `None` once unmounted (by us, or from outside).
    mount: Option<Mount>,
    dir: PathBuf,
    /// The CUSE devices, when the nodes are served that way too.
    cuse: Option<Arc<CuseNodes>>,
    /// SIGINT and SIGTERM, once caught.
    signals: Option<signal_hook::iterator::Signals>,
    /// Where the connection is kept for the next server, if it is.
    restart: Restart,
    /// The kept state's file (see `restart`), held while serving.
    _state_fd: Option<OwnedFd>,
}

/// Why [`Server::run_until_signal`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// SIGINT or SIGTERM (the signal number).
    Signal(i32),
    /// The mount was unmounted or its connection aborted from outside.
    Unmounted,
    /// SIGHUP to a restartable server: it handed the connection over to
    /// the next server ([`Server::hand_over`]).
    HandedOver,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Stopped::Signal(signal_hook::consts::SIGINT) => f.write_str("SIGINT"),
            Stopped::Signal(signal_hook::consts::SIGTERM) => f.write_str("SIGTERM"),
            Stopped::Signal(n) => write!(f, "signal {n}"),
            Stopped::Unmounted => f.write_str("unmounted from outside"),
            Stopped::HandedOver => f.write_str("SIGHUP: handed over to the next server"),
        }
    }
}

impl Server {
    /// Mounts `opts.dir()` and starts serving `sys`. Returns once requests
    /// are being answered.
    ///
    /// The directory is created if missing; a stale mount there (its
    /// server was killed: every access fails `ENOTCONN`) is detached
    /// first; a live one is left alone ([`ServeError::AlreadyMounted`]).
    pub fn start(sys: System, opts: &Options) -> Result<Server, ServeError> {
        if let Some(reason) = fsname_problem(&opts.fsname) {
            return Err(ServeError::FsName { name: opts.fsname.clone(), reason });
        }
        crate::supervise(opts)?;
        let mut restart = Restart::from_env().map_err(ServeError::Restart)?;
        let io_uring = transport_choice(opts.io_uring, restart.restartable())?;
        if io_uring == IoUring::On {
            enable_uring().map_err(ServeError::IoUring)?;
        }
        let restartable = restart.restartable();
        let config = |dir: &Path| Config {
            io_uring: io_uring != IoUring::Off,
            mount_dir: Some(dir.to_owned()),
            // See `Config::clone_devices`: a killed server's clones would
            // take its callers' requests with them.
            clone_devices: !restartable,
            ..Config::default()
        };
        if let Some(kept) = restart.take_kept() {
            match resume(&sys, opts, kept, config(&std::path::absolute(&opts.dir).unwrap_or_default())) {
                Ok((session, mount, state_fd)) => {
                    tracing::info!(dir = %mount.dir().display(), "resumed the connection an earlier server kept");
                    return Self::finish(sys, opts, session, mount, restart, Some(state_fd));
                }
                Err(e) => {
                    tracing::warn!("cannot resume the kept connection ({e}); mounting anew");
                    restart.forget();
                }
            }
        }
        let dir = opts.dir.clone();
        prepare_dir(&dir)?;
        let mount_opts = MountOptions {
            allow_other: opts.allow_other,
            fsname: opts.fsname.clone(),
            subtype: opts.fsname.clone(),
        };
        let mut m = mount::mount(&dir, &mount_opts)
            .map_err(|source| ServeError::Mount { dir: dir.clone(), source })?;
        let dir = m.dir().to_owned();
        let fd = m.take_fd().ok_or_else(|| ServeError::Handshake(std::io::Error::other("no connection")))?;
        let kept_fd = match restartable {
            true => Some(rustix::io::dup(&fd).map_err(|e| ServeError::Restart(e.into()))?),
            false => None,
        };
        let fs = ServeFs::new(sys.clone(), opts.owner.0, opts.owner.1);
        let stats = fs.transport_stats();
        // On failure `m` is dropped here, which unmounts.
        let session =
            Session::start_with_stats(fd, fs, config(&dir), stats).map_err(ServeError::Handshake)?;
        if opts.io_uring == IoUring::On && session.transport() == Transport::DevFuse {
            return Err(ServeError::IoUring("the kernel did not set up the rings".into()));
        }
        let state_fd = match kept_fd {
            Some(fd) => restart
                .keep(&fd, &State { generation: 0, negotiated: session.negotiated(), max_kh: 0 })
                .map_err(ServeError::Restart)?,
            None => None,
        };
        Self::finish(sys, opts, session, m, restart, state_fd)
    }

    /// The rest of a start, fresh or resumed: CUSE, then ready.
    fn finish(
        sys: System,
        opts: &Options,
        session: Session<ServeFs>,
        mount: Mount,
        mut restart: Restart,
        state_fd: Option<OwnedFd>,
    ) -> Result<Server, ServeError> {
        let dir = mount.dir().to_owned();
        if let Some(fd) = &state_fd {
            let max = State::read(fd).map_or(0, |s| s.max_kh);
            let fd = rustix::io::dup(fd).map_err(|e| ServeError::Restart(e.into()))?;
            session.fs().set_poll_handles(PollHandles::new(fd, max));
        }
        let cuse = match opts.cuse {
            true => {
                let c = CuseNodes::start(&sys, Path::new(DEV_DIR), restart.channels())
                    .map_err(ServeError::Cuse)?;
                session.fs().set_cuse(c.clone());
                Some(c)
            }
            false => None,
        };
        let server = Server {
            sys,
            session: Arc::new(session),
            mount: Some(mount),
            dir,
            cuse,
            signals: None,
            restart,
            _state_fd: state_fd,
        };
        tracing::info!(dir = %server.dir.display(), transport = %server.transport(), "mounted");
        server.restart.ready();
        Ok(server)
    }

    /// The mount point (absolute): `dev/`, `sys/` and `debug/` are in it.
    pub fn mount_path(&self) -> &Path {
        &self.dir
    }

    /// The system being served (to add devices, register drivers, ... while
    /// it is served: the tree shows every change at once).
    pub fn system(&self) -> &System {
        &self.sys
    }

    /// Whether the device nodes are also served as real character devices
    /// ([`Options::cuse`](crate::Options::cuse)).
    pub fn cuse(&self) -> bool {
        self.cuse.is_some()
    }

    /// How requests reach the server.
    pub fn transport(&self) -> Transport {
        self.session.transport()
    }

    /// Blocks until the mount is unmounted or aborted from outside and
    /// every file on it is closed.
    pub fn wait(&self) {
        self.session.wait();
    }

    /// Catches SIGINT and SIGTERM from now on, for
    /// [`run_until_signal`](Self::run_until_signal) (which does it itself
    /// if this was not called). Call it before announcing the server to
    /// whoever may signal it: a signal that comes before the handlers are
    /// installed ends the process at once, with no shutdown.
    pub fn catch_signals(&mut self) -> Result<(), ServeError> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        if self.signals.is_none() {
            // SIGHUP, a planned hand-over, only where there is someone to
            // hand over to.
            let hup = self.restart.restartable().then_some(SIGHUP);
            let sigs = [SIGINT, SIGTERM].into_iter().chain(hup);
            self.signals = Some(signal_hook::iterator::Signals::new(sigs).map_err(ServeError::Signals)?);
        }
        Ok(())
    }

    /// Serves until SIGINT or SIGTERM, or until the mount is unmounted from
    /// outside, then [shuts down](Self::shutdown).
    pub fn run_until_signal(mut self) -> Result<Stopped, ServeError> {
        self.catch_signals()?;
        let Some(mut signals) = self.signals.take() else {
            return Err(ServeError::Signals(std::io::Error::other("no signal handlers")));
        };
        let closer = signals.handle();
        let (tx, rx) = mpsc::channel();
        {
            let (s, tx) = (self.session.clone(), tx.clone());
            std::thread::Builder::new()
                .name("devlife-serve-wait".into())
                .spawn(move || {
                    s.wait();
                    let _ = tx.send(Stopped::Unmounted);
                })
                .map_err(ServeError::Signals)?;
        }
        let signal_thread = std::thread::Builder::new()
            .name("devlife-serve-signals".into())
            .spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    let why = match sig {
                        signal_hook::consts::SIGHUP => Stopped::HandedOver,
                        sig => Stopped::Signal(sig),
                    };
                    let _ = tx.send(why);
                }
            })
            .map_err(ServeError::Signals)?;
        let why = rx.recv().unwrap_or(Stopped::Unmounted);
        closer.close();
        let _ = signal_thread.join();
        tracing::info!(%why, "stopping");
        if why == Stopped::HandedOver {
            self.hand_over()?;
            return Ok(why);
        }
        if why == Stopped::Unmounted {
            // Nothing left to unmount.
            if let Some(m) = self.mount.take() {
                std::mem::forget(m);
            }
        }
        self.stop()?;
        Ok(why)
    }

    /// A planned hand-over of a restartable server ([`Options::supervise`],
    /// or systemd's descriptor store) to the next one (an upgrade): this
    /// server stops answering new requests (they are left for the next
    /// server, which the kernel sends them to again), removes every device
    /// with the full removal guarantee (handlers drained, blocked callers
    /// `ENODEV`), and leaves the mount and the kept connection as they
    /// are. No request is lost or answered by a half-removed tree between
    /// the two servers. The process should exit next; its keeper starts
    /// the next server.
    ///
    /// [`Options::supervise`]: crate::Options::supervise
    pub fn hand_over(mut self) -> Result<(), ServeError> {
        if !self.restart.restartable() {
            return Err(ServeError::Restart(std::io::Error::other(
                "this server's connection is not kept: there is no next server to hand it to",
            )));
        }
        self.session.hand_over();
        if let Some(c) = &self.cuse {
            c.hand_over();
        }
        remove_all(&self.sys);
        if let Some(c) = self.cuse.take() {
            c.leave();
        }
        // Left mounted, and in the store, for the next server.
        if let Some(m) = self.mount.take() {
            std::mem::forget(m);
        }
        Ok(())
    }

    /// Removes every device (each removal waits for the handlers inside it
    /// and releases its open files), then unmounts.
    pub fn shutdown(mut self) -> Result<(), ServeError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), ServeError> {
        remove_all(&self.sys);
        if let Some(c) = self.cuse.take() {
            c.stop();
        }
        let r = match self.mount.take() {
            Some(m) => m.unmount().map_err(|source| ServeError::Unmount { dir: self.dir.clone(), source }),
            None => Ok(()),
        };
        // Stopped on purpose: the next server mounts anew.
        self.restart.forget();
        r
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A restartable server that panics has crashed: the next one
        // resumes its mount (a stop here would unmount it).
        if std::thread::panicking() && self.restart.restartable() {
            if let Some(m) = self.mount.take() {
                std::mem::forget(m);
            }
            // And its CUSE devices.
            if let Some(c) = self.cuse.take() {
                c.hand_over();
                c.leave();
            }
            return;
        }
        if self.mount.is_some() {
            if let Err(e) = self.stop() {
                tracing::warn!("{e}");
            }
        }
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("dir", &self.dir).field("transport", &self.transport()).finish()
    }
}

/// Resumes `kept` (see `restart`): the session, the mount it adopts, and
/// the state's file, rewritten with this server's generation.
fn resume(
    sys: &System,
    opts: &Options,
    kept: Kept,
    config: Config,
) -> Result<(Session<ServeFs>, Mount, OwnedFd), std::io::Error> {
    let Kept { fd: fuse, state_fd, state } = kept;
    if state.negotiated.ring {
        return Err(std::io::Error::other("it was served over io_uring, which a restart cannot take over"));
    }
    if state.generation == LAST_GENERATION {
        return Err(std::io::Error::other("its handle generations are used up"));
    }
    // Written first: a server that dies from here on has handed out
    // numbers in this generation, and the next one must not.
    let generation = state.generation + 1;
    State { generation, ..state }.write(&state_fd)?;
    let fs = ServeFs::in_generation(sys.clone(), opts.owner.0, opts.owner.1, generation);
    let stats = fs.transport_stats();
    let mount_fd = rustix::io::dup(&fuse)?;
    let dir = config.mount_dir.clone().unwrap_or_default();
    let session = Session::resume(fuse, fs, config, state.negotiated, stats)?;
    // Pollers the earlier server left sleeping poll again (see
    // `PollHandles`) and see a removed device.
    for kh in 1..=state.max_kh {
        session.notifier().poll_wakeup(kh);
    }
    // Names the kernel cached from the earlier server lead to its inodes:
    // forgotten, so that opens look the tree up again.
    for name in crate::tree::ROOT_NAMES {
        session.notifier().inval_entry(crate::inodes::ROOT, name.as_bytes());
    }
    session.notifier().flush();
    Ok((session, Mount::adopt(&dir, mount_fd)?, state_fd))
}

/// The transport to ask for: a restartable server's is `/dev/fuse` (see
/// `docs/ARCHITECTURE.md`, "Restarts": ring entries of a killed server
/// hold requests no later server can answer).
fn transport_choice(asked: IoUring, restartable: bool) -> Result<IoUring, ServeError> {
    match (asked, restartable) {
        (asked, false) => Ok(asked),
        (IoUring::On, true) => Err(ServeError::IoUring(
            "a restartable server serves through /dev/fuse (a killed server's ring entries hold requests no later server can answer)".into(),
        )),
        (IoUring::Auto, true) => {
            tracing::info!("restartable: serving through /dev/fuse");
            Ok(IoUring::Off)
        }
        (IoUring::Off, true) => Ok(IoUring::Off),
    }
}

/// Creates `dir` and clears a stale mount there.
fn prepare_dir(dir: &Path) -> Result<(), ServeError> {
    // `create_dir_all` on an existing file says only "File exists".
    if std::fs::metadata(dir).is_ok_and(|m| !m.is_dir()) {
        return Err(ServeError::NotADirectory { dir: dir.to_owned() });
    }
    std::fs::create_dir_all(dir).or_else(|source| {
        // A stale mount makes the directory itself fail with ENOTCONN.
        if mount::state(dir) == MountState::Stale {
            Ok(())
        } else {
            Err(ServeError::MountDir { dir: dir.to_owned(), source })
        }
    })?;
    match mount::state(dir) {
        MountState::Stale => {
            tracing::warn!(dir = %dir.display(), "clearing a stale mount (its server is gone)");
            mount::clear_stale(dir)
                .map(drop)
                .map_err(|source| ServeError::ClearStale { dir: dir.to_owned(), source })
        }
        MountState::Live => Err(ServeError::AlreadyMounted { dir: dir.to_owned() }),
        MountState::Free => Ok(()),
    }
}

/// Turns on the kernel's FUSE over io_uring (it only lets servers that ask
/// for it use it), unless it is on already.
fn enable_uring() -> Result<(), String> {
    let on = std::fs::read_to_string(ENABLE_URING).map_err(|e| format!("{ENABLE_URING}: {e}"))?;
    if on.trim() == "Y" {
        return Ok(());
    }
    std::fs::write(ENABLE_URING, "1").map_err(|e| format!("cannot enable it ({ENABLE_URING}): {e}"))
}

/// Removes every device of every bus, with the full removal guarantee.
fn remove_all(sys: &System) {
    for bus in sys.buses() {
        for d in bus.devices() {
            if let Err(e) = bus.delete_device(d.name()) {
                tracing::warn!(device = d.name(), "removing at shutdown: {e}");
            }
        }
    }
}
