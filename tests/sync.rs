//! Process lifecycle (exit codes, terminate, join, names, live children),
//! the crash-safe synchronization primitives, and `Pool::map_async`,
//! across real processes.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a test program reports progress

mod common;

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use common::*;
use procpool::{
    Barrier, BarrierError, Condition, Error, Event, Lock, LockError, Payload, Pool, Process, Queue,
    RCondition, RLock, Semaphore, SimpleQueue, Task,
};

const LIMIT: Duration = Duration::from_secs(90);
/// Long enough for any process start under load; only hangs reach it.
const PATIENCE: Duration = Duration::from_secs(30);

/// Takes the lock (or a permit), says so, and holds it until killed.
const HOLD: Task<(Lock, SimpleQueue<()>), ()> = Task::new("hold");
/// The same with a semaphore permit.
const HOLD_PERMIT: Task<(Semaphore, SimpleQueue<()>), ()> = Task::new("hold_permit");
/// Takes the reentrant lock twice, says so, and holds it until killed.
const HOLD_RLOCK: Task<(RLock, SimpleQueue<()>), ()> = Task::new("hold_rlock");
/// Waits at the barrier: the arrival index, or the error as text.
const AT_BARRIER: Task<Barrier, Result<u64, String>> = Task::new("at_barrier");
/// Passes the barrier once, says so, then holds until killed.
const PASS_THEN_HOLD: Task<(Barrier, SimpleQueue<()>), ()> = Task::new("pass_then_hold");
/// Takes the condition's lock, says so (with its pid), and waits to be
/// notified: "notified", "owner died" (also woken) or "timeout".
const COND_WAIT: Task<(Condition, SimpleQueue<u32>), String> = Task::new("cond_wait");
/// Says it is about to wait, then acquires the lock: how it went, as text.
const ACQUIRE: Task<(Lock, SimpleQueue<()>), String> = Task::new("acquire");
/// `rounds` times, under the lock: logs (id, true), then (id, false).
const CRITICAL: Task<CriticalArgs, ()> = Task::new("critical");
/// The lock, the log, this process's id, the rounds.
type CriticalArgs = (Lock, Queue<(u64, bool)>, u64, u64);
/// Waits on a condition over the given lock; once woken, says so (0)
/// and holds the lock until the event is set: "notified" or what
/// happened, as text.
const COND_WAIT_ON_LOCK: Task<(Lock, SimpleQueue<u32>, Event), String> =
    Task::new("cond_wait_on_lock");
/// Receives the barrier, says so, and holds until killed, never waiting.
const PARTY_THAT_NEVER_WAITS: Task<(Barrier, SimpleQueue<()>), ()> =
    Task::new("party_that_never_waits");
/// Says it waits, then waits for the event; whether it was set.
const WAIT_EVENT: Task<(Event, SimpleQueue<()>), bool> = Task::new("wait_event");
/// Takes the condition's reentrant lock three levels deep, says so (with
/// its pid) and waits: "notified" with, after dropping each level in
/// turn, whether another thread found the lock held; "owner died" (also
/// woken) or "timeout".
const RCOND_WAIT: Task<(RCondition, SimpleQueue<u32>), String> = Task::new("rcond_wait");
/// Takes the condition's lock and notifies one waiter: how many woke.
const RCOND_NOTIFY: Task<RCondition, u64> = Task::new("rcond_notify");

