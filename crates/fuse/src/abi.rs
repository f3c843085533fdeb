//! The FUSE kernel ABI (`include/uapi/linux/fuse.h`), as plain structs the
//! decoder reads with `zerocopy` (no `unsafe` casts).
//!
//! Only what this server speaks is here. Sizes are pinned at compile time
//! against the header's.

#![allow(missing_docs)] // field names are the kernel's; see fuse.h

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Protocol major version.
pub const KERNEL_VERSION: u32 = 7;
/// The minor version this server speaks (it answers with the smaller of
/// this and the kernel's): 7.42, the first with FUSE over io_uring. Nothing
/// this server reads or writes changed shape between 7.31 and 7.42; the
/// newer requests it does not implement (`STATX`, ...) are answered
/// `ENOSYS`, after which the kernel stops sending them.
pub const KERNEL_MINOR_VERSION: u32 = 42;

/// Opcodes.
pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const IOCTL: u32 = 39;
    pub const POLL: u32 = 40;
    pub const BATCH_FORGET: u32 = 42;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    /// `CUSE_INIT`: the first request on a `/dev/cuse` channel.
    pub const CUSE_INIT: u32 = 4096;

    /// The name `fuse.h` gives opcode `op` (`enum fuse_opcode`, protocol
    /// 7.42), also for those this server does not implement (what a log
    /// says of a request answered `ENOSYS`); `None` for a number `fuse.h`
    /// does not name.
    pub fn name(op: u32) -> Option<&'static str> {
        const NAMES: [&str; 54] = [
            "",
            "LOOKUP",
            "FORGET",
            "GETATTR",
            "SETATTR",
            "READLINK",
            "SYMLINK",
            "",
            "MKNOD",
            "MKDIR",
            "UNLINK",
            "RMDIR",
            "RENAME",
            "LINK",
            "OPEN",
            "READ",
            "WRITE",
            "STATFS",
            "RELEASE",
            "",
            "FSYNC",
            "SETXATTR",
            "GETXATTR",
            "LISTXATTR",
            "REMOVEXATTR",
            "FLUSH",
            "INIT",
            "OPENDIR",
            "READDIR",
            "RELEASEDIR",
            "FSYNCDIR",
            "GETLK",
            "SETLK",
            "SETLKW",
            "ACCESS",
            "CREATE",
            "INTERRUPT",
            "BMAP",
            "DESTROY",
            "IOCTL",
            "POLL",
            "NOTIFY_REPLY",
            "BATCH_FORGET",
            "FALLOCATE",
            "READDIRPLUS",
            "RENAME2",
            "LSEEK",
            "COPY_FILE_RANGE",
            "SETUPMAPPING",
            "REMOVEMAPPING",
            "SYNCFS",
            "TMPFILE",
            "STATX",
            "COPY_FILE_RANGE_64",
        ];
        match op {
            CUSE_INIT => Some("CUSE_INIT"),
            _ => NAMES.get(op as usize).copied().filter(|n| !n.is_empty()),
        }
    }
}

/// Set in the id of a request the kernel sends again after
/// [`notify::RESEND`] (`FUSE_UNIQUE_RESEND`): its reply carries the id as
/// it came.
pub const UNIQUE_RESEND: u64 = 1 << 63;

/// Notification codes (the `error` field of a notification's header).
pub mod notify {
    pub const POLL: i32 = 1;
    pub const INVAL_ENTRY: i32 = 3;
    pub const DELETE: i32 = 6;
    /// `FUSE_NOTIFY_RESEND` (7.40, Linux 6.9): the kernel queues again
    /// every request read and not yet answered.
    pub const RESEND: i32 = 7;
}

/// INIT flags.
pub mod init {
    pub const ASYNC_READ: u32 = 1 << 0;
    /// The server handles `O_TRUNC` in OPEN itself: the kernel sends no
    /// SETATTR for it, so a SETATTR of the size is a truncate(2).
    pub const ATOMIC_O_TRUNC: u32 = 1 << 3;
    pub const BIG_WRITES: u32 = 1 << 5;
    pub const DO_READDIRPLUS: u32 = 1 << 13;
    pub const READDIRPLUS_AUTO: u32 = 1 << 14;
    pub const PARALLEL_DIROPS: u32 = 1 << 18;
    pub const ABORT_ERROR: u32 = 1 << 21;
    pub const MAX_PAGES: u32 = 1 << 22;
    /// `fuse_init_in`/`fuse_init_out` carry `flags2` (the bits 32..63).
    pub const INIT_EXT: u32 = 1 << 30;
}

