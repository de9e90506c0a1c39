//! How long a queue lives, and when a pipe's direction ends.
//!
//! # Lifetime
//!
//! A queue lives while any process holds a handle to it:
//!
//! - handles in the hub process itself (the `Arc<Core>`s they share);
//! - *pins*: serialising a handle (to spawn a process, submit a task, put
//!   it on a queue) pins the queue, in the hub process directly, in a
//!   worker with a `PIN` to the hub. Each pin has a token, carried by the
//!   handle's bytes (see `queues/pins.rs`). The pin lasts until a process
//!   receives that handle: a worker's deserialisation sends `HOLD` with
//!   the token, which takes that pin, and the hub process's own
//!   deserialisation takes it directly. So `Process::spawn(task, queue)`
//!   may move the creator's only handle: the pin keeps the queue until
//!   the child holds it;
//! - *holds*: each handle a worker deserialised (with its clones) holds the
//!   queue for its connection until it drops (`UNHOLD`) or the connection
//!   ends.
//!
//! While pins or holds exist, the queue keeps a reference to itself
//! ([`Life::keep`]), dropped when the last one goes. A handle serialised
//! into a task's inputs (or a `Process`'s arguments) and never received
//! (the task never started, the process was killed first) loses its pin
//! when the job ends: the pool keeps the job's pins (`pins::Carried`).
//! A handle serialised elsewhere (put on a queue, serialised in a worker)
//! and never received leaves its pin: that queue lives until the hub
//! process exits. A handle received twice from one serialisation (a
//! retried task) holds the queue the second time without a pin, which is
//! fine while anything else holds it.
//!
//! # Pipes
//!
//! Each direction of a pipe is a queue with *writers*: the sending end's
//! handles in the hub process, its pins, and the holds of sending ends in
//! workers. When the last writer goes (dropped without `close`, or the
//! process holding it ended or died), the direction is closed, so the
//! receiving end gets what was sent, then `Closed`: the pipe's end of
//! file, as Python's `EOFError`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use super::{Core, State, op};
use crate::link::Dirty;
use crate::queues::pins::{self, Pinned, Pins};

/// A queue's pins, holds and writers.
#[derive(Debug, Default)]
pub(super) struct Life {
    /// Serialised handles not received yet.
    pins: Pins,
    /// Handle groups held by connections: (link id, writer) → count.
    holds: HashMap<(u64, bool), u64>,
    /// Whether this is a pipe's direction (closed when its writers go).
    pipe: bool,
    /// Pipe writer handles in the hub process.
    local_writers: u64,
    /// Pipe reader handles in the hub process (the other handles of a
    /// pipe's direction are its receiving ends).
    local_readers: u64,
    /// The queue itself, while pins or holds keep it alive.
    keep: Option<Keep>,
}

/// The queue's reference to itself.
pub(super) struct Keep(#[allow(dead_code)] Arc<Core>);

impl fmt::Debug for Keep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keep")
    }
}

impl Life {
    fn writers(&self) -> u64 {
        let held: u64 = self
            .holds
            .iter()
            .filter(|((_, writer), _)| *writer)
            .map(|(_, n)| *n)
            .sum();
        self.local_writers + self.pins.count(true) + held
    }

    /// A pipe direction's receiving handles: here, pinned, held.
    fn readers(&self) -> u64 {
        let held: u64 = self
            .holds
            .iter()
            .filter(|((_, writer), _)| !*writer)
            .map(|(_, n)| *n)
            .sum();
        self.local_readers + self.pins.count(false) + held
    }

    fn anchored(&self) -> bool {
        !self.pins.is_empty() || !self.holds.is_empty()
    }
}

impl Core {
    /// After a change: keeps or releases the self-reference, and closes a
    /// pipe's direction whose writers are gone. Returns the reference to
    /// drop once the state is unlocked (it may be the last one).
    fn settle_life(self: &Arc<Self>, state: &mut State, dirty: &mut Dirty) -> Option<Keep> {
        if state.life.pipe && state.life.writers() == 0 {
            self.close_locked(state, dirty);
        }
        if state.life.pipe && state.life.readers() == 0 {
            if let Some(lane) = self.lane() {
                lane.readers_gone();
            }
        }
        if state.life.anchored() {
            if state.life.keep.is_none() {
                state.life.keep = Some(Keep(Arc::clone(self)));
            }
            None
        } else {
            state.life.keep.take()
        }
    }

