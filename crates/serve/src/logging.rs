//! [`init_logging`]: the library's `tracing` output on stderr.

/// Sends `tracing` output to stderr, filtered by `filter` (a `RUST_LOG`
/// filter: `info`, `debug`, `devlife_fuse=debug,info`), else by the
/// `RUST_LOG` variable, else at `info`.
///
/// At `info` the server logs the mount and every bind, unbind and hot-plug
/// with its duration; at `debug` every request with its result (as
/// libfuse's `-d`); a removal that waits long for handlers warns with what
/// is still inside. A bad filter is reported and `info` used. Does nothing
/// if the program installed a subscriber already.
///
/// Also makes a panic in a driver handler one log line naming the node
/// and the operation (the caller gets `EIO`), with the default panic
/// output only when `RUST_BACKTRACE` asks for a backtrace
/// ([`devlife_core::quiet_handler_panics`]).
pub fn init_logging(filter: Option<&str>) {
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(devlife_core::quiet_handler_panics);
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
