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
use procpool_ipc::proto::RUN_OVERHEAD;
use procpool_ipc::task::Payload;
use procpool_ipc::{TaskError, codec};
use serde::Serialize;

use crate::work::{Chunk, Job, Outcome, Results};
use crate::{Error, Pool};

/// How many items go into one chunk.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Chunking {
    Fixed(usize),
    /// Sized so that one chunk is about [`TARGET_CHUNK_NS`] of work.
    Adaptive {
        current: usize,
        max: usize,
    },
}

const TARGET_CHUNK_NS: u64 = 2_000_000;

impl Chunking {
    /// How many items the next chunk takes.
    fn size(self) -> usize {
        match self {
            Chunking::Fixed(n) | Chunking::Adaptive { current: n, .. } => n,
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

/// Packs encoded inputs, one at a time, into chunk payloads that fit in a
/// `RUN` frame of at most `max_frame_len` bytes.
#[derive(Debug)]
struct Packer {
    payload: Vec<u8>,
    count: u32,
    max_frame_len: u32,
}

/// What packing one input gave, to be handled in this order: a full chunk
/// to submit (without the input), then the input's own failure.
#[derive(Debug, Default)]
struct Packed {
    full: Option<(Vec<u8>, u32)>,
    failed: Option<Error>,
}

impl Packer {
    fn new(max_frame_len: u32) -> Self {
        Self {
            payload: Vec::new(),
            count: 0,
            max_frame_len,
        }
    }

    /// Inputs in the chunk being packed.
    fn count(&self) -> u32 {
        self.count
    }

    /// Adds `item` to the chunk. One that does not fit after others closes
    /// the chunk and starts the next; one that does not fit on its own, or
    /// does not encode, fails (after the chunk before it, which is closed
    /// early).
    fn push<I: Serialize>(&mut self, item: &I) -> Packed {
        let max = self.max_frame_len;
        let limit = max as usize - RUN_OVERHEAD;
        let mark = self.payload.len();
        let encoded = codec::encode_into(item, &mut self.payload).map_err(Error::encode);
        let encoded = encoded.and_then(|()| {
            if self.payload.len() <= limit {
                Ok(())
            } else {
                Err(Error::FrameTooLarge {
                    len: (self.payload.len() - mark + RUN_OVERHEAD) as u64,
                    max,
                })
            }
        });
        match encoded {
            Ok(()) => {
                self.count += 1;
                Packed::default()
            }
            Err(Error::FrameTooLarge { .. }) if self.count > 0 => {
                // The chunk is full: send it, start the next with this item.
                self.payload.truncate(mark);
                let full = self.take();
                let failed = if codec::encode_into(item, &mut self.payload).is_ok()
                    && self.payload.len() <= limit
                {
                    self.count = 1;
                    None
                } else {
                    let len = (self.payload.len() + RUN_OVERHEAD) as u64;
                    self.payload.clear();
                    Some(Error::FrameTooLarge { len, max })
                };
                Packed { full, failed }
            }
            Err(e) => {
                self.payload.truncate(mark);
                Packed {
                    full: self.take(),
                    failed: Some(e),
                }
            }
        }
    }

    /// Takes the chunk packed so far, if it holds any input.
    fn take(&mut self) -> Option<(Vec<u8>, u32)> {
        if self.count == 0 {
            return None;
        }
        let count = std::mem::take(&mut self.count);
        Some((std::mem::take(&mut self.payload), count))
    }
}

/// The iterator returned by [`Pool::imap`] and [`Pool::imap_unordered`]:
/// one `Result` per input item.
///
/// It takes items from its input only while fewer than the pool's `window`
/// are in flight, so memory stays flat however long the input is. Dropping
/// it cancels the work it has not dispatched yet.
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
    /// Most chunks out at once: while the adaptive size is still being
    /// learned, this keeps the first small chunks from filling the window.
    max_chunks: usize,
    next_seq: u64,
    next_yield: u64,
    reorder: BTreeMap<u64, Outcome>,
    ready: VecDeque<Outcome>,
    current: Option<Current>,
    input_done: bool,
    /// The input iterator panicked: raised again once every result of the
    /// items before it has been handed out.
    input_panic: Option<Box<dyn Any + Send>>,
    ended: bool,
    _types: PhantomData<fn(I) -> O>,
}

struct Current {
    result: Result<Results, Error>,
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
            Chunking::Fixed(_) => usize::MAX,
            Chunking::Adaptive { .. } => {
                2 * pool.config.workers.max(1) * (pool.config.prefetch.unwrap_or(2) + 1)
            }
        };
        Self {
            pool,
            task,
            input: input.fuse(),
            job: Arc::new(Job {
                sink,
                cancelled: false.into(),
            }),
            rx,
            ordered,
            window: window.max(1),
            chunking,
            outstanding: 0,
            chunks_out: 0,
            max_chunks,
            next_seq: 0,
            next_yield: 0,
            reorder: BTreeMap::new(),
            ready: VecDeque::new(),
            current: None,
            input_done: false,
            input_panic: None,
            ended: false,
            _types: PhantomData,
        }
    }

