//! Anonymous shared memory segments.
//!
//! A [`Segment`] is `len` bytes of memory that no name refers to: Linux
//! and FreeBSD `memfd_create` (sealed against shrinking), macOS an
//! `shm_open` name unlinked at once, Windows an unnamed pagefile-backed
//! file mapping. It lives as long as some process holds its descriptor
//! (handle) or a mapping of it, so a crash leaves nothing behind.
//!
//! To share one, send [`Segment::try_clone_handle`] to the other process
//! (Unix: as `SCM_RIGHTS` ancillary data; Windows: `DuplicateHandle` into
//! it) along with its length, and rebuild it there with
//! [`Segment::from_handle`], which checks the object really holds that
//! many bytes (and, on Linux/FreeBSD, that it is sealed so it cannot
//! shrink later).
//!
//! # Aliasing
//!
//! Other processes may write a shared segment at any time, so this type
//! never hands out `&[u8]` or `&mut [u8]` into it. Use the copies
//! ([`write_at`](Segment::write_at), [`read_at`](Segment::read_at),
//! [`read_to_vec`](Segment::read_to_vec)), which check bounds and are
//! sound even if another process writes concurrently (the bytes read may
//! then be garbage, never undefined behaviour). Code that needs more (the
//! atomics of a shared ring) takes [`as_ptr`](Segment::as_ptr) and states
//! its own invariants in its own `unsafe` blocks. Treat every byte read
//! from a segment as untrusted input: check lengths before using them.
//!
//! # Example
//!
//! ```
//! use procpool_ipc::shm::Segment;
//!
//! let seg = Segment::new(4096)?;
//! seg.write_at(10, b"hello")?;
//! let mut buf = [0u8; 5];
//! seg.read_at(10, &mut buf)?;
//! assert_eq!(&buf, b"hello");
//!
//! // The same memory, reached through a second handle (as another process would).
//! let again = Segment::from_handle(seg.try_clone_handle()?, seg.len())?;
//! assert_eq!(again.read_to_vec(10, 5)?, b"hello");
//! # Ok::<(), procpool_ipc::shm::SegmentError>(())
//! ```

use std::io;

use crate::sys::shm::{self as imp, Mapping, OpenError};

/// The descriptor (Unix, `OwnedFd`) or section handle (Windows,
/// `OwnedHandle`) a segment travels as between processes.
pub use crate::sys::shm::ShmHandle;

/// Why a segment could not be created, opened, read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentError {
    /// A received descriptor or handle refers to fewer bytes than the
    /// segment was announced to hold.
    #[error("shared memory object holds {actual} bytes, fewer than the {needed} announced")]
    TooSmall {
        /// The announced length.
        needed: u64,
        /// What the object holds (Windows: rounded up to pages).
        actual: u64,
    },
    /// A received descriptor could still be shrunk by another process
    /// (Linux/FreeBSD: it is not sealed with `F_SEAL_SHRINK`), which would
    /// make a later access fault; it is refused.
    #[error("shared memory object is not sealed against shrinking")]
    NotSealed,
    /// A read or write reaches outside the segment.
    #[error("range of {len} bytes at offset {offset} is outside a segment of {segment_len} bytes")]
    OutOfBounds {
        /// Where the range starts.
        offset: u64,
        /// Its length.
        len: u64,
        /// The segment's length.
        segment_len: u64,
    },
    /// The operating system refused to create, map or duplicate it.
    #[error("shared memory operation failed")]
    Io(#[from] io::Error),
}

/// An anonymous shared memory segment, mapped read/write in this process.
///
/// Unmapped, and its descriptor or handle closed, on drop; the memory
/// itself goes once no process holds it. See the [module docs](self) for
/// the aliasing rules.
#[derive(Debug)]
pub struct Segment {
    map: Mapping,
}

impl Segment {
    /// A new segment of `len` bytes, all zero.
    ///
    /// # Errors
    ///
    /// [`SegmentError::Io`] if the system refuses (out of memory, too many
    /// open descriptors, a `len` beyond what it maps).
    pub fn new(len: usize) -> Result<Self, SegmentError> {
        Ok(Self {
            map: Mapping::create(len)?,
        })
    }

