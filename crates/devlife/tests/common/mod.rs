//! What the served-tree tests share: a `devlife serve` of their own on a
//! fresh mount, and the system calls they make on it.

#![allow(dead_code, unused_imports)] // each test crate uses part of it

/// The xyz ioctls, written once for every client (`devlife::xyz_client`).
pub use devlife::xyz_client::{count, fifo_len, hold, reverse, wait as wait_ioctl};
use devlife_gate::sync::lock;
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub fn fuse_available() -> bool {
    let ok = Path::new("/dev/fuse").exists()
        && (rustix::process::getuid().is_root() || Command::new("fusermount3").arg("-V").output().is_ok());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "FUSE is not available, and CI=true requires it"
        );
        eprintln!("skipped: FUSE is not available here (no /dev/fuse or fusermount3)");
    }
    ok
}

/// `--io-uring` for the transport under test: `DEVLIFE_TEST_TRANSPORT` is
/// `io-uring` (required: `on`) or `dev-fuse` (`off`); unset, `auto`.
/// `scripts/test-all` runs these tests once with each.
pub fn transport_args() -> [&'static str; 2] {
    match std::env::var("DEVLIFE_TEST_TRANSPORT").as_deref() {
        Ok("io-uring") => ["--io-uring", "on"],
        Ok("dev-fuse") => ["--io-uring", "off"],
        Ok(other) => panic!("DEVLIFE_TEST_TRANSPORT={other:?}: expected io-uring or dev-fuse"),
        Err(_) => ["--io-uring", "auto"],
    }
}

pub struct Server {
    pub child: Child,
    pub dir: PathBuf,
    /// Everything the server wrote to stderr so far (read by a thread of
    /// its own: a pipe nobody reads would block a server that logs).
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    pub fn start(extra: &[&str]) -> Option<Server> {
        Self::start_on(transport_args(), extra)
    }

    /// [`start`](Self::start) on the transport `transport` gives (the
    /// `--io-uring` flag and its value), whatever the tests run on.
    pub fn start_on(transport: [&str; 2], extra: &[&str]) -> Option<Server> {
        if !fuse_available() {
            return None;
        }
        let dir = std::env::temp_dir().join(format!(
            "devlife-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Some(Self::spawn_at(&dir, transport, extra))
    }

    pub fn start_at(dir: &Path, extra: &[&str]) -> Server {
        Self::spawn_at(dir, transport_args(), extra)
    }

    fn spawn_at(dir: &Path, transport: [&str; 2], extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_devlife"))
            .arg("serve")
            .arg("--mount")
            .arg(dir)
            .args(transport)
            .args(extra)
            // A handler's panic is one log line unless a backtrace is asked for.
            .env_remove("RUST_BACKTRACE")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).expect("server printed nothing in 60 s");
        let dir = std::fs::canonicalize(dir).unwrap();
        assert_eq!(line.trim_end(), format!("ready {}", dir.display()), "exactly one ready line");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        if let Some(err) = child.stderr.take() {
            let log = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    let mut l = lock(&log);
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        Server { child, dir, stderr }
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn open(&self, rel: &str) -> OwnedFd {
        rustix::fs::open(self.p(rel), OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()).unwrap()
    }

    pub fn write(&self, rel: &str, text: &str) -> Result<(), Errno> {
        let fd = rustix::fs::open(self.p(rel), OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())?;
        rustix::io::write(&fd, text.as_bytes()).map(drop)
    }

    /// One snapshot of `debug/devlife/stats` (the read is itself an open).
    pub fn stats(&self) -> std::collections::HashMap<String, u64> {
        let s = std::fs::read_to_string(self.p("debug/devlife/stats")).unwrap();
        s.lines().filter_map(|l| l.split_once(' ')).map(|(k, v)| (k.to_owned(), v.parse().unwrap())).collect()
    }

    pub fn stat_line(&self, name: &str) -> u64 {
        self.stats()[name]
    }

    /// Requests in the devices now: handlers running (`inflight_ops`) and
    /// async operations waiting (`pending_ops`).
    pub fn busy(&self) -> u64 {
        let s = self.stats();
        s["inflight_ops"] + s["pending_ops"]
    }

    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, sig);
    }

    /// SIGTERM, and the exit status (hang guard: 60 s).
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(rustix::process::Signal::TERM);
        wait_timeout(&mut self.child, Duration::from_secs(60))
            .expect("server did not exit within 60 s of SIGTERM")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal(rustix::process::Signal::KILL);
            let _ = self.child.wait();
        }
        let _ = rustix::mount::unmount(&self.dir, rustix::mount::UnmountFlags::DETACH);
        let _ = Command::new("fusermount3").arg("-uz").arg(&self.dir).stderr(Stdio::null()).status();
    }
}

