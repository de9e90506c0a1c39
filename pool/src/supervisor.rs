//! The supervisor: one thread that owns every worker and all queued work.
//!
//! It receives [`Msg`]s from the pool's callers (submit, stop) and from one
//! reader thread per worker (hello, results, EOF), so all state changes
//! happen on one thread, in one place.
//!
//! # A chunk's life
//!
//! ```text
//! submit ──► pending ──dispatch──► worker.inflight ──Done──► caller's channel   (task_done)
//!              ▲                        │
//!              │      worker dies:      ├─ head chunk (it was running): retry or fail (task_done)
//!              └──────── requeue ───────┴─ chunks queued behind it (never started)
//! cancelled job: dropped at dispatch                                            (task_done)
//! ```
//!
//! Every chunk leaves the books through [`Supervisor::finish`], which is
//! where the JoinableQueue counter is decremented: exactly once per chunk.
//!
//! # A worker's life
//!
//! spawned → (hello) ready → [retiring: after `max_tasks_per_worker`, gets
//! `Shutdown` once idle] → EOF → reaped → replaced (unless the pool stops,
//! or the slot failed to start three times in a row).
//!
//! A worker's death is seen at once: its reader thread reads EOF and sends
//! [`Msg::Gone`]; the supervisor reaps the process right away, so no zombie
//! outlives its connection.

use std::collections::VecDeque;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use procpool_ipc::endpoint::{self, ReadHalf};
use procpool_ipc::frame::FrameReader;
use procpool_ipc::hub;
use procpool_ipc::link::{Dirty, Link};
use procpool_ipc::proto::{Hello, Message};
use procpool_ipc::{IpcError, TaskError, codec};

use crate::Error;
use crate::builder::Config;
use crate::joinable::Accounting;

/// A start-up that fails this many times in a row leaves its slot empty.
const MAX_START_FAILURES: u32 = 3;
/// How long a stop waits for killed or shut-down workers before reaping them directly.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// State shared between the pool handle, its callers and the supervisor.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) accounting: Accounting,
    pub(crate) closed: AtomicBool,
    pub(crate) interrupted: AtomicBool,
    /// Dropped on interrupt: every `select` on `interrupt_rx` wakes at once.
    interrupt_tx: Mutex<Option<Sender<()>>>,
    pub(crate) interrupt_rx: Receiver<()>,
    pub(crate) pids: Mutex<Vec<Option<u32>>>,
    pub(crate) stats: Counters,
}

/// Raw counters behind [`Stats`](crate::Stats).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) submitted: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) task_errors: AtomicU64,
    pub(crate) workers_alive: AtomicUsize,
    pub(crate) workers_replaced: AtomicU64,
}

impl Shared {
    pub(crate) fn new(workers: usize) -> Self {
        let (interrupt_tx, interrupt_rx) = crossbeam_channel::bounded(0);
        Self {
            accounting: Accounting::default(),
            closed: AtomicBool::new(false),
            interrupted: AtomicBool::new(false),
            interrupt_tx: Mutex::new(Some(interrupt_tx)),
            interrupt_rx,
            pids: Mutex::new(vec![None; workers]),
            stats: Counters::default(),
        }
    }

    /// Marks the pool interrupted and wakes every blocked caller.
    pub(crate) fn interrupt(&self) {
        self.interrupted.store(true, Ordering::SeqCst);
        self.closed.store(true, Ordering::SeqCst);
        drop(
            self.interrupt_tx
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        self.accounting.wake_all();
    }

    fn set_pid(&self, slot: usize, pid: Option<u32>) {
        self.pids.lock().unwrap_or_else(PoisonError::into_inner)[slot] = pid;
    }
}

/// One caller's stream of results (a `map`, an `imap`, a `submit`).
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) sink: Sender<Outcome>,
    pub(crate) cancelled: AtomicBool,
}

/// Consecutive inputs of one job, encoded, bound for one worker.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub(crate) job: Arc<Job>,
    /// Position of this chunk within its job.
    pub(crate) seq: u64,
    pub(crate) task: u32,
    pub(crate) count: u32,
    pub(crate) payload: Vec<u8>,
    pub(crate) attempts: u32,
}

