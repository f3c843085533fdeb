//! [`WaitUntil`]: the future of [`WaitQueue::wait_until`], a wait on a
//! queue that holds no thread.

use crate::task::WakerWake;
use crate::wait::{WaitQueue, Wake};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

/// One-shot keys of pending futures: the top bit set, so they never equal
/// a poll subscription's key (a file's id, counted from 1).
static NEXT_KEY: AtomicU64 = AtomicU64::new(1 << 63);

impl WaitQueue {
    /// Waits, without a thread, until `cond()` holds: the future checks
    /// `cond` each time it is polled, and between polls sits on this queue
    /// as a one-shot entry that [`wake_all`](Self::wake_all) wakes.
    ///
    /// The future of an async handler's wait (the asynchronous
    /// `wait_event`). It is not cancellable by itself: cancelling is
    /// dropping it, which the framework does at removal and at an
    /// interrupt, and which takes its entry off the queue.
    ///
    /// # Examples
    ///
    /// ```
    /// use devlife_gate::WaitQueue;
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::task::{Context, Poll, Waker};
    ///
    /// let (wq, ready) = (WaitQueue::new(), AtomicBool::new(false));
    /// let mut w = std::pin::pin!(wq.wait_until(|| ready.load(Ordering::Acquire)));
    /// let mut cx = Context::from_waker(Waker::noop());
    /// assert!(w.as_mut().poll(&mut cx).is_pending());
    /// ready.store(true, Ordering::Release);
    /// wq.wake_all();
    /// assert!(w.as_mut().poll(&mut cx).is_ready());
    /// ```
    pub fn wait_until<C: FnMut() -> bool>(&self, cond: C) -> WaitUntil<'_, C> {
        WaitUntil { wq: self, cond, key: None }
    }
}

/// The future of [`WaitQueue::wait_until`].
#[must_use = "a future does nothing unless awaited"]
pub struct WaitUntil<'a, C> {
    wq: &'a WaitQueue,
    cond: C,
    /// The one-shot entry's key, once subscribed.
    key: Option<u64>,
}

// `cond` is never pinned: the future holds no self-reference.
impl<C> Unpin for WaitUntil<'_, C> {}

impl<C: FnMut() -> bool> Future for WaitUntil<'_, C> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if (this.cond)() {
            return Poll::Ready(());
        }
        let key = *this.key.get_or_insert_with(|| NEXT_KEY.fetch_add(1, Ordering::Relaxed));
        // Subscribed, then checked again: a change made before the
        // subscription is seen by the check; one made after it wakes the
        // entry (the changer's `wake_all` takes the entries after the
        // change).
        let w: Arc<dyn Wake> = Arc::new(WakerWake(cx.waker().clone()));
        this.wq.subscribe_once(key, w);
        if (this.cond)() { Poll::Ready(()) } else { Poll::Pending }
    }
}

impl<C> Drop for WaitUntil<'_, C> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.wq.unsubscribe(key);
        }
    }
}
