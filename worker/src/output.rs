//! [`Output`]: a running chunk's encoded results, on their way to the
//! master.
//!
//! Results are encoded back to back into one payload, sent as a `PART` or
//! `DONE` frame. On a local link with shared memory, a payload that
//! passes the transport's threshold
//! ([`threshold`](procpool_ipc::shm::transport::threshold)) is encoded
//! straight into a segment of the worker's lending pool
//! ([`BodyPool::lending`]) and handed to the link
//! ([`Link::lend_shared`]): the master decodes the results in place, and
//! its `FREE` gives the segment back to the pool for the next payload, its
//! pages already faulted in. A large result is so copied twice on its way
//! (encoded here, decoded into its value in the master), not three times
//! (encoded into memory, copied into a link segment, decoded).
//!
//! At most [`LENT_MAX`] segments exist at once; past that, and on remote
//! links or with shared memory turned off, the payload stays in memory and
//! goes out as before (through the link's own segments when it is large).
//! A worker that dies takes its segments with it: the master drops the
//! link, and with it its mappings, once its leases are gone.

use std::sync::Arc;

use procpool_ipc::IpcError;
use procpool_ipc::link::Link;
use procpool_ipc::proto::{Message, result_head};
use procpool_ipc::shm::body::{BodyPool, Encoded, encode_into_payload};
use serde::Serialize;

/// Segments of results a worker has at once, lent to the master or free.
/// The master keeps at most `MAX_LEASES` of them while its caller decodes
/// and frees the others as it reads them.
pub(crate) const LENT_MAX: usize = procpool_ipc::shm::transport::MAX_SEGMENTS;

/// Bytes of free result segments a worker keeps for the next results.
const FREE_CAP: usize = 64 << 20;

/// A chunk's encoded results not yet sent; see the module docs.
#[derive(Debug)]
pub(crate) struct Output {
    payload: Encoded,
    /// Where large payloads go: `None` off local links.
    bodies: Option<Arc<BodyPool>>,
    /// Payloads this long or longer go into a segment of `bodies`.
    spill_at: usize,
}

impl Output {
    /// An output that stays in memory.
    pub(crate) fn in_memory() -> Self {
        Self {
            payload: Encoded::default(),
            bodies: None,
            spill_at: usize::MAX,
        }
    }

    /// An output for results sent on `link`: large payloads go into
    /// shared memory if the link has it.
    pub(crate) fn for_link(link: &Link) -> Self {
        match (link.shm(), procpool_ipc::shm::transport::threshold()) {
            (Some(_), Some(spill_at)) => Self {
                payload: Encoded::default(),
                bodies: Some(BodyPool::lending(FREE_CAP, LENT_MAX)),
                spill_at,
            },
            _ => Self::in_memory(),
        }
    }

    #[cfg(test)]
    fn with_pool(bodies: Arc<BodyPool>, spill_at: usize) -> Self {
        Self {
            payload: Encoded::default(),
            bodies: Some(bodies),
            spill_at,
        }
    }

    /// Bytes of results held.
    pub(crate) fn len(&self) -> usize {
        self.payload.len()
    }

    /// Appends the encoding of `value`, giving up past `limit` bytes.
    ///
    /// # Errors
    /// As [`encode_into_payload`]; the output is then as before.
    pub(crate) fn encode<T: Serialize>(&mut self, value: &T, limit: u64) -> Result<(), IpcError> {
        encode_into_payload(
            value,
            &mut self.payload,
            self.bodies.as_ref(),
            self.spill_at,
            limit,
        )
    }

    /// Drops every result held.
    pub(crate) fn clear(&mut self) {
        self.payload.truncate(0);
    }

    /// A copy of the results held.
    #[cfg(test)]
    pub(crate) fn to_vec(&self) -> Vec<u8> {
        match &self.payload {
            Encoded::Bytes(v) => v.clone(),
            Encoded::Shared(body) => body.to_vec(),
        }
    }

    /// Whether the results are in shared memory.
    #[cfg(test)]
    pub(crate) fn is_shared(&self) -> bool {
        matches!(self.payload, Encoded::Shared(_))
    }

