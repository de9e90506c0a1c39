//! One worker process as the master sees it: its child handle, and the
//! reader thread that listens to its connection.
//!
//! The reader thread does the per-chunk work itself (see
//! [`dispatch`](crate::dispatch)): on a result it takes the chunk off the
//! worker's lane, refills the lane, and hands the result to its caller. It
//! also serves the worker's queue operations. It ends when the connection
//! does, after giving back to the hub what the worker had been handed but
//! not taken, and reports [`Msg::Gone`] last.

use std::io::Read;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use procpool_ipc::endpoint::{self, ExitWatch};
use procpool_ipc::frame::{FrameReader, frame_limit};
use procpool_ipc::hub;
use procpool_ipc::link::{Dirty, Incoming, Link, Sink};
use procpool_ipc::proto::Message;
use procpool_ipc::secure::Session;
use procpool_ipc::shm::transport::ShmTransport;
use procpool_ipc::{IpcError, TaskError};

use crate::Error;
use crate::config::Config;
use crate::dispatch::Ended;
use crate::msg::Msg;
use crate::shared::Shared;
use crate::work::{Outcome, Results};
use procpool_ipc::sync::lock;

/// The pauses before the second and third attempts to start a worker
/// process, after a failure that may pass (see [`retry_spawn`]).
const SPAWN_RETRY_PAUSES: [Duration; 2] = [Duration::from_millis(20), Duration::from_millis(200)];

/// Runs `attempt` (the start of one worker process) until it succeeds,
/// fails for good, or has failed three times. Starting a process fails
/// now and then for reasons that pass: `EAGAIN` from `fork` when the
/// process table is momentarily full, `ENOMEM`, or `CreateProcess` under
/// Wine saying "Internal error" (os error 1359) on a loaded machine. Left
/// alone, one such failure emptied a worker's slot for good (and failed a
/// pool's start). A program that is missing or not executable fails at
/// once: no retry changes that.
pub(crate) fn retry_spawn<T>(mut attempt: impl FnMut() -> Result<T, Error>) -> Result<T, Error> {
    let mut pauses = SPAWN_RETRY_PAUSES.iter();
    loop {
        match attempt() {
            Err(Error::Spawn { source, program })
                if !matches!(
                    source.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                ) =>
            {
                let Some(&pause) = pauses.next() else {
                    return Err(Error::Spawn { source, program });
                };
                tracing::warn!(error = %source, ?pause, "starting a worker failed: trying again");
                thread::sleep(pause);
            }
            done => return done,
        }
    }
}

/// Why the supervisor killed a worker.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kill {
    /// Chunk `chunk` ran past its timeout.
    Timeout {
        timeout: Duration,
        chunk: u64,
    },
    Terminated,
    StartTimeout,
    Broken,
}

/// How the master reaches a worker's process.
#[derive(Debug)]
pub(crate) enum Proc {
    /// A child of this process. Its waiter thread reaps it (see
    /// [`Seat::spawn`]); others only kill it, under the same lock, so a
    /// kill never reaches a reused pid.
    Local(Arc<Mutex<Child>>),
    /// A remote worker that joined over TCP: it can only be disconnected.
    Remote { stream: TcpStream, peer: SocketAddr },
}

/// A worker process and what the supervisor knows about it.
#[derive(Debug)]
pub(crate) struct Worker {
    pub(crate) key: u64,
    /// The process id (a remote worker's, on its own machine, once known).
    pub(crate) pid: u32,
    pub(crate) proc: Proc,
    pub(crate) spawned: Instant,
    pub(crate) ready: bool,
    pub(crate) killed: Option<Kill>,
    /// How the process ended, once its waiter has reaped it (`Some(None)`:
    /// it exited, but the system reaped it and kept the status).
    pub(crate) exit: Option<Option<ExitStatus>>,
    /// Why the connection ended, once the reader has stopped, and when.
    pub(crate) gone: Option<(Option<IpcError>, Instant)>,
    /// How its initializer failed, if it did.
    pub(crate) init_error: Option<TaskError>,
    /// Its lane is open and it counts as a ready worker.
    pub(crate) taking_work: bool,
}

/// Where a new worker goes: its slot and key, and what its reader thread
/// needs.
#[derive(Clone, Copy)]
pub(crate) struct Seat<'a> {
    pub(crate) config: &'a Config,
    pub(crate) slot: usize,
    pub(crate) key: u64,
    pub(crate) shared: &'a Arc<Shared>,
    pub(crate) tx: &'a Sender<Msg>,
}

