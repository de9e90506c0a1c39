//! End-to-end tests of `Pool` with real worker processes.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a program talks to its user

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use common::*;
use procpool::{Error, Oversized, Pool, Queue, Task, TaskError};
use serde_bytes::ByteBuf;

const LIMIT: Duration = Duration::from_secs(60);

/// Test-only worker behaviours selected by this variable, for handshake
/// failures no well-behaved worker produces.
const FAKE_ENV: &str = "PROCPOOL_TEST_FAKE";

fn fake_worker(kind: &str) -> ! {
    match kind {
        "bad_version" => {
            let (mut r, mut w) = procpool_ipc::endpoint::connect_worker()
                .expect("started as a worker")
                .expect("endpoint");
            let mut body = vec![1u8];
            body.extend_from_slice(b"PPOL");
            body.extend_from_slice(&99u32.to_le_bytes());
            body.extend_from_slice(&std::process::id().to_le_bytes());
            body.push(0); // empty task list
            w.write_all(&(body.len() as u32).to_le_bytes()).unwrap();
            w.write_all(&body).unwrap();
            w.flush().unwrap();
            let mut sink = Vec::new();
            let _ = r.read_to_end(&mut sink); // until the master closes
            std::process::exit(0)
        }
        _ => std::process::exit(3),
    }
}

fn main() {
    if let Ok(kind) = std::env::var(FAKE_ENV) {
        fake_worker(&kind);
    }
    procpool::init(registry());
    let args = libtest_mimic::Arguments::from_args();
    let tests = trials![
        LIMIT;
        map_is_exact_and_ordered_for_every_chunk_size,
        panic_is_reported_and_pool_keeps_working,
        returned_error_arrives_typed,
        abort_in_task_is_worker_died_not_a_hang,
        unknown_task_is_a_clear_error,
        mismatched_task_types_are_refused,
        invalid_settings_are_refused,
        imap_input_panic_comes_after_earlier_results,
        worker_program_mode_runs_map,
        worker_program_without_the_task_is_a_clear_error,
        version_mismatch_is_reported_at_start,
        worker_that_exits_at_start_is_reported,
        drop_reaps_every_worker,
        terminate_reaps_every_worker,
        close_then_join_then_drop_leaves_no_child,
        join_waits_for_submitted_work,
        submit_and_apply,
        oversized_values_are_payload_too_large,
        results_together_over_the_limit_travel_in_several_frames,
        a_buffer_as_large_as_the_limit_passes,
        imap_is_lazy_and_bounded,
        imap_order_and_unordered_exactly_once,
        borrowed_inputs_work_like_owned_ones,
        worker_deaths_fail_only_their_tasks_and_are_replaced,
        retries_recover_from_worker_deaths,
        task_timeout_kills_and_replaces,
        max_tasks_per_worker_recycles,
        initializer_runs_once_per_worker,
        failing_initializer_is_reported_with_its_message,
        initializer_argument_reaches_every_worker,
        initializer_argument_that_cannot_be_sent_fails_the_build,
        shutdown_from_another_thread_interrupts_map,
        terminate_from_another_thread_ends_map_with_terminated,
        several_threads_share_one_pool,
        slow_tasks_after_fast_ones_spread_over_workers,
        calls_in_a_row_stay_on_one_worker_and_a_jobs_chunks_take_turns,
        interrupted_imap_hands_out_what_arrived,
        interrupted_endless_imap_ends_with_one_interrupted,
    ];
    libtest_mimic::run(&args, tests).exit();
}

fn all_gone(pids: &[u32]) -> anyhow::Result<()> {
    for &pid in pids {
        ensure!(
            !alive(pid),
            "worker pid {pid} is still present after the pool stopped"
        );
    }
    Ok(())
}

fn map_is_exact_and_ordered_for_every_chunk_size() -> anyhow::Result<()> {
    let want: Vec<u64> = (0..10_000u64).map(|x| x * x).collect();
    for chunk in [Some(1), Some(7), None] {
        let mut b = Pool::builder().workers(2);
        if let Some(c) = chunk {
            b = b.chunk_size(c);
        }
        let pool = b.build()?.watched();
        ensure!(
            pool.map(SQUARE, 0..10_000u64)? == want,
            "chunk size {chunk:?}"
        );
        ensure!(
            pool.map(SQUARE, Vec::<u64>::new())?.is_empty(),
            "empty input"
        );
    }
    Ok(())
}

fn panic_is_reported_and_pool_keeps_working() -> anyhow::Result<()> {
    let pool = Pool::builder().workers(2).chunk_size(4).build()?.watched();
    let err = pool.map(PANIC_ON_13, 0..100u64).unwrap_err();
    ensure!(err.index() == Some(13), "{err:?}");
    ensure!(err.to_string().starts_with("input 13: "), "{err}");
    match err.inner() {
        Error::Task(TaskError::Panicked { message, location }) => {
            ensure!(message == "unlucky number 13", "message: {message}");
            ensure!(
                location.as_deref().is_some_and(|l| l.contains("common")),
                "location: {location:?}"
            );
        }
        other => anyhow::bail!("expected a panic error, got {other:?}"),
    }
    ensure!(
        err.to_string().contains("unlucky number 13"),
        "display: {err}"
    );
    // The pool still works, and no worker died for it.
    ensure!(pool.map(SQUARE, 0..50u64)?.len() == 50);
    ensure!(pool.stats().workers_replaced == 0);
    Ok(())
}

