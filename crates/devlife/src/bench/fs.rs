//! `devlife bench fs`: device-node operations through real system calls,
//! devlife against its peers (see [`servers`](super::servers)).
//!
//! For each operation (4-byte `read`, 4-byte `write`, `XYZ_IOC_COUNT`,
//! `open`+`close`), each client configuration (1, 2 and 4 threads in one
//! process; 2 processes of one thread) and each contender, client
//! processes ([`client`](super::client)) run the operation for a fixed
//! interval, timing every call. Repetitions are interleaved (every
//! contender once, then again) so drift in the machine hits all alike;
//! ops/s is the median over repetitions, latencies come from the merged
//! histograms.

use super::client::Op;
use super::hist::Hist;
use super::servers::{Contender, Server, repo_root};
use super::{Row, V, machine};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use std::process::{Command, Stdio};

/// Options of `devlife bench fs`.
#[derive(clap::Args, Debug, Clone)]
pub struct FsOpts {
    /// --quick, --json.
    #[command(flatten)]
    pub common: super::Opts,
    /// Repetitions of every measurement (default 5, or 1 with --quick).
    #[arg(long)]
    pub reps: Option<usize>,
    /// Measured interval of one measurement, in milliseconds (default
    /// 1000, or 150 with --quick).
    #[arg(long)]
    pub ms: Option<u64>,
    /// Write the latency plot (fs-latency.svg) into this directory.
    #[arg(long)]
    pub plot_dir: Option<PathBuf>,
    /// Only these contenders (comma-separated names; default all).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

/// Client configurations: (threads per process, processes).
pub const CLIENTS: [(usize, usize); 4] = [(1, 1), (2, 1), (4, 1), (1, 2)];

/// One measurement's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    /// Index into [`Contender::ALL`].
    pub who: usize,
    /// Index into [`Op::ALL`].
    pub op: usize,
    /// Index into [`CLIENTS`].
    pub clients: usize,
}

/// What the repetitions of one measurement gave.
#[derive(Default)]
pub struct Measured {
    /// ops/s of each repetition.
    pub rates: Vec<f64>,
    /// Every repetition's latencies.
    pub hist: Hist,
    /// What the server did meanwhile, over every repetition.
    pub server: ServerCounts,
}

/// What a server did during a measurement (warm-up included).
///
/// Context switches: servers on devlife's transport report their own
/// (`getrusage`, every thread, exited ones too: [`rusage_text`]); for the
/// peers they are summed over `/proc/<pid>/task/*/status` of the threads
/// alive at each end, so a thread that exited in between takes its count
/// with it (`threads_started` shows such churn; the fixed peers keep
/// their threads). Requests per `io_uring_enter` come from the transport's
/// counters.
///
/// [`rusage_text`]: super::rusage_text
#[derive(Debug, Default, Clone, Copy)]
pub struct ServerCounts {
    /// Client operations over the same span (warm-up included).
    pub ops: u64,
    /// Voluntary context switches (the thread slept).
    pub voluntary: u64,
    /// Involuntary ones (preempted).
    pub involuntary: u64,
    /// Threads that appeared.
    pub threads_started: u64,
    /// Requests taken from io_uring entries, and `io_uring_enter` calls
    /// (devlife's transport only).
    pub ring: Option<(u64, u64)>,
}

impl ServerCounts {
    fn add(&mut self, o: &ServerCounts) {
        self.ops += o.ops;
        self.voluntary += o.voluntary;
        self.involuntary += o.involuntary;
        self.threads_started += o.threads_started;
        self.ring = match (self.ring, o.ring) {
            (Some((a, b)), Some((c, d))) => Some((a + c, b + d)),
            (x, None) | (None, x) => x,
        };
    }

    /// Server context switches per client operation.
    pub fn switches_per_op(&self) -> f64 {
        (self.voluntary + self.involuntary) as f64 / self.ops.max(1) as f64
    }

    /// Ring requests served per `io_uring_enter`.
    pub fn requests_per_enter(&self) -> Option<f64> {
        self.ring.filter(|r| r.1 > 0).map(|(r, e)| r as f64 / e as f64)
    }
}

