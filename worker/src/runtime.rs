//! The loop a worker runs.
//!
//! Two threads: a reader that takes frames off the connection as soon as
//! they arrive (so the master's writes never wait on a busy worker), and the
//! main thread, which runs tasks in order. A chunk's results are reported
//! while it runs, whenever an item ends [`REPORT_EVERY`] after the last
//! report (`PART` frames), and at its end (`DONE`); they are flushed before
//! the next chunk starts. So a task that kills the process never takes the
//! results of an earlier chunk with it, nor those of its own chunk's items
//! that finished before the last report: the master then knows which item
//! died, or which few it may have been (see the pool's `blame.rs`). When the
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
use procpool_ipc::IpcError;
use procpool_ipc::endpoint::{self, ReadHalf, WriteHalf};
use procpool_ipc::frame::{DEFAULT_MAX_PAYLOAD_LEN, ENCODING_SLACK, FrameReader, frame_limit};
use procpool_ipc::link::{Incoming, Lease, Link, Sink};
use procpool_ipc::proto::{Hello, Message};
use procpool_ipc::shm::transport::ShmTransport;

use crate::Registry;
use crate::output::Output;
use crate::registry::{Inputs, error_chain, install_panic_hook};

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
    let connection = connection.and_then(|(mut r, w)| {
        endpoint::set_timeouts(&r, heartbeat).map_err(ServeError::Endpoint)?;
        let shm = ShmTransport::from_connection(&mut r);
        Ok((r, w, shm))
    });
    match connection.and_then(|(r, w, shm)| serve(&registry, r, w, heartbeat, shm)) {
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

fn max_payload_len() -> u64 {
    std::env::var(endpoint::MAX_PAYLOAD_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MAX_PAYLOAD_LEN)
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
            .and_then(|(stream, session, master_timeout)| {
                let timeout = heartbeat_timeout().unwrap_or(master_timeout);
                procpool_ipc::remote::set_liveness(&stream, timeout)?;
                let (reader, writer) = session.split(stream.try_clone()?, stream);
                Ok((reader, writer, timeout))
            })
            .map_err(ServeError::Remote);
    // Remote workers never get shared memory: everything stays on the socket.
    match connection.and_then(|(r, w, timeout)| serve(&registry, r, w, Some(timeout), None)) {
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
    shm: Option<Arc<ShmTransport>>,
) -> Result<(), ServeError>
where
    R: Read + Send + 'static,
    W: Sink,
{
    install_panic_hook();
    let max_payload = max_payload_len();
    let max = frame_limit(max_payload);
    let link = Link::new(w, max).map_err(IpcError::from)?;
    if let Some(shm) = shm {
        link.attach_shm(shm);
    }
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
    let (tx, rx) = crossbeam_channel::unbounded::<Request>();
    let (recycle_tx, recycle_rx) = crossbeam_channel::unbounded::<Vec<u8>>();
    // Set by the reader when the master says shutdown: tasks queued behind
    // the running one are then dropped, not run.
    let stop = Arc::new(AtomicBool::new(false));
    let stop_seen = Arc::clone(&stop);
    let reader_link = Arc::clone(&link);
    thread::Builder::new()
        .name("procpool-worker-reader".into())
        .spawn(move || {
            let mut reader = FrameReader::new(r, max);
            loop {
                let mut buf = recycle_rx.try_recv().unwrap_or_default();
                // A chunk's inputs that came through shared memory stay
                // there and are decoded from it (one copy, into the
                // inputs); any other body is copied out whole.
                let read = match reader_link.read_leased(&mut reader, &mut buf, RUN_HEAD) {
                    Ok(Incoming::Buffered) => Ok(Some(None)),
                    Ok(Incoming::Leased(lease)) => {
                        if matches!(Message::decode(&buf), Ok(Message::Run { .. })) {
                            Ok(Some(Some(lease)))
                        } else {
                            lease.read_into(&mut buf).map(|()| Some(None))
                        }
                    }
                    Ok(Incoming::End) => Ok(None),
                    Err(e) => Err(e),
                };
                match read {
                    Ok(Some(lease)) => {
                        match Message::decode(&buf) {
                            Ok(Message::Shutdown) => stop_seen.store(true, Ordering::SeqCst),
                            Ok(Message::Heartbeat) => continue,
                            // Answers for queue proxies go straight to their waiters.
                            Ok(msg) if procpool_ipc::dispatch_to_proxies(&msg) => continue,
                            _ => {}
                        }
                        if tx.send((buf, lease)).is_err() {
                            return;
                        }
                    }
                    // The master closed the connection or died: nobody will read our results.
                    Ok(None) => process::exit(0),
                    Err(e) => fail(&e.into()),
                }
            }
        })
        .map_err(|e| ServeError::Ipc(e.into()))?;

    let mut out = Output::for_link(&link);
    while let Some((frame, lease)) = next_request(&rx, &link)? {
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
                let mut reporter = Reporter {
                    link: &link,
                    id,
                    count,
                    limit: max_payload.saturating_add(ENCODING_SLACK),
                    finished: 0,
                    unreported: 0,
                    last: started,
                    error: None,
                };
                let inputs = match &lease {
                    Some(lease) => Inputs::leased(lease, frame.len() - payload.len()),
                    None => Inputs::bytes(payload),
                };
                runner(
                    inputs,
                    count,
                    max_payload,
                    &mut out,
                    &mut |out, items, latest| reporter.items_done(out, items, latest),
                );
                if let Some(e) = reporter.error {
                    return Err(e.into());
                }
                let elapsed_ns = nanos(started.elapsed());
                out.send(&link, true, id, reporter.unreported, elapsed_ns)?;
            }
            Message::Shutdown => break,
            _ => return Err(ServeError::Unexpected),
        }
        let _ = recycle_tx.send(frame);
    }
    link.drain(Some(Instant::now() + EXIT_DRAIN))?;
    Ok(())
}

