//! [`PoolBuilder`]: every knob of a pool, each with its default.

use std::ffi::{OsStr, OsString};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use procpool_ipc::frame::{DEFAULT_MAX_PAYLOAD_LEN, ENCODING_SLACK};
use procpool_ipc::task::Payload;
use procpool_ipc::{Task, codec};

use crate::config::{Config, Key};
use crate::{Error, Oversized, Pool};

/// An initializer's argument, encoded (or why it did not encode: reported
/// by `build`). Its `Debug` shows the length, not the bytes.
#[derive(Clone)]
struct EncodedArg(Result<Arc<[u8]>, Error>);

impl std::fmt::Debug for EncodedArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Ok(bytes) => write!(f, "<{} bytes>", bytes.len()),
            Err(e) => e.fmt(f),
        }
    }
}

/// Configures and starts a [`Pool`].
///
/// ```rust,standalone_crate
/// use std::time::Duration;
/// use procpool::{Pool, Registry, Task};
///
/// const SQUARE: Task<u64, u64> = Task::new("square");
///
/// fn main() -> Result<(), procpool::Error> {
///     procpool::init(Registry::new().task(SQUARE, |x| x * x));
///     let pool = Pool::builder()
///         .workers(2)
///         .chunk_size(16)
///         .task_timeout(Duration::from_secs(30))
///         .retries(1)
///         .build()?;
///     assert_eq!(pool.apply(SQUARE, 7)?, 49);
///     Ok(())
/// }
/// ```
#[derive(Clone, Debug, Default)]
#[must_use = "a builder does nothing until build() is called"]
pub struct PoolBuilder {
    workers: Option<usize>,
    program: Option<PathBuf>,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    chunk_size: Option<usize>,
    window: Option<usize>,
    prefetch: Option<usize>,
    max_payload_len: Option<u64>,
    start_timeout: Option<Duration>,
    grace_period: Option<Duration>,
    task_timeout: Option<Duration>,
    retries: u32,
    max_tasks_per_worker: Option<u64>,
    initializer: Option<(&'static str, EncodedArg)>,
    handle_ctrlc: bool,
    single_process: bool,
    listen: Option<(SocketAddr, Key)>,
    advertise: Option<String>,
    launcher: Option<crate::Srun>,
    heartbeat_timeout: Option<Duration>,
    local_heartbeat: bool,
}

impl PoolBuilder {
    /// Refuses settings that cannot work rather than quietly changing them.
    fn validate(&self) -> Result<(), Error> {
        let refuse = |setting, reason| Err(Error::InvalidSetting { setting, reason });
        if self.workers == Some(0) && self.listen.is_none() && self.launcher.is_none() {
            return refuse(
                "workers",
                "a pool needs at least one worker, unless it listens for remote ones",
            );
        }
        if let Some((_, key)) = &self.listen {
            procpool_ipc::remote::check_key(&key.0)?;
        }
        if self.chunk_size == Some(0) {
            return refuse("chunk_size", "a chunk holds at least one item");
        }
        if self.window == Some(0) {
            return refuse("window", "imap needs room for at least one item");
        }
        if self.max_tasks_per_worker == Some(0) {
            return refuse("max_tasks_per_worker", "a worker must be allowed one task");
        }
        if self
            .heartbeat_timeout
            .is_some_and(|d| d < Duration::from_millis(10))
        {
            return refuse(
                "heartbeat_timeout",
                "below 10 ms every pause of the scheduler would lose a worker",
            );
        }
        Ok(())
    }

