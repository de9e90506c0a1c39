//! Model checks of the ring's claim/release/recover protocol with loom:
//! threads stand in for processes, the slot and header words are loom's
//! atomics, payloads are not modelled (items are told apart by their tag).
//! A "death" is a thread that stops between two steps of an operation,
//! holding its claim; `recover` runs once the thread was joined (its
//! process is certainly gone).
//!
//! Not modelled: the `SeqCst` store/load pairs (close vs a claim, the
//! eventcount), since loom treats `SeqCst` accesses as `AcqRel` and would
//! report executions real hardware cannot produce; the thread tests and
//! `ipc/tests/ring_crash.rs` cover them.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p procpool-ipc --release --lib loom`.

use loom::sync::Arc;
use loom::thread;

use super::*;

const P: Owner = Owner(0);
const C: Owner = Owner(1);
const DEAD: Owner = Owner(2);

/// `loom::model`, with room for the retry loops (every atomic access is a
/// branch); `LOOM_MAX_PREEMPTIONS` bounds the search (2 in CI).
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.max_branches = 100_000;
    b.check(f);
}

fn ring(slots: u32) -> Arc<Ring> {
    Arc::new(Ring::new_loom(Geometry {
        slots,
        slot_size: 8,
        owners: 3,
    }))
}

fn put(r: &Ring, owner: Owner, tag: u32) {
    loop {
        match r.try_put(owner, tag, b"") {
            Ok(()) => return,
            Err(RingError::Full) => thread::yield_now(),
            Err(e) => panic!("put: {e}"),
        }
    }
}

/// Everything left in the ring, by tag (single-threaded by then).
fn drain(r: &Ring, got: &mut Vec<u32>) {
    let mut buf = Vec::new();
    loop {
        match r.try_get(C, &mut buf) {
            Ok(tag) => got.push(tag),
            Err(RingError::Empty) => return,
            Err(e) => panic!("get: {e}"),
        }
    }
}

#[test]
fn loom_two_producers_one_consumer_exactly_once() {
    model(|| {
        let r = ring(2);
        let producers: Vec<_> = [10, 11]
            .into_iter()
            .enumerate()
            .map(|(i, tag)| {
                let r = r.clone();
                // Owners 0 and 2 produce; 1 consumes.
                thread::spawn(move || put(&r, Owner(2 * i as u16), tag))
            })
            .collect();
        let mut got = Vec::new();
        let mut buf = Vec::new();
        while got.len() < 2 {
            match r.try_get(C, &mut buf) {
                Ok(tag) => got.push(tag),
                Err(RingError::Empty) => thread::yield_now(),
                Err(e) => panic!("get: {e}"),
            }
        }
        for p in producers {
            p.join().unwrap();
        }
        got.sort_unstable();
        assert_eq!(got, [10, 11]);
        assert_eq!(r.unfinished(), 2);
        assert_eq!(r.try_get(C, &mut buf), Err(RingError::Empty));
    });
}

#[test]
fn loom_dead_getter_item_is_requeued_once_while_another_gets() {
    model(|| {
        let r = ring(2);
        r.try_put(P, 1, b"").unwrap();
        r.try_put(P, 2, b"").unwrap();
        let dying = {
            let r = r.clone();
            // Claims an item and dies holding it.
            thread::spawn(move || {
                r.claim_get(DEAD)
                    .ok()
                    .map(|(idx, _)| r.mem.slot(idx).tag.load(Relaxed))
            })
        };
        let live = {
            let r = r.clone();
            thread::spawn(move || r.try_get(C, &mut Vec::new()).ok())
        };
        let held = dying.join().unwrap();
        let rec = r.recover(DEAD).unwrap();
        assert_eq!(
            rec,
            Recovered {
                tombstoned: 0,
                requeued: u32::from(held.is_some())
            }
        );
        let mut got: Vec<u32> = live.join().unwrap().into_iter().collect();
        drain(&r, &mut got);
        got.sort_unstable();
        assert_eq!(got, [1, 2], "each item delivered once");
        assert_eq!(r.unfinished(), 2);
    });
}

#[test]
fn loom_dead_producer_is_tombstoned_uncounted_and_skipped() {
    model(|| {
        let r = ring(2);
        let dying = {
            let r = r.clone();
            // Claims a slot, writes and commits, and dies before READY.
            thread::spawn(move || {
                if let Ok((pos, idx, _)) = r.claim_put(DEAD) {
                    r.fill_and_commit(DEAD, pos, idx, 9, b"");
                }
            })
        };
        let live = {
            let r = r.clone();
            thread::spawn(move || put(&r, P, 7))
        };
        dying.join().unwrap();
        let consumer = {
            let r = r.clone();
            thread::spawn(move || {
                let mut buf = Vec::new();
                loop {
                    match r.try_get(C, &mut buf) {
                        Ok(tag) => return tag,
                        Err(RingError::Empty) => thread::yield_now(),
                        Err(e) => panic!("get: {e}"),
                    }
                }
            })
        };
        assert_eq!(
            r.recover(DEAD).unwrap(),
            Recovered {
                tombstoned: 1,
                requeued: 0
            }
        );
        live.join().unwrap();
        assert_eq!(
            consumer.join().unwrap(),
            7,
            "the tombstone is skipped, never delivered"
        );
        assert_eq!(r.unfinished(), 1, "the dead put is not counted");
        let mut rest = Vec::new();
        drain(&r, &mut rest);
        assert!(rest.is_empty());
    });
}
