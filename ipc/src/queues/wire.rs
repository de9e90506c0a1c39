//! The queue protocol, in one place: what a worker's proxy asks the hub
//! ([`Message::Hub`]), what the hub answers ([`Message::Reply`],
//! [`Message::Deliver`]), and what each field means. The frame layouts
//! themselves are in [`crate::proto`].
//!
//! | op | `req` | `arg` | payload | answer |
//! |---|---|---|---|---|
//! | `PUT` | 0 (one-way) | — | item | none; `NO_QUEUE` notice if the queue is gone |
//! | `PUT_WAIT` | id | 1: park until room, 0: never wait | item | `OK`, `FULL`, `CLOSED` (or later, once parked); also a process's first put to an unbounded queue |
//! | `SUBSCRIBE` | id, or 0 to raise the credit | credit to add | — | deliveries, then `OK` (if `req`) |
//! | `ACK` | 0 | items taken | — | none (returns their credit); 0: the getters a `KEEP` kept items for left without taking them, so they may be recalled |
//! | `TASK_DONE` | id or 0 | count | — | `OK`, or `TOO_MANY_TASK_DONE` with `value` = unfinished |
//! | `JOIN` | id | — | — | `OK` once nothing is unfinished (parks); `CONSUMER_DIED` at once, or while parked, when a connection ended owing confirmations |
//! | `LEN` | id | — | — | `OK` with `value` = length |
//! | `CLOSE` | id | — | — | `OK` |
//! | `SHUTDOWN` | id | 1: immediate, 0: not | — | `OK`; users hear a `SHUT_DOWN` notice (payload: 1 byte, immediate), then `CLOSED`; puts, parked or new, are answered `SHUT_DOWN` |
//! | `CANCEL` | 0 | the parked request's id | — | `CANCELLED` to that request, if still parked |
//! | `UNSUBSCRIBE` | id | — | — | `OK`, after the subscription's unacknowledged items went back to the front of the queue |
//! | `HUB_ID` | id (queue 0) | — | — | `OK` with `value` = the hub's id (a worker asks once, to tell its parent's handles from others) |
//! | `PIN` | 0 | 1: a pipe writer's handle, 0: any other | — | none; a handle was serialised: the queue lives until a `HOLD` (or the hub process's own deserialisation) takes the pin |
//! | `HOLD` | 0 | as `PIN` | — | none; a handle was deserialised in the sender's process: the queue lives while the connection holds it. `NO_QUEUE` notice if the queue is gone |
//! | `UNHOLD` | 0 | as `PIN` | — | none; that handle (with its clones) was dropped |
//! | `WANT` | 0 | — | — | none; a getter here has waited a moment with nothing buffered: deliver here first, and recall items buffered in idle processes |
//! | `RETURN` | 0 | count | — | none; answers a `RECALL`: no getter waits here; the last `count` items delivered (this process's unread buffer) go back to their places in the queue (put order), and the subscription has no credit until the next `SUBSCRIBE` |
//! | `KEEP` | 0 | count | — | none; answers a `RECALL` while a getter waits here: as `RETURN` for the `count` items the getters will not take, but the credit stays |
//!
//! `ACK` adds to the sending connection's debt and `TASK_DONE` pays it
//! (see [`hub`](super::hub)): a worker sends both before the caller goes
//! on, and waits until they are in the kernel, so a process that dies
//! right after `get` or `task_done` is charged for what its code saw.
//!
//! `CONSUMER_DIED` carries `value` = the items that connection left
//! unconfirmed (now out of the unfinished count) and, as payload, the
//! process id its worker announced in its hello (4 bytes, little endian),
//! or nothing if unknown. Each such loss is answered to every join parked
//! when it happens, or, if none is, to the next join.
//!
//! A reply with `req` 0 is a notice about queue `value`: `CLOSED` (puts
//! are refused from now on), `SHUT_DOWN` (the queue was shut down; with
//! payload `[1]`, immediately: drop what is buffered), `NO_QUEUE` (the hub holds no such queue:
//! a `HOLD` came after every handle was gone) or `RECALL` (a getter
//! elsewhere waits and the queue is empty: give back what you buffered
//! unless a getter of yours takes it; answered by `RETURN` or `KEEP`,
//! and the hub delivers nothing here until then). A
//! `Deliver` with `closed` set says the queue is closed and drained.
//!
//! Synchronization primitives (`sync/mod.rs`, ops and statuses from 32)
//! and maps (`map.rs`, from 48) extend this table.
//!
//! [`Message::Hub`]: crate::proto::Message::Hub
//! [`Message::Reply`]: crate::proto::Message::Reply
//! [`Message::Deliver`]: crate::proto::Message::Deliver

