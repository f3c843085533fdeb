//! `devlife`: the command-line front end.
//!
//! * `devlife serve [--mount DIR] [--allow-other]`: the served tree.
//! * `devlife torture [--seconds N] [--seed S] [--clients K] [--mount DIR]`.
//! * `devlife bench gate [--quick] [--json]`: the gate against the usual
//!   ways of counting in-flight operations.

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve(o) => return ExitCode::from(serve::run(&o) as u8),
        Cmd::Torture(o) => return ExitCode::from(torture::run(&o) as u8),
        Cmd::Leaks(o) => return ExitCode::from(torture::leaks::run(&o) as u8),
        Cmd::TortureClient(o) => return ExitCode::from(torture::client::run(&o) as u8),
        Cmd::Bench { which: BenchCmd::Gate(o) } => bench::gate::run(&o),
    }
    ExitCode::SUCCESS
}
