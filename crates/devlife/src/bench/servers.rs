//! The contenders of `devlife bench fs`: devlife's served tree (with the
//! gate, and bypassed), the libfuse and fuser peers under `bench/peers/`
//! (built here on demand), and the kernel's `/dev/zero` as the floor.
//!
//! Each FUSE contender runs as its own process on its own mount and serves
//! one file with the same behaviour (see `bench/peers/*` and the `bench`
//! driver); [`Server`] starts one, names the file, and stops it on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One contender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contender {
    /// `devlife serve`, the `bench` device's node.
    Devlife,
    /// `devlife serve --ungated`: the same, with the gate bypassed.
    DevlifeUngated,
    /// The libfuse3 low-level peer on libfuse's multi-threaded loop.
    Libfuse,
    /// The fuser 0.18 peer.
    Fuser,
    /// devlife's transport answering at once ([`floor`](super::floor)).
    Floor,
    /// The kernel's `/dev/zero` (no ioctl): no FUSE at all.
    DevZero,
    /// `devlife serve --cuse`: the `bench` device as `/dev/bench0`
    /// (needs CUSE).
    DevlifeCuse,
    /// The libfuse3 `cuse_lowlevel` peer, `/dev/bench-libfuse` (needs CUSE).
    LibfuseCuse,
}

impl Contender {
    /// Every contender, in table order.
    pub const ALL: [Contender; 8] = [
        Contender::Devlife,
        Contender::DevlifeUngated,
        Contender::Libfuse,
        Contender::Fuser,
        Contender::Floor,
        Contender::DevZero,
        Contender::DevlifeCuse,
        Contender::LibfuseCuse,
    ];

    /// The name in tables and JSON rows.
    pub fn name(self) -> &'static str {
        match self {
            Contender::Devlife => "devlife",
            Contender::DevlifeUngated => "devlife-ungated",
            Contender::Libfuse => "libfuse",
            Contender::Fuser => "fuser",
            Contender::Floor => "floor",
            Contender::DevZero => "/dev/zero",
            Contender::DevlifeCuse => "devlife-cuse",
            Contender::LibfuseCuse => "libfuse-cuse",
        }
    }

    /// Whether it serves a CUSE device (and needs `/dev/cuse`).
    pub fn is_cuse(self) -> bool {
        matches!(self, Contender::DevlifeCuse | Contender::LibfuseCuse)
    }

    /// Whether it runs `devlife serve` (whose `debug/devlife/rusage`
    /// counts its context switches).
    pub fn is_devlife(self) -> bool {
        matches!(self, Contender::Devlife | Contender::DevlifeUngated | Contender::DevlifeCuse)
    }

    /// Whether this is one of the peers devlife is compared with.
    pub fn is_peer(self) -> bool {
        matches!(self, Contender::Libfuse | Contender::Fuser)
    }
}

