//! The scenarios of `kernel-precedent.md` §6, in process, on the seed's
//! `xyz` driver. Each asserts the behaviour it names; waits are handshakes
//! (channels, "a thread is inside the node"), with 60 s hang guards only.

use devlife_core::gate::CancelSource;
use devlife_core::{Bus, Caller, Errno, File, NodeRef, PollMask, System, Unbound};
use devlife_drivers::xyz::{
    self, EventLog, XYZ_IOC_COUNT, XYZ_IOC_HOLD, XYZ_IOC_LOCK, XYZ_IOC_UNBIND_SELF, XYZ_IOC_WAIT, XyzControl,
    XyzEvent,
};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::thread;
use std::time::{Duration, Instant};

const C: Caller<'static> =
    Caller { creds: devlife_core::Credentials { uid: 0, gid: 0, pid: 0 }, nonblock: false, interrupt: None };
const NB: Caller<'static> = Caller { nonblock: true, ..C };

struct Rig {
    sys: System,
    bus: Bus,
    ctl: XyzControl,
    log: EventLog,
}

fn rig(devices: &[&str]) -> Rig {
    let sys = System::new();
    let log: EventLog = Arc::default();
    let ctl = xyz::register(&sys, Some(log.clone())).unwrap();
    let bus = sys.bus("sim").unwrap();
    for d in devices {
        bus.add_device(d, "xyz").unwrap();
    }
    Rig { sys, bus, ctl, log }
}

impl Rig {
    fn node(&self, name: &str) -> NodeRef {
        self.sys.dev_lookup(name).expect("node exists").node
    }
    fn open(&self, name: &str) -> File {
        self.node(name).open(&C).unwrap()
    }
    fn events(&self) -> Vec<XyzEvent> {
        self.log.lock().unwrap().clone()
    }
}

fn count(f: &File) -> Result<u64, Errno> {
    let mut out = Vec::new();
    f.ioctl(XYZ_IOC_COUNT, 0, &[], &mut out, &C)?;
    Ok(u64::from_ne_bytes(out.try_into().unwrap()))
}

fn hold(f: &File, ms: u32) -> Result<i64, Errno> {
    f.ioctl(XYZ_IOC_HOLD, 0, &ms.to_ne_bytes(), &mut Vec::new(), &C)
}

/// Yields until `f` holds; panics after 60 s (a hang guard, not a timing).
fn until(mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(60), "condition never held");
        thread::yield_now();
    }
}

#[test]
fn s1_unbind_with_fds_open() {
    let r = rig(&["xyz0"]);
    let stale = r.node("xyz0");
    let f = r.open("xyz0");
    assert_eq!(count(&f), Ok(1));
    assert_eq!(f.write(b"abc", 0, &C), Ok(3));
    assert_eq!(r.bus.unbind("xyz0", Some("xyz")), Ok(Unbound::Complete));

    let mut buf = [0u8; 8];
    assert_eq!(f.read(&mut buf, 0, &C), Err(Errno::ENODEV));
    assert_eq!(f.write(b"x", 0, &C), Err(Errno::ENODEV));
    assert_eq!(count(&f), Err(Errno::ENODEV));
    assert_eq!(f.poll_once(&C, None), PollMask::HUP | PollMask::ERR);
    assert_eq!(f.flush(&C), Ok(()));
    assert_eq!(stale.open(&C).err(), Some(Errno::ENXIO));
    assert!(r.sys.dev_lookup("xyz0").is_none(), "the node's path is gone");
    // Released during the removal, before the context was dropped.
    let ev = r.events();
    let rel = ev.iter().position(|e| matches!(e, XyzEvent::Released(_))).expect("released");
    let dropped = ev.iter().position(|e| matches!(e, XyzEvent::ContextDropped(_))).expect("dropped");
    assert!(rel < dropped, "{ev:?}");
    let before = r.sys.stats();
    drop(f); // close after removal: the driver is not called again
    assert_eq!(r.sys.stats().releases, before.releases);
    assert_eq!(r.events().len(), ev.len());
    assert_eq!(r.sys.stats().open_files, 0);
}

