//! `devlife serve --cuse`: the device nodes as real character devices,
//! through real processes and system calls.
//!
//! These need a kernel with CUSE (`/dev/cuse`) and root. This machine
//! kind's kernel has none, so they are `#[ignore]`d here and run inside
//! a VM by `scripts/vm-test` (from `.ci/run`); where the kernel has CUSE,
//! `scripts/test-all` runs them directly (`--ignored`). Device names are
//! global to the kernel, so the tests take turns (one server at a time).

mod common;

use common::{Server, fifo_len, reverse, until};
use devlife_gate::sync::lock;
use rustix::event::PollFlags;
use rustix::fd::OwnedFd;
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// One CUSE server at a time: `xyz0` can be registered once per kernel.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serve() -> (std::sync::MutexGuard<'static, ()>, Server) {
    let turn = lock(&ONE_AT_A_TIME);
    assert!(Path::new("/dev/cuse").exists(), "no /dev/cuse: run these in scripts/vm-test");
    let s = Server::start(&["--cuse"]).expect("FUSE is needed for sys/ and debug/");
    (turn, s)
}

fn open_dev(name: &str) -> Result<OwnedFd, Errno> {
    rustix::fs::open(format!("/dev/{name}"), OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
}

fn gone(name: &str) -> bool {
    !Path::new(&format!("/dev/{name}")).exists()
}

/// Whether thread `tid` of this process is asleep in system call `nr`.
fn asleep_in(tid: i32, nr: libc::c_long) -> bool {
    let task = format!("/proc/self/task/{tid}");
    let syscall = std::fs::read_to_string(format!("{task}/syscall")).unwrap_or_default();
    let stat = std::fs::read_to_string(format!("{task}/stat")).unwrap_or_default();
    let state = stat.rsplit(')').next().and_then(|r| r.split_whitespace().next());
    syscall.split_whitespace().next() == Some(&nr.to_string()) && state == Some("S")
}

/// Runs `f` on a thread of its own once it has sent its tid, and waits
/// until that thread sleeps in system call `nr`.
fn blocked<T: Send + 'static>(
    nr: libc::c_long,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        tx.send(rustix::thread::gettid().as_raw_nonzero().get()).unwrap();
        f()
    });
    let tid = rx.recv().unwrap();
    until(|| asleep_in(tid, nr));
    t
}

fn c_client() -> std::path::PathBuf {
    common::c_client(false).unwrap()
}

#[test]
#[ignore = "needs CUSE: run by scripts/vm-test"]
fn node_is_a_character_device_with_the_class_number_mode_and_owner() {
    let (_t, s) = serve();
    let m = std::fs::metadata("/dev/xyz0").unwrap();
    assert!(m.file_type().is_char_device(), "S_ISCHR");
    let class = std::fs::read_to_string(s.p("sys/class/xyz/xyz0/dev")).unwrap();
    let rdev = m.rdev();
    assert_eq!(class, format!("{}:{}\n", libc::major(rdev), libc::minor(rdev)));
    let uevent = std::fs::read_to_string(s.p("sys/class/xyz/xyz0/uevent")).unwrap();
    assert!(uevent.contains(&format!("MAJOR={}\n", libc::major(rdev))), "{uevent}");
    // The driver's mode and owner (the serving user's, 0600).
    assert_eq!(m.mode() & 0o7777, 0o600);
    assert_eq!((m.uid(), m.gid()), (rustix::process::getuid().as_raw(), rustix::process::getgid().as_raw()));
    // Enforced by the kernel for another user.
    let nobody = Command::new("sh")
        .args(["-c", "exec 3<>/dev/xyz0"])
        .uid(65534)
        .gid(65534)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!nobody.status.success());
    assert!(String::from_utf8_lossy(&nobody.stderr).contains("ermission denied"), "{nobody:?}");
}

use std::os::unix::process::CommandExt;

