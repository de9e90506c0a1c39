//! A `JoinableQueue`'s accounts beside its lane (a counted [`Stream`]),
//! in the same shared segment: how many items are unfinished, and who
//! owes the `task_done`s, kept by the processes that put, get and confirm
//! through the lane, without a message to the hub per item.
//!
//! # What counts
//!
//! ```text
//! unfinished = hub + published − moved − confirmed
//! confirmed  = hub_done + retired + Σ slot.done
//! ```
//!
//! - `published` (the stream's): items put through the ring, counted
//!   just before the `tail` store that publishes them, so before anyone
//!   can take one ([`Stream::published`]).
//! - `hub`: the hub queue's own unfinished count (items put through the
//!   hub, or moved there, and not confirmed), mirrored by the hub before
//!   every decision it takes on it.
//! - `moved`: ring items the hub moved into its queue (each counted in
//!   `hub` before it counts here).
//! - per process (a *slot*, claimed with its lane id): `taken`, items it
//!   took from the ring, and `done`, how many of those it confirmed.
//!   `taken − done` is its *debt*: what is lost if it dies.
//! - `hub_done`: confirmations the hub counted for the lane (a process
//!   confirming items it did not take itself, or items dropped by an
//!   immediate shutdown); `retired`: what the slots of dead processes had
//!   confirmed, plus their debts, once reported lost.
//!
//! Every count only grows, except `hub` (which the hub changes) and a
//! slot's, which go to `retired` when the hub reaps its process. A
//! reader of `unfinished` reads `confirmed` first, then `moved`, then
//! `hub`, then `published`: a count that grows while it reads can only
//! make its sum too large, never zero too early: every confirmation it
//! sees is of an item taken after it was counted in `published`. A move
//! counts in `hub` before `moved`; a retirement clears the slot before
//! `retired` grows.
//!
//! # A getter that dies
//!
//! A take is marked before the ring's `head` store that consumes the item
//! (`take`: who, where, and its `taken` after the take), and `taken` moves
//! after it, under the same reader lease. If the process dies holding the
//! lease, the hub, before clearing it, finishes the count when `head`
//! moved past the mark: the item is then in its debt, reported lost.
//!
//! # Untrusted memory
//!
//! The accounts are plain counters: a process writing garbage makes
//! `join` wait or return early, never an access outside the segment. The
//! slot index and lane ids come from this process, never from the
//! segment. Wakes: `join_ev` is an eventcount (see `ring/wake.rs`).

#[cfg(all(test, loom))]
use loom::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::atomic::Ordering::SeqCst;
#[cfg(not(all(test, loom)))]
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::Instant;

use super::ring::wake;
use super::stream::Stream;

/// Processes that can take from one lane at a time; others get through
/// the hub.
#[cfg(not(all(test, loom)))]
pub const SLOTS: usize = 64;
/// (Two under the loom model: each slot is read in every count.)
#[cfg(all(test, loom))]
pub const SLOTS: usize = 2;

const MAGIC: u64 = 0x736b_6f6f_6270_7070;

#[repr(C, align(64))]
struct Line<T>(T);

/// One process's takes and confirmations.
#[repr(C)]
struct Slot {
    /// Its lane id; 0: free.
    lane: AtomicU32,
    /// Its pid, as it said (for the loss report only).
    pid: AtomicU32,
    taken: AtomicU64,
    done: AtomicU64,
}

/// The accounts, in shared memory (see the module docs).
#[repr(C)]
pub struct Books {
    magic: Line<AtomicU64>,
    hub: Line<AtomicU64>,
    moved: Line<AtomicU64>,
    hub_done: Line<AtomicU64>,
    retired: Line<AtomicU64>,
    /// Non-zero while a join waits in the hub: confirmations that may end
    /// it wake `join_ev`.
    joins_waiting: Line<AtomicU32>,
    join_ev: Line<AtomicU32>,
    /// The take in progress (under the ring's reader lease).
    take: Line<Take>,
    slots: [Line<Slot>; SLOTS],
}

#[repr(C)]
struct Take {
    lane: AtomicU32,
    /// The ring position of the item being taken.
    pos: AtomicU64,
    /// Its taker's `taken` once it is taken.
    taken: AtomicU64,
}

/// A process's slot: an index this process found, never read from memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotId(usize);

/// What a dead process left: its debt (items it took and did not
/// confirm) and the pid it gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Left {
    /// Items taken and not confirmed.
    pub debt: u64,
    /// The pid its slot named (0: none).
    pub pid: u32,
}