/// What became of a chunk.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) seq: u64,
    pub(crate) count: u32,
    pub(crate) result: Result<Results, Error>,
}

/// A `DONE` frame: `count` encoded results start at `frame[payload_at..]`.
#[derive(Debug)]
pub(crate) struct Results {
    pub(crate) frame: Vec<u8>,
    pub(crate) payload_at: usize,
    pub(crate) elapsed_ns: u64,
}

/// What the supervisor is told.
#[derive(Debug)]
pub(crate) enum Msg {
    Submit(Chunk),
    /// Stop gracefully: finish queued and running work within the grace
    /// period, then kill.
    Shutdown,
    /// Stop dispatching: fail queued work with `Interrupted`, let running
    /// work finish within the grace period.
    Interrupt,
    /// Kill every worker now.
    Terminate,
    Hello {
        slot: usize,
        key: u64,
        hello: Hello,
    },
    Done {
        slot: usize,
        key: u64,
        id: u64,
        results: Results,
    },
    Gone {
        slot: usize,
        key: u64,
        error: Option<IpcError>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Starting,
    Running,
    /// Finishing work until the deadline, then stopping.
    Draining(Instant),
    /// Workers told to exit or killed; waiting for them until the deadline.
    Stopping(Instant),
}

#[derive(Clone, Copy, Debug)]
enum Kill {
    Timeout(Duration),
    Terminated,
    StartTimeout,
    Broken,
}

#[derive(Debug)]
struct Inflight {
    id: u64,
    /// `None` for the initializer.
    chunk: Option<Chunk>,
    started: Option<Instant>,
}

#[derive(Debug)]
struct Worker {
    key: u64,
    pid: u32,
    child: Child,
    link: Arc<Link>,
    spawned: Instant,
    ready: bool,
    /// Gets no new work; is told to shut down once idle.
    retiring: bool,
    shutdown_sent: bool,
    killed: Option<Kill>,
    inflight: VecDeque<Inflight>,
    /// Tasks sent to this worker so far (for `max_tasks_per_worker`).
    assigned: u64,
    dirty: bool,
}

#[derive(Debug, Default)]
struct Slot {
    worker: Option<Worker>,
    start_failures: u32,
    last_start_error: Option<Error>,
}

pub(crate) struct Supervisor {
    config: Arc<Config>,
    shared: Arc<Shared>,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    slots: Vec<Slot>,
    pending: VecDeque<Chunk>,
    next_id: u64,
    next_key: u64,
    tasks: Option<Vec<String>>,
    phase: Phase,
    ready_tx: Option<Sender<Result<Vec<String>, Error>>>,
}

impl Supervisor {
    pub(crate) fn new(
        config: Arc<Config>,
        shared: Arc<Shared>,
        tx: Sender<Msg>,
        rx: Receiver<Msg>,
        ready_tx: Sender<Result<Vec<String>, Error>>,
    ) -> Self {
        let slots = (0..config.workers).map(|_| Slot::default()).collect();
        Self {
            config,
            shared,
            tx,
            rx,
            slots,
            pending: VecDeque::new(),
            next_id: 0,
            next_key: 0,
            tasks: None,
            phase: Phase::Starting,
            ready_tx: Some(ready_tx),
        }
    }

