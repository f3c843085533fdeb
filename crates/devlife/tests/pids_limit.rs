//! A real task limit: `devlife serve` in a pids cgroup with `pids.max` =
//! 64 holds 5,000 readers blocked in `read` of an xyz node (async
//! handlers: deferred requests, no thread each); its control files, a
//! `stat` and the `unbind` answer meanwhile, every reader gets `ENODEV`,
//! and no thread is left in state D. Run once per transport
//! (`DEVLIFE_TEST_TRANSPORT`, as `scripts/test-all` does).

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const READERS: usize = 5000;
const PER_CLIENT: usize = 1000;
const PIDS_MAX: u64 = 64;

/// A pids cgroup of its own (v1 `pids` hierarchy, or v2 with the pids
/// controller), removed on drop.
struct Cgroup(PathBuf);

impl Cgroup {
    fn new() -> Option<Cgroup> {
        let name = format!("devlife-test-{}", std::process::id());
        let (dir, v2) = if Path::new("/sys/fs/cgroup/pids/cgroup.procs").exists() {
            (Path::new("/sys/fs/cgroup/pids").join(&name), false)
        } else if std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .is_ok_and(|c| c.contains("pids"))
        {
            (Path::new("/sys/fs/cgroup").join(&name), true)
        } else {
            return None;
        };
        if v2 {
            let _ = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+pids");
        }
        std::fs::create_dir(&dir).ok()?;
        std::fs::write(dir.join("pids.max"), PIDS_MAX.to_string()).ok()?;
        Some(Cgroup(dir))
    }

    fn add(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string())
            .expect("moving the server into the cgroup");
    }

    fn current(&self) -> u64 {
        std::fs::read_to_string(self.0.join("pids.current")).unwrap().trim().parse().unwrap()
    }

    /// Forks refused at the limit (`pids.events`'s `max`).
    fn refused(&self) -> u64 {
        std::fs::read_to_string(self.0.join("pids.events"))
            .ok()
            .and_then(|e| e.lines().find_map(|l| l.strip_prefix("max ")?.trim().parse().ok()))
            .unwrap_or(0)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn guarded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(f()));
    rx.recv_timeout(Duration::from_secs(120)).unwrap_or_else(|_| panic!("{what} did not return"))
}

#[test]
fn a_server_at_its_task_limit_holds_5000_blocked_readers_and_answers() {
    if !rustix::process::getuid().is_root() {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true runs as root");
        eprintln!("skipped: making a cgroup needs root");
        return;
    }
    let Some(cg) = Cgroup::new() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "no pids cgroup controller here, and CI=true requires it"
        );
        eprintln!("skipped: no pids cgroup controller");
        return;
    };
    let Some(s) = Server::start(&[]) else { return };
    cg.add(s.child.id());
    let server = s.child.id();
    s.write("sys/bus/sim/new_device", "xyz pl0").unwrap();
    let node = s.p("dev/pl0");
    let mut clients: Vec<(Child, BufReader<std::process::ChildStdout>)> = (0..READERS / PER_CLIENT)
        .map(|_| {
            let mut c = Command::new(env!("CARGO_BIN_EXE_devlife"))
                .args(["bench", "blocked-client", "--threads", &PER_CLIENT.to_string(), "--path"])
                .arg(&node)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let out = BufReader::new(c.stdout.take().unwrap());
            (c, out)
        })
        .collect();
    for (_, out) in &mut clients {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "a client could not open and start its readers");
    }
    // Guarded: a server at its limit that cannot answer fails here.
    let stats = s.p("debug/devlife/stats");
    guarded("waiting for the readers to reach the driver", move || {
        until(|| {
            let st = std::fs::read_to_string(&stats).unwrap();
            let n = |k: &str| -> u64 {
                st.lines().find_map(|l| l.strip_prefix(k)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
            };
            n("inflight_ops ") + n("pending_ops ") >= READERS as u64
        })
    });
    // Every reader is in the driver, as a pending async operation.
    let st = s.stats();
    assert_eq!(st["pending_ops"], READERS as u64, "{st:?}");
    assert!(cg.current() <= PIDS_MAX, "the server's tasks: {}", cg.current());
    // The server answers at its limit: control files, a stat, its stats.
    let (stats, fuse, dir) =
        (s.p("debug/devlife/stats"), s.p("debug/devlife/fuse"), s.p("sys/bus/sim/drivers/xyz"));
    let fuse_text = guarded("debug/devlife/stats, debug/devlife/fuse and a stat", move || {
        std::fs::read_to_string(&stats).unwrap();
        std::fs::metadata(&dir).unwrap();
        std::fs::read_to_string(&fuse).unwrap()
    });
    eprintln!(
        "server at its limit: {} tasks, {} forks refused; {}",
        cg.current(),
        cg.refused(),
        fuse_text.replace('\n', " ")
    );
    // No client thread sleeps uninterruptibly: each waits in the kernel's
    // interruptible wait for its reply.
    for (c, _) in &clients {
        let d = states(c.id()).iter().filter(|&&s| s == 'D').count();
        assert_eq!(d, 0, "client {} has {d} threads in state D", c.id());
    }
    let unbind = s.p("sys/bus/sim/drivers/xyz/unbind");
    guarded("the unbind", move || std::fs::write(unbind, "pl0").unwrap());
    let mut enodev = 0;
    for (mut c, mut out) in clients {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let f: Vec<usize> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
        assert_eq!(f.get(1), Some(&0), "a read ended otherwise than ENODEV: {line:?}");
        enodev += f[0];
        let t = Instant::now();
        while c.try_wait().unwrap().is_none() {
            assert!(t.elapsed() < Duration::from_secs(60), "a client did not exit");
            std::thread::sleep(Duration::from_millis(10)); // another process's exit
        }
    }
    assert_eq!(enodev, READERS, "every blocked reader got ENODEV");
    assert!(!states(server).contains(&'D'), "a server thread is in state D");
    assert_eq!(s.busy(), 0);
    drop(s);
}
