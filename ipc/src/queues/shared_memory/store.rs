//! The hub side of a [`SharedMemory`](super::SharedMemory): the segment,
//! what keeps it alive (as a map's: `map/store.rs`), and `OPEN`.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};

use super::{NO_CHANNEL, OPEN, SEND_FAILED};
use crate::link::{Dirty, Link};
use crate::proto::Message;
use crate::queues::wire::{op as qop, status as qstatus};
use crate::shm::Segment;
use crate::sync::lock;

/// Buffer ids: the process id in the high half, bits 30 and 31 set
/// (queues count below, maps set bit 30, synchronization primitives 31).
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// The buffers this process holds, by id.
static REGISTRY: LazyLock<Mutex<HashMap<u64, Weak<Store>>>> = LazyLock::new(Mutex::default);

/// One buffer held by this process.
#[derive(Debug)]
pub(crate) struct Store {
    pub(crate) id: u64,
    pub(crate) seg: Segment,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Serialised handles not received yet.
    pins: u64,
    /// Handle groups held by connections, by link id.
    holds: HashMap<u64, u64>,
    /// The buffer itself, while pins or holds keep it alive.
    keep: Option<Keep>,
}

/// The buffer's reference to itself.
struct Keep(#[allow(dead_code)] Arc<Store>);

impl fmt::Debug for Keep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keep")
    }
}

impl Store {
    pub(crate) fn new(seg: Segment) -> Arc<Store> {
        let n = NEXT_ID.fetch_add(1, Ordering::Relaxed) & 0x3FFF_FFFF;
        let store = Arc::new(Store {
            id: (u64::from(std::process::id()) << 32) | 0xC000_0000 | n,
            seg,
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

    /// Applies `change`, then keeps or releases the self-reference (dropped
    /// once the state is unlocked: it may be the last reference).
    fn change(self: &Arc<Self>, change: impl FnOnce(&mut State)) {
        let mut state = self.lock();
        change(&mut state);
        let released = if state.pins > 0 || !state.holds.is_empty() {
            if state.keep.is_none() {
                state.keep = Some(Keep(Arc::clone(self)));
            }
            None
        } else {
            state.keep.take()
        };
        drop(state);
        drop(released);
    }

    /// A handle to this buffer is being serialised here.
    pub(crate) fn pin(self: &Arc<Self>) {
        self.change(|s| s.pins += 1);
    }

    /// A handle to this buffer was deserialised here: it takes a pin.
    pub(crate) fn receive(self: &Arc<Self>) {
        self.change(|s| s.pins = s.pins.saturating_sub(1));
    }

    /// `PIN`, `HOLD` or `UNHOLD` from connection `link_id`.
    fn life_op(self: &Arc<Self>, link_id: u64, code: u8) {
        self.change(|state| match code {
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
        });
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

fn reply(link: &Arc<Link>, req: u64, code: u8, value: u64, dirty: &mut Dirty) {
    if req == 0 {
        return;
    }
    let msg = Message::Reply {
        req,
        status: code,
        value,
        payload: &[],
    };
    if link.write(&msg).is_ok() {
        dirty.mark(link);
    }
}

/// Serves one `Message::Hub` for a buffer; false if `id` names none held
/// here.
pub(crate) fn serve(link: &Arc<Link>, req: u64, code: u8, id: u64, dirty: &mut Dirty) -> bool {
    let Some(held) = Store::lookup(id) else {
        return false;
    };
    match code {
        qop::PIN | qop::HOLD | qop::UNHOLD => held.life_op(link.id(), code),
        OPEN => {
            // The descriptor goes first, so it is there (or on its way in
            // the kernel) when the requester reads the reply.
            let sent = link.shm().map(|shm| {
                held.seg
                    .try_clone_handle()
                    .map_err(std::io::Error::other)
                    .and_then(|h| shm.send_object(id, &h))
            });
            match sent {
                Some(Ok(())) => reply(link, req, qstatus::OK, held.seg.len() as u64, dirty),
                Some(Err(_)) => reply(link, req, SEND_FAILED, 0, dirty),
                None => reply(link, req, NO_CHANNEL, 0, dirty),
            }
        }
        _ => reply(link, req, qstatus::BAD_REQUEST, 0, dirty),
    }
    true
}

/// A connection ended: the handles it held let go of their buffers.
pub(crate) fn disconnect(link_id: u64) {
    let all: Vec<Arc<Store>> = lock(&REGISTRY).values().filter_map(Weak::upgrade).collect();
    for held in all {
        held.change(|s| {
            s.holds.remove(&link_id);
        });
    }
}
