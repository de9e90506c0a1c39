//! [`SharedMemory`]: a byte buffer in shared memory (Python's
//! `multiprocessing.shared_memory.SharedMemory`), and [`Value`] /
//! [`Array`] of plain data over it (`multiprocessing.Value`/`Array`).
//!
//! # Where it lives and how it travels
//!
//! The buffer is an anonymous [`Segment`] created by one process and
//! registered with that process's hub like a [`SharedMap`](super::map::SharedMap).
//! Its handle is `Serialize`. A direct local worker deserialising it holds
//! it in the hub (`HOLD`, as queues do) and asks `OPEN`: the hub sends the
//! segment's descriptor over the worker's descriptor channel
//! ([`crate::shm::transport`]; on Windows the handle channel, which
//! duplicates the section handle into the worker; token = the buffer id)
//! and answers with the length; the worker maps it. Reads and writes then touch the memory
//! directly: nothing goes through a socket.
//!
//! The hub keeps the segment while any handle lives (pins and holds,
//! `hub/lifetime.rs`; a worker's holds go when its connection ends, so
//! after a crash too); each process unmaps its own mapping when its last
//! handle drops, and the kernel frees the memory with the last mapping or
//! descriptor.
//!
//! Not reachable: processes two hops away or on another machine (remote
//! TCP workers), and connections without a descriptor channel
//! (`PROCPOOL_SHM_THRESHOLD=off`): deserialising fails with a message
//! saying so.

mod store;
#[cfg(test)]
mod tests;
mod value;

pub use value::{Array, HEADER, Plain, Value, ValueGuard};

pub(crate) use store::{disconnect, serve};

use std::fmt;
use std::sync::Arc;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::client::{self, Client};
use super::held::Arrival;
use super::hub;
use super::pins;
use super::wire::{Wait, op as qop, status as qstatus};
use crate::error::QueueError;
use crate::shm::{Segment, SegmentError};
use store::Store;

/// Operation code: map the buffer (beside the queue, sync and map ops).
const OPEN: u8 = 64;

/// Status: the connection has no descriptor channel.
const NO_CHANNEL: u8 = 64;

/// Status: the descriptor could not be sent (the channel is full: the
/// worker is not reading it, or the system refused).
const SEND_FAILED: u8 = 65;

/// Why a shared memory operation failed.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SharedMemoryError {
    /// `len` bytes at `offset` are not all inside the buffer of
    /// `buffer_len` bytes; nothing was read or written.
    #[error("range of {len} bytes at offset {offset} is outside a buffer of {buffer_len} bytes")]
    OutOfBounds {
        /// Where the range starts.
        offset: u64,
        /// Its length.
        len: u64,
        /// The buffer's length.
        buffer_len: u64,
    },
    /// The shared memory could not be created or mapped.
    #[error("failed to create or map shared memory")]
    Os(#[source] Arc<SegmentError>),
}

impl From<SegmentError> for SharedMemoryError {
    fn from(e: SegmentError) -> Self {
        match e {
            SegmentError::OutOfBounds {
                offset,
                len,
                segment_len,
            } => SharedMemoryError::OutOfBounds {
                offset,
                len,
                buffer_len: segment_len,
            },
            e => SharedMemoryError::Os(Arc::new(e)),
        }
    }
}

/// A byte buffer in shared memory, mapped in every local process that
/// holds a handle (Python's `shared_memory.SharedMemory`).
///
/// Created zeroed with a fixed length. The handle is `Serialize`: pass
/// clones to tasks, [`Process`]es and pool initializers; the hub process
/// and its direct local workers map the same memory (see the module docs
/// for who cannot). It is freed when the last handle is gone, including
/// handles in processes that crashed.
///
/// Reads and writes copy bytes and are not atomic with respect to other
/// processes: coordinate with a lock ([`Value::lock`], or a
/// [`Lock`](crate::sync_prims::Lock)).
///
/// ```
/// use procpool::SharedMemory;
///
/// let buf = SharedMemory::new(16).unwrap();
/// buf.write_at(4, b"abc").unwrap();
/// let mut out = [0; 3];
/// buf.read_at(4, &mut out).unwrap();
/// assert_eq!(&out, b"abc");
/// assert!(buf.write_at(15, b"xy").is_err());
/// ```
///
/// [`Process`]: https://docs.rs/procpool/latest/procpool/struct.Process.html
#[derive(Clone)]
pub struct SharedMemory {
    place: Place,
}

/// How a handle reaches its buffer.
#[derive(Clone, Debug)]
enum Place {
    /// In the hub process: the buffer itself.
    Local(Arc<Store>),
    /// In a worker: its own mapping, holding the buffer in the hub.
    Remote {
        id: u64,
        seg: Arc<Segment>,
        _held: Arc<client::Held>,
    },
}

impl fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedMemory")
            .field("id", &self.id())
            .field("len", &self.len())
            .finish()
    }
}

