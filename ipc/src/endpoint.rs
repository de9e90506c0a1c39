//! The connection between a master and one worker.
//!
//! The master calls [`spawn`]: it creates a private connection (a socketpair
//! on Unix, a named pipe with an unguessable name and a token on Windows),
//! starts the child with the variable [`ENDPOINT_ENV`] telling it where its
//! end is, and returns the master's two halves. The child calls
//! [`connect_worker`] once, early in `main`.

use std::io;
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::sys;

pub use crate::sys::ENDPOINT_ENV;

static CLAIMED: AtomicBool = AtomicBool::new(false);

/// The endpoint variable, if it was set for this process (see
/// [`connect_worker`]); looked at once.
fn own_endpoint() -> Option<&'static str> {
    static OWN: OnceLock<Option<String>> = OnceLock::new();
    OWN.get_or_init(|| {
        let value = std::env::var_os(ENDPOINT_ENV)?.into_string().ok()?;
        sys::endpoint_is_ours(&value).then_some(value)
    })
    .as_deref()
}

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

pub use crate::sys::ExitedBeforeConnecting;

/// Arms liveness on a local connection: a read or a write that waits
/// longer than `timeout` fails, so a peer that stops (a stopped process, a
/// hung master) is noticed by a side that expects heartbeats.
///
/// # Errors
/// The socket options could not be set; `Unsupported` on Windows, whose
/// named pipes have no timeouts.
pub fn set_timeouts(half: &ReadHalf, timeout: Option<std::time::Duration>) -> io::Result<()> {
    half.set_timeouts(timeout)
}

/// Waits for a child's exit without reaping it, so that its `Child` can
/// still be reaped, and killed without the risk of signalling a reused pid,
/// by another thread meanwhile.
///
/// ```no_run
/// # fn main() -> std::io::Result<()> {
/// let child = std::process::Command::new("true").spawn()?;
/// let watch = procpool_ipc::endpoint::ExitWatch::new(&child)?;
/// let child = std::sync::Mutex::new(child);
/// watch.wait()?; // blocks without the lock
/// let status = child.lock().unwrap().try_wait()?; // reaps: Some(status)
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ExitWatch(sys::ExitWatch);

impl ExitWatch {
    /// Watches `child`.
    ///
    /// # Errors
    /// Windows: the process handle cannot be duplicated.
    pub fn new(child: &Child) -> io::Result<Self> {
        sys::ExitWatch::new(child).map(Self)
    }

    /// Blocks until the child has exited (or was reaped by the system,
    /// when this process ignores `SIGCHLD`).
    ///
    /// # Errors
    /// The wait itself failed.
    pub fn wait(&self) -> io::Result<()> {
        self.0.wait()
    }
}

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

/// Asks a child to end: SIGTERM on Unix (a handler may catch it),
/// `TerminateProcess` with exit code `0x10000` on Windows (as Python's
/// `Process.terminate`). The child must not have been reaped yet (hold
/// its `Child` and check `try_wait` first), so its pid cannot be reused.
///
/// # Errors
/// The signal could not be sent.
pub fn terminate(child: &Child) -> io::Result<()> {
    sys::terminate(child)
}

/// Python's `Process.exitcode` for an exit status: the exit code, or
/// minus the signal that ended the process (-9 after SIGKILL, -15 after
/// SIGTERM or, on Windows, after [`terminate`]). `None` only for a status
/// that has neither, which the platforms do not produce.
pub fn exit_code(status: std::process::ExitStatus) -> Option<i32> {
    sys::exit_code(status)
}

/// In a worker process, takes the connection to the master.
///
/// Returns `None` when this process was not started as a worker: the
/// variable is absent, or was not set for this process but inherited from
/// a worker by a program it started (the endpoint it names is not this
/// process's: on Unix the worker's descriptor is close-on-exec and, on
/// Linux, must be a socket its named master created; on Windows the
/// master it names must be this process's parent). The variable is left in
/// the environment: removing it would be unsound once threads run. Only
/// the first call can return `Some`.
///
/// # Errors
/// The endpoint cannot be opened.
#[doc(hidden)]
pub fn connect_worker() -> Option<io::Result<(ReadHalf, WriteHalf)>> {
    let value = own_endpoint()?;
    if CLAIMED.swap(true, Ordering::SeqCst) {
        return None;
    }
    Some(sys::connect(value))
}

/// Whether this process was started as a worker but has not (yet) taken its
/// endpoint, meaning its `main` did not call the worker's `init` first.
pub fn is_unclaimed_worker() -> bool {
    !CLAIMED.load(Ordering::SeqCst) && own_endpoint().is_some()
}

/// Makes this process ignore the terminal's interrupt (SIGINT on Unix,
/// console control events on Windows), leaving Ctrl-C to the master.
pub fn ignore_interrupts() {
    sys::ignore_interrupts();
}

/// The environment variable through which the master tells a worker its
/// payload limit (defaults to
/// [`DEFAULT_MAX_PAYLOAD_LEN`](crate::frame::DEFAULT_MAX_PAYLOAD_LEN)).
pub const MAX_PAYLOAD_ENV: &str = "PROCPOOL_MAX_PAYLOAD_LEN";

/// The environment variable holding the worker id the master gave a worker.
pub const WORKER_ID_ENV: &str = "PROCPOOL_WORKER_ID";

/// The environment variable that sets a worker's heartbeat timeout, in
/// milliseconds. A remote worker adopts its master's
/// (`PoolBuilder::heartbeat_timeout`, learnt in the handshake) unless this
/// overrides it; a local worker gets it from its master when the pool
/// asks for heartbeats on local workers (`PoolBuilder::local_heartbeat`).
/// A master silent that long is declared lost, and the worker exits
/// (status 70), abandoning its task: the master has failed or re-queued it
/// by then.
pub const HEARTBEAT_TIMEOUT_ENV: &str = "PROCPOOL_HEARTBEAT_TIMEOUT_MS";
