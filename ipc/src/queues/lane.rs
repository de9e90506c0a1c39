//! A *lane*: a [`Stream`] in a shared segment beside a hub queue, so
//! that local processes pass items through memory instead of through the
//! hub. Pipe directions have one, and so do unbounded `Queue`s,
//! `SimpleQueue`s and `JoinableQueue`s (not bounded queues, whose
//! capacity lives in the hub). A `JoinableQueue`'s lane counts the
//! messages it publishes and keeps the queue's accounts after the ring
//! (`shm/books.rs`): a lane getter marks each take there under the
//! reader lease, a `task_done` pays its own process's debt there, and the
//! hub adds its own count when it decides a `join` (a watcher thread
//! wakes it on the accounts' eventcount while joins wait) or a
//! `task_done` it receives. Once a getter is reaped, its debt is
//! reported lost, as the hub's are (see `hub.rs`).

//! # Who uses it
//!
//! The hub process makes the segment with the queue ([`HubLane`], kept by
//! the queue's [`Core`]). A process that can map it is *lane-capable*:
//! the hub's own process (lane id [`HUB_LANE`]) and its direct local
//! workers with a descriptor channel, which ask `LANE` when they
//! deserialise a pipe end, or first use a queue handle: the hub sends the
//! segment's descriptor over the channel (as `SharedMemory`'s `OPEN`
//! does) and answers with the segment's length and the worker's lane id
//! (its connection's id). Any other holder (a remote TCP worker,
//! `PROCPOOL_SHM_THRESHOLD=off`, a mapping that failed) uses the hub
//! queue exactly as before.
//!
//! - Lane senders send through the ring; hub-path senders put into the
//!   hub queue. For a pipe, order between different senders is undefined,
//!   as before. For a queue, a put through the hub (a remote worker's, or
//!   a lane put that found the ring full for a moment) first moves every
//!   message in the ring into the hub queue ([`HubLane::settle`]), then
//!   puts its own: the hub queue's items are always older than the
//!   ring's. So FIFO per producer holds when a producer's puts overflow
//!   into the hub, and a put that returned before another process's put
//!   began is got first, whichever paths they took. An unbounded put
//!   therefore never waits long: at most a moment for room, then the hub
//!   takes the overflow.
//! - Lane receivers read both: the hub keeps `hub_items` in the lane's
//!   header (items waiting in, or delivered ahead from, the hub queue) and
//!   wakes `not_empty` on changes; a receiver takes from the hub queue
//!   first while `hub_items > 0`, else from the ring. A queue's receiver
//!   decides "the ring" under the ring's reader lease
//!   ([`Stream::try_recv_unless`]: it gives the lease back if the hub's
//!   generation moved since it looked), and the movers above take
//!   messages under the same lease and put them into the hub before they
//!   give it back ([`Stream::try_recv_then`]), so no message moves into
//!   the hub between the look and the take, nor is in flight unseen.
//! - A receiving end held by a process that cannot map the lane makes the
//!   hub start a *pump* for the queue: a hub thread that takes the
//!   ring's messages (reader leases with [`HUB_LANE`]) and puts them into
//!   the hub queue. While it runs, closing the hub queue waits until the
//!   pump has drained the ring (the ring is closed at once), and a queue
//!   closed already does not count as drained until then: the pump puts
//!   what the ring accepted even into a closed queue. The pump runs until
//!   the queue ends. (Every queue handle may get, so a queue's holder
//!   that cannot map the lane starts the pump.)
//! - Ends: a pipe sender's `close` sets the ring's `CLOSED` and closes the
//!   hub queue; when the hub queue closes (close, shutdown, or every
//!   sending handle of a pipe gone) the hub sets `CLOSED` in the ring, so
//!   later lane puts fail as closed; for a pipe, when every receiving
//!   handle is gone it sets `READERS_GONE`, which fails blocked and later
//!   lane sends. A lane receiver reports `Closed` once the ring is
//!   drained, a flag is set, and the hub queue is closed and drained.
//!   An immediate shutdown drops the ring's messages too.
//! - Deaths: once a worker's connection ended and it was reaped
//!   ([`super::hub::reaped`]), the hub clears any lease its lane id holds.
//!   A lane put that returned survives its producer; a lane get consumes
//!   its message (the ring's `head` store) before the caller sees it, so
//!   a message is got at most once, and lost only with a getter that died
//!   while taking it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::task::Waker;
use std::time::{Duration, Instant};

