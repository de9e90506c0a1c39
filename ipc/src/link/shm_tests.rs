//! The shared-memory transport between two links in this process, over
//! real socketpairs and a real descriptor channel.

use std::sync::Arc;

use super::*;
use crate::endpoint::ReadHalf;
use crate::frame::{DEFAULT_MAX_FRAME_LEN, FrameReader};
use crate::shm::Segment;
use crate::shm::transport::{MAX_SEGMENTS, MAX_SHARED};

/// One side of a connection: the link it writes and the reader of what the
/// other side writes.
struct Side {
    link: Arc<Link>,
    reader: FrameReader<ReadHalf>,
}

impl Side {
    fn read(&mut self) -> Result<Vec<u8>, IpcError> {
        let mut buf = Vec::new();
        assert!(self.link.read_frame(&mut self.reader, &mut buf)?, "eof");
        Ok(buf)
    }
}

fn connected(threshold: usize) -> (Side, Side) {
    let (r_b, w_a) = crate::sys::test_pair().unwrap(); // a writes, b reads
    let (r_a, w_b) = crate::sys::test_pair().unwrap(); // b writes, a reads
    let (ch_a, ch_b) = crate::sys::test_fd_channels().unwrap();
    let side = |w, r, ch| {
        let link = Link::new(w, DEFAULT_MAX_FRAME_LEN).unwrap();
        link.attach_shm(ShmTransport::for_test(ch, threshold));
        Side {
            link,
            reader: FrameReader::new(r, DEFAULT_MAX_FRAME_LEN),
        }
    };
    (side(w_a, r_a, ch_a), side(w_b, r_b, ch_b))
}

fn run(payload: &[u8]) -> Message<'_> {
    Message::Run {
        id: 7,
        task: 1,
        count: 1,
        payload,
    }
}

fn payload_of(body: &[u8]) -> Vec<u8> {
    match Message::decode(body).unwrap() {
        Message::Run { payload, .. } => payload.to_vec(),
        other => panic!("not a run: {other:?}"),
    }
}

/// Bodies around the threshold arrive exactly, whichever way they
/// travel, and a freed segment is reused rather than a new one made.
#[test]
fn bodies_around_the_threshold_round_trip_and_segments_are_reused() {
    let threshold = 4096;
    let (mut a, mut b) = connected(threshold);
    let overhead = crate::proto::RUN_OVERHEAD;
    for len in [
        0,
        1,
        threshold - overhead - 1,
        threshold - overhead,
        threshold - overhead + 1,
        3 << 20,
        5,
        3 << 20,
    ] {
        let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        a.link.send(&run(&payload)).unwrap();
        assert_eq!(payload_of(&b.read().unwrap()), payload, "len {len}");
        // The FREE reaches `a` before this heartbeat does.
        b.link.send(&Message::Heartbeat).unwrap();
        assert_eq!(a.read().unwrap(), [8]);
    }
    let shm = a.link.shm().unwrap();
    // One segment for the small bodies, one for the 3 MiB ones.
    assert_eq!(shm.segments_made(), 2);
}

/// Many bodies in flight at once: every one arrives, in order, through
/// segments while some are free and over the socket when all are busy.
#[test]
fn many_bodies_in_flight_arrive_in_order() {
    let (a, mut b) = connected(1024);
    let n = 3 * MAX_SEGMENTS;
    for i in 0..n {
        a.link.send(&run(&vec![i as u8; 100_000])).unwrap();
    }
    for i in 0..n {
        assert_eq!(payload_of(&b.read().unwrap()), vec![i as u8; 100_000]);
    }
    assert_eq!(a.link.shm().unwrap().segments_made(), MAX_SEGMENTS);
}

/// A length read from a frame that points outside its segment is a typed
/// error, not an out-of-bounds read.
#[test]
fn a_body_outside_its_segment_is_malformed() {
    let (a, mut b) = connected(1024);
    a.link.send(&run(&[1; 5000])).unwrap();
    b.read().unwrap();
    // Segment 1 exists (1 MiB); name a body longer than it.
    a.link
        .send(&Message::Shm {
            seg: 1,
            new: false,
            seg_len: 1 << 20,
            body_at: 0,
            body_len: (1 << 20) + 1,
        })
        .unwrap();
    let err = b.read().unwrap_err();
    assert!(matches!(err, IpcError::Malformed(_)), "{err}");
}

