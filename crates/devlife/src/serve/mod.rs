//! `devlife serve`: the driver core, with the xyz driver and two devices,
//! served over FUSE to unmodified processes.

pub mod control;
mod fs;
mod inodes;
pub mod tree;

pub use fs::ServeFs;

use devlife_core::System;
use devlife_fuse::mount::{self, MountOptions, MountState};
use devlife_fuse::{Config, Session, Transport};
use std::io::Write;
use std::path::PathBuf;

/// Options of `devlife serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// Where to mount (default `$XDG_RUNTIME_DIR/devlife`, else
    /// `/tmp/devlife-<uid>`; created if missing).
    #[arg(long)]
    pub mount: Option<PathBuf>,
    /// Let other users reach the mount (node modes then decide).
    #[arg(long)]
    pub allow_other: bool,
    /// Serve through FUSE over io_uring: `auto` when the kernel offers it
    /// (`/sys/module/fuse/parameters/enable_uring`), `on` to enable it
    /// first (root), `off` for `/dev/fuse` only.
    #[arg(long, value_enum, default_value_t = IoUring::Auto)]
    pub io_uring: IoUring,
    /// Serve a driver core without the removal guarantee
    /// (`System::ungated`), for measuring what it costs.
    #[arg(long)]
    pub ungated: bool,
    /// What to log on stderr, as a `RUST_LOG` filter: `info` (the mount,
    /// every bind, unbind and hot-plug with its duration), `debug` (every
    /// request with its result, as libfuse's `-d`), `warn`, or per crate
    /// (`devlife_fuse=debug,info`). Default: `RUST_LOG`, else `info`.
    #[arg(long)]
    pub log: Option<String>,
}

/// Sends `tracing` output to stderr, filtered by `filter` (or `RUST_LOG`,
/// else `info`).
pub fn init_logging(filter: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let text =
        filter.map(str::to_owned).or_else(|| std::env::var("RUST_LOG").ok()).unwrap_or_else(|| "info".into());
    let f = EnvFilter::try_new(&text).unwrap_or_else(|e| {
        eprintln!("devlife: log filter {text:?}: {e}; logging at info");
        EnvFilter::new("info")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(f)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// `--io-uring`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoUring {
    /// Use it if the kernel offers it.
    Auto,
    /// Enable it in the kernel (root), then use it.
    On,
    /// Serve through `/dev/fuse` only.
    Off,
}

/// The kernel's switch for FUSE over io_uring.
const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// Turns on the kernel's FUSE over io_uring (it only lets servers that ask
/// for it use it), unless it is on already.
fn enable_uring() -> Result<(), String> {
    let on = std::fs::read_to_string(ENABLE_URING).map_err(|e| format!("{ENABLE_URING}: {e}"))?;
    if on.trim() == "Y" {
        return Ok(());
    }
    std::fs::write(ENABLE_URING, "1")
        .map_err(|e| format!("cannot enable FUSE over io_uring ({ENABLE_URING}): {e}"))
}

fn default_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("devlife"),
        _ => PathBuf::from(format!("/tmp/devlife-{}", rustix::process::getuid().as_raw())),
    }
}

/// The sample system's bus.
pub const SIM_BUS: &str = "sim";

/// Builds the system served by default: bus `sim`, the xyz and bench
/// drivers, devices `xyz0` and `xyz1`.
pub fn default_system(uid: u32, gid: u32) -> devlife_core::Result<System> {
    build_system(System::new(), uid, gid)
}

fn build_system(sys: System, uid: u32, gid: u32) -> devlife_core::Result<System> {
    sys.set_default_owner(uid, gid);
    devlife_drivers::xyz::register(&sys, None)?;
    devlife_drivers::bench::register(&sys)?;
    let bus = sys.bus(SIM_BUS).ok_or(devlife_core::Error::NoSuchBus(SIM_BUS.into()))?;
    // Hot-plug takes these types with their driver unloaded too.
    for ty in ["xyz", "bench"] {
        bus.declare_device_type(ty)?;
    }
    for d in ["xyz0", "xyz1"] {
        bus.add_device(d, "xyz")?;
    }
    create_modules_file(&sys)?;
    Ok(sys)
}