use super::client::Client;
use super::hub::Core;
use super::wire::{Wait, status as qstatus};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::IpcError;
use crate::codec;
use crate::error::QueueError;
use crate::shm::books::{Books, Left, SlotId};
use crate::shm::stream::{
    CLOSED, InRing, MAX_LANE, READERS_GONE, Stream, StreamError, ToRing, WRITERS_GONE,
};
use crate::shm::{Segment, SegmentError};
use crate::sync::lock;

/// The lane id of the hub's own process (workers get their connection's
/// id, always smaller).
pub(crate) const HUB_LANE: u32 = MAX_LANE;

/// Data bytes of a lane's ring: what a pipe direction buffers before a
/// lane sender blocks.
pub(crate) const CAPACITY: usize = 1 << 20;

/// Operation code: map a pipe direction's lane (beside the queue ops).
pub(crate) const LANE: u8 = 66;
/// `LANE` argument: the requester holds a sending end.
pub(crate) const AS_WRITER: u64 = 1;
/// `LANE` argument: the requester holds a receiving end.
pub(crate) const AS_READER: u64 = 2;
/// `LANE` argument: the requester holds a receiving end and cannot use
/// the lane (its mapping failed): the hub must pump.
pub(crate) const AS_READER_NO_LANE: u64 = 3;
/// `LANE` argument: the requester holds a queue handle (it may put and
/// get): the hub pumps if it cannot have the lane.
pub(crate) const AS_QUEUE: u64 = 4;
/// Status: the requester cannot map the lane (no descriptor channel, no
/// lane id for it, or the descriptor could not be sent).
pub(crate) const NO_LANE: u8 = 66;

/// A mapped lane: the stream over its segment (the stream drops first),
/// and a joinable queue's accounts after it.
#[derive(Debug)]
pub(crate) struct Mapped {
    stream: Stream,
    /// Where the accounts are, if the lane has them (inside `seg`).
    books: Option<std::ptr::NonNull<Books>>,
    seg: Segment,
}

// SAFETY: `books` points into `seg`, which lives as long as `self`, at
// atomics only (`Books` is `Sync`); the stream and segment are `Send`
// and `Sync` already.
unsafe impl Send for Mapped {}
// SAFETY: as for `Send`.
unsafe impl Sync for Mapped {}

/// What a new lane is for: `joinable` lanes count their messages and keep
/// a `JoinableQueue`'s accounts (`shm/books.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Plain,
    Joinable,
}

impl Mapped {
    #[cfg(all(test, loom))]
    fn new(_seg: Segment, _format: Option<Kind>) -> Result<Self, String> {
        Err("lanes are not mapped under the loom model".into())
    }

    /// Maps a lane over `seg`: formats it as a new one of `format`'s kind
    /// (the hub, once), or attaches (`None`).
    #[cfg(not(all(test, loom)))]
    fn new(seg: Segment, format: Option<Kind>) -> Result<Self, String> {
        let ptr = std::ptr::NonNull::new(seg.as_ptr()).ok_or("segment at address 0")?;
        let stream_len = Stream::bytes_needed(CAPACITY).map_err(|e| e.to_string())?;
        // SAFETY: the segment is mapped read/write for `seg.len()` bytes
        // (page-aligned) as long as `seg` lives, which is as long as the
        // stream (same struct, the stream drops first); only `Stream`s
        // touch those bytes, in every process (the segment is private to
        // this lane). `format` is set only by the hub, on a new segment
        // nobody else has seen.
        let stream = unsafe {
            match format {
                Some(kind) => Stream::init_with(ptr, stream_len, CAPACITY, kind == Kind::Joinable),
                None => Stream::attach(ptr, stream_len.min(seg.len())),
            }
        }
        .map_err(|e| e.to_string())?;
        let books = if seg.len() >= stream_len + Books::bytes_needed() {
            // SAFETY: `stream_len` is a multiple of 64 (a header of whole
            // lines, a power-of-two capacity) inside the page-aligned
            // segment, followed by the accounts' bytes (checked), which
            // only `Books` touches, in every process, while `seg` lives.
            // A new segment is formatted once, by the hub, before anyone
            // else has it.
            unsafe {
                let at = std::ptr::NonNull::new_unchecked(seg.as_ptr().add(stream_len));
                match format {
                    Some(_) => Some(Books::init(at)),
                    None => Books::attach(at),
                }
            }
            .map(std::ptr::NonNull::from)
        } else {
            None
        };
        Ok(Self { stream, books, seg })
    }

