//! Remote workers: the pool listens on TCP, and a worker started by any
//! launcher joins with the pool's address and key (see
//! [`PoolBuilder::listen`](crate::PoolBuilder::listen)). Each connection is
//! authenticated on its own thread (mutual HMAC challenge, see
//! `procpool_ipc::remote`), then handed to the supervisor as a new worker.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::Error;
use crate::config::Key;
use crate::msg::Msg;

/// The listening socket's accept loop.
#[derive(Debug)]
pub(crate) struct Listener {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
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
        let listen_error = |e| Error::Listen {
            addr,
            source: Arc::new(e),
        };
        let socket = TcpListener::bind(addr).map_err(listen_error)?;
        let bound = socket.local_addr().map_err(listen_error)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let key = Arc::clone(&key.0);
        thread::Builder::new()
            .name("procpool-listener".into())
            .spawn(move || {
                for conn in socket.incoming() {
                    if stopped.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(mut stream) = conn else { continue };
                    let (key, tx) = (Arc::clone(&key), tx.clone());
                    // A slow or hostile peer must not hold up the others.
                    let _ = thread::Builder::new()
                        .name("procpool-auth".into())
                        .spawn(move || {
                            let peer = stream.peer_addr().ok();
                            match procpool_ipc::remote::accept_worker(
                                &mut stream,
                                &key,
                                heartbeat_timeout,
                            ) {
                                Ok(()) => {
                                    if let Some(peer) = peer {
                                        let _ = tx.send(Msg::Joined { stream, peer });
                                    }
                                }
                                Err(e) => {
                                    tracing::warn!(?peer, error = %e, "remote worker refused")
                                }
                            }
                        });
                }
            })
            .map_err(listen_error)?;
        Ok(Listener { addr: bound, stop })
    }

    /// The address workers connect to (the port the system chose for 0).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting: sets the flag, then wakes the blocked `accept`.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        let _ = TcpStream::connect(wake);
    }
}
