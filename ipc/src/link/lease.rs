//! [`Lease`]: a frame body read in place from the shared segment it
//! travelled in (see [`crate::shm::transport`]).

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use serde::de::DeserializeOwned;

use super::Link;
use crate::IpcError;
use crate::codec;
use crate::proto::Message;
use crate::shm::Segment;
use crate::shm::body::{LENT_ID, SHARED_ID};
use crate::shm::transport::Named;

/// Leases a link hands out at once (see [`Link::read_leased`]): enough
/// for the body being decoded and those behind it while a caller decodes
/// in order (a `map` holds its next chunks' results while it decodes the
/// current one; with 2, `map` over 16 × 16 MiB echoed copied about a
/// third of its results out, each into fresh pages), while the sender
/// keeps room for the next (it holds up to
/// [`MAX_SEGMENTS`](crate::shm::transport::MAX_SEGMENTS)).
pub const MAX_LEASES: usize = 4;

/// What [`Link::read_leased`] read.
#[derive(Debug)]
pub enum Incoming {
    /// The connection ended cleanly between frames.
    End,
    /// The whole body is in the caller's buffer.
    Buffered,
    /// The body stayed in a shared segment; the caller's buffer holds its
    /// first bytes.
    Leased(Lease),
}

/// A frame body left in the shared segment it travelled in, read in place.
///
/// Values are decoded straight from the segment
/// ([`decode_at`](Self::decode_at)): the bytes are copied once, into the
/// values. The segment's sender does not write it again until the lease
/// is dropped, which tells it (`FREE`) that it may. Every length read from
/// the segment is checked against the body's length, itself checked
/// against the segment's when the frame arrived: a corrupt body is a
/// decoding error, never a read outside the mapping.
pub struct Lease {
    seg: Arc<Segment>,
    id: u64,
    /// Where the body starts in the segment, and its length.
    at: usize,
    len: usize,
    link: Weak<Link>,
    /// The link's count of leases out.
    held: Arc<AtomicUsize>,
}

impl Lease {
    pub(super) fn new(named: Named, link: Weak<Link>, held: Arc<AtomicUsize>) -> Self {
        held.fetch_add(1, Ordering::Relaxed);
        Self {
            held,
            seg: named.seg,
            id: named.id,
            at: named.at,
            len: named.body_len,
            link,
        }
    }

    /// The body's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Decodes one value from the body at `offset`; returns it and how many
    /// bytes it used.
    ///
    /// # Errors
    /// [`IpcError::Decode`] when the bytes there do not hold a valid `T`
    /// inside the body (a length reaching past its end included).
    pub fn decode_at<T: DeserializeOwned>(&self, offset: usize) -> Result<(T, usize), IpcError> {
        let end = self.at + self.len;
        decode_from_segment(&self.seg, self.at.saturating_add(offset), end)
    }

