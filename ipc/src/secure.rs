//! The secure channel of a remote link: the versioned handshake (a plain
//! preface, then Noise `NNpsk0`) and the record layer that encrypts every
//! byte after it. Why Noise, and what the key protects, is in the
//! `remote` module docs; this file is the mechanism.
//!
//! # Handshake
//!
//! ```text
//! both sides        preface: "procpool" PROTOCOL_VERSION (u32 LE)     12 bytes each
//! worker → master   Noise -> psk, e       (empty payload)             48 bytes
//! master → worker   Noise <- e, ee        (heartbeat timeout, ms)     52 bytes
//! ```
//!
//! Each side sends its preface at once and checks the other's before it
//! touches the key: a different version is refused with
//! [`VersionMismatch`] on both sides, naming both versions. Both prefaces
//! are the Noise prologue, so a peer in the middle that rewrites one makes
//! the handshake fail. Every handshake message has a fixed size, read into
//! a buffer on the stack.
//!
//! # Records
//!
//! After the handshake every byte travels in a Noise transport message
//! (ChaCha20-Poly1305), prefixed by its length (u16, big-endian):
//! `len ‖ ciphertext ‖ tag`, at most 65535 bytes in all. Each direction
//! counts its records from zero and that count is the nonce, never sent,
//! so a tampered, dropped, replayed or reordered record fails
//! authentication: the reader returns [`RecordRejected`] (as an
//! `io::ErrorKind::InvalidData` error) and the link ends.
//!
//! [`SecureWriter`] seals what the link's outbox hands it into records, as
//! many bytes per record as fit (small frames share a record, a large one
//! spans several); [`SecureReader`] opens them.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use snow::StatelessTransportState;

use crate::proto::PROTOCOL_VERSION;

/// The Noise protocol every remote link speaks.
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_ChaChaPoly_SHA256";

/// The first bytes either side sends.
pub(crate) const MAGIC: &[u8; 8] = b"procpool";
/// Magic and version.
const PREFACE_LEN: usize = MAGIC.len() + 4;
/// `-> psk, e` with an empty payload: an ephemeral key and a tag.
const MSG1_LEN: usize = DH_LEN + TAG_LEN;
/// `<- e, ee` with the heartbeat timeout.
const MSG2_LEN: usize = DH_LEN + 4 + TAG_LEN;
const DH_LEN: usize = 32;
const TAG_LEN: usize = 16;
/// The longest Noise message.
const MAX_RECORD: usize = 65535;
/// The most plaintext one record carries.
const MAX_PLAIN: usize = MAX_RECORD - TAG_LEN;
/// The most plaintext sealed at once before it is sent (16 records).
const MAX_BATCH: usize = 16 * MAX_PLAIN;

/// The two sides of a link speak different protocol versions (different
/// procpool versions): nothing was exchanged but the versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe(*self))]
pub struct VersionMismatch {
    /// The master's protocol version.
    pub master: u32,
    /// The worker's protocol version.
    pub worker: u32,
    /// Which side reports it.
    pub seen_by: Role,
}

/// One end of a remote link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The pool's side.
    Master,
    /// The remote worker's side.
    Worker,
}

fn describe(m: VersionMismatch) -> String {
    let advice = "run the same procpool version on both sides";
    match m.seen_by {
        Role::Worker => format!(
            "the master speaks protocol {}, this worker {}: {advice}",
            m.master, m.worker
        ),
        Role::Master => format!(
            "the worker speaks protocol {}, this master {}: {advice}",
            m.worker, m.master
        ),
    }
}

/// A record on an encrypted link failed authentication: it was altered,
/// replayed, reordered or dropped on the way, or is not a record at all.
/// The link ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "record {record} of the encrypted link failed authentication (altered, replayed or out of order)"
)]
pub struct RecordRejected {
    /// The record's number in its direction, from 0.
    pub record: u64,
}

