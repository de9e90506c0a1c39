//! One worker process as the master sees it: its child handle, its
//! connection, the chunks it holds, and the reader thread that listens to it.
//!
//! The reader thread does the per-chunk work itself: it takes a finished
//! chunk off the worker's in-flight queue and hands the results straight to
//! the caller, then tells the supervisor there is room for more. A result
//! thus reaches its caller without a detour through the supervisor thread.
//! The reader also serves the worker's queue operations. It ends when the
//! connection does, after giving back to the hub what the worker had been
//! handed but not taken, and reports [`Msg::Gone`] last.

use std::collections::VecDeque;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use procpool_ipc::endpoint::{self, ReadHalf};
use procpool_ipc::frame::FrameReader;
use procpool_ipc::hub;
use procpool_ipc::link::{Dirty, Link};
use procpool_ipc::proto::Message;
use procpool_ipc::{IpcError, TaskError, codec};

use crate::Error;
use crate::builder::Config;
use crate::supervisor::{Chunk, Msg, Outcome, Results, Shared};

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

/// A chunk sent to a worker and not yet answered.
#[derive(Debug)]
pub(crate) struct Inflight {
    pub(crate) id: u64,
    /// `None` for the initializer.
    pub(crate) chunk: Option<Chunk>,
    /// When the worker started it (it runs them in order).
    pub(crate) started: Option<Instant>,
}

/// A worker process and what the master knows about it.
#[derive(Debug)]
pub(crate) struct Worker {
    pub(crate) key: u64,
    pub(crate) pid: u32,
    pub(crate) child: Child,
    pub(crate) link: Arc<Link>,
    pub(crate) spawned: Instant,
    pub(crate) ready: bool,
    /// Gets no new work; is told to shut down once idle.
    pub(crate) retiring: bool,
    pub(crate) shutdown_sent: bool,
    pub(crate) killed: Option<Kill>,
    /// Shared with the reader thread, which takes finished chunks off it.
    inflight: Arc<Mutex<VecDeque<Inflight>>>,
    /// Tasks sent to this worker so far (for `max_tasks_per_worker`).
    pub(crate) assigned: u64,
    pub(crate) dirty: bool,
}

impl Worker {
    /// Starts the worker program for slot `slot` and its reader thread.
    pub(crate) fn spawn(
        config: &Config,
        slot: usize,
        key: u64,
        shared: &Arc<Shared>,
        tx: &Sender<Msg>,
    ) -> Result<Worker, Error> {
        let mut cmd = Command::new(&config.program);
        cmd.args(&config.args)
            .envs(config.envs.iter().map(|(k, v)| (k, v)))
            .env(endpoint::WORKER_ID_ENV, slot.to_string())
            .env(endpoint::MAX_FRAME_ENV, config.max_frame_len.to_string())
            .stdin(Stdio::null());
        let spawn_error = |e: std::io::Error| Error::Spawn {
            program: config.program.clone(),
            source: Arc::new(e),
        };
        let (mut child, reader, writer) = endpoint::spawn(cmd).map_err(spawn_error)?;
        let max = config.max_frame_len;
        let link = Link::new(writer, max);
        let inflight = Arc::new(Mutex::new(VecDeque::new()));
        let ctx = ReaderContext {
            slot,
            key,
            link: Arc::clone(&link),
            inflight: Arc::clone(&inflight),
            shared: Arc::clone(shared),
            tx: tx.clone(),
        };
        let started = thread::Builder::new()
            .name(format!("procpool-reader-{slot}"))
            .spawn(move || ctx.run(reader, max));
        if let Err(e) = started {
            let _ = child.kill();
            let _ = child.wait();
            return Err(spawn_error(e));
        }
        let pid = child.id();
        tracing::debug!(worker_id = slot, pid, "worker started");
        Ok(Worker {
            key,
            pid,
            child,
            link,
            spawned: Instant::now(),
            ready: false,
            retiring: false,
            shutdown_sent: false,
            killed: None,
            inflight,
            assigned: 0,
            dirty: false,
        })
    }

    /// Sends chunk `id` (or, with `chunk` `None`, the initializer, task
    /// number `task` on `()`). It joins the in-flight queue before the frame
    /// is written: another thread may flush the link at any moment, and the
    /// answer must find it there. On failure the chunk comes back.
    pub(crate) fn send(
        &mut self,
        id: u64,
        task: u32,
        chunk: Option<Chunk>,
    ) -> Result<(), (Option<Chunk>, IpcError)> {
        let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        let started = inflight.is_empty().then(Instant::now);
        inflight.push_back(Inflight { id, chunk, started });
        let head = inflight.back().expect("just pushed");
        let unit = [0u8; 0];
        let (count, payload) = match &head.chunk {
            Some(c) => (c.count, &c.payload[..]),
            // `()` encodes to nothing.
            None => (1, &unit[..]),
        };
        let sent = Message::Run {
            id,
            task: head.chunk.as_ref().map_or(task, |c| c.task),
            count,
            payload,
        }
        .write(&mut self.link.lock());
        match sent {
            Ok(()) => {
                if let Some(c) = &head.chunk {
                    self.assigned += u64::from(c.count);
                }
                self.dirty = true;
                Ok(())
            }
            Err(e) => Err((inflight.pop_back().and_then(|i| i.chunk), e)),
        }
    }

