//! [`Filesystem`]: what a server implements, one method per operation.

use crate::abi;
use crate::defer::{DeferSlot, Deferred, DeferredTable};
use crate::notify::Notifier;
use devlife_gate::CancelSource;
use rustix::io::Errno;
use std::sync::Arc;
use std::time::Duration;

/// The caller and context of one request.
pub struct Req<'a> {
    /// The request's unique id.
    pub unique: u64,
    /// The node the request is about.
    pub nodeid: u64,
    /// Caller's uid, gid and pid.
    pub uid: u32,
    /// Caller's gid.
    pub gid: u32,
    /// Caller's pid.
    pub pid: u32,
    /// Fired when the kernel interrupts this request (the caller got a
    /// signal): a handler's cancellable waits should then fail `EINTR`.
    /// Shared: a deferred request's handler keeps it.
    pub interrupt: &'a Arc<CancelSource>,
    /// Sends notifications to the kernel.
    pub notifier: &'a Notifier,
    pub(crate) defer: &'a DeferSlot,
    pub(crate) deferred: &'a Arc<DeferredTable>,
}

impl Req<'_> {
    /// Defers the reply: the handler returns (what it returns is ignored)
    /// and the [`Deferred`] answers later, from any thread, while the
    /// transport's thread serves other requests. The request stays
    /// interruptible through [`interrupt`](Self::interrupt). Once per
    /// request: a second call's handle answers nothing.
    pub fn defer(&self) -> Deferred {
        self.defer.defer(self.unique, self.interrupt, self.deferred)
    }
}

/// Attributes of a node.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileAttr {
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Type and permission bits (`S_IFREG | 0o600`).
    pub mode: u32,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch (also used for atime, ctime).
    pub mtime: u64,
}

impl FileAttr {
    pub(crate) fn abi(&self) -> abi::Attr {
        abi::Attr {
            ino: self.ino,
            size: self.size,
            blocks: self.size.div_ceil(512),
            atime: self.mtime,
            mtime: self.mtime,
            ctime: self.mtime,
            mode: self.mode,
            nlink: self.nlink,
            uid: self.uid,
            gid: self.gid,
            blksize: 4096,
            ..Default::default()
        }
    }
}

/// A successful lookup.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// The node's attributes (with its inode number).
    pub attr: FileAttr,
    /// Generation: `(ino, generation)` is unique for the mount's life.
    pub generation: u64,
    /// How long the kernel may cache the name.
    pub entry_ttl: Duration,
    /// How long it may cache the attributes.
    pub attr_ttl: Duration,
}

/// A successful open.
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    /// The handle the kernel passes back with every request on the file.
    pub fh: u64,
    /// `FOPEN_*` flags.
    pub flags: u32,
}

/// What a READ asks for.
#[derive(Debug, Clone, Copy)]
pub struct ReadArgs {
    /// The open file's handle.
    pub fh: u64,
    /// Where to read (0 for stream files).
    pub offset: u64,
    /// At most this many bytes.
    pub size: u32,
    /// The file's open(2) flags (with `O_NONBLOCK`).
    pub flags: u32,
    /// The kernel reads to fill its page cache, not for a read(2) on a
    /// descriptor: a private mapping's page fault, readahead or a splice
    /// of a direct-I/O file (which `mmap(MAP_PRIVATE)` and `splice` still
    /// go through the page cache for; `fuse_read_in` carries no lock
    /// owner then, see [`abi::read_flags`]). A server whose files have no
    /// backing store refuses these.
    pub page_cache: bool,
}

/// What an IOCTL carries.
///
/// Restricted (every FUSE mount): the kernel sized `input` and `out_size`
/// from the command's `_IOC_SIZE` and direction, and copies the memory
/// itself. Unrestricted (CUSE): the command is sent raw, first with no
/// memory at all; the server names the caller's memory it needs with
/// [`IoctlReply::Retry`], and the kernel sends the request again with
/// `input` holding those input regions one after another and `out_size`
/// their output regions' total. The kernel keeps no other state between
/// the tries: a server recognises a retry by the sizes it gets.
#[derive(Debug, Clone, Copy)]
pub struct IoctlArgs<'a> {
    /// The open file's handle.
    pub fh: u64,
    /// The command number, as the caller passed it.
    pub cmd: u32,
    /// The argument: a value, or an address in the caller.
    pub arg: u64,
    /// `FUSE_IOCTL_UNRESTRICTED`: [`IoctlReply::Retry`] is allowed.
    pub unrestricted: bool,
    /// `FUSE_IOCTL_COMPAT`: a 32-bit caller (its pointers are 32 bits).
    pub compat: bool,
    /// The caller's memory fetched for this try.
    pub input: &'a [u8],
    /// Bytes of output the kernel will copy back.
    pub out_size: u32,
}

