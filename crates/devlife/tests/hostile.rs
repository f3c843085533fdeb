//! What a hostile user does to a served tree, through real system calls:
//! the reproductions of the defects a black-box run found (each named
//! after what it must now do), control-file and ioctl abuse, and removal
//! racing itself. Every test watches its client threads and processes for
//! uninterruptible sleep (`D`) and fails if one stays there for more than
//! 5 s or outlives a SIGKILL. Waits are handshakes and hang guards (60 s).
//!
//! The errno of every VFS operation on every kind of entry is checked in
//! `vfs_table.rs`.

mod common;

use common::*;
use devlife::torture::stuck;
use devlife::xyz_client::unbind_self;
use devlife_drivers::xyz::XYZ_IOC_COUNT;
use rustix::fd::{AsFd, AsRawFd, OwnedFd};
use rustix::fs::{Mode, OFlags, RawDir};
use rustix::io::Errno;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::mem::MaybeUninit;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier, mpsc};
use std::time::Duration;

const HANG: Duration = Duration::from_secs(60);

/// Runs `f` on a thread of its own: its result, or a panic naming `what`
/// if it has not returned within the hang guard.
fn guarded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(HANG).unwrap_or_else(|_| panic!("{what}: still blocked after {HANG:?}"))
}

/// A stuck-client watch on this test process (and any child added later).
fn watch() -> stuck::Watch {
    let w = stuck::Watch::start();
    w.add(std::process::id());
    w
}

fn assert_none_stuck(w: &stuck::Watch) {
    let s = w.stuck();
    assert!(s.is_empty(), "threads stuck in uninterruptible sleep: {s:?}");
}

fn open_at(p: &Path, flags: OFlags) -> Result<OwnedFd, Errno> {
    rustix::fs::open(p, flags | OFlags::CLOEXEC, Mode::empty())
}

/// Names in a directory listing, read through `fd` in one go.
fn names(fd: impl AsFd) -> Result<Vec<String>, Errno> {
    let mut buf = [MaybeUninit::uninit(); 4096];
    let mut d = RawDir::new(fd, &mut buf);
    let mut v = Vec::new();
    while let Some(e) = d.next() {
        let n = e?.file_name().to_string_lossy().into_owned();
        if n != "." && n != ".." {
            v.push(n);
        }
    }
    Ok(v)
}

#[test]
fn concurrent_self_unbind_from_eight_handlers_returns_everywhere() {
    // Defect 1: eight threads call XYZ_IOC_UNBIND_SELF at once; once it
    // hung within 9 tries (callers in D, `bind` and SIGTERM hanging).
    let Some(s) = Server::start(&[]) else { return };
    let w = watch();
    for round in 0..30 {
        s.write("sys/bus/sim/new_device", "xyz u0").unwrap();
        let fds: Vec<Arc<OwnedFd>> =
            (0..8).map(|_| Arc::new(open_at(&s.p("dev/u0"), OFlags::RDWR).unwrap())).collect();
        let barrier = Arc::new(Barrier::new(8));
        let calls: Vec<_> = fds
            .iter()
            .map(|fd| {
                let (fd, b) = (fd.clone(), barrier.clone());
                std::thread::spawn(move || {
                    b.wait();
                    unbind_self(&*fd)
                })
            })
            .collect();
        guarded(&format!("round {round}: self-unbind callers"), move || {
            for c in calls {
                let r = c.join().unwrap();
                // Deferred (1), or the device already gone under it.
                assert!(matches!(r, Ok(()) | Err(Errno::NODEV)), "{r:?}");
            }
        });
        drop(fds);
        until(|| s.busy() == 0 && !s.p("dev/u0").exists());
        // The device can be bound again and deleted: nothing hangs.
        guarded("bind after self-unbind", {
            let p = s.p("sys/bus/sim/drivers/xyz/bind");
            move || std::fs::write(p, "u0")
        })
        .unwrap();
        s.write("sys/bus/sim/delete_device", "u0").unwrap();
    }
    assert_none_stuck(&w);
    assert!(s.stop().success(), "SIGTERM shut the server down");
}

