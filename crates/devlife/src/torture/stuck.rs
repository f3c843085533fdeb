//! Watching for clients stuck in uninterruptible sleep: the failure this
//! project exists to rule out (a process in state `D` on a FUSE request
//! that not even SIGKILL frees).
//!
//! A [`Watch`] samples the state of every thread of the processes it is
//! given, from `/proc/<pid>/task/<tid>/stat`, every 50 ms. A thread seen in
//! `D` at every sample for longer than the bound is reported once, with the
//! kernel function it waits in (`wchan`). Short `D` states are normal (a
//! page fault, a disk read); a FUSE request waited for in `D` ends only
//! when the server answers.

use devlife_gate::sync::lock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a thread may stay in `D` before it counts as stuck.
pub const STUCK_BOUND: Duration = Duration::from_secs(5);

/// A sampler of the processes added to it.
pub struct Watch {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    pids: Mutex<Vec<u32>>,
    stuck: Mutex<Vec<String>>,
    stop: AtomicBool,
}

impl Watch {
    /// Starts watching (no process yet).
    pub fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let thread = std::thread::Builder::new().name("stuck-watch".into()).spawn(move || sample(&s)).ok();
        Watch { shared, thread }
    }

    /// Watches every thread of process `pid` from now on.
    pub fn add(&self, pid: u32) {
        lock(&self.shared.pids).push(pid);
    }

    /// The threads seen stuck so far: `pid/tid (comm) in wchan for N s`.
    pub fn stuck(&self) -> Vec<String> {
        lock(&self.shared.stuck).clone()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The state letter of a thread (`R`, `S`, `D`, ...), from its `stat`
/// line (`pid (comm) S ...`, where `comm` may hold spaces and parentheses).
pub fn thread_state(pid: u32, tid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn sample(s: &Shared) {
    // Since when each (pid, tid) has been seen in D without a break.
    let mut since: HashMap<(u32, u32), Instant> = HashMap::new();
    let mut reported: std::collections::HashSet<(u32, u32)> = Default::default();
    while !s.stop.load(Ordering::Relaxed) {
        let pids = lock(&s.pids).clone();
        let now = Instant::now();
        let mut seen = Vec::new();
        for pid in pids {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
            for t in tasks.flatten() {
                let Some(tid) = t.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
                if thread_state(pid, tid) != Some('D') {
                    continue;
                }
                seen.push((pid, tid));
                let t0 = *since.entry((pid, tid)).or_insert(now);
                if now.duration_since(t0) > STUCK_BOUND && reported.insert((pid, tid)) {
                    let read = |f: &str| {
                        std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/{f}"))
                            .unwrap_or_default()
                            .trim()
                            .to_owned()
                    };
                    lock(&s.stuck).push(format!(
                        "{pid}/{tid} ({}) in {} for {:.1} s",
                        read("comm"),
                        read("wchan"),
                        now.duration_since(t0).as_secs_f64()
                    ));
                }
            }
        }
        since.retain(|k, _| seen.contains(k));
        std::thread::sleep(Duration::from_millis(50)); // sampling period, not an outcome
    }
}

/// Kills `child` with SIGKILL and waits for it, up to `bound`: `false` if it
/// survived that long (stuck in the kernel).
pub fn kill_and_reap(child: &mut std::process::Child, bound: Duration) -> bool {
    let _ = child.kill();
    let t = Instant::now();
    while t.elapsed() < bound {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10)); // polling a child's exit
    }
    false
}
