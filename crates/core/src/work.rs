//! [`DelayedWork`]: a function run once after a delay, on a thread of its
//! own, cancelled and waited for when the binding ends (Linux
//! `devm_delayed_work_autocancel`).

use crate::Result;
use crate::device::Bound;
use devlife_gate::sync::{lock, wait, wait_timeout};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Work that runs once per scheduling, after its delay, and never after
/// the binding that made it has ended.
///
/// Made by [`devm_delayed_work_autocancel`]; a cheap handle that handlers
/// and threads of the binding may keep and schedule. When the binding
/// ends, a pending run is cancelled and a running one waited for (Linux
/// `cancel_delayed_work_sync`), in the binding's managed order; scheduling
/// after that does nothing.
///
/// # Invariants
///
/// At most one run at a time, on the work's own thread; `state.due` is
/// `Some` exactly while a run is pending.
#[derive(Clone)]
#[doc(alias = "delayed_work")]
pub struct DelayedWork {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    due: Option<Instant>,
    stopped: bool,
}

impl DelayedWork {
    /// Runs the work once `delay` from now, unless a run is pending already
    /// (Linux `schedule_delayed_work`). Returns whether it was scheduled.
    #[doc(alias = "schedule_delayed_work")]
    #[doc(alias = "queue_delayed_work")]
    pub fn schedule(&self, delay: Duration) -> bool {
        let mut st = lock(&self.inner.state);
        if st.stopped || st.due.is_some() {
            return false;
        }
        st.due = Some(Instant::now() + delay);
        self.inner.changed.notify_one();
        true
    }

    /// Runs the work once `delay` from now, whether or not a run was
    /// pending (Linux `mod_delayed_work`). Returns whether one was pending.
    #[doc(alias = "mod_delayed_work")]
    pub fn modify(&self, delay: Duration) -> bool {
        let mut st = lock(&self.inner.state);
        let was = st.due.is_some();
        if !st.stopped {
            st.due = Some(Instant::now() + delay);
            self.inner.changed.notify_one();
        }
        was
    }

    /// Cancels a pending run (Linux `cancel_delayed_work`; a run already
    /// under way completes). Returns whether one was pending.
    #[doc(alias = "cancel_delayed_work")]
    pub fn cancel(&self) -> bool {
        lock(&self.inner.state).due.take().is_some()
    }

    /// Whether a run is pending (Linux `delayed_work_pending`).
    #[doc(alias = "delayed_work_pending")]
    pub fn is_pending(&self) -> bool {
        lock(&self.inner.state).due.is_some()
    }

    /// The work's thread: waits for the due time, runs, until stopped.
    fn run(&self, mut f: impl FnMut()) {
        let mut st = lock(&self.inner.state);
        loop {
            if st.stopped {
                return;
            }
            match st.due {
                None => st = wait(&self.inner.changed, st),
                Some(due) => {
                    let now = Instant::now();
                    if now < due {
                        st = wait_timeout(&self.inner.changed, st, due - now);
                        continue;
                    }
                    st.due = None;
                    drop(st);
                    // A panicking run is logged; the work stays usable.
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut f)).is_err() {
                        tracing::error!("delayed work panicked");
                    }
                    st = lock(&self.inner.state);
                }
            }
        }
    }

    fn stop(&self) {
        let mut st = lock(&self.inner.state);
        st.stopped = true;
        st.due = None;
        self.inner.changed.notify_one();
    }
}

impl std::fmt::Debug for DelayedWork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelayedWork").field("pending", &self.is_pending()).finish()
    }
}

/// Makes work `name` that runs `f` once per [`DelayedWork::schedule`],
/// after the delay, for as long as `host` stays bound; when the binding
/// ends, a pending run is cancelled and a running one waited for, after
/// everything registered later (a character device whose handlers schedule
/// it is removed first) and before everything registered earlier (which
/// `f` may use).
///
/// `f` counts as inside the binding: an unbind it asks for is completed by
/// another thread once it has returned.
///
/// # Errors
///
/// [`Error::NoSpace`](crate::Error::NoSpace) if the work's thread cannot be started,
/// [`Error::Detached`](crate::Error::Detached) if the binding has ended.
///
/// # Examples
///
/// ```
/// use devlife_core::*;
/// use std::sync::{Arc, atomic::{AtomicBool, Ordering}};
/// use std::time::Duration;
/// struct Led;
/// impl Driver for Led {
///     type Data = (Arc<AtomicBool>, DelayedWork);
///     fn name(&self) -> &str { "led" }
///     fn id_table(&self) -> &[&str] { &["led"] }
///     fn probe(&self, dev: &Bound<'_>) -> KResult<Self::Data> {
///         let lit = Arc::new(AtomicBool::new(true));
///         let l = lit.clone();
///         // Turns the LED off some time after it was last lit.
///         let off = devm_delayed_work_autocancel(dev, "led-off", move || l.store(false, Ordering::Relaxed))?;
///         off.schedule(Duration::from_millis(1));
///         Ok((lit, off))
///     }
/// }
/// let sys = System::new();
/// let bus = sys.bus_register("platform").unwrap();
/// bus.register_driver(Led).unwrap();
/// bus.add_device("led0", "led").unwrap();
/// let (lit, off) = bus.device("led0").unwrap().drvdata::<(Arc<AtomicBool>, DelayedWork)>().unwrap();
/// while lit.load(Ordering::Relaxed) { std::thread::yield_now() }
/// bus.unbind("led0", None).unwrap(); // cancels and joins the work
/// assert!(!off.schedule(Duration::ZERO), "the work is gone with its binding");
/// ```
#[doc(alias = "INIT_DELAYED_WORK")]
pub fn devm_delayed_work_autocancel(
    host: &Bound<'_>,
    name: &str,
    f: impl FnMut() + Send + 'static,
) -> Result<DelayedWork> {
    let work = DelayedWork {
        inner: Arc::new(Inner { state: Mutex::new(State::default()), changed: Condvar::new() }),
    };
    let (w, w2) = (work.clone(), work.clone());
    crate::kthread::spawn_bound(host, name, "cancel_delayed_work_sync", move || w.run(f), move || w2.stop())?;
    Ok(work)
}
