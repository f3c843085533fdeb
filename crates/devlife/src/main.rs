//! `devlife`: the command-line front end (`devlife help <command>` gives
//! each command's options in full).
//!
//! * `devlife serve [--mount DIR] [--allow-other] [--io-uring auto|on|off]
//!   [--cuse] [--ungated] [--log FILTER]`: the served tree (sample drivers
//!   `xyz` and `bench`) until SIGINT or SIGTERM.
//! * `devlife torture [--seconds N] [--seed S] [--clients K] [--threads T]
//!   [--mount DIR] [--io-uring ...] [--cuse] [--removal-bound-ms MS]`:
//!   random clients, signals and removals, checking the guarantee.
//! * `devlife leaks [--cycles N] [--warmup N] [--report-every N]
//!   [--io-uring ...]`: bind/unbind cycles; memory and descriptors come back.
//! * `devlife ioctls DRIVER [--format table|c|python]`: a driver's ioctl
//!   numbers for client code.
//! * `devlife bench gate [--quick] [--json]`: the gate against the usual
//!   ways of counting in-flight operations.
//! * `devlife bench fs [--quick] [--json] [--reps N] [--ms MS]
//!   [--plot-dir DIR] [--only NAMES]`: device-node operations, devlife
//!   against libfuse and fuser servers, its floor and `/dev/zero`.
//! * `devlife bench unplug [--quick] [--json] [--reps N] [--plot-dir DIR]`:
//!   removal with files open and in use.
//! * `devlife bench blocked [--quick] [--json] [--readers N,...]`: clients
//!   blocked in `read`: the server's threads and memory per blocked
//!   request, a stats read meanwhile, unbind to the last `ENODEV`.
//! * `devlife bench restart [--quick] [--json] [--crashes N]`: SIGKILLs of
//!   `devlife serve --supervise`: the time to the first successful open,
//!   and what earlier descriptors see.
//! * `devlife bench peers`: builds the peers `bench fs` compares with.

