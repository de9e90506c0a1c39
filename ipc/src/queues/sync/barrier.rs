//! [`Barrier`]: parties wait until all have arrived; a dead party breaks
//! it for the others instead of leaving them waiting forever.

use std::fmt;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Kind, Party, Place, Prim, State, Waiter, op, reply, status, wait_for};
use crate::error::QueueError;
use crate::link::{Dirty, Link};
use crate::queues::wire::{Wait, status as qstatus};
use crate::sync::wait_until;
use std::sync::Arc;

/// Why a barrier wait failed.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BarrierError {
    /// The barrier is broken: a party's process ended, a wait timed out,
    /// or someone called [`abort`](Barrier::abort) or
    /// [`reset`](Barrier::reset) while this one waited. It stays broken
    /// until [`reset`](Barrier::reset).
    #[error("the barrier is broken")]
    Broken,
    /// This wait timed out (which breaks the barrier for the others, as
    /// in Python).
    #[error("timed out waiting at the barrier")]
    Timeout,
    /// The hub could not be reached, or holds no such barrier any more.
    #[error("failed to reach the hub")]
    Failed(#[source] QueueError),
}

/// A barrier for a fixed number of parties in any processes (Python's
/// `multiprocessing.Barrier`): [`wait`](Self::wait) returns once `parties`
/// waits have arrived, and the barrier is ready for the next round.
///
/// Crash-safe: every process that received a handle (deserialised it:
/// a task's or a [`Process`]'s input, an initializer's value, an item
/// from a queue) or waited on the barrier is one of its *parties*, and if
/// it ends (dies, is killed, or exits) the barrier breaks: every waiter,
/// and every later wait, gets [`BarrierError::Broken`] until
/// [`reset`](Self::reset). So a party that dies before its first wait
/// breaks the barrier at once rather than leaving the others waiting for
/// it. The hub's own process is not counted (it cannot end alone), and a
/// process that is done with the barrier and ends also breaks it: give a
/// handle only to processes that will wait, or [`reset`](Self::reset)
/// the barrier after such an exit.
///
/// [`Process`]: https://docs.rs/procpool/latest/procpool/struct.Process.html
///
/// ```
/// use procpool::Barrier;
///
/// let b = Barrier::new(2);
/// let other = b.clone();
/// let t = std::thread::spawn(move || other.wait().unwrap());
/// let mine = b.wait().unwrap();
/// let theirs = t.join().unwrap();
/// assert_eq!(mine + theirs, 1); // arrival indexes 0 and 1
/// ```
#[derive(Clone)]
pub struct Barrier {
    pub(super) place: Place,
    parties: u64,
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier")
            .field("id", &self.place.id())
            .field("parties", &self.parties)
            .finish()
    }
}

impl Barrier {
    /// A barrier for `parties` waits (at least 1), held by this process's
    /// hub.
    pub fn new(parties: u64) -> Self {
        let parties = parties.max(1);
        Barrier {
            place: Place::new(Kind::Barrier { parties }, 0),
            parties,
        }
    }

    /// How many waits release the barrier.
    pub fn parties(&self) -> u64 {
        self.parties
    }

    /// Waits until every party has arrived; returns this wait's arrival
    /// index (0 for the first, `parties - 1` for the last), as Python's.
    ///
    /// # Errors
    /// [`BarrierError::Broken`], [`BarrierError::Failed`].
    pub fn wait(&self) -> Result<u64, BarrierError> {
        self.wait_on(Wait::Forever)
    }

    /// As [`wait`](Self::wait), for at most `timeout`; a timeout breaks
    /// the barrier for the others (as in Python).
    ///
    /// # Errors
    /// As [`wait`](Self::wait), and [`BarrierError::Timeout`].
    pub fn wait_timeout(&self, timeout: Duration) -> Result<u64, BarrierError> {
        self.wait_on(wait_for(timeout))
    }

    /// Breaks the barrier: waiters and later waits get
    /// [`BarrierError::Broken`].
    ///
    /// # Errors
    /// The hub could not be reached.
    pub fn abort(&self) -> Result<(), QueueError> {
        self.place.simple(op::ABORT).map(drop)
    }

    /// Makes a broken barrier usable again (current waiters get
    /// [`BarrierError::Broken`]).
    ///
    /// # Errors
    /// The hub could not be reached.
    pub fn reset(&self) -> Result<(), QueueError> {
        self.place.simple(op::RESET).map(drop)
    }

    /// Whether the barrier is broken.
    ///
    /// # Errors
    /// The hub could not be reached.
    pub fn is_broken(&self) -> Result<bool, QueueError> {
        self.place.simple(op::IS_BROKEN).map(|v| v != 0)
    }

    fn wait_on(&self, wait: Wait) -> Result<u64, BarrierError> {
        match &self.place {
            Place::Local(prim) => prim.local_barrier_wait(wait),
            Place::Remote { id, client } => {
                let (code, value, _) = client
                    .request(op::BARRIER_WAIT, *id, 0, &[], wait)
                    .map_err(BarrierError::Failed)?;
                match code {
                    qstatus::OK => Ok(value),
                    status::BROKEN => Err(BarrierError::Broken),
                    qstatus::CANCELLED => Err(BarrierError::Timeout),
                    qstatus::NO_QUEUE => {
                        Err(BarrierError::Failed(QueueError::NoSuchQueue { id: *id }))
                    }
                    _ => Err(BarrierError::Failed(QueueError::Protocol)),
                }
            }
        }
    }
}

