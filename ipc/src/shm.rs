//! Data structures that live in memory shared between processes.
//!
//! - [`ring`]: [`Ring`], a bounded MPMC ring of fixed-size slots that
//!   survives the death of any process using it (the queues' data plane).

pub mod ring;

pub use ring::Ring;
