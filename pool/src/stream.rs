//! The caller's side of a job: encodes inputs into chunks, submits them
//! within a bounded window, and decodes results in order or as they come.
//!
//! `map`, `imap`, `imap_unordered` and `submit` are all this one machine
//! with different settings.

use std::any::Any;
use std::borrow::Borrow;
use std::collections::{BTreeMap, VecDeque};
use std::iter::Fuse;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crossbeam_channel::{Receiver, select};
use procpool_ipc::frame::ENCODING_SLACK;
use procpool_ipc::shm::body::{BodyPool, Encoded};
use procpool_ipc::task::Payload;
use procpool_ipc::{IpcError, TaskError, codec};
use serde::Serialize;

use crate::work::{BYTES_AHEAD_PER_WORKER, Chunk, Job, Outcome, Results, Skip, Spares};
use crate::{Error, Oversized, Pool};

/// The length of the first encoded `I` in `bytes` (see [`Skip`]).
pub(crate) fn skip<I: Payload>(bytes: &[u8]) -> Option<usize> {
    codec::decode::<I>(bytes).ok().map(|(_, used)| used)
}

/// How many items go into one chunk.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Chunking {
    /// As the caller set it (`PoolBuilder::chunk_size`).
    Fixed(usize),
    /// The pool's even share of a `map`'s inputs; a chunk also closes
    /// once its inputs take [`CHUNK_BYTES`].
    Even(usize),
    /// Sized so that one chunk is about [`TARGET_CHUNK_NS`] of work.
    Adaptive { current: usize, max: usize },
}

const TARGET_CHUNK_NS: u64 = 2_000_000;

/// Encoded bytes past which a chunk the pool sized takes no more inputs.
///
/// A worker starts on a chunk only once the master has encoded and sent
/// all of it, so with large inputs several to a chunk the workers wait
/// while the master encodes, and the master waits for answers to free
/// room (see [`BYTES_AHEAD_PER_WORKER`]). Past 1 MiB a chunk's own cost (a
/// frame, a shared-memory segment's `FREE`) is small beside its copies.
/// Measured with this limit read from a variable for the occasion
/// (`PROCPOOL_BENCH_ROLE=case perf stat -e task-clock compare-*
/// map_big_len|map_big_echo 16 16777216`, three alternating rounds,
/// loaded machine): `map` over 16 × 16 MiB
/// went from chunks of 2 inputs to 1: len 0.74/0.79/0.70 → 0.68/0.94/0.91
/// GiB/s, 821/797/846 → 745/661/730 ms of CPU; echo 0.36/0.37/0.35 →
/// 0.47/0.40/0.38 GiB/s, 1519/1475/1518 → 1271/1447/1448 ms. Echoing 2048
/// inputs of 64 KiB (chunks of 16 instead of 256): 790/750 → 696/482 ms;
/// 512 of 256 KiB: 855/830 → 682/597 ms.
pub(crate) const CHUNK_BYTES: usize = 1 << 20;

impl Chunking {
    /// How many items the next chunk takes.
    fn size(self) -> usize {
        match self {
            Chunking::Fixed(n) | Chunking::Even(n) | Chunking::Adaptive { current: n, .. } => n,
        }
    }

    /// Adapts an adaptive size to a chunk of `count` items that ran
    /// `elapsed_ns`.
    fn learn(&mut self, count: u32, elapsed_ns: u64) {
        if let Chunking::Adaptive { current, max } = self {
            let per_item = (elapsed_ns / u64::from(count.max(1))).max(1);
            let ideal = usize::try_from(TARGET_CHUNK_NS / per_item).unwrap_or(usize::MAX);
            // Grow at most 4× per step, so one fast outlier cannot make a giant chunk.
            *current = ideal.clamp(1, (*current * 4).min(*max));
        }
    }
}

/// How many inputs the next chunk should take, given the window, the
/// inputs outstanding and the chunks out; `None` to wait for room for a
/// whole chunk rather than send a sliver (unless nothing is out).
fn next_chunk_len(
    window: usize,
    outstanding: usize,
    chunk_size: usize,
    chunks_out: usize,
) -> Option<usize> {
    let room = window - outstanding;
    let want = chunk_size.min(window);
    if room < want && chunks_out > 0 {
        return None;
    }
    Some(want.min(room))
}

