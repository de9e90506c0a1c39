//! Every example runs to success: the code the docs show (as `no_run`)
//! lives in the examples, and this keeps it working.

mod common;

fn main() {
    procpool::init(common::registry());
    let args = libtest_mimic::Arguments::from_args();
    let tests = common::trials![
        // Each run has its own bound below; the trial's is the backstop.
        2 * LIMIT;
        primes,
        with_worker_program,
        progress,
        ctrlc_runs_to_the_end_without_a_signal,
        queue_reader,
        queue_reader_writer,
        joinable,
        pipe,
        locks,
        shared_map,
        remote,
        one_program_without_the_mode,
        soak,
        async_offload,
    ];
    libtest_mimic::run(&args, tests).exit();
}

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, ensure};

/// Runs an example with `args`; fails if it does not exit with success
/// within `limit` (and kills it then).
fn run(name: &str, args: &[&str], limit: Duration) -> anyhow::Result<String> {
    let mut child = Command::new(common::example(name)?)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    common::reaper().watch(child.id());
    let stdout = child.stdout.take().context("stdout")?;
    let stderr = child.stderr.take().context("stderr")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let out = std::io::read_to_string(stdout).unwrap_or_default();
        let err = std::io::read_to_string(stderr).unwrap_or_default();
        let _ = tx.send((out, err));
    });
    // The output pipes close when the example and its workers are gone.
    let Ok((out, err)) = rx.recv_timeout(limit) else {
        let _ = child.kill();
        let _ = child.wait();
        anyhow::bail!("example {name} did not finish within {limit:?}");
    };
    let status = child.wait()?;
    ensure!(
        status.success(),
        "example {name} failed ({status}):\n{out}\n{err}"
    );
    Ok(out)
}

const LIMIT: Duration = Duration::from_secs(120);

fn primes() -> anyhow::Result<()> {
    let out = run("primes", &["200000"], LIMIT)?;
    ensure!(out.contains("primes below 200000: 17984"), "{out}");
    Ok(())
}

fn with_worker_program() -> anyhow::Result<()> {
    let out = run("with_worker_program", &[], LIMIT)?;
    ensure!(out.contains("837799"), "{out}");
    Ok(())
}

fn progress() -> anyhow::Result<()> {
    let out = run("progress", &["20000"], LIMIT)?;
    ensure!(out.contains("20000 tasks completed"), "{out}");
    Ok(())
}

fn ctrlc_runs_to_the_end_without_a_signal() -> anyhow::Result<()> {
    let out = run("ctrlc", &["3"], LIMIT)?;
    ensure!(out.contains("all 3 tasks finished"), "{out}");
    Ok(())
}

fn queue_reader() -> anyhow::Result<()> {
    let out = run("queue_reader", &[], LIMIT)?;
    ensure!(out.contains("the reader got 5 messages"), "{out}");
    Ok(())
}

fn queue_reader_writer() -> anyhow::Result<()> {
    let out = run("queue_reader_writer", &[], LIMIT)?;
    ensure!(out.contains("sums match"), "{out}");
    Ok(())
}

fn joinable() -> anyhow::Result<()> {
    let out = run("joinable", &[], LIMIT)?;
    ensure!(out.contains("all 1000 jobs done"), "{out}");
    Ok(())
}

fn pipe() -> anyhow::Result<()> {
    let out = run("pipe", &[], LIMIT)?;
    ensure!(out.contains("10000 round trips"), "{out}");
    Ok(())
}

fn locks() -> anyhow::Result<()> {
    let out = run("locks", &[], LIMIT)?;
    ensure!(out.contains("300 turns, never two inside at once"), "{out}");
    ensure!(out.contains("the shared counter is 300"), "{out}");
    Ok(())
}

fn shared_map() -> anyhow::Result<()> {
    let out = run("shared_map", &[], LIMIT)?;
    ensure!(out.contains("as the master counts them"), "{out}");
    Ok(())
}

/// Without `PROCPOOL_ONE_PROGRAM` the program is not taken over: local
/// workers run it (`tests/slurm.rs` runs it under `srun -n 3`).
fn one_program_without_the_mode() -> anyhow::Result<()> {
    let out = run("one_program", &[], LIMIT)?;
    ensure!(out.contains("local: 1000 items"), "{out}");
    ensure!(out.contains("all items done"), "{out}");
    Ok(())
}

fn remote() -> anyhow::Result<()> {
    let out = run("remote", &[], LIMIT)?;
    ensure!(out.contains("all workers done"), "{out}");
    Ok(())
}

/// The chaos soak: workers killed, stopped and replaced, pools rebuilt,
/// one remote worker; every invariant must hold (it exits 1 otherwise).
fn soak() -> anyhow::Result<()> {
    let out = run(
        "soak",
        &["--seconds", "15", "--remote", "1"],
        Duration::from_secs(90),
    )?;
    ensure!(out.contains("invariant violations: 0"), "{out}");
    Ok(())
}

fn async_offload() -> anyhow::Result<()> {
    let out = run("async_offload", &["300"], LIMIT)?;
    for mode in [
        "await:",
        "spawn_blocking + apply:",
        "blocking on the runtime:",
    ] {
        ensure!(out.contains(mode), "no {mode} line:\n{out}");
    }
    Ok(())
}
