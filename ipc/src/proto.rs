//! The messages a master and a worker exchange, one per frame.
//!
//! Every frame body starts with a one-byte kind. Fixed-size fields are
//! little-endian; task payloads are appended raw, so the master never
//! re-encodes them and the worker decodes them exactly once.
//!
//! ```text
//! HELLO    worker→master  kind=1 "PPOL" version:u32 pid:u32 tasks:bincode(Vec<String>)
//! RUN      master→worker  kind=2 id:u64 task:u32 count:u32 payload (count encoded inputs)
//! DONE     worker→master  kind=3 id:u64 count:u32 elapsed_ns:u64 payload (the chunk's last count encoded Result<Output, TaskError>)
//! PART     worker→master  kind=9 id:u64 count:u32 elapsed_ns:u64 payload (the next count results of a chunk still running)
//! SHUTDOWN master→worker  kind=4
//! HUB      worker→master  kind=5 req:u64 op:u8 queue:u64 arg:u64 payload   (a queue operation)
//! REPLY    master→worker  kind=6 req:u64 status:u8 value:u64 payload      (its answer, if it wants one)
//! DELIVER  master→worker  kind=7 queue:u64 closed:u8 payload              (an item for a subscribed getter)
//! HEARTBEAT either way    kind=8
//! SHM      either way     kind=10 seg:u64 new:u8 seg_len:u64 body_at:u64 body_len:u64 (the next frame's body is in a segment)
//! FREE     either way     kind=11 seg:u64                                 (the receiver copied it out: reuse it)
//! RETIRE   either way     kind=12 seg:u64                                 (the sender will not use it again: unmap it)
//! ```
//!
//! `SHM`, `FREE` and `RETIRE` belong to the shared-memory transport of
//! local connections (see [`crate::shm::transport`]): a frame body of any
//! other kind that is large travels in a shared segment, and the reading
//! side replaces the `SHM` frame by that body before anything else looks
//! at it.
//!
//! Queue operations are described in [`crate::queue`].
//!
//! A chunk's results arrive in order: zero or more `PART`s, each with the
//! results of the items after those already reported, then one `DONE` with
//! the rest. A worker sends a `PART` when an item took long or some time
//! passed since its last report (see the worker's runtime), so that when it
//! dies the master knows which items had finished.
//!
//! The magic and version come first in `HELLO`, so a version mismatch is
//! reported as such whatever else changed in later versions.

use crate::IpcError;
use crate::codec;
use crate::frame::WriteFrame;

/// The protocol version this build speaks: in a local worker's `HELLO`,
/// and first on a remote link (see [`secure`](crate::secure)). 4: remote
/// links are encrypted (Noise); 5: large bodies through shared memory
/// (`SHM`, `FREE`, `RETIRE`).
pub const PROTOCOL_VERSION: u32 = 5;

const MAGIC: &[u8; 4] = b"PPOL";

const HELLO: u8 = 1;
const RUN: u8 = 2;
const DONE: u8 = 3;
const SHUTDOWN: u8 = 4;
const HUB: u8 = 5;
const REPLY: u8 = 6;
const DELIVER: u8 = 7;
const HEARTBEAT: u8 = 8;
const PART: u8 = 9;
pub(crate) const SHM: u8 = 10;
pub(crate) const FREE: u8 = 11;
pub(crate) const RETIRE: u8 = 12;

/// The first message of a worker: who it is and which tasks it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The worker's process id.
    pub pid: u32,
    /// Names of the tasks the worker's registry holds, in registry order:
    /// the index of a name is the task number used in [`Message::Run`].
    pub tasks: Vec<String>,
    /// Each task's [`Task::signature`](crate::Task::signature), in the
    /// same order.
    pub signatures: Vec<String>,
}

