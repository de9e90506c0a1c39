//! [`Process`]: one worker process running one task, as Python's
//! `multiprocessing.Process`.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use procpool_ipc::Task;
use procpool_ipc::endpoint;
use procpool_ipc::sync::lock;
use procpool_ipc::task::Payload;

use crate::msg::Msg;
use crate::shared::Shared;
use crate::{AsyncResult, Error, Pool, PoolBuilder};

/// A process started to run one task; its output comes back from
/// [`join`](Self::join).
///
/// The process is a worker like a pool's (the current executable
/// re-executed, or a worker program), so queue and pipe handles passed in
/// its argument work inside it. It exits when the task is done. Dropping
/// the handle waits for the task for the grace period (default 5 s), then
/// kills the process; it is always reaped.
///
/// As in Python, [`join`](Self::join) waits for the process to exit, after
/// which [`exitcode`](Self::exitcode) says how it ended and
/// [`is_alive`](Self::is_alive) is false; [`terminate`](Self::terminate)
/// asks it to end (SIGTERM) and [`kill`](Self::kill) ends it (SIGKILL).
///
/// ```rust,standalone_crate
/// use procpool::{Process, Registry, Task};
///
/// const GREET: Task<String, String> = Task::new("greet");
///
/// fn main() -> Result<(), procpool::Error> {
///     procpool::init(Registry::new().task(GREET, |n| format!("hello {n}")));
///     let p = Process::spawn(GREET, "world".to_string())?;
///     assert_ne!(p.pid(), std::process::id());
///     assert!(p.name().starts_with("Process-"));
///     assert_eq!(p.join()?, "hello world");
///     Ok(())
/// }
/// ```
pub struct Process<O> {
    pool: Pool,
    result: AsyncResult<O>,
    entry: Arc<Entry>,
}

/// What [`active_children`] knows of a live `Process`.
struct Entry {
    pid: u32,
    name: Mutex<String>,
    shared: Arc<Shared>,
}

impl Entry {
    /// Waits for the process to have exited (and been reaped) until
    /// `deadline`: its status (`Some(None)` when unknown), `None` if it
    /// still runs.
    fn wait_exit(&self, deadline: Option<Instant>) -> Option<Option<std::process::ExitStatus>> {
        self.shared.wait_exit(self.pid, deadline)
    }

    fn is_alive(&self) -> bool {
        self.wait_exit(Some(Instant::now())).is_none()
    }
}

/// Every `Process` of this program not yet dropped.
static LIVE: Mutex<Vec<Weak<Entry>>> = Mutex::new(Vec::new());

/// Numbers default names, as Python's `Process-1`, `Process-2`, ...
static SPAWNED: AtomicU64 = AtomicU64::new(0);

impl<O> fmt::Debug for Process<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("pid", &self.entry.pid)
            .field("name", &*lock(&self.entry.name))
            .finish_non_exhaustive()
    }
}

impl<O: Payload> Process<O> {
    /// Starts a process (the current executable) running `task` on `arg`.
    ///
    /// # Errors
    /// As [`PoolBuilder::build`] and [`Pool::submit`].
    pub fn spawn<I: Payload>(task: Task<I, O>, arg: I) -> Result<Self, Error> {
        Self::spawn_with(Pool::builder(), task, arg)
    }

