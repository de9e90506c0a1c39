//! Model checks of the accounts with loom: threads stand in for a
//! producer, a consumer and a joiner, over one counted stream; every
//! interleaving (and loom's weaker-than-`SeqCst` orderings) is tried.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p procpool-ipc --release --lib loom`.

use loom::sync::Arc;
use loom::sync::atomic::AtomicU32;
use loom::thread;
use std::sync::atomic::Ordering::SeqCst;

use super::*;
use crate::shm::stream::StreamError;

/// A count is never too low: a joiner that reads `r` puts returned and
/// `t` takes made before it counts, and `k` confirmations begun after,
/// sees at least `max(r, t) - k` unfinished, whatever the producer and
/// the consumer (which takes two items through the marked protocol and
/// confirms one) are doing. So `join` never returns while an item put
/// before it, or taken, is unconfirmed.
#[test]
fn loom_books_never_count_too_few() {
    let mut b = loom::model::Builder::new();
    b.max_branches = 100_000;
    b.check(|| {
        let s = Arc::new(Stream::new_loom_with(64, true));
        let books = Arc::new(Books::new_loom());
        let returned = Arc::new(AtomicU32::new(0));
        let taken = Arc::new(AtomicU32::new(0));
        let confirming = Arc::new(AtomicU32::new(0));
        let producer = {
            let (w, returned) = (s.attach_loom(), Arc::clone(&returned));
            thread::spawn(move || {
                for i in 0..2u8 {
                    loop {
                        match w.try_send(1, &[i]) {
                            Ok(()) => break,
                            Err(StreamError::Full) => thread::yield_now(),
                            Err(e) => panic!("send: {e}"),
                        }
                    }
                    returned.fetch_add(1, SeqCst);
                }
            })
        };
        let consumer = {
            let (r, books, taken, confirming) = (
                s.attach_loom(),
                Arc::clone(&books),
                Arc::clone(&taken),
                Arc::clone(&confirming),
            );
            thread::spawn(move || {
                let slot = books.claim(2).expect("a slot");
                let mut buf = Vec::new();
                for _ in 0..2 {
                    take(&r, &books, slot, &mut buf);
                    taken.fetch_add(1, SeqCst);
                }
                confirming.fetch_add(1, SeqCst);
                assert!(books.confirm(slot), "it owed the items it took");
            })
        };
        let (r, t) = (returned.load(SeqCst), taken.load(SeqCst));
        let u = books.unfinished(&s);
        let k = confirming.load(SeqCst);
        assert!(
            u + u64::from(k) >= u64::from(r.max(t)),
            "{u} unfinished with {r} put, {t} taken and {k} confirmations begun"
        );
        producer.join().unwrap();
        consumer.join().unwrap();
        assert_eq!(books.unfinished(&s), 1, "two put, one confirmed");
    });
}

/// One take as a joinable queue's getter makes it (spinning until an
/// item comes).
fn take(r: &Stream, books: &Books, slot: SlotId, buf: &mut Vec<u8>) {
    loop {
        let took = r.try_recv_in_place(
            2,
            buf,
            || {
                books.taking(2, slot, r.read_position());
                false
            },
            usize::MAX,
            |_| {},
            || books.took(slot),
        );
        match took {
            Ok(true) => return,
            Ok(false) | Err(StreamError::Empty) => thread::yield_now(),
            Err(e) => panic!("recv: {e}"),
        }
    }
}
