//! The worker's side of the hub: proxies for queues held by the master.
//!
//! The worker runtime [`install`]s the client with its connection's
//! [`Link`] and hands every `REPLY` and `DELIVER` frame its reader thread
//! receives to [`dispatch`]. Any thread of the worker (a task, or threads a
//! task starts) may then use queue handles: requests carry ids, and replies
//! find their waiter by id.
//!
//! Getting uses a subscription: the proxy grants the hub a credit, the hub
//! pushes up to that many items, each item taken is acknowledged before it
//! is returned (so the hub can give back what a dying process had not taken
//! yet). The credit starts at one and doubles, up to [`MAX_CREDIT`], while
//! the caller keeps finding the buffer empty right after a take — a fast
//! consumer streams, a slow one holds at most a few items others could use.
//! Those few are not stranded: when a getter elsewhere waits for an empty
//! queue, the hub recalls them from a process that is not getting (see
//! [`give_back`](Client::give_back) and the hub's docs).
//!
//! Acknowledgements are not batched, though one frame per item is a third
//! of a remote queue's records: an item a `get` returned whose `ACK` is
//! not yet in the kernel would go back to the queue if this process died,
//! and reach another consumer a second time. One `ACK` per item, in the
//! kernel before `get` returns, is what makes a consumer's death lose and
//! duplicate nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::wire::{Wait, op, status};
use crate::error::QueueError;
use crate::link::Link;
use crate::proto::Message;
use crate::sync::{lock, wait_until};

mod poll;
pub(crate) use poll::AsyncRequest;

/// Most items a subscription may hold unacknowledged in this process.
pub(crate) const MAX_CREDIT: u64 = 256;

/// A take this soon after the previous one that finds the buffer empty
/// means the consumer is faster than the credit: double it.
const FAST: Duration = Duration::from_millis(1);

/// A getter that has waited this long with nothing buffered tells the hub
/// (`WANT`), which then recalls items buffered in processes that are not
/// getting: an item never waits in an idle process while a getter waits
/// elsewhere. Sooner would cost a frame on every short wait of a
/// streaming consumer.
const WANT_AFTER: Duration = Duration::from_millis(2);

static CLIENT: OnceLock<Arc<Client>> = OnceLock::new();

/// What a remote get found.
#[derive(Debug)]
pub(crate) enum Taken {
    Item(Vec<u8>),
    Empty,
    Closed,
}

/// A reply: status, value, payload.
pub(crate) type Reply = (u8, u64, Vec<u8>);

#[derive(Debug)]
pub(crate) struct Client {
    link: Arc<Link>,
    /// The parent's hub id, once asked.
    upstream: OnceLock<u64>,
    next_req: AtomicU64,
    pending: Mutex<HashMap<u64, Waiter>>,
    subs: Mutex<HashMap<u64, Entry>>,
}

/// Who waits for a reply.
#[derive(Debug)]
enum Waiter {
    /// A thread blocked in a request.
    Caller(Sender<Reply>),
    /// Nobody: the reply ends the release of this queue's subscription.
    Unsubscribed(u64),
    /// A future: the reply is sent, then its task woken (see `poll.rs`).
    Async(Sender<Reply>, std::task::Waker),
}

/// What this process knows of one queue: its subscription, how many
/// handle groups here refer to it, and how many `UNSUBSCRIBE`s are still
/// unanswered (deliveries that arrive meanwhile belong to a released
/// subscription, which the hub has put back in the queue: they are dropped).
/// The entry goes once no handle and no `UNSUBSCRIBE` is left, so a worker
/// that gets a new queue per task does not accumulate them.
#[derive(Debug, Default)]
struct Entry {
    sub: Arc<Sub>,
    handles: usize,
    leaving: usize,
}

