//! The ring's error type.

/// Why a ring operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RingError {
    /// No free slot (for a bounded `put`: none came before the deadline).
    #[error("ring is full")]
    Full,
    /// No item (for a bounded `get`: none came before the deadline).
    #[error("ring is empty")]
    Empty,
    /// The ring was closed: a put is refused; for a get, it is also drained.
    #[error("ring is closed")]
    Closed,
    /// The item does not fit in a slot.
    #[error("item of {len} bytes does not fit a slot of {max} bytes")]
    TooLarge {
        /// The item's length.
        len: usize,
        /// The slot size.
        max: usize,
    },
    /// The owner id is not below the ring's owner count.
    #[error("owner id {owner} out of range (the ring has {owners} owners)")]
    BadOwner {
        /// The id given.
        owner: u16,
        /// The ring's owner count.
        owners: u32,
    },
    /// `task_done` was called more times than items were put.
    #[error("task_done called more times than items were put")]
    TooManyTaskDone,
    /// `join` reached its deadline with items unfinished.
    #[error("timed out waiting for every item to be done")]
    Timeout,
    /// The geometry given to `init` is not usable.
    #[error("invalid ring geometry: {0}")]
    Geometry(&'static str),
    /// The memory given is smaller than the geometry needs.
    #[error("ring needs {needed} bytes, got {len}")]
    TooSmall {
        /// Bytes given.
        len: usize,
        /// Bytes needed.
        needed: usize,
    },
    /// The memory is not aligned to 64 bytes.
    #[error("ring memory is not 64-byte aligned")]
    Misaligned,
    /// The shared memory holds something this ring cannot have written.
    #[error("corrupt ring: {what} ({value:#x})")]
    Corrupt {
        /// What was wrong.
        what: &'static str,
        /// The offending value.
        value: u64,
    },
}
