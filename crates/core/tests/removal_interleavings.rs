//! A removal requested from inside the binding it removes, in every order
//! of its two critical steps against every other remover.
//!
//! Whoever removes a binding takes it from the device, then drains its
//! handlers. A handler asking for the removal of its own binding does so
//! either before the binding is taken (it must not wait for itself: the
//! unbind is deferred to a worker) or after, while a remover is draining
//! and waiting for this very handler (it must not wait for that remover:
//! the removal under way completes once the handler returns). Each test
//! below forces one of these orders with handshakes (a handler that stays
//! inside until told, "the binding has been taken" observed), for every
//! kind of remover (`unbind`, `delete_device`, `unregister_driver`, the
//! deferred worker itself) and every kind of request from inside (`unbind`,
//! `delete_device`). Waits are hang guards (60 s), not timings.

use devlife_core::fops::{FileOperations, Ioctl, KResult, OpCtx};
use devlife_core::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const C: Caller<'static> =
    Caller { creds: Credentials { uid: 0, gid: 0, pid: 0 }, nonblock: false, interrupt: None };
const HANG: Duration = Duration::from_secs(60);

fn until(mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < HANG, "condition never held");
        thread::yield_now();
    }
}

/// Permits handed to handlers waiting inside (not a cancellable wait: the
/// handler holds its removal up, as busy hardware would).
#[derive(Default)]
struct Permits {
    n: Mutex<usize>,
    cv: Condvar,
    /// Handlers that reached `take` (inside their handler, past the gate).
    arrived: AtomicUsize,
}

impl Permits {
    fn give(&self) {
        *self.n.lock().unwrap() += 1;
        self.cv.notify_all();
    }
    fn take(&self) {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        let mut n = self.n.lock().unwrap();
        while *n == 0 {
            n = self.cv.wait(n).unwrap();
        }
        *n -= 1;
    }
}

/// Waits until `n` handlers are inside and waiting for a permit (not
/// `node.inside() == n`, which also counts an entry a removal can still
/// turn away: see `Gate::inside`; CI saw it once, round 13 of 200).
fn until_waiting(r: &Rig, n: usize) {
    until(|| r.permits.arrived.load(Ordering::SeqCst) == n);
}

/// What a handler asks for once it is let go.
const SELF_UNBIND: u64 = 1;
const SELF_DELETE: u64 = 2;
/// Binding its own device again (not a removal, but it waits for the same
/// lifecycle lock).
const SELF_BIND: u64 = 3;
const GO: IoctlCmd = IoctlCmd::io(b'T', 1);

struct Ops {
    dev: WeakDevice,
    permits: Arc<Permits>,
}

impl FileOperations for Ops {
    type File = ();
    fn open(&self, _: &OpCtx<'_>) -> KResult<()> {
        Ok(())
    }
    fn ioctl(&self, _: &(), _: &OpCtx<'_>, io: &mut Ioctl<'_>) -> KResult<i64> {
        if io.cmd() != GO {
            return Err(Errno::ENOTTY);
        }
        self.permits.take();
        let dev = self.dev.upgrade().ok_or(Errno::ENODEV)?;
        let r = match io.arg() {
            SELF_UNBIND => dev.unbind(),
            SELF_DELETE => {
                let bus = dev.system().and_then(|s| s.bus(dev.bus_name())).ok_or(Errno::ENODEV)?;
                bus.delete_device(dev.name())
            }
            SELF_BIND => {
                let bus = dev.system().and_then(|s| s.bus(dev.bus_name())).ok_or(Errno::ENODEV)?;
                bus.bind(dev.name(), "t").map(|()| Unbound::Complete)
            }
            _ => return Err(Errno::EINVAL),
        };
        match r? {
            Unbound::Deferred => Ok(1),
            Unbound::Complete => Ok(0),
        }
    }
}

struct Drv {
    permits: Arc<Permits>,
    probes: Arc<AtomicUsize>,
    removes: Arc<AtomicUsize>,
}

impl Driver for Drv {
    type Data = ();
    fn name(&self) -> &str {
        "t"
    }
    fn id_table(&self) -> &[&str] {
        &["t"]
    }
    fn probe(&self, dev: &Bound<'_>) -> KResult<()> {
        self.probes.fetch_add(1, Ordering::Relaxed);
        let ops = Ops { dev: dev.device().downgrade(), permits: self.permits.clone() };
        devm_cdev_device_add(dev, Cdev::new(ops), DeviceNode::new(dev.name(), DevT::new(300, 0)))?;
        Ok(())
    }
    fn remove(&self, _: &Bound<'_>, _: &()) {
        self.removes.fetch_add(1, Ordering::Relaxed);
    }
}

