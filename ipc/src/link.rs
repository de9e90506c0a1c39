//! [`Link`]: the writing side of one connection, shared by every thread that
//! sends on it.
//!
//! # Nobody blocks on a peer but the link's own writer
//!
//! Frames are appended to the link's *outbox*, a byte buffer behind a lock
//! that is only ever held to copy bytes in or out, never across a system
//! call. [`Link::flush`] then tries to hand the outbox to the kernel without
//! blocking (`send` with `MSG_DONTWAIT` on Unix sockets); whatever the
//! kernel does not take at once is left to the link's **writer thread**,
//! which blocks in `write` on behalf of everyone. So a thread holding a
//! lock that other threads need (dispatch, a queue's state) may write to a
//! link: a stopped or vanished peer stalls only that link's writer thread.
//!
//! Why a thread per link rather than non-blocking descriptors and a poller
//! (`mio`, `polling`): in steady state the non-blocking attempt succeeds
//! and the writer thread sleeps, so the fast path is one system call, as
//! before; the writer thread costs a wake-up only when a peer falls behind.
//! A poller would need every descriptor non-blocking, which the reader
//! threads (one blocking `read` loop per connection) and Windows named
//! pipes (no per-call non-blocking write) do not suit.
//!
//! Frames whose volume the protocol already bounds (a lane's prefetched
//! chunks, replies, deliveries within a subscription's credit) are written
//! with [`Link::write`], which never waits. Frames a user's code produces
//! at will (a queue `put` from a worker) use [`Link::send_bounded`]: it
//! waits, holding no other lock, until the outbox is below
//! [`OUTBOX_LIMIT`] and then until the frame is in the kernel, each up to
//! the caller's deadline.
//!
//! # Liveness
//!
//! With [`Link::set_heartbeat`], the writer thread sends a
//! [`Message::Heartbeat`] whenever the link has been quiet that long, so
//! the peer can declare a silent link lost. A write that the kernel does
//! not take within the heartbeat's timeout (set on the socket by its
//! owner) breaks the link: every later write fails, and the owner's reader
//! sees the end of the connection.

use std::fmt;
use std::io::Read;
use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::IpcError;
use crate::frame::{FrameReader, Header, WriteFrame, checked_len};
use crate::proto::Message;
use crate::shm::body::SharedBody;
use crate::shm::transport::{self, Control, Named, ShmTransport};
use crate::sync::{lock, wait_until};

mod lease;
pub use lease::{Incoming, Lease, MAX_LEASES};

/// Bytes a link's outbox may hold before [`Link::send_bounded`] waits for
/// room (a single larger frame is still accepted into an empty outbox).
pub const OUTBOX_LIMIT: usize = 4 << 20;

/// The byte stream a [`Link`] writes to.
pub trait Sink: Write + Send + 'static {
    /// Writes what it can of `buf` without blocking; `Err(WouldBlock)` when
    /// nothing can be written now. The default never writes, leaving every
    /// write to the link's writer thread.
    ///
    /// # Errors
    /// `WouldBlock`, or the stream's error.
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = buf;
        Err(io::ErrorKind::WouldBlock.into())
    }

    /// Whether the sink holds bytes it took from a write but has not yet
    /// handed to the kernel (an encrypting sink's last record, when the
    /// kernel took part of it). The link's writer thread then sends them
    /// with [`flush`](Write::flush), and the link does not count them as
    /// in the kernel until it has. The default holds nothing.
    fn is_holding(&self) -> bool {
        false
    }
}

impl Sink for crate::endpoint::WriteHalf {
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        crate::endpoint::WriteHalf::try_write(self, buf)
    }
}

impl Sink for TcpStream {
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        crate::sys::try_send_tcp(self, buf)
    }
}

/// A sink for tests and in-process use: any writer, written only by the
/// writer thread.
#[derive(Debug)]
pub struct Blocking<W>(pub W);

impl<W: Write> Write for Blocking<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write + Send + 'static> Sink for Blocking<W> {}

/// The writing side of one connection; see the module docs.
pub struct Link {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    max: u64,
    outbox: Mutex<Outbox>,
    /// Wakes the writer thread.
    work: Condvar,
    /// Signals bytes written (or the link broken) to threads waiting on
    /// room or on their frame.
    progress: Condvar,
    /// Large bodies through shared memory, once attached.
    shm: OnceLock<Arc<ShmTransport>>,
    /// [`Lease`]s of this link's bodies not yet dropped.
    leases: Arc<AtomicUsize>,
}

