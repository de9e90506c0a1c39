//! Remote workers: a worker on another machine (or started by any launcher
//! — ssh, Slurm, Kubernetes) joins a master over TCP, proving it knows the
//! pool's authentication key; everything after that travels encrypted.
//!
//! # The secure channel
//!
//! Every remote link is encrypted and mutually authenticated with the key,
//! with forward secrecy, by the [Noise protocol framework]'s `NNpsk0`
//! handshake: `Noise_NNpsk0_25519_ChaChaPoly_SHA256` ([`NOISE_PARAMS`]),
//! through the `snow` crate.
//!
//! - **Mutual authentication by the key**: the pre-shared key is
//!   HKDF-SHA256 of the pool's key. The worker's first message carries a
//!   tag only a holder of the key can make, and the master's answer one
//!   too, so neither side talks to a peer that does not know it, and
//!   neither ever sends it.
//! - **Forward secrecy**: each link's keys come from fresh X25519
//!   ephemeral keys on both sides (`ee`), forgotten when the link ends; a
//!   key stolen later does not decrypt a link recorded earlier.
//! - **Every byte after the handshake** travels in ChaCha20-Poly1305
//!   records whose nonce is their count, so altered, replayed, dropped or
//!   reordered bytes end the link with [`RecordRejected`].
//! - **Versioned**: before any key material is used, both sides send a
//!   magic and [`PROTOCOL_VERSION`](crate::proto::PROTOCOL_VERSION); a
//!   mismatch is refused on both sides with [`VersionMismatch`] ("the
//!   master speaks protocol 4, this worker 3").
//!
//! Why Noise rather than TLS: the pool has a shared key, not certificates.
//! TLS with a pre-shared key (TLS 1.3 PSK with `psk_dhe_ke`) would give
//! the same properties, but rustls does not offer external PSKs, and
//! OpenSSL would bring a C library and its build to every platform. Noise
//! `NNpsk0` is exactly "both know a key, agree fresh keys": two fixed-size
//! messages, one round trip, no certificates, no negotiation to get
//! wrong. `snow` is the maintained Rust implementation (pure Rust, used by
//! libp2p and WireGuard-style projects; 0.10 fixes the 2024 nonce advisory
//! of earlier versions); we take only its default resolver's ChaCha-Poly,
//! SHA-256, X25519 and OS randomness (pure Rust). On Linux x86-64 alone,
//! ChaCha-Poly and SHA-256 come from `ring`'s assembly instead (snow's
//! `ring-accelerated`; the same cipher, so the same bytes on the wire):
//! the pure Rust ChaCha20-Poly1305 took about a third of a remote queue's
//! CPU there, `ring`'s about a tenth. Other targets build no C. The
//! handshake and the records are in `secure.rs`.
//!
//! Local links (socketpairs, named pipes) are not encrypted: they never
//! leave the machine and the OS already restricts who can open them.
//!
//! [Noise protocol framework]: https://noiseprotocol.org/noise.html
//!
//! # Keys
//!
//! A key is at least [`MIN_KEY_LEN`] (16) bytes; shorter ones are refused
//! with [`KeyTooShort`] before anything is sent. Make one from a good
//! source of randomness and share it out of band, for example
//! `head -c 32 /dev/urandom | base64` in a shell, or [`random_key`] in the
//! program that launches the workers. The key admits a worker to the pool
//! (it will run whatever tasks the master sends, and the master will take
//! its results), and keeps what flows between them secret and intact.
//!
//! # What an unauthenticated peer can do
//!
//! Little: the master reads the peer's fixed-size messages into buffers on
//! the stack (nothing is allocated from what the peer announces), does no
//! public-key work until the peer has proved it knows the key, and the
//! whole handshake, every read and write together, ends at one deadline
//! ([`HANDSHAKE_TIMEOUT`]), so a peer sending a byte now and then cannot
//! hold its connection longer than that.

use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

pub use crate::secure::{NOISE_PARAMS, RecordRejected, Role, Session, VersionMismatch};

/// How long the whole handshake may take, on either side: one deadline
/// for all its reads and writes together.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The shortest key a pool or a remote worker accepts, in bytes.
pub const MIN_KEY_LEN: usize = 16;

