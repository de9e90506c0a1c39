//! Thread tests of the ring over heap memory. Deaths are simulated by a
//! fault hook that panics at a point inside `put` or `get`: the slot stays
//! claimed by the "dead" owner, exactly as after a SIGKILL there (the
//! fork-and-kill test in `ipc/tests/ring_crash.rs` does it for real).

use std::alloc::Layout;
use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr::NonNull;
use std::sync::atomic::Ordering::SeqCst;
use std::thread;
use std::time::{Duration, Instant};

use super::*;

/// A ring over its own heap memory (freed after the ring).
struct Heap {
    ring: Ring,
    ptr: NonNull<u8>,
    layout: Layout,
}

impl Heap {
    fn new(slots: u32, slot_size: u32, owners: u32) -> Self {
        let g = Geometry {
            slots,
            slot_size,
            owners,
        };
        let layout = Layout::from_size_align(Ring::bytes_needed(g).unwrap(), 64).unwrap();
        // SAFETY: the layout has a non-zero size.
        let ptr = NonNull::new(unsafe { std::alloc::alloc(layout) }).expect("allocation");
        // SAFETY: fresh memory of `layout.size()` aligned bytes, freed in
        // `drop` after every `Ring` over it (the `attach`ed ones borrow
        // `self`).
        let ring = unsafe { Ring::init(ptr, layout.size(), g) }.unwrap();
        Self { ring, ptr, layout }
    }

    /// Another `Ring` over the same memory, as another process would have.
    fn attach(&self) -> Ring {
        // SAFETY: the memory outlives the returned ring in every test (it
        // is dropped before `self`).
        unsafe { Ring::attach(self.ptr, self.layout.size()) }.unwrap()
    }
}

impl Drop for Heap {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the ring over it is
        // not used after this point (it holds no pointer it dereferences on
        // drop).
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

impl std::ops::Deref for Heap {
    type Target = Ring;
    fn deref(&self) -> &Ring {
        &self.ring
    }
}

fn soon(ms: u64) -> Option<Instant> {
    Some(Instant::now() + Duration::from_millis(ms))
}

const P: Owner = Owner(0);
const C: Owner = Owner(1);
const DEAD: Owner = Owner(2);

#[test]
fn put_get_fifo_tags_and_wraparound() {
    let r = Heap::new(3, 16, 3);
    let mut buf = Vec::with_capacity(64);
    let cap = buf.capacity();
    for i in 0u32..50 {
        r.try_put(P, i, &i.to_le_bytes()).unwrap();
        r.try_put(P, i + 1000, b"").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r.try_get(C, &mut buf), Ok(i));
        assert_eq!(buf, i.to_le_bytes());
        assert_eq!(r.try_get(C, &mut buf), Ok(i + 1000));
        assert!(buf.is_empty());
        assert_eq!(r.try_get(C, &mut buf), Err(RingError::Empty));
    }
    assert_eq!(buf.capacity(), cap, "the buffer's capacity is reused");
}

#[test]
fn full_too_large_and_bad_owner() {
    let r = Heap::new(2, 8, 2);
    r.try_put(P, 0, b"a").unwrap();
    r.try_put(P, 0, b"b").unwrap();
    assert_eq!(r.try_put(P, 0, b"c"), Err(RingError::Full));
    assert_eq!(r.put(P, 0, b"c", soon(20)), Err(RingError::Full));
    assert_eq!(
        r.try_put(P, 0, &[0; 9]),
        Err(RingError::TooLarge { len: 9, max: 8 })
    );
    assert_eq!(
        r.try_put(Owner(2), 0, b"x"),
        Err(RingError::BadOwner {
            owner: 2,
            owners: 2
        })
    );
    let mut buf = Vec::new();
    assert_eq!(
        r.try_get(Owner(9), &mut buf),
        Err(RingError::BadOwner {
            owner: 9,
            owners: 2
        })
    );
    assert_eq!(
        r.recover(Owner(2)),
        Err(RingError::BadOwner {
            owner: 2,
            owners: 2
        })
    );
}

#[test]
fn get_times_out_when_empty() {
    let r = Heap::new(2, 8, 2);
    let mut buf = Vec::new();
    assert_eq!(r.get(C, &mut buf, soon(20)), Err(RingError::Empty));
}

