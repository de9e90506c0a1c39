//! Queue semantics in one process (the hub side); the cross-process paths
//! are tested end to end in the workspace's `tests/queues.rs`.

use std::thread;
use std::time::{Duration, Instant};

use super::*;

const SHORT: Duration = Duration::from_millis(20);
const LONG: Duration = Duration::from_secs(10);

#[test]
fn fifo_and_len() {
    let q = Queue::new();
    assert!(q.is_empty().unwrap());
    for i in 0..5u32 {
        q.put(i).unwrap();
    }
    assert_eq!(q.len().unwrap(), 5);
    let got: Vec<u32> = (0..5).map(|_| q.get().unwrap()).collect();
    assert_eq!(got, [0, 1, 2, 3, 4]);
    assert!(matches!(q.try_get(), Err(GetError::Empty)));
}

#[test]
fn timeouts_are_honoured() {
    let q: Queue<u8> = Queue::bounded(1);
    let t = Instant::now();
    assert!(matches!(q.get_timeout(SHORT), Err(GetError::Empty)));
    assert!(t.elapsed() >= SHORT);
    q.put(1).unwrap();
    let t = Instant::now();
    let err = q.put_timeout(2, SHORT).unwrap_err();
    assert!(err.is_full() && t.elapsed() >= SHORT);
    assert_eq!(err.into_inner(), 2, "the item comes back");
    assert!(q.try_put(3).unwrap_err().is_full());
}

#[test]
fn bounded_put_blocks_until_a_get() {
    let q = Queue::bounded(1);
    q.put(1u32).unwrap();
    let producer = {
        let q = q.clone();
        thread::spawn(move || q.put_timeout(2, LONG))
    };
    assert_eq!(q.get_timeout(LONG).unwrap(), 1);
    producer.join().unwrap().unwrap();
    assert_eq!(q.get_timeout(LONG).unwrap(), 2);
}

#[test]
fn close_drains_then_reports_closed() {
    let q = Queue::new();
    q.put("a".to_string()).unwrap();
    q.close().unwrap();
    assert!(q.put("b".to_string()).unwrap_err().is_closed());
    assert_eq!(q.get().unwrap(), "a");
    assert!(matches!(q.get(), Err(GetError::Closed)));
    assert!(matches!(q.try_get(), Err(GetError::Closed)));
}

#[test]
fn close_wakes_a_blocked_getter() {
    let q: Queue<u8> = Queue::new();
    let getter = {
        let q = q.clone();
        thread::spawn(move || q.get_timeout(LONG))
    };
    // Whether the getter is already waiting or not, it must end with Closed.
    q.close().unwrap();
    assert!(matches!(getter.join().unwrap(), Err(GetError::Closed)));
}

#[test]
fn joinable_accounting() {
    let q = JoinableQueue::new();
    assert!(
        q.join_timeout(SHORT).unwrap(),
        "nothing put: join returns at once"
    );
    q.put(1u8).unwrap();
    q.put(2u8).unwrap();
    assert_eq!(q.unfinished(), Some(2));
    assert!(!q.join_timeout(SHORT).unwrap());
    let consumer = {
        let q = q.clone();
        thread::spawn(move || {
            for _ in 0..2 {
                q.get_timeout(LONG).unwrap();
                q.task_done().unwrap();
            }
        })
    };
    assert!(q.join_timeout(LONG).unwrap());
    consumer.join().unwrap();
    assert!(matches!(q.task_done(), Err(QueueError::TooManyTaskDone)));
}

#[test]
fn simple_queue() {
    let q = SimpleQueue::new();
    q.put(vec![1u8, 2]).unwrap();
    assert!(!q.is_empty().unwrap());
    assert_eq!(q.get().unwrap(), [1, 2]);
    assert!(q.is_empty().unwrap());
}

/// Another handle to `q`'s queue that encodes and decodes its items as
/// `U`: for items one side cannot read, or writes oddly.
fn retyped<T, U>(q: &Queue<T>) -> Queue<U>
where
    Queue<T>: serde::Serialize,
    Queue<U>: serde::de::DeserializeOwned,
{
    let mut buf = Vec::new();
    codec::encode_into(q, &mut buf).unwrap();
    codec::decode(&buf).unwrap().0
}