    /// Runs until the pool has stopped and every worker is reaped.
    pub(crate) fn run(mut self) {
        for slot in 0..self.slots.len() {
            if let Err(e) = self.spawn(slot) {
                self.startup_failed(e);
                break;
            }
        }
        loop {
            let msg = match self.next_deadline() {
                Some(deadline) => match self.rx.recv_deadline(deadline) {
                    Ok(msg) => Some(msg),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None => match self.rx.recv() {
                    Ok(msg) => Some(msg),
                    Err(_) => break,
                },
            };
            if let Some(msg) = msg {
                self.handle(msg);
                // Take what else is waiting before writing: one flush per burst.
                for msg in self.rx.try_iter().take(1024).collect::<Vec<_>>() {
                    self.handle(msg);
                }
            }
            self.check_deadlines();
            self.dispatch();
            self.flush();
            if self.is_finished() {
                break;
            }
        }
        self.reap_all();
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Submit(chunk) => {
                if matches!(self.phase, Phase::Running | Phase::Draining(_)) && self.has_workers() {
                    self.pending.push_back(chunk);
                } else if self.has_workers() {
                    self.finish(chunk, Err(Error::Closed));
                } else {
                    let e = self.no_workers_error();
                    self.finish(chunk, Err(e));
                }
            }
            Msg::Shutdown => self.begin_drain(),
            Msg::Interrupt => {
                for chunk in std::mem::take(&mut self.pending) {
                    self.finish(chunk, Err(Error::Interrupted));
                }
                self.begin_drain();
                // Running tasks finish; those queued behind them in the
                // worker are dropped there and fail here when it exits.
                for w in self.slots.iter_mut().filter_map(|s| s.worker.as_mut()) {
                    if !w.shutdown_sent && w.killed.is_none() {
                        w.shutdown_sent = Message::Shutdown.write(&mut w.link.lock()).is_ok();
                        w.dirty = true;
                    }
                }
            }
            Msg::Terminate => self.terminate(),
            Msg::Hello { slot, key, hello } => self.on_hello(slot, key, hello),
            Msg::Done {
                slot,
                key,
                id,
                results,
            } => self.on_done(slot, key, id, results),
            Msg::Gone { slot, key, error } => self.on_gone(slot, key, error),
        }
    }

    fn begin_drain(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        if matches!(self.phase, Phase::Starting | Phase::Running) {
            self.phase = Phase::Draining(Instant::now() + self.config.grace_period);
        }
    }

    fn terminate(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        for chunk in std::mem::take(&mut self.pending) {
            self.finish(chunk, Err(Error::Terminated));
        }
        for slot in 0..self.slots.len() {
            self.kill(slot, Kill::Terminated);
        }
        self.phase = Phase::Stopping(Instant::now() + STOP_WAIT);
    }

    /// Leaves the books: the chunk's outcome goes to its caller and the
    /// JoinableQueue counter goes down by one.
    fn finish(&self, chunk: Chunk, result: Result<Results, Error>) {
        let stats = &self.shared.stats;
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
        self.shared.accounting.done(1);
    }

    fn spawn(&mut self, slot: usize) -> Result<(), Error> {
        let config = &self.config;
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
        let key = self.next_key;
        self.next_key += 1;
        let tx = self.tx.clone();
        let max = config.max_frame_len;
        let link = Link::new(writer, max);
        let reader_link = Arc::clone(&link);
        let started = thread::Builder::new()
            .name(format!("procpool-reader-{slot}"))
            .spawn(move || read_worker(slot, key, reader, &reader_link, max, &tx));
        if let Err(e) = started {
            let _ = child.kill();
            let _ = child.wait();
            return Err(spawn_error(e));
        }
        let pid = child.id();
        tracing::debug!(worker_id = slot, pid, "worker started");
        self.shared.set_pid(slot, Some(pid));
        self.shared
            .stats
            .workers_alive
            .fetch_add(1, Ordering::Relaxed);
        self.slots[slot].worker = Some(Worker {
            key,
            pid,
            child,
            link,
            spawned: Instant::now(),
            ready: false,
            retiring: false,
            shutdown_sent: false,
            killed: None,
            inflight: VecDeque::new(),
            assigned: 0,
            dirty: false,
        });
        Ok(())
    }

    fn worker_mut(&mut self, slot: usize, key: u64) -> Option<&mut Worker> {
        self.slots
            .get_mut(slot)?
            .worker
            .as_mut()
            .filter(|w| w.key == key)
    }