    fn books(&self) -> Option<&Books> {
        // SAFETY: see `Mapped::new`: inside `seg`, alive with `self`.
        self.books.map(|b| unsafe { b.as_ref() })
    }

    /// Bytes a segment for a lane of `kind` needs.
    fn bytes_needed(kind: Kind) -> Option<usize> {
        let stream = Stream::bytes_needed(CAPACITY).ok()?;
        Some(match kind {
            Kind::Plain => stream,
            Kind::Joinable => stream + Books::bytes_needed(),
        })
    }
}

/// What a process uses a lane through: its mapping and its lane id, and
/// the watcher that wakes async waiters when a record comes.
#[derive(Debug)]
pub(crate) struct LaneEnd {
    mapped: Arc<Mapped>,
    id: u32,
    watch: Arc<Watch>,
    /// A joinable lane's slot for this process, once claimed (`None`:
    /// every slot was taken).
    slot: std::sync::OnceLock<Option<SlotId>>,
}

#[derive(Debug, Default)]
struct Watch {
    wakers: Mutex<Vec<Waker>>,
    running: AtomicBool,
    /// The watcher thread, while it runs (unparked by a registration when
    /// it idles).
    thread: Mutex<Option<std::thread::Thread>>,
}

/// How long a watcher thread with no waker stays for the next one.
const LINGER: Duration = Duration::from_secs(2);

impl LaneEnd {
    fn new(mapped: Arc<Mapped>, id: u32) -> Arc<Self> {
        Arc::new(Self {
            mapped,
            id,
            watch: Arc::default(),
            slot: std::sync::OnceLock::new(),
        })
    }

    /// A joinable lane's accounts and this process's slot in them
    /// (claimed now if need be); `None` for other lanes, or with every
    /// slot taken.
    pub(crate) fn books(&self) -> Option<(&Books, SlotId)> {
        let books = self.mapped.books()?;
        let slot = self.slot.get_or_init(|| books.claim(self.id));
        slot.map(|s| (books, s))
    }

    /// Whether the lane keeps a joinable queue's accounts.
    pub(crate) fn joinable(&self) -> bool {
        self.mapped.books().is_some()
    }

    pub(crate) fn stream(&self) -> &Stream {
        &self.mapped.stream
    }

    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    /// Whether a receive may make progress in the ring now (a record, or
    /// an end flag).
    pub(crate) fn ring_ready(&self) -> bool {
        let s = self.stream();
        s.has_record() || s.flags() & (CLOSED | WRITERS_GONE) != 0
    }

    /// Wakes `waker` once [`ring_ready`](Self::ring_ready) (or the hub
    /// counts an item), from a watcher thread that runs while wakers are
    /// registered.
    pub(crate) fn watch(self: &Arc<Self>, waker: &Waker) {
        let mut wakers = lock(&self.watch.wakers);
        if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
        drop(wakers);
        if let Some(t) = lock(&self.watch.thread).as_ref() {
            t.unpark();
        }
        if !self.watch.running.swap(true, Ordering::SeqCst) {
            let lane = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name("procpool-lane-watch".into())
                .spawn(move || lane.run_watcher());
            if spawned.is_err() {
                self.watch.running.store(false, Ordering::SeqCst);
            }
        }
    }

    /// Forgets `waker`.
    pub(crate) fn unwatch(&self, waker: &Waker) {
        lock(&self.watch.wakers).retain(|w| !w.will_wake(waker));
    }

