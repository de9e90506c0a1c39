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

use std::time::Duration;

use anyhow::ensure;
use procpool::{Pool, Registry};

#[path = "shared/nodes.rs"]
mod nodes;

use nodes::{SQUARE_ON, square_and_report, square_on};

fn main() -> anyhow::Result<()> {
    // Every rank but 0 serves here, and never returns.
    procpool::init(Registry::new().task(SQUARE_ON, square_on));
    let (pool, workers) = match procpool::one_program() {
        Some(me) => (Pool::builder().build()?, me.workers()),
        None => (Pool::new(2)?, 2),
    };
    ensure!(
        pool.wait_for_workers(workers, Duration::from_secs(60)),
        "only {} of {workers} workers joined",
        pool.stats().workers_alive
    );
    square_and_report(&pool)
}