/// Frames written through the link's shared-memory transport, if any.
struct ViaShm<'a, W>(Option<&'a ShmTransport>, W);

impl<W: WriteFrame> WriteFrame for ViaShm<'_, W> {
    fn write_frame(&mut self, parts: &[&[u8]]) -> Result<(), IpcError> {
        match self.0 {
            Some(shm) => shm.write_frame(parts, &mut self.1),
            None => self.1.write_frame(parts),
        }
    }
}

struct Outbox {
    /// Bytes not yet taken by a writer.
    buf: Vec<u8>,
    /// A cleared buffer kept for reuse.
    spare: Vec<u8>,
    /// The stream; `None` while a thread is writing to it.
    sink: Option<Box<dyn Sink>>,
    /// Bytes ever appended, and ever taken by the sink.
    appended: u64,
    written: u64,
    /// The sink holds bytes it took that are not in the kernel yet (as of
    /// the last time it was given back).
    held: bool,
    /// Why the link is unusable, once it is.
    broken: Option<(io::ErrorKind, String)>,
    /// The [`Link`] was dropped: the writer drains and exits.
    closed: bool,
    heartbeat: Option<Duration>,
    last_write: Instant,
    /// Threads waiting on `progress`.
    waiters: usize,
}

impl Outbox {
    fn broken_error(&self) -> Option<IpcError> {
        let (kind, msg) = self.broken.as_ref()?;
        Some(IpcError::Io(io::Error::new(*kind, msg.clone())))
    }

    /// Takes the unwritten bytes and the sink, if no one else is writing.
    /// Also when only the sink holds bytes (with nothing to write).
    fn take(&mut self) -> Option<(Box<dyn Sink>, Vec<u8>)> {
        if (self.buf.is_empty() && !self.held) || self.broken.is_some() {
            return None;
        }
        let sink = self.sink.take()?;
        let bytes = std::mem::replace(&mut self.buf, std::mem::take(&mut self.spare));
        Some((sink, bytes))
    }

    /// Gives back the sink after `n` of `bytes` were written (and `error`,
    /// if the stream failed).
    fn give_back(
        &mut self,
        sink: Box<dyn Sink>,
        mut bytes: Vec<u8>,
        n: usize,
        error: Option<io::Error>,
    ) {
        self.held = sink.is_holding();
        self.sink = Some(sink);
        self.written += n as u64;
        if n > 0 {
            self.last_write = Instant::now();
        }
        if let Some(e) = error {
            self.broken.get_or_insert((e.kind(), e.to_string()));
        }
        if n < bytes.len() {
            // The rest goes before whatever was appended meanwhile.
            bytes.drain(..n);
            bytes.extend_from_slice(&self.buf);
            self.buf.clear();
            self.spare = std::mem::replace(&mut self.buf, bytes);
        } else {
            bytes.clear();
            if self.buf.is_empty() {
                self.spare = std::mem::replace(&mut self.buf, bytes);
            } else {
                self.spare = bytes;
            }
        }
    }
}

impl WriteFrame for (&mut Outbox, u64) {
    fn write_frame(&mut self, parts: &[&[u8]]) -> Result<(), IpcError> {
        let (outbox, max) = self;
        if let Some(e) = outbox.broken_error() {
            return Err(e);
        }
        let header = Header::new(checked_len(parts, *max)?);
        outbox.buf.extend_from_slice(header.as_bytes());
        for part in parts {
            outbox.buf.extend_from_slice(part);
        }
        outbox.appended +=
            (header.as_bytes().len() + parts.iter().map(|p| p.len()).sum::<usize>()) as u64;
        Ok(())
    }
}

/// Frames at least this long go to the kernel without a copy when the
/// outbox is empty and nobody is writing: only what the kernel does not
/// take at once is copied into the outbox.
const DIRECT_MIN: usize = 64 << 10;

/// Writes frames into a link's outbox, sending large ones directly when
/// that needs no waiting.
struct Direct<'a>(&'a Inner);

