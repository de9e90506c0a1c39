//! [`Semaphore`]: counted permits shared between processes; a dead
//! holder's permits come back.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::lock::acquire;
use super::{Kind, LockError, LockGuard, Place, ReleaseError, wait_for};
use crate::queues::wire::Wait;

/// A counting semaphore shared between processes (Python's
/// `multiprocessing.Semaphore`, and `BoundedSemaphore` when made with
/// [`bounded`](Self::bounded)), crash-safe: permits held by a process that
/// dies come back, and whoever gets one next hears of it through
/// [`LockError::OwnerDied`].
///
/// [`acquire`](Self::acquire) returns a guard that gives its permit back
/// when dropped; [`release`](Self::release) adds a permit without one (as
/// Python's `release` may be called by anyone).
///
/// ```
/// use procpool::Semaphore;
///
/// let s = Semaphore::bounded(2);
/// let a = s.acquire().unwrap();
/// let _b = s.acquire().unwrap();
/// assert!(s.try_acquire().unwrap_err().is_timeout());
/// drop(a);
/// let _c = s.try_acquire().unwrap();
/// ```
#[derive(Clone)]
pub struct Semaphore {
    place: Place,
}

/// A permit of a [`Semaphore`], given back when dropped.
pub type SemaphoreGuard = LockGuard;

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("id", &self.place.id())
            .finish()
    }
}

impl Semaphore {
    /// A semaphore with `permits` free permits and no bound on releases.
    pub fn new(permits: u64) -> Self {
        Semaphore {
            place: Place::new(Kind::Permits { bound: None }, permits),
        }
    }

    /// A bounded semaphore (Python's `BoundedSemaphore`): `permits` free,
    /// and [`release`](Self::release) beyond that many is an error.
    pub fn bounded(permits: u64) -> Self {
        Semaphore {
            place: Place::new(
                Kind::Permits {
                    bound: Some(permits),
                },
                permits,
            ),
        }
    }

    /// Waits for a permit and takes it.
    ///
    /// # Errors
    /// [`LockError::OwnerDied`] (holding the guard) if the permit was a
    /// dead holder's; [`LockError::Failed`] if the hub cannot be reached.
    pub fn acquire(&self) -> Result<SemaphoreGuard, LockError<SemaphoreGuard>> {
        acquire(&self.place, Wait::Forever)
    }

    /// Takes a permit if one is free now.
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire), and [`LockError::Timeout`].
    pub fn try_acquire(&self) -> Result<SemaphoreGuard, LockError<SemaphoreGuard>> {
        acquire(&self.place, Wait::No)
    }

    /// Waits at most `timeout` for a permit.
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire), and [`LockError::Timeout`].
    pub fn acquire_timeout(
        &self,
        timeout: Duration,
    ) -> Result<SemaphoreGuard, LockError<SemaphoreGuard>> {
        acquire(&self.place, wait_for(timeout))
    }

    /// Adds a permit that no guard gave back (`std::mem::forget` a guard to
    /// keep a permit taken, as Python code that acquires in one place and
    /// releases in another does).
    ///
    /// # Errors
    /// [`ReleaseError::NotHeld`] for a bounded semaphore whose permits are
    /// all free already; [`ReleaseError::Failed`] if the hub cannot be
    /// reached.
    pub fn release(&self) -> Result<(), ReleaseError> {
        match self.place.release() {
            Ok(true) => Ok(()),
            Ok(false) => Err(ReleaseError::NotHeld),
            Err(e) => Err(ReleaseError::Failed(e)),
        }
    }
}

impl Serialize for Semaphore {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.place.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Semaphore {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Place::deserialize(d).map(|place| Semaphore { place })
    }
}