/// Packs encoded inputs, one at a time, into chunk payloads of at most
/// `limit` bytes (the pool's payload limit: a chunk's `RUN` frame then fits
/// the connection's frame limit).
#[derive(Debug)]
pub(crate) struct Packer<'s> {
    payload: Encoded,
    count: u32,
    limit: u64,
    /// Where the next chunk's buffer comes from.
    spares: Option<&'s Spares>,
    /// Where a payload goes once it passes `spill_at` bytes (the shared
    /// memory threshold): encoded there, it is sent to a local worker
    /// without a copy.
    bodies: Option<&'s Arc<BodyPool>>,
    spill_at: usize,
}

/// What packing one input gave, to be handled in this order: a full chunk
/// to submit (without the input), then the input's own failure.
#[derive(Debug, Default)]
pub(crate) struct Packed {
    pub(crate) full: Option<(Encoded, u32)>,
    pub(crate) failed: Option<Error>,
}

impl<'s> Packer<'s> {
    pub(crate) fn new(limit: u64) -> Self {
        Self {
            payload: Encoded::default(),
            count: 0,
            limit,
            spares: None,
            bodies: None,
            spill_at: usize::MAX,
        }
    }

    /// A packer whose chunks are encoded into buffers taken from `spares`,
    /// or, once large, into shared segments of `bodies`.
    pub(crate) fn with_spares(limit: u64, spares: &'s Spares, bodies: &'s Arc<BodyPool>) -> Self {
        let spill_at = procpool_ipc::shm::transport::threshold();
        Self {
            payload: Encoded::Bytes(spares.take()),
            count: 0,
            limit,
            spares: Some(spares),
            bodies: spill_at.is_some().then_some(bodies),
            spill_at: spill_at.unwrap_or(usize::MAX),
        }
    }

    /// Inputs in the chunk being packed.
    pub(crate) fn count(&self) -> u32 {
        self.count
    }

    /// Bytes of the chunk being packed.
    pub(crate) fn len(&self) -> usize {
        self.payload.len()
    }

    /// Adds `item` to the chunk. One that does not fit after others closes
    /// the chunk and starts the next; one over the limit on its own, or
    /// that does not encode, fails (after the chunk before it, which is
    /// closed early). Nothing is encoded past the limit.
    pub(crate) fn push<I: Serialize>(&mut self, item: &I) -> Packed {
        let mark = self.payload.len();
        let room = self.limit.saturating_sub(mark as u64);
        let failed = match procpool_ipc::shm::body::encode_into_payload(
            item,
            &mut self.payload,
            self.bodies,
            self.spill_at,
            room,
        ) {
            Ok(()) => {
                self.count += 1;
                return Packed::default();
            }
            // It does not fit after the others: it starts the next chunk.
            Err(IpcError::PayloadTooLarge { len, .. }) if self.count > 0 && len <= self.limit => {
                let full = self.take();
                let failed = self.push(item).failed;
                return Packed { full, failed };
            }
            Err(IpcError::PayloadTooLarge { len, .. }) => Error::PayloadTooLarge {
                what: Oversized::Input,
                len,
                max: self.limit.saturating_sub(ENCODING_SLACK),
            },
            Err(e) => Error::encode(e),
        };
        Packed {
            full: self.take(),
            failed: Some(failed),
        }
    }

    /// Takes the chunk packed so far, if it holds any input (the next
    /// chunk's buffer comes from the spares, if any).
    pub(crate) fn take(&mut self) -> Option<(Encoded, u32)> {
        if self.count == 0 {
            return None;
        }
        let count = std::mem::take(&mut self.count);
        let next = self.spares.map(Spares::take).unwrap_or_default();
        Some((
            std::mem::replace(&mut self.payload, Encoded::Bytes(next)),
            count,
        ))
    }
}

impl Drop for Packer<'_> {
    fn drop(&mut self) {
        // A buffer taken for a chunk that never came goes back.
        if let (Some(spares), Encoded::Bytes(bytes)) = (self.spares, &mut self.payload) {
            spares.put(std::mem::take(bytes));
        }
    }
}

