//! CUSE: one character device served through a `/dev/cuse` channel.
//!
//! Opening `/dev/cuse` makes the kernel send `CUSE_INIT`; the reply names
//! the device (`DEVNAME=`) and, optionally, its number, and the kernel
//! registers a real character device of class `cuse` before the reply's
//! `write` returns (devtmpfs then makes `/dev/<name>` by itself). From then
//! on the channel carries the requests of that device's open files, as a
//! FUSE connection does: OPEN (node id 0), READ and WRITE (always at
//! offset 0: the kernel keeps no file position, its `llseek` is
//! `noop_llseek`), IOCTL (unrestricted: [`IoctlArgs`](crate::IoctlArgs)),
//! POLL, RELEASE and INTERRUPT. The kernel sends no FLUSH and no FSYNC to
//! a CUSE device (`cuse_frontend_fops` has neither), no LOOKUP, GETATTR or
//! FORGET (the node is devtmpfs's), and it offers no FUSE over io_uring:
//! `cuse_process_init_reply` never negotiates it, so the channel is served
//! by the `/dev/fuse` worker pool (one shared descriptor: a CUSE channel
//! cannot be cloned).
//!
//! The device exists until the channel's last descriptor is closed
//! (`cuse_channel_release`: device and number unregistered, then the
//! connection aborted). Its open files then fail `ENOTCONN`, and a call
//! blocked in the server at that moment `ECONNABORTED`; the kernel sends
//! no RELEASE for them. [`CuseDevice::close`] ends a channel from the
//! server's side: it aborts the connection (`/sys/class/cuse/<name>/abort`),
//! waits for the workers, and swaps the descriptor for `/dev/null`, so
//! that no clone of the channel kept elsewhere (a [`Notifier`]) keeps the
//! device, and its name, registered.

use crate::abi::{self, cuse};
use crate::decode::{Operation, decode};
use crate::dev;
use crate::fs::Filesystem;
use crate::notify::Notifier;
use crate::reply::{err, send};
use crate::session::{Config, Negotiated, Session, Shared, Transport, TransportStats};
use rustix::event::{PollFd, PollFlags};
use rustix::fd::{AsFd, OwnedFd};
use rustix::io::Errno;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use zerocopy::IntoBytes;

/// The CUSE channel device.
pub const CUSE_DEV: &str = "/dev/cuse";

/// Where the kernel shows CUSE devices (`cuse_class`).
const CLASS: &str = "/sys/class/cuse";

/// Workers started with a channel: one to take requests and one idle, so
/// a first blocking handler does not wait for a thread start.
const INITIAL_WORKERS: usize = 2;

/// A character device served over CUSE.
///
/// It exists, as `/dev/<name>` with class `cuse`, from
/// [`open`](Self::open) until [`close`](Self::close) or drop.
pub struct CuseDevice<F: Filesystem> {
    session: Session<F>,
    name: String,
    devt: (u32, u32),
    closed: bool,
}

/// Why a device name cannot be sent in `CUSE_INIT`: empty, longer than
/// the device-info page allows, or holding `/`, NUL or white space (the
/// kernel's name becomes a sysfs directory and the devtmpfs path).
fn check_name(name: &str) -> io::Result<()> {
    let bad = name.is_empty()
        || name.len() + "DEVNAME=".len() + 1 > cuse::INIT_INFO_MAX
        || name == "."
        || name == ".."
        || name.bytes().any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace() || b == b'=');
    if bad {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad CUSE device name {name:?}")));
    }
    Ok(())
}

impl<F: Filesystem> CuseDevice<F> {
    /// Opens a channel and registers the device `name` with number `devt`
    /// (`None`: a dynamic major, as `alloc_chrdev_region` gives), served by
    /// `fs`. Returns once the device is registered and requests are served.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a bad name; `AlreadyExists` when a CUSE device
    /// of that name exists (the kernel allows one per name); `NotFound`
    /// when the kernel has no CUSE (`/dev/cuse` missing: load `cuse`);
    /// the kernel's refusal otherwise (a number taken, no permission).
    pub fn open(name: &str, devt: Option<(u32, u32)>, fs: F, config: Config) -> io::Result<Self> {
        Self::open_kept(name, devt, fs, config, |_| Ok(()))
    }