#[test]
fn an_unknown_segment_is_malformed() {
    let (a, mut b) = connected(1024);
    a.link
        .send(&Message::Shm {
            seg: 99,
            new: false,
            seg_len: 1 << 20,
            body_at: 0,
            body_len: 10,
        })
        .unwrap();
    let err = b.read().unwrap_err();
    assert!(matches!(err, IpcError::Malformed(_)), "{err}");
}

/// A segment announced longer than the object sent is refused when it is
/// mapped (`SegmentError::TooSmall` inside the I/O error).
#[test]
fn a_segment_announced_longer_than_its_object_is_refused() {
    let (a, mut b) = connected(1024);
    let seg = Segment::new(4096).unwrap();
    a.link
        .shm()
        .unwrap()
        .send_handle_for_test(42, &seg.try_clone_handle().unwrap())
        .unwrap();
    a.link
        .send(&Message::Shm {
            seg: 42,
            new: true,
            seg_len: 1 << 30,
            body_at: 0,
            body_len: 10,
        })
        .unwrap();
    let err = b.read().unwrap_err();
    let IpcError::Io(e) = &err else {
        panic!("{err}");
    };
    let inner = e
        .get_ref()
        .and_then(|e| e.downcast_ref::<crate::shm::SegmentError>());
    assert!(
        matches!(inner, Some(crate::shm::SegmentError::TooSmall { .. })),
        "{err}"
    );
}

/// A segment frame on a link without the transport is refused.
#[test]
fn a_segment_frame_without_the_transport_is_malformed() {
    let (r, w) = crate::sys::test_pair().unwrap();
    let writer = Link::new(w, DEFAULT_MAX_FRAME_LEN).unwrap();
    let (_, w2) = crate::sys::test_pair().unwrap();
    let reader_link = Link::new(w2, DEFAULT_MAX_FRAME_LEN).unwrap();
    writer.send(&Message::Free { seg: 1 }).unwrap();
    let mut reader = FrameReader::new(r, DEFAULT_MAX_FRAME_LEN);
    let err = reader_link
        .read_frame(&mut reader, &mut Vec::new())
        .unwrap_err();
    assert!(matches!(err, IpcError::Malformed(_)), "{err}");
}

/// A body read with a lease is decoded in place; its segment stays busy
/// (the next body goes to another one) until the lease is dropped, and is
/// reused after.
#[test]
fn a_leased_body_decodes_in_place_and_frees_its_segment_when_dropped() {
    let (mut a, mut b) = connected(1024);
    let item = vec![9u8; 200_000];
    let mut payload = Vec::new();
    crate::codec::encode_into(&(7u64, item.clone()), &mut payload).unwrap();
    a.link.send(&run(&payload)).unwrap();
    let mut head = Vec::new();
    let lease = match b.link.read_leased(&mut b.reader, &mut head, 64).unwrap() {
        Incoming::Leased(lease) => lease,
        other => panic!("not leased: {other:?}"),
    };
    assert_eq!(head.len(), 64, "only the head is copied");
    let Message::Run { payload: p, .. } = Message::decode(&head).unwrap() else {
        panic!("not a run");
    };
    let at = head.len() - p.len();
    assert_eq!(lease.len(), at + payload.len());
    let ((n, back), used): ((u64, Vec<u8>), usize) = lease.decode_at(at).unwrap();
    assert_eq!((n, back), (7, item));
    assert_eq!(at + used, lease.len());
    // Held: the next body needs a second segment.
    a.link.send(&run(&payload)).unwrap();
    assert_eq!(payload_of(&b.read().unwrap()), payload);
    a.link.send(&Message::Heartbeat).unwrap(); // (b's FREE reaches a below)
    b.link.send(&Message::Heartbeat).unwrap();
    assert_eq!(a.read().unwrap(), [8]);
    assert_eq!(a.link.shm().unwrap().segments_made(), 2);
    // Dropped: FREE goes out, and both segments are free for the next two.
    drop(lease);
    b.link.send(&Message::Heartbeat).unwrap();
    assert_eq!(a.read().unwrap(), [8]);
    a.link.send(&run(&payload)).unwrap();
    let mut whole = Vec::new();
    match b.link.read_leased(&mut b.reader, &mut head, 64).unwrap() {
        // Heartbeat sent by a above, then the run.
        Incoming::Buffered => assert_eq!(head, [8]),
        other => panic!("expected the heartbeat: {other:?}"),
    }
    let Incoming::Leased(second) = b.link.read_leased(&mut b.reader, &mut head, 64).unwrap() else {
        panic!("not leased")
    };
    second.read_into(&mut whole).unwrap();
    assert_eq!(payload_of(&whole), payload);
    assert_eq!(a.link.shm().unwrap().segments_made(), 2);
}

