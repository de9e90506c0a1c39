//! Queues shared between processes: [`Queue`], [`JoinableQueue`] and
//! [`SimpleQueue`].
//!
//! A queue lives in the process that created it (normally the master): the
//! *hub*. A handle is `Serialize`: passed to a task or a spawned process,
//! it arrives there as a proxy that speaks to the hub over that worker's
//! connection, so one queue is one object wherever it is used, and every
//! item is delivered to exactly one getter.
//!
//! Between processes on one machine, an unbounded [`Queue`],
//! [`SimpleQueue`] or [`JoinableQueue`] also has a *lane*: a ring in
//! shared memory (`queues/lane.rs`) that the hub's process, its direct local workers
//! and its `Process` children put into and get from directly, without a
//! hop through the hub. Remote (TCP) workers and processes without shared
//! memory (`PROCPOOL_SHM_THRESHOLD=off`) use the hub and see the same
//! queue. When the ring (1 MiB) stays full for a moment, a put goes
//! through the hub instead, which first takes in the ring's items: `put`
//! on an unbounded queue never blocks for long, and items stay in order
//! per producer. A [`JoinableQueue`]'s lane keeps its accounts beside the
//! ring (`shm/books.rs`): items put, taken and marked done there are
//! counted without a message to the hub, and a getter that dies holding
//! items is still reported by [`JoinableQueue::join`]. Bounded queues
//! always go through the hub (their capacity lives there).
//!
//! There is no feeder thread and no buffer between `put` and the queue:
//! when `put` returns, the item is in the ring, in the hub, or in the
//! kernel on its way there, so a process may exit right after `put` and
//! the item is not lost. Items
//! handed to a getter in another process that dies before taking them go
//! back to the queue; items it took from a [`JoinableQueue`] and had not
//! marked done are reported by [`JoinableQueue::join`] instead of making it
//! wait for ever.
//!
//! The queue exists while any process holds a handle to it (see
//! [`Queue`]'s Lifetime section).
//!
//! ```
//! use procpool::{GetError, Queue};
//! use std::time::Duration;
//!
//! let q = Queue::bounded(2);
//! q.put("a".to_string()).unwrap();
//! q.put("b".to_string()).unwrap();
//! assert!(q.try_put("c".to_string()).unwrap_err().is_full());
//! assert_eq!(q.get().unwrap(), "a");
//! q.close().unwrap();
//! assert_eq!(q.get().unwrap(), "b");
//! assert!(matches!(q.get_timeout(Duration::from_secs(1)), Err(GetError::Closed)));
//! ```

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::client::{Client, Held, Taken};
use super::hub::{Core, GetFail, PutFail};
use super::lane::{self, LaneEnd, SendFail};
use super::wire::{self, Wait, op, status};
use crate::codec;
pub use crate::error::QueueError;
use crate::shm::stream::{CLOSED, StreamError};
use crate::task::Payload;

mod future;
mod handle;
mod iter;
pub use future::{GetFuture, JoinFuture, PutFuture};
use handle::{Reader, Writer};
pub use iter::{DoneGuard, QueueIter};

/// A failed put; the item comes back.
pub enum PutError<T> {
    /// The queue is bounded and full (only from `try_put`/`put_timeout`).
    Full(T),
    /// The queue is closed.
    Closed(T),
    /// The queue was shut down ([`Queue::shutdown`]).
    ShutDown(T),
    /// The item could not be encoded or sent.
    Failed(T, QueueError),
}

impl<T> PutError<T> {
    /// The item that was not put.
    pub fn into_inner(self) -> T {
        match self {
            PutError::Full(t)
            | PutError::Closed(t)
            | PutError::ShutDown(t)
            | PutError::Failed(t, _) => t,
        }
    }

    /// Whether the queue was full.
    pub fn is_full(&self) -> bool {
        matches!(self, PutError::Full(_))
    }

    /// Whether the queue was closed.
    pub fn is_closed(&self) -> bool {
        matches!(self, PutError::Closed(_))
    }

    /// Whether the queue was shut down.
    pub fn is_shut_down(&self) -> bool {
        matches!(self, PutError::ShutDown(_))
    }
}

impl<T> fmt::Debug for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutError::Full(_) => f.write_str("Full(..)"),
            PutError::Closed(_) => f.write_str("Closed(..)"),
            PutError::ShutDown(_) => f.write_str("ShutDown(..)"),
            PutError::Failed(_, e) => f.debug_tuple("Failed").field(&"..").field(e).finish(),
        }
    }
}

impl<T> fmt::Display for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutError::Full(_) => f.write_str("the queue is full"),
            PutError::Closed(_) => f.write_str("the queue is closed"),
            PutError::ShutDown(_) => f.write_str("the queue is shut down"),
            PutError::Failed(..) => f.write_str("failed to put the item"),
        }
    }
}

impl<T> std::error::Error for PutError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PutError::Failed(_, e) => Some(e),
            _ => None,
        }
    }
}

/// A failed get.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GetError {
    /// Nothing arrived in time (`try_get`, `get_timeout`).
    #[error("the queue is empty")]
    Empty,
    /// The queue is closed and every item has been taken.
    #[error("the queue is closed and empty")]
    Closed,
    /// The queue was shut down ([`Queue::shutdown`]) and every item left
    /// was taken (or, immediately, dropped).
    #[error("the queue is shut down")]
    ShutDown,
    /// The item could not be received or decoded.
    #[error("failed to get an item")]
    Failed(#[source] QueueError),
}

/// How a handle reaches its queue.
#[derive(Clone)]
enum Handle {
    Local(Arc<Core>),
    Remote {
        id: u64,
        /// The id of the hub that holds the queue (the parent's).
        hub: u64,
        capacity: Option<usize>,
        client: &'static Arc<Client>,
        /// The queue has a lane this process may map (see
        /// `queues/lane.rs`).
        lane: bool,
        /// Shared by clones: the client forgets the queue when the last
        /// handle group here drops.
        _held: Arc<Held>,
    },
}

