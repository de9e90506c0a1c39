//! [`SharedBody`]: a payload encoded straight into a shared segment that
//! the sender owns apart from any connection.
//!
//! A master encodes a chunk's inputs before it knows which worker will
//! run them, and keeps the encoding to send the chunk again if that worker
//! dies. A [`SharedBody`] serves both: it is sent on whichever local link
//! the chunk goes out on without a copy
//! ([`Link::write_shared`](crate::link::Link::write_shared): the link
//! sends the segment's descriptor to its peer the first time, then names
//! it in an `SHM` frame), and it stays as it is for a resend on another
//! link. Only the message's fixed fields are written into the segment at
//! send time, into the [`HEAD_ROOM`] bytes left free before the payload,
//! so the body on the wire (`head ++ payload`) is contiguous there.
//!
//! When the body is dropped (its chunk answered, failed or cancelled) its
//! segment goes back to its [`BodyPool`] and carries the next body, its
//! pages faulted in already. The peers that mapped it keep their mapping
//! until their link retires it (a link keeps at most
//! [`MAX_SHARED`](crate::shm::transport::MAX_SHARED) such segments mapped
//! in its peer): a worker does not read a chunk's segment after it has
//! answered the chunk, and a segment is reused only after that answer or
//! once the worker is gone. The bytes a worker reads there are untrusted
//! like any: lengths are checked against the body.
//!
//! [`Encoded`] is what a master's chunk holds: bytes in memory, which
//! [`encode_into_payload`] moves into
//! a [`SharedBody`] once they pass the transport's threshold (and back to
//! memory if the segment cannot grow).
//!
//! A worker's results take the same path the other way, from a
//! [lending](BodyPool::lending) pool: the body is handed to the link
//! ([`Link::lend_shared`](crate::link::Link::lend_shared)), which keeps
//! it until the master answers `FREE`, since the worker has no copy to
//! resend and nothing else tells it when the master is done.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::shm::{Segment, SegmentError};
use crate::sync::lock;
use crate::{IpcError, codec};

/// Bytes left free at the start of each segment for the fixed fields of
/// the message a body is sent in (a `RUN` header takes 17).
pub const HEAD_ROOM: usize = 64;

/// Marks the ids of pooled segments apart from those of a link's own
/// segments (small counters).
pub(crate) const SHARED_ID: u64 = 1 << 63;

/// Marks the ids of segments of a [lending](BodyPool::lending) pool: their
/// reader answers `FREE` when done with a body, as for a link's own
/// segments.
pub(crate) const LENT_ID: u64 = 1 << 62;

/// The smallest segment made.
const MIN_SEGMENT: usize = 1 << 20;

/// Segments a pool has at once, free or in bodies: each is a descriptor
/// (handle) in this process. Past it, a payload stays in memory.
pub const MAX_LIVE: usize = 64;

/// Segments of dropped [`SharedBody`]s, kept for the next ones.
#[derive(Debug)]
pub struct BodyPool {
    free: Mutex<Vec<Pooled>>,
    cap: usize,
    /// Segments made and not yet dropped.
    live: AtomicUsize,
    /// The most segments made at once.
    max_live: usize,
    /// Bits set in every segment id ([`SHARED_ID`], and [`LENT_ID`]).
    id_bits: u64,
}

#[derive(Debug)]
struct Pooled {
    id: u64,
    seg: Arc<Segment>,
}

impl BodyPool {
    /// A pool keeping at most `cap` bytes of free segments, for bodies
    /// their sender keeps until it is done with them (a master's chunk
    /// inputs, kept to resend them): the reader does not answer `FREE`.
    /// At most [`MAX_LIVE`] segments at once.
    pub fn new(cap: usize) -> Arc<Self> {
        Self::with_ids(cap, MAX_LIVE, SHARED_ID)
    }

    /// A pool keeping at most `cap` bytes of free segments, and making at
    /// most `max_live` at once, for bodies handed over to a link
    /// ([`Link::lend_shared`](crate::link::Link::lend_shared), a worker's
    /// results): the reader answers `FREE` once done with one, and only
    /// then does its segment come back here.
    pub fn lending(cap: usize, max_live: usize) -> Arc<Self> {
        Self::with_ids(cap, max_live.min(MAX_LIVE), SHARED_ID | LENT_ID)
    }

    fn with_ids(cap: usize, max_live: usize, id_bits: u64) -> Arc<Self> {
        Arc::new(Self {
            free: Mutex::new(Vec::new()),
            cap,
            live: AtomicUsize::new(0),
            max_live,
            id_bits,
        })
    }