fn returned_error_arrives_typed() -> anyhow::Result<()> {
    let pool = Pool::new(1)?.watched();
    ensure!(pool.apply(PARSE, "42".to_string())? == 42);
    let err = pool.apply(PARSE, "forty-two".to_string()).unwrap_err();
    ensure!(
        matches!(err.inner(), Error::Task(TaskError::Failed { message, .. }) if message.contains("invalid digit")),
        "{err:?}"
    );
    // anyhow takes it through std::error::Error.
    let as_anyhow: anyhow::Error = err.into();
    ensure!(as_anyhow.to_string().contains("task failed"));
    Ok(())
}

fn abort_in_task_is_worker_died_not_a_hang() -> anyhow::Result<()> {
    let pool = Pool::builder().workers(2).chunk_size(1).build()?.watched();
    // "Not a hang": the trial's watchdog fails (and cleans up) a map that
    // never returns; how fast it returns is not the point.
    let err = pool.map(ABORT_ON_13, 0..200u64).unwrap_err();
    ensure!(err.index() == Some(13), "{err:?}");
    match err.inner() {
        Error::WorkerDied { pid, status, .. } => {
            ensure!(*pid > 0);
            ensure!(!status.success(), "status {status}");
            ensure!(err.to_string().contains(&pid.to_string()), "{err}");
        }
        other => anyhow::bail!("expected WorkerDied, got {other:?}"),
    }
    // A replacement started and the pool works.
    ensure!(pool.map(SQUARE, 0..10u64)?.len() == 10);
    Ok(())
}

/// A task the workers register with other types than the master declares
/// (a worker program built from other sources) is refused by name and
/// types, before anything is sent: `square` is `u64 -> u64` in the workers,
/// and its `u64` results would decode as garbage `i64`s.
fn mismatched_task_types_are_refused() -> anyhow::Result<()> {
    const SIGNED: procpool::Task<u64, i64> = procpool::Task::new("square");
    let pool = Pool::new(1)?.watched();
    let err = pool.map(SIGNED, 0..3u64).unwrap_err();
    ensure!(
        matches!(&err, Error::TaskTypeMismatch { name, master, worker }
            if name == "square" && &**master == "u64 -> i64" && &**worker == "u64 -> u64"),
        "{err:?}"
    );
    ensure!(err.to_string().contains("u64 -> i64"), "{err}");
    // The declaration that matches still works.
    ensure!(pool.map(SQUARE, 0..3u64)? == [0, 1, 4]);
    Ok(())
}

/// Settings that cannot work are refused by name, not quietly changed
/// (`Pool::new(0)` used to start one worker), and nothing is started.
fn invalid_settings_are_refused() -> anyhow::Result<()> {
    let cases: [(&str, procpool::PoolBuilder); 5] = [
        ("workers", Pool::builder().workers(0)),
        ("chunk_size", Pool::builder().chunk_size(0)),
        ("window", Pool::builder().window(0)),
        (
            "max_tasks_per_worker",
            Pool::builder().max_tasks_per_worker(0),
        ),
        (
            "heartbeat_timeout",
            Pool::builder().heartbeat_timeout(Duration::from_millis(1)),
        ),
    ];
    for (name, builder) in cases {
        match builder.build() {
            Err(Error::InvalidSetting { setting, .. }) if setting == name => {}
            other => anyhow::bail!("{name}: expected InvalidSetting, got {other:?}"),
        }
    }
    let err = Pool::new(0).unwrap_err();
    ensure!(err.to_string().contains("at least one worker"), "{err}");
    Ok(())
}

/// An input iterator that panics partway: the items before it still run
/// and their results come out first, then the panic.
fn imap_input_panic_comes_after_earlier_results() -> anyhow::Result<()> {
    let pool = Pool::builder().workers(2).chunk_size(2).build()?.watched();
    let input = (0..5u64).chain(std::iter::from_fn(|| panic!("input broke")));
    let mut it = pool.imap(SQUARE, input)?;
    let mut got = Vec::new();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for r in &mut it {
            got.push(r.expect("a result"));
        }
    }));
    let panic = outcome.expect_err("the input's panic must come out of imap");
    let message = panic.downcast_ref::<&str>().copied().unwrap_or_default();
    ensure!(message == "input broke", "panic {message:?}");
    ensure!(got == [0, 1, 4, 9, 16], "results before the panic: {got:?}");
    Ok(())
}

