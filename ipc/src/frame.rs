//! Length-prefixed frames.
//!
//! A frame is a 4-byte little-endian length followed by that many bytes;
//! a body of `u32::MAX` bytes or more has the length `u32::MAX` followed by
//! its real length in 8 bytes (`Header`), so no limit is built into the
//! format.
//! The reader checks the length against a maximum *before* it allocates, and
//! grows its buffer only as bytes actually arrive, so a hostile or corrupt
//! header cannot make it allocate the announced size. A clean end of stream
//! between frames is `Ok(false)`; an end inside a frame is
//! [`IpcError::Truncated`].
//!
//! The frame limit protects a connection from a bad length prefix. Bodies
//! that travel through shared memory ([`crate::shm::transport`]) are not
//! subject to it: the small frame that names one is, and the body's length
//! is checked against the segment the receiver actually mapped.

use std::io::{self, BufReader, BufWriter, Read, Write};

use crate::IpcError;

/// Default payload limit: 64 MiB. The payload limit bounds one encoded
/// value (a task's input or result, a queue item): what the pool's
/// `max_payload_len` sets. A frame carries one value, or a chunk of values
/// within the limit together, plus its message's header.
pub const DEFAULT_MAX_PAYLOAD_LEN: u64 = 64 << 20;

/// Bytes a value's encoding may add to the payload limit: its length
/// prefixes and tags, so that a 64 MiB buffer passes a 64 MiB limit.
pub const ENCODING_SLACK: u64 = 16;

/// Room a message needs beside the values it carries.
pub const MESSAGE_OVERHEAD: u64 = 1024;

/// The longest frame that carries values within `max_payload`.
pub const fn frame_limit(max_payload: u64) -> u64 {
    max_payload.saturating_add(ENCODING_SLACK + MESSAGE_OVERHEAD)
}

/// Default maximum frame length: what carries values within
/// [`DEFAULT_MAX_PAYLOAD_LEN`].
pub const DEFAULT_MAX_FRAME_LEN: u64 = frame_limit(DEFAULT_MAX_PAYLOAD_LEN);

/// Length of the frame header of a body shorter than `u32::MAX` bytes.
pub const HEADER_LEN: usize = 4;

/// The short length that announces an 8-byte length after it.
const LONG: u32 = u32::MAX;

/// A frame's header: its body's length, in 4 bytes or (from `u32::MAX`
/// bytes on) in 12.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Header {
    bytes: [u8; 12],
    len: usize,
}

