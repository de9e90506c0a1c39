//! The units of work the pool's threads pass around: [`Job`], [`Chunk`],
//! [`Outcome`], [`Results`]. A leaf: it imports no module of the crate but
//! the error type and the waker slot.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use crossbeam_channel::Sender;
use procpool_ipc::link::Lease;
use procpool_ipc::shm::body::Encoded;
use procpool_ipc::sync::lock;
use procpool_ipc::{Carried, IpcError, codec};
use serde::de::DeserializeOwned;

use crate::Error;
use crate::wake::WakeSlot;

/// Encoded input bytes a caller may have out (in chunks submitted and not
/// yet answered) per worker before it stops encoding more: with large
/// inputs, encoding far ahead of the workers only makes fresh buffers for
/// the kernel to zero (issue 11: `map` over 16 × 16 MiB encoded all 256 MiB
/// up front, each buffer's pages faulted in anew), while a chunk or two
/// per worker keeps every worker busy. Small inputs never reach it (the
/// item window binds first). At least one chunk is always out.
pub(crate) const BYTES_AHEAD_PER_WORKER: usize = 32 << 20;

/// Payload buffers at least this large are kept for reuse once their chunk
/// is answered; smaller ones are the allocator's business.
const SPARE_MIN: usize = 1 << 20;

/// Payload buffers of answered chunks, kept for the next chunks so that
/// their pages stay faulted in (a fresh 16 MiB buffer costs 4096 page
/// faults, each zeroing a page, more than encoding into it). Holds at most
/// `cap` bytes of capacity; kept until the pool is dropped.
#[derive(Debug)]
pub(crate) struct Spares {
    bufs: Mutex<Vec<Vec<u8>>>,
    cap: usize,
}

impl Spares {
    /// A bin holding at most `cap` bytes.
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            bufs: Mutex::new(Vec::new()),
            cap,
        }
    }

    /// The largest spare buffer, cleared, or a new empty one.
    pub(crate) fn take(&self) -> Vec<u8> {
        let mut bufs = procpool_ipc::sync::lock(&self.bufs);
        // Kept sorted by capacity: the last is the largest.
        bufs.pop().unwrap_or_default()
    }

    /// Keeps `buf` for reuse if it is large and the bin has room.
    pub(crate) fn put(&self, mut buf: Vec<u8>) {
        if buf.capacity() < SPARE_MIN {
            return;
        }
        let mut bufs = procpool_ipc::sync::lock(&self.bufs);
        let held: usize = bufs.iter().map(Vec::capacity).sum();
        if held + buf.capacity() > self.cap {
            return;
        }
        buf.clear();
        let at = bufs.partition_point(|b| b.capacity() <= buf.capacity());
        bufs.insert(at, buf);
    }
}

/// One caller's stream of results (a `map`, an `imap`, a `submit`).
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) sink: Sender<Outcome>,
    pub(crate) cancelled: AtomicBool,
    /// The async caller waiting for this job's next outcome, woken after
    /// each outcome is sent (and when the job is dropped).
    pub(crate) waker: WakeSlot,
    /// The pins its inputs' queue (and other hub object) handles took:
    /// those no worker received go when the job ends (a task that never
    /// started, a `Process` killed before it read its arguments), so the
    /// objects do not outlive every handle.
    carried: Mutex<Carried>,
}

impl Job {
    pub(crate) fn new(sink: Sender<Outcome>) -> Self {
        Self {
            sink,
            cancelled: AtomicBool::new(false),
            waker: WakeSlot::default(),
            carried: Mutex::default(),
        }
    }

    /// Runs `f`, which encodes inputs of this job, keeping the pins it
    /// takes until the job ends.
    pub(crate) fn carry<R>(&self, f: impl FnOnce() -> R) -> R {
        let (r, carried) = procpool_ipc::carry(f);
        if !carried.is_empty() {
            lock(&self.carried).absorb(carried);
        }
        r
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        // The sink disconnects now: a waiting caller sees that on its next poll.
        self.waker.wake();
    }
}

/// Finds the end of the first encoded input in a payload: the job's input
/// type, decoded and dropped. Used only to split a chunk after a death.
pub(crate) type Skip = fn(&[u8]) -> Option<usize>;

/// Consecutive inputs of one job, encoded, bound for one worker.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub(crate) job: Arc<Job>,
    /// Index within its job of this chunk's first input.
    pub(crate) first: u64,
    pub(crate) task: u32,
    pub(crate) count: u32,
    /// The inputs, encoded: large ones in a shared segment, sent to any
    /// local worker without a copy, and kept as they are to send again.
    pub(crate) payload: Encoded,
    pub(crate) attempts: u32,
    /// Items whose results were already delivered (by `PART` frames); the
    /// chunk's outcome covers the rest.
    pub(crate) reported: u32,
    /// Worker time spent on the reported items.
    pub(crate) reported_ns: u64,
    /// Whether the chunk's outcome ends one chunk its caller submitted (a
    /// piece of a split chunk other than the last does not).
    pub(crate) closes: bool,
    pub(crate) skip: Skip,
}

