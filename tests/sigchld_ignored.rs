//! A pool in a program that ignores SIGCHLD (`signal(SIGCHLD, SIG_IGN)`, as
//! some daemons and embedding runtimes do). The kernel then reaps children
//! by itself and `waitpid` fails with ECHILD, so the pool can never learn an
//! exit status: it must still notice a worker's end, fail its task, replace
//! it, and stop without waiting for a status that will never come.
//!
//! SIGCHLD's disposition is process-global (and inherited by the workers,
//! which is fine): hence a test binary of its own. Unix only; on other
//! platforms it registers no trial.

mod common;

#[cfg(unix)]
use std::time::Duration;

#[cfg(unix)]
use common::*;
#[cfg(unix)]
use unix::{aborted_worker_fails_its_item_and_is_replaced, drop_returns_and_reaps, map_works};

fn main() {
    #[cfg(unix)]
    // SAFETY: called first in main, before any other thread exists; SIG_IGN
    // is a valid disposition for SIGCHLD.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_IGN);
    }
    procpool::init(common::registry());
    let mut args = libtest_mimic::Arguments::from_args();
    // A wedged supervisor spins on a core: one trial at a time.
    args.test_threads.get_or_insert(1);
    #[cfg(unix)]
    let tests = {
        const LIMIT: Duration = Duration::from_secs(60);
        trials![
            LIMIT;
            map_works,
            aborted_worker_fails_its_item_and_is_replaced,
            drop_returns_and_reaps,
        ]
    };
    #[cfg(not(unix))]
    let tests = Vec::new();
    libtest_mimic::run(&args, tests).exit();
}

#[cfg(unix)]
mod unix {
    use std::sync::Arc;

    use super::*;
    use common::peers::Peers;
    use procpool::{Error, Pool};

    /// Every pid the pool had, for the final check.
    fn remember(pool: &Pool, pids: &mut Vec<u32>, peers: &mut Peers) {
        for pid in pool.worker_pids() {
            if !pids.contains(&pid) {
                pids.push(pid);
                peers.watch(pid);
            }
        }
    }

    /// Drops the pool (bounded) and checks that no worker it had is left.
    /// The workers are children the kernel reaps itself here, so `!alive`
    /// only needs them to have exited.
    fn end(pool: Arc<Pool>, limit: Duration, pids: &[u32], peers: &mut Peers, v: &mut Verdict) {
        match Arc::try_unwrap(pool) {
            Ok(pool) => {
                v.check(within("dropping the pool", limit, move || drop(pool)));
            }
            Err(_) => v.fail("the pool is still held by a blocked call"),
        }
        // A wedged pool never tells its workers to exit: the guard kills them.
        if !v.ok() {
            peers.kill_now();
        }
        if v.check(wait_gone(pids, Duration::from_secs(2))).is_some() {
            peers.forget();
        }
    }

    /// No worker ends during the map: nothing to reap, nothing to wedge.
    /// The pool's own drop is the subject of `drop_returns_and_reaps`, so
    /// here it happens on a thread of its own, unchecked; the workers exit
    /// either way (told to, or killed by the guard).
    pub(super) fn map_works() -> anyhow::Result<()> {
        let pool = Arc::new(Pool::new(2)?.watched());
        let mut pids = Vec::new();
        let mut peers = Peers::default();
        remember(&pool, &mut pids, &mut peers);
        let p = Arc::clone(&pool);
        let mapped = within("map(SQUARE, 0..100)", Duration::from_secs(10), move || {
            p.map(SQUARE, 0..100u64)
        });
        // Not this trial's subject, and it may block: off the trial's thread.
        std::thread::spawn(move || drop(pool));
        let mut v = Verdict::default();
        if let Some((out, _)) = v.check(mapped) {
            match out {
                Ok(out) if out == (0..100u64).map(|x| x * x).collect::<Vec<_>>() => {}
                other => v.fail(format!("map returned {other:?}")),
            }
        }
        if !v.ok() {
            peers.kill_now();
        }
        if v.check(wait_gone(&pids, Duration::from_secs(10))).is_some() {
            peers.forget();
        }
        v.finish()
    }

    /// A worker that aborts mid-task: its item fails with a worker-death
    /// error (the exit status is unknowable here), a replacement starts, and
    /// the next map works.
    pub(super) fn aborted_worker_fails_its_item_and_is_replaced() -> anyhow::Result<()> {
        let pool = Arc::new(Pool::builder().workers(2).chunk_size(1).build()?.watched());
        let mut pids = Vec::new();
        let mut peers = Peers::default();
        remember(&pool, &mut pids, &mut peers);
        let mut v = Verdict::default();
        let p = Arc::clone(&pool);
        let aborted = within(
            "map(ABORT_ON_13, 0..20) whose worker aborts on 13",
            Duration::from_secs(10),
            move || p.map(ABORT_ON_13, 0..20u64),
        );
        if let Some((r, _)) = v.check(aborted) {
            match r.map_err(Error::into_inner) {
                // The system reaped the worker: its status is unknown.
                Err(Error::WorkerExited { .. }) => {}
                other => v.fail(format!("expected a worker-death error, got {other:?}")),
            }
            let p = Arc::clone(&pool);
            let again = within(
                "map(SQUARE, 0..20) after the abort",
                Duration::from_secs(10),
                move || p.map(SQUARE, 0..20u64),
            );
            if let Some((r, _)) = v.check(again) {
                match r {
                    Ok(out) if out == (0..20u64).map(|x| x * x).collect::<Vec<_>>() => {}
                    other => v.fail(format!("map after the abort returned {other:?}")),
                }
            }
            let replaced = pool.stats().workers_replaced;
            if replaced == 0 {
                v.fail("no worker was replaced after the abort");
            }
            remember(&pool, &mut pids, &mut peers);
        }
        end(pool, Duration::from_secs(10), &pids, &mut peers, &mut v);
        v.finish()
    }

    /// Dropping the pool: the workers exit when told, the kernel reaps them,
    /// and the pool must not wait forever for their exit status.
    pub(super) fn drop_returns_and_reaps() -> anyhow::Result<()> {
        let pool = Arc::new(Pool::new(2)?.watched());
        let mut pids = Vec::new();
        let mut peers = Peers::default();
        remember(&pool, &mut pids, &mut peers);
        let mut v = Verdict::default();
        let p = Arc::clone(&pool);
        let mapped = within("map(SQUARE, 0..10)", Duration::from_secs(10), move || {
            p.map(SQUARE, 0..10u64)
        });
        if let Some((Err(e), _)) = v.check(mapped) {
            v.fail(format!("map failed: {e}"));
        }
        end(pool, Duration::from_secs(5), &pids, &mut peers, &mut v);
        v.finish()
    }
}
