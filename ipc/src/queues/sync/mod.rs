//! Crash-safe synchronization between processes, held by the hub:
//! [`Lock`], [`RLock`], [`Semaphore`] (and its bounded form), [`Event`],
//! [`Barrier`], [`Condition`] (with its own lock, or over a [`Lock`]) and
//! [`RCondition`] (over an [`RLock`]: a wait releases every level).
//!
//! Like a queue, a primitive lives in the process that created it (the
//! *hub*, normally the master); a handle is `Serialize`, and passed to a
//! task or a process it arrives there as a proxy that speaks to the hub
//! over that worker's connection. The primitive exists while a handle to
//! it exists in the hub process.
//!
//! Crash safety comes from the hub knowing who holds what: permits are
//! counted per connection, and when a connection ends (its process died,
//! was killed, or exited) the hub takes its permits back and hands them
//! to the next acquirers with the news, as a robust mutex reports
//! `EOWNERDEAD`: [`LockError::OwnerDied`] carries the guard. Nothing
//! deadlocks on a dead holder. Waiting is a parked request in the hub,
//! answered when the permit is handed over (first come, first served),
//! so no process polls.
//!
//! (The shared-memory data plane will serve local processes directly once
//! it lands; the hub keeps serving remote ones.)
//!
//! # Protocol
//!
//! `Message::Hub` frames whose id names no queue are offered to
//! `serve`; ops and statuses below extend the queue table in `wire.rs`
//! (whose `CANCEL`, `OK`, `FULL`, `CANCELLED`, `NO_QUEUE` and
//! `BAD_REQUEST` they share).
//!
//! | op | `req` | `arg` | answer |
//! |---|---|---|---|
//! | `ACQUIRE` | id | 1: park until a permit is free, 0: never wait | `OK`, `OWNER_DIED` (a dead holder's permit), `FULL` (none free, no wait), or later, once parked |
//! | `RELEASE` | 0 or id | — | `OK`, `NOT_HELD` (a `Lock` nobody holds, a bounded semaphore at its bound) |
//! | `SET` / `CLEAR` | id | — | `OK` |
//! | `IS_SET` | id | — | `OK` with `value` 1 if set |
//! | `WAIT` | id | 1: park until set, 0: never wait | `OK` once set, `FULL` if not set and no wait |
//! | `BARRIER_WAIT` | id | — | `OK` with `value` = arrival index once all parties are there, `BROKEN` |
//! | `ABORT` / `RESET` | id | — | `OK` |
//! | `IS_BROKEN` | id | — | `OK` with `value` 1 if broken |
//! | `COND_WAIT` | id | — | releases the lock and parks; `OK` or `OWNER_DIED` once the lock is held again, `value` 1 if notified, 0 if cancelled; `NOT_HELD` |
//! | `NOTIFY` | id | most waiters to wake | `OK` with `value` = woken |
//! | `REGISTER` | 0 | — | none; the connection is a barrier's party (its end breaks the barrier) |
//! | `CANCEL` (queue op) | 0 | the parked request's id | `CANCELLED` to it, if still parked |

mod barrier;
mod condition;
mod event;
mod lock;
mod rcondition;
mod rlock;
mod semaphore;

pub use barrier::{Barrier, BarrierError};
pub use condition::{Condition, ConditionGuard};
pub use event::Event;
pub use lock::{Lock, LockGuard};
pub use rcondition::{RCondition, RConditionGuard};
pub use rlock::{RLock, RLockGuard};
pub use semaphore::{Semaphore, SemaphoreGuard};

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::client::{self, Client};
use super::held::{self, Held, Registry};
use super::wire::{Wait, op as qop, status as qstatus};
use crate::error::QueueError;
use crate::link::{Dirty, Link};
use crate::sync::{lock, wait_until};

/// Operation codes (beside the queue ops of `wire.rs`).
mod op {
    pub(super) const ACQUIRE: u8 = 32;
    pub(super) const RELEASE: u8 = 33;
    pub(super) const SET: u8 = 34;
    pub(super) const CLEAR: u8 = 35;
    pub(super) const IS_SET: u8 = 36;
    pub(super) const WAIT: u8 = 37;
    pub(super) const BARRIER_WAIT: u8 = 38;
    pub(super) const ABORT: u8 = 39;
    pub(super) const RESET: u8 = 40;
    pub(super) const IS_BROKEN: u8 = 41;
    pub(super) const COND_WAIT: u8 = 42;
    pub(super) const NOTIFY: u8 = 43;
    pub(super) const REGISTER: u8 = 44;
}