    fn on_hello(&mut self, slot: usize, key: u64, hello: Hello) {
        let mismatch = match &self.tasks {
            None => {
                self.tasks = Some(hello.tasks.clone());
                false
            }
            Some(tasks) => *tasks != hello.tasks,
        };
        let initializer = match self.config.initializer {
            None => None,
            Some(name) => match hello.tasks.iter().position(|t| t == name) {
                Some(i) => Some(u32::try_from(i).unwrap_or(u32::MAX)),
                None => {
                    self.startup_failed(Error::UnknownTask {
                        name: name.to_owned(),
                        available: hello.tasks.clone(),
                    });
                    return;
                }
            },
        };
        let id = self.next_id;
        let Some(w) = self.worker_mut(slot, key) else {
            return;
        };
        if mismatch {
            tracing::warn!(
                worker_id = slot,
                pid = w.pid,
                "worker serves a different task list"
            );
            w.killed = Some(Kill::Broken);
            let _ = w.child.kill();
            return;
        }
        w.ready = true;
        tracing::debug!(worker_id = slot, pid = hello.pid, "worker ready");
        if let Some(task) = initializer {
            // Runs before anything else: it is first in the worker's queue.
            let mut payload = Vec::new();
            let sent = codec::encode_into(&(), &mut payload).is_ok()
                && Message::Run {
                    id,
                    task,
                    count: 1,
                    payload: &payload,
                }
                .write(&mut w.link.lock())
                .is_ok();
            if sent {
                w.inflight.push_back(Inflight {
                    id,
                    chunk: None,
                    started: Some(Instant::now()),
                });
                w.dirty = true;
                self.next_id += 1;
            } else {
                w.killed = Some(Kill::Broken);
                let _ = w.child.kill();
            }
        }
        self.slots[slot].start_failures = 0;
        if self.phase == Phase::Starting
            && self
                .slots
                .iter()
                .all(|s| s.worker.as_ref().is_some_and(|w| w.ready))
        {
            self.phase = Phase::Running;
            if let Some(ready) = self.ready_tx.take() {
                let _ = ready.send(Ok(self.tasks.clone().unwrap_or_default()));
            }
        }
    }

    fn on_done(&mut self, slot: usize, key: u64, id: u64, results: Results) {
        let Some(w) = self.worker_mut(slot, key) else {
            return;
        };
        if w.inflight.front().map(|f| f.id) != Some(id) {
            tracing::warn!(
                worker_id = slot,
                pid = w.pid,
                "worker answered out of order"
            );
            w.killed = Some(Kill::Broken);
            let _ = w.child.kill();
            return;
        }
        let done = w.inflight.pop_front().expect("checked above");
        if let Some(next) = w.inflight.front_mut() {
            next.started = Some(Instant::now());
        }
        match done.chunk {
            Some(chunk) => self.finish(chunk, Ok(results)),
            None => {
                // The initializer: a failure makes the worker unusable.
                let payload = &results.frame[results.payload_at..];
                if let Ok((Err(e), _)) = codec::decode::<Result<(), TaskError>>(payload) {
                    tracing::warn!(worker_id = slot, pid = w.pid, error = %e, "initializer failed");
                    w.killed = Some(Kill::Broken);
                    let _ = w.child.kill();
                }
            }
        }
    }

