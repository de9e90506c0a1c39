//! A bounded MPMC ring of fixed-size slots in shared memory, safe against
//! the death of any process using it.
//!
//! [`Ring`] lives entirely in memory the caller provides (a shared mapping
//! several processes see); every process builds its own `Ring` value over
//! the same bytes: one [`Ring::init`] formats them, the others
//! [`Ring::attach`]. A [`put`](Ring::put) returns once the item is in a
//! slot (it survives the producer's death; no feeder thread); a
//! [`get`](Ring::get) claims a slot with an atomic operation in the shared
//! memory before the item reaches the caller, so each item is taken once,
//! even when getters die.
//!
//! # The protocol
//!
//! Each slot has one 64-bit state word: `lap << 32 | phase << 16 | owner`.
//! A position `p` (a 64-bit counter) lives in slot `p % slots` during lap
//! `p / slots`. Phases:
//!
//! ```text
//!   FREE(lap) --put claims (CAS)--> WRITING(lap, me) --copy, commit--> READY(lap)
//!   READY(lap) --get claims (CAS)--> READING(lap, me) --copy out--> FREE(lap+1)   (the take)
//!   WRITING(lap, dead) --recover--> TOMB(lap) --a getter skips it--> FREE(lap+1)
//!   READING(lap, dead) --recover--> RESCUED(lap) --a getter claims--> READING(lap, me)
//! ```
//!
//! The `head` and `tail` counters are only hints: whoever sees that the
//! slot at the hint's position was claimed helps advance it. A producer
//! that finds its slot still holding the previous lap reports `Full`; a
//! getter that finds its slot not yet `READY` reports `Empty` (FIFO: it
//! does not skip a put in progress).
//!
//! # Owners and crash recovery
//!
//! Every operation names its [`Owner`]: a small id handed out by whoever
//! manages the ring (the hub), never a pid. One owner id is used by one
//! thread at a time. Once the process holding an id is certainly gone
//! (EOF on its connection and reaped), call [`Ring::recover`] with its id;
//! only after that may the id be handed out again. Recovery never blocks:
//!
//! - an item the dead owner was writing becomes a tombstone that getters
//!   skip; its `put` never returned, so nothing was promised;
//! - an item it was reading goes back to the queue **at the front**: it
//!   stays in its slot, marked `RESCUED`, and getters take rescued items
//!   before anything else. Nothing is re-put, so recovery needs no free
//!   slot and cannot block. Until a getter takes it again, producers that
//!   wrap around to that slot wait (as they would behind a slow getter).
//!
//! A getter that died after its take (the `READING → FREE` swap) had the
//! item handed to it; recovery does not bring it back.
//!
//! # JoinableQueue accounting
//!
//! [`Ring::unfinished`] counts items whose put completed minus
//! [`Ring::task_done`] calls, exactly under recovery: each owner counts
//! its own completed puts in its cell of the shared header (one store that
//! also records the position), and recovery of a dead producer removes the
//! count of a put that committed but never became `READY` (a tombstone is
//! never counted). A rescued item was counted once, by its put, and stays
//! counted until one `task_done` for it. An item taken by a getter that
//! died before `task_done` stays unfinished (as in Python); the manager,
//! which knows, may call `task_done` for it.
//!
//! # End of queue
//!
//! After [`Ring::close`], puts fail with [`RingError::Closed`], and a get
//! reports `Closed` only once no slot is `READY`, `WRITING`, `READING` or
//! `RESCUED`: that check scans the ring, on the end-of-queue path only. A
//! recovered item never leaves its slot (it goes from `READING` to
//! `RESCUED` in one exchange), so no "recovery pending" count is needed to
//! keep getters from declaring the end while a recovery runs. (A count of
//! rescued slots was tried: a getter killed between claiming a rescued
//! slot and decrementing it left the count stuck above zero, and the ring
//! never drained. Getters now find rescued slots through a hint that every
//! recovery sets and that a getter clears only after a scan found none.)
//!
//! # Sleeping
//!
//! A blocking put or get spins briefly, then sleeps on an eventcount in
//! the header (`not_full`, `not_empty`; `joined` for [`Ring::join`]): a
//! shared futex on Linux, `_umtx_op` on FreeBSD, and elsewhere a
//! sleep-polling fallback (20 µs growing to 1 ms). Only the waker that
//! clears the "sleeper armed" bit makes a syscall, so wakes stay rare.
//!
//! # Untrusted memory and `unsafe`
//!
//! The memory is shared with other processes, so everything read from it
//! is validated before use: the header on `attach` (magic, version, a
//! geometry that fits the given length), phases (an unknown phase is
//! [`RingError::Corrupt`]), item lengths (longer than a slot: `Corrupt`,
//! and the slot is freed). Indices are always computed here, modulo the
//! geometry cached at attach time, never read from the memory. This module
//! follows the `unsafe` rules of `sys/`: every `unsafe` block has a
//! `SAFETY` comment; the memory contract is stated once, on
//! [`Ring::init`]. A process that writes garbage into the ring can make
//! items wrong or operations fail, but not make this process read or write
//! outside the memory.

