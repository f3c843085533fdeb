//! The server's own death is an unplug: `devlife serve --supervise` is
//! SIGKILLed with clients open, blocked in `read`, waiting in
//! `XYZ_IOC_WAIT`, polling, and busy in `XYZ_IOC_HOLD`; every one returns
//! as from a removed device (`ENODEV`, `POLLHUP | POLLERR`; `EINTR` for a
//! signalled one), none sees `ENOTCONN` or `ECONNABORTED`, the mount never
//! reads as stale, and new opens reach the restarted server. Also: the
//! systemd protocol with a stand-in manager (`NOTIFY_SOCKET`, the
//! descriptor store, `LISTEN_FDS` on the next start), a crash loop that
//! leaves the keeper flat, and a clean stop.

mod common;

use common::*;
use rustix::event::PollFlags;
use rustix::fd::{AsRawFd, OwnedFd};
use rustix::io::Errno;
use rustix::process::{Pid, Signal};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A restartable server's transport flag: under the io_uring suite
/// (`DEVLIFE_TEST_TRANSPORT=io-uring`) `auto`, which a restartable server
/// serves through `/dev/fuse` (docs/ARCHITECTURE.md, "Restarts": checked
/// by `a_restartable_server_serves_through_dev_fuse_and_refuses_rings`);
/// otherwise `off`.
fn restartable_transport() -> [&'static str; 2] {
    match transport_args() {
        ["--io-uring", "on"] => ["--io-uring", "auto"],
        _ => ["--io-uring", "off"],
    }
}
const SUPERVISED: [&str; 1] = ["--supervise"];

use devlife::torture::keeper_child as server_pid;

/// What one client saw.
type Outcome = (&'static str, Result<String, Errno>);

/// Runs `f` on its own thread, reporting to `tx` under `name`; returns the
/// thread's tid (to signal it).
fn client(
    name: &'static str,
    tx: &mpsc::Sender<Outcome>,
    f: impl FnOnce() -> Result<String, Errno> + Send + 'static,
) -> i32 {
    let tx = tx.clone();
    let (tid_tx, tid_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tid_tx.send(rustix::thread::gettid().as_raw_nonzero().get());
        let _ = tx.send((name, f()));
    });
    tid_rx.recv().unwrap()
}

/// A SIGUSR1 handler that does nothing, without `SA_RESTART`: a blocked
/// system call of the signalled thread returns `EINTR`.
fn catch_usr1() {
    extern "C" fn nothing(_: libc::c_int) {}
    // SAFETY: installs a handler that touches nothing; sa_mask is empty
    // and sa_flags 0 (no SA_RESTART), as intended.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = nothing as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
}

fn tgkill(tid: i32, sig: i32) {
    // SAFETY: a plain system call on this process's own thread.
    unsafe {
        libc::syscall(libc::SYS_tgkill, std::process::id() as libc::c_int, tid, sig);
    }
}