    fn on_gone(&mut self, slot: usize, key: u64, error: Option<IpcError>) {
        let Some(mut w) = self.slots[slot].worker.take_if(|w| w.key == key) else {
            return;
        };
        let status = reap(&mut w.child);
        self.shared.set_pid(slot, None);
        self.shared
            .stats
            .workers_alive
            .fetch_sub(1, Ordering::Relaxed);
        let worker_id = slot;
        let pid = w.pid;
        let expected = w.shutdown_sent || matches!(w.killed, Some(Kill::Terminated));
        if !expected {
            tracing::warn!(worker_id, pid, %status, "worker died");
        }
        // The error for the chunk that was running.
        let culprit = match (w.killed, error) {
            (Some(Kill::Timeout(timeout)), _) => Error::Timeout {
                timeout,
                worker_id,
                pid,
            },
            (Some(Kill::Terminated), _) => Error::Terminated,
            _ if w.shutdown_sent && self.shared.interrupted.load(Ordering::SeqCst) => {
                Error::Interrupted
            }
            (_, Some(e)) if !matches!(e, IpcError::Truncated { .. }) => Error::Connection {
                worker_id,
                source: Arc::new(e),
            },
            _ => Error::WorkerDied {
                worker_id,
                pid,
                status,
            },
        };
        let stopping = matches!(self.phase, Phase::Stopping(_)) || w.shutdown_sent;
        let mut inflight = std::mem::take(&mut w.inflight);
        if let Some(Inflight {
            chunk: Some(mut chunk),
            ..
        }) = inflight.pop_front()
        {
            let retry = !stopping
                && matches!(culprit, Error::WorkerDied { .. } | Error::Connection { .. })
                && chunk.attempts < self.config.retries;
            if retry {
                chunk.attempts += 1;
                self.pending.push_front(chunk);
            } else {
                self.finish(chunk, Err(culprit.clone()));
            }
        }
        // The rest never started: back to the front of the queue, in order.
        for Inflight { chunk, .. } in inflight.into_iter().rev() {
            if let Some(chunk) = chunk {
                if stopping {
                    self.finish(chunk, Err(culprit.clone()));
                } else {
                    self.pending.push_front(chunk);
                }
            }
        }
        if !w.ready {
            let reason = match (w.killed, culprit) {
                (Some(Kill::StartTimeout), _) => {
                    format!("no handshake within {:?}", self.config.start_timeout)
                }
                (_, Error::Connection { source, .. }) => {
                    if let IpcError::VersionMismatch { ours, theirs } = *source {
                        self.startup_failed(Error::VersionMismatch {
                            worker_id,
                            ours,
                            theirs,
                        });
                        return;
                    }
                    format!("invalid handshake: {source}")
                }
                _ => format!("pid {pid} exited before its handshake: {status}"),
            };
            let e = Error::Startup { worker_id, reason };
            if self.phase == Phase::Starting {
                self.startup_failed(e);
                return;
            }
            self.slots[slot].start_failures += 1;
            self.slots[slot].last_start_error = Some(e);
        }
        // While draining, a replacement is needed only for queued work.
        let replace = self.config.replace_workers
            && (self.phase == Phase::Running
                || matches!(self.phase, Phase::Draining(_)) && !self.pending.is_empty())
            && self.slots[slot].start_failures < MAX_START_FAILURES;
        if replace {
            if !w.retiring {
                self.shared
                    .stats
                    .workers_replaced
                    .fetch_add(1, Ordering::Relaxed);
            }
            if let Err(e) = self.spawn(slot) {
                tracing::warn!(worker_id, error = %e, "cannot start a replacement worker");
                self.slots[slot].start_failures = MAX_START_FAILURES;
                self.slots[slot].last_start_error = Some(e);
            }
        }
        if !self.has_workers() {
            let e = self.no_workers_error();
            for chunk in std::mem::take(&mut self.pending) {
                self.finish(chunk, Err(e.clone()));
            }
        }
    }

    fn startup_failed(&mut self, e: Error) {
        tracing::warn!(error = %e, "pool start-up failed");
        if let Some(ready) = self.ready_tx.take() {
            let _ = ready.send(Err(e));
        }
        self.terminate();
    }

    fn has_workers(&self) -> bool {
        self.slots.iter().any(|s| s.worker.is_some())
    }

    fn no_workers_error(&self) -> Error {
        self.slots
            .iter()
            .find_map(|s| s.last_start_error.clone())
            .unwrap_or(Error::Closed)
    }

    fn kill(&mut self, slot: usize, why: Kill) {
        if let Some(w) = self.slots[slot].worker.as_mut() {
            if w.killed.is_none() || matches!(why, Kill::Terminated) {
                w.killed = Some(why);
            }
            let _ = w.child.kill();
        }
    }

