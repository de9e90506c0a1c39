//! JoinableQueue accounting: a counter of unfinished work and a way to wait
//! for it to reach zero.
//!
//! Every chunk the pool accepts calls [`Accounting::add`]; every chunk that
//! ends — with results, with an error, or cancelled before dispatch — calls
//! [`Accounting::done`] exactly once (that is its `task_done`). `join` waits
//! for the counter to reach zero. `done` is called in one place only,
//! [`finish`](crate::dispatch::finish), where a chunk leaves the books; a
//! chunk reaches `finish` once, because whoever calls it has just taken the
//! chunk out of the queue or the lane that held it, under the dispatch lock.

use procpool_ipc::sync::{lock, wait_until};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

#[derive(Debug, Default)]
pub(crate) struct Accounting {
    unfinished: Mutex<u64>,
    zero: Condvar,
}

impl Accounting {
    pub(crate) fn add(&self, n: u64) {
        *lock(&self.unfinished) += n;
    }

    pub(crate) fn done(&self, n: u64) {
        let mut unfinished = lock(&self.unfinished);
        debug_assert!(*unfinished >= n, "task_done called more often than add");
        *unfinished = unfinished.saturating_sub(n);
        if *unfinished == 0 {
            self.zero.notify_all();
        }
    }

    #[cfg(test)]
    pub(crate) fn unfinished(&self) -> u64 {
        *lock(&self.unfinished)
    }

    /// Waits until nothing is unfinished, `deadline` passes (returns false)
    /// or `stop()` turns true (checked whenever woken; returns false).
    pub(crate) fn join(&self, deadline: Option<Instant>, stop: impl Fn() -> bool) -> bool {
        let mut unfinished = lock(&self.unfinished);
        while *unfinished > 0 {
            if stop() {
                return false;
            }
            unfinished = match wait_until(&self.zero, unfinished, deadline) {
                Ok(g) => g,
                Err(_) => return false,
            };
        }
        true
    }

    /// Wakes every waiter so it re-checks its `stop` condition.
    pub(crate) fn wake_all(&self) {
        let _guard = lock(&self.unfinished);
        self.zero.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn join_waits_for_the_last_done() {
        let acc = Arc::new(Accounting::default());
        acc.add(3);
        let soon = Some(Instant::now() + Duration::from_millis(20));
        assert!(
            !acc.join(soon, || false),
            "join must not return while work is unfinished"
        );
        let worker = {
            let acc = Arc::clone(&acc);
            std::thread::spawn(move || {
                acc.done(1);
                acc.done(2);
            })
        };
        assert!(acc.join(Some(Instant::now() + Duration::from_secs(10)), || false));
        worker.join().unwrap();
        assert_eq!(acc.unfinished(), 0);
    }

    #[test]
    fn stop_condition_ends_join() {
        let acc = Accounting::default();
        acc.add(1);
        assert!(!acc.join(None, || true));
    }
}
