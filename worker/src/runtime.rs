//! The loop a worker runs.
//!
//! Two threads: a reader that takes frames off the connection as soon as
//! they arrive (so the master's writes never wait on a busy worker), and the
//! main thread, which runs tasks in order. Results are flushed before the
//! next task starts, so a task that kills the process never takes an
//! earlier task's result with it. When the
//! connection reaches EOF the master is gone: the reader ends the process
//! at once, even in the middle of a task. On `SHUTDOWN` the running task
//! finishes and its result is sent; tasks queued behind it are not started.

use std::io::{self, Read};
use std::net::ToSocketAddrs;
use std::process;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use procpool_ipc::endpoint::{self, ReadHalf, WriteHalf};
use procpool_ipc::frame::{DEFAULT_MAX_FRAME_LEN, FrameReader};
use procpool_ipc::link::{Link, Sink};
use procpool_ipc::proto::{Hello, Message};
use procpool_ipc::{IpcError, TaskError, codec};

use crate::Registry;
use crate::registry::{error_chain, install_panic_hook};

/// Exit status of a worker that could not serve (bad endpoint, protocol error).
const EXIT_FAILURE: i32 = 70;

#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error("cannot open the endpoint named by {}", endpoint::ENDPOINT_ENV)]
    Endpoint(#[source] io::Error),
    #[error("cannot join the master")]
    Remote(#[source] io::Error),
    #[error("connection to the master failed")]
    Ipc(#[from] IpcError),
    #[error("the master asked for task number {0}, which this worker does not have")]
    UnknownTask(u32),
    #[error("unexpected message from the master")]
    Unexpected,
}

/// Serves tasks if this process was started as a worker, then exits;
/// returns at once otherwise (in the master).
///
/// Call it first thing in `main`: **all code before it runs again in every
/// worker**, and a worker that never reaches it would run the master's
/// program instead (procpool's pool refuses to start from such a process).
/// Call it before the program starts other threads: it edits the
/// environment.
///
/// In one-program mode (`PROCPOOL_ONE_PROGRAM` set to a shared directory,
/// and a rank from Slurm or MPI), every rank but 0 becomes a remote worker
/// of rank 0, whose address it finds in that directory; rank 0 returns
/// and builds the pool (see `procpool::PoolBuilder::build`).
///
/// In a process a launcher started (`procpool::Srun`, which sets
/// `PROCPOOL_LAUNCH_ADDR` and `PROCPOOL_LAUNCH_KEY`), it serves as a
/// remote worker of that master, as [`run_remote_worker`] does.
///
/// A worker exits when the master sends shutdown or closes the connection
/// (the master died); it ignores the terminal's Ctrl-C, leaving that to the
/// master.
pub fn init(registry: Registry) {
    // One-program mode: every rank but 0 joins rank 0.
    if let Some(me) = procpool_ipc::one_program::detect().filter(|me| !me.is_master()) {
        let deadline = Instant::now() + join_timeout();
        match procpool_ipc::one_program::rendezvous(&me.file, deadline) {
            Ok((addr, key)) => run_remote_worker(addr.as_str(), &key, registry),
            Err(e) => fail(&ServeError::Remote(e)),
        }
    }
    // Started by a launcher (`procpool::Srun`): a remote worker.
    match procpool_ipc::remote::take_launch_env() {
        Some(Ok((addr, key))) => run_remote_worker(addr.as_str(), &key, registry),
        Some(Err(e)) => fail(&ServeError::Remote(e)),
        None => {}
    }
    if let Some(connection) = endpoint::connect_worker() {
        serve_and_exit(registry, connection.map_err(ServeError::Endpoint));
    }
    // The master: a pool without local workers takes its task list from here.
    procpool_ipc::task::register_catalog(procpool_ipc::task::Catalog {
        names: registry.names().iter().map(|s| (*s).to_owned()).collect(),
        signatures: registry.signatures().to_vec(),
    });
}

/// Serves tasks and exits: the `main` of a dedicated worker program.
///
/// Exits with status 2 and a message on stderr when the program was not
/// started by a procpool master.
pub fn run_worker(registry: Registry) -> ! {
    match endpoint::connect_worker() {
        Some(connection) => serve_and_exit(registry, connection.map_err(ServeError::Endpoint)),
        None => {
            // The process ends here: stderr is the only place left to explain why.
            #[allow(clippy::print_stderr)]
            {
                eprintln!(
                    "this is a procpool worker program; a procpool Pool starts it (no {} in the environment)",
                    endpoint::ENDPOINT_ENV
                );
            }
            process::exit(2)
        }
    }
}

fn serve_and_exit(registry: Registry, connection: Result<(ReadHalf, WriteHalf), ServeError>) -> ! {
    endpoint::ignore_interrupts();
    // The master asks for heartbeats on local connections too (optional).
    let heartbeat = heartbeat_timeout();
    let connection = connection.and_then(|(r, w)| {
        endpoint::set_timeouts(&r, heartbeat).map_err(ServeError::Endpoint)?;
        Ok((r, w))
    });
    match connection.and_then(|(r, w)| serve(&registry, r, w, heartbeat)) {
        Ok(()) => process::exit(0),
        Err(e) => fail(&e),
    }
}

fn fail(e: &ServeError) -> ! {
    // A worker that cannot serve ends here; stderr is all it has.
    #[allow(clippy::print_stderr)]
    {
        eprintln!("procpool worker {}: {}", process::id(), error_chain(e));
    }
    process::exit(EXIT_FAILURE)
}

fn max_frame_len() -> u32 {
    std::env::var(endpoint::MAX_FRAME_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MAX_FRAME_LEN)
}

/// Serves tasks and exits as a *remote* worker: connects to the master
/// listening at `addr` (see `PoolBuilder::listen`), proves it knows `key`,
/// and serves until the master closes the connection.
///
/// Unlike a local worker it keeps the terminal's Ctrl-C: it belongs to
/// whatever launched it (ssh, a batch system), not to the master.
///
/// A worker may start before its master listens: it tries again, with a
/// growing pause, for up to 60 s (or [`JOIN_TIMEOUT_ENV`] milliseconds),
/// and gives up at once on a refused or too short key (under 16 bytes).
///
/// Exits with status 70 and a message on stderr when it cannot connect or
/// authenticate.
pub fn run_remote_worker(addr: impl ToSocketAddrs, key: &[u8], registry: Registry) -> ! {
    let connection =
        procpool_ipc::remote::connect_to_master_by(addr, key, Instant::now() + join_timeout())
            .and_then(|(stream, master_timeout)| {
                let timeout = heartbeat_timeout().unwrap_or(master_timeout);
                procpool_ipc::remote::set_liveness(&stream, timeout)?;
                Ok((stream.try_clone()?, stream, timeout))
            })
            .map_err(ServeError::Remote);
    match connection.and_then(|(r, w, timeout)| serve(&registry, r, w, Some(timeout))) {
        Ok(()) => process::exit(0),
        Err(e) => fail(&e),
    }
}

/// How long a remote worker tries to join: [`JOIN_TIMEOUT_ENV`], or 60 s.
fn join_timeout() -> Duration {
    std::env::var(JOIN_TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(
            procpool_ipc::remote::DEFAULT_JOIN_TIMEOUT,
            Duration::from_millis,
        )
}

/// A remote worker's own heartbeat timeout, if [`HEARTBEAT_TIMEOUT_ENV`]
/// sets one.
fn heartbeat_timeout() -> Option<Duration> {
    std::env::var(HEARTBEAT_TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis)
}

pub use procpool_ipc::endpoint::HEARTBEAT_TIMEOUT_ENV;

/// How long, in milliseconds, [`run_remote_worker`] keeps trying to join
/// its master (default 60 000).
pub const JOIN_TIMEOUT_ENV: &str = "PROCPOOL_JOIN_TIMEOUT_MS";

/// How long a worker that is done waits for its last frames to reach the
/// kernel before it exits anyway.
const EXIT_DRAIN: Duration = Duration::from_secs(10);

fn serve<R, W>(
    registry: &Registry,
    r: R,
    w: W,
    heartbeat: Option<Duration>,
) -> Result<(), ServeError>
where
    R: Read + Send + 'static,
    W: Sink,
{
    install_panic_hook();
    let max = max_frame_len();
    let link = Link::new(w, max).map_err(IpcError::from)?;
    link.set_heartbeat(heartbeat.map(procpool_ipc::remote::heartbeat_interval));
    let hello = Hello {
        pid: process::id(),
        tasks: registry.names().iter().map(|s| (*s).to_owned()).collect(),
        signatures: registry.signatures().to_vec(),
    };
    link.send(&Message::Hello(hello))?;
    // Queue handles that arrive in task inputs speak to the master over this link.
    procpool_ipc::install_hub_client(Arc::clone(&link));

    // Unbounded, yet bounded by the protocol: the master sends a worker at
    // most its lane's depth of chunks (the prefetch, 64 at most) before it
    // has their results, plus one `SHUTDOWN`.
    let (tx, rx) = crossbeam_channel::unbounded::<Vec<u8>>();
    let (recycle_tx, recycle_rx) = crossbeam_channel::unbounded::<Vec<u8>>();
    // Set by the reader when the master says shutdown: tasks queued behind
    // the running one are then dropped, not run.
    let stop = Arc::new(AtomicBool::new(false));
    let stop_seen = Arc::clone(&stop);
    thread::Builder::new()
        .name("procpool-worker-reader".into())
        .spawn(move || {
            let mut reader = FrameReader::new(r, max);
            loop {
                let mut buf = recycle_rx.try_recv().unwrap_or_default();
                match reader.read_frame(&mut buf) {
                    Ok(true) => {
                        match Message::decode(&buf) {
                            Ok(Message::Shutdown) => stop_seen.store(true, Ordering::SeqCst),
                            Ok(Message::Heartbeat) => continue,
                            // Answers for queue proxies go straight to their waiters.
                            Ok(msg) if procpool_ipc::dispatch_to_proxies(&msg) => continue,
                            _ => {}
                        }
                        if tx.send(buf).is_err() {
                            return;
                        }
                    }
                    // The master closed the connection or died: nobody will read our results.
                    Ok(false) => process::exit(0),
                    Err(e) => fail(&e.into()),
                }
            }
        })
        .map_err(|e| ServeError::Ipc(e.into()))?;

    let mut out = Vec::new();
    while let Some(frame) = next_request(&rx, &link)? {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        match Message::decode(&frame)? {
            Message::Run {
                id,
                task,
                count,
                payload,
            } => {
                let runner = registry.runner(task).ok_or(ServeError::UnknownTask(task))?;
                // Results already computed reach the kernel before the next
                // task runs: if that task brings the process down, they are
                // not lost with it, and the master knows exactly which task did.
                link.drain(None)?;
                out.clear();
                let started = Instant::now();
                runner(payload, count, &mut out);
                let elapsed_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                let done = Message::Done {
                    id,
                    count,
                    elapsed_ns,
                    payload: &out,
                };
                match link.write(&done) {
                    Err(IpcError::FrameTooLarge { len, max }) => {
                        // Report every item as failed rather than lose the chunk.
                        let message = format!(
                            "the results take {len} bytes, more than the maximum frame length of {max}"
                        );
                        out.clear();
                        for _ in 0..count {
                            let failed: Result<(), TaskError> = Err(TaskError::EncodeOutput {
                                message: message.clone(),
                            });
                            codec::encode_into(&failed, &mut out)?;
                        }
                        link.write(&Message::Done {
                            id,
                            count,
                            elapsed_ns,
                            payload: &out,
                        })?;
                    }
                    other => other?,
                }
            }
            Message::Shutdown => break,
            _ => return Err(ServeError::Unexpected),
        }
        let _ = recycle_tx.send(frame);
    }
    link.drain(Some(Instant::now() + EXIT_DRAIN))?;
    Ok(())
}

/// The next request, flushing buffered results before blocking.
fn next_request(rx: &Receiver<Vec<u8>>, link: &Link) -> Result<Option<Vec<u8>>, ServeError> {
    match rx.try_recv() {
        Ok(frame) => Ok(Some(frame)),
        Err(TryRecvError::Disconnected) => Ok(None),
        Err(TryRecvError::Empty) => {
            link.flush()?;
            Ok(rx.recv().ok())
        }
    }
}