/// `debug/devlife/modules`: lists the loaded drivers; `rmmod xyz`
/// unregisters the xyz driver (unbinding every device it has, each with the
/// full removal guarantee), `modprobe xyz` registers it again.
fn create_modules_file(sys: &System) -> devlife_core::Result<()> {
    use devlife_core::{Errno, text::TextFile};
    let (w1, w2) = (sys.downgrade(), sys.downgrade());
    let file = TextFile::read_write(
        move || {
            let sys = w1.upgrade().ok_or(Errno::ENODEV)?;
            let bus = sys.bus(SIM_BUS).ok_or(Errno::ENODEV)?;
            Ok(bus.drivers().iter().map(|d| format!("{d}\n")).collect())
        },
        move |text| {
            let sys = w2.upgrade().ok_or(Errno::ENODEV)?;
            let bus = sys.bus(SIM_BUS).ok_or(Errno::ENODEV)?;
            match text.trim_end_matches('\n').split_once(' ') {
                Some(("rmmod", "xyz")) => bus.unregister_driver("xyz").map_err(|_| Errno::ENOENT),
                Some(("modprobe", "xyz")) => match devlife_drivers::xyz::register(&sys, None) {
                    Ok(_) => Ok(()),
                    Err(devlife_core::Error::Exists(_)) => Err(Errno::EEXIST),
                    Err(e) => Err(Errno::from(e)),
                },
                // No such module (delete_module(2) and modprobe say so).
                Some(("rmmod" | "modprobe", _)) => Err(Errno::ENOENT),
                _ => Err(Errno::EINVAL),
            }
        },
    );
    let dir =
        sys.debugfs().child("devlife").ok_or(devlife_core::Error::NoSuchDevice("debugfs devlife".into()))?;
    dir.create_file("modules", 0o600, file).map(drop)
}

/// Runs the server until SIGINT or SIGTERM. Returns the exit status.
pub fn run(o: &Opts) -> i32 {
    match serve(o) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("devlife serve: {e}");
            1
        }
    }
}

fn serve(o: &Opts) -> Result<(), String> {
    init_logging(o.log.as_deref());
    devlife_core::quiet_handler_panics();
    let dir = o.mount.clone().unwrap_or_else(default_dir);
    std::fs::create_dir_all(&dir).or_else(|e| {
        // A stale mount makes the directory itself fail with ENOTCONN.
        if mount::state(&dir) == MountState::Stale {
            Ok(())
        } else {
            Err(format!("cannot create {}: {e}", dir.display()))
        }
    })?;
    match mount::state(&dir) {
        MountState::Stale => {
            eprintln!("devlife serve: clearing a stale mount at {} (its server is gone)", dir.display());
            mount::clear_stale(&dir)
                .map_err(|e| format!("cannot clear the stale mount at {}: {e}", dir.display()))?;
        }
        MountState::Live => return Err(format!("{} is already mounted by a live server", dir.display())),
        MountState::Free => {}
    }
    if o.io_uring == IoUring::On {
        enable_uring()?;
    }
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    let sys = if o.ungated { System::ungated() } else { System::new() };
    let sys = build_system(sys, uid, gid).map_err(|e| format!("cannot set up the drivers: {e}"))?;
    if o.ungated {
        eprintln!("devlife serve: ungated: removals do not wait for handlers (measurement only)");
    }

    // Signals are taken by a thread of their own, set up before anything
    // else starts threads.
    let mut signals =
        signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])
            .map_err(|e| format!("cannot handle signals: {e}"))?;

    let opts =
        MountOptions { allow_other: o.allow_other, fsname: "devlife".into(), subtype: "devlife".into() };
    let mut m = mount::mount(&dir, &opts).map_err(|e| format!("cannot mount {}: {e}", dir.display()))?;
    let fd = m.take_fd().ok_or("the mount has no connection")?;
    let config = Config {
        io_uring: o.io_uring != IoUring::Off,
        mount_dir: Some(m.dir().to_owned()),
        ..Config::default()
    };
    let fs = ServeFs::new(sys.clone(), uid, gid);
    let stats = fs.transport_stats();
    let session = Session::start_with_stats(fd, fs, config, stats)
        .map_err(|e| format!("FUSE handshake failed: {e}"))?;
    match session.transport() {
        Transport::IoUring { queues } => eprintln!("devlife serve: FUSE over io_uring, {queues} queues"),
        Transport::DevFuse if o.io_uring == IoUring::On => {
            return Err("FUSE over io_uring was asked for but could not start".into());
        }
        Transport::DevFuse => eprintln!("devlife serve: /dev/fuse"),
    }
    tracing::info!(dir = %m.dir().display(), transport = ?session.transport(), "mounted");
    println!("ready {}", m.dir().display());
    let _ = std::io::stdout().flush();

    // An external unmount (or abort) ends the session: exit then too.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<&'static str>();
    let session = std::sync::Arc::new(session);
    {
        let (s, tx) = (session.clone(), done_tx.clone());
        std::thread::spawn(move || {
            s.wait();
            let _ = tx.send("connection ended");
        });
    }
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            let _ = done_tx.send("signal");
        }
    });
    let why = done_rx.recv().unwrap_or("signal");
    shutdown(&sys);
    if why == "signal" {
        let d = m.dir().to_owned();
        if let Err(e) = m.unmount() {
            eprintln!("devlife serve: unmount {}: {e}", d.display());
        }
    } else {
        // Unmounted from outside: nothing left to unmount.
        std::mem::forget(m);
    }
    Ok(())
}

/// Removes every device (each removal drains its handlers and releases
/// its open files).
fn shutdown(sys: &System) {
    for bus in sys.buses() {
        for d in bus.devices() {
            if let Err(e) = bus.delete_device(d.name()) {
                eprintln!("devlife serve: removing {}: {e}", d.name());
            }
        }
    }
}
