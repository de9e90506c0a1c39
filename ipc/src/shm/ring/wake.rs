//! Eventcounts: sleeping on "not empty", "not full" and "all done" without
//! a syscall per item.
//!
//! The word's bit 0 says "a sleeper is armed"; the other bits count wakes.
//! A sleeper arms the bit, re-checks its condition, then sleeps on the
//! word's armed value. A waker, after changing the ring's state, looks at
//! the word: only when the bit is set does it try to clear it (bumping the
//! counter), and only the waker whose compare-exchange cleared it makes the
//! wake syscall. Every access here and the state changes it guards are
//! `SeqCst`, so either the waker sees the bit or the sleeper's re-check
//! sees the new state (the Dekker pattern); a bit cleared between the
//! re-check and the sleep makes the sleep return at once (value changed).

use std::sync::atomic::Ordering::{Relaxed, SeqCst};
#[cfg(not(all(test, loom)))]
use std::time::Instant;

use super::layout::AtomicU32;

const ARMED: u32 = 1;

/// Wakes the sleepers on `word`, if any are armed.
pub(in crate::shm) fn notify(word: &AtomicU32) {
    let w = word.load(SeqCst);
    if w & ARMED != 0
        && word
            .compare_exchange(w, (w & !ARMED).wrapping_add(2), SeqCst, Relaxed)
            .is_ok()
    {
        #[cfg(not(all(test, loom)))]
        crate::sys::futex::wake_all(word);
    }
}

/// Arms `word`; returns the value to sleep on. Re-check, then `sleep`.
#[cfg(not(all(test, loom)))]
pub(in crate::shm) fn arm(word: &AtomicU32) -> u32 {
    word.fetch_or(ARMED, SeqCst) | ARMED
}

/// Sleeps while `word` is `armed`, until woken or `deadline`. Returns
/// `false` when the deadline had already passed.
#[cfg(not(all(test, loom)))]
pub(in crate::shm) fn sleep(word: &AtomicU32, armed: u32, deadline: Option<Instant>) -> bool {
    let timeout = match deadline {
        None => None,
        Some(d) => match d.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Some(left),
            _ => return false,
        },
    };
    crate::sys::futex::wait(word, armed, timeout);
    true
}
