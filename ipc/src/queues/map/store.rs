//! The hub side of a [`SharedMap`](super::SharedMap): the entries, encoded,
//! what keeps them alive, and one function per operation that both the
//! hub process's own handles and remote requests go through, so the two
//! cannot disagree.
//!
//! # Lifetime
//!
//! As a queue's (see `hub/lifetime.rs`): the map lives while the hub
//! process holds a handle, a serialised handle is on its way (a *pin*,
//! taken by whoever deserialises it), or a connection holds one (a
//! *hold*, dropped by `UNHOLD` or when the connection ends). While pins
//! or holds exist, the map keeps a reference to itself.
//!
//! # Lock order
//!
//! A map's state, then a link's outbox (replies are only appended to it).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};

use super::parts;
use super::{op, status};
use crate::IpcError;
use crate::link::{Dirty, Link};
use crate::proto::Message;
use crate::queues::wire::{op as qop, status as qstatus};
use crate::sync::lock;

/// Map ids: the process id in the high half, bit 30 set (queues count
/// from 1 below it, synchronization primitives set bit 31).
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// The maps this process holds, by id.
static REGISTRY: LazyLock<Mutex<HashMap<u64, Weak<Store>>>> = LazyLock::new(Mutex::default);

/// One map held by this process.
#[derive(Debug)]
pub(crate) struct Store {
    pub(crate) id: u64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Encoded key → encoded value.
    entries: HashMap<Vec<u8>, Vec<u8>>,
    /// Serialised handles not received yet.
    pins: u64,
    /// Handle groups held by connections, by link id.
    holds: HashMap<u64, u64>,
    /// The map itself, while pins or holds keep it alive.
    keep: Option<Keep>,
}

/// The map's reference to itself.
struct Keep(#[allow(dead_code)] Arc<Store>);

impl fmt::Debug for Keep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keep")
    }
}

/// An answer: `value` and payload, or a status other than `OK`.
pub(crate) type Answer = Result<(u64, Vec<u8>), u8>;

impl Store {
    pub(crate) fn new() -> Arc<Store> {
        let n = NEXT_ID.fetch_add(1, Ordering::Relaxed) & 0x3FFF_FFFF;
        let store = Arc::new(Store {
            id: (u64::from(std::process::id()) << 32) | 0x4000_0000 | n,
            state: Mutex::default(),
        });
        lock(&REGISTRY).insert(store.id, Arc::downgrade(&store));
        store
    }

