//! The async form of [`AsyncResult`]: it is [`IntoFuture`], giving a
//! [`TaskFuture`] that a waker drives, on any runtime.
//!
//! Who wakes it: the thread that finishes the task today (a worker's
//! reader thread, or the supervisor when a worker dies or times out) sends
//! the outcome and then wakes the job's [`WakeSlot`](crate::wake::WakeSlot);
//! a stop (`shutdown`, `terminate`, Ctrl-C) wakes every pending future
//! through the pool's stop set. No thread waits for a future and nothing
//! polls on a timer.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use crossbeam_channel::TryRecvError;
use procpool_ipc::task::Payload;

use crate::{AsyncResult, Error};

/// The future of one [`Pool::submit`](crate::Pool::submit): what
/// `.await` on an [`AsyncResult`] runs.
///
/// It blocks no thread: the pool's own threads wake it when the result
/// arrives or the pool stops, so it works on any async runtime (tokio,
/// async-std, smol, a hand-written executor).
///
/// **Dropping it before it completes cancels the task** if the task has
/// not been sent to a worker yet: the task never runs and counts as
/// `cancelled` in [`Stats`](crate::Stats). A task already running goes on
/// to the end; its result is discarded and it counts as `cancelled` too.
/// (Dropping the [`AsyncResult`] itself, never turned into a future, does
/// not cancel anything, as before.)
///
/// ```rust,standalone_crate
/// use procpool::{Pool, Registry, Task};
///
/// const SQUARE: Task<u64, u64> = Task::new("square");
///
/// fn main() -> Result<(), procpool::Error> {
///     procpool::init(Registry::new().task(SQUARE, |x| x * x));
///     let pool = Pool::new(2)?;
///     let pending = pool.submit(SQUARE, 7)?;
///     // Any executor will do; this one is the smallest.
///     let squared = block_on(async { pending.await })?;
///     assert_eq!(squared, 49);
///     Ok(())
/// }
/// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     use std::sync::Arc;
/// #     use std::task::{Context, Poll, Wake};
/// #     struct Unpark(std::thread::Thread);
/// #     impl Wake for Unpark {
/// #         fn wake(self: Arc<Self>) { self.0.unpark() }
/// #     }
/// #     let waker = Arc::new(Unpark(std::thread::current())).into();
/// #     let mut cx = Context::from_waker(&waker);
/// #     let mut f = std::pin::pin!(f);
/// #     loop {
/// #         match f.as_mut().poll(&mut cx) {
/// #             Poll::Ready(v) => return v,
/// #             Poll::Pending => std::thread::park(),
/// #         }
/// #     }
/// # }
/// ```
#[must_use = "a future does nothing unless awaited; dropping it cancels the task"]
pub struct TaskFuture<O> {
    inner: AsyncResult<O>,
    /// This future's key in the pool's stop set, once registered.
    stop_key: Option<u64>,
    done: bool,
}

impl<O> fmt::Debug for TaskFuture<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskFuture")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

// Nothing in it is ever pinned: the output is only moved out once ready.
impl<O> Unpin for TaskFuture<O> {}

impl<O: Payload> IntoFuture for AsyncResult<O> {
    type Output = Result<O, Error>;
    type IntoFuture = TaskFuture<O>;

    /// The future of this result: `pool.submit(TASK, x)?.await`.
    fn into_future(self) -> TaskFuture<O> {
        TaskFuture {
            inner: self,
            stop_key: None,
            done: false,
        }
    }
}

impl<O: Payload> TaskFuture<O> {
    /// Settles the result if it is here, the job is gone, or the pool
    /// stopped; whether it is settled.
    fn check(&mut self) -> bool {
        let inner = &mut self.inner;
        if inner.result.is_some() {
            return true;
        }
        // After a stop too: every task ends within the grace period, with
        // its result or failed (`Interrupted`, `Terminated`), and its
        // outcome wakes this future.
        match inner.rx.try_recv() {
            Ok(o) => inner.settle(Ok(o)),
            Err(TryRecvError::Disconnected) => inner.settle(Err(Error::Terminated)),
            Err(TryRecvError::Empty) => {}
        }
        inner.result.is_some()
    }

    fn finish(&mut self) -> Result<O, Error> {
        self.done = true;
        self.inner.shared.stop_wakers.remove(&mut self.stop_key);
        self.inner.result.take().unwrap_or(Err(Error::Terminated))
    }
}

impl<O: Payload> Future for TaskFuture<O> {
    type Output = Result<O, Error>;

    /// # Panics
    /// If polled again after it returned `Ready`, as futures may.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        assert!(!this.done, "TaskFuture polled after completion");
        if this.check() {
            return Poll::Ready(this.finish());
        }
        // Register first, then look again: an outcome sent in between has
        // either been seen by the second look or wakes the new waker.
        // A job already gone has its outcome in the channel, or the
        // channel is disconnected; either shows on the second look.
        if let Some(job) = this.inner.job.upgrade() {
            job.waker.register(cx.waker());
        }
        let shared = Arc::clone(&this.inner.shared);
        shared.stop_wakers.register(&mut this.stop_key, cx.waker());
        if this.check() {
            return Poll::Ready(this.finish());
        }
        Poll::Pending
    }
}

impl<O> Drop for TaskFuture<O> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.inner.shared.stop_wakers.remove(&mut self.stop_key);
        if self.inner.result.is_none() {
            // Dropped when its turn comes, if not sent yet; counted as
            // cancelled by `Shared::finish` either way.
            if let Some(job) = self.inner.job.upgrade() {
                job.cancelled.store(true, Ordering::Relaxed);
            }
        }
    }
}
