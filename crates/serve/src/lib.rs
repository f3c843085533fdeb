//! Serve a [`devlife_core::System`] to unmodified processes over FUSE:
//! its device nodes under `dev/`, buses, drivers, devices, attributes and
//! classes under `sys/`, debugfs under `debug/`, with the core's removal
//! guarantee reaching real system calls (`cat`, `echo xyz0 > unbind`,
//! `ioctl`, `poll`; Ctrl-C on a blocked read).
//!
//! # Examples
//!
//! A program that serves its own driver (the `led` crate of the
//! repository's `examples/led`, a simulated LED controller):
//!
//! ```no_run
//! # mod led {
//! #     pub const BUS: &str = "platform";
//! #     pub fn register(sys: &devlife_core::System) -> devlife_core::Result<()> {
//! #         sys.bus_register(BUS).map(drop)
//! #     }
//! # }
//! use devlife_core::System;
//! use devlife_serve::{Options, Report, Server};
//!
//! fn main() -> Result<(), Report> {
//!     devlife_serve::init_logging(None);
//!     let sys = System::new();
//!     led::register(&sys)?;
//!     let bus = sys.bus(led::BUS).ok_or("no bus")?;
//!     bus.add_device("led0", "led")?;
//!     let mut opts = Options::new().fsname("led-serve");
//!     if let Some(dir) = std::env::args_os().nth(1) {
//!         opts = opts.mount_dir(dir);
//!     }
//!     let mut server = Server::start(sys, &opts)?;
//!     server.catch_signals()?; // before anyone is told to signal us
//!     println!("ready {}", server.mount_path().display());
//!     let why = server.run_until_signal()?;
//!     eprintln!("stopped: {why}");
//!     Ok(())
//! }
//! ```
//!
//! # What is served
//!
//! ```text
//! dev/<node>                              device nodes
//! sys/bus/<bus>/devices/<dev>/            uevent, driver (symlink when bound), attributes
//! sys/bus/<bus>/drivers/<drv>/            bind, unbind (write a device name), <dev> links
//! sys/bus/<bus>/new_device, delete_device hot-plug control ("TYPE NAME", "NAME")
//! sys/class/<class>/<node>/{dev,uevent}   "MAJOR:MINOR", MAJOR=, MINOR=, DEVNAME=
//! debug/...                               debugfs
//! ```
//!
//! Paths are resolved against the core on every request, so the tree is
//! never out of date, and a handle on a removed object never reaches
//! another made later under the same name (`ENOENT`). What each VFS
//! operation answers on each kind of entry is the table in
//! `docs/ARCHITECTURE.md`, checked by the repository's `vfs_table` test.
//!
//! # Transport
//!
//! [`devlife_fuse`]: FUSE over io_uring when the kernel offers it, else
//! `/dev/fuse` ([`IoUring`]); no worker cap, so requests blocked in
//! handlers never hold up others, the removal among them.

mod control;
mod cuse;
mod error;
mod file;
mod fs;
mod handles;
mod inodes;
#[cfg(feature = "log")]
mod logging;
mod options;
mod report;
mod restart;
mod server;
mod tree;

pub use devlife_fuse::Transport;
pub use error::ServeError;
#[cfg(feature = "log")]
pub use logging::init_logging;
pub use options::{
    CUSE_ENV, DEFAULT_FSNAME, IO_URING_ENV, IoUring, Options, ParseIoUringError, default_mount_dir,
};
pub use report::Report;
pub use server::{Server, Stopped};

/// Becomes the keeper of this program when `opts` asks for one
/// ([`Options::supervise`]) and no keeper or service manager holds its
/// connection yet: the program is started again as the server (same
/// executable, same arguments) and restarted whenever it dies, and this
/// process keeps its connection meanwhile (see `docs/ARCHITECTURE.md`,
/// "Restarts"). Does not return then: the process exits with the last
/// server's status. Otherwise (no keeper asked for, or this process is the
/// server a keeper or systemd started) returns at once.
///
/// [`Server::start`] calls it first thing; call it yourself before
/// building the [`System`](devlife_core::System) to keep the drivers out
/// of the keeper.
pub fn supervise(opts: &Options) -> Result<(), ServeError> {
    if !opts.supervise {
        return Ok(());
    }
    if restart::sd::FdStore::from_env().map_err(ServeError::Restart)?.is_some() {
        return Ok(());
    }
    restart::keeper::run()
}