impl WriteFrame for Direct<'_> {
    fn write_frame(&mut self, parts: &[&[u8]]) -> Result<(), IpcError> {
        let inner = self.0;
        let mut outbox = inner.lock();
        let header = Header::new(checked_len(parts, inner.max)?);
        let header = header.as_bytes();
        let total = header.len() + parts.iter().map(|p| p.len()).sum::<usize>();
        if total < DIRECT_MIN || !outbox.buf.is_empty() || outbox.broken.is_some() {
            return (&mut *outbox, inner.max).write_frame(parts);
        }
        let Some(mut sink) = outbox.sink.take() else {
            return (&mut *outbox, inner.max).write_frame(parts);
        };
        outbox.appended += total as u64;
        drop(outbox);
        let mut written = 0;
        let mut error = None;
        for part in std::iter::once(header).chain(parts.iter().copied()) {
            let (n, e) = try_write_all(&mut *sink, part);
            written += n;
            if n < part.len() || e.is_some() {
                error = e;
                break;
            }
        }
        // What the kernel did not take waits in the outbox, in front.
        let mut rest = Vec::with_capacity(total - written);
        let mut skip = written;
        for part in std::iter::once(header).chain(parts.iter().copied()) {
            let from = skip.min(part.len());
            skip -= from;
            rest.extend_from_slice(&part[from..]);
        }
        let mut outbox = inner.lock();
        outbox.written += written as u64;
        outbox.give_back(sink, rest, 0, error);
        if written > 0 {
            outbox.last_write = Instant::now();
        }
        inner.progressed(&outbox);
        if let Some(e) = outbox.broken_error() {
            return Err(e);
        }
        // Frames others appended while we held the stream: their flush
        // found it taken, so the writer thread sees to them, and to what
        // the sink holds.
        if !outbox.buf.is_empty() || outbox.held {
            inner.work.notify_one();
        }
        Ok(())
    }
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("id", &self.inner.id)
            .finish_non_exhaustive()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.inner.lock().closed = true;
        self.inner.work.notify_one();
    }
}

