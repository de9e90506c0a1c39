//! Who is to blame when a worker leaves: the decision part of the
//! supervisor's `on_gone`, as a pure function of plain facts.
//!
//! The supervisor gathers the [`Facts`] (how it killed the worker, why its
//! connection ended, how its process exited, what its lane held) and
//! applies the [`Verdict`]: the error for the chunk that was running, what
//! becomes of that chunk and of the chunks queued behind it, and the
//! start-up error of a worker that never said hello. Nothing here touches
//! a process, a lock or a channel, so the whole matrix is tested in
//! `blame/tests.rs`.
//!
//! | how it ended | culprit | head chunk |
//! |---|---|---|
//! | killed for the head chunk's timeout | `Timeout` | failed |
//! | killed for a timeout of a chunk that finished meanwhile | as below | requeued as is (blameless) |
//! | terminated | `Terminated` | failed |
//! | after `Shutdown`, interrupted | `Interrupted` | failed |
//! | remote worker, any end | `RemoteWorkerLost` | retried |
//! | local heartbeats on, read timed out | `Unresponsive` | retried |
//! | connection error (not a truncated frame) | `Connection` | retried |
//! | exit status known | `WorkerDied` | retried |
//! | exit status unknown (`SIGCHLD` ignored) | `WorkerExited` | retried |
//!
//! "Retried" means while `attempts < retries` and the pool is not stopping
//! (in the `Stopping` phase, or `Shutdown` sent to this worker); otherwise
//! failed. The chunks behind the head never started: they go back to the
//! front of the queue in order, or fail with the culprit when stopping.
//!
//! # Which item died
//!
//! A worker reports a chunk's results as they finish (`PART` frames, see
//! `procpool_ipc::proto`), not one by one but whenever an item took long or
//! 1 ms passed since its last report, and at the chunk's end. So the
//! master knows which items finished, except the fast ones since the last
//! report. The verdict concerns only the head chunk's *unreported* items
//! (the reported ones have been delivered already):
//!
//! - one unreported item: it is the one that was running, and the verdict
//!   (retry, fail) is its own;
//! - several, after a death or a timeout (not while stopping): the culprit
//!   is one of them, nobody knows which. They are **split**: each goes back
//!   to the front of the queue as a chunk of its own, with the head's
//!   attempts, so that a death while one runs alone is blamed on it. Items
//!   that had finished but whose results had not left the dead worker run
//!   again: delivery is at-least-once for them (their results are handed
//!   out once).
//!
//! Per-item reporting costs a clock read per item and a frame per
//! millisecond of work; a progress word in shared memory would say exactly
//! which item runs, at the cost of platform code (not done).

use std::net::SocketAddr;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use procpool_ipc::IpcError;

use crate::worker::Kill;
use crate::{Error, StartupFailure};

/// What the supervisor knows of a worker that left.
#[derive(Debug)]
pub(crate) struct Facts {
    pub(crate) worker_id: usize,
    pub(crate) pid: u32,
    /// Why the supervisor killed it, if it did.
    pub(crate) killed: Option<Kill>,
    /// Why its reader stopped, if not a clean EOF.
    pub(crate) error: Option<IpcError>,
    /// How its process ended, if known.
    pub(crate) status: Option<ExitStatus>,
    /// The remote worker's address; `None` for a child.
    pub(crate) peer: Option<SocketAddr>,
    /// Whether it completed its handshake.
    pub(crate) ready: bool,
    /// Whether it was told to shut down.
    pub(crate) shutdown_sent: bool,
    /// Whether the pool was interrupted.
    pub(crate) interrupted: bool,
    /// Whether the supervisor is in its `Stopping` phase.
    pub(crate) phase_stopping: bool,
    /// The id of the first entry in its lane (the chunk or initializer it
    /// was running), if any.
    pub(crate) head_id: Option<u64>,
    /// How many times the head chunk was retried already.
    pub(crate) attempts: u32,
    /// Items of the head chunk whose results had not arrived.
    pub(crate) unreported: u32,
    /// The pool's `retries`.
    pub(crate) retries: u32,
    /// The pool's `start_timeout`.
    pub(crate) start_timeout: Duration,
    /// The heartbeat timeout, when local workers heartbeat.
    pub(crate) heartbeat: Option<Duration>,
}

/// What becomes of a chunk of a worker that left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Back to the front of the queue as it is.
    Requeue,
    /// Back to the front of the queue, one more attempt counted.
    Retry,
    /// Finished with the culprit error.
    Fail,
    /// Its unreported items back to the front of the queue, each alone
    /// (the item that was running is one of them, not known which).
    Split,
}

