//! [`Condition`]: a lock with a wait set; a waiter that dies passes its
//! notification on.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::lock::acquire;
use super::{
    Kind, Lock, LockError, LockGuard, Party, Place, Prim, State, Waiter, op, reply, status,
    wait_for,
};
use crate::error::QueueError;
use crate::link::{Dirty, Link};
use crate::queues::wire::{Wait, status as qstatus};
use crate::sync::wait_until;

/// A condition variable shared between processes (Python's
/// `multiprocessing.Condition`): a holder of the lock may
/// [`wait`](ConditionGuard::wait), which releases the lock until a
/// [`notify`](ConditionGuard::notify), then takes it again. The lock is
/// the condition's own ([`new`](Self::new)) or an existing [`Lock`]
/// ([`with_lock`](Self::with_lock), Python's `Condition(lock)`).
///
/// Crash-safe: the lock is a [`Lock`]'s (a dead holder hands
/// it on with [`LockError::OwnerDied`]), and a notified waiter that dies
/// before it has the lock back passes its notification to the next
/// waiter, so a notification is never lost with a dead process.
///
/// ```
/// use procpool::Condition;
/// use std::time::Duration;
///
/// let c = Condition::new();
/// let guard = c.acquire().unwrap();
/// let (guard, notified) = guard.wait_timeout(Duration::from_millis(1)).unwrap();
/// assert!(!notified); // nobody notified: the lock is held again anyway
/// guard.notify_all().unwrap();
/// ```
#[derive(Clone)]
pub struct Condition {
    place: Place,
}

/// The lock of a [`Condition`], held; released when dropped.
#[must_use = "the lock is released when the guard drops"]
pub struct ConditionGuard {
    guard: LockGuard,
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condition")
            .field("id", &self.place.id())
            .finish()
    }
}

impl fmt::Debug for ConditionGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConditionGuard")
            .field("id", &self.guard.place.id())
            .finish()
    }
}

impl Default for Condition {
    fn default() -> Self {
        Self::new()
    }
}

fn wrap(
    r: Result<LockGuard, LockError<LockGuard>>,
) -> Result<ConditionGuard, LockError<ConditionGuard>> {
    match r {
        Ok(guard) => Ok(ConditionGuard { guard }),
        Err(LockError::OwnerDied(guard)) => Err(LockError::OwnerDied(ConditionGuard { guard })),
        Err(LockError::Timeout) => Err(LockError::Timeout),
        Err(LockError::Failed(e)) => Err(LockError::Failed(e)),
    }
}

impl Condition {
    /// A new condition (its lock free, nobody waiting), held by this
    /// process's hub.
    pub fn new() -> Self {
        Condition {
            place: Place::new(Kind::Condition, 1),
        }
    }

    /// A condition over an existing lock (Python's `Condition(lock)`):
    /// [`acquire`](Self::acquire) takes that lock, a waiter releases it
    /// and takes it back, and a holder that dies hands it on with
    /// [`LockError::OwnerDied`] as the lock does. Conditions made with the
    /// same lock share one wait set, as in Python; the lock works as
    /// before for code that only takes it. Works on any handle of the
    /// lock, in the hub process or a worker.
    ///
    /// ```
    /// use procpool::{Condition, Lock};
    /// use std::time::Duration;
    ///
    /// let lock = Lock::new();
    /// let c = Condition::with_lock(&lock);
    /// let guard = c.acquire().unwrap();
    /// assert!(lock.try_acquire().unwrap_err().is_timeout()); // one lock
    /// let (guard, notified) = guard.wait_timeout(Duration::from_millis(1)).unwrap();
    /// assert!(!notified);
    /// assert!(lock.try_acquire().unwrap_err().is_timeout()); // held again
    /// drop(guard);
    /// drop(lock.try_acquire().unwrap());
    /// ```
    pub fn with_lock(lock: &Lock) -> Self {
        Condition {
            place: lock.place.clone(),
        }
    }

    /// Turns a guard of this condition's lock, taken with
    /// [`Lock::acquire`], into the condition's guard, to
    /// [`wait`](ConditionGuard::wait) or notify with it (Python's
    /// `with lock: cond.wait()`). A guard of another lock comes back as
    /// the error.
    ///
    /// ```
    /// use procpool::{Condition, Lock};
    ///
    /// let lock = Lock::new();
    /// let c = Condition::with_lock(&lock);
    /// let g = c.adopt(lock.acquire().unwrap()).unwrap();
    /// assert_eq!(g.notify_all().unwrap(), 0);
    /// assert!(c.adopt(Lock::new().acquire().unwrap()).is_err());
    /// ```
    ///
    /// # Errors
    /// The guard, if it holds another lock.
    pub fn adopt(&self, guard: LockGuard) -> Result<ConditionGuard, LockGuard> {
        if guard.place.id() == self.place.id() {
            Ok(ConditionGuard { guard })
        } else {
            Err(guard)
        }
    }

