//! `devlife serve` driven by real system calls: the binary is started on a
//! mount of its own, and threads and child processes use it as any
//! program would. Hang guards only (generous timeouts); no sleeps decide
//! an outcome.
//!
//! Without FUSE (no `/dev/fuse`, or neither root nor `fusermount3`) the
//! tests say so and pass, unless `CI=true`, where that is a failure.

mod common;
use devlife::xyz_client::{lock as lock_ioctl, unbind_self};
use devlife_gate::sync::lock;

use common::*;
use devlife_drivers::xyz::XYZ_IOC_WAIT;
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[test]
fn tree_layout() {
    let Some(s) = Server::start(&[]) else { return };
    let mut dev: Vec<_> = std::fs::read_dir(s.p("dev"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    dev.sort();
    assert_eq!(dev, ["xyz0", "xyz1"]);
    let devt = std::fs::read_to_string(s.p("sys/class/xyz/xyz0/dev")).unwrap();
    assert!(devt.ends_with(":0\n"), "{devt:?}");
    let (major, minor) = devt.trim().split_once(':').unwrap();
    assert_eq!(
        std::fs::read_to_string(s.p("sys/class/xyz/xyz0/uevent")).unwrap(),
        format!("MAJOR={major}\nMINOR={minor}\nDEVNAME=xyz0\n")
    );
    assert_eq!(
        std::fs::read_to_string(s.p("sys/bus/sim/devices/xyz0/uevent")).unwrap(),
        "DEVTYPE=xyz\nDRIVER=xyz\n"
    );
    assert_eq!(
        std::fs::read_link(s.p("sys/bus/sim/devices/xyz0/driver")).unwrap(),
        Path::new("../../drivers/xyz")
    );
    let stats = std::fs::read_to_string(s.p("debug/devlife/stats")).unwrap();
    for k in ["opens ", "releases ", "open_files ", "inflight_ops ", "pending_ops "] {
        assert!(stats.lines().any(|l| l.starts_with(k)), "{k} in {stats}");
    }
    let fd = s.open("dev/xyz0");
    assert_eq!(count(&fd), Ok(1));
    assert_eq!(std::fs::read_to_string(s.p("debug/xyz/xyz0/ops")).unwrap(), "1\n");
    let meta = std::fs::metadata(s.p("dev/xyz0")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.mode() & 0o7777, 0o600);
    assert_eq!(meta.uid(), rustix::process::getuid().as_raw());
    assert!(s.stop().success());
}

#[test]
fn unbind_with_files_open_then_rebind() {
    let Some(s) = Server::start(&[]) else { return };
    let fd = s.open("dev/xyz0");
    assert_eq!(count(&fd), Ok(1));
    assert_eq!(rustix::io::write(&fd, b"abc"), Ok(3));
    s.write("sys/bus/sim/drivers/xyz/unbind", "xyz0\n").unwrap();
    assert_eq!(read(&fd, 4), Err(Errno::NODEV));
    assert_eq!(rustix::io::write(&fd, b"x"), Err(Errno::NODEV));
    assert_eq!(count(&fd), Err(Errno::NODEV));
    use rustix::event::PollFlags;
    let r = poll_now(&fd, PollFlags::IN | PollFlags::OUT, 0);
    assert!(r.contains(PollFlags::HUP | PollFlags::ERR), "{r:?}");
    assert_eq!(
        rustix::fs::stat(s.p("dev/xyz0")).err(),
        Some(Errno::NOENT),
        "the node's path is gone at once"
    );
    s.write("sys/bus/sim/drivers/xyz/bind", "xyz0").unwrap();
    assert_eq!(count(&fd), Err(Errno::NODEV), "an old descriptor never reaches the new binding");
    let fresh = s.open("dev/xyz0");
    assert_eq!(count(&fresh), Ok(1), "fresh context");
    drop(fd);
    drop(fresh);
    until(|| s.stat_line("open_files") == 1); // only the stats file being read
    assert!(s.stop().success());
}

#[test]
fn unbind_waits_for_a_hold_and_wakes_sleepers() {
    let Some(s) = Server::start(&[]) else { return };
    let s = std::sync::Arc::new(s);
    let holder = {
        let fd = s.open("dev/xyz0");
        std::thread::spawn(move || hold(&fd, 300))
    };
    let reader = {
        let fd = s.open("dev/xyz0");
        std::thread::spawn(move || read(&fd, 8))
    };
    let waiter = {
        let fd = s.open("dev/xyz0");
        std::thread::spawn(move || wait_ioctl(&fd))
    };
    until(|| s.busy() >= 3);
    s.write("sys/bus/sim/drivers/xyz/unbind", "xyz0").unwrap();
    // The unbind returned: every handler of the binding has left.
    assert_eq!(s.busy(), 0);
    assert_eq!(holder.join().unwrap(), Ok(()), "a running handler completes");
    assert_eq!(reader.join().unwrap(), Err(Errno::NODEV));
    assert_eq!(waiter.join().unwrap(), Err(Errno::NODEV));
}

fn python_blocked(s: &Server, code: &str) -> Child {
    let mut c = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import os, fcntl\nfd = os.open('{}', os.O_RDWR)\nprint('in', flush=True)\n{code}\n",
            s.p("dev/xyz1").display()
        ))
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(c.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "in");
    c
}

