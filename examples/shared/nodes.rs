//! The task and the report shared by `slurm.rs` and `one_program.rs`: two
//! ways of starting workers on a cluster, one job.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::ensure;
use procpool::{Pool, Task};

/// The square of its input, the Slurm node that computed it, and the
/// worker's pid.
pub(crate) const SQUARE_ON: Task<u64, (u64, String, u32)> = Task::new("square_on");

/// The task: `SLURMD_NODENAME` names the node ("local" outside Slurm).
pub(crate) fn square_on(x: u64) -> (u64, String, u32) {
    let node = std::env::var("SLURMD_NODENAME").unwrap_or_else(|_| "local".into());
    (x * x, node, std::process::id())
}

/// Squares 0..1000 on the pool's workers, in chunks of 10; prints how many
/// items each node ran and on how many workers, then "all items done".
///
/// A hundred chunks for a handful of workers: each worker gets some (a
/// job's chunks take turns among idle workers), so each node shows up in
/// the report.
#[allow(clippy::print_stdout)] // a program talks to its user
pub(crate) fn square_and_report(pool: &Pool) -> anyhow::Result<()> {
    let results = pool.map_chunked(SQUARE_ON, 0..1000u64, 10)?;
    let mut per_node: BTreeMap<String, (usize, BTreeSet<u32>)> = BTreeMap::new();
    for (i, (square, node, pid)) in results.into_iter().enumerate() {
        ensure!(square == (i as u64) * (i as u64));
        let (items, workers) = per_node.entry(node).or_default();
        *items += 1;
        workers.insert(pid);
    }
    for (node, (items, workers)) in &per_node {
        let s = if workers.len() == 1 { "" } else { "s" };
        println!("{node}: {items} items ({} worker{s})", workers.len());
    }
    println!("all items done");
    Ok(())
}