/// A region of the caller's memory (`struct fuse_ioctl_iovec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoVec {
    /// Its address in the caller.
    pub base: u64,
    /// Its length.
    pub len: u64,
}

/// How an ioctl is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoctlReply {
    /// Done: the system call's result (the output is in `out`).
    Done(i32),
    /// Send the request again with these regions of the caller's memory
    /// copied in (`input`) and room for these to be copied out (`output`)
    /// (`FUSE_IOCTL_RETRY`, unrestricted ioctls only).
    Retry {
        /// Regions read from the caller.
        input: Vec<IoVec>,
        /// Regions written back to the caller, in order, from the final
        /// reply's output.
        output: Vec<IoVec>,
    },
}

/// Where `readdir` writes entries.
pub struct DirBuf<'a> {
    pub(crate) buf: &'a mut Vec<u8>,
    pub(crate) max: usize,
    pub(crate) plus: bool,
}

impl DirBuf<'_> {
    /// Adds an entry; `next` is the offset of the entry after it. Returns
    /// `false` (adding nothing) when the reply is full. For READDIRPLUS,
    /// `entry` must be the entry's lookup (it counts as one); for READDIR it
    /// is ignored except for its inode number.
    pub fn add(&mut self, entry: &Entry, next: u64, name: &[u8]) -> bool {
        use zerocopy::IntoBytes;
        let typ = (entry.attr.mode >> 12) & 0o17;
        let dirent = abi::Dirent { ino: entry.attr.ino, off: next, namelen: name.len() as u32, typ };
        let base = if self.plus { 128 + 24 } else { 24 };
        let len = (base + name.len()).next_multiple_of(8);
        if self.buf.len() + len > self.max {
            return false;
        }
        if self.plus {
            let e = abi::EntryOut {
                nodeid: entry.attr.ino,
                generation: entry.generation,
                entry_valid: entry.entry_ttl.as_secs(),
                attr_valid: entry.attr_ttl.as_secs(),
                entry_valid_nsec: entry.entry_ttl.subsec_nanos(),
                attr_valid_nsec: entry.attr_ttl.subsec_nanos(),
                attr: entry.attr.abi(),
            };
            self.buf.extend_from_slice(e.as_bytes());
        }
        self.buf.extend_from_slice(dirent.as_bytes());
        self.buf.extend_from_slice(name);
        self.buf.resize(self.buf.len().next_multiple_of(8), 0);
        true
    }

    /// Whether this is a READDIRPLUS reply (every added entry is a lookup).
    pub fn is_plus(&self) -> bool {
        self.plus
    }
}