impl std::fmt::Debug for Books {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Books").finish_non_exhaustive()
    }
}

impl Books {
    /// Bytes the accounts take (a multiple of 64).
    pub const fn bytes_needed() -> usize {
        size_of::<Books>()
    }

    /// Formats zeroed memory as empty accounts.
    ///
    /// # Safety
    /// `ptr` is 64-byte aligned, points at [`bytes_needed`](Self::bytes_needed)
    /// bytes that stay mapped and are accessed only through `Books`
    /// (atomics) for `'a`, and nobody else uses them during the call.
    pub unsafe fn init<'a>(ptr: std::ptr::NonNull<u8>) -> &'a Books {
        // SAFETY: the caller's contract; all-zero is a valid `Books`.
        let books = unsafe {
            ptr.as_ptr().write_bytes(0, Self::bytes_needed());
            ptr.cast::<Books>().as_ref()
        };
        books.magic.0.store(MAGIC, SeqCst);
        books
    }

    /// Accounts another process formatted at `ptr`; `None` if they do not
    /// look like accounts.
    ///
    /// # Safety
    /// As [`init`](Self::init), without the exclusivity.
    pub unsafe fn attach<'a>(ptr: std::ptr::NonNull<u8>) -> Option<&'a Books> {
        // SAFETY: the caller's contract; atomics only, valid for any bits.
        let books = unsafe { ptr.cast::<Books>().as_ref() };
        (books.magic.0.load(SeqCst) == MAGIC).then_some(books)
    }

    /// This process's slot as `lane` (claimed now if it has none), or
    /// `None` when every slot is taken.
    pub fn claim(&self, lane: u32) -> Option<SlotId> {
        if let Some(i) = self
            .slots
            .iter()
            .position(|s| s.0.lane.load(SeqCst) == lane)
        {
            return Some(SlotId(i));
        }
        let i = self
            .slots
            .iter()
            .position(|s| s.0.lane.compare_exchange(0, lane, SeqCst, SeqCst).is_ok())?;
        self.slots[i].0.pid.store(std::process::id(), SeqCst);
        Some(SlotId(i))
    }

    fn slot(&self, id: SlotId) -> &Slot {
        &self.slots[id.0].0
    }

    /// Marks a take by `lane` (slot `id`) of the item at ring position
    /// `pos`; the caller holds the reader lease and calls
    /// [`took`](Self::took) once the item is consumed.
    pub fn taking(&self, lane: u32, id: SlotId, pos: u64) {
        let t = &self.take.0;
        t.pos.store(pos, SeqCst);
        t.taken.store(self.slot(id).taken.load(SeqCst) + 1, SeqCst);
        t.lane.store(lane, SeqCst);
    }

    /// The marked take consumed its item (still under the reader lease).
    pub fn took(&self, id: SlotId) {
        let t = &self.take.0;
        self.slot(id).taken.fetch_max(t.taken.load(SeqCst), SeqCst);
        t.lane.store(0, SeqCst);
    }

    /// Confirms one item of this process's debt: `false` (nothing
    /// counted) if it owes none.
    pub fn confirm(&self, id: SlotId) -> bool {
        let s = self.slot(id);
        let taken = s.taken.load(SeqCst);
        s.done
            .fetch_update(SeqCst, SeqCst, |d| (d < taken).then_some(d + 1))
            .is_ok()
    }

    /// Items put and not confirmed, nor reported lost (see the module
    /// docs; `s` is the lane's counted stream).
    pub fn unfinished(&self, s: &Stream) -> u64 {
        let mut confirmed = self.hub_done.0.load(SeqCst);
        confirmed = confirmed.wrapping_add(self.retired.0.load(SeqCst));
        for slot in &self.slots {
            confirmed = confirmed.wrapping_add(slot.0.done.load(SeqCst));
        }
        let moved = self.moved.0.load(SeqCst);
        let hub = self.hub.0.load(SeqCst);
        let published = s.published();
        (hub + published).saturating_sub(moved.saturating_add(confirmed))
    }

    /// After a [`confirm`](Self::confirm): wakes the hub's join watcher
    /// if a join waits and nothing is unfinished any more (`s`: the
    /// lane's stream). The hub publishes its count before it decides to
    /// wait, and this looks after counting: one of the two sees the
    /// other.
    pub fn confirmed(&self, s: &Stream) {
        if self.joins_waiting.0.load(SeqCst) != 0 && self.unfinished(s) == 0 {
            wake::notify(&self.join_ev.0);
        }
    }

