//! `devlife bench blocked`: what clients blocked in a handler cost the
//! server, and how fast a removal frees them.
//!
//! N client threads, spread over processes of at most
//! [`THREADS_PER_CLIENT`] threads each (`devlife bench blocked-client`),
//! each open `dev/blk0` (an `xyz` device with an empty FIFO) and block in
//! `read`. Once the server's `debug/devlife/stats` counts N operations in
//! flight, the benchmark reports:
//!
//! * `server_threads`: the server's thread count (`/proc/PID/status`),
//!   and `threads_added`, over the count before the clients came;
//! * `rss_per_blocked_kib`: the server's resident memory over what it was
//!   before the clients came, divided by N (their open files included),
//!   in a second, warm round of the same N: the first round's figure,
//!   `cold_rss_per_blocked_kib`, also counts the heap's first growth
//!   (malloc arenas reaching their working size), which a serving process
//!   pays once;
//! * `stats_read_us`: a read of `debug/devlife/stats` while they wait (the
//!   median of 5), a request that must not queue behind them;
//! * `unbind_to_last_enodev_ms`: from the `write` to
//!   `sys/bus/sim/drivers/xyz/unbind` to the last client's `read`
//!   returning `ENODEV` (each client reports the `CLOCK_MONOTONIC` time of
//!   its last return, a clock shared by every process), and `unbind_ms`,
//!   the `write` alone; `server_cpu_ms`, the server's CPU time (user and
//!   system, at the kernel's 10 ms tick) from the `write` to the last
//!   `ENODEV`: the rest of that time the two CPUs spend waking and ending
//!   the clients' threads.
//!
//! Every blocked read must end `ENODEV`; any other outcome fails the run.
//! The size of N is bounded by the machine: each blocked read holds a
//! client thread (`pid_max` is 32,768 here, so 100,000 cannot run); with
//! the blocking API a server thread too, while xyz's async read holds
//! none.

use super::{Row, V, machine, percentile, raise_nofile, timed_write};
use rustix::fs::{Mode, OFlags};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Options of `devlife bench blocked`.
#[derive(clap::Args, Debug, Clone)]
pub struct BlockedOpts {
    /// --quick, --json.
    #[command(flatten)]
    pub common: super::Opts,
    /// Blocked readers per measurement, comma-separated (default 1000,10000;
    /// 1000 with --quick).
    #[arg(long, value_delimiter = ',')]
    pub readers: Vec<usize>,
    /// The server's transport (`devlife serve --io-uring`).
    #[arg(long, default_value = "auto")]
    pub io_uring: String,
}

/// Options of the hidden `devlife bench blocked-client`.
#[derive(clap::Args, Debug, Clone)]
pub struct ClientOpts {
    /// The node to read.
    #[arg(long)]
    pub path: PathBuf,
    /// Threads, each with a descriptor of its own, blocked in `read`.
    #[arg(long)]
    pub threads: usize,
}

/// Client threads per client process.
pub const THREADS_PER_CLIENT: usize = 1000;
/// Stack of a client thread: it only sleeps in `read`.
const CLIENT_STACK: usize = 64 * 1024;
/// How long the setup may take before the run fails (a hang guard).
const GUARD: Duration = Duration::from_secs(300);

/// `CLOCK_MONOTONIC` in nanoseconds: one clock for every process.
fn mono_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// The client process: opens and blocks `threads` readers, prints `ready`,
/// and once every read has returned prints `done ENODEV OTHER LAST_NS`.
pub fn client(o: &ClientOpts) -> i32 {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut threads = Vec::with_capacity(o.threads);
    for _ in 0..o.threads {
        let fd = match rustix::fs::open(&o.path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) {
            Ok(fd) => fd,
            Err(e) => {
                eprintln!("bench-blocked-client: {}: {e}", o.path.display());
                return 1;
            }
        };
        let tx = tx.clone();
        let t = std::thread::Builder::new().stack_size(CLIENT_STACK).spawn(move || {
            let mut b = [0u8; 8];
            let r = rustix::io::read(&fd, &mut b);
            let _ = tx.send((r.err(), mono_ns()));
        });
        match t {
            Ok(t) => threads.push(t),
            Err(e) => {
                eprintln!("bench-blocked-client: thread {}: {e}", threads.len());
                return 1;
            }
        }
    }
    drop(tx);
    println!("ready");
    let _ = std::io::stdout().flush();
    let (mut enodev, mut other, mut last) = (0usize, 0usize, 0u64);
    for (e, at) in rx {
        if e == Some(rustix::io::Errno::NODEV) {
            enodev += 1;
        } else {
            other += 1;
        }
        last = last.max(at);
    }
    println!("done {enodev} {other} {last}");
    0
}

