//! The master side of procpool: [`Pool`], its builder and its errors.
//!
//! Users reach this crate through the `procpool` facade, which also
//! provides `init` for the worker side.
//!
//! # Where things live
//!
//! Threads: the caller's (submits, waits), one reader thread per worker
//! (`worker.rs`: results, the worker's queue operations), one waiter
//! thread per child (reaps it), the supervisor (`supervisor.rs`: starts,
//! kills, replaces, stops), and each worker link's writer thread (in
//! `procpool_ipc::link`).
//!
//! - `pool.rs`, `builder.rs`, `process.rs`, `stream.rs` (`Imap`),
//!   `map_async.rs` (`MapResult`), `error.rs`: the public API.
//! - `dispatch.rs`: the queue of chunks and each worker's lane, under one
//!   lock; what goes where (prefetch, limits). Never blocks, never calls
//!   back: chunks that end under its lock are returned.
//! - `shared.rs`: what the threads share (dispatch, accounting, counters,
//!   the stop signals) and `Shared::finish`, the one exit of every chunk.
//! - `supervisor.rs`: a worker's life and the pool's stops; `blame.rs`:
//!   the pure decision of what a dead worker's chunks become.
//! - `worker.rs`: one worker process (spawn, reader, waiter, kill);
//!   `remote.rs`: the TCP listener for remote workers; `launcher.rs`:
//!   remote workers started through Slurm (`Srun`).
//! - `future.rs`: `AsyncResult` as a future (`TaskFuture`); `wake.rs`
//!   (a leaf): the wakers the finishing threads wake, so every wait also
//!   has a runtime-agnostic async form.
//! - Leaves (import nothing of the crate): `config.rs` (settings), `msg.rs`
//!   (what threads tell the supervisor), `work.rs` (jobs, chunks,
//!   outcomes; it uses only `wake.rs`), `joinable.rs` (JoinableQueue
//!   accounting).
//!
//! A change to what happens when a worker dies goes to `blame.rs`; to how
//! work is spread, `dispatch.rs`; to a setting, `builder.rs` and
//! `config.rs`. `python3 ci/module_cycles.py .` must stay silent.
#![forbid(unsafe_code)]

mod blame;
mod builder;
mod config;
mod dispatch;
mod error;
mod future;
mod interrupt;
mod joinable;
mod launcher;
mod map_async;
mod msg;
mod pool;
mod process;
mod remote;
mod shared;
mod stream;
mod supervisor;
mod wake;
mod work;
mod worker;

pub use builder::{PoolBuilder, sibling_exe};
pub use error::{Error, Oversized, StartupFailure};
pub use future::TaskFuture;
pub use interrupt::{EXIT_INTERRUPTED, install_ctrlc_handler, interrupted};
pub use launcher::Srun;
pub use map_async::MapResult;
pub use pool::{AsyncResult, Inputs, Pool, Stats};
pub use process::{ChildProcess, Process, active_children, cpu_count};
pub use stream::Imap;
