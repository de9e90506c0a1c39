//! Thread tests of the stream over heap memory. A process's death is
//! simulated by forgetting its `Stream` mid-operation (its lease stays
//! held, exactly as after a SIGKILL) and calling `clear_leases`; the
//! fork-and-kill tests do it for real (`ipc/tests/stream_crash.rs`, with
//! thousands of deaths, and `tests/pipe_lane.rs` through pipes).

use std::alloc::Layout;
use std::collections::HashSet;
use std::sync::atomic::Ordering::SeqCst;
use std::thread;
use std::time::{Duration, Instant};

use super::*;

/// A stream over its own heap memory (freed after every `Stream`).
struct Heap {
    stream: Stream,
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: only the `Stream`s over it touch the memory.
unsafe impl Send for Heap {}
// SAFETY: as above.
unsafe impl Sync for Heap {}

impl Heap {
    fn new(capacity: usize) -> Self {
        Self::with(capacity, false)
    }

    fn with(capacity: usize, counted: bool) -> Self {
        let layout = Layout::from_size_align(Stream::bytes_needed(capacity).unwrap(), 64).unwrap();
        // SAFETY: non-zero size.
        let ptr = NonNull::new(unsafe { std::alloc::alloc(layout) }).expect("allocation");
        // SAFETY: fresh, aligned memory, freed in `drop` after every
        // `Stream` over it (attached ones borrow `self`).
        let stream = unsafe { Stream::init_with(ptr, layout.size(), capacity, counted) }.unwrap();
        Self {
            stream,
            ptr,
            layout,
        }
    }

    /// Another `Stream` over the same memory, as another process has.
    fn attach(&self) -> Stream {
        // SAFETY: the memory lives as long as `self`; tests drop (or
        // forget) attached streams before it.
        unsafe { Stream::attach(self.ptr, self.layout.size()) }.unwrap()
    }

    fn attach_err(&self) -> StreamError {
        // SAFETY: as in `attach`.
        unsafe { Stream::attach(self.ptr, self.layout.size()) }.unwrap_err()
    }