#[test]
fn a_killed_server_is_an_unplug_of_every_device_and_the_mount_survives() {
    let Some(s) = Server::start_on(restartable_transport(), &SUPERVISED) else { return };
    catch_usr1();
    let first = server_pid(s.child.id()).expect("the keeper runs a server");
    let idle = s.open("dev/xyz0");
    let (tx, rx) = mpsc::channel::<Outcome>();
    let fd = |s: &Server| s.open("dev/xyz0");
    let (reader, waiter, poller, holder, signalled) = (fd(&s), fd(&s), fd(&s), fd(&s), fd(&s));
    client("reader", &tx, move || read(&reader, 16).map(|d| format!("{} bytes", d.len())));
    client("waiter", &tx, move || wait_ioctl(&waiter).map(|()| "woke".into()));
    client("poller", &tx, move || {
        let r = poll_now(&poller, PollFlags::IN, 60_000);
        Ok(format!("{r:?}"))
    });
    client("holder", &tx, move || hold(&holder, 30_000).map(|()| "held".into()));
    let sig_tid =
        client("signalled", &tx, move || read(&signalled, 16).map(|d| format!("{} bytes", d.len())));
    // Every one of them inside the server (the poller's POLL answered and
    // its wait registered).
    until(|| s.busy() >= 4);
    kill(first);
    // A signal while the server is dead: its request is answered once a
    // server reads it again, ENODEV or EINTR.
    tgkill(sig_tid, libc::SIGUSR1);
    let second = restarted(&s, first);
    let mut seen = std::collections::HashMap::new();
    let t = Instant::now();
    while seen.len() < 5 {
        let left = Duration::from_secs(60).saturating_sub(t.elapsed());
        let (name, r) = rx.recv_timeout(left).unwrap_or_else(|_| {
            panic!(
                "clients still waiting after the restart: have {:?}; test threads {:?}",
                seen.keys(),
                states(std::process::id())
            )
        });
        seen.insert(name, r);
    }
    for name in ["reader", "waiter", "holder"] {
        assert_eq!(seen[name], Err(Errno::NODEV), "{name}");
    }
    assert!(
        matches!(seen["signalled"], Err(Errno::NODEV | Errno::INTR)),
        "signalled: {:?}",
        seen["signalled"]
    );
    let polled = seen["poller"].clone().unwrap();
    assert!(polled.contains("HUP") && polled.contains("ERR"), "poller: {polled}");
    // The idle descriptor, opened from the dead server, is a removed
    // device's file; its close succeeds.
    assert_eq!(read(&idle, 1).unwrap_err(), Errno::NODEV);
    assert_eq!(rustix::io::write(&idle, b"x").unwrap_err(), Errno::NODEV);
    assert_eq!(count(&idle).unwrap_err(), Errno::NODEV);
    let r = poll_now(&idle, PollFlags::IN, 0);
    assert!(r.contains(PollFlags::HUP | PollFlags::ERR), "{r:?}");
    drop(idle);
    // The mount was never stale, and new opens reach the new server.
    rustix::fs::statfs(&s.dir).expect("the mount answers");
    let f = s.open("dev/xyz0");
    rustix::io::write(&f, b"after").unwrap();
    assert_eq!(read(&f, 16).unwrap(), b"after");
    count(&f).expect("an ioctl reaches the new server's driver");
    assert_ne!(second, first);
    drop(f);
    let status = s.stop();
    assert!(status.success(), "the keeper exits 0 after a clean stop: {status}");
}

#[test]
fn a_restartable_server_serves_through_dev_fuse_and_refuses_rings() {
    let Some(s) = Server::start_on(["--io-uring", "auto"], &SUPERVISED) else { return };
    assert_eq!(fuse_stats(&s)["transport"], "dev_fuse", "auto, restartable: /dev/fuse");
    assert!(s.stop().success());
    // `on` asks for what a restart cannot keep: refused, with the reason.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_devlife"))
        .args(["serve", "--supervise", "--io-uring", "on", "--mount"])
        .arg(std::env::temp_dir().join(format!("devlife-test-rings-{}", std::process::id())))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("a restartable server serves through /dev/fuse"), "{err}");
}

#[test]
fn a_clean_stop_unmounts_and_the_keeper_exits_with_the_server() {
    let Some(s) = Server::start_on(restartable_transport(), &SUPERVISED) else { return };
    let dir = s.dir.clone();
    let server = server_pid(s.child.id()).unwrap();
    let status = s.stop();
    assert!(status.success(), "{status}");
    assert!(!Path::new(&format!("/proc/{server}")).exists(), "the server is gone too");
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(&format!(" {} ", dir.display())), "still mounted: {mounts}");
}

/// Resident size (KiB) and open descriptors of process `pid`.
fn footprint(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    (rss, std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count())
}

#[test]
fn a_crash_loop_leaves_the_keeper_flat_and_the_mount_served() {
    let Some(s) = Server::start_on(restartable_transport(), &SUPERVISED) else { return };
    let keeper = s.child.id();
    // One restart first, so the keeper's store holds what it will hold.
    let first = server_pid(keeper).unwrap();
    kill(first);
    let mut last = restarted(&s, first);
    let before = footprint(keeper);
    let (mut kills, t) = (0, Instant::now());
    while t.elapsed() < Duration::from_secs(30) {
        if let Some(pid) = server_pid(keeper) {
            kill(pid);
            kills += 1;
            last = pid;
        }
        std::thread::sleep(Duration::from_millis(200)); // the loop's pace, not a check
    }
    restarted(&s, last);
    let after = footprint(keeper);
    eprintln!(
        "{kills} kills; keeper RSS {} -> {} KiB, descriptors {} -> {}",
        before.0, after.0, before.1, after.1
    );
    assert!(kills >= 5, "the server was killed only {kills} times");
    assert_eq!(after.1, before.1, "the keeper's descriptors");
    assert!(after.0 <= before.0 + 512, "the keeper's memory grew: {} -> {} KiB", before.0, after.0);
    let f = s.open("dev/xyz0");
    count(&f).expect("an ioctl reaches the last server's driver");
    drop(f);
    assert!(s.stop().success());
}