impl Header {
    pub(crate) fn new(body: u64) -> Self {
        let mut bytes = [0; 12];
        match u32::try_from(body) {
            Ok(short) if short != LONG => {
                bytes[..4].copy_from_slice(&short.to_le_bytes());
                Self { bytes, len: 4 }
            }
            _ => {
                bytes[..4].copy_from_slice(&LONG.to_le_bytes());
                bytes[4..].copy_from_slice(&body.to_le_bytes());
                Self { bytes, len: 12 }
            }
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

const BUF_CAPACITY: usize = 64 << 10;

/// Reads frames from a byte stream through an internal buffer.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: BufReader<R>,
    max: u64,
}

impl<R: Read> FrameReader<R> {
    /// Wraps `inner`; frames longer than `max` bytes are refused.
    pub fn new(inner: R, max: u64) -> Self {
        Self {
            inner: BufReader::with_capacity(BUF_CAPACITY, inner),
            max,
        }
    }

    /// Whether bytes are already buffered (a next frame may be read without
    /// a system call).
    pub fn has_buffered(&self) -> bool {
        !self.inner.buffer().is_empty()
    }

    /// Reads the next frame into `buf` (replacing its contents).
    ///
    /// Returns `Ok(false)` on a clean end of stream between frames. A peer
    /// that went away (`BrokenPipe`/`ConnectionReset`, which is how a closed
    /// peer reads on Windows pipes) counts as the end of the stream.
    ///
    /// # Errors
    /// [`IpcError::FrameTooLarge`] before any allocation when the header
    /// announces more than the maximum, [`IpcError::Truncated`] when the
    /// stream ends inside a frame, [`IpcError::Io`] otherwise.
    pub fn read_frame(&mut self, buf: &mut Vec<u8>) -> Result<bool, IpcError> {
        buf.clear();
        let mut header = [0u8; HEADER_LEN];
        let got = read_full(&mut self.inner, &mut header)?;
        if got == 0 {
            return Ok(false);
        }
        if got < HEADER_LEN {
            return Err(IpcError::Truncated {
                read: got,
                expected: HEADER_LEN,
            });
        }
        let mut len = u64::from(u32::from_le_bytes(header));
        if len == u64::from(LONG) {
            let mut long = [0u8; 8];
            let got = read_full(&mut self.inner, &mut long)?;
            if got < long.len() {
                return Err(IpcError::Truncated {
                    read: HEADER_LEN + got,
                    expected: HEADER_LEN + long.len(),
                });
            }
            len = u64::from_le_bytes(long);
        }
        let len = match usize::try_from(len) {
            Ok(fits) if len <= self.max => fits,
            _ => {
                return Err(IpcError::FrameTooLarge { len, max: self.max });
            }
        };
        // Reserve at most one buffer's worth up front; the rest grows as the
        // bytes really arrive.
        buf.reserve(len.min(BUF_CAPACITY));
        let read = match (&mut self.inner).take(len as u64).read_to_end(buf) {
            Ok(n) => n,
            Err(e) if is_peer_gone(&e) => buf.len(),
            Err(e) => return Err(e.into()),
        };
        if read < len {
            return Err(IpcError::Truncated {
                read,
                expected: len,
            });
        }
        Ok(true)
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &R {
        self.inner.get_ref()
    }
}

/// Reads until `buf` is full or the stream ends; returns how much was read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_peer_gone(&e) => break,
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Whether `e` means the peer closed its end.
pub fn is_peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

/// Writes frames to a byte stream through an internal buffer.
///
/// Nothing reaches the stream until the buffer fills or [`flush`](Self::flush)
/// is called, so a burst of small frames costs one system call.
#[derive(Debug)]
pub struct FrameWriter<W: Write> {
    inner: BufWriter<W>,
    max: u64,
}

/// Something frames can be written to: a [`FrameWriter`], or a
/// [`Link`](crate::link::Link)'s outbox.
pub trait WriteFrame {
    /// Buffers one frame whose body is the concatenation of `parts`.
    ///
    /// # Errors
    /// [`IpcError::FrameTooLarge`] (nothing is written) when the body is
    /// longer than the maximum; [`IpcError::Io`] when the stream fails.
    fn write_frame(&mut self, parts: &[&[u8]]) -> Result<(), IpcError>;
}

/// The length of a frame whose body is `parts`, checked against `max`.
pub(crate) fn checked_len(parts: &[&[u8]], max: u64) -> Result<u64, IpcError> {
    let len = parts.iter().map(|p| p.len() as u64).sum();
    if len > max {
        return Err(IpcError::FrameTooLarge { len, max });
    }
    Ok(len)
}

impl<W: Write> WriteFrame for FrameWriter<W> {
    fn write_frame(&mut self, parts: &[&[u8]]) -> Result<(), IpcError> {
        let len = checked_len(parts, self.max)?;
        self.inner.write_all(Header::new(len).as_bytes())?;
        for part in parts {
            self.inner.write_all(part)?;
        }
        Ok(())
    }
}

impl<W: Write> FrameWriter<W> {
    /// Wraps `inner`; frames longer than `max` bytes are refused.
    pub fn new(inner: W, max: u64) -> Self {
        Self {
            inner: BufWriter::with_capacity(BUF_CAPACITY, inner),
            max,
        }
    }

    /// The configured maximum frame length.
    pub fn max_frame_len(&self) -> u64 {
        self.max
    }

    /// Sends everything buffered.
    ///
    /// # Errors
    /// [`IpcError::Io`] when the stream fails.
    pub fn flush(&mut self) -> Result<(), IpcError> {
        Ok(self.inner.flush()?)
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &W {
        self.inner.get_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(bytes: &[u8]) -> Vec<Result<Vec<u8>, IpcError>> {
        let mut r = FrameReader::new(bytes, 1024);
        let mut out = Vec::new();
        loop {
            let mut buf = Vec::new();
            match r.read_frame(&mut buf) {
                Ok(true) => out.push(Ok(buf)),
                Ok(false) => return out,
                Err(e) => {
                    out.push(Err(e));
                    return out;
                }
            }
        }
    }

    #[test]
    fn round_trip() {
        let mut wire = Vec::new();
        let mut w = FrameWriter::new(&mut wire, 1024);
        w.write_frame(&[b"ab", b"cd"]).unwrap();
        w.write_frame(&[]).unwrap();
        w.flush().unwrap();
        drop(w);
        let got: Vec<_> = frames(&wire).into_iter().map(Result::unwrap).collect();
        assert_eq!(got, vec![b"abcd".to_vec(), Vec::new()]);
    }

    #[test]
    fn huge_long_header_is_refused_without_allocating() {
        // 0xFFFF_FFFF announces an 8-byte length: here 2^40.
        let mut wire = vec![0xFF; 4];
        wire.extend_from_slice(&(1u64 << 40).to_le_bytes());
        wire.extend_from_slice(&[1, 2, 3]);
        let mut r = FrameReader::new(&wire[..], (1 << 40) - 1);
        let mut buf = Vec::new();
        let err = r.read_frame(&mut buf).unwrap_err();
        assert!(
            matches!(err, IpcError::FrameTooLarge { len, .. } if len == 1 << 40),
            "{err}"
        );
        assert_eq!(
            buf.capacity(),
            0,
            "nothing may be allocated for a refused frame"
        );
        // A long header cut short is a truncated frame.
        let err = FrameReader::new(&[0xFF, 0xFF, 0xFF, 0xFF, 1, 2][..], u64::MAX)
            .read_frame(&mut buf)
            .unwrap_err();
        assert!(
            matches!(
                err,
                IpcError::Truncated {
                    read: 6,
                    expected: 12
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn headers_switch_to_eight_bytes_at_u32_max() {
        assert_eq!(Header::new(0).as_bytes(), &[0, 0, 0, 0]);
        assert_eq!(
            Header::new(u64::from(u32::MAX) - 1).as_bytes(),
            &[0xFE, 0xFF, 0xFF, 0xFF]
        );
        let long = Header::new(u64::from(u32::MAX));
        assert_eq!(long.as_bytes().len(), 12);
        assert_eq!(&long.as_bytes()[..4], &[0xFF; 4]);
        assert_eq!(long.as_bytes()[4..], u64::from(u32::MAX).to_le_bytes());
        // A reader takes the long form whatever the length (here 3 bytes).
        let mut wire = vec![0xFF; 4];
        wire.extend_from_slice(&3u64.to_le_bytes());
        wire.extend_from_slice(b"abc");
        let mut buf = Vec::new();
        assert!(
            FrameReader::new(&wire[..], 10)
                .read_frame(&mut buf)
                .unwrap()
        );
        assert_eq!(buf, b"abc");
    }

    #[test]
    fn announced_size_below_max_is_not_preallocated() {
        // 1 GiB announced, 3 bytes sent: the buffer grows with the bytes, not the header.
        let mut r = FrameReader::new(&[0, 0, 0, 0x40, 1, 2, 3][..], u64::MAX);
        let mut buf = Vec::new();
        let err = r.read_frame(&mut buf).unwrap_err();
        assert!(matches!(err, IpcError::Truncated { read: 3, .. }), "{err}");
        assert!(
            buf.capacity() <= BUF_CAPACITY,
            "capacity {}",
            buf.capacity()
        );
    }

    #[test]
    fn truncated_header_and_body() {
        let got = frames(&[5, 0]);
        assert!(matches!(
            got[0],
            Err(IpcError::Truncated {
                read: 2,
                expected: 4
            })
        ));
        let got = frames(&[5, 0, 0, 0, b'a', b'b']);
        assert!(matches!(
            got[0],
            Err(IpcError::Truncated {
                read: 2,
                expected: 5
            })
        ));
    }

    #[test]
    fn garbage_bytes_are_an_error() {
        let garbage: Vec<u8> = (0..64u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8 | 0x80)
            .collect();
        let got = frames(&garbage);
        assert!(got.last().unwrap().is_err());
    }

    #[test]
    fn oversized_write_is_refused() {
        let mut wire = Vec::new();
        let mut w = FrameWriter::new(&mut wire, 3);
        assert!(matches!(
            w.write_frame(&[b"abcd"]),
            Err(IpcError::FrameTooLarge { len: 4, max: 3 })
        ));
        w.flush().unwrap();
        drop(w);
        assert!(wire.is_empty());
    }
}
