//! `devlife bench restart`: how long a killed server's mount is without a
//! server, and what its earlier clients see.
//!
//! `devlife serve --supervise` (over `/dev/fuse`, a restartable server's
//! transport) serves the mount. Each of N rounds opens `dev/xyz0` twice
//! (one descriptor idle, one with a thread blocked in `read`), waits until
//! the server has been ready for longer than the keeper's one second
//! (so a restart is immediate, not backed off), SIGKILLs it, and reports, from the kill:
//!
//! * `first_open_ms`: the first `open` of `dev/xyz0` followed by a
//!   successful `XYZ_IOC_COUNT`, tried in a loop from the kill on (an
//!   open blocks while no server reads the connection, and returns once
//!   the next one answers);
//! * every earlier descriptor's outcome: the blocked reader's `read` and
//!   the idle descriptor's `XYZ_IOC_COUNT` must both fail `ENODEV` (or the
//!   read `EINTR`); `ENOTCONN`, `ECONNABORTED`, anything else, or a
//!   reader still blocked 10 s after the restart fails the run.

use super::{Row, V, machine, percentile};
use crate::xyz_client::count;
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use std::path::Path;
use std::time::{Duration, Instant};

/// Options of `devlife bench restart`.
#[derive(clap::Args, Debug, Clone)]
pub struct RestartOpts {
    /// --quick, --json.
    #[command(flatten)]
    pub common: super::Opts,
    /// Crashes to measure (default 50, or 10 with --quick).
    #[arg(long)]
    pub crashes: Option<usize>,
}

/// Runs the benchmark; returns the exit status.
pub fn run(o: &RestartOpts) -> i32 {
    match run_inner(o) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bench restart: {e}");
            1
        }
    }
}

fn open(p: &Path) -> Result<rustix::fd::OwnedFd, Errno> {
    rustix::fs::open(p, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
}

fn run_inner(o: &RestartOpts) -> Result<(), String> {
    let n = o.crashes.unwrap_or(if o.common.quick { 10 } else { 50 });
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!("devlife-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut keeper = crate::torture::start_server(&exe, &dir, crate::serve::IoUring::Off, false, true)?;
    let dir = std::fs::canonicalize(&dir).map_err(|e| e.to_string())?;
    let node = dir.join("dev/xyz0");
    let (mut times, mut nodev, mut eintr, mut other) = (Vec::new(), 0u64, 0u64, Vec::new());
    let mut ready_since = Instant::now();
    for _ in 0..n {
        let idle = open(&node).map_err(|e| format!("open: {e}"))?;
        let blocked = open(&node).map_err(|e| format!("open: {e}"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut b = [0u8; 16];
            let _ = tx.send(rustix::io::read(&blocked, &mut b).map(drop));
        });
        // Healthy (see the keeper's policy), and the reader inside.
        let wait = (ready_since + Duration::from_millis(1100)).saturating_duration_since(Instant::now());
        std::thread::sleep(wait); // the keeper's policy, not a check
        let pid = crate::torture::keeper_child(keeper.id()).ok_or("the keeper runs no server")?;
        let t = Instant::now();
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).ok_or("pid 0")?,
            rustix::process::Signal::KILL,
        )
        .map_err(|e| e.to_string())?;
        loop {
            match open(&node).and_then(|f| count(&f)) {
                Ok(_) => break,
                Err(e) if t.elapsed() > Duration::from_secs(30) => {
                    return Err(format!("no open succeeded within 30 s of the kill (last: {e})"));
                }
                Err(_) => {}
            }
        }
        times.push(t.elapsed().as_secs_f64() * 1e3);
        ready_since = Instant::now();
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Err(Errno::NODEV)) => nodev += 1,
            Ok(Err(Errno::INTR)) => eintr += 1,
            Ok(r) => other.push(format!("blocked read: {r:?}")),
            Err(_) => other.push("a blocked reader still waits 10 s after the restart".into()),
        }
        match count(&idle) {
            Err(Errno::NODEV) => nodev += 1,
            r => other.push(format!("idle descriptor's ioctl: {r:?}")),
        }
    }
    if let Some(p) = rustix::process::Pid::from_raw(keeper.id() as i32) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
    }
    let _ = keeper.wait();
    let _ = std::fs::remove_dir(&dir);
    times.sort_by(f64::total_cmp);
    let row = Row(vec![
        ("bench", V::S("restart".into())),
        ("crashes", V::I(n as u64)),
        ("first_open_p50_ms", V::F(percentile(&times, 50.0))),
        ("first_open_p99_ms", V::F(percentile(&times, 99.0))),
        ("first_open_max_ms", V::F(times.last().copied().unwrap_or(f64::NAN))),
        ("earlier_enodev", V::I(nodev)),
        ("earlier_eintr", V::I(eintr)),
        ("earlier_other", V::I(other.len() as u64)),
    ]);
    for o in &other {
        eprintln!("bench restart: {o}");
    }
    if o.common.json {
        println!("{}", row.json());
    } else {
        println!("devlife bench restart: {}; {n} SIGKILLs of `devlife serve --supervise`", machine());
        println!(
            "first open after the kill: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; earlier descriptors: {nodev} ENODEV, {eintr} EINTR, {} other",
            row.num("first_open_p50_ms"),
            row.num("first_open_p99_ms"),
            row.num("first_open_max_ms"),
            other.len()
        );
    }
    if other.is_empty() {
        Ok(())
    } else {
        Err(format!("{} earlier descriptors did not see ENODEV", other.len()))
    }
}
