//! [`PageBuf`]: request buffers mapped from the kernel, not the allocator.
//!
//! Each worker needs a buffer as large as the largest request (`max_write`
//! plus headers, 132 KiB here) for the whole of its life, although most
//! requests use one page of it. Taken from `malloc`, such buffers are
//! zeroed page by page (every page becomes resident), and once freed their
//! memory stays in the allocator's arenas; a pool whose workers come and go
//! then makes the server's resident size creep (seen in `devlife leaks`).
//! A private anonymous mapping costs resident memory only for the pages a
//! request touched, and goes back to the kernel whole when dropped.

use rustix::mm::{MapFlags, ProtFlags, mmap_anonymous, munmap};
use std::ptr::NonNull;

/// A zero-filled, page-aligned, read-write buffer of its own mapping.
///
/// # Invariants
///
/// `ptr` is the start of a private anonymous mapping of `len` bytes,
/// readable and writable, owned by this value and unmapped by its drop.
pub(crate) struct PageBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by the value (as a `Box<[u8]>` would be);
// moving it to another thread moves that ownership.
unsafe impl Send for PageBuf {}
// SAFETY: `&PageBuf` gives only shared access (`as_ptr`, `len`); every
// mutation goes through `&mut self`.
unsafe impl Sync for PageBuf {}

impl PageBuf {
    /// Maps `len` bytes (rounded up to whole pages).
    pub(crate) fn new(len: usize) -> std::io::Result<Self> {
        let page = rustix::param::page_size();
        let len = len.max(1).next_multiple_of(page);
        // SAFETY: a fresh anonymous mapping at an address the kernel picks
        // aliases no existing memory.
        let p = unsafe {
            mmap_anonymous(std::ptr::null_mut(), len, ProtFlags::READ | ProtFlags::WRITE, MapFlags::PRIVATE)
        }?;
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| std::io::Error::other("mmap returned null"))?;
        // INVARIANT: `ptr` maps `len` read-write bytes, owned by the new value.
        Ok(PageBuf { ptr, len })
    }

    /// The start of the buffer, for handing to the kernel.
    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The whole buffer.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: by the type invariants `ptr` maps `len` initialised
        // (zero-filled or since written) read-write bytes owned by `self`,
        // and `&mut self` makes this the only reference to them.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for PageBuf {
    fn drop(&mut self) {
        // SAFETY: by the type invariants the mapping is ours and no
        // reference into it outlives `self`.
        if let Err(e) = unsafe { munmap(self.ptr.as_ptr().cast(), self.len) } {
            tracing::error!("munmap of a request buffer: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_writable_and_page_rounded() {
        let mut b = PageBuf::new(10).unwrap();
        assert_eq!(b.as_mut_slice().len(), rustix::param::page_size());
        assert!(b.as_mut_slice().iter().all(|&x| x == 0));
        b.as_mut_slice()[9] = 7;
        assert_eq!(b.as_mut_slice()[9], 7);
    }
}
