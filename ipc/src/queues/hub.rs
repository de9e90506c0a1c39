//! The hub: queues held by the master, served to its own threads directly
//! and to workers over their connections.
//!
//! # Remote operations
//!
//! A worker's proxy sends [`Message::Hub`] frames; the master's reader
//! thread for that worker calls [`serve`]. Items are stored encoded, so the
//! hub never needs their type.
//!
//! - `PUT` (unbounded queues) is one-way: once the frame is in the kernel
//!   the item is as good as in the queue, since frames on a connection are
//!   read in order, and before its end. A `PUT` that arrives after `close`
//!   is still accepted: its sender had not seen the close.
//! - A process's first put to an unbounded queue is a `PUT_WAIT` like a
//!   bounded queue's: answered, and it makes the connection a user of the
//!   queue, which is told when the queue closes. So a queue closed before
//!   a process used it refuses that process's put instead of taking an
//!   item nobody will get.
//! - `PUT_WAIT` (bounded queues) answers `OK`, `FULL` or `CLOSED`, or parks
//!   until there is room. A waiting proxy that gives up sends `CANCEL`; the
//!   hub answers `CANCELLED` if the put was still parked.
//! - Getters subscribe with a credit: the hub pushes up to that many items
//!   with [`Message::Deliver`]; each item the worker's code takes is
//!   acknowledged (`ACK`, which also returns the credit). Items delivered
//!   but not acknowledged when the connection ends go back to the front of
//!   the queue: a process that dies in `get` loses nothing.
//! - Delivered-but-unacknowledged items count towards `len` and capacity.
//! - Items go out in the order they were put, and each process takes
//!   them in that order: an item never overtakes one queued before it,
//!   nor goes to a process that holds a newer one unread, and items that
//!   come back (a recall, an unsubscribe, a connection's end) return to
//!   their place. So consumers that each stop at a sentinel put after the
//!   other items (Python's "one `None` per consumer") leave no older item
//!   to nobody.
//! - An item is never stranded in a process that is not getting while a
//!   getter waits elsewhere (Python's queue, a pipe any reader can take
//!   from, never strands one). When the queue is empty and a getter waits
//!   (a thread or future here, or a subscriber that sent `WANT`: its
//!   getter waited a moment with nothing buffered), the hub sends
//!   `RECALL` to every subscriber holding delivered, unacknowledged items
//!   and stops delivering to it. The subscriber answers `RETURN` (no
//!   getter waits there: its unread buffer comes back to the front of the
//!   queue, and it has no credit until its next get grants some) or
//!   `KEEP` (its getters take what they can, the rest comes back). A
//!   subscriber that sent `WANT` is served first. A one-token queue used
//!   as a lock between processes thus passes the token to whoever waits.
//!   `try_get` in the hub process does not recall (it never waits).
//! - `PIN`, `HOLD` and `UNHOLD` keep the queue alive while handles to it
//!   travel and live in workers; a pipe's direction ends when its last
//!   writer goes (see `hub/lifetime.rs`). `HUB_ID` tells a worker which hub its
//!   connection leads to: a handle carries its hub's id, so a worker knows
//!   whether it can reach the queue.
//!
//! # Who owes a `task_done`
//!
//! `JoinableQueue::join` waits for `unfinished` (items put and not yet
//! confirmed) to reach zero. A process that dies between taking an item
//! and confirming it would make every `join` wait forever, as in Python,
//! so the hub keeps, per queue, who owes confirmations: each connection's
//! *debt* (items it acknowledged taking, less the `TASK_DONE`s it sent),
//! and the hub process's own (items its threads took, less their
//! `task_done`s). A confirmation pays its sender's own debt first. What it
//! confirms beyond that (the hub process confirming items a worker took
//! and handed back, which is allowed) pays the largest other debt, then
//! the hub's own, then is kept as *spare* (confirmations ahead of takes;
//! `task_done` needs no `get` in between).
//!
//! When a connection ends, its debt, less what spare covers, is *lost*:
//! nobody holds those items any more, so nobody will confirm them. They
//! leave `unfinished` and are reported, once, as
//! `QueueError::ConsumerDied` (with the process id the worker announced
//! in its hello, and the count): to every join waiting then, remote joins
//! answered with `CONSUMER_DIED`, or, if none waits, to the next join.
//! So a join fails fast and names the culprit; a join after it waits for
//! the rest as usual. Every item put is either confirmed or reported,
//! never silently dropped from the count.
//!
//! Why not give lost items back to the queue (at-least-once)? The hub
//! would have to keep every taken item until its confirmation, and a
//! `task_done` says neither which item it confirms nor, when the hub
//! process confirms for a worker, whose: the hub cannot know which items a
//! dead process had finished (a consumer that died after its side
//! effects would have them done twice), and memory would grow with
//! everything in progress. Items *delivered but not taken* do go back
//! (above): no consumer code has seen them. An item the consumer's code
//! has seen is processed at most once, and a loss is an error, not a hang.
//!
//! A `JoinableQueue` with a lane (`queues/lane.rs`) keeps the lane's part
//! of this in shared memory (`shm/books.rs`): items put through the ring,
//! each lane getter's takes and confirmations (its debt), confirmations
//! the hub made for lane items. `unfinished` here is then the hub
//! queue's own part; joins and `TASK_DONE` look at the sum. A lane
//! getter's debt is settled when its process is reaped (`reaped`), not
//! at the end of its connection: until then it may still be using the
//! ring. Confirmations the hub counts beyond its own items pay no lane
//! debt: they are spare.
//!
//! The hub cannot tell a crash from a clean exit: any process that ends
//! owing confirmations is reported (it will never confirm them). A worker
//! that hands items to another process for confirmation must not end
//! before they are confirmed; if it does, they are reported lost, and a
//! late confirmation of one pays another debt or fails as too many.
//!
//! # Lock order
//!
//! A queue's state lock, then a link's outbox lock; never the reverse.
//! Writing to a link under a queue's lock only appends to the link's
//! outbox (see [`crate::link`]): a subscriber that stops reading never
//! blocks a `put`, a `len` or another subscriber. What is delivered to one
//! subscriber and waits in its outbox is bounded by its credit.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard, OnceLock, Weak};

use super::lane::{self, HubLane};
use super::pins;
use super::wire::{Wait, op, status};
use crate::link::{Dirty, Link};
use crate::proto::Message;
use crate::sync::{lock, wait_until};