/// A key shorter than [`MIN_KEY_LEN`] bytes: too easy to guess.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "a key of {len} bytes is too short: use at least {MIN_KEY_LEN} random bytes (e.g. `head -c 32 /dev/urandom | base64`)"
)]
pub struct KeyTooShort {
    /// The length of the key given.
    pub len: usize,
}

/// Refuses a key shorter than [`MIN_KEY_LEN`] bytes.
///
/// ```
/// use procpool_ipc::remote::{KeyTooShort, check_key};
///
/// assert_eq!(check_key(b"hunter2"), Err(KeyTooShort { len: 7 }));
/// assert!(check_key(b"a long random key shared out of band").is_ok());
/// ```
///
/// # Errors
/// [`KeyTooShort`] when it is.
pub fn check_key(key: &[u8]) -> Result<(), KeyTooShort> {
    if key.len() < MIN_KEY_LEN {
        Err(KeyTooShort { len: key.len() })
    } else {
        Ok(())
    }
}

/// A fresh key: 32 random bytes from the operating system, hex-encoded (64
/// characters), for a launcher to hand to the workers it starts.
///
/// ```
/// let key = procpool_ipc::remote::random_key().unwrap();
/// assert_eq!(key.len(), 64);
/// assert!(procpool_ipc::remote::check_key(key.as_bytes()).is_ok());
/// ```
///
/// # Errors
/// The operating system has no randomness to give.
pub fn random_key() -> io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| io::Error::other(format!("no randomness for a key: {e}")))?;
    Ok(hex(&bytes))
}

/// Set by a launcher (`procpool::Srun`) in the processes it starts: the
/// master's address, `host:port`. `procpool::init` in such a process
/// becomes a remote worker joining it.
pub const LAUNCH_ADDR_ENV: &str = "PROCPOOL_LAUNCH_ADDR";
/// Set with [`LAUNCH_ADDR_ENV`]: the pool's key, hex-encoded.
pub const LAUNCH_KEY_ENV: &str = "PROCPOOL_LAUNCH_KEY";

/// `bytes` as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// In a process a launcher started: the master's address and the key,
/// read from the environment. `None` elsewhere. The variables stay there
/// (removing a variable from a running process is unsound once it has
/// threads), so programs the tasks start inherit them; the key is one the
/// launcher made for this pool alone, and dies with it. A task that starts
/// another procpool program should remove both from that program's
/// environment (`Command::env_remove`), or it would join the pool too.
///
/// # Errors
/// The key variable is missing or not hex.
#[doc(hidden)]
pub fn take_launch_env() -> Option<io::Result<(String, Vec<u8>)>> {
    let addr = std::env::var(LAUNCH_ADDR_ENV).ok()?;
    let key = std::env::var(LAUNCH_KEY_ENV).ok();
    Some(
        key.as_deref()
            .and_then(unhex)
            .map(|k| (addr, k))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{LAUNCH_KEY_ENV} is missing or not hex"),
                )
            }),
    )
}

/// The key check as the handshake reports it.
fn usable(key: &[u8]) -> io::Result<()> {
    check_key(key).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// A socket whose reads and writes together end by one deadline: each
/// call gets what is left of it as its timeout, so a peer that trickles
/// bytes cannot stretch the handshake (a plain read timeout restarts on
/// every byte).
struct Deadlined<'a> {
    stream: &'a TcpStream,
    deadline: Instant,
}

impl Deadlined<'_> {
    fn left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(timed_out())
        } else {
            Ok(left)
        }
    }
}

fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("the handshake did not complete within {HANDSHAKE_TIMEOUT:?}"),
    )
}

/// A socket timeout shows as `WouldBlock` on Unix, `TimedOut` on Windows.
fn deadline_error(e: io::Error) -> io::Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => timed_out(),
        _ => e,
    }
}

impl Read for Deadlined<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.set_read_timeout(Some(self.left()?))?;
        (&mut &*self.stream).read(buf).map_err(deadline_error)
    }
}

impl Write for Deadlined<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.set_write_timeout(Some(self.left()?))?;
        (&mut &*self.stream).write(buf).map_err(deadline_error)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
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

