//! `FrameReader::read_frame` over arbitrary bytes: never panics, never
//! allocates what a header announces (run with `-malloc_limit_mb` low: a
//! 4 GiB header must not turn into a 4 GiB allocation), and every frame it
//! returns is within the maximum.
//!
//! Input: one byte choosing how the stream hands out its bytes (chunk size,
//! interruptions), then the stream. It is read twice: with a 1 MiB maximum,
//! and with no maximum at all (`u64::MAX`), where only the bytes that
//! really arrive may be allocated.
#![no_main]

use std::io::{self, Read};

use libfuzzer_sys::fuzz_target;
use procpool_ipc::IpcError;
use procpool_ipc::frame::FrameReader;

/// Hands out at most `chunk` bytes per read, and fails every `interrupt`th
/// read with `Interrupted` (which readers must retry; 0: never).
struct Chunky<'a> {
    data: &'a [u8],
    chunk: usize,
    interrupt: u8,
    reads: u8,
}

impl Read for Chunky<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reads = self.reads.wrapping_add(1);
        if self.interrupt != 0 && self.reads.is_multiple_of(self.interrupt) {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let n = buf.len().min(self.chunk).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn read_all(mode: u8, data: &[u8], max: u64) {
    let stream = Chunky {
        data,
        chunk: usize::from(mode & 0x1F) * 37 + 1,
        // 1 would interrupt every read, forever.
        interrupt: if mode >> 5 < 2 { 0 } else { mode >> 5 },
        reads: 0,
    };
    let mut r = FrameReader::new(stream, max);
    let mut buf = Vec::new();
    let mut consumed = 0usize;
    loop {
        let capacity = buf.capacity();
        match r.read_frame(&mut buf) {
            Ok(true) => {
                assert!(buf.len() as u64 <= max, "frame over the maximum");
                // At least: a header is 4 bytes, or 12 in its long form.
                consumed += 4 + buf.len();
                assert!(consumed <= data.len(), "a frame of bytes that never came");
            }
            Ok(false) => {
                assert!(consumed <= data.len(), "more frames than bytes");
                return;
            }
            Err(IpcError::FrameTooLarge { len, max: m }) => {
                assert!(len > m);
                assert_eq!(buf.capacity(), capacity, "allocated for a refused frame");
                return;
            }
            Err(IpcError::Truncated { read, expected }) => {
                assert!(read < expected);
                return;
            }
            Err(e) => panic!("unexpected error from an in-memory stream: {e}"),
        }
        // The buffer grows with the bytes that arrived, not with headers.
        assert!(
            buf.capacity() <= 2 * (data.len() + (64 << 10)),
            "capacity {} for {} bytes of input",
            buf.capacity(),
            data.len()
        );
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, data)) = input.split_first() else {
        return;
    };
    read_all(mode, data, 1 << 20);
    read_all(mode, data, u64::MAX);
});
