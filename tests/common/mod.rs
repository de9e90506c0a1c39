//! Shared pieces of the integration tests: the tasks their workers serve, a
//! watchdog that bounds every test, and process checks.
//!
//! Each test binary has its own `main` (harness = false) that calls
//! `procpool::init(common::registry())` first, so it can re-execute itself as
//! a worker, and then runs its tests through libtest-mimic.
#![allow(dead_code, unreachable_pub, missing_docs)]

#[cfg(unix)]
pub mod peers;
pub mod remote;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use procpool::{Registry, Task};

pub const SQUARE: Task<u64, u64> = Task::new("square");
/// Panics on 13.
pub const PANIC_ON_13: Task<u64, u64> = Task::new("panic_on_13");
/// Aborts the worker on 13.
pub const ABORT_ON_13: Task<u64, u64> = Task::new("abort_on_13");
/// `(ms, x)`: sleeps `ms` milliseconds, then aborts the worker if `x` is
/// 13; returns `x`.
pub const SLEEP_THEN_ABORT_ON_13: Task<(u64, u64), u64> = Task::new("sleep_then_abort_on_13");
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
/// An initializer with an argument: records it in the worker.
pub const INIT_WITH: Task<String, ()> = Task::new("init_with");
/// An initializer that panics with its argument as the message.
pub const INIT_PANIC: Task<String, ()> = Task::new("init_panic");
/// Returns the worker's pid and every argument its `INIT_WITH` received.
pub const INIT_ARGS: Task<u64, (u32, Vec<String>)> = Task::new("init_args");
/// Sleeps this many milliseconds, returns the worker's pid.
pub const SLEEP_PID: Task<u64, u32> = Task::new("sleep_pid");
/// Returns the length of a byte buffer (`ByteBuf`: encoded in one piece,
/// so a 1 MiB input costs a copy, not a million varints).
pub const LEN: Task<serde_bytes::ByteBuf, u64> = Task::new("len");
/// `(x, trigger)`: when `x == trigger` the worker stops itself with
/// SIGSTOP (Unix; elsewhere the task blocks forever), a hung worker that
/// neither answers nor dies. Returns `x` (once continued, if ever).
pub const STOP_ON: Task<(u64, u64), u64> = Task::new("stop_on");
/// Returns this many bytes (for results over a frame limit).
pub const BYTES: Task<u64, serde_bytes::ByteBuf> = Task::new("bytes");
/// Puts its pid on the queue (it has started), sleeps this many
/// milliseconds, returns its pid.
pub const ANNOUNCE_SLEEP: Task<(procpool::Queue<u32>, u64), u32> = Task::new("announce_sleep");

static INIT_RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static INIT_WITH_ARGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn kill_self() -> ! {
    #[cfg(unix)]
    {
        let _ = std::process::Command::new("kill")
            .args(["-9", &std::process::id().to_string()])
            .status();
    }
    std::process::abort()
}