    /// Number of local worker processes. Default: the number of CPUs
    /// (`std::thread::available_parallelism`).
    ///
    /// `workers(0)` with [`listen`](Self::listen) makes a pool of remote
    /// workers only: `build` returns once the pool listens, its task list
    /// is the registry this program gave `procpool::init` (remote workers
    /// must serve the same tasks, in the same order), and
    /// [`Pool::wait_for_workers`] is the gate before submitting work (work
    /// submitted earlier waits for the first worker to join).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// Start this program as the workers instead of re-executing the
    /// current executable. The program's `main` must call
    /// `procpool::run_worker` (or `procpool::init`) with a registry that
    /// holds the tasks the pool will run. Default: `std::env::current_exe()`.
    ///
    /// For a worker binary built next to this one (another `[[bin]]` or
    /// example of the same package), [`sibling_exe`] finds it:
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = procpool::Pool::builder()
    ///     .worker_program(procpool::sibling_exe("worker_program")?)
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    ///
    /// (`examples/with_worker_program.rs` runs this.)
    pub fn worker_program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = Some(program.into());
        self
    }

    /// Command-line arguments for each worker. Default: none.
    pub fn worker_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// Sets an environment variable in every worker. Default: workers
    /// inherit the master's environment.
    pub fn worker_env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Items per chunk sent to a worker. Default: automatic — for `map`,
    /// Python's rule (`len / (4 × workers)`, rounded up); for `imap`, adapted
    /// to the measured task duration (about 2 ms of work per chunk).
    pub fn chunk_size(mut self, n: usize) -> Self {
        self.chunk_size = Some(n);
        self
    }

    /// Most items an `imap` may have taken from its input and not yet
    /// yielded: memory stays bounded however long the input. Default: 8192.
    pub fn window(mut self, n: usize) -> Self {
        self.window = Some(n);
        self
    }

