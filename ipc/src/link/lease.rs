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
use crate::shm::transport::Named;

/// Leases a link hands out at once (see [`Link::read_leased`]): enough
/// for the body being decoded and one more behind it, while the sender
/// keeps room for the next (it holds up to
/// [`MAX_SEGMENTS`](crate::shm::transport::MAX_SEGMENTS)).
pub const MAX_LEASES: usize = 2;

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
        codec::decode_from_segment(&self.seg, offset, self.len)
    }

    /// Replaces `buf` with a copy of the whole body.
    ///
    /// # Errors
    /// [`IpcError::Malformed`] if the body does not lie inside its segment
    /// (checked on arrival: cannot happen).
    pub fn read_into(&self, buf: &mut Vec<u8>) -> Result<(), IpcError> {
        buf.clear();
        self.seg
            .read_into_vec(0, self.len, buf)
            .map_err(|_| IpcError::Malformed("body outside its segment"))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.held.fetch_sub(1, Ordering::Relaxed);
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
