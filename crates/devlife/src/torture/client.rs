//! One torture client process: threads doing random operations on the
//! device nodes until the deadline, reporting what they saw.

use super::rng::Rng;
use crate::xyz_client as xyz;
use devlife_gate::sync::lock;
use rustix::fd::OwnedFd;
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Nodes the clients use (the chaos thread adds and removes them).
pub const NODES: &[&str] = &["xyz0", "xyz1", "xyz2", "xyz3"];
/// Longest `XYZ_IOC_HOLD` a client issues, in milliseconds.
pub const MAX_HOLD_MS: u64 = 50;
/// An operation running longer than this is a hang.
pub const HANG: Duration = Duration::from_secs(10);

/// Options of `devlife torture-client` (started by `devlife torture`).
#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// The served tree.
    #[arg(long)]
    pub mount: PathBuf,
    /// Seed of this client.
    #[arg(long)]
    pub seed: u64,
    /// Seconds to run.
    #[arg(long)]
    pub seconds: u64,
    /// Threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Use the CUSE devices, `/dev/<node>`, instead of the tree's `dev/`.
    #[arg(long)]
    pub cuse: bool,
}

/// What errors an operation may see while devices come and go. Over CUSE
/// also the kernel's answers once a removed node's channel is closed:
/// `ENOTCONN` on an old descriptor, and `ECONNABORTED` for a call that
/// entered the channel in the instant before its abort (docs/ARCHITECTURE.md,
/// "What clients see at removal, over CUSE": the close narrows that window
/// but the kernel cannot close it); the latter is counted apart
/// (`connaborted=`), so the narrowing shows.
fn allowed(e: Errno, cuse: bool) -> bool {
    matches!(e, Errno::NODEV | Errno::NXIO | Errno::NOENT | Errno::INTR | Errno::AGAIN)
        || (cuse && matches!(e, Errno::NOTCONN | Errno::CONNABORTED))
}

struct Tally {
    cuse: bool,
    ops: AtomicU64,
    unexpected: Mutex<BTreeMap<String, u64>>,
    hangs: AtomicU64,
    /// `ECONNABORTED`s (CUSE only; see [`allowed`]).
    connaborted: AtomicU64,
}

impl Tally {
    fn result<T>(&self, what: &str, r: Result<T, Errno>) {
        self.ops.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = r {
            if e == Errno::CONNABORTED {
                self.connaborted.fetch_add(1, Ordering::Relaxed);
            }
            if !allowed(e, self.cuse) {
                *lock(&self.unexpected).entry(format!("{what}:{e:?}")).or_default() += 1;
            }
        }
    }
}

fn one_op(fd: &OwnedFd, rng: &mut Rng, t: &Tally) {
    let mut buf = [0u8; 64];
    match rng.below(100) {
        0..=24 => {
            let n = 1 + rng.below(64) as usize;
            t.result("read", rustix::io::read(fd, &mut buf[..n]).map(drop));
        }
        25..=49 => {
            let n = 1 + rng.below(64) as usize;
            t.result("write", rustix::io::write(fd, &buf[..n]).map(drop));
        }
        50..=69 => t.result("count", xyz::count(fd).map(drop)),
        70..=79 => t.result("hold", xyz::hold(fd, rng.below(MAX_HOLD_MS + 1) as u32)),
        80..=84 => t.result("wait", xyz::wait(fd)),
        // Rare: the device goes with it (the chaos thread brings it back).
        85 if rng.pct(10) => t.result("unbind_self", xyz::unbind_self(fd)),
        _ => {
            use rustix::event::{PollFd, PollFlags, Timespec};
            let mut fds = [PollFd::new(fd, PollFlags::IN | PollFlags::OUT)];
            let ms = rng.below(50) as i64;
            let ts = Timespec { tv_sec: 0, tv_nsec: ms * 1_000_000 };
            t.result("poll", rustix::event::poll(&mut fds, Some(&ts)).map(drop));
        }
    }
}