impl Seat<'_> {
    /// Starts the worker program for this seat and its reader thread;
    /// returns it with the writing side of its connection.
    pub(crate) fn spawn(self) -> Result<(Worker, Arc<Link>), Error> {
        let Seat {
            config, slot, key, ..
        } = self;
        let mut cmd = Command::new(&config.program);
        cmd.args(&config.args)
            .envs(config.envs.iter().map(|(k, v)| (k, v)))
            .env(endpoint::WORKER_ID_ENV, slot.to_string())
            .env(
                endpoint::MAX_PAYLOAD_ENV,
                config.max_payload_len.to_string(),
            )
            .stdin(Stdio::null());
        let spawn_error = |e: std::io::Error| Error::Spawn {
            program: config.program.clone(),
            source: Arc::new(e),
        };
        let heartbeat = config.local_heartbeat.then_some(config.heartbeat_timeout);
        if let Some(timeout) = heartbeat {
            cmd.env(
                endpoint::HEARTBEAT_TIMEOUT_ENV,
                timeout.as_millis().to_string(),
            );
        }
        let (mut child, mut reader, writer) = endpoint::spawn(cmd).map_err(spawn_error)?;
        let shm = ShmTransport::from_connection(&mut reader);
        let started = ExitWatch::new(&child).and_then(|watch| {
            endpoint::set_timeouts(&reader, heartbeat)?;
            let link = self.start_reader(reader, writer, shm)?;
            link.set_heartbeat(heartbeat.map(procpool_ipc::remote::heartbeat_interval));
            Ok((watch, link))
        });
        let (watch, link) = match started {
            Ok(started) => started,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(spawn_error(e));
            }
        };
        let pid = child.id();
        let child = Arc::new(Mutex::new(child));
        self.start_waiter(watch, Arc::clone(&child));
        tracing::debug!(worker_id = slot, pid, "worker started");
        Ok((Worker::new(key, pid, Proc::Local(child)), link))
    }

    /// Starts the thread that waits for the child's exit, reaps it and
    /// reports [`Msg::Exited`]: no polling, and no lock held while it waits.
    fn start_waiter(self, watch: ExitWatch, child: Arc<Mutex<Child>>) {
        let (slot, key, tx) = (self.slot, self.key, self.tx.clone());
        let waiter = move || {
            if let Err(e) = watch.wait() {
                // The supervisor reaps it at its deadline instead.
                tracing::warn!(worker_id = slot, error = %e, "cannot wait for the worker's exit");
                return;
            }
            let status = lock(&child).try_wait().ok().flatten();
            let _ = tx.send(Msg::Exited { slot, key, status });
        };
        if let Err(e) = thread::Builder::new()
            .name(format!("procpool-waiter-{slot}"))
            .spawn(waiter)
        {
            tracing::warn!(worker_id = slot, error = %e, "cannot start the worker's waiter thread");
        }
    }

    /// A remote worker that has joined over `stream` (already
    /// authenticated); `session` encrypts the link.
    pub(crate) fn join(
        self,
        stream: TcpStream,
        session: Session,
        peer: SocketAddr,
    ) -> std::io::Result<(Worker, Arc<Link>)> {
        let timeout = self.config.heartbeat_timeout;
        procpool_ipc::remote::set_liveness(&stream, timeout)?;
        let (reader, writer) = session.split(stream.try_clone()?, stream.try_clone()?);
        // Remote workers never get shared memory: everything stays on the socket.
        let link = self.start_reader(reader, writer, None)?;
        link.set_heartbeat(Some(procpool_ipc::remote::heartbeat_interval(timeout)));
        tracing::debug!(worker_id = self.slot, %peer, "remote worker joined");
        Ok((
            Worker::new(self.key, 0, Proc::Remote { stream, peer }),
            link,
        ))
    }

    /// Starts the reader thread of the worker's connection; returns the link
    /// to write to it (with `shm` attached, for a local worker).
    fn start_reader<R, W>(
        self,
        reader: R,
        writer: W,
        shm: Option<Arc<ShmTransport>>,
    ) -> std::io::Result<Arc<Link>>
    where
        R: Read + Send + 'static,
        W: Sink,
    {
        let max = frame_limit(self.config.max_payload_len);
        let link = Link::new(writer, max)?;
        if let Some(shm) = shm {
            link.attach_shm(shm);
        }
        let ctx = ReaderContext {
            slot: self.slot,
            key: self.key,
            link: Arc::clone(&link),
            shared: Arc::clone(self.shared),
            tx: self.tx.clone(),
        };
        thread::Builder::new()
            .name(format!("procpool-reader-{}", self.slot))
            .spawn(move || ctx.run(reader, max))?;
        Ok(link)
    }
}