#[test]
#[ignore = "needs CUSE: run by scripts/vm-test"]
fn open_read_write_poll_and_ioctls_from_rust_c_and_python() {
    let (_t, _s) = serve();
    let fd = open_dev("xyz0").unwrap();
    assert_eq!(rustix::io::write(&fd, b"abc"), Ok(3));
    assert!(common::poll_now(&fd, PollFlags::IN, 10_000).contains(PollFlags::IN));
    // A tty-style number, its layout declared by the driver.
    assert_eq!(fifo_len(&fd), Ok(3));
    assert_eq!(common::read(&fd, 16).unwrap(), b"abc");
    assert_eq!(common::count(&fd), Ok(1));
    // A pointer inside the argument, followed both ways.
    let mut data = *b"0123456789";
    assert_eq!(reverse(&fd, &mut data), Ok(10));
    assert_eq!(&data, b"9876543210");
    let mut big = vec![7u8; devlife_drivers::xyz::REVERSE_MAX + 1];
    assert_eq!(reverse(&fd, &mut big), Err(Errno::INVAL));

    let c = Command::new(c_client()).args(["/dev/xyz0", "io"]).output().unwrap();
    let out = String::from_utf8_lossy(&c.stdout);
    assert!(c.status.success(), "{c:?}");
    assert_eq!(out, "poll 1 POLLIN\nfifo_len 5\nread hello\ncount 2\nreverse fedcba 6\n");

    let py = r#"
import ctypes, fcntl, os, select, struct
fd = os.open('/dev/xyz0', os.O_RDWR)
os.write(fd, b'py')
p = select.poll(); p.register(fd, select.POLLIN)
print('poll', p.poll(10000)[0][1] & select.POLLIN)
b = bytearray(8); fcntl.ioctl(fd, 0x80085801, b); print('count', struct.unpack('Q', b)[0])
n = bytearray(4); fcntl.ioctl(fd, 0x5858, n); print('fifo_len', struct.unpack('i', n)[0])
print('read', os.read(fd, 16))
buf = ctypes.create_string_buffer(b'xyz', 3)
arg = bytearray(struct.pack('QII', ctypes.addressof(buf), 3, 0))
fcntl.ioctl(fd, 0xc0105806, arg)
print('reverse', buf.raw, struct.unpack('QII', arg)[2])
"#;
    let p = Command::new("python3").args(["-c", py]).output().unwrap();
    assert!(p.status.success(), "{p:?}");
    assert_eq!(
        String::from_utf8_lossy(&p.stdout),
        "poll 1\ncount 3\nfifo_len 2\nread b'py'\nreverse b'zyx' 3\n"
    );
}

#[test]
#[ignore = "needs CUSE: run by scripts/vm-test"]
fn unbind_wakes_blocked_callers_drains_handlers_and_removes_the_node() {
    let (_t, s) = serve();
    let fd = std::sync::Arc::new(open_dev("xyz0").unwrap());
    let reader = {
        let fd = fd.clone();
        blocked(libc::SYS_read, move || common::read(&*fd, 8))
    };
    let waiter = {
        let fd = fd.clone();
        blocked(libc::SYS_ioctl, move || common::wait_ioctl(&*fd))
    };
    let poller = {
        let fd = fd.clone();
        blocked(libc::SYS_ppoll, move || common::poll_now(&*fd, PollFlags::IN, 60_000))
    };
    // A handler busy (not in a cancellable wait) when the unbind comes.
    let holder = {
        let fd = fd.clone();
        std::thread::spawn(move || common::hold(&*fd, 3000))
    };
    until(|| s.busy() >= 3);
    s.write("sys/bus/sim/drivers/xyz/unbind", "xyz0").unwrap();
    // The unbind returned: every caller is out, with the FUSE tree's answers.
    assert_eq!(reader.join().unwrap(), Err(Errno::NODEV));
    assert_eq!(waiter.join().unwrap(), Err(Errno::NODEV));
    let revents = poller.join().unwrap();
    assert!(revents.contains(PollFlags::HUP | PollFlags::ERR), "{revents:?}");
    assert_eq!(holder.join().unwrap(), Ok(()), "the busy handler finished before the unbind returned");
    assert_eq!(s.busy(), 0);
    // The node is gone; the old descriptor reaches nothing (the kernel's
    // answer once the channel is closed).
    assert!(gone("xyz0"), "the unbind returned after the node was removed");
    assert_eq!(common::count(&*fd), Err(Errno::NOTCONN));
    assert_eq!(common::read(&*fd, 1), Err(Errno::NOTCONN));
    assert_eq!(common::poll_now(&*fd, PollFlags::IN, 0), PollFlags::ERR, "the kernel's answer, POLLERR only");
    assert_eq!(open_dev("xyz0").err(), Some(Errno::NOENT));

    // Re-bind: a fresh node, which the old descriptor never reaches.
    s.write("sys/bus/sim/drivers/xyz/bind", "xyz0").unwrap();
    until(|| !gone("xyz0"));
    let fresh = open_dev("xyz0").unwrap();
    assert_eq!(common::count(&fresh), Ok(1), "a new binding's count");
    assert_eq!(common::count(&*fd), Err(Errno::NOTCONN));
    let class = std::fs::read_to_string(s.p("sys/class/xyz/xyz0/dev")).unwrap();
    let rdev = std::fs::metadata("/dev/xyz0").unwrap().rdev();
    assert_eq!(class, format!("{}:{}\n", libc::major(rdev), libc::minor(rdev)));

    // Hot-unplug and hot-plug make and remove the node too.
    s.write("sys/bus/sim/delete_device", "xyz1").unwrap();
    until(|| gone("xyz1"));
    s.write("sys/bus/sim/new_device", "xyz xyz1").unwrap();
    until(|| !gone("xyz1"));
    assert_eq!(common::count(open_dev("xyz1").unwrap()), Ok(1));
}

