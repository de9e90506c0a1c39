//! The outbox and its writer thread, over a real socketpair whose reading
//! end the test controls.

use std::io::Read;
use std::time::{Duration, Instant};

use super::*;
use crate::frame::{DEFAULT_MAX_FRAME_LEN, FrameReader};

fn pair() -> (Arc<Link>, crate::endpoint::ReadHalf) {
    // A worker-less connection: the test binary plays the peer.
    let (r, w) = crate::sys::test_pair().expect("socketpair");
    (
        Link::new(w, DEFAULT_MAX_FRAME_LEN).expect("writer thread"),
        r,
    )
}

fn run(payload: &[u8]) -> Message<'_> {
    Message::Run {
        id: 1,
        task: 0,
        count: 1,
        payload,
    }
}

/// A peer that reads nothing cannot make a writer block: frames far larger
/// than the socket's buffer are accepted at once.
#[test]
fn writes_never_block_on_a_peer_that_does_not_read() {
    let (link, mut r) = pair();
    let big = vec![7u8; 8 << 20];
    let t0 = Instant::now();
    for _ in 0..4 {
        link.send(&run(&big)).expect("send");
    }
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "send blocked for {:?}",
        t0.elapsed()
    );
    // Everything arrives, in order, once the peer reads.
    let reader = std::thread::spawn(move || {
        let mut fr = FrameReader::new(&mut r, DEFAULT_MAX_FRAME_LEN);
        let mut frame = Vec::new();
        for _ in 0..4 {
            assert!(fr.read_frame(&mut frame).expect("frame"));
            match Message::decode(&frame).expect("decode") {
                Message::Run { payload, .. } => assert_eq!(payload.len(), 8 << 20),
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    assert!(
        link.drain(Some(Instant::now() + Duration::from_secs(20)))
            .expect("drain")
    );
    reader.join().expect("reader");
}

/// `send_bounded` gives up on room at its deadline, appending nothing.
#[test]
fn bounded_send_times_out_without_appending() {
    let (link, mut r) = pair();
    let big = vec![1u8; 2 * OUTBOX_LIMIT];
    let soon = || Some(Instant::now() + Duration::from_millis(100));
    // The first frame is accepted into the empty outbox (the kernel takes part of it).
    assert!(link.send_bounded(&run(&big), soon()).expect("first"));
    // The outbox is now over the limit: the next is refused.
    assert!(!link.send_bounded(&run(b"x"), soon()).expect("second"));
    let appended = link.inner.lock().appended;
    let mut sink = Vec::new();
    let want = usize::try_from(appended).expect("fits");
    let mut got = 0;
    let mut buf = vec![0u8; 1 << 16];
    while got < want {
        let n = r.read(&mut buf).expect("read");
        assert!(n > 0, "early EOF");
        got += n;
        sink.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, want, "only the accepted frame was sent");
}

/// A peer that goes away breaks the link: later writes fail, waiters wake.
#[test]
fn a_closed_peer_breaks_the_link() {
    let (link, r) = pair();
    drop(r);
    let deadline = Some(Instant::now() + Duration::from_secs(10));
    let mut failed = false;
    for _ in 0..100 {
        if link.send(&run(&[0u8; 1024])).is_err() {
            failed = true;
            break;
        }
        if link.drain(deadline).is_err() {
            failed = true;
            break;
        }
    }
    assert!(failed, "writes to a closed peer kept succeeding");
}

/// With a heartbeat, a quiet link sends heartbeats.
#[test]
fn quiet_links_send_heartbeats() {
    let (link, mut r) = pair();
    link.set_heartbeat(Some(Duration::from_millis(20)));
    let mut fr = FrameReader::new(&mut r, DEFAULT_MAX_FRAME_LEN);
    let mut frame = Vec::new();
    for _ in 0..3 {
        assert!(fr.read_frame(&mut frame).expect("frame"));
        assert_eq!(Message::decode(&frame).expect("decode"), Message::Heartbeat);
    }
}