impl Link {
    /// Wraps `sink`, giving the connection an id unique in this process,
    /// and starts its writer thread.
    ///
    /// # Errors
    /// The writer thread could not be started.
    pub fn new(sink: impl Sink, max_frame_len: u64) -> io::Result<Arc<Self>> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let inner = Arc::new(Inner {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            max: max_frame_len,
            outbox: Mutex::new(Outbox {
                buf: Vec::new(),
                spare: Vec::new(),
                sink: Some(Box::new(sink)),
                appended: 0,
                written: 0,
                held: false,
                broken: None,
                closed: false,
                heartbeat: None,
                last_write: Instant::now(),
                waiters: 0,
            }),
            work: Condvar::new(),
            progress: Condvar::new(),
            shm: OnceLock::new(),
            leases: Arc::default(),
        });
        let writer = Arc::clone(&inner);
        thread::Builder::new()
            .name(format!("procpool-writer-{}", inner.id))
            .spawn(move || writer.run())?;
        Ok(Arc::new(Self { inner }))
    }

    /// The connection's id.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Sends a [`Message::Heartbeat`] whenever nothing else was written for
    /// `every` (`None`: never, the default).
    pub fn set_heartbeat(&self, every: Option<Duration>) {
        self.inner.lock().heartbeat = every;
        self.inner.work.notify_one();
    }

    /// Sends large bodies through `shm` from now on (see
    /// [`crate::shm::transport`]); a second transport is ignored.
    pub fn attach_shm(&self, shm: Arc<ShmTransport>) {
        let _ = self.inner.shm.set(shm);
    }

    /// The link's shared-memory transport, if one is attached.
    pub fn shm(&self) -> Option<&ShmTransport> {
        self.inner.shm.get().map(|s| &**s)
    }

    /// Reads the next frame body of this link's connection into `buf`,
    /// like [`FrameReader::read_frame`], with the link's shared-memory
    /// transport applied: a body that travelled in a segment is copied
    /// out into `buf` (and the segment freed for its sender), and the
    /// transport's own frames are handled here, never returned.
    ///
    /// # Errors
    /// As [`FrameReader::read_frame`]; [`IpcError::Malformed`] for a
    /// shared-memory frame on a link without the transport, naming an
    /// unknown segment or a body outside its segment; [`IpcError::Io`]
    /// when a segment cannot be received or mapped.
    pub fn read_frame<R: Read>(
        &self,
        reader: &mut FrameReader<R>,
        buf: &mut Vec<u8>,
    ) -> Result<bool, IpcError> {
        match self.read_next(reader, buf, usize::MAX)? {
            None => Ok(false),
            Some(None) => Ok(true),
            Some(Some(named)) => {
                self.send(&Message::Free { seg: named.id })?;
                Ok(true)
            }
        }
    }

    /// Reads the next frame body like [`read_frame`](Self::read_frame),
    /// but leaves a body that travelled in a shared segment there: `buf`
    /// then holds only its first `head` bytes (enough to decode a
    /// message's fixed fields), and the returned [`Lease`] reads the rest
    /// in place, so the body is copied once, into the values decoded from
    /// it. Its sender may reuse the segment once the lease is dropped.
    ///
    /// A link has at most [`MAX_LEASES`] leases out at once; past that,
    /// bodies are copied out whole (and their segments freed at once), so
    /// that a receiver slow to decode does not hold its sender's segments
    /// and make it create more (each new one is memory to zero and map on
    /// both sides).
    ///
    /// # Errors
    /// As [`read_frame`](Self::read_frame).
    pub fn read_leased<R: Read>(
        self: &Arc<Self>,
        reader: &mut FrameReader<R>,
        buf: &mut Vec<u8>,
        head: usize,
    ) -> Result<Incoming, IpcError> {
        let held = &self.inner.leases;
        let head = if held.load(Ordering::Relaxed) < MAX_LEASES {
            head
        } else {
            usize::MAX
        };
        Ok(match self.read_next(reader, buf, head)? {
            None => Incoming::End,
            Some(None) => Incoming::Buffered,
            Some(Some(named)) if head == usize::MAX => {
                self.send(&Message::Free { seg: named.id })?;
                Incoming::Buffered
            }
            Some(Some(named)) => {
                Incoming::Leased(Lease::new(named, Arc::downgrade(self), Arc::clone(held)))
            }
        })
    }

    /// The next frame: `None` at the end, `Some(None)` for a body read
    /// into `buf`, `Some(Some(_))` for one in a segment (of which `buf`
    /// holds the first `head` bytes).
    fn read_next<R: Read>(
        &self,
        reader: &mut FrameReader<R>,
        buf: &mut Vec<u8>,
        head: usize,
    ) -> Result<Option<Option<Named>>, IpcError> {
        loop {
            if !reader.read_frame(buf)? {
                return Ok(None);
            }
            if !transport::is_control(buf) {
                return Ok(Some(None));
            }
            let Some(shm) = self.shm() else {
                return Err(IpcError::Malformed(
                    "shared memory frame on a connection without shared memory",
                ));
            };
            match shm.take_control(buf, head)? {
                Control::Body(named) => return Ok(Some(Some(named))),
                Control::Retire(seg) => self.send(&Message::Retire { seg })?,
                Control::Handled => {}
            }
        }
    }

    /// Appends a frame whose body is `head` followed by `body`'s payload,
    /// without copying the payload: the frame names `body`'s shared
    /// segment (see [`crate::shm::body`]). Never blocks. `Ok(false)`, with
    /// nothing written, on a link that cannot take segments (remote, or
    /// shared memory turned off): write the bytes as usual then.
    ///
    /// The frame limit does not apply: the body is bounded by the segment
    /// the peer maps.
    ///
    /// # Errors
    /// [`IpcError::Io`] once the link is broken.
    pub fn write_shared(&self, head: &[u8], body: &SharedBody) -> Result<bool, IpcError> {
        match self.shm() {
            Some(shm) => shm.write_shared(head, body, &mut Direct(&self.inner)),
            None => Ok(false),
        }
    }

    /// Like [`write_shared`](Self::write_shared), but hands `body` over to
    /// the link: it is kept until the peer is done reading it (its `FREE`),
    /// then goes back to its pool, which must be a
    /// [lending](crate::shm::body::BodyPool::lending) one (its segment ids
    /// make the peer answer `FREE`). If the link ends first, the body goes
    /// with it. Never blocks. `Ok(Some(body))`, with nothing written, on a
    /// link that cannot take segments: write the bytes as usual then.
    ///
    /// # Errors
    /// [`IpcError::Io`] once the link is broken (the body is dropped).
    pub fn lend_shared(
        &self,
        head: &[u8],
        body: SharedBody,
    ) -> Result<Option<SharedBody>, IpcError> {
        match self.shm() {
            Some(shm) => shm.lend(head, body, &mut Direct(&self.inner)),
            None => Ok(Some(body)),
        }
    }

    /// Appends `msg` to the outbox without flushing; never blocks.
    ///
    /// # Errors
    /// As [`Message::write`]; [`IpcError::Io`] once the link is broken.
    pub fn write(&self, msg: &Message<'_>) -> Result<(), IpcError> {
        msg.write(&mut ViaShm(self.shm(), Direct(&self.inner)))
    }

    /// Hands what the outbox holds to the kernel as far as it takes it
    /// without blocking, and the rest to the writer thread; never blocks.
    ///
    /// # Errors
    /// [`IpcError::Io`] when the link is broken.
    pub fn flush(&self) -> Result<(), IpcError> {
        let mut outbox = self.inner.lock();
        // A few rounds while other threads keep appending; then the writer thread takes over.
        for _ in 0..4 {
            if outbox.buf.is_empty() {
                break;
            }
            let Some((mut sink, bytes)) = outbox.take() else {
                break;
            };
            drop(outbox);
            let (n, error) = try_write_all(&mut *sink, &bytes);
            outbox = self.inner.lock();
            let stalled = n < bytes.len();
            outbox.give_back(sink, bytes, n, error);
            self.inner.progressed(&outbox);
            if stalled {
                break;
            }
        }
        if let Some(e) = outbox.broken_error() {
            return Err(e);
        }
        if !outbox.buf.is_empty() || outbox.held {
            self.inner.work.notify_one();
        }
        Ok(())
    }

    /// Writes `msg` and flushes; never blocks (see [`flush`](Self::flush)).
    ///
    /// # Errors
    /// As [`write`](Self::write) and [`flush`](Self::flush).
    pub fn send(&self, msg: &Message<'_>) -> Result<(), IpcError> {
        self.write(msg)?;
        self.flush()
    }

    /// Sends `msg` from code that produces frames at will: waits until the
    /// outbox holds less than [`OUTBOX_LIMIT`], appends, flushes, and waits
    /// until the frame is in the kernel. Both waits end at `deadline`
    /// (`None`: no limit). Holds no lock of the caller's while it waits.
    ///
    /// Returns whether the frame was accepted: `Ok(false)` when the outbox
    /// had no room by the deadline (nothing was appended). An accepted
    /// frame that is not in the kernel by the deadline stays in the outbox
    /// and goes out in order.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub fn send_bounded(
        &self,
        msg: &Message<'_>,
        deadline: Option<Instant>,
    ) -> Result<bool, IpcError> {
        let end = {
            let outbox = self.inner.lock();
            // Bytes a writer holds count too: they are not in the kernel yet.
            let full = |o: &Outbox| o.appended - o.written >= OUTBOX_LIMIT as u64;
            let Some(mut outbox) = self.inner.wait_while(outbox, deadline, full) else {
                return Ok(false);
            };
            let shm = self.inner.shm.get().map(|s| &**s);
            msg.write(&mut ViaShm(shm, (&mut *outbox, self.inner.max)))?;
            outbox.appended
        };
        self.flush()?;
        self.wait_written(end, deadline)?;
        Ok(true)
    }

    /// Waits until every byte appended so far is in the kernel, or
    /// `deadline`; whether it is.
    ///
    /// # Errors
    /// [`IpcError::Io`] when the link broke first.
    pub fn drain(&self, deadline: Option<Instant>) -> Result<bool, IpcError> {
        self.flush()?;
        let end = self.inner.lock().appended;
        self.wait_written(end, deadline)
    }

    fn wait_written(&self, end: u64, deadline: Option<Instant>) -> Result<bool, IpcError> {
        let outbox = self.inner.lock();
        // Bytes the sink holds are not in the kernel yet either.
        let outbox = self
            .inner
            .wait_while(outbox, deadline, |o| o.written < end || o.held);
        match outbox {
            Some(o) => o.broken_error().map_or(Ok(true), Err),
            None => Ok(false),
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Outbox> {
        lock(&self.outbox)
    }

    fn progressed(&self, outbox: &Outbox) {
        if outbox.waiters > 0 {
            self.progress.notify_all();
        }
    }

    /// Waits on `progress` while `cond` holds and the link is not broken;
    /// `None` if `deadline` passed first.
    fn wait_while<'a>(
        &self,
        mut outbox: MutexGuard<'a, Outbox>,
        deadline: Option<Instant>,
        cond: impl Fn(&Outbox) -> bool,
    ) -> Option<MutexGuard<'a, Outbox>> {
        while cond(&outbox) && outbox.broken.is_none() {
            outbox.waiters += 1;
            let woken = wait_until(&self.progress, outbox, deadline);
            let timed_out = woken.is_err();
            outbox = woken.unwrap_or_else(|g| g);
            outbox.waiters -= 1;
            if timed_out {
                return None;
            }
        }
        Some(outbox)
    }

    /// The writer thread: writes whatever callers could not, sends
    /// heartbeats, and ends once the link is dropped and drained, or broken.
    fn run(&self) {
        let mut outbox = self.lock();
        loop {
            if outbox.broken.is_some() {
                break;
            }
            if let Some((mut sink, bytes)) = outbox.take() {
                drop(outbox);
                let sent = sink.write_all(&bytes).and_then(|()| {
                    if sink.is_holding() {
                        sink.flush()
                    } else {
                        Ok(())
                    }
                });
                let (n, error) = match sent {
                    Ok(()) => (bytes.len(), None),
                    // What was written of a failed write no longer matters.
                    Err(e) => (0, Some(e)),
                };
                outbox = self.lock();
                outbox.give_back(sink, bytes, n, error);
                self.progressed(&outbox);
                continue;
            }
            if outbox.closed && outbox.sink.is_some() {
                break;
            }
            let idle = outbox.last_write.elapsed();
            let next_heartbeat = match outbox.heartbeat {
                Some(every) if idle >= every && outbox.sink.is_some() && !outbox.closed => {
                    let _ = Message::Heartbeat.write(&mut (&mut *outbox, self.max));
                    continue;
                }
                // Another thread is writing (it holds the sink; it wakes
                // us if it leaves bytes behind): look again a period
                // later. Waiting "until due" when it is already due would
                // spin on the lock, and could keep that thread from ever
                // retaking it to give the sink back (tests/link_heartbeat.rs).
                Some(every) if outbox.sink.is_none() => Some(Instant::now() + every),
                Some(every) => Some(Instant::now() + every.saturating_sub(idle)),
                None => None,
            };
            outbox = wait_until(&self.work, outbox, next_heartbeat).unwrap_or_else(|g| g);
        }
        // Waiters learn the link is broken.
        self.progressed(&outbox);
    }
}

