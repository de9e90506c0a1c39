//! The hub's side of the queue protocol, with no worker: each peer is a
//! link into an in-memory buffer, its requests are `serve` calls, and the
//! tests decode what the hub wrote back.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use super::*;
use crate::frame::{DEFAULT_MAX_FRAME_LEN, FrameReader};
use crate::link::Blocking;

/// How long a test waits for a link's writer thread to hand over its bytes.
const DRAIN: Duration = Duration::from_secs(10);

/// A writer into a buffer the test reads back.
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What a worker would have read from the hub.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Reply {
        req: u64,
        status: u8,
        value: u64,
    },
    Item(Vec<u8>),
    /// The queue is closed and drained.
    End,
    /// A join answered `CONSUMER_DIED`.
    Died {
        req: u64,
        pid: Option<u32>,
        unfinished: u64,
    },
}

fn died(req: u64, pid: Option<u32>, unfinished: u64) -> Got {
    Got::Died {
        req,
        pid,
        unfinished,
    }
}

fn ok(req: u64) -> Got {
    Got::Reply {
        req,
        status: status::OK,
        value: 0,
    }
}

fn answer(req: u64, status: u8) -> Got {
    Got::Reply {
        req,
        status,
        value: 0,
    }
}

fn item(bytes: &[u8]) -> Got {
    Got::Item(bytes.to_vec())
}

/// A worker's connection as the hub sees it.
struct Peer {
    link: Arc<Link>,
    bytes: Arc<Mutex<Vec<u8>>>,
}

impl Peer {
    fn new() -> Self {
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let link = Link::new(Blocking(Capture(Arc::clone(&bytes))), DEFAULT_MAX_FRAME_LEN)
            .expect("writer thread");
        Self { link, bytes }
    }

    /// Sends one queue operation to the hub and returns what the hub wrote
    /// back to this peer meanwhile.
    fn ask(&self, req: u64, op: u8, queue: &Core, arg: u64, payload: &[u8]) -> Vec<Got> {
        let msg = Message::Hub {
            req,
            op,
            queue: queue.id,
            arg,
            payload,
        };
        let mut dirty = Dirty::default();
        serve(&self.link, &msg, &mut dirty);
        dirty.flush();
        self.got_from(queue.id)
    }

    /// Subscribes (request 1) with `credit`; the hub answers OK and
    /// delivers nothing yet.
    #[track_caller]
    fn subscribe(&self, queue: &Core, credit: u64) {
        assert_eq!(self.ask(1, op::SUBSCRIBE, queue, credit, &[]), [ok(1)]);
    }

    /// Says a getter waits here (`WANT`), which asks `holder` to give
    /// back what it buffered.
    #[track_caller]
    fn want_recalls(&self, queue: &Core, holder: &Peer) {
        assert_eq!(self.ask(0, op::WANT, queue, 0, &[]), []);
        assert_eq!(holder.got_from(queue.id), [recall_notice(queue)]);
    }

    /// What the hub wrote to this peer since the last look, once the
    /// link's writer thread has handed it over; deliveries must be of
    /// `queue`.
    fn got_from(&self, queue: u64) -> Vec<Got> {
        let deadline = Instant::now() + DRAIN;
        assert!(
            self.link.drain(Some(deadline)).expect("drain"),
            "not drained"
        );
        let bytes = std::mem::take(&mut *lock(&self.bytes));
        let mut reader = FrameReader::new(&bytes[..], DEFAULT_MAX_FRAME_LEN);
        let mut frame = Vec::new();
        let mut got = Vec::new();
        while reader.read_frame(&mut frame).expect("frame") {
            got.push(match Message::decode(&frame).expect("decode") {
                Message::Reply {
                    req,
                    status,
                    value,
                    payload,
                } if status == status::CONSUMER_DIED => Got::Died {
                    req,
                    pid: match payload {
                        [] => None,
                        p => Some(u32::from_le_bytes(p.try_into().expect("4 bytes"))),
                    },
                    unfinished: value,
                },
                Message::Reply {
                    req,
                    status,
                    value,
                    payload,
                } => {
                    // A shutdown notice says in one byte whether immediate.
                    assert!(payload.is_empty() || status == status::SHUT_DOWN);
                    Got::Reply { req, status, value }
                }
                Message::Deliver {
                    queue: q,
                    closed,
                    payload,
                } => {
                    assert_eq!(q, queue, "a delivery of another queue");
                    if closed {
                        assert!(payload.is_empty());
                        Got::End
                    } else {
                        Got::Item(payload.to_vec())
                    }
                }
                other => panic!("unexpected frame {other:?}"),
            });
        }
        got
    }
}

/// A queue with `items` put locally.
fn queue(capacity: Option<usize>, items: &[&[u8]]) -> Arc<Core> {
    let q = Core::new(capacity);
    for item in items {
        q.put(item.to_vec(), Wait::No).expect("room");
    }
    q
}

/// A `JoinableQueue`'s queue with `items` put locally.
fn joinable(items: &[&[u8]]) -> Arc<Core> {
    let q = queue(None, items);
    q.set_joinable();
    q
}

fn lost(pid: Option<u32>, unfinished: u64) -> Lost {
    Lost { pid, unfinished }
}

/// Takes everything the queue holds locally, without waiting.
fn take_all(q: &Core) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| q.get(Wait::No).ok()).collect()
}

fn close_notice(q: &Core) -> Got {
    Got::Reply {
        req: 0,
        status: status::CLOSED,
        value: q.id,
    }
}