/// A python client that maps `path` privately and touches its first page;
/// prints `mapped` before the touch. Returns its exit status (killed by
/// SIGBUS, or 0 if the mapping itself failed).
fn touch_private_mapping(path: &Path, w: &stuck::Watch) -> std::process::ExitStatus {
    let code = format!(
        "import ctypes, os\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         libc.mmap.restype = ctypes.c_void_p\n\
         libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]\n\
         fd = os.open('{}', os.O_RDWR)\n\
         a = libc.mmap(None, 4096, 1, 2, fd, 0)\n\
         print('mapped' if a not in (None, ctypes.c_void_p(-1).value) else 'refused', flush=True)\n\
         if a not in (None, ctypes.c_void_p(-1).value): ctypes.string_at(a, 1)\n",
        path.display()
    );
    let mut c = Command::new("python3").arg("-c").arg(code).stdout(Stdio::piped()).spawn().expect("python3");
    w.add(c.id());
    let mut line = String::new();
    BufReader::new(c.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    match wait_timeout(&mut c, HANG) {
        Some(st) => st,
        None => {
            assert!(stuck::kill_and_reap(&mut c, Duration::from_secs(10)), "the client outlived SIGKILL");
            panic!("touching a private mapping of {} hung", path.display());
        }
    }
}

#[test]
fn a_private_mapping_neither_takes_data_nor_wedges_the_node() {
    // Defect 2: the page fault of a MAP_PRIVATE mapping read the FIFO
    // (taking its data), or, on an empty FIFO, blocked with the page locked
    // so that the next open hung in D.
    use std::os::unix::process::ExitStatusExt;
    let Some(s) = Server::start(&[]) else { return };
    let w = watch();
    let fd = s.open("dev/xyz0");
    rustix::io::write(&fd, b"hello").unwrap();
    let st = touch_private_mapping(&s.p("dev/xyz0"), &w);
    assert_eq!(st.signal(), Some(libc::SIGBUS), "the mapping has no pages: {st:?}");
    assert_eq!(read(&fd, 16).unwrap(), b"hello", "no data was taken");
    // Empty FIFO: the fault must not block, and the node stays usable.
    rustix::io::write(&fd, b"x").unwrap();
    assert_eq!(read(&fd, 16).unwrap(), b"x");
    let st = touch_private_mapping(&s.p("dev/xyz0"), &w);
    assert_eq!(st.signal(), Some(libc::SIGBUS), "{st:?}");
    let p = s.p("dev/xyz0");
    guarded("open after the mapping", move || open_at(&p, OFlags::RDWR).map(drop)).unwrap();
    assert_eq!(s.busy(), 0, "no read of the fault is left in the server");
    // sendfile(2) from a node would go through the page cache too: it
    // fails (the kernel refuses a stream's splice, or the server the
    // page-cache read), and takes nothing.
    rustix::io::write(&fd, b"abc").unwrap();
    let out = open_at(Path::new("/dev/null"), OFlags::WRONLY).unwrap();
    assert!(rustix::fs::sendfile(&out, &fd, None, 16).is_err());
    assert_eq!(read(&fd, 16).unwrap(), b"abc", "sendfile took nothing");
    assert_none_stuck(&w);
}

#[test]
fn blocked_callers_on_one_cpu_never_starve_it() {
    // Defect 3: 1,100 readers blocked from CPU 0 took every worker of CPU
    // 0's queue (the cap was 1,024); stats, stat, unbind and delete from
    // CPU 0 then hung.
    const READERS: usize = 1100;
    let Some(s) = Server::start(&[]) else { return };
    let allowed = rustix::thread::sched_getaffinity(None).unwrap();
    if !allowed.is_set(0) {
        eprintln!("skipped: CPU 0 is not available to this process");
        return;
    }
    let w = watch();
    let node = s.p("dev/xyz0");
    let (tx, rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (node, tx, done) = (node.clone(), tx.clone(), done_tx.clone());
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    pin(0);
                    let fd = open_at(&node, OFlags::RDONLY).unwrap();
                    tx.send(()).unwrap();
                    // A signal (one glibc sends itself, as any other) ends a
                    // blocked read with EINTR: read again, as programs do.
                    let r = loop {
                        match read(&fd, 8) {
                            Err(Errno::INTR) => continue,
                            r => break r,
                        }
                    };
                    let _ = done.send(r.clone());
                    r
                })
                .unwrap()
        })
        .collect();
    for _ in 0..READERS {
        rx.recv_timeout(HANG).expect("every reader opened the node");
    }
    until(|| {
        if let Ok(r) = done_rx.try_recv() {
            panic!("a reader returned before the removal: {r:?}");
        }
        s.busy() >= READERS as u64
    });
    // From CPU 0, with every reader blocked: the framework's files, a stat,
    // and the removal that frees the readers.
    let (stats, dir) = (s.p("debug/devlife/stats"), s.p("sys/bus/sim/drivers/xyz"));
    guarded("stats, stat and unbind from CPU 0", move || {
        pin(0);
        std::fs::read_to_string(&stats).unwrap();
        std::fs::metadata(&dir).unwrap();
        std::fs::write(dir.join("unbind"), "xyz0").unwrap();
    });
    guarded("the readers, freed by the removal", move || {
        for r in readers {
            assert_eq!(r.join().unwrap(), Err(Errno::NODEV));
        }
    });
    // The flood's idle workers go: /dev/fuse keeps 8 idle; a ring queue
    // keeps the workers idle since its last burst (eight, and those that
    // decided together), far from the 1,100 it had.
    until(|| {
        let f = fuse_stats(&s);
        let n = |k: &str| f[k].parse::<u64>().unwrap_or(u64::MAX);
        n("dev_workers") <= 16 && n("ring_workers") <= n("ring_queues") * 64
    });
    s.write("sys/bus/sim/drivers/xyz/bind", "xyz0").unwrap();
    assert_none_stuck(&w);
}

