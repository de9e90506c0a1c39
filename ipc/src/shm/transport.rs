//! Large frame bodies through shared memory on local connections.
//!
//! # Decision: a descriptor channel beside each local connection
//!
//! A local connection (master ↔ its child) is a stream socket read by one
//! thread with plain `read`s and written by a [`Link`](crate::link::Link) through an outbox,
//! so tying a descriptor to one byte of that stream would reach into both.
//! Instead each local child gets a second socketpair (`SOCK_DGRAM`, fd 4,
//! endpoint `fd:3:<master pid>:4`) that carries only descriptors: one
//! datagram = an 8-byte segment id + one `SCM_RIGHTS` descriptor. A
//! segment's descriptor is sent there, without blocking, *before* the
//! frame that first names it is queued on the connection, so the reader of
//! that frame always finds it (it keeps descriptors that arrive ahead of
//! their frame in an inbox, by id).
//!
//! The link ([`crate::link::Link`]) applies it on both sides: its writes
//! go through [`ShmTransport`] once attached, and its `read_frame`
//! resolves the transport's frames.
//!
//! # What travels how
//!
//! A frame body of at least the threshold ([`DEFAULT_THRESHOLD`], or
//! [`THRESHOLD_ENV`]) is copied once into a segment of the sender's
//! per-link pool, and a small `SHM` frame (segment id, whether it is new,
//! segment length, body length) takes its place on the connection.
//! Segments are reused, so their pages are faulted in once per link
//! (mapped with `MAP_POPULATE` on Linux) rather than once per frame; the
//! pool holds at most [`MAX_SEGMENTS`] and, when all are busy, bodies go
//! over the socket as before. A segment too small for a body is retired
//! (`RETIRE`: the reader unmaps it) and replaced by one an eighth larger
//! than the body, in whole MiB.
//!
//! The reader takes the body one of two ways:
//!
//! - **In place** ([`Link::read_leased`](crate::link::Link::read_leased)),
//!   for the bodies whose values are decoded right after: a chunk's task
//!   inputs in the worker, a chunk's results in the master. Only the
//!   message's fixed fields are copied out; the values are decoded straight
//!   from the segment ([`Lease::decode_at`](crate::link::Lease::decode_at)),
//!   so each byte is copied once, into the value the task or the caller
//!   gets (a `ByteBuf` is allocated at its length and filled by one copy).
//!   The segment is freed (`FREE`) when the [`Lease`](crate::link::Lease)
//!   drops. A link has at most [`MAX_LEASES`](crate::link::MAX_LEASES)
//!   out; past that, bodies are copied out as below, so a caller slow to
//!   take its results does not make the sender create a segment per body
//!   in flight.
//! - **Copied out** ([`Link::read_frame`](crate::link::Link::read_frame)),
//!   for everything else (queue items through the hub, pipe messages,
//!   replies): the body is copied into the reader's buffer, `FREE` is
//!   answered at once, and the body is handed on as if it had arrived on
//!   the connection.
//!
//! # Pooled segments: chunks encoded straight into shared memory
//!
//! A master encodes a chunk's inputs before it picks the worker, and
//! keeps the encoding to resend the chunk if that worker dies. Past the
//! threshold, `map` and `imap` encode it straight into a pooled segment
//! ([`SharedBody`], see [`crate::shm::body`]) rather than into memory:
//! [`Link::write_shared`](crate::link::Link::write_shared) then sends
//! it on whichever local link the chunk goes out on without a copy. The
//! segment's descriptor goes to a peer the first time it names it (ids
//! with the top bit set, apart from the link's own segments); the link
//! keeps at most [`MAX_SHARED`] of them mapped in its peer and retires
//! the oldest past that. The `RUN` header is written into the room left
//! in front of the payload, and the `SHM` frame says where the body
//! starts (`body_at`). A pooled segment is not freed by `FREE`: it goes
//! back to its pool when its chunk is answered, failed or cancelled. A
//! chunk whose worker died goes out again from the same segment (to
//! another worker); its bytes are copied out only to split it. The dead
//! worker only ever read it, and a worker still alive does not read a
//! chunk's segment after answering it.
//!
//! # Results lent to the link
//!
//! A worker encodes a chunk's results the same way, into a segment of its
//! own *lending* pool ([`BodyPool::lending`](crate::shm::body::BodyPool::lending))
//! once they pass the threshold, and hands the body to the link
//! ([`Link::lend_shared`](crate::link::Link::lend_shared)): the `DONE` or
//! `PART` header goes in front of the payload, and the link keeps the body
//! until the master answers `FREE` (a lent segment's id has
//! `LENT_ID` set, so the reader's lease answers it on drop, as for a
//! link's own segments, and a body copied out is freed at once); then
//! the segment goes back to the pool for the next results (or, when the
//! pool keeps no more free segments, is dropped and `RETIRE`d from the
//! master at once, so that its mapping there does not pin the memory
//! until newer segments push it out). A worker has
//! at most `MAX_SEGMENTS` such segments; past that its results stay in
//! memory and travel as above. When the worker dies, the master drops the
//! link and its mappings (once the leases its caller holds are gone), and
//! resends the chunk as for any death.
//!
//! # Copies per item
//!
//! A 16 MiB `ByteBuf` task input of `map`, master to worker: encoded into
//! a pooled segment, decoded from it into the input: two copies (three
//! before: encoded into memory, copied into a link segment, decoded;
//! four before leases). A result, worker to master: encoded into the
//! worker's lent segment, decoded from it into the value: two (three
//! before: encoded into the worker's output buffer, copied into the
//! link's segment, decoded). The decoded values are the one copy out,
//! into new memory by nature, which Python's `Pool.map` pays too: the
//! caller gets owned `ByteBuf`s, all alive at once, so they cannot be
//! the segments themselves (which go back to their pools).
//!
//! Fresh pages cost more than the copies: each page of new memory is a
//! fault in which the kernel zeroes it (4096 per 16 MiB). So nothing on
//! the way is new memory once a map runs: segments are reused (and mapped
//! with `MAP_POPULATE`), the worker's output buffer too, and the master
//! keeps no more than about 32 MiB per worker encoded ahead of the
//! workers, in chunks it closes at 1 MiB (`pool/src/stream.rs`). Page
//! faults in the master while `map` over 16 × 16 MiB runs (`perf record
//! -e page-faults`, outside the benchmark's 61,440 for its own inputs):
//! 77,822 before this, 4,096 now, for `len`; for `echo` the 65,536 of the
//! decoded results remain. With results lent, the whole `echo` run
//! (master and workers, `perf stat -e page-faults,task-clock`) takes
//! 148,040 faults and 900-981 ms of CPU, against 156,220 and
//! 1005-1290 ms when results were copied into link segments (and under
//! a load of 7 on 2 cores, 1156-1285 ms against 1299-1353 ms). The
//! master's share is unchanged (`--no-inherit`: 131,220 faults, about
//! 700 ms): its decode is the one copy left, into fresh owned buffers.
//! Asking for huge pages there (`MADV_HUGEPAGE`) halved the faults but
//! not the CPU (zeroing the pages is the cost), so it is not done.
//!
//! Queue items cross the hub (producer → master → consumer) copied out
//! and in again, not handed on as segments: a queue may hold an item for
//! as long as nobody gets it, and a segment held that long would be one of
//! the producer link's few, tied to a queue rather than to a link, and
//! would have to be mapped into a consumer that never talked to the
//! producer. The shared-memory rings of the queues carry small items
//! without the hub; large ones keep this path.
//!
//! On Windows the descriptor channel is a handle channel (a second named
//! pipe, `<pipe>-h`): the sender duplicates the section handle into the
//! peer process (`DuplicateHandle`) and sends the token and the new
//! handle's value there, in the same order as on Unix (see `FdChannel`
//! in `sys/windows.rs`). Remote (TCP) connections keep every frame on the
//! connection.
//!
//! # Limits and validation
//!
//! The frame limit (`frame_limit(max_payload_len)`) protects the socket
//! from a bad length prefix: it is a protection against bad input, not a
//! cap on what shared memory carries. It does not apply to bodies in segments,
//! which are bounded by memory the sender really allocated: the reader
//! maps a segment only after checking that the object holds the announced
//! length (and, on Linux/FreeBSD, cannot shrink), and copies a body out
//! only after checking it lies inside the segment; values decoded in
//! place never read past the body (a length prefix that reaches past it
//! is a decoding error). What limits a value is
//! still the payload limit (`PoolBuilder::max_payload_len`), checked when
//! it is encoded, whichever way it then travels. A peer may keep at most
//! [`MAX_SEGMENTS`] segments mapped here; more is a protocol error.
//!
//! # Lifetime
//!
//! A segment lives in its sender's pool until the link is dropped, and in
//! the reader's cache until `RETIRE` or the link's end. When a worker dies
//! its master drops the link and with it every segment of that link,
//! including those in flight; the memory goes once the last mapping or
//! descriptor does (anonymous objects leave nothing behind).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::IpcError;
use crate::endpoint::ReadHalf;
use crate::frame::WriteFrame;
use crate::proto::{FREE, Message, RETIRE, SHM};
use crate::shm::body::{HEAD_ROOM, SharedBody};
use crate::shm::segment::{Segment, ShmHandle};
use crate::sync::lock;
use crate::sys::FdChannel;

