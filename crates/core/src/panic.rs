//! A handler's panic is the handler's failure, not the server's: it is
//! caught at the call, answered `EIO`, and logged once.
//!
//! Linux has no unwinding; the nearest kernel behaviour is an `oops` in a
//! driver that kills the calling task and leaves the system running. Here
//! the calling request fails instead and the device stays usable.

use crate::errno::Errno;
use crate::fops::KResult;
use crate::stats::Stats;
use std::panic::{AssertUnwindSafe, catch_unwind};

thread_local! {
    /// How many driver handlers this thread is inside (any node).
    static IN_HANDLER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the current thread as inside a driver handler, for the panic hook.
struct InHandler;

impl InHandler {
    fn enter() -> Self {
        let _ = IN_HANDLER.try_with(|d| d.set(d.get() + 1));
        InHandler
    }
}

impl Drop for InHandler {
    fn drop(&mut self) {
        let _ = IN_HANDLER.try_with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// Runs the handler `f` (operation `what` of `node`), turning a panic into
/// `EIO`: the server and the device live on; the panic is logged here,
/// once, and counted in `stats`.
pub(crate) fn catch<R>(node: &str, stats: &Stats, what: &str, f: impl FnOnce() -> KResult<R>) -> KResult<R> {
    let _depth = InHandler::enter();
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg =
            p.downcast_ref::<&str>().copied().or_else(|| p.downcast_ref::<String>().map(String::as_str));
        tracing::error!(node, op = what, panic = msg.unwrap_or("<non-string payload>"), "handler panicked");
        stats.panicked();
        Err(Errno::EIO)
    })
}

/// Makes a panic in a driver handler one log line: the core catches it,
/// answers `EIO` and logs the node, the operation and the message
/// (`handler panicked`); this hook keeps the default hook (the
/// `thread ... panicked at` text) for every other panic, and for handler
/// panics only when `RUST_BACKTRACE` asks for a backtrace. Call it once at
/// start, as a server does.
pub fn quiet_handler_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_handler = IN_HANDLER.try_with(|d| d.get() > 0).unwrap_or(false);
        let backtrace = std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0");
        if !in_handler || backtrace {
            default(info);
        }
    }));
}

/// Polls an async handler's future (operation `what` of `node`), turning a
/// panic into `EIO`, as [`catch`] does for a blocking handler.
pub(crate) fn catch_poll<T>(
    node: &str,
    stats: &Stats,
    what: &str,
    fut: std::pin::Pin<&mut (dyn std::future::Future<Output = KResult<T>> + Send)>,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<KResult<T>> {
    let _depth = InHandler::enter();
    catch_unwind(AssertUnwindSafe(|| fut.poll(cx))).unwrap_or_else(|p| {
        let msg =
            p.downcast_ref::<&str>().copied().or_else(|| p.downcast_ref::<String>().map(String::as_str));
        tracing::error!(node, op = what, panic = msg.unwrap_or("<non-string payload>"), "handler panicked");
        stats.panicked();
        std::task::Poll::Ready(Err(Errno::EIO))
    })
}
