//! What one server of a connection leaves for the next: a record in a
//! memory file kept beside the connection (stored as
//! [`STATE_NAME`](super::STATE_NAME)), read and rewritten at each start.
//!
//! The kernel sends `INIT` once per connection, so what it settled
//! ([`Negotiated`]) must outlive the server that answered it; and every
//! server numbers its handles and inodes in a generation of its own, so
//! that no number the kernel still holds from an earlier server ever names
//! an object of this one.

use devlife_fuse::Negotiated;
use rustix::fd::OwnedFd;

/// `b"devlife\x01"`: the record's magic and layout version.
const MAGIC: [u8; 8] = *b"devlife\x01";
/// The record's size: magic, generation (u16), max_pages (u16), max_write
/// (u32), ring (u8), padding, then the highest poll handle (u64).
const LEN: usize = 32;
/// Where the highest poll handle is, rewritten alone as it grows.
const MAX_KH_AT: u64 = 24;

/// The generations a connection can have: the top 16 bits of every handle
/// and inode number.
pub(crate) const LAST_GENERATION: u16 = u16::MAX;

/// One record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct State {
    /// The generation of the server that wrote it.
    pub(crate) generation: u16,
    /// What INIT settled.
    pub(crate) negotiated: Negotiated,
    /// The highest poll handle (`kh`) the kernel gave any server of the
    /// connection: the kernel numbers them from 1, one per polled file,
    /// so every poller a dead server left waiting has one up to this.
    pub(crate) max_kh: u64,
}

/// Why a kept record cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StateError {
    #[error("reading the kept state: {0}")]
    Io(#[from] std::io::Error),
    #[error("the kept state is not a devlife record of this version")]
    Foreign,
}

impl State {
    fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&self.generation.to_le_bytes());
        b[10..12].copy_from_slice(&self.negotiated.max_pages.to_le_bytes());
        b[12..16].copy_from_slice(&self.negotiated.max_write.to_le_bytes());
        b[16] = self.negotiated.ring as u8;
        b[24..32].copy_from_slice(&self.max_kh.to_le_bytes());
        b
    }

    fn decode(b: &[u8; LEN]) -> Result<Self, StateError> {
        if b[..8] != MAGIC || b[16] > 1 {
            return Err(StateError::Foreign);
        }
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Ok(State {
            generation: u16_at(8),
            negotiated: Negotiated {
                max_pages: u16_at(10),
                max_write: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
                ring: b[16] == 1,
            },
            max_kh: u64::from_le_bytes(b[24..32].try_into().map_err(|_| StateError::Foreign)?),
        })
    }

    /// A new memory file holding this record.
    pub(crate) fn create(&self) -> std::io::Result<OwnedFd> {
        let fd = rustix::fs::memfd_create("devlife-state", rustix::fs::MemfdFlags::CLOEXEC)?;
        self.write(&fd)?;
        Ok(fd)
    }

    /// Rewrites the record in `fd` (the same file the keeper holds).
    pub(crate) fn write(&self, fd: &OwnedFd) -> std::io::Result<()> {
        let b = self.encode();
        let n = rustix::io::pwrite(fd, &b, 0)?;
        if n != LEN {
            return Err(std::io::Error::other("short write of the kept state"));
        }
        Ok(())
    }

    /// Records in `fd` that the kernel gave poll handle `max_kh` (the
    /// highest yet).
    pub(crate) fn write_max_kh(fd: &OwnedFd, max_kh: u64) -> std::io::Result<()> {
        rustix::io::pwrite(fd, &max_kh.to_le_bytes(), MAX_KH_AT)?;
        Ok(())
    }

    /// The record in `fd`.
    pub(crate) fn read(fd: &OwnedFd) -> Result<Self, StateError> {
        let mut b = [0u8; LEN];
        let n = rustix::io::pread(fd, &mut b, 0).map_err(std::io::Error::from)?;
        if n != LEN {
            return Err(StateError::Foreign);
        }
        Self::decode(&b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_as_written_and_anything_else_is_refused() {
        let s = State {
            generation: 7,
            negotiated: Negotiated { max_write: 131072, max_pages: 32, ring: true },
            max_kh: 3,
        };
        let fd = s.create().unwrap();
        assert_eq!(State::read(&fd).unwrap(), s);
        let next = State { generation: 8, ..s };
        next.write(&fd).unwrap();
        assert_eq!(State::read(&fd).unwrap(), next);
        State::write_max_kh(&fd, 99).unwrap();
        assert_eq!(State::read(&fd).unwrap(), State { max_kh: 99, ..next });
        rustix::io::pwrite(&fd, b"not-ours", 0).unwrap();
        assert!(matches!(State::read(&fd), Err(StateError::Foreign)));
        let empty = rustix::fs::memfd_create("empty", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        assert!(matches!(State::read(&empty), Err(StateError::Foreign)));
    }
}