/// A server's threads and their context switches now.
struct ProcSnapshot {
    tids: std::collections::BTreeSet<u32>,
    voluntary: u64,
    involuntary: u64,
    ring: Option<(u64, u64)>,
}

fn proc_snapshot(s: &Server) -> Option<ProcSnapshot> {
    let pid = s.pid()?;
    let mut snap = ProcSnapshot { tids: Default::default(), voluntary: 0, involuntary: 0, ring: None };
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|t| t.parse().ok()) else { continue };
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else { continue };
        let field = |k: &str| {
            status.lines().find_map(|l| l.strip_prefix(k)).and_then(|v| v.trim().parse::<u64>().ok())
        };
        snap.tids.insert(tid);
        snap.voluntary += field("voluntary_ctxt_switches:").unwrap_or(0);
        snap.involuntary += field("nonvoluntary_ctxt_switches:").unwrap_or(0);
    }
    let mut text = s.stats_file().and_then(|f| std::fs::read_to_string(f).ok()).unwrap_or_default();
    if let Some(m) = s.mount().filter(|_| s.who.is_devlife()) {
        text += &std::fs::read_to_string(m.join("debug/devlife/rusage")).unwrap_or_default();
    }
    let get =
        |k: &str| text.lines().find_map(|l| l.strip_prefix(k)).and_then(|v| v.trim().parse::<u64>().ok());
    snap.ring = get("ring_requests ").zip(get("ring_enters "));
    // The server's own count, exited threads included, where it gives one.
    if let (Some(v), Some(i)) = (get("voluntary_switches "), get("involuntary_switches ")) {
        (snap.voluntary, snap.involuntary) = (v, i);
    }
    Some(snap)
}

/// What happened between two snapshots of a server.
fn since(a: &ProcSnapshot, b: &ProcSnapshot, ops: u64) -> ServerCounts {
    // Sums over the threads alive at each end (see `ServerCounts`).
    ServerCounts {
        ops,
        voluntary: b.voluntary.saturating_sub(a.voluntary),
        involuntary: b.involuntary.saturating_sub(a.involuntary),
        threads_started: b.tids.difference(&a.tids).count() as u64,
        ring: a.ring.zip(b.ring).map(|((r0, e0), (r1, e1))| (r1.saturating_sub(r0), e1.saturating_sub(e0))),
    }
}

impl Measured {
    /// The median rate.
    pub fn ops_per_s(&self) -> f64 {
        let mut r = self.rates.clone();
        r.sort_by(f64::total_cmp);
        super::percentile(&r, 50.0)
    }

    fn us(&self, p: f64) -> f64 {
        self.hist.percentile(p) as f64 / 1000.0
    }
}

