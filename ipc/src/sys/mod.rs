//! Platform backends behind one internal interface.
//!
//! Each backend (`unix.rs`, `windows.rs`) provides exactly these names:
//!
//! - `ReadHalf`, `WriteHalf`: the two directions of one master↔worker
//!   connection; `Read`/`Write` + `Send`, usable from different threads at
//!   the same time. A read returns `Ok(0)` (or `BrokenPipe`, which the frame
//!   layer treats the same) once the peer has closed its end or died.
//! - `spawn(cmd) -> io::Result<(Child, ReadHalf, WriteHalf)>`: master side.
//!   Creates a fresh private connection, arranges for the child to find its
//!   end through the [`ENDPOINT_ENV`](crate::endpoint::ENDPOINT_ENV) variable,
//!   starts the child, and returns once the connection is usable. Blocks at
//!   most until the child has connected (Windows) or failed to; on Unix it
//!   does not block. The child ignores the terminal's interrupt, and dies
//!   with the master where the platform allows (Linux parent-death signal,
//!   Windows job object).
//! - `connect(value) -> io::Result<(ReadHalf, WriteHalf)>`: worker side;
//!   `value` is the variable's content. Called at most once per process.
//! - `WriteHalf::try_write(buf)`: writes what the connection takes without
//!   blocking; `WouldBlock` when it takes nothing now (always, on Windows
//!   named pipes). `try_send_tcp(stream, buf)`: the same on a TCP stream.
//! - `ignore_interrupts()`: the worker leaves Ctrl-C to its master.
//! - `process_alive(pid) -> bool`: whether process `pid` (never 0) exists;
//!   never blocks. Unix: `kill(pid, 0)` succeeds or fails with `EPERM`, so
//!   an unreaped zombie counts. Windows: the process can be opened for
//!   query and its exit code is `STILL_ACTIVE`. A pid whose process is gone
//!   (reaped; on Windows, exited) is not alive until it is reused.

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as imp;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as imp;

pub use imp::{ReadHalf, WriteHalf};
pub(crate) use imp::{connect, ignore_interrupts, process_alive, spawn, try_send_tcp};

#[cfg(all(test, unix))]
pub(crate) use imp::test_pair;

#[cfg(test)]
mod tests;

/// Removes an environment variable of this process.
pub(crate) fn remove_env(name: &str) {
    // SAFETY: called from the worker's `init`, which its contract places at
    // the top of `main`, before the program starts threads that could read
    // the environment concurrently.
    unsafe { std::env::remove_var(name) };
}
