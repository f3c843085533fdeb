//! The life of one driver binding, and which bindings' handlers the
//! current thread is running.
//!
//! Linux has no single object for this: a driver's `remove` knows it is
//! unbinding, and lockdep knows which locks a thread holds. devlife needs
//! both facts at run time: an [`Epoch`] tells every object a binding
//! registered whether the binding's removal has returned (a handler
//! starting after that is the violation the torture run counts), and the
//! per-thread handler stack tells an unbind asked from inside one of the
//! binding's own handlers (or bound threads, or work items) that it must
//! be deferred instead of waiting for itself.

use crate::stats::Stats;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The life of one binding, shared with every object it registered, which
/// checks on every handler entry that the binding's removal has not
/// returned.
#[derive(Debug)]
pub(crate) struct Epoch {
    pub(crate) id: u64,
    /// Set (Release) once the binding's removal has completed.
    ended: AtomicBool,
}

impl Epoch {
    pub(crate) fn new(id: u64) -> Arc<Self> {
        Arc::new(Epoch { id, ended: AtomicBool::new(false) })
    }

    /// Marks the binding's removal complete.
    pub(crate) fn end(&self) {
        // Release: pairs with the Acquire in `HandlerScope::enter`, so a
        // handler that starts after this sees every effect of the removal.
        self.ended.store(true, Ordering::Release);
    }
}

thread_local! {
    /// The bindings whose handlers this thread is running, innermost last.
    static HANDLERS: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Marks the current thread as running a handler of a binding, for as long
/// as it lives.
pub(crate) struct HandlerScope(bool);

impl HandlerScope {
    /// Enters a handler of `binding` (if the node belongs to one), and
    /// checks the binding has not ended (the check the torture run counts).
    pub(crate) fn enter(binding: Option<&Epoch>, stats: &Stats, node: &str) -> Self {
        let Some(b) = binding else { return HandlerScope(false) };
        // Acquire: pairs with the Release in `Epoch::end`, after the removal.
        if b.ended.load(Ordering::Acquire) {
            stats.violated();
            tracing::error!(node, binding = b.id, "a handler started after its binding's removal returned");
        }
        HandlerScope(HANDLERS.try_with(|h| h.borrow_mut().push(b.id)).is_ok())
    }
}

impl Drop for HandlerScope {
    fn drop(&mut self) {
        if self.0 {
            let _ = HANDLERS.try_with(|h| h.borrow_mut().pop());
        }
    }
}

/// Runs `f` as part of `binding` (a bound thread's or work item's body):
/// a removal of the binding asked from inside `f` is then deferred, as it
/// is from a handler, instead of joining the thread that asked.
pub(crate) fn run_in_binding<R>(binding: u64, f: impl FnOnce() -> R) -> R {
    let pushed = HANDLERS.try_with(|h| h.borrow_mut().push(binding)).is_ok();
    let _scope = HandlerScope(pushed);
    f()
}

/// Whether the current thread is running a handler of `binding`.
pub(crate) fn in_handler_of(binding: u64) -> bool {
    HANDLERS.try_with(|h| h.borrow().contains(&binding)).unwrap_or(false)
}