/// The iterator returned by [`Pool::imap`] and [`Pool::imap_unordered`]:
/// one `Result` per input item.
///
/// It takes items from its input only while fewer than the pool's `window`
/// are in flight, so memory stays flat however long the input is. Dropping
/// it cancels the work it has not dispatched yet.
///
/// `next` blocks the calling thread until a result is in. In async code,
/// poll it as a `futures_core::Stream` instead (feature `futures`, on by
/// default): the same window, woken by the pool's threads, no thread
/// blocked.
///
/// # After a stop (Ctrl-C, [`Pool::shutdown`], [`Pool::terminate`])
///
/// It takes no more input, and yields one result for every input it had
/// taken, in its usual order: the output of those that finish, including
/// those that finish during the grace period (the grace period buys exactly
/// that: the tasks running when the stop came may finish and be handed
/// out); [`Error::Interrupted`] for those that had not started;
/// [`Error::Terminated`] for those still running when the grace period ran
/// out, or after `terminate`. Then, if its input was not exhausted, one
/// more `Err(Error::Interrupted)` (or `Terminated`) stands for the inputs
/// never taken, and it ends. Waiting for the running tasks takes at most
/// the grace period (plus the time to kill the workers).
pub struct Imap<'p, I, O, It> {
    pool: &'p Pool,
    task: u32,
    input: Fuse<It>,
    job: Arc<Job>,
    rx: Receiver<Outcome>,
    ordered: bool,
    window: usize,
    chunking: Chunking,
    /// Items taken from the input and not yet yielded.
    outstanding: usize,
    /// Chunks submitted whose outcome has not come back.
    chunks_out: usize,
    /// Their encoded inputs' length, by index of their first input, and in
    /// all; no more are encoded past `bytes_ahead` (see
    /// [`BYTES_AHEAD_PER_WORKER`]).
    chunk_bytes: BTreeMap<u64, usize>,
    bytes_out: usize,
    bytes_ahead: usize,
    /// Most chunks out at once: while the adaptive size is still being
    /// learned, this keeps the first small chunks from filling the window.
    max_chunks: usize,
    /// Inputs taken so far: the index of the next one.
    next_index: u64,
    /// The index of the next item to yield, in order.
    next_yield: u64,
    reorder: BTreeMap<u64, Outcome>,
    ready: VecDeque<Outcome>,
    current: Option<Current>,
    input_done: bool,
    /// The input iterator panicked: raised again once every result of the
    /// items before it has been handed out.
    input_panic: Option<Box<dyn Any + Send>>,
    ended: bool,
    /// Key in the pool's stop set while polled as a stream.
    stop_key: Option<u64>,
    _types: PhantomData<fn(I) -> O>,
}

struct Current {
    result: Result<Results, Error>,
    /// The index in the job of the next item.
    index: u64,
    offset: usize,
    left: u32,
}