/// The repository (where `bench/peers/` is): the source tree this binary
/// was built from, else the current directory.
pub fn repo_root() -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if built.join("bench/peers").is_dir() {
        built.canonicalize().unwrap_or(built)
    } else {
        PathBuf::from(".")
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Builds the libfuse peer (`cc`, `pkg-config fuse3`) unless up to date.
pub fn build_libfuse(root: &Path) -> Result<PathBuf, String> {
    build_c(root, "peer.c", "libfuse-peer")
}

/// Builds the libfuse CUSE peer, likewise.
pub fn build_libfuse_cuse(root: &Path) -> Result<PathBuf, String> {
    build_c(root, "cuse-peer.c", "libfuse-cuse-peer")
}

fn build_c(root: &Path, source: &str, name: &str) -> Result<PathBuf, String> {
    let src = root.join("bench/peers/libfuse").join(source);
    let dir = root.join("target/bench-peers");
    let out = dir.join(name);
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if matches!((mtime(&out), mtime(&src)), (Some(o), Some(s)) if o >= s) {
        return Ok(out);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let flags = Command::new("pkg-config")
        .args(["--cflags", "--libs", "fuse3"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .ok_or("pkg-config fuse3 failed (Debian: apt-get install libfuse3-dev pkg-config)")?;
    let flags = String::from_utf8_lossy(&flags.stdout).into_owned();
    run(Command::new("cc").args(["-O2", "-Wall", "-o"]).arg(&out).arg(&src).args(flags.split_whitespace()))?;
    Ok(out)
}

/// Builds the fuser peer with cargo (its own workspace and lock file).
pub fn build_fuser(root: &Path) -> Result<PathBuf, String> {
    let dir = root.join("target/bench-peers/fuser");
    run(Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "--locked", "-q", "--manifest-path"])
        .arg(root.join("bench/peers/fuser/Cargo.toml"))
        .arg("--target-dir")
        .arg(&dir))?;
    Ok(dir.join("release/fuser-peer"))
}

/// A running contender.
pub struct Server {
    /// Which.
    pub who: Contender,
    /// The file the clients use.
    pub file: PathBuf,
    mount: Option<PathBuf>,
    child: Option<Child>,
}

/// Starts `cmd` and waits for its `ready` line.
fn spawn_ready(cmd: &mut Command) -> Result<Child, String> {
    let mut child = cmd.stdout(Stdio::piped()).spawn().map_err(|e| format!("{cmd:?}: {e}"))?;
    let mut line = String::new();
    let out = child.stdout.take().ok_or("no stdout")?;
    BufReader::new(out).read_line(&mut line).map_err(|e| e.to_string())?;
    if !line.starts_with("ready") {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("{cmd:?} did not become ready: {line:?}"));
    }
    Ok(child)
}

impl Server {
    /// Where it is mounted (`None` for `/dev/zero`).
    pub fn mount(&self) -> Option<&Path> {
        self.mount.as_deref()
    }

    /// The server's process (`None` for `/dev/zero`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The file with the transport's counters, for the contenders that
    /// run devlife's transport (`debug/devlife/fuse`, the floor's `stats`).
    pub fn stats_file(&self) -> Option<PathBuf> {
        let m = self.mount.as_ref()?;
        match self.who {
            Contender::Devlife | Contender::DevlifeUngated => Some(m.join("debug/devlife/fuse")),
            Contender::Floor => Some(m.join(super::floor::STATS_NAME)),
            _ => None,
        }
    }

    /// Starts `who` on a fresh mount under `base` (built peers in `peers`).
    pub fn start(who: Contender, base: &Path, exe: &Path, root: &Path) -> Result<Server, String> {
        Self::start_with(who, base, exe, root, &[])
    }

    /// [`start`](Self::start), with `extra` arguments for a devlife server.
    pub fn start_with(
        who: Contender,
        base: &Path,
        exe: &Path,
        root: &Path,
        extra: &[&str],
    ) -> Result<Server, String> {
        if who == Contender::DevZero {
            return Ok(Server { who, file: "/dev/zero".into(), mount: None, child: None });
        }
        if who.is_cuse() && !Path::new("/dev/cuse").exists() {
            return Err("no /dev/cuse (a kernel with CUSE: modprobe cuse)".into());
        }
        if who == Contender::LibfuseCuse {
            let peer = build_libfuse_cuse(root)?;
            let name = "bench-libfuse";
            let child = spawn_ready(Command::new(peer).arg(name))?;
            let file = PathBuf::from("/dev").join(name);
            let s = Server { who, file, mount: None, child: Some(child) };
            node_present(&s.file)?;
            return Ok(s);
        }
        let mount = base.join(who.name());
        std::fs::create_dir_all(&mount).map_err(|e| format!("{}: {e}", mount.display()))?;
        let mut s = Server { who, file: PathBuf::new(), mount: Some(mount.clone()), child: None };
        match who {
            Contender::Devlife | Contender::DevlifeUngated | Contender::DevlifeCuse => {
                let mut cmd = Command::new(exe);
                cmd.arg("serve").arg("--log").arg("warn").arg("--mount").arg(&mount).args(extra);
                if who == Contender::DevlifeUngated {
                    cmd.arg("--ungated");
                }
                if who == Contender::DevlifeCuse {
                    cmd.arg("--cuse");
                }
                s.child = Some(spawn_ready(&mut cmd)?);
                std::fs::write(mount.join("sys/bus/sim/new_device"), "bench bench0")
                    .map_err(|e| format!("new_device: {e}"))?;
                s.file = if who == Contender::DevlifeCuse {
                    "/dev/bench0".into()
                } else {
                    mount.join("dev/bench0")
                };
                node_present(&s.file)?;
            }
            Contender::Libfuse => {
                // Another build of the same peer (another libfuse) can stand
                // in: DEVLIFE_BENCH_LIBFUSE_PEER names the binary,
                // DEVLIFE_BENCH_LIBFUSE_ARGS adds options (`-o io_uring`).
                let peer = match std::env::var_os("DEVLIFE_BENCH_LIBFUSE_PEER") {
                    Some(p) => PathBuf::from(p),
                    None => build_libfuse(root)?,
                };
                let extra = std::env::var("DEVLIFE_BENCH_LIBFUSE_ARGS").unwrap_or_default();
                let mut cmd = Command::new(peer);
                cmd.arg(&mount).args(["-o", "clone_fd"]).args(extra.split_whitespace());
                s.child = Some(spawn_ready(&mut cmd)?);
                s.file = mount.join("bench");
            }
            Contender::Fuser => {
                let peer = build_fuser(root)?;
                s.child = Some(spawn_ready(Command::new(peer).arg(&mount).arg("2"))?);
                s.file = mount.join("bench");
            }
            Contender::Floor => {
                let mut cmd = Command::new(exe);
                cmd.args(["bench", "floor-server"]).arg(&mount);
                s.child = Some(spawn_ready(&mut cmd)?);
                s.file = mount.join(super::floor::NAME);
            }
            Contender::DevZero | Contender::LibfuseCuse => unreachable!("handled above"),
        }
        Ok(s)
    }
}

/// Checks that a CUSE device node is there: devtmpfs made it during the
/// device's registration, before the server said it was ready.
fn node_present(p: &Path) -> Result<(), String> {
    if p.exists() { Ok(()) } else { Err(format!("{} is missing", p.display())) }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Some(p) = rustix::process::Pid::from_raw(c.id() as i32) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if let Some(m) = self.mount.take() {
            // A server that died without unmounting leaves its mount.
            let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&m).stderr(Stdio::null()).status();
            let _ = std::fs::remove_dir(&m);
        }
    }
}