fn unknown_task_is_a_clear_error() -> anyhow::Result<()> {
    const NOPE: procpool::Task<u64, u64> = procpool::Task::new("no_such_task");
    let pool = Pool::new(1)?.watched();
    let err = pool.map(NOPE, 0..3u64).unwrap_err();
    ensure!(
        matches!(&err, Error::UnknownTask { name, available } if name == "no_such_task" && available.contains(&"square".to_string())),
        "{err:?}"
    );
    ensure!(err.to_string().contains("no_such_task"));
    // Also for an initializer: reported when the pool starts.
    let err = Pool::builder()
        .workers(1)
        .initializer(procpool::Task::new("no_such_init"))
        .build()
        .unwrap_err();
    ensure!(
        matches!(&err, Error::UnknownTask { name, .. } if name == "no_such_init"),
        "{err:?}"
    );
    Ok(())
}

#[path = "../examples/shared/tasks.rs"]
mod example_tasks;

fn worker_program_mode_runs_map() -> anyhow::Result<()> {
    let program = example("worker_program")?;
    let pool = Pool::builder()
        .workers(2)
        .worker_program(&program)
        .build()?
        .watched();
    ensure!(
        pool.tasks()
            .iter()
            .any(|t| t == example_tasks::COLLATZ.name())
    );
    let steps = pool.map(example_tasks::COLLATZ, 1..=1000u64)?;
    ensure!(steps[26] == 111, "collatz(27) = {}", steps[26]); // the famous long one
    let pids = pool.worker_pids();
    drop(pool);
    all_gone(&pids)
}

fn worker_program_without_the_task_is_a_clear_error() -> anyhow::Result<()> {
    let program = example("worker_program")?;
    let pool = Pool::builder()
        .workers(1)
        .worker_program(&program)
        .build()?
        .watched();
    let err = pool.map(SQUARE, 0..3u64).unwrap_err();
    ensure!(
        matches!(&err, Error::UnknownTask { name, .. } if name == "square"),
        "{err:?}"
    );
    Ok(())
}

fn version_mismatch_is_reported_at_start() -> anyhow::Result<()> {
    let err = Pool::builder()
        .workers(1)
        .worker_env(FAKE_ENV, "bad_version")
        .build()
        .unwrap_err();
    ensure!(
        matches!(err, Error::VersionMismatch { theirs: 99, .. }),
        "{err:?}"
    );
    ensure!(err.to_string().contains("version 99"), "{err}");
    Ok(())
}

fn worker_that_exits_at_start_is_reported() -> anyhow::Result<()> {
    let err = Pool::builder()
        .workers(2)
        .worker_env(FAKE_ENV, "exit")
        .build()
        .unwrap_err();
    // Windows reports the same event earlier: there the endpoint's `spawn`
    // waits for the child to connect to its named pipe, so a child that
    // exits first fails the spawn itself (Error::Spawn carrying
    // ExitedBeforeConnecting). On Unix the socketpair exists before the
    // child runs, spawn succeeds, and the exit is seen as EOF before the
    // handshake (Error::Startup). Either way: an error naming the exit.
    if cfg!(windows) {
        if let Error::Spawn { source, .. } = &err {
            let exited = procpool_ipc::endpoint::ExitedBeforeConnecting::in_error(source);
            ensure!(
                exited.is_some_and(|e| e.status.code() == Some(3)),
                "{err:?}"
            );
            return Ok(());
        }
    }
    ensure!(matches!(err, Error::Startup { .. }), "{err:?}");
    ensure!(
        err.to_string().contains("exited before its handshake"),
        "{err}"
    );
    Ok(())
}

fn drop_reaps_every_worker() -> anyhow::Result<()> {
    let pool = Pool::new(3)?.watched();
    pool.map(SQUARE, 0..100u64)?;
    let pids = pool.worker_pids();
    ensure!(pids.len() == 3, "{pids:?}");
    ensure!(
        pids.iter().all(|&p| alive(p)),
        "workers should be alive before drop"
    );
    drop(pool);
    all_gone(&pids)
}

fn terminate_reaps_every_worker() -> anyhow::Result<()> {
    let pool = Arc::new(Pool::new(2)?.watched());
    let pending = pool.submit(SLEEP_MS, 600_000)?;
    let pids = pool.worker_pids();
    // A watchdog, not a measure: terminate kills rather than wait for the
    // 10-minute task, which no bound here comes near.
    let p = Arc::clone(&pool);
    within(
        "terminate() with a task running",
        Duration::from_secs(30),
        move || p.terminate(),
    )?;
    all_gone(&pids)?;
    let err = pending.wait().unwrap_err();
    ensure!(matches!(err, Error::Terminated), "{err:?}");
    ensure!(matches!(
        pool.map(SQUARE, 0..1u64),
        Err(Error::Interrupted | Error::Closed)
    ));
    Ok(())
}

fn close_then_join_then_drop_leaves_no_child() -> anyhow::Result<()> {
    let pool = Pool::new(2)?.watched();
    let handles: Vec<_> = (0..10u64)
        .map(|i| pool.submit(SLEEP_MS, 10 + i))
        .collect::<Result<_, _>>()?;
    pool.close();
    ensure!(matches!(pool.submit(SQUARE, 1), Err(Error::Closed)));
    ensure!(
        pool.join_timeout(Duration::from_secs(30))?,
        "join timed out"
    );
    ensure!(pool.stats().in_flight == 0);
    for (i, h) in handles.into_iter().enumerate() {
        ensure!(h.wait()? == 10 + i as u64);
    }
    let pids = pool.worker_pids();
    drop(pool);
    all_gone(&pids)
}