#[test]
fn geometry_and_memory_are_checked() {
    let g = |slots, slot_size, owners| Geometry {
        slots,
        slot_size,
        owners,
    };
    assert!(matches!(
        Ring::bytes_needed(g(0, 8, 1)),
        Err(RingError::Geometry(_))
    ));
    assert!(matches!(
        Ring::bytes_needed(g(1, 0, 1)),
        Err(RingError::Geometry(_))
    ));
    assert!(matches!(
        Ring::bytes_needed(g(1, 8, 0)),
        Err(RingError::Geometry(_))
    ));
    assert!(matches!(
        Ring::bytes_needed(g(1, 8, 65537)),
        Err(RingError::Geometry(_))
    ));
    let r = Heap::new(4, 8, 2);
    let small = r.layout.size() - 1;
    // SAFETY: a prefix of live memory; `init` fails before writing.
    let e = unsafe { Ring::init(r.ptr, small, g(4, 8, 2)) }.unwrap_err();
    assert_eq!(
        e,
        RingError::TooSmall {
            len: small,
            needed: small + 1
        }
    );
    // SAFETY: one byte into live memory; fails before touching it.
    let e = unsafe { Ring::init(r.ptr.add(1), small, g(1, 8, 1)) }.unwrap_err();
    assert_eq!(e, RingError::Misaligned);
}

#[test]
fn corrupt_header_is_an_error() {
    let r = Heap::new(4, 8, 2);
    let meta = &r.mem.header().meta.0;
    let attach = || {
        // SAFETY: live memory of this size, outliving the result.
        unsafe { Ring::attach(r.ptr, r.layout.size()) }.map(drop)
    };
    assert_eq!(attach(), Ok(()));
    meta.slots.store(5, SeqCst); // one more slot than the memory holds
    assert!(matches!(
        attach(),
        Err(RingError::Corrupt {
            what: "geometry larger than the memory",
            ..
        })
    ));
    meta.slots.store(0, SeqCst);
    assert!(matches!(
        attach(),
        Err(RingError::Corrupt {
            what: "invalid geometry",
            ..
        })
    ));
    meta.slots.store(4, SeqCst);
    meta.version.store(99, SeqCst);
    assert!(matches!(
        attach(),
        Err(RingError::Corrupt {
            what: "unknown version",
            ..
        })
    ));
    meta.magic.store(0, SeqCst);
    assert!(matches!(
        attach(),
        Err(RingError::Corrupt {
            what: "bad magic",
            ..
        })
    ));
    // SAFETY: live memory, but shorter than a header.
    let e = unsafe { Ring::attach(r.ptr, 10) }.unwrap_err();
    assert!(matches!(e, RingError::Corrupt { .. }));
}

#[test]
fn corrupt_slot_is_an_error_and_the_ring_goes_on() {
    let r = Heap::new(4, 8, 3);
    let mut buf = Vec::new();
    r.try_put(P, 1, b"one").unwrap();
    r.try_put(P, 2, b"two").unwrap();
    r.mem.slot(0).len.store(9999, SeqCst);
    assert!(matches!(
        r.try_get(C, &mut buf),
        Err(RingError::Corrupt {
            what: "item longer than a slot",
            ..
        })
    ));
    assert_eq!(r.try_get(C, &mut buf), Ok(2), "the bad slot was freed");
    r.try_put(P, 3, b"three").unwrap();
    r.mem.slot(2).state.store(0xffff_0000, SeqCst); // unknown phase
    assert!(matches!(
        r.try_get(C, &mut buf),
        Err(RingError::Corrupt {
            what: "unknown slot phase",
            ..
        })
    ));
    assert!(matches!(r.recover(DEAD), Err(RingError::Corrupt { .. })));
}