/// One protocol message, borrowing its payload from the frame body.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message<'a> {
    /// Worker → master, first frame.
    Hello(Hello),
    /// Master → worker: run task number `task` on `count` inputs.
    Run {
        /// Chunk id, echoed in the matching [`Message::Done`].
        id: u64,
        /// Index into the worker's task list.
        task: u32,
        /// Number of inputs encoded in `payload`.
        count: u32,
        /// `count` encoded inputs, back to back.
        payload: &'a [u8],
    },
    /// Worker → master: the results of a `Run`'s items that follow those
    /// already reported (by [`Message::Part`]), up to its last item.
    Done {
        /// The id of the `Run`.
        id: u64,
        /// Number of results in `payload`.
        count: u32,
        /// Time the worker spent running the chunk.
        elapsed_ns: u64,
        /// `count` encoded `Result<Output, TaskError>`, back to back.
        payload: &'a [u8],
    },
    /// Worker → master: the results of the next `count` items of a `Run`
    /// still running (after those already reported), in input order.
    Part {
        /// The id of the `Run`.
        id: u64,
        /// Number of results in `payload`.
        count: u32,
        /// Time the worker spent running these items.
        elapsed_ns: u64,
        /// `count` encoded `Result<Output, TaskError>`, back to back.
        payload: &'a [u8],
    },
    /// Master → worker: finish and exit.
    Shutdown,
    /// Either way: "still here". Sent on a link that has been quiet for a
    /// while, so a peer that goes silent can be told from an idle one.
    Heartbeat,
    /// Worker → master: an operation on a queue held by the master.
    Hub {
        /// Request id the reply carries; 0 when no reply is wanted.
        req: u64,
        /// Which operation (see [`crate::queue`]).
        op: u8,
        /// The queue's id.
        queue: u64,
        /// The operation's number (timeout, credit, count).
        arg: u64,
        /// An encoded item, for puts.
        payload: &'a [u8],
    },
    /// Master → worker: the answer to a [`Message::Hub`].
    Reply {
        /// The request id.
        req: u64,
        /// Outcome code.
        status: u8,
        /// A number (a length).
        value: u64,
        /// An encoded item, if any.
        payload: &'a [u8],
    },
    /// Master → worker: an item for a subscribed getter, or the notice that
    /// the queue is closed and empty.
    Deliver {
        /// The queue's id.
        queue: u64,
        /// Whether this is the closed notice (then `payload` is empty).
        closed: bool,
        /// The encoded item.
        payload: &'a [u8],
    },
    /// Either way: the body of the next message is `body_len` bytes at
    /// `body_at` of shared segment `seg` (see [`crate::shm::transport`]).
    Shm {
        /// The segment's id, chosen by the sender.
        seg: u64,
        /// Whether this is the segment's first use: its descriptor (handle)
        /// was sent on the connection's descriptor channel.
        new: bool,
        /// The segment's length (checked against the object received).
        seg_len: u64,
        /// Where the body starts in the segment.
        body_at: u64,
        /// The body's length (checked, with `body_at`, against the
        /// segment's).
        body_len: u64,
    },
    /// Either way: the receiver of segment `seg`'s body has copied it out;
    /// the sender may reuse the segment.
    Free {
        /// The segment's id.
        seg: u64,
    },
    /// Either way: the sender will not use segment `seg` again; the
    /// receiver unmaps it.
    Retire {
        /// The segment's id.
        seg: u64,
    },
}