/// Why a local put failed.
#[derive(Debug)]
pub(crate) enum PutFail {
    Full,
    Closed,
}

/// Why a local get failed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum GetFail {
    Empty,
    Closed,
}

/// Queue ids: the process id in the high half, so a queue made in a worker
/// (for a pool of its own) never shares an id with one of its master's.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// This process's hub id: random, so handles from hubs on other machines
/// (or earlier processes with the same pid) are told apart.
static HUB_ID: LazyLock<u64> = LazyLock::new(|| {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // No entropy source: the pid and the clock still tell hubs apart
        // on one machine.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        bytes = ((u64::from(std::process::id()) << 32) | u64::from(nanos)).to_le_bytes();
    }
    u64::from_le_bytes(bytes).max(1)
});

/// The id of this process's hub, carried by every handle to a queue it
/// holds.
pub(crate) fn hub_id() -> u64 {
    *HUB_ID
}

fn next_id() -> u64 {
    (u64::from(std::process::id()) << 32) | (NEXT_ID.fetch_add(1, Ordering::Relaxed) & 0xFFFF_FFFF)
}
/// The queues this process holds, by id (a queue leaves when its last
/// handle here drops).
static REGISTRY: LazyLock<Mutex<HashMap<u64, Weak<Core>>>> = LazyLock::new(Mutex::default);

fn registry() -> MutexGuard<'static, HashMap<u64, Weak<Core>>> {
    lock(&REGISTRY)
}

/// One queue held by this process.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) id: u64,
    pub(crate) capacity: Option<usize>,
    state: Mutex<State>,
    changed: Condvar,
    /// A pipe direction's or an unbounded queue's lane (see
    /// `queues/lane.rs`).
    lane: OnceLock<Arc<HubLane>>,
    /// The lane is a queue's (not a pipe direction's): hub-path puts
    /// settle it first, `len` counts it.
    queue_lane: std::sync::atomic::AtomicBool,
}

/// An item in the hub, numbered in the order it was put.
#[derive(Debug)]
struct Item {
    seq: u64,
    bytes: Vec<u8>,
}

#[derive(Debug, Default)]
struct State {
    /// Queued items, in put order (`seq`), also after items come back
    /// from a subscriber.
    items: VecDeque<Item>,
    /// The number the next item put gets.
    next_seq: u64,
    closed: bool,
    /// A pipe lane's pump is moving messages the lane's ring accepted
    /// into this queue: not drained before it is done, even if closed.
    pumping: bool,
    /// Shut down (closed, and puts and getters are told `ShutDown`);
    /// `dropped`: immediately, pending items were dropped.
    shut_down: bool,
    dropped: bool,
    /// Items put and not yet `task_done`, nor reported lost
    /// (JoinableQueue accounting; see the module docs).
    unfinished: u64,
    /// Set for a `JoinableQueue`: only its losses are reported.
    joinable: bool,
    /// A `JoinableQueue`'s lane: its accounts hold the lane's part of
    /// the unfinished count (see `shm/books.rs`).
    joinable_lane: Option<Arc<HubLane>>,
    /// Connections' debts, by link id: items acknowledged, less `TASK_DONE`s.
    debts: HashMap<u64, u64>,
    /// The hub process's debt: items its threads took, less their `task_done`s.
    local_debt: u64,
    /// Confirmations that paid no debt (made before the items were taken).
    spare: u64,
    /// Losses, in the order the hub learnt of them; the first is number
    /// `losses_base`. Kept until delivered to a join, and while local
    /// joins wait (one of them may need an entry).
    losses: VecDeque<Lost>,
    losses_base: u64,
    /// Losses `[.. delivered)` have been reported to some join.
    delivered: u64,
    /// Local threads waiting in `join`.
    local_joins: usize,
    /// Local threads blocked in `get`: they take precedence over
    /// subscribers, which are fed only when nobody here waits.
    local_getters: usize,
    subs: Vec<Sub>,
    next_sub: usize,
    parked_puts: VecDeque<Parked>,
    parked_joins: Vec<(Arc<Link>, u64)>,
    /// Links that used this queue: told when it closes.
    users: Vec<Arc<Link>>,
    /// Local threads waiting on the condition variable.
    waiters: usize,
    /// What keeps the queue alive beyond the hub process's own handles
    /// (see [`lifetime`]).
    life: lifetime::Life,
    /// Local async waiters (see `poll.rs`), by key: woken with the threads.
    wakers: HashMap<u64, Option<std::task::Waker>>,
    next_waker: u64,
    /// Threads in `wait` watching for an item (each counts as a local
    /// getter): woken by every change, until they unwatch.
    watchers: Vec<std::task::Waker>,
}

#[derive(Debug)]
struct Sub {
    link: Arc<Link>,
    credit: u64,
    /// Delivered, not acknowledged: in put order, since an item older
    /// than its last is never delivered to it (see [`State::deliver`]).
    unacked: VecDeque<Item>,
    closed_sent: bool,
    /// Its process has a getter waiting with nothing buffered (`WANT`):
    /// served first, and items buffered elsewhere are recalled for it.
    wants: bool,
    /// A `RECALL` is unanswered: nothing is delivered to it meanwhile
    /// (its credit waits in `held`), so `RETURN`'s count names the last
    /// items it was delivered.
    recalling: bool,
    held: u64,
    /// It answered a recall keeping what it had (a getter was about to
    /// take it): not recalled again before it acknowledges a take, or
    /// says (`ACK` of nothing) that its getters left without taking.
    kept: bool,
    /// It gave everything back with no getter waiting: no credit until
    /// it subscribes again (its acknowledgements return none).
    dormant: bool,
}

impl Sub {
    fn new(link: &Arc<Link>, credit: u64) -> Self {
        Sub {
            link: Arc::clone(link),
            credit,
            unacked: VecDeque::new(),
            closed_sent: false,
            wants: false,
            recalling: false,
            held: 0,
            kept: false,
            dormant: false,
        }
    }

    /// Adds credit: held back while a recall is unanswered.
    fn grant(&mut self, n: u64) {
        if self.recalling {
            self.held = self.held.saturating_add(n);
        } else {
            self.credit = self.credit.saturating_add(n);
        }
    }

    /// Whether `item` may go to it: it has credit, and holds nothing
    /// newer (its process takes items in the order they were put).
    fn takes(&self, item: &Item) -> bool {
        self.credit > 0 && self.unacked.back().is_none_or(|last| last.seq < item.seq)
    }

