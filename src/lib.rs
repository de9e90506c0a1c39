//! procpool: run work in a pool of worker **processes**, the way Python's
//! `multiprocessing` does, without its traps.
//!
//! ```no_run
//! use procpool::{Pool, Registry, Task};
//!
//! const SQUARE: Task<u64, u64> = Task::new("square");
//!
//! fn main() -> anyhow::Result<()> {
//!     // First line of main: in a worker process this serves tasks and
//!     // exits; in the master it returns at once.
//!     procpool::init(Registry::new().task(SQUARE, |x| x * x));
//!
//!     let pool = Pool::new(4)?;
//!     let squares = pool.map(SQUARE, 0..10)?;
//!     assert_eq!(squares[9], 81);
//!     Ok(())
//! }
//! ```
//!
//! # The re-exec contract
//!
//! A worker is this same executable started again (or a separate worker
//! program, see [`PoolBuilder::worker_program`]). **Everything `main` does
//! before [`init`] runs again in every worker**, so call it first. A worker
//! whose `main` does not call `init` cannot start a pool of its own:
//! [`Pool::new`] returns [`Error::NotInitialized`] instead of starting
//! workers recursively.
//!
//! # Tasks
//!
//! A [`Task`] is a name with an input and an output type, declared once as a
//! constant. The worker registers a function under it ([`Registry::task`],
//! or [`Registry::try_task`] for a function returning `Result<T, E>`); the
//! master submits inputs by it. Types are checked at compile time on both
//! sides; only the name and serde-encoded values cross the process
//! boundary.
//!
//! Inputs and outputs are [`Payload`]s: any owned, `Send` type with
//! serde's `Serialize` and `Deserialize`, so your own types only need a
//! derive (see the README's "Your own types" for what fails at run time
//! rather than compile time).
//!
//! ```compile_fail
//! use procpool::{Pool, Task};
//! const SQUARE: Task<u64, u64> = Task::new("square");
//! fn wrong(pool: &Pool) {
//!     // A string is not a u64: rejected at compile time.
//!     let _ = pool.map(SQUARE, vec!["three".to_string()]);
//! }
//! ```
//!
//! # Passing state to workers
//!
//! A worker is another process: it shares no memory with the master. State
//! reaches it in one of four ways:
//!
//! - **in the task's input**: anything serialisable, queue and pipe
//!   handles included; sent with every item;
//! - **captured at registration**: `Registry::new().task(T, move |x| ...)`
//!   may capture values, but they are computed *in each worker*, by the
//!   code that runs before [`init`] returns there (the same executable), so
//!   they must not depend on what the master learns later;
//! - **an initializer**: [`PoolBuilder::initializer_with`] sends one value,
//!   encoded once, to every worker (replacements included) before its first
//!   task, as Python's `initargs`; the initializer keeps what it builds in a
//!   `static` [`OnceLock`](std::sync::OnceLock) the tasks read;
//! - **the environment and arguments** of the worker processes:
//!   [`PoolBuilder::worker_env`], [`PoolBuilder::worker_args`].
//!
//! A worker program of its own (not this executable re-executed) is found
//! with [`sibling_exe`] when Cargo builds it next to the master.
//!
//! # Queues, pipes and processes
//!
//! [`Queue`], [`JoinableQueue`], [`SimpleQueue`] and [`Pipe`] are shared
//! between processes: the process that creates one holds it (the *hub*),
//! and a handle passed to a [`Process`] or a pool task arrives there as a
//! proxy. When `put` returns, the item is in the hub or in the kernel on its
//! way there — there is no feeder thread to flush at exit — and an item
//! handed to a process that dies before taking it goes back to the queue.
//! A queue lives while any process holds a handle (the creator may move
//! its only one into a child); a handle reaches its queue from the hub's
//! process and its direct workers, and fails to deserialise further away
//! ([`QueueError::Unreachable`]) rather than lose items. A pipe whose
//! peer is gone reads as ended ([`GetError::Closed`]) once drained.
//!
//! ```no_run
//! use procpool::{Process, Queue, Registry, Task};
//!
//! const PRODUCE: Task<(Queue<u64>, u64), ()> = Task::new("produce");
//!
//! fn main() -> anyhow::Result<()> {
//!     procpool::init(Registry::new().task(PRODUCE, |(q, n): (Queue<u64>, u64)| {
//!         for i in 0..n {
//!             q.put(i).expect("put");
//!         }
//!     }));
//!     let q = Queue::new();
//!     Process::spawn(PRODUCE, (q.clone(), 3))?.join()?;
//!     assert_eq!(q.get()?, 0);
//!     Ok(())
//! }
//! ```
//!
//! A [`SharedMap`] (Python's `Manager().dict()`) is held and travels the
//! same way; each of its operations is atomic in the hub, with
//! `fetch_add`, `insert_if_absent` and `compare_and_swap` for the updates
//! Python makes under a lock. [`Lock`], [`Condition`], [`Barrier`] and the
//! other synchronization primitives are held by the hub too, and stay
//! usable when a process holding or waiting on one dies.
//!
//! Queues read like channels: `for item in &queue` takes items until the
//! queue is closed and drained (each item a `Result`, see [`QueueIter`]),
//! and [`JoinableQueue::get_guarded`] hands out an item in a [`DoneGuard`]
//! that calls `task_done` when it is dropped.
//!
//! # Remote workers
//!
//! A pool built with [`PoolBuilder::listen`] also takes workers that join
//! over TCP: a program on any machine calls [`run_remote_worker`] with the
//! pool's address and key. Both sides prove they know the key, and the
//! connection is encrypted with forward secrecy (Noise `NNpsk0`, see
//! `procpool_ipc::remote`); a worker of another protocol version is
//! refused, naming both versions.
//!
//! Workers connect to [`Pool::advertised_addr`]: this machine's host name
//! for a pool listening on all interfaces, the bound address otherwise, or
//! what [`PoolBuilder::advertise`] names (a host, an IP, an interface).
//! A pool may also have remote workers only (`workers(0)`), with
//! [`Pool::wait_for_workers`] as its gate.
//!
//! A key is at least [`MIN_KEY_LEN`] (16) bytes, or the pool refuses to
//! start with [`Error::KeyTooShort`] (and a remote worker exits saying
//! so). Make one with [`random_key`], or in a shell with
//! `head -c 32 /dev/urandom | base64`:
//!
//! ```
//! let key = procpool::random_key()?;
//! assert!(key.len() >= procpool::MIN_KEY_LEN);
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Performance notes
//!
//! - Small tasks want chunks: `map` picks Python's chunk size, `imap` learns
//!   one from the measured task time; set [`PoolBuilder::chunk_size`] to
//!   override.
//! - serde encodes a `Vec<u8>` one element at a time. For byte buffers use
//!   `serde_bytes::ByteBuf` (or `#[serde(with = "serde_bytes")]`), which is
//!   copied in one piece.
//! - Between the master and its local workers (every platform),
//!   frames of 1 MiB or more (task inputs and results, queue items, pipe
//!   messages) travel through reused anonymous shared memory segments
//!   rather than the socket (named pipe): one copy in, one copy out.
//!   Remote workers keep the socket. `PROCPOOL_SHM_THRESHOLD` (bytes, or `off`)
//!   changes the threshold.
//!
//! # Errors
//!
//! A panic in a task, a returned error, a worker that dies, a task that
//! times out, a value that fails to encode: each reaches the caller as an
//! [`Error`] saying what happened. Nothing hangs, nothing is lost silently.
//! Inside an [`Error`], [`TaskError`] says why a task failed in its worker
//! and [`IpcError`] why bytes could not be encoded, decoded or moved;
//! queues report [`PutError`], [`GetError`] and [`QueueError`].
#![forbid(unsafe_code)]