/// Frame bodies at least this long travel through shared memory.
///
/// Measured on the 2-core CI machine (issue 11, CPU time of master and
/// workers, queue items one producer one consumer): 64 KiB and 256 KiB
/// items cost two to three times more through segments than over the
/// socket (the `FREE` answer and segment set-up outweigh one saved copy),
/// 1 MiB items cost about the same, and 16 MiB `Pool::map` inputs about a
/// fifth less. Hence 1 MiB.
///
/// Measured again with bodies decoded in place (`perf stat -e task-clock`
/// over `PROCPOOL_BENCH_ROLE=case compare-* queue_64KiB 4000 65536`,
/// thresholds alternating, three rounds, machine loaded): with a 64 KiB
/// threshold 1059, 929 and 1041 ms of CPU; over the socket (threshold
/// off, 256 KiB or 1 MiB) 564 to 1075 ms, 842 on average. Queue items go
/// through the hub, which copies them out and in (see the module docs):
/// a segment saves no copy there and adds the `FREE` frames. A `map` over
/// 64 KiB-1 MiB inputs packs several into one chunk, whose frame is over
/// 1 MiB anyway. So 1 MiB stays.
///
/// Measured for `map` once more after the master reused its payload
/// buffers (`PROCPOOL_SHM_THRESHOLD=<t> perf stat -e task-clock
/// compare-* map_big_echo <n> <size>`, loaded machine, two rounds): 2048
/// inputs of 64 KiB echoed, 659/625 ms of CPU with a 64 KiB threshold,
/// 662/699 ms with 1 MiB, 783/806 ms over the socket; 512 of 256 KiB,
/// 799/806, 705/762 and 811/905 ms. A lower threshold changes nothing
/// there (its chunks are 8-16 MiB frames either way), and shared memory
/// still beats the socket.
pub const DEFAULT_THRESHOLD: usize = 1 << 20;

