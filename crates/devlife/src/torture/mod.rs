//! `devlife torture`: client processes hammer the device nodes while a
//! chaos thread unbinds, binds, hot-plugs, hot-unplugs and unloads the
//! driver, and a signal thread interrupts blocked clients. Reproducible
//! from its seed (the interleaving is the machine's; the schedule of
//! actions and operations is the seed's).
//!
//! Checks, reported as
//! `torture: ops=N removals=N violations=N leaked_files=N errors=N`:
//!
//! * violations: handlers that started after their binding's removal
//!   returned (counted by the core on every handler entry), removals slower
//!   than the longest non-cancellable hold plus 100 ms (an unload: one hold
//!   more for each further device it unbinds), and client operations that
//!   hung past 10 s;
//! * leaked_files: files still open in the server once every client is gone;
//! * errors: errno values a client saw that the removal tables do not allow
//!   at that moment;
//! * stuck: client threads seen in uninterruptible sleep (`D`) for more
//!   than 5 s, and clients that outlived a SIGKILL by 10 s;
//! * namespace: handles that reached a device re-created in place of
//!   theirs, and listings that skipped or repeated an entry (the chaos
//!   thread's namespace churn, `namespace.rs`).
//!
//! Clients also unbind their own device from inside its handler
//! (`XYZ_IOC_UNBIND_SELF`), several at once.

pub mod client;
pub mod leaks;
mod namespace;
mod rng;
pub mod stuck;

use client::{MAX_HOLD_MS, NODES};
use devlife_gate::sync::lock;
use rng::Rng;
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Options of `devlife torture`.
#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// How long to run.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Seed (default: from the clock; printed, so a run can be replayed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Client processes.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Threads per client process.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Use the server running there (default: start one on a fresh mount).
    #[arg(long)]
    pub mount: Option<PathBuf>,
    /// The started server's `--io-uring`.
    #[arg(long, value_enum, default_value_t = crate::serve::IoUring::Auto)]
    pub io_uring: crate::serve::IoUring,
    /// Serve the nodes over CUSE too (`devlife serve --cuse`; root, a
    /// kernel with CUSE) and have the clients use `/dev/<node>`.
    #[arg(long)]
    pub cuse: bool,
    /// A removal of one device slower than this many milliseconds is a
    /// violation (default: the longest hold a client issues plus 100; raise
    /// it under emulation, where everything is tens of times slower). An
    /// unload (`rmmod`) of n bound devices may take n - 1 holds more.
    #[arg(long, default_value_t = MAX_HOLD_MS + 100)]
    pub removal_bound_ms: u64,
    /// Also SIGKILL the server every 2-5 s: it runs under `--supervise`
    /// (over `/dev/fuse`, a restartable server's transport), and each kill
    /// is an unplug of every device the clients must survive.
    #[arg(long)]
    pub kill_server: bool,
}

pub(crate) fn write(path: &Path, text: &str) -> Result<(), Errno> {
    let fd = rustix::fs::open(path, OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())?;
    rustix::io::write(&fd, text.as_bytes()).map(drop)
}