    /// Maps a segment received from another process, which announced it
    /// holds `len` bytes.
    ///
    /// # Errors
    ///
    /// [`SegmentError::TooSmall`] if the object holds fewer bytes,
    /// [`SegmentError::NotSealed`] if (Linux/FreeBSD) it could still
    /// shrink, [`SegmentError::Io`] if it is not shared memory at all or
    /// cannot be mapped.
    pub fn from_handle(handle: ShmHandle, len: usize) -> Result<Self, SegmentError> {
        match Mapping::open(handle, len) {
            Ok(map) => Ok(Self { map }),
            Err(OpenError::TooSmall { actual }) => Err(SegmentError::TooSmall {
                needed: len as u64,
                actual,
            }),
            Err(OpenError::NotSealed) => Err(SegmentError::NotSealed),
            Err(OpenError::Io(e)) => Err(SegmentError::Io(e)),
        }
    }

    /// The segment's length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the segment holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The address of the first byte of the mapping in this process.
    ///
    /// Valid for `len()` bytes as long as `self` lives. Other processes
    /// may write through their own mappings at any time: never make a
    /// Rust reference to bytes others may mutate; use atomics or raw
    /// copies, under your own `unsafe` with its own SAFETY argument.
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.ptr()
    }

    /// A new descriptor (Unix) or handle (Windows) of the same memory, to
    /// send to another process.
    ///
    /// # Errors
    ///
    /// [`SegmentError::Io`] if the system cannot duplicate it.
    pub fn try_clone_handle(&self) -> Result<ShmHandle, SegmentError> {
        Ok(self.map.clone_handle()?)
    }

    /// Copies `src` into the segment at `offset`.
    ///
    /// # Errors
    ///
    /// [`SegmentError::OutOfBounds`] (and nothing written) if it does not
    /// fit.
    pub fn write_at(&self, offset: usize, src: &[u8]) -> Result<(), SegmentError> {
        if imp::copy_in(&self.map, offset, src) {
            Ok(())
        } else {
            Err(self.out_of_bounds(offset, src.len()))
        }
    }

    /// Fills `dst` from the segment at `offset`.
    ///
    /// # Errors
    ///
    /// [`SegmentError::OutOfBounds`] (and `dst` untouched) if the range
    /// is not all inside the segment.
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<(), SegmentError> {
        if imp::copy_out(&self.map, offset, dst) {
            Ok(())
        } else {
            Err(self.out_of_bounds(offset, dst.len()))
        }
    }

    /// Appends `len` bytes of the segment from `offset` to `out` (no
    /// zeroing of `out` first).
    ///
    /// # Errors
    ///
    /// [`SegmentError::OutOfBounds`] (and `out` untouched) if the range is
    /// not all inside the segment.
    pub fn read_into_vec(
        &self,
        offset: usize,
        len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), SegmentError> {
        if imp::extend_from(&self.map, offset, len, out) {
            Ok(())
        } else {
            Err(self.out_of_bounds(offset, len))
        }
    }

    /// `len` bytes of the segment from `offset`, copied out.
    ///
    /// # Errors
    ///
    /// [`SegmentError::OutOfBounds`] if the range is not all inside the
    /// segment (checked before anything is allocated).
    pub fn read_to_vec(&self, offset: usize, len: usize) -> Result<Vec<u8>, SegmentError> {
        let mut out = Vec::new();
        self.read_into_vec(offset, len, &mut out)?;
        Ok(out)
    }

    /// The 4-byte word at `offset` as an atomic (a lock word shared with
    /// other processes); `None` outside the segment or unaligned. Only
    /// ever access that word atomically.
    pub(crate) fn atomic_u32(&self, offset: usize) -> Option<&std::sync::atomic::AtomicU32> {
        imp::atomic_u32_at(&self.map, offset)
    }

    fn out_of_bounds(&self, offset: usize, len: usize) -> SegmentError {
        SegmentError::OutOfBounds {
            offset: offset as u64,
            len: len as u64,
            segment_len: self.len() as u64,
        }
    }
}

#[cfg(test)]
mod tests;
