//! Driver-core behaviour beyond the xyz scenarios: debugfs, attributes,
//! misc devices, regions, names, devres, handler panics, bus errors.

use devlife_core::debugfs::Dentry;
use devlife_core::fops::{FileOperations, KResult, OpCtx, PollMask, PollTable};
use devlife_core::gate::WaitQueue;
use devlife_core::name::NameError;
use devlife_core::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const C: Caller<'static> =
    Caller { creds: Credentials { uid: 0, gid: 0, pid: 0 }, nonblock: false, interrupt: None };

fn until(mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(60), "condition never held");
        thread::yield_now();
    }
}

/// A file whose read blocks until removal, and whose ioctl panics.
struct Sleepy {
    wq: Arc<WaitQueue>,
}

impl FileOperations for Sleepy {
    type File = ();
    fn open(&self, _: &OpCtx<'_>) -> KResult<()> {
        Ok(())
    }
    fn read(&self, _: &(), cx: &OpCtx<'_>, _: &mut [u8], _: u64) -> KResult<usize> {
        cx.wait_event(&self.wq, || false).map(|()| 0)
    }
    fn ioctl(&self, _: &(), _: &OpCtx<'_>, _: &mut Ioctl<'_>) -> KResult<i64> {
        panic!("injected handler panic");
    }
    fn poll(&self, _: &(), _: &OpCtx<'_>, pt: &PollTable<'_>) -> PollMask {
        pt.wait(&self.wq);
        PollMask::NONE
    }
}

#[test]
fn debugfs_removal_codes_and_cancellation() {
    let sys = System::new();
    let dir = sys.debugfs().create_dir("t").unwrap();
    let sub = dir.create_dir("sub").unwrap();
    let wq = Arc::new(WaitQueue::new());
    sub.create_file("sleepy", 0o600, Sleepy { wq: wq.clone() }).unwrap();
    let v = Arc::new(AtomicU64::new(41));
    dir.create_u64("n", 0o644, v.clone()).unwrap();

    let n = sys.debugfs().lookup("t/n").unwrap().node().unwrap();
    let f = n.open(&C).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(f.read(&mut buf, 0, &C), Ok(3));
    assert_eq!(&buf[..3], b"41\n");
    assert_eq!(f.write(b"0x10\n", 0, &C), Ok(5));
    assert_eq!(v.load(Ordering::Relaxed), 16);
    assert_eq!(f.write(b"nope", 0, &C), Err(Errno::EINVAL));
    assert_eq!(v.load(Ordering::Relaxed), 16, "bad input changes nothing");

    let sleepy = sys.debugfs().lookup("t/sub/sleepy").unwrap().node().unwrap();
    let sf = Arc::new(sleepy.open(&C).unwrap());
    let reader = {
        let sf = sf.clone();
        thread::spawn(move || sf.read(&mut [0u8; 4], 0, &C))
    };
    until(|| sleepy.inside() == 1);
    dir.remove(); // recursive; waits for and cancels the sleeping reader
    assert_eq!(reader.join().unwrap(), Err(Errno::EIO), "debugfs's code for a removed file");
    assert_eq!(f.read(&mut buf, 0, &C), Err(Errno::EIO));
    assert_eq!(sf.poll_once(&C, None), PollMask::HUP);
    assert_eq!(n.open(&C).err(), Some(Errno::ENOENT));
    assert!(sys.debugfs().lookup("t").is_none());
    assert!(matches!(dir.create_dir("late"), Err(Error::Removed(_))), "nothing is added under a removed dir");
    assert_eq!(sys.stats().open_files, 0);
}

#[test]
fn handler_panic_is_eio_and_the_object_lives_on() {
    let sys = System::new();
    let wq = Arc::new(WaitQueue::new());
    let d = sys.debugfs().create_file("p", 0o600, Sleepy { wq }).unwrap();
    let f = d.node().unwrap().open(&C).unwrap();
    let cmd = IoctlCmd::io(b'P', 1);
    assert_eq!(f.ioctl(cmd, 0, &[], &mut Vec::new(), &C), Err(Errno::EIO));
    assert_eq!(f.ioctl(cmd, 0, &[], &mut Vec::new(), &C), Err(Errno::EIO));
    assert_eq!(sys.stats().panics, 2);
    assert_eq!(f.poll_once(&C, None), PollMask::NONE, "still served");
    d.remove();
}