/// Master side: authenticates a worker that has just connected and
/// agrees the link's keys, within [`HANDSHAKE_TIMEOUT`] in all. Split the
/// [`Session`] over the stream to read and write the link.
///
/// # Errors
/// [`io::ErrorKind::PermissionDenied`] when the peer does not know the key;
/// [`io::ErrorKind::Unsupported`] (with [`VersionMismatch`] inside) when
/// it speaks another protocol version; [`io::ErrorKind::InvalidInput`]
/// (with [`KeyTooShort`] inside) for a key under [`MIN_KEY_LEN`] bytes;
/// [`io::ErrorKind::TimedOut`] when the handshake is not done by its
/// deadline; any other I/O error.
pub fn accept_worker(
    stream: &mut TcpStream,
    key: &[u8],
    heartbeat_timeout: Duration,
) -> io::Result<Session> {
    accept_within(stream, key, heartbeat_timeout, HANDSHAKE_TIMEOUT)
}

/// [`accept_worker`] with a handshake deadline `limit` from now.
fn accept_within(
    stream: &mut TcpStream,
    key: &[u8],
    heartbeat_timeout: Duration,
    limit: Duration,
) -> io::Result<Session> {
    usable(key)?;
    stream.set_nodelay(true)?;
    let mut bounded = Deadlined {
        stream,
        deadline: Instant::now() + limit,
    };
    let session = master_handshake(&mut bounded, key, heartbeat_timeout)?;
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)?;
    Ok(session)
}

/// The master's half of the handshake over any byte stream (what
/// [`accept_worker`] runs once the socket's deadline is set; public for
/// the fuzz targets).
///
/// # Errors
/// As [`accept_worker`].
#[doc(hidden)]
pub fn master_handshake(
    stream: &mut (impl Read + Write),
    key: &[u8],
    heartbeat_timeout: Duration,
) -> io::Result<Session> {
    usable(key)?;
    crate::secure::master_handshake(stream, key, heartbeat_timeout)
}

/// Worker side: connects to a master at `addr`, authenticates both ways
/// and agrees the link's keys; returns the connection, its [`Session`]
/// (split it over the stream to read and write the link) and the master's
/// heartbeat timeout.
///
/// The handshake, once connected, takes at most [`HANDSHAKE_TIMEOUT`].
///
/// # Errors
/// [`io::ErrorKind::PermissionDenied`] when the master does not know the
/// key (or this worker's key is wrong); [`io::ErrorKind::Unsupported`]
/// (with [`VersionMismatch`] inside) when the master speaks another
/// protocol version; [`io::ErrorKind::InvalidInput`] (with [`KeyTooShort`]
/// inside) for a key under [`MIN_KEY_LEN`] bytes;
/// [`io::ErrorKind::TimedOut`] when the handshake is not done by its
/// deadline; any other I/O error.
pub fn connect_to_master(
    addr: impl ToSocketAddrs,
    key: &[u8],
) -> io::Result<(TcpStream, Session, Duration)> {
    usable(key)?;
    let stream = connect_any(addr)?;
    stream.set_nodelay(true)?;
    let mut bounded = Deadlined {
        stream: &stream,
        deadline: Instant::now() + HANDSHAKE_TIMEOUT,
    };
    let (session, heartbeat_timeout) = worker_handshake(&mut bounded, key)?;
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)?;
    Ok((stream, session, heartbeat_timeout))
}

/// Connects to the first of `addr`'s addresses that answers, each given
/// [`HANDSHAKE_TIMEOUT`] (a plain `connect` to an unreachable host can
/// wait minutes).
fn connect_any(addr: impl ToSocketAddrs) -> io::Result<TcpStream> {
    let mut last = None;
    for a in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, HANDSHAKE_TIMEOUT) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the master's address resolved to nothing",
        )
    }))
}

/// This machine's host name (`gethostname`; `COMPUTERNAME` on Windows).
///
/// # Errors
/// The system does not say, or the name is not UTF-8.
pub fn hostname() -> io::Result<String> {
    crate::sys::hostname()
}

/// The address of the network interface `name` (`eth0`, `ib0`, `lo`): its
/// first IPv4 address, else its first IPv6 one; `None` when no interface
/// has that name.
///
/// # Errors
/// The interfaces cannot be listed (always on Windows: `Unsupported`).
pub fn interface_addr(name: &str) -> io::Result<Option<IpAddr>> {
    let addrs: Vec<IpAddr> = crate::sys::interface_addrs()?
        .into_iter()
        .filter(|(n, _)| n == name)
        .map(|(_, ip)| ip)
        .collect();
    Ok(addrs
        .iter()
        .find(|ip| ip.is_ipv4())
        .or_else(|| addrs.first())
        .copied())
}