    fn wake_joins(&self) {
        if self.joins_waiting.0.load(SeqCst) != 0 {
            wake::notify(&self.join_ev.0);
        }
    }

    // ---- the hub's side ----

    /// The hub queue's own unfinished count, before it decides on the
    /// total (see the module docs).
    pub fn set_hub(&self, n: u64) {
        self.hub.0.store(n, SeqCst);
    }

    /// A ring item moved into the hub queue (counted there already).
    pub fn moved_one(&self) {
        self.moved.0.fetch_add(1, SeqCst);
    }

    /// `n` lane items confirmed by the hub (for a process that did not
    /// take them, or dropped).
    pub fn hub_confirmed(&self, n: u64) {
        self.hub_done.0.fetch_add(n, SeqCst);
        self.wake_joins();
    }

    /// Whether joins wait in the hub (see [`confirmed`](Self::confirmed)).
    pub fn set_joins_waiting(&self, waiting: bool) {
        self.joins_waiting.0.store(u32::from(waiting), SeqCst);
    }

    /// Sleeps until a confirmation may have ended a join, `deadline`, or
    /// spuriously, unless `ready()` once armed.
    pub fn wait_confirmed(&self, deadline: Option<Instant>, ready: impl Fn() -> bool) {
        #[cfg(not(all(test, loom)))]
        {
            let armed = wake::arm(&self.join_ev.0);
            if !ready() {
                wake::sleep(&self.join_ev.0, armed, deadline);
            }
        }
        #[cfg(all(test, loom))]
        let _ = (deadline, ready);
    }

    /// Process `lane` is certainly gone: finishes its take if it died in
    /// one (before the stream's leases are cleared: `s` is the lane's
    /// stream), frees its slot and returns what it left, of which the
    /// caller reports `lost` as lost (the rest was confirmed ahead by
    /// others, see the hub's spare); both leave the unfinished count.
    pub fn retire(&self, lane: u32, s: &Stream, covered: impl FnOnce(u64) -> u64) -> Option<Left> {
        let i = self
            .slots
            .iter()
            .position(|x| x.0.lane.load(SeqCst) == lane)?;
        let slot = &self.slots[i].0;
        let t = &self.take.0;
        if s.leases().1 == lane
            && t.lane.load(SeqCst) == lane
            && s.read_position() > t.pos.load(SeqCst)
        {
            slot.taken.fetch_max(t.taken.load(SeqCst), SeqCst);
            t.lane.store(0, SeqCst);
        }
        let done = slot.done.swap(0, SeqCst);
        let debt = slot.taken.swap(0, SeqCst).saturating_sub(done);
        let lost = debt - covered(debt).min(debt);
        // Confirmed ahead (covered) items were counted in `hub_done`
        // already; the lost ones leave the count now.
        self.retired.0.fetch_add(done + lost, SeqCst);
        let pid = slot.pid.swap(0, SeqCst);
        slot.lane.store(0, SeqCst);
        self.wake_joins();
        Some(Left { debt: lost, pid })
    }
}

#[cfg(all(test, loom))]
mod loom_tests;

