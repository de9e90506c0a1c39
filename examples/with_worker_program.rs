//! The master half of a worker-program pair: starts `worker_program` (built
//! next to this example) as its workers instead of re-executing itself.
//!
//! ```text
//! cargo build --examples && cargo run --example with_worker_program
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)] // a program talks to its user

#[path = "shared/tasks.rs"]
mod tasks;

use anyhow::Context;
use procpool::Pool;

fn main() -> anyhow::Result<()> {
    // This master registers no tasks of its own; the worker program does.
    // Cargo builds it next to this example (`.exe` added on Windows).
    let program = procpool::sibling_exe("worker_program")
        .context("build the worker first: cargo build --example worker_program")?;
    let pool = Pool::builder()
        .worker_program(&program)
        .build()
        .with_context(|| format!("starting {}", program.display()))?;
    let steps = pool.map(tasks::COLLATZ, 1..=1_000_000u64)?;
    let (n, most) = steps
        .iter()
        .enumerate()
        .max_by_key(|(_, s)| **s)
        .map(|(i, s)| (i + 1, *s))
        .context("empty input")?;
    println!("below one million, {n} takes the most Collatz steps: {most}");
    Ok(())
}