// The loom model compiles only the protocol; the memory and sleeping
// code it leaves out would warn as unused.
#![cfg_attr(all(test, loom), allow(dead_code))]

mod error;
mod layout;
#[cfg(all(test, loom))]
mod loom_tests;
mod recover;
mod state;
#[cfg(all(test, not(loom)))]
mod tests;
pub(super) mod wake;

use std::cmp::Ordering as Cmp;
#[cfg(not(all(test, loom)))]
use std::ptr::NonNull;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
#[cfg(not(all(test, loom)))]
use std::time::Instant;

pub use error::RingError;
use layout::Memory;
use state::{FREE, READING, READY, RESCUED, TOMB, WRITING, decode, encode, lap_cmp};

/// Attempts of the operation (with growing pauses) before a blocking call
/// sleeps.
#[cfg(not(all(test, loom)))]
const SPINS: u32 = 8;

/// The shape of a ring: fixed when it is formatted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Number of slots (the capacity), at least 1.
    pub slots: u32,
    /// Largest item, in bytes, at least 1.
    pub slot_size: u32,
    /// Number of owner ids (`0..owners`), 1 to 65536.
    pub owners: u32,
}

impl Geometry {
    fn check(self) -> Result<(), RingError> {
        if self.slots == 0 {
            return Err(RingError::Geometry("no slots"));
        }
        if self.slot_size == 0 {
            return Err(RingError::Geometry("slot size 0"));
        }
        if self.owners == 0 || self.owners > 1 << 16 {
            return Err(RingError::Geometry("owners must be 1 to 65536"));
        }
        layout::bytes_needed(self)
            .map(drop)
            .ok_or(RingError::Geometry("size overflows"))
    }
}

/// The id of one user of the ring (a process, or one thread of it).
///
/// Handed out by whoever manages the ring; an id is handed out again only
/// after [`Ring::recover`] ran for its previous holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Owner(pub u16);

/// What [`Ring::recover`] did with a dead owner's slots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Puts in progress, now tombstones (their `put` never returned).
    pub tombstoned: u32,
    /// Gets in progress whose items went back to the front of the queue.
    pub requeued: u32,
}

/// Points inside `put` and `get` where a test's hook runs (to kill the
/// process there). Not a stable API.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultPoint {
    /// A put claimed its slot (`WRITING`), nothing copied yet.
    PutClaimed,
    /// A put copied the first half of the item.
    PutHalfCopied,
    /// A put counted itself (the commit), its slot not yet `READY`.
    PutCommitted,
    /// A get claimed its slot (`READING`).
    GetClaimed,
    /// A get copied the first half of the item.
    GetHalfCopied,
    /// A get copied the whole item (passed to the hook), before the take.
    GetCopied,
}

