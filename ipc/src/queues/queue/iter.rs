//! Reading a queue like a Rust channel: [`QueueIter`] (`for item in &queue`)
//! and [`DoneGuard`], which calls `task_done` for a [`JoinableQueue`] item
//! when it goes out of scope.

use std::fmt;
use std::iter::FusedIterator;
use std::ops::{Deref, DerefMut};

use super::{GetError, JoinableQueue, Queue, QueueError};
use crate::task::Payload;

/// A blocking iterator over the items of a queue, from
/// [`Queue::iter`], [`JoinableQueue::iter`], [`SimpleQueue::iter`](super::SimpleQueue::iter)
/// or `for item in &queue`.
///
/// Each step is a blocking `get`. The iteration ends when the queue is
/// closed and every item has been taken ([`GetError::Closed`]), as a
/// channel's iterator ends when its senders are gone.
///
/// Items are `Result<T, GetError>`, as in [`BufRead::lines`](std::io::BufRead::lines)
/// and [`TcpListener::incoming`](std::net::TcpListener::incoming): a queue
/// shared between processes can fail where a channel cannot, when an item
/// does not decode or the hub process is gone ([`GetError::Failed`]). That
/// error is yielded once and the iteration ends after it, so
/// `.filter_map(Result::ok)` cannot spin on a queue whose hub is gone
/// (call `iter()` again to go on after a decode error).
///
/// ```
/// use procpool::Queue;
///
/// let q = Queue::new();
/// for i in 0..3u32 {
///     q.put(i).unwrap();
/// }
/// q.close().unwrap(); // without it, the loop would wait for more items
/// let mut sum = 0;
/// for item in &q {
///     sum += item?;
/// }
/// assert_eq!(sum, 3);
/// # Ok::<(), procpool::GetError>(())
/// ```
///
/// Items from a [`JoinableQueue`] still need their `task_done`; see
/// [`JoinableQueue::get_guarded`] for a guard that calls it.
pub struct QueueIter<'a, T> {
    source: Source<'a, T>,
    done: bool,
}

enum Source<'a, T> {
    Queue(&'a Queue<T>),
    /// Its `get` counts the items taken, for `task_done`.
    Joinable(&'a JoinableQueue<T>),
}

impl<'a, T> QueueIter<'a, T> {
    pub(super) fn queue(queue: &'a Queue<T>) -> Self {
        Self {
            source: Source::Queue(queue),
            done: false,
        }
    }

    pub(super) fn joinable(queue: &'a JoinableQueue<T>) -> Self {
        Self {
            source: Source::Joinable(queue),
            done: false,
        }
    }
}

impl<T: Payload> Iterator for QueueIter<'_, T> {
    type Item = Result<T, GetError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let got = match self.source {
            Source::Queue(q) => q.get(),
            Source::Joinable(q) => q.get(),
        };
        match got {
            Ok(item) => Some(Ok(item)),
            Err(GetError::Closed | GetError::ShutDown) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl<T: Payload> FusedIterator for QueueIter<'_, T> {}

impl<T> fmt::Debug for QueueIter<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("QueueIter");
        match self.source {
            Source::Queue(q) => d.field("queue", q),
            Source::Joinable(q) => d.field("queue", q),
        };
        d.field("done", &self.done).finish()
    }
}

impl<'a, T: Payload> IntoIterator for &'a Queue<T> {
    type Item = Result<T, GetError>;
    type IntoIter = QueueIter<'a, T>;

    fn into_iter(self) -> QueueIter<'a, T> {
        self.iter()
    }
}

impl<'a, T: Payload> IntoIterator for &'a JoinableQueue<T> {
    type Item = Result<T, GetError>;
    type IntoIter = QueueIter<'a, T>;

    fn into_iter(self) -> QueueIter<'a, T> {
        self.iter()
    }
}

impl<'a, T: Payload> IntoIterator for &'a super::SimpleQueue<T> {
    type Item = Result<T, GetError>;
    type IntoIter = QueueIter<'a, T>;

    fn into_iter(self) -> QueueIter<'a, T> {
        self.iter()
    }
}

/// An item taken from a [`JoinableQueue`] that calls
/// [`task_done`](JoinableQueue::task_done) when dropped, from
/// [`JoinableQueue::get_guarded`] and its variants.
///
/// It dereferences to the item. Dropping it confirms the item — including
/// when the code processing it panics and unwinds: the item was taken and
/// will not be processed again, and a `join` must not wait for it forever.
/// [`done`](Self::done) confirms it at a chosen point and returns the
/// error, if any; in `drop`, a failed `task_done` (the hub is gone, or more
/// confirmations than items) is logged through `tracing` at `warn` level,
/// never a panic.
///
/// ```
/// use procpool::JoinableQueue;
/// use std::time::Duration;
///
/// let jobs = JoinableQueue::new();
/// jobs.put(21u64).unwrap();
/// {
///     let job = jobs.get_guarded().unwrap();
///     assert_eq!(*job * 2, 42);
/// } // task_done() here
/// assert!(jobs.join_timeout(Duration::from_secs(1)).unwrap());
/// ```
#[must_use = "dropping the guard at once marks the item done before it is processed"]
pub struct DoneGuard<'a, T> {
    queue: &'a JoinableQueue<T>,
    /// `None` once `done` has run.
    item: Option<T>,
}

impl<'a, T> DoneGuard<'a, T> {
    pub(super) fn new(queue: &'a JoinableQueue<T>, item: T) -> Self {
        Self {
            queue,
            item: Some(item),
        }
    }
}

impl<T> DoneGuard<'_, T> {
    /// Marks the item done now (dropping it) and returns what
    /// [`task_done`](JoinableQueue::task_done) returned, where `drop` could
    /// only log it.
    ///
    /// # Errors
    /// As [`JoinableQueue::task_done`].
    pub fn done(mut self) -> Result<(), QueueError> {
        self.item = None;
        self.queue.task_done()
    }
}

impl<T> Deref for DoneGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.item
            .as_ref()
            .expect("the item is present until done()")
    }
}

impl<T> DerefMut for DoneGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.item
            .as_mut()
            .expect("the item is present until done()")
    }
}

impl<T: fmt::Debug> fmt::Debug for DoneGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DoneGuard").field(&self.item).finish()
    }
}

impl<T> Drop for DoneGuard<'_, T> {
    fn drop(&mut self) {
        if self.item.take().is_some() {
            if let Err(error) = self.queue.task_done() {
                tracing::warn!(
                    queue_id = self.queue.queue.handle.id(),
                    %error,
                    "task_done failed when an item's guard was dropped"
                );
            }
        }
    }
}
