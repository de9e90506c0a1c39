//! A byte-stream ring of messages in shared memory (a pipe direction's
//! "lane"), safe against the death of any process using it.
//!
//! [`Stream`] lives in memory the caller provides (a shared mapping):
//! one [`Stream::init`] formats it, every other process
//! [`Stream::attach`]es. Senders append messages, receivers take them in
//! order; each message is taken by one receiver.
//!
//! # Layout
//!
//! ```text
//! Header (7 × 64 B)  magic, version, capacity, flags, writer lease,
//!                    reader lease, hub_items, hub_gen, options | head | tail
//!                    | published | not_empty | records | not_full
//! data               capacity bytes (a power of two), records back to back
//! ```
//!
//! `head` (the reader's position) and `tail` (the writer's) are byte
//! counters that only grow; a position's offset in the data is
//! `pos % capacity`. A record is `len: u32, flags: u32` then `len` bytes,
//! padded to 8, wrapping at the end of the data (split copy); its header
//! never wraps (positions and the capacity are multiples of 8). `flags`
//! holds `FIRST`, `LAST` and the sender's lane id (bits 8..32).
//!
//! # Leases and commit points
//!
//! A sender takes the writer lease (compare-exchange `0 → its lane id`)
//! for one message, a receiver the reader lease for one message. Lane
//! ids are small non-zero numbers handed out by whoever manages the
//! stream (the hub), never pids. A message longer than a record's limit
//! (capacity / 2 − 8 bytes) goes as fragments under one writer lease; the
//! receiver reassembles them.
//!
//! - A record becomes visible only by the writer's `tail` store: a
//!   writer that dies before it left nothing; one that dies between
//!   fragments left a partial message, which the receiver drops when the
//!   next message's `FIRST` comes, or when it finds the writer lease no
//!   longer held by that writer and nothing more in the ring.
//! - A record is consumed only by the reader's `head` store: a reader
//!   that dies before it left the record for the next reader. One that
//!   dies between fragments took the message with it; the next reader
//!   skips the continuation fragments (no `FIRST` before them).
//! - A receiver that took a message's first fragment does not return
//!   before its last one (whatever its deadline), unless the sender gave
//!   the writer lease up or died: it never keeps the reader lease between
//!   calls, where other receivers would wait for it. The wait is bounded
//!   by the sender's `send`, which needs only the room this receiver
//!   frees (a stopped sender stops it too).
//!
//! Once the process holding a lane id is certainly gone (connection EOF
//! and reaped), the manager calls [`Stream::clear_leases`] with its id.
//! A message whose `send` returned is then received once, unless its
//! receiver died while taking it.
//!
//! # Sleeping and ending
//!
//! A blocked send (ring full, or another sender holds the lease) spins
//! briefly, then sleeps on the `not_full` eventcount; a blocked receive on
//! `not_empty` (the ring's eventcounts: a syscall only when a sleeper is
//! armed), which the other path's changes wake too; whoever waits for
//! records only ([`Stream::wait_record`]) sleeps on `records`. Flags end the stream: `CLOSED` (a sender closed it) and
//! `WRITERS_GONE` (set by the manager) make a drained receiver get
//! [`StreamError::Closed`]; `READERS_GONE` makes senders fail with
//! [`StreamError::ReadersGone`], also while blocked on a full ring.
//!
//! # Untrusted memory and `unsafe`
//!
//! Everything read from the memory is validated before use: the header
//! on `attach`, `head`/`tail` (the distance at most the capacity, both
//! multiples of 8), a record's length (at most the record limit and
//! inside what the writer published) and its flags. A violation is
//! [`StreamError::Corrupt`], never an access outside the memory. Offsets
//! are always computed here from the capacity cached at attach time. This
//! module follows the `unsafe` rules of `sys/`: every block has a
//! `SAFETY` comment; the memory contract is stated once, on
//! [`Stream::init`].

#[cfg(all(test, loom))]
mod loom_tests;
#[cfg(all(test, not(loom)))]
mod tests;

#[cfg(not(all(test, loom)))]
use std::ptr::NonNull;
use std::sync::Mutex;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Instant;

#[cfg(all(test, loom))]
use loom::sync::atomic::{AtomicU32, AtomicU64};
#[cfg(not(all(test, loom)))]
use std::sync::atomic::{AtomicU32, AtomicU64};

use super::ring::pause;
#[cfg(not(all(test, loom)))]
use super::ring::wake;

/// Under the loom model (`--cfg loom`): the eventcount's words without
/// the sleeping (the model uses the non-blocking operations only).
#[cfg(all(test, loom))]
mod wake {
    use loom::sync::atomic::AtomicU32;
    use std::sync::atomic::Ordering::{Relaxed, SeqCst};
    use std::time::Instant;

    pub(super) fn notify(word: &AtomicU32) {
        let w = word.load(SeqCst);
        if w & 1 != 0 {
            let _ = word.compare_exchange(w, (w & !1).wrapping_add(2), SeqCst, Relaxed);
        }
    }

    pub(super) fn arm(word: &AtomicU32) -> u32 {
        word.fetch_or(1, SeqCst) | 1
    }

    pub(super) fn sleep(_word: &AtomicU32, _armed: u32, _deadline: Option<Instant>) -> bool {
        loom::thread::yield_now();
        true
    }
}

/// "procpipe" in ASCII.
const MAGIC: u64 = 0x6570_6970_636f_7270;
/// Bumped on any change to the layout or a word's meaning.
const VERSION: u32 = 2;
#[cfg_attr(all(test, loom), allow(dead_code))] // init/attach only
const LINE: usize = 64;
/// Bytes of a record's header.
const REC: usize = 8;
/// Attempts (with growing pauses) before a blocking call sleeps.
const SPINS: u32 = 10;

/// Record flag: the first fragment of a message.
const FIRST: u32 = 1;
/// Record flag: the last fragment of a message.
const LAST: u32 = 2;
/// The sender's lane id sits above this many bits of a record's flags.
const ID_SHIFT: u32 = 8;

/// Smallest capacity [`Stream::init`] accepts.
pub const MIN_CAPACITY: usize = 64;
/// Largest capacity [`Stream::init`] accepts.
pub const MAX_CAPACITY: usize = 1 << 30;
/// Largest lane id (ids are `1..=MAX_LANE`).
pub const MAX_LANE: u32 = (1 << (32 - ID_SHIFT)) - 1;

/// Flag: a sender closed the stream.
pub const CLOSED: u32 = 1;
/// Flag: every sending handle is gone (set by the manager).
pub const WRITERS_GONE: u32 = 2;
/// Flag: every receiving handle is gone (set by the manager).
pub const READERS_GONE: u32 = 4;
const ALL_FLAGS: u32 = CLOSED | WRITERS_GONE | READERS_GONE;