impl Serialize for Barrier {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.place.id(), self.parties).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Barrier {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (id, parties) = <(u64, u64)>::deserialize(d)?;
        let place = Place::from_id::<D>(id)?;
        if let Place::Remote { id, client } = &place {
            // A party from now on: in the kernel before the handle is
            // usable, so the hub learns of it even if this process dies
            // at once.
            client
                .oneway_sent(op::REGISTER, *id, 0)
                .map_err(D::Error::custom)?;
        }
        Ok(Barrier { place, parties })
    }
}

/// The hub side.
impl Prim {
    fn parties(&self) -> u64 {
        match self.kind {
            Kind::Barrier { parties } => parties,
            _ => 0,
        }
    }

    /// Breaks the barrier: every waiter hears it.
    fn break_barrier(&self, state: &mut State, dirty: &mut Dirty) {
        state.broken = true;
        let mut woken = false;
        for w in state.waiters.drain(..) {
            match w {
                Waiter::Remote { link, req } => reply(&link, req, status::BROKEN, 0, dirty),
                Waiter::Local { ticket } => {
                    state.outcomes.insert(ticket, None);
                    woken = true;
                }
            }
        }
        if woken {
            self.changed.notify_all();
        }
    }

    /// One more arrival: releases the round once every party is there.
    fn arrive(&self, state: &mut State, waiter: Waiter, dirty: &mut Dirty) {
        state.members.insert(waiter.party());
        state.waiters.push_back(waiter);
        if (state.waiters.len() as u64) < self.parties() {
            return;
        }
        let mut woken = false;
        for (i, w) in state.waiters.drain(..).enumerate() {
            match w {
                Waiter::Remote { link, req } => reply(&link, req, qstatus::OK, i as u64, dirty),
                Waiter::Local { ticket } => {
                    state.outcomes.insert(ticket, Some(i as u64));
                    woken = true;
                }
            }
        }
        if woken {
            self.changed.notify_all();
        }
    }

    fn local_barrier_wait(&self, wait: Wait) -> Result<u64, BarrierError> {
        let mut dirty = Dirty::default();
        let mut state = self.lock();
        if state.broken {
            return Err(BarrierError::Broken);
        }
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        self.arrive(&mut state, Waiter::Local { ticket }, &mut dirty);
        let deadline = wait.deadline();
        loop {
            if let Some(outcome) = state.outcomes.remove(&ticket) {
                return outcome.ok_or(BarrierError::Broken);
            }
            state = match wait_until(&self.changed, state, deadline) {
                Ok(s) => s,
                Err(mut s) => {
                    if let Some(outcome) = s.outcomes.remove(&ticket) {
                        return outcome.ok_or(BarrierError::Broken);
                    }
                    s.waiters
                        .retain(|w| !matches!(w, Waiter::Local { ticket: t } if *t == ticket));
                    self.break_barrier(&mut s, &mut dirty);
                    return Err(BarrierError::Timeout);
                }
            };
        }
    }

    /// A barrier's remote operations; false if `code` is none of them.
    pub(super) fn serve_barrier(
        &self,
        state: &mut State,
        link: &Arc<Link>,
        req: u64,
        code: u8,
        dirty: &mut Dirty,
    ) -> bool {
        match code {
            op::BARRIER_WAIT if state.broken => reply(link, req, status::BROKEN, 0, dirty),
            op::BARRIER_WAIT => {
                let waiter = Waiter::Remote {
                    link: Arc::clone(link),
                    req,
                };
                self.arrive(state, waiter, dirty);
            }
            op::ABORT => {
                self.break_barrier(state, dirty);
                reply(link, req, qstatus::OK, 0, dirty);
            }
            op::RESET => {
                self.break_barrier(state, dirty);
                state.broken = false;
                reply(link, req, qstatus::OK, 0, dirty);
            }
            op::IS_BROKEN => reply(link, req, qstatus::OK, u64::from(state.broken), dirty),
            op::REGISTER => {
                state.members.insert(Party::Link(link.id()));
            }
            _ => return false,
        }
        true
    }

    /// A barrier's local `ABORT`, `RESET`, `IS_BROKEN`.
    pub(super) fn local_barrier_op(&self, code: u8) -> u64 {
        let mut dirty = Dirty::default();
        let mut state = self.lock();
        match code {
            op::ABORT => self.break_barrier(&mut state, &mut dirty),
            op::RESET => {
                self.break_barrier(&mut state, &mut dirty);
                state.broken = false;
            }
            _ => {}
        }
        u64::from(state.broken)
    }

    /// A waiter of `link` gave up (`CANCEL`): as a local timeout, it
    /// breaks the barrier; false if it was not parked.
    pub(super) fn cancel_barrier_wait(
        &self,
        state: &mut State,
        link: &Arc<Link>,
        req: u64,
        dirty: &mut Dirty,
    ) -> bool {
        let me = link.id();
        let Some(i) = state.waiters.iter().position(
            |w| matches!(w, Waiter::Remote { link: l, req: r } if l.id() == me && *r == req),
        ) else {
            return false;
        };
        state.waiters.remove(i);
        reply(link, req, qstatus::CANCELLED, 0, dirty);
        self.break_barrier(state, dirty);
        true
    }

    /// A party's connection ended: the barrier breaks.
    pub(super) fn barrier_disconnect(&self, state: &mut State, link_id: u64, dirty: &mut Dirty) {
        let party = Party::Link(link_id);
        state.waiters.retain(|w| w.party() != party);
        if state.members.remove(&party) {
            self.break_barrier(state, dirty);
        }
    }
}