/// Keeps a queue's entry in this process's client, and the queue alive in
/// the hub; see [`Client::hold`].
#[derive(Debug)]
pub(crate) struct Held {
    client: &'static Arc<Client>,
    queue: u64,
    /// A pipe writer's handle (the hub ends the pipe when the last goes).
    writer: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.client.release(self.queue);
        // A broken link needs no `UNHOLD`: the hub drops a connection's
        // holds when it ends.
        let _ = self
            .client
            .oneway(op::UNHOLD, self.queue, u64::from(self.writer), &[]);
    }
}

#[derive(Debug, Default)]
struct Sub {
    state: Mutex<SubState>,
    arrived: Condvar,
}

impl Sub {
    /// Waits for a delivery; `None` once `deadline` has passed.
    fn wait<'a>(
        &self,
        mut state: MutexGuard<'a, SubState>,
        deadline: Option<Instant>,
    ) -> Option<MutexGuard<'a, SubState>> {
        state.waiters += 1;
        let woken = wait_until(&self.arrived, state, deadline);
        let timed_out = woken.is_err();
        let mut state = woken.unwrap_or_else(|g| g);
        state.waiters -= 1;
        (!timed_out).then_some(state)
    }
}

#[derive(Debug, Default)]
struct SubState {
    buf: VecDeque<Vec<u8>>,
    /// Closed and drained: no item will come.
    closed: bool,
    /// Closed: puts are refused.
    put_closed: bool,
    /// Shut down: refusals and the end of the queue say `ShutDown`.
    shut_down: bool,
    /// The hub holds no such queue (it was gone before this process held it).
    gone: bool,
    /// A put from here was answered: the hub knows this connection uses
    /// the queue and tells it when the queue closes, so later puts to an
    /// unbounded queue may be one-way.
    puts_confirmed: bool,
    subscribed: bool,
    credit: u64,
    /// It answered a recall keeping items for the getters waiting here
    /// (`KEEP`): the hub does not recall them before a take. A getter
    /// that leaves without taking them says so (see [`Client::left`]).
    kept: bool,
    last_take: Option<Instant>,
    /// Threads waiting for a delivery.
    waiters: usize,
    /// Futures waiting for a delivery (see `poll.rs`), woken with the threads.
    wakers: Vec<std::task::Waker>,
}

/// Installs the client for this worker process (once).
pub fn install(link: Arc<Link>) {
    let _ = CLIENT.set(Arc::new(Client {
        link,
        upstream: OnceLock::new(),
        next_req: AtomicU64::new(1),
        pending: Mutex::new(HashMap::new()),
        subs: Mutex::new(HashMap::new()),
    }));
}

/// The installed client, in a worker process.
pub(crate) fn client() -> Option<&'static Arc<Client>> {
    CLIENT.get()
}

/// Routes a `REPLY` or `DELIVER` frame to whoever waits for it; returns
/// false for any other message.
pub fn dispatch(msg: &Message<'_>) -> bool {
    let Some(client) = client() else {
        return false;
    };
    match *msg {
        Message::Reply {
            req,
            status: code,
            value,
            payload,
        } => {
            if req == 0 {
                // Notices about a queue, answering no request.
                if let Some(sub) = client.existing(value) {
                    let mut state = lock(&sub.state);
                    match code {
                        status::CLOSED => state.put_closed = true,
                        status::NO_QUEUE => state.gone = true,
                        status::RECALL => client.give_back(value, &mut state),
                        status::SHUT_DOWN => {
                            state.shut_down = true;
                            state.put_closed = true;
                            if payload == [1] {
                                // Immediately: what was delivered here is
                                // dropped (the hub forgot it).
                                state.buf.clear();
                            }
                        }
                        _ => {}
                    }
                }
                return true;
            }
            let waiter = lock(&client.pending).remove(&req);
            match waiter {
                Some(Waiter::Caller(tx)) => {
                    let _ = tx.send((code, value, payload.to_vec()));
                }
                Some(Waiter::Unsubscribed(queue)) => client.unsubscribed(queue),
                Some(Waiter::Async(tx, waker)) => {
                    let _ = tx.send((code, value, payload.to_vec()));
                    waker.wake();
                }
                None => {}
            }
            true
        }
        Message::Deliver {
            queue,
            closed,
            payload,
        } => {
            let Some(sub) = client.existing(queue) else {
                return true;
            };
            let mut state = lock(&sub.state);
            if closed {
                state.closed = true;
            } else {
                state.buf.push_back(payload.to_vec());
            }
            let waiters = state.waiters;
            let wakers = std::mem::take(&mut state.wakers);
            drop(state);
            // A notify is a system call even when nobody waits.
            if waiters > 0 {
                sub.arrived.notify_all();
            }
            for w in wakers {
                w.wake();
            }
            true
        }
        _ => false,
    }
}