#[test]
fn handles_round_trip_through_the_codec_in_the_hub_process() {
    let q: Queue<u64> = Queue::new();
    let back: Queue<u64> = retyped(&q);
    back.put(7).unwrap();
    assert_eq!(q.get().unwrap(), 7, "one queue, two handles");
}

#[test]
fn unknown_queue_ids_do_not_decode_outside_a_worker() {
    let mut buf = Vec::new();
    codec::encode_into(&(u64::MAX - 1, false), &mut buf).unwrap();
    assert!(codec::decode::<Queue<u8>>(&buf).is_err());
}

#[test]
fn undecodable_item_is_an_error_not_a_panic() {
    let q: Queue<String> = Queue::new();
    let as_bytes: Queue<u32> = retyped(&q);
    as_bytes.put(u32::MAX).unwrap(); // 0xFB 0xFF.. is not a valid String
    assert!(matches!(
        q.get(),
        Err(GetError::Failed(QueueError::Decode(_)))
    ));
}

#[test]
fn iteration_ends_when_closed_and_drained() {
    let q = Queue::new();
    for i in 0..3u32 {
        q.put(i).unwrap();
    }
    q.close().unwrap();
    let got: Vec<u32> = (&q).into_iter().collect::<Result<_, _>>().unwrap();
    assert_eq!(got, [0, 1, 2]);
    // Fused, and a second iteration ends at once too.
    let mut it = q.iter();
    assert!(it.next().is_none() && it.next().is_none());
}

#[test]
fn iteration_yields_a_failure_once_then_ends() {
    let q: Queue<String> = Queue::new();
    let as_number: Queue<u32> = retyped(&q);
    as_number.put(u32::MAX).unwrap(); // not a valid String
    q.put("after".to_string()).unwrap();
    let mut it = q.iter();
    assert!(matches!(
        it.next(),
        Some(Err(GetError::Failed(QueueError::Decode(_))))
    ));
    assert!(it.next().is_none(), "ends after the error");
    // A new iteration goes on with the next item.
    assert_eq!(q.iter().next().unwrap().unwrap(), "after");
}

#[test]
fn iteration_wakes_for_items_put_by_another_thread() {
    let q = Queue::new();
    let writer = {
        let q = q.clone();
        thread::spawn(move || {
            for i in 0..100u64 {
                q.put(i).unwrap();
            }
            q.close().unwrap();
        })
    };
    let mut n = 0;
    for item in &q {
        assert_eq!(item.unwrap(), n);
        n += 1;
    }
    assert_eq!(n, 100);
    writer.join().unwrap();
}

#[test]
fn joinable_iteration_counts_items_for_task_done() {
    let q = JoinableQueue::new();
    q.put(1u8).unwrap();
    q.put(2u8).unwrap();
    q.close().unwrap();
    for item in &q {
        item.unwrap();
        q.task_done().unwrap();
    }
    assert!(q.join_timeout(LONG).unwrap());
    assert!(matches!(q.task_done(), Err(QueueError::TooManyTaskDone)));
}

#[test]
fn simple_queue_iterates_too() {
    let q = SimpleQueue::new();
    q.put("a".to_string()).unwrap();
    assert_eq!(q.iter().next().unwrap().unwrap(), "a");
    assert_eq!((&q).into_iter().size_hint(), (0, None));
}

#[test]
fn guard_calls_task_done_on_drop_and_on_unwind() {
    let q = JoinableQueue::new();
    for i in 0..3u32 {
        q.put(i).unwrap();
    }
    {
        let mut a = q.get_guarded().unwrap();
        *a += 10;
        assert_eq!(*a, 10);
        assert_eq!(q.unfinished(), Some(3), "not done while the guard lives");
    }
    assert_eq!(q.unfinished(), Some(2));
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _b = q.get_guarded().unwrap();
        panic!("processing failed");
    }));
    assert!(panicked.is_err());
    assert_eq!(q.unfinished(), Some(1), "done when unwinding, too");
    let c = q.try_get_guarded().unwrap();
    c.done().unwrap();
    assert!(q.join_timeout(LONG).unwrap());
    assert!(matches!(q.get_guarded_timeout(SHORT), Err(GetError::Empty)));
}

