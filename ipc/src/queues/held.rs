//! The objects a hub holds besides queues ([`SharedMap`](super::map::SharedMap)s,
//! [`SharedMemory`](super::shared_memory::SharedMemory) buffers,
//! synchronization primitives): one [`Registry`] per family gives out ids,
//! finds an object by id for a request, keeps it alive while handles to it
//! are on their way or held by connections, and forgets it once the last
//! reference is gone.
//!
//! # Lifetime
//!
//! As a queue's (see `hub/lifetime.rs`): an object lives while the hub
//! process holds a reference, a serialised handle is on its way (a *pin*,
//! named by a token and taken by whoever deserialises it, or released
//! when its carrier ends: see `pins.rs`), or a connection holds one (a
//! *hold*, dropped by `UNHOLD` or when the connection ends). While pins
//! or holds exist, the object keeps a reference to itself. (Primitives
//! never pin: they live while a handle exists in the hub process.)
//!
//! # Lock order
//!
//! The registry's map is never held across anything else. An object's
//! lifetime state is taken alone; what it holds has its own locks.

use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};

use super::client::{self, Client};
use super::pins::{self, Pinned, Pins};
use super::wire::op as qop;
use crate::IpcError;
use crate::error::QueueError;
use crate::link::{Dirty, Link};
use crate::proto::Message;
use crate::sync::lock;

/// The objects of one family this process holds, by id.
pub(crate) struct Registry<T: 'static> {
    /// The bits that mark this family's ids (queues count from 1 below
    /// bit 30; maps set bit 30, primitives bit 31, buffers both).
    tag: u64,
    next: AtomicU64,
    objects: LazyLock<Mutex<HashMap<u64, Weak<Held<T>>>>>,
}

impl<T> fmt::Debug for Registry<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry").field("tag", &self.tag).finish()
    }
}

/// One object held by this process: its id, its lifetime, and `T`
/// (reached through `Deref`).
pub(crate) struct Held<T: 'static> {
    id: u64,
    registry: &'static Registry<T>,
    life: Mutex<Life<T>>,
    object: T,
}

struct Life<T: 'static> {
    /// Serialised handles not received yet.
    pins: Pins,
    /// Handle groups held by connections, by link id.
    holds: HashMap<u64, u64>,
    /// The object itself, while pins or holds keep it alive.
    keep: Option<Arc<Held<T>>>,
}

impl<T: fmt::Debug> fmt::Debug for Held<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Held")
            .field("id", &self.id)
            .field("object", &self.object)
            .finish_non_exhaustive()
    }
}

impl<T> Deref for Held<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.object
    }
}

impl<T> Registry<T> {
    /// A registry whose ids carry `tag` (bits 30 and 31 only).
    pub(crate) const fn new(tag: u64) -> Self {
        Registry {
            tag,
            next: AtomicU64::new(0),
            objects: LazyLock::new(Mutex::default),
        }
    }

    /// Registers `object` under a new id: the process id in the high
    /// half, the family's tag, a counter in the low 30 bits.
    pub(crate) fn insert(&'static self, object: T) -> Arc<Held<T>> {
        let n = self.next.fetch_add(1, Ordering::Relaxed) & 0x3FFF_FFFF;
        let held = Arc::new(Held {
            id: (u64::from(std::process::id()) << 32) | self.tag | n,
            registry: self,
            life: Mutex::new(Life {
                pins: Pins::default(),
                holds: HashMap::new(),
                keep: None,
            }),
            object,
        });
        lock(&self.objects).insert(held.id, Arc::downgrade(&held));
        held
    }

    /// The object `id`, if this process holds it.
    pub(crate) fn lookup(&self, id: u64) -> Option<Arc<Held<T>>> {
        lock(&self.objects).get(&id).and_then(Weak::upgrade)
    }

