//! The awaitable forms of the queues' waits: [`GetFuture`],
//! [`PutFuture`], [`JoinFuture`], returned by `get_async`, `put_async`,
//! `join_async` (and the pipes' `recv_async`).
//!
//! They block no thread and work on any async runtime. In the hub process
//! the thread that changes the queue wakes them (`hub/poll.rs`); in a
//! worker process its connection's reader thread does (`client/poll.rs`).
//! Dropping one before it is ready gives up cleanly: a get takes nothing,
//! a put puts nothing (in a worker, a bounded put the hub had already
//! accepted when the cancel arrived stays put, as with `put_timeout`), a
//! join stops waiting.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use super::super::client::{AsyncRequest, Taken};
use super::super::hub::{AsyncWait, GetFail, PutFail};
use super::super::wire::{self, op, status};
use super::{GetError, Handle, JoinableQueue, PutError, Queue, QueueError};
use crate::codec;
use crate::task::Payload;

/// The future of [`Queue::get_async`] (and of the other queues' and the
/// pipes' async gets): the oldest item, once there is one.
#[must_use = "a future does nothing unless awaited"]
pub struct GetFuture<'a, T> {
    queue: &'a Queue<T>,
    wait: AsyncWait,
    /// A `JoinableQueue`'s count of items taken here.
    taken: Option<&'a AtomicU64>,
    done: bool,
    /// The waker registered with a lane queue (see `Queue::watch`).
    watching: Option<Waker>,
}

impl<T> fmt::Debug for GetFuture<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetFuture")
            .field("queue", &self.queue.handle.id())
            .finish_non_exhaustive()
    }
}

impl<'a, T> GetFuture<'a, T> {
    pub(crate) fn new(queue: &'a Queue<T>, taken: Option<&'a AtomicU64>) -> Self {
        Self {
            queue,
            wait: AsyncWait::get(),
            taken,
            done: false,
            watching: None,
        }
    }
}

impl<T: Payload> Future for GetFuture<'_, T> {
    type Output = Result<T, GetError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.queue.queue_lane().is_some() {
            return this.poll_lane(cx);
        }
        let bytes = match &this.queue.handle {
            Handle::Local(core) => match core.poll_get(&mut this.wait, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(bytes)) => Ok(bytes),
                Poll::Ready(Err(GetFail::Closed | GetFail::Empty)) => Err(this.queue.ended()),
            },
            Handle::Remote { id, client, .. } => match client.poll_get(*id, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(Taken::Item(bytes))) => Ok(bytes),
                Poll::Ready(Ok(Taken::Closed | Taken::Empty)) => Err(this.queue.ended()),
                Poll::Ready(Err(e)) => Err(GetError::Failed(e)),
            },
        };
        this.done = true;
        let item = bytes.and_then(|bytes| {
            codec::decode(&bytes)
                .map(|(item, _)| item)
                .map_err(|e| GetError::Failed(QueueError::Decode(Arc::new(e))))
        });
        if item.is_ok() {
            if let Some(taken) = this.taken {
                taken.fetch_add(1, Ordering::Relaxed);
            }
        }
        Poll::Ready(item)
    }
}

impl<T: Payload> GetFuture<'_, T> {
    /// A get from a queue with a lane: tries, registers the waker with
    /// the lane's watcher and the hub, tries again.
    fn poll_lane(&mut self, cx: &Context<'_>) -> Poll<Result<T, GetError>> {
        for _ in 0..2 {
            match self.queue.try_get() {
                Err(GetError::Empty) => {}
                r => {
                    self.done = true;
                    if let Some(w) = self.watching.take() {
                        self.queue.unwatch(&w);
                    }
                    if r.is_ok() {
                        if let Some(taken) = self.taken {
                            taken.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    return Poll::Ready(r);
                }
            }
            if self
                .watching
                .as_ref()
                .is_none_or(|w| !w.will_wake(cx.waker()))
            {
                if let Some(w) = self.watching.take() {
                    self.queue.unwatch(&w);
                }
                self.watching = Some(cx.waker().clone());
            }
            // Registered before the second look: nothing after the first
            // one is missed.
            if let Err(e) = self.queue.watch(cx.waker()) {
                self.done = true;
                return Poll::Ready(Err(GetError::Failed(e)));
            }
        }
        Poll::Pending
    }
}

impl<T> Drop for GetFuture<'_, T> {
    fn drop(&mut self) {
        if let Some(w) = self.watching.take() {
            self.queue.unwatch(&w);
        }
        if let Handle::Local(core) = &self.queue.handle {
            if !self.done {
                core.unregister(&mut self.wait);
            }
        }
    }
}

/// The future of [`Queue::put_async`]: the item is in the queue once it
/// is ready, or comes back in the error.
#[must_use = "a future does nothing unless awaited"]
pub struct PutFuture<'a, T> {
    queue: &'a Queue<T>,
    item: Option<T>,
    bytes: Option<Vec<u8>>,
    wait: AsyncWait,
    request: Option<AsyncRequest>,
    _item: PhantomData<fn(T)>,
}

impl<T> fmt::Debug for PutFuture<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PutFuture")
            .field("queue", &self.queue.handle.id())
            .finish_non_exhaustive()
    }
}

// Nothing in it is pinned: the item is only moved out when it is ready.
impl<T> Unpin for PutFuture<'_, T> {}

impl<'a, T> PutFuture<'a, T> {
    pub(crate) fn new(queue: &'a Queue<T>, item: T) -> Self {
        Self {
            queue,
            item: Some(item),
            bytes: None,
            wait: AsyncWait::put(),
            request: None,
            _item: PhantomData,
        }
    }
}