pub fn wait_timeout(c: &mut Child, d: Duration) -> Option<std::process::ExitStatus> {
    let t = Instant::now();
    while t.elapsed() < d {
        if let Some(s) = c.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::yield_now();
        std::thread::sleep(Duration::from_millis(5)); // polling a child: not an outcome
    }
    None
}

pub fn read(fd: impl AsFd, n: usize) -> Result<Vec<u8>, Errno> {
    let mut b = vec![0u8; n];
    let got = rustix::io::read(fd, &mut b)?;
    b.truncate(got);
    Ok(b)
}

pub fn poll_now(
    fd: impl AsFd,
    events: rustix::event::PollFlags,
    timeout_ms: i32,
) -> rustix::event::PollFlags {
    let mut fds = [rustix::event::PollFd::new(&fd, events)];
    let ts = rustix::event::Timespec {
        tv_sec: (timeout_ms / 1000) as i64,
        tv_nsec: ((timeout_ms % 1000) as i64) * 1_000_000,
    };
    rustix::event::poll(&mut fds, Some(&ts)).unwrap();
    fds[0].revents()
}

/// Yields until `f` holds; 60 s hang guard.
pub fn until(mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(60), "condition never held");
        std::thread::sleep(Duration::from_millis(2)); // polling an external process's state
    }
}

/// Thread states of process `pid` (the `State:` letters of its tasks).
pub fn states(pid: u32) -> Vec<char> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
        .filter_map(|s| s.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next()))
        .collect()
}

/// Moves the calling thread to CPU `cpu`.
pub fn pin(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).unwrap();
}