#[test]
fn stale_handles_never_reach_a_recreated_device() {
    // Defect 4: identities were Arc addresses, which the allocator reuses;
    // a directory handle kept across delete + new_device listed the new
    // device's files within 1 to 130 rounds.
    let Some(s) = Server::start(&[]) else { return };
    let gone = |r: Result<(), Errno>| matches!(r, Err(Errno::NOENT | Errno::STALE));
    for round in 0..300 {
        s.write("sys/bus/sim/new_device", "xyz ab").unwrap();
        let dev = open_at(&s.p("sys/bus/sim/devices/ab"), OFlags::RDONLY | OFlags::DIRECTORY).unwrap();
        let dbg = open_at(&s.p("debug/xyz/ab"), OFlags::RDONLY | OFlags::DIRECTORY).unwrap();
        let class = open_at(&s.p("sys/class/xyz/ab"), OFlags::RDONLY | OFlags::DIRECTORY).unwrap();
        let uevent = open_at(&s.p("sys/bus/sim/devices/ab/uevent"), OFlags::PATH).unwrap();
        let node = open_at(&s.p("dev/ab"), OFlags::PATH).unwrap();
        s.write("sys/bus/sim/delete_device", "ab").unwrap();
        s.write("sys/bus/sim/new_device", "xyz ab").unwrap();
        for (what, fd) in [("device dir", &dev), ("debugfs dir", &dbg), ("class dir", &class)] {
            assert!(gone(names(fd).map(drop)), "round {round}: the old {what} listed the new device");
            let r = rustix::fs::openat(fd, "count", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty());
            assert!(gone(r.map(drop)), "round {round}: openat through the old {what}");
        }
        for (what, fd) in [("uevent", &uevent), ("dev/ab", &node)] {
            let p = format!("/proc/self/fd/{}", fd.as_raw_fd());
            let r = open_at(Path::new(&p), OFlags::RDONLY);
            assert!(
                gone(r.map(drop)),
                "round {round}: the old {what} reopened through /proc reached the new one"
            );
        }
        s.write("sys/bus/sim/delete_device", "ab").unwrap();
    }
    // A driver unloaded and loaded again is a new driver too.
    let drv = open_at(&s.p("sys/bus/sim/drivers/xyz"), OFlags::RDONLY | OFlags::DIRECTORY).unwrap();
    s.write("debug/devlife/modules", "rmmod xyz").unwrap();
    s.write("debug/devlife/modules", "modprobe xyz").unwrap();
    assert!(gone(names(&drv).map(drop)), "the old driver directory listed the new driver");
}