#[cfg(all(test, loom))]
impl Books {
    /// Accounts as loom's atomics.
    fn new_loom() -> Self {
        let u64 = || Line(AtomicU64::new(0));
        let slot = || {
            Line(Slot {
                lane: AtomicU32::new(0),
                pid: AtomicU32::new(0),
                taken: AtomicU64::new(0),
                done: AtomicU64::new(0),
            })
        };
        Books {
            magic: Line(AtomicU64::new(MAGIC)),
            hub: u64(),
            moved: u64(),
            hub_done: u64(),
            retired: u64(),
            joins_waiting: Line(AtomicU32::new(0)),
            join_ev: Line(AtomicU32::new(0)),
            take: Line(Take {
                lane: AtomicU32::new(0),
                pos: AtomicU64::new(0),
                taken: AtomicU64::new(0),
            }),
            slots: [slot(), slot()],
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::alloc::Layout;
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::ptr::NonNull;

    use super::*;

    /// A counted stream of 1 KiB and accounts after it, on the heap.
    struct Lane {
        stream: Stream,
        books: &'static Books,
        ptr: NonNull<u8>,
        layout: Layout,
    }

    impl Lane {
        fn new() -> Self {
            let stream_len = Stream::bytes_needed(1024).unwrap();
            let layout = Layout::from_size_align(stream_len + Books::bytes_needed(), 64).unwrap();
            // SAFETY: non-zero size.
            let ptr = NonNull::new(unsafe { std::alloc::alloc(layout) }).unwrap();
            // SAFETY: fresh, aligned memory, freed in `drop` after the
            // stream; the accounts follow the stream's bytes.
            let (stream, books) = unsafe {
                (
                    Stream::init_with(ptr, stream_len, 1024, true).unwrap(),
                    Books::init(NonNull::new_unchecked(ptr.as_ptr().add(stream_len))),
                )
            };
            Self {
                stream,
                books,
                ptr,
                layout,
            }
        }

        /// A take by `lane` as a queue's getter makes it; `die` panics
        /// (as a SIGKILL stops it) before or after the item is consumed.
        fn take(&self, lane: u32, slot: SlotId, die: Option<Die>) {
            let s = &self.stream;
            let mut buf = Vec::new();
            let r = catch_unwind(AssertUnwindSafe(|| {
                s.try_recv_in_place(
                    lane,
                    &mut buf,
                    || {
                        self.books.taking(lane, slot, s.read_position());
                        assert!(die != Some(Die::BeforeConsuming), "killed");
                        false
                    },
                    usize::MAX,
                    |_| {},
                    || {
                        assert!(die != Some(Die::AfterConsuming), "killed");
                        self.books.took(slot);
                    },
                )
            }));
            assert_eq!(r.is_err(), die.is_some());
        }
    }

    impl Drop for Lane {
        fn drop(&mut self) {
            // (`self.stream` drops after this with nothing to do in the
            // memory: its messages are single records, never partial.)
            // SAFETY: allocated in `new` with this layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
        }
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Die {
        BeforeConsuming,
        AfterConsuming,
    }

    #[test]
    fn takes_confirmations_moves_and_deaths_add_up() {
        let l = Lane::new();
        let b = l.books;
        for i in 0..6u8 {
            l.stream.try_send(9, &[i]).unwrap();
        }
        assert_eq!(b.unfinished(&l.stream), 6);
        let (one, two) = (b.claim(1).unwrap(), b.claim(2).unwrap());
        assert_eq!(b.claim(1), Some(one), "a process keeps its slot");
        l.take(1, one, None);
        assert_eq!(b.unfinished(&l.stream), 6, "taken is not done");
        assert!(b.confirm(one));
        assert!(!b.confirm(one), "it owes nothing more");
        assert_eq!(b.unfinished(&l.stream), 5);
        // The hub moves one into its queue: counted there first.
        l.stream.try_recv(50, &mut Vec::new()).unwrap();
        b.set_hub(1);
        b.moved_one();
        assert_eq!(b.unfinished(&l.stream), 5);
        // Two dies in a take after consuming the item: lost with it.
        l.take(2, two, Some(Die::AfterConsuming));
        let left = b.retire(2, &l.stream, |_| 0).unwrap();
        assert_eq!(left.debt, 1);
        assert_eq!(left.pid, std::process::id());
        l.stream.clear_leases(2);
        assert_eq!(b.unfinished(&l.stream), 4);
        // Three dies before consuming: the item stays for others.
        let three = b.claim(3).unwrap();
        l.take(3, three, Some(Die::BeforeConsuming));
        assert_eq!(b.retire(3, &l.stream, |_| 0).unwrap().debt, 0);
        l.stream.clear_leases(3);
        assert_eq!(b.unfinished(&l.stream), 4);
        // Four takes two, confirms one and dies; one confirmation made
        // ahead covers the other.
        let four = b.claim(4).unwrap();
        l.take(4, four, None);
        l.take(4, four, None);
        assert!(b.confirm(four));
        let left = b.retire(4, &l.stream, |debt| debt.min(1)).unwrap();
        assert_eq!(left.debt, 0, "covered");
        assert_eq!(b.retire(4, &l.stream, |_| 0), None, "retired once");
        // The confirmation made ahead was counted when it was made.
        b.hub_confirmed(1);
        assert_eq!(b.unfinished(&l.stream), 2, "the hub's item, the ring's");
        b.set_hub(0);
        assert_eq!(b.unfinished(&l.stream), 1);
        assert_eq!(l.stream.messages(5, Instant::now()), Some(1), "the ring's");
    }

    #[test]
    fn slots_run_out_and_free_up() {
        let l = Lane::new();
        let b = l.books;
        for lane in 1..=SLOTS as u32 {
            assert!(b.claim(lane).is_some());
        }
        assert_eq!(b.claim(1000), None);
        assert!(b.retire(7, &l.stream, |_| 0).is_some());
        assert!(b.claim(1000).is_some());
    }
}
