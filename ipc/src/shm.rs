//! Shared memory between the processes of one machine.
//!
//! - [`segment`]: an anonymous shared memory segment ([`Segment`]): created
//!   here, mapped read/write, handed to another process as a descriptor or
//!   handle, reopened there with its length checked.

pub mod segment;

pub use segment::{Segment, SegmentError};