    /// Every object held now (taken out of the registry's lock).
    pub(crate) fn all(&self) -> Vec<Arc<Held<T>>> {
        lock(&self.objects)
            .values()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// Serves one `Message::Hub` for this family: `PIN`, `HOLD` and
    /// `UNHOLD` here, any other op by `serve`; false if `id` names no
    /// object held here.
    pub(crate) fn serve(
        &self,
        link: &Arc<Link>,
        code: u8,
        id: u64,
        payload: &[u8],
        serve: impl FnOnce(&Arc<Held<T>>),
    ) -> bool {
        let Some(held) = self.lookup(id) else {
            return false;
        };
        match code {
            qop::PIN | qop::HOLD | qop::UNHOLD => {
                held.life_op(link.id(), code, pins::from_payload(payload));
            }
            _ => serve(&held),
        }
        true
    }

    /// A connection ended: the handles it held let go of their objects.
    pub(crate) fn disconnect(&self, link_id: u64) {
        for held in self.all() {
            held.change(|life| {
                life.holds.remove(&link_id);
            });
        }
    }

    /// A handle to object `id` of hub `hub` arrives in this process: the
    /// object itself (taking over the pin `pin` its sender took) if this
    /// process is that hub, else the connection to it.
    ///
    /// # Errors
    /// `NoSuchQueue` if this hub no longer holds it, `Unreachable` if it
    /// lives in a hub this process does not reach.
    pub(crate) fn arrive(&self, hub: u64, id: u64, pin: u64) -> Result<Arrival<T>, QueueError> {
        if hub == super::hub::hub_id() {
            let held = self.lookup(id).ok_or(QueueError::NoSuchQueue { id })?;
            held.receive(pin);
            return Ok(Arrival::Here(held));
        }
        let client = client::client().ok_or(QueueError::Unreachable { id, hub })?;
        if client.upstream_hub()? != hub {
            return Err(QueueError::Unreachable { id, hub });
        }
        Ok(Arrival::Upstream(client))
    }
}

/// Where an arriving handle's object is (see [`Registry::arrive`]).
pub(crate) enum Arrival<T: 'static> {
    /// Held by this process.
    Here(Arc<Held<T>>),
    /// Held by the hub this worker is connected to.
    Upstream(&'static Arc<Client>),
}

impl<T> Held<T> {
    /// The object's id, as handles carry it.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Applies `change`, then keeps or releases the self-reference
    /// (dropped once the state is unlocked: it may be the last reference).
    fn change(self: &Arc<Self>, change: impl FnOnce(&mut Life<T>)) {
        let mut life = lock(&self.life);
        change(&mut life);
        let released = if !life.pins.is_empty() || !life.holds.is_empty() {
            if life.keep.is_none() {
                life.keep = Some(Arc::clone(self));
            }
            None
        } else {
            life.keep.take()
        };
        drop(life);
        drop(released);
    }

    /// A handle to this object was deserialised here: it takes its pin.
    pub(crate) fn receive(self: &Arc<Self>, token: u64) {
        self.change(|l| l.pins.take(token));
    }

    /// `PIN` or `HOLD` (of the pin `token`), or `UNHOLD`, from connection
    /// `link_id`.
    pub(crate) fn life_op(self: &Arc<Self>, link_id: u64, code: u8, token: u64) {
        self.change(|life| match code {
            qop::PIN => life.pins.pin(token, false),
            qop::HOLD => {
                life.pins.take(token);
                *life.holds.entry(link_id).or_default() += 1;
            }
            _ => {
                if let Some(n) = life.holds.get_mut(&link_id) {
                    *n -= 1;
                    if *n == 0 {
                        life.holds.remove(&link_id);
                    }
                }
            }
        });
    }
}

impl<T: Send + Sync> Held<T> {
    /// A handle to this object is being serialised here: returns the
    /// token of its pin (owned by the `carry` running on this thread, if
    /// any).
    pub(crate) fn pin(self: &Arc<Self>) -> u64 {
        let token = pins::token(true);
        self.change(|l| l.pins.pin(token, false));
        let owner: Weak<Held<T>> = Arc::downgrade(self);
        pins::carried(owner, token);
        token
    }
}

impl<T: Send + Sync> Pinned for Held<T> {
    fn release_pin(self: Arc<Self>, token: u64) {
        self.change(|l| {
            l.pins.release(token);
        });
    }
}

impl<T> Drop for Held<T> {
    fn drop(&mut self) {
        let mut objects = lock(&self.registry.objects);
        if objects.get(&self.id).is_some_and(|w| w.strong_count() == 0) {
            objects.remove(&self.id);
        }
    }
}

/// Writes one reply to request `req` (none to a one-way request, `req`
/// 0) and marks the link to be flushed.
///
/// # Errors
/// The link refused the frame (too large for it, or closed); nothing
/// was written.
pub(crate) fn reply(
    link: &Arc<Link>,
    req: u64,
    code: u8,
    value: u64,
    payload: &[u8],
    dirty: &mut Dirty,
) -> Result<(), IpcError> {
    if req == 0 {
        return Ok(());
    }
    let msg = Message::Reply {
        req,
        status: code,
        value,
        payload,
    };
    link.write(&msg)?;
    dirty.mark(link);
    Ok(())
}