    pub(crate) fn lookup(id: u64) -> Option<Arc<Store>> {
        lock(&REGISTRY).get(&id).and_then(Weak::upgrade)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Keeps or releases the self-reference after a change; what to drop
    /// once the state is unlocked (it may be the last reference).
    fn settle(self: &Arc<Self>, state: &mut State) -> Option<Keep> {
        if state.pins > 0 || !state.holds.is_empty() {
            if state.keep.is_none() {
                state.keep = Some(Keep(Arc::clone(self)));
            }
            None
        } else {
            state.keep.take()
        }
    }

    /// A handle to this map is being serialised here.
    pub(crate) fn pin(self: &Arc<Self>) {
        let mut state = self.lock();
        state.pins += 1;
        let released = self.settle(&mut state);
        drop(state);
        drop(released);
    }

    /// A handle to this map was deserialised here: it takes a pin.
    pub(crate) fn receive(self: &Arc<Self>) {
        let mut state = self.lock();
        state.pins = state.pins.saturating_sub(1);
        let released = self.settle(&mut state);
        drop(state);
        drop(released);
    }

    /// `PIN`, `HOLD` or `UNHOLD` from connection `link_id`.
    pub(super) fn life_op(self: &Arc<Self>, link_id: u64, code: u8) {
        let mut state = self.lock();
        match code {
            qop::PIN => state.pins += 1,
            qop::HOLD => {
                state.pins = state.pins.saturating_sub(1);
                *state.holds.entry(link_id).or_default() += 1;
            }
            _ => {
                if let Some(n) = state.holds.get_mut(&link_id) {
                    *n -= 1;
                    if *n == 0 {
                        state.holds.remove(&link_id);
                    }
                }
            }
        }
        let released = self.settle(&mut state);
        drop(state);
        drop(released);
    }

    /// Connection `link_id` ended: its holds go.
    fn disconnect(self: &Arc<Self>, link_id: u64) {
        let mut state = self.lock();
        state.holds.remove(&link_id);
        let released = self.settle(&mut state);
        drop(state);
        drop(released);
    }

    /// One operation, atomically (see the protocol table in `map.rs`).
    pub(crate) fn exec(&self, code: u8, arg: u64, payload: &[u8]) -> Answer {
        let parts = parts::split(payload).ok_or(qstatus::BAD_REQUEST)?;
        let mut state = self.lock();
        let entries = &mut state.entries;
        let found = |v: Option<Vec<u8>>| match v {
            Some(v) => (1, v),
            None => (0, Vec::new()),
        };
        match (code, parts.as_slice()) {
            (op::INSERT, [k, v]) => Ok(found(entries.insert(k.to_vec(), v.to_vec()))),
            (op::GET, [k]) => Ok(found(entries.get(*k).cloned())),
            (op::REMOVE, [k]) => Ok(found(entries.remove(*k))),
            (op::CONTAINS, [k]) => Ok((u64::from(entries.contains_key(*k)), Vec::new())),
            (op::LEN, []) => Ok((entries.len() as u64, Vec::new())),
            (op::CLEAR, []) => {
                let n = entries.len() as u64;
                entries.clear();
                Ok((n, Vec::new()))
            }
            (op::SNAPSHOT, []) => {
                let (keys, values) = (arg & 1 != 0, arg & 2 != 0);
                let mut out = Vec::new();
                for (k, v) in entries.iter() {
                    if keys {
                        parts::push(&mut out, k);
                    }
                    if values {
                        parts::push(&mut out, v);
                    }
                }
                Ok((entries.len() as u64, out))
            }
            (op::INSERT_IF_ABSENT, [k, v]) => match entries.get(*k) {
                Some(current) => Ok((1, current.clone())),
                None => {
                    entries.insert(k.to_vec(), v.to_vec());
                    Ok((0, Vec::new()))
                }
            },
            (op::COMPARE_AND_SWAP, [k, rest @ ..]) => {
                let (has_current, has_new) = (arg & 1 != 0, arg & 2 != 0);
                let (current, new) = match (has_current, has_new, rest) {
                    (true, true, [c, n]) => (Some(*c), Some(*n)),
                    (true, false, [c]) => (Some(*c), None),
                    (false, true, [n]) => (None, Some(*n)),
                    (false, false, []) => (None, None),
                    _ => return Err(qstatus::BAD_REQUEST),
                };
                let actual = entries.get(*k).map(Vec::as_slice);
                if actual != current {
                    return Ok(match actual {
                        Some(a) => (2, a.to_vec()),
                        None => (0, Vec::new()),
                    });
                }
                match new {
                    Some(n) => entries.insert(k.to_vec(), n.to_vec()),
                    None => entries.remove(*k),
                };
                Ok((1, Vec::new()))
            }
            (op::FETCH_ADD, [k, delta]) => {
                let current = entries.get(*k).map(Vec::as_slice);
                let (previous, sum) = super::integer::add(arg, current, delta)?;
                entries.insert(k.to_vec(), sum);
                Ok((0, previous))
            }
            _ => Err(qstatus::BAD_REQUEST),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let mut reg = lock(&REGISTRY);
        if reg.get(&self.id).is_some_and(|w| w.strong_count() == 0) {
            reg.remove(&self.id);
        }
    }
}

/// Writes one reply; one that is too large for the link (a snapshot, or
/// a value inserted over a link with a larger limit) becomes `TOO_LARGE`
/// with `value` = its length, so the requester is answered either way.
fn reply(link: &Arc<Link>, req: u64, code: u8, value: u64, payload: &[u8], dirty: &mut Dirty) {
    if req == 0 {
        return;
    }
    let msg = Message::Reply {
        req,
        status: code,
        value,
        payload,
    };
    let written = match link.write(&msg) {
        Err(IpcError::FrameTooLarge { .. }) => link.write(&Message::Reply {
            req,
            status: status::TOO_LARGE,
            value: payload.len() as u64,
            payload: &[],
        }),
        other => other,
    };
    if written.is_ok() {
        dirty.mark(link);
    }
}

/// Serves one `Message::Hub` for a map; false if `id` names none held here.
pub(crate) fn serve(
    link: &Arc<Link>,
    req: u64,
    code: u8,
    id: u64,
    arg: u64,
    payload: &[u8],
    dirty: &mut Dirty,
) -> bool {
    let Some(held) = Store::lookup(id) else {
        return false;
    };
    match code {
        qop::PIN | qop::HOLD | qop::UNHOLD => held.life_op(link.id(), code),
        _ => match held.exec(code, arg, payload) {
            Ok((value, out)) => reply(link, req, qstatus::OK, value, &out, dirty),
            Err(code) => reply(link, req, code, 0, &[], dirty),
        },
    }
    true
}

/// A connection ended: the handles it held let go of their maps.
pub(crate) fn disconnect(link_id: u64) {
    let maps: Vec<Arc<Store>> = lock(&REGISTRY).values().filter_map(Weak::upgrade).collect();
    for held in maps {
        held.disconnect(link_id);
    }
}
