//! Dispatch: the chunks waiting for a worker, and each worker's *lane* of
//! chunks sent to it and not yet answered.
//!
//! One lock guards both, and three kinds of threads take it:
//!
//! - a **caller** submitting a chunk queues it and, if a worker has room,
//!   writes it to that worker at once;
//! - a worker's **reader thread**, on a result, takes the chunk off the lane,
//!   refills the lane from the queue, and hands the result to its caller;
//! - the **supervisor** opens a lane when a worker is ready, closes it when
//!   the worker is to be killed, and takes it away when the worker is gone.
//!
//! So in steady state a chunk travels caller → worker → reader → caller,
//! and the supervisor thread stays asleep.
//!
//! # A chunk's life
//!
//! ```text
//! submit ──► pending ──pump──► lane.inflight ──DONE──► caller's channel        (finish)
//!              ▲                     │ └─PART─► caller's channel (items reported early)
//!              │    worker dies:     ├─ head chunk (it was running): its unreported
//!              │                     │  items are retried, failed or split (see blame)
//!              └────── requeue ──────┴─ chunks queued behind it (never started)
//! cancelled job: dropped when its turn comes                                     (finish)
//! ```
//!
//! Every chunk leaves through [`Shared::finish`](crate::shared::Shared::finish),
//! which decrements the JoinableQueue counter: exactly once per chunk.
//! Dispatch never calls it: a chunk that ends under the dispatch lock is
//! returned ([`Ended`]) and finished after the lock is released.
//!
//! A chunk joins its lane *before* its frame is written, since another
//! thread may flush the link at any moment and the answer must find it.
//! Writing a frame only appends it to the link's outbox (see
//! `procpool_ipc::link`): nothing under the dispatch lock waits on a worker.
//! Lock order: the dispatch lock, then a link's outbox lock.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use procpool_ipc::IpcError;
use procpool_ipc::link::{Dirty, Link};
use procpool_ipc::proto::{Message, run_head};
use procpool_ipc::shm::body::Encoded;

use crate::Error;
use crate::config::Config;
use crate::work::{Chunk, Job};

/// With automatic prefetch, the work (by measured time) to keep queued at
/// each worker.
const QUEUED_WORK_NS: u64 = 250_000;
/// The most chunks a lane holds with automatic prefetch.
const MAX_DEPTH: usize = 64;

/// Chunks that dispatch took off its books, each with its error, to be
/// finished by the caller after the dispatch lock is released.
pub(crate) type Ended = Vec<(Chunk, Error)>;

/// A chunk sent to a worker and not yet answered.
#[derive(Debug)]
pub(crate) struct Inflight {
    pub(crate) id: u64,
    /// `None` for the initializer.
    pub(crate) chunk: Option<Chunk>,
    /// When the worker started it (it runs its lane in order).
    pub(crate) started: Option<Instant>,
    /// Expected run time, from the task's measured pace (`None`: unknown).
    est_ns: Option<u64>,
}

/// What dispatch knows of one worker.
#[derive(Debug)]
pub(crate) struct Lane {
    pub(crate) key: u64,
    pub(crate) pid: u32,
    pub(crate) link: Arc<Link>,
    pub(crate) inflight: VecDeque<Inflight>,
    /// Takes new chunks.
    pub(crate) open: bool,
    /// Reached `max_tasks_per_worker`: told to shut down once idle.
    pub(crate) retiring: bool,
    pub(crate) shutdown_sent: bool,
    /// Tasks sent to this worker so far.
    pub(crate) assigned: u64,
}

impl Lane {
    pub(crate) fn new(key: u64, pid: u32, link: Arc<Link>) -> Self {
        Self {
            key,
            pid,
            link,
            inflight: VecDeque::new(),
            open: true,
            retiring: false,
            shutdown_sent: false,
            assigned: 0,
        }
    }

    /// Tells the worker to exit (once); it finishes the running task.
    pub(crate) fn shutdown(&mut self, dirty: &mut Dirty) {
        if !self.shutdown_sent {
            self.shutdown_sent = true;
            self.open = false;
            if self.link.write(&Message::Shutdown).is_ok() {
                dirty.mark(&self.link);
            }
        }
    }
}