#[test]
fn signals_free_clients_blocked_in_read_and_wait() {
    let Some(s) = Server::start(&[]) else { return };
    let wait = format!("fcntl.ioctl(fd, {})", XYZ_IOC_WAIT.raw());
    for (code, sig, expect) in [
        ("os.read(fd, 10)", rustix::process::Signal::INT, -2),
        ("os.read(fd, 10)", rustix::process::Signal::KILL, -9),
        (wait.as_str(), rustix::process::Signal::INT, -2),
        (wait.as_str(), rustix::process::Signal::KILL, -9),
    ] {
        let before = s.busy();
        let mut c = python_blocked(&s, code);
        until(|| s.busy() > before);
        let pid = rustix::process::Pid::from_raw(c.id() as i32).unwrap();
        rustix::process::kill_process(pid, sig).unwrap();
        let st = wait_timeout(&mut c, Duration::from_secs(30))
            .expect("client still blocked 30 s after the signal");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal().map(|x| -x), Some(expect), "{code}: {st:?}");
    }
    until(|| s.busy() == 0);
}

#[test]
fn more_blocked_readers_than_workers() {
    let Some(s) = Server::start(&[]) else { return };
    let readers: Vec<_> = (0..24)
        .map(|_| {
            let fd = s.open("dev/xyz1");
            std::thread::spawn(move || read(&fd, 1))
        })
        .collect();
    until(|| s.busy() == 24);
    // Unrelated requests are still served.
    let fd = s.open("dev/xyz0");
    assert_eq!(count(&fd), Ok(1));
    assert!(std::fs::read_dir(s.p("sys/bus/sim/devices")).unwrap().count() == 2);
    // A write wakes one reader per byte; the removal wakes the rest.
    let w = s.open("dev/xyz1");
    rustix::io::write(&w, b"ab").unwrap();
    s.write("sys/bus/sim/delete_device", "xyz1").unwrap();
    let results: Vec<_> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    let got = results.iter().filter(|r| r.is_ok()).count();
    assert!(got <= 2, "{results:?}");
    assert!(results.iter().all(|r| r.is_ok() || *r == Err(Errno::NODEV)), "{results:?}");
}

/// Pins the calling thread to `cpu`.
#[test]
fn transport_under_test_carries_the_requests() {
    let Some(s) = Server::start(&[]) else { return };
    assert_eq!(count(s.open("dev/xyz0")), Ok(1));
    let st = fuse_stats(&s);
    match std::env::var("DEVLIFE_TEST_TRANSPORT").as_deref() {
        Ok("io-uring") => {
            assert_eq!(st["transport"], "io_uring", "{st:?}");
            assert!(st["ring_requests"].parse::<u64>().unwrap() > 0, "{st:?}");
        }
        Ok("dev-fuse") => {
            assert_eq!(st["transport"], "dev_fuse", "{st:?}");
            assert_eq!(st["ring_requests"], "0", "{st:?}");
        }
        _ => assert!(["io_uring", "dev_fuse"].contains(&st["transport"].as_str()), "{st:?}"),
    }
}

#[test]
fn one_cpu_more_blocked_readers_than_workers_then_a_writer() {
    // Every client on one CPU: over io_uring all of them use that CPU's
    // queue, whose entries are held one by one by reads that wait (async:
    // deferred, no thread each); the queue must grow its entries, and the
    // write that frees the readers must get through a queue all of whose
    // first entries are held.
    let Some(s) = Server::start(&[]) else { return };
    const N: usize = 12;
    let readers: Vec<_> = (0..N)
        .map(|_| {
            let fd = s.open("dev/xyz1");
            std::thread::spawn(move || {
                pin(0);
                read(&fd, 1)
            })
        })
        .collect();
    until(|| s.busy() == N as u64);
    if std::env::var("DEVLIFE_TEST_TRANSPORT").as_deref() == Ok("io-uring") {
        // While the readers wait: entries, not threads.
        let st = fuse_stats(&s);
        let queues = st["ring_queues"].parse::<usize>().unwrap();
        assert!(st["ring_entries"].parse::<usize>().unwrap() > N, "the queue grew: {st:?}");
        assert!(st["ring_kicks"].parse::<u64>().unwrap() > 0, "and kicked itself: {st:?}");
        assert!(st["ring_workers"].parse::<usize>().unwrap() < N + queues, "no thread per reader: {st:?}");
        assert_eq!(st["deferred"].parse::<usize>().unwrap(), N, "{st:?}");
    }
    let w = s.open("dev/xyz1");
    let writer = std::thread::spawn(move || {
        pin(0);
        rustix::io::write(&w, &[b'x'; N]).map_err(|e| format!("{e}"))
    });
    assert_eq!(writer.join().unwrap(), Ok(N));
    for r in readers {
        assert_eq!(r.join().unwrap(), Ok(b"x".to_vec()));
    }
}

