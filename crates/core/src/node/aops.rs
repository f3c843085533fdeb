//! The async operations of a node whose driver implements
//! [`AsyncFileOperations`]: one entry per operation, made into a
//! [`Task`](super::task) with the memory its future borrows.
//!
//! A node registered with [`Cdev::new_async`](crate::Cdev::new_async)
//! keeps a table of these entries ([`AsyncOps`]), filled in where the
//! driver's type is known to implement the trait; a blocking node has
//! none, and its operations run as they always did.

use super::task::{Started, start};
use super::{Node, OpenState};
use crate::afops::{AsyncCtx, AsyncFileOperations, ReadBuf};
use crate::errno::Errno;
use crate::fops::{Caller, FileOperations, Ioctl};
use crate::ioctl::IoctlCmd;
use crate::uaccess::{IoctlLayout, IoctlOutcome, Round};
use std::sync::Arc;

/// How one ioctl reaches a file: its command and argument, the memory the
/// transport copied in, and, for a transport that can fetch the caller's
/// memory (CUSE), the room it will copy back.
#[derive(Debug, Clone, Copy)]
pub struct IoctlCall<'a> {
    /// From a 32-bit process (reaches `compat_ioctl`).
    pub compat: bool,
    /// The command.
    pub cmd: IoctlCmd,
    /// The raw argument.
    pub arg: u64,
    /// What the transport copied in: the encoded input (restricted), or
    /// everything fetched so far (unrestricted).
    pub input: &'a [u8],
    /// `Some(out_room)` for an unrestricted round (see
    /// [`File::ioctl_unrestricted`](crate::File::ioctl_unrestricted)).
    pub unrestricted: Option<usize>,
}

/// A finished ioctl: how it ended, and the output to copy back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoctlDone {
    /// The result, or (unrestricted) the memory to fetch first.
    pub outcome: IoctlOutcome,
    /// The output: the argument's, then each written region's.
    pub output: Vec<u8>,
}

type ReadFn<F> = fn(&Arc<Node<F>>, &Arc<OpenState<F>>, &Caller<'_>, Vec<u8>, usize, u64) -> Started<Vec<u8>>;
type WriteFn<F> = fn(&Arc<Node<F>>, &Arc<OpenState<F>>, &Caller<'_>, &[u8], u64) -> Started<usize>;
type IoctlFn<F> = fn(
    &Arc<Node<F>>,
    &Arc<OpenState<F>>,
    &Caller<'_>,
    IoctlCall<'_>,
    IoctlLayout,
    Vec<u8>,
) -> Started<IoctlDone>;

/// The async entries of a node's driver.
pub(crate) struct AsyncOps<F: FileOperations> {
    pub(super) read: ReadFn<F>,
    pub(super) write: WriteFn<F>,
    pub(super) ioctl: IoctlFn<F>,
}

impl<F: FileOperations> Clone for AsyncOps<F> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<F: FileOperations> Copy for AsyncOps<F> {}

impl<F: AsyncFileOperations> AsyncOps<F> {
    /// The table for `F`.
    pub(crate) fn of() -> Self {
        AsyncOps { read: read::<F>, write: write::<F>, ioctl: ioctl::<F> }
    }
}

struct ReadFrame {
    cx: AsyncCtx,
    buf: ReadBuf,
}

fn read<F: AsyncFileOperations>(
    node: &Arc<Node<F>>,
    st: &Arc<OpenState<F>>,
    caller: &Caller<'_>,
    buf: Vec<u8>,
    len: usize,
    offset: u64,
) -> Started<Vec<u8>> {
    start(
        node,
        st,
        caller,
        "read",
        |cx| ReadFrame { cx, buf: ReadBuf::new(buf, len) },
        move |ops, file, fr| {
            Box::pin(async move {
                let ReadFrame { cx, buf } = fr;
                let n = ops.read_async(file, cx, buf, offset).await?;
                // A driver claiming more than the buffer holds is a driver bug.
                if n > buf.len() {
                    return Err(Errno::EIO);
                }
                Ok(std::mem::take(buf).into_data(n))
            })
        },
    )
}

struct WriteFrame {
    cx: AsyncCtx,
    data: Vec<u8>,
}

fn write<F: AsyncFileOperations>(
    node: &Arc<Node<F>>,
    st: &Arc<OpenState<F>>,
    caller: &Caller<'_>,
    data: &[u8],
    offset: u64,
) -> Started<usize> {
    // Copied: the transport's buffer is reused once the request is deferred.
    let data = data.to_vec();
    start(
        node,
        st,
        caller,
        "write",
        |cx| WriteFrame { cx, data },
        move |ops, file, fr| {
            Box::pin(async move {
                let WriteFrame { cx, data } = fr;
                let n = ops.write_async(file, cx, data, offset).await?;
                if n > data.len() { Err(Errno::EIO) } else { Ok(n) }
            })
        },
    )
}

struct IoctlFrame {
    cx: AsyncCtx,
    /// What the transport copied in (owned: see `write`).
    fetched: Vec<u8>,
    handler_out: Vec<u8>,
}

fn ioctl<F: AsyncFileOperations>(
    node: &Arc<Node<F>>,
    st: &Arc<OpenState<F>>,
    caller: &Caller<'_>,
    call: IoctlCall<'_>,
    layout: IoctlLayout,
    mut output: Vec<u8>,
) -> Started<IoctlDone> {
    let IoctlCall { compat, cmd, arg, input, unrestricted } = call;
    output.clear();
    let round = match unrestricted {
        None => None,
        Some(out_room) => match Round::prepare(arg, layout, input.len(), out_room) {
            Ok(r) => Some(r),
            Err(early) => return Started::Done(early.map(|outcome| IoctlDone { outcome, output })),
        },
    };
    let fetched = input.to_vec();
    let frame = |cx| IoctlFrame { cx, fetched, handler_out: output };
    start(node, st, caller, if compat { "compat_ioctl" } else { "ioctl" }, frame, move |ops, file, fr| {
        Box::pin(async move {
            let IoctlFrame { cx, fetched, handler_out } = fr;
            let mut io = match &round {
                Some(round) => round.ioctl(cmd, arg, fetched, handler_out),
                None => Ioctl::new(cmd, arg, fetched, handler_out),
            };
            io.set_compat(compat);
            let r = ops.ioctl_async(file, cx, &mut io).await;
            let named = io.take_named();
            match round {
                None => r.map(|r| IoctlDone {
                    outcome: IoctlOutcome::Done(r),
                    output: std::mem::take(handler_out),
                }),
                Some(round) => {
                    let mut output = Vec::new();
                    let outcome = round.finish(
                        named,
                        r,
                        &fetched[..round.base_in],
                        std::mem::take(handler_out),
                        &mut output,
                    )?;
                    Ok(IoctlDone { outcome, output })
                }
            }
        })
    })
}
