//! The parent creates a queue, a reader process gets from it, the parent
//! puts — Python's classic `Queue` + `Process` example.
//!
//! ```text
//! cargo run --example queue_reader
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)] // a program talks to its user

use procpool::{Process, Queue, Registry, Task};

/// Reads messages until the queue is closed; returns how many.
const READER: Task<Queue<String>, usize> = Task::new("reader");

fn reader(queue: Queue<String>) -> usize {
    let mut n = 0;
    // Like a channel: the loop ends once the queue is closed and drained.
    for msg in &queue {
        let msg = msg.expect("reader"); // an item that did not decode, or a lost master
        println!("reader (pid {}) got: {msg}", std::process::id());
        n += 1;
    }
    n
}

fn main() -> anyhow::Result<()> {
    procpool::init(Registry::new().task(READER, reader));

    let queue = Queue::new();
    // The queue handle travels to the reader as its argument.
    let process = Process::spawn(READER, queue.clone())?;
    for i in 0..5 {
        queue.put(format!("message {i} from pid {}", std::process::id()))?;
    }
    queue.close()?; // the reader drains what is left, then sees Closed
    let n = process.join()?;
    println!("the reader got {n} messages");
    Ok(())
}