impl Client {
    /// Answers the hub's `RECALL` (see `wire`): what the waiting getters
    /// here will not take goes back, from the end of the buffer; with no
    /// getter waiting, the subscription also gives up its credit (the
    /// next get grants it again). Sent under the subscription's lock, so
    /// a grant from a getter comes after it.
    fn give_back(&self, queue: u64, state: &mut SubState) {
        let waiting = state.waiters + state.wakers.len();
        let keep = state.buf.len().min(waiting);
        let back = (state.buf.len() - keep) as u64;
        state.buf.truncate(keep);
        let code = if waiting == 0 {
            state.credit = 0;
            op::RETURN
        } else {
            state.kept = keep > 0;
            op::KEEP
        };
        // A broken link needs no answer: the hub gives everything back
        // when it sees the connection end.
        let _ = self.oneway(code, queue, back, &[]);
    }

    /// A getter left without taking (it timed out, or was a wait that
    /// takes nothing): if items kept for the getters here by a `KEEP` are
    /// still buffered and no getter is left to take them, the hub hears
    /// it (`ACK` of nothing), so it may recall them for a getter that
    /// waits elsewhere.
    fn left(&self, queue: u64, state: &mut SubState) {
        if state.kept && !state.buf.is_empty() && state.waiters == 0 && state.wakers.is_empty() {
            state.kept = false;
            // A broken link needs no notice: the hub gives everything
            // back when it sees the connection end.
            let _ = self.oneway(op::ACK, queue, 0, &[]);
        }
    }

    /// Grants the hub credit again after a recall took it (`RETURN`):
    /// a getter is here.
    fn regrant(&self, queue: u64, state: &mut SubState) -> Result<(), QueueError> {
        if state.credit == 0 {
            state.credit = 1;
            self.oneway(op::SUBSCRIBE, queue, 1, &[])?;
        }
        Ok(())
    }

