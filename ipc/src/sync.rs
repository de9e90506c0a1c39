//! Locking helpers used across procpool's crates.
//!
//! A lock poisoned by a panic on another thread is still used: the data
//! behind procpool's locks stays consistent between statements, and one
//! panicking caller must not take the whole pool down. Waits on a
//! condition variable take an optional deadline.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// Locks `m`, ignoring poisoning.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `cv` once, until notified (or spuriously woken) or `deadline`
/// (`None`: no limit). Returns `Err` with the guard, without waiting, when
/// the deadline has already passed; callers loop on their condition.
///
/// ```
/// use std::sync::{Condvar, Mutex};
/// use std::time::{Duration, Instant};
/// use procpool_ipc::sync::{lock, wait_until};
///
/// let (m, cv) = (Mutex::new(false), Condvar::new());
/// let deadline = Some(Instant::now() + Duration::from_millis(10));
/// let mut ready = lock(&m);
/// while !*ready {
///     ready = match wait_until(&cv, ready, deadline) {
///         Ok(g) => g,
///         Err(_) => break, // timed out
///     };
/// }
/// ```
///
/// # Errors
/// The deadline had passed.
pub fn wait_until<'a, T>(
    cv: &Condvar,
    guard: MutexGuard<'a, T>,
    deadline: Option<Instant>,
) -> Result<MutexGuard<'a, T>, MutexGuard<'a, T>> {
    match deadline {
        None => Ok(cv.wait(guard).unwrap_or_else(PoisonError::into_inner)),
        Some(d) => match d.checked_duration_since(Instant::now()) {
            None => Err(guard),
            Some(left) if left.is_zero() => Err(guard),
            Some(left) => Ok(cv
                .wait_timeout(guard, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0),
        },
    }
}
