//! [`Link`]: the writing side of one connection, shared by every thread that
//! sends on it.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::IpcError;
use crate::frame::FrameWriter;
use crate::proto::Message;

type BoxWriter = Box<dyn Write + Send>;

/// The writing side of one connection, behind a lock so several threads
/// (the supervisor, the hub serving other workers' puts, a worker's task
/// using a queue) can send on it. Frames are buffered; [`flush`](Self::flush)
/// or [`send`](Self::send) put them in the kernel.
pub struct Link {
    id: u64,
    writer: Mutex<FrameWriter<BoxWriter>>,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// Wraps `writer`, giving the connection an id unique in this process.
    pub fn new(writer: impl Write + Send + 'static, max_frame_len: u32) -> Arc<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Arc::new(Self {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            writer: Mutex::new(FrameWriter::new(Box::new(writer), max_frame_len)),
        })
    }

    /// The connection's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Locks the writer, to buffer several frames at once.
    pub fn lock(&self) -> MutexGuard<'_, FrameWriter<BoxWriter>> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Buffers `msg` without flushing.
    ///
    /// # Errors
    /// As [`Message::write`].
    pub fn write(&self, msg: &Message<'_>) -> Result<(), IpcError> {
        msg.write(&mut self.lock())
    }

    /// Puts everything buffered into the kernel.
    ///
    /// # Errors
    /// [`IpcError::Io`] when the connection is broken.
    pub fn flush(&self) -> Result<(), IpcError> {
        self.lock().flush()
    }

    /// Writes `msg` and flushes: when this returns `Ok`, the kernel has it.
    ///
    /// # Errors
    /// As [`Message::write`] and [`flush`](Self::flush).
    pub fn send(&self, msg: &Message<'_>) -> Result<(), IpcError> {
        let mut w = self.lock();
        msg.write(&mut w)?;
        w.flush()
    }
}

/// Links written to but not yet flushed; flushing is deferred so a burst of
/// frames costs one system call per connection.
#[derive(Debug, Default)]
pub struct Dirty(Vec<Arc<Link>>);

impl Dirty {
    /// Remembers that `link` has buffered frames.
    pub fn mark(&mut self, link: &Arc<Link>) {
        if !self.0.iter().any(|l| l.id == link.id) {
            self.0.push(Arc::clone(link));
        }
    }

    /// Whether nothing waits to be flushed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Flushes every remembered link. A broken link is ignored here: its
    /// reader sees the end of the connection and cleans up.
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