fn sync_registry() -> procpool::Registry {
    registry()
        .task(HOLD, |(lock, ready)| {
            let _guard = lock.acquire().expect("acquire");
            ready.put(()).expect("ready");
            hold_until_killed()
        })
        .task(HOLD_PERMIT, |(sem, ready)| {
            let _guard = sem.acquire().expect("acquire");
            ready.put(()).expect("ready");
            hold_until_killed()
        })
        .task(HOLD_RLOCK, |(lock, ready)| {
            let _outer = lock.acquire().expect("acquire");
            let _inner = lock.acquire().expect("acquire again");
            ready.put(()).expect("ready");
            hold_until_killed()
        })
        .task(AT_BARRIER, |b| {
            b.wait_timeout(PATIENCE).map_err(|e| format!("{e:?}"))
        })
        .task(PASS_THEN_HOLD, |(b, ready)| {
            b.wait_timeout(PATIENCE).expect("first round");
            ready.put(()).expect("ready");
            hold_until_killed()
        })
        .task(COND_WAIT, |(c, ready)| {
            let g = c.acquire().expect("acquire");
            ready.put(std::process::id()).expect("ready");
            match g.wait_timeout(PATIENCE) {
                Ok((_, true)) => "notified".to_string(),
                Ok((_, false)) => "timeout".to_string(),
                Err(LockError::OwnerDied(_)) => "owner died".to_string(),
                Err(e) => format!("{e:?}"),
            }
        })
        .task(ACQUIRE, |(lock, ready)| {
            ready.put(()).expect("ready");
            match lock.acquire_timeout(PATIENCE) {
                Ok(_) => "acquired".to_string(),
                Err(LockError::OwnerDied(_)) => "owner died".to_string(),
                Err(e) => format!("{e:?}"),
            }
        })
        .task(CRITICAL, |(lock, log, id, rounds)| {
            for _ in 0..rounds {
                let _guard = lock.acquire().expect("acquire");
                log.put((id, true)).expect("log");
                std::thread::yield_now();
                log.put((id, false)).expect("log");
            }
        })
        .task(COND_WAIT_ON_LOCK, |(lock, ready, go)| {
            let c = Condition::with_lock(&lock);
            let g = c.acquire().expect("acquire");
            ready.put(std::process::id()).expect("ready");
            match g.wait_timeout(PATIENCE) {
                Ok((g, true)) => {
                    ready.put(0).expect("woken");
                    let set = go.wait_timeout(PATIENCE).expect("wait for go");
                    drop(g);
                    if set { "notified" } else { "no go" }.to_string()
                }
                Ok((_, false)) => "timeout".to_string(),
                Err(e) => format!("{e:?}"),
            }
        })
        .task(PARTY_THAT_NEVER_WAITS, |(_barrier, ready)| {
            ready.put(()).expect("ready");
            hold_until_killed()
        })
        .task(WAIT_EVENT, |(event, ready)| {
            ready.put(()).expect("ready");
            event.wait_timeout(PATIENCE).expect("wait")
        })
        .task(RCOND_WAIT, |(c, ready)| {
            let outer = c.rlock().acquire().expect("acquire");
            let middle = c.rlock().acquire().expect("acquire again");
            let g = c.acquire().expect("a third level");
            ready.put(std::process::id()).expect("ready");
            match g.wait_timeout(PATIENCE) {
                Ok((g, true)) => {
                    let mut held = Vec::new();
                    drop(g);
                    held.push(held_elsewhere(c.rlock()));
                    drop(middle);
                    held.push(held_elsewhere(c.rlock()));
                    drop(outer);
                    held.push(held_elsewhere(c.rlock()));
                    format!("notified {held:?}")
                }
                Ok((_, false)) => "timeout".to_string(),
                Err(LockError::OwnerDied(_)) => "owner died".to_string(),
                Err(e) => format!("{e:?}"),
            }
        })
        .task(RCOND_NOTIFY, |c| {
            let g = c.acquire().expect("acquire");
            g.notify(1).expect("notify")
        })
}