/// Status codes (beside the queue statuses of `wire.rs`).
mod status {
    pub(super) const OWNER_DIED: u8 = 32;
    pub(super) const NOT_HELD: u8 = 33;
    pub(super) const BROKEN: u8 = 34;
}

/// Why an acquire did not simply succeed.
///
/// [`OwnerDied`](Self::OwnerDied) is a success with news, as a robust
/// mutex's `EOWNERDEAD`: the caller holds the guard, and whatever the dead
/// holder was protecting may be half-updated.
pub enum LockError<G> {
    /// Acquired, but the previous holder's process ended while holding it
    /// (died, was killed, or exited without releasing); the guard is
    /// yours. [`recover`](Self::recover) takes it.
    OwnerDied(G),
    /// Not acquired in time (at once, for the `try_` forms).
    Timeout,
    /// The hub could not be reached, or holds no such primitive any more.
    Failed(QueueError),
}

impl<G> LockError<G> {
    /// The guard, if the lock was acquired after all (`OwnerDied`);
    /// otherwise the error back.
    ///
    /// # Errors
    /// `Timeout` and `Failed` come back unchanged.
    pub fn recover(self) -> Result<G, Self> {
        match self {
            LockError::OwnerDied(g) => Ok(g),
            e => Err(e),
        }
    }

    /// Whether the previous holder died (the lock is held now).
    pub fn is_owner_died(&self) -> bool {
        matches!(self, LockError::OwnerDied(_))
    }

    /// Whether the acquire timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, LockError::Timeout)
    }
}

impl<G> fmt::Debug for LockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::OwnerDied(_) => f.write_str("OwnerDied(..)"),
            LockError::Timeout => f.write_str("Timeout"),
            LockError::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}

impl<G> fmt::Display for LockError<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::OwnerDied(_) => {
                f.write_str("acquired, but the previous holder's process died holding it")
            }
            LockError::Timeout => f.write_str("not acquired in time"),
            LockError::Failed(_) => f.write_str("failed to reach the hub"),
        }
    }
}

impl<G> std::error::Error for LockError<G> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LockError::Failed(e) => Some(e),
            _ => None,
        }
    }
}

/// A release that had nothing to release.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReleaseError {
    /// A bounded semaphore released more often than acquired.
    #[error("released more times than acquired")]
    NotHeld,
    /// The hub could not be reached, or holds no such primitive any more.
    #[error("failed to reach the hub")]
    Failed(#[source] QueueError),
}

/// The primitives this process holds, by id (bit 31 set, so they never
/// meet a queue's, a map's or a buffer's). A primitive lives while a
/// handle exists in the hub process: nothing pins it.
static PRIMS: Registry<Prim> = Registry::new(0x8000_0000);

/// Who holds permits or waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Party {
    /// A thread of the hub process (which cannot die alone).
    Here,
    /// A connection, by link id.
    Link(u64),
}

/// A request waiting for a permit or for an event.
#[derive(Debug)]
enum Waiter {
    Remote { link: Arc<Link>, req: u64 },
    Local { ticket: u64 },
}

impl Waiter {
    fn party(&self) -> Party {
        match self {
            Waiter::Remote { link, .. } => Party::Link(link.id()),
            Waiter::Local { .. } => Party::Here,
        }
    }
}

/// What a primitive is.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Permits, at most `bound` free (`Lock`: 1 and 1).
    Permits {
        bound: Option<u64>,
    },
    Event,
    Barrier {
        parties: u64,
    },
    /// A lock (one permit) with a wait set.
    Condition,
}

impl Kind {
    /// Whether conditions may wait on it: a condition's own lock, or a
    /// [`Lock`] shared with [`Condition::with_lock`] (a lock is one
    /// bounded permit; its wait set stays empty unless a condition uses it).
    fn has_wait_set(self) -> bool {
        matches!(self, Kind::Condition | Kind::Permits { bound: Some(1) })
    }
}

#[derive(Debug, Default)]
struct State {
    /// Free permits, or the event's flag (0 or 1).
    free: u64,
    /// Permits held, by party.
    held: HashMap<Party, u64>,
    /// Free permits whose holder died; each goes out with that news.
    orphaned: u64,
    waiters: VecDeque<Waiter>,
    /// Local waiters served: ticket → whose permit was orphaned.
    granted: HashMap<u64, bool>,
    next_ticket: u64,
    /// A barrier's: broken; parties that waited on it; local waiters'
    /// outcomes (arrival index, or `None`: broken).
    broken: bool,
    members: HashSet<Party>,
    outcomes: HashMap<u64, Option<u64>>,
    /// A condition's wait set, and the waiters back in the lock's queue
    /// from it (notified, or not: given up).
    cond_waiters: VecDeque<Waiter>,
    returning: HashMap<condition::Key, bool>,
    /// Connections holding a condition's lock they were handed as
    /// notified waiters: if one ends before it releases the lock, its
    /// notification goes to the next waiter (a spare wakeup at worst).
    notified_holders: HashSet<u64>,
}