    fn run_watcher(&self) {
        *lock(&self.watch.thread) = Some(std::thread::current());
        let mut hub_gen = self.stream().hub_gen();
        let mut idle_since: Option<Instant> = None;
        loop {
            let now = self.stream().hub_gen();
            let ready = self.ring_ready() || now != hub_gen;
            hub_gen = now;
            let mut wakers = lock(&self.watch.wakers);
            if wakers.is_empty() {
                drop(wakers);
                // Stay a while for the next registration (an async
                // receive loop registers again at once), parked: a
                // registration unparks.
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() < LINGER {
                    std::thread::park_timeout(Duration::from_millis(200));
                    continue;
                }
                *lock(&self.watch.thread) = None;
                self.watch.running.store(false, Ordering::SeqCst);
                // A waker registered between the check and the store
                // found `running` set: take over again if so.
                if lock(&self.watch.wakers).is_empty()
                    || self.watch.running.swap(true, Ordering::SeqCst)
                {
                    return;
                }
                *lock(&self.watch.thread) = Some(std::thread::current());
                continue;
            }
            idle_since = None;
            if ready {
                for w in wakers.drain(..) {
                    w.wake();
                }
                continue;
            }
            drop(wakers);
            // Woken by records, flags and hub changes; the timeout only
            // lets the thread notice that nobody waits any more.
            let deadline = Some(Instant::now() + Duration::from_millis(200));
            self.stream().sleep_readers(deadline, || {
                self.ring_ready() || self.stream().hub_gen() != hub_gen
            });
        }
    }
}

/// The hub side of a lane: its mapping, this process's end, the pump.
#[derive(Debug)]
pub(crate) struct HubLane {
    local: Arc<LaneEnd>,
    pump: Mutex<Pump>,
    /// A joinable lane's join watcher runs (see [`watch_joins`](Self::watch_joins)).
    join_watcher: Mutex<bool>,
    /// Held while records move from the ring into the hub queue (the pump
    /// and [`settle`](HubLane::settle)): one mover at a time, so they keep
    /// their order.
    moving: Mutex<()>,
    /// Items queued in the hub at the last change (under the hub lock).
    queued: AtomicUsize,
}

#[derive(Debug, Default)]
struct Pump {
    running: bool,
    /// The pump drained the closed ring: the hub queue may close now.
    drained: bool,
}

impl HubLane {
    /// A new lane, or `None` when shared memory is refused (the direction
    /// then works through the hub only).
    pub(crate) fn new(kind: Kind) -> Option<Arc<HubLane>> {
        let len = Mapped::bytes_needed(kind)?;
        let seg = Segment::new(len).ok()?;
        let mapped = Mapped::new(seg, Some(kind)).ok()?;
        Some(Arc::new(HubLane {
            local: LaneEnd::new(Arc::new(mapped), HUB_LANE),
            pump: Mutex::default(),
            join_watcher: Mutex::default(),
            moving: Mutex::default(),
            queued: AtomicUsize::new(0),
        }))
    }

    /// This process's end of the lane.
    pub(crate) fn local(&self) -> &Arc<LaneEnd> {
        &self.local
    }

    fn stream(&self) -> &Stream {
        self.local.stream()
    }

    /// After a change of the hub queue (under its lock): publishes how
    /// many items it has for receivers, and its end.
    /// `queued` (of `hub_items`) wait in the queue: when they grow while
    /// the total does not (a subscriber gave items back), receivers are
    /// woken too.
    pub(crate) fn on_change(&self, hub_items: usize, queued: usize, closed: bool) {
        let s = self.stream();
        let before = s.hub_gen();
        s.set_hub_items(u32::try_from(hub_items).unwrap_or(u32::MAX));
        if self.queued.swap(queued, Ordering::SeqCst) < queued && s.hub_gen() == before {
            s.hub_changed();
        }
        if closed && s.flags() & CLOSED == 0 {
            s.set_flag(CLOSED);
        }
    }

    /// The hub queue is about to close: `true` if it must wait for the
    /// pump to drain the ring (the ring is closed now; the pump closes the
    /// queue when done).
    pub(crate) fn defer_close(&self) -> bool {
        let pump = lock(&self.pump);
        if pump.running && !pump.drained {
            self.stream().set_flag(CLOSED);
            return true;
        }
        false
    }