impl<'p, I: Payload, O: Payload, It> Imap<'p, I, O, It>
where
    It: Iterator,
    It::Item: Borrow<I>,
{
    pub(crate) fn new(
        pool: &'p Pool,
        task: u32,
        input: It,
        ordered: bool,
        window: usize,
        chunking: Chunking,
    ) -> Self {
        let (sink, rx) = crossbeam_channel::unbounded();
        let max_chunks = match chunking {
            Chunking::Fixed(_) | Chunking::Even(_) => usize::MAX,
            Chunking::Adaptive { .. } => {
                2 * pool.config.workers.max(1) * (pool.config.prefetch.unwrap_or(2) + 1)
            }
        };
        Self {
            pool,
            task,
            input: input.fuse(),
            job: Arc::new(Job::new(sink)),
            rx,
            ordered,
            window: window.max(1),
            chunking,
            outstanding: 0,
            chunks_out: 0,
            chunk_bytes: BTreeMap::new(),
            bytes_out: 0,
            bytes_ahead: pool.config.workers.max(1) * BYTES_AHEAD_PER_WORKER,
            max_chunks,
            next_index: 0,
            next_yield: 0,
            reorder: BTreeMap::new(),
            ready: VecDeque::new(),
            current: None,
            input_done: false,
            input_panic: None,
            ended: false,
            stop_key: None,
            _types: PhantomData,
        }
    }

    /// Takes inputs while the window has room, submitting them in chunks;
    /// the pins their handles take stay with the job (one `carry` per
    /// round, not per input: `map` of a million small items pays nothing).
    fn fill(&mut self) {
        let job = Arc::clone(&self.job);
        job.carry(|| self.fill_window());
    }

    fn fill_window(&mut self) {
        while !self.input_done
            && self.outstanding < self.window
            && self.chunks_out < self.max_chunks
            && (self.chunks_out == 0 || self.bytes_out < self.bytes_ahead)
        {
            let Some(want) = next_chunk_len(
                self.window,
                self.outstanding,
                self.chunking.size(),
                self.chunks_out,
            ) else {
                break;
            };
            let pool = self.pool;
            let shared = &pool.shared;
            let mut packer =
                Packer::with_spares(pool.config.payload_limit(), &shared.spares, &shared.bodies);
            // A chunk whose size the caller set keeps it; others close at
            // `CHUNK_BYTES`.
            let close_at = match self.chunking {
                Chunking::Fixed(_) => usize::MAX,
                Chunking::Even(_) | Chunking::Adaptive { .. } => CHUNK_BYTES,
            };
            while (packer.count() as usize) < want && packer.len() < close_at {
                let item = match catch_unwind(AssertUnwindSafe(|| self.input.next())) {
                    Ok(Some(item)) => item,
                    Ok(None) => {
                        self.input_done = true;
                        break;
                    }
                    Err(panic) => {
                        // What was taken before still runs and is yielded.
                        self.input_panic = Some(panic);
                        self.input_done = true;
                        break;
                    }
                };
                // Encoded from the borrow: `&u64` items cost no copy.
                let Packed { full, failed } = packer.push::<I>(item.borrow());
                if let Some((payload, count)) = full {
                    self.submit(payload, count);
                }
                if let Some(e) = failed {
                    self.fail_locally(e);
                }
            }
            if let Some((payload, count)) = packer.take() {
                self.submit(payload, count);
            }
        }
    }

    fn submit(&mut self, payload: Encoded, count: u32) {
        let first = self.next_index;
        self.next_index += u64::from(count);
        self.outstanding += count as usize;
        let pool = self.pool;
        let shared = &pool.shared;
        shared
            .stats
            .submitted
            .fetch_add(u64::from(count), Ordering::Relaxed);
        let skip: Skip = skip::<I>;
        self.bytes_out += payload.len();
        self.chunk_bytes.insert(first, payload.len());
        let chunk = Chunk::new(
            Arc::clone(&self.job),
            first,
            self.task,
            count,
            payload,
            skip,
        );
        self.chunks_out += 1;
        if let Err((chunk, error)) = shared.submit(chunk) {
            self.chunks_out -= 1;
            self.uncharge(chunk.first);
            shared
                .stats
                .failed
                .fetch_add(u64::from(count), Ordering::Relaxed);
            self.accept(Outcome {
                first: chunk.first,
                count,
                last: false,
                result: Err(error),
            });
        }
    }

    /// One input that never left this process (it did not encode or fit).
    fn fail_locally(&mut self, error: Error) {
        let first = self.next_index;
        self.next_index += 1;
        self.outstanding += 1;
        self.pool
            .shared
            .stats
            .submitted
            .fetch_add(1, Ordering::Relaxed);
        self.pool
            .shared
            .stats
            .failed
            .fetch_add(1, Ordering::Relaxed);
        self.accept(Outcome {
            first,
            count: 1,
            last: false,
            result: Err(error),
        });
    }

    /// Takes an outcome that arrived (or failed here).
    fn accept(&mut self, outcome: Outcome) {
        if outcome.last {
            self.chunks_out -= 1;
            self.uncharge(outcome.first);
        }
        if outcome.count == 0 {
            // The end of a chunk whose items were all reported before.
            return;
        }
        if let Ok(r) = &outcome.result {
            self.chunking.learn(outcome.count, r.elapsed_ns);
        }
        if self.ordered {
            self.reorder.insert(outcome.first, outcome);
        } else {
            self.ready.push_back(outcome);
        }
    }

    /// Forgets the bytes of the chunk holding input `index` (its last
    /// outcome came: chunks hold consecutive inputs, so it is the one that
    /// starts at or before it).
    fn uncharge(&mut self, index: u64) {
        let first = self
            .chunk_bytes
            .range(..=index)
            .next_back()
            .map(|(&k, _)| k);
        if let Some(bytes) = first.and_then(|k| self.chunk_bytes.remove(&k)) {
            self.bytes_out -= bytes;
        }
    }

    fn next_outcome(&mut self) -> Option<Outcome> {
        if self.ordered {
            let outcome = self.reorder.remove(&self.next_yield)?;
            self.next_yield += u64::from(outcome.count);
            Some(outcome)
        } else {
            self.ready.pop_front()
        }
    }

    /// The next item of the current chunk.
    fn take_current(&mut self) -> Option<Result<O, Error>> {
        let current = self.current.as_mut()?;
        if current.left == 0 {
            self.current = None;
            return None;
        }
        current.left -= 1;
        let index = current.index;
        current.index += 1;
        self.outstanding -= 1;
        let item = match &current.result {
            Err(e) => Err(e.clone()),
            Ok(results) => {
                match results.decode::<Result<O, TaskError>>(current.offset) {
                    Ok((result, used)) => {
                        current.offset += used;
                        result.map_err(|e| {
                            self.pool
                                .shared
                                .stats
                                .task_errors
                                .fetch_add(1, Ordering::Relaxed);
                            Error::task(e)
                        })
                    }
                    Err(e) => {
                        // Without this item's length the rest of the chunk is lost too.
                        let e = Error::Decode(Arc::new(e));
                        current.result = Err(e.clone());
                        Err(e)
                    }
                }
            }
        };
        Some(item.map_err(|e| e.at(index)))
    }

    /// Advances without blocking: `Some(next)` when there is something to
    /// return (an item, or the end), `None` when it must wait for an
    /// outcome from `rx` (or, before a stop, the interrupt).
    fn step(&mut self) -> Option<Option<Result<O, Error>>> {
        loop {
            if self.ended {
                return Some(None);
            }
            if let Some(item) = self.take_current() {
                return Some(Some(item));
            }
            // After a stop no input is taken, but every input taken gets
            // its result: see the type's docs.
            let interrupted = self.pool.shared.interrupted.load(Ordering::SeqCst);
            if !interrupted {
                self.fill();
            }
            if let Some(outcome) = self.next_outcome() {
                self.current = Some(Current {
                    result: outcome.result,
                    index: outcome.first,
                    offset: 0,
                    left: outcome.count,
                });
                continue;
            }
            if self.outstanding == 0 {
                if self.input_done {
                    self.ended = true;
                    if let Some(panic) = self.input_panic.take() {
                        resume_unwind(panic);
                    }
                    return Some(None);
                }
                if interrupted {
                    // Stands for the inputs never taken.
                    return Some(self.interrupted());
                }
            }
            return None;
        }
    }

    fn interrupted(&mut self) -> Option<Result<O, Error>> {
        self.ended = true;
        Some(Err(self.pool.shared.stop_error()))
    }
}

