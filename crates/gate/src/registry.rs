//! Per-thread counter records: where the gate's fast path writes.
//!
//! Every thread that enters a gate owns one [`Record`]: a two-level table of
//! [`Slot`]s indexed by the gate's index. Only the owning thread writes its
//! slots, so entering and leaving a gate are a plain load and store on memory
//! no other thread writes (no shared cache line is written on the fast path,
//! the property the kernel's per-CPU refcounts have). A drainer reads every
//! record's slot for one gate.
//!
//! A slot holds two monotonic counters, `enters` and `exits`, as SRCU does:
//! the number of guards inside is `sum(enters) - sum(exits)`. Splitting them
//! keeps guards droppable in any order, on any nesting, and removes the
//! load-store dependency between an enter and the next exit.
//!
//! # Invariants
//!
//! - Records are never freed: they are leaked once and reused. A thread that
//!   exits with every slot balanced (`enters == exits`) marks its record
//!   `FREE` for the next new thread; one that exits with a guard still
//!   counted (a guard leaked with `mem::forget`) marks it `ZOMBIE`: drainers
//!   keep counting it and nobody reuses it. Thread exit takes no lock. Either way a `&'static Slot` held by a guard
//!   stays valid.
//! - A gate index is used by at most one live gate. Freed indices are reused
//!   only when every record's slot for them is balanced.

use crate::primitive::{AtomicPtr, AtomicU32, AtomicUsize, Mutex, Ordering, global, lock, thread_local};
use std::cell::Cell;
use std::ptr;

/// Slots per chunk (one chunk is allocated per 256 consecutive gate indices
/// a thread touches). Shrunk under loom so the model crosses chunk borders.
#[cfg(not(loom))]
const CHUNK: usize = 256;
#[cfg(loom)]
const CHUNK: usize = 2;

/// Chunks per record: `CHUNK * CHUNKS` gates can use per-thread slots at once;
/// further gates use their shared slot.
#[cfg(not(loom))]
const CHUNKS: usize = 1024;
#[cfg(loom)]
const CHUNKS: usize = 2;

/// The largest per-thread index plus one.
pub(crate) const CAPACITY: usize = CHUNK * CHUNKS;

/// One thread's counters for one gate.
#[derive(Default)]
pub(crate) struct Slot {
    pub(crate) enters: AtomicUsize,
    pub(crate) exits: AtomicUsize,
}

impl Slot {
    pub(crate) fn new() -> Self {
        Self { enters: AtomicUsize::new(0), exits: AtomicUsize::new(0) }
    }

    /// Guards counted in this slot and not yet dropped.
    ///
    /// Reads `exits` before `enters`: an exit is always preceded by its enter,
    /// so reading them in this order can over-count a guard that is leaving,
    /// never under-count one that is inside.
    pub(crate) fn inside(&self) -> usize {
        let x = self.exits.load(Ordering::Acquire);
        let e = self.enters.load(Ordering::Acquire);
        e.wrapping_sub(x)
    }
}

struct Chunk {
    slots: [Slot; CHUNK],
}

/// One thread's table of slots.
///
/// Fixed-size arrays indexed with masks, so the fast path has no bounds
/// checks (gate indices are `< CAPACITY` by construction in `alloc_index`).
pub(crate) struct Record {
    chunks: [AtomicPtr<Chunk>; CHUNKS],
    /// `OWNED`, `FREE` or `ZOMBIE`.
    state: AtomicU32,
    /// The owning thread's name, for diagnosing stuck drains.
    owner: Mutex<String>,
}

impl Record {
    fn new() -> Self {
        Self {
            chunks: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
            state: AtomicU32::new(OWNED),
            owner: Mutex::new(String::new()),
        }
    }

    /// This record's slot for gate index `idx`, if its chunk exists.
    pub(crate) fn get(&self, idx: usize) -> Option<&Slot> {
        let c = self.chunks[(idx / CHUNK) % CHUNKS].load(Ordering::Acquire);
        // SAFETY: a non-null chunk pointer was produced by `Box::into_raw` in
        // `slot_or_alloc` and published with `Release`; chunks are never
        // freed (records are never freed), so the reference is valid.
        let c = unsafe { c.as_ref()? };
        Some(&c.slots[idx % CHUNK])
    }

