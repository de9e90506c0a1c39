//! One-program mode, as `mpiexec -n N python -m mpi4py.futures`: every
//! task of `srun -n N` runs this program; rank 0 is the master, the others
//! join it as its workers. Opt in with `PROCPOOL_ONE_PROGRAM` set to a
//! directory all nodes share (the master leaves its address there):
//!
//! ```text
//! PROCPOOL_ONE_PROGRAM=$PWD srun -n 3 target/debug/examples/one_program
//! ```
//!
//! Run without it, it uses two local workers. Prints how many items each
//! node ran, then "all items done".
#![allow(clippy::print_stdout)] // a program talks to its user

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::ensure;
use procpool::{Pool, Registry, Task};

/// The square of its input, and the Slurm node that computed it.
const SQUARE_ON: Task<u64, (u64, String)> = Task::new("square_on");

fn main() -> anyhow::Result<()> {
    // Every rank but 0 serves here, and never returns.
    procpool::init(Registry::new().task(SQUARE_ON, |x| {
        let node = std::env::var("SLURMD_NODENAME").unwrap_or_else(|_| "local".into());
        (x * x, node)
    }));
    let (pool, workers) = match procpool::one_program() {
        Some(me) => (Pool::builder().build()?, me.workers()),
        None => (Pool::new(2)?, 2),
    };
    ensure!(
        pool.wait_for_workers(workers, Duration::from_secs(60)),
        "only {} of {workers} workers joined",
        pool.stats().workers_alive
    );
    let results = pool.map(SQUARE_ON, 0..1000u64)?;
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for (i, (square, node)) in results.into_iter().enumerate() {
        ensure!(square == (i as u64) * (i as u64));
        *per_node.entry(node).or_default() += 1;
    }
    for (node, n) in &per_node {
        println!("{node}: {n} items");
    }
    println!("all items done");
    Ok(())
}