    /// Chunks queued at a worker beyond the one it runs, so it never waits
    /// a round trip for its next task. Default: automatic — 2, and more (up
    /// to 63) while the work queued at the worker, estimated from each
    /// task's measured time per item, stays within about 0.25 ms.
    ///
    /// The trade-off: chunks prefetched to a worker wait behind the task it
    /// runs. If that task hangs (a deadlock, a stopped process), they wait
    /// with it while other workers may idle; they are never taken back and
    /// given to another worker, since the hung worker might still start
    /// them and nothing may run twice. With a
    /// [`task_timeout`](Self::task_timeout) the hung worker is killed and
    /// the chunks behind it, which never started, go back to the front of
    /// the queue. `prefetch(0)` makes no chunk wait behind another, at the
    /// cost of a round trip per chunk.
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = Some(n);
        self
    }

    /// The payload limit: the most bytes one task input, one result or one
    /// queue item may take once encoded (not counting the few bytes of
    /// length prefixes and tags the encoding adds, so a 64 MiB buffer passes
    /// a 64 MiB limit). Default: 64 MiB.
    ///
    /// A value over it is refused without being encoded whole, as
    /// [`Error::PayloadTooLarge`]: an input in the master before anything is
    /// sent, a result in the worker (which stays up). Connections refuse
    /// frames longer than the limit plus a message's header, so a corrupt
    /// or hostile length makes nobody allocate more.
    ///
    /// Between the master and its local workers (not remote ones), frames
    /// of 1 MiB or more travel through shared memory instead of the
    /// socket (`procpool_ipc::shm::transport`). The frame limit does not
    /// apply to those: a body in a segment is bounded by the memory its
    /// sender allocated, which the receiver checks before it maps and
    /// copies it. This payload limit still applies to every value, checked
    /// when it is encoded, whichever way it then travels.
    ///
    /// ```rust,standalone_crate
    /// use procpool::{Error, Oversized, Pool, Registry, Task};
    ///
    /// const LEN: Task<String, usize> = Task::new("len");
    ///
    /// fn main() -> Result<(), Error> {
    ///     procpool::init(Registry::new().task(LEN, |s| s.len()));
    ///     let pool = Pool::builder().workers(1).max_payload_len(1000).build()?;
    ///     assert_eq!(pool.apply(LEN, "x".repeat(1000))?, 1000);
    ///     let err = pool.apply(LEN, "x".repeat(2000)).unwrap_err();
    ///     assert!(matches!(
    ///         err.inner(),
    ///         Error::PayloadTooLarge { what: Oversized::Input, len: 2003, max: 1000 }
    ///     ));
    ///     Ok(())
    /// }
    /// ```
    pub fn max_payload_len(mut self, bytes: u64) -> Self {
        self.max_payload_len = Some(bytes);
        self
    }

    /// How long a worker may take from start to handshake. Default: 30 s.
    pub fn start_timeout(mut self, d: Duration) -> Self {
        self.start_timeout = Some(d);
        self
    }

    /// How long a graceful stop (drop, Ctrl-C) lets running tasks finish
    /// before the workers are killed. Default: 5 s.
    pub fn grace_period(mut self, d: Duration) -> Self {
        self.grace_period = Some(d);
        self
    }

    /// Kill a worker whose task runs longer than this; the caller gets
    /// [`Error::Timeout`] and a replacement starts. For a chunk of n items
    /// the limit is n × `d`; the chunk's items whose results had arrived
    /// keep them, and when several had not, each of those runs again alone
    /// (with the limit `d`), so that the item to blame is the one that
    /// times out. The chunks prefetched behind it never started:
    /// they go to other workers (see [`prefetch`](Self::prefetch)). The
    /// timeout holds whatever the worker does, even if it is stopped and
    /// reads nothing, and whatever the master does: an item that overran,
    /// by the worker's own clock, but whose result arrived before the
    /// master got to kill its worker (it was stopped, or starved of CPU)
    /// fails with [`Error::Timeout`](crate::Error::Timeout) all the same
    /// (`killed: false`, the worker serves on). Default: none.
    pub fn task_timeout(mut self, d: Duration) -> Self {
        self.task_timeout = Some(d);
        self
    }

    /// Resubmit a task whose worker died up to `n` times before returning
    /// the error. Default: 0.
    ///
    /// Retries count per input: a death fails or retries only the input
    /// that was running; the inputs of its chunk whose results had arrived
    /// keep them, and the others run again without using a retry (see
    /// "Which item died" in the pool's `blame.rs`: inputs whose results had
    /// not yet left the dead worker may run twice).
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// Replace a worker after it has run `n` tasks (for leaky native code).
    /// Default: never.
    pub fn max_tasks_per_worker(mut self, n: u64) -> Self {
        self.max_tasks_per_worker = Some(n);
        self
    }

    /// A task each worker runs once, before its first task, as Python's
    /// `initializer`. A worker whose initializer fails (panics or returns
    /// an error) is replaced. Default: none.
    ///
    /// The initializer runs in the worker process: what it sets up (a
    /// connection, a loaded model, a cache) lives in that process, typically
    /// in a `static` `OnceLock` the tasks read. To give it an argument, see
    /// [`initializer_with`](Self::initializer_with).
    pub fn initializer(self, task: Task<(), ()>) -> Self {
        self.initializer_with(task, ())
    }

    /// Like [`initializer`](Self::initializer), with an argument, as
    /// Python's `initargs`: `arg` is encoded once, here, and every worker
    /// (replacements included) runs `task` on a copy of it before its first
    /// task. Default: none.
    ///
    /// ```rust,standalone_crate
    /// use std::sync::OnceLock;
    /// use procpool::{Pool, Registry, Task};
    ///
    /// const SETUP: Task<String, ()> = Task::new("setup");
    /// const GREET: Task<String, String> = Task::new("greet");
    /// static GREETING: OnceLock<String> = OnceLock::new();
    ///
    /// fn main() -> Result<(), procpool::Error> {
    ///     procpool::init(
    ///         Registry::new()
    ///             .task(SETUP, |g: String| GREETING.set(g).expect("set once per worker"))
    ///             .task(GREET, |name: String| {
    ///                 format!("{}, {name}", GREETING.get().expect("initialized"))
    ///             }),
    ///     );
    ///     let pool = Pool::builder()
    ///         .workers(2)
    ///         .initializer_with(SETUP, "hello".to_string())
    ///         .build()?;
    ///     assert_eq!(pool.apply(GREET, "world".to_string())?, "hello, world");
    ///     Ok(())
    /// }
    /// ```
    ///
    /// [`build`](Self::build) fails with [`Error::Encode`] if `arg` does
    /// not encode, [`Error::PayloadTooLarge`] if it is over the payload limit.
    pub fn initializer_with<A: Payload>(mut self, task: Task<A, ()>, arg: A) -> Self {
        let mut bytes = Vec::new();
        let encoded = codec::encode_into(&arg, &mut bytes)
            .map(|()| Arc::from(bytes))
            .map_err(Error::encode);
        self.initializer = Some((task.name(), EncodedArg(encoded)));
        self
    }

    /// Installs procpool's Ctrl-C/SIGTERM handler (see
    /// [`install_ctrlc_handler`](crate::install_ctrlc_handler)) when the pool
    /// is built: the first signal stops every pool gracefully, the second
    /// kills their workers. Default: not installed.
    pub fn handle_ctrlc(mut self) -> Self {
        self.handle_ctrlc = true;
        self
    }

    /// Also accept *remote* workers: listen on `addr` (port 0: any free
    /// port, see [`Pool::listen_addr`]) for workers that prove they know
    /// `key` — a program calling `procpool::run_remote_worker(addr, key,
    /// registry)`, started by ssh, a batch system or anything else. They add
    /// to the pool's local workers, take tasks like them, and are not
    /// replaced when they leave (their launcher decides that). Their
    /// registry must hold the same tasks as the local workers'. Default: no
    /// listening.
    ///
    /// The key admits workers and keys every link: use a long random one
    /// (at least 16 bytes, or [`build`](Self::build) fails with
    /// [`Error::KeyTooShort`]; `procpool::random_key()` makes one, as does
    /// `head -c 32 /dev/urandom | base64`). Each connection is mutually
    /// authenticated with it and encrypted with forward secrecy (Noise
    /// `NNpsk0`: X25519, ChaCha20-Poly1305, SHA-256).
    ///
    /// Anyone who reaches the port can connect, but not hurt the pool:
    /// handshakes are capped (16 at once, each done within 10 s, the
    /// connections beyond closed at once), read into fixed buffers, and a
    /// failing `accept` (descriptors exhausted) is retried with a back-off.
    pub fn listen(mut self, addr: SocketAddr, key: impl Into<Vec<u8>>) -> Self {
        self.listen = Some((addr, Key(key.into().into())));
        self
    }

    /// The host remote workers are told to connect to, as
    /// [`Pool::advertised_addr`] reports it: a host name, an IP address, or
    /// the name of a network interface (`eth0`, `ib0`), which stands for
    /// its address. `build` fails with [`Error::Advertise`] when it is none
    /// of these (a name that does not resolve: a Slurm node name such as
    /// `$SLURMD_NODENAME` is often not a host name). Default: for a pool
    /// listening on all interfaces (`0.0.0.0`), this machine's host name
    /// (`gethostname`), or its first non-loopback address when that name
    /// does not resolve; for a pool listening on one address, that address.
    ///
    /// The listener binds only what [`listen`](Self::listen) names: all
    /// interfaces only when asked for with `0.0.0.0` (or `::`).
    pub fn advertise(mut self, host: impl Into<String>) -> Self {
        self.advertise = Some(host.into());
        self
    }

    /// Starts remote workers through a cluster manager: with
    /// [`Srun`](crate::Srun), one Slurm job step of workers running this
    /// program (or the [`worker_program`](Self::worker_program)), whose
    /// `procpool::init` makes them join. Unless [`listen`](Self::listen)
    /// says otherwise, the pool listens on all interfaces on a free port
    /// with a fresh random key (32 bytes), and local
    /// [`workers`](Self::workers) default to 0. The address and key reach
    /// the workers in their environment, never on a command line.
    /// [`Pool::wait_for_workers`] tells when they have joined. Dropping the
    /// pool ends the step (after the grace period, `srun` is killed).
    /// Default: none.
    pub fn launcher(mut self, launcher: crate::Srun) -> Self {
        self.launcher = Some(launcher);
        self
    }

    /// How long a remote worker may stay silent before it is declared lost.
    /// Both ends of a remote link send a heartbeat when they have had
    /// nothing else to send for a quarter of this (at most a second), and
    /// a write the peer's kernel does not take within it breaks the link
    /// too. A lost worker's task fails with [`Error::RemoteWorkerLost`] (or
    /// is retried, see [`retries`](Self::retries)), and the work queued
    /// behind it goes to other workers. Remote workers learn this timeout
    /// when they join (unless their `PROCPOOL_HEARTBEAT_TIMEOUT_MS`
    /// variable overrides it); one that hears nothing from the master for
    /// that long abandons its task and exits. Default: 10 s.
    ///
    /// Local workers need no heartbeat: the end of their connection and
    /// their process handle tell the master at once that they are gone.
    pub fn heartbeat_timeout(mut self, timeout: Duration) -> Self {
        self.heartbeat_timeout = Some(timeout);
        self
    }

    /// Heartbeats on local workers' connections too (Unix): a worker that
    /// stops reading and writing — a stopped process, a reader thread
    /// stuck — is declared lost after [`heartbeat_timeout`](Self::heartbeat_timeout),
    /// killed, and its task fails with [`Error::Unresponsive`] (or is
    /// retried); a worker whose master goes silent that long exits. Without
    /// it (the default), a local worker is lost only when its connection
    /// ends or its process exits, which the master sees at once, and a
    /// worker that hangs is caught by [`task_timeout`](Self::task_timeout).
    ///
    /// On Windows, whose named pipes have no timeouts, `build` fails with
    /// [`Error::Spawn`] when this is set.
    pub fn local_heartbeat(mut self, on: bool) -> Self {
        self.local_heartbeat = on;
        self
    }

    /// One worker that is not replaced when it exits: a `Process`.
    pub(crate) fn single_process(mut self) -> Self {
        self.single_process = true;
        self
    }

    /// Starts the workers and waits for each to complete its handshake.
    ///
    /// In one-program mode (rank 0 of `srun -n N prog` or `mpirun -np N
    /// prog` with `PROCPOOL_ONE_PROGRAM` set to a shared directory, see
    /// `procpool::init`), a pool with neither [`listen`](Self::listen) nor
    /// a [`launcher`](Self::launcher) listens on all interfaces with a
    /// fresh key, has no local workers unless asked, and leaves its address
    /// for the other ranks, which join it: wait for them with
    /// [`Pool::wait_for_workers`]`(N - 1, ..)`.
    ///
    /// # Errors
    /// [`Error::KeyTooShort`] for a [`listen`](Self::listen) key under
    /// 16 bytes; [`Error::InvalidSetting`] for a setting that cannot work (no
    /// workers, chunks of 0 items, a window of 0, `max_tasks_per_worker(0)`,
    /// a frame limit under 64 bytes, a heartbeat timeout under 10 ms);
    /// [`Error::NotInitialized`] when called from a worker whose `main`
    /// did not call `init` first; [`Error::Spawn`], [`Error::Startup`] or
    /// [`Error::VersionMismatch`] when a worker cannot start;
    /// [`Error::UnknownTask`] when the initializer is not registered;
    /// [`Error::Encode`] or [`Error::PayloadTooLarge`] when the initializer's
    /// argument does not encode or fit in a frame;
    /// [`Error::Signal`] when `handle_ctrlc` was asked for and the process
    /// already has a Ctrl-C handler.
    pub fn build(self) -> Result<Pool, Error> {
        self.validate()?;
        if self.handle_ctrlc {
            crate::install_ctrlc_handler()?;
        }
        let program = match self.program {
            Some(p) => p,
            None => std::env::current_exe().map_err(|e| Error::Spawn {
                program: PathBuf::from("<current executable>"),
                source: e.into(),
            })?,
        };
        let max_payload_len = self.max_payload_len.unwrap_or(DEFAULT_MAX_PAYLOAD_LEN);
        let initializer = match self.initializer {
            None => None,
            Some((name, arg)) => {
                let arg = arg.0?;
                let len = arg.len() as u64;
                if len > max_payload_len.saturating_add(ENCODING_SLACK) {
                    return Err(Error::PayloadTooLarge {
                        what: Oversized::InitializerArg,
                        len,
                        max: max_payload_len,
                    });
                }
                Some((name, arg))
            }
        };
        // One-program mode (rank 0 of `srun -n N` with PROCPOOL_ONE_PROGRAM):
        // the other ranks are the workers, and find us through a file.
        let one_program = procpool_ipc::one_program::detect()
            .filter(|me| me.is_master() && self.listen.is_none() && self.launcher.is_none());
        let listen = match (self.listen, &self.launcher) {
            (None, _) if one_program.is_some() || self.launcher.is_some() => {
                let key = procpool_ipc::remote::random_key().map_err(|e| Error::Listen {
                    addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                    source: Arc::new(e),
                })?;
                Some((
                    SocketAddr::from(([0, 0, 0, 0], 0)),
                    Key(key.into_bytes().into()),
                ))
            }
            (listen, _) => listen,
        };
        let workers = self.workers.unwrap_or_else(|| {
            if self.launcher.is_some() || one_program.is_some() {
                0
            } else {
                std::thread::available_parallelism().map_or(1, Into::into)
            }
        });
        let config = Config {
            workers,
            program,
            args: self.args,
            envs: self.envs,
            chunk_size: self.chunk_size,
            window: self.window.unwrap_or(8192),
            prefetch: self.prefetch,
            max_payload_len,
            start_timeout: self.start_timeout.unwrap_or(Duration::from_secs(30)),
            grace_period: self.grace_period.unwrap_or(Duration::from_secs(5)),
            task_timeout: self.task_timeout,
            retries: self.retries,
            max_tasks_per_worker: self.max_tasks_per_worker,
            initializer,
            replace_workers: !self.single_process,
            listen,
            advertise: self.advertise,
            heartbeat_timeout: self
                .heartbeat_timeout
                .unwrap_or(procpool_ipc::remote::DEFAULT_HEARTBEAT_TIMEOUT),
            local_heartbeat: self.local_heartbeat,
        };
        let mut pool = Pool::start(config)?;
        if let Some(launcher) = self.launcher {
            pool.launch(&launcher)?;
        }
        if let Some(me) = one_program {
            pool.publish(&me.file)?;
        }
        Ok(pool)
    }
}

