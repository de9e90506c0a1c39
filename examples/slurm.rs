//! A pool whose workers Slurm starts: the master (this program, run in a
//! batch script or at a login node) launches one `srun` step of workers,
//! which are this same program; `procpool::init` makes each of them a
//! remote worker. See `examples/slurm.sbatch` and the README's "Beyond one
//! machine".
//!
//! Usage: `slurm [WORKERS]` (default: `$SLURM_NTASKS`, else 2). Prints
//! how many items each node ran, then "all items done".
#![allow(clippy::print_stdout)] // a program talks to its user

use std::time::Duration;

use anyhow::{Context, ensure};
use procpool::{Pool, Registry, Srun};

#[path = "shared/nodes.rs"]
mod nodes;

use nodes::{SQUARE_ON, square_and_report, square_on};

fn main() -> anyhow::Result<()> {
    procpool::init(Registry::new().task(SQUARE_ON, square_on));
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
    square_and_report(&pool)
}