    /// `PIN` or `HOLD` (of the pin `token`), or `UNHOLD`, from connection
    /// `link_id`.
    pub(super) fn life_op(
        self: &Arc<Self>,
        state: &mut State,
        link_id: u64,
        code: u8,
        (writer, token): (bool, u64),
        dirty: &mut Dirty,
    ) -> Option<Keep> {
        let life = &mut state.life;
        match code {
            op::PIN => life.pins.pin(token, writer),
            op::HOLD => {
                life.pins.take(token);
                *life.holds.entry((link_id, writer)).or_default() += 1;
            }
            _ => {
                if let Some(n) = life.holds.get_mut(&(link_id, writer)) {
                    *n -= 1;
                    if *n == 0 {
                        life.holds.remove(&(link_id, writer));
                    }
                }
            }
        }
        self.settle_life(state, dirty)
    }

    /// Connection `link_id` ended: its holds go.
    pub(super) fn life_disconnect(
        self: &Arc<Self>,
        state: &mut State,
        link_id: u64,
        dirty: &mut Dirty,
    ) -> Option<Keep> {
        state.life.holds.retain(|(link, _), _| *link != link_id);
        self.settle_life(state, dirty)
    }

    /// A handle to this queue is being serialised here: returns the token
    /// of its pin (owned by the `carry` running on this thread, if any).
    pub(crate) fn pin(self: &Arc<Self>, writer: bool) -> u64 {
        let token = pins::token(true);
        let mut dirty = Dirty::default();
        let mut state = self.lock();
        state.life.pins.pin(token, writer);
        let released = self.settle_life(&mut state, &mut dirty);
        drop(state);
        drop(released);
        let owner: std::sync::Weak<Core> = Arc::downgrade(self);
        pins::carried(owner, token);
        token
    }

    /// A handle to this queue was deserialised here: it takes its pin (and,
    /// for a pipe writer, counts as a writer from now on; for a pipe's
    /// receiving end, as a reader: then `true`, and the caller marks the
    /// handle so that its drop calls `reader_dropped`).
    pub(crate) fn receive(self: &Arc<Self>, writer: bool, token: u64) -> bool {
        let mut dirty = Dirty::default();
        let mut state = self.lock();
        // Counted before the pin goes, so the readers never pass 0.
        let reader = !writer && state.life.pipe;
        if writer {
            state.life.local_writers += 1;
        } else if reader {
            state.life.local_readers += 1;
        }
        state.life.pins.take(token);
        let released = self.settle_life(&mut state, &mut dirty);
        self.notify(state);
        drop(released);
        reader
    }

    /// Makes this queue a pipe's direction, with one writer and one
    /// reader handle here.
    pub(crate) fn set_pipe(&self) {
        let mut state = self.lock();
        state.life.pipe = true;
        state.life.local_writers += 1;
        state.life.local_readers += 1;
    }

    /// A pipe reader handle here was dropped.
    pub(crate) fn reader_dropped(self: &Arc<Self>) {
        let mut dirty = Dirty::default();
        let mut state = self.lock();
        state.life.local_readers = state.life.local_readers.saturating_sub(1);
        let released = self.settle_life(&mut state, &mut dirty);
        self.notify(state);
        drop(released);
    }

    /// A pipe writer handle here was dropped.
    pub(crate) fn writer_dropped(self: &Arc<Self>) {
        let mut dirty = Dirty::default();
        let mut state = self.lock();
        state.life.local_writers = state.life.local_writers.saturating_sub(1);
        let released = self.settle_life(&mut state, &mut dirty);
        self.notify(state);
        drop(released);
    }
}

impl Pinned for Core {
    fn release_pin(self: Arc<Self>, token: u64) {
        let me = self;
        let mut dirty = Dirty::default();
        let mut state = me.lock();
        if !state.life.pins.release(token) {
            return;
        }
        let released = me.settle_life(&mut state, &mut dirty);
        me.notify(state);
        drop(released);
    }
}