#[test]
fn put_wait_on_a_full_queue_parks_until_room() {
    let q = queue(Some(1), &[]);
    let p = Peer::new();
    assert_eq!(p.ask(1, op::PUT_WAIT, &q, 1, b"a"), [ok(1)]);
    assert_eq!(
        p.ask(2, op::PUT_WAIT, &q, 0, b"x"),
        [answer(2, status::FULL)],
        "a put that may not wait"
    );
    assert!(p.ask(3, op::PUT_WAIT, &q, 1, b"b").is_empty(), "parked");
    assert!(p.ask(4, op::PUT_WAIT, &q, 1, b"c").is_empty(), "parked");
    assert_eq!(q.len(), 1, "parked items are not in the queue");
    // Each get makes room for the oldest parked put.
    assert_eq!(q.get(Wait::No), Ok(b"a".to_vec()));
    assert_eq!(p.got_from(q.id), [ok(3)]);
    assert_eq!(q.get(Wait::No), Ok(b"b".to_vec()));
    assert_eq!(p.got_from(q.id), [ok(4)]);
    assert_eq!(take_all(&q), [b"c".to_vec()]);
    assert!(p.got_from(q.id).is_empty());
    assert_eq!(q.unfinished(), 3);
}

#[test]
fn a_parked_put_can_be_cancelled() {
    let q = queue(Some(1), &[b"a"]);
    let (p, other) = (Peer::new(), Peer::new());
    assert!(p.ask(2, op::PUT_WAIT, &q, 1, b"b").is_empty());
    // Another connection's request of the same id, or an unknown id: nothing.
    assert!(other.ask(0, op::CANCEL, &q, 2, &[]).is_empty());
    assert!(p.ask(0, op::CANCEL, &q, 7, &[]).is_empty());
    assert_eq!(
        p.ask(0, op::CANCEL, &q, 2, &[]),
        [answer(2, status::CANCELLED)]
    );
    // Room now does not revive it.
    assert_eq!(take_all(&q), [b"a".to_vec()]);
    assert!(p.got_from(q.id).is_empty());
    assert_eq!((q.len(), q.unfinished()), (0, 1));
    // Too late to cancel: nothing more is said.
    assert!(p.ask(0, op::CANCEL, &q, 2, &[]).is_empty());
}

#[test]
fn a_parked_put_fails_when_the_queue_closes() {
    let q = queue(Some(1), &[b"a"]);
    let p = Peer::new();
    assert!(p.ask(2, op::PUT_WAIT, &q, 1, b"b").is_empty());
    q.close();
    // Every user of the queue hears of the close, then the parked put.
    assert_eq!(
        p.got_from(q.id),
        [close_notice(&q), answer(2, status::CLOSED)]
    );
    assert_eq!(
        p.ask(3, op::PUT_WAIT, &q, 1, b"c"),
        [answer(3, status::CLOSED)]
    );
    // What was in stays; the parked item never went in.
    assert_eq!(take_all(&q), [b"a".to_vec()]);
    assert_eq!(q.get(Wait::No), Err(GetFail::Closed));
}

#[test]
fn close_by_a_peer_answers_and_tells_every_user() {
    let q = queue(None, &[]);
    let (p, other) = (Peer::new(), Peer::new());
    assert_eq!(p.ask(1, op::LEN, &q, 0, &[]), [ok(1)]);
    assert_eq!(other.ask(1, op::LEN, &q, 0, &[]), [ok(1)]);
    assert_eq!(p.ask(2, op::CLOSE, &q, 0, &[]), [close_notice(&q), ok(2)]);
    assert_eq!(other.got_from(q.id), [close_notice(&q)]);
    // Closing again says nothing more to anyone.
    assert_eq!(p.ask(3, op::CLOSE, &q, 0, &[]), [ok(3)]);
    assert!(other.got_from(q.id).is_empty());
}

#[test]
fn subscribers_get_up_to_their_credit_and_acks_return_it() {
    let q = queue(None, &[b"a", b"b", b"c", b"d", b"e"]);
    let p = Peer::new();
    // Deliveries, then the answer: the proxy knows what is there now.
    assert_eq!(
        p.ask(7, op::SUBSCRIBE, &q, 3, &[]),
        [item(b"a"), item(b"b"), item(b"c"), ok(7)]
    );
    assert_eq!(q.len(), 5, "delivered but unacknowledged items count");
    assert_eq!(
        p.ask(0, op::ACK, &q, 2, &[]),
        [item(b"d"), item(b"e")],
        "two acknowledged: two more credits"
    );
    assert_eq!(q.len(), 3);
    // An ack of more than was delivered counts what was.
    assert!(p.ask(0, op::ACK, &q, 9, &[]).is_empty());
    assert_eq!(q.len(), 0);
    // Three credits: new items go straight out.
    q.put(b"f".to_vec(), Wait::No).expect("room");
    q.put(b"g".to_vec(), Wait::No).expect("room");
    q.put(b"h".to_vec(), Wait::No).expect("room");
    q.put(b"i".to_vec(), Wait::No).expect("room");
    assert_eq!(p.got_from(q.id), [item(b"f"), item(b"g"), item(b"h")]);
    // Raising the credit without a request id: no answer.
    assert_eq!(p.ask(0, op::SUBSCRIBE, &q, 1, &[]), [item(b"i")]);
    assert_eq!(q.len(), 4);
}

