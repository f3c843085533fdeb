//! Managed resources: actions released in reverse order when a binding ends.

use crate::{Error, Result};
use devlife_gate::sync::lock;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;

type Action = Box<dyn FnOnce() + Send>;

/// The managed resources of one driver binding (Linux `dev->devres_head`).
///
/// Actions registered during `probe` and afterwards run in reverse order of
/// registration when the binding ends (unbind), or when `probe` fails
/// (partial unwind). Registration after the binding ended is refused.
///
/// # Invariants
///
/// Once `closed` is set, `actions` stays empty: release detached it under
/// the lock and later registrations are refused.
#[doc(alias = "devres_head")]
pub struct Devres {
    state: Mutex<State>,
}

struct State {
    actions: Vec<(String, Action)>,
    closed: bool,
}

impl Devres {
    pub(crate) fn new() -> Self {
        Self { state: Mutex::new(State { actions: Vec::new(), closed: false }) }
    }

    /// Registers `action` to run when the binding ends.
    ///
    /// # Errors
    ///
    /// [`Error::Detached`] if the binding has ended; `action` is dropped
    /// without running (see [`add_or_reset`](Self::add_or_reset)).
    #[doc(alias = "devm_add_action")]
    pub fn add(&self, name: impl Into<String>, action: impl FnOnce() + Send + 'static) -> Result<()> {
        let mut s = self.lock();
        if s.closed {
            return Err(Error::Detached);
        }
        s.actions.push((name.into(), Box::new(action)));
        Ok(())
    }

    /// Like [`add`](Self::add), but runs `action` at once if it cannot be
    /// registered, so nothing leaks on the error path.
    #[doc(alias = "devm_add_action_or_reset")]
    pub fn add_or_reset(
        &self,
        name: impl Into<String>,
        action: impl FnOnce() + Send + 'static,
    ) -> Result<()> {
        let mut s = self.lock();
        if s.closed {
            drop(s);
            action();
            return Err(Error::Detached);
        }
        s.actions.push((name.into(), Box::new(action)));
        Ok(())
    }

    /// The names of the registered actions, oldest first.
    pub fn names(&self) -> Vec<String> {
        self.lock().actions.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Runs every action, newest first, and refuses later registrations.
    ///
    /// The list is detached under the lock and run outside it. An action
    /// that panics is logged and the rest still run.
    #[doc(alias = "devres_release_all")]
    pub(crate) fn release_all(&self) {
        let actions = {
            let mut s = self.lock();
            s.closed = true;
            std::mem::take(&mut s.actions)
        };
        for (name, action) in actions.into_iter().rev() {
            if catch_unwind(AssertUnwindSafe(action)).is_err() {
                tracing::error!(action = %name, "devres action panicked");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }
}

impl fmt::Debug for Devres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Devres").field("actions", &self.names()).finish()
    }
}
