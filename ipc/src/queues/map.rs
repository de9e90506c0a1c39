//! [`SharedMap`]: a key-value map shared between processes (Python's
//! `Manager().dict()`), held by the hub like a queue, every operation
//! atomic.
//!
//! # Protocol
//!
//! `Message::Hub` frames whose id names no queue and no synchronization
//! primitive are offered to the map store (`map/store.rs`). Payloads are
//! *parts*: each an 8-byte little-endian length and that many bytes (a
//! key or a value, encoded by [`crate::codec`]). The queue table in
//! `wire.rs` gives `PIN`, `HOLD`, `UNHOLD` (a map lives as a queue does),
//! `OK`, `NO_QUEUE` and `BAD_REQUEST`; the ops and statuses below extend
//! it.
//!
//! | op | `arg` | parts | answer (`OK` unless said) |
//! |---|---|---|---|
//! | `INSERT` | — | key, value | `value` 1 and the old value, or 0 |
//! | `GET` / `REMOVE` | — | key | `value` 1 and the value, or 0 |
//! | `CONTAINS` | — | key | `value` 1 or 0 |
//! | `LEN` / `CLEAR` | — | — | `value` = entries (before the clear) |
//! | `SNAPSHOT` | 1: keys, 2: values, 3: both | — | `value` = entries; the parts, key before value |
//! | `INSERT_IF_ABSENT` | — | key, value | `value` 0 (inserted), or 1 and the current value |
//! | `COMPARE_AND_SWAP` | bit 0: current given, bit 1: new given | key, current (if given), new (if given) | `value` 1 (swapped), 0 (absent, no swap), 2 and the actual value (no swap) |
//! | `FETCH_ADD` | the integer type's tag | key, delta | the previous value (0 if absent); `OVERFLOW`, `BAD_VALUE` |
//!
//! A reply too large for the requester's link (a snapshot, or a value
//! inserted over a link with a larger limit) is answered `TOO_LARGE`
//! with `value` = its length instead.

mod integer;
mod store;
#[cfg(test)]
mod tests;

pub use integer::MapInteger;
pub(crate) use store::{disconnect, serve};

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::client::{self, Client};
use super::held::Arrival;
use super::hub;
use super::pins;
use super::wire::{Wait, op as qop, status as qstatus};
use crate::codec;
use crate::error::{IpcError, QueueError};
use crate::frame::DEFAULT_MAX_PAYLOAD_LEN;
use store::Store;

/// Operation codes (beside the queue ops of `wire.rs` and the
/// synchronization ops, 32 and up).
mod op {
    pub(super) const INSERT: u8 = 48;
    pub(super) const GET: u8 = 49;
    pub(super) const REMOVE: u8 = 50;
    pub(super) const CONTAINS: u8 = 51;
    pub(super) const LEN: u8 = 52;
    pub(super) const CLEAR: u8 = 53;
    pub(super) const SNAPSHOT: u8 = 54;
    pub(super) const INSERT_IF_ABSENT: u8 = 55;
    pub(super) const COMPARE_AND_SWAP: u8 = 56;
    pub(super) const FETCH_ADD: u8 = 57;
}

/// Status codes (beside the queue statuses of `wire.rs`).
mod status {
    pub(super) const TOO_LARGE: u8 = 48;
    pub(super) const OVERFLOW: u8 = 49;
    pub(super) const BAD_VALUE: u8 = 50;
}

/// Payload parts: an 8-byte little-endian length, then the bytes.
mod parts {
    pub(super) fn push(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(bytes);
    }

    /// The parts of `payload`; `None` if it is not a sequence of parts.
    pub(super) fn split(mut payload: &[u8]) -> Option<Vec<&[u8]>> {
        let mut parts = Vec::new();
        while !payload.is_empty() {
            let (len, rest) = payload.split_first_chunk::<8>()?;
            let len = usize::try_from(u64::from_le_bytes(*len)).ok()?;
            if rest.len() < len {
                return None;
            }
            let (part, rest) = rest.split_at(len);
            parts.push(part);
            payload = rest;
        }
        Some(parts)
    }
}

