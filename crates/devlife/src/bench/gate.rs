//! `devlife bench gate`: what it costs to enter and leave, and to kill and
//! drain.
//!
//! Each contender runs "enter, then leave" in a tight loop on 1 and on 2
//! threads for a fixed time; a thread checks a stop flag every 4096
//! operations. `ns_per_op` is the wall time of one thread's operation
//! (elapsed / operations per thread); `ops_per_s` is the total over all
//! threads. The guard is passed through `black_box` so the loop cannot be
//! optimised away, the same for every contender.

use super::{Opts, Row, V, machine, percentile};
use devlife_gate::Gate;
use devlife_gate::sync::lock;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const CHUNK: u64 = 4096;

/// A way of counting in-flight operations.
trait Contender: Sync {
    const NAME: &'static str;
    /// Runs `n` enter/leave pairs; returns false if an enter failed.
    fn run(&self, n: u64) -> bool;
}

struct GateC(Gate);
impl Contender for GateC {
    const NAME: &'static str = "gate";
    fn run(&self, n: u64) -> bool {
        for _ in 0..n {
            if black_box(self.0.try_enter()).is_none() {
                return false;
            }
        }
        true
    }
}

struct GateSend(Gate);
impl Contender for GateSend {
    const NAME: &'static str = "gate-send-guard";
    fn run(&self, n: u64) -> bool {
        for _ in 0..n {
            if black_box(self.0.try_enter_send()).is_none() {
                return false;
            }
        }
        true
    }
}

struct Bare;
impl Contender for Bare {
    const NAME: &'static str = "bare-loop";
    fn run(&self, n: u64) -> bool {
        for i in 0..n {
            black_box(i);
        }
        true
    }
}

struct StdRw(std::sync::RwLock<()>);
impl Contender for StdRw {
    const NAME: &'static str = "std-rwlock-read";
    fn run(&self, n: u64) -> bool {
        for _ in 0..n {
            drop(black_box(self.0.read()));
        }
        true
    }
}

struct PlRw(parking_lot::RwLock<()>);
impl Contender for PlRw {
    const NAME: &'static str = "parking_lot-rwlock-read";
    fn run(&self, n: u64) -> bool {
        for _ in 0..n {
            drop(black_box(self.0.read()));
        }
        true
    }
}

/// The debugfs pattern: `refcount_inc_not_zero` then `refcount_dec`.
struct Refcount(AtomicUsize);
impl Contender for Refcount {
    const NAME: &'static str = "atomic-refcount";
    fn run(&self, n: u64) -> bool {
        for _ in 0..n {
            let mut c = self.0.load(Ordering::Relaxed);
            loop {
                if c == 0 {
                    return false;
                }
                match self.0.compare_exchange_weak(c, c + 1, Ordering::Acquire, Ordering::Relaxed) {
                    Ok(_) => break,
                    Err(x) => c = x,
                }
            }
            black_box(&self.0);
            self.0.fetch_sub(1, Ordering::Release);
        }
        true
    }
}

struct ArcC(Arc<()>);
impl Contender for ArcC {
    const NAME: &'static str = "arc-clone-drop";
    fn run(&self, n: u64) -> bool {
        for _ in 0..n {
            drop(black_box(self.0.clone()));
        }
        true
    }
}

struct Epoch;
impl Contender for Epoch {
    const NAME: &'static str = "crossbeam-epoch-pin";
    fn run(&self, n: u64) -> bool {
        for _ in 0..n {
            drop(black_box(crossbeam_epoch::pin()));
        }
        true
    }
}

/// Operations per thread and elapsed time of one timed run.
fn measure<C: Contender>(c: &C, threads: usize, dur: Duration) -> (u64, Duration) {
    let stop = AtomicBool::new(false);
    let start = Barrier::new(threads + 1);
    let total = AtomicUsize::new(0);
    let mut elapsed = Duration::ZERO;
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                c.run(CHUNK); // warm up: registration, caches
                start.wait();
                let mut ops = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if !c.run(CHUNK) {
                        break;
                    }
                    ops += CHUNK;
                }
                total.fetch_add(ops as usize, Ordering::Relaxed);
            });
        }
        start.wait();
        let t0 = Instant::now();
        std::thread::sleep(dur);
        stop.store(true, Ordering::Relaxed);
        elapsed = t0.elapsed();
    });
    (total.load(Ordering::Relaxed) as u64 / threads as u64, elapsed)
}

struct Throughput {
    contender: &'static str,
    threads: usize,
    ns_per_op: f64,
    ops_per_s: f64,
}

fn throughput<C: Contender>(c: &C, threads: usize, dur: Duration, reps: usize) -> Throughput {
    let mut samples: Vec<(f64, f64)> = (0..reps)
        .map(|_| {
            let (per_thread, el) = measure(c, threads, dur);
            let ns = el.as_nanos() as f64 / per_thread.max(1) as f64;
            (ns, (per_thread * threads as u64) as f64 / el.as_secs_f64())
        })
        .collect();
    samples.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (ns_per_op, ops_per_s) = samples[samples.len() / 2];
    Throughput { contender: C::NAME, threads, ns_per_op, ops_per_s }
}

struct Latency {
    case: &'static str,
    p50_us: f64,
    p99_us: f64,
    samples: usize,
}

/// One gate to kill, and how often the hammering threads entered it.
struct Sample {
    gate: Gate,
    entered: AtomicUsize,
}