/// A leased body whose bytes are corrupt (a length reaching past the
/// body) decodes to an error, not to a read outside it.
#[test]
fn a_corrupt_leased_body_is_a_decoding_error() {
    let (a, mut b) = connected(1024);
    let mut payload = Vec::new();
    // A byte string announcing far more than the frame carries.
    crate::codec::encode_into(&(1u64 << 40), &mut payload).unwrap();
    payload.resize(5000, 0);
    a.link.send(&run(&payload)).unwrap();
    let mut head = Vec::new();
    let Incoming::Leased(lease) = b.link.read_leased(&mut b.reader, &mut head, 64).unwrap() else {
        panic!("not leased")
    };
    let at = lease.len() - payload.len();
    let err = lease.decode_at::<Vec<u8>>(at).unwrap_err();
    assert!(matches!(err, IpcError::Decode(_)), "{err}");
    let err = lease.decode_at::<Vec<u8>>(usize::MAX).unwrap_err();
    assert!(matches!(err, IpcError::Decode(_)), "{err}");
}

/// Past `MAX_LEASES` leases out, bodies are copied out whole (and their
/// segments freed at once): a slow decoder does not make its sender
/// create a segment per body in flight.
#[test]
fn past_the_lease_limit_bodies_are_copied_out() {
    let (a, mut b) = connected(1024);
    let payload = vec![3u8; 100_000];
    let n = super::MAX_LEASES + 2;
    for _ in 0..n {
        a.link.send(&run(&payload)).unwrap();
    }
    let mut held = Vec::new();
    for i in 0..n {
        let mut buf = Vec::new();
        match b.link.read_leased(&mut b.reader, &mut buf, 64).unwrap() {
            Incoming::Leased(lease) if i < super::MAX_LEASES => held.push(lease),
            Incoming::Buffered if i >= super::MAX_LEASES => {
                assert_eq!(payload_of(&buf), payload);
            }
            other => panic!("body {i}: {other:?}"),
        }
    }
}

/// A shared body goes out on a link without a copy into the link's own
/// segments: its segment is named (its descriptor sent once per peer),
/// the head written in front of the payload; sent again, on the same link
/// or another, it reads the same; past `MAX_SHARED` the oldest is retired
/// and bodies keep arriving.
#[test]
fn shared_bodies_travel_on_any_link_and_the_oldest_are_retired() {
    use crate::shm::body::{BodyPool, SharedBody};
    let pool = BodyPool::new(64 << 20);
    let (a, mut b) = connected(1024);
    let (c, mut d) = connected(1024);
    let mut body = SharedBody::with_capacity(&pool, 100_000).unwrap();
    let payload: Vec<u8> = (0..100_000).map(|i| (i % 241) as u8).collect();
    body.extend_from_slice(&payload).unwrap();
    let head = crate::proto::run_head(7, 1, 1);
    for on_c in [false, false, true] {
        let (link, side) = if on_c {
            (&c.link, &mut d)
        } else {
            (&a.link, &mut b)
        };
        assert!(link.write_shared(&head, &body).unwrap());
        link.flush().unwrap();
        assert_eq!(payload_of(&side.read().unwrap()), payload);
    }
    assert_eq!(
        a.link.shm().unwrap().segments_made(),
        0,
        "no copy into a link segment"
    );
    // More bodies than a peer keeps mapped: each still arrives whole.
    let bodies: Vec<SharedBody> = (0..MAX_SHARED as u8 + 2)
        .map(|i| {
            let mut body = SharedBody::with_capacity(&pool, 10).unwrap();
            body.extend_from_slice(&[i; 10]).unwrap();
            body
        })
        .collect();
    for round in 0..2 {
        for (i, body) in bodies.iter().enumerate() {
            assert!(a.link.write_shared(&head, body).unwrap());
            a.link.flush().unwrap();
            assert_eq!(
                payload_of(&b.read().unwrap()),
                [i as u8; 10],
                "round {round}"
            );
        }
    }
}

