//! A killable in-flight-operation gate, the mechanism behind devlife's
//! removal guarantee.
//!
//! When a device is removed, its file operations must stop: no new handler
//! may start, every handler already running must have left, and a handler
//! asleep waiting for data must be woken and fail. The kernel has this
//! mechanism three times over (`percpu_ref` in the block layer, the debugfs
//! `active_users` refcount with cancellations, procfs's `pde_users`); the
//! 2021 `cdev: Generic shutdown handling` series asked for one shared version.
//! This crate is that version, in userspace:
//!
//! * [`Gate`]: `try_enter` / `kill` / `drain`, with a fast path that writes
//!   only the calling thread's own counter and issues no hardware fence
//!   (asymmetric barriers, see [`barrier`]).
//! * [`Guard`]: the proof of being inside, `!Send`; [`SendGuard`] for async
//!   code, at the price of a shared counter.
//! * [`wait_event`], [`WaitQueue`], [`CancelSource`]: sleeping inside a
//!   handler, cancelled by the gate's kill or by a second source (a
//!   per-request interrupt).
//! * [`CancellableMutex`]: a lock a handler can wait for while the remover
//!   holds it.
//! * [`Revocable`]: data dropped by its revoker once its users have left
//!   (Rust-for-Linux's `kernel::revocable`).
//!
//! # Killing from inside a handler
//!
//! [`Gate::kill`] never waits, so a handler may kill its own gate: later
//! entries fail, and the killing handler keeps running. [`Gate::drain`] from
//! a thread that holds a guard of the same gate would wait for itself; it
//! returns [`DrainError::CallerInside`] instead. [`Revocable::revoke`] from
//! such a thread kills access and leaves the drop of the data to the next
//! revoke made from outside, or to the drop of the `Revocable`.
//!
//! # Model checking
//!
//! Under `RUSTFLAGS="--cfg loom"` every atomic, lock and thread-local comes
//! from loom (see `primitive.rs`), the asymmetric barriers become
//! `fence(SeqCst)` and the per-thread tables shrink so that the model crosses
//! their borders: `cargo test --release -p devlife-gate --test loom`.

pub mod barrier;
mod gate;
mod mutex;
mod primitive;
mod registry;
mod revocable;
pub mod sync;
mod task;
mod wait;
mod wait_until;

pub use gate::{DrainError, Gate, Guard, Holder, SendGuard, Stuck};
pub use mutex::{CancellableMutex, CancellableMutexGuard};
pub use revocable::{Revocable, RevocableGuard};
pub use task::{BoxFuture, TaskCell, WakerWake};
pub use wait::{CancelSource, Cancelled, Event, WaitQueue, Wake, wait_event};
pub use wait_until::WaitUntil;
