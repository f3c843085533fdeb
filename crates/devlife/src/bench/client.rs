//! One client process of `devlife bench fs` (`devlife bench fs-client`,
//! hidden): threads doing one operation on one file as fast as they can,
//! each timing every operation.
//!
//! Protocol on stdio, so the parent can start every client before any
//! measures: the client opens its descriptors, prints `ready`, waits for a
//! line on stdin, runs a warm-up and then the measured interval, and prints
//! `ops=N all=M ns=WINDOW hist=H` (`ops` timed in the window, `all` with
//! the warm-up; [`Hist::encode`]) or `error: ...` (exit 1).

use super::hist::Hist;
use rustix::fd::OwnedFd;
use rustix::fs::{Mode, OFlags};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// What a client does in its loop.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `read` of 4 bytes.
    Read,
    /// `write` of 4 bytes.
    Write,
    /// `ioctl(XYZ_IOC_COUNT)`, the command every contender serves.
    Ioctl,
    /// `open` then `close` (a pair counts as one operation).
    OpenClose,
}

impl Op {
    /// Every operation, in table order.
    pub const ALL: [Op; 4] = [Op::Read, Op::Write, Op::Ioctl, Op::OpenClose];

    /// The name in tables, JSON rows and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Ioctl => "ioctl",
            Op::OpenClose => "open-close",
        }
    }
}

/// Options of `devlife bench fs-client`.
#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// The file.
    #[arg(long)]
    pub path: PathBuf,
    /// The operation.
    #[arg(long, value_enum)]
    pub op: Op,
    /// Threads, each with its own descriptor.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Warm-up before measuring, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub warmup_ms: u64,
    /// The measured interval, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub ms: u64,
}

fn open(path: &std::path::Path) -> rustix::io::Result<OwnedFd> {
    rustix::fs::open(path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
}

/// One operation; checks the result is the one every contender gives.
#[inline]
fn once(op: Op, fd: &OwnedFd, path: &std::path::Path) -> Result<(), String> {
    match op {
        Op::Read => {
            let mut b = [0u8; 4];
            match rustix::io::read(fd, &mut b) {
                Ok(4) => Ok(()),
                r => Err(format!("read returned {r:?}")),
            }
        }
        Op::Write => match rustix::io::write(fd, b"abcd") {
            Ok(4) => Ok(()),
            r => Err(format!("write returned {r:?}")),
        },
        Op::Ioctl => match crate::xyz_client::count(fd) {
            Ok(n) if n > 0 => Ok(()),
            r => Err(format!("ioctl returned {r:?}")),
        },
        Op::OpenClose => open(path).map(drop).map_err(|e| format!("open: {e}")),
    }
}

/// Runs the client. Returns the exit status.
pub fn run(o: &Opts) -> i32 {
    match run_inner(o) {
        Ok(line) => {
            println!("{line}");
            0
        }
        Err(e) => {
            println!("error: {e}");
            1
        }
    }
}

fn run_inner(o: &Opts) -> Result<String, String> {
    let fds = (0..o.threads.max(1))
        .map(|_| open(&o.path).map_err(|e| format!("open {}: {e}", o.path.display())))
        .collect::<Result<Vec<_>, _>>()?;
    // Fail before `ready` if the operation does not work at all.
    once(o.op, &fds[0], &o.path)?;
    println!("ready");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(|e| e.to_string())?;

    let start = Arc::new(Barrier::new(fds.len()));
    let (warm, dur) = (Duration::from_millis(o.warmup_ms), Duration::from_millis(o.ms));
    let threads: Vec<_> = fds
        .into_iter()
        .map(|fd| {
            let (start, path, op) = (start.clone(), o.path.clone(), o.op);
            std::thread::spawn(move || -> Result<(u64, u64, Hist), String> {
                start.wait();
                let t0 = Instant::now();
                let (measure, end) = (t0 + warm, t0 + warm + dur);
                let mut h = Hist::default();
                let mut t = t0;
                let mut every = 0u64;
                loop {
                    once(op, &fd, &path)?;
                    every += 1;
                    let t2 = Instant::now();
                    if t2 >= measure {
                        if t2 >= end {
                            break;
                        }
                        if t >= measure {
                            h.record((t2 - t).as_nanos() as u64);
                        }
                    }
                    t = t2;
                }
                Ok((h.count(), every, h))
            })
        })
        .collect();
    let mut all = Hist::default();
    let (mut ops, mut every) = (0, 0);
    for t in threads {
        let (n, e, h) = t.join().map_err(|_| "a client thread panicked".to_owned())??;
        ops += n;
        every += e;
        all.merge(&h);
    }
    Ok(format!("ops={ops} all={every} ns={} hist={}", dur.as_nanos(), all.encode()))
}
