//! [`Options`]: where and how to serve.

use std::path::{Path, PathBuf};

/// How requests reach the server: FUSE over io_uring or `/dev/fuse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoUring {
    /// FUSE over io_uring when the kernel offers it
    /// (`/sys/module/fuse/parameters/enable_uring` is `Y`), else
    /// `/dev/fuse`.
    #[default]
    Auto,
    /// Turn the kernel's switch on first (root), and fail to start if
    /// FUSE over io_uring cannot be used.
    On,
    /// `/dev/fuse` only.
    Off,
}

/// The environment variable that sets the default transport.
pub const IO_URING_ENV: &str = "DEVLIFE_IO_URING";

/// The environment variable that sets [`Options::cuse`]'s default: `1`
/// serves any program's nodes as real character devices too, unchanged.
pub const CUSE_ENV: &str = "DEVLIFE_CUSE";

fn cuse_from_env() -> bool {
    match std::env::var(CUSE_ENV).as_deref() {
        Err(_) | Ok("0") | Ok("") => false,
        Ok("1") => true,
        Ok(other) => {
            eprintln!("devlife-serve: {CUSE_ENV}={other:?} is not 0 or 1; using 0");
            false
        }
    }
}

impl IoUring {
    /// [`IO_URING_ENV`]'s choice, or [`Auto`](Self::Auto) when it is unset
    /// (or not `on`, `off` or `auto`, which is reported on stderr).
    fn from_env() -> Self {
        match std::env::var(IO_URING_ENV).as_deref() {
            Err(_) | Ok("auto") => IoUring::Auto,
            Ok("on") => IoUring::On,
            Ok("off") => IoUring::Off,
            Ok(other) => {
                eprintln!("devlife-serve: {IO_URING_ENV}={other:?} is not on, off or auto; using auto");
                IoUring::Auto
            }
        }
    }
}

/// Where and how [`Server::start`](crate::Server::start) serves.
///
/// Every setting has a default: `Options::new()` mounts at
/// [`default_mount_dir`], for the serving user only, over io_uring when
/// the kernel offers it. The transport's default can be changed without
/// touching the program: `DEVLIFE_IO_URING=on|off|auto` in the
/// environment (as `RUST_LOG` changes the logging).
///
/// # Examples
///
/// ```
/// use devlife_serve::{IoUring, Options};
/// let o = Options::new().mount_dir("/tmp/leds").allow_other(true).io_uring(IoUring::Off);
/// assert_eq!(o.dir(), std::path::Path::new("/tmp/leds"));
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    pub(crate) dir: PathBuf,
    pub(crate) allow_other: bool,
    pub(crate) io_uring: IoUring,
    pub(crate) owner: (u32, u32),
    pub(crate) cuse: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dir: default_mount_dir(),
            allow_other: false,
            io_uring: IoUring::from_env(),
            owner: (rustix::process::getuid().as_raw(), rustix::process::getgid().as_raw()),
            cuse: cuse_from_env(),
        }
    }
}

impl Options {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Mounts at `dir` (created if missing; a stale mount left there by a
    /// killed server is cleared).
    pub fn mount_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = dir.into();
        self
    }

    /// Lets other users reach the mount (`allow_other`; non-root servers
    /// need `user_allow_other` in `/etc/fuse.conf`). The modes and owners
    /// the drivers give their nodes then decide who may open what.
    pub fn allow_other(mut self, yes: bool) -> Self {
        self.allow_other = yes;
        self
    }

    /// Chooses the transport.
    pub fn io_uring(mut self, choice: IoUring) -> Self {
        self.io_uring = choice;
        self
    }

    /// Owner of the tree's directories and of files whose driver sets none
    /// (default: the serving process's user and group).
    pub fn owner(mut self, uid: u32, gid: u32) -> Self {
        self.owner = (uid, gid);
        self
    }

    /// Also serves every device node as a real character device,
    /// `/dev/<name>`, over CUSE (root; the kernel needs `cuse`): one CUSE
    /// channel per node, made when the node appears and closed once its
    /// removal completes, with the mode and owner its driver set;
    /// `sys/class/<class>/<node>/dev` then shows the real device's number.
    /// `dev/` in the mount stays too. What clients see at removal differs
    /// from the FUSE tree where the kernel decides (`docs/ARCHITECTURE.md`,
    /// "Real character devices"). CUSE device names are the kernel's, one
    /// each: a node whose name another CUSE server holds stays in `dev/`
    /// only (logged). Default: [`CUSE_ENV`] (`DEVLIFE_CUSE=1`), else off.
    pub fn cuse(mut self, yes: bool) -> Self {
        self.cuse = yes;
        self
    }

    /// The mount directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// `$XDG_RUNTIME_DIR/devlife` if set, else `/tmp/devlife-<uid>`.
pub fn default_mount_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("devlife"),
        _ => PathBuf::from(format!("/tmp/devlife-{}", rustix::process::getuid().as_raw())),
    }
}