impl Chunk {
    /// A new chunk of `count` inputs starting at input `first` of `job`.
    pub(crate) fn new(
        job: Arc<Job>,
        first: u64,
        task: u32,
        count: u32,
        payload: impl Into<Encoded>,
        skip: Skip,
    ) -> Self {
        Chunk {
            job,
            first,
            task,
            count,
            payload: payload.into(),
            attempts: 0,
            reported: 0,
            reported_ns: 0,
            closes: true,
            skip,
        }
    }

    /// Items not yet reported.
    pub(crate) fn unreported(&self) -> u32 {
        self.count - self.reported
    }

    /// Byte offsets in the payload where each of the first `n` inputs ends
    /// (a payload in shared memory is copied out first: this runs only
    /// after a death).
    fn ends(&mut self, n: u32) -> Option<Vec<usize>> {
        let payload = self.payload.make_bytes();
        let mut ends = Vec::with_capacity(n as usize);
        let mut at = 0;
        for _ in 0..n {
            at += (self.skip)(payload.get(at..)?)?;
            ends.push(at);
        }
        Some(ends)
    }

    /// The chunk without its reported items, ready to be sent again; the
    /// chunk itself if its inputs cannot be found (then it must fail).
    pub(crate) fn remainder(mut self) -> Result<Chunk, Chunk> {
        if self.reported == 0 {
            return Ok(self);
        }
        let Some(&cut) = self.ends(self.reported).as_ref().and_then(|e| e.last()) else {
            return Err(self);
        };
        self.payload.make_bytes().drain(..cut);
        self.first += u64::from(self.reported);
        self.count -= self.reported;
        self.reported = 0;
        self.reported_ns = 0;
        Ok(self)
    }

    /// The unreported items as chunks of one item each, in order; the
    /// chunk itself if its inputs cannot be found (then it must fail).
    pub(crate) fn split(self) -> Result<Vec<Chunk>, Chunk> {
        let mut rest = self.remainder()?;
        let Some(ends) = rest.ends(rest.count) else {
            return Err(rest);
        };
        let payload = rest.payload.make_bytes();
        let mut start = 0;
        let pieces = ends
            .iter()
            .zip(rest.first..)
            .map(|(&end, first)| {
                let mut piece = Chunk::new(
                    Arc::clone(&rest.job),
                    first,
                    rest.task,
                    1,
                    payload[start..end].to_vec(),
                    rest.skip,
                );
                piece.attempts = rest.attempts;
                piece.closes = false;
                start = end;
                piece
            })
            .collect::<Vec<_>>();
        let mut pieces = pieces;
        if let Some(last) = pieces.last_mut() {
            last.closes = rest.closes;
        }
        Ok(pieces)
    }
}

/// What became of consecutive items of a job: a whole chunk, or the part
/// of one that a worker reported before the rest.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// Index within the job of the first item.
    pub(crate) first: u64,
    pub(crate) count: u32,
    /// Whether this ends one chunk its caller submitted.
    pub(crate) last: bool,
    pub(crate) result: Result<Results, Error>,
}

/// A `DONE` or `PART` frame: `count` encoded results start at
/// `payload_at` of its body, which is `frame`, or (a large body that came
/// through shared memory) in `lease`, read in place: `frame` then holds
/// only its first bytes.
#[derive(Debug)]
pub(crate) struct Results {
    pub(crate) frame: Vec<u8>,
    pub(crate) lease: Option<Lease>,
    pub(crate) payload_at: usize,
    /// Worker time spent on these items.
    pub(crate) elapsed_ns: u64,
}

impl Results {
    /// Decodes the result `offset` bytes into the payload; returns it and
    /// how many bytes it used. A body in shared memory is decoded from
    /// there: one copy, into the value.
    pub(crate) fn decode<T: DeserializeOwned>(
        &self,
        offset: usize,
    ) -> Result<(T, usize), IpcError> {
        let at = self.payload_at.saturating_add(offset);
        match &self.lease {
            Some(lease) => lease.decode_at(at),
            None => codec::decode(self.frame.get(at..).unwrap_or_default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Large buffers come back cleared, the largest first; small ones and
    /// those past the cap are not kept.
    #[test]
    fn spares_keep_large_buffers_up_to_their_cap() {
        let spares = Spares::new(5 * SPARE_MIN);
        spares.put(Vec::with_capacity(SPARE_MIN - 1));
        let mut two = Vec::with_capacity(2 * SPARE_MIN);
        two.extend_from_slice(b"old bytes");
        spares.put(two);
        spares.put(Vec::with_capacity(SPARE_MIN));
        // 3 MiB held: a 3 MiB buffer would pass the cap.
        spares.put(Vec::with_capacity(3 * SPARE_MIN));
        let first = spares.take();
        assert!(first.capacity() >= 2 * SPARE_MIN && first.is_empty());
        assert!(spares.take().capacity() >= SPARE_MIN);
        assert_eq!(spares.take().capacity(), 0, "nothing else was kept");
    }
}
