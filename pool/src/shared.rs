//! What the pool's threads share: [`Shared`] (dispatch, accounting,
//! counters, the interrupt signal), and [`Shared::finish`], the one exit of
//! every chunk.

use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use procpool_ipc::link::Dirty;
use procpool_ipc::shm::body::{BodyPool, Encoded};

use crate::Error;
use crate::config::Config;
use crate::dispatch::{Dispatch, Ended};
use crate::joinable::Accounting;
use crate::msg::Msg;
use crate::wake::WakerSet;
use crate::work::{BYTES_AHEAD_PER_WORKER, Chunk, Job, Outcome, Results, Spares};
use procpool_ipc::sync::{lock, wait_until};

/// State shared between the pool handle, its callers, the reader threads
/// and the supervisor.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) accounting: Accounting,
    dispatch: Mutex<Dispatch>,
    pub(crate) closed: AtomicBool,
    pub(crate) interrupted: AtomicBool,
    /// The stop is a `terminate`: blocked calls say `Terminated`.
    terminated: AtomicBool,
    /// Whether the supervisor wants to hear of every finished chunk
    /// (task timeouts to track, or a stop waiting for the work to end).
    pub(crate) watch: AtomicBool,
    /// Wakes the supervisor.
    pub(crate) wake: Sender<Msg>,
    /// Dropped on interrupt: every `select` on `interrupt_rx` wakes at once.
    interrupt_tx: Mutex<Option<Sender<()>>>,
    pub(crate) interrupt_rx: Receiver<()>,
    pub(crate) pids: Mutex<Vec<Option<u32>>>,
    pub(crate) stats: Counters,
    /// Workers that completed their handshake, and a signal when it changes.
    ready: Mutex<usize>,
    ready_cv: Condvar,
    /// Async callers to wake when the pool stops.
    pub(crate) stop_wakers: WakerSet,
    /// Workers that left, by pid, with their exit status (recorded only
    /// when workers are not replaced, as for a `Process`, so it stays
    /// small), and a signal when one is added.
    exits: Option<(Mutex<Exits>, Condvar)>,
    /// Payload buffers of answered chunks, for the next chunks to reuse.
    pub(crate) spares: Spares,
    /// Shared segments of answered chunks' large payloads, likewise.
    pub(crate) bodies: std::sync::Arc<BodyPool>,
}

/// Workers that left, for [`Shared::wait_exit`].
#[derive(Debug, Default)]
struct Exits {
    /// By pid, with the exit status.
    left: Vec<(u32, Option<ExitStatus>)>,
    /// The supervisor has ended: every worker has left.
    over: bool,
    /// Waiters in `procpool::wait` (see [`Shared::watch_exit`]).
    wakers: Vec<std::task::Waker>,
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

/// Bytes of payload buffers, and of shared segments, a pool keeps for
/// reuse: what its callers may have encoded ahead, at most 256 MiB (kept
/// until the pool is dropped).
fn spare_cap(config: &Config) -> usize {
    (config.workers.max(1) * BYTES_AHEAD_PER_WORKER).min(256 << 20)
}

impl Shared {
    pub(crate) fn new(config: &Config, wake: Sender<Msg>) -> Self {
        let (interrupt_tx, interrupt_rx) = crossbeam_channel::bounded(0);
        Self {
            accounting: Accounting::default(),
            dispatch: Mutex::new(Dispatch::new(config)),
            closed: AtomicBool::new(false),
            interrupted: AtomicBool::new(false),
            terminated: AtomicBool::new(false),
            watch: AtomicBool::new(config.task_timeout.is_some()),
            wake,
            interrupt_tx: Mutex::new(Some(interrupt_tx)),
            interrupt_rx,
            pids: Mutex::new(vec![None; config.workers]),
            stats: Counters::default(),
            ready: Mutex::new(0),
            ready_cv: Condvar::new(),
            stop_wakers: WakerSet::default(),
            exits: (!config.replace_workers)
                .then(|| (Mutex::new(Exits::default()), Condvar::new())),
            spares: Spares::new(spare_cap(config)),
            bodies: BodyPool::new(spare_cap(config)),
        }
    }

