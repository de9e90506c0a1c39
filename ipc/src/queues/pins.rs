//! Pins named by token, and the carriers that own them.
//!
//! Serialising a handle *pins* its object in the hub (see
//! `hub/lifetime.rs`), so that the object outlives the sender's handles
//! while the bytes travel. Each pin has a token, written into the
//! handle's wire form; whoever deserialises the handle takes that pin by
//! its token (`HOLD` names it). A pin is thus released exactly once, and
//! a stale or repeated receipt (a retried task) takes nothing that
//! another handle still needs.
//!
//! A pin taken in the hub process while [`carry`] runs belongs to that
//! call's [`Carried`]: the pool keeps it with the job whose inputs held
//! the handle, and when the job ends, the pins whose handles no worker
//! received go (a task that never started, a `Process` killed before it
//! read its arguments). Pins taken elsewhere (a handle put on a queue, a
//! handle serialised in a worker) last until received, or until the hub
//! process exits.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Weak};

/// Set in the tokens of pins taken in the hub process itself: those are
/// in the ledger before their handle's bytes exist, so a receipt of an
/// unknown one is a repeat, never early.
const LOCAL: u64 = 1 << 63;

/// Most early receipts remembered per object (see [`Pins::take`]).
const EARLY_MAX: usize = 4096;

/// A fresh token: a random base per process plus a counter, so tokens
/// from different processes do not meet (never 0, which names no pin).
pub(crate) fn token(local: bool) -> u64 {
    static NEXT: LazyLock<AtomicU64> = LazyLock::new(|| {
        let mut b = [0u8; 8];
        AtomicU64::new(getrandom::fill(&mut b).map_or_else(
            |_| u64::from(std::process::id()) << 32,
            |()| u64::from_le_bytes(b),
        ))
    });
    let t = (NEXT.fetch_add(1, Ordering::Relaxed) & !LOCAL).max(1);
    if local { t | LOCAL } else { t }
}

/// The token written in a `PIN` or `HOLD` request's payload (0: none).
pub(crate) fn from_payload(payload: &[u8]) -> u64 {
    payload
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// One object's pins: serialised handles on their way.
#[derive(Debug, Default)]
pub(crate) struct Pins {
    /// Not received yet: token → whether the handle is a pipe's writer.
    open: HashMap<u64, bool>,
    /// Pins per kind in `open`: `[others, writers]`.
    counts: [u64; 2],
    /// Tokens received before their `PIN` came: a handle serialised in a
    /// worker and sent through a shared ring can reach its receiver, and
    /// its `HOLD` the hub, before the sender's `PIN` does. The late `PIN`
    /// then takes nothing.
    early: HashSet<u64>,
}

impl Pins {
    /// A handle with `token` is on its way.
    pub(crate) fn pin(&mut self, token: u64, writer: bool) {
        if token == 0 || self.early.remove(&token) {
            return;
        }
        if self.open.insert(token, writer).is_none() {
            self.counts[usize::from(writer)] += 1;
        }
    }

    /// The handle with `token` was received.
    pub(crate) fn take(&mut self, token: u64) {
        if !self.release(token) && token != 0 && token & LOCAL == 0 {
            // A bound against a peer naming tokens at will: past it, a
            // late `PIN` may keep the object until the hub process exits.
            if self.early.len() >= EARLY_MAX {
                self.early.clear();
            }
            self.early.insert(token);
        }
    }

    /// The carrier of `token` ended: its pin goes if it is still open.
    /// True if it was.
    pub(crate) fn release(&mut self, token: u64) -> bool {
        match self.open.remove(&token) {
            Some(writer) => {
                self.counts[usize::from(writer)] -= 1;
                true
            }
            None => false,
        }
    }

    /// Open pins of handles that are (`true`) or are not pipe writers.
    pub(crate) fn count(&self, writer: bool) -> u64 {
        self.counts[usize::from(writer)]
    }

    /// Whether no pin is open.
    pub(crate) fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

/// An object that can be pinned: releases one pin whose carrier ended.
pub(crate) trait Pinned: Send + Sync {
    /// Releases the pin `token`, if its handle was not received.
    fn release_pin(self: Arc<Self>, token: u64);
}

type Entry = (Weak<dyn Pinned>, u64);

thread_local! {
    /// The pins taken on this thread inside [`carry`], if one runs.
    static CARRYING: RefCell<Option<Vec<Entry>>> = const { RefCell::new(None) };
}

/// Records a pin just taken in this process for the [`carry`] running on
/// this thread, if any.
pub(crate) fn carried<P: Pinned + 'static>(owner: Weak<P>, token: u64) {
    CARRYING.with(|c| {
        if let Some(v) = c.borrow_mut().as_mut() {
            v.push((owner as Weak<dyn Pinned>, token));
        }
    });
}

/// Runs `f`, which serialises handles in the hub process, and returns
/// the pins it took, to be released when their carrier ends.
///
/// ```
/// use procpool_ipc::codec;
/// use procpool_ipc::queue::{Queue, hub_holds};
///
/// let q: Queue<u32> = Queue::new();
/// let id = q.id();
/// let mut bytes = Vec::new();
/// let (encoded, carried) = procpool_ipc::carry(|| codec::encode_into(&q, &mut bytes));
/// encoded?;
/// drop(q);
/// // The queue lives while its handle's bytes may still be received...
/// assert!(hub_holds(id));
/// drop(carried);
/// // ...and no longer once their carrier is gone.
/// assert!(!hub_holds(id));
/// # Ok::<(), procpool_ipc::IpcError>(())
/// ```
pub fn carry<R>(f: impl FnOnce() -> R) -> (R, Carried) {
    /// Puts back the enclosing call's list (adding what a panicking `f`
    /// took, for that call to own).
    struct Restore(Option<Vec<Entry>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let outer = self.0.take();
            CARRYING.with(|c| {
                let mut c = c.borrow_mut();
                let inner = c.take();
                *c = match (outer, inner) {
                    (Some(mut outer), Some(inner)) => {
                        outer.extend(inner);
                        Some(outer)
                    }
                    (outer, _) => outer,
                };
            });
        }
    }
    let restore = Restore(CARRYING.with(|c| c.replace(Some(Vec::new()))));
    let r = f();
    let taken = CARRYING.with(|c| c.borrow_mut().take()).unwrap_or_default();
    drop(restore);
    (r, Carried(taken))
}

