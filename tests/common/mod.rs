//! Shared pieces of the integration tests: the tasks their workers serve, a
//! watchdog that bounds every test, and process checks.
//!
//! Each test binary has its own `main` (harness = false) that calls
//! `procpool::init(common::registry())` first, so it can re-execute itself as
//! a worker, and then runs its tests through libtest-mimic.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use procpool::{Registry, Task};

pub const SQUARE: Task<u64, u64> = Task::new("square");
/// Panics on 13.
pub const PANIC_ON_13: Task<u64, u64> = Task::new("panic_on_13");
/// Aborts the worker on 13.
pub const ABORT_ON_13: Task<u64, u64> = Task::new("abort_on_13");
pub const PARSE: Task<String, i64> = Task::new("parse");
/// Returns the worker's pid.
pub const PID: Task<u64, u32> = Task::new("pid");
/// Sleeps this many milliseconds, returns the input.
pub const SLEEP_MS: Task<u64, u64> = Task::new("sleep_ms");
/// Kills its own worker the first time it sees an input: it creates a
/// marker file named after the input in the given directory, then dies.
pub const DIE_ONCE: Task<(String, u64), u64> = Task::new("die_once");
/// Kills its own worker with SIGKILL on 13 (Unix), aborts elsewhere.
pub const SIGKILL_ON_13: Task<u64, u64> = Task::new("sigkill_on_13");
/// Returns how many times the initializer ran in this worker, and the pid.
pub const INIT_COUNT: Task<u64, (u32, u64)> = Task::new("init_count");
pub const INIT: Task<(), ()> = Task::new("init");
/// Sleeps this many milliseconds, returns the worker's pid.
pub const SLEEP_PID: Task<u64, u32> = Task::new("sleep_pid");

static INIT_RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn kill_self() -> ! {
    #[cfg(unix)]
    {
        let _ = std::process::Command::new("kill")
            .args(["-9", &std::process::id().to_string()])
            .status();
    }
    std::process::abort()
}

pub fn registry() -> Registry {
    Registry::new()
        .task(SQUARE, |x| x * x)
        .task(PANIC_ON_13, |x| {
            assert!(x != 13, "unlucky number {x}");
            x
        })
        .task(ABORT_ON_13, |x| {
            if x == 13 {
                std::process::abort();
            }
            x
        })
        .try_task(PARSE, |s: String| s.parse::<i64>())
        .task(PID, |_| std::process::id())
        .task(SLEEP_MS, |ms| {
            std::thread::sleep(Duration::from_millis(ms));
            ms
        })
        .task(DIE_ONCE, |(dir, x)| {
            let marker = PathBuf::from(dir).join(x.to_string());
            if std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&marker)
                .is_ok()
            {
                std::process::abort();
            }
            x
        })
        .task(SIGKILL_ON_13, |x| {
            if x == 13 {
                kill_self();
            }
            x
        })
        .task(INIT, |()| {
            INIT_RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })
        .task(SLEEP_PID, |ms| {
            std::thread::sleep(Duration::from_millis(ms));
            std::process::id()
        })
        .task(INIT_COUNT, |_| {
            (
                std::process::id(),
                INIT_RUNS.load(std::sync::atomic::Ordering::SeqCst),
            )
        })
}

/// Runs `f` on a thread and fails if it takes longer than `limit`, so a
/// hang in the code under test fails the test instead of stalling CI.
pub fn bounded(
    limit: Duration,
    f: impl FnOnce() -> anyhow::Result<()> + Send + 'static,
) -> Result<(), libtest_mimic::Failed> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = tx.send(result);
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(format!("{e:#}").into()),
        Ok(Err(panic)) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("test panicked: {msg}").into())
        }
        Err(_) => Err(format!("test did not finish within {limit:?}").into()),
    }
}

/// A test case: name and body, bounded by `limit`.
pub fn trial(
    name: &str,
    limit: Duration,
    f: impl FnOnce() -> anyhow::Result<()> + Send + 'static,
) -> libtest_mimic::Trial {
    libtest_mimic::Trial::test(name, move || bounded(limit, f))
}

/// Whether a process with this pid exists (a zombie counts: it must have
/// been reaped). See [`procpool_ipc::endpoint::process_alive`].
pub fn alive(pid: u32) -> bool {
    procpool_ipc::endpoint::process_alive(pid)
}

/// The path of a built example program. A plain `cargo test` builds the
/// examples; `cargo test --test NAME` alone does not rebuild them.
pub fn example(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or_else(|| anyhow::anyhow!("test binary has no parent directory"))?;
    let path = dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    anyhow::ensure!(
        path.exists(),
        "example {} not built (cargo test and cargo build --examples build it)",
        path.display()
    );
    Ok(path)
}

/// A fresh empty directory for one test.
pub fn temp_dir(tag: &str) -> anyhow::Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("procpool-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
