//! Remote workers: the pool listens on TCP, and a worker started by any
//! launcher joins with the pool's address and key (see
//! [`PoolBuilder::listen`](crate::PoolBuilder::listen)). Each connection is
//! authenticated and keyed (Noise `NNpsk0`, see `procpool_ipc::remote`),
//! then handed to the supervisor as a new worker, its link encrypted.
//!
//! The listener is exposed to anyone who can reach its port, so what an
//! unauthenticated peer can cost the master is bounded:
//!
//! - **Threads**: at most [`MAX_HANDSHAKES`] handshakes run at once, each
//!   on a short-lived thread with a small stack; a connection beyond that
//!   is closed at once, without a thread (a worker refused this way sees
//!   its connection end before the greeting, and retries).
//! - **Time**: a handshake has one deadline for all its reads and writes
//!   (`procpool_ipc::remote::HANDSHAKE_TIMEOUT`), so a peer trickling
//!   bytes holds its slot no longer than that.
//! - **Memory**: the handshake reads into fixed buffers on its stack;
//!   nothing a peer sends before it is authenticated sizes an allocation.
//! - **CPU**: when `accept` fails (no descriptors left, no memory), the
//!   loop waits before trying again, doubling the wait from
//!   [`ACCEPT_BACKOFF_MIN`] up to [`ACCEPT_BACKOFF_MAX`], instead of
//!   spinning on a connection it cannot take.
//!
//! Local workers do not go through the listener: nothing here slows them.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::Error;
use crate::config::Key;
use crate::msg::Msg;

/// Most handshakes in progress at once; a connection beyond them is closed
/// at once.
pub(crate) const MAX_HANDSHAKES: usize = 16;
/// The first wait after a failed `accept`.
pub(crate) const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// The longest wait after failed `accept`s in a row.
pub(crate) const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A handshake thread's stack: the handshake needs a few hundred bytes.
const HANDSHAKE_STACK: usize = 128 * 1024;

/// The listening socket's accept loop.
#[derive(Debug)]
pub(crate) struct Listener {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Wakes the accept loop out of a back-off wait.
    wake: Sender<()>,
}

/// The next wait after a failed `accept`, given the last one.
fn next_backoff(last: Duration) -> Duration {
    (last * 2).clamp(ACCEPT_BACKOFF_MIN, ACCEPT_BACKOFF_MAX)
}

/// A handshake slot, given back when dropped (also when the thread that
/// holds it cannot be spawned).
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(in_flight: &Arc<AtomicUsize>) -> Option<Slot> {
        in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_HANDSHAKES).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(in_flight)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the accept loop needs.
struct Acceptor {
    socket: TcpListener,
    key: Arc<[u8]>,
    heartbeat_timeout: Duration,
    tx: Sender<Msg>,
    stopped: Arc<AtomicBool>,
    woken: Receiver<()>,
    in_flight: Arc<AtomicUsize>,
}

impl Acceptor {
    fn run(self) {
        let mut backoff = Duration::ZERO;
        while !self.stopped.load(Ordering::SeqCst) {
            match self.socket.accept() {
                Ok((stream, peer)) => {
                    backoff = Duration::ZERO;
                    if !self.stopped.load(Ordering::SeqCst) {
                        self.handshake(stream, peer);
                    }
                }
                Err(e) => {
                    if backoff.is_zero() {
                        tracing::warn!(error = %e, "accepting a remote worker failed; backing off");
                    }
                    backoff = next_backoff(backoff);
                    match self.woken.recv_timeout(backoff) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            }
        }
    }

    /// Authenticates `stream` on a thread of its own, if a slot is free;
    /// closes it at once otherwise.
    fn handshake(&self, mut stream: TcpStream, peer: SocketAddr) {
        let Some(slot) = Slot::take(&self.in_flight) else {
            tracing::debug!(%peer, "too many handshakes in progress; connection closed");
            return;
        };
        let (key, tx, heartbeat_timeout) = (
            Arc::clone(&self.key),
            self.tx.clone(),
            self.heartbeat_timeout,
        );
        let spawned = thread::Builder::new()
            .name("procpool-auth".into())
            .stack_size(HANDSHAKE_STACK)
            .spawn(move || {
                let _slot = slot;
                match procpool_ipc::remote::accept_worker(&mut stream, &key, heartbeat_timeout) {
                    Ok(session) => {
                        let _ = tx.send(Msg::Joined {
                            stream,
                            session,
                            peer,
                        });
                    }
                    Err(e) => tracing::warn!(%peer, error = %e, "remote worker refused"),
                }
            });
        if let Err(e) = spawned {
            // The closure, with the stream and the slot, is dropped.
            tracing::warn!(%peer, error = %e, "no thread for a handshake; connection closed");
        }
    }
}

impl Listener {
    /// Binds `addr` and accepts workers that know `key`, until stopped;
    /// each learns `heartbeat_timeout` in the handshake.
    pub(crate) fn start(
        addr: SocketAddr,
        key: &Key,
        heartbeat_timeout: Duration,
        tx: Sender<Msg>,
    ) -> Result<Listener, Error> {
        let listen_error = |e: io::Error| Error::Listen {
            addr,
            source: Arc::new(e),
        };
        let socket = TcpListener::bind(addr).map_err(listen_error)?;
        let bound = socket.local_addr().map_err(listen_error)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (wake, woken) = crossbeam_channel::bounded(1);
        let acceptor = Acceptor {
            socket,
            key: Arc::clone(&key.0),
            heartbeat_timeout,
            tx,
            stopped: Arc::clone(&stop),
            woken,
            in_flight: Arc::new(AtomicUsize::new(0)),
        };
        thread::Builder::new()
            .name("procpool-listener".into())
            .spawn(move || acceptor.run())
            .map_err(listen_error)?;
        Ok(Listener {
            addr: bound,
            stop,
            wake,
        })
    }

    /// The address workers connect to (the port the system chose for 0).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting: sets the flag, then wakes the loop, whether it
    /// waits in `accept` (a connection of our own) or in a back-off.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.try_send(());
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_bounds() {
        let mut d = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..12 {
            d = next_backoff(d);
            seen.push(d);
        }
        assert_eq!(seen[0], ACCEPT_BACKOFF_MIN);
        assert_eq!(seen[1], ACCEPT_BACKOFF_MIN * 2);
        assert!(seen.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*seen.last().unwrap(), ACCEPT_BACKOFF_MAX);
    }

    #[test]
    fn slots_are_capped_and_given_back() {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let slots: Vec<Slot> = (0..MAX_HANDSHAKES)
            .map(|_| Slot::take(&in_flight).expect("a free slot"))
            .collect();
        assert!(Slot::take(&in_flight).is_none());
        drop(slots);
        assert_eq!(in_flight.load(Ordering::SeqCst), 0);
        assert!(Slot::take(&in_flight).is_some());
    }
}
