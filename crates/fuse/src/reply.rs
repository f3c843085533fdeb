//! Writing replies (and notifications) to `/dev/fuse`.

use crate::abi;
use rustix::fd::AsFd;
use rustix::io::Errno;
use std::io::IoSlice;
use zerocopy::IntoBytes;

/// Writes one message: a header for `unique` with `error` (0, a negative
/// errno, or a notification code), then `parts`, in one `writev`.
pub(crate) fn send(fd: impl AsFd, unique: u64, error: i32, parts: &[&[u8]]) -> Result<(), Errno> {
    let len = 16 + parts.iter().map(|p| p.len()).sum::<usize>();
    let h = abi::OutHeader { len: len as u32, error, unique };
    let mut iov = Vec::with_capacity(parts.len() + 1);
    iov.push(IoSlice::new(h.as_bytes()));
    iov.extend(parts.iter().filter(|p| !p.is_empty()).map(|p| IoSlice::new(p)));
    let n = rustix::io::writev(fd, &iov)?;
    if n != len {
        return Err(Errno::IO);
    }
    Ok(())
}

/// Replies with data.
pub(crate) fn ok(fd: impl AsFd, unique: u64, parts: &[&[u8]]) {
    report(send(fd, unique, 0, parts));
}

/// Replies with an error.
pub(crate) fn err(fd: impl AsFd, unique: u64, e: Errno) {
    report(send(fd, unique, -e.raw_os_error(), &[]));
}

fn report(r: Result<(), Errno>) {
    match r {
        // ENOENT: the request was interrupted and is no longer waited for.
        Ok(()) | Err(Errno::NOENT) => {}
        Err(e) => tracing::debug!("reply: {e}"),
    }
}
