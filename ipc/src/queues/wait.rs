//! Waiting on many: [`wait`] blocks until any of several queues, pipe
//! ends and processes is ready, as Python's
//! `multiprocessing.connection.wait` (or a crossbeam `Select` without the
//! operation).
//!
//! Every object is asked once per round whether it is ready
//! ([`Waitable::poll_ready`]); one that is not keeps a waker that unparks
//! the waiting thread when it may have changed: a delivery or a put for a
//! queue, the supervisor's record of the exit for a process. Nothing
//! polls on a timer. When `wait` returns, every registration is gone
//! ([`Waitable::forget`]) and no item was taken.

use std::sync::Arc;
use std::task::{Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use super::pipe::{PipeEnd, PipeReceiver};
use super::queue::{JoinableQueue, Queue, SimpleQueue};
use crate::error::QueueError;

/// Something [`wait`] can wait on.
///
/// Ready means a call would not block: for a queue or a pipe's receiving
/// side, `get`/`recv` has an item or the end (closed and drained, shut
/// down); for a process, it has exited. Implemented by the queues, pipe
/// ends and `Process`; implement it for a type of your own with a way to
/// wake a waker when it may have become ready.
pub trait Waitable {
    /// Whether the object is ready now. If it is not, `waker` is woken
    /// (perhaps spuriously) whenever that may have changed, until
    /// [`forget`](Self::forget) is called with it. Calling it again with
    /// the same waker registers it once.
    ///
    /// # Errors
    /// The object cannot tell (a queue whose hub cannot be reached).
    fn poll_ready(&self, waker: &Waker) -> Result<bool, QueueError>;

    /// Drops `waker`'s registration, if any.
    fn forget(&self, waker: &Waker);
}

/// Unparks the waiting thread.
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Waits until at least one of `objects` is ready, or `timeout` has passed
/// (`None`: no limit); returns the indices of those that are ready, in
/// order (empty on timeout). Readiness is a snapshot: another process may
/// take a ready queue's item first, so get with `try_get` or a timeout.
/// Python's `multiprocessing.connection.wait` returns the objects; here
/// the indices into `objects`.
///
/// ```rust,standalone_crate
/// use std::time::Duration;
/// use procpool::{Pipe, Queue, wait};
///
/// let q: Queue<u32> = Queue::new();
/// let (rx, tx) = Pipe::one_way::<String>();
/// tx.send("hello".into()).unwrap();
/// let ready = wait(&[&q, &rx], Some(Duration::from_secs(5))).unwrap();
/// assert_eq!(ready, [1]);
/// assert_eq!(rx.recv().unwrap(), "hello");
/// assert!(wait(&[&q, &rx], Some(Duration::from_millis(10))).unwrap().is_empty());
/// ```
///
/// # Errors
/// An object could not tell whether it is ready (see
/// [`Waitable::poll_ready`]); nothing stays registered.
pub fn wait(
    objects: &[&dyn Waitable],
    timeout: Option<Duration>,
) -> Result<Vec<usize>, QueueError> {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let result = (|| loop {
        let mut ready = Vec::new();
        for (i, o) in objects.iter().enumerate() {
            if o.poll_ready(&waker)? {
                ready.push(i);
            }
        }
        if !ready.is_empty() {
            return Ok(ready);
        }
        match deadline {
            None => thread::park(),
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => thread::park_timeout(left),
                _ => return Ok(ready),
            },
        }
    })();
    for o in objects {
        o.forget(&waker);
    }
    result
}

impl<T> Waitable for Queue<T> {
    fn poll_ready(&self, waker: &Waker) -> Result<bool, QueueError> {
        self.watch(waker)
    }
    fn forget(&self, waker: &Waker) {
        self.unwatch(waker);
    }
}

impl<T> Waitable for JoinableQueue<T> {
    fn poll_ready(&self, waker: &Waker) -> Result<bool, QueueError> {
        self.watch(waker)
    }
    fn forget(&self, waker: &Waker) {
        self.unwatch(waker);
    }
}

impl<T> Waitable for SimpleQueue<T> {
    fn poll_ready(&self, waker: &Waker) -> Result<bool, QueueError> {
        self.queue().watch(waker)
    }
    fn forget(&self, waker: &Waker) {
        self.queue().unwatch(waker);
    }
}

impl<T> Waitable for PipeReceiver<T> {
    fn poll_ready(&self, waker: &Waker) -> Result<bool, QueueError> {
        PipeReceiver::poll_ready(self, waker)
    }
    fn forget(&self, waker: &Waker) {
        PipeReceiver::forget(self, waker);
    }
}

/// Ready when [`recv`](PipeEnd::recv) would not block.
impl<S, R> Waitable for PipeEnd<S, R> {
    fn poll_ready(&self, waker: &Waker) -> Result<bool, QueueError> {
        PipeEnd::poll_ready(self, waker)
    }
    fn forget(&self, waker: &Waker) {
        PipeEnd::forget(self, waker);
    }
}
