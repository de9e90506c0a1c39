use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use procpool_ipc::{IpcError, TaskError};

/// Everything that can go wrong with a pool, a task or a worker.
///
/// Cheap to clone (sources are shared), so one worker death can be reported
/// for every task it took down.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The task panicked or returned an error inside the worker.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// The worker running the task died; `status` says how (the signal on
    /// Unix, the exit code on Windows).
    #[error("worker {worker_id} (pid {pid}) died while running the task: {status}")]
    WorkerDied {
        /// The worker's id (stable across restarts of its slot).
        worker_id: usize,
        /// The process id it had.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
    },
    /// The worker running the task exited, and the system reaped it before
    /// the pool could read how: this process ignores `SIGCHLD` (Unix).
    #[error(
        "worker {worker_id} (pid {pid}) exited while running the task; its exit status is unknown (this process ignores SIGCHLD)"
    )]
    WorkerExited {
        /// The worker's id (stable across restarts of its slot).
        worker_id: usize,
        /// The process id it had.
        pid: u32,
    },
    /// The worker running the task sent nothing, not even a heartbeat, for
    /// the heartbeat timeout (see `PoolBuilder::local_heartbeat`): it was
    /// declared lost and killed.
    #[error(
        "worker {worker_id} (pid {pid}) was silent for {timeout:?} (heartbeat timeout) and was killed"
    )]
    Unresponsive {
        /// The worker's id.
        worker_id: usize,
        /// Its process id.
        pid: u32,
        /// The heartbeat timeout.
        timeout: Duration,
    },
    /// The remote worker running the task disconnected (or its machine went
    /// away); its exit status is not known here.
    #[error("remote worker {worker_id} ({}) disconnected while running the task", peer.map_or_else(|| "unknown address".to_owned(), |p| p.to_string()))]
    RemoteWorkerLost {
        /// The worker's id.
        worker_id: usize,
        /// Its address.
        peer: Option<SocketAddr>,
    },
    /// The pool could not listen for remote workers.
    #[error("cannot listen for remote workers on {addr}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: Arc<io::Error>,
    },
    /// The pool cannot tell remote workers where to connect: the host given
    /// to `PoolBuilder::advertise` (or, by default, this machine's name) is
    /// neither an interface nor a name that resolves.
    #[error("cannot advertise the pool's address {host:?}")]
    Advertise {
        /// The host asked for (`None`: the default).
        host: Option<String>,
        /// What went wrong.
        #[source]
        source: Arc<io::Error>,
    },
    /// The task ran longer than the pool's `task_timeout`; its worker was
    /// killed and replaced.
    #[error("task exceeded its {timeout:?} timeout; worker {worker_id} (pid {pid}) was killed")]
    Timeout {
        /// The configured timeout.
        timeout: Duration,
        /// The worker's id.
        worker_id: usize,
        /// The killed worker's process id.
        pid: u32,
    },
    /// The workers serve a task of this name with other input or output
    /// types than the master's declaration (a worker program built from
    /// other sources): nothing is sent, since the two sides would decode
    /// each other's bytes as the wrong types.
    #[error(
        "task {name:?} has types {master} in the master but {worker} in the workers (rebuild the worker program?)"
    )]
    TaskTypeMismatch {
        /// The task's name.
        name: String,
        /// `Input -> Output` as the master declares it.
        master: Arc<str>,
        /// `Input -> Output` as the workers register it.
        worker: Arc<str>,
    },
    /// The pool's initializer failed (panicked or returned an error) in
    /// every worker started for a slot, three times in a row: the work
    /// that was waiting for a worker fails with it.
    #[error("the initializer failed in worker {worker_id}")]
    Initializer {
        /// The worker's id.
        worker_id: usize,
        /// How it failed.
        #[source]
        source: TaskError,
    },
    /// The key given to [`PoolBuilder::listen`](crate::PoolBuilder::listen)
    /// is shorter than `procpool_ipc::remote::MIN_KEY_LEN` (16) bytes;
    /// nothing was started. `procpool::random_key()` makes a good one.
    #[error(transparent)]
    KeyTooShort(#[from] procpool_ipc::remote::KeyTooShort),
    /// A builder setting that cannot work; nothing was started.
    #[error("invalid pool setting {setting}: {reason}")]
    InvalidSetting {
        /// The builder method.
        setting: &'static str,
        /// Why the value cannot work.
        reason: &'static str,
    },
    /// No worker serves a task of this name.
    #[error("unknown task {name:?}: the workers serve {available:?}")]
    UnknownTask {
        /// The requested name.
        name: String,
        /// What the workers' registry holds.
        available: Vec<String>,
    },
    /// A worker speaks another protocol version (a stale worker binary).
    #[error(
        "worker {worker_id} speaks protocol version {theirs}, the master speaks {ours}; rebuild the worker program"
    )]
    VersionMismatch {
        /// The worker's id.
        worker_id: usize,
        /// The master's version.
        ours: u32,
        /// The worker's version.
        theirs: u32,
    },
    /// The worker program could not be started.
    #[error("failed to start worker program {}", program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The operating system's error.
        #[source]
        source: Arc<io::Error>,
    },
    /// A worker did not complete its handshake.
    #[error(
        "worker {worker_id} failed during start-up: {reason} (does the worker's main call procpool::init first?)"
    )]
    Startup {
        /// The worker's id.
        worker_id: usize,
        /// What happened.
        reason: String,
    },
    /// An input, or all inputs of one chunk, did not fit in one frame.
    #[error("a message of {len} bytes exceeds the maximum frame length of {max} bytes")]
    FrameTooLarge {
        /// The encoded size.
        len: u64,
        /// The pool's `max_frame_len`.
        max: u32,
    },
    /// A task input could not be encoded.
    #[error("failed to encode a task input")]
    Encode(#[source] Arc<IpcError>),
    /// A task result could not be decoded (the master and the worker
    /// disagree on the output type).
    #[error("failed to decode a task result")]
    Decode(#[source] Arc<IpcError>),
    /// The connection to a worker failed in a way other than EOF.
    #[error("connection to worker {worker_id} failed")]
    Connection {
        /// The worker's id.
        worker_id: usize,
        /// What failed.
        #[source]
        source: Arc<IpcError>,
    },
    /// The pool has been closed or is shutting down; it accepts no new work.
    #[error("the pool is closed")]
    Closed,
    /// The pool was terminated before the task finished.
    #[error("the pool was terminated before the task finished")]
    Terminated,
    /// A shutdown was requested (Ctrl-C, SIGTERM or
    /// [`Pool::shutdown`](crate::Pool::shutdown)) before the task finished.
    #[error("interrupted by a shutdown request")]
    Interrupted,
    /// The Ctrl-C handler could not be installed (the process has one already).
    #[error("cannot install the Ctrl-C handler")]
    Signal {
        /// What the `ctrlc` crate reported.
        #[source]
        source: Arc<ctrlc::Error>,
    },
    /// Waiting timed out (the task itself may still finish).
    #[error("timed out waiting for the result")]
    WaitTimeout,
    /// This process was started as a worker, yet tries to start a pool: its
    /// `main` does not call `procpool::init` first.
    #[error(
        "this process is a procpool worker whose main did not call procpool::init() first; refusing to start a pool (that would start workers recursively)"
    )]
    NotInitialized,
}

impl Error {
    /// Whether the task itself panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self, Error::Task(TaskError::Panicked { .. }))
    }

    /// Whether the worker running the task died.
    pub fn is_worker_died(&self) -> bool {
        matches!(self, Error::WorkerDied { .. } | Error::WorkerExited { .. })
    }

    pub(crate) fn encode(e: IpcError) -> Self {
        match e {
            IpcError::FrameTooLarge { len, max } => Error::FrameTooLarge { len, max },
            e => Error::Encode(Arc::new(e)),
        }
    }
}
