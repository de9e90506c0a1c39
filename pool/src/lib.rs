//! The master side of procpool: [`Pool`], its builder and its errors.
//!
//! Users reach this crate through the `procpool` facade, which also
//! provides `init` for the worker side.
#![forbid(unsafe_code)]

mod blame;
mod builder;
mod config;
mod dispatch;
mod error;
mod interrupt;
mod joinable;
mod msg;
mod pool;
mod process;
mod remote;
mod shared;
mod stream;
mod supervisor;
mod work;
mod worker;

pub use builder::{PoolBuilder, sibling_exe};
pub use error::Error;
pub use interrupt::{EXIT_INTERRUPTED, install_ctrlc_handler, interrupted};
pub use pool::{AsyncResult, Pool, Stats};
pub use process::Process;
pub use stream::Imap;