/// A stand-in for systemd: the notification socket with a descriptor
/// store, and the next start with `LISTEN_FDS`, as systemd does it.
struct Manager {
    sock: OwnedFd,
    name: String,
}

impl Manager {
    fn new() -> Manager {
        use rustix::net::*;
        let name = format!("devlife-test-manager-{}", std::process::id());
        let sock = socket_with(AddressFamily::UNIX, SocketType::DGRAM, SocketFlags::CLOEXEC, None).unwrap();
        bind(&sock, &SocketAddrUnix::new_abstract_name(name.as_bytes()).unwrap()).unwrap();
        sockopt::set_socket_passcred(&sock, true).unwrap();
        sockopt::set_socket_timeout(&sock, sockopt::Timeout::Recv, Some(Duration::from_secs(60))).unwrap();
        Manager { sock, name }
    }

    /// The next message: its text, its descriptors, its sender.
    fn recv(&self) -> (String, Vec<OwnedFd>, Option<i32>) {
        use rustix::net::*;
        let mut buf = [0u8; 4096];
        let mut space =
            [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8), ScmCredentials(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let m = recvmsg(&self.sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC).expect("a notification");
        let (mut fds, mut pid) = (Vec::new(), None);
        for c in control.drain() {
            match c {
                RecvAncillaryMessage::ScmRights(it) => fds.extend(it),
                RecvAncillaryMessage::ScmCredentials(u) => pid = Some(u.pid.as_raw_nonzero().get()),
                _ => {}
            }
        }
        (String::from_utf8_lossy(&buf[..m.bytes]).into_owned(), fds, pid)
    }

    /// Starts `devlife serve` as a service with a store; `kept` at 3.. with
    /// `LISTEN_FDS` and a `LISTEN_PID` that is the server's own (the shell
    /// puts its pid there and then becomes the server).
    fn start(&self, dir: &Path, kept: &[(String, OwnedFd)]) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        let names: Vec<&str> = kept.iter().map(|(n, _)| n.as_str()).collect();
        let raw: Vec<i32> = kept.iter().map(|(_, f)| f.as_raw_fd()).collect();
        let script = if kept.is_empty() {
            "exec \"$0\" serve --mount \"$1\" --io-uring off".to_owned()
        } else {
            format!(
                "LISTEN_PID=$$ LISTEN_FDS={} LISTEN_FDNAMES={} exec \"$0\" serve --mount \"$1\" --io-uring off",
                kept.len(),
                names.join(":")
            )
        };
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(script)
            .arg(env!("CARGO_BIN_EXE_devlife"))
            .arg(dir)
            .env("NOTIFY_SOCKET", format!("@{}", self.name))
            .env("FDSTORE", "8")
            .stdout(std::process::Stdio::null());
        // SAFETY: between fork and exec only dup2 runs (async-signal-safe),
        // on descriptors `kept` holds open in the parent.
        unsafe {
            cmd.pre_exec(move || {
                for (i, &fd) in raw.iter().enumerate() {
                    // Targets 3.. may be sources: move above them first.
                    let high = libc::fcntl(fd, libc::F_DUPFD, 100);
                    if high < 0 || libc::dup2(high, 3 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        cmd.spawn().unwrap()
    }
}

#[test]
fn systemds_descriptor_store_keeps_the_connection_for_the_next_start() {
    if !fuse_available() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("devlife-test-sd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let m = Manager::new();
    let mut first = m.start(&dir, &[]);
    // Stored: the connection and the state record, then READY=1, each
    // from the server itself.
    let mut kept: Vec<(String, OwnedFd)> = Vec::new();
    loop {
        let (text, mut fds, pid) = m.recv();
        assert_eq!(pid, Some(first.id() as i32), "sent by the server: {text}");
        if text.contains("READY=1") {
            break;
        }
        assert!(text.contains("FDSTORE=1"), "{text}");
        let name = text.lines().find_map(|l| l.strip_prefix("FDNAME=")).unwrap().to_owned();
        assert_eq!(fds.len(), 1, "{text}");
        kept.push((name, fds.pop().unwrap()));
    }
    let mut names: Vec<&str> = kept.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(names, ["devlife-fuse", "devlife-state"]);
    let dir = std::fs::canonicalize(&dir).unwrap();
    let old =
        rustix::fs::open(dir.join("dev/xyz0"), rustix::fs::OFlags::RDWR, rustix::fs::Mode::empty()).unwrap();
    first.kill().unwrap();
    first.wait().unwrap();
    let mut second = m.start(&dir, &kept);
    let (text, _, pid) = m.recv();
    assert_eq!(pid, Some(second.id() as i32));
    assert!(text.contains("READY=1"), "a resumed server stores nothing again: {text}");
    drop(kept);
    assert_eq!(count(&old).unwrap_err(), Errno::NODEV);
    let new =
        rustix::fs::open(dir.join("dev/xyz0"), rustix::fs::OFlags::RDWR, rustix::fs::Mode::empty()).unwrap();
    count(&new).expect("an ioctl reaches the new server's driver");
    drop((old, new));
    rustix::process::kill_process(Pid::from_raw(second.id() as i32).unwrap(), Signal::TERM).unwrap();
    assert!(wait_timeout(&mut second, Duration::from_secs(60)).expect("stops").success());
    // Stopped on purpose: it took its descriptors out of the store.
    let (text, _, _) = m.recv();
    assert!(text.contains("FDSTOREREMOVE=1"), "{text}");
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(&format!(" {} ", dir.display())), "still mounted");
}

#[test]
fn a_planned_upgrade_loses_no_request_and_fails_only_earlier_descriptors() {
    let Some(s) = Server::start_on(restartable_transport(), &SUPERVISED) else { return };
    let keeper = s.child.id();
    let first = server_pid(keeper).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let blocked = s.open("dev/xyz0");
    let (tx, rx) = mpsc::channel::<Outcome>();
    client("blocked reader", &tx, move || read(&blocked, 16).map(|d| format!("{} bytes", d.len())));
    until(|| s.busy() >= 1);
    let path = s.p("dev/xyz0");
    let loops: Vec<_> = (0..4)
        .map(|_| {
            let (stop, path) = (stop.clone(), path.clone());
            std::thread::spawn(move || {
                use rustix::fs::{Mode, OFlags};
                // (ops, errors other than an earlier descriptor's ENODEV,
                // ENODEVs, longest pause between two successful ops)
                let (mut ops, mut bad, mut nodev, mut pause) = (0u64, Vec::new(), 0u64, Duration::ZERO);
                let mut last = Instant::now();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let fd = match rustix::fs::open(&path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()) {
                        Ok(fd) => fd,
                        Err(e) => {
                            bad.push(format!("open: {e}"));
                            continue;
                        }
                    };
                    match count(&fd) {
                        Ok(_) => {
                            ops += 1;
                            pause = pause.max(last.elapsed());
                            last = Instant::now();
                        }
                        // Opened before the hand-over: a removed device.
                        Err(Errno::NODEV) => nodev += 1,
                        Err(e) => bad.push(format!("ioctl: {e}")),
                    }
                }
                (ops, bad, nodev, pause)
            })
        })
        .collect();
    // Some load before, then the upgrade: SIGHUP to the keeper.
    until(|| {
        std::fs::read_to_string(s.p("debug/xyz/xyz0/ops"))
            .is_ok_and(|o| o.trim().parse::<u64>().unwrap_or(0) > 200)
    });
    s.signal(Signal::HUP);
    let second = restarted(&s, first);
    // Load on the new server too.
    until(|| {
        std::fs::read_to_string(s.p("debug/xyz/xyz0/ops"))
            .is_ok_and(|o| o.trim().parse::<u64>().unwrap_or(0) > 200)
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = (0, 0, Duration::ZERO);
    for l in loops {
        let (ops, bad, nodev, pause) = l.join().unwrap();
        assert!(
            bad.is_empty(),
            "{} errors other than ENODEV, first: {:?}",
            bad.len(),
            &bad[..bad.len().min(5)]
        );
        total = (total.0 + ops, total.1 + nodev, total.2.max(pause));
    }
    let (name, r) = rx.recv_timeout(Duration::from_secs(60)).expect("the blocked reader returns");
    assert_eq!((name, r), ("blocked reader", Err(Errno::NODEV)));
    eprintln!("{} ops, {} ENODEV on earlier descriptors, longest pause {:?}", total.0, total.1, total.2);
    assert_ne!(second, first);
    assert!(s.stop().success());
}