    /// Takes back the last `n` items delivered to it (its process's
    /// buffer, unread), oldest first.
    fn give_back(&mut self, n: u64) -> VecDeque<Item> {
        let n = usize::try_from(n)
            .unwrap_or(usize::MAX)
            .min(self.unacked.len());
        self.unacked.split_off(self.unacked.len() - n)
    }
}

/// Items a process left unconfirmed when its connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Lost {
    /// The process id its worker announced, if it did.
    pub(crate) pid: Option<u32>,
    pub(crate) unfinished: u64,
}

impl Lost {
    /// The `CONSUMER_DIED` payload: the pid, little endian, or nothing.
    fn payload(self) -> Vec<u8> {
        self.pid
            .map(|p| p.to_le_bytes().to_vec())
            .unwrap_or_default()
    }
}

/// Who sent a confirmation.
#[derive(Clone, Copy, Debug)]
enum Party {
    Here,
    Link(u64),
}

#[derive(Debug)]
struct Parked {
    link: Arc<Link>,
    req: u64,
    item: Vec<u8>,
}

fn reply(link: &Arc<Link>, req: u64, status: u8, value: u64, dirty: &mut Dirty) {
    reply_with(link, req, status, value, &[], dirty);
}

fn reply_with(
    link: &Arc<Link>,
    req: u64,
    status: u8,
    value: u64,
    payload: &[u8],
    dirty: &mut Dirty,
) {
    if req == 0 {
        return;
    }
    let msg = Message::Reply {
        req,
        status,
        value,
        payload,
    };
    if link.write(&msg).is_ok() {
        dirty.mark(link);
    }
}

impl State {
    /// Drops the subscription of connection `link_id`: what it was
    /// delivered and did not acknowledge goes back to the front, in order.
    fn unsubscribe(&mut self, link_id: u64) {
        let mut returned = VecDeque::new();
        self.subs.retain_mut(|s| {
            if s.link.id() == link_id {
                returned.append(&mut s.unacked);
                false
            } else {
                true
            }
        });
        self.requeue(returned);
    }

    /// Puts items that come back from a subscriber (in put order) back
    /// in their places: other subscribers may have given back older ones
    /// meanwhile, and an item must not overtake an older one (a consumer
    /// that stops at a sentinel would leave the older one to nobody).
    fn requeue(&mut self, back: VecDeque<Item>) {
        for item in back.into_iter().rev() {
            let at = self.items.partition_point(|i| i.seq < item.seq);
            self.items.insert(at, item);
        }
    }

    fn len(&self) -> usize {
        self.items.len() + self.unacked()
    }

    /// Items put and not confirmed, nor reported lost: the hub's own, and
    /// a joinable lane's.
    fn total(&self) -> u64 {
        match &self.joinable_lane {
            Some(l) => l.total(self.unfinished),
            None => self.unfinished,
        }
    }

    /// Counts `n` confirmations from `party` (`n <= total()`, checked by
    /// the caller): of the hub's items first (see [`confirm`](Self::confirm)),
    /// the rest of the lane's, which pay nobody's debt here (spare).
    fn confirm_any(&mut self, party: Party, n: u64) {
        let here = n.min(self.unfinished);
        if here > 0 {
            self.confirm(party, here);
        }
        let rest = n - here;
        if let (Some(l), true) = (&self.joinable_lane, rest > 0) {
            l.hub_confirmed(rest);
            self.spare += rest;
        }
    }

    /// Joins wait here: a joinable lane's confirmations must wake them.
    fn joins_waiting(&self) -> bool {
        self.local_joins > 0 || !self.parked_joins.is_empty()
    }

    /// Counts `n` confirmations from `party` (`n <= unfinished`, checked
    /// by the caller): they pay its own debt, then the largest other
    /// debt, then the hub's, and the rest is spare.
    fn confirm(&mut self, party: Party, n: u64) {
        self.unfinished -= n;
        let mut rest = n;
        let own = match party {
            Party::Here => Some(&mut self.local_debt),
            Party::Link(id) => self.debts.get_mut(&id),
        };
        if let Some(own) = own {
            let paid = rest.min(*own);
            *own -= paid;
            rest -= paid;
        }
        while rest > 0 {
            let Some(debt) = self.debts.values_mut().filter(|d| **d > 0).max() else {
                break;
            };
            let paid = rest.min(*debt);
            *debt -= paid;
            rest -= paid;
        }
        let paid = rest.min(self.local_debt);
        self.local_debt -= paid;
        self.spare += rest - paid;
    }

    /// The connection `link_id` ended: its debt, less what spare covers,
    /// is lost. Returns the loss, recorded (for a joinable queue) and out
    /// of `unfinished`, if there is one.
    fn settle(&mut self, link_id: u64, pid: Option<u32>) -> Option<Lost> {
        let debt = self.debts.remove(&link_id).unwrap_or(0);
        let covered = debt.min(self.spare);
        self.spare -= covered;
        let lost = debt - covered;
        if lost == 0 {
            return None;
        }
        debug_assert!(self.unfinished >= lost, "debts exceed unfinished");
        self.unfinished = self.unfinished.saturating_sub(lost);
        if !self.joinable {
            return None;
        }
        let lost = Lost {
            pid,
            unfinished: lost,
        };
        self.losses.push_back(lost);
        Some(lost)
    }

    /// `lost`, just recorded, is told to the joins parked now (and
    /// counts as delivered if there are any).
    fn tell_parked_joins(&mut self, lost: Lost, dirty: &mut Dirty) {
        let i = self.losses_end() - 1;
        let payload = lost.payload();
        let joins = std::mem::take(&mut self.parked_joins);
        if !joins.is_empty() {
            self.delivered = self.delivered.max(i + 1);
        }
        for (link, req) in joins {
            let n = lost.unfinished;
            reply_with(&link, req, status::CONSUMER_DIED, n, &payload, dirty);
        }
        self.prune_losses();
    }

    /// Absolute number of the next loss to be recorded.
    fn losses_end(&self) -> u64 {
        self.losses_base + self.losses.len() as u64
    }

    /// Loss number `i`, marked delivered, if it is known.
    fn deliver_loss(&mut self, i: u64) -> Option<Lost> {
        let at = usize::try_from(i.checked_sub(self.losses_base)?).ok()?;
        let lost = *self.losses.get(at)?;
        self.delivered = self.delivered.max(i + 1);
        self.prune_losses();
        Some(lost)
    }

