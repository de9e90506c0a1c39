//! [`Config`]: the settings a [`PoolBuilder`](crate::PoolBuilder) fixes,
//! read by every thread of the pool. A leaf: it imports no module of the
//! crate.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use procpool_ipc::frame::ENCODING_SLACK;

/// Settings shared by the pool handle and its supervisor.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) workers: usize,
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<OsString>,
    pub(crate) envs: Vec<(OsString, OsString)>,
    pub(crate) chunk_size: Option<usize>,
    pub(crate) window: usize,
    /// `None`: adapted to the measured chunk time (see `dispatch`).
    pub(crate) prefetch: Option<usize>,
    pub(crate) max_payload_len: u64,
    pub(crate) start_timeout: Duration,
    pub(crate) grace_period: Duration,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) retries: u32,
    pub(crate) max_tasks_per_worker: Option<u64>,
    /// The initializer task's name and its encoded argument.
    pub(crate) initializer: Option<(&'static str, Arc<[u8]>)>,
    /// Start a replacement when a worker exits (false for a `Process`).
    pub(crate) replace_workers: bool,
    /// Where to listen for remote workers, and their key.
    pub(crate) listen: Option<(SocketAddr, Key)>,
    /// The host workers are told to connect to (see `PoolBuilder::advertise`).
    pub(crate) advertise: Option<String>,
    /// A remote worker silent this long is lost.
    pub(crate) heartbeat_timeout: Duration,
    /// Local workers heartbeat too.
    pub(crate) local_heartbeat: bool,
}

impl Config {
    /// The most bytes one encoded value may take: the payload limit and the
    /// length prefixes and tags its encoding adds.
    pub(crate) fn payload_limit(&self) -> u64 {
        self.max_payload_len.saturating_add(ENCODING_SLACK)
    }
}

/// The pool's authentication key; never printed.
#[derive(Clone)]
pub(crate) struct Key(pub(crate) Arc<[u8]>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}
