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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use procpool_ipc::IpcError;
use procpool_ipc::proto::{Hello, Message};

use crate::Error;
use crate::builder::Config;
use crate::joinable::Accounting;
use crate::worker::{Inflight, Kill, Worker, finish, reap};

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
    /// A worker finished a chunk (already delivered to its caller).
    Completed,
    /// A worker's initializer failed: it must not take tasks.
    InitFailed {
        slot: usize,
        key: u64,
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
                    finish(&self.shared, chunk, Err(Error::Closed));
                } else {
                    let e = self.no_workers_error();
                    finish(&self.shared, chunk, Err(e));
                }
            }
            Msg::Shutdown => self.begin_drain(),
            Msg::Interrupt => {
                for chunk in std::mem::take(&mut self.pending) {
                    finish(&self.shared, chunk, Err(Error::Interrupted));
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
            // A chunk finished (the reader thread delivered it): room to dispatch.
            Msg::Completed => {}
            Msg::InitFailed { slot, key } => {
                if self.worker_mut(slot, key).is_some() {
                    self.kill(slot, Kill::Broken);
                }
            }
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
            finish(&self.shared, chunk, Err(Error::Terminated));
        }
        for slot in 0..self.slots.len() {
            self.kill(slot, Kill::Terminated);
        }
        self.phase = Phase::Stopping(Instant::now() + STOP_WAIT);
    }

    fn spawn(&mut self, slot: usize) -> Result<(), Error> {
        let key = self.next_key;
        self.next_key += 1;
        let worker = Worker::spawn(&self.config, slot, key, &self.shared, &self.tx)?;
        self.shared.set_pid(slot, Some(worker.pid));
        self.shared
            .stats
            .workers_alive
            .fetch_add(1, Ordering::Relaxed);
        self.slots[slot].worker = Some(worker);
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
            if w.send(id, task, None).is_ok() {
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
        let head_id = w.inflight().front().map(|i| i.id);
        // The error for the chunk that was running.
        let culprit = match (w.killed, error) {
            (Some(Kill::Timeout { timeout, chunk }), _) if head_id == Some(chunk) => {
                Error::Timeout {
                    timeout,
                    worker_id,
                    pid,
                }
            }
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
        let mut inflight = std::mem::take(&mut *w.inflight());
        if let Some(Inflight {
            chunk: Some(mut chunk),
            ..
        }) = inflight.pop_front()
        {
            // Killed for a timeout of a chunk that finished meanwhile: this
            // one had just started and is not to blame.
            let blameless =
                matches!(w.killed, Some(Kill::Timeout { chunk, .. }) if head_id != Some(chunk));
            let retry = !stopping
                && matches!(culprit, Error::WorkerDied { .. } | Error::Connection { .. })
                && chunk.attempts < self.config.retries;
            if blameless && !stopping {
                self.pending.push_front(chunk);
            } else if retry {
                chunk.attempts += 1;
                self.pending.push_front(chunk);
            } else {
                finish(&self.shared, chunk, Err(culprit.clone()));
            }
        }
        // The rest never started: back to the front of the queue, in order.
        for Inflight { chunk, .. } in inflight.into_iter().rev() {
            if let Some(chunk) = chunk {
                if stopping {
                    finish(&self.shared, chunk, Err(culprit.clone()));
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
                finish(&self.shared, chunk, Err(e.clone()));
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
                finish(&self.shared, chunk, Err(Error::Closed));
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
                        && w.inflight().len() < depth
                        // A worker never runs more than its limit (a chunk larger
                        // than the limit goes to a fresh worker whole).
                        && limit.is_none_or(|n| w.assigned == 0 || w.assigned + u64::from(chunk.count) <= n)
                })
                .min_by_key(|(_, w)| w.inflight().len())
                .map(|(i, _)| i);
            let Some(slot) = target else {
                self.pending.push_front(chunk);
                break;
            };
            let id = self.next_id;
            self.next_id += 1;
            let w = self.slots[slot].worker.as_mut().expect("picked above");
            match w.send(id, 0, Some(chunk)) {
                Ok(()) => {
                    if limit.is_some_and(|n| w.assigned >= n) {
                        w.retiring = true;
                    }
                }
                Err((chunk, IpcError::FrameTooLarge { len, max })) => {
                    if let Some(chunk) = chunk {
                        finish(&self.shared, chunk, Err(Error::FrameTooLarge { len, max }));
                    }
                }
                Err((chunk, e)) => {
                    tracing::warn!(worker_id = slot, pid = w.pid, error = %e, "cannot write to worker");
                    if let Some(chunk) = chunk {
                        self.pending.push_front(chunk);
                    }
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
                .all(|s| s.worker.as_ref().is_none_or(|w| w.inflight().is_empty()));
        if draining_done {
            self.phase = Phase::Stopping(Instant::now() + STOP_WAIT);
        }
        let stopping = matches!(self.phase, Phase::Stopping(_));
        for slot in 0..self.slots.len() {
            let Some(w) = self.slots[slot].worker.as_mut() else {
                continue;
            };
            let idle = w.inflight().is_empty();
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
        let inflight = w.inflight();
        let head = inflight.front()?;
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
                let chunk = w.inflight().front().map_or(0, |i| i.id);
                tracing::warn!(
                    worker_id = slot,
                    pid = w.pid,
                    "task timed out: killing its worker"
                );
                self.kill(slot, Kill::Timeout { timeout, chunk });
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
                for chunk in w.inflight().drain(..).filter_map(|i| i.chunk) {
                    finish(&self.shared, chunk, Err(Error::Terminated));
                }
            }
        }
        for chunk in std::mem::take(&mut self.pending) {
            finish(&self.shared, chunk, Err(Error::Terminated));
        }
        // Submissions that raced with the stop.
        for msg in self.rx.try_iter().collect::<Vec<_>>() {
            if let Msg::Submit(chunk) = msg {
                finish(&self.shared, chunk, Err(Error::Closed));
            }
        }
        if let Some(ready) = self.ready_tx.take() {
            let _ = ready.send(Err(Error::Terminated));
        }
    }
}
