//! The connection between a master and one worker.
//!
//! The master calls [`spawn`]: it creates a private connection (a socketpair
//! on Unix, a named pipe with an unguessable name and a token on Windows),
//! starts the child with the variable [`ENDPOINT_ENV`] telling it where its
//! end is, and returns the master's two halves. The child calls
//! [`connect_worker`] once, early in `main`.

use std::fmt;
use std::io;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::sys;

/// The environment variable through which a worker learns its endpoint.
pub const ENDPOINT_ENV: &str = "PROCPOOL_ENDPOINT";

static CLAIMED: AtomicBool = AtomicBool::new(false);

pub use crate::sys::{ReadHalf, WriteHalf};

/// Starts `cmd` as a worker connected to this process.
///
/// The child ignores the terminal's interrupt (the master decides what
/// Ctrl-C means) and dies with the master where the platform allows it.
///
/// # Errors
/// Any I/O error creating the connection or starting the program; on
/// Windows also a child that exits (an error carrying
/// [`ExitedBeforeConnecting`]) or fails to authenticate before it connects.
pub fn spawn(cmd: Command) -> io::Result<(Child, ReadHalf, WriteHalf)> {
    sys::spawn(cmd)
}

/// The child [`spawn`] started exited before it connected to the master.
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

/// Whether a process with this pid exists.
///
/// On Unix a process that has exited but not yet been reaped (a zombie)
/// still exists, so this tells whether a parent has waited for its child;
/// a process we may not signal (`EPERM`) exists too. On Windows it asks
/// whether the process is still running (its exit code reads
/// `STILL_ACTIVE`); a process that exited with code 259, which is
/// `STILL_ACTIVE`, therefore reads as alive. A pid can be reused once its
/// process is gone (Unix: reaped; Windows: its last handle closed), after
/// which this describes the new process. Pid 0 is never alive.
pub fn process_alive(pid: u32) -> bool {
    pid != 0 && sys::process_alive(pid)
}

/// In a worker process, takes the connection to the master.
///
/// Returns `None` when this process was not started as a worker (the
/// variable is absent). The variable is removed so programs the worker
/// starts do not mistake themselves for workers. Only the first call can
/// return `Some`.
///
/// # Errors
/// The variable is present but names no usable endpoint.
pub fn connect_worker() -> Option<io::Result<(ReadHalf, WriteHalf)>> {
    let value = std::env::var_os(ENDPOINT_ENV)?;
    if CLAIMED.swap(true, Ordering::SeqCst) {
        return None;
    }
    sys::remove_env(ENDPOINT_ENV);
    let value = value.to_string_lossy().into_owned();
    Some(sys::connect(&value))
}

/// Whether this process was started as a worker but has not (yet) taken its
/// endpoint, meaning its `main` did not call the worker's `init` first.
pub fn is_unclaimed_worker() -> bool {
    !CLAIMED.load(Ordering::SeqCst) && std::env::var_os(ENDPOINT_ENV).is_some()
}

/// Makes this process ignore the terminal's interrupt (SIGINT on Unix,
/// console control events on Windows), leaving Ctrl-C to the master.
pub fn ignore_interrupts() {
    sys::ignore_interrupts();
}

/// The environment variable through which the master tells a worker its
/// maximum frame length (defaults to
/// [`DEFAULT_MAX_FRAME_LEN`](crate::frame::DEFAULT_MAX_FRAME_LEN)).
pub const MAX_FRAME_ENV: &str = "PROCPOOL_MAX_FRAME_LEN";

/// The environment variable holding the worker id the master gave a worker.
pub const WORKER_ID_ENV: &str = "PROCPOOL_WORKER_ID";