#[test]
fn failed_task_done_in_a_guard_is_reported_not_a_panic() {
    let q = JoinableQueue::new();
    q.put(1u8).unwrap();
    q.put(2u8).unwrap();
    let a = q.get_guarded().unwrap();
    let b = q.get_guarded().unwrap();
    // Two confirmations by hand use up both items' task_done...
    q.task_done().unwrap();
    q.task_done().unwrap();
    // ... so the guards' own fail: `done` returns the error, `drop` logs it.
    assert!(matches!(a.done(), Err(QueueError::TooManyTaskDone)));
    drop(b);
    assert!(q.join_timeout(LONG).unwrap());
}

#[test]
fn a_pipe_end_dropped_without_close_ends_the_pipe() {
    use crate::queues::pipe::Pipe;
    let (rx, tx) = Pipe::one_way::<u8>();
    tx.send(1).unwrap();
    drop(tx);
    assert_eq!(rx.recv_timeout(LONG).unwrap(), 1);
    assert!(matches!(rx.recv_timeout(LONG), Err(GetError::Closed)));

    let (left, right) = Pipe::duplex::<u8, u8>();
    right.send(2).unwrap();
    drop(right);
    assert_eq!(left.recv_timeout(LONG).unwrap(), 2);
    assert!(matches!(left.try_recv(), Err(GetError::Closed)));
    // The other direction was not closed, but its only receiving end
    // (`right`) is gone: sending fails, as Python's `BrokenPipeError`.
    assert!(matches!(
        left.send(3),
        Err(PutError::Failed(3, QueueError::ReceiversGone))
    ));
}

#[test]
fn a_local_handle_round_trip_keeps_the_queue() {
    let q = Queue::<u8>::new();
    q.put(5).unwrap();
    let mut bytes = Vec::new();
    crate::codec::encode_into(&q, &mut bytes).unwrap();
    drop(q);
    let (back, _): (Queue<u8>, _) = crate::codec::decode(&bytes).unwrap();
    assert_eq!(back.try_get().unwrap(), 5);
}

// Python 3.13 `queue.Queue.shutdown` parity; the names follow CPython's
// Lib/test/test_queue.py.

/// `test_shutdown_empty`: puts and gets on an empty shut-down queue fail
/// with ShutDown, blocking or not.
#[test]
fn shutdown_empty() {
    let q: Queue<u8> = Queue::new();
    q.shutdown(false).unwrap();
    assert!(q.put(1).unwrap_err().is_shut_down());
    assert!(matches!(q.get(), Err(GetError::ShutDown)));
    assert!(matches!(q.try_get(), Err(GetError::ShutDown)));
    assert!(matches!(q.get_timeout(LONG), Err(GetError::ShutDown)));
}

/// `test_shutdown_nonempty`: gets drain what is left, then fail.
#[test]
fn shutdown_nonempty() {
    let q = Queue::new();
    q.put(1u8).unwrap();
    q.shutdown(false).unwrap();
    assert!(q.try_put(2).unwrap_err().is_shut_down());
    assert_eq!(q.get().unwrap(), 1);
    assert!(matches!(q.get(), Err(GetError::ShutDown)));
    let seen: Vec<_> = q.iter().collect::<Result<_, _>>().unwrap();
    assert!(seen.is_empty(), "the iteration ends on ShutDown");
}

/// `test_shutdown_immediate_all_methods_in_one_thread`: pending items are
/// dropped, gets fail at once, and the unfinished count loses them.
#[test]
fn shutdown_immediate_all_methods_in_one_thread() {
    let q = JoinableQueue::new();
    for i in 0..3u8 {
        q.put(i).unwrap();
    }
    assert_eq!(q.get().unwrap(), 0);
    q.shutdown(true).unwrap();
    assert_eq!(q.len().unwrap(), 0);
    assert!(matches!(q.get(), Err(GetError::ShutDown)));
    assert_eq!(q.unfinished(), Some(1), "only the item taken is left");
    assert!(!q.join_timeout(SHORT).unwrap());
    q.task_done().unwrap();
    assert!(q.join_timeout(LONG).unwrap());
}

