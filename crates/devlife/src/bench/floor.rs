//! The floor of `devlife bench fs`: devlife's own FUSE transport serving
//! one file whose every request is answered at once, with no tree, no
//! driver core and no gate (`devlife bench floor-server DIR`).
//!
//! What devlife's full path (served tree, core, gate, the `bench` driver)
//! costs is its distance from this floor; what the transport itself costs
//! is this floor's distance from `/dev/zero`. The file behaves as `bench`
//! nodes do for the benchmark's operations: open with devlife's stream
//! flags, a 4-byte read, writes taken whole, `XYZ_IOC_COUNT`; a second
//! file, `stats`, gives the transport's counters.

use devlife_drivers::xyz::XYZ_IOC_COUNT;
use devlife_fuse::abi::fopen;
use devlife_fuse::{
    Config, Entry, Errno, FileAttr, Filesystem, IoctlArgs, IoctlReply, Opened, ReadArgs, Req, Session,
    TransportStats, mount,
};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The file's inode number.
const FILE: u64 = 2;
/// The file's name.
pub const NAME: &str = "bench";
/// The transport's counters (as `debug/devlife/fuse` of a served tree).
const STATS: u64 = 3;
/// Their file's name.
pub const STATS_NAME: &str = "stats";

/// Options of `devlife bench floor-server`.
#[derive(clap::Args, Debug, Clone)]
pub struct FloorOpts {
    /// Where to mount (must exist).
    pub mount: PathBuf,
}

struct Floor {
    count: AtomicU64,
    uid: u32,
    gid: u32,
    stats: Arc<TransportStats>,
}

impl Floor {
    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let mode = match ino {
            1 => 0o040755,
            FILE => 0o100600,
            STATS => 0o100444,
            _ => return None,
        };
        let nlink = if ino == 1 { 2 } else { 1 };
        Some(FileAttr { ino, size: 0, mode, nlink, uid: self.uid, gid: self.gid, mtime: 0 })
    }
}

impl Filesystem for Floor {
    fn lookup(&self, _req: &Req<'_>, parent: u64, name: &[u8]) -> Result<Entry, Errno> {
        let ino = match name {
            _ if parent != 1 => return Err(Errno::NOENT),
            n if n == NAME.as_bytes() => FILE,
            n if n == STATS_NAME.as_bytes() => STATS,
            _ => return Err(Errno::NOENT),
        };
        let attr = self.attr(ino).ok_or(Errno::NOENT)?;
        let ttl = Duration::from_secs(1);
        Ok(Entry { attr, generation: 0, entry_ttl: ttl, attr_ttl: ttl })
    }

    fn getattr(&self, _req: &Req<'_>, ino: u64) -> Result<(FileAttr, Duration), Errno> {
        Ok((self.attr(ino).ok_or(Errno::NOENT)?, Duration::from_secs(1)))
    }

    fn open(&self, _req: &Req<'_>, ino: u64, _flags: u32) -> Result<Opened, Errno> {
        match ino {
            FILE => {}
            STATS => return Ok(Opened { fh: STATS, flags: fopen::DIRECT_IO }),
            _ => return Err(Errno::ISDIR),
        }
        // devlife's flags for a stream device node without flush.
        let flags = fopen::DIRECT_IO
            | fopen::NONSEEKABLE
            | fopen::STREAM
            | fopen::PARALLEL_DIRECT_WRITES
            | fopen::NOFLUSH;
        Ok(Opened { fh: 0, flags })
    }

    fn read(&self, _req: &Req<'_>, _ino: u64, arg: &ReadArgs, out: &mut Vec<u8>) -> Result<(), Errno> {
        if arg.fh == STATS {
            let text = (self.stats.snapshot().text() + &super::rusage_text()).into_bytes();
            let start = (arg.offset as usize).min(text.len());
            let end = start.saturating_add(arg.size as usize).min(text.len());
            out.extend_from_slice(&text[start..end]);
            return Ok(());
        }
        out.extend_from_slice(&b"dev\n"[..(arg.size as usize).min(4)]);
        Ok(())
    }

    fn write(&self, _: &Req<'_>, _: u64, _: u64, _: u64, data: &[u8], _: u32) -> Result<u32, Errno> {
        Ok(data.len() as u32)
    }

    fn ioctl(
        &self,
        _req: &Req<'_>,
        _ino: u64,
        arg: &IoctlArgs<'_>,
        out: &mut Vec<u8>,
    ) -> Result<IoctlReply, Errno> {
        if arg.cmd != XYZ_IOC_COUNT.raw() {
            return Err(Errno::NOTTY);
        }
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        out.extend_from_slice(&n.to_ne_bytes());
        Ok(IoctlReply::Done(0))
    }
}

/// Serves the floor at `o.mount` until SIGTERM or SIGINT. Returns the exit
/// status.
pub fn serve(o: &FloorOpts) -> i32 {
    match run(&o.mount) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("floor-server: {e}");
            1
        }
    }
}

fn run(dir: &Path) -> Result<(), String> {
    let signals =
        signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM]);
    let mut signals = signals.map_err(|e| format!("signals: {e}"))?;
    let opts = mount::MountOptions { allow_other: false, fsname: "floor".into(), subtype: "floor".into() };
    let mut m = mount::mount(dir, &opts).map_err(|e| format!("mount {}: {e}", dir.display()))?;
    let fd = m.take_fd().ok_or("no connection")?;
    let config = Config { mount_dir: Some(m.dir().to_owned()), ..Config::default() };
    let stats = Arc::new(TransportStats::default());
    let fs = Floor {
        count: AtomicU64::new(0),
        uid: rustix::process::getuid().as_raw(),
        gid: rustix::process::getgid().as_raw(),
        stats: stats.clone(),
    };
    let session = Session::start_with_stats(fd, fs, config, stats).map_err(|e| format!("handshake: {e}"))?;
    eprintln!("floor-server: {}", session.transport());
    println!("ready {}", m.dir().display());
    let _ = std::io::stdout().flush();
    let _ = signals.forever().next();
    m.unmount().map_err(|e| format!("unmount: {e}"))
}