#[test]
fn stats_file_counts() {
    let sys = System::new();
    let f = sys.debugfs().lookup("devlife/stats").unwrap().node().unwrap().open(&C).unwrap();
    let mut buf = [0u8; 256];
    let n = f.read(&mut buf, 0, &C).unwrap();
    let text = std::str::from_utf8(&buf[..n]).unwrap();
    assert!(text.contains("opens 1\n"), "{text}");
    assert!(text.contains("open_files 1\n"), "{text}");
    assert!(text.contains("inflight_ops 0\n"), "{text}");
    assert!(text.contains("releases 0\n"), "{text}");
}

struct Plain;
impl Driver for Plain {
    type Data = ();
    fn name(&self) -> &str {
        "plain"
    }
    fn id_table(&self) -> &[&str] {
        &["plain"]
    }
    fn probe(&self, dev: &Bound<'_>) -> KResult<()> {
        let d = dev.device().clone();
        devm_device_create_file(
            dev,
            DeviceAttribute::read_only("name", move || Ok(format!("{}\n", d.name()))),
        )?;
        Ok(())
    }
}

#[test]
fn attributes_removed_with_the_binding() {
    let sys = System::new();
    let bus = sys.bus_register("b").unwrap();
    bus.register_driver(Plain).unwrap();
    let dev = bus.add_device("p0", "plain").unwrap();
    let a = dev.attr("name").unwrap();
    let f = a.open(&C).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(f.read(&mut buf, 0, &C), Ok(3));
    assert_eq!(&buf[..3], b"p0\n");
    assert_eq!(f.write(b"x", 0, &C), Err(Errno::EACCES));
    bus.unbind("p0", None).unwrap();
    assert_eq!(f.read(&mut buf, 0, &C), Err(Errno::ENODEV));
    assert!(dev.attr("name").is_none());
    assert_eq!(a.open(&C).err(), Some(Errno::ENODEV));
}

#[test]
fn bus_errors_change_nothing() {
    let sys = System::new();
    let bus = sys.bus_register("b").unwrap();
    bus.register_driver(Plain).unwrap();
    bus.add_device("p0", "plain").unwrap();
    assert_eq!(Errno::from(bus.bind("p0", "plain").unwrap_err()), Errno::EBUSY);
    assert_eq!(Errno::from(bus.bind("nope", "plain").unwrap_err()), Errno::ENODEV);
    assert_eq!(Errno::from(bus.bind("p0", "nope").unwrap_err()), Errno::ENODEV);
    assert_eq!(Errno::from(bus.add_device("p0", "plain").unwrap_err()), Errno::EEXIST);
    for bad in ["", "a/b", "..", ".", &"x".repeat(256), "a\nb"] {
        assert_eq!(Errno::from(bus.add_device(bad, "plain").unwrap_err()), Errno::EINVAL, "{bad:?}");
    }
    assert_eq!(Errno::from(bus.unbind("nope", None).unwrap_err()), Errno::ENODEV);
    bus.add_device("q0", "other").unwrap();
    assert_eq!(Errno::from(bus.bind("q0", "plain").unwrap_err()), Errno::ENODEV, "no match");
    assert_eq!(Errno::from(bus.unbind("q0", None).unwrap_err()), Errno::ENODEV, "not bound");
    assert_eq!(bus.devices().len(), 2);
    assert_eq!(bus.device("p0").unwrap().driver_name().as_deref(), Some("plain"));
    assert_eq!(Errno::from(bus.delete_device("nope").unwrap_err()), Errno::ENODEV);
    assert_eq!(Errno::from(bus.register_driver(Plain).unwrap_err()), Errno::EEXIST);
    assert_eq!(Errno::from(bus.unregister_driver("nope").unwrap_err()), Errno::ENODEV);
}

