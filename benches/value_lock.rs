//! The cost of a [`Value`]'s lock word, on whichever OS this runs.
//!
//! ```text
//! cargo bench --bench value_lock
//! # under Wine (the Windows fallback wait: spin, yield, then sleep):
//! CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=wine \
//!     cargo bench --bench value_lock --target x86_64-pc-windows-gnu
//! ```
//!
//! Prints three lines: uncontended lock + unlock in one process (the
//! compare-and-swap fast path), 4 worker processes incrementing one value
//! under its lock (contended: waiters sleep on the word, through
//! `futex(2)` on Linux, `_umtx_op` on FreeBSD, the fallback elsewhere),
//! and the time from a release to a waiting process holding the lock
//! (the hand-off latency the fallback's sleeps add), over 20 hand-offs.
#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use std::time::{Duration, Instant};

use procpool::{Pool, Registry, SimpleQueue, Task, Value};

/// `n` times: lock, load, store + 1, unlock.
const INCREMENT: Task<(Value<u64>, u64), ()> = Task::new("bench_increment");
/// Says it is ready, then takes the lock (held by the master) and returns
/// when it got it (system clock, ns since the Unix epoch).
const WAIT_FOR_LOCK: Task<(Value<u64>, SimpleQueue<()>), u64> = Task::new("bench_wait_for_lock");

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn main() -> anyhow::Result<()> {
    procpool::init(
        Registry::new()
            .task(INCREMENT, |(v, n)| {
                for _ in 0..n {
                    let _g = v.lock().expect("lock");
                    v.store(v.load() + 1);
                }
            })
            .task(WAIT_FOR_LOCK, |(v, ready)| {
                ready.put(()).expect("ready");
                let _g = v.lock().expect("lock");
                now_ns()
            }),
    );

    let v = Value::new(0u64)?;
    let n = 1_000_000u32;
    let start = Instant::now();
    for _ in 0..n {
        drop(v.lock().ok());
    }
    let per = start.elapsed() / n;
    println!("uncontended lock+unlock: {per:?} each");

    let (workers, each) = (4u64, 50_000u64);
    let pool = Pool::new(workers as usize)?;
    let v = Value::new(0u64)?;
    pool.map(INCREMENT, vec![(v.clone(), 1)])?; // workers started
    let start = Instant::now();
    pool.map_chunked(INCREMENT, (0..workers).map(|_| (v.clone(), each)), 1)?;
    let took = start.elapsed();
    anyhow::ensure!(v.load() == workers * each + 1, "lost updates: {}", v.load());
    println!(
        "{workers} processes x {each} increments under the lock: {took:?} ({:.0} locks/s)",
        (workers * each) as f64 / took.as_secs_f64()
    );

    let mut handoffs = Vec::new();
    for _ in 0..20 {
        let ready = SimpleQueue::new();
        let g = v.lock().ok();
        let res = pool.submit(WAIT_FOR_LOCK, (v.clone(), ready.clone()))?;
        ready.get()?;
        // The worker is (about to be) waiting on the word.
        std::thread::sleep(Duration::from_millis(1));
        let released = now_ns();
        drop(g);
        let acquired = res.wait()?;
        handoffs.push(Duration::from_nanos(acquired.saturating_sub(released)));
    }
    handoffs.sort();
    println!(
        "release to a waiting process holding the lock: median {:?}, max {:?}",
        handoffs[handoffs.len() / 2],
        handoffs[handoffs.len() - 1]
    );
    Ok(())
}