struct Rig {
    sys: System,
    bus: Bus,
    permits: Arc<Permits>,
    probes: Arc<AtomicUsize>,
    removes: Arc<AtomicUsize>,
}

fn rig() -> Rig {
    let sys = System::new();
    let bus = sys.bus_register("b").unwrap();
    let permits = Arc::new(Permits::default());
    let (probes, removes) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    bus.register_driver(Drv { permits: permits.clone(), probes: probes.clone(), removes: removes.clone() })
        .unwrap();
    bus.add_device("d0", "t").unwrap();
    Rig { sys, bus, permits, probes, removes }
}

/// A thread inside `GO` with action `arg`; yields its ioctl result.
fn inside(r: &Rig, arg: u64) -> mpsc::Receiver<KResult<i64>> {
    let f = r.sys.dev_lookup("d0").unwrap().node.open(&C).unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let res = f.ioctl(GO, arg, &[], &mut Vec::new(), &C);
        let _ = tx.send(res);
        drop(f);
    });
    rx
}

/// The other removers.
#[derive(Debug, Clone, Copy)]
enum Remover {
    Unbind,
    Delete,
    UnregisterDriver,
}

fn remove_from_outside(r: &Rig, how: Remover) -> mpsc::Receiver<()> {
    let bus = r.bus.clone();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = match how {
            Remover::Unbind => bus.unbind("d0", None).map(drop),
            Remover::Delete => bus.delete_device("d0").map(drop),
            Remover::UnregisterDriver => bus.unregister_driver("t"),
        };
        let _ = tx.send(());
    });
    rx
}

/// The device's binding has been taken by a remover (who now drains).
fn binding_taken(r: &Rig, node: &NodeRef) -> bool {
    r.bus.device("d0").is_none_or(|d| d.binding_id().is_none()) && node.is_removed()
}

/// Whether a deferred-unbind worker thread of this process is alive
/// (threads are named `devlife-unbind:<device>`, cut to 15 bytes).
fn unbind_worker_alive() -> bool {
    std::fs::read_dir("/proc/self/task").unwrap().flatten().any(|t| {
        std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("devlife-unbind"))
    })
}

/// Every binding made was torn down exactly once, and nothing is left
/// running or open.
fn settled(r: &Rig) {
    until(|| r.sys.stats().inflight_ops == 0 && r.sys.dev_lookup("d0").is_none());
    until(|| r.removes.load(Ordering::Relaxed) == r.probes.load(Ordering::Relaxed));
    // The removal's rundown releases the files still open.
    until(|| r.sys.stats().open_files == 0 && !unbind_worker_alive());
    assert_eq!(r.sys.stats().violations, 0);
}

#[test]
fn request_before_the_binding_is_taken_is_deferred() {
    for action in [SELF_UNBIND, SELF_DELETE] {
        let r = rig();
        let h = inside(&r, action);
        until_waiting(&r, 1);
        r.permits.give();
        assert_eq!(h.recv_timeout(HANG).expect("the handler returned"), Ok(1), "deferred");
        settled(&r);
        assert_eq!(r.removes.load(Ordering::Relaxed), 1);
    }
}

#[test]
fn request_while_another_remover_drains_it_returns_at_once() {
    for how in [Remover::Unbind, Remover::Delete, Remover::UnregisterDriver] {
        for action in [SELF_UNBIND, SELF_DELETE] {
            let r = rig();
            let node = r.sys.dev_lookup("d0").unwrap().node;
            let h = inside(&r, action);
            until_waiting(&r, 1);
            let outside = remove_from_outside(&r, how);
            until(|| binding_taken(&r, &node));
            // The remover waits for this handler; the handler must not wait
            // for the remover.
            r.permits.give();
            let got = h.recv_timeout(HANG).unwrap_or_else(|_| panic!("{how:?}/{action}: handler hung"));
            match (action, got) {
                (_, Ok(1)) => {}
                // Deleting a device another thread deleted first.
                (SELF_DELETE, Err(Errno::ENODEV)) => {}
                (_, other) => panic!("{how:?}/{action}: {other:?}"),
            }
            outside.recv_timeout(HANG).unwrap_or_else(|_| panic!("{how:?}/{action}: remover hung"));
            settled(&r);
            assert_eq!(r.removes.load(Ordering::Relaxed), 1, "one teardown");
        }
    }
}