/// The keys of an authenticated link, ready to encrypt it: split it into
/// its reading and writing halves.
pub struct Session {
    noise: StatelessTransportState,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

impl Session {
    /// The link's reading half over `read` and writing half over `write`
    /// (two handles of the same socket); each keeps its direction's record
    /// count, so a session is split once.
    pub fn split(self, read: TcpStream, write: TcpStream) -> (SecureReader, SecureWriter) {
        let noise = Arc::new(self.noise);
        (
            SecureReader {
                stream: BufReader::with_capacity(MAX_RECORD + 2, read),
                noise: Arc::clone(&noise),
                record: 0,
                sealed: Vec::new(),
                plain: Vec::new(),
                pos: 0,
                failed: None,
            },
            SecureWriter {
                stream: write,
                noise,
                record: 0,
                out: Vec::new(),
                sent: 0,
            },
        )
    }
}

/// `input` keyed by `salt`, expanded for `info`: HKDF-SHA256 (RFC 5869)
/// with one block of output.
fn hkdf(salt: &[u8], input: &[u8], info: &[u8]) -> [u8; 32] {
    let hmac = |key: &[u8], parts: &[&[u8]]| {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key");
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes()
    };
    let prk = hmac(salt, &[input]);
    hmac(&prk, &[info, &[1]]).into()
}

/// The Noise pre-shared key made from the pool's key (of any length);
/// public for the fuzz targets, which play the other side.
#[doc(hidden)]
pub fn psk(key: &[u8]) -> [u8; 32] {
    hkdf(b"procpool remote link", key, b"noise psk v1")
}

pub(crate) fn preface() -> [u8; PREFACE_LEN] {
    let mut p = [0u8; PREFACE_LEN];
    p[..MAGIC.len()].copy_from_slice(MAGIC);
    p[MAGIC.len()..].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    p
}

pub(crate) fn refused(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("authentication failed: {what}"),
    )
}

/// Checks the peer's preface: the magic, then the version.
fn check_preface(theirs: &[u8; PREFACE_LEN], me: Role) -> io::Result<()> {
    let (magic, version) = theirs.split_at(MAGIC.len());
    if magic != MAGIC {
        return Err(refused(match me {
            Role::Worker => "the peer is not a procpool master",
            Role::Master => "the peer is not a procpool worker",
        }));
    }
    let version = u32::from_le_bytes(version.try_into().expect("4 bytes"));
    if version == PROTOCOL_VERSION {
        return Ok(());
    }
    let (master, worker) = match me {
        Role::Master => (PROTOCOL_VERSION, version),
        Role::Worker => (version, PROTOCOL_VERSION),
    };
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        VersionMismatch {
            master,
            worker,
            seen_by: me,
        },
    ))
}

fn noise_error(e: snow::Error) -> io::Error {
    io::Error::other(format!("noise: {e}"))
}

fn builder<'a>(psk: &'a [u8; 32], prologue: &'a [u8]) -> Result<snow::Builder<'a>, snow::Error> {
    let params = NOISE_PARAMS.parse().expect("valid Noise parameters");
    snow::Builder::new(params).psk(0, psk)?.prologue(prologue)
}

/// The master's half of the handshake over any byte stream (what
/// `remote::accept_worker` runs once the socket's deadline is set; public
/// for the fuzz targets).
///
/// # Errors
/// [`io::ErrorKind::PermissionDenied`] when the peer is not a worker or
/// does not know the key; [`io::ErrorKind::Unsupported`] with a
/// [`VersionMismatch`] inside when it speaks another protocol version;
/// any I/O error.
#[doc(hidden)]
pub fn master_handshake(
    stream: &mut (impl Read + Write),
    key: &[u8],
    heartbeat_timeout: Duration,
) -> io::Result<Session> {
    let ours = preface();
    stream.write_all(&ours)?;
    // Fixed buffers on the stack: nothing the peer sends sizes anything.
    let mut theirs = [0u8; PREFACE_LEN];
    stream.read_exact(&mut theirs)?;
    check_preface(&theirs, Role::Master)?;
    let mut msg1 = [0u8; MSG1_LEN];
    stream.read_exact(&mut msg1)?;

    let psk = psk(key);
    let mut prologue = [0u8; 2 * PREFACE_LEN];
    prologue[..PREFACE_LEN].copy_from_slice(&ours);
    prologue[PREFACE_LEN..].copy_from_slice(&theirs);
    let mut noise = builder(&psk, &prologue)
        .and_then(snow::Builder::build_responder)
        .map_err(noise_error)?;
    let mut empty = [0u8; MSG1_LEN];
    noise
        .read_message(&msg1, &mut empty)
        .map_err(|_| refused("the worker does not know the key"))?;
    let ms = u32::try_from(heartbeat_timeout.as_millis())
        .unwrap_or(u32::MAX)
        .to_le_bytes();
    let mut msg2 = [0u8; MSG2_LEN];
    let n = noise.write_message(&ms, &mut msg2).map_err(noise_error)?;
    stream.write_all(&msg2[..n])?;
    let noise = noise.into_stateless_transport_mode().map_err(noise_error)?;
    Ok(Session { noise })
}