/// The serving layer's `debug/devlife/fuse` as a map.
pub fn fuse_stats(s: &Server) -> std::collections::HashMap<String, String> {
    let t = std::fs::read_to_string(s.p("debug/devlife/fuse")).unwrap();
    t.lines().filter_map(|l| l.split_once(' ')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

/// How a descriptor of an earlier binding answers (the transport decides:
/// the FUSE tree answers `ENODEV` and `POLLHUP|POLLERR`; over CUSE the
/// kernel answers once the channel is gone, `ENOTCONN` and `POLLERR`).
pub struct Stale {
    pub errno: Errno,
    pub poll: rustix::event::PollFlags,
}

/// CVE-2026-31606's shape (USB gadget `f_hid`: a re-bind re-initialised a
/// character device still open from the previous bind): `xyz0` is bound,
/// unbound and re-bound twice while a descriptor from each earlier bind
/// stays open and is used. Every earlier descriptor answers as `stale`
/// says, never reaching a later binding; each binding's own descriptor
/// sees only that binding's state (a fresh count, its own FIFO); closing
/// the earlier ones leaves the current binding untouched.
pub fn rebind_with_earlier_descriptors_open(
    s: &Server,
    open: impl Fn() -> Result<OwnedFd, Errno>,
    stale: &Stale,
) {
    use rustix::event::PollFlags;
    let reopen = || {
        let mut fd = None;
        until(|| {
            fd = open().ok();
            fd.is_some()
        });
        fd.unwrap()
    };
    let mut earlier: Vec<OwnedFd> = Vec::new();
    for bind in 0..3 {
        let fd = reopen();
        // This binding's state is its own: a fresh count, an empty FIFO.
        assert_eq!(count(&fd), Ok(1), "bind {bind}: a fresh binding's first count");
        let msg = format!("bind{bind}");
        assert_eq!(rustix::io::write(&fd, msg.as_bytes()), Ok(msg.len()), "bind {bind}: write");
        for (i, old) in earlier.iter().enumerate() {
            assert_eq!(count(old), Err(stale.errno), "bind {bind}: ioctl on bind {i}'s descriptor");
            assert_eq!(read(old, 16), Err(stale.errno), "bind {bind}: read on bind {i}'s descriptor");
            assert_eq!(
                rustix::io::write(old, b"old"),
                Err(stale.errno),
                "bind {bind}: write on bind {i}'s descriptor"
            );
            assert_eq!(
                poll_now(old, PollFlags::IN | PollFlags::OUT, 0),
                stale.poll,
                "bind {bind}: poll of bind {i}'s"
            );
        }
        // What the earlier descriptors tried reached nothing here.
        assert_eq!(read(&fd, 16).as_deref(), Ok(msg.as_bytes()), "bind {bind}: its own FIFO");
        assert_eq!(count(&fd), Ok(2), "bind {bind}: only its own ioctls counted");
        if bind < 2 {
            s.write("sys/bus/sim/drivers/xyz/unbind", "xyz0").unwrap();
            assert_eq!(count(&fd), Err(stale.errno), "bind {bind}: its descriptor after its unbind");
            s.write("sys/bus/sim/drivers/xyz/bind", "xyz0").unwrap();
        }
        earlier.push(fd);
    }
    // Closing the earlier descriptors calls no driver code of the current
    // binding: its descriptor goes on where it was.
    let current = earlier.pop().unwrap();
    drop(earlier);
    assert_eq!(count(&current), Ok(3), "the current binding, after the earlier descriptors closed");
}

/// The C client (`tests/cuse/client.c`), compiled once per test binary:
/// for 64 bits, or with `m32` for 32 (`gcc -m32`, Debian's `gcc-multilib`,
/// which `scripts/setup` installs). `None` where 32-bit builds are not
/// possible here (an error under `CI=true`).
pub fn c_client(m32: bool) -> Option<PathBuf> {
    static BUILT: [std::sync::OnceLock<Option<PathBuf>>; 2] =
        [std::sync::OnceLock::new(), std::sync::OnceLock::new()];
    BUILT[m32 as usize]
        .get_or_init(|| {
            let bits = if m32 { "32" } else { "64" };
            let out = std::env::temp_dir().join(format!("devlife-xyz-client{bits}-{}", std::process::id()));
            let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cuse/client.c");
            let mut cc = Command::new("cc");
            if m32 {
                cc.arg("-m32");
            }
            let st =
                cc.args(["-O1", "-Wall", "-o"]).arg(&out).arg(src).stderr(Stdio::null()).status().unwrap();
            if !st.success() {
                assert!(
                    !m32 || std::env::var("CI").as_deref() != Ok("true"),
                    "CI=true needs gcc -m32 (gcc-multilib)"
                );
                assert!(m32, "cc {src}");
                eprintln!("skipped: no 32-bit C toolchain (gcc-multilib)");
                return None;
            }
            Some(out)
        })
        .clone()
}

/// What the C client prints for `client DEV MODE` (its stdout, trimmed).
pub fn run_c_client(client: &Path, dev: &Path, mode: &str) -> String {
    let out = Command::new(client).arg(dev).arg(mode).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// SIGKILLs process `pid`.
pub fn kill(pid: u32) {
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
}

/// Waits (60 s hang guard) until the keeper that `s` runs (`--supervise`) runs
/// a server other than `old` that answers; returns its pid.
pub fn restarted(s: &Server, old: u32) -> u32 {
    let t = Instant::now();
    loop {
        let pid = devlife::torture::keeper_child(s.child.id()).unwrap_or(old);
        if pid != old && std::fs::read_to_string(s.p("debug/devlife/stats")).is_ok() {
            return pid;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no new server answers; its log:\n{}",
            lock(&s.stderr)
        );
        std::thread::sleep(Duration::from_millis(2)); // polling an external process's state
    }
}