#[test]
fn binding_again_from_inside_never_waits_for_itself() {
    // Before the binding is taken: bound already. While a remover drains
    // it: that remover waits for this handler, so the bind cannot wait for
    // the remover.
    let r = rig();
    let h = inside(&r, SELF_BIND);
    until_waiting(&r, 1);
    r.permits.give();
    assert_eq!(h.recv_timeout(HANG).expect("the handler returned"), Err(Errno::EBUSY));
    for how in [Remover::Unbind, Remover::Delete, Remover::UnregisterDriver] {
        let r = rig();
        let node = r.sys.dev_lookup("d0").unwrap().node;
        let h = inside(&r, SELF_BIND);
        until_waiting(&r, 1);
        let outside = remove_from_outside(&r, how);
        until(|| binding_taken(&r, &node));
        r.permits.give();
        let got = h.recv_timeout(HANG).unwrap_or_else(|_| panic!("{how:?}: handler hung"));
        assert!(matches!(got, Err(Errno::EDEADLK | Errno::ENODEV)), "{how:?}: {got:?}");
        outside.recv_timeout(HANG).unwrap_or_else(|_| panic!("{how:?}: remover hung"));
        settled(&r);
    }
}

#[test]
fn request_while_the_deferred_worker_drains_it_returns_at_once() {
    // The defect the served tree showed with eight threads: the first
    // handler's request starts the worker, which takes the binding and
    // waits for the second handler; the second one's request must not wait
    // for the worker's lifecycle lock.
    for (first, second) in
        [(SELF_UNBIND, SELF_UNBIND), (SELF_UNBIND, SELF_DELETE), (SELF_DELETE, SELF_UNBIND)]
    {
        let r = rig();
        let node = r.sys.dev_lookup("d0").unwrap().node;
        let h1 = inside(&r, first);
        let h2 = inside(&r, second);
        until_waiting(&r, 2);
        r.permits.give();
        // One of the two took the permit and asked; the other stays inside.
        let (done, other) = loop {
            if let Ok(v) = h1.try_recv() {
                break (v, h2);
            }
            if let Ok(v) = h2.try_recv() {
                break (v, h1);
            }
            thread::yield_now();
        };
        assert_eq!(done, Ok(1), "deferred");
        until(|| binding_taken(&r, &node));
        r.permits.give();
        let got = other.recv_timeout(HANG).expect("the second handler hung");
        assert!(matches!(got, Ok(1) | Err(Errno::ENODEV)), "{got:?}");
        settled(&r);
        assert_eq!(r.removes.load(Ordering::Relaxed), 1, "one teardown");
    }
}

#[test]
fn many_handlers_ask_at_once_one_teardown() {
    // The served tree's reproduction, in process: 8 handlers of one binding
    // released together, each asking to unbind it, 200 times.
    for round in 0..200 {
        let r = rig();
        let hs: Vec<_> = (0..8).map(|_| inside(&r, SELF_UNBIND)).collect();
        until_waiting(&r, 8);
        for _ in 0..8 {
            r.permits.give();
        }
        for h in hs {
            let got = h.recv_timeout(HANG).unwrap_or_else(|_| panic!("round {round}: a handler hung"));
            assert_eq!(got, Ok(1), "round {round}");
        }
        settled(&r);
        assert_eq!(r.removes.load(Ordering::Relaxed), 1);
        // The device can be bound again, and unbound from outside.
        r.bus.bind("d0", "t").unwrap();
        assert_eq!(r.bus.unbind("d0", None), Ok(Unbound::Complete));
    }
}

#[test]
fn a_deferred_unbind_never_ends_a_later_binding() {
    // The worker unbinds the binding it was started for; if that binding
    // ended and the device was bound again first, the new binding stays.
    for _ in 0..100 {
        let r = rig();
        let h = inside(&r, SELF_UNBIND);
        until_waiting(&r, 1);
        let outside = remove_from_outside(&r, Remover::Unbind);
        r.permits.give();
        assert_eq!(h.recv_timeout(HANG).unwrap(), Ok(1));
        outside.recv_timeout(HANG).unwrap();
        until(|| r.bus.device("d0").unwrap().binding_id().is_none());
        // Bound again, perhaps before the worker ran: whichever of the
        // worker and the outside unbind came second must leave it alone.
        until(|| r.bus.bind("d0", "t").is_ok());
        let b = r.bus.device("d0").unwrap().binding_id();
        assert!(b.is_some());
        until(|| !unbind_worker_alive());
        assert_eq!(r.removes.load(Ordering::Relaxed), 1);
        assert_eq!(r.bus.device("d0").unwrap().binding_id(), b, "the new binding stayed");
        r.bus.delete_device("d0").unwrap();
        settled(&r);
    }
}