use devlife::{bench, serve, torture};

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "devlife", version, about = "A driver core whose removal waits for file operations")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount the driver core's dev/, sys/ and debug/ trees over FUSE and
    /// serve them until SIGINT or SIGTERM.
    Serve(serve::Opts),
    /// Random clients, signals and removals against a served tree, checking
    /// the removal guarantee.
    Torture(torture::Opts),
    /// Bind/unbind cycles with files open around them; checks the server's
    /// memory and descriptors come back.
    Leaks(torture::leaks::Opts),
    /// One client process of `devlife torture` (started by it).
    #[command(hide = true)]
    TortureClient(torture::client::Opts),
    /// Print a driver's ioctl numbers for client code.
    Ioctls {
        /// The driver (`xyz`).
        driver: String,
        /// `table` (name, number, C macro), `c` (#defines) or `python`.
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Run a benchmark.
    Bench {
        #[command(subcommand)]
        which: BenchCmd,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// try_enter + drop against RwLock, atomic refcounts, Arc, epoch pinning;
    /// kill_and_drain latency.
    Gate(bench::Opts),
    /// Device-node read, write, ioctl and open/close through real system
    /// calls: devlife (with the gate and bypassed) against a libfuse and a
    /// fuser server and /dev/zero.
    Fs(bench::fs::FsOpts),
    /// Unbind with 1 to 10,000 open files in use, a blocked reader, rebind;
    /// a debugfs directory of 1,000 open files.
    Unplug(bench::unplug::UnplugOpts),
    /// N client threads blocked in `read` of an xyz node: the server's
    /// threads and memory per blocked request, a stats read while they
    /// wait, and unbind to the last reader's ENODEV.
    Blocked(bench::blocked::BlockedOpts),
    /// SIGKILLs of `devlife serve --supervise`: from each kill to the first
    /// successful open of dev/xyz0, and what earlier descriptors see.
    Restart(bench::restart::RestartOpts),
    /// Builds the libfuse and fuser peers of `bench fs` (it builds them on
    /// demand too).
    Peers,
    /// One client process of `bench fs` (started by it).
    #[command(hide = true)]
    FsClient(bench::client::Opts),
    /// The floor server of `bench fs` (started by it).
    #[command(hide = true)]
    FloorServer(bench::floor::FloorOpts),
    /// One client process of `bench blocked` (started by it).
    #[command(hide = true)]
    BlockedClient(bench::blocked::ClientOpts),
}

/// Restarts the process with glibc's per-thread malloc caches switched
/// off, unless `GLIBC_TUNABLES` already sets them or `DEVLIFE_MALLOC_TCACHE`
/// is set. Called before any thread exists.
///
/// A server's objects are allocated by one worker and freed by another
/// (a device's binding by the `bind` request, its removal by `unbind`);
/// glibc puts a chunk freed on a thread into that thread's cache, out of
/// reach of the arena it came from, which keeps growing meanwhile. The
/// resident size then creeps until every cache is full: +12% over 100,000
/// bind/unbind cycles in `devlife leaks`, flat without the caches, and no
/// difference in request throughput was measured. glibc reads its tunables
/// only at exec, hence the exec.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn exec_without_malloc_caches() {
    use std::os::unix::process::CommandExt;
    const TUNABLE: &str = "glibc.malloc.tcache_count";
    let current = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if current.contains(TUNABLE) || std::env::var_os("DEVLIFE_MALLOC_TCACHE").is_some() {
        return;
    }
    let tunables = if current.is_empty() { format!("{TUNABLE}=0") } else { format!("{current}:{TUNABLE}=0") };
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let err = std::process::Command::new("/proc/self/exe")
        .arg0(argv0)
        .args(args)
        .env("GLIBC_TUNABLES", tunables)
        .exec();
    eprintln!("devlife: cannot restart with {TUNABLE}=0 ({err}); continuing with glibc's defaults");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn exec_without_malloc_caches() {}

/// `devlife ioctls DRIVER`: the driver's ioctl table. Returns the exit status.
fn print_ioctls(driver: &str, format: &str) -> i32 {
    let table: &[devlife_core::IoctlDef] = match driver {
        "xyz" => devlife_drivers::xyz::IOCTLS,
        "bench" => devlife_drivers::bench::IOCTLS,
        other => {
            eprintln!("devlife ioctls: no driver {other:?} (xyz, bench)");
            return 2;
        }
    };
    match format.parse() {
        Ok(f) => {
            print!("{}", devlife_core::ioctl::ioctl_table(table, f));
            0
        }
        Err(e) => {
            eprintln!("devlife ioctls: --format {e}");
            2
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve(o) => {
            exec_without_malloc_caches();
            return ExitCode::from(serve::run(&o) as u8);
        }
        Cmd::Torture(o) => return ExitCode::from(torture::run(&o) as u8),
        Cmd::Leaks(o) => return ExitCode::from(torture::leaks::run(&o) as u8),
        Cmd::TortureClient(o) => return ExitCode::from(torture::client::run(&o) as u8),
        Cmd::Ioctls { driver, format } => return ExitCode::from(print_ioctls(&driver, &format) as u8),
        Cmd::Bench { which: BenchCmd::Gate(o) } => bench::gate::run(&o),
        Cmd::Bench { which: BenchCmd::Fs(o) } => return ExitCode::from(bench::fs::run(&o) as u8),
        Cmd::Bench { which: BenchCmd::Unplug(o) } => return ExitCode::from(bench::unplug::run(&o) as u8),
        Cmd::Bench { which: BenchCmd::Blocked(o) } => return ExitCode::from(bench::blocked::run(&o) as u8),
        Cmd::Bench { which: BenchCmd::Restart(o) } => return ExitCode::from(bench::restart::run(&o) as u8),
        Cmd::Bench { which: BenchCmd::BlockedClient(o) } => {
            return ExitCode::from(bench::blocked::client(&o) as u8);
        }
        Cmd::Bench { which: BenchCmd::FsClient(o) } => return ExitCode::from(bench::client::run(&o) as u8),
        Cmd::Bench { which: BenchCmd::FloorServer(o) } => {
            return ExitCode::from(bench::floor::serve(&o) as u8);
        }
        Cmd::Bench { which: BenchCmd::Peers } => {
            let root = bench::servers::repo_root();
            for (name, built) in [
                ("libfuse", bench::servers::build_libfuse(&root)),
                ("libfuse-cuse", bench::servers::build_libfuse_cuse(&root)),
                ("fuser", bench::servers::build_fuser(&root)),
            ] {
                match built {
                    Ok(p) => println!("{name}: {}", p.display()),
                    Err(e) => {
                        eprintln!("{name}: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
        }
    }
    ExitCode::SUCCESS
}