    /// Every receiving handle of the direction is gone.
    pub(crate) fn readers_gone(&self) {
        if self.stream().flags() & READERS_GONE == 0 {
            self.stream().set_flag(READERS_GONE);
        }
    }

    fn books(&self) -> Option<&Books> {
        self.local.mapped.books()
    }

    /// A joinable lane's unfinished count, with the hub queue's own
    /// `hub` (published to the accounts first: see `shm/books.rs`).
    pub(crate) fn total(&self, hub: u64) -> u64 {
        match self.books() {
            Some(b) => {
                b.set_hub(hub);
                b.unfinished(self.stream())
            }
            None => hub,
        }
    }

    /// Publishes the hub queue's unfinished count to a joinable lane's
    /// accounts.
    pub(crate) fn set_hub_unfinished(&self, hub: u64) {
        if let Some(b) = self.books() {
            b.set_hub(hub);
        }
    }

    /// `n` of a joinable lane's items confirmed by the hub.
    pub(crate) fn hub_confirmed(&self, n: u64) {
        if let Some(b) = self.books() {
            b.hub_confirmed(n);
        }
    }

    /// A joinable lane's accounts of process `lane`, certainly gone: see
    /// [`Books::retire`].
    pub(crate) fn retire(&self, lane: u32, covered: impl FnOnce(u64) -> u64) -> Option<Left> {
        self.books()?.retire(lane, self.stream(), covered)
    }

    /// Starts, once, the thread that answers joins when confirmations
    /// through the lane end them (they wake the accounts' `join_ev`):
    /// it runs while joins wait. Called under `core`'s state lock.
    pub(crate) fn watch_joins(self: &Arc<Self>, core: Weak<Core>) {
        let Some(books) = self.books() else { return };
        books.set_joins_waiting(true);
        let mut running = lock(&self.join_watcher);
        if *running {
            return;
        }
        *running = true;
        let lane = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("procpool-join-watch".into())
            .spawn(move || lane.run_join_watcher(&core));
        if spawned.is_err() {
            tracing::error!("could not start a joinable queue's join watcher");
            *running = false;
        }
    }

    fn run_join_watcher(&self, core: &Weak<Core>) {
        let Some(books) = self.books() else { return };
        let stop = || {
            books.set_joins_waiting(false);
            *lock(&self.join_watcher) = false;
        };
        loop {
            let Some(core) = core.upgrade() else {
                stop();
                return;
            };
            // A bound on how late a missed wake could make a join.
            let deadline = Some(Instant::now() + Duration::from_millis(100));
            books.wait_confirmed(deadline, || core.unfinished() == 0);
            if !core.recheck_joins(stop) {
                return;
            }
        }
    }

    /// Process `lane` is certainly gone: its leases go.
    pub(crate) fn reaped(&self, lane: u32) {
        self.stream().clear_leases(lane);
    }

