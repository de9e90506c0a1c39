//! Where the ring's words live: the header, one cell per owner, and the
//! slots, either in caller-provided shared memory or (under `cfg(loom)`)
//! in loom's modelled atomics. All of this module's `unsafe` is the
//! pointer arithmetic from a validated geometry to a reference.
//!
//! Shared memory layout (every offset a multiple of 64):
//!
//! ```text
//! Header (6 × 64 B)  magic, version, geometry, closed, rescued, done
//!                    | head | tail | not_empty | not_full | joined
//! owners × 64 B      per owner: its commit word (count << 32 | position)
//! slots × stride     per slot: state u64, len u32, tag u32, payload;
//!                    stride = round_up(16 + slot_size, 64)
//! ```

#[cfg(all(test, loom))]
pub(super) use loom::sync::atomic::{AtomicU32, AtomicU64};
#[cfg(not(all(test, loom)))]
pub(super) use std::sync::atomic::{AtomicU32, AtomicU64};

use super::Geometry;
#[cfg(not(all(test, loom)))]
use super::RingError;

/// "procring" in ASCII.
pub(super) const MAGIC: u64 = 0x676e_6972_636f_7270;
/// Bumped on any change to the layout or the state word's meaning.
pub(super) const VERSION: u32 = 1;
const LINE: usize = 64;
const SLOT_META: usize = 16;

/// One cache line to itself, so unrelated hot words do not share a line.
#[repr(C, align(64))]
#[derive(Debug)]
pub(super) struct Padded<T>(pub(super) T);

/// Fields written once by `init` and read by `attach`.
#[repr(C)]
#[derive(Debug)]
pub(super) struct Meta {
    pub(super) magic: AtomicU64,
    pub(super) version: AtomicU32,
    pub(super) slots: AtomicU32,
    pub(super) slot_size: AtomicU32,
    pub(super) owners: AtomicU32,
    /// Non-zero once `close` was called.
    pub(super) closed: AtomicU32,
    /// Non-zero when a slot may be RESCUED: getters then scan for it. Set
    /// by every recovery; cleared by a getter whose scan found none (then
    /// it scans once more, so a rescue racing the clear is not missed).
    pub(super) rescue_hint: AtomicU32,
    /// `task_done` calls so far (wrapping; see `Ring::unfinished`).
    pub(super) done: AtomicU32,
}

#[repr(C)]
#[derive(Debug)]
pub(super) struct Header {
    pub(super) meta: Padded<Meta>,
    /// Hint: the next position a producer tries (everyone helps advance).
    pub(super) head: Padded<AtomicU64>,
    /// Hint: the next position a consumer tries.
    pub(super) tail: Padded<AtomicU64>,
    /// Eventcount words: bit 0 "a sleeper is armed", the rest a counter.
    pub(super) not_empty: Padded<AtomicU32>,
    pub(super) not_full: Padded<AtomicU32>,
    pub(super) joined: Padded<AtomicU32>,
}

/// The fixed part of a slot; the payload follows it.
#[repr(C)]
#[derive(Debug)]
pub(super) struct SlotMeta {
    /// lap << 32 | phase << 16 | owner (see `state` in `ring.rs`).
    pub(super) state: AtomicU64,
    /// Length of the item, written by its producer while it owns the slot.
    pub(super) len: AtomicU32,
    pub(super) tag: AtomicU32,
}

/// Bytes between two slots for `slot_size`, or `None` on overflow.
pub(super) fn stride(slot_size: u32) -> Option<usize> {
    let raw = SLOT_META.checked_add(usize::try_from(slot_size).ok()?)?;
    raw.checked_next_multiple_of(LINE)
}

/// Total bytes the ring needs for `g`, or `None` on overflow.
pub(super) fn bytes_needed(g: Geometry) -> Option<usize> {
    let owners = usize::try_from(g.owners).ok()?.checked_mul(LINE)?;
    let slots = usize::try_from(g.slots)
        .ok()?
        .checked_mul(stride(g.slot_size)?)?;
    size_of::<Header>().checked_add(owners)?.checked_add(slots)
}

/// The ring's memory: a validated geometry over caller-provided bytes.
#[cfg(not(all(test, loom)))]
#[derive(Debug)]
pub(super) struct Memory {
    base: std::ptr::NonNull<u8>,
    slots: usize,
    owners: usize,
    stride: usize,
}

