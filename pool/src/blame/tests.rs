//! The blame/retry matrix, row by row: no process, no supervisor.

use std::io;
use std::net::SocketAddr;
use std::process::ExitStatus;
use std::time::Duration;

use super::*;

const HEAD: u64 = 5;
const PID: u32 = 42;
const TIMEOUT: Duration = Duration::from_millis(300);

/// A local worker that was running chunk `HEAD` (its first attempt, one
/// retry allowed) and died with a known status; rows change what differs.
fn died() -> Facts {
    Facts {
        worker_id: 3,
        pid: PID,
        killed: None,
        error: None,
        // Any status will do: the decision only asks whether it is known.
        status: Some(ExitStatus::default()),
        peer: None,
        ready: true,
        shutdown_sent: false,
        interrupted: false,
        phase_stopping: false,
        head_id: Some(HEAD),
        attempts: 0,
        unreported: 1,
        retries: 1,
        start_timeout: Duration::from_secs(5),
        heartbeat: None,
    }
}

fn peer() -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 1], 4000))
}

fn io_error() -> IpcError {
    IpcError::Io(io::Error::from(io::ErrorKind::ConnectionReset))
}

fn timed_out() -> IpcError {
    IpcError::Io(io::Error::from(io::ErrorKind::WouldBlock))
}

fn truncated() -> IpcError {
    IpcError::Truncated {
        expected: 10,
        read: 3,
    }
}

/// The culprit's variant, for the table.
fn kind(e: &Error) -> &'static str {
    match e {
        Error::Timeout { .. } => "Timeout",
        Error::Terminated => "Terminated",
        Error::Interrupted => "Interrupted",
        Error::RemoteWorkerLost { .. } => "RemoteWorkerLost",
        Error::Connection { .. } => "Connection",
        Error::WorkerDied { .. } => "WorkerDied",
        Error::WorkerExited { .. } => "WorkerExited",
        Error::Unresponsive { .. } => "Unresponsive",
        Error::Startup { .. } => "Startup",
        Error::VersionMismatch { .. } => "VersionMismatch",
        other => panic!("unexpected culprit {other:?}"),
    }
}

use Fate::{Fail, Requeue, Retry, Split};