impl Handle {
    fn new(capacity: Option<usize>) -> Self {
        Handle::Local(Core::new(capacity))
    }

    fn id(&self) -> u64 {
        match self {
            Handle::Local(core) => core.id,
            Handle::Remote { id, .. } => *id,
        }
    }
}

fn wait_for(timeout: Duration) -> Wait {
    Instant::now()
        .checked_add(timeout)
        .map_or(Wait::Forever, Wait::Until)
}

/// A multi-producer, multi-consumer FIFO queue shared between processes.
///
/// `len` and `is_empty` are snapshots: other processes may change the
/// queue at any moment.
///
/// # Lifetime
///
/// The queue lives while any process holds a handle to it: a handle in the
/// hub process, a handle in a worker (until it and its clones drop, or the
/// worker ends), and a handle serialised and not yet received (so the
/// creator may move its only handle into `Process::spawn` or a task). A
/// handle serialised and never received keeps the queue until the hub
/// process exits.
///
/// An unbounded queue with a lane (see the [module docs](self)) holds one
/// descriptor (a handle on Windows) and a 1 MiB shared segment in the hub
/// process while it lives.
///
/// # Reach
///
/// A handle works in the hub's process and in its direct workers (the
/// processes of its pools and `Process`es). Passed further, to a process a
/// worker starts, it does not deserialise: the error names
/// [`QueueError::Unreachable`]. Pass such a process a queue the worker
/// made, and relay in the worker.
pub struct Queue<T> {
    handle: Handle,
    /// Set on a pipe's sending end.
    writer: Option<Arc<Writer>>,
    /// Set on a pipe's receiving end in the hub process.
    reader: Option<Arc<Reader>>,
    /// This process's end of the queue's lane, once looked up (shared by
    /// clones; `None` inside: the hub path).
    lane: Arc<OnceLock<Option<Arc<LaneEnd>>>>,
    _items: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Self {
            handle: self.handle.clone(),
            writer: self.writer.clone(),
            reader: self.reader.clone(),
            lane: Arc::clone(&self.lane),
            _items: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let place = if matches!(self.handle, Handle::Local(_)) {
            "local"
        } else {
            "remote"
        };
        f.debug_struct("Queue")
            .field("id", &self.handle.id())
            .field("hub", &place)
            .finish()
    }
}

impl<T: Payload> Default for Queue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Payload> Queue<T> {
    /// An unbounded queue held by this process.
    pub fn new() -> Self {
        let q = Self::with_capacity(None);
        if let Handle::Local(core) = &q.handle {
            if lanes_wanted() {
                core.make_queue_lane();
            }
        }
        q
    }

    /// An unbounded queue whose items all go through the hub, as every
    /// queue's did before lanes (for tests and benches of that path).
    #[doc(hidden)]
    pub fn hub_only() -> Self {
        Self::with_capacity(None)
    }

    /// Whether this handle puts and gets through the queue's lane (for
    /// tests and benches).
    #[doc(hidden)]
    pub fn uses_lane(&self) -> bool {
        self.queue_lane().is_some()
    }

    /// A queue holding at most `capacity` items: `put` blocks while it is
    /// full, in every process. A capacity of 0 is taken as 1 (a queue
    /// always holds the item being handed over; there is no rendezvous
    /// queue).
    pub fn bounded(capacity: usize) -> Self {
        Self::with_capacity(Some(capacity.max(1)))
    }

    fn with_capacity(capacity: Option<usize>) -> Self {
        Self {
            handle: Handle::new(capacity),
            writer: None,
            reader: None,
            lane: Arc::default(),
            _items: PhantomData,
        }
    }

    /// A pipe's direction: `(reading handle, sending handle)`; it ends
    /// (reads `Closed` once drained) when every sending handle is gone.
    ///
    /// The direction gets a lane (`queues/lane.rs`) when shared memory
    /// can be had.
    pub(crate) fn pipe() -> (Self, Self) {
        let mut reader = Self::with_capacity(None);
        let Handle::Local(core) = &reader.handle else {
            unreachable!("a new queue is local");
        };
        core.set_pipe();
        core.make_lane();
        reader.reader = Some(Arc::new(Reader(Arc::clone(core))));
        let writer = Self {
            handle: reader.handle.clone(),
            writer: Some(Arc::new(Writer::Local(Arc::clone(core)))),
            reader: None,
            lane: Arc::default(),
            _items: PhantomData,
        };
        (reader, writer)
    }

    /// Adds an item, waiting for room if the queue is bounded and full.
    ///
    /// Through the queue's lane (an unbounded queue, a local process: see
    /// the [module docs](self)) the item is in shared memory when `put`
    /// returns. Otherwise, from another process than the hub's: the first
    /// put to a queue is answered by the hub; later puts to an unbounded
    /// queue are one-way (the item is in the kernel when `put` returns). The handle holds the
    /// queue in the hub (see Lifetime above), so a one-way put always
    /// lands; a handle that arrived after its queue was gone gets
    /// [`QueueError::NoSuchQueue`] from its first (answered) put.
    ///
    /// # Errors
    /// [`PutError::Closed`], or [`PutError::Failed`] when the item cannot
    /// be encoded or the hub cannot be reached; the item comes back.
    pub fn put(&self, item: T) -> Result<(), PutError<T>> {
        self.put_wait(item, Wait::Forever)
    }

