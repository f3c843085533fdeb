//! Async handlers awaiting tokio: a timer (`tokio::time::sleep`, which
//! needs the runtime's context around each poll: `set_poll_context` with
//! the runtime's `Handle`, the core's `tokio` feature) and a channel
//! (`tokio::sync::mpsc`). Removal drops a future parked on tokio's timer
//! like any other.

use devlife_core::fops::{FileOperations, KResult, OpCtx};
use devlife_core::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

const C: Caller<'static> =
    Caller { creds: Credentials { uid: 0, gid: 0, pid: 0 }, nonblock: false, interrupt: None };
const SLEEP: IoctlCmd = IoctlCmd::io(b'K', 1);
const HANG: Duration = Duration::from_secs(60);

/// A device fed by a tokio task: `read` takes the next message of a tokio
/// channel; ioctl `SLEEP` waits on tokio's timer for 10 ms, or for an
/// hour with argument 1.
struct Feed {
    rx: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Vec<u8>>>,
    timers_dropped: Arc<AtomicUsize>,
}

impl FileOperations for Feed {
    type File = ();
    fn open(&self, _: &OpCtx<'_>) -> KResult<()> {
        Ok(())
    }
}

/// Counts a timer future dropped before it fired.
struct Armed(Arc<AtomicUsize>, bool);
impl Drop for Armed {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl AsyncFileOperations for Feed {
    async fn read_async(&self, _: &(), _: &AsyncCtx, buf: &mut ReadBuf, _: u64) -> KResult<usize> {
        // Cancel-safe: `recv` takes a message only when it completes.
        let msg = self.rx.lock().await.recv().await.ok_or(Errno::EIO)?;
        Ok(buf.fill(&msg))
    }

    async fn ioctl_async(&self, _: &(), _: &AsyncCtx, io: &mut Ioctl<'_>) -> KResult<i64> {
        if io.cmd() != SLEEP {
            return Err(Errno::ENOTTY);
        }
        let mut armed = Armed(self.timers_dropped.clone(), false);
        let d = if io.arg() == 1 { Duration::from_secs(3600) } else { Duration::from_millis(10) };
        tokio::time::sleep(d).await;
        armed.1 = true;
        Ok(7)
    }
}

fn pending_ioctl(f: &File, arg: u64) -> mpsc::Receiver<KResult<IoctlOutcome>> {
    let (tx, rx) = mpsc::channel();
    let call = IoctlCall { compat: false, cmd: SLEEP, arg, input: &[], unrestricted: None };
    match f.ioctl_start(call, Vec::new(), &C) {
        Started::Done(r) => tx.send(r.map(|d| d.outcome)).unwrap(),
        Started::Pending(p) => p.on_complete(move |r| {
            let _ = tx.send(r.map(|d| d.outcome));
        }),
    }
    rx
}

#[test]
fn handlers_await_a_tokio_timer_and_a_tokio_channel() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_time().build().unwrap();
    assert!(exec::set_poll_context(rt.handle().clone()).is_ok());
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let dropped = Arc::new(AtomicUsize::new(0));
    let feed = Feed { rx: tokio::sync::Mutex::new(rx), timers_dropped: dropped.clone() };
    let sys = System::new();
    let reg =
        cdev_device_add(&sys, Cdev::new_async(feed), DeviceNode::new("feed", DevT::new(300, 0))).unwrap();
    let node = reg.node().unwrap();
    let f = node.open(&C).unwrap();

    // The timer: pending (no thread waits for it), then done.
    let short = pending_ioctl(&f, 0);
    assert_eq!(short.recv_timeout(HANG).unwrap(), Ok(IoctlOutcome::Done(7)));

    // The channel: a read waits until a tokio task sends.
    let (rtx, rrx) = mpsc::channel();
    match f.read_start(Vec::new(), 16, 0, &C) {
        Started::Done(r) => panic!("nothing was sent yet: {r:?}"),
        Started::Pending(p) => p.on_complete(move |r| rtx.send(r).unwrap()),
    }
    assert_eq!(node.pending(), 1);
    rt.spawn(async move { tx.send(b"from tokio".to_vec()).await.unwrap() });
    assert_eq!(rrx.recv_timeout(HANG).unwrap().unwrap(), b"from tokio");

    // Removal while a future sits on tokio's timer: dropped, ENODEV.
    let long = pending_ioctl(&f, 1);
    assert_eq!(node.pending(), 1);
    assert!(reg.remove() == Removed::Complete);
    assert_eq!(dropped.load(Ordering::SeqCst), 1, "the timer future was dropped by the removal");
    assert_eq!(long.recv_timeout(HANG).unwrap(), Err(Errno::ENODEV));
}