/// A bounded MPMC ring of fixed-size slots in shared memory.
///
/// See the [module docs](self) for the protocol, recovery and accounting.
///
/// # Examples
///
/// ```
/// use std::ptr::NonNull;
/// use procpool_ipc::shm::ring::{Geometry, Owner, Ring, RingError};
///
/// let g = Geometry { slots: 4, slot_size: 64, owners: 2 };
/// // Any 64-byte-aligned memory works; a real user maps it shared.
/// let layout = std::alloc::Layout::from_size_align(Ring::bytes_needed(g)?, 64).unwrap();
/// let mem = NonNull::new(unsafe { std::alloc::alloc(layout) }).unwrap();
/// // SAFETY: `mem` is fresh, aligned, `layout.size()` bytes, freed only
/// // after the ring is dropped.
/// let ring = unsafe { Ring::init(mem, layout.size(), g)? };
///
/// ring.try_put(Owner(0), 7, b"hello")?;
/// let mut buf = Vec::new();
/// assert_eq!(ring.try_get(Owner(1), &mut buf)?, 7); // the tag
/// assert_eq!(buf, b"hello");
/// assert_eq!(ring.try_get(Owner(1), &mut buf), Err(RingError::Empty));
///
/// drop(ring);
/// unsafe { std::alloc::dealloc(mem.as_ptr(), layout) };
/// # Ok::<(), RingError>(())
/// ```
#[derive(Debug)]
pub struct Ring {
    mem: Memory,
    geometry: Geometry,
    fault: Option<fn(FaultPoint, &[u8])>,
}

// SAFETY: the ring's memory is only accessed through atomics, or by the
// single owner of a slot's claim; the `init`/`attach` contract makes it
// valid for as long as any `Ring` over it exists, from any thread.
#[cfg(not(all(test, loom)))]
unsafe impl Send for Ring {}
// SAFETY: as for `Send`: every method takes `&self` and synchronises
// through the shared atomics.
#[cfg(not(all(test, loom)))]
unsafe impl Sync for Ring {}

#[cfg(not(all(test, loom)))]
impl Ring {
    /// Bytes of memory a ring of geometry `g` needs.
    ///
    /// # Errors
    /// [`RingError::Geometry`] when `g` is unusable.
    pub fn bytes_needed(g: Geometry) -> Result<usize, RingError> {
        g.check()?;
        layout::bytes_needed(g).ok_or(RingError::Geometry("size overflows"))
    }

    /// Formats `len` bytes at `ptr` as an empty ring of geometry `g`.
    ///
    /// # Errors
    /// [`RingError::Geometry`], [`RingError::TooSmall`] (`len` below
    /// [`Ring::bytes_needed`]), [`RingError::Misaligned`].
    ///
    /// # Safety
    /// The memory contract, for `init` and [`Ring::attach`]: `ptr` points at
    /// `len` bytes that stay mapped, readable and writable for as long as
    /// this `Ring` (and every `Ring` over the same bytes in this process)
    /// exists; those bytes are accessed only by `Ring`s (in any process),
    /// never through references or plain reads and writes of other code.
    /// For `init`, in addition, no `Ring` over them is in use anywhere
    /// while it formats them.
    pub unsafe fn init(ptr: NonNull<u8>, len: usize, g: Geometry) -> Result<Self, RingError> {
        let needed = Self::bytes_needed(g)?;
        if len < needed {
            return Err(RingError::TooSmall { len, needed });
        }
        if ptr.align_offset(64) != 0 {
            return Err(RingError::Misaligned);
        }
        // SAFETY: `needed <= len` bytes at `ptr` are writable and nobody
        // else uses them during `init` (contract); all-zero is a valid
        // state for every word (FREE, lap 0, empty counters).
        unsafe { ptr.as_ptr().write_bytes(0, needed) };
        // SAFETY: the memory is `needed` aligned bytes, per the contract,
        // and `g` passed `check`.
        let mem = unsafe { Memory::new(ptr, g)? };
        let meta = &mem.header().meta.0;
        meta.version.store(layout::VERSION, Relaxed);
        meta.slots.store(g.slots, Relaxed);
        meta.slot_size.store(g.slot_size, Relaxed);
        meta.owners.store(g.owners, Relaxed);
        meta.magic.store(layout::MAGIC, Release);
        Ok(Self {
            mem,
            geometry: g,
            fault: None,
        })
    }

