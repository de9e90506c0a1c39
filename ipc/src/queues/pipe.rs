//! [`Pipe`]: a connected pair of typed endpoints between processes.
//!
//! Each direction is a hub queue with one reader, so a pipe end is
//! `Serialize` like a queue handle: pass one end to a spawned process or a
//! pool task and keep the other.
//!
//! Between local processes a direction also has a *lane*: a ring of
//! messages in shared memory (`queues/lane.rs`), which the hub's process
//! and its direct local workers use instead of the hub, so a message goes
//! from sender to receiver without a thread hand-off. Other holders
//! (remote workers, `PROCPOOL_SHM_THRESHOLD=off`) use the hub queue, and
//! the two paths meet at the receiver.
//!
//! # Buffering
//!
//! A direction buffers up to 1 MiB of encoded messages (record headers
//! included) in its lane; a lane sender blocks while the lane is full, as
//! with an OS pipe or Python's `Connection.send`, until the receiver takes
//! some, and fails with [`QueueError::ReceiversGone`] once every receiving
//! end is gone. A sender that uses the hub (a remote worker) never blocks.
//!
//! A direction ends when its sending end is closed, and also when every
//! copy of the sending end is gone without `close`: dropped, or its process
//! ended or died. The receiver then gets what was sent, then
//! [`GetError::Closed`] (Python's `EOFError`), from `recv`, `recv_timeout`
//! and `try_recv` alike; it never waits for a peer that is gone.
//!
//! ```
//! use procpool::Pipe;
//! use std::time::Duration;
//!
//! let (left, right) = Pipe::duplex::<String, u32>();
//! left.send("ping".to_string()).unwrap();
//! assert_eq!(right.recv().unwrap(), "ping");
//! right.send(4).unwrap();
//! assert!(left.poll(Duration::from_secs(1)).unwrap());
//! assert_eq!(left.recv().unwrap(), 4);
//!
//! let (rx, tx) = Pipe::one_way::<u8>();
//! tx.send(1).unwrap();
//! assert_eq!(rx.recv_timeout(Duration::from_secs(1)).unwrap(), 1);
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::lane::{self, LaneEnd, SendFail};
use super::queue::{GetError, GetFuture, PutError, Queue, QueueError};
use super::wire::Wait;
use crate::shm::stream::StreamError;
use crate::task::Payload;

/// Receive attempts (with a yield between) before a blocked receive
/// sleeps.
const SPINS: u32 = 64;

/// Makes pipes.
#[derive(Debug)]
pub struct Pipe;

impl Pipe {
    /// A duplex pipe: the first end sends `A` and receives `B`, the second
    /// the reverse.
    pub fn duplex<A: Payload, B: Payload>() -> (PipeEnd<A, B>, PipeEnd<B, A>) {
        let ((ab_rx, ab_tx), (ba_rx, ba_tx)) = (Queue::pipe(), Queue::pipe());
        (
            PipeEnd {
                tx: Tx::new(ab_tx),
                rx: Rx::new(ba_rx),
            },
            PipeEnd {
                tx: Tx::new(ba_tx),
                rx: Rx::new(ab_rx),
            },
        )
    }

    /// A one-way pipe: `(receiver, sender)`, in the order Python's
    /// `Pipe(duplex=False)` returns them.
    pub fn one_way<T: Payload>() -> (PipeReceiver<T>, PipeSender<T>) {
        let (rx, tx) = Queue::pipe();
        (PipeReceiver(Rx::new(rx)), PipeSender(Tx::new(tx)))
    }
}

/// A direction's sending side here: its hub queue, and this process's
/// lane if it has one. On the wire, the queue handle alone.
struct Tx<T> {
    q: Queue<T>,
    lane: Option<Arc<LaneEnd>>,
}

/// A direction's receiving side here (as [`Tx`]).
struct Rx<T> {
    q: Queue<T>,
    lane: Option<Arc<LaneEnd>>,
}

impl<T> Tx<T> {
    fn new(q: Queue<T>) -> Self {
        let lane = q.lane_end(false);
        Self { q, lane }
    }
}

impl<T> Rx<T> {
    fn new(q: Queue<T>) -> Self {
        let lane = q.lane_end(true);
        Self { q, lane }
    }
}

impl<T> Serialize for Tx<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.q.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Tx<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Queue::deserialize(d).map(Self::new)
    }
}

impl<T> Serialize for Rx<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.q.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Rx<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Queue::deserialize(d).map(Self::new)
    }
}

impl<T> fmt::Debug for Tx<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tx")
            .field("queue", &self.q)
            .field("lane", &self.lane.is_some())
            .finish()
    }
}