/// Why a stream operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// No room for the message (for a bounded send: none came before the
    /// deadline); nothing of it is delivered.
    #[error("stream is full")]
    Full,
    /// No message (for a bounded receive: none came before the deadline).
    #[error("stream is empty")]
    Empty,
    /// Sending: a sender closed the stream. Receiving: it was closed or
    /// its senders are gone, and it is drained.
    #[error("stream is closed")]
    Closed,
    /// Every receiver is gone: nobody would take the message.
    #[error("every receiving end of the stream is gone")]
    ReadersGone,
    /// A message sent in place is longer than a record.
    #[error("message of {0} bytes is longer than a record")]
    TooLong(usize),
    /// The lane id is 0 or above [`MAX_LANE`].
    #[error("lane id {0} out of range (1 to {MAX_LANE})")]
    BadLane(u32),
    /// The capacity given to `init` is not usable.
    #[error("invalid stream capacity {0}: a power of two from {MIN_CAPACITY} to {MAX_CAPACITY}")]
    Capacity(usize),
    /// The memory given is smaller than the capacity needs.
    #[error("stream needs {needed} bytes, got {len}")]
    TooSmall {
        /// Bytes given.
        len: usize,
        /// Bytes needed.
        needed: usize,
    },
    /// The memory is not aligned to 64 bytes.
    #[error("stream memory is not 64-byte aligned")]
    Misaligned,
    /// The shared memory holds something this stream cannot have written.
    #[error("corrupt stream: {what} ({value:#x})")]
    Corrupt {
        /// What was wrong.
        what: &'static str,
        /// The offending value.
        value: u64,
    },
}

/// One cache line to itself.
#[repr(C, align(64))]
struct Padded<T>(T);

#[repr(C)]
struct Meta {
    magic: AtomicU64,
    version: AtomicU32,
    capacity: AtomicU32,
    flags: AtomicU32,
    writer: AtomicU32,
    reader: AtomicU32,
    hub_items: AtomicU32,
    /// Bumped (and receivers woken) on every change that may make an
    /// item on the other path available: receivers sleep until it moves.
    hub_gen: AtomicU32,
    /// [`COUNTED`] if whole messages are counted (see
    /// [`Stream::published`]).
    options: AtomicU32,
}

/// `Meta::options`: the stream counts the messages it publishes.
#[cfg_attr(all(test, loom), allow(dead_code))] // set by `init_with` only
const COUNTED: u32 = 1;

/// Messages published, and the one being published: set by the holder
/// of the writer lease before its last record's `tail` store, cleared
/// after `count` moved (see [`Stream::published`]).
#[repr(C)]
struct Published {
    count: AtomicU64,
    /// The `tail` that publishes the pending message (0: none pending).
    pend_tail: AtomicU64,
    /// `count` once it is published.
    pend_count: AtomicU64,
}

#[repr(C)]
struct Header {
    meta: Padded<Meta>,
    head: Padded<AtomicU64>,
    tail: Padded<AtomicU64>,
    published: Padded<Published>,
    not_empty: Padded<AtomicU32>,
    /// As `not_empty`, without the other path's changes: for whoever
    /// waits for records only (a pump, which a hub busy with its own
    /// items must not wake at every change).
    records: Padded<AtomicU32>,
    not_full: Padded<AtomicU32>,
}

/// A message being reassembled by this process (it holds the reader
/// lease meanwhile).
#[derive(Debug)]
struct Partial {
    writer: u32,
    buf: Vec<u8>,
}

/// What a send carries: bytes, or a length and what writes them in place.
enum Outgoing<'a> {
    Bytes(&'a [u8]),
    InPlace(usize, &'a mut dyn FnMut(&mut ToRing<'_>) -> bool),
}

/// What a receive reads in place: messages of one record and at least
/// this many bytes, with this reader (see [`Stream::try_recv_in_place`]).
type DirectRead<'a> = Option<(usize, &'a mut dyn FnMut(&mut InRing<'_>))>;

/// A message still in the ring, read in order by whoever holds the
/// reader lease (see [`Stream::try_recv_in_place`]).
#[derive(Debug)]
pub struct InRing<'a> {
    stream: &'a Stream,
    pos: u64,
    left: usize,
}

impl InRing<'_> {
    /// Bytes of the message not read yet.
    pub fn remaining(&self) -> usize {
        self.left
    }

    /// Fills `dst` with the message's next bytes; `false` (and nothing
    /// read) if fewer than `dst.len()` are left.
    pub fn read(&mut self, dst: &mut [u8]) -> bool {
        if dst.len() > self.left {
            return false;
        }
        self.stream.copy_out(self.pos, dst);
        self.pos += dst.len() as u64;
        self.left -= dst.len();
        true
    }
}

/// Room for a message in the ring, filled in order by whoever holds the
/// writer lease (see [`Stream::send_in_place`]).
#[derive(Debug)]
pub struct ToRing<'a> {
    stream: &'a Stream,
    pos: u64,
    left: usize,
}

impl ToRing<'_> {
    /// Bytes of the message not written yet.
    pub fn remaining(&self) -> usize {
        self.left
    }

    /// Appends `src` to the message; `false` (and nothing written) if
    /// more than [`remaining`](Self::remaining).
    pub fn write(&mut self, src: &[u8]) -> bool {
        if src.len() > self.left {
            return false;
        }
        self.stream.copy_in(self.pos, src);
        self.pos += src.len() as u64;
        self.left -= src.len();
        true
    }
}

/// A byte-stream ring of messages in shared memory. See the
/// [module docs](self).
///
/// # Examples
///
/// ```
/// use std::ptr::NonNull;
/// use procpool_ipc::shm::stream::{Stream, StreamError};
///
/// let len = Stream::bytes_needed(4096)?;
/// let layout = std::alloc::Layout::from_size_align(len, 64).unwrap();
/// let mem = NonNull::new(unsafe { std::alloc::alloc(layout) }).unwrap();
/// // SAFETY: fresh, aligned, `len` bytes, freed only after the stream.
/// let stream = unsafe { Stream::init(mem, len, 4096)? };
///
/// stream.try_send(1, b"hello")?;
/// let mut buf = Vec::new();
/// stream.try_recv(2, &mut buf)?;
/// assert_eq!(buf, b"hello");
/// assert_eq!(stream.try_recv(2, &mut buf), Err(StreamError::Empty));
///
/// drop(stream);
/// unsafe { std::alloc::dealloc(mem.as_ptr(), layout) };
/// # Ok::<(), StreamError>(())
/// ```
#[derive(Debug)]
pub struct Stream {
    mem: Mem,
    cap: usize,
    /// Whole messages are counted (`Meta::options`, read once).
    counted: bool,
    /// This process's receive state: a message half reassembled, and the
    /// lane id holding the reader lease for it.
    partial: Mutex<Option<(u32, Partial)>>,
}