    /// Moves every message in the ring into the hub queue, in order,
    /// through `core`; the guard keeps other movers out until the caller
    /// has put its own item (a put through the hub then comes after every
    /// message the ring accepted before it: FIFO per producer, and causal
    /// order across processes, since lane receivers take the hub's items
    /// first). Waits for the reader lease while a receiver holds it
    /// (it is copying out one message), at most a few seconds (a reader
    /// stopped in the middle: order may then break, logged).
    pub(crate) fn settle(&self, core: &Core) -> std::sync::MutexGuard<'_, ()> {
        let guard = lock(&self.moving);
        let s = self.stream();
        let mut buf = Vec::new();
        let give_up = Instant::now() + Duration::from_secs(5);
        while s.has_record() {
            // Into the hub before the reader lease goes (see `run_pump`).
            let r = s.try_recv_then(HUB_LANE, &mut buf, |b| {
                core.put_accepted(std::mem::take(b));
                if let Some(books) = self.books() {
                    books.moved_one();
                }
            });
            match r {
                Ok(()) => {}
                Err(StreamError::Empty) if Instant::now() < give_up => {
                    // A receiver holds the lease a moment.
                    s.wait_record(Some(Instant::now() + Duration::from_millis(1)));
                    std::thread::yield_now();
                }
                Err(e) => {
                    if e != StreamError::Closed {
                        tracing::error!(error = %e, "could not move a queue lane's items into the hub");
                    }
                    break;
                }
            }
        }
        guard
    }

    /// Drops every message in the ring (an immediate shutdown); how many.
    pub(crate) fn discard(&self) -> usize {
        let _guard = lock(&self.moving);
        let s = self.stream();
        let mut buf = Vec::new();
        let mut n = 0;
        let give_up = Instant::now() + Duration::from_secs(1);
        while s.has_record() && Instant::now() < give_up {
            match s.recv(
                HUB_LANE,
                &mut buf,
                Some(Instant::now() + Duration::from_millis(50)),
            ) {
                Ok(()) => n += 1,
                Err(StreamError::Empty) => {}
                Err(_) => break,
            }
        }
        n
    }

    /// Whole messages in the ring now (a snapshot; 0 if a receiver holds
    /// the lease for long).
    pub(crate) fn messages(&self) -> usize {
        self.stream()
            .messages(HUB_LANE, Instant::now() + Duration::from_millis(100))
            .unwrap_or(0)
    }

    /// Serves `LANE` from a connection (`link_id`, `shm`: whether it has
    /// a descriptor channel), for queue `id`: `(status, value)`, value =
    /// `lane id << 32 | segment length`.
    pub(crate) fn serve(
        self: &Arc<Self>,
        core: &Arc<Core>,
        link: &Arc<crate::link::Link>,
        role: u64,
    ) -> (u8, u64) {
        let reader = matches!(role, AS_READER | AS_READER_NO_LANE | AS_QUEUE);
        let lane_id = u32::try_from(link.id())
            .ok()
            .filter(|&l| l != 0 && l < HUB_LANE);
        let sent = match (role, lane_id, link.shm()) {
            (AS_READER_NO_LANE, ..) | (_, None, _) | (_, _, None) => false,
            (_, Some(_), Some(shm)) => self
                .local
                .mapped
                .seg
                .try_clone_handle()
                .map_err(std::io::Error::other)
                .and_then(|h| shm.send_object(core.id, &h))
                .is_ok(),
        };
        if !sent {
            if reader {
                self.start_pump(core);
            }
            return (NO_LANE, 0);
        }
        let len = self.local.mapped.seg.len() as u64;
        (qstatus::OK, u64::from(lane_id.unwrap_or(0)) << 32 | len)
    }

    /// Whether the pump runs and has not drained the ring yet (the hub
    /// queue is then not drained either: see `Core::set_pumping`).
    pub(crate) fn pumping(&self) -> bool {
        let pump = lock(&self.pump);
        pump.running && !pump.drained
    }

    /// Starts the pump, once.
    fn start_pump(self: &Arc<Self>, core: &Arc<Core>) {
        let mut pump = lock(&self.pump);
        if pump.running {
            return;
        }
        pump.running = true;
        drop(pump);
        let lane = Arc::clone(self);
        let core = Arc::downgrade(core);
        let spawned = std::thread::Builder::new()
            .name("procpool-lane-pump".into())
            .spawn(move || lane.run_pump(&core));
        if spawned.is_err() {
            tracing::error!("could not start a pipe lane's pump thread");
            lock(&self.pump).running = false;
        }
    }

    fn run_pump(&self, core: &Weak<Core>) {
        let mut buf = Vec::new();
        let s = self.stream();
        loop {
            // One mover at a time (see `settle`), for one message.
            let moving = lock(&self.moving);
            let Some(strong) = core.upgrade() else { return };
            // Into the hub before the reader lease goes: a receiver that
            // takes the lease next sees the hub's item (and its generation
            // moved), never a newer ring message while this one is in
            // flight.
            let r = s.try_recv_then(HUB_LANE, &mut buf, |b| {
                // Accepted by the ring: it goes in even if the queue
                // closed meanwhile (a plain put would drop it).
                strong.put_accepted(std::mem::take(b));
                if let Some(books) = self.books() {
                    books.moved_one();
                }
            });
            drop(strong);
            match r {
                Ok(()) => {}
                Err(StreamError::Empty) => {
                    drop(moving);
                    if core.strong_count() == 0 {
                        return;
                    }
                    if s.has_record() {
                        // A receiver holds the lease for a moment.
                        std::thread::yield_now();
                    } else {
                        s.wait_record(Some(Instant::now() + Duration::from_millis(500)));
                    }
                }
                Err(e) => {
                    if e != StreamError::Closed {
                        tracing::error!(error = %e, "a pipe lane's pump stopped");
                    }
                    lock(&self.pump).drained = true;
                    if let Some(core) = core.upgrade() {
                        core.close();
                        core.set_pumping(false);
                    }
                    return;
                }
            }
        }
    }
}