fn join_waits_for_submitted_work() -> anyhow::Result<()> {
    let pool = Pool::new(2)?.watched();
    let mut handles = Vec::new();
    for i in 0..6u64 {
        handles.push(pool.submit(SLEEP_MS, 20 * i)?);
    }
    pool.join()?;
    // After join every handle is ready without waiting.
    for mut h in handles {
        ensure!(
            h.try_get().is_some_and(|r| r.is_ok()),
            "result not ready after join"
        );
    }
    let s = pool.stats();
    ensure!(
        s.submitted == 6 && s.completed == 6 && s.in_flight == 0,
        "{s:?}"
    );
    Ok(())
}

fn submit_and_apply() -> anyhow::Result<()> {
    let pool = Pool::new(2)?.watched();
    ensure!(pool.apply(SQUARE, 12)? == 144);
    let mut slow = pool.submit(SLEEP_MS, 300)?;
    ensure!(slow.try_get().is_none(), "cannot be ready yet");
    ensure!(slow.wait_timeout(Duration::from_millis(1)).is_none());
    ensure!(
        slow.wait_timeout(Duration::from_secs(20))
            .is_some_and(|r| r.as_ref().is_ok_and(|&v| v == 300))
    );
    ensure!(slow.wait()? == 300);
    Ok(())
}

/// `max_payload_len` bounds every value, both ways, with one error shape.
/// An input over it fails in the master, before anything is sent (`submit`
/// looks the task up first, then checks the size); in a stream only that
/// item fails, and the pool keeps working. A result over it fails in the
/// worker, only that item (before, every item of its chunk failed, as
/// `TaskError::EncodeOutput`), and the worker lives on.
fn oversized_values_are_payload_too_large() -> anyhow::Result<()> {
    const MAX: u64 = 1024;
    const NOT_REGISTERED: Task<ByteBuf, u64> = Task::new("not_registered");
    let bytes = |n: usize| ByteBuf::from(vec![7u8; n]);
    let pool = Pool::builder()
        .workers(1)
        .chunk_size(1)
        .max_payload_len(MAX)
        .build()?
        .watched();
    let too_large = |e: &Error, which: Oversized| {
        // 4096 bytes, their length prefix (and a result's tag).
        matches!(e.inner(), Error::PayloadTooLarge { what, len: 4099..=4100, max: MAX } if *what == which)
    };

    // The task is checked before the input's size.
    let err = pool.submit(NOT_REGISTERED, bytes(4096)).unwrap_err();
    ensure!(
        matches!(&err, Error::UnknownTask { name, .. } if name == "not_registered"),
        "{err:?}"
    );
    let err = pool.submit(LEN, bytes(4096)).unwrap_err();
    ensure!(too_large(&err, Oversized::Input), "submit: {err:?}");
    let err = pool.apply(LEN, bytes(4096)).unwrap_err();
    ensure!(too_large(&err, Oversized::Input), "apply: {err:?}");

    // In a stream only the oversized item fails, whether it would have
    // shared a chunk with its neighbours or not; the same for results.
    for chunk in [1, 8] {
        let p = Pool::builder()
            .workers(1)
            .chunk_size(chunk)
            .max_payload_len(MAX)
            .build()?
            .watched();
        let items = vec![bytes(1), bytes(4096), bytes(3)];
        let got: Vec<_> = p.imap(LEN, items)?.collect();
        ensure!(
            matches!(got[..], [Ok(1), Err(ref e), Ok(3)] if too_large(e, Oversized::Input)),
            "chunk size {chunk}: {got:?}"
        );
        let got: Vec<_> = p.imap(BYTES, [10u64, 4096, 20])?.collect();
        ensure!(
            matches!(&got[..], [Ok(a), Err(e), Ok(b)]
                if a.len() == 10 && too_large(e, Oversized::Output) && b.len() == 20),
            "chunk size {chunk}: {got:?}"
        );
        ensure!(p.stats().workers_replaced == 0, "a worker was lost");
    }

    // The pool still works, and nothing it did cost a worker.
    ensure!(pool.apply(LEN, bytes(100))? == 100);
    let err = pool.apply(BYTES, 4096).unwrap_err();
    ensure!(too_large(&err, Oversized::Output), "apply: {err:?}");
    ensure!(pool.apply(LEN, bytes(100))? == 100);
    ensure!(pool.stats().workers_replaced == 0, "a worker was lost");
    Ok(())
}