#[cfg(not(all(test, loom)))]
impl Memory {
    /// # Safety
    /// `base` points at `bytes_needed(g)` bytes, aligned to 64, readable
    /// and writable through the life of the returned value, only ever
    /// accessed through atomics or while owning a slot (the contract of
    /// `Ring::init`/`Ring::attach`), and `g` passed `Geometry::check`.
    pub(super) unsafe fn new(base: std::ptr::NonNull<u8>, g: Geometry) -> Result<Self, RingError> {
        let stride = stride(g.slot_size).ok_or(RingError::Geometry("slot size overflows"))?;
        Ok(Self {
            base,
            slots: g.slots as usize,
            owners: g.owners as usize,
            stride,
        })
    }

    pub(super) fn header(&self) -> &Header {
        // SAFETY: `base` is 64-aligned and the first `size_of::<Header>()`
        // bytes are the header (constructor contract); `Header` is atomics
        // and padding only, valid for any bit pattern.
        unsafe { self.base.cast::<Header>().as_ref() }
    }

    /// Owner `i`'s commit word; `i < owners` (callers check).
    pub(super) fn owner(&self, i: usize) -> &AtomicU64 {
        assert!(i < self.owners, "owner index checked by the caller");
        // SAFETY: `i < owners`, so the cell lies inside `bytes_needed`;
        // the offset is a multiple of 64, so aligned; any bits are a valid
        // AtomicU64.
        unsafe {
            &self
                .base
                .add(size_of::<Header>() + i * LINE)
                .cast::<Padded<AtomicU64>>()
                .as_ref()
                .0
        }
    }

    fn slot_base(&self, i: usize) -> *mut u8 {
        assert!(
            i < self.slots,
            "slot index is a position modulo the slot count"
        );
        // SAFETY: `i < slots`, so the slot lies inside `bytes_needed` (the
        // same arithmetic, checked for overflow at construction).
        unsafe {
            self.base
                .add(size_of::<Header>() + self.owners * LINE + i * self.stride)
                .as_ptr()
        }
    }

    /// Slot `i`'s fixed part; `i < slots`.
    pub(super) fn slot(&self, i: usize) -> &SlotMeta {
        // SAFETY: `slot_base` is in bounds and 64-aligned; `SlotMeta` is
        // atomics only, valid for any bit pattern.
        unsafe { &*self.slot_base(i).cast::<SlotMeta>() }
    }

    /// Slot `i`'s payload, `slot_size` bytes; `i < slots`. Only the
    /// owner of the slot's claim reads or writes through it.
    pub(super) fn payload(&self, i: usize) -> *mut u8 {
        // SAFETY: the payload follows the 16-byte meta inside the stride.
        unsafe { self.slot_base(i).add(SLOT_META) }
    }
}

/// Under loom: the same words as loom atomics on the heap; payloads are
/// not modelled (the protocol never looks at them).
#[cfg(all(test, loom))]
#[derive(Debug)]
pub(super) struct Memory {
    header: Box<Header>,
    owners: Box<[AtomicU64]>,
    slots: Box<[SlotMeta]>,
}

#[cfg(all(test, loom))]
impl Memory {
    pub(super) fn new_loom(g: Geometry) -> Self {
        let meta = Meta {
            magic: AtomicU64::new(MAGIC),
            version: AtomicU32::new(VERSION),
            slots: AtomicU32::new(g.slots),
            slot_size: AtomicU32::new(g.slot_size),
            owners: AtomicU32::new(g.owners),
            closed: AtomicU32::new(0),
            rescue_hint: AtomicU32::new(0),
            done: AtomicU32::new(0),
        };
        let header = Box::new(Header {
            meta: Padded(meta),
            head: Padded(AtomicU64::new(0)),
            tail: Padded(AtomicU64::new(0)),
            not_empty: Padded(AtomicU32::new(0)),
            not_full: Padded(AtomicU32::new(0)),
            joined: Padded(AtomicU32::new(0)),
        });
        let slots = (0..g.slots)
            .map(|_| SlotMeta {
                state: AtomicU64::new(0),
                len: AtomicU32::new(0),
                tag: AtomicU32::new(0),
            })
            .collect();
        let owners = (0..g.owners).map(|_| AtomicU64::new(0)).collect();
        Self {
            header,
            owners,
            slots,
        }
    }

    pub(super) fn header(&self) -> &Header {
        &self.header
    }

    pub(super) fn owner(&self, i: usize) -> &AtomicU64 {
        &self.owners[i]
    }

    pub(super) fn slot(&self, i: usize) -> &SlotMeta {
        &self.slots[i]
    }
}