/// Runs one measurement: `procs` client processes of `threads` threads.
fn measure(
    exe: &Path,
    server: &Server,
    op: Op,
    (threads, procs): (usize, usize),
    warmup_ms: u64,
    ms: u64,
) -> Result<(f64, Hist, ServerCounts), String> {
    let file = &server.file;
    let mut children = Vec::new();
    for _ in 0..procs {
        let child = Command::new(exe)
            .args(["bench", "fs-client", "--op", op.name(), "--threads"])
            .arg(threads.to_string())
            .arg("--warmup-ms")
            .arg(warmup_ms.to_string())
            .arg("--ms")
            .arg(ms.to_string())
            .arg("--path")
            .arg(file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("client: {e}"))?;
        children.push(child);
    }
    let mut outs = Vec::new();
    for c in &mut children {
        let mut r = BufReader::new(c.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        if line.trim() != "ready" {
            return Err(format!("client: {}", line.trim()));
        }
        outs.push(r);
    }
    // Every client is ready: start them together.
    let before = proc_snapshot(server);
    for c in &mut children {
        let _ = c.stdin.as_mut().map(|i| i.write_all(b"go\n"));
    }
    let (mut ops, mut all, mut hist) = (0u64, 0u64, Hist::default());
    for (c, r) in children.iter_mut().zip(&mut outs) {
        let mut line = String::new();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        let _ = c.wait();
        let field = |k: &str| line.split_whitespace().find_map(|f| f.strip_prefix(k));
        let n: u64 =
            field("ops=").and_then(|v| v.parse().ok()).ok_or_else(|| format!("client: {}", line.trim()))?;
        let h = field("hist=").and_then(Hist::decode).ok_or_else(|| format!("client: {}", line.trim()))?;
        ops += n;
        all += field("all=").and_then(|v| v.parse::<u64>().ok()).unwrap_or(n);
        hist.merge(&h);
    }
    let after = proc_snapshot(server);
    let counts = before.zip(after).map(|(a, b)| since(&a, &b, all)).unwrap_or_default();
    Ok((ops as f64 / (ms as f64 / 1000.0), hist, counts))
}

/// Whether `who` serves `op`.
fn serves(who: Contender, op: Op) -> bool {
    !(who == Contender::DevZero && op == Op::Ioctl)
}

/// Runs the benchmark; prints a table or JSON rows.
pub fn run(o: &FsOpts) -> i32 {
    let quick = o.common.quick;
    let reps = o.reps.unwrap_or(if quick { 1 } else { 5 }).max(1);
    let ms = o.ms.unwrap_or(if quick { 150 } else { 1000 }).max(10);
    let warmup_ms = if quick { 30 } else { 200 };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("bench fs: {e}");
            return 1;
        }
    };
    let root = repo_root();
    let base = std::env::temp_dir().join(format!("devlife-bench-{}", std::process::id()));
    // The CUSE contenders run by default only where the kernel has CUSE.
    let cuse = std::path::Path::new("/dev/cuse").exists();
    let wanted = |c: Contender| {
        if o.only.is_empty() { !c.is_cuse() || cuse } else { o.only.iter().any(|n| n == c.name()) }
    };

    // Start every contender first (and build the peers): a peer that cannot
    // be built or started is reported and left out, not a failure.
    let mut servers: Vec<(usize, Server)> = Vec::new();
    for (i, who) in Contender::ALL.into_iter().enumerate().filter(|(_, c)| wanted(*c)) {
        match Server::start(who, &base, &exe, &root) {
            Ok(s) => servers.push((i, s)),
            Err(e) => eprintln!("bench fs: {} left out: {e}", who.name()),
        }
    }
    let mut results: BTreeMap<Key, Measured> = BTreeMap::new();
    let mut failed = false;
    for _ in 0..reps {
        for (oi, op) in Op::ALL.into_iter().enumerate() {
            for (ci, clients) in CLIENTS.into_iter().enumerate() {
                for (wi, s) in &servers {
                    if !serves(s.who, op) {
                        continue;
                    }
                    match measure(&exe, s, op, clients, warmup_ms, ms) {
                        Ok((rate, h, counts)) => {
                            let r = results.entry(Key { who: *wi, op: oi, clients: ci }).or_default();
                            r.rates.push(rate);
                            r.hist.merge(&h);
                            r.server.add(&counts);
                        }
                        Err(e) => {
                            eprintln!("bench fs: {} {}: {e}", s.who.name(), op.name());
                            failed = true;
                        }
                    }
                }
            }
        }
    }
    drop(servers);
    let _ = std::fs::remove_dir(&base);

    if o.common.json {
        for (k, r) in &results {
            let (threads, procs) = CLIENTS[k.clients];
            println!("{}", row(k, r, threads * procs, procs, reps).json());
        }
    } else {
        print_tables(&results, reps, ms);
    }
    if let Some(dir) = &o.plot_dir {
        match super::plot::fs_latency(dir, &results) {
            Ok(p) => eprintln!("bench fs: wrote {}", p.display()),
            Err(e) => {
                eprintln!("bench fs: plot: {e}");
                failed = true;
            }
        }
    }
    i32::from(failed)
}

