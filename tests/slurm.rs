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

/// Set: run as a master that launches 2 workers with `srun`, prints
/// `ready <worker pids>` once they have joined, and waits for stdin to end.
const MASTER_ENV: &str = "PROCPOOL_TEST_SLURM_MASTER";

fn main() {
    procpool::init(registry());
    if std::env::var_os(MASTER_ENV).is_some() {
        let code = match serve_master() {
            Ok(()) => 0,
            Err(e) => {
                #[allow(clippy::print_stderr)]
                {
                    eprintln!("slurm master: {e:#}");
                }
                1
            }
        };
        std::process::exit(code);
    }
    let mut args = libtest_mimic::Arguments::from_args();
    args.test_threads = Some(1);
    let tests = trials![
        LIMIT;
        srun_launched_workers_run_1000_items_over_both_nodes,
        a_wrong_key_is_refused_under_slurm,
        sigkill_of_the_master_leaves_no_step_and_no_worker,
        a_node_down_mid_map_with_retries_completes_without_them_fails_as_lost,
        the_sbatch_example_completes,
        one_program_mode_under_srun_n3,
    ];
    libtest_mimic::run(&args, tests).exit();
}

/// Whether a Slurm controller answers here with some node.
fn slurm_here() -> bool {
    Command::new("sinfo")
        .args(["-h", "-N", "-o", "%t"])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.trim_ascii().is_empty())
}

/// Prints "skipped" and returns true when there is no Slurm. With Slurm,
/// waits until both nodes are idle (a job of the previous test may still
/// be completing): a cluster that stays busy fails the test rather than
/// skipping it.
fn skip() -> anyhow::Result<bool> {
    if slurm_here() {
        wait_idle(Duration::from_secs(30))?;
        return Ok(false);
    }
    #[allow(clippy::print_stdout)]
    {
        println!("skipped: no Slurm cluster here (ci/slurm.sh start makes one)");
    }
    Ok(true)
}

