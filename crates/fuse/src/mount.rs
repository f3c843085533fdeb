//! Mounting and unmounting a FUSE file system.
//!
//! As root the server opens `/dev/fuse` and calls `mount(2)` itself; as a
//! normal user it runs `fusermount3`, which mounts and passes the device
//! back over a socket (`_FUSE_COMMFD`, `SCM_RIGHTS`), as libfuse does.
//! A mount left by a server that was killed answers every access with
//! `ENOTCONN`; [`clear_stale`] detects and detaches it.

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{Mode, OFlags};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Mount options.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Let other users in (`allow_other`); otherwise only the mounting user
    /// (and not even root) can access the mount.
    pub allow_other: bool,
    /// File system name shown in `/proc/mounts`.
    pub fsname: String,
    /// Subtype (`fuse.<subtype>`).
    pub subtype: String,
}

/// What a mount at a path looks like right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountState {
    /// Nothing mounted there (or not a FUSE mount).
    Free,
    /// A FUSE mount whose server answers.
    Live,
    /// A FUSE mount whose server is gone: every access fails `ENOTCONN`.
    Stale,
}

/// Reads `/proc/self/mountinfo` for a FUSE mount at `dir`.
fn fuse_mounted_at(dir: &Path) -> bool {
    let Ok(info) = std::fs::read("/proc/self/mountinfo") else { return false };
    let want = dir.as_os_str().as_bytes();
    info.split(|&b| b == b'\n').any(|line| {
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        // id parent maj:min root mountpoint options ... - fstype source ...
        let dash = fields.iter().position(|f| *f == b"-");
        match (fields.get(4), dash.and_then(|d| fields.get(d + 1))) {
            (Some(mp), Some(fstype)) => unescape(mp) == want && fstype.starts_with(b"fuse"),
            _ => false,
        }
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' && i + 3 < s.len() && s[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v =
                u32::from(s[i + 1] - b'0') * 64 + u32::from(s[i + 2] - b'0') * 8 + u32::from(s[i + 3] - b'0');
            out.push(v as u8);
            i += 4;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// The state of any FUSE mount at `dir`.
///
/// Probed with `statfs`, which FUSE always sends to the server: a `stat`
/// of the mount root may be answered from the kernel's attribute cache
/// (shared by every process) for a while after the server died, making a
/// stale mount look live.
pub fn state(dir: &Path) -> MountState {
    match rustix::fs::statfs(dir) {
        Err(rustix::io::Errno::NOTCONN | rustix::io::Errno::CONNABORTED) => MountState::Stale,
        _ if fuse_mounted_at(dir) => MountState::Live,
        _ => MountState::Free,
    }
}

/// Detaches a stale mount at `dir`. Returns whether there was one.
pub fn clear_stale(dir: &Path) -> io::Result<bool> {
    if state(dir) != MountState::Stale {
        return Ok(false);
    }
    unmount(dir)?;
    Ok(true)
}

/// A mounted file system: the `/dev/fuse` connection and where it is.
/// Dropping it unmounts (lazily: open files keep the connection).
#[derive(Debug)]
pub struct Mount {
    fd: Option<OwnedFd>,
    dir: PathBuf,
}

impl Mount {
    /// The mount point (absolute).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the connection (to start a session on it); the mount stays
    /// until `self` is dropped or [`unmount`](Self::unmount) is called.
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        self.fd.take()
    }

    /// The mount at `dir` made by an earlier server of connection `fd`,
    /// which this process serves now (the connection outlived that
    /// server): dropping it unmounts, as for one made here. `dir` is made
    /// absolute without being looked at: until a server reads the
    /// connection, a look would wait for it.
    pub fn adopt(dir: &Path, fd: OwnedFd) -> io::Result<Mount> {
        Ok(Mount { fd: Some(fd), dir: std::path::absolute(dir)? })
    }

    /// Unmounts now.
    pub fn unmount(mut self) -> io::Result<()> {
        let dir = std::mem::take(&mut self.dir);
        unmount(&dir)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.dir.as_os_str().is_empty() {
            return;
        }
        if let Err(e) = unmount(&self.dir) {
            tracing::warn!("unmount {}: {e}", self.dir.display());
        }
    }
}

/// Mounts a FUSE file system at `dir` (which must exist).
pub fn mount(dir: &Path, opts: &MountOptions) -> io::Result<Mount> {
    let dir = std::fs::canonicalize(dir)?;
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    let fd = if uid == 0 { mount_root(&dir, opts, uid, gid)? } else { mount_fusermount(&dir, opts)? };
    Ok(Mount { fd: Some(fd), dir })
}

fn mount_root(dir: &Path, opts: &MountOptions, uid: u32, gid: u32) -> io::Result<OwnedFd> {
    use rustix::fd::AsRawFd;
    use rustix::mount::MountFlags;
    let fd = rustix::fs::open("/dev/fuse", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())?;
    let mut data =
        format!("fd={},rootmode=40000,user_id={uid},group_id={gid},default_permissions", fd.as_raw_fd());
    if opts.allow_other {
        data.push_str(",allow_other");
    }
    let fstype = format!("fuse.{}", opts.subtype);
    rustix::mount::mount(
        opts.fsname.as_str(),
        dir,
        fstype.as_str(),
        MountFlags::NOSUID | MountFlags::NODEV,
        Some(std::ffi::CString::new(data).map_err(|_| io::Error::other("NUL in mount options"))?.as_c_str()),
    )?;
    Ok(fd)
}

fn mount_fusermount(dir: &Path, opts: &MountOptions) -> io::Result<OwnedFd> {
    use rustix::net::{
        AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SocketFlags, SocketType,
    };
    let (ours, theirs) =
        rustix::net::socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None)?;
    // The child must inherit its end: clear close-on-exec on it only.
    rustix::io::fcntl_setfd(&theirs, rustix::io::FdFlags::empty())?;
    let mut o = format!("default_permissions,nosuid,nodev,fsname={},subtype={}", opts.fsname, opts.subtype);
    if opts.allow_other {
        o.push_str(",allow_other");
    }
    let commfd = {
        use rustix::fd::AsRawFd;
        theirs.as_raw_fd()
    };
    let status = Command::new("fusermount3")
        .arg("-o")
        .arg(&o)
        .arg("--")
        .arg(dir)
        .env("_FUSE_COMMFD", commfd.to_string())
        .status()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run fusermount3: {e}")))?;
    drop(theirs);
    if !status.success() {
        return Err(io::Error::other(format!("fusermount3 failed: {status}")));
    }
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut anc = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    rustix::net::recvmsg(&ours, &mut [io::IoSliceMut::new(&mut byte)], &mut anc, RecvFlags::CMSG_CLOEXEC)?;
    for msg in anc.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = msg {
            if let Some(fd) = fds.next() {
                return Ok(fd);
            }
        }
    }
    Err(io::Error::other("fusermount3 did not pass a /dev/fuse descriptor"))
}

/// Unmounts `dir` lazily (open files keep the connection until closed).
pub fn unmount(dir: &Path) -> io::Result<()> {
    if rustix::process::getuid().is_root() {
        rustix::mount::unmount(dir, rustix::mount::UnmountFlags::DETACH)?;
        return Ok(());
    }
    let status = Command::new("fusermount3").arg("-u").arg("-z").arg("--").arg(dir).status()?;
    if status.success() { Ok(()) } else { Err(io::Error::other(format!("fusermount3 -u failed: {status}"))) }
}

/// Whether `fd` is a FUSE device (a sanity check for passed descriptors).
pub fn is_fuse_device(fd: impl AsFd) -> bool {
    rustix::fs::fstat(fd)
        .is_ok_and(|st| rustix::fs::major(st.st_rdev) == 10 && rustix::fs::minor(st.st_rdev) == 229)
}