    /// The smallest free segment of at least `need` bytes, or a new one
    /// with room for bodies an eighth larger, in whole MiB.
    fn take(&self, need: usize) -> Result<Pooled, SegmentError> {
        let mut free = lock(&self.free);
        let fitting = free
            .iter()
            .enumerate()
            .filter(|(_, p)| p.seg.len() >= need)
            .min_by_key(|(_, p)| p.seg.len())
            .map(|(i, _)| i);
        if let Some(i) = fitting {
            return Ok(free.swap_remove(i));
        }
        drop(free);
        if self.live.fetch_add(1, Ordering::Relaxed) >= self.max_live {
            self.live.fetch_sub(1, Ordering::Relaxed);
            return Err(SegmentError::Io(std::io::Error::other(
                "too many shared payload segments",
            )));
        }
        let made = self.make(need);
        if made.is_err() {
            self.live.fetch_sub(1, Ordering::Relaxed);
        }
        made
    }

    fn make(&self, need: usize) -> Result<Pooled, SegmentError> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let size = need
            .checked_add(need / 8)
            .and_then(|n| n.checked_next_multiple_of(MIN_SEGMENT))
            .ok_or_else(|| SegmentError::Io(std::io::ErrorKind::OutOfMemory.into()))?
            .max(MIN_SEGMENT);
        Ok(Pooled {
            id: self.id_bits | NEXT.fetch_add(1, Ordering::Relaxed),
            seg: Arc::new(Segment::new(size)?),
        })
    }

    /// Keeps `p` for reuse, dropping the smallest free segments if the
    /// pool would hold more than its cap.
    fn put(&self, p: Pooled) {
        let mut free = lock(&self.free);
        free.push(p);
        free.sort_by_key(|p| std::cmp::Reverse(p.seg.len()));
        while free.iter().map(|p| p.seg.len()).sum::<usize>() > self.cap {
            free.pop();
            self.live.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Bytes of free segments held (for tests).
    #[doc(hidden)]
    pub fn free_bytes(&self) -> usize {
        lock(&self.free).iter().map(|p| p.seg.len()).sum()
    }
}

/// A payload in a shared segment of a [`BodyPool`]; see the
/// [module docs](self).
#[derive(Debug)]
pub struct SharedBody {
    slot: Option<Pooled>,
    len: usize,
    pool: Arc<BodyPool>,
}

impl SharedBody {
    /// An empty body with room for `capacity` bytes of payload.
    ///
    /// # Errors
    /// [`SegmentError::Io`] when no segment can be made.
    pub fn with_capacity(pool: &Arc<BodyPool>, capacity: usize) -> Result<Self, SegmentError> {
        let need = capacity
            .checked_add(HEAD_ROOM)
            .ok_or_else(|| SegmentError::Io(std::io::ErrorKind::OutOfMemory.into()))?;
        Ok(Self {
            slot: Some(pool.take(need)?),
            len: 0,
            pool: Arc::clone(pool),
        })
    }

    fn slot(&self) -> &Pooled {
        self.slot
            .as_ref()
            .expect("a body holds its segment until dropped")
    }

    /// The payload's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `bytes` to the payload, moving it to a larger segment
    /// (twice the size at least) when it does not fit.
    ///
    /// # Errors
    /// [`SegmentError::Io`] when a larger segment cannot be made (the
    /// payload is then unchanged).
    pub fn extend_from_slice(&mut self, bytes: &[u8]) -> Result<(), SegmentError> {
        let end = (HEAD_ROOM + self.len)
            .checked_add(bytes.len())
            .ok_or_else(|| SegmentError::Io(std::io::ErrorKind::OutOfMemory.into()))?;
        if end > self.slot().seg.len() {
            let bigger = self
                .pool
                .take(end.max(self.slot().seg.len().saturating_mul(2)))?;
            let old = self.slot().seg.read_to_vec(HEAD_ROOM, self.len)?;
            bigger.seg.write_at(HEAD_ROOM, &old)?;
            if let Some(old) = self.slot.replace(bigger) {
                self.pool.put(old);
            }
        }
        self.slot().seg.write_at(HEAD_ROOM + self.len, bytes)?;
        self.len += bytes.len();
        Ok(())
    }

    /// Shortens the payload to `len` bytes (no effect if it is shorter).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// A copy of the payload.
    pub fn to_vec(&self) -> Vec<u8> {
        self.slot()
            .seg
            .read_to_vec(HEAD_ROOM, self.len)
            .expect("the payload lies inside its segment")
    }

    /// A copy of the payload from byte `at` on (nothing past its end).
    pub fn copy_from(&self, at: usize) -> Vec<u8> {
        let at = at.min(self.len);
        self.slot()
            .seg
            .read_to_vec(HEAD_ROOM + at, self.len - at)
            .expect("the payload lies inside its segment")
    }

    /// The segment's id, unique in this process.
    pub(crate) fn id(&self) -> u64 {
        self.slot().id
    }

    /// The segment holding the payload at [`HEAD_ROOM`].
    pub(crate) fn segment(&self) -> &Arc<Segment> {
        &self.slot().seg
    }
}

impl Drop for SharedBody {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.pool.put(slot);
        }
    }
}