#[test]
#[ignore = "needs CUSE: run by scripts/vm-test"]
fn sigint_ends_a_blocked_read_with_eintr() {
    let (_t, s) = serve();
    let mut c =
        Command::new(c_client()).args(["/dev/xyz0", "read-eintr"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = std::io::BufReader::new(c.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line, "ready\n");
    let pid = c.id();
    until(|| {
        let sc = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        sc.split_whitespace().next() == Some(&libc::SYS_read.to_string())
    });
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let st = common::wait_timeout(&mut c, Duration::from_secs(60)).expect("the client hangs after SIGINT");
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line, "EINTR\n");
    assert!(st.success());
    // The server is unharmed.
    assert_eq!(common::count(open_dev("xyz0").unwrap()), Ok(1));
    drop(s);
}

#[test]
#[ignore = "needs CUSE: run by scripts/vm-test"]
fn more_blocked_readers_than_workers_never_stop_other_requests() {
    let (_t, s) = serve();
    let fd = std::sync::Arc::new(open_dev("xyz0").unwrap());
    let readers: Vec<_> = (0..12)
        .map(|_| {
            let fd = fd.clone();
            blocked(libc::SYS_read, move || common::read(&*fd, 1))
        })
        .collect();
    // Twelve handlers asleep; the next request is still answered.
    assert_eq!(common::count(&*fd), Ok(1));
    s.write("sys/bus/sim/drivers/xyz/unbind", "xyz0").unwrap();
    for r in readers {
        assert_eq!(r.join().unwrap(), Err(Errno::NODEV));
    }
}

#[test]
#[ignore = "needs CUSE: run by scripts/vm-test"]
fn sigkill_of_the_server_frees_blocked_clients_and_a_restart_brings_the_nodes_back() {
    let (_t, s) = serve();
    let fd = std::sync::Arc::new(open_dev("xyz0").unwrap());
    let reader = {
        let fd = fd.clone();
        blocked(libc::SYS_read, move || common::read(&*fd, 1))
    };
    let waiter = {
        let fd = fd.clone();
        blocked(libc::SYS_ioctl, move || common::wait_ioctl(&*fd))
    };
    s.signal(rustix::process::Signal::KILL);
    // The kernel aborts the channel: calls in the server fail, nothing hangs.
    assert_eq!(reader.join().unwrap(), Err(Errno::CONNABORTED));
    assert_eq!(waiter.join().unwrap(), Err(Errno::CONNABORTED));
    assert_eq!(common::count(&*fd), Err(Errno::NOTCONN));
    until(|| gone("xyz0") && gone("xyz1"));
    drop(s);
    no_thread_in_state_d();
    let s = Server::start(&["--cuse"]).unwrap();
    until(|| !gone("xyz0"));
    assert_eq!(common::count(open_dev("xyz0").unwrap()), Ok(1));
    assert_eq!(common::count(&*fd), Err(Errno::NOTCONN), "the old descriptor stays dead");
    drop(s);
}

#[test]
#[ignore = "needs CUSE: run by scripts/vm-test"]
fn server_shutdown_removes_every_node() {
    let (_t, s) = serve();
    assert!(!gone("xyz0") && !gone("xyz1"));
    stop_removes_every_node(s);
}

/// Stops `s` (SIGTERM): it exits 0 and both nodes are gone.
fn stop_removes_every_node(s: Server) {
    let log = s.stderr.clone();
    let st = s.stop();
    assert!(st.success(), "{st:?}: {}", log.lock().unwrap());
    assert!(gone("xyz0") && gone("xyz1"));
}

#[test]
#[ignore = "needs CUSE: run by scripts/vm-test"]
fn racing_hot_plug_and_unplug_leave_no_stale_device() {
    let (_t, s) = serve();
    let dir = s.dir.clone();
    let plug = {
        let dir = dir.clone();
        std::thread::spawn(move || {
            for _ in 0..30 {
                let _ = std::fs::write(dir.join("sys/bus/sim/new_device"), "xyz xyz9");
            }
        })
    };
    for _ in 0..30 {
        let _ = std::fs::write(dir.join("sys/bus/sim/delete_device"), "xyz9");
    }
    plug.join().unwrap();
    let _ = std::fs::write(dir.join("sys/bus/sim/delete_device"), "xyz9");
    assert!(gone("xyz9"), "no CUSE device outlives its node");
    s.write("sys/bus/sim/new_device", "xyz xyz9").unwrap();
    assert!(!gone("xyz9"), "the name is free for a new device");
    assert_eq!(common::count(open_dev("xyz9").unwrap()), Ok(1));
    let rdev = std::fs::metadata("/dev/xyz9").unwrap().rdev();
    let class = std::fs::read_to_string(s.p("sys/class/xyz/xyz9/dev")).unwrap();
    assert_eq!(class, format!("{}:{}\n", libc::major(rdev), libc::minor(rdev)));
}

/// Re-bind, unbind, re-bind with a descriptor of each earlier bind open and
/// in use (CVE-2026-31606's shape), on the real `/dev/xyz0`: each bind is a
/// new CUSE device, which no earlier descriptor reaches.
#[test]
#[ignore = "needs CUSE: run by scripts/vm-test"]
fn rebinding_never_reaches_descriptors_of_earlier_binds() {
    let (_t, s) = serve();
    let stale = common::Stale { errno: Errno::NOTCONN, poll: PollFlags::ERR };
    common::rebind_with_earlier_descriptors_open(&s, || open_dev("xyz0"), &stale);
}

/// A 32-bit process's ioctls (`FUSE_IOCTL_COMPAT`) on the real `/dev/xyz0`:
/// xyz's arguments have one layout for both, so its `compat_ioctl` is its
/// `ioctl`, and the 32-bit C client's whole round (the tty-style
/// `FIFO_LEN` and the pointer-following `REVERSE` among them) matches the
/// 64-bit one's; on `/dev/bench0`, whose driver has no `compat_ioctl`, a
/// 32-bit caller gets `ENOTTY`.
#[test]
#[ignore = "needs CUSE: run by scripts/vm-test"]
fn a_32_bit_client_gets_the_same_answers() {
    let Some(c32) = common::c_client(true) else { return };
    let (_t, s) = serve();
    let out32 = common::run_c_client(&c32, Path::new("/dev/xyz0"), "io");
    let out64 = common::run_c_client(&c_client(), Path::new("/dev/xyz0"), "io");
    // The count is the device's: the second client's is one more.
    let strip = |o: &str| o.lines().filter(|l| !l.starts_with("count ")).collect::<Vec<_>>().join("\n");
    assert_eq!(strip(&out32), strip(&out64), "32-bit:\n{out32}\n64-bit:\n{out64}");
    assert!(out32.contains("reverse fedcba 6"), "{out32}");
    assert!(out32.contains("count 1") && out64.contains("count 2"), "{out32}\n{out64}");
    // The `bench` driver has no `compat_ioctl`: ENOTTY for 32 bits only.
    s.write("sys/bus/sim/new_device", "bench bench0").unwrap();
    until(|| !gone("bench0"));
    assert_eq!(common::run_c_client(&c32, Path::new("/dev/bench0"), "count"), "count ENOTTY");
    assert_eq!(common::run_c_client(&c_client(), Path::new("/dev/bench0"), "count"), "count 1");
}

/// A `--supervise`d CUSE server (its channels kept by the keeper), on
/// `/dev/fuse`: what a restartable server serves through.
fn serve_supervised() -> (std::sync::MutexGuard<'static, ()>, Server) {
    let turn = lock(&ONE_AT_A_TIME);
    assert!(Path::new("/dev/cuse").exists(), "no /dev/cuse: run these in scripts/vm-test");
    let s = Server::start_on(["--io-uring", "off"], &["--cuse", "--supervise"]).expect("FUSE is needed");
    (turn, s)
}

fn rdev(name: &str) -> u64 {
    std::fs::metadata(format!("/dev/{name}")).unwrap().rdev()
}

/// Watches `/dev/<name>` on a thread of its own until the returned flag is
/// set; the thread's result says whether it was ever missing.
fn watch_node(
    name: &'static str,
) -> (std::sync::Arc<std::sync::atomic::AtomicBool>, std::thread::JoinHandle<bool>) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    let t = std::thread::spawn(move || {
        let mut missing = false;
        while !s.load(std::sync::atomic::Ordering::Relaxed) {
            missing |= gone(name);
            std::thread::yield_now();
        }
        missing
    });
    (stop, t)
}

