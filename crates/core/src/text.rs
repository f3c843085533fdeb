//! Text files from `show`/`store` functions: the file operations of device
//! attributes and of debugfs's typed helpers (Linux `simple_attr`).

use crate::errno::Errno;
use crate::fops::{FileOperations, KResult, Llseek, OpCtx, simple_read_from_buffer};
use devlife_gate::sync::lock;
use std::sync::Mutex;

/// Renders the file's text.
pub type ShowFn = Box<dyn Fn() -> KResult<String> + Send + Sync>;
/// Parses a write (the whole text written at offset 0, trailing newline kept).
pub type StoreFn = Box<dyn Fn(&str) -> KResult<()> + Send + Sync>;

/// File operations over a `show` and an optional `store` function.
///
/// A read at offset 0 renders the text and keeps it for the reads that
/// follow on the same open file, so `cat` sees one consistent value even
/// when it reads in pieces. A write must start at offset 0 and be at most
/// one page (4096 bytes), as for sysfs; it is passed to `store` whole.
pub struct TextFile {
    show: ShowFn,
    store: Option<StoreFn>,
}

/// Longest accepted write, as sysfs's one page.
pub const STORE_MAX: usize = 4096;

impl TextFile {
    /// A read-only text file.
    pub fn read_only(show: impl Fn() -> KResult<String> + Send + Sync + 'static) -> Self {
        TextFile { show: Box::new(show), store: None }
    }

    /// A read-write text file.
    pub fn read_write(
        show: impl Fn() -> KResult<String> + Send + Sync + 'static,
        store: impl Fn(&str) -> KResult<()> + Send + Sync + 'static,
    ) -> Self {
        TextFile { show: Box::new(show), store: Some(Box::new(store)) }
    }
}

impl FileOperations for TextFile {
    /// The rendered text, once read at offset 0.
    type File = Mutex<Option<String>>;

    /// Seekable, as sysfs and debugfs files are: `cat` reads to the end.
    const LLSEEK: Llseek = Llseek::Default;

    fn open(&self, _cx: &OpCtx<'_>) -> KResult<Self::File> {
        Ok(Mutex::new(None))
    }

    fn read(&self, file: &Self::File, _cx: &OpCtx<'_>, buf: &mut [u8], offset: u64) -> KResult<usize> {
        let mut snap = lock(file);
        if offset == 0 || snap.is_none() {
            *snap = Some((self.show)()?);
        }
        Ok(simple_read_from_buffer(buf, offset, snap.as_deref().unwrap_or_default().as_bytes()))
    }

    fn write(&self, _file: &Self::File, _cx: &OpCtx<'_>, data: &[u8], offset: u64) -> KResult<usize> {
        let store = self.store.as_ref().ok_or(Errno::EACCES)?;
        if offset != 0 || data.len() > STORE_MAX {
            return Err(Errno::EINVAL);
        }
        let text = std::str::from_utf8(data).map_err(|_| Errno::EINVAL)?;
        store(text)?;
        Ok(data.len())
    }
}