    /// Writes one raw record at the tail, as a writer (maybe a broken
    /// one) would, and publishes it.
    fn raw_record(&self, len: u32, flags: u32, body: &[u8]) {
        let s = &self.stream;
        let tail = s.header().tail.0.load(SeqCst);
        let mut rec = [0u8; REC];
        rec[..4].copy_from_slice(&len.to_le_bytes());
        rec[4..].copy_from_slice(&flags.to_le_bytes());
        s.copy_in(tail, &rec);
        s.copy_in(tail + REC as u64, body);
        let size = (REC + body.len()).next_multiple_of(REC) as u64;
        s.header().tail.0.store(tail + size, SeqCst);
    }
}

impl Drop for Heap {
    fn drop(&mut self) {
        // `self.stream` drops after this: leave its `Drop` nothing to do
        // in the memory freed here.
        let _ = self.stream.partial.get_mut().map(Option::take);
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

fn soon() -> Option<Instant> {
    Some(Instant::now() + Duration::from_millis(50))
}

fn long() -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(20))
}

fn msg(i: u32, len: usize) -> Vec<u8> {
    let mut v = i.to_le_bytes().to_vec();
    v.resize(len.max(4), (i % 251) as u8);
    v
}

#[test]
fn messages_come_out_in_order_across_wrap_around() {
    let h = Heap::new(256);
    let mut buf = Vec::new();
    // 40-byte records in a 256-byte ring wrap many times, and message
    // lengths that are not multiples of 8 make payloads straddle the end.
    for i in 0..500u32 {
        let m = msg(i, 5 + (i as usize % 37));
        h.stream.send(1, &m, long()).unwrap();
        h.stream.recv(2, &mut buf, long()).unwrap();
        assert_eq!(buf, m, "message {i}");
    }
    assert_eq!(h.stream.try_recv(2, &mut buf), Err(StreamError::Empty));
    assert_eq!(h.stream.leases(), (0, 0), "leases are per message");
}

#[test]
fn empty_messages_travel() {
    let h = Heap::new(64);
    h.stream.try_send(1, b"").unwrap();
    let mut buf = vec![1, 2];
    h.stream.try_recv(1, &mut buf).unwrap();
    assert!(buf.is_empty());
}

#[test]
fn full_then_room_again() {
    let h = Heap::new(64);
    // Records of 8 + 16 bytes: two fit, the third does not.
    h.stream.try_send(1, &[1; 16]).unwrap();
    h.stream.try_send(1, &[2; 16]).unwrap();
    assert_eq!(h.stream.try_send(1, &[3; 16]), Err(StreamError::Full));
    assert_eq!(h.stream.send(1, &[3; 16], soon()), Err(StreamError::Full));
    let mut buf = Vec::new();
    h.stream.try_recv(2, &mut buf).unwrap();
    h.stream.try_send(1, &[3; 16]).unwrap();
    for want in [2, 3] {
        h.stream.recv(2, &mut buf, soon()).unwrap();
        assert_eq!(buf, [want; 16]);
    }
    assert_eq!(h.stream.recv(2, &mut buf, soon()), Err(StreamError::Empty));
}

#[test]
fn a_large_message_goes_in_fragments_while_a_reader_drains() {
    let h = Heap::new(256);
    let big: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    thread::scope(|s| {
        let reader = s.spawn(|| {
            let r = h.attach();
            let mut buf = Vec::new();
            r.recv(7, &mut buf, long()).unwrap();
            let first = buf.clone();
            r.recv(7, &mut buf, long()).unwrap();
            (first, buf)
        });
        h.stream.send(3, &big, long()).unwrap();
        h.stream.send(3, b"after", long()).unwrap();
        let (first, second) = reader.join().unwrap();
        assert_eq!(first, big);
        assert_eq!(second, b"after");
    });
}

/// Waits (bounded) until a receiver took the first record: `head` moved.
fn until_taken(h: &Heap) {
    let until = Instant::now() + Duration::from_secs(20);
    while h.stream.header().head.0.load(SeqCst) == 0 {
        assert!(Instant::now() < until, "the receiver never took the record");
        thread::yield_now();
    }
}

#[test]
fn a_partial_message_from_a_writer_that_died_is_dropped_at_the_next_first() {
    let h = Heap::new(256);
    // Writer 5 sent one fragment of a message and died.
    h.stream.meta().writer.store(5, SeqCst); // it held the lease
    h.raw_record(3, FIRST | 5 << ID_SHIFT, b"abc");
    thread::scope(|s| {
        let r = s.spawn(|| {
            let mut buf = Vec::new();
            h.attach().try_recv(1, &mut buf).map(|()| buf)
        });
        until_taken(&h);
        assert_eq!(h.stream.leases().1, 1, "the receiver holds the lease");
        // Its lease was cleared, and writer 6 took it and committed a
        // whole message, before the receiver looked again.
        h.raw_record(5, FIRST | LAST | 6 << ID_SHIFT, b"whole");
        h.stream.meta().writer.store(0, SeqCst);
        h.stream.notify_all();
        assert_eq!(r.join().unwrap().as_deref(), Ok(&b"whole"[..]));
    });
    assert_eq!(h.stream.leases(), (0, 0));
}

#[test]
fn a_partial_message_is_dropped_once_its_writer_is_gone() {
    let h = Heap::new(256);
    h.stream.meta().writer.store(5, SeqCst);
    h.raw_record(3, FIRST | 5 << ID_SHIFT, b"abc");
    thread::scope(|s| {
        // The receiver waits for the rest while writer 5 holds the lease.
        let r = s.spawn(|| h.attach().try_recv(1, &mut Vec::new()));
        until_taken(&h);
        h.stream.clear_leases(5);
        assert_eq!(r.join().unwrap(), Err(StreamError::Empty));
    });
    assert_eq!(h.stream.leases(), (0, 0), "partial dropped, lease released");
    h.stream.set_flag(WRITERS_GONE);
    let mut buf = Vec::new();
    assert_eq!(h.stream.try_recv(1, &mut buf), Err(StreamError::Closed));
}

#[test]
fn continuation_fragments_of_a_dead_reader_are_skipped() {
    let h = Heap::new(256);
    let big = vec![9u8; 300]; // three fragments of at most 120 bytes
    h.stream.meta().writer.store(8, SeqCst);
    let limit = h.stream.record_limit();
    h.raw_record(limit as u32, FIRST | 8 << ID_SHIFT, &big[..limit]);
    // Reader 4 took the first fragment and died (its lease stays).
    h.stream.meta().reader.store(4, SeqCst);
    let size = (REC + limit).next_multiple_of(REC) as u64;
    h.stream.header().head.0.store(size, SeqCst);
    h.raw_record(limit as u32, 8 << ID_SHIFT, &big[limit..2 * limit]);
    h.raw_record(
        (300 - 2 * limit) as u32,
        LAST | 8 << ID_SHIFT,
        &big[2 * limit..],
    );
    h.stream.meta().writer.store(0, SeqCst);
    // Blocked behind the dead reader's lease until it is cleared.
    let mut buf = Vec::new();
    assert_eq!(h.stream.try_recv(1, &mut buf), Err(StreamError::Empty));
    assert_eq!(h.stream.clear_leases(4), (false, true));
    h.stream.try_send(2, b"next").unwrap();
    h.stream.try_recv(1, &mut buf).unwrap();
    assert_eq!(buf, b"next", "the orphaned fragments were skipped");
}

#[test]
fn corrupt_headers_are_refused_on_attach() {
    let h = Heap::new(128);
    h.stream.meta().capacity.store(100, SeqCst);
    assert!(matches!(
        h.attach_err(),
        StreamError::Corrupt {
            what: "invalid capacity",
            ..
        }
    ));
    h.stream.meta().capacity.store(1 << 20, SeqCst);
    assert!(matches!(
        h.attach_err(),
        StreamError::Corrupt {
            what: "capacity larger than the memory",
            ..
        }
    ));
    h.stream.meta().capacity.store(128, SeqCst);
    h.stream.meta().version.store(99, SeqCst);
    assert!(matches!(
        h.attach_err(),
        StreamError::Corrupt {
            what: "unknown version",
            ..
        }
    ));
    h.stream.meta().magic.store(1, SeqCst);
    assert!(matches!(
        h.attach_err(),
        StreamError::Corrupt {
            what: "bad magic",
            ..
        }
    ));
}

#[test]
fn corrupt_records_and_positions_are_errors() {
    let mut buf = Vec::new();
    // A length beyond the record limit.
    let h = Heap::new(128);
    h.raw_record(1 << 30, FIRST | LAST | 1 << ID_SHIFT, &[0; 8]);
    assert!(matches!(
        h.stream.try_recv(1, &mut buf),
        Err(StreamError::Corrupt {
            what: "record longer than the limit",
            ..
        })
    ));
    assert_eq!(h.stream.leases().1, 0, "the lease is not kept on an error");
    // A length beyond what was published.
    let h = Heap::new(128);
    h.raw_record(40, FIRST | LAST | 1 << ID_SHIFT, &[0; 8]);
    assert!(matches!(
        h.stream.try_recv(1, &mut buf),
        Err(StreamError::Corrupt {
            what: "record beyond the published tail",
            ..
        })
    ));
    // Unknown flag bits.
    let h = Heap::new(128);
    h.raw_record(0, 0x40 | 1 << ID_SHIFT, &[]);
    assert!(matches!(
        h.stream.try_recv(1, &mut buf),
        Err(StreamError::Corrupt {
            what: "unknown record flags",
            ..
        })
    ));
    // A tail more than a capacity ahead, and an unaligned one.
    let h = Heap::new(128);
    h.stream.header().tail.0.store(1024, SeqCst);
    assert!(matches!(
        h.stream.try_recv(1, &mut buf),
        Err(StreamError::Corrupt { .. })
    ));
    assert!(matches!(
        h.stream.try_send(1, b"x"),
        Err(StreamError::Corrupt { .. })
    ));
    h.stream.header().tail.0.store(3, SeqCst);
    assert!(matches!(
        h.stream.try_recv(1, &mut buf),
        Err(StreamError::Corrupt { .. })
    ));
}

#[test]
fn bad_lanes_and_capacities_are_refused() {
    let h = Heap::new(64);
    assert_eq!(h.stream.try_send(0, b"x"), Err(StreamError::BadLane(0)));
    assert_eq!(
        h.stream.try_recv(MAX_LANE + 1, &mut Vec::new()),
        Err(StreamError::BadLane(MAX_LANE + 1))
    );
    for cap in [0, 32, 100, 1 << 31] {
        assert_eq!(Stream::bytes_needed(cap), Err(StreamError::Capacity(cap)));
    }
}

#[test]
fn closed_drains_first_and_refuses_sends() {
    let h = Heap::new(64);
    h.stream.try_send(1, b"a").unwrap();
    h.stream.set_flag(CLOSED);
    assert_eq!(h.stream.try_send(1, b"b"), Err(StreamError::Closed));
    let mut buf = Vec::new();
    h.stream.try_recv(2, &mut buf).unwrap();
    assert_eq!(buf, b"a");
    assert_eq!(h.stream.recv(2, &mut buf, long()), Err(StreamError::Closed));
}

#[test]
fn a_blocked_receiver_wakes_when_the_writers_go() {
    let h = Heap::new(64);
    thread::scope(|s| {
        let r = s.spawn(|| h.attach().recv(2, &mut Vec::new(), long()));
        h.stream.set_flag(WRITERS_GONE);
        assert_eq!(r.join().unwrap(), Err(StreamError::Closed));
    });
}

#[test]
fn a_sender_blocked_on_a_full_stream_fails_when_the_readers_go() {
    let h = Heap::new(64);
    h.stream.try_send(1, &[0; 16]).unwrap();
    h.stream.try_send(1, &[0; 16]).unwrap();
    thread::scope(|s| {
        let w = s.spawn(|| h.attach().send(3, &[0; 16], long()));
        h.stream.set_flag(READERS_GONE);
        assert_eq!(w.join().unwrap(), Err(StreamError::ReadersGone));
    });
    assert_eq!(h.stream.leases().0, 0, "the lease was given back");
}

#[test]
fn a_dead_writers_lease_blocks_senders_until_cleared() {
    let h = Heap::new(64);
    h.stream.meta().writer.store(9, SeqCst);
    assert_eq!(h.stream.send(1, b"x", soon()), Err(StreamError::Full));
    assert_eq!(h.stream.clear_leases(9), (true, false));
    h.stream.try_send(1, b"x").unwrap();
}

#[test]
fn hub_items_count_and_never_go_below_zero() {
    let h = Heap::new(64);
    h.stream.hub_item_taken();
    assert_eq!(h.stream.hub_items(), 0);
    h.stream.hub_item_added();
    h.stream.hub_item_added();
    h.stream.hub_item_taken();
    assert_eq!(h.stream.hub_items(), 1);
    assert!(h.stream.wait_readable(soon()));
}

/// A receiver sleeping until the other path changes wakes when an item
/// there becomes available without the count growing (`hub_changed`, as
/// when a subscriber gives a delivered item back).
#[test]
fn a_hub_change_without_a_new_item_wakes_receivers() {
    let h = Heap::new(64);
    h.stream.set_hub_items(1);
    let seen = h.stream.hub_gen();
    h.stream.set_hub_items(1);
    assert_eq!(h.stream.hub_gen(), seen, "no change, no wake");
    let deadline = Some(Instant::now() + Duration::from_secs(30));
    let woke = thread::scope(|s| {
        let sleeper = s.spawn(|| {
            h.stream
                .sleep_readers(deadline, || h.stream.hub_gen() != seen)
        });
        h.stream.hub_changed();
        sleeper.join().unwrap()
    });
    assert!(woke, "the sleeper was not woken by hub_changed");
}

/// Whoever waits for records only (a pump) sleeps through the other
/// path's changes, however many (each used to wake it: a wake-up per
/// put into a hub busy with remote workers' items), and wakes for a
/// record.
#[test]
fn a_record_waiter_sleeps_through_hub_changes_and_wakes_for_a_record() {
    let h = Heap::new(256);
    let nap = Duration::from_millis(300);
    let done = std::sync::atomic::AtomicBool::new(false);
    let slept = thread::scope(|s| {
        let waiter = s.spawn(|| {
            let t = Instant::now();
            h.stream.wait_record(Some(t + nap));
            done.store(true, SeqCst);
            t.elapsed()
        });
        let mut changes = 0u64;
        while !done.load(SeqCst) {
            h.stream.hub_changed();
            changes += 1;
            thread::yield_now();
        }
        assert!(changes > 0);
        waiter.join().unwrap()
    });
    assert!(
        slept >= nap,
        "a hub change woke a record waiter after {slept:?}"
    );
    let deadline = Some(Instant::now() + Duration::from_secs(30));
    let slept = thread::scope(|s| {
        let waiter = s.spawn(|| {
            let t = Instant::now();
            h.stream.wait_record(deadline);
            t.elapsed()
        });
        h.stream.try_send(1, b"x").unwrap();
        waiter.join().unwrap()
    });
    assert!(
        slept < Duration::from_secs(30),
        "a record did not wake the record waiter"
    );
}

#[test]
fn many_writers_and_readers_lose_and_duplicate_nothing() {
    const WRITERS: u32 = 3;
    const EACH: u32 = 3000;
    let h = Heap::new(1024);
    let got = thread::scope(|s| {
        let readers: Vec<_> = (0..3u32)
            .map(|r| {
                let h = &h;
                s.spawn(move || {
                    let st = h.attach();
                    let mut seen = Vec::new();
                    let mut buf = Vec::new();
                    loop {
                        match st.recv(10 + r, &mut buf, long()) {
                            Ok(()) => {
                                let i = u32::from_le_bytes(buf[..4].try_into().unwrap());
                                assert_eq!(buf, msg(i, buf.len()), "message {i} intact");
                                seen.push(i);
                            }
                            Err(StreamError::Closed) => return seen,
                            Err(e) => panic!("reader: {e}"),
                        }
                    }
                })
            })
            .collect();
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let h = &h;
                s.spawn(move || {
                    let st = h.attach();
                    for k in 0..EACH {
                        let i = w * EACH + k;
                        // Some messages longer than a record (fragments).
                        let len = if k % 97 == 0 {
                            1500
                        } else {
                            4 + (k as usize % 300)
                        };
                        st.send(1 + w, &msg(i, len), long()).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        h.stream.set_flag(WRITERS_GONE);
        readers
            .into_iter()
            .flat_map(|r| r.join().unwrap())
            .collect::<Vec<_>>()
    });
    let set: HashSet<u32> = got.iter().copied().collect();
    assert_eq!(set.len(), got.len(), "duplicates");
    assert_eq!(got.len() as u32, WRITERS * EACH, "lost messages");
}

/// Defect F: a receiver that returns in the middle of a fragmented
/// message must not keep the reader lease (other receivers would see
/// nothing until it receives again). Reader 4's `try_recv` takes the
/// first fragment while the writer is still sending; once it returns,
/// reader 3 must be able to receive, and the two messages are taken once
/// each, whole.
#[test]
fn a_receiver_returning_mid_message_leaves_the_stream_to_others() {
    let h = Heap::new(256);
    let limit = h.stream.record_limit();
    let big: Vec<u8> = (0..2 * limit + 17).map(|i| i as u8).collect();
    // Writer 8 is sending `big` and has committed its first fragment.
    h.stream.meta().writer.store(8, SeqCst);
    h.raw_record(limit as u32, FIRST | 8 << ID_SHIFT, &big[..limit]);
    let a = h.attach();
    let b = h.attach();
    let mut got = Vec::new();
    thread::scope(|s| {
        let first = s.spawn(|| {
            let mut buf = Vec::new();
            a.try_recv(4, &mut buf).map(|()| buf)
        });
        until_taken(&h);
        // The writer's remaining fragments, then its lease goes back.
        h.raw_record(limit as u32, 8 << ID_SHIFT, &big[limit..2 * limit]);
        h.raw_record(17, LAST | 8 << ID_SHIFT, &big[2 * limit..]);
        h.stream.meta().writer.store(0, SeqCst);
        h.stream.notify_all();
        if let Ok(m) = first.join().unwrap() {
            got.push(m);
        }
    });
    h.stream.try_send(2, b"next").unwrap();
    let mut buf = Vec::new();
    while b.recv(3, &mut buf, soon()).is_ok() {
        got.push(std::mem::take(&mut buf));
    }
    got.sort();
    assert_eq!(got, [big, b"next".to_vec()], "each message once, whole");
    assert_eq!(h.stream.leases(), (0, 0));
}

#[test]
fn try_recv_unless_gives_the_lease_back_untouched_and_messages_counts() {
    let h = Heap::new(4096);
    let s = &h.stream;
    for i in 0..3 {
        s.try_send(1, &msg(i, 10)).unwrap();
    }
    assert_eq!(
        s.messages(2, Instant::now() + Duration::from_secs(1)),
        Some(3)
    );
    let mut buf = Vec::new();
    // Deferred: nothing taken, the lease is free again.
    assert_eq!(s.try_recv_unless(2, &mut buf, || true), Ok(false));
    assert_eq!(s.leases(), (0, 0));
    assert_eq!(
        s.messages(2, Instant::now() + Duration::from_secs(1)),
        Some(3)
    );
    // Not deferred: the oldest message.
    assert_eq!(s.try_recv_unless(2, &mut buf, || false), Ok(true));
    assert_eq!(buf, msg(0, 10));
    // Another reader holds the lease: `Empty`, and `defer` is not asked.
    s.meta().reader.store(9, SeqCst);
    assert_eq!(
        s.try_recv_unless(2, &mut buf, || panic!("asked without the lease")),
        Err(StreamError::Empty)
    );
    assert_eq!(
        s.messages(2, Instant::now() + Duration::from_millis(10)),
        None
    );
    s.clear_leases(9);
    assert_eq!(
        s.messages(2, Instant::now() + Duration::from_secs(1)),
        Some(2)
    );
}

#[test]
fn try_recv_then_runs_under_the_reader_lease() {
    let h = Heap::new(4096);
    let s = &h.stream;
    s.try_send(1, &msg(7, 20)).unwrap();
    let mut buf = Vec::new();
    let mut seen = None;
    s.try_recv_then(3, &mut buf, |b| seen = Some((b.clone(), s.leases().1)))
        .unwrap();
    assert_eq!(seen, Some((msg(7, 20), 3)));
    assert_eq!(s.leases(), (0, 0));
    assert_eq!(
        s.try_recv_then(3, &mut buf, |_| panic!("no message")),
        Err(StreamError::Empty)
    );
}

/// Sends `m` in place, in pieces of up to 7 bytes (writes straddle the
/// ring's end).
fn send_in_pieces(s: &Stream, m: &[u8]) -> Result<bool, StreamError> {
    s.send_in_place(1, m.len(), long(), |room| {
        m.chunks(7).all(|c| room.write(c)) && room.remaining() == 0
    })
}

#[test]
fn messages_written_and_read_in_place_wrap_and_mix_with_copied_ones() {
    let h = Heap::new(256);
    let mut buf = Vec::new();
    for i in 0..500u32 {
        let m = msg(i, 5 + (i as usize % 37));
        if i % 3 == 0 {
            h.stream.send(1, &m, long()).unwrap();
        } else {
            assert_eq!(send_in_pieces(&h.stream, &m), Ok(true));
        }
        // Messages of at least 20 bytes are read in place, in pieces;
        // `then` runs for every message, under the reader lease.
        let mut read = None;
        let mut then_ran = false;
        let took = h.stream.try_recv_in_place(
            2,
            &mut buf,
            || false,
            20,
            |msg| {
                let mut out = vec![0; msg.remaining()];
                assert!(out.chunks_mut(5).all(|c| msg.read(c)));
                assert!(!msg.read(&mut [0]), "nothing past the message");
                read = Some(out);
            },
            || {
                assert_eq!(h.stream.leases().1, 2);
                then_ran = true;
            },
        );
        assert_eq!(took, Ok(true));
        assert!(then_ran);
        assert_eq!(read.is_some(), m.len() >= 20, "message {i}");
        assert_eq!(read.as_ref().unwrap_or(&buf), &m, "message {i}");
    }
    assert_eq!(h.stream.try_recv(2, &mut buf), Err(StreamError::Empty));
    assert_eq!(h.stream.leases(), (0, 0));
}

#[test]
fn an_in_place_send_that_is_not_filled_whole_sends_nothing() {
    let h = Heap::new(256);
    // Too short, refused by `fill`, and too long: nothing published.
    let short = h
        .stream
        .send_in_place(1, 16, long(), |room| room.write(&[1; 8]));
    assert_eq!(short, Ok(false));
    assert_eq!(h.stream.send_in_place(1, 16, long(), |_| false), Ok(false));
    let long_fill = h
        .stream
        .send_in_place(1, 16, long(), |room| room.write(&[1; 17]));
    assert_eq!(long_fill, Ok(false));
    assert!(!h.stream.has_record());
    assert_eq!(
        h.stream
            .send_in_place(1, h.stream.record_limit() + 1, long(), |_| true),
        Err(StreamError::TooLong(h.stream.record_limit() + 1))
    );
    // A panic while filling gives the lease back and sends nothing.
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        h.stream
            .send_in_place(1, 16, long(), |_| panic!("encoder bug"))
    }));
    assert!(panicked.is_err());
    assert_eq!(h.stream.leases(), (0, 0));
    assert!(!h.stream.has_record());
    assert_eq!(send_in_pieces(&h.stream, &[9; 16]), Ok(true));
    let mut buf = Vec::new();
    h.stream.try_recv(2, &mut buf).unwrap();
    assert_eq!(buf, [9; 16]);
}

#[test]
fn a_panic_while_reading_in_place_consumes_the_message_and_frees_the_lease() {
    let h = Heap::new(256);
    h.stream.try_send(1, &[1; 32]).unwrap();
    h.stream.try_send(1, &[2; 32]).unwrap();
    let mut buf = Vec::new();
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        h.stream
            .try_recv_in_place(2, &mut buf, || false, 0, |_| panic!("decoder bug"), || {})
    }));
    assert!(panicked.is_err());
    assert_eq!(h.stream.leases(), (0, 0));
    h.stream.try_recv(2, &mut buf).unwrap();
    assert_eq!(buf, [2; 32], "the message read when the panic came is gone");
}