    /// Sends queued chunks to workers with room, the least loaded first.
    fn dispatch(&mut self) {
        if !matches!(self.phase, Phase::Running | Phase::Draining(_)) {
            return;
        }
        let depth = self.config.prefetch + 1;
        let limit = self.config.max_tasks_per_worker;
        while let Some(chunk) = self.pending.pop_front() {
            if chunk.job.cancelled.load(Ordering::Relaxed) {
                self.finish(chunk, Err(Error::Closed));
                continue;
            }
            let target = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| Some((i, s.worker.as_ref()?)))
                .filter(|(_, w)| {
                    w.ready
                        && !w.retiring
                        && w.killed.is_none()
                        && w.inflight.len() < depth
                        // A worker never runs more than its limit (a chunk larger
                        // than the limit goes to a fresh worker whole).
                        && limit.is_none_or(|n| w.assigned == 0 || w.assigned + u64::from(chunk.count) <= n)
                })
                .min_by_key(|(_, w)| w.inflight.len())
                .map(|(i, _)| i);
            let Some(slot) = target else {
                self.pending.push_front(chunk);
                break;
            };
            let id = self.next_id;
            self.next_id += 1;
            let w = self.slots[slot].worker.as_mut().expect("picked above");
            let sent = Message::Run {
                id,
                task: chunk.task,
                count: chunk.count,
                payload: &chunk.payload,
            }
            .write(&mut w.link.lock());
            match sent {
                Ok(()) => {
                    w.assigned += u64::from(chunk.count);
                    if limit.is_some_and(|n| w.assigned >= n) {
                        w.retiring = true;
                    }
                    let started = w.inflight.is_empty().then(Instant::now);
                    w.inflight.push_back(Inflight {
                        id,
                        chunk: Some(chunk),
                        started,
                    });
                    w.dirty = true;
                }
                Err(IpcError::FrameTooLarge { len, max }) => {
                    self.finish(chunk, Err(Error::FrameTooLarge { len, max }));
                }
                Err(e) => {
                    tracing::warn!(worker_id = slot, pid = w.pid, error = %e, "cannot write to worker");
                    self.pending.push_front(chunk);
                    self.kill(slot, Kill::Broken);
                }
            }
        }
    }