/// The pins a [`carry`] took: released when this drops, each unless its
/// handle was received by then. Keep it as long as the bytes may still be
/// delivered (the pool keeps it with the job).
#[derive(Default)]
pub struct Carried(Vec<Entry>);

impl Carried {
    /// Adds `other`'s pins to these.
    pub fn absorb(&mut self, mut other: Carried) {
        self.0.append(&mut other.0);
    }

    /// Whether it holds no pin.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Carried {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Carried({} pins)", self.0.len())
    }
}

impl Drop for Carried {
    fn drop(&mut self) {
        for (owner, token) in self.0.drain(..) {
            if let Some(owner) = owner.upgrade() {
                owner.release_pin(token);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_goes_once_whoever_comes_first() {
        let mut p = Pins::default();
        let (a, b) = (token(true), token(false));
        p.pin(a, false);
        p.pin(b, true);
        assert_eq!((p.count(false), p.count(true)), (1, 1));
        p.take(a);
        p.take(a); // a repeat (a retried task) takes nothing more
        assert!(!p.release(a));
        assert!(p.release(b));
        assert!(p.is_empty());
        assert!(p.early.is_empty(), "local tokens are never early");
    }

    #[test]
    fn a_receipt_before_its_pin_cancels_the_late_pin() {
        let mut p = Pins::default();
        let t = token(false);
        p.take(t);
        p.pin(t, true);
        assert!(p.is_empty());
        assert_eq!(p.count(true), 0);
        assert!(p.early.is_empty());
    }

    #[test]
    fn nested_carries_each_own_their_pins() {
        use crate::codec;
        use crate::queues::queue::{Queue, hub_holds};
        let (a, b) = (Queue::<u8>::new(), Queue::<u8>::new());
        let (ida, idb) = (a.id(), b.id());
        let mut buf = Vec::new();
        let (inner, outer) = carry(|| {
            codec::encode_into(&a, &mut buf).unwrap();
            carry(|| codec::encode_into(&b, &mut buf).unwrap()).1
        });
        drop((a, b));
        assert!(
            hub_holds(ida) && hub_holds(idb),
            "pinned while on their way"
        );
        drop(inner);
        assert!(
            !hub_holds(idb) && hub_holds(ida),
            "the inner carry owned b's pin only"
        );
        drop(outer);
        assert!(!hub_holds(ida), "the outer carry owned a's");
    }

    #[test]
    fn tokens_differ_and_say_where_they_were_taken() {
        let (a, b) = (token(true), token(false));
        assert_ne!(a & !LOCAL, b & !LOCAL);
        assert!(a & LOCAL != 0 && b & LOCAL == 0 && b != 0);
        assert_eq!(from_payload(&a.to_le_bytes()), a);
        assert_eq!(from_payload(&[1, 2]), 0);
    }
}