pub use procpool_ipc::bytemuck;
pub use procpool_ipc::one_program::{ONE_PROGRAM_ENV, OneProgram, detect as one_program};
pub use procpool_ipc::pipe::{Pipe, PipeEnd, PipeReceiver, PipeSender, RecvFuture};
pub use procpool_ipc::queue::{
    DoneGuard, GetError, GetFuture, JoinFuture, JoinableQueue, PutError, PutFuture, Queue,
    QueueError, QueueIter, SimpleQueue,
};
pub use procpool_ipc::remote::{KeyTooShort, MIN_KEY_LEN, random_key};
pub use procpool_ipc::shared_map::{MapError, MapInteger, SharedMap};
pub use procpool_ipc::shared_memory::{
    Array, Plain, SharedMemory, SharedMemoryError, Value, ValueGuard,
};
pub use procpool_ipc::sync_prims::{
    Barrier, BarrierError, Condition, ConditionGuard, Event, Lock, LockError, LockGuard,
    RCondition, RConditionGuard, RLock, RLockGuard, ReleaseError, Semaphore, SemaphoreGuard,
};
pub use procpool_ipc::task::Payload;
pub use procpool_ipc::wait::{Waitable, wait};
pub use procpool_ipc::{IpcError, Task, TaskError};

pub use procpool_pool::{
    AsyncResult, ChildProcess, EXIT_INTERRUPTED, Error, Imap, Inputs, MapResult, Oversized, Pool,
    PoolBuilder, Process, Srun, StartupFailure, Stats, TaskFuture, active_children, cpu_count,
    install_ctrlc_handler, interrupted, sibling_exe,
};
pub use procpool_worker::{JOIN_TIMEOUT_ENV, Registry, init, run_remote_worker, run_worker};

/// The README's code, compiled and run as a doctest (its quickstart starts
/// real workers: the doctest binary re-executes itself).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
