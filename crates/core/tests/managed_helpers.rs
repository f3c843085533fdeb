//! The managed helpers a driver gets from its binding: delayed work, a
//! bound thread, the driver's debugfs directory, a flush handler, and the
//! file position a node declares.

use devlife_core::fops::FlushFn;
use devlife_core::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// A hang guard, not a timing target.
const GUARD: Duration = Duration::from_secs(60);

fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + GUARD;
    while !cond() {
        assert!(Instant::now() < end, "never happened: {what}");
        std::thread::yield_now();
    }
}

type Setup = Box<dyn Fn(&Bound<'_>) -> KResult<()> + Send + Sync>;

/// A driver whose probe runs `setup`.
struct Probe(Setup);

impl Driver for Probe {
    type Data = ();
    fn name(&self) -> &str {
        "helper"
    }
    fn id_table(&self) -> &[&str] {
        &["helper"]
    }
    fn probe(&self, dev: &Bound<'_>) -> KResult<()> {
        (self.0)(dev)
    }
}

fn system_with(setup: impl Fn(&Bound<'_>) -> KResult<()> + Send + Sync + 'static) -> (System, Bus) {
    let sys = System::new();
    let bus = sys.bus_register("platform").unwrap();
    bus.register_driver(Probe(Box::new(setup))).unwrap();
    (sys, bus)
}

#[test]
fn delayed_work_runs_once_per_schedule_and_not_after_unbind() {
    let runs = Arc::new(AtomicU64::new(0));
    let slot: Arc<Mutex<Option<DelayedWork>>> = Arc::default();
    let (r, s) = (runs.clone(), slot.clone());
    let (_sys, bus) = system_with(move |dev| {
        let r = r.clone();
        let w = devm_delayed_work_autocancel(dev, PENDING_WORK, move || {
            r.fetch_add(1, Ordering::SeqCst);
        })?;
        *s.lock().unwrap() = Some(w);
        Ok(())
    });
    bus.add_device("d0", "helper").unwrap();
    let w = slot.lock().unwrap().clone().unwrap();

    // schedule: once; a second schedule while pending does nothing.
    assert!(w.schedule(Duration::from_millis(1)));
    until("the first run", || runs.load(Ordering::SeqCst) == 1);
    assert!(!w.is_pending());
    assert!(w.schedule(GUARD));
    assert!(!w.schedule(Duration::ZERO), "pending: not scheduled again");
    // modify: pending or not, runs after the new delay.
    assert!(w.modify(Duration::ZERO), "it was pending");
    until("the modified run", || runs.load(Ordering::SeqCst) == 2);
    // cancel: the pending run never happens.
    assert!(w.schedule(GUARD));
    assert!(w.cancel());
    assert!(!w.cancel());

    // Pending at unbind: cancelled, and the work's thread is gone when the
    // unbind returns, so nothing is left that could run the item, however
    // long one waited; afterwards scheduling does nothing.
    assert_eq!(threads_named(PENDING_WORK), 1);
    assert!(w.schedule(GUARD));
    bus.unbind("d0", None).unwrap();
    assert_eq!(threads_named(PENDING_WORK), 0, "the work's thread outlived the unbind");
    assert!(!w.is_pending());
    assert!(!w.schedule(Duration::ZERO));
    assert!(!w.modify(Duration::ZERO));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// The thread name of the work item above (unique in this test binary).
const PENDING_WORK: &str = "mh-pending-work";

/// Threads of this process named `name`.
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

/// The scheduler state of thread `tid` of this process (`R`, `S`, `D`, ...;
/// `None` once it has exited).
fn thread_state(tid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    // `pid (comm) state ...`: the comm may hold spaces and parentheses.
    stat.rsplit_once(") ")?.1.chars().next()
}

#[test]
fn unbind_waits_for_a_running_work_item() {
    let (entered_tx, entered_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = Arc::new(Mutex::new(go_rx));
    let done = Arc::new(AtomicU64::new(0));
    let d = done.clone();
    let (_sys, bus) = system_with(move |dev| {
        let (tx, rx, d) = (entered_tx.clone(), go_rx.clone(), d.clone());
        let w = devm_delayed_work_autocancel(dev, "slow", move || {
            tx.send(()).unwrap();
            let _ = rx.lock().unwrap().recv();
            d.store(1, Ordering::SeqCst);
        })?;
        w.schedule(Duration::ZERO);
        Ok(())
    });
    bus.add_device("d0", "helper").unwrap();
    entered_rx.recv_timeout(GUARD).unwrap();
    let (tid_tx, tid_rx) = mpsc::channel();
    let unbinder = {
        let (bus, done) = (bus.clone(), done.clone());
        std::thread::spawn(move || {
            tid_tx.send(rustix::thread::gettid().as_raw_nonzero().get()).unwrap();
            bus.unbind("d0", None).unwrap();
            // What the run had done when the unbind returned.
            done.load(Ordering::SeqCst)
        })
    };
    let tid = tid_rx.recv_timeout(GUARD).unwrap();
    // The unbind started (the device has no driver any more), and then
    // either went to sleep waiting for the run or, if it did not wait,
    // returned: only then is the run let go.
    until("the unbind to start", || bus.device("d0").is_some_and(|d| d.driver_name().is_none()));
    until("the unbind to wait or return", || matches!(thread_state(tid), Some('S') | None));
    go_tx.send(()).unwrap();
    assert_eq!(unbinder.join().unwrap(), 1, "the unbind returned only after the run ended");
}

#[test]
fn a_bound_thread_may_unbind_its_own_device() {
    let (_sys, bus) = system_with(|dev| {
        let me = dev.device().downgrade();
        devm_kthread_run(dev, "self-unbind", move |stop| {
            if let Some(d) = me.upgrade() {
                // Deferred: joining this thread from here would deadlock.
                d.unbind().unwrap();
            }
            while stop.sleep(Duration::from_millis(1)) {}
        })
        .map_err(Errno::from)
    });
    let dev = bus.add_device("d0", "helper").unwrap();
    until("the thread's unbind completes", || dev.driver_name().is_none());
}

#[test]
fn the_driver_debugfs_directory_is_shared_and_goes_with_the_driver() {
    let (sys, bus) = system_with(|dev| {
        let dir = dev.driver_debugfs()?;
        debugfs::devm_create_dir(dev, &dir, dev.name())?;
        Ok(())
    });
    bus.add_device("d0", "helper").unwrap();
    bus.add_device("d1", "helper").unwrap();
    let dir = sys.debugfs().child("helper").expect("debug/helper");
    let mut names: Vec<_> = dir.children().iter().map(|c| c.name().to_owned()).collect();
    names.sort();
    assert_eq!(names, ["d0", "d1"]);
    bus.unbind("d0", None).unwrap();
    assert!(dir.child("d0").is_none(), "a device's entries go at its unbind");
    assert!(sys.debugfs().child("helper").is_some(), "the driver's stay");
    bus.unregister_driver("helper").unwrap();
    assert!(sys.debugfs().child("helper").is_none(), "removed with the driver");
    assert!(dir.is_removed());
}

/// A node that counts flushes.
struct Flushing(Arc<AtomicU64>);

impl Flushing {
    fn count(&self, _file: &(), _cx: &OpCtx<'_>) -> KResult<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl FileOperations for Flushing {
    type File = ();
    const FLUSH: Option<FlushFn<Self>> = Some(Self::count);
    fn open(&self, _cx: &OpCtx<'_>) -> KResult<()> {
        Ok(())
    }
}

/// A node with no flush and a fixed size.
struct Sized4k;

impl FileOperations for Sized4k {
    type File = ();
    const LLSEEK: Llseek = Llseek::Fixed(4096);
    fn open(&self, _cx: &OpCtx<'_>) -> KResult<()> {
        Ok(())
    }
}

#[test]
fn flush_is_called_exactly_when_the_driver_has_one() {
    let flushes = Arc::new(AtomicU64::new(0));
    let f = flushes.clone();
    let (sys, bus) = system_with(move |dev| {
        let region = dev.system().alloc_chrdev_region(0, 2, "helper")?;
        let (a, b) = (region.first(), region.devt(1).ok_or(Errno::ENOSPC)?);
        dev.devres().add_or_reset("region", move || drop(region))?;
        devm_cdev_device_add(dev, Cdev::new(Flushing(f.clone())), DeviceNode::new("flushing", a))?;
        devm_cdev_device_add(dev, Cdev::new(Sized4k), DeviceNode::new("sized", b))?;
        Ok(())
    });
    bus.add_device("d0", "helper").unwrap();
    let c = Caller::default();
    let flushing = sys.dev_lookup("flushing").unwrap().node;
    let sized = sys.dev_lookup("sized").unwrap().node;
    let file = flushing.open(&c).unwrap();
    assert!(file.has_flush());
    file.flush(&c).unwrap();
    file.flush(&c).unwrap();
    assert_eq!(flushes.load(Ordering::SeqCst), 2);
    let other = sized.open(&c).unwrap();
    assert!(!other.has_flush());
    other.flush(&c).unwrap();

    // The declared position: the stream default, and the fixed size.
    assert_eq!(file.llseek(), Llseek::Stream);
    assert!(!file.llseek().has_position());
    assert_eq!(sized.llseek(), Llseek::Fixed(4096));
    assert_eq!(other.llseek().size(), 4096);
    assert!(other.llseek().seekable());
}

#[test]
fn a_bound_thread_runs_on_every_cpu_of_the_process() {
    use rustix::thread::{CpuSet, Pid, sched_getaffinity, sched_setaffinity};
    let main = sched_getaffinity(Pid::from_raw(std::process::id() as i32)).unwrap();
    let Some(first) = (0..CpuSet::MAX_CPU).find(|&c| main.is_set(c)) else { return };
    if main.count() < 2 {
        // Nothing to tell apart on one CPU.
        return;
    }
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let (_sys, bus) = system_with(move |dev| {
        let tx = tx.lock().unwrap().clone();
        devm_kthread_run(dev, "where", move |stop| {
            let _ = tx.send(sched_getaffinity(None).map(|s| s.count()));
            while stop.sleep(Duration::from_millis(1)) {}
        })
        .map_err(Errno::from)
    });
    // The probe runs on this thread, pinned to one CPU, as a transport's
    // pinned worker would run it.
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut one = CpuSet::new();
            one.set(first);
            sched_setaffinity(None, &one).unwrap();
            bus.add_device("d0", "helper").unwrap();
        });
    });
    let cpus = rx.recv_timeout(GUARD).unwrap().unwrap();
    assert_eq!(cpus, main.count(), "the thread runs where the process may, not where its creator was pinned");
    bus.unbind("d0", None).unwrap();
}
