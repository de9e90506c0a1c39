//! The async forms of a proxy's waits, for handles in a worker process.
//!
//! - A get polls the subscription's buffer and leaves its waker in the
//!   subscription; the reader thread wakes it with the threads when it
//!   [`dispatch`](super::dispatch)es a delivery.
//! - A request (a bounded put, a join) is sent with a [`Waiter::Async`]:
//!   the reader thread sends the reply to the future's channel, then wakes
//!   its task. A future dropped first sends `CANCEL`; the hub answers any
//!   request it parked, and that reply, with nobody left to read it, is
//!   dropped.
//!
//! The first get of a queue in a process subscribes to it, which is one
//! round trip to the hub (as for a blocking get); nothing else waits.

use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crossbeam_channel::{Receiver, TryRecvError};

use super::{Client, FAST, MAX_CREDIT, Reply, Taken, Waiter};
use crate::error::QueueError;
use crate::queues::wire::op;
use crate::sync::lock;

/// A request whose reply wakes a future.
#[derive(Debug)]
pub(crate) struct AsyncRequest {
    queue: u64,
    req: u64,
    rx: Receiver<Reply>,
    done: bool,
}

impl Client {
    /// [`get`](Client::get), polled.
    pub(crate) fn poll_get(&self, queue: u64, cx: &Context<'_>) -> Poll<Result<Taken, QueueError>> {
        let sub = match self.subscribed(queue) {
            Ok(sub) => sub,
            Err(e) => return Poll::Ready(Err(e)),
        };
        let mut state = lock(&sub.state);
        if let Some(item) = state.buf.pop_front() {
            state.last_take = Some(Instant::now());
            state.kept = false;
            drop(state);
            // Acknowledged before the caller sees it, as in `get`.
            return Poll::Ready(
                self.oneway_sent(op::ACK, queue, 1)
                    .map(|()| Taken::Item(item)),
            );
        }
        if state.closed {
            return Poll::Ready(Ok(Taken::Closed));
        }
        if state.last_take.is_some_and(|t| t.elapsed() < FAST) && state.credit < MAX_CREDIT {
            let more = state.credit;
            state.credit += more;
            state.last_take = None;
            if let Err(e) = self.oneway(op::SUBSCRIBE, queue, more, &[]) {
                return Poll::Ready(Err(e));
            }
        }
        if let Err(e) = self.regrant(queue, &mut state) {
            return Poll::Ready(Err(e));
        }
        if !state.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            state.wakers.push(cx.waker().clone());
            // No timer here to wait a moment first (see `WANT_AFTER`):
            // the hub hears at once that a getter waits.
            if let Err(e) = self.oneway(op::WANT, queue, 0, &[]) {
                return Poll::Ready(Err(e));
            }
        }
        Poll::Pending
    }

    /// Sends a request whose reply wakes `waker`.
    pub(crate) fn request_async(
        &self,
        code: u8,
        queue: u64,
        arg: u64,
        payload: &[u8],
        waker: &Waker,
    ) -> Result<AsyncRequest, QueueError> {
        let req = self
            .next_req
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = crossbeam_channel::bounded(1);
        lock(&self.pending).insert(req, Waiter::Async(tx, waker.clone()));
        if let Err(e) = self.send(req, code, queue, arg, payload) {
            lock(&self.pending).remove(&req);
            return Err(e);
        }
        Ok(AsyncRequest {
            queue,
            req,
            rx,
            done: false,
        })
    }

    /// The reply to `request`, or `Pending` with `waker` to wake for it.
    pub(crate) fn poll_reply(
        &self,
        request: &mut AsyncRequest,
        waker: &Waker,
    ) -> Poll<Result<Reply, QueueError>> {
        let take = |request: &mut AsyncRequest| match request.rx.try_recv() {
            Ok(reply) => {
                request.done = true;
                Some(Ok(reply))
            }
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                request.done = true;
                Some(Err(QueueError::Disconnected))
            }
        };
        if let Some(r) = take(request) {
            return Poll::Ready(r);
        }
        if let Some(Waiter::Async(_, w)) = lock(&self.pending).get_mut(&request.req) {
            if !w.will_wake(waker) {
                *w = waker.clone();
            }
        }
        match take(request) {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
        }
    }

    /// A future gave up on `request`: a request the hub parked is
    /// cancelled (its reply is dropped when it comes).
    pub(crate) fn abandon(&self, request: &AsyncRequest) {
        if !request.done {
            let _ = self.oneway(op::CANCEL, request.queue, request.req, &[]);
        }
    }
}
