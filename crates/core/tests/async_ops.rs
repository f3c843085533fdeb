//! Async file operations (`AsyncFileOperations`): a pending read holds no
//! thread, its result comes through `Pending`, and removal, release and
//! interrupts end every pending future by dropping it, before the
//! operations object goes.

use devlife_core::fops::{FileOperations, KResult, OpCtx};
use devlife_core::gate::sync::lock;
use devlife_core::gate::{CancelSource, WaitQueue};
use devlife_core::*;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

const C: Caller<'static> =
    Caller { creds: Credentials { uid: 0, gid: 0, pid: 0 }, nonblock: false, interrupt: None };

/// What the test watches: futures alive, polls, and whether the operations
/// object was dropped while a future of it lived.
#[derive(Default)]
struct Watch {
    alive: AtomicUsize,
    polls: AtomicUsize,
    ops_dropped: AtomicBool,
    dropped_with_futures: AtomicBool,
}

/// A future's share of `Watch`: counts itself alive until dropped.
struct Alive(Arc<Watch>);
impl Alive {
    fn new(w: &Arc<Watch>) -> Self {
        w.alive.fetch_add(1, Ordering::SeqCst);
        Alive(w.clone())
    }
}
impl Drop for Alive {
    fn drop(&mut self) {
        assert!(!self.0.ops_dropped.load(Ordering::SeqCst), "a future outlived its operations");
        self.0.alive.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Fifo {
    data: Mutex<VecDeque<u8>>,
    readable: WaitQueue,
    watch: Arc<Watch>,
}

impl Drop for Fifo {
    fn drop(&mut self) {
        if self.watch.alive.load(Ordering::SeqCst) != 0 {
            self.watch.dropped_with_futures.store(true, Ordering::SeqCst);
        }
        self.watch.ops_dropped.store(true, Ordering::SeqCst);
    }
}

impl FileOperations for Fifo {
    type File = ();
    fn open(&self, _: &OpCtx<'_>) -> KResult<()> {
        Ok(())
    }
    fn write(&self, _: &(), _: &OpCtx<'_>, data: &[u8], _: u64) -> KResult<usize> {
        lock(&self.data).extend(data);
        self.readable.wake_all();
        Ok(data.len())
    }
    fn ioctl(&self, _: &(), _: &OpCtx<'_>, _: &mut Ioctl<'_>) -> KResult<i64> {
        Ok(7)
    }
}

impl AsyncFileOperations for Fifo {
    async fn read_async(&self, _: &(), cx: &AsyncCtx, buf: &mut ReadBuf, _: u64) -> KResult<usize> {
        let _alive = Alive::new(&self.watch);
        loop {
            self.watch.polls.fetch_add(1, Ordering::SeqCst);
            {
                let mut q = lock(&self.data);
                if !q.is_empty() {
                    let n = buf.len().min(q.len());
                    let bytes: Vec<u8> = q.drain(..n).collect();
                    return Ok(buf.fill(&bytes));
                }
            }
            if cx.nonblock() {
                return Err(Errno::EAGAIN);
            }
            self.readable.wait_until(|| !lock(&self.data).is_empty()).await;
        }
    }

    async fn ioctl_async(&self, _: &(), _: &AsyncCtx, io: &mut Ioctl<'_>) -> KResult<i64> {
        let _alive = Alive::new(&self.watch);
        if io.cmd() == IoctlCmd::io(b'T', 9) {
            panic!("injected panic in an async handler");
        }
        // Waits until removed or interrupted.
        std::future::pending::<()>().await;
        Ok(0)
    }
}

fn setup() -> (System, CdevRegistration, Arc<Watch>) {
    let sys = System::new();
    let watch = Arc::new(Watch::default());
    let fifo = Fifo { data: Mutex::default(), readable: WaitQueue::new(), watch: watch.clone() };
    let reg =
        cdev_device_add(&sys, Cdev::new_async(fifo), DeviceNode::new("fifo", DevT::new(300, 0))).unwrap();
    (sys, reg, watch)
}

/// Starts a read of one byte; hands its result to a channel.
fn start_read(f: &File, caller: &Caller<'_>) -> mpsc::Receiver<KResult<Vec<u8>>> {
    let (tx, rx) = mpsc::channel();
    match f.read_start(Vec::new(), 1, 0, caller) {
        Started::Done(r) => tx.send(r).unwrap(),
        Started::Pending(p) => p.on_complete(move |r| {
            let _ = tx.send(r);
        }),
    }
    rx
}

const HANG: Duration = Duration::from_secs(60);

#[test]
fn a_pending_read_holds_no_thread_and_completes_when_data_comes() {
    let (_sys, reg, watch) = setup();
    let f = reg.node().unwrap().open(&C).unwrap();
    let readers: Vec<_> = (0..100).map(|_| start_read(&f, &C)).collect();
    // All 100 returned to this thread, pending: no thread waits for them.
    assert_eq!(watch.alive.load(Ordering::SeqCst), 100);
    assert!(readers.iter().all(|r| r.try_recv().is_err()), "none has a result yet");
    assert_eq!(reg.node().unwrap().inside(), 0, "no handler is inside the gate while pending");
    f.write(&[1u8; 100], 0, &C).unwrap();
    let got: usize = readers.iter().map(|r| r.recv_timeout(HANG).unwrap().unwrap().len()).sum();
    assert_eq!(got, 100, "every byte reached exactly one reader");
    assert_eq!(watch.alive.load(Ordering::SeqCst), 0, "every future was dropped at completion");
}

#[test]
fn data_present_completes_in_the_first_poll() {
    let (_sys, reg, _watch) = setup();
    let f = reg.node().unwrap().open(&C).unwrap();
    f.write(b"abc", 0, &C).unwrap();
    match f.read_start(Vec::new(), 8, 0, &C) {
        Started::Done(r) => assert_eq!(r.unwrap(), b"abc"),
        Started::Pending(_) => panic!("data was there: no deferral"),
    }
    // The blocking API over an async driver.
    f.write(b"de", 0, &C).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(f.read(&mut buf, 0, &C), Ok(2));
    assert_eq!(&buf[..2], b"de");
    let nb = Caller { nonblock: true, ..C };
    assert_eq!(f.read(&mut buf, 0, &nb), Err(Errno::EAGAIN));
}

#[test]
fn removal_drops_every_pending_future_and_answers_enodev() {
    let (sys, reg, watch) = setup();
    let node = reg.node().unwrap();
    let files: Vec<_> = (0..4).map(|_| node.open(&C).unwrap()).collect();
    let readers: Vec<_> = files.iter().flat_map(|f| (0..25).map(|_| start_read(f, &C))).collect();
    let waits: Vec<_> = files
        .iter()
        .map(|f| {
            let call = IoctlCall {
                compat: false,
                cmd: IoctlCmd::io(b'T', 1),
                arg: 0,
                input: &[],
                unrestricted: None,
            };
            let (tx, rx) = mpsc::channel();
            match f.ioctl_start(call, Vec::new(), &C) {
                Started::Done(r) => tx.send(r.map(|d| d.outcome)).unwrap(),
                Started::Pending(p) => p.on_complete(move |r| {
                    let _ = tx.send(r.map(|d| d.outcome));
                }),
            }
            rx
        })
        .collect();
    assert_eq!(watch.alive.load(Ordering::SeqCst), 104);
    let polls = watch.polls.load(Ordering::SeqCst);
    assert!(reg.remove() == Removed::Complete);
    // When the removal returns: every future dropped, and the operations
    // object (dropped last) saw none alive.
    assert_eq!(watch.alive.load(Ordering::SeqCst), 0);
    assert!(watch.ops_dropped.load(Ordering::SeqCst));
    assert!(!watch.dropped_with_futures.load(Ordering::SeqCst));
    for r in &readers {
        assert_eq!(r.recv_timeout(HANG).unwrap(), Err(Errno::ENODEV));
    }
    for w in &waits {
        assert_eq!(w.recv_timeout(HANG).unwrap(), Err(Errno::ENODEV));
    }
    assert_eq!(watch.polls.load(Ordering::SeqCst), polls, "nothing polled the futures at removal");
    // After it: nothing starts.
    assert!(matches!(files[0].read_start(Vec::new(), 1, 0, &C), Started::Done(Err(Errno::ENODEV))));
    drop(sys);
}

#[test]
fn an_interrupt_drops_the_future_and_answers_eintr() {
    let (_sys, reg, watch) = setup();
    let f = reg.node().unwrap().open(&C).unwrap();
    let intr = Arc::new(CancelSource::new());
    let other = start_read(&f, &C);
    let rx = start_read(&f, &Caller { interrupt: Some(&intr), ..C });
    assert_eq!(watch.alive.load(Ordering::SeqCst), 2);
    intr.cancel();
    assert_eq!(rx.recv_timeout(HANG).unwrap(), Err(Errno::EINTR));
    assert_eq!(watch.alive.load(Ordering::SeqCst), 1, "only the interrupted future was dropped");
    // An interrupt that fired before the first poll: EINTR at once.
    let fired = Arc::new(CancelSource::new());
    fired.cancel();
    let rx = start_read(&f, &Caller { interrupt: Some(&fired), ..C });
    assert_eq!(rx.recv_timeout(HANG).unwrap(), Err(Errno::EINTR));
    f.write(b"x", 0, &C).unwrap();
    assert_eq!(other.recv_timeout(HANG).unwrap().unwrap(), b"x");
}

#[test]
fn the_last_close_drops_the_files_pending_futures() {
    let (_sys, reg, watch) = setup();
    let node = reg.node().unwrap();
    let (a, b) = (node.open(&C).unwrap(), node.open(&C).unwrap());
    let ra = start_read(&a, &C);
    let rb = start_read(&b, &C);
    drop(a);
    assert_eq!(ra.recv_timeout(HANG).unwrap(), Err(Errno::ENODEV));
    assert_eq!(watch.alive.load(Ordering::SeqCst), 1, "the other file's future lives on");
    b.write(b"y", 0, &C).unwrap();
    assert_eq!(rb.recv_timeout(HANG).unwrap().unwrap(), b"y");
}

#[test]
fn a_panicking_async_handler_fails_its_request_with_eio() {
    quiet_handler_panics();
    let (_sys, reg, watch) = setup();
    let f = reg.node().unwrap().open(&C).unwrap();
    let mut out = Vec::new();
    assert_eq!(f.ioctl(IoctlCmd::io(b'T', 9), 0, &[], &mut out, &C), Err(Errno::EIO));
    assert_eq!(watch.alive.load(Ordering::SeqCst), 0);
    // The device lives on.
    f.write(b"z", 0, &C).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(f.read(&mut buf, 0, &C), Ok(1));
}