#[test]
fn s2_unbind_waits_for_an_ioctl_in_flight() {
    let r = rig(&["xyz0"]);
    let f = Arc::new(r.open("xyz0"));
    let node = r.node("xyz0");
    let f2 = f.clone();
    let h = thread::spawn(move || hold(&f2, 300));
    // The driver's own word that the hold began (`node.inside()` also
    // counts an entry the unbind could still turn away: see `Gate::inside`).
    until(|| r.events().iter().any(|e| matches!(e, XyzEvent::HoldStart(_))));
    assert_eq!(r.bus.unbind("xyz0", None), Ok(Unbound::Complete));
    // The handler had left before the unbind returned.
    let ev = r.events();
    let end =
        ev.iter().position(|e| matches!(e, XyzEvent::HoldEnd(_))).expect("hold ended before unbind returned");
    let dropped = ev.iter().position(|e| matches!(e, XyzEvent::ContextDropped(_))).unwrap();
    assert!(end < dropped, "{ev:?}");
    assert_eq!(node.inside(), 0);
    assert_eq!(h.join().unwrap(), Ok(0), "a handler that was running completes normally");
}

#[test]
fn s3_blocked_reader_and_waiter_are_woken() {
    let r = rig(&["xyz0"]);
    let f = Arc::new(r.open("xyz0"));
    let node = r.node("xyz0");
    let reader = {
        let f = f.clone();
        thread::spawn(move || f.read(&mut [0u8; 16], 0, &C))
    };
    let waiter = {
        let f = f.clone();
        thread::spawn(move || f.ioctl(XYZ_IOC_WAIT, 0, &[], &mut Vec::new(), &C))
    };
    // Both wait as pending async operations: no thread inside the gate.
    until(|| node.pending() == 2);
    assert_eq!(node.inside(), 0);
    assert_eq!(r.bus.unbind("xyz0", None), Ok(Unbound::Complete));
    assert_eq!(node.pending(), 0, "every pending future was dropped when the unbind returned");
    assert_eq!(reader.join().unwrap(), Err(Errno::ENODEV));
    assert_eq!(waiter.join().unwrap(), Err(Errno::ENODEV));
}

#[test]
fn s3b_blocked_writer_woken_and_interrupt_gives_eintr() {
    let r = rig(&["xyz0"]);
    let f = Arc::new(r.open("xyz0"));
    // Fill the FIFO.
    let big = vec![7u8; xyz::FIFO_SIZE];
    assert_eq!(f.write(&big, 0, &C), Ok(xyz::FIFO_SIZE));
    assert_eq!(f.write(b"x", 0, &NB), Err(Errno::EAGAIN));
    let node = r.node("xyz0");
    let intr = Arc::new(CancelSource::new());
    let interrupted = {
        let (f, intr) = (f.clone(), intr.clone());
        thread::spawn(move || {
            f.ioctl(XYZ_IOC_WAIT, 0, &[], &mut Vec::new(), &Caller { interrupt: Some(&intr), ..C })
        })
    };
    let writer = {
        let f = f.clone();
        thread::spawn(move || f.write(b"more", 0, &C))
    };
    until(|| node.pending() == 2);
    intr.cancel();
    assert_eq!(interrupted.join().unwrap(), Err(Errno::EINTR), "a signal ends only its own wait");
    assert_eq!(node.pending(), 1);
    r.bus.delete_device("xyz0").unwrap();
    assert_eq!(writer.join().unwrap(), Err(Errno::ENODEV));
}

#[test]
fn s4_handler_blocked_on_a_lock_the_remover_holds() {
    let r = rig(&["xyz0"]);
    let f = Arc::new(r.open("xyz0"));
    let ctx = r.ctl.context("xyz0").unwrap();
    let held = ctx.hw.lock(); // the remover's lock
    let node = r.node("xyz0");
    let h = {
        let f = f.clone();
        thread::spawn(move || f.ioctl(XYZ_IOC_LOCK, 0, &[], &mut Vec::new(), &C))
    };
    until(|| node.inside() == 1);
    // Without cancellation this unbind would wait for the handler, which
    // waits for the lock this thread holds.
    assert_eq!(r.bus.unbind("xyz0", None), Ok(Unbound::Complete));
    assert_eq!(h.join().unwrap(), Err(Errno::ENODEV));
    drop(held);
}

