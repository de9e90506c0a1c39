//! [`Imap`] as a [`futures_core::Stream`] (feature `futures`, on by
//! default): the same machine as the iterator, woken instead of blocked.
//!
//! `poll_next` takes inputs only while the window has room, exactly as
//! `next` does, so a slow consumer keeps the master's buffer bounded. The
//! thread that finishes a chunk (`Shared::finish`) wakes the job's slot;
//! a stop wakes the pool's stop set.

use std::borrow::Borrow;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use crossbeam_channel::TryRecvError;
use futures_core::Stream;
use procpool_ipc::task::Payload;

use super::Imap;
use crate::Error;

impl<I: Payload, O: Payload, It> Imap<'_, I, O, It>
where
    It: Iterator,
    It::Item: Borrow<I>,
{
    /// Takes an outcome that has arrived; `Some(end)` if the channel is
    /// gone, `None` otherwise.
    fn take_arrived(&mut self) -> Result<bool, Option<Result<O, Error>>> {
        match self.rx.try_recv() {
            Ok(outcome) => {
                self.accept(outcome);
                Ok(true)
            }
            Err(TryRecvError::Empty) => Ok(false),
            // Unreachable while we hold `job.sink`; be safe anyway.
            Err(TryRecvError::Disconnected) => {
                self.ended = true;
                Err(Some(Err(Error::Terminated)))
            }
        }
    }
}

/// Results as a [`Stream`]: `while let Some(r) = stream.next().await`.
///
/// The input iterator is still called from `poll_next`, so it should not
/// block (a range, a `Vec`, a file read ahead of time). Taking at most the
/// pool's `window` items ahead, as the iterator does: a consumer that
/// stops polling stops the input.
impl<I: Payload, O: Payload, It> Stream for Imap<'_, I, O, It>
where
    It: Iterator + Unpin,
    It::Item: Borrow<I>,
{
    type Item = Result<O, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let mut registered = false;
        loop {
            if let Some(next) = this.step() {
                if next.is_none() {
                    this.pool.shared.stop_wakers.remove(&mut this.stop_key);
                }
                return Poll::Ready(next);
            }
            match this.take_arrived() {
                Ok(true) => continue,
                Ok(false) => {}
                Err(end) => return Poll::Ready(end),
            }
            if registered {
                // Registered, looked again, nothing: the next outcome or
                // the stop wakes us.
                return Poll::Pending;
            }
            this.job.waker.register(cx.waker());
            let shared = Arc::clone(&this.pool.shared);
            shared.stop_wakers.register(&mut this.stop_key, cx.waker());
            registered = true;
            if shared.interrupted.load(Ordering::SeqCst) {
                continue;
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        Iterator::size_hint(self)
    }
}