    /// Sends what the dispatch buffered; tells idle retiring workers to exit.
    fn flush(&mut self) {
        let draining_done = matches!(self.phase, Phase::Draining(_))
            && self.pending.is_empty()
            && self
                .slots
                .iter()
                .all(|s| s.worker.as_ref().is_none_or(|w| w.inflight.is_empty()));
        if draining_done {
            self.phase = Phase::Stopping(Instant::now() + STOP_WAIT);
        }
        let stopping = matches!(self.phase, Phase::Stopping(_));
        for slot in 0..self.slots.len() {
            let Some(w) = self.slots[slot].worker.as_mut() else {
                continue;
            };
            let idle = w.inflight.is_empty();
            if (w.retiring || stopping) && idle && !w.shutdown_sent && w.killed.is_none() {
                w.shutdown_sent = Message::Shutdown.write(&mut w.link.lock()).is_ok();
                w.dirty = true;
            }
            if w.dirty {
                w.dirty = false;
                if let Err(e) = w.link.flush() {
                    tracing::warn!(worker_id = slot, pid = w.pid, error = %e, "cannot write to worker");
                    self.kill(slot, Kill::Broken);
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut next = match self.phase {
            Phase::Draining(d) | Phase::Stopping(d) => Some(d),
            _ => None,
        };
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        for w in self.slots.iter().filter_map(|s| s.worker.as_ref()) {
            if w.killed.is_some() {
                continue;
            }
            if !w.ready {
                consider(w.spawned + self.config.start_timeout);
            } else if let Some(deadline) = self.task_deadline(w) {
                consider(deadline);
            }
        }
        next
    }

    fn task_deadline(&self, w: &Worker) -> Option<Instant> {
        let timeout = self.config.task_timeout?;
        let head = w.inflight.front()?;
        let count = head.chunk.as_ref().map_or(1, |c| c.count);
        Some(head.started? + timeout.saturating_mul(count))
    }

    fn check_deadlines(&mut self) {
        let now = Instant::now();
        match self.phase {
            Phase::Draining(d) if now >= d => {
                tracing::warn!("grace period over: killing the workers");
                self.terminate();
            }
            Phase::Stopping(d) if now >= d => {
                // Workers that neither exited nor reported EOF: reaped in reap_all.
                for slot in 0..self.slots.len() {
                    self.kill(slot, Kill::Terminated);
                }
                return;
            }
            _ => {}
        }
        for slot in 0..self.slots.len() {
            let Some(w) = self.slots[slot].worker.as_ref() else {
                continue;
            };
            if w.killed.is_some() {
                continue;
            }
            if !w.ready && now >= w.spawned + self.config.start_timeout {
                self.kill(slot, Kill::StartTimeout);
            } else if self.task_deadline(w).is_some_and(|d| now >= d) {
                let timeout = self.config.task_timeout.unwrap_or_default();
                tracing::warn!(
                    worker_id = slot,
                    pid = w.pid,
                    "task timed out: killing its worker"
                );
                self.kill(slot, Kill::Timeout(timeout));
            }
        }
    }

    fn is_finished(&self) -> bool {
        match self.phase {
            Phase::Stopping(d) => !self.has_workers() || Instant::now() >= d,
            _ => false,
        }
    }

    /// Kills and reaps whatever is left; fails whatever is still on the books.
    fn reap_all(&mut self) {
        for slot in 0..self.slots.len() {
            if let Some(mut w) = self.slots[slot].worker.take() {
                let _ = w.child.kill();
                let _ = w.child.wait();
                self.shared.set_pid(slot, None);
                self.shared
                    .stats
                    .workers_alive
                    .fetch_sub(1, Ordering::Relaxed);
                for chunk in w.inflight.drain(..).filter_map(|i| i.chunk) {
                    self.finish(chunk, Err(Error::Terminated));
                }
            }
        }
        for chunk in std::mem::take(&mut self.pending) {
            self.finish(chunk, Err(Error::Terminated));
        }
        // Submissions that raced with the stop.
        for msg in self.rx.try_iter().collect::<Vec<_>>() {
            if let Msg::Submit(chunk) = msg {
                self.finish(chunk, Err(Error::Closed));
            }
        }
        if let Some(ready) = self.ready_tx.take() {
            let _ = ready.send(Err(Error::Terminated));
        }
    }
}

/// Reaps a child whose connection has closed: it is exiting, so this
/// returns promptly; a child that keeps running without its connection is
/// killed after a short wait.
fn reap(child: &mut Child) -> ExitStatus {
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
                match child.wait() {
                    Ok(status) => return status,
                    Err(_) => continue,
                }
            }
        }
    }
}

/// The reader thread of one worker: turns frames into [`Msg`]s, and serves
/// the worker's queue operations itself (they never wait on the supervisor).
fn read_worker(
    slot: usize,
    key: u64,
    reader: ReadHalf,
    link: &Arc<Link>,
    max: u32,
    tx: &Sender<Msg>,
) {
    let mut reader = FrameReader::new(reader, max);
    let mut frame = Vec::new();
    let mut hello_seen = false;
    // Replies and deliveries are flushed once the frames already read are handled.
    let mut dirty = Dirty::default();
    let error = loop {
        if !reader.has_buffered() {
            dirty.flush();
        }
        match reader.read_frame(&mut frame) {
            Ok(true) => {}
            Ok(false) => break None,
            Err(e) => break Some(e),
        }
        let msg = match Message::decode(&frame) {
            Ok(msg @ Message::Hub { .. }) if hello_seen => {
                hub::serve(link, &msg, &mut dirty);
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
                Msg::Done {
                    slot,
                    key,
                    id,
                    results: Results {
                        frame: std::mem::take(&mut frame),
                        payload_at,
                        elapsed_ns,
                    },
                }
            }
            Ok(_) => break Some(IpcError::Malformed("unexpected message from worker")),
            Err(e) => break Some(e),
        };
        if tx.send(msg).is_err() {
            return;
        }
    };
    dirty.flush();
    // What the hub had handed this worker and it had not taken goes back.
    hub::disconnect(link.id());
    let _ = tx.send(Msg::Gone { slot, key, error });
}
