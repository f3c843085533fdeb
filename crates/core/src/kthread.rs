//! Threads bound to a driver binding: started in `probe`, told to stop and
//! joined when the binding ends (Linux `kthread_run` with a devm action
//! calling `kthread_stop`).

use crate::device::Bound;
use crate::{Error, Result};
use devlife_gate::{CancelSource, Cancelled, WaitQueue, wait_event};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a bound thread is given: whether to stop, and sleeps that end
/// when it must (Linux `kthread_should_stop`).
///
/// # Invariants
///
/// `stop` is cancelled exactly when the binding's managed resources reach
/// this thread's entry; the thread is joined right after.
pub struct KthreadStop {
    stop: Arc<CancelSource>,
}

impl KthreadStop {
    /// Whether the binding is ending: return from the thread's function.
    #[doc(alias = "kthread_should_stop")]
    pub fn should_stop(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Sleeps for `d`, or until told to stop; returns `false` if told to
    /// stop (Linux `schedule_timeout_interruptible` in a kthread's loop).
    pub fn sleep(&self, d: Duration) -> bool {
        self.wait_event_timeout(&WaitQueue::new(), d, || false) != Err(Cancelled::Removed)
    }

    /// Sleeps until `cond()` holds (woken through `wq`), `d` passes, or the
    /// thread is told to stop (`Err(Removed)`; `Err(TimedOut)` after `d`).
    pub fn wait_event_timeout(
        &self,
        wq: &WaitQueue,
        d: Duration,
        cond: impl FnMut() -> bool,
    ) -> std::result::Result<(), Cancelled> {
        wait_event(wq, &[(&self.stop, Cancelled::Removed)], Some(Instant::now() + d), cond)
    }
}

/// Starts thread `name` running `f` for as long as `host` stays bound:
/// when the binding ends, `f`'s [`KthreadStop`] is told to stop (its sleeps
/// end at once) and the thread is joined, in the binding's managed order
/// (after everything registered later, before everything registered
/// earlier), so `f` may use what was set up before it.
///
/// The thread counts as inside the binding: an unbind it asks for
/// ([`Device::unbind`](crate::Device::unbind)) is completed by another
/// thread once `f` has returned, as one asked from a handler is.
///
/// # Errors
///
/// [`Error::NoSpace`] if the thread cannot be started, [`Error::Detached`]
/// if the binding has ended (the thread is then stopped and joined at once).
///
/// # Examples
///
/// ```
/// use devlife_core::*;
/// use std::sync::{Arc, atomic::{AtomicU64, Ordering}};
/// struct Blink;
/// impl Driver for Blink {
///     type Data = Arc<AtomicU64>;
///     fn name(&self) -> &str { "blink" }
///     fn id_table(&self) -> &[&str] { &["led"] }
///     fn probe(&self, dev: &Bound<'_>) -> KResult<Arc<AtomicU64>> {
///         let ticks = Arc::new(AtomicU64::new(0));
///         let t = ticks.clone();
///         devm_kthread_run(dev, "blink", move |stop| {
///             while stop.sleep(std::time::Duration::from_millis(1)) {
///                 t.fetch_add(1, Ordering::Relaxed);
///             }
///         })?;
///         Ok(ticks)
///     }
/// }
/// let sys = System::new();
/// let bus = sys.bus_register("b").unwrap();
/// bus.register_driver(Blink).unwrap();
/// bus.add_device("led0", "led").unwrap();
/// let ticks = bus.device("led0").unwrap().drvdata::<Arc<AtomicU64>>().unwrap();
/// while ticks.load(Ordering::Relaxed) < 3 { std::thread::yield_now() }
/// bus.unbind("led0", None).unwrap(); // stops and joins the thread
/// assert_eq!(Arc::strong_count(&ticks), 1, "the thread and the binding are gone");
/// ```
#[doc(alias = "kthread_run")]
pub fn devm_kthread_run(
    host: &Bound<'_>,
    name: &str,
    f: impl FnOnce(&KthreadStop) + Send + 'static,
) -> Result<()> {
    let stop = Arc::new(CancelSource::new());
    let token = KthreadStop { stop: stop.clone() };
    spawn_bound(
        host,
        name,
        "kthread_stop",
        move || f(&token),
        move || {
            stop.cancel();
        },
    )
}

/// Starts thread `name` running `body` inside `host`'s binding (an unbind
/// it asks for is deferred, as from a handler), and registers the managed
/// action `action:name` that runs `stop` and joins it: what every thread a
/// binding owns shares.
pub(crate) fn spawn_bound(
    host: &Bound<'_>,
    name: &str,
    action: &str,
    body: impl FnOnce() + Send + 'static,
    stop: impl FnOnce() + Send + 'static,
) -> Result<()> {
    let binding = host.binding_id();
    let thread = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            unpin();
            crate::epoch::run_in_binding(binding, body)
        })
        .map_err(|_| Error::NoSpace("threads"))?;
    host.devres().add_or_reset(format!("{action}:{name}"), move || {
        stop();
        if thread.join().is_err() {
            tracing::error!("bound thread panicked");
        }
    })
}

/// Lets the calling thread run on every CPU the process may run on (the
/// main thread's set), as Linux starts a kthread on every housekeeping CPU.
/// A thread inherits its creator's CPU set, and a probe may run on a
/// transport's thread pinned to one CPU (the FUSE ring threads are): every
/// thread a binding started from there would share that one CPU.
fn unpin() {
    let main = rustix::thread::Pid::from_raw(std::process::id() as i32);
    if let Ok(set) = rustix::thread::sched_getaffinity(main) {
        if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
            tracing::debug!("a bound thread keeps its creator's CPUs: {e}");
        }
    }
}