/// Results each within the limit but over it together, in one chunk, are
/// reported in several frames (before: every item failed).
fn results_together_over_the_limit_travel_in_several_frames() -> anyhow::Result<()> {
    let pool = Pool::builder()
        .workers(1)
        .chunk_size(8)
        .max_payload_len(1024)
        .build()?
        .watched();
    let got = pool.map(BYTES, [600u64, 700, 1000, 5, 900])?;
    ensure!(
        got.iter().map(|b| b.len()).collect::<Vec<_>>() == [600, 700, 1000, 5, 900],
        "{got:?}"
    );
    Ok(())
}

/// The default limit is 64 MiB of data: a 64 MiB buffer passes both ways
/// (before, the limit counted the frame's header and refused it).
fn a_buffer_as_large_as_the_limit_passes() -> anyhow::Result<()> {
    const LIMIT: usize = 64 << 20;
    let pool = Pool::builder().workers(1).build()?.watched();
    ensure!(pool.apply(LEN, ByteBuf::from(vec![1u8; LIMIT]))? == LIMIT as u64);
    ensure!(pool.apply(BYTES, LIMIT as u64)?.len() == LIMIT);
    Ok(())
}

fn imap_is_lazy_and_bounded() -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let window = 1000;
    let pool = Pool::builder().workers(2).window(window).build()?.watched();
    let pulled = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&pulled);
    let input = (0..1_000_000u64).inspect(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    let mut yielded = 0u64;
    let mut max_gap = 0;
    for (i, r) in pool.imap(SQUARE, input)?.enumerate() {
        ensure!(r? == (i as u64) * (i as u64));
        yielded += 1;
        let gap = pulled.load(Ordering::Relaxed) - yielded;
        max_gap = max_gap.max(gap);
        ensure!(
            gap <= window as u64,
            "pulled {} but yielded {yielded}",
            pulled.load(Ordering::Relaxed)
        );
    }
    ensure!(yielded == 1_000_000);
    eprintln!("max pulled-minus-yielded gap: {max_gap} (window {window})");
    Ok(())
}

fn imap_order_and_unordered_exactly_once() -> anyhow::Result<()> {
    let pool = Pool::builder().workers(2).chunk_size(3).build()?.watched();
    // Later items finish first: ordered output must still follow input order.
    let input: Vec<u64> = (0..40).map(|i| (40 - i) % 7).collect();
    let got: Vec<u64> = pool
        .imap(SLEEP_MS, input.clone())?
        .collect::<Result<_, _>>()?;
    ensure!(got == input);
    let mut got: Vec<u64> = pool
        .imap_unordered(SQUARE, 0..5000u64)?
        .collect::<Result<_, _>>()?;
    got.sort_unstable();
    ensure!(got == (0..5000u64).map(|x| x * x).collect::<Vec<_>>());
    Ok(())
}

/// The rayon habit: `&Vec<u64>` yields `&u64`, and the task takes `u64`.
fn borrowed_inputs_work_like_owned_ones() -> anyhow::Result<()> {
    let pool = Pool::builder().workers(2).build()?.watched();
    let v: Vec<u64> = (0..100).collect();
    let squares: Vec<u64> = v.iter().map(|x| x * x).collect();
    ensure!(pool.map(SQUARE, &v)? == squares);
    ensure!(pool.map(SQUARE, v.iter())? == squares);
    ensure!(pool.imap(SQUARE, &v)?.collect::<Result<Vec<_>, _>>()? == squares);
    let mut got = pool
        .imap_unordered(SQUARE, &v[..])?
        .collect::<Result<Vec<_>, _>>()?;
    got.sort_unstable();
    ensure!(got == squares);
    let words = vec!["12".to_string(), "x".to_string()];
    let parsed = pool.map(PARSE, &words);
    ensure!(
        matches!(
            parsed.as_ref().map_err(Error::inner),
            Err(Error::Task(TaskError::Failed { .. }))
        ),
        "{parsed:?}"
    );
    ensure!(pool.apply(PARSE, words[0].clone())? == 12);
    Ok(())
}

fn worker_deaths_fail_only_their_tasks_and_are_replaced() -> anyhow::Result<()> {
    let pool = Pool::builder().workers(2).chunk_size(1).build()?.watched();
    // Items 13 die: 113, 213, ... (mod 100 == 13) abort or SIGKILL themselves.
    let input = 0..1000u64;
    let got: Vec<_> = pool
        .imap(
            ABORT_ON_13,
            input
                .clone()
                .map(|x| if x % 200 == 13 { 13 } else { x + 1000 }),
        )?
        .collect();
    let got2: Vec<_> = pool
        .imap(
            SIGKILL_ON_13,
            input.map(|x| if x % 200 == 113 { 13 } else { x + 1000 }),
        )?
        .collect();
    for (results, name) in [(&got, "abort"), (&got2, "sigkill")] {
        let dead: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_err())
            .map(|(i, _)| i)
            .collect();
        ensure!(dead.len() == 5, "{name}: failed items {dead:?}");
        for &i in &dead {
            ensure!(
                matches!(
                    results[i].as_ref().map_err(Error::inner),
                    Err(Error::WorkerDied { .. })
                ),
                "{name}: item {i}: {:?}",
                results[i]
            );
        }
        ensure!(
            results.iter().filter(|r| r.is_ok()).count() == 995,
            "{name}"
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        let signals: Vec<_> = got2
            .iter()
            .filter_map(|r| match r.as_ref().map_err(Error::inner) {
                Err(Error::WorkerDied { status, .. }) => status.signal(),
                _ => None,
            })
            .collect();
        ensure!(
            signals.iter().all(|&s| s == 9),
            "expected SIGKILL, got {signals:?}"
        );
    }
    let stats = pool.stats();
    ensure!(stats.workers_replaced == 10, "{stats:?}");
    ensure!(stats.workers_alive == 2, "{stats:?}");
    Ok(())
}