    /// The oldest loss no join has been told of, marked delivered.
    fn undelivered_loss(&mut self) -> Option<Lost> {
        self.deliver_loss(self.delivered.max(self.losses_base))
    }

    /// Forgets delivered losses no local join may still need.
    fn prune_losses(&mut self) {
        if self.local_joins > 0 {
            return;
        }
        while self.losses_base < self.delivered && self.losses.pop_front().is_some() {
            self.losses_base += 1;
        }
    }

    /// Items delivered to subscribers and not yet acknowledged: they may
    /// still come back (the subscriber dies or lets go).
    fn unacked(&self) -> usize {
        self.subs.iter().map(|s| s.unacked.len()).sum()
    }

    /// Closed, and every item taken for good: only then is a getter told
    /// `Closed` (a getter that left on `Closed` while a dying subscriber's
    /// items were on their way back would strand them).
    fn drained(&self) -> bool {
        self.closed && !self.pumping && self.items.is_empty() && self.unacked() == 0
    }

    /// What a refused put is told: `CLOSED`, or `SHUT_DOWN`.
    fn closed_status(&self) -> u8 {
        if self.shut_down {
            status::SHUT_DOWN
        } else {
            status::CLOSED
        }
    }

    fn has_room(&self, capacity: Option<usize>) -> bool {
        capacity.is_none_or(|c| self.len() < c)
    }

    /// Hands `item` to a subscriber with credit, or queues it (behind
    /// the items queued already: it never overtakes them).
    fn push(&mut self, bytes: Vec<u8>, queue: u64, dirty: &mut Dirty) {
        let item = Item {
            seq: self.next_seq,
            bytes,
        };
        self.next_seq += 1;
        let item = if self.local_getters == 0 && self.items.is_empty() {
            self.deliver(item, queue, dirty)
        } else {
            Some(item)
        };
        if let Some(item) = item {
            self.items.push_back(item);
        }
    }

    /// Delivers to the next subscriber with credit (round robin) that
    /// holds nothing newer (see [`Sub::takes`]); returns the item if none
    /// could take it.
    fn deliver(&mut self, item: Item, queue: u64, dirty: &mut Dirty) -> Option<Item> {
        let n = self.subs.len();
        if n == 0 {
            return Some(item);
        }
        let start = self.next_sub % n;
        // A process whose getter waits goes first (it asked: `WANT`).
        let first = self
            .subs
            .iter()
            .position(|s| s.wants && s.takes(&item))
            .unwrap_or(start);
        let order = std::iter::once(first)
            .chain((0..n).map(|k| (start + k) % n).filter(move |&i| i != first));
        for i in order {
            let sub = &mut self.subs[i];
            if !sub.takes(&item) {
                continue;
            }
            let msg = Message::Deliver {
                queue,
                closed: false,
                payload: &item.bytes,
            };
            if sub.link.write(&msg).is_err() {
                // A broken link: its reader will report the end; stop feeding it.
                sub.credit = 0;
                continue;
            }
            dirty.mark(&sub.link);
            sub.credit -= 1;
            sub.wants = false;
            sub.kept = false;
            sub.unacked.push_back(item);
            self.next_sub = (i + 1) % n;
            return None;
        }
        Some(item)
    }

    /// Moves things along after any change: parked puts that now fit,
    /// queued items for subscribers, closed notices, finished joins.
    fn pump(&mut self, capacity: Option<usize>, queue: u64, dirty: &mut Dirty) {
        if self.closed {
            let code = self.closed_status();
            for p in self.parked_puts.drain(..) {
                reply(&p.link, p.req, code, 0, dirty);
            }
        }
        while self.has_room(capacity) {
            let Some(p) = self.parked_puts.pop_front() else {
                break;
            };
            self.unfinished += 1;
            reply(&p.link, p.req, status::OK, 0, dirty);
            self.push(p.item, queue, dirty);
        }
        if self.local_getters == 0 {
            while let Some(item) = self.items.pop_front() {
                if let Some(item) = self.deliver(item, queue, dirty) {
                    self.items.push_front(item);
                    break;
                }
            }
        }
        if self.drained() {
            for sub in self.subs.iter_mut().filter(|s| !s.closed_sent) {
                let msg = Message::Deliver {
                    queue,
                    closed: true,
                    payload: &[],
                };
                if sub.link.write(&msg).is_ok() {
                    dirty.mark(&sub.link);
                }
                sub.closed_sent = true;
            }
        }
        if !self.parked_joins.is_empty() && self.total() == 0 {
            for (link, req) in self.parked_joins.drain(..) {
                reply(&link, req, status::OK, 0, dirty);
            }
        }
        self.recall(false, queue, dirty);
    }

    /// Asks back the items buffered in processes that are not getting,
    /// when a getter waits (here, if `getter_here`, or a subscriber's
    /// `WANT`) and the queue has none: an item is never stranded with a
    /// process busy elsewhere while another waits for it (see the
    /// module docs). Whether a recall was sent.
    fn recall(&mut self, getter_here: bool, queue: u64, dirty: &mut Dirty) -> bool {
        if !self.items.is_empty()
            || !(getter_here || self.local_getters > 0 || self.subs.iter().any(|s| s.wants))
        {
            return false;
        }
        let mut sent = false;
        // A subscriber that sent `WANT` is asked too if a getter waits
        // elsewhere: its own getter may have given up since (a timeout)
        // and left an item that reached it after (one that still waits
        // there answers `KEEP`).
        let others = getter_here
            || self.local_getters > 0
            || self.subs.iter().filter(|s| s.wants).count() > 1;
        for sub in &mut self.subs {
            if (sub.wants && !others) || sub.recalling || sub.kept || sub.unacked.is_empty() {
                continue;
            }
            let msg = Message::Reply {
                req: 0,
                status: status::RECALL,
                value: queue,
                payload: &[],
            };
            if sub.link.write(&msg).is_ok() {
                dirty.mark(&sub.link);
                sub.recalling = true;
                sub.held = std::mem::take(&mut sub.credit);
                sent = true;
            }
        }
        sent
    }

