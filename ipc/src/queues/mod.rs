//! The queue layer, above the transport: queues and pipes that work across
//! processes, held by a hub in the master.
//!
//! - [`queue`]: the public `Queue`, `JoinableQueue`, `SimpleQueue`; a handle
//!   is either the hub's queue itself (in the process that holds it) or a
//!   proxy that speaks to it over the worker's connection;
//! - [`pipe`]: `Pipe`, two queues back to back; `lane`: each direction's
//!   (and each unbounded queue's) shared-memory ring between local
//!   processes, beside its hub queue;
//! - [`hub`]: the queues a process holds and how it serves other
//!   processes' operations on them (the master's reader threads call it);
//! - `client`: the proxies' side in a worker: requests, replies,
//!   subscriptions;
//! - [`wait`]: waiting on many queues, pipe ends and processes at once;
//! - `pins`: the tokens that name serialised handles' pins, and the
//!   carriers that release those never received;
//! - `held`: the registry of the other objects a hub holds (maps, buffers,
//!   primitives): ids, lookup, lifetime, replies;
//! - `wire`: the queue protocol, what every operation and status means;
//! - [`sync`]: `Lock`, `Semaphore`, `Event`: crash-safe synchronization
//!   held by the hub like a queue (its ops extend `wire`'s table);
//! - [`map`]: `SharedMap`, a key-value map held by the hub, each
//!   operation atomic (its ops extend the table too).
//!
//! Transport (frames, links, endpoints) lives beside this tree and knows
//! nothing of queues.

pub(crate) mod client;
mod held;
pub mod hub;
mod lane;
pub mod map;
pub(crate) mod pins;
pub mod pipe;
pub mod queue;
pub mod shared_memory;
pub mod sync;
pub mod wait;
mod wire;