/// An encoded payload: bytes in memory, or in a shared segment.
#[derive(Debug)]
pub enum Encoded {
    /// In this process's memory.
    Bytes(Vec<u8>),
    /// In a shared segment, ready to send on a local link without a copy.
    Shared(Box<SharedBody>),
}

impl Default for Encoded {
    fn default() -> Self {
        Encoded::Bytes(Vec::new())
    }
}

impl From<Vec<u8>> for Encoded {
    fn from(v: Vec<u8>) -> Self {
        Encoded::Bytes(v)
    }
}

impl Encoded {
    /// The payload's length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Encoded::Bytes(v) => v.len(),
            Encoded::Shared(b) => b.len(),
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shortens the payload to `len` bytes.
    pub fn truncate(&mut self, len: usize) {
        match self {
            Encoded::Bytes(v) => v.truncate(len),
            Encoded::Shared(b) => b.truncate(len),
        }
    }

    /// Makes the payload bytes in memory (copying it out of its segment,
    /// which goes back to its pool), and returns them.
    pub fn make_bytes(&mut self) -> &mut Vec<u8> {
        if let Encoded::Shared(b) = self {
            *self = Encoded::Bytes(b.to_vec());
        }
        match self {
            Encoded::Bytes(v) => v,
            Encoded::Shared(_) => unreachable!("just made bytes"),
        }
    }
}

/// Appends the encoding of `value` to `payload` like
/// [`encode_into_limited`](crate::codec::encode_into_limited); bytes in memory that would pass `spill_at`
/// move into a [`SharedBody`] of `pool` first (and stay in memory if no
/// segment can be made), so a large value is encoded straight into shared
/// memory.
///
/// On error `payload` is restored to its previous length.
///
/// # Errors
/// As [`encode_into_limited`](crate::codec::encode_into_limited).
#[inline]
pub fn encode_into_payload<T: Serialize + ?Sized>(
    value: &T,
    payload: &mut Encoded,
    pool: Option<&Arc<BodyPool>>,
    spill_at: usize,
    limit: u64,
) -> Result<(), IpcError> {
    let start = payload.len();
    let writer = Spill {
        payload: &mut *payload,
        pool,
        spill_at,
        left: limit,
    };
    let encoded = codec::encode_into_writer(value, writer, limit);
    if encoded.is_err() {
        payload.truncate(start);
    }
    encoded
}

/// Appends to a [`Encoded`] until `left` bytes have been written, moving
/// it into shared memory past `spill_at`.
struct Spill<'a> {
    payload: &'a mut Encoded,
    pool: Option<&'a Arc<BodyPool>>,
    spill_at: usize,
    left: u64,
}

impl Spill<'_> {
    #[cold]
    fn write_shared(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        if let (Encoded::Bytes(v), Some(pool)) = (&mut *self.payload, self.pool) {
            let moved = SharedBody::with_capacity(pool, v.len() + bytes.len())
                .and_then(|mut body| body.extend_from_slice(v).map(|()| body));
            match moved {
                Ok(body) => *self.payload = Encoded::Shared(Box::new(body)),
                // No segment: the bytes stay in memory (and no more
                // segments are tried for this value).
                Err(_) => {
                    self.pool = None;
                    v.extend_from_slice(bytes);
                    return Ok(());
                }
            }
        }
        if let Encoded::Shared(body) = &mut *self.payload {
            if body.extend_from_slice(bytes).is_ok() {
                return Ok(());
            }
            // No larger segment: the payload moves back to memory (and
            // no more segments are tried for this value).
            self.pool = None;
        }
        self.payload.make_bytes().extend_from_slice(bytes);
        Ok(())
    }
}