/// Environment variable overriding [`DEFAULT_THRESHOLD`], in bytes; `off`
/// (or `0`) keeps every frame on the connection. Read once per process,
/// by master and workers alike (workers inherit it).
pub const THRESHOLD_ENV: &str = "PROCPOOL_SHM_THRESHOLD";

/// Segments a sender keeps per link, and a reader accepts per link.
pub const MAX_SEGMENTS: usize = 8;

/// Pooled segments ([`SharedBody`]) a sender keeps mapped in a link's
/// peer; a reader accepts this many more than [`MAX_SEGMENTS`].
pub const MAX_SHARED: usize = 8;

/// The smallest segment made.
const MIN_SEGMENT: usize = 1 << 20;

/// The threshold this process uses ([`THRESHOLD_ENV`], else
/// [`DEFAULT_THRESHOLD`]); `None` when shared memory is turned off.
pub fn threshold() -> Option<usize> {
    static THRESHOLD: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *THRESHOLD.get_or_init(|| match std::env::var(THRESHOLD_ENV) {
        Ok(v) if v == "off" => None,
        Ok(v) => match v.parse::<usize>() {
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(_) => Some(DEFAULT_THRESHOLD),
        },
        Err(_) => Some(DEFAULT_THRESHOLD),
    })
}

/// The shared-memory side of one local connection; see the module docs.
#[derive(Debug)]
pub struct ShmTransport {
    channel: FdChannel,
    threshold: usize,
    out: Mutex<OutPool>,
    inbound: Mutex<Inbound>,
}

