//! [`RCondition`]: a condition over an [`RLock`] (Python's default
//! `Condition()`): a wait releases every level the thread holds and
//! takes them all back.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::condition::{notify_raw, wait_raw};
use super::rlock::{self, RLockGuard};
use super::{LockError, LockGuard, Place, RLock, wait_for};
use crate::error::QueueError;
use crate::queues::wire::Wait;

/// A condition variable over a reentrant lock, shared between processes
/// (Python's `multiprocessing.Condition()`, whose lock is an `RLock`, or
/// `Condition(rlock)`). The thread holding the [`RLock`] may
/// [`acquire`](Self::acquire) again; a [`wait`](RConditionGuard::wait)
/// releases every level this thread holds, however deep, and holds them
/// all again before it returns, so the guards taken before the wait stay
/// valid.
///
/// Crash-safe as [`Condition`](super::Condition): a process that dies
/// holding the lock hands it on with [`LockError::OwnerDied`], and a
/// notified waiter that dies before it has the lock back passes its
/// notification to the next waiter. Conditions over the same `RLock`
/// share one wait set. Guards belong to the thread that took them.
///
/// ```
/// use procpool::{RCondition, RLock};
/// use std::time::Duration;
///
/// let rlock = RLock::new();
/// let c = RCondition::with_rlock(&rlock);
/// let outer = rlock.acquire().unwrap();
/// let g = c.acquire().unwrap(); // a second level: no deadlock
/// let (g, notified) = g.wait_timeout(Duration::from_millis(1)).unwrap();
/// assert!(!notified); // both levels are held again
/// drop(g);
/// drop(outer);
/// ```
#[derive(Clone)]
pub struct RCondition {
    rlock: RLock,
}

/// One level of an [`RCondition`]'s lock, held by this thread; released
/// when dropped (the lock is free once every level is).
#[must_use = "the level is released when the guard drops"]
pub struct RConditionGuard {
    level: RLockGuard,
    place: Place,
}

impl fmt::Debug for RCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RCondition")
            .field("id", &self.rlock.lock.place.id())
            .finish()
    }
}

impl fmt::Debug for RConditionGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RConditionGuard")
            .field("id", &self.place.id())
            .finish()
    }
}

impl Default for RCondition {
    fn default() -> Self {
        Self::new()
    }
}

impl RCondition {
    /// A new condition with its own reentrant lock (free, nobody
    /// waiting), held by this process's hub.
    pub fn new() -> Self {
        Self::with_rlock(&RLock::new())
    }

    /// A condition over an existing reentrant lock (Python's
    /// `Condition(rlock)`): [`acquire`](Self::acquire) takes a level of
    /// it, and guards of the `RLock` and of the condition count together.
    /// Works on any handle of the lock, in the hub process or a worker.
    pub fn with_rlock(rlock: &RLock) -> Self {
        RCondition {
            rlock: rlock.clone(),
        }
    }

    /// The reentrant lock under this condition.
    pub fn rlock(&self) -> &RLock {
        &self.rlock
    }

    /// Turns a level of this condition's lock, taken with
    /// [`RLock::acquire`], into the condition's guard, to wait or notify
    /// with it. A guard of another lock comes back as the error.
    ///
    /// ```
    /// use procpool::{RCondition, RLock};
    ///
    /// let rlock = RLock::new();
    /// let c = RCondition::with_rlock(&rlock);
    /// let g = c.adopt(rlock.acquire().unwrap()).unwrap();
    /// assert_eq!(g.notify_all().unwrap(), 0);
    /// drop(g);
    /// assert!(c.adopt(RLock::new().acquire().unwrap()).is_err());
    /// ```
    ///
    /// # Errors
    /// The guard, if it holds another lock.
    pub fn adopt(&self, level: RLockGuard) -> Result<RConditionGuard, RLockGuard> {
        let place = &self.rlock.lock.place;
        if level.id() == place.id() {
            Ok(RConditionGuard {
                level,
                place: place.clone(),
            })
        } else {
            Err(level)
        }
    }