/// A body said to start or end outside its segment is a typed error.
#[test]
fn a_body_placed_outside_its_segment_is_malformed() {
    let (a, mut b) = connected(1024);
    a.link.send(&run(&[1; 5000])).unwrap();
    b.read().unwrap();
    // Segment 1 exists (1 MiB).
    for (body_at, body_len) in [((1 << 20) - 5, 10), (u64::MAX, 1), (u64::MAX - 3, 8)] {
        a.link
            .send(&Message::Shm {
                seg: 1,
                new: false,
                seg_len: 1 << 20,
                body_at,
                body_len,
            })
            .unwrap();
        let err = b.read().unwrap_err();
        assert!(matches!(err, IpcError::Malformed(_)), "{err}");
    }
}

/// A body lent to a link (a worker's results) stays with the link until
/// the peer is done with it: a lease's drop, or a body copied out, answers
/// `FREE`, and the segment goes back to its pool, to carry the next body
/// without a new segment. A pool that keeps bodies (a master's inputs)
/// gets no `FREE`.
#[test]
fn lent_bodies_go_back_to_their_pool_on_the_peers_free() {
    use crate::proto::{RESULT_OVERHEAD, result_head};
    use crate::shm::body::{BodyPool, SharedBody};
    let pool = BodyPool::lending(64 << 20, 2);
    let (mut a, mut b) = connected(1024);
    let payload: Vec<u8> = (0..300_000).map(|i| (i % 239) as u8).collect();
    let lend = |a: &Side| {
        let mut body = SharedBody::with_capacity(&pool, payload.len()).unwrap();
        body.extend_from_slice(&payload).unwrap();
        let id = body.id();
        let head = result_head(true, 7, 1, 5);
        assert!(a.link.lend_shared(&head, body).unwrap().is_none());
        a.link.flush().unwrap();
        id
    };
    let first = lend(&a);
    assert_eq!(a.link.shm().unwrap().lent(), 1);
    assert_eq!(pool.free_bytes(), 0);
    // Read in place: held until the lease drops.
    let mut head = Vec::new();
    let Incoming::Leased(lease) = b.link.read_leased(&mut b.reader, &mut head, 64).unwrap() else {
        panic!("not leased")
    };
    let Message::Done {
        id: 7,
        count: 1,
        elapsed_ns: 5,
        ..
    } = Message::decode(&head).unwrap()
    else {
        panic!("not the done frame: {head:?}")
    };
    let mut whole = Vec::new();
    lease.read_into(&mut whole).unwrap();
    assert_eq!(whole[RESULT_OVERHEAD..], payload[..]);
    // Another body while the first is held: a second segment.
    let second = lend(&a);
    assert_ne!(first, second);
    b.read().unwrap();
    // Copied out: freed at once; the lease's drop frees the first.
    drop(lease);
    b.link.send(&Message::Heartbeat).unwrap();
    assert_eq!(a.read().unwrap(), [8], "FREEs handled on the way");
    assert_eq!(a.link.shm().unwrap().lent(), 0);
    assert!(pool.free_bytes() > 0);
    // Both segments are back: the next body reuses one, no third is made
    // (the pool makes at most two).
    let third = lend(&a);
    assert!(third == first || third == second);
    assert_eq!(a.link.shm().unwrap().segments_made(), 0, "no link segment");
    b.read().unwrap();
    b.link.send(&Message::Heartbeat).unwrap();
    assert_eq!(a.read().unwrap(), [8]);
    assert_eq!(a.link.shm().unwrap().lent(), 0);
    // A keeping pool's body read in place: no FREE comes back for it.
    let keep = BodyPool::new(64 << 20);
    let mut body = SharedBody::with_capacity(&keep, 10).unwrap();
    body.extend_from_slice(&[1; 10]).unwrap();
    assert!(
        a.link
            .write_shared(&crate::proto::run_head(1, 1, 1), &body)
            .unwrap()
    );
    a.link.flush().unwrap();
    let Incoming::Leased(kept) = b.link.read_leased(&mut b.reader, &mut head, 64).unwrap() else {
        panic!("not leased")
    };
    drop(kept);
    b.link.send(&Message::Heartbeat).unwrap();
    // Read past the link: the next frame is the heartbeat, no `FREE`.
    let mut raw = Vec::new();
    assert!(a.reader.read_frame(&mut raw).unwrap());
    assert_eq!(raw, [8], "no FREE before the heartbeat");
}