impl bincode::enc::write::Writer for Spill<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.left = self
            .left
            .checked_sub(bytes.len() as u64)
            .ok_or(bincode::error::EncodeError::Other(codec::OVER_LIMIT))?;
        match &mut *self.payload {
            Encoded::Bytes(v) if v.len() + bytes.len() < self.spill_at || self.pool.is_none() => {
                v.extend_from_slice(bytes);
                Ok(())
            }
            _ => self.write_shared(bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body grows into larger segments keeping its bytes, and its
    /// segment goes back to the pool for the next body.
    #[test]
    fn bodies_grow_and_their_segments_are_reused() {
        let pool = BodyPool::new(64 << 20);
        let mut body = SharedBody::with_capacity(&pool, 10).unwrap();
        let first_len = body.segment().len();
        let bytes: Vec<u8> = (0..(3 << 20)).map(|i| (i % 251) as u8).collect();
        body.extend_from_slice(b"abc").unwrap();
        body.extend_from_slice(&bytes).unwrap();
        assert!(body.segment().len() > first_len);
        assert_eq!(body.len(), 3 + bytes.len());
        let back = body.to_vec();
        assert_eq!(&back[..3], b"abc");
        assert_eq!(&back[3..], &bytes[..]);
        body.truncate(3);
        assert_eq!(body.to_vec(), b"abc");
        let (id, len) = (body.id(), body.segment().len());
        assert!(id & SHARED_ID != 0);
        drop(body);
        assert!(pool.free_bytes() >= len);
        let again = SharedBody::with_capacity(&pool, 2 << 20).unwrap();
        assert_eq!(again.id(), id, "the larger free segment is reused");
    }

    /// The pool keeps no more than its cap, dropping the smallest.
    #[test]
    fn the_pool_keeps_at_most_its_cap() {
        let pool = BodyPool::new(3 << 20);
        let a = SharedBody::with_capacity(&pool, 1).unwrap();
        let b = SharedBody::with_capacity(&pool, 1 << 20).unwrap();
        let c = SharedBody::with_capacity(&pool, 1).unwrap();
        drop((a, b, c));
        assert!(pool.free_bytes() <= 3 << 20);
    }

    /// No more than `MAX_LIVE` segments at once: past it, no body.
    #[test]
    fn a_pool_makes_at_most_max_live_segments() {
        let pool = BodyPool::new(0);
        let held: Vec<_> = (0..MAX_LIVE)
            .map(|_| SharedBody::with_capacity(&pool, 1).unwrap())
            .collect();
        assert!(SharedBody::with_capacity(&pool, 1).is_err());
        drop(held);
        assert!(SharedBody::with_capacity(&pool, 1).is_ok());
    }

    /// A lending pool's ids say so (its bodies' readers answer `FREE`),
    /// and it makes no more segments than asked.
    #[test]
    fn lending_pools_mark_their_ids_and_keep_their_bound() {
        let pool = BodyPool::lending(64 << 20, 2);
        let a = SharedBody::with_capacity(&pool, 1).unwrap();
        let b = SharedBody::with_capacity(&pool, 1).unwrap();
        assert_eq!(a.id() & (SHARED_ID | LENT_ID), SHARED_ID | LENT_ID);
        assert!(SharedBody::with_capacity(&pool, 1).is_err());
        drop((a, b));
        let kept = SharedBody::with_capacity(&BodyPool::new(0), 1).unwrap();
        assert_eq!(kept.id() & (SHARED_ID | LENT_ID), SHARED_ID);
    }

    /// A value encoded into shared memory whose segment cannot grow (the
    /// pool is at its bound) moves back to memory whole, not an error.
    #[test]
    fn a_payload_that_cannot_grow_in_shared_memory_moves_to_memory() {
        let pool = BodyPool::lending(0, 1);
        let value: Vec<u8> = (0..(3 << 20)).map(|i| (i % 247) as u8).collect();
        let mut payload = Encoded::default();
        // Past the threshold after 100 bytes; the 1 MiB first segment
        // cannot grow into a second one.
        let chunks: Vec<&[u8]> = vec![&value[..100], &value[100..]];
        encode_into_payload(&chunks, &mut payload, Some(&pool), 64, u64::MAX).unwrap();
        assert!(matches!(payload, Encoded::Bytes(_)));
        let mut want = Vec::new();
        codec::encode_into(&chunks, &mut want).unwrap();
        assert_eq!(payload.make_bytes(), &want);
        // The segment went back: the next value spills into it.
        let mut next = Encoded::default();
        encode_into_payload(&value[..1000], &mut next, Some(&pool), 64, u64::MAX).unwrap();
        assert!(matches!(next, Encoded::Shared(_)));
    }

    /// A payload moved out of its segment keeps its bytes.
    #[test]
    fn payloads_become_bytes() {
        let pool = BodyPool::new(8 << 20);
        let mut body = SharedBody::with_capacity(&pool, 5).unwrap();
        body.extend_from_slice(b"hello").unwrap();
        let mut p = Encoded::Shared(Box::new(body));
        assert_eq!(p.len(), 5);
        assert_eq!(p.make_bytes(), b"hello");
        assert!(matches!(p, Encoded::Bytes(_)));
    }
}