    /// Uses a ring another `Ring` (in any process) formatted at `ptr`.
    ///
    /// The header is validated: magic, version, and a geometry that fits in
    /// `len` bytes. The geometry is read once, here.
    ///
    /// # Errors
    /// [`RingError::Corrupt`] when the header is not a valid ring's,
    /// [`RingError::Misaligned`].
    ///
    /// # Safety
    /// The memory contract of [`Ring::init`].
    pub unsafe fn attach(ptr: NonNull<u8>, len: usize) -> Result<Self, RingError> {
        if ptr.align_offset(64) != 0 {
            return Err(RingError::Misaligned);
        }
        if len < size_of::<layout::Header>() {
            return Err(RingError::Corrupt {
                what: "memory shorter than a header",
                value: len as u64,
            });
        }
        // SAFETY: at least a header's bytes, 64-aligned, valid for the
        // borrow (contract); the header is atomics only, valid for any bits.
        let header = unsafe { ptr.cast::<layout::Header>().as_ref() };
        let meta = &header.meta.0;
        let magic = meta.magic.load(Acquire);
        if magic != layout::MAGIC {
            return Err(RingError::Corrupt {
                what: "bad magic",
                value: magic,
            });
        }
        let version = meta.version.load(Relaxed);
        if version != layout::VERSION {
            return Err(RingError::Corrupt {
                what: "unknown version",
                value: version.into(),
            });
        }
        let g = Geometry {
            slots: meta.slots.load(Relaxed),
            slot_size: meta.slot_size.load(Relaxed),
            owners: meta.owners.load(Relaxed),
        };
        let needed = match Self::bytes_needed(g) {
            Ok(needed) => needed,
            Err(_) => {
                let value = u64::from(g.slots) << 32 | u64::from(g.slot_size);
                return Err(RingError::Corrupt {
                    what: "invalid geometry",
                    value,
                });
            }
        };
        if needed > len {
            return Err(RingError::Corrupt {
                what: "geometry larger than the memory",
                value: needed as u64,
            });
        }
        // SAFETY: `needed <= len` aligned bytes per the contract; `g`
        // passed `check`.
        let mem = unsafe { Memory::new(ptr, g)? };
        Ok(Self {
            mem,
            geometry: g,
            fault: None,
        })
    }