/// `kill_and_drain` on fresh gates, with `hammer` threads entering and
/// leaving the very gate being killed.
fn kill_latency(hammer: usize, samples: usize) -> Latency {
    let first = Arc::new(Sample { gate: Gate::new(), entered: AtomicUsize::new(0) });
    first.gate.kill();
    let current = Arc::new(std::sync::Mutex::new(first));
    // Bumped whenever a new sample is published: workers move to it.
    let generation = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..hammer)
        .map(|_| {
            let (current, generation, stop) = (current.clone(), generation.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let my_gen = generation.load(Ordering::Acquire);
                    let s = lock(&current).clone();
                    while let Some(guard) = s.gate.try_enter() {
                        s.entered.fetch_add(1, Ordering::Relaxed);
                        drop(black_box(guard));
                        if generation.load(Ordering::Relaxed) != my_gen {
                            break;
                        }
                    }
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let mut us = Vec::with_capacity(samples);
    for _ in 0..samples {
        let s = Arc::new(Sample { gate: Gate::new(), entered: AtomicUsize::new(0) });
        *lock(&current) = s.clone();
        generation.fetch_add(1, Ordering::Release);
        if hammer > 0 {
            // Wait (bounded) until the hammering threads are using this gate.
            let t = Instant::now();
            while s.entered.load(Ordering::Relaxed) < 1000 && t.elapsed() < Duration::from_millis(50) {
                std::hint::spin_loop();
            }
        }
        let t0 = Instant::now();
        let r = s.gate.kill_and_drain();
        us.push(t0.elapsed().as_nanos() as f64 / 1000.0);
        debug_assert!(r.is_ok());
    }
    stop.store(true, Ordering::Relaxed);
    generation.fetch_add(1, Ordering::Release);
    for w in workers {
        let _ = w.join();
    }
    us.sort_by(f64::total_cmp);
    Latency {
        case: if hammer == 0 { "idle" } else { "hammered" },
        p50_us: percentile(&us, 50.0),
        p99_us: percentile(&us, 99.0),
        samples,
    }
}

/// Runs the benchmark and prints its results.
pub fn run(o: &Opts) {
    let (dur, reps, samples) =
        if o.quick { (Duration::from_millis(250), 1, 300) } else { (Duration::from_secs(1), 3, 2000) };
    let asym = devlife_gate::barrier::is_asymmetric() || {
        drop(Gate::new());
        devlife_gate::barrier::is_asymmetric()
    };
    let mut rows = Vec::new();
    for threads in [1, 2] {
        rows.push(throughput(&GateC(Gate::new()), threads, dur, reps));
        rows.push(throughput(&Bare, threads, dur, reps));
        rows.push(throughput(&StdRw(Default::default()), threads, dur, reps));
        rows.push(throughput(&PlRw(Default::default()), threads, dur, reps));
        rows.push(throughput(&Refcount(AtomicUsize::new(1)), threads, dur, reps));
        rows.push(throughput(&ArcC(Arc::new(())), threads, dur, reps));
        rows.push(throughput(&Epoch, threads, dur, reps));
        rows.push(throughput(&GateSend(Gate::new()), threads, dur, reps));
    }
    let lats = [kill_latency(0, samples), kill_latency(2, samples / 2)];

    if o.json {
        for t in &rows {
            let r = Row(vec![
                ("bench", V::S("gate".into())),
                ("contender", V::S(t.contender.into())),
                ("op", V::S("enter+leave".into())),
                ("threads", V::I(t.threads as u64)),
                ("ns_per_op", V::F(t.ns_per_op)),
                ("ops_per_s", V::F(t.ops_per_s)),
            ]);
            println!("{}", r.json());
        }
        for l in &lats {
            let r = Row(vec![
                ("bench", V::S("gate".into())),
                ("contender", V::S("kill_and_drain".into())),
                ("op", V::S(l.case.into())),
                ("threads", V::I(if l.case == "idle" { 0 } else { 2 })),
                ("us", V::F(l.p50_us)),
                ("p50_us", V::F(l.p50_us)),
                ("p99_us", V::F(l.p99_us)),
                ("samples", V::I(l.samples as u64)),
            ]);
            println!("{}", r.json());
        }
        return;
    }

    println!("bench gate on {} (membarrier: {})", machine(), if asym { "yes" } else { "no, fence fallback" });
    println!("{:<26} {:>7} {:>10} {:>14}", "contender", "threads", "ns/op", "Mops/s total");
    for t in &rows {
        println!("{:<26} {:>7} {:>10.2} {:>14.1}", t.contender, t.threads, t.ns_per_op, t.ops_per_s / 1e6);
    }
    println!();
    for l in &lats {
        println!(
            "kill_and_drain {:<9} p50 {:>8.2} us   p99 {:>8.2} us   ({} samples)",
            l.case, l.p50_us, l.p99_us, l.samples
        );
    }
    let get = |c: &str, t: usize| {
        rows.iter().find(|r| r.contender == c && r.threads == t).map_or(f64::NAN, |r| r.ops_per_s)
    };
    let gate1 =
        rows.iter().find(|r| r.contender == "gate" && r.threads == 1).map_or(f64::NAN, |r| r.ns_per_op);
    let gate2 =
        rows.iter().find(|r| r.contender == "gate" && r.threads == 2).map_or(f64::NAN, |r| r.ns_per_op);
    println!();
    println!("targets: try_enter+drop <= 2 ns: 1 thread {gate1:.2} ns, 2 threads {gate2:.2} ns");
    println!("         scaling 1 -> 2 threads >= 1.9x: {:.2}x", get("gate", 2) / get("gate", 1));
    println!(
        "         >= 10x at 2 threads: vs std RwLock {:.1}x, vs atomic refcount {:.1}x",
        get("gate", 2) / get("std-rwlock-read", 2),
        get("gate", 2) / get("atomic-refcount", 2)
    );
    println!("         kill_and_drain idle <= 20 us: p50 {:.2} us", lats[0].p50_us);
}
