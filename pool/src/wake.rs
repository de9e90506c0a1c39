//! Wakers for the async forms of the pool's waits: [`WakeSlot`] (one
//! waiting future or stream) and [`WakerSet`] (everyone to wake when the
//! pool stops). A leaf: it imports no module of the crate.
//!
//! The threads that finish work today wake them: a reader thread or the
//! supervisor calls `Shared::finish`, which sends the outcome and then
//! wakes the job's slot; `Shared::interrupt` wakes the set. No thread
//! waits on behalf of a future, and nothing polls.
//!
//! Lost wake-ups are avoided the usual way: a future registers its waker
//! first, then checks again for what it waits for; the finishing thread
//! makes the outcome visible first, then wakes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::task::Waker;

use procpool_ipc::sync::lock;

/// The waker of the one task waiting on a job, if any.
#[derive(Debug, Default)]
pub(crate) struct WakeSlot(Mutex<Option<Waker>>);

impl WakeSlot {
    /// Sets the waker to wake next (keeping the old one if it would wake
    /// the same task).
    pub(crate) fn register(&self, waker: &Waker) {
        let mut slot = lock(&self.0);
        match &*slot {
            Some(old) if old.will_wake(waker) => {}
            _ => *slot = Some(waker.clone()),
        }
    }

    /// Wakes the registered task, if any (outside the lock).
    pub(crate) fn wake(&self) {
        let waker = lock(&self.0).take();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Wakers of every pending future or stream of a pool, each under a key,
/// woken all at once when the pool stops.
#[derive(Debug, Default)]
pub(crate) struct WakerSet(Mutex<Wakers>);

#[derive(Debug, Default)]
struct Wakers {
    next: u64,
    map: HashMap<u64, Waker>,
}

impl WakerSet {
    /// Registers (or refreshes) `waker` under `*key`, giving it a key on
    /// first use.
    pub(crate) fn register(&self, key: &mut Option<u64>, waker: &Waker) {
        let mut w = lock(&self.0);
        let k = *key.get_or_insert_with(|| {
            w.next += 1;
            w.next
        });
        match w.map.get(&k) {
            Some(old) if old.will_wake(waker) => {}
            _ => {
                w.map.insert(k, waker.clone());
            }
        }
    }

    /// Forgets the waker under `*key`, if any.
    pub(crate) fn remove(&self, key: &mut Option<u64>) {
        if let Some(k) = key.take() {
            lock(&self.0).map.remove(&k);
        }
    }

    /// Wakes and forgets every waker (outside the lock).
    pub(crate) fn wake_all(&self) {
        let all = std::mem::take(&mut lock(&self.0).map);
        for (_, w) in all {
            w.wake();
        }
    }
}
