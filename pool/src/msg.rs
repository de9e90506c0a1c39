//! [`Msg`]: what the pool's threads tell the supervisor. A leaf: it
//! imports no module of the crate.

use std::net::{SocketAddr, TcpStream};

use procpool_ipc::secure::Session;
use std::process::ExitStatus;

use procpool_ipc::proto::Hello;
use procpool_ipc::{IpcError, TaskError};

/// What the supervisor is told.
#[derive(Debug)]
pub(crate) enum Msg {
    /// Stop gracefully: finish queued and running work within the grace
    /// period, then kill.
    Shutdown,
    /// Stop dispatching: fail queued work with `Interrupted`, let running
    /// work finish within the grace period.
    Interrupt,
    /// Kill every worker now.
    Terminate,
    /// Ask every local worker to end (SIGTERM; `TerminateProcess` on
    /// Windows), as Python's `Process.terminate`; their deaths are then
    /// handled as any other.
    Signal,
    Hello {
        slot: usize,
        key: u64,
        hello: Hello,
    },
    /// Something the supervisor watches changed (a chunk started or ended).
    Wake,
    /// A worker's initializer ran: `Err` (it failed) makes the worker
    /// unusable, and counts as a failed start of its slot.
    Initialized {
        slot: usize,
        key: u64,
        result: Result<(), TaskError>,
    },
    /// A worker's connection ended (its reader's last word): `error` says
    /// why, if it was not a clean end.
    Gone {
        slot: usize,
        key: u64,
        error: Option<IpcError>,
    },
    /// A local worker's process exited and was reaped (`None`: the system
    /// reaped it, as when this process ignores `SIGCHLD`).
    Exited {
        slot: usize,
        key: u64,
        status: Option<ExitStatus>,
    },
    /// A remote worker connected and authenticated; `session` encrypts
    /// its link.
    Joined {
        stream: TcpStream,
        session: Session,
        peer: SocketAddr,
    },
}

/// The tasks the workers serve: names (the index is the task number) and
/// each one's `Task::signature`.
pub(crate) use procpool_ipc::task::Catalog;

/// The task list a worker announces in its handshake.
pub(crate) fn catalog_of(hello: &Hello) -> Catalog {
    Catalog {
        names: hello.tasks.clone(),
        signatures: hello.signatures.clone(),
    }
}