/// Fixed-size fields as little-endian bytes.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], IpcError> {
        if self.0.len() < n {
            return Err(IpcError::Malformed("message shorter than its header"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, IpcError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u8(&mut self) -> Result<u8, IpcError> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, IpcError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

/// The write side of [`Cursor`]: a message's kind and fixed-size fields,
/// as little-endian bytes, before its payload.
struct Head {
    buf: [u8; Head::MAX],
    len: usize,
}

impl Head {
    /// The longest header: `SHM` (kind, seg, new, seg_len, body_at,
    /// body_len).
    const MAX: usize = 1 + 8 + 1 + 8 + 8 + 8;

    fn new(kind: u8) -> Self {
        let mut head = Head {
            buf: [0; Head::MAX],
            len: 0,
        };
        head.put(&[kind]);
        head
    }
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }
    fn u8(mut self, v: u8) -> Self {
        self.put(&[v]);
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.put(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.put(&v.to_le_bytes());
        self
    }
    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Bytes a `RUN` header adds to its payload inside a frame: kind, id, task,
/// count.
pub const RUN_OVERHEAD: usize = 1 + 8 + 4 + 4;

/// The bytes of a `RUN` frame's body before its payload (for a payload
/// that is already in place, see
/// [`Link::write_shared`](crate::link::Link::write_shared)).
pub fn run_head(id: u64, task: u32, count: u32) -> [u8; RUN_OVERHEAD] {
    let mut out = [0; RUN_OVERHEAD];
    out.copy_from_slice(Head::new(RUN).u64(id).u32(task).u32(count).bytes());
    out
}

/// Bytes a `DONE` or `PART` header adds to its payload inside a frame:
/// kind, id, count, elapsed_ns.
pub const RESULT_OVERHEAD: usize = 1 + 8 + 4 + 8;

/// The bytes of a `DONE` (`last`) or `PART` frame's body before its
/// payload (for a payload that is already in place, see
/// [`Link::lend_shared`](crate::link::Link::lend_shared)).
pub fn result_head(last: bool, id: u64, count: u32, elapsed_ns: u64) -> [u8; RESULT_OVERHEAD] {
    let kind = if last { DONE } else { PART };
    let mut out = [0; RESULT_OVERHEAD];
    out.copy_from_slice(Head::new(kind).u64(id).u32(count).u64(elapsed_ns).bytes());
    out
}

impl<'a> Message<'a> {
    /// Parses a frame body.
    ///
    /// # Errors
    /// [`IpcError::VersionMismatch`] for a `HELLO` of another version,
    /// [`IpcError::Malformed`] or [`IpcError::Decode`] for anything that is
    /// not a valid message.
    pub fn decode(body: &'a [u8]) -> Result<Self, IpcError> {
        let (&kind, rest) = body
            .split_first()
            .ok_or(IpcError::Malformed("empty frame"))?;
        let mut c = Cursor(rest);
        match kind {
            HELLO => {
                if c.take(4)? != MAGIC {
                    return Err(IpcError::Malformed("first frame is not a procpool hello"));
                }
                let version = c.u32()?;
                if version != PROTOCOL_VERSION {
                    return Err(IpcError::VersionMismatch {
                        ours: PROTOCOL_VERSION,
                        theirs: version,
                    });
                }
                let pid = c.u32()?;
                // Borrowed: an owned `String` would be allocated at the
                // length its prefix announces, before its bytes are read
                // (issue 14: a 22-byte hello asked for 452 MB).
                let ((tasks, signatures), used) =
                    codec::decode_borrowed::<(Vec<&str>, Vec<&str>)>(c.0)?;
                if used != c.0.len() || tasks.len() != signatures.len() {
                    return Err(IpcError::Malformed("malformed task list in hello"));
                }
                let owned = |names: Vec<&str>| names.into_iter().map(str::to_owned).collect();
                Ok(Message::Hello(Hello {
                    pid,
                    tasks: owned(tasks),
                    signatures: owned(signatures),
                }))
            }
            RUN => Ok(Message::Run {
                id: c.u64()?,
                task: c.u32()?,
                count: c.u32()?,
                payload: c.0,
            }),
            DONE => Ok(Message::Done {
                id: c.u64()?,
                count: c.u32()?,
                elapsed_ns: c.u64()?,
                payload: c.0,
            }),
            PART => Ok(Message::Part {
                id: c.u64()?,
                count: c.u32()?,
                elapsed_ns: c.u64()?,
                payload: c.0,
            }),
            SHUTDOWN if rest.is_empty() => Ok(Message::Shutdown),
            HEARTBEAT if rest.is_empty() => Ok(Message::Heartbeat),
            HUB => Ok(Message::Hub {
                req: c.u64()?,
                op: c.u8()?,
                queue: c.u64()?,
                arg: c.u64()?,
                payload: c.0,
            }),
            REPLY => Ok(Message::Reply {
                req: c.u64()?,
                status: c.u8()?,
                value: c.u64()?,
                payload: c.0,
            }),
            DELIVER => Ok(Message::Deliver {
                queue: c.u64()?,
                closed: c.u8()? != 0,
                payload: c.0,
            }),
            SHM => {
                let msg = Message::Shm {
                    seg: c.u64()?,
                    new: c.u8()? != 0,
                    seg_len: c.u64()?,
                    body_at: c.u64()?,
                    body_len: c.u64()?,
                };
                c.0.is_empty()
                    .then_some(msg)
                    .ok_or(IpcError::Malformed("trailing bytes after a shm header"))
            }
            FREE | RETIRE => {
                let seg = c.u64()?;
                if !c.0.is_empty() {
                    return Err(IpcError::Malformed("trailing bytes after a segment id"));
                }
                Ok(if kind == FREE {
                    Message::Free { seg }
                } else {
                    Message::Retire { seg }
                })
            }
            _ => Err(IpcError::Malformed("unknown message kind")),
        }
    }

    /// Buffers this message as one frame on `w` (no flush).
    ///
    /// # Errors
    /// [`IpcError::FrameTooLarge`] when the message exceeds the writer's
    /// maximum (nothing is written), [`IpcError::Io`] when writing fails,
    /// [`IpcError::Encode`] if a hello's task list cannot be encoded.
    pub fn write(&self, w: &mut impl WriteFrame) -> Result<(), IpcError> {
        match self {
            Message::Hello(hello) => {
                let mut body = vec![HELLO];
                body.extend_from_slice(MAGIC);
                body.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
                body.extend_from_slice(&hello.pid.to_le_bytes());
                codec::encode_into(&(&hello.tasks, &hello.signatures), &mut body)?;
                w.write_frame(&[&body])
            }
            Message::Run {
                id,
                task,
                count,
                payload,
            } => {
                let head = Head::new(RUN).u64(*id).u32(*task).u32(*count);
                debug_assert_eq!(head.len, RUN_OVERHEAD);
                w.write_frame(&[head.bytes(), payload])
            }
            Message::Done {
                id,
                count,
                elapsed_ns,
                payload,
            } => {
                let head = Head::new(DONE).u64(*id).u32(*count).u64(*elapsed_ns);
                w.write_frame(&[head.bytes(), payload])
            }
            Message::Part {
                id,
                count,
                elapsed_ns,
                payload,
            } => {
                let head = Head::new(PART).u64(*id).u32(*count).u64(*elapsed_ns);
                w.write_frame(&[head.bytes(), payload])
            }
            Message::Shutdown => w.write_frame(&[Head::new(SHUTDOWN).bytes()]),
            Message::Heartbeat => w.write_frame(&[Head::new(HEARTBEAT).bytes()]),
            Message::Hub {
                req,
                op,
                queue,
                arg,
                payload,
            } => {
                let head = Head::new(HUB).u64(*req).u8(*op).u64(*queue).u64(*arg);
                w.write_frame(&[head.bytes(), payload])
            }
            Message::Reply {
                req,
                status,
                value,
                payload,
            } => {
                let head = Head::new(REPLY).u64(*req).u8(*status).u64(*value);
                w.write_frame(&[head.bytes(), payload])
            }
            Message::Deliver {
                queue,
                closed,
                payload,
            } => {
                let head = Head::new(DELIVER).u64(*queue).u8(u8::from(*closed));
                w.write_frame(&[head.bytes(), payload])
            }
            Message::Shm {
                seg,
                new,
                seg_len,
                body_at,
                body_len,
            } => {
                let head = Head::new(SHM)
                    .u64(*seg)
                    .u8(u8::from(*new))
                    .u64(*seg_len)
                    .u64(*body_at)
                    .u64(*body_len);
                w.write_frame(&[head.bytes()])
            }
            Message::Free { seg } => w.write_frame(&[Head::new(FREE).u64(*seg).bytes()]),
            Message::Retire { seg } => w.write_frame(&[Head::new(RETIRE).u64(*seg).bytes()]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{DEFAULT_MAX_FRAME_LEN, FrameReader, FrameWriter};

    fn round_trip(msg: &Message<'_>) -> Vec<u8> {
        let mut wire = Vec::new();
        let mut w = FrameWriter::new(&mut wire, DEFAULT_MAX_FRAME_LEN);
        msg.write(&mut w).unwrap();
        w.flush().unwrap();
        drop(w);
        let mut body = Vec::new();
        assert!(
            FrameReader::new(&wire[..], DEFAULT_MAX_FRAME_LEN)
                .read_frame(&mut body)
                .unwrap()
        );
        body
    }

    #[test]
    fn every_message_round_trips() {
        let msgs = [
            Message::Hello(Hello {
                pid: 42,
                tasks: vec!["a".into(), "b".into()],
                signatures: vec!["u64 -> u64".into(), "() -> ()".into()],
            }),
            Message::Run {
                id: 1,
                task: 2,
                count: 3,
                payload: b"xyz",
            },
            Message::Done {
                id: 9,
                count: 1,
                elapsed_ns: 77,
                payload: b"r",
            },
            Message::Part {
                id: 9,
                count: 2,
                elapsed_ns: 5,
                payload: b"rs",
            },
            Message::Shutdown,
            Message::Hub {
                req: 5,
                op: 1,
                queue: 7,
                arg: 9,
                payload: b"item",
            },
            Message::Reply {
                req: 5,
                status: 2,
                value: 3,
                payload: b"",
            },
            Message::Deliver {
                queue: 7,
                closed: true,
                payload: b"",
            },
            Message::Deliver {
                queue: 7,
                closed: false,
                payload: b"x",
            },
            Message::Shm {
                seg: 3,
                new: true,
                seg_len: 1 << 20,
                body_at: 15,
                body_len: 70_000,
            },
            Message::Free { seg: 3 },
            Message::Retire { seg: 4 },
        ];
        for msg in &msgs {
            let body = round_trip(msg);
            assert_eq!(&Message::decode(&body).unwrap(), msg);
        }
    }

    #[test]
    fn version_mismatch_is_named() {
        let mut body = round_trip(&Message::Hello(Hello {
            pid: 1,
            tasks: vec![],
            signatures: vec![],
        }));
        body[5..9].copy_from_slice(&99u32.to_le_bytes());
        assert!(matches!(
            Message::decode(&body),
            Err(IpcError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: 99
            })
        ));
    }

    #[test]
    fn malformed_bodies_are_errors() {
        for body in [
            &[][..],
            &[0],
            &[RUN, 1, 2],
            &[HELLO, b'X', b'X', b'X', b'X'],
            &[SHUTDOWN, 1],
            &[200],
        ] {
            assert!(Message::decode(body).is_err(), "{body:?}");
        }
    }
}