#[test]
fn a_busy_handler_does_not_hold_up_its_cpu() {
    // A handler busy without a cancellable wait (XYZ_IOC_HOLD: "hardware
    // busy", a plain sleep) on CPU 0: over io_uring the thread leading CPU
    // 0's queue runs it, and the monitor hands the queue to another thread;
    // requests from that CPU are answered while the handler still runs.
    let Some(s) = Server::start(&[]) else { return };
    if !rustix::thread::sched_getaffinity(None).unwrap().is_set(0) {
        eprintln!("skipped: CPU 0 is not available to this process");
        return;
    }
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let holder = {
        let (fd, done) = (s.open("dev/xyz0"), done.clone());
        std::thread::spawn(move || {
            pin(0);
            // The longest hold the driver takes: longer than the test runs.
            let r = hold(&fd, devlife_drivers::xyz::HOLD_MAX_MS);
            done.store(true, Ordering::SeqCst);
            r
        })
    };
    until(|| s.busy() >= 1);
    let fd = s.open("dev/xyz1");
    let counter = std::thread::spawn(move || {
        pin(0);
        (0..100).map(|_| count(&fd)).collect::<Result<Vec<_>, _>>()
    });
    assert_eq!(counter.join().unwrap().map(|v| v.len()), Ok(100));
    assert!(!done.load(Ordering::SeqCst), "answered while the busy handler still ran");
    if std::env::var("DEVLIFE_TEST_TRANSPORT").as_deref() == Ok("io-uring") {
        let st = fuse_stats(&s);
        assert!(st["ring_steals"].parse::<u64>().unwrap() > 0, "the monitor took the queue over: {st:?}");
    }
    // The hold cannot be cancelled: the server goes, and the holder with it.
    s.signal(rustix::process::Signal::KILL);
    assert!(holder.join().unwrap().is_err());
}

#[test]
fn poll_readiness_and_wakeups() {
    use rustix::event::PollFlags;
    let Some(s) = Server::start(&[]) else { return };
    let fd = s.open("dev/xyz0");
    assert_eq!(poll_now(&fd, PollFlags::IN | PollFlags::OUT, 0), PollFlags::OUT);
    let poller = {
        let fd = s.open("dev/xyz0");
        std::thread::spawn(move || poll_now(&fd, PollFlags::IN, 60_000))
    };
    // Not a timing: the poller either polls before the write (and is woken
    // by the notification) or after (and sees POLLIN at once).
    rustix::io::write(&fd, b"x").unwrap();
    assert!(poller.join().unwrap().contains(PollFlags::IN));
    read(&fd, 1).unwrap();
    let poller = {
        let fd = s.open("dev/xyz0");
        std::thread::spawn(move || poll_now(&fd, PollFlags::IN, 60_000))
    };
    s.write("sys/bus/sim/delete_device", "xyz0").unwrap();
    let r = poller.join().unwrap();
    assert!(r.contains(PollFlags::HUP), "a poller is woken by the removal: {r:?}");
}