    /// Like [`put`](Self::put), waiting at most `timeout` for room.
    ///
    /// From another process than the hub's, an unbounded queue is "full"
    /// only when the master has stopped reading this process's connection
    /// and its outbox (4 MiB) is full: then the item comes back. An item
    /// the outbox took is sent in order even if it is not in the kernel by
    /// the deadline (`put` without a timeout waits until it is).
    ///
    /// # Errors
    /// As [`put`](Self::put), plus [`PutError::Full`] when time ran out.
    pub fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), PutError<T>> {
        self.put_wait(item, wait_for(timeout))
    }

    /// Like [`put`](Self::put), but never waits for room.
    ///
    /// # Errors
    /// As [`put`](Self::put), plus [`PutError::Full`].
    pub fn try_put(&self, item: T) -> Result<(), PutError<T>> {
        self.put_wait(item, Wait::No)
    }

    fn put_wait(&self, item: T, wait: Wait) -> Result<(), PutError<T>> {
        // Through a lane a small item's encoding is copied into the ring:
        // a buffer kept by the thread saves an allocation per item. A
        // large one is encoded straight into the ring.
        let lane = self.queue_lane();
        let mut bytes = if lane.is_some() {
            SCRATCH.take()
        } else {
            Vec::new()
        };
        bytes.clear();
        let encoded = match lane {
            Some(lane) => lane::encode_item(&item, lane.stream(), &mut bytes),
            None => codec::encode_into(&item, &mut bytes).map(|()| None),
        };
        let encode_failed = |e| QueueError::Encode(Arc::new(e));
        // The length of an encoding to write into the ring, not in `bytes`.
        let mut in_place = match encoded {
            Ok(len) => len,
            Err(e) => return Err(PutError::Failed(item, encode_failed(e))),
        };
        let mut settle = false;
        if let Some(lane) = lane {
            // Through the ring; when it stays full a moment with nobody
            // taking from it nor from the hub (no getter yet, a stopped
            // one, or a stopped sender holding its lease), through the
            // hub, which first moves the ring's items into its store: the
            // put never blocks for long, and comes after this process's
            // earlier ones. While getters make progress it waits for
            // them, as a pipe does (the hub path is slower for them, and
            // one overflow would make more).
            let s = lane.stream();
            // Getters progress while they take from the ring, or from
            // the hub (items that overflowed before, which they take
            // first): the ring frees up once those are gone.
            let progress = || (s.read_position(), s.hub_items());
            let mut seen = progress();
            let sent = loop {
                let soon = Instant::now() + RING_WAIT;
                let deadline = wait.deadline().map_or(soon, |d| d.min(soon));
                let r = lane::send_item(
                    s,
                    lane.id(),
                    &item,
                    &mut in_place,
                    &mut bytes,
                    Some(deadline),
                );
                match r {
                    Ok(()) => break Ok(()),
                    Err(SendFail::Encode(e)) => {
                        return Err(PutError::Failed(item, encode_failed(e)));
                    }
                    Err(SendFail::Stream(StreamError::Full))
                        if progress() != seen
                            && wait.deadline().is_none_or(|d| Instant::now() < d) =>
                    {
                        seen = progress();
                    }
                    Err(SendFail::Stream(e)) => break Err(e),
                }
            };
            if sent.is_ok() && bytes.capacity() <= SCRATCH_MAX {
                SCRATCH.set(bytes);
                return Ok(());
            }
            match sent {
                Ok(()) => return Ok(()),
                Err(StreamError::Full) => settle = true,
                Err(StreamError::Closed) => return Err(self.refused(item)),
                Err(e) => return Err(PutError::Failed(item, lane::error(e))),
            }
            if in_place.is_some() {
                if let Err(e) = codec::encode_into(&item, &mut bytes) {
                    return Err(PutError::Failed(item, encode_failed(e)));
                }
            }
        }
        match &self.handle {
            Handle::Local(core) if settle => core.put_settled(bytes, wait).map_err(|f| match f {
                PutFail::Full => PutError::Full(item),
                PutFail::Closed => self.refused(item),
            }),
            Handle::Local(core) => core.put(bytes, wait).map_err(|f| match f {
                PutFail::Full => PutError::Full(item),
                PutFail::Closed => self.refused(item),
            }),
            Handle::Remote {
                id,
                capacity,
                client,
                ..
            } => {
                let bounded = capacity.is_some();
                match client.put_refused(*id) {
                    Some(QueueError::Closed) => return Err(PutError::Closed(item)),
                    Some(QueueError::ShutDown) => return Err(PutError::ShutDown(item)),
                    Some(e) => return Err(PutError::Failed(item, e)),
                    None => {}
                }
                // An unbounded queue takes one-way puts once a first put from
                // this process was answered: from then on the hub tells
                // this process when the queue closes (or goes), and a put
                // after that is refused here. The first one asks, so a put
                // to a queue closed before this process used it is refused
                // instead of lost.
                // A put after ring puts is answered (the hub moves the
                // ring's items first): the next ring put must not overtake
                // it.
                if !bounded && !settle && client.puts_confirmed(*id) {
                    // Full only when the master has not been reading: the
                    // connection's outbox is at its limit.
                    return match client.put_oneway(*id, &bytes, wait) {
                        Ok(true) => Ok(()),
                        Ok(false) => Err(PutError::Full(item)),
                        Err(e) => Err(PutError::Failed(item, e)),
                    };
                }
                let arg = u64::from(!matches!(wait, Wait::No));
                let result = client
                    .request(op::PUT_WAIT, *id, arg, &bytes, wait)
                    .and_then(|(st, _, _)| wire::check(st, *id));
                match result {
                    Ok(()) => {
                        client.confirm_puts(*id);
                        Ok(())
                    }
                    Err(QueueError::Full) => Err(PutError::Full(item)),
                    Err(QueueError::Closed) => Err(PutError::Closed(item)),
                    Err(QueueError::ShutDown) => Err(PutError::ShutDown(item)),
                    Err(e) => Err(PutError::Failed(item, e)),
                }
            }
        }
    }

    /// A put refused because the queue is closed: `Closed`, or `ShutDown`.
    fn refused(&self, item: T) -> PutError<T> {
        if self.is_shut_down() {
            PutError::ShutDown(item)
        } else {
            PutError::Closed(item)
        }
    }

    /// Adds an item, as [`put`](Self::put), without blocking a thread:
    /// awaits room in a bounded queue. Works on any async runtime.
    ///
    /// Dropping the future before it is ready puts nothing (in a worker
    /// process, unless the hub had already accepted the put when the
    /// cancel reached it: then the item is in the queue, as with
    /// [`put_timeout`](Self::put_timeout)).
    ///
    /// # Errors
    /// As [`put`](Self::put); the item comes back.
    pub fn put_async(&self, item: T) -> PutFuture<'_, T> {
        PutFuture::new(self, item)
    }

    /// Takes the oldest item, as [`get`](Self::get), without blocking a
    /// thread: the future is ready once there is one (or the queue is
    /// closed and drained). Works on any async runtime; dropping the
    /// future before it is ready takes nothing.
    ///
    /// ```
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
    /// use procpool::Queue;
    ///
    /// let q = Queue::new();
    /// let putter = q.clone();
    /// std::thread::spawn(move || putter.put(7u32));
    /// assert_eq!(block_on(q.get_async()).unwrap(), 7);
    /// ```
    ///
    /// # Errors
    /// [`GetError::Closed`] once the queue is closed and drained;
    /// [`GetError::Failed`] as for [`get`](Self::get).
    pub fn get_async(&self) -> GetFuture<'_, T> {
        GetFuture::new(self, None)
    }

    /// Takes the oldest item, waiting until there is one.
    ///
    /// # Errors
    /// [`GetError::Closed`] once the queue is closed and drained;
    /// [`GetError::Failed`] when an item cannot be decoded or the hub
    /// cannot be reached.
    pub fn get(&self) -> Result<T, GetError> {
        self.get_wait(Wait::Forever)
    }

    /// Like [`get`](Self::get), waiting at most `timeout`.
    ///
    /// # Errors
    /// As [`get`](Self::get), plus [`GetError::Empty`] when time ran out.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetError> {
        self.get_wait(wait_for(timeout))
    }

    /// Like [`get`](Self::get), but never waits.
    ///
    /// # Errors
    /// As [`get`](Self::get), plus [`GetError::Empty`].
    pub fn try_get(&self) -> Result<T, GetError> {
        self.get_wait(Wait::No)
    }

    /// A blocking iterator over the items, ending when the queue is closed
    /// and drained; `for item in &queue` does the same. See [`QueueIter`] for
    /// what happens on an error.
    pub fn iter(&self) -> QueueIter<'_, T> {
        QueueIter::queue(self)
    }

    fn get_wait(&self, wait: Wait) -> Result<T, GetError> {
        if let Some(lane) = self.queue_lane() {
            return self.lane_get(lane, wait);
        }
        let bytes = self.hub_get(wait)?;
        decode(&bytes)
    }

    /// Takes the oldest item through the hub.
    fn hub_get(&self, wait: Wait) -> Result<Vec<u8>, GetError> {
        Ok(match &self.handle {
            Handle::Local(core) => core.get(wait).map_err(|f| match f {
                GetFail::Empty => GetError::Empty,
                GetFail::Closed => self.ended(),
            })?,
            Handle::Remote { id, client, .. } => {
                match client.get(*id, wait).map_err(GetError::Failed)? {
                    Taken::Item(bytes) => bytes,
                    Taken::Empty => return Err(GetError::Empty),
                    Taken::Closed => return Err(self.ended()),
                }
            }
        })
    }

    /// A get through the lane: the hub's items first (older than the
    /// ring's: see `HubLane::settle`), decided under the ring's reader
    /// lease.
    fn lane_get(&self, lane: &LaneEnd, wait: Wait) -> Result<T, GetError> {
        // A buffer kept by the thread: no allocation per item.
        let mut buf = SCRATCH.take();
        let r = self.lane_get_into(lane, wait, &mut buf);
        if buf.capacity() <= SCRATCH_MAX {
            SCRATCH.set(buf);
        }
        r
    }

    fn lane_get_into(&self, lane: &LaneEnd, wait: Wait, buf: &mut Vec<u8>) -> Result<T, GetError> {
        let s = lane.stream();
        let mut spins = 0;
        loop {
            let seen = s.hub_gen();
            let closed = s.flags() & CLOSED != 0;
            if let Some(v) = self.lane_attempt(lane, buf)? {
                return Ok(v);
            }
            if matches!(wait, Wait::No) {
                return Err(GetError::Empty);
            }
            if wait.deadline().is_some_and(|d| Instant::now() >= d) {
                return Err(GetError::Empty);
            }
            if s.hub_items() > 0 {
                // Items in the hub that this process could not take now:
                // delivered ahead to another process. Wait there a moment
                // as a getter, which recalls them from an idle one.
                let soon = Instant::now() + HUB_LOOK;
                let until = wait.deadline().map_or(soon, |d| d.min(soon));
                match self.hub_get(Wait::Until(until)) {
                    Ok(bytes) => return decode(&bytes),
                    Err(GetError::Empty | GetError::Closed | GetError::ShutDown) => continue,
                    Err(e) => return Err(e),
                }
            }
            if spins < SPINS {
                spins += 1;
                std::thread::yield_now();
                continue;
            }
            // Woken by a record, the close, or a hub change. Closed with
            // the hub not drained yet (an item delivered to another
            // process may come back): looked at again now and then.
            let ready =
                || s.has_record() || s.hub_gen() != seen || (!closed && s.flags() & CLOSED != 0);
            let deadline = if closed {
                let soon = Instant::now() + HUB_LOOK;
                Some(wait.deadline().map_or(soon, |d| d.min(soon)))
            } else {
                wait.deadline()
            };
            s.sleep_readers(deadline, ready);
        }
    }

    /// One get from either path, without waiting.
    fn lane_attempt(&self, lane: &LaneEnd, buf: &mut Vec<u8>) -> Result<Option<T>, GetError> {
        let s = lane.stream();
        loop {
            let seen = s.hub_gen();
            if s.hub_items() > 0 {
                match self.hub_get(Wait::No) {
                    Ok(bytes) => return decode(&bytes).map(Some),
                    Err(GetError::Empty | GetError::Closed | GetError::ShutDown) => {}
                    Err(e) => return Err(e),
                }
            }
            // The hub's items first: if one came since the look above,
            // the ring's oldest stays where it is. A joinable queue's
            // take is marked in its accounts (see `shm/books.rs`).
            let books = lane.books();
            let defer = || {
                if s.hub_gen() != seen {
                    return true;
                }
                if let Some((b, slot)) = books {
                    b.taking(lane.id(), slot, s.read_position());
                }
                false
            };
            let took = || {
                if let Some((b, slot)) = books {
                    b.took(slot);
                }
            };
            return match lane::try_recv_item(s, lane.id(), buf, defer, took) {
                Ok(Some(item)) => item
                    .map(Some)
                    .map_err(|e| GetError::Failed(QueueError::Decode(Arc::new(e)))),
                Ok(None) => continue,
                Err(StreamError::Empty) => Ok(None),
                // The ring is drained and closed: the queue ends once the
                // hub is drained too.
                Err(StreamError::Closed) => match self.hub_get(Wait::No) {
                    Ok(bytes) => decode(&bytes).map(Some),
                    Err(GetError::Empty) => Ok(None),
                    Err(e) => Err(e),
                },
                Err(e) => Err(GetError::Failed(lane::error(e))),
            };
        }
    }
}

