//! Where a node keeps its driver's operations object, and the typed proof
//! of having entered it.

use devlife_gate::{Gate, Revocable, RevocableGuard};
use std::ops::Deref;

/// A node's operations object.
pub(super) enum Ops<F> {
    /// Behind the gate: handlers enter it, the removal revokes it.
    Gated(Revocable<F>),
    /// Not behind the gate (an ungated [`System`](crate::System)): the gate
    /// only refuses new entries after removal and cancels waits.
    ///
    /// # Invariants
    ///
    /// `ops` is never taken or dropped before the node is: an ungated
    /// removal only kills `gate`.
    Ungated { ops: F, gate: Gate },
}

/// The operations, borrowed for one handler call: inside the gate when the
/// node is gated, so the removal waits until this is dropped.
pub(super) enum Entered<'a, F> {
    Gated(RevocableGuard<'a, F>),
    Ungated(&'a F),
}

impl<F> Ops<F> {
    pub(super) fn new(ops: F, gated: bool) -> Self {
        if gated { Ops::Gated(Revocable::new(ops)) } else { Ops::Ungated { ops, gate: Gate::new() } }
    }

    /// The gate the operations are behind (killed at removal).
    pub(super) fn gate(&self) -> &Gate {
        match self {
            Ops::Gated(r) => r.gate(),
            Ops::Ungated { gate, .. } => gate,
        }
    }

    /// Enters, for a handler: `None` once the removal has started.
    #[inline]
    pub(super) fn enter(&self) -> Option<Entered<'_, F>> {
        match self {
            Ops::Gated(r) => r.try_access().map(Entered::Gated),
            Ops::Ungated { gate, .. } if gate.is_killed() => None,
            Ops::Ungated { ops, .. } => Some(Entered::Ungated(ops)),
        }
    }

    /// Enters, for the release of a file at its last close: an ungated
    /// node's operations release its files even after its removal (see
    /// "Ungated nodes" in the module above); a gated node's removal releases
    /// them itself, so this is `None` once it has started.
    pub(super) fn enter_for_release(&self) -> Option<Entered<'_, F>> {
        match self {
            Ops::Gated(r) => r.try_access().map(Entered::Gated),
            Ops::Ungated { ops, .. } => Some(Entered::Ungated(ops)),
        }
    }
}

impl<F> Deref for Entered<'_, F> {
    type Target = F;
    #[inline]
    fn deref(&self) -> &F {
        match self {
            Entered::Gated(g) => g,
            Entered::Ungated(ops) => ops,
        }
    }
}