// SAFETY: the memory is only accessed through atomics, or (the data) by
// the holder of a lease within the published range; the `init`/`attach`
// contract keeps it valid while any `Stream` over it exists.
unsafe impl Send for Stream {}
// SAFETY: as for `Send`; every method takes `&self` and synchronises
// through the shared atomics (and a mutex for this process's state).
unsafe impl Sync for Stream {}

impl Stream {
    /// Bytes of memory a stream of `capacity` data bytes needs.
    ///
    /// # Errors
    /// [`StreamError::Capacity`] unless `capacity` is a power of two from
    /// [`MIN_CAPACITY`] to [`MAX_CAPACITY`].
    pub fn bytes_needed(capacity: usize) -> Result<usize, StreamError> {
        if !capacity.is_power_of_two() || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
            return Err(StreamError::Capacity(capacity));
        }
        Ok(size_of::<Header>() + capacity)
    }

    /// The largest payload of one record; longer messages go in fragments.
    pub fn record_limit(&self) -> usize {
        self.cap / 2 - REC
    }

    /// The data capacity in bytes (what the stream buffers at most,
    /// record headers and padding included).
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Formats `len` bytes at `ptr` as an empty stream of `capacity`
    /// data bytes.
    ///
    /// # Errors
    /// [`StreamError::Capacity`], [`StreamError::TooSmall`],
    /// [`StreamError::Misaligned`].
    ///
    /// # Safety
    /// The memory contract, for `init` and [`Stream::attach`]: `ptr`
    /// points at `len` bytes that stay mapped, readable and writable for
    /// as long as this `Stream` exists; those bytes are accessed only by
    /// `Stream`s (in any process), never through references or plain reads
    /// and writes of other code. For `init`, in addition, no `Stream` over
    /// them is in use anywhere while it formats them.
    #[cfg(not(all(test, loom)))]
    pub unsafe fn init(ptr: NonNull<u8>, len: usize, capacity: usize) -> Result<Self, StreamError> {
        // SAFETY: the caller's contract.
        unsafe { Self::init_with(ptr, len, capacity, false) }
    }

    /// As [`init`](Self::init); with `counted`, the stream also counts
    /// the whole messages it publishes ([`published`](Self::published)),
    /// exactly, whoever dies (at the price of a few stores per message).
    ///
    /// # Errors
    /// As [`init`](Self::init).
    ///
    /// # Safety
    /// As [`init`](Self::init).
    #[cfg(not(all(test, loom)))]
    pub unsafe fn init_with(
        ptr: NonNull<u8>,
        len: usize,
        capacity: usize,
        counted: bool,
    ) -> Result<Self, StreamError> {
        let needed = Self::bytes_needed(capacity)?;
        if len < needed {
            return Err(StreamError::TooSmall { len, needed });
        }
        if ptr.align_offset(LINE) != 0 {
            return Err(StreamError::Misaligned);
        }
        // SAFETY: `needed <= len` writable bytes nobody else uses during
        // `init` (contract); all-zero is a valid state for every word.
        unsafe { ptr.as_ptr().write_bytes(0, needed) };
        let s = Self {
            mem: Mem { base: ptr },
            cap: capacity,
            counted,
            partial: Mutex::new(None),
        };
        let meta = &s.header().meta.0;
        meta.options
            .store(if counted { COUNTED } else { 0 }, SeqCst);
        meta.version.store(VERSION, SeqCst);
        // Fits: at most MAX_CAPACITY = 2^30.
        meta.capacity.store(capacity as u32, SeqCst);
        meta.magic.store(MAGIC, SeqCst);
        Ok(s)
    }

    /// Uses a stream another `Stream` (in any process) formatted at `ptr`.
    /// The header is validated and the capacity read once, here.
    ///
    /// # Errors
    /// [`StreamError::Corrupt`] when the header is not a valid stream's,
    /// [`StreamError::Misaligned`].
    ///
    /// # Safety
    /// The memory contract of [`Stream::init`].
    #[cfg(not(all(test, loom)))]
    pub unsafe fn attach(ptr: NonNull<u8>, len: usize) -> Result<Self, StreamError> {
        if ptr.align_offset(LINE) != 0 {
            return Err(StreamError::Misaligned);
        }
        if len < size_of::<Header>() {
            return Err(corrupt("memory shorter than a header", len as u64));
        }
        // SAFETY: at least a header's bytes, aligned, valid for the borrow
        // (contract); the header is atomics only, valid for any bits.
        let meta = &unsafe { ptr.cast::<Header>().as_ref() }.meta.0;
        let magic = meta.magic.load(SeqCst);
        if magic != MAGIC {
            return Err(corrupt("bad magic", magic));
        }
        let version = meta.version.load(SeqCst);
        if version != VERSION {
            return Err(corrupt("unknown version", version.into()));
        }
        let cap = meta.capacity.load(SeqCst) as usize;
        let needed =
            Self::bytes_needed(cap).map_err(|_| corrupt("invalid capacity", cap as u64))?;
        if needed > len {
            return Err(corrupt("capacity larger than the memory", cap as u64));
        }
        Ok(Self {
            mem: Mem { base: ptr },
            cap,
            counted: meta.options.load(SeqCst) & COUNTED != 0,
            partial: Mutex::new(None),
        })
    }

    fn header(&self) -> &Header {
        self.mem.header()
    }

    fn meta(&self) -> &Meta {
        &self.header().meta.0
    }

    /// The stream's flags ([`CLOSED`], [`WRITERS_GONE`], [`READERS_GONE`]).
    pub fn flags(&self) -> u32 {
        self.meta().flags.load(SeqCst)
    }

    /// Sets `flag` (one of the flag constants) and wakes every sleeper.
    pub fn set_flag(&self, flag: u32) {
        self.meta().flags.fetch_or(flag & ALL_FLAGS, SeqCst);
        self.notify_all();
    }

    /// Whether a record is waiting (a receive may make progress).
    pub fn has_record(&self) -> bool {
        let h = self.header();
        h.tail.0.load(SeqCst) != h.head.0.load(SeqCst)
    }

    /// How far receivers have read (a byte position that only grows): a
    /// sender waiting for room sees receivers make progress when it moves.
    pub fn read_position(&self) -> u64 {
        self.header().head.0.load(SeqCst)
    }

    /// Items of this direction waiting in (or on their way from) the
    /// manager's other path; kept by the manager, read by receivers.
    pub fn hub_items(&self) -> u32 {
        self.meta().hub_items.load(SeqCst)
    }

    /// Counts one more item on the other path and wakes receivers.
    pub fn hub_item_added(&self) {
        self.meta().hub_items.fetch_add(1, SeqCst);
        self.hub_changed();
    }

    /// The other path's generation: it moves whenever an item there may
    /// have become available (see [`hub_changed`](Self::hub_changed)).
    pub fn hub_gen(&self) -> u32 {
        self.meta().hub_gen.load(SeqCst)
    }

    /// An item on the other path may have become available without its
    /// count growing (one delivered ahead came back): moves the
    /// generation and wakes receivers (no system call unless one sleeps).
    pub fn hub_changed(&self) {
        self.meta().hub_gen.fetch_add(1, SeqCst);
        wake::notify(&self.header().not_empty.0);
        // (Not `records`: nothing changed in the ring.)
    }

    /// Counts one item fewer on the other path (never below zero).
    pub fn hub_item_taken(&self) {
        let _ = self
            .meta()
            .hub_items
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1));
    }

    /// Releases any lease held by `lane`, whose process is certainly gone
    /// (never call it for a live one), and wakes every sleeper. Returns
    /// `(writer lease cleared, reader lease cleared)`.
    pub fn clear_leases(&self, lane: u32) -> (bool, bool) {
        let m = self.meta();
        if lane != 0 && m.writer.load(SeqCst) == lane {
            // It died publishing a message: counted only if its `tail`
            // store was made.
            let h = self.header();
            let p = &h.published.0;
            let end = p.pend_tail.load(SeqCst);
            if end != 0 && h.tail.0.load(SeqCst) < end {
                let counted = p.pend_count.load(SeqCst);
                let _ = p
                    .count
                    .compare_exchange(counted, counted - 1, SeqCst, SeqCst);
            }
            p.pend_tail.store(0, SeqCst);
        }
        let w = lane != 0 && m.writer.compare_exchange(lane, 0, SeqCst, SeqCst).is_ok();
        let r = lane != 0 && m.reader.compare_exchange(lane, 0, SeqCst, SeqCst).is_ok();
        self.notify_all();
        (w, r)
    }

    /// The lane ids holding `(writer, reader)` leases now (0: none).
    pub fn leases(&self) -> (u32, u32) {
        let m = self.meta();
        (m.writer.load(SeqCst), m.reader.load(SeqCst))
    }

    /// Sets the count of items on the other path; moves the generation
    /// and wakes receivers when it grew.
    pub fn set_hub_items(&self, n: u32) {
        let old = self.meta().hub_items.swap(n, SeqCst);
        if n > old {
            self.hub_changed();
        }
    }

    /// Sleeps until a record or a flag may be there, or `deadline`, or
    /// spuriously. For watcher threads; returns `false` at the deadline.
    pub fn wait_readable(&self, deadline: Option<Instant>) -> bool {
        self.sleep_readers(deadline, || {
            self.has_record() || self.flags() != 0 || self.hub_items() > 0
        })
    }

    /// Sleeps until a record or an end flag may be there (not for
    /// `hub_items`), or `deadline`, or spuriously; `false` at the deadline.
    pub fn wait_record(&self, deadline: Option<Instant>) -> bool {
        let word = &self.header().records.0;
        let armed = wake::arm(word);
        if self.has_record() || self.flags() & (CLOSED | WRITERS_GONE) != 0 {
            return true;
        }
        wake::sleep(word, armed, deadline)
    }

    /// Sleeps on the receivers' eventcount unless `ready()` holds once
    /// armed: returns at once then, or when woken (records, flags, hub
    /// counts, lease releases), or at `deadline` (`false`).
    pub fn sleep_readers(&self, deadline: Option<Instant>, ready: impl Fn() -> bool) -> bool {
        let word = &self.header().not_empty.0;
        let armed = wake::arm(word);
        if ready() {
            return true;
        }
        wake::sleep(word, armed, deadline)
    }

    fn notify_all(&self) {
        self.notify_readers();
        wake::notify(&self.header().not_full.0);
    }

    /// Wakes receivers (and whoever waits for records only).
    fn notify_readers(&self) {
        let h = self.header();
        wake::notify(&h.not_empty.0);
        wake::notify(&h.records.0);
    }

    /// Sends `msg` if it fits now (and no other sender holds the lease).
    ///
    /// # Errors
    /// [`StreamError::Full`], [`StreamError::Closed`],
    /// [`StreamError::ReadersGone`], [`StreamError::BadLane`],
    /// [`StreamError::Corrupt`].
    pub fn try_send(&self, lane: u32, msg: &[u8]) -> Result<(), StreamError> {
        self.send_inner(lane, Outgoing::Bytes(msg), Some(Instant::now()), false)
            .map(drop)
    }

    /// Sends `msg`, waiting for room (and for the writer lease) until
    /// `deadline` (`None`: no limit). Returns once the whole message is
    /// in the ring. A message longer than [`record_limit`](Self::record_limit)
    /// goes in fragments; a deadline reached between fragments leaves a
    /// partial message that receivers drop.
    ///
    /// # Errors
    /// As [`try_send`](Self::try_send); [`StreamError::Full`] at the
    /// deadline.
    pub fn send(
        &self,
        lane: u32,
        msg: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(), StreamError> {
        self.send_inner(lane, Outgoing::Bytes(msg), deadline, true)
            .map(drop)
    }

    /// Sends a message of `len` bytes (at most
    /// [`record_limit`](Self::record_limit)) that `fill` writes straight
    /// into the ring, waiting as [`send`](Self::send) does: an encoder
    /// writing there saves a copy of a large message. The message is
    /// published only if `fill` returns `true` having written exactly
    /// `len` bytes; otherwise nothing is sent and `Ok(false)` comes back.
    ///
    /// `fill` holds up every other sender while it runs. If it panics,
    /// nothing is sent, the lease is given back, and the panic goes on.
    ///
    /// # Errors
    /// As [`send`](Self::send); [`StreamError::TooLong`] when `len` is
    /// over the record limit.
    pub fn send_in_place(
        &self,
        lane: u32,
        len: usize,
        deadline: Option<Instant>,
        fill: impl FnOnce(&mut ToRing<'_>) -> bool,
    ) -> Result<bool, StreamError> {
        if len > self.record_limit() {
            return Err(StreamError::TooLong(len));
        }
        let mut fill = Some(fill);
        let mut once = |w: &mut ToRing<'_>| fill.take().is_some_and(|f| f(w));
        self.send_inner(lane, Outgoing::InPlace(len, &mut once), deadline, true)
    }

    fn send_inner(
        &self,
        lane: u32,
        msg: Outgoing<'_>,
        deadline: Option<Instant>,
        block: bool,
    ) -> Result<bool, StreamError> {
        check_lane(lane)?;
        let m = self.meta();
        let h = self.header();
        // The writer lease.
        self.wait(&h.not_full.0, deadline, block, StreamError::Full, || {
            send_flags(self.flags())?;
            if m.writer.compare_exchange(0, lane, SeqCst, SeqCst).is_err() {
                return Ok(None);
            }
            // Checked again under the lease: a receiver decides `Closed`
            // only while it holds the lease itself (`closed_or_none`), so
            // a close is either seen here or after this send's commit.
            if let Err(e) = send_flags(self.flags()) {
                let _ = m.writer.compare_exchange(lane, 0, SeqCst, SeqCst);
                self.notify_all();
                return Err(e);
            }
            Ok(Some(()))
        })?;
        let r = match msg {
            Outgoing::Bytes(msg) => self
                .send_fragments(lane, msg, deadline, block)
                .map(|()| true),
            Outgoing::InPlace(len, fill) => {
                let run = std::panic::AssertUnwindSafe(|| {
                    self.send_filled(lane, len, fill, deadline, block)
                });
                match std::panic::catch_unwind(run) {
                    Ok(r) => r,
                    Err(panic) => {
                        let _ = m.writer.compare_exchange(lane, 0, SeqCst, SeqCst);
                        wake::notify(&h.not_full.0);
                        std::panic::resume_unwind(panic);
                    }
                }
            }
        };
        let _ = m.writer.compare_exchange(lane, 0, SeqCst, SeqCst);
        wake::notify(&h.not_full.0);
        self.notify_readers();
        r
    }

    fn send_fragments(
        &self,
        lane: u32,
        msg: &[u8],
        deadline: Option<Instant>,
        block: bool,
    ) -> Result<(), StreamError> {
        let limit = self.record_limit();
        let mut chunks = msg.chunks(limit).peekable();
        let mut first = true;
        let empty: &[u8] = &[];
        loop {
            let chunk = match chunks.next() {
                Some(c) => c,
                None if first => empty,
                None => return Ok(()),
            };
            let last = chunks.peek().is_none();
            let flags =
                (lane << ID_SHIFT) | if first { FIRST } else { 0 } | if last { LAST } else { 0 };
            let tail = self.begin_record(chunk.len(), flags, deadline, block)?;
            self.copy_in(tail + REC as u64, chunk);
            self.commit_record(tail, chunk.len(), last);
            first = false;
            if last {
                return Ok(());
            }
        }
    }

    /// The message of `len` bytes of [`send_in_place`](Self::send_in_place),
    /// under the writer lease: published if `fill` wrote it whole.
    fn send_filled(
        &self,
        lane: u32,
        len: usize,
        fill: &mut dyn FnMut(&mut ToRing<'_>) -> bool,
        deadline: Option<Instant>,
        block: bool,
    ) -> Result<bool, StreamError> {
        let tail = self.begin_record(len, (lane << ID_SHIFT) | FIRST | LAST, deadline, block)?;
        let mut room = ToRing {
            stream: self,
            pos: tail + REC as u64,
            left: len,
        };
        if !fill(&mut room) || room.left != 0 {
            return Ok(false);
        }
        self.commit_record(tail, len, true);
        Ok(true)
    }

    /// Waits (holding the writer lease) for room for a record of `len`
    /// bytes (at most the record limit), and writes its header there;
    /// returns its position.
    fn begin_record(
        &self,
        len: usize,
        flags: u32,
        deadline: Option<Instant>,
        block: bool,
    ) -> Result<u64, StreamError> {
        let h = self.header();
        let need = (REC + len).next_multiple_of(REC) as u64;
        let tail = self.wait(&h.not_full.0, deadline, block, StreamError::Full, || {
            send_flags(self.flags())?;
            let (head, tail) = self.positions()?;
            Ok((self.cap as u64 - (tail - head) >= need).then_some(tail))
        })?;
        // Fits: len <= limit < 2^31.
        let mut rec = [0u8; REC];
        rec[..4].copy_from_slice(&(len as u32).to_le_bytes());
        rec[4..].copy_from_slice(&flags.to_le_bytes());
        self.copy_in(tail, &rec);
        Ok(tail)
    }

    /// The commit point: the record of `len` bytes at `tail` becomes
    /// visible (and, `last` of its message, the message is counted).
    fn commit_record(&self, tail: u64, len: usize, last: bool) {
        let h = self.header();
        let end = tail + (REC + len).next_multiple_of(REC) as u64;
        if self.counted && last {
            // Counted before it can be taken (a count read after a
            // receiver's confirmation includes the message). Should this
            // process die between the two stores, the pending marks let
            // `clear_leases` take the count back.
            let p = &h.published.0;
            let count = p.count.load(SeqCst) + 1;
            p.pend_count.store(count, SeqCst);
            p.pend_tail.store(end, SeqCst);
            p.count.store(count, SeqCst);
            h.tail.0.store(end, SeqCst);
            p.pend_tail.store(0, SeqCst);
        } else {
            h.tail.0.store(end, SeqCst);
        }
        self.notify_readers();
    }

    /// Whole messages published so far (0 unless the stream was made
    /// `counted`, see [`init_with`](Self::init_with)): a message counts
    /// from just before the `tail` store that makes its last record
    /// visible, so before any receiver can take it. A sender that dies
    /// between the two leaves one too many, until its lease is cleared
    /// (`clear_leases` takes it back).
    pub fn published(&self) -> u64 {
        self.header().published.0.count.load(SeqCst)
    }

    /// Receives the next message into `buf` (cleared first) if one is
    /// there now.
    ///
    /// # Errors
    /// [`StreamError::Empty`] (also while another process holds the
    /// reader lease, or no record is there; a message whose first
    /// fragment it took is waited for to its end, see the module docs),
    /// [`StreamError::Closed`] once a flag is set and the stream is
    /// drained, [`StreamError::BadLane`],
    /// [`StreamError::Corrupt`].
    pub fn try_recv(&self, lane: u32, buf: &mut Vec<u8>) -> Result<(), StreamError> {
        check_lane(lane)?;
        match self.recv_once(lane, buf, &|| false, &mut |_| {}, None)? {
            Some(()) => Ok(()),
            None => Err(StreamError::Empty),
        }
    }

    /// As [`try_recv`](Self::try_recv), except that once this receiver
    /// holds the reader lease for a new message, `defer()` is asked: if it
    /// says so, the lease is given back untouched and `Ok(false)` comes
    /// back. Nobody else can take a record between the question and the
    /// take (a manager that moves records elsewhere takes them under the
    /// same lease), so a receiver that must prefer another path while it
    /// holds items asks here. `Ok(true)`: a message is in `buf`.
    ///
    /// # Errors
    /// As [`try_recv`](Self::try_recv).
    pub fn try_recv_unless(
        &self,
        lane: u32,
        buf: &mut Vec<u8>,
        defer: impl Fn() -> bool,
    ) -> Result<bool, StreamError> {
        self.recv_unless(lane, buf, defer, &mut |_| {}, None)
    }

    /// As [`try_recv_unless`](Self::try_recv_unless), except that a
    /// message of one record and at least `min` bytes is not copied into
    /// `buf`: `read` reads it where it is, under the reader lease, before
    /// it is consumed (a decoder reading straight from the ring saves a
    /// copy of a large message). `Ok(true)`: a message was taken, by
    /// `read` if it ran, else into `buf`.
    ///
    /// `read` holds up every other receiver while it runs. If it panics,
    /// the message is consumed (as a message that fails to decode is),
    /// the lease given back, and the panic goes on. `then` runs once a
    /// message was taken, before the lease is given back (as in
    /// [`try_recv_then`](Self::try_recv_then)).
    ///
    /// # Errors
    /// As [`try_recv`](Self::try_recv).
    pub fn try_recv_in_place(
        &self,
        lane: u32,
        buf: &mut Vec<u8>,
        defer: impl Fn() -> bool,
        min: usize,
        read: impl FnOnce(&mut InRing<'_>),
        then: impl FnOnce(),
    ) -> Result<bool, StreamError> {
        // A panic in `read` is caught here and goes on once the message
        // is consumed, `then` ran and the lease is back: nobody else
        // would ever take the message, and `then` may be bookkeeping.
        let mut panicked = None;
        let mut read = Some(read);
        let mut once = |r: &mut InRing<'_>| {
            if let Some(f) = read.take() {
                let run = std::panic::AssertUnwindSafe(|| f(r));
                panicked = std::panic::catch_unwind(run).err();
            }
        };
        let mut then = Some(then);
        let mut then_once = |_: &mut Vec<u8>| {
            if let Some(f) = then.take() {
                f();
            }
        };
        let r = self.recv_unless(lane, buf, defer, &mut then_once, Some((min, &mut once)));
        if let Some(panic) = panicked {
            std::panic::resume_unwind(panic);
        }
        r
    }

    fn recv_unless(
        &self,
        lane: u32,
        buf: &mut Vec<u8>,
        defer: impl Fn() -> bool,
        then: &mut dyn FnMut(&mut Vec<u8>),
        direct: DirectRead<'_>,
    ) -> Result<bool, StreamError> {
        check_lane(lane)?;
        let deferred = std::cell::Cell::new(false);
        let ask = || {
            let d = defer();
            deferred.set(d);
            d
        };
        match self.recv_once(lane, buf, &ask, then, direct)? {
            Some(()) => Ok(true),
            None if deferred.get() => Ok(false),
            None => Err(StreamError::Empty),
        }
    }

    /// As [`try_recv`](Self::try_recv), running `then` on the message
    /// before the reader lease is given back: a manager that moves
    /// messages to another path publishes the move there (see
    /// [`try_recv_unless`](Self::try_recv_unless)) before any receiver
    /// can look at the ring again.
    ///
    /// # Errors
    /// As [`try_recv`](Self::try_recv).
    pub fn try_recv_then(
        &self,
        lane: u32,
        buf: &mut Vec<u8>,
        mut then: impl FnMut(&mut Vec<u8>),
    ) -> Result<(), StreamError> {
        check_lane(lane)?;
        match self.recv_once(lane, buf, &|| false, &mut then, None)? {
            Some(()) => Ok(()),
            None => Err(StreamError::Empty),
        }
    }

    /// Whole messages in the ring now (a snapshot), counted under the
    /// reader lease (waiting for it at most until `deadline`; `None` if
    /// it could not be had). A message half taken by this process counts
    /// as one.
    pub fn messages(&self, lane: u32, deadline: Instant) -> Option<usize> {
        check_lane(lane).ok()?;
        let state = self
            .partial
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let m = self.meta();
        let mine = state.is_some();
        if !mine {
            let mut spin = 0;
            while m.reader.compare_exchange(0, lane, SeqCst, SeqCst).is_err() {
                if Instant::now() >= deadline {
                    return None;
                }
                pause(spin);
                spin = (spin + 1).min(SPINS);
            }
        }
        let mut n = usize::from(mine);
        let r = self.positions().map(|(mut head, tail)| {
            while head < tail {
                let mut rec = [0u8; REC];
                self.copy_out(head, &mut rec);
                let len = u32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]) as usize;
                let flags = u32::from_le_bytes([rec[4], rec[5], rec[6], rec[7]]);
                if len > self.record_limit() {
                    break;
                }
                n += usize::from(flags & FIRST != 0);
                head += (REC + len).next_multiple_of(REC) as u64;
            }
        });
        if !mine {
            let _ = m.reader.compare_exchange(lane, 0, SeqCst, SeqCst);
            self.notify_readers();
        }
        r.ok().map(|()| n)
    }

    /// Receives the next message into `buf` (cleared first), waiting
    /// until `deadline` (`None`: no limit) for one to begin (once its
    /// first fragment is taken, for the rest whatever the deadline).
    ///
    /// # Errors
    /// As [`try_recv`](Self::try_recv); [`StreamError::Empty`] at the
    /// deadline.
    pub fn recv(
        &self,
        lane: u32,
        buf: &mut Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<(), StreamError> {
        check_lane(lane)?;
        let word = &self.header().not_empty.0;
        self.wait(word, deadline, true, StreamError::Empty, || {
            self.recv_once(lane, buf, &|| false, &mut |_| {}, None)
        })
    }

    /// Runs `attempt` until it gives `Some` or an error: a few spins, then
    /// sleeps on `word` (armed before the re-check) until `deadline`,
    /// which gives `timeout`. With `block == false`, one attempt.
    fn wait<T>(
        &self,
        word: &AtomicU32,
        deadline: Option<Instant>,
        block: bool,
        timeout: StreamError,
        mut attempt: impl FnMut() -> Result<Option<T>, StreamError>,
    ) -> Result<T, StreamError> {
        if let Some(v) = attempt()? {
            return Ok(v);
        }
        if !block {
            return Err(timeout);
        }
        loop {
            for spin in 0..SPINS {
                pause(spin);
                if let Some(v) = attempt()? {
                    return Ok(v);
                }
            }
            let armed = wake::arm(word);
            if let Some(v) = attempt()? {
                return Ok(v);
            }
            if !wake::sleep(word, armed, deadline) {
                return Err(timeout);
            }
        }
    }

    /// One receive attempt: `Some` with the message in `buf`, `None` when
    /// there is none now.
    /// `defer`: see [`try_recv_unless`](Self::try_recv_unless); `then`:
    /// see [`try_recv_then`](Self::try_recv_then); `direct`: see
    /// [`try_recv_in_place`](Self::try_recv_in_place).
    fn recv_once(
        &self,
        lane: u32,
        buf: &mut Vec<u8>,
        defer: &dyn Fn() -> bool,
        then: &mut dyn FnMut(&mut Vec<u8>),
        mut direct: DirectRead<'_>,
    ) -> Result<Option<()>, StreamError> {
        // Another thread of this process receiving: wait for it (it sleeps
        // under the lock only in the middle of a message, while its sender
        // sends the rest).
        let mut state = self
            .partial
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let m = self.meta();
        let h = self.header();
        if state.is_none() {
            if !self.has_record() {
                return self.closed_or_none(lane);
            }
            if m.reader.compare_exchange(0, lane, SeqCst, SeqCst).is_err() {
                return Ok(None);
            }
            if defer() {
                let _ = m.reader.compare_exchange(lane, 0, SeqCst, SeqCst);
                self.notify_readers();
                return Ok(None);
            }
        }
        let holder = state.as_ref().map_or(lane, |(l, _)| *l);
        let r = match self.take_records(&mut state, holder, buf, &mut direct) {
            // Mid-message: never return with the lease (other receivers
            // would wait for this one's next call). The rest comes from a
            // sender inside its `send` (a `try_send` gives the lease back
            // before it returns), which needs only the room this receiver
            // frees; it ends with the last fragment, or with the lease
            // released (a deadline, a flag, `clear_leases` after a death),
            // which drops the part.
            Ok(false) if state.is_some() => {
                self.wait(&h.not_empty.0, None, true, StreamError::Empty, || {
                    Ok(
                        match self.take_records(&mut state, holder, buf, &mut None)? {
                            false if state.is_some() => None,
                            done => Some(done),
                        },
                    )
                })
            }
            r => r,
        };
        if matches!(r, Ok(true)) {
            then(buf);
        }
        if state.is_none() {
            let _ = m.reader.compare_exchange(holder, 0, SeqCst, SeqCst);
            self.notify_readers();
        }
        match r {
            Ok(true) => Ok(Some(())),
            Ok(false) if state.is_none() => self.closed_or_none(lane),
            Ok(false) => Ok(None),
            Err(e) => {
                // Give up the lease and what was assembled: a corrupt
                // stream stays corrupt for everyone.
                if state.take().is_some() {
                    let _ = m.reader.compare_exchange(holder, 0, SeqCst, SeqCst);
                }
                Err(e)
            }
        }
    }

    /// `Closed` when a flag says no more will come and the ring is empty;
    /// `None` otherwise.
    ///
    /// After `CLOSED` (set by one sender while others may be sending),
    /// only with the writer lease taken for a moment (as `lane`): a sender
    /// holding it checked `CLOSED` after taking it and may be about to
    /// commit a message it will report sent, so the ring is not final
    /// yet; one that takes it later sees `CLOSED` and fails.
    fn closed_or_none(&self, lane: u32) -> Result<Option<()>, StreamError> {
        let flags = self.flags();
        if flags & (CLOSED | WRITERS_GONE) == 0 || self.has_record() {
            return Ok(None);
        }
        if flags & WRITERS_GONE != 0 {
            // No sender is left to commit anything.
            return Err(StreamError::Closed);
        }
        let m = self.meta();
        if m.writer.compare_exchange(0, lane, SeqCst, SeqCst).is_err() {
            return Ok(None);
        }
        let drained = !self.has_record();
        let _ = m.writer.compare_exchange(lane, 0, SeqCst, SeqCst);
        wake::notify(&self.header().not_full.0);
        if drained {
            Err(StreamError::Closed)
        } else {
            Ok(None)
        }
    }

    /// Takes records (this process holds the reader lease) until a whole
    /// message is in `buf` (`true`) or the ring is empty (`false`; a
    /// partial message stays in `state`, or is dropped when its writer
    /// is gone).
    fn take_records(
        &self,
        state: &mut Option<(u32, Partial)>,
        holder: u32,
        buf: &mut Vec<u8>,
        direct: &mut DirectRead<'_>,
    ) -> Result<bool, StreamError> {
        let h = self.header();
        loop {
            let (head, tail) = self.positions()?;
            if head == tail {
                if let Some((_, p)) = state.as_ref() {
                    // Mid-message: if its writer no longer holds the lease
                    // and nothing more came, it died (or gave up).
                    if self.meta().writer.load(SeqCst) != p.writer && !self.has_record() {
                        *state = None;
                    }
                }
                return Ok(false);
            }
            let mut rec = [0u8; REC];
            self.copy_out(head, &mut rec);
            let len = u32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]) as usize;
            let flags = u32::from_le_bytes([rec[4], rec[5], rec[6], rec[7]]);
            if flags & 0xff & !(FIRST | LAST) != 0 {
                return Err(corrupt("unknown record flags", flags.into()));
            }
            if len > self.record_limit() {
                return Err(corrupt("record longer than the limit", len as u64));
            }
            let size = (REC + len).next_multiple_of(REC) as u64;
            if size > tail - head {
                return Err(corrupt("record beyond the published tail", len as u64));
            }
            let writer = flags >> ID_SHIFT;
            let at = head + REC as u64;
            let done = if flags & FIRST != 0 {
                if flags & LAST != 0 {
                    *state = None;
                    match direct.as_mut().filter(|(min, _)| len >= *min) {
                        Some((_, read)) => read(&mut InRing {
                            stream: self,
                            pos: at,
                            left: len,
                        }),
                        None => {
                            buf.clear();
                            self.extend_from(at, len, buf);
                        }
                    }
                    true
                } else {
                    let mut p = Partial {
                        writer,
                        buf: Vec::new(),
                    };
                    self.extend_from(at, len, &mut p.buf);
                    *state = Some((holder, p));
                    false
                }
            } else {
                match state.as_mut() {
                    Some((_, p)) if p.writer == writer => {
                        self.extend_from(at, len, &mut p.buf);
                        if flags & LAST != 0 {
                            if let Some((_, p)) = state.take() {
                                *buf = p.buf;
                            }
                            true
                        } else {
                            false
                        }
                    }
                    // A continuation whose start another reader took (it
                    // died mid-message), or of another writer: skipped.
                    _ => false,
                }
            };
            // The commit point: the record is consumed.
            h.head.0.store(head + size, SeqCst);
            wake::notify(&h.not_full.0);
            if done {
                return Ok(true);
            }
        }
    }

    /// `(head, tail)`, validated: both multiples of 8, at most the
    /// capacity apart.
    fn positions(&self) -> Result<(u64, u64), StreamError> {
        let h = self.header();
        let head = h.head.0.load(SeqCst);
        let tail = h.tail.0.load(SeqCst);
        if head % REC as u64 != 0 || tail % REC as u64 != 0 {
            return Err(corrupt("position not a multiple of 8", head | tail));
        }
        match tail.checked_sub(head) {
            Some(used) if used <= self.cap as u64 => Ok((head, tail)),
            _ => Err(corrupt("tail not within a capacity of head", tail)),
        }
    }

    /// Copies `src` (at most the capacity) into the data from position
    /// `pos`, wrapping. The caller holds the writer lease and writes only
    /// between `tail` and `head + cap`, which no reader reads until the
    /// `tail` store publishes it.
    fn copy_in(&self, pos: u64, src: &[u8]) {
        assert!(src.len() <= self.cap, "callers copy at most a record");
        let off = (pos as usize) & (self.cap - 1);
        let first = src.len().min(self.cap - off);
        self.mem.write(self.cap, off, &src[..first]);
        self.mem.write(self.cap, 0, &src[first..]);
    }

    /// Fills `dst` (at most the capacity) from the data at `pos`,
    /// wrapping. The caller holds the reader lease and reads only between
    /// `head` and `tail`, which no writer touches until the `head` store
    /// frees it. (A process breaking the protocol can make the bytes
    /// garbage, never out of bounds.)
    fn copy_out(&self, pos: u64, dst: &mut [u8]) {
        assert!(dst.len() <= self.cap, "callers copy at most a record");
        let off = (pos as usize) & (self.cap - 1);
        let first = dst.len().min(self.cap - off);
        let (a, b) = dst.split_at_mut(first);
        self.mem.read(self.cap, off, a);
        self.mem.read(self.cap, 0, b);
    }

    /// Appends `len` bytes (at most the capacity) from position `pos`.
    fn extend_from(&self, pos: u64, len: usize, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + len, 0);
        self.copy_out(pos, &mut out[start..]);
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // A message this process was reassembling: give the lease back
        // (the rest of the message is skipped by the next reader).
        let state = self
            .partial
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((lane, _)) = state.take() {
            let _ = self.meta().reader.compare_exchange(lane, 0, SeqCst, SeqCst);
            self.notify_all();
        }
    }
}