#[test]
fn the_matrix() {
    let timeout_of = |chunk| {
        Some(Kill::Timeout {
            timeout: TIMEOUT,
            chunk,
        })
    };
    #[rustfmt::skip]
    let rows: Vec<(&str, Facts, &str, Fate, Fate)> = vec![
        // name, facts, culprit, head chunk, chunks behind it
        ("died: retried", died(), "WorkerDied", Retry, Requeue),
        ("died: retries used up",
            Facts { attempts: 1, ..died() }, "WorkerDied", Fail, Requeue),
        ("died: no retries", Facts { retries: 0, ..died() }, "WorkerDied", Fail, Requeue),
        ("died: more retries left",
            Facts { attempts: 2, retries: 3, ..died() }, "WorkerDied", Retry, Requeue),
        ("exit status unknown: retried like any death",
            Facts { status: None, ..died() }, "WorkerExited", Retry, Requeue),
        ("exit status unknown, no retries left",
            Facts { status: None, attempts: 1, ..died() }, "WorkerExited", Fail, Requeue),
        ("local heartbeats: a read that timed out is a silent worker",
            Facts { error: Some(timed_out()), heartbeat: Some(Duration::from_secs(1)), ..died() },
            "Unresponsive", Retry, Requeue),
        ("no local heartbeats: a timed-out read is a connection error",
            Facts { error: Some(timed_out()), ..died() }, "Connection", Retry, Requeue),
        ("connection error: retried",
            Facts { error: Some(io_error()), ..died() }, "Connection", Retry, Requeue),
        ("connection error, status unknown: still a connection error",
            Facts { error: Some(io_error()), status: None, ..died() }, "Connection", Retry, Requeue),
        ("truncated frame: the death is to blame",
            Facts { error: Some(truncated()), ..died() }, "WorkerDied", Retry, Requeue),
        ("truncated frame, status unknown",
            Facts { error: Some(truncated()), status: None, ..died() }, "WorkerExited", Retry, Requeue),
        ("remote: lost, retried",
            Facts { peer: Some(peer()), status: None, ..died() }, "RemoteWorkerLost", Retry, Requeue),
        ("remote with a connection error: lost all the same",
            Facts { peer: Some(peer()), status: None, error: Some(io_error()), ..died() },
            "RemoteWorkerLost", Retry, Requeue),
        ("remote: retries used up",
            Facts { peer: Some(peer()), status: None, attempts: 1, ..died() },
            "RemoteWorkerLost", Fail, Requeue),
        ("killed after a hang (Broken): as a death",
            Facts { killed: Some(Kill::Broken), ..died() }, "WorkerDied", Retry, Requeue),
        ("timeout of the head: never retried",
            Facts { killed: timeout_of(HEAD), retries: 5, ..died() }, "Timeout", Fail, Requeue),
        ("timeout of the head beats a connection error",
            Facts { killed: timeout_of(HEAD), error: Some(io_error()), ..died() },
            "Timeout", Fail, Requeue),
        ("timeout of the head of a remote worker",
            Facts { killed: timeout_of(HEAD), peer: Some(peer()), ..died() }, "Timeout", Fail, Requeue),
        ("timeout of a chunk that finished meanwhile: blameless",
            Facts { killed: timeout_of(HEAD - 1), ..died() }, "WorkerDied", Requeue, Requeue),
        ("blameless even with retries used up (no attempt counted)",
            Facts { killed: timeout_of(HEAD - 1), attempts: 1, retries: 1, ..died() },
            "WorkerDied", Requeue, Requeue),
        ("blameless, status unknown",
            Facts { killed: timeout_of(HEAD - 1), status: None, ..died() },
            "WorkerExited", Requeue, Requeue),
        ("blameless, but stopping: fails",
            Facts { killed: timeout_of(HEAD - 1), phase_stopping: true, ..died() },
            "WorkerDied", Fail, Fail),
        ("timeout with an empty lane",
            Facts { killed: timeout_of(HEAD), head_id: None, ..died() }, "WorkerDied", Requeue, Requeue),
        ("terminated", Facts { killed: Some(Kill::Terminated), ..died() }, "Terminated", Fail, Requeue),
        ("terminated while stopping",
            Facts { killed: Some(Kill::Terminated), phase_stopping: true, ..died() },
            "Terminated", Fail, Fail),
        ("terminated beats interrupted",
            Facts { killed: Some(Kill::Terminated), shutdown_sent: true, interrupted: true, ..died() },
            "Terminated", Fail, Fail),
        ("shut down on interrupt",
            Facts { shutdown_sent: true, interrupted: true, ..died() }, "Interrupted", Fail, Fail),
        ("shut down on interrupt, remote",
            Facts { shutdown_sent: true, interrupted: true, peer: Some(peer()), ..died() },
            "Interrupted", Fail, Fail),
        ("interrupted, no shutdown sent yet: a plain death",
            Facts { interrupted: true, ..died() }, "WorkerDied", Retry, Requeue),
        ("died after shutdown: nothing retried or requeued",
            Facts { shutdown_sent: true, ..died() }, "WorkerDied", Fail, Fail),
        ("died while the pool stops",
            Facts { phase_stopping: true, ..died() }, "WorkerDied", Fail, Fail),
        ("connection error while the pool stops",
            Facts { phase_stopping: true, error: Some(io_error()), ..died() }, "Connection", Fail, Fail),
        ("died with several items unreported: split",
            Facts { unreported: 8, ..died() }, "WorkerDied", Split, Requeue),
        ("split even with retries used up (the culprit is not known yet)",
            Facts { unreported: 2, attempts: 1, ..died() }, "WorkerDied", Split, Requeue),
        ("timeout with several items unreported: split",
            Facts { killed: timeout_of(HEAD), unreported: 3, ..died() }, "Timeout", Split, Requeue),
        ("several unreported, but stopping: fail",
            Facts { unreported: 3, phase_stopping: true, ..died() }, "WorkerDied", Fail, Fail),
        ("several unreported, terminated: fail",
            Facts { unreported: 3, killed: Some(Kill::Terminated), ..died() }, "Terminated", Fail, Requeue),
        ("several unreported, blameless: requeued as is",
            Facts { unreported: 3, killed: timeout_of(HEAD - 1), ..died() }, "WorkerDied", Requeue, Requeue),
    ];
    let n = rows.len();
    for (name, facts, culprit, head, rest) in rows {
        let ready = facts.ready;
        let v = blame(facts);
        assert_eq!(
            (kind(&v.culprit), v.head, v.rest),
            (culprit, head, rest),
            "row {name:?}"
        );
        assert_eq!(v.startup.is_some(), !ready, "row {name:?}");
    }
    assert_eq!(n, 39);
}