/// A FUSE file system. Every method has a default answering `ENOSYS`
/// (or success, for the ones with nothing to do).
///
/// Methods run on worker threads, several at once; a method may block (the
/// session starts another worker when none is idle).
#[allow(unused_variables)]
pub trait Filesystem: Send + Sync + 'static {
    /// The session is up; `notifier` stays valid for its life.
    fn init(&self, notifier: &Notifier) {}
    /// Looks up `name` in directory `parent`.
    fn lookup(&self, req: &Req<'_>, parent: u64, name: &[u8]) -> Result<Entry, Errno> {
        Err(Errno::NOSYS)
    }
    /// The kernel dropped `nlookup` references to `ino`.
    fn forget(&self, ino: u64, nlookup: u64) {}
    /// Attributes of `ino`, and how long they may be cached.
    fn getattr(&self, req: &Req<'_>, ino: u64) -> Result<(FileAttr, Duration), Errno> {
        Err(Errno::NOSYS)
    }
    /// Changes attributes (only `size`, for `O_TRUNC`, is expected here).
    fn setattr(&self, req: &Req<'_>, ino: u64, set: &abi::SetattrIn) -> Result<(FileAttr, Duration), Errno> {
        Err(Errno::NOSYS)
    }
    /// A symbolic link's target.
    fn readlink(&self, req: &Req<'_>, ino: u64) -> Result<Vec<u8>, Errno> {
        Err(Errno::NOSYS)
    }
    /// Opens `ino` with open(2) `flags`.
    fn open(&self, req: &Req<'_>, ino: u64, flags: u32) -> Result<Opened, Errno> {
        Err(Errno::NOSYS)
    }
    /// Reads at most `arg.size` bytes at `arg.offset` into `out`.
    fn read(&self, req: &Req<'_>, ino: u64, arg: &ReadArgs, out: &mut Vec<u8>) -> Result<(), Errno> {
        Err(Errno::NOSYS)
    }
    /// Writes `data` at `offset`; returns the bytes taken.
    fn write(
        &self,
        req: &Req<'_>,
        ino: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
        flags: u32,
    ) -> Result<u32, Errno> {
        Err(Errno::NOSYS)
    }
    /// Creates `name` in `parent` with `mode` (type and permissions) and
    /// device number `rdev` (mknod(2), mkfifo(3)).
    fn mknod(&self, req: &Req<'_>, parent: u64, name: &[u8], mode: u32, rdev: u32) -> Result<Entry, Errno> {
        Err(Errno::NOSYS)
    }
    /// Creates directory `name` in `parent`.
    fn mkdir(&self, req: &Req<'_>, parent: u64, name: &[u8], mode: u32) -> Result<Entry, Errno> {
        Err(Errno::NOSYS)
    }
    /// Creates symbolic link `name` in `parent`, pointing at `target`.
    fn symlink(&self, req: &Req<'_>, parent: u64, name: &[u8], target: &[u8]) -> Result<Entry, Errno> {
        Err(Errno::NOSYS)
    }
    /// Removes `name` (not a directory) from `parent`.
    fn unlink(&self, req: &Req<'_>, parent: u64, name: &[u8]) -> Result<(), Errno> {
        Err(Errno::NOSYS)
    }
    /// Removes directory `name` from `parent`.
    fn rmdir(&self, req: &Req<'_>, parent: u64, name: &[u8]) -> Result<(), Errno> {
        Err(Errno::NOSYS)
    }
    /// Moves `name` in `parent` to `newname` in `newdir` (`flags`:
    /// renameat2(2)'s, 0 for rename(2)).
    fn rename(
        &self,
        req: &Req<'_>,
        parent: u64,
        name: &[u8],
        newdir: u64,
        newname: &[u8],
        flags: u32,
    ) -> Result<(), Errno> {
        Err(Errno::NOSYS)
    }
    /// Makes `newname` in `newparent` a new name of `ino`.
    fn link(&self, req: &Req<'_>, ino: u64, newparent: u64, newname: &[u8]) -> Result<Entry, Errno> {
        Err(Errno::NOSYS)
    }
    /// Creates and opens `name` in `parent` (open(2) with `O_CREAT` of a
    /// name that does not exist). `ENOSYS` makes the kernel use
    /// [`mknod`](Self::mknod) and [`open`](Self::open) instead.
    fn create(
        &self,
        req: &Req<'_>,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: u32,
    ) -> Result<(Entry, Opened), Errno> {
        Err(Errno::NOSYS)
    }
    /// A descriptor of the file is being closed.
    fn flush(&self, req: &Req<'_>, ino: u64, fh: u64) -> Result<(), Errno> {
        Ok(())
    }
    /// The last descriptor of the file is gone.
    fn release(&self, req: &Req<'_>, ino: u64, fh: u64) -> Result<(), Errno> {
        Ok(())
    }
    /// Opens directory `ino`.
    fn opendir(&self, req: &Req<'_>, ino: u64, flags: u32) -> Result<Opened, Errno> {
        Ok(Opened { fh: 0, flags: 0 })
    }
    /// Lists directory `ino` from `offset`.
    fn readdir(
        &self,
        req: &Req<'_>,
        ino: u64,
        fh: u64,
        offset: u64,
        out: &mut DirBuf<'_>,
    ) -> Result<(), Errno> {
        Err(Errno::NOSYS)
    }
    /// Closes a directory.
    fn releasedir(&self, req: &Req<'_>, ino: u64, fh: u64) -> Result<(), Errno> {
        Ok(())
    }
    /// An ioctl; put at most `arg.out_size` bytes of output in `out` for
    /// [`IoctlReply::Done`].
    fn ioctl(
        &self,
        req: &Req<'_>,
        ino: u64,
        arg: &IoctlArgs<'_>,
        out: &mut Vec<u8>,
    ) -> Result<IoctlReply, Errno> {
        Err(Errno::NOTTY)
    }
    /// Readiness (`POLL*` bits); with `kh`, notify it when that may change.
    fn poll(&self, req: &Req<'_>, ino: u64, fh: u64, kh: Option<u64>, events: u32) -> Result<u32, Errno> {
        Err(Errno::NOSYS)
    }
    /// File system statistics.
    fn statfs(&self, req: &Req<'_>, ino: u64) -> Result<abi::Kstatfs, Errno> {
        Ok(abi::Kstatfs { bsize: 4096, frsize: 4096, namelen: 255, ..Default::default() })
    }
    /// access(2) (the kernel checks modes itself with `default_permissions`).
    fn access(&self, req: &Req<'_>, ino: u64, mask: u32) -> Result<(), Errno> {
        Ok(())
    }
    /// The connection is ending.
    fn destroy(&self) {}
}