/// No client thread of ours is left in state D.
fn no_thread_in_state_d() {
    for t in std::fs::read_dir("/proc/self/task").unwrap() {
        let stat = std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap_or_default();
        assert_ne!(stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()), Some("D"));
    }
}

/// The server's death is an unplug over CUSE too: the keeper holds every
/// channel, so `/dev/xyz0` and `/dev/xyz1` stay (same numbers) through it;
/// callers the dead server held get `ENODEV` (their requests resent to
/// the next server), a poller `POLLHUP | POLLERR`, a descriptor opened
/// before the death `ENODEV`; new opens reach the new server's drivers.
#[test]
#[ignore = "needs CUSE: run by scripts/vm-test"]
fn a_killed_supervised_server_keeps_every_node_and_its_number() {
    let (_t, s) = serve_supervised();
    let before = (rdev("xyz0"), rdev("xyz1"));
    let idle = open_dev("xyz0").unwrap();
    let fd = std::sync::Arc::new(open_dev("xyz0").unwrap());
    let reader = {
        let fd = fd.clone();
        blocked(libc::SYS_read, move || common::read(&*fd, 8))
    };
    let waiter = {
        let fd = fd.clone();
        blocked(libc::SYS_ioctl, move || common::wait_ioctl(&*fd))
    };
    let poller = {
        let fd = fd.clone();
        blocked(libc::SYS_ppoll, move || common::poll_now(&*fd, PollFlags::IN, 60_000))
    };
    until(|| s.busy() >= 2);
    let (stop, watcher) = watch_node("xyz0");
    let first = devlife::torture::keeper_child(s.child.id()).expect("the keeper runs a server");
    common::kill(first);
    let second = common::restarted(&s, first);
    assert_eq!(reader.join().unwrap(), Err(Errno::NODEV), "a blocked reader the dead server held");
    assert_eq!(waiter.join().unwrap(), Err(Errno::NODEV), "a waiter the dead server held");
    let revents = poller.join().unwrap();
    assert!(revents.contains(PollFlags::HUP | PollFlags::ERR), "{revents:?}");
    // An earlier descriptor is a removed device's file.
    assert_eq!(common::count(&idle), Err(Errno::NODEV));
    assert_eq!(common::read(&idle, 1), Err(Errno::NODEV));
    let r = common::poll_now(&idle, PollFlags::IN, 0);
    assert!(r.contains(PollFlags::HUP | PollFlags::ERR), "{r:?}");
    drop(idle);
    // The same devices, never gone; new opens reach the new drivers.
    let fresh = open_dev("xyz0").unwrap();
    assert_eq!(common::count(&fresh), Ok(1), "a new server's count");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(!watcher.join().unwrap(), "/dev/xyz0 went missing during the restart");
    assert_eq!((rdev("xyz0"), rdev("xyz1")), before, "the devices' numbers");
    let class = std::fs::read_to_string(s.p("sys/class/xyz/xyz0/dev")).unwrap();
    assert_eq!(class, format!("{}:{}\n", libc::major(before.0), libc::minor(before.0)));
    no_thread_in_state_d();
    assert_ne!(second, first);
    drop(fresh);
    // A clean stop still removes every node (the keeper drops the channels).
    stop_removes_every_node(s);
}

