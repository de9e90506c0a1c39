//! The supervisor: the thread that owns the worker processes.
//!
//! It starts workers, opens a worker's lane in [`Dispatch`] once its
//! handshake is in, kills workers whose task timed out, reaps and replaces
//! the dead, and runs the pool's stops. Tasks and results do not pass
//! through it: see [`dispatch`](crate::dispatch).
//!
//! # A worker's life
//!
//! spawned (lane closed) → hello: lane open → [retiring after
//! `max_tasks_per_worker`: `Shutdown` once idle] → EOF → reaped → replaced
//! (unless the pool stops, or the slot failed to start three times in a row).
//!
//! A worker's death is seen at once: its reader thread reads EOF and sends
//! [`Msg::Gone`]; the supervisor reaps the process right away, so no zombie
//! outlives its connection. The item the worker was running fails (or is
//! retried; see `blame.rs` for how it is found); the chunks queued behind
//! it go back to the front of the queue.
//!
//! # Stops
//!
//! - drop: new work refused, queued and running work finishes within the
//!   grace period, then `Shutdown` to every worker (killed after the wait);
//! - interrupt: queued work fails with `Interrupted`, every worker gets
//!   `Shutdown` at once (the running task finishes, queued ones are dropped);
//! - terminate: every worker is killed now.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use procpool_ipc::hub;
use procpool_ipc::link::Dirty;
use procpool_ipc::proto::Hello;
use procpool_ipc::secure::Session;

use crate::Error;
use crate::blame::{Facts, Fate, blame};
use crate::config::Config;
use crate::dispatch::{Ended, Lane};
use crate::msg::{Catalog, Msg, catalog_of};
use crate::remote::Listener;
use crate::shared::Shared;
use crate::work::Chunk;
use crate::worker::{Kill, Seat, Worker, retry_spawn};

/// A start-up that fails this many times in a row leaves its slot empty.
const MAX_START_FAILURES: u32 = 3;
/// How long a child may outlive its connection before it is killed.
const LINGER: Duration = Duration::from_millis(500);
/// How long a stop waits for killed or shut-down workers before reaping them directly.
const STOP_WAIT: Duration = Duration::from_secs(2);

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
    next_key: u64,
    tasks: Option<Catalog>,
    phase: Phase,
    ready_tx: Option<Sender<Result<Catalog, Error>>>,
    listener: Option<Listener>,
}