/// Where the stream's words and bytes are: shared memory, the header
/// first, the data after it.
#[cfg(not(all(test, loom)))]
#[derive(Debug)]
struct Mem {
    base: NonNull<u8>,
}

#[cfg(not(all(test, loom)))]
impl Mem {
    fn header(&self) -> &Header {
        // SAFETY: `base` is 64-aligned with at least a header's bytes
        // (checked by `init`/`attach`); atomics only, valid for any bits.
        unsafe { self.base.cast::<Header>().as_ref() }
    }

    fn data(&self) -> *mut u8 {
        // SAFETY: the data follows the header inside the `bytes_needed`
        // bytes of the contract.
        unsafe { self.base.as_ptr().add(size_of::<Header>()) }
    }

    /// Copies `src` to data offset `off`; `off + src.len() <= cap`.
    fn write(&self, cap: usize, off: usize, src: &[u8]) {
        assert!(off + src.len() <= cap, "inside the data");
        // SAFETY: inside the `cap` data bytes (checked); the callers'
        // leases keep other `Stream`s off these bytes (see `copy_in`).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.data().add(off), src.len()) };
    }

    /// Fills `dst` from data offset `off`; `off + dst.len() <= cap`.
    fn read(&self, cap: usize, off: usize, dst: &mut [u8]) {
        assert!(off + dst.len() <= cap, "inside the data");
        // SAFETY: as in `write` (see `copy_out`).
        unsafe { std::ptr::copy_nonoverlapping(self.data().add(off), dst.as_mut_ptr(), dst.len()) };
    }
}