    /// Puts `item` with `tag`, waiting for a free slot until `deadline`
    /// (`None`: no limit). Returns once the item is in the ring.
    ///
    /// # Errors
    /// [`RingError::Full`] at the deadline, [`RingError::Closed`],
    /// [`RingError::TooLarge`], [`RingError::BadOwner`],
    /// [`RingError::Corrupt`].
    pub fn put(
        &self,
        owner: Owner,
        tag: u32,
        item: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(), RingError> {
        self.check_put(owner, item)?;
        let word = &self.mem.header().not_full.0;
        loop {
            for spin in 0..SPINS {
                match self.put_once(owner, tag, item) {
                    Err(RingError::Full) => pause(spin),
                    r => return r,
                }
            }
            let armed = wake::arm(word);
            match self.put_once(owner, tag, item) {
                Err(RingError::Full) => {}
                r => return r,
            }
            if !wake::sleep(word, armed, deadline) {
                return Err(RingError::Full);
            }
        }
    }

    /// Takes the oldest item into `buf` (cleared first, its capacity
    /// reused), waiting until `deadline` (`None`: no limit). Returns the
    /// item's tag.
    ///
    /// # Errors
    /// [`RingError::Empty`] at the deadline, [`RingError::Closed`] once the
    /// ring is closed and drained, [`RingError::BadOwner`],
    /// [`RingError::Corrupt`].
    pub fn get(
        &self,
        owner: Owner,
        buf: &mut Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<u32, RingError> {
        self.check_owner(owner)?;
        let word = &self.mem.header().not_empty.0;
        loop {
            for spin in 0..SPINS {
                match self.try_get(owner, buf) {
                    Err(RingError::Empty) => pause(spin),
                    r => return r,
                }
            }
            let armed = wake::arm(word);
            match self.try_get(owner, buf) {
                Err(RingError::Empty) => {}
                r => return r,
            }
            if !wake::sleep(word, armed, deadline) {
                return Err(RingError::Empty);
            }
        }
    }

    /// Waits until every item put has been marked done with
    /// [`Ring::task_done`], or `deadline`.
    ///
    /// # Errors
    /// [`RingError::Timeout`] at the deadline.
    pub fn join(&self, deadline: Option<Instant>) -> Result<(), RingError> {
        let word = &self.mem.header().joined.0;
        loop {
            if self.unfinished() == 0 {
                return Ok(());
            }
            let armed = wake::arm(word);
            if self.unfinished() == 0 {
                return Ok(());
            }
            if !wake::sleep(word, armed, deadline) {
                return Err(RingError::Timeout);
            }
        }
    }

    /// Makes the hook run at each [`FaultPoint`] of this `Ring`'s puts and
    /// gets. For crash tests only.
    #[doc(hidden)]
    pub fn set_fault_hook(&mut self, hook: fn(FaultPoint, &[u8])) {
        self.fault = Some(hook);
    }

    fn copy_in(&self, idx: usize, item: &[u8]) {
        let dst = self.mem.payload(idx);
        let half = item.len() / 2;
        // SAFETY: `dst` is this slot's payload, `slot_size >= item.len()`
        // bytes (checked by `check_put`), and this thread owns the slot's
        // claim (WRITING), so no `Ring` reads or writes it meanwhile.
        unsafe { std::ptr::copy_nonoverlapping(item.as_ptr(), dst, half) };
        self.fault(FaultPoint::PutHalfCopied, &item[..half]);
        // SAFETY: as above, for the rest of the item.
        unsafe {
            std::ptr::copy_nonoverlapping(item[half..].as_ptr(), dst.add(half), item.len() - half)
        };
    }

    fn copy_out(&self, idx: usize, len: usize, buf: &mut Vec<u8>) {
        let src = self.mem.payload(idx);
        buf.clear();
        buf.reserve(len);
        let half = len / 2;
        // SAFETY: `src` is this slot's payload and `len <= slot_size`
        // (checked by the caller); this thread owns the claim (READING), so
        // no `Ring` writes it meanwhile; `buf` has capacity for `len`.
        unsafe {
            std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), half);
            buf.set_len(half);
        }
        self.fault(FaultPoint::GetHalfCopied, buf);
        // SAFETY: as above, for the rest; `len - half` more bytes fit.
        unsafe {
            std::ptr::copy_nonoverlapping(src.add(half), buf.as_mut_ptr().add(half), len - half);
            buf.set_len(len);
        }
    }
}

#[cfg(all(test, loom))]
impl Ring {
    /// A ring over loom's modelled atomics (payloads are not modelled).
    pub(crate) fn new_loom(g: Geometry) -> Self {
        Self {
            mem: Memory::new_loom(g),
            geometry: g,
            fault: None,
        }
    }

    fn copy_in(&self, _idx: usize, _item: &[u8]) {}

    fn copy_out(&self, _idx: usize, _len: usize, buf: &mut Vec<u8>) {
        buf.clear();
    }
}

impl Ring {
    /// The ring's geometry.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Puts `item` with `tag` if a slot is free now.
    ///
    /// The tag travels beside the item (the integration uses it to mark an
    /// item that is a token for a large payload held elsewhere).
    ///
    /// # Errors
    /// [`RingError::Full`], [`RingError::Closed`], [`RingError::TooLarge`],
    /// [`RingError::BadOwner`], [`RingError::Corrupt`].
    pub fn try_put(&self, owner: Owner, tag: u32, item: &[u8]) -> Result<(), RingError> {
        self.check_put(owner, item)?;
        self.put_once(owner, tag, item)
    }

