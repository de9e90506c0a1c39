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
//!   end through the [`ENDPOINT_ENV`] variable,
//!   starts the child, and returns once the connection is usable. Blocks at
//!   most until the child has connected (Windows) or failed to; on Unix it
//!   does not block. The child ignores the terminal's interrupt, and dies
//!   with the master where the platform allows (Linux parent-death signal,
//!   Windows job object).
//! - `connect(value) -> io::Result<(ReadHalf, WriteHalf)>`: worker side;
//!   `value` is the variable's content. Called at most once per process.
//! - `endpoint_is_ours(value) -> bool`: whether the variable was set for
//!   this process by its master, rather than inherited from a worker by a
//!   program it started (the variable is never removed: editing the
//!   environment of a running process is unsound once it has threads).
//! - `ReadHalf::set_timeouts(timeout)`: reads and writes on the connection
//!   that wait longer than `timeout` fail (`WouldBlock`/`TimedOut`);
//!   `Unsupported` on Windows named pipes.
//! - `WriteHalf::try_write(buf)`: writes what the connection takes without
//!   blocking; `WouldBlock` when it takes nothing now (always, on Windows
//!   named pipes). `try_send_tcp(stream, buf)`: the same on a TCP stream.
//! - `ExitWatch::new(&child)`, `.wait()`: blocks until the child has
//!   exited without reaping it, so the caller can still reap it through
//!   its `Child` (and a `kill` racing with the exit cannot hit a reused
//!   pid). Unix: `waitid(WNOWAIT)`; `ECHILD`, when the process ignores
//!   `SIGCHLD` and the system reaped the child, counts as exited. Windows:
//!   a wait on a duplicate of the process handle.
//! - `ReadHalf::take_fd_channel() -> Option<FdChannel>`: the descriptor
//!   channel beside a local connection (Unix: a `SOCK_DGRAM` socketpair,
//!   the child's end at fd 4, named in the endpoint as
//!   `fd:3:<master pid>:4`; Windows: a second named pipe, `<pipe>-h`,
//!   carrying the values of handles the sender duplicated into the
//!   receiver, see `FdChannel` in `windows.rs`); `None` on remote
//!   connections and on a second call. `FdChannel::send(token, fd)` does
//!   not wait for the peer (Unix: `WouldBlock` when it lags; Windows: a
//!   16-byte pipe write); `FdChannel::recv()` blocks up to 10 s for the
//!   next `(token, fd)` (`TimedOut` on Windows), `UnexpectedEof` once the
//!   peer is gone, `InvalidData` for anything but one 8-byte token with
//!   one descriptor (handle).
//! - `ignore_interrupts()`: the worker leaves Ctrl-C to its master.
//! - `process_alive(pid) -> bool`: whether process `pid` (never 0) exists;
//!   never blocks. Unix: `kill(pid, 0)` succeeds or fails with `EPERM`, so
//!   an unreaped zombie counts. Windows: the process can be opened for
//!   query and its exit code is `STILL_ACTIVE`. A pid whose process is gone
//!   (reaped; on Windows, exited) is not alive until it is reused.
//! - `terminate(&child)`: asks an unreaped child to end. Unix: SIGTERM.
//!   Windows: `TerminateProcess` with exit code `0x10000` (Python's
//!   `TERMINATE`).
//! - `exit_code(status) -> Option<i32>`: Python's `exitcode` of a status:
//!   the exit code, or minus the ending signal (Windows: `0x10000` reads
//!   as -15).
//! - `hostname() -> io::Result<String>`: this machine's name (Unix:
//!   `gethostname`; Windows: `COMPUTERNAME`).
//! - `interface_addrs() -> io::Result<Vec<(String, IpAddr)>>`: each network
//!   interface's name and IPv4/IPv6 addresses (Unix: `getifaddrs`);
//!   `Unsupported` on Windows.
//! - `futex::{wait, wake_all}`: sleep on a 32-bit word in shared memory
//!   until another process wakes it (contract in `sys/futex.rs`; a
//!   sleep-polling fallback where the OS has no cross-process address
//!   wait).

use std::fmt;
use std::io;
use std::process::ExitStatus;

/// The environment variable through which a worker learns its endpoint.
pub const ENDPOINT_ENV: &str = "PROCPOOL_ENDPOINT";

/// The child `endpoint::spawn` started exited before it connected to the master.
///
/// Only Windows reports this: there `spawn` waits until the child has
/// connected to its named pipe, so a child that exits at start makes `spawn`
/// fail. On Unix the connection exists before the child runs and `spawn`
/// returns at once; the same early exit shows up later, as EOF on the
/// connection before the worker's first message.
///
/// It travels inside the [`io::Error`] that `spawn` returns; find it with
/// [`ExitedBeforeConnecting::in_error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitedBeforeConnecting {
    /// How the child exited.
    pub status: ExitStatus,
}

impl ExitedBeforeConnecting {
    /// The early exit `err` reports, if that is what it reports.
    pub fn in_error(err: &io::Error) -> Option<&Self> {
        err.get_ref()?.downcast_ref()
    }
}

impl fmt::Display for ExitedBeforeConnecting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "worker exited before connecting to its master ({})",
            self.status
        )
    }
}

impl std::error::Error for ExitedBeforeConnecting {}

/// `Read` for `$read` and `Write` for `$write`, each a newtype over a
/// stream, forwarding to it. `flush` is a no-op in both backends: a
/// completed write is already in the kernel or the pipe (see the Windows
/// backend for why its `FlushFileBuffers` must not be passed through).
macro_rules! forward_io {
    ($read:ty, $write:ty) => {
        impl std::io::Read for $read {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.0.read(buf)
            }
        }

        impl std::io::Write for $write {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.write(buf)
            }
            fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
                self.0.write_vectored(bufs)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
    };
}
use forward_io;

#[cfg_attr(all(test, loom), allow(dead_code))] // the ring's loom model does not sleep
pub(crate) mod futex;
#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as imp;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as imp;

pub(crate) use imp::{
    ExitWatch, FdChannel, connect, endpoint_is_ours, exit_code, hostname, ignore_interrupts,
    interface_addrs, process_alive, spawn, terminate, try_send_tcp,
};
pub use imp::{ReadHalf, WriteHalf};

#[cfg(test)]
pub(crate) use imp::{test_fd_channels, test_pair};

#[cfg(test)]
mod tests;

pub(crate) mod shm;

/// Writes `contents` to a new file at `path` that only this user can read
/// (Unix: mode 0600; Windows: the default ACL).
pub(crate) fn write_private(path: &std::path::Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents)
}