fn row(k: &Key, r: &Measured, threads: usize, procs: usize, reps: usize) -> Row {
    Row(vec![
        ("bench", V::S("fs".into())),
        ("contender", V::S(Contender::ALL[k.who].name().into())),
        ("op", V::S(Op::ALL[k.op].name().into())),
        ("threads", V::I(threads as u64)),
        ("procs", V::I(procs as u64)),
        ("ops_per_s", V::F(r.ops_per_s())),
        ("p50_us", V::F(r.us(50.0))),
        ("p99_us", V::F(r.us(99.0))),
        ("reps", V::I(reps as u64)),
        ("server_switches_per_op", V::F(r.server.switches_per_op())),
        ("server_voluntary", V::I(r.server.voluntary)),
        ("server_involuntary", V::I(r.server.involuntary)),
        ("server_threads_started", V::I(r.server.threads_started)),
        ("ops_counted", V::I(r.server.ops)),
        ("requests_per_enter", V::F(r.server.requests_per_enter().unwrap_or(f64::NAN))),
    ])
}

fn clients_label((threads, procs): (usize, usize)) -> String {
    if procs == 1 { format!("{threads} thr") } else { format!("{procs} procs") }
}

fn print_tables(results: &BTreeMap<Key, Measured>, reps: usize, ms: u64) {
    println!("devlife bench fs: {}; {reps} rep(s) of {ms} ms per cell", machine());
    println!("cells: ops/s (p50 / p99 latency, µs)");
    for (oi, op) in Op::ALL.into_iter().enumerate() {
        println!("\n{}", op.name());
        print!("{:<16}", "contender");
        for c in CLIENTS {
            print!(" | {:>27}", clients_label(c));
        }
        println!();
        for (wi, who) in Contender::ALL.into_iter().enumerate() {
            let cells: Vec<_> =
                (0..CLIENTS.len()).map(|ci| results.get(&Key { who: wi, op: oi, clients: ci })).collect();
            if cells.iter().all(Option::is_none) {
                continue;
            }
            print!("{:<16}", who.name());
            for c in &cells {
                match c {
                    Some(r) => {
                        print!(" | {:>9.0} ({:>6.1} / {:>6.1})", r.ops_per_s(), r.us(50.0), r.us(99.0))
                    }
                    None => print!(" | {:>27}", "-"),
                }
            }
            println!();
            if who == Contender::DevZero {
                continue;
            }
            // The server's counters: context switches per operation, and
            // requests per io_uring_enter where the transport counts them.
            print!("{:<16}", "  switches/op");
            for c in &cells {
                let text = c.map(|r| {
                    let rpe = r.server.requests_per_enter().map(|x| format!(", {x:.2} req/enter"));
                    format!("{:.2}{}", r.server.switches_per_op(), rpe.unwrap_or_default())
                });
                print!(" | {:>27}", text.unwrap_or_else(|| "-".into()));
            }
            println!();
        }
        // The targets: devlife against the best peer, and the gate's cost.
        for (ci, c) in CLIENTS.into_iter().enumerate() {
            let get = |who: Contender| {
                let wi = Contender::ALL.iter().position(|w| *w == who)?;
                results.get(&Key { who: wi, op: oi, clients: ci })
            };
            let best = Contender::ALL
                .into_iter()
                .filter(|w| w.is_peer())
                .filter_map(|w| get(w).map(|r| (w, r)))
                .max_by(|a, b| a.1.ops_per_s().total_cmp(&b.1.ops_per_s()));
            if let (Some(d), Some(l)) = (get(Contender::DevlifeCuse), get(Contender::LibfuseCuse)) {
                println!(
                    "  {}: devlife-cuse/libfuse-cuse = {:.2}x ops/s, p99 {:.1} vs {:.1} µs",
                    clients_label(c),
                    d.ops_per_s() / l.ops_per_s(),
                    d.us(99.0),
                    l.us(99.0)
                );
            }
            let (Some(d), Some((bw, b))) = (get(Contender::Devlife), best) else { continue };
            let gate = get(Contender::DevlifeUngated)
                .map(|u| format!(", gate cost {:+.1}%", (u.ops_per_s() / d.ops_per_s() - 1.0) * 100.0))
                .unwrap_or_default();
            println!(
                "  {}: devlife/{} = {:.2}x ops/s, p99 {:.1} vs {:.1} µs{gate}",
                clients_label(c),
                bw.name(),
                d.ops_per_s() / b.ops_per_s(),
                d.us(99.0),
                b.us(99.0)
            );
        }
    }
}