/// A field of `/proc/PID/status` (`Threads:`, `VmRSS:` in kB).
fn status(pid: u32, key: &str) -> Result<u64, String> {
    let s =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("server status: {e}"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no {key} in /proc/{pid}/status"))
}

/// Requests in the devices, from `debug/devlife/stats`: handlers running
/// (`inflight_ops`, the blocking API's readers) and async operations
/// waiting (`pending_ops`).
fn inflight(mnt: &Path) -> Result<u64, String> {
    let s = std::fs::read_to_string(mnt.join("debug/devlife/stats")).map_err(|e| format!("stats: {e}"))?;
    let line = |key: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| format!("no {key}in debug/devlife/stats"))
    };
    Ok(line("inflight_ops ")? + line("pending_ops ")?)
}

/// What xyz's read is: an async handler (`AsyncFileOperations`).
const HANDLERS: &str = "async";

/// User and system CPU ticks of process `pid` (`/proc/PID/stat`).
fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| format!("server stat: {e}"))?;
    let rest = s.rsplit_once(") ").map(|(_, r)| r).ok_or("server stat: no comm")?;
    // After the comm: state is field 3; utime and stime are 14 and 15.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok()).ok_or("server stat: short");
    Ok(tick(14)? + tick(15)?)
}

/// One measurement with `n` blocked readers.
fn once(exe: &Path, mnt: &Path, pid: u32, n: usize) -> Result<Row, String> {
    let name = "blk0";
    timed_write(&mnt.join("sys/bus/sim/new_device"), &format!("xyz {name}"))?;
    let node = mnt.join("dev").join(name);
    let (threads0, rss0) = (status(pid, "Threads:")?, status(pid, "VmRSS:")?);
    let mut clients: Vec<(Child, BufReader<std::process::ChildStdout>)> = Vec::new();
    let mut left = n;
    while left > 0 {
        let k = left.min(THREADS_PER_CLIENT);
        left -= k;
        let mut c = Command::new(exe)
            .args(["bench", "blocked-client"])
            .arg("--path")
            .arg(&node)
            .arg("--threads")
            .arg(k.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("client: {e}"))?;
        let mut out = BufReader::new(c.stdout.take().ok_or("no client stdout")?);
        let mut line = String::new();
        out.read_line(&mut line).map_err(|e| e.to_string())?;
        if line.trim() != "ready" {
            let _ = c.kill();
            return Err(format!("a client could not block its readers: {line:?}"));
        }
        clients.push((c, out));
    }
    let end = Instant::now() + GUARD;
    while inflight(mnt)? < n as u64 {
        if Instant::now() > end {
            return Err(format!("only {} of {n} readers reached the driver", inflight(mnt)?));
        }
        std::thread::sleep(Duration::from_millis(20)); // polling another process's state
    }
    let (threads, rss) = (status(pid, "Threads:")?, status(pid, "VmRSS:")?);
    let mut reads = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        inflight(mnt)?;
        reads.push(t.elapsed().as_secs_f64() * 1e6);
    }
    reads.sort_by(f64::total_cmp);

    let ctl = mnt.join("sys/bus/sim/drivers/xyz/unbind");
    let cpu0 = cpu_ticks(pid)?;
    let t0 = mono_ns();
    let unbind = timed_write(&ctl, name)?;
    let mut last = 0u64;
    for (mut c, mut out) in clients {
        let mut line = String::new();
        out.read_line(&mut line).map_err(|e| e.to_string())?;
        let _ = c.wait();
        let f: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
        let [enodev, other, at] = f[..] else { return Err(format!("a client said {line:?}")) };
        if other != 0 {
            return Err(format!("{other} blocked reads ended otherwise than ENODEV ({enodev} did)"));
        }
        last = last.max(at);
    }
    let cpu = cpu_ticks(pid)?.saturating_sub(cpu0);
    timed_write(&mnt.join("sys/bus/sim/delete_device"), name)?;
    Ok(Row(vec![
        ("bench", V::S("blocked".into())),
        ("handlers", V::S(HANDLERS.into())),
        ("readers", V::I(n as u64)),
        ("clients", V::I(n.div_ceil(THREADS_PER_CLIENT) as u64)),
        ("server_threads", V::I(threads)),
        ("threads_added", V::I(threads.saturating_sub(threads0))),
        ("rss_per_blocked_kib", V::F(rss.saturating_sub(rss0) as f64 / n as f64)),
        ("stats_read_us", V::F(percentile(&reads, 50.0))),
        ("unbind_ms", V::F(unbind.as_secs_f64() * 1e3)),
        ("unbind_to_last_enodev_ms", V::F(last.saturating_sub(t0) as f64 / 1e6)),
        // Ticks of 10 ms (USER_HZ is 100 on Linux).
        ("server_cpu_ms", V::F(cpu as f64 * 10.0)),
    ]))
}