/// One primitive held by this process (registered as a `Held<Prim>`).
#[derive(Debug)]
pub(crate) struct Prim {
    kind: Kind,
    state: Mutex<State>,
    changed: Condvar,
}

fn reply(link: &Arc<Link>, req: u64, code: u8, value: u64, dirty: &mut Dirty) {
    // A link that refuses a frame this small is closing: its end is seen.
    let _ = held::reply(link, req, code, value, &[], dirty);
}

/// What a local acquire or wait came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Got {
    Yes,
    OwnerDied,
    No,
}

impl Prim {
    fn new(kind: Kind, free: u64) -> Arc<Held<Prim>> {
        PRIMS.insert(Prim {
            kind,
            state: Mutex::new(State {
                free,
                ..State::default()
            }),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Takes a free permit for `party`, if there is one: whether its
    /// holder had died.
    fn take(&self, state: &mut State, party: Party) -> Option<bool> {
        match self.kind {
            Kind::Permits { .. } | Kind::Condition if state.free > 0 => {
                state.free -= 1;
                *state.held.entry(party).or_default() += 1;
                let died = state.orphaned > 0;
                state.orphaned = state.orphaned.saturating_sub(1);
                Some(died)
            }
            Kind::Event if state.free > 0 => Some(false),
            _ => None,
        }
    }

    /// Hands what is free to the waiters, first come first served (an
    /// event wakes them all).
    fn pump(&self, state: &mut State, dirty: &mut Dirty) {
        let mut woken = false;
        while let Some(w) = state.waiters.front() {
            let party = w.party();
            let Some(died) = self.take(state, party) else {
                break;
            };
            match state.waiters.pop_front() {
                Some(Waiter::Remote { link, req }) => {
                    let code = if died {
                        status::OWNER_DIED
                    } else {
                        qstatus::OK
                    };
                    // A condition's waiter hears whether it was notified.
                    let value = state
                        .returning
                        .remove(&condition::Key::Remote(link.id(), req))
                        .map_or(1, u64::from);
                    if value == 1 && self.kind.has_wait_set() {
                        state.notified_holders.insert(link.id());
                    }
                    reply(&link, req, code, value, dirty);
                }
                Some(Waiter::Local { ticket }) => {
                    state.granted.insert(ticket, died);
                    woken = true;
                }
                None => {}
            }
        }
        if woken {
            self.changed.notify_all();
        }
    }

    /// Returns one permit held by `party` (any holder's, for an unbounded
    /// semaphore released by a non-holder); false if there was nothing to
    /// return.
    fn give_back(&self, state: &mut State, party: Party) -> bool {
        if let Party::Link(id) = party {
            state.notified_holders.remove(&id);
        }
        if let Some(n) = state.held.get_mut(&party).filter(|n| **n > 0) {
            *n -= 1;
            if *n == 0 {
                state.held.remove(&party);
            }
        } else {
            match self.kind {
                Kind::Permits { bound: None } => {}
                Kind::Permits { bound: Some(_) } | Kind::Condition => {
                    let b = match self.kind {
                        Kind::Permits { bound: Some(b) } => b,
                        _ => 1,
                    };
                    // A permit another party of this process took (a guard
                    // moved between threads is still this party's), else
                    // one more than the bound allows.
                    let held: u64 = state.held.values().sum();
                    if state.free + held >= b {
                        return false;
                    }
                }
                Kind::Event | Kind::Barrier { .. } => return false,
            }
        }
        state.free += 1;
        true
    }

    /// Acquires (a permit) or waits (for the event) here, in the hub.
    fn local_acquire(&self, wait: Wait) -> Got {
        let mut dirty = Dirty::default();
        let mut state = self.lock();
        if state.waiters.is_empty() || matches!(self.kind, Kind::Event) {
            if let Some(died) = self.take(&mut state, Party::Here) {
                return if died { Got::OwnerDied } else { Got::Yes };
            }
        }
        if matches!(wait, Wait::No) {
            return Got::No;
        }
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.waiters.push_back(Waiter::Local { ticket });
        let deadline = wait.deadline();
        loop {
            if let Some(died) = state.granted.remove(&ticket) {
                return if died { Got::OwnerDied } else { Got::Yes };
            }
            state = match wait_until(&self.changed, state, deadline) {
                Ok(s) => s,
                Err(mut s) => {
                    if let Some(died) = s.granted.remove(&ticket) {
                        return if died { Got::OwnerDied } else { Got::Yes };
                    }
                    s.waiters
                        .retain(|w| !matches!(w, Waiter::Local { ticket: t } if *t == ticket));
                    // Leaving may let those behind go first.
                    self.pump(&mut s, &mut dirty);
                    return Got::No;
                }
            };
        }
    }

    fn local_release(&self) -> bool {
        let mut dirty = Dirty::default();
        let mut state = self.lock();
        let ok = self.give_back(&mut state, Party::Here);
        self.pump(&mut state, &mut dirty);
        ok
    }

    fn local_set(&self, on: bool) {
        let mut dirty = Dirty::default();
        let mut state = self.lock();
        state.free = u64::from(on);
        self.pump(&mut state, &mut dirty);
    }

    fn is_set(&self) -> bool {
        self.lock().free > 0
    }

    /// One remote operation; see the module docs.
    fn serve(&self, link: &Arc<Link>, req: u64, code: u8, arg: u64, dirty: &mut Dirty) {
        let mut state = self.lock();
        if matches!(self.kind, Kind::Barrier { .. }) {
            let done = if code == qop::CANCEL {
                self.cancel_barrier_wait(&mut state, link, arg, dirty);
                true
            } else {
                self.serve_barrier(&mut state, link, req, code, dirty)
            };
            if !done {
                reply(link, req, qstatus::BAD_REQUEST, 0, dirty);
            }
            return;
        }
        if self.kind.has_wait_set() {
            let done = if code == qop::CANCEL {
                // One back in the lock's queue must take the lock: no cancel.
                self.cancel_cond_wait(&mut state, link.id(), arg, dirty)
                    || state
                        .returning
                        .contains_key(&condition::Key::Remote(link.id(), arg))
            } else {
                self.serve_condition(&mut state, link, req, code, arg, dirty)
            };
            if done {
                return;
            }
        }
        let party = Party::Link(link.id());
        let event = matches!(self.kind, Kind::Event);
        match code {
            op::ACQUIRE | op::WAIT if (code == op::WAIT) == event => {
                let first = state.waiters.is_empty() || event;
                match first.then(|| self.take(&mut state, party)).flatten() {
                    Some(died) => {
                        let code = if died {
                            status::OWNER_DIED
                        } else {
                            qstatus::OK
                        };
                        reply(link, req, code, 1, dirty);
                    }
                    None if arg == 0 => reply(link, req, qstatus::FULL, 0, dirty),
                    None => state.waiters.push_back(Waiter::Remote {
                        link: Arc::clone(link),
                        req,
                    }),
                }
            }
            op::RELEASE if !event => {
                let code = if self.give_back(&mut state, party) {
                    qstatus::OK
                } else {
                    status::NOT_HELD
                };
                reply(link, req, code, 0, dirty);
            }
            op::SET | op::CLEAR if event => {
                state.free = u64::from(code == op::SET);
                reply(link, req, qstatus::OK, 0, dirty);
            }
            op::IS_SET if event => reply(link, req, qstatus::OK, state.free, dirty),
            qop::CANCEL => {
                let me = link.id();
                if let Some(i) = state.waiters.iter().position(
                    |w| matches!(w, Waiter::Remote { link: l, req: r } if l.id() == me && *r == arg),
                ) {
                    state.waiters.remove(i);
                    reply(link, arg, qstatus::CANCELLED, 0, dirty);
                }
            }
            _ => reply(link, req, qstatus::BAD_REQUEST, 0, dirty),
        }
        self.pump(&mut state, dirty);
    }

    /// Forgets a connection that ended: its waits are dropped, and the
    /// permits it held go to the next acquirers as orphaned.
    fn disconnect(&self, link_id: u64, dirty: &mut Dirty) {
        let mut state = self.lock();
        if matches!(self.kind, Kind::Barrier { .. }) {
            self.barrier_disconnect(&mut state, link_id, dirty);
            return;
        }
        if self.kind.has_wait_set() {
            self.condition_disconnect(&mut state, link_id, dirty);
        }
        state.waiters.retain(|w| w.party() != Party::Link(link_id));
        if let Some(n) = state.held.remove(&Party::Link(link_id)) {
            state.free += n;
            state.orphaned += n;
        }
        self.pump(&mut state, dirty);
    }
}

/// Serves one `Message::Hub` for a primitive; false if `id` names none
/// held here.
pub(crate) fn serve(
    link: &Arc<Link>,
    req: u64,
    code: u8,
    id: u64,
    arg: u64,
    dirty: &mut Dirty,
) -> bool {
    match PRIMS.lookup(id) {
        Some(prim) => {
            prim.serve(link, req, code, arg, dirty);
            true
        }
        None => false,
    }
}

/// A connection ended: permits it held go to the next acquirers, who hear
/// that their previous owner died.
pub(crate) fn disconnect(link_id: u64, dirty: &mut Dirty) {
    for prim in PRIMS.all() {
        prim.disconnect(link_id, dirty);
    }
}

/// How a handle reaches its primitive.
#[derive(Clone, Debug)]
enum Place {
    Local(Arc<Held<Prim>>),
    Remote {
        id: u64,
        client: &'static Arc<Client>,
    },
}

/// What a handle looks like on the wire.
#[derive(Serialize, Deserialize)]
struct Wire {
    id: u64,
}

impl Place {
    fn new(kind: Kind, free: u64) -> Self {
        Place::Local(Prim::new(kind, free))
    }

    fn id(&self) -> u64 {
        match self {
            Place::Local(p) => p.id(),
            Place::Remote { id, .. } => *id,
        }
    }

    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Wire { id: self.id() }.serialize(s)
    }

    fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Wire { id } = Wire::deserialize(d)?;
        Self::from_id::<D>(id)
    }

    /// The handle for primitive `id`: the primitive itself in its hub, a
    /// proxy in a worker.
    fn from_id<'de, D: Deserializer<'de>>(id: u64) -> Result<Self, D::Error> {
        match (PRIMS.lookup(id), client::client()) {
            (Some(prim), _) => Ok(Place::Local(prim)),
            (None, Some(client)) => Ok(Place::Remote { id, client }),
            (None, None) => Err(D::Error::custom(format_args!(
                "synchronization primitive {id} is not held by this process and this process is not a worker"
            ))),
        }
    }

    /// Acquires a permit (or waits for the event).
    fn acquire(&self, code: u8, wait: Wait) -> Result<Got, QueueError> {
        match self {
            Place::Local(prim) => Ok(prim.local_acquire(wait)),
            Place::Remote { id, client } => {
                let arg = u64::from(!matches!(wait, Wait::No));
                let (code, _, _) = client.request(code, *id, arg, &[], wait)?;
                match code {
                    qstatus::OK => Ok(Got::Yes),
                    status::OWNER_DIED => Ok(Got::OwnerDied),
                    qstatus::FULL | qstatus::CANCELLED => Ok(Got::No),
                    qstatus::NO_QUEUE => Err(QueueError::NoSuchQueue { id: *id }),
                    _ => Err(QueueError::Protocol),
                }
            }
        }
    }

    /// Returns a permit; false if there was none to return.
    fn release(&self) -> Result<bool, QueueError> {
        match self {
            Place::Local(prim) => Ok(prim.local_release()),
            Place::Remote { id, client } => {
                let (code, _, _) = client.request(op::RELEASE, *id, 0, &[], Wait::Forever)?;
                Self::status(code, *id).map(|()| code == qstatus::OK)
            }
        }
    }

    /// A guard's release: one-way, in the kernel before it returns, so the
    /// permit is back even if this process dies right after.
    fn release_quietly(&self) {
        match self {
            Place::Local(prim) => {
                prim.local_release();
            }
            Place::Remote { id, client } => {
                // A broken link: the hub takes the permit back at its end.
                let _ = client.oneway_sent(op::RELEASE, *id, 0);
            }
        }
    }

    /// A simple request (`SET`, `CLEAR`, `IS_SET`): the value answered.
    fn simple(&self, code: u8) -> Result<u64, QueueError> {
        match self {
            Place::Local(prim) => Ok(match code {
                op::ABORT | op::RESET | op::IS_BROKEN => prim.local_barrier_op(code),
                op::SET | op::CLEAR => {
                    prim.local_set(code == op::SET);
                    0
                }
                _ => u64::from(prim.is_set()),
            }),
            Place::Remote { id, client } => {
                let (code, value, _) = client.request(code, *id, 0, &[], Wait::Forever)?;
                Self::status(code, *id).map(|()| value)
            }
        }
    }

    fn status(code: u8, id: u64) -> Result<(), QueueError> {
        match code {
            qstatus::OK | status::NOT_HELD => Ok(()),
            qstatus::NO_QUEUE => Err(QueueError::NoSuchQueue { id }),
            _ => Err(QueueError::Protocol),
        }
    }
}

/// A deadline `timeout` from now (none if that overflows).
fn wait_for(timeout: std::time::Duration) -> Wait {
    std::time::Instant::now()
        .checked_add(timeout)
        .map_or(Wait::Forever, Wait::Until)
}

#[cfg(test)]
mod tests;