use std::time::Instant;

use crate::error::QueueError;

/// Operation codes of `Message::Hub`.
pub(crate) mod op {
    pub(crate) const PUT: u8 = 1;
    pub(crate) const PUT_WAIT: u8 = 2;
    pub(crate) const SUBSCRIBE: u8 = 3;
    pub(crate) const ACK: u8 = 4;
    pub(crate) const TASK_DONE: u8 = 5;
    pub(crate) const JOIN: u8 = 6;
    pub(crate) const LEN: u8 = 7;
    pub(crate) const CLOSE: u8 = 8;
    pub(crate) const CANCEL: u8 = 9;
    pub(crate) const UNSUBSCRIBE: u8 = 10;
    pub(crate) const HUB_ID: u8 = 11;
    pub(crate) const PIN: u8 = 12;
    pub(crate) const HOLD: u8 = 13;
    pub(crate) const UNHOLD: u8 = 14;
    pub(crate) const WANT: u8 = 15;
    pub(crate) const RETURN: u8 = 16;
    pub(crate) const KEEP: u8 = 17;
    pub(crate) const SHUTDOWN: u8 = 18;
}

/// Status codes of `Message::Reply`.
pub(crate) mod status {
    pub(crate) const OK: u8 = 0;
    pub(crate) const FULL: u8 = 1;
    pub(crate) const CLOSED: u8 = 2;
    pub(crate) const NO_QUEUE: u8 = 3;
    pub(crate) const TOO_MANY_TASK_DONE: u8 = 4;
    pub(crate) const CANCELLED: u8 = 5;
    pub(crate) const BAD_REQUEST: u8 = 6;
    pub(crate) const CONSUMER_DIED: u8 = 7;
    pub(crate) const RECALL: u8 = 8;
    pub(crate) const SHUT_DOWN: u8 = 9;
}

/// How long an operation may block.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Wait {
    No,
    Until(Instant),
    Forever,
}

impl Wait {
    /// The deadline, if any (`No` is "now").
    pub(crate) fn deadline(self) -> Option<Instant> {
        match self {
            Wait::Until(d) => Some(d),
            Wait::No => Some(Instant::now()),
            Wait::Forever => None,
        }
    }
}

/// What a reply status means to the queue API.
pub(crate) fn check(code: u8, queue: u64) -> Result<(), QueueError> {
    check_reply(code, queue, 0, &[])
}

/// As [`check`], for replies whose value and payload may say more.
pub(crate) fn check_reply(
    code: u8,
    queue: u64,
    value: u64,
    payload: &[u8],
) -> Result<(), QueueError> {
    match code {
        status::OK => Ok(()),
        status::FULL | status::CANCELLED => Err(QueueError::Full),
        status::CLOSED => Err(QueueError::Closed),
        status::SHUT_DOWN => Err(QueueError::ShutDown),
        status::NO_QUEUE => Err(QueueError::NoSuchQueue { id: queue }),
        status::TOO_MANY_TASK_DONE => Err(QueueError::TooManyTaskDone),
        status::CONSUMER_DIED => match payload {
            [] => Ok(None),
            &[a, b, c, d] => Ok(Some(u32::from_le_bytes([a, b, c, d]))),
            _ => Err(QueueError::Protocol),
        }
        .and_then(|pid| {
            Err(QueueError::ConsumerDied {
                pid,
                unfinished: value,
            })
        }),
        _ => Err(QueueError::Protocol),
    }
}