impl SharedMemory {
    /// A zeroed buffer of `len` bytes, held by this process's hub.
    ///
    /// # Errors
    /// [`SharedMemoryError::Os`] if the system refuses the memory.
    pub fn new(len: usize) -> Result<Self, SharedMemoryError> {
        let seg = Segment::new(len)?;
        Ok(SharedMemory {
            place: Place::Local(Store::new(seg)),
        })
    }

    #[doc(hidden)]
    pub fn id(&self) -> u64 {
        match &self.place {
            Place::Local(s) => s.id(),
            Place::Remote { id, .. } => *id,
        }
    }

    pub(crate) fn segment(&self) -> &Segment {
        match &self.place {
            Place::Local(s) => s,
            Place::Remote { seg, .. } => seg,
        }
    }

    /// The buffer's length in bytes.
    pub fn len(&self) -> usize {
        self.segment().len()
    }

    /// Whether the buffer is empty (created with length 0).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies `dst.len()` bytes from `offset` into `dst`.
    ///
    /// # Errors
    /// [`SharedMemoryError::OutOfBounds`] if the range is not inside the
    /// buffer (nothing is copied).
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<(), SharedMemoryError> {
        Ok(self.segment().read_at(offset, dst)?)
    }

    /// Copies `src` into the buffer at `offset`.
    ///
    /// # Errors
    /// [`SharedMemoryError::OutOfBounds`] if the range is not inside the
    /// buffer (nothing is copied).
    pub fn write_at(&self, offset: usize, src: &[u8]) -> Result<(), SharedMemoryError> {
        Ok(self.segment().write_at(offset, src)?)
    }

    /// The whole buffer, copied.
    pub fn to_vec(&self) -> Vec<u8> {
        // In bounds by construction.
        self.segment()
            .read_to_vec(0, self.len())
            .unwrap_or_default()
    }
}

#[derive(Serialize, Deserialize)]
struct Wire {
    hub: u64,
    id: u64,
    /// The token of the pin this handle's serialisation took.
    pin: u64,
}

impl Serialize for SharedMemory {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (hub, pin) = match &self.place {
            Place::Local(store) => (hub::hub_id(), store.pin()),
            Place::Remote { id, .. } => {
                let client = client::client()
                    .ok_or_else(|| serde::ser::Error::custom("no connection to the hub"))?;
                let pin = pins::token(false);
                client
                    .oneway(qop::PIN, *id, 0, &pin.to_le_bytes())
                    .map_err(serde::ser::Error::custom)?;
                let hub = client.upstream_hub().map_err(serde::ser::Error::custom)?;
                (hub, pin)
            }
        };
        Wire {
            hub,
            id: self.id(),
            pin,
        }
        .serialize(s)
    }
}

/// Maps buffer `id` of the upstream hub in this worker (taking the pin
/// `pin`).
fn open_remote(
    client: &'static Arc<Client>,
    id: u64,
    pin: u64,
) -> Result<(Arc<Segment>, client::Held), String> {
    let held = client.hold(id, false, pin).map_err(|e| e.to_string())?;
    let shm = client.link().shm().ok_or_else(no_channel)?;
    let (st, len, _) = client
        .request(OPEN, id, 0, &[], Wait::Forever)
        .map_err(|e| e.to_string())?;
    match st {
        qstatus::OK => {}
        NO_CHANNEL => return Err(no_channel()),
        SEND_FAILED => {
            return Err("the hub could not send the buffer's descriptor (the descriptor channel is full or refused it)".to_string());
        }
        qstatus::NO_QUEUE => return Err(QueueError::NoSuchQueue { id }.to_string()),
        _ => return Err(QueueError::Protocol.to_string()),
    }
    let handle = shm.take_object(id).map_err(|e| e.to_string())?;
    let len =
        usize::try_from(len).map_err(|_| "buffer longer than the address space".to_string())?;
    let seg = Segment::from_handle(handle, len).map_err(|e| e.to_string())?;
    Ok((Arc::new(seg), held))
}

fn no_channel() -> String {
    "shared memory reaches only local workers with a descriptor channel (not remote workers, not with PROCPOOL_SHM_THRESHOLD=off)".to_string()
}

impl<'de> Deserialize<'de> for SharedMemory {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Wire { hub, id, pin } = Wire::deserialize(d)?;
        let place = match store::BUFFERS
            .arrive(hub, id, pin)
            .map_err(D::Error::custom)?
        {
            Arrival::Here(store) => Place::Local(store),
            Arrival::Upstream(client) => {
                let (seg, held) = open_remote(client, id, pin).map_err(D::Error::custom)?;
                Place::Remote {
                    id,
                    seg,
                    _held: Arc::new(held),
                }
            }
        };
        Ok(SharedMemory { place })
    }
}

#[doc(hidden)]
pub fn hub_holds(id: u64) -> bool {
    Store::lookup(id).is_some()
}