impl Supervisor {
    pub(crate) fn new(
        config: Arc<Config>,
        shared: Arc<Shared>,
        tx: Sender<Msg>,
        rx: Receiver<Msg>,
        ready_tx: Sender<Result<Catalog, Error>>,
        listener: Option<Listener>,
    ) -> Self {
        let slots = (0..config.workers).map(|_| Slot::default()).collect();
        Self {
            config,
            shared,
            tx,
            rx,
            slots,
            next_key: 0,
            tasks: None,
            phase: Phase::Starting,
            ready_tx: Some(ready_tx),
            listener,
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
        if self.config.workers == 0 {
            self.start_remote_only();
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
                for msg in self.rx.try_iter().take(1024).collect::<Vec<_>>() {
                    self.handle(msg);
                }
            }
            self.check_deadlines();
            self.tick();
            if self.is_finished() {
                break;
            }
        }
        if let Some(listener) = &self.listener {
            listener.stop();
        }
        self.reap_all();
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Shutdown => self.begin_drain(Error::Closed),
            Msg::Interrupt => {
                let pending = {
                    let mut dispatch = self.shared.dispatch();
                    dispatch.refuse(Error::Interrupted);
                    std::mem::take(&mut dispatch.pending)
                };
                // Running tasks finish; those queued behind them in the
                // worker are dropped there and fail here when it exits.
                self.shared.stop_lanes();
                for chunk in pending {
                    self.shared.finish(chunk, Err(Error::Interrupted));
                }
                self.begin_drain(Error::Interrupted);
            }
            Msg::Terminate => self.terminate(),
            Msg::Signal => {
                for w in self.slots.iter_mut().filter_map(|s| s.worker.as_mut()) {
                    w.signal_terminate();
                }
            }
            Msg::Hello { slot, key, hello } => self.on_hello(slot, key, hello),
            Msg::Wake => {}
            Msg::Initialized { slot, key, result } => {
                let Some(w) = self.worker_mut(slot, key) else {
                    return;
                };
                match result {
                    // Only now is the start a success.
                    Ok(()) => {
                        self.slots[slot].start_failures = 0;
                        self.open_lane(slot, key);
                    }
                    Err(e) => {
                        w.init_error = Some(e);
                        self.kill(slot, Kill::Broken);
                    }
                }
            }
            Msg::Gone { slot, key, error } => {
                if let Some(w) = self.worker_mut(slot, key) {
                    w.gone = Some((error, Instant::now()));
                    self.end_if_over(slot);
                }
            }
            Msg::Exited { slot, key, status } => {
                if let Some(w) = self.worker_mut(slot, key) {
                    w.exit = Some(status);
                    self.end_if_over(slot);
                }
            }
            Msg::Joined {
                stream,
                session,
                peer,
            } => self.on_joined(stream, session, peer),
        }
    }

    fn begin_drain(&mut self, why: Error) {
        self.shared.close(why);
        self.shared.watch.store(true, Ordering::Relaxed);
        if matches!(self.phase, Phase::Starting | Phase::Running) {
            self.phase = Phase::Draining(Instant::now() + self.config.grace_period);
        }
    }

    fn terminate(&mut self) {
        self.shared.close(Error::Terminated);
        self.shared.watch.store(true, Ordering::Relaxed);
        let pending = std::mem::take(&mut self.shared.dispatch().pending);
        for chunk in pending {
            self.shared.finish(chunk, Err(Error::Terminated));
        }
        for slot in 0..self.slots.len() {
            self.kill(slot, Kill::Terminated);
        }
        self.phase = Phase::Stopping(Instant::now() + STOP_WAIT);
    }

    fn seat(&self, slot: usize, key: u64) -> Seat<'_> {
        Seat {
            config: &self.config,
            slot,
            key,
            shared: &self.shared,
            tx: &self.tx,
        }
    }

    fn spawn(&mut self, slot: usize) -> Result<(), Error> {
        let key = self.next_key;
        self.next_key += 1;
        let (worker, link) = retry_spawn(|| self.seat(slot, key).spawn())?;
        let mut lane = Lane::new(key, worker.pid, link);
        lane.open = false; // until its handshake is in
        self.shared.dispatch().lanes[slot] = Some(lane);
        self.shared.set_pid(slot, Some(worker.pid));
        self.shared
            .stats
            .workers_alive
            .fetch_add(1, Ordering::Relaxed);
        self.slots[slot].worker = Some(worker);
        Ok(())
    }

    /// A remote worker becomes a new slot (and lane) at the end; it is not
    /// replaced when it leaves. Dropping `stream` refuses it.
    fn on_joined(&mut self, stream: TcpStream, session: Session, peer: SocketAddr) {
        if self.phase != Phase::Running {
            return;
        }
        let slot = self.slots.len();
        let key = self.next_key;
        self.next_key += 1;
        match self.seat(slot, key).join(stream, session, peer) {
            Ok((worker, link)) => {
                let mut lane = Lane::new(key, 0, link);
                lane.open = false; // until its handshake is in
                self.shared.dispatch().lanes.push(Some(lane));
                self.shared
                    .stats
                    .workers_alive
                    .fetch_add(1, Ordering::Relaxed);
                self.slots.push(Slot {
                    worker: Some(worker),
                    ..Slot::default()
                });
            }
            Err(e) => tracing::warn!(%peer, error = %e, "cannot take the remote worker"),
        }
    }

    fn on_hello(&mut self, slot: usize, key: u64, hello: Hello) {
        let mismatch = match &self.tasks {
            None => {
                self.tasks = Some(catalog_of(&hello));
                false
            }
            Some(tasks) => *tasks != catalog_of(&hello),
        };
        let initializer = match self.config.initializer.as_ref().map(|(name, _)| *name) {
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
        let Some(w) = self.slots[slot].worker.as_mut().filter(|w| w.key == key) else {
            return;
        };
        if mismatch {
            tracing::warn!(
                worker_id = slot,
                pid = w.pid,
                "worker serves a different task list"
            );
            self.kill(slot, Kill::Broken);
            return;
        }
        w.ready = true;
        w.pid = hello.pid;
        tracing::debug!(worker_id = slot, pid = hello.pid, "worker ready");
        let mut dirty = Dirty::default();
        let mut dispatch = self.shared.dispatch();
        let mut broken = false;
        if let Some(lane) = dispatch.lane_mut(slot, key) {
            // With an initializer the lane opens once it has succeeded: no
            // task may run in a worker whose initializer failed.
            lane.open = !lane.shutdown_sent && initializer.is_none();
            lane.pid = hello.pid;
            if let Some(task) = initializer {
                broken = dispatch.send(slot, task, None, &mut dirty).is_err();
            }
        }
        drop(dispatch);
        if initializer.is_none() {
            self.open_lane(slot, key);
        }
        dirty.flush();
        if broken {
            self.kill(slot, Kill::Broken);
        }
        if initializer.is_none() {
            // With an initializer, the start succeeds once it has run.
            self.slots[slot].start_failures = 0;
        }
        let local = &self.slots[..self.config.workers];
        if self.phase == Phase::Starting
            && local
                .iter()
                .all(|s| s.worker.as_ref().is_some_and(|w| w.ready))
        {
            self.phase = Phase::Running;
            if let Some(ready) = self.ready_tx.take() {
                let _ = ready.send(Ok(self.tasks.clone().unwrap_or_default()));
            }
        }
    }

    /// The worker is ready for tasks: its lane opens (unless it was told to
    /// shut down meanwhile) and takes queued work.
    fn open_lane(&mut self, slot: usize, key: u64) {
        let mut dirty = Dirty::default();
        let mut ended = Ended::new();
        let mut dispatch = self.shared.dispatch();
        if let Some(lane) = dispatch.lane_mut(slot, key) {
            lane.open = !lane.shutdown_sent && !lane.retiring;
        }
        dispatch.pump(&mut dirty, &mut ended);
        drop(dispatch);
        dirty.flush();
        self.shared.finish_ended(ended);
        // Counted once its lane is open: a caller woken by this finds it taking work.
        if let Some(w) = self.worker_mut(slot, key) {
            w.taking_work = true;
            self.shared.ready_changed(1);
        }
    }

    fn worker_mut(&mut self, slot: usize, key: u64) -> Option<&mut Worker> {
        self.slots[slot].worker.as_mut().filter(|w| w.key == key)
    }

    fn end_if_over(&mut self, slot: usize) {
        if self.slots[slot]
            .worker
            .as_ref()
            .is_some_and(Worker::is_over)
        {
            self.on_gone(slot);
        }
    }

    /// A worker whose connection ended and whose process is reaped leaves:
    /// its lane's chunks are failed, retried or requeued, and its slot is
    /// refilled.
    fn on_gone(&mut self, slot: usize) {
        let Some(mut w) = self.slots[slot].worker.take() else {
            return;
        };
        let key = w.key;
        let status = w.exit.flatten();
        let error = w.gone.take().and_then(|(e, _)| e);
        if w.taking_work {
            self.shared.ready_changed(-1);
        }
        self.shared.set_pid(slot, None);
        if w.peer().is_none() {
            self.shared.record_exit(w.pid, status);
        }
        self.shared
            .stats
            .workers_alive
            .fetch_sub(1, Ordering::Relaxed);
        let lane = {
            let mut dispatch = self.shared.dispatch();
            dispatch.lanes[slot].take_if(|l| l.key == key)
        };
        if let Some(l) = &lane {
            // Connection ended and process reaped: the leases it held in
            // pipe lanes can go.
            hub::reaped(l.link.id());
        }
        let (mut inflight, shutdown_sent, retiring) = match lane {
            Some(l) => (l.inflight, l.shutdown_sent, l.retiring),
            None => (VecDeque::new(), false, false),
        };
        let worker_id = slot;
        let pid = w.pid;
        let expected = shutdown_sent || matches!(w.killed, Some(Kill::Terminated));
        if !expected {
            tracing::warn!(worker_id, pid, ?status, "worker died");
        }
        let verdict = blame(Facts {
            worker_id,
            pid,
            killed: w.killed,
            error,
            status,
            peer: w.peer(),
            ready: w.ready,
            shutdown_sent,
            interrupted: self.shared.interrupted.load(Ordering::SeqCst),
            phase_stopping: matches!(self.phase, Phase::Stopping(_)),
            head_id: inflight.front().map(|i| i.id),
            attempts: inflight
                .front()
                .and_then(|i| i.chunk.as_ref())
                .map_or(0, |c| c.attempts),
            unreported: inflight
                .front()
                .and_then(|i| i.chunk.as_ref())
                .map_or(1, Chunk::unreported),
            retries: self.config.retries,
            start_timeout: self.config.start_timeout,
            heartbeat: self
                .config
                .local_heartbeat
                .then_some(self.config.heartbeat_timeout),
        });
        let culprit = verdict.culprit;
        // Failed chunks are reported last, once a replacement is on its way:
        // a caller that sees the error sees the pool already whole again.
        let mut failed = Vec::new();
        {
            let mut dispatch = self.shared.dispatch();
            // Its items reported already were delivered: only the rest is
            // retried, split or failed (see `blame`).
            if let Some(chunk) = inflight.pop_front().and_then(|i| i.chunk) {
                match verdict.head {
                    Fate::Requeue => match chunk.remainder() {
                        Ok(rest) => dispatch.pending.push_front(rest),
                        Err(chunk) => failed.push(chunk),
                    },
                    Fate::Retry => match chunk.remainder() {
                        Ok(mut rest) => {
                            rest.attempts += 1;
                            dispatch.pending.push_front(rest);
                        }
                        Err(chunk) => failed.push(chunk),
                    },
                    Fate::Split => match chunk.split() {
                        Ok(pieces) => {
                            // One chunk becomes several on the books.
                            self.shared
                                .accounting
                                .add(pieces.len().saturating_sub(1) as u64);
                            for piece in pieces.into_iter().rev() {
                                dispatch.pending.push_front(piece);
                            }
                        }
                        Err(chunk) => failed.push(chunk),
                    },
                    Fate::Fail => failed.push(chunk),
                }
            }
            // The rest never started: back to the front of the queue, in order.
            for chunk in inflight.into_iter().rev().filter_map(|i| i.chunk) {
                match verdict.rest {
                    Fate::Fail => failed.push(chunk),
                    Fate::Requeue | Fate::Retry | Fate::Split => dispatch.pending.push_front(chunk),
                }
            }
        }
        // A failed initializer is a failed start: three in a row leave the
        // slot empty, and once no worker is left the work fails with it.
        let startup = match w.init_error.take() {
            Some(source) => Some(Error::Initializer {
                worker_id: slot,
                source,
            }),
            None => verdict.startup,
        };
        if let Some(e) = startup {
            if self.phase == Phase::Starting {
                // A worker that never connected held no work.
                debug_assert!(failed.is_empty());
                self.startup_failed(e);
                return;
            }
            self.slots[slot].start_failures += 1;
            self.slots[slot].last_start_error = Some(e);
        }
        // While draining, a replacement is needed only for queued work.
        let queued = !self.shared.dispatch().pending.is_empty();
        // Remote workers (slots past the local ones) are their launcher's to replace.
        let replace = self.config.replace_workers
            && slot < self.config.workers
            && (self.phase == Phase::Running || matches!(self.phase, Phase::Draining(_)) && queued)
            && self.slots[slot].start_failures < MAX_START_FAILURES;
        if replace {
            if !retiring {
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
            let pending = {
                let mut dispatch = self.shared.dispatch();
                dispatch.refuse(e.clone());
                std::mem::take(&mut dispatch.pending)
            };
            for chunk in pending {
                self.shared.finish(chunk, Err(e.clone()));
            }
        }
        for chunk in failed {
            self.shared.finish(chunk, Err(culprit.clone()));
        }
    }

    /// A pool of remote workers only is ready once it listens: its task
    /// list is the registry `procpool::init` recorded, which every worker
    /// that joins must match (`Pool::wait_for_workers` is the gate).
    fn start_remote_only(&mut self) {
        match procpool_ipc::task::registered_catalog() {
            Some(catalog) => {
                self.tasks = Some(catalog.clone());
                self.phase = Phase::Running;
                if let Some(ready) = self.ready_tx.take() {
                    let _ = ready.send(Ok(catalog.clone()));
                }
            }
            None => self.startup_failed(Error::InvalidSetting {
                setting: "workers",
                reason: "a pool without local workers takes its task list from the registry given to procpool::init, which this program did not call",
            }),
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

    /// Kills a worker; its lane takes nothing more.
    fn kill(&mut self, slot: usize, why: Kill) {
        if let Some(w) = self.slots[slot].worker.as_mut() {
            if w.killed.is_none() || matches!(why, Kill::Terminated) {
                w.killed = Some(why);
            }
            w.kill();
            if let Some(lane) = self.shared.dispatch().lanes[slot].as_mut() {
                lane.open = false;
            }
        }
    }

    /// Moves stops along: a drain whose work is done becomes a stop, and a
    /// stop tells every idle worker to exit.
    fn tick(&mut self) {
        let mut dirty = Dirty::default();
        let mut dispatch = self.shared.dispatch();
        if matches!(self.phase, Phase::Draining(_)) && dispatch.is_idle() {
            self.phase = Phase::Stopping(Instant::now() + STOP_WAIT);
        }
        if matches!(self.phase, Phase::Stopping(_)) {
            for lane in dispatch.lanes.iter_mut().flatten() {
                if lane.inflight.is_empty() {
                    lane.shutdown(&mut dirty);
                }
            }
        }
        let mut ended = Ended::new();
        dispatch.pump(&mut dirty, &mut ended);
        drop(dispatch);
        dirty.flush();
        self.shared.finish_ended(ended);
    }

    /// The deadline of the chunk lane `slot` is running, if it has one.
    fn task_deadline(&self, lane: &Lane) -> Option<(Instant, u64)> {
        let timeout = self.config.task_timeout?;
        let head = lane.inflight.front()?;
        let count = head.chunk.as_ref().map_or(1, |c| c.count);
        Some((head.started? + timeout.saturating_mul(count), head.id))
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut next = match self.phase {
            Phase::Draining(d) | Phase::Stopping(d) => Some(d),
            _ => None,
        };
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        let dispatch = self.shared.dispatch();
        for (slot, s) in self.slots.iter().enumerate() {
            if let Some((_, at)) = s.worker.as_ref().and_then(|w| w.gone.as_ref()) {
                consider(*at + LINGER);
                consider(*at + LINGER + STOP_WAIT);
                continue;
            }
            let Some(w) = s.worker.as_ref().filter(|w| w.killed.is_none()) else {
                continue;
            };
            if !w.ready {
                consider(w.spawned + self.config.start_timeout);
            } else if let Some((deadline, _)) = dispatch.lanes[slot]
                .as_ref()
                .and_then(|l| self.task_deadline(l))
            {
                consider(deadline);
            }
        }
        next
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
            // A child that closed its connection but lingers is killed; one
            // whose exit is never reported is given up on (reaped at the end).
            if let Some(w) = self.slots[slot].worker.as_mut()
                && let Some((_, at)) = w.gone
            {
                if now >= at + LINGER + STOP_WAIT {
                    w.exit.get_or_insert(None);
                    self.end_if_over(slot);
                } else if now >= at + LINGER && w.killed.is_none() {
                    self.kill(slot, Kill::Broken);
                }
                continue;
            }
            let Some(w) = self.slots[slot]
                .worker
                .as_ref()
                .filter(|w| w.killed.is_none())
            else {
                continue;
            };
            if !w.ready && now >= w.spawned + self.config.start_timeout {
                self.kill(slot, Kill::StartTimeout);
                continue;
            }
            let expired = {
                let dispatch = self.shared.dispatch();
                dispatch.lanes[slot]
                    .as_ref()
                    .and_then(|l| self.task_deadline(l))
                    .filter(|(d, _)| now >= *d)
            };
            if let Some((_, chunk)) = expired {
                let timeout = self.config.task_timeout.unwrap_or_default();
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
        self.shared.close(Error::Terminated);
        for slot in 0..self.slots.len() {
            if let Some(mut w) = self.slots[slot].worker.take() {
                let status = w.kill_and_reap();
                if w.peer().is_none() {
                    self.shared.record_exit(w.pid, status);
                }
                self.shared.set_pid(slot, None);
                self.shared
                    .stats
                    .workers_alive
                    .fetch_sub(1, Ordering::Relaxed);
            }
        }
        let mut dispatch = self.shared.dispatch();
        let mut left: Vec<_> = std::mem::take(&mut dispatch.pending).into_iter().collect();
        for lane in dispatch.lanes.iter_mut().filter_map(Option::take) {
            // Every worker was reaped above.
            hub::reaped(lane.link.id());
            left.extend(lane.inflight.into_iter().filter_map(|i| i.chunk));
        }
        drop(dispatch);
        for chunk in left {
            self.shared.finish(chunk, Err(Error::Terminated));
        }
        if let Some(ready) = self.ready_tx.take() {
            let _ = ready.send(Err(Error::Terminated));
        }
        self.shared.exits_over();
    }
}