/// The worker's half of the handshake over any byte stream (what
/// `remote::connect_to_master` runs once connected; public for the fuzz
/// targets). Returns the session and the master's heartbeat timeout.
///
/// # Errors
/// [`io::ErrorKind::PermissionDenied`] when the peer is not a master or
/// does not know the key (or refuses ours); [`io::ErrorKind::Unsupported`]
/// with a [`VersionMismatch`] inside when it speaks another protocol
/// version; any I/O error.
#[doc(hidden)]
pub fn worker_handshake(
    stream: &mut (impl Read + Write),
    key: &[u8],
) -> io::Result<(Session, Duration)> {
    let ours = preface();
    stream.write_all(&ours)?;
    let mut theirs = [0u8; PREFACE_LEN];
    stream.read_exact(&mut theirs)?;
    check_preface(&theirs, Role::Worker)?;

    let psk = psk(key);
    let mut prologue = [0u8; 2 * PREFACE_LEN];
    prologue[..PREFACE_LEN].copy_from_slice(&theirs);
    prologue[PREFACE_LEN..].copy_from_slice(&ours);
    let mut noise = builder(&psk, &prologue)
        .and_then(snow::Builder::build_initiator)
        .map_err(noise_error)?;
    let mut msg1 = [0u8; MSG1_LEN];
    let n = noise.write_message(&[], &mut msg1).map_err(noise_error)?;
    stream.write_all(&msg1[..n])?;
    let mut msg2 = [0u8; MSG2_LEN];
    stream.read_exact(&mut msg2).map_err(|e| match e.kind() {
        // The master hangs up on a wrong key.
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => {
            refused("the master refused the key")
        }
        _ => e,
    })?;
    let mut ms = [0u8; MSG2_LEN];
    let n = noise
        .read_message(&msg2, &mut ms)
        .map_err(|_| refused("the master does not know the key"))?;
    if n != 4 {
        return Err(refused("the master's answer is malformed"));
    }
    let ms = u32::from_le_bytes(ms[..4].try_into().expect("4 bytes"));
    let noise = noise.into_stateless_transport_mode().map_err(noise_error)?;
    Ok((
        Session { noise },
        Duration::from_millis(u64::from(ms).max(1)),
    ))
}

/// The writing half of an encrypted link: seals bytes into records (see
/// the module docs). A [`Sink`](crate::link::Sink) for a [`Link`](crate::link::Link):
/// records the kernel did not take at once stay here, and the link's
/// writer thread sends them (see [`Sink::is_holding`](crate::link::Sink::is_holding)).
pub struct SecureWriter {
    stream: TcpStream,
    noise: Arc<StatelessTransportState>,
    /// Records sealed so far.
    record: u64,
    /// Sealed records, of which `sent` bytes are in the kernel.
    out: Vec<u8>,
    sent: usize,
}

impl std::fmt::Debug for SecureWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureWriter")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