    /// A subscriber answered a recall: the last `n` items delivered to it
    /// come back to the front of the queue; `idle` (no getter waited
    /// there) leaves it without credit until it subscribes again.
    fn recalled(&mut self, link_id: u64, n: u64, idle: bool) {
        let Some(sub) = self.subs.iter_mut().find(|s| s.link.id() == link_id) else {
            return;
        };
        let back = sub.give_back(n);
        sub.recalling = false;
        if idle {
            sub.held = 0;
            sub.credit = 0;
            sub.dormant = true;
            sub.wants = false;
        } else {
            sub.credit = std::mem::take(&mut sub.held).saturating_add(back.len() as u64);
            sub.kept = true;
        }
        self.requeue(back);
    }
}

impl Core {
    /// A new queue, registered so handles can find it by id.
    pub(crate) fn new(capacity: Option<usize>) -> Arc<Core> {
        let core = Arc::new(Core {
            id: next_id(),
            capacity,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            lane: OnceLock::new(),
            queue_lane: std::sync::atomic::AtomicBool::new(false),
        });
        registry().insert(core.id, Arc::downgrade(&core));
        core
    }

    /// The live queue with this id, if any.
    ///
    /// (Its entry leaves the registry in `Drop`.)
    pub(crate) fn lookup(id: u64) -> Option<Arc<Core>> {
        registry().get(&id).and_then(Weak::upgrade)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Waits on the condition variable; false once `wait` has run out.
    fn wait<'a>(
        &self,
        mut state: MutexGuard<'a, State>,
        wait: Wait,
    ) -> (MutexGuard<'a, State>, bool) {
        if matches!(wait, Wait::No) {
            return (state, false);
        }
        state.waiters += 1;
        let woken = wait_until(&self.changed, state, wait.deadline());
        let timed_out = woken.is_err();
        let mut state = woken.unwrap_or_else(|g| g);
        state.waiters -= 1;
        (state, !timed_out)
    }

    /// Releases the state and wakes local waiters, if there are any (a
    /// condition variable's notify is a system call even when nobody waits).
    fn notify(&self, mut state: MutexGuard<'_, State>) {
        if let Some(l) = &state.joinable_lane {
            l.set_hub_unfinished(state.unfinished);
        }
        if let Some(lane) = self.lane.get() {
            let delivered: usize = state.subs.iter().map(|s| s.unacked.len()).sum();
            let queued = state.items.len();
            lane.on_change(queued + delivered, queued, state.closed);
        }
        let waiters = state.waiters;
        let mut wakers = state.take_wakers();
        wakers.extend(state.watchers.iter().cloned());
        drop(state);
        if waiters > 0 {
            self.changed.notify_all();
        }
        for w in wakers {
            w.wake();
        }
    }

    pub(crate) fn put(&self, item: Vec<u8>, wait: Wait) -> Result<(), PutFail> {
        let mut dirty = Dirty::default();
        let mut state = self.lock();
        loop {
            if state.closed {
                return Err(PutFail::Closed);
            }
            if state.has_room(self.capacity) {
                state.unfinished += 1;
                state.push(item, self.id, &mut dirty);
                state.pump(self.capacity, self.id, &mut dirty);
                self.notify(state);
                return Ok(());
            }
            let (s, more) = self.wait(state, wait);
            state = s;
            if !more && !state.has_room(self.capacity) {
                return Err(if state.closed {
                    PutFail::Closed
                } else {
                    PutFail::Full
                });
            }
        }
    }

    /// Puts a message a pipe lane's ring accepted (its sender was told
    /// `Ok`): waits for room, but goes in even if the queue is closed
    /// meanwhile (the pump keeps the queue from reporting drained, see
    /// [`Core::set_pumping`]).
    pub(crate) fn put_accepted(&self, item: Vec<u8>) {
        let mut dirty = Dirty::default();
        let mut state = self.lock();
        while !state.closed && !state.has_room(self.capacity) {
            state = self.wait(state, Wait::Forever).0;
        }
        state.unfinished += 1;
        state.push(item, self.id, &mut dirty);
        state.pump(self.capacity, self.id, &mut dirty);
        self.notify(state);
    }

    /// A pipe lane's pump starts (`true`) or has drained the lane's
    /// ring (`false`): while it runs, the queue is not drained even when
    /// closed, so no getter is told `Closed` before the ring's messages
    /// are in.
    pub(crate) fn set_pumping(&self, on: bool) {
        let mut dirty = Dirty::default();
        let mut state = self.lock();
        state.pumping = on;
        state.pump(self.capacity, self.id, &mut dirty);
        self.notify(state);
    }

    pub(crate) fn get(&self, wait: Wait) -> Result<Vec<u8>, GetFail> {
        let mut dirty = Dirty::default();
        let mut state = self.lock();
        loop {
            if let Some(item) = state.items.pop_front() {
                state.local_debt += 1;
                state.pump(self.capacity, self.id, &mut dirty);
                self.notify(state);
                return Ok(item.bytes);
            }
            if state.drained() {
                return Err(GetFail::Closed);
            }
            if !matches!(wait, Wait::No) && state.recall(true, self.id, &mut dirty) {
                // Sent before waiting: the items come back to this getter.
                drop(state);
                dirty.flush();
                state = self.lock();
                continue;
            }
            state.local_getters += 1;
            let (s, more) = self.wait(state, wait);
            state = s;
            state.local_getters -= 1;
            if !more && state.items.is_empty() {
                // Items queued while we waited may now go to subscribers.
                state.pump(self.capacity, self.id, &mut dirty);
                return Err(if state.drained() {
                    GetFail::Closed
                } else {
                    GetFail::Empty
                });
            }
        }
    }

    /// Waits until an item can be taken (or the queue is closed and empty).
    pub(crate) fn poll(&self, wait: Wait) -> bool {
        let mut dirty = Dirty::default();
        let mut state = self.lock();
        loop {
            if !state.items.is_empty() || state.drained() {
                return true;
            }
            if !matches!(wait, Wait::No) && state.recall(true, self.id, &mut dirty) {
                drop(state);
                dirty.flush();
                state = self.lock();
                continue;
            }
            state.local_getters += 1;
            let (s, more) = self.wait(state, wait);
            state = s;
            state.local_getters -= 1;
            if !more {
                return !state.items.is_empty() || state.drained();
            }
        }
    }

    /// Whether a get would not block now (an item, or closed and
    /// drained); if not, `waker` watches: it counts as a local getter
    /// (items stay here, and those buffered in idle processes are
    /// recalled) and is woken on every change until [`unwatch`](Self::unwatch).
    pub(crate) fn watch(&self, waker: &std::task::Waker) -> bool {
        let mut dirty = Dirty::default();
        let mut state = self.lock();
        if !state.items.is_empty() || state.drained() {
            return true;
        }
        if !state.watchers.iter().any(|w| w.will_wake(waker)) {
            state.watchers.push(waker.clone());
            state.local_getters += 1;
        }
        state.recall(true, self.id, &mut dirty);
        false
    }

