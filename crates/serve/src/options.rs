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
        match std::env::var(IO_URING_ENV) {
            Err(_) => IoUring::Auto,
            Ok(v) => v.parse().unwrap_or_else(|e| {
                eprintln!("devlife-serve: {IO_URING_ENV}: {e}; using auto");
                IoUring::Auto
            }),
        }
    }
}

/// Parses `on`, `off` or `auto` (what [`IO_URING_ENV`] takes), for a
/// program with a switch of its own.
///
/// # Examples
///
/// ```
/// use devlife_serve::IoUring;
/// assert_eq!("off".parse::<IoUring>(), Ok(IoUring::Off));
/// assert_eq!("ring".parse::<IoUring>().unwrap_err().to_string(), "\"ring\" is not on, off or auto");
/// ```
impl std::str::FromStr for IoUring {
    type Err = ParseIoUringError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(IoUring::Auto),
            "on" => Ok(IoUring::On),
            "off" => Ok(IoUring::Off),
            other => Err(ParseIoUringError(other.to_owned())),
        }
    }
}

impl std::fmt::Display for IoUring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IoUring::Auto => "auto",
            IoUring::On => "on",
            IoUring::Off => "off",
        })
    }
}

/// A transport choice that is not `on`, `off` or `auto`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not on, off or auto")]
pub struct ParseIoUringError(String);

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
    pub(crate) fsname: String,
    pub(crate) supervise: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dir: default_mount_dir(),
            allow_other: false,
            io_uring: IoUring::from_env(),
            owner: (rustix::process::getuid().as_raw(), rustix::process::getgid().as_raw()),
            cuse: cuse_from_env(),
            fsname: DEFAULT_FSNAME.to_owned(),
            supervise: false,
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

    /// Names the mount: `/proc/mounts` (and `df`, `findmnt`) show
    /// `<name> <dir> fuse.<name>`, so the mount says which program serves
    /// it. Default `devlife`. Letters, digits and `._+-` only, at most 64
    /// (the name is a mount option, and a field of `/proc/mounts`); another
    /// name fails [`Server::start`](crate::Server::start) with
    /// [`ServeError::FsName`](crate::ServeError::FsName).
    pub fn fsname(mut self, name: impl Into<String>) -> Self {
        self.fsname = name.into();
        self
    }

    /// Keeps the mount (and the CUSE devices) through the server's own
    /// death: [`Server::start`](crate::Server::start) makes this process
    /// a small keeper that starts the program again as the server, holds
    /// its connections, and restarts it when it is killed or crashes (see
    /// [`supervise`](crate::supervise)). The new server resumes the same
    /// mount; every file opened from the dead one answers as a file of a
    /// removed device (`ENODEV`), and new opens reach the new server's
    /// drivers. Under systemd with a descriptor store
    /// (`FileDescriptorStoreMax=`), the server keeps its connections there
    /// instead and needs no keeper. A restartable server serves through
    /// `/dev/fuse` (`docs/ARCHITECTURE.md`, "Restarts"). Default off.
    pub fn supervise(mut self, yes: bool) -> Self {
        self.supervise = yes;
        self
    }

    /// The mount directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The mount's name when [`Options::fsname`] is not called.
pub const DEFAULT_FSNAME: &str = "devlife";

/// Why `name` cannot name a mount ([`Options::fsname`]), if it cannot.
pub(crate) fn fsname_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 64 {
        Some("it is longer than 64 bytes")
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b)) {
        Some("only letters, digits and ._+- may name a mount")
    } else {
        None
    }
}

/// `$XDG_RUNTIME_DIR/devlife` if set, else `/tmp/devlife-<uid>`.
pub fn default_mount_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("devlife"),
        _ => PathBuf::from(format!("/tmp/devlife-{}", rustix::process::getuid().as_raw())),
    }
}