    /// Appends every result held, `count` of them, to `link`'s outbox as
    /// one `DONE` (`last`) or `PART` frame of chunk `id`, and empties the
    /// output.
    ///
    /// # Errors
    /// As [`Link::write`] (the results are dropped).
    pub(crate) fn send(
        &mut self,
        link: &Link,
        last: bool,
        id: u64,
        count: u32,
        elapsed_ns: u64,
    ) -> Result<(), IpcError> {
        match std::mem::take(&mut self.payload) {
            Encoded::Bytes(mut v) => {
                let sent = write(link, last, id, count, elapsed_ns, &v);
                v.clear();
                self.payload = Encoded::Bytes(v);
                sent
            }
            Encoded::Shared(body) => {
                let head = result_head(last, id, count, elapsed_ns);
                match link.lend_shared(&head, *body)? {
                    None => Ok(()),
                    // A link that cannot take segments: the bytes go as usual.
                    Some(body) => write(link, last, id, count, elapsed_ns, &body.to_vec()),
                }
            }
        }
    }

    /// Sends the results before byte `at` (`count` of them) as a `PART`
    /// frame like [`send`](Self::send), keeping those after it.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub(crate) fn send_before(
        &mut self,
        link: &Link,
        at: usize,
        id: u64,
        count: u32,
        elapsed_ns: u64,
    ) -> Result<(), IpcError> {
        match &mut self.payload {
            Encoded::Bytes(v) => {
                write(link, false, id, count, elapsed_ns, &v[..at.min(v.len())])?;
                v.drain(..at.min(v.len()));
                Ok(())
            }
            Encoded::Shared(body) => {
                // Rare (results that together pass the payload limit):
                // the rest is copied out to stay here.
                let rest = body.copy_from(at);
                body.truncate(at);
                let sent = self.send(link, false, id, count, elapsed_ns);
                self.payload = Encoded::Bytes(rest);
                sent
            }
        }
    }
}

/// Appends `payload` as one frame to the link's outbox.
fn write(
    link: &Link,
    last: bool,
    id: u64,
    count: u32,
    elapsed_ns: u64,
    payload: &[u8],
) -> Result<(), IpcError> {
    link.write(&if last {
        Message::Done {
            id,
            count,
            elapsed_ns,
            payload,
        }
    } else {
        Message::Part {
            id,
            count,
            elapsed_ns,
            payload,
        }
    })
}

#[cfg(test)]
mod tests {
    use procpool_ipc::TaskError;
    use procpool_ipc::codec;
    use serde::ser::{Error as _, SerializeTuple};

    use super::*;

    /// Writes a large buffer, then fails.
    struct FailsLate(Vec<u8>);

    impl Serialize for FailsLate {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut t = s.serialize_tuple(2)?;
            t.serialize_element(&self.0)?;
            Err(S::Error::custom("fails after its bytes"))
        }
    }

    /// Small results stay in memory, a large one moves them all into a
    /// segment; a result that fails to encode (over the limit, or failing
    /// once its first bytes are in shared memory) leaves the results
    /// before it as they were.
    #[test]
    fn large_results_go_to_shared_memory_and_failures_leave_no_trace() {
        let pool = BodyPool::lending(64 << 20, 4);
        let mut out = Output::with_pool(Arc::clone(&pool), 4096);
        let mut want = Vec::new();
        let small: Result<Vec<u8>, TaskError> = Ok(vec![1; 100]);
        out.encode(&small, u64::MAX).unwrap();
        codec::encode_into(&small, &mut want).unwrap();
        assert!(!out.is_shared());
        let big: Result<Vec<u8>, TaskError> = Ok((0..100_000).map(|i| i as u8).collect());
        out.encode(&big, u64::MAX).unwrap();
        codec::encode_into(&big, &mut want).unwrap();
        assert!(out.is_shared());
        assert_eq!(out.to_vec(), want);
        assert!(matches!(
            out.encode(&big, 1000),
            Err(IpcError::PayloadTooLarge { .. })
        ));
        assert!(out.encode(&FailsLate(vec![7; 200_000]), u64::MAX).is_err());
        assert_eq!(out.len(), want.len());
        assert_eq!(out.to_vec(), want);
        out.clear();
        assert_eq!(out.len(), 0);
    }
}
