//! `devlife bench unplug`: what a removal costs while files are open and
//! in use, through the served tree's real system calls.
//!
//! For K open files (1, 100, 10,000) on one `xyz` device, with T = 2
//! threads hammering `XYZ_IOC_COUNT` and one client blocked in `read`:
//!
//! * `unbind`: from the `write` to `sys/bus/sim/drivers/xyz/unbind` to its
//!   return (every handler returned, every open file released);
//! * `reader-enodev`: from the same start to the blocked reader's `read`
//!   returning `ENODEV`;
//! * `rebind`: the `write` to `bind` (a fresh probe).
//!
//! And the same removal of a `bench` device whose debugfs directory holds
//! 1,000 files, all of them open, two threads hammering reads on them.

use super::{Row, V, machine, open, percentile, raise_nofile, timed_write};
use rustix::fd::OwnedFd;
use rustix::fs::OFlags;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Options of `devlife bench unplug`.
#[derive(clap::Args, Debug, Clone)]
pub struct UnplugOpts {
    /// --quick, --json.
    #[command(flatten)]
    pub common: super::Opts,
    /// Repetitions of each measurement (default 7, or 1 with --quick).
    #[arg(long)]
    pub reps: Option<usize>,
    /// Write the plot (unplug.svg) into this directory.
    #[arg(long)]
    pub plot_dir: Option<PathBuf>,
}

/// Open files of the measurements.
const OPEN_FILES: [usize; 3] = [1, 100, 10_000];
/// Hammering threads.
const HAMMERS: usize = 2;
/// Files of the debugfs directory.
const DEBUGFS_FILES: usize = 1_000;

/// Whether thread `tid` of this process sleeps in a FUSE request.
fn in_fuse_wait(tid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/wchan"))
        .is_ok_and(|w| w.contains("fuse") || w.contains("request_wait_answer"))
}

/// One removal's figures.
struct Sample {
    unbind: Duration,
    reader: Option<Duration>,
    rebind: Duration,
    /// The hammers' rate before the removal.
    hammer_ops_per_s: f64,
}

