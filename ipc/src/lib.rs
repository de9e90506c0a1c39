//! Bytes between processes for procpool.
//!
//! This crate is shared by the master side (`procpool-pool`) and the worker
//! side (`procpool-worker`); users reach it through the `procpool` facade.
//!
//! - [`frame`]: length-prefixed frames over any byte stream, with the length
//!   checked against a maximum before anything is allocated.
//! - [`codec`]: serde + bincode 2, in one place so it can be swapped.
//! - [`proto`]: the messages a master and a worker exchange.
//! - [`task`]: the typed task declaration both sides name tasks by.
//! - [`endpoint`]: the connection between a master and one worker (a
//!   socketpair on Unix, an authenticated named pipe on Windows).
//! - [`link`]: the shared writing side of a connection: an outbox drained
//!   by the link's own writer thread, so no caller blocks on a peer.
//! - [`remote`]: remote workers joining over TCP: keys, addresses,
//!   liveness settings; [`secure`]: their versioned Noise handshake and
//!   the encrypted records every remote link travels in.
//! - [`shm`]: shared memory between local processes: anonymous segments,
//!   the transport that carries large payloads through them, the
//!   crash-safe [`shm::ring::Ring`], and [`shm::stream::Stream`], the
//!   message ring of a lane (a pipe direction's or an unbounded queue's).
//! - [`sync`]: the lock and deadline-wait helpers every crate uses.
//! - `sys/`: everything platform-specific (and all `unsafe`), behind one
//!   internal interface documented in `sys/mod.rs`.
//!
//! Above the transport, the queue layer (`queues/`): [`queue`] and
//! [`pipe`] (the public types; `queues/lane.rs`: the shared-memory lane
//! of a pipe direction or an unbounded queue between local processes), the [`hub`] (the queues a
//! master holds and serves), the worker-side client (proxies), and
//! `queues/wire.rs`, the
//! queue protocol in one place (every operation, its fields and answers).
//! Beside the queues, the hub holds [`sync_prims`] (locks, events,
//! barriers, conditions), [`shared_map`] (`SharedMap`) and
//! [`shared_memory`] (`SharedMemory` buffers it hands to local workers as
//! descriptors, and `Value`/`Array` with their crash-safe lock over them),
//! each family registered in `queues/held.rs` (ids, lookup, what keeps an
//! object alive, replies).
//!
//! # Example
//!
//! ```
//! use procpool_ipc::frame::{FrameReader, FrameWriter, WriteFrame, DEFAULT_MAX_FRAME_LEN};
//!
//! let mut wire = Vec::new();
//! let mut w = FrameWriter::new(&mut wire, DEFAULT_MAX_FRAME_LEN);
//! w.write_frame(&[b"hello"]).unwrap();
//! w.flush().unwrap();
//! drop(w);
//!
//! let mut r = FrameReader::new(&wire[..], DEFAULT_MAX_FRAME_LEN);
//! let mut buf = Vec::new();
//! assert!(r.read_frame(&mut buf).unwrap());
//! assert_eq!(buf, b"hello");
//! assert!(!r.read_frame(&mut buf).unwrap()); // clean end of stream
//! ```

pub mod codec;
pub mod endpoint;
mod error;
pub mod frame;
#[doc(hidden)]
pub mod link;
#[doc(hidden)]
pub mod one_program;
pub mod proto;
mod queues;
pub mod remote;
pub mod secure;
pub mod shm;
#[doc(hidden)]
pub mod sync;
mod sys;
pub mod task;

/// The plain-data traits [`shared_memory::Value`] and [`shared_memory::Array`] need.
pub use bytemuck;
pub use error::{IpcError, TaskError};
#[doc(hidden)]
pub use queues::client::{dispatch as dispatch_to_proxies, install as install_hub_client};
#[doc(hidden)]
pub use queues::hub;
pub use queues::pins::{Carried, carry};
pub use queues::{map as shared_map, pipe, queue, shared_memory, sync as sync_prims, wait};
pub use task::Task;