/// `test_shutdown_pending_get`, `test_shutdown_immediate_join`,
/// `test_shutdown_put` with blocked callers: a getter blocked on an empty
/// queue, a putter blocked on a full one and a join are all woken.
#[test]
fn shutdown_wakes_blocked_getters_putters_and_joins() {
    let empty: Queue<u8> = Queue::new();
    let getter = {
        let q = empty.clone();
        thread::spawn(move || q.get_timeout(LONG))
    };
    let full = JoinableQueue::bounded(1);
    full.put(1u8).unwrap();
    let putter = {
        let q = full.clone();
        thread::spawn(move || q.put_timeout(2, LONG))
    };
    let joiner = {
        let q = full.clone();
        thread::spawn(move || q.join_timeout(LONG))
    };
    empty.shutdown(false).unwrap();
    full.shutdown(true).unwrap();
    assert!(matches!(getter.join().unwrap(), Err(GetError::ShutDown)));
    let put = putter.join().unwrap();
    assert!(matches!(put, Err(PutError::ShutDown(2))), "{put:?}");
    assert!(joiner.join().unwrap().unwrap());
}

/// `test_shutdown_*` after `close`: a closed queue shut down reports
/// ShutDown; close after shutdown changes nothing.
#[test]
fn shutdown_after_close_and_close_after_shutdown() {
    let q = Queue::new();
    q.put(1u8).unwrap();
    q.close().unwrap();
    assert!(q.put(2).unwrap_err().is_closed());
    q.shutdown(false).unwrap();
    assert!(q.put(2).unwrap_err().is_shut_down());
    q.close().unwrap();
    assert_eq!(q.get().unwrap(), 1);
    assert!(matches!(q.get(), Err(GetError::ShutDown)));
}

/// `test_maxsize`, `test_full` (`full()`, `maxsize`): known without items.
#[test]
fn maxsize_and_is_full() {
    let q = Queue::bounded(2);
    assert_eq!(q.maxsize(), Some(2));
    assert!(!q.is_full().unwrap());
    q.put(1u8).unwrap();
    q.put(2).unwrap();
    assert!(q.is_full().unwrap());
    let unbounded: Queue<u8> = Queue::new();
    assert_eq!(unbounded.maxsize(), None);
    assert!(!unbounded.is_full().unwrap());
    assert_eq!(JoinableQueue::<u8>::bounded(0).maxsize(), Some(1));
}

/// multiprocessing's `TestSimpleQueue.test_close`: a closed SimpleQueue
/// refuses puts; here getters drain it, then see Closed.
#[test]
fn simple_queue_close() {
    let q = SimpleQueue::new();
    q.put(1u8).unwrap();
    q.close().unwrap();
    assert!(q.put(2).unwrap_err().is_closed());
    assert_eq!(q.get().unwrap(), 1);
    assert!(matches!(q.get(), Err(GetError::Closed)));
}

/// Bytes of item `i`, `len` long, varying along the item.
fn big(i: u32, len: usize) -> serde_bytes::ByteBuf {
    serde_bytes::ByteBuf::from((0..len).map(|k| (k as u32 ^ i) as u8).collect::<Vec<u8>>())
}

#[test]
fn large_items_go_in_place_and_keep_order_with_small_ones() {
    let q: Queue<(u32, serde_bytes::ByteBuf)> = Queue::new();
    assert!(q.uses_lane());
    // Around the in-place threshold, well above it, and above a record
    // (fragments, through the buffer).
    let sizes = [10, 4090, 4096, 5000, 64 << 10, 300 << 10, 600 << 10, 100];
    let reader = {
        let q = q.clone();
        thread::spawn(move || {
            (0..3 * sizes.len() as u32)
                .map(|_| q.get_timeout(LONG).unwrap())
                .collect::<Vec<_>>()
        })
    };
    for i in 0..3 * sizes.len() as u32 {
        q.put((i, big(i, sizes[i as usize % sizes.len()]))).unwrap();
    }
    for (n, (i, bytes)) in reader.join().unwrap().into_iter().enumerate() {
        assert_eq!(i, n as u32, "in put order");
        assert!(bytes == big(i, sizes[n % sizes.len()]), "item {i} intact");
    }
    assert!(q.is_empty().unwrap());
}