#[test]
fn s5_release_exactly_once_with_close_racing_removal() {
    for round in 0..50 {
        let r = rig(&["xyz0"]);
        let files: Vec<File> = (0..16).map(|_| r.open("xyz0")).collect();
        let start = Arc::new(Barrier::new(2));
        let closer = {
            let start = start.clone();
            thread::spawn(move || {
                start.wait();
                for f in files {
                    drop(f);
                }
            })
        };
        start.wait();
        r.bus.unbind("xyz0", None).unwrap();
        closer.join().unwrap();
        let released = r.events().iter().filter(|e| matches!(e, XyzEvent::Released(_))).count();
        assert_eq!(released, 16, "round {round}: every open released exactly once");
        let s = r.sys.stats();
        assert_eq!((s.opens, s.releases, s.open_files), (16, 16, 0));
    }
}

#[test]
fn s6_open_racing_removal_and_probe_error_unwind() {
    for _ in 0..20 {
        let r = rig(&["xyz0"]);
        let node = r.node("xyz0");
        let stop = Arc::new(AtomicBool::new(false));
        let openers: Vec<_> = (0..3)
            .map(|_| {
                let (node, stop) = (node.clone(), stop.clone());
                thread::spawn(move || {
                    let (mut ok, mut enxio) = (0, 0);
                    while !stop.load(Ordering::Relaxed) {
                        match node.open(&C) {
                            Ok(f) => {
                                ok += 1;
                                let _ = count(&f);
                            }
                            Err(Errno::ENXIO) => {
                                enxio += 1;
                                break;
                            }
                            Err(e) => panic!("unexpected open error {e}"),
                        }
                    }
                    (ok, enxio)
                })
            })
            .collect();
        r.bus.unbind("xyz0", None).unwrap();
        stop.store(true, Ordering::Relaxed);
        for o in openers {
            o.join().unwrap();
        }
        let s = r.sys.stats();
        assert_eq!(s.opens, s.releases, "every successful open released");
        assert_eq!(s.open_files, 0);
    }

    // Probe failing after each managed step unwinds what it registered.
    let r = rig(&[]);
    for step in 1..=3 {
        r.ctl.fail_probe_at(step);
        r.bus.add_device("xyz9", "xyz").unwrap();
        let d = r.bus.device("xyz9").unwrap();
        assert_eq!(d.driver_name(), None, "step {step}: probe failed, device unbound");
        assert!(r.sys.dev_lookup("xyz9").is_none(), "step {step}: cdev unwound");
        assert!(r.sys.debugfs().lookup("xyz/xyz9").is_none(), "step {step}: debugfs unwound");
        r.bus.delete_device("xyz9").unwrap();
    }
    // Minors were freed each time: a fresh probe gets minor 0 again.
    r.ctl.fail_probe_at(0);
    r.bus.add_device("xyz9", "xyz").unwrap();
    assert_eq!(r.sys.dev_lookup("xyz9").unwrap().devt.minor, 0);
    let freed = r.events().iter().filter(|e| matches!(e, XyzEvent::MinorFreed(_))).count();
    assert_eq!(freed, 3);
}

#[test]
fn s7_reprobe_with_a_stale_reference() {
    let r = rig(&["xyz0"]);
    let stale = r.node("xyz0");
    let old = r.open("xyz0");
    assert_eq!(count(&old), Ok(1));
    assert_eq!(count(&old), Ok(2));
    r.bus.unbind("xyz0", None).unwrap();
    r.bus.bind("xyz0", "xyz").unwrap();
    assert_eq!(stale.open(&C).err(), Some(Errno::ENXIO), "a stale reference never reaches the new instance");
    assert_eq!(count(&old), Err(Errno::ENODEV), "old descriptors never reach it either");
    let fresh = r.open("xyz0");
    assert_eq!(count(&fresh), Ok(1), "a fresh context: the count starts again");
    assert!(!r.node("xyz0").same(&stale));
}

