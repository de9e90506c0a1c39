use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use procpool_ipc::frame::ENCODING_SLACK;
use procpool_ipc::{IpcError, TaskError};

/// Everything that can go wrong with a pool, a task or a worker.
///
/// Cheap to clone (sources are shared), so one worker death can be reported
/// for every task it took down.
///
/// # Which input failed
///
/// An error that concerns one input of [`Pool::map`](crate::Pool::map),
/// [`imap`](crate::Pool::imap), [`imap_unordered`](crate::Pool::imap_unordered)
/// or [`apply`](crate::Pool::apply)/[`submit`](crate::Pool::submit) (index 0)
/// comes wrapped in [`Error::Item`], which names the input's index; that is
/// a panic or returned error ([`Error::Task`]), a death
/// ([`Error::WorkerDied`], [`Error::WorkerExited`], [`Error::Unresponsive`],
/// [`Error::RemoteWorkerLost`], [`Error::Connection`]), a timeout
/// ([`Error::Timeout`]), or an input or result that does not encode, decode
/// or fit ([`Error::Encode`], [`Error::Decode`], [`Error::PayloadTooLarge`]).
/// Stops of the whole pool ([`Error::Interrupted`], [`Error::Terminated`],
/// [`Error::Closed`]) are not wrapped. Match on [`inner`](Error::inner) to
/// look through the wrapper; [`index`](Error::index) gives the index, and
/// the helpers ([`is_panic`](Error::is_panic), ...) look through it too.
///
/// ```
/// # use procpool::{Error, TaskError};
/// fn describe(e: &Error) -> String {
///     match (e.index(), e.inner()) {
///         (Some(i), Error::Task(TaskError::Failed { message, .. })) => format!("input {i}: {message}"),
///         (Some(i), other) => format!("input {i}: {other}"),
///         (None, other) => other.to_string(),
///     }
/// }
/// ```
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Input number `index` (its position in the job's input) failed with
    /// `error`; see [Which input failed](#which-input-failed).
    #[error("input {index}: {error}")]
    Item {
        /// The input's position in its job's input, from 0.
        index: u64,
        /// What happened to it (never an `Item` itself).
        error: Box<Error>,
    },
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
    /// The task ran longer than the pool's `task_timeout`. Its worker was
    /// killed and replaced; or, when the task ended before the master got
    /// to it (measured by the worker's own clock), its result was
    /// discarded and the worker serves on (`killed` is false).
    #[error("task exceeded its {timeout:?} timeout on worker {worker_id} (pid {pid}){}", if *killed { ", which was killed" } else { ", which finished late: its result was discarded" })]
    Timeout {
        /// The configured timeout.
        timeout: Duration,
        /// The worker's id.
        worker_id: usize,
        /// The worker's process id.
        pid: u32,
        /// Whether the worker was killed (false: it had finished the task,
        /// late, before it could be).
        killed: bool,
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
        #[source]
        reason: StartupFailure,
    },
    /// An input, a result or the initializer's argument is longer, encoded,
    /// than the pool's payload limit (`PoolBuilder::max_payload_len`). An
    /// input is refused in the master before anything is sent, a result in
    /// the worker; neither is encoded past the limit.
    #[error("{what} of {len} bytes exceeds the payload limit of {max} bytes")]
    PayloadTooLarge {
        /// Which value.
        what: Oversized,
        /// Its encoded length.
        len: u64,
        /// The pool's payload limit.
        max: u64,
    },
    /// A task input could not be encoded. The cause is part of the message
    /// (and so not also a `source`).
    #[error("failed to encode a task input: {0}")]
    Encode(Arc<IpcError>),
    /// A task result could not be decoded (the master and the worker
    /// disagree on the output type). The cause is part of the message.
    #[error("failed to decode a task result: {0}")]
    Decode(Arc<IpcError>),
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

/// Which value was over the payload limit (inside
/// [`Error::PayloadTooLarge`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Oversized {
    /// A task's input.
    Input,
    /// A task's result.
    Output,
    /// The argument of `PoolBuilder::initializer_with`.
    InitializerArg,
}

impl std::fmt::Display for Oversized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Oversized::Input => "an input",
            Oversized::Output => "a result",
            Oversized::InitializerArg => "the initializer's argument",
        })
    }
}

/// Why a worker did not complete its handshake (inside [`Error::Startup`]).
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartupFailure {
    /// It sent no handshake within the pool's start timeout, and was killed.
    #[error("no handshake within {0:?}")]
    NoHandshake(Duration),
    /// What it sent was not a valid handshake.
    #[error("invalid handshake: {0}")]
    InvalidHandshake(#[source] Arc<IpcError>),
    /// The process exited before its handshake.
    #[error("pid {pid} exited before its handshake{}", status.map(|s| format!(": {s}")).unwrap_or_default())]
    Exited {
        /// Its process id.
        pid: u32,
        /// How it exited, when known (unknown when this process ignores
        /// `SIGCHLD`).
        status: Option<ExitStatus>,
    },
    /// The remote worker disconnected before its handshake.
    #[error("the remote worker at {peer} left before its handshake")]
    RemoteLeft {
        /// Its address.
        peer: SocketAddr,
    },
}

impl Error {
    /// Whether the task itself panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self.inner(), Error::Task(TaskError::Panicked { .. }))
    }

    /// Whether the worker running the task died.
    pub fn is_worker_died(&self) -> bool {
        matches!(
            self.inner(),
            Error::WorkerDied { .. } | Error::WorkerExited { .. }
        )
    }

    /// The index of the input this error concerns, if it concerns one
    /// (see [`Error::Item`]).
    pub fn index(&self) -> Option<u64> {
        match self {
            Error::Item { index, .. } => Some(*index),
            _ => None,
        }
    }

    /// The error without its input index: what an [`Error::Item`] wraps,
    /// or the error itself.
    pub fn inner(&self) -> &Error {
        match self {
            Error::Item { error, .. } => error,
            e => e,
        }
    }

    /// Like [`inner`](Self::inner), by value.
    pub fn into_inner(self) -> Error {
        match self {
            Error::Item { error, .. } => *error,
            e => e,
        }
    }

    /// This error as the failure of input `index`, if it is one that
    /// concerns an input (see [`Error::Item`]).
    pub(crate) fn at(self, index: u64) -> Error {
        match self {
            Error::Task(_)
            | Error::WorkerDied { .. }
            | Error::WorkerExited { .. }
            | Error::Unresponsive { .. }
            | Error::RemoteWorkerLost { .. }
            | Error::Timeout { .. }
            | Error::Connection { .. }
            | Error::Encode(_)
            | Error::Decode(_)
            | Error::PayloadTooLarge { .. } => Error::Item {
                index,
                error: Box::new(self),
            },
            e => e,
        }
    }

    /// An input that did not encode (within the payload limit).
    pub(crate) fn encode(e: IpcError) -> Self {
        match e {
            IpcError::PayloadTooLarge { len, max } => Error::PayloadTooLarge {
                what: Oversized::Input,
                len,
                max: max.saturating_sub(ENCODING_SLACK),
            },
            e => Error::Encode(Arc::new(e)),
        }
    }

    /// A task's failure as reported by its worker: a result over the
    /// payload limit has the same shape as an input over it.
    pub(crate) fn task(e: TaskError) -> Self {
        match e {
            TaskError::OutputTooLarge { len, max } => Error::PayloadTooLarge {
                what: Oversized::Output,
                len,
                max,
            },
            e => Error::Task(e),
        }
    }
}