/// INIT flags in `flags2` (bit N here is bit 32 + N of the 64-bit flags).
pub mod init2 {
    /// `FUSE_OVER_IO_URING`: requests may be served through io_uring.
    pub const OVER_IO_URING: u32 = 1 << (41 - 32);
}

/// `fuse_open_out.open_flags`.
pub mod fopen {
    pub const DIRECT_IO: u32 = 1 << 0;
    pub const KEEP_CACHE: u32 = 1 << 1;
    pub const NONSEEKABLE: u32 = 1 << 2;
    pub const STREAM: u32 = 1 << 4;
    pub const NOFLUSH: u32 = 1 << 5;
    pub const PARALLEL_DIRECT_WRITES: u32 = 1 << 6;
}

/// `fuse_setattr_in.valid`.
pub mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
    pub const LOCKOWNER: u32 = 1 << 9;
    pub const CTIME: u32 = 1 << 10;
    /// Every time field.
    pub const TIMES: u32 = ATIME | MTIME | ATIME_NOW | MTIME_NOW | CTIME;
}

/// `fuse_read_in.read_flags`.
pub mod read_flags {
    /// `lock_owner` is set. The kernel sets it on every read made for a
    /// read(2)-family call on a direct-I/O file (`fuse_direct_io` passes
    /// `current->files`), and never on the reads that fill the page cache
    /// (`fuse_read_folio`, readahead: a private mapping's page fault, a
    /// splice).
    pub const LOCKOWNER: u32 = 1 << 1;
}

/// `fuse_ioctl_in.flags`.
pub mod ioctl {
    pub const COMPAT: u32 = 1 << 0;
    pub const UNRESTRICTED: u32 = 1 << 1;
    pub const RETRY: u32 = 1 << 2;
    pub const DIR: u32 = 1 << 4;
}

/// CUSE (`include/uapi/linux/fuse.h`, `fs/fuse/cuse.c`).
pub mod cuse {
    /// `CUSE_UNRESTRICTED_IOCTL`: the server is sent every ioctl raw and
    /// fetches its argument memory with `FUSE_IOCTL_RETRY`.
    pub const UNRESTRICTED_IOCTL: u32 = 1 << 0;
    /// `CUSE_INIT_INFO_MAX`: the largest device-info string (`DEVNAME=...`).
    pub const INIT_INFO_MAX: usize = 4096;
}

/// `FUSE_IOCTL_MAX_IOV`: most regions one `FUSE_IOCTL_RETRY` may name.
pub const IOCTL_MAX_IOV: usize = 256;

/// `fuse_poll_in.flags`: the kernel wants a notification when readiness
/// may have changed.
pub const POLL_SCHEDULE_NOTIFY: u32 = 1 << 0;