    /// Takes the condition's lock.
    ///
    /// # Errors
    /// As [`Lock::acquire`](super::Lock::acquire).
    pub fn acquire(&self) -> Result<ConditionGuard, LockError<ConditionGuard>> {
        wrap(acquire(&self.place, Wait::Forever))
    }

    /// Takes the lock if it is free now.
    ///
    /// # Errors
    /// As [`Lock::try_acquire`](super::Lock::try_acquire).
    pub fn try_acquire(&self) -> Result<ConditionGuard, LockError<ConditionGuard>> {
        wrap(acquire(&self.place, Wait::No))
    }

    /// Waits at most `timeout` for the lock.
    ///
    /// # Errors
    /// As [`Lock::acquire_timeout`](super::Lock::acquire_timeout).
    pub fn acquire_timeout(
        &self,
        timeout: Duration,
    ) -> Result<ConditionGuard, LockError<ConditionGuard>> {
        wrap(acquire(&self.place, wait_for(timeout)))
    }
}

impl ConditionGuard {
    /// Releases the lock, waits for a notification, and takes the lock
    /// again before it returns.
    ///
    /// # Errors
    /// [`LockError::OwnerDied`] (with the lock held again) if a holder
    /// died while this one waited; [`LockError::Failed`].
    pub fn wait(self) -> Result<Self, LockError<Self>> {
        self.wait_on(Wait::Forever).map(|(g, _)| g)
    }

    /// As [`wait`](Self::wait), for at most `timeout` of waiting for a
    /// notification; the lock is taken again either way. Returns whether
    /// it was notified (Python's `wait(timeout)`).
    ///
    /// # Errors
    /// As [`wait`](Self::wait).
    pub fn wait_timeout(self, timeout: Duration) -> Result<(Self, bool), LockError<Self>> {
        self.wait_on(wait_for(timeout))
    }

    fn wait_on(self, wait: Wait) -> Result<(Self, bool), LockError<Self>> {
        let place = self.guard.place.clone();
        // The hub releases the lock as it parks the wait: no guard drop.
        std::mem::forget(self.guard);
        let (notified, died) = wait_raw(&place, wait).map_err(LockError::Failed)?;
        let g = ConditionGuard {
            guard: LockGuard { place },
        };
        if died {
            Err(LockError::OwnerDied(g))
        } else {
            Ok((g, notified))
        }
    }

    /// Wakes up to `n` waiters (each takes the lock in turn once this one
    /// releases it); returns how many were woken.
    ///
    /// # Errors
    /// The hub could not be reached.
    pub fn notify(&self, n: u64) -> Result<u64, QueueError> {
        notify_raw(&self.guard.place, n)
    }

    /// Wakes every waiter; returns how many.
    ///
    /// # Errors
    /// As [`notify`](Self::notify).
    pub fn notify_all(&self) -> Result<u64, QueueError> {
        self.notify(u64::MAX)
    }
}

/// Waits on the condition whose lock is at `place`, which this party
/// holds: the hub releases the lock as it parks the wait, and this
/// returns once the lock is held again: `(notified, owner died)`.
///
/// # Errors
/// The hub could not be reached (the lock is lost with the link), or
/// this party did not hold the lock (`Protocol`).
pub(super) fn wait_raw(place: &Place, wait: Wait) -> Result<(bool, bool), QueueError> {
    match place {
        Place::Local(prim) => prim.local_cond_wait(wait).ok_or(QueueError::Protocol),
        Place::Remote { id, client } => {
            let (code, value, _) = client.request(op::COND_WAIT, *id, 0, &[], wait)?;
            match code {
                qstatus::OK => Ok((value != 0, false)),
                status::OWNER_DIED => Ok((value != 0, true)),
                qstatus::NO_QUEUE => Err(QueueError::NoSuchQueue { id: *id }),
                _ => Err(QueueError::Protocol),
            }
        }
    }
}

/// Wakes up to `n` waiters of the condition whose lock is at `place`.
pub(super) fn notify_raw(place: &Place, n: u64) -> Result<u64, QueueError> {
    match place {
        Place::Local(prim) => Ok(prim.local_notify(n)),
        Place::Remote { id, client } => {
            let (code, value, _) = client.request(op::NOTIFY, *id, n, &[], Wait::Forever)?;
            match code {
                qstatus::OK => Ok(value),
                qstatus::NO_QUEUE => Err(QueueError::NoSuchQueue { id: *id }),
                _ => Err(QueueError::Protocol),
            }
        }
    }
}

impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.place.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Place::deserialize(d).map(|place| Condition { place })
    }
}