    /// [`open`](Self::open), giving `keep` the channel's descriptor before
    /// the device is registered, to keep a descriptor of it elsewhere
    /// (see [`resume`](Self::resume)): a process that dies once the device
    /// exists then never takes it with it. What `CUSE_INIT` will settle is
    /// [`negotiated_by`] `config`.
    pub fn open_kept(
        name: &str,
        devt: Option<(u32, u32)>,
        fs: F,
        config: Config,
        keep: impl FnOnce(&OwnedFd) -> io::Result<()>,
    ) -> io::Result<Self> {
        check_name(name)?;
        if class_dir(name).exists() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("CUSE device {name} exists")));
        }
        let fd = rustix::fs::open(
            CUSE_DEV,
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("{CUSE_DEV}: {e}")))?;
        keep(&fd)?;
        let negotiated = handshake(&fd, name, devt, &config)?;
        // The kernel checks the reply before our write returns
        // (`cuse_process_init_reply`); a refusal (a name or number taken)
        // aborts the connection.
        if aborted(&fd) {
            return Err(io::Error::other(format!(
                "the kernel refused CUSE device {name} (its name or number is taken; see dmesg)"
            )));
        }
        Self::serve(name, fd, fs, config, negotiated)
    }

    /// Serves again the channel of device `name`, kept open by someone
    /// while the server that opened it died (see `devlife-serve`'s
    /// restarts): the device, its name and its number are the ones the
    /// kernel registered then (a channel's device lives as long as one of
    /// its descriptors). `negotiated` is what its `CUSE_INIT` settled
    /// ([`negotiated`](Self::negotiated)). The kernel is first asked to
    /// send again every request the dead server had read and not answered
    /// (`FUSE_NOTIFY_RESEND`), so that `fs` answers them.
    ///
    /// # Errors
    ///
    /// `NotFound` when no CUSE device `name` is registered (the channel
    /// is not that device's); `NotConnected` when the channel was aborted.
    pub fn resume(
        name: &str,
        fd: OwnedFd,
        fs: F,
        config: Config,
        negotiated: Negotiated,
    ) -> io::Result<Self> {
        check_name(name)?;
        if !class_dir(name).exists() || aborted(&fd) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("the kept channel of CUSE device {name} is no longer its device's"),
            ));
        }
        match send(&fd, 0, abi::notify::RESEND, &[]) {
            Ok(()) => {}
            Err(Errno::NODEV | Errno::NOTCONN | Errno::CONNABORTED) => return Err(Errno::NOTCONN.into()),
            // EINVAL: a kernel before 6.9; see `Session::resume`.
            Err(e) => {
                tracing::warn!(device = name, "the kernel cannot resend the earlier server's requests ({e})")
            }
        }
        Self::serve(name, fd, fs, config, negotiated)
    }

    fn serve(name: &str, fd: OwnedFd, fs: F, config: Config, negotiated: Negotiated) -> io::Result<Self> {
        let devt = read_devt(name)?;
        let shared =
            Shared::new(fs, Arc::new(fd), config, negotiated, Arc::new(TransportStats::default()), true);
        for _ in 0..INITIAL_WORKERS {
            dev::spawn_worker(&shared);
        }
        let _ = shared.stats.transport.set(Transport::DevFuse);
        let session = Session { shared, transport: Transport::DevFuse };
        Ok(CuseDevice { session, name: name.to_owned(), devt, closed: false })
    }

    /// A new descriptor of the channel, to keep it (and so the device,
    /// its name and number) beyond this process: see
    /// [`resume`](Self::resume).
    pub fn channel(&self) -> io::Result<OwnedFd> {
        Ok(rustix::io::fcntl_dupfd_cloexec(&*self.session.shared.master, 0)?)
    }

    /// What the channel's `CUSE_INIT` settled (for [`resume`](Self::resume)).
    pub fn negotiated(&self) -> Negotiated {
        self.session.negotiated()
    }

    /// Stops answering new requests: each one read from now on is left in
    /// the channel's processing queue, for the next server to have sent
    /// again ([`resume`](Self::resume)); requests already taken are still
    /// answered. A planned hand-over: see [`Session::hand_over`].
    pub fn hand_over(&self) {
        self.session.hand_over();
    }

    /// Ends serving without closing anything: the channel stays open in
    /// whoever keeps it ([`channel`](Self::channel)), and so does the
    /// device. For a process about to exit after [`hand_over`](Self::hand_over).
    pub fn leave(mut self) {
        self.closed = true;
    }

    /// The device's name (`/dev/<name>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device number the kernel registered: `(major, minor)`.
    pub fn devt(&self) -> (u32, u32) {
        self.devt
    }

    /// The file system serving it.
    pub fn fs(&self) -> &F {
        self.session.fs()
    }

    /// The notifier (poll wake-ups).
    pub fn notifier(&self) -> &Notifier {
        self.session.notifier()
    }

    /// Removes the device: waits (at most 5 s) until every deferred request
    /// of the channel is answered, then (at most 1 s) until no request has
    /// been queued or handled for 50 ms (after 0.5 s: for a moment),
    /// aborts the channel (a call that enters it in between fails
    /// `ECONNABORTED`, later calls on its open files `ENOTCONN`), waits
    /// for every worker to leave, and closes the channel, which
    /// unregisters the device and frees its name. Returns
    /// once the kernel has unregistered it (at most 5 s after the close,
    /// for another holder of the channel to close it: see
    /// [`channel`](Self::channel); devtmpfs removes `/dev/<name>` right
    /// after); if the abort cannot be written (no sysfs, no permission) it
    /// logs that and leaves the device until the process exits.
    pub fn close(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        /// How long a close waits for the channel's deferred requests.
        const DEFERRED_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
        /// How long it waits for the channel to have no request queued.
        const QUIET_GRACE: std::time::Duration = std::time::Duration::from_secs(1);
        /// How long it waits for the kernel to unregister the device once
        /// the channel is closed here (a keeper's descriptor is closed by
        /// the keeper: `devlife-serve`'s restarts).
        const UNREGISTER_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
        if std::mem::replace(&mut self.closed, true) {
            return;
        }
        let s = &self.session.shared;
        // Deferred requests are answered first: the abort would end them
        // `ECONNABORTED`. After a removal every one of them has its answer
        // on the way (the core sends them right after the removal returns).
        let left = s.inflight.deferred.wait_empty(DEFERRED_GRACE);
        if left != 0 {
            tracing::warn!(device = %self.name, left, "closing the CUSE channel with deferred requests unanswered");
        }
        // The abort ends every request still queued or being handled with
        // `ECONNABORTED` (`fuse_abort_conn` -> `end_requests`): those the
        // kernel has queued are read and answered first.
        if !self.quiesce(QUIET_GRACE) {
            tracing::warn!(device = %self.name, "closing the CUSE channel while its callers still send requests");
        }
        if !s.is_ended() {
            if let Err(e) = std::fs::write(class_dir(&self.name).join("abort"), "1") {
                // Workers asleep in read(2) on the channel would never
                // return, and swapping the descriptor under them would
                // lose the replies of requests they take: leave it.
                tracing::error!(
                    device = %self.name,
                    "cannot abort the CUSE channel ({e}): the device stays until the process exits"
                );
                return;
            }
        }
        self.session.wait();
        // Every worker is gone; what still holds the descriptor (the
        // notifier thread, notifiers kept by pollers) now holds /dev/null,
        // and the channel's file is released here.
        match rustix::fs::open(
            "/dev/null",
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ) {
            Ok(null) => {
                let mut target = clone_owned(&s.master);
                if let Err(e) = rustix::io::dup2(&null, &mut target) {
                    tracing::warn!(device = %self.name, "closing the CUSE channel: {e}");
                }
                // `target` is the channel's own number: not ours to close.
                std::mem::forget(target);
            }
            Err(e) => tracing::warn!(device = %self.name, "closing the CUSE channel: /dev/null: {e}"),
        }
        if !poll_until(UNREGISTER_GRACE, || !class_dir(&self.name).exists()) {
            tracing::warn!(device = %self.name, "the channel is closed but the device is still registered (another descriptor of it is open)");
        }
    }

    /// Waits (at most `grace`) until no request has been queued for the
    /// channel or handled for `QUIET_SPAN` (after half of `grace`: until
    /// none is, for a moment); returns whether that came.
    fn quiesce(&self, grace: std::time::Duration) -> bool {
        /// How long the channel must stay quiet, looked at every 200 us,
        /// before the abort. A caller whose open found the device node
        /// before it was unlinked, and was then held up (preempted) on its
        /// way to the channel for longer than this, still meets the abort:
        /// two looks a yield apart let 3 opens in 146,000 through to
        /// `ECONNABORTED` in an emulated VM with both host CPUs busy
        /// (the CUSE hot-unplug test); 50 ms covers several scheduler
        /// ticks of such delay. A channel that callers keep busy (calls on
        /// descriptors still open) may never be quiet that long: after
        /// half the grace, one quiet moment (two looks, a yield apart)
        /// will do, the window left as narrow as it can be made.
        const QUIET_SPAN: std::time::Duration = std::time::Duration::from_millis(50);
        let s = &self.session.shared;
        let quiet = || s.is_ended() || (!pending(&s.master) && s.dev.all_idle());
        let start = std::time::Instant::now();
        let mut since: Option<std::time::Instant> = None;
        poll_until(grace, || {
            if !quiet() {
                since = None;
                return false;
            }
            let span = since.get_or_insert_with(std::time::Instant::now).elapsed();
            span >= QUIET_SPAN
                || s.is_ended()
                || (start.elapsed() >= grace / 2 && {
                    std::thread::yield_now();
                    quiet()
                })
        })
    }
}