#[test]
fn bad_control_input_changes_nothing() {
    let Some(s) = Server::start(&[]) else { return };
    let long = "x".repeat(256);
    let cases: &[(&str, &str, Errno)] = &[
        ("sys/bus/sim/drivers/xyz/bind", "nope", Errno::NODEV),
        ("sys/bus/sim/drivers/xyz/bind", "xyz0", Errno::BUSY),
        ("sys/bus/sim/drivers/xyz/unbind", "nope", Errno::NODEV),
        // `echo > bind`: empty after the newline (a zero-length write never reaches the server).
        ("sys/bus/sim/drivers/xyz/bind", "\n", Errno::INVAL),
        ("sys/bus/sim/new_device", "xyz", Errno::INVAL),
        ("sys/bus/sim/new_device", "nosuchtype x", Errno::INVAL),
        ("sys/bus/sim/new_device", "xyz a/b", Errno::INVAL),
        ("sys/bus/sim/new_device", "xyz ..", Errno::INVAL),
        ("sys/bus/sim/new_device", &format!("xyz {long}"), Errno::INVAL),
        ("sys/bus/sim/new_device", "xyz xyz0", Errno::BUSY),
        ("sys/bus/sim/delete_device", "nope", Errno::NODEV),
    ];
    for (file, text, err) in cases {
        assert_eq!(s.write(file, text), Err(*err), "{file} <- {text:?}");
    }
    // Each refusal is logged at info (the server's default level) with the
    // file, the input and the reason.
    let refused = || lock(&s.stderr).lines().filter(|l| l.contains("control write refused")).count();
    until(|| refused() == cases.len());
    let log = lock(&s.stderr).clone();
    let line = log.lines().find(|l| l.contains("nosuchtype")).expect("the unknown type's refusal is logged");
    for want in [
        " INFO ",
        "file=sys/bus/sim/new_device",
        "input=\"nosuchtype x\"",
        "reason=no driver of the bus handles device type \"nosuchtype\"",
    ] {
        assert!(line.contains(want), "{want:?} not in {line:?}");
    }
    let n = std::fs::read_dir(s.p("dev")).unwrap().count();
    assert_eq!(n, 2, "nothing changed");
    s.write("sys/bus/sim/new_device", "xyz xyz7\n").unwrap();
    assert_eq!(count(s.open("dev/xyz7")), Ok(1));
}

#[test]
fn sigterm_with_files_open_then_restart_over_a_stale_mount() {
    let Some(s) = Server::start(&[]) else { return };
    let dir = s.dir.clone();
    let fd = s.open("dev/xyz0");
    assert!(s.stop().success(), "SIGTERM: exit 0");
    // The connection is gone: refused (ENOTCONN), or, while the kernel
    // still tears down the server's io_uring queues after it exited, ended
    // by the abort (ECONNABORTED, as FUSE_ABORT_ERROR is negotiated) or by
    // the cancellation of the ring's commands (ECANCELED).
    let gone = |e: Errno| matches!(e, Errno::NOTCONN | Errno::CONNABORTED | Errno::CANCELED);
    let e = count(&fd).unwrap_err();
    assert!(gone(e), "{e:?}");
    drop(fd);
    // A server killed with SIGKILL leaves a stale mount; a new one clears it.
    let mut s = Server::start_at(&dir, &[]);
    s.signal(rustix::process::Signal::KILL);
    let _ = s.child.wait();
    // Stale (the same errors as above).
    let e = rustix::fs::stat(&dir).unwrap_err();
    assert!(gone(e), "{e:?}");
    let mut s2 = Server::start_at(&dir, &[]);
    s2.signal(rustix::process::Signal::TERM);
    let _ = wait_timeout(&mut s2.child, Duration::from_secs(60));
    until(|| s2.stderr.lock().unwrap().contains("stale mount"));
    drop(s);
}

#[test]
fn other_users_are_kept_out() {
    if !rustix::process::getuid().is_root() || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: needs root and setpriv");
        return;
    }
    let as_nobody = |cmd: &str| {
        Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "sh", "-c", cmd])
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    let Some(s) = Server::start(&[]) else { return };
    // Even the root directory needs to be traversable for the test user.
    assert!(
        !as_nobody(&format!("ls {}", s.dir.display())),
        "without --allow-other nobody else may even list"
    );
    drop(s);
    let Some(s) = Server::start(&["--allow-other"]) else { return };
    let d = s.dir.display();
    assert!(as_nobody(&format!("ls {d}/dev")), "with --allow-other listing works");
    assert!(!as_nobody(&format!("cat {d}/dev/xyz0")), "node modes are enforced");
    assert!(
        !as_nobody(&format!("echo xyz0 > {d}/sys/bus/sim/drivers/xyz/unbind")),
        "control files: owner only"
    );
    assert!(std::fs::read_dir(s.p("dev")).unwrap().count() == 2);
    let _ = std::io::stderr().flush();
}