/// Decodes an item taken from a queue.
fn decode<T: Payload>(bytes: &[u8]) -> Result<T, GetError> {
    codec::decode(bytes)
        .map(|(item, _)| item)
        .map_err(|e| GetError::Failed(QueueError::Decode(Arc::new(e))))
}

thread_local! {
    /// A thread's buffer for items going into or coming out of a lane.
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The largest [`SCRATCH`] buffer a thread keeps.
const SCRATCH_MAX: usize = 1 << 20;

/// How long a put waits for room in a full ring before it goes through
/// the hub.
const RING_WAIT: Duration = Duration::from_millis(2);
/// How long a lane getter waits at a time for the hub's items (see
/// `lane_get`).
const HUB_LOOK: Duration = Duration::from_millis(20);
/// Get attempts (with a yield between) before a blocked lane get sleeps.
const SPINS: u32 = 64;

/// Whether new queues get lanes: not with `PROCPOOL_SHM_THRESHOLD=off`.
fn lanes_wanted() -> bool {
    std::env::var(crate::shm::transport::THRESHOLD_ENV).map_or(true, |v| v.trim() != "off")
}

impl<T> Queue<T> {
    /// The queue's id in its hub (for tests and logs).
    #[doc(hidden)]
    pub fn id(&self) -> u64 {
        self.handle.id()
    }

    /// This process's end of the pipe direction's lane, if it can have
    /// one (`reader`: for a receiving end; see `queues/lane.rs`).
    pub(crate) fn lane_end(&self, reader: bool) -> Option<Arc<LaneEnd>> {
        match &self.handle {
            Handle::Local(core) => core.lane().map(|l| Arc::clone(l.local())),
            Handle::Remote { id, client, .. } => {
                let role = if reader {
                    lane::AS_READER
                } else {
                    lane::AS_WRITER
                };
                lane::attach(client, *id, role)
            }
        }
    }

    /// This process's end of the queue's lane, if the queue has one and
    /// this process can map it (looked up once; not a pipe's lane).
    pub(crate) fn queue_lane(&self) -> Option<&Arc<LaneEnd>> {
        self.lane
            .get_or_init(|| match &self.handle {
                Handle::Local(core) => core.queue_lane().map(|l| Arc::clone(l.local())),
                Handle::Remote {
                    id,
                    client,
                    lane: true,
                    ..
                } => lane::attach(client, *id, lane::AS_QUEUE),
                Handle::Remote { .. } => None,
            })
            .as_ref()
    }

    /// Whether a get would not block now; if not, `waker` is woken on a
    /// change until [`unwatch`](Self::unwatch) (see [`super::wait`]).
    pub(crate) fn watch(&self, waker: &std::task::Waker) -> Result<bool, QueueError> {
        if let Some(lane) = self.queue_lane() {
            lane.watch(waker);
            if lane.stream().has_record() {
                return Ok(true);
            }
        }
        match &self.handle {
            Handle::Local(core) => Ok(core.watch(waker)),
            Handle::Remote { id, client, .. } => client.watch(*id, waker),
        }
    }

    /// Drops `waker`'s registration made by [`watch`](Self::watch).
    pub(crate) fn unwatch(&self, waker: &std::task::Waker) {
        if let Some(Some(lane)) = self.lane.get() {
            lane.unwatch(waker);
        }
        match &self.handle {
            Handle::Local(core) => core.unwatch(waker),
            Handle::Remote { id, client, .. } => client.unwatch(*id, waker),
        }
    }

    /// The end of a closed and drained queue: `Closed`, or `ShutDown`.
    fn ended(&self) -> GetError {
        if self.is_shut_down() {
            GetError::ShutDown
        } else {
            GetError::Closed
        }
    }

    /// Whether the queue was shut down (known here: in the hub, or told
    /// by it; a snapshot).
    fn is_shut_down(&self) -> bool {
        match &self.handle {
            Handle::Local(core) => core.is_shut_down(),
            Handle::Remote { id, client, .. } => client.is_shut_down(*id),
        }
    }

    /// The queue's capacity: `None` for an unbounded queue (Python's
    /// `maxsize` is 0 then; here 0 is never a capacity, see
    /// [`bounded`](Queue::bounded)). Known in every process, without
    /// asking the hub.
    ///
    /// ```
    /// use procpool::Queue;
    ///
    /// assert_eq!(Queue::<u8>::bounded(3).maxsize(), Some(3));
    /// assert_eq!(Queue::<u8>::new().maxsize(), None);
    /// ```
    pub fn maxsize(&self) -> Option<usize> {
        match &self.handle {
            Handle::Local(core) => core.capacity,
            Handle::Remote { capacity, .. } => *capacity,
        }
    }

    /// Whether the queue holds [`maxsize`](Self::maxsize) items now (a
    /// snapshot, as Python's `full()`); always false for an unbounded
    /// queue (answered without asking the hub).
    ///
    /// ```
    /// use procpool::Queue;
    ///
    /// let q = Queue::bounded(1);
    /// assert!(!q.is_full().unwrap());
    /// q.put(1u8).unwrap();
    /// assert!(q.is_full().unwrap());
    /// ```
    ///
    /// # Errors
    /// As [`len`](Self::len).
    pub fn is_full(&self) -> Result<bool, QueueError> {
        match self.maxsize() {
            None => Ok(false),
            Some(max) => self.len().map(|n| n >= max),
        }
    }

    /// Waits at most `timeout` until an item can be taken (or the queue is
    /// closed and drained); whether one can.
    pub(crate) fn poll(&self, timeout: Duration) -> Result<bool, QueueError> {
        match &self.handle {
            Handle::Local(core) => Ok(core.poll(wait_for(timeout))),
            Handle::Remote { id, client, .. } => client.poll(*id, wait_for(timeout)),
        }
    }

    /// Number of items in the queue now (a snapshot). Items handed to a
    /// getter in another process and not yet taken there still count, and
    /// so do the items in the queue's lane.
    ///
    /// # Errors
    /// From another process than the hub's: the hub cannot be reached, or
    /// no longer holds the queue ([`QueueError::NoSuchQueue`]).
    pub fn len(&self) -> Result<usize, QueueError> {
        match &self.handle {
            Handle::Local(core) => Ok(core.len()),
            Handle::Remote { id, client, .. } => {
                let (st, n, _) = client.request(op::LEN, *id, 0, &[], Wait::Forever)?;
                wire::check(st, *id)?;
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            }
        }
    }

    /// Whether the queue is empty now (a snapshot).
    ///
    /// # Errors
    /// As [`len`](Self::len).
    pub fn is_empty(&self) -> Result<bool, QueueError> {
        self.len().map(|n| n == 0)
    }

    /// Refuses further puts, in every process. Getters take what is left,
    /// then get [`GetError::Closed`]. Closing a closed queue does nothing.
    ///
    /// Python's `multiprocessing.Queue.close` only says that *this
    /// process* puts no more, and a getter never learns the queue ended;
    /// this `close` is queue-wide and ends it for getters once drained,
    /// like Python 3.13's `shutdown(immediate=False)` (see
    /// [`shutdown`](Self::shutdown), which differs only in its errors and
    /// in offering `immediate`).
    ///
    /// # Errors
    /// As [`len`](Self::len).
    pub fn close(&self) -> Result<(), QueueError> {
        match &self.handle {
            Handle::Local(core) => {
                core.close();
                Ok(())
            }
            Handle::Remote { id, client, .. } => {
                let (st, _, _) = client.request(op::CLOSE, *id, 0, &[], Wait::Forever)?;
                wire::check(st, *id)
            }
        }
    }

    /// Shuts the queue down, in every process, as Python 3.13's
    /// `queue.Queue.shutdown(immediate)`:
    ///
    /// - puts fail with [`PutError::ShutDown`] (blocked ones too, at once);
    /// - `immediate = false`: getters take what is left, then get
    ///   [`GetError::ShutDown`];
    /// - `immediate = true`: the items not yet taken are dropped (those
    ///   queued, and those delivered to another process and not yet read
    ///   there), and, in a [`JoinableQueue`], leave the unfinished count
    ///   (Python calls `task_done` for each), so `join` returns once the
    ///   items already taken are done; getters get
    ///   [`GetError::ShutDown`] at once.
    ///
    /// Blocked getters, putters and joins, here and in other processes,
    /// are woken. A shut-down queue is also closed: shutting down a closed
    /// queue only changes what its errors say (and drops its items, with
    /// `immediate`); shutting it down again does nothing more, except an
    /// `immediate` one after a non-immediate one.
    ///
    /// A one-way put from another process that crosses an immediate
    /// shutdown (sent before that process heard of it) is dropped with
    /// the pending items.
    ///
    /// ```
    /// use procpool::{GetError, Queue};
    ///
    /// let q = Queue::new();
    /// q.put(1u8).unwrap();
    /// q.put(2).unwrap();
    /// q.shutdown(false).unwrap();
    /// assert!(q.put(3).unwrap_err().is_shut_down());
    /// assert_eq!(q.get().unwrap(), 1);
    /// q.shutdown(true).unwrap(); // drops 2
    /// assert!(matches!(q.get(), Err(GetError::ShutDown)));
    /// ```
    ///
    /// # Errors
    /// As [`len`](Self::len).
    pub fn shutdown(&self, immediate: bool) -> Result<(), QueueError> {
        match &self.handle {
            Handle::Local(core) => {
                core.shutdown(immediate);
                Ok(())
            }
            Handle::Remote { id, client, .. } => {
                let arg = u64::from(immediate);
                let (st, _, _) = client.request(op::SHUTDOWN, *id, arg, &[], Wait::Forever)?;
                wire::check(st, *id)
            }
        }
    }
}

/// A [`Queue`] whose consumers confirm each item with
/// [`task_done`](Self::task_done), so a producer can [`join`](Self::join)
/// until every item put has been processed.
///
/// ```
/// use procpool::JoinableQueue;
/// use std::time::Duration;
///
/// let q = JoinableQueue::new();
/// q.put(1u32).unwrap();
/// assert!(!q.join_timeout(Duration::from_millis(10)).unwrap());
/// assert_eq!(q.get().unwrap(), 1);
/// q.task_done().unwrap();
/// assert!(q.join_timeout(Duration::from_secs(1)).unwrap());
/// assert!(q.task_done().is_err()); // more task_done than items
/// ```
pub struct JoinableQueue<T> {
    queue: Queue<T>,
    /// Items this process took and not yet marked done (remote handles
    /// check `task_done` against it without a round trip).
    taken: Arc<AtomicU64>,
}

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
            taken: Arc::clone(&self.taken),
        }
    }
}