/// A peer's credit grants are its own numbers: huge ones saturate instead
/// of overflowing (a panic in the reader thread; found by the `hub` fuzz
/// target, fuzz/corpus/hub/seed-regression-subscribe-credit-overflow).
#[test]
fn huge_credit_grants_saturate() {
    let q = queue(None, &[b"a"]);
    let p = Peer::new();
    assert_eq!(
        p.ask(1, op::SUBSCRIBE, &q, u64::MAX - 1, &[]),
        [item(b"a"), ok(1)]
    );
    // Credit u64::MAX - 2 and one item out: a grant and an ack past the top.
    assert_eq!(p.ask(2, op::SUBSCRIBE, &q, u64::MAX, &[]), [ok(2)]);
    assert!(p.ask(0, op::ACK, &q, 1, &[]).is_empty());
    assert_eq!(q.len(), 0);
    // Still subscribed, with all the credit there is.
    q.put(b"b".to_vec(), Wait::No).expect("room");
    assert_eq!(p.got_from(q.id), [item(b"b")]);
}

#[test]
fn deliveries_go_round_robin() {
    let q = queue(None, &[]);
    let (p, r) = (Peer::new(), Peer::new());
    p.subscribe(&q, 2);
    r.subscribe(&q, 2);
    for i in b"abcde" {
        q.put(vec![*i], Wait::No).expect("room");
    }
    assert_eq!(p.got_from(q.id), [item(b"a"), item(b"c")]);
    assert_eq!(r.got_from(q.id), [item(b"b"), item(b"d")]);
    assert_eq!(take_all(&q), [b"e".to_vec()], "no credit left");
}

#[test]
fn a_disconnect_requeues_unacked_items_at_the_front_in_order() {
    let q = queue(None, &[b"a", b"b", b"c", b"d"]);
    let p = Peer::new();
    assert_eq!(
        p.ask(1, op::SUBSCRIBE, &q, 3, &[]),
        [item(b"a"), item(b"b"), item(b"c"), ok(1)]
    );
    // a is taken for good; its credit brings d.
    assert_eq!(p.ask(0, op::ACK, &q, 1, &[]), [item(b"d")]);
    q.put(b"e".to_vec(), Wait::No).expect("room");
    disconnect(p.link.id(), None);
    assert_eq!(q.len(), 4);
    assert_eq!(
        take_all(&q),
        [b"b".to_vec(), b"c".to_vec(), b"d".to_vec(), b"e".to_vec()]
    );
}

#[test]
fn a_disconnect_hands_unacked_items_to_other_subscribers() {
    let q = queue(None, &[b"a", b"b"]);
    let (p, r) = (Peer::new(), Peer::new());
    assert_eq!(
        p.ask(1, op::SUBSCRIBE, &q, 2, &[]),
        [item(b"a"), item(b"b"), ok(1)]
    );
    r.subscribe(&q, 5);
    disconnect(p.link.id(), None);
    assert_eq!(r.got_from(q.id), [item(b"a"), item(b"b")]);
    assert!(p.got_from(q.id).is_empty());
}

