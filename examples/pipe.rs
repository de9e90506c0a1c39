//! Ping-pong over a duplex pipe between the parent and a child process.
//!
//! ```text
//! cargo run --release --example pipe
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)] // a program talks to its user

use std::time::Instant;

use procpool::{Pipe, PipeEnd, Process, Registry, Task};

/// Answers each ping `n` with pong `n + 1` until the pipe closes.
const PONG: Task<PipeEnd<u64, u64>, u64> = Task::new("pong");

fn pong(end: PipeEnd<u64, u64>) -> u64 {
    let mut answered = 0;
    while let Ok(n) = end.recv() {
        end.send(n + 1).expect("send");
        answered += 1;
    }
    answered
}

fn main() -> anyhow::Result<()> {
    procpool::init(Registry::new().task(PONG, pong));

    let (mine, theirs) = Pipe::duplex::<u64, u64>();
    let child = Process::spawn(PONG, theirs)?;
    let rounds = 10_000u64;
    let started = Instant::now();
    let mut n = 0;
    for _ in 0..rounds {
        mine.send(n)?;
        n = mine.recv()?;
    }
    let per = started.elapsed() / u32::try_from(rounds)?;
    let pid = child.pid();
    mine.close()?;
    let answered = child.join()?;
    anyhow::ensure!(n == rounds && answered == rounds);
    println!(
        "{rounds} round trips, {per:?} each (pid {} <-> pid {pid})",
        std::process::id()
    );
    Ok(())
}