impl<T> fmt::Debug for Rx<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rx")
            .field("queue", &self.q)
            .field("lane", &self.lane.is_some())
            .finish()
    }
}

impl<T> Rx<T> {
    /// Whether a receive would not block now; if not, `waker` is woken on
    /// a change until [`forget`](Self::forget).
    fn poll_ready(&self, waker: &Waker) -> Result<bool, QueueError> {
        if let Some(lane) = &self.lane {
            lane.watch(waker);
            if lane.ring_ready() {
                return Ok(true);
            }
        }
        self.q.watch(waker)
    }

    fn forget(&self, waker: &Waker) {
        if let Some(lane) = &self.lane {
            lane.unwatch(waker);
        }
        self.q.unwatch(waker);
    }
}

impl<T: Payload> Tx<T> {
    fn send(&self, value: T) -> Result<(), PutError<T>> {
        let Some(lane) = &self.lane else {
            return self.q.put(value);
        };
        let s = lane.stream();
        let mut bytes = Vec::new();
        let sent = lane::encode_item(&value, s, &mut bytes)
            .map_err(SendFail::Encode)
            .and_then(|mut in_place| {
                lane::send_item(s, lane.id(), &value, &mut in_place, &mut bytes, None)
            });
        match sent {
            Ok(()) => Ok(()),
            Err(SendFail::Encode(e)) => {
                Err(PutError::Failed(value, QueueError::Encode(Arc::new(e))))
            }
            Err(SendFail::Stream(StreamError::Closed)) => Err(PutError::Closed(value)),
            Err(SendFail::Stream(StreamError::ReadersGone)) => {
                Err(PutError::Failed(value, QueueError::ReceiversGone))
            }
            Err(SendFail::Stream(e)) => Err(PutError::Failed(value, lane::error(e))),
        }
    }

    fn close(&self) -> Result<(), QueueError> {
        if let Some(lane) = &self.lane {
            lane.stream().set_flag(crate::shm::stream::CLOSED);
        }
        self.q.close()
    }
}

impl<T: Payload> Rx<T> {
    fn recv_wait(&self, wait: Wait) -> Result<T, GetError> {
        let Some(lane) = &self.lane else {
            return match wait {
                Wait::No => self.q.try_get(),
                Wait::Forever => self.q.get(),
                Wait::Until(d) => self
                    .q
                    .get_timeout(d.saturating_duration_since(Instant::now())),
            };
        };
        let s = lane.stream();
        let mut buf = Vec::new();
        let mut spins = 0;
        loop {
            let seen = s.hub_gen();
            if let Some(v) = self.attempt(lane, &mut buf)? {
                return Ok(v);
            }
            if matches!(wait, Wait::No) {
                return Err(GetError::Empty);
            }
            if spins < SPINS {
                spins += 1;
                std::thread::yield_now();
                continue;
            }
            // Woken by a record, an end flag, or an item in the hub (more
            // of them, or one come back from a subscriber).
            let ready = || lane.ring_ready() || s.hub_gen() != seen;
            if !s.sleep_readers(wait.deadline(), ready) {
                return match self.attempt(lane, &mut buf)? {
                    Some(v) => Ok(v),
                    None => Err(GetError::Empty),
                };
            }
        }
    }

    /// One receive from either path: the hub first while it counts items.
    fn attempt(&self, lane: &LaneEnd, buf: &mut Vec<u8>) -> Result<Option<T>, GetError> {
        let s = lane.stream();
        if s.hub_items() > 0 {
            match self.q.try_get() {
                Ok(v) => return Ok(Some(v)),
                Err(GetError::Empty | GetError::Closed) => {}
                Err(e) => return Err(e),
            }
        }
        match lane::try_recv_item(s, lane.id(), buf, || false, || {}) {
            Ok(Some(v)) => v
                .map(Some)
                .map_err(|e| GetError::Failed(QueueError::Decode(Arc::new(e)))),
            Ok(None) | Err(StreamError::Empty) => Ok(None),
            // The ring is drained and ended: the direction ends once the
            // hub queue is closed and drained too.
            Err(StreamError::Closed) => match self.q.try_get() {
                Ok(v) => Ok(Some(v)),
                Err(GetError::Empty) => Ok(None),
                Err(e) => Err(e),
            },
            Err(e) => Err(GetError::Failed(lane::error(e))),
        }
    }