/// The hub side.
impl Prim {
    /// Moves up to `n` waiters from the wait set to the lock's queue,
    /// marked notified; how many.
    fn wake(&self, state: &mut State, n: u64, dirty: &mut Dirty) -> u64 {
        let mut moved = 0;
        while moved < n {
            let Some(w) = state.cond_waiters.pop_front() else {
                break;
            };
            state.returning.insert(w.key(), true);
            state.waiters.push_back(w);
            moved += 1;
        }
        self.pump(state, dirty);
        moved
    }

    /// Parks `waiter` (the lock's holder) in the wait set, releasing the
    /// lock; false if its party does not hold the lock.
    fn park(&self, state: &mut State, waiter: Waiter, dirty: &mut Dirty) -> bool {
        if !self.give_back(state, waiter.party()) {
            return false;
        }
        state.cond_waiters.push_back(waiter);
        self.pump(state, dirty);
        true
    }

    /// A local wait: `(notified, owner died)` once the lock is held again;
    /// `None` if this process does not hold the lock.
    fn local_cond_wait(&self, wait: Wait) -> Option<(bool, bool)> {
        let mut dirty = Dirty::default();
        let mut state = self.lock();
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        if !self.park(&mut state, Waiter::Local { ticket }, &mut dirty) {
            return None;
        }
        let deadline = wait.deadline();
        let mut timed_out = false;
        loop {
            if let Some(died) = state.granted.remove(&ticket) {
                let notified = state.returning.remove(&Key::Local(ticket)).unwrap_or(false);
                return Some((notified, died));
            }
            let limit = if timed_out { None } else { deadline };
            state = match wait_until(&self.changed, state, limit) {
                Ok(s) => s,
                Err(mut s) => {
                    timed_out = true;
                    // Still in the wait set: queue for the lock, not notified.
                    let at = s
                        .cond_waiters
                        .iter()
                        .position(|w| matches!(w, Waiter::Local { ticket: t } if *t == ticket));
                    if let Some(w) = at.and_then(|i| s.cond_waiters.remove(i)) {
                        s.returning.insert(w.key(), false);
                        s.waiters.push_back(w);
                        self.pump(&mut s, &mut dirty);
                    }
                    s
                }
            };
        }
    }

    fn local_notify(&self, n: u64) -> u64 {
        let mut dirty = Dirty::default();
        let mut state = self.lock();
        self.wake(&mut state, n, &mut dirty)
    }

    /// A condition's own remote operations; false if `code` is none.
    pub(super) fn serve_condition(
        &self,
        state: &mut State,
        link: &Arc<Link>,
        req: u64,
        code: u8,
        arg: u64,
        dirty: &mut Dirty,
    ) -> bool {
        match code {
            op::COND_WAIT => {
                let waiter = Waiter::Remote {
                    link: Arc::clone(link),
                    req,
                };
                if !self.park(state, waiter, dirty) {
                    reply(link, req, status::NOT_HELD, 0, dirty);
                }
            }
            op::NOTIFY => {
                let n = self.wake(state, arg, dirty);
                reply(link, req, qstatus::OK, n, dirty);
            }
            _ => return false,
        }
        true
    }

    /// A remote waiter gave up waiting for a notification: it queues for
    /// the lock, not notified (answered once it holds it). False if it
    /// was not in the wait set.
    pub(super) fn cancel_cond_wait(
        &self,
        state: &mut State,
        link_id: u64,
        req: u64,
        dirty: &mut Dirty,
    ) -> bool {
        let at = state.cond_waiters.iter().position(
            |w| matches!(w, Waiter::Remote { link, req: r } if link.id() == link_id && *r == req),
        );
        let Some(w) = at.and_then(|i| state.cond_waiters.remove(i)) else {
            return false;
        };
        state.returning.insert(w.key(), false);
        state.waiters.push_back(w);
        self.pump(state, dirty);
        true
    }

    /// A connection ended: its waits leave, and each notification it had
    /// not turned into holding the lock goes to the next waiter.
    pub(super) fn condition_disconnect(&self, state: &mut State, link_id: u64, dirty: &mut Dirty) {
        let party = Party::Link(link_id);
        state.cond_waiters.retain(|w| w.party() != party);
        let mut lost = u64::from(state.notified_holders.remove(&link_id));
        state.returning.retain(|k, notified| match k {
            Key::Remote(l, _) if *l == link_id => {
                lost += u64::from(*notified);
                false
            }
            _ => true,
        });
        self.wake(state, lost, dirty);
    }
}

/// Identifies a waiter across the wait set and the lock's queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Key {
    Remote(u64, u64),
    Local(u64),
}

impl Waiter {
    pub(super) fn key(&self) -> Key {
        match self {
            Waiter::Remote { link, req } => Key::Remote(link.id(), *req),
            Waiter::Local { ticket } => Key::Local(*ticket),
        }
    }
}