/// The host a master listening on `bound` tells its workers to connect to.
///
/// - `advertise` given: an interface name (`eth0`) becomes that
///   interface's address; a host name or an IP is taken as it is, once it
///   is known to resolve (a Slurm node name such as `$SLURMD_NODENAME` is
///   often not a host name: it is refused here rather than making every
///   worker fail later).
/// - Otherwise, for a listener on all interfaces (`0.0.0.0`, `::`), this
///   machine's host name if it resolves, else the address of its first
///   interface that is not a loopback one; for a listener on one address,
///   that address.
///
/// An IPv6 address comes in brackets, ready for `host:port`.
///
/// ```
/// use std::net::{IpAddr, Ipv4Addr};
/// use procpool_ipc::remote::advertised_host;
///
/// let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// assert_eq!(advertised_host(local, None).unwrap(), "127.0.0.1");
/// assert_eq!(advertised_host(local, Some("10.1.2.3")).unwrap(), "10.1.2.3");
/// assert!(advertised_host(local, Some("no-such-host.invalid")).is_err());
/// ```
///
/// # Errors
/// [`io::ErrorKind::NotFound`] when `advertise` is neither an interface
/// nor a host name that resolves; for the default on all interfaces, when
/// the machine has neither a resolvable name nor a non-loopback address.
pub fn advertised_host(bound: IpAddr, advertise: Option<&str>) -> io::Result<String> {
    let bracket = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    let resolves = |host: &str| {
        (host, 0u16)
            .to_socket_addrs()
            .is_ok_and(|mut a| a.next().is_some())
    };
    if let Some(host) = advertise {
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
            return Ok(bracket(ip));
        }
        if let Ok(Some(ip)) = interface_addr(host) {
            return Ok(bracket(ip));
        }
        if resolves(host) {
            return Ok(host.to_owned());
        }
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "cannot advertise {host:?}: it is neither a network interface nor a host name that resolves (a Slurm node name may not be a host name)"
            ),
        ));
    }
    if !bound.is_unspecified() {
        return Ok(bracket(bound));
    }
    if let Ok(name) = hostname() {
        if resolves(&name) {
            return Ok(name);
        }
    }
    let fallback = crate::sys::interface_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|(_, ip)| ip)
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .min_by_key(|ip| ip.is_ipv6());
    fallback.map(bracket).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "this machine's host name does not resolve and it has no network address but loopback: give one to advertise",
        )
    })
}