    fn poll(&self, timeout: Duration) -> Result<bool, QueueError> {
        let Some(lane) = &self.lane else {
            return self.q.poll(timeout);
        };
        let deadline = Instant::now().checked_add(timeout);
        let s = lane.stream();
        loop {
            let seen = s.hub_gen();
            if lane.ring_ready() || (s.hub_items() > 0 && self.q.poll(Duration::ZERO)?) {
                return Ok(true);
            }
            let ready = || lane.ring_ready() || s.hub_gen() != seen;
            if !s.sleep_readers(deadline, ready) {
                return Ok(false);
            }
        }
    }

    fn recv_async(&self) -> RecvFuture<'_, T> {
        RecvFuture(match &self.lane {
            None => Fut::Hub(self.q.get_async()),
            Some(_) => Fut::Lane {
                rx: self,
                waker: None,
            },
        })
    }
}

/// The future of a pipe end's `recv_async`: the next message, once there
/// is one.
#[must_use = "a future does nothing unless awaited"]
pub struct RecvFuture<'a, T>(Fut<'a, T>);

enum Fut<'a, T> {
    Hub(GetFuture<'a, T>),
    Lane {
        rx: &'a Rx<T>,
        /// The waker registered with the lane and the queue.
        waker: Option<Waker>,
    },
}

impl<T> fmt::Debug for RecvFuture<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvFuture").finish_non_exhaustive()
    }
}

impl<T: Payload> Future for RecvFuture<'_, T> {
    type Output = Result<T, GetError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().0 {
            Fut::Hub(f) => Pin::new(f).poll(cx),
            Fut::Lane { rx, waker } => {
                for _ in 0..2 {
                    match rx.recv_wait(Wait::No) {
                        Err(GetError::Empty) => {}
                        r => {
                            if let Some(w) = waker.take() {
                                rx.forget(&w);
                            }
                            return Poll::Ready(r);
                        }
                    }
                    // Registered before the second look, so nothing that
                    // comes after the first one is missed.
                    if waker.as_ref().is_none_or(|w| !w.will_wake(cx.waker())) {
                        if let Some(w) = waker.take() {
                            rx.forget(&w);
                        }
                        *waker = Some(cx.waker().clone());
                    }
                    if let Err(e) = rx.poll_ready(cx.waker()) {
                        return Poll::Ready(Err(GetError::Failed(e)));
                    }
                }
                Poll::Pending
            }
        }
    }
}

impl<T> Drop for RecvFuture<'_, T> {
    fn drop(&mut self) {
        if let Fut::Lane { rx, waker: Some(w) } = &self.0 {
            if let Some(lane) = &rx.lane {
                lane.unwatch(w);
            }
            rx.q.unwatch(w);
        }
    }
}

/// One end of a duplex pipe: sends `S`, receives `R`.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct PipeEnd<S, R> {
    tx: Tx<S>,
    rx: Rx<R>,
}

impl<S, R> fmt::Debug for PipeEnd<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipeEnd")
            .field("tx", &self.tx)
            .field("rx", &self.rx)
            .finish()
    }
}

impl<S: Payload, R: Payload> PipeEnd<S, R> {
    /// Sends a value to the other end. Between local processes this
    /// blocks while the pipe's buffer (1 MiB) is full, until the other
    /// end receives (see the [module docs](self)); otherwise it never
    /// blocks.
    ///
    /// # Errors
    /// As [`Queue::put`]; [`PutError::Failed`] with
    /// [`QueueError::ReceiversGone`] once the other end is gone. The
    /// value comes back.
    pub fn send(&self, value: S) -> Result<(), PutError<S>> {
        self.tx.send(value)
    }

    /// Receives the next value, waiting until one arrives.
    ///
    /// # Errors
    /// [`GetError::Closed`] once the other end has closed, or is gone
    /// (dropped, or its process ended), and everything it sent was
    /// received; as [`Queue::get`] otherwise.
    pub fn recv(&self) -> Result<R, GetError> {
        self.rx.recv_wait(Wait::Forever)
    }

    /// Receives the next value without blocking a thread. Works on any
    /// async runtime.
    ///
    /// # Errors
    /// As [`recv`](Self::recv).
    pub fn recv_async(&self) -> RecvFuture<'_, R> {
        self.rx.recv_async()
    }

    /// Like [`recv`](Self::recv), waiting at most `timeout`.
    ///
    /// # Errors
    /// As [`recv`](Self::recv), plus [`GetError::Empty`] when time ran out.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<R, GetError> {
        self.rx.recv_wait(wait_for(timeout))
    }

    /// Like [`recv`](Self::recv), but never waits.
    ///
    /// # Errors
    /// As [`recv`](Self::recv), plus [`GetError::Empty`].
    pub fn try_recv(&self) -> Result<R, GetError> {
        self.rx.recv_wait(Wait::No)
    }

    /// Waits at most `timeout` until [`recv`](Self::recv) would not block.
    ///
    /// # Errors
    /// The hub cannot be reached (see [`Queue::len`]).
    pub fn poll(&self, timeout: Duration) -> Result<bool, QueueError> {
        self.rx.poll(timeout)
    }

    /// Tells the other end nothing more will come: once it has received
    /// what was sent, its `recv` returns [`GetError::Closed`].
    ///
    /// # Errors
    /// As [`Queue::close`].
    pub fn close(&self) -> Result<(), QueueError> {
        self.tx.close()
    }
}

