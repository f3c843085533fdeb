//! Framework counters (served as `debug/devlife/stats`).

use crate::percpu::PerCpu;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one [`System`](crate::System). Written on open and release
/// only, never on the read/write/ioctl path; those two per CPU, summed
/// when read (Linux's `percpu_counter`): every open and close of every
/// object counts one, from whichever CPU serves it.
#[derive(Debug, Default)]
pub struct Stats {
    lifetimes: PerCpu<Lifetimes>,
    panics: AtomicU64,
    violations: AtomicU64,
}

/// One CPU's share of the open and release counts.
#[derive(Debug, Default)]
struct Lifetimes {
    opens: AtomicU64,
    releases: AtomicU64,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    /// Successful opens, ever.
    pub opens: u64,
    /// Driver releases run, ever (at close or during removal).
    pub releases: u64,
    /// Files open and not yet released (`opens - releases`).
    pub open_files: u64,
    /// Handlers running right now, over every registered object.
    pub inflight_ops: u64,
    /// Async operations waiting right now (futures pending, no thread
    /// inside a handler), over every registered object.
    pub pending_ops: u64,
    /// Handler panics caught (each answered `EIO`).
    pub panics: u64,
    /// Handlers that started after their binding's removal returned
    /// (never, if the removal guarantee holds).
    pub violations: u64,
}

impl Stats {
    pub(crate) fn opened(&self) {
        // Release: pairs with the Acquire loads of `snapshot` (below).
        self.lifetimes.this().opens.fetch_add(1, Ordering::Release);
    }
    pub(crate) fn released(&self) {
        // Release: pairs with the Acquire loads of `snapshot`.
        self.lifetimes.this().releases.fetch_add(1, Ordering::Release);
    }
    pub(crate) fn violated(&self) {
        self.violations.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn panicked(&self) {
        self.panics.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn snapshot(&self, inflight_ops: u64, pending_ops: u64) -> StatsSnapshot {
        // Every CPU's releases first, then every CPU's opens: a release is
        // counted after its open (on whichever CPU), and a release seen by
        // an Acquire load here (paired with the Release increment in
        // `released`) makes the open counted before it visible to the
        // later loads, so this order never shows more releases than opens.
        let releases: u64 = self.lifetimes.iter().map(|c| c.releases.load(Ordering::Acquire)).sum();
        let opens: u64 = self.lifetimes.iter().map(|c| c.opens.load(Ordering::Acquire)).sum();
        StatsSnapshot {
            opens,
            releases,
            open_files: opens.saturating_sub(releases),
            inflight_ops,
            pending_ops,
            panics: self.panics.load(Ordering::Relaxed),
            violations: self.violations.load(Ordering::Relaxed),
        }
    }
}

impl StatsSnapshot {
    /// The `name value` lines of `debug/devlife/stats`.
    pub fn render(&self) -> String {
        format!(
            "opens {}\nreleases {}\nopen_files {}\ninflight_ops {}\npending_ops {}\npanics {}\nviolations {}\n",
            self.opens,
            self.releases,
            self.open_files,
            self.inflight_ops,
            self.pending_ops,
            self.panics,
            self.violations
        )
    }
}