/// Writes as much of `bytes` as `sink` takes without blocking.
fn try_write_all(sink: &mut dyn Sink, bytes: &[u8]) -> (usize, Option<io::Error>) {
    let mut n = 0;
    while n < bytes.len() {
        match sink.try_write(&bytes[n..]) {
            Ok(0) => return (n, Some(io::ErrorKind::WriteZero.into())),
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return (n, Some(e)),
        }
    }
    (n, None)
}

/// Links written to but not yet flushed; flushing is deferred so a burst of
/// frames costs one system call per connection.
#[derive(Debug, Default)]
pub struct Dirty(Vec<Arc<Link>>);

impl Dirty {
    /// Remembers that `link` has buffered frames.
    pub fn mark(&mut self, link: &Arc<Link>) {
        if !self.0.iter().any(|l| l.id() == link.id()) {
            self.0.push(Arc::clone(link));
        }
    }

    /// Whether nothing waits to be flushed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Flushes every remembered link; never blocks. A broken link is
    /// ignored here: its reader sees the end of the connection and cleans
    /// up.
    pub fn flush(&mut self) {
        for link in self.0.drain(..) {
            let _ = link.flush();
        }
    }
}

impl Drop for Dirty {
    fn drop(&mut self) {
        self.flush();
    }
}

// Over an in-process socketpair, which only the Unix backend makes.
#[cfg(all(test, unix))]
mod tests;

// Over in-process connections and descriptor (handle) channels, which
// both backends make.
#[cfg(test)]
mod shm_tests;