/// Stops this process until someone sends SIGCONT (or kills it).
fn stop_self() {
    #[cfg(unix)]
    // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGSTOP);
    }
    #[cfg(not(unix))]
    loop {
        std::thread::park();
    }
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
        .task(SLEEP_THEN_ABORT_ON_13, |(ms, x)| {
            std::thread::sleep(Duration::from_millis(ms));
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
        .task(LEN, |bytes| bytes.len() as u64)
        .task(BYTES, |n| {
            serde_bytes::ByteBuf::from(vec![0u8; usize::try_from(n).expect("a length")])
        })
        .task(ANNOUNCE_SLEEP, |(started, ms)| {
            started.put(std::process::id()).expect("started");
            std::thread::sleep(Duration::from_millis(ms));
            std::process::id()
        })
        .task(STOP_ON, |(x, trigger)| {
            if x == trigger {
                stop_self();
            }
            x
        })
        .task(INIT_PANIC, |msg| panic!("{msg}"))
        .task(INIT_WITH, |arg| {
            INIT_WITH_ARGS
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(arg);
        })
        .task(INIT_ARGS, |_| {
            let args = INIT_WITH_ARGS
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            (std::process::id(), args.clone())
        })
        .task(INIT_COUNT, |_| {
            (
                std::process::id(),
                INIT_RUNS.load(std::sync::atomic::Ordering::SeqCst),
            )
        })
}

/// The processes one trial started, for its watchdog: when the trial
/// overruns its limit, the watchdog kills every one still alive, so a hung
/// test leaves nothing behind (and whatever it blocks on is released).
///
/// A trial's body registers them through [`reaper`] (or the [`Watched`]
/// shorthand); the registry is shared with the watchdog, and helper threads
/// started through [`within`] register into the same one. A pid is killed
/// only if it still exists when the watchdog fires; one the test reaped and
/// the system already handed to another process is the small price of
/// killing by pid.
#[derive(Clone, Debug, Default)]
pub struct Reaper(Arc<Mutex<Reaped>>);

#[derive(Debug, Default)]
struct Reaped {
    pids: Vec<u32>,
    /// Process groups (Unix): every member is killed.
    groups: Vec<u32>,
}

impl Reaper {
    fn lock(&self) -> std::sync::MutexGuard<'_, Reaped> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Kills `pid` if the trial overruns.
    pub fn watch(&self, pid: u32) {
        let mut r = self.lock();
        if pid != 0 && !r.pids.contains(&pid) {
            r.pids.push(pid);
        }
    }

    /// Kills the whole process group `pgid` if the trial overruns (Unix;
    /// elsewhere only the process `pgid`).
    pub fn watch_group(&self, pgid: u32) {
        let mut r = self.lock();
        if pgid != 0 && !r.groups.contains(&pgid) {
            r.groups.push(pgid);
        }
    }

    /// Kills what is registered and still alive; returns what it killed.
    fn kill_all(&self) -> Vec<u32> {
        let r = self.lock();
        let mut killed = Vec::new();
        for &pgid in &r.groups {
            if kill_group(pgid) {
                killed.push(pgid);
            }
        }
        for &pid in &r.pids {
            if alive(pid) {
                kill_pid(pid);
                killed.push(pid);
            }
        }
        killed
    }
}

#[cfg(unix)]
fn kill_pid(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is positive
    // (registered pids are never 0), so no group is signalled. SIGCONT first:
    // a stopped process dies of SIGKILL too, but its owner may be waiting
    // for it to run.
    unsafe {
        libc::kill(pid, libc::SIGCONT);
        libc::kill(pid, libc::SIGKILL);
    }
}

#[cfg(not(unix))]
fn kill_pid(pid: u32) {
    let _ = std::process::Command::new("taskkill")
        .args(["/F", "/PID", &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Kills every member of the group; whether there was any.
#[cfg(unix)]
fn kill_group(pgid: u32) -> bool {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return false;
    };
    // SAFETY: kill(2) with a negative pid signals the group; no memory is touched.
    unsafe {
        libc::kill(-pgid, libc::SIGCONT);
        libc::kill(-pgid, libc::SIGKILL) == 0
    }
}

#[cfg(not(unix))]
fn kill_group(pgid: u32) -> bool {
    let alive = alive(pgid);
    if alive {
        let _ = std::process::Command::new("taskkill")
            .args(["/F", "/T", "/PID", &pgid.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
    alive
}

thread_local! {
    static REAPER: std::cell::RefCell<Option<Reaper>> = const { std::cell::RefCell::new(None) };
}

/// The running trial's [`Reaper`] (on a thread that belongs to no trial, a
/// fresh one nobody watches).
pub fn reaper() -> Reaper {
    REAPER.with(|r| r.borrow().clone()).unwrap_or_default()
}

fn install_reaper(reaper: Reaper) {
    REAPER.with(|r| *r.borrow_mut() = Some(reaper));
}

/// Registers a freshly started pool or process with the trial's
/// [`Reaper`]: `Pool::new(2)?.watched()`. A pool registers the workers it
/// has now (replacements started later are not).
pub trait Watched: Sized {
    fn watched(self) -> Self;
}

impl Watched for procpool::Pool {
    fn watched(self) -> Self {
        let r = reaper();
        for pid in self.worker_pids() {
            r.watch(pid);
        }
        self
    }
}

impl<O: procpool_ipc::task::Payload> Watched for procpool::Process<O> {
    fn watched(self) -> Self {
        reaper().watch(self.pid());
        self
    }
}

impl Watched for std::process::Child {
    fn watched(self) -> Self {
        reaper().watch(self.id());
        self
    }
}

/// Runs `f` on a thread and fails if it takes longer than `limit`, so a
/// hang in the code under test fails the test instead of stalling CI. On
/// that timeout every process `f` registered with its [`Reaper`] is killed.
pub fn bounded(
    limit: Duration,
    f: impl FnOnce() -> anyhow::Result<()> + Send + 'static,
) -> Result<(), libtest_mimic::Failed> {
    let (tx, rx) = mpsc::channel();
    let reaper = Reaper::default();
    let theirs = reaper.clone();
    std::thread::spawn(move || {
        install_reaper(theirs);
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
        Err(_) => {
            let killed = reaper.kill_all();
            Err(
                format!("test did not finish within {limit:?} (killed its processes {killed:?})")
                    .into(),
            )
        }
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

/// `trials![LIMIT; join_and_work, wrong_key]`: one bounded [`trial`] per
/// function, named after it, as a `Vec<Trial>`.
#[allow(unused_macros)] // binaries with no trial on this platform
macro_rules! trials {
    ($limit:expr; $($f:ident),* $(,)?) => {
        vec![$($crate::common::trial(stringify!($f), $limit, $f)),*]
    };
}
#[allow(unused_imports)]
pub(crate) use trials;

/// Whether a process with this pid exists (a zombie counts: it must have
/// been reaped). See [`procpool_ipc::endpoint::process_alive`].
pub fn alive(pid: u32) -> bool {
    procpool_ipc::endpoint::process_alive(pid)
}

/// Runs `f`, the call under test, on a helper thread and waits at most
/// `limit` for it; returns its value and how long it took. When it is still
/// blocked the error says which call and for how long (the helper thread is
/// left behind, to finish once whatever blocks it is removed).
pub fn within<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<(T, Duration)> {
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    let reaper = reaper();
    std::thread::Builder::new()
        .name(format!("call: {what}"))
        .spawn(move || {
            install_reaper(reaper);
            let _ = tx.send(f());
        })?;
    match rx.recv_timeout(limit) {
        Ok(value) => Ok((value, start.elapsed())),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            anyhow::bail!("{what} blocked: no return within {limit:?}")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => anyhow::bail!("{what} panicked"),
    }
}

/// Waits (a bounded poll of process state) until none of `pids` exists.
pub fn wait_gone(pids: &[u32], limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if left.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "worker processes {left:?} still exist (or are unreaped) {limit:?} later"
        );
        // Polling the process table is the check; the pause only paces it.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Failures of one trial, gathered so that one blocked call does not hide
/// what the next ones do.
#[derive(Debug, Default)]
pub struct Verdict(Vec<String>);

impl Verdict {
    /// Records `r`'s error, if any; its value otherwise.
    pub fn check<T>(&mut self, r: anyhow::Result<T>) -> Option<T> {
        r.map_err(|e| self.0.push(format!("{e:#}"))).ok()
    }

    /// Records a failure.
    pub fn fail(&mut self, msg: impl Into<String>) {
        self.0.push(msg.into());
    }

    pub fn ok(&self) -> bool {
        self.0.is_empty()
    }

    /// Ok if nothing failed; otherwise every failure, in order.
    pub fn finish(self) -> anyhow::Result<()> {
        match self.0.len() {
            0 => Ok(()),
            1 => anyhow::bail!("{}", self.0[0]),
            _ => anyhow::bail!("\n  - {}", self.0.join("\n  - ")),
        }
    }
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

/// A small reproducible random sequence (xorshift64) from `seed` (not 0),
/// for crash runs that kill at random moments.
#[allow(dead_code)] // not every test program uses it
pub fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}