    /// Drops `waker`'s watch, if any; items may go to subscribers again.
    pub(crate) fn unwatch(&self, waker: &std::task::Waker) {
        let mut dirty = Dirty::default();
        let mut state = self.lock();
        let before = state.watchers.len();
        state.watchers.retain(|w| !w.will_wake(waker));
        let gone = before - state.watchers.len();
        if gone > 0 {
            state.local_getters -= gone;
            state.pump(self.capacity, self.id, &mut dirty);
        }
        drop(state);
    }

    /// Counts `n` items as done; false (and nothing counted) if that is more
    /// than are unfinished.
    pub(crate) fn task_done(&self, n: u64) -> bool {
        let mut dirty = Dirty::default();
        let mut state = self.lock();
        if state.total() < n {
            return false;
        }
        state.confirm_any(Party::Here, n);
        state.pump(self.capacity, self.id, &mut dirty);
        self.notify(state);
        true
    }

    /// Marks the queue as a `JoinableQueue`'s: its losses are reported.
    pub(crate) fn set_joinable(&self) {
        self.lock().joinable = true;
    }

    /// Waits until every item put has been marked done; `Ok(false)` on
    /// timeout, `Err` with a loss no join was told of yet, or one that
    /// happened while this one waited (see the module docs).
    pub(crate) fn join(self: &Arc<Self>, wait: Wait) -> Result<bool, Lost> {
        let mut state = self.lock();
        if let Some(lost) = state.undelivered_loss() {
            return Err(lost);
        }
        let first = state.losses_end();
        loop {
            if let Some(lost) = state.deliver_loss(first) {
                return Err(lost);
            }
            if state.total() == 0 {
                return Ok(true);
            }
            if matches!(wait, Wait::No) {
                return Ok(false);
            }
            state.local_joins += 1;
            self.watch_joins(&state);
            let (s, more) = self.wait(state, wait);
            state = s;
            state.local_joins -= 1;
            if !more {
                if let Some(lost) = state.deliver_loss(first) {
                    return Err(lost);
                }
                let done = state.total() == 0;
                state.prune_losses();
                return Ok(done);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        let hub = self.lock().len();
        hub + self.ring_len()
    }

    /// Messages in a queue lane's ring (0 without one).
    fn ring_len(&self) -> usize {
        match self.queue_lane() {
            Some(l) => l.messages(),
            None => 0,
        }
    }

    pub(crate) fn unfinished(&self) -> u64 {
        self.lock().total()
    }

    /// Whether the queue was shut down.
    pub(crate) fn is_shut_down(&self) -> bool {
        self.lock().shut_down
    }

    /// Shuts the queue down (Python 3.13's `Queue.shutdown`): closed,
    /// with refusals and the end of the queue told as `ShutDown`. With
    /// `immediate`, the items not yet taken (queued, or delivered to a
    /// process and not read there) are dropped and leave the unfinished
    /// count, so `join` returns once the items already taken are done.
    /// Every waiter, here and in other processes, is woken.
    pub(crate) fn shutdown(&self, immediate: bool) {
        let mut dirty = Dirty::default();
        let mut state = self.lock();
        if !state.shut_down || (immediate && !state.dropped) {
            state.shut_down = true;
            if immediate {
                state.dropped = true;
                if let Some(l) = self.queue_lane() {
                    // Not under the hub's lock: a mover takes the
                    // lane's mover lock, then the hub's.
                    drop(state);
                    let discarded = l.discard();
                    state = self.lock();
                    if state.joinable_lane.is_some() {
                        l.hub_confirmed(discarded as u64);
                    }
                }
                let mut dropped = std::mem::take(&mut state.items).len();
                for sub in &mut state.subs {
                    dropped += sub.unacked.len();
                    sub.unacked.clear();
                }
                state.unfinished = state.unfinished.saturating_sub(dropped as u64);
            }
            let notice = Message::Reply {
                req: 0,
                status: status::SHUT_DOWN,
                value: self.id,
                payload: &[u8::from(immediate)],
            };
            for link in &state.users {
                if link.write(&notice).is_ok() {
                    dirty.mark(link);
                }
            }
        }
        if state.closed {
            state.pump(self.capacity, self.id, &mut dirty);
        } else {
            self.close_locked(&mut state, &mut dirty);
        }
        self.notify(state);
    }

    pub(crate) fn close(&self) {
        let mut dirty = Dirty::default();
        let mut state = self.lock();
        self.close_locked(&mut state, &mut dirty);
        self.notify(state);
    }

    /// Closes the queue, under its lock (nothing if it is closed already).
    fn close_locked(&self, state: &mut State, dirty: &mut Dirty) {
        if self.lane.get().is_some_and(|l| l.defer_close()) {
            return;
        }
        if !state.closed {
            state.closed = true;
            for link in &state.users {
                if link.write(&close_notice(self.id)).is_ok() {
                    dirty.mark(link);
                }
            }
            state.pump(self.capacity, self.id, dirty);
        }
    }

    /// One remote operation; see the module docs.
    fn serve(
        self: &Arc<Self>,
        link: &Arc<Link>,
        req: u64,
        code: u8,
        arg: u64,
        payload: &[u8],
        dirty: &mut Dirty,
    ) {
        // A put through the hub comes after what the ring holds.
        let _settled = match code {
            op::PUT | op::PUT_WAIT => self.queue_lane().map(|l| l.settle(self)),
            _ => None,
        };
        let mut state = self.lock();
        if !state.users.iter().any(|l| l.id() == link.id()) {
            state.users.push(Arc::clone(link));
        }
        match code {
            // A one-way put its sender made before it heard of an
            // immediate shutdown: dropped with the other pending items.
            op::PUT if state.dropped => {}
            op::PUT => {
                state.unfinished += 1;
                state.push(payload.to_vec(), self.id, dirty);
            }
            op::PUT_WAIT => {
                if state.closed {
                    let code = state.closed_status();
                    reply(link, req, code, 0, dirty);
                } else if state.has_room(self.capacity) && state.parked_puts.is_empty() {
                    state.unfinished += 1;
                    state.push(payload.to_vec(), self.id, dirty);
                    reply(link, req, status::OK, 0, dirty);
                } else if arg == 0 {
                    reply(link, req, status::FULL, 0, dirty);
                } else {
                    state.parked_puts.push_back(Parked {
                        link: Arc::clone(link),
                        req,
                        item: payload.to_vec(),
                    });
                }
            }
            op::SUBSCRIBE => {
                match state.subs.iter_mut().find(|s| s.link.id() == link.id()) {
                    // A grant after giving everything back starts afresh.
                    Some(sub) if sub.dormant && arg > 0 => {
                        sub.dormant = false;
                        sub.grant(arg);
                    }
                    // Saturating: the credit is the peer's number (issue 14:
                    // two huge grants overflowed it).
                    Some(sub) => sub.grant(arg),
                    None => state.subs.push(Sub::new(link, arg)),
                }
                state.pump(self.capacity, self.id, dirty);
                // After the deliveries: the proxy knows what is there now.
                reply(link, req, status::OK, 0, dirty);
            }
            op::ACK => {
                if let Some(sub) = state.subs.iter_mut().find(|s| s.link.id() == link.id()) {
                    let n = usize::try_from(arg)
                        .unwrap_or(usize::MAX)
                        .min(sub.unacked.len());
                    sub.unacked.drain(..n);
                    if !sub.dormant {
                        sub.grant(n as u64);
                    }
                    // A take, or (`ACK` of nothing) the getters it kept
                    // items for left without them: it may be recalled.
                    sub.kept = false;
                    if n > 0 {
                        *state.debts.entry(link.id()).or_default() += n as u64;
                    }
                }
            }
            op::TASK_DONE => {
                let total = state.total();
                if total < arg {
                    reply(link, req, status::TOO_MANY_TASK_DONE, total, dirty);
                } else {
                    state.confirm_any(Party::Link(link.id()), arg);
                    reply(link, req, status::OK, 0, dirty);
                }
            }
            op::JOIN => {
                if let Some(lost) = state.undelivered_loss() {
                    let payload = lost.payload();
                    let n = lost.unfinished;
                    reply_with(link, req, status::CONSUMER_DIED, n, &payload, dirty);
                } else if state.total() == 0 {
                    reply(link, req, status::OK, 0, dirty);
                } else {
                    state.parked_joins.push((Arc::clone(link), req));
                    self.watch_joins(&state);
                }
            }
            op::LEN => {
                // The ring is counted outside the hub's lock: a mover
                // takes the hub's lock under the ring's reader lease.
                let hub = state.len();
                drop(state);
                let len = (hub + self.ring_len()) as u64;
                reply(link, req, status::OK, len, dirty);
                return;
            }
            op::CLOSE => {
                drop(state);
                self.close();
                reply(link, req, status::OK, 0, dirty);
                return;
            }
            op::SHUTDOWN => {
                drop(state);
                self.shutdown(arg != 0);
                reply(link, req, status::OK, 0, dirty);
                return;
            }
            op::CANCEL => {
                let me = link.id();
                if let Some(i) = state
                    .parked_puts
                    .iter()
                    .position(|p| p.link.id() == me && p.req == arg)
                {
                    state.parked_puts.remove(i);
                    reply(link, arg, status::CANCELLED, 0, dirty);
                } else if let Some(i) = state
                    .parked_joins
                    .iter()
                    .position(|(l, r)| l.id() == me && *r == arg)
                {
                    state.parked_joins.remove(i);
                    reply(link, arg, status::CANCELLED, 0, dirty);
                }
            }
            op::WANT => {
                if let Some(sub) = state.subs.iter_mut().find(|s| s.link.id() == link.id()) {
                    sub.wants = true;
                }
            }
            op::RETURN | op::KEEP => state.recalled(link.id(), arg, code == op::RETURN),
            op::UNSUBSCRIBE => {
                state.unsubscribe(link.id());
                reply(link, req, status::OK, 0, dirty);
            }
            lane::LANE => {
                let (code, value) = match self.lane.get() {
                    Some(l) => {
                        let served = l.serve(self, link, arg);
                        // Under the lock, before the reply: a getter that
                        // comes after it must not find the queue drained
                        // while the ring still holds accepted messages (the
                        // pump clears it when done, after taking the lock).
                        state.pumping |= l.pumping();
                        served
                    }
                    None => (lane::NO_LANE, 0),
                };
                reply(link, req, code, value, dirty);
            }
            op::PIN | op::HOLD | op::UNHOLD => {
                let token = pins::from_payload(payload);
                let released = self.life_op(&mut state, link.id(), code, (arg != 0, token), dirty);
                state.pump(self.capacity, self.id, dirty);
                self.notify(state);
                // Outside the lock: this may be the last reference.
                drop(released);
                return;
            }
            _ => reply(link, req, status::BAD_REQUEST, 0, dirty),
        }
        state.pump(self.capacity, self.id, dirty);
        self.notify(state);
    }

    /// Forgets a connection that ended: what was delivered to it and not
    /// acknowledged goes back to the front of the queue, in order; what it
    /// took and did not confirm is lost, and parked joins hear of it.
    fn disconnect(self: &Arc<Self>, link_id: u64, pid: Option<u32>, dirty: &mut Dirty) {
        let mut state = self.lock();
        state.unsubscribe(link_id);
        state.parked_puts.retain(|p| p.link.id() != link_id);
        state.parked_joins.retain(|(l, _)| l.id() != link_id);
        state.users.retain(|l| l.id() != link_id);
        let released = self.life_disconnect(&mut state, link_id, dirty);
        if let Some(lost) = state.settle(link_id, pid) {
            state.tell_parked_joins(lost, dirty);
        }
        state.pump(self.capacity, self.id, dirty);
        self.notify(state);
        drop(released);
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        let mut reg = registry();
        // A queue made since under the same id (never: ids are not reused)
        // would keep its entry.
        if reg.get(&self.id).is_some_and(|w| w.strong_count() == 0) {
            reg.remove(&self.id);
        }
    }
}

/// The notice that tells a connection's proxies a queue takes no more puts
/// (a reply to no request; distinct from the subscribers' closed-and-empty
/// notice, which comes after the last item).
fn close_notice(queue: u64) -> Message<'static> {
    Message::Reply {
        req: 0,
        status: status::CLOSED,
        value: queue,
        payload: &[],
    }
}

/// Serves one [`Message::Hub`] from the connection `link`. Replies and
/// deliveries are buffered on the links they go to, which are marked in
/// `dirty` for the caller to flush.
pub fn serve(link: &Arc<Link>, msg: &Message<'_>, dirty: &mut Dirty) {
    let &Message::Hub {
        req,
        op: code,
        queue,
        arg,
        payload,
    } = msg
    else {
        return;
    };
    if code == op::HUB_ID {
        return reply(link, req, status::OK, hub_id(), dirty);
    }
    match Core::lookup(queue) {
        Some(core) => core.serve(link, req, code, arg, payload, dirty),
        None if super::sync::serve(link, req, code, queue, arg, dirty) => {}
        None if super::map::serve(link, req, code, queue, arg, payload, dirty) => {}
        None if super::shared_memory::serve(link, req, code, queue, payload, dirty) => {}
        None if req != 0 => reply(link, req, status::NO_QUEUE, 0, dirty),
        None => {
            // A one-way put to a queue that is gone: nobody could ever get
            // the item. Tell the proxy, so the next put reports it.
            let notice = Message::Reply {
                req: 0,
                status: status::NO_QUEUE,
                value: queue,
                payload: &[],
            };
            if link.write(&notice).is_ok() {
                dirty.mark(link);
            }
        }
    }
}

/// Cleans up after a connection that ended: items delivered on it and not
/// acknowledged go back to the front of their queues, in order; its parked
/// operations are dropped; items it took and did not confirm are reported
/// to joins as lost by process `pid` (the id its worker announced, if it
/// did; see the module docs).
pub fn disconnect(link_id: u64, pid: Option<u32>) {
    // (A pipe lane's leases wait for `reaped`: EOF alone does not prove
    // the process stopped touching shared memory.)
    let cores: Vec<Arc<Core>> = registry().values().filter_map(Weak::upgrade).collect();
    let mut dirty = Dirty::default();
    for core in cores {
        core.disconnect(link_id, pid, &mut dirty);
    }
    super::sync::disconnect(link_id, &mut dirty);
    super::map::disconnect(link_id);
    super::shared_memory::disconnect(link_id);
}

/// Says that the process behind connection `link_id` is certainly gone
/// (its connection ended and it was reaped): the leases it held in pipe
/// lanes are cleared, so other senders and receivers go on.
pub fn reaped(link_id: u64) {
    let Ok(lane) = u32::try_from(link_id) else {
        return;
    };
    let cores: Vec<Arc<Core>> = registry().values().filter_map(Weak::upgrade).collect();
    for core in cores {
        // Its accounts first: a take it died in is judged by its lease.
        core.retire_lane(lane);
        if let Some(l) = core.lane.get() {
            l.reaped(lane);
        }
    }
}

impl Core {
    /// Gives this queue (a new pipe direction) a lane, if shared memory
    /// can be had; returns it.
    pub(crate) fn make_lane(&self) -> Option<&Arc<HubLane>> {
        self.make_lane_of(lane::Kind::Plain)
    }

