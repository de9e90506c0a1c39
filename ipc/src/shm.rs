//! Shared memory between the processes of one machine.
//!
//! - [`segment`]: an anonymous shared memory segment ([`Segment`]): created
//!   here, mapped read/write, handed to another process as a descriptor or
//!   handle, reopened there with its length checked.
//! - [`transport`]: large frame bodies through segments on local
//!   connections.

pub mod segment;
pub mod transport;

pub use segment::{Segment, SegmentError};
