//! The worker side of procpool: the task registry, [`init`] and the serve loop.
//!
//! A worker is the master's own executable re-executed, or a separate worker
//! program; either way its `main` calls [`init`] first:
//!
//! ```no_run
//! use procpool::{Registry, Task};
//!
//! const SQUARE: Task<u64, u64> = Task::new("square");
//!
//! fn main() {
//!     // In a worker process this serves tasks and exits; in the master it
//!     // returns at once.
//!     procpool::init(Registry::new().task(SQUARE, |x| x * x));
//!     // ... the master's code: build a pool, map SQUARE over inputs ...
//! }
//! ```
//!
//! **Everything before `init` runs again in every worker.** Keep it first.
#![forbid(unsafe_code)]

mod output;
mod registry;
mod runtime;

pub use registry::Registry;
pub use runtime::{HEARTBEAT_TIMEOUT_ENV, JOIN_TIMEOUT_ENV, init, run_remote_worker, run_worker};