    /// Takes the oldest item into `buf` (cleared first, its capacity
    /// reused) if there is one now. Returns the item's tag.
    ///
    /// # Errors
    /// [`RingError::Empty`], [`RingError::Closed`] once closed and
    /// drained, [`RingError::BadOwner`], [`RingError::Corrupt`] (when the
    /// item's recorded length is impossible: that slot is freed).
    pub fn try_get(&self, owner: Owner, buf: &mut Vec<u8>) -> Result<u32, RingError> {
        self.check_owner(owner)?;
        match self.claim_get(owner) {
            Ok((idx, lap)) => self.take(owner, idx, lap, buf),
            Err(RingError::Empty) if self.closed() && self.drained()? => Err(RingError::Closed),
            Err(e) => Err(e),
        }
    }

    /// Refuses new puts; getters drain what is left, then see `Closed`.
    pub fn close(&self) {
        let h = self.mem.header();
        h.meta.0.closed.store(1, SeqCst);
        wake::notify(&h.not_empty.0);
        wake::notify(&h.not_full.0);
        wake::notify(&h.joined.0);
    }

    /// Whether [`Ring::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed()
    }

    /// About how many items are in the ring (claimed positions between the
    /// two hints, which may lag): exact only when nothing is in flight.
    pub fn len(&self) -> usize {
        let h = self.mem.header();
        let tail = h.tail.0.load(Acquire);
        let head = h.head.0.load(Acquire);
        let n = head
            .saturating_sub(tail)
            .min(u64::from(self.geometry.slots));
        usize::try_from(n).unwrap_or(usize::MAX)
    }

    /// Whether [`Ring::len`] is 0 (as approximate).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Items whose put completed and that were not yet marked done.
    ///
    /// Sums one word per owner, so it costs `owners` loads.
    pub fn unfinished(&self) -> u32 {
        // `done` first: every item done by then was committed before it,
        // so the sum read after includes it and the result is not below 0.
        let done = self.mem.header().meta.0.done.load(Acquire);
        self.committed().wrapping_sub(done)
    }

    /// Marks one item done (JoinableQueue's `task_done`).
    ///
    /// # Errors
    /// [`RingError::TooManyTaskDone`] when no item is unfinished.
    pub fn task_done(&self) -> Result<(), RingError> {
        let h = self.mem.header();
        loop {
            let done = h.meta.0.done.load(Acquire);
            let unfinished = self.committed().wrapping_sub(done);
            if unfinished == 0 {
                return Err(RingError::TooManyTaskDone);
            }
            if h.meta
                .0
                .done
                .compare_exchange(done, done.wrapping_add(1), SeqCst, Relaxed)
                .is_ok()
            {
                if unfinished == 1 {
                    wake::notify(&h.joined.0);
                }
                return Ok(());
            }
        }
    }

    fn closed(&self) -> bool {
        self.mem.header().meta.0.closed.load(SeqCst) != 0
    }

    fn fault(&self, point: FaultPoint, data: &[u8]) {
        if let Some(hook) = self.fault {
            hook(point, data);
        }
    }

    fn check_owner(&self, owner: Owner) -> Result<(), RingError> {
        if u32::from(owner.0) < self.geometry.owners {
            Ok(())
        } else {
            Err(RingError::BadOwner {
                owner: owner.0,
                owners: self.geometry.owners,
            })
        }
    }

    fn check_put(&self, owner: Owner, item: &[u8]) -> Result<(), RingError> {
        self.check_owner(owner)?;
        let max = self.geometry.slot_size as usize;
        if item.len() > max {
            return Err(RingError::TooLarge {
                len: item.len(),
                max,
            });
        }
        Ok(())
    }

    /// Slot index and lap of position `pos`.
    fn locate(&self, pos: u64) -> (usize, u32) {
        let n = u64::from(self.geometry.slots);
        ((pos % n) as usize, (pos / n) as u32)
    }

    /// Position (modulo 2^32) of slot `idx` during `lap`.
    fn position32(&self, lap: u32, idx: usize) -> u32 {
        (u64::from(lap)
            .wrapping_mul(u64::from(self.geometry.slots))
            .wrapping_add(idx as u64)) as u32
    }

    /// Sum of every owner's committed puts (wrapping).
    fn committed(&self) -> u32 {
        (0..self.geometry.owners as usize)
            .map(|i| (self.mem.owner(i).load(Acquire) >> 32) as u32)
            .fold(0, u32::wrapping_add)
    }

    fn put_once(&self, owner: Owner, tag: u32, item: &[u8]) -> Result<(), RingError> {
        if self.closed() {
            return Err(RingError::Closed);
        }
        let (pos, idx, lap) = self.claim_put(owner)?;
        let h = self.mem.header();
        let slot = self.mem.slot(idx);
        self.fault(FaultPoint::PutClaimed, &[]);
        // Closed between the first check and the claim: a getter may have
        // declared the end of the queue already, so give the slot up.
        if self.closed() {
            slot.state.store(encode(lap, TOMB, 0), SeqCst);
            wake::notify(&h.not_empty.0);
            return Err(RingError::Closed);
        }
        self.fill_and_commit(owner, pos, idx, tag, item);
        self.fault(FaultPoint::PutCommitted, &[]);
        slot.state.store(encode(lap, READY, 0), SeqCst);
        wake::notify(&h.not_empty.0);
        Ok(())
    }

    /// Writes the item into the claimed slot, then commits: one store
    /// counts the put and records its position, so recovery can tell
    /// whether this put was counted.
    fn fill_and_commit(&self, owner: Owner, pos: u64, idx: usize, tag: u32, item: &[u8]) {
        let slot = self.mem.slot(idx);
        slot.len.store(item.len() as u32, Relaxed);
        slot.tag.store(tag, Relaxed);
        self.copy_in(idx, item);
        let cell = self.mem.owner(usize::from(owner.0));
        let count = ((cell.load(Relaxed) >> 32) as u32).wrapping_add(1);
        cell.store(u64::from(count) << 32 | (pos as u32 as u64), Release);
    }

    /// Claims the slot at the head: `(position, index, lap)`.
    fn claim_put(&self, owner: Owner) -> Result<(u64, usize, u32), RingError> {
        let head = &self.mem.header().head.0;
        loop {
            let pos = head.load(Acquire);
            let (idx, lap) = self.locate(pos);
            let st = &self.mem.slot(idx).state;
            let word = st.load(Acquire);
            let s = decode(word)?;
            match lap_cmp(s.lap, lap) {
                Cmp::Equal if s.phase == FREE => {
                    let mine = encode(lap, WRITING, owner.0);
                    if st.compare_exchange(word, mine, SeqCst, Relaxed).is_ok() {
                        let _ = head.compare_exchange(pos, pos + 1, Release, Relaxed);
                        return Ok((pos, idx, lap));
                    }
                }
                // Someone claimed this position (or the hint is behind).
                Cmp::Equal | Cmp::Greater => {
                    let _ = head.compare_exchange(pos, pos + 1, Release, Relaxed);
                }
                // The slot still holds the previous lap's item.
                Cmp::Less => {
                    if head.load(Acquire) == pos {
                        return Err(RingError::Full);
                    }
                }
            }
        }
    }

    /// Claims the oldest item: a rescued one, else the one at the tail.
    fn claim_get(&self, owner: Owner) -> Result<(usize, u32), RingError> {
        let h = self.mem.header();
        let hint = &h.meta.0.rescue_hint;
        if hint.load(SeqCst) != 0 {
            if let Some(claim) = self.claim_rescued(owner)? {
                return Ok(claim);
            }
            // None left: clear the hint, then look once more, in case a
            // recovery rescued an item after the scan passed its slot (its
            // hint store then comes after our clear).
            hint.store(0, SeqCst);
            if let Some(claim) = self.claim_rescued(owner)? {
                hint.store(1, SeqCst);
                return Ok(claim);
            }
        }
        let tail = &h.tail.0;
        loop {
            let pos = tail.load(Acquire);
            let (idx, lap) = self.locate(pos);
            let st = &self.mem.slot(idx).state;
            let word = st.load(SeqCst);
            let s = decode(word)?;
            match (lap_cmp(s.lap, lap), s.phase) {
                (Cmp::Equal, READY) => {
                    let mine = encode(lap, READING, owner.0);
                    if st.compare_exchange(word, mine, SeqCst, Relaxed).is_ok() {
                        let _ = tail.compare_exchange(pos, pos + 1, Release, Relaxed);
                        return Ok((idx, lap));
                    }
                }
                (Cmp::Equal, TOMB) => {
                    let free = encode(lap.wrapping_add(1), FREE, 0);
                    if st.compare_exchange(word, free, SeqCst, Relaxed).is_ok() {
                        let _ = tail.compare_exchange(pos, pos + 1, Release, Relaxed);
                        wake::notify(&h.not_full.0);
                    }
                }
                // Not written yet (or still being written), or the slot
                // still holds the previous lap: nothing at this position.
                (Cmp::Equal, FREE | WRITING) | (Cmp::Less, _) => {
                    if tail.load(Acquire) == pos {
                        return Err(RingError::Empty);
                    }
                }
                // Taken by another getter, or the hint is behind.
                _ => {
                    let _ = tail.compare_exchange(pos, pos + 1, Release, Relaxed);
                }
            }
        }
    }

    /// Claims a rescued item, if one is left.
    fn claim_rescued(&self, owner: Owner) -> Result<Option<(usize, u32)>, RingError> {
        for idx in 0..self.geometry.slots as usize {
            let st = &self.mem.slot(idx).state;
            let word = st.load(SeqCst);
            let s = decode(word)?;
            if s.phase == RESCUED
                && st
                    .compare_exchange(word, encode(s.lap, READING, owner.0), SeqCst, Relaxed)
                    .is_ok()
            {
                return Ok(Some((idx, s.lap)));
            }
        }
        Ok(None)
    }

    /// Copies the claimed item out and frees its slot (the take).
    fn take(
        &self,
        owner: Owner,
        idx: usize,
        lap: u32,
        buf: &mut Vec<u8>,
    ) -> Result<u32, RingError> {
        self.fault(FaultPoint::GetClaimed, &[]);
        let slot = self.mem.slot(idx);
        let len = slot.len.load(Relaxed);
        let tag = slot.tag.load(Relaxed);
        let bad_len = len > self.geometry.slot_size;
        if !bad_len {
            self.copy_out(idx, len as usize, buf);
            self.fault(FaultPoint::GetCopied, buf);
        }
        let claimed = encode(lap, READING, owner.0);
        let free = encode(lap.wrapping_add(1), FREE, 0);
        if let Err(word) = self
            .mem
            .slot(idx)
            .state
            .compare_exchange(claimed, free, SeqCst, Acquire)
        {
            return Err(RingError::Corrupt {
                what: "a claimed slot changed under its owner",
                value: word,
            });
        }
        let h = self.mem.header();
        wake::notify(&h.not_full.0);
        if self.closed() {
            // Getters waiting for the end of the queue wait for this take.
            wake::notify(&h.not_empty.0);
        }
        if bad_len {
            return Err(RingError::Corrupt {
                what: "item longer than a slot",
                value: len.into(),
            });
        }
        Ok(tag)
    }

    /// After `close`: no item is left or in flight anywhere.
    fn drained(&self) -> Result<bool, RingError> {
        for idx in 0..self.geometry.slots as usize {
            let s = decode(self.mem.slot(idx).state.load(SeqCst))?;
            if matches!(s.phase, READY | WRITING | READING | RESCUED) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Pauses between attempts of a blocking operation, longer each time.
pub(super) fn pause(spin: u32) {
    for _ in 0..1u32 << spin.min(6) {
        std::hint::spin_loop();
    }
}
