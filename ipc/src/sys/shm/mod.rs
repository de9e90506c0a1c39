//! Anonymous shared memory: the platform part of
//! [`crate::shm::segment::Segment`].
//!
//! Each backend provides `Mapping` (`create(len)`, `open(handle, len)`,
//! `len`, `ptr`, `handle`, `clone_handle`; unmapped and closed on drop),
//! `OpenError` and `ShmHandle` (what travels between processes: an
//! `OwnedFd` on Unix, an `OwnedHandle` on Windows). The copies in and out
//! are here, once, with their bounds checks: all `unsafe` stays in `sys/`.
//!
//! # Aliasing
//!
//! Other processes map the same memory and may write it at any time. No
//! Rust reference (`&[u8]`, `&mut [u8]`) into a mapping is ever created
//! here: the only accesses are [`copy_in`] and [`copy_out`], byte copies
//! through raw pointers. A copy racing with another process's write may
//! see torn or changing bytes; since every bit pattern is a valid `u8`
//! and the bytes copied out are treated as untrusted input (every length
//! read from them is checked), that is wrong data, never undefined
//! behaviour of this process. The protocols above hand a segment over (a
//! message on the connection, a system call on each side) before the
//! receiver reads it, which orders the writer's copy before the reader's.

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as imp;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as imp;

pub use imp::ShmHandle;
pub(crate) use imp::{Mapping, OpenError};

/// Copies `src` into the mapping at `offset`; `false` (and nothing
/// copied) if it does not fit inside the segment's length.
pub(crate) fn copy_in(map: &Mapping, offset: usize, src: &[u8]) -> bool {
    let fits = offset
        .checked_add(src.len())
        .is_some_and(|end| end <= map.len());
    if !fits {
        return false;
    }
    if src.is_empty() {
        return true;
    }
    // SAFETY: `offset + src.len() <= map.len()`, and the mapping holds at
    // least `map.len()` bytes (checked when it was created or opened, and
    // it cannot shrink: see the backends), so the destination is valid
    // for writes. `src` is ordinary memory of this process and cannot
    // overlap the mapping through a Rust reference (none is ever made into
    // it). Concurrent writers elsewhere: see "Aliasing" above.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), map.ptr().add(offset), src.len()) };
    true
}

/// Copies `dst.len()` bytes out of the mapping from `offset`; `false`
/// (and `dst` untouched) if they are not all inside the segment's length.
pub(crate) fn copy_out(map: &Mapping, offset: usize, dst: &mut [u8]) -> bool {
    let fits = offset
        .checked_add(dst.len())
        .is_some_and(|end| end <= map.len());
    if !fits {
        return false;
    }
    if dst.is_empty() {
        return true;
    }
    imp::prefault(dst.as_mut_ptr(), dst.len());
    // SAFETY: the source range is inside the mapping (as in `copy_in`),
    // and `dst` is an exclusive borrow of ordinary memory, not of the
    // mapping. Bytes another process changes meanwhile are still bytes:
    // see "Aliasing" above.
    unsafe { std::ptr::copy_nonoverlapping(map.ptr().add(offset), dst.as_mut_ptr(), dst.len()) };
    true
}

/// Appends `len` bytes of the mapping from `offset` to `out`; `false`
/// (and `out` untouched) if they are not all inside the segment.
pub(crate) fn extend_from(map: &Mapping, offset: usize, len: usize, out: &mut Vec<u8>) -> bool {
    let fits = offset.checked_add(len).is_some_and(|end| end <= map.len());
    if !fits {
        return false;
    }
    out.reserve(len);
    imp::prefault(out.spare_capacity_mut().as_mut_ptr().cast(), len);
    let start = out.len();
    // SAFETY: the source range is inside the mapping (checked above); the
    // destination is the `len` bytes of spare capacity `reserve` just
    // guaranteed, which nothing else references.
    unsafe {
        std::ptr::copy_nonoverlapping(map.ptr().add(offset), out.as_mut_ptr().add(start), len);
        // SAFETY: those `len` bytes were just initialised by the copy.
        out.set_len(start + len);
    }
    true
}

/// The 4-byte word at `offset` in `map` as an atomic, for lock words in
/// shared memory; `None` if it lies outside the mapping or is not 4-byte
/// aligned.
pub(crate) fn atomic_u32_at(map: &Mapping, offset: usize) -> Option<&std::sync::atomic::AtomicU32> {
    let fits = offset.checked_add(4).is_some_and(|end| end <= map.len());
    if !fits {
        return None;
    }
    // SAFETY: `offset + 4 <= len`, so the pointer stays inside the mapping.
    let ptr = unsafe { map.ptr().add(offset) };
    if !ptr.cast::<std::sync::atomic::AtomicU32>().is_aligned() {
        return None;
    }
    // SAFETY: the 4 bytes are inside the mapping, which lives as long as
    // `map` borrows it, and aligned. `AtomicU32` has the layout of `u32`
    // and every bit pattern is valid; other processes touch the word only
    // through atomics too (the word is reserved for that), so there is no
    // non-atomic access to race with.
    Some(unsafe { &*ptr.cast::<std::sync::atomic::AtomicU32>() })
}