#[test]
fn a_listing_in_progress_shows_every_untouched_device_once() {
    // Defect 5: the readdir offset indexed a list rebuilt on every call;
    // deleting 15 returned entries made 15 untouched ones vanish.
    let Some(s) = Server::start(&[]) else { return };
    let all: Vec<String> = (0..400).map(|i| format!("l{i:03}")).collect();
    for n in &all {
        s.write("sys/bus/sim/new_device", &format!("xyz {n}")).unwrap();
    }
    for dir in ["dev", "sys/bus/sim/devices"] {
        let fd = open_at(&s.p(dir), OFlags::RDONLY | OFlags::DIRECTORY).unwrap();
        let mut buf = [MaybeUninit::uninit(); 768];
        let mut d = RawDir::new(&fd, &mut buf);
        let mut listed = Vec::new();
        while listed.iter().filter(|n: &&String| n.starts_with('l')).count() < 21 {
            listed.push(d.next().unwrap().unwrap().file_name().to_string_lossy().into_owned());
        }
        let returned: Vec<String> = listed.iter().filter(|n| n.starts_with('l')).cloned().collect();
        let deleted: BTreeSet<String> = returned.iter().take(15).cloned().collect();
        for n in &deleted {
            s.write("sys/bus/sim/delete_device", n).unwrap();
        }
        while let Some(e) = d.next() {
            listed.push(e.unwrap().file_name().to_string_lossy().into_owned());
        }
        let mut seen = BTreeSet::new();
        for n in &listed {
            assert!(seen.insert(n.clone()), "{dir}: {n} listed twice");
        }
        let missing: Vec<_> = all.iter().filter(|n| !deleted.contains(*n) && !seen.contains(*n)).collect();
        assert!(missing.is_empty(), "{dir}: never-removed devices missing: {missing:?}");
        for n in &deleted {
            s.write("sys/bus/sim/new_device", &format!("xyz {n}")).unwrap();
        }
    }
}

#[test]
fn a_device_cannot_take_a_name_of_the_driver_directory() {
    // Defect 6: a device called `bind` duplicated the driver directory's
    // control file, and its own link could not be reached.
    let Some(s) = Server::start(&[]) else { return };
    for name in ["bind", "unbind"] {
        assert_eq!(s.write("sys/bus/sim/new_device", &format!("xyz {name}")), Err(Errno::INVAL));
        assert!(!s.p("sys/bus/sim/devices").join(name).exists(), "nothing was added");
    }
    let mut entries = names(open_at(&s.p("sys/bus/sim/drivers/xyz"), OFlags::RDONLY).unwrap()).unwrap();
    entries.sort();
    assert_eq!(entries, ["bind", "unbind", "xyz0", "xyz1"]);
}

#[test]
fn control_files_refuse_abuse_and_change_nothing() {
    let Some(s) = Server::start(&[]) else { return };
    let before = names(open_at(&s.p("sys/bus/sim/devices"), OFlags::RDONLY).unwrap()).unwrap();
    let bad: &[(&str, &[u8], Errno)] = &[
        ("sys/bus/sim/new_device", b"xyz", Errno::INVAL),
        ("sys/bus/sim/new_device", b"nosuchtype x", Errno::INVAL),
        ("sys/bus/sim/new_device", b"xyz a b", Errno::INVAL),
        ("sys/bus/sim/new_device", b"xyz \xff\xfe", Errno::INVAL),
        ("sys/bus/sim/new_device", b"xyz a\0b", Errno::INVAL),
        ("sys/bus/sim/new_device", b"xyz ..", Errno::INVAL),
        ("sys/bus/sim/new_device", b"xyz a/b", Errno::INVAL),
        ("sys/bus/sim/new_device", b"xyz xyz0", Errno::BUSY),
        ("sys/bus/sim/delete_device", b"nosuch", Errno::NODEV),
        ("sys/bus/sim/delete_device", b"\n\n", Errno::INVAL),
        ("sys/bus/sim/drivers/xyz/bind", b"xyz0", Errno::BUSY),
        ("sys/bus/sim/drivers/xyz/bind", b"nosuch", Errno::NODEV),
        ("sys/bus/sim/drivers/xyz/unbind", b"nosuch", Errno::NODEV),
        ("debug/devlife/modules", b"rmmod nosuch", Errno::NOENT),
        ("debug/devlife/modules", b"insmod xyz", Errno::INVAL),
    ];
    for (file, data, want) in bad {
        let fd = open_at(&s.p(file), OFlags::WRONLY).unwrap();
        assert_eq!(rustix::io::write(&fd, data).map(drop), Err(*want), "{file} <- {data:?}");
    }
    // Longer than a page.
    let long = vec![b'a'; 5000];
    let fd = open_at(&s.p("sys/bus/sim/new_device"), OFlags::WRONLY).unwrap();
    assert!(rustix::io::write(&fd, &long).is_err());
    let after = names(open_at(&s.p("sys/bus/sim/devices"), OFlags::RDONLY).unwrap()).unwrap();
    assert_eq!(before, after, "bad input changed nothing");
}