fn retries_recover_from_worker_deaths() -> anyhow::Result<()> {
    let dir = temp_dir("retry")?;
    let dir_s = dir.to_string_lossy().into_owned();
    let pool = Pool::builder()
        .workers(2)
        .chunk_size(1)
        .retries(2)
        .build()?
        .watched();
    // Every 100th item kills its worker on the first attempt only.
    let items: Vec<(String, u64)> = (0..1000u64)
        .map(|x| {
            (
                if x % 100 == 7 {
                    dir_s.clone()
                } else {
                    String::new()
                },
                x,
            )
        })
        .collect();
    // Items with an empty dir never die (the marker path is relative "x": use a per-item check).
    let items: Vec<(String, u64)> = items
        .into_iter()
        .map(|(d, x)| {
            if d.is_empty() {
                (dir.join("never").to_string_lossy().into_owned(), x)
            } else {
                (d, x)
            }
        })
        .collect();
    std::fs::create_dir_all(dir.join("never"))?;
    for x in (0..1000u64).filter(|x| x % 100 != 7) {
        std::fs::write(dir.join("never").join(x.to_string()), b"")?;
    }
    let got = pool
        .map(DIE_ONCE, items)
        .context("every item must succeed with retries")?;
    ensure!(got == (0..1000u64).collect::<Vec<_>>());
    ensure!(pool.stats().workers_replaced == 10, "{:?}", pool.stats());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn task_timeout_kills_and_replaces() -> anyhow::Result<()> {
    let timeout = Duration::from_millis(500);
    let pool = Pool::builder()
        .workers(1)
        .task_timeout(timeout)
        .build()?
        .watched();
    let started = Instant::now();
    let err = pool.apply(SLEEP_MS, 600_000).unwrap_err();
    let took = started.elapsed();
    ensure!(matches!(err.inner(), Error::Timeout { .. }), "{err:?}");
    // The timeout firing is the feature, so its time is checked: not
    // before the timeout, and long before the 10-minute task would have
    // ended. The upper bound is generous (a loaded CI machine), not a
    // measure of how promptly it fires.
    ensure!(
        took >= timeout,
        "timed out after {took:?}, before {timeout:?}"
    );
    ensure!(
        took < timeout + Duration::from_secs(20),
        "timeout took {took:?}"
    );
    ensure!(pool.apply(SQUARE, 3)? == 9, "pool must keep working");
    ensure!(pool.stats().workers_replaced == 1);
    Ok(())
}

fn max_tasks_per_worker_recycles() -> anyhow::Result<()> {
    let pool = Pool::builder()
        .workers(2)
        .chunk_size(1)
        .max_tasks_per_worker(10)
        .build()?
        .watched();
    let pids = pool.map(PID, 0..100u64)?;
    let mut distinct = pids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    ensure!(
        distinct.len() >= 10,
        "only {} distinct pids",
        distinct.len()
    );
    let live = pool.worker_pids();
    drop(pool);
    all_gone(&distinct)?;
    all_gone(&live)
}

fn initializer_runs_once_per_worker() -> anyhow::Result<()> {
    let pool = Pool::builder()
        .workers(2)
        .chunk_size(1)
        .initializer(INIT)
        .max_tasks_per_worker(5)
        .build()?
        .watched();
    let got = pool.map(INIT_COUNT, 0..40u64)?;
    for (pid, runs) in &got {
        ensure!(*runs == 1, "worker {pid} ran its initializer {runs} times");
    }
    Ok(())
}

/// An initializer that panics is reported as such, with its message, once
/// every start of the worker has failed (three in a row): not as a worker
/// killed by a signal, and without restarting workers forever.
fn failing_initializer_is_reported_with_its_message() -> anyhow::Result<()> {
    let pool = Pool::builder()
        .workers(1)
        .initializer_with(INIT_PANIC, "no model file".to_string())
        .build()?
        .watched();
    let err = pool.map(SQUARE, 0..4u64).unwrap_err();
    match &err {
        Error::Initializer {
            source: procpool::TaskError::Panicked { message, .. },
            ..
        } if message.contains("no model file") => Ok(()),
        other => anyhow::bail!("expected the initializer's panic, got {other:?}"),
    }
}

/// Python's `initargs`: every worker, replacements included, runs the
/// initializer once on the argument.
fn initializer_argument_reaches_every_worker() -> anyhow::Result<()> {
    let arg = "model weights at /data/w.bin".to_string();
    let pool = Pool::builder()
        .workers(2)
        .chunk_size(1)
        .initializer_with(INIT_WITH, arg.clone())
        .max_tasks_per_worker(5)
        .build()?
        .watched();
    let got = pool.map(INIT_ARGS, 0..40u64)?;
    for (pid, args) in &got {
        ensure!(*args == [arg.clone()], "worker {pid} saw {args:?}");
    }
    let mut pids: Vec<u32> = got.iter().map(|(pid, _)| *pid).collect();
    pids.sort_unstable();
    pids.dedup();
    ensure!(
        pids.len() >= 8,
        "40 tasks at 5 per worker need 8 workers, saw {pids:?}"
    );
    Ok(())
}

/// Checked in `build`, before any worker starts.
fn initializer_argument_that_cannot_be_sent_fails_the_build() -> anyhow::Result<()> {
    let err = Pool::builder()
        .workers(1)
        .max_payload_len(64)
        .initializer_with(INIT_WITH, "x".repeat(100))
        .build()
        .unwrap_err();
    ensure!(
        matches!(
            err,
            Error::PayloadTooLarge {
                what: Oversized::InitializerArg,
                len: 101,
                max: 64
            }
        ),
        "{err:?}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        const INIT_PATH: Task<std::path::PathBuf, ()> = Task::new("init_path");
        let not_utf8 = std::ffi::OsStr::from_bytes(b"/tmp/\xff").into();
        let err = Pool::builder()
            .workers(1)
            .initializer_with(INIT_PATH, not_utf8)
            .build()
            .unwrap_err();
        ensure!(matches!(err, Error::Encode(_)), "{err:?}");
    }
    Ok(())
}

/// Runs a long `map` on two workers and, once a task has started on each,
/// calls `stop` on the pool from another thread; returns what `map` said,
/// then what a `submit` says after it, and checks no worker is left.
fn stop_a_running_map(
    builder: procpool::PoolBuilder,
    stop: fn(&Pool),
) -> anyhow::Result<(Error, Error)> {
    let pool = Arc::new(builder.workers(2).build()?.watched());
    let pids = pool.worker_pids();
    // Each task announces its start on this queue.
    let started: Queue<u32> = Queue::new();
    let stopper = {
        let pool = Arc::clone(&pool);
        let started = started.clone();
        std::thread::spawn(move || -> anyhow::Result<()> {
            // Wait until the map is really running (tasks started on both
            // workers) before asking for the stop.
            for _ in 0..2 {
                started
                    .get_timeout(Duration::from_secs(30))
                    .context("no task of the map started within 30 s")?;
            }
            stop(&pool);
            Ok(())
        })
    };
    // 400 tasks of 50 ms on two workers: 10 s if nothing stops them.
    let err = pool
        .map(ANNOUNCE_SLEEP, vec![(started.clone(), 50u64); 400])
        .unwrap_err();
    stopper
        .join()
        .map_err(|_| anyhow::anyhow!("stopper panicked"))??;
    let after = pool.submit(SQUARE, 2).map(|_| ()).unwrap_err();
    let pool = Arc::into_inner(pool).context("sole owner")?;
    drop(pool);
    all_gone(&pids)?;
    Ok((err, after))
}

fn shutdown_from_another_thread_interrupts_map() -> anyhow::Result<()> {
    let builder = Pool::builder().grace_period(Duration::from_secs(5));
    let (err, after) = stop_a_running_map(builder, Pool::shutdown)?;
    ensure!(
        matches!(err, Error::Interrupted),
        "map after shutdown: {err:?}"
    );
    ensure!(
        matches!(after, Error::Interrupted),
        "submit after shutdown: {after:?}"
    );
    Ok(())
}

/// `terminate` from another thread ends a blocked `map` with `Terminated`
/// (what its docs promise), and a call after it is refused as `Closed`.
fn terminate_from_another_thread_ends_map_with_terminated() -> anyhow::Result<()> {
    let (err, after) = stop_a_running_map(Pool::builder(), Pool::terminate)?;
    ensure!(
        matches!(err, Error::Terminated),
        "map after terminate: {err:?}"
    );
    ensure!(
        matches!(after, Error::Closed),
        "submit after terminate: {after:?}"
    );
    Ok(())
}

fn several_threads_share_one_pool() -> anyhow::Result<()> {
    let pool = Pool::builder().workers(2).build()?.watched();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..4u64)
            .map(|t| {
                let pool = &pool;
                scope.spawn(move || -> anyhow::Result<()> {
                    let base = t * 10_000;
                    let want: Vec<u64> = (base..base + 5_000).map(|x| x * x).collect();
                    ensure!(
                        pool.map(SQUARE, base..base + 5_000)? == want,
                        "thread {t}: map"
                    );
                    let mut got: Vec<u64> = pool
                        .imap_unordered(SQUARE, base..base + 5_000)?
                        .collect::<Result<_, _>>()?;
                    got.sort_unstable();
                    ensure!(got == want, "thread {t}: imap_unordered");
                    ensure!(pool.apply(SQUARE, t)? == t * t);
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("thread panicked"))??;
        }
        Ok(())
    })?;
    pool.join()?;
    let s = pool.stats();
    ensure!(s.in_flight == 0 && s.completed == s.submitted, "{s:?}");
    Ok(())
}

