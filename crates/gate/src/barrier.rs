//! Asymmetric memory barriers: the system-call seam of the gate.
//!
//! The gate's fast path orders "store my counter, then load the gate's state"
//! (and the reverse on the killing side) without a hardware fence. It issues a
//! `light` barrier, which is only a compiler fence, and the rare side (kill)
//! issues a `heavy` barrier: `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`,
//! which runs a full memory barrier on every CPU currently running a thread of
//! this process. Together a light and a heavy barrier behave like a pair of
//! `fence(SeqCst)` (the liburcu "memb" flavour, folly's
//! `asymmetricLightBarrier`/`asymmetricHeavyBarrier`).
//!
//! Where the kernel refuses `membarrier` (seccomp, old kernels, or the
//! `DEVLIFE_GATE_NO_MEMBARRIER` environment variable), both sides fall back to
//! `fence(SeqCst)`, which is correct everywhere and slower on the fast path.
//! The choice is made once, before the first gate exists, and never changes.
//!
//! Under `--cfg loom` both barriers are `fence(SeqCst)`: loom cannot model an
//! inter-processor interrupt, so the model checks the fallback protocol, whose
//! orderings are the ones the asymmetric pair stands in for.

use crate::primitive::{Ordering, fence};

#[cfg(not(loom))]
mod imp {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Whether the asymmetric (membarrier) mode is in use.
    static ASYMMETRIC: AtomicBool = AtomicBool::new(false);
    static INIT: OnceLock<bool> = OnceLock::new();

    pub(super) fn init() -> bool {
        *INIT.get_or_init(|| {
            let ok = std::env::var_os("DEVLIFE_GATE_NO_MEMBARRIER").is_none() && register();
            ASYMMETRIC.store(ok, Ordering::Relaxed);
            ok
        })
    }

    fn register() -> bool {
        use rustix::thread::{MembarrierCommand, membarrier, membarrier_query};
        let q = membarrier_query();
        q.contains_command(MembarrierCommand::PrivateExpedited)
            && membarrier(MembarrierCommand::RegisterPrivateExpedited).is_ok()
            // Prove the command works before relying on it.
            && membarrier(MembarrierCommand::PrivateExpedited).is_ok()
    }

    #[inline(always)]
    pub(super) fn asymmetric() -> bool {
        // Relaxed: written once inside `INIT` before any gate exists; every
        // gate constructor calls `init()`, whose `OnceLock` read synchronises.
        ASYMMETRIC.load(Ordering::Relaxed)
    }

    pub(super) fn membarrier() {
        use rustix::thread::{MembarrierCommand, membarrier};
        // Registered in `init`; the command cannot fail after that. Should it
        // fail anyway, the caller's own `fence(SeqCst)` still runs, but the
        // readers' compiler fences would then be insufficient, so abort loudly
        // rather than continue without the ordering the gate depends on.
        if let Err(e) = membarrier(MembarrierCommand::PrivateExpedited) {
            panic!("membarrier(PRIVATE_EXPEDITED) failed after registration: {e}");
        }
    }
}

#[cfg(loom)]
mod imp {
    pub(super) fn init() -> bool {
        false
    }
    #[inline(always)]
    pub(super) fn asymmetric() -> bool {
        false
    }
    pub(super) fn membarrier() {}
}

/// Chooses the barrier mode. Returns `true` if the asymmetric mode is used.
/// Called by every gate constructor; cheap after the first call.
pub(crate) fn init() -> bool {
    imp::init()
}

/// Whether the asymmetric (membarrier) mode is in use in this process.
pub fn is_asymmetric() -> bool {
    imp::asymmetric()
}

/// The fast-path side of an asymmetric barrier pair: a compiler fence.
///
/// Pairs with [`heavy`]: for a thread doing `store A; light(); load B` and
/// another doing `store B; heavy(); load A`, at least one of the loads sees
/// the other thread's store, provided the process is in the asymmetric mode
/// ([`is_asymmetric`]). Otherwise the caller must add `fence(SeqCst)`
/// itself; the gate does so through its `FENCE` state bit, which keeps the
/// mode test off the fast path.
#[inline(always)]
pub(crate) fn light() {
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
}

/// The slow-path side of an asymmetric barrier pair (see [`light`]).
pub(crate) fn heavy() {
    fence(Ordering::SeqCst);
    if imp::asymmetric() {
        imp::membarrier();
    }
}