/// Starts `HAMMERS` threads doing `op` on their descriptors until it
/// fails; each returns its count and the error that stopped it.
fn hammer(
    fds: &[Arc<OwnedFd>],
    op: fn(&OwnedFd) -> rustix::io::Result<()>,
) -> (Vec<std::thread::JoinHandle<(u64, rustix::io::Errno)>>, Arc<AtomicU64>) {
    let done = Arc::new(AtomicU64::new(0));
    let threads = (0..HAMMERS)
        .map(|i| {
            let (fd, done) = (fds[i % fds.len()].clone(), done.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                loop {
                    if let Err(e) = op(&fd) {
                        return (n, e);
                    }
                    n += 1;
                    if n % 64 == 0 {
                        done.fetch_add(64, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    (threads, done)
}

fn ioctl_count(fd: &OwnedFd) -> rustix::io::Result<()> {
    crate::xyz_client::count(fd).map(drop)
}

fn pread_u64(fd: &OwnedFd) -> rustix::io::Result<()> {
    let mut b = [0u8; 32];
    rustix::io::pread(fd, &mut b, 0).map(drop)
}

/// The hammers' rate (operations per second) over the next `window`.
fn rate(done: &AtomicU64, window: Duration) -> f64 {
    let a = done.load(Ordering::Relaxed);
    std::thread::sleep(window);
    (done.load(Ordering::Relaxed) - a) as f64 / window.as_secs_f64()
}

/// One removal of an `xyz` device with `k` open files.
fn xyz_once(mnt: &Path, k: usize) -> Result<Sample, String> {
    let name = "unplug0";
    timed_write(&mnt.join("sys/bus/sim/new_device"), &format!("xyz {name}"))?;
    let node = mnt.join("dev").join(name);
    let fds: Vec<Arc<OwnedFd>> =
        (0..k.max(HAMMERS + 1)).map(|_| open(&node, OFlags::RDWR).map(Arc::new)).collect::<Result<_, _>>()?;
    let (hammers, done) = hammer(&fds[..HAMMERS], ioctl_count);
    // The blocked reader, on a descriptor of its own.
    let tid = Arc::new(std::sync::atomic::AtomicI32::new(0));
    let t0 = Arc::new(std::sync::OnceLock::<Instant>::new());
    let reader = {
        let (fd, tid, t0) = (fds[HAMMERS].clone(), tid.clone(), t0.clone());
        std::thread::spawn(move || {
            tid.store(rustix::thread::gettid().as_raw_nonzero().get(), Ordering::Release);
            let mut b = [0u8; 16];
            let r = rustix::io::read(&fd, &mut b);
            let at = Instant::now();
            (r, t0.get().map(|t| at.saturating_duration_since(*t)))
        })
    };
    let hang = Instant::now() + Duration::from_secs(30);
    while !(tid.load(Ordering::Acquire) != 0 && in_fuse_wait(tid.load(Ordering::Acquire))) {
        if Instant::now() > hang {
            return Err("the reader never blocked".into());
        }
        std::thread::yield_now();
    }
    let hammer_ops_per_s = rate(&done, Duration::from_millis(20));

    let unbind_path = mnt.join("sys/bus/sim/drivers/xyz/unbind");
    let ctl = open(&unbind_path, OFlags::WRONLY)?;
    let start = Instant::now();
    let _ = t0.set(start);
    rustix::io::write(&ctl, name.as_bytes()).map_err(|e| format!("unbind: {e}"))?;
    let unbind = start.elapsed();

    let (r, seen) = reader.join().map_err(|_| "reader panicked")?;
    if r != Err(rustix::io::Errno::NODEV) {
        return Err(format!("blocked reader got {r:?}, not ENODEV"));
    }
    for h in hammers {
        let (_, e) = h.join().map_err(|_| "hammer panicked")?;
        if e != rustix::io::Errno::NODEV {
            return Err(format!("hammer got {e}, not ENODEV"));
        }
    }
    let rebind = timed_write(&mnt.join("sys/bus/sim/drivers/xyz/bind"), name)?;
    drop(fds);
    timed_write(&mnt.join("sys/bus/sim/delete_device"), name)?;
    Ok(Sample { unbind, reader: seen, rebind, hammer_ops_per_s })
}

/// One removal of a `bench` device with `DEBUGFS_FILES` debugfs files, all
/// open, two threads reading them.
fn debugfs_once(mnt: &Path) -> Result<Sample, String> {
    let name = "unplugd";
    std::fs::write(mnt.join("debug/bench/debugfs_files"), DEBUGFS_FILES.to_string())
        .map_err(|e| format!("debugfs_files: {e}"))?;
    timed_write(&mnt.join("sys/bus/sim/new_device"), &format!("bench {name}"))?;
    let dir = mnt.join("debug/bench").join(name);
    let fds: Vec<Arc<OwnedFd>> = (0..DEBUGFS_FILES)
        .map(|i| open(&dir.join(format!("f{i}")), OFlags::RDONLY).map(Arc::new))
        .collect::<Result<_, _>>()?;
    let (hammers, done) = hammer(&fds[..HAMMERS], pread_u64);
    let hammer_ops_per_s = rate(&done, Duration::from_millis(20));
    let unbind = timed_write(&mnt.join("sys/bus/sim/drivers/bench/unbind"), name)?;
    for h in hammers {
        let (_, e) = h.join().map_err(|_| "hammer panicked")?;
        // A debugfs file of a removed binding: EIO (debugfs's answer).
        if e != rustix::io::Errno::IO && e != rustix::io::Errno::NODEV {
            return Err(format!("debugfs reader got {e}"));
        }
    }
    let rebind = timed_write(&mnt.join("sys/bus/sim/drivers/bench/bind"), name)?;
    drop(fds);
    timed_write(&mnt.join("sys/bus/sim/delete_device"), name)?;
    std::fs::write(mnt.join("debug/bench/debugfs_files"), "0").map_err(|e| format!("debugfs_files: {e}"))?;
    Ok(Sample { unbind, reader: None, rebind, hammer_ops_per_s })
}

/// The figures of one configuration over its repetitions.
#[derive(Default)]
struct Figures {
    unbind: Vec<f64>,
    reader: Vec<f64>,
    rebind: Vec<f64>,
    hammer: Vec<f64>,
}

impl Figures {
    fn add(&mut self, s: &Sample) {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        self.unbind.push(us(s.unbind));
        if let Some(r) = s.reader {
            self.reader.push(us(r));
        }
        self.rebind.push(us(s.rebind));
        self.hammer.push(s.hammer_ops_per_s);
    }
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// Runs the benchmark; prints a table or JSON rows.
pub fn run(o: &UnplugOpts) -> i32 {
    match run_inner(o) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bench unplug: {e}");
            1
        }
    }
}

fn run_inner(o: &UnplugOpts) -> Result<(), String> {
    let reps = o.reps.unwrap_or(if o.common.quick { 1 } else { 7 }).max(1);
    raise_nofile(OPEN_FILES.iter().max().copied().unwrap_or(0) as u64 + 1_000)?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let base = std::env::temp_dir().join(format!("devlife-unplug-{}", std::process::id()));
    let server =
        super::servers::Server::start(super::servers::Contender::Devlife, &base, &exe, Path::new("."))?;
    let mnt = server.mount().ok_or("no mount")?.to_owned();

    let mut xyz: Vec<(usize, Figures)> = OPEN_FILES.iter().map(|k| (*k, Figures::default())).collect();
    let mut dbg = Figures::default();
    // Repetitions interleaved across sizes, so drift hits all alike.
    for _ in 0..reps {
        for (k, f) in &mut xyz {
            f.add(&xyz_once(&mnt, *k)?);
        }
        dbg.add(&debugfs_once(&mnt)?);
    }
    drop(server);
    let _ = std::fs::remove_dir(&base);

    let mut rows = Vec::new();
    let mut push = |op: &str, files: usize, us: &[f64], hammer: &[f64]| {
        let s = sorted(us.to_vec());
        let h = sorted(hammer.to_vec());
        rows.push((
            op.to_owned(),
            files,
            Row(vec![
                ("bench", V::S("unplug".into())),
                ("contender", V::S("devlife".into())),
                ("op", V::S(op.into())),
                ("threads", V::I(HAMMERS as u64)),
                ("open_files", V::I(files as u64)),
                ("ops_per_s", V::F(percentile(&h, 50.0))),
                ("p50_us", V::F(percentile(&s, 50.0))),
                ("p99_us", V::F(percentile(&s, 99.0))),
                ("max_us", V::F(s.last().copied().unwrap_or(f64::NAN))),
                ("reps", V::I(s.len() as u64)),
            ]),
        ));
    };
    for (k, f) in &xyz {
        push("unbind", *k, &f.unbind, &f.hammer);
        push("reader-enodev", *k, &f.reader, &f.hammer);
        push("rebind", *k, &f.rebind, &f.hammer);
    }
    push("debugfs-unbind", DEBUGFS_FILES, &dbg.unbind, &dbg.hammer);
    push("debugfs-rebind", DEBUGFS_FILES, &dbg.rebind, &dbg.hammer);

    if o.common.json {
        for (_, _, r) in &rows {
            println!("{}", r.json());
        }
    } else {
        println!("devlife bench unplug: {}; {reps} rep(s); {HAMMERS} threads hammering", machine());
        println!(
            "{:<16} {:>10} {:>14} {:>12} {:>12} {:>12}",
            "op", "open files", "hammer ops/s", "p50 µs", "p99 µs", "max µs"
        );
        for (op, files, r) in &rows {
            let f = |k: &str| r.num(k);
            println!(
                "{op:<16} {files:>10} {:>14.0} {:>12.1} {:>12.1} {:>12.1}",
                f("ops_per_s"),
                f("p50_us"),
                f("p99_us"),
                f("max_us")
            );
        }
    }
    if let Some(dir) = &o.plot_dir {
        let median = |v: &Vec<f64>| percentile(&sorted(v.clone()), 50.0) / 1000.0;
        let series = vec![
            (
                "unbind: write to return".to_owned(),
                xyz.iter().map(|(k, f)| (*k as f64, median(&f.unbind))).collect(),
            ),
            (
                "blocked reader sees ENODEV".to_owned(),
                xyz.iter().map(|(k, f)| (*k as f64, median(&f.reader))).collect(),
            ),
            ("rebind".to_owned(), xyz.iter().map(|(k, f)| (*k as f64, median(&f.rebind))).collect()),
        ];
        let p = super::plot::unplug(dir, &series)?;
        eprintln!("bench unplug: wrote {}", p.display());
    }
    Ok(())
}