impl SecureWriter {
    /// Seals up to [`MAX_BATCH`] bytes of `buf` into `out` (empty); how many.
    fn seal(&mut self, buf: &[u8]) -> io::Result<usize> {
        debug_assert_eq!(self.sent, self.out.len());
        self.out.clear();
        self.sent = 0;
        let take = buf.len().min(MAX_BATCH);
        for plain in buf[..take].chunks(MAX_PLAIN) {
            let at = self.out.len();
            let len = plain.len() + TAG_LEN;
            self.out.extend_from_slice(&(len as u16).to_be_bytes());
            self.out.resize(at + 2 + len, 0);
            let n = self
                .noise
                .write_message(self.record, plain, &mut self.out[at + 2..])
                .map_err(noise_error)?;
            debug_assert_eq!(n, len);
            self.record += 1;
        }
        Ok(take)
    }

    /// Sends what is sealed and unsent, without blocking; `Ok(false)`
    /// when some is left.
    fn push(&mut self) -> io::Result<bool> {
        while self.sent < self.out.len() {
            match crate::sys::try_send_tcp(&self.stream, &self.out[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Sends what is sealed and unsent, blocking (up to the socket's
    /// write timeout).
    fn push_all(&mut self) -> io::Result<()> {
        let rest = &self.out[self.sent..];
        (&self.stream).write_all(rest)?;
        self.sent = self.out.len();
        Ok(())
    }
}

impl Write for SecureWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.push_all()?;
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.seal(buf)?;
        self.push_all()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.push_all()
    }
}

impl crate::link::Sink for SecureWriter {
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.push()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.seal(buf)?;
        // What the kernel does not take now stays for the writer thread.
        self.push()?;
        Ok(n)
    }

    fn is_holding(&self) -> bool {
        self.sent < self.out.len()
    }
}

/// The reading half of an encrypted link: opens records (see the module
/// docs) and hands out their bytes.
pub struct SecureReader {
    stream: BufReader<TcpStream>,
    noise: Arc<StatelessTransportState>,
    /// Records opened so far.
    record: u64,
    sealed: Vec<u8>,
    /// The last record's bytes, of which `pos` were read.
    plain: Vec<u8>,
    pos: usize,
    /// A record that failed after bytes before it were handed out: the
    /// next read's error.
    failed: Option<io::Error>,
}

impl std::fmt::Debug for SecureReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureReader")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

impl SecureReader {
    fn rejected(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            RecordRejected {
                record: self.record,
            },
        )
    }

    /// Reads and opens the next record; `Ok(false)` at a clean end of the
    /// stream (between records).
    fn next_record(&mut self) -> io::Result<bool> {
        if self.stream.fill_buf()?.is_empty() {
            return Ok(false);
        }
        let mut len = [0u8; 2];
        self.stream.read_exact(&mut len)?;
        let len = usize::from(u16::from_be_bytes(len));
        if len < TAG_LEN {
            return Err(self.rejected());
        }
        self.sealed.resize(len, 0);
        self.stream.read_exact(&mut self.sealed)?;
        self.plain.resize(len, 0);
        let n = self
            .noise
            .read_message(self.record, &self.sealed, &mut self.plain)
            .map_err(|_| self.rejected())?;
        self.plain.truncate(n);
        self.pos = 0;
        self.record += 1;
        Ok(true)
    }
}

impl SecureReader {
    /// Whether a whole record is buffered (opening it will not block).
    fn record_buffered(&self) -> bool {
        match self.stream.buffer() {
            [hi, lo, rest @ ..] => rest.len() >= usize::from(u16::from_be_bytes([*hi, *lo])),
            _ => false,
        }
    }

    /// Copies what is left of the last record into `buf`; how much.
    fn copy_out(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.plain.len() - self.pos);
        buf[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        n
    }
}

impl Read for SecureReader {
    /// Blocks for one record if none is open; then also opens every whole
    /// record already buffered, as far as `buf` has room, so a frame
    /// reader sees a burst of small records as one read (and handles it
    /// before flushing its answers, as over a plain socket).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        while self.pos == self.plain.len() {
            if buf.is_empty() || !self.next_record()? {
                return Ok(0);
            }
        }
        let mut n = self.copy_out(buf);
        while n < buf.len() && self.pos == self.plain.len() && self.record_buffered() {
            if let Err(e) = self.next_record() {
                // The bytes before it are good: the error comes next.
                self.failed = Some(e);
                break;
            }
            n += self.copy_out(&mut buf[n..]);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
