//! Process lifecycle (exit codes, terminate, join, names, live children)
//! and the crash-safe synchronization primitives, across real processes.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a test program reports progress

mod common;

use std::time::Duration;

use anyhow::{bail, ensure};
use common::*;
use procpool::{Error, Process};

const LIMIT: Duration = Duration::from_secs(90);
/// Long enough for any process start under load; only hangs reach it.
const PATIENCE: Duration = Duration::from_secs(30);

fn main() {
    procpool::init(registry());
    let args = libtest_mimic::Arguments::from_args();
    let tests = trials![
        LIMIT;
        join_waits_for_the_exit,
        terminate_is_sigterm_and_kill_is_sigkill,
        names_and_active_children,
    ];
    libtest_mimic::run(&args, tests).exit();
}

/// `join_timeout` returns once the process has exited and been reaped, not
/// merely when its result arrived: `is_alive` is false and the exit code
/// known at once (before, `is_alive` was still true for a few ms).
fn join_waits_for_the_exit() -> anyhow::Result<()> {
    for _ in 0..5 {
        let mut p = Process::spawn(SQUARE, 7)?.watched();
        ensure!(p.exitcode().is_none() || !p.is_alive());
        match p.join_timeout(PATIENCE) {
            Some(Ok(49)) => {}
            other => bail!("join_timeout: {other:?}"),
        }
        ensure!(!p.is_alive(), "still alive after join_timeout returned");
        ensure!(!alive(p.pid()), "process {} not reaped", p.pid());
        ensure!(p.exitcode() == Some(0), "exitcode {:?}", p.exitcode());
        ensure!(p.join()? == 49);
    }
    let dead = Process::spawn(ABORT_ON_13, 13)?.watched();
    let mut dead = dead;
    ensure!(dead.join_timeout(PATIENCE).is_some());
    let code = dead.exitcode();
    ensure!(
        matches!(code, Some(c) if c != 0),
        "aborted: exitcode {code:?}"
    );
    Ok(())
}

/// `terminate` sends SIGTERM (`TerminateProcess` with Python's code on
/// Windows): exit code -15; `kill` is SIGKILL: -9 (Windows: 1).
fn terminate_is_sigterm_and_kill_is_sigkill() -> anyhow::Result<()> {
    let mut p = Process::spawn(SLEEP_MS, 60_000)?.watched();
    ensure!(p.is_alive() && p.exitcode().is_none());
    p.terminate();
    match p.join_timeout(PATIENCE) {
        Some(Err(Error::WorkerDied { .. })) => {}
        other => bail!("after terminate: {other:?}"),
    }
    ensure!(
        p.exitcode() == Some(-15),
        "terminate: exitcode {:?}",
        p.exitcode()
    );
    p.terminate(); // a no-op once it has exited

    let mut p = Process::spawn(SLEEP_MS, 60_000)?.watched();
    p.kill();
    ensure!(!p.is_alive(), "killed and reaped, so not alive");
    ensure!(matches!(
        p.join_timeout(PATIENCE),
        Some(Err(Error::Terminated))
    ));
    let want = if cfg!(windows) { 1 } else { -9 };
    ensure!(
        p.exitcode() == Some(want),
        "kill: exitcode {:?}",
        p.exitcode()
    );
    Ok(())
}

/// Default names count up as Python's `Process-N`; `active_children` lists
/// the live ones and forgets them once they exit; `cpu_count` is positive.
fn names_and_active_children() -> anyhow::Result<()> {
    ensure!(procpool::cpu_count() >= 1);
    let mut a = Process::spawn(SLEEP_MS, 60_000)?.watched();
    let b = Process::spawn(SQUARE, 3)?.watched();
    let (na, nb) = (a.name(), b.name());
    let number = |n: &str| {
        n.strip_prefix("Process-")
            .and_then(|n| n.parse::<u64>().ok())
    };
    match (number(&na), number(&nb)) {
        (Some(x), Some(y)) => ensure!(y > x, "{na} then {nb}"),
        _ => bail!("names {na:?}, {nb:?}"),
    }
    a.set_name("sleeper");
    ensure!(a.name() == "sleeper");
    let children = procpool::active_children();
    ensure!(
        children
            .iter()
            .any(|c| c.pid == a.pid() && c.name == "sleeper"),
        "{children:?}"
    );
    ensure!(b.join()? == 9);
    let children = procpool::active_children();
    ensure!(!children.iter().any(|c| c.name == nb), "{children:?}");
    a.kill();
    ensure!(!procpool::active_children().iter().any(|c| c.pid == a.pid()));
    Ok(())
}