macro_rules! abi {
    ($($(#[$m:meta])* pub struct $name:ident { $(pub $f:ident: $t:ty,)* } = $size:expr;)*) => {
        $(
            $(#[$m])*
            #[repr(C)]
            #[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
            pub struct $name { $(pub $f: $t,)* }
            const _: () = assert!(std::mem::size_of::<$name>() == $size);
        )*
    };
}

abi! {
    pub struct InHeader { pub len: u32, pub opcode: u32, pub unique: u64, pub nodeid: u64, pub uid: u32, pub gid: u32, pub pid: u32, pub total_extlen: u16, pub padding: u16, } = 40;
    pub struct OutHeader { pub len: u32, pub error: i32, pub unique: u64, } = 16;
    pub struct InitIn { pub major: u32, pub minor: u32, pub max_readahead: u32, pub flags: u32, } = 16;
    pub struct InitOut { pub major: u32, pub minor: u32, pub max_readahead: u32, pub flags: u32, pub max_background: u16, pub congestion_threshold: u16, pub max_write: u32, pub time_gran: u32, pub max_pages: u16, pub map_alignment: u16, pub flags2: u32, pub unused: [u32; 7], } = 64;
    pub struct Attr { pub ino: u64, pub size: u64, pub blocks: u64, pub atime: u64, pub mtime: u64, pub ctime: u64, pub atimensec: u32, pub mtimensec: u32, pub ctimensec: u32, pub mode: u32, pub nlink: u32, pub uid: u32, pub gid: u32, pub rdev: u32, pub blksize: u32, pub flags: u32, } = 88;
    pub struct EntryOut { pub nodeid: u64, pub generation: u64, pub entry_valid: u64, pub attr_valid: u64, pub entry_valid_nsec: u32, pub attr_valid_nsec: u32, pub attr: Attr, } = 128;
    pub struct AttrOut { pub attr_valid: u64, pub attr_valid_nsec: u32, pub dummy: u32, pub attr: Attr, } = 104;
    pub struct ForgetIn { pub nlookup: u64, } = 8;
    pub struct BatchForgetIn { pub count: u32, pub dummy: u32, } = 8;
    pub struct ForgetOne { pub nodeid: u64, pub nlookup: u64, } = 16;
    pub struct GetattrIn { pub getattr_flags: u32, pub dummy: u32, pub fh: u64, } = 16;
    pub struct SetattrIn { pub valid: u32, pub padding: u32, pub fh: u64, pub size: u64, pub lock_owner: u64, pub atime: u64, pub mtime: u64, pub ctime: u64, pub atimensec: u32, pub mtimensec: u32, pub ctimensec: u32, pub mode: u32, pub unused4: u32, pub uid: u32, pub gid: u32, pub unused5: u32, } = 88;
    pub struct OpenIn { pub flags: u32, pub open_flags: u32, } = 8;
    pub struct OpenOut { pub fh: u64, pub open_flags: u32, pub padding: u32, } = 16;
    pub struct ReleaseIn { pub fh: u64, pub flags: u32, pub release_flags: u32, pub lock_owner: u64, } = 24;
    pub struct FlushIn { pub fh: u64, pub unused: u32, pub padding: u32, pub lock_owner: u64, } = 24;
    pub struct ReadIn { pub fh: u64, pub offset: u64, pub size: u32, pub read_flags: u32, pub lock_owner: u64, pub flags: u32, pub padding: u32, } = 40;
    pub struct WriteIn { pub fh: u64, pub offset: u64, pub size: u32, pub write_flags: u32, pub lock_owner: u64, pub flags: u32, pub padding: u32, } = 40;
    pub struct WriteOut { pub size: u32, pub padding: u32, } = 8;
    pub struct Kstatfs { pub blocks: u64, pub bfree: u64, pub bavail: u64, pub files: u64, pub ffree: u64, pub bsize: u32, pub namelen: u32, pub frsize: u32, pub padding: u32, pub spare: [u32; 6], } = 80;
    pub struct AccessIn { pub mask: u32, pub padding: u32, } = 8;
    pub struct MknodIn { pub mode: u32, pub rdev: u32, pub umask: u32, pub padding: u32, } = 16;
    pub struct MkdirIn { pub mode: u32, pub umask: u32, } = 8;
    pub struct RenameIn { pub newdir: u64, } = 8;
    pub struct Rename2In { pub newdir: u64, pub flags: u32, pub padding: u32, } = 16;
    pub struct LinkIn { pub oldnodeid: u64, } = 8;
    pub struct CreateIn { pub flags: u32, pub mode: u32, pub umask: u32, pub open_flags: u32, } = 16;
    pub struct InterruptIn { pub unique: u64, } = 8;
    pub struct IoctlIn { pub fh: u64, pub flags: u32, pub cmd: u32, pub arg: u64, pub in_size: u32, pub out_size: u32, } = 32;
    pub struct IoctlOut { pub result: i32, pub flags: u32, pub in_iovs: u32, pub out_iovs: u32, } = 16;
    pub struct IoctlIovec { pub base: u64, pub len: u64, } = 16;
    pub struct CuseInitIn { pub major: u32, pub minor: u32, pub unused: u32, pub flags: u32, } = 16;
    pub struct CuseInitOut { pub major: u32, pub minor: u32, pub unused: u32, pub flags: u32, pub max_read: u32, pub max_write: u32, pub dev_major: u32, pub dev_minor: u32, pub spare: [u32; 10], } = 72;
    pub struct PollIn { pub fh: u64, pub kh: u64, pub flags: u32, pub events: u32, } = 24;
    pub struct PollOut { pub revents: u32, pub padding: u32, } = 8;
    pub struct NotifyPollWakeupOut { pub kh: u64, } = 8;
    pub struct NotifyInvalEntryOut { pub parent: u64, pub namelen: u32, pub flags: u32, } = 16;
    pub struct NotifyDeleteOut { pub parent: u64, pub child: u64, pub namelen: u32, pub padding: u32, } = 24;
    pub struct Dirent { pub ino: u64, pub off: u64, pub namelen: u32, pub typ: u32, } = 24;
}

/// FUSE over io_uring (`fuse.h` 7.42, `fs/fuse/dev_uring.c`).
///
/// A server registers ring entries, one `IORING_OP_URING_CMD` each, on the
/// queue of a CPU. An entry is a [`ReqHeader`](uring::ReqHeader) and a payload buffer.
/// The kernel fills an available entry with a request sent from that CPU
/// (`in_out`: the `fuse_in_header`; `op_in`: the operation's fixed-size
/// argument; the payload: its variable part) and completes the command;
/// the server writes the `fuse_out_header` into `in_out` and the reply's
/// body into the payload, and commits it with `COMMIT_AND_FETCH`, which
/// also makes the entry available again.
pub mod uring {
    use super::*;

    /// `FUSE_IO_URING_CMD_REGISTER`: register an entry (its buffers) on a queue.
    pub const CMD_REGISTER: u32 = 1;
    /// `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`: send a reply, then wait for the next request.
    pub const CMD_COMMIT_AND_FETCH: u32 = 2;
    /// `FUSE_URING_IN_OUT_HEADER_SZ`.
    pub const IN_OUT_HEADER_SZ: usize = 128;
    /// `FUSE_URING_OP_IN_OUT_SZ`.
    pub const OP_IN_OUT_SZ: usize = 128;
    /// `FUSE_URING_IOV_SEGS`: an entry is two buffers, header and payload.
    pub const IOV_SEGS: u32 = 2;
    /// `FUSE_MIN_READ_BUFFER`: the smallest payload buffer the kernel accepts
    /// is the largest of this, `max_write` and `max_pages` pages.
    pub const MIN_READ_BUFFER: usize = 8192;

    /// `struct fuse_uring_ent_in_out`.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
    pub struct EntInOut {
        pub flags: u64,
        /// The request's unique id, to commit its reply with.
        pub commit_id: u64,
        /// Bytes used in the payload buffer (request or reply).
        pub payload_sz: u32,
        pub padding: u32,
        pub reserved: u64,
    }
    const _: () = assert!(std::mem::size_of::<EntInOut>() == 32);

    /// `struct fuse_uring_req_header`: an entry's header buffer.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
    pub struct ReqHeader {
        /// `fuse_in_header` of a request, `fuse_out_header` of a reply.
        pub in_out: [u8; IN_OUT_HEADER_SZ],
        /// The operation's fixed-size argument (its first `in_arg`).
        pub op_in: [u8; OP_IN_OUT_SZ],
        pub ent: EntInOut,
    }
    const _: () = assert!(std::mem::size_of::<ReqHeader>() == 288);

    /// `struct fuse_uring_cmd_req`, at the start of the SQE's 80-byte
    /// command area.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
    pub struct CmdReq {
        pub flags: u64,
        /// For `COMMIT_AND_FETCH`: the unique id of the request answered.
        pub commit_id: u64,
        /// The queue (CPU) the entry belongs to.
        pub qid: u16,
        pub padding: [u8; 6],
    }
    const _: () = assert!(std::mem::size_of::<CmdReq>() == 24);
}

/// `FUSE_DEV_IOC_CLONE`: `_IOR(229, 0, uint32_t)`.
pub const DEV_IOC_CLONE: u32 = 0x8004_e500;