    /// Takes inputs while the window has room, submitting them in chunks.
    fn fill(&mut self) {
        while !self.input_done
            && self.outstanding < self.window
            && self.chunks_out < self.max_chunks
        {
            let Some(want) = next_chunk_len(
                self.window,
                self.outstanding,
                self.chunking.size(),
                self.chunks_out,
            ) else {
                break;
            };
            let mut packer = Packer::new(self.pool.config.max_frame_len);
            while (packer.count() as usize) < want {
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

    fn submit(&mut self, payload: Vec<u8>, count: u32) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.outstanding += count as usize;
        let pool = self.pool;
        let shared = &pool.shared;
        shared
            .stats
            .submitted
            .fetch_add(u64::from(count), Ordering::Relaxed);
        let chunk = Chunk {
            job: Arc::clone(&self.job),
            seq,
            task: self.task,
            count,
            payload,
            attempts: 0,
        };
        self.chunks_out += 1;
        if let Err((chunk, error)) = shared.submit(chunk) {
            self.chunks_out -= 1;
            shared
                .stats
                .failed
                .fetch_add(u64::from(count), Ordering::Relaxed);
            self.accept(Outcome {
                seq: chunk.seq,
                count,
                result: Err(error),
            });
        }
    }

    /// One input that never left this process (it did not encode or fit).
    fn fail_locally(&mut self, error: Error) {
        let seq = self.next_seq;
        self.next_seq += 1;
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
            seq,
            count: 1,
            result: Err(error),
        });
    }

    fn accept(&mut self, outcome: Outcome) {
        if let Ok(r) = &outcome.result {
            self.chunking.learn(outcome.count, r.elapsed_ns);
        }
        if self.ordered {
            self.reorder.insert(outcome.seq, outcome);
        } else {
            self.ready.push_back(outcome);
        }
    }

    fn next_outcome(&mut self) -> Option<Outcome> {
        if self.ordered {
            let outcome = self.reorder.remove(&self.next_yield)?;
            self.next_yield += 1;
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
        self.outstanding -= 1;
        let item = match &current.result {
            Err(e) => Err(e.clone()),
            Ok(results) => {
                let bytes = &results.frame[results.payload_at + current.offset..];
                match codec::decode::<Result<O, TaskError>>(bytes) {
                    Ok((result, used)) => {
                        current.offset += used;
                        result.map_err(|e| {
                            self.pool
                                .shared
                                .stats
                                .task_errors
                                .fetch_add(1, Ordering::Relaxed);
                            Error::Task(e)
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
        Some(item)
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
            if self.ended {
                return None;
            }
            if let Some(item) = self.take_current() {
                return Some(item);
            }
            let interrupted = self.pool.shared.interrupted.load(Ordering::SeqCst);
            if interrupted {
                // Results that have already arrived are still handed out,
                // then the interrupt.
                while let Ok(outcome) = self.rx.try_recv() {
                    self.chunks_out -= 1;
                    self.accept(outcome);
                }
            } else {
                self.fill();
            }
            if let Some(outcome) = self.next_outcome() {
                if interrupted
                    && matches!(outcome.result, Err(Error::Interrupted | Error::Terminated))
                {
                    return self.interrupted();
                }
                self.current = Some(Current {
                    result: outcome.result,
                    offset: 0,
                    left: outcome.count,
                });
                continue;
            }
            if self.outstanding == 0 && self.input_done {
                self.ended = true;
                if let Some(panic) = self.input_panic.take() {
                    resume_unwind(panic);
                }
                return None;
            }
            if interrupted {
                return self.interrupted();
            }
            select! {
                recv(self.rx) -> outcome => match outcome {
                    Ok(outcome) => {
                        self.chunks_out -= 1;
                        self.accept(outcome);
                    }
                    // Unreachable while we hold `job.sink`; be safe anyway.
                    Err(_) => return Some(Err(Error::Terminated)),
                },
                // Handled at the top of the loop.
                recv(self.pool.shared.interrupt_rx) -> _ => {}
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let (lo, hi) = self.input.size_hint();
        let pending = self.outstanding;
        (lo + pending, hi.map(|h| h + pending))
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
    }
}

#[cfg(test)]
mod tests;