#[test]
fn a_counted_stream_counts_whole_messages_before_they_show_and_takes_back_a_dead_senders() {
    let h = Heap::with(1024, true);
    let other = h.attach();
    h.stream.try_send(1, b"one").unwrap();
    // In fragments (the record limit is 504 bytes): one message.
    other.send(2, &[7; 700], long()).unwrap();
    assert_eq!(other.published(), 2);
    assert_eq!(
        Heap::new(256).stream.published(),
        0,
        "not counted by default"
    );
    let p = &h.stream.header().published.0;
    let m = h.stream.meta();
    // A sender's steps: marks, count, `tail` store, marks cleared.
    let die = |lane: u32, count: bool, publish: bool| {
        m.writer.store(lane, SeqCst);
        let end = h.stream.header().tail.0.load(SeqCst) + 16;
        let n = p.count.load(SeqCst) + 1;
        p.pend_count.store(n, SeqCst);
        p.pend_tail.store(end, SeqCst);
        if count {
            p.count.store(n, SeqCst);
        }
        if publish {
            h.raw_record(8, (lane << ID_SHIFT) | FIRST | LAST, &[1; 8]);
        }
        h.stream.clear_leases(lane);
        assert_eq!(p.pend_tail.load(SeqCst), 0);
    };
    // Lane 5 dies after its `tail` store: published, counted.
    die(5, true, true);
    assert_eq!(h.stream.published(), 3, "published by its tail store");
    // Lane 6 dies between the count and the `tail` store: taken back.
    die(6, true, false);
    assert_eq!(h.stream.published(), 3, "never published");
    // Lane 7 dies before counting: nothing to take back.
    die(7, false, false);
    assert_eq!(h.stream.published(), 3);
    h.stream.try_send(1, b"four").unwrap();
    assert_eq!(h.stream.published(), 4);
}
