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
    assert!(q.is_empty());
    for i in 0..5u32 {
        q.put(i).unwrap();
    }
    assert_eq!(q.len(), 5);
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
    q.close();
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
    q.close();
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
    assert!(!q.is_empty());
    assert_eq!(q.get().unwrap(), [1, 2]);
    assert!(q.is_empty());
}

#[test]
fn handles_round_trip_through_the_codec_in_the_hub_process() {
    let q: Queue<u64> = Queue::new();
    let mut buf = Vec::new();
    codec::encode_into(&q, &mut buf).unwrap();
    let (back, _): (Queue<u64>, usize) = codec::decode(&buf).unwrap();
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
    let mut buf = Vec::new();
    codec::encode_into(&q, &mut buf).unwrap();
    let (as_bytes, _): (Queue<u32>, usize) = codec::decode(&buf).unwrap();
    as_bytes.put(u32::MAX).unwrap(); // 0xFB 0xFF.. is not a valid String
    assert!(matches!(
        q.get(),
        Err(GetError::Failed(QueueError::Decode(_)))
    ));
}