    /// This record's slot for `idx`, allocating its chunk. Owner thread only.
    fn slot_or_alloc(&'static self, idx: usize) -> &'static Slot {
        let cell = &self.chunks[(idx / CHUNK) % CHUNKS];
        let mut c = cell.load(Ordering::Relaxed);
        if c.is_null() {
            let chunk = Box::new(Chunk { slots: std::array::from_fn(|_| Slot::new()) });
            c = Box::into_raw(chunk);
            // Release: a drainer that sees the pointer sees initialised slots.
            cell.store(c, Ordering::Release);
        }
        // SAFETY: `c` is non-null, came from `Box::into_raw` above or earlier,
        // and is never freed (see the type's invariants).
        let c: &'static Chunk = unsafe { &*c };
        &c.slots[idx % CHUNK]
    }

    fn balanced(&self) -> bool {
        self.chunks.iter().all(|c| {
            let c = c.load(Ordering::Acquire);
            // SAFETY: as in `get`.
            match unsafe { c.as_ref() } {
                None => true,
                Some(c) => c.slots.iter().all(|s| s.inside() == 0),
            }
        })
    }

    pub(crate) fn owner(&self) -> String {
        lock(&self.owner).clone()
    }

    pub(crate) fn is_zombie(&self) -> bool {
        self.state.load(Ordering::Relaxed) == ZOMBIE
    }
}

/// Record states.
const OWNED: u32 = 0;
const FREE: u32 = 1;
const ZOMBIE: u32 = 2;

struct Registry {
    /// Every record ever created (owned, free and zombie).
    all: Vec<&'static Record>,
    /// Gate indices: the next never-used one and the freed ones.
    next_index: usize,
    free_indices: Vec<usize>,
}

global! {
    static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
        all: Vec::new(),
        next_index: 0,
        free_indices: Vec::new(),
    });
}

/// Marker for "this thread's record was returned at thread exit".
const GONE: usize = 1;

#[cfg(not(loom))]
thread_local! {
    /// The current thread's record: null before first use, [`GONE`] after the
    /// thread-local destructors ran. `const`-initialised and without a
    /// destructor, so reading it is one thread-pointer-relative load.
    static CURRENT: Cell<*const Record> = const { Cell::new(ptr::null()) };
    static OWNER: Owner = const { Owner(Cell::new(None)) };
}
#[cfg(loom)]
thread_local! {
    static CURRENT: Cell<*const Record> = Cell::new(ptr::null());
    static OWNER: Owner = Owner(Cell::new(None));
}

/// Returns the current thread's record to the pool when the thread exits.
struct Owner(Cell<Option<&'static Record>>);

impl Drop for Owner {
    fn drop(&mut self) {
        let Some(rec) = self.0.take() else { return };
        // Later gate entries on this thread (from other thread-local
        // destructors) use the gate's shared slot.
        let _ = CURRENT.try_with(|c| c.set(GONE as *const Record));
        // Release: a thread that takes the record (Acquire in `register`)
        // starts from our final counts.
        let state = if rec.balanced() { FREE } else { ZOMBIE };
        rec.state.store(state, Ordering::Release);
    }
}

/// The calling thread's slot for gate index `idx`, or `None` if the thread
/// cannot have one (its thread-locals are being destroyed).
#[inline(always)]
pub(crate) fn current_slot(idx: usize) -> Option<&'static Slot> {
    let rec = CURRENT.try_with(Cell::get).ok()?;
    if (rec as usize) > GONE {
        // SAFETY: `rec` was stored by `register` from a leaked `&'static
        // Record`; records are never freed.
        let rec: &'static Record = unsafe { &*rec };
        if let Some(s) = rec.get_owned(idx) {
            return Some(s);
        }
        return Some(rec.slot_or_alloc(idx));
    }
    slow_slot(rec, idx)
}

