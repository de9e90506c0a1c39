//! Remote workers: a worker on another machine (or started by any launcher
//! — ssh, Slurm, Kubernetes) joins a master over TCP, proving it knows the
//! pool's authentication key.
//!
//! The handshake is mutual HMAC-SHA256 challenge-response, as Python's
//! managers do, so neither side ever sends the key, and neither side talks
//! to a peer that does not know it:
//!
//! ```text
//! master → worker   "PPAUTH1" nonce_m (32 random bytes)
//! worker → master   HMAC(key, "worker" ‖ nonce_m)  nonce_w (32 random bytes)
//! master → worker   HMAC(key, "master" ‖ nonce_w ‖ timeout)  timeout
//! ```
//!
//! `timeout` is the master's heartbeat timeout in milliseconds (4 bytes,
//! little-endian), covered by the master's proof: the worker adopts it, so
//! both ends agree on how long silence means the other is gone.
//!
//! After it, the connection carries the same frames as a local worker's.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

const GREETING: &[u8; 7] = b"PPAUTH2";
const NONCE_LEN: usize = 32;
const MAC_LEN: usize = 32;

/// How long each side waits for the other during the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn mac(key: &[u8], role: &[u8], nonce: &[u8], extra: &[u8]) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(role);
    m.update(nonce);
    m.update(extra);
    m
}

fn nonce() -> io::Result<[u8; NONCE_LEN]> {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n)
        .map_err(|e| io::Error::other(format!("no randomness for the handshake: {e}")))?;
    Ok(n)
}

fn refused(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("authentication failed: {what}"),
    )
}

/// How long either side of a remote link waits for a sign of life from the
/// other, unless configured otherwise.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a link whose peer declares it lost after `timeout` of silence
/// sends a heartbeat when it has nothing else to send: a quarter of the
/// timeout, at most a second (so a peer with a shorter timeout than ours
/// still hears from us in time).
pub fn heartbeat_interval(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(1), Duration::from_secs(1))
}

/// Arms liveness on an authenticated remote link: a read that waits longer
/// than `timeout` fails (the peer sends heartbeats, so silence means it is
/// gone), as does a write the kernel does not take within `timeout`; TCP
/// keepalive probes the path as well.
///
/// # Errors
/// The socket options could not be set.
pub fn set_liveness(stream: &TcpStream, timeout: Duration) -> io::Result<()> {
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let probe = heartbeat_interval(timeout).max(Duration::from_secs(1));
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(probe)
        .with_interval(probe);
    socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

/// Master side: authenticates a worker that has just connected.
///
/// # Errors
/// [`io::ErrorKind::PermissionDenied`] when the peer does not know the key;
/// any I/O error, including a timeout after [`HANDSHAKE_TIMEOUT`].
pub fn accept_worker(
    stream: &mut TcpStream,
    key: &[u8],
    heartbeat_timeout: Duration,
) -> io::Result<()> {
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    stream.set_nodelay(true)?;
    master_handshake(stream, key, heartbeat_timeout)?;
    stream.set_read_timeout(None)?;
    Ok(())
}

/// The master's half of the handshake over any byte stream (what
/// [`accept_worker`] runs once the socket's timeouts are set; public for
/// the fuzz targets).
///
/// # Errors
/// As [`accept_worker`].
#[doc(hidden)]
pub fn master_handshake(
    stream: &mut (impl Read + Write),
    key: &[u8],
    heartbeat_timeout: Duration,
) -> io::Result<()> {
    let challenge = nonce()?;
    let mut hello = GREETING.to_vec();
    hello.extend_from_slice(&challenge);
    stream.write_all(&hello)?;
    let mut answer = [0u8; MAC_LEN + NONCE_LEN];
    stream.read_exact(&mut answer)?;
    let (proof, their_nonce) = answer.split_at(MAC_LEN);
    mac(key, b"worker", &challenge, &[])
        .verify_slice(proof)
        .map_err(|_| refused("the worker does not know the key"))?;
    let ms = u32::try_from(heartbeat_timeout.as_millis())
        .unwrap_or(u32::MAX)
        .to_le_bytes();
    let mut last = mac(key, b"master", their_nonce, &ms)
        .finalize()
        .into_bytes()
        .to_vec();
    last.extend_from_slice(&ms);
    stream.write_all(&last)
}

/// Worker side: connects to a master at `addr` and authenticates both
/// ways; returns the connection and the master's heartbeat timeout.
///
/// # Errors
/// [`io::ErrorKind::PermissionDenied`] when the master does not know the
/// key (or this worker's key is wrong); any I/O error.
pub fn connect_to_master(
    addr: impl ToSocketAddrs,
    key: &[u8],
) -> io::Result<(TcpStream, Duration)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let heartbeat_timeout = worker_handshake(&mut stream, key)?;
    stream.set_read_timeout(None)?;
    Ok((stream, heartbeat_timeout))
}

/// The worker's half of the handshake over any byte stream (what
/// [`connect_to_master`] runs once connected; public for the fuzz
/// targets). Returns the master's heartbeat timeout.
///
/// # Errors
/// As [`connect_to_master`].
#[doc(hidden)]
pub fn worker_handshake(stream: &mut (impl Read + Write), key: &[u8]) -> io::Result<Duration> {
    let mut hello = [0u8; GREETING.len() + NONCE_LEN];
    stream.read_exact(&mut hello)?;
    let (greeting, challenge) = hello.split_at(GREETING.len());
    if greeting != GREETING {
        return Err(refused("the peer is not a procpool master"));
    }
    let mine = nonce()?;
    let mut answer = mac(key, b"worker", challenge, &[])
        .finalize()
        .into_bytes()
        .to_vec();
    answer.extend_from_slice(&mine);
    stream.write_all(&answer)?;
    let mut last = [0u8; MAC_LEN + 4];
    stream.read_exact(&mut last).map_err(|e| match e.kind() {
        // The master hangs up on a wrong key.
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => {
            refused("the master refused the key")
        }
        _ => e,
    })?;
    let (proof, ms) = last.split_at(MAC_LEN);
    mac(key, b"master", &mine, ms)
        .verify_slice(proof)
        .map_err(|_| refused("the master does not know the key"))?;
    let ms = u32::from_le_bytes(ms.try_into().expect("4 bytes"));
    Ok(Duration::from_millis(u64::from(ms).max(1)))
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::thread;

    use super::*;

    fn handshake(
        master_key: &'static [u8],
        worker_key: &'static [u8],
    ) -> (io::Result<()>, io::Result<(TcpStream, Duration)>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let master = thread::spawn(move || {
            let (mut s, _) = listener.accept()?;
            accept_worker(&mut s, master_key, Duration::from_millis(1234))
        });
        let worker = connect_to_master(addr, worker_key);
        (master.join().unwrap(), worker)
    }

    #[test]
    fn same_key_connects() {
        let (m, w) = handshake(b"secret", b"secret");
        m.unwrap();
        // The worker learns the master's heartbeat timeout.
        assert_eq!(w.unwrap().1, Duration::from_millis(1234));
    }

    #[test]
    fn wrong_key_is_refused_on_both_sides() {
        let (m, w) = handshake(b"secret", b"guess");
        assert_eq!(m.unwrap_err().kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(w.unwrap_err().kind(), io::ErrorKind::PermissionDenied);
    }

    #[test]
    fn a_non_master_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let _ = s.write_all(&[b'X'; 39]);
        });
        let err = connect_to_master(addr, b"k").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        fake.join().unwrap();
    }
}
