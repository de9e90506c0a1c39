//! A pool whose workers Slurm starts: the master (this program, run in a
//! batch script or at a login node) launches one `srun` step of workers,
//! which are this same program; `procpool::init` makes each of them a
//! remote worker. See `examples/slurm.sbatch` and the README's "Beyond one
//! machine".
//!
//! Usage: `slurm [WORKERS]` (default: `$SLURM_NTASKS`, else 2). Prints
//! how many items each node ran, then "all items done".
#![allow(clippy::print_stdout)] // a program talks to its user

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, ensure};
use procpool::{Pool, Registry, Srun, Task};

/// The square of its input, and the Slurm node that computed it.
const SQUARE_ON: Task<u64, (u64, String)> = Task::new("square_on");

fn main() -> anyhow::Result<()> {
    procpool::init(Registry::new().task(SQUARE_ON, |x| {
        let node = std::env::var("SLURMD_NODENAME").unwrap_or_else(|_| "?".into());
        (x * x, node)
    }));
    let workers: usize = match std::env::args().nth(1) {
        Some(n) => n.parse().context("WORKERS is a number")?,
        None => std::env::var("SLURM_NTASKS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(2),
    };
    // Inside an allocation the step uses it; outside, srun asks for one.
    // `--overcommit` lets the workers share CPUs with the master.
    let pool = Pool::builder()
        .launcher(Srun::new(workers).arg("--overcommit"))
        .build()?;
    println!(
        "master at {}, waiting for {workers} workers",
        pool.advertised_addr().unwrap_or("?")
    );
    ensure!(
        pool.wait_for_workers(workers, Duration::from_secs(120)),
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