#[test]
fn large_pipe_messages_go_in_place_too() {
    use crate::queues::pipe::Pipe;
    let (rx, tx) = Pipe::one_way::<(u32, serde_bytes::ByteBuf)>();
    let sizes = [4096, 100, 64 << 10, 600 << 10, 5000];
    let sender = thread::spawn(move || {
        for i in 0..4 * sizes.len() as u32 {
            tx.send((i, big(i, sizes[i as usize % sizes.len()])))
                .unwrap();
        }
    });
    for n in 0..4 * sizes.len() as u32 {
        let (i, bytes) = rx.recv_timeout(LONG).unwrap();
        assert_eq!(i, n);
        assert!(
            bytes == big(i, sizes[n as usize % sizes.len()]),
            "message {i} intact"
        );
    }
    sender.join().unwrap();
    assert!(matches!(rx.recv_timeout(LONG), Err(GetError::Closed)));
}

/// Serialises as a byte string whose length changes every time (one
/// more byte each call): measured at one length, written at another.
struct Shifty(std::sync::atomic::AtomicUsize);

impl serde::Serialize for Shifty {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        s.serialize_bytes(&vec![7; 8000 + n])
    }
}

impl<'de> serde::Deserialize<'de> for Shifty {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde_bytes::ByteBuf::deserialize(d).map(|b| Self(b.len().into()))
    }
}

/// Fails after writing 8000 bytes.
struct Broken;

impl<'de> serde::Deserialize<'de> for Broken {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde_bytes::ByteBuf::deserialize(d).map(|_| Self)
    }
}

impl serde::Serialize for Broken {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeTuple};
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(serde_bytes::Bytes::new(&[1; 8000]))?;
        let _ = t;
        Err(S::Error::custom("broken after 8000 bytes"))
    }
}

#[test]
fn an_encoding_that_changes_or_fails_in_the_ring_puts_nothing_broken() {
    let raw: Queue<serde_bytes::ByteBuf> = Queue::new();
    // The same queue, typed for the odd items.
    let shifty: Queue<Shifty> = retyped(&raw);
    let broken: Queue<Broken> = retyped(&raw);
    // Measured once, then written longer in the ring: it goes through the
    // buffer instead, whole.
    shifty.put(Shifty(0.into())).map_err(|_| "put").unwrap();
    let got = raw.get_timeout(LONG).unwrap();
    assert!(got.len() > 8000 && got.iter().all(|&b| b == 7));
    assert!(matches!(
        broken.put(Broken),
        Err(PutError::Failed(_, QueueError::Encode(_)))
    ));
    assert!(
        raw.is_empty().unwrap(),
        "nothing of the failed put is there"
    );
    raw.put(big(1, 9000)).unwrap();
    assert!(raw.get_timeout(LONG).unwrap() == big(1, 9000));
}

/// Panics when deserialised.
#[derive(Debug)]
struct Grenade;

impl serde::Serialize for Grenade {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}

impl<'de> serde::Deserialize<'de> for Grenade {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        panic!("a Deserialize impl with a bug")
    }
}

#[test]
fn a_large_item_that_fails_or_panics_decoding_in_place_leaves_the_queue_working() {
    let raw: Queue<serde_bytes::ByteBuf> = Queue::new();
    let as_string: Queue<String> = retyped(&raw);
    let grenade: Queue<Grenade> = retyped(&raw);
    // Not UTF-8: a decode error, and the item is gone.
    raw.put(serde_bytes::ByteBuf::from(vec![0xff; 9000]))
        .unwrap();
    raw.put(big(2, 9000)).unwrap();
    assert!(matches!(
        as_string.get_timeout(LONG),
        Err(GetError::Failed(QueueError::Decode(_)))
    ));
    let panicked =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| grenade.get_timeout(LONG)));
    assert!(panicked.is_err(), "the panic goes on to the caller");
    // The ring's lease came back: the queue works.
    raw.put(big(3, 9000)).unwrap();
    assert!(raw.get_timeout(SHORT).unwrap() == big(3, 9000));
}