/// A planned upgrade (SIGHUP to the keeper) keeps the CUSE devices too:
/// clients looping open, `XYZ_IOC_COUNT`, close through it see `ENODEV`
/// only on descriptors opened before it, and no other error.
#[test]
#[ignore = "needs CUSE: run by scripts/vm-test"]
fn a_planned_upgrade_keeps_every_node_and_fails_only_earlier_descriptors() {
    let (_t, s) = serve_supervised();
    let before = rdev("xyz0");
    let earlier = open_dev("xyz0").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let after = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let upgraded = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loops: Vec<_> = (0..3)
        .map(|_| {
            let (stop, after, upgraded) = (stop.clone(), after.clone(), upgraded.clone());
            std::thread::spawn(move || {
                let (mut ops, mut nodev, mut bad) = (0u64, 0u64, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let fd = match open_dev("xyz0") {
                        Ok(fd) => fd,
                        Err(e) => {
                            bad.push(format!("open: {e}"));
                            continue;
                        }
                    };
                    match common::count(&fd) {
                        Ok(_) => {
                            ops += 1;
                            if upgraded.load(std::sync::atomic::Ordering::Relaxed) {
                                after.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                        Err(Errno::NODEV) => nodev += 1,
                        Err(e) => bad.push(format!("ioctl: {e}")),
                    }
                }
                (ops, nodev, bad)
            })
        })
        .collect();
    until(|| {
        std::fs::read_to_string(s.p("debug/xyz/xyz0/ops"))
            .is_ok_and(|o| o.trim().parse::<u64>().unwrap_or(0) > 50)
    });
    let first = devlife::torture::keeper_child(s.child.id()).unwrap();
    s.signal(rustix::process::Signal::HUP);
    let second = common::restarted(&s, first);
    upgraded.store(true, std::sync::atomic::Ordering::Relaxed);
    until(|| after.load(std::sync::atomic::Ordering::Relaxed) > 50);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ops, mut nodev) = (0, 0);
    for l in loops {
        let (o, n, bad) = l.join().unwrap();
        assert!(
            bad.is_empty(),
            "{} errors other than an earlier descriptor's ENODEV, first: {:?}",
            bad.len(),
            &bad[..bad.len().min(5)]
        );
        ops += o;
        nodev += n;
    }
    eprintln!("{ops} ops, {nodev} ENODEV on descriptors opened before the upgrade");
    assert_eq!(common::count(&earlier), Err(Errno::NODEV));
    assert_eq!(rdev("xyz0"), before, "the device's number");
    assert_ne!(second, first);
    drop(earlier);
    assert!(s.stop().success());
}

/// Hot-unplug racing clients (issue 24): three threads loop open,
/// `XYZ_IOC_COUNT`, close on `/dev/hp0` while it is deleted and added
/// again 60 times. A racing client sees what a removed Linux character
/// device gives: `ENOENT` (the node is gone), `ENXIO` (a device number
/// with no device), `ENODEV` (a call reaching the removed device) or
/// `ENOTCONN` (a descriptor of a closed channel), never `ECONNABORTED`.
#[test]
#[ignore = "needs CUSE: run by scripts/vm-test"]
fn hot_unplug_racing_open_ioctl_close_sees_only_a_removed_devices_errnos() {
    let (_t, s) = serve();
    s.write("sys/bus/sim/new_device", "xyz hp0").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut seen = std::collections::BTreeMap::<String, u64>::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (what, r) = match open_dev("hp0") {
                        Ok(fd) => ("ioctl", common::count(&fd).map(drop)),
                        Err(e) => ("open", Err(e)),
                    };
                    let key = match r {
                        Ok(()) => "ok".to_owned(),
                        Err(Errno::NOENT) => "ENOENT".to_owned(),
                        Err(Errno::NXIO) => "ENXIO".to_owned(),
                        Err(Errno::NODEV) => "ENODEV".to_owned(),
                        Err(Errno::NOTCONN) => "ENOTCONN".to_owned(),
                        Err(Errno::CONNABORTED) => "ECONNABORTED".to_owned(),
                        Err(e) => format!("errno {} ({e})", e.raw_os_error()),
                    };
                    let key = if key == "ok" { key } else { format!("{what} {key}") };
                    *seen.entry(key).or_default() += 1;
                }
                seen
            })
        })
        .collect();
    for _ in 0..60 {
        s.write("sys/bus/sim/delete_device", "hp0").unwrap();
        s.write("sys/bus/sim/new_device", "xyz hp0").unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut all = std::collections::BTreeMap::<String, u64>::new();
    for c in clients {
        for (k, n) in c.join().unwrap() {
            *all.entry(k).or_default() += n;
        }
    }
    eprintln!("what the racing clients saw: {all:?}");
    let allowed = ["ok", "ENOENT", "ENXIO", "ENODEV", "ENOTCONN"];
    assert!(all.keys().all(|k| k == "ok" || allowed.contains(&k.split_once(' ').unwrap().1)), "{all:?}");
    assert!(all.get("ok").copied().unwrap_or(0) > 0, "no call reached the device: {all:?}");
}