/// `devlife bench blocked`. Returns the exit status.
pub fn run(o: &BlockedOpts) -> i32 {
    match run_inner(o) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bench blocked: {e}");
            1
        }
    }
}

fn run_inner(o: &BlockedOpts) -> Result<(), String> {
    let sizes = match (&o.readers[..], o.common.quick) {
        ([], true) => vec![1000],
        ([], false) => vec![1000, 10_000],
        (s, _) => s.to_vec(),
    };
    // Each client process opens one descriptor per thread.
    raise_nofile(THREADS_PER_CLIENT as u64 + 64)?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let base = std::env::temp_dir().join(format!("devlife-blocked-{}", std::process::id()));
    let server = super::servers::Server::start_with(
        super::servers::Contender::Devlife,
        &base,
        &exe,
        Path::new("."),
        &["--io-uring", &o.io_uring],
    )?;
    let mnt = server.mount().ok_or("no mount")?.to_owned();
    let pid = server.pid().ok_or("no server process")?;
    let mut rows = Vec::new();
    for n in sizes {
        let cold = once(&exe, &mnt, pid, n)?;
        let mut warm = once(&exe, &mnt, pid, n)?;
        warm.0.push(("cold_rss_per_blocked_kib", V::F(cold.num("rss_per_blocked_kib"))));
        rows.push(warm);
    }
    drop(server);
    let _ = std::fs::remove_dir(&base);
    if o.common.json {
        for r in &rows {
            println!("{}", r.json());
        }
        return Ok(());
    }
    println!("devlife bench blocked: {}; {HANDLERS} handlers, --io-uring {}", machine(), o.io_uring);
    println!(
        "{:>8} {:>8} {:>10} {:>12} {:>10} {:>10} {:>10} {:>12} {:>10}",
        "readers",
        "threads",
        "+threads",
        "KiB/blocked",
        "cold KiB",
        "stats µs",
        "unbind ms",
        "last ENODEV",
        "server ms"
    );
    for r in &rows {
        let g = |k: &str| r.num(k);
        println!(
            "{:>8} {:>8} {:>10} {:>12.1} {:>10.1} {:>10.0} {:>10.1} {:>12.1} {:>10.0}",
            g("readers"),
            g("server_threads"),
            g("threads_added"),
            g("rss_per_blocked_kib"),
            g("cold_rss_per_blocked_kib"),
            g("stats_read_us"),
            g("unbind_ms"),
            g("unbind_to_last_enodev_ms"),
            g("server_cpu_ms")
        );
    }
    Ok(())
}