#[test]
fn names_are_validated() {
    assert_eq!(name::validate(""), Err(NameError::Empty));
    assert_eq!(name::validate(".."), Err(NameError::Dot));
    assert_eq!(name::validate("a/b"), Err(NameError::BadChar('/')));
    assert_eq!(name::validate("a\0b"), Err(NameError::BadChar('\0')));
    assert_eq!(name::validate(&"é".repeat(128)), Err(NameError::TooLong));
    assert!(name::validate(&"x".repeat(255)).is_ok());
}

/// Probe registers three actions then fails: they unwind newest first.
struct Failing(Arc<Mutex<Vec<&'static str>>>);
impl Driver for Failing {
    type Data = ();
    fn name(&self) -> &str {
        "failing"
    }
    fn id_table(&self) -> &[&str] {
        &["f"]
    }
    fn probe(&self, dev: &Bound<'_>) -> KResult<()> {
        for n in ["a", "b", "c"] {
            let log = self.0.clone();
            dev.devres().add(n, move || log.lock().unwrap().push(n))?;
        }
        Err(Errno::ENOMEM)
    }
}

#[test]
fn probe_failure_unwinds_devres_in_reverse() {
    let sys = System::new();
    let bus = sys.bus_register("b").unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    bus.register_driver(Failing(log.clone())).unwrap();
    bus.add_device("f0", "f").unwrap();
    assert_eq!(*log.lock().unwrap(), ["c", "b", "a"]);
    assert_eq!(bus.bind("f0", "failing"), Err(Error::ProbeFailed("f0".into(), Errno::ENOMEM)));
    assert!(bus.device("f0").unwrap().driver_name().is_none());
}

struct Nop;
impl FileOperations for Nop {
    type File = ();
    fn open(&self, _: &OpCtx<'_>) -> KResult<()> {
        Ok(())
    }
}

#[test]
fn misc_devices_and_regions() {
    let sys = System::new();
    let a = misc_register(&sys, MiscDeviceOptions::new("m0"), Nop).unwrap();
    let b = misc_register(&sys, MiscDeviceOptions::new("m1"), Nop).unwrap();
    assert_eq!(a.devt(), DevT::new(10, 255));
    assert_eq!(b.devt(), DevT::new(10, 254));
    assert_eq!(sys.class_nodes("misc").len(), 2);
    let f = sys.open_devt(a.devt(), &C).unwrap();
    assert!(matches!(misc_register(&sys, MiscDeviceOptions::new("m0"), Nop), Err(Error::Exists(_))));
    assert_eq!(a.remove(), Removed::Complete);
    assert_eq!(sys.open_devt(DevT::new(10, 255), &C).err(), Some(Errno::ENXIO));
    drop(f);
    let c = misc_register(&sys, MiscDeviceOptions::new("m2"), Nop).unwrap();
    assert_eq!(c.devt(), DevT::new(10, 255), "freed minor reused");

    let r1 = sys.alloc_chrdev_region(0, 4, "r1").unwrap();
    let r2 = sys.alloc_chrdev_region(0, 4, "r2").unwrap();
    assert_ne!(r1.first().major, r2.first().major);
    assert!(matches!(sys.register_chrdev_region(r1.first(), 1, "x"), Err(Error::RegionBusy(_))));
    let major = r1.first().major;
    drop(r1);
    let r3 = sys.register_chrdev_region(DevT::new(major, 2), 2, "r3").unwrap();
    assert_eq!(r3.devt(1), Some(DevT::new(major, 3)));
    assert_eq!(r3.devt(2), None);
    let reg = cdev_device_add(&sys, Cdev::new(Nop), DeviceNode::new("n", r3.first())).unwrap();
    assert!(matches!(
        cdev_device_add(&sys, Cdev::new(Nop), DeviceNode::new("n2", r3.first())),
        Err(Error::RegionBusy(_))
    ));
    assert!(matches!(
        cdev_device_add(&sys, Cdev::new(Nop), DeviceNode::new("n/x", r3.first())),
        Err(Error::InvalidName(_))
    ));
    drop(reg);
    assert!(sys.dev_lookup("n").is_none());
}

#[test]
fn ioctl_sizes_are_checked() {
    let sys = System::new();
    let reg = cdev_device_add(&sys, Cdev::new(Nop), DeviceNode::new("n", DevT::new(300, 0))).unwrap();
    let f = reg.node().unwrap().open(&C).unwrap();
    let cmd = IoctlCmd::iow(b'Z', 1, 4);
    assert_eq!(f.ioctl(cmd, 0, &[1, 2], &mut Vec::new(), &C), Err(Errno::EFAULT));
    assert_eq!(f.ioctl(cmd, 0, &[1, 2, 3, 4], &mut Vec::new(), &C), Err(Errno::ENOTTY), "default ioctl");
    assert_eq!(f.read(&mut [0; 4], 0, &C), Err(Errno::EINVAL), "default read");
    assert_eq!(f.poll_once(&C, None), PollMask::DEFAULT);
}

#[test]
fn debugfs_bool_and_blob() {
    let sys = System::new();
    let root: Dentry = sys.debugfs();
    let flag = Arc::new(AtomicBool::new(false));
    let b = root.create_bool("flag", 0o644, flag.clone()).unwrap();
    let f = b.node().unwrap().open(&C).unwrap();
    assert_eq!(f.write(b"Y\n", 0, &C), Ok(2));
    assert!(flag.load(Ordering::Relaxed));
    let mut buf = [0u8; 4];
    assert_eq!(f.read(&mut buf, 0, &C), Ok(2));
    assert_eq!(&buf[..2], b"Y\n");
    let blob = root.create_blob("blob", 0o644, Arc::from(&b"hello"[..])).unwrap();
    assert_eq!(blob.mode(), 0o444);
    let bf = blob.node().unwrap().open(&C).unwrap();
    assert_eq!(bf.read(&mut buf, 3, &C), Ok(2));
    assert_eq!(&buf[..2], b"lo");
    let ro = root.create_u64("ro", 0o444, Arc::new(AtomicU64::new(1))).unwrap();
    assert_eq!(ro.node().unwrap().open(&C).unwrap().write(b"2", 0, &C), Err(Errno::EACCES));
}

/// A file whose ioctl spins until told to stop, reporting it is inside,
/// and whose data and release are observable.
struct Spinner {
    data: Arc<AtomicU64>,
    inside: Arc<AtomicBool>,
    go: Arc<AtomicBool>,
    released: Arc<AtomicU64>,
}

impl FileOperations for Spinner {
    type File = ();
    fn open(&self, _: &OpCtx<'_>) -> KResult<()> {
        Ok(())
    }
    fn ioctl(&self, _: &(), _: &OpCtx<'_>, _: &mut Ioctl<'_>) -> KResult<i64> {
        self.inside.store(true, Ordering::SeqCst);
        while !self.go.load(Ordering::SeqCst) {
            thread::yield_now();
        }
        Ok(self.data.load(Ordering::SeqCst) as i64)
    }
    fn release(&self, _: ()) {
        self.released.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn an_ungated_system_removes_without_waiting() {
    // What `System::ungated` trades away, pinned down: removal refuses new
    // opens and calls but returns while a handler still runs, releases open
    // files only at their close, and keeps the operations (and what they
    // hold) alive until then. A gated system's removal would wait.
    let sys = System::ungated();
    let (inside, go, released) = (Arc::default(), Arc::<AtomicBool>::default(), Arc::<AtomicU64>::default());
    let data = Arc::new(AtomicU64::new(7));
    let ops = Spinner {
        data: data.clone(),
        inside: Arc::clone(&inside),
        go: go.clone(),
        released: released.clone(),
    };
    let dir = sys.debugfs().create_dir("u").unwrap();
    dir.create_file("spin", 0o600, ops).unwrap();
    let node = sys.debugfs().lookup("u/spin").unwrap().node().unwrap();
    let f = Arc::new(node.open(&C).unwrap());
    let (f2, cmd) = (f.clone(), IoctlCmd::from_raw(0));
    let handler = thread::spawn(move || f2.ioctl(cmd, 0, &[], &mut Vec::new(), &C));
    until(|| inside.load(Ordering::SeqCst));
    dir.remove(); // returns with the handler still inside
    assert!(!go.load(Ordering::SeqCst));
    assert_eq!(node.open(&C).err(), Some(Errno::ENOENT), "no new opens");
    assert_eq!(f.ioctl(cmd, 0, &[], &mut Vec::new(), &C), Err(Errno::EIO), "no new calls");
    assert_eq!(released.load(Ordering::SeqCst), 0, "not released by the removal");
    go.store(true, Ordering::SeqCst);
    assert_eq!(handler.join().unwrap(), Ok(7), "the running handler finished with its data");
    drop(f);
    assert_eq!(released.load(Ordering::SeqCst), 1, "released once, at close");
    drop(node);
    assert_eq!(Arc::strong_count(&data), 1, "the operations went with the node");
}

#[test]
fn names_that_collide_with_a_directorys_own_entries_are_refused() {
    let sys = System::new();
    let bus = sys.bus_register("b").unwrap();
    for reserved in name::DRIVER_DIR_ENTRIES {
        assert_eq!(
            bus.add_device(reserved, "t").err(),
            Some(Error::InvalidName(NameError::Reserved(reserved))),
            "a device called {reserved:?} would shadow the driver directory's own file"
        );
        assert!(bus.device(reserved).is_none(), "nothing was added");
    }
    let dev = bus.add_device("d", "t").unwrap();
    for reserved in name::DEVICE_DIR_ENTRIES {
        let attr = DeviceAttribute::read_only(*reserved, || Ok(String::new()));
        assert_eq!(
            attr::device_create_file(&dev, attr).err(),
            Some(Error::InvalidName(NameError::Reserved(reserved)))
        );
    }
    assert!(dev.attrs().is_empty());
}

#[test]
fn identities_are_never_reused() {
    // Object identities outlive the objects: a device, node or debugfs
    // entry removed and made again under the same name is told apart from
    // the old one, however the allocator reuses memory.
    let sys = System::new();
    let bus = sys.bus_register("b").unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..1000 {
        let d = bus.add_device("d", "t").unwrap();
        assert!(seen.insert(d.id()), "device identity reused");
        bus.delete_device("d").unwrap();
        let e = sys.debugfs().create_dir("e").unwrap();
        assert!(seen.insert(e.id()), "debugfs identity reused");
        e.remove();
    }
}

#[test]
fn hot_plug_stores_take_the_types_of_the_bus_and_answer_errnos() {
    use devlife_core::store::{delete_device_store, new_device_store};
    let sys = System::new();
    let bus = sys.bus_register("b").unwrap();
    assert!(!bus.accepts("t"));
    assert_eq!(new_device_store(&bus, b"t d0\n"), Err(Errno::EINVAL), "no driver handles t");
    bus.declare_device_type("t").unwrap();
    assert!(bus.accepts("t"));
    assert_eq!(new_device_store(&bus, b"t d0\n"), Ok(()));
    assert_eq!(new_device_store(&bus, b"t d0\n"), Err(Errno::EBUSY), "the name is taken");
    assert_eq!(new_device_store(&bus, b"t bind"), Err(Errno::EINVAL), "a reserved name");
    assert_eq!(delete_device_store(&bus, b"nosuch"), Err(Errno::ENODEV));
    assert_eq!(delete_device_store(&bus, b"d0\n"), Ok(()));
    assert!(bus.devices().is_empty());
}

#[test]
fn a_bound_thread_asleep_for_an_hour_is_stopped_and_joined_at_unbind() {
    struct Sleeper(Arc<AtomicBool>);
    impl Driver for Sleeper {
        type Data = ();
        fn name(&self) -> &str {
            "sleeper"
        }
        fn id_table(&self) -> &[&str] {
            &["s"]
        }
        fn probe(&self, dev: &Bound<'_>) -> fops::KResult<()> {
            let done = self.0.clone();
            devm_kthread_run(dev, "sleeper", move |stop| {
                assert!(!stop.sleep(Duration::from_secs(3600)), "woken by the unbind, not the hour");
                assert!(stop.should_stop());
                done.store(true, Ordering::SeqCst);
            })?;
            Ok(())
        }
    }
    let done = Arc::new(AtomicBool::new(false));
    let sys = System::new();
    let bus = sys.bus_register("b").unwrap();
    bus.register_driver(Sleeper(done.clone())).unwrap();
    bus.add_device("s0", "s").unwrap();
    assert!(!done.load(Ordering::SeqCst));
    assert_eq!(bus.unbind("s0", None), Ok(Unbound::Complete));
    assert!(done.load(Ordering::SeqCst), "the thread returned before the unbind did");
}

#[test]
fn attributes_can_get_their_device() {
    struct Led;
    impl Driver for Led {
        type Data = Arc<AtomicU64>;
        fn name(&self) -> &str {
            "led"
        }
        fn id_table(&self) -> &[&str] {
            &["led"]
        }
        fn probe(&self, dev: &Bound<'_>) -> fops::KResult<Arc<AtomicU64>> {
            let brightness = Arc::new(AtomicU64::new(5));
            devm_device_create_file(
                dev,
                DeviceAttribute::rw(
                    "brightness",
                    |d| {
                        let b = d.drvdata::<Arc<AtomicU64>>().ok_or(Errno::ENODEV)?;
                        Ok(format!("{} {}\n", d.name(), b.load(Ordering::Relaxed)))
                    },
                    |d, text| {
                        let v = text.trim().parse().map_err(|_| Errno::EINVAL)?;
                        d.drvdata::<Arc<AtomicU64>>().ok_or(Errno::ENODEV)?.store(v, Ordering::Relaxed);
                        Ok(())
                    },
                ),
            )?;
            Ok(brightness)
        }
    }
    let sys = System::new();
    let bus = sys.bus_register("b").unwrap();
    bus.register_driver(Led).unwrap();
    let dev = bus.add_device("led0", "led").unwrap();
    let f = dev.attr("brightness").unwrap().open(&C).unwrap();
    let mut buf = [0u8; 32];
    let n = f.read(&mut buf, 0, &C).unwrap();
    assert_eq!(&buf[..n], b"led0 5\n");
    assert_eq!(f.write(b"200\n", 0, &C), Ok(4));
    assert_eq!(dev.drvdata::<Arc<AtomicU64>>().unwrap().load(Ordering::Relaxed), 200);
    assert_eq!(f.write(b"nope", 0, &C), Err(Errno::EINVAL));
}

/// `System::dev_node` answers from each CPU's cache: after a removal no
/// CPU finds the removed node, and a node added under the same name is the
/// one every CPU finds. Each round looks the name up from a thread pinned
/// to every CPU in turn, so that every CPU's cache holds the name first.
#[test]
fn dev_node_finds_only_what_the_name_names_now_on_every_cpu() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let on_every_cpu = |sys: &System| -> Vec<Option<u64>> {
        (0..cpus)
            .map(|cpu| {
                let sys = sys.clone();
                thread::spawn(move || {
                    let mut set = rustix::thread::CpuSet::new();
                    set.set(cpu);
                    // Not every CPU may be ours (a cgroup's cpuset): then
                    // the lookup runs wherever the thread does.
                    let _ = rustix::thread::sched_setaffinity(None, &set);
                    sys.dev_node("n").map(|n| n.id())
                })
                .join()
                .unwrap()
            })
            .collect()
    };
    let sys = System::new();
    let mut devt = 0;
    let mut add = || {
        devt += 1;
        cdev_device_add(&sys, Cdev::new(Nop), DeviceNode::new("n", DevT::new(300, devt))).unwrap()
    };
    let mut reg = add();
    for round in 0..3 {
        let id = reg.node().unwrap().id();
        assert_eq!(on_every_cpu(&sys), vec![Some(id); cpus], "round {round}: every CPU finds the node");
        assert_eq!(reg.remove(), Removed::Complete);
        assert_eq!(on_every_cpu(&sys), vec![None; cpus], "round {round}: no CPU finds the removed node");
        reg = add();
        let new = reg.node().unwrap().id();
        assert_ne!(new, id);
        assert_eq!(on_every_cpu(&sys), vec![Some(new); cpus], "round {round}: every CPU finds the new node");
    }
}
