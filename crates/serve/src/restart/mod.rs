//! The restart path: a server's death is an unplug of every device, not
//! an outage of the mount.
//!
//! The kernel keeps a FUSE connection for as long as one descriptor of it
//! is open, whoever holds it. A restartable server therefore hands its
//! `/dev/fuse` descriptor, and a record of what the connection's `INIT`
//! settled ([`state`]), to a keeper that outlives it: systemd's descriptor
//! store when the service has one (`$NOTIFY_SOCKET` and `$FDSTORE`), else
//! the built-in [`keeper`] (`--supervise`). The next server is started
//! with both (`LISTEN_FDS`) and, instead of mounting, resumes the
//! connection ([`devlife_fuse::Session::resume`]):
//!
//! 1. It numbers its handles and inodes in the next generation (the top
//!    16 bits): a handle or inode the kernel still holds from the dead
//!    server names nothing here. A file opened from the dead server then
//!    answers as an open file of a removed device: `ENODEV` for read,
//!    write and ioctl, `POLLHUP | POLLERR` for poll; its release is
//!    answered and reaches no driver.
//! 2. It asks the kernel to send again every request the dead server read
//!    and did not answer (`FUSE_NOTIFY_RESEND`): each is answered as above,
//!    so no caller is left waiting for a server that is gone. This needs
//!    the requests to have been read through the kept descriptor itself
//!    (see [`devlife_fuse::Config::clone_devices`]).
//! 3. It wakes every poller the dead server left waiting (the kernel
//!    sleeps a `poll(2)` until its server sends a wake-up for the file's
//!    poll handle: [`PollHandles`]); each polls again and gets
//!    `POLLHUP | POLLERR`.
//! 4. It makes the kernel forget the names it cached from the dead server
//!    under the root (`dev`, `sys`, `debug`), so new opens look the tree up
//!    again and reach the new server's drivers.
//!
//! What clients see, per transport, is the table in
//! `docs/ARCHITECTURE.md`, "Restarts".

mod channels;
pub(crate) mod keeper;
mod pollers;
pub(crate) mod sd;
pub(crate) mod state;

pub(crate) use channels::Channels;
pub(crate) use pollers::PollHandles;
use rustix::fd::OwnedFd;
use sd::FdStore;
use state::State;
use std::collections::HashMap;
use std::sync::Arc;

/// The stored name of the `/dev/fuse` descriptor.
pub(crate) const FUSE_NAME: &str = "devlife-fuse";
/// The stored name of the [`state`] record's memory file.
pub(crate) const STATE_NAME: &str = "devlife-state";

/// How this server relates to earlier servers of its connection.
pub(crate) struct Restart {
    /// Where the connection is kept, if this server is restartable.
    store: Option<Arc<FdStore>>,
    /// What an earlier server kept: its connection and state.
    kept: Option<Kept>,
    /// Its CUSE channels, by device name.
    channels: HashMap<String, Kept>,
}

/// A connection (the FUSE one, or a CUSE channel) kept from an earlier
/// server, with its record.
pub(crate) struct Kept {
    pub(crate) fd: OwnedFd,
    pub(crate) state_fd: OwnedFd,
    pub(crate) state: State,
}

impl Restart {
    /// Reads this start's environment: the store, and what it passed.
    pub(crate) fn from_env() -> std::io::Result<Self> {
        let store = FdStore::from_env()?.map(Arc::new);
        let mut passed = sd::listen_fds();
        let mut take = |name: &str| passed.iter().position(|(n, _)| n == name).map(|i| passed.remove(i).1);
        let pair = |what: &str, fd: Option<OwnedFd>, state_fd: Option<OwnedFd>| match (
            store.is_some(),
            fd,
            state_fd,
        ) {
            (true, Some(fd), Some(state_fd)) => match State::read(&state_fd) {
                Ok(state) => Some(Kept { fd, state_fd, state }),
                Err(e) => {
                    tracing::warn!("not resuming the kept {what}: {e}");
                    None
                }
            },
            _ => None,
        };
        let kept = pair("connection", take(FUSE_NAME), take(STATE_NAME));
        // The CUSE channels: a descriptor and a record per device.
        let mut devices: HashMap<String, (Option<OwnedFd>, Option<OwnedFd>)> = HashMap::new();
        for (name, fd) in std::mem::take(&mut passed) {
            match channels::device_of(&name) {
                Some((device, is_state)) => {
                    let e = devices.entry(device.to_owned()).or_default();
                    if is_state { e.1 = Some(fd) } else { e.0 = Some(fd) }
                }
                None => passed.push((name, fd)),
            }
        }
        let channels = devices
            .into_iter()
            .filter_map(|(device, (fd, st))| {
                Some((device.clone(), pair(&format!("channel of {device}"), fd, st)?))
            })
            .collect();
        for (name, _) in &passed {
            tracing::debug!(name, "a passed descriptor that is not ours was closed");
        }
        Ok(Restart { store, kept, channels })
    }

    /// The CUSE channels: those kept by an earlier server, and where this
    /// server's are kept. `None` when this server is not restartable.
    pub(crate) fn channels(&mut self) -> Option<Channels> {
        let store = self.store.clone()?;
        Some(Channels::new(store, std::mem::take(&mut self.channels)))
    }

    /// Whether this server's connection outlives it.
    pub(crate) fn restartable(&self) -> bool {
        self.store.is_some()
    }

    /// The connection an earlier server kept, to resume.
    pub(crate) fn take_kept(&mut self) -> Option<Kept> {
        self.kept.take()
    }

    /// Keeps `fuse` and a new record of `state` in the store; returns the
    /// record's file, to rewrite at the next start.
    pub(crate) fn keep(&self, fuse: &OwnedFd, state: &State) -> std::io::Result<Option<OwnedFd>> {
        let Some(store) = &self.store else { return Ok(None) };
        let state_fd = state.create()?;
        store.store(FUSE_NAME, fuse)?;
        store.store(STATE_NAME, &state_fd)?;
        Ok(Some(state_fd))
    }

    /// Drops the kept connection from the store (a clean stop, or a
    /// connection that ended).
    pub(crate) fn forget(&self) {
        if let Some(store) = &self.store {
            for name in [FUSE_NAME, STATE_NAME] {
                if let Err(e) = store.remove(name) {
                    tracing::warn!(name, "cannot drop the kept descriptor: {e}");
                }
            }
        }
    }

    /// Tells the manager the server is serving (`READY=1`).
    pub(crate) fn ready(&self) {
        if let Some(store) = &self.store {
            if let Err(e) = store.notify("READY=1\n", &[]) {
                tracing::warn!("cannot tell the keeper the server is ready: {e}");
            }
        }
    }
}