/// Why a map operation failed.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MapError {
    /// The request's keys and values take more than `max` bytes encoded
    /// (see [`SharedMap`]'s Limits); nothing was sent.
    #[error("a request of {len} bytes (keys and values encoded) exceeds the map's limit of {max}")]
    TooLarge {
        /// Bytes the request would have taken (at least).
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The answer (a snapshot, or a value) is larger than this process's
    /// connection to the hub carries; the map is unchanged by it.
    #[error("an answer of {len} bytes is larger than the connection to the hub carries")]
    AnswerTooLarge {
        /// The answer's length in bytes.
        len: u64,
    },
    /// A key or value could not be encoded.
    #[error("failed to encode a key or value")]
    Encode(#[source] Arc<IpcError>),
    /// A key or value in the map could not be decoded as this handle's
    /// type.
    #[error("failed to decode a key or value")]
    Decode(#[source] Arc<IpcError>),
    /// `fetch_add` would overflow the value's type; the value is unchanged.
    #[error("the sum overflows the value type")]
    Overflow,
    /// `fetch_add` found a value that is not an encoded integer of the
    /// requested type (a handle of another value type wrote it).
    #[error("the stored value is not an integer of the value type")]
    NotAnInteger,
    /// The hub could not be reached, or holds no such map any more.
    #[error("failed to reach the map's hub")]
    Hub(#[source] QueueError),
}

/// A map shared between processes (Python's `Manager().dict()`): held by
/// the hub of the process that created it, every operation atomic.
///
/// Like a [`Queue`](crate::queue::Queue)'s, the handle is `Serialize`:
/// pass clones to tasks, [`Process`]es and pool initializers. It reaches
/// the map from the hub's process and its direct workers
/// ([`QueueError::Unreachable`] further away), and the map lives while
/// any process holds a handle (the creator may move its only one into a
/// child). A process that dies mid-operation leaves the map as it was
/// before or after that operation, never in between: the hub applies a
/// whole request or none of it.
///
/// # Keys
///
/// Keys are compared by their encoded bytes ([`crate::codec`]), not by
/// `Eq`/`Hash`: two keys are the same key when they encode the same. For
/// strings, integers, tuples and derived structs that is equality. A type
/// whose encoding is not canonical (a `HashMap` or `HashSet` inside a key,
/// whose order varies; floats, where `0.0` and `-0.0` differ and every
/// `NaN` encoding is its own key) does not behave as its `Eq` says.
/// [`compare_and_swap`](Self::compare_and_swap) compares values the same
/// way. Snapshots come in no particular order.
///
/// # Read-modify-write
///
/// Python code takes a lock around `d[k] = f(d[k])`. A closure cannot
/// run in the hub (the hub is another process, and code is never sent),
/// so the hub offers the common updates as single operations:
/// [`insert_if_absent`](Self::insert_if_absent) (`setdefault`),
/// [`fetch_add`](Self::fetch_add) (counters), and
/// [`compare_and_swap`](Self::compare_and_swap), with which any update is
/// a retry loop: read, compute, swap if unchanged.
///
/// # Limits
///
/// The keys and values of one request may take at most
/// [`DEFAULT_MAX_PAYLOAD_LEN`] bytes encoded
/// ([`MapError::TooLarge`]), so each fits in one frame (a pool built with
/// a smaller `max_payload_len` refuses larger requests from its workers:
/// [`MapError::Hub`] with the frame error, the map unchanged). A snapshot larger
/// than a worker's connection carries is refused
/// ([`MapError::AnswerTooLarge`]); the hub process itself reads any size.
///
/// ```
/// use procpool::SharedMap;
///
/// let m = SharedMap::<String, u64>::new();
/// assert_eq!(m.insert(&"a".into(), &1).unwrap(), None);
/// assert_eq!(m.insert(&"a".into(), &2).unwrap(), Some(1));
/// assert_eq!(m.fetch_add(&"hits".into(), 5).unwrap(), 0);
/// assert_eq!(m.get(&"hits".into()).unwrap(), Some(5));
/// assert_eq!(m.len().unwrap(), 2);
/// ```
///
/// [`Process`]: https://docs.rs/procpool/latest/procpool/struct.Process.html
pub struct SharedMap<K, V> {
    place: Place,
    _types: PhantomData<fn() -> (K, V)>,
}

/// How a handle reaches its map.
#[derive(Clone, Debug)]
enum Place {
    /// In the hub process: the map itself.
    Local(Arc<Store>),
    /// In a worker: a proxy, holding the map in the hub while it lives.
    Remote {
        id: u64,
        client: &'static Arc<Client>,
        _held: Arc<client::Held>,
    },
}

impl Place {
    fn id(&self) -> u64 {
        match self {
            Place::Local(s) => s.id(),
            Place::Remote { id, .. } => *id,
        }
    }
}

impl<K, V> Clone for SharedMap<K, V> {
    fn clone(&self) -> Self {
        SharedMap {
            place: self.place.clone(),
            _types: PhantomData,
        }
    }
}

impl<K, V> fmt::Debug for SharedMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedMap")
            .field("id", &self.place.id())
            .finish()
    }
}

impl<K, V> Default for SharedMap<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

/// A request's payload, built part by part within the limit.
struct Request(Vec<u8>);

impl Request {
    fn new() -> Self {
        Request(Vec::new())
    }

    fn part<T: Serialize + ?Sized>(mut self, value: &T) -> Result<Self, MapError> {
        let at = self.0.len();
        self.0.extend_from_slice(&[0; 8]);
        let used = self.0.len() as u64;
        let left = DEFAULT_MAX_PAYLOAD_LEN.saturating_sub(used);
        match codec::encode_into_limited(value, &mut self.0, left) {
            Ok(()) => {}
            Err(IpcError::PayloadTooLarge { len, .. }) => {
                return Err(MapError::TooLarge {
                    len: used + len,
                    max: DEFAULT_MAX_PAYLOAD_LEN,
                });
            }
            Err(e) => return Err(MapError::Encode(Arc::new(e))),
        }
        let len = (self.0.len() - at - 8) as u64;
        self.0[at..at + 8].copy_from_slice(&len.to_le_bytes());
        Ok(self)
    }
}

/// Decodes exactly one `T` from `bytes`.
fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, MapError> {
    match codec::decode::<T>(bytes) {
        Ok((v, n)) if n == bytes.len() => Ok(v),
        Ok(_) => Err(MapError::Decode(Arc::new(IpcError::Malformed(
            "trailing bytes after a map key or value",
        )))),
        Err(e) => Err(MapError::Decode(Arc::new(e))),
    }
}

impl<K, V> SharedMap<K, V> {
    /// A new, empty map held by this process's hub.
    pub fn new() -> Self {
        SharedMap {
            place: Place::Local(Store::new()),
            _types: PhantomData,
        }
    }

    /// The map's id in its hub (for tests and logs).
    #[doc(hidden)]
    pub fn id(&self) -> u64 {
        self.place.id()
    }

    /// One operation: the answer's value and payload.
    fn call(&self, code: u8, arg: u64, payload: &Request) -> Result<(u64, Vec<u8>), MapError> {
        let (st, value, out) = match &self.place {
            Place::Local(store) => match store.exec(code, arg, &payload.0) {
                Ok((value, out)) => (qstatus::OK, value, out),
                Err(st) => (st, 0, Vec::new()),
            },
            Place::Remote { id, client, .. } => client
                .request(code, *id, arg, &payload.0, Wait::Forever)
                .map_err(MapError::Hub)?,
        };
        match st {
            qstatus::OK => Ok((value, out)),
            status::TOO_LARGE => Err(MapError::AnswerTooLarge { len: value }),
            status::OVERFLOW => Err(MapError::Overflow),
            status::BAD_VALUE => Err(MapError::NotAnInteger),
            qstatus::NO_QUEUE => Err(MapError::Hub(QueueError::NoSuchQueue {
                id: self.place.id(),
            })),
            _ => Err(MapError::Hub(QueueError::Protocol)),
        }
    }
}

impl<K: Serialize, V: Serialize + DeserializeOwned> SharedMap<K, V> {
    /// The value `(found, bytes)` answers, decoded.
    fn found(answer: (u64, Vec<u8>)) -> Result<Option<V>, MapError> {
        match answer {
            (0, _) => Ok(None),
            (_, bytes) => decode(&bytes).map(Some),
        }
    }

    /// Sets `key` to `value`; returns the value it replaced, if any.
    ///
    /// # Errors
    /// [`MapError::TooLarge`], [`MapError::Encode`], [`MapError::Decode`]
    /// (the old value; the insert happened), [`MapError::Hub`].
    pub fn insert(&self, key: &K, value: &V) -> Result<Option<V>, MapError> {
        let req = Request::new().part(key)?.part(value)?;
        Self::found(self.call(op::INSERT, 0, &req)?)
    }

    /// The value of `key`, if it has one.
    ///
    /// # Errors
    /// As [`insert`](Self::insert), and [`MapError::AnswerTooLarge`].
    pub fn get(&self, key: &K) -> Result<Option<V>, MapError> {
        let req = Request::new().part(key)?;
        Self::found(self.call(op::GET, 0, &req)?)
    }

    /// Removes `key`; returns its value, if it had one.
    ///
    /// # Errors
    /// As [`get`](Self::get) (the removal happened even if the answer
    /// fails to arrive or decode).
    pub fn remove(&self, key: &K) -> Result<Option<V>, MapError> {
        let req = Request::new().part(key)?;
        Self::found(self.call(op::REMOVE, 0, &req)?)
    }

    /// Whether `key` has a value.
    ///
    /// # Errors
    /// As [`insert`](Self::insert).
    pub fn contains_key(&self, key: &K) -> Result<bool, MapError> {
        let req = Request::new().part(key)?;
        Ok(self.call(op::CONTAINS, 0, &req)?.0 != 0)
    }

    /// The number of entries.
    ///
    /// # Errors
    /// [`MapError::Hub`].
    pub fn len(&self) -> Result<usize, MapError> {
        let n = self.call(op::LEN, 0, &Request::new())?.0;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Whether the map has no entries.
    ///
    /// # Errors
    /// [`MapError::Hub`].
    pub fn is_empty(&self) -> Result<bool, MapError> {
        self.len().map(|n| n == 0)
    }

    /// Removes every entry.
    ///
    /// # Errors
    /// [`MapError::Hub`].
    pub fn clear(&self) -> Result<(), MapError> {
        self.call(op::CLEAR, 0, &Request::new()).map(drop)
    }

    /// The parts of a snapshot of `what` (1 keys, 2 values, 3 both).
    fn snapshot(&self, what: u64) -> Result<Vec<u8>, MapError> {
        self.call(op::SNAPSHOT, what, &Request::new())
            .map(|(_, out)| out)
    }

    /// Every value, at one moment (in no particular order).
    ///
    /// # Errors
    /// As [`keys`](Self::keys).
    pub fn values(&self) -> Result<Vec<V>, MapError> {
        let out = self.snapshot(2)?;
        let parts = parts::split(&out).ok_or(MapError::Hub(QueueError::Protocol))?;
        parts.into_iter().map(decode).collect()
    }

    /// Sets `key` to `value` unless it has a value already (Python's
    /// `setdefault`): `None` if it inserted, else the current value, left
    /// as it was.
    ///
    /// # Errors
    /// As [`insert`](Self::insert).
    pub fn insert_if_absent(&self, key: &K, value: &V) -> Result<Option<V>, MapError> {
        let req = Request::new().part(key)?.part(value)?;
        Self::found(self.call(op::INSERT_IF_ABSENT, 0, &req)?)
    }

    /// If `key`'s value is `current` (`None`: absent), makes it `new`
    /// (`None`: removes it) and returns `Ok(Ok(()))`; otherwise changes
    /// nothing and returns `Ok(Err(actual))`. Values are compared by their
    /// encoded bytes. Any update is a loop around it:
    ///
    /// ```
    /// use procpool::SharedMap;
    ///
    /// let m = SharedMap::<&'static str, Vec<u32>>::new();
    /// let mut seen = m.get(&"log").unwrap();
    /// loop {
    ///     let mut next = seen.clone().unwrap_or_default();
    ///     next.push(7);
    ///     match m.compare_and_swap(&"log", seen.as_ref(), Some(&next)).unwrap() {
    ///         Ok(()) => break,
    ///         Err(actual) => seen = actual, // someone else changed it: retry
    ///     }
    /// }
    /// assert_eq!(m.get(&"log").unwrap(), Some(vec![7]));
    /// ```
    ///
    /// # Errors
    /// As [`insert`](Self::insert).
    pub fn compare_and_swap(
        &self,
        key: &K,
        current: Option<&V>,
        new: Option<&V>,
    ) -> Result<Result<(), Option<V>>, MapError> {
        let mut req = Request::new().part(key)?;
        if let Some(c) = current {
            req = req.part(c)?;
        }
        if let Some(n) = new {
            req = req.part(n)?;
        }
        let arg = u64::from(current.is_some()) | (u64::from(new.is_some()) << 1);
        match self.call(op::COMPARE_AND_SWAP, arg, &req)? {
            (1, _) => Ok(Ok(())),
            (0, _) => Ok(Err(None)),
            (_, actual) => Ok(Err(Some(decode(&actual)?))),
        }
    }
}

/// Snapshots that decode keys (which must then be owned).
impl<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> SharedMap<K, V> {
    /// Every key, at one moment (in no particular order).
    ///
    /// # Errors
    /// [`MapError::AnswerTooLarge`], [`MapError::Decode`],
    /// [`MapError::Hub`].
    pub fn keys(&self) -> Result<Vec<K>, MapError> {
        let out = self.snapshot(1)?;
        let parts = parts::split(&out).ok_or(MapError::Hub(QueueError::Protocol))?;
        parts.into_iter().map(decode).collect()
    }

    /// Every entry, at one moment (in no particular order): Python's
    /// `dict(d.items())`.
    ///
    /// # Errors
    /// As [`keys`](Self::keys).
    pub fn items(&self) -> Result<Vec<(K, V)>, MapError> {
        let out = self.snapshot(3)?;
        let parts = parts::split(&out).ok_or(MapError::Hub(QueueError::Protocol))?;
        let (keys, values): (Vec<_>, Vec<_>) = parts.chunks(2).map(|kv| (kv[0], kv.get(1))).unzip();
        keys.into_iter()
            .zip(values)
            .map(|(k, v)| {
                let v = v.ok_or(MapError::Hub(QueueError::Protocol))?;
                Ok((decode(k)?, decode(v)?))
            })
            .collect()
    }
}

impl<K: Serialize, V: MapInteger> SharedMap<K, V> {
    /// Adds `delta` to `key`'s value (an absent key counts as 0), in the
    /// hub, atomically; returns the previous value (as
    /// [`AtomicU64::fetch_add`](std::sync::atomic::AtomicU64::fetch_add)).
    ///
    /// # Errors
    /// [`MapError::Overflow`] (nothing changed), [`MapError::NotAnInteger`],
    /// and as [`insert`](Self::insert).
    pub fn fetch_add(&self, key: &K, delta: V) -> Result<V, MapError> {
        let req = Request::new().part(key)?.part(&delta)?;
        decode(&self.call(op::FETCH_ADD, V::TAG, &req)?.1)
    }
}

/// What a handle looks like on the wire.
#[derive(Serialize, Deserialize)]
struct Wire {
    /// The id of the hub that holds the map.
    hub: u64,
    id: u64,
    /// The token of the pin this handle's serialisation took.
    pin: u64,
}

impl<K, V> Serialize for SharedMap<K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (hub, pin) = match &self.place {
            Place::Local(store) => (hub::hub_id(), store.pin()),
            Place::Remote { id, client, .. } => {
                // The map lives until the receiver holds it, even if this
                // handle drops first (frames reach the hub in order).
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
            id: self.place.id(),
            pin,
        }
        .serialize(s)
    }
}

impl<'de, K, V> Deserialize<'de> for SharedMap<K, V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Wire { hub, id, pin } = Wire::deserialize(d)?;
        let place = match store::MAPS.arrive(hub, id, pin).map_err(D::Error::custom)? {
            Arrival::Here(store) => Place::Local(store),
            Arrival::Upstream(client) => {
                let held = client.hold(id, false, pin).map_err(D::Error::custom)?;
                Place::Remote {
                    id,
                    client,
                    _held: Arc::new(held),
                }
            }
        };
        Ok(SharedMap {
            place,
            _types: PhantomData,
        })
    }
}

/// Whether this process's hub holds the map `id` (see
/// [`SharedMap::id`]). For tests: a map is freed once every handle to
/// it, in every process, is gone.
#[doc(hidden)]
pub fn hub_holds(id: u64) -> bool {
    Store::lookup(id).is_some()
}
