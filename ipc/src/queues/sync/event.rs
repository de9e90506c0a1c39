//! [`Event`]: a flag shared between processes that waiters sleep on.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Got, Kind, Place, op, wait_for};
use crate::error::QueueError;
use crate::queues::wire::Wait;

/// A flag shared between processes (Python's `multiprocessing.Event`):
/// [`set`](Self::set) wakes every process waiting in
/// [`wait`](Self::wait), [`clear`](Self::clear) lowers it again.
///
/// The handle is `Serialize`: pass clones to tasks and processes. A waiter
/// parks in the hub and is answered when the flag is set: no polling.
///
/// ```
/// use procpool::Event;
/// use std::time::Duration;
///
/// let e = Event::new();
/// assert!(!e.wait_timeout(Duration::from_millis(1)).unwrap());
/// e.set().unwrap();
/// assert!(e.is_set().unwrap());
/// e.wait().unwrap();
/// ```
#[derive(Clone)]
pub struct Event {
    place: Place,
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("id", &self.place.id())
            .finish()
    }
}

impl Default for Event {
    fn default() -> Self {
        Self::new()
    }
}

impl Event {
    /// A new event, not set, held by this process's hub.
    pub fn new() -> Self {
        Event {
            place: Place::new(Kind::Event, 0),
        }
    }

    /// Sets the flag and wakes every waiter.
    ///
    /// # Errors
    /// The hub cannot be reached, or holds no such event any more.
    pub fn set(&self) -> Result<(), QueueError> {
        self.place.simple(op::SET).map(drop)
    }

    /// Lowers the flag.
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub fn clear(&self) -> Result<(), QueueError> {
        self.place.simple(op::CLEAR).map(drop)
    }

    /// Whether the flag is set now.
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub fn is_set(&self) -> Result<bool, QueueError> {
        self.place.simple(op::IS_SET).map(|v| v != 0)
    }

    /// Waits until the flag is set.
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub fn wait(&self) -> Result<(), QueueError> {
        self.wait_on(Wait::Forever).map(drop)
    }

    /// Waits at most `timeout` for the flag; whether it is set (Python's
    /// `Event.wait(timeout)`).
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<bool, QueueError> {
        self.wait_on(wait_for(timeout))
    }

    fn wait_on(&self, wait: Wait) -> Result<bool, QueueError> {
        self.place.acquire(op::WAIT, wait).map(|got| got != Got::No)
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.place.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Place::deserialize(d).map(|place| Event { place })
    }
}