#[test]
fn mpmc_every_item_once_fifo_per_producer() {
    const PRODUCERS: u16 = 3;
    const CONSUMERS: u16 = 3;
    const ITEMS: u32 = 20_000;
    let heap = Heap::new(16, 8, u32::from(PRODUCERS + CONSUMERS));
    let r: &Ring = &heap;
    let deadline = soon(60_000);
    let seen = thread::scope(|s| {
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                s.spawn(move || {
                    for i in 0..ITEMS {
                        r.put(Owner(p), u32::from(p), &i.to_le_bytes(), deadline)
                            .unwrap();
                    }
                })
            })
            .collect();
        let consumers: Vec<_> = (0..CONSUMERS)
            .map(|c| {
                s.spawn(move || {
                    let mut got = Vec::new();
                    let mut last = [None; PRODUCERS as usize];
                    let mut buf = Vec::new();
                    loop {
                        match r.get(Owner(PRODUCERS + c), &mut buf, deadline) {
                            Ok(p) => {
                                let i = u32::from_le_bytes(buf[..].try_into().unwrap());
                                let prev = last[p as usize].replace(i);
                                assert!(prev < Some(i), "FIFO per producer: {prev:?} then {i}");
                                got.push((p, i));
                            }
                            Err(RingError::Closed) => return got,
                            Err(e) => panic!("get: {e}"),
                        }
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        r.close();
        consumers
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect::<Vec<_>>()
    });
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(
        seen.len(),
        (ITEMS * u32::from(PRODUCERS)) as usize,
        "every item once"
    );
    assert_eq!(unique.len(), seen.len(), "no duplicates");
}

#[test]
fn close_drains_then_reports_closed_and_wakes_sleepers() {
    let heap = Heap::new(4, 8, 3);
    let r: &Ring = &heap;
    r.try_put(P, 1, b"x").unwrap();
    r.close();
    assert!(r.is_closed());
    assert_eq!(r.try_put(P, 2, b"y"), Err(RingError::Closed));
    let mut buf = Vec::new();
    assert_eq!(r.try_get(C, &mut buf), Ok(1));
    assert_eq!(r.try_get(C, &mut buf), Err(RingError::Closed));

    let heap = Heap::new(1, 8, 3);
    let r: &Ring = &heap;
    thread::scope(|s| {
        let getter = s.spawn(|| r.get(C, &mut Vec::new(), soon(30_000)));
        r.try_put(P, 0, b"").unwrap();
        let putter = s.spawn(|| r.put(DEAD, 0, b"", soon(30_000)));
        // The getter took the first item or will; then it sleeps on an
        // empty ring, the putter on a full one or not at all.
        r.close();
        assert!(matches!(
            getter.join().unwrap(),
            Ok(0) | Err(RingError::Closed)
        ));
        assert!(matches!(
            putter.join().unwrap(),
            Ok(()) | Err(RingError::Closed)
        ));
    });
}

#[test]
fn blocked_put_and_get_wake_each_other() {
    let heap = Heap::new(1, 8, 2);
    let r: &Ring = &heap;
    thread::scope(|s| {
        let consumer = s.spawn(|| {
            let mut buf = Vec::new();
            (0..1000)
                .map(|_| r.get(C, &mut buf, soon(30_000)).unwrap())
                .collect::<Vec<_>>()
        });
        for i in 0..1000 {
            r.put(P, i, b"", soon(30_000)).unwrap();
        }
        assert_eq!(consumer.join().unwrap(), (0..1000).collect::<Vec<_>>());
    });
}

fn die_at_get_claimed(p: FaultPoint, _: &[u8]) {
    if p == FaultPoint::GetClaimed {
        panic!("simulated death inside get");
    }
}

fn die_at_get_half(p: FaultPoint, _: &[u8]) {
    if p == FaultPoint::GetHalfCopied {
        panic!("simulated death inside get");
    }
}

fn die_at_put_half(p: FaultPoint, _: &[u8]) {
    if p == FaultPoint::PutHalfCopied {
        panic!("simulated death inside put");
    }
}

fn die_at_put_committed(p: FaultPoint, _: &[u8]) {
    if p == FaultPoint::PutCommitted {
        panic!("simulated death inside put");
    }
}

/// Runs `f` on a ring over `r`'s memory whose hook "kills" it.
fn dies<T>(r: &Heap, hook: fn(FaultPoint, &[u8]), f: impl FnOnce(&Ring) -> T) {
    let mut dying = r.attach();
    dying.set_fault_hook(hook);
    assert!(
        catch_unwind(AssertUnwindSafe(|| f(&dying))).is_err(),
        "the hook fired"
    );
}

#[test]
fn recovered_get_goes_back_to_the_front() {
    for hook in [die_at_get_claimed as fn(FaultPoint, &[u8]), die_at_get_half] {
        let r = Heap::new(2, 8, 3);
        r.try_put(P, 1, b"first").unwrap();
        r.try_put(P, 2, b"second").unwrap();
        dies(&r, hook, |d| d.try_get(DEAD, &mut Vec::new()));
        assert_eq!(
            r.try_put(P, 3, b"third"),
            Err(RingError::Full),
            "the dead getter's slot"
        );
        r.close();
        let mut buf = Vec::new();
        assert_eq!(r.try_get(C, &mut buf), Ok(2));
        assert_eq!(
            r.try_get(C, &mut buf),
            Err(RingError::Empty),
            "not Closed: a get is in flight"
        );
        assert_eq!(
            r.recover(DEAD),
            Ok(Recovered {
                tombstoned: 0,
                requeued: 1
            })
        );
        assert_eq!(r.recover(DEAD), Ok(Recovered::default()), "nothing left");
        assert_eq!(r.try_get(C, &mut buf), Ok(1));
        assert_eq!(buf, b"first");
        assert_eq!(r.try_get(C, &mut buf), Err(RingError::Closed));
        assert_eq!(r.unfinished(), 2, "each item counted once");
    }
}

#[test]
fn an_item_rescued_twice_is_delivered_once_and_the_ring_drains() {
    let r = Heap::new(2, 8, 3);
    r.try_put(P, 1, b"x").unwrap();
    dies(&r, die_at_get_claimed, |d| d.try_get(DEAD, &mut Vec::new()));
    r.recover(DEAD).unwrap();
    dies(&r, die_at_get_half, |d| d.try_get(DEAD, &mut Vec::new()));
    assert_eq!(
        r.recover(DEAD),
        Ok(Recovered {
            tombstoned: 0,
            requeued: 1
        })
    );
    r.close();
    let mut buf = Vec::new();
    assert_eq!(r.try_get(C, &mut buf), Ok(1));
    assert_eq!(r.try_get(C, &mut buf), Err(RingError::Closed));
    assert_eq!(r.unfinished(), 1);
}

#[test]
fn recovered_item_is_taken_before_newer_ones() {
    let r = Heap::new(4, 8, 3);
    for i in 0..3 {
        r.try_put(P, i, b"").unwrap();
    }
    dies(&r, die_at_get_claimed, |d| d.try_get(DEAD, &mut Vec::new()));
    let mut buf = Vec::new();
    assert_eq!(r.try_get(C, &mut buf), Ok(1));
    r.recover(DEAD).unwrap();
    assert_eq!(r.try_get(C, &mut buf), Ok(0), "the rescued item first");
    assert_eq!(r.try_get(C, &mut buf), Ok(2));
}

#[test]
fn dead_put_becomes_a_skipped_tombstone_and_is_never_counted() {
    for hook in [
        die_at_put_half as fn(FaultPoint, &[u8]),
        die_at_put_committed,
    ] {
        let r = Heap::new(2, 8, 3);
        r.try_put(P, 1, b"a").unwrap();
        dies(&r, hook, |d| d.try_put(DEAD, 9, b"dead"));
        r.try_put(P, 2, b"b").unwrap_err(); // full: the dead put holds a slot
        let mut buf = Vec::new();
        assert_eq!(r.try_get(C, &mut buf), Ok(1));
        assert_eq!(
            r.try_get(C, &mut buf),
            Err(RingError::Empty),
            "FIFO waits behind a put"
        );
        assert_eq!(
            r.recover(DEAD),
            Ok(Recovered {
                tombstoned: 1,
                requeued: 0
            })
        );
        assert_eq!(r.unfinished(), 1, "the dead put is not counted");
        r.try_put(P, 2, b"b").unwrap();
        assert_eq!(r.try_get(C, &mut buf), Ok(2), "the tombstone was skipped");
        assert_eq!(r.unfinished(), 2);
    }
}

#[test]
fn task_done_and_join() {
    let heap = Heap::new(4, 8, 2);
    let r: &Ring = &heap;
    assert_eq!(r.task_done(), Err(RingError::TooManyTaskDone));
    assert_eq!(r.join(soon(0)), Ok(()));
    r.try_put(P, 0, b"").unwrap();
    r.try_put(P, 0, b"").unwrap();
    assert_eq!(r.unfinished(), 2);
    assert_eq!(r.join(soon(20)), Err(RingError::Timeout));
    thread::scope(|s| {
        let joiner = s.spawn(|| r.join(soon(30_000)));
        let mut buf = Vec::new();
        for _ in 0..2 {
            r.try_get(C, &mut buf).unwrap();
            r.task_done().unwrap();
        }
        assert_eq!(joiner.join().unwrap(), Ok(()));
    });
    assert_eq!(r.unfinished(), 0);
    assert_eq!(r.task_done(), Err(RingError::TooManyTaskDone));
}

#[test]
fn attached_rings_share_everything() {
    let r = Heap::new(4, 8, 2);
    let other = r.attach();
    other.try_put(P, 5, b"hi").unwrap();
    let mut buf = Vec::new();
    assert_eq!(r.try_get(C, &mut buf), Ok(5));
    assert_eq!(other.geometry(), r.geometry());
    r.close();
    assert!(other.is_closed());
}