#[test]
fn attributes_and_debugfs_after_removal() {
    let Some(s) = Server::start(&[]) else { return };
    let fd = s.open("dev/xyz0");
    count(&fd).unwrap();
    assert_eq!(std::fs::read_to_string(s.p("sys/bus/sim/devices/xyz0/count")).unwrap(), "1\n");
    let attr =
        rustix::fs::open(s.p("sys/bus/sim/devices/xyz0/count"), OFlags::RDONLY, Mode::empty()).unwrap();
    let ops = rustix::fs::open(s.p("debug/xyz/xyz0/ops"), OFlags::RDONLY, Mode::empty()).unwrap();
    s.write("sys/bus/sim/drivers/xyz/unbind", "xyz0").unwrap();
    assert_eq!(rustix::io::pread(&attr, &mut [0u8; 8], 0), Err(Errno::NODEV), "attribute after removal");
    assert_eq!(rustix::io::pread(&ops, &mut [0u8; 8], 0), Err(Errno::IO), "debugfs after removal");
    assert_eq!(rustix::fs::stat(s.p("sys/bus/sim/devices/xyz0/count")).err(), Some(Errno::NOENT));
    assert_eq!(rustix::fs::stat(s.p("debug/xyz/xyz0")).err(), Some(Errno::NOENT));
}

#[test]
fn many_threads_share_one_descriptor_across_removal() {
    let Some(s) = Server::start(&[]) else { return };
    let fd = std::sync::Arc::new(s.open("dev/xyz0"));
    let go = std::sync::Arc::new(std::sync::Barrier::new(5));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (fd, go) = (fd.clone(), go.clone());
            std::thread::spawn(move || {
                go.wait();
                let mut n = 0u64;
                loop {
                    match count(&*fd) {
                        Ok(_) => n += 1,
                        Err(Errno::NODEV) => return n,
                        Err(e) => panic!("unexpected {e}"),
                    }
                }
            })
        })
        .collect();
    go.wait();
    until(|| {
        std::fs::read_to_string(s.p("debug/xyz/xyz0/ops"))
            .is_ok_and(|t| t.trim().parse::<u64>().unwrap_or(0) > 200)
    });
    s.write("sys/bus/sim/delete_device", "xyz0").unwrap();
    let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(total > 200);
}

/// Restores `/dev/fuse`'s mode when dropped.
struct DevFuseMode(u32);
impl Drop for DevFuseMode {
    fn drop(&mut self) {
        let _ = rustix::fs::chmod("/dev/fuse", Mode::from_raw_mode(self.0));
    }
}

#[test]
fn non_root_mount_through_fusermount3() {
    // As a normal user the server mounts through fusermount3. This machine
    // kind ships /dev/fuse as 0600, so the test opens it to others for its
    // duration (and restores the mode), which needs root.
    if !fuse_available()
        || !rustix::process::getuid().is_root()
        || Command::new("setpriv").arg("--version").output().is_err()
    {
        eprintln!("skipped: needs root (to run a second user), setpriv and fusermount3");
        return;
    }
    if Command::new("fusermount3").arg("-V").output().is_err() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "fusermount3 missing under CI");
        eprintln!("skipped: no fusermount3");
        return;
    }
    let mode = rustix::fs::stat("/dev/fuse").unwrap().st_mode & 0o7777;
    let _restore = DevFuseMode(mode);
    rustix::fs::chmod("/dev/fuse", Mode::from_raw_mode(0o666)).unwrap();
    let base = std::env::temp_dir().join(format!("devlife-nobody-{}", std::process::id()));
    let dir = base.join("mnt");
    std::fs::create_dir_all(&dir).unwrap();
    let bin = base.join("devlife");
    std::fs::copy(env!("CARGO_BIN_EXE_devlife"), &bin).unwrap();
    for p in [&base, &dir] {
        rustix::fs::chown(
            p,
            Some(rustix::process::Uid::from_raw(65534)),
            Some(rustix::process::Gid::from_raw(65534)),
        )
        .unwrap();
    }
    let mut child = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(&bin)
        .args(["serve", "--mount"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim_end(), format!("ready {}", dir.display()));
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(
        mounts.lines().any(|l| l.contains(&*dir.to_string_lossy()) && l.contains("user_id=65534")),
        "{mounts}"
    );
    // Root itself is kept out without --allow-other.
    assert_eq!(rustix::fs::stat(dir.join("dev")).err(), Some(Errno::ACCESS));
    let ok = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "sh", "-c"])
        .arg(format!("test -f {0}/dev/xyz0 && echo xyz0 > {0}/sys/bus/sim/drivers/xyz/unbind && ! test -e {0}/dev/xyz0", dir.display()))
        .status()
        .unwrap();
    assert!(ok.success());
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let st = wait_timeout(&mut child, Duration::from_secs(60)).expect("exit after SIGTERM");
    assert!(st.success());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains(&*dir.to_string_lossy()), "unmounted through fusermount3 -u");
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn opens_and_closes_racing_removal() {
    let Some(s) = Server::start(&[]) else { return };
    let s = std::sync::Arc::new(s);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (s, stop) = (s.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut ok = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let fd = match rustix::fs::open(
                        s.p("dev/xyz0"),
                        OFlags::RDWR | OFlags::CLOEXEC,
                        Mode::empty(),
                    ) {
                        Ok(fd) => fd,
                        // Gone from the tree, or removed between lookup and open.
                        Err(Errno::NOENT | Errno::NXIO) => continue,
                        Err(e) => panic!("open: {e}"),
                    };
                    match count(&fd) {
                        Ok(_) => ok += 1,
                        Err(Errno::NODEV) => {}
                        Err(e) => panic!("ioctl: {e}"),
                    }
                    drop(fd); // close racing the removal
                }
                ok
            })
        })
        .collect();
    for _ in 0..50 {
        s.write("sys/bus/sim/drivers/xyz/unbind", "xyz0").unwrap();
        s.write("sys/bus/sim/drivers/xyz/bind", "xyz0").unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let ok: u64 = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert!(ok > 0);
    // Every open was released exactly once (RELEASE is sent asynchronously
    // after close(2) returns, hence the wait).
    // One snapshot per check: reading the stats file is itself an open.
    until(|| {
        let st = s.stats();
        st["open_files"] == 1 && st["opens"] == st["releases"] + 1
    });
}