    /// Replaces `buf` with a copy of the whole body.
    ///
    /// # Errors
    /// [`IpcError::Malformed`] if the body does not lie inside its segment
    /// (checked on arrival: cannot happen).
    pub fn read_into(&self, buf: &mut Vec<u8>) -> Result<(), IpcError> {
        buf.clear();
        self.seg
            .read_into_vec(self.at, self.len, buf)
            .map_err(|_| IpcError::Malformed("body outside its segment"))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.held.fetch_sub(1, Ordering::Relaxed);
        // A pooled segment is reused once its chunk is answered, not on
        // `FREE`, unless its sender lent it (a worker's results).
        if self.id & (SHARED_ID | LENT_ID) == SHARED_ID {
            return;
        }
        // A link that is gone or broken has no sender left to tell.
        if let Some(link) = self.link.upgrade() {
            let _ = link.send(&Message::Free { seg: self.id });
        }
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("segment", &self.id)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// Decodes one value from a shared segment, from `offset` up to `end`
/// (the end of the body it belongs to); returns it and how many bytes it
/// used.
///
/// The bytes are copied straight from the segment into the value (a byte
/// buffer's bytes in one copy), never through a Rust reference into the
/// shared memory: another process writing there meanwhile yields a wrong
/// value or an error, never undefined behaviour. No read reaches past
/// `end` (nor past the segment).
///
/// # Errors
/// [`IpcError::Decode`] when the bytes do not hold a valid `T` before
/// `end`, or `end` lies outside the segment.
pub(crate) fn decode_from_segment<T: DeserializeOwned>(
    seg: &Segment,
    offset: usize,
    end: usize,
) -> Result<(T, usize), IpcError> {
    let end = end.min(seg.len());
    let mut reader = SegmentReader {
        seg,
        at: offset,
        end,
    };
    let value = codec::decode_from_reader(&mut reader, end.saturating_sub(offset))?;
    Ok((value, reader.at - offset))
}

/// Reads a segment in order for the decoder, each piece copied out.
struct SegmentReader<'a> {
    seg: &'a Segment,
    at: usize,
    end: usize,
}

impl bincode::de::read::Reader for SegmentReader<'_> {
    fn read(&mut self, bytes: &mut [u8]) -> Result<(), bincode::error::DecodeError> {
        let left = self.end.saturating_sub(self.at);
        if bytes.len() > left {
            return Err(bincode::error::DecodeError::UnexpectedEnd {
                additional: bytes.len() - left,
            });
        }
        self.seg.read_at(self.at, bytes).map_err(|_| {
            bincode::error::DecodeError::UnexpectedEnd {
                additional: bytes.len(),
            }
        })?;
        self.at += bytes.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values decode straight from a shared segment, each using the bytes
    /// it used from a slice.
    #[test]
    fn values_decode_from_a_segment() {
        let big = serde_bytes::ByteBuf::from(vec![7u8; 100_000]);
        let mut buf = Vec::new();
        codec::encode_into(&big, &mut buf).unwrap();
        codec::encode_into(&(3u64, "three"), &mut buf).unwrap();
        let seg = Segment::new(buf.len() + 10).unwrap();
        seg.write_at(10, &buf).unwrap();
        let end = 10 + buf.len();
        let (back, used): (serde_bytes::ByteBuf, usize) =
            decode_from_segment(&seg, 10, end).unwrap();
        assert_eq!(back, big);
        assert_eq!(used, codec::decode::<serde_bytes::ByteBuf>(&buf).unwrap().1);
        let (rest, n): ((u64, String), usize) = decode_from_segment(&seg, 10 + used, end).unwrap();
        assert_eq!(rest, (3, "three".into()));
        assert_eq!(10 + used + n, end);
    }

    /// A corrupt segment (a length prefix reaching past the body, or past
    /// the segment; a body said to start beyond it) gives a decoding
    /// error: no read outside the body, no allocation of the announced size.
    #[test]
    fn a_corrupt_segment_is_a_decoding_error() {
        let seg = Segment::new(4096).unwrap();
        // A byte buffer announcing 3000 bytes, inside a 100-byte body.
        let mut buf = Vec::new();
        codec::encode_into(&3000u64, &mut buf).unwrap();
        seg.write_at(0, &buf).unwrap();
        let err = decode_from_segment::<serde_bytes::ByteBuf>(&seg, 0, 100).unwrap_err();
        assert!(matches!(err, IpcError::Decode(_)), "{err:?}");
        // Announcing 2^62 bytes: refused by the claim limit, not allocated.
        seg.write_at(0, &[0xFF, 0, 0, 0, 0, 0, 0, 0, 0x40]).unwrap();
        let err = decode_from_segment::<serde_bytes::ByteBuf>(&seg, 0, 4096).unwrap_err();
        assert!(matches!(err, IpcError::Decode(_)), "{err:?}");
        // A body end past the segment is cut to the segment.
        seg.write_at(4090, &[200, 1]).unwrap();
        let err = decode_from_segment::<serde_bytes::ByteBuf>(&seg, 4090, usize::MAX).unwrap_err();
        assert!(matches!(err, IpcError::Decode(_)), "{err:?}");
        // An offset past the end.
        let err = decode_from_segment::<u8>(&seg, usize::MAX, usize::MAX).unwrap_err();
        assert!(matches!(err, IpcError::Decode(_)), "{err:?}");
    }
}
