//! [`Lock`]: a mutual-exclusion lock shared between processes, that a
//! dead holder cannot wedge.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Got, Kind, LockError, Place, op, wait_for};
use crate::queues::wire::Wait;

/// A lock shared between processes (Python's `multiprocessing.Lock`),
/// crash-safe: if the process holding it dies, the next acquirer gets it
/// with [`LockError::OwnerDied`] instead of waiting forever.
///
/// Acquiring returns a [`LockGuard`]; dropping the guard releases the
/// lock. Waiters are served in the order they asked. The handle is
/// `Serialize`: pass clones to tasks and processes.
///
/// ```
/// use procpool::Lock;
/// use std::time::Duration;
///
/// let lock = Lock::new();
/// let guard = lock.acquire().unwrap();
/// assert!(lock.try_acquire().unwrap_err().is_timeout());
/// drop(guard);
/// let _guard = lock.acquire_timeout(Duration::from_secs(1)).unwrap();
/// ```
#[derive(Clone)]
pub struct Lock {
    pub(super) place: Place,
}

/// Holds a [`Lock`] (or a [`Semaphore`](super::Semaphore) permit) until
/// dropped. It belongs to the process that acquired it: it is not
/// `Serialize`.
#[must_use = "the lock is released when the guard drops"]
pub struct LockGuard {
    pub(super) place: Place,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.place.release_quietly();
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("id", &self.place.id())
            .finish()
    }
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock")
            .field("id", &self.place.id())
            .finish()
    }
}

impl Default for Lock {
    fn default() -> Self {
        Self::new()
    }
}

impl Lock {
    /// A new, unlocked lock held by this process's hub.
    pub fn new() -> Self {
        Lock {
            place: Place::new(Kind::Permits { bound: Some(1) }, 1),
        }
    }

    /// Waits until the lock is free and takes it.
    ///
    /// # Errors
    /// [`LockError::OwnerDied`] (holding the guard) if the previous holder
    /// died holding it; [`LockError::Failed`] if the hub cannot be reached.
    pub fn acquire(&self) -> Result<LockGuard, LockError<LockGuard>> {
        acquire(&self.place, Wait::Forever)
    }

    /// Takes the lock if it is free now.
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire), and [`LockError::Timeout`] if it is
    /// held.
    pub fn try_acquire(&self) -> Result<LockGuard, LockError<LockGuard>> {
        acquire(&self.place, Wait::No)
    }

    /// Waits at most `timeout` for the lock.
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire), and [`LockError::Timeout`].
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<LockGuard, LockError<LockGuard>> {
        acquire(&self.place, wait_for(timeout))
    }
}

/// One acquire of a permit of `place`.
pub(super) fn acquire(place: &Place, wait: Wait) -> Result<LockGuard, LockError<LockGuard>> {
    let guard = || LockGuard {
        place: place.clone(),
    };
    match place.acquire(op::ACQUIRE, wait) {
        Ok(Got::Yes) => Ok(guard()),
        Ok(Got::OwnerDied) => Err(LockError::OwnerDied(guard())),
        Ok(Got::No) => Err(LockError::Timeout),
        Err(e) => Err(LockError::Failed(e)),
    }
}

impl Serialize for Lock {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.place.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Lock {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Place::deserialize(d).map(|place| Lock { place })
    }
}
