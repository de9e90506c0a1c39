//! Ctrl-C and SIGTERM: a two-stage stop for every pool of the process.
//!
//! A process has one Ctrl-C handler, so this one is opt-in:
//! [`install_ctrlc_handler`] (or [`PoolBuilder::handle_ctrlc`](crate::PoolBuilder::handle_ctrlc)).
//! Once installed:
//!
//! 1. the first Ctrl-C (or SIGTERM) calls [`Pool::shutdown`](crate::Pool::shutdown)
//!    on every live pool: nothing new is dispatched, running tasks get the
//!    grace period, blocked calls return [`Error::Interrupted`];
//! 2. the second kills every pool's workers at once;
//! 3. a third, or a first one while no pool is alive, exits the process
//!    with status 130 as an unhandled Ctrl-C would.
//!
//! Workers never act on Ctrl-C themselves: they ignore it from the moment
//! they start, and the master decides.
//!
//! An application with its own handler triggers the same stop by calling
//! [`Pool::shutdown`](crate::Pool::shutdown) (first stage) and
//! [`Pool::terminate`](crate::Pool::terminate) (second) itself.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crossbeam_channel::Sender;

use crate::Error;
use crate::msg::Msg;
use crate::shared::Shared;
use procpool_ipc::sync::lock;

/// Exit status of a process stopped by Ctrl-C (128 + SIGINT).
pub const EXIT_INTERRUPTED: i32 = 130;

struct Entry {
    shared: Weak<Shared>,
    tx: Sender<Msg>,
}

static POOLS: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
static SIGNALS: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: OnceLock<Result<(), Error>> = OnceLock::new();
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Records a live pool so a Ctrl-C reaches it.
pub(crate) fn register(shared: &Arc<Shared>, tx: &Sender<Msg>) {
    let mut pools = lock(&POOLS);
    pools.retain(|e| e.shared.strong_count() > 0);
    pools.push(Entry {
        shared: Arc::downgrade(shared),
        tx: tx.clone(),
    });
    if INTERRUPTED.load(Ordering::SeqCst) {
        // Started after the first Ctrl-C: it stops at once too.
        shared.interrupt();
        let _ = tx.send(Msg::Interrupt);
    }
}

/// Forgets a pool that is being dropped.
pub(crate) fn unregister(shared: &Arc<Shared>) {
    let mut pools = lock(&POOLS);
    pools.retain(|e| {
        e.shared.strong_count() > 0 && !std::ptr::eq(e.shared.as_ptr(), Arc::as_ptr(shared))
    });
}

/// Installs the process's Ctrl-C and SIGTERM handler for procpool (once;
/// later calls return the first call's result).
///
/// # Errors
/// [`Error::Signal`] when the process already has a Ctrl-C handler set
/// through the `ctrlc` crate or the handler cannot be installed.
pub fn install_ctrlc_handler() -> Result<(), Error> {
    INSTALLED
        .get_or_init(|| {
            ctrlc::set_handler(on_signal).map_err(|e| Error::Signal {
                source: Arc::new(e),
            })
        })
        .clone()
}

/// Whether a Ctrl-C or SIGTERM has been received since the handler was
/// installed: long loops of the application can check it.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn on_signal() {
    let n = SIGNALS.fetch_add(1, Ordering::SeqCst) + 1;
    INTERRUPTED.store(true, Ordering::SeqCst);
    let pools: Vec<(Arc<Shared>, Sender<Msg>)> = lock(&POOLS)
        .iter()
        .filter_map(|e| Some((e.shared.upgrade()?, e.tx.clone())))
        .collect();
    if pools.is_empty() || n >= 3 {
        std::process::exit(EXIT_INTERRUPTED);
    }
    for (shared, tx) in pools {
        shared.interrupt();
        let _ = tx.send(if n == 1 {
            Msg::Interrupt
        } else {
            Msg::Terminate
        });
    }
    tracing::warn!(
        signal_count = n,
        "interrupt received: {}",
        if n == 1 {
            "stopping gracefully"
        } else {
            "killing workers"
        }
    );
}
