//! A handle's wire form and its (de)serialisation: which hub holds the
//! queue, how the handle keeps the queue alive while it travels, and
//! where it cannot go (see [`Queue`]'s Lifetime and Reach sections).

use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Handle, Queue, QueueError};
use crate::queues::client;
use crate::queues::hub::{self, Core};
use crate::queues::pins;
use crate::queues::wire::op;

/// What a handle looks like on the wire.
#[derive(Serialize, Deserialize)]
struct Wire {
    /// The id of the hub that holds the queue.
    hub: u64,
    id: u64,
    /// The queue's capacity (`None`: unbounded).
    capacity: Option<u64>,
    /// A pipe's sending end (see [`Writer`]).
    writer: bool,
    /// The token of the pin this handle's serialisation took, which its
    /// receiver takes (see `queues/pins.rs`).
    pin: u64,
    /// The queue has a lane (`queues/lane.rs`; not a pipe's, whose ends
    /// use it themselves).
    lane: bool,
}

/// Marks a handle as a pipe's sending end: the hub ends the pipe's
/// direction when the last one goes (see the hub's `lifetime` docs).
#[derive(Debug)]
pub(super) enum Writer {
    /// In the hub process: counted by the queue until this drops.
    Local(Arc<Core>),
    /// In a worker: the handle's hold carries the mark.
    Remote,
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Writer::Local(core) = self {
            core.writer_dropped();
        }
    }
}

/// Marks a handle as a pipe's receiving end in the hub process: counted
/// by the queue until this drops (a lane's `READERS_GONE`).
#[derive(Debug)]
pub(super) struct Reader(pub(super) Arc<Core>);

impl Drop for Reader {
    fn drop(&mut self) {
        self.0.reader_dropped();
    }
}

impl<T> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let writer = self.writer.is_some();
        let (hub, capacity, pin, lane) = match &self.handle {
            Handle::Local(core) => (
                hub::hub_id(),
                core.capacity,
                core.pin(writer),
                core.queue_lane().is_some(),
            ),
            Handle::Remote {
                id,
                hub,
                capacity,
                client,
                lane,
                ..
            } => {
                // The queue lives until the receiver holds it, even if
                // this handle drops first (a receipt that reaches the hub
                // before this PIN, through a shared ring, cancels it).
                let pin = pins::token(false);
                client
                    .oneway(op::PIN, *id, u64::from(writer), &pin.to_le_bytes())
                    .map_err(serde::ser::Error::custom)?;
                (*hub, *capacity, pin, *lane)
            }
        };
        Wire {
            hub,
            id: self.handle.id(),
            capacity: capacity.map(|c| c as u64),
            writer,
            pin,
            lane,
        }
        .serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Wire {
            hub,
            id,
            capacity,
            writer,
            pin,
            lane,
        } = Wire::deserialize(d)?;
        if hub == hub::hub_id() {
            let core =
                Core::lookup(id).ok_or_else(|| D::Error::custom(QueueError::NoSuchQueue { id }))?;
            let reader = core.receive(writer, pin);
            return Ok(Queue {
                writer: writer.then(|| Arc::new(Writer::Local(Arc::clone(&core)))),
                reader: reader.then(|| Arc::new(Reader(Arc::clone(&core)))),
                handle: Handle::Local(core),
                lane: Arc::default(),
                _items: PhantomData,
            });
        }
        let unreachable = || D::Error::custom(QueueError::Unreachable { id, hub });
        let client = client::client().ok_or_else(unreachable)?;
        if client.upstream_hub().map_err(D::Error::custom)? != hub {
            return Err(unreachable());
        }
        let held = client.hold(id, writer, pin).map_err(D::Error::custom)?;
        Ok(Queue {
            handle: Handle::Remote {
                id,
                hub,
                capacity: capacity.map(|c| usize::try_from(c).unwrap_or(usize::MAX)),
                client,
                lane,
                _held: Arc::new(held),
            },
            writer: writer.then(|| Arc::new(Writer::Remote)),
            reader: None,
            lane: Arc::default(),
            _items: PhantomData,
        })
    }
}
