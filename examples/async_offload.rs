//! An async service offloading CPU-heavy work to worker processes: 1,000
//! concurrent requests on a current-thread tokio runtime, each awaiting one
//! pool task, while a ticker on the same thread records its worst delay.
//!
//! It runs the same requests three ways and prints each one's throughput
//! and worst tick delay:
//!
//! - `await`: `pool.submit(TASK, x)?.await`. No thread waits: the pool's
//!   own threads wake the futures, so the runtime thread stays free.
//! - `spawn_blocking`: the usual workaround, a blocking `apply` on tokio's
//!   blocking pool: one OS thread per pending request.
//! - `blocking on the runtime` (a tenth of the requests): what not to do;
//!   every `apply` stalls the runtime, and the ticker with it.
//!
//! ```text
//! cargo run --release --example async_offload [-- REQUESTS]
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)] // a program talks to its user

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use procpool::{Pool, Registry, Task};

/// Counts the primes in `[start, start + 2000)`: a little CPU work.
const PRIMES: Task<u64, u64> = Task::new("primes");

fn primes(start: u64) -> u64 {
    (start..start + 2000)
        .filter(|&n| n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0))
        .count() as u64
}

/// Ticks every millisecond until `stop`; the worst lateness of a tick.
async fn ticker(stop: Arc<AtomicBool>) -> Duration {
    let period = Duration::from_millis(1);
    let mut worst = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) {
        let asked = Instant::now();
        tokio::time::sleep(period).await;
        worst = worst.max(asked.elapsed().saturating_sub(period));
    }
    worst
}

/// Runs `requests` through `serve` with the ticker alongside: requests
/// per second and the worst tick delay.
async fn measure<F, Fut>(requests: u64, serve: F) -> anyhow::Result<(f64, Duration)>
where
    F: FnOnce(u64) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let stop = Arc::new(AtomicBool::new(false));
    let tick = tokio::spawn(ticker(Arc::clone(&stop)));
    // Let the ticker start before the load does.
    tokio::task::yield_now().await;
    let started = Instant::now();
    let served = serve(requests).await;
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let worst = tick.await?;
    served?;
    Ok((requests as f64 / took.as_secs_f64(), worst))
}

fn main() -> anyhow::Result<()> {
    // First: in a worker this serves PRIMES and never returns.
    procpool::init(Registry::new().task(PRIMES, primes));
    let requests: u64 = match std::env::args().nth(1) {
        Some(n) => n.parse().context("REQUESTS must be a number")?,
        None => 1000,
    };
    let pool = Arc::new(Pool::new(2)?);
    let expected: u64 = (0..requests).map(|i| primes(i * 2000)).sum();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;

    rt.block_on(async {
        // Warm-up, so that neither mode pays for the workers' first pages.
        pool.submit(PRIMES, 0)?.await?;

        let p = Arc::clone(&pool);
        let (rate, worst) = measure(requests, |n| async move {
            let mut set = tokio::task::JoinSet::new();
            for i in 0..n {
                let pending = p.submit(PRIMES, i * 2000)?;
                set.spawn(async move { pending.await });
            }
            let mut sum = 0;
            while let Some(r) = set.join_next().await {
                sum += r??;
            }
            ensure!(sum == expected, "await: sum {sum}, expected {expected}");
            Ok(())
        })
        .await?;
        println!(
            "await:                   {requests} requests, {rate:8.0} req/s, worst tick delay {worst:?}"
        );

        let p = Arc::clone(&pool);
        let (rate, worst) = measure(requests, |n| async move {
            let mut set = tokio::task::JoinSet::new();
            for i in 0..n {
                let p = Arc::clone(&p);
                set.spawn_blocking(move || p.apply(PRIMES, i * 2000));
            }
            let mut sum = 0;
            while let Some(r) = set.join_next().await {
                sum += r??;
            }
            ensure!(sum == expected, "spawn_blocking: sum {sum}, expected {expected}");
            Ok(())
        })
        .await?;
        println!(
            "spawn_blocking + apply:  {requests} requests, {rate:8.0} req/s, worst tick delay {worst:?}"
        );

        let few = (requests / 10).max(1);
        let p = Arc::clone(&pool);
        let (rate, worst) = measure(few, |n| async move {
            for i in 0..n {
                // Blocks the runtime thread: the ticker cannot run meanwhile.
                p.apply(PRIMES, i * 2000)?;
            }
            Ok(())
        })
        .await?;
        println!(
            "blocking on the runtime: {few} requests, {rate:8.0} req/s, worst tick delay {worst:?} (what not to do)"
        );
        Ok::<_, anyhow::Error>(())
    })?;
    let stats = pool.stats();
    ensure!(stats.failed == 0 && stats.in_flight == 0, "{stats:?}");
    Ok(())
}
