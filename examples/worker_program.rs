//! The worker half of a worker-program pair: a dedicated executable that
//! only serves tasks. `with_worker_program.rs` is the master that starts it.
//!
//! Running it by hand prints a hint and exits with status 2.

#[path = "shared/tasks.rs"]
mod tasks;

fn main() {
    procpool::run_worker(procpool::Registry::new().task(tasks::COLLATZ, tasks::collatz));
}