#[test]
fn s8_many_threads_one_file() {
    let r = rig(&["xyz0"]);
    let f = Arc::new(r.open("xyz0"));
    let go = Arc::new(Barrier::new(9));
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let (f, go) = (f.clone(), go.clone());
            thread::spawn(move || {
                go.wait();
                let mut ok = 0u64;
                loop {
                    let r = match i % 3 {
                        0 => count(&f).map(|_| ()),
                        1 => f
                            .write(b"ab", 0, &NB)
                            .map(|_| ())
                            .or_else(|e| if e == Errno::EAGAIN { Ok(()) } else { Err(e) }),
                        _ => f
                            .read(&mut [0; 4], 0, &NB)
                            .map(|_| ())
                            .or_else(|e| if e == Errno::EAGAIN { Ok(()) } else { Err(e) }),
                    };
                    match r {
                        Ok(()) => ok += 1,
                        Err(Errno::ENODEV) => return ok,
                        Err(e) => panic!("unexpected {e}"),
                    }
                }
            })
        })
        .collect();
    go.wait();
    until(|| r.ctl.context("xyz0").is_some_and(|c| c.count() > 1000));
    r.bus.unbind("xyz0", None).unwrap();
    let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(total > 1000);
    assert_eq!(r.node_count_inside(), 0);
}

impl Rig {
    fn node_count_inside(&self) -> u64 {
        self.sys.stats().inflight_ops
    }
}

#[test]
fn s11_poll_after_removal_and_pollers_woken() {
    let r = rig(&["xyz0"]);
    let f = Arc::new(r.open("xyz0"));
    // Empty FIFO: writable, not readable.
    assert_eq!(f.poll(PollMask::IN | PollMask::OUT, None, &C), PollMask::OUT);
    let poller = {
        let f = f.clone();
        thread::spawn(move || f.poll(PollMask::IN, None, &C))
    };
    // A write wakes the poller with POLLIN.
    let writer = r.open("xyz0");
    writer.write(b"x", 0, &C).unwrap();
    assert_eq!(poller.join().unwrap(), PollMask::IN);
    f.read(&mut [0u8; 1], 0, &C).unwrap();

    let (tx, rx) = mpsc::channel();
    let poller = {
        let f = f.clone();
        thread::spawn(move || {
            tx.send(()).unwrap();
            f.poll(PollMask::IN, None, &C)
        })
    };
    rx.recv().unwrap();
    r.bus.unbind("xyz0", None).unwrap();
    assert_eq!(poller.join().unwrap(), PollMask::HUP | PollMask::ERR, "pending poller woken by the removal");
}

#[test]
fn s13_devm_ordering() {
    let r = rig(&["xyz0"]);
    let f = r.open("xyz0");
    let b = r.bus.device("xyz0").unwrap().binding_id().unwrap();
    assert_eq!(
        r.bus.device("xyz0").unwrap().devres_names(),
        vec![
            "xyz minor".to_owned(),
            "cdev_device_del:xyz0".into(),
            "device_remove_file:count".into(),
            "debugfs_remove:xyz0".into()
        ]
    );
    r.log.lock().unwrap().clear();
    r.bus.unbind("xyz0", None).unwrap();
    // remove(), then managed resources newest first (debugfs, cdev with its
    // releases, the minor), then the driver's data.
    assert_eq!(
        r.events(),
        vec![
            XyzEvent::Remove(b),
            XyzEvent::Released(b),
            XyzEvent::MinorFreed(b),
            XyzEvent::ContextDropped(b)
        ]
    );
    assert!(r.sys.debugfs().lookup("xyz/xyz0").is_none());
    drop(f);
}

#[test]
fn s13b_driver_unregister_with_files_open() {
    let r = rig(&["xyz0", "xyz1", "xyz2"]);
    let files: Vec<File> = ["xyz0", "xyz1", "xyz2"].iter().map(|n| r.open(n)).collect();
    r.bus.unregister_driver("xyz").unwrap();
    for f in &files {
        assert_eq!(count(f), Err(Errno::ENODEV));
    }
    assert!(r.sys.dev_nodes().is_empty());
    assert_eq!(r.sys.stats().open_files, 0, "released during the unregistration");
    let dropped = r.events().iter().filter(|e| matches!(e, XyzEvent::ContextDropped(_))).count();
    assert_eq!(dropped, 3);
    assert!(r.bus.devices().iter().all(|d| d.driver_name().is_none()));
}