/// Under loom: the header's words as loom atomics and each data byte a
/// loom cell, so the model checks that every byte a reader copies was
/// published to it (a data race is a failure).
#[cfg(all(test, loom))]
struct Mem(loom::sync::Arc<LoomMem>);

#[cfg(all(test, loom))]
struct LoomMem {
    header: Header,
    data: Box<[loom::cell::UnsafeCell<u8>]>,
}

#[cfg(all(test, loom))]
impl std::fmt::Debug for Mem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mem")
    }
}

#[cfg(all(test, loom))]
impl Mem {
    fn header(&self) -> &Header {
        &self.0.header
    }

    fn write(&self, _cap: usize, off: usize, src: &[u8]) {
        for (i, &b) in src.iter().enumerate() {
            // SAFETY: loom checks the access; the pointer is the cell's.
            self.0.data[off + i].with_mut(|p| unsafe { *p = b });
        }
    }

    fn read(&self, _cap: usize, off: usize, dst: &mut [u8]) {
        for (i, d) in dst.iter_mut().enumerate() {
            // SAFETY: as in `write`.
            *d = self.0.data[off + i].with(|p| unsafe { *p });
        }
    }
}

#[cfg(all(test, loom))]
impl Stream {
    /// A stream over loom's modelled memory.
    fn new_loom(cap: usize) -> Self {
        Self::new_loom_with(cap, false)
    }

