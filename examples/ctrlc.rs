//! Graceful Ctrl-C: a long job of one-second tasks that stops calmly.
//!
//! ```text
//! cargo run --example ctrlc            # then press Ctrl-C once, or twice
//! ```
//!
//! The first Ctrl-C (or SIGTERM) stops dispatching, lets the running tasks
//! finish within the grace period, prints how many tasks finished and exits
//! with status 130. A second Ctrl-C kills the workers at once; the program
//! exits with 130 as well. The workers print nothing: they ignore Ctrl-C and
//! leave the decision to the master.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a program talks to its user

use std::io::Write;
use std::time::Duration;

use procpool::{Error, Pool, Registry, Task};

/// Works for about a second, returns its input.
const WORK: Task<u64, u64> = Task::new("work");

fn work(i: u64) -> u64 {
    std::thread::sleep(Duration::from_secs(1));
    i
}

fn main() -> anyhow::Result<()> {
    procpool::init(Registry::new().task(WORK, work));

    let tasks: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(60);
    let pool = Pool::builder()
        .workers(2)
        .chunk_size(1)
        .grace_period(Duration::from_secs(3))
        .handle_ctrlc()
        .build()?;
    let mut done = 0u64;
    for result in pool.imap(WORK, 0..tasks)? {
        match result {
            Ok(_) => {
                done += 1;
                let mut out = std::io::stdout().lock();
                writeln!(out, "done {done}/{tasks}")?;
                out.flush()?;
            }
            // After a Ctrl-C the tasks that were running finish (and are
            // counted above); the first input that never ran says
            // `Interrupted`, or `Terminated` after a second Ctrl-C.
            Err(Error::Interrupted | Error::Terminated) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if procpool::interrupted() {
        eprintln!("interrupted: {done} of {tasks} tasks finished; stopping");
        // Graceful: running tasks get the grace period (a second Ctrl-C
        // cuts it short), then every worker is reaped.
        drop(pool);
        std::process::exit(procpool::EXIT_INTERRUPTED);
    }
    println!("all {tasks} tasks finished");
    Ok(())
}
