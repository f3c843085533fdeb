//! [`Channels`]: the CUSE channels of a restartable server, kept beside
//! its FUSE connection so that its `/dev` nodes outlive it.
//!
//! A CUSE device is registered for as long as one descriptor of its
//! channel is open (`cuse_channel_release` unregisters it at the last
//! close), so a channel kept in the store keeps the device, its name, its
//! number and its `/dev` entry through the server's death; the next server
//! serves it again ([`devlife_fuse::CuseDevice::resume`]). Each channel has
//! a [`State`] record of its own (its handles' generation, its highest
//! poll handle), as the FUSE connection has: the kernel numbers poll
//! handles per connection, and a channel is one.

use super::Kept;
use super::sd::FdStore;
use super::state::State;
use devlife_core::gate::sync::lock;
use rustix::fd::OwnedFd;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What the store names a channel's descriptor (`<CHANNEL_PREFIX><name>`)
/// and its record's (`<STATE_PREFIX><name>`).
const CHANNEL_PREFIX: &str = "devlife-cuse.";
const STATE_PREFIX: &str = "devlife-cuse-state.";

/// The stored names of device `name`'s channel and record; `None` for a
/// name the store cannot keep (systemd's `fdname_is_valid`: printable
/// ASCII, no `:`, at most 255 bytes in all).
fn stored_names(name: &str) -> Option<(String, String)> {
    let ok =
        name.bytes().all(|b| b.is_ascii_graphic() && b != b':') && STATE_PREFIX.len() + name.len() <= 255;
    ok.then(|| (format!("{CHANNEL_PREFIX}{name}"), format!("{STATE_PREFIX}{name}")))
}

/// The device a stored name is of, and whether it is the record's.
pub(super) fn device_of(stored: &str) -> Option<(&str, bool)> {
    match (stored.strip_prefix(STATE_PREFIX), stored.strip_prefix(CHANNEL_PREFIX)) {
        (Some(name), _) => Some((name, true)),
        (None, Some(name)) => Some((name, false)),
        (None, None) => None,
    }
}

/// The CUSE channels kept in the store: those an earlier server left, to
/// resume, and the means to keep and drop this server's.
pub(crate) struct Channels {
    store: Arc<FdStore>,
    /// Left by an earlier server and not resumed yet, by device name.
    kept: Mutex<HashMap<String, Kept>>,
}

impl Channels {
    pub(super) fn new(store: Arc<FdStore>, kept: HashMap<String, Kept>) -> Self {
        Channels { store, kept: Mutex::new(kept) }
    }

    /// The channel of device `name` an earlier server kept, if it did.
    pub(crate) fn take(&self, name: &str) -> Option<Kept> {
        lock(&self.kept).remove(name)
    }

    /// Every kept channel not taken: devices the earlier server had and
    /// this one does not.
    pub(crate) fn take_rest(&self) -> Vec<(String, Kept)> {
        lock(&self.kept).drain().collect()
    }

    /// Keeps device `name`'s `channel` and a new record of `state`;
    /// returns the record's file. `Ok(None)`: a name the store cannot
    /// keep (logged; the device then ends with this server, as without a
    /// keeper).
    pub(crate) fn keep(
        &self,
        name: &str,
        channel: &OwnedFd,
        state: &State,
    ) -> std::io::Result<Option<OwnedFd>> {
        let Some((ch, st)) = stored_names(name) else {
            tracing::warn!(
                device = name,
                "a CUSE device name the descriptor store cannot keep: it will not outlive this server"
            );
            return Ok(None);
        };
        let state_fd = state.create()?;
        self.store.store(&st, &state_fd)?;
        self.store.store(&ch, channel)?;
        Ok(Some(state_fd))
    }

    /// Drops device `name`'s channel and record from the store (the
    /// device is being removed). The keeper closes its descriptors soon
    /// after, not before this returns.
    pub(crate) fn forget(&self, name: &str) {
        let Some((ch, st)) = stored_names(name) else { return };
        for n in [ch, st] {
            if let Err(e) = self.store.remove(&n) {
                tracing::warn!(name = n, "cannot drop the kept descriptor: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_names_name_their_device_and_unkeepable_names_are_refused() {
        let (ch, st) = stored_names("xyz0").unwrap();
        assert_eq!(device_of(&ch), Some(("xyz0", false)));
        assert_eq!(device_of(&st), Some(("xyz0", true)));
        // A device named like the record's prefix is still told apart.
        let (ch, _) = stored_names("state.x").unwrap();
        assert_eq!(device_of(&ch), Some(("state.x", false)));
        assert_eq!(device_of("devlife-fuse"), None);
        assert!(stored_names("a:b").is_none());
        assert!(stored_names("caf\u{e9}").is_none());
        assert!(stored_names(&"x".repeat(250)).is_none());
    }
}