    /// Waits for a delivery until `deadline`; after [`WANT_AFTER`] tells
    /// the hub a getter waits here (once per call: `wanted`). `None` once
    /// the deadline has passed.
    fn wait_wanting<'a>(
        &self,
        sub: &'a Sub,
        queue: u64,
        state: MutexGuard<'a, SubState>,
        deadline: Option<Instant>,
        wanted: &mut bool,
    ) -> Result<Option<MutexGuard<'a, SubState>>, QueueError> {
        if *wanted {
            return Ok(sub.wait(state, deadline));
        }
        let want_at = Instant::now() + WANT_AFTER;
        // (A wait that times out still returns the guard: `None` only
        // when the time was up before it began.)
        match sub.wait(state, Some(deadline.map_or(want_at, |d| d.min(want_at)))) {
            Some(state) if !state.buf.is_empty() || state.closed || Instant::now() < want_at => {
                Ok(Some(state))
            }
            Some(state) => {
                *wanted = true;
                self.oneway(op::WANT, queue, 0, &[])?;
                Ok(Some(state))
            }
            None if deadline.is_some_and(|d| Instant::now() >= d) => Ok(None),
            None => {
                *wanted = true;
                self.oneway(op::WANT, queue, 0, &[])?;
                Ok(Some(lock(&sub.state)))
            }
        }
    }

    fn sub(&self, queue: u64) -> Arc<Sub> {
        Arc::clone(&lock(&self.subs).entry(queue).or_default().sub)
    }

    /// The subscription deliveries for `queue` go to, if any: none once
    /// every handle here is gone, nor while a release is in flight.
    fn existing(&self, queue: u64) -> Option<Arc<Sub>> {
        let subs = lock(&self.subs);
        let entry = subs.get(&queue).filter(|e| e.leaving == 0)?;
        Some(Arc::clone(&entry.sub))
    }

    /// Counts one more handle group for `queue` in this process, and holds
    /// the queue in the hub (taking the pin `pin`), until the returned
    /// guard drops.
    ///
    /// # Errors
    /// The hub cannot be reached.
    pub(crate) fn hold(
        self: &'static Arc<Self>,
        queue: u64,
        writer: bool,
        pin: u64,
    ) -> Result<Held, QueueError> {
        self.oneway(op::HOLD, queue, u64::from(writer), &pin.to_le_bytes())?;
        lock(&self.subs).entry(queue).or_default().handles += 1;
        Ok(Held {
            client: self,
            queue,
            writer,
        })
    }

    /// The connection to the hub.
    pub(crate) fn link(&self) -> &Arc<Link> {
        &self.link
    }

    /// The id of the hub this process's connection leads to (asked once).
    ///
    /// # Errors
    /// The hub cannot be reached or does not answer as expected.
    pub(crate) fn upstream_hub(&self) -> Result<u64, QueueError> {
        if let Some(&id) = self.upstream.get() {
            return Ok(id);
        }
        let (st, id, _) = self.request(op::HUB_ID, 0, 0, &[], Wait::Forever)?;
        super::wire::check(st, 0)?;
        Ok(*self.upstream.get_or_init(|| id))
    }

    /// The last handle for `queue` here is gone: a subscription is handed
    /// back to the hub (which puts what it delivered and nobody took back
    /// in the queue), and the entry is forgotten once that is answered.
    /// Never waits.
    fn release(&self, queue: u64) {
        let mut subs = lock(&self.subs);
        let Some(entry) = subs.get_mut(&queue) else {
            return;
        };
        entry.handles -= 1;
        if entry.handles > 0 {
            return;
        }
        let subscribed = {
            let mut state = lock(&entry.sub.state);
            let subscribed = std::mem::take(&mut state.subscribed);
            if subscribed {
                state.buf.clear();
                state.credit = 0;
                state.closed = false;
            }
            subscribed
        };
        if !subscribed {
            if entry.leaving == 0 {
                subs.remove(&queue);
            }
            return;
        }
        entry.leaving += 1;
        drop(subs);
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        lock(&self.pending).insert(req, Waiter::Unsubscribed(queue));
        if self.send(req, op::UNSUBSCRIBE, queue, 0, &[]).is_err() {
            // The link is broken: the hub gives everything back when it
            // sees the connection end.
            lock(&self.pending).remove(&req);
            self.unsubscribed(queue);
        }
    }

    /// The hub answered an `UNSUBSCRIBE` for `queue`.
    fn unsubscribed(&self, queue: u64) {
        let mut subs = lock(&self.subs);
        if let Some(entry) = subs.get_mut(&queue) {
            entry.leaving -= 1;
            if entry.leaving == 0 && entry.handles == 0 {
                subs.remove(&queue);
            }
        }
    }

    /// Why the hub said it takes no more puts on `queue`, if it did.
    pub(crate) fn put_refused(&self, queue: u64) -> Option<QueueError> {
        let sub = self.sub(queue);
        let state = lock(&sub.state);
        if state.gone {
            Some(QueueError::NoSuchQueue { id: queue })
        } else if state.shut_down {
            Some(QueueError::ShutDown)
        } else if state.put_closed {
            Some(QueueError::Closed)
        } else {
            None
        }
    }

    fn send(
        &self,
        req: u64,
        code: u8,
        queue: u64,
        arg: u64,
        payload: &[u8],
    ) -> Result<(), QueueError> {
        let msg = Message::Hub {
            req,
            op: code,
            queue,
            arg,
            payload,
        };
        self.link.send(&msg).map_err(QueueError::from_ipc)
    }

    /// A one-way operation whose volume the protocol bounds; never waits.
    pub(crate) fn oneway(
        &self,
        code: u8,
        queue: u64,
        arg: u64,
        payload: &[u8],
    ) -> Result<(), QueueError> {
        self.send(0, code, queue, arg, payload)
    }

    /// Whether a get of `queue` would not block now (an item buffered
    /// here, or the end); if not, `waker` is woken by the next delivery
    /// (see `wait`), and the hub hears a getter waits here.
    pub(crate) fn watch(&self, queue: u64, waker: &std::task::Waker) -> Result<bool, QueueError> {
        let sub = self.subscribed(queue)?;
        let mut state = lock(&sub.state);
        if !state.buf.is_empty() || state.closed {
            return Ok(true);
        }
        self.regrant(queue, &mut state)?;
        if !state.wakers.iter().any(|w| w.will_wake(waker)) {
            state.wakers.push(waker.clone());
            self.oneway(op::WANT, queue, 0, &[])?;
        }
        Ok(false)
    }

    /// Drops `waker` from `queue`'s subscription, if it is there.
    pub(crate) fn unwatch(&self, queue: u64, waker: &std::task::Waker) {
        if let Some(sub) = self.existing(queue) {
            let mut state = lock(&sub.state);
            state.wakers.retain(|w| !w.will_wake(waker));
            self.left(queue, &mut state);
        }
    }

    /// Whether the hub said `queue` was shut down.
    pub(crate) fn is_shut_down(&self, queue: u64) -> bool {
        lock(&self.sub(queue).state).shut_down
    }

    /// Whether a put to `queue` from this process was answered already.
    pub(crate) fn puts_confirmed(&self, queue: u64) -> bool {
        lock(&self.sub(queue).state).puts_confirmed
    }

    /// Records that a put to `queue` was answered.
    pub(crate) fn confirm_puts(&self, queue: u64) {
        lock(&self.sub(queue).state).puts_confirmed = true;
    }

    /// A one-way operation that must reach the hub even if this process
    /// dies right after (`ACK`, `TASK_DONE`): returns once the frame is in
    /// the kernel (at once, unless the link is backed up).
    pub(crate) fn oneway_sent(&self, code: u8, queue: u64, arg: u64) -> Result<(), QueueError> {
        self.send(0, code, queue, arg, &[])?;
        self.link
            .drain(None)
            .map(drop)
            .map_err(QueueError::from_ipc)
    }

    /// A one-way `PUT` from code that puts at will: waits up to `wait` for
    /// room in the link's outbox, then until the frame is in the kernel.
    /// `Ok(false)`: no room in time, nothing was sent.
    pub(crate) fn put_oneway(
        &self,
        queue: u64,
        payload: &[u8],
        wait: Wait,
    ) -> Result<bool, QueueError> {
        let msg = Message::Hub {
            req: 0,
            op: op::PUT,
            queue,
            arg: 0,
            payload,
        };
        self.link
            .send_bounded(&msg, wait.deadline())
            .map_err(QueueError::from_ipc)
    }

    fn register(&self) -> (u64, Receiver<Reply>) {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = crossbeam_channel::bounded(1);
        lock(&self.pending).insert(req, Waiter::Caller(tx));
        (req, rx)
    }

    /// A request and its reply. With a deadline, a request still parked in
    /// the hub when it passes is cancelled; the reply to the cancel (or the
    /// real answer, if it won the race) is what comes back.
    pub(crate) fn request(
        &self,
        code: u8,
        queue: u64,
        arg: u64,
        payload: &[u8],
        wait: Wait,
    ) -> Result<Reply, QueueError> {
        let (req, rx) = self.register();
        if let Err(e) = self.send(req, code, queue, arg, payload) {
            lock(&self.pending).remove(&req);
            return Err(e);
        }
        let first = match wait.deadline() {
            None => rx.recv().ok(),
            Some(d) => rx.recv_deadline(d).ok(),
        };
        if let Some(reply) = first {
            return Ok(reply);
        }
        self.oneway(op::CANCEL, queue, req, &[])?;
        // The hub answers every request it parked: with the result or CANCELLED.
        rx.recv().map_err(|_| QueueError::Disconnected)
    }

    /// The subscription for `queue`, locked, subscribed to the hub.
    fn subscribed(&self, queue: u64) -> Result<Arc<Sub>, QueueError> {
        let sub = self.sub(queue);
        let first = {
            let mut state = lock(&sub.state);
            !std::mem::replace(&mut state.subscribed, true)
        };
        if first {
            lock(&sub.state).credit = 1;
            // With a reply, so a non-blocking get sees what is already there.
            self.request(op::SUBSCRIBE, queue, 1, &[], Wait::Forever)?;
        }
        Ok(sub)
    }

    /// Takes one item, subscribing first if needed.
    pub(crate) fn get(&self, queue: u64, wait: Wait) -> Result<Taken, QueueError> {
        let sub = self.subscribed(queue)?;
        let deadline = wait.deadline();
        let mut synced = false;
        let mut wanted = false;
        let mut state = lock(&sub.state);
        loop {
            if let Some(item) = state.buf.pop_front() {
                state.last_take = Some(Instant::now());
                state.kept = false;
                drop(state);
                // Acknowledged, and in the kernel, before the caller sees
                // it: if this process dies now, the hub knows the item was
                // taken (and does not hand it to another consumer).
                self.oneway_sent(op::ACK, queue, 1)?;
                return Ok(Taken::Item(item));
            }
            if state.closed {
                return Ok(Taken::Closed);
            }
            if state.last_take.is_some_and(|t| t.elapsed() < FAST) && state.credit < MAX_CREDIT {
                let more = state.credit;
                state.credit += more;
                state.last_take = None;
                self.oneway(op::SUBSCRIBE, queue, more, &[])?;
            }
            self.regrant(queue, &mut state)?;
            state = match self.wait_wanting(&sub, queue, state, deadline, &mut wanted)? {
                Some(state) => state,
                None if synced => {
                    // An item that came as the time ran out (kept for
                    // this getter by a `KEEP`, say) is taken, not left.
                    let state = lock(&sub.state);
                    if state.buf.is_empty() && !state.closed {
                        return Ok(Taken::Empty);
                    }
                    state
                }
                None => {
                    // Nothing here by the deadline, but the hub may hold an
                    // item on its way (given in place of the last one
                    // taken): one round trip, answered after any delivery
                    // it makes, before saying Empty. So `try_get` takes an
                    // item if the queue has one.
                    self.request(op::SUBSCRIBE, queue, 0, &[], Wait::Forever)?;
                    synced = true;
                    lock(&sub.state)
                }
            };
        }
    }

    /// Waits until an item is buffered here (or the queue is closed).
    pub(crate) fn poll(&self, queue: u64, wait: Wait) -> Result<bool, QueueError> {
        let sub = self.subscribed(queue)?;
        let deadline = wait.deadline();
        let mut wanted = false;
        let mut state = lock(&sub.state);
        loop {
            if !state.buf.is_empty() || state.closed {
                // This wait takes nothing: what a `KEEP` kept for it may
                // be recalled for a getter elsewhere.
                self.left(queue, &mut state);
                return Ok(true);
            }
            self.regrant(queue, &mut state)?;
            state = match self.wait_wanting(&sub, queue, state, deadline, &mut wanted)? {
                Some(state) => state,
                None => {
                    let mut state = lock(&sub.state);
                    self.left(queue, &mut state);
                    return Ok(!state.buf.is_empty() || state.closed);
                }
            };
        }
    }
}