    /// Like [`spawn`](Self::spawn), with the settings of `builder` (worker
    /// program, environment, grace period, timeout, ...). Its worker count,
    /// recycling and retry settings are replaced: one process, one task.
    ///
    /// # Errors
    /// As [`spawn`](Self::spawn).
    pub fn spawn_with<I: Payload>(
        builder: PoolBuilder,
        task: Task<I, O>,
        arg: I,
    ) -> Result<Self, Error> {
        let pool = builder
            .workers(1)
            .max_tasks_per_worker(1)
            .retries(0)
            .single_process()
            .build()?;
        let pid = pool.worker_pids().first().copied().unwrap_or(0);
        let result = pool.submit(task, arg)?.unindexed();
        let n = SPAWNED.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = Arc::new(Entry {
            pid,
            name: Mutex::new(format!("Process-{n}")),
            shared: Arc::clone(&pool.shared),
        });
        let mut live = lock(&LIVE);
        live.retain(|e| e.strong_count() > 0);
        live.push(Arc::downgrade(&entry));
        drop(live);
        Ok(Self {
            pool,
            result,
            entry,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.entry.pid
    }

    /// The process's name: `Process-N` (numbered from 1 in the order this
    /// program spawned them) unless [`set_name`](Self::set_name) changed
    /// it. Only this program sees it, as in Python.
    pub fn name(&self) -> String {
        lock(&self.entry.name).clone()
    }

    /// Renames the process (see [`name`](Self::name)).
    pub fn set_name(&mut self, name: impl Into<String>) {
        *lock(&self.entry.name) = name.into();
    }

    /// Whether the process is still running: false once it has exited and
    /// been reaped, so false after [`join_timeout`](Self::join_timeout)
    /// returns `Some`.
    pub fn is_alive(&self) -> bool {
        self.entry.is_alive()
    }

    /// How the process ended, as Python's `exitcode`: `None` while it runs,
    /// then its exit status, or minus the signal that ended it (`-9` after
    /// [`kill`](Self::kill), `-15` after [`terminate`](Self::terminate); on
    /// Windows `terminate` also reads `-15`, and `kill` reads `1`). Also
    /// `None` in the rare case the system reaped the process itself (this
    /// program ignores `SIGCHLD`). Never blocks.
    pub fn exitcode(&self) -> Option<i32> {
        self.entry
            .wait_exit(Some(Instant::now()))
            .flatten()
            .and_then(endpoint::exit_code)
    }

    /// Waits for the task and for the process to exit; returns the task's
    /// output. (Python's `Process.join` waits for the exit and returns
    /// nothing; the output here is the task's return value.)
    ///
    /// # Errors
    /// The task's error ([`Error::Task`]), [`Error::WorkerDied`] with the
    /// exit status if the process died (as after
    /// [`terminate`](Self::terminate)), [`Error::Terminated`] after
    /// [`kill`](Self::kill), [`Error::Interrupted`] on Ctrl-C.
    pub fn join(self) -> Result<O, Error> {
        let Process { pool, result, .. } = self;
        let output = result.wait();
        // Dropping the pool waits for the process to exit after its one
        // task (and kills it after the grace period if it lingers): once
        // this returns, it has exited and been reaped.
        drop(pool);
        output
    }

    /// Waits at most `timeout` for the task to end and the process to
    /// exit; `None` if either has not happened yet. Once it returns
    /// `Some`, [`is_alive`](Self::is_alive) is false and
    /// [`exitcode`](Self::exitcode) is known.
    pub fn join_timeout(&mut self, timeout: Duration) -> Option<&Result<O, Error>> {
        let deadline = Instant::now() + timeout;
        self.result.wait_timeout(timeout)?;
        self.entry.wait_exit(Some(deadline))?;
        self.result.try_get()
    }

    /// Asks the process to end, as Python's `Process.terminate`: SIGTERM
    /// on Unix, `TerminateProcess` on Windows (exit code `0x10000`, read
    /// as `-15` by [`exitcode`](Self::exitcode), as Python does). Does not
    /// wait: [`join`](Self::join) then returns [`Error::WorkerDied`]
    /// naming the signal, unless the task had already finished. A no-op
    /// once the process has exited.
    pub fn terminate(&self) {
        let _ = self.pool.tx.send(Msg::Signal);
    }

    /// Kills the process now (SIGKILL on Unix, `TerminateProcess` on
    /// Windows) and reaps it; [`join`](Self::join) then returns
    /// [`Error::Terminated`] unless the task had already finished.
    ///
    /// As Python's `Process.kill`, and the same stop as
    /// [`Pool::terminate`] (each is named after its Python counterpart).
    /// For a request the process may catch, see
    /// [`terminate`](Self::terminate).
    pub fn kill(&self) {
        self.pool.terminate();
    }
}

/// Ready for [`procpool::wait`](procpool_ipc::wait::wait) once the
/// process has exited and been reaped (as [`is_alive`](Process::is_alive)
/// turning false), told by the supervisor's record of the exit: no
/// polling.
impl<O> procpool_ipc::wait::Waitable for Process<O> {
    fn poll_ready(
        &self,
        waker: &std::task::Waker,
    ) -> Result<bool, procpool_ipc::queue::QueueError> {
        Ok(self.entry.shared.watch_exit(self.entry.pid, waker))
    }
    fn forget(&self, waker: &std::task::Waker) {
        self.entry.shared.unwatch_exit(waker);
    }
}

/// A live child [`Process`], as listed by [`active_children`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChildProcess {
    /// Its process id.
    pub pid: u32,
    /// Its [`name`](Process::name).
    pub name: String,
}

/// The [`Process`]es of this program still running, oldest first, as
/// Python's `multiprocessing.active_children` (which lists pool workers
/// too; here a [`Pool`]'s are in [`Pool::worker_pids`]). A process that
/// exited or whose handle was dropped is not listed. Never blocks.
pub fn active_children() -> Vec<ChildProcess> {
    let entries: Vec<_> = {
        let mut live = lock(&LIVE);
        live.retain(|e| e.strong_count() > 0);
        live.iter().filter_map(Weak::upgrade).collect()
    };
    entries
        .iter()
        .filter(|e| e.is_alive())
        .map(|e| ChildProcess {
            pid: e.pid,
            name: lock(&e.name).clone(),
        })
        .collect()
}

/// How many processes can usefully run at once: the CPUs this program may
/// use ([`std::thread::available_parallelism`], which honours affinity
/// and cgroup quotas), at least 1. Python's `os.process_cpu_count`; its
/// `cpu_count` counts every CPU of the machine.
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