impl<T> fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("JoinableQueue").field(&self.queue).finish()
    }
}

impl<T> Deref for JoinableQueue<T> {
    type Target = Queue<T>;
    fn deref(&self) -> &Queue<T> {
        &self.queue
    }
}

impl<T: Payload> Default for JoinableQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Payload> JoinableQueue<T> {
    /// An unbounded joinable queue.
    pub fn new() -> Self {
        Self::from_queue(Queue::with_capacity(None))
    }

    /// A bounded joinable queue.
    pub fn bounded(capacity: usize) -> Self {
        Self::from_queue(Queue::bounded(capacity))
    }

    fn from_queue(queue: Queue<T>) -> Self {
        if let Handle::Local(core) = &queue.handle {
            core.set_joinable();
            if core.capacity.is_none() && lanes_wanted() {
                core.make_joinable_lane();
            }
        }
        Self {
            queue,
            taken: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Takes an item (see [`Queue::get`]); call [`task_done`](Self::task_done)
    /// once it has been processed.
    ///
    /// # Errors
    /// As [`Queue::get`].
    pub fn get(&self) -> Result<T, GetError> {
        self.count(self.queue.get())
    }

    /// Takes an item without blocking a thread, as [`Queue::get_async`];
    /// call [`task_done`](Self::task_done) once it has been processed.
    ///
    /// # Errors
    /// As [`Queue::get_async`].
    pub fn get_async(&self) -> GetFuture<'_, T> {
        GetFuture::new(&self.queue, Some(&self.taken))
    }

    /// Waits without blocking a thread until every item put has been
    /// marked done, as [`join`](Self::join). Works on any async runtime;
    /// dropping the future stops waiting.
    ///
    /// # Errors
    /// As [`join`](Self::join).
    pub fn join_async(&self) -> JoinFuture<'_, T> {
        JoinFuture::new(self)
    }