impl<T: Payload> Future for PutFuture<'_, T> {
    type Output = Result<(), PutError<T>>;

    /// # Panics
    /// If polled again after it returned `Ready`, as futures may.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(item) = this.item.take() else {
            panic!("PutFuture polled after completion");
        };
        if this.queue.queue_lane().is_some() {
            // An unbounded queue with a lane: the put never waits long.
            return Poll::Ready(this.queue.put(item));
        }
        if this.bytes.is_none() && this.request.is_none() {
            let mut bytes = Vec::new();
            if let Err(e) = codec::encode_into(&item, &mut bytes) {
                return Poll::Ready(Err(PutError::Failed(item, QueueError::Encode(Arc::new(e)))));
            }
            this.bytes = Some(bytes);
        }
        match &this.queue.handle {
            Handle::Local(core) => match core.poll_put(&mut this.bytes, &mut this.wait, cx) {
                Poll::Pending => {
                    this.item = Some(item);
                    Poll::Pending
                }
                Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
                Poll::Ready(Err(PutFail::Closed)) => Poll::Ready(Err(this.queue.refused(item))),
                Poll::Ready(Err(PutFail::Full)) => Poll::Ready(Err(PutError::Full(item))),
            },
            Handle::Remote { id, client, .. } => {
                let id = *id;
                if this.request.is_none() {
                    match client.put_refused(id) {
                        Some(QueueError::Closed) => {
                            return Poll::Ready(Err(PutError::Closed(item)));
                        }
                        Some(QueueError::ShutDown) => {
                            return Poll::Ready(Err(PutError::ShutDown(item)));
                        }
                        Some(e) => return Poll::Ready(Err(PutError::Failed(item, e))),
                        None => {}
                    }
                    let bytes = this.bytes.take().unwrap_or_default();
                    // Arg 1: park until there is room, as a blocking put.
                    match client.request_async(op::PUT_WAIT, id, 1, &bytes, cx.waker()) {
                        Ok(r) => this.request = Some(r),
                        Err(e) => return Poll::Ready(Err(PutError::Failed(item, e))),
                    }
                }
                let Some(request) = this.request.as_mut() else {
                    return Poll::Ready(Err(PutError::Failed(item, QueueError::Disconnected)));
                };
                match client.poll_reply(request, cx.waker()) {
                    Poll::Pending => {
                        this.item = Some(item);
                        Poll::Pending
                    }
                    Poll::Ready(reply) => match reply.and_then(|(st, _, _)| wire::check(st, id)) {
                        Ok(()) => {
                            client.confirm_puts(id);
                            Poll::Ready(Ok(()))
                        }
                        Err(QueueError::Full) => Poll::Ready(Err(PutError::Full(item))),
                        Err(QueueError::Closed) => Poll::Ready(Err(PutError::Closed(item))),
                        Err(QueueError::ShutDown) => Poll::Ready(Err(PutError::ShutDown(item))),
                        Err(e) => Poll::Ready(Err(PutError::Failed(item, e))),
                    },
                }
            }
        }
    }
}

impl<T> Drop for PutFuture<'_, T> {
    fn drop(&mut self) {
        match &self.queue.handle {
            Handle::Local(core) => core.unregister(&mut self.wait),
            Handle::Remote { client, .. } => {
                if let Some(r) = &self.request {
                    client.abandon(r);
                }
            }
        }
    }
}

/// The future of [`JoinableQueue::join_async`]: ready once every item put
/// has been marked done, or with the loss a dead consumer caused.
#[must_use = "a future does nothing unless awaited"]
pub struct JoinFuture<'a, T> {
    queue: &'a Queue<T>,
    wait: AsyncWait,
    request: Option<AsyncRequest>,
    done: bool,
}

impl<T> fmt::Debug for JoinFuture<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinFuture")
            .field("queue", &self.queue.handle.id())
            .finish_non_exhaustive()
    }
}

impl<'a, T> JoinFuture<'a, T> {
    pub(crate) fn new(queue: &'a JoinableQueue<T>) -> Self {
        Self {
            queue: &queue.queue,
            wait: AsyncWait::join(),
            request: None,
            done: false,
        }
    }
}

impl<T> Future for JoinFuture<'_, T> {
    type Output = Result<(), QueueError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let r = match &this.queue.handle {
            Handle::Local(core) => match core.poll_join(&mut this.wait, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(r) => r.map_err(|lost| QueueError::ConsumerDied {
                    pid: lost.pid,
                    unfinished: lost.unfinished,
                }),
            },
            Handle::Remote { id, client, .. } => {
                let id = *id;
                if this.request.is_none() {
                    match client.request_async(op::JOIN, id, 0, &[], cx.waker()) {
                        Ok(r) => this.request = Some(r),
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                let Some(request) = this.request.as_mut() else {
                    return Poll::Ready(Err(QueueError::Disconnected));
                };
                match client.poll_reply(request, cx.waker()) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(reply) => reply.and_then(|(st, value, payload)| match st {
                        status::CANCELLED => Err(QueueError::Disconnected),
                        st => wire::check_reply(st, id, value, &payload),
                    }),
                }
            }
        };
        this.done = true;
        Poll::Ready(r)
    }
}

impl<T> Drop for JoinFuture<'_, T> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        match &self.queue.handle {
            Handle::Local(core) => core.unregister(&mut self.wait),
            Handle::Remote { client, .. } => {
                if let Some(r) = &self.request {
                    client.abandon(r);
                }
            }
        }
    }
}