fn stats(dir: &Path) -> std::collections::HashMap<String, u64> {
    std::fs::read_to_string(dir.join("debug/devlife/stats"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
        .collect()
}

pub(crate) fn start_server(
    exe: &Path,
    dir: &Path,
    io_uring: crate::serve::IoUring,
    cuse: bool,
    supervise: bool,
) -> Result<Child, String> {
    let mode =
        clap::ValueEnum::to_possible_value(&io_uring).map(|v| v.get_name().to_owned()).unwrap_or_default();
    let mut child = Command::new(exe)
        .arg("serve")
        .arg("--log")
        .arg("warn")
        .arg("--mount")
        .arg(dir)
        .arg("--io-uring")
        .arg(mode)
        .args(cuse.then_some("--cuse"))
        .args(supervise.then_some("--supervise"))
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the server: {e}"))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("no stdout")?)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    if !line.starts_with("ready ") {
        let _ = child.kill();
        return Err(format!("server did not become ready: {line:?}"));
    }
    Ok(child)
}

struct Chaos {
    /// A removal slower than this is a violation.
    bound: Duration,
    removals: AtomicU64,
    slow: AtomicU64,
    slowest_us: AtomicU64,
    /// The slowest removal of one device (unbind, delete), and of a driver
    /// unload (`rmmod`), which unbinds several.
    slowest_one_us: AtomicU64,
    slowest_unload_us: AtomicU64,
    /// Namespace checks run, and what they found wrong.
    namespace_checks: AtomicU64,
    namespace: Mutex<Vec<String>>,
}

/// One random action on the tree. Errors that only say "not in that state
/// now" are expected; removals are timed.
fn chaos_step(dir: &Path, rng: &mut Rng, c: &Chaos) {
    let node = NODES[rng.below(NODES.len() as u64) as usize];
    let drv = dir.join("sys/bus/sim/drivers/xyz");
    // Namespace churn, now and then.
    let bad = match rng.below(200) {
        0..=1 => Some(namespace::handles_across_recreation(dir)),
        2 => Some(namespace::listing_while_changing(dir, rng.below(40))),
        _ => None,
    };
    if let Some(bad) = bad {
        c.namespace_checks.fetch_add(1, Ordering::Relaxed);
        for b in &bad {
            eprintln!("torture: namespace: {b}");
        }
        lock(&c.namespace).extend(bad);
        return;
    }
    let (path, text, removal) = match rng.below(100) {
        // Weighted so that devices exist most of the time: a removal is
        // followed, on average, by its undoing.
        0..=24 => (drv.join("unbind"), node.to_owned(), true),
        25..=59 => (drv.join("bind"), node.to_owned(), false),
        60..=74 => (dir.join("sys/bus/sim/new_device"), format!("xyz {node}"), false),
        75..=86 => (dir.join("sys/bus/sim/delete_device"), node.to_owned(), true),
        87..=88 => (dir.join("debug/devlife/modules"), "rmmod xyz".to_owned(), true),
        _ => (dir.join("debug/devlife/modules"), "modprobe xyz".to_owned(), false),
    };
    // An unload unbinds its devices one after another, as Linux's
    // driver_unregister does, and each may wait for a hold begun while the
    // one before it was being unbound: its bound is one hold per device.
    // Only this thread binds, so the count is one the unload cannot exceed.
    let unload = text.starts_with("rmmod");
    let holds = if unload { bound_devices(&drv).max(1) } else { 1 };
    let bound = c.bound + Duration::from_millis(MAX_HOLD_MS * (holds - 1));
    let t = Instant::now();
    let r = write(&path, &text);
    let took = t.elapsed();
    if removal && r.is_ok() {
        c.removals.fetch_add(1, Ordering::Relaxed);
        c.slowest_us.fetch_max(took.as_micros() as u64, Ordering::Relaxed);
        let kind = if unload { &c.slowest_unload_us } else { &c.slowest_one_us };
        kind.fetch_max(took.as_micros() as u64, Ordering::Relaxed);
        if took > bound {
            c.slow.fetch_add(1, Ordering::Relaxed);
            eprintln!("torture: removal `{text}` took {took:?} (bound {bound:?})");
        }
    }
}

/// How many devices are bound to the driver whose directory is `drv`: its
/// device links.
fn bound_devices(drv: &Path) -> u64 {
    let Ok(dir) = std::fs::read_dir(drv) else { return 0 };
    dir.filter_map(Result::ok).filter(|e| e.file_type().is_ok_and(|t| t.is_symlink())).count() as u64
}

/// The server a keeper (`devlife serve --supervise`, process `keeper`)
/// runs now: its one child.
pub fn keeper_child(keeper: u32) -> Option<u32> {
    let c = std::fs::read_to_string(format!("/proc/{keeper}/task/{keeper}/children")).ok()?;
    c.split_whitespace().next()?.parse().ok()
}

/// The server kills of `--kill-server`.
#[derive(Default)]
struct Kills {
    count: u64,
    /// The killed servers' violations, read just before each kill.
    violations: u64,
    /// The longest from a kill to the next server answering.
    slowest: Duration,
}

impl Kills {
    /// SIGKILLs the server `keeper` runs, and waits (30 s hang guard) for
    /// the next one to answer.
    fn kill(&mut self, keeper: u32, dir: &Path) -> Result<(), String> {
        let Some(pid) = keeper_child(keeper) else { return Ok(()) };
        self.violations += stats(dir).get("violations").copied().unwrap_or(0);
        let p = rustix::process::Pid::from_raw(pid as i32).ok_or("pid 0")?;
        let t = Instant::now();
        rustix::process::kill_process(p, rustix::process::Signal::KILL).map_err(|e| e.to_string())?;
        while keeper_child(keeper).is_none_or(|c| c == pid) || !dir.join("debug/devlife/stats").exists() {
            if t.elapsed() > Duration::from_secs(30) {
                return Err("the server was not restarted within 30 s of its kill".into());
            }
            std::thread::sleep(Duration::from_millis(1)); // polling another process
        }
        self.count += 1;
        self.slowest = self.slowest.max(t.elapsed());
        Ok(())
    }
}

/// Runs the torture test. Returns the exit status.
pub fn run(o: &Opts) -> i32 {
    match torture(o) {
        Ok(clean) => i32::from(!clean),
        Err(e) => {
            eprintln!("devlife torture: {e}");
            2
        }
    }
}

fn torture(o: &Opts) -> Result<bool, String> {
    let seed = o.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let (dir, mut server) = match &o.mount {
        Some(d) if devlife_fuse::mount::state(d) == devlife_fuse::mount::MountState::Live => {
            (d.clone(), None)
        }
        other => {
            let d = other.clone().unwrap_or_else(|| {
                std::env::temp_dir().join(format!("devlife-torture-{}", std::process::id()))
            });
            std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
            let io_uring = if o.kill_server { crate::serve::IoUring::Off } else { o.io_uring };
            let child = start_server(&exe, &d, io_uring, o.cuse, o.kill_server)?;
            (std::fs::canonicalize(&d).map_err(|e| e.to_string())?, Some(child))
        }
    };
    let transport = std::fs::read_to_string(dir.join("debug/devlife/fuse"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("transport ").map(str::to_owned))
        .unwrap_or_else(|| "unknown".into());
    eprintln!(
        "torture: seed {seed}, {} s, {} clients x {} threads, on {} (transport {transport})",
        o.seconds,
        o.clients,
        o.threads,
        dir.display()
    );
    let base = stats(&dir);

    let mut clients: Vec<Child> = (0..o.clients)
        .map(|i| {
            Command::new(&exe)
                .arg("torture-client")
                .arg("--mount")
                .arg(&dir)
                .arg("--seed")
                .arg(seed.wrapping_add(i as u64 + 1).to_string())
                .arg("--seconds")
                .arg(o.seconds.to_string())
                .arg("--threads")
                .arg(o.threads.to_string())
                .args(o.cuse.then_some("--cuse"))
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| format!("cannot start a client: {e}"))
        })
        .collect::<Result<_, _>>()?;
    // A client is signalled once it says it handles SIGUSR1 (its first
    // line); one that never says so is an error, not a quiet zero.
    let mut outs = Vec::new();
    let mut ready = Vec::new();
    for c in &mut clients {
        let out = c.stdout.take();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let Some(o) = out else { return };
            let mut r = BufReader::new(o);
            for _ in 0..2 {
                let mut line = String::new();
                let _ = r.read_line(&mut line);
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let first = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        if first.trim() == "ready" {
            ready.push(c.id());
        } else {
            eprintln!("torture: client {} did not start (said {:?})", c.id(), first.trim());
        }
        outs.push(rx);
    }
    let silent = (clients.len() - ready.len()) as u64;
    let pids: Arc<Mutex<Vec<u32>>> = Arc::new(Mutex::new(ready));
    let watch = stuck::Watch::start();
    for c in &clients {
        watch.add(c.id());
    }

    // Signals: interrupt a random client every few milliseconds, until all
    // clients are gone (a client blocked past the deadline is freed so).
    let signalling = Arc::new(AtomicBool::new(true));
    let signaller = {
        let (pids, on) = (pids.clone(), signalling.clone());
        let mut rng = Rng::new(seed ^ 0x5157);
        std::thread::spawn(move || {
            while on.load(Ordering::Relaxed) {
                let list = lock(&pids).clone();
                if !list.is_empty() {
                    let pid = list[rng.below(list.len() as u64) as usize];
                    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                        let _ = rustix::process::kill_process(p, rustix::process::Signal::USR1);
                    }
                }
                std::thread::sleep(Duration::from_millis(1 + rng.below(20)));
            }
        })
    };

    // Chaos until the deadline.
    let chaos = Chaos {
        bound: Duration::from_millis(o.removal_bound_ms),
        removals: AtomicU64::new(0),
        slow: AtomicU64::new(0),
        slowest_us: AtomicU64::new(0),
        slowest_one_us: AtomicU64::new(0),
        slowest_unload_us: AtomicU64::new(0),
        namespace_checks: AtomicU64::new(0),
        namespace: Mutex::default(),
    };
    let mut rng = Rng::new(seed ^ 0xC4A05);
    let deadline = Instant::now() + Duration::from_secs(o.seconds);
    let keeper = server.as_ref().filter(|_| o.kill_server).map(Child::id);
    let mut kills = Kills::default();
    let mut next_kill = Instant::now() + Duration::from_millis(2000 + rng.below(3000));
    while Instant::now() < deadline {
        if let Some(k) = keeper.filter(|_| Instant::now() >= next_kill) {
            kills.kill(k, &dir)?;
            next_kill = Instant::now() + Duration::from_millis(2000 + rng.below(3000));
        }
        chaos_step(&dir, &mut rng, &chaos);
        std::thread::sleep(Duration::from_millis(rng.below(10))); // pacing
    }
    // End: delete every device. A client operation still waiting (for data,
    // or in XYZ_IOC_WAIT) is woken with ENODEV, as the removal guarantees.
    for n in NODES {
        let t = Instant::now();
        if write(&dir.join("sys/bus/sim/delete_device"), n).is_ok() {
            chaos.removals.fetch_add(1, Ordering::Relaxed);
            chaos.slowest_us.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
            chaos.slowest_one_us.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
    }

    // Collect the clients (hang guard: 30 s past the deadline each).
    let (mut ops, mut hangs, mut errors, mut survived_kill) = (0u64, 0u64, 0u64, 0u64);
    let mut connaborted = 0u64;
    errors += silent;
    for (mut c, rx) in clients.into_iter().zip(outs) {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.starts_with("client ") => {
                let field = |k: &str| -> u64 {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(k))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0)
                };
                ops += field("ops=");
                hangs += field("hangs=");
                connaborted += field("connaborted=");
                errors += field("unexpected=");
                if field("unexpected=") > 0 {
                    eprintln!("torture: {}", line.trim());
                }
            }
            Ok(line) => {
                // Ended without its report (killed, crashed).
                errors += 1;
                eprintln!("torture: client {} ended without its report ({:?})", c.id(), line.trim());
            }
            Err(_) => {
                hangs += 1;
                eprintln!("torture: a client did not finish 30 s after the deadline");
            }
        }
        if !stuck::kill_and_reap(&mut c, Duration::from_secs(10)) {
            survived_kill += 1;
            eprintln!("torture: client {} outlived SIGKILL by 10 s", c.id());
        }
        lock(&pids).retain(|p| *p != c.id());
    }
    signalling.store(false, Ordering::Relaxed);
    let _ = signaller.join();

    // Every file the clients opened must be released (RELEASE arrives
    // after close(2) returns): wait up to 10 s for the count to settle.
    let baseline = base.get("open_files").copied().unwrap_or(0);
    let t = Instant::now();
    let mut now = stats(&dir);
    while now.get("open_files").copied().unwrap_or(0) > baseline.max(1)
        && t.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(20));
        now = stats(&dir);
    }
    // The stats read itself is one open file.
    let leaked = now.get("open_files").copied().unwrap_or(0).saturating_sub(baseline.max(1));
    // Each server counts its own; the killed ones' last counts were taken
    // just before each kill.
    let epoch = now.get("violations").copied().unwrap_or(0).saturating_sub(if kills.count > 0 {
        0
    } else {
        base.get("violations").copied().unwrap_or(0)
    }) + kills.violations;
    let slow = chaos.slow.load(Ordering::Relaxed);
    let stuck_threads = watch.stuck();
    for s in &stuck_threads {
        eprintln!("torture: stuck in D: {s}");
    }
    let stuck = stuck_threads.len() as u64 + survived_kill;
    let namespace = lock(&chaos.namespace).len() as u64;
    let violations = epoch + slow + hangs + stuck + namespace;
    let removals = chaos.removals.load(Ordering::Relaxed);
    eprintln!(
        "torture: detail: epoch_violations={epoch} slow_removals={slow} hangs={hangs} stuck={stuck} \
         namespace_violations={namespace} namespace_checks={} slowest_removal_us={} \
         slowest_device_removal_us={} slowest_unload_us={} opens={} releases={} \
         server_kills={} slowest_restart_ms={} connaborted={connaborted}",
        chaos.namespace_checks.load(Ordering::Relaxed),
        chaos.slowest_us.load(Ordering::Relaxed),
        chaos.slowest_one_us.load(Ordering::Relaxed),
        chaos.slowest_unload_us.load(Ordering::Relaxed),
        now.get("opens").copied().unwrap_or(0),
        now.get("releases").copied().unwrap_or(0),
        kills.count,
        kills.slowest.as_millis(),
    );
    println!(
        "torture: ops={ops} removals={removals} violations={violations} leaked_files={leaked} errors={errors}"
    );

    // Leave a server that was already running as it is by default.
    let _ = write(&dir.join("debug/devlife/modules"), "modprobe xyz");
    for n in ["xyz0", "xyz1"] {
        let _ = write(&dir.join("sys/bus/sim/new_device"), &format!("xyz {n}"));
    }
    if let Some(mut s) = server.take() {
        if let Some(p) = rustix::process::Pid::from_raw(s.id() as i32) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
        }
        let _ = s.wait();
    }
    Ok(violations == 0 && leaked == 0 && errors == 0)
}