#[derive(Debug, Default)]
struct OutPool {
    next_id: u64,
    segs: Vec<OutSegment>,
    /// Pooled segments the peer has mapped, oldest first.
    known: Vec<u64>,
    /// Bodies handed over ([`ShmTransport::lend`]) until the peer's `FREE`.
    lent: HashMap<u64, SharedBody>,
    /// Sending a descriptor failed once: the peer cannot take segments.
    disabled: bool,
}

#[derive(Debug)]
struct OutSegment {
    id: u64,
    seg: Arc<Segment>,
    busy: bool,
}

#[derive(Debug, Default)]
struct Inbound {
    /// Segments the peer sent, mapped, by id (shared with the
    /// [`Lease`](crate::link::Lease)s that read a body in place).
    cache: HashMap<u64, Arc<Segment>>,
    /// Descriptors that arrived before the frame naming them.
    inbox: HashMap<u64, ShmHandle>,
}

/// A body placed in a segment, ready to be announced.
struct Staged {
    id: u64,
    new: bool,
    seg_len: u64,
    body_len: u64,
    retired: Vec<u64>,
}

impl ShmTransport {
    /// The transport of a local connection, from its reading half (which
    /// gives up its descriptor channel); `None` for a connection without
    /// one (remote, a channel already taken) or when
    /// [`THRESHOLD_ENV`] turns it off.
    pub fn from_connection(reader: &mut ReadHalf) -> Option<Arc<Self>> {
        let threshold = threshold()?;
        let channel = reader.take_fd_channel()?;
        Some(Arc::new(Self {
            channel,
            threshold,
            out: Mutex::default(),
            inbound: Mutex::default(),
        }))
    }

    #[cfg(test)]
    pub(crate) fn for_test(channel: FdChannel, threshold: usize) -> Arc<Self> {
        Arc::new(Self {
            channel,
            threshold,
            out: Mutex::default(),
            inbound: Mutex::default(),
        })
    }

    #[cfg(test)]
    pub(crate) fn send_handle_for_test(&self, id: u64, handle: &ShmHandle) -> std::io::Result<()> {
        self.channel.send(id, handle)
    }

    /// Sends a shared object's descriptor to the peer under `token` (ids
    /// of shared objects, never a frame segment's small counter).
    pub(crate) fn send_object(&self, token: u64, handle: &ShmHandle) -> std::io::Result<()> {
        self.channel.send(token, handle)
    }

    /// Takes the descriptor the peer sent under `token`, waiting for it
    /// (up to the channel's 10 s) if it has not arrived yet; descriptors
    /// for other tokens met on the way go to the inbox.
    pub(crate) fn take_object(&self, token: u64) -> Result<ShmHandle, IpcError> {
        let mut inbound = lock(&self.inbound);
        loop {
            if let Some(h) = inbound.inbox.remove(&token) {
                return Ok(h);
            }
            let (t, handle) = self.channel.recv()?;
            inbound.inbox.insert(t, handle);
        }
    }