impl Worker {
    fn new(key: u64, pid: u32, proc: Proc) -> Self {
        Worker {
            key,
            pid,
            proc,
            spawned: Instant::now(),
            ready: false,
            killed: None,
            exit: None,
            gone: None,
            init_error: None,
            taking_work: false,
        }
    }

    /// Ends the worker now: kills a child, disconnects a remote worker
    /// (which exits when its connection ends).
    pub(crate) fn kill(&mut self) {
        match &self.proc {
            // Killing a child already reaped is a no-op: std remembers its status.
            Proc::Local(child) => {
                let _ = lock(child).kill();
            }
            Proc::Remote { stream, .. } => {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }

    /// Asks a local worker to end (see [`endpoint::terminate`]); no-op for
    /// a remote one, or a child already reaped.
    pub(crate) fn signal_terminate(&mut self) {
        if let Proc::Local(child) = &self.proc {
            let mut child = lock(child);
            // Unreaped under the lock, so the pid is still this child's.
            if matches!(child.try_wait(), Ok(None)) {
                if let Err(e) = endpoint::terminate(&child) {
                    tracing::warn!(pid = self.pid, error = %e, "cannot terminate the worker");
                }
            }
        }
    }

    /// Kills the worker and, for a child, waits until it is reaped (by
    /// this call or its waiter thread); returns a child's exit status.
    pub(crate) fn kill_and_reap(&mut self) -> Option<ExitStatus> {
        self.kill();
        match &self.proc {
            // Killed, so this returns promptly; the waiter only takes the
            // lock once the child has exited.
            Proc::Local(child) => lock(child).wait().ok(),
            Proc::Remote { .. } => None,
        }
    }

    /// Whether the worker is over: its connection ended and, for a child,
    /// its exit is known.
    pub(crate) fn is_over(&self) -> bool {
        self.gone.is_some() && (self.exit.is_some() || self.peer().is_some())
    }

    /// The remote worker's address, if it is one.
    pub(crate) fn peer(&self) -> Option<SocketAddr> {
        match &self.proc {
            Proc::Local(_) => None,
            Proc::Remote { peer, .. } => Some(*peer),
        }
    }
}

/// Bytes of a results body copied out of shared memory to decode the
/// message's fixed fields (`DONE`/`PART`: kind, id, count, elapsed).
const RESULTS_HEAD: usize = 64;

/// Whether `head` starts a `DONE` or `PART` message.
fn is_results(head: &[u8]) -> bool {
    matches!(
        Message::decode(head),
        Ok(Message::Done { .. } | Message::Part { .. })
    )
}

/// What a worker's reader thread needs.
struct ReaderContext {
    slot: usize,
    key: u64,
    link: Arc<Link>,
    shared: Arc<Shared>,
    tx: Sender<Msg>,
}

impl ReaderContext {
    fn run(self, reader: impl Read, max: u64) {
        let mut pid = None;
        let error = self.serve(reader, max, &mut pid);
        // What the hub had handed this worker and it had not taken goes
        // back; what it took and did not confirm is reported to joins.
        hub::disconnect(self.link.id(), pid);
        let _ = self.tx.send(Msg::Gone {
            slot: self.slot,
            key: self.key,
            error,
        });
    }

    /// Reads until the connection ends; returns why, if not a clean EOF.
    /// `pid` is set to the process id the worker announces.
    fn serve(&self, reader: impl Read, max: u64, pid: &mut Option<u32>) -> Option<IpcError> {
        let (slot, key) = (self.slot, self.key);
        let mut reader = FrameReader::new(reader, max);
        let mut frame = Vec::new();
        let mut hello_seen = false;
        // Frames for workers (next chunks, queue replies) are flushed once
        // the frames already read are handled: one write per burst.
        let mut dirty = Dirty::default();
        loop {
            if !reader.has_buffered() {
                dirty.flush();
            }
            // Results that came through shared memory stay there and are
            // decoded from it (one copy, into the values); any other body
            // is copied out whole.
            let mut lease = match self.link.read_leased(&mut reader, &mut frame, RESULTS_HEAD) {
                Ok(Incoming::Buffered) => None,
                Ok(Incoming::Leased(lease)) => Some(lease),
                Ok(Incoming::End) => return None,
                Err(e) => return Some(e),
            };
            if lease.is_some() && !is_results(&frame) {
                if let Some(e) = lease.take().and_then(|l| l.read_into(&mut frame).err()) {
                    return Some(e);
                }
            }
            match Message::decode(&frame) {
                Ok(Message::Heartbeat) => {}
                Ok(msg @ Message::Hub { .. }) if hello_seen => {
                    hub::serve(&self.link, &msg, &mut dirty)
                }
                Ok(Message::Hello(hello)) if !hello_seen => {
                    hello_seen = true;
                    *pid = Some(hello.pid);
                    if self.tx.send(Msg::Hello { slot, key, hello }).is_err() {
                        return None;
                    }
                }
                Ok(Message::Done {
                    id,
                    count,
                    elapsed_ns,
                    payload,
                }) if hello_seen => {
                    let payload_at = frame.len() - payload.len();
                    let results = Results {
                        frame: std::mem::take(&mut frame),
                        lease: lease.take(),
                        payload_at,
                        elapsed_ns,
                    };
                    if !self.complete(id, count, results, &mut dirty) {
                        return Some(IpcError::Malformed(
                            "result for a task the worker was not running",
                        ));
                    }
                }
                Ok(Message::Part {
                    id,
                    count,
                    elapsed_ns,
                    payload,
                }) if hello_seen => {
                    let payload_at = frame.len() - payload.len();
                    let taken = self
                        .shared
                        .dispatch()
                        .part(slot, key, id, count, elapsed_ns);
                    let Some((job, first)) = taken else {
                        return Some(IpcError::Malformed(
                            "partial result for a task the worker was not running",
                        ));
                    };
                    let results = Results {
                        frame: std::mem::take(&mut frame),
                        lease: lease.take(),
                        payload_at,
                        elapsed_ns,
                    };
                    self.shared.deliver(
                        &job,
                        Outcome {
                            first,
                            count,
                            last: false,
                            result: Ok(results),
                        },
                    );
                }
                Ok(_) => return Some(IpcError::Malformed("unexpected message from worker")),
                Err(e) => return Some(e),
            }
        }
    }

    /// Takes the answered chunk `id` off this worker's lane, refills the
    /// lanes, and delivers the results; false if the worker was not running
    /// that chunk.
    fn complete(&self, id: u64, count: u32, results: Results, dirty: &mut Dirty) -> bool {
        let mut ended = Ended::new();
        let (done, late) = {
            let mut dispatch = self.shared.dispatch();
            let Some(done) = dispatch.complete(self.slot, self.key, id, count, results.elapsed_ns)
            else {
                return false;
            };
            dispatch.pump(dirty, &mut ended);
            done
        };
        self.shared.finish_ended(ended);
        let wake = match done.chunk {
            Some(chunk) => {
                self.shared.finish(chunk, late.map_or(Ok(results), Err));
                None
            }
            None => {
                // The initializer: a failure makes the worker unusable.
                let result = match results.decode::<Result<(), TaskError>>(0) {
                    Ok((result, _)) => result,
                    Err(e) => Err(TaskError::DecodeInput {
                        message: format!("the initializer's result does not decode: {e}"),
                    }),
                };
                if let Err(e) = &result {
                    tracing::warn!(worker_id = self.slot, error = %e, "initializer failed");
                }
                Some(Msg::Initialized {
                    slot: self.slot,
                    key: self.key,
                    result,
                })
            }
        };
        let wake = wake.or_else(|| {
            self.shared
                .watch
                .load(Ordering::Relaxed)
                .then_some(Msg::Wake)
        });
        if let Some(msg) = wake {
            let _ = self.tx.send(msg);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::path::PathBuf;

    use super::*;

    fn spawn_error(kind: io::ErrorKind) -> Error {
        Error::Spawn {
            program: PathBuf::from("worker"),
            source: Arc::new(io::Error::from(kind)),
        }
    }

    /// A start that fails for a passing reason is tried again (three
    /// attempts in all); a missing or forbidden program is not.
    #[test]
    fn passing_spawn_failures_are_retried_twice() {
        let mut attempts = 0;
        let r = retry_spawn(|| {
            attempts += 1;
            match attempts {
                1 => Err(spawn_error(io::ErrorKind::WouldBlock)),
                2 => Err(spawn_error(io::ErrorKind::Other)),
                _ => Ok(attempts),
            }
        });
        assert_eq!(r.ok(), Some(3));

        let mut attempts = 0;
        let r: Result<(), _> = retry_spawn(|| {
            attempts += 1;
            Err(spawn_error(io::ErrorKind::OutOfMemory))
        });
        assert!(matches!(r, Err(Error::Spawn { .. })));
        assert_eq!(attempts, 3, "three attempts, then the last error");

        for kind in [io::ErrorKind::NotFound, io::ErrorKind::PermissionDenied] {
            let mut attempts = 0;
            let r: Result<(), _> = retry_spawn(|| {
                attempts += 1;
                Err(spawn_error(kind))
            });
            assert!(r.is_err());
            assert_eq!(attempts, 1, "{kind:?} fails at once");
        }
    }
}