#[test]
fn unsubscribe_requeues_unacked_items_and_answers() {
    let q = queue(None, &[b"a", b"b", b"c"]);
    let p = Peer::new();
    assert_eq!(
        p.ask(1, op::SUBSCRIBE, &q, 2, &[]),
        [item(b"a"), item(b"b"), ok(1)]
    );
    assert_eq!(p.ask(2, op::UNSUBSCRIBE, &q, 0, &[]), [ok(2)]);
    // Acknowledging after letting go changes nothing.
    assert!(p.ask(0, op::ACK, &q, 2, &[]).is_empty());
    assert_eq!(q.len(), 3);
    assert_eq!(take_all(&q), [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    // No subscription, no deliveries.
    q.put(b"d".to_vec(), Wait::No).expect("room");
    assert!(p.got_from(q.id).is_empty());
}

#[test]
fn closed_is_not_told_while_items_are_unacked() {
    let q = queue(None, &[b"a"]);
    let (p, r) = (Peer::new(), Peer::new());
    assert_eq!(p.ask(1, op::SUBSCRIBE, &q, 1, &[]), [item(b"a"), ok(1)]);
    q.close();
    assert_eq!(p.got_from(q.id), [close_notice(&q)], "not the end yet");
    assert_eq!(q.get(Wait::No), Err(GetFail::Empty), "a may come back");
    assert!(!q.poll(Wait::No));
    r.subscribe(&q, 1);
    // Once it is taken for good, every subscriber hears the end, once.
    assert_eq!(p.ask(0, op::ACK, &q, 1, &[]), [Got::End]);
    assert_eq!(r.got_from(q.id), [Got::End]);
    assert_eq!(q.get(Wait::No), Err(GetFail::Closed));
    assert!(q.poll(Wait::No));
    assert!(p.ask(0, op::ACK, &q, 0, &[]).is_empty());
    assert!(r.got_from(q.id).is_empty());
}

#[test]
fn closed_is_not_told_until_requeued_items_are_taken() {
    let q = queue(None, &[b"a"]);
    let (p, r) = (Peer::new(), Peer::new());
    assert_eq!(p.ask(1, op::SUBSCRIBE, &q, 1, &[]), [item(b"a"), ok(1)]);
    q.close();
    r.subscribe(&q, 1);
    // The getter dies: its item goes to the other subscriber, still no end.
    disconnect(p.link.id(), None);
    assert_eq!(r.got_from(q.id), [item(b"a")]);
    assert_eq!(q.get(Wait::No), Err(GetFail::Empty));
    assert_eq!(r.ask(0, op::ACK, &q, 1, &[]), [Got::End]);
    assert_eq!(q.get(Wait::No), Err(GetFail::Closed));
}

#[test]
fn a_closed_queue_whose_items_come_back_serves_them_locally_first() {
    let q = queue(None, &[b"a"]);
    let p = Peer::new();
    assert_eq!(p.ask(1, op::SUBSCRIBE, &q, 1, &[]), [item(b"a"), ok(1)]);
    q.close();
    assert_eq!(
        p.ask(2, op::UNSUBSCRIBE, &q, 0, &[]),
        [close_notice(&q), ok(2)]
    );
    assert_eq!(q.get(Wait::No), Ok(b"a".to_vec()));
    assert_eq!(q.get(Wait::No), Err(GetFail::Closed));
}

#[test]
fn join_parks_until_every_item_is_done() {
    let q = queue(None, &[b"a", b"b"]);
    let p = Peer::new();
    assert!(p.ask(9, op::JOIN, &q, 0, &[]).is_empty(), "parked");
    assert_eq!(p.ask(10, op::TASK_DONE, &q, 1, &[]), [ok(10)]);
    assert_eq!(q.unfinished(), 1);
    // The last one answers the join (a one-way task_done says nothing itself).
    assert_eq!(p.ask(0, op::TASK_DONE, &q, 1, &[]), [ok(9)]);
    assert_eq!(q.unfinished(), 0);
    assert_eq!(
        p.ask(11, op::JOIN, &q, 0, &[]),
        [ok(11)],
        "nothing to wait for"
    );
    // A local task_done answers a parked join too.
    q.put(b"c".to_vec(), Wait::No).expect("room");
    assert!(p.ask(12, op::JOIN, &q, 0, &[]).is_empty());
    assert!(q.task_done(1));
    assert_eq!(p.got_from(q.id), [ok(12)]);
}

#[test]
fn a_parked_join_can_be_cancelled() {
    let q = queue(None, &[b"a"]);
    let p = Peer::new();
    assert!(p.ask(3, op::JOIN, &q, 0, &[]).is_empty());
    assert_eq!(
        p.ask(0, op::CANCEL, &q, 3, &[]),
        [answer(3, status::CANCELLED)]
    );
    assert!(q.task_done(1));
    assert!(p.got_from(q.id).is_empty());
}

#[test]
fn too_many_task_done_is_refused_and_counts_nothing() {
    let q = queue(None, &[b"a"]);
    let p = Peer::new();
    assert_eq!(
        p.ask(3, op::TASK_DONE, &q, 2, &[]),
        [Got::Reply {
            req: 3,
            status: status::TOO_MANY_TASK_DONE,
            value: 1
        }]
    );
    assert_eq!(q.unfinished(), 1);
    assert!(!q.task_done(2));
    assert_eq!(q.unfinished(), 1);
    assert!(q.task_done(1));
    assert!(!q.task_done(1));
}

#[test]
fn a_disconnect_drops_parked_operations() {
    let q = queue(Some(1), &[b"a"]);
    let p = Peer::new();
    assert!(p.ask(1, op::PUT_WAIT, &q, 1, b"b").is_empty());
    assert!(p.ask(2, op::JOIN, &q, 0, &[]).is_empty());
    disconnect(p.link.id(), None);
    assert_eq!(take_all(&q), [b"a".to_vec()]);
    assert!(q.task_done(1));
    assert!(
        p.got_from(q.id).is_empty(),
        "nothing answered to a gone peer"
    );
    assert_eq!((q.len(), q.unfinished()), (0, 0));
}

#[test]
fn one_way_puts_len_and_bad_requests() {
    let q = queue(Some(1), &[]);
    let p = Peer::new();
    // One-way puts are accepted even past the capacity, and after a close.
    assert!(p.ask(0, op::PUT, &q, 0, b"a").is_empty());
    assert!(p.ask(0, op::PUT, &q, 0, b"b").is_empty());
    q.close();
    assert_eq!(p.got_from(q.id), [close_notice(&q)]);
    assert!(p.ask(0, op::PUT, &q, 0, b"c").is_empty());
    assert_eq!(
        p.ask(4, op::LEN, &q, 0, &[]),
        [Got::Reply {
            req: 4,
            status: status::OK,
            value: 3
        }]
    );
    assert_eq!(q.unfinished(), 3);
    assert_eq!(p.ask(5, 200, &q, 0, &[]), [answer(5, status::BAD_REQUEST)]);
}

#[test]
fn a_queue_that_is_gone_is_reported() {
    let q = queue(None, &[]);
    let id = q.id;
    drop(q);
    assert!(Core::lookup(id).is_none());
    let p = Peer::new();
    let ask = |req, op| {
        let msg = Message::Hub {
            req,
            op,
            queue: id,
            arg: 0,
            payload: b"x",
        };
        let mut dirty = Dirty::default();
        serve(&p.link, &msg, &mut dirty);
        dirty.flush();
        p.got_from(id)
    };
    assert_eq!(ask(3, op::LEN), [answer(3, status::NO_QUEUE)]);
    // A one-way put gets a notice naming the queue.
    assert_eq!(
        ask(0, op::PUT),
        [Got::Reply {
            req: 0,
            status: status::NO_QUEUE,
            value: id
        }]
    );
}

#[test]
fn a_link_that_ends_owing_confirmations_is_reported_to_parked_joins() {
    let q = joinable(&[b"a", b"b", b"c", b"d"]);
    let (p, j, k) = (Peer::new(), Peer::new(), Peer::new());
    assert_eq!(
        p.ask(1, op::SUBSCRIBE, &q, 3, &[]),
        [item(b"a"), item(b"b"), item(b"c"), ok(1)]
    );
    // a and b taken for good (d comes for the credit), a confirmed.
    assert_eq!(p.ask(0, op::ACK, &q, 2, &[]), [item(b"d")]);
    assert!(p.ask(0, op::TASK_DONE, &q, 1, &[]).is_empty());
    assert!(j.ask(9, op::JOIN, &q, 0, &[]).is_empty(), "parked");
    assert!(k.ask(4, op::JOIN, &q, 0, &[]).is_empty(), "parked");
    disconnect(p.link.id(), Some(77));
    // b is lost: every parked join hears it at once, though c and d are
    // still to do; they went back to the queue, unconfirmed.
    assert_eq!(j.got_from(q.id), [died(9, Some(77), 1)]);
    assert_eq!(k.got_from(q.id), [died(4, Some(77), 1)]);
    assert_eq!((q.len(), q.unfinished()), (2, 2));
    // Reported once: later joins wait for the rest as usual.
    assert_eq!(q.join(Wait::No), Ok(false));
    assert!(j.ask(10, op::JOIN, &q, 0, &[]).is_empty(), "parked");
    assert_eq!(take_all(&q), [b"c".to_vec(), b"d".to_vec()]);
    assert!(q.task_done(2));
    assert_eq!(j.got_from(q.id), [ok(10)]);
    assert_eq!(q.join(Wait::No), Ok(true));
    // 1 confirmed by p, 2 here, 1 reported: all four accounted for.
    assert!(!q.task_done(1), "the lost item cannot be confirmed on top");
}

#[test]
fn a_loss_nobody_waits_for_goes_to_the_next_join_only() {
    let q = joinable(&[b"a", b"b"]);
    let (p, r) = (Peer::new(), Peer::new());
    assert_eq!(
        p.ask(1, op::SUBSCRIBE, &q, 2, &[]),
        [item(b"a"), item(b"b"), ok(1)]
    );
    assert!(p.ask(0, op::ACK, &q, 2, &[]).is_empty());
    disconnect(p.link.id(), None);
    assert_eq!(q.unfinished(), 0, "nothing left to wait for");
    assert_eq!(
        q.join(Wait::No),
        Err(lost(None, 2)),
        "but the next join is told"
    );
    assert_eq!(q.join(Wait::No), Ok(true));
    assert_eq!(r.ask(3, op::JOIN, &q, 0, &[]), [ok(3)]);
    // A remote join can be the one told; then the local one is not.
    q.put(b"c".to_vec(), Wait::No).expect("room");
    let p = Peer::new();
    assert_eq!(p.ask(1, op::SUBSCRIBE, &q, 1, &[]), [item(b"c"), ok(1)]);
    assert!(p.ask(0, op::ACK, &q, 1, &[]).is_empty());
    disconnect(p.link.id(), Some(5));
    assert_eq!(r.ask(4, op::JOIN, &q, 0, &[]), [died(4, Some(5), 1)]);
    assert_eq!(q.join(Wait::No), Ok(true));
}

#[test]
fn a_waiting_local_join_is_told_of_a_loss_at_once() {
    let q = joinable(&[b"a", b"b"]);
    let p = Peer::new();
    assert_eq!(p.ask(1, op::SUBSCRIBE, &q, 1, &[]), [item(b"a"), ok(1)]);
    assert_eq!(p.ask(0, op::ACK, &q, 1, &[]), [item(b"b")]);
    let joiner = {
        let q = Arc::clone(&q);
        std::thread::spawn(move || {
            let start = Instant::now();
            (q.join(Wait::Until(start + DRAIN)), start.elapsed())
        })
    };
    // Whether the joiner waits already or comes after: it is the one told.
    disconnect(p.link.id(), Some(8));
    let (outcome, took) = joiner.join().expect("joiner");
    assert_eq!(outcome, Err(lost(Some(8), 1)));
    assert!(took < DRAIN, "the join ran out its time");
    assert_eq!(q.join(Wait::No), Ok(false), "b is still to do");
}

#[test]
fn several_losses_are_each_reported_once() {
    let q = joinable(&[b"a", b"b", b"c"]);
    let (p, r) = (Peer::new(), Peer::new());
    assert_eq!(p.ask(1, op::SUBSCRIBE, &q, 1, &[]), [item(b"a"), ok(1)]);
    assert_eq!(
        r.ask(1, op::SUBSCRIBE, &q, 2, &[]),
        [item(b"b"), item(b"c"), ok(1)]
    );
    assert!(p.ask(0, op::ACK, &q, 1, &[]).is_empty());
    assert!(r.ask(0, op::ACK, &q, 2, &[]).is_empty());
    disconnect(p.link.id(), Some(1));
    disconnect(r.link.id(), Some(2));
    assert_eq!(q.join(Wait::No), Err(lost(Some(1), 1)));
    assert_eq!(q.join(Wait::No), Err(lost(Some(2), 2)));
    assert_eq!(q.join(Wait::No), Ok(true));
}

#[test]
fn task_done_here_pays_a_workers_debt() {
    // A worker takes items and hands them back; the hub process confirms.
    let q = joinable(&[b"a", b"b", b"c"]);
    let p = Peer::new();
    assert_eq!(
        p.ask(1, op::SUBSCRIBE, &q, 2, &[]),
        [item(b"a"), item(b"b"), ok(1)]
    );
    assert_eq!(p.ask(0, op::ACK, &q, 2, &[]), [item(b"c")]);
    assert!(q.task_done(2));
    disconnect(p.link.id(), Some(3));
    assert_eq!(q.join(Wait::No), Ok(false), "no loss; c came back");
    // Items taken here are paid by confirmations made here first.
    let r = Peer::new();
    assert_eq!(r.ask(1, op::SUBSCRIBE, &q, 1, &[]), [item(b"c"), ok(1)]);
    assert!(r.ask(0, op::ACK, &q, 1, &[]).is_empty());
    // Letting go of the subscription keeps the debt.
    assert_eq!(r.ask(2, op::UNSUBSCRIBE, &q, 0, &[]), [ok(2)]);
    q.put(b"d".to_vec(), Wait::No).expect("room");
    assert_eq!(q.get(Wait::No), Ok(b"d".to_vec()));
    assert!(q.task_done(1));
    disconnect(r.link.id(), Some(4));
    assert_eq!(q.join(Wait::No), Err(lost(Some(4), 1)));
    assert_eq!(q.join(Wait::No), Ok(true));
}

#[test]
fn task_done_from_another_connection_pays_its_own_debt_first() {
    let q = joinable(&[b"a", b"b", b"c"]);
    let (p, r) = (Peer::new(), Peer::new());
    assert_eq!(
        p.ask(1, op::SUBSCRIBE, &q, 2, &[]),
        [item(b"a"), item(b"b"), ok(1)]
    );
    assert_eq!(r.ask(1, op::SUBSCRIBE, &q, 1, &[]), [item(b"c"), ok(1)]);
    assert!(p.ask(0, op::ACK, &q, 2, &[]).is_empty());
    assert!(r.ask(0, op::ACK, &q, 1, &[]).is_empty());
    // r confirms two: its own c, then one of p's.
    assert_eq!(r.ask(5, op::TASK_DONE, &q, 2, &[]), [ok(5)]);
    disconnect(r.link.id(), Some(2));
    assert_eq!(q.join(Wait::No), Ok(false), "r owed nothing");
    disconnect(p.link.id(), Some(1));
    assert_eq!(q.join(Wait::No), Err(lost(Some(1), 1)));
    assert_eq!(q.join(Wait::No), Ok(true));
}

#[test]
fn confirmations_ahead_of_takes_cover_a_later_debt() {
    let q = joinable(&[b"a", b"b"]);
    // Confirmed before anyone took them (task_done needs no get).
    assert!(q.task_done(2));
    let p = Peer::new();
    assert_eq!(
        p.ask(1, op::SUBSCRIBE, &q, 2, &[]),
        [item(b"a"), item(b"b"), ok(1)]
    );
    assert!(p.ask(0, op::ACK, &q, 2, &[]).is_empty());
    disconnect(p.link.id(), Some(1));
    assert_eq!(q.join(Wait::No), Ok(true), "nothing was lost");
}

#[test]
fn a_queue_that_is_not_joinable_reports_no_loss() {
    let q = queue(None, &[b"a"]);
    let p = Peer::new();
    assert_eq!(p.ask(1, op::SUBSCRIBE, &q, 1, &[]), [item(b"a"), ok(1)]);
    assert!(p.ask(0, op::ACK, &q, 1, &[]).is_empty());
    disconnect(p.link.id(), Some(1));
    assert_eq!(q.join(Wait::No), Ok(true));
}

#[test]
fn pins_and_holds_keep_a_queue_until_the_last_goes() {
    let q = queue(None, &[b"a"]);
    let id = q.id;
    let pin = q.pin(false).to_le_bytes(); // serialised, then the hub process drops its handle
    drop(q);
    let q = Core::lookup(id).expect("pinned");
    let (p, r) = (Peer::new(), Peer::new());
    assert_eq!(r.ask(0, op::HOLD, &q, 0, &1u64.to_le_bytes()), []); // another pin's receipt
    assert_eq!(r.ask(0, op::UNHOLD, &q, 0, &[]), []);
    drop(q);
    let q = Core::lookup(id).expect("still pinned: the receipt named another pin");
    assert_eq!(p.ask(0, op::HOLD, &q, 0, &pin), []); // takes the pin
    assert_eq!(r.ask(0, op::HOLD, &q, 0, &pin), []); // a second receipt
    assert_eq!(p.ask(0, op::UNHOLD, &q, 0, &[]), []);
    drop(q);
    let q = Core::lookup(id).expect("still held by r");
    assert_eq!(q.len(), 1);
    drop(q);
    disconnect(r.link.id(), None);
    assert!(Core::lookup(id).is_none(), "nothing holds the queue");
}

#[test]
fn a_pipe_direction_ends_when_its_last_writer_goes() {
    let q = Core::new(None);
    q.set_pipe(); // the sending end, here
    let pin = q.pin(true).to_le_bytes(); // serialised for a worker
    q.writer_dropped(); // the hub process's sending end dropped
    let p = Peer::new();
    assert_eq!(p.ask(0, op::HOLD, &q, 1, &pin), []); // the worker holds it
    assert_eq!(p.ask(0, op::PUT, &q, 0, b"x"), []);
    assert_eq!(q.get(Wait::No), Ok(b"x".to_vec()));
    assert_eq!(q.get(Wait::No), Err(GetFail::Empty), "writers remain");
    disconnect(p.link.id(), None);
    assert_eq!(q.get(Wait::No), Err(GetFail::Closed), "the pipe's end");
}

#[test]
fn hub_id_is_answered() {
    let p = Peer::new();
    let q = queue(None, &[]);
    assert_eq!(
        p.ask(4, op::HUB_ID, &q, 0, &[]),
        [Got::Reply {
            req: 4,
            status: status::OK,
            value: hub_id()
        }]
    );
}

fn recall_notice(q: &Core) -> Got {
    Got::Reply {
        req: 0,
        status: status::RECALL,
        value: q.id,
    }
}

#[test]
fn a_want_recalls_items_buffered_by_an_idle_subscriber() {
    let q = queue(None, &[]);
    let (p, r) = (Peer::new(), Peer::new());
    p.subscribe(&q, 2);
    q.put(b"a".to_vec(), Wait::No).expect("room");
    q.put(b"b".to_vec(), Wait::No).expect("room");
    assert_eq!(p.got_from(q.id), [item(b"a"), item(b"b")]);
    r.subscribe(&q, 1);
    // r's getter waits: p, which holds both unread, is asked back.
    r.want_recalls(&q, &p);
    // Nothing is delivered to p while the recall is unanswered.
    q.put(b"c".to_vec(), Wait::No).expect("room");
    assert_eq!(p.got_from(q.id), []);
    assert_eq!(
        r.got_from(q.id),
        [item(b"c")],
        "the wanting subscriber first"
    );
    // p has no getter: both come back, in order, ahead of the rest.
    assert_eq!(p.ask(0, op::RETURN, &q, 2, &[]), []);
    assert_eq!(take_all(&q), [b"a".to_vec(), b"b".to_vec()]);
    // p gave up its credit: nothing comes to it until it subscribes again.
    q.put(b"d".to_vec(), Wait::No).expect("room");
    assert_eq!(p.got_from(q.id), []);
    assert_eq!(p.ask(2, op::SUBSCRIBE, &q, 1, &[]), [item(b"d"), ok(2)]);
}

/// The interleaving that made `two_producers_two_consumers_exactly_once`
/// hang (about 1 run in 4): items came back from a recall behind a
/// sentinel already delivered to the other consumer, so both consumers
/// took a sentinel and stopped while older items were still queued.
///
/// r holds x1 and x2 (prefetched); p's getter waits (`WANT`), so r is
/// asked back. Meanwhile the master puts the two sentinels: both go to p.
/// r, busy between two gets, answers `RETURN`. Before, the hub then
/// handed x1 to p behind n2 as soon as p acknowledged n1; p stopped at
/// n1 and its unsubscribe put n2 back *in front of* x1 and x2, so r
/// took n2 and stopped too.
#[test]
fn items_a_recall_brings_back_never_go_behind_newer_ones() {
    let q = queue(None, &[]);
    let (p, r) = (Peer::new(), Peer::new());
    r.subscribe(&q, 2);
    q.put(b"x1".to_vec(), Wait::No).expect("room");
    q.put(b"x2".to_vec(), Wait::No).expect("room");
    assert_eq!(r.got_from(q.id), [item(b"x1"), item(b"x2")]);
    p.subscribe(&q, 2);
    p.want_recalls(&q, &r);
    q.put(b"n1".to_vec(), Wait::No).expect("room");
    q.put(b"n2".to_vec(), Wait::No).expect("room");
    assert_eq!(p.got_from(q.id), [item(b"n1"), item(b"n2")]);
    assert_eq!(r.ask(0, op::RETURN, &q, 2, &[]), []);
    // p takes n1 and stops: it still holds n2, so x1 does not go to it.
    assert_eq!(p.ask(0, op::ACK, &q, 1, &[]), [], "x1 behind n2");
    assert_eq!(p.ask(2, op::UNSUBSCRIBE, &q, 0, &[]), [ok(2)]);
    // r's getter comes back: it gets the items in the order they were put.
    assert_eq!(
        r.ask(2, op::SUBSCRIBE, &q, 3, &[]),
        [item(b"x1"), item(b"x2"), item(b"n2"), ok(2)]
    );
}

/// A delivery never overtakes an item queued before it, nor an item a
/// subscriber holds newer than it: a subscriber with credit that holds a
/// newer item waits until it acknowledges it; another takes the item.
#[test]
fn an_old_item_goes_to_a_subscriber_holding_nothing_newer() {
    let q = queue(None, &[]);
    let (p, r) = (Peer::new(), Peer::new());
    r.subscribe(&q, 1);
    q.put(b"a".to_vec(), Wait::No).expect("room");
    assert_eq!(r.got_from(q.id), [item(b"a")]);
    p.subscribe(&q, 3);
    p.want_recalls(&q, &r);
    // A put racing the recall goes to the waiting getter.
    q.put(b"b".to_vec(), Wait::No).expect("room");
    assert_eq!(p.got_from(q.id), [item(b"b")]);
    // r's getter was about to wait: it keeps nothing... and gives `a` back.
    assert_eq!(r.ask(0, op::RETURN, &q, 1, &[]), []);
    // p has credit but holds b: `a` waits for it, and so does c (no
    // overtaking in the queue).
    q.put(b"c".to_vec(), Wait::No).expect("room");
    assert_eq!(p.got_from(q.id), []);
    assert_eq!(p.ask(0, op::ACK, &q, 1, &[]), [item(b"a"), item(b"c")]);
}

/// Items that come back from several subscribers return to their places
/// in the queue, whatever the order they come back in.
#[test]
fn unsubscribes_in_any_order_requeue_in_put_order() {
    let q = queue(None, &[]);
    let (p, r) = (Peer::new(), Peer::new());
    p.subscribe(&q, 1);
    r.subscribe(&q, 1);
    for i in [b"a", b"b", b"c"] {
        q.put(i.to_vec(), Wait::No).expect("room");
    }
    assert_eq!(p.got_from(q.id), [item(b"a")]);
    assert_eq!(r.got_from(q.id), [item(b"b")]);
    assert_eq!(p.ask(2, op::UNSUBSCRIBE, &q, 0, &[]), [ok(2)]);
    assert_eq!(r.ask(2, op::UNSUBSCRIBE, &q, 0, &[]), [ok(2)]);
    assert_eq!(take_all(&q), [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
}

/// A `WANT` whose getter gave up before an item reached its process (a
/// `get_timeout`) does not shield that item from a recall: another
/// process's getter that waits gets it.
#[test]
fn a_stale_want_does_not_strand_an_item() {
    let q = queue(None, &[]);
    let (p, r) = (Peer::new(), Peer::new());
    p.subscribe(&q, 1);
    q.put(b"a".to_vec(), Wait::No).expect("room");
    assert_eq!(p.got_from(q.id), [item(b"a")]);
    // p's WANT was sent before `a` arrived; its getter has left since.
    assert_eq!(p.ask(0, op::WANT, &q, 0, &[]), []);
    r.subscribe(&q, 1);
    assert_eq!(r.ask(0, op::WANT, &q, 0, &[]), []);
    assert_eq!(p.got_from(q.id), [recall_notice(&q)], "p is asked back");
    assert_eq!(p.ask(0, op::RETURN, &q, 1, &[]), []);
    assert_eq!(r.got_from(q.id), [item(b"a")]);
}

/// A process whose getter was about to take an item answers a recall
/// `KEEP`, and is not asked again before a take; if that getter leaves
/// without the item (its time ran out), its process says so (`ACK` of
/// nothing) and the item is recalled for the getter waiting elsewhere.
#[test]
fn a_kept_item_whose_getter_left_is_recalled() {
    let q = queue(None, &[]);
    let (p, r) = (Peer::new(), Peer::new());
    p.subscribe(&q, 1);
    q.put(b"a".to_vec(), Wait::No).expect("room");
    assert_eq!(p.got_from(q.id), [item(b"a")]);
    r.subscribe(&q, 1);
    r.want_recalls(&q, &p);
    assert_eq!(
        p.ask(0, op::KEEP, &q, 0, &[]),
        [],
        "not asked again at once"
    );
    assert_eq!(p.ask(0, op::ACK, &q, 0, &[]), [recall_notice(&q)]);
    assert_eq!(p.ask(0, op::RETURN, &q, 1, &[]), []);
    assert_eq!(r.got_from(q.id), [item(b"a")]);
}

/// A `KEEP` that races a put: the put went to the waiting getter
/// meanwhile; what comes back is older, so it goes to the process that
/// holds nothing newer (here the one that kept the item before it), never
/// behind the put.
#[test]
fn a_keep_racing_a_put_keeps_put_order() {
    let q = queue(None, &[]);
    let (p, r) = (Peer::new(), Peer::new());
    p.subscribe(&q, 2);
    q.put(b"a".to_vec(), Wait::No).expect("room");
    q.put(b"b".to_vec(), Wait::No).expect("room");
    assert_eq!(p.got_from(q.id), [item(b"a"), item(b"b")]);
    r.subscribe(&q, 1);
    r.want_recalls(&q, &p);
    q.put(b"c".to_vec(), Wait::No).expect("room");
    assert_eq!(r.got_from(q.id), [item(b"c")]);
    // p's getter takes `a`; `b` comes back, and goes to p again, after `a`.
    assert_eq!(p.ask(0, op::KEEP, &q, 1, &[]), [item(b"b")]);
    assert_eq!(r.got_from(q.id), []);
    assert_eq!(q.len(), 3);
}

/// A process that ends while a recall to it is unanswered: what it held
/// comes back in order, to the getter that waits.
#[test]
fn a_process_that_ends_during_a_recall_gives_everything_back() {
    let q = queue(None, &[]);
    let (p, r) = (Peer::new(), Peer::new());
    p.subscribe(&q, 2);
    q.put(b"a".to_vec(), Wait::No).expect("room");
    q.put(b"b".to_vec(), Wait::No).expect("room");
    assert_eq!(p.got_from(q.id), [item(b"a"), item(b"b")]);
    r.subscribe(&q, 2);
    r.want_recalls(&q, &p);
    disconnect(p.link.id(), None);
    assert_eq!(r.got_from(q.id), [item(b"a"), item(b"b")]);
    // A late answer from the gone connection changes nothing.
    assert_eq!(p.ask(0, op::RETURN, &q, 2, &[]), []);
    assert_eq!(q.len(), 2);
}

#[test]
fn shutdown_immediate_drops_delivered_items_and_tells_users() {
    let q = joinable(&[]);
    let p = Peer::new();
    p.subscribe(&q, 1);
    q.put(b"a".to_vec(), Wait::No).expect("room");
    q.put(b"b".to_vec(), Wait::No).expect("room");
    assert_eq!(p.got_from(q.id), [item(b"a")]);
    assert_eq!(
        p.ask(2, op::SHUTDOWN, &q, 1, &[]),
        [
            Got::Reply {
                req: 0,
                status: status::SHUT_DOWN,
                value: q.id
            },
            close_notice(&q),
            Got::End,
            ok(2)
        ]
    );
    assert_eq!(q.unfinished(), 0, "both dropped");
    assert_eq!(q.len(), 0);
    assert_eq!(
        p.ask(3, op::PUT_WAIT, &q, 0, b"c"),
        [answer(3, status::SHUT_DOWN)]
    );
}
