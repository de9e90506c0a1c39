//! Launchers: the pool starts its remote workers through the cluster
//! manager users already run. [`Srun`] runs one Slurm job step of workers.
//!
//! The master listens first, then starts `srun ... <program> <args>` with
//! the pool's address and key in the environment (never on a command line,
//! which every user of the machine can read), so that `procpool::init` in
//! each task becomes a remote worker. The master owns the step: when the
//! pool stops, its workers are told to exit (or see their connection end),
//! the step ends with them, and `srun` is reaped; an `srun` still running
//! after the grace period is killed. When the master dies, every worker
//! sees its connection end and exits, and `srun` with them.
//!
//! A leaf but for the pool's error type.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::Error;

/// Starts a pool's workers as one Slurm job step: `srun --ntasks=N`, plus
/// the arguments you add, running the pool's worker program (by default
/// the current executable). Works inside an allocation (`sbatch`,
/// `salloc`: the step uses it) and outside one (`srun` asks for one).
///
/// ```no_run
/// use procpool::{Pool, Registry, Srun, Task};
///
/// const SQUARE: Task<u64, u64> = Task::new("square");
///
/// fn main() -> Result<(), procpool::Error> {
///     procpool::init(Registry::new().task(SQUARE, |x| x * x));
///     let pool = Pool::builder()
///         .launcher(Srun::new(8).arg("--nodes=2").arg("--time=10"))
///         .build()?;
///     pool.wait_for_workers(8, std::time::Duration::from_secs(60));
///     let squares = pool.map(SQUARE, 0..1000)?;
///     # let _ = squares;
///     Ok(())
/// }
/// ```
#[derive(Clone, Debug)]
pub struct Srun {
    ntasks: usize,
    program: OsString,
    args: Vec<OsString>,
}

impl Srun {
    /// `n` workers (`srun --ntasks=n`).
    pub fn new(n: usize) -> Self {
        Srun {
            ntasks: n,
            program: "srun".into(),
            args: Vec::new(),
        }
    }

    /// One more `srun` argument: `--partition=P`, `--nodes=N`,
    /// `--time=T`, `--no-kill` (keep the step when a node fails: the
    /// workers there are lost, the others go on), `--overcommit`, ...
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// More `srun` arguments (see [`arg`](Self::arg)).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The `srun` executable to run. Default: `srun`, from `PATH`.
    pub fn srun_program(mut self, program: impl Into<OsString>) -> Self {
        self.program = program.into();
        self
    }

    /// How many workers it starts.
    pub fn ntasks(&self) -> usize {
        self.ntasks
    }

    /// Starts the step: `program` with `args` in each task, told to join
    /// `addr` with `key` through the environment.
    pub(crate) fn launch(
        &self,
        program: &Path,
        args: &[OsString],
        envs: &[(OsString, OsString)],
        addr: &str,
        key: &[u8],
    ) -> Result<Launched, Error> {
        let mut cmd = Command::new(&self.program);
        cmd.arg(format!("--ntasks={}", self.ntasks))
            .args(&self.args)
            .arg(program)
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .env(procpool_ipc::remote::LAUNCH_ADDR_ENV, addr)
            .env(
                procpool_ipc::remote::LAUNCH_KEY_ENV,
                procpool_ipc::remote::hex(key),
            )
            .stdin(Stdio::null());
        let child = cmd.spawn().map_err(|e| Error::Spawn {
            program: self.program.clone().into(),
            source: Arc::new(e),
        })?;
        tracing::debug!(pid = child.id(), ntasks = self.ntasks, "srun started");
        Ok(Launched {
            child: Mutex::new(Some(child)),
        })
    }
}

/// A running launcher process (`srun`), ended with the pool.
#[derive(Debug)]
pub(crate) struct Launched {
    child: Mutex<Option<Child>>,
}

impl Launched {
    /// Waits up to `grace` for the launcher to exit by itself (its workers
    /// have been told to stop), then kills it; reaps it either way.
    pub(crate) fn end(&self, grace: Duration) {
        let taken = self
            .child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(mut child) = taken else { return };
        let deadline = Instant::now() + grace;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    tracing::debug!(%status, "srun exited");
                    return;
                }
                Ok(None) if Instant::now() < deadline => {
                    // Polling the child's status is the event; the pause paces it.
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => break,
            }
        }
        tracing::warn!(pid = child.id(), "srun outlived its pool; killed");
        let _ = child.kill();
        let _ = child.wait();
    }
}