/// Blocks or unblocks SIGUSR1 for the calling thread.
///
/// A signal sent to a process goes to one of its threads that does not
/// block it; the client blocks SIGUSR1 everywhere but in its worker threads,
/// so the parent's signals land on threads that may be blocked in a
/// system call.
fn sigusr1_blocked(blocked: bool) {
    // SAFETY: `set` is initialised by `sigemptyset` before use;
    // `pthread_sigmask` changes only the calling thread's mask and does not
    // keep the pointer.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        let how = if blocked { libc::SIG_BLOCK } else { libc::SIG_UNBLOCK };
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

/// Runs the client; prints `ready` once SIGUSR1 is handled, and at the end
/// `client ops=N hangs=N connaborted=N unexpected=...`.
pub fn run(o: &Opts) -> i32 {
    // SIGUSR1 from the parent interrupts blocked calls (EINTR); the handler
    // itself does nothing.
    // SAFETY: the handler is an empty closure: async-signal-safe.
    if let Err(e) = unsafe { signal_hook::low_level::register(signal_hook::consts::SIGUSR1, || {}) } {
        eprintln!("torture-client: cannot handle SIGUSR1: {e}");
        return 2;
    }
    // Inherited by every thread spawned from here; workers unblock it.
    sigusr1_blocked(true);
    // The parent signals this process only from now on: a SIGUSR1 before
    // the handler was installed would have ended it.
    println!("ready");
    let _ = std::io::Write::flush(&mut std::io::stdout());
    let deadline = Instant::now() + Duration::from_secs(o.seconds);
    let tally = Arc::new(Tally {
        cuse: o.cuse,
        ops: AtomicU64::new(0),
        unexpected: Mutex::default(),
        hangs: AtomicU64::new(0),
        connaborted: AtomicU64::new(0),
    });
    // Start time (ms since `t0`) of each thread's current operation, or 0.
    let t0 = Instant::now();
    let busy: Arc<Vec<AtomicU64>> = Arc::new((0..o.threads).map(|_| AtomicU64::new(0)).collect());
    let threads: Vec<_> = (0..o.threads)
        .map(|i| {
            let (tally, busy) = (tally.clone(), busy.clone());
            let nodes = if o.cuse { PathBuf::from("/dev") } else { o.mount.join("dev") };
            let mut rng = Rng::new(o.seed.wrapping_mul(31).wrapping_add(i as u64 + 1));
            std::thread::spawn(move || {
                sigusr1_blocked(false);
                while Instant::now() < deadline {
                    let node = NODES[rng.below(NODES.len() as u64) as usize];
                    let mut flags = OFlags::RDWR | OFlags::CLOEXEC;
                    if rng.pct(50) {
                        flags |= OFlags::NONBLOCK;
                    }
                    busy[i].store(t0.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
                    let fd = rustix::fs::open(nodes.join(node), flags, Mode::empty());
                    busy[i].store(0, Ordering::Relaxed);
                    let fd = match fd {
                        Ok(fd) => fd,
                        Err(e) => {
                            tally.result("open", Err::<(), _>(e));
                            continue;
                        }
                    };
                    tally.result("open", Ok(()));
                    for _ in 0..1 + rng.below(20) {
                        if Instant::now() >= deadline {
                            break;
                        }
                        busy[i].store(t0.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
                        one_op(&fd, &mut rng, &tally);
                        busy[i].store(0, Ordering::Relaxed);
                    }
                    drop(fd);
                }
            })
        })
        .collect();
    // Watchdog: an operation running past HANG is counted once.
    {
        let (busy, tally) = (busy.clone(), tally.clone());
        std::thread::spawn(move || {
            let mut reported = vec![0u64; busy.len()];
            loop {
                std::thread::sleep(Duration::from_millis(100));
                let now = t0.elapsed().as_millis() as u64;
                for (i, b) in busy.iter().enumerate() {
                    let s = b.load(Ordering::Relaxed);
                    if s != 0 && now.saturating_sub(s) > HANG.as_millis() as u64 && reported[i] != s {
                        reported[i] = s;
                        tally.hangs.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    for t in threads {
        let _ = t.join();
    }
    let unexpected = lock(&tally.unexpected);
    let list: Vec<String> = unexpected.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "client ops={} hangs={} connaborted={} unexpected={} {}",
        tally.ops.load(Ordering::Relaxed),
        tally.hangs.load(Ordering::Relaxed),
        tally.connaborted.load(Ordering::Relaxed),
        unexpected.values().sum::<u64>(),
        list.join(",")
    );
    0
}
