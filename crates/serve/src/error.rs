//! [`ServeError`]: why serving could not start or stop cleanly.

use std::io;
use std::path::PathBuf;

/// Why [`Server::start`](crate::Server::start) or a shutdown failed. Each
/// says what it was doing and where; a failed start leaves nothing mounted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The mount directory could not be created.
    #[error("cannot create {}: {source}", dir.display())]
    MountDir {
        /// The directory.
        dir: PathBuf,
        /// What `mkdir` said.
        source: io::Error,
    },
    /// The mount path exists and is not a directory.
    #[error("{} is not a directory", dir.display())]
    NotADirectory {
        /// The path.
        dir: PathBuf,
    },
    /// [`Options::fsname`](crate::Options::fsname) cannot name a mount.
    #[error("{name:?} cannot name the mount: {reason}")]
    FsName {
        /// The name asked for.
        name: String,
        /// Why not.
        reason: &'static str,
    },
    /// A server that still answers has the directory mounted.
    #[error("{} is already mounted by a live server", dir.display())]
    AlreadyMounted {
        /// The directory.
        dir: PathBuf,
    },
    /// A mount left by a killed server could not be detached.
    #[error("cannot clear the stale mount at {}: {source}", dir.display())]
    ClearStale {
        /// The directory.
        dir: PathBuf,
        /// What the unmount said.
        source: io::Error,
    },
    /// `mount(2)` (or `fusermount3`) failed.
    #[error("cannot mount {}: {source}", dir.display())]
    Mount {
        /// The directory.
        dir: PathBuf,
        /// What the mount said.
        source: io::Error,
    },
    /// The kernel's FUSE `INIT` failed.
    #[error("FUSE handshake failed: {0}")]
    Handshake(io::Error),
    /// [`IoUring::On`](crate::IoUring::On) was asked for and FUSE over
    /// io_uring could not be used.
    #[error("FUSE over io_uring: {0}")]
    IoUring(String),
    /// The device nodes cannot be served as CUSE devices.
    #[error("CUSE: {0}")]
    Cuse(io::Error),
    /// The connection could not be handed to its keeper
    /// ([`Options::supervise`](crate::Options::supervise), or systemd's
    /// descriptor store), or the keeper's protocol failed.
    #[error("cannot keep the connection for a restart: {0}")]
    Restart(io::Error),
    /// SIGINT/SIGTERM handlers could not be installed.
    #[error("cannot handle signals: {0}")]
    Signals(io::Error),
    /// Unmounting at shutdown failed (every device was removed).
    #[error("unmount {}: {source}", dir.display())]
    Unmount {
        /// The directory.
        dir: PathBuf,
        /// What the unmount said.
        source: io::Error,
    },
}