/// How often a worker reports the results of a chunk still running: an
/// item that ends this long after the last report (or the chunk's start)
/// is reported at once, with those before it. Tiny items cost a clock read
/// each, and a frame per this much work.
const REPORT_EVERY: Duration = Duration::from_millis(1);

/// Reports a running chunk's results as `PART` frames: see [`REPORT_EVERY`].
/// Each result is within the payload limit (the runner replaces a larger one
/// with [`TaskError::OutputTooLarge`]); results that would together pass it
/// are reported in more frames, so no frame is over its limit.
struct Reporter<'a> {
    link: &'a Link,
    id: u64,
    count: u32,
    /// The most bytes of results one frame carries.
    limit: u64,
    /// Items finished so far.
    finished: u32,
    /// Items finished whose results are in `out`, not yet reported.
    unreported: u32,
    last: Instant,
    error: Option<IpcError>,
}

/// Items faster than this are timed in batches of [`TINY_STRIDE`]: a clock
/// read per item would cost them more than the report is worth. An item
/// that turns out slow among them is reported at the end of its batch.
const TINY_ITEM: Duration = Duration::from_micros(10);
const TINY_STRIDE: u32 = 64;

impl Reporter<'_> {
    /// `items` more results are in `out`, the latest from byte `latest`;
    /// returns how many more items the runner may finish before it calls
    /// again (it calls sooner when `out` passes the limit). Counting
    /// between calls is the runner's: for tiny items this is called once
    /// per [`TINY_STRIDE`] of them, not once each.
    fn items_done(&mut self, out: &mut Output, items: u32, latest: usize) -> u32 {
        self.finished += items;
        self.unreported += items;
        if out.len() as u64 > self.limit && self.unreported > 1 && self.error.is_none() {
            self.report_before(out, latest);
        }
        // The last item goes with the `DONE`.
        if self.finished >= self.count || self.error.is_some() {
            return u32::MAX;
        }
        self.check_clock(out)
    }

    /// The results before byte `latest` (all but the latest) go first, in
    /// a frame of their own.
    #[cold]
    fn report_before(&mut self, out: &mut Output, latest: usize) {
        let sent = out.send_before(
            self.link,
            latest,
            self.id,
            self.unreported - 1,
            nanos(self.last.elapsed()),
        );
        match sent {
            Ok(()) => {
                self.unreported = 1;
            }
            Err(e) => self.error = Some(e),
        }
    }

    /// Reads the clock: reports what is in `out` if [`REPORT_EVERY`] has
    /// passed since the last report. Returns the items until the next
    /// look: 1 while items take a while, [`TINY_STRIDE`] for tiny ones.
    fn check_clock(&mut self, out: &mut Output) -> u32 {
        let now = Instant::now();
        let since = now - self.last;
        // The pace of the items since the last report sets the stride.
        let stride = if since < TINY_ITEM * self.unreported {
            TINY_STRIDE
        } else {
            1
        };
        if since < REPORT_EVERY {
            return stride;
        }
        let sent = out
            .send(self.link, false, self.id, self.unreported, nanos(since))
            .and_then(|()| self.link.flush());
        match sent {
            Ok(()) => {
                self.unreported = 0;
                self.last = now;
            }
            Err(e) => self.error = Some(e),
        }
        stride
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The next request, flushing buffered results before blocking.
/// A frame for the worker's main loop: its body, or (a `RUN` whose body
/// stayed in shared memory) the body's first bytes and its lease.
type Request = (Vec<u8>, Option<Lease>);

/// Bytes of a body in shared memory copied out to decode the message's
/// fixed fields (`RUN`: kind, id, task, count).
const RUN_HEAD: usize = 64;

fn next_request(rx: &Receiver<Request>, link: &Link) -> Result<Option<Request>, ServeError> {
    match rx.try_recv() {
        Ok(frame) => Ok(Some(frame)),
        Err(TryRecvError::Disconnected) => Ok(None),
        Err(TryRecvError::Empty) => {
            link.flush()?;
            Ok(rx.recv().ok())
        }
    }
}
