//! `led-serve [DIR]`: serves one simulated LED controller, `led0`, at DIR
//! (default: `devlife_serve::default_mount_dir()`) until SIGINT or SIGTERM.

use devlife_core::System;
use devlife_serve::{Options, Report, Server};

fn main() -> Result<(), Report> {
    devlife_serve::init_logging(None);
    let sys = System::new();
    led::register(&sys)?;
    let bus = sys.bus(led::BUS).ok_or("no bus")?;
    bus.add_device("led0", "led")?;
    let mut opts = Options::new().fsname("led-serve");
    if let Some(dir) = std::env::args_os().nth(1) {
        opts = opts.mount_dir(dir);
    }
    let mut server = Server::start(sys, &opts)?;
    server.catch_signals()?; // before anyone is told to signal us
    println!("ready {}", server.mount_path().display());
    let why = server.run_until_signal()?;
    eprintln!("stopped: {why}");
    Ok(())
}