    fn make_lane_of(&self, kind: lane::Kind) -> Option<&Arc<HubLane>> {
        if let Some(l) = HubLane::new(kind) {
            let _ = self.lane.set(l);
        }
        self.lane.get()
    }

    /// This queue's lane, if it is a pipe direction with one.
    pub(crate) fn lane(&self) -> Option<&Arc<HubLane>> {
        self.lane.get()
    }

    /// Gives this queue (a new unbounded queue, not a pipe) a lane, if
    /// shared memory can be had.
    pub(crate) fn make_queue_lane(&self) {
        if self.make_lane().is_some() {
            self.queue_lane.store(true, Ordering::SeqCst);
        }
    }

    /// Gives this queue (a new unbounded `JoinableQueue`, marked
    /// joinable) a lane with accounts, if shared memory can be had.
    pub(crate) fn make_joinable_lane(&self) {
        if let Some(l) = self.make_lane_of(lane::Kind::Joinable) {
            self.queue_lane.store(true, Ordering::SeqCst);
            self.lock().joinable_lane = Some(Arc::clone(l));
        }
    }

    /// Starts the joinable lane's join watcher if a join waits (called
    /// under the state lock, as the join registers).
    fn watch_joins(self: &Arc<Self>, state: &State) {
        if let Some(l) = &state.joinable_lane {
            l.watch_joins(Arc::downgrade(self));
        }
    }

