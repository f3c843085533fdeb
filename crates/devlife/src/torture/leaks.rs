//! `devlife leaks`: bind/unbind cycles with files opened and closed around
//! them; the server's RSS and descriptor count must come back to within 5%
//! of where they were after a warm-up.
//!
//! The FUSE worker pool grows when a request finds no idle worker (each
//! worker has a cloned `/dev/fuse` descriptor and about 300 KB of buffers
//! and stack), so the thread count is reported too: growth that matches new
//! workers is the pool, not a leak. Run it on a quiet machine.

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
        let mut server = start_server(&exe, &dir, o.io_uring, false)?;
        let pid = server.id();
        let (rss0, fds0, thr0) = (rss_kb(pid), fds(pid), threads(pid));
        for _ in 0..o.warmup {
            cycle(&dir)?;
        }
        let (rss1, fds1, thr1) = (rss_kb(pid), fds(pid), threads(pid));
        let t = Instant::now();
        let window = |from: u64| -> Result<(u64, u64, u64), String> {
            for i in from..from + o.cycles {
                cycle(&dir)?;
                if o.report_every != 0 && i % o.report_every == 0 {
                    println!(
                        "leaks: after {i} cycles rss_kb={} fds={} threads={}",
                        rss_kb(pid),
                        fds(pid),
                        threads(pid)
                    );
                }
            }
            // RELEASE is asynchronous: let the last closes arrive.
            std::thread::sleep(std::time::Duration::from_millis(200));
            Ok((rss_kb(pid), fds(pid), threads(pid)))
        };
        let (rss2, fds2, thr2) = window(1)?;
        let secs = t.elapsed().as_secs_f64();
        let within = |a: u64, b: u64| (b as f64) <= (a as f64) * 1.05;
        let mut ok = within(rss1, rss2) && within(fds1, fds2);
        println!(
            "leaks: cycles={} secs={secs:.1} rss_kb start={rss0} after_warmup={rss1} end={rss2} fds start={fds0} after_warmup={fds1} end={fds2} threads start={thr0} after_warmup={thr1} end={thr2} {}",
            o.cycles,
            if ok { "ok" } else { "grew; another window" }
        );
        if !ok {
            // The ring queues grow when a handler sleeps or runs long with
            // no spare entry, a worker (a thread, a ring, an entry's
            // buffers) at a time, up to a bounded working size reached at
            // random moments; a leak instead grows in every window.
            let (rss3, fds3, thr3) = window(1 + o.cycles)?;
            ok = within(rss2, rss3) && within(fds2, fds3);
            println!(
                "leaks: second window of {} cycles: rss_kb {rss2} -> {rss3}, fds {fds2} -> {fds3}, threads {thr2} -> {thr3} {}",
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
