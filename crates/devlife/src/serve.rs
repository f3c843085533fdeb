//! `devlife serve`: the sample system (bus `sim`, the xyz and bench
//! drivers, two devices) served with [`devlife_serve`].

use devlife_core::System;
use devlife_serve::{Options, Server, Transport};
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
    /// first (root), `off` for `/dev/fuse` only. Default:
    /// `$DEVLIFE_IO_URING`, else `auto`.
    #[arg(long, value_enum)]
    pub io_uring: Option<IoUring>,
    /// Survive the server's own death: a small keeper process holds the
    /// mount's connection, restarts the server when it is killed or
    /// crashes, and passes it the connection; files opened before then
    /// answer ENODEV, as a removed device's do, and new opens reach the
    /// new server (docs/ARCHITECTURE.md, "Restarts"). Under systemd with a
    /// descriptor store, the store keeps the connection instead.
    #[arg(long)]
    pub supervise: bool,
    /// Also serve every device node as a real character device,
    /// `/dev/<name>`, over CUSE (root; the kernel needs `cuse`).
    #[arg(long)]
    pub cuse: bool,
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
    dir.create_file("modules", 0o600, file)?;
    // The server's context switches, all threads' (`bench fs` reads them).
    let rusage = TextFile::read_only(|| Ok(crate::bench::rusage_text()));
    dir.create_file("rusage", 0o444, rusage).map(drop)
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
    devlife_serve::init_logging(o.log.as_deref());
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    let mut opts = Options::new().allow_other(o.allow_other).owner(uid, gid).supervise(o.supervise);
    if let Some(choice) = o.io_uring {
        opts = opts.io_uring(match choice {
            IoUring::Auto => devlife_serve::IoUring::Auto,
            IoUring::On => devlife_serve::IoUring::On,
            IoUring::Off => devlife_serve::IoUring::Off,
        });
    }
    // The keeper, if asked for, holds no driver: it becomes one here.
    devlife_serve::supervise(&opts).map_err(|e| e.to_string())?;
    let sys = if o.ungated { System::ungated() } else { System::new() };
    let sys = build_system(sys, uid, gid).map_err(|e| format!("cannot set up the drivers: {e}"))?;
    if o.ungated {
        eprintln!("devlife serve: ungated: removals do not wait for handlers (measurement only)");
    }
    if o.cuse {
        opts = opts.cuse(true);
    }
    if let Some(dir) = &o.mount {
        opts = opts.mount_dir(dir);
    }
    let mut server = Server::start(sys, &opts).map_err(|e| e.to_string())?;
    // Before the ready line: whoever reads it may signal us at once.
    server.catch_signals().map_err(|e| e.to_string())?;
    match server.transport() {
        Transport::IoUring { queues } => eprintln!("devlife serve: FUSE over io_uring, {queues} queues"),
        Transport::DevFuse => eprintln!("devlife serve: /dev/fuse"),
    }
    if server.cuse() {
        eprintln!("devlife serve: device nodes also in /dev over CUSE");
    }
    // Not println!: a restarted server's stdout may be a pipe its first
    // reader closed, and a failed write must not end the server.
    let mut out = std::io::stdout();
    let _ = writeln!(out, "ready {}", server.mount_path().display()).and_then(|()| out.flush());
    server.run_until_signal().map(drop).map_err(|e| e.to_string())
}