    /// As [`new_loom`](Self::new_loom), counting messages if `counted`.
    pub(in crate::shm) fn new_loom_with(cap: usize, counted: bool) -> Self {
        let pad32 = |v| Padded(AtomicU32::new(v));
        let header = Header {
            meta: Padded(Meta {
                magic: AtomicU64::new(MAGIC),
                version: AtomicU32::new(VERSION),
                capacity: AtomicU32::new(cap as u32),
                flags: AtomicU32::new(0),
                writer: AtomicU32::new(0),
                reader: AtomicU32::new(0),
                hub_items: AtomicU32::new(0),
                hub_gen: AtomicU32::new(0),
                options: AtomicU32::new(0),
            }),
            head: Padded(AtomicU64::new(0)),
            tail: Padded(AtomicU64::new(0)),
            published: Padded(Published {
                count: AtomicU64::new(0),
                pend_tail: AtomicU64::new(0),
                pend_count: AtomicU64::new(0),
            }),
            not_empty: pad32(0),
            records: pad32(0),
            not_full: pad32(0),
        };
        let data = (0..cap).map(|_| loom::cell::UnsafeCell::new(0)).collect();
        Self {
            mem: Mem(loom::sync::Arc::new(LoomMem { header, data })),
            cap,
            counted,
            partial: Mutex::new(None),
        }
    }

    /// Another process's `Stream` over the same memory.
    pub(in crate::shm) fn attach_loom(&self) -> Self {
        Self {
            mem: Mem(loom::sync::Arc::clone(&self.mem.0)),
            cap: self.cap,
            counted: self.counted,
            partial: Mutex::new(None),
        }
    }
}

fn check_lane(lane: u32) -> Result<(), StreamError> {
    if lane == 0 || lane > MAX_LANE {
        return Err(StreamError::BadLane(lane));
    }
    Ok(())
}

/// The error a sender gets for these flags, if any.
fn send_flags(flags: u32) -> Result<(), StreamError> {
    if flags & READERS_GONE != 0 {
        Err(StreamError::ReadersGone)
    } else if flags & CLOSED != 0 {
        Err(StreamError::Closed)
    } else {
        Ok(())
    }
}

fn corrupt(what: &'static str, value: u64) -> StreamError {
    StreamError::Corrupt { what, value }
}