/// The culprits carry who died and how.
#[test]
fn culprits_name_the_worker() {
    let v = blame(Facts {
        killed: Some(Kill::Timeout {
            timeout: TIMEOUT,
            chunk: HEAD,
        }),
        ..died()
    });
    assert!(
        matches!(
            v.culprit,
            Error::Timeout {
                timeout: TIMEOUT,
                worker_id: 3,
                pid: PID,
                killed: true,
            }
        ),
        "{:?}",
        v.culprit
    );
    let v = blame(died());
    assert!(
        matches!(v.culprit, Error::WorkerDied { worker_id: 3, pid: PID, status } if status.success()),
        "{:?}",
        v.culprit
    );
    let v = blame(Facts {
        status: None,
        ..died()
    });
    assert!(matches!(
        v.culprit,
        Error::WorkerExited {
            worker_id: 3,
            pid: PID
        }
    ));
    let v = blame(Facts {
        peer: Some(peer()),
        ..died()
    });
    assert!(
        matches!(v.culprit, Error::RemoteWorkerLost { worker_id: 3, peer: Some(p) } if p == peer())
    );
    let v = blame(Facts {
        error: Some(io_error()),
        ..died()
    });
    match v.culprit {
        Error::Connection {
            worker_id: 3,
            source,
        } => {
            assert!(
                matches!(&*source, IpcError::Io(e) if e.kind() == io::ErrorKind::ConnectionReset)
            );
        }
        other => panic!("{other:?}"),
    }
}

/// A worker that never said hello: why its start-up failed.
fn startup(facts: Facts) -> Error {
    blame(Facts {
        ready: false,
        head_id: None,
        ..facts
    })
    .startup
    .expect("a start-up error")
}

fn reason(e: &Error) -> String {
    match e {
        Error::Startup {
            worker_id: 3,
            reason,
        } => reason.to_string(),
        other => panic!("expected a start-up error, got {other:?}"),
    }
}

#[test]
fn startup_errors() {
    let e = startup(Facts {
        killed: Some(Kill::StartTimeout),
        status: None,
        ..died()
    });
    assert_eq!(reason(&e), "no handshake within 5s");
    // Killed for a start timeout, whatever else happened.
    let e = startup(Facts {
        killed: Some(Kill::StartTimeout),
        error: Some(io_error()),
        ..died()
    });
    assert_eq!(reason(&e), "no handshake within 5s");

    let e = startup(Facts {
        error: Some(IpcError::VersionMismatch {
            ours: 2,
            theirs: 99,
        }),
        ..died()
    });
    assert!(
        matches!(
            e,
            Error::VersionMismatch {
                worker_id: 3,
                ours: 2,
                theirs: 99
            }
        ),
        "{e:?}"
    );

    let e = startup(Facts {
        error: Some(IpcError::Malformed("bad hello")),
        ..died()
    });
    assert!(reason(&e).starts_with("invalid handshake: "), "{e:?}");
    assert!(reason(&e).contains("bad hello"), "{e:?}");
    // The decoder's error stays typed, reachable as the source's source.
    let inner = std::error::Error::source(&e)
        .and_then(std::error::Error::source)
        .and_then(|s| s.downcast_ref::<Arc<IpcError>>());
    assert!(
        matches!(inner.map(|e| &**e), Some(IpcError::Malformed("bad hello"))),
        "{e:?}"
    );

    let e = startup(died());
    assert_eq!(
        reason(&e),
        format!(
            "pid {PID} exited before its handshake: {}",
            ExitStatus::default()
        )
    );
    // A truncated hello is no connection error: the exit is what counts.
    let e = startup(Facts {
        error: Some(truncated()),
        ..died()
    });
    assert!(reason(&e).starts_with("pid 42 exited before its handshake: "));

    let e = startup(Facts {
        status: None,
        ..died()
    });
    assert_eq!(reason(&e), "pid 42 exited before its handshake");

    let e = startup(Facts {
        peer: Some(peer()),
        status: None,
        ..died()
    });
    assert_eq!(
        reason(&e),
        "the remote worker at 192.0.2.1:4000 left before its handshake"
    );

    // Ready workers have no start-up error.
    assert!(blame(died()).startup.is_none());
}

/// A remote worker of another protocol version is refused at its hello
/// like a local one, and should be reported as such.
#[test]
fn remote_version_mismatch_is_reported() {
    let e = startup(Facts {
        peer: Some(peer()),
        status: None,
        error: Some(IpcError::VersionMismatch {
            ours: 2,
            theirs: 99,
        }),
        ..died()
    });
    assert!(
        matches!(e, Error::VersionMismatch { theirs: 99, .. }),
        "{e:?}"
    );
}
