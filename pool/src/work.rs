//! The units of work the pool's threads pass around: [`Job`], [`Chunk`],
//! [`Outcome`], [`Results`]. A leaf: it imports no module of the crate but
//! the error type and the waker slot.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crossbeam_channel::Sender;

use crate::Error;
use crate::wake::WakeSlot;

/// One caller's stream of results (a `map`, an `imap`, a `submit`).
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) sink: Sender<Outcome>,
    pub(crate) cancelled: AtomicBool,
    /// The async caller waiting for this job's next outcome, woken after
    /// each outcome is sent (and when the job is dropped).
    pub(crate) waker: WakeSlot,
}

impl Job {
    pub(crate) fn new(sink: Sender<Outcome>) -> Self {
        Self {
            sink,
            cancelled: AtomicBool::new(false),
            waker: WakeSlot::default(),
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        // The sink disconnects now: a waiting caller sees that on its next poll.
        self.waker.wake();
    }
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