/// How long a remote worker keeps trying to join its master unless told
/// otherwise (see [`connect_to_master_by`]).
pub const DEFAULT_JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// [`connect_to_master`], tried again with a growing pause (50 ms doubling
/// to 2 s, with jitter so that many workers do not retry in step) until
/// `deadline`, for a worker that may start before its master listens, or
/// find it busy with other handshakes. A refused key, a key too short, or
/// a master speaking another protocol version is not retried.
///
/// # Errors
/// As [`connect_to_master`]: the refusal at once, or the last error once
/// `deadline` has passed.
pub fn connect_to_master_by(
    addr: impl ToSocketAddrs,
    key: &[u8],
    deadline: Instant,
) -> io::Result<(TcpStream, Session, Duration)> {
    let mut pause = Duration::from_millis(50);
    loop {
        match connect_to_master(&addr, key) {
            Ok(joined) => return Ok(joined),
            Err(e) if !retryable(&e) => return Err(e),
            Err(e) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(e);
                }
                tracing::debug!(error = %e, ?pause, "cannot join the master yet; retrying");
                std::thread::sleep(jitter(pause).min(left));
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Whether joining may succeed later: not when the key is refused or
/// unusable, or the master speaks another protocol version.
fn retryable(e: &io::Error) -> bool {
    !matches!(
        e.kind(),
        io::ErrorKind::PermissionDenied | io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
    )
}

/// `pause` scaled by a random factor in [0.5, 1.5).
fn jitter(pause: Duration) -> Duration {
    let mut b = [0u8; 1];
    let r = getrandom::fill(&mut b).map_or(128, |()| b[0]);
    pause / 2 + pause * u32::from(r) / 256
}

/// The worker's half of the handshake over any byte stream (what
/// [`connect_to_master`] runs once connected; public for the fuzz
/// targets). Returns the session and the master's heartbeat timeout.
///
/// # Errors
/// As [`connect_to_master`].
#[doc(hidden)]
pub fn worker_handshake(
    stream: &mut (impl Read + Write),
    key: &[u8],
) -> io::Result<(Session, Duration)> {
    usable(key)?;
    crate::secure::worker_handshake(stream, key)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, TcpListener};
    use std::thread;

    use super::*;

    const KEY: &[u8] = b"a long random key shared out of band";

    fn handshake(
        master_key: &'static [u8],
        worker_key: &'static [u8],
    ) -> (
        io::Result<Session>,
        io::Result<(TcpStream, Session, Duration)>,
    ) {
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
        let (m, w) = handshake(KEY, KEY);
        m.unwrap();
        // The worker learns the master's heartbeat timeout.
        assert_eq!(w.unwrap().2, Duration::from_millis(1234));
    }

    #[test]
    fn wrong_key_is_refused_on_both_sides() {
        let (m, w) = handshake(KEY, b"a wrong guess of sixteen bytes");
        assert_eq!(m.unwrap_err().kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(w.unwrap_err().kind(), io::ErrorKind::PermissionDenied);
    }

    #[test]
    fn a_non_master_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let _ = s.write_all(&[b'X'; 12]);
        });
        let err = connect_to_master(addr, KEY).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
        fake.join().unwrap();
    }

    #[test]
    fn short_keys_are_refused_before_anything_is_sent() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let err = connect_to_master(addr, b"fifteen bytes!!").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let inner = err.get_ref().and_then(|e| e.downcast_ref::<KeyTooShort>());
        assert_eq!(inner, Some(&KeyTooShort { len: 15 }), "{err}");
        assert!(err.to_string().contains("too short"), "{err}");
        // Nobody connected: the listener has nothing to accept.
        listener.set_nonblocking(true).unwrap();
        assert_eq!(
            listener.accept().unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );

        let client = TcpStream::connect(addr).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        s.set_nonblocking(false).unwrap();
        let err = accept_worker(&mut s, b"", Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        drop(client);
    }

    /// A peer sending a byte now and then cannot stretch the handshake: it
    /// has one deadline, not one per read (seen failing: the old per-read
    /// timeout let this peer hold the connection until it stopped).
    #[test]
    fn a_trickling_peer_meets_one_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = std::sync::Arc::clone(&done);
        let peer = thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            // A worker's preface, then one byte every 20 ms, well inside
            // any per-read timeout, for at most 47 bytes (the first
            // handshake message is 48).
            s.write_all(&crate::secure::preface()).unwrap();
            for _ in 0..47 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) || s.write_all(b"x").is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
        });
        let (mut s, _) = listener.accept().unwrap();
        let err = accept_within(
            &mut s,
            KEY,
            Duration::from_secs(1),
            Duration::from_millis(300),
        )
        .unwrap_err();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        peer.join().unwrap();
    }

    #[test]
    fn advertised_hosts() {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert_eq!(advertised_host(local, None).unwrap(), "127.0.0.1");
        assert_eq!(
            advertised_host(any, Some("::1")).unwrap(),
            "[::1]",
            "IPv6 in brackets"
        );
        assert_eq!(
            advertised_host(any, Some("localhost")).unwrap(),
            "localhost"
        );
        let err = advertised_host(any, Some("n2.invalid")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        // On all interfaces: the host name (it resolves on any sane test machine).
        assert_eq!(advertised_host(any, None).unwrap(), hostname().unwrap());
        #[cfg(target_os = "linux")]
        {
            assert_eq!(advertised_host(any, Some("lo")).unwrap(), "127.0.0.1");
            assert_eq!(interface_addr("no-such-if0").unwrap(), None);
        }
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(
            unhex(&hex(&[0, 1, 0xab, 0xff])),
            Some(vec![0, 1, 0xab, 0xff])
        );
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn random_keys_differ() {
        let (a, b) = (random_key().unwrap(), random_key().unwrap());
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
