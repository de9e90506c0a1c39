//! Pools on a real Slurm cluster (issue 12): workers launched with `srun`
//! over two nodes, a wrong key refused, nothing left behind. `ci/slurm.sh
//! test` starts a two-node cluster on this machine and runs these; without
//! Slurm (no `sinfo`, or no idle node) every test prints "skipped" and
//! passes.
//!
//! The tests run one at a time: each checks that `squeue` is empty after
//! it, which another test's step would spoil.

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use common::*;
use procpool::{Pool, Registry, Srun, Task};

const LIMIT: Duration = Duration::from_secs(120);
const KEY: &str = "a long random key shared out of band";
/// The Slurm node a task ran on, and the worker's pid.
const NODE: Task<u64, (String, u32)> = Task::new("node");

fn registry() -> Registry {
    common::registry().task(NODE, |_| {
        (
            std::env::var("SLURMD_NODENAME").unwrap_or_default(),
            std::process::id(),
        )
    })
}

fn main() {
    procpool::init(registry());
    let mut args = libtest_mimic::Arguments::from_args();
    args.test_threads = Some(1);
    let tests = trials![
        LIMIT;
        srun_launched_workers_run_1000_items_over_both_nodes,
        a_wrong_key_is_refused_under_slurm,
    ];
    libtest_mimic::run(&args, tests).exit();
}

/// Whether a Slurm cluster with an idle node answers here.
fn slurm_here() -> bool {
    Command::new("sinfo")
        .args(["-h", "-o", "%t"])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("idle"))
}

/// Prints "skipped" and returns true when there is no Slurm.
fn skip() -> bool {
    if slurm_here() {
        return false;
    }
    #[allow(clippy::print_stdout)]
    {
        println!("skipped: no Slurm cluster here (ci/slurm.sh start makes one)");
    }
    true
}

/// Waits until `squeue` lists no job.
fn squeue_empty_within(limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let out = Command::new("squeue")
            .args(["-h", "-o", "%i %j %T"])
            .output()?;
        let jobs = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() && jobs.is_empty() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "squeue still lists {jobs:?} after {limit:?}"
        );
        // Polling the queue is the event; the pause paces it.
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn srun_launched_workers_run_1000_items_over_both_nodes() -> anyhow::Result<()> {
    if skip() {
        return Ok(());
    }
    let pool = Pool::builder()
        .launcher(Srun::new(4).args(["--nodes=2", "--overcommit"]))
        .chunk_size(5)
        .build()?;
    ensure!(pool.workers() == 0, "a launcher's pool has no local worker");
    ensure!(
        pool.wait_for_workers(4, Duration::from_secs(60)),
        "srun's workers did not join: {:?}",
        pool.stats()
    );
    let ran = pool.map(NODE, 0..1000u64)?;
    ensure!(ran.len() == 1000);
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for (node, _) in &ran {
        *per_node.entry(node.clone()).or_default() += 1;
    }
    ensure!(
        per_node.contains_key("n1") && per_node.contains_key("n2"),
        "items per node: {per_node:?}"
    );
    let mut pids: Vec<u32> = ran.iter().map(|(_, pid)| *pid).collect();
    pids.sort_unstable();
    pids.dedup();
    drop(pool);
    // The step ends with the pool: nothing queued, no worker left.
    squeue_empty_within(Duration::from_secs(30))?;
    wait_gone(&pids, Duration::from_secs(10))
}

fn a_wrong_key_is_refused_under_slurm() -> anyhow::Result<()> {
    if skip() {
        return Ok(());
    }
    let pool = Pool::builder()
        .workers(0)
        .listen("0.0.0.0:0".parse()?, KEY)
        .build()?;
    let addr = pool.advertised_addr().context("advertised")?.to_owned();
    let wrong = procpool_ipc::remote::hex(b"not the key, but long enough");
    let out = Command::new("srun")
        .args(["--ntasks=1", "--quiet"])
        .arg(std::env::current_exe()?)
        .env(procpool_ipc::remote::LAUNCH_ADDR_ENV, &addr)
        .env(procpool_ipc::remote::LAUNCH_KEY_ENV, wrong)
        .stdin(Stdio::null())
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(70), "srun: {} {err}", out.status);
    ensure!(err.contains("authentication failed"), "stderr: {err}");
    ensure!(pool.stats().workers_alive == 0, "{:?}", pool.stats());
    drop(pool);
    squeue_empty_within(Duration::from_secs(30))
}