#[test]
fn every_interrupt_reaches_its_request() {
    // Regression test for a lost interrupt: an INTERRUPT read by another
    // worker before the interrupted request was registered used to be
    // answered EAGAIN on the wrong cloned descriptor and dropped by the
    // kernel, which sends one interrupt per request: the caller then
    // waited until the device was removed. Here the device is never
    // removed: every wait must end in EINTR.
    use std::os::unix::thread::JoinHandleExt;
    let Some(s) = Server::start(&[]) else { return };
    // SAFETY: the handler is an empty closure: async-signal-safe.
    unsafe { signal_hook::low_level::register(signal_hook::consts::SIGUSR1, || {}) }.unwrap();
    let fd = s.open("dev/xyz0");
    const N: usize = 500;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d2 = done.clone();
    let waiter = std::thread::spawn(move || {
        let mut eintr = 0;
        for _ in 0..N {
            match wait_ioctl(&fd) {
                Err(Errno::INTR) => eintr += 1,
                r => panic!("XYZ_IOC_WAIT returned {r:?}"),
            }
        }
        d2.store(true, Ordering::Relaxed);
        eintr
    });
    let tid = waiter.as_pthread_t();
    let t = Instant::now();
    let mut spin = 1u32;
    while !done.load(Ordering::Relaxed) {
        assert!(t.elapsed() < Duration::from_secs(120), "a wait was never interrupted: lost interrupt");
        // SAFETY: `tid` is a live thread of this process until `done`;
        // SIGUSR1 has a no-op handler installed above.
        unsafe { libc::pthread_kill(tid, libc::SIGUSR1) };
        // Vary the delay so signals land at every stage of a request.
        spin = spin.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        for _ in 0..(spin >> 16) % 20_000 {
            std::hint::spin_loop();
        }
    }
    assert_eq!(waiter.join().unwrap(), N);
}