    /// As [`Queue::get_timeout`].
    ///
    /// # Errors
    /// As [`Queue::get_timeout`].
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetError> {
        self.count(self.queue.get_timeout(timeout))
    }

    /// As [`Queue::try_get`].
    ///
    /// # Errors
    /// As [`Queue::try_get`].
    pub fn try_get(&self) -> Result<T, GetError> {
        self.count(self.queue.try_get())
    }

    fn count(&self, r: Result<T, GetError>) -> Result<T, GetError> {
        if r.is_ok() {
            self.taken.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// Takes an item, as [`get`](Self::get), in a guard that calls
    /// [`task_done`](Self::task_done) when it is dropped: processing the
    /// item inside the guard's scope is confirming it.
    ///
    /// ```
    /// use procpool::JoinableQueue;
    ///
    /// let jobs = JoinableQueue::new();
    /// jobs.put("resize a.png".to_string()).unwrap();
    /// let job = jobs.get_guarded().unwrap();
    /// assert!(job.starts_with("resize"));
    /// drop(job); // task_done()
    /// assert_eq!(jobs.unfinished(), Some(0));
    /// ```
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn get_guarded(&self) -> Result<DoneGuard<'_, T>, GetError> {
        self.get().map(|item| DoneGuard::new(self, item))
    }

    /// [`get_guarded`](Self::get_guarded), waiting at most `timeout`.
    ///
    /// # Errors
    /// As [`get_timeout`](Self::get_timeout).
    pub fn get_guarded_timeout(&self, timeout: Duration) -> Result<DoneGuard<'_, T>, GetError> {
        self.get_timeout(timeout)
            .map(|item| DoneGuard::new(self, item))
    }