/// The queue of chunks and the lanes; see the module docs.
#[derive(Debug)]
pub(crate) struct Dispatch {
    pub(crate) pending: VecDeque<Chunk>,
    pub(crate) lanes: Vec<Option<Lane>>,
    next_id: u64,
    /// Why new submissions are refused, once they are.
    pub(crate) refuse: Option<Error>,
    /// Chunks a lane may hold, the running one included: fixed, or `None`
    /// for automatic (see [`Dispatch::has_room`]).
    depth: Option<usize>,
    /// Moving average of each task's time per item, as measured by the
    /// workers: (task number, nanoseconds).
    item_ns: Vec<(u32, u64)>,
    limit: Option<u64>,
    /// The pool's `task_timeout`, to judge results that arrive after it.
    timeout: Option<Duration>,
    /// The initializer's encoded argument (empty for `()`).
    init_arg: Arc<[u8]>,
    /// The lane [`pump`](Self::pump) chose last, and for which job: where
    /// the search for the least loaded lane starts (see
    /// [`start`](Self::start)).
    last: Option<(usize, Weak<Job>)>,
}

impl Dispatch {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            pending: VecDeque::new(),
            lanes: (0..config.workers).map(|_| None).collect(),
            next_id: 0,
            refuse: None,
            depth: config.prefetch.map(|p| p + 1),
            item_ns: Vec::new(),
            limit: config.max_tasks_per_worker,
            timeout: config.task_timeout,
            init_arg: config
                .initializer
                .as_ref()
                .map_or_else(|| Arc::from([]), |(_, arg)| Arc::clone(arg)),
            last: None,
        }
    }

    pub(crate) fn lane_mut(&mut self, slot: usize, key: u64) -> Option<&mut Lane> {
        self.lanes.get_mut(slot)?.as_mut().filter(|l| l.key == key)
    }

    /// Refuses new submissions with `e` from now on (the first reason stays).
    pub(crate) fn refuse(&mut self, e: Error) {
        self.refuse.get_or_insert(e);
    }

    /// Whether lane `lane` takes one more chunk expected to run `est_ns`.
    /// Fixed prefetch: while it holds fewer than the depth. Automatic: while
    /// it holds fewer than three, or the work queued there (by each task's
    /// measured pace) stays within [`QUEUED_WORK_NS`] — so tiny tasks do not
    /// leave a worker idle for a round trip each, and slow or unknown ones
    /// are not hoarded by one worker while another has nothing.
    fn has_room(&self, lane: &Lane, est_ns: Option<u64>) -> bool {
        let held = lane.inflight.len();
        match self.depth {
            Some(depth) => held < depth,
            None if held < 3 => true,
            None if held >= MAX_DEPTH => false,
            None => {
                let queued = lane
                    .inflight
                    .iter()
                    .try_fold(0u64, |sum, i| i.est_ns.map(|e| sum.saturating_add(e)));
                matches!((queued, est_ns), (Some(q), Some(e)) if q.saturating_add(e) <= QUEUED_WORK_NS)
            }
        }
    }

    /// The expected run time of `chunk`, if its task's pace is known.
    fn estimate(&self, chunk: &Chunk) -> Option<u64> {
        let per_item = self.item_ns.iter().find(|(t, _)| *t == chunk.task)?.1;
        Some(per_item.saturating_mul(u64::from(chunk.count)))
    }

    /// Whether no chunk is queued or in flight.
    pub(crate) fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.lanes.iter().flatten().all(|l| l.inflight.is_empty())
    }

    /// Sends chunk (or, with `None`, the initializer `task` on its argument) to lane
    /// `slot`; returns whether it is the lane's head (it starts now).
    pub(crate) fn send(
        &mut self,
        slot: usize,
        task: u32,
        chunk: Option<Chunk>,
        dirty: &mut Dirty,
    ) -> Result<bool, (Option<Chunk>, IpcError)> {
        let id = self.next_id;
        self.next_id += 1;
        let limit = self.limit;
        let est_ns = chunk.as_ref().and_then(|c| self.estimate(c));
        let Some(lane) = self.lanes[slot].as_mut() else {
            return Err((chunk, IpcError::Malformed("no such worker")));
        };
        let head = lane.inflight.is_empty();
        lane.inflight.push_back(Inflight {
            id,
            chunk,
            started: head.then(Instant::now),
            est_ns,
        });
        let sent = lane.inflight.back().expect("just pushed");
        let (task, count, payload) = match &sent.chunk {
            Some(c) => match &c.payload {
                Encoded::Bytes(bytes) => (c.task, c.count, Ok(&bytes[..])),
                Encoded::Shared(body) => (c.task, c.count, Err(body)),
            },
            None => (task, 1, Ok(&self.init_arg[..])),
        };
        let written = match payload {
            Ok(payload) => lane.link.write(&Message::Run {
                id,
                task,
                count,
                payload,
            }),
            // Large inputs, encoded in shared memory: named, not copied
            // (copied only for a worker that cannot map them).
            Err(body) => match lane.link.write_shared(&run_head(id, task, count), body) {
                Ok(true) => Ok(()),
                Ok(false) => lane.link.write(&Message::Run {
                    id,
                    task,
                    count,
                    payload: &body.to_vec(),
                }),
                Err(e) => Err(e),
            },
        };
        match written {
            Ok(()) => {
                dirty.mark(&lane.link);
                if sent.chunk.is_some() {
                    lane.assigned += u64::from(count);
                    if limit.is_some_and(|n| lane.assigned >= n) {
                        lane.retiring = true;
                        lane.open = false;
                    }
                }
                Ok(head)
            }
            Err(e) => Err((lane.inflight.pop_back().and_then(|i| i.chunk), e)),
        }
    }

    /// The slot where the search for a lane for a chunk of `job` starts,
    /// which wins a tie for least loaded: for the job of the last chunk
    /// sent, the slot after that chunk's; for another job, that chunk's slot.
    ///
    /// So the chunks of one job take turns among idle lanes. That matters
    /// when workers answer faster than a job's chunks come: every lane is
    /// then idle at each chunk, and a fixed tie-break (the lowest slot)
    /// sent nearly every chunk to the first workers that joined while the
    /// others idled, all of them on one node of a cluster (the one-node
    /// `sbatch` runs of `tests/slurm.rs`).
    ///
    /// A new job, though, goes back to the lane the last chunk went to if
    /// that lane is among the least loaded: calls made one after another
    /// (`apply` in a loop) stay on one worker rather than waking each idle
    /// worker in turn. Taking
    /// turns there cost a fifth more CPU per `apply` (63 against 52 µs per
    /// call, one more `sched_yield` every other call, all processes on one
    /// core: see the commit that made this choice).
    fn start(&self, job: &Arc<Job>) -> usize {
        match &self.last {
            None => 0,
            // The `Weak` keeps the job's allocation: no new job can take
            // its address while it is compared.
            Some((slot, last)) if std::ptr::eq(last.as_ptr(), Arc::as_ptr(job)) => slot + 1,
            Some((slot, _)) => *slot,
        }
    }

    /// Sends queued chunks to open lanes with room, the least loaded first,
    /// ties broken by [`start`](Self::start); returns whether some lane
    /// started a chunk (a timeout starts). Chunks
    /// that end here (cancelled, or too large to send) go to `ended`, for
    /// the caller to [`finish`](crate::shared::Shared::finish) once it has
    /// released the dispatch lock.
    pub(crate) fn pump(&mut self, dirty: &mut Dirty, ended: &mut Ended) -> bool {
        let mut started = false;
        while let Some(chunk) = self.pending.pop_front() {
            if chunk.job.cancelled.load(Ordering::Relaxed) {
                ended.push((chunk, Error::Closed));
                continue;
            }
            let count = u64::from(chunk.count);
            let limit = self.limit;
            let est_ns = self.estimate(&chunk);
            let lanes = self.lanes.len();
            let start = self.start(&chunk.job);
            let target = (0..lanes)
                .map(|k| (start + k) % lanes)
                .filter_map(|i| Some((i, self.lanes[i].as_ref()?)))
                .filter(|(_, l)| {
                    l.open
                        && self.has_room(l, est_ns)
                        // A worker never runs more than its limit (a chunk larger
                        // than the limit goes to a fresh worker whole).
                        && limit.is_none_or(|n| l.assigned == 0 || l.assigned + count <= n)
                })
                .min_by_key(|(_, l)| l.inflight.len())
                .map(|(i, _)| i);
            let Some(slot) = target else {
                self.pending.push_front(chunk);
                break;
            };
            self.last = Some((slot, Arc::downgrade(&chunk.job)));
            match self.send(slot, 0, Some(chunk), dirty) {
                Ok(head) => started |= head,
                // The packer keeps chunks within the payload limit, so this
                // frame could not be written for another reason: refuse
                // the chunk rather than break the connection.
                Err((chunk, e @ IpcError::FrameTooLarge { .. })) => {
                    if let Some(chunk) = chunk {
                        ended.push((chunk, Error::Encode(Arc::new(e))));
                    }
                }
                Err((chunk, e)) => {
                    // The connection is broken: its reader will report the
                    // worker gone. Until then it takes nothing.
                    if let Some(lane) = self.lanes[slot].as_mut() {
                        tracing::warn!(worker_id = slot, pid = lane.pid, error = %e, "cannot write to worker");
                        lane.open = false;
                    }
                    if let Some(chunk) = chunk {
                        self.pending.push_front(chunk);
                    }
                }
            }
        }
        for lane in self.lanes.iter_mut().flatten() {
            if lane.retiring && lane.inflight.is_empty() {
                lane.shutdown(dirty);
            }
        }
        started
    }

    /// Records that the worker on lane `slot` reported the next `count`
    /// items of chunk `id`, the one it is running; returns the job and the
    /// index of the first of them, or `None` if the worker was not running
    /// that chunk or it has fewer items left.
    pub(crate) fn part(
        &mut self,
        slot: usize,
        key: u64,
        id: u64,
        count: u32,
        elapsed_ns: u64,
    ) -> Option<(Arc<Job>, u64)> {
        let lane = self.lane_mut(slot, key)?;
        let head = lane.inflight.front_mut().filter(|f| f.id == id)?;
        let chunk = head.chunk.as_mut()?;
        if count > chunk.unreported() {
            return None;
        }
        let first = chunk.first + u64::from(chunk.reported);
        chunk.reported += count;
        chunk.reported_ns = chunk.reported_ns.saturating_add(elapsed_ns);
        Some((Arc::clone(&chunk.job), first))
    }

    /// Takes the answered chunk `id` off lane `slot`, whose last `count`
    /// items it answered; `None` if the worker answered something it was
    /// not running, or another number of items.
    ///
    /// The second part is the error the answer stands for instead of its
    /// results: a `Timeout` when the chunk ran past its timeout by the
    /// worker's own clock (`elapsed_ns` is the whole chunk's run time) and
    /// the answer is of one item, the one that overran. The supervisor
    /// kills such a worker at the deadline; one late to look (busy
    /// starting a process, descheduled) must not turn an overrun into a
    /// success. Several items answered together are accepted: which of
    /// them overran is unknown, and their results are sound.
    pub(crate) fn complete(
        &mut self,
        slot: usize,
        key: u64,
        id: u64,
        count: u32,
        elapsed_ns: u64,
    ) -> Option<(Inflight, Option<Error>)> {
        let timeout = self.timeout;
        let lane = self.lane_mut(slot, key)?;
        let head = lane.inflight.front().filter(|f| f.id == id)?;
        let left = head.chunk.as_ref().map_or(1, Chunk::unreported);
        if left != count {
            return None;
        }
        let overran = match (timeout, &head.chunk) {
            (Some(t), Some(chunk)) if count == 1 => {
                let budget = t.saturating_mul(chunk.count);
                Duration::from_nanos(elapsed_ns) > budget
            }
            _ => false,
        };
        let late = overran.then(|| Error::Timeout {
            timeout: timeout.unwrap_or_default(),
            worker_id: slot,
            pid: lane.pid,
            killed: false,
        });
        let done = lane.inflight.pop_front();
        if let Some(next) = lane.inflight.front_mut() {
            // The worker started the next chunk as this one ended: by its
            // own clock, `elapsed_ns` after this one started. A master slow
            // to read the answer would otherwise start the next chunk's
            // timeout late, and a task could overrun it unnoticed.
            let now = Instant::now();
            let ended = done
                .as_ref()
                .and_then(|d| d.started)
                .and_then(|t| t.checked_add(Duration::from_nanos(elapsed_ns)));
            next.started = Some(ended.map_or(now, |t| t.min(now)));
        }
        if let Some(chunk) = done.as_ref().and_then(|d| d.chunk.as_ref()) {
            let ns = (elapsed_ns / u64::from(chunk.count.max(1))).max(1);
            match self.item_ns.iter_mut().find(|(t, _)| *t == chunk.task) {
                Some((_, avg)) => *avg = (*avg * 3 + ns) / 4,
                None => self.item_ns.push((chunk.task, ns)),
            }
        }
        done.map(|d| (d, late))
    }
}

#[cfg(test)]
mod tests;