#[test]
fn injected_faults() {
    let Some(s) = Server::start(&[]) else { return };
    let s = std::sync::Arc::new(s);
    let fault = |name: &str, v: &str| s.write(&format!("debug/xyz/fault/{name}"), v).unwrap();

    // A panicking handler: EIO for the caller, the server and device live on.
    let fd = s.open("dev/xyz0");
    fault("panic", "1");
    assert_eq!(count(&fd), Err(Errno::IO));
    assert_eq!(s.stat_line("panics"), 1);
    fault("panic", "0");
    // One log line, naming the device and the operation; no panic banner.
    until(|| s.stderr.lock().unwrap().contains("handler panicked"));
    let log = s.stderr.lock().unwrap().clone();
    let lines: Vec<_> = log.lines().filter(|l| l.contains("injected panic")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains("xyz0") && lines[0].contains("ioctl"), "{log}");
    assert!(!log.contains("panicked at"), "{log}");
    assert_eq!(count(&fd), Ok(1), "the device lives on");

    // Allocation failure: ENOMEM, nothing changed, then writes work again.
    fault("fail_alloc", "1");
    assert_eq!(rustix::io::write(&fd, b"abc"), Err(Errno::NOMEM));
    fault("fail_alloc", "0");
    assert_eq!(rustix::io::write(&fd, b"abc"), Ok(3));
    assert_eq!(read(&fd, 8), Ok(b"abc".to_vec()));

    // Probe failing after each managed step: everything registered so far
    // is unwound; the device stays, unbound.
    for step in 1..=3 {
        fault("fail_probe_at", &step.to_string());
        s.write("sys/bus/sim/new_device", "xyz xyz9").unwrap();
        assert_eq!(rustix::fs::stat(s.p("dev/xyz9")).err(), Some(Errno::NOENT), "step {step}");
        assert_eq!(rustix::fs::stat(s.p("debug/xyz/xyz9")).err(), Some(Errno::NOENT), "step {step}");
        assert_eq!(
            rustix::fs::stat(s.p("sys/bus/sim/devices/xyz9/count")).err(),
            Some(Errno::NOENT),
            "step {step}"
        );
        assert_eq!(std::fs::read_to_string(s.p("sys/bus/sim/devices/xyz9/uevent")).unwrap(), "DEVTYPE=xyz\n");
        s.write("sys/bus/sim/delete_device", "xyz9").unwrap();
    }
    fault("fail_probe_at", "0");

    // A slow release: the removal waits for it, and it runs once.
    fault("slow_release_ms", "200");
    let releases = s.stat_line("releases");
    s.write("sys/bus/sim/drivers/xyz/unbind", "xyz0").unwrap();
    // The release of `fd` ran during the removal (plus the stats reads').
    assert!(s.stat_line("releases") > releases);
    fault("slow_release_ms", "0");
    drop(fd);
    s.write("sys/bus/sim/drivers/xyz/bind", "xyz0").unwrap();

    // The remover holds the hardware lock: handlers waiting for it are
    // cancelled by the removal, which completes.
    fault("lock_hw_in_remove", "1");
    let lockers: Vec<_> = (0..3)
        .map(|_| {
            let fd = s.open("dev/xyz0");
            std::thread::spawn(move || {
                loop {
                    match lock_ioctl(&fd) {
                        Ok(()) => {}
                        Err(Errno::NODEV) => return,
                        Err(e) => panic!("XYZ_IOC_LOCK: {e}"),
                    }
                }
            })
        })
        .collect();
    s.write("sys/bus/sim/drivers/xyz/unbind", "xyz0").unwrap();
    for l in lockers {
        l.join().unwrap();
    }
    fault("lock_hw_in_remove", "0");

    // A device removing itself from inside its own handler: deferred, no
    // self-deadlock; it is gone once the handler has returned.
    s.write("sys/bus/sim/drivers/xyz/bind", "xyz0").unwrap();
    let fd = s.open("dev/xyz0");
    assert_eq!(unbind_self(&fd), Ok(()));
    // The worker unpublishes the node, then kills and drains it.
    until(|| {
        rustix::fs::stat(s.p("dev/xyz0")).err() == Some(Errno::NOENT) && count(&fd) == Err(Errno::NODEV)
    });
    until(|| !std::fs::read_to_string(s.p("sys/bus/sim/devices/xyz0/uevent")).unwrap().contains("DRIVER="));
}

#[test]
fn server_killed_while_clients_are_blocked() {
    let Some(mut s) = Server::start(&[]) else { return };
    let dir = s.dir.clone();
    let reader = {
        let fd = s.open("dev/xyz0");
        std::thread::spawn(move || read(&fd, 8).map(drop))
    };
    let waiter = {
        let fd = s.open("dev/xyz1");
        std::thread::spawn(move || wait_ioctl(&fd))
    };
    until(|| s.busy() >= 2);
    s.signal(rustix::process::Signal::KILL);
    let _ = s.child.wait();
    // The connection is gone: blocked callers fail at once, nothing hangs.
    let gone = |r: Result<(), Errno>| matches!(r, Err(Errno::NOTCONN | Errno::CONNABORTED | Errno::CANCELED));
    let r = reader.join().unwrap();
    assert!(gone(r), "{r:?}");
    let w = waiter.join().unwrap();
    assert!(gone(w), "{w:?}");
    // (A device node's name and attributes may be cached for a second:
    // the call fails all the same once the connection is gone.)
    let st = rustix::fs::stat(dir.join("dev/xyz0")).map(drop);
    assert!(gone(st), "{st:?}");
    // A new server recovers the mount.
    let s2 = Server::start_at(&dir, &[]);
    assert_eq!(count(s2.open("dev/xyz0")), Ok(1));
    assert!(s2.stop().success());
}

#[test]
fn bench_device_as_its_peers_serve_it() {
    let Some(s) = Server::start(&[]) else { return };
    s.write("sys/bus/sim/new_device", "bench bench0").unwrap();
    let fd = s.open("dev/bench0");
    assert_eq!(read(&fd, 4), Ok(b"dev\n".to_vec()));
    assert_eq!(read(&fd, 2), Ok(b"de".to_vec()));
    assert_eq!(read(&fd, 64), Ok(b"dev\n".to_vec()), "never more than 4 bytes, never blocking");
    assert_eq!(rustix::io::write(&fd, &[7; 100]), Ok(100));
    assert_eq!((count(&fd), count(&fd)), (Ok(1), Ok(2)));
    s.write("sys/bus/sim/drivers/bench/unbind", "bench0").unwrap();
    assert_eq!(read(&fd, 4), Err(Errno::NODEV));
}