#[test]
fn s14_removal_from_inside_a_handler_is_deferred() {
    // A handler of xyz0 unbinds xyz0: the unbind cannot wait for the handler
    // it runs in, so it is handed to a worker that completes it afterwards.
    let r = rig(&["xyz0"]);
    let f = r.open("xyz0");
    let node = r.node("xyz0");
    let dev = r.bus.device("xyz0").unwrap();
    let b = dev.binding_id().unwrap();
    let ret = f.ioctl(XYZ_IOC_UNBIND_SELF, 0, &[], &mut Vec::new(), &C);
    assert_eq!(ret, Ok(1), "deferred");
    // Completed by the worker once the handler returned.
    until(|| dev.driver_name().is_none() && r.events().contains(&XyzEvent::ContextDropped(b)));
    assert!(node.is_removed());
    assert_eq!(count(&f), Err(Errno::ENODEV));
    assert_eq!(r.sys.stats().open_files, 0, "the open file was released by the removal");
    drop(f);
}

#[test]
fn s15_torture_loop() {
    let r = rig(&[]);
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicUsize::new(0));
    // Operations the clients completed: the chaos below runs until they made
    // progress, however the scheduler shares the CPUs.
    let done = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (sys, stop, errors, done) = (r.sys.clone(), stop.clone(), errors.clone(), done.clone());
            thread::spawn(move || {
                let mut ops = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let name = format!("xyz{}", i % 2);
                    let Some(n) = sys.dev_lookup(&name) else {
                        thread::yield_now();
                        continue;
                    };
                    let f = match n.node.open(&C) {
                        Ok(f) => f,
                        Err(Errno::ENXIO) => continue,
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    };
                    for _ in 0..10 {
                        let res = match ops % 4 {
                            0 => count(&f).map(|_| ()),
                            1 => f.write(b"abcd", 0, &NB).map(|_| ()),
                            2 => f.read(&mut [0; 4], 0, &NB).map(|_| ()),
                            _ => hold(&f, 0).map(|_| ()),
                        };
                        ops += 1;
                        done.fetch_add(1, Ordering::Relaxed);
                        match res {
                            Ok(()) | Err(Errno::EAGAIN) => {}
                            Err(Errno::ENODEV) => break,
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                ops
            })
        })
        .collect();
    // At least 300 rounds of chaos, and until the clients completed 2,000
    // operations between them (a hang guard, not a timing, bounds it).
    let start = Instant::now();
    let mut i = 0usize;
    while i < 300 || done.load(Ordering::Relaxed) < 2000 {
        assert!(start.elapsed() < Duration::from_secs(120), "clients made no progress in 120 s");
        if i >= 300 {
            thread::yield_now();
        }
        i += 1;
        let name = format!("xyz{}", i % 2);
        match i % 3 {
            0 => {
                let _ = r.bus.add_device(&name, "xyz");
            }
            1 => {
                let _ = r.bus.unbind(&name, None);
                let _ = r.bus.bind(&name, "xyz");
            }
            _ => {
                let _ = r.bus.delete_device(&name);
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let ops: u64 = clients.into_iter().map(|c| c.join().unwrap()).sum();
    for d in r.bus.devices() {
        r.bus.delete_device(d.name()).unwrap();
    }
    assert_eq!(errors.load(Ordering::Relaxed), 0);
    let s = r.sys.stats();
    assert_eq!(s.open_files, 0);
    assert_eq!(s.opens, s.releases);
    assert!(ops > 0);
    // Every probed context was dropped.
    let ev = r.events();
    let probed = ev.iter().filter(|e| matches!(e, XyzEvent::Probed(..))).count();
    let dropped = ev.iter().filter(|e| matches!(e, XyzEvent::ContextDropped(_))).count();
    assert_eq!(probed, dropped);
}

#[test]
fn the_ioctl_tables_match_their_commands() {
    // What `devlife ioctls` prints for clients: each entry's C type has the
    // size its number encodes, and names are unique.
    for table in [xyz::IOCTLS, devlife_drivers::bench::IOCTLS] {
        let mut names = std::collections::HashSet::new();
        for d in table {
            assert!(names.insert(d.name), "{} twice", d.name);
            let size = match d.arg {
                // A tty-style number: no _IOC bits, a declared layout.
                "" | "int *" => 0,
                "__u32" => 4,
                "__u64" => 8,
                "struct xyz_buf" => 16,
                other => panic!("{}: unknown C type {other}", d.name),
            };
            assert_eq!(d.cmd.size(), size, "{}", d.name);
            assert_eq!(d.cmd.dir() == devlife_core::ioctl::Dir::NONE, size == 0, "{}", d.name);
        }
    }
    assert_eq!(xyz::IOCTLS[0].cmd, XYZ_IOC_COUNT);
}
