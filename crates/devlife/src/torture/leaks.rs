//! `devlife leaks`: bind/unbind cycles with files opened and closed around
//! them; the server's RSS must come back to within 5% of where it was after
//! a warm-up, and its descriptors and threads to where they were, but for
//! the transport's workers.
//!
//! The transport grows by a worker at a time, up to a bounded working size
//! reached at random moments: a `/dev/fuse` worker (a thread and its
//! cloned descriptor) when a request finds none idle, a ring queue's thread
//! (a thread: the queue's ring is one for all of them) when a handler
//! sleeps and no idle thread can take the queue over. The server counts
//! them (`debug/devlife/fuse`: `dev_workers`, `ring_workers`), so
//! descriptors are compared with the `/dev/fuse` workers subtracted and
//! threads with both: growth that is the workers' is not a leak, and one
//! descriptor or thread more than they account for is. Run it on a quiet
//! machine.

use super::{start_server, write};
use rustix::fs::{Mode, OFlags};
use std::path::Path;
use std::time::Instant;

/// Options of `devlife leaks`.
#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// Cycles after the warm-up.
    #[arg(long, default_value_t = 100_000)]
    pub cycles: u64,
    /// Warm-up cycles (pools and tables reach their working size).
    #[arg(long, default_value_t = 2_000)]
    pub warmup: u64,
    /// Print the server's RSS every this many cycles (0: only at the end).
    #[arg(long, default_value_t = 0)]
    pub report_every: u64,
    /// The server's `--io-uring`.
    #[arg(long, value_enum, default_value_t = crate::serve::IoUring::Auto)]
    pub io_uring: crate::serve::IoUring,
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn threads(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count() as u64)
}

fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// The transport's `/dev/fuse` workers and ring threads, from the server's
/// own counters.
fn workers(dir: &Path) -> (u64, u64) {
    let text = std::fs::read_to_string(dir.join("debug/devlife/fuse")).unwrap_or_default();
    let count = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    (count("dev_workers"), count("ring_workers"))
}

/// What is measured of the server: RSS (KiB), descriptors, threads, and
/// the transport's workers among them.
#[derive(Clone, Copy)]
struct Sample {
    rss: u64,
    fds: u64,
    threads: u64,
    /// `/dev/fuse` workers: a thread and a descriptor each.
    dev_workers: u64,
    /// Ring queue threads: a thread each.
    ring_workers: u64,
}

impl Sample {
    fn take(pid: u32, dir: &Path) -> Sample {
        let (dev_workers, ring_workers) = workers(dir);
        Sample { rss: rss_kb(pid), fds: fds(pid), threads: threads(pid), dev_workers, ring_workers }
    }

    /// Descriptors and threads beyond the workers'.
    fn extra(&self) -> (u64, u64) {
        (
            self.fds.saturating_sub(self.dev_workers),
            self.threads.saturating_sub(self.dev_workers + self.ring_workers),
        )
    }

    /// Whether `later` holds nothing more than this sample but what the
    /// workers added.
    fn holds(&self, later: &Sample) -> bool {
        let ((fds, threads), (later_fds, later_threads)) = (self.extra(), later.extra());
        (later.rss as f64) <= (self.rss as f64) * 1.05 && later_fds <= fds && later_threads <= threads
    }
}

impl std::fmt::Display for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rss_kb={} fds={} threads={} dev_workers={} ring_workers={}",
            self.rss, self.fds, self.threads, self.dev_workers, self.ring_workers
        )
    }
}

/// One cycle: open the node, use it, unbind with the file open, close,
/// bind again, and read a debugfs file.
fn cycle(dir: &Path) -> Result<(), String> {
    let node = dir.join("dev/xyz0");
    let fd = rustix::fs::open(&node, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| format!("open: {e}"))?;
    rustix::io::write(&fd, b"abcd").map_err(|e| format!("write: {e}"))?;
    write(&dir.join("sys/bus/sim/drivers/xyz/unbind"), "xyz0").map_err(|e| format!("unbind: {e}"))?;
    drop(fd);
    write(&dir.join("sys/bus/sim/drivers/xyz/bind"), "xyz0").map_err(|e| format!("bind: {e}"))?;
    std::fs::read_to_string(dir.join("debug/xyz/xyz0/ops")).map_err(|e| format!("debugfs: {e}"))?;
    Ok(())
}

/// Runs the check; prints one `leaks:` line. Returns the exit status.
pub fn run(o: &Opts) -> i32 {
    let go = || -> Result<bool, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let dir = std::env::temp_dir().join(format!("devlife-leaks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut server = start_server(&exe, &dir, o.io_uring, false, false)?;
        let pid = server.id();
        let start = Sample::take(pid, &dir);
        for _ in 0..o.warmup {
            cycle(&dir)?;
        }
        let warm = Sample::take(pid, &dir);
        let t = Instant::now();
        let window = |from: u64| -> Result<Sample, String> {
            for i in from..from + o.cycles {
                cycle(&dir)?;
                if o.report_every != 0 && i % o.report_every == 0 {
                    println!("leaks: after {i} cycles {}", Sample::take(pid, &dir));
                }
            }
            // RELEASE is asynchronous: let the last closes arrive.
            std::thread::sleep(std::time::Duration::from_millis(200));
            Ok(Sample::take(pid, &dir))
        };
        let end = window(1)?;
        let secs = t.elapsed().as_secs_f64();
        let mut ok = warm.holds(&end);
        println!(
            "leaks: cycles={} secs={secs:.1} start {start}; after warm-up {warm}; end {end} {}",
            o.cycles,
            if ok { "ok" } else { "grew; another window" }
        );
        if !ok {
            // RSS may grow with the transport's buffers at random moments
            // up to a bounded size; a leak instead grows in every window.
            let again = window(1 + o.cycles)?;
            ok = end.holds(&again);
            println!(
                "leaks: second window of {} cycles: {end} -> {again} {}",
                o.cycles,
                if ok { "ok" } else { "GREW" }
            );
        }
        if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
        }
        let _ = server.wait();
        Ok(ok)
    };
    match go() {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("devlife leaks: {e}");
            2
        }
    }
}
