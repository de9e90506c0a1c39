//! [`RLock`]: a reentrant [`Lock`]: the thread that holds it may take it
//! again.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{LazyLock, Mutex};
use std::thread::{self, ThreadId};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Lock, LockError, LockGuard, Place, wait_for};
use crate::queues::wire::Wait;
use crate::sync::lock;

/// A reentrant lock shared between processes (Python's
/// `multiprocessing.RLock`): the thread holding it may acquire it again,
/// and it is free once every guard that thread took has dropped.
/// Crash-safe as [`Lock`]: a process that dies holding it hands it to the
/// next acquirer with [`LockError::OwnerDied`].
///
/// The hub sees one lock; the nesting is counted in the holding process.
/// Guards belong to the thread that took them (they are not `Send`).
///
/// ```
/// use procpool::RLock;
///
/// let r = RLock::new();
/// let outer = r.acquire().unwrap();
/// let inner = r.acquire().unwrap(); // same thread: no deadlock
/// drop(inner);
/// drop(outer);
/// ```
#[derive(Clone)]
pub struct RLock {
    pub(super) lock: Lock,
}

/// An `RLock` held in this process: the thread, its depth, and the hub
/// lock's guard.
type Holding = (ThreadId, u64, LockGuard);

/// The `RLock`s held in this process, by id.
static HELD: LazyLock<Mutex<HashMap<u64, Holding>>> = LazyLock::new(Mutex::default);

/// One level of an [`RLock`] held by this thread; the lock is released
/// when the outermost guard drops.
#[must_use = "the lock is released when the guard drops"]
pub struct RLockGuard {
    id: u64,
    /// Tied to the thread that holds the lock.
    _thread: PhantomData<*const ()>,
}

impl Drop for RLockGuard {
    fn drop(&mut self) {
        let me = thread::current().id();
        let mut held = lock(&HELD);
        // Only this thread's count (a condition's failed wait took it).
        let done = held
            .get_mut(&self.id)
            .filter(|(t, ..)| *t == me)
            .is_some_and(|(_, depth, _)| {
                *depth -= 1;
                *depth == 0
            });
        let guard = done.then(|| held.remove(&self.id)).flatten();
        drop(held);
        // Released (one frame to the hub) outside the map's lock.
        drop(guard);
    }
}

impl fmt::Debug for RLockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLockGuard").field("id", &self.id).finish()
    }
}

impl fmt::Debug for RLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLock")
            .field("id", &self.lock.place.id())
            .finish()
    }
}

impl Default for RLock {
    fn default() -> Self {
        Self::new()
    }
}

impl RLock {
    /// A new, unlocked reentrant lock held by this process's hub.
    pub fn new() -> Self {
        RLock { lock: Lock::new() }
    }

    /// Takes the lock, waiting for it unless this thread holds it already.
    ///
    /// # Errors
    /// As [`Lock::acquire`].
    pub fn acquire(&self) -> Result<RLockGuard, LockError<RLockGuard>> {
        self.acquire_on(Wait::Forever)
    }

    /// Takes the lock if it is free or this thread holds it.
    ///
    /// # Errors
    /// As [`Lock::try_acquire`].
    pub fn try_acquire(&self) -> Result<RLockGuard, LockError<RLockGuard>> {
        self.acquire_on(Wait::No)
    }

    /// Waits at most `timeout` for the lock.
    ///
    /// # Errors
    /// As [`Lock::acquire_timeout`].
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<RLockGuard, LockError<RLockGuard>> {
        self.acquire_on(wait_for(timeout))
    }

    fn acquire_on(&self, wait: Wait) -> Result<RLockGuard, LockError<RLockGuard>> {
        acquire(&self.lock.place, wait)
    }
}

impl RLockGuard {
    /// The id of the lock this guard holds a level of.
    pub(super) fn id(&self) -> u64 {
        self.id
    }
}

/// Takes one level of the reentrant lock at `place` for this thread.
pub(super) fn acquire(place: &Place, wait: Wait) -> Result<RLockGuard, LockError<RLockGuard>> {
    let id = place.id();
    let me = thread::current().id();
    // Made only once a level is counted: its drop uncounts one.
    let guard = || RLockGuard {
        id,
        _thread: PhantomData,
    };
    if let Some((_, depth, _)) = lock(&HELD).get_mut(&id).filter(|(t, ..)| *t == me) {
        *depth += 1;
        return Ok(guard());
    }
    let (inner, died) = match super::lock::acquire(place, wait) {
        Ok(g) => (g, false),
        Err(LockError::OwnerDied(g)) => (g, true),
        Err(LockError::Timeout) => return Err(LockError::Timeout),
        Err(LockError::Failed(e)) => return Err(LockError::Failed(e)),
    };
    lock(&HELD).insert(id, (me, 1, inner));
    if died {
        Err(LockError::OwnerDied(guard()))
    } else {
        Ok(guard())
    }
}

/// Takes every level of lock `id` that this thread holds out of the
/// count (a condition's wait releases them all): how many, and the hub
/// lock's guard. `None` if this thread does not hold it.
pub(super) fn take_levels(id: u64) -> Option<(u64, LockGuard)> {
    let me = thread::current().id();
    let mut held = lock(&HELD);
    if held.get(&id).is_some_and(|(t, ..)| *t == me) {
        held.remove(&id).map(|(_, depth, guard)| (depth, guard))
    } else {
        None
    }
}

/// Puts back what [`take_levels`] took, once this thread holds the hub
/// lock again.
pub(super) fn restore_levels(id: u64, depth: u64, guard: LockGuard) {
    lock(&HELD).insert(id, (thread::current().id(), depth, guard));
}

impl Serialize for RLock {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.lock.serialize(s)
    }
}

impl<'de> Deserialize<'de> for RLock {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Lock::deserialize(d).map(|lock| RLock { lock })
    }
}