impl<I: Payload, O: Payload, It> Iterator for Imap<'_, I, O, It>
where
    It: Iterator,
    It::Item: Borrow<I>,
{
    type Item = Result<O, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(next) = self.step() {
                return next;
            }
            let outcome = if self.pool.shared.interrupted.load(Ordering::SeqCst) {
                // Every chunk out ends within the grace period: with its
                // results, or failed (`Interrupted`, `Terminated`).
                self.rx.recv().ok()
            } else {
                select! {
                    recv(self.rx) -> outcome => outcome.ok(),
                    // Handled by the next step.
                    recv(self.pool.shared.interrupt_rx) -> _ => continue,
                }
            };
            match outcome {
                Some(outcome) => self.accept(outcome),
                // Unreachable while we hold `job.sink`; be safe anyway.
                None => return Some(Err(Error::Terminated)),
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let (lo, hi) = self.input.size_hint();
        let pending = self.outstanding;
        // After a stop no more input is taken; an endless input's hint
        // saturates.
        if self.pool.shared.interrupted.load(Ordering::SeqCst) {
            return (0, pending.checked_add(1));
        }
        (
            lo.saturating_add(pending),
            hi.and_then(|h| h.checked_add(pending)),
        )
    }
}

impl<I, O, It> std::fmt::Debug for Imap<'_, I, O, It> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imap")
            .field("ordered", &self.ordered)
            .field("window", &self.window)
            .field("in_flight", &self.outstanding)
            .finish_non_exhaustive()
    }
}

impl<I, O, It> Drop for Imap<'_, I, O, It> {
    fn drop(&mut self) {
        // Chunks not yet dispatched are dropped when their turn comes.
        self.job.cancelled.store(true, Ordering::Relaxed);
        self.pool.shared.stop_wakers.remove(&mut self.stop_key);
    }
}

#[cfg(feature = "futures")]
mod poll;
#[cfg(test)]
mod tests;
