//! [`Pipe`]: a connected pair of typed endpoints between processes.
//!
//! Each direction is a hub queue with one reader, so a pipe end is
//! `Serialize` like a queue handle: pass one end to a spawned process or a
//! pool task and keep the other.
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
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::queue::{GetError, GetFuture, PutError, Queue, QueueError};
use crate::task::Payload;

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
                tx: ab_tx,
                rx: ba_rx,
            },
            PipeEnd {
                tx: ba_tx,
                rx: ab_rx,
            },
        )
    }

    /// A one-way pipe: `(receiver, sender)`, in the order Python's
    /// `Pipe(duplex=False)` returns them.
    pub fn one_way<T: Payload>() -> (PipeReceiver<T>, PipeSender<T>) {
        let (rx, tx) = Queue::pipe();
        (PipeReceiver(rx), PipeSender(tx))
    }
}

/// One end of a duplex pipe: sends `S`, receives `R`.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct PipeEnd<S, R> {
    tx: Queue<S>,
    rx: Queue<R>,
}

impl<S, R> fmt::Debug for PipeEnd<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipeEnd")
            .field("tx", &self.tx)
            .field("rx", &self.rx)
            .finish()
    }
}

impl<S, R> PipeEnd<S, R> {
    /// The queue this end receives from.
    pub(crate) fn receiving(&self) -> &Queue<R> {
        &self.rx
    }
}

impl<T> PipeReceiver<T> {
    /// The queue this end receives from.
    pub(crate) fn queue(&self) -> &Queue<T> {
        &self.0
    }
}

impl<S: Payload, R: Payload> PipeEnd<S, R> {
    /// Sends a value to the other end. Never blocks.
    ///
    /// # Errors
    /// As [`Queue::put`]; the value comes back.
    pub fn send(&self, value: S) -> Result<(), PutError<S>> {
        self.tx.put(value)
    }

    /// Receives the next value, waiting until one arrives.
    ///
    /// # Errors
    /// [`GetError::Closed`] once the other end has closed, or is gone
    /// (dropped, or its process ended), and everything it sent was
    /// received; as [`Queue::get`] otherwise.
    pub fn recv(&self) -> Result<R, GetError> {
        self.rx.get()
    }

    /// Receives the next value without blocking a thread, as
    /// [`Queue::get_async`]. Works on any async runtime.
    ///
    /// # Errors
    /// As [`recv`](Self::recv).
    pub fn recv_async(&self) -> GetFuture<'_, R> {
        self.rx.get_async()
    }

    /// Like [`recv`](Self::recv), waiting at most `timeout`.
    ///
    /// # Errors
    /// As [`recv`](Self::recv), plus [`GetError::Empty`] when time ran out.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<R, GetError> {
        self.rx.get_timeout(timeout)
    }

    /// Like [`recv`](Self::recv), but never waits.
    ///
    /// # Errors
    /// As [`recv`](Self::recv), plus [`GetError::Empty`].
    pub fn try_recv(&self) -> Result<R, GetError> {
        self.rx.try_get()
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

/// The sending end of a one-way pipe.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct PipeSender<T>(Queue<T>);

impl<T> fmt::Debug for PipeSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PipeSender").field(&self.0).finish()
    }
}

impl<T: Payload> PipeSender<T> {
    /// Sends a value. Never blocks.
    ///
    /// # Errors
    /// As [`Queue::put`]; the value comes back.
    pub fn send(&self, value: T) -> Result<(), PutError<T>> {
        self.0.put(value)
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
pub struct PipeReceiver<T>(Queue<T>);

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
        self.0.get()
    }

    /// Receives the next value without blocking a thread, as
    /// [`Queue::get_async`]. Works on any async runtime.
    ///
    /// # Errors
    /// As [`recv`](Self::recv).
    pub fn recv_async(&self) -> GetFuture<'_, T> {
        self.0.get_async()
    }

    /// Like [`recv`](Self::recv), waiting at most `timeout`.
    ///
    /// # Errors
    /// As [`PipeEnd::recv_timeout`].
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, GetError> {
        self.0.get_timeout(timeout)
    }

    /// Like [`recv`](Self::recv), but never waits.
    ///
    /// # Errors
    /// As [`PipeEnd::try_recv`].
    pub fn try_recv(&self) -> Result<T, GetError> {
        self.0.try_get()
    }

    /// Waits at most `timeout` until [`recv`](Self::recv) would not block.
    ///
    /// # Errors
    /// As [`PipeEnd::poll`].
    pub fn poll(&self, timeout: Duration) -> Result<bool, QueueError> {
        self.0.poll(timeout)
    }
}
