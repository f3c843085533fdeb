//! The fuser peer of `devlife bench fs`: a fuser 0.18 server serving one
//! file, `bench`, as devlife serves a device node of its `bench` driver,
//! without the gate:
//!
//! * open: direct I/O, not seekable (as devlife's device nodes);
//! * read: returns `min(size, 4)` bytes;
//! * write: takes every byte;
//! * ioctl `XYZ_IOC_COUNT = _IOR('X', 1, u64)`: increments a counter and
//!   returns it; any other command is `ENOTTY`.
//!
//! Usage: `fuser-peer MOUNTPOINT [THREADS]` (prints `ready MOUNTPOINT`; runs
//! until SIGINT or SIGTERM). `THREADS` (default 2) event-loop threads, each
//! with its own cloned `/dev/fuse` descriptor (fuser's `clone_fd`).
//!
//! Written for devlife's benchmark; built by `devlife bench fs`.

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, IoctlFlags,
    LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyIoctl,
    ReplyOpen, ReplyWrite, Request, WriteFlags,
};
use std::ffi::OsStr;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

/// `_IOR('X', 1, u64)`.
const XYZ_IOC_COUNT: u32 = 0x8008_5801;
const FILE_INO: INodeNo = INodeNo(2);
const TTL: Duration = Duration::from_secs(1);

struct Peer {
    count: AtomicU64,
    uid: u32,
    gid: u32,
}

impl Peer {
    fn attr(&self, ino: INodeNo) -> Option<FileAttr> {
        let (kind, perm, nlink) = match ino {
            INodeNo::ROOT => (FileType::Directory, 0o755, 2),
            FILE_INO => (FileType::RegularFile, 0o600, 1),
            _ => return None,
        };
        Some(FileAttr {
            ino,
            size: 0,
            blocks: 0,
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }
}

impl Filesystem for Peer {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.attr(FILE_INO) {
            Some(a) if parent == INodeNo::ROOT && name == "bench" => reply.entry(&TTL, &a, Generation(0)),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        if ino != INodeNo::ROOT {
            reply.error(Errno::ENOTDIR);
            return;
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, "."),
            (INodeNo::ROOT, FileType::Directory, ".."),
            (FILE_INO, FileType::RegularFile, "bench"),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino != FILE_INO {
            reply.error(Errno::EISDIR);
            return;
        }
        // devlife's flags for a stream device node without flush.
        let flags = FopenFlags::FOPEN_DIRECT_IO
            | FopenFlags::FOPEN_NONSEEKABLE
            | FopenFlags::FOPEN_STREAM
            | FopenFlags::FOPEN_NOFLUSH
            | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES;
        reply.opened(FileHandle(0), flags);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let data = b"dev\n";
        reply.data(&data[..(size as usize).min(data.len())]);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.written(data.len() as u32);
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        out_size: u32,
        reply: ReplyIoctl,
    ) {
        if cmd != XYZ_IOC_COUNT {
            reply.error(Errno::ENOTTY);
        } else if out_size < 8 {
            reply.error(Errno::EFAULT);
        } else {
            let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
            reply.ioctl(0, &n.to_ne_bytes());
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: fuser-peer MOUNTPOINT [THREADS]");
        std::process::exit(2);
    };
    let threads = args.next().and_then(|t| t.parse().ok()).unwrap_or(2);
    // SAFETY: getuid and getgid only read the calling process's credentials.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let peer = Peer { count: AtomicU64::new(0), uid, gid };
    let mut config = Config::default();
    config.mount_options = vec![MountOption::FSName("fuser-peer".into())];
    config.n_threads = Some(threads);
    config.clone_fd = true;
    // SIGINT and SIGTERM are blocked before fuser starts its threads, so
    // every thread inherits the mask and the signals wait for `sigwait`
    // below instead of killing the process without an unmount.
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: `set` is initialised by `sigemptyset` before any other use,
    // and `pthread_sigmask` only changes the calling thread's mask.
    let set = unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGINT);
        libc::sigaddset(set.as_mut_ptr(), libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, set.as_ptr(), std::ptr::null_mut());
        set.assume_init()
    };
    let session = match fuser::spawn_mount(peer, &dir, &config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fuser-peer: mount {dir}: {e}");
            std::process::exit(1);
        }
    };
    println!("ready {dir}");
    let _ = std::io::stdout().flush();
    let mut sig = 0;
    // SAFETY: `set` is an initialised signal set and `sig` a valid out
    // pointer for the duration of the call.
    unsafe { libc::sigwait(&set, &mut sig) };
    if let Err(e) = session.umount_and_join() {
        eprintln!("fuser-peer: unmount: {e}");
    }
}
