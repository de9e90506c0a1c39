//! One process writes, another reads; the parent only wires them together.
//! Neither blocks the other on exit: the writer may finish and exit long
//! before the reader has read, and nothing it put is lost.
//!
//! ```text
//! cargo run --example queue_reader_writer
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)] // a program talks to its user

use procpool::{Process, Queue, Registry, Task};

/// Puts `n` numbers, then `None`; returns their sum.
const WRITER: Task<(Queue<Option<u64>>, u64), u64> = Task::new("writer");
/// Gets numbers until `None`; returns (count, sum).
const READER: Task<Queue<Option<u64>>, (u64, u64)> = Task::new("reader");

fn writer((queue, n): (Queue<Option<u64>>, u64)) -> u64 {
    for i in 0..n {
        queue.put(Some(i)).expect("put");
    }
    queue.put(None).expect("put");
    (0..n).sum()
}

fn reader(queue: Queue<Option<u64>>) -> (u64, u64) {
    let (mut count, mut sum) = (0, 0);
    while let Some(x) = queue.get().expect("get") {
        count += 1;
        sum += x;
    }
    (count, sum)
}

fn main() -> anyhow::Result<()> {
    procpool::init(Registry::new().task(WRITER, writer).task(READER, reader));

    let n = 100_000;
    let queue = Queue::new();
    let w = Process::spawn(WRITER, (queue.clone(), n))?;
    let r = Process::spawn(READER, queue.clone())?;
    let written = w.join()?;
    let (count, sum) = r.join()?;
    anyhow::ensure!(count == n && sum == written, "lost or duplicated items");
    println!("writer put {n} items, reader got {count}; sums match ({sum})");
    Ok(())
}