    /// [`get_guarded`](Self::get_guarded) that never waits.
    ///
    /// # Errors
    /// As [`try_get`](Self::try_get).
    pub fn try_get_guarded(&self) -> Result<DoneGuard<'_, T>, GetError> {
        self.try_get().map(|item| DoneGuard::new(self, item))
    }

    /// A blocking iterator over the items, as [`Queue::iter`]; `for item in
    /// &queue` does the same. Each item still needs its
    /// [`task_done`](Self::task_done).
    pub fn iter(&self) -> QueueIter<'_, T> {
        QueueIter::joinable(self)
    }
    /// Waits until every item put has been marked done.
    ///
    /// # A consumer that dies
    ///
    /// In Python, a consumer process that dies between `get` and
    /// `task_done` makes `join` wait forever. Here the hub knows which
    /// process took each item (a take is acknowledged before the
    /// consumer's code sees the item) and which `task_done`s it sent: when
    /// a process ends owing confirmations, `join` returns
    /// [`QueueError::ConsumerDied`] with its pid and how many items it left
    /// unfinished, at once (other consumers may still be working: join
    /// again to wait for them). Those items no longer count as
    /// unfinished, so the next `join` succeeds once the rest are done.
    /// Each such loss is reported once: to every `join` waiting when it
    /// happens, or, if none is, to the next one.
    ///
    /// The lost items are **not** put back: an item a consumer's code has
    /// seen is processed at most once. The hub cannot tell how far a dead
    /// consumer got (its side effects may be done, only the confirmation
    /// missing), and `task_done` does not say which item it confirms, so
    /// redelivering would mean processing some items twice, and keeping
    /// every item in progress in the hub. Items handed to a process but
    /// not yet taken by its code do go back to the queue. A producer that
    /// wants at-least-once puts the items again on this error.
    ///
    /// A process that ends normally owing confirmations is reported the
    /// same way (nothing tells the two apart, and it will not confirm them
    /// either). `task_done` may be called in the hub process for items a
    /// worker took: it pays that worker's debt (the largest one, if
    /// several owe). Such a worker must not end before its items are
    /// confirmed.
    ///
    /// # Errors
    /// [`QueueError::ConsumerDied`] as above; another [`QueueError`] when
    /// the hub cannot be reached.
    pub fn join(&self) -> Result<(), QueueError> {
        self.join_wait(Wait::Forever).map(drop)
    }

    /// Like [`join`](Self::join), for at most `timeout`; `Ok(false)` when
    /// time ran out.
    ///
    /// # Errors
    /// As [`join`](Self::join).
    pub fn join_timeout(&self, timeout: Duration) -> Result<bool, QueueError> {
        self.join_wait(wait_for(timeout))
    }

    fn join_wait(&self, wait: Wait) -> Result<bool, QueueError> {
        match &self.queue.handle {
            Handle::Local(core) => core.join(wait).map_err(|lost| QueueError::ConsumerDied {
                pid: lost.pid,
                unfinished: lost.unfinished,
            }),
            Handle::Remote { id, client, .. } => {
                let (st, value, payload) = client.request(op::JOIN, *id, 0, &[], wait)?;
                match st {
                    status::CANCELLED => Ok(false),
                    st => wire::check_reply(st, *id, value, &payload).map(|()| true),
                }
            }
        }
    }

    /// Items put and not yet marked done, in the hub (a snapshot; only
    /// known in the hub process, `None` elsewhere). Items reported lost by
    /// [`join`](Self::join) no longer count.
    pub fn unfinished(&self) -> Option<u64> {
        match &self.queue.handle {
            Handle::Local(core) => Some(core.unfinished()),
            Handle::Remote { .. } => None,
        }
    }
}