    pub(crate) fn dispatch(&self) -> MutexGuard<'_, Dispatch> {
        lock(&self.dispatch)
    }

    /// Queues a chunk and sends it at once if a worker has room. On refusal
    /// the chunk comes back with the reason.
    #[allow(clippy::result_large_err)] // the chunk comes back, as in crossbeam's `SendError`
    pub(crate) fn submit(&self, chunk: Chunk) -> Result<(), (Chunk, Error)> {
        let mut dirty = Dirty::default();
        let mut ended = Ended::new();
        let started = {
            let mut dispatch = self.dispatch();
            if let Some(e) = &dispatch.refuse {
                return Err((chunk, e.clone()));
            }
            self.accounting.add(1);
            dispatch.pending.push_back(chunk);
            dispatch.pump(&mut dirty, &mut ended)
        };
        dirty.flush();
        self.finish_ended(ended);
        if started && self.watch.load(Ordering::Relaxed) {
            let _ = self.wake.send(Msg::Wake);
        }
        Ok(())
    }

    /// Leaves the books: the chunk's outcome (for its items not reported
    /// yet) goes to its caller and the JoinableQueue counter goes down by
    /// one. Every chunk passes here exactly once, whoever ends it, and
    /// never under the dispatch lock.
    pub(crate) fn finish(&self, mut chunk: Chunk, result: Result<Results, Error>) {
        // Before the outcome goes out, so that the caller's next chunk finds it.
        // (A payload in shared memory goes back to its pool as it drops.)
        if let Encoded::Bytes(bytes) = std::mem::take(&mut chunk.payload) {
            self.spares.put(bytes);
        }
        let count = chunk.unreported();
        let result = result.map(|mut r| {
            r.elapsed_ns = r.elapsed_ns.saturating_sub(chunk.reported_ns);
            r
        });
        let outcome = Outcome {
            first: chunk.first + u64::from(chunk.reported),
            count,
            last: chunk.closes,
            result,
        };
        // With every item reported already, only the end is news.
        if count > 0 || chunk.closes {
            self.deliver(&chunk.job, outcome);
        }
        self.accounting.done(1);
    }

    /// Hands results to their caller, counting them; part of a chunk when
    /// a worker reported them early.
    pub(crate) fn deliver(&self, job: &Job, outcome: Outcome) {
        let stats = &self.stats;
        let n = u64::from(outcome.count);
        if job.cancelled.load(Ordering::Relaxed) {
            stats.cancelled.fetch_add(n, Ordering::Relaxed);
        } else {
            match &outcome.result {
                Ok(_) => stats.completed.fetch_add(n, Ordering::Relaxed),
                Err(_) => stats.failed.fetch_add(n, Ordering::Relaxed),
            };
            // A caller that went away no longer wants the outcome.
            let _ = job.sink.send(outcome);
            job.waker.wake();
        }
    }

    /// Finishes chunks that ended under the dispatch lock.
    pub(crate) fn finish_ended(&self, ended: Ended) {
        for (chunk, e) in ended {
            self.finish(chunk, Err(e));
        }
    }

    /// Refuses new work from now on.
    pub(crate) fn close(&self, why: Error) {
        self.closed.store(true, Ordering::SeqCst);
        self.dispatch().refuse(why);
    }

    /// Marks the pool interrupted and wakes every blocked caller.
    pub(crate) fn interrupt(&self) {
        self.interrupted.store(true, Ordering::SeqCst);
        self.close(self.refusal());
        drop(lock(&self.interrupt_tx).take());
        self.accounting.wake_all();
        self.stop_wakers.wake_all();
    }

    /// Tells every worker to exit once its running task ends (each lane
    /// once); what is queued behind that task in the worker is dropped
    /// there.
    pub(crate) fn stop_lanes(&self) {
        let mut dirty = Dirty::default();
        for lane in self.dispatch().lanes.iter_mut().flatten() {
            lane.shutdown(&mut dirty);
        }
        dirty.flush();
    }

    /// Marks the stop a `terminate`, then interrupts: blocked calls return
    /// `Terminated`, new work is refused as `Closed`.
    pub(crate) fn terminate(&self) {
        self.terminated.store(true, Ordering::SeqCst);
        self.interrupt();
    }