    /// For the join watcher: whether joins still wait (under the state
    /// lock, `stop` runs when none does), after answering those a
    /// confirmation ended.
    pub(crate) fn recheck_joins(&self, stop: impl FnOnce()) -> bool {
        let mut dirty = Dirty::default();
        let mut state = self.lock();
        state.pump(self.capacity, self.id, &mut dirty);
        let waiting = state.joins_waiting();
        if !waiting {
            stop();
        }
        self.notify(state);
        waiting
    }

    /// Process `lane` is certainly gone: what it took through the
    /// joinable lane and did not confirm is lost (less what spare
    /// covers), reported as a `disconnect`'s losses are.
    fn retire_lane(&self, lane: u32) {
        let mut dirty = Dirty::default();
        let mut state = self.lock();
        let Some(l) = state.joinable_lane.clone() else {
            return;
        };
        let spare = &mut state.spare;
        let Some(left) = l.retire(lane, |debt| {
            let covered = debt.min(*spare);
            *spare -= covered;
            covered
        }) else {
            return;
        };
        if left.debt > 0 {
            let lost = Lost {
                pid: (left.pid != 0).then_some(left.pid),
                unfinished: left.debt,
            };
            state.losses.push_back(lost);
            state.tell_parked_joins(lost, &mut dirty);
        }
        state.pump(self.capacity, self.id, &mut dirty);
        self.notify(state);
    }

    /// This queue's lane, if it is a queue with one (not a pipe).
    pub(crate) fn queue_lane(&self) -> Option<&Arc<HubLane>> {
        self.lane
            .get()
            .filter(|_| self.queue_lane.load(Ordering::SeqCst))
    }

    /// A put through the hub from this process, after what the lane's
    /// ring holds (the ring was full; see [`HubLane::settle`]).
    pub(crate) fn put_settled(&self, item: Vec<u8>, wait: Wait) -> Result<(), PutFail> {
        let _settled = self.queue_lane().map(|l| l.settle(self));
        self.put(item, wait)
    }
}

mod lifetime;
#[cfg(test)]
mod tests;

mod poll;
pub(crate) use poll::AsyncWait;