/// Lanes this worker has mapped, by queue id (shared by the ends of one
/// direction here, so one lane id and one partial message per process).
static MAPPED: LazyLock<Mutex<HashMap<u64, Weak<LaneEnd>>>> = LazyLock::new(Mutex::default);

/// A worker's end of queue `id`'s lane, or `None` (hub path), for a
/// holder in `role` ([`AS_READER`], [`AS_WRITER`], [`AS_QUEUE`]). For a
/// receiving end that cannot use the lane, the hub is told to pump.
pub(crate) fn attach(client: &'static Arc<Client>, id: u64, role: u64) -> Option<Arc<LaneEnd>> {
    if let Some(end) = lock(&MAPPED).get(&id).and_then(Weak::upgrade) {
        return Some(end);
    }
    let reader = role != AS_WRITER;
    match open(client, id, role) {
        // A joinable queue's taker needs a slot in its accounts: with
        // every slot taken, this process gets through the hub.
        Ok(Some(end)) if end.joinable() && end.books().is_none() => {
            let _ = client.request(LANE, id, AS_READER_NO_LANE, &[], Wait::Forever);
            None
        }
        Ok(Some(end)) => {
            lock(&MAPPED).insert(id, Arc::downgrade(&end));
            Some(end)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::debug!(error = %e, queue = id, "pipe lane not mapped; using the hub");
            if reader {
                // The hub sent the descriptor, so it is not pumping yet.
                let _ = client.request(LANE, id, AS_READER_NO_LANE, &[], Wait::Forever);
            }
            None
        }
    }
}

/// Asks the hub for the lane: `Ok(None)` when it says this process cannot
/// have one, `Err` when the descriptor came and mapping it failed.
fn open(client: &'static Arc<Client>, id: u64, role: u64) -> Result<Option<Arc<LaneEnd>>, String> {
    let (st, value, _) = client
        .request(LANE, id, role, &[], Wait::Forever)
        .map_err(|e| e.to_string())?;
    if st != qstatus::OK {
        return Ok(None);
    }
    let shm = client.link().shm().ok_or("no descriptor channel")?;
    let handle = shm.take_object(id).map_err(|e| e.to_string())?;
    let lane_id = (value >> 32) as u32;
    let len = usize::try_from(value & 0xFFFF_FFFF).map_err(|e| e.to_string())?;
    if lane_id == 0 || lane_id >= HUB_LANE {
        return Err(format!("the hub gave lane id {lane_id}"));
    }
    let seg = Segment::from_handle(handle, len).map_err(|e: SegmentError| e.to_string())?;
    let mapped = Mapped::new(seg, None)?;
    Ok(Some(LaneEnd::new(Arc::new(mapped), lane_id)))
}

/// A stream failure as a queue error.
/// Items of at least this many encoded bytes are encoded straight into
/// a lane's ring and decoded straight from it (`Stream::send_in_place`,
/// `Stream::try_recv_in_place`): a copy saved each way. Smaller ones go
/// through a buffer, where the lease is held only for a copy (an encoder
/// or decoder can be slower than copying its bytes).
const IN_PLACE_MIN: usize = 4096;