/// The supervisor's decision about a worker that left.
#[derive(Debug)]
pub(crate) struct Verdict {
    /// The error for the chunk that was running (and for any chunk failed
    /// with it).
    pub(crate) culprit: Error,
    /// What becomes of the chunk that was running, if there was one.
    pub(crate) head: Fate,
    /// What becomes of the chunks queued behind it: `Requeue` or `Fail`.
    pub(crate) rest: Fate,
    /// For a worker that never completed its handshake: why its start-up
    /// failed.
    pub(crate) startup: Option<Error>,
}

/// Decides the fate of a worker's chunks from what is known of its end;
/// see the module docs.
pub(crate) fn blame(facts: Facts) -> Verdict {
    let Facts {
        worker_id,
        pid,
        killed,
        error,
        status,
        peer,
        ready,
        shutdown_sent,
        interrupted,
        phase_stopping,
        head_id,
        attempts,
        unreported,
        retries,
        start_timeout,
        heartbeat,
    } = facts;
    // Said in the hello, whoever the worker is: kept for the start-up error.
    let version = match &error {
        Some(IpcError::VersionMismatch { ours, theirs }) => Some((*ours, *theirs)),
        _ => None,
    };
    let culprit = match (killed, error) {
        (Some(Kill::Timeout { timeout, chunk }), _) if head_id == Some(chunk) => Error::Timeout {
            timeout,
            worker_id,
            pid,
            killed: true,
        },
        (Some(Kill::Terminated), _) => Error::Terminated,
        _ if shutdown_sent && interrupted => Error::Interrupted,
        // A remote worker's link ends however the path fails: it is lost.
        _ if peer.is_some() => Error::RemoteWorkerLost { worker_id, peer },
        (_, Some(IpcError::Io(e)))
            if heartbeat.is_some()
                && matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
        {
            Error::Unresponsive {
                worker_id,
                pid,
                timeout: heartbeat.unwrap_or_default(),
            }
        }
        (_, Some(e)) if !matches!(e, IpcError::Truncated { .. }) => Error::Connection {
            worker_id,
            source: Arc::new(e),
        },
        _ => match status {
            Some(status) => Error::WorkerDied {
                worker_id,
                pid,
                status,
            },
            None => Error::WorkerExited { worker_id, pid },
        },
    };
    let stopping = phase_stopping || shutdown_sent;
    // Killed for a timeout of a chunk that finished meanwhile: the head
    // had just started and is not to blame.
    let blameless = matches!(killed, Some(Kill::Timeout { chunk, .. }) if head_id != Some(chunk));
    let retry = !stopping
        && matches!(
            culprit,
            Error::WorkerDied { .. }
                | Error::WorkerExited { .. }
                | Error::Unresponsive { .. }
                | Error::RemoteWorkerLost { .. }
                | Error::Connection { .. }
        )
        && attempts < retries;
    // Several items had not reported: which one was running is unknown.
    let unknown = unreported > 1
        && matches!(
            culprit,
            Error::WorkerDied { .. }
                | Error::WorkerExited { .. }
                | Error::Unresponsive { .. }
                | Error::RemoteWorkerLost { .. }
                | Error::Connection { .. }
                | Error::Timeout { .. }
        );
    let head = if blameless && !stopping {
        Fate::Requeue
    } else if unknown && !stopping {
        Fate::Split
    } else if retry {
        Fate::Retry
    } else {
        Fate::Fail
    };
    let rest = if stopping { Fate::Fail } else { Fate::Requeue };
    let startup = (!ready).then(|| match (killed, version, culprit.clone()) {
        (Some(Kill::StartTimeout), ..) => Error::Startup {
            worker_id,
            reason: StartupFailure::NoHandshake(start_timeout),
        },
        (_, Some((ours, theirs)), _) => Error::VersionMismatch {
            worker_id,
            ours,
            theirs,
        },
        (.., Error::Connection { source, .. }) => Error::Startup {
            worker_id,
            reason: StartupFailure::InvalidHandshake(source),
        },
        _ => Error::Startup {
            worker_id,
            reason: match peer {
                Some(peer) => StartupFailure::RemoteLeft { peer },
                None => StartupFailure::Exited { pid, status },
            },
        },
    });
    Verdict {
        culprit,
        head,
        rest,
        startup,
    }
}

#[cfg(test)]
mod tests;