#[test]
fn ioctls_refuse_abuse() {
    let Some(s) = Server::start(&[]) else { return };
    let fd = s.open("dev/xyz0");
    // An unknown command, a known number with another size, a bad pointer.
    // SAFETY: each command is _IO (no argument memory) or _IOR with a
    // buffer the Getter owns; the bad pointer is a plain integer argument
    // the kernel checks before writing.
    unsafe {
        assert_eq!(rustix::ioctl::ioctl(&fd, rustix::ioctl::NoArg::<0x5899>::new()), Err(Errno::NOTTY));
        let wrong_size =
            rustix::ioctl::Getter::<{ (XYZ_IOC_COUNT.raw() & !(0x3fff << 16)) | (4 << 16) }, u32>::new();
        assert_eq!(rustix::ioctl::ioctl(&fd, wrong_size).map(drop), Err(Errno::NOTTY));
        assert_eq!(libc::ioctl(fd.as_raw_fd(), XYZ_IOC_COUNT.raw() as _, 1usize), -1);
        assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EFAULT));
    }
    // XYZ_IOC_HOLD beyond its bound.
    assert_eq!(hold(&fd, 3_600_000), Err(Errno::INVAL));
    // The bad pointer failed only at the copy out, after the driver ran (a
    // restricted FUSE ioctl, as a driver's own copy_to_user would).
    assert_eq!(count(&fd), Ok(2), "the device still works");
}

#[test]
fn removal_racing_removal_over_the_mount() {
    // unbind, delete_device, rmmod and self-unbind from handlers, at once,
    // with readers blocked on the device: every call returns, the guarantee
    // holds (no violation, nothing left open or inside).
    let Some(s) = Server::start(&[]) else { return };
    let w = watch();
    for round in 0..40 {
        let _ = s.write("debug/devlife/modules", "modprobe xyz");
        let _ = s.write("sys/bus/sim/new_device", "xyz r0");
        let _ = s.write("sys/bus/sim/drivers/xyz/bind", "r0");
        let Ok(a) = open_at(&s.p("dev/r0"), OFlags::RDWR) else { continue };
        let (a, b) = (Arc::new(a), Arc::new(open_at(&s.p("dev/r0"), OFlags::RDWR).unwrap()));
        let reader = {
            let a = a.clone();
            std::thread::spawn(move || read(&*a, 8))
        };
        until(|| s.busy() >= 1);
        let go = Arc::new(Barrier::new(5));
        let mut racers = Vec::new();
        for (file, text) in [
            ("sys/bus/sim/drivers/xyz/unbind", "r0"),
            ("sys/bus/sim/delete_device", "r0"),
            ("debug/devlife/modules", "rmmod xyz"),
        ] {
            let (p, g) = (s.p(file), go.clone());
            racers.push(std::thread::spawn(move || {
                g.wait();
                let _ = std::fs::write(p, text);
            }));
        }
        for fd in [a.clone(), b.clone()] {
            let g = go.clone();
            racers.push(std::thread::spawn(move || {
                g.wait();
                let _ = unbind_self(&*fd);
            }));
        }
        guarded(&format!("round {round}: racing removals"), move || {
            for r in racers {
                r.join().unwrap();
            }
            reader.join().unwrap()
        })
        .expect_err("the reader was freed by the removal");
        until(|| s.busy() == 0);
    }
    until(|| s.stat_line("open_files") == 1);
    assert_eq!(s.stat_line("violations"), 0);
    assert_none_stuck(&w);
    assert!(s.stop().success());
}
