//! Waiting on a 32-bit word in shared memory, across processes.
//!
//! - `wait(word, expected, timeout)`: sleeps while `word` holds `expected`,
//!   until woken by `wake_all`, `timeout` passes, or spuriously. Returns at
//!   once if the word differs. Callers re-check their condition in a loop.
//! - `wake_all(word)`: wakes every process and thread in `wait` on `word`.
//!
//! Backends: Linux `futex(2)` (`FUTEX_WAIT`/`FUTEX_WAKE` *without*
//! `FUTEX_PRIVATE_FLAG`, so the wait key is the physical page and works in
//! a `MAP_SHARED` mapping across processes); FreeBSD `_umtx_op` with
//! `UMTX_OP_WAIT_UINT`/`UMTX_OP_WAKE` (the non-private variants).
//!
//! # The fallback (Windows, macOS)
//!
//! Their address waits are process-local (`WaitOnAddress`) or too recent
//! (`os_sync_wait_on_address`, macOS 14.4), so `wait` polls the word:
//! it first yields its time slice [`YIELDS`] times (`SwitchToThread`,
//! `sched_yield`: a holder on the same core runs, and a short critical
//! section is over before anyone sleeps), then sleeps with naps growing
//! from 20 µs to 1 ms; `wake_all` does nothing, so a release costs no
//! system call.
//!
//! Decision: a kernel object per word (a named or duplicated event or
//! semaphore beside each segment) would wake a sleeper at once, but every
//! shared word would carry a second handle to hand to every process, and
//! every release would pay a `SetEvent` call. The cost of polling is
//! latency only, measured with `cargo bench --bench value_lock` (under
//! Wine 8, debug build, 2 busy cores): 4 processes incrementing one
//! `Value` under its lock run at 1.8 M locks/s (Linux futex, same
//! build: 0.58 M/s, one wake call per release); a process waiting on a
//! lock held 1 ms gets it 0.05 to 1.2 ms after the release (median over
//! 20; the nap's phase), up to 3.6 ms, where the Linux futex takes
//! 41 µs. Wakes are rare behind an eventcount, so rings pay this as
//! latency, not throughput while the data flows.

use std::sync::atomic::AtomicU32;
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
use std::sync::atomic::Ordering;
use std::time::Duration;

#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(timespec);
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a live, aligned u32 for the duration of the call
    // (the reference guarantees it); FUTEX_WAIT only reads it and compares
    // with `expected`. `ts_ptr` is null or points at `ts`, alive until the
    // call returns. The result (woken, EAGAIN, ETIMEDOUT, EINTR) needs no
    // handling: callers re-check their condition.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn wake_all(word: &AtomicU32) {
    // SAFETY: `word` is a live, aligned u32; FUTEX_WAKE does not access
    // memory, it only wakes waiters keyed on the address.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
    }
}

#[cfg(target_os = "freebsd")]
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let mut t = timeout.map(|d| libc::_umtx_time {
        _timeout: timespec(d),
        _flags: 0, // relative
        _clockid: libc::CLOCK_MONOTONIC as u32,
    });
    let (size, ptr) = match t.as_mut() {
        Some(t) => (
            std::mem::size_of::<libc::_umtx_time>(),
            t as *mut libc::_umtx_time,
        ),
        None => (0, std::ptr::null_mut()),
    };
    // SAFETY: `word` is a live, aligned u32 for the call; UMTX_OP_WAIT_UINT
    // reads it and compares with `expected`. For this op `uaddr` carries
    // the size of the timeout object and `uaddr2` points at it (or is null
    // with size 0); `t` lives until the call returns. Errors (timeout,
    // EINTR) need no handling: callers re-check their condition.
    unsafe {
        libc::_umtx_op(
            word.as_ptr().cast(),
            libc::UMTX_OP_WAIT_UINT,
            libc::c_ulong::from(expected),
            size as *mut libc::c_void,
            ptr.cast(),
        );
    }
}

#[cfg(target_os = "freebsd")]
pub(crate) fn wake_all(word: &AtomicU32) {
    // SAFETY: `word` is a live, aligned u32; UMTX_OP_WAKE only wakes
    // waiters keyed on the address and reads no memory.
    unsafe {
        libc::_umtx_op(
            word.as_ptr().cast(),
            libc::UMTX_OP_WAKE,
            libc::c_int::MAX as libc::c_ulong,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
    }
}

#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
// `c_long` is 32 bits on 32-bit targets, where the conversion can fail.
#[allow(clippy::unnecessary_fallible_conversions)]
fn timespec(d: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
        // Below 10^9, so it fits every platform's `c_long`.
        tv_nsec: libc::c_long::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// Fallback: how many times `wait` yields its time slice before it
/// starts sleeping (see the module docs).
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
const YIELDS: u32 = 64;

#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let start = std::time::Instant::now();
    let mut yields = 0;
    let mut nap = Duration::from_micros(20);
    while word.load(Ordering::Acquire) == expected {
        let left = match timeout {
            Some(t) => match t.checked_sub(start.elapsed()) {
                Some(left) if !left.is_zero() => left,
                _ => return,
            },
            None => nap,
        };
        if yields < YIELDS {
            // SwitchToThread / sched_yield: back at once when no other
            // thread wants this core.
            yields += 1;
            std::thread::yield_now();
            continue;
        }
        std::thread::sleep(nap.min(left));
        nap = (nap * 2).min(Duration::from_millis(1));
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
pub(crate) fn wake_all(_word: &AtomicU32) {}