    /// Writes the frame made of `parts` to `w`: as an `SHM` frame naming a
    /// segment holding them when they are long enough and a segment is
    /// free, else as is.
    pub(crate) fn write_frame(
        &self,
        parts: &[&[u8]],
        w: &mut impl WriteFrame,
    ) -> Result<(), IpcError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len < self.threshold {
            return w.write_frame(parts);
        }
        let Some((staged, seg)) = self.stage(len) else {
            return w.write_frame(parts);
        };
        let mut at = 0;
        for part in parts {
            if seg.write_at(at, part).is_err() {
                // Cannot happen (the segment holds `len`); keep it busy-free.
                self.release(staged.id);
                return w.write_frame(parts);
            }
            at += part.len();
        }
        for seg in &staged.retired {
            Message::Retire { seg: *seg }.write(w)?;
        }
        let written = Message::Shm {
            seg: staged.id,
            new: staged.new,
            seg_len: staged.seg_len,
            body_at: 0,
            body_len: staged.body_len,
        }
        .write(w);
        if written.is_err() {
            self.release(staged.id);
        }
        written
    }

    /// Writes to `w` a frame whose body is `head` followed by `body`'s
    /// payload, naming `body`'s segment (its descriptor sent to the peer
    /// first if the peer does not have it; the oldest the peer has retired
    /// past [`MAX_SHARED`]); `head` is written into the segment's
    /// [`HEAD_ROOM`]. `Ok(false)`, with nothing written, when the peer
    /// cannot take segments: send the bytes as usual.
    ///
    /// # Errors
    /// As the writes to `w`.
    pub(crate) fn write_shared(
        &self,
        head: &[u8],
        body: &SharedBody,
        w: &mut impl WriteFrame,
    ) -> Result<bool, IpcError> {
        self.name_shared(head, body.id(), body.segment(), body.len(), w)
    }

    /// Like [`write_shared`](Self::write_shared), but hands `body` over:
    /// it is kept here until the peer answers `FREE` for its segment (a
    /// [lending](crate::shm::body::BodyPool::lending) pool's ids make the
    /// peer answer), then dropped, its segment going back to its pool.
    /// `Ok(Some(body))`, with nothing written, when the peer cannot take
    /// segments.
    ///
    /// # Errors
    /// As the writes to `w` (the body is then dropped).
    pub(crate) fn lend(
        &self,
        head: &[u8],
        body: SharedBody,
        w: &mut impl WriteFrame,
    ) -> Result<Option<SharedBody>, IpcError> {
        let (id, seg, len) = (body.id(), Arc::clone(body.segment()), body.len());
        // Kept before the frame is written: another thread may flush the
        // link, and the peer answer, before this call returns.
        let previous = lock(&self.out).lent.insert(id, body);
        // None: a body owns its segment. (Dropped outside the lock.)
        drop(previous);
        let named = self.name_shared(head, id, &seg, len, w);
        if !matches!(named, Ok(true)) {
            let body = lock(&self.out).lent.remove(&id);
            return named.map(|_| body);
        }
        Ok(None)
    }

    /// Bodies handed over and not yet freed by the peer (for tests).
    #[doc(hidden)]
    pub fn lent(&self) -> usize {
        lock(&self.out).lent.len()
    }

    fn name_shared(
        &self,
        head: &[u8],
        id: u64,
        seg: &Segment,
        payload_len: usize,
        w: &mut impl WriteFrame,
    ) -> Result<bool, IpcError> {
        let Some(body_at) = HEAD_ROOM.checked_sub(head.len()) else {
            return Ok(false);
        };
        let (new, retired) = {
            let mut out = lock(&self.out);
            if out.disabled {
                return Ok(false);
            }
            let new = !out.known.contains(&id);
            let mut retired = None;
            if new {
                let sent = seg
                    .try_clone_handle()
                    .ok()
                    .and_then(|h| self.channel.send(id, &h).ok());
                if sent.is_none() {
                    out.disabled = true;
                    return Ok(false);
                }
                if out.known.len() >= MAX_SHARED {
                    retired = Some(out.known.remove(0));
                }
                out.known.push(id);
            }
            (new, retired)
        };
        if seg.write_at(body_at, head).is_err() {
            return Ok(false);
        }
        if let Some(old) = retired {
            Message::Retire { seg: old }.write(w)?;
        }
        Message::Shm {
            seg: id,
            new,
            seg_len: seg.len() as u64,
            body_at: body_at as u64,
            body_len: (head.len() + payload_len) as u64,
        }
        .write(w)?;
        Ok(true)
    }

    /// Picks (or makes and sends) a free segment for `len` bytes and marks
    /// it busy; `None` when the body must go over the connection.
    fn stage(&self, len: usize) -> Option<(Staged, Arc<Segment>)> {
        let mut out = lock(&self.out);
        if out.disabled {
            return None;
        }
        let fitting = out
            .segs
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.busy && s.seg.len() >= len)
            .min_by_key(|(_, s)| s.seg.len())
            .map(|(i, _)| i);
        let mut retired = Vec::new();
        let (index, new) = match fitting {
            Some(i) => (i, false),
            None => {
                if out.segs.len() >= MAX_SEGMENTS {
                    // Make room by retiring the smallest free segment.
                    let smallest = out
                        .segs
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| !s.busy)
                        .min_by_key(|(_, s)| s.seg.len())
                        .map(|(i, _)| i)?;
                    retired.push(out.segs.swap_remove(smallest).id);
                }
                // Room for bodies a little larger than this one, in whole MiB.
                let size = len
                    .checked_add(len / 8)?
                    .checked_next_multiple_of(MIN_SEGMENT)?
                    .max(MIN_SEGMENT);
                let seg = Segment::new(size).ok()?;
                out.next_id += 1;
                let id = out.next_id;
                let sent = seg
                    .try_clone_handle()
                    .ok()
                    .and_then(|h| self.channel.send(id, &h).ok());
                if sent.is_none() {
                    // A peer that cannot take descriptors (or lags far
                    // behind): everything goes over the connection.
                    out.disabled = true;
                    drop(out);
                    return None;
                }
                out.segs.push(OutSegment {
                    id,
                    seg: Arc::new(seg),
                    busy: false,
                });
                (out.segs.len() - 1, true)
            }
        };
        let entry = &mut out.segs[index];
        entry.busy = true;
        let staged = Staged {
            id: entry.id,
            new,
            seg_len: entry.seg.len() as u64,
            body_len: len as u64,
            retired,
        };
        Some((staged, Arc::clone(&entry.seg)))
    }

    /// The peer is done with segment `id`: a link segment is free again,
    /// a body handed over goes back to its pool. Returns the id to retire
    /// from the peer when its pool did not keep the segment: the peer's
    /// mapping would otherwise pin its memory until newer segments push
    /// it out of [`MAX_SHARED`].
    fn release(&self, id: u64) -> Option<u64> {
        let mut out = lock(&self.out);
        if let Some(s) = out.segs.iter_mut().find(|s| s.id == id) {
            s.busy = false;
            return None;
        }
        let body = out.lent.remove(&id)?;
        drop(out);
        let seg = Arc::clone(body.segment());
        // (Dropped outside the lock: it takes its pool's.)
        drop(body);
        // Only ours left: the pool dropped it, and its id is never named
        // again. (Another holder, say a `lend` still returning, means it
        // is kept: not retired, as before.)
        if Arc::strong_count(&seg) > 1 {
            return None;
        }
        let mut out = lock(&self.out);
        let at = out.known.iter().position(|&k| k == id)?;
        out.known.remove(at);
        Some(id)
    }

    /// Segments of the peer's mapped here (for tests).
    #[doc(hidden)]
    pub fn mapped(&self) -> usize {
        lock(&self.inbound).cache.len()
    }

    /// Segments this side has made for this link (for tests).
    #[doc(hidden)]
    pub fn segments_made(&self) -> usize {
        lock(&self.out).segs.len()
    }

    /// Resolves an `SHM` frame: checks the body it names lies inside its
    /// segment and copies its first `head` bytes into `buf`.
    fn receive(
        &self,
        msg: &Message<'_>,
        buf: &mut Vec<u8>,
        head: usize,
    ) -> Result<Named, IpcError> {
        let &Message::Shm {
            seg: id,
            new,
            seg_len,
            body_at,
            body_len,
        } = msg
        else {
            return Err(IpcError::Malformed("not a shm frame"));
        };
        let seg_len = usize::try_from(seg_len)
            .map_err(|_| IpcError::Malformed("segment longer than the address space"))?;
        let body_len = usize::try_from(body_len)
            .map_err(|_| IpcError::Malformed("body longer than the address space"))?;
        let body_at = usize::try_from(body_at)
            .map_err(|_| IpcError::Malformed("body beyond the address space"))?;
        let mut inbound = lock(&self.inbound);
        if new {
            if inbound.cache.contains_key(&id) {
                return Err(IpcError::Malformed("segment id announced twice"));
            }
            if inbound.cache.len() >= MAX_SEGMENTS + MAX_SHARED {
                return Err(IpcError::Malformed("peer holds too many segments"));
            }
            let handle = loop {
                if let Some(h) = inbound.inbox.remove(&id) {
                    break h;
                }
                if inbound.inbox.len() >= MAX_SEGMENTS {
                    return Err(IpcError::Malformed("too many unannounced segments"));
                }
                let (token, handle) = self.channel.recv()?;
                inbound.inbox.insert(token, handle);
            };
            let seg = Segment::from_handle(handle, seg_len).map_err(|e| {
                IpcError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
            })?;
            inbound.cache.insert(id, Arc::new(seg));
        }
        let seg = inbound
            .cache
            .get(&id)
            .ok_or(IpcError::Malformed("unknown segment"))?;
        if seg.len() != seg_len {
            return Err(IpcError::Malformed("segment length changed"));
        }
        if body_at
            .checked_add(body_len)
            .is_none_or(|end| end > seg.len())
        {
            return Err(IpcError::Malformed("body outside its segment"));
        }
        buf.clear();
        let head = head.min(body_len);
        seg.read_into_vec(body_at, head, buf)
            .map_err(|_| IpcError::Malformed("body outside its segment"))?;
        Ok(Named {
            id,
            seg: Arc::clone(seg),
            at: body_at,
            body_len,
        })
    }
}