fn wait_for(timeout: Duration) -> Wait {
    Instant::now()
        .checked_add(timeout)
        .map_or(Wait::Forever, Wait::Until)
}

/// The sending end of a one-way pipe.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct PipeSender<T>(Tx<T>);

impl<T> fmt::Debug for PipeSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PipeSender").field(&self.0).finish()
    }
}

impl<T: Payload> PipeSender<T> {
    /// Sends a value; blocks while a local pipe's buffer is full, as
    /// [`PipeEnd::send`].
    ///
    /// # Errors
    /// As [`PipeEnd::send`]; the value comes back.
    pub fn send(&self, value: T) -> Result<(), PutError<T>> {
        self.0.send(value)
    }

    /// Tells the receiver nothing more will come.
    ///
    /// # Errors
    /// As [`Queue::close`].
    pub fn close(&self) -> Result<(), QueueError> {
        self.0.close()
    }
}

/// The receiving end of a one-way pipe.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct PipeReceiver<T>(Rx<T>);

impl<T> fmt::Debug for PipeReceiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PipeReceiver").field(&self.0).finish()
    }
}

impl<T: Payload> PipeReceiver<T> {
    /// Receives the next value, waiting until one arrives.
    ///
    /// # Errors
    /// As [`PipeEnd::recv`].
    pub fn recv(&self) -> Result<T, GetError> {
        self.0.recv_wait(Wait::Forever)
    }

    /// Receives the next value without blocking a thread. Works on any
    /// async runtime.
    ///
    /// # Errors
    /// As [`recv`](Self::recv).
    pub fn recv_async(&self) -> RecvFuture<'_, T> {
        self.0.recv_async()
    }

    /// Like [`recv`](Self::recv), waiting at most `timeout`.
    ///
    /// # Errors
    /// As [`PipeEnd::recv_timeout`].
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, GetError> {
        self.0.recv_wait(wait_for(timeout))
    }

    /// Like [`recv`](Self::recv), but never waits.
    ///
    /// # Errors
    /// As [`PipeEnd::try_recv`].
    pub fn try_recv(&self) -> Result<T, GetError> {
        self.0.recv_wait(Wait::No)
    }

    /// Waits at most `timeout` until [`recv`](Self::recv) would not block.
    ///
    /// # Errors
    /// As [`PipeEnd::poll`].
    pub fn poll(&self, timeout: Duration) -> Result<bool, QueueError> {
        self.0.poll(timeout)
    }
}

impl<T> PipeSender<T> {
    /// Whether this end sends through the shared-memory lane (for tests
    /// and benches).
    #[doc(hidden)]
    pub fn uses_lane(&self) -> bool {
        self.0.lane.is_some()
    }
}

impl<T> PipeReceiver<T> {
    /// Whether this end receives through the shared-memory lane (for
    /// tests and benches).
    #[doc(hidden)]
    pub fn uses_lane(&self) -> bool {
        self.0.lane.is_some()
    }

    /// For [`super::wait`]: whether `recv` would not block now; if not,
    /// `waker` is woken on a change until `forget`.
    pub(crate) fn poll_ready(&self, waker: &Waker) -> Result<bool, QueueError> {
        self.0.poll_ready(waker)
    }

    pub(crate) fn forget(&self, waker: &Waker) {
        self.0.forget(waker);
    }
}

impl<S, R> PipeEnd<S, R> {
    /// Whether this end `(sends, receives)` through shared-memory lanes
    /// (for tests and benches).
    #[doc(hidden)]
    pub fn uses_lanes(&self) -> (bool, bool) {
        (self.tx.lane.is_some(), self.rx.lane.is_some())
    }

    /// For [`super::wait`], as [`PipeReceiver::poll_ready`].
    pub(crate) fn poll_ready(&self, waker: &Waker) -> Result<bool, QueueError> {
        self.rx.poll_ready(waker)
    }

    pub(crate) fn forget(&self, waker: &Waker) {
        self.rx.forget(waker);
    }
}
