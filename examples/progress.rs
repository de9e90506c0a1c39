//! A progress bar over a long streamed job: `imap_unordered` yields each
//! result as it finishes, and `indicatif` draws the bar.
//!
//! ```text
//! cargo run --release --example progress            # 200,000 tasks
//! cargo run --release --example progress -- 5000000
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)] // a program talks to its user

use indicatif::{ProgressBar, ProgressStyle};
use procpool::{Pool, Registry, Task};

/// Sum of the digits of `n` squared, a few microseconds of work.
const DIGITS: Task<u64, u64> = Task::new("digits");

fn digits(n: u64) -> u64 {
    let mut sq = u128::from(n) * u128::from(n);
    let mut sum = 0;
    while sq > 0 {
        sum += (sq % 10) as u64;
        sq /= 10;
    }
    sum
}

fn main() -> anyhow::Result<()> {
    procpool::init(Registry::new().task(DIGITS, digits));

    let total: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(200_000);
    let pool = Pool::builder().handle_ctrlc().build()?;
    let bar = ProgressBar::new(total).with_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} tasks  {per_sec}  eta {eta}",
    )?);
    let mut sum = 0u64;
    // The input is produced lazily: memory stays flat however large `total` is.
    for result in pool.imap_unordered(DIGITS, 0..total)? {
        sum += result?;
        bar.inc(1);
    }
    bar.finish();
    let stats = pool.stats();
    println!(
        "digit sum {sum}; {} tasks completed by {} workers",
        stats.completed,
        pool.workers()
    );
    Ok(())
}