/// Whether `body` is a frame of the transport itself (`SHM`, `FREE`,
/// `RETIRE`), which [`ShmTransport::take_control`] handles.
pub(crate) fn is_control(body: &[u8]) -> bool {
    matches!(body.first(), Some(&(SHM | FREE | RETIRE)))
}

/// A body an `SHM` frame named, checked to lie inside its segment.
#[derive(Debug)]
pub(crate) struct Named {
    /// The segment's id: answer `FREE` with it once done with the body.
    pub(crate) id: u64,
    pub(crate) seg: Arc<Segment>,
    /// Where the body starts in the segment.
    pub(crate) at: usize,
    pub(crate) body_len: usize,
}

/// What a control frame turned into.
#[derive(Debug)]
pub(crate) enum Control {
    /// `buf` now holds the first bytes (as many as asked for) of the body
    /// an `SHM` frame named; the whole body is in the segment.
    Body(Named),
    /// A `FREE` or `RETIRE`, handled: read the next frame.
    Handled,
    /// A `FREE` that ended a lent segment (its pool did not keep it):
    /// send the peer `RETIRE` for it, then read the next frame.
    Retire(u64),
}

impl ShmTransport {
    /// Handles the control frame in `buf` (see [`is_control`]); for an
    /// `SHM` frame, replaces it with the first `head` bytes of the body it
    /// names (`usize::MAX`: all of it).
    ///
    /// # Errors
    /// [`IpcError::Malformed`] for a frame naming an unknown segment, a
    /// body outside its segment, or a body that is itself a control frame;
    /// [`IpcError::Io`] when a segment's descriptor cannot be received or
    /// mapped (too small, not sealed).
    pub(crate) fn take_control(&self, buf: &mut Vec<u8>, head: usize) -> Result<Control, IpcError> {
        let msg = match Message::decode(buf)? {
            Message::Shm {
                seg,
                new,
                seg_len,
                body_at,
                body_len,
            } => Message::Shm {
                seg,
                new,
                seg_len,
                body_at,
                body_len,
            },
            Message::Free { seg } => {
                return Ok(match self.release(seg) {
                    Some(seg) => Control::Retire(seg),
                    None => Control::Handled,
                });
            }
            Message::Retire { seg } => {
                lock(&self.inbound).cache.remove(&seg);
                return Ok(Control::Handled);
            }
            _ => return Err(IpcError::Malformed("not a shared memory frame")),
        };
        let named = self.receive(&msg, buf, head.max(1))?;
        if named.body_len > 0 && is_control(buf) {
            return Err(IpcError::Malformed("segment frame inside a segment"));
        }
        Ok(Control::Body(named))
    }
}