fn main() {
    procpool::init(sync_registry());
    let args = libtest_mimic::Arguments::from_args();
    let tests = trials![
        LIMIT;
        join_waits_for_the_exit,
        terminate_is_sigterm_and_kill_is_sigkill,
        names_and_active_children,
        lock_excludes_across_processes,
        killed_holder_hands_the_lock_on_as_owner_died,
        killed_holder_wakes_a_waiter_in_another_process,
        killed_permit_holder_gives_the_permit_back,
        killed_rlock_holder_hands_it_on_whatever_its_depth,
        event_set_wakes_waiters_in_three_processes,
        barrier_releases_parties_in_three_processes,
        killed_party_breaks_the_barrier,
        notified_waiter_that_dies_passes_the_notification_on,
        condition_over_an_existing_lock_across_processes,
        party_killed_before_its_first_wait_breaks_the_barrier,
        notify_n_wakes_that_many_waiters_in_other_processes,
        rcondition_wait_releases_every_level_and_restores_them,
        rcondition_notify_from_a_worker_wakes_the_master,
        rcondition_waiter_killed_mid_wait_does_not_swallow_a_notify,
        map_async_gives_every_output_in_order,
        map_async_gives_the_first_error,
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

/// Three processes and the master take turns under one lock: the log
/// never shows two inside at once.
fn lock_excludes_across_processes() -> anyhow::Result<()> {
    let lock = Lock::new();
    let log = Queue::new();
    let rounds = 50;
    let procs = (1..=3)
        .map(|id| Ok(Process::spawn(CRITICAL, (lock.clone(), log.clone(), id, rounds))?.watched()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for _ in 0..rounds {
        let _guard = lock.acquire().map_err(lock_err)?;
        log.put((0, true))?;
        log.put((0, false))?;
    }
    for p in procs {
        p.join()?;
    }
    let mut inside = None;
    for _ in 0..4 * rounds * 2 {
        let (id, enter) = log.try_get().context("log entry missing")?;
        match (inside, enter) {
            (None, true) => inside = Some(id),
            (Some(i), false) if i == id => inside = None,
            _ => bail!(
                "{id} {} while {inside:?} was inside",
                if enter { "entered" } else { "left" }
            ),
        }
    }
    Ok(())
}

/// Python deadlocks here forever: the holder is SIGKILLed while holding
/// the lock; the next acquirer gets it within a second, told the owner
/// died, and the lock works normally afterwards.
fn killed_holder_hands_the_lock_on_as_owner_died() -> anyhow::Result<()> {
    let lock = Lock::new();
    let ready = SimpleQueue::new();
    let holder = started(HOLD, (lock.clone(), ready.clone()), &ready)?;
    ensure!(
        lock.try_acquire().is_err_and(|e| e.is_timeout()),
        "the lock is held"
    );
    holder.kill();
    let guard = match lock.acquire_timeout(Duration::from_secs(1)) {
        Err(LockError::OwnerDied(guard)) => guard,
        Ok(_) => bail!("acquired without hearing that the owner died"),
        Err(e) => bail!("{e:?}"),
    };
    ensure!(lock.try_acquire().is_err_and(|e| e.is_timeout()));
    drop(guard);
    // The news went to one acquirer; the lock is an ordinary lock again.
    drop(lock.try_acquire().map_err(lock_err)?);
    Ok(())
}

/// A process already waiting for the lock gets it, with the news, when
/// the holder (another process) is killed.
fn killed_holder_wakes_a_waiter_in_another_process() -> anyhow::Result<()> {
    let lock = Lock::new();
    let ready = SimpleQueue::new();
    let holder = started(HOLD, (lock.clone(), ready.clone()), &ready)?;
    let waiter = started(ACQUIRE, (lock.clone(), ready.clone()), &ready)?;
    holder.kill();
    let got = waiter.join()?;
    ensure!(got == "owner died", "the waiter: {got}");
    // The waiter exited holding it too (its guard dropped at the end).
    drop(
        lock.acquire_timeout(PATIENCE)
            .or_else(LockError::recover)
            .map_err(lock_err)?,
    );
    Ok(())
}

/// A semaphore permit held by a killed process comes back.
fn killed_permit_holder_gives_the_permit_back() -> anyhow::Result<()> {
    let sem = Semaphore::new(1);
    let ready = SimpleQueue::new();
    let holder = started(HOLD_PERMIT, (sem.clone(), ready.clone()), &ready)?;
    ensure!(sem.try_acquire().is_err_and(|e| e.is_timeout()));
    holder.kill();
    match sem.acquire_timeout(PATIENCE) {
        Err(LockError::OwnerDied(_)) => Ok(()),
        other => bail!("{other:?}"),
    }
}

/// An `Event` set in the master wakes waiters in three processes.
fn event_set_wakes_waiters_in_three_processes() -> anyhow::Result<()> {
    let event = Event::new();
    let ready = SimpleQueue::new();
    let procs = (0..3)
        .map(|_| Ok(Process::spawn(WAIT_EVENT, (event.clone(), ready.clone()))?.watched()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for _ in 0..3 {
        ready.get()?;
    }
    ensure!(!event.is_set()?);
    event.set()?;
    for p in procs {
        ensure!(p.join()?, "a waiter timed out");
    }
    Ok(())
}

/// A process killed holding an `RLock` two levels deep hands it on too.
fn killed_rlock_holder_hands_it_on_whatever_its_depth() -> anyhow::Result<()> {
    let lock = RLock::new();
    let ready = SimpleQueue::new();
    let holder = started(HOLD_RLOCK, (lock.clone(), ready.clone()), &ready)?;
    ensure!(lock.try_acquire().is_err_and(|e| e.is_timeout()));
    holder.kill();
    match lock.acquire_timeout(PATIENCE) {
        Err(LockError::OwnerDied(_)) => {}
        other => bail!("{other:?}"),
    }
    drop(lock.try_acquire().map_err(lock_err)?);
    Ok(())
}

/// Two processes and the master meet at a barrier: each gets a distinct
/// arrival index.
fn barrier_releases_parties_in_three_processes() -> anyhow::Result<()> {
    let b = Barrier::new(3);
    let procs = (0..2)
        .map(|_| Ok(Process::spawn(AT_BARRIER, b.clone())?.watched()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut indexes = vec![b.wait_timeout(PATIENCE)?];
    for p in procs {
        indexes.push(p.join()?.map_err(anyhow::Error::msg)?);
    }
    indexes.sort_unstable();
    ensure!(indexes == [0, 1, 2], "{indexes:?}");
    Ok(())
}

/// A party killed between rounds breaks the barrier: the master and
/// another process get `Broken` instead of waiting forever (Python's
/// barrier waits for the dead party until a timeout).
fn killed_party_breaks_the_barrier() -> anyhow::Result<()> {
    let b = Barrier::new(2);
    let ready = SimpleQueue::new();
    let party = Process::spawn(PASS_THEN_HOLD, (b.clone(), ready.clone()))?.watched();
    b.wait_timeout(PATIENCE)?;
    ready.get()?;
    let waiter = Process::spawn(AT_BARRIER, b.clone())?.watched();
    party.kill();
    broken_for_the_others(waiter, &b)
}

/// `map_async` returns at once; its outputs come in input order, with the
/// builder's chunking or one given per call.
fn map_async_gives_every_output_in_order() -> anyhow::Result<()> {
    let pool = Pool::new(2)?.watched();
    let want: Vec<u64> = (0..100).map(|x| x * x).collect();
    let mut pending = pool.map_async(SQUARE, 0..100)?;
    ensure!(
        pending.wait_timeout(PATIENCE).is_some(),
        "not ready in time"
    );
    ensure!(pending.ready());
    ensure!(pending.wait()? == want);
    for chunk in [1, 7, 1000] {
        ensure!(pool.map_async_chunked(SQUARE, 0..100, chunk)?.wait()? == want);
        ensure!(pool.map_chunked(SQUARE, 0..100, chunk)? == want);
    }
    let err = pool.map_chunked(SQUARE, 0..100, 0).unwrap_err();
    ensure!(
        matches!(
            err,
            Error::InvalidSetting {
                setting: "chunk_size",
                ..
            }
        ),
        "{err:?}"
    );
    ensure!(
        pool.map_async(SQUARE, Vec::<u64>::new())?
            .wait()?
            .is_empty()
    );
    // Not ready while a slow item runs (one worker, items of 2 s).
    let slow = Pool::builder().workers(1).build()?.watched();
    let mut pending = slow.map_async(SLEEP_MS, [2000u64, 0])?;
    ensure!(!pending.ready());
    ensure!(pending.wait()? == [2000, 0]);
    Ok(())
}

/// The first failed item is the outcome.
fn map_async_gives_the_first_error() -> anyhow::Result<()> {
    let pool = Pool::new(2)?.watched();
    let pending = pool.map_async_chunked(PANIC_ON_13, 0..50, 5)?;
    match pending.wait() {
        Err(e) if e.is_panic() => Ok(()),
        other => bail!("{other:?}"),
    }
}

/// Two processes wait on a condition; the one notified is killed before it
/// has the lock back: the notification goes to the other, which wakes
/// (Python loses it, and the other waits forever).
fn notified_waiter_that_dies_passes_the_notification_on() -> anyhow::Result<()> {
    let c = Condition::new();
    let ready = SimpleQueue::new();
    let first = started(COND_WAIT, (c.clone(), ready.clone()), &ready)?;
    // The waiter holds the lock until it waits: once we have it, it waits.
    drop(c.acquire().map_err(lock_err)?);
    let second = started(COND_WAIT, (c.clone(), ready.clone()), &ready)?;
    let guard = c.acquire().map_err(lock_err)?;
    ensure!(guard.notify(1)? == 1);
    first.kill(); // notified, but still waiting for the lock we hold
    drop(guard);
    let got = second.join()?;
    ensure!(
        got == "notified" || got == "owner died",
        "the other waiter: {got}"
    );
    Ok(())
}

/// `Condition::with_lock`: a waiter in another process releases the
/// shared lock while it waits (the master can take it), is woken by the
/// master's notify, and holds that same lock when its wait returns.
fn condition_over_an_existing_lock_across_processes() -> anyhow::Result<()> {
    let lock = Lock::new();
    let c = Condition::with_lock(&lock);
    let ready = SimpleQueue::new();
    let go = Event::new();
    let waiter = started(
        COND_WAIT_ON_LOCK,
        (lock.clone(), ready.clone(), go.clone()),
        &ready,
    )?;
    // Free only once the waiter waits (it held the lock until then).
    let guard = c.acquire().map_err(lock_err)?;
    ensure!(guard.notify(1)? == 1, "nobody was waiting");
    drop(guard);
    ensure!(ready.get()? == 0, "the waiter's wake-up report");
    ensure!(
        lock.try_acquire().is_err_and(|e| e.is_timeout()),
        "the woken waiter must hold the lock"
    );
    go.set()?;
    let got = waiter.join()?;
    ensure!(got == "notified", "the waiter: {got}");
    drop(lock.acquire_timeout(PATIENCE).map_err(lock_err)?);
    Ok(())
}

/// A process that received the barrier and is killed before it ever
/// waits breaks it: the other process and the master get `Broken` instead
/// of waiting for it (before, the dead party was unknown to the barrier
/// and both waited until their timeouts).
fn party_killed_before_its_first_wait_breaks_the_barrier() -> anyhow::Result<()> {
    let b = Barrier::new(3);
    let ready = SimpleQueue::new();
    let waiter = Process::spawn(AT_BARRIER, b.clone())?.watched();
    let victim = started(PARTY_THAT_NEVER_WAITS, (b.clone(), ready.clone()), &ready)?;
    victim.kill();
    broken_for_the_others(waiter, &b)
}

/// Whether another thread of this process finds `r` held (if it can take
/// it, it gives it back at once).
fn held_elsewhere(r: &RLock) -> bool {
    std::thread::scope(|s| {
        s.spawn(|| match r.try_acquire() {
            Ok(_) => false,
            Err(e) => e.is_timeout(),
        })
        .join()
        .expect("probe thread")
    })
}

/// An `RCondition` waiter in another process, three levels deep: its wait
/// releases them all (the master can take the lock), the master's notify
/// wakes it, and it holds all three levels again (the lock is free only
/// after the last one drops).
fn rcondition_wait_releases_every_level_and_restores_them() -> anyhow::Result<()> {
    let c = RCondition::new();
    let ready = SimpleQueue::new();
    let waiter = started(RCOND_WAIT, (c.clone(), ready.clone()), &ready)?;
    // Free only once the waiter waits, whatever its depth.
    let guard = c.acquire_timeout(PATIENCE).map_err(lock_err)?;
    ensure!(guard.notify(1)? == 1, "nobody was waiting");
    drop(guard);
    let got = waiter.join()?;
    ensure!(got == "notified [true, true, false]", "the waiter: {got}");
    Ok(())
}

/// The master waits two levels deep; a worker takes the lock (free while
/// the master waits) and notifies; the master holds both levels again.
fn rcondition_notify_from_a_worker_wakes_the_master() -> anyhow::Result<()> {
    let r = RLock::new();
    let c = RCondition::with_rlock(&r);
    let outer = r.acquire().map_err(lock_err)?;
    let guard = c.acquire().map_err(lock_err)?;
    let notifier = Process::spawn(RCOND_NOTIFY, c.clone())?.watched();
    let (guard, notified) = guard.wait_timeout(PATIENCE).map_err(lock_err)?;
    ensure!(notified, "timed out instead of being notified");
    ensure!(notifier.join()? == 1, "the notifier woke nobody");
    drop(guard);
    ensure!(held_elsewhere(&r), "the outer level is held again");
    drop(outer);
    ensure!(!held_elsewhere(&r), "free after the last level");
    Ok(())
}

/// Two workers wait on an `RCondition`; the first is SIGKILLed while
/// waiting, and a notify of one goes out at once (the hub may not have
/// seen the death yet, and then picks the dead waiter): the second wakes
/// all the same.
fn rcondition_waiter_killed_mid_wait_does_not_swallow_a_notify() -> anyhow::Result<()> {
    let c = RCondition::new();
    let ready = SimpleQueue::new();
    let first = started(RCOND_WAIT, (c.clone(), ready.clone()), &ready)?;
    // The waiter holds the lock until it waits: once we have it, it waits.
    drop(c.acquire().map_err(lock_err)?);
    let second = started(RCOND_WAIT, (c.clone(), ready.clone()), &ready)?;
    let guard = c.acquire().map_err(lock_err)?;
    first.kill();
    ensure!(guard.notify(1)? == 1, "nobody was waiting");
    drop(guard);
    let got = second.join()?;
    ensure!(
        got == "notified [true, true, false]" || got == "owner died",
        "the other waiter: {got}"
    );
    Ok(())
}

/// Holds what the task took until its process is killed.
fn hold_until_killed() -> ! {
    loop {
        std::thread::park();
    }
}

/// Starts `task` on `arg` in a process of its own and waits until it says
/// it is ready on `ready`.
fn started<I: Payload, O: Payload, R: Payload>(
    task: Task<I, O>,
    arg: I,
    ready: &SimpleQueue<R>,
) -> anyhow::Result<Process<O>> {
    let p = Process::spawn(task, arg)?.watched();
    ready.get()?;
    Ok(p)
}

/// A lock error as an `anyhow` error (the guard it may hold is dropped).
fn lock_err<G>(e: LockError<G>) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// The barrier is broken for the process `waiter` (waiting at it) and for
/// the master.
fn broken_for_the_others(waiter: Process<Result<u64, String>>, b: &Barrier) -> anyhow::Result<()> {
    let got = waiter.join()?;
    ensure!(
        matches!(&got, Err(e) if e == "Broken"),
        "the other process: {got:?}"
    );
    match b.wait_timeout(PATIENCE) {
        Err(BarrierError::Broken) => Ok(()),
        other => bail!("the master: {other:?}"),
    }
}

/// CPython's `test_notify_n`: three processes wait; `notify(2)` wakes two,
/// `notify(5)` the one left, and a later notify finds nobody.
fn notify_n_wakes_that_many_waiters_in_other_processes() -> anyhow::Result<()> {
    let c = Condition::new();
    let ready = SimpleQueue::new();
    let mut waiters = Vec::new();
    for _ in 0..3 {
        waiters.push(started(COND_WAIT, (c.clone(), ready.clone()), &ready)?);
        // The waiter holds the lock until it waits: once we have it, it waits.
        drop(c.acquire().map_err(lock_err)?);
    }
    let notify = |n| -> anyhow::Result<u64> { Ok(c.acquire().map_err(lock_err)?.notify(n)?) };
    ensure!(notify(2)? == 2, "notify(2) with three waiting");
    ensure!(notify(5)? == 1, "notify(5) with one left");
    ensure!(notify(1)? == 0, "nobody is left");
    for w in waiters {
        let got = w.join()?;
        ensure!(got == "notified", "a waiter: {got}");
    }
    Ok(())
}