    /// What a call blocked when the pool stopped returns.
    pub(crate) fn stop_error(&self) -> Error {
        if self.terminated.load(Ordering::SeqCst) {
            Error::Terminated
        } else {
            Error::Interrupted
        }
    }

    /// What a new call on a pool that refuses work returns.
    pub(crate) fn refusal(&self) -> Error {
        if self.interrupted.load(Ordering::SeqCst) && !self.terminated.load(Ordering::SeqCst) {
            Error::Interrupted
        } else {
            Error::Closed
        }
    }

    pub(crate) fn ready_changed(&self, by: isize) {
        let mut ready = lock(&self.ready);
        *ready = ready.saturating_add_signed(by);
        self.ready_cv.notify_all();
    }

    /// Workers that have completed their handshake and not left.
    pub(crate) fn ready_workers(&self) -> usize {
        *lock(&self.ready)
    }

    /// Waits until at least `n` workers are ready, or `deadline`; whether
    /// they are.
    pub(crate) fn wait_ready(&self, n: usize, deadline: Instant) -> bool {
        let mut ready = lock(&self.ready);
        while *ready < n {
            ready = match wait_until(&self.ready_cv, ready, Some(deadline)) {
                Ok(g) => g,
                Err(_) => return false,
            };
        }
        true
    }

    /// Records that worker `pid` left (its connection ended and it was
    /// reaped) with `status`, if this pool keeps such records.
    pub(crate) fn record_exit(&self, pid: u32, status: Option<ExitStatus>) {
        if let Some((exits, cv)) = &self.exits {
            let mut exits = lock(exits);
            exits.left.push((pid, status));
            let wakers = exits.wakers.clone();
            drop(exits);
            cv.notify_all();
            wakers.iter().for_each(std::task::Waker::wake_by_ref);
        }
    }

    /// Records that every worker has left (the supervisor ends).
    pub(crate) fn exits_over(&self) {
        if let Some((exits, cv)) = &self.exits {
            let mut exits = lock(exits);
            exits.over = true;
            let wakers = exits.wakers.clone();
            drop(exits);
            cv.notify_all();
            wakers.iter().for_each(std::task::Waker::wake_by_ref);
        }
    }

    /// Waits until worker `pid` has left, or `deadline`: its status
    /// (`Some(None)`: the system reaped it, or it never started), `None`
    /// on timeout or if this pool keeps no records.
    pub(crate) fn wait_exit(
        &self,
        pid: u32,
        deadline: Option<Instant>,
    ) -> Option<Option<ExitStatus>> {
        let (exits, cv) = self.exits.as_ref()?;
        let mut exits = lock(exits);
        loop {
            if let Some((_, status)) = exits.left.iter().find(|(p, _)| *p == pid) {
                return Some(*status);
            }
            if exits.over {
                return Some(None);
            }
            exits = wait_until(cv, exits, deadline).ok()?;
        }
    }

    /// Whether worker `pid` has left (as [`wait_exit`](Self::wait_exit)
    /// would say at once); if not, `waker` is woken when a worker leaves,
    /// until [`unwatch_exit`](Self::unwatch_exit). A pool that keeps no
    /// exit records never says so.
    pub(crate) fn watch_exit(&self, pid: u32, waker: &std::task::Waker) -> bool {
        let Some((exits, _)) = self.exits.as_ref() else {
            return false;
        };
        let mut exits = lock(exits);
        if exits.over || exits.left.iter().any(|(p, _)| *p == pid) {
            return true;
        }
        if !exits.wakers.iter().any(|w| w.will_wake(waker)) {
            exits.wakers.push(waker.clone());
        }
        false
    }

    /// Drops `waker`'s registration made by [`watch_exit`](Self::watch_exit).
    pub(crate) fn unwatch_exit(&self, waker: &std::task::Waker) {
        if let Some((exits, _)) = self.exits.as_ref() {
            lock(exits).wakers.retain(|w| !w.will_wake(waker));
        }
    }

    /// Records a local worker's pid (remote workers' pids are not ours).
    pub(crate) fn set_pid(&self, slot: usize, pid: Option<u32>) {
        if let Some(p) = lock(&self.pids).get_mut(slot) {
            *p = pid;
        }
    }
}