    /// The chunks this worker holds, oldest (running) first.
    pub(crate) fn inflight(&self) -> MutexGuard<'_, VecDeque<Inflight>> {
        self.inflight.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Leaves the books: the chunk's outcome goes to its caller and the
/// JoinableQueue counter goes down by one. Every chunk passes here exactly
/// once, whoever ends it.
pub(crate) fn finish(shared: &Shared, chunk: Chunk, result: Result<Results, Error>) {
    let stats = &shared.stats;
    let n = u64::from(chunk.count);
    if chunk.job.cancelled.load(Ordering::Relaxed) {
        stats.cancelled.fetch_add(n, Ordering::Relaxed);
    } else {
        match &result {
            Ok(_) => stats.completed.fetch_add(n, Ordering::Relaxed),
            Err(_) => stats.failed.fetch_add(n, Ordering::Relaxed),
        };
        // A caller that went away no longer wants the outcome.
        let _ = chunk.job.sink.send(Outcome {
            seq: chunk.seq,
            count: chunk.count,
            result,
        });
    }
    shared.accounting.done(1);
}

/// Reaps a child whose connection has closed: it is exiting, so this
/// returns promptly; a child that keeps running without its connection is
/// killed after a short wait.
pub(crate) fn reap(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut pause = Duration::from_micros(50);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status,
            Ok(None) if Instant::now() < deadline => {
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(10));
            }
            _ => {
                let _ = child.kill();
                if let Ok(status) = child.wait() {
                    return status;
                }
            }
        }
    }
}

/// What a worker's reader thread needs.
struct ReaderContext {
    slot: usize,
    key: u64,
    link: Arc<Link>,
    inflight: Arc<Mutex<VecDeque<Inflight>>>,
    shared: Arc<Shared>,
    tx: Sender<Msg>,
}

impl ReaderContext {
    fn run(self, reader: ReadHalf, max: u32) {
        let error = self.serve(reader, max);
        // What the hub had handed this worker and it had not taken goes back.
        hub::disconnect(self.link.id());
        let _ = self.tx.send(Msg::Gone {
            slot: self.slot,
            key: self.key,
            error,
        });
    }

    /// Reads until the connection ends; returns why, if not a clean EOF.
    fn serve(&self, reader: ReadHalf, max: u32) -> Option<IpcError> {
        let (slot, key) = (self.slot, self.key);
        let mut reader = FrameReader::new(reader, max);
        let mut frame = Vec::new();
        let mut hello_seen = false;
        // Replies and deliveries are flushed once the frames already read are handled.
        let mut dirty = Dirty::default();
        loop {
            if !reader.has_buffered() {
                dirty.flush();
            }
            match reader.read_frame(&mut frame) {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => return Some(e),
            }
            let msg = match Message::decode(&frame) {
                Ok(msg @ Message::Hub { .. }) if hello_seen => {
                    hub::serve(&self.link, &msg, &mut dirty);
                    continue;
                }
                Ok(Message::Hello(hello)) if !hello_seen => {
                    hello_seen = true;
                    Msg::Hello { slot, key, hello }
                }
                Ok(Message::Done {
                    id,
                    elapsed_ns,
                    payload,
                    ..
                }) if hello_seen => {
                    let payload_at = frame.len() - payload.len();
                    let results = Results {
                        frame: std::mem::take(&mut frame),
                        payload_at,
                        elapsed_ns,
                    };
                    match self.complete(id, results) {
                        Some(msg) => msg,
                        None => {
                            return Some(IpcError::Malformed(
                                "result for a task the worker was not running",
                            ));
                        }
                    }
                }
                Ok(_) => return Some(IpcError::Malformed("unexpected message from worker")),
                Err(e) => return Some(e),
            };
            if self.tx.send(msg).is_err() {
                return None;
            }
        }
    }

    /// Takes the finished chunk `id` off the in-flight queue and delivers
    /// it; `None` if it is not the one the worker was running.
    fn complete(&self, id: u64, results: Results) -> Option<Msg> {
        let done = {
            let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
            if inflight.front().map(|f| f.id) != Some(id) {
                return None;
            }
            let done = inflight.pop_front();
            if let Some(next) = inflight.front_mut() {
                next.started = Some(Instant::now());
            }
            done?
        };
        match done.chunk {
            Some(chunk) => {
                finish(&self.shared, chunk, Ok(results));
                Some(Msg::Completed)
            }
            None => {
                // The initializer: a failure makes the worker unusable.
                let payload = &results.frame[results.payload_at..];
                match codec::decode::<Result<(), TaskError>>(payload) {
                    Ok((Ok(()), _)) => Some(Msg::Completed),
                    outcome => {
                        tracing::warn!(worker_id = self.slot, ?outcome, "initializer failed");
                        Some(Msg::InitFailed {
                            slot: self.slot,
                            key: self.key,
                        })
                    }
                }
            }
        }
    }
}
