//! A producer/consumer pipeline on a `JoinableQueue`: worker processes take
//! jobs and call `task_done`; the producer `join`s until every job is done.
//!
//! ```text
//! cargo run --example joinable
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)] // a program talks to its user

use procpool::{JoinableQueue, Process, Queue, Registry, Task};

/// Takes jobs until `None`, squares them into `results`; returns how many.
const CONSUMER: Task<(JoinableQueue<Option<u64>>, Queue<u64>), u64> = Task::new("consumer");

fn consumer((jobs, results): (JoinableQueue<Option<u64>>, Queue<u64>)) -> u64 {
    let mut done = 0;
    loop {
        // `task_done` is called when `job` is dropped, at the end of each
        // turn (or on the `return`): once the work for it is done.
        let job = jobs.get_guarded().expect("get");
        let Some(x) = *job else {
            return done;
        };
        results.put(x * x).expect("put");
        done += 1;
    }
}

fn main() -> anyhow::Result<()> {
    procpool::init(Registry::new().task(CONSUMER, consumer));

    let jobs = JoinableQueue::new();
    let results = Queue::new();
    let consumers: Vec<_> = (0..3)
        .map(|_| Process::spawn(CONSUMER, (jobs.clone(), results.clone())))
        .collect::<Result<_, _>>()?;
    for x in 1..=1000u64 {
        jobs.put(Some(x))?;
    }
    jobs.join()?; // every job put so far has been processed
    println!("all 1000 jobs done; {} results waiting", results.len()?);
    for _ in &consumers {
        jobs.put(None)?;
    }
    let per: Vec<u64> = consumers
        .into_iter()
        .map(|c| c.join())
        .collect::<Result<_, _>>()?;
    let total: u64 = std::iter::from_fn(|| results.try_get().ok()).sum();
    anyhow::ensure!(total == (1..=1000u64).map(|x| x * x).sum::<u64>());
    println!("jobs per consumer: {per:?}; sum of squares {total}");
    Ok(())
}