/// A child process killed and reaped when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
    if skip()? {
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
    if skip()? {
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

fn serve_master() -> anyhow::Result<()> {
    use std::io::{BufRead, Write};
    let pool = Pool::builder()
        .launcher(Srun::new(2).arg("--overcommit"))
        .build()?;
    ensure!(
        pool.wait_for_workers(2, Duration::from_secs(60)),
        "no workers"
    );
    let mut pids: Vec<u32> = pool
        .map(NODE, 0..40u64)?
        .into_iter()
        .map(|(_, pid)| pid)
        .collect();
    pids.sort_unstable();
    pids.dedup();
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    writeln!(std::io::stdout(), "ready {}", pids.join(" "))?;
    for line in std::io::stdin().lock().lines() {
        line?;
    }
    Ok(())
}

/// A master killed with SIGKILL cannot clean up: its workers see their
/// connection end and exit, and the step (and `srun`) end with them.
fn sigkill_of_the_master_leaves_no_step_and_no_worker() -> anyhow::Result<()> {
    use std::io::BufRead;
    if skip()? {
        return Ok(());
    }
    let mut master = KillOnDrop(
        Command::new(std::env::current_exe()?)
            .env(MASTER_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?
            .watched(),
    );
    let stdout = master.0.stdout.take().expect("piped");
    let (line, _) = within(
        "the master's workers join",
        Duration::from_secs(60),
        move || {
            let mut line = String::new();
            std::io::BufReader::new(stdout)
                .read_line(&mut line)
                .map(|_| line)
        },
    )?;
    let line = line?;
    let pids: Vec<u32> = line
        .trim()
        .strip_prefix("ready ")
        .with_context(|| format!("master said {line:?}"))?
        .split(' ')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    ensure!(
        pids.len() == 2,
        "the master's 40 items ran on workers {pids:?}, not on both"
    );
    master.0.kill()?;
    master.0.wait()?;
    squeue_empty_within(Duration::from_secs(30))?;
    wait_gone(&pids, Duration::from_secs(10))
}

/// Node n2 set DOWN in the middle of a map over both nodes, with `srun
/// --no-kill` so the step lives on n1: with retries every item completes
/// on the survivors; without them the items that were on n2 fail with
/// `RemoteWorkerLost` (and nothing hangs).
fn a_node_down_mid_map_with_retries_completes_without_them_fails_as_lost() -> anyhow::Result<()> {
    if skip()? {
        return Ok(());
    }
    let result = (|| {
        for retries in [2u32, 0] {
            let pool = Pool::builder()
                .launcher(Srun::new(4).args(["--nodes=2", "--overcommit", "--no-kill"]))
                .chunk_size(1)
                .retries(retries)
                .heartbeat_timeout(Duration::from_secs(3))
                .build()?;
            ensure!(
                pool.wait_for_workers(4, Duration::from_secs(60)),
                "workers did not join"
            );
            // Long enough that n2 goes down while its workers run tasks.
            let mut handles: Vec<_> = (0..24u64)
                .map(|_| pool.submit(SLEEP_PID, 500))
                .collect::<Result<_, _>>()?;
            // Once the first result is in, every worker runs a task.
            ensure!(handles[0].wait_timeout(Duration::from_secs(30)).is_some());
            scontrol(&[
                "update",
                "NodeName=n2",
                "State=DOWN",
                "Reason=procpool-test",
            ])?;
            let mut lost = 0;
            let mut done = 0;
            for mut h in handles {
                // A submit's errors name its input (index 0): look through that.
                match h
                    .wait_timeout(Duration::from_secs(60))
                    .map(|r| r.as_ref().map_err(procpool::Error::inner))
                {
                    Some(Ok(_)) => done += 1,
                    Some(Err(procpool::Error::RemoteWorkerLost { .. })) => lost += 1,
                    other => anyhow::bail!("retries {retries}: unexpected {other:?}"),
                }
            }
            if retries > 0 {
                ensure!(done == 24, "with retries: {done} done, {lost} lost");
            } else {
                ensure!(lost > 0, "without retries nothing was lost ({done} done)");
            }
            drop(pool);
            squeue_empty_within(Duration::from_secs(30))?;
            resume_n2()?;
        }
        Ok(())
    })();
    // Whatever happened, n2 comes back for the next test.
    let _ = resume_n2();
    result
}

fn scontrol(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new("scontrol").args(args).status()?;
    ensure!(status.success(), "scontrol {args:?}: {status}");
    Ok(())
}

/// Brings n2 back (`RESUME` fails when it is back already, with
/// `ReturnToService=2`), then waits until both nodes are idle.
fn resume_n2() -> anyhow::Result<()> {
    let _ = Command::new("scontrol")
        .args(["update", "NodeName=n2", "State=RESUME"])
        .stderr(Stdio::null())
        .status();
    wait_idle(Duration::from_secs(30))
}

/// Waits until both nodes are idle again.
fn wait_idle(limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let out = Command::new("sinfo")
            .args(["-h", "-N", "-o", "%t"])
            .output()?;
        let states = String::from_utf8_lossy(&out.stdout).to_string();
        if states.lines().filter(|s| s.trim() == "idle").count() == 2 {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "nodes not idle: {states}");
        // Polling the node states is the event; the pause paces it.
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `sbatch examples/slurm.sbatch` (the README's example) reaches
/// COMPLETED with exit code 0, its 1000 items counted, and both nodes ran
/// some. (Before dispatch let idle workers take turns, every item ran on
/// the first node's workers to join in 3 of about 20 runs: the tasks end
/// faster than the master submits, and the lowest worker id took each.)
fn the_sbatch_example_completes() -> anyhow::Result<()> {
    if skip()? {
        return Ok(());
    }
    let program = example("slurm")?;
    let dir = temp_dir("sbatch")?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/slurm.sbatch");
    let out = Command::new("sbatch")
        .args(["--wait", "--parsable"])
        .arg(format!("--output={}/%j.out", dir.display()))
        .arg(script)
        .env("PROCPOOL_EXAMPLE", &program)
        .output()?;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let log = std::fs::read_to_string(dir.join(format!("{id}.out"))).unwrap_or_default();
    ensure!(out.status.success(), "sbatch --wait: {} {log}", out.status);
    // `sbatch --wait` may return while the job is still COMPLETING (its
    // steps being cleaned up): wait for the final state.
    let deadline = Instant::now() + Duration::from_secs(30);
    let show = loop {
        let show = Command::new("scontrol")
            .args(["show", "job", &id])
            .output()?;
        let show = String::from_utf8_lossy(&show.stdout).into_owned();
        if !show.contains("JobState=COMPLETING") || Instant::now() >= deadline {
            break show;
        }
        // Polling the job's state is the event; the pause paces it.
        std::thread::sleep(Duration::from_millis(100));
    };
    ensure!(
        show.contains("JobState=COMPLETED") && show.contains("ExitCode=0:0"),
        "job {id}: {show}"
    );
    ensure!(log.contains("all items done"), "{log}");
    // "n1: 378 items (2 workers)", one line per node.
    let per_node: Vec<(&str, usize, usize)> = log
        .lines()
        .filter_map(|l| {
            let (node, rest) = l.split_once(": ")?;
            let (items, workers) = rest.split_once(" items (")?;
            let workers = workers
                .strip_suffix(" workers)")
                .or(workers.strip_suffix(" worker)"))?;
            Some((node, items, workers))
        })
        .map(|(node, items, workers)| anyhow::Ok((node, items.parse()?, workers.parse()?)))
        .collect::<anyhow::Result<_>>()?;
    let items: usize = per_node.iter().map(|(_, n, _)| n).sum();
    let workers: usize = per_node.iter().map(|(_, _, w)| w).sum();
    ensure!(items == 1000, "{items} items counted: {log}");
    // Its first 4 chunks go to its 4 workers, idle or not (2 per node here).
    ensure!(
        workers == 4
            && ["n1", "n2"]
                .iter()
                .all(|want| per_node.iter().any(|(node, n, _)| node == want && *n > 0)),
        "job {id} did not run items on both nodes and all 4 workers:\n{log}{show}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    squeue_empty_within(Duration::from_secs(30))
}

/// `srun -n 3 one_program` with `PROCPOOL_ONE_PROGRAM`: rank 0 is the
/// master, ranks 1 and 2 (one per node) its workers.
fn one_program_mode_under_srun_n3() -> anyhow::Result<()> {
    if skip()? {
        return Ok(());
    }
    let program = example("one_program")?;
    let dir = temp_dir("one-program")?;
    let out = Command::new("srun")
        .args(["--ntasks=3", "--nodes=2", "--overcommit", "--quiet"])
        .arg(&program)
        .env(procpool::ONE_PROGRAM_ENV, &dir)
        .stdin(Stdio::null())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "srun: {} {stdout} {stderr}",
        out.status
    );
    ensure!(
        stdout.matches("all items done").count() == 1,
        "only rank 0 is the master: {stdout}"
    );
    // The workers ran every item on the cluster's nodes (which node gets
    // how many depends on who takes chunks first: not checked).
    let on_nodes: usize = stdout
        .lines()
        .filter(|l| l.starts_with("n1:") || l.starts_with("n2:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok())
        .sum();
    ensure!(on_nodes == 1000, "{stdout}");
    // The master removed its rendezvous file (it holds the key).
    let left: Vec<_> = std::fs::read_dir(&dir)?.collect();
    ensure!(
        left.is_empty(),
        "left in the rendezvous directory: {left:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    squeue_empty_within(Duration::from_secs(30))
}