/// Looks at `done` every 200 us until it holds or `within` has passed;
/// returns whether it held. For states the kernel sends no event for (an
/// empty queue, an unregistered device).
fn poll_until(within: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    loop {
        if done() {
            return true;
        }
        if start.elapsed() >= within {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

/// Whether the kernel has requests queued for the channel, unread
/// (`fuse_dev_poll`: `POLLIN` while `request_pending`).
fn pending(fd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    let zero = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
    matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
        && fds[0].revents().contains(PollFlags::IN)
}

impl<F: Filesystem> Drop for CuseDevice<F> {
    fn drop(&mut self) {
        self.shut();
    }
}

/// What a channel opened with `config` settles at `CUSE_INIT`: the
/// server's limits, whatever the kernel offers (it takes them as given).
pub fn negotiated_by(config: &Config) -> Negotiated {
    Negotiated { max_write: config.max_write, max_pages: (config.max_write / 4096) as u16, ring: false }
}

/// An `OwnedFd` with the same number as `fd`, for `dup2`'s target (never
/// dropped: the caller forgets it).
fn clone_owned(fd: &OwnedFd) -> OwnedFd {
    use rustix::fd::{AsRawFd, FromRawFd};
    // SAFETY: the number belongs to `fd`, which outlives this call; the
    // caller `mem::forget`s the returned value, so it is never closed
    // twice, and `dup2` only replaces what the number refers to.
    unsafe { OwnedFd::from_raw_fd(fd.as_raw_fd()) }
}

fn class_dir(name: &str) -> PathBuf {
    PathBuf::from(CLASS).join(name)
}

/// Whether the kernel aborted the channel (`fuse_dev_poll` reports
/// `POLLERR` once the connection is down; a live one with no request
/// pending reports nothing).
fn aborted(fd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    let zero = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
    matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
        && fds[0].revents().contains(PollFlags::ERR)
}

/// The registered number, from `/sys/class/cuse/<name>/dev`: `device_add`
/// made it while our reply's write ran (`cuse_process_init_reply`).
fn read_devt(name: &str) -> io::Result<(u32, u32)> {
    let path = class_dir(name).join("dev");
    let bad = |what: String| io::Error::other(format!("{}: {what}", path.display()));
    let s = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
    let (ma, mi) = s.trim().split_once(':').ok_or_else(|| bad(format!("{s:?}")))?;
    let p = |v: &str| v.parse::<u32>().map_err(|e| bad(e.to_string()));
    Ok((p(ma)?, p(mi)?))
}

/// Answers `CUSE_INIT`: the protocol version, limits, unrestricted
/// ioctls, and the device's name and number.
fn handshake(fd: &OwnedFd, name: &str, devt: Option<(u32, u32)>, config: &Config) -> io::Result<Negotiated> {
    let mut buf = vec![0u8; config.max_write as usize + 4096];
    loop {
        let n = match rustix::io::read(fd.as_fd(), &mut buf) {
            Ok(n) => n,
            Err(Errno::INTR | Errno::AGAIN) => continue,
            Err(e) => return Err(e.into()),
        };
        let req = decode(&buf[..n]).map_err(|e| io::Error::other(format!("bad first CUSE request: {e}")))?;
        let Operation::CuseInit(i) = req.op else {
            err(fd, req.header.unique, Errno::IO);
            continue;
        };
        // `cuse_process_init_reply` wants the kernel's major and minor >= 11.
        if i.major != abi::KERNEL_VERSION || i.minor < 11 {
            err(fd, req.header.unique, Errno::PROTO);
            return Err(io::Error::other(format!("kernel CUSE {}.{} is not supported", i.major, i.minor)));
        }
        let (dev_major, dev_minor) = devt.unwrap_or((0, 0));
        let out = abi::CuseInitOut {
            major: abi::KERNEL_VERSION,
            minor: i.minor.min(abi::KERNEL_MINOR_VERSION),
            flags: i.flags & cuse::UNRESTRICTED_IOCTL,
            max_read: config.max_write,
            max_write: config.max_write,
            dev_major,
            dev_minor,
            ..Default::default()
        };
        let info = format!("DEVNAME={name}\0");
        send(fd, req.header.unique, 0, &[out.as_bytes(), info.as_bytes()])
            .map_err(|e| io::Error::other(format!("CUSE_INIT reply: {e}")))?;
        return Ok(negotiated_by(config));
    }
}