#[test]
fn debug_logging_shows_requests_and_binds_with_durations() {
    let Some(s) = Server::start(&["--log", "debug"]) else { return };
    std::fs::read_to_string(s.p("sys/class/xyz/xyz0/dev")).unwrap();
    s.write("sys/bus/sim/drivers/xyz/unbind", "xyz0").unwrap();
    s.write("sys/bus/sim/drivers/xyz/bind", "xyz0").unwrap();
    until(|| {
        let log = s.stderr.lock().unwrap();
        let request =
            log.lines().any(|l| l.contains("DEBUG") && l.contains("request") && l.contains("op=\"READ\""));
        let bind = log.lines().any(|l| l.contains("INFO") && l.contains(" bind ") && l.contains("duration="));
        let unbind = log.lines().any(|l| l.contains(" unbind ") && l.contains("duration="));
        request && bind && unbind
    });
    let log = s.stderr.lock().unwrap().clone();
    assert!(log.lines().any(|l| l.contains("mounted")), "{log}");
}

#[test]
fn a_removal_held_up_by_a_handler_says_so() {
    // A handler that neither returns nor sleeps cancellably (hardware
    // busy for 1.5 s) holds its removal up; after a second the removal logs
    // what it waits for, then completes when the handler returns.
    let Some(s) = Server::start(&["--log", "warn"]) else { return };
    let fd = s.open("dev/xyz0");
    let holder = std::thread::spawn(move || hold(&fd, 1500));
    until(|| s.busy() == 1);
    s.write("sys/bus/sim/drivers/xyz/unbind", "xyz0").unwrap();
    assert_eq!(holder.join().unwrap(), Ok(()), "the hold ran to its end");
    until(|| s.stderr.lock().unwrap().lines().any(|l| l.contains("WARN") && l.contains("removal waits")));
}

#[test]
fn ioctls_only_a_character_device_can_carry_fail_eopnotsupp() {
    let Some(s) = Server::start(&[]) else { return };
    let fd = s.open("dev/xyz0");
    assert_eq!(fifo_len(&fd), Err(Errno::OPNOTSUPP), "a tty-style number's declared layout");
    let mut text = *b"abc";
    assert_eq!(reverse(&fd, &mut text), Err(Errno::OPNOTSUPP), "a pointer inside the argument");
    assert_eq!(&text, b"abc", "nothing changed");
    assert_eq!(count(&fd), Ok(1), "the device is unharmed");
}

/// Re-bind, unbind, re-bind with a descriptor of each earlier bind open and
/// in use (CVE-2026-31606's shape): see `rebind_with_earlier_descriptors_open`.
#[test]
fn rebinding_never_reaches_descriptors_of_earlier_binds() {
    let Some(s) = Server::start(&[]) else { return };
    let open = || rustix::fs::open(s.p("dev/xyz0"), OFlags::RDWR | OFlags::CLOEXEC, Mode::empty());
    let stale =
        Stale { errno: Errno::NODEV, poll: rustix::event::PollFlags::HUP | rustix::event::PollFlags::ERR };
    rebind_with_earlier_descriptors_open(&s, open, &stale);
}

/// A 32-bit process's ioctl (`FUSE_IOCTL_COMPAT`) reaches the driver's
/// `compat_ioctl`: xyz forwards it to `ioctl` (its layouts are the same for
/// both), the `bench` driver has none, so a 32-bit caller gets `ENOTTY`
/// there while a 64-bit one is answered, as in Linux.
#[test]
fn a_32_bit_callers_ioctl_reaches_compat_ioctl() {
    let Some(c32) = c_client(true) else { return };
    let c64 = c_client(false).unwrap();
    let Some(s) = Server::start(&[]) else { return };
    s.write("sys/bus/sim/new_device", "bench bench0").unwrap();
    assert_eq!(run_c_client(&c32, &s.p("dev/xyz0"), "count"), "count 1");
    assert_eq!(run_c_client(&c64, &s.p("dev/xyz0"), "count"), "count 2");
    assert_eq!(run_c_client(&c32, &s.p("dev/bench0"), "count"), "count ENOTTY");
    assert_eq!(run_c_client(&c64, &s.p("dev/bench0"), "count"), "count 1");
}
