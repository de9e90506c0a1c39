//! The async forms of a hub queue's waits, for handles in the hub process:
//! `get`, `put` and `join` as poll functions a future calls.
//!
//! An async waiter counts as a local waiter of its kind while it is
//! registered (a getter keeps items from being pushed to subscribers, as a
//! blocked `get` does; a joiner keeps losses for it), and its waker sits
//! in the queue's state. Every change that wakes the blocked threads
//! (`Core::notify`, called by whichever thread changed the queue: a local
//! `put`, or a worker's reader thread serving a remote one) wakes the
//! wakers too. Nothing polls, and no thread waits for a future.
//!
//! A future that is dropped unregisters ([`Core::unregister`]); a getter
//! leaving may let items go to subscribers, so the queue is pumped then,
//! as when a blocked `get` times out.

use std::task::{Context, Poll, Waker};

use super::{Core, GetFail, Lost, PutFail, State};
use crate::link::Dirty;

/// What an async waiter waits for, and its registration.
#[derive(Debug)]
pub(crate) struct AsyncWait {
    kind: Kind,
    key: Option<u64>,
    /// For a join: the losses that happen from its start on are its own.
    first_loss: Option<u64>,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Get,
    Put,
    Join,
}

impl AsyncWait {
    pub(crate) fn get() -> Self {
        Self::new(Kind::Get)
    }
    pub(crate) fn put() -> Self {
        Self::new(Kind::Put)
    }
    pub(crate) fn join() -> Self {
        Self::new(Kind::Join)
    }
    fn new(kind: Kind) -> Self {
        Self {
            kind,
            key: None,
            first_loss: None,
        }
    }
}

impl State {
    /// Takes the wakers to wake (their registrations stay).
    pub(super) fn take_wakers(&mut self) -> Vec<Waker> {
        if self.wakers.is_empty() {
            return Vec::new();
        }
        self.wakers.values_mut().filter_map(Option::take).collect()
    }

    /// Registers `wait` (counting it as a local waiter the first time) and
    /// sets the waker to wake on the next change.
    fn register(&mut self, wait: &mut AsyncWait, waker: &Waker) {
        let key = match wait.key {
            Some(k) => k,
            None => {
                self.next_waker += 1;
                let k = self.next_waker;
                wait.key = Some(k);
                match wait.kind {
                    Kind::Get => self.local_getters += 1,
                    Kind::Join => self.local_joins += 1,
                    Kind::Put => {}
                }
                k
            }
        };
        self.wakers.insert(key, Some(waker.clone()));
    }

    /// Forgets `wait`'s registration, if any; whether there was one.
    fn unregister(&mut self, wait: &mut AsyncWait) -> bool {
        let Some(k) = wait.key.take() else {
            return false;
        };
        self.wakers.remove(&k);
        match wait.kind {
            Kind::Get => self.local_getters -= 1,
            Kind::Join => {
                self.local_joins -= 1;
                self.prune_losses();
            }
            Kind::Put => {}
        }
        true
    }
}

impl Core {
    /// [`get`](Core::get), polled: the item, `Closed` once the queue is
    /// closed and drained, or `Pending` with the waker registered.
    pub(crate) fn poll_get(
        &self,
        wait: &mut AsyncWait,
        cx: &Context<'_>,
    ) -> Poll<Result<Vec<u8>, GetFail>> {
        let mut dirty = Dirty::default();
        let mut state = self.lock();
        if let Some(item) = state.items.pop_front() {
            state.unregister(wait);
            state.local_debt += 1;
            state.pump(self.capacity, self.id, &mut dirty);
            self.notify(state);
            return Poll::Ready(Ok(item.bytes));
        }
        if state.drained() {
            state.unregister(wait);
            return Poll::Ready(Err(GetFail::Closed));
        }
        state.register(wait, cx.waker());
        // Items buffered in idle processes come back for this getter
        // (flushed when `dirty` drops, after the lock).
        state.recall(true, self.id, &mut dirty);
        drop(state);
        Poll::Pending
    }

    /// [`put`](Core::put), polled: the item is taken from `item` once
    /// there is room.
    pub(crate) fn poll_put(
        &self,
        item: &mut Option<Vec<u8>>,
        wait: &mut AsyncWait,
        cx: &Context<'_>,
    ) -> Poll<Result<(), PutFail>> {
        let mut dirty = Dirty::default();
        let mut state = self.lock();
        if state.closed {
            state.unregister(wait);
            return Poll::Ready(Err(PutFail::Closed));
        }
        if state.has_room(self.capacity) {
            state.unregister(wait);
            let Some(bytes) = item.take() else {
                return Poll::Ready(Ok(()));
            };
            state.unfinished += 1;
            state.push(bytes, self.id, &mut dirty);
            state.pump(self.capacity, self.id, &mut dirty);
            self.notify(state);
            return Poll::Ready(Ok(()));
        }
        state.register(wait, cx.waker());
        Poll::Pending
    }

    /// [`join`](Core::join), polled.
    pub(crate) fn poll_join(
        &self,
        wait: &mut AsyncWait,
        cx: &Context<'_>,
    ) -> Poll<Result<(), Lost>> {
        let mut state = self.lock();
        let first = match wait.first_loss {
            Some(f) => f,
            None => {
                if let Some(lost) = state.undelivered_loss() {
                    return Poll::Ready(Err(lost));
                }
                *wait.first_loss.insert(state.losses_end())
            }
        };
        if let Some(lost) = state.deliver_loss(first) {
            state.unregister(wait);
            return Poll::Ready(Err(lost));
        }
        if state.unfinished == 0 {
            state.unregister(wait);
            return Poll::Ready(Ok(()));
        }
        state.register(wait, cx.waker());
        Poll::Pending
    }

    /// Forgets a waiter whose future was dropped before it was ready.
    pub(crate) fn unregister(&self, wait: &mut AsyncWait) {
        if wait.key.is_none() {
            return;
        }
        let mut dirty = Dirty::default();
        let mut state = self.lock();
        if state.unregister(wait) {
            // A getter leaving: items may now go to subscribers.
            state.pump(self.capacity, self.id, &mut dirty);
        }
        self.notify(state);
    }
}
