//! systemd's service protocol, the parts a restartable server speaks:
//! `sd_notify(3)` (`READY=1`, `STOPPING=1`, and the file-descriptor store:
//! `FDSTORE=1` with `FDNAME=`, `FDSTOREREMOVE=1`) and `sd_listen_fds(3)`
//! (`LISTEN_FDS`, `LISTEN_FDNAMES`, `LISTEN_PID` on the next start).
//!
//! Written here rather than taken from a crate: `sd-notify` 0.4 sends no
//! descriptors, and `libsystemd` links a dependency tree larger than the
//! forty lines below. Both ends of the protocol are in this crate: the
//! server's (this file) and the built-in keeper's
//! ([`keeper`](super::keeper)), which stands in for systemd.

use rustix::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use rustix::net::{
    AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketType,
};
use std::io::IoSlice;
use std::mem::MaybeUninit;

/// Where `sd_notify` messages go (`$NOTIFY_SOCKET`).
pub(crate) const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// Set by systemd (254 and later) to the size of the service's
/// descriptor store when it has one (`FileDescriptorStoreMax=`).
pub(crate) const FDSTORE: &str = "FDSTORE";
pub(crate) const LISTEN_FDS: &str = "LISTEN_FDS";
pub(crate) const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
pub(crate) const LISTEN_PID: &str = "LISTEN_PID";
/// The first descriptor `LISTEN_FDS` counts from (`SD_LISTEN_FDS_START`).
pub(crate) const LISTEN_FDS_START: i32 = 3;

/// The service manager's notification socket, when it has a descriptor
/// store this server may keep its connections in.
#[derive(Debug)]
pub(crate) struct FdStore {
    sock: OwnedFd,
    addr: SocketAddrUnix,
}

impl FdStore {
    /// The store `$NOTIFY_SOCKET` and `$FDSTORE` describe, if they do
    /// (`FDSTORE` unset or `0`: the manager would drop what is sent).
    pub(crate) fn from_env() -> std::io::Result<Option<Self>> {
        let Some(path) = std::env::var_os(NOTIFY_SOCKET) else { return Ok(None) };
        let size = std::env::var(FDSTORE).ok().and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
        if size == 0 {
            return Ok(None);
        }
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddrUnix::new_abstract_name(name)?,
            None => SocketAddrUnix::new(bytes)?,
        };
        let sock = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )?;
        Ok(Some(FdStore { sock, addr }))
    }

    /// Sends `state` (newline-separated `KEY=value`s) with `fds`.
    pub(crate) fn notify(&self, state: &str, fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(std::io::Error::other("too many descriptors for one notification"));
        }
        let iov = [IoSlice::new(state.as_bytes())];
        rustix::net::sendmsg_addr(&self.sock, &self.addr, &iov, &mut control, SendFlags::NOSIGNAL)?;
        Ok(())
    }

    /// Keeps `fd` in the store under `name` (`FDSTORE=1`, `FDNAME=`).
    pub(crate) fn store(&self, name: &str, fd: impl AsFd) -> std::io::Result<()> {
        self.notify(&format!("FDSTORE=1\nFDNAME={name}\n"), &[fd.as_fd()])
    }

    /// Drops what the store keeps under `name` (`FDSTOREREMOVE=1`).
    pub(crate) fn remove(&self, name: &str) -> std::io::Result<()> {
        self.notify(&format!("FDSTOREREMOVE=1\nFDNAME={name}\n"), &[])
    }
}

/// The descriptors a service manager passed at this start, by name
/// (`sd_listen_fds_with_names`), each close-on-exec; the variables are
/// removed from the environment, as `unset_environment` does, so no child
/// takes them for its own. Empty when none were passed to this process
/// (`LISTEN_PID` names another).
pub(crate) fn listen_fds() -> Vec<(String, OwnedFd)> {
    let pid = std::env::var(LISTEN_PID).ok().and_then(|p| p.parse::<u32>().ok());
    let n = std::env::var(LISTEN_FDS).ok().and_then(|n| n.parse::<i32>().ok()).unwrap_or(0);
    let names = std::env::var(LISTEN_FDNAMES).unwrap_or_default();
    // SAFETY: called before this crate starts any thread (the server's
    // start, first thing); no other thread of ours reads the environment.
    unsafe {
        std::env::remove_var(LISTEN_PID);
        std::env::remove_var(LISTEN_FDS);
        std::env::remove_var(LISTEN_FDNAMES);
    }
    if pid != Some(std::process::id()) || n <= 0 {
        return Vec::new();
    }
    let mut names = names.split(':');
    (LISTEN_FDS_START..LISTEN_FDS_START.saturating_add(n))
        .filter_map(|raw| {
            let name = names.next().unwrap_or("unknown").to_owned();
            // SAFETY: the manager passed descriptors 3.. (LISTEN_FDS of
            // them) to this process (LISTEN_PID says so), and nothing here
            // took them before: each is owned from now on, once.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // Not inherited by whatever this process starts.
            match rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC) {
                Ok(()) => Some((name, fd)),
                Err(e) => {
                    tracing::warn!(fd = raw, "a passed descriptor is not usable ({e})");
                    std::mem::forget(fd);
                    None
                }
            }
        })
        .collect()
}