/// The executable `name` in the directory of the current executable, with
/// the platform's suffix added (`.exe` on Windows): a worker program built
/// next to this one, as Cargo places the binaries of one package (and the
/// examples of one package) side by side.
///
/// ```no_run
/// # fn main() -> std::io::Result<()> {
/// let program = procpool::sibling_exe("worker_program")?;
/// assert!(program.ends_with(format!("worker_program{}", std::env::consts::EXE_SUFFIX)));
/// # Ok(()) }
/// ```
///
/// # Errors
/// The error of [`std::env::current_exe`], or [`io::ErrorKind::NotFound`]
/// (its message names the path looked at) when there is no such file.
pub fn sibling_exe(name: impl AsRef<OsStr>) -> io::Result<PathBuf> {
    let mut file = name.as_ref().to_owned();
    let suffix = std::env::consts::EXE_SUFFIX;
    if !file.to_string_lossy().ends_with(suffix) {
        file.push(suffix);
    }
    let path = std::env::current_exe()?.with_file_name(file);
    if path.is_file() {
        Ok(path)
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "no executable {} next to the current one (is it built?)",
                path.display()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sibling_exe_finds_itself_and_names_what_is_missing() {
        let me = std::env::current_exe().unwrap();
        let stem = me.file_stem().unwrap().to_owned();
        assert_eq!(sibling_exe(&stem).unwrap(), me);
        assert_eq!(sibling_exe(me.file_name().unwrap()).unwrap(), me);
        let err = sibling_exe("no-such-worker-program").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("no-such-worker-program"), "{err}");
    }
}