/// The pace measured for one task must not decide how deep another task's
/// chunks queue at a worker: after thousands of trivial tasks, slow ones
/// still go to both workers rather than pile up at one.
fn slow_tasks_after_fast_ones_spread_over_workers() -> anyhow::Result<()> {
    let pool = Pool::builder().workers(2).chunk_size(1).build()?.watched();
    pool.map(SQUARE, 0..5_000u64)?;
    let pids = pool.map(SLEEP_PID, vec![20u64; 40])?;
    let mut counts = std::collections::HashMap::new();
    for pid in pids {
        *counts.entry(pid).or_insert(0) += 1;
    }
    ensure!(
        counts.len() == 2 && counts.values().all(|&n| n >= 10),
        "tasks per worker: {counts:?}"
    );
    Ok(())
}

/// Calls made one after another find every worker idle: each goes to the
/// worker the last one went to, which is still awake (waking each idle
/// worker in turn cost a fifth more CPU per `apply`). The chunks of one job
/// take turns: a map's first chunks go to distinct workers even when each
/// is answered before the next comes (when the lowest worker id took every
/// tie, each item of the Slurm `sbatch` example ran on the node whose
/// workers joined first).
fn calls_in_a_row_stay_on_one_worker_and_a_jobs_chunks_take_turns() -> anyhow::Result<()> {
    let pool = Pool::new(4)?.watched();
    ensure!(
        pool.wait_for_workers(4, Duration::from_secs(30)),
        "{:?}",
        pool.stats()
    );
    let mut counts = std::collections::HashMap::new();
    for i in 0..8u64 {
        *counts.entry(pool.apply(PID, i)?).or_insert(0) += 1;
    }
    ensure!(counts.len() == 1, "tasks per worker: {counts:?}");
    let pids = pool.map_chunked(PID, 0..4u64, 1)?;
    let distinct: std::collections::HashSet<u32> = pids.iter().copied().collect();
    ensure!(distinct.len() == 4, "a map's 4 chunks ran on {pids:?}");
    Ok(())
}