impl Record {
    /// Owner-thread lookup: the chunk pointer was written by this thread, so a
    /// relaxed load suffices.
    #[inline(always)]
    fn get_owned(&'static self, idx: usize) -> Option<&'static Slot> {
        let c = self.chunks[(idx / CHUNK) % CHUNKS].load(Ordering::Relaxed);
        // SAFETY: as in `get`; the owner itself published the pointer.
        let c: &'static Chunk = unsafe { c.as_ref()? };
        Some(&c.slots[idx % CHUNK])
    }
}

#[cold]
fn slow_slot(rec: *const Record, idx: usize) -> Option<&'static Slot> {
    if rec as usize == GONE {
        return None;
    }
    let rec = register()?;
    Some(rec.slot_or_alloc(idx))
}

/// Gives the calling thread a record. `None` if its thread-locals are gone.
fn register() -> Option<&'static Record> {
    let rec = {
        let mut reg = lock(&REGISTRY);
        let reuse =
            reg.all.iter().copied().find(|r| {
                r.state.compare_exchange(FREE, OWNED, Ordering::Acquire, Ordering::Relaxed).is_ok()
            });
        match reuse {
            Some(r) => r,
            None => {
                let r: &'static Record = Box::leak(Box::new(Record::new()));
                reg.all.push(r);
                r
            }
        }
    };
    *lock(&rec.owner) = thread_name();
    if OWNER.try_with(|o| o.0.set(Some(rec))).is_err() {
        // Too late to register a destructor: give the record back.
        rec.state.store(FREE, Ordering::Release);
        return None;
    }
    CURRENT.try_with(|c| c.set(rec)).ok()?;
    Some(rec)
}

#[cfg(not(loom))]
fn thread_name() -> String {
    let t = std::thread::current();
    format!("{} ({:?})", t.name().unwrap_or("<unnamed>"), t.id())
}
#[cfg(loom)]
fn thread_name() -> String {
    String::from("loom thread")
}

/// The calling thread's slot for `idx` if it already has one (no allocation).
pub(crate) fn current_slot_if_any(idx: usize) -> Option<&'static Slot> {
    let rec = CURRENT.try_with(Cell::get).ok()?;
    if (rec as usize) <= GONE {
        return None;
    }
    // SAFETY: as in `current_slot`.
    let rec: &'static Record = unsafe { &*rec };
    rec.get(idx)
}

/// Calls `f` with every record's slot for `idx` (and its record), under the
/// registry lock. Records created after the lock is taken are not visited;
/// see `Gate::inside` for why that is sound.
pub(crate) fn for_each_slot(idx: usize, mut f: impl FnMut(&Record, &Slot)) {
    let reg = lock(&REGISTRY);
    for rec in &reg.all {
        if let Some(s) = rec.get(idx) {
            f(rec, s);
        }
    }
}

/// Sums the guards inside gate index `idx` over all records.
///
/// All `exits` are read before all `enters` (a guard that moved between
/// records is impossible for per-thread guards, but the order keeps the sum
/// from under-counting even then).
pub(crate) fn inside(idx: usize) -> usize {
    let reg = lock(&REGISTRY);
    let mut x = 0usize;
    for rec in &reg.all {
        if let Some(s) = rec.get(idx) {
            x = x.wrapping_add(s.exits.load(Ordering::Acquire));
        }
    }
    let mut e = 0usize;
    for rec in &reg.all {
        if let Some(s) = rec.get(idx) {
            e = e.wrapping_add(s.enters.load(Ordering::Acquire));
        }
    }
    e.wrapping_sub(x)
}

/// Allocates a gate index, or `None` when all per-thread slots are in use.
pub(crate) fn alloc_index() -> Option<usize> {
    let mut reg = lock(&REGISTRY);
    if let Some(i) = reg.free_indices.pop() {
        return Some(i);
    }
    if reg.next_index < CAPACITY {
        reg.next_index += 1;
        return Some(reg.next_index - 1);
    }
    None
}

/// Frees a gate index, unless a leaked guard still counts in it (then the
/// index is retired for good, so no later gate inherits the imbalance).
pub(crate) fn free_index(idx: usize) {
    if inside(idx) == 0 {
        lock(&REGISTRY).free_indices.push(idx);
    }
}
