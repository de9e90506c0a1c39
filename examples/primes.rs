//! The main demo: count the primes below 20,000,000 by trial division, split
//! across a pool of worker processes, and compare with one process.
//!
//! ```text
//! cargo run --release --example primes
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)] // a program talks to its user

use std::time::Instant;

use procpool::{Pool, Registry, Task};

/// Counts the primes in `[start, end)`.
const COUNT_PRIMES: Task<(u64, u64), u64> = Task::new("count_primes");

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n % 2 == 0 {
        return n == 2;
    }
    let mut d = 3;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

fn count_primes((start, end): (u64, u64)) -> u64 {
    (start..end).filter(|&n| is_prime(n)).count() as u64
}

fn main() -> anyhow::Result<()> {
    // First: in a worker this serves COUNT_PRIMES and never returns.
    procpool::init(Registry::new().task(COUNT_PRIMES, count_primes));

    let limit: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20_000_000);
    let step = 100_000;
    let ranges: Vec<(u64, u64)> = (0..limit)
        .step_by(step as usize)
        .map(|s| (s, (s + step).min(limit)))
        .collect();

    let started = Instant::now();
    let pool = Pool::builder().chunk_size(1).build()?;
    let counts = pool.map(COUNT_PRIMES, ranges.iter().copied())?;
    let pooled: u64 = counts.iter().sum();
    let pool_time = started.elapsed();
    let workers = pool.workers();
    drop(pool);

    let started = Instant::now();
    let single: u64 = ranges.iter().copied().map(count_primes).sum();
    let single_time = started.elapsed();

    anyhow::ensure!(
        pooled == single,
        "pool counted {pooled}, one process {single}"
    );
    println!("primes below {limit}: {pooled}");
    println!(
        "pool of {workers} workers: {:.2} s (start-up included)",
        pool_time.as_secs_f64()
    );
    println!("single process:    {:.2} s", single_time.as_secs_f64());
    println!(
        "speed-up:          {:.2}x",
        single_time.as_secs_f64() / pool_time.as_secs_f64()
    );
    Ok(())
}