/// A peer's `FREE` naming no body lent (an unknown id, one already freed,
/// a link segment that is not busy) is ignored: no error, and the bodies
/// still lent stay lent until their own `FREE`.
#[test]
fn stray_frees_neither_fail_nor_release_a_lent_body() {
    use crate::proto::result_head;
    use crate::shm::body::{BodyPool, SharedBody};
    let pool = BodyPool::lending(64 << 20, 2);
    let (mut a, b) = connected(1024);
    let mut body = SharedBody::with_capacity(&pool, 10).unwrap();
    body.extend_from_slice(&[3; 10]).unwrap();
    let id = body.id();
    assert!(
        a.link
            .lend_shared(&result_head(true, 1, 1, 0), body)
            .unwrap()
            .is_none()
    );
    a.link.flush().unwrap();
    for seg in [0, 1, u64::MAX, id ^ 1, id & !crate::shm::body::LENT_ID] {
        b.link.send(&Message::Free { seg }).unwrap();
    }
    b.link.send(&Message::Heartbeat).unwrap();
    assert_eq!(a.read().unwrap(), [8]);
    assert_eq!(a.link.shm().unwrap().lent(), 1, "a stray FREE released it");
    // The real one, then the same again: the second finds nothing.
    b.link.send(&Message::Free { seg: id }).unwrap();
    b.link.send(&Message::Free { seg: id }).unwrap();
    b.link.send(&Message::Heartbeat).unwrap();
    assert_eq!(a.read().unwrap(), [8]);
    assert_eq!(a.link.shm().unwrap().lent(), 0);
    assert!(pool.free_bytes() > 0);
}

/// A lent segment that its pool does not keep once the peer frees it (the
/// pool is full of free segments, or the segment is larger than it keeps)
/// is retired from the peer at once: nothing is left to pin its memory
/// there until newer segments push it out.
#[test]
fn a_lent_segment_its_pool_drops_is_retired_from_the_peer() {
    use crate::proto::result_head;
    use crate::shm::body::{BodyPool, SharedBody};
    // Keeps no free segment: each one goes once freed.
    let pool = BodyPool::lending(0, 2);
    let (mut a, mut b) = connected(1024);
    for round in 0..4 {
        let mut body = SharedBody::with_capacity(&pool, 10).unwrap();
        body.extend_from_slice(&[round; 10]).unwrap();
        assert!(
            a.link
                .lend_shared(&result_head(true, 1, 1, 0), body)
                .unwrap()
                .is_none()
        );
        a.link.flush().unwrap();
        // Copied out: answered FREE at once.
        b.read().unwrap();
        b.link.send(&Message::Heartbeat).unwrap();
        assert_eq!(a.read().unwrap(), [8]);
        assert_eq!(a.link.shm().unwrap().lent(), 0);
        assert_eq!(pool.free_bytes(), 0);
        a.link.send(&Message::Heartbeat).unwrap();
        assert_eq!(b.read().unwrap(), [8]);
        assert_eq!(b.link.shm().unwrap().mapped(), 0, "round {round}");
    }
}