    /// Takes a level of the lock, waiting unless this thread holds it.
    ///
    /// # Errors
    /// As [`RLock::acquire`].
    pub fn acquire(&self) -> Result<RConditionGuard, LockError<RConditionGuard>> {
        self.acquire_on(Wait::Forever)
    }

    /// Takes a level of the lock if it is free or this thread holds it.
    ///
    /// # Errors
    /// As [`RLock::try_acquire`].
    pub fn try_acquire(&self) -> Result<RConditionGuard, LockError<RConditionGuard>> {
        self.acquire_on(Wait::No)
    }

    /// Waits at most `timeout` for the lock.
    ///
    /// # Errors
    /// As [`RLock::acquire_timeout`].
    pub fn acquire_timeout(
        &self,
        timeout: Duration,
    ) -> Result<RConditionGuard, LockError<RConditionGuard>> {
        self.acquire_on(wait_for(timeout))
    }

    fn acquire_on(&self, wait: Wait) -> Result<RConditionGuard, LockError<RConditionGuard>> {
        let place = &self.rlock.lock.place;
        let wrap = |level| RConditionGuard {
            level,
            place: place.clone(),
        };
        match rlock::acquire(place, wait) {
            Ok(level) => Ok(wrap(level)),
            Err(LockError::OwnerDied(level)) => Err(LockError::OwnerDied(wrap(level))),
            Err(LockError::Timeout) => Err(LockError::Timeout),
            Err(LockError::Failed(e)) => Err(LockError::Failed(e)),
        }
    }
}

impl RConditionGuard {
    /// Releases every level of the lock this thread holds, waits for a
    /// notification, and takes them all again before it returns.
    ///
    /// # Errors
    /// [`LockError::OwnerDied`] (with the lock held again, at the same
    /// depth) if a holder died while this one waited;
    /// [`LockError::Failed`] (the lock is lost: the link to the hub
    /// broke).
    pub fn wait(self) -> Result<Self, LockError<Self>> {
        self.wait_on(Wait::Forever).map(|(g, _)| g)
    }

    /// As [`wait`](Self::wait), for at most `timeout` of waiting for a
    /// notification; the lock is taken again either way. Returns whether
    /// it was notified.
    ///
    /// # Errors
    /// As [`wait`](Self::wait).
    pub fn wait_timeout(self, timeout: Duration) -> Result<(Self, bool), LockError<Self>> {
        self.wait_on(wait_for(timeout))
    }

    fn wait_on(self, wait: Wait) -> Result<(Self, bool), LockError<Self>> {
        let id = self.place.id();
        // This guard is one level; the count holds them all.
        let (depth, inner) =
            rlock::take_levels(id).ok_or(LockError::Failed(QueueError::Protocol))?;
        // The hub releases the lock as it parks the wait: no guard drop.
        std::mem::forget(inner);
        let (notified, died) = wait_raw(&self.place, wait).map_err(LockError::Failed)?;
        let inner = LockGuard {
            place: self.place.clone(),
        };
        rlock::restore_levels(id, depth, inner);
        if died {
            Err(LockError::OwnerDied(self))
        } else {
            Ok((self, notified))
        }
    }

    /// Wakes up to `n` waiters (each takes the lock in turn once every
    /// level of this thread is released); returns how many were woken.
    ///
    /// # Errors
    /// The hub could not be reached.
    pub fn notify(&self, n: u64) -> Result<u64, QueueError> {
        notify_raw(&self.place, n)
    }

    /// Wakes every waiter; returns how many.
    ///
    /// # Errors
    /// As [`notify`](Self::notify).
    pub fn notify_all(&self) -> Result<u64, QueueError> {
        self.notify(u64::MAX)
    }

    /// Back to a plain level of the [`RLock`].
    pub fn into_rlock_guard(self) -> RLockGuard {
        self.level
    }
}

impl Serialize for RCondition {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.rlock.serialize(s)
    }
}

impl<'de> Deserialize<'de> for RCondition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        RLock::deserialize(d).map(|rlock| RCondition { rlock })
    }
}
