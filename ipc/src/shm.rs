//! Shared memory between the processes of one machine.
//!
//! - [`segment`]: an anonymous shared memory segment ([`Segment`]): created
//!   here, mapped read/write, handed to another process as a descriptor or
//!   handle, reopened there with its length checked.
//! - [`transport`]: large frame bodies through segments on local
//!   connections.
//! - [`body`]: [`SharedBody`](body::SharedBody), a payload encoded straight
//!   into a pooled segment, sent on any local connection without a copy.
//! - [`ring`]: [`Ring`], a bounded MPMC ring of fixed-size slots that
//!   survives the death of any process using it (the queues' data plane
//!   to come).
//! - [`stream`]: [`Stream`], a byte-stream ring of messages with writer and
//!   reader leases, the lane of a pipe direction; also safe against deaths.
//! - [`books`]: a `JoinableQueue`'s accounts beside its lane.

pub mod body;
pub mod books;
pub mod ring;
pub mod segment;
pub mod stream;
pub mod transport;

pub use ring::Ring;
pub use segment::{Segment, SegmentError};
pub use stream::Stream;