/// After a shutdown, an `imap` yields one result per input it had taken, in
/// order: the outputs of the tasks that were running (they finish during
/// the grace period), then `Interrupted` for those that had not started.
/// It failed before: the results that finished during the grace period
/// were dropped, and one `Interrupted` ended the iterator.
fn interrupted_imap_hands_out_what_arrived() -> anyhow::Result<()> {
    let pool = Pool::builder().workers(2).chunk_size(1).build()?.watched();
    let mut it = pool.imap(SLEEP_MS, (0..40u64).map(|i| 200 + i % 3))?;
    let mut seen = vec![it.next().context("ended early")??];
    // Both workers are running a 200 ms task now.
    pool.shutdown();
    let rest: Vec<_> = it.by_ref().collect();
    ensure!(
        rest.len() == 39,
        "{} results after the shutdown: {rest:?}",
        rest.len()
    );
    let oks = rest.iter().take_while(|r| r.is_ok()).count();
    ensure!(
        oks >= 1,
        "the running tasks' results were dropped: {rest:?}"
    );
    for r in &rest[..oks] {
        seen.push(*r.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?);
    }
    ensure!(
        rest[oks..]
            .iter()
            .all(|r| matches!(r, Err(Error::Interrupted))),
        "after the outputs, only Interrupted: {rest:?}"
    );
    let want: Vec<u64> = (0..seen.len() as u64).map(|i| 200 + i % 3).collect();
    ensure!(seen == want, "results out of order: {seen:?}");
    ensure!(it.next().is_none(), "the iterator ends");
    Ok(())
}

/// After a shutdown, an `imap` over an endless input yields what it had
/// taken, then one `Interrupted` for the inputs never taken, and ends.
fn interrupted_endless_imap_ends_with_one_interrupted() -> anyhow::Result<()> {
    let pool = Pool::builder()
        .workers(2)
        .chunk_size(1)
        .window(4)
        .build()?
        .watched();
    let mut it = pool.imap_unordered(SLEEP_MS, std::iter::repeat(200u64))?;
    it.next().context("ended early")??;
    pool.shutdown();
    let rest: Vec<_> = it.by_ref().collect();
    let (last, before) = rest.split_last().context("nothing after the shutdown")?;
    ensure!(matches!(last, Err(Error::Interrupted)), "{rest:?}");
    ensure!(before.len() <= 4, "at most the window: {rest:?}");
    ensure!(
        before.iter().any(|r| matches!(r, Ok(200))),
        "the running tasks' results were dropped: {rest:?}"
    );
    ensure!(
        before
            .iter()
            .all(|r| matches!(r, Ok(200) | Err(Error::Interrupted))),
        "{rest:?}"
    );
    ensure!(it.next().is_none(), "the iterator ends");
    Ok(())
}
