//! Tasks shared by `worker_program.rs` (the worker) and
//! `with_worker_program.rs` (the master): both sides name a task by the same
//! declaration, so its types are checked at compile time on both.

use procpool::Task;

/// Number of Collatz steps from `n` down to 1.
pub(crate) const COLLATZ: Task<u64, u32> = Task::new("collatz");

/// The implementation, registered only in the worker program.
#[allow(dead_code)] // the master side never calls it
pub(crate) fn collatz(mut n: u64) -> u32 {
    let mut steps = 0;
    while n > 1 {
        n = if n % 2 == 0 { n / 2 } else { 3 * n + 1 };
        steps += 1;
    }
    steps
}