/// Encodes `item` for a lane's ring `s`: into `bytes` (`None`), or, when
/// it is large and fits a record, only measured (`Some(len)`: for
/// [`send_item`] to encode in place).
///
/// # Errors
/// [`IpcError::Encode`] when the item cannot be encoded.
pub(crate) fn encode_item<T: Serialize>(
    item: &T,
    s: &Stream,
    bytes: &mut Vec<u8>,
) -> Result<Option<usize>, IpcError> {
    match codec::encode_into_limited(item, bytes, IN_PLACE_MIN as u64) {
        Err(IpcError::PayloadTooLarge { len, .. }) if len <= s.record_limit() as u64 => {
            Ok(Some(len as usize))
        }
        Err(IpcError::PayloadTooLarge { .. }) => codec::encode_into(item, bytes).map(|()| None),
        r => r.map(|()| None),
    }
}

/// Why [`send_item`] failed.
#[derive(Debug)]
pub(crate) enum SendFail {
    Stream(StreamError),
    Encode(IpcError),
}

/// Sends `item` through the ring `s` as `lane`, waiting until `deadline`
/// as [`Stream::send`] does: written in place if `in_place` holds its
/// length (from [`encode_item`]), else `bytes`, its encoding. An
/// encoding that fails or changes length in place is made in `bytes`
/// instead (`in_place` is cleared) and sent from there.
pub(crate) fn send_item<T: Serialize>(
    s: &Stream,
    lane: u32,
    item: &T,
    in_place: &mut Option<usize>,
    bytes: &mut Vec<u8>,
    deadline: Option<Instant>,
) -> Result<(), SendFail> {
    loop {
        let sent = match *in_place {
            Some(len) => s.send_in_place(lane, len, deadline, |room| encode_in_place(item, room)),
            None => s.send(lane, bytes, deadline).map(|()| true),
        };
        match sent {
            Ok(true) => return Ok(()),
            Ok(false) => {
                *in_place = None;
                bytes.clear();
                codec::encode_into(item, bytes).map_err(SendFail::Encode)?;
            }
            Err(e) => return Err(SendFail::Stream(e)),
        }
    }
}

/// Encodes `item` into the ring's room; false if its encoding fails or
/// does not fill the room exactly.
fn encode_in_place<T: Serialize>(item: &T, room: &mut ToRing<'_>) -> bool {
    struct W<'a, 'b>(&'a mut ToRing<'b>);
    impl bincode::enc::write::Writer for W<'_, '_> {
        fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
            if self.0.write(bytes) {
                Ok(())
            } else {
                Err(bincode::error::EncodeError::Other("longer than measured"))
            }
        }
    }
    let len = room.remaining() as u64;
    codec::encode_into_writer(item, W(room), len).is_ok()
}

/// Takes the next message from the ring `s` as `lane` if one is there
/// (see [`Stream::try_recv_in_place`] for `defer`, which gives `Ok(None)`,
/// and `then`), and decodes it: a large one straight from the ring,
/// others from `buf`.
///
/// # Errors
/// As [`Stream::try_recv`]; the inner `Err` is a message that is not a
/// `T` (it was taken).
pub(crate) fn try_recv_item<T: DeserializeOwned>(
    s: &Stream,
    lane: u32,
    buf: &mut Vec<u8>,
    defer: impl Fn() -> bool,
    then: impl FnOnce(),
) -> Result<Option<Result<T, IpcError>>, StreamError> {
    let mut read = None;
    let took = s.try_recv_in_place(
        lane,
        buf,
        defer,
        IN_PLACE_MIN,
        |msg| read = Some(decode_in_place(msg)),
        then,
    )?;
    Ok(took.then(|| read.unwrap_or_else(|| codec::decode(buf).map(|(v, _)| v))))
}

/// Decodes an item from a message in the ring.
fn decode_in_place<T: DeserializeOwned>(msg: &mut InRing<'_>) -> Result<T, IpcError> {
    struct R<'a, 'b>(&'a mut InRing<'b>);
    impl bincode::de::read::Reader for R<'_, '_> {
        fn read(&mut self, bytes: &mut [u8]) -> Result<(), bincode::error::DecodeError> {
            let left = self.0.remaining();
            if self.0.read(bytes) {
                Ok(())
            } else {
                Err(bincode::error::DecodeError::UnexpectedEnd {
                    additional: bytes.len() - left,
                })
            }
        }
    }
    let len = msg.remaining();
    codec::decode_from_reader(&mut R(msg), len)
}

pub(crate) fn error(e: StreamError) -> QueueError {
    QueueError::Lane(e)
}
