use std::io;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Why bytes could not be encoded, decoded or moved between processes.
///
/// It is the source of `procpool::Error::Encode` and `Error::Decode` (a value serde could not encode, bytes that do not decode
/// as the expected type) and of connection failures (a frame over the size
/// limit, a connection closed mid-frame, an I/O error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IpcError {
    /// A frame header announced more bytes than the configured maximum.
    #[error("frame of {len} bytes exceeds the maximum frame length of {max} bytes")]
    FrameTooLarge {
        /// The announced (or attempted) frame length.
        len: u64,
        /// The configured maximum.
        max: u64,
    },
    /// A value's encoding is longer than the payload limit (see
    /// [`crate::frame`]); it was refused before being encoded whole.
    #[error("a payload of {len} bytes exceeds the payload limit of {max} bytes")]
    PayloadTooLarge {
        /// The encoding's length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The stream ended in the middle of a frame.
    #[error("connection closed in the middle of a frame ({read} of {expected} bytes received)")]
    Truncated {
        /// Bytes received.
        read: usize,
        /// Bytes the frame header announced (or the header length).
        expected: usize,
    },
    /// A frame that does not parse as a protocol message.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: this side speaks version {ours}, the peer speaks {theirs}")]
    VersionMismatch {
        /// Our protocol version.
        ours: u32,
        /// The peer's protocol version.
        theirs: u32,
    },
    /// A value could not be encoded.
    // The cause is in the message (callers print `{e}`), so not a `source`.
    #[error("failed to encode a payload: {0}")]
    Encode(bincode::error::EncodeError),
    /// Bytes could not be decoded as the expected type.
    #[error("failed to decode a payload: {0}")]
    Decode(bincode::error::DecodeError),
    /// The operating system reported an error.
    #[error("i/o error on the connection")]
    Io(#[from] io::Error),
}

/// Why one task failed inside a worker; travels from the worker to the master.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The task panicked; the panic was caught in the worker.
    #[error("task panicked{}: {message}", location.as_deref().map(|l| format!(" at {l}")).unwrap_or_default())]
    Panicked {
        /// The panic message.
        message: String,
        /// `file:line:column` of the panic, when known.
        location: Option<String>,
    },
    /// The task's result is longer than the pool's payload limit
    /// (`PoolBuilder::max_payload_len`); the master reports it as the
    /// pool's `Error::PayloadTooLarge`, like an input over the limit.
    #[error("the task's result of {len} bytes exceeds the payload limit of {max} bytes")]
    OutputTooLarge {
        /// The encoded result's length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The task returned `Err(e)`: `message` is `e`'s text, `causes` the
    /// text of each of its sources in turn (its `source()` chain, which a
    /// process boundary cannot carry as types). `Display` shows them all,
    /// as `anyhow`'s `{:#}` does.
    #[error("task failed: {message}{}", causes.iter().map(|c| format!(": {c}")).collect::<String>())]
    Failed {
        /// The error's display text.
        message: String,
        /// Its sources' display texts, outermost first.
        causes: Vec<String>,
    },
    /// The worker could not decode the task's input (the master and the
    /// worker disagree on the input type).
    #[error("worker could not decode the task input: {message}")]
    DecodeInput {
        /// What the decoder reported.
        message: String,
    },
    /// The worker could not encode the task's output, or the encoded results
    /// did not fit in one frame.
    #[error("worker could not encode the task output: {message}")]
    EncodeOutput {
        /// What the encoder reported.
        message: String,
    },
}

/// Why a queue operation failed, beyond full, empty and closed.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The hub has no queue of this id: every handle to it, in every
    /// process, was dropped.
    #[error("no queue with id {id} in the hub (all of its handles were dropped)")]
    NoSuchQueue {
        /// The queue id.
        id: u64,
    },
    /// A handle arrived in a process that cannot reach its queue: the
    /// queue is held by hub `hub`, and this process is neither that hub's
    /// process nor one of its direct workers (a handle passed on from a
    /// worker to a process the worker started is not relayed).
    #[error(
        "queue {id} is held by hub {hub:016x}, which this process cannot reach (handles work in the hub's process and its direct workers, not two hops away)"
    )]
    Unreachable {
        /// The queue id.
        id: u64,
        /// The id of the hub that holds the queue.
        hub: u64,
    },
    /// The item could not be encoded.
    #[error("failed to encode the item")]
    Encode(#[source] Arc<IpcError>),
    /// An item could not be decoded as the queue's type.
    #[error("failed to decode an item")]
    Decode(#[source] Arc<IpcError>),
    /// The connection to the hub failed.
    #[error("lost the connection to the hub")]
    Connection(#[source] Arc<IpcError>),
    /// The hub process went away.
    #[error("the hub process went away")]
    Disconnected,
    /// `task_done` was called more times than items were put.
    #[error("task_done() called more times than there were items")]
    TooManyTaskDone,
    /// The queue is full.
    #[error("the queue is full")]
    Full,
    /// The queue is closed.
    #[error("the queue is closed")]
    Closed,
    /// The queue was shut down (`Queue::shutdown`, Python 3.13's
    /// `queue.ShutDown`).
    #[error("the queue is shut down")]
    ShutDown,
    /// A process that had taken items from a `JoinableQueue` ended (died,
    /// was killed, or exited) without marking `unfinished` of them done:
    /// they will never be, so they no longer count as unfinished, and
    /// `join` reports them instead of waiting forever. Reported once per
    /// process; a later `join` waits for the remaining items as usual.
    #[error(
        "a consumer process ({}) ended with {unfinished} item(s) it had taken not marked done",
        pid.map_or_else(|| "pid unknown".to_owned(), |p| format!("pid {p}"))
    )]
    ConsumerDied {
        /// The process id, as its worker announced it (on its own machine,
        /// for a remote worker); `None` if it never did.
        pid: Option<u32>,
        /// How many items it had taken and not marked done.
        unfinished: u64,
    },
    /// The hub answered something this side does not understand.
    #[error("unexpected answer from the hub")]
    Protocol,
    /// Every receiving end of the pipe is gone (dropped, or its process
    /// ended): nobody would receive what is sent.
    #[error("every receiving end of the pipe is gone")]
    ReceiversGone,
    /// A pipe's shared-memory lane failed (its memory holds something no
    /// sender wrote: see [`StreamError`](crate::shm::stream::StreamError)).
    #[error("a pipe's shared-memory lane failed")]
    Lane(#[source] crate::shm::stream::StreamError),
}

impl QueueError {
    pub(crate) fn from_ipc(e: IpcError) -> Self {
        QueueError::Connection(Arc::new(e))
    }
}