impl<T> JoinableQueue<T> {
    /// Marks one item taken from the queue as processed.
    ///
    /// In another process than the hub this does not wait for the hub: it
    /// checks against the items this handle took instead.
    ///
    /// # Errors
    /// [`QueueError::TooManyTaskDone`] when called more times than items
    /// were put (in the hub) or taken through this handle (elsewhere).
    pub fn task_done(&self) -> Result<(), QueueError> {
        // An item this process took through the lane: confirmed in the
        // accounts, no message to the hub.
        if let Some(lane) = self.queue.queue_lane() {
            if let Some((books, _)) = lane.books().filter(|(b, slot)| b.confirm(*slot)) {
                let _ = self
                    .taken
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
                books.confirmed(lane.stream());
                return Ok(());
            }
        }
        match &self.queue.handle {
            Handle::Local(core) => {
                if core.task_done(1) {
                    let _ = self
                        .taken
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
                    Ok(())
                } else {
                    Err(QueueError::TooManyTaskDone)
                }
            }
            Handle::Remote { id, client, .. } => {
                self.taken
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .map_err(|_| QueueError::TooManyTaskDone)?;
                // In the kernel before we go on: a process that exits or
                // dies right after is not charged for this item.
                client.oneway_sent(op::TASK_DONE, *id, 1)
            }
        }
    }
}

impl<T> Serialize for JoinableQueue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.queue.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for JoinableQueue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(JoinableQueue {
            queue: Queue::deserialize(d)?,
            taken: Arc::new(AtomicU64::new(0)),
        })
    }
}

/// The minimal queue: blocking `put` and `get`, nothing else to get wrong.
pub struct SimpleQueue<T>(Queue<T>);

impl<T> Clone for SimpleQueue<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> fmt::Debug for SimpleQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SimpleQueue").field(&self.0).finish()
    }
}

impl<T: Payload> Default for SimpleQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Payload> SimpleQueue<T> {
    /// An unbounded queue.
    pub fn new() -> Self {
        Self(Queue::new())
    }

    /// Adds an item.
    ///
    /// # Errors
    /// As [`Queue::put`].
    pub fn put(&self, item: T) -> Result<(), PutError<T>> {
        self.0.put(item)
    }

    /// Takes the oldest item, waiting until there is one.
    ///
    /// # Errors
    /// As [`Queue::get`].
    pub fn get(&self) -> Result<T, GetError> {
        self.0.get()
    }

    /// Takes the oldest item without blocking a thread, as
    /// [`Queue::get_async`].
    ///
    /// # Errors
    /// As [`Queue::get_async`].
    pub fn get_async(&self) -> GetFuture<'_, T> {
        self.0.get_async()
    }

    /// Whether the queue is empty now (a snapshot).
    ///
    /// # Errors
    /// As [`Queue::len`].
    pub fn is_empty(&self) -> Result<bool, QueueError> {
        self.0.is_empty()
    }

    /// Refuses further puts, in every process; getters take what is left,
    /// then get [`GetError::Closed`], as [`Queue::close`].
    ///
    /// Python's `SimpleQueue.close` releases this process's pipe ends
    /// (a later use here fails; other processes are not affected); this
    /// one ends the queue for everyone, once drained.
    ///
    /// # Errors
    /// As [`Queue::close`].
    pub fn close(&self) -> Result<(), QueueError> {
        self.0.close()
    }

    /// A blocking iterator over the items, as [`Queue::iter`]; `for item in
    /// &queue` does the same. The iteration ends once the queue is closed
    /// and drained, or on an error.
    pub fn iter(&self) -> QueueIter<'_, T> {
        QueueIter::queue(&self.0)
    }
}

impl<T> SimpleQueue<T> {
    /// The queue inside.
    pub(crate) fn queue(&self) -> &Queue<T> {
        &self.0
    }
}

impl<T> Serialize for SimpleQueue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for SimpleQueue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Queue::deserialize(d).map(SimpleQueue)
    }
}

/// Whether this process's hub holds the queue `id` (see [`Queue::id`]).
/// For tests: a queue is freed once every handle to it, in every
/// process, is gone, and every handle serialised to it was received or
/// its carrier ended.
#[doc(hidden)]
pub fn hub_holds(id: u64) -> bool {
    Core::lookup(id).is_some()
}

#[cfg(test)]
mod tests;
