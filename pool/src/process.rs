//! [`Process`]: one worker process running one task, as Python's
//! `multiprocessing.Process`.

use std::fmt;
use std::time::Duration;

use procpool_ipc::Task;
use procpool_ipc::task::Payload;

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
/// ```rust,standalone_crate
/// use procpool::{Process, Registry, Task};
///
/// const GREET: Task<String, String> = Task::new("greet");
///
/// fn main() -> Result<(), procpool::Error> {
///     procpool::init(Registry::new().task(GREET, |n| format!("hello {n}")));
///     let p = Process::spawn(GREET, "world".to_string())?;
///     assert_ne!(p.pid(), std::process::id());
///     assert_eq!(p.join()?, "hello world");
///     Ok(())
/// }
/// ```
pub struct Process<O> {
    pool: Pool,
    result: AsyncResult<O>,
    pid: u32,
}

impl<O> fmt::Debug for Process<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("pid", &self.pid)
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
        Ok(Self { pool, result, pid })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the process is still running.
    pub fn is_alive(&self) -> bool {
        self.pool.stats().workers_alive > 0
    }

    /// Waits for the task and returns its output; the process then exits
    /// and is reaped. (Python's `Process.join` waits for the exit and
    /// returns nothing; the output here is the task's return value.)
    ///
    /// # Errors
    /// The task's error ([`Error::Task`]), [`Error::WorkerDied`] with the
    /// exit status if the process died, [`Error::Terminated`] after
    /// [`kill`](Self::kill), [`Error::Interrupted`] on Ctrl-C.
    pub fn join(self) -> Result<O, Error> {
        let Process { pool, result, .. } = self;
        let output = result.wait();
        drop(pool);
        output
    }

    /// Waits at most `timeout` for the task; `None` if it is still running.
    pub fn join_timeout(&mut self, timeout: Duration) -> Option<&Result<O, Error>> {
        self.result.wait_timeout(timeout)
    }

    /// Kills the process now (SIGKILL on Unix, `TerminateProcess` on
    /// Windows) and reaps it; [`join`](Self::join) then returns
    /// [`Error::Terminated`] unless the task had already finished.
    ///
    /// As Python's `Process.kill`, and the same stop as
    /// [`Pool::terminate`] (each is named after its Python counterpart).
    /// Python's `Process.terminate` (SIGTERM) has no counterpart: for a
    /// gentler end, drop the `Process`, which gives the task the grace
    /// period before it kills the process.
    pub fn kill(&self) {
        self.pool.terminate();
    }
}
